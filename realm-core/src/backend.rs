//! The compute backend trait that models are generic over.
//!
//! A backend is built from small op families, each a trait with documented
//! guarantees; [`Backend`] is every family at once and is what a model is
//! generic over:
//!
//! - [`BackendCore`] gives identity, the per-caller
//!   [`BackendCore::Workspace`] and [`BackendCore::Buffer`], the activation
//!   buffers that live in the backend's memory (host RAM for the CPU, device
//!   memory for a GPU).
//! - [`MatMulOps`] does quantized and float matrix multiplication, and
//!   embedding lookup.
//! - [`NormOps`] does RMSNorm.
//! - [`RopeOps`] does rotary position embedding (normal and NeoX layouts).
//! - [`ActivationOps`] does softmax, SiLU, GELU, gated products, element-wise
//!   add, mul and scale.
//! - [`AttentionOps`] owns a KV cache and runs causal attention over it (GQA,
//!   sliding window, soft-capping).
//! - [`StepOps`] (optional) records a decode step once and replays it with
//!   new token ids and positions (CUDA graphs).
//!
//! # Conventions
//!
//! Activations are row-major `f32` values in backend [`BackendCore::Buffer`]s:
//! a batch of `n` tokens of width `d` is `n * d` values, token after token.
//! A buffer has the capacity it was created with; every op says how many
//! values (or rows) it reads and writes, always a prefix of the buffer (or,
//! for the attention ops, a range of rows), and a call that would pass a
//! buffer's capacity is an error. Only values an op wrote are defined
//! afterwards: a backend may keep a buffer's contents in another form (a GPU
//! backend replaces a device tensor rather than writing into it). The host
//! sees values only through [`BackendCore::upload`] and
//! [`BackendCore::download`], so a decode step on a GPU copies token ids in
//! and logits out and nothing else.
//!
//! A weight matrix of `m` rows by `k` columns is a [`TensorView`] with
//! `shape == [k, m]` (ggml order), and `matmul` computes
//! `out[t][i] = sum_j W[i][j] * x[t][j]`.
//!
//! # Batch invariance
//!
//! Every op computes each output row from the matching input row alone, with
//! a reduction order that depends neither on how many rows are in the call
//! nor on the number of threads. A token's result is therefore bit-identical
//! whether it is computed alone or inside a batch, which the multi-tenant
//! runtime relies on.
//!
//! # Errors
//!
//! No method panics on bad input: shapes, types and parameters are checked
//! and a [`BackendError`] is returned instead.

use std::fmt::Debug;
use std::ops::Range;
use std::sync::Arc;

use crate::{GgmlType, TensorView};

/// What a backend operation can fail with.
///
/// Variants carry static strings so that building an error allocates nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// A slice length or dimension does not match what the operation needs.
    #[error("{op}: {what} should be {expected}, got {got}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// Which length or dimension.
        what: &'static str,
        /// The value required.
        expected: usize,
        /// The value given.
        got: usize,
    },

    /// The operation does not support this element type.
    #[error("{op} does not support type {dtype}")]
    UnsupportedType {
        /// The operation.
        op: &'static str,
        /// The type.
        dtype: GgmlType,
    },

    /// Tensor bytes are not aligned as the element or block type needs.
    #[error("{op}: tensor data is not aligned to {align} bytes")]
    Misaligned {
        /// The operation.
        op: &'static str,
        /// The alignment required.
        align: usize,
    },

    /// An index (token id, position, layer) is out of range.
    #[error("{op}: {what} {index} is out of range (limit {limit})")]
    OutOfRange {
        /// The operation.
        op: &'static str,
        /// What the index is.
        what: &'static str,
        /// The index given.
        index: usize,
        /// The exclusive upper bound.
        limit: usize,
    },

    /// A parameter is invalid (zero where a positive value is needed, a
    /// non-finite scale, ...).
    #[error("{op}: invalid parameter: {what}")]
    InvalidParameter {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        what: &'static str,
    },

    /// The backend could not be set up (thread pool creation failed, no
    /// such device, a build without GPU support).
    #[error("backend setup failed: {0}")]
    Setup(String),

    /// The device or the library under the backend failed (out of device
    /// memory, a kernel launch error).
    #[error("{op}: device error: {message}")]
    Device {
        /// The operation.
        op: &'static str,
        /// What the device or library reported.
        message: String,
    },
}

/// `Result` with [`BackendError`].
pub type BackendResult<T> = std::result::Result<T, BackendError>;

/// The row width of [`BackendCore::split_cols`]'s source: the sum of
/// `widths`, after checking there is one width per output.
pub fn split_width(op: &'static str, widths: &[usize], outs: usize) -> BackendResult<usize> {
    if widths.len() != outs {
        return Err(BackendError::InvalidParameter {
            op,
            what: "one width per output",
        });
    }
    widths
        .iter()
        .try_fold(0usize, |a, &w| a.checked_add(w))
        .ok_or(BackendError::InvalidParameter {
            op,
            what: "widths overflow",
        })
}

/// The lengths [`MatMulOps::add_rows_product`] reads and writes, checked
/// for overflow: values of `x` and of `w`, and the range of `dst`'s values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowsProduct {
    /// `n_rows * k`.
    pub x_len: usize,
    /// `k * m`.
    pub w_len: usize,
    /// Rows `first_row..first_row + n_rows` of `m` values.
    pub dst: Range<usize>,
}

impl RowsProduct {
    /// The lengths of a product of `n_rows` rows into `dst` from row
    /// `first_row`, `k_m == (k, m)`.
    pub fn new(first_row: usize, n_rows: usize, (k, m): (usize, usize)) -> BackendResult<Self> {
        let overflow = |what| BackendError::InvalidParameter {
            op: "add_rows_product",
            what,
        };
        let start = first_row
            .checked_mul(m)
            .ok_or(overflow("row offset overflows"))?;
        let end = n_rows
            .checked_mul(m)
            .and_then(|len| start.checked_add(len))
            .ok_or(overflow("dst overflows"))?;
        Ok(Self {
            x_len: n_rows.checked_mul(k).ok_or(overflow("x overflows"))?,
            w_len: k.checked_mul(m).ok_or(overflow("w overflows"))?,
            dst: start..end,
        })
    }
}

/// Identity of a backend and the scratch memory it lends to callers.
pub trait BackendCore: Send + Sync + Debug {
    /// Scratch memory owned by one caller (one session or one batch loop):
    /// quantized activations, attention scores. It grows to the largest call
    /// seen and is then reused, so a decode step with a warm workspace
    /// allocates nothing.
    type Workspace: Send + Debug;

    /// `f32` activations in the backend's memory (a `Vec<f32>` on the CPU, a
    /// device tensor on a GPU). See the module docs for what ops may read.
    type Buffer: Send + Debug;

    /// A short name for logs (`"cpu-avx2"`, ...).
    fn name(&self) -> &str;

    /// A new, empty workspace.
    fn workspace(&self) -> Self::Workspace;

    /// A buffer with room for `len` values, all zero.
    fn buffer(&self, len: usize) -> BackendResult<Self::Buffer>;

