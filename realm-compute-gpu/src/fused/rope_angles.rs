//! [`RopeAngles`]: a static step's RoPE tables computed on the device from
//! its positions (`kernels/rope_angles.cu`), so that a recorded step makes
//! them itself and the host uploads only ids and positions.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};

use super::values;
use crate::ops::rope_angles;

/// The most pairs a head's RoPE rotates on the device (heads of up to 512
/// rotated values).
pub(crate) const ROPE_PAIRS: usize = 256;

/// Each pair's inverse frequency ([`RopeParams::inv_freqs`]), passed to
/// the kernel by value (a recorded step keeps them); the first `n_dims /
/// 2` are used.
///
/// [`RopeParams::inv_freqs`]: realm_core::backend::RopeParams::inv_freqs
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct InvFreqs {
    pub(crate) v: [f64; ROPE_PAIRS],
}

#[cfg(feature = "cuda")]
// SAFETY: plain doubles, laid out (`repr(C)`) as the kernel's struct.
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for InvFreqs {}

/// On positions `[rows]` (u32): `[2, rows, n_dims / 2]` f32, the cosines
/// then the sines of each row's angles, as [`rope_angles`] computes them
/// on the host.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RopeAngles {
    pub(crate) n_dims: usize,
    pub(crate) inv_freq: InvFreqs,
    pub(crate) freq_scale: f32,
    pub(crate) magnitude: f32,
}

impl RopeAngles {
    /// The op for `p`'s angles, or an error if it rotates more than
    /// [`ROPE_PAIRS`] pairs.
    pub(crate) fn new(p: &realm_core::backend::RopeParams) -> Result<Self> {
        if p.n_dims / 2 > ROPE_PAIRS {
            candle_core::bail!("rope_angles: at most {} rotated dimensions", 2 * ROPE_PAIRS);
        }
        let mut inv_freq = InvFreqs {
            v: [0.0; ROPE_PAIRS],
        };
        for (v, f) in inv_freq.v.iter_mut().zip(p.inv_freqs()) {
            *v = f;
        }
        Ok(Self {
            n_dims: p.n_dims,
            inv_freq,
            freq_scale: p.freq_scale,
            magnitude: p.magnitude,
        })
    }

    fn check(&self, l: &Layout) -> Result<usize> {
        let rows = l.shape().dims1()?;
        let n = self.n_dims;
        if rows == 0 || n == 0 || !n.is_multiple_of(2) || n / 2 > ROPE_PAIRS {
            candle_core::bail!("rope_angles: {rows} rows, {n} rotated dimensions");
        }
        if u32::try_from(rows).is_err() || !l.is_contiguous() {
            candle_core::bail!("rope_angles: positions must be contiguous, fewer than 2^32");
        }
        Ok(rows)
    }
}

impl CustomOp1 for RopeAngles {
    fn name(&self) -> &'static str {
        "rope-angles"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let rows = self.check(l)?;
        let CpuStorage::U32(positions) = s else {
            candle_core::bail!("rope_angles: u32 positions");
        };
        let (mut out, sin) = rope_angles(
            values(positions, l)?,
            &self.inv_freq.v[..self.n_dims / 2],
            self.freq_scale,
            self.magnitude,
        );
        out.extend(sin);
        Ok((
            CpuStorage::F32(out),
            Shape::from((2, rows, self.n_dims / 2)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::LaunchConfig;

        use super::cuda::offsets;
        use super::launch::Kernel;

        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/rope_angles.ptx"));
        /// The kernel's `ANGLE_THREADS`.
        const THREADS: u32 = 128;
        let rows = self.check(l)?;
        let dev = s.device();
        let (a, b) = offsets(l)?;
        let positions = s.as_cuda_slice::<u32>()?.slice(a..b);
        let half = self.n_dims / 2;
        // SAFETY: the kernel writes every value: each block its row's
        // cosines and sines.
        let out = unsafe { dev.alloc::<f32>(2 * rows * half)? };
        let kernel = Kernel::load(dev, "rope_angles_f32", "realm_rope_angles", PTX)?;
        let mut builder = kernel.args();
        let (rows32, n_dims) = (rows as u32, self.n_dims as i32);
        builder.arg(&positions);
        builder.arg(&out);
        builder.arg(&rows32);
        builder.arg(&n_dims);
        builder.arg(&self.inv_freq);
        builder.arg(&self.freq_scale);
        builder.arg(&self.magnitude);
        let cfg = LaunchConfig {
            grid_dim: (rows32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's parameters in order and
        // type; `positions` holds `rows` values and `out` 2 x rows x half.
        unsafe { builder.launch(cfg) }?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((2, rows, half)),
        ))
    }
}
