#!/usr/bin/env python3
"""Golden logits from llama.cpp for every architecture Realm runs, on
synthetic-weight models: realm-models/tests/fixtures/architectures.json.

Each case is a two-layer model that `realm synth tiny-ARCH` writes (seeded
weights, so the test writes the same file with realm_models::synthetic and
checks it against the FNV-1a hash stored here), with options that exercise
what the architecture reads from its metadata: f32 or quantized
matrices, Llama 3.1's RoPE frequency factors, linear and YaRN RoPE scaling,
LongRoPE (short and long factors, as the context chooses; all or part of
each head rotated), the RoPE attention factor,
Ministral 3's YaRN corrections and attention temperature, OLMo 2's
norms and OLMo 3's window, EXAONE 4's norms and its 32B's window,
mixtures of experts (Qwen 2 MoE's with its shared expert, Qwen 3 MoE's,
and a llama's as Mixtral's, a Ministral 3's; gpt-oss's, with its biases, attention
sinks, clamped SwiGLU and MXFP4 matrices), Gemma 2's
soft-caps, Gemma 3's local/global pattern, local base and final cap, Gemma
3n's streams and Gemma 4's heads of two shapes. llama.cpp (the CPU build
`scripts/build_llama_cpp.sh --tools` makes, through llama-cpp-python
0.3.36's bindings; f32 KV cache) evaluates TOKENS in one batch and the
logits of every position, the whole vocabulary, are stored (6 significant
digits). A case's n_ctx is llama.cpp's context (which it rounds up to 256)
and the test's session length: LongRoPE's long factors serve contexts past
the original one.
Usage: python3 scripts/gen_arch_fixtures.py [--only NAME ...]  (after cargo build --release -p realm-cli)
With --only, just the named cases are run again and replaced (or added, in
CASES' order) in the existing file; the others keep their stored logits.
"""
import argparse
import json
import os
import subprocess
import tempfile

import numpy as np

import llama_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "realm-models", "tests", "fixtures", "architectures.json")
REALM = os.path.join(ROOT, "target", "release", "realm")
SEED = 7
# 24 tokens: past the tiny Gemma 3's 4-token sliding window.
TOKENS = [(i * 37 + 11) % 297 + 3 for i in range(24)]


def case(name, layout, matrix_type="f32", rope_factors=False, overrides=(), long_rope=None,
         n_ctx=64, long=None, embedding=False, rank=False):
    """A case; `long`: run that many tokens (TOKENS' formula carried on)
    and keep only the last len(TOKENS) positions' logits; `embedding`: an
    encoder's, whose final hidden states are stored (`hidden`) in place of
    logits; `rank`: a reranker's, whose scores are (one row)."""
    c = dict(name=name, layout=layout, matrix_type=matrix_type, rope_factors=rope_factors,
             overrides=[list(o) for o in overrides], long_rope=long_rope, n_ctx=n_ctx)
    if long:
        c["long"] = long
    if embedding:
        c["embedding"] = True
    if rank:
        c["rank"] = True
    return c


def tokens_of(c):
    """The tokens a case runs."""
    n = c.get("long") or len(TOKENS)
    return [(i * 37 + 11) % 297 + 3 for i in range(n)]


# Phi 3.5's LongRoPE, shrunk: a 4096-token model from a 256-token original
# (attention factor sqrt(1.5)); another name, as for the phi3 case.
PHI3_LONG = [("general.name", "str", "tiny"), ("phi3.context_length", "int", "4096")]


