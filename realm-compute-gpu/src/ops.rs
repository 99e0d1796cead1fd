//! RMSNorm, RoPE and the activations, as candle ops on device buffers.

use candle_core::{Device, Tensor};
use realm_core::backend::{
    ActivationOps, BackendError, BackendResult, NormOps, RopeMode, RopeOps, RopeParams, Xielu,
};

use crate::fused::q8::{Blocks, Quantized};
use crate::fused::{AddRmsNorm, Gate, Gated};
use crate::staging::Staging;
use crate::step::StepState;
use crate::{dev_err, product, GpuBackend, GpuBuffer};

/// The most distinct RoPE tables a workspace keeps for one set of
/// positions (Gemma 3 alternates two bases).
const ROPE_TABLES: usize = 4;

/// What a RoPE table is for: `n_dims`, the base's and `freq_scale`'s
/// bits, and the frequency factors' bits (empty for none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RopeKey {
    n_dims: usize,
    base: u32,
    freq_scale: u32,
    magnitude: u32,
    factors: Vec<u32>,
}

impl RopeKey {
    /// Whether this is `p`'s key (without allocating).
    pub(crate) fn is(&self, p: &RopeParams) -> bool {
        let factors = p.factors.unwrap_or_default();
        (self.n_dims, self.base, self.freq_scale, self.magnitude)
            == (
                p.n_dims,
                p.base.to_bits(),
                p.freq_scale.to_bits(),
                p.magnitude.to_bits(),
            )
            && self.factors.len() == factors.len()
            && self
                .factors
                .iter()
                .zip(factors)
                .all(|(a, b)| *a == b.to_bits())
    }

    /// `p`'s key.
    pub(crate) fn of(p: &RopeParams) -> Self {
        Self {
            n_dims: p.n_dims,
            base: p.base.to_bits(),
            freq_scale: p.freq_scale.to_bits(),
            magnitude: p.magnitude.to_bits(),
            factors: p
                .factors
                .unwrap_or_default()
                .iter()
                .map(|f| f.to_bits())
                .collect(),
        }
    }
}

/// A RoPE table: cosines and sines for some positions and parameters.
#[derive(Debug)]
pub(crate) struct RopeTable {
    key: RopeKey,
    /// `[n_tokens, 1, n_dims / 2]`.
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
}

impl RopeTable {
    /// The table of `positions`.
    pub(crate) fn new(
        device: &Device,
        positions: &[u32],
        p: &RopeParams,
    ) -> candle_core::Result<Self> {
        let inv_freq: Vec<f64> = p.inv_freqs().collect();
        let (cos, sin) = rope_angles(positions, &inv_freq, p.freq_scale, p.magnitude);
        let shape = (positions.len(), 1, p.n_dims / 2);
        Ok(Self {
            key: RopeKey::of(p),
            cos: Tensor::from_vec(cos, shape, device)?,
            sin: Tensor::from_vec(sin, shape, device)?,
        })
    }
}

/// Cosines and sines of every position's angles, one per inverse
/// frequency ([`RopeParams::inv_freqs`]) per position: pair `i` at `pos`
/// turns by `pos * freq_scale * inv_freq[i]`, the same angles as the CPU
/// backend, computed in f64 and rounded once, then scaled by `magnitude`
/// in f32 ([`RopeParams::magnitude`]).
pub(crate) fn rope_angles(
    positions: &[u32],
    inv_freq: &[f64],
    freq_scale: f32,
    magnitude: f32,
) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &pos in positions {
        for &f in inv_freq {
            let theta = f64::from(pos) * f64::from(freq_scale) * f;
            cos.push(theta.cos() as f32 * magnitude);
            sin.push(theta.sin() as f32 * magnitude);
        }
    }
    (cos, sin)
}

/// The most per-head value sets a workspace keeps
/// ([`GpuWorkspace::head_values`]): a model's layers' sinks and slopes.
const HEAD_VALUES: usize = 1024;

/// A cached attention mask and what it is for.
pub(crate) type MaskEntry = ((usize, usize, Option<usize>, Option<usize>), Option<Tensor>);