    /// Host work beside the backend's (a recurrent block's scan, head by
    /// head): `f(c, a_c, b_c)` for every chunk `c` of `a_chunk` values of
    /// `a` and the matching chunk of `b_chunk` values of `b`, on the
    /// backend's host threads where it has them (the CPU backend's pool),
    /// else in turn on the caller. The calls must not depend on one
    /// another's order.
    ///
    /// ```
    /// # use realm_core::backend::BackendCore;
    /// fn double<B: BackendCore>(b: &B, a: &mut [f32], out: &mut [f32]) {
    ///     b.host_chunks((a, 4), (out, 4), &|_, a, out| {
    ///         for (o, x) in out.iter_mut().zip(a) {
    ///             *o = 2.0 * *x;
    ///         }
    ///     });
    /// }
    /// ```
    fn host_chunks(
        &self,
        (a, a_chunk): (&mut [f32], usize),
        (b, b_chunk): (&mut [f32], usize),
        f: &HostChunkFn<'_>,
    ) {
        let chunks = a
            .chunks_mut(a_chunk.max(1))
            .zip(b.chunks_mut(b_chunk.max(1)));
        for (c, (ac, bc)) in chunks.enumerate() {
            f(c, ac, bc);
        }
    }

    /// A buffer holding a copy of `values` (its capacity is their number).
    fn upload(&self, values: &[f32]) -> BackendResult<Self::Buffer>;

    /// [`BackendCore::upload`] into `buf`, which a backend may reuse (the
    /// CPU backend's keeps its memory once large enough); the default
    /// replaces it with a new buffer.
    fn upload_into(&self, values: &[f32], buf: &mut Self::Buffer) -> BackendResult<()> {
        *buf = self.upload(values)?;
        Ok(())
    }

    /// Copies the first `out.len()` values of `buf` into `out`.
    ///
    /// Guarantees: reading past the buffer's capacity is an error.
    fn download(&self, buf: &Self::Buffer, out: &mut [f32]) -> BackendResult<()>;

    /// The buffer's values, when they are already in host memory (the CPU
    /// backend): callers read them in place instead of downloading a copy.
    fn host_slice(buf: &Self::Buffer) -> Option<&[f32]> {
        let _ = buf;
        None
    }

    /// Lends the first `len` values of `buf`, in host memory, to `read` and
    /// returns what it returns: in place where the buffer is host memory
    /// ([`BackendCore::host_slice`]), otherwise after one download into
    /// staging memory (a backend may keep it in `ws`; the default allocates
    /// it). For many rows at once, such as a batch's logits, which the
    /// caller then copies where they belong with no second pass over all of
    /// them. `read` must not call the backend (a wrapper may hold a lock
    /// around it).
    ///
    /// Guarantees: reading past the buffer's capacity is an error; on an
    /// error `read` is not called.
    ///
    /// ```
    /// use realm_core::backend::BackendCore;
    /// # fn sum<B: BackendCore>(be: &B, ws: &mut B::Workspace, buf: &B::Buffer)
    /// #     -> realm_core::backend::BackendResult<f32> {
    /// let total = be.read_on_host(ws, buf, 4, |v| v.iter().sum::<f32>())?;
    /// # Ok(total) }
    /// ```
    fn read_on_host<R>(
        &self,
        ws: &mut Self::Workspace,
        buf: &Self::Buffer,
        len: usize,
        read: impl FnOnce(&[f32]) -> R,
    ) -> BackendResult<R> {
        let _ = ws;
        if let Some(v) = Self::host_slice(buf) {
            return match v.get(..len) {
                Some(v) => Ok(read(v)),
                None => Err(BackendError::Shape {
                    op: "read_on_host",
                    what: "buffer length",
                    expected: len,
                    got: v.len(),
                }),
            };
        }
        let mut v = vec![0.0; len];
        self.download(buf, &mut v)?;
        Ok(read(&v))
    }

    /// Waits until the backend has finished all work it queued (a GPU's
    /// queue; a host backend finishes every op before it returns): for
    /// timing, and before what it wrote goes to another thread.
    fn synchronize(&self) -> BackendResult<()> {
        Ok(())
    }

    /// Splits the first `n_rows` rows of `src`, rows of `widths.iter().sum()`
    /// values, by columns: of each row the first `widths[0]` values become
    /// that row of `outs[0]`, the next `widths[1]` that row of `outs[1]`,
    /// and so on.
    ///
    /// Guarantees: `widths` and `outs` of different lengths, and lengths
    /// past a buffer's capacity, are errors.
    fn split_cols(
        &self,
        src: &Self::Buffer,
        n_rows: usize,
        widths: &[usize],
        outs: &mut [&mut Self::Buffer],
    ) -> BackendResult<()>;

    /// Copies rows `rows` of `src` (rows of `width` values) to the first
    /// `rows.len()` rows of `dst`.
    ///
    /// Guarantees: ranges past either buffer's capacity are errors.
    fn copy_rows(
        &self,
        src: &Self::Buffer,
        rows: Range<usize>,
        width: usize,
        dst: &mut Self::Buffer,
    ) -> BackendResult<()>;
}

/// Shape and type of a weight matrix prepared by a backend.
pub trait WeightInfo {
    /// Element type of the stored weights.
    fn dtype(&self) -> GgmlType;
    /// Number of rows `m` (output features).
    fn rows(&self) -> usize;
    /// Number of columns `k` (input features, the row length).
    fn cols(&self) -> usize;
}

/// `(rows, cols)` of a weight matrix: a tensor of shape `[cols, rows]`
/// (trailing dimensions of 1 allowed) with rows of at least one value.
/// Every backend's [`MatMulOps::weight`] starts here.
pub fn matrix_dims(op: &'static str, t: &TensorView<'_>) -> BackendResult<(usize, usize)> {
    let shape = t.shape();
    if shape.len() < 2 || shape[2..].iter().any(|&d| d != 1) {
        return Err(BackendError::Shape {
            op,
            what: "number of dimensions",
            expected: 2,
            got: shape.len(),
        });
    }
    let dim = |d: u64| {
        usize::try_from(d).map_err(|_| BackendError::InvalidParameter {
            op,
            what: "dimension does not fit in usize",
        })
    };
    let (cols, rows) = (dim(shape[0])?, dim(shape[1])?);
    if cols == 0 {
        return Err(BackendError::InvalidParameter {
            op,
            what: "rows of zero length",
        });
    }
    Ok((rows, cols))
}

/// Matrix multiplication by (quantized) weights, and embedding lookup.
pub trait MatMulOps: BackendCore {
    /// A weight matrix ready for [`MatMulOps::matmul`]. It may borrow the
    /// tensor's bytes (`'a`), so weights memory-mapped from a GGUF file are
    /// used without a copy.
    type Weight<'a>: WeightInfo + Send + Sync + Debug
    where
        Self: 'a;

    /// True when [`MatMulOps::weight`] accepts matrices of type `t`.
    fn supports_matmul(&self, t: GgmlType) -> bool;