CASES = [
    case("llama", "tiny-llama"),
    case("llama-q8_0", "tiny-llama", matrix_type="q8_0"),
    case("llama-q4_1", "tiny-llama", matrix_type="q4_1"),
    case("llama-q4_0", "tiny-llama", matrix_type="q4_0"),
    case("llama-q5_1", "tiny-llama", matrix_type="q5_1"),
    case("llama-f16", "tiny-llama", matrix_type="f16"),
    case("llama-bf16", "tiny-llama", matrix_type="bf16"),
    case("llama-rope-factors", "tiny-llama", rope_factors=True),
    case("llama-linear-scaling", "tiny-llama",
         overrides=[("llama.rope.scaling.factor", "float", "4")]),
    case("llama-attn-factor", "tiny-llama",
         overrides=[("llama.rope.scaling.attn_factor", "float", "1.3")]),
    case("llama-yarn", "tiny-llama",
         overrides=[("llama.rope.scaling.type", "str", "yarn"),
                    ("llama.rope.scaling.factor", "float", "4"),
                    ("llama.rope.scaling.original_context_length", "int", "64"),
                    ("llama.rope.scaling.attn_factor", "float", "0.9")]),
    case("qwen2", "tiny-qwen2"),
    case("qwen3", "tiny-qwen3"),
    case("qwen3-q8_0", "tiny-qwen3", matrix_type="q8_0"),
    # Qwen3-VL's language models, text alone: Qwen 3's blocks with M-RoPE.
    # MiniCPM: its default multipliers, then the file's.
    case("minicpm", "tiny-minicpm"),
    case("minicpm-scales", "tiny-minicpm",
         overrides=[("minicpm.embedding_scale", "float", "2"),
                    ("minicpm.residual_scale", "float", "0.5"),
                    ("minicpm.logit_scale", "float", "0.5")]),
    case("internlm2", "tiny-internlm2"),
    case("internlm2-q8_0", "tiny-internlm2", matrix_type="q8_0"),
    case("qwen3vl", "tiny-qwen3vl"),
    case("qwen3vl-q8_0", "tiny-qwen3vl", matrix_type="q8_0"),
    case("qwen3vlmoe", "tiny-qwen3vlmoe"),
    case("qwen3-yarn", "tiny-qwen3",
         overrides=[("qwen3.rope.scaling.type", "str", "yarn"),
                    ("qwen3.rope.scaling.factor", "float", "4"),
                    ("qwen3.rope.scaling.original_context_length", "int", "64")]),
    # llama.cpp looks up Phi 3's <|endoftext|> in a model named phi3, which
    # the synthetic vocabulary lacks: another name.
    case("phi3", "tiny-phi3", overrides=[("general.name", "str", "tiny")]),
    case("phi3-q8_0", "tiny-phi3", matrix_type="q8_0",
         overrides=[("general.name", "str", "tiny")]),
    case("phi3-longrope-short", "tiny-phi3", overrides=PHI3_LONG, long_rope=256, n_ctx=256),
    case("phi3-longrope-long", "tiny-phi3", overrides=PHI3_LONG, long_rope=256, n_ctx=512),
    # Phi 4 mini's: three quarters of each head rotated (of the
    # architectures here, llama.cpp rotates part of a head for Phi 3 and
    # Gemma only).
    case("phi3-longrope-partial", "tiny-phi3", long_rope=256, n_ctx=512,
         overrides=PHI3_LONG + [("phi3.rope.dimension_count", "int", "12")]),
    case("phi3-yarn-partial", "tiny-phi3",
         overrides=[("general.name", "str", "tiny"),
                    ("phi3.rope.scaling.type", "str", "yarn"),
                    ("phi3.rope.scaling.factor", "float", "4"),
                    ("phi3.rope.scaling.original_context_length", "int", "64"),
                    ("phi3.rope.scaling.attn_factor", "float", "0.9"),
                    ("phi3.rope.dimension_count", "int", "12")]),
    # Ministral 3: YaRN over 16 tokens and the attention temperature, which
    # scales the queries from position 16 on.
    case("mistral3", "tiny-mistral3"),
    case("mistral3-q8_0", "tiny-mistral3", matrix_type="q8_0"),
    # Its YaRN corrections and log multiplier read (a magnitude not 1; over
    # an original context long enough for the corrections to move the
    # ramp, and for no temperature in 24 tokens).
    case("mistral3-corrections", "tiny-mistral3",
         overrides=[("mistral3.rope.scaling.yarn_beta_fast", "float", "4"),
                    ("mistral3.rope.scaling.yarn_beta_slow", "float", "0.5"),
                    ("mistral3.rope.scaling.yarn_log_multiplier", "float", "0.5"),
                    ("mistral3.rope.scaling.original_context_length", "int", "4096")]),
    # The temperature stepping every 6 positions.
    case("mistral3-temperature", "tiny-mistral3",
         overrides=[("mistral3.rope.scaling.original_context_length", "int", "6"),
                    ("mistral3.attention.temperature_scale", "float", "0.8")]),
    case("mistral3-moe", "tiny-mistral3-moe"),
    case("mistral3-bias", "tiny-mistral3-bias"),
    # OLMo 2: norms after each part of a block only, Q/K norms over all
    # heads; OLMo 3's window on its first layer (flags a layer), YaRN on
    # its global layer, a local base of its own; a pattern given as a
    # number (every second layer global).
    case("olmo2", "tiny-olmo2"),
    case("olmo2-q8_0", "tiny-olmo2", matrix_type="q8_0"),
    case("olmo3", "tiny-olmo3"),
    case("olmo2-window-every-2", "tiny-olmo2",
         overrides=[("olmo2.attention.sliding_window", "int", "4"),
                    ("olmo2.attention.sliding_window_pattern", "int", "2")]),
    # EXAONE 4: OLMo 2's norms, Q/K norms per head; the 32B's 64 layers,
    # for which alone llama.cpp has a window (on three layers of four,
    # which alone rotate).
    # OLMoE: llama's norms, Q/K norms over all heads, experts weighted by
    # the softmax over all of them.
    case("olmoe", "tiny-olmoe"),
    case("exaone4", "tiny-exaone4"),
    case("exaone4-q8_0", "tiny-exaone4", matrix_type="q8_0"),
    case("exaone4-32b", "tiny-exaone4-32b"),
    case("ernie4_5", "tiny-ernie4_5"),
    # Seed-OSS: heads wider than the width over their number, q/k/v
    # biases, NeoX RoPE, the feed-forward norm under the post-norm's name.
    case("seed_oss", "tiny-seed_oss"),
    # GLM-4: Gemma's norms with SiLU, gate and up in one matrix, half of
    # each head rotated (llama's pairs), q/k/v biases.
    case("glm4", "tiny-glm4"),
    case("glm4-q8_0", "tiny-glm4", matrix_type="q8_0"),
    # Query, key and value biases where any file has them (llama.cpp reads
    # them for every architecture), in one for a fused matrix.
    case("llama-bias", "tiny-llama-bias"),
    case("phi3-bias", "tiny-phi3-bias", overrides=[("general.name", "str", "tiny")]),
    case("smollm3", "tiny-smollm3"),
    case("granite", "tiny-granite"),
    # Granite MoE: Granite's multipliers, experts as wide as its dense
    # blocks, an ungated shared expert where the file has one.
    case("granitemoe", "tiny-granitemoe"),
    case("granitemoe-shared", "tiny-granitemoe-shared"),
    # GLM-4.5: a dense first block, then experts chosen by sigmoid scores
    # plus a selection bias, weights renormalised and scaled, an ungated
    # shared expert; q/k/v biases, per-head Q/K norms (none in Air's),
    # half of each head rotated (NeoX).
    case("glm4moe", "tiny-glm4moe"),
    case("glm4moe-q8_0", "tiny-glm4moe", matrix_type="q8_0"),
    case("glm4moe-air", "tiny-glm4moe-air"),
    # ERNIE 4.5 MoE: llama's blocks, a dense first block, experts chosen
    # by softmax probabilities plus a selection bias, a shared expert.
    case("ernie4_5-moe", "tiny-ernie4_5-moe"),
    case("ernie4_5-moe-q8_0", "tiny-ernie4_5-moe", matrix_type="q8_0"),
    # MiniMax-M2: Q/K norms over all heads, half of each head rotated
    # (NeoX), experts in every block chosen by sigmoid scores plus a
    # selection bias, renormalised.
    case("minimax-m2", "tiny-minimax-m2"),
    case("minimax-m2-q8_0", "tiny-minimax-m2", matrix_type="q8_0"),
    # dots.llm1: per-head Q/K norms, a dense first block, GLM-4.5's
    # routing and shared expert.
    case("dots1", "tiny-dots1"),
    # Ling 2.0: Q, K and V in one matrix, per-head Q/K norms, half of each
    # head rotated, experts chosen from the better of two groups.
    case("bailingmoe2", "tiny-bailingmoe2"),
    case("bailingmoe2-q8_0", "tiny-bailingmoe2", matrix_type="q8_0"),
    # DeepSeek V3 (deepseek2): latent attention with the queries through a
    # low rank (V2-Lite's in one product), experts chosen from the better
    # of two groups by sigmoid scores plus a selection bias; YaRN with
    # DeepSeek's log multiplier (its tenth, as files hold it).
    case("deepseek2", "tiny-deepseek2"),
    case("deepseek2-q8_0", "tiny-deepseek2", matrix_type="q8_0"),
    case("deepseek2-lite", "tiny-deepseek2-lite"),
    # Its experts' gate and up in one tensor (--fuse-gate-up-exps).
    case("deepseek2-fused", "tiny-deepseek2-fused"),
    case("deepseek2-yarn", "tiny-deepseek2",
         overrides=[("deepseek2.rope.scaling.type", "str", "yarn"),
                    ("deepseek2.rope.scaling.factor", "float", "4"),
                    ("deepseek2.rope.scaling.original_context_length", "int", "64"),
                    ("deepseek2.rope.scaling.yarn_log_multiplier", "float", "0.0707")]),
    case("qwen2moe", "tiny-qwen2moe"),
    case("qwen2moe-q8_0", "tiny-qwen2moe", matrix_type="q8_0"),
    case("qwen3moe", "tiny-qwen3moe"),
    case("qwen3moe-q8_0", "tiny-qwen3moe", matrix_type="q8_0"),
    case("mixtral", "tiny-mixtral"),
    case("mixtral-q4_1", "tiny-mixtral", matrix_type="q4_1"),
    case("gpt-oss", "tiny-gpt-oss"),
    case("gpt-oss-q8_0", "tiny-gpt-oss", matrix_type="q8_0"),
    case("gpt-oss-mxfp4", "tiny-gpt-oss", matrix_type="mxfp4"),
    # A wider window on the local first layer (llama.cpp refuses gpt-oss
    # without a local layer).
    case("gpt-oss-window-8", "tiny-gpt-oss",
         overrides=[("gpt-oss.attention.sliding_window", "int", "8")]),
    # Qwen 3.5: three gated delta nets (a recurrent state) and a gated
    # attention block, M-RoPE sections over half of each head.
    case("qwen35", "tiny-qwen35"),
    case("qwen35-q8_0", "tiny-qwen35", matrix_type="q8_0"),
    # Qwen 3.5 MoE: its blocks with experts and a gated shared expert.
    case("qwen35moe", "tiny-qwen35moe"),
    case("qwen35moe-q8_0", "tiny-qwen35moe", matrix_type="q8_0"),
    # Qwen3-Next: Qwen 3.5 MoE's blocks with NeoX RoPE, value heads
    # grouped by their query/key head, rates and decays in one product;
    # its older files' queries, keys, values and gates in one too.
    case("qwen3next", "tiny-qwen3next"),
    case("qwen3next-q8_0", "tiny-qwen3next", matrix_type="q8_0"),
    case("qwen3next-fused", "tiny-qwen3next-fused"),
    # LFM2: short convolutions (a recurrent state) and an attention block.
    case("lfm2", "tiny-lfm2"),
    case("lfm2-q8_0", "tiny-lfm2", matrix_type="q8_0"),
    # LFM2 with a window on its attention block (as llama.cpp reads one).
    case("lfm2-window", "tiny-lfm2", overrides=[("lfm2.attention.sliding_window", "int", "4")]),
    # LFM2's experts: a dense first block, then sigmoid scores with a
    # selection bias.
    case("lfm2moe", "tiny-lfm2moe"),
    case("lfm2moe-q8_0", "tiny-lfm2moe", matrix_type="q8_0"),
    # Granite 4.0's hybrids: Mamba-2 mixers (a recurrent state) and an
    # attention block, Granite's multipliers; with experts and a shared
    # one (H-Tiny's); without RoPE.
    case("granitehybrid", "tiny-granitehybrid"),
    case("granitehybrid-q8_0", "tiny-granitehybrid", matrix_type="q8_0"),
    case("granitehybrid-moe", "tiny-granitehybrid-moe"),
    case("granitehybrid-nope", "tiny-granitehybrid-nope"),
    # Arcee's AFM: llama's blocks, squared ReLUs without a gate.
    case("arcee", "tiny-arcee"),
    case("arcee-q8_0", "tiny-arcee", matrix_type="q8_0"),
    # Hunyuan MoE: Q/K norms after RoPE, experts beside an ungated shared
    # expert.
    case("hunyuan-moe", "tiny-hunyuan-moe"),
    case("hunyuan-moe-q8_0", "tiny-hunyuan-moe", matrix_type="q8_0"),
    # Hunyuan's dense blocks: the same norms after RoPE, NTK-aware alpha.
    case("hunyuan-dense", "tiny-hunyuan-dense"),
    case("hunyuan-dense-q8_0", "tiny-hunyuan-dense", matrix_type="q8_0"),
    # Llama 4: chunked attention with RoPE and weightless Q/K norms, a
    # global layer without RoPE whose queries grow past 8192 positions,
    # experts every other block given the token times their weight, a
    # shared expert; run past the first chunk (8,200 tokens).
    case("llama4", "tiny-llama4"),
    case("llama4-long", "tiny-llama4", n_ctx=8256, long=8200),
    # Falcon-H1: attention and a Mamba-2 mixer side by side in every
    # block; without the mixers' norms.
    case("falcon-h1", "tiny-falcon-h1"),
    case("falcon-h1-q8_0", "tiny-falcon-h1", matrix_type="q8_0"),
    case("falcon-h1-nonorm", "tiny-falcon-h1-nonorm"),
    # Nemotron-H: blocks of one part each (Mamba-2 mixers, attention
    # without RoPE, feed-forward networks of squared ReLUs).
    case("nemotron_h", "tiny-nemotron_h"),
    case("nemotron_h-q8_0", "tiny-nemotron_h", matrix_type="q8_0"),
    # Nemotron 3 Nano's: experts of squared ReLUs with a selection bias and
    # a shared expert.
    case("nemotron_h_moe", "tiny-nemotron_h_moe"),
    case("nemotron_h_moe-q8_0", "tiny-nemotron_h_moe", matrix_type="q8_0"),
    # Nemotron 3 Super's experts, in a latent space.
    case("nemotron_h_moe-latent", "tiny-nemotron_h_moe-latent"),
    # Gemma (1): a GELU gate, NeoX RoPE, scaled embeddings.
    case("gemma", "tiny-gemma"),
    case("gemma2", "tiny-gemma2"),
    case("gemma2-tight-caps", "tiny-gemma2",
         overrides=[("gemma2.attn_logit_softcapping", "float", "0.5"),
                    ("gemma2.final_logit_softcapping", "float", "2")]),
    case("gemma3", "tiny-gemma3"),
    case("gemma3-final-cap", "tiny-gemma3",
         overrides=[("gemma3.final_logit_softcapping", "float", "2")]),
    case("gemma3-global-scaled", "tiny-gemma3",
         overrides=[("gemma3.attention.sliding_window_pattern", "int", "2"),
                    ("gemma3.rope.scaling.type", "str", "linear"),
                    ("gemma3.rope.scaling.factor", "float", "8"),
                    ("gemma3.rope.freq_base_swa", "float", "5000")]),
    # Gemma 3n: AltUp's streams, blocks' own inputs, LAuReL, shared KV
    # caches (local and global) and sparse activations.
    case("gemma3n", "tiny-gemma3n"),
    case("gemma3n-q8_0", "tiny-gemma3n", matrix_type="q8_0"),
    # 22 blocks: the last two read blocks 18's and 19's caches.
    case("gemma3n-shared", "tiny-gemma3n-shared"),
    # Gemma 4: global blocks of fewer, wider heads, a quarter of each
    # turned (proportional RoPE), blocks' own inputs, shared KV caches of
    # twice as wide blocks, output scales; the 31B's shape, whose global
    # blocks' keys are their values.
    case("gemma4", "tiny-gemma4"),
    case("gemma4-q8_0", "tiny-gemma4", matrix_type="q8_0"),
    case("gemma4-31b", "tiny-gemma4-31b"),
    # The 26B A4B's experts beside every dense block: their own norms, a
    # router reading the block's input scaled, each expert's output factor.
    case("gemma4-moe", "tiny-gemma4-moe"),
    case("gemma4-moe-q8_0", "tiny-gemma4-moe", matrix_type="q8_0"),
    # LayerNorms. StarCoder 2: biases on every norm and product, GELUs
    # without a gate.
    case("starcoder2", "tiny-starcoder2"),
    case("starcoder2-q8_0", "tiny-starcoder2", matrix_type="q8_0"),
    # Phi 2: the same with query, key and value in one matrix, the network
    # beside the attention on its normed input, half of each head rotated,
    # an output bias.
    case("phi2", "tiny-phi2"),
    case("phi2-q8_0", "tiny-phi2", matrix_type="q8_0"),
    # StableLM: SwiGLU, a quarter of each head rotated; without a
    # feed-forward norm, the network beside the attention.
    case("stablelm", "tiny-stablelm"),
    case("stablelm-q8_0", "tiny-stablelm", matrix_type="q8_0"),
    case("stablelm-parallel", "tiny-stablelm-parallel"),
    # GPT-NeoX: the network beside the attention, with its own norm; and
    # after it (use_parallel_residual false).
    case("gptneox", "tiny-gptneox"),
    case("gptneox-q8_0", "tiny-gptneox", matrix_type="q8_0"),
    case("gptneox-sequential", "tiny-gptneox-sequential"),
    # Command R: norms without biases, SwiGLU beside the attention, the
    # logits scaled; Command R7B's window on every other block, the
    # others global without RoPE.
    case("command-r", "tiny-command-r"),
    case("command-r-q8_0", "tiny-command-r", matrix_type="q8_0"),
    case("cohere2", "tiny-cohere2"),
    case("cohere2-q8_0", "tiny-cohere2", matrix_type="q8_0"),
    # Falcon: GELUs beside the attention on the same normed input; the
    # 40B's attention normed by a norm of its own.
    case("falcon", "tiny-falcon"),
    case("falcon-q8_0", "tiny-falcon", matrix_type="q8_0"),
    case("falcon-40b", "tiny-falcon-40b"),
    # GPT-2 and StarCoder: learned positions, no RoPE.
    case("gpt2", "tiny-gpt2"),
    case("gpt2-q8_0", "tiny-gpt2", matrix_type="q8_0"),
    case("starcoder", "tiny-starcoder"),
    # Orion: LayerNorms with biases, SwiGLU; Nemotron: squared ReLUs
    # without a gate, half of each head rotated; CodeShell: StarCoder 2's
    # blocks; EXAONE 3: llama's with NeoX RoPE.
    case("orion", "tiny-orion"),
    case("nemotron", "tiny-nemotron"),
    case("nemotron-q8_0", "tiny-nemotron", matrix_type="q8_0"),
    case("codeshell", "tiny-codeshell"),
    case("exaone", "tiny-exaone"),
    case("exaone-q8_0", "tiny-exaone", matrix_type="q8_0"),
    # Mamba-2: every block a Mamba-2 mixer alone, no attention.
    case("mamba2", "tiny-mamba2"),
    case("mamba2-q8_0", "tiny-mamba2", matrix_type="q8_0"),
    # ALiBi: BLOOM (its embeddings normed), MPT (no biases), Refact
    # (llama's blocks).
    case("bloom", "tiny-bloom"),
    case("bloom-q8_0", "tiny-bloom", matrix_type="q8_0"),
    case("mpt", "tiny-mpt"),
    case("refact", "tiny-refact"),
    case("refact-q8_0", "tiny-refact", matrix_type="q8_0"),
    # MPT with its queries, keys and values clamped.
    case("mpt-clamp", "tiny-mpt", overrides=[("mpt.attention.clamp_kqv", "float", "0.5")]),
    # XVERSE: llama's blocks; PLaMo: the network beside the attention;
    # OLMo: LayerNorms without weights, clamped queries, keys and values;
    # Baichuan: RoPE in the 7B's 32 blocks, ALiBi in the 13B's 40.
    case("xverse", "tiny-xverse"),
    case("plamo", "tiny-plamo"),
    case("plamo-q8_0", "tiny-plamo", matrix_type="q8_0"),
    case("olmo", "tiny-olmo"),
    case("olmo-q8_0", "tiny-olmo", matrix_type="q8_0"),
    case("olmo-clamp", "tiny-olmo", overrides=[("olmo.attention.clamp_kqv", "float", "0.5")]),
    case("baichuan", "tiny-baichuan"),
    case("baichuan-13b", "tiny-baichuan-13b"),
    # Mamba: every block a Mamba mixer alone; Falcon Mamba's norms of the
    # step, B and C.
    case("mamba", "tiny-mamba"),
    case("mamba-q8_0", "tiny-mamba", matrix_type="q8_0"),
    case("falcon-mamba", "tiny-falcon-mamba"),
    # DeciLM: blocks of their own KV heads and widths, one a linear map in
    # place of attention, one without attention.
    case("deci", "tiny-deci"),
    case("deci-q8_0", "tiny-deci", matrix_type="q8_0"),
    # ChatGLM: GLM-4's blocks without the norms after each part,
    # `attn_qkv` with its bias.
    case("chatglm", "tiny-chatglm"),
    case("chatglm-q8_0", "tiny-chatglm", matrix_type="q8_0"),
    # Qwen 1: q/k/v and their biases in one `attn_qkv`, the network half
    # as wide as `feed_forward_length`.
    case("qwen", "tiny-qwen"),
    case("qwen-q8_0", "tiny-qwen", matrix_type="q8_0"),
    # DeepSeek (V1): a dense first block, then softmax-routed experts
    # (scaled, not renormalised) beside a shared one.
    case("deepseek", "tiny-deepseek"),
    case("deepseek-q8_0", "tiny-deepseek", matrix_type="q8_0"),
    # DBRX: LayerNorms without biases, a clamped `attn_qkv`, experts in
    # every block normed by `attn_output_norm`.
    case("dbrx", "tiny-dbrx"),
    case("dbrx-q8_0", "tiny-dbrx", matrix_type="q8_0"),
    # Jais: LayerNorms, `attn_qkv` with its bias, ALiBi, scores scaled by
    # one over a head's width, SwiGLU with biases.
    case("jais", "tiny-jais"),
    case("jais-q8_0", "tiny-jais", matrix_type="q8_0"),
    # BitNet b1.58: norms of the attention's output and of the network's
    # gated values (SiLU, as llama.cpp gates every BitNet).
    case("bitnet", "tiny-bitnet"),
    case("bitnet-q8_0", "tiny-bitnet", matrix_type="q8_0"),
    case("bitnet-tq1_0", "tiny-bitnet", matrix_type="tq1_0"),
    case("bitnet-tq2_0", "tiny-bitnet", matrix_type="tq2_0"),
    # The IQ1-IQ3 types (random lattice points, which `realm synth` writes
    # for the types Realm reads but does not write), on a llama 256 wide.
    case("llama-wide-iq2_xxs", "tiny-llama-wide", matrix_type="iq2_xxs"),
    case("llama-wide-iq2_xs", "tiny-llama-wide", matrix_type="iq2_xs"),
    case("llama-wide-iq2_s", "tiny-llama-wide", matrix_type="iq2_s"),
    case("llama-wide-iq3_xxs", "tiny-llama-wide", matrix_type="iq3_xxs"),
    case("llama-wide-iq3_s", "tiny-llama-wide", matrix_type="iq3_s"),
    case("llama-wide-iq1_s", "tiny-llama-wide", matrix_type="iq1_s"),
    case("llama-wide-iq1_m", "tiny-llama-wide", matrix_type="iq1_m"),
    # Apertus: Qwen 3's Q/K norms, no gate, xIELU a block.
    case("apertus", "tiny-apertus"),
    case("apertus-q8_0", "tiny-apertus", matrix_type="q8_0"),
    case("apertus-rope-factors", "tiny-apertus", rope_factors=True),
    # Maincoder: per-head Q/K norms after RoPE.
    case("maincoder", "tiny-maincoder"),
    case("maincoder-q8_0", "tiny-maincoder", matrix_type="q8_0"),
    case("grok", "tiny-grok"),
    case("grok-q8_0", "tiny-grok", matrix_type="q8_0"),
    case("grok-2", "tiny-grok-2"),
    case("grok-yarn", "tiny-grok",
         overrides=[("grok.rope.scaling.type", "str", "yarn"),
                    ("grok.rope.scaling.factor", "float", "4"),
                    ("grok.rope.scaling.original_context_length", "int", "4096")]),
    # Encoders: every position's final hidden state (no pooling), the
    # tokens in one batch as llama.cpp needs them.
    case("bert", "tiny-bert", embedding=True),
    case("bert-q8_0", "tiny-bert", matrix_type="q8_0", embedding=True),
    case("nomic-bert", "tiny-nomic-bert", embedding=True),
    case("nomic-bert-q8_0", "tiny-nomic-bert", matrix_type="q8_0", embedding=True),
    # Nomic BERT MoE: ungated GELU experts in the second block.
    case("nomic-bert-moe", "tiny-nomic-bert-moe", embedding=True),
    case("nomic-bert-moe-q8_0", "tiny-nomic-bert-moe", matrix_type="q8_0", embedding=True),
    # EmbeddingGemma: a local block (its window on both sides) and a
    # global one, then its dense projections (of every position, as
    # llama.cpp applies them without pooling).
    case("gemma-embedding", "tiny-gemma-embedding", embedding=True),
    case("gemma-embedding-q8_0", "tiny-gemma-embedding", matrix_type="q8_0", embedding=True),
    case("llama-embed", "tiny-llama-embed", embedding=True),
    # (Causal where the file does not say otherwise, as llama.cpp runs it.)
    case("llama-embed-causal", "tiny-llama-embed", embedding=True,
         overrides=[("llama-embed.attention.causal", "bool", "true")]),
    case("neo-bert", "tiny-neo-bert", embedding=True),
    case("neo-bert-q8_0", "tiny-neo-bert", matrix_type="q8_0", embedding=True),
    # ModernBERT: a global block, then two local ones (windows on both
    # sides, their own RoPE base); GEGLU, or SwiGLU as Granite Embedding R2.
    case("modern-bert", "tiny-modern-bert", embedding=True),
    case("modern-bert-q8_0", "tiny-modern-bert", matrix_type="q8_0", embedding=True),
    case("modern-bert-silu", "tiny-modern-bert", embedding=True,
         overrides=[("modern-bert.hidden_activation", "str", "silu")]),
    case("eurobert", "tiny-eurobert", embedding=True),
    # A BERT reranker: the first token's state through `cls`, tanh and
    # `cls.output` (llama.cpp's rank pooling).
    case("bert-rank", "tiny-bert-rank", embedding=True, rank=True),
    case("bert-rank-q8_0", "tiny-bert-rank", matrix_type="q8_0", embedding=True, rank=True),
    # Jina BERT v2: ALiBi on both sides, Q/K LayerNorms, `attn_norm_2`,
    # GEGLU with biases; its reranker's one-row `cls`.
    case("jina-bert-v2", "tiny-jina-bert-v2", embedding=True),
    case("jina-bert-v2-q8_0", "tiny-jina-bert-v2", matrix_type="q8_0", embedding=True),
    case("jina-bert-v2-rank", "tiny-jina-bert-v2-rank", embedding=True, rank=True),
    # Jina BERT v3: NeoX RoPE, `attn_qkv` with its bias, ungated GELUs.
    # A ModernBERT reranker: the tokens' mean (or, as the file may say,
    # the first token's state) through `cls`, GELU, `cls.norm`, `cls.output`.
    case("modern-bert-rank", "tiny-modern-bert-rank", embedding=True, rank=True),
    case("modern-bert-rank-cls", "tiny-modern-bert-rank", embedding=True, rank=True,
         overrides=[("modern-bert.classifier.pooling_type", "int", "2")]),
    # A Qwen 3 reranker: its last token's state through `cls.output`'s
    # "yes" and "no" rows, then a softmax.
    case("qwen3-rank", "tiny-qwen3-rank", embedding=True, rank=True),
    case("qwen3-rank-q8_0", "tiny-qwen3-rank", matrix_type="q8_0", embedding=True, rank=True),
    case("jina-bert-v3", "tiny-jina-bert-v3", embedding=True),
    case("jina-bert-v3-q8_0", "tiny-jina-bert-v3", matrix_type="q8_0", embedding=True),
]


