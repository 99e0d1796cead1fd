//! The transformer: weights borrowed from a GGUF file, a forward pass
//! generic over the backend, and a per-sequence [`Session`] (KV cache and
//! scratch) so that a decode step allocates nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use realm_core::backend::{
    AttentionParams, Backend, BackendError, KvDtype, KvSpan, QkNorm, RopeParams, StepInputs,
    WeightInfo, Xielu,
};
use realm_core::gguf::Gguf;
use realm_core::{quant, TensorView};

mod altup;
mod delta;
mod mamba;
mod mamba1;
mod mla;
mod moe;
mod ple;
mod recurrent;
mod shift;
mod shortconv;
mod state;

pub use self::shift::ContextShift;

use self::altup::{AltUp, AltUpBlock, AltUpScratch};
use self::delta::{DeltaNet, DeltaScratch};
use self::mamba::{Mamba, MambaScratch};
use self::mamba1::{Mamba1, Mamba1Scratch};
use self::mla::{Mla, MlaScratch};
use self::moe::{BesideMoe, Moe, MoeBuffers, MoeHost};
use self::ple::{Ple, PleBlock, PleScratch};
use self::recurrent::Recurrent;
use self::shortconv::{ConvScratch, ShortConv};
use crate::config::{Architecture, GateActivation, ModelConfig, MoeConfig};
use crate::embedding::Pooling;
use crate::imatrix::Collector;
use crate::lora::{self, Dims, Lora, LoraId, LoraInfo, LoraRun, LoraScratch, Product, Target};
use crate::record::{Recorded, StepKey};
use crate::{Error, Result};
use realm_core::imatrix::Imatrix;

/// Weight matrices that multiply the same input, in order, as runs: each
/// run one matrix, or consecutive matrices of one type stacked into one by
/// the backend ([`MatMulOps::stack`]), with the number of matrices it
/// covers.
///
/// [`MatMulOps::stack`]: realm_core::backend::MatMulOps::stack
#[derive(Debug)]
struct Group<W> {
    runs: Vec<(W, usize)>,
}

/// One transformer block's weights.
#[derive(Debug)]
struct Layer<'a, B: Backend + 'a> {
    /// The attention's input norm (none for OLMo 2).
    attn_norm: Option<B::Buffer>,
    /// Its bias (a LayerNorm's, where the file has one).
    attn_norm_b: Option<B::Buffer>,
    /// Query, key and value projections.
    qkv: Group<B::Weight<'a>>,
    /// The file's fused matrices (`attn_qkv`; Phi 3's `ffn_up` of gate and
    /// up), whose inputs an importance matrix takes under their names.
    fused: Fused,
    /// The mixer's output product (none for a feed-forward block alone).
    wo: Option<B::Weight<'a>>,
    bq: Option<B::Buffer>,
    bk: Option<B::Buffer>,
    bv: Option<B::Buffer>,
    /// The attention output's bias (gpt-oss).
    bo: Option<B::Buffer>,
    /// One attention sink per query head (gpt-oss's `attn_sinks`).
    sinks: Option<Vec<f32>>,
    q_norm: Option<B::Buffer>,
    k_norm: Option<B::Buffer>,
    /// The Q/K norms' biases, where they are LayerNorms (Jina BERT v2's).
    qk_norm_b: [Option<B::Buffer>; 2],
    post_attn_norm: Option<B::Buffer>,
    /// The feed-forward block's input norm (none for OLMo 2, nor for
    /// Phi 2's and Command R's blocks, whose network reads the
    /// attention's normed input).
    ffn_norm: Option<B::Buffer>,
    /// Its bias (a LayerNorm's, where the file has one).
    ffn_norm_b: Option<B::Buffer>,
    /// Whether the feed-forward network runs beside the attention
    /// ([`ModelConfig::parallel_ffn`]).
    parallel: bool,
    ffn: Ffn<'a, B>,
    post_ffn_norm: Option<B::Buffer>,
    /// Latent attention's weights (DeepSeek's), in place of `qkv`.
    mla: Option<Mla<'a, B>>,
    /// A delta net's weights (Qwen 3.5's), in place of the attention's
    /// (its output product is `wo`).
    delta: Option<DeltaNet<'a, B>>,
    /// A short convolution's weights (LFM2's), in place of the
    /// attention's (its output product is `wo`).
    conv: Option<ShortConv<'a, B>>,
    /// A Mamba-2 mixer's weights (Granite 4.0's hybrids), in place of the
    /// attention's (its output product is `wo`).
    mamba: Option<Mamba<'a, B>>,
    /// A Mamba mixer's weights (the first Mamba's), in place of the
    /// attention's (its output product is `wo`).
    mamba1: Option<Mamba1<'a, B>>,
    /// The block's layer of the KV cache, which only attention blocks
    /// have.
    kv_slot: usize,
    /// Whether that layer is an earlier block's, which stores the keys
    /// and values this block reads (Gemma 3n's last blocks): the block
    /// makes queries alone.
    kv_shared: bool,
    /// A norm of each value head (ones: Gemma 3n's, without weights).
    v_norm: Option<B::Buffer>,
    /// Gemma 3n's weights of the block's streams and LAuReL.
    altup: Option<AltUpBlock<'a, B>>,
    /// The weights of the block's own input (Gemma 3n's, Gemma 4's).
    ple: Option<PleBlock<'a, B>>,
    /// Whether the block's keys are its values (Gemma 4's global blocks
    /// without a value matrix): its products make queries and keys.
    v_from_k: bool,
    /// A factor on the block's output (Gemma 4's `layer_output_scale`).
    out_scale: Option<f32>,
    /// Experts beside the dense feed-forward network (Gemma 4's 26B A4B).
    beside: Option<BesideMoe<'a, B>>,
    /// An encoder's norms of the residual stream after the attention's
    /// output joins it and after the network's (BERT's `attn_output_norm`
    /// and `layer_output_norm`), each a LayerNorm's weight and bias.
    out_norms: Option<[(B::Buffer, B::Buffer); 2]>,
    /// Jina BERT v2's second norm after the attention (`attn_norm_2`): the
    /// block's input joins the stream again, then this LayerNorm.
    attn_norm_2: Option<(B::Buffer, Option<B::Buffer>)>,
    /// A dense network's biases, where it has them (Jina BERT v2's): gate,
    /// up (each half of a fused `ffn_up.bias`) and down.
    ffn_b: [Option<B::Buffer>; 3],
    /// BitNet's RMSNorms of the attention's output before its product
    /// (`attn_sub_norm`) and of the network's gated values before `ffn_down`
    /// (`ffn_sub_norm`).
    sub_norms: [Option<B::Buffer>; 2],
}

/// Which of a block's products are one matrix in the file.
#[derive(Debug, Clone, Copy, Default)]
struct Fused {
    qkv: bool,
    gate_up: bool,
}

/// A block's feed-forward network.
#[derive(Debug)]
enum Ffn<'a, B: Backend + 'a> {
    /// Gate and up projections (a group), and the down projection.
    Dense(Group<B::Weight<'a>>, B::Weight<'a>),
    /// A mixture of experts.
    Moe(Moe<'a, B>),
    /// An up projection, an activation and a down projection, no gate
    /// (Nemotron-H's squared ReLUs, StarCoder 2's GELUs with biases).
    Up(UpFfn<'a, B>),
    /// None: the block is a mixer alone (Nemotron-H's).
    None,
}

/// A dense network's gate and up projections, down projection and
/// biases (gate, up, down), as [`Model::dense_ffn`] runs them.
type DenseFfn<'r, 'a, B> = (
    &'r Group<<B as realm_core::backend::MatMulOps>::Weight<'a>>,
    &'r <B as realm_core::backend::MatMulOps>::Weight<'a>,
    &'r [Option<<B as realm_core::backend::BackendCore>::Buffer>; 3],
);

/// A feed-forward network without a gate: `down(act(up x + up_b)) +
/// down_b`.
#[derive(Debug)]
struct UpFfn<'a, B: Backend + 'a> {
    up: B::Weight<'a>,
    down: B::Weight<'a>,
    act: UpAct,
    up_b: Option<B::Buffer>,
    down_b: Option<B::Buffer>,
}

/// The activation of a network without a gate.
#[derive(Debug, Clone, Copy)]
enum UpAct {
    /// StarCoder 2's, Phi 2's, GPT-NeoX's...
    Gelu,
    /// Nemotron's and Arcee's.
    SquaredRelu,
    /// Apertus's, with the block's coefficients.
    Xielu(Xielu),
}

/// An embedding model's two projections after pooling: `d` values to
/// `dense_2`'s rows (plus its bias), then back to `d` by `dense_3`.
#[derive(Debug)]
struct DenseOut<'a, B: Backend + 'a> {
    dense_2: B::Weight<'a>,
    dense_2_b: Option<B::Buffer>,
    dense_3: B::Weight<'a>,
}

/// A reranker's head over the pooled embedding (`pooling`: the first
/// token's state, the tokens' mean (ModernBERT's by default) or the last
/// token's (a decoder's)): `cls` (`d` to `d`, or to one score as Jina's
/// rerankers have it; then tanh, or ModernBERT's GELU and LayerNorm
/// `norm`) where the file has it, then `cls.output` (to one score a label)
/// where it has that, then a softmax over the labels where `softmax` (Qwen
/// 3's rerankers: their "yes" and "no" rows of the output matrix).
#[derive(Debug)]
struct RankHead<'a, B: Backend + 'a> {
    pooling: Pooling,
    cls: Option<(B::Weight<'a>, Option<B::Buffer>)>,
    gelu: bool,
    norm: Option<B::Buffer>,
    out: Option<(B::Weight<'a>, Option<B::Buffer>)>,
    softmax: bool,
}

/// A transformer whose weights stay in the GGUF file (borrowed, still
/// quantized) and whose math runs on backend `B`.
///
/// Many [`Session`]s can run on one `Model` at once: the model is read-only.
/// Norm weights and biases are dequantized at load and handed to the
/// backend as buffers (on a GPU they are uploaded once).
#[derive(Debug)]
pub struct Model<'a, B: Backend> {
    /// Unique for the life of the process (part of a recording's key: a
    /// recording holds this model's weights' addresses).
    id: u64,
    /// Identifies the file (see [`Model::fingerprint`]).
    fingerprint: u64,
    backend: &'a B,
    config: ModelConfig,
    embed: B::Weight<'a>,
    /// Learned position embeddings (GPT-2's `position_embd`), added to
    /// the tokens', if the model has them.
    pos_embed: Option<B::Weight<'a>>,
    /// A norm of the embeddings (BLOOM's `token_embd_norm`) and its bias,
    /// if the model has one.
    embed_norm: Option<(B::Buffer, Option<B::Buffer>)>,
    /// The first token type's embedding (BERT's `token_types` row 0: every
    /// token is of "sentence A", as llama.cpp takes them), added to every
    /// token's, if the model has them.
    token_type: Option<B::Buffer>,
    layers: Vec<Layer<'a, B>>,
    /// The output norm (none for BERT's blocks, which end normed).
    output_norm: Option<B::Buffer>,
    /// An embedding model's projections of its pooled embeddings
    /// (EmbeddingGemma's `dense_2`, with its bias where the file has one,
    /// then `dense_3`), if it has them.
    dense_out: Option<DenseOut<'a, B>>,
    /// A reranker's classification head (BERT's `cls`, then
    /// `cls.output`, each with its bias where the file has one), if the
    /// model has one.
    rank_head: Option<RankHead<'a, B>>,
    /// Its bias (a LayerNorm's, where the file has one).
    output_norm_b: Option<B::Buffer>,
    output: B::Weight<'a>,
    /// A bias on the logits (Phi 2's `output.bias`), if any.
    output_b: Option<B::Buffer>,
    /// ALiBi's slope for each query head, if the model has it.
    alibi_slopes: Option<Vec<f32>>,
    /// RoPE frequency factors (Llama 3.1's `rope_freqs.weight`, or
    /// LongRoPE's short ones, times YaRN's pair divisors), if any.
    rope_factors: Option<Vec<f32>>,
    /// LongRoPE's long factors, for sessions longer than the original
    /// context ([`ModelConfig::rope_original_context`]).
    rope_factors_long: Option<Vec<f32>>,
    /// Whether the file has its own output matrix (not tied to the
    /// embeddings): an adapter may change it.
    has_output: bool,
    /// Gemma 3n's weights into the streams and out of them.
    altup: Option<AltUp<'a, B>>,
    /// The weights of each block's own input (Gemma 3n's, Gemma 4's).
    ple: Option<Ple<'a, B>>,
    /// LoRA adapters, in the order they were added.
    loras: Vec<Lora<'a, B>>,
    /// What a row of their scratch needs.
    lora_dims: Dims,
}

/// The error of a model whose scratch lacks room for `what`.
pub(crate) fn no_room(what: &str) -> Error {
    Error::BadConfig(format!("no room for a {what}"))
}

/// `t` as a weight of `backend`, checked: a type the backend multiplies,
/// `rows` rows of `cols` values.
pub(crate) fn checked_weight<'a, B: Backend>(
    backend: &B,
    t: &TensorView<'a>,
    rows: usize,
    cols: usize,
) -> Result<B::Weight<'a>> {
    if !backend.supports_matmul(t.dtype()) {
        return Err(Error::UnsupportedWeight {
            tensor: t.name().to_string(),
            dtype: t.dtype(),
            backend: backend.name().to_string(),
        });
    }
    let w = backend.weight(t)?;
    if (w.rows(), w.cols()) != (rows, cols) {
        return Err(Error::BadTensorShape {
            tensor: t.name().to_string(),
            expected: vec![cols as u64, rows as u64],
            got: t.shape().to_vec(),
        });
    }
    Ok(w)
}

/// The `count` matrices of a `[cols, rows, count]` tensor `t` (a model's
/// experts, or its heads' own matrices) as weights of `backend`: its
/// slices, each `rows` rows of `cols` values of the file's bytes.
pub(crate) fn slices<'a, B: Backend>(
    backend: &B,
    t: &TensorView<'a>,
    rows: usize,
    cols: usize,
    count: usize,
) -> Result<Vec<B::Weight<'a>>> {
    let want = [cols as u64, rows as u64, count as u64];
    if t.shape() != want {
        return Err(Error::BadTensorShape {
            tensor: t.name().to_string(),
            expected: want.to_vec(),
            got: t.shape().to_vec(),
        });
    }
    let bytes = t.data().len() / count;
    (0..count)
        .map(|e| {
            let data = &t.data()[e * bytes..(e + 1) * bytes];
            let view =
                TensorView::new(t.name(), t.dtype(), &t.shape()[..2], data).ok_or_else(|| {
                    Error::BadConfig(format!("{}: a slice is not whole rows", t.name()))
                })?;
            checked_weight(backend, &view, rows, cols)
        })
        .collect()
}

fn f32_vec(t: &TensorView<'_>) -> Result<Vec<f32>> {
    let mut v = vec![0f32; t.n_elements() as usize];
    quant::dequantize(t.dtype(), t.data(), &mut v)?;
    Ok(v)
}