    /// Prepares a 2-D tensor (`shape == [k, m]`) as a weight matrix.
    ///
    /// Guarantees: fails with [`BackendError::UnsupportedType`] when
    /// `supports_matmul(t.dtype())` is false, with [`BackendError::Shape`]
    /// for a tensor that is not 2-D, and never panics.
    fn weight<'a>(&self, t: &TensorView<'a>) -> BackendResult<Self::Weight<'a>>;

    /// `out[t * m + i] = sum_j W[i][j] * x[t * k + j]` for every token `t` in
    /// `0..n_tokens` and row `i` in `0..m`.
    ///
    /// Guarantees: room for `n_tokens * k` values in `x` and `n_tokens * m`
    /// in `out` is checked; each output element is computed with a reduction order
    /// that depends only on `k` and the weight type, never on `n_tokens` or
    /// the thread count (batch invariance, bit for bit). Quantized weights
    /// may be multiplied by activations quantized to 8 bits per block (as
    /// ggml does); the error is then within ggml's dot-product tolerances.
    fn matmul(
        &self,
        ws: &mut Self::Workspace,
        w: &Self::Weight<'_>,
        x: &Self::Buffer,
        n_tokens: usize,
        out: &mut Self::Buffer,
    ) -> BackendResult<()>;

    /// One weight for several: `parts` (of one type and column count)
    /// stacked by rows, so that one product computes all of theirs (row `t`
    /// of the output holds part 0's outputs, then part 1's, ...; split them
    /// with [`BackendCore::split_cols`]). `None`, the default, when the
    /// backend gains nothing from it; a GPU saves launches and quantizes
    /// the input once.
    fn stack<'a>(&self, parts: &[TensorView<'a>]) -> BackendResult<Option<Self::Weight<'a>>> {
        let _ = parts;
        Ok(None)
    }

    /// `dst[first_row + t] += s * x[t] W` for each of the first `n_rows`
    /// rows of `x` (rows of `k` values), `W` being `k` rows of `m` values
    /// (`k_m == (k, m)`)
    /// in a buffer (row `j` of `W` is `w[j * m..(j + 1) * m]`): a LoRA
    /// adapter's second product (`W` its `lora_b` transposed), added to
    /// some rows of a batch.
    ///
    /// Guarantees: rows past any buffer's capacity are errors; the values
    /// of `dst` outside those rows that were defined stay as they were.
    #[allow(clippy::too_many_arguments)]
    fn add_rows_product(
        &self,
        dst: &mut Self::Buffer,
        first_row: usize,
        x: &Self::Buffer,
        n_rows: usize,
        w: &Self::Buffer,
        k_m: (usize, usize),
        s: f32,
    ) -> BackendResult<()>;

    /// Dequantizes rows `ids` of `table` (an embedding matrix, one row per
    /// token id) into the first `ids.len() * cols` values of `out`.
    ///
    /// Guarantees: an id at or past `table.rows()` is an
    /// [`BackendError::OutOfRange`] error; the values are the exact
    /// dequantized weights.
    fn embed(
        &self,
        ws: &mut Self::Workspace,
        table: &Self::Weight<'_>,
        ids: &[u32],
        out: &mut Self::Buffer,
    ) -> BackendResult<()>;
}

/// Normalisation (with the residual add before a norm, hence `ActivationOps`).
pub trait NormOps: ActivationOps {
    /// RMSNorm of the first `n_rows` rows of `x`, a row being as long as `w`
    /// (the whole of `w` is the weight): `out = x / sqrt(mean(x^2) + eps) * w`.
    ///
    /// Guarantees: the capacities are checked; each row is reduced in a
    /// fixed order.
    fn rms_norm(
        &self,
        x: &Self::Buffer,
        w: &Self::Buffer,
        eps: f32,
        n_rows: usize,
        out: &mut Self::Buffer,
    ) -> BackendResult<()>;

    /// [`NormOps::rms_norm`] in place (used for per-head Q/K norms).
    fn rms_norm_inplace(
        &self,
        x: &mut Self::Buffer,
        w: &Self::Buffer,
        eps: f32,
        n_rows: usize,
    ) -> BackendResult<()>;

    /// LayerNorm of the first `n_rows` rows of `x`, a row being as long
    /// as `w`: `out = (x - mean(x)) / sqrt(var(x) + eps) * w + b`, `b`
    /// `None` for a norm without a bias (Command R's). The mean and the
    /// variance are reduced in a fixed order.
    ///
    /// Guarantees: the capacities are checked; a bias of another length
    /// than `w` is an error.
    fn layer_norm(
        &self,
        x: &Self::Buffer,
        w: &Self::Buffer,
        b: Option<&Self::Buffer>,
        eps: f32,
        n_rows: usize,
        out: &mut Self::Buffer,
    ) -> BackendResult<()>;

    /// [`NormOps::layer_norm`] in place.
    fn layer_norm_inplace(
        &self,
        x: &mut Self::Buffer,
        w: &Self::Buffer,
        b: Option<&Self::Buffer>,
        eps: f32,
        n_rows: usize,
    ) -> BackendResult<()>;

    /// A residual add and the norm after it: `x += y` over the first
    /// `n_rows` rows of `width` values, then [`NormOps::rms_norm`] of them
    /// into `out` (`w` holds `width` values). The default runs the two ops;
    /// a backend may fuse them into one pass (the GPU backend does).
    #[allow(clippy::too_many_arguments)]
    fn add_rms_norm(
        &self,
        x: &mut Self::Buffer,
        y: &Self::Buffer,
        w: &Self::Buffer,
        eps: f32,
        n_rows: usize,
        width: usize,
        out: &mut Self::Buffer,
    ) -> BackendResult<()> {
        let len = n_rows
            .checked_mul(width)
            .ok_or(BackendError::InvalidParameter {
                op: "add_rms_norm",
                what: "n_rows * width overflows",
            })?;
        self.add_inplace(x, y, len)?;
        self.rms_norm(x, w, eps, n_rows, out)
    }

    /// [`NormOps::add_rms_norm`] of `y` normed first: `y` becomes its
    /// [`NormOps::rms_norm`] with weight `y_w` (Gemma's norm after
    /// attention and after the feed-forward network), then `x += y` and
    /// `out` is the norm of `x` with weight `w`. `y` is scratch: its values
    /// afterwards are unspecified. The default runs the ops in turn; a
    /// backend may fuse them (the GPU backend does).
    #[allow(clippy::too_many_arguments)]
    fn norm_add_rms_norm(
        &self,
        x: &mut Self::Buffer,
        y: &mut Self::Buffer,
        y_w: &Self::Buffer,
        w: &Self::Buffer,
        eps: f32,
        n_rows: usize,
        width: usize,
        out: &mut Self::Buffer,
    ) -> BackendResult<()> {
        self.rms_norm_inplace(y, y_w, eps, n_rows)?;
        self.add_rms_norm(x, y, w, eps, n_rows, width, out)
    }
}

/// How RoPE pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs `(x[2i], x[2i + 1])` (llama in GGUF).
    Normal,
    /// Split halves `(x[i], x[i + n_dims / 2])` (GPT-NeoX, Gemma).
    Neox,
}

/// Parameters of a rotary position embedding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams<'a> {
    /// Dimensions rotated at the start of each head (even, at most the head
    /// size); the rest are left as they are.
    pub n_dims: usize,
    /// Frequency base (`rope.freq_base`, 10000 for llama).
    pub base: f32,
    /// Multiplier on the position (`1 / rope.scaling.factor` for linear
    /// scaling, 1 for none).
    pub freq_scale: f32,
    /// Pairing of dimensions.
    pub mode: RopeMode,
    /// Per-pair frequency factors (`rope_freqs.weight`, Llama 3.1's long
    /// context scaling): pair `i`'s angle is divided by `factors[i]`.
    /// `n_dims / 2` values; `None` for none.
    pub factors: Option<&'a [f32]>,
    /// Factor on the rotated dimensions' cosines and sines, so on their
    /// magnitude (ggml's `attn_factor`: YaRN's and LongRoPE's attention
    /// factor); 1 for none. Dimensions past `n_dims` keep theirs.
    pub magnitude: f32,
}