/// Per-caller state: the RoPE tables of the positions last seen, so that
/// every layer of a step reuses them instead of uploading its own, and the
/// static step in progress ([`realm_core::backend::StepOps`]).
#[derive(Debug, Default)]
pub struct GpuWorkspace {
    positions: Vec<u32>,
    tables: Vec<RopeTable>,
    /// `positions` on the device, once a kernel has read them.
    device_positions: Option<Tensor>,
    /// Attention masks of recent chunks, by `(start, tokens, window,
    /// attention chunk)` (`None` where every query sees every key).
    pub(crate) masks: Vec<MaskEntry>,
    /// Per-head values on the device (ALiBi's slopes, each layer's
    /// attention sinks), by value.
    heads: Vec<(Vec<f32>, Tensor)>,
    pub(crate) step: Option<StepState>,
    /// Counts the static steps' reallocations.
    pub(crate) generation: u64,
    /// Host memory for reading device values ([`GpuBackend::read_on_host`]).
    ///
    /// [`GpuBackend::read_on_host`]: realm_core::backend::BackendCore::read_on_host
    pub(crate) staging: Staging,
    /// The device whose memory this holds ([`GpuBackend::workspace`]'s).
    ///
    /// [`GpuBackend::workspace`]: realm_core::backend::BackendCore::workspace
    pub(crate) device: Option<Device>,
}

impl Drop for GpuWorkspace {
    fn drop(&mut self) {
        if let Some(device) = &self.device {
            crate::driver::make_current(device);
            // A recording a panic left open ends before the workspace's
            // memory goes, so that this thread's stream runs work again.
            if let Some(st) = &mut self.step {
                st.abandon_recording(device);
            }
        }
    }
}

impl GpuWorkspace {
    /// The `(cos, sin)` tables, `[n_tokens, 1, n_dims / 2]`, for `positions`.
    pub(crate) fn rope_tables(
        &mut self,
        device: &Device,
        positions: &[u32],
        p: &RopeParams,
    ) -> BackendResult<(Tensor, Tensor)> {
        const OP: &str = "rope";
        if let Some(st) = self.step() {
            return st.rope_table(positions, p);
        }
        self.keep_for(positions);
        if let Some(t) = self.tables.iter().find(|t| t.key.is(p)) {
            return Ok((t.cos.clone(), t.sin.clone()));
        }
        let t = RopeTable::new(device, positions, p).map_err(dev_err(OP))?;
        if self.tables.len() == ROPE_TABLES {
            self.tables.remove(0);
        }
        let pair = (t.cos.clone(), t.sin.clone());
        self.tables.push(t);
        Ok(pair)
    }

    /// Per-head values (ALiBi's slopes, a layer's attention sinks) on the
    /// device, `f32 [n_heads]`: uploaded once and kept, so that every
    /// later step finds them there, a static step's recording (which
    /// uploads nothing, and refuses to) among them.
    pub(crate) fn head_values(&mut self, device: &Device, values: &[f32]) -> BackendResult<Tensor> {
        const OP: &str = "attention";
        if let Some((_, t)) = self.heads.iter().find(|(v, _)| v == values) {
            return Ok(t.clone());
        }
        if self.recording() {
            return Err(BackendError::InvalidParameter {
                op: OP,
                what: "per-head values first seen while recording a step",
            });
        }
        let t = Tensor::from_slice(values, values.len(), device).map_err(dev_err(OP))?;
        if self.heads.len() == HEAD_VALUES {
            self.heads.remove(0);
        }
        self.heads.push((values.to_vec(), t.clone()));
        Ok(t)
    }

    /// `positions` on the device, `[n]` u32: uploaded once for every layer
    /// of a chunk or step (outside a static step, whose positions are the
    /// step's).
    pub(crate) fn positions_tensor(
        &mut self,
        device: &Device,
        positions: &[u32],
    ) -> BackendResult<Tensor> {
        self.keep_for(positions);
        if let Some(t) = &self.device_positions {
            return Ok(t.clone());
        }
        let t =
            Tensor::from_slice(positions, positions.len(), device).map_err(dev_err("positions"))?;
        self.device_positions = Some(t.clone());
        Ok(t)
    }

    /// Forgets the tables and tensor kept for other positions than
    /// `positions`.
    fn keep_for(&mut self, positions: &[u32]) {
        if self.positions != positions {
            self.positions.clear();
            self.positions.extend_from_slice(positions);
            self.tables.clear();
            self.device_positions = None;
        }
    }
}

/// Checks RoPE parameters for heads of `head_dim` values.
pub(crate) fn check_rope(op: &'static str, p: &RopeParams, head_dim: usize) -> BackendResult<()> {
    if p.n_dims == 0 || !p.n_dims.is_multiple_of(2) || p.n_dims > head_dim {
        return Err(BackendError::InvalidParameter {
            op,
            what: "n_dims must be even, positive and at most head_dim",
        });
    }
    p.check_factors(op)
}

