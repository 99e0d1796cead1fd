//! # realm-compute-cpu
//!
//! The CPU implementation of [`realm_core::backend::Backend`].
//!
//! - Quantized matmul the way fast engines do it: activations are quantized
//!   on the fly to 8-bit blocks (32 values for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/
//!   IQ4_NL/MXFP4 weights, 256 values with per-16 sums for Q2_K..Q6_K and IQ4_XS),
//!   dot products run on integers and are scaled once per block. F32 weights
//!   multiply f32 activations directly, F16 and BF16 weights activations
//!   rounded to their own type (as ggml's), in tiles of rows by tokens.
//! - Kernels: a portable scalar path (the reference), an AVX2+FMA+F16C
//!   path chosen at run time on x86-64, and a NEON path on aarch64 whose
//!   results are bit-identical to the scalar path's. Several tokens share
//!   each unpacked weight block (a tile of rows unpacked once into an L1
//!   buffer and swept past every token: 8 rows in vector lanes for the
//!   32-element types, 4 rows two tokens at a time for the k-quants), so
//!   prefill is not a series of matrix-vector products. One token reads each thread's rows as 4
//!   separate streams, which the hardware prefetcher follows in parallel.
//! - Threads: the backend splits output rows over its own small pool, in
//!   which the calling thread works too and idle helpers spin briefly, so
//!   the hundreds of matmuls of a decode step do not each wait for threads
//!   to wake; attention runs on it too (a rayon pool of the same size
//!   quantizes big batches and stands in when the pool is busy). Each
//!   output element is computed by one thread with a reduction order fixed
//!   by `k` alone: results are bit-identical for any batch size and thread
//!   count (batch invariance).
//! - Errors: every method checks its inputs and returns [`Error`] (an alias
//!   of [`realm_core::backend::BackendError`], shared by all backends)
//!   rather than panicking.
//!
//! ```
//! use realm_compute_cpu::{CpuBackend, CpuConfig};
//! use realm_core::backend::{BackendCore, MatMulOps};
//! use realm_core::{GgmlType, TensorView};
//!
//! let be = CpuBackend::with_config(CpuConfig { threads: 1, isa: None })?;
//! // A 2 x 4 f32 matrix (ggml shape [cols, rows]).
//! let w: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5];
//! let shape = [4u64, 2];
//! let view = TensorView::new("w", GgmlType::F32, &shape, bytemuck::cast_slice(&w)).unwrap();
//! let w = be.weight(&view)?;
//! let mut ws = be.workspace();
//! // Activations live in backend buffers (plain vectors on the CPU).
//! let x = be.upload(&[1.0, 1.0, 1.0, 1.0])?;
//! let mut out = be.buffer(2)?;
//! be.matmul(&mut ws, &w, &x, 1, &mut out)?;
//! assert_eq!(out, [10.0, 2.0]);
//! # Ok::<(), realm_compute_cpu::Error>(())
//! ```
#![warn(missing_docs)]

mod act;
mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod matmul;
#[cfg(target_arch = "aarch64")]
mod neon;
mod ops;
mod pool;
mod reference;

use realm_core::backend::{
    check_kv_layer, matrix_dims, split_width, ActivationOps, AttentionOps, AttentionParams,
    BackendCore, BackendError, BackendResult, HostChunkFn, KvCacheConfig, KvSpan, MatMulOps,
    NormOps, RopeOps, RopeParams, RowsProduct, StepOps, WeightInfo, Xielu,
};
use std::ops::Range;

use realm_core::{GgmlType, TensorView};

pub use attention::CpuKvCache;

/// The error type of this crate: the backend error shared by every backend.
pub type Error = BackendError;

/// The instruction set the kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable scalar code: the reference every other path is tested against.
    Scalar,
    /// x86-64 AVX2 with FMA and F16C.
    Avx2,
    /// aarch64 NEON (Advanced SIMD): the quantized matmul's integer dot
    /// products, with results identical to [`Isa::Scalar`]'s.
    Neon,
}

impl Isa {
    /// The fastest instruction set this CPU supports.
    pub fn detect() -> Self {
        [Self::Avx2, Self::Neon]
            .into_iter()
            .find(|isa| isa.is_available())
            .unwrap_or(Self::Scalar)
    }

