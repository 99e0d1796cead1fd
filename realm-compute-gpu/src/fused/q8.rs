//! Activations quantized by the op that writes them (`kernels/q8_1.cuh`),
//! for the quantized product that reads them next.
//!
//! candle's vector product kernels (up to 8 rows) first quantize their
//! input to GGUF's Q8_1 blocks with a kernel of their own. The fused norm,
//! gated unit and decode attention can write those blocks as they write
//! their results, so the product launches one kernel instead of two; for
//! more rows they (and the tiled prefill attention) write the layout of
//! candle's matrix kernels instead ([`matrix`]). The
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
/// The most values an op writes in the matrix products' layout.
pub(crate) const MAX_MATRIX_VALUES: usize = 1 << 26;

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

/// The blocks an op writes after its results, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocks {
    /// None.
    No,
    /// Q8_1 blocks, for a vector product (up to [`MAX_ROWS`] rows).
    Vector,
    /// The matrix products' layout ([`matrix`]), of the op's rows.
    Matrix,
}

impl Blocks {
    /// Words of the blocks of `rows` rows of `width` values.
    pub(crate) fn words(self, rows: usize, width: usize) -> usize {
        match self {
            Blocks::No => 0,
            Blocks::Vector => words(rows * width),
            Blocks::Matrix => matrix::words(rows, width),
        }
    }

    /// The CPU form: appends the blocks of `values` (`rows` rows of
    /// `width`, a multiple of [`BLOCK`]) to `out`.
    pub(crate) fn quantize_into(
        self,
        values: &[f32],
        rows: usize,
        width: usize,
        out: &mut Vec<f32>,
    ) {
        match self {
            Blocks::No => {}
            Blocks::Vector => quantize_into(values, out),
            Blocks::Matrix => matrix::quantize_into(values, rows, width, out),
        }
    }
}

/// Blocks an op wrote of a buffer's values.
#[derive(Debug, Clone)]
pub(crate) enum Quantized {
    /// Q8_1 blocks of the values, in order.
    Vector(Tensor),
    /// `rows` rows of `width` values in the matrix products' layout.
    Matrix {
        rows: usize,
        width: usize,
        words: Tensor,
    },
}

/// The matrix products' layout: the input candle's matrix kernels (more
/// than [`MAX_ROWS`] rows) quantize to, as `kernels/q8_1.cuh` describes
/// it: blocks of 128 values of a row, the blocks of all rows for values 0
/// to 127 first; rows padded with zeros to a multiple of [`matrix::PAD`];
/// then [`matrix::SPARE`] blocks. Ops write it twice, once with each kind
/// of scales ([`matrix::Scales`]).
pub(crate) mod matrix {
    use candle_core::{Result, Tensor};
    use realm_core::GgmlType;

    /// Values a block quantizes.
    pub(crate) const BLOCK: usize = 128;
    /// f32 words a block takes (144 bytes: 16 of scales, 128 quants).
    pub(crate) const WORDS: usize = 36;
    /// Rows are padded to a multiple of this many values.
    pub(crate) const PAD: usize = 512;
    /// Blocks after the last row's, which a product may read (beyond its
    /// last row, for results it drops).
    pub(crate) const SPARE: usize = 128;

