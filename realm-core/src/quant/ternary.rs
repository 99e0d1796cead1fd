//! TQ1_0 and TQ2_0: BitNet b1.58's ternary weights, each `d * t` with `t`
//! one of -1, 0 and 1 and `d` one f16 scale a block of 256.
//!
//! TQ2_0 stores each `t + 1` in two bits, four to a byte (the byte's low
//! bits the first of four runs of 32). TQ1_0 packs five trits into a byte
//! as a fixed-point fraction of 3^5: the byte is `ceil(n * 256 / 243)`
//! for the base-3 number `n` its trits make (the first the most
//! significant), so that multiplying by 3^k (modulo 256) brings trit `k`
//! to the top, where `(b * 3) >> 8` reads it. Its first 48 bytes hold 240
//! values (five runs of 32 over 32 bytes, then of 16 over 16); the last
//! four, four trits each (shifted up one place), the 16 left.
//!
//! Quantization follows ggml's `quantize_row_tq*_ref` (which
//! `quantize_tq*` calls, with or without an importance matrix): `d` is
//! the block's largest magnitude and each value rounds (half away from
//! zero) to its nearest multiple of it.

use half::f16;

use super::blocks::{BlockTQ1_0, BlockTQ2_0, QK_K};

/// 3^0 ..= 3^5.
const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

/// The trit at the top of `b * 3^k` (mod 256), as -1, 0 or 1.
#[inline]
fn trit(b: u8, k: usize) -> i8 {
    let q = b.wrapping_mul(POW3[k]);
    ((u16::from(q) * 3) >> 8) as i8 - 1
}

/// The trits of `vals` (each -1, 0 or 1, the first the most significant)
/// as a byte: the ceiling of their base-3 number times 256 / 243.
#[inline]
fn pack_trits(vals: impl Iterator<Item = i32>) -> u8 {
    let n = vals.fold(0u16, |n, t| n * 3 + (t + 1) as u16);
    (n * 256).div_ceil(243) as u8
}

/// The block's scale and its reciprocal (0 for an all-zero block).
fn scale(x: &[f32; QK_K]) -> (f32, f32) {
    let d = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    (d, if d != 0.0 { 1.0 / d } else { 0.0 })
}

/// `x` times `id`, rounded half away from zero, kept within -1 ..= 1.
#[inline]
fn ternary(x: f32, id: f32) -> i32 {
    ((x * id).round() as i32).clamp(-1, 1)
}

/// The 256 trits (-1, 0 or 1) of a TQ1_0 block, in value order.
///
/// ```
/// use realm_core::quant::{blocks::BlockTQ1_0, unpack_tq1_0};
/// // A byte of 255 holds five 1s (the highest number), one of 0 five -1s.
/// let b = BlockTQ1_0 { qs: [255; 48], qh: [0; 4], d: half::f16::ONE };
/// let t = unpack_tq1_0(&b);
/// assert!(t[..240].iter().all(|&t| t == 1) && t[240..].iter().all(|&t| t == -1));
/// ```
pub fn unpack_tq1_0(block: &BlockTQ1_0) -> [i8; QK_K] {
    let mut out = [0i8; QK_K];
    let mut o = out.iter_mut();
    for (bytes, run) in [(&block.qs[..32], 32), (&block.qs[32..], 16)] {
        for k in 0..5 {
            for (&b, t) in bytes.iter().zip(&mut o).take(run) {
                *t = trit(b, k);
            }
        }
    }
    for k in 0..4 {
        for (&b, t) in block.qh.iter().zip(&mut o) {
            *t = trit(b, k);
        }
    }
    out
}

/// The 256 trits (-1, 0 or 1) of a TQ2_0 block, in value order.
pub fn unpack_tq2_0(block: &BlockTQ2_0) -> [i8; QK_K] {
    std::array::from_fn(|e| {
        let (half, shift, m) = (e / 128, (e % 128) / 32, e % 32);
        ((block.qs[32 * half + m] >> (2 * shift)) & 3) as i8 - 1
    })
}

