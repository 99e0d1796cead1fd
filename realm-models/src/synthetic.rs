//! Synthetic-weight models: a real model's exact layout (hyper-parameters,
//! tensor names, shapes and quant types) filled with seeded random weights.
//!
//! Speed does not depend on weight values, so a synthetic copy benchmarks
//! like the real model, and two backends can be compared on it where the
//! real file is not at hand (a GPU machine the file cannot be moved to).
//! The layouts of the two real models are built in
//! ([`SyntheticLayout::smollm2_135m`], [`SyntheticLayout::gemma3_270m`]);
//! [`SyntheticLayout::of`] reads any GGUF file's, and a test checks the
//! built-in ones against the real files.
//!
//! ```
//! use realm_models::synthetic::SyntheticLayout;
//! let layout = SyntheticLayout::tiny("llama")?;
//! let bytes = layout.write(42)?; // a GGUF file, with a tokenizer
//! let file = realm_core::gguf::Gguf::from_bytes(bytes)?;
//! assert_eq!(file.metadata().get_str("general.architecture")?, "llama");
//! # Ok::<(), realm_models::Error>(())
//! ```

use half::f16;
use realm_core::gguf::{Gguf, GgufWriter, Metadata, MetadataArray, MetadataValue};
use realm_core::quant::blocks::BlockIQ1M;
use realm_core::{quant, GgmlType};

use crate::{Architecture, Error, Result};

/// One tensor of a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticTensor {
    /// GGUF tensor name.
    pub name: String,
    /// ggml order (`[cols, rows]` for a matrix).
    pub shape: Vec<u64>,
    /// Storage type.
    pub dtype: GgmlType,
}

/// The layout of a model: every `{arch}.*` hyper-parameter, the vocabulary
/// size and the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticLayout {
    /// `general.architecture`.
    pub arch: String,
    /// The `{arch}.*` keys, sorted by key (and any other key the file
    /// holds: with [`SyntheticLayout::with_vocab`], a vocabulary's
    /// `tokenizer.*` keys, written in place of the synthetic one's).
    pub hparams: Vec<(String, MetadataValue)>,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Tensors in file order.
    pub tensors: Vec<SyntheticTensor>,
}

/// gpt-oss's own hyper-parameters.
struct GptOss {
    /// Experts a block holds, and a token uses.
    experts: (u32, u32),
    /// The local layers' window.
    window: u32,
    context: u32,
    /// YaRN's factor and original context.
    yarn: (f32, u32),
}

/// A block's attention tensors, through `blk`, for a model `d` wide:
/// queries of `q` rows (Qwen 3.5's twice the heads' width, with their
/// gates), an output product from `out` values, keys and values of `kv`
/// rows, and per-head Q/K norms of `norms` values where given.
fn attention_tensors(
    blk: &mut dyn FnMut(&str, Vec<u64>),
    d: u64,
    (q, out, kv): (u64, u64, u64),
    norms: Option<u64>,
) {
    blk("attn_q.weight", vec![d, q]);
    blk("attn_k.weight", vec![d, kv]);
    blk("attn_v.weight", vec![d, kv]);
    blk("attn_output.weight", vec![out, d]);
    if let Some(hd) = norms {
        blk("attn_q_norm.weight", vec![hd]);
        blk("attn_k_norm.weight", vec![hd]);
    }
}

/// A block's gate, up and down matrices, `ff` wide, through `blk`.
fn gated_ffn_tensors(blk: &mut dyn FnMut(&str, Vec<u64>), d: u64, ff: u64) {
    blk("ffn_gate.weight", vec![d, ff]);
    blk("ffn_up.weight", vec![d, ff]);
    blk("ffn_down.weight", vec![ff, d]);
}

/// A layout's Mamba-2 mixers: their width, state, heads, groups and taps.
struct MambaShape {
    inner: u64,
    state: u64,
    heads: u64,
    groups: u64,
    taps: u64,
}

/// The tiny Granite 4.0 hybrid's, Nemotron-H's and Falcon-H1's mixers: 128
/// wide, 8 heads of 16 in 2 groups, a state of 16, 4 taps.
const TINY_MAMBA: MambaShape = MambaShape {
    inner: 128,
    state: 16,
    heads: 8,
    groups: 2,
    taps: 4,
};

impl MambaShape {
    /// The `ssm.*` keys, named by `k`.
    fn hparams(&self, k: &dyn Fn(&str) -> String) -> Vec<(String, MetadataValue)> {
        vec![
            u32_kv(&k("ssm.conv_kernel"), self.taps as u32),
            u32_kv(&k("ssm.group_count"), self.groups as u32),
            u32_kv(&k("ssm.inner_size"), self.inner as u32),
            u32_kv(&k("ssm.state_size"), self.state as u32),
            u32_kv(&k("ssm.time_step_rank"), self.heads as u32),
        ]
    }

    /// A block's mixer tensors for a model `d` wide, through `blk`.
    fn tensors(&self, d: u64, blk: &mut dyn FnMut(&str, Vec<u64>)) {
        let ch = self.inner + 2 * self.groups * self.state;
        blk("ssm_in.weight", vec![d, self.inner + ch + self.heads]);
        blk("ssm_conv1d.weight", vec![self.taps, ch]);
        blk("ssm_conv1d.bias", vec![ch]);
        blk("ssm_dt.bias", vec![self.heads]);
        blk("ssm_a", vec![1, self.heads]);
        blk("ssm_d", vec![1, self.heads]);
        blk(
            "ssm_norm.weight",
            vec![self.inner / self.groups, self.groups],
        );
        blk("ssm_out.weight", vec![self.inner, d]);
    }
}

/// The keys of a model `d` wide of `layers` recurrent mixers alone (no
/// attention heads, no feed-forward width, as llama.cpp's Mamba
/// converters write them), named by `k`.
fn mixers_only_hparams(
    k: &dyn Fn(&str) -> String,
    d: u64,
    layers: usize,
) -> Vec<(String, MetadataValue)> {
    vec![
        u32_kv(&k("attention.head_count"), 0),
        f32_kv(&k("attention.layer_norm_rms_epsilon"), 1e-5),
        u32_kv(&k("block_count"), layers as u32),
        u32_kv(&k("context_length"), 1 << 20),
        u32_kv(&k("embedding_length"), d as u32),
        u32_kv(&k("feed_forward_length"), 0),
    ]
}

/// The tensors of a layout `d` wide: the token embeddings (`vocab`
/// tokens), `layers` blocks whose tensors `block(layer, blk)` names
/// through `blk` (each typed by [`small_dtype`]), and the output norm
/// `norm`.
fn small_tensors(
    (d, vocab, layers): (u64, u64, usize),
    norm: &str,
    mut block: impl FnMut(usize, &mut dyn FnMut(&str, Vec<u64>)),
) -> Vec<SyntheticTensor> {
    let mut tensors = Vec::new();
    let mut add = |name: String, shape: Vec<u64>| {
        let dtype = small_dtype(&name, &shape);
        tensors.push(SyntheticTensor { name, shape, dtype });
    };
    add("token_embd.weight".into(), vec![d, vocab]);
    for l in 0..layers {
        block(l, &mut |n: &str, shape: Vec<u64>| {
            add(format!("blk.{l}.{n}"), shape)
        });
    }
    add(norm.into(), vec![d]);
    tensors
}

/// Whether llama.cpp's quantizer keeps matrix `name` as it is: Gemma
/// 3n's AltUp and LAuReL matrices and its embedding's product to the
/// blocks' inputs, BERT's token types.
fn kept_f32(name: &str) -> bool {
    ["altup", "laurel", "per_layer_model_proj", "token_types"]
        .iter()
        .any(|k| name.contains(k))
}

/// A small layout's tensor types: vectors (one-row ones too), norms and
/// the convolutions f32 (as llama.cpp's converters keep them), the other
/// matrices Q8_0.
fn small_dtype(name: &str, shape: &[u64]) -> GgmlType {
    let vector = shape.iter().filter(|&&d| d > 1).count() <= 1
        || kept_f32(name)
        || name.ends_with("_norm.weight")
        || name.ends_with("ssm_conv1d.weight")
        || name.ends_with(".ssm_a")
        || name.ends_with("shortconv.conv.weight");
    if vector {
        GgmlType::F32
    } else {
        GgmlType::Q8_0
    }
}

/// A Q4_K_M-like mix for the Gemma 3n and Gemma 4 E2B layouts: what
/// [`small_dtype`] keeps f32 stays so; the embeddings, `attn_v` and
/// `ffn_down` Q6_K; the other matrices Q4_K.
fn q4_k_m_like(name: &str, shape: &[u64]) -> GgmlType {
    match small_dtype(name, shape) {
        GgmlType::F32 => GgmlType::F32,
        _ if name.contains("embd")
            || name.ends_with("attn_v.weight")
            || name.ends_with("ffn_down.weight") =>
        {
            GgmlType::Q6_K
        }
        _ => GgmlType::Q4_K,
    }
}

/// Hyper-parameters of a Gemma 3n layout.
struct Gemma3n {
    layers: usize,
    d: u64,
    ff: u64,
    /// Query heads, KV heads, their width.
    heads: (u64, u64, u64),
    window: u32,
    /// Blocks at the end that read earlier blocks' caches.
    shared: usize,
    vocab: u64,
    context: u32,
}

/// Hyper-parameters of a Gemma 4 layout.
struct Gemma4 {
    /// Which blocks are local (the others global).
    local: Vec<bool>,
    d: u64,
    /// Each block's feed-forward width.
    ff: Vec<u64>,
    /// Query heads; the local blocks' KV heads and their width; the
    /// global blocks'.
    heads: (u64, (u64, u64), (u64, u64)),
    window: u32,
    /// Blocks at the end that read earlier blocks' caches.
    shared: usize,
    /// Width of each block's own input (0: none).
    per_layer: u64,
    /// Whether the global blocks' keys are their values (no `attn_v`).
    k_eq_v: bool,
    vocab: u64,
    context: u32,
}

/// Hyper-parameters of a Falcon-H1 layout.
struct FalconH1 {
    layers: u32,
    d: u64,
    ff: u64,
    /// Query heads, KV heads, their width.
    heads: (u64, u64, u64),
    mamba: MambaShape,
    vocab: u64,
    context: u32,
}

/// Hyper-parameters of a Qwen 3.5 layout: every fourth block attention.
struct Qwen35 {
    layers: u32,
    d: u64,
    ff: u64,
    /// Query heads, KV heads, their width.
    heads: (u64, u64, u64),
    /// Rotated values a head, and the M-RoPE sections of their pairs.
    rope: (u32, [u32; 3]),
    /// The delta nets' taps, heads' width, query/key heads, value heads.
    delta: (u64, u64, u64, u64),
    vocab: u64,
    context: u32,
}

/// Hyper-parameters of a llama-family or Gemma 3 layout.
struct Shape {
    arch: &'static str,
    layers: u32,
    d: u64,
    ff: u64,
    heads: u32,
    kv_heads: u32,
    head_dim: u64,
    vocab: u64,
}

impl SyntheticLayout {
    /// SmolLM2-135M-Instruct Q4_1: llama, 30 layers, 576 wide, 9 query and
    /// 3 KV heads, Q4_1 matrices, a Q8_0 tied embedding.
    pub fn smollm2_135m() -> Self {
        let s = Shape {
            arch: "llama",
            layers: 30,
            d: 576,
            ff: 1536,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            vocab: 49152,
        };
        let hp = vec![
            u32_kv("llama.attention.head_count", 9),
            u32_kv("llama.attention.head_count_kv", 3),
            f32_kv("llama.attention.layer_norm_rms_epsilon", 1e-5),
            u32_kv("llama.block_count", 30),
            u32_kv("llama.context_length", 8192),
            u32_kv("llama.embedding_length", 576),
            u32_kv("llama.feed_forward_length", 1536),
            u32_kv("llama.rope.dimension_count", 64),
            f32_kv("llama.rope.freq_base", 100_000.0),
            u32_kv("llama.vocab_size", 49152),
        ];
        Self::build(&s, hp, |name, _| match name {
            "token_embd.weight" => GgmlType::Q8_0,
            _ => GgmlType::Q4_1,
        })
    }

    /// Gemma 3 270M Q4_K_M: 18 layers, 640 wide, 4 query heads and 1 KV
    /// head of 256, a 262,144-token Q8_0 embedding, and llama.cpp's Q4_K_M
    /// mix (Q5_0, Q8_0, Q4_K and Q6_K).
    pub fn gemma3_270m() -> Self {
        let s = Shape {
            arch: "gemma3",
            layers: 18,
            d: 640,
            ff: 2048,
            heads: 4,
            kv_heads: 1,
            head_dim: 256,
            vocab: 262_144,
        };
        let hp = vec![
            u32_kv("gemma3.attention.head_count", 4),
            u32_kv("gemma3.attention.head_count_kv", 1),
            u32_kv("gemma3.attention.key_length", 256),
            f32_kv("gemma3.attention.layer_norm_rms_epsilon", 1e-6),
            u32_kv("gemma3.attention.sliding_window", 512),
            u32_kv("gemma3.attention.value_length", 256),
            u32_kv("gemma3.block_count", 18),
            u32_kv("gemma3.context_length", 32768),
            u32_kv("gemma3.embedding_length", 640),
            u32_kv("gemma3.feed_forward_length", 2048),
            f32_kv("gemma3.rope.freq_base", 1_000_000.0),
        ];
        // Q4_K_M keeps more bits in a third of the layers (the first two,
        // then every third, and the last few).
        let more_bits = |l: u32| matches!(l, 0 | 1 | 4 | 7 | 10 | 13 | 15 | 16 | 17);
        Self::build(&s, hp, move |name, layer| match (name, layer) {
            ("token_embd.weight", _) => GgmlType::Q8_0,
            ("attn_output.weight", _) => GgmlType::Q4_K,
            ("attn_v.weight", Some(l)) if more_bits(l) => GgmlType::Q8_0,
            ("ffn_down.weight", Some(l)) if more_bits(l) => GgmlType::Q6_K,
            ("ffn_down.weight", _) => GgmlType::Q4_K,
            _ => GgmlType::Q5_0,
        })
    }

