//! Quantizing to IQ1_S and IQ1_M: ggml's exhaustive splits of each group
//! into the values -1, 0 and 1 (`quantize_row_iq1_*_impl`), byte for byte.
//!
//! IQ1's values are `d * scale * (v + shift)` for `v` in -1, 0, 1 and a
//! shift of +1/8 or -1/8 (one a group of 32 for IQ1_S; for IQ1_M one a
//! point of 8, chosen a half-group of 8 at a time). With three values the
//! best weighted fit is found exactly: sort the group, and try every pair
//! of split points between -1, 0 and 1 (and each shift), from prefix sums
//! of `w x` and `w`. The levels are then moved to the lattice (IQ1's 2048
//! points of 8), a point off it to its best neighbour at the fitted scale,
//! and the scale fitted again. Group scales are 3 bits against the block's
//! largest; IQ1_M fits the block's factor once more to the stored scales.
//!
//! Each value's weight is `importance * sqrt(sigma2 + x^2)` (`sigma2` twice
//! the block's mean square); IQ1_M without an importance matrix uses `x^2`,
//! IQ1_S has no quantizer without one (ggml asserts one).
//!
//! Every float operation is the reference's, in its order and in f32, and
//! the sort is stable (glibc's `qsort` of ggml's 32 or 16 pairs is a merge
//! sort), so the bytes equal ggml's.

use half::f16;

use super::blocks::{BlockIQ1M, BlockIQ1S, QK_K};
use super::kquantize::nearest_int;
use super::lattice::{self, Lattice};
use super::lattice_quantize::{block_sigma2, ggml_max};

/// IQ1's shift.
const DELTA: f32 = 0.125;
/// The values with the shift added.
const X_P: [f32; 3] = [-1.0 + DELTA, DELTA, 1.0 + DELTA];
/// The values with the shift taken off.
const X_M: [f32; 3] = [-1.0 - DELTA, -DELTA, 1.0 - DELTA];

/// Below these a group's largest magnitude counts as zero.
const GROUP_MAX_EPS_IQ1_S: f32 = 1e-12;
const GROUP_MAX_EPS_IQ1_M: f32 = 1e-7;

/// The largest magnitude of `x`, as ggml's running `MAX` of `fabsf`.
fn largest_abs(x: &[f32]) -> f32 {
    x[1..]
        .iter()
        .fold(x[0].abs(), |max, &v| ggml_max(max, v.abs()))
}

/// The group's indices ordered by value, ties (-0 and 0 among them) in
/// index order; NaNs last (ggml's comparison calls a NaN equal to
/// anything, which orders nothing; any order of them is as meaningless).
fn sorted_indices<const N: usize>(xb: &[f32]) -> [usize; N] {
    let mut idx: [usize; N] = std::array::from_fn(|i| i);
    idx.sort_by(|&a, &b| {
        let (a, b) = (xb[a], xb[b]);
        match (a.is_nan(), b.is_nan()) {
            (false, false) => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
            (nan_a, nan_b) => nan_a.cmp(&nan_b),
        }
    });
    idx
}

/// Writes levels 0, 1 and 2 (-1, 0, 1) by the split points `i1 <= i2` of
/// the sorted order.
fn split_levels(idx: &[usize], i1: usize, i2: usize, levels: &mut [i8]) {
    for (j, &i) in idx.iter().enumerate() {
        levels[i] = if j < i1 {
            0
        } else if j < i2 {
            1
        } else {
            2
        };
    }
}

/// Replaces one point's levels with the neighbour in `near` whose values
/// `xx[l]` at `scale` are closest to `xb`, by squared error weighted by
/// `weight` (ggml's `iq1_find_best_neighbour2`); returns its index, or
/// `None` when no error is finite (non-finite input).
fn best_neighbour(
    lat: &Lattice,
    near: &[u16],
    xb: &[f32],
    weight: &[f32],
    scale: f32,
    xx: &[f32; 3],
    levels: &mut [i8],
) -> Option<u16> {
    let mut best_d2 = f32::MAX;
    let mut best = None;
    for &j in near {
        let mut d2 = 0.0f32;
        for ((&g, &x), &w) in lat.point(j).iter().zip(xb).zip(weight) {
            let q = xx[((g - 1) / 2) as usize];
            let diff = scale * q - x;
            d2 += w * diff * diff;
        }
        if d2 < best_d2 {
            best_d2 = d2;
            best = Some(j);
        }
    }
    let j = best?;
    lat.levels_of(j, levels);
    Some(j)
}

