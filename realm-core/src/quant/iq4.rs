//! The non-linear 4-bit formats IQ4_NL and IQ4_XS: each 4-bit index selects
//! one of the 16 values of [`KVALUES_IQ4NL`], times a scale.

use super::blocks::{BlockIQ4NL, BlockIQ4XS, KVALUES_IQ4NL, QK, QK_K};

/// The table as f32, indexed by a nibble.
const KVALUES_F32: [f32; 16] = {
    let mut out = [0.0f32; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = KVALUES_IQ4NL[i] as f32;
        i += 1;
    }
    out
};

/// The table value for the low four bits of `n`.
fn kvalue(n: u8) -> f32 {
    KVALUES_F32[usize::from(n & 0x0f)]
}

/// Fills 32 outputs from 16 index bytes: low nibbles first, then high nibbles.
fn dequantize_32(scale: f32, qs: &[u8], out: &mut [f32]) {
    let (lo, hi) = out.split_at_mut(QK / 2);
    for ((&q, l), h) in qs.iter().zip(lo).zip(hi) {
        *l = scale * kvalue(q);
        *h = scale * kvalue(q >> 4);
    }
}

/// Dequantizes one IQ4_NL block: `d * table[q]`.
pub fn dequantize_block_iq4_nl(block: &BlockIQ4NL, out: &mut [f32; QK]) {
    dequantize_32(block.d.to_f32(), &block.qs, out);
}

/// Dequantizes one IQ4_XS block: `d * (ls - 32) * table[q]` per 32-element
/// sub-block, `ls` being its 6-bit scale.
pub fn dequantize_block_iq4_xs(block: &BlockIQ4XS, out: &mut [f32; QK_K]) {
    let d = block.d.to_f32();
    let scales_h = block.scales_h;
    for (ib, (chunk, qs)) in out
        .chunks_exact_mut(QK)
        .zip(block.qs.chunks_exact(QK / 2))
        .enumerate()
    {
        let low = (block.scales_l[(ib / 2) % 4] >> (4 * (ib % 2))) & 0x0f;
        let high = ((scales_h >> (2 * ib)) & 3) as u8;
        let ls = i32::from(low | (high << 4)) - 32;
        dequantize_32(d * ls as f32, qs, chunk);
    }
}