    /// A two-layer model of `arch` (llama, mistral, mistral3, qwen2,
    /// qwen2moe, qwen3, qwen3moe, phi3, smollm3, granite, gemma2, gemma3,
    /// gpt-oss, olmo2, exaone4, ernie4_5, glm4, seed_oss, gemma,
    /// granitemoe, olmoe, glm4moe, ernie4_5-moe, minimax-m2, dots1,
    /// bailingmoe2, deepseek2, arcee, internlm2, minicpm, hunyuan-moe,
    /// hunyuan-dense, qwen3vl, qwen3vlmoe; llama4 and
    /// gemma3n of four blocks; gemma4 of seven (shaped as E2B: blocks'
    /// own inputs, shared caches, global blocks of wider heads); and, of
    /// three to
    /// five blocks, qwen35, qwen35moe, qwen3next, lfm2, lfm2moe,
    /// granitehybrid, falcon-h1, nemotron_h,
    /// nemotron_h_moe, most of whose blocks keep a recurrent state) small
    /// enough for unit tests: 64 wide, Q8_0 matrices, 300 tokens;
    /// `qwen2moe`'s, `qwen3moe`'s and `gpt-oss`'s blocks are 4 experts 32
    /// wide, 2 a token (and, for `qwen2moe`, a shared expert 64 wide);
    /// `smollm3` has 4 layers (the fourth without RoPE); `granite` has
    /// Granite 3's multipliers; `gpt-oss` has its biases, attention sinks,
    /// a window of 4 on its first layer and YaRN (factor 4 over 64 tokens);
    /// `mistral3` has Ministral 3's YaRN (factor 4 over 16 tokens, log
    /// multiplier 1) and attention temperature (0.1), which 16 tokens in
    /// start to scale the queries; `olmo2` has its own output matrix,
    /// as OLMo 2's files do; `glm4moe` and `ernie4_5-moe` have a dense
    /// first block, then 4 experts 32 wide (2 a token) chosen with a
    /// selection bias, and an ungated shared expert (32 and 64 wide),
    /// GLM-4.5 with its per-head Q/K norms, sigmoid routing and weights
    /// renormalised and scaled by 2.5; `minimax-m2` has experts 128 wide
    /// in both blocks, chosen alike, Q/K norms over all heads and half of
    /// each head rotated; `dots1` GLM-4.5's routing with per-head Q/K
    /// norms; `bailingmoe2` the same in two groups of two experts, one
    /// group a token, a shared expert 64 wide, and half of each head
    /// rotated.
    pub fn tiny(arch: &str) -> Result<Self> {
        if arch == "gpt-oss" {
            return Self::tiny_gpt_oss();
        }
        if arch == "deepseek2" {
            return Self::tiny_deepseek2(false);
        }
        if arch == "qwen35" {
            return Ok(Self::tiny_qwen35());
        }
        if arch == "lfm2" {
            return Ok(Self::tiny_lfm2());
        }
        if arch == "granitehybrid" {
            return Ok(Self::tiny_granite_hybrid());
        }
        if arch == "falcon-h1" {
            return Ok(Self::tiny_falcon_h1());
        }
        if arch == "llama4" {
            return Ok(Self::tiny_llama4());
        }
        if arch == "gemma3n" {
            return Ok(Self::tiny_gemma3n(4));
        }
        if arch == "gemma4" {
            return Ok(Self::tiny_gemma4(false));
        }
        if arch == "hunyuan-moe" {
            // The tiny Qwen 3's blocks (per-head Q/K norms; NeoX), 4 experts
            // as wide as its dense blocks would be (2 a token) and a shared
            // expert 64 wide, ungated.
            // (llama.cpp needs an expert width, and makes them as wide as
            // `feed_forward_length`.)
            let mut l = Self::tiny("qwen3")?
                .renamed(arch)
                .with_hparam(
                    "hunyuan-moe.expert_feed_forward_length",
                    MetadataValue::U32(128),
                )
                .with_experts(4, 2)?
                .with_shared_expert(64)?;
            l.tensors
                .retain(|t| !t.name.ends_with("ffn_gate_inp_shexp.weight"));
            return Ok(l.with_hparam(
                "hunyuan-moe.expert_shared_feed_forward_length",
                MetadataValue::U32(64),
            ));
        }
        if arch == "hunyuan-dense" {
            // The tiny Qwen 3's blocks (per-head Q/K norms; NeoX) with
            // NTK-aware scaling (alpha 4).
            return Ok(Self::tiny("qwen3")?
                .renamed(arch)
                .with_hparam("hunyuan-dense.rope.scaling.alpha", MetadataValue::F32(4.0)));
        }
        if let Some(text) = arch.strip_prefix("qwen3vl") {
            // Qwen 3's blocks (or Qwen 3 MoE's) with interleaved M-RoPE
            // sections over the 8 rotated pairs (as Qwen3-VL's 24, 20, 20
            // over 64).
            let base = format!("qwen3{text}");
            return Ok(Self::tiny(&base)?.renamed(arch).with_hparam(
                &format!("{arch}.rope.dimension_sections"),
                MetadataValue::Array(MetadataArray::I32(vec![3, 3, 2, 0])),
            ));
        }
        if arch == "deci" {
            return Ok(Self::tiny_deci());
        }
        if arch == "chatglm" {
            // The tiny GLM-4's blocks without their norms after each
            // part, q/k/v (and their biases) in one `attn_qkv`.
            let mut l = Self::tiny("glm4")?.renamed(arch).with_fused_qkv();
            l.tensors
                .retain(|t| !t.name.ends_with(".post_attention_norm.weight"));
            l.tensors
                .retain(|t| !t.name.ends_with(".post_ffw_norm.weight"));
            return Ok(l);
        }
        if arch == "maincoder" {
            // The tiny Qwen 3's blocks (per-head Q/K norms), normed after
            // RoPE's normal turns.
            return Ok(Self::tiny("qwen3")?.renamed(arch));
        }
        if arch == "apertus" {
            // The tiny Qwen 3's blocks (per-head Q/K norms, NeoX) without
            // a gate, xIELU a block with coefficients of its own, and an
            // output matrix.
            let mut l = Self::tiny("qwen3")?.renamed(arch);
            l.tensors.retain(|t| !t.name.ends_with(".ffn_gate.weight"));
            // (Its output matrix is its own, as llama.cpp needs.)
            let mut output = l.tensors[0].clone();
            output.name = "output.weight".into();
            l.tensors.push(output);
            let list = |v: [f32; 2]| MetadataValue::Array(MetadataArray::F32(v.to_vec()));
            return Ok(l
                .with_hparam("xielu.alpha_n", list([0.8, 1.5]))
                .with_hparam("xielu.alpha_p", list([0.8, 0.3]))
                .with_hparam("xielu.beta", list([0.5, 0.5]))
                .with_hparam("xielu.eps", list([-1e-6, -1e-6])));
        }
        if arch == "bitnet" {
            // Llama's blocks, 256 wide (a row a ternary block) with a
            // network 512 wide, with norms of the attention's output and of
            // the network's gated values (its embedding tied).
            let s = Shape {
                arch: "bitnet",
                layers: 2,
                d: 256,
                ff: 512,
                heads: 4,
                kv_heads: 2,
                head_dim: 64,
                vocab: 300,
            };
            let hp = vec![
                u32_kv("bitnet.attention.head_count", 4),
                u32_kv("bitnet.attention.head_count_kv", 2),
                f32_kv("bitnet.attention.layer_norm_rms_epsilon", 1e-5),
                u32_kv("bitnet.block_count", 2),
                u32_kv("bitnet.context_length", 256),
                u32_kv("bitnet.embedding_length", 256),
                u32_kv("bitnet.feed_forward_length", 512),
            ];
            let mut l = Self::build(&s, hp, |_, _| GgmlType::Q8_0);
            let mut norms = Vec::new();
            for t in &l.tensors {
                let (part, width) = match t.name.rsplit_once('.') {
                    Some((p, "weight")) if p.ends_with(".attn_output") => {
                        ("attn_sub_norm", t.shape[0])
                    }
                    Some((p, "weight")) if p.ends_with(".ffn_down") => ("ffn_sub_norm", t.shape[0]),
                    _ => continue,
                };
                let blk = t.name.split('.').take(2).collect::<Vec<_>>().join(".");
                norms.push(SyntheticTensor {
                    name: format!("{blk}.{part}.weight"),
                    shape: vec![width],
                    dtype: GgmlType::F32,
                });
            }
            l.tensors.extend(norms);
            return Ok(l);
        }
        if arch == "dbrx" {
            // The tiny llama's blocks with LayerNorms (no biases), q/k/v in
            // one `attn_qkv` clamped to 0.5, the network's norm named
            // `attn_output_norm`, 4 experts (2 a token) in every block, and an
            // output matrix of its own.
            let k = |n: &str| format!("dbrx.{n}");
            let mut l = Self::tiny("llama")?.renamed(arch).with_fused_qkv();
            l.hparams
                .retain(|(key, _)| *key != k("attention.layer_norm_rms_epsilon"));
            let mut l = l
                .with_hparam(&k("attention.layer_norm_epsilon"), MetadataValue::F32(1e-5))
                .with_hparam(&k("attention.clamp_kqv"), MetadataValue::F32(0.5))
                .with_experts(4, 2)?;
            for t in &mut l.tensors {
                if let Some(blk) = t.name.strip_suffix(".ffn_norm.weight").map(str::to_string) {
                    t.name = format!("{blk}.attn_output_norm.weight");
                }
            }
            let mut output = l.tensors[0].clone();
            output.name = "output.weight".into();
            l.tensors.push(output);
            return Ok(l);
        }
        if arch == "grok" {
            return Self::tiny_grok(false);
        }
        if arch == "deepseek" {
            // The tiny llama's blocks, the first dense, then 4 experts 32
            // wide (2 a token), their softmax weights scaled by 2 (not
            // renormalised), beside one shared expert as wide.
            let k = |n: &str| format!("deepseek.{n}");
            let mut l = Self::tiny("llama")?
                .renamed(arch)
                .with_hparam(&k("leading_dense_block_count"), MetadataValue::U32(1))
                .with_hparam(&k("expert_feed_forward_length"), MetadataValue::U32(32))
                .with_hparam(&k("expert_shared_count"), MetadataValue::U32(1))
                .with_hparam(&k("expert_weights_scale"), MetadataValue::F32(2.0))
                .with_selected_experts(Some(32))?;
            l.tensors.retain(|t| !t.name.ends_with(".exp_probs_b.bias"));
            return Ok(l);
        }
        if arch == "qwen" {
            // The tiny llama's blocks, as many KV heads as query heads, q/k/v
            // and their biases in one `attn_qkv`, `feed_forward_length`
            // twice the network's width (Qwen 1's files count both halves).
            let l = Self::tiny("llama")?.renamed(arch);
            let l = l.with_hparam("qwen.attention.head_count_kv", MetadataValue::U32(4));
            let mut l = l.with_hparam("qwen.feed_forward_length", MetadataValue::U32(256));
            l.tensors.retain(|t| {
                !t.name.ends_with(".attn_k.weight") && !t.name.ends_with(".attn_v.weight")
            });
            let mut biases = Vec::new();
            for t in &mut l.tensors {
                if let Some(blk) = t.name.strip_suffix(".attn_q.weight").map(str::to_string) {
                    t.name = format!("{blk}.attn_qkv.weight");
                    t.shape[1] *= 3;
                    biases.push(SyntheticTensor {
                        name: format!("{blk}.attn_qkv.bias"),
                        shape: vec![t.shape[1]],
                        dtype: GgmlType::F32,
                    });
                }
            }
            l.tensors.extend(biases);
            // (Its output matrix is its own, as llama.cpp needs.)
            let mut output = l.tensors[0].clone();
            output.name = "output.weight".into();
            l.tensors.push(output);
            return Ok(l);
        }
        if arch == "refact" {
            // The tiny llama's blocks (ALiBi instead of RoPE).
            return Ok(Self::tiny("llama")?.renamed(arch));
        }
        if ["xverse", "plamo", "olmo", "baichuan"].contains(&arch) {
            return Self::tiny_llama_like(arch);
        }
        if arch == "minicpm" {
            // The tiny llama's blocks; MiniCPM's multipliers by default.
            return Ok(Self::tiny("llama")?.renamed(arch));
        }
        if arch == "internlm2" {
            // The tiny llama's blocks with their own output matrix, as
            // InternLM 2's files have.
            let mut l = Self::tiny("llama")?.renamed(arch);
            let mut output = l.tensors[0].clone();
            output.name = "output.weight".into();
            l.tensors.push(output);
            return Ok(l);
        }
        if arch == "arcee" {
            // The tiny llama's blocks without a gate.
            let mut l = Self::tiny("llama")?.renamed(arch);
            l.tensors.retain(|t| !t.name.ends_with(".ffn_gate.weight"));
            return Ok(l);
        }
        if arch == "nemotron_h" {
            return Ok(Self::tiny_nemotron_h());
        }
        if arch == "mamba2" {
            return Ok(Self::tiny_mamba2());
        }
        if arch == "mamba" {
            return Ok(Self::tiny_mamba());
        }
        if Architecture::from_name(arch).is_ok_and(Architecture::bert_blocks) {
            return Ok(Self::tiny_encoder(arch));
        }
        if arch == "llama-embed" {
            // (Bidirectional, as llama-embed-nemotron's file says.)
            return Ok(Self::tiny("llama")?
                .renamed(arch)
                .with_hparam("llama-embed.attention.causal", MetadataValue::Bool(false)));
        }
        if arch == "neo-bert" {
            return Self::tiny_neo_bert();
        }
        if arch == "eurobert" {
            // (Bidirectional, as its converter writes it.)
            return Ok(Self::tiny("llama")?
                .renamed(arch)
                .with_hparam("eurobert.attention.causal", MetadataValue::Bool(false)));
        }
        if arch == "modern-bert" {
            return Ok(Self::tiny_modern_bert());
        }
        if arch == "gemma-embedding" {
            return Self::tiny_gemma_embedding();
        }
        // (OLMo's, without norm weights, is the tiny llama's.)
        let known = Architecture::from_name(arch).ok();
        if known.is_some_and(|a| a.layer_norms() && a != Architecture::Olmo) {
            return Self::tiny_layer_norm(arch);
        }
        if arch == "nemotron_h_moe" {
            // Nemotron-H's blocks, the feed-forward ones 4 experts 32 wide
            // (2 a token) of squared ReLUs, chosen by sigmoid scores with a
            // selection bias, renormalised and scaled by 2.5, and a shared
            // expert 64 wide.
            let mut l = Self::tiny_nemotron_h().renamed(arch);
            let k = |n: &str| format!("nemotron_h_moe.{n}");
            let mut tensors = Vec::new();
            for t in l.tensors {
                let Some(blk) = t.name.strip_suffix(".ffn_up.weight") else {
                    if !t.name.ends_with(".ffn_down.weight") {
                        tensors.push(t);
                    }
                    continue;
                };
                let (d, dt) = (t.shape[0], t.dtype);
                let mut add = |n: &str, shape: Vec<u64>, dtype| {
                    tensors.push(SyntheticTensor {
                        name: format!("{blk}.{n}"),
                        shape,
                        dtype,
                    })
                };
                add("ffn_gate_inp.weight", vec![d, 4], dt);
                add("exp_probs_b.bias", vec![4], GgmlType::F32);
                add("ffn_up_exps.weight", vec![d, 32, 4], dt);
                add("ffn_down_exps.weight", vec![32, d, 4], dt);
                add("ffn_up_shexp.weight", vec![d, 64], dt);
                add("ffn_down_shexp.weight", vec![64, d], dt);
            }
            l.tensors = tensors;
            return Ok(l
                .with_hparam(&k("expert_count"), MetadataValue::U32(4))
                .with_hparam(&k("expert_used_count"), MetadataValue::U32(2))
                .with_hparam(&k("expert_feed_forward_length"), MetadataValue::U32(32))
                .with_hparam(
                    &k("expert_shared_feed_forward_length"),
                    MetadataValue::U32(64),
                )
                .with_hparam(&k("expert_weights_norm"), MetadataValue::Bool(true))
                .with_hparam(&k("expert_weights_scale"), MetadataValue::F32(2.5)));
        }
        if arch == "lfm2moe" {
            // LFM2's blocks, the first dense, then 4 experts 32 wide (2 a
            // token) chosen by sigmoid scores with a selection bias.
            let l = Self::tiny_lfm2().renamed(arch);
            let k = |n: &str| format!("lfm2moe.{n}");
            return l
                .with_hparam(&k("leading_dense_block_count"), MetadataValue::U32(1))
                .with_hparam(&k("expert_feed_forward_length"), MetadataValue::U32(32))
                .with_hparam(&k("expert_gating_func"), MetadataValue::U32(2))
                .with_selected_experts(None);
        }
        if arch == "qwen35moe" {
            // Qwen 3.5's blocks with 4 experts 32 wide (2 a token) and a
            // gated shared expert 64 wide.
            let l = Self::tiny_qwen35().renamed(arch);
            return l
                .with_hparam(
                    "qwen35moe.expert_feed_forward_length",
                    MetadataValue::U32(32),
                )
                .with_experts(4, 2)?
                .with_shared_expert(64);
        }
        if arch == "qwen3next" {
            // Qwen 3.5 MoE's blocks without M-RoPE sections, each delta
            // net's rates and decays in one product (each query/key head's
            // two value heads' rates, then their decays).
            let mut l = Self::tiny("qwen35moe")?.renamed(arch);
            l.hparams
                .retain(|(k, _)| k != "qwen3next.rope.dimension_sections");
            l.tensors.retain(|t| !t.name.ends_with(".ssm_alpha.weight"));
            for t in &mut l.tensors {
                if let Some(blk) = t.name.strip_suffix(".ssm_beta.weight") {
                    t.name = format!("{blk}.ssm_ba.weight");
                    t.shape[1] *= 2;
                }
            }
            return Ok(l);
        }
        if let Some(dense) = arch
            .strip_suffix("moe")
            .filter(|a| ["qwen2", "qwen3", "granite"].contains(a))
        {
            let l = Self::tiny(dense)?.renamed(arch);
            // (Granite MoE's experts are as wide as its dense blocks.)
            let l = match dense {
                "granite" => l,
                _ => l.with_hparam(
                    &format!("{arch}.expert_feed_forward_length"),
                    MetadataValue::U32(32),
                ),
            }
            .with_experts(4, 2)?;
            if arch != "qwen2moe" {
                return Ok(l);
            }
            // Qwen 2 MoE's output matrix is its own (llama.cpp needs it).
            let mut l = l.with_shared_expert(64)?;
            let mut output = l.tensors[0].clone();
            output.name = "output.weight".into();
            l.tensors.push(output);
            return Ok(l);
        }
        let gemma = arch == "gemma3" || arch == "gemma2";
        // Seed-OSS's heads are wider than its width over their number.
        let wide_heads = gemma || arch == "seed_oss";
        let s = Shape {
            arch: match arch {
                "llama" => "llama",
                "mistral" => "mistral",
                "mistral3" => "mistral3",
                "olmo2" => "olmo2",
                "olmoe" => "olmoe",
                "glm4moe" => "glm4moe",
                "ernie4_5-moe" => "ernie4_5-moe",
                "minimax-m2" => "minimax-m2",
                "dots1" => "dots1",
                "bailingmoe2" => "bailingmoe2",
                "exaone4" => "exaone4",
                "ernie4_5" => "ernie4_5",
                "exaone" => "exaone",
                "glm4" => "glm4",
                "seed_oss" => "seed_oss",
                "gemma" => "gemma",
                "qwen2" => "qwen2",
                "qwen3" => "qwen3",
                "phi3" => "phi3",
                "smollm3" => "smollm3",
                "granite" => "granite",
                "gemma2" => "gemma2",
                "gemma3" => "gemma3",
                other => return Err(Error::UnknownArchitecture(other.to_string())),
            },
            // SmolLM3's fourth layer is the one without RoPE.
            layers: if arch == "smollm3" { 4 } else { 2 },
            d: 64,
            ff: 128,
            heads: 4,
            // (OLMoE's and dots.llm1's heads share no keys.)
            kv_heads: match arch {
                _ if gemma => 1,
                "olmoe" | "dots1" => 4,
                _ => 2,
            },
            head_dim: if wide_heads { 32 } else { 16 },
            vocab: 300,
        };
        let k = |n: &str| format!("{arch}.{n}");
        let mut hp = vec![
            (k("attention.head_count"), MetadataValue::U32(s.heads)),
            (k("attention.head_count_kv"), MetadataValue::U32(s.kv_heads)),
            (
                k("attention.layer_norm_rms_epsilon"),
                MetadataValue::F32(1e-5),
            ),
            (k("block_count"), MetadataValue::U32(s.layers)),
            (k("context_length"), MetadataValue::U32(256)),
            (k("embedding_length"), MetadataValue::U32(s.d as u32)),
            (k("feed_forward_length"), MetadataValue::U32(s.ff as u32)),
        ];
        if wide_heads {
            hp.push((
                k("attention.key_length"),
                MetadataValue::U32(s.head_dim as u32),
            ));
            hp.push((
                k("attention.value_length"),
                MetadataValue::U32(s.head_dim as u32),
            ));
        }
        if gemma {
            hp.push((k("attention.sliding_window"), MetadataValue::U32(4)));
        }
        if ["glm4", "glm4moe", "minimax-m2", "bailingmoe2"].contains(&arch) {
            // Half of each head rotated, as GLM-4's, GLM-4.5's,
            // MiniMax-M2's and Ling 2.0's.
            hp.push((k("rope.dimension_count"), MetadataValue::U32(8)));
        }
        let lead = ["glm4moe", "ernie4_5-moe", "dots1", "bailingmoe2"].contains(&arch);
        if lead {
            // A dense first block, experts 32 wide after it.
            hp.push((k("leading_dense_block_count"), MetadataValue::U32(1)));
            hp.push((k("expert_feed_forward_length"), MetadataValue::U32(32)));
        }
        if (lead && arch != "ernie4_5-moe") || arch == "minimax-m2" {
            // Sigmoid routing.
            hp.push((k("expert_gating_func"), MetadataValue::U32(2)));
        }
        if arch == "bailingmoe2" {
            // Two groups of two experts, one group a token.
            hp.push((k("expert_group_count"), MetadataValue::U32(2)));
            hp.push((k("expert_group_used_count"), MetadataValue::U32(1)));
        }
        if ["glm4moe", "dots1", "bailingmoe2"].contains(&arch) {
            // Weights renormalised and scaled by 2.5, as GLM-4.5's.
            hp.push((k("expert_shared_count"), MetadataValue::U32(1)));
            hp.push((k("expert_weights_norm"), MetadataValue::Bool(true)));
            hp.push((k("expert_weights_scale"), MetadataValue::F32(2.5)));
        }
        if arch == "ernie4_5-moe" {
            hp.push((k("interleave_moe_layer_step"), MetadataValue::U32(1)));
        }
        if arch == "minimax-m2" {
            // (Which llama.cpp needs and does not use.)
            hp.push((
                k("expert_feed_forward_length"),
                MetadataValue::U32(s.ff as u32),
            ));
        }
        if arch == "mistral3" {
            // Ministral 3's, over a shorter original context.
            hp.push((k("rope.scaling.type"), MetadataValue::String("yarn".into())));
            hp.push((
                k("rope.scaling.original_context_length"),
                MetadataValue::U32(16),
            ));
            for (n, v) in [
                ("attention.temperature_scale", 0.1),
                ("rope.scaling.factor", 4.0),
                ("rope.scaling.yarn_beta_fast", 32.0),
                ("rope.scaling.yarn_beta_slow", 1.0),
                ("rope.scaling.yarn_log_multiplier", 1.0),
            ] {
                hp.push((k(n), MetadataValue::F32(v)));
            }
        }
        if arch == "granite" {
            // Granite 3's multipliers.
            for (n, v) in [
                ("attention.scale", 0.0078125),
                ("embedding_scale", 12.0),
                ("logit_scale", 8.0),
                ("residual_scale", 0.22),
            ] {
                hp.push((k(n), MetadataValue::F32(v)));
            }
        }
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let mut l = Self::build(&s, hp, |_, _| GgmlType::Q8_0);
        if ["olmo2", "olmoe", "minimax-m2", "dots1", "bailingmoe2"].contains(&arch) {
            let mut output = l.tensors[0].clone();
            output.name = "output.weight".into();
            l.tensors.push(output);
        }
        match arch {
            // OLMoE's experts are as wide as the dense blocks would be.
            "olmoe" => l.with_experts(4, 2),
            // A shared expert as wide as one (GLM-4.5's count of 1), or 64
            // (ERNIE 4.5's width).
            "glm4moe" => l.with_selected_experts(Some(32)),
            "ernie4_5-moe" => l.with_selected_experts(Some(64)),
            // MiniMax-M2's experts are as wide as `feed_forward_length`.
            "minimax-m2" => l.with_selected_experts(None),
            "dots1" => l.with_selected_experts(Some(32)),
            // (Ling's shared expert is as wide as the file says.)
            "bailingmoe2" => l.with_selected_experts(Some(64)),
            _ => Ok(l),
        }
    }