/// The grid index of one point's levels, moving it to its best neighbour
/// when it is off the grid; `on_grid` is cleared then. Non-finite input
/// may leave no neighbour: point 0.
#[allow(clippy::too_many_arguments)]
fn point_index(
    lat: &Lattice,
    xb: &[f32],
    weight: &[f32],
    scale: f32,
    xx: &[f32; 3],
    levels: &mut [i8],
    on_grid: &mut bool,
) -> u16 {
    match lat.find(levels) {
        Ok(j) => j,
        Err(near) => {
            *on_grid = false;
            best_neighbour(lat, near, xb, weight, scale, xx, levels).unwrap_or(0)
        }
    }
}

/// `(sum w q x, sum w q^2)` of the points `index` read as `xx_of(k)`'s
/// values.
fn refit_sums(
    lat: &Lattice,
    index: &[u16],
    xb: &[f32],
    weight: &[f32],
    xx_of: impl Fn(usize) -> &'static [f32; 3],
) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for (k, &j) in index.iter().enumerate() {
        let xx = xx_of(k);
        for ((&g, &x), &w) in lat.point(j).iter().zip(&xb[8 * k..]).zip(&weight[8 * k..]) {
            let q = xx[((g - 1) / 2) as usize];
            sumqx += w * q * x;
            sumq2 += w * q * q;
        }
    }
    (sumqx, sumq2)
}

/// Places a group's best split on the lattice: levels 0, 1 and 2 by the
/// split points of the sorted order `idx`, turned over with the scale if
/// it is negative (the caller turns its shifts), each point of 8 moved to
/// its best neighbour at the fitted scale if it is off the grid (point
/// `k`'s values `values(k)`), and the scale fitted again if any was.
/// Returns the points' grid indices (the first `idx.len() / 8`) and the
/// scale.
fn place(
    lat: &Lattice,
    idx: &[usize],
    (i1, i2): (usize, usize),
    mut scale: f32,
    xb: &[f32],
    weight: &[f32],
    values: impl Fn(usize) -> &'static [f32; 3],
) -> ([u16; 4], f32) {
    let n = idx.len();
    let mut levels = [0i8; 32];
    split_levels(idx, i1, i2, &mut levels[..n]);
    if scale < 0.0 {
        for l in &mut levels[..n] {
            *l = 2 - *l;
        }
        scale = -scale;
    }
    let mut on_grid = true;
    let mut index = [0u16; 4];
    for (k, l) in levels[..n].chunks_exact_mut(8).enumerate() {
        let r = 8 * k..8 * k + 8;
        index[k] = point_index(
            lat,
            &xb[r.clone()],
            &weight[r],
            scale,
            values(k),
            l,
            &mut on_grid,
        );
    }
    if !on_grid {
        let (sumqx, sumq2) = refit_sums(lat, &index[..n / 8], xb, weight, values);
        if sumqx > 0.0 && sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    (index, scale)
}

/// Quantizes 256 values to IQ1_S with a block of the importance matrix.
pub(super) fn quantize_block_iq1_s(x: &[f32; QK_K], importance: &[f32; QK_K]) -> BlockIQ1S {
    const BS: usize = 32;
    let lat = lattice::iq1s();
    let sigma2 = block_sigma2(x, 2.0);
    let mut block = BlockIQ1S {
        d: f16::ZERO,
        qs: [0; QK_K / 8],
        qh: [0; QK_K / 32],
    };
    let mut scales = [0.0f32; QK_K / BS];
    let mut shifts = [1i8; QK_K / BS];
    let mut max_scale = 0.0f32;
    for ib in 0..QK_K / BS {
        let xb = &x[BS * ib..][..BS];
        let qw = &importance[BS * ib..][..BS];
        let mut weight = [0.0f32; BS];
        for ((w, &v), &q) in weight.iter_mut().zip(xb).zip(qw) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        if largest_abs(xb) < GROUP_MAX_EPS_IQ1_S {
            continue;
        }
        let idx = sorted_indices::<BS>(xb);
        let mut sumx = [0.0f32; BS + 1];
        let mut sumw = [0.0f32; BS + 1];
        for (j, &i) in idx.iter().enumerate() {
            sumx[j + 1] = sumx[j] + weight[i] * xb[i];
            sumw[j + 1] = sumw[j] + weight[i];
        }
        let mut best_score = -f32::MAX;
        let mut scale = 0.0f32;
        let mut best: Option<(usize, usize, i8)> = None;
        for i1 in 0..=BS {
            for i2 in i1..=BS {
                for (xv, shift) in [(&X_P, 1i8), (&X_M, -1)] {
                    let sumqx = (sumx[i1] - sumx[0]) * xv[0]
                        + (sumx[i2] - sumx[i1]) * xv[1]
                        + (sumx[BS] - sumx[i2]) * xv[2];
                    let sumq2 = (sumw[i1] - sumw[0]) * xv[0] * xv[0]
                        + (sumw[i2] - sumw[i1]) * xv[1] * xv[1]
                        + (sumw[BS] - sumw[i2]) * xv[2] * xv[2];
                    if sumq2 > 0.0 && sumqx * sumqx > best_score * sumq2 {
                        scale = sumqx / sumq2;
                        best_score = scale * sumqx;
                        best = Some((i1, i2, shift));
                    }
                }
            }
        }
        let Some((i1, i2, mut shift)) = best else {
            continue;
        };
        if scale < 0.0 {
            shift = -shift;
        }
        let xx: &'static [f32; 3] = if shift == 1 { &X_P } else { &X_M };
        let (index, scale) = place(lat, &idx, (i1, i2), scale, xb, &weight, |_| xx);
        let mut h = 0u16;
        for (k, &j) in index.iter().enumerate() {
            block.qs[(BS / 8) * ib + k] = (j & 255) as u8;
            h |= (j >> 8) << (3 * k);
        }
        block.qh[ib] = h;
        scales[ib] = scale;
        shifts[ib] = shift;
        max_scale = ggml_max(max_scale, scale);
    }
    if max_scale == 0.0 {
        return block;
    }
    let d = max_scale / 15.0;
    block.d = f16::from_f32(d * 1.125);
    let id = 1.0 / d;
    for ib in 0..QK_K / BS {
        let mut l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7) as u16;
        if shifts[ib] == -1 {
            l |= 8;
        }
        block.qh[ib] |= l << 12;
    }
    block
}