impl<'a, B: Backend> Model<'a, B> {
    /// Loads the model in `file` for `backend`. Fails, naming it, on an
    /// architecture, tensor or tensor type the code does not know.
    pub fn load<S: AsRef<[u8]>>(file: &'a Gguf<S>, backend: &'a B) -> Result<Self> {
        let config = ModelConfig::from_metadata(file.metadata())?;
        let tensor = |name: &str| file.tensor(name).map_err(Error::from);
        let weight = |name: &str, rows: usize, cols: usize| -> Result<B::Weight<'a>> {
            checked_weight(backend, &file.tensor(name)?, rows, cols)
        };
        // Weights the backend stacks, if it does: each run of one type.
        let group =
            |names: &[String], rows: &[usize], cols: usize| -> Result<Group<B::Weight<'a>>> {
                let views = names
                    .iter()
                    .map(|n| tensor(n))
                    .collect::<Result<Vec<_>>>()?;
                let fits = |i: usize| {
                    backend.supports_matmul(views[i].dtype())
                        && views[i].shape() == [cols as u64, rows[i] as u64]
                };
                let mut runs = Vec::new();
                let mut i = 0;
                while i < views.len() {
                    let mut end = i + 1;
                    while end < views.len() && views[end].dtype() == views[i].dtype() {
                        end += 1;
                    }
                    if end - i > 1 && (i..end).all(fits) {
                        if let Some(w) = backend.stack(&views[i..end])? {
                            if (w.rows(), w.cols()) == (rows[i..end].iter().sum(), cols) {
                                runs.push((w, end - i));
                                i = end;
                                continue;
                            }
                        }
                    }
                    runs.push((weight(&names[i], rows[i], cols)?, 1));
                    i += 1;
                }
                Ok(Group { runs })
            };
        let norm = |name: &str, len: usize| -> Result<B::Buffer> {
            let v = f32_vec(&tensor(name)?)?;
            if v.len() != len {
                return Err(Error::BadTensorShape {
                    tensor: name.to_string(),
                    expected: vec![len as u64],
                    got: vec![v.len() as u64],
                });
            }
            Ok(backend.upload(&v)?)
        };
        let optional_norm = |name: &str, len: usize| -> Result<Option<B::Buffer>> {
            match file.tensor(name) {
                Ok(_) => norm(name, len).map(Some),
                Err(realm_core::Error::TensorNotFound(_)) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        let c = &config;
        let gemma = matches!(
            c.arch,
            Architecture::Gemma2 | Architecture::Gemma3 | Architecture::GemmaEmbedding
        );
        let qwen = matches!(c.arch, Architecture::Qwen2 | Architecture::Qwen2Moe);
        let gpt_oss = c.arch == Architecture::GptOss;
        if gpt_oss && !backend.supports_sinks() {
            return Err(Error::UnsupportedOp {
                what: "attention sinks",
                backend: backend.name().to_string(),
            });
        }
        if c.alibi.is_some() && !backend.supports_alibi() {
            return Err(Error::UnsupportedOp {
                what: "ALiBi",
                backend: backend.name().to_string(),
            });
        }
        if c.attn_chunk.is_some() && !backend.supports_chunks() {
            return Err(Error::UnsupportedOp {
                what: "chunked attention",
                backend: backend.name().to_string(),
            });
        }
        // Llama 4's Q/K norms have no weights (but Maverick's 128 experts
        // have none at all), on the layers with RoPE: ones.
        let weightless_qk =
            c.arch == Architecture::Llama4 && c.moe.as_ref().is_some_and(|m| m.experts != 128);
        let ones = |len: usize| backend.upload(&vec![1.0; len]);
        let qk_norms = matches!(
            c.arch,
            Architecture::Gemma3
                | Architecture::GemmaEmbedding
                | Architecture::Gemma3n
                | Architecture::Gemma4
                | Architecture::Qwen35
                | Architecture::Qwen35Moe
                | Architecture::Qwen3Next
                | Architecture::HunyuanMoe
                | Architecture::HunyuanDense
                | Architecture::Lfm2
                | Architecture::Lfm2Moe
                | Architecture::Qwen3
                | Architecture::Qwen3Moe
                | Architecture::Qwen3Vl
                | Architecture::Qwen3VlMoe
                | Architecture::Olmo2
                | Architecture::Olmoe
                | Architecture::Exaone4
                | Architecture::MinimaxM2
                | Architecture::Dots1
                | Architecture::BailingMoe2
                | Architecture::Apertus
                | Architecture::Maincoder
        );
        // GLM-4.5's 355B has Q/K norms, its Air none.
        // (Jina BERT v2's where the file has them.)
        let qk_norms_if_any = matches!(c.arch, Architecture::Glm4Moe | Architecture::JinaBertV2);
        // OLMo 2's and EXAONE 4's norms: after each part of a block
        // (OLMo 2's Q/K norms over all heads).
        let post_norms = gemma
            || c.altup.is_some()
            || c.gemma4.is_some()
            || matches!(
                c.arch,
                Architecture::Olmo2
                    | Architecture::Exaone4
                    | Architecture::Glm4
                    | Architecture::Grok
            );
        let grok = c.arch == Architecture::Grok;
        let d = c.d_model;
        let mut layers = Vec::with_capacity(c.n_layers);
        let mut kv_slot = 0;
        for i in 0..c.n_layers {
            // (Gemma 4's global blocks have heads of their own, and its
            // blocks may differ in width.)
            let hd = c.layer_heads(i).head_dim;
            let (q, kv, ff) = (c.layer_q_dim(i), c.layer_kv_dim(i), c.layer_ffn_dim(i));
            let (q_norm_len, k_norm_len) = match c.qk_norm_whole {
                true => (q, kv),
                false => (hd, hd),
            };
            // Qwen 3.5's gated attention: each head's query and gate.
            let q_rows = if c.attn_output_gate { 2 * q } else { q };
            let n = |s: &str| format!("blk.{i}.{s}");
            let recurrent = c.is_recurrent(i);
            let ffn_only = c.is_ffn_only(i);
            // (Falcon-H1's blocks attend beside their mixers.)
            let attends = c.has_attention(i);
            // Nemotron-H's blocks are one part each.
            let mixer_only = c.ffn_blocks.is_some() && !ffn_only;
            let deci_ffn_only = c.deci_block(i) == Some(crate::config::DeciBlock::NoAttention);
            // Gemma 3n's last blocks read earlier ones' caches.
            let kv_source = c.kv_source(i);
            // Qwen 2's query, key and value biases; any other's where the
            // file has them (as llama.cpp reads them for every
            // architecture), or in one for a fused matrix.
            let bias = |s: &str, len| {
                if qwen {
                    norm(&n(s), len).map(Some)
                } else {
                    optional_norm(&n(s), len)
                }
            };
            let must = |s: &str, len, needed: bool| {
                if needed {
                    norm(&n(s), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            // Query, key and value in one matrix, where the file has them so.
            let has = |s: &str| file.tensor(&n(s)).is_ok();
            // (Gemma 4's global blocks may have keys for values.)
            let v_from_k = c.gemma4.is_some()
                && attends
                && kv_source.is_none()
                && !has("attn_qkv.weight")
                && !has("attn_v.weight");
            let fused = Fused {
                qkv: has("attn_qkv.weight"),
                gate_up: matches!(
                    c.arch,
                    Architecture::Phi3
                        | Architecture::Glm4
                        | Architecture::ChatGlm
                        | Architecture::NeoBert
                        | Architecture::ModernBert
                        | Architecture::JinaBertV2
                ) && !has("ffn_gate.weight"),
            };
            let qkv = if c.mla.is_some() || !attends {
                Group { runs: Vec::new() }
            } else if kv_source.is_some() {
                Group {
                    runs: vec![(weight(&n("attn_q.weight"), q_rows, d)?, 1)],
                }
            } else if fused.qkv {
                let w = weight(&n("attn_qkv.weight"), q + 2 * kv, d)?;
                Group { runs: vec![(w, 3)] }
            } else if v_from_k {
                group(&[n("attn_q.weight"), n("attn_k.weight")], &[q_rows, kv], d)?
            } else {
                group(
                    &[n("attn_q.weight"), n("attn_k.weight"), n("attn_v.weight")],
                    &[q_rows, kv, kv],
                    d,
                )?
            };
            let (bq, bk, bv) = match file.tensor(&n("attn_qkv.bias")) {
                Ok(t) if fused.qkv => {
                    let v = f32_vec(&t)?;
                    if v.len() != q + 2 * kv {
                        return Err(Error::BadTensorShape {
                            tensor: n("attn_qkv.bias"),
                            expected: vec![(q + 2 * kv) as u64],
                            got: vec![v.len() as u64],
                        });
                    }
                    let (vq, vkv) = v.split_at(q);
                    let (vk, vv) = vkv.split_at(kv);
                    let up = |x: &[f32]| backend.upload(x).map(Some);
                    (up(vq)?, up(vk)?, up(vv)?)
                }
                _ if !attends => (None, None, None),
                _ => (
                    bias("attn_q.bias", q)?,
                    bias("attn_k.bias", kv)?,
                    bias("attn_v.bias", kv)?,
                ),
            };
            let delta = match &c.delta_net {
                Some(dn) if recurrent => Some(DeltaNet::load(file, backend, i, c, dn)?),
                _ => None,
            };
            let conv = match &c.short_conv {
                Some(sc) if recurrent => Some(ShortConv::load(file, backend, i, c, sc)?),
                _ => None,
            };
            let mamba1 = match &c.mamba1 {
                Some(m) => Some(Mamba1::load(file, backend, i, c, m)?),
                None => None,
            };
            let mamba = match &c.mamba {
                Some(m) if recurrent => Some(Mamba::load(file, backend, i, c, m)?),
                _ => None,
            };
            // (Granite 4.0's dense blocks may have biases in llama.cpp's
            // loader, which no file has; refused by name, not ignored.)
            for bias in ["ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"] {
                let hybrid = matches!(
                    c.arch,
                    Architecture::GraniteHybrid
                        | Architecture::FalconH1
                        | Architecture::MiniCpm
                        | Architecture::Refact
                        | Architecture::Deci
                );
                if hybrid && has(bias) {
                    return Err(Error::BadConfig(format!(
                        "{} (feed-forward biases) is not supported",
                        n(bias)
                    )));
                }
            }
            // LayerNorms' biases, where the file has them.
            let norm_bias = |s: &str| match c.layer_norm {
                true => optional_norm(&n(s), d),
                false => Ok(None),
            };
            // (StableLM 2 12B's and Command R+'s Q/K norms are LayerNorms
            // with a weight a head, MPT's over all heads.)
            if c.layer_norm
                && c.arch != Architecture::JinaBertV2
                && (has("attn_q_norm.weight") || has("attn_k_norm.weight"))
            {
                return Err(Error::BadConfig(format!(
                    "{} (Q/K LayerNorms) is not supported",
                    n("attn_q_norm.weight")
                )));
            }
            // (BitNet's per-tensor scales, which its converter folds into
            // the weights.)
            for s in [
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ] {
                if has(&format!("{s}.scale")) {
                    return Err(Error::BadConfig(format!(
                        "{} (a per-tensor scale) is not supported",
                        n(&format!("{s}.scale"))
                    )));
                }
            }
            // (MPT's learned activation scales.)
            if has("ffn_act.scales") {
                return Err(Error::BadConfig(format!(
                    "{} (activation scales) is not supported",
                    n("ffn_act.scales")
                )));
            }
            let ffn_bias = |s: &str, len| match c.layer_norm {
                true => optional_norm(&n(s), len),
                false => Ok(None),
            };
            // Phi 2's and Command R's networks read the attention's input;
            // StableLM's where the block has no feed-forward norm.
            let parallel =
                c.parallel_ffn || (c.arch == Architecture::StableLm && !has("ffn_norm.weight"));
            // Falcon 40B's attention has a norm of its own, its network
            // `attn_norm`; Falcon 7B's share it.
            let falcon_two = c.arch == Architecture::Falcon && has("attn_norm_2.weight");
            let parallel_shared = parallel
                && !falcon_two
                && matches!(
                    c.arch,
                    Architecture::Phi2
                        | Architecture::StableLm
                        | Architecture::CommandR
                        | Architecture::Cohere2
                        | Architecture::Falcon
                        | Architecture::Plamo
                );
            let attn_norm = match falcon_two {
                true => "attn_norm_2",
                false => "attn_norm",
            };
            layers.push(Layer {
                // (OLMo's LayerNorms have no weights: ones.)
                attn_norm: match c.arch {
                    Architecture::Olmo => Some(ones(d)?),
                    // (A DeciLM block without attention norms its network's
                    // input by `ffn_norm`, where the others' `attn_norm` is.)
                    Architecture::Deci if deci_ffn_only => Some(norm(&n("ffn_norm.weight"), d)?),
                    // (ModernBERT's first block has none.)
                    Architecture::ModernBert => optional_norm(&n("attn_norm.weight"), d)?,
                    _ => must(&format!("{attn_norm}.weight"), d, c.pre_norms)?,
                },
                attn_norm_b: norm_bias(&format!("{attn_norm}.bias"))?,
                parallel,
                qkv,
                fused,
                wo: match (&c.mla, &c.delta_net) {
                    _ if ffn_only => None,
                    // (A mixer beside attention has its own output.)
                    _ if attends && c.mla.is_none() => {
                        Some(weight(&n("attn_output.weight"), d, q)?)
                    }
                    (Some(m), _) => Some(weight(&n("attn_output.weight"), d, c.n_heads * m.v_dim)?),
                    (_, Some(dn)) if recurrent => {
                        Some(weight(&n("ssm_out.weight"), d, dn.v_dim())?)
                    }
                    _ if recurrent => Some(match (&c.mamba, &c.mamba1) {
                        (Some(m), _) => weight(&n("ssm_out.weight"), d, m.inner)?,
                        (_, Some(m)) => weight(&n("ssm_out.weight"), d, m.inner)?,
                        _ => weight(&n("shortconv.out_proj.weight"), d, d)?,
                    }),
                    _ => Some(weight(&n("attn_output.weight"), d, q)?),
                },
                bq,
                bk,
                bv,
                // gpt-oss's output bias; Ministral 3's and ERNIE 4.5's
                // where the file has one.
                bo: match c.arch {
                    // (llama.cpp runs StableLM's and Falcon's without one.)
                    Architecture::Starcoder2
                    | Architecture::Phi2
                    | Architecture::GptNeox
                    | Architecture::Gpt2
                    | Architecture::Starcoder
                    | Architecture::Nemotron
                    | Architecture::CodeShell
                    | Architecture::Bloom
                    | Architecture::Mpt
                    | Architecture::Refact
                    | Architecture::Jais
                    | Architecture::Apertus
                    | Architecture::Maincoder => optional_norm(&n("attn_output.bias"), d)?,
                    _ if c.arch.bert_blocks() => optional_norm(&n("attn_output.bias"), d)?,
                    Architecture::Mistral3
                    | Architecture::Ernie45
                    | Architecture::Ernie45Moe
                    | Architecture::GraniteHybrid
                    | Architecture::MiniCpm => optional_norm(&n("attn_output.bias"), d)?,
                    _ => must("attn_output.bias", d, gpt_oss)?,
                },
                sinks: match gpt_oss {
                    true => {
                        let v = f32_vec(&tensor(&n("attn_sinks.weight"))?)?;
                        if v.len() != c.n_heads {
                            return Err(Error::BadTensorShape {
                                tensor: n("attn_sinks.weight"),
                                expected: vec![c.n_heads as u64],
                                got: vec![v.len() as u64],
                            });
                        }
                        Some(v)
                    }
                    false => None,
                },
                q_norm: match qk_norms_if_any {
                    _ if weightless_qk => c.layer_ropes(i).then(|| ones(hd)).transpose()?,
                    true => optional_norm(&n("attn_q_norm.weight"), q_norm_len)?,
                    false => must("attn_q_norm.weight", q_norm_len, qk_norms && attends)?,
                },
                k_norm: match qk_norms_if_any {
                    _ if weightless_qk => c.layer_ropes(i).then(|| ones(hd)).transpose()?,
                    true => optional_norm(&n("attn_k_norm.weight"), k_norm_len)?,
                    // (Gemma 4's blocks that read others' caches have none.)
                    false if c.gemma4.is_some() && kv_source.is_some() => None,
                    false => must("attn_k_norm.weight", k_norm_len, qk_norms && attends)?,
                },
                // (Jina BERT v2's Q/K LayerNorms have biases.)
                qk_norm_b: match c.arch == Architecture::JinaBertV2 {
                    true => [
                        optional_norm(&n("attn_q_norm.bias"), q_norm_len)?,
                        optional_norm(&n("attn_k_norm.bias"), k_norm_len)?,
                    ],
                    false => [None, None],
                },
                // (Grok's are named for the attention's output and the
                // block's.)
                post_attn_norm: match grok {
                    true => Some(norm(&n("attn_output_norm.weight"), d)?),
                    false => must("post_attention_norm.weight", d, post_norms)?,
                },
                // gpt-oss, Seed-OSS and GLM-4.5 name their feed-forward
                // norm as Gemma names the attention's post-norm.
                ffn_norm: match gpt_oss
                    || matches!(
                        c.arch,
                        Architecture::SeedOss
                            | Architecture::Glm4Moe
                            | Architecture::Qwen35
                            | Architecture::Qwen35Moe
                            | Architecture::Qwen3Next
                    ) {
                    true => Some(norm(&n("post_attention_norm.weight"), d)?),
                    // (Falcon-H1's files name it without `.weight`.)
                    false if c.arch == Architecture::FalconH1 => Some(norm(&n("ffn_norm"), d)?),
                    // (DBRX's is named for the attention's output.)
                    false if c.arch == Architecture::Dbrx => {
                        Some(norm(&n("attn_output_norm.weight"), d)?)
                    }
                    false if parallel_shared => None,
                    false if falcon_two => Some(norm(&n("attn_norm.weight"), d)?),
                    false if c.arch == Architecture::Olmo => Some(ones(d)?),
                    false if deci_ffn_only || ff == 0 => None,
                    // (Nemotron-H's blocks norm their input alone.)
                    false => must("ffn_norm.weight", d, c.pre_norms && c.ffn_blocks.is_none())?,
                },
                ffn_norm_b: match (parallel_shared, falcon_two) {
                    (true, _) => None,
                    (false, true) => norm_bias("attn_norm.bias")?,
                    (false, false) => norm_bias("ffn_norm.bias")?,
                },
                ffn: match &c.moe {
                    _ if mixer_only => Ffn::None,
                    // (DeciLM's blocks without a network.)
                    _ if c.deci.is_some() && ff == 0 => Ffn::None,
                    // (Gemma 4's experts are beside its dense blocks.)
                    Some(m) if m.is_moe_layer(i) && c.gemma4.is_none() => {
                        Ffn::Moe(Moe::load(file, backend, i, m, d)?)
                    }
                    // (Arcee's feed-forward networks have no gate either, nor
                    // have StarCoder 2's, Phi 2's and the others', of GELUs.)
                    _ if (ffn_only && c.deci.is_none()) || c.arch.ungated_ffn() => {
                        Ffn::Up(UpFfn {
                            up: weight(&n("ffn_up.weight"), ff, d)?,
                            down: weight(&n("ffn_down.weight"), d, ff)?,
                            act: match &c.xielu {
                                Some(x) => UpAct::Xielu(x[i]),
                                // (Nemotron's are squared ReLUs, as Arcee's.)
                                None if c.layer_norm && c.arch != Architecture::Nemotron => {
                                    UpAct::Gelu
                                }
                                None => UpAct::SquaredRelu,
                            },
                            up_b: ffn_bias("ffn_up.bias", ff)?,
                            down_b: ffn_bias("ffn_down.bias", d)?,
                        })
                    }
                    // Gate and up in one matrix (Phi 3's `ffn_up`), gate first.
                    _ if fused.gate_up => Ffn::Dense(
                        Group {
                            runs: vec![(weight(&n("ffn_up.weight"), 2 * ff, d)?, 2)],
                        },
                        weight(&n("ffn_down.weight"), d, ff)?,
                    ),
                    _ => Ffn::Dense(
                        group(&[n("ffn_gate.weight"), n("ffn_up.weight")], &[ff, ff], d)?,
                        weight(&n("ffn_down.weight"), d, ff)?,
                    ),
                },
                post_ffn_norm: match grok {
                    true => match file.tensor(&n("layer_output_norm.weight")) {
                        Ok(_) => Some(norm(&n("layer_output_norm.weight"), d)?),
                        Err(realm_core::Error::TensorNotFound(_)) => {
                            Some(norm(&n("post_ffw_norm.weight"), d)?)
                        }
                        Err(e) => return Err(e.into()),
                    },
                    false => must("post_ffw_norm.weight", d, post_norms)?,
                },
                mla: match &c.mla {
                    Some(m) => Some(Mla::load(file, backend, i, c, m)?),
                    None => None,
                },
                delta,
                conv,
                mamba,
                mamba1,
                kv_slot: match kv_source {
                    Some(src) => layers
                        .get(src)
                        .map(|l: &Layer<'a, B>| l.kv_slot)
                        .ok_or_else(|| {
                            Error::BadConfig(format!("block {i} reads a later block's cache"))
                        })?,
                    None => kv_slot,
                },
                kv_shared: kv_source.is_some(),
                v_norm: (c.altup.is_some() || c.gemma4.is_some())
                    .then(|| ones(hd))
                    .transpose()?,
                altup: match &c.altup {
                    Some(a) => Some(AltUpBlock::load(file, backend, i, c, a)?),
                    None => None,
                },
                ple: match c.per_layer_input() {
                    Some(p) => Some(PleBlock::load(file, backend, i, c, p)?),
                    None => None,
                },
                v_from_k,
                beside: match (&c.moe, &c.gemma4) {
                    (Some(m), Some(_)) if m.is_moe_layer(i) => {
                        Some(BesideMoe::load(file, backend, i, m, d)?)
                    }
                    _ => None,
                },
                out_scale: match c.gemma4 {
                    Some(_) => match file.tensor(&n("layer_output_scale.weight")) {
                        Ok(t) => {
                            let v = f32_vec(&t)?;
                            match v[..] {
                                [s] => Some(s),
                                _ => {
                                    return Err(Error::BadTensorShape {
                                        tensor: n("layer_output_scale.weight"),
                                        expected: vec![1],
                                        got: t.shape().to_vec(),
                                    })
                                }
                            }
                        }
                        Err(realm_core::Error::TensorNotFound(_)) => None,
                        Err(e) => return Err(e.into()),
                    },
                    None => None,
                },
                out_norms: match c.arch.bert_blocks() {
                    true => Some([
                        (
                            norm(&n("attn_output_norm.weight"), d)?,
                            norm(&n("attn_output_norm.bias"), d)?,
                        ),
                        (
                            norm(&n("layer_output_norm.weight"), d)?,
                            norm(&n("layer_output_norm.bias"), d)?,
                        ),
                    ]),
                    false => None,
                },
                attn_norm_2: match c.arch == Architecture::JinaBertV2 && has("attn_norm_2.weight") {
                    true => Some((
                        norm(&n("attn_norm_2.weight"), d)?,
                        optional_norm(&n("attn_norm_2.bias"), d)?,
                    )),
                    false => None,
                },
                ffn_b: match c.arch {
                    Architecture::JinaBertV2 | Architecture::Jais => {
                        let (gate_b, up_b) = match file.tensor(&n("ffn_up.bias")) {
                            // (A fused `ffn_up`'s: the gate's half first.)
                            Ok(t) if fused.gate_up => {
                                let v = f32_vec(&t)?;
                                if v.len() != 2 * ff {
                                    return Err(Error::BadTensorShape {
                                        tensor: n("ffn_up.bias"),
                                        expected: vec![2 * ff as u64],
                                        got: t.shape().to_vec(),
                                    });
                                }
                                let (g, u) = v.split_at(ff);
                                (Some(backend.upload(g)?), Some(backend.upload(u)?))
                            }
                            _ => (
                                optional_norm(&n("ffn_gate.bias"), ff)?,
                                optional_norm(&n("ffn_up.bias"), ff)?,
                            ),
                        };
                        [gate_b, up_b, Some(norm(&n("ffn_down.bias"), d)?)]
                    }
                    _ => [None, None, None],
                },
                sub_norms: match c.arch == Architecture::Bitnet {
                    true => [
                        Some(norm(&n("attn_sub_norm.weight"), q)?),
                        Some(norm(&n("ffn_sub_norm.weight"), ff)?),
                    ],
                    false => [None, None],
                },
            });
            if c.has_attention(i) && kv_source.is_none() {
                kv_slot += 1;
            }
        }
        let embed = weight("token_embd.weight", c.vocab_size, d)?;
        // GPT-2's and StarCoder's learned positions, one row a position
        // (MPT's where the file has them).
        let pos_embed = match c.arch {
            Architecture::Gpt2 | Architecture::Starcoder | Architecture::Bert => {
                Some(weight("position_embd.weight", c.context_length, d)?)
            }
            Architecture::Mpt if file.tensor("position_embd.weight").is_ok() => {
                Some(weight("position_embd.weight", c.context_length, d)?)
            }
            _ => None,
        };
        // BLOOM's LayerNorm of the embeddings (the encoders').
        let embed_norm = match c.arch.bert_blocks()
            || matches!(c.arch, Architecture::Bloom | Architecture::ModernBert)
        {
            true => Some((
                norm("token_embd_norm.weight", d)?,
                optional_norm("token_embd_norm.bias", d)?,
            )),
            false => None,
        };
        let token_type = match file.tensor("token_types.weight") {
            Ok(t) if c.encoder => {
                let types = f32_vec(&t)?;
                match (t.shape(), types.get(..d)) {
                    ([w, _], Some(row)) if *w == d as u64 => Some(backend.upload(row)?),
                    _ => {
                        return Err(Error::BadTensorShape {
                            tensor: "token_types.weight".into(),
                            expected: vec![d as u64, 2],
                            got: t.shape().to_vec(),
                        })
                    }
                }
            }
            Ok(_) | Err(realm_core::Error::TensorNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let (output, has_output) = match file.tensor("output.weight") {
            Ok(_) => (weight("output.weight", c.vocab_size, d)?, true),
            // Tied embeddings: the output projection is the embedding table.
            Err(realm_core::Error::TensorNotFound(_)) => {
                (weight("token_embd.weight", c.vocab_size, d)?, false)
            }
            Err(e) => return Err(e.into()),
        };
        // (LFM2's files name it so.)
        let output_norm = match c.arch {
            _ if c.arch.bert_blocks() => None,
            // (NeoBERT's is the encoder's.)
            Architecture::NeoBert => Some(norm("enc.output_norm.weight", d)?),
            Architecture::Lfm2 | Architecture::Lfm2Moe => Some(norm("token_embd_norm.weight", d)?),
            Architecture::Olmo => Some(ones(d)?),
            _ => {
                Some(optional_norm("output_norm.weight", d)?.ok_or_else(|| {
                    realm_core::Error::TensorNotFound("output_norm.weight".into())
                })?)
            }
        };
        let output_norm_b = match c.layer_norm {
            true => optional_norm("output_norm.bias", d)?,
            false => None,
        };
        let dense_out = match file.tensor("dense_2.weight") {
            Ok(t) if c.encoder => {
                let wide = match t.shape() {
                    [_, rows] => *rows as usize,
                    _ => 0,
                };
                Some(DenseOut {
                    dense_2: weight("dense_2.weight", wide, d)?,
                    dense_2_b: optional_norm("dense_2.bias", wide)?,
                    dense_3: weight("dense_3.weight", d, wide)?,
                })
            }
            Ok(_) | Err(realm_core::Error::TensorNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let has = |name: &str| file.tensor(name).is_ok();
        // (A decoder ranks through `cls.output` alone: Qwen 3's rerankers.)
        let ranks = has("cls.output.weight") || (c.encoder && has("cls.weight"));
        let rank_head = match ranks {
            true => {
                let rows = |name: &str, none| match file.tensor(name).map(|t| t.shape().to_vec()) {
                    Ok(shape) => shape.get(1).copied().unwrap_or(1) as usize,
                    Err(_) => none,
                };
                let labels = rows("cls.output.weight", d);
                // (Jina's rerankers' `cls` is their whole head: one row.)
                let cls_rows = rows("cls.weight", d);
                let modern = c.arch == Architecture::ModernBert;
                let key = format!("{}.classifier.pooling_type", c.arch.name());
                let pooling = match file.metadata().get(&key) {
                    Some(_) => {
                        let v = file.metadata().get_u32(&key)?;
                        match Pooling::from_gguf(v) {
                            Some(p @ (Pooling::Mean | Pooling::Cls)) => p,
                            _ => {
                                return Err(Error::BadConfig(format!(
                                    "{key} {v}: a reranker pools the first token's state or \
                                     the mean"
                                )))
                            }
                        }
                    }
                    // (llama.cpp's default for ModernBERT's rerankers.)
                    None if modern => Pooling::Mean,
                    None if c.bidirectional => Pooling::Cls,
                    None => Pooling::Last,
                };
                Some(RankHead {
                    pooling,
                    gelu: modern,
                    norm: optional_norm("cls.norm.weight", d)?,
                    cls: match has("cls.weight") {
                        true => Some((
                            weight("cls.weight", cls_rows, d)?,
                            optional_norm("cls.bias", cls_rows)?,
                        )),
                        false => None,
                    },
                    out: match has("cls.output.weight") {
                        true => Some((
                            weight("cls.output.weight", labels, d)?,
                            optional_norm("cls.output.bias", labels)?,
                        )),
                        false => None,
                    },
                    softmax: matches!(c.arch, Architecture::Qwen3 | Architecture::Qwen3Vl),
                })
            }
            false => None,
        };
        // (Phi 2's; llama.cpp reads it for no other of Realm's.)
        let output_b = match c.arch {
            Architecture::Phi2 => optional_norm("output.bias", c.vocab_size)?,
            _ => None,
        };
        // One pair's factor each, the same for every layer (Gemma 4's for
        // its global ones).
        let factor_dims = c
            .gemma4
            .as_ref()
            .map_or(c.rope_dims, |g| g.global.rope_dims);
        let factors = |name: &str| -> Result<Option<Vec<f32>>> {
            match file.tensor(name) {
                Ok(t) => {
                    let v = f32_vec(&t)?;
                    if v.len() != factor_dims / 2 {
                        return Err(Error::BadTensorShape {
                            tensor: name.into(),
                            expected: vec![factor_dims as u64 / 2],
                            got: t.shape().to_vec(),
                        });
                    }
                    Ok(Some(v))
                }
                Err(realm_core::Error::TensorNotFound(_)) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        // Llama 3.1's factors serve every session, as llama.cpp prefers
        // them; LongRoPE's come as a pair (Phi 3's 128k models, Phi 3.5,
        // Phi 4 mini).
        let (mut rope_factors, mut rope_factors_long) = match factors("rope_freqs.weight")? {
            Some(f) => (Some(f), None),
            None => match (
                factors("rope_factors_short.weight")?,
                factors("rope_factors_long.weight")?,
            ) {
                (Some(short), Some(long)) => (Some(short), Some(long)),
                (None, None) => (None, None),
                _ => {
                    return Err(Error::BadConfig(
                        "LongRoPE needs both rope_factors_short and rope_factors_long".into(),
                    ))
                }
            },
        };
        // YaRN's pair divisors join them.
        if let Some(y) = &c.rope_yarn {
            let yarn = y.pair_divisors(c.rope_dims, c.rope_base);
            let times = |f: Vec<f32>| f.iter().zip(&yarn).map(|(a, b)| a * b).collect();
            rope_factors_long = rope_factors_long.map(times);
            rope_factors = Some(rope_factors.map_or_else(|| yarn.clone(), times));
        }
        let altup = match &c.altup {
            Some(a) => Some(AltUp::load(file, backend, c, a)?),
            None => None,
        };
        let alibi_slopes = c.alibi.map(|b| {
            (0..c.n_heads)
                .map(|h| AttentionParams::alibi_slope(b, c.n_heads, h))
                .collect()
        });
        let ple = match c.per_layer_input() {
            Some(p) => Some(Ple::load(file, backend, c, p)?),
            None => None,
        };
        Ok(Self {
            id: NEXT_MODEL.fetch_add(1, Ordering::Relaxed),
            fingerprint: state::fingerprint(file),
            backend,
            config,
            embed,
            pos_embed,
            embed_norm,
            token_type,
            layers,
            output_norm,
            dense_out,
            rank_head,
            output_norm_b,
            output,
            output_b,
            alibi_slopes,
            rope_factors,
            rope_factors_long,
            has_output,
            altup,
            ple,
            loras: Vec::new(),
            lora_dims: Dims::default(),
        })
    }

    /// Adds the LoRA adapter in `file` (llama.cpp's GGUF adapter format,
    /// as `convert_lora_to_gguf.py` writes it) under `name`, for sessions
    /// to run with ([`Session::set_loras`]); the model's own weights stay
    /// as they are. Its matrices may be of any type the backend
    /// multiplies. Fails, naming the tensor, on an adapter for another
    /// architecture or shape, a `lora_a` without its `lora_b`, and on what
    /// Realm does not apply: the token embeddings' LoRA, activated LoRA.
    pub fn add_lora<S: AsRef<[u8]>>(
        &mut self,
        file: &'a Gguf<S>,
        name: impl Into<String>,
    ) -> Result<LoraId> {
        let fused: Vec<(bool, bool)> = self
            .layers
            .iter()
            .map(|l| (l.fused.qkv, l.fused.gate_up))
            .collect();
        let (adapter, dims) = Lora::load(
            file,
            self.backend,
            &self.config,
            (self.has_output, &fused),
            name.into(),
        )?;
        self.loras.push(adapter);
        self.lora_dims = self.lora_dims.max(dims);
        Ok(LoraId {
            model: self.id,
            index: self.loras.len() - 1,
        })
    }

    /// The adapters added to the model, in order, with their ids.
    pub fn loras(&self) -> impl Iterator<Item = (LoraId, &LoraInfo)> + use<'_, 'a, B> {
        let model = self.id;
        self.loras
            .iter()
            .enumerate()
            .map(move |(index, l)| (LoraId { model, index }, &l.info))
    }

    /// Checks that `set` names adapters of this model, and that `sc` has
    /// room for their products.
    fn ready_loras(&self, sc: &mut Scratch<B>, set: &[(LoraId, f32)]) -> Result<()> {
        if set.is_empty() {
            return Ok(());
        }
        if let Some((id, _)) = set
            .iter()
            .find(|(id, _)| id.model != self.id || id.index >= self.loras.len())
        {
            return Err(Error::Lora(format!(
                "adapter {} was not added to this model",
                id.index()
            )));
        }
        sc.lora = Some(LoraScratch::fit(
            sc.lora.take(),
            self.backend,
            sc.rows,
            self.lora_dims,
        )?);
        Ok(())
    }

    /// Values per row of the widest stacked group's products (0: none is
    /// stacked).
    fn stacked_width(&self) -> usize {
        let c = &self.config;
        // The widest stacked run of a group whose parts are `widths` wide.
        let widest = |g: &Group<B::Weight<'a>>, widths: &[usize]| {
            let mut first = 0;
            let mut most = 0;
            for &(_, parts) in &g.runs {
                if parts > 1 {
                    let run = widths.get(first..first + parts).unwrap_or_default();
                    most = most.max(run.iter().sum());
                }
                first += parts;
            }
            most
        };
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let (q, kv, ff) = (c.layer_q_dim(i), c.layer_kv_dim(i), c.layer_ffn_dim(i));
                let ffn = match (&l.ffn, &c.moe) {
                    (Ffn::Dense(gate_up, _), _) => widest(gate_up, &[ff, ff]),
                    (Ffn::Moe(moe), Some(m)) => moe.stacked_width(m),
                    (Ffn::Moe(_), None) | (Ffn::Up(_) | Ffn::None, _) => 0,
                };
                let beside = match (&l.beside, &c.moe) {
                    (Some(e), Some(m)) => e.moe.stacked_width(m),
                    _ => 0,
                };
                let q = if c.attn_output_gate { 2 * q } else { q };
                widest(&l.qkv, &[q, kv, kv]).max(ffn).max(beside)
            })
            .max()
            .unwrap_or(0)
    }

    /// Whether decode steps run as the backend's static steps: not for
    /// experts, whose routing the host decides step by step.
    fn static_steps(&self) -> bool {
        self.backend.static_steps()
            && self.config.moe.is_none()
            && self.config.mla.is_none()
            && !self.config.has_recurrent()
            // (Norms after RoPE rotate outside the attention, by positions
            // a recording would keep.)
            && !self.config.qk_norm_after_rope
            // (Gemma 3n's streams are the host's, step by step, and so are
            // Gemma 4's block inputs; its blocks' heads differ.)
            && self.altup.is_none()
            && self.config.gemma4.is_none()
            // (A static step's `embed` reads the step's tokens, not its
            // positions.)
            && self.pos_embed.is_none()
    }

    /// Whether a session can forget its last tokens and keep the others
    /// ([`Session::truncate`]): not where delta nets (Qwen 3.5's) hold
    /// every token in one state.
    pub fn can_forget(&self) -> bool {
        !self.config.has_recurrent()
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &'a B {
        self.backend
    }

    /// A new sequence with room for `max_seq_len` tokens (at most the model's
    /// context length is sensible, but longer is allowed) and prefill chunks
    /// of up to `batch` tokens.
    pub fn session(&self, max_seq_len: usize, batch: usize) -> Result<Session<B>> {
        self.session_with_kv(max_seq_len, batch, KvDtype::F32)
    }

    /// [`Model::session`] with the KV cache stored as `kv_dtype` (f16 halves
    /// its memory; llama.cpp's default).
    pub fn session_with_kv(
        &self,
        max_seq_len: usize,
        batch: usize,
        kv_dtype: KvDtype,
    ) -> Result<Session<B>> {
        if max_seq_len == 0 || batch == 0 {
            return Err(Error::BadConfig(
                "max_seq_len and batch must be positive".into(),
            ));
        }
        let c = &self.config;
        if let Some(p) = self.pos_embed.as_ref().filter(|p| max_seq_len > p.rows()) {
            return Err(Error::BadConfig(format!(
                "a session of {max_seq_len} tokens is longer than the {} positions this \
                 model learned",
                p.rows()
            )));
        }
        let cache = self
            .backend
            .kv_cache(&c.kv_cache_config(max_seq_len, kv_dtype))?;
        Ok(Session {
            id: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            cache,
            kv_dtype,
            pos: 0,
            max_seq_len,
            chunk: None,
            scratch: Scratch {
                long_rope: self.long_rope(max_seq_len),
                ..Scratch::new(self.backend, c, batch, 1, self.stacked_width())?
            },
            logits: vec![0.0; c.vocab_size],
            logits_on_host: false,
            loras: Vec::new(),
            recurrent: Recurrent::new(c),
            checkpoints: Vec::new(),
            max_checkpoints: 0,
            layers: c.n_layers,
        })
    }

    /// Scratch space for [`Model::forward_batch`] over up to `rows` sessions.
    pub fn batch_scratch(&self, rows: usize) -> Result<BatchScratch<B>> {
        if rows == 0 {
            return Err(Error::BadConfig("a batch needs at least one row".into()));
        }
        Ok(BatchScratch {
            scratch: Scratch::new(self.backend, &self.config, rows, rows, self.stacked_width())?,
            key: Vec::with_capacity(rows),
        })
    }

    /// Runs `tokens` through the model at the session's current position,
    /// in chunks of the session's batch size, appending them to its KV
    /// cache; returns the logits of the last token.
    ///
    /// A sequence that would pass the session's capacity is an error
    /// ([`Error::ContextFull`]) and leaves the session unchanged. Another
    /// error part way leaves the chunks before the failing one in the
    /// session (all of them undone, at position 0, for a model with
    /// recurrent blocks: [`Model::can_forget`]).
    ///
    /// This is [`Model::embed_tokens`], [`Model::forward_layer`] for every
    /// layer and [`Model::compute_logits`], chunk after chunk.
    ///
    /// On a backend with static steps ([`StepOps::static_steps`], the CUDA
    /// backend), one token is a static decode step: recorded at the second
    /// step of each [`STEP_SPAN`] positions and replayed for the others.
    /// After a recording or replay fails, 64 steps run op by op before the
    /// next recording; after three failures in a row, every step does.
    ///
    /// [`StepOps::static_steps`]: realm_core::backend::StepOps::static_steps
    pub fn forward<'s>(&self, s: &'s mut Session<B>, tokens: &[u32]) -> Result<&'s [f32]> {
        self.check_logits()?;
        if tokens.is_empty() {
            return Err(Error::BadConfig("forward needs at least one token".into()));
        }
        self.check_room(s, tokens.len())?;
        self.check_tokens(tokens)?;
        if let [token] = *tokens {
            // (A step with adapters runs op by op: recordings hold none.)
            if self.static_steps()
                && s.loras.is_empty()
                && s.scratch.seen.is_none()
                && !self.tempers(&[s.pos as u32])
            {
                return self.decode_static(s, token);
            }
        }
        let mut chunks = tokens.chunks(s.scratch.rows).peekable();
        while let Some(chunk) = chunks.next() {
            self.embed_tokens(s, chunk)?;
            for layer in 0..self.layers.len() {
                self.forward_layer(s, layer)?;
            }
            if chunks.peek().is_none() {
                self.compute_logits(s)?;
            }
        }
        Ok(s.logits())
    }

    /// [`Model::forward`] that also hands over the logits of every token
    /// from `tokens[from]` on: `each(i, logits)` for each such `i`, in order
    /// (llama.cpp's "outputs"; what perplexity and prompt log-probabilities
    /// read). Afterwards the session holds the last token's logits, as
    /// after `forward`.
    ///
    /// The logits are bit-identical to those `forward` of the tokens up to
    /// and including `tokens[i]` would return (the backend is batch
    /// invariant). They are computed [`OUTPUT_ROWS`] rows at a time, into a
    /// buffer allocated for the call. On an error the session may hold part
    /// of the tokens (every chunk before the failing one).
    ///
    /// ```
    /// use realm_models::{synthetic::SyntheticLayout, Model};
    /// let file = realm_core::gguf::Gguf::from_bytes(SyntheticLayout::tiny("llama")?.write(1)?)?;
    /// let backend = realm_compute_cpu::CpuBackend::new().unwrap();
    /// let model = Model::load(&file, &backend)?;
    /// let mut s = model.session(16, 4)?;
    /// let mut best = Vec::new();
    /// model.forward_outputs(&mut s, &[1, 2, 3, 4, 5], 2, |i, logits| {
    ///     let top = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b]));
    ///     best.push((i, top.unwrap()));
    /// })?;
    /// assert_eq!(best.iter().map(|&(i, _)| i).collect::<Vec<_>>(), [2, 3, 4]);
    /// # Ok::<(), realm_models::Error>(())
    /// ```
    pub fn forward_outputs(
        &self,
        s: &mut Session<B>,
        tokens: &[u32],
        from: usize,
        each: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.forward_rows(s, tokens, from, Rows::Logits, each)?;
        // The last row's output product ran already (when `from` reached
        // it): an importance matrix does not see it twice.
        let seen = s.scratch.seen.take_if(|_| from < tokens.len());
        let ran = self.compute_logits(s).map(|_| ());
        if seen.is_some() {
            s.scratch.seen = seen;
        }
        ran?;
        Ok(())
    }

    /// [`Model::forward_outputs`] of every token, without computing the
    /// last one's logits again for the session: for a caller that
    /// [`Session::truncate`]s next (a draft being checked), which leaves
    /// the session without logits.
    pub(crate) fn forward_draft(
        &self,
        s: &mut Session<B>,
        tokens: &[u32],
        each: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        self.forward_rows(s, tokens, 0, Rows::Logits, each)
    }

    /// [`Model::forward`] that also hands over the final hidden state of
    /// every token from `tokens[from]` on, after the output norm (what
    /// llama.cpp pools into embeddings): `each(i, hidden)` with `d_model`
    /// values, in order. Afterwards the session holds the last token's
    /// logits, as after `forward`.
    ///
    /// ```
    /// use realm_models::{synthetic::SyntheticLayout, Model};
    /// let file = realm_core::gguf::Gguf::from_bytes(SyntheticLayout::tiny("llama")?.write(1)?)?;
    /// let backend = realm_compute_cpu::CpuBackend::new().unwrap();
    /// let model = Model::load(&file, &backend)?;
    /// let mut s = model.session(16, 4)?;
    /// let mut mean = vec![0f32; model.config().d_model];
    /// model.forward_embeddings(&mut s, &[1, 2, 3], 0, |_, h| {
    ///     mean.iter_mut().zip(h).for_each(|(m, x)| *m += x / 3.0);
    /// })?;
    /// assert!(mean.iter().any(|&x| x != 0.0));
    /// # Ok::<(), realm_models::Error>(())
    /// ```
    pub fn forward_embeddings(
        &self,
        s: &mut Session<B>,
        tokens: &[u32],
        from: usize,
        each: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        if self.config.bidirectional && (s.pos != 0 || tokens.len() > s.scratch.rows) {
            return Err(Error::BadConfig(format!(
                "bidirectional attention reads a text in one batch from position 0: {} \
                 tokens at position {}, batches of {}",
                tokens.len(),
                s.pos,
                s.scratch.rows
            )));
        }
        self.forward_rows(s, tokens, from, Rows::Hidden, each)?;
        if !self.config.encoder {
            self.compute_logits(s)?;
        }
        Ok(())
    }

    /// [`Model::forward_outputs`] and [`Model::forward_embeddings`]: the
    /// chunks, and `what` of each token from `from` on (the session's own
    /// logits are the caller's to compute).
    fn forward_rows(
        &self,
        s: &mut Session<B>,
        tokens: &[u32],
        from: usize,
        what: Rows,
        mut each: impl FnMut(usize, &[f32]),
    ) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::BadConfig("forward needs at least one token".into()));
        }
        if what == Rows::Logits {
            self.check_logits()?;
        }
        self.check_room(s, tokens.len())?;
        self.check_tokens(tokens)?;
        let width = match what {
            Rows::Logits => self.config.vocab_size,
            Rows::Hidden => self.config.d_model,
        };
        let rows = s.scratch.rows;
        // Logits go through a buffer of their own: as many rows as are
        // wanted, up to OUTPUT_ROWS (a draft's few rows of a large
        // vocabulary need not allocate 32).
        let group = match what {
            Rows::Logits => OUTPUT_ROWS
                .min(rows)
                .min(tokens.len().saturating_sub(from).max(1)),
            Rows::Hidden => rows,
        };
        let mut out = (from < tokens.len() && what == Rows::Logits)
            .then(|| self.backend.buffer(group * width))
            .transpose()?;
        for (c, chunk) in tokens.chunks(rows).enumerate() {
            let start = c * rows;
            self.embed_tokens(s, chunk)?;
            for layer in 0..self.layers.len() {
                self.forward_layer(s, layer)?;
            }
            let sc = &mut s.scratch;
            let mut r = from.saturating_sub(start);
            while r < chunk.len() {
                let n = group.min(chunk.len() - r);
                let rows_at = match out.as_mut() {
                    Some(out) => {
                        // `logits_rows` writes the scratch's logits: lend
                        // it `out`.
                        std::mem::swap(&mut sc.logits, out);
                        let run = lora_run(&s.loras, n);
                        let ran = self.logits_rows(sc, r, n, run.as_slice());
                        std::mem::swap(&mut sc.logits, out);
                        ran?;
                        &*out
                    }
                    None => {
                        self.norm_rows(sc, r, n)?;
                        &sc.xn
                    }
                };
                self.backend
                    .read_on_host(&mut sc.ws, rows_at, n * width, |all| {
                        for (k, row) in all.chunks_exact(width).enumerate() {
                            each(start + r + k, row);
                        }
                    })?;
                r += n;
            }
        }
        Ok(())
    }

    /// Projects pooled embeddings (each `d_model` values) as an embedding
    /// model's files ask after pooling (EmbeddingGemma's `dense_2` and
    /// `dense_3`, as llama.cpp applies them); nothing for other models.
    /// [`crate::embedding::embed`] calls it.
    pub fn project_pooled(&self, rows: &mut [Vec<f32>]) -> Result<()> {
        let Some(p) = &self.dense_out else {
            return Ok(());
        };
        let (b, d, n) = (self.backend, self.config.d_model, rows.len());
        if n == 0 {
            return Ok(());
        }
        if let Some(r) = rows.iter().find(|r| r.len() != d) {
            return Err(Error::BadConfig(format!(
                "a pooled embedding of {} values, not {d}",
                r.len()
            )));
        }
        let wide = p.dense_2.rows();
        let x = b.upload(&rows.concat())?;
        let mut ws = b.workspace();
        let mut mid = b.buffer(n * wide)?;
        b.matmul(&mut ws, &p.dense_2, &x, n, &mut mid)?;
        if let Some(bias) = &p.dense_2_b {
            b.add_row_inplace(&mut mid, bias, n)?;
        }
        let mut out = b.buffer(n * d)?;
        b.matmul(&mut ws, &p.dense_3, &mid, n, &mut out)?;
        let mut host = vec![0f32; n * d];
        b.download(&out, &mut host)?;
        for (r, v) in rows.iter_mut().zip(host.chunks_exact(d)) {
            r.copy_from_slice(v);
        }
        Ok(())
    }

    /// Whether the model has a reranker's head ([`Model::rank`]).
    pub fn can_rank(&self) -> bool {
        self.rank_head.is_some()
    }

    /// The pooling [`Model::rank`] reads (none for a model that does not
    /// rank): the first token's state ([`Pooling::Cls`]), the tokens'
    /// mean (ModernBERT's rerankers, or where the file's
    /// `classifier.pooling_type` says so) or, attending causally, the
    /// last token's, as llama.cpp picks them.
    pub fn rank_pooling(&self) -> Option<Pooling> {
        self.rank_head.as_ref().map(|h| h.pooling)
    }

    /// A reranker's scores of a pooled embedding (`d_model` values, its
    /// first token's), as llama.cpp's rank pooling makes them: `cls` and
    /// its bias, tanh, then `cls.output` and its bias (one score a label;
    /// the embedding itself where the head has neither). Fails for a
    /// model without a head.
    pub fn rank(&self, pooled: &[f32]) -> Result<Vec<f32>> {
        let head = self
            .rank_head
            .as_ref()
            .ok_or_else(|| Error::BadConfig("the model has no reranker's head (cls)".into()))?;
        let (b, d) = (self.backend, self.config.d_model);
        if pooled.len() != d {
            return Err(Error::BadConfig(format!(
                "a pooled embedding of {} values, not {d}",
                pooled.len()
            )));
        }
        let mut ws = b.workspace();
        let mut x = b.upload(pooled)?;
        let mut len = d;
        if let Some((w, bias)) = &head.cls {
            len = w.rows();
            let mut y = b.buffer(len)?;
            b.matmul(&mut ws, w, &x, 1, &mut y)?;
            if let Some(bias) = bias {
                b.add_inplace(&mut y, bias, len)?;
            }
            match head.gelu {
                true => b.gelu_inplace(&mut y, len)?,
                // (tanh: a soft-cap of 1.)
                false => b.softcap_inplace(&mut y, 1.0, len)?,
            }
            if let Some(w) = &head.norm {
                b.layer_norm_inplace(&mut y, w, None, self.config.rms_eps, 1)?;
            }
            x = y;
        }
        if let Some((w, bias)) = &head.out {
            len = w.rows();
            let mut y = b.buffer(len)?;
            b.matmul(&mut ws, w, &x, 1, &mut y)?;
            if let Some(bias) = bias {
                b.add_inplace(&mut y, bias, len)?;
            }
            x = y;
        }
        let mut out = vec![0f32; len];
        b.download(&x, &mut out)?;
        if head.softmax {
            let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for v in &mut out {
                *v = (*v - max).exp();
                sum += *v;
            }
            for v in &mut out {
                *v /= sum;
            }
        }
        Ok(out)
    }

    /// Fails with [`Error::NoLogits`] for an encoder, which makes
    /// embeddings ([`Model::forward_embeddings`]) and no logits: what a
    /// tool that generates or scores text checks first.
    pub fn check_logits(&self) -> Result<()> {
        match self.config.encoder {
            true => Err(Error::NoLogits(self.config.arch.name())),
            false => Ok(()),
        }
    }

    fn check_room(&self, s: &Session<B>, n: usize) -> Result<()> {
        if s.pos + n > s.max_seq_len {
            return Err(Error::ContextFull {
                capacity: s.max_seq_len,
                needed: s.pos + n,
            });
        }
        Ok(())
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        match tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            Some(&bad) => Err(Error::BadToken {
                token: bad,
                vocab_size: self.config.vocab_size,
            }),
            None => Ok(()),
        }
    }

    /// Starts a chunk of 1 to `batch` tokens at the session's position: looks
    /// up their embeddings. Follow with [`Model::forward_layer`] for layers
    /// `0, 1, ...` in order; the chunk joins the sequence after the last
    /// layer. A chunk left unfinished is dropped by the next `embed_tokens`
    /// (where it ran through a recurrent block, whose state holds part of
    /// it, the session starts over at position 0). Allocates nothing.
    pub fn embed_tokens(&self, s: &mut Session<B>, tokens: &[u32]) -> Result<()> {
        let n = tokens.len();
        if n == 0 || n > s.scratch.rows {
            return Err(Error::BadConfig(format!(
                "a chunk holds 1 to {} tokens, got {n}",
                s.scratch.rows
            )));
        }
        self.check_room(s, n)?;
        self.check_tokens(tokens)?;
        self.ready_loras(&mut s.scratch, &s.loras)?;
        // A chunk left half way through delta nets spoilt their states.
        if s.recurrent.any() && s.chunk_unfinished() {
            s.restart();
        }
        s.chunk = None;
        let sc = &mut s.scratch;
        sc.positions.clear();
        sc.positions.extend((s.pos..s.pos + n).map(|p| p as u32));
        self.embed_rows(sc, tokens)?;
        s.chunk = Some(Chunk {
            len: n,
            layers_done: 0,
            logits: false,
        });
        Ok(())
    }

    /// Runs transformer block `layer` on the chunk started by
    /// [`Model::embed_tokens`]; layers must come in order, each once.
    /// Allocates nothing.
    pub fn forward_layer(&self, s: &mut Session<B>, layer: usize) -> Result<()> {
        let chunk = match s.chunk {
            Some(c) if c.layers_done == layer && layer < self.layers.len() => c,
            _ => {
                return Err(Error::BadConfig(format!(
                    "forward_layer({layer}) is out of order: {}",
                    match s.chunk {
                        Some(c) => format!("layer {} is next", c.layers_done),
                        None => "no chunk was embedded".into(),
                    }
                )))
            }
        };
        // (Adapters may have been set since the chunk was embedded.)
        self.ready_loras(&mut s.scratch, &s.loras)?;
        let (cache, rec) = (&mut s.cache, &mut s.recurrent);
        let run = lora_run(&s.loras, chunk.len);
        let ran = self.layer(
            &mut s.scratch,
            (chunk.len, layer),
            run.as_slice(),
            &mut [rec],
            |b, a| a.one(b, cache),
        );
        if let Err(e) = ran {
            // Delta nets may hold part of the chunk: start over.
            if s.recurrent.any() {
                s.restart();
            }
            return Err(e);
        }
        let done = layer + 1;
        s.chunk = Some(Chunk {
            layers_done: done,
            ..chunk
        });
        if done == self.layers.len() {
            s.pos += chunk.len;
        }
        Ok(())
    }

    /// The logits of the last token of the chunk whose layers all ran (the
    /// session's last chunk). Allocates nothing.
    pub fn compute_logits<'s>(&self, s: &'s mut Session<B>) -> Result<&'s [f32]> {
        self.check_logits()?;
        match s.chunk {
            Some(c) if c.logits => Ok(s.logits()),
            Some(c) if c.layers_done == self.layers.len() => {
                self.ready_loras(&mut s.scratch, &s.loras)?;
                let run = lora_run(&s.loras, 1);
                self.logits_rows(&mut s.scratch, c.len - 1, 1, run.as_slice())?;
                // Host backends are read in place; others are downloaded once.
                s.logits_on_host = B::host_slice(&s.scratch.logits).is_none();
                if s.logits_on_host {
                    self.backend.download(&s.scratch.logits, &mut s.logits)?;
                }
                s.chunk = Some(Chunk { logits: true, ..c });
                Ok(s.logits())
            }
            _ => Err(Error::BadConfig(
                "compute_logits needs a chunk whose layers all ran".into(),
            )),
        }
    }

    /// One decode step for several sequences at once: `rows[i].1` is the next
    /// token of session `rows[i].0`. The matrix products run once over all
    /// rows; attention runs per row over its own session's cache. Each
    /// session's logits ([`Session::logits`]) are bit-identical to what
    /// [`Model::forward`] of that token alone would give (the backend is batch
    /// invariant), and [`Model::compute_logits`] returns them as after
    /// `forward`. On error no session has advanced (a model with recurrent
    /// blocks, whose states may hold part of the step: each session
    /// starts over, at position 0).
    ///
    /// With static steps, a step is recorded for these sessions in this
    /// order (and span of positions), at its second run, and replayed while
    /// the next steps come in the same order: keep rows in one order
    /// ([`Session::id`]).
    ///
    /// A model with LongRoPE turns the keys of sessions longer than its
    /// original context by other factors than the others'
    /// ([`ModelConfig::rope_original_context`]): a batch of both runs as
    /// two steps, and an error in the second leaves the first's sessions
    /// advanced.
    pub fn forward_batch(
        &self,
        rows: &mut [(&mut Session<B>, u32)],
        scratch: &mut BatchScratch<B>,
    ) -> Result<()> {
        self.check_logits()?;
        let long = |r: &(&mut Session<B>, u32)| r.0.scratch.long_rope;
        if rows.iter().all(long) || !rows.iter().any(long) {
            scratch.scratch.long_rope = rows.first().is_some_and(long);
            return self.batch_step(rows, scratch);
        }
        for (s, t) in rows.iter() {
            self.check_room(s, 1)?;
            self.check_tokens(&[*t])?;
        }
        let (mut longer, mut shorter) = (Vec::new(), Vec::new());
        for (s, t) in rows.iter_mut() {
            let group = if s.scratch.long_rope {
                &mut longer
            } else {
                &mut shorter
            };
            group.push((&mut **s, *t));
        }
        scratch.scratch.long_rope = false;
        self.batch_step(&mut shorter, scratch)?;
        scratch.scratch.long_rope = true;
        self.batch_step(&mut longer, scratch)
    }

    /// [`Model::forward_batch`] of rows that rotate alike.
    fn batch_step(
        &self,
        rows: &mut [(&mut Session<B>, u32)],
        scratch: &mut BatchScratch<B>,
    ) -> Result<()> {
        let b = self.backend;
        let sc = &mut scratch.scratch;
        let n = rows.len();
        if n == 0 || n > sc.rows {
            return Err(Error::BadConfig(format!(
                "a batch holds 1 to {} rows, got {n}",
                sc.rows
            )));
        }
        sc.positions.clear();
        sc.tokens.clear();
        let mut adapted = false;
        for (s, t) in rows.iter() {
            self.check_room(s, 1)?;
            self.check_tokens(&[*t])?;
            self.ready_loras(sc, &s.loras)?;
            adapted |= !s.loras.is_empty();
            sc.positions.push(s.pos as u32);
            sc.tokens.push(*t);
        }
        let tokens = std::mem::take(&mut sc.tokens);
        // (A step with adapters runs op by op: recordings hold none.)
        let ran = if self.static_steps() && !adapted && !self.tempers(&sc.positions) {
            // Every row attends over the same span, enough for the furthest.
            let furthest = rows.iter().map(|(s, _)| s.pos + 1).max().unwrap_or(1);
            let longest = rows.iter().map(|(s, _)| s.max_seq_len).max().unwrap_or(1);
            let kv_len = step_len(furthest, longest);
            let key = &mut scratch.key;
            key.clear();
            key.extend(rows.iter().map(|(s, _)| s.id));
            let inputs = StepInputs {
                ids: &tokens,
                positions: &sc.positions,
                kv_len,
            };
            b.begin_step(&mut sc.ws, &inputs)
                .map_err(Error::from)
                .and_then(|()| {
                    let ran = self.run_static(sc, key, kv_len, |m, sc| {
                        m.embed_rows(sc, &tokens)?;
                        m.batch_body(rows, sc)
                    });
                    b.end_step(&mut sc.ws);
                    ran
                })
        } else {
            self.embed_rows(sc, &tokens)
                .and_then(|()| self.batch_body(rows, sc))
        };
        sc.tokens = tokens;
        if ran.is_err() {
            // Delta nets may hold part of the step: their sessions start
            // over.
            for (s, _) in rows.iter_mut() {
                if s.recurrent.any() {
                    s.restart();
                }
            }
        }
        ran?;
        let sc = &mut scratch.scratch;
        let vocab = self.config.vocab_size;
        // One pass over every row's logits on the host (32 rows of a
        // 49,152-word vocabulary are 6.3 MB), split between rayon's threads
        // unless the backend computes on the host: its own threads spin
        // between steps, and may be all the caller asked for.
        let on_device = B::host_slice(&sc.logits).is_none();
        b.read_on_host(&mut sc.ws, &sc.logits, n * vocab, |all| {
            if on_device {
                rows.par_iter_mut()
                    .zip(all.par_chunks(vocab))
                    .with_min_len(COPY_VALUES.div_ceil(vocab))
                    .for_each(|((s, _), row)| s.logits.copy_from_slice(row));
            } else {
                for ((s, _), row) in rows.iter_mut().zip(all.chunks(vocab)) {
                    s.logits.copy_from_slice(row);
                }
            }
        })?;
        for (s, _) in rows.iter_mut() {
            s.logits_on_host = true;
            s.pos += 1;
            // As after `forward`: `compute_logits` returns these logits.
            s.chunk = Some(Chunk::decoded(self.layers.len()));
        }
        Ok(())
    }

    /// [`Model::forward`] of one token as a static step.
    fn decode_static<'s>(&self, s: &'s mut Session<B>, token: u32) -> Result<&'s [f32]> {
        let (b, pos) = (self.backend, s.pos);
        let kv_len = step_len(pos + 1, s.max_seq_len);
        let (cache, sc, rec) = (&mut s.cache, &mut s.scratch, &mut s.recurrent);
        sc.positions.clear();
        sc.positions.push(pos as u32);
        s.chunk = None;
        let inputs = StepInputs {
            ids: &[token],
            positions: &[pos as u32],
            kv_len,
        };
        b.begin_step(&mut sc.ws, &inputs)?;
        let ran = self.run_static(sc, &[s.id], kv_len, |m, sc| {
            m.embed_rows(sc, &[token])?;
            for layer in 0..m.layers.len() {
                m.layer(sc, (1, layer), &[], &mut [&mut *rec], |b, a| {
                    a.one(b, cache)
                })?;
            }
            m.logits_rows(sc, 0, 1, &[])
        });
        b.end_step(&mut sc.ws);
        ran?;
        // The session advances once its logits are where it reads them.
        let on_host = B::host_slice(&sc.logits).is_none();
        if on_host {
            b.download(&sc.logits, &mut s.logits)?;
        }
        s.logits_on_host = on_host;
        s.pos += 1;
        s.chunk = Some(Chunk::decoded(self.layers.len()));
        Ok(s.logits())
    }

    /// Runs a static step's ops `step` on `sc`: the recording made for
    /// `key` (the sessions, in row order) and `kv_len` if there is one,
    /// otherwise the ops themselves and then, once, their recording (not
    /// for a while after a recording or replay failed: `crate::record`).
    fn run_static(
        &self,
        sc: &mut Scratch<B>,
        key: &[u64],
        kv_len: usize,
        mut step: impl FnMut(&Self, &mut Scratch<B>) -> Result<()>,
    ) -> Result<()> {
        let b = self.backend;
        if !sc.recorded.may_record() {
            return step(self, sc);
        }
        let is = |k: &StepKey| k.0 == key && k.1 == kv_len && k.2 == self.id;
        if let Some(ready) = sc.recorded.ready.take() {
            let (k, rec) = &*ready;
            let replayed = match is(k) {
                true => {
                    let (ws, mut bufs) = sc.split();
                    b.replay(ws, rec, &mut bufs)
                }
                false => Ok(false),
            };
            match replayed {
                // Not replayed (not for this step): the ops run, and are
                // recorded again.
                Ok(replayed) => {
                    sc.recorded.ready = Some(ready);
                    if replayed {
                        return Ok(());
                    }
                }
                // The device failed to replay it: the ops run, and steps
                // are not recorded for a while.
                Err(e) => sc.recorded.fail(format!("replaying the step failed: {e}")),
            }
        }
        step(self, sc)?;
        let r = &mut sc.recorded;
        if r.waiting() {
            return Ok(());
        }
        if !r.seen.as_ref().is_some_and(is) {
            r.seen = Some((key.to_vec(), kv_len, self.id));
            return Ok(());
        }
        // Drop an older recording (and its device memory) first.
        r.ready = None;
        let started = {
            let (ws, mut bufs) = sc.split();
            // The logits are the step's one output; the rest is scratch.
            b.begin_recording(ws, &mut bufs, 1)
        };
        let recorded = match started {
            Ok(false) => return Ok(()),
            Err(e) => Err(e.to_string()),
            Ok(true) => {
                let ran = step(self, sc);
                let ended = {
                    let (ws, mut bufs) = sc.split();
                    b.end_recording(ws, &mut bufs)
                };
                match (ran, ended) {
                    (Ok(()), Ok(rec)) => Ok(rec),
                    (Err(e), _) => Err(e.to_string()),
                    (_, Err(e)) => Err(e.to_string()),
                }
            }
        };
        match recorded {
            Ok(rec) => {
                sc.recorded.ready = Some(Box::new(((key.to_vec(), kv_len, self.id), rec)));
                sc.recorded.succeeded();
            }
            Err(why) => sc.recorded.fail(why),
        }
        Ok(())
    }

    /// The layers and logits of [`Model::forward_batch`]'s rows, embedded.
    fn batch_body(&self, rows: &mut [(&mut Session<B>, u32)], sc: &mut Scratch<B>) -> Result<()> {
        let n = rows.len();
        let mut caches = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        // Runs of consecutive rows with the same adapters (none when no
        // row has any).
        let mut runs: Vec<LoraRun<'_>> = Vec::new();
        for (i, (s, _)) in rows.iter_mut().enumerate() {
            let Session {
                cache,
                loras,
                recurrent,
                ..
            } = &mut **s;
            caches.push(cache);
            states.push(recurrent);
            match runs.last_mut() {
                Some(run) if run.set == &loras[..] && run.rows.end == i => run.rows.end = i + 1,
                _ if loras.is_empty() => {}
                _ => runs.push(LoraRun {
                    rows: i..i + 1,
                    set: loras,
                }),
            }
        }
        for layer in 0..self.layers.len() {
            self.layer(sc, (n, layer), &runs, &mut states, |b, a| {
                a.rows(b, &mut caches)
            })?;
        }
        self.logits_rows(sc, 0, n, &runs)
    }

    /// Embeds `tokens` into the first rows of `sc.x`.
    fn embed_rows(&self, sc: &mut Scratch<B>, tokens: &[u32]) -> Result<()> {
        let d = self.config.d_model;
        self.backend
            .embed(&mut sc.ws, &self.embed, tokens, &mut sc.x)?;
        if let Some(s) = self.config.embedding_scale {
            self.backend.scale_inplace(&mut sc.x, s, tokens.len() * d)?;
        }
        // (Token type, then position, as llama.cpp sums them.)
        if let Some(t) = &self.token_type {
            self.backend.add_row_inplace(&mut sc.x, t, tokens.len())?;
        }
        if let Some(p) = &self.pos_embed {
            // (`proj` is free until the first block's output.)
            let b = self.backend;
            b.embed(&mut sc.ws, p, &sc.positions, &mut sc.proj)?;
            b.add_inplace(&mut sc.x, &sc.proj, tokens.len() * d)?;
        }

        if let Some((w, bias)) = &self.embed_norm {
            self.norm_inplace(&mut sc.x, (w, bias.as_ref()), tokens.len())?;
        }
        if let (Some(ple), Some(s)) = (&self.ple, sc.ple.as_mut()) {
            self.ple_inputs(ple, s, &mut sc.ws, &sc.x, tokens)?;
        }
        if let Some(alt) = &self.altup {
            self.altup_embed(alt, sc, tokens.len())?;
        }
        Ok(())
    }

    /// Final norm and output projection of rows `first..first + n` of
    /// `sc.x` into `sc.logits`.
    fn logits_rows(
        &self,
        sc: &mut Scratch<B>,
        first: usize,
        n: usize,
        runs: &[LoraRun<'_>],
    ) -> Result<()> {
        self.norm_rows(sc, first, n)?;
        self.backend
            .matmul(&mut sc.ws, &self.output, &sc.xn, n, &mut sc.logits)?;
        let (d, vocab) = (self.config.d_model, self.config.vocab_size);
        if self.has_output {
            let (x, out) = (&sc.xn, &mut sc.logits);
            self.adapt(
                &mut sc.ws,
                (&mut sc.lora, &mut sc.seen),
                runs,
                None,
                (x, n, d),
                (out, vocab),
            )?;
        }
        if let Some(bias) = &self.output_b {
            self.backend.add_row_inplace(&mut sc.logits, bias, n)?;
        }
        if let Some(cap) = self.config.final_softcap {
            self.backend
                .softcap_inplace(&mut sc.logits, cap, n * vocab)?;
        }
        if let Some(s) = self.config.logit_scale {
            self.backend
                .scale_inplace(&mut sc.logits, 1.0 / s, n * vocab)?;
        }
        Ok(())
    }

    /// After a product of matrix `at` (`None`: the output matrix), input
    /// `x` (`n` rows of `k`) and product `out` (rows of `m`): hands the
    /// input to the importance matrix being collected, if one is, and adds
    /// the LoRA updates of `runs` to the product.
    fn adapt(
        &self,
        ws: &mut B::Workspace,
        (ls, seen): (&mut Option<LoraScratch<B>>, &mut Option<Box<Collector>>),
        runs: &[LoraRun<'_>],
        at: Option<(usize, Target)>,
        (x, n, k): (&B::Buffer, usize, usize),
        (out, m): (&mut B::Buffer, usize),
    ) -> Result<()> {
        if let Some(c) = seen {
            c.observe(self.backend, ws, at, (x, n, k))?;
        }
        if runs.is_empty() {
            return Ok(());
        }
        let ls = ls.as_mut().ok_or(BackendError::InvalidParameter {
            op: "lora",
            what: "no scratch for adapters",
        })?;
        let p = Product { x, n, k, out, m };
        Ok(lora::apply(self.backend, ws, ls, &self.loras, runs, at, p)?)
    }

    /// Final norm of rows `first..first + n` of `sc.x` into the first `n`
    /// rows of `sc.xn`.
    fn norm_rows(&self, sc: &mut Scratch<B>, first: usize, n: usize) -> Result<()> {
        let (b, c) = (self.backend, &self.config);
        let Some(w) = &self.output_norm else {
            // An encoder's stream is normed already.
            return Ok(b.copy_rows(&sc.x, first..first + n, c.d_model, &mut sc.xn)?);
        };
        let w = (w, self.output_norm_b.as_ref());
        if first == 0 {
            self.norm(&sc.x, w, n, &mut sc.xn)?;
        } else {
            // Ops read from row 0: bring the rows to the front of `xn`.
            b.copy_rows(&sc.x, first..first + n, c.d_model, &mut sc.xn)?;
            self.norm_inplace(&mut sc.xn, w, n)?;
        }
        Ok(())
    }

    /// An input norm (`w` and its bias) of the first `n` rows of `x`, into
    /// `out`: a LayerNorm where the model's are, else an RMSNorm.
    fn norm(
        &self,
        x: &B::Buffer,
        (w, bias): (&B::Buffer, Option<&B::Buffer>),
        n: usize,
        out: &mut B::Buffer,
    ) -> Result<(), BackendError> {
        let (b, c) = (self.backend, &self.config);
        match c.layer_norm {
            true => b.layer_norm(x, w, bias, c.rms_eps, n, out),
            false => b.rms_norm(x, w, c.rms_eps, n, out),
        }
    }

    /// [`Model::norm`] in place.
    fn norm_inplace(
        &self,
        x: &mut B::Buffer,
        (w, bias): (&B::Buffer, Option<&B::Buffer>),
        n: usize,
    ) -> Result<(), BackendError> {
        let (b, c) = (self.backend, &self.config);
        match c.layer_norm {
            true => b.layer_norm_inplace(x, w, bias, c.rms_eps, n),
            false => b.rms_norm_inplace(x, w, c.rms_eps, n),
        }
    }

    /// Hot path: transformer block `li` over the first `n` rows of `sc.x`,
    /// at positions `sc.positions`. `attend` stores keys and values and runs
    /// attention (one session's cache, or one per row). Allocates nothing.
    fn layer(
        &self,
        sc: &mut Scratch<B>,
        (n, li): (usize, usize),
        runs: &[LoraRun<'_>],
        states: &mut [&mut Recurrent],
        mut attend: impl FnMut(&B, Attend<'_, B>) -> Result<(), BackendError>,
    ) -> Result<()> {
        if let Some(alt) = &self.altup {
            return self.altup_layer(alt, sc, (n, li), runs, &mut attend);
        }
        let b = self.backend;
        let c = &self.config;
        let layer = &self.layers[li];
        let d = c.d_model;
        let eps = c.rms_eps;
        // Layers run in order over the same rows, and each leaves the next
        // one's input norm in `xn` (fused with its residual add).
        if li == 0 {
            match &layer.attn_norm {
                Some(w) => self.norm(&sc.x, (w, layer.attn_norm_b.as_ref()), n, &mut sc.xn)?,
                None => b.copy_rows(&sc.x, 0..n, d, &mut sc.xn)?,
            }
            self.temper(sc, n)?;
        }
        let mixed = match (&layer.delta, &layer.conv, &layer.mamba) {
            // A feed-forward block alone (Nemotron-H's): its input is `xn`.
            _ if c.is_ffn_only(li) => None,
            (Some(dn), _, _) => {
                let dc = c.delta_net.as_ref().ok_or_else(|| no_room("delta net"))?;
                dn.run(b, sc, (c, dc, li), n, states)?;
                Some(true)
            }
            (_, Some(conv), _) => {
                let cc = c
                    .short_conv
                    .as_ref()
                    .ok_or_else(|| no_room("short convolution"))?;
                conv.run(b, sc, (c, cc, li), n, states)?;
                Some(true)
            }
            (_, _, Some(mamba)) => {
                let m = c.mamba.as_ref().ok_or_else(|| no_room("Mamba-2 mixer"))?;
                mamba.run(b, sc, (c, m, li), n, states)?;
                // Beside attention (Falcon-H1's): its output apart, the
                // attention's next.
                if m.parallel {
                    mamba.output(b, sc, (m, li), n)?;
                }
                Some(!m.parallel)
            }
            _ => match (&layer.mamba1, &c.mamba1) {
                (Some(mixer), Some(m)) => {
                    mixer.run(b, sc, (c, m, li), n, states)?;
                    Some(true)
                }
                _ => Some(false),
            },
        };
        if let Some(recurrent) = mixed {
            match recurrent {
                true => self.mixer_output(sc, li, n)?,
                // (DeciLM's linear map in place of attention.)
                false if c.deci_block(li) == Some(crate::config::DeciBlock::Linear) => {
                    let wo = layer.wo.as_ref().ok_or_else(|| no_room("linear map"))?;
                    b.matmul(&mut sc.ws, wo, &sc.xn, n, &mut sc.proj)?;
                }
                false => self.attention(sc, (n, li), runs, &mut attend)?,
            }
            // The outputs of a mixer and attention side by side, summed.
            if let Some(ms) = sc.mamba.as_ref().filter(|_| c.is_parallel()) {
                b.add_inplace(&mut sc.proj, &ms.proj, n * d)?;
            }
            if let Some(bo) = &layer.bo {
                b.add_row_inplace(&mut sc.proj, bo, n)?;
            }
            if let Some(s) = c.residual_scale {
                b.scale_inplace(&mut sc.proj, s, n * d)?;
            }
            // A mixer alone (Nemotron-H's) ends its block.
            if matches!(layer.ffn, Ffn::None) {
                return self.block_end(sc, (n, li), None);
            }
            if let Some([(w, bias), _]) = &layer.out_norms {
                // An encoder's: the stream normed after the attention
                // joins it is the network's input.
                b.add_inplace(&mut sc.x, &sc.proj, n * d)?;
                b.layer_norm_inplace(&mut sc.x, w, Some(bias), eps, n)?;
                // (The block's input is still the attention's, in `xn`.)
                if let Some((w2, bias2)) = &layer.attn_norm_2 {
                    b.add_inplace(&mut sc.x, &sc.xn, n * d)?;
                    b.layer_norm_inplace(&mut sc.x, w2, bias2.as_ref(), eps, n)?;
                }
                b.copy_rows(&sc.x, 0..n, d, &mut sc.xn)?;
            } else if layer.parallel {
                // The network beside the attention: its input is the
                // block's, normed by its own norm (GPT-NeoX's) or as the
                // attention's (still in `xn`).
                if let Some(w) = &layer.ffn_norm {
                    self.norm(&sc.x, (w, layer.ffn_norm_b.as_ref()), n, &mut sc.xn)?;
                }
                b.add_inplace(&mut sc.x, &sc.proj, n * d)?;
            } else {
                let next = layer
                    .ffn_norm
                    .as_ref()
                    .map(|w| (w, layer.ffn_norm_b.as_ref()));
                let norm = (eps, c.layer_norm);
                residual(b, sc, layer.post_attn_norm.as_ref(), next, norm, n, d)?;
            }
        }
        match &layer.ffn {
            Ffn::None => {}
            Ffn::Up(f) => self.up_ffn(sc, (n, li), runs, f)?,
            Ffn::Dense(gate_up, down) => {
                let f = (gate_up, down, &layer.ffn_b);
                self.dense_ffn(sc, (n, li, layer.fused.gate_up), runs, f)?;
                if let Some(e) = &layer.beside {
                    self.beside_moe(sc, (n, li), e)?;
                }
            }
            Ffn::Moe(moe) => {
                let m = c.moe.as_ref().ok_or_else(|| {
                    Error::BadConfig("a layer has experts the config does not".into())
                })?;
                self.run_moe(sc, moe, (m, li), n, false)?
            }
        }
        if let Some(s) = c.residual_scale {
            b.scale_inplace(&mut sc.proj, s, n * d)?;
        }
        self.block_end(sc, (n, li), layer.post_ffn_norm.as_ref())
    }

    /// Gemma 4's experts beside block `li`'s dense network, whose output
    /// is `sc.proj` (of the first `n` rows of `sc.xn`, the block's input
    /// `sc.x` normed): into `sc.proj`, both normed and summed.
    fn beside_moe(
        &self,
        sc: &mut Scratch<B>,
        (n, li): (usize, usize),
        e: &BesideMoe<'a, B>,
    ) -> Result<()> {
        let (b, c) = (self.backend, &self.config);
        let (d, eps) = (c.d_model, c.rms_eps);
        let m = c.moe.as_ref().ok_or_else(|| no_room("experts"))?;
        let (dense, router_in) = sc.beside.as_mut().ok_or_else(|| no_room("experts"))?;
        b.rms_norm(&sc.proj, &e.post_dense, eps, n, dense)?;
        b.rms_norm(&sc.x, &e.pre, eps, n, &mut sc.xn)?;
        b.rms_norm(&sc.x, &e.router_scale, eps, n, router_in)?;
        self.run_moe(sc, &e.moe, (m, li), n, true)?;
        let (dense, _) = sc.beside.as_ref().ok_or_else(|| no_room("experts"))?;
        b.rms_norm_inplace(&mut sc.proj, &e.post, eps, n)?;
        b.add_inplace(&mut sc.proj, dense, n * d)?;
        Ok(())
    }

    /// `moe` over the first `n` rows of `sc.xn`, into `sc.proj`; its router
    /// reads the second of `sc.beside` where `beside` (Gemma 4's), else
    /// those rows.
    fn run_moe(
        &self,
        sc: &mut Scratch<B>,
        moe: &Moe<'a, B>,
        (m, li): (&MoeConfig, usize),
        n: usize,
        beside: bool,
    ) -> Result<()> {
        let Scratch {
            ws,
            xn,
            scores,
            moe_rows,
            gate,
            up,
            proj,
            stacked,
            moe: host,
            seen,
            beside: room,
            ..
        } = sc;
        let router_in = match beside {
            true => Some(&room.as_ref().ok_or_else(|| no_room("experts"))?.1),
            false => None,
        };
        let buf = MoeBuffers {
            ws,
            xn,
            router_in,
            scores,
            input: moe_rows,
            gate,
            up,
            out: proj,
            stacked,
            host,
            seen: seen.as_deref_mut(),
        };
        moe.run(self.backend, (m, li), self.config.d_model, n, buf)
    }

    /// The end of block `li`: its last part's output `sc.proj` (normed by
    /// `post`, where there is a norm after it) joins the residual stream,
    /// and `sc.xn` becomes the next block's input (none after the last).
    fn block_end(
        &self,
        sc: &mut Scratch<B>,
        (n, li): (usize, usize),
        post: Option<&B::Buffer>,
    ) -> Result<()> {
        let (b, c) = (self.backend, &self.config);
        let (d, eps) = (c.d_model, c.rms_eps);
        let layer = &self.layers[li];
        // An encoder's block ends normed, the next block's input as it is.
        if let Some([_, (w, bias)]) = &layer.out_norms {
            b.add_inplace(&mut sc.x, &sc.proj, n * d)?;
            b.layer_norm_inplace(&mut sc.x, w, Some(bias), eps, n)?;
            b.copy_rows(&sc.x, 0..n, d, &mut sc.xn)?;
            return Ok(());
        }
        // Gemma 4's block input and output scale come after the residual.
        if layer.ple.is_some() || layer.out_scale.is_some() {
            if let Some(pw) = post {
                b.rms_norm_inplace(&mut sc.proj, pw, eps, n)?;
            }
            b.add_inplace(&mut sc.x, &sc.proj, n * d)?;
            if let Some(w) = &layer.ple {
                let s = sc.ple.as_mut().ok_or_else(|| no_room("block inputs"))?;
                self.ple_gate(w, s, &mut sc.ws, &mut sc.seen, (&sc.x, n, li), &mut sc.proj)?;
                b.add_inplace(&mut sc.x, &sc.proj, n * d)?;
            }
            if let Some(f) = layer.out_scale {
                b.scale_inplace(&mut sc.x, f, n * d)?;
            }
            match self.layers.get(li + 1) {
                Some(Layer {
                    attn_norm: Some(w),
                    attn_norm_b,
                    ..
                }) => self.norm(&sc.x, (w, attn_norm_b.as_ref()), n, &mut sc.xn)?,
                _ => b.copy_rows(&sc.x, 0..n, d, &mut sc.xn)?,
            }
            return Ok(());
        }
        match self.layers.get(li + 1) {
            Some(l) => {
                let next = l.attn_norm.as_ref().map(|w| (w, l.attn_norm_b.as_ref()));
                residual(b, sc, post, next, (eps, c.layer_norm), n, d)?
            }
            None => {
                if let Some(pw) = post {
                    b.rms_norm_inplace(&mut sc.proj, pw, eps, n)?;
                }
                b.add_inplace(&mut sc.x, &sc.proj, n * d)?
            }
        }
        Ok(())
    }

    /// The output product of recurrent block `li`'s mix of `n` rows, into
    /// `sc.proj`.
    fn mixer_output(&self, sc: &mut Scratch<B>, li: usize, n: usize) -> Result<()> {
        let (b, c) = (self.backend, &self.config);
        let Scratch {
            ws,
            delta,
            conv,
            mamba,
            mamba1,
            proj,
            seen,
            ..
        } = sc;
        let (out, width, name) = match (&c.delta_net, &c.short_conv, &c.mamba) {
            (Some(dc), _, _) => (delta.as_ref().map(|s| &s.out), dc.v_dim(), "ssm_out"),
            (_, Some(_), _) => (
                conv.as_ref().map(|s| &s.out),
                c.d_model,
                "shortconv.out_proj",
            ),
            (_, _, Some(m)) => (mamba.as_ref().map(|s| &s.out), m.inner, "ssm_out"),
            _ => match &c.mamba1 {
                Some(m) => (mamba1.as_ref().map(|s| &s.out), m.inner, "ssm_out"),
                None => (None, 0, ""),
            },
        };
        let out = out.ok_or_else(|| no_room("recurrent block"))?;
        let wo = self.layers[li]
            .wo
            .as_ref()
            .ok_or_else(|| no_room("mixer's output"))?;
        b.matmul(ws, wo, out, n, proj)?;
        if let Some(seen) = seen {
            let name = format!("blk.{li}.{name}.weight");
            seen.observe_named(b, ws, &name, (out, n, width))?;
        }
        Ok(())
    }

    /// The attention of block `li` over the first `n` rows of `sc.xn`,
    /// its output product in `sc.proj`.
    fn attention(
        &self,
        sc: &mut Scratch<B>,
        (n, li): (usize, usize),
        runs: &[LoraRun<'_>],
        attend: &mut impl FnMut(&B, Attend<'_, B>) -> Result<(), BackendError>,
    ) -> Result<()> {
        let b = self.backend;
        let c = &self.config;
        let layer = &self.layers[li];
        let d = c.d_model;
        let eps = c.rms_eps;
        // This block's heads (Gemma 4's global blocks have their own).
        let heads = c.layer_heads(li);
        let (hd, kvh) = (heads.head_dim, heads.n_kv_heads);
        let (q_dim, kv_dim) = (c.n_heads * hd, kvh * hd);
        let qk_norm = match (&layer.mla, &c.mla) {
            // Latent attention's own queries, keys and values.
            (Some(mla), Some(m)) => {
                mla.qkv(b, sc, (c, m, li), n)?;
                None
            }
            _ => {
                match sc.delta.as_mut().filter(|_| c.attn_output_gate) {
                    // Each head's query and gate, then apart.
                    Some(ds) => {
                        project(
                            b,
                            &mut sc.ws,
                            &layer.qkv,
                            &sc.xn,
                            n,
                            &mut sc.stacked,
                            &[2 * q_dim, kv_dim, kv_dim],
                            &mut [&mut ds.q_gate, &mut sc.k, &mut sc.v],
                        )?;
                        b.split_cols(
                            &ds.q_gate,
                            n * c.n_heads,
                            &[hd, hd],
                            &mut [&mut sc.q, &mut ds.gate],
                        )?;
                    }
                    None => project(
                        b,
                        &mut sc.ws,
                        &layer.qkv,
                        &sc.xn,
                        n,
                        &mut sc.stacked,
                        &[q_dim, kv_dim, kv_dim],
                        &mut [&mut sc.q, &mut sc.k, &mut sc.v],
                    )?,
                }
                // A fused matrix's input is seen once, under its name.
                let mut unseen = None;
                let seen = match (layer.fused.qkv, &mut sc.seen) {
                    (true, Some(c)) => {
                        let name = format!("blk.{li}.attn_qkv.weight");
                        c.observe_named(b, &mut sc.ws, &name, (&sc.xn, n, d))?;
                        &mut unseen
                    }
                    (_, seen) => seen,
                };
                let made = [
                    (Target::Q, &mut sc.q, q_dim),
                    (Target::K, &mut sc.k, kv_dim),
                    (Target::V, &mut sc.v, kv_dim),
                ];
                // (A block that reads another's cache makes queries alone,
                // one whose keys are its values no values.)
                let made = made
                    .into_iter()
                    .take(match (layer.kv_shared, layer.v_from_k) {
                        (true, _) => 1,
                        (_, true) => 2,
                        _ => 3,
                    });
                for (t, out, m) in made {
                    let x = (&sc.xn, n, d);
                    self.adapt(
                        &mut sc.ws,
                        (&mut sc.lora, seen),
                        runs,
                        Some((li, t)),
                        x,
                        (out, m),
                    )?;
                }
                for (out, bias) in [
                    (&mut sc.q, &layer.bq),
                    (&mut sc.k, &layer.bk),
                    (&mut sc.v, &layer.bv),
                ] {
                    if let Some(bias) = bias {
                        b.add_row_inplace(out, bias, n)?;
                    }
                }
                if let Some(limit) = c.clamp_kqv {
                    b.clamp_inplace(&mut sc.q, limit, n * c.layer_q_dim(li))?;
                    b.clamp_inplace(&mut sc.k, limit, n * kv_dim)?;
                    b.clamp_inplace(&mut sc.v, limit, n * kv_dim)?;
                }
                if layer.v_from_k {
                    b.copy_rows(&sc.k, 0..n, kv_dim, &mut sc.v)?;
                }
                if let Some(w) = layer.v_norm.as_ref().filter(|_| !layer.kv_shared) {
                    b.rms_norm_inplace(&mut sc.v, w, eps, n * kvh)?;
                }
                // Per-head Q/K norms (Gemma 3) go with the attention, which a
                // backend may fuse them into.
                // (OLMo 2's span all heads: a row each.)
                match (&layer.q_norm, &layer.k_norm) {
                    (Some(q), Some(k)) if !c.qk_norm_whole => Some(QkNorm { q, k, eps }),
                    (q, k) => {
                        let (q_rows, k_rows) = match c.qk_norm_whole {
                            true => (n, n),
                            false => (n * c.n_heads, n * kvh),
                        };
                        let [qb, kb] = &layer.qk_norm_b;
                        for (x, w, bias, rows) in
                            [(&mut sc.q, q, qb, q_rows), (&mut sc.k, k, kb, k_rows)]
                        {
                            match (w, c.layer_norm) {
                                (Some(w), true) => {
                                    b.layer_norm_inplace(x, w, bias.as_ref(), eps, rows)?
                                }
                                (Some(w), false) => b.rms_norm_inplace(x, w, eps, rows)?,
                                (None, _) => {}
                            }
                        }
                        None
                    }
                }
            }
        };
        // The attention temperature, on the queries before RoPE, which
        // commutes with it (no architecture that has one norms the
        // queries it scales); Llama 4's on its layers without RoPE only.
        let nope_only = c.attn_temperature.is_some_and(|t| t.nope_only);
        let tempered = sc.tempered && (!nope_only || !c.layer_ropes(li));
        if let Some(t) = sc.temper.as_ref().filter(|_| tempered) {
            b.mul_inplace(&mut sc.q, t, n * q_dim)?;
        }
        let mut rope = self.rope(li, sc.long_rope);
        // Norms after RoPE (Hunyuan's): both here, the attention's own
        // rotation none.
        let qk_norm = match qk_norm {
            Some(norm) if c.qk_norm_after_rope => {
                let pos = sc.positions.get(..n).ok_or_else(|| no_room("positions"))?;
                b.rope(&mut sc.ws, &mut sc.q, c.n_heads, hd, pos, &rope)?;
                b.rope(&mut sc.ws, &mut sc.k, kvh, hd, pos, &rope)?;
                b.rms_norm_inplace(&mut sc.q, norm.q, norm.eps, n * c.n_heads)?;
                b.rms_norm_inplace(&mut sc.k, norm.k, norm.eps, n * kvh)?;
                rope.freq_scale = 0.0;
                rope.magnitude = 1.0;
                None
            }
            other => other,
        };
        let params = AttentionParams {
            n_heads: c.n_heads,
            n_kv_heads: kvh,
            head_dim: hd,
            scale: c.attn_scale,
            sliding_window: c.layer_window(li),
            chunk: c.layer_chunk(li),
            softcap: c.attn_softcap,
            sinks: layer.sinks.as_deref(),
            alibi: self.alibi_slopes.as_deref(),
            bidirectional: c.bidirectional,
        };
        let a = Attend {
            ws: &mut sc.ws,
            k: &mut sc.k,
            v: &sc.v,
            q: &mut sc.q,
            qk_norm,
            positions: &sc.positions,
            rope: &rope,
            params: &params,
            out: &mut sc.att,
            slot: layer.kv_slot,
            write: !layer.kv_shared,
        };
        attend(b, a)?;
        if let Some(ds) = sc.delta.as_ref().filter(|_| c.attn_output_gate) {
            b.sigmoid_mul_inplace(&mut sc.att, &ds.gate, n * q_dim)?;
        }
        match (&layer.mla, &c.mla) {
            (Some(mla), Some(m)) => {
                let wo = layer.wo.as_ref().ok_or_else(|| no_room("mixer's output"))?;
                mla.output(b, sc, (c, m, li), wo, n)?
            }
            _ => {
                let wo = layer.wo.as_ref().ok_or_else(|| no_room("mixer's output"))?;
                if let Some(w) = &layer.sub_norms[0] {
                    b.rms_norm_inplace(&mut sc.att, w, c.rms_eps, n)?;
                }
                b.matmul(&mut sc.ws, wo, &sc.att, n, &mut sc.proj)?;
                let (x, out) = ((&sc.att, n, q_dim), (&mut sc.proj, d));
                self.adapt(
                    &mut sc.ws,
                    (&mut sc.lora, &mut sc.seen),
                    runs,
                    Some((li, Target::O)),
                    x,
                    out,
                )?;
            }
        }
        Ok(())
    }
}

impl<B: Backend> Model<'_, B> {
    /// Layer `layer`'s RoPE, for a session longer than the original
    /// context (`long`: LongRoPE's long factors) or not.
    pub(crate) fn rope(&self, layer: usize, long: bool) -> RopeParams<'_> {
        let c = &self.config;
        let factors = match &self.rope_factors_long {
            _ if c.layer_rope_plain(layer) => None,
            Some(f) if long => Some(f),
            _ => self.rope_factors.as_ref(),
        };
        RopeParams {
            n_dims: c.layer_heads(layer).rope_dims,
            base: c.layer_rope_base(layer),
            freq_scale: c.layer_rope_freq_scale(layer),
            mode: c.rope_mode,
            factors: factors.map(Vec::as_slice),
            magnitude: c.layer_rope_magnitude(layer),
        }
    }

    /// Whether any of `positions` is past the attention temperature's floor
    /// (its queries then scaled: such a step runs op by op, not as a
    /// static step).
    fn tempers(&self, positions: &[u32]) -> bool {
        self.config
            .attn_temperature
            .is_some_and(|t| positions.iter().any(|&p| t.applies(p)))
    }

    /// Readies the attention temperature of the first `n` rows of the
    /// pass (at `sc.positions`): their factors in `sc.temper` where any
    /// is not 1.
    fn temper(&self, sc: &mut Scratch<B>, n: usize) -> Result<()> {
        let positions = &sc.positions[..n.min(sc.positions.len())];
        sc.tempered = false;
        let Some(t) = self.config.attn_temperature else {
            return Ok(());
        };
        if !self.tempers(positions) {
            return Ok(());
        }
        let q = self.config.q_dim();
        sc.temper_host.clear();
        for &p in positions {
            let f = t.factor(p);
            sc.temper_host.extend(std::iter::repeat_n(f, q));
        }
        let b = self.backend;
        let buf = match &mut sc.temper {
            Some(buf) => buf,
            None => sc.temper.insert(b.buffer(sc.rows * q)?),
        };
        b.upload_into(&sc.temper_host, buf)?;
        sc.tempered = true;
        Ok(())
    }

    /// Whether a session of `max_seq_len` tokens rotates with LongRoPE's
    /// long factors: where it may pass the original context, as llama.cpp
    /// chooses them by its context's size.
    fn long_rope(&self, max_seq_len: usize) -> bool {
        self.rope_factors_long.is_some() && max_seq_len > self.config.rope_original_context
    }
}

impl<'a, B: Backend> Model<'a, B> {
    /// A feed-forward block without a gate (up, its bias, squared ReLUs
    /// or GELUs, down, its bias) over the first `n` rows of `sc.xn`, into
    /// `sc.proj`.
    fn up_ffn(
        &self,
        sc: &mut Scratch<B>,
        (n, li): (usize, usize),
        runs: &[LoraRun<'_>],
        f: &UpFfn<'a, B>,
    ) -> Result<()> {
        let b = self.backend;
        let (d, ff) = (self.config.d_model, self.config.ffn_dim);
        b.matmul(&mut sc.ws, &f.up, &sc.xn, n, &mut sc.gate)?;
        let lora = (&mut sc.lora, &mut sc.seen);
        let (x, out) = ((&sc.xn, n, d), (&mut sc.gate, ff));
        self.adapt(&mut sc.ws, lora, runs, Some((li, Target::Up)), x, out)?;
        if let Some(bias) = &f.up_b {
            b.add_row_inplace(&mut sc.gate, bias, n)?;
        }
        match f.act {
            UpAct::Gelu => b.gelu_inplace(&mut sc.gate, n * ff)?,
            UpAct::SquaredRelu => b.relu_squared_inplace(&mut sc.gate, n * ff)?,
            UpAct::Xielu(p) => b.xielu_inplace(&mut sc.gate, p, n * ff)?,
        }
        b.matmul(&mut sc.ws, &f.down, &sc.gate, n, &mut sc.proj)?;
        let lora = (&mut sc.lora, &mut sc.seen);
        let (x, out) = ((&sc.gate, n, ff), (&mut sc.proj, d));
        self.adapt(&mut sc.ws, lora, runs, Some((li, Target::Down)), x, out)?;
        if let Some(bias) = &f.down_b {
            b.add_row_inplace(&mut sc.proj, bias, n)?;
        }
        Ok(())
    }

    /// A dense feed-forward block over the first `n` rows of `sc.xn`, into
    /// `sc.proj`, with the rows' adapters `runs` (layer `li`; `fused`: its
    /// gate and up are one matrix), and its biases (gate, up, down) where
    /// it has them.
    fn dense_ffn(
        &self,
        sc: &mut Scratch<B>,
        (n, li, fused): (usize, usize, bool),
        runs: &[LoraRun<'_>],
        (gate_up, down, biases): DenseFfn<'_, 'a, B>,
    ) -> Result<()> {
        let b = self.backend;
        let (d, ff) = (self.config.d_model, self.config.layer_ffn_dim(li));
        project(
            b,
            &mut sc.ws,
            gate_up,
            &sc.xn,
            n,
            &mut sc.stacked,
            &[ff, ff],
            &mut [&mut sc.gate, &mut sc.up],
        )?;
        let mut unseen = None;
        let seen = match (fused, &mut sc.seen) {
            (true, Some(c)) => {
                let name = format!("blk.{li}.ffn_up.weight");
                c.observe_named(b, &mut sc.ws, &name, (&sc.xn, n, d))?;
                &mut unseen
            }
            (_, seen) => seen,
        };
        for (t, out) in [(Target::Gate, &mut sc.gate), (Target::Up, &mut sc.up)] {
            let x = (&sc.xn, n, d);
            self.adapt(
                &mut sc.ws,
                (&mut sc.lora, seen),
                runs,
                Some((li, t)),
                x,
                (out, ff),
            )?;
        }
        for (out, bias) in [(&mut sc.gate, &biases[0]), (&mut sc.up, &biases[1])] {
            if let Some(bias) = bias {
                b.add_row_inplace(out, bias, n)?;
            }
        }
        match self.config.gate {
            GateActivation::Gelu => {
                if let Some(mul) = self.config.altup.as_ref().and_then(|a| a.sparsity[li]) {
                    self.sparsify(sc, n, mul)?;
                }
                b.geglu_inplace(&mut sc.gate, &sc.up, n * ff)?
            }
            GateActivation::Silu => b.swiglu_inplace(&mut sc.gate, &sc.up, n * ff)?,
            GateActivation::SquaredRelu => {
                b.relu_squared_inplace(&mut sc.gate, n * ff)?;
                b.mul_inplace(&mut sc.gate, &sc.up, n * ff)?;
            }
        }
        if let Some(w) = &self.layers[li].sub_norms[1] {
            b.rms_norm_inplace(&mut sc.gate, w, self.config.rms_eps, n)?;
        }
        b.matmul(&mut sc.ws, down, &sc.gate, n, &mut sc.proj)?;
        let (x, out) = ((&sc.gate, n, ff), (&mut sc.proj, d));
        self.adapt(
            &mut sc.ws,
            (&mut sc.lora, &mut sc.seen),
            runs,
            Some((li, Target::Down)),
            x,
            out,
        )?;
        if let Some(bias) = &biases[2] {
            b.add_row_inplace(&mut sc.proj, bias, n)?;
        }
        Ok(())
    }
}

/// A block part's output `sc.proj` (normed by `post`, where it has a
/// norm after it) joins the residual stream `sc.x`, and `sc.xn` becomes
/// the next part's input: `sc.x` normed by `next`, or as it is where the
/// next part norms nothing (OLMo 2). The first `n` rows of width `d`.
/// `next` is that norm's weight and bias, and `layer` says whether it is
/// a LayerNorm (of epsilon `eps`, as `post`).
fn residual<B: Backend>(
    b: &B,
    sc: &mut Scratch<B>,
    post: Option<&B::Buffer>,
    next: Option<(&B::Buffer, Option<&B::Buffer>)>,
    (eps, layer): (f32, bool),
    n: usize,
    d: usize,
) -> Result<(), BackendError> {
    let (x, proj, xn) = (&mut sc.x, &mut sc.proj, &mut sc.xn);
    match (post, next) {
        (post, Some((nw, nb))) if layer => {
            if let Some(pw) = post {
                b.rms_norm_inplace(proj, pw, eps, n)?;
            }
            b.add_inplace(x, proj, n * d)?;
            b.layer_norm(x, nw, nb, eps, n, xn)
        }
        (Some(pw), Some((nw, _))) => b.norm_add_rms_norm(x, proj, pw, nw, eps, n, d, xn),
        (None, Some((nw, _))) => b.add_rms_norm(x, proj, nw, eps, n, d, xn),
        (post, None) => {
            if let Some(pw) = post {
                b.rms_norm_inplace(proj, pw, eps, n)?;
            }
            b.add_inplace(x, proj, n * d)?;
            b.copy_rows(x, 0..n, d, xn)
        }
    }
}

/// What a layer hands its attention: the rows' keys, values and queries
/// (keys and queries not yet rotated), their positions and RoPE, and where
/// the output goes.
struct Attend<'x, B: Backend> {
    ws: &'x mut B::Workspace,
    k: &'x mut B::Buffer,
    v: &'x B::Buffer,
    q: &'x mut B::Buffer,
    /// Per-head norms of the queries and keys, not yet applied.
    qk_norm: Option<QkNorm<'x, B::Buffer>>,
    positions: &'x [u32],
    rope: &'x RopeParams<'x>,
    params: &'x AttentionParams<'x>,
    out: &'x mut B::Buffer,
    /// The block's layer of the KV cache.
    slot: usize,
    /// Whether the rows' keys and values go into it (not where an earlier
    /// block's stored them: the rows' `k` and `v` are then not made).
    write: bool,
}

impl<B: Backend> Attend<'_, B> {
    /// The rows are one sequence's next tokens, cached in `cache`.
    fn one(self, b: &B, cache: &mut B::KvCache) -> Result<(), BackendError> {
        let n = self.positions.len();
        if n == 1 || !self.write {
            // A decode step (the backend's fused path), or attention over
            // what an earlier block stored.
            return self.rows(b, &mut [cache]);
        }
        b.rope_attend(
            self.ws,
            cache,
            self.slot,
            self.positions,
            (self.q, self.k, self.v),
            self.qk_norm,
            self.rope,
            self.params,
            self.out,
        )
    }

    /// Row `i` is the next token of the sequence cached in `caches[i]`.
    fn rows(self, b: &B, caches: &mut [&mut B::KvCache]) -> Result<(), BackendError> {
        if !self.write {
            return self.cached(b, caches);
        }
        b.rope_attend_rows(
            self.ws,
            caches,
            self.slot,
            self.positions,
            (self.q, self.k, self.v),
            self.qk_norm,
            self.rope,
            self.params,
            self.out,
        )
    }

    /// The rows' queries normed and rotated, then attended over what the
    /// caches hold (an earlier block stored the rows' keys and values):
    /// one span for one cache, else a row a cache.
    fn cached(self, b: &B, caches: &mut [&mut B::KvCache]) -> Result<(), BackendError> {
        let Attend {
            ws,
            q,
            qk_norm,
            positions,
            rope,
            params: p,
            out,
            slot,
            ..
        } = self;
        let n = positions.len();
        if let Some(norm) = qk_norm {
            b.rms_norm_inplace(q, norm.q, norm.eps, n * p.n_heads)?;
        }
        b.rope(ws, q, p.n_heads, p.head_dim, positions, rope)?;
        let span = |pos: u32| KvSpan {
            layer: slot,
            start_pos: pos as usize,
        };
        match caches {
            [cache] => {
                let first = positions.first().copied().unwrap_or(0);
                b.attention(ws, cache, span(first), q, 0..n, p, out)
            }
            caches if caches.len() == n => {
                for (i, (cache, &pos)) in caches.iter_mut().zip(positions).enumerate() {
                    b.attention(ws, cache, span(pos), q, i..i + 1, p, out)?;
                }
                Ok(())
            }
            _ => Err(BackendError::InvalidParameter {
                op: "attention",
                what: "one cache, or one a row",
            }),
        }
    }
}

/// The products of a group of weights with the first `n` rows of `x`, into
/// `outs` (of `widths` values a row); a stacked run multiplies once into
/// `stacked` and splits.
#[allow(clippy::too_many_arguments)]
fn project<B: Backend>(
    b: &B,
    ws: &mut B::Workspace,
    g: &Group<B::Weight<'_>>,
    x: &B::Buffer,
    n: usize,
    stacked: &mut B::Buffer,
    widths: &[usize],
    outs: &mut [&mut B::Buffer],
) -> Result<(), BackendError> {
    let mut first = 0;
    for (w, parts) in &g.runs {
        let run = first..first + parts;
        let (Some(outs), Some(widths)) = (outs.get_mut(run.clone()), widths.get(run)) else {
            return Err(BackendError::InvalidParameter {
                op: "project",
                what: "a group has more matrices than outputs",
            });
        };
        match outs {
            [one] => b.matmul(ws, w, x, n, one)?,
            many => {
                b.matmul(ws, w, x, n, stacked)?;
                b.split_cols(stacked, n, widths, many)?;
            }
        }
        first += parts;
    }
    Ok(())
}

/// The one run of a single sequence's `n` rows with adapters `set`, if
/// it has any.
fn lora_run(set: &[(LoraId, f32)], n: usize) -> Option<LoraRun<'_>> {
    (!set.is_empty()).then_some(LoraRun { rows: 0..n, set })
}

/// Cache positions a static step spans are a multiple of this: one
/// recording of a decode step serves this many positions.
pub const STEP_SPAN: usize = 256;

/// The fewest logits one thread copies from a batch's into its sessions:
/// 512 KB, tens of microseconds of copying, against the few a hand-over
/// to another thread costs.
const COPY_VALUES: usize = 1 << 17;

/// Most rows of logits [`Model::forward_outputs`] computes in one product
/// (32 rows of Gemma 3's 262,144-word vocabulary are 32 MiB).
pub const OUTPUT_ROWS: usize = 32;

/// Tokens before a prompt's end where a caller keeping a recurrent
/// model's sessions takes a checkpoint ([`Session::checkpoint`]), as
/// llama.cpp's server takes one 4 tokens before: a chat's next prompt most
/// often leaves what a session holds in the generation prompt's last few
/// tokens, where a reply begins (the server and `realm chat` take theirs
/// here).
pub const CHECKPOINT_TAIL: usize = 4;

/// What [`Model::forward_outputs`] and [`Model::forward_embeddings`] hand
/// over for each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    Logits,
    Hidden,
}

/// Source of [`Session`] identities (the key of a batch's recording).
static NEXT_SESSION: AtomicU64 = AtomicU64::new(0);

/// Source of [`Model`] identities (the key of a recording too).
static NEXT_MODEL: AtomicU64 = AtomicU64::new(0);

/// The cache positions a static step spans when its furthest row needs
/// `needed`: rounded up to a multiple of [`STEP_SPAN`], at most `cap`.
fn step_len(needed: usize, cap: usize) -> usize {
    needed
        .div_ceil(STEP_SPAN)
        .saturating_mul(STEP_SPAN)
        .min(cap)
        .max(needed)
}

/// Activations and scratch for up to `rows` tokens, sized once, in the
/// backend's memory.
#[derive(Debug)]
struct Scratch<B: Backend> {
    ws: B::Workspace,
    rows: usize,
    x: B::Buffer,
    xn: B::Buffer,
    q: B::Buffer,
    k: B::Buffer,
    v: B::Buffer,
    att: B::Buffer,
    proj: B::Buffer,
    gate: B::Buffer,
    up: B::Buffer,
    /// Router scores of a mixture of experts (a value a row without one).
    scores: B::Buffer,
    /// The host's part of a mixture of experts, and the rows it uploads.
    moe: MoeHost,
    moe_rows: B::Buffer,
    /// A stacked group's products before they are split (empty when no
    /// group is stacked).
    stacked: B::Buffer,
    logits: B::Buffer,
    positions: Vec<u32>,
    tokens: Vec<u32>,
    recorded: Recorded<B>,
    /// Room for LoRA products, made when a call first runs with adapters.
    lora: Option<LoraScratch<B>>,
    /// What sees the inputs of the matrix products (an importance matrix
    /// being collected), if anything does.
    seen: Option<Box<Collector>>,
    /// Whether the rows rotate with LongRoPE's long factors
    /// ([`Model::rope`]).
    long_rope: bool,
    /// The attention temperature's factor on each query value of the rows
    /// (made when a row first passes the temperature's floor), and whether
    /// the rows of this pass need it.
    temper: Option<B::Buffer>,
    tempered: bool,
    /// The factors on the host, before they are uploaded.
    temper_host: Vec<f32>,
    /// Latent attention's room, for a model with it.
    mla: Option<MlaScratch<B>>,
    /// Delta nets' and gated attention's room, for a model with them.
    delta: Option<DeltaScratch<B>>,
    /// Short convolutions' room, for a model with them.
    conv: Option<ConvScratch<B>>,
    /// Mamba-2 mixers' room, for a model with them.
    mamba: Option<MambaScratch<B>>,
    /// Mamba mixers' room, for a model with them.
    mamba1: Option<Mamba1Scratch<B>>,
    /// Gemma 3n's streams' room, for a model with them.
    altup: Option<AltUpScratch<B>>,
    /// Room for the blocks' own inputs, for a model with them.
    ple: Option<PleScratch<B>>,
    /// Gemma 4's dense network's output and its experts' router input,
    /// for a model with experts beside its dense blocks.
    beside: Option<(B::Buffer, B::Buffer)>,
}

impl<B: Backend> Scratch<B> {
    /// Room for `rows` tokens and `logit_rows` rows of logits (one for a
    /// session, which keeps only its last token's, `rows` for a batch).
    fn new(
        backend: &B,
        c: &ModelConfig,
        rows: usize,
        logit_rows: usize,
        stacked: usize,
    ) -> Result<Self> {
        let buf = |width: usize| backend.buffer(rows * width);
        // Dense blocks' hidden width, or the experts' (and a shared one's).
        // (`ffn_dim` is the widest of blocks that differ.)
        let ff = c.moe.as_ref().map_or(c.ffn_dim, |m| {
            m.ffn_dim.max(c.ffn_dim).max(m.shared_ffn_dim.unwrap_or(0))
        });
        Ok(Self {
            ws: backend.workspace(),
            rows,
            x: buf(c.d_model)?,
            xn: buf(c.d_model)?,
            q: buf(c.max_q_dim())?,
            k: buf(c.max_kv_dim())?,
            v: buf(c.max_kv_dim())?,
            att: buf(c.max_q_dim())?,
            proj: buf(c.d_model)?,
            gate: buf(ff)?,
            up: buf(ff)?,
            scores: buf(c.moe.as_ref().map_or(1, |m| m.experts))?,
            moe: MoeHost::default(),
            moe_rows: backend.buffer(1)?,
            // (One value a row when nothing is stacked: no empty buffers.)
            stacked: buf(stacked.max(1))?,
            logits: backend.buffer(logit_rows * c.vocab_size)?,
            positions: Vec::with_capacity(rows),
            tokens: Vec::with_capacity(rows),
            recorded: Recorded::default(),
            lora: None,
            seen: None,
            long_rope: false,
            temper: None,
            tempered: false,
            temper_host: Vec::new(),
            mla: match &c.mla {
                Some(m) => Some(MlaScratch::new(backend, c, m, rows)?),
                None => None,
            },
            delta: match &c.delta_net {
                Some(d) => Some(DeltaScratch::new(backend, c, d, rows)?),
                None => None,
            },
            conv: match &c.short_conv {
                Some(_) => Some(ConvScratch::new(backend, c, rows)?),
                None => None,
            },
            mamba: match &c.mamba {
                Some(m) => Some(MambaScratch::new(backend, c, m, rows)?),
                None => None,
            },
            mamba1: match &c.mamba1 {
                Some(m) => Some(Mamba1Scratch::new(backend, m, rows)?),
                None => None,
            },
            altup: match &c.altup {
                Some(a) => Some(AltUpScratch::new(backend, c, a, rows)?),
                None => None,
            },
            ple: match c.per_layer_input() {
                Some(p) => Some(PleScratch::new(backend, c, p, rows)?),
                None => None,
            },
            beside: match (&c.moe, &c.gemma4) {
                (Some(_), Some(_)) => Some((buf(c.d_model)?, buf(c.d_model)?)),
                _ => None,
            },
        })
    }

    /// The workspace and every buffer a step writes.
    fn split(&mut self) -> (&mut B::Workspace, [&mut B::Buffer; 11]) {
        (
            &mut self.ws,
            [
                &mut self.logits,
                &mut self.x,
                &mut self.xn,
                &mut self.q,
                &mut self.k,
                &mut self.v,
                &mut self.att,
                &mut self.proj,
                &mut self.gate,
                &mut self.up,
                &mut self.stacked,
            ],
        )
    }

    /// Why recording the decode step last failed, if it did.
    fn recording_failure(&self) -> Option<&str> {
        self.recorded.failure()
    }
}

/// Scratch space of [`Model::forward_batch`] (from [`Model::batch_scratch`]),
/// reused from step to step so that a batched decode allocates only the list
/// of its rows' caches.
#[derive(Debug)]
pub struct BatchScratch<B: Backend> {
    scratch: Scratch<B>,
    /// Every row's session (a static step's key).
    key: Vec<u64>,
}

impl<B: Backend> BatchScratch<B> {
    /// Why recording (or replaying) the batch's decode step last failed,
    /// unless a recording has succeeded since: after a failure steps run
    /// op by op for a while, and for good after three in a row (see
    /// [`Model::forward`]).
    pub fn recording_failure(&self) -> Option<&str> {
        self.scratch.recording_failure()
    }
}

/// The chunk in flight between [`Model::embed_tokens`] and the last layer.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    len: usize,
    layers_done: usize,
    /// Whether the session's logits are this chunk's (then
    /// [`Model::compute_logits`] returns them as they are: after a
    /// replayed static step, the scratch no longer holds the chunk's
    /// activations).
    logits: bool,
}