/// Rows of `w.defined()` values: the number of values in the first `n_rows`.
fn row_values(op: &'static str, w: &GpuBuffer, n_rows: usize) -> BackendResult<usize> {
    if w.defined() == 0 {
        return Err(BackendError::InvalidParameter {
            op,
            what: "row length is zero",
        });
    }
    product(op, "n_rows * row length overflows", w.defined(), n_rows)
}

impl GpuBackend {
    fn rms_norm_tensor(
        &self,
        op: &'static str,
        x: &GpuBuffer,
        w: &GpuBuffer,
        eps: f32,
        n_rows: usize,
    ) -> BackendResult<(usize, Tensor)> {
        let len = row_values(op, w, n_rows)?;
        let x = x.prefix(op, "x length", len)?;
        if n_rows == 0 {
            return Ok((0, x));
        }
        let x = x.reshape((n_rows, w.defined())).map_err(dev_err(op))?;
        let y = candle_nn::ops::rms_norm(&x, w.all(), eps).map_err(dev_err(op))?;
        Ok((len, y))
    }

    fn layer_norm_tensor(
        &self,
        op: &'static str,
        x: &GpuBuffer,
        (w, b): (&GpuBuffer, Option<&GpuBuffer>),
        eps: f32,
        n_rows: usize,
    ) -> BackendResult<(usize, Tensor)> {
        let len = row_values(op, w, n_rows)?;
        if let Some(b) = b.filter(|b| b.defined() != w.defined()) {
            return Err(BackendError::Shape {
                op,
                what: "bias length (the weight's)",
                expected: w.defined(),
                got: b.defined(),
            });
        }
        let x = x.prefix(op, "x length", len)?;
        if n_rows == 0 {
            return Ok((0, x));
        }
        let x = x.reshape((n_rows, w.defined())).map_err(dev_err(op))?;
        let zeros;
        let b = match b {
            Some(b) => b.all(),
            None => {
                zeros = w.all().zeros_like().map_err(dev_err(op))?;
                &zeros
            }
        };
        let y = candle_nn::ops::layer_norm(&x, w.all(), b, eps).map_err(dev_err(op))?;
        Ok((len, y))
    }

    /// Element-wise `f(a, b)` over the first `len` values, into `a`.
    fn binary(
        &self,
        op: &'static str,
        a: &mut GpuBuffer,
        b: &GpuBuffer,
        len: usize,
        f: impl Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
    ) -> BackendResult<()> {
        let (ta, tb) = (
            a.prefix(op, "dst length", len)?,
            b.prefix(op, "src length", len)?,
        );
        let y = f(&ta, &tb).map_err(dev_err(op))?;
        a.set_prefix(op, "dst length", len, y)
    }

    /// `act(gate) * up` over the first `len` values, into `gate`: one fused
    /// kernel (which may write the results' blocks too), or candle's
    /// activation and product.
    fn gated(
        &self,
        op: &'static str,
        act: Gate,
        gate: &mut GpuBuffer,
        up: &GpuBuffer,
        len: usize,
    ) -> BackendResult<()> {
        // Nothing to do (a CUDA launch of no blocks is an error).
        if len == 0 {
            return Ok(());
        }
        if !self.fused {
            return self.binary(op, gate, up, len, |g, u| match act {
                Gate::Silu => g.silu()? * u,
                Gate::Gelu => g.gelu()? * u,
            });
        }
        // The halves of a stacked product's rows are read in place; their
        // rows are known then. Otherwise the values are one row: blocks are
        // written for short results, as a decode step's are.
        let (g, u, rows, width) = match (gate.rows_view_shape(), up.rows_view_shape()) {
            (Some((r, w)), Some(shape)) if shape == (r, w) && r * w == len => (
                gate.row_view(op, "dst length", r, w)?,
                up.row_view(op, "src length", r, w)?,
                r,
                w,
            ),
            _ => (
                gate.prefix(op, "dst length", len)?,
                up.prefix(op, "src length", len)?,
                1,
                len,
            ),
        };
        let blocks = self.blocks_for(rows, width);
        let y = g
            .apply_op2_no_bwd(&u, &Gated { act, blocks })
            .map_err(dev_err(op))?;
        let (y, b) = split_blocks(op, y, (rows, width), blocks)?;
        gate.set_prefix_with_blocks(op, "dst length", len, y, b)
    }

