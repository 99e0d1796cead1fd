//! Activations quantized by the op that writes them (`kernels/q8_1.cuh`),
//! for the quantized product that reads them next.
//!
//! candle's vector product kernels (up to 8 rows) first quantize their
//! input to GGUF's Q8_1 blocks with a kernel of their own. The fused norm,
//! gated unit and decode attention can write those blocks as they write
//! their results, so the product launches one kernel instead of two. The
//! blocks sit after the op's f32 results in the same f32 tensor (a block
//! is 36 bytes, 9 words); [`crate::GpuBuffer`] keeps them beside the
//! values they quantize, and [`MatMulOps::matmul`] reads them when it can.
//!
//! A block holds a half scale `d = amax / 127`, the half sum of its 32
//! values, summed in the order of a warp's butterfly, and the quants
//! `round(x / d)`: exactly what candle's quantizer writes, so the product
//! gets the same input bit for bit.
//!
//! [`MatMulOps::matmul`]: realm_core::backend::MatMulOps::matmul

use candle_core::{Result, Tensor};

/// Values a block quantizes.
pub(crate) const BLOCK: usize = 32;
/// f32 words a block takes.
pub(crate) const WORDS: usize = 9;
/// The most rows a product takes its input as blocks for: candle's vector
/// kernels; more rows use its matrix kernels, which quantize to another
/// layout.
pub(crate) const MAX_ROWS: usize = 8;
/// The most values an op writes blocks of: 8 rows of a 16,384-wide
/// activation. Ops that do not know their rows (the gated units) use it to
/// skip a prefill chunk's blocks, which no product reads.
pub(crate) const MAX_VALUES: usize = MAX_ROWS * 16384;

/// Words of the blocks of `values` values (a multiple of [`BLOCK`]).
pub(crate) fn words(values: usize) -> usize {
    values / BLOCK * WORDS
}

/// The CPU form: appends the blocks of `values` (a multiple of [`BLOCK`])
/// to `out`, as the kernels write them.
pub(crate) fn quantize_into(values: &[f32], out: &mut Vec<f32>) {
    for block in values.chunks_exact(BLOCK) {
        let mut amax = [0f32; BLOCK];
        let mut sum = [0f32; BLOCK];
        for (i, &v) in block.iter().enumerate() {
            amax[i] = v.abs();
            sum[i] = v;
        }
        // Lane i adds lane i ^ o's value, for o = 16, 8, 4, 2, 1.
        for o in [16, 8, 4, 2, 1] {
            let (a, s) = (amax, sum);
            for i in 0..BLOCK {
                amax[i] = a[i].max(a[i ^ o]);
                sum[i] = s[i] + s[i ^ o];
            }
        }
        let d = amax[0] / 127.0;
        let mut bytes = [0u8; WORDS * 4];
        bytes[0..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        bytes[2..4].copy_from_slice(&half::f16::from_f32(sum[0]).to_le_bytes());
        for (b, &v) in bytes[4..].iter_mut().zip(block) {
            let q = if amax[0] == 0.0 {
                0
            } else {
                (v / d).round() as i8
            };
            *b = q as u8;
        }
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|w| f32::from_bits(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))),
        );
    }
}

/// The values blocks stand for (`d * q`), from their words.
pub(crate) fn dequantize(words: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(words.len() / WORDS * BLOCK);
    for block in words.chunks_exact(WORDS) {
        // Word 0 holds d (low half) and the sum; words 1.. the quants.
        let d = half::f16::from_bits(block[0].to_bits() as u16).to_f32();
        for w in &block[1..] {
            out.extend(w.to_bits().to_le_bytes().map(|q| d * f32::from(q as i8)));
        }
    }
    out
}

/// The blocks' values as a tensor on the blocks' device: the input the
/// CPU device's products take in place of the blocks.
pub(crate) fn dequantize_tensor(blocks: &Tensor) -> Result<Tensor> {
    let values = dequantize(&blocks.flatten_all()?.to_vec1::<f32>()?);
    let n = values.len();
    Tensor::from_vec(values, n, blocks.device())
}