    /// The same layout under architecture `arch`: its hyper-parameters'
    /// prefix too.
    fn renamed(mut self, arch: &str) -> Self {
        let old = format!("{}.", self.arch);
        self.hparams = self
            .hparams
            .into_iter()
            .map(|(k, v)| (k.replacen(&old, &format!("{arch}."), 1), v))
            .collect();
        self.arch = arch.into();
        self
    }

    /// The layout with 4 experts (2 a token) in every block, or every
    /// block but the first where the layout has `leading_dense_block_count`,
    /// each with a selection bias (`exp_probs_b.bias`) and, if `shared`,
    /// an ungated shared expert that wide: GLM-4.5's, ERNIE 4.5's and
    /// MiniMax-M2's blocks.
    fn with_selected_experts(self, shared: Option<u64>) -> Result<Self> {
        let arch = self.arch.clone();
        let dense_first = self.hparam_u64("leading_dense_block_count") == Some(1);
        let dense: Vec<SyntheticTensor> = self
            .tensors
            .iter()
            .filter(|t| dense_first && t.name.starts_with("blk.0.ffn_"))
            .cloned()
            .collect();
        let mut l = self.with_experts(4, 2)?;
        if let Some(ff) = shared {
            l = l.with_shared_expert(ff)?;
        }
        // (GLM-4.5, dots.llm1 and DeepSeek give a count of shared experts
        // instead.)
        if ["glm4moe", "dots1", "deepseek2", "deepseek"].contains(&arch.as_str()) {
            l.hparams
                .retain(|(k, _)| !k.ends_with(".expert_shared_feed_forward_length"));
        }
        let mut tensors = Vec::with_capacity(l.tensors.len());
        for t in l.tensors {
            let name = t.name.clone();
            if dense_first && name.starts_with("blk.0.ffn_") {
                // The first block keeps its dense matrices.
                if name.ends_with("ffn_down_exps.weight") {
                    tensors.extend(dense.iter().cloned());
                }
                continue;
            }
            if name.ends_with("ffn_gate_inp_shexp.weight") {
                continue;
            }
            tensors.push(t);
            if let Some(blk) = name.strip_suffix(".ffn_gate_inp.weight") {
                tensors.push(SyntheticTensor {
                    name: format!("{blk}.exp_probs_b.bias"),
                    shape: vec![4],
                    dtype: GgmlType::F32,
                });
            }
        }
        l.tensors = tensors;
        Ok(l)
    }

    /// The layout with query, key and value biases on every block: one
    /// (`attn_qkv.bias`) for a fused matrix, else one each.
    fn with_qkv_biases(mut self) -> Self {
        let mut biases = Vec::new();
        for t in &self.tensors {
            for m in ["attn_qkv", "attn_q", "attn_k", "attn_v"] {
                if let Some(blk) = t.name.strip_suffix(&format!(".{m}.weight")) {
                    biases.push(SyntheticTensor {
                        name: format!("{blk}.{m}.bias"),
                        shape: vec![t.shape[1]],
                        dtype: GgmlType::F32,
                    });
                }
            }
        }
        self.tensors.extend(biases);
        self
    }

    /// The layout with a bias on every block's attention output
    /// (`attn_output.bias`).
    fn with_output_bias(mut self) -> Self {
        let d = self
            .tensors
            .iter()
            .find(|t| t.name == "output_norm.weight")
            .map_or(0, |t| t.shape[0]);
        let layers: Vec<String> = self
            .tensors
            .iter()
            .filter_map(|t| {
                t.name
                    .strip_suffix(".attn_output.weight")
                    .map(str::to_string)
            })
            .collect();
        for blk in layers {
            self.tensors.push(SyntheticTensor {
                name: format!("{blk}.attn_output.bias"),
                shape: vec![d],
                dtype: GgmlType::F32,
            });
        }
        self
    }

    /// The tiny llama's shape with LayerNorms: StarCoder 2's blocks
    /// (biases on every norm and product, GELUs without a gate), Phi 2's
    /// (the same with query, key and value in one matrix, no feed-forward
    /// norm, half of each head rotated, an output matrix with a bias),
    /// GPT-NeoX's (Phi 2's with a feed-forward norm and a quarter of each
    /// head rotated, the network beside the attention), StableLM's
    /// (StarCoder 2's norms and query, key and value biases, SwiGLU, a
    /// quarter of each head rotated, an output matrix), Command R's (norms
    /// without biases, no feed-forward norm, SwiGLU, logits times 0.0625),
    /// Command R7B's (Command R's with a window of 4 on every other block,
    /// the others global without RoPE), Falcon 7B's (Phi 2's norms and
    /// fused matrix, no biases but the norms', tied output) and GPT-2's and
    /// StarCoder's (GPT-NeoX's blocks after each other, no RoPE, learned
    /// positions for the 256 of the context, tied output), Orion's
    /// (StableLM's without its biases), Nemotron's (StarCoder 2's with
    /// squared ReLUs, half of each head rotated, an output matrix) and
    /// CodeShell's (StarCoder 2's with an output matrix), BLOOM's (GPT-2's
    /// with ALiBi for the learned positions and a norm of the embeddings)
    /// and MPT's (BLOOM's without biases or the embeddings' norm).
    fn tiny_layer_norm(arch: &str) -> Result<Self> {
        let mut l = Self::tiny("llama")?.renamed(arch);
        let k = |n: &str| format!("{arch}.{n}");
        let eps = k("attention.layer_norm_rms_epsilon");
        l.hparams.retain(|(key, _)| *key != eps);
        let is = |names: &[&str]| names.contains(&arch);
        let cohere = is(&["command-r", "cohere2"]);
        let gpt2 = is(&["gpt2", "starcoder"]);
        let falcon = arch == "falcon";
        // (Jais's SwiGLU has biases on its three products.)
        let jais = arch == "jais";
        // (Nemotron's squared ReLUs have no gate either.)
        let gelu = Architecture::from_name(arch).is_ok_and(Architecture::ungated_ffn);
        let fused = gpt2 || is(&["phi2", "gptneox", "falcon", "bloom", "mpt", "jais"]);
        // (MPT 7B's norms have no biases, as Command R's.)
        let norm_biases = !cohere && arch != "mpt";
        let shared_norm = cohere || is(&["phi2", "falcon"]);
        // Biases on the products (but Falcon's, Orion's, MPT's and Command
        // R's none).
        let biases = !cohere && !falcon && !is(&["orion", "mpt"]);
        let f32_tensor = |name: String, shape: Vec<u64>| SyntheticTensor {
            name,
            shape,
            dtype: GgmlType::F32,
        };
        let mut tensors = Vec::new();
        for t in std::mem::take(&mut l.tensors) {
            let Some((blk, part)) = t
                .name
                .strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
                .map(|(b, p)| (format!("blk.{b}"), p.to_string()))
            else {
                let d = t.shape[0];
                let name = t.name.clone();
                tensors.push(t);
                if name == "output_norm.weight" && norm_biases {
                    tensors.push(f32_tensor("output_norm.bias".into(), vec![d]));
                }
                if name == "token_embd.weight" && arch == "bloom" {
                    tensors.push(f32_tensor("token_embd_norm.weight".into(), vec![d]));
                    tensors.push(f32_tensor("token_embd_norm.bias".into(), vec![d]));
                }
                if name == "token_embd.weight" && gpt2 {
                    // (Q8_0 as the matrices, its rows a position.)
                    tensors.push(SyntheticTensor {
                        name: "position_embd.weight".into(),
                        shape: vec![d, 256],
                        dtype: GgmlType::Q8_0,
                    });
                }
                continue;
            };
            let d = t.shape[0];
            let bias = |rows| {
                let name = part.replace(".weight", ".bias");
                f32_tensor(format!("{blk}.{name}"), vec![rows])
            };
            match part.as_str() {
                "ffn_norm.weight" if shared_norm => {}
                "attn_norm.weight" | "ffn_norm.weight" => {
                    tensors.push(t);
                    if norm_biases {
                        tensors.push(bias(d));
                    }
                }
                "attn_q.weight" if fused => {
                    let rows = t.shape[1] * 2;
                    tensors.push(SyntheticTensor {
                        name: format!("{blk}.attn_qkv.weight"),
                        shape: vec![d, rows],
                        dtype: t.dtype,
                    });
                    if biases {
                        tensors.push(f32_tensor(format!("{blk}.attn_qkv.bias"), vec![rows]));
                    }
                }
                "attn_k.weight" | "attn_v.weight" if fused => {}
                "ffn_gate.weight" if gelu => {}
                "attn_q.weight" | "attn_k.weight" | "attn_v.weight" => {
                    let rows = t.shape[1];
                    tensors.push(t);
                    if biases {
                        tensors.push(bias(rows));
                    }
                }
                "attn_output.weight" | "ffn_up.weight" | "ffn_down.weight" | "ffn_gate.weight"
                    if (gelu || jais) && biases =>
                {
                    let rows = t.shape[1];
                    tensors.push(t);
                    tensors.push(bias(rows));
                }
                _ => tensors.push(t),
            }
        }
        l.tensors = tensors;
        if is(&[
            "phi2",
            "gptneox",
            "stablelm",
            "orion",
            "nemotron",
            "codeshell",
            "jais",
        ]) {
            // Their own output matrix (Phi 2's with a bias).
            let mut output = l.tensors[0].clone();
            output.name = "output.weight".into();
            let vocab = output.shape[1];
            l.tensors.push(output);
            if arch == "phi2" {
                l.tensors
                    .push(f32_tensor("output.bias".into(), vec![vocab]));
            }
        }
        let mut l = l.with_hparam(&k("attention.layer_norm_epsilon"), MetadataValue::F32(1e-5));
        match arch {
            "phi2" => l = l.with_hparam(&k("rope.dimension_count"), MetadataValue::U32(8)),
            "gptneox" | "stablelm" => {
                l = l.with_hparam(&k("rope.dimension_count"), MetadataValue::U32(4))
            }
            "nemotron" => l = l.with_hparam(&k("rope.dimension_count"), MetadataValue::U32(8)),
            _ => {}
        }
        if arch == "gptneox" {
            l = l.with_hparam(&k("use_parallel_residual"), MetadataValue::Bool(true));
        }
        if arch == "mpt" || jais {
            l = l.with_hparam(&k("attention.max_alibi_bias"), MetadataValue::F32(8.0));
        }
        if cohere {
            l = l.with_hparam(&k("logit_scale"), MetadataValue::F32(0.0625));
        }
        if arch == "cohere2" {
            // (Every second block global here, so that one of two is.)
            l = l
                .with_hparam(&k("attention.sliding_window"), MetadataValue::U32(4))
                .with_hparam(
                    &k("attention.sliding_window_pattern"),
                    MetadataValue::U32(2),
                );
        }
        Ok(l)
    }

    /// The tiny llama's blocks as XVERSE's (an output matrix of its own),
    /// PLaMo's (the same, no feed-forward norm: the network beside the
    /// attention), OLMo's (no norm weights: LayerNorms without them, tied
    /// output) and Baichuan 7B's (XVERSE's in 32 blocks, with RoPE).
    fn tiny_llama_like(arch: &str) -> Result<Self> {
        let mut l = Self::tiny("llama")?.renamed(arch);
        if arch == "baichuan" {
            l = l.grown(32);
        }
        match arch {
            "plamo" => l.tensors.retain(|t| !t.name.ends_with(".ffn_norm.weight")),
            "olmo" => {
                l.tensors.retain(|t| !t.name.ends_with("norm.weight"));
                let eps = format!("{arch}.attention.layer_norm_rms_epsilon");
                l.hparams.retain(|(k, _)| *k != eps);
                l = l.with_hparam(
                    &format!("{arch}.attention.layer_norm_epsilon"),
                    MetadataValue::F32(1e-5),
                );
            }
            _ => {}
        }
        if arch != "olmo" {
            let mut output = l.tensors[0].clone();
            output.name = "output.weight".into();
            l.tensors.push(output);
        }
        Ok(l)
    }

    /// The tiny EXAONE 4 with 64 layers, as its 32B has: llama.cpp gives
    /// that one (alone) a window, on three layers of four, which alone
    /// rotate; a window of 4 here.
    /// The tiny llama's blocks (NeoX) as Grok's: 4 experts (2 a token) in
    /// every block, GELU-gated, and norms after the attention
    /// (`attn_output_norm`) and the feed-forward part
    /// (`layer_output_norm`); the attention's and embedding's scales, the
    /// soft-cap and the logits' scale left to llama.cpp's defaults. With
    /// `dense`, Grok-2's: the experts 32 wide beside the block's own dense
    /// network (`feed_forward_length` wide).
    fn tiny_grok(dense: bool) -> Result<Self> {
        let mut l = Self::tiny("llama")?.renamed("grok");
        let networks: Vec<SyntheticTensor> = match dense {
            true => {
                l = l.with_hparam("grok.expert_feed_forward_length", MetadataValue::U32(32));
                let network = |t: &&SyntheticTensor| {
                    t.name.contains(".ffn_") && !t.name.contains(".ffn_norm.")
                };
                l.tensors.iter().filter(network).cloned().collect()
            }
            false => Vec::new(),
        };
        let mut l = l.with_experts(4, 2)?;
        l.tensors.extend(networks);
        let mut norms = Vec::new();
        for t in &l.tensors {
            if let Some(blk) = t.name.strip_suffix(".attn_norm.weight") {
                for part in ["attn_output_norm", "layer_output_norm"] {
                    norms.push(SyntheticTensor {
                        name: format!("{blk}.{part}.weight"),
                        ..t.clone()
                    });
                }
            }
        }
        l.tensors.extend(norms);
        Ok(l)
    }

    fn tiny_exaone4_32b() -> Result<Self> {
        let two = Self::tiny("exaone4")?;
        let mut tensors: Vec<SyntheticTensor> = two
            .tensors
            .iter()
            .filter(|t| !t.name.starts_with("blk."))
            .cloned()
            .collect();
        for l in 0..64 {
            tensors.extend(two.tensors.iter().filter_map(|t| {
                let rest = t.name.strip_prefix("blk.0.")?;
                Some(SyntheticTensor {
                    name: format!("blk.{l}.{rest}"),
                    ..t.clone()
                })
            }));
        }
        Ok(Self { tensors, ..two }
            .with_hparam("exaone4.block_count", MetadataValue::U32(64))
            .with_hparam("exaone4.attention.sliding_window", MetadataValue::U32(4)))
    }

    /// The tiny OLMo 2 as OLMo 3 is made: a window of 4 on its first
    /// layer (a flag a layer), YaRN (factor 4 over 64 tokens) on the
    /// global one, and a local base in the file (which llama.cpp reads
    /// and does not use).
    fn tiny_olmo3() -> Result<Self> {
        Ok(Self::tiny("olmo2")?
            .with_hparam("olmo2.attention.sliding_window", MetadataValue::U32(4))
            .with_hparam(
                "olmo2.attention.sliding_window_pattern",
                MetadataValue::Array(MetadataArray::Bool(vec![true, false])),
            )
            .with_hparam("olmo2.rope.freq_base_swa", MetadataValue::F32(5000.0))
            .with_hparam(
                "olmo2.rope.scaling.type",
                MetadataValue::String("yarn".into()),
            )
            .with_hparam("olmo2.rope.scaling.factor", MetadataValue::F32(4.0))
            .with_hparam(
                "olmo2.rope.scaling.original_context_length",
                MetadataValue::U32(64),
            ))
    }

    /// The tiny gpt-oss: the tiny llama's shape with gpt-oss's tensors
    /// and hyper-parameters.
    fn tiny_gpt_oss() -> Result<Self> {
        let s = Shape {
            arch: "gpt-oss",
            layers: 2,
            d: 64,
            ff: 32,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            vocab: 300,
        };
        let shape = GptOss {
            experts: (4, 2),
            window: 4,
            context: 256,
            yarn: (4.0, 64),
        };
        Self::gpt_oss(&s, &shape, |_, _| GgmlType::Q8_0)
    }

