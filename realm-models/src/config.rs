//! A transformer's hyper-parameters, read from GGUF metadata.

use realm_core::backend::{KvCacheConfig, KvDtype, KvShape, RopeMode, Xielu};
use realm_core::gguf::{Metadata, MetadataArray, MetadataValue};

use crate::{Error, Result};

/// The chunks of Llama 4's local layers' attention, and the floor of its
/// attention temperature (llama.cpp's constants).
const LLAMA4_CHUNK: usize = 8192;

/// The architectures Realm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 1/2/3, SmolLM, TinyLlama.
    Llama,
    /// Mistral (llama-shaped, optional sliding window).
    Mistral,
    /// Qwen 2 (q/k/v biases, NeoX RoPE).
    Qwen2,
    /// Qwen 1.5 and 2 with mixture-of-experts feed-forward blocks and a
    /// shared expert (Qwen 2's attention).
    Qwen2Moe,
    /// Qwen 3 dense (per-head Q/K norms, NeoX RoPE).
    Qwen3,
    /// Qwen 3 with mixture-of-experts feed-forward blocks.
    Qwen3Moe,
    /// Qwen3-VL's language models (qwen3vl: 2B to 32B), text alone: Qwen
    /// 3's blocks with interleaved M-RoPE, which text positions make NeoX's
    /// (`rope.dimension_sections` checked); its DeepStack inputs are an
    /// image's, none for text.
    Qwen3Vl,
    /// Qwen3-VL's mixtures of experts (qwen3vlmoe: 30B-A3B, 235B-A22B),
    /// text alone: Qwen 3 MoE's blocks, the same RoPE.
    Qwen3VlMoe,
    /// Phi 3 and Phi 4 (fused QKV and gate/up matrices, NeoX RoPE).
    Phi3,
    /// SmolLM3 (llama, without RoPE in every fourth layer).
    SmolLM3,
    /// Granite 3 (llama, with embedding, residual, attention and logit
    /// multipliers).
    Granite,
    /// Gemma 2 (sandwich norms, GELU gate, alternating local/global
    /// layers, soft-capped attention scores and logits).
    Gemma2,
    /// Gemma 3 (QK-norm, sandwich norms, GELU gate, local/global layers).
    Gemma3,
    /// Gemma 3n (gemma3n: E2B, E4B): Gemma 3's blocks with unweighted
    /// value norms and unscaled scores, a low-rank side path (LAuReL),
    /// four residual streams of which one runs each block (AltUp,
    /// [`AltUpConfig`]), an input of its own to each block from a second
    /// embedding table, the last blocks reading earlier blocks' KV
    /// caches, and sparse activations in the first feed-forward blocks.
    Gemma3n,
    /// Gemma 4 (gemma4: E2B, E4B, 31B, 26B A4B): Gemma 3's blocks with unweighted
    /// value norms and unscaled scores, global blocks with fewer and wider
    /// heads of their own (their keys their values where the file has no
    /// value matrix) rotating a quarter of each head, an input of its own
    /// to each block from a second embedding table (E2B, E4B), the last
    /// blocks reading earlier blocks' KV caches, a scale on each block's
    /// output ([`Gemma4Config`]), and (the 26B A4B) experts beside each
    /// dense feed-forward network, with norms and a router input of their
    /// own.
    Gemma4,
    /// gpt-oss (OpenAI's open-weight MoE): biased projections, attention
    /// sinks, local/global layers, YaRN, experts with biases and a clamped
    /// SwiGLU whose weights are a softmax over the chosen experts' scores.
    GptOss,
    /// Ministral 3 (llama-shaped, YaRN with its own corrections, and
    /// Llama 4's attention temperature past the original context).
    Mistral3,
    /// OLMo 2 and 3: no norms before attention and the feed-forward
    /// block, RMSNorms after them, Q/K RMSNorms over all heads at once;
    /// OLMo 3's sliding-window layers, whose RoPE is not scaled.
    Olmo2,
    /// EXAONE 4: OLMo 2's norms with per-head Q/K norms; the 32B's
    /// sliding window on three layers of four, RoPE on those alone.
    Exaone4,
    /// ERNIE 4.5's dense models (0.3B): llama's blocks.
    Ernie45,
    /// GLM-4 (0414) and GLM-Z1: RMSNorms before and after each part of a
    /// block, gate and up in one matrix, part of each head rotated.
    Glm4,
    /// Seed-OSS: llama's blocks with q/k/v biases, NeoX RoPE, the
    /// feed-forward norm named as Gemma's attention post-norm (as
    /// gpt-oss's).
    SeedOss,
    /// Gemma (1) and CodeGemma: llama's blocks with a GELU gate, NeoX
    /// RoPE and scaled embeddings.
    Gemma,
    /// Granite 3 with mixtures of experts (1B-A400M, 3B-A800M): Granite's
    /// multipliers, experts weighted by the softmax of the chosen, and a
    /// shared expert every token runs, ungated, where the file has one.
    GraniteMoe,
    /// OLMoE: llama's norms, OLMo 2's Q/K norms over all heads, NeoX
    /// RoPE, experts weighted by the softmax over all (not renormalised).
    Olmoe,
    /// GLM-4.5 and 4.6 (and Air): q/k/v biases, optional per-head Q/K
    /// norms, part of each head rotated (NeoX), dense leading blocks, then
    /// experts chosen by their sigmoid scores plus a selection bias, and a
    /// shared expert.
    Glm4Moe,
    /// ERNIE 4.5's mixtures of experts (21B-A3B, 300B-A47B): llama's
    /// blocks, a dense first block, experts chosen by their softmax
    /// probabilities plus a selection bias, and a shared expert.
    Ernie45Moe,
    /// MiniMax-M2: Q/K norms over all heads, part of each head rotated
    /// (NeoX), experts in every block chosen by their sigmoid scores plus a
    /// selection bias.
    MinimaxM2,
    /// dots.llm1: per-head Q/K norms, NeoX RoPE, dense leading blocks,
    /// experts as the file routes them (maybe with a selection bias) and
    /// shared experts.
    Dots1,
    /// Ling 2.0 and Ring 2.0 (bailingmoe2): Q, K and V in one matrix,
    /// per-head Q/K norms, part of each head rotated (NeoX), dense leading
    /// blocks, experts chosen in groups by their sigmoid scores plus a
    /// selection bias, and shared experts.
    BailingMoe2,
    /// DeepSeek V2 and V3, Kimi K2, GLM-4.7-Flash (deepseek2): multi-head
    /// latent attention ([`MlaConfig`], as files converted for its
    /// absorbed form hold it), dense leading blocks, then experts routed
    /// as the file says, in groups, and shared experts.
    Deepseek2,
    /// Hunyuan's mixtures of experts (hunyuan-moe: Hunyuan-A13B): NeoX
    /// RoPE, then per-head Q/K norms (after it, not before), experts in
    /// every block (renormalised softmax weights) beside an ungated
    /// shared expert.
    HunyuanMoe,
    /// Hunyuan's dense models (hunyuan-dense: 0.5B to 7B): llama's blocks
    /// with NeoX RoPE, then per-head Q/K norms (after it), and the RoPE
    /// base raised by `rope.scaling.alpha` (NTK-aware).
    HunyuanDense,
    /// MiniCPM (minicpm: 1B, 2B, MiniCPM 4): llama's blocks with Granite's
    /// multipliers, by default MiniCPM's (embeddings times 12, each block
    /// part's output times `1.4 / sqrt(layers)`, logits divided by `256 /
    /// width`), an optional attention output bias, LongRoPE where the file
    /// has its factors.
    MiniCpm,
    /// InternLM 2 and 2.5 (internlm2: 1.8B, 7B, 20B): llama's blocks (its
    /// converter splits and permutes the fused `wqkv` into llama's query,
    /// key and value matrices), its own output matrix.
    InternLm2,
    /// Arcee's AFM (arcee: AFM-4.5B): llama's blocks with a feed-forward
    /// network of squared ReLUs and no gate (`ffn_up`, `ffn_down`).
    Arcee,
    /// Llama 4 (llama4: Scout 17B-16E, Maverick 17B-128E): three of four
    /// layers attend within chunks of 8192 positions with RoPE and (but
    /// Maverick) Q/K norms without weights, the fourth globally without
    /// RoPE, its queries growing with the position
    /// ([`AttnTemperature`]); experts every `interleave_moe_layer_step`
    /// blocks, each chosen by its router's top scores and given the
    /// token times its score's sigmoid, beside an ungated shared expert.
    Llama4,
    /// Qwen 3.5's dense models (qwen35): three of four blocks a gated
    /// delta net (linear attention with a recurrent state,
    /// [`DeltaNetConfig`]), the fourth gated attention (a sigmoid gate on
    /// each head's output, per-head Q/K norms, part of each head rotated
    /// by interleaved M-RoPE, which text positions make NeoX's).
    Qwen35,
    /// Qwen 3.5's mixtures of experts (qwen35moe: 35B-A3B, 122B-A10B,
    /// 397B-A17B): Qwen 3.5's blocks with Qwen 3 MoE's experts and Qwen 2
    /// MoE's gated shared expert.
    Qwen35Moe,
    /// Qwen3-Next (qwen3next: 80B-A3B): Qwen 3.5 MoE's blocks before it,
    /// with plain NeoX RoPE over part of each head, a delta net's value
    /// heads grouped by their query/key head (`h / (v_heads / k_heads)`),
    /// its rates and decays in one product (`ssm_ba`), and in
    /// older files its queries, keys, values and gate in one too
    /// (`ssm_in`, by query/key head).
    Qwen3Next,
    /// LFM2 (Liquid's 350M to 2.6B, LFM2.5): most blocks a gated short
    /// convolution (a recurrent state of its last inputs,
    /// [`ShortConvConfig`]), the others attention with per-head Q/K norms
    /// and NeoX RoPE (the blocks without KV heads are the convolutions).
    Lfm2,
    /// Granite 4.0's hybrids (granitehybrid: H-Micro, H-Tiny, H-Small):
    /// blocks without KV heads are Mamba-2 mixers ([`MambaConfig`]), the
    /// others attention; Granite's multipliers, RoPE unless
    /// `rope.scaling.finetuned` says not, dense blocks or experts with an
    /// ungated shared expert.
    GraniteHybrid,
    /// Falcon-H1 (falcon-h1: 0.5B to 34B): in every block attention
    /// (NeoX RoPE) and a Mamba-2 mixer side by side on the same normed
    /// input ([`MambaConfig::parallel`]), their outputs summed, then a
    /// gated feed-forward block whose norm is named `ffn_norm` (no
    /// `.weight`); Falcon's multipliers are in the weights.
    FalconH1,
    /// LFM2's mixtures of experts (lfm2moe: 8B-A1B, 24B-A2B): LFM2's
    /// blocks, dense leading blocks, then experts chosen with a selection
    /// bias as the file routes them.
    Lfm2Moe,
    /// Nemotron-H (nemotron_h: Nemotron-H 8B, NVIDIA Nemotron Nano 9B v2,
    /// dense): each block one part alone, a Mamba-2 mixer (no KV heads,
    /// no feed-forward width), attention without RoPE (KV heads) or a
    /// feed-forward network of squared ReLUs without a gate (a
    /// feed-forward width).
    NemotronH,
    /// Nemotron-H's mixtures of experts (nemotron_h_moe: NVIDIA Nemotron 3
    /// Nano 30B-A3B): Nemotron-H's blocks, the feed-forward ones experts
    /// of squared ReLUs without a gate, scored by sigmoids with a selection
    /// bias, and an ungated shared expert of the same kind; Nemotron 3
    /// Super's experts in a latent space ([`MoeConfig::latent`]).
    NemotronHMoe,
    /// StarCoder 2 (starcoder2: 3B, 7B, 15B): LayerNorms with biases,
    /// query, key, value and output biases, NeoX RoPE, a feed-forward
    /// network of GELUs without a gate, with biases (`ffn_up.bias`,
    /// `ffn_down.bias`).
    Starcoder2,
    /// Phi 2 and Phi 1.5 (phi2): LayerNorms with biases, attention and a
    /// GELU network without a gate side by side on the same normed input
    /// ([`ModelConfig::parallel_ffn`]), biases on every product, part of
    /// each head rotated (NeoX), an output bias (`output.bias`).
    Phi2,
    /// StableLM (stablelm: StableLM 2 1.6B and 12B, 3B 4E1T, StableCode
    /// 3B): LayerNorms with biases, part of each head rotated (NeoX),
    /// SwiGLU; a block without a feed-forward norm runs its network
    /// beside the attention, on the attention's input.
    StableLm,
    /// GPT-NeoX (gptneox: Pythia, GPT-NeoX 20B): LayerNorms with biases,
    /// query, key and value in one matrix, part of each head rotated
    /// (NeoX), a GELU network without a gate, biases on every product;
    /// with `use_parallel_residual` the network beside the attention,
    /// each normed by its own norm.
    GptNeox,
    /// Command R (command-r: 35B, Aya 23): LayerNorms without biases,
    /// attention and SwiGLU side by side on the same normed input, the
    /// logits times `logit_scale`, tied output.
    CommandR,
    /// Command R7B and Command A (cohere2): Command R's blocks, three of
    /// four attending within a window with RoPE, the fourth globally
    /// without RoPE.
    Cohere2,
    /// Falcon (falcon: 7B, 40B, 180B): LayerNorms with biases, query, key
    /// and value in one matrix, NeoX RoPE, a GELU network without a gate
    /// beside the attention on the same normed input; the 40B's and
    /// 180B's attention normed by a norm of its own (`attn_norm_2`), the
    /// network by `attn_norm`.
    Falcon,
    /// GPT-2 (gpt2): learned position embeddings (`position_embd`, one
    /// row a position up to `context_length`) added to the token's, no
    /// RoPE, LayerNorms with biases, query, key and value in one matrix,
    /// GELUs without a gate, biases on every product.
    Gpt2,
    /// StarCoder and SantaCoder (starcoder): GPT-2's blocks with one KV
    /// head (multi-query attention).
    Starcoder,
    /// Orion (orion: 14B): LayerNorms with biases, NeoX RoPE, SwiGLU.
    Orion,
    /// Nemotron-4 and Minitron (nemotron): LayerNorms with biases (the
    /// converter adds Nemotron's 1 to their weights), part of each head
    /// rotated (NeoX), a feed-forward network of squared ReLUs without a
    /// gate; output and feed-forward biases where the file has them.
    Nemotron,
    /// CodeShell (codeshell: 7B): StarCoder 2's blocks (LayerNorms with
    /// biases, biases on every product, NeoX RoPE, GELUs without a gate)
    /// with an output matrix of its own.
    CodeShell,
    /// EXAONE 3.0 and 3.5 (exaone): llama's blocks with NeoX RoPE.
    Exaone,
    /// Mamba-2 (mamba2: Mamba-2 130M to 2.7B, Mamba-Codestral 7B): every
    /// block a Mamba-2 mixer alone ([`MambaConfig`], Granite 4.0's) after
    /// an RMSNorm; no attention, no feed-forward networks (the file's
    /// head count and feed-forward width are 0): a recurrent state per
    /// session and no KV cache.
    Mamba2,
    /// BLOOM and BLOOMZ (bloom): ALiBi (maximum bias 8) instead of RoPE,
    /// a LayerNorm of the embeddings (`token_embd_norm`), LayerNorms with
    /// biases, `attn_qkv` with its bias, GELUs without a gate, biases on
    /// every product.
    Bloom,
    /// MPT (mpt: 7B, 30B): ALiBi (`attention.max_alibi_bias`) where the
    /// file sets it, LayerNorms (biases where the file has them), `attn_qkv`,
    /// GELUs without a gate, learned positions where the file has them;
    /// `attention.clamp_kqv`, Q/K LayerNorms and activation scales refused.
    Mpt,
    /// Refact (refact: 1.6B): llama's blocks with ALiBi (maximum bias 8)
    /// instead of RoPE.
    Refact,
    /// XVERSE (xverse: 7B, 13B, 65B): llama's blocks.
    Xverse,
    /// PLaMo (plamo: 13B): llama's blocks with the feed-forward network
    /// beside the attention on the same normed input (no `ffn_norm`),
    /// NeoX RoPE.
    Plamo,
    /// OLMo (olmo: 1B, 7B, 1.7): LayerNorms without weights or biases,
    /// SwiGLU, queries, keys and values clamped to `attention.clamp_kqv`
    /// where the file sets it.
    Olmo,
    /// Baichuan and Baichuan 2 (baichuan): llama's blocks, RoPE in the
    /// 7B's 32 blocks, ALiBi (maximum bias 8) in the 13B's 40, as
    /// llama.cpp tells them apart; other block counts refused.
    Baichuan,
    /// Mamba (mamba: Mamba 130M to 2.8B, Falcon Mamba 7B): every block an
    /// RMSNorm and a Mamba mixer alone ([`Mamba1Config`]), no attention and
    /// no feed-forward networks: a recurrent state per session.
    Mamba,
    /// BERT (bert: all-MiniLM, BGE, E5, GTE, ...): an encoder
    /// ([`ModelConfig::encoder`]): learned positions and the first token
    /// type's row added to the tokens' embeddings, then a LayerNorm;
    /// blocks that norm after each residual add (`attn_output_norm`,
    /// `layer_output_norm`), biases on every product, GELUs without a gate.
    Bert,
    /// Nomic BERT (nomic-bert: nomic-embed-text v1 and v1.5): BERT's
    /// blocks with NeoX RoPE instead of learned positions, `attn_qkv`
    /// without biases and SwiGLU.
    NomicBert,
    /// Nomic BERT MoE (nomic-bert-moe: nomic-embed-text v2 MoE): Nomic
    /// BERT's blocks with BERT's ungated GELU networks, every second block's
    /// a mixture of ungated GELU experts (`moe_every_n_layers` 2; softmax
    /// weights, not renormalised).
    NomicBertMoe,
    /// EmbeddingGemma (gemma-embedding: 300M): an encoder of Gemma 3's
    /// blocks, its local blocks' windows on both sides of each token,
    /// and the file's dense projections of the pooled embedding
    /// (`dense_2`, `dense_3`) where it has them.
    GemmaEmbedding,
    /// Llama-architecture embedding models (llama-embed): an encoder of
    /// llama's blocks.
    LlamaEmbed,
    /// NeoBERT (neo-bert: 250M): an encoder of llama's blocks with
    /// `attn_qkv`, gate and up in one `ffn_up`, and its output norm named
    /// `enc.output_norm`.
    NeoBert,
    /// ModernBERT (modern-bert: ModernBERT, gte-modernbert, Granite
    /// Embedding R2): an encoder of LayerNorms without biases (none before
    /// the first block's attention), `attn_qkv`, NeoX RoPE with a base of
    /// its own for the local blocks, a window on both sides of each token
    /// in all blocks but every third from the first, and gate and up in
    /// one `ffn_up` (GEGLU, or SwiGLU where `hidden_act` is silu).
    ModernBert,
    /// EuroBERT (eurobert): an encoder of llama's blocks with NeoX RoPE.
    EuroBert,
    /// Jina BERT v2 (jina-bert-v2: jina-embeddings-v2, jina-reranker-v1):
    /// BERT's blocks with ALiBi on both sides of each token (maximum bias
    /// 8) instead of positions, LayerNorms of the whole queries and keys
    /// where the file has them, a second norm after the attention
    /// (`attn_norm_2`) where it has one, and a GEGLU network (gate and up
    /// in one `ffn_up`, or apart) with biases.
    JinaBertV2,
    /// Jina BERT v3 (jina-bert-v3: jina-embeddings-v3): XLM-R's BERT
    /// blocks with NeoX RoPE instead of positions, `attn_qkv`, GELUs
    /// without a gate, biases where the file has them (its task adapters
    /// are LoRA files).
    JinaBertV3,
    /// ChatGLM (chatglm: GLM-4-9B and ChatGLM files converted before
    /// `glm4`): GLM-4's blocks without its norms after each part,
    /// `attn_qkv` with its bias, half of each head rotated, SwiGLU with gate
    /// and up in one `ffn_up`.
    ChatGlm,
    /// DeciLM (deci: Llama-3.1-Nemotron-51B, Llama-3.3-Nemotron-Super-49B,
    /// Nemotron Ultra): llama's blocks, each with its own KV heads and
    /// feed-forward width (`attention.head_count_kv`,
    /// `feed_forward_length` lists), some with a linear map (`attn_output`
    /// alone: no KV heads) or nothing (no heads) in place of attention,
    /// some without a feed-forward network (width 0).
    Deci,
    /// Qwen (qwen: Qwen 1, 1.8B to 72B): llama's blocks with q/k/v in one
    /// `attn_qkv` with its bias, NeoX RoPE, SwiGLU half as wide as
    /// `feed_forward_length` says (as the Hugging Face config's
    /// `intermediate_size` counts both of its halves).
    Qwen,
    /// DeepSeek (deepseek: DeepSeek-MoE 16B, DeepSeek V1's MoE models):
    /// llama's blocks, the first `leading_dense_block_count` dense, then
    /// softmax-routed experts (weights not renormalised, scaled by
    /// `expert_weights_scale`) beside ungated shared experts
    /// (`expert_shared_count` experts' width).
    Deepseek,
    /// DBRX (dbrx): LayerNorms without biases, q/k/v in one `attn_qkv`
    /// clamped to `attention.clamp_kqv`, NeoX RoPE, and in every block
    /// softmax-routed experts (renormalised) normed by `attn_output_norm`.
    Dbrx,
    /// Jais (jais: Jais 13B, 30B, jais-family): LayerNorms with biases,
    /// q/k/v in one `attn_qkv` with its bias, ALiBi where the file gives
    /// `attention.max_alibi_bias` (else no positions at all), scores scaled by
    /// one over a head's width (not its root), SwiGLU with biases on its three
    /// products.
    Jais,
    /// BitNet b1.58 (bitnet: bitnet_b1_58, BitNet b1.58 2B4T): llama's
    /// blocks with an RMSNorm of the attention's output before `attn_output`
    /// (`attn_sub_norm`) and of the gated hidden values before `ffn_down`
    /// (`ffn_sub_norm`), NeoX RoPE, the embedding tied; ternary weights are
    /// TQ1_0/TQ2_0 matrices. The gate is SiLU, as llama.cpp runs it, unless
    /// `hidden_activation` says `relu2` (the 2B4T's squared ReLU).
    Bitnet,
    /// Apertus (apertus: Apertus 8B and 70B): llama's blocks with per-head
    /// Q/K RMSNorms, NeoX RoPE, and no gate: `ffn_up`, then xIELU (its
    /// coefficients a block, `xielu.*`), then `ffn_down`.
    Apertus,
    /// Maincoder (maincoder: Maincoder-1B): llama's blocks with per-head Q/K
    /// RMSNorms after RoPE (as Hunyuan's).
    Maincoder,
    /// Grok (xAI's Grok-1 and Grok-2): experts with GELU gates, attention scores scaled and soft-capped, the embedding and logits scaled, norms after attention and the feed-forward block
    Grok,
}

