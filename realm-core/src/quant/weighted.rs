//! Importance-weighted quantization: ggml's quantizers as llama-quantize runs
//! them with an importance matrix (`quantize_row_*_impl`).
//!
//! A column's importance (how much the model's activations lean on it)
//! scales the weight of that column's element in every search for a scale:
//! `importance * sqrt(sigma2 + x^2)`, where `sigma2` is the mean square of
//! the row for the legacy 32-element types, of the super-block for Q2_K and
//! twice that for Q3_K, Q4_K and Q5_K, and twice the mean square of the
//! block for IQ4_NL (32 values) and IQ4_XS (256). Q6_K weighs by the
//! importance alone.
//!
//! - Q4_0 and Q5_0 search each block's scale (`make_qx_quants`), Q4_1 and
//!   Q5_1 its scale and minimum (`make_qkx2_quants` with a finer grid of
//!   candidates, ggml's `make_qkx3_quants`).
//! - IQ4_NL and IQ4_XS search each 32-value block's scale against the
//!   non-linear table as without importance (`iq4`), with these weights.
//! - The k-quants fit each sub-block the same way, then quantize the
//!   sub-block scales (and minimums) themselves, each sub-block weighted by
//!   its total weight (`make_qp_quants` below; Q3_K's signed scales with
//!   `make_qx_quants`), and quantize the values once more against the scales
//!   as stored.
//!
//! Every float operation is the reference's, in its order and in f32, so the
//! bytes equal ggml's.

use half::f16;

use super::blocks::{
    BlockIQ4NL, BlockIQ4XS, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K,
    BlockQ5_0, BlockQ5_1, BlockQ6K, K_SCALE_SIZE, QK, QK_K,
};
use super::iq4::{block_iq4_nl, block_iq4_xs};
use super::kquantize::{
    block_q4_k, block_q5_k, finish_q2_k, finish_q3_k, finish_q6_k, group_scales, make_qkx2_quants,
    make_qx_quants, nearest_int, pack_k4_scales, pack_q3_scales, requantize_k4, Search,
    GROUP_MAX_EPS,
};
use super::legacy::{pack_4bit, pack_5bit};

/// The scale-and-minimum search ggml runs with an importance matrix (its
/// `make_qkx3_quants`): 37 candidate scales, squared errors.
fn search(nmax: i32) -> Search {
    Search {
        nmax,
        rmin: -0.9,
        rdelta: 0.05,
        nstep: 36,
        mad: false,
    }
}

/// The sum of the squares of `x`, added in order.
pub(super) fn sum_squares(x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for &v in x {
        sum += v * v;
    }
    sum
}

/// The sum of `w`, added in order from zero.
fn total(w: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for &v in w {
        sum += v;
    }
    sum
}

/// Each element's weight: its column's importance times `sqrt(sigma2 + x^2)`.
fn weights<const N: usize>(x: &[f32; N], importance: &[f32; N], sigma2: f32) -> [f32; N] {
    let mut w = [0.0f32; N];
    for ((w, &v), &q) in w.iter_mut().zip(x).zip(importance) {
        *w = q * (sigma2 + v * v).sqrt();
    }
    w
}