    /// True when this CPU can run the kernels of `self`.
    pub fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => avx2::available(),
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx2 => false,
            #[cfg(target_arch = "aarch64")]
            Self::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(not(target_arch = "aarch64"))]
            Self::Neon => false,
        }
    }
}

/// How to build a [`CpuBackend`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuConfig {
    /// Worker threads; 0 means one per available core.
    pub threads: usize,
    /// Instruction set; `None` picks the fastest available.
    pub isa: Option<Isa>,
}

/// The CPU backend: a thread pool and the chosen instruction set.
///
/// It is `Sync`: sessions share one backend and each brings its own
/// [`CpuWorkspace`].
#[derive(Debug)]
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    /// Runs the matmuls, the caller taking part (see [`pool`]).
    spin: pool::SpinPool,
    threads: usize,
    isa: Isa,
    name: &'static str,
    /// llama.cpp's GELU table, where GELU reads one
    /// ([`CpuBackend::with_ggml_gelu`]).
    gelu_table: Option<Box<[u16]>>,
}

impl CpuBackend {
    /// `x[i] = f(x[i]) * up[i]` (`up` as long as `x`), or plain `f(x[i])`
    /// without `up`.
    fn activate(&self, f: ops::Activation, x: &mut [f32], up: Option<&[f32]>) {
        if let (ops::Activation::Gelu, Some(t)) = (f, &self.gelu_table) {
            let gelu = |v: f32| ops::gelu_looked_up(t, v);
            match up {
                Some(up) => x.iter_mut().zip(up).for_each(|(g, &u)| *g = gelu(*g) * u),
                None => x.iter_mut().for_each(|v| *v = gelu(*v)),
            }
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx2 && avx2::activate(f, x, up) {
            return;
        }
        match up {
            Some(up) => x
                .iter_mut()
                .zip(up)
                .for_each(|(g, &u)| *g = f.apply(*g) * u),
            None => x.iter_mut().for_each(|v| *v = f.apply(*v)),
        }
    }

    /// A backend with one thread per core and the fastest instruction set.
    pub fn new() -> Result<Self, Error> {
        Self::with_config(CpuConfig::default())
    }

    /// A backend as `cfg` says; fails when the requested instruction set is
    /// not available or the pool cannot be created.
    pub fn with_config(cfg: CpuConfig) -> Result<Self, Error> {
        let isa = cfg.isa.unwrap_or_else(Isa::detect);
        if !isa.is_available() {
            return Err(BackendError::Setup(format!(
                "{isa:?} is not supported by this CPU"
            )));
        }
        let threads = match cfg.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("realm-cpu-{i}"))
            .build()
            .map_err(|e| BackendError::Setup(e.to_string()))?;
        let name = match isa {
            Isa::Scalar => "cpu-scalar",
            Isa::Avx2 => "cpu-avx2",
            Isa::Neon => "cpu-neon",
        };
        Ok(Self {
            pool,
            spin: pool::SpinPool::new(threads - 1),
            threads,
            isa,
            name,
            gelu_table: None,
        })
    }

    /// This backend with llama.cpp's CPU GELU: each input rounded to f16
    /// and the output read from a table of f16 values (0 at or below -10,
    /// the input at or above 10), where the default computes it in f32.
    /// Less exact and slower, but a Gemma's logits are then those of
    /// llama.cpp's CPU build to the order of float sums, where the table's
    /// roundings otherwise move them by up to about 1e-3 a block (more
    /// through Gemma 3n's streams): for comparing the two.
    ///
    /// ```
    /// use realm_compute_cpu::CpuBackend;
    /// use realm_core::backend::{ActivationOps, BackendCore};
    /// let be = CpuBackend::new()?.with_ggml_gelu();
    /// let mut x = be.upload(&[1.0, 2.0])?;
    /// be.gelu_inplace(&mut x, 2)?;
    /// // 1.0's GELU, 0.84119..., as an f16.
    /// assert_eq!(x[0], half::f16::from_f32(0.841_192).to_f32());
    /// # Ok::<(), realm_core::backend::BackendError>(())
    /// ```
    pub fn with_ggml_gelu(mut self) -> Self {
        self.gelu_table = Some(ops::gelu_table());
        self
    }