impl Architecture {
    /// Every architecture Realm runs.
    pub const ALL: [Architecture; 88] = [
        Self::Llama,
        Self::Mistral,
        Self::Qwen2,
        Self::Qwen2Moe,
        Self::Qwen3,
        Self::Qwen3Moe,
        Self::Qwen3Vl,
        Self::Qwen3VlMoe,
        Self::Phi3,
        Self::SmolLM3,
        Self::Granite,
        Self::Gemma2,
        Self::Gemma3,
        Self::Gemma3n,
        Self::Gemma4,
        Self::GptOss,
        Self::Mistral3,
        Self::Olmo2,
        Self::Exaone4,
        Self::Ernie45,
        Self::Glm4,
        Self::SeedOss,
        Self::Gemma,
        Self::GraniteMoe,
        Self::Olmoe,
        Self::Glm4Moe,
        Self::Ernie45Moe,
        Self::MinimaxM2,
        Self::Dots1,
        Self::BailingMoe2,
        Self::Deepseek2,
        Self::Llama4,
        Self::Arcee,
        Self::InternLm2,
        Self::MiniCpm,
        Self::HunyuanMoe,
        Self::HunyuanDense,
        Self::Qwen35,
        Self::Qwen35Moe,
        Self::Qwen3Next,
        Self::Lfm2,
        Self::GraniteHybrid,
        Self::FalconH1,
        Self::Lfm2Moe,
        Self::NemotronH,
        Self::NemotronHMoe,
        Self::Starcoder2,
        Self::Phi2,
        Self::StableLm,
        Self::GptNeox,
        Self::CommandR,
        Self::Cohere2,
        Self::Falcon,
        Self::Gpt2,
        Self::Starcoder,
        Self::Orion,
        Self::Nemotron,
        Self::CodeShell,
        Self::Exaone,
        Self::Mamba2,
        Self::Bloom,
        Self::Mpt,
        Self::Refact,
        Self::Xverse,
        Self::Plamo,
        Self::Olmo,
        Self::Baichuan,
        Self::Mamba,
        Self::Bert,
        Self::NomicBert,
        Self::NomicBertMoe,
        Self::GemmaEmbedding,
        Self::LlamaEmbed,
        Self::NeoBert,
        Self::ModernBert,
        Self::EuroBert,
        Self::JinaBertV2,
        Self::JinaBertV3,
        Self::ChatGlm,
        Self::Deci,
        Self::Qwen,
        Self::Deepseek,
        Self::Dbrx,
        Self::Jais,
        Self::Bitnet,
        Self::Apertus,
        Self::Maincoder,
        Self::Grok,
    ];

    /// The architecture named by `general.architecture`.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| Error::UnknownArchitecture(name.to_string()))
    }

    /// The names of every architecture Realm runs, comma-separated.
    pub fn names() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
        names.join(", ")
    }

    /// Whether the architecture's norms are LayerNorms, not RMSNorms
    /// ([`ModelConfig::layer_norm`]).
    pub fn layer_norms(self) -> bool {
        matches!(
            self,
            Self::Starcoder2
                | Self::Phi2
                | Self::StableLm
                | Self::GptNeox
                | Self::CommandR
                | Self::Cohere2
                | Self::Falcon
                | Self::Gpt2
                | Self::Starcoder
                | Self::Orion
                | Self::Nemotron
                | Self::CodeShell
                | Self::Bloom
                | Self::Mpt
                | Self::Olmo
                | Self::Bert
                | Self::NomicBert
                | Self::NomicBertMoe
                | Self::ModernBert
                | Self::JinaBertV2
                | Self::JinaBertV3
                | Self::Dbrx
                | Self::Jais
        )
    }

    /// Whether the architecture is an encoder ([`ModelConfig::encoder`]).
    pub fn encoder(self) -> bool {
        self.bert_blocks()
            || matches!(
                self,
                Self::GemmaEmbedding
                    | Self::LlamaEmbed
                    | Self::NeoBert
                    | Self::ModernBert
                    | Self::EuroBert
            )
    }

    /// Whether the architecture's blocks are BERT's: no input norms, a
    /// LayerNorm of the residual stream after each part joins it, no
    /// output norm.
    pub fn bert_blocks(self) -> bool {
        matches!(
            self,
            Self::Bert | Self::NomicBert | Self::NomicBertMoe | Self::JinaBertV2 | Self::JinaBertV3
        )
    }

    /// Whether the architecture's feed-forward networks have no gate
    /// (an up product, its activation, a down product): Arcee's and
    /// Nemotron's squared ReLUs, the other LayerNorm families' GELUs.
    pub fn ungated_ffn(self) -> bool {
        matches!(
            self,
            Self::Arcee
                | Self::Starcoder2
                | Self::Phi2
                | Self::GptNeox
                | Self::Falcon
                | Self::Gpt2
                | Self::Starcoder
                | Self::Nemotron
                | Self::CodeShell
                | Self::Bloom
                | Self::Mpt
                | Self::Bert
                | Self::NomicBertMoe
                | Self::JinaBertV3
                | Self::Apertus
        )
    }

    /// The metadata prefix (`general.architecture`'s value).
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen2Moe => "qwen2moe",
            Self::Qwen3 => "qwen3",
            Self::Qwen3Moe => "qwen3moe",
            Self::Qwen3Vl => "qwen3vl",
            Self::Qwen3VlMoe => "qwen3vlmoe",
            Self::Phi3 => "phi3",
            Self::SmolLM3 => "smollm3",
            Self::Granite => "granite",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3",
            Self::Gemma3n => "gemma3n",
            Self::Gemma4 => "gemma4",
            Self::GptOss => "gpt-oss",
            Self::Mistral3 => "mistral3",
            Self::Olmo2 => "olmo2",
            Self::Exaone4 => "exaone4",
            Self::Ernie45 => "ernie4_5",
            Self::Glm4 => "glm4",
            Self::SeedOss => "seed_oss",
            Self::Gemma => "gemma",
            Self::GraniteMoe => "granitemoe",
            Self::Olmoe => "olmoe",
            Self::Glm4Moe => "glm4moe",
            Self::Ernie45Moe => "ernie4_5-moe",
            Self::MinimaxM2 => "minimax-m2",
            Self::Dots1 => "dots1",
            Self::BailingMoe2 => "bailingmoe2",
            Self::Deepseek2 => "deepseek2",
            Self::Llama4 => "llama4",
            Self::Arcee => "arcee",
            Self::InternLm2 => "internlm2",
            Self::MiniCpm => "minicpm",
            Self::HunyuanMoe => "hunyuan-moe",
            Self::HunyuanDense => "hunyuan-dense",
            Self::Qwen35 => "qwen35",
            Self::Qwen35Moe => "qwen35moe",
            Self::Qwen3Next => "qwen3next",
            Self::Lfm2 => "lfm2",
            Self::GraniteHybrid => "granitehybrid",
            Self::FalconH1 => "falcon-h1",
            Self::Lfm2Moe => "lfm2moe",
            Self::NemotronH => "nemotron_h",
            Self::NemotronHMoe => "nemotron_h_moe",
            Self::Starcoder2 => "starcoder2",
            Self::Phi2 => "phi2",
            Self::StableLm => "stablelm",
            Self::GptNeox => "gptneox",
            Self::CommandR => "command-r",
            Self::Cohere2 => "cohere2",
            Self::Falcon => "falcon",
            Self::Gpt2 => "gpt2",
            Self::Starcoder => "starcoder",
            Self::Orion => "orion",
            Self::Nemotron => "nemotron",
            Self::CodeShell => "codeshell",
            Self::Exaone => "exaone",
            Self::Mamba2 => "mamba2",
            Self::Bloom => "bloom",
            Self::Mpt => "mpt",
            Self::Refact => "refact",
            Self::Xverse => "xverse",
            Self::Plamo => "plamo",
            Self::Olmo => "olmo",
            Self::Baichuan => "baichuan",
            Self::Mamba => "mamba",
            Self::Bert => "bert",
            Self::NomicBert => "nomic-bert",
            Self::NomicBertMoe => "nomic-bert-moe",
            Self::GemmaEmbedding => "gemma-embedding",
            Self::LlamaEmbed => "llama-embed",
            Self::NeoBert => "neo-bert",
            Self::ModernBert => "modern-bert",
            Self::EuroBert => "eurobert",
            Self::JinaBertV2 => "jina-bert-v2",
            Self::JinaBertV3 => "jina-bert-v3",
            Self::ChatGlm => "chatglm",
            Self::Deci => "deci",
            Self::Qwen => "qwen",
            Self::Deepseek => "deepseek",
            Self::Dbrx => "dbrx",
            Self::Jais => "jais",
            Self::Bitnet => "bitnet",
            Self::Apertus => "apertus",
            Self::Maincoder => "maincoder",
            Self::Grok => "grok",
        }
    }
}

/// A mixture-of-experts feed-forward block's shape: each token's block is
/// the sum of its `used` best-scored experts' outputs, each weighted by
/// its router probability.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    /// Experts a block holds.
    pub experts: usize,
    /// Experts each token runs.
    pub used: usize,
    /// Hidden width of one expert.
    pub ffn_dim: usize,
    /// Whether the chosen experts' probabilities are renormalised to sum
    /// to 1.
    pub norm_weights: bool,
    /// A factor on every expert weight (1 for none).
    pub weights_scale: f32,
    /// Hidden width of the shared expert every token also runs, its
    /// output gated by the sigmoid of its own router's score (Qwen 2
    /// MoE's) or ungated (Granite MoE's, [`MoeConfig::shared_gated`]);
    /// `None` for none.
    pub shared_ffn_dim: Option<usize>,
    /// Whether the shared expert's output is gated by its own router
    /// (`ffn_gate_inp_shexp`).
    pub shared_gated: bool,
    /// Whether the shared expert is the block's own dense feed-forward
    /// network (`ffn_{gate,up,down}`, Grok-2's), with the experts' gated
    /// activation, the two outputs summed times `1/sqrt(2)`.
    pub dense_beside: bool,
    /// How router scores become the chosen experts' weights.
    pub gating: Gating,
    /// The experts' gated activation.
    pub activation: ExpertActivation,
    /// Whether the router and the experts' three products add biases
    /// (`ffn_gate_inp.bias`, `ffn_{gate,up,down}_exps.bias`; gpt-oss).
    pub biases: bool,
    /// Whether the blocks add a bias to the experts' probabilities to
    /// choose them (`exp_probs_b.bias`), their weights left unbiased.
    pub selection_bias: SelectionBias,
    /// The first blocks, which are dense (`leading_dense_block_count`;
    /// GLM-4.5's and ERNIE 4.5's first).
    pub dense_lead: usize,
    /// Groups of experts and how many of them a token chooses from (its
    /// experts the best of the groups whose two best scores sum highest),
    /// if the experts are grouped.
    pub groups: Option<(usize, usize)>,
    /// Experts in every `every`th block after the dense lead (Llama 4's
    /// `interleave_moe_layer_step`; 1: every block).
    pub every: usize,
    /// Whether each chosen expert runs on the token times its weight, its
    /// output left as it is (Llama 4's), rather than its output weighted.
    pub weights_on_input: bool,
    /// The width of the experts' latent space (Nemotron 3 Super's
    /// `moe_latent_size`), if they run in one: the token taken into it by
    /// `ffn_latent_down`, the experts' weighted sum out of it by
    /// `ffn_latent_up` (the router and shared expert read the token).
    pub latent: Option<usize>,
}

impl MoeConfig {
    /// Whether block `layer` holds experts (else a dense feed-forward
    /// block as wide as [`ModelConfig::ffn_dim`]).
    ///
    /// ```
    /// # use realm_models::{ExpertActivation, Gating, MoeConfig, SelectionBias};
    /// let m = MoeConfig {
    ///     experts: 8, used: 2, ffn_dim: 64, norm_weights: true, weights_scale: 1.0,
    ///     shared_ffn_dim: None, shared_gated: false, dense_beside: false,
    ///     gating: Gating::Sigmoid,
    ///     activation: ExpertActivation::Swiglu, biases: false,
    ///     selection_bias: SelectionBias::Required, dense_lead: 1, groups: None,
    ///     every: 1, weights_on_input: false, latent: None,
    /// };
    /// assert!(!m.is_moe_layer(0) && m.is_moe_layer(1));
    /// let every_other = MoeConfig { dense_lead: 0, every: 2, ..m };
    /// assert!(!every_other.is_moe_layer(0) && every_other.is_moe_layer(1));
    /// ```
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        layer >= self.dense_lead && (layer + 1).is_multiple_of(self.every.max(1))
    }
}

