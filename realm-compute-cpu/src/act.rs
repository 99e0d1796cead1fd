//! Activations quantized on the fly to 8 bits per value, the right-hand side
//! of every quantized dot product.
//!
//! Two block shapes: [`BlockQ8x32`] (32 values) pairs with the 32-element
//! weight types, [`BlockQ8K`] (256 values, with per-16 sums) with the
//! k-quants and IQ4_XS. Both use a symmetric scale `d = max|x| / 127` and
//! round to nearest, ties to even, as ggml's x86 quantizers do; the scales
//! are rounded as ggml stores them (half for the 32-value blocks, f32 for
//! the 256-value ones), so that products match llama.cpp's.

use bytemuck::{Pod, Zeroable};
pub use realm_core::quant::blocks::BlockQ8K;

use crate::Isa;

/// 32 activations as `d * qs[i]`, with their sum for the weight types
/// that carry a min (Q4_1, Q5_1) or an offset (Q4_0, Q5_0, folded out of
/// the integer products).
///
/// ggml's `block_q8_1`, with its half scale and sum widened to `f32` (held
/// as the halves round them: the values of ggml's block), so that the dot
/// products read no half; and the sum of the quants times the rounded
/// scale, which ggml's `block_q8_0` products (Q4_0, Q5_0) imply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8x32 {
    /// Scale (a half's value).
    pub d: f32,
    /// `d * sum(qs)`, with `d` before its rounding (a half's value): what
    /// a min multiplies.
    pub s: f32,
    /// Quants in `-127..=127`.
    pub qs: [i8; 32],
    /// `d * sum(qs)` in f32, with `d` rounded: what an offset multiplies.
    pub sd: f32,
}

/// An activation block type: how many values it holds and how it is made.
pub trait ActBlock: Pod + Send + Sync {
    /// Values per block.
    const N: usize;
    /// Quantizes `x` (exactly [`ActBlock::N`] values) into `out`.
    fn quantize(x: &[f32], out: &mut Self);

    /// [`ActBlock::quantize`] with AVX2, the same bits; `false` (nothing
    /// written) where the CPU or the target has no such kernel.
    fn quantize_avx2(x: &[f32], out: &mut Self) -> bool;

    /// [`ActBlock::quantize`] with the kernels of `isa`: the same bits,
    /// faster.
    fn quantize_isa(isa: Isa, x: &[f32], out: &mut Self) {
        if isa == Isa::Avx2 && Self::quantize_avx2(x, out) {
            return;
        }
        Self::quantize(x, out);
    }
}

/// Rounds to the nearest integer, ties to even, for `|v| < 2^22`, using the
/// f32 mantissa (vectorises without SSE4.1).
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let bits = (v + MAGIC).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// Quantizes `x` into `qs` with scale `max|x| / 127`; returns the scale.
#[inline(always)]
fn quantize_symmetric(x: &[f32], qs: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(x) {
        // |v * id| <= 127 (up to rounding), far inside nearest_int's range;
        // the clamp only guards non-finite input.
        *q = nearest_int(v * id).clamp(-127, 127) as i8;
    }
    d
}

impl ActBlock for BlockQ8x32 {
    const N: usize = 32;

    fn quantize_avx2(x: &[f32], out: &mut Self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return crate::avx2::quantize_q8x32(x, out);
        #[cfg(not(target_arch = "x86_64"))]
        return {
            let _ = (x, out);
            false
        };
    }

    fn quantize(x: &[f32], out: &mut Self) {
        let d = quantize_symmetric(x, &mut out.qs);
        let sum: i32 = out.qs.iter().map(|&q| i32::from(q)).sum();
        (out.d, out.s, out.sd) = q8x32_scales(d, sum);
    }
}

impl ActBlock for BlockQ8K {
    const N: usize = 256;

    fn quantize_avx2(x: &[f32], out: &mut Self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return crate::avx2::quantize_q8k(x, out);
        #[cfg(not(target_arch = "x86_64"))]
        return {
            let _ = (x, out);
            false
        };
    }