    /// The instruction set in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

/// A weight matrix borrowed from its tensor's bytes (no copy), validated for
/// type, shape and alignment.
#[derive(Debug, Clone, Copy)]
pub struct CpuWeight<'a> {
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    data: &'a [u8],
}

impl WeightInfo for CpuWeight<'_> {
    fn dtype(&self) -> GgmlType {
        self.dtype
    }
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
}

/// Scratch memory of one caller: quantized activations and attention
/// scores. It grows to the largest call and is then reused.
#[derive(Debug, Default)]
pub struct CpuWorkspace {
    q8: Vec<act::BlockQ8x32>,
    q8k: Vec<act::BlockQ8K>,
    scores: Vec<f32>,
    /// A Q8_0 cache's visible keys and values, dequantized for one call.
    kv: Vec<f32>,
    /// Activations as half or bfloat16 values (their bits) for such
    /// weights' products.
    halves: Vec<u16>,
    rope: ops::RopeCache,
}

impl BackendCore for CpuBackend {
    type Workspace = CpuWorkspace;
    type Buffer = Vec<f32>;

    fn name(&self) -> &str {
        self.name
    }

    fn workspace(&self) -> CpuWorkspace {
        CpuWorkspace::default()
    }

    fn buffer(&self, len: usize) -> BackendResult<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn host_chunks(
        &self,
        (a, a_chunk): (&mut [f32], usize),
        (b, b_chunk): (&mut [f32], usize),
        f: &HostChunkFn<'_>,
    ) {
        // The matmuls' pool, whose helpers are awake between a step's
        // products (rayon's would compete with them for the cores).
        let (a_chunk, b_chunk) = (a_chunk.max(1), b_chunk.max(1));
        if !self
            .spin
            .run_chunks((&mut *a, a_chunk), (&mut *b, b_chunk), f)
        {
            let chunks = a.chunks_mut(a_chunk).zip(b.chunks_mut(b_chunk));
            for (c, (ac, bc)) in chunks.enumerate() {
                f(c, ac, bc);
            }
        }
    }

    fn upload(&self, values: &[f32]) -> BackendResult<Vec<f32>> {
        Ok(values.to_vec())
    }

    fn upload_into(&self, values: &[f32], buf: &mut Vec<f32>) -> BackendResult<()> {
        buf.clear();
        buf.extend_from_slice(values);
        Ok(())
    }

    fn download(&self, buf: &Vec<f32>, out: &mut [f32]) -> BackendResult<()> {
        out.copy_from_slice(prefix("download", "buffer", buf, out.len())?);
        Ok(())
    }

    fn host_slice(buf: &Vec<f32>) -> Option<&[f32]> {
        Some(buf)
    }

    fn copy_rows(
        &self,
        src: &Vec<f32>,
        rows: Range<usize>,
        width: usize,
        dst: &mut Vec<f32>,
    ) -> BackendResult<()> {
        const OP: &str = "copy_rows";
        let src = row_range(OP, "src length", src, &rows, width)?;
        prefix_mut(OP, "dst length", dst, src.len())?.copy_from_slice(src);
        Ok(())
    }

    fn split_cols(
        &self,
        src: &Vec<f32>,
        n_rows: usize,
        widths: &[usize],
        outs: &mut [&mut Vec<f32>],
    ) -> BackendResult<()> {
        const OP: &str = "split_cols";
        let total = split_width(OP, widths, outs.len())?;
        let src = row_range(OP, "src length", src, &(0..n_rows), total)?;
        let mut first = 0;
        for (&w, out) in widths.iter().zip(outs.iter_mut()) {
            let out = prefix_mut(
                OP,
                "out length",
                out,
                product(OP, "rows overflow", n_rows, w)?,
            )?;
            if w > 0 {
                for (o, row) in out.chunks_exact_mut(w).zip(src.chunks_exact(total)) {
                    o.copy_from_slice(&row[first..first + w]);
                }
            }
            first += w;
        }
        Ok(())
    }
}

fn shape_err(op: &'static str, what: &'static str, expected: usize, got: usize) -> Error {
    BackendError::Shape {
        op,
        what,
        expected,
        got,
    }
}

