//! LoRA adapters, read from llama.cpp's GGUF adapter files: low-rank
//! updates `W x + s * B (A x)` to a model's matrices. An adapter's own
//! small matrices sit beside the shared, still quantized weights, and each
//! [`Session`](crate::Session) picks the adapters it runs with and their
//! scales, so tenants of one model may each run their own fine-tune, in
//! one batch.
//!
//! ```
//! use realm_core::gguf::Gguf;
//! use realm_models::synthetic::{SyntheticLayout, SyntheticLora};
//! use realm_models::Model;
//! let base = Gguf::from_bytes(SyntheticLayout::tiny("llama")?.write(1)?)?;
//! let adapter = Gguf::from_bytes(SyntheticLora::new(4, 8.0).write(&base, 2)?)?;
//! let cpu = realm_compute_cpu::CpuBackend::new().unwrap();
//! let mut model = Model::load(&base, &cpu)?;
//! let tuned = model.add_lora(&adapter, "tuned")?;
//! let mut s = model.session(16, 4)?;
//! s.set_loras(&[(tuned, 1.0)]);
//! let logits = model.forward(&mut s, &[1, 2, 3])?.to_vec();
//! let mut plain = model.session(16, 4)?;
//! assert_ne!(model.forward(&mut plain, &[1, 2, 3])?, &logits[..]);
//! # Ok::<(), realm_models::Error>(())
//! ```

use std::collections::BTreeMap;
use std::ops::Range;

use realm_core::backend::{Backend, BackendError, WeightInfo};
use realm_core::gguf::Gguf;
use realm_core::TensorView;

use crate::config::{Architecture, ModelConfig};
use crate::{Error, Result};

mod merge;

pub use self::merge::{merge, Merged};

/// The matrices of a block an adapter may change, as GGUF names them.
pub(crate) const TARGETS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// Index of a matrix in [`TARGETS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    const ALL: [Target; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// The matrix's name in a block (`attn_q`).
    pub(crate) fn name(self) -> &'static str {
        TARGETS[self as usize]
    }

    /// `(rows, cols)` of this matrix in block `layer` of a model of
    /// config `c`.
    fn dims(self, c: &ModelConfig, layer: usize) -> (usize, usize) {
        let (d, q, kv) = (c.d_model, c.layer_q_dim(layer), c.layer_kv_dim(layer));
        let ff = c.layer_ffn_dim(layer);
        match self {
            Self::Q => (q, d),
            Self::K | Self::V => (kv, d),
            Self::O => (d, q),
            Self::Gate | Self::Up => (ff, d),
            Self::Down => (d, ff),
        }
    }
}

/// An adapter loaded into a model ([`Model::add_lora`]): what a session
/// names to run with it ([`Session::set_loras`]).
///
/// [`Model::add_lora`]: crate::Model::add_lora
/// [`Session::set_loras`]: crate::Session::set_loras
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LoraId {
    pub(crate) model: u64,
    pub(crate) index: usize,
}

impl LoraId {
    /// The adapter's place among its model's adapters (0 for the first
    /// added): the id llama.cpp's server gives it.
    pub fn index(&self) -> usize {
        self.index
    }
}

/// What an adapter is.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraInfo {
    /// The name it was added under (a path, for the command line).
    pub name: String,
    /// `adapter.lora.alpha`: a matrix's product is scaled by
    /// `alpha / rank` (by 1 when alpha is 0), times the session's scale.
    pub alpha: f32,
    /// How many matrices it changes.
    pub matrices: usize,
    /// The largest rank among them.
    pub rank: usize,
}

/// One matrix's update: `B (A x)`, scaled by a session's scale times
/// `alpha / rank` (times 1 when alpha is 0); `A` a weight of the adapter's
/// type, `B` transposed into f32 (`rank` rows of the matrix's `m`), so
/// that its product adds whole rows.
#[derive(Debug)]
pub(crate) struct Pair<'a, B: Backend + 'a> {
    a: B::Weight<'a>,
    bt: B::Buffer,
    rank: usize,
    alpha: f32,
}

impl<B: Backend> Pair<'_, B> {
    /// The update's factor at a session's `scale`, computed as llama.cpp
    /// computes it.
    fn scale(&self, scale: f32) -> f32 {
        match self.alpha {
            0.0 => scale,
            alpha => scale * alpha / self.rank as f32,
        }
    }
}