/// Dequantizes one TQ1_0 block.
pub fn dequantize_block_tq1_0(block: &BlockTQ1_0, out: &mut [f32; QK_K]) {
    let d = block.d.to_f32();
    for (y, t) in out.iter_mut().zip(unpack_tq1_0(block)) {
        *y = f32::from(t) * d;
    }
}

/// Dequantizes one TQ2_0 block.
pub fn dequantize_block_tq2_0(block: &BlockTQ2_0, out: &mut [f32; QK_K]) {
    let d = block.d.to_f32();
    for (y, t) in out.iter_mut().zip(unpack_tq2_0(block)) {
        *y = f32::from(t) * d;
    }
}

/// Quantizes 256 values to TQ1_0 as ggml's `quantize_row_tq1_0_ref`.
pub fn quantize_block_tq1_0(x: &[f32; QK_K]) -> BlockTQ1_0 {
    let (d, id) = scale(x);
    let mut qs = [0u8; 48];
    // Five runs of 32 values over the first 32 bytes, of 16 over the next.
    let (first, rest) = x.split_at(160);
    for (m, q) in qs[..32].iter_mut().enumerate() {
        *q = pack_trits((0..5).map(|n| ternary(first[m + 32 * n], id)));
    }
    for (m, q) in qs[32..].iter_mut().enumerate() {
        *q = pack_trits((0..5).map(|n| ternary(rest[m + 16 * n], id)));
    }
    // Four runs of four over the last four bytes, each shifted up a trit.
    let tail = &rest[80..];
    let qh = std::array::from_fn(|j| {
        pack_trits((0..4).map(|m| ternary(tail[j + 4 * m], id)).chain([-1]))
    });
    BlockTQ1_0 {
        qs,
        qh,
        d: f16::from_f32(d),
    }
}

/// Quantizes 256 values to TQ2_0 as ggml's `quantize_row_tq2_0_ref`.
pub fn quantize_block_tq2_0(x: &[f32; QK_K]) -> BlockTQ2_0 {
    let (d, id) = scale(x);
    let mut qs = [0u8; 64];
    for (half, bytes) in qs.chunks_exact_mut(32).enumerate() {
        let vals = &x[128 * half..];
        for (m, q) in bytes.iter_mut().enumerate() {
            *q = (0..4).fold(0u8, |q, n| {
                q | (((ternary(vals[m + 32 * n], id) + 1) as u8 & 3) << (2 * n))
            });
        }
    }
    BlockTQ2_0 {
        qs,
        d: f16::from_f32(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ternary_block_round_trips() {
        // Values d * t for trits cycling through all 3^5 patterns.
        let x: [f32; QK_K] = std::array::from_fn(|i| ((i * 7 + i / 3) % 3) as f32 - 1.0);
        let mut y = [0.0; QK_K];
        dequantize_block_tq1_0(&quantize_block_tq1_0(&x), &mut y);
        assert_eq!(x, y);
        dequantize_block_tq2_0(&quantize_block_tq2_0(&x), &mut y);
        assert_eq!(x, y);
        // Every packed byte reads back its five trits.
        for n in 0..243u16 {
            let trits: Vec<i32> = (0..5)
                .rev()
                .map(|k| (n / 3u16.pow(k)) as i32 % 3 - 1)
                .collect();
            let b = pack_trits(trits.iter().copied());
            let back: Vec<i32> = (0..5).map(|k| i32::from(trit(b, k))).collect();
            assert_eq!(back, trits, "{n}");
        }
    }

    #[test]
    fn zero_blocks_stay_zero() {
        let z = [0.0; QK_K];
        let mut y = [1.0; QK_K];
        dequantize_block_tq1_0(&quantize_block_tq1_0(&z), &mut y);
        assert_eq!(y, z);
    }
}
