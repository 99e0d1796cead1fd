//! Realm's own fused kernels, as candle custom ops. Each has a CPU form of
//! the same arithmetic, which runs on candle's CPU device (where the tests
//! run without a GPU) and which the tests compare the CUDA form with. The
//! CUDA forms live in `kernels/*.cu`, compiled to PTX by `build.rs`.
//!
//! A small model's decode step is launch-bound: these replace several of
//! candle's kernels each with one.

mod add_norm;
mod attention;
mod gated;
#[cfg(any(test, feature = "cuda"))]
mod launch;
pub(crate) mod q8;
mod rope_angles;
mod rope_store;
mod slots;

pub(crate) use add_norm::AddRmsNorm;
pub(crate) use attention::{FusedAttention, QueryPositions, MAX_HEAD_DIM};
pub(crate) use gated::{Gate, Gated};
pub(crate) use rope_angles::RopeAngles;
pub(crate) use rope_store::RopeStore;
pub(crate) use slots::{SlotTable, SLOT_ROWS};

#[cfg(feature = "cuda")]
pub(crate) use cuda::multiprocessors;
#[cfg(feature = "cuda")]
pub(crate) use launch::Kernel;

use candle_core::{DType, Layout, Result, Tensor};

/// RoPE for the fused kernels: each row's cosines and sines, `[rows,
/// n_dims / 2]` f32 tensors on the device, and how dimensions pair up.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    /// Dimensions rotated at the start of each head; the rest are kept.
    pub(crate) n_dims: usize,
    /// Pairs `(i, i + n_dims / 2)` (GPT-NeoX), else `(2i, 2i + 1)`.
    pub(crate) neox: bool,
    /// Per-head RMSNorm weights (`[head_dim]` f32) of the queries and of
    /// the keys, applied before the rotation (Gemma 3), and their epsilon.
    pub(crate) q_norm: Option<Tensor>,
    pub(crate) k_norm: Option<Tensor>,
    pub(crate) norm_eps: f32,
}

impl Rope {
    /// The two dimensions of pair `i`.
    pub(crate) fn pair(&self, i: usize) -> (usize, usize) {
        match self.neox {
            true => (i, i + self.n_dims / 2),
            false => (2 * i, 2 * i + 1),
        }
    }

    /// Checks the tables against `rows` rows of heads of `head_dim`.
    pub(crate) fn check(&self, rows: usize, head_dim: usize) -> Result<()> {
        let n = self.n_dims;
        if n == 0 || !n.is_multiple_of(2) || n > head_dim || i32::try_from(n).is_err() {
            candle_core::bail!("fused rope: {n} rotated dimensions of {head_dim}");
        }
        for t in [&self.cos, &self.sin] {
            if t.elem_count() != rows * (n / 2) || t.dtype() != DType::F32 || !t.is_contiguous() {
                candle_core::bail!(
                    "fused rope: tables of {:?}, not [{rows}, {}]",
                    t.dims(),
                    n / 2
                );
            }
        }
        for t in [&self.q_norm, &self.k_norm].into_iter().flatten() {
            if t.dims() != [head_dim] || t.dtype() != DType::F32 || !t.is_contiguous() {
                candle_core::bail!(
                    "fused rope: a head norm of {:?}, not [{head_dim}]",
                    t.dims()
                );
            }
        }
        Ok(())
    }

    /// Rotates each `head_dim` head of `x` (rows of heads) by its row's
    /// angles, in place, after norming it with weight `norm` if given (the
    /// CPU backend's RMSNorm): the CPU forms' rotation.
    pub(crate) fn rotate_rows(
        &self,
        x: &mut [f32],
        heads: usize,
        head_dim: usize,
        norm: Option<&Tensor>,
    ) -> Result<()> {
        if let Some(w) = norm {
            let w = w.to_vec1::<f32>()?;
            for head in x.chunks_exact_mut(head_dim) {
                let squares: f32 = head.iter().map(|v| v * v).sum();
                let scale = 1.0 / (squares / head_dim as f32 + self.norm_eps).sqrt();
                for (v, &wi) in head.iter_mut().zip(&w) {
                    *v = *v * scale * wi;
                }
            }
        }
        let cos = self.cos.flatten_all()?.to_vec1::<f32>()?;
        let sin = self.sin.flatten_all()?.to_vec1::<f32>()?;
        let half = self.n_dims / 2;
        for (r, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
            let (c, s) = (&cos[r * half..][..half], &sin[r * half..][..half]);
            for head in row.chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (a, b) = self.pair(i);
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c[i] - x1 * s[i];
                    head[b] = x0 * s[i] + x1 * c[i];
                }
            }
        }
        Ok(())
    }
}

