//! Matrix multiplication: activation quantization, the split of output rows
//! over threads, and dispatch to the scalar or SIMD kernels.
//!
//! Hot path: `matmul` allocates nothing once the workspace has grown to the
//! largest batch seen; threads come from the backend's own pool.

use std::marker::PhantomData;
use std::ops::Range;

use half::{bf16, f16, slice::HalfFloatSliceExt};
use rayon::prelude::*;
use realm_core::backend::{BackendError, BackendResult};
use realm_core::quant::blocks::{
    BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS, BlockIQ4NL,
    BlockIQ4XS, BlockMXFP4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K,
    BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, BlockTQ1_0, BlockTQ2_0,
};
use realm_core::GgmlType;

use crate::act::{quantize_rows, ActBlock, BlockQ8K, BlockQ8x32};
use crate::reference::{dot_row, WeightBlock};
use crate::{CpuBackend, CpuWeight, CpuWorkspace, Isa};

/// The output matrix `[n_tokens][m]`, shared by threads that each write a
/// disjoint set of columns (weight rows).
pub(crate) struct SharedOut<'a> {
    ptr: *mut f32,
    m: usize,
    n: usize,
    _out: PhantomData<&'a mut [f32]>,
}

// SAFETY: `SharedOut` only hands out `OutRows` for disjoint row ranges (see
// `SharedOut::rows`), so threads never write the same element, and the
// borrow of the output outlives every thread (rayon scopes join before
// returning).
unsafe impl Send for SharedOut<'_> {}
// SAFETY: as above.
unsafe impl Sync for SharedOut<'_> {}

impl<'a> SharedOut<'a> {
    /// `out` must hold `n * m` values (checked by the caller; an assertion
    /// here keeps `OutRows::set` in bounds regardless).
    fn new(out: &'a mut [f32], m: usize, n: usize) -> Self {
        assert!(out.len() >= m * n, "output buffer checked by caller");
        Self {
            ptr: out.as_mut_ptr(),
            m,
            n,
            _out: PhantomData,
        }
    }

    /// Write access to the columns `rows` of every output row.
    ///
    /// # Safety
    /// No other `OutRows` alive at the same time covers any row of `rows`.
    unsafe fn rows(&self, rows: Range<usize>) -> OutRows<'_> {
        assert!(rows.end <= self.m, "row range within the matrix");
        OutRows {
            ptr: self.ptr,
            m: self.m,
            n: self.n,
            rows,
            _out: PhantomData,
        }
    }
}

/// Write access to a range of weight rows (output columns) for all tokens.
pub(crate) struct OutRows<'a> {
    ptr: *mut f32,
    m: usize,
    n: usize,
    rows: Range<usize>,
    _out: PhantomData<&'a mut [f32]>,
}

impl OutRows<'_> {
    /// Stores the result of weight row `r` for token `t`.
    #[inline(always)]
    pub(crate) fn set(&mut self, t: usize, r: usize, v: f32) {
        assert!(
            t < self.n && self.rows.contains(&r),
            "kernel writes inside its rows"
        );
        // SAFETY: `t < n` and `r < rows.end <= m`, so the offset is inside the
        // `n * m` buffer; `r` is in this handle's exclusive row range, so no
        // other thread writes this element.
        unsafe { self.ptr.add(t * self.m + r).write(v) };
    }
}

/// Runs `f` over `0..m` split into row ranges, on the pool when the work is
/// large enough to pay for waking threads, else on the calling thread.
fn for_row_ranges(be: &CpuBackend, m: usize, work_bytes: usize, f: impl Fn(Range<usize>) + Sync) {
    // Below this much weight data a matvec finishes faster than threads wake
    // (32 KB with the spin pool's ~4 us calls: splitting SmolLM2's 69 KB k/v
    // projections measured tg128 +12% on 2 threads).
    const MIN_PARALLEL_BYTES: usize = 32 * 1024;
    let threads = be.threads;
    if threads <= 1 || work_bytes < MIN_PARALLEL_BYTES || m < 8 {
        f(0..m);
        return;
    }
    // A few chunks per thread so that dynamic scheduling evens out noise,
    // in multiples of 4 rows (the widest tile).
    let n_chunks = (threads * 4).min(m / 4).max(1);
    let chunk = m.div_ceil(n_chunks).next_multiple_of(4);
    let n_chunks = m.div_ceil(chunk);
    let run = |c: usize| f(c * chunk..((c + 1) * chunk).min(m));
    if !be.spin.run(n_chunks, &run) {
        // Another caller's job holds the pool: use rayon's.
        be.pool
            .install(|| (0..n_chunks).into_par_iter().for_each(run));
    }
}

