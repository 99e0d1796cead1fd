//! Dequantization of the 256-element k-quant super-blocks: Q2_K, Q3_K, Q4_K,
//! Q5_K, Q6_K and Q8_K.
//!
//! Each sub-block's scale is formed first (`d * sc`, one f32 product) and then
//! applied to the quant, with the minimum subtracted last, so the results are
//! the same f32 values ggml and the `gguf` Python package compute.

use super::blocks::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, QK_K};

/// Scale and minimum of sub-block `j` (0..8) from the 12 packed bytes of a
/// Q4_K/Q5_K block: six bits each, the top two bits of sub-blocks 4..8 kept
/// in the top bits of bytes 0..8.
pub fn scale_min_k4(j: usize, scales: &[u8; 12]) -> (u8, u8) {
    let j = j % 8;
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Dequantizes one Q2_K block: `d * sc * q - dmin * m` per 16-element sub-block.
pub fn dequantize_block_q2_k(block: &BlockQ2K, out: &mut [f32; QK_K]) {
    let d = block.d.to_f32();
    let dmin = block.dmin.to_f32();
    // Element `128 h + 32 j + l` is bits `2 j` of byte `32 h + l`. The levels
    // go in first, then each 16-element sub-block is scaled in place.
    for (out128, qs) in out.chunks_exact_mut(128).zip(block.qs.chunks_exact(32)) {
        for (j, out32) in out128.chunks_exact_mut(32).enumerate() {
            let shift = 2 * j;
            for (o, &q) in out32.iter_mut().zip(qs) {
                *o = f32::from((q >> shift) & 3);
            }
        }
    }
    for (chunk, &sc) in out.chunks_exact_mut(16).zip(&block.scales) {
        let dl = d * f32::from(sc & 0x0f);
        let ml = dmin * f32::from(sc >> 4);
        for o in chunk {
            *o = dl * *o - ml;
        }
    }
}

/// The 16 signed 6-bit scales of a Q3_K block.
fn q3_k_scales(packed: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (k, s) in out.iter_mut().enumerate() {
        let low = (packed[k % 8] >> (4 * (k / 8))) & 0x0f;
        let high = (packed[8 + k % 4] >> (2 * (k / 4))) & 3;
        *s = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// Dequantizes one Q3_K block: `d * sc * (q - 4 * !h)` per 16-element sub-block,
/// where `h` is the element's bit in `hmask`.
pub fn dequantize_block_q3_k(block: &BlockQ3K, out: &mut [f32; QK_K]) {
    let d = block.d.to_f32();
    // Element `128 h + 32 j + l` takes bits `2 j` of byte `32 h + l` of `qs`
    // and bit `4 h + j` of byte `l` of `hmask`. Levels first, then scales.
    for (h, (out128, qs)) in out
        .chunks_exact_mut(128)
        .zip(block.qs.chunks_exact(32))
        .enumerate()
    {
        for (j, out32) in out128.chunks_exact_mut(32).enumerate() {
            let shift = 2 * j;
            let hbit = 4 * h + j;
            for ((o, &q), &m) in out32.iter_mut().zip(qs).zip(&block.hmask) {
                let low = i32::from((q >> shift) & 3);
                let high = i32::from((m >> hbit) & 1);
                *o = (low - 4 + 4 * high) as f32;
            }
        }
    }
    for (chunk, &sc) in out.chunks_exact_mut(16).zip(&q3_k_scales(&block.scales)) {
        let dl = d * f32::from(sc);
        for o in chunk {
            *o *= dl;
        }
    }
}

/// Dequantizes one Q4_K block: `d * sc * q - dmin * m` per 32-element sub-block.
pub fn dequantize_block_q4_k(block: &BlockQ4K, out: &mut [f32; QK_K]) {
    let d = block.d.to_f32();
    let dmin = block.dmin.to_f32();
    for (c, (chunk, qs)) in out
        .chunks_exact_mut(64)
        .zip(block.qs.chunks_exact(32))
        .enumerate()
    {
        let (sc1, m1) = scale_min_k4(2 * c, &block.scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, &block.scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let (lo, hi) = chunk.split_at_mut(32);
        for ((&q, l), h) in qs.iter().zip(lo).zip(hi) {
            *l = d1 * f32::from(q & 0x0f) - m1;
            *h = d2 * f32::from(q >> 4) - m2;
        }
    }
}

/// Dequantizes one Q5_K block: `d * sc * q - dmin * m` per 32-element sub-block.
pub fn dequantize_block_q5_k(block: &BlockQ5K, out: &mut [f32; QK_K]) {
    let d = block.d.to_f32();
    let dmin = block.dmin.to_f32();
    for (c, (chunk, qs)) in out
        .chunks_exact_mut(64)
        .zip(block.qs.chunks_exact(32))
        .enumerate()
    {
        let (sc1, m1) = scale_min_k4(2 * c, &block.scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, &block.scales);
        let (d1, m1) = (d * f32::from(sc1), dmin * f32::from(m1));
        let (d2, m2) = (d * f32::from(sc2), dmin * f32::from(m2));
        let (lo, hi) = chunk.split_at_mut(32);
        let (s1, s2) = (2 * c, 2 * c + 1);
        for (((&q, &h), l), hv) in qs.iter().zip(&block.qh).zip(lo).zip(hi) {
            let q1 = (q & 0x0f) | (((h >> s1) & 1) << 4);
            let q2 = (q >> 4) | (((h >> s2) & 1) << 4);
            *l = d1 * f32::from(q1) - m1;
            *hv = d2 * f32::from(q2) - m2;
        }
    }
}

/// Dequantizes one Q6_K block: `d * sc * (q - 32)` per 16-element sub-block.
pub fn dequantize_block_q6_k(block: &BlockQ6K, out: &mut [f32; QK_K]) {
    let d = block.d.to_f32();
    // Half `h` (128 elements) uses ql[64 h..], qh[32 h..] and scales[8 h..].
    for (h, chunk) in out.chunks_exact_mut(128).enumerate() {
        let ql = &block.ql[64 * h..64 * h + 64];
        let qh = &block.qh[32 * h..32 * h + 32];
        let sc = &block.scales[8 * h..8 * h + 8];
        // Quarter `k` of the half: low or high nibble of ql[0..32] or ql[32..64],
        // and bits `2 k` of qh.
        for (k, quarter) in chunk.chunks_exact_mut(32).enumerate() {
            let low = &ql[32 * (k % 2)..32 * (k % 2) + 32];
            let nshift = 4 * (k / 2);
            let hshift = 2 * k;
            for (half16, (out16, (low16, qh16))) in quarter
                .chunks_exact_mut(16)
                .zip(low.chunks_exact(16).zip(qh.chunks_exact(16)))
                .enumerate()
            {
                let dl = d * f32::from(sc[2 * k + half16]);
                for ((o, &l), &hb) in out16.iter_mut().zip(low16).zip(qh16) {
                    let q = ((l >> nshift) & 0x0f) | (((hb >> hshift) & 3) << 4);
                    *o = dl * (i32::from(q) - 32) as f32;
                }
            }
        }
    }
}

/// Dequantizes one Q8_K block: `d * q`.
pub fn dequantize_block_q8_k(block: &BlockQ8K, out: &mut [f32; QK_K]) {
    let d = block.d;
    for (o, &q) in out.iter_mut().zip(&block.qs) {
        *o = d * f32::from(q);
    }
}