    /// A two-layer DeepSeek V3 (deepseek2): latent attention (4 heads, a
    /// latent 64 wide, 8 rotated values, unrotated queries 32 wide, outputs
    /// 16 wide; the queries through a rank of 32, or, `lite`, V2-Lite's one
    /// product), a dense first block, then 4 experts 32 wide chosen by
    /// sigmoid scores plus a selection bias from the better of two groups,
    /// renormalised and scaled by 2.5, and a shared expert.
    fn tiny_deepseek2(lite: bool) -> Result<Self> {
        let (d, heads, kv_lora, rope, nope, v_dim, q_lora) =
            (64u64, 4u64, 64u64, 8u64, 32u64, 16u64, 32u64);
        let k = |n: &str| format!("deepseek2.{n}");
        let mut hp = vec![
            u32_kv(&k("attention.head_count"), heads as u32),
            u32_kv(&k("attention.head_count_kv"), 1),
            f32_kv(&k("attention.layer_norm_rms_epsilon"), 1e-6),
            u32_kv(&k("attention.key_length"), (kv_lora + rope) as u32),
            u32_kv(&k("attention.value_length"), kv_lora as u32),
            u32_kv(&k("attention.key_length_mla"), (nope + rope) as u32),
            u32_kv(&k("attention.value_length_mla"), v_dim as u32),
            u32_kv(&k("attention.kv_lora_rank"), kv_lora as u32),
            u32_kv(
                &k("attention.q_lora_rank"),
                if lite { 0 } else { q_lora as u32 },
            ),
            u32_kv(&k("block_count"), 2),
            u32_kv(&k("context_length"), 256),
            u32_kv(&k("embedding_length"), d as u32),
            u32_kv(&k("feed_forward_length"), 128),
            u32_kv(&k("rope.dimension_count"), rope as u32),
            u32_kv(&k("leading_dense_block_count"), 1),
            u32_kv(&k("expert_feed_forward_length"), 32),
            u32_kv(&k("expert_shared_count"), 1),
            u32_kv(&k("expert_gating_func"), 2),
            u32_kv(&k("expert_group_count"), 2),
            u32_kv(&k("expert_group_used_count"), 1),
            f32_kv(&k("expert_weights_scale"), 2.5),
            (k("expert_weights_norm"), MetadataValue::Bool(true)),
        ];
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors = Vec::new();
        let mut add = |name: String, shape: Vec<u64>| {
            let dtype = if shape.len() == 1 {
                GgmlType::F32
            } else {
                GgmlType::Q8_0
            };
            tensors.push(SyntheticTensor { name, shape, dtype });
        };
        add("token_embd.weight".into(), vec![d, 300]);
        for l in 0..2 {
            let mut blk = |n: &str, shape: Vec<u64>| add(format!("blk.{l}.{n}"), shape);
            blk("attn_norm.weight", vec![d]);
            let q_out = heads * (nope + rope);
            if lite {
                blk("attn_q.weight", vec![d, q_out]);
            } else {
                blk("attn_q_a.weight", vec![d, q_lora]);
                blk("attn_q_a_norm.weight", vec![q_lora]);
                blk("attn_q_b.weight", vec![q_lora, q_out]);
            }
            blk("attn_kv_a_mqa.weight", vec![d, kv_lora + rope]);
            blk("attn_kv_a_norm.weight", vec![kv_lora]);
            blk("attn_k_b.weight", vec![nope, kv_lora, heads]);
            blk("attn_v_b.weight", vec![kv_lora, v_dim, heads]);
            blk("attn_output.weight", vec![heads * v_dim, d]);
            blk("ffn_norm.weight", vec![d]);
            blk("ffn_gate.weight", vec![d, 128]);
            blk("ffn_up.weight", vec![d, 128]);
            blk("ffn_down.weight", vec![128, d]);
        }
        add("output_norm.weight".into(), vec![d]);
        add("output.weight".into(), vec![d, 300]);
        Self {
            arch: "deepseek2".into(),
            hparams: hp,
            vocab_size: 300,
            tensors,
        }
        .with_selected_experts(Some(32))
    }

    /// A tiny Qwen 3.5: four blocks, the first three delta nets (4 value
    /// heads over 2 query/key heads of 16, a 4-tap convolution), the
    /// fourth gated attention (4 query heads over 2 KV heads of 16, half
    /// of each rotated, M-RoPE sections 2, 1, 1), tied embeddings.
    fn tiny_qwen35() -> Self {
        Self::qwen35(&Qwen35 {
            layers: 4,
            d: 64,
            ff: 128,
            heads: (4, 2, 16),
            rope: (8, [2, 1, 1]),
            delta: (4, 16, 2, 4),
            vocab: 300,
            context: 256,
        })
    }

    /// A tiny LFM2: four blocks, the third attention (4 query heads over
    /// 2 KV heads of 16), the others short convolutions of 3 taps; tied
    /// embeddings.
    fn tiny_lfm2() -> Self {
        Self::lfm2(64, 128, (4, 16), &[0, 0, 2, 0], 300)
    }

    /// LFM2 1.2B's shape (LiquidAI/LFM2-1.2B's config): 16 blocks 2048
    /// wide, attention (32 query heads over 8 KV heads of 64) in blocks 2,
    /// 5, 8, 10, 12 and 14, short convolutions of 3 taps in the others, an
    /// 8192-wide feed-forward block, a 65,536-token vocabulary, tied
    /// embeddings; Q8_0 matrices.
    pub fn lfm2_1_2b() -> Self {
        let kv: Vec<u32> = (0..16)
            .map(|l| {
                if [2, 5, 8, 10, 12, 14].contains(&l) {
                    8
                } else {
                    0
                }
            })
            .collect();
        Self::lfm2(2048, 8192, (32, 64), &kv, 65_536)
    }

    /// An LFM2 of width `d`, feed-forward width `ff`, `heads` query heads
    /// of `hd`, each block's KV heads `kv` (0: a short convolution).
    fn lfm2(d: u64, ff: u64, (heads, hd): (u64, u64), kv: &[u32], vocab: u64) -> Self {
        let k = |n: &str| format!("lfm2.{n}");
        let mut hp = vec![
            u32_kv(&k("attention.head_count"), heads as u32),
            (
                k("attention.head_count_kv"),
                MetadataValue::Array(MetadataArray::U32(kv.to_vec())),
            ),
            f32_kv(&k("attention.layer_norm_rms_epsilon"), 1e-5),
            u32_kv(&k("block_count"), kv.len() as u32),
            u32_kv(
                &k("context_length"),
                if vocab == 300 { 256 } else { 128_000 },
            ),
            u32_kv(&k("embedding_length"), d as u32),
            u32_kv(&k("feed_forward_length"), ff as u32),
            f32_kv(&k("rope.freq_base"), 1_000_000.0),
            u32_kv(&k("shortconv.l_cache"), 3),
        ];
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let shape = (d, vocab, kv.len());
        // (LFM2's output norm is named so.)
        let tensors = small_tensors(shape, "token_embd_norm.weight", |l, blk| {
            blk("attn_norm.weight", vec![d]);
            if kv[l] == 0 {
                blk("shortconv.conv.weight", vec![3, d]);
                blk("shortconv.in_proj.weight", vec![d, 3 * d]);
                blk("shortconv.out_proj.weight", vec![d, d]);
            } else {
                let kvd = u64::from(kv[l]) * hd;
                attention_tensors(blk, d, (heads * hd, heads * hd, kvd), Some(hd));
            }
            blk("ffn_norm.weight", vec![d]);
            gated_ffn_tensors(blk, d, ff);
        });
        Self {
            arch: "lfm2".into(),
            hparams: hp,
            vocab_size: vocab as usize,
            tensors,
        }
    }

    /// A tiny Granite 4.0 hybrid: four blocks, the third attention (4
    /// query heads over 2 KV heads of 16, an output bias), the others
    /// Mamba-2 mixers (128 wide: 8 heads of 16 in 2 groups, a state of 16,
    /// 4 taps); Granite's multipliers; tied embeddings.
    fn tiny_granite_hybrid() -> Self {
        let (d, ff, hd) = (64u64, 128u64, 16u64);
        let kv = [0u32, 0, 2, 0];
        let k = |n: &str| format!("granitehybrid.{n}");
        let mut hp = vec![
            u32_kv(&k("attention.head_count"), 4),
            (
                k("attention.head_count_kv"),
                MetadataValue::Array(MetadataArray::U32(kv.to_vec())),
            ),
            f32_kv(&k("attention.layer_norm_rms_epsilon"), 1e-5),
            // (Granite 4.0's 1/128 would leave the attention all but
            // uniform, and its RoPE unseen.)
            f32_kv(&k("attention.scale"), 0.5),
            u32_kv(&k("block_count"), kv.len() as u32),
            u32_kv(&k("context_length"), 256),
            u32_kv(&k("embedding_length"), d as u32),
            f32_kv(&k("embedding_scale"), 12.0),
            u32_kv(&k("feed_forward_length"), ff as u32),
            f32_kv(&k("logit_scale"), 8.0),
            f32_kv(&k("residual_scale"), 0.22),
        ];
        hp.extend(TINY_MAMBA.hparams(&k));
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors = small_tensors((d, 300, kv.len()), "output_norm.weight", |l, blk| {
            blk("attn_norm.weight", vec![d]);
            if kv[l] == 0 {
                TINY_MAMBA.tensors(d, blk);
            } else {
                let kvd = u64::from(kv[l]) * hd;
                attention_tensors(blk, d, (4 * hd, 4 * hd, kvd), None);
                blk("attn_output.bias", vec![d]);
            }
            blk("ffn_norm.weight", vec![d]);
            gated_ffn_tensors(blk, d, ff);
        });
        Self {
            arch: "granitehybrid".into(),
            hparams: hp,
            vocab_size: 300,
            tensors,
        }
    }

    /// A tiny DeciLM: four blocks 64 wide with 4 query heads of 16 where
    /// they attend: the first over 2 KV heads (network 128 wide), the
    /// second a linear map in place of attention (96), the third without
    /// attention (128), the fourth over 1 KV head (64); tied embeddings.
    fn tiny_deci() -> Self {
        let (d, hd) = (64u64, 16u64);
        let heads = [4u32, 4, 0, 4];
        let kv = [2u32, 0, 0, 1];
        let ff = [128u32, 96, 128, 64];
        let k = |n: &str| format!("deci.{n}");
        let list = |v: &[u32]| MetadataValue::Array(MetadataArray::U32(v.to_vec()));
        let mut hp = vec![
            (k("attention.head_count"), list(&heads)),
            (k("attention.head_count_kv"), list(&kv)),
            f32_kv(&k("attention.layer_norm_rms_epsilon"), 1e-5),
            u32_kv(&k("block_count"), 4),
            u32_kv(&k("context_length"), 256),
            u32_kv(&k("embedding_length"), d as u32),
            (k("feed_forward_length"), list(&ff)),
            u32_kv(&k("rope.dimension_count"), hd as u32),
        ];
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors = small_tensors((d, 300, 4), "output_norm.weight", |l, blk| {
            match (heads[l], kv[l]) {
                (0, _) => {}
                (_, 0) => {
                    blk("attn_norm.weight", vec![d]);
                    blk("attn_output.weight", vec![d, d]);
                }
                (h, kv) => {
                    blk("attn_norm.weight", vec![d]);
                    let (q, kv) = (u64::from(h) * hd, u64::from(kv) * hd);
                    attention_tensors(blk, d, (q, q, kv), None);
                }
            }
            blk("ffn_norm.weight", vec![d]);
            gated_ffn_tensors(blk, d, u64::from(ff[l]));
        });
        Self {
            arch: "deci".into(),
            hparams: hp,
            vocab_size: 300,
            tensors,
        }
    }

    /// A tiny Llama 4: four blocks (the first three attending within
    /// chunks, with RoPE and weightless Q/K norms; the fourth globally,
    /// without RoPE), 4 query heads over 2 KV heads of 16; the second and
    /// fourth blocks 4 experts 32 wide (1 a token) and a shared expert as
    /// wide, the others dense (128); tied embeddings.
    fn tiny_llama4() -> Self {
        let (d, ff, hd) = (64u64, 128u64, 16u64);
        let k = |n: &str| format!("llama4.{n}");
        let mut hp = vec![
            u32_kv(&k("attention.head_count"), 4),
            u32_kv(&k("attention.head_count_kv"), 2),
            f32_kv(&k("attention.layer_norm_rms_epsilon"), 1e-5),
            u32_kv(&k("block_count"), 4),
            u32_kv(&k("context_length"), 16_384),
            u32_kv(&k("embedding_length"), d as u32),
            u32_kv(&k("feed_forward_length"), ff as u32),
            u32_kv(&k("expert_count"), 4),
            u32_kv(&k("expert_used_count"), 1),
            u32_kv(&k("expert_feed_forward_length"), 32),
            u32_kv(&k("interleave_moe_layer_step"), 2),
            u32_kv(&k("rope.dimension_count"), hd as u32),
            f32_kv(&k("rope.freq_base"), 500_000.0),
        ];
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors = small_tensors((d, 300, 4), "output_norm.weight", |l, blk| {
            blk("attn_norm.weight", vec![d]);
            attention_tensors(blk, d, (4 * hd, 4 * hd, 2 * hd), None);
            blk("ffn_norm.weight", vec![d]);
            if l % 2 == 1 {
                blk("ffn_gate_inp.weight", vec![d, 4]);
                blk("ffn_gate_exps.weight", vec![d, 32, 4]);
                blk("ffn_up_exps.weight", vec![d, 32, 4]);
                blk("ffn_down_exps.weight", vec![32, d, 4]);
                blk("ffn_gate_shexp.weight", vec![d, 32]);
                blk("ffn_up_shexp.weight", vec![d, 32]);
                blk("ffn_down_shexp.weight", vec![32, d]);
            } else {
                gated_ffn_tensors(blk, d, ff);
            }
        });
        Self {
            arch: "llama4".into(),
            hparams: hp,
            vocab_size: 300,
            tensors,
        }
    }

    /// A tiny Gemma 3n of `layers` blocks 64 wide (4 query heads over 2 KV
    /// heads of 32, a window of 4 but on every fifth block and the last),
    /// those past the 20th reading the caches of the last local and global
    /// blocks before them (as llama.cpp, which fixes 20, reads them), the
    /// first 10 with sparse activations; 4 streams, blocks' inputs 256
    /// wide and LAuReL's rank 64 (what llama.cpp's loader fixes). The
    /// AltUp and LAuReL matrices f32, as llama.cpp's quantizer keeps them.
    fn tiny_gemma3n(layers: usize) -> Self {
        Self::gemma3n(
            &Gemma3n {
                layers,
                d: 64,
                ff: 128,
                heads: (4, 2, 32),
                window: 4,
                shared: layers.saturating_sub(20),
                vocab: 300,
                context: 256,
            },
            small_dtype,
        )
    }

    /// A tiny Gemma 4: as E2B and E4B, seven blocks 64 wide (local,
    /// local, global, local, global, local, global: 4 query heads over 2
    /// KV heads of 32 locally, a window of 4, 1 of 64 globally, a quarter
    /// of it rotated), the last two reading the caches of blocks 3 and 4
    /// and twice as wide (256 against 128), each block with an input 32
    /// wide of its own; or (`big`) as the 31B: no block inputs, no shared
    /// caches, all 128 wide, and the global blocks' keys their values. A
    /// soft-cap of 30 on the logits.
    fn tiny_gemma4(big: bool) -> Self {
        let local = vec![true, true, false, true, false, true, false];
        let (shared, per_layer) = if big { (0, 0) } else { (2, 32) };
        let ff = (0..local.len())
            .map(|l| if l + shared >= local.len() { 256 } else { 128 })
            .collect();
        Self::gemma4(
            &Gemma4 {
                local,
                d: 64,
                ff,
                heads: (4, (2, 32), (1, 64)),
                window: 4,
                shared,
                per_layer,
                k_eq_v: big,
                vocab: 300,
                context: 256,
            },
            small_dtype,
        )
    }

    /// Gemma 4 E2B's text blocks as its config gives them (my reading of
    /// it, not checked against a file): 35 blocks 1536 wide, every fifth
    /// global (8 query heads over 1 KV head of 256 locally, a window of
    /// 512; 1 of 512 globally), the last 20 reading earlier blocks' caches
    /// and twice as wide (12,288 against 6,144), blocks' own inputs 256
    /// wide, a 262,144-token vocabulary; in a Q4_K_M-like mix (Q6_K
    /// embeddings, `attn_v` and `ffn_down`, the other matrices Q4_K,
    /// `per_layer_model_proj` f32 as llama.cpp's quantizer keeps it).
    pub fn gemma4_e2b() -> Self {
        let layers = 35;
        let shared = 20;
        Self::gemma4(
            &Gemma4 {
                local: (0..layers).map(|l| (l + 1) % 5 != 0).collect(),
                d: 1536,
                ff: (0..layers)
                    .map(|l| if l + shared >= layers { 12_288 } else { 6_144 })
                    .collect(),
                heads: (8, (1, 256), (1, 512)),
                window: 512,
                shared,
                per_layer: 256,
                k_eq_v: false,
                vocab: 262_144,
                context: 32_768,
            },
            q4_k_m_like,
        )
    }

    /// The tiny Gemma 4 shaped as the 31B with the 26B A4B's experts beside
    /// every dense block: 4 experts 32 wide (2 a token), their gate and up
    /// in one tensor, each with its own output factor; the router's input
    /// scale and the experts' norms.
    fn tiny_gemma4_moe() -> Self {
        let mut l = Self::tiny_gemma4(true);
        let (d, experts, width) = (64u64, 4u64, 32u64);
        let blocks = l.hparam_u64("block_count").unwrap_or(0) as usize;
        for b in 0..blocks {
            let at = l
                .tensors
                .iter()
                .position(|t| t.name == format!("blk.{b}.post_ffw_norm.weight"))
                .unwrap_or(l.tensors.len());
            let extra = [
                ("ffn_gate_inp.weight", vec![d, experts]),
                ("ffn_gate_inp.scale", vec![d]),
                ("pre_ffw_norm_2.weight", vec![d]),
                ("post_ffw_norm_1.weight", vec![d]),
                ("post_ffw_norm_2.weight", vec![d]),
                ("ffn_gate_up_exps.weight", vec![d, 2 * width, experts]),
                ("ffn_down_exps.weight", vec![width, d, experts]),
                ("ffn_down_exps.scale", vec![experts]),
            ];
            for (i, (name, shape)) in extra.into_iter().enumerate() {
                let name = format!("blk.{b}.{name}");
                let dtype = small_dtype(&name, &shape);
                l.tensors
                    .insert(at + i, SyntheticTensor { name, shape, dtype });
            }
        }
        l.with_hparam("gemma4.expert_count", MetadataValue::U32(experts as u32))
            .with_hparam("gemma4.expert_used_count", MetadataValue::U32(2))
            .with_hparam(
                "gemma4.expert_feed_forward_length",
                MetadataValue::U32(width as u32),
            )
    }