    fn quantize(x: &[f32], out: &mut Self) {
        out.d = quantize_symmetric(x, &mut out.qs);
        for (s, q) in out.bsums.iter_mut().zip(out.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| i16::from(v)).sum();
        }
    }
}

/// A [`BlockQ8x32`]'s `d`, `s` and `sd` from the unrounded scale `d` and
/// the sum of its quants: the first two rounded to a half as ggml stores
/// them.
#[inline(always)]
pub(crate) fn q8x32_scales(d: f32, sum: i32) -> (f32, f32, f32) {
    let half = |v: f32| half::f16::from_f32(v).to_f32();
    let dh = half(d);
    (dh, half(d * sum as f32), dh * sum as f32)
}

/// Quantizes `n_rows` rows of `x` (each `x.len() / n_rows` values, a
/// multiple of `A::N`) into `out` (resized as needed, so it can be reused
/// without allocating once large enough).
pub(crate) fn quantize_rows<A: ActBlock>(isa: Isa, x: &[f32], out: &mut Vec<A>) {
    let n_blocks = x.len() / A::N;
    if out.len() < n_blocks {
        out.resize(n_blocks, A::zeroed());
    }
    for (xb, ob) in x.chunks_exact(A::N).zip(out.iter_mut()) {
        A::quantize_isa(isa, xb, ob);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        assert_eq!(nearest_int(-126.6), -127);
        assert_eq!(nearest_int(0.49), 0);
    }

    /// The SIMD quantization gives the scalar one's bits, ties and
    /// saturation included.
    #[test]
    fn simd_quantization_matches_scalar_bits() {
        let mut x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.73).sin() * 5.0).collect();
        // Exact ties once scaled (max 127 gives id = 1), and a zero block.
        let ties: Vec<f32> = (0..32).map(|i| i as f32 - 15.5).chain([127.0]).collect();
        x[..33].copy_from_slice(&ties);
        let isa = Isa::detect();
        for block in [&x[..], &[0.0; 256][..]] {
            let (mut a, mut b) = (BlockQ8K::zeroed(), BlockQ8K::zeroed());
            BlockQ8K::quantize(block, &mut a);
            BlockQ8K::quantize_isa(isa, block, &mut b);
            assert_eq!(bytemuck::bytes_of(&a), bytemuck::bytes_of(&b));
            for c in block.chunks_exact(32) {
                let (mut a, mut b) = (BlockQ8x32::zeroed(), BlockQ8x32::zeroed());
                BlockQ8x32::quantize(c, &mut a);
                BlockQ8x32::quantize_isa(isa, c, &mut b);
                assert_eq!(bytemuck::bytes_of(&a), bytemuck::bytes_of(&b));
            }
        }
    }

    #[test]
    fn q8_blocks_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let mut k = BlockQ8K::zeroed();
        BlockQ8K::quantize(&x, &mut k);
        for (q, v) in k.qs.iter().zip(&x) {
            assert!((f32::from(*q) * k.d - v).abs() <= k.d * 0.5 + 1e-6);
        }
        let sum16: i16 = k.qs[16..32].iter().map(|&q| i16::from(q)).sum();
        assert_eq!(k.bsums[1], sum16);
        let mut b = BlockQ8x32::zeroed();
        BlockQ8x32::quantize(&x[..32], &mut b);
        let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
        let amax = x[..32].iter().fold(0f32, |m, v| m.max(v.abs()));
        let half = |v: f32| half::f16::from_f32(v).to_f32();
        assert_eq!(b.d, half(amax / 127.0));
        assert_eq!(b.s, half(amax / 127.0 * sum as f32));
        assert_eq!(b.sd, b.d * sum as f32);
        for (q, v) in b.qs.iter().zip(&x) {
            assert!((f32::from(*q) * amax / 127.0 - v).abs() <= amax / 127.0 * 0.5 + 1e-6);
        }
    }
}
