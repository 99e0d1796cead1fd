//! Quantization to Q4_K, Q5_K, Q6_K and Q8_K, following ggml's reference
//! quantizers (`quantize_row_*_ref`, no importance matrix).
//!
//! Q4_K and Q5_K pick each 32-element sub-block's scale and minimum with a
//! small search over candidate scales that minimises a weighted squared error
//! (ggml's `make_qkx2_quants`); Q6_K picks each 16-element sub-block's scale
//! with a search that maximises the weighted correlation (`make_qx_quants`).
//! The arithmetic is done in f32 in the reference's order, so the bytes match.
//!
//! The searches, the packing of scales and the last pass that quantizes each
//! group against its stored scale are shared with the importance-weighted
//! quantizers of `weighted`.

use half::f16;

use super::blocks::{
    BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K, K_SCALE_SIZE, QK_K,
};
use super::kquants::scale_min_k4;

/// Below this a group's largest magnitude counts as zero.
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, within 2^22 of zero; ggml's
/// `nearest_int`, computed as ggml computes it for any input (outside that
/// range, or for NaN, the result is meaningless but the same).
pub(super) fn nearest_int(x: f32) -> i32 {
    // Adding 1.5 * 2^23 leaves the rounded integer in the low mantissa bits
    // (the float addition rounds ties to even): no branch and no call to
    // `rintf`, so loops of it run in vectors.
    let bits = (x + 12_582_912.0).to_bits();
    (bits & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Parameters of the scale search in [`make_qkx2_quants`].
pub(super) struct Search {
    /// The largest level.
    pub(super) nmax: i32,
    /// The first candidate's offset from `nmax` levels over the range.
    pub(super) rmin: f32,
    /// The step between candidates.
    pub(super) rdelta: f32,
    /// The number of steps (`nstep + 1` candidates).
    pub(super) nstep: i32,
    /// Weigh absolute errors (Q2_K) rather than squared ones.
    pub(super) mad: bool,
}

/// Quantizes `x` to levels `0..=nmax` as `scale * l - min` (min >= 0), searching
/// for the weighted least-squares scale. Writes the levels to `levels` and
/// returns `(scale, min)`. With an importance matrix ggml calls the same
/// search `make_qkx3_quants`.
pub(super) fn make_qkx2_quants<const N: usize>(
    x: &[f32; N],
    weights: &[f32; N],
    p: &Search,
    levels: &mut [u8; N],
) -> (f32, f32) {
    let error = |diff: f32| if p.mad { diff.abs() } else { diff * diff };
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&xi, &w) in x.iter().zip(weights).skip(1) {
        if xi < min {
            min = xi;
        }
        if xi > max {
            max = xi;
        }
        sum_w += w;
        sum_x += w * xi;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        *levels = [0; N];
        return (0.0, -min);
    }
    let nmax = p.nmax as f32;
    let mut iscale = nmax / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for ((l, &xi), &w) in levels.iter_mut().zip(x).zip(weights) {
        *l = nearest_int(iscale * (xi - min)).clamp(0, p.nmax) as u8;
        let diff = scale * f32::from(*l) + min - xi;
        best_error += w * error(diff);
    }
    let mut aux = [0u8; N];
    let mut lf = [0.0f32; N];
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax) / (max - min);
        // The levels first (a loop the compiler runs in vectors), then the
        // sums in order.
        for ((a, l), &xi) in aux.iter_mut().zip(&mut lf).zip(x) {
            let q = nearest_int(iscale * (xi - min)).clamp(0, p.nmax);
            *a = q as u8;
            *l = q as f32;
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for ((&lf, &xi), &w) in lf.iter().zip(x).zip(weights) {
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * xi;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for ((&a, &xi), &w) in aux.iter().zip(x).zip(weights) {
                let diff = this_scale * f32::from(a) + this_min - xi;
                cur_error += w * error(diff);
            }
            if cur_error < best_error {
                *levels = aux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The value of largest magnitude (the first of equals), or `None` when
/// that magnitude counts as zero.
pub(super) fn largest(x: &[f32]) -> Option<f32> {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &xi in x {
        if xi.abs() > amax {
            amax = xi.abs();
            max = xi;
        }
    }
    (amax >= GROUP_MAX_EPS).then_some(max)
}

/// The trial scales of [`make_qx_quants`]: `nmax` levels over the largest
/// element, then `nmax + 0.1 is` for `is` in `-9..=9` but 0.
const QX_TRIALS: usize = 19;

/// Quantizes `x` to levels `0..2 nmax` standing for `scale * (l - nmax)`,
/// searching for the scale that best fits with these weights (`x^2` in the
/// reference quantizers). Writes the levels and returns the scale.
///
/// Each trial's sums add the values in order, as ggml's do, so the result
/// is ggml's to the bit; the trials are summed side by side (independent
/// chains of additions the compiler puts in vector lanes), then compared in
/// ggml's order.
pub(super) fn make_qx_quants<const N: usize>(
    x: &[f32; N],
    nmax: i32,
    weights: &[f32; N],
    levels: &mut [u8; N],
) -> f32 {
    let Some(max) = largest(x) else {
        *levels = [0; N];
        return 0.0;
    };
    let level = |iscale: f32, xi: f32| nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
    let mut iscales = [-(nmax as f32) / max; QX_TRIALS];
    for (s, is) in iscales[1..].iter_mut().zip((-9..=9).filter(|&is| is != 0)) {
        *s = -(nmax as f32 + 0.1 * is as f32) / max;
    }
    let (mut sumlx, mut suml2) = ([0.0f32; QX_TRIALS], [0.0f32; QX_TRIALS]);
    for (&xi, &w) in x.iter().zip(weights) {
        let wx = w * xi;
        for ((&iscale, lx), l2) in iscales.iter().zip(&mut sumlx).zip(&mut suml2) {
            let l = level(iscale, xi) as f32;
            *lx += wx * l;
            *l2 += w * l * l;
        }
    }
    let mut scale = if suml2[0] != 0.0 {
        sumlx[0] / suml2[0]
    } else {
        0.0
    };
    let mut best = scale * sumlx[0];
    let mut chosen = 0;
    for (t, (&sumlx, &suml2)) in sumlx.iter().zip(&suml2).enumerate().skip(1) {
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            chosen = t;
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    for (out, &xi) in levels.iter_mut().zip(x) {
        *out = (level(iscales[chosen], xi) + nmax) as u8;
    }
    scale
}

/// Packs eight 6-bit sub-block scales and minimums as Q4_K and Q5_K store
/// them: the first four of each whole in bytes 0..4 and 4..8, the last
/// four's low nibbles in bytes 8..12 and their high two bits in the top bits
/// of bytes 0..8. A value above 63 is packed as ggml packs it (its extra
/// bits land in other fields).
pub(super) fn pack_k4_scales(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut packed = [0u8; K_SCALE_SIZE];
    for (j, (&ls, &lm)) in ls.iter().zip(lm).enumerate() {
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    packed
}

/// Quantizes each 32-element sub-block of `x` again, to levels `0..=nmax`,
/// against the scale and minimum it got as stored (`d` and `dmin` times the
/// 6-bit factors in `packed`); a sub-block whose scale is zero keeps the
/// levels it has.
pub(super) fn requantize_k4(
    x: &[f32; QK_K],
    levels: &mut [u8; QK_K],
    d: f16,
    dmin: f16,
    packed: &[u8; K_SCALE_SIZE],
    nmax: i32,
) {
    for (j, (xs, ls)) in x
        .chunks_exact(32)
        .zip(levels.chunks_exact_mut(32))
        .enumerate()
    {
        let (sc, m) = scale_min_k4(j, packed);
        let dl = d.to_f32() * f32::from(sc);
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(m);
        for (l, &v) in ls.iter_mut().zip(xs) {
            *l = nearest_int((v + dm) / dl).clamp(0, nmax) as u8;
        }
    }
}

/// The shared part of Q4_K and Q5_K: per-sub-block scales and minimums packed
/// to 6 bits, the two f16 super-scales, and every element's level.
fn quantize_k4_scales(x: &[f32; QK_K], p: &Search) -> (f16, f16, [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for (j, (xs, ls)) in x
        .chunks_exact(32)
        .zip(levels.chunks_exact_mut(32))
        .enumerate()
    {
        let (Ok(xs), Ok(ls)) = (<&[f32; 32]>::try_from(xs), <&mut [u8; 32]>::try_from(ls)) else {
            continue;
        };
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights = xs.map(|v| av_x + v.abs());
        let (scale, min) = make_qkx2_quants(xs, &weights, p, ls);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // The reference stores these in a byte before clamping: wrap, then clamp.
    let ls = scales.map(|s| (nearest_int(inv_scale * s) as u8).min(63));
    let lm = mins.map(|m| (nearest_int(inv_min * m) as u8).min(63));
    let packed = pack_k4_scales(&ls, &lm);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    requantize_k4(x, &mut levels, d, dmin, &packed, p.nmax);
    (d, dmin, packed, levels)
}

/// Quantizes 16 values to levels `0..2 nmax` standing for `scale * (l -
/// nmax)` by a search that moves one level at a time while the weighted
/// (`x^2`) fit improves (ggml's `make_q3_quants` with its RMSE search).
/// Returns the scale; an all-zero group gets levels 0 (not `nmax`).
fn make_q3_quants(x: &[f32; 16], nmax: i32, levels: &mut [u8; 16]) -> f32 {
    let Some(max) = largest(x) else {
        *levels = [0; 16];
        return 0.0;
    };
    let iscale = -(nmax as f32) / max;
    let mut l = [0i32; 16];
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for (li, &xi) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * xi).clamp(-nmax, nmax - 1);
        let w = xi * xi;
        sumlx += w * xi * *li as f32;
        suml2 += w * *li as f32 * *li as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (li, &xi) in l.iter_mut().zip(x) {
            let w = xi * xi;
            let mut slx = sumlx - w * xi * *li as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * *li as f32 * *li as f32;
                let new_l = nearest_int(xi * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != *li {
                    slx += w * xi * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *li = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (out, &li) in levels.iter_mut().zip(&l) {
        *out = (li + nmax) as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Packs 256 two-bit levels as Q2_K and Q3_K store them: byte `l` of each
/// 32-byte group holds levels `l`, `l + 32`, `l + 64`, `l + 96` of its 128.
fn pack_2bit(levels: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for (q, l) in qs.chunks_exact_mut(32).zip(levels.chunks_exact(128)) {
        for (i, out) in q.iter_mut().enumerate() {
            *out = l[i] | (l[i + 32] << 2) | (l[i + 64] << 4) | (l[i + 96] << 6);
        }
    }
    qs
}

/// Quantizes each 16-element group of `x` again, to levels `0..=3`, against
/// the scale and minimum it got as stored (`d` and `dmin` times the low and
/// high nibble of its byte of `scales`; a group whose scale is zero keeps the
/// levels it has), and packs the Q2_K block.
pub(super) fn finish_q2_k(
    x: &[f32; QK_K],
    mut levels: [u8; QK_K],
    scales: [u8; QK_K / 16],
    d: f16,
    dmin: f16,
) -> BlockQ2K {
    for ((xs, ls), &sc) in x
        .chunks_exact(16)
        .zip(levels.chunks_exact_mut(16))
        .zip(&scales)
    {
        let dl = d.to_f32() * f32::from(sc & 0x0f);
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(sc >> 4);
        for (l, &v) in ls.iter_mut().zip(xs) {
            *l = nearest_int((v + dm) / dl).clamp(0, 3) as u8;
        }
    }
    BlockQ2K {
        scales,
        qs: pack_2bit(&levels),
        d,
        dmin,
    }
}

/// Quantizes 256 values to Q2_K.
pub fn quantize_block_q2_k(x: &[f32; QK_K]) -> BlockQ2K {
    let search = Search {
        nmax: 3,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        mad: true,
    };
    let mut levels = [0u8; QK_K];
    let mut sub_scales = [0.0f32; QK_K / 16];
    let mut mins = [0.0f32; QK_K / 16];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for (((xs, ls), s), m) in x
        .chunks_exact(16)
        .zip(levels.chunks_exact_mut(16))
        .zip(sub_scales.iter_mut())
        .zip(mins.iter_mut())
    {
        let (Ok(xs), Ok(ls)) = (<&[f32; 16]>::try_from(xs), <&mut [u8; 16]>::try_from(ls)) else {
            continue;
        };
        let weights = xs.map(f32::abs);
        (*s, *m) = make_qkx2_quants(xs, &weights, &search, ls);
        if *s > max_scale {
            max_scale = *s;
        }
        if *m > max_min {
            max_min = *m;
        }
    }
    // Scales in the low nibble, mins in the high one, both of 15 steps.
    let mut scales = [0u8; QK_K / 16];
    let mut d = f16::ZERO;
    if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for (out, &s) in scales.iter_mut().zip(&sub_scales) {
            *out = nearest_int(iscale * s) as u8;
        }
        d = f16::from_f32(max_scale / 15.0);
    }
    let mut dmin = f16::ZERO;
    if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for (out, &m) in scales.iter_mut().zip(&mins) {
            *out |= (nearest_int(iscale * m) << 4) as u8;
        }
        dmin = f16::from_f32(max_min / 15.0);
    }
    finish_q2_k(x, levels, scales, d, dmin)
}

/// Quantizes each of the 16 groups of 16 values with `group`, which gets the
/// group's index, writes its levels and returns its scale; returns the
/// scales, the one of largest magnitude (the first of equals; 0 if all are)
/// and that magnitude.
pub(super) fn group_scales(
    x: &[f32; QK_K],
    levels: &mut [u8; QK_K],
    mut group: impl FnMut(usize, &[f32; 16], &mut [u8; 16]) -> f32,
) -> ([f32; QK_K / 16], f32, f32) {
    let mut scales = [0.0f32; QK_K / 16];
    let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
    for (j, ((xs, ls), s)) in x
        .chunks_exact(16)
        .zip(levels.chunks_exact_mut(16))
        .zip(scales.iter_mut())
        .enumerate()
    {
        let (Ok(xs), Ok(ls)) = (<&[f32; 16]>::try_from(xs), <&mut [u8; 16]>::try_from(ls)) else {
            continue;
        };
        *s = group(j, xs, ls);
        if s.abs() > amax {
            amax = s.abs();
            max_scale = *s;
        }
    }
    (scales, max_scale, amax)
}

/// Packs sixteen 6-bit Q3_K scales (offset by 32): low nibbles in bytes 0..8,
/// the high two bits of scale `j` in bits `2 (j / 4)` of byte `8 + j % 4`.
pub(super) fn pack_q3_scales(ls: &[u8; QK_K / 16]) -> [u8; 12] {
    let mut scales = [0u8; 12];
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            scales[j] = l & 0x0f;
        } else {
            scales[j - 8] |= (l & 0x0f) << 4;
        }
        scales[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
    }
    scales
}

/// Quantizes each 16-element group of `x` again, to levels `0..8` standing
/// for `l - 4`, against the scale it got as stored (`d` times its 6-bit
/// factor in `scales`, less 32; a group whose scale is zero keeps the levels
/// it has), and packs the Q3_K block.
pub(super) fn finish_q3_k(
    x: &[f32; QK_K],
    mut levels: [u8; QK_K],
    scales: [u8; 12],
    d: f16,
) -> BlockQ3K {
    for (j, (xs, ls)) in x
        .chunks_exact(16)
        .zip(levels.chunks_exact_mut(16))
        .enumerate()
    {
        let low = if j < 8 {
            scales[j] & 0x0f
        } else {
            scales[j - 8] >> 4
        };
        let sc = i32::from(low | (((scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
        let dl = d.to_f32() * sc as f32;
        if dl == 0.0 {
            continue;
        }
        for (l, &v) in ls.iter_mut().zip(xs) {
            *l = (nearest_int(v / dl).clamp(-4, 3) + 4) as u8;
        }
    }
    // The third bit of level j goes to bit j / 32 of hmask[j % 32].
    let mut hmask = [0u8; QK_K / 8];
    for (j, l) in levels.iter_mut().enumerate() {
        if *l > 3 {
            hmask[j % (QK_K / 8)] |= 1 << (j / (QK_K / 8));
            *l -= 4;
        }
    }
    BlockQ3K {
        hmask,
        qs: pack_2bit(&levels),
        scales,
        d,
    }
}

/// Quantizes 256 values to Q3_K.
pub fn quantize_block_q3_k(x: &[f32; QK_K]) -> BlockQ3K {
    let mut levels = [0u8; QK_K];
    let (sub_scales, max_scale, _) =
        group_scales(x, &mut levels, |_, xs, ls| make_q3_quants(xs, 4, ls));
    let (scales, d) = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        let ls = sub_scales.map(|s| (nearest_int(iscale * s).clamp(-32, 31) + 32) as u8);
        (pack_q3_scales(&ls), f16::from_f32(1.0 / iscale))
    } else {
        ([0; 12], f16::ZERO)
    };
    finish_q3_k(x, levels, scales, d)
}

/// Packs a Q4_K block: byte `l` of each 32-byte group holds level `l` of its
/// 64 in the low nibble and level `l + 32` in the high one.
pub(super) fn block_q4_k(
    d: f16,
    dmin: f16,
    scales: [u8; K_SCALE_SIZE],
    levels: &[u8; QK_K],
) -> BlockQ4K {
    let mut qs = [0u8; QK_K / 2];
    for (q, l) in qs.chunks_exact_mut(32).zip(levels.chunks_exact(64)) {
        let (lo, hi) = l.split_at(32);
        for ((out, &a), &b) in q.iter_mut().zip(lo).zip(hi) {
            *out = a | (b << 4);
        }
    }
    BlockQ4K {
        d,
        dmin,
        scales,
        qs,
    }
}

/// Quantizes 256 values to Q4_K.
pub fn quantize_block_q4_k(x: &[f32; QK_K]) -> BlockQ4K {
    let search = Search {
        nmax: 15,
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
        mad: false,
    };
    let (d, dmin, scales, levels) = quantize_k4_scales(x, &search);
    block_q4_k(d, dmin, scales, &levels)
}

/// Packs a Q5_K block: the low nibbles as in Q4_K, the fifth bits of the
/// levels `l` and `l + 32` of the `c`-th group of 64 in bits `2 c` and
/// `2 c + 1` of `qh[l]`.
pub(super) fn block_q5_k(
    d: f16,
    dmin: f16,
    scales: [u8; K_SCALE_SIZE],
    levels: &[u8; QK_K],
) -> BlockQ5K {
    let mut qs = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 8];
    for (c, (q, l)) in qs
        .chunks_exact_mut(32)
        .zip(levels.chunks_exact(64))
        .enumerate()
    {
        let (lo, hi) = l.split_at(32);
        for (((out, h), &a), &b) in q.iter_mut().zip(qh.iter_mut()).zip(lo).zip(hi) {
            *out = (a & 0x0f) | ((b & 0x0f) << 4);
            *h |= ((a >> 4) & 1) << (2 * c);
            *h |= ((b >> 4) & 1) << (2 * c + 1);
        }
    }
    BlockQ5K {
        d,
        dmin,
        scales,
        qh,
        qs,
    }
}

/// Quantizes 256 values to Q5_K.
pub fn quantize_block_q5_k(x: &[f32; QK_K]) -> BlockQ5K {
    let search = Search {
        nmax: 31,
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
        mad: false,
    };
    let (d, dmin, scales, levels) = quantize_k4_scales(x, &search);
    block_q5_k(d, dmin, scales, &levels)
}

/// Turns Q6_K's sixteen group scales (as [`group_scales`] returns them, with
/// the groups' levels) into 8-bit factors of one f16 scale, quantizes each
/// group of `x` again against its stored scale, and packs the block; all
/// zero when the largest scale counts as zero.
pub(super) fn finish_q6_k(
    x: &[f32; QK_K],
    mut levels: [u8; QK_K],
    (sub_scales, max_scale, max_abs_scale): ([f32; QK_K / 16], f32, f32),
) -> BlockQ6K {
    if max_abs_scale < GROUP_MAX_EPS {
        return BlockQ6K {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; QK_K / 16],
            d: f16::ZERO,
        };
    }

    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let scales = sub_scales.map(|s| nearest_int(iscale * s).clamp(-128, 127) as i8);
    for ((xs, ls), &sc) in x
        .chunks_exact(16)
        .zip(levels.chunks_exact_mut(16))
        .zip(&scales)
    {
        let dl = d.to_f32() * f32::from(sc);
        if dl == 0.0 {
            continue;
        }
        for (l, &v) in ls.iter_mut().zip(xs) {
            *l = (nearest_int(v / dl).clamp(-32, 31) + 32) as u8;
        }
    }

    let mut ql = [0u8; QK_K / 2];
    let mut qh = [0u8; QK_K / 4];
    for ((ql, qh), l) in ql
        .chunks_exact_mut(64)
        .zip(qh.chunks_exact_mut(32))
        .zip(levels.chunks_exact(128))
    {
        let (l01, l23) = l.split_at(64);
        let (l0, l1) = l01.split_at(32);
        let (l2, l3) = l23.split_at(32);
        let (ql_a, ql_b) = ql.split_at_mut(32);
        for (i, h) in qh.iter_mut().enumerate() {
            let (a, b, c, e) = (l0[i], l1[i], l2[i], l3[i]);
            ql_a[i] = (a & 0x0f) | ((c & 0x0f) << 4);
            ql_b[i] = (b & 0x0f) | ((e & 0x0f) << 4);
            *h = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
    BlockQ6K { ql, qh, scales, d }
}

/// Quantizes 256 values to Q6_K.
pub fn quantize_block_q6_k(x: &[f32; QK_K]) -> BlockQ6K {
    let mut levels = [0u8; QK_K];
    let scales = group_scales(x, &mut levels, |_, xs, ls| {
        make_qx_quants(xs, 32, &xs.map(|v| v * v), ls)
    });
    finish_q6_k(x, levels, scales)
}

/// Quantizes 256 values to Q8_K (f32 scale, per-16 sums of the quants).
pub fn quantize_block_q8_k(x: &[f32; QK_K]) -> BlockQ8K {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        return BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        };
    }
    let iscale = -127.0 / max;
    let qs = x.map(|v| nearest_int(iscale * v).clamp(-128, 127) as i8);
    let mut bsums = [0i16; QK_K / 16];
    for (s, q) in bsums.iter_mut().zip(qs.chunks_exact(16)) {
        *s = q.iter().map(|&v| i16::from(v)).sum();
    }
    BlockQ8K {
        d: 1.0 / iscale,
        qs,
        bsums,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_ties_to_even() {
        for x in [
            0.5f32,
            1.5,
            2.5,
            -0.5,
            -1.5,
            3.49,
            -3.51,
            4_194_303.0,
            -4_194_303.0,
            0.0,
            -0.0,
        ] {
            assert_eq!(nearest_int(x), x.round_ties_even() as i32, "{x}");
        }
        // Beyond 2^22, what ggml's computes: 2^22 + 0.5 wraps to -2^22.
        assert_eq!(nearest_int(4_194_304.5), -4_194_304);
        assert_eq!(nearest_int(f32::NAN), 0);
        assert_eq!(nearest_int(f32::INFINITY), -4_194_304);
    }
}