/// The kernels for one weight block type.
pub(crate) trait Dispatch: WeightBlock {
    /// Computes rows `rows` for all tokens with the SIMD kernel; `false` if
    /// there is none for this ISA.
    fn rows_simd(
        isa: Isa,
        w: &[Self],
        nb: usize,
        rows: Range<usize>,
        x: &[Self::Act],
        n_tokens: usize,
        out: &mut OutRows<'_>,
    ) -> bool;

    /// The activation scratch of this type's activation block.
    fn scratch(ws: &mut CpuWorkspace) -> &mut Vec<Self::Act>;
}

macro_rules! dispatch {
    ($kernel:path, $act:ident, $field:ident: $($block:ty),*) => {$(
        impl Dispatch for $block {
            // Targets without a SIMD kernel ignore the arguments.
            #[allow(unused_variables)]
            fn rows_simd(
                isa: Isa,
                w: &[Self],
                nb: usize,
                rows: Range<usize>,
                x: &[$act],
                n_tokens: usize,
                out: &mut OutRows<'_>,
            ) -> bool {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 => $kernel(w, nb, rows, x, n_tokens, out),
                    #[cfg(target_arch = "aarch64")]
                    Isa::Neon => crate::neon::rows::<Self>(w, nb, rows, x, n_tokens, out),
                    _ => false,
                }
            }

            fn scratch(ws: &mut CpuWorkspace) -> &mut Vec<$act> {
                &mut ws.$field
            }
        }
    )*};
}

dispatch!(crate::avx2::packed_rows::<Self>, BlockQ8x32, q8: BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockIQ4NL, BlockMXFP4);
dispatch!(crate::avx2::kquant_rows::<Self>, BlockQ8K, q8k: BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockIQ4XS, BlockTQ1_0, BlockTQ2_0);
dispatch!(crate::avx2::iq_rows::<Self>, BlockQ8K, q8k: BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS);

/// Scalar kernel: the reference dot product for each (row, token).
fn rows_scalar<B: WeightBlock>(
    w: &[B],
    nb: usize,
    rows: Range<usize>,
    x: &[B::Act],
    n_tokens: usize,
    out: &mut OutRows<'_>,
) {
    for r in rows {
        let wr = &w[r * nb..(r + 1) * nb];
        for t in 0..n_tokens {
            out.set(t, r, dot_row(wr, &x[t * nb..(t + 1) * nb]));
        }
    }
}

/// Quantizes the activations into the workspace (in parallel for big
/// batches).
fn quantize_activations<A: ActBlock>(
    be: &CpuBackend,
    x: &[f32],
    k: usize,
    n: usize,
    q: &mut Vec<A>,
) {
    let nb = k / A::N;
    if n < 8 || be.threads <= 1 {
        quantize_rows(be.isa, x, q);
        return;
    }
    if q.len() < n * nb {
        q.resize(n * nb, A::zeroed());
    }
    be.pool.install(|| {
        q[..n * nb]
            .par_chunks_mut(nb)
            .zip(x.par_chunks(k))
            .for_each(|(qr, xr)| {
                for (qb, xb) in qr.iter_mut().zip(xr.chunks_exact(A::N)) {
                    A::quantize_isa(be.isa, xb, qb);
                }
            })
    });
}