def synth(c, path):
    args = [REALM, "synth", c["layout"], "-o", path, "--seed", str(SEED),
            "--matrix-type", c["matrix_type"]]
    if c["rope_factors"]:
        args.append("--rope-factors")
    if c["long_rope"]:
        args += ["--long-rope", str(c["long_rope"])]
    for key, ty, value in c["overrides"]:
        args += ["--override-kv", f"{key}={ty}:{value}"]
    subprocess.run(args, check=True, capture_output=True)


def hidden_states(path, c, tokens):
    """An encoder's final hidden states of `tokens` (one batch, pooling
    none), a row a position."""
    import llama_cpp
    from llama_cpp import Llama
    pooling = llama_cpp.LLAMA_POOLING_TYPE_RANK if c.get("rank") else llama_cpp.LLAMA_POOLING_TYPE_NONE
    # (f32 caches for a decoder's, as the logits cases have them.)
    llm = Llama(path, embedding=True, pooling_type=pooling,
                n_ctx=c["n_ctx"], n_batch=64, n_ubatch=64, n_threads=2, verbose=False,
                type_k=0, type_v=0)
    batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
    for i, t in enumerate(tokens):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, i, 1
        batch.seq_id[i][0], batch.logits[i] = 0, True
    batch.n_tokens = len(tokens)
    assert llama_cpp.llama_decode(llm._ctx.ctx, batch) == 0
    if c.get("rank"):
        n = llama_cpp.llama_model_n_cls_out(llm._model.model)
        rows = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings_seq(llm._ctx.ctx, 0),
                                     shape=(n,)).reshape(1, n).copy()
    else:
        d = llama_cpp.llama_model_n_embd(llm._model.model)
        rows = np.ctypeslib.as_array(llama_cpp.llama_get_embeddings(llm._ctx.ctx),
                                     shape=(len(tokens) * d,)).reshape(len(tokens), d).copy()
    llama_cpp.llama_batch_free(batch)
    del llm
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these cases again")
    args = ap.parse_args()
    llama_env.tools()
    from llama_cpp import Llama

    out = dict(seed=SEED, tokens=TOKENS, cases=[])
    kept = {}
    if args.only:
        unknown = set(args.only) - {c["name"] for c in CASES}
        if unknown:
            ap.error(f"no such case: {sorted(unknown)}")
        with open(OUT) as f:
            old = json.load(f)
        assert old["seed"] == SEED and old["tokens"] == TOKENS
        kept = {c["name"]: c for c in old["cases"] if c["name"] not in args.only}
    with tempfile.TemporaryDirectory() as tmp:
        for c in CASES:
            if c["name"] in kept:
                out["cases"].append(kept[c["name"]])
                continue
            path = os.path.join(tmp, c["name"] + ".gguf")
            synth(c, path)
            with open(path, "rb") as f:
                digest = llama_env.fnv1a(f.read())
            if c.get("embedding"):
                rows = hidden_states(path, c, tokens_of(c))
                hidden = [[float("%.6g" % v) for v in row] for row in rows]
                out["cases"].append(dict(c, fnv1a=f"{digest:016x}", hidden=hidden))
                print(c["name"], rows.shape, "max |hidden|", float(np.abs(rows).max()))
                continue
            # (YaRN's corrections as the file has them, as llama-server
            # reads them: the bindings' defaults would force 32 and 1.)
            llm = Llama(path, n_ctx=c["n_ctx"], n_batch=64, logits_all=True, n_threads=2,
                        type_k=0, type_v=0, verbose=False, seed=0,
                        yarn_beta_fast=-1.0, yarn_beta_slow=-1.0)
            tokens = tokens_of(c)
            llm.eval(tokens)
            scores = np.array(llm.scores[len(tokens) - len(TOKENS): len(tokens)], dtype=np.float32)
            del llm
            logits = [[float("%.6g" % v) for v in row] for row in scores]
            out["cases"].append(dict(c, fnv1a=f"{digest:016x}", logits=logits))
            print(c["name"], scores.shape, "max |logit|", float(np.abs(scores).max()))
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