impl RopeParams<'_> {
    /// The inverse frequency of each of the `n_dims / 2` pairs,
    /// `base^(-2i / n_dims) / factors[i]`, in f64: every backend turns pair
    /// `i` of a token at `pos` by `pos * freq_scale * inv_freq[i]`,
    /// evaluated in f64 and rounded once, so that they agree to the bit.
    pub fn inv_freqs(&self) -> impl Iterator<Item = f64> + '_ {
        let n = self.n_dims as f64;
        (0..self.n_dims / 2).map(move |i| {
            let f = f64::from(self.base).powf(-2.0 * i as f64 / n);
            match self.factors.and_then(|v| v.get(i)) {
                Some(&d) => f / f64::from(d),
                None => f,
            }
        })
    }

    /// Checks that the factors, if any, number `n_dims / 2`.
    pub fn check_factors(&self, op: &'static str) -> BackendResult<()> {
        match self.factors {
            Some(f) if f.len() != self.n_dims / 2 => Err(BackendError::InvalidParameter {
                op,
                what: "rope frequency factors must number half the rotated dimensions",
            }),
            _ => Ok(()),
        }
    }
}

/// Per-head RMSNorms of the queries and keys before RoPE (Gemma 3's
/// `attn_q_norm` and `attn_k_norm`): each head of `head_dim` values normed
/// with weight `q` (queries) or `k` (keys), `head_dim` values each.
#[derive(Debug)]
pub struct QkNorm<'a, B> {
    /// The queries' norm weight.
    pub q: &'a B,
    /// The keys' norm weight.
    pub k: &'a B,
    /// The norms' epsilon.
    pub eps: f32,
}

/// Checks a soft-capping value: positive and finite.
pub fn check_softcap(op: &'static str, cap: f32) -> BackendResult<()> {
    if cap > 0.0 && cap.is_finite() {
        Ok(())
    } else {
        Err(BackendError::InvalidParameter {
            op,
            what: "a soft-cap must be positive and finite",
        })
    }
}

/// Checks attention sinks and ALiBi slopes: one finite value per query
/// head.
pub fn check_sinks(op: &'static str, p: &AttentionParams<'_>) -> BackendResult<()> {
    let checks = [
        (
            p.sinks,
            "attention sinks (one per query head)",
            "attention sinks must be finite",
        ),
        (
            p.alibi,
            "ALiBi slopes (one per query head)",
            "ALiBi slopes must be finite",
        ),
    ];
    for (values, shape, finite) in checks {
        let Some(s) = values else { continue };
        if s.len() != p.n_heads {
            return Err(BackendError::Shape {
                op,
                what: shape,
                expected: p.n_heads,
                got: s.len(),
            });
        }
        if !s.iter().all(|v| v.is_finite()) {
            return Err(BackendError::InvalidParameter { op, what: finite });
        }
    }
    Ok(())
}

/// Rotary position embedding.
pub trait RopeOps: BackendCore {
    /// Rotates the first `positions.len() * n_heads * head_dim` values of
    /// `x`, laid out `[n_tokens][n_heads][head_dim]` with
    /// `n_tokens == positions.len()`: pair `i` of token `t` turns by
    /// `positions[t] * freq_scale * base^(-2i / n_dims)` radians (a
    /// negative `freq_scale` turns the other way: a context shift turns
    /// cached keys back so). The workspace may cache the angles between
    /// calls with the same positions.
    ///
    /// Guarantees: the layout and `n_dims <= head_dim`, even, are checked;
    /// each token's result depends only on its own values and position.
    fn rope(
        &self,
        ws: &mut Self::Workspace,
        x: &mut Self::Buffer,
        n_heads: usize,
        head_dim: usize,
        positions: &[u32],
        p: &RopeParams,
    ) -> BackendResult<()>;
}

/// Element-wise and row-wise activation functions, on the first `len`
/// values of their buffers (or `n_rows` rows).
pub trait ActivationOps: BackendCore {
    /// Softmax of each of the first `n_rows` rows of `row_len` values, in
    /// place.
    fn softmax_inplace(
        &self,
        x: &mut Self::Buffer,
        row_len: usize,
        n_rows: usize,
    ) -> BackendResult<()>;
    /// `x = x * sigmoid(x)`.
    fn silu_inplace(&self, x: &mut Self::Buffer, len: usize) -> BackendResult<()>;
    /// GELU with ggml's tanh approximation, in place.
    fn gelu_inplace(&self, x: &mut Self::Buffer, len: usize) -> BackendResult<()>;
    /// Soft-capping (Gemma's final logits): `x = cap * tanh(x * (1 / cap))`,
    /// in that order of roundings, as llama.cpp computes it.
    ///
    /// Guarantees: `cap` positive and finite is checked.
    fn softcap_inplace(&self, x: &mut Self::Buffer, cap: f32, len: usize) -> BackendResult<()>;
    /// SwiGLU: `gate = silu(gate) * up`.
    fn swiglu_inplace(
        &self,
        gate: &mut Self::Buffer,
        up: &Self::Buffer,
        len: usize,
    ) -> BackendResult<()>;
    /// gpt-oss's SwiGLU (ggml's `swiglu_oai`): with `(alpha, limit) =
    /// alpha_limit`, `g = min(gate, limit)` and `u = clamp(up, -limit,
    /// limit)`, `gate = g / (1 + exp(-alpha * g)) * (u + 1)`.
    fn swiglu_oai_inplace(
        &self,
        gate: &mut Self::Buffer,
        up: &Self::Buffer,
        alpha_limit: (f32, f32),
        len: usize,
    ) -> BackendResult<()>;
    /// GeGLU: `gate = gelu(gate) * up`.
    fn geglu_inplace(
        &self,
        gate: &mut Self::Buffer,
        up: &Self::Buffer,
        len: usize,
    ) -> BackendResult<()>;
    /// `dst += src`.
    fn add_inplace(
        &self,
        dst: &mut Self::Buffer,
        src: &Self::Buffer,
        len: usize,
    ) -> BackendResult<()>;
    /// `dst[r] += row` for each of the first `n_rows` rows of `dst`, a row
    /// being as long as `row` (a bias).
    fn add_row_inplace(
        &self,
        dst: &mut Self::Buffer,
        row: &Self::Buffer,
        n_rows: usize,
    ) -> BackendResult<()>;
    /// `dst *= src`.
    fn mul_inplace(
        &self,
        dst: &mut Self::Buffer,
        src: &Self::Buffer,
        len: usize,
    ) -> BackendResult<()>;
    /// `dst *= s`.
    fn scale_inplace(&self, dst: &mut Self::Buffer, s: f32, len: usize) -> BackendResult<()>;
    /// `x = min(max(x, -limit), limit)` over the first `len` values
    /// (OLMo's and MPT's `clamp_kqv` on queries, keys and values).
    fn clamp_inplace(&self, x: &mut Self::Buffer, limit: f32, len: usize) -> BackendResult<()>;
    /// `x = xielu(x)` (Apertus's feed-forward activation, [`Xielu`]). The
    /// default computes it on the host and copies the values back.
    fn xielu_inplace(&self, x: &mut Self::Buffer, p: Xielu, len: usize) -> BackendResult<()> {
        let mut v = vec![0.0; len];
        self.download(x, &mut v)?;
        v.iter_mut().for_each(|x| *x = p.apply(*x));
        let v = self.upload(&v)?;
        self.copy_rows(&v, 0..1, len, x)
    }
    /// `x = max(x, 0)^2` (Nemotron-H's feed-forward activation). The
    /// default squares on the host and copies the values back.
    fn relu_squared_inplace(&self, x: &mut Self::Buffer, len: usize) -> BackendResult<()> {
        let mut v = vec![0.0; len];
        self.download(x, &mut v)?;
        v.iter_mut().for_each(|x| *x = x.max(0.0) * x.max(0.0));
        let v = self.upload(&v)?;
        self.copy_rows(&v, 0..1, len, x)
    }
    /// `dst *= sigmoid(gate)` (Qwen 3.5's gated attention). The default
    /// takes the sigmoid on the host and multiplies on the backend.
    fn sigmoid_mul_inplace(
        &self,
        dst: &mut Self::Buffer,
        gate: &Self::Buffer,
        len: usize,
    ) -> BackendResult<()> {
        let mut g = vec![0.0; len];
        self.download(gate, &mut g)?;
        g.iter_mut().for_each(|x| *x = 1.0 / (1.0 + (-*x).exp()));
        let g = self.upload(&g)?;
        self.mul_inplace(dst, &g, len)
    }
}