    /// Element-wise `f(a)` over the first `len` values, in place.
    fn unary(
        &self,
        op: &'static str,
        a: &mut GpuBuffer,
        len: usize,
        f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
    ) -> BackendResult<()> {
        let y = f(&a.prefix(op, "x length", len)?).map_err(dev_err(op))?;
        a.set_prefix(op, "x length", len, y)
    }
}

/// A fused op's flat result: its `rows` rows of `width` values and, when
/// it wrote them (`blocks`), the words of their blocks after.
pub(crate) fn split_blocks(
    op: &'static str,
    y: Tensor,
    (rows, width): (usize, usize),
    blocks: Blocks,
) -> BackendResult<(Tensor, Option<Quantized>)> {
    if blocks == Blocks::No {
        return Ok((y, None));
    }
    let len = rows * width;
    let y = y.flatten_all().map_err(dev_err(op))?;
    let words = blocks.words(rows, width);
    if y.elem_count() != len + words {
        return Err(BackendError::Shape {
            op,
            what: "values and blocks",
            expected: len + words,
            got: y.elem_count(),
        });
    }
    let values = y.narrow(0, 0, len).map_err(dev_err(op))?;
    let b = y.narrow(0, len, words).map_err(dev_err(op))?;
    let b = match blocks {
        Blocks::Matrix => Quantized::Matrix {
            rows,
            width,
            words: b,
        },
        _ => Quantized::Vector(b),
    };
    Ok((values, Some(b)))
}

impl NormOps for GpuBackend {
    fn rms_norm(
        &self,
        x: &GpuBuffer,
        w: &GpuBuffer,
        eps: f32,
        n_rows: usize,
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        const OP: &str = "rms_norm";
        out.check_room(OP, "out length", row_values(OP, w, n_rows)?)?;
        let (len, y) = self.rms_norm_tensor(OP, x, w, eps, n_rows)?;
        out.set_prefix(OP, "out length", len, y)
    }

    fn rms_norm_inplace(
        &self,
        x: &mut GpuBuffer,
        w: &GpuBuffer,
        eps: f32,
        n_rows: usize,
    ) -> BackendResult<()> {
        const OP: &str = "rms_norm";
        let (len, y) = self.rms_norm_tensor(OP, x, w, eps, n_rows)?;
        x.set_prefix(OP, "x length", len, y)
    }

    fn layer_norm(
        &self,
        x: &GpuBuffer,
        w: &GpuBuffer,
        b: Option<&GpuBuffer>,
        eps: f32,
        n_rows: usize,
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        const OP: &str = "layer_norm";
        out.check_room(OP, "out length", row_values(OP, w, n_rows)?)?;
        let (len, y) = self.layer_norm_tensor(OP, x, (w, b), eps, n_rows)?;
        out.set_prefix(OP, "out length", len, y)
    }

    fn layer_norm_inplace(
        &self,
        x: &mut GpuBuffer,
        w: &GpuBuffer,
        b: Option<&GpuBuffer>,
        eps: f32,
        n_rows: usize,
    ) -> BackendResult<()> {
        const OP: &str = "layer_norm";
        let (len, y) = self.layer_norm_tensor(OP, x, (w, b), eps, n_rows)?;
        x.set_prefix(OP, "x length", len, y)
    }

    fn add_rms_norm(
        &self,
        x: &mut GpuBuffer,
        y: &GpuBuffer,
        w: &GpuBuffer,
        eps: f32,
        n_rows: usize,
        width: usize,
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        const OP: &str = "add_rms_norm";
        let len = norm_len(OP, w, width, n_rows)?;
        if !self.fused || n_rows == 0 {
            self.add_inplace(x, y, len)?;
            return self.rms_norm(x, w, eps, n_rows, out);
        }
        self.fused_add_norm(OP, (x, y, None), w, eps, (n_rows, width), out)
    }

    fn norm_add_rms_norm(
        &self,
        x: &mut GpuBuffer,
        y: &mut GpuBuffer,
        y_w: &GpuBuffer,
        w: &GpuBuffer,
        eps: f32,
        n_rows: usize,
        width: usize,
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        const OP: &str = "norm_add_rms_norm";
        norm_len(OP, y_w, width, n_rows)?;
        norm_len(OP, w, width, n_rows)?;
        if !self.fused || n_rows == 0 {
            self.rms_norm_inplace(y, y_w, eps, n_rows)?;
            return self.add_rms_norm(x, y, w, eps, n_rows, width, out);
        }
        self.fused_add_norm(OP, (x, y, Some(y_w)), w, eps, (n_rows, width), out)
    }
}