    /// The scales a block carries, as the weight's type wants them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Scales {
        /// A half scale and a half sum per 32 values (written first).
        Ds4,
        /// A float scale per 32 values (written second).
        D4,
    }

    impl Scales {
        /// What a matrix product by a weight of type `t` reads; `None`
        /// for types whose products take neither (Q2_K's, float weights').
        pub(crate) fn of(t: GgmlType) -> Option<Self> {
            match t {
                GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_1
                | GgmlType::Q4_K
                | GgmlType::Q5_K => Some(Self::Ds4),
                GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q3_K | GgmlType::Q6_K => Some(Self::D4),
                _ => None,
            }
        }
    }

    /// Blocks of one kind of scales for `rows` rows of `width` values,
    /// spare blocks included.
    pub(crate) fn blocks(rows: usize, width: usize) -> usize {
        rows * (width.next_multiple_of(PAD) / BLOCK) + SPARE
    }

    /// Words of the blocks of both kinds.
    pub(crate) fn words(rows: usize, width: usize) -> usize {
        2 * blocks(rows, width) * WORDS
    }

    /// Where the blocks with scales `kind` start, in bytes, in the words
    /// of both kinds.
    fn start(kind: Scales, rows: usize, width: usize) -> usize {
        match kind {
            Scales::Ds4 => 0,
            Scales::D4 => blocks(rows, width) * WORDS * 4,
        }
    }

    /// The CPU form: appends the blocks of `values` (`rows` rows of
    /// `width`, a multiple of 32), both kinds, as the kernels write them
    /// (spare blocks as zeros, which the kernels leave unwritten).
    pub(crate) fn quantize_into(values: &[f32], rows: usize, width: usize, out: &mut Vec<f32>) {
        let mut bytes = vec![0u8; words(rows, width) * 4];
        for (r, row) in values.chunks_exact(width).take(rows).enumerate() {
            for (j, part) in row.chunks_exact(32).enumerate() {
                let amax = part.iter().fold(0f32, |m, v| m.max(v.abs()));
                // The sum as candle's quantizer adds it: 8 threads add
                // their 4 values in order, then pair up (xor 4, 2, 1).
                let mut sums = [0f32; 8];
                for (s, q) in sums.iter_mut().zip(part.chunks_exact(4)) {
                    *s = ((q[0] + q[1]) + q[2]) + q[3];
                }
                for o in [4, 2, 1] {
                    let prev = sums;
                    for (t, s) in sums.iter_mut().enumerate() {
                        *s = prev[t] + prev[t ^ o];
                    }
                }
                let d_inv = 127.0 / amax;
                let d = 1.0 / d_inv;
                let block = (j * 32 / BLOCK) * rows + r;
                let (sub, at) = (j % 4, j * 32 % BLOCK);
                for kind in [Scales::Ds4, Scales::D4] {
                    let b = start(kind, rows, width) + block * WORDS * 4;
                    match kind {
                        Scales::Ds4 => {
                            let (d, s) = (half::f16::from_f32(d), half::f16::from_f32(sums[0]));
                            bytes[b + 4 * sub..b + 4 * sub + 2].copy_from_slice(&d.to_le_bytes());
                            bytes[b + 4 * sub + 2..b + 4 * sub + 4]
                                .copy_from_slice(&s.to_le_bytes());
                        }
                        Scales::D4 => {
                            bytes[b + 4 * sub..b + 4 * sub + 4].copy_from_slice(&d.to_le_bytes())
                        }
                    }
                    for (k, &v) in part.iter().enumerate() {
                        // NaN (0 * inf, a block of zeros) converts to 0.
                        bytes[b + 16 + at + k] = (v * d_inv).round() as i8 as u8;
                    }
                }
            }
        }
        out.extend(
            bytes
                .chunks_exact(4)
                .map(|w| f32::from_bits(u32::from_le_bytes([w[0], w[1], w[2], w[3]]))),
        );
    }

    /// The values (`rows` rows of `width`) that the blocks of kind `kind`
    /// in `words` (both kinds, as written) stand for.
    pub(crate) fn dequantize(words: &[f32], rows: usize, width: usize, kind: Scales) -> Vec<f32> {
        let bytes: Vec<u8> = words
            .iter()
            .flat_map(|w| w.to_bits().to_le_bytes())
            .collect();
        let mut out = Vec::with_capacity(rows * width);
        for r in 0..rows {
            for c in 0..width {
                let b = start(kind, rows, width) + ((c / BLOCK) * rows + r) * WORDS * 4;
                let sub = c % BLOCK / 32;
                let s = &bytes[b + 4 * sub..b + 4 * sub + 4];
                let d = match kind {
                    Scales::Ds4 => half::f16::from_le_bytes([s[0], s[1]]).to_f32(),
                    Scales::D4 => f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
                };
                out.push(d * f32::from(bytes[b + 16 + c % BLOCK] as i8));
            }
        }
        out
    }

    /// [`dequantize`]'s values as a `[rows, width]` tensor on the words'
    /// device: the input the CPU device's products take in their place.
    pub(crate) fn dequantize_tensor(
        words: &Tensor,
        rows: usize,
        width: usize,
        kind: Scales,
    ) -> Result<Tensor> {
        let all = words.flatten_all()?.to_vec1::<f32>()?;
        if all.len() != self::words(rows, width) {
            candle_core::bail!(
                "matrix blocks: {} words for {rows} rows of {width}",
                all.len()
            );
        }
        let values = dequantize(&all, rows, width, kind);
        Tensor::from_vec(values, (rows, width), words.device())
    }
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