/// Whether a mixture's blocks hold a bias on the experts' probabilities
/// for choosing them (DeepSeek V3's, GLM-4.5's, ERNIE 4.5's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectionBias {
    /// None is read.
    None,
    /// Read where a block has one.
    WherePresent,
    /// Every block of experts must have one.
    Required,
}

/// How a mixture of experts weighs the experts a token chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// The softmax over every expert's score; the chosen experts keep
    /// their probabilities (renormalised if
    /// [`MoeConfig::norm_weights`]). Mixtral, Qwen.
    Softmax,
    /// The best scores are chosen first, then weighted by a softmax over
    /// them alone (llama.cpp's `softmax_weight`; gpt-oss).
    SoftmaxChosen,
    /// Each expert's own sigmoid of its score (GLM-4.5's).
    Sigmoid,
}

/// The activation of a gated feed-forward network's gate, which then
/// multiplies its up product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateActivation {
    /// SwiGLU's `x sigmoid(x)` (llama's).
    Silu,
    /// GEGLU's tanh-approximated GELU (the Gemmas').
    Gelu,
    /// `max(x, 0)^2` (BitNet b1.58 2B4T's `relu2`).
    SquaredRelu,
}

/// The gated activation of an expert's hidden values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExpertActivation {
    /// `silu(gate) * up`.
    Swiglu,
    /// gpt-oss's: the gate capped and the up clamped at `limit`, a sigmoid
    /// of `alpha` times the gate, and `up + 1`
    /// ([`realm_core::backend::ActivationOps::swiglu_oai_inplace`]).
    SwigluOai {
        /// Slope of the sigmoid (1.702).
        alpha: f32,
        /// Cap of the gate and clamp of the up (7).
        limit: f32,
    },
    /// `max(up, 0)^2`, no gate (Nemotron-H's).
    SquaredRelu,
    /// `gelu(gate) * up` (Gemma 4's).
    Geglu,
    /// `gelu(up)`, no gate (Nomic BERT MoE's).
    Gelu,
}

/// Everything a forward pass needs to know about the model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture.
    pub arch: Architecture,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Hidden width of the feed-forward block.
    pub ffn_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
    /// The norms' epsilon (RMSNorms', or LayerNorms' where
    /// [`ModelConfig::layer_norm`]).
    pub rms_eps: f32,
    /// Whether the blocks' input norms and the output norm are LayerNorms
    /// (with a bias where the file has one), not RMSNorms (StarCoder 2,
    /// Phi 2, StableLM, GPT-NeoX, Command R).
    pub layer_norm: bool,
    /// Whether every block runs its feed-forward network beside its
    /// attention, on the block's input (normed by the network's own norm
    /// where the block has one, else by the attention's), both outputs
    /// joining the residual stream at once (Phi 2, Command R, GPT-NeoX's
    /// `use_parallel_residual`). StableLM's blocks without a feed-forward
    /// norm do so too.
    pub parallel_ffn: bool,
    /// RoPE base of the global-attention layers.
    pub rope_base: f32,
    /// RoPE base of the sliding-window layers.
    pub rope_base_local: f32,
    /// RoPE frequency scale (1 / linear scaling factor).
    pub rope_freq_scale: f32,
    /// RoPE frequency scale of the sliding-window layers.
    pub rope_freq_scale_local: f32,
    /// YaRN's RoPE scaling, if the model has it (its pair divisors join
    /// the RoPE frequency factors; its magnitude is in `rope_magnitude`).
    pub rope_yarn: Option<YarnConfig>,
    /// Factor on the rotated dimensions of the queries and keys (ggml's
    /// `attn_factor`): YaRN's magnitude times `rope.scaling.attn_factor`
    /// (LongRoPE's), 1 for neither.
    pub rope_magnitude: f32,
    /// The context the RoPE scaling was made for
    /// (`rope.scaling.original_context_length`, else `context_length`):
    /// LongRoPE's long factors serve sessions longer than this, its short
    /// ones the others.
    pub rope_original_context: usize,
    /// Dimensions of each head that RoPE rotates.
    pub rope_dims: usize,
    /// Normal (adjacent pairs) or NeoX (halves) rotation.
    pub rope_mode: RopeMode,
    /// Window of the sliding-window layers, if any.
    pub sliding_window: Option<usize>,
    /// Which layers use the sliding window, the others attending globally
    /// (`attention.sliding_window_pattern`: a flag a layer, or every
    /// `n`th layer global); `None`: every layer, where there is a window.
    pub local_layers: Option<Vec<bool>>,
    /// Chunks of the local layers' attention (Llama 4's 8192: a query sees
    /// the keys of its own chunk), if any.
    pub attn_chunk: Option<usize>,
    /// Whether the sliding-window layers rotate without the model's RoPE
    /// scaling (OLMo 3's): no YaRN, no frequency scale, magnitude 1.
    pub local_rope_plain: bool,
    /// Whether the global layers of a model with local ones rotate
    /// nothing (EXAONE 4 32B's).
    pub nope_global: bool,
    /// Whether the blocks norm their attention's and feed-forward block's
    /// input (all but OLMo 2, which norms only their outputs, and the
    /// encoders).
    pub pre_norms: bool,
    /// Whether the model is an embedding model (BERT's families,
    /// EmbeddingGemma): it makes embeddings, no logits.
    pub encoder: bool,
    /// What the gated feed-forward networks gate by: GELU for the Gemmas'
    /// (ModernBERT's but where its `hidden_activation` is silu), a squared
    /// ReLU for BitNet's where its file says so, else SiLU.
    pub gate: GateActivation,
    /// Whether every token attends to every other of its text, not only
    /// to those before it (the file's `attention.causal` false, as
    /// llama.cpp's converters write it for encoders; EmbeddingGemma's
    /// always): a text then runs as one batch from position 0.
    pub bidirectional: bool,
    /// Whether the Q/K norms span all heads at once (OLMo 2's), not each
    /// head.
    pub qk_norm_whole: bool,
    /// Whether the per-head Q/K norms come after RoPE (Hunyuan's, Maincoder's), not
    /// before.
    pub qk_norm_after_rope: bool,
    /// Scale applied to attention scores.
    pub attn_scale: f32,
    /// A factor on the embeddings (Gemma's `sqrt(d_model)`, Granite's
    /// `embedding_scale`), if any.
    pub embedding_scale: Option<f32>,
    /// A factor on each block's attention and feed-forward outputs before
    /// they join the residual stream (Granite's `residual_scale`), if any.
    pub residual_scale: Option<f32>,
    /// A divisor of the logits (Granite's `logit_scale`), if any.
    pub logit_scale: Option<f32>,
    /// Every `n`th layer (the last of each group) runs without RoPE
    /// (SmolLM3's 4), if any.
    pub no_rope_every: Option<usize>,
    /// ALiBi's maximum bias (BLOOM's, MPT's, Refact's), if the model's
    /// attention has it ([`realm_core::backend::AttentionParams::alibi`]).
    pub alibi: Option<f32>,
    /// The bound of the queries, keys and values (OLMo's and MPT's
    /// `attention.clamp_kqv`: each clamped to `-c..=c` after its product
    /// and bias), if the model sets one.
    pub clamp_kqv: Option<f32>,
    /// Each block's xIELU coefficients (Apertus's feed-forward activation),
    /// for a model with them.
    pub xielu: Option<Vec<Xielu>>,
    /// Soft-cap of the attention scores (Gemma 2), if any.
    pub attn_softcap: Option<f32>,
    /// Soft-cap of the final logits (Gemma 2; Gemma 3 where the file sets
    /// one), if any.
    pub final_softcap: Option<f32>,
    /// Mixture-of-experts feed-forward blocks (Mixtral's llama, Qwen 3
    /// MoE), if the model has them instead of dense ones.
    pub moe: Option<MoeConfig>,
    /// Llama 4's attention temperature (Ministral 3's), if the model has
    /// one: queries grow with their position's distance past the original
    /// context.
    pub attn_temperature: Option<AttnTemperature>,
    /// Multi-head latent attention (DeepSeek's), if the model has it: its
    /// attention is then over `n_kv_heads` (1) latent keys of `head_dim`
    /// (`kv_lora + rope`) values.
    pub mla: Option<MlaConfig>,
    /// Gated delta-net blocks (Qwen 3.5's), if the model has them in
    /// place of some attention blocks.
    pub delta_net: Option<DeltaNetConfig>,
    /// Gated short convolutions (LFM2's), if the model has them in place
    /// of some attention blocks.
    pub short_conv: Option<ShortConvConfig>,
    /// Mamba-2 mixers (Granite 4.0's hybrids), if the model has them in
    /// place of some attention blocks.
    pub mamba: Option<MambaConfig>,
    /// Mamba's (the first's) mixers, in every block, if the model has
    /// them.
    pub mamba1: Option<Mamba1Config>,
    /// Which blocks are a feed-forward network alone, the others a mixer
    /// alone (Nemotron-H's); `None`: every block is both.
    pub ffn_blocks: Option<Vec<bool>>,
    /// Whether each attention head's output is multiplied by the sigmoid
    /// of a gate the query projection also makes (Qwen 3.5's: its query
    /// matrix is twice as wide, each head's query followed by its gate).
    pub attn_output_gate: bool,
    /// Gemma 3n's residual streams, per-block inputs, shared KV caches
    /// and sparse activations, for a model with them.
    pub altup: Option<AltUpConfig>,
    /// Gemma 4's global blocks' heads, per-block inputs and shared KV
    /// caches, for a model with them.
    pub gemma4: Option<Gemma4Config>,
    /// Each block's feed-forward width, where blocks differ (Gemma 4's
    /// that read others' caches may be twice as wide): in place of
    /// `ffn_dim`, which is then the widest.
    pub ffn_dims: Option<Vec<usize>>,
    /// DeciLM's blocks: what each has in place of attention (its KV
    /// heads where it attends).
    pub deci: Option<Vec<DeciBlock>>,
}

/// Gemma 4's extras, as llama.cpp runs them. Its local blocks' heads are
/// the config's `n_kv_heads`, `head_dim` and `rope_dims`; its global ones
/// have their own (`global`), rotating their first `rope_dims` with the
/// file's frequency factors (`rope_freqs`, which leave the rest of each
/// head unturned), and where such a block has no value matrix its keys
/// (before their norm and rotation) are its values. Each block may end
/// with an input of its own (a row of `per_layer_token_embd` plus a
/// projection of the embedding, `per_layer` wide, gating a product of the
/// block's output) and a scale (`layer_output_scale`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gemma4Config {
    /// The global blocks' heads.
    pub global: HeadShape,
    /// Width of each block's own input
    /// (`embedding_length_per_layer_input`; 0: none, the 31B).
    pub per_layer: usize,
    /// The first block that keeps no KV cache and reads the cache of the
    /// last block before it of its kind (the layer count less
    /// `attention.shared_kv_layers`).
    pub kv_from: usize,
}

/// What a DeciLM block has in place of attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeciBlock {
    /// Attention, with its own KV heads.
    Attention {
        /// The block's key/value heads.
        kv_heads: usize,
    },
    /// A linear map of the normed input (`attn_output` alone, `d` by
    /// `d`), added to the stream: Nemotron-51B's "linear attention".
    Linear,
    /// Nothing: the block is its feed-forward network alone, normed by
    /// `ffn_norm`.
    NoAttention,
}

/// DeciLM's blocks from its heads and KV heads a block (lists; a model
/// with a single count for either has it in every block).
fn deci_blocks(
    cfg: &ModelConfig,
    heads: Option<&[usize]>,
    kv: Option<&[usize]>,
) -> Result<Vec<DeciBlock>> {
    let n = cfg.n_layers;
    (0..n)
        .map(|l| {
            let h = heads.map_or(cfg.n_heads, |h| h.get(l).copied().unwrap_or(0));
            let k = kv.map_or(cfg.n_kv_heads, |k| k.get(l).copied().unwrap_or(0));
            let ff = cfg.layer_ffn_dim(l);
            match (h, k) {
                (0, _) if ff == 0 => Err(Error::BadConfig(format!(
                    "deci: block {l} has neither attention nor a feed-forward network"
                ))),
                (0, _) => Ok(DeciBlock::NoAttention),
                // (The map is `d` by `d`, as wide as the heads.)
                (_, 0) if cfg.n_heads * cfg.head_dim == cfg.d_model => Ok(DeciBlock::Linear),
                (_, 0) => Err(Error::BadConfig(format!(
                    "deci: block {l}'s linear map needs heads as wide as the model"
                ))),
                (h, k) if h.is_multiple_of(k) => Ok(DeciBlock::Attention { kv_heads: k }),
                (h, k) => Err(Error::BadConfig(format!(
                    "deci: block {l}'s {h} query heads cannot share {k} key/value heads"
                ))),
            }
        })
        .collect()
}

/// Key/value heads, their width and the dimensions RoPE turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadShape {
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Dimensions of each head that RoPE rotates.
    pub rope_dims: usize,
}

/// The last block before `kv_from` that attends as block `layer` of `cfg`
/// does (its window), where `layer` keeps no cache of its own.
fn shared_kv_source(cfg: &ModelConfig, kv_from: usize, layer: usize) -> Option<usize> {
    if layer < kv_from {
        return None;
    }
    let window = cfg.layer_window(layer);
    (0..kv_from).rev().find(|&l| cfg.layer_window(l) == window)
}

/// Gemma 4's extras from `md` for the blocks of `cfg` (whose heads are
/// the local blocks'), with the KV heads of each block where the file
/// lists them.
fn gemma4_config(md: &Metadata, cfg: &ModelConfig, kv: Option<&[usize]>) -> Result<Gemma4Config> {
    let p = cfg.arch.name();
    let key = |k: &str| format!("{p}.{k}");
    let u = |k: &str| -> Result<usize> { Ok(md.get_u32(&key(k))? as usize) };
    let opt_u = |k: &str| -> Result<Option<usize>> {
        Ok(match md.get(&key(k)) {
            Some(_) => Some(md.get_u32(&key(k))? as usize),
            None => None,
        })
    };
    let n = cfg.n_layers;
    if md.get(&key("attention.sliding_window_pattern")).is_none() {
        return Err(Error::BadConfig(format!(
            "{p} without attention.sliding_window_pattern"
        )));
    }
    let global_layer = (0..n).find(|&l| !cfg.is_local(l));
    let heads = |l: Option<usize>, default: usize| match (kv, l) {
        (Some(kv), Some(l)) => kv.get(l).copied().unwrap_or(default),
        _ => default,
    };
    let head_dim = u("attention.key_length")?;
    let global = HeadShape {
        n_kv_heads: heads(global_layer, cfg.n_kv_heads),
        head_dim,
        rope_dims: opt_u("rope.dimension_count")?.unwrap_or(head_dim),
    };
    let kv_from = n.saturating_sub(opt_u("attention.shared_kv_layers")?.unwrap_or(0));
    let g = Gemma4Config {
        global,
        per_layer: opt_u("embedding_length_per_layer_input")?.unwrap_or(0),
        kv_from,
    };
    let bad = |what: String| Err(Error::BadConfig(format!("{p}: {what}")));
    if u("attention.value_length")? != global.head_dim
        || opt_u("attention.value_length_swa")?.unwrap_or(cfg.head_dim) != cfg.head_dim
    {
        return bad("value heads unlike their key heads".into());
    }
    if global.n_kv_heads == 0
        || global.head_dim == 0
        || global.rope_dims > global.head_dim
        || !cfg.n_heads.is_multiple_of(global.n_kv_heads)
        || kv_from == 0
    {
        return bad(format!(
            "global heads {global:?} for {} query heads, {kv_from} blocks with KV caches",
            cfg.n_heads
        ));
    }
    // Every block of a kind has its kind's heads.
    if let Some(kv) = kv {
        let want = |l: usize| match cfg.is_local(l) {
            true => cfg.n_kv_heads,
            false => global.n_kv_heads,
        };
        if let Some(l) = (0..n).find(|&l| kv.get(l).is_some_and(|&h| h != want(l))) {
            return bad(format!("block {l}'s KV heads differ from its kind's"));
        }
    }
    if let Some(l) = (kv_from..n).find(|&l| shared_kv_source(cfg, kv_from, l).is_none()) {
        return bad(format!(
            "block {l} reads an earlier block's KV cache, but none of the first {kv_from} \
             attends as it does"
        ));
    }
    Ok(g)
}

/// Gemma 3n's extras, as llama.cpp runs them. The residual stream is
/// `inputs` streams: the first the scaled token embedding, the others its
/// products with `altup_proj`, each brought to the first's magnitude.
/// Before each block a prediction mixes the streams by coefficients the
/// active stream's router makes (`altup_router`, `altup_predict_coef`);
/// the block runs on the active one's prediction; after it a correction
/// adds each stream the block's change times its own coefficient
/// (`altup_correct_coef`), and the other streams a product of the
/// corrected active stream, gated by the block's own input (a row of
/// `per_layer_token_embd` plus a projection of the embedding, `per_layer`
/// wide). At the end the other streams go back through `altup_unembd_proj`
/// and the mean of all is the output.
#[derive(Debug, Clone, PartialEq)]
pub struct AltUpConfig {
    /// Residual streams (`altup.num_inputs`; 4).
    pub inputs: usize,
    /// Width of each block's own input
    /// (`embedding_length_per_layer_input`; 256).
    pub per_layer: usize,
    /// Rank of each block's LAuReL products (64: no key gives it, and
    /// llama.cpp's loader fixes it).
    pub laurel_rank: usize,
    /// The first block that keeps no KV cache and reads the cache of the
    /// last block before it of its kind, local or global (the layer count
    /// less `attention.shared_kv_layers`; without the key llama.cpp's 20).
    pub kv_from: usize,
    /// Each block's activation sparsity, where it has one: the feed-forward
    /// gate's values less their row's mean plus this many standard
    /// deviations, below zero made zero, before the GELU
    /// (`activation_sparsity_scale`, non-finite for none; without the key
    /// llama.cpp's: the first 10 blocks at the normal's 95th percentile).
    pub sparsity: Vec<Option<f32>>,
}