    /// A Gemma 4 layout of shape `g`, its tensors typed by `dtype(name,
    /// shape)`. Its `rope_freqs` turn the global blocks' first quarter
    /// (factors 1) and leave the rest (1e30), as llama.cpp's converter
    /// writes them.
    fn gemma4(g: &Gemma4, dtype: impl Fn(&str, &[u64]) -> GgmlType) -> Self {
        let (d, layers) = (g.d, g.local.len());
        let (heads, (kv_local, hd_local), (kv_global, hd_global)) = g.heads;
        let k = |n: &str| format!("gemma4.{n}");
        let kv_heads = g
            .local
            .iter()
            .map(|&l| if l { kv_local } else { kv_global } as u32)
            .collect();
        let ff = g.ff.iter().map(|&f| f as u32).collect();
        let mut hp = vec![
            u32_kv(&k("attention.head_count"), heads as u32),
            (
                k("attention.head_count_kv"),
                MetadataValue::Array(MetadataArray::U32(kv_heads)),
            ),
            u32_kv(&k("attention.key_length"), hd_global as u32),
            u32_kv(&k("attention.value_length"), hd_global as u32),
            u32_kv(&k("attention.key_length_swa"), hd_local as u32),
            u32_kv(&k("attention.value_length_swa"), hd_local as u32),
            f32_kv(&k("attention.layer_norm_rms_epsilon"), 1e-6),
            u32_kv(&k("attention.sliding_window"), g.window),
            (
                k("attention.sliding_window_pattern"),
                MetadataValue::Array(MetadataArray::Bool(g.local.clone())),
            ),
            u32_kv(&k("attention.shared_kv_layers"), g.shared as u32),
            u32_kv(&k("block_count"), layers as u32),
            u32_kv(&k("context_length"), g.context),
            u32_kv(&k("embedding_length"), d as u32),
            u32_kv(&k("embedding_length_per_layer_input"), g.per_layer as u32),
            (
                k("feed_forward_length"),
                MetadataValue::Array(MetadataArray::U32(ff)),
            ),
            f32_kv(&k("rope.freq_base"), 1_000_000.0),
            f32_kv(&k("rope.freq_base_swa"), 10_000.0),
            u32_kv(&k("rope.dimension_count"), hd_global as u32),
            u32_kv(&k("rope.dimension_count_swa"), hd_local as u32),
            f32_kv(&k("final_logit_softcapping"), 30.0),
        ];
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let p = g.per_layer;
        let kv_from = layers - g.shared;
        let mut tensors = small_tensors((d, g.vocab, layers), "output_norm.weight", |l, blk| {
            let (kvh, hd) = match g.local[l] {
                true => (kv_local, hd_local),
                false => (kv_global, hd_global),
            };
            blk("attn_norm.weight", vec![d]);
            blk("attn_q.weight", vec![d, heads * hd]);
            blk("attn_q_norm.weight", vec![hd]);
            // (Blocks that read others' caches make queries alone.)
            if l < kv_from {
                blk("attn_k.weight", vec![d, kvh * hd]);
                blk("attn_k_norm.weight", vec![hd]);
                if g.local[l] || !g.k_eq_v {
                    blk("attn_v.weight", vec![d, kvh * hd]);
                }
            }
            blk("attn_output.weight", vec![heads * hd, d]);
            blk("post_attention_norm.weight", vec![d]);
            blk("ffn_norm.weight", vec![d]);
            gated_ffn_tensors(blk, d, g.ff[l]);
            blk("post_ffw_norm.weight", vec![d]);
            if p > 0 {
                blk("inp_gate.weight", vec![d, p]);
                blk("proj.weight", vec![p, d]);
                blk("post_norm.weight", vec![d]);
            }
            blk("layer_output_scale.weight", vec![1]);
        });
        let mut extra = vec![("rope_freqs.weight", vec![hd_global / 2])];
        if p > 0 {
            let wide = p * layers as u64;
            extra.extend([
                ("per_layer_token_embd.weight", vec![wide, g.vocab]),
                ("per_layer_model_proj.weight", vec![d, wide]),
                ("per_layer_proj_norm.weight", vec![p]),
            ]);
        }
        tensors.extend(extra.into_iter().map(|(name, shape)| SyntheticTensor {
            name: name.into(),
            dtype: small_dtype(name, &shape),
            shape,
        }));
        for t in &mut tensors {
            t.dtype = dtype(&t.name, &t.shape);
        }
        Self {
            arch: "gemma4".into(),
            hparams: hp,
            vocab_size: g.vocab as usize,
            tensors,
        }
    }

    /// Gemma 3n E2B's text blocks as transformers' config gives them: 30
    /// blocks 2048 wide (8 query heads over 2 KV heads of 256, a window of
    /// 512 but on every fifth block), the last 10 reading earlier blocks'
    /// caches, feed-forward blocks 8192 wide, a 262,400-token vocabulary;
    /// in a Q4_K_M-like mix (Q6_K embeddings, `attn_v` and `ffn_down`, the
    /// other matrices Q4_K; AltUp's and LAuReL's f32).
    pub fn gemma3n_e2b() -> Self {
        Self::gemma3n(
            &Gemma3n {
                layers: 30,
                d: 2048,
                ff: 8192,
                heads: (8, 2, 256),
                window: 512,
                shared: 10,
                vocab: 262_400,
                context: 32_768,
            },
            q4_k_m_like,
        )
    }