/// `a * b`, or an error naming `what` when it overflows.
fn product(op: &'static str, what: &'static str, a: usize, b: usize) -> BackendResult<usize> {
    a.checked_mul(b)
        .ok_or(BackendError::InvalidParameter { op, what })
}

/// The first `len` values of `buf`, or a shape error when it is shorter.
fn prefix<'b>(
    op: &'static str,
    what: &'static str,
    buf: &'b [f32],
    len: usize,
) -> BackendResult<&'b [f32]> {
    buf.get(..len)
        .ok_or_else(|| shape_err(op, what, len, buf.len()))
}

/// [`prefix`], mutable.
fn prefix_mut<'b>(
    op: &'static str,
    what: &'static str,
    buf: &'b mut [f32],
    len: usize,
) -> BackendResult<&'b mut [f32]> {
    let got = buf.len();
    buf.get_mut(..len).ok_or(shape_err(op, what, len, got))
}

/// Rows `rows` of `buf`, rows of `width` values.
fn row_range<'b>(
    op: &'static str,
    what: &'static str,
    buf: &'b [f32],
    rows: &Range<usize>,
    width: usize,
) -> BackendResult<&'b [f32]> {
    let (a, b) = (
        product(op, what, rows.start, width)?,
        product(op, what, rows.end, width)?,
    );
    buf.get(a..b)
        .ok_or_else(|| shape_err(op, what, b.max(a), buf.len()))
}

/// [`row_range`], mutable.
fn row_range_mut<'b>(
    op: &'static str,
    what: &'static str,
    buf: &'b mut [f32],
    rows: &Range<usize>,
    width: usize,
) -> BackendResult<&'b mut [f32]> {
    let (a, b) = (
        product(op, what, rows.start, width)?,
        product(op, what, rows.end, width)?,
    );
    let got = buf.len();
    buf.get_mut(a..b).ok_or(shape_err(op, what, b.max(a), got))
}

impl MatMulOps for CpuBackend {
    type Weight<'a> = CpuWeight<'a>;

    fn supports_matmul(&self, t: GgmlType) -> bool {
        matmul::SUPPORTED.contains(&t)
    }

    fn weight<'a>(&self, t: &TensorView<'a>) -> BackendResult<CpuWeight<'a>> {
        const OP: &str = "weight";
        let dtype = t.dtype();
        if !self.supports_matmul(dtype) {
            return Err(BackendError::UnsupportedType { op: OP, dtype });
        }
        let (rows, cols) = matrix_dims(OP, t)?;
        let align = if dtype == GgmlType::F32 { 4 } else { 2 };
        if !(t.data().as_ptr() as usize).is_multiple_of(align) {
            return Err(BackendError::Misaligned { op: OP, align });
        }
        Ok(CpuWeight {
            dtype,
            rows,
            cols,
            data: t.data(),
        })
    }

    fn matmul(
        &self,
        ws: &mut CpuWorkspace,
        w: &CpuWeight<'_>,
        x: &Vec<f32>,
        n_tokens: usize,
        out: &mut Vec<f32>,
    ) -> BackendResult<()> {
        const OP: &str = "matmul";
        let x = prefix(
            OP,
            "x length (n_tokens * cols)",
            x,
            product(OP, "n_tokens * cols overflows", w.cols, n_tokens)?,
        )?;
        let out = prefix_mut(
            OP,
            "out length (n_tokens * rows)",
            out,
            product(OP, "n_tokens * rows overflows", w.rows, n_tokens)?,
        )?;
        if n_tokens == 0 || w.rows == 0 {
            return Ok(());
        }
        matmul::matmul(self, ws, w, x, n_tokens, out)
    }

    fn add_rows_product(
        &self,
        dst: &mut Vec<f32>,
        first_row: usize,
        x: &Vec<f32>,
        n_rows: usize,
        w: &Vec<f32>,
        (k, m): (usize, usize),
        s: f32,
    ) -> BackendResult<()> {
        const OP: &str = "add_rows_product";
        let p = RowsProduct::new(first_row, n_rows, (k, m))?;
        let x = prefix(OP, "x length", x, p.x_len)?;
        let w = prefix(OP, "w length", w, p.w_len)?;
        let got = dst.len();
        let dst = dst
            .get_mut(p.dst.clone())
            .ok_or(shape_err(OP, "dst length", p.dst.end, got))?;
        matmul::add_rows_product(self, dst, x, w, (k, m), s);
        Ok(())
    }

    fn embed(
        &self,
        _ws: &mut Self::Workspace,
        table: &CpuWeight<'_>,
        ids: &[u32],
        out: &mut Vec<f32>,
    ) -> BackendResult<()> {
        const OP: &str = "embed";
        let out = prefix_mut(
            OP,
            "out length (ids * cols)",
            out,
            product(OP, "ids * cols overflows", table.cols, ids.len())?,
        )?;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(BackendError::OutOfRange {
                op: OP,
                what: "token id",
                index: bad as usize,
                limit: table.rows,
            });
        }
        matmul::embed(table, ids, out)
    }
}