/// The standard normal's 95th percentile in f32: Gemma 3n's sparsity
/// where the file gives none.
const GEMMA3N_SPARSITY: f32 = 1.644_853_4;

/// Gemma 3n's extras from `md` for the blocks of `cfg`.
fn altup_config(md: &Metadata, cfg: &ModelConfig) -> Result<AltUpConfig> {
    let p = cfg.arch.name();
    let key = |k: &str| format!("{p}.{k}");
    let opt_u = |k: &str| -> Result<Option<usize>> {
        Ok(match md.get(&key(k)) {
            Some(_) => Some(md.get_u32(&key(k))? as usize),
            None => None,
        })
    };
    let n = cfg.n_layers;
    let inputs = opt_u("altup.num_inputs")?.unwrap_or(4);
    let active = opt_u("altup.active_idx")?.unwrap_or(0);
    let per_layer = opt_u("embedding_length_per_layer_input")?.unwrap_or(256);
    let kv_from = match opt_u("attention.shared_kv_layers")? {
        Some(shared) => n.saturating_sub(shared),
        None => n.min(20),
    };
    if inputs < 2 || active != 0 || per_layer == 0 || kv_from == 0 {
        return Err(Error::BadConfig(format!(
            "{p}: {inputs} AltUp streams (at least 2), active stream {active} (only 0 is \
             supported), per-block inputs {per_layer} wide, {kv_from} blocks with KV caches"
        )));
    }
    let sparsity = match md.get(&key("activation_sparsity_scale")) {
        Some(_) => {
            let s = md.get_f32_array(&key("activation_sparsity_scale"))?;
            (0..n)
                .map(|l| s.get(l).copied().filter(|s| s.is_finite()))
                .collect()
        }
        None => (0..n)
            .map(|l| (l < 10).then_some(GEMMA3N_SPARSITY))
            .collect(),
    };
    let alt = AltUpConfig {
        inputs,
        per_layer,
        laurel_rank: 64,
        kv_from,
        sparsity,
    };
    if let Some(l) = (kv_from..n).find(|&l| alt.kv_source(cfg, l).is_none()) {
        return Err(Error::BadConfig(format!(
            "{p}: block {l} reads an earlier block's KV cache, but none of the first {kv_from} \
             attends as it does"
        )));
    }
    Ok(alt)
}

impl AltUpConfig {
    /// The block whose KV cache block `layer` of `cfg` reads, where it
    /// keeps none of its own: the last block before
    /// [`AltUpConfig::kv_from`] with its window.
    fn kv_source(&self, cfg: &ModelConfig, layer: usize) -> Option<usize> {
        shared_kv_source(cfg, self.kv_from, layer)
    }
}

/// Qwen 3.5's gated delta net, as llama.cpp runs it: a block's input
/// goes through one product to `2 * k_heads * head_dim + v_heads *
/// head_dim` channels (queries, keys, values), a causal convolution of
/// `conv_kernel` taps over each channel's last values and SiLU; each
/// value head `h` reads query and key head `h % k_heads`, both
/// L2-normed, and updates its `head_dim x head_dim` state `S` by the
/// delta rule with a decay `exp(g)` and a rate `beta` made from the
/// input: `S = exp(g) S; S += beta (v - S k) k^T; out = S q /
/// sqrt(head_dim)`. Each head's output is RMS-normed and gated by the
/// SiLU of another product. A session keeps each such block's state and
/// its last `conv_kernel - 1` inputs, not a KV cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaNetConfig {
    /// Taps of the causal convolution (`ssm.conv_kernel`).
    pub conv_kernel: usize,
    /// Width of each query, key and value head (`ssm.state_size`).
    pub head_dim: usize,
    /// Query and key heads (`ssm.group_count`).
    pub k_heads: usize,
    /// Value heads, each with its own state (`ssm.time_step_rank`).
    pub v_heads: usize,
    /// Whether value head `h` reads query/key head `h / (v_heads /
    /// k_heads)` (Qwen3-Next's, each query/key head's value heads side
    /// by side) rather than `h % k_heads` (Qwen 3.5's).
    pub grouped: bool,
    /// Which blocks are delta nets (`attention.recurrent_layers`, or all
    /// but every `full_attention_interval`th, 4 unless the file says).
    pub layers: Vec<bool>,
}

/// LFM2's gated short convolution, as llama.cpp runs it: a block's input
/// goes through one product to three `d_model`-wide parts `b`, `c`, `x`;
/// `b * x` goes through a causal convolution of `l_cache` taps over each
/// channel's last values, is multiplied by `c` and goes out through
/// another product. A session keeps each such block's last `l_cache - 1`
/// values of `b * x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortConvConfig {
    /// Taps of the convolution (`shortconv.l_cache`).
    pub l_cache: usize,
    /// Which blocks are convolutions (those without KV heads).
    pub layers: Vec<bool>,
}

/// A Mamba-2 mixer, as llama.cpp runs Granite 4.0's: a block's input goes
/// through one product to a gate `z` (`inner`), the convolution's
/// channels `x`, `B`, `C` (`inner + 2 * groups * state`) and each head's
/// step `dt` (`heads`); the channels through a causal convolution of
/// `conv_kernel` taps (with a bias) and SiLU; each head `h` (`inner /
/// heads` values) updates its `head_dim x state` state with group `h /
/// (heads / groups)`'s `B` and reads it with its `C`: `S = exp(dt A) S +
/// dt x B^T; y = S C + D x`, `dt` through softplus after its bias; then
/// `y * silu(z)`, RMS-normed by groups, and the output product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MambaConfig {
    /// Taps of the causal convolution (`ssm.conv_kernel`).
    pub conv_kernel: usize,
    /// Width of the mixer (`ssm.inner_size`).
    pub inner: usize,
    /// Values of each state row (`ssm.state_size`).
    pub state: usize,
    /// Heads (`ssm.time_step_rank`).
    pub heads: usize,
    /// Groups of heads sharing `B` and `C`, and of the output norm
    /// (`ssm.group_count`).
    pub groups: usize,
    /// Which blocks are mixers (those without KV heads).
    pub layers: Vec<bool>,
    /// Whether each mixer runs beside attention in its block (Falcon-H1's:
    /// both read the block's normed input, their outputs summed), rather
    /// than instead of it.
    pub parallel: bool,
}

/// Mamba's (the first's) mixers, llama.cpp's `build_mamba_layer`: the
/// input product makes the channels `x` and the gate `z` (`inner` each);
/// `x` through a causal convolution of `conv_kernel` taps (with a bias)
/// and SiLU; its product `ssm_x` makes each token's low-rank step
/// (`dt_rank`), `B` and `C` (`state` each; RMS-normed without weights
/// where `dt_b_c_rms`), and the step's product `ssm_dt` (with its bias,
/// through softplus) each channel's step `dt`; each channel `i` updates
/// its `state` values, `s = exp(dt A_i) s + dt x_i B` and reads them,
/// `y_i = s . C + D_i x_i`; then `y * silu(z)` and the output product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mamba1Config {
    /// Taps of the causal convolution (`ssm.conv_kernel`).
    pub conv_kernel: usize,
    /// Channels of the mixer (`ssm.inner_size`).
    pub inner: usize,
    /// Values of each channel's state (`ssm.state_size`).
    pub state: usize,
    /// Rank of the step's product (`ssm.time_step_rank`).
    pub dt_rank: usize,
    /// Whether the step, `B` and `C` are RMS-normed (Falcon Mamba's
    /// `ssm.dt_b_c_rms`).
    pub dt_b_c_rms: bool,
}

impl Mamba1Config {
    /// Values a session keeps per mixer: the convolution's last
    /// `conv_kernel - 1` inputs and every channel's state.
    pub fn state_len(&self) -> usize {
        (self.conv_kernel - 1) * self.inner + self.inner * self.state
    }
}

impl MambaConfig {
    /// Channels of the convolution: `x`, `B` and `C`.
    pub fn channels(&self) -> usize {
        self.inner + 2 * self.groups * self.state
    }

    /// Width of the input product: `z`, the channels and `dt`.
    pub fn in_width(&self) -> usize {
        self.inner + self.channels() + self.heads
    }

    /// Values a session keeps per mixer: the convolution's last
    /// `conv_kernel - 1` inputs and every head's state.
    pub fn state_len(&self) -> usize {
        (self.conv_kernel - 1) * self.channels() + self.inner * self.state
    }
}

impl DeltaNetConfig {
    /// Width of all query (or key) heads together.
    pub fn k_dim(&self) -> usize {
        self.k_heads * self.head_dim
    }

    /// Width of all value heads together.
    pub fn v_dim(&self) -> usize {
        self.v_heads * self.head_dim
    }

    /// Channels of the convolution: queries, keys and values.
    pub fn channels(&self) -> usize {
        2 * self.k_dim() + self.v_dim()
    }

    /// Values a session keeps per delta-net block: the convolution's last
    /// `conv_kernel - 1` inputs and every head's state.
    pub fn state_len(&self) -> usize {
        (self.conv_kernel - 1) * self.channels() + self.v_heads * self.head_dim * self.head_dim
    }
}

/// DeepSeek's multi-head latent attention, in the absorbed form llama.cpp
/// runs: each token's keys and values are one latent vector (`kv_lora`
/// wide, RMS-normed) and `rope` rotated values shared by all heads; each
/// head's query is its unrotated part (`nope` wide) taken into the latent
/// space by the head's `attn_k_b` slice, and its rotated part; each head's
/// output is its attention over the latents taken out by its `attn_v_b`
/// slice (`v_dim` wide). Realm's queries and keys put the rotated values
/// first (so that RoPE rotates each head's first `rope` values), and its
/// values are the latents followed by `rope` zeros (the cache's keys and
/// values are one width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaConfig {
    /// The width of the queries' low-rank projection (`attn_q_a`), 0
    /// where the queries are one product (`attn_q`; V2-Lite's).
    pub q_lora: usize,
    /// The width of the latent keys and values.
    pub kv_lora: usize,
    /// The unrotated part of each head's query and key.
    pub nope: usize,
    /// The rotated part of each head's query and key.
    pub rope: usize,
    /// The width of each head's output.
    pub v_dim: usize,
}

/// Llama 4's attention temperature, as llama.cpp applies it to Ministral 3:
/// the queries at position `pos` are multiplied by
/// `1 + scale * ln(1 + floor(pos / floor))` (after RoPE, which commutes
/// with it), so 1 before `floor` (`attention.temperature_scale` and the
/// original context).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnTemperature {
    /// `attention.temperature_scale` (Llama 4's `beta`).
    pub scale: f32,
    /// Positions per step of the logarithm: the original context
    /// (`rope.scaling.original_context_length`, else `context_length`).
    pub floor: usize,
    /// Added to the position first (Llama 4's 1, Ministral 3's 0).
    pub offset: usize,
    /// Whether only the layers without RoPE scale their queries (Llama
    /// 4's), rather than all.
    pub nope_only: bool,
}

impl AttnTemperature {
    /// The factor on the queries at `pos`, computed as llama.cpp computes
    /// it (the quotient in f32, the logarithm in f64).
    ///
    /// ```
    /// use realm_models::AttnTemperature;
    /// let t = AttnTemperature { scale: 0.5, floor: 16, offset: 0, nope_only: false };
    /// assert_eq!(t.factor(15), 1.0);
    /// assert_eq!(t.factor(16), (2f64.ln() * 0.5 + 1.0) as f32);
    /// let llama4 = AttnTemperature { offset: 1, ..t };
    /// assert_eq!(llama4.factor(15), t.factor(16));
    /// ```
    pub fn factor(&self, pos: u32) -> f32 {
        let at = pos as f32 + self.offset as f32;
        let steps = f64::from((at / self.floor as f32).floor()) + 1.0;
        (steps.ln() * f64::from(self.scale) + 1.0) as f32
    }

    /// Whether the queries at `pos` are scaled (their factor is not 1).
    pub fn applies(&self, pos: u32) -> bool {
        pos as usize + self.offset >= self.floor
    }
}