/// A 2-D layout whose rows are contiguous, one after another at a
/// stride: a stacked product's columns (`[rows, width]` of `[rows,
/// total]`), or plain contiguous rows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowLayout {
    pub(crate) start: usize,
    pub(crate) rows: usize,
    pub(crate) width: usize,
    /// Values from one row's start to the next's.
    pub(crate) stride: usize,
}

impl RowLayout {
    /// The rows of `l`, which must be `[rows, width]` with contiguous rows.
    pub(crate) fn of(l: &Layout) -> Result<Self> {
        let (rows, width) = l.shape().dims2()?;
        let strides = l.stride();
        let stride = if rows > 1 { strides[0] } else { width };
        if (width > 1 && strides[1] != 1) || stride < width {
            candle_core::bail!("fused op: rows must be contiguous, got strides {strides:?}");
        }
        Ok(Self {
            start: l.start_offset(),
            rows,
            width,
            stride,
        })
    }

    /// One past the last value of the last row.
    pub(crate) fn end(&self) -> usize {
        match self.rows {
            0 => self.start,
            n => self.start + (n - 1) * self.stride + self.width,
        }
    }

    /// The rows' values from `s`, contiguous: the CPU forms' input.
    pub(crate) fn gather<T: Copy>(&self, s: &[T]) -> Result<Vec<T>> {
        if self.end() > s.len() {
            candle_core::bail!("fused op: rows past their storage");
        }
        let mut out = Vec::with_capacity(self.rows * self.width);
        for r in 0..self.rows {
            let at = self.start + r * self.stride;
            out.extend_from_slice(&s[at..at + self.width]);
        }
        Ok(out)
    }
}

/// The contiguous values of `s` under `l`.
fn values<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) if b <= s.len() => Ok(&s[a..b]),
        _ => candle_core::bail!("fused op: arguments must be contiguous"),
    }
}

/// What the CUDA forms share.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DevicePtr};
    use candle_core::{Layout, Result, Storage};

    /// The device address of `s`'s value `at` (an f32 index), for a kernel
    /// argument that is an offset into a buffer the kernel also writes.
    pub(super) fn address(s: &CudaSlice<f32>, at: usize) -> u64 {
        let stream = s.stream().clone();
        let (ptr, _sync) = s.device_ptr(&stream);
        ptr + (at * std::mem::size_of::<f32>()) as u64
    }

    use super::Rope;

    /// Calls `f` with `rope`'s tables as device views.
    pub(super) fn with_tables<R>(
        rope: &Rope,
        f: impl FnOnce(&CudaView<'_, f32>, &CudaView<'_, f32>) -> Result<R>,
    ) -> Result<R> {
        let (cs, cl) = rope.cos.storage_and_layout();
        let (ss, sl) = rope.sin.storage_and_layout();
        let (Storage::Cuda(cs), Storage::Cuda(ss)) = (&*cs, &*ss) else {
            candle_core::bail!("fused rope: tables on another device");
        };
        let (ca, cb) = offsets(cl)?;
        let (sa, sb) = offsets(sl)?;
        let cos = cs.as_cuda_slice::<f32>()?.slice(ca..cb);
        let sin = ss.as_cuda_slice::<f32>()?.slice(sa..sb);
        f(&cos, &sin)
    }

    /// Calls `f` with the device address of `t`'s values (contiguous f32
    /// on a CUDA device), or 0 for none.
    pub(super) fn with_address<R>(
        t: Option<&candle_core::Tensor>,
        f: impl FnOnce(u64) -> Result<R>,
    ) -> Result<R> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::DevicePtr;
        let Some(t) = t else {
            return f(0);
        };
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else {
            candle_core::bail!("fused op: a tensor on another device");
        };
        let (a, b) = offsets(layout)?;
        let view = s.as_cuda_slice::<f32>()?.slice(a..b);
        let stream = s.device().cuda_stream();
        let (ptr, _sync) = view.device_ptr(&stream);
        f(ptr)
    }

    /// The device's streaming multiprocessors.
    pub(crate) fn multiprocessors(d: &candle_core::CudaDevice) -> Result<usize> {
        use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
        use candle_core::cuda_backend::WrapErr;
        let n = d
            .cuda_stream()
            .context()
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .w()?;
        Ok(usize::try_from(n).unwrap_or(1).max(1))
    }

    /// The start and end of `l`'s values, which must be contiguous.
    pub(super) fn offsets(l: &Layout) -> Result<(usize, usize)> {
        l.contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("fused op: arguments must be contiguous".into()))
    }
}