/// Rows of `w.len()` values: the first `n_rows` of them, checked.
fn norm_rows(op: &'static str, w: &[f32], n_rows: usize) -> BackendResult<usize> {
    if w.is_empty() {
        return Err(BackendError::InvalidParameter {
            op,
            what: "row length is zero",
        });
    }
    product(op, "n_rows * row length overflows", w.len(), n_rows)
}

impl NormOps for CpuBackend {
    fn rms_norm(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        eps: f32,
        n_rows: usize,
        out: &mut Vec<f32>,
    ) -> BackendResult<()> {
        const OP: &str = "rms_norm";
        let len = norm_rows(OP, w, n_rows)?;
        let x = prefix(OP, "x length", x, len)?;
        let out = prefix_mut(OP, "out length", out, len)?;
        ops::rms_norm(x, w, eps, out);
        Ok(())
    }

    fn rms_norm_inplace(
        &self,
        x: &mut Vec<f32>,
        w: &Vec<f32>,
        eps: f32,
        n_rows: usize,
    ) -> BackendResult<()> {
        const OP: &str = "rms_norm";
        let len = norm_rows(OP, w, n_rows)?;
        ops::rms_norm_inplace(prefix_mut(OP, "x length", x, len)?, w, eps);
        Ok(())
    }

    fn layer_norm(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        b: Option<&Vec<f32>>,
        eps: f32,
        n_rows: usize,
        out: &mut Vec<f32>,
    ) -> BackendResult<()> {
        const OP: &str = "layer_norm";
        let len = norm_rows(OP, w, n_rows)?;
        let x = prefix(OP, "x length", x, len)?;
        let out = prefix_mut(OP, "out length", out, len)?;
        out.copy_from_slice(x);
        ops::layer_norm_inplace(out, w, norm_bias(OP, w, b)?, eps);
        Ok(())
    }

    fn layer_norm_inplace(
        &self,
        x: &mut Vec<f32>,
        w: &Vec<f32>,
        b: Option<&Vec<f32>>,
        eps: f32,
        n_rows: usize,
    ) -> BackendResult<()> {
        const OP: &str = "layer_norm";
        let len = norm_rows(OP, w, n_rows)?;
        let x = prefix_mut(OP, "x length", x, len)?;
        ops::layer_norm_inplace(x, w, norm_bias(OP, w, b)?, eps);
        Ok(())
    }
}

/// A norm's bias, checked to be as long as its weight `w`.
fn norm_bias<'b>(
    op: &'static str,
    w: &[f32],
    b: Option<&'b Vec<f32>>,
) -> BackendResult<Option<&'b [f32]>> {
    match b {
        Some(b) if b.len() != w.len() => Err(BackendError::InvalidParameter {
            op,
            what: "a norm's bias must be as long as its weight",
        }),
        b => Ok(b.map(Vec::as_slice)),
    }
}

impl RopeOps for CpuBackend {
    fn rope(
        &self,
        ws: &mut CpuWorkspace,
        x: &mut Vec<f32>,
        n_heads: usize,
        head_dim: usize,
        positions: &[u32],
        p: &RopeParams,
    ) -> BackendResult<()> {
        const OP: &str = "rope";
        if p.n_dims == 0
            || !p.n_dims.is_multiple_of(2)
            || p.n_dims > head_dim
            || p.n_dims > ops::ROPE_MAX_DIMS
        {
            return Err(BackendError::InvalidParameter {
                op: OP,
                what: "n_dims must be even, positive, at most head_dim and 1024",
            });
        }
        p.check_factors(OP)?;
        let per_token = product(OP, "n_heads * head_dim overflows", n_heads, head_dim)?;
        let len = product(
            OP,
            "tokens * n_heads * head_dim overflows",
            per_token,
            positions.len(),
        )?;
        let x = prefix_mut(OP, "x length", x, len)?;
        ops::rope(x, head_dim, positions, p, &mut ws.rope);
        Ok(())
    }
}

