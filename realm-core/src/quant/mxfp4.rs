//! MXFP4: each 4-bit code selects one of [`KVALUES_MXFP4`] (E2M1's values,
//! doubled), times a block's power of two, `2^(e - 128)` (half of E8M0's
//! `2^(e - 127)`, as the doubled table needs).
//!
//! Quantization follows ggml's `quantize_row_mxfp4_ref`, which
//! `quantize_mxfp4` (llama-quantize's) calls with or without an importance
//! matrix: the exponent puts the block's largest magnitude in the table's
//! top octave, and each value takes the code of the nearest table value
//! (the first of equally near ones, so `+0` rather than `-0`).

use super::blocks::{BlockMXFP4, KVALUES_MXFP4, QK};
use super::legacy::pack_4bit;

/// The scale exponent `e` stands for, halved: `2^(e - 128)`, subnormal for
/// `e` below 2 (ggml's `ggml_e8m0_to_fp32_half`).
///
/// ```
/// use realm_core::quant::e8m0_to_f32_half;
/// assert_eq!(e8m0_to_f32_half(128), 1.0);
/// assert_eq!(e8m0_to_f32_half(130), 4.0);
/// assert_eq!(e8m0_to_f32_half(0), 2f64.powi(-128) as f32); // subnormal
/// ```
pub const fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e - 1) as u32) << 23
    };
    f32::from_bits(bits)
}

/// Dequantizes one MXFP4 block: `2^(e - 128) * table[code]`, low nibbles
/// first, then high nibbles.
pub fn dequantize_block_mxfp4(block: &BlockMXFP4, out: &mut [f32; QK]) {
    let d = e8m0_to_f32_half(block.e);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for ((&q, l), h) in block.qs.iter().zip(lo).zip(hi) {
        *l = f32::from(KVALUES_MXFP4[usize::from(q & 0x0f)]) * d;
        *h = f32::from(KVALUES_MXFP4[usize::from(q >> 4)]) * d;
    }
}

/// The code whose value times `d` is nearest `x` (the first of equals).
fn best_code(x: f32, d: f32) -> u8 {
    let mut best = 0;
    let mut best_err = (f32::from(KVALUES_MXFP4[0]) * d - x).abs();
    for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (f32::from(k) * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

/// Quantizes 32 values to MXFP4 as ggml's `quantize_row_mxfp4_ref` does:
/// `e = floor(log2(max |x|)) - 2 + 127` (0 for an all-zero block, and
/// taken modulo 256 through an `i32` as ggml's conversion runs on x86-64
/// and AArch64 for the rare block whose largest magnitude is below
/// 2^-125), then each value's nearest code.
pub fn quantize_block_mxfp4(x: &[f32; QK]) -> BlockMXFP4 {
    let amax = x
        .iter()
        .fold(0.0f32, |m, &v| if m < v.abs() { v.abs() } else { m });
    let e = if amax > 0.0 {
        (amax.log2().floor() - 2.0 + 127.0) as i32 as u8
    } else {
        0
    };
    let d = e8m0_to_f32_half(e);
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = best_code(v, d);
    }
    BlockMXFP4 {
        e,
        qs: pack_4bit(&q),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_table_exactly() {
        // A block holding every table value at scale 1 (e = 128, and the
        // largest magnitude 6 = 12 / 2 gives floor(log2 6) - 2 + 127 = 127:
        // scale 1/2, the doubled table's own).
        let mut x = [0.0f32; QK];
        for (i, v) in x.iter_mut().enumerate() {
            *v = f32::from(KVALUES_MXFP4[i % 16]) * 0.5;
        }
        let b = quantize_block_mxfp4(&x);
        assert_eq!(b.e, 127);
        let mut y = [0.0f32; QK];
        dequantize_block_mxfp4(&b, &mut y);
        assert_eq!(x, y);
        // -0 quantizes to +0's code.
        assert_eq!(best_code(-0.0, 0.5), 0);
    }

    #[test]
    fn zero_and_tiny_blocks() {
        let b = quantize_block_mxfp4(&[0.0; QK]);
        assert_eq!((b.e, b.qs), (0, [0; QK / 2]));
        // Below 2^-125 the exponent wraps as ggml's conversion wraps it.
        let mut x = [0.0f32; QK];
        x[3] = 2f32.powi(-130);
        assert_eq!(quantize_block_mxfp4(&x).e, (-130 - 2 + 127) as u8);
    }
}