/// An adapter's matrices, checked against its model.
#[derive(Debug)]
pub(crate) struct Lora<'a, B: Backend + 'a> {
    pub(crate) info: LoraInfo,
    layers: Vec<[Option<Pair<'a, B>>; 7]>,
    output: Option<Pair<'a, B>>,
}

/// Widths a row of LoRA scratch needs: the widest input gathered, the
/// largest rank.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dims {
    input: usize,
    rank: usize,
}

impl Dims {
    pub(crate) fn max(self, o: Dims) -> Dims {
        Dims {
            input: self.input.max(o.input),
            rank: self.rank.max(o.rank),
        }
    }
}

fn lora_err(what: impl Into<String>) -> Error {
    Error::Lora(what.into())
}

impl<'a, B: Backend + 'a> Lora<'a, B> {
    /// Reads the adapter in `file` for a model of config `c` whose file
    /// has its own output matrix when `has_output` (not tied to the
    /// embeddings) and whose blocks' Q/K/V and gate/up matrices are one
    /// each where `fused` says so (`(qkv, gate_up)` a block): an update of
    /// such a matrix is split into its parts' (each with the same `A`).
    /// Fails, naming it, on anything llama.cpp would refuse and on what
    /// Realm does not apply (token embeddings, aLoRA).
    pub(crate) fn load<S: AsRef<[u8]>>(
        file: &'a Gguf<S>,
        backend: &B,
        c: &ModelConfig,
        (has_output, fused): (bool, &[(bool, bool)]),
        name: String,
    ) -> Result<(Self, Dims)> {
        let alpha = header(file)?;
        let arch = file
            .metadata()
            .get_str("general.architecture")
            .unwrap_or("");
        if Architecture::from_name(arch).ok() != Some(c.arch) {
            return Err(lora_err(format!(
                "the adapter is for architecture `{arch}`, not this model's"
            )));
        }
        let halves = pairs(file)?;
        let mut layers: Vec<[Option<Pair<'a, B>>; 7]> =
            (0..c.n_layers).map(|_| Default::default()).collect();
        let mut output = None;
        let mut dims = Dims::default();
        let mut matrices = 0;
        for (base, (a, b)) in halves {
            // The matrix's parts: where each goes (a block's matrix, or
            // the output), its rows.
            type Part = (Option<(usize, Target)>, usize);
            let (parts, cols): (Vec<Part>, usize) = match locate(&base, c, (has_output, fused))? {
                Place::Output => (vec![(None, c.vocab_size)], c.d_model),
                Place::Layer(i, ts) => {
                    let cols = ts.first().map_or(c.d_model, |t| t.dims(c, i).1);
                    let parts = ts.iter().map(|&t| (Some((i, t)), t.dims(c, i).0));
                    (parts.collect(), cols)
                }
            };
            let rows: usize = parts.iter().map(|p| p.1).sum();
            let weight = |v: &TensorView<'a>| -> Result<B::Weight<'a>> {
                if !backend.supports_matmul(v.dtype()) {
                    return Err(Error::UnsupportedWeight {
                        tensor: v.name().to_string(),
                        dtype: v.dtype(),
                        backend: backend.name().to_string(),
                    });
                }
                Ok(backend.weight(v)?)
            };
            let wa = weight(&a)?;
            let rank = wa.rows();
            if rank == 0 {
                return Err(lora_err(format!("`{base}` has rank 0")));
            }
            let (b_cols, b_rows) = match b.shape() {
                [c, r, rest @ ..] if rest.iter().all(|&d| d == 1) => (*c, *r),
                _ => (0, 0),
            };
            if wa.cols() != cols || b_rows != rows as u64 {
                return Err(lora_err(format!(
                    "`{base}`: lora_a {:?} and lora_b {:?} do not fit a {rows} x {cols} \
                     matrix (an adapter for another model?)",
                    a.shape(),
                    b.shape()
                )));
            }
            if b_cols != rank as u64 {
                return Err(lora_err(format!(
                    "`{base}`: lora_a has rank {rank} but lora_b {b_cols} (lora_a should be \
                     stored transposed)"
                )));
            }
            let mut bv = vec![0f32; rows * rank];
            realm_core::quant::dequantize(b.dtype(), b.data(), &mut bv)?;
            let mut first = 0;
            let mut wa = Some(wa);
            for (place, part) in parts {
                // Each part's rows of B, transposed.
                let mut bt = vec![0f32; part * rank];
                for (i, row) in bv.chunks_exact(rank).skip(first).take(part).enumerate() {
                    for (t, &v) in row.iter().enumerate() {
                        bt[t * part + i] = v;
                    }
                }
                first += part;
                let pair = Pair {
                    a: match wa.take() {
                        Some(w) => w,
                        None => weight(&a)?,
                    },
                    bt: backend.upload(&bt)?,
                    rank,
                    alpha,
                };
                let slot = match place {
                    Some((i, t)) => &mut layers[i][t as usize],
                    None => &mut output,
                };
                *slot = Some(pair);
            }
            matrices += 1;
            dims = dims.max(Dims { input: cols, rank });
        }
        if matrices == 0 {
            return Err(lora_err("the adapter changes no matrix"));
        }
        let info = LoraInfo {
            name,
            alpha,
            matrices,
            rank: dims.rank,
        };
        Ok((
            Self {
                info,
                layers,
                output,
            },
            dims,
        ))
    }

    fn pair(&self, layer: usize, t: Target) -> Option<&Pair<'a, B>> {
        self.layers.get(layer)?[t as usize].as_ref()
    }
}