fn matmul_quant<B: Dispatch>(
    be: &CpuBackend,
    ws: &mut CpuWorkspace,
    w: &CpuWeight<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> BackendResult<()> {
    let wb: &[B] = bytemuck::try_cast_slice(w.data).map_err(|_| BackendError::Misaligned {
        op: "matmul",
        align: std::mem::align_of::<B>(),
    })?;
    let (m, k) = (w.rows, w.cols);
    let nb = k / <B::Act as ActBlock>::N;
    let q = B::scratch(ws);
    quantize_activations(be, x, k, n, q);
    let q = &q[..n * nb];
    let shared = SharedOut::new(out, m, n);
    let isa = be.isa;
    for_row_ranges(be, m, w.data.len(), |rows| {
        // SAFETY: `for_row_ranges` passes disjoint ranges to concurrent calls.
        let mut o = unsafe { shared.rows(rows.clone()) };
        if !B::rows_simd(isa, wb, nb, rows.clone(), q, n, &mut o) {
            rows_scalar(wb, nb, rows, q, n, &mut o);
        }
    });
    Ok(())
}

/// Reference dot product of a float weight row with float activations.
fn dot_float_scalar<T: FloatWeight, X: FloatWeight>(w: &[T], x: &[X]) -> f32 {
    w.iter()
        .zip(x)
        .fold(0.0, |s, (&a, &b)| s + a.to_f32() * b.to_f32())
}

/// A float weight type (f32, f16, bf16), with its SIMD loads where the
/// target has them.
#[cfg(target_arch = "x86_64")]
trait FloatWeight: crate::avx2::FloatSimd + Sync {}

#[cfg(target_arch = "x86_64")]
impl<T: crate::avx2::FloatSimd + Sync> FloatWeight for T {}

/// A float weight type (f32, f16, bf16).
#[cfg(not(target_arch = "x86_64"))]
trait FloatWeight: bytemuck::Pod + Sync {
    /// The value as f32.
    fn to_f32(self) -> f32;
}

#[cfg(not(target_arch = "x86_64"))]
impl FloatWeight for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl FloatWeight for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl FloatWeight for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// Float weights (`T`: f32, f16, bf16) times `n` tokens of `x` (`X`: f32,
/// or the weights' type for f16 and bf16): the SIMD tiles where the CPU
/// has them, else a dot product a (row, token) pair.
fn matmul_float<T: FloatWeight, X: FloatWeight>(
    be: &CpuBackend,
    w: &CpuWeight<'_>,
    x: &[X],
    n: usize,
    out: &mut [f32],
) -> BackendResult<()> {
    let wt: &[T] = bytemuck::try_cast_slice(w.data).map_err(|_| BackendError::Misaligned {
        op: "matmul",
        align: std::mem::align_of::<T>(),
    })?;
    let (m, k) = (w.rows, w.cols);
    let shared = SharedOut::new(out, m, n);
    for_row_ranges(be, m, w.data.len(), |rows| {
        // SAFETY: `for_row_ranges` passes disjoint ranges to concurrent calls.
        let mut o = unsafe { shared.rows(rows.clone()) };
        #[cfg(target_arch = "x86_64")]
        if be.isa == Isa::Avx2 && crate::avx2::float_rows(wt, k, rows.clone(), x, n, &mut o) {
            return;
        }
        for r in rows {
            let wr = &wt[r * k..(r + 1) * k];
            for t in 0..n {
                o.set(t, r, dot_float_scalar(wr, &x[t * k..(t + 1) * k]));
            }
        }
    });
    Ok(())
}

/// `dst[t] += s * x[t] W` for each row `t` of `dst` (rows of `m`), `x`
/// rows of `k`, `W` `k` rows of `m` (lengths checked by the caller): each
/// row of `W` scaled and added in turn, which vectorises along the rows;
/// a batch's rows are split over the pool when there is work enough.
pub(crate) fn add_rows_product(
    be: &CpuBackend,
    dst: &mut [f32],
    x: &[f32],
    w: &[f32],
    (k, m): (usize, usize),
    s: f32,
) {
    if m == 0 {
        return;
    }
    let isa = be.isa;
    let row = |(d, x): (&mut [f32], &[f32])| {
        // The row's coefficients, `s` folded in (ranks are small).
        const STEP: usize = 64;
        let mut coef = [0f32; STEP];
        for (x, w) in x.chunks(STEP).zip(w.chunks(STEP * m)) {
            let c = &mut coef[..x.len()];
            c.iter_mut().zip(x).for_each(|(c, &x)| *c = s * x);
            combine(isa, d, c, w);
        }
    };
    // Rows above this many multiply-adds go to the pool.
    const MIN_PARALLEL: usize = 1 << 18;
    let k = k.max(1);
    if be.threads > 1 && dst.len() * k >= MIN_PARALLEL && dst.len() > m {
        be.pool.install(|| {
            dst.par_chunks_exact_mut(m)
                .zip(x.par_chunks_exact(k))
                .for_each(row)
        });
    } else {
        dst.chunks_exact_mut(m).zip(x.chunks_exact(k)).for_each(row);
    }
}

/// `d += sum_t c[t] * w[t]`, `w` `c.len()` rows of `d.len()` values.
fn combine(isa: Isa, d: &mut [f32], c: &[f32], w: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && crate::avx2::add_combination(d, c, w) {
        return;
    }
    let _ = isa;
    for (&c, wr) in c.iter().zip(w.chunks_exact(d.len())) {
        d.iter_mut().zip(wr).for_each(|(d, &w)| *d += c * w);
    }
}

/// `out = x * W^T` for any supported weight type (shapes checked by the
/// caller).
pub(crate) fn matmul(
    be: &CpuBackend,
    ws: &mut CpuWorkspace,
    w: &CpuWeight<'_>,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> BackendResult<()> {
    match w.dtype {
        GgmlType::F32 => matmul_float::<f32, f32>(be, w, x, n, out),
        // Activations rounded to the weights' type first, as ggml's f16
        // and bf16 products take them (and half as many bytes to read).
        GgmlType::F16 => {
            let x = halves::<f16>(&mut ws.halves, x);
            matmul_float::<f16, f16>(be, w, x, n, out)
        }
        GgmlType::BF16 => {
            let x = halves::<bf16>(&mut ws.halves, x);
            matmul_float::<bf16, bf16>(be, w, x, n, out)
        }
        GgmlType::Q4_0 => matmul_quant::<BlockQ4_0>(be, ws, w, x, n, out),
        GgmlType::Q4_1 => matmul_quant::<BlockQ4_1>(be, ws, w, x, n, out),
        GgmlType::Q5_0 => matmul_quant::<BlockQ5_0>(be, ws, w, x, n, out),
        GgmlType::Q5_1 => matmul_quant::<BlockQ5_1>(be, ws, w, x, n, out),
        GgmlType::Q8_0 => matmul_quant::<BlockQ8_0>(be, ws, w, x, n, out),
        GgmlType::IQ4_NL => matmul_quant::<BlockIQ4NL>(be, ws, w, x, n, out),
        GgmlType::Q2_K => matmul_quant::<BlockQ2K>(be, ws, w, x, n, out),
        GgmlType::Q3_K => matmul_quant::<BlockQ3K>(be, ws, w, x, n, out),
        GgmlType::Q4_K => matmul_quant::<BlockQ4K>(be, ws, w, x, n, out),
        GgmlType::Q5_K => matmul_quant::<BlockQ5K>(be, ws, w, x, n, out),
        GgmlType::Q6_K => matmul_quant::<BlockQ6K>(be, ws, w, x, n, out),
        GgmlType::IQ4_XS => matmul_quant::<BlockIQ4XS>(be, ws, w, x, n, out),
        GgmlType::MXFP4 => matmul_quant::<BlockMXFP4>(be, ws, w, x, n, out),
        GgmlType::TQ1_0 => matmul_quant::<BlockTQ1_0>(be, ws, w, x, n, out),
        GgmlType::TQ2_0 => matmul_quant::<BlockTQ2_0>(be, ws, w, x, n, out),
        GgmlType::IQ2_XXS => matmul_quant::<BlockIQ2XXS>(be, ws, w, x, n, out),
        GgmlType::IQ2_XS => matmul_quant::<BlockIQ2XS>(be, ws, w, x, n, out),
        GgmlType::IQ2_S => matmul_quant::<BlockIQ2S>(be, ws, w, x, n, out),
        GgmlType::IQ3_XXS => matmul_quant::<BlockIQ3XXS>(be, ws, w, x, n, out),
        GgmlType::IQ3_S => matmul_quant::<BlockIQ3S>(be, ws, w, x, n, out),
        GgmlType::IQ1_S => matmul_quant::<BlockIQ1S>(be, ws, w, x, n, out),
        GgmlType::IQ1_M => matmul_quant::<BlockIQ1M>(be, ws, w, x, n, out),
        dtype => Err(BackendError::UnsupportedType {
            op: "matmul",
            dtype,
        }),
    }
}

/// `x` rounded to a 16-bit float type `H` (f16, bf16), in `buf` (grown as
/// needed), by `half`'s slice conversion (F16C's where the CPU has it).
fn halves<'b, H>(buf: &'b mut Vec<u16>, x: &[f32]) -> &'b [H]
where
    H: bytemuck::Pod,
    [H]: HalfFloatSliceExt,
{
    buf.clear();
    buf.resize(x.len(), 0);
    let out: &mut [H] = bytemuck::cast_slice_mut(buf);
    out.convert_from_f32_slice(x);
    out
}