impl ModelConfig {
    /// Reads the config from GGUF metadata.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let arch = Architecture::from_name(md.get_str("general.architecture")?)?;
        let p = arch.name();
        let key = |k: &str| format!("{p}.{k}");
        let u = |k: &str| md.get_u32(&key(k)).map(|v| v as usize);
        let opt_u = |k: &str| -> Result<Option<usize>> {
            Ok(match md.get(&key(k)) {
                Some(_) => Some(md.get_u32(&key(k))? as usize),
                None => None,
            })
        };
        let opt_f = |k: &str| -> Result<Option<f32>> {
            Ok(match md.get(&key(k)) {
                Some(_) => Some(md.get_f32(&key(k))?),
                None => None,
            })
        };
        // GLM-4's and GLM-4.5's vision models rotate by sections (M-RoPE).
        if matches!(arch, Architecture::Glm4 | Architecture::Glm4Moe)
            && md
                .get(&key("rope.dimension_sections"))
                .is_some_and(|v| !matches!(v, MetadataValue::Array(a) if sections_unused(a)))
        {
            return Err(Error::BadConfig(format!(
                "{p} with M-RoPE sections (a vision model) is not supported"
            )));
        }
        // (llama.cpp knows Baichuan's 7B, with RoPE, and 13B, with ALiBi,
        // by their blocks; it runs others with neither.)
        if arch == Architecture::Baichuan && ![32, 40].contains(&u("block_count")?) {
            return Err(Error::BadConfig(format!(
                "{p} with {} blocks (not the 7B's 32 or the 13B's 40) is not supported",
                u("block_count")?
            )));
        }
        // Blocks that predict further tokens (MTP) are not run.
        let n_layers = match opt_u("nextn_predict_layers")? {
            None => u("block_count")?,
            Some(next) => u("block_count")?.checked_sub(next).ok_or_else(|| {
                Error::BadConfig(format!("{next} prediction blocks of fewer blocks"))
            })?,
        };
        let d_model = u("embedding_length")?;
        // (Mamba's blocks are mixers alone, as Mamba-2's.)
        let mamba2 = matches!(arch, Architecture::Mamba2 | Architecture::Mamba);
        // (Mamba-2's files say 0: one head as wide as the model stands for
        // the attention it does not have.)
        // DeciLM's heads a block: 0 where a block does not attend, else
        // all alike.
        let deci_heads = match (arch, md.get(&key("attention.head_count"))) {
            (Architecture::Deci, Some(MetadataValue::Array(a))) => Some(layer_counts(a)?),
            _ => None,
        };
        let n_heads = match (mamba2, &deci_heads) {
            (true, _) => 1,
            (false, Some(h)) => {
                let mut heads = h.iter().copied().filter(|&h| h > 0);
                let first = heads.next().unwrap_or(1);
                if heads.any(|h| h != first) {
                    return Err(Error::BadConfig(format!(
                        "{p}: blocks of different query heads ({h:?})"
                    )));
                }
                first
            }
            (false, None) => u("attention.head_count")?,
        };
        // LFM2's KV heads a block, none for its convolutions.
        let kv_per_layer = match md.get(&key("attention.head_count_kv")) {
            Some(MetadataValue::Array(a))
                if matches!(
                    arch,
                    Architecture::Lfm2
                        | Architecture::Lfm2Moe
                        | Architecture::GraniteHybrid
                        | Architecture::NemotronH
                        | Architecture::NemotronHMoe
                        | Architecture::Gemma4
                        | Architecture::Deci
                ) =>
            {
                Some(layer_counts(a)?)
            }
            _ => None,
        };
        let gemma4 = arch == Architecture::Gemma4;
        // (Gemma 4's config heads are its local blocks', the global ones
        // apart.)
        let local_kv = match (&kv_per_layer, gemma4) {
            (Some(kv), true) => {
                let local = swa_pattern(md, &key("attention.sliding_window_pattern"), n_layers, 0)?;
                let first = (0..n_layers).find(|&l| local[l]);
                first.and_then(|l| kv.get(l).copied())
            }
            _ => None,
        };
        let n_kv_heads = match &kv_per_layer {
            _ if local_kv.is_some() => local_kv.unwrap_or(n_heads),
            // (DeciLM's blocks each have their own: the first's here.)
            Some(kv) if arch == Architecture::Deci => {
                kv.iter().copied().find(|&h| h > 0).unwrap_or(n_heads)
            }
            Some(kv) => {
                let mut heads = kv.iter().copied().filter(|&h| h > 0);
                let first = heads.next().unwrap_or(n_heads);
                if heads.any(|h| h != first) {
                    return Err(Error::BadConfig(format!(
                        "{p}: blocks of different KV heads ({kv:?})"
                    )));
                }
                first
            }
            None => opt_u("attention.head_count_kv")?.unwrap_or(n_heads),
        };
        if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(Error::BadConfig(format!(
                "{n_heads} query heads cannot share {n_kv_heads} key/value heads"
            )));
        }
        let head_dim = match opt_u("attention.key_length")? {
            _ if gemma4 => u("attention.key_length_swa")?,
            Some(h) => h,
            None if d_model.is_multiple_of(n_heads) => d_model / n_heads,
            None => {
                return Err(Error::BadConfig(format!(
                    "width {d_model} is not divisible by {n_heads} heads"
                )))
            }
        };
        let vocab_size = match opt_u("vocab_size")? {
            Some(v) => v,
            None => md.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let hunyuan = matches!(arch, Architecture::HunyuanMoe | Architecture::HunyuanDense);
        let rope_base = opt_f("rope.freq_base")?.unwrap_or(10_000.0);
        // Hunyuan's NTK-aware scaling raises the base by `alpha^(d / (d -
        // 2))` (d a head's width), in f32 as llama.cpp computes it.
        let rope_base = match opt_f("rope.scaling.alpha")? {
            Some(alpha) if alpha > 0.0 && arch == Architecture::HunyuanDense && head_dim > 2 => {
                let dim = head_dim as f32;
                rope_base * alpha.powf(dim / (dim - 2.0))
            }
            _ => rope_base,
        };
        // (Hunyuan's M-RoPE is for images; files with sections refused.)
        let sections_key = key("rope.dimension_sections");
        if arch == Architecture::HunyuanDense && md.get(&sections_key).is_some() {
            return Err(Error::BadConfig(format!(
                "{sections_key} (M-RoPE) is not supported"
            )));
        }
        let rope_finetuned = match md.get(&key("rope.scaling.finetuned")) {
            Some(_) => md.get_bool(&key("rope.scaling.finetuned"))?,
            None => true,
        };
        let (rope_freq_scale, rope_yarn, rope_attn_factor) = rope_scale(md, arch)?;
        let gemma2 = arch == Architecture::Gemma2;
        // (llama.cpp's attention is causal unless the file says not, but
        // EmbeddingGemma's never is; generative models' always is.)
        let bidirectional = arch == Architecture::GemmaEmbedding
            || match md.get(&key("attention.causal")) {
                Some(_) => !md.get_bool(&key("attention.causal"))?,
                None => false,
            };
        if bidirectional && !arch.encoder() {
            return Err(Error::BadConfig(format!(
                "{p} with attention.causal false (a diffusion model) is not supported"
            )));
        }
        // (EmbeddingGemma's blocks are Gemma 3's.)
        let gemma3 = matches!(arch, Architecture::Gemma3 | Architecture::GemmaEmbedding);
        let gemma = gemma2 || gemma3;
        let gemma3n = arch == Architecture::Gemma3n;
        let gpt_oss = arch == Architecture::GptOss;
        let qwen35 = matches!(
            arch,
            Architecture::Qwen35 | Architecture::Qwen35Moe | Architecture::Qwen3Next
        );
        let nemotron = matches!(arch, Architecture::NemotronH | Architecture::NemotronHMoe);
        let olmo2 = arch == Architecture::Olmo2;
        let exaone4 = arch == Architecture::Exaone4;
        let llama4 = arch == Architecture::Llama4;
        let cohere2 = arch == Architecture::Cohere2;
        let layer_norm = arch.layer_norms();
        // llama.cpp gives EXAONE 4 a window (4096 unless set) where it has
        // 64 layers (the 32B), and no other.
        let exaone_window = exaone4 && n_layers == 64;
        let rope_original_context = match opt_u("rope.scaling.original_context_length")? {
            Some(n) if n > 0 => n,
            _ => u("context_length")?,
        };
        // Gemma 2's caps default to 50 and 30; Gemma 3 has none unless set.
        let cap = |k: &str, default: f32| -> Result<Option<f32>> {
            let c = opt_f(k)?.unwrap_or(default);
            match c {
                0.0 => Ok(None),
                c if c > 0.0 && c.is_finite() => Ok(Some(c)),
                c => Err(Error::BadConfig(format!(
                    "{p}.{k} {c} is not a positive number"
                ))),
            }
        };
        let attn_softcap = match arch {
            _ if gemma2 => cap("attn_logit_softcapping", 50.0)?,
            Architecture::Grok => cap("attn_logit_softcapping", 30.0)?,
            _ => None,
        };
        let final_softcap = match arch {
            Architecture::Gemma2 => cap("final_logit_softcapping", 30.0)?,
            Architecture::Gemma3 => cap("final_logit_softcapping", 0.0)?,
            // (llama.cpp's Gemma 3n always caps at 30, as its files say.)
            Architecture::Gemma3n => cap("final_logit_softcapping", 30.0)?,
            Architecture::Gemma4 | Architecture::Grok => cap("final_logit_softcapping", 0.0)?,
            _ => None,
        };
        // Only these use a window (llama.cpp ignores Phi 3's, and has none
        // for the others); Gemma 2's is 4096 unless the file says otherwise;
        // gpt-oss must say.
        let sliding_window = match (arch, opt_u("attention.sliding_window")?) {
            (Architecture::Gemma2, None) => Some(4096),
            (Architecture::GptOss | Architecture::Cohere2, None) => {
                Some(u("attention.sliding_window")?)
            }
            (Architecture::Exaone4, w) if exaone_window => Some(w.unwrap_or(4096)),
            // Llama 4's chunks are not a window; files that turn them off
            // (a window of 0) llama.cpp runs with neither chunks nor a
            // temperature, which Realm does not.
            (Architecture::Llama4, Some(0)) => {
                return Err(Error::BadConfig(format!(
                    "{p} without chunked attention (attention.sliding_window 0) is not supported"
                )))
            }
            (Architecture::Llama4, _) => None,
            // LFM2's attention blocks, where the file gives a window.
            (Architecture::Lfm2 | Architecture::Lfm2Moe, w) => w.filter(|&w| w > 0),
            (
                Architecture::Mistral
                | Architecture::Gemma2
                | Architecture::Gemma3
                | Architecture::GemmaEmbedding
                | Architecture::Gemma3n
                | Architecture::Gemma4
                | Architecture::GptOss
                | Architecture::Olmo2
                | Architecture::Cohere2,
                w,
            ) => w,
            (Architecture::ModernBert, w) => w.filter(|&w| w > 0),
            _ => None,
        };
        // gpt-oss's files may give only the experts' width.
        // Nemotron-H's feed-forward width a block, 0 for its mixers; Gemma
        // 3n's a block (from its config's list), all alike.
        let ff_per_layer = match md.get(&key("feed_forward_length")) {
            Some(MetadataValue::Array(a)) => Some(layer_counts(a)?),
            _ => None,
        };
        let ffn_dim = match (arch, &ff_per_layer) {
            // (Gemma 4's widths a block: the widest here.)
            (Architecture::Gemma4 | Architecture::Deci, Some(ff)) => ff.iter().copied().max(),
            (_, Some(ff)) => {
                let mut widths = ff.iter().copied().filter(|&f| f > 0);
                let first = widths.next().unwrap_or(0);
                if widths.any(|f| f != first) {
                    return Err(Error::BadConfig(format!(
                        "{p}: feed-forward blocks of different widths ({ff:?})"
                    )));
                }
                Some(first)
            }
            _ => opt_u("feed_forward_length")?,
        };
        let ffn_dim = match (arch, ffn_dim) {
            // (Qwen 1's files count both halves of its SwiGLU.)
            (Architecture::Qwen, Some(f)) => f / 2,
            (_, Some(f)) => f,
            // (Qwen 3.5's mixtures need no dense width.)
            (Architecture::Qwen35Moe | Architecture::Qwen3Next, None) => 0,
            (Architecture::GptOss, None) => u("expert_feed_forward_length")?,
            (_, None) => u("feed_forward_length")?,
        };
        let mut cfg = Self {
            arch,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            context_length: u("context_length")?,
            rms_eps: match (arch, opt_f("attention.layer_norm_rms_epsilon")?) {
                // (Required, as llama.cpp reads it.)
                _ if layer_norm => md.get_f32(&key("attention.layer_norm_epsilon"))?,
                (_, Some(e)) => e,
                // (Nemotron-H's files may give only the plain norm's.)
                (Architecture::NemotronH | Architecture::NemotronHMoe, None) => {
                    opt_f("attention.layer_norm_epsilon")?.unwrap_or(1e-5)
                }
                (_, None) => 1e-5,
            },
            layer_norm,
            parallel_ffn: match arch {
                Architecture::Phi2
                | Architecture::CommandR
                | Architecture::Cohere2
                | Architecture::Falcon
                | Architecture::Plamo => true,
                Architecture::GptNeox => match md.get(&key("use_parallel_residual")) {
                    Some(_) => md.get_bool(&key("use_parallel_residual"))?,
                    None => false,
                },
                _ => false,
            },
            rope_base,
            // Gemma's and gpt-oss's local layers may have a base of their
            // own (Gemma 3's by default the classic one, and not scaled).
            // (llama.cpp's OLMo 2 reads `rope.freq_base_swa` but rotates
            // its local layers with the global base.)
            rope_base_local: match opt_f("rope.freq_base_swa")? {
                Some(b) if gemma || gemma3n || gemma4 || gpt_oss || llama4 => b,
                // (llama.cpp's default for ModernBERT's local blocks.)
                Some(b) if arch == Architecture::ModernBert => b,
                None if arch == Architecture::ModernBert => 10_000.0,
                _ if gemma3 || gemma3n || gemma4 => 10_000.0,
                _ => rope_base,
            },
            rope_freq_scale,
            rope_freq_scale_local: if gemma3 || gemma3n || gemma4 || olmo2 {
                1.0
            } else {
                rope_freq_scale
            },
            rope_magnitude: rope_yarn.as_ref().map_or(1.0, YarnConfig::magnitude)
                * rope_attn_factor,
            rope_yarn,
            rope_original_context,
            rope_dims: match gemma4 {
                true => opt_u("rope.dimension_count_swa")?.unwrap_or(head_dim),
                false => opt_u("rope.dimension_count")?.unwrap_or(head_dim),
            },
            rope_mode: match arch {
                Architecture::Llama
                | Architecture::Llama4
                | Architecture::Arcee
                | Architecture::InternLm2
                | Architecture::MiniCpm
                | Architecture::Mistral
                | Architecture::Mistral3
                | Architecture::Ernie45
                | Architecture::Ernie45Moe
                | Architecture::Deepseek2
                | Architecture::Glm4
                | Architecture::ChatGlm
                | Architecture::Deci
                | Architecture::SmolLM3
                | Architecture::Granite
                | Architecture::GraniteMoe
                | Architecture::GraniteHybrid
                | Architecture::NemotronH
                | Architecture::NemotronHMoe
                | Architecture::CommandR
                | Architecture::Cohere2
                | Architecture::Gpt2
                | Architecture::Starcoder
                | Architecture::Mamba2
                | Architecture::Bloom
                | Architecture::Mpt
                | Architecture::Refact
                | Architecture::Xverse
                | Architecture::Olmo
                | Architecture::Baichuan
                | Architecture::Mamba
                | Architecture::LlamaEmbed
                | Architecture::JinaBertV2
                | Architecture::Deepseek
                | Architecture::Jais
                | Architecture::Maincoder
                | Architecture::NeoBert => RopeMode::Normal,
                Architecture::Qwen2
                | Architecture::Qwen2Moe
                | Architecture::Qwen3
                | Architecture::Qwen3Moe
                | Architecture::Qwen3Vl
                | Architecture::Qwen3VlMoe
                | Architecture::Phi3
                | Architecture::Gemma2
                | Architecture::Gemma3
                | Architecture::GemmaEmbedding
                | Architecture::Gemma3n
                | Architecture::Gemma4
                | Architecture::GptOss
                | Architecture::Olmo2
                | Architecture::Exaone4
                | Architecture::SeedOss
                | Architecture::Gemma
                | Architecture::Olmoe
                | Architecture::Glm4Moe
                | Architecture::MinimaxM2
                | Architecture::Dots1
                | Architecture::BailingMoe2
                | Architecture::Qwen35
                | Architecture::Qwen35Moe
                | Architecture::Qwen3Next
                | Architecture::Lfm2
                | Architecture::Lfm2Moe
                | Architecture::FalconH1
                | Architecture::HunyuanMoe
                | Architecture::HunyuanDense
                | Architecture::Starcoder2
                | Architecture::Phi2
                | Architecture::StableLm
                | Architecture::GptNeox
                | Architecture::Falcon
                | Architecture::Orion
                | Architecture::Nemotron
                | Architecture::CodeShell
                | Architecture::Exaone
                | Architecture::Plamo
                | Architecture::Bert
                | Architecture::NomicBert
                | Architecture::NomicBertMoe
                | Architecture::JinaBertV3
                | Architecture::ModernBert
                | Architecture::Qwen
                | Architecture::Dbrx
                | Architecture::Bitnet
                | Architecture::Apertus
                | Architecture::Grok
                | Architecture::EuroBert => RopeMode::Neox,
            },
            sliding_window,
            // Every sixth layer (Gemma 3), second (Gemma 2, gpt-oss) or
            // fourth (OLMo 3) attends globally unless the file says
            // otherwise.
            local_layers: match sliding_window {
                // (ModernBERT's global blocks come first of each three.)
                Some(_) if arch == Architecture::ModernBert => {
                    let pattern = key("attention.sliding_window_pattern");
                    match md.get(&pattern) {
                        Some(MetadataValue::Array(_)) => {
                            Some(swa_pattern(md, &pattern, n_layers, 3)?)
                        }
                        found => {
                            let every = match found {
                                Some(_) => md.get_u32(&pattern)? as usize,
                                None => 3,
                            };
                            Some(
                                (0..n_layers)
                                    .map(|l| every == 0 || l % every != 0)
                                    .collect(),
                            )
                        }
                    }
                }
                // (Llama 4's chunked layers.)
                _ if llama4 => Some(swa_pattern(
                    md,
                    &key("attention.sliding_window_pattern"),
                    n_layers,
                    4,
                )?),
                Some(_) if gemma || gemma3n || gemma4 || gpt_oss || olmo2 || exaone4 || cohere2 => {
                    let every = match arch {
                        Architecture::Gemma3 | Architecture::GemmaEmbedding => 6,
                        Architecture::Gemma3n => 5,
                        Architecture::Olmo2 | Architecture::Exaone4 | Architecture::Cohere2 => 4,
                        _ => 2,
                    };
                    Some(swa_pattern(
                        md,
                        &key("attention.sliding_window_pattern"),
                        n_layers,
                        every,
                    )?)
                }
                _ => None,
            },
            attn_chunk: llama4.then_some(LLAMA4_CHUNK),
            // (Gemma 4's frequency factors are its global blocks'.)
            local_rope_plain: olmo2 || gemma4,
            // (Command R7B's global layers rotate nothing either.)
            nope_global: exaone_window || cohere2,
            pre_norms: !(olmo2 || exaone4 || arch.bert_blocks()),
            encoder: arch.encoder(),
            bidirectional,
            gate: match arch {
                Architecture::Gemma
                | Architecture::Gemma2
                | Architecture::Gemma3
                | Architecture::GemmaEmbedding
                | Architecture::Gemma3n
                | Architecture::Gemma4
                | Architecture::JinaBertV2 => GateActivation::Gelu,
                // (llama.cpp's names, GEGLU where it knows none.)
                Architecture::ModernBert => match md.get(&key("hidden_activation")) {
                    None => GateActivation::Gelu,
                    Some(_) => match md.get_str(&key("hidden_activation"))? {
                        "silu" | "swish" | "swiglu" => GateActivation::Silu,
                        "relu" | "reglu" => {
                            return Err(Error::BadConfig(format!(
                                "{p} with ReLU feed-forward networks is not supported"
                            )))
                        }
                        _ => GateActivation::Gelu,
                    },
                },
                // (BitNet b1.58 2B4T's squared ReLU, which llama.cpp's
                // graph does not read: it gates every BitNet by SiLU.)
                Architecture::Bitnet => match md.get(&key("hidden_activation")) {
                    None => GateActivation::Silu,
                    Some(_) => match md.get_str(&key("hidden_activation"))? {
                        "silu" | "swish" | "swiglu" => GateActivation::Silu,
                        "relu2" | "relu_squared" => GateActivation::SquaredRelu,
                        other => {
                            return Err(Error::BadConfig(format!(
                                "{p}.hidden_activation {other:?} is not supported"
                            )))
                        }
                    },
                },
                _ => GateActivation::Silu,
            },
            qk_norm_whole: olmo2
                || matches!(
                    arch,
                    Architecture::Olmoe | Architecture::MinimaxM2 | Architecture::JinaBertV2
                ),
            qk_norm_after_rope: hunyuan || arch == Architecture::Maincoder,
            // Gemma 2 and 3 27B scale by their width per head, not their
            // head size (as llama.cpp tells them: by their 46 and 62
            // layers).
            attn_scale: match opt_f("attention.scale")? {
                // SmolLM3 and Granite may set theirs.
                Some(s)
                    if s != 0.0
                        && matches!(
                            arch,
                            Architecture::SmolLM3
                                | Architecture::Granite
                                | Architecture::GraniteMoe
                                | Architecture::GraniteHybrid
                                | Architecture::NemotronH
                                | Architecture::NemotronHMoe
                                | Architecture::Apertus
                        ) =>
                {
                    s
                }
                _ if (gemma2 && n_layers == 46) || (gemma3 && n_layers == 62) => {
                    1.0 / (d_model as f32 / n_heads as f32).sqrt()
                }
                // (Gemma 3n's queries are normed to their scale.)
                _ if gemma3n || gemma4 => 1.0,
                // (Jais scales by a head's width, as muP.)
                _ if arch == Architecture::Jais => 1.0 / head_dim as f32,
                // Grok's attention multiplier, 1/sqrt(128) where the file
                // gives none (llama.cpp's default).
                _ if arch == Architecture::Grok => {
                    opt_f("attention.output_scale")?.unwrap_or(0.088_388_347_648_318_45_f64 as f32)
                }
                _ => 1.0 / (head_dim as f32).sqrt(),
            },
            embedding_scale: match arch {
                _ if gemma || gemma3n || gemma4 || arch == Architecture::Gemma => {
                    Some((d_model as f32).sqrt())
                }
                Architecture::Granite | Architecture::GraniteMoe | Architecture::GraniteHybrid => {
                    opt_f("embedding_scale")?.filter(|&s| s != 0.0)
                }
                // (MiniCPM's and Grok's where the file gives none, as
                // llama.cpp's.)
                Architecture::MiniCpm => {
                    Some(opt_f("embedding_scale")?.unwrap_or(12.0)).filter(|&s| s != 0.0)
                }
                Architecture::Grok => {
                    Some(opt_f("embedding_scale")?.unwrap_or(78.383_671_769_061_69_f64 as f32))
                        .filter(|&s| s != 0.0)
                }
                _ => None,
            },
            residual_scale: match arch {
                Architecture::Granite | Architecture::GraniteMoe | Architecture::GraniteHybrid => {
                    opt_f("residual_scale")?.filter(|&s| s != 0.0)
                }
                Architecture::MiniCpm => {
                    let default = 1.4 / (n_layers as f32).sqrt();
                    Some(opt_f("residual_scale")?.unwrap_or(default)).filter(|&s| s != 0.0)
                }
                _ => None,
            },
            logit_scale: match arch {
                // Required, as llama.cpp reads it.
                Architecture::Granite | Architecture::GraniteMoe => {
                    Some(md.get_f32(&key("logit_scale"))?)
                }
                // (Optional for the hybrids.)
                Architecture::GraniteHybrid => opt_f("logit_scale")?.filter(|&s| s != 0.0),
                Architecture::MiniCpm => {
                    Some(opt_f("logit_scale")?.unwrap_or(256.0 / d_model as f32))
                }
                // Command R's multiplies its logits (a divisor here);
                // required for Command R7B's, as llama.cpp reads them.
                Architecture::CommandR => {
                    opt_f("logit_scale")?.filter(|&s| s != 0.0).map(|s| 1.0 / s)
                }
                Architecture::Cohere2 => Some(1.0 / md.get_f32(&key("logit_scale"))?),
                // Grok's multiplies too, by 1/sqrt(3) where the file gives
                // none.
                Architecture::Grok => {
                    Some(1.0 / opt_f("logit_scale")?.unwrap_or(0.577_350_269_189_625_7_f64 as f32))
                        .filter(|s| s.is_finite())
                }
                _ => None,
            },
            // Granite 4.0's hybrids rotate nothing where the file says
            // `rope.scaling.finetuned` is false (every layer "without RoPE").
            no_rope_every: match arch {
                Architecture::SmolLM3 | Architecture::Llama4 => Some(4),
                Architecture::GraniteHybrid if !rope_finetuned => Some(1),
                // (Nemotron-H's attention has no RoPE, nor has GPT-2's.)
                _ if nemotron => Some(1),
                Architecture::Gpt2 | Architecture::Starcoder | Architecture::Bert => Some(1),
                // (ALiBi's families rotate nothing.)
                Architecture::Bloom
                | Architecture::Mpt
                | Architecture::Refact
                | Architecture::JinaBertV2
                | Architecture::Jais => Some(1),
                Architecture::Baichuan if n_layers == 40 => Some(1),
                _ => None,
            },
            alibi: match arch {
                // llama.cpp's constant for BLOOM, Refact, Baichuan 13B and
                // Jina BERT v2.
                Architecture::Bloom | Architecture::Refact | Architecture::JinaBertV2 => Some(8.0),
                Architecture::Baichuan if n_layers == 40 => Some(8.0),
                Architecture::Mpt | Architecture::Jais => {
                    match opt_f("attention.max_alibi_bias")? {
                        None | Some(0.0) => None,
                        Some(b) if b > 0.0 && b.is_finite() => Some(b),
                        Some(b) => {
                            return Err(Error::BadConfig(format!(
                                "{p}.attention.max_alibi_bias {b} is not a positive number"
                            )))
                        }
                    }
                }
                _ => None,
            },
            clamp_kqv: match arch {
                Architecture::Olmo | Architecture::Mpt | Architecture::Dbrx => {
                    match opt_f("attention.clamp_kqv")? {
                        None | Some(0.0) => None,
                        Some(c) if c > 0.0 && c.is_finite() => Some(c),
                        Some(c) => {
                            return Err(Error::BadConfig(format!(
                                "{p}.attention.clamp_kqv {c} is not a positive number"
                            )))
                        }
                    }
                }
                _ => None,
            },
            xielu: None,
            attn_softcap,
            final_softcap,
            moe: moe_config(md, arch, ffn_dim)?,
            mla: None,
            delta_net: None,
            short_conv: None,
            mamba: None,
            mamba1: None,
            ffn_blocks: None,
            deci: None,
            attn_output_gate: qwen35,
            altup: None,
            gemma4: None,
            ffn_dims: match (gemma4 || arch == Architecture::Deci, &ff_per_layer) {
                (true, Some(ff)) if ff.iter().any(|&f| f != ffn_dim) => Some(
                    (0..n_layers)
                        .map(|l| ff.get(l).copied().unwrap_or(ffn_dim))
                        .collect(),
                ),
                _ => None,
            },
            attn_temperature: match arch {
                Architecture::Mistral3 => match opt_f("attention.temperature_scale")? {
                    None | Some(0.0) => None,
                    Some(s) if s.is_finite() => Some(AttnTemperature {
                        scale: s,
                        floor: rope_original_context,
                        offset: 0,
                        nope_only: false,
                    }),
                    Some(s) => {
                        return Err(Error::BadConfig(format!(
                            "{p}.attention.temperature_scale {s} is not a number"
                        )))
                    }
                },
                // llama.cpp's constants for Llama 4's chunked files.
                Architecture::Llama4 => Some(AttnTemperature {
                    scale: 0.1,
                    floor: LLAMA4_CHUNK,
                    offset: 1,
                    nope_only: true,
                }),
                _ => None,
            },
        };
        if cfg.n_layers == 0
            || cfg.d_model == 0
            || cfg.head_dim == 0
            || cfg.vocab_size == 0
            || cfg.rope_dims > cfg.head_dim
        {
            return Err(Error::BadConfig(format!("inconsistent shape: {cfg:?}")));
        }
        if arch == Architecture::Deepseek2 {
            mla_config(md, &mut cfg)?;
        }
        if gemma3n {
            cfg.altup = Some(altup_config(md, &cfg)?);
        }
        if gemma4 {
            cfg.gemma4 = Some(gemma4_config(md, &cfg, kv_per_layer.as_deref())?);
        }
        if mamba2 {
            // Every block a mixer alone.
            cfg.ffn_blocks = Some(vec![false; cfg.n_layers]);
        }
        if arch == Architecture::Apertus {
            cfg.xielu = Some(xielu_coefficients(md, cfg.n_layers)?);
        }
        if arch == Architecture::Deci {
            cfg.deci = Some(deci_blocks(
                &cfg,
                deci_heads.as_deref(),
                kv_per_layer.as_deref(),
            )?);
        }
        if nemotron {
            let kv = kv_per_layer.as_deref().unwrap_or_default();
            let ff = ff_per_layer.as_deref().unwrap_or_default();
            if kv.len() < cfg.n_layers || ff.len() < cfg.n_layers {
                return Err(Error::BadConfig(format!(
                    "{p}: attention.head_count_kv and feed_forward_length must be lists, one \
                     value a block"
                )));
            }
            if let Some(l) = (0..cfg.n_layers).find(|&l| kv[l] > 0 && ff[l] > 0) {
                return Err(Error::BadConfig(format!(
                    "{p}: block {l} has both KV heads and a feed-forward width"
                )));
            }
            cfg.ffn_blocks = Some(ff[..cfg.n_layers].iter().map(|&f| f > 0).collect());
        }
        let falcon = arch == Architecture::FalconH1;
        if arch == Architecture::Mamba {
            cfg.mamba1 = Some(Mamba1Config {
                conv_kernel: u("ssm.conv_kernel")?,
                inner: u("ssm.inner_size")?,
                state: u("ssm.state_size")?,
                dt_rank: u("ssm.time_step_rank")?,
                dt_b_c_rms: match md.get(&key("ssm.dt_b_c_rms")) {
                    Some(_) => md.get_bool(&key("ssm.dt_b_c_rms"))?,
                    None => false,
                },
            });
            if let Some(m) = cfg
                .mamba1
                .as_ref()
                .filter(|m| m.conv_kernel < 2 || m.inner == 0 || m.state == 0 || m.dt_rank == 0)
            {
                return Err(Error::BadConfig(format!("{p}: inconsistent mixers: {m:?}")));
            }
        }
        if arch == Architecture::GraniteHybrid || nemotron || falcon || arch == Architecture::Mamba2
        {
            // (Falcon-H1's blocks all attend and mix; Mamba-2's all mix.)
            let all = vec![0; cfg.n_layers];
            let kv = match falcon || mamba2 {
                true => &all[..],
                false => kv_per_layer.as_deref().ok_or_else(|| {
                    Error::BadConfig(format!("{p}.attention.head_count_kv must be a list"))
                })?,
            };
            let m = MambaConfig {
                conv_kernel: u("ssm.conv_kernel")?,
                inner: u("ssm.inner_size")?,
                state: u("ssm.state_size")?,
                heads: u("ssm.time_step_rank")?,
                groups: u("ssm.group_count")?,
                layers: kv
                    .iter()
                    .take(cfg.n_layers)
                    .enumerate()
                    .map(|(l, &h)| h == 0 && !cfg.ffn_blocks.as_ref().is_some_and(|f| f[l]))
                    .collect(),
                parallel: falcon,
            };
            if m.conv_kernel < 2
                || m.state == 0
                || m.heads == 0
                || m.groups == 0
                || !m.inner.is_multiple_of(m.heads)
                || !m.heads.is_multiple_of(m.groups)
                || m.layers.len() < cfg.n_layers
            {
                return Err(Error::BadConfig(format!(
                    "{p}: a Mamba-2 mixer {} wide of {} heads in {} groups, state {}, {} taps, \
                     {} blocks' KV heads for {}",
                    m.inner,
                    m.heads,
                    m.groups,
                    m.state,
                    m.conv_kernel,
                    m.layers.len(),
                    cfg.n_layers
                )));
            }
            cfg.mamba = Some(m);
        }
        if matches!(arch, Architecture::Lfm2 | Architecture::Lfm2Moe) {
            let taps = u("shortconv.l_cache")?;
            let kv = kv_per_layer.ok_or_else(|| {
                Error::BadConfig(format!("{p}.attention.head_count_kv must be a list"))
            })?;
            if taps < 2 || kv.len() < cfg.n_layers {
                return Err(Error::BadConfig(format!(
                    "{p}: {taps} taps, {} blocks' KV heads for {}",
                    kv.len(),
                    cfg.n_layers
                )));
            }
            cfg.short_conv = Some(ShortConvConfig {
                l_cache: taps,
                layers: kv[..cfg.n_layers].iter().map(|&h| h == 0).collect(),
            });
        }
        // (Qwen3-VL's sections turn text as NeoX does.)
        if matches!(arch, Architecture::Qwen3Vl | Architecture::Qwen3VlMoe) {
            imrope_text_check(md, &cfg)?;
        }
        if qwen35 {
            cfg.delta_net = Some(delta_net_config(md, &cfg)?);
            // (Qwen3-Next rotates by plain NeoX RoPE.)
            if arch != Architecture::Qwen3Next {
                imrope_text_check(md, &cfg)?;
            }
        }
        // YaRN's pair divisors are the model's; a local layer of its own
        // base or scale would need others.
        // (OLMo 3's local layers rotate plainly.)
        if cfg.rope_yarn.is_some()
            && !cfg.local_rope_plain
            && (gemma || cfg.rope_base_local != cfg.rope_base)
        {
            return Err(Error::BadConfig(format!(
                "YaRN for {} is not supported",
                arch.name()
            )));
        }
        Ok(cfg)
    }

    /// The sliding window of layer `layer`, or `None` if it attends globally.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        match &self.local_layers {
            Some(local) if !local.get(layer).copied().unwrap_or(false) => None,
            _ => self.sliding_window,
        }
    }

    /// Whether layer `layer` rotates its queries and keys.
    pub fn layer_ropes(&self, layer: usize) -> bool {
        self.layer_rope_freq_scale(layer) != 0.0
    }

    /// The attention chunk of layer `layer` (Llama 4's local layers), or
    /// `None`.
    pub fn layer_chunk(&self, layer: usize) -> Option<usize> {
        match &self.local_layers {
            Some(local) if local.get(layer).copied().unwrap_or(false) => self.attn_chunk,
            _ => None,
        }
    }

    /// RoPE base of layer `layer`.
    pub fn layer_rope_base(&self, layer: usize) -> f32 {
        if self.is_local(layer) {
            self.rope_base_local
        } else {
            self.rope_base
        }
    }

    /// RoPE frequency scale of layer `layer` (0, which turns nothing, for
    /// a layer without RoPE).
    pub fn layer_rope_freq_scale(&self, layer: usize) -> f32 {
        if self
            .no_rope_every
            .is_some_and(|n| (layer + 1).is_multiple_of(n))
            || (self.nope_global && self.layer_window(layer).is_none())
        {
            0.0
        } else if self.is_local(layer) {
            self.rope_freq_scale_local
        } else {
            self.rope_freq_scale
        }
    }

    /// RoPE magnitude of layer `layer` (1 for a layer without RoPE).
    pub fn layer_rope_magnitude(&self, layer: usize) -> f32 {
        if self.layer_rope_freq_scale(layer) == 0.0 || self.layer_rope_plain(layer) {
            1.0
        } else {
            self.rope_magnitude
        }
    }

    /// Whether layer `layer` rotates without the model's RoPE scaling
    /// (frequency factors, YaRN): OLMo 3's local layers.
    pub fn layer_rope_plain(&self, layer: usize) -> bool {
        self.local_rope_plain && self.is_local(layer)
    }

    /// Whether layer `layer` is one of a local/global model's local ones.
    pub fn is_local(&self, layer: usize) -> bool {
        self.local_layers.is_some()
            && (self.layer_window(layer).is_some() || self.layer_chunk(layer).is_some())
    }

    /// Whether layer `layer` has a recurrent state: a delta net, a short
    /// convolution or a Mamba-2 mixer (and no KV cache, unless its mixer
    /// runs beside attention).
    pub fn is_recurrent(&self, layer: usize) -> bool {
        let of = |l: &[bool]| l.get(layer).copied().unwrap_or(false);
        self.delta_net.as_ref().is_some_and(|d| of(&d.layers))
            || self.short_conv.as_ref().is_some_and(|c| of(&c.layers))
            || self.mamba.as_ref().is_some_and(|m| of(&m.layers))
            || (self.mamba1.is_some() && layer < self.n_layers)
    }

    /// Whether any layer has a recurrent state (which cannot forget some
    /// tokens and keep others).
    pub fn has_recurrent(&self) -> bool {
        self.delta_net.is_some()
            || self.short_conv.is_some()
            || self.mamba.is_some()
            || self.mamba1.is_some()
    }

    /// Values of layer `layer`'s recurrent state (0 for attention).
    pub fn recurrent_state_len(&self, layer: usize) -> usize {
        if !self.is_recurrent(layer) {
            return 0;
        }
        match (&self.delta_net, &self.short_conv, &self.mamba) {
            (Some(d), _, _) => d.state_len(),
            (_, Some(c), _) => (c.l_cache - 1) * self.d_model,
            (_, _, Some(m)) => m.state_len(),
            _ => self.mamba1.as_ref().map_or(0, Mamba1Config::state_len),
        }
    }

    /// Whether layer `layer` is a feed-forward network alone (no mixer).
    pub fn is_ffn_only(&self, layer: usize) -> bool {
        self.ffn_blocks
            .as_ref()
            .is_some_and(|f| f.get(layer).copied().unwrap_or(false))
            || self.deci_block(layer) == Some(DeciBlock::NoAttention)
    }

    /// Whether layer `layer` attends (and has a KV cache).
    pub fn has_attention(&self, layer: usize) -> bool {
        (!self.is_recurrent(layer) || self.is_parallel())
            && !self.is_ffn_only(layer)
            && self.deci_block(layer) != Some(DeciBlock::Linear)
    }

    /// What DeciLM's block `layer` has in place of attention (none for
    /// other architectures).
    pub fn deci_block(&self, layer: usize) -> Option<DeciBlock> {
        self.deci.as_ref().and_then(|d| d.get(layer).copied())
    }

    /// Whether each block's mixer runs beside its attention (Falcon-H1).
    pub fn is_parallel(&self) -> bool {
        self.mamba.as_ref().is_some_and(|m| m.parallel)
    }

    /// Layers with a KV cache of their own: those that attend, but
    /// those that read an earlier one's ([`ModelConfig::kv_source`]).
    pub fn kv_layers(&self) -> usize {
        self.cache_blocks().count()
    }

    /// The earlier layer whose KV cache layer `layer` reads instead of
    /// keeping one (Gemma 3n's last layers), if it does.
    pub fn kv_source(&self, layer: usize) -> Option<usize> {
        match (&self.altup, &self.gemma4) {
            (Some(a), _) => a.kv_source(self, layer),
            (_, Some(g)) => shared_kv_source(self, g.kv_from, layer),
            _ => None,
        }
    }

    /// Width of all query heads together (of the local blocks, where
    /// blocks differ: [`ModelConfig::layer_heads`]).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads together (of the local blocks,
    /// where blocks differ).
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Layer `layer`'s key/value heads, their width and rotated
    /// dimensions (Gemma 4's global layers have their own).
    pub fn layer_heads(&self, layer: usize) -> HeadShape {
        match &self.gemma4 {
            Some(g) if !self.is_local(layer) => g.global,
            _ if self.deci.is_some() => HeadShape {
                n_kv_heads: match self.deci_block(layer) {
                    Some(DeciBlock::Attention { kv_heads }) => kv_heads,
                    _ => self.n_kv_heads,
                },
                head_dim: self.head_dim,
                rope_dims: self.rope_dims,
            },
            _ => HeadShape {
                n_kv_heads: self.n_kv_heads,
                head_dim: self.head_dim,
                rope_dims: self.rope_dims,
            },
        }
    }

    /// Width of layer `layer`'s query heads together.
    pub fn layer_q_dim(&self, layer: usize) -> usize {
        self.n_heads * self.layer_heads(layer).head_dim
    }

    /// Width of layer `layer`'s key (or value) heads together.
    pub fn layer_kv_dim(&self, layer: usize) -> usize {
        let h = self.layer_heads(layer);
        h.n_kv_heads * h.head_dim
    }

    /// The widest layer's query heads together.
    pub fn max_q_dim(&self) -> usize {
        (0..self.n_layers)
            .map(|l| self.layer_q_dim(l))
            .fold(self.q_dim(), usize::max)
    }

    /// The widest layer's key (or value) heads together.
    pub fn max_kv_dim(&self) -> usize {
        (0..self.n_layers)
            .map(|l| self.layer_kv_dim(l))
            .fold(self.kv_dim(), usize::max)
    }

    /// The blocks that keep a KV cache layer of their own, in the cache's
    /// order: those that attend but those that read an earlier one's.
    pub fn cache_blocks(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.n_layers).filter(|&l| self.has_attention(l) && self.kv_source(l).is_none())
    }

    /// The KV cache of a session of `max_seq_len` positions in `dtype`:
    /// a layer each block in [`ModelConfig::cache_blocks`] (one of a value
    /// a position for a model of recurrent blocks alone, unused), each
    /// with its block's heads.
    pub fn kv_cache_config(&self, max_seq_len: usize, dtype: KvDtype) -> KvCacheConfig {
        let shapes: Vec<KvShape> = self
            .cache_blocks()
            .map(|l| {
                let h = self.layer_heads(l);
                KvShape {
                    n_kv_heads: h.n_kv_heads,
                    head_dim: h.head_dim,
                }
            })
            .collect();
        let uniform = shapes
            .iter()
            .all(|s| (s.n_kv_heads, s.head_dim) == (self.n_kv_heads, self.head_dim));
        // (A model without attention keeps one value a position, unused.)
        let (n_kv_heads, head_dim) = match shapes.is_empty() {
            true => (1, 1),
            false => (self.n_kv_heads, self.head_dim),
        };
        KvCacheConfig {
            n_layers: shapes.len().max(1),
            n_kv_heads,
            head_dim,
            max_seq_len,
            dtype,
            layer_shapes: (!uniform).then(|| shapes.into()),
        }
    }

    /// Width of each block's own input (Gemma 3n's, Gemma 4's E2B and
    /// E4B), for a model whose blocks have one.
    pub fn per_layer_input(&self) -> Option<usize> {
        match (&self.altup, &self.gemma4) {
            (Some(a), _) => Some(a.per_layer),
            (_, Some(g)) if g.per_layer > 0 => Some(g.per_layer),
            _ => None,
        }
    }

    /// Layer `layer`'s feed-forward width.
    pub fn layer_ffn_dim(&self, layer: usize) -> usize {
        self.ffn_dims
            .as_ref()
            .and_then(|f| f.get(layer).copied())
            .unwrap_or(self.ffn_dim)
    }
}