    /// A Gemma 3n layout of shape `g`, its tensors typed by `dtype(name,
    /// shape)`.
    fn gemma3n(g: &Gemma3n, dtype: impl Fn(&str, &[u64]) -> GgmlType) -> Self {
        let (d, ff, layers) = (g.d, g.ff, g.layers);
        let (heads, kv_heads, hd) = g.heads;
        let (per_layer, rank, streams) = (256u64, 64u64, 4u64);
        let k = |n: &str| format!("gemma3n.{n}");
        let local = (0..layers)
            .map(|l| l + 1 != layers && (l + 1) % 5 != 0)
            .collect();
        let sparsity = (0..layers)
            .map(|l| {
                if l < 10 {
                    1.644_853_4
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let mut hp = vec![
            u32_kv(&k("attention.head_count"), heads as u32),
            u32_kv(&k("attention.head_count_kv"), kv_heads as u32),
            u32_kv(&k("attention.key_length"), hd as u32),
            u32_kv(&k("attention.value_length"), hd as u32),
            f32_kv(&k("attention.layer_norm_rms_epsilon"), 1e-6),
            u32_kv(&k("attention.sliding_window"), g.window),
            (
                k("attention.sliding_window_pattern"),
                MetadataValue::Array(MetadataArray::Bool(local)),
            ),
            u32_kv(&k("attention.shared_kv_layers"), g.shared as u32),
            u32_kv(&k("block_count"), layers as u32),
            u32_kv(&k("context_length"), g.context),
            u32_kv(&k("embedding_length"), d as u32),
            u32_kv(&k("embedding_length_per_layer_input"), per_layer as u32),
            // (A list, as Gemma 3n's converted configs give it.)
            (
                k("feed_forward_length"),
                MetadataValue::Array(MetadataArray::U32(vec![ff as u32; layers])),
            ),
            u32_kv(&k("altup.active_idx"), 0),
            u32_kv(&k("altup.num_inputs"), streams as u32),
            (
                k("activation_sparsity_scale"),
                MetadataValue::Array(MetadataArray::F32(sparsity)),
            ),
            f32_kv(&k("rope.freq_base"), 1_000_000.0),
            f32_kv(&k("rope.freq_base_swa"), 10_000.0),
            f32_kv(&k("final_logit_softcapping"), 30.0),
        ];
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors = small_tensors((d, g.vocab, layers), "output_norm.weight", |_, blk| {
            blk("attn_norm.weight", vec![d]);
            let (q, kv) = (heads * hd, kv_heads * hd);
            attention_tensors(blk, d, (q, q, kv), Some(hd));
            blk("post_attention_norm.weight", vec![d]);
            blk("ffn_norm.weight", vec![d]);
            gated_ffn_tensors(blk, d, ff);
            blk("post_ffw_norm.weight", vec![d]);
            blk("inp_gate.weight", vec![d, per_layer]);
            blk("proj.weight", vec![per_layer, d]);
            blk("post_norm.weight", vec![d]);
            blk("altup_correct_coef.weight", vec![streams, streams]);
            blk("altup_correct_scale.weight", vec![d]);
            blk(
                "altup_predict_coef.weight",
                vec![streams, streams * streams],
            );
            blk("altup_router.weight", vec![d, streams]);
            blk("altup_router_norm.weight", vec![d]);
            blk("laurel_l.weight", vec![d, rank]);
            blk("laurel_r.weight", vec![rank, d]);
            blk("laurel_post_norm.weight", vec![d]);
        });
        let wide = per_layer * layers as u64;
        tensors.extend(
            [
                ("per_layer_token_embd.weight", vec![wide, g.vocab]),
                ("per_layer_model_proj.weight", vec![d, wide]),
                ("per_layer_proj_norm.weight", vec![per_layer]),
                ("altup_proj.weight", vec![d, d, streams - 1]),
                ("altup_unembd_proj.weight", vec![d, d, streams - 1]),
            ]
            .into_iter()
            .map(|(name, shape)| SyntheticTensor {
                name: name.into(),
                dtype: small_dtype(name, &shape),
                shape,
            }),
        );
        for t in &mut tensors {
            t.dtype = dtype(&t.name, &t.shape);
        }
        Self {
            arch: "gemma3n".into(),
            hparams: hp,
            vocab_size: g.vocab as usize,
            tensors,
        }
    }

    /// A tiny Falcon-H1: three blocks, each attention (4 query heads over
    /// 2 KV heads of 16, NeoX RoPE) beside a Mamba-2 mixer (128 wide: 8
    /// heads of 16 in 2 groups, a state of 16, 4 taps, its norm), then a
    /// gated feed-forward block 128 wide whose norm is `ffn_norm`; tied
    /// embeddings.
    fn tiny_falcon_h1() -> Self {
        Self::falcon_h1(&FalconH1 {
            layers: 3,
            d: 64,
            ff: 128,
            heads: (4, 2, 16),
            mamba: TINY_MAMBA,
            vocab: 300,
            context: 256,
        })
    }

    /// Falcon-H1 0.5B's blocks as transformers' table gives them: 36
    /// blocks 1024 wide, 8 query heads over 2 KV heads of 64 beside 24
    /// Mamba-2 heads of 64 (one group, a state of 128, 4 taps); with a
    /// 2048-wide feed-forward block and a 32,784-token vocabulary (its
    /// config's, as I know it: not checked against a file); Q8_0
    /// matrices.
    pub fn falcon_h1_0_5b() -> Self {
        Self::falcon_h1(&FalconH1 {
            layers: 36,
            d: 1024,
            ff: 2048,
            heads: (8, 2, 64),
            mamba: MambaShape {
                inner: 24 * 64,
                state: 128,
                heads: 24,
                groups: 1,
                taps: 4,
            },
            vocab: 32_784,
            context: 16_384,
        })
    }

    fn falcon_h1(f: &FalconH1) -> Self {
        let (d, ff) = (f.d, f.ff);
        let (heads, kv_heads, hd) = f.heads;
        let k = |n: &str| format!("falcon-h1.{n}");
        let mut hp = vec![
            u32_kv(&k("attention.head_count"), heads as u32),
            u32_kv(&k("attention.head_count_kv"), kv_heads as u32),
            u32_kv(&k("attention.key_length"), hd as u32),
            u32_kv(&k("attention.value_length"), hd as u32),
            f32_kv(&k("attention.layer_norm_rms_epsilon"), 1e-5),
            u32_kv(&k("block_count"), f.layers),
            u32_kv(&k("context_length"), f.context),
            u32_kv(&k("embedding_length"), d as u32),
            u32_kv(&k("feed_forward_length"), ff as u32),
            f32_kv(&k("rope.freq_base"), 100_000.0),
        ];
        hp.extend(f.mamba.hparams(&k));
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let shape = (d, f.vocab, f.layers as usize);
        let tensors = small_tensors(shape, "output_norm.weight", |_, blk| {
            blk("attn_norm.weight", vec![d]);
            let q = heads * hd;
            attention_tensors(blk, d, (q, q, kv_heads * hd), None);
            f.mamba.tensors(d, blk);
            // (As llama.cpp's converter names it.)
            blk("ffn_norm", vec![d]);
            gated_ffn_tensors(blk, d, ff);
        });
        Self {
            arch: "falcon-h1".into(),
            hparams: hp,
            vocab_size: f.vocab as usize,
            tensors,
        }
    }

    /// A tiny Nemotron-H: five blocks, each one part: Mamba-2 mixers
    /// (128 wide: 8 heads of 16 in 2 groups, a state of 16, 4 taps) first
    /// and last, feed-forward networks (128 wide, squared ReLUs) second and
    /// fourth, attention (4 query heads over 2 KV heads of 16, no RoPE)
    /// third; its own output matrix.
    fn tiny_nemotron_h() -> Self {
        let (d, hd) = (64u64, 16u64);
        let kv = [0u32, 0, 2, 0, 0];
        let ff = [0u32, 128, 0, 128, 0];
        let k = |n: &str| format!("nemotron_h.{n}");
        let list = |v: &[u32]| MetadataValue::Array(MetadataArray::U32(v.to_vec()));
        let mut hp = vec![
            u32_kv(&k("attention.head_count"), 4),
            (k("attention.head_count_kv"), list(&kv)),
            u32_kv(&k("attention.key_length"), hd as u32),
            u32_kv(&k("attention.value_length"), hd as u32),
            f32_kv(&k("attention.layer_norm_epsilon"), 1e-5),
            f32_kv(&k("attention.layer_norm_rms_epsilon"), 1e-5),
            u32_kv(&k("block_count"), kv.len() as u32),
            u32_kv(&k("context_length"), 256),
            u32_kv(&k("embedding_length"), d as u32),
            (k("feed_forward_length"), list(&ff)),
        ];
        hp.extend(TINY_MAMBA.hparams(&k));
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors = small_tensors((d, 300, kv.len()), "output_norm.weight", |l, blk| {
            blk("attn_norm.weight", vec![d]);
            let width = u64::from(ff[l]);
            if width > 0 {
                blk("ffn_up.weight", vec![d, width]);
                blk("ffn_down.weight", vec![width, d]);
            } else if kv[l] > 0 {
                let kvd = u64::from(kv[l]) * hd;
                attention_tensors(blk, d, (4 * hd, 4 * hd, kvd), None);
            } else {
                TINY_MAMBA.tensors(d, blk);
            }
        });
        tensors.push(SyntheticTensor {
            name: "output.weight".into(),
            shape: vec![d, 300],
            dtype: GgmlType::Q8_0,
        });
        Self {
            arch: "nemotron_h".into(),
            hparams: hp,
            vocab_size: 300,
            tensors,
        }
    }

    /// A tiny Mamba-2: 3 blocks 64 wide, each a Mamba-2 mixer alone
    /// ([`TINY_MAMBA`]'s) after an RMSNorm, no attention (no heads, as
    /// llama.cpp's converter writes it), tied output.
    fn tiny_mamba2() -> Self {
        let (d, layers) = (64u64, 3);
        let k = |n: &str| format!("mamba2.{n}");
        let mut hp = mixers_only_hparams(&k, d, layers);
        hp.extend(TINY_MAMBA.hparams(&k));
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors = small_tensors((d, 300, layers), "output_norm.weight", |_, blk| {
            blk("attn_norm.weight", vec![d]);
            TINY_MAMBA.tensors(d, blk);
        });
        Self {
            arch: "mamba2".into(),
            hparams: hp,
            vocab_size: 300,
            tensors,
        }
    }

    /// A tiny Mamba: 3 blocks 64 wide, each an RMSNorm and a Mamba mixer
    /// (128 channels, states of 16, a step of rank 32, 4 taps), tied
    /// output; `ssm_a` negative, as the converter writes `-exp(A_log)`.
    /// An encoder's: BERT's (2 blocks 64 wide, 4 heads of 16, GELUs 128
    /// wide, biases on every product, learned positions for the 256 of the
    /// context, 2 token types, CLS pooling), Nomic BERT's (NeoX RoPE for
    /// the positions, `attn_qkv` and SwiGLU without biases, mean pooling)
    /// or Nomic BERT MoE's (Nomic BERT's attention, BERT's GELUs in the
    /// first block, 4 experts of them, 2 a token, in the second), or Jina
    /// BERT v2's (BERT's products and biases, no positions (ALiBi), Q/K
    /// LayerNorms, `attn_norm_2`, a GEGLU network in one `ffn_up` with its
    /// bias, mean pooling), or Jina BERT v3's (Nomic BERT's attention with
    /// biases, BERT's GELUs with theirs, mean pooling).
    fn tiny_encoder(arch: &str) -> Self {
        let (d, ff, layers) = (64u64, 128u64, 2);
        let bert = arch == "bert";
        let jina = arch == "jina-bert-v2";
        let jina3 = arch == "jina-bert-v3";
        let biased = bert || jina;
        let moe = arch == "nomic-bert-moe";
        let k = |n: &str| format!("{arch}.{n}");
        let mut hp = vec![
            u32_kv(&k("attention.head_count"), 4),
            f32_kv(&k("attention.layer_norm_epsilon"), 1e-12),
            (k("attention.causal"), MetadataValue::Bool(false)),
            u32_kv(&k("block_count"), layers as u32),
            u32_kv(&k("context_length"), 256),
            u32_kv(&k("embedding_length"), d as u32),
            u32_kv(&k("feed_forward_length"), ff as u32),
            u32_kv(&k("pooling_type"), if bert { 2 } else { 1 }),
            u32_kv("tokenizer.ggml.token_type_count", 2),
        ];
        if moe {
            hp.extend([
                u32_kv(&k("expert_count"), 4),
                u32_kv(&k("expert_used_count"), 2),
                u32_kv(&k("moe_every_n_layers"), 2),
            ]);
        }
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors = small_tensors((d, 300, layers), "token_embd_norm.weight", |l, blk| {
            if biased {
                for m in ["attn_q", "attn_k", "attn_v"] {
                    blk(&format!("{m}.weight"), vec![d, d]);
                    blk(&format!("{m}.bias"), vec![d]);
                }
            } else {
                blk("attn_qkv.weight", vec![d, 3 * d]);
            }
            if jina3 {
                blk("attn_qkv.bias", vec![3 * d]);
            }
            blk("attn_output.weight", vec![d, d]);
            if biased || jina3 {
                blk("attn_output.bias", vec![d]);
            }
            blk("attn_output_norm.weight", vec![d]);
            blk("attn_output_norm.bias", vec![d]);
            if jina {
                for m in ["attn_q_norm", "attn_k_norm", "attn_norm_2"] {
                    blk(&format!("{m}.weight"), vec![d]);
                    blk(&format!("{m}.bias"), vec![d]);
                }
                blk("ffn_up.weight", vec![d, 2 * ff]);
                blk("ffn_up.bias", vec![2 * ff]);
                blk("ffn_down.weight", vec![ff, d]);
                blk("ffn_down.bias", vec![d]);
                blk("layer_output_norm.weight", vec![d]);
                blk("layer_output_norm.bias", vec![d]);
                return;
            }
            if moe {
                // BERT's GELUs in the first block, 4 experts of them in
                // the second.
                match l {
                    1 => {
                        blk("ffn_gate_inp.weight", vec![d, 4]);
                        blk("ffn_up_exps.weight", vec![d, ff, 4]);
                        blk("ffn_down_exps.weight", vec![ff, d, 4]);
                    }
                    _ => {
                        blk("ffn_up.weight", vec![d, ff]);
                        blk("ffn_down.weight", vec![ff, d]);
                        blk("ffn_up.bias", vec![ff]);
                        blk("ffn_down.bias", vec![d]);
                    }
                }
                blk("layer_output_norm.weight", vec![d]);
                blk("layer_output_norm.bias", vec![d]);
                return;
            }
            if !(bert || jina3) {
                blk("ffn_gate.weight", vec![d, ff]);
            }
            blk("ffn_up.weight", vec![d, ff]);
            blk("ffn_down.weight", vec![ff, d]);
            if bert || jina3 {
                blk("ffn_up.bias", vec![ff]);
                blk("ffn_down.bias", vec![d]);
            }
            blk("layer_output_norm.weight", vec![d]);
            blk("layer_output_norm.bias", vec![d]);
        });
        let f32_tensor = |name: &str, shape| SyntheticTensor {
            name: name.into(),
            shape,
            dtype: GgmlType::F32,
        };
        tensors.push(f32_tensor("token_embd_norm.bias", vec![d]));
        tensors.push(f32_tensor("token_types.weight", vec![d, 2]));
        if bert {
            tensors.push(f32_tensor("position_embd.weight", vec![d, 256]));
        }
        Self {
            arch: arch.into(),
            hparams: hp,
            vocab_size: 300,
            tensors,
        }
    }

    /// NeoBERT's: the tiny llama's blocks with `attn_qkv`, gate and up
    /// in one `ffn_up` (gate first), the output norm `enc.output_norm`.
    fn tiny_neo_bert() -> Result<Self> {
        let mut l = Self::tiny("llama")?
            .renamed("neo-bert")
            .with_hparam("neo-bert.attention.causal", MetadataValue::Bool(false))
            .with_fused_qkv();
        let mut tensors = Vec::new();
        for mut t in std::mem::take(&mut l.tensors) {
            let name = t.name.clone();
            if let Some(blk) = name.strip_suffix(".ffn_up.weight") {
                t.name = format!("{blk}.ffn_up.weight");
                t.shape[1] *= 2;
            } else if name == "output_norm.weight" {
                t.name = "enc.output_norm.weight".into();
            } else if name.ends_with(".ffn_gate.weight") {
                continue;
            }
            tensors.push(t);
        }
        l.tensors = tensors;
        Ok(l)
    }

    /// ModernBERT's: 3 blocks 64 wide (4 heads of 16; the first global,
    /// the others local, their window 4 wide on both sides, RoPE bases
    /// 160000 and 10000), LayerNorms without biases (none before the first
    /// attention), `attn_qkv`, GEGLU 128 wide in one `ffn_up`, mean
    /// pooling.
    fn tiny_modern_bert() -> Self {
        let (d, ff, layers) = (64u64, 128u64, 3);
        let k = |n: &str| format!("modern-bert.{n}");
        let mut hp = vec![
            u32_kv(&k("attention.head_count"), 4),
            f32_kv(&k("attention.layer_norm_epsilon"), 1e-5),
            (k("attention.causal"), MetadataValue::Bool(false)),
            u32_kv(&k("attention.sliding_window"), 4),
            u32_kv(&k("block_count"), layers as u32),
            u32_kv(&k("context_length"), 256),
            u32_kv(&k("embedding_length"), d as u32),
            u32_kv(&k("feed_forward_length"), ff as u32),
            u32_kv(&k("pooling_type"), 1),
            f32_kv(&k("rope.freq_base"), 160_000.0),
            f32_kv(&k("rope.freq_base_swa"), 10_000.0),
        ];
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors = small_tensors((d, 300, layers), "output_norm.weight", |l, blk| {
            if l > 0 {
                blk("attn_norm.weight", vec![d]);
            }
            blk("attn_qkv.weight", vec![d, 3 * d]);
            blk("attn_output.weight", vec![d, d]);
            blk("ffn_norm.weight", vec![d]);
            blk("ffn_up.weight", vec![d, 2 * ff]);
            blk("ffn_down.weight", vec![ff, d]);
        });
        tensors.push(SyntheticTensor {
            name: "token_embd_norm.weight".into(),
            shape: vec![d],
            dtype: GgmlType::F32,
        });
        Self {
            arch: "modern-bert".into(),
            hparams: hp,
            vocab_size: 300,
            tensors,
        }
    }

    /// EmbeddingGemma's: the tiny Gemma 3's blocks (the first local, its
    /// window 4 wide on both sides, the second global), mean pooling, and
    /// dense projections to 128 values and back.
    fn tiny_gemma_embedding() -> Result<Self> {
        let arch = "gemma-embedding";
        let mut l = Self::tiny("gemma3")?.renamed(arch);
        let k = |n: &str| format!("{arch}.{n}");
        let d = 64u64;
        for (name, shape) in [
            ("dense_2.weight", vec![d, 128]),
            ("dense_3.weight", vec![128, d]),
        ] {
            let dtype = small_dtype(name, &shape);
            l.tensors.push(SyntheticTensor {
                name: name.into(),
                shape,
                dtype,
            });
        }
        let mut l = l
            .with_hparam(
                &k("attention.sliding_window_pattern"),
                MetadataValue::U32(2),
            )
            .with_hparam(&k("pooling_type"), MetadataValue::U32(1));
        for (n, v) in [
            ("dense_2_feat_in", 64),
            ("dense_2_feat_out", 128),
            ("dense_3_feat_in", 128),
            ("dense_3_feat_out", 64),
        ] {
            l = l.with_hparam(&k(n), MetadataValue::U32(v));
        }
        Ok(l)
    }

    fn tiny_mamba() -> Self {
        let (d, inner, ds, rank, taps, layers) = (64u64, 128u64, 16u64, 32u64, 4u64, 3);
        let k = |n: &str| format!("mamba.{n}");
        let mut hp = mixers_only_hparams(&k, d, layers);
        hp.extend([
            u32_kv(&k("ssm.conv_kernel"), taps as u32),
            u32_kv(&k("ssm.inner_size"), inner as u32),
            u32_kv(&k("ssm.state_size"), ds as u32),
            u32_kv(&k("ssm.time_step_rank"), rank as u32),
        ]);
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors = small_tensors((d, 300, layers), "output_norm.weight", |_, blk| {
            blk("attn_norm.weight", vec![d]);
            blk("ssm_in.weight", vec![d, 2 * inner]);
            blk("ssm_conv1d.weight", vec![taps, inner]);
            blk("ssm_conv1d.bias", vec![inner]);
            blk("ssm_x.weight", vec![inner, rank + 2 * ds]);
            blk("ssm_dt.weight", vec![rank, inner]);
            blk("ssm_dt.bias", vec![inner]);
            blk("ssm_a", vec![ds, inner]);
            blk("ssm_d", vec![inner]);
            blk("ssm_out.weight", vec![inner, d]);
        });
        Self {
            arch: "mamba".into(),
            hparams: hp,
            vocab_size: 300,
            tensors,
        }
    }

    /// Qwen 3.5 0.8B's shape (Qwen/Qwen3.5-0.8B's config): 24 blocks
    /// 1024 wide, three of four delta nets (16 value and 16 query/key
    /// heads of 128, 4 taps), the fourth gated attention (8 query heads
    /// over 2 KV heads of 256, a quarter of each rotated, M-RoPE sections
    /// 11, 11, 10), a 3584-wide feed-forward block, a 248,320-token
    /// vocabulary, tied embeddings; Q8_0 matrices.
    pub fn qwen35_0_8b() -> Self {
        Self::qwen35(&Qwen35 {
            layers: 24,
            d: 1024,
            ff: 3584,
            heads: (8, 2, 256),
            rope: (64, [11, 11, 10]),
            delta: (4, 128, 16, 16),
            vocab: 248_320,
            context: 262_144,
        })
    }

    fn qwen35(q: &Qwen35) -> Self {
        let (d, ff) = (q.d, q.ff);
        let (heads, kv_heads, hd) = q.heads;
        let (taps, s, k_heads, v_heads) = q.delta;
        let k = |n: &str| format!("qwen35.{n}");
        let sections = q.rope.1.iter().map(|&x| x as i32).chain([0]).collect();
        let mut hp = vec![
            u32_kv(&k("attention.head_count"), heads as u32),
            u32_kv(&k("attention.head_count_kv"), kv_heads as u32),
            u32_kv(&k("attention.key_length"), hd as u32),
            u32_kv(&k("attention.value_length"), hd as u32),
            f32_kv(&k("attention.layer_norm_rms_epsilon"), 1e-6),
            u32_kv(&k("block_count"), q.layers),
            u32_kv(&k("context_length"), q.context),
            u32_kv(&k("embedding_length"), d as u32),
            u32_kv(&k("feed_forward_length"), ff as u32),
            u32_kv(&k("full_attention_interval"), 4),
            u32_kv(&k("rope.dimension_count"), q.rope.0),
            (
                k("rope.dimension_sections"),
                MetadataValue::Array(MetadataArray::I32(sections)),
            ),
            f32_kv(&k("rope.freq_base"), 10_000_000.0),
            u32_kv(&k("ssm.conv_kernel"), taps as u32),
            u32_kv(&k("ssm.state_size"), s as u32),
            u32_kv(&k("ssm.group_count"), k_heads as u32),
            u32_kv(&k("ssm.time_step_rank"), v_heads as u32),
            u32_kv(&k("ssm.inner_size"), (v_heads * s) as u32),
        ];
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let (kd, vd) = (k_heads * s, v_heads * s);
        let shape = (d, q.vocab, q.layers as usize);
        let tensors = small_tensors(shape, "output_norm.weight", |l, blk| {
            blk("attn_norm.weight", vec![d]);
            if (l + 1) % 4 != 0 {
                blk("attn_qkv.weight", vec![d, 2 * kd + vd]);
                blk("attn_gate.weight", vec![d, vd]);
                blk("ssm_conv1d.weight", vec![taps, 2 * kd + vd]);
                blk("ssm_dt.bias", vec![v_heads]);
                blk("ssm_a", vec![v_heads]);
                blk("ssm_beta.weight", vec![d, v_heads]);
                blk("ssm_alpha.weight", vec![d, v_heads]);
                blk("ssm_norm.weight", vec![s]);
                blk("ssm_out.weight", vec![vd, d]);
            } else {
                let q = (2 * heads * hd, heads * hd, kv_heads * hd);
                attention_tensors(blk, d, q, Some(hd));
            }
            blk("post_attention_norm.weight", vec![d]);
            gated_ffn_tensors(blk, d, ff);
        });
        Self {
            arch: "qwen35".into(),
            hparams: hp,
            vocab_size: q.vocab as usize,
            tensors,
        }
    }

    /// gpt-oss-20b as ggml-org's MXFP4 file holds it: 24 layers, 2880 wide,
    /// 64 query and 8 KV heads of 64, 32 experts 2880 wide (4 a token) in
    /// MXFP4, every other matrix Q8_0, the router f32, a 201,088-token
    /// vocabulary, a 128-token window on every other layer and YaRN (32
    /// times 4096 tokens).
    pub fn gpt_oss_20b() -> Result<Self> {
        let s = Shape {
            arch: "gpt-oss",
            layers: 24,
            d: 2880,
            ff: 2880,
            heads: 64,
            kv_heads: 8,
            head_dim: 64,
            vocab: 201_088,
        };
        let shape = GptOss {
            experts: (32, 4),
            window: 128,
            context: 131_072,
            yarn: (32.0, 4096),
        };
        let mut l = Self::gpt_oss(&s, &shape, |name, _| match name {
            n if n.starts_with("ffn_") => GgmlType::MXFP4,
            _ => GgmlType::Q8_0,
        })?;
        for t in &mut l.tensors {
            if t.name.ends_with("ffn_gate_inp.weight") {
                t.dtype = GgmlType::F32;
            }
        }
        Ok(l)
    }

    /// A gpt-oss layout of shape `s`: the llama blocks' tensors with
    /// gpt-oss's biases, sinks and norms, `g`'s experts, and an output
    /// matrix of its own; `dtype` types the matrices by short name (the
    /// experts and router by their dense block's `ffn_*` ones).
    fn gpt_oss(
        s: &Shape,
        g: &GptOss,
        dtype: impl Fn(&str, Option<u32>) -> GgmlType,
    ) -> Result<Self> {
        let k = |n: &str| format!("{}.{n}", s.arch);
        let mut hp = vec![
            u32_kv(&k("attention.head_count"), s.heads),
            u32_kv(&k("attention.head_count_kv"), s.kv_heads),
            u32_kv(&k("attention.key_length"), s.head_dim as u32),
            f32_kv(&k("attention.layer_norm_rms_epsilon"), 1e-5),
            u32_kv(&k("attention.sliding_window"), g.window),
            u32_kv(&k("attention.value_length"), s.head_dim as u32),
            u32_kv(&k("block_count"), s.layers),
            u32_kv(&k("context_length"), g.context),
            u32_kv(&k("embedding_length"), s.d as u32),
            u32_kv(&k("expert_feed_forward_length"), s.ff as u32),
            u32_kv(&k("feed_forward_length"), s.ff as u32),
            f32_kv(&k("rope.freq_base"), 150_000.0),
            f32_kv(&k("rope.scaling.factor"), g.yarn.0),
            u32_kv(&k("rope.scaling.original_context_length"), g.yarn.1),
        ];
        hp.push((k("rope.scaling.type"), MetadataValue::String("yarn".into())));
        hp.sort_by(|a, b| a.0.cmp(&b.0));
        let (experts, used) = g.experts;
        let mut l = Self::build(s, hp, dtype).with_experts(experts, used)?;
        // The experts' biases after each of their matrices (f32, as
        // llama.cpp adds them), and an output matrix of its own.
        let mut tensors = Vec::with_capacity(l.tensors.len() * 2);
        for t in l.tensors {
            let bias = match t.name.strip_suffix(".weight") {
                Some(n) if n.ends_with("_exps") || n.ends_with("ffn_gate_inp") => {
                    // A row per expert of the matrix's output width.
                    let shape = t.shape[1..].to_vec();
                    Some(SyntheticTensor {
                        name: format!("{n}.bias"),
                        shape,
                        dtype: GgmlType::F32,
                    })
                }
                _ => None,
            };
            tensors.push(t);
            tensors.extend(bias);
        }
        let mut output = tensors[0].clone();
        output.name = "output.weight".into();
        tensors.push(output);
        l.tensors = tensors;
        Ok(l)
    }

    /// The same layout with `layers` blocks, those past its own shaped as
    /// its first (their weights drawn after the others').
    fn grown(mut self, layers: u32) -> Self {
        let first: Vec<SyntheticTensor> = self
            .tensors
            .iter()
            .filter(|t| t.name.starts_with("blk.0."))
            .cloned()
            .collect();
        let have = self.hparam_u64("block_count").unwrap_or(0) as u32;
        for l in have..layers {
            for t in &first {
                let mut t = t.clone();
                t.name = t.name.replacen("blk.0.", &format!("blk.{l}."), 1);
                self.tensors.push(t);
            }
        }
        let key = format!("{}.block_count", self.arch);
        self.with_hparam(&key, MetadataValue::U32(layers.max(have)))
    }

    /// The same layout with only its first `layers` blocks (and
    /// `block_count` saying so): a cheaper model of the same width, for
    /// measuring what a layer costs.
    pub fn with_layers(mut self, layers: u32) -> Result<Self> {
        let total = self.hparam_u64("block_count").unwrap_or(0);
        if layers == 0 || u64::from(layers) > total {
            return Err(Error::BadConfig(format!(
                "{layers} of the layout's {total} layers"
            )));
        }
        self.tensors.retain(|t| {
            t.name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|b| b.parse::<u32>().ok())
                .is_none_or(|b| b < layers)
        });
        // Lists of a value a block (LFM2's KV heads, Gemma 3n's widths...)
        // keep their first blocks' values.
        let n = layers as usize;
        for (_, v) in &mut self.hparams {
            let MetadataValue::Array(a) = v else { continue };
            if a.len() as u64 != total {
                continue;
            }
            match a {
                MetadataArray::U32(x) => x.truncate(n),
                MetadataArray::I32(x) => x.truncate(n),
                MetadataArray::F32(x) => x.truncate(n),
                MetadataArray::Bool(x) => x.truncate(n),
                _ => {}
            }
        }
        let key = format!("{}.block_count", self.arch);
        Ok(self.with_hparam(&key, MetadataValue::U32(layers)))
    }

    /// The layout with each block's q, k and v (and their biases) in one
    /// `attn_qkv` where q was (its rows first, then k's and v's), as files
    /// of fused products store them.
    fn with_fused_qkv(mut self) -> Self {
        let mut out: Vec<SyntheticTensor> = Vec::new();
        for mut t in std::mem::take(&mut self.tensors) {
            let fused = ["q", "k", "v"].iter().find_map(|p| {
                let (blk, rest) = t.name.split_once(&format!(".attn_{p}."))?;
                Some((*p, format!("{blk}.attn_qkv.{rest}")))
            });
            match fused {
                Some(("q", name)) => {
                    t.name = name;
                    out.push(t);
                }
                Some((_, name)) => {
                    // (k and v come after their block's q.)
                    if let Some(qkv) = out.iter_mut().find(|f| f.name == name) {
                        if let (Some(rows), Some(more)) = (qkv.shape.last_mut(), t.shape.last()) {
                            *rows += more;
                        }
                    }
                }
                None => out.push(t),
            }
        }
        self.tensors = out;
        self
    }

    /// The layout as a reranker: rank pooling (`pooling_type` 4) and its
    /// head's `tensors` (small-layout types).
    fn ranking(mut self, tensors: &[(&str, Vec<u64>)]) -> Self {
        for (name, shape) in tensors {
            self.tensors.push(SyntheticTensor {
                name: (*name).into(),
                dtype: small_dtype(name, shape),
                shape: shape.clone(),
            });
        }
        let key = format!("{}.pooling_type", self.arch);
        self.with_hparam(&key, MetadataValue::U32(4))
    }

    /// The same layout with every matrix stored as `dtype` (vectors and
    /// biases stay f32). With `GgmlType::F32` no backend rounds activations to 8 bits,
    /// which makes backends comparable to float precision.
    pub fn with_matrix_type(mut self, dtype: GgmlType) -> Self {
        for t in &mut self.tensors {
            // (A delta net's convolution stays f32, as llama.cpp keeps it.)
            if t.shape.iter().filter(|&&d| d > 1).count() > 1
                && !t.name.ends_with(".bias")
                && !t.name.ends_with("_norm.weight")
                && !t.name.ends_with("ssm_conv1d.weight")
                && !t.name.ends_with(".ssm_a")
                && !t.name.ends_with("shortconv.conv.weight")
                && (!kept_f32(&t.name) || t.dtype != GgmlType::F32)
            {
                t.dtype = dtype;
            }
        }
        self
    }

    /// The same layout with the vocabulary of the file whose metadata is
    /// `md` (its `tokenizer.*` keys, written in place of the synthetic
    /// one's), the token embeddings and output matrix (and a BERT's token
    /// types, to its `token_type_count`) resized to it: a
    /// model that tokenizes as that file does (llama.cpp's
    /// `ggml-vocab-*.gguf`).
    pub fn with_vocab(mut self, md: &Metadata) -> Result<Self> {
        let n = md.get_str_array("tokenizer.ggml.tokens")?.len();
        if n < 259 {
            return Err(Error::BadConfig(format!(
                "a synthetic model's vocabulary needs at least 259 tokens, not {n}"
            )));
        }
        for (k, v) in md.iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
            self = self.with_hparam(k, v.clone());
        }
        // (A BERT's token types are as many as the vocabulary says.)
        let types = match md.get("tokenizer.ggml.token_type_count") {
            Some(_) => Some(md.get_u32("tokenizer.ggml.token_type_count")?),
            None => None,
        };
        for t in &mut self.tensors {
            if t.name == "token_embd.weight" || t.name == "output.weight" {
                t.shape[1] = n as u64;
            }
            if let (Some(k), "token_types.weight") = (types, t.name.as_str()) {
                t.shape[1] = u64::from(k.max(1));
            }
        }
        self.vocab_size = n;
        Ok(self)
    }

    /// Hyper-parameter `{arch}.{key}` as a whole number, if the layout has
    /// it so.
    fn hparam_u64(&self, key: &str) -> Option<u64> {
        let key = format!("{}.{key}", self.arch);
        self.hparams
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.as_i128())
            .and_then(|v| u64::try_from(v).ok())
    }