/// xIELU (Apertus's activation), with its coefficients as the model uses
/// them: `alpha_p x^2 + beta x` above 0, else `(expm1(min(x, eps)) - x)
/// alpha_n + beta x`. A file stores `alpha_p` and `alpha_n - beta` before
/// a softplus ([`Xielu::from_file`]).
///
/// ```
/// use realm_core::backend::Xielu;
/// let p = Xielu::from_file(0.8, 0.8, 0.5, -1e-6);
/// assert!((p.apply(2.0) - (p.alpha_p * 4.0 + 1.0)).abs() < 1e-6);
/// assert!(p.apply(-30.0) > 0.0); // (-1 + 30) alpha_n - 15, alpha_n > 0.5
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Xielu {
    /// Factor of the negative side's `expm1(min(x, eps)) - x`.
    pub alpha_n: f32,
    /// Factor of the positive side's `x^2`.
    pub alpha_p: f32,
    /// Factor of `x` on both sides.
    pub beta: f32,
    /// Where the negative side's exponential stops growing.
    pub eps: f32,
}

impl Xielu {
    /// The coefficients of a layer whose file gives `alpha_n`, `alpha_p`,
    /// `beta` and `eps` (llama.cpp's `xielu.*` keys): `alpha_p` and
    /// `beta + alpha_n` through a softplus, as ggml's `ggml_xielu` takes
    /// them (the softplus `x` itself above 20).
    pub fn from_file(alpha_n: f32, alpha_p: f32, beta: f32, eps: f32) -> Self {
        let softplus = |x: f32| if x > 20.0 { x } else { (1.0 + x.exp()).ln() };
        Self {
            alpha_n: beta + softplus(alpha_n),
            alpha_p: softplus(alpha_p),
            beta,
            eps,
        }
    }

    /// The activation of `x`.
    #[inline]
    pub fn apply(&self, x: f32) -> f32 {
        if x > 0.0 {
            self.alpha_p * x * x + self.beta * x
        } else {
            (x.min(self.eps).exp_m1() - x) * self.alpha_n + self.beta * x
        }
    }
}

/// Size of a KV cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvCacheConfig {
    /// Transformer layers.
    pub n_layers: usize,
    /// Key/value heads per layer.
    pub n_kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Positions the cache holds (context length).
    pub max_seq_len: usize,
    /// Element type the keys and values are stored in.
    pub dtype: KvDtype,
    /// Each layer's own heads, where layers differ (Gemma 4's global
    /// layers have fewer, wider heads than its local ones): one a layer,
    /// in place of `n_kv_heads` and `head_dim`. `None`: every layer has
    /// those.
    pub layer_shapes: Option<Arc<[KvShape]>>,
}

/// The key/value heads of one layer of a KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
}

impl KvShape {
    /// Values a position holds: `n_kv_heads * head_dim`.
    pub fn width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

impl KvCacheConfig {
    /// The heads of layer `layer` (the uniform ones past the last layer).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use realm_core::backend::{KvCacheConfig, KvDtype, KvShape};
    /// let wide = KvShape { n_kv_heads: 1, head_dim: 8 };
    /// let narrow = KvShape { n_kv_heads: 2, head_dim: 2 };
    /// let cfg = KvCacheConfig {
    ///     n_layers: 2, n_kv_heads: 2, head_dim: 2, max_seq_len: 8, dtype: KvDtype::F32,
    ///     layer_shapes: Some(Arc::from([narrow, wide])),
    /// };
    /// assert_eq!(cfg.shape(1), wide);
    /// assert_eq!(cfg.shape(0).width(), 4);
    /// ```
    pub fn shape(&self, layer: usize) -> KvShape {
        self.layer_shapes
            .as_ref()
            .and_then(|s| s.get(layer).copied())
            .unwrap_or(KvShape {
                n_kv_heads: self.n_kv_heads,
                head_dim: self.head_dim,
            })
    }

    /// An error unless every layer's heads are positive and, where the
    /// layers have their own, there is one shape a layer.
    pub fn check_shapes(&self, op: &'static str) -> BackendResult<()> {
        if let Some(s) = &self.layer_shapes {
            if s.len() != self.n_layers {
                return Err(BackendError::Shape {
                    op,
                    what: "layer shapes (one a layer)",
                    expected: self.n_layers,
                    got: s.len(),
                });
            }
        }
        if (0..self.n_layers.max(1)).any(|l| {
            let s = self.shape(l);
            s.n_kv_heads == 0 || s.head_dim == 0
        }) {
            return Err(BackendError::InvalidParameter {
                op,
                what: "a cache dimension is zero",
            });
        }
        Ok(())
    }
}

/// How a KV cache stores keys and values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvDtype {
    /// 32-bit floats: exact.
    #[default]
    F32,
    /// 16-bit floats: half the memory, keys and values rounded to f16 (as
    /// llama.cpp's default cache).
    F16,
    /// ggml's Q8_0: each 32 values of a head's keys or values as one f16
    /// scale and 32 signed bytes (8.5 bits a value, about a quarter of
    /// f32's memory), as llama.cpp's `--cache-type-k q8_0`. The head size
    /// must be a multiple of 32.
    Q8_0,
}

/// The work of [`BackendCore::host_chunks`]: a chunk's index and its
/// chunks of the two slices.
pub type HostChunkFn<'a> = dyn Fn(usize, &mut [f32], &mut [f32]) + Sync + 'a;