impl Chunk {
    /// A decode step's token after all `layers`, its logits in the session.
    fn decoded(layers: usize) -> Self {
        Self {
            len: 1,
            layers_done: layers,
            logits: true,
        }
    }
}

/// One sequence's state: its KV cache, its recurrent blocks' states
/// (a model with delta nets, short convolutions or Mamba-2 mixers), its
/// position, and scratch buffers sized once so that decoding allocates
/// nothing.
#[derive(Debug)]
pub struct Session<B: Backend> {
    /// Unique for the life of the process.
    id: u64,
    cache: B::KvCache,
    kv_dtype: KvDtype,
    pos: usize,
    max_seq_len: usize,
    chunk: Option<Chunk>,
    scratch: Scratch<B>,
    /// The last token's logits, on the host, when `logits_on_host`;
    /// otherwise they are read in place from the backend's host buffer.
    logits: Vec<f32>,
    logits_on_host: bool,
    /// The LoRA adapters it runs with, and their scales (none 0).
    loras: Vec<(LoraId, f32)>,
    /// Its delta nets' states (none for a model without).
    recurrent: Recurrent,
    /// Copies of those states at earlier positions, oldest first
    /// ([`Session::checkpoint`]), and how many it keeps.
    checkpoints: Vec<(usize, Recurrent)>,
    max_checkpoints: usize,
    /// The model's blocks.
    layers: usize,
}