/// The mixture-of-experts shape of an `arch` model, as llama.cpp reads it:
/// `expert_count` experts (none: dense blocks), `expert_used_count` of
/// them a token, `expert_feed_forward_length` wide (Qwen 3 MoE; by default
/// `ffn / used`) or `feed_forward_length` (llama), the chosen weights
/// renormalised and scaled by `expert_weights_scale` if set.
fn moe_config(md: &Metadata, arch: Architecture, ffn: usize) -> Result<Option<MoeConfig>> {
    let p = arch.name();
    let get = |k: &str| -> Result<Option<u32>> {
        let key = format!("{p}.{k}");
        Ok(match md.get(&key) {
            Some(_) => Some(md.get_u32(&key)?),
            None => None,
        })
    };
    let experts = get("expert_count")?.unwrap_or(0) as usize;
    let glm = arch == Architecture::Glm4Moe;
    let ernie = arch == Architecture::Ernie45Moe;
    let minimax = arch == Architecture::MinimaxM2;
    // dots.llm1 and Ling 2.0, which llama.cpp reads alike but for Ling's
    // shared experts' width.
    let dots_or_ling = matches!(
        arch,
        Architecture::Dots1
            | Architecture::BailingMoe2
            | Architecture::Deepseek2
            | Architecture::Deepseek
    );
    let lfm2 = arch == Architecture::Lfm2Moe;
    let nemotron = matches!(arch, Architecture::NemotronH | Architecture::NemotronHMoe);
    let llama4 = arch == Architecture::Llama4;
    let hunyuan = arch == Architecture::HunyuanMoe;
    let gemma4 = arch == Architecture::Gemma4;
    let nomic = arch == Architecture::NomicBertMoe;
    let grok = arch == Architecture::Grok;
    match (arch, experts) {
        (
            Architecture::Qwen2Moe
            | Architecture::Qwen3Moe
            | Architecture::Qwen3VlMoe
            | Architecture::GptOss
            | Architecture::Olmoe
            | Architecture::Glm4Moe
            | Architecture::Ernie45Moe
            | Architecture::MinimaxM2
            | Architecture::Dots1
            | Architecture::BailingMoe2
            | Architecture::Qwen35Moe
            | Architecture::Qwen3Next
            | Architecture::Lfm2Moe
            | Architecture::NemotronHMoe
            | Architecture::Llama4
            | Architecture::HunyuanMoe
            | Architecture::Deepseek
            | Architecture::Dbrx
            | Architecture::Grok,
            0,
        ) => return Err(Error::BadConfig(format!("{p} needs an expert_count"))),
        (_, 0) => return Ok(None),
        (
            Architecture::Llama
            | Architecture::Mistral3
            | Architecture::GraniteMoe
            | Architecture::Olmoe
            | Architecture::Qwen2Moe
            | Architecture::Qwen3Moe
            | Architecture::Qwen3VlMoe
            | Architecture::GptOss
            | Architecture::Glm4Moe
            | Architecture::Ernie45Moe
            | Architecture::MinimaxM2
            | Architecture::Dots1
            | Architecture::BailingMoe2
            | Architecture::Deepseek2
            | Architecture::Qwen35Moe
            | Architecture::Qwen3Next
            | Architecture::Llama4
            | Architecture::HunyuanMoe
            | Architecture::GraniteHybrid
            | Architecture::Lfm2Moe
            | Architecture::NemotronH
            | Architecture::NemotronHMoe
            | Architecture::Gemma4
            | Architecture::NomicBertMoe
            | Architecture::Deepseek
            | Architecture::Dbrx
            | Architecture::Grok,
            _,
        ) => {}
        (other, _) => {
            return Err(Error::BadConfig(format!(
                "{} with experts is not supported",
                other.name()
            )))
        }
    }
    let used = get("expert_used_count")?.unwrap_or(0) as usize;
    if used == 0 || used > experts {
        return Err(Error::BadConfig(format!(
            "{used} of {experts} experts a token"
        )));
    }
    // ERNIE 4.5's blocks of experts would interleave with dense ones, as
    // no file has them (llama.cpp loads experts in every block).
    if ernie {
        let step = md.get_u32(&format!("{p}.interleave_moe_layer_step"))?;
        if step != 1 {
            return Err(Error::BadConfig(format!(
                "{p}.interleave_moe_layer_step {step} is not supported"
            )));
        }
    }
    let qwen = matches!(
        arch,
        Architecture::Qwen2Moe
            | Architecture::Qwen3Moe
            | Architecture::Qwen3VlMoe
            | Architecture::Qwen35Moe
            | Architecture::Qwen3Next
    );
    let gpt_oss = arch == Architecture::GptOss;
    let ffn_dim = match get("expert_feed_forward_length")? {
        _ if ernie || dots_or_ling || lfm2 || llama4 || gemma4 => {
            md.get_u32(&format!("{p}.expert_feed_forward_length"))? as usize
        }
        // MiniMax-M2's experts are `feed_forward_length` wide; llama.cpp
        // needs the key and leaves it unused.
        None if minimax => {
            return Err(Error::BadConfig(format!(
                "{p} needs an expert_feed_forward_length"
            )))
        }
        Some(f) if f > 0 && (qwen || gpt_oss || glm || nemotron || grok) => f as usize,
        _ if qwen || glm || nemotron => ffn / used,
        _ => ffn,
    };
    let shared_ffn_dim = match arch {
        // Grok-2's dense network beside its experts, `feed_forward_length`
        // wide (its files, unlike Grok-1's, give the experts' own width).
        Architecture::Grok => get("expert_feed_forward_length")?.map(|_| ffn),
        // (Llama 4's is as wide as an expert.)
        Architecture::Llama4 => Some(ffn_dim),
        // (Nemotron-H's shared expert must have a width.)
        _ if nemotron => {
            Some(md.get_u32(&format!("{p}.expert_shared_feed_forward_length"))? as usize)
        }
        Architecture::Qwen2Moe
        | Architecture::Qwen35Moe
        | Architecture::Qwen3Next
        | Architecture::HunyuanMoe => match get("expert_shared_feed_forward_length")? {
            Some(f) if f > 0 => Some(f as usize),
            _ => Some(ffn),
        },
        Architecture::GraniteMoe | Architecture::GraniteHybrid | Architecture::Ernie45Moe => {
            get("expert_shared_feed_forward_length")?
                .filter(|&f| f > 0)
                .map(|f| f as usize)
        }
        // GLM-4.5's and dots.llm1's shared experts are one of their
        // experts' width each; Ling's may be as wide as the file says.
        Architecture::Glm4Moe
        | Architecture::Dots1
        | Architecture::BailingMoe2
        | Architecture::Deepseek2
        | Architecture::Deepseek => {
            let width = match get("expert_shared_feed_forward_length")? {
                Some(f) if f > 0 && arch == Architecture::BailingMoe2 => f as usize,
                _ => ffn_dim,
            };
            match md.get_u32(&format!("{p}.expert_shared_count"))? as usize {
                0 => None,
                n => Some(n * width),
            }
        }
        _ => None,
    };
    // (llama.cpp reads no scale for ERNIE 4.5, MiniMax-M2, Qwen 3.5 and
    // Qwen3-Next.)
    let qwen_delta = matches!(arch, Architecture::Qwen35Moe | Architecture::Qwen3Next);
    let scale_key = format!("{p}.expert_weights_scale");
    let weights_scale = match md.get(&scale_key) {
        Some(_)
            if !ernie
                && !minimax
                && !lfm2
                && !qwen_delta
                && !llama4
                && !hunyuan
                && !gemma4
                && !nomic
                && !grok =>
        {
            md.get_f32(&scale_key)?
        }
        _ => 0.0,
    };
    let norm_key = format!("{p}.expert_weights_norm");
    let norm_weights = match arch {
        // Qwen 2 MoE's router weights are the softmax's own (gpt-oss's a
        // softmax of the chosen).
        Architecture::Qwen2Moe
        | Architecture::GptOss
        | Architecture::Olmoe
        | Architecture::Llama4
        | Architecture::NomicBertMoe
        | Architecture::Deepseek => false,
        Architecture::Glm4Moe
        | Architecture::Dots1
        | Architecture::BailingMoe2
        | Architecture::Deepseek2
        | Architecture::NemotronH
        | Architecture::NemotronHMoe => md.get(&norm_key).is_some() && md.get_bool(&norm_key)?,
        _ => true,
    };
    let gating = match arch {
        Architecture::GptOss => Gating::SoftmaxChosen,
        _ if nemotron || llama4 => Gating::Sigmoid,
        // llama.cpp's `expert_gating_func` (GLM-4.5's sigmoid unless set;
        // the others' must be set).
        Architecture::Glm4Moe
        | Architecture::MinimaxM2
        | Architecture::Dots1
        | Architecture::BailingMoe2
        | Architecture::Lfm2Moe => match get("expert_gating_func")?.unwrap_or(0) {
            0 if !glm => return Err(Error::BadConfig(format!("{p} needs an expert_gating_func"))),
            0 | 2 => Gating::Sigmoid,
            1 => Gating::Softmax,
            3 => Gating::SoftmaxChosen,
            other => {
                return Err(Error::BadConfig(format!(
                    "{p}.expert_gating_func {other} is not supported"
                )))
            }
        },
        // DeepSeek V2's files may not say (softmax; GLM-4.7-Flash's, told
        // by its shape as llama.cpp tells it, sigmoid).
        Architecture::Deepseek2 => match get("expert_gating_func")?.unwrap_or(0) {
            0 => {
                let layers = md.get_u32(&format!("{p}.block_count"))?;
                let vocab = match md.get(&format!("{p}.vocab_size")) {
                    Some(_) => md.get_u32(&format!("{p}.vocab_size"))? as usize,
                    None => md.get_str_array("tokenizer.ggml.tokens")?.len(),
                };
                match (layers, vocab) {
                    (47 | 48, 154_880) => Gating::Sigmoid,
                    _ => Gating::Softmax,
                }
            }
            1 => Gating::Softmax,
            2 => Gating::Sigmoid,
            3 => Gating::SoftmaxChosen,
            other => {
                return Err(Error::BadConfig(format!(
                    "{p}.expert_gating_func {other} is not supported"
                )))
            }
        },
        _ => Gating::Softmax,
    };
    let dense_lead = match arch {
        Architecture::Glm4Moe
        | Architecture::Lfm2Moe
        | Architecture::Ernie45Moe
        | Architecture::Dots1
        | Architecture::BailingMoe2
        | Architecture::Deepseek2
        | Architecture::Deepseek => get("leading_dense_block_count")?.unwrap_or(0) as usize,
        _ => 0,
    };
    let every = match llama4 {
        true => get("interleave_moe_layer_step")?
            .ok_or_else(|| Error::BadConfig(format!("{p} needs an interleave_moe_layer_step")))?
            as usize,
        // (llama.cpp's experts are in blocks `i % n == 1`: every second
        // block's, as these, for n = 2.)
        false if nomic => match get("moe_every_n_layers")?.unwrap_or(0) {
            2 => 2,
            n => {
                return Err(Error::BadConfig(format!(
                    "{p}.moe_every_n_layers {n} (not 2) is not supported"
                )))
            }
        },
        false => 1,
    };
    if every == 0 {
        return Err(Error::BadConfig(format!(
            "{p}.interleave_moe_layer_step of 0"
        )));
    }
    Ok(Some(MoeConfig {
        experts,
        used,
        ffn_dim,
        every,
        weights_on_input: llama4,
        latent: match get("moe_latent_size")? {
            Some(l) if l > 0 && nemotron => Some(l as usize),
            _ => None,
        },
        norm_weights,
        weights_scale: if weights_scale == 0.0 {
            1.0
        } else {
            weights_scale
        },
        shared_ffn_dim,
        shared_gated: matches!(
            arch,
            Architecture::Qwen2Moe | Architecture::Qwen35Moe | Architecture::Qwen3Next
        ),
        dense_beside: grok && shared_ffn_dim.is_some(),
        gating,
        // llama.cpp's constants for gpt-oss.
        activation: if gpt_oss {
            ExpertActivation::SwigluOai {
                alpha: 1.702,
                limit: 7.0,
            }
        } else if nemotron {
            ExpertActivation::SquaredRelu
        } else if gemma4 || grok {
            ExpertActivation::Geglu
        } else if nomic {
            ExpertActivation::Gelu
        } else {
            ExpertActivation::Swiglu
        },
        biases: gpt_oss,
        selection_bias: match arch {
            Architecture::Glm4Moe
            | Architecture::MinimaxM2
            | Architecture::Lfm2Moe
            | Architecture::NemotronH
            | Architecture::NemotronHMoe => SelectionBias::Required,
            Architecture::Ernie45Moe
            | Architecture::Dots1
            | Architecture::BailingMoe2
            | Architecture::Deepseek2 => SelectionBias::WherePresent,
            _ => SelectionBias::None,
        },
        dense_lead,
        groups: expert_groups(md, p, experts, gating)?,
    }))
}