/// Values of `n_rows` rows of norm weight `w`'s width, which must be
/// `width`.
fn norm_len(op: &'static str, w: &GpuBuffer, width: usize, n_rows: usize) -> BackendResult<usize> {
    if w.defined() != width {
        return Err(BackendError::Shape {
            op,
            what: "w length (width)",
            expected: width,
            got: w.defined(),
        });
    }
    row_values(op, w, n_rows)
}

impl GpuBackend {
    /// The fused kernel of [`NormOps::add_rms_norm`] (and, with `y`'s norm
    /// weight, of [`NormOps::norm_add_rms_norm`]): `x += y` (`y` normed
    /// first), its norm into `out`, with blocks when a product can take
    /// them.
    fn fused_add_norm(
        &self,
        op: &'static str,
        (x, y, y_w): (&mut GpuBuffer, &GpuBuffer, Option<&GpuBuffer>),
        w: &GpuBuffer,
        eps: f32,
        (n_rows, width): (usize, usize),
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        let len = n_rows * width;
        out.check_room(op, "out length", len)?;
        let (xt, yt) = (
            x.prefix(op, "x length", len)?,
            y.prefix(op, "y length", len)?,
        );
        let fused = AddRmsNorm {
            eps,
            blocks: self.blocks_for(n_rows, width),
            y_norm: y_w.map(|t| t.all().clone()),
        };
        let all = (|| {
            let (xt, yt) = (xt.reshape((n_rows, width))?, yt.reshape((n_rows, width))?);
            xt.apply_op3_no_bwd(&yt, w.all(), &fused)
        })()
        .map_err(dev_err(op))?;
        let sum = all.narrow(0, 0, len).map_err(dev_err(op))?;
        let rest = all
            .narrow(0, len, all.elem_count() - len)
            .map_err(dev_err(op))?;
        let (norm, b) = split_blocks(op, rest, (n_rows, width), fused.blocks)?;
        x.set_prefix(op, "x length", len, sum)?;
        out.set_prefix_with_blocks(op, "out length", len, norm, b)
    }
}

impl RopeOps for GpuBackend {
    fn rope(
        &self,
        ws: &mut GpuWorkspace,
        x: &mut GpuBuffer,
        n_heads: usize,
        head_dim: usize,
        positions: &[u32],
        p: &RopeParams,
    ) -> BackendResult<()> {
        const OP: &str = "rope";
        check_rope(OP, p, head_dim)?;
        let per_token = product(OP, "n_heads * head_dim overflows", n_heads, head_dim)?;
        let n = positions.len();
        let len = product(OP, "tokens * n_heads * head_dim overflows", per_token, n)?;
        let xt = x.prefix(OP, "x length", len)?;
        if len == 0 {
            return Ok(());
        }
        let (cos, sin) = ws.rope_tables(&self.device, positions, p)?;
        let rotate = |t: &Tensor| -> candle_core::Result<Tensor> {
            // [tokens, heads, 1, dims] with per-token tables [tokens, 1, dims / 2]:
            // candle's batched-table form, each token its own position.
            let t = t.reshape((n, n_heads, 1, p.n_dims))?;
            match p.mode {
                RopeMode::Normal => candle_nn::rotary_emb::rope_i(&t, &cos, &sin),
                RopeMode::Neox => candle_nn::rotary_emb::rope(&t, &cos, &sin),
            }
        };
        let y = if p.n_dims == head_dim {
            rotate(&xt)
        } else {
            (|| {
                let t = xt.reshape((n, n_heads, head_dim))?;
                let head = t.narrow(2, 0, p.n_dims)?.contiguous()?;
                let tail = t.narrow(2, p.n_dims, head_dim - p.n_dims)?;
                let head = rotate(&head)?.reshape((n, n_heads, p.n_dims))?;
                Tensor::cat(&[&head, &tail], 2)
            })()
        }
        .map_err(dev_err(OP))?;
        x.set_prefix(OP, "x length", len, y)
    }
}

impl ActivationOps for GpuBackend {
    fn softmax_inplace(
        &self,
        x: &mut GpuBuffer,
        row_len: usize,
        n_rows: usize,
    ) -> BackendResult<()> {
        const OP: &str = "softmax";
        if row_len == 0 {
            return Err(BackendError::InvalidParameter {
                op: OP,
                what: "row length is zero",
            });
        }
        let len = product(OP, "n_rows * row_len overflows", row_len, n_rows)?;
        self.unary(OP, x, len, |t| {
            candle_nn::ops::softmax_last_dim(&t.reshape((n_rows, row_len))?)
        })
    }