/// Parameters of one attention call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams<'a> {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`; query head `h` reads KV head
    /// `h / (n_heads / n_kv_heads)`).
    pub n_kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Multiplier on `q . k` (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
    /// If set, a query at position `p` sees only keys at positions
    /// `p + 1 - w ..= p` (with [`AttentionParams::bidirectional`]:
    /// `p - w / 2 ..= p + w / 2`, llama.cpp's symmetric window).
    pub sliding_window: Option<usize>,
    /// If set, a query at position `p` sees only keys of its own chunk of
    /// `c` positions (Llama 4's chunked attention): `c * (p / c) ..= p`.
    /// Only backends that [support it](AttentionOps::supports_chunks).
    pub chunk: Option<usize>,
    /// If set, scores become `c * tanh(score / c)` before the softmax.
    pub softcap: Option<f32>,
    /// If set, one logit per query head (`n_heads` of them) that joins
    /// each of that head's softmaxes without a value (gpt-oss's attention
    /// sinks): a key's weight becomes `exp(s) / (sum exp(s) + exp(sink))`,
    /// so a head may attend to nothing.
    pub sinks: Option<&'a [f32]>,
    /// If set, ALiBi's slope for each query head (`n_heads` of them;
    /// [`AttentionParams::alibi_slope`] makes them from a maximum bias):
    /// no RoPE, but each score less its head's slope times the query's
    /// distance from the key (`|pos - j|`, on either side of it in an
    /// encoder's attention), as llama.cpp adds them. Only backends that
    /// [support it](AttentionOps::supports_alibi).
    pub alibi: Option<&'a [f32]>,
    /// If set, every query of a call sees the keys of all the call's
    /// positions (and those before them), not only those up to its own:
    /// an encoder's attention (BERT's), whose input is one call; a window
    /// then spans both sides. Chunks do not go with it.
    pub bidirectional: bool,
}

impl AttentionParams<'_> {
    /// ALiBi's slope of query head `h` (of `n_heads`) for maximum bias
    /// `max_bias`, as ggml computes it: heads below the power of two at
    /// or under `n_heads` take `m0^(h + 1)`, `m0 = 2^(-max_bias / n2)`; the
    /// others `m1^(2 (h - n2) + 1)`, `m1 = 2^(-max_bias / 2 / n2)`.
    ///
    /// ```
    /// # use realm_core::backend::AttentionParams;
    /// // 8 heads, bias 8: slopes 1/2, 1/4, ... 1/256.
    /// assert_eq!(AttentionParams::alibi_slope(8.0, 8, 0), 0.5);
    /// assert_eq!(AttentionParams::alibi_slope(8.0, 8, 7), 1.0 / 256.0);
    /// ```
    pub fn alibi_slope(max_bias: f32, n_heads: usize, h: usize) -> f32 {
        let n2 = 1usize << n_heads.max(1).ilog2();
        let n2f = n2 as f32;
        match h < n2 {
            true => 2f32.powf(-max_bias / n2f).powf(h as f32 + 1.0),
            false => {
                let m1 = 2f32.powf(-(max_bias / 2.0) / n2f);
                m1.powf((2 * (h - n2) + 1) as f32)
            }
        }
    }

    /// The first key position a query at `pos` sees (its window's or
    /// its chunk's start).
    ///
    /// ```
    /// # use realm_core::backend::AttentionParams;
    /// let p = AttentionParams {
    ///     n_heads: 1, n_kv_heads: 1, head_dim: 8, scale: 1.0,
    ///     sliding_window: Some(4), chunk: Some(16), softcap: None, sinks: None,
    ///     alibi: None, bidirectional: false,
    /// };
    /// assert_eq!(p.first_key(10), 7);
    /// assert_eq!(p.first_key(17), 16);
    /// ```
    pub fn first_key(&self, pos: usize) -> usize {
        let window = self
            .sliding_window
            .map_or(0, |w| (pos + 1).saturating_sub(w));
        let chunk = self.chunk.filter(|&c| c > 0).map_or(0, |c| pos / c * c);
        window.max(chunk)
    }
}

/// Where in a KV cache a call reads or writes: a layer and the position of
/// the call's first token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvSpan {
    /// Transformer layer.
    pub layer: usize,
    /// Position of the first token of the call.
    pub start_pos: usize,
}

/// Attention over a KV cache the backend owns (with the rotations before
/// it, hence `RopeOps`).
pub trait AttentionOps: RopeOps + NormOps {
    /// Keys and values of every layer for one sequence.
    type KvCache: Send + Debug;

    /// Whether [`AttentionParams::sinks`] may be set. A backend without
    /// them refuses the calls that set them; a model that needs them asks
    /// first, so that it fails at load.
    fn supports_sinks(&self) -> bool {
        false
    }

    /// Whether [`AttentionOps::attention`] and its kin take ALiBi
    /// ([`AttentionParams::alibi`]); false by default.
    fn supports_alibi(&self) -> bool {
        false
    }

    /// Whether [`AttentionParams::chunk`] may be set (as for sinks).
    fn supports_chunks(&self) -> bool {
        false
    }

    /// Allocates a cache (the only allocation attention needs).
    fn kv_cache(&self, cfg: &KvCacheConfig) -> BackendResult<Self::KvCache>;

    /// Stores rows `rows` of `k` and `v` (rows of `n_kv_heads * head_dim`
    /// values) as the keys and values of positions
    /// `at.start_pos..at.start_pos + rows.len()` of layer `at.layer`.
    ///
    /// Guarantees: positions past `max_seq_len` and bad lengths are errors.
    fn kv_write(
        &self,
        ws: &mut Self::Workspace,
        cache: &mut Self::KvCache,
        at: KvSpan,
        k: &Self::Buffer,
        v: &Self::Buffer,
        rows: Range<usize>,
    ) -> BackendResult<()>;

    /// Reads back what [`AttentionOps::kv_write`] stored for positions
    /// `positions` of layer `layer`: rows of `n_kv_heads * head_dim` keys
    /// into `k` and values into `v`, as f32 (an f16 cache's widened, so
    /// that writing them back stores the same bits). A session's state is
    /// saved this way.
    ///
    /// Guarantees: lengths other than the positions' rows, positions past
    /// `max_seq_len` and bad layers are errors.
    fn kv_read(
        &self,
        cache: &Self::KvCache,
        layer: usize,
        positions: Range<usize>,
        k: &mut [f32],
        v: &mut [f32],
    ) -> BackendResult<()>;