/// The values of half `k` (0 or 1) of an IQ1_M group of 16 under shift
/// choice `shift`: 0 both +, 1 first + second -, 2 first - second +, 3
/// both -.
fn iq1m_values(shift: usize, k: usize) -> &'static [f32; 3] {
    let plus = if k == 0 {
        shift < 2
    } else {
        shift.is_multiple_of(2)
    };
    if plus {
        &X_P
    } else {
        &X_M
    }
}

/// Quantizes 256 values to IQ1_M, with a block of the importance matrix or
/// without.
pub(super) fn quantize_block_iq1_m(x: &[f32; QK_K], importance: Option<&[f32; QK_K]>) -> BlockIQ1M {
    const BS: usize = 16;
    const MASKS: [u8; 4] = [0x00, 0x80, 0x08, 0x88];
    let lat = lattice::iq1s();
    let sigma2 = block_sigma2(x, 2.0);
    let weights = |ib: usize, w: &mut [f32; BS]| {
        let xb = &x[BS * ib..][..BS];
        match importance {
            Some(imp) => {
                for ((w, &v), &q) in w.iter_mut().zip(xb).zip(&imp[BS * ib..][..BS]) {
                    *w = q * (sigma2 + v * v).sqrt();
                }
            }
            None => {
                for (w, &v) in w.iter_mut().zip(xb) {
                    *w = v * v;
                }
            }
        }
    };
    let mut block = BlockIQ1M {
        qs: [0; QK_K / 8],
        qh: [0; QK_K / 16],
        scales: [0; QK_K / 32],
    };
    let mut scales = [0.0f32; QK_K / BS];
    let mut shifts = [0usize; QK_K / BS];
    let mut max_scale = 0.0f32;
    // The quadratic terms of the values, per unit of weight.
    let (p2, m2) = (X_P[2], X_M[2]);
    let cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1];
    let cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2];
    let cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1];
    let cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2];
    for ib in 0..QK_K / BS {
        let xb = &x[BS * ib..][..BS];
        let mut weight = [0.0f32; BS];
        weights(ib, &mut weight);
        if largest_abs(xb) < GROUP_MAX_EPS_IQ1_M {
            continue;
        }
        let idx = sorted_indices::<BS>(xb);
        // Prefix sums of the sorted order, each half of the group apart.
        let mut px = [[0.0f32; BS + 1]; 2];
        let mut pw = [[0.0f32; BS + 1]; 2];
        for (j, &i) in idx.iter().enumerate() {
            let h = usize::from(i >= BS / 2);
            px[h][j + 1] = px[h][j] + weight[i] * xb[i];
            px[1 - h][j + 1] = px[1 - h][j];
            pw[h][j + 1] = pw[h][j] + weight[i];
            pw[1 - h][j + 1] = pw[1 - h][j];
        }
        let txs = [px[0][BS], px[1][BS]];
        let tws = [pw[0][BS], pw[1][BS]];
        let mut best_score = -f32::MAX;
        let mut scale = 0.0f32;
        let mut best: Option<(usize, usize, usize)> = None;
        for i1 in 0..=BS {
            for i2 in i1..=BS {
                let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) =
                    ([0.0f32; 2], [0.0f32; 2], [0.0f32; 2], [0.0f32; 2]);
                for h in 0..2 {
                    let sx = px[h][i1] + px[h][i2];
                    qx_p[h] = txs[h] * p2 - sx;
                    qx_m[h] = txs[h] * m2 - sx;
                    q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                    q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
                }
                let sumqx = [
                    qx_p[0] + qx_p[1],
                    qx_p[0] + qx_m[1],
                    qx_m[0] + qx_p[1],
                    qx_m[0] + qx_m[1],
                ];
                let sumq2 = [
                    q2_p[0] + q2_p[1],
                    q2_p[0] + q2_m[1],
                    q2_m[0] + q2_p[1],
                    q2_m[0] + q2_m[1],
                ];
                for k in 0..4 {
                    if sumq2[k] > 0.0 && sumqx[k] * sumqx[k] > best_score * sumq2[k] {
                        scale = sumqx[k] / sumq2[k];
                        best_score = scale * sumqx[k];
                        best = Some((i1, i2, k));
                    }
                }
            }
        }
        let Some((i1, i2, mut shift)) = best else {
            continue;
        };
        if scale < 0.0 {
            shift = 3 - shift;
        }
        let (index, scale) = place(lat, &idx, (i1, i2), scale, xb, &weight, |k| {
            iq1m_values(shift, k)
        });
        block.qs[2 * ib] = (index[0] & 255) as u8;
        block.qs[2 * ib + 1] = (index[1] & 255) as u8;
        block.qh[ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) as u8;
        scales[ib] = scale;
        shifts[ib] = shift;
        max_scale = ggml_max(max_scale, scale);
    }
    if max_scale == 0.0 {
        return block;
    }
    let mut sc = [0u16; 4];
    let mut d = max_scale / 15.0;
    let id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    // The block's factor fitted to the scales and points as stored
    // (skipped groups too: they read as point 0 at scale code 0).
    for ib in 0..QK_K / BS {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
        sc[ib / 4] |= (l as u16) << (3 * (ib % 4));
        block.qh[ib] |= MASKS[shifts[ib]];
        let mut weight = [0.0f32; BS];
        weights(ib, &mut weight);
        let xb = &x[BS * ib..][..BS];
        let qh = u16::from(block.qh[ib]);
        for k in 0..2 {
            let xx = iq1m_values(shifts[ib], k);
            let j = u16::from(block.qs[2 * ib + k]) + ((qh << (8 - 4 * k)) & 0x700);
            for ((&g, &v), &w) in lat.point(j).iter().zip(&xb[8 * k..]).zip(&weight[8 * k..]) {
                let q = xx[((g - 1) / 2) as usize] * (2 * l + 1) as f32;
                sumqx += w * q * v;
                sumq2 += w * q * q;
            }
        }
    }
    if sumq2 > 0.0 {
        d = sumqx / sumq2;
    }
    let s = f16::from_f32(d * 1.1125).to_bits();
    sc[0] |= (s & 0x000f) << 12;
    sc[1] |= (s & 0x00f0) << 8;
    sc[2] |= (s & 0x0f00) << 4;
    sc[3] |= s & 0xf000;
    block.scales = bytemuck::cast(sc.map(u16::to_le_bytes));
    block
}