    /// The same layout with hyper-parameter `key` set to `value` (a key
    /// of another architecture is set as it is).
    pub fn with_hparam(mut self, key: &str, value: MetadataValue) -> Self {
        match self.hparams.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => {
                self.hparams.push((key.to_string(), value));
                self.hparams.sort_by(|a, b| a.0.cmp(&b.0));
            }
        }
        self
    }

    /// The same layout with Llama 3.1's RoPE frequency factors: a
    /// `rope_freqs.weight` of one factor per rotated pair (written with
    /// values in [1, 8), as Llama 3.1's run from 1 to 8).
    pub fn with_rope_factors(mut self) -> Result<Self> {
        let get = |k: &str| self.hparam_u64(k);
        let dims = get("rope.dimension_count")
            .or_else(|| get("attention.key_length"))
            .or_else(|| {
                get("embedding_length")
                    .zip(get("attention.head_count"))
                    .filter(|&(_, h)| h > 0)
                    .map(|(d, h)| d / h)
            });
        let pairs = dims
            .map(|d| d / 2)
            .filter(|&p| p > 0)
            .ok_or_else(|| Error::BadConfig("the layout has no rotated dimensions".into()))?;
        self.tensors.retain(|t| t.name != "rope_freqs.weight");
        self.tensors.insert(
            1,
            SyntheticTensor {
                name: "rope_freqs.weight".into(),
                shape: vec![pairs],
                dtype: GgmlType::F32,
            },
        );
        Ok(self)
    }

    /// The same layout with LongRoPE's factors (Phi 3.5's and Phi 4
    /// mini's) for an original context of `original_context` tokens: a
    /// `rope_factors_short.weight` and a `rope_factors_long.weight` of one
    /// factor per rotated pair (values in [1, 8)), the original context,
    /// and the attention factor llama.cpp's converter writes for it,
    /// `sqrt(1 + ln(s) / ln(original_context))` where the model's context
    /// is `s > 1` times the original one (1 otherwise).
    pub fn with_long_rope(self, original_context: u32) -> Result<Self> {
        if original_context < 2 {
            return Err(Error::BadConfig(format!(
                "an original context of {original_context} tokens"
            )));
        }
        let context = self.hparam_u64("context_length").unwrap_or(0);
        let scale = context as f64 / f64::from(original_context);
        let attn_factor = if scale > 1.0 {
            (1.0 + scale.ln() / f64::from(original_context).ln()).sqrt()
        } else {
            1.0
        };
        let mut layout = self.with_rope_factors()?;
        layout.tensors[1].name = "rope_factors_long.weight".into();
        let mut short = layout.tensors[1].clone();
        short.name = "rope_factors_short.weight".into();
        layout.tensors.insert(2, short);
        let arch = layout.arch.clone();
        Ok(layout
            .with_hparam(
                &format!("{arch}.rope.scaling.original_context_length"),
                MetadataValue::U32(original_context),
            )
            .with_hparam(
                &format!("{arch}.rope.scaling.attn_factor"),
                MetadataValue::F32(attn_factor as f32),
            ))
    }

    /// The same layout with mixture-of-experts feed-forward blocks:
    /// `experts` experts (each as wide as `expert_feed_forward_length`, or
    /// `feed_forward_length` without one), `used` a token, and a router,
    /// in place of each block's dense matrices.
    pub fn with_experts(self, experts: u32, used: u32) -> Result<Self> {
        let arch = self.arch.clone();
        let get = |k: &str| self.hparam_u64(k);
        let (d, ff) = get("embedding_length")
            .zip(get("expert_feed_forward_length").or(get("feed_forward_length")))
            .ok_or_else(|| Error::BadConfig("the layout has no widths".into()))?;
        let e = u64::from(experts);
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for t in self.tensors {
            let Some((blk, short)) = t.name.rsplit_once(".ffn_") else {
                tensors.push(t);
                continue;
            };
            let dtype = t.dtype;
            let mut add = |n: &str, shape: Vec<u64>| {
                tensors.push(SyntheticTensor {
                    name: format!("{blk}.ffn_{n}"),
                    shape,
                    dtype,
                })
            };
            match short {
                "gate.weight" => {
                    add("gate_inp.weight", vec![d, e]);
                    add("gate_exps.weight", vec![d, ff, e]);
                }
                "up.weight" => add("up_exps.weight", vec![d, ff, e]),
                "down.weight" => add("down_exps.weight", vec![ff, d, e]),
                _ => tensors.push(t),
            }
        }
        Ok(Self { tensors, ..self }
            .with_hparam(&format!("{arch}.expert_count"), MetadataValue::U32(experts))
            .with_hparam(
                &format!("{arch}.expert_used_count"),
                MetadataValue::U32(used),
            ))
    }

    /// The same layout of experts with a shared expert `ff` wide in each
    /// block, as Qwen 2 MoE's: its router `ffn_gate_inp_shexp` (one f32
    /// row) and its `ffn_{gate,up,down}_shexp`, after the block's experts.
    pub fn with_shared_expert(self, ff: u64) -> Result<Self> {
        let d = self
            .hparam_u64("embedding_length")
            .ok_or_else(|| Error::BadConfig("the layout has no width".into()))?;
        let mut tensors = Vec::with_capacity(self.tensors.len());
        for t in self.tensors {
            let shared = t
                .name
                .strip_suffix(".ffn_down_exps.weight")
                .map(|blk| (blk.to_string(), t.dtype));
            tensors.push(t);
            if let Some((blk, dtype)) = shared {
                for (n, shape, dtype) in [
                    ("gate_inp_shexp", vec![d], GgmlType::F32),
                    ("gate_shexp", vec![d, ff], dtype),
                    ("up_shexp", vec![d, ff], dtype),
                    ("down_shexp", vec![ff, d], dtype),
                ] {
                    tensors.push(SyntheticTensor {
                        name: format!("{blk}.ffn_{n}.weight"),
                        shape,
                        dtype,
                    });
                }
            }
        }
        if !tensors.iter().any(|t| t.name.ends_with("_shexp.weight")) {
            return Err(Error::BadConfig("the layout has no experts".into()));
        }
        let key = format!("{}.expert_shared_feed_forward_length", self.arch);
        Ok(Self { tensors, ..self }.with_hparam(&key, MetadataValue::U32(ff as u32)))
    }

    /// A built-in layout by short name: `smollm2`, `gemma3`, `gpt-oss-20b`,
    /// `qwen35-0.8b` ([`SyntheticLayout::qwen35_0_8b`]), `lfm2-1.2b`
    /// ([`SyntheticLayout::lfm2_1_2b`]), `falcon-h1-0.5b`
    /// ([`SyntheticLayout::falcon_h1_0_5b`]), `gemma3n-e2b`
    /// ([`SyntheticLayout::gemma3n_e2b`]), `gemma4-e2b`
    /// ([`SyntheticLayout::gemma4_e2b`]), `tiny-ARCH`
    /// ([`SyntheticLayout::tiny`]), `tiny-mixtral` (the tiny llama with
    /// 4 experts, 2 a token) or `tiny-mistral3-moe` (the tiny Ministral 3
    /// so), `tiny-mistral3-bias` (with an attention output bias),
    /// `tiny-llama-bias` and `tiny-phi3-bias` (with query, key and value
    /// biases, Phi 3's in one for its fused matrix), `tiny-llama-wide` (a
    /// llama 256 wide, for the 256-value types),
    /// `tiny-granitemoe-shared` (with an ungated shared expert 64 wide),
    /// `tiny-olmo3` (the tiny OLMo 2 with OLMo 3's window),
    /// `tiny-exaone4-32b` (the tiny EXAONE 4 with the 32B's 64 layers),
    /// `tiny-glm4moe-air` (the tiny GLM-4.5 without Q/K norms, as Air's),
    /// `tiny-deepseek2-lite` (the tiny DeepSeek with V2-Lite's queries) or
    /// `tiny-deepseek2-fused` (with its experts' gate and up in one tensor)
    /// or `tiny-qwen3next-fused` (with each delta net's `ssm_in`),
    /// `tiny-falcon-h1-nonorm` (without its mixers' norms), `tiny-grok-2`
    /// (the tiny Grok with Grok-2's dense network beside its experts),
    /// `tiny-gemma4-31b` (the tiny Gemma 4 shaped as the 31B),
    /// `tiny-gemma4-moe` (and as the 26B A4B),
    /// `tiny-nemotron_h_moe-latent` (its experts in a latent space),
    /// `tiny-stablelm-parallel` (StableLM's blocks without a feed-forward
    /// norm), `tiny-gptneox-sequential` (GPT-NeoX's without
    /// `use_parallel_residual`), `tiny-falcon-40b` (Falcon's blocks with
    /// the 40B's second norm), `tiny-baichuan-13b` (Baichuan's blocks in
    /// the 13B's 40, with ALiBi), `tiny-falcon-mamba` (the tiny Mamba
    /// with Falcon Mamba's norms).
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "smollm2" => Some(Self::smollm2_135m()),
            "gemma3" => Some(Self::gemma3_270m()),
            "gpt-oss-20b" => Self::gpt_oss_20b().ok(),
            "qwen35-0.8b" => Some(Self::qwen35_0_8b()),
            "lfm2-1.2b" => Some(Self::lfm2_1_2b()),
            "falcon-h1-0.5b" => Some(Self::falcon_h1_0_5b()),
            "gemma3n-e2b" => Some(Self::gemma3n_e2b()),
            "gemma4-e2b" => Some(Self::gemma4_e2b()),
            "tiny-mixtral" => Self::tiny("llama").ok()?.with_experts(4, 2).ok(),
            "tiny-mistral3-moe" => Self::tiny("mistral3").ok()?.with_experts(4, 2).ok(),
            "tiny-mistral3-bias" => Some(Self::tiny("mistral3").ok()?.with_output_bias()),
            "tiny-llama-bias" => Some(Self::tiny("llama").ok()?.with_qkv_biases()),
            // A llama 256 wide (tiny BitNet's shape without its sub-norms),
            // whose rows are whole blocks of the 256-value types.
            "tiny-llama-wide" => {
                let mut l = Self::tiny("bitnet").ok()?.renamed("llama");
                l.tensors.retain(|t| !t.name.contains("_sub_norm"));
                Some(l)
            }
            "tiny-phi3-bias" => Some(Self::tiny("phi3").ok()?.with_qkv_biases()),
            "tiny-olmo3" => Self::tiny_olmo3().ok(),
            "tiny-granitemoe-shared" => {
                let mut l = Self::tiny("granitemoe").ok()?.with_shared_expert(64).ok()?;
                // Granite's shared expert is ungated.
                l.tensors
                    .retain(|t| !t.name.ends_with("ffn_gate_inp_shexp.weight"));
                Some(l)
            }
            "tiny-exaone4-32b" => Self::tiny_exaone4_32b().ok(),
            // Gemma 3n's shared KV caches: past llama.cpp's 20 blocks.
            "tiny-gemma3n-shared" => Some(Self::tiny_gemma3n(22)),
            "tiny-gemma4-31b" => Some(Self::tiny_gemma4(true)),
            "tiny-gemma4-moe" => Some(Self::tiny_gemma4_moe()),
            // Granite 4.0 H-Tiny's blocks: experts as wide as the dense
            // ones would be, an ungated shared expert.
            "tiny-granitehybrid-moe" => {
                let mut l = Self::tiny_granite_hybrid()
                    .with_experts(4, 2)
                    .ok()?
                    .with_shared_expert(64)
                    .ok()?;
                l.tensors
                    .retain(|t| !t.name.ends_with("ffn_gate_inp_shexp.weight"));
                Some(l)
            }
            // Nemotron 3 Super's experts: in a latent space 32 wide.
            "tiny-nemotron_h_moe-latent" => {
                let mut l = Self::tiny("nemotron_h_moe").ok()?;
                let mut tensors = Vec::new();
                for mut t in l.tensors {
                    let Some(blk) = t.name.strip_suffix(".ffn_gate_inp.weight") else {
                        if t.name.ends_with(".ffn_up_exps.weight") {
                            t.shape[0] = 32;
                        } else if t.name.ends_with(".ffn_down_exps.weight") {
                            t.shape[1] = 32;
                        }
                        tensors.push(t);
                        continue;
                    };
                    let (blk, d, dtype) = (blk.to_string(), t.shape[0], t.dtype);
                    tensors.push(t);
                    for (n, shape) in [("down", vec![d, 32]), ("up", vec![32, d])] {
                        tensors.push(SyntheticTensor {
                            name: format!("{blk}.ffn_latent_{n}.weight"),
                            shape,
                            dtype,
                        });
                    }
                }
                l.tensors = tensors;
                Some(l.with_hparam("nemotron_h_moe.moe_latent_size", MetadataValue::U32(32)))
            }
            "tiny-grok-2" => Self::tiny_grok(true).ok(),
            // Falcon-H1 without its mixers' norms (as some of its files).
            "tiny-falcon-h1-nonorm" => {
                let mut l = Self::tiny_falcon_h1();
                l.tensors.retain(|t| !t.name.ends_with("ssm_norm.weight"));
                Some(l)
            }
            // Granite 4.0's hybrids without RoPE.
            // StableLM's blocks without a feed-forward norm: the network
            // beside the attention, on its input.
            "tiny-stablelm-parallel" => {
                let mut l = Self::tiny("stablelm").ok()?;
                l.tensors.retain(|t| !t.name.contains(".ffn_norm."));
                Some(l)
            }
            // Falcon 40B's blocks: the attention normed by a norm of its
            // own (`attn_norm_2`), the network by `attn_norm`.
            "tiny-falcon-40b" => {
                let mut l = Self::tiny("falcon").ok()?;
                let mut i = 0;
                while i < l.tensors.len() {
                    let name = &l.tensors[i].name;
                    if name.starts_with("blk.") && name.contains(".attn_norm.") {
                        let mut t = l.tensors[i].clone();
                        t.name = name.replace(".attn_norm.", ".attn_norm_2.");
                        l.tensors.insert(i + 1, t);
                        i += 1;
                    }
                    i += 1;
                }
                Some(l)
            }
            // A BERT reranker's: rank pooling through `cls` and
            // `cls.output` (one score).
            "tiny-bert-rank" => Some(Self::tiny("bert").ok()?.ranking(&[
                ("cls.weight", vec![64, 64]),
                ("cls.bias", vec![64]),
                ("cls.output.weight", vec![64, 1]),
                ("cls.output.bias", vec![1]),
            ])),
            // A Jina reranker's: rank pooling through a one-row `cls`
            // (its whole head; then tanh).
            "tiny-jina-bert-v2-rank" => Some(
                Self::tiny("jina-bert-v2")
                    .ok()?
                    .ranking(&[("cls.weight", vec![64, 1]), ("cls.bias", vec![1])]),
            ),
            // A ModernBERT reranker's (gte-reranker-modernbert's): the
            // tokens' mean through `cls`, GELU, `cls.norm` and `cls.output`.
            "tiny-modern-bert-rank" => Some(Self::tiny("modern-bert").ok()?.ranking(&[
                ("cls.weight", vec![64, 64]),
                ("cls.norm.weight", vec![64]),
                ("cls.output.weight", vec![64, 1]),
                ("cls.output.bias", vec![1]),
            ])),
            // A Qwen 3 reranker's: rank pooling (its last token's state)
            // through `cls.output`'s "yes" and "no" rows, then a softmax.
            "tiny-qwen3-rank" => Some(
                Self::tiny("qwen3")
                    .ok()?
                    .with_hparam(
                        "qwen3.classifier.output_labels",
                        MetadataValue::Array(MetadataArray::String(vec![
                            "yes".into(),
                            "no".into(),
                        ])),
                    )
                    .ranking(&[("cls.output.weight", vec![64, 2])]),
            ),
            // Falcon Mamba's norms of the step, B and C.
            "tiny-falcon-mamba" => Some(
                Self::tiny("mamba")
                    .ok()?
                    .with_hparam("mamba.ssm.dt_b_c_rms", MetadataValue::Bool(true)),
            ),
            // Baichuan 13B's 40 blocks, with ALiBi.
            "tiny-baichuan-13b" => Some(Self::tiny("baichuan").ok()?.grown(40)),
            "tiny-gptneox-sequential" => Some(
                Self::tiny("gptneox")
                    .ok()?
                    .with_hparam("gptneox.use_parallel_residual", MetadataValue::Bool(false)),
            ),
            "tiny-granitehybrid-nope" => Some(Self::tiny_granite_hybrid().with_hparam(
                "granitehybrid.rope.scaling.finetuned",
                MetadataValue::Bool(false),
            )),
            // Qwen3-Next as its older files hold it: each delta net's
            // queries, keys, values and gates in one product.
            "tiny-qwen3next-fused" => {
                let mut l = Self::tiny("qwen3next").ok()?;
                l.tensors.retain(|t| !t.name.ends_with(".attn_gate.weight"));
                for t in &mut l.tensors {
                    if let Some(blk) = t.name.strip_suffix(".attn_qkv.weight") {
                        t.name = format!("{blk}.ssm_in.weight");
                        // (Two query/key heads of 16, four value heads.)
                        t.shape[1] += 64;
                    }
                }
                Some(l)
            }
            "tiny-deepseek2-lite" => Self::tiny_deepseek2(true).ok(),
            "tiny-deepseek2-fused" => {
                let mut l = Self::tiny_deepseek2(false).ok()?;
                // Each expert's gate and up in one tensor, as llama.cpp's
                // converter writes them with --fuse-gate-up-exps.
                l.tensors
                    .retain(|t| !t.name.ends_with("ffn_up_exps.weight"));
                for t in &mut l.tensors {
                    if let Some(blk) = t.name.strip_suffix(".ffn_gate_exps.weight") {
                        t.name = format!("{blk}.ffn_gate_up_exps.weight");
                        t.shape[1] *= 2;
                    }
                }
                Some(l)
            }
            "tiny-glm4moe-air" => {
                let mut l = Self::tiny("glm4moe").ok()?;
                // GLM-4.5 Air's blocks have no Q/K norms.
                l.tensors
                    .retain(|t| !t.name.contains("attn_q_norm") && !t.name.contains("attn_k_norm"));
                Some(l)
            }
            _ => Self::tiny(name.strip_prefix("tiny-")?).ok(),
        }
    }

    /// The layout of an existing model file.
    pub fn of<S: AsRef<[u8]>>(file: &Gguf<S>) -> Result<Self> {
        let md = file.metadata();
        let arch = md.get_str("general.architecture")?.to_string();
        let prefix = format!("{arch}.");
        let mut hparams: Vec<(String, MetadataValue)> = md
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        hparams.sort_by(|a, b| a.0.cmp(&b.0));
        let vocab_size = md.get_str_array("tokenizer.ggml.tokens")?.len();
        let tensors = file
            .tensor_infos()
            .iter()
            .map(|t| SyntheticTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype,
            })
            .collect();
        Ok(Self {
            arch,
            hparams,
            vocab_size,
            tensors,
        })
    }

    fn build(
        s: &Shape,
        hparams: Vec<(String, MetadataValue)>,
        dtype: impl Fn(&str, Option<u32>) -> GgmlType,
    ) -> Self {
        let gemma = s.arch == "gemma3" || s.arch == "gemma2";
        // GLM-4's norms are Gemma's (before and after each part).
        let sandwich = gemma || s.arch == "glm4";
        let olmo2 = s.arch == "olmo2";
        // OLMo 2 and EXAONE 4 norm no block input, each part's output.
        let post_only = olmo2 || s.arch == "exaone4";
        let (q, kv) = (
            u64::from(s.heads) * s.head_dim,
            u64::from(s.kv_heads) * s.head_dim,
        );
        let mut tensors = Vec::new();
        let mut add = |name: String, short: &str, layer: Option<u32>, shape: Vec<u64>| {
            let dt = if shape.len() == 1 {
                GgmlType::F32
            } else {
                dtype(short, layer)
            };
            tensors.push(SyntheticTensor {
                name,
                shape,
                dtype: dt,
            });
        };
        add(
            "token_embd.weight".into(),
            "token_embd.weight",
            None,
            vec![s.d, s.vocab],
        );
        for l in 0..s.layers {
            let mut blk = |n: &str, shape: Vec<u64>| add(format!("blk.{l}.{n}"), n, Some(l), shape);
            if !post_only {
                blk("attn_norm.weight", vec![s.d]);
            }
            // Phi 3's and Ling 2.0's query, key and value are one matrix.
            if s.arch == "phi3" || s.arch == "bailingmoe2" {
                blk("attn_qkv.weight", vec![s.d, q + 2 * kv]);
            } else {
                blk("attn_q.weight", vec![s.d, q]);
                blk("attn_k.weight", vec![s.d, kv]);
                blk("attn_v.weight", vec![s.d, kv]);
            }
            blk("attn_output.weight", vec![q, s.d]);
            if ["qwen2", "gpt-oss", "glm4", "glm4moe", "seed_oss"].contains(&s.arch) {
                blk("attn_q.bias", vec![q]);
                blk("attn_k.bias", vec![kv]);
                blk("attn_v.bias", vec![kv]);
            }
            if s.arch == "gpt-oss" {
                blk("attn_output.bias", vec![s.d]);
                blk("attn_sinks.weight", vec![u64::from(s.heads)]);
            }
            if [
                "gemma3",
                "qwen3",
                "exaone4",
                "glm4moe",
                "dots1",
                "bailingmoe2",
            ]
            .contains(&s.arch)
            {
                blk("attn_q_norm.weight", vec![s.head_dim]);
                blk("attn_k_norm.weight", vec![s.head_dim]);
            }
            // OLMo 2's, OLMoE's and MiniMax-M2's Q/K norms span all heads.
            if olmo2 || s.arch == "olmoe" || s.arch == "minimax-m2" {
                blk("attn_q_norm.weight", vec![q]);
                blk("attn_k_norm.weight", vec![kv]);
            }
            // gpt-oss's and Seed-OSS's feed-forward norm has this name.
            let ffn_norm_named_post = ["gpt-oss", "seed_oss", "glm4moe"].contains(&s.arch);
            if sandwich || post_only || ffn_norm_named_post {
                blk("post_attention_norm.weight", vec![s.d]);
            }
            if !ffn_norm_named_post && !post_only {
                blk("ffn_norm.weight", vec![s.d]);
            }
            // Phi 3's and GLM-4's gate and up are one matrix (gate first).
            if s.arch == "phi3" || s.arch == "glm4" {
                blk("ffn_up.weight", vec![s.d, 2 * s.ff]);
            } else {
                blk("ffn_gate.weight", vec![s.d, s.ff]);
                blk("ffn_up.weight", vec![s.d, s.ff]);
            }
            blk("ffn_down.weight", vec![s.ff, s.d]);
            if sandwich || post_only {
                blk("post_ffw_norm.weight", vec![s.d]);
            }
        }
        add(
            "output_norm.weight".into(),
            "output_norm.weight",
            None,
            vec![s.d],
        );
        Self {
            arch: s.arch.to_string(),
            hparams,
            vocab_size: s.vocab as usize,
            tensors,
        }
    }

    /// Writes a GGUF file of this layout with weights drawn from a seeded
    /// generator (same seed, same bytes) and a byte-fallback SentencePiece
    /// vocabulary of the layout's size, so every tool that needs a
    /// tokenizer runs on it. Matrices hold values of about +-0.05 (scaled
    /// by fan-in so activations stay in range), norm weights about 1, RoPE
    /// frequency factors 1 to 8, a delta net's decay rates (`ssm_a`) -0.05 to
    /// -0.15.
    pub fn write(&self, seed: u64) -> Result<Vec<u8>> {
        if self.vocab_size < 259 {
            return Err(Error::BadConfig(
                "a synthetic vocabulary needs at least 259 tokens".into(),
            ));
        }
        let mut w = GgufWriter::new();
        w.set(
            "general.architecture",
            MetadataValue::String(self.arch.clone()),
        );
        w.set(
            "general.name",
            MetadataValue::String(format!("synthetic {}", self.arch)),
        );
        for (k, v) in &self.hparams {
            w.set(k.clone(), v.clone());
        }
        let mut rng = SplitMix(seed);
        if !self
            .hparams
            .iter()
            .any(|(k, _)| k == "tokenizer.ggml.tokens")
        {
            self.write_vocab(&mut w);
        }
        for t in &self.tensors {
            let n: u64 = t.shape.iter().product();
            let n = usize::try_from(n)
                .map_err(|_| Error::BadConfig(format!("tensor {} is too large", t.name)))?;
            let bias = t.name.contains("bias");
            // (Vectors stored as one row, such as Mamba-2's `[1, heads]`
            // `ssm_a` and its norm by groups, are vectors too.)
            // (Mamba's decay rates are a matrix, a channel's a row.)
            let vector = t.shape.iter().filter(|&&d| d > 1).count() <= 1
                || t.name.ends_with("_norm.weight")
                || t.name.ends_with(".ssm_a");
            let matrix = !(t.shape.len() == 1 || bias || vector);
            if matrix && n > MATRIX_CHUNK {
                // Large matrices a chunk of whole blocks at a time (the same
                // values and bytes, without all of them as f32 at once).
                let fan_in = t.shape[0] as f32;
                let scale = (3.0 / fan_in).sqrt().min(0.5);
                let mut bytes = Vec::new();
                let mut values = Vec::with_capacity(MATRIX_CHUNK);
                let mut left = n;
                while left > 0 {
                    let take = left.min(MATRIX_CHUNK);
                    values.clear();
                    values.extend((0..take).map(|_| scale * rng.uniform()));
                    bytes.extend(match quantized_here(t.dtype) {
                        true => quant::quantize_row_to_vec(t.dtype, &values)?,
                        // (A uniform's root mean square.)
                        false => random_blocks(t.dtype, take, scale / 3f32.sqrt(), &mut rng)?,
                    });
                    left -= take;
                }
                w.add_tensor(&t.name, t.dtype, &t.shape, bytes)?;
                continue;
            }
            // Gemma 4's proportional RoPE: a quarter of the pairs turned.
            let proportional = self.arch == "gemma4" && t.name == "rope_freqs.weight";
            let values: Vec<f32> = if proportional {
                (0..n).map(|i| if i < n / 4 { 1.0 } else { 1e30 }).collect()
            } else if !matrix {
                let factors = t.name.starts_with("rope_");
                // A delta net's decay rates, negative and small, so that
                // its state fades over tens of tokens.
                let decay = t.name.ends_with(".ssm_a");
                (0..n)
                    .map(|_| {
                        let u = rng.uniform();
                        if bias {
                            0.1 * u
                        } else if decay {
                            -0.1 * (1.0 + 0.5 * u)
                        } else if factors {
                            4.5 + 3.5 * u
                        } else {
                            1.0 + 0.2 * u
                        }
                    })
                    .collect()
            } else {
                let fan_in = t.shape[0] as f32;
                // (Gemma 3n's AltUp coefficients small, as trained ones
                // are: its 22 blocks' streams would mix chaotically.)
                let scale = match t.name.ends_with("_coef.weight") {
                    true => 0.05,
                    false => (3.0 / fan_in).sqrt().min(0.5),
                };
                (0..n).map(|_| scale * rng.uniform()).collect()
            };
            let bytes = match quantized_here(t.dtype) {
                true => quant::quantize_row_to_vec(t.dtype, &values)?,
                // (Uniform values' root mean square, for the lattice
                // types.)
                false => {
                    let rms = values.iter().map(|x| x * x).sum::<f32>() / n as f32;
                    random_blocks(t.dtype, n, rms.sqrt(), &mut rng)?
                }
            };
            w.add_tensor(&t.name, t.dtype, &t.shape, bytes)?;
        }
        Ok(w.to_bytes()?)
    }

    /// The synthetic vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte
    /// tokens, then `▁tN` up to the layout's size (SentencePiece's kind).
    fn write_vocab(&self, w: &mut GgufWriter) {
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        let specials = tokens.len();
        tokens.extend((specials..self.vocab_size).map(|i| format!("\u{2581}t{i}")));
        let scores: Vec<f32> = (0..tokens.len()).map(|i| -(i as f32)).collect();
        let types: Vec<i32> = (0..tokens.len())
            .map(|i| match i {
                0 => 2,
                1 | 2 => 3,
                i if i < specials => 6,
                _ => 1,
            })
            .collect();
        let s = |v: &str| MetadataValue::String(v.into());
        w.set("tokenizer.ggml.model", s("llama"));
        w.set(
            "tokenizer.ggml.tokens",
            MetadataValue::Array(MetadataArray::String(tokens)),
        );
        w.set(
            "tokenizer.ggml.scores",
            MetadataValue::Array(MetadataArray::F32(scores)),
        );
        w.set(
            "tokenizer.ggml.token_type",
            MetadataValue::Array(MetadataArray::I32(types)),
        );
        w.set("tokenizer.ggml.bos_token_id", MetadataValue::U32(1));
        w.set("tokenizer.ggml.eos_token_id", MetadataValue::U32(2));
        w.set("tokenizer.ggml.unknown_token_id", MetadataValue::U32(0));
    }
}

