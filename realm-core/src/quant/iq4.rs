//! The non-linear 4-bit formats IQ4_NL and IQ4_XS: each 4-bit index selects
//! one of the 16 values of [`KVALUES_IQ4NL`], times a scale.
//!
//! Quantization follows ggml's `quantize_iq4_nl` and `quantize_iq4_xs`
//! (`quantize_row_iq4_nl_impl`): a search for each 32-value block's scale
//! that minimises a weighted squared error against the table, then, for
//! IQ4_XS, 6-bit sub-block scales under one f16 scale. The weights are
//! `x^2` without an importance matrix and `importance * sqrt(sigma2 + x^2)`
//! with one (`weighted`). Every float operation is the reference's, in its
//! order and in f32, so the bytes equal ggml's.

use half::f16;

use super::blocks::{BlockIQ4NL, BlockIQ4XS, KVALUES_IQ4NL, QK, QK_K};
use super::kquantize::{largest, nearest_int};
use super::legacy::{inverse, pack_4bit};

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

/// The table value nearest `x`, as ggml's `best_index_int8` finds it by
/// bisection: the first value for any `x` at or below it, the last for any
/// at or above it and for NaN, the upper of two equally near values. Found with
/// selects only (no branch to mispredict), so that the trials of
/// [`fit_scale`] run side by side in vector lanes.
#[inline(always)]
fn nearest_value(x: f32) -> f32 {
    let [first, .., last] = KVALUES_F32;
    // The values bracketing x: the last at or below it, the first above.
    let (mut lo, mut hi) = (first, last);
    for &k in &KVALUES_F32 {
        lo = if k <= x { k } else { lo };
    }
    for &k in KVALUES_F32.iter().rev() {
        hi = if k > x { k } else { hi };
    }
    let q = if x - lo < hi - x { lo } else { hi };
    let q = if x <= first { first } else { q };
    // At or above the last value, and NaN: the last.
    if x < last {
        q
    } else {
        last
    }
}

/// The table index of [`nearest_value`]: how many values lie below it.
fn best_index(x: f32) -> u8 {
    let q = nearest_value(x);
    KVALUES_F32.iter().map(|&k| u8::from(k < q)).sum()
}

/// How far on each side of the table's end the search moves the value the
/// largest element maps to (ggml's `ntry`, 7 in `quantize_iq4_nl` and
/// `quantize_iq4_xs`, with or without an importance matrix).
const NTRY: i32 = 7;

/// The trials of [`fit_scale`]: the first, then `2 * NTRY + 1` more.
const TRIALS: usize = 2 * NTRY as usize + 2;