impl ActivationOps for CpuBackend {
    fn softmax_inplace(
        &self,
        x: &mut Vec<f32>,
        row_len: usize,
        n_rows: usize,
    ) -> BackendResult<()> {
        const OP: &str = "softmax";
        let len = product(OP, "n_rows * row_len overflows", row_len, n_rows)?;
        let x = prefix_mut(OP, "x length", x, len)?;
        ops::check_rows(OP, x.len(), row_len)?;
        ops::softmax_inplace(x, row_len);
        Ok(())
    }

    fn silu_inplace(&self, x: &mut Vec<f32>, len: usize) -> BackendResult<()> {
        let x = prefix_mut("silu", "x length", x, len)?;
        self.activate(ops::Activation::Silu, x, None);
        Ok(())
    }

    fn gelu_inplace(&self, x: &mut Vec<f32>, len: usize) -> BackendResult<()> {
        let x = prefix_mut("gelu", "x length", x, len)?;
        self.activate(ops::Activation::Gelu, x, None);
        Ok(())
    }

    fn softcap_inplace(&self, x: &mut Vec<f32>, cap: f32, len: usize) -> BackendResult<()> {
        const OP: &str = "softcap";
        realm_core::backend::check_softcap(OP, cap)?;
        let inv = 1.0 / cap;
        for v in prefix_mut(OP, "x length", x, len)? {
            *v = (*v * inv).tanh() * cap;
        }
        Ok(())
    }

    fn swiglu_inplace(&self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) -> BackendResult<()> {
        const OP: &str = "swiglu";
        let gate = prefix_mut(OP, "gate length", gate, len)?;
        let up = prefix(OP, "up length", up, len)?;
        self.activate(ops::Activation::Silu, gate, Some(up));
        Ok(())
    }

    fn swiglu_oai_inplace(
        &self,
        gate: &mut Vec<f32>,
        up: &Vec<f32>,
        (alpha, limit): (f32, f32),
        len: usize,
    ) -> BackendResult<()> {
        const OP: &str = "swiglu_oai";
        let gate = prefix_mut(OP, "gate length", gate, len)?;
        let up = prefix(OP, "up length", up, len)?;
        for (g, &u) in gate.iter_mut().zip(up) {
            let x = g.min(limit);
            let y = u.clamp(-limit, limit);
            *g = x / (1.0 + (alpha * -x).exp()) * (y + 1.0);
        }
        Ok(())
    }

    fn geglu_inplace(&self, gate: &mut Vec<f32>, up: &Vec<f32>, len: usize) -> BackendResult<()> {
        const OP: &str = "geglu";
        let gate = prefix_mut(OP, "gate length", gate, len)?;
        let up = prefix(OP, "up length", up, len)?;
        self.activate(ops::Activation::Gelu, gate, Some(up));
        Ok(())
    }

    fn add_inplace(&self, dst: &mut Vec<f32>, src: &Vec<f32>, len: usize) -> BackendResult<()> {
        const OP: &str = "add";
        let dst = prefix_mut(OP, "dst length", dst, len)?;
        let src = prefix(OP, "src length", src, len)?;
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
        Ok(())
    }

    fn add_row_inplace(
        &self,
        dst: &mut Vec<f32>,
        row: &Vec<f32>,
        n_rows: usize,
    ) -> BackendResult<()> {
        const OP: &str = "add_row";
        let len = norm_rows(OP, row, n_rows)?;
        let dst = prefix_mut(OP, "dst length", dst, len)?;
        for d in dst.chunks_exact_mut(row.len()) {
            d.iter_mut().zip(row).for_each(|(d, &s)| *d += s);
        }
        Ok(())
    }