/// A quantized product whose input is the matrix layout ([`matrix`]):
/// candle's matrix kernel for the weight's type, launched on `n` rows'
/// words (both kinds) for `[n, rows]` f32 results. CUDA only: the CPU
/// device multiplies [`matrix::dequantize_tensor`]'s values instead.
#[cfg(feature = "cuda")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatrixProduct<'a> {
    pub(crate) weight: cuda::Weight,
    /// The scales the weight's type reads ([`matrix::Scales::of`]).
    pub(crate) scales: matrix::Scales,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) n: usize,
    pub(crate) device: &'a cuda::MatrixDevice,
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    use candle_core::cuda_backend::cudarc::driver::CudaSlice;
    use candle_core::quantized::{GgmlDType, QMatMul};
    use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};

    use super::matrix;
    use super::{BlocksProduct, MatrixProduct, MAX_ROWS};

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

    /// candle's launcher of a matrix product kernel with f32 results.
    type MatrixLauncher = unsafe extern "C" fn(
        tmp_fixup: *mut std::ffi::c_void,
        vx: *const std::ffi::c_void,
        vy: *const std::ffi::c_void,
        dst: *mut std::ffi::c_void,
        ncols_x: i64,
        nrows_x: i64,
        ncols_y: i64,
        stride_row_x: i64,
        stride_col_dst: i64,
        cc: i32,
        nsm: i32,
        smpbo: i64,
        warp_size: i32,
        stream: *mut std::ffi::c_void,
    );

    /// A weight type's matrix kernel and the values its blocks hold.
    #[derive(Clone, Copy)]
    struct Matrix {
        launch: MatrixLauncher,
        block: usize,
    }

    impl Matrix {
        fn of(t: GgmlDType) -> Option<Self> {
            use candle_kernels::ffi;
            let (launch, block): (MatrixLauncher, _) = match t {
                GgmlDType::Q4_0 => (ffi::launch_mmq_gguf_q4_0, 32),
                GgmlDType::Q4_1 => (ffi::launch_mmq_gguf_q4_1, 32),
                GgmlDType::Q5_0 => (ffi::launch_mmq_gguf_q5_0, 32),
                GgmlDType::Q5_1 => (ffi::launch_mmq_gguf_q5_1, 32),
                GgmlDType::Q8_0 => (ffi::launch_mmq_gguf_q8_0, 32),
                GgmlDType::Q3K => (ffi::launch_mmq_gguf_q3_k, 256),
                GgmlDType::Q4K => (ffi::launch_mmq_gguf_q4_k, 256),
                GgmlDType::Q5K => (ffi::launch_mmq_gguf_q5_k, 256),
                GgmlDType::Q6K => (ffi::launch_mmq_gguf_q6_k, 256),
                _ => return None,
            };
            Some(Self { launch, block })
        }
    }

    /// What candle's matrix kernels need of a device besides their
    /// operands: its compute capability, multiprocessors, shared memory
    /// per block and warp size, and a buffer for the partial results of
    /// their stream-k split (one 128 x 128 tile of f32 per multiprocessor),
    /// made once, so that no product allocates inside a recorded step.
    /// Products using it are ordered between threads' streams like
    /// candle's own (`scratch`).
    #[derive(Debug)]
    pub(crate) struct MatrixDevice {
        fixup: CudaSlice<f32>,
        cc: i32,
        nsm: i32,
        smpbo: i64,
        warp: i32,
    }

    impl MatrixDevice {
        /// Reads `d`'s attributes and makes the buffer.
        pub(crate) fn new(d: &candle_core::CudaDevice) -> Result<Self> {
            use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute as A;
            use candle_core::cuda_backend::WrapErr;
            let ctx = d.cuda_stream().context().clone();
            let get = |a: A| ctx.attribute(a).w();
            let (major, minor) = (
                get(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                get(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            );
            let nsm = get(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1);
            let smpbo = get(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
            let warp = get(A::CU_DEVICE_ATTRIBUTE_WARP_SIZE)?;
            // SAFETY: the kernels write a tile's partial results here before
            // they read them back.
            let fixup = unsafe { d.alloc::<f32>(nsm as usize * 128 * 128)? };
            // Other threads' streams use it: it must exist first.
            candle_core::backend::BackendDevice::synchronize(d)?;
            Ok(Self {
                fixup,
                cc: major * 100 + minor * 10,
                nsm,
                smpbo: i64::from(smpbo),
                warp,
            })
        }
    }

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

    /// A quantized weight on a CUDA device, as the vector and matrix
    /// kernels take it.
    #[derive(Clone, Copy)]
    pub(crate) struct Weight {
        /// The weight's blocks on the device; they live as long as the
        /// weight's `QMatMul`, which outlives every product by it.
        ptr: u64,
        launch: Launcher,
        matrix: Option<Matrix>,
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
                matrix: Matrix::of(q.dtype()),
            }))
        }

        /// Whether candle has a matrix kernel for the weight's type.
        pub(crate) fn has_matrix(&self) -> bool {
            self.matrix.is_some()
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

    impl CustomOp1 for MatrixProduct<'_> {
        fn name(&self) -> &'static str {
            "matrix-blocks-product"
        }

        fn cpu_fwd(
            &self,
            _: &candle_core::CpuStorage,
            _: &candle_core::Layout,
        ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
            candle_core::bail!(
                "matrix blocks product: CUDA only (the CPU device multiplies values)"
            )
        }

        fn cuda_fwd(
            &self,
            s: &candle_core::CudaStorage,
            l: &candle_core::Layout,
        ) -> Result<(candle_core::CudaStorage, candle_core::Shape)> {
            use candle_core::backend::BackendStorage;
            use candle_core::cuda_backend::cudarc::driver::DevicePtr;

            let (rows, cols, n) = (self.rows, self.cols, self.n);
            let Some(m) = self.weight.matrix else {
                candle_core::bail!("matrix blocks product: no matrix kernel for the weight's type");
            };
            let (a, b) = crate::fused::cuda::offsets(l)?;
            let per_kind = matrix::blocks(n, cols) * matrix::WORDS;
            if b - a != 2 * per_kind
                || cols % super::BLOCK != 0
                || cols % m.block != 0
                || n <= MAX_ROWS
            {
                candle_core::bail!(
                    "matrix blocks product: {} words for {n} rows of {cols}",
                    b - a
                );
            }
            // The kernel indexes its results with 32-bit integers.
            let results = n.saturating_mul(rows);
            if i32::try_from(results.max(cols)).is_err() {
                candle_core::bail!("matrix blocks product: {n} x {cols} x {rows} past 2^31");
            }
            let start = match self.scales {
                matrix::Scales::Ds4 => a,
                matrix::Scales::D4 => a + per_kind,
            };
            let dev = s.device();
            let stream = dev.cuda_stream();
            let words = s.as_cuda_slice::<f32>()?.slice(start..start + per_kind);
            // SAFETY: the kernel writes every one of the n x rows results.
            let out = unsafe { dev.alloc::<f32>(n * rows)? };
            let d = self.device;
            runtime_checked("matrix blocks product", || {
                let (words_ptr, _g1) = words.device_ptr(&stream);
                let (out_ptr, _g2) = out.device_ptr(&stream);
                let (fixup_ptr, _g3) = d.fixup.device_ptr(&stream);
                // SAFETY: `launch` is candle's matrix kernel for the weight's
                // type, whose blocks at `ptr` hold rows x cols values (cols a
                // multiple of the type's block, `block` values each) and outlive
                // the call (see `Weight`); the input is n rows' blocks of the
                // kind of scales that kernel reads, padded to 512 values a row,
                // with the spare blocks it may read past the last row (checked
                // above); the output is n x rows f32 values, `fixup` one 128 x
                // 128 tile of f32 per multiprocessor, as the kernel's stream-k
                // split uses it; the attributes are the device's, and the
                // stream is candle's for this thread, on which the blocks and
                // `out` were made.
                unsafe {
                    (m.launch)(
                        fixup_ptr as *mut std::ffi::c_void,
                        self.weight.ptr as *const std::ffi::c_void,
                        words_ptr as *const std::ffi::c_void,
                        out_ptr as *mut std::ffi::c_void,
                        cols as i64,
                        rows as i64,
                        n as i64,
                        (cols / m.block) as i64,
                        rows as i64,
                        d.cc,
                        d.nsm,
                        d.smpbo,
                        d.warp,
                        stream.cu_stream() as *mut std::ffi::c_void,
                    )
                };
                Ok(())
            })?;
            Ok((
                candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
                candle_core::Shape::from((n, rows)),
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

    #[test]
    fn matrix_blocks_hold_each_rows_values_where_the_kernels_read_them() {
        use matrix::Scales;
        // 10 rows of 576, SmolLM2's width: padded to 1024, 8 blocks a row.
        let (rows, width) = (10, 576);
        let mut values: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        // Row 9's first 32 values are zeros.
        values[9 * width..9 * width + 32].fill(0.0);
        let mut words = Vec::new();
        matrix::quantize_into(&values, rows, width, &mut words);
        assert_eq!(matrix::blocks(rows, width), rows * 8 + matrix::SPARE);
        assert_eq!(words.len(), matrix::words(rows, width));
        let bytes: Vec<u8> = words
            .iter()
            .flat_map(|w| w.to_bits().to_le_bytes())
            .collect();
        let per_kind = matrix::blocks(rows, width) * 144;
        // Values 128..159 of row 3 are the first 32 quants of block
        // 1 * rows + 3, in both kinds; their scale is d = amax / 127.
        let part = &values[3 * width + 128..3 * width + 160];
        let amax = part.iter().fold(0f32, |m, v| m.max(v.abs()));
        for start in [0, per_kind] {
            let b = start + (rows + 3) * 144;
            for (k, &v) in part.iter().enumerate() {
                assert_eq!(bytes[b + 16 + k] as i8, (v * (127.0 / amax)).round() as i8);
            }
        }
        let ds4 = half::f16::from_le_bytes([bytes[(rows + 3) * 144], bytes[(rows + 3) * 144 + 1]]);
        assert_eq!(ds4, half::f16::from_f32(amax / 127.0));
        let d4 = &bytes[per_kind + (rows + 3) * 144..][..4];
        assert_eq!(
            f32::from_le_bytes([d4[0], d4[1], d4[2], d4[3]]),
            1.0 / (127.0 / amax)
        );
        // The half sum of the 32 values.
        let sum =
            half::f16::from_le_bytes([bytes[(rows + 3) * 144 + 2], bytes[(rows + 3) * 144 + 3]]);
        let want: f32 = part.iter().sum();
        assert!(
            (sum.to_f32() - want).abs() <= want.abs() * 1e-3 + 1e-2,
            "{sum} vs {want}"
        );
        // Values 576.. of every row (half of block 4, blocks 5 to 7) and
        // the spare blocks are zeros.
        for start in [0, per_kind] {
            for r in 0..rows {
                let b = start + (4 * rows + r) * 144;
                assert!(
                    bytes[b + 8..b + 16].iter().all(|&x| x == 0),
                    "scales past the row"
                );
                assert!(
                    bytes[b + 16 + 64..b + 144].iter().all(|&x| x == 0),
                    "quants past the row"
                );
            }
            let padding = start + 5 * rows * 144..start + per_kind;
            assert!(bytes[padding].iter().all(|&x| x == 0));
        }
        // Row 9's zeros: zero scales and quants.
        let b = 9 * 144;
        assert!(bytes[b..b + 4].iter().all(|&x| x == 0));
        assert!(bytes[b + 16..b + 48].iter().all(|&x| x == 0));
        // Each kind's values are the rows', within half a step (and the
        // half scale's rounding).
        for kind in [Scales::Ds4, Scales::D4] {
            let back = matrix::dequantize(&words, rows, width, kind);
            for (a, b) in values.chunks(32).zip(back.chunks(32)) {
                let amax = a.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (x, y) in a.iter().zip(b) {
                    assert!(
                        (x - y).abs() <= amax / 254.0 + amax * 1e-3,
                        "{kind:?}: {x} vs {y}"
                    );
                }
            }
        }
    }
}