impl<B: Backend> Session<B> {
    /// An id unique for the life of the process. A batched step is
    /// recorded for its rows' sessions in their order
    /// ([`Model::forward_batch`]): a caller whose batches gather in any
    /// order keeps them in one order by sorting rows by id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Tokens in the KV cache so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Most tokens the session can hold.
    pub fn capacity(&self) -> usize {
        self.max_seq_len
    }

    /// Forgets every token after the first `pos` (the cache keeps the
    /// rest). A model with recurrent blocks (Qwen 3.5's delta nets; see
    /// [`Model::can_forget`]) cannot take tokens out of their states:
    /// there, forgetting any token goes back to the last checkpoint at or
    /// before `pos` ([`Session::checkpoint`]), or to position 0 where
    /// there is none. A caller that keeps a prefix reads
    /// [`Session::position`] afterwards (or asks [`Session::reachable`]
    /// before).
    pub fn truncate(&mut self, pos: usize) {
        if self.recurrent.any() && (pos < self.pos || self.chunk_unfinished()) {
            self.checkpoints.retain(|&(at, _)| at <= pos);
            match self.checkpoints.last() {
                Some((at, states)) => {
                    self.recurrent.layers.clone_from(&states.layers);
                    self.pos = *at;
                }
                None => self.restart(),
            }
        }
        self.pos = self.pos.min(pos);
        self.chunk = None;
    }