/// Checks an adapter file's header (its type, no aLoRA); its alpha (0
/// when it has none).
fn header<S: AsRef<[u8]>>(file: &Gguf<S>) -> Result<f32> {
    let md = file.metadata();
    let text = |k: &str| md.get_str(k).ok().unwrap_or("");
    if text("general.type") != "adapter" {
        return Err(lora_err(format!(
            "general.type should be `adapter`, got `{}`",
            text("general.type")
        )));
    }
    if text("adapter.type") != "lora" {
        return Err(lora_err(format!(
            "adapter.type should be `lora`, got `{}`",
            text("adapter.type")
        )));
    }
    if md.contains_key("adapter.alora.invocation_tokens") {
        return Err(lora_err(
            "activated LoRA (adapter.alora.invocation_tokens) is not supported",
        ));
    }
    let alpha = match md.get("adapter.lora.alpha") {
        None => 0.0,
        Some(_) => md.get_f32("adapter.lora.alpha")?,
    };
    if !alpha.is_finite() {
        return Err(lora_err("adapter.lora.alpha is not finite"));
    }
    Ok(alpha)
}

/// An adapter's `lora_a` and `lora_b` of each base tensor, by the base
/// tensor's name. Norm vectors are ignored, as llama.cpp ignores them.
fn pairs<S: AsRef<[u8]>>(
    file: &Gguf<S>,
) -> Result<BTreeMap<String, (TensorView<'_>, TensorView<'_>)>> {
    let mut halves: BTreeMap<String, (Option<TensorView<'_>>, Option<TensorView<'_>>)> =
        BTreeMap::new();
    for t in file.tensors() {
        let t = t?;
        let full = t.name().to_string();
        if let Some(base) = full.strip_suffix(".lora_a") {
            halves.entry(base.to_string()).or_default().0 = Some(t);
        } else if let Some(base) = full.strip_suffix(".lora_b") {
            halves.entry(base.to_string()).or_default().1 = Some(t);
        } else if !full.ends_with("_norm.weight") {
            return Err(lora_err(format!(
                "tensor `{full}` is neither a lora_a nor a lora_b"
            )));
        }
    }
    halves
        .into_iter()
        .map(|(base, pair)| match pair {
            (Some(a), Some(b)) => Ok((base, (a, b))),
            _ => Err(lora_err(format!("`{base}` lacks its lora_a or lora_b"))),
        })
        .collect()
}

/// Where a base tensor of an adapter goes: the output, or a block's
/// matrices (several, in row order, for a fused one).
enum Place {
    Output,
    Layer(usize, Vec<Target>),
}