    fn silu_inplace(&self, x: &mut GpuBuffer, len: usize) -> BackendResult<()> {
        self.unary("silu", x, len, |t| t.silu())
    }

    fn gelu_inplace(&self, x: &mut GpuBuffer, len: usize) -> BackendResult<()> {
        // candle's `gelu` is the tanh approximation, as ggml's.
        self.unary("gelu", x, len, |t| t.gelu())
    }

    fn softcap_inplace(&self, x: &mut GpuBuffer, cap: f32, len: usize) -> BackendResult<()> {
        realm_core::backend::check_softcap("softcap", cap)?;
        let inv = f64::from(1.0 / cap);
        self.unary("softcap", x, len, |t| {
            t.affine(inv, 0.0)?.tanh()?.affine(f64::from(cap), 0.0)
        })
    }

    fn swiglu_inplace(
        &self,
        gate: &mut GpuBuffer,
        up: &GpuBuffer,
        len: usize,
    ) -> BackendResult<()> {
        self.gated("swiglu", Gate::Silu, gate, up, len)
    }

    fn swiglu_oai_inplace(
        &self,
        gate: &mut GpuBuffer,
        up: &GpuBuffer,
        (alpha, limit): (f32, f32),
        len: usize,
    ) -> BackendResult<()> {
        let (alpha, limit) = (f64::from(alpha), f64::from(limit));
        self.binary("swiglu_oai", gate, up, len, |g, u| {
            let x = g.minimum(limit)?;
            let y = u.clamp(-limit, limit)?;
            let denominator = (x.affine(-alpha, 0.0)?.exp()? + 1.0)?;
            (x / denominator)? * (y + 1.0)?
        })
    }

    fn geglu_inplace(&self, gate: &mut GpuBuffer, up: &GpuBuffer, len: usize) -> BackendResult<()> {
        self.gated("geglu", Gate::Gelu, gate, up, len)
    }

    fn add_inplace(&self, dst: &mut GpuBuffer, src: &GpuBuffer, len: usize) -> BackendResult<()> {
        self.binary("add", dst, src, len, |a, b| a + b)
    }

    fn add_row_inplace(
        &self,
        dst: &mut GpuBuffer,
        row: &GpuBuffer,
        n_rows: usize,
    ) -> BackendResult<()> {
        const OP: &str = "add_row";
        let width = row.defined();
        let len = row_values(OP, row, n_rows)?;
        self.unary(OP, dst, len, |t| {
            t.reshape((n_rows, width))?.broadcast_add(row.all())
        })
    }

    fn mul_inplace(&self, dst: &mut GpuBuffer, src: &GpuBuffer, len: usize) -> BackendResult<()> {
        self.binary("mul", dst, src, len, |a, b| a * b)
    }

    fn scale_inplace(&self, dst: &mut GpuBuffer, s: f32, len: usize) -> BackendResult<()> {
        self.unary("scale", dst, len, |t| t.affine(f64::from(s), 0.0))
    }

    fn clamp_inplace(&self, x: &mut GpuBuffer, limit: f32, len: usize) -> BackendResult<()> {
        self.unary("clamp", x, len, |t| t.clamp(-limit, limit))
    }

    fn xielu_inplace(&self, x: &mut GpuBuffer, p: Xielu, len: usize) -> BackendResult<()> {
        let [an, ap, beta] = [p.alpha_n, p.alpha_p, p.beta].map(f64::from);
        self.unary("xielu", x, len, |t| {
            let linear = t.affine(beta, 0.0)?;
            let pos = (t.sqr()?.affine(ap, 0.0)? + &linear)?;
            let expm1 = t.minimum(p.eps)?.exp()?.affine(1.0, -1.0)?;
            let neg = ((expm1 - t)?.affine(an, 0.0)? + &linear)?;
            t.gt(0.0)?.where_cond(&pos, &neg)
        })
    }

    fn relu_squared_inplace(&self, x: &mut GpuBuffer, len: usize) -> BackendResult<()> {
        self.unary("relu_squared", x, len, |t| t.relu()?.sqr())
    }

    fn sigmoid_mul_inplace(
        &self,
        dst: &mut GpuBuffer,
        gate: &GpuBuffer,
        len: usize,
    ) -> BackendResult<()> {
        self.binary("sigmoid_mul", dst, gate, len, |a, g| {
            let sigmoid = (g.neg()?.exp()? + 1.0)?.recip()?;
            a * sigmoid
        })
    }
}
