//! [`AddRmsNorm`]: a residual add and the RMSNorm after it in one kernel
//! (`kernels/add_rms_norm.cu`), in place of candle's add and norm kernels.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape};

use super::values;

/// For `x`, `y` of `[rows, width]` and `w` of `[width]`, all f32: the
/// result `[2, rows, width]` holds `x + y`, then its RMSNorm with weight
/// `w`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddRmsNorm {
    pub(crate) eps: f32,
}

fn check(lx: &Layout, ly: &Layout, lw: &Layout) -> Result<(usize, usize)> {
    let (rows, width) = lx.shape().dims2()?;
    if ly.shape() != lx.shape() || lw.shape().dims1()? != width {
        candle_core::bail!("add_rms_norm: x, y and w of different widths");
    }
    if rows == 0 || width == 0 || u32::try_from(rows * width).is_err() {
        candle_core::bail!("add_rms_norm: {rows} rows of {width} values");
    }
    Ok((rows, width))
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add-rms-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sy: &CpuStorage,
        ly: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, width) = check(lx, ly, lw)?;
        let (CpuStorage::F32(x), CpuStorage::F32(y), CpuStorage::F32(w)) = (sx, sy, sw) else {
            candle_core::bail!("add_rms_norm: f32 values");
        };
        let (x, y, w) = (values(x, lx)?, values(y, ly)?, values(w, lw)?);
        let mut out = vec![0f32; 2 * rows * width];
        let (sums, norms) = out.split_at_mut(rows * width);
        for (((xr, yr), sr), nr) in x
            .chunks_exact(width)
            .zip(y.chunks_exact(width))
            .zip(sums.chunks_exact_mut(width))
            .zip(norms.chunks_exact_mut(width))
        {
            let mut squares = 0f32;
            for ((s, &a), &b) in sr.iter_mut().zip(xr).zip(yr) {
                *s = a + b;
                squares += *s * *s;
            }
            let scale = 1.0 / (squares / width as f32 + self.eps).sqrt();
            for ((n, &s), &wi) in nr.iter_mut().zip(sr.iter()).zip(w) {
                *n = s * scale * wi;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((2, rows, width))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sx: &candle_core::CudaStorage,
        lx: &Layout,
        sy: &candle_core::CudaStorage,
        ly: &Layout,
        sw: &candle_core::CudaStorage,
        lw: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::WrapErr;

        use super::cuda::offsets;

        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/add_rms_norm.ptx"));
        /// The kernel's `NORM_THREADS`.
        const THREADS: u32 = 256;
        let (rows, width) = check(lx, ly, lw)?;
        let dev = sx.device();
        let (xa, xb) = offsets(lx)?;
        let (ya, yb) = offsets(ly)?;
        let (wa, wb) = offsets(lw)?;
        let x = sx.as_cuda_slice::<f32>()?.slice(xa..xb);
        let y = sy.as_cuda_slice::<f32>()?.slice(ya..yb);
        let w = sw.as_cuda_slice::<f32>()?.slice(wa..wb);
        // SAFETY: the kernel writes every value: each block its row's sums
        // and norms.
        let out = unsafe { dev.alloc::<f32>(2 * rows * width)? };
        let func = dev.get_or_load_custom_func("add_rms_norm_f32", "realm_add_rms_norm", PTX)?;
        let mut b = func.builder();
        let (rows32, width32) = (rows as u32, width as u32);
        b.arg(&x);
        b.arg(&y);
        b.arg(&w);
        b.arg(&out);
        b.arg(&rows32);
        b.arg(&width32);
        b.arg(&self.eps);
        let cfg = LaunchConfig {
            grid_dim: (rows32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's parameters in order and
        // type; `check` made `x` and `y` rows x width values and `w` width,
        // and `out` holds 2 x rows x width.
        unsafe { b.launch(cfg) }.w()?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((2, rows, width)),
        ))
    }
}