/// A quantized product whose input is blocks: candle's vector kernel for
/// the weight's type, launched on the blocks (`[n * words(cols)]` f32
/// words) for `[n, rows]` f32 results. CUDA only: the CPU device
/// multiplies [`dequantize_tensor`]'s values instead.
#[cfg(feature = "cuda")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlocksProduct {
    pub(crate) weight: cuda::Weight,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    use candle_core::quantized::{GgmlDType, QMatMul};
    use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};

    use super::{BlocksProduct, MAX_ROWS};

    /// candle's launcher of a vector product kernel with f32 results.
    type Launcher = unsafe extern "C" fn(
        vx: *const std::ffi::c_void,
        vy: *const std::ffi::c_void,
        dst: *mut std::ffi::c_void,
        ncols_x: i32,
        nrows_x: i32,
        stride_col_y: i32,
        stride_col_dst: i32,
        b_size: i32,
        stream: *mut std::ffi::c_void,
    );

    extern "C" {
        /// The CUDA runtime's last error on this thread, cleared (candle's
        /// launchers launch through the runtime, which reports a kernel
        /// that did not launch only here).
        fn cudaGetLastError() -> i32;
        /// The name of a runtime error code, a static C string.
        fn cudaGetErrorName(code: i32) -> *const std::ffi::c_char;
    }

    /// `code`'s name and number, as in `cudaErrorLaunchOutOfResources (701)`.
    fn error_name(code: i32) -> String {
        // SAFETY: takes any code and returns a pointer to a static,
        // NUL-terminated string (or null for none).
        let name = unsafe { cudaGetErrorName(code) };
        if name.is_null() {
            return format!("error {code}");
        }
        // SAFETY: non-null, so a static NUL-terminated C string (above).
        let name = unsafe { std::ffi::CStr::from_ptr(name) };
        format!("{} ({code})", name.to_string_lossy())
    }

    /// Runs `f`, which launches through the CUDA runtime (candle's product
    /// launchers do, and do not check their launches), and makes a launch
    /// that the runtime refused (too many resources, no image for the
    /// device) an error instead of results never written. Only for work on
    /// a CUDA device.
    ///
    /// An error already pending is reported too, as an earlier launch's. A
    /// kernel's fault (an illegal address) is sticky: every later check
    /// reports it, wherever it happened.
    pub(crate) fn runtime_checked<R>(what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
        // SAFETY: takes nothing; reads and clears this thread's runtime
        // error from earlier launches, so that the check below is `f`'s.
        let before = unsafe { cudaGetLastError() };
        if before != 0 {
            candle_core::bail!(
                "{what}: CUDA runtime {} from an earlier launch",
                error_name(before)
            );
        }
        let r = f()?;
        // SAFETY: takes nothing, and only reads and clears this thread's
        // runtime error, which `f`'s launches set or not.
        match unsafe { cudaGetLastError() } {
            0 => Ok(r),
            code => candle_core::bail!(
                "{what}: CUDA runtime {} at or before its launch",
                error_name(code)
            ),
        }
    }

    /// A quantized weight on a CUDA device, as the vector kernels take it.
    #[derive(Clone, Copy)]
    pub(crate) struct Weight {
        /// The weight's blocks on the device; they live as long as the
        /// weight's `QMatMul`, which outlives every product by it.
        ptr: u64,
        launch: Launcher,
    }

    impl std::fmt::Debug for Weight {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Weight({:#x})", self.ptr)
        }
    }

    impl Weight {
        /// The weights `qm` multiplies by, if they are quantized blocks on a
        /// CUDA device in a type the vector kernels take (candle keeps a
        /// dequantized copy instead when `CANDLE_DEQUANTIZE_ALL` is set).
        pub(crate) fn of(qm: &QMatMul) -> Result<Option<Self>> {
            use candle_kernels::ffi;
            let QMatMul::QTensor(q) = qm else {
                return Ok(None);
            };
            if !q.device().is_cuda() {
                return Ok(None);
            }
            let launch: Launcher = match q.dtype() {
                GgmlDType::Q4_0 => ffi::launch_mmvq_gguf_q4_0_f32_plain,
                GgmlDType::Q4_1 => ffi::launch_mmvq_gguf_q4_1_f32_plain,
                GgmlDType::Q5_0 => ffi::launch_mmvq_gguf_q5_0_f32_plain,
                GgmlDType::Q5_1 => ffi::launch_mmvq_gguf_q5_1_f32_plain,
                GgmlDType::Q8_0 => ffi::launch_mmvq_gguf_q8_0_f32_plain,
                GgmlDType::Q2K => ffi::launch_mmvq_gguf_q2_k_f32_plain,
                GgmlDType::Q3K => ffi::launch_mmvq_gguf_q3_k_f32_plain,
                GgmlDType::Q4K => ffi::launch_mmvq_gguf_q4_k_f32_plain,
                GgmlDType::Q5K => ffi::launch_mmvq_gguf_q5_k_f32_plain,
                GgmlDType::Q6K => ffi::launch_mmvq_gguf_q6_k_f32_plain,
                _ => return Ok(None),
            };
            Ok(Some(Self {
                ptr: q.device_ptr()? as u64,
                launch,
            }))
        }
    }

    impl CustomOp1 for BlocksProduct {
        fn name(&self) -> &'static str {
            "blocks-product"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            candle_core::bail!("blocks product: CUDA only (the CPU device multiplies values)")
        }

        fn cuda_fwd(
            &self,
            s: &candle_core::CudaStorage,
            l: &Layout,
        ) -> Result<(candle_core::CudaStorage, Shape)> {
            use candle_core::backend::BackendStorage;
            use candle_core::cuda_backend::cudarc::driver::DevicePtr;

            let (rows, cols) = (self.rows, self.cols);
            let per_row = super::words(cols);
            let (a, b) = crate::fused::cuda::offsets(l)?;
            let n = (b - a) / per_row.max(1);
            if cols % super::BLOCK != 0 || n == 0 || n > MAX_ROWS || n * per_row != b - a {
                candle_core::bail!("blocks product: {} words for rows of {cols}", b - a);
            }
            if i32::try_from(rows).is_err() || i32::try_from(cols).is_err() {
                candle_core::bail!("blocks product: {rows} x {cols} past 2^31");
            }
            let dev = s.device();
            let stream = dev.cuda_stream();
            let blocks = s.as_cuda_slice::<f32>()?.slice(a..b);
            // SAFETY: the kernel writes every one of the n x rows results
            // (each block of threads its rows, for every input row).
            let out = unsafe { dev.alloc::<f32>(n * rows)? };
            runtime_checked("blocks product", || {
                let (blocks_ptr, _g1) = blocks.device_ptr(&stream);
                let (out_ptr, _g2) = out.device_ptr(&stream);
                // SAFETY: `launch` is candle's launcher for the weight's
                // type, whose blocks at `ptr` hold rows x cols values and
                // outlive the call (see `Weight`); the input is n rows of
                // cols / 32 blocks (checked above, 36 bytes each as the
                // kernel reads them, 4-byte aligned in an f32 buffer), the
                // output n x rows f32 values, and the stream is candle's for
                // this thread, on which the blocks and `out` were made.
                unsafe {
                    (self.weight.launch)(
                        self.weight.ptr as *const std::ffi::c_void,
                        blocks_ptr as *const std::ffi::c_void,
                        out_ptr as *mut std::ffi::c_void,
                        cols as i32,
                        rows as i32,
                        (cols / super::BLOCK) as i32,
                        rows as i32,
                        n as i32,
                        stream.cu_stream() as *mut std::ffi::c_void,
                    )
                };
                Ok(())
            })?;
            Ok((
                candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
                Shape::from((n, rows)),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_within_half_a_step() {
        let values: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut words = Vec::new();
        quantize_into(&values, &mut words);
        assert_eq!(words.len(), super::words(96));
        let back = dequantize(&words);
        for (block, got) in values.chunks(BLOCK).zip(back.chunks(BLOCK)) {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in block.iter().zip(got) {
                // Half a quantization step, plus the half scale's rounding.
                assert!(
                    (a - b).abs() <= amax / 127.0 * 0.5 + amax * 1e-3,
                    "{a} vs {b}"
                );
            }
        }
        // The sum is the values' sum, not the quants'.
        let sum_bits = words[0].to_bits() >> 16;
        let sum = half::f16::from_bits(sum_bits as u16).to_f32();
        let want: f32 = values[..BLOCK].iter().sum();
        assert!(
            (sum - want).abs() <= want.abs() * 1e-3 + 1e-3,
            "{sum} vs {want}"
        );
        // Zeros quantize to zeros with a zero scale.
        let mut zeros = Vec::new();
        quantize_into(&[0f32; BLOCK], &mut zeros);
        assert!(zeros.iter().all(|w| w.to_bits() == 0));
    }
}