    fn mul_inplace(&self, dst: &mut Vec<f32>, src: &Vec<f32>, len: usize) -> BackendResult<()> {
        const OP: &str = "mul";
        let dst = prefix_mut(OP, "dst length", dst, len)?;
        let src = prefix(OP, "src length", src, len)?;
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d *= s);
        Ok(())
    }

    fn scale_inplace(&self, dst: &mut Vec<f32>, s: f32, len: usize) -> BackendResult<()> {
        let dst = prefix_mut("scale", "dst length", dst, len)?;
        dst.iter_mut().for_each(|d| *d *= s);
        Ok(())
    }

    fn clamp_inplace(&self, x: &mut Vec<f32>, limit: f32, len: usize) -> BackendResult<()> {
        let x = prefix_mut("clamp", "x length", x, len)?;
        x.iter_mut().for_each(|v| *v = v.max(-limit).min(limit));
        Ok(())
    }

    fn xielu_inplace(&self, x: &mut Vec<f32>, p: Xielu, len: usize) -> BackendResult<()> {
        let x = prefix_mut("xielu", "x length", x, len)?;
        x.iter_mut().for_each(|v| *v = p.apply(*v));
        Ok(())
    }

    fn relu_squared_inplace(&self, x: &mut Vec<f32>, len: usize) -> BackendResult<()> {
        let x = prefix_mut("relu_squared", "x length", x, len)?;
        x.iter_mut().for_each(|v| {
            let r = v.max(0.0);
            *v = r * r;
        });
        Ok(())
    }

    fn sigmoid_mul_inplace(
        &self,
        dst: &mut Vec<f32>,
        gate: &Vec<f32>,
        len: usize,
    ) -> BackendResult<()> {
        const OP: &str = "sigmoid_mul";
        let dst = prefix_mut(OP, "dst length", dst, len)?;
        let gate = prefix(OP, "gate length", gate, len)?;
        dst.iter_mut()
            .zip(gate)
            .for_each(|(d, &g)| *d *= 1.0 / (1.0 + (-g).exp()));
        Ok(())
    }
}

/// The CPU runs every step op by op: there are no launches to save.
impl StepOps for CpuBackend {
    type Recording = std::convert::Infallible;
}

impl AttentionOps for CpuBackend {
    type KvCache = CpuKvCache;

    fn supports_sinks(&self) -> bool {
        true
    }

    fn supports_alibi(&self) -> bool {
        true
    }

    fn supports_chunks(&self) -> bool {
        true
    }

    fn kv_cache(&self, cfg: &KvCacheConfig) -> BackendResult<CpuKvCache> {
        attention::new_cache(cfg)
    }

    fn kv_write(
        &self,
        _ws: &mut Self::Workspace,
        cache: &mut CpuKvCache,
        at: KvSpan,
        k: &Vec<f32>,
        v: &Vec<f32>,
        rows: Range<usize>,
    ) -> BackendResult<()> {
        const OP: &str = "kv_write";
        check_kv_layer(OP, cache.config(), at.layer)?;
        let c = cache.config().shape(at.layer);
        let width = product(
            OP,
            "n_kv_heads * head_dim overflows",
            c.n_kv_heads,
            c.head_dim,
        )?;
        let k = row_range(OP, "k length", k, &rows, width)?;
        let v = row_range(OP, "v length", v, &rows, width)?;
        attention::kv_write(cache, at.layer, at.start_pos, k, v)
    }

    fn kv_read(
        &self,
        cache: &CpuKvCache,
        layer: usize,
        positions: Range<usize>,
        k: &mut [f32],
        v: &mut [f32],
    ) -> BackendResult<()> {
        attention::kv_read(cache, layer, positions, k, v)
    }

    fn attention(
        &self,
        ws: &mut CpuWorkspace,
        cache: &CpuKvCache,
        at: KvSpan,
        q: &Vec<f32>,
        rows: Range<usize>,
        p: &AttentionParams,
        out: &mut Vec<f32>,
    ) -> BackendResult<()> {
        const OP: &str = "attention";
        let width = product(OP, "n_heads * head_dim overflows", p.n_heads, p.head_dim)?;
        let q = row_range(OP, "q length", q, &rows, width)?;
        let out = row_range_mut(OP, "out length", out, &rows, width)?;
        attention::attention(self, ws, cache, at, q, p, out)
    }
}