/// The weight types `matmul` handles.
pub(crate) const SUPPORTED: [GgmlType; 25] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4_NL,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_XS,
    GgmlType::MXFP4,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_S,
    GgmlType::IQ3_XXS,
    GgmlType::IQ3_S,
    GgmlType::IQ1_S,
    GgmlType::IQ1_M,
];

fn embed_quant<B: WeightBlock>(
    w: &CpuWeight<'_>,
    ids: &[u32],
    out: &mut [f32],
) -> BackendResult<()> {
    let wb: &[B] = bytemuck::try_cast_slice(w.data).map_err(|_| BackendError::Misaligned {
        op: "embed",
        align: std::mem::align_of::<B>(),
    })?;
    let n = <B::Act as ActBlock>::N;
    let nb = w.cols / n;
    for (&id, o) in ids.iter().zip(out.chunks_exact_mut(w.cols)) {
        let r = id as usize;
        for (b, ob) in wb[r * nb..(r + 1) * nb].iter().zip(o.chunks_exact_mut(n)) {
            b.dequantize(ob);
        }
    }
    Ok(())
}

fn embed_float<T: bytemuck::Pod>(
    w: &CpuWeight<'_>,
    ids: &[u32],
    out: &mut [f32],
    to_f32: impl Fn(T) -> f32,
) -> BackendResult<()> {
    let wt: &[T] = bytemuck::try_cast_slice(w.data).map_err(|_| BackendError::Misaligned {
        op: "embed",
        align: std::mem::align_of::<T>(),
    })?;
    let k = w.cols;
    for (&id, o) in ids.iter().zip(out.chunks_exact_mut(k)) {
        let r = id as usize;
        for (v, &s) in o.iter_mut().zip(&wt[r * k..(r + 1) * k]) {
            *v = to_f32(s);
        }
    }
    Ok(())
}

