//! The 32-element "legacy" formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1.
//!
//! In the 4- and 5-bit formats byte `j` of `qs` holds element `j` in its low
//! nibble and element `j + 16` in its high nibble; the 5-bit formats keep each
//! element's fifth bit in `qh`, bit `j` for element `j`.
//!
//! The quantizers follow ggml's reference (`quantize_row_*_ref`) operation for
//! operation, so their bytes equal ggml's and the `gguf` Python package's.

use half::f16;

use super::blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1, QK};

const HALF: usize = QK / 2;

/// Dequantizes one Q4_0 block: `d * (q - 8)`.
pub fn dequantize_block_q4_0(block: &BlockQ4_0, out: &mut [f32; QK]) {
    let d = block.d.to_f32();
    let (lo, hi) = out.split_at_mut(HALF);
    for ((q, l), h) in block.qs.iter().zip(lo).zip(hi) {
        *l = d * (i32::from(q & 0x0f) - 8) as f32;
        *h = d * (i32::from(q >> 4) - 8) as f32;
    }
}

/// Dequantizes one Q4_1 block: `d * q + m`.
pub fn dequantize_block_q4_1(block: &BlockQ4_1, out: &mut [f32; QK]) {
    let d = block.d.to_f32();
    let m = block.m.to_f32();
    let (lo, hi) = out.split_at_mut(HALF);
    for ((q, l), h) in block.qs.iter().zip(lo).zip(hi) {
        *l = d * f32::from(q & 0x0f) + m;
        *h = d * f32::from(q >> 4) + m;
    }
}

/// Dequantizes one Q5_0 block: `d * (q - 16)`.
pub fn dequantize_block_q5_0(block: &BlockQ5_0, out: &mut [f32; QK]) {
    let d = block.d.to_f32();
    let qh = u32::from_le_bytes(block.qh);
    let (lo, hi) = out.split_at_mut(HALF);
    for (j, ((q, l), h)) in block.qs.iter().zip(lo).zip(hi).enumerate() {
        let b0 = ((qh >> j) & 1) << 4;
        let b1 = ((qh >> (j + HALF)) & 1) << 4;
        *l = d * ((u32::from(q & 0x0f) | b0) as i32 - 16) as f32;
        *h = d * ((u32::from(q >> 4) | b1) as i32 - 16) as f32;
    }
}

/// Dequantizes one Q5_1 block: `d * q + m`.
pub fn dequantize_block_q5_1(block: &BlockQ5_1, out: &mut [f32; QK]) {
    let d = block.d.to_f32();
    let m = block.m.to_f32();
    let qh = u32::from_le_bytes(block.qh);
    let (lo, hi) = out.split_at_mut(HALF);
    for (j, ((q, l), h)) in block.qs.iter().zip(lo).zip(hi).enumerate() {
        let b0 = ((qh >> j) & 1) << 4;
        let b1 = ((qh >> (j + HALF)) & 1) << 4;
        *l = d * (u32::from(q & 0x0f) | b0) as f32 + m;
        *h = d * (u32::from(q >> 4) | b1) as f32 + m;
    }
}

/// Dequantizes one Q8_0 block: `d * q`.
pub fn dequantize_block_q8_0(block: &BlockQ8_0, out: &mut [f32; QK]) {
    let d = block.d.to_f32();
    for (o, &q) in out.iter_mut().zip(&block.qs) {
        *o = d * f32::from(q);
    }
}

/// Dequantizes one Q8_1 block: `d * q` (the stored sum `s` is not needed).
pub fn dequantize_block_q8_1(block: &BlockQ8_1, out: &mut [f32; QK]) {
    let d = block.d.to_f32();
    for (o, &q) in out.iter_mut().zip(&block.qs) {
        *o = d * f32::from(q);
    }
}