    /// Causal attention of rows `rows` of `q` (rows of `n_heads * head_dim`
    /// values; row `rows.start + t` at position `at.start_pos + t`) over
    /// the keys and values of layer `at.layer` at positions up to each
    /// query's own (which must have been written with
    /// [`AttentionOps::kv_write`]); writes the same rows of `out`. Rows of
    /// `out` before `rows.start` keep what they hold, so one call per
    /// sequence fills a batch of sequences in order.
    ///
    /// Guarantees: each (token, head) output depends only on that query and
    /// the cache, with a fixed reduction order (batch invariance); bad
    /// lengths, layers and positions are errors.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        ws: &mut Self::Workspace,
        cache: &Self::KvCache,
        at: KvSpan,
        q: &Self::Buffer,
        rows: Range<usize>,
        p: &AttentionParams,
        out: &mut Self::Buffer,
    ) -> BackendResult<()>;

    /// A decode step's attention for a batch of sequences: row `i` of `k`,
    /// `v` and `q` is one token of the sequence cached in `caches[i]`, at
    /// position `positions[i]`. Stores each row's key and value as
    /// [`AttentionOps::kv_write`] does, then writes rows `0..caches.len()`
    /// of `out` as [`AttentionOps::attention`] of each row would.
    ///
    /// The default does exactly that, row by row; a GPU attends over many
    /// caches at once.
    #[allow(clippy::too_many_arguments)]
    fn attend_rows(
        &self,
        ws: &mut Self::Workspace,
        caches: &mut [&mut Self::KvCache],
        layer: usize,
        positions: &[u32],
        kv: (&Self::Buffer, &Self::Buffer),
        q: &Self::Buffer,
        p: &AttentionParams,
        out: &mut Self::Buffer,
    ) -> BackendResult<()> {
        if positions.len() != caches.len() {
            return Err(BackendError::InvalidParameter {
                op: "attend_rows",
                what: "one position per cache",
            });
        }
        for (i, (cache, &pos)) in caches.iter_mut().zip(positions).enumerate() {
            let at = KvSpan {
                layer,
                start_pos: pos as usize,
            };
            self.kv_write(ws, cache, at, kv.0, kv.1, i..i + 1)?;
            self.attention(ws, cache, at, q, i..i + 1, p, out)?;
        }
        Ok(())
    }

    /// [`RopeOps::rope`] of `q` (`n_heads` heads) and `k` (`n_kv_heads`)
    /// at `positions`, then [`AttentionOps::attend_rows`]: a decode step's
    /// rotations, KV store and attention in one call, which a backend may
    /// fuse (the GPU backend rotates keys as it stores them and queries as
    /// it attends). With `qk_norm`, each head of `q` and `k` is normed
    /// first. `q` and `k` are scratch: afterwards their values are
    /// unspecified.
    ///
    /// The default norms and rotates both in place, then attends.
    #[allow(clippy::too_many_arguments)]
    fn rope_attend_rows(
        &self,
        ws: &mut Self::Workspace,
        caches: &mut [&mut Self::KvCache],
        layer: usize,
        positions: &[u32],
        qkv: (&mut Self::Buffer, &mut Self::Buffer, &Self::Buffer),
        qk_norm: Option<QkNorm<'_, Self::Buffer>>,
        rope: &RopeParams,
        p: &AttentionParams,
        out: &mut Self::Buffer,
    ) -> BackendResult<()> {
        let (q, k, v) = qkv;
        if let Some(n) = qk_norm {
            let rows = positions.len();
            self.rms_norm_inplace(q, n.q, n.eps, rows * p.n_heads)?;
            self.rms_norm_inplace(k, n.k, n.eps, rows * p.n_kv_heads)?;
        }
        self.rope(ws, q, p.n_heads, p.head_dim, positions, rope)?;
        self.rope(ws, k, p.n_kv_heads, p.head_dim, positions, rope)?;
        self.attend_rows(ws, caches, layer, positions, (k, v), q, p, out)
    }

    /// A chunk of one sequence (a prompt's tokens) at `positions`, which
    /// must be consecutive: the heads of `q` and `k` normed with `qk_norm`
    /// and rotated, the keys and values stored as
    /// [`AttentionOps::kv_write`] stores them, and rows
    /// `0..positions.len()` of `q` attended as [`AttentionOps::attention`]
    /// attends them. A backend may fuse it, as
    /// [`AttentionOps::rope_attend_rows`] for a batch (the GPU backend
    /// stores the rotated keys in one kernel and attends, rotating the
    /// queries, in another). `q` and `k` are scratch: afterwards their
    /// values are unspecified.
    ///
    /// The default is [`rope_attend_in_turn`].
    #[allow(clippy::too_many_arguments)]
    fn rope_attend(
        &self,
        ws: &mut Self::Workspace,
        cache: &mut Self::KvCache,
        layer: usize,
        positions: &[u32],
        qkv: (&mut Self::Buffer, &mut Self::Buffer, &Self::Buffer),
        qk_norm: Option<QkNorm<'_, Self::Buffer>>,
        rope: &RopeParams,
        p: &AttentionParams,
        out: &mut Self::Buffer,
    ) -> BackendResult<()> {
        rope_attend_in_turn(
            self, ws, cache, layer, positions, qkv, qk_norm, rope, p, out,
        )
    }
}

/// [`AttentionOps::rope_attend`] op by op: [`NormOps::rms_norm_inplace`]
/// of each head (with `qk_norm`), [`RopeOps::rope`] of `q` and `k`,
/// [`AttentionOps::kv_write`] and [`AttentionOps::attention`].
///
/// Guarantees: positions that are not consecutive are an error, before
/// anything is written.
#[allow(clippy::too_many_arguments)]
pub fn rope_attend_in_turn<B: AttentionOps + ?Sized>(
    b: &B,
    ws: &mut B::Workspace,
    cache: &mut B::KvCache,
    layer: usize,
    positions: &[u32],
    qkv: (&mut B::Buffer, &mut B::Buffer, &B::Buffer),
    qk_norm: Option<QkNorm<'_, B::Buffer>>,
    rope: &RopeParams,
    p: &AttentionParams,
    out: &mut B::Buffer,
) -> BackendResult<()> {
    let start_pos = chunk_start("rope_attend", positions)?;
    let (q, k, v) = qkv;
    let n = positions.len();
    if let Some(norm) = qk_norm {
        b.rms_norm_inplace(q, norm.q, norm.eps, n * p.n_heads)?;
        b.rms_norm_inplace(k, norm.k, norm.eps, n * p.n_kv_heads)?;
    }
    b.rope(ws, q, p.n_heads, p.head_dim, positions, rope)?;
    b.rope(ws, k, p.n_kv_heads, p.head_dim, positions, rope)?;
    let at = KvSpan { layer, start_pos };
    b.kv_write(ws, cache, at, k, v, 0..n)?;
    b.attention(ws, cache, at, q, 0..n, p, out)
}

/// An error unless the cache of `cfg` has layer `layer`.
pub fn check_kv_layer(op: &'static str, cfg: &KvCacheConfig, layer: usize) -> BackendResult<()> {
    if layer >= cfg.n_layers {
        return Err(BackendError::OutOfRange {
            op,
            what: "layer",
            index: layer,
            limit: cfg.n_layers,
        });
    }
    Ok(())
}

/// Checks an [`AttentionOps::kv_read`] of `positions` of layer `layer`
/// against the cache's `cfg`: the layer exists, the positions fit, and the
/// outputs (`k_len` and `v_len` values) hold exactly their rows. Returns
/// the values per row.
///
/// ```
/// use realm_core::backend::{check_kv_read, KvCacheConfig, KvDtype};
/// let cfg = KvCacheConfig { n_layers: 2, n_kv_heads: 2, head_dim: 4, max_seq_len: 8, dtype: KvDtype::F32, layer_shapes: None };
/// assert_eq!(check_kv_read("op", &cfg, 1, &(2..5), 24, 24).unwrap(), 8);
/// assert!(check_kv_read("op", &cfg, 2, &(2..5), 24, 24).is_err());
/// assert!(check_kv_read("op", &cfg, 1, &(2..9), 56, 56).is_err());
/// assert!(check_kv_read("op", &cfg, 1, &(2..5), 24, 16).is_err());
/// ```
pub fn check_kv_read(
    op: &'static str,
    cfg: &KvCacheConfig,
    layer: usize,
    positions: &Range<usize>,
    k_len: usize,
    v_len: usize,
) -> BackendResult<usize> {
    check_kv_layer(op, cfg, layer)?;
    if positions.end > cfg.max_seq_len {
        return Err(BackendError::OutOfRange {
            op,
            what: "end position",
            index: positions.end,
            limit: cfg.max_seq_len + 1,
        });
    }
    let overflow = BackendError::InvalidParameter {
        op,
        what: "rows overflow",
    };
    let shape = cfg.shape(layer);
    let width = shape
        .n_kv_heads
        .checked_mul(shape.head_dim)
        .ok_or(overflow.clone())?;
    let want = positions.len().checked_mul(width).ok_or(overflow)?;
    for (what, got) in [("k length", k_len), ("v length", v_len)] {
        if got != want {
            return Err(BackendError::Shape {
                op,
                what,
                expected: want,
                got,
            });
        }
    }
    Ok(width)
}