/// Apertus's xIELU coefficients, a block each: `xielu.alpha_n`,
/// `alpha_p`, `beta` and `eps` (keys without the architecture's prefix,
/// as llama.cpp names them), each one value for all blocks or a list of
/// one a block.
fn xielu_coefficients(md: &Metadata, n_layers: usize) -> Result<Vec<Xielu>> {
    let per_block = |k: &str| -> Result<Vec<f32>> {
        let key = format!("xielu.{k}");
        match md.get(&key) {
            Some(MetadataValue::Array(MetadataArray::F32(v))) if v.len() >= n_layers => {
                Ok(v[..n_layers].to_vec())
            }
            Some(MetadataValue::Array(a)) => Err(Error::BadConfig(format!(
                "{key}: {} values for {n_layers} blocks",
                a.len()
            ))),
            _ => Ok(vec![md.get_f32(&key)?; n_layers]),
        }
    };
    let (an, ap, beta, eps) = (
        per_block("alpha_n")?,
        per_block("alpha_p")?,
        per_block("beta")?,
        per_block("eps")?,
    );
    Ok((0..n_layers)
        .map(|l| Xielu::from_file(an[l], ap[l], beta[l], eps[l]))
        .collect())
}

/// Reads DeepSeek 2's latent attention into `cfg`, as llama.cpp reads it:
/// its widths, its RoPE's magnitude (1 where YaRN has a log multiplier,
/// llama.cpp's `mscale` being taken as the multiplier) and its scores'
/// scale, `mscale^2 / sqrt(nope + rope)` with `mscale` the magnitude times
/// `1 + 0.1 log_mul ln(factor)`. Files of the older form (a whole
/// `attn_kv_b`, no `key_length_mla`) and the attention temperature
/// (Mistral Large 3's) are refused.
fn mla_config(md: &Metadata, cfg: &mut ModelConfig) -> Result<()> {
    let p = cfg.arch.name();
    let get = |k: &str| md.get_u32(&format!("{p}.{k}")).map(|v| v as usize);
    if md.get(&format!("{p}.attention.key_length_mla")).is_none() {
        return Err(Error::BadConfig(format!(
            "{p} without attention.key_length_mla (a file converted before llama.cpp's \
             absorbed latent attention) is not supported: convert it again"
        )));
    }
    let temperature = format!("{p}.attention.temperature_scale");
    if md.get(&temperature).is_some() && md.get_f32(&temperature)? != 0.0 {
        return Err(Error::BadConfig(format!(
            "{p} with an attention temperature is not supported"
        )));
    }
    let (kv_lora, key) = (
        get("attention.kv_lora_rank")?,
        get("attention.key_length_mla")?,
    );
    let rope = cfg.rope_dims;
    let q_lora = match md.get(&format!("{p}.attention.q_lora_rank")) {
        Some(_) => get("attention.q_lora_rank")?,
        None => 0,
    };
    let m = MlaConfig {
        q_lora,
        kv_lora,
        nope: key
            .checked_sub(rope)
            .filter(|&n| n > 0)
            .ok_or_else(|| Error::BadConfig(format!("{p}: keys of {key} with {rope} rotated")))?,
        rope,
        v_dim: get("attention.value_length_mla")?,
    };
    if cfg.head_dim != kv_lora + rope || cfg.n_kv_heads != 1 || m.v_dim == 0 {
        return Err(Error::BadConfig(format!(
            "{p}: latent attention {m:?} of {} heads of {} keys",
            cfg.n_kv_heads, cfg.head_dim
        )));
    }
    if cfg.rope_freq_scale != 1.0 {
        return Err(Error::BadConfig(format!(
            "{p} with linear RoPE scaling is not supported"
        )));
    }
    let (factor, log_mul) = cfg
        .rope_yarn
        .as_ref()
        .map_or((1.0, 0.0), |y| (y.factor, y.log_mul));
    let attn_factor = match &cfg.rope_yarn {
        Some(y) => cfg.rope_magnitude / y.magnitude(),
        None => cfg.rope_magnitude,
    };
    if cfg.rope_yarn.is_some() && log_mul != 0.0 {
        cfg.rope_magnitude = attn_factor;
    }
    let mscale = cfg.rope_magnitude * (1.0 + 0.1 * log_mul * f32::ln(factor.max(1.0)));
    cfg.attn_scale = mscale * mscale / ((m.nope + rope) as f32).sqrt();
    cfg.mla = Some(m);
    Ok(())
}