/// A LoRA adapter of seeded values for a model file, in llama.cpp's GGUF
/// adapter format: for tests (`scripts/gen_lora_fixtures.py` writes the
/// same values for llama.cpp), and to measure what adapters cost.
///
/// Value `i` of tensor `name` is `amplitude * u`, `u` the `i + 1`-th
/// draw in `[-1, 1)` of SplitMix64 seeded with the seed XOR the FNV-1a
/// hash of the name; `lora_a`'s amplitude is `sqrt(3 / cols)`, so that
/// `A x` keeps the size of `x`.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticLora {
    /// The rank of every matrix's update.
    pub rank: usize,
    /// `adapter.lora.alpha`.
    pub alpha: f32,
    /// The matrices of every block it changes (`attn_q`, `attn_k`,
    /// `attn_v`, `attn_output`, `ffn_gate`, `ffn_up`, `ffn_down`), and
    /// `output` for the output matrix.
    pub targets: Vec<String>,
    /// Type of the `lora_a` and `lora_b` tensors.
    pub dtype: GgmlType,
    /// Largest magnitude of `lora_b`'s values.
    pub amplitude: f32,
}

impl SyntheticLora {
    /// Rank `rank` and alpha `alpha` over every matrix of every block, f16,
    /// `lora_b` values up to 0.02.
    pub fn new(rank: usize, alpha: f32) -> Self {
        Self {
            rank,
            alpha,
            targets: crate::lora::TARGETS.iter().map(|t| t.to_string()).collect(),
            dtype: GgmlType::F16,
            amplitude: 0.02,
        }
    }

    /// The adapter's GGUF file for the model in `base`.
    pub fn write<S: AsRef<[u8]>>(&self, base: &Gguf<S>, seed: u64) -> Result<Vec<u8>> {
        self.write_for(&SyntheticLayout::of(base)?, seed)
    }

    /// The adapter's GGUF file for a model of layout `base`.
    pub fn write_for(&self, base: &SyntheticLayout, seed: u64) -> Result<Vec<u8>> {
        let arch = base.arch.as_str();
        let layers = base
            .hparam_u64("block_count")
            .ok_or_else(|| Error::BadConfig(format!("the layout has no {arch}.block_count")))?;
        let mut w = GgufWriter::new();
        let s = |v: &str| MetadataValue::String(v.into());
        w.set("general.architecture", s(arch));
        w.set("general.type", s("adapter"));
        w.set("general.name", s("synthetic lora"));
        w.set("adapter.type", s("lora"));
        w.set("adapter.lora.alpha", MetadataValue::F32(self.alpha));
        let mut names = Vec::new();
        for i in 0..layers {
            for t in self.targets.iter().filter(|t| *t != "output") {
                names.push(format!("blk.{i}.{t}.weight"));
            }
        }
        if self.targets.iter().any(|t| t == "output") {
            names.push("output.weight".into());
        }
        for name in names {
            let shape = &base
                .tensors
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| realm_core::Error::TensorNotFound(name.clone()))?
                .shape;
            let (cols, rows) = (shape[0], shape[1]);
            let r = self.rank as u64;
            let a_amp = (3.0 / cols as f32).sqrt();
            for (half, dims, amp) in [
                ("lora_a", [cols, r], a_amp),
                ("lora_b", [r, rows], self.amplitude),
            ] {
                let full = format!("{name}.{half}");
                let n = usize::try_from(dims[0] * dims[1])
                    .map_err(|_| Error::BadConfig(format!("tensor {full} is too large")))?;
                let mut rng = SplitMix(seed ^ fnv1a(&full));
                let values: Vec<f32> = (0..n).map(|_| amp * rng.uniform()).collect();
                let bytes = quant::quantize_row_to_vec(self.dtype, &values)?;
                w.add_tensor(&full, self.dtype, &dims, bytes)?;
            }
        }
        Ok(w.to_bytes()?)
    }
}

/// The 64-bit FNV-1a hash of `s`'s bytes.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn u32_kv(k: &str, v: u32) -> (String, MetadataValue) {
    (k.to_string(), MetadataValue::U32(v))
}

fn f32_kv(k: &str, v: f32) -> (String, MetadataValue) {
    (k.to_string(), MetadataValue::F32(v))
}

/// Values of a large matrix made and quantized at a time: a multiple of
/// every block size (256).
const MATRIX_CHUNK: usize = 1 << 20;

/// SplitMix64: a small seeded generator (quality is not the point).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Whether synthetic weights of `dtype` are quantized from random values:
/// every type Realm writes but the IQ1-IQ3 lattices, whose quantizers
/// search the lattices (some millions of weights a second, minutes for a
/// billion; and IQ1_S, IQ2_XXS and IQ2_XS only with an importance matrix).
fn quantized_here(dtype: GgmlType) -> bool {
    use GgmlType as T;
    let lattice = matches!(
        dtype,
        T::IQ1_S | T::IQ1_M | T::IQ2_XXS | T::IQ2_XS | T::IQ2_S | T::IQ3_XXS | T::IQ3_S
    );
    quant::can_quantize(dtype) && !lattice
}

/// `n` weights of a lattice type (IQ1-IQ3): random blocks (random points,
/// signs and scales), each block's f16 scale set so that its values' root
/// mean square is `rms`.
fn random_blocks(dtype: GgmlType, n: usize, rms: f32, rng: &mut SplitMix) -> Result<Vec<u8>> {
    let (size, len) = (dtype.type_size(), dtype.block_size());
    let mut bytes = Vec::with_capacity(n / len * size);
    for _ in 0..n / len {
        let mut block: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
        // The scale: f16 bytes 0-1, or IQ1_M's own.
        let set = |block: &mut [u8], d: f16| match dtype {
            GgmlType::IQ1_M => bytemuck::from_bytes_mut::<BlockIQ1M>(block).set_d(d),
            _ => block[..2].copy_from_slice(&d.to_bits().to_le_bytes()),
        };
        set(&mut block, f16::ONE);
        let v = quant::dequantize_row_to_vec(dtype, &block)?;
        let r = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        set(
            &mut block,
            f16::from_f32(if r > 0.0 { rms / r } else { 0.0 }),
        );
        bytes.extend(block);
    }
    Ok(bytes)
}