/// The element of largest magnitude, with its sign (the first one on ties).
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// The smallest and the largest element, as ggml's reference scans for them.
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `1 / d`, or 0 when `d` is 0.
pub(super) fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// Quantizes 32 values to Q4_0 (scale from the signed absolute maximum).
pub fn quantize_block_q4_0(x: &[f32; QK]) -> BlockQ4_0 {
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    let mut qs = [0u8; HALF];
    let (lo, hi) = x.split_at(HALF);
    for ((q, &x0), &x1) in qs.iter_mut().zip(lo).zip(hi) {
        let q0 = ((x0 * id + 8.5) as i8 as u8).min(15);
        let q1 = ((x1 * id + 8.5) as i8 as u8).min(15);
        *q = q0 | (q1 << 4);
    }
    BlockQ4_0 {
        d: f16::from_f32(d),
        qs,
    }
}

/// Quantizes 32 values to Q4_1 (scale and minimum from the range).
pub fn quantize_block_q4_1(x: &[f32; QK]) -> BlockQ4_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    let mut qs = [0u8; HALF];
    let (lo, hi) = x.split_at(HALF);
    for ((q, &x0), &x1) in qs.iter_mut().zip(lo).zip(hi) {
        let q0 = (((x0 - min) * id + 0.5) as i8 as u8).min(15);
        let q1 = (((x1 - min) * id + 0.5) as i8 as u8).min(15);
        *q = q0 | (q1 << 4);
    }
    BlockQ4_1 {
        d: f16::from_f32(d),
        m: f16::from_f32(min),
        qs,
    }
}

/// Packs 32 four-bit values: element `j` in the low nibble of byte `j`,
/// element `j + 16` in the high one.
pub(super) fn pack_4bit(q: &[u8; QK]) -> [u8; HALF] {
    let mut qs = [0u8; HALF];
    let (lo, hi) = q.split_at(HALF);
    for ((out, &q0), &q1) in qs.iter_mut().zip(lo).zip(hi) {
        *out = q0 | (q1 << 4);
    }
    qs
}

/// Splits 32 five-bit values into low nibbles and the packed fifth bits.
pub(super) fn pack_5bit(q: &[u8; QK]) -> ([u8; HALF], [u8; 4]) {
    let mut qs = [0u8; HALF];
    let mut qh = 0u32;
    let (lo, hi) = q.split_at(HALF);
    for (j, ((out, &q0), &q1)) in qs.iter_mut().zip(lo).zip(hi).enumerate() {
        *out = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
        qh |= u32::from((q0 >> 4) & 1) << j;
        qh |= u32::from((q1 >> 4) & 1) << (j + HALF);
    }
    (qs, qh.to_le_bytes())
}

/// Quantizes 32 values to Q5_0 (scale from the signed absolute maximum).
pub fn quantize_block_q5_0(x: &[f32; QK]) -> BlockQ5_0 {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    let q = x.map(|v| ((v * id + 16.5) as i8 as u8).min(31));
    let (qs, qh) = pack_5bit(&q);
    BlockQ5_0 {
        d: f16::from_f32(d),
        qh,
        qs,
    }
}

/// Quantizes 32 values to Q5_1 (scale and minimum from the range).
pub fn quantize_block_q5_1(x: &[f32; QK]) -> BlockQ5_1 {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    let q = x.map(|v| (((v - min) * id + 0.5) as u8).min(31));
    let (qs, qh) = pack_5bit(&q);
    BlockQ5_1 {
        d: f16::from_f32(d),
        m: f16::from_f32(min),
        qh,
        qs,
    }
}

/// The Q8 scale of `x` and the 32 quants, rounded half away from zero.
fn quantize_q8(x: &[f32; QK]) -> (f32, [i8; QK]) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    (d, x.map(|v| (v * id).round() as i8))
}

/// Quantizes 32 values to Q8_0.
pub fn quantize_block_q8_0(x: &[f32; QK]) -> BlockQ8_0 {
    let (d, qs) = quantize_q8(x);
    BlockQ8_0 {
        d: f16::from_f32(d),
        qs,
    }
}

/// Quantizes 32 values to Q8_1, storing `s = d * sum(q)` as well.
pub fn quantize_block_q8_1(x: &[f32; QK]) -> BlockQ8_1 {
    let (d, qs) = quantize_q8(x);
    let sum: i32 = qs.iter().map(|&q| i32::from(q)).sum();
    BlockQ8_1 {
        d: f16::from_f32(d),
        s: f16::from_f32(sum as f32 * d),
        qs,
    }
}