/// Quantizes `x` (sub-block scales or minimums, not negative in practice) to
/// levels `0..=nmax` standing for `scale * l`: picks the best of nine scales
/// by weighted squared error, then moves one level at a time while the
/// weighted fit improves (ggml's `make_qp_quants`). Writes the levels and
/// returns the scale. A negative value's level wraps into its byte, as in
/// ggml.
pub(super) fn make_qp_quants<const N: usize>(
    x: &[f32; N],
    nmax: i32,
    weights: &[f32; N],
    levels: &mut [u8; N],
) -> f32 {
    // The reference's `MAX(max, v)`: a NaN replaces the maximum, and is
    // replaced by the next value.
    let mut max = 0.0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        *levels = [0; N];
        return 0.0;
    }
    let top = nmax as f32;
    let mut iscale = top / max;
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for ((&l, &v), &w) in levels.iter().zip(x).zip(weights) {
        let diff = v - scale * f32::from(l);
        best_mse += w * diff * diff;
    }
    for is in (-4..=4).filter(|&is| is != 0) {
        let iscale_is = (0.1 * is as f32 + top) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for (&v, &w) in x.iter().zip(weights) {
            let l = nearest_int(iscale_is * v).min(nmax) as f32;
            let diff = v - scale_is * l;
            mse += w * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }

    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for ((out, &v), &w) in levels.iter_mut().zip(x).zip(weights) {
        let l = nearest_int(iscale * v).min(nmax);
        *out = l as u8;
        let l = l as f32;
        sumlx += w * v * l;
        suml2 += w * l * l;
    }
    for _ in 0..5 {
        let mut changed = false;
        for ((out, &v), &w) in levels.iter_mut().zip(x).zip(weights) {
            let l = f32::from(*out);
            let mut slx = sumlx - w * v * l;
            let mut sl2 = suml2 - w * l * l;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(v * sl2 / slx).min(nmax);
                if new_l != i32::from(*out) {
                    let nl = new_l as f32;
                    slx += w * v * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *out = new_l as u8;
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
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Quantizes 32 values to Q4_0, weighting by `importance`; `sigma2` is the
/// mean square of the whole row.
pub(super) fn quantize_block_q4_0(x: &[f32; QK], importance: &[f32; QK], sigma2: f32) -> BlockQ4_0 {
    let mut levels = [0u8; QK];
    let d = make_qx_quants(x, 8, &weights(x, importance, sigma2), &mut levels);
    BlockQ4_0 {
        d: f16::from_f32(d),
        qs: pack_4bit(&levels),
    }
}

/// Quantizes 32 values to Q4_1, weighting by `importance`; `sigma2` is the
/// mean square of the whole row.
pub(super) fn quantize_block_q4_1(x: &[f32; QK], importance: &[f32; QK], sigma2: f32) -> BlockQ4_1 {
    let mut levels = [0u8; QK];
    let w = weights(x, importance, sigma2);
    let (d, min) = make_qkx2_quants(x, &w, &search(15), &mut levels);
    BlockQ4_1 {
        d: f16::from_f32(d),
        m: f16::from_f32(-min),
        qs: pack_4bit(&levels),
    }
}

/// Quantizes 32 values to Q5_0, weighting by `importance`; `sigma2` is the
/// mean square of the whole row.
pub(super) fn quantize_block_q5_0(x: &[f32; QK], importance: &[f32; QK], sigma2: f32) -> BlockQ5_0 {
    let mut levels = [0u8; QK];
    let d = make_qx_quants(x, 16, &weights(x, importance, sigma2), &mut levels);
    let (qs, qh) = pack_5bit(&levels);
    BlockQ5_0 {
        d: f16::from_f32(d),
        qh,
        qs,
    }
}

/// Quantizes 32 values to Q5_1, weighting by `importance`; `sigma2` is the
/// mean square of the whole row.
pub(super) fn quantize_block_q5_1(x: &[f32; QK], importance: &[f32; QK], sigma2: f32) -> BlockQ5_1 {
    let mut levels = [0u8; QK];
    let w = weights(x, importance, sigma2);
    let (d, min) = make_qkx2_quants(x, &w, &search(31), &mut levels);
    let (qs, qh) = pack_5bit(&levels);
    BlockQ5_1 {
        d: f16::from_f32(d),
        m: f16::from_f32(-min),
        qh,
        qs,
    }
}

/// Fits each group of `G` values of a super-block (`NG` of them) to levels
/// `0..=nmax` standing for `scale * l - min`, weighting by `importance` and
/// `sigma2`. Writes the levels and returns each group's scale, minimum and
/// total weight.
fn fit_groups<const G: usize, const NG: usize>(
    x: &[f32; QK_K],
    importance: &[f32; QK_K],
    sigma2: f32,
    nmax: i32,
    levels: &mut [u8; QK_K],
) -> ([f32; NG], [f32; NG], [f32; NG]) {
    let mut fits = [(0.0f32, 0.0f32, 0.0f32); NG];
    let p = search(nmax);
    for (((fit, xs), qw), ls) in fits
        .iter_mut()
        .zip(x.as_chunks::<G>().0)
        .zip(importance.as_chunks::<G>().0)
        .zip(levels.as_chunks_mut::<G>().0)
    {
        let w = weights(xs, qw, sigma2);
        let (scale, min) = make_qkx2_quants(xs, &w, &p, ls);
        *fit = (scale, min, total(&w));
    }
    (fits.map(|f| f.0), fits.map(|f| f.1), fits.map(|f| f.2))
}

/// Quantizes 256 values to Q2_K, weighting by `importance`.
pub(super) fn quantize_block_q2_k(x: &[f32; QK_K], importance: &[f32; QK_K]) -> BlockQ2K {
    let mut levels = [0u8; QK_K];
    let sigma2 = sum_squares(x) / QK_K as f32;
    let (scales, mins, sw) = fit_groups::<16, { QK_K / 16 }>(x, importance, sigma2, 3, &mut levels);
    let mut ls = [0u8; QK_K / 16];
    let mut lm = [0u8; QK_K / 16];
    let d = make_qp_quants(&scales, 15, &sw, &mut ls);
    let dmin = make_qp_quants(&mins, 15, &sw, &mut lm);
    // Scales in the low nibble, mins in the high one.
    let mut packed = ls;
    for (p, &m) in packed.iter_mut().zip(&lm) {
        *p |= m << 4;
    }
    finish_q2_k(x, levels, packed, f16::from_f32(d), f16::from_f32(dmin))
}

/// Quantizes 256 values to Q3_K, weighting by `importance`.
pub(super) fn quantize_block_q3_k(x: &[f32; QK_K], importance: &[f32; QK_K]) -> BlockQ3K {
    let mut levels = [0u8; QK_K];
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let qw = importance.as_chunks::<16>().0;
    let mut sw = [0.0f32; QK_K / 16];
    let (scales, _, _) = group_scales(x, &mut levels, |j, xs, ls| {
        let w = weights(xs, &qw[j], sigma2);
        sw[j] = total(&w);
        make_qx_quants(xs, 4, &w, ls)
    });
    let mut ls = [0u8; QK_K / 16];
    let d = make_qx_quants(&scales, 32, &sw, &mut ls);
    finish_q3_k(x, levels, pack_q3_scales(&ls), f16::from_f32(d))
}

/// The shared part of the weighted Q4_K and Q5_K: each sub-block's scale and
/// minimum as 6-bit factors (clamped to 63 if `clamp`, as Q5_K does; Q4_K
/// packs them as they come), the two f16 super-scales, and every element's
/// level.
fn quantize_k4_weighted(
    x: &[f32; QK_K],
    importance: &[f32; QK_K],
    nmax: i32,
    clamp: bool,
) -> (f16, f16, [u8; K_SCALE_SIZE], [u8; QK_K]) {
    let mut levels = [0u8; QK_K];
    let sigma2 = 2.0 * sum_squares(x) / QK_K as f32;
    let (scales, mins, sw) =
        fit_groups::<32, { QK_K / 32 }>(x, importance, sigma2, nmax, &mut levels);
    let mut ls = [0u8; QK_K / 32];
    let mut lm = [0u8; QK_K / 32];
    let d = f16::from_f32(make_qp_quants(&scales, 63, &sw, &mut ls));
    let dmin = f16::from_f32(make_qp_quants(&mins, 63, &sw, &mut lm));
    if clamp {
        ls = ls.map(|l| l.min(63));
        lm = lm.map(|l| l.min(63));
    }
    let packed = pack_k4_scales(&ls, &lm);
    requantize_k4(x, &mut levels, d, dmin, &packed, nmax);
    (d, dmin, packed, levels)
}

/// Quantizes 256 values to Q4_K, weighting by `importance`.
pub(super) fn quantize_block_q4_k(x: &[f32; QK_K], importance: &[f32; QK_K]) -> BlockQ4K {
    let (d, dmin, scales, levels) = quantize_k4_weighted(x, importance, 15, false);
    block_q4_k(d, dmin, scales, &levels)
}

/// Quantizes 256 values to Q5_K, weighting by `importance`.
pub(super) fn quantize_block_q5_k(x: &[f32; QK_K], importance: &[f32; QK_K]) -> BlockQ5K {
    let (d, dmin, scales, levels) = quantize_k4_weighted(x, importance, 31, true);
    block_q5_k(d, dmin, scales, &levels)
}

/// Quantizes 256 values to Q6_K, weighting each group's scale search by
/// `importance` alone.
pub(super) fn quantize_block_q6_k(x: &[f32; QK_K], importance: &[f32; QK_K]) -> BlockQ6K {
    let mut levels = [0u8; QK_K];
    let qw = importance.as_chunks::<16>().0;
    let fit = group_scales(x, &mut levels, |j, xs, ls| {
        make_qx_quants(xs, 32, &qw[j], ls)
    });
    finish_q6_k(x, levels, fit)
}

/// Twice the mean square of `x`, as ggml's IQ4 quantizers scale it (the sum
/// times `2 / N`).
fn iq4_sigma2<const N: usize>(x: &[f32; N]) -> f32 {
    sum_squares(x) * (2.0 / N as f32)
}

/// Quantizes 32 values to IQ4_NL, weighting by `importance`.
pub(super) fn quantize_block_iq4_nl(x: &[f32; QK], importance: &[f32; QK]) -> BlockIQ4NL {
    block_iq4_nl(x, &weights(x, importance, iq4_sigma2(x)))
}

/// Quantizes 256 values to IQ4_XS, weighting by `importance`.
pub(super) fn quantize_block_iq4_xs(x: &[f32; QK_K], importance: &[f32; QK_K]) -> BlockIQ4XS {
    let sigma2 = iq4_sigma2(x);
    let qw = importance.as_chunks::<QK>().0;
    block_iq4_xs(x, |ib, xb| weights(xb, &qw[ib], sigma2))
}