/// The scale of 32 values: the weighted least-squares scale of the table
/// values nearest them at 16 trial scales, keeping the one that fits best
/// (largest `(sum w q x)^2 / sum w q^2`). The trials take the largest
/// element `max` (signed) to 127 (so to the table's top, 113), then to
/// `-127 + t` for each `t` in `-7..=7`. 0 when every element is (nearly)
/// zero.
///
/// Each trial's sums `sum w q x` and `sum w q^2` add the values in order,
/// as ggml's do, so the scale is ggml's to the bit; the trials are summed
/// side by side (independent chains of additions the compiler puts in
/// vector lanes), then compared in ggml's order.
fn fit_scale(x: &[f32; QK], weights: &[f32; QK]) -> f32 {
    let Some(max) = largest(x) else {
        return 0.0;
    };
    let mut ids = [0.0f32; TRIALS];
    ids[0] = 1.0 / (-max / KVALUES_F32[0]);
    for (id, t) in ids[1..].iter_mut().zip(-NTRY..=NTRY) {
        *id = (t + i32::from(KVALUES_IQ4NL[0])) as f32 / max;
    }
    let (mut sumqx, mut sumq2) = ([0.0f32; TRIALS], [0.0f32; TRIALS]);
    for (&v, &w) in x.iter().zip(weights) {
        for ((id, qx), q2) in ids.iter().zip(&mut sumqx).zip(&mut sumq2) {
            let q = nearest_value(id * v);
            *qx += w * q * v;
            *q2 += w * q * q;
        }
    }
    let mut d = if sumq2[0] > 0.0 {
        sumqx[0] / sumq2[0]
    } else {
        0.0
    };
    let mut best = d * sumqx[0];
    for (&sumqx, &sumq2) in sumqx[1..].iter().zip(&sumq2[1..]) {
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// The table indices of 32 values at inverse scale `id`, packed as
/// [`BlockQ4_0`](super::blocks::BlockQ4_0) packs its levels.
fn indices(x: &[f32], id: f32) -> [u8; QK / 2] {
    let mut levels = [0u8; QK];
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = best_index(id * v);
    }
    pack_4bit(&levels)
}

/// IQ4_NL of 32 values whose errors weigh `weights`: the fitted scale in
/// f16, each value's nearest table index at the scale as fitted (not as
/// rounded to f16).
pub(super) fn block_iq4_nl(x: &[f32; QK], weights: &[f32; QK]) -> BlockIQ4NL {
    let d = fit_scale(x, weights);
    BlockIQ4NL {
        d: f16::from_f32(d),
        qs: indices(x, inverse(d)),
    }
}

/// Quantizes 32 values to IQ4_NL, as ggml's `quantize_iq4_nl` does without
/// an importance matrix (what llama-quantize writes): the scale that best
/// fits the values to the table by squared error weighted by `x^2`, searched
/// over 16 candidates, then each value's nearest table index.
///
/// ggml's `quantize_row_iq4_nl_ref` (its CPU backend's conversion of f32,
/// as for an IQ4_NL KV cache) tries one scale only, the largest element
/// taken to -127, and so gives other bytes for most blocks.
pub fn quantize_block_iq4_nl(x: &[f32; QK]) -> BlockIQ4NL {
    block_iq4_nl(x, &x.map(|v| v * v))
}

/// IQ4_XS of 256 values, each sub-block of 32 fitted with the weights
/// `weights` gives for it (called with its index and values): the
/// sub-block scales as 6-bit signed factors of one f16 scale (the largest
/// magnitude scale taking -32), and each value's nearest table index at its
/// sub-block's scale as stored (with the super-block scale as fitted, not as
/// rounded to f16).
pub(super) fn block_iq4_xs(
    x: &[f32; QK_K],
    mut weights: impl FnMut(usize, &[f32; QK]) -> [f32; QK],
) -> BlockIQ4XS {
    let blocks = x.as_chunks::<QK>().0;
    let mut scales = [0.0f32; QK_K / QK];
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    for (ib, (s, xb)) in scales.iter_mut().zip(blocks).enumerate() {
        *s = fit_scale(xb, &weights(ib, xb));
        if s.abs() > amax_scale {
            amax_scale = s.abs();
            max_scale = *s;
        }
    }
    let d = -max_scale / 32.0;
    let id = inverse(d);
    let mut qs = [0u8; QK_K / 2];
    let mut scales_l = [0u8; QK_K / 64];
    let mut scales_h = 0u16;
    for (ib, ((q, xb), &s)) in qs
        .chunks_exact_mut(QK / 2)
        .zip(blocks)
        .zip(&scales)
        .enumerate()
    {
        let l = nearest_int(id * s).clamp(-32, 31);
        q.copy_from_slice(&indices(xb, inverse(d * l as f32)));
        // Stored offset by 32: low nibble in `scales_l` (two a byte), high
        // two bits in `scales_h` (eight pairs).
        let l = (l + 32) as u8;
        scales_l[ib / 2] |= (l & 0x0f) << (4 * (ib % 2));
        scales_h |= u16::from(l >> 4) << (2 * ib);
    }
    BlockIQ4XS {
        d: f16::from_f32(d),
        scales_h,
        scales_l,
        qs,
    }
}

/// Quantizes 256 values to IQ4_XS, as ggml's `quantize_iq4_xs` does without
/// an importance matrix (its reference quantizer, and what llama-quantize
/// writes): each sub-block of 32 gets the scale that best fits its values to
/// the table by squared error weighted by `x^2` (searched as in
/// [`quantize_block_iq4_nl`]); the eight scales are stored as 6-bit factors
/// of one f16 scale, and each value takes its nearest table index at its
/// sub-block's scale as stored.
pub fn quantize_block_iq4_xs(x: &[f32; QK_K]) -> BlockIQ4XS {
    block_iq4_xs(x, |_, xb| xb.map(|v| v * v))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's bisection, as `best_index_int8` writes it.
    fn bisection(x: f32) -> u8 {
        let last = KVALUES_F32.len() - 1;
        if x <= KVALUES_F32[0] {
            return 0;
        }
        if x >= KVALUES_F32[last] {
            return last as u8;
        }
        let (mut lo, mut hi) = (0, last);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if x < KVALUES_F32[mid] {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        if x - KVALUES_F32[hi - 1] < KVALUES_F32[hi] - x {
            (hi - 1) as u8
        } else {
            hi as u8
        }
    }

    #[test]
    fn the_selects_find_what_the_bisection_finds() {
        // Every table value, the midpoints between neighbours and the floats
        // beside each, the ends, NaN and infinities; then every 997th f32
        // bit pattern (all signs and exponents).
        let mut xs = vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0];
        for w in KVALUES_F32.windows(2) {
            for v in [w[0], (w[0] + w[1]) / 2.0] {
                xs.extend([v, v.next_up(), v.next_down()]);
            }
        }
        xs.extend((0..u32::MAX / 997).map(|i| f32::from_bits(i * 997)));
        for x in xs {
            let want = bisection(x);
            assert_eq!(best_index(x), want, "{x:e} ({:#x})", x.to_bits());
            let value = nearest_value(x);
            assert_eq!(value, KVALUES_F32[usize::from(want)], "{x:e}");
        }
    }
}