/// Dequantized rows `ids` of `w` (ids and lengths checked by the caller).
pub(crate) fn embed(w: &CpuWeight<'_>, ids: &[u32], out: &mut [f32]) -> BackendResult<()> {
    match w.dtype {
        GgmlType::F32 => embed_float::<f32>(w, ids, out, |v| v),
        GgmlType::F16 => embed_float::<f16>(w, ids, out, f16::to_f32),
        GgmlType::BF16 => embed_float::<bf16>(w, ids, out, bf16::to_f32),
        GgmlType::Q4_0 => embed_quant::<BlockQ4_0>(w, ids, out),
        GgmlType::Q4_1 => embed_quant::<BlockQ4_1>(w, ids, out),
        GgmlType::Q5_0 => embed_quant::<BlockQ5_0>(w, ids, out),
        GgmlType::Q5_1 => embed_quant::<BlockQ5_1>(w, ids, out),
        GgmlType::Q8_0 => embed_quant::<BlockQ8_0>(w, ids, out),
        GgmlType::IQ4_NL => embed_quant::<BlockIQ4NL>(w, ids, out),
        GgmlType::Q2_K => embed_quant::<BlockQ2K>(w, ids, out),
        GgmlType::Q3_K => embed_quant::<BlockQ3K>(w, ids, out),
        GgmlType::Q4_K => embed_quant::<BlockQ4K>(w, ids, out),
        GgmlType::Q5_K => embed_quant::<BlockQ5K>(w, ids, out),
        GgmlType::Q6_K => embed_quant::<BlockQ6K>(w, ids, out),
        GgmlType::IQ4_XS => embed_quant::<BlockIQ4XS>(w, ids, out),
        GgmlType::MXFP4 => embed_quant::<BlockMXFP4>(w, ids, out),
        GgmlType::TQ1_0 => embed_quant::<BlockTQ1_0>(w, ids, out),
        GgmlType::TQ2_0 => embed_quant::<BlockTQ2_0>(w, ids, out),
        GgmlType::IQ2_XXS => embed_quant::<BlockIQ2XXS>(w, ids, out),
        GgmlType::IQ2_XS => embed_quant::<BlockIQ2XS>(w, ids, out),
        GgmlType::IQ2_S => embed_quant::<BlockIQ2S>(w, ids, out),
        GgmlType::IQ3_XXS => embed_quant::<BlockIQ3XXS>(w, ids, out),
        GgmlType::IQ3_S => embed_quant::<BlockIQ3S>(w, ids, out),
        GgmlType::IQ1_S => embed_quant::<BlockIQ1S>(w, ids, out),
        GgmlType::IQ1_M => embed_quant::<BlockIQ1M>(w, ids, out),
        dtype => Err(BackendError::UnsupportedType { op: "embed", dtype }),
    }
}