    /// The position [`Session::truncate`] to `pos` would leave.
    pub fn reachable(&self, pos: usize) -> usize {
        if !self.recurrent.any() || (pos >= self.pos && !self.chunk_unfinished()) {
            return pos.min(self.pos);
        }
        self.checkpoints
            .iter()
            .rev()
            .find(|&&(at, _)| at <= pos)
            .map_or(0, |&(at, _)| at)
    }

    /// Keeps at most `n` checkpoints of its recurrent states (none by
    /// default); the oldest go first.
    pub fn set_max_checkpoints(&mut self, n: usize) {
        self.max_checkpoints = n;
        let extra = self.checkpoints.len().saturating_sub(n);
        self.checkpoints.drain(..extra);
    }

    /// Keeps a copy of its recurrent states at this position (llama.cpp's
    /// context checkpoints), so that forgetting tokens after it
    /// ([`Session::truncate`]) comes back here instead of to position 0:
    /// a server takes one a few tokens before a prompt's end, where the
    /// next turn's prompt (the reply as the chat template writes it back)
    /// most often leaves what the session holds. Returns whether it kept
    /// one: not for a model without recurrent blocks (whose cache forgets
    /// any token), nor half way through a chunk, nor where
    /// [`Session::set_max_checkpoints`] allows none. A checkpoint holds
    /// every recurrent block's state (Qwen 3.5 0.8B's: about 20 MB).
    pub fn checkpoint(&mut self) -> bool {
        if !self.recurrent.any() || self.max_checkpoints == 0 || self.chunk_unfinished() {
            return false;
        }
        let pos = self.pos;
        self.checkpoints.retain(|&(at, _)| at != pos);
        if self.checkpoints.len() >= self.max_checkpoints {
            self.checkpoints.remove(0);
        }
        self.checkpoints.push((pos, self.recurrent.clone()));
        true
    }

