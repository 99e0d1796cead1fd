//! [`AddRmsNorm`]: a residual add and the RMSNorm after it in one kernel
//! (`kernels/add_rms_norm.cu`), in place of candle's add and norm kernels.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{q8, values};

/// For `x`, `y` of `[rows, width]` and `w` of `[width]`, all f32: the flat
/// result holds the `rows * width` values of `x + y`, then as many of its
/// RMSNorm with weight `w`, then the norms' blocks `blocks` asks for
/// ([`q8`]; `width` a multiple of 32). With `y_norm` (f32 `[width]`), `y`
/// is first replaced by its RMSNorm with that weight.
#[derive(Debug, Clone)]
pub(crate) struct AddRmsNorm {
    pub(crate) eps: f32,
    pub(crate) blocks: q8::Blocks,
    pub(crate) y_norm: Option<Tensor>,
}

impl AddRmsNorm {
    fn check(&self, lx: &Layout, ly: &Layout, lw: &Layout) -> Result<(usize, usize)> {
        let (rows, width) = lx.shape().dims2()?;
        if ly.shape() != lx.shape() || lw.shape().dims1()? != width {
            candle_core::bail!("add_rms_norm: x, y and w of different widths");
        }
        if rows == 0 || width == 0 || u32::try_from(2 * rows * width).is_err() {
            candle_core::bail!("add_rms_norm: {rows} rows of {width} values");
        }
        if self.blocks != q8::Blocks::No && !width.is_multiple_of(q8::BLOCK) {
            candle_core::bail!("add_rms_norm: blocks of rows of {width} values");
        }
        if let Some(t) = &self.y_norm {
            if t.dims() != [width] || t.dtype() != candle_core::DType::F32 || !t.is_contiguous() {
                candle_core::bail!("add_rms_norm: y's norm weight of {:?}", t.dims());
            }
        }
        Ok((rows, width))
    }

    /// Values of the result.
    fn len(&self, rows: usize, width: usize) -> usize {
        2 * rows * width + self.blocks.words(rows, width)
    }
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
        let (rows, width) = self.check(lx, ly, lw)?;
        let (CpuStorage::F32(x), CpuStorage::F32(y), CpuStorage::F32(w)) = (sx, sy, sw) else {
            candle_core::bail!("add_rms_norm: f32 values");
        };
        let (x, y, w) = (values(x, lx)?, values(y, ly)?, values(w, lw)?);
        // y normed first (as the CPU backend's rms_norm), when asked.
        let normed: Vec<f32>;
        let y = match &self.y_norm {
            Some(t) => {
                let yw = t.to_vec1::<f32>()?;
                normed = y
                    .chunks_exact(width)
                    .flat_map(|r| {
                        let squares: f32 = r.iter().map(|v| v * v).sum();
                        let scale = 1.0 / (squares / width as f32 + self.eps).sqrt();
                        r.iter().zip(&yw).map(move |(&v, &wi)| v * scale * wi)
                    })
                    .collect();
                &normed[..]
            }
            None => y,
        };
        let mut out = Vec::with_capacity(self.len(rows, width));
        out.resize(2 * rows * width, 0f32);
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
        if self.blocks != q8::Blocks::No {
            let norms = out[rows * width..].to_vec();
            self.blocks.quantize_into(&norms, rows, width, &mut out);
        }
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
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
        use candle_core::cuda_backend::cudarc::driver::LaunchConfig;

        use super::cuda::offsets;
        use super::launch::Kernel;

        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/add_rms_norm.ptx"));
        /// The kernel's `NORM_THREADS`.
        const THREADS: u32 = 256;
        let (rows, width) = self.check(lx, ly, lw)?;
        let dev = sx.device();
        let (xa, xb) = offsets(lx)?;
        let (ya, yb) = offsets(ly)?;
        let (wa, wb) = offsets(lw)?;
        let x = sx.as_cuda_slice::<f32>()?.slice(xa..xb);
        let y = sy.as_cuda_slice::<f32>()?.slice(ya..yb);
        let w = sw.as_cuda_slice::<f32>()?.slice(wa..wb);
        let len = self.len(rows, width);
        // SAFETY: the kernel writes every value: each block its row's sums
        // and norms, and with `blocks` their blocks; all but matrix blocks'
        // spare blocks, which a product reads only for results it drops
        // (any bits are an f32).
        let out = unsafe { dev.alloc::<f32>(len)? };
        // Null pointers say: no blocks (of that layout).
        let blocks_at = super::cuda::address(&out, 2 * rows * width);
        let (blocks_ptr, matrix_ptr) = match self.blocks {
            q8::Blocks::No => (0, 0),
            q8::Blocks::Vector => (blocks_at, 0),
            q8::Blocks::Matrix => (0, blocks_at),
        };
        // A null pointer says: y as it is.
        let y_norm = self.y_norm.as_ref().map(|t| t.storage_and_layout());
        let y_w = match &y_norm {
            Some((storage, layout)) => {
                let candle_core::Storage::Cuda(s) = &**storage else {
                    candle_core::bail!("add_rms_norm: y's norm weight on another device");
                };
                let (a, b) = offsets(layout)?;
                Some(s.as_cuda_slice::<f32>()?.slice(a..b))
            }
            None => None,
        };
        let y_w_ptr = {
            use candle_core::cuda_backend::cudarc::driver::DevicePtr;
            let stream = dev.cuda_stream();
            y_w.as_ref().map_or(0, |v| v.device_ptr(&stream).0)
        };
        let kernel = Kernel::load(dev, "add_rms_norm_f32", "realm_add_rms_norm", PTX)?;
        let mut b = kernel.args();
        let (rows32, width32) = (rows as u32, width as u32);
        b.arg(&x);
        b.arg(&y);
        b.arg(&w);
        b.arg(&out);
        b.arg(&rows32);
        b.arg(&width32);
        b.arg(&self.eps);
        b.arg(&blocks_ptr);
        b.arg(&y_w_ptr);
        b.arg(&matrix_ptr);
        let cfg = LaunchConfig {
            grid_dim: (rows32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel's parameters in order and
        // type; `check` made `x` and `y` rows x width values and `w` (and
        // y's norm weight, if any, held alive by `y_norm`) width (a
        // multiple of 32 with blocks), and `out` holds 2 x rows x width
        // values and then the words of the blocks asked for, which the
        // kernel writes (matrix blocks: rows x width padded, both kinds).
        unsafe { b.launch(cfg) }?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(len),
        ))
    }
}