fn locate(
    base: &str,
    c: &ModelConfig,
    (has_output, fused): (bool, &[(bool, bool)]),
) -> Result<Place> {
    match base {
        "output.weight" if has_output => return Ok(Place::Output),
        "output.weight" => {
            return Err(lora_err(
                "`output.weight`: the model ties its output to the token embeddings",
            ))
        }
        "token_embd.weight" => {
            return Err(lora_err(
                "LoRA of the token embeddings (`token_embd.weight`) is not supported",
            ))
        }
        _ => {}
    }
    let found = base
        .strip_prefix("blk.")
        .and_then(|rest| rest.split_once('.'))
        .and_then(|(i, rest)| {
            let i: usize = i.parse().ok()?;
            let t = rest.strip_suffix(".weight")?;
            // Latent attention has none of the attention's usual
            // matrices; gated attention's queries are twice as wide, and
            // a delta net has none.
            if (c.mla.is_some() || c.has_recurrent()) && t.starts_with("attn_") {
                return None;
            }
            // DeciLM's blocks without attention (or with a linear map in
            // its place) or without a network have none of those matrices.
            if (c.deci.is_some() && !c.has_attention(i) && t.starts_with("attn_"))
                || (c.layer_ffn_dim(i) == 0 && t.starts_with("ffn_"))
            {
                return None;
            }
            // Arcee's feed-forward networks have no gate.
            if c.arch == Architecture::Arcee && t == "ffn_gate" {
                return None;
            }
            // A block of experts has no dense feed-forward matrices.
            if c.moe.as_ref().is_some_and(|m| m.is_moe_layer(i)) && t.starts_with("ffn_") {
                return None;
            }
            // Nemotron-H's feed-forward networks are in blocks of their
            // own, and have no gate.
            if c.ffn_blocks.is_some()
                && t.starts_with("ffn_")
                && (!c.is_ffn_only(i) || t == "ffn_gate")
            {
                return None;
            }
            let (qkv, gate_up) = fused.get(i).copied().unwrap_or_default();
            // A fused matrix's update splits into its parts'.
            let ts = match t {
                "attn_qkv" if qkv => vec![Target::Q, Target::K, Target::V],
                "ffn_up" if gate_up => vec![Target::Gate, Target::Up],
                "attn_q" | "attn_k" | "attn_v" if qkv => return None,
                "ffn_gate" if gate_up => return None,
                _ => vec![Target::ALL[TARGETS.iter().position(|&n| n == t)?]],
            };
            (i < c.n_layers).then_some(Place::Layer(i, ts))
        });
    found.ok_or_else(|| {
        lora_err(format!(
            "`{base}` is not a matrix of this model Realm applies LoRA to"
        ))
    })
}

/// Rows of a call that run with the same adapters (`set`: adapters and
/// their scales, none of them 0).
#[derive(Debug, Clone)]
pub(crate) struct LoraRun<'s> {
    pub(crate) rows: Range<usize>,
    pub(crate) set: &'s [(LoraId, f32)],
}

/// Room for LoRA products of a call's rows.
#[derive(Debug)]
pub(crate) struct LoraScratch<B: Backend> {
    rows: usize,
    dims: Dims,
    /// A run's input rows, gathered when the run is not the whole call.
    x: B::Buffer,
    /// `A x`.
    r: B::Buffer,
}

impl<B: Backend> LoraScratch<B> {
    /// `have` if it fits `rows` rows of `dims`, else new buffers that do.
    pub(crate) fn fit(
        have: Option<Self>,
        b: &B,
        rows: usize,
        dims: Dims,
    ) -> std::result::Result<Self, BackendError> {
        if let Some(s) = have {
            if s.rows >= rows && s.dims.max(dims) == s.dims {
                return Ok(s);
            }
        }
        let buf = |w: usize| b.buffer(rows * w.max(1));
        Ok(Self {
            rows,
            dims,
            x: buf(dims.input)?,
            r: buf(dims.rank)?,
        })
    }
}

/// What the adapters of a call apply to one matrix's product.
pub(crate) struct Product<'x, B: Backend> {
    /// The product's input: the call's first `n` rows of `k` values.
    pub(crate) x: &'x B::Buffer,
    pub(crate) n: usize,
    pub(crate) k: usize,
    /// The product (rows of `m` values), which gets the updates.
    pub(crate) out: &'x mut B::Buffer,
    pub(crate) m: usize,
}

/// Adds each run's adapters' updates of matrix `t` of block `layer`
/// (`None`: the output matrix) to `p.out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply<B: Backend>(
    b: &B,
    ws: &mut B::Workspace,
    ls: &mut LoraScratch<B>,
    adapters: &[Lora<'_, B>],
    runs: &[LoraRun<'_>],
    at: Option<(usize, Target)>,
    p: Product<'_, B>,
) -> std::result::Result<(), BackendError> {
    let LoraScratch { x, r, .. } = ls;
    for run in runs {
        let mut gathered = false;
        let len = run.rows.len();
        for &(id, scale) in run.set {
            let Some(lora) = adapters.get(id.index) else {
                continue;
            };
            let pair = match at {
                Some((layer, t)) => lora.pair(layer, t),
                None => lora.output.as_ref(),
            };
            let Some(pair) = pair else { continue };
            let input = if run.rows == (0..p.n) {
                p.x
            } else {
                if !gathered {
                    b.copy_rows(p.x, run.rows.clone(), p.k, x)?;
                    gathered = true;
                }
                &*x
            };
            b.matmul(ws, &pair.a, input, len, r)?;
            let (first, s) = (run.rows.start, pair.scale(scale));
            b.add_rows_product(p.out, first, r, len, &pair.bt, (pair.rank, p.m), s)?;
        }
    }
    Ok(())
}