    /// Positions of its checkpoints, oldest first.
    pub fn checkpoints(&self) -> impl Iterator<Item = usize> + '_ {
        self.checkpoints.iter().map(|&(at, _)| at)
    }

    /// Whether a chunk has run through some layers but not all: a delta
    /// net's state then holds part of it.
    fn chunk_unfinished(&self) -> bool {
        self.chunk
            .is_some_and(|c| c.layers_done > 0 && c.layers_done < self.layers)
    }

    /// Back to position 0, the delta nets' states to their start (their
    /// checkpoints go: the tokens after will take their cache rows).
    fn restart(&mut self) {
        self.pos = 0;
        self.chunk = None;
        self.recurrent.reset();
        self.checkpoints.clear();
    }

    /// Most tokens one chunk of [`Model::embed_tokens`] may hold.
    pub fn batch(&self) -> usize {
        self.scratch.rows
    }

    /// Why recording (or replaying) the session's decode step last
    /// failed, unless a recording has succeeded since: after a failure
    /// steps run op by op for a while, and for good after three in a row
    /// (see [`Model::forward`]).
    pub fn recording_failure(&self) -> Option<&str> {
        self.scratch.recording_failure()
    }

    /// The logits of the last token run.
    pub fn logits(&self) -> &[f32] {
        match B::host_slice(&self.scratch.logits) {
            Some(v) if !self.logits_on_host => v,
            _ => &self.logits,
        }
    }

    /// Runs the next tokens with these LoRA adapters of its model, each
    /// product scaled by its scale (llama.cpp's `--lora-scaled`; 1 is the
    /// adapter as trained, 0 leaves it out), in place of those it ran
    /// with. Tokens already in the cache keep what they were computed
    /// with. An id of another model is refused at the next forward pass.
    pub fn set_loras(&mut self, loras: &[(LoraId, f32)]) {
        self.loras.clear();
        self.loras
            .extend(loras.iter().copied().filter(|&(_, s)| s != 0.0));
    }

    /// The adapters it runs with and their scales.
    pub fn loras(&self) -> &[(LoraId, f32)] {
        &self.loras
    }

    /// Starts collecting an importance matrix into `into`: from now on the
    /// input rows of every block matrix's product this session runs, and
    /// with `output` those of an untied output matrix (`output.weight`), are
    /// added to it ([`crate::imatrix`]). Only [`Model::forward`],
    /// [`Model::forward_outputs`] and the layer-by-layer calls collect; a
    /// session in a [`Model::forward_batch`] does not. A token's output row
    /// counts once, however often [`Model::compute_logits`] is called.
    pub fn collect_imatrix(&mut self, into: Imatrix, output: bool) {
        self.scratch.seen = Some(Box::new(Collector {
            matrix: into,
            output,
        }));
    }

    /// Stops collecting and hands over the importance matrix, if one was
    /// being collected.
    pub fn take_imatrix(&mut self) -> Option<Imatrix> {
        self.scratch.seen.take().map(|c| c.matrix)
    }
}