/// The expert groups a token's experts are chosen from
/// (`expert_group_count`, `expert_group_used_count`: DeepSeek V3's and
/// Ling 2.0's), as llama.cpp reads them for every architecture; `None`
/// for one group.
fn expert_groups(
    md: &Metadata,
    p: &str,
    experts: usize,
    gating: Gating,
) -> Result<Option<(usize, usize)>> {
    let get = |k: &str| -> Result<usize> {
        let key = format!("{p}.{k}");
        Ok(match md.get(&key) {
            Some(_) => md.get_u32(&key)? as usize,
            None => 0,
        })
    };
    let (groups, used) = (get("expert_group_count")?, get("expert_group_used_count")?);
    if groups <= 1 {
        return Ok(None);
    }
    if groups >= experts || !experts.is_multiple_of(groups) || used == 0 || used >= groups {
        return Err(Error::BadConfig(format!(
            "{used} of {groups} groups of {experts} experts"
        )));
    }
    if gating == Gating::SoftmaxChosen {
        return Err(Error::BadConfig(format!(
            "{p}: expert groups with weights of the chosen's softmax are not supported"
        )));
    }
    Ok(Some((groups, used)))
}

/// Whether RoPE sections leave M-RoPE off, as llama.cpp tells it: the
/// first two sections not both positive.
/// Qwen 3.5's delta-net shape, as llama.cpp reads it (see
/// [`DeltaNetConfig`]): its heads' width is `ssm.state_size`, and
/// `ssm.inner_size` must be the value heads' width.
fn delta_net_config(md: &Metadata, cfg: &ModelConfig) -> Result<DeltaNetConfig> {
    let p = cfg.arch.name();
    let get = |k: &str| md.get_u32(&format!("{p}.{k}")).map(|v| v as usize);
    let key = format!("{p}.attention.recurrent_layers");
    let layers = match md.get(&key) {
        Some(_) => swa_pattern(md, &key, cfg.n_layers, 0)?,
        None => {
            let interval_key = format!("{p}.full_attention_interval");
            let every = match md.get(&interval_key) {
                Some(_) => md.get_u32(&interval_key)?,
                None => 4,
            };
            (0..cfg.n_layers)
                .map(|l| every != 0 && !(l + 1).is_multiple_of(every as usize))
                .collect()
        }
    };
    let d = DeltaNetConfig {
        conv_kernel: get("ssm.conv_kernel")?,
        head_dim: get("ssm.state_size")?,
        k_heads: get("ssm.group_count")?,
        v_heads: get("ssm.time_step_rank")?,
        grouped: cfg.arch == Architecture::Qwen3Next,
        layers,
    };
    let inner = get("ssm.inner_size")?;
    if d.conv_kernel == 0
        || d.head_dim == 0
        || d.k_heads == 0
        || !d.v_heads.is_multiple_of(d.k_heads)
        || inner != d.v_dim()
    {
        return Err(Error::BadConfig(format!(
            "{p}: a delta net of {} value heads over {} key heads of {}, {} wide inside, \
             with {} taps",
            d.v_heads, d.k_heads, d.head_dim, inner, d.conv_kernel
        )));
    }
    Ok(d)
}

/// Qwen 3.5's interleaved M-RoPE (`rope.dimension_sections`, four
/// sections of pairs): for text, whose position is the same in the first
/// three sections and 0 in the fourth, it is NeoX's RoPE where every
/// rotated pair falls in one of the first three, as llama.cpp assigns
/// pair `i` (sector `i` modulo their sum): sector `s` is the first
/// section's if `s % 3 == 0 && s < 3 * sections[0]`, and so on. Others
/// are refused.
fn imrope_text_check(md: &Metadata, cfg: &ModelConfig) -> Result<()> {
    let key = format!("{}.rope.dimension_sections", cfg.arch.name());
    let sections: Vec<i64> = match md.get(&key) {
        Some(MetadataValue::Array(MetadataArray::I32(v))) => v.iter().map(|&x| x.into()).collect(),
        Some(MetadataValue::Array(MetadataArray::U32(v))) => v.iter().map(|&x| x.into()).collect(),
        Some(_) => return Err(Error::BadConfig(format!("{key} is not a list of numbers"))),
        None => return Err(Error::BadConfig(format!("{key} is missing"))),
    };
    let s = |i: usize| sections.get(i).copied().unwrap_or(0);
    let total: i64 = (0..4).map(s).sum();
    let text = |sector: i64| {
        (sector % 3 == 0 && sector < 3 * s(0))
            || (sector % 3 == 1 && sector < 3 * s(1))
            || (sector % 3 == 2 && sector < 3 * s(2))
    };
    let pairs = cfg.rope_dims as i64 / 2;
    if total <= 0 || !(0..pairs).all(|i| text(i % total)) {
        return Err(Error::BadConfig(format!(
            "{key} {sections:?} leaves some of {pairs} rotated pairs unturned for text"
        )));
    }
    Ok(())
}

/// A list of per-block counts (`attention.head_count_kv` as LFM2's files
/// hold it).
fn layer_counts(a: &MetadataArray) -> Result<Vec<usize>> {
    let v: Vec<i64> = match a {
        MetadataArray::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        MetadataArray::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        _ => return Err(Error::BadConfig("a list of counts holds no numbers".into())),
    };
    v.into_iter()
        .map(|x| usize::try_from(x).map_err(|_| Error::BadConfig(format!("a count of {x}"))))
        .collect()
}

fn sections_unused(a: &MetadataArray) -> bool {
    let v: Vec<i64> = match a {
        MetadataArray::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        MetadataArray::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        _ => return false,
    };
    !(v.first().is_some_and(|&x| x > 0) && v.get(1).is_some_and(|&x| x > 0))
}

/// Which of `n_layers` layers use the sliding window, from `key`: a list of
/// flags, one a block (prediction blocks' last, unused), or every `n`th
/// layer global (`every` when the file says neither; 0: none), as
/// llama.cpp reads the pattern.
fn swa_pattern(md: &Metadata, key: &str, n_layers: usize, every: u32) -> Result<Vec<bool>> {
    let every = match md.get(key) {
        Some(MetadataValue::Array(MetadataArray::Bool(flags))) => {
            if flags.len() < n_layers {
                return Err(Error::BadConfig(format!(
                    "{key} has {} flags for {n_layers} layers",
                    flags.len()
                )));
            }
            return Ok(flags[..n_layers].to_vec());
        }
        Some(_) => md.get_u32(key)?,
        None => every,
    } as usize;
    Ok((0..n_layers)
        .map(|l| every == 0 || !(l + 1).is_multiple_of(every))
        .collect())
}

/// YaRN's RoPE scaling (`rope.scaling.type` yarn), as llama.cpp applies it
/// to the architectures Realm runs: the low-frequency pairs interpolated by
/// the factor, the high-frequency ones left, a ramp between (corrections at
/// 32 and 1 turns over the original context), and the rotated values'
/// magnitude raised by `1 + 0.1 ln(factor)` ([`YarnConfig::magnitude`];
/// `rope.scaling.attn_factor`, which applies to every scaling, multiplies
/// it in [`ModelConfig::rope_magnitude`]).
#[derive(Debug, Clone, PartialEq)]
pub struct YarnConfig {
    /// How many times the original context the model runs
    /// (`rope.scaling.factor`).
    pub factor: f32,
    /// The context the model was trained for
    /// (`rope.scaling.original_context_length`).
    pub original_context: usize,
    /// Turns over the original context above which a pair is left
    /// (`rope.scaling.yarn_beta_fast`, Ministral 3's; 32 for the others).
    pub beta_fast: f32,
    /// Turns over the original context below which a pair is interpolated
    /// fully (`rope.scaling.yarn_beta_slow`; 1 for the others).
    pub beta_slow: f32,
    /// `rope.scaling.yarn_log_multiplier` (transformers' `mscale_all_dim`;
    /// Ministral 3's), 0 for none: the magnitude is then divided by
    /// `1 + 0.1 log_mul ln(factor)`.
    pub log_mul: f32,
}

impl YarnConfig {
    /// YaRN by `factor` over `original_context` tokens with the usual
    /// corrections (32 and 1 turns) and no log multiplier.
    pub fn new(factor: f32, original_context: usize) -> Self {
        Self {
            factor,
            original_context,
            beta_fast: 32.0,
            beta_slow: 1.0,
            log_mul: 0.0,
        }
    }

    /// Each of the `n_dims / 2` rotated pairs' frequency divisor (pair `i`
    /// turns by `pos * base^(-2i / n_dims) / d[i]`): `factor` for the
    /// interpolated pairs, 1 for the others, blended along the ramp
    /// between the correction dimensions, computed in f32 as ggml computes
    /// them.
    pub fn pair_divisors(&self, n_dims: usize, base: f32) -> Vec<f32> {
        let corr = |beta: f32| {
            n_dims as f32
                * (self.original_context as f32 / (beta * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * base.ln())
        };
        let low = corr(self.beta_fast).floor().max(0.0);
        let high = corr(self.beta_slow).ceil().min(n_dims as f32 - 1.0);
        let freq_scale = 1.0 / self.factor;
        (0..n_dims / 2)
            .map(|i| {
                let y = (i as f32 - low) / (high - low).max(0.001);
                let mix = 1.0 - y.clamp(0.0, 1.0);
                1.0 / (freq_scale * (1.0 - mix) + mix)
            })
            .collect()
    }

    /// The factor YaRN puts on the rotated queries' and keys' magnitude:
    /// `1 + 0.1 ln(factor)`, divided by `1 + 0.1 log_mul ln(factor)` where
    /// there is a log multiplier (as llama.cpp takes transformers'
    /// `mscale` to be 1).
    pub fn magnitude(&self) -> f32 {
        let m = |mul: f32| 0.1 * mul * self.factor.ln() + 1.0;
        match self.factor {
            f if f <= 1.0 => 1.0,
            _ if self.log_mul != 0.0 => m(1.0) / m(self.log_mul),
            _ => m(1.0),
        }
    }
}

/// The RoPE frequency scale of architecture `p`, its YaRN scaling if it
/// has one, and its `rope.scaling.attn_factor` (1 by default), as llama.cpp
/// reads them: 1 over `rope.scaling.factor` (or the older
/// `rope.scale_linear`), unless `rope.scaling.type` is `none`; YaRN's scale
/// is in its pair divisors (the scale is then 1). LongRoPE is linear
/// scaling (usually by 1) with per-pair factors, which the model reads
/// from its tensors. Ministral 3's YaRN reads its corrections and log
/// multiplier too (llama.cpp reads them for it alone of the architectures
/// Realm runs).
fn rope_scale(md: &Metadata, arch: Architecture) -> Result<(f32, Option<YarnConfig>, f32)> {
    let p = arch.name();
    let ty = match md.get(&format!("{p}.rope.scaling.type")) {
        Some(_) => md.get_str(&format!("{p}.rope.scaling.type"))?,
        None => "linear",
    };
    let mut factor = 0.0;
    for k in ["rope.scaling.factor", "rope.scale_linear"] {
        if md.get(&format!("{p}.{k}")).is_some() {
            factor = md.get_f32(&format!("{p}.{k}"))?;
            break;
        }
    }
    let f = |k: &str| -> Result<Option<f32>> {
        let key = format!("{p}.{k}");
        Ok(match md.get(&key) {
            Some(_) => Some(md.get_f32(&key)?),
            None => None,
        })
    };
    let attn_factor = f("rope.scaling.attn_factor")?.unwrap_or(1.0);
    if !(attn_factor.is_finite() && attn_factor > 0.0) {
        return Err(Error::BadConfig(format!(
            "RoPE attn_factor {attn_factor} is not a positive number"
        )));
    }
    match ty {
        "none" => Ok((1.0, None, attn_factor)),
        "linear" | "longrope" | "yarn" if factor == 0.0 => Ok((1.0, None, attn_factor)),
        "linear" | "longrope" | "yarn" if !(factor.is_finite() && factor > 0.0) => {
            Err(Error::BadConfig(format!(
                "RoPE scaling factor {factor} is not a positive number"
            )))
        }
        "linear" | "longrope" => Ok((1.0 / factor, None, attn_factor)),
        "yarn" => {
            let ctx_key = format!("{p}.rope.scaling.original_context_length");
            let original_context = match md.get(&ctx_key) {
                Some(_) => md.get_u32(&ctx_key)?,
                None => md.get_u32(&format!("{p}.context_length"))?,
            } as usize;
            if original_context == 0 {
                return Err(Error::BadConfig("YaRN over 0 tokens".into()));
            }
            let mut yarn = YarnConfig::new(factor, original_context);
            // (DeepSeek 2's files hold a tenth of its multiplier.)
            if arch == Architecture::Deepseek2 {
                yarn.log_mul = f("rope.scaling.yarn_log_multiplier")?.unwrap_or(0.0) / 0.1;
            }
            // Grok's betas (8 and 1 where the file gives none, as
            // llama.cpp's); its ramp is the usual one or refused.
            if arch == Architecture::Grok {
                yarn.beta_fast = f("rope.scaling.yarn_beta_fast")?.unwrap_or(8.0);
                yarn.beta_slow = f("rope.scaling.yarn_beta_slow")?.unwrap_or(yarn.beta_slow);
                if let Some(e) = f("rope.scaling.yarn_ext_factor")?.filter(|&e| e != 1.0) {
                    return Err(Error::BadConfig(format!(
                        "{p}.rope.scaling.yarn_ext_factor {e} (not 1) is not supported"
                    )));
                }
            }
            if arch == Architecture::Mistral3 {
                yarn.beta_fast = f("rope.scaling.yarn_beta_fast")?.unwrap_or(yarn.beta_fast);
                yarn.beta_slow = f("rope.scaling.yarn_beta_slow")?.unwrap_or(yarn.beta_slow);
                yarn.log_mul = f("rope.scaling.yarn_log_multiplier")?.unwrap_or(0.0);
            }
            let finite = [yarn.beta_fast, yarn.beta_slow, yarn.log_mul]
                .iter()
                .all(|v| v.is_finite());
            if !(finite && yarn.beta_fast > 0.0 && yarn.beta_slow > 0.0) {
                return Err(Error::BadConfig(format!("YaRN's corrections {yarn:?}")));
            }
            Ok((1.0, Some(yarn), attn_factor))
        }
        other => Err(Error::BadConfig(format!(
            "RoPE scaling `{other}` is not supported (none, linear, longrope and yarn are)"
        ))),
    }
}