/// The first of `positions` (0 for none), which must be consecutive.
///
/// ```
/// use realm_core::backend::chunk_start;
/// assert_eq!(chunk_start("op", &[4, 5, 6]).unwrap(), 4);
/// assert!(chunk_start("op", &[4, 6]).is_err());
/// ```
pub fn chunk_start(op: &'static str, positions: &[u32]) -> BackendResult<usize> {
    if positions
        .windows(2)
        .any(|w| w[0].checked_add(1) != Some(w[1]))
    {
        return Err(BackendError::InvalidParameter {
            op,
            what: "positions of a chunk must be consecutive",
        });
    }
    Ok(positions.first().map_or(0, |&p| p as usize))
}

/// The per-token inputs of a decode step, for [`StepOps::begin_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInputs<'a> {
    /// The token of each row.
    pub ids: &'a [u32],
    /// The position of each row (one per id).
    pub positions: &'a [u32],
    /// How many cache positions each row's attention spans (clamped to the
    /// cache's length): more than every position, and fixed for as long as
    /// a recording of the step is replayed, so that every op has the same
    /// shapes from step to step.
    pub kv_len: usize,
}

/// Static decode steps: the same ops with the same shapes every step, their
/// per-token inputs read from the backend's own memory, so that a backend
/// can record a step once and replay it (CUDA graphs) instead of launching
/// every op again.
///
/// The protocol, for one step of `rows` tokens:
/// 1. [`StepOps::begin_step`] stores the step's ids and positions in the
///    workspace; until [`StepOps::end_step`], `embed`, `rope`, `kv_write`
///    and `attention` with this workspace read them from there (the host
///    slices they are given must match, which is checked), and attention
///    spans `kv_len` cache positions with a mask.
/// 2. Either [`StepOps::replay`] of a recording made with the same `rows`
///    and `kv_len`, or the step's ops as usual; then, to record them,
///    [`StepOps::begin_recording`], the same ops again, and
///    [`StepOps::end_recording`]. Recording executes nothing.
/// 3. [`StepOps::end_step`].
///
/// Backends that do not record keep the defaults: [`StepOps::static_steps`]
/// is false and callers run every step op by op.
pub trait StepOps: BackendCore {
    /// A recorded step.
    type Recording: Send + Debug;

    /// Whether this backend runs static steps (and the protocol above
    /// applies); false by default.
    fn static_steps(&self) -> bool {
        false
    }

    /// Starts a static step with `inputs`.
    fn begin_step(&self, ws: &mut Self::Workspace, inputs: &StepInputs<'_>) -> BackendResult<()> {
        let _ = (ws, inputs);
        Err(BackendError::Setup(format!(
            "{} does not run static steps",
            self.name()
        )))
    }

    /// Ends the static step: ops on `ws` run as usual again.
    fn end_step(&self, ws: &mut Self::Workspace) {
        let _ = ws;
    }

    /// Starts recording the step's ops, or returns `false` when this
    /// backend does not record (the step then just runs). `buffers` are
    /// every buffer the step writes. The first `outputs` of them hold what
    /// the caller reads after the step: the recording leaves the step's
    /// values in them, and so does a replay. The rest are the step's
    /// scratch, whose values are undefined after a recording or replay
    /// (a backend need not copy them out).
    fn begin_recording(
        &self,
        ws: &mut Self::Workspace,
        buffers: &mut [&mut Self::Buffer],
        outputs: usize,
    ) -> BackendResult<bool> {
        let _ = (ws, buffers, outputs);
        Ok(false)
    }

    /// Ends a recording begun by [`StepOps::begin_recording`] with the same
    /// buffers. Call it even when an op failed while recording; the
    /// recording is then an error.
    fn end_recording(
        &self,
        ws: &mut Self::Workspace,
        buffers: &mut [&mut Self::Buffer],
    ) -> BackendResult<Self::Recording> {
        let _ = (ws, buffers);
        Err(BackendError::Setup(format!(
            "{} does not record steps",
            self.name()
        )))
    }

    /// Runs a recorded step with the inputs of the current static step and
    /// returns `true`; `buffers` (the ones the recording was made with) then
    /// hold its results (the first `outputs` the recording began with; the
    /// rest are undefined), whatever ops ran on them since. Returns `false`,
    /// running nothing, when the recording cannot serve this step (made
    /// before the backend's internal buffers changed, or on another
    /// thread): run the ops, and record again. An error is the device's
    /// (or a recording made with other buffers): recording is not to be
    /// relied on.
    fn replay(
        &self,
        ws: &mut Self::Workspace,
        rec: &Self::Recording,
        buffers: &mut [&mut Self::Buffer],
    ) -> BackendResult<bool> {
        let _ = (ws, rec, buffers);
        Err(BackendError::Setup(format!(
            "{} does not record steps",
            self.name()
        )))
    }
}

/// Every op family: what a transformer forward pass is generic over.
pub trait Backend: MatMulOps + NormOps + RopeOps + ActivationOps + AttentionOps + StepOps {}

impl<T: MatMulOps + NormOps + RopeOps + ActivationOps + AttentionOps + StepOps> Backend for T {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend whose buffers the host cannot read in place (as a GPU's),
    /// with only what a read on the host needs.
    #[derive(Debug)]
    struct Remote;

    impl BackendCore for Remote {
        type Workspace = ();
        type Buffer = Vec<f32>;

        fn name(&self) -> &str {
            "remote"
        }
        fn workspace(&self) {}
        fn buffer(&self, len: usize) -> BackendResult<Vec<f32>> {
            Ok(vec![0.0; len])
        }
        fn upload(&self, values: &[f32]) -> BackendResult<Vec<f32>> {
            Ok(values.to_vec())
        }
        fn download(&self, buf: &Vec<f32>, out: &mut [f32]) -> BackendResult<()> {
            let v = buf.get(..out.len()).ok_or(BackendError::Shape {
                op: "download",
                what: "buffer length",
                expected: out.len(),
                got: buf.len(),
            })?;
            out.copy_from_slice(v);
            Ok(())
        }
        fn split_cols(
            &self,
            _: &Vec<f32>,
            _: usize,
            _: &[usize],
            _: &mut [&mut Vec<f32>],
        ) -> BackendResult<()> {
            Err(BackendError::Setup("not needed here".into()))
        }
        fn copy_rows(
            &self,
            _: &Vec<f32>,
            _: Range<usize>,
            _: usize,
            _: &mut Vec<f32>,
        ) -> BackendResult<()> {
            Err(BackendError::Setup("not needed here".into()))
        }
    }

    #[test]
    fn reads_on_host_download_where_buffers_are_not_host_memory() {
        let buf = Remote.upload(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        let got = Remote.read_on_host(&mut (), &buf, 3, |v| v.to_vec());
        assert_eq!(got.unwrap(), [1.0, 2.0, 3.0]);
        assert!(matches!(
            Remote.read_on_host(&mut (), &buf, 5, |_| ()),
            Err(BackendError::Shape { got: 4, .. })
        ));
    }
}
