//! Quantizing to IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S: ggml's searches
//! over the lattices' neighbours (`quantize_row_iq*_impl`), byte for byte.
//!
//! Each group of 16 or 32 values is quantized as magnitudes on a lattice
//! (8 or 4 coordinates a point, [`super::lattice`]) times a group scale,
//! with the signs kept apart. The search tries a range of scales; at each,
//! every point's levels are rounded, and a point that falls off the grid is
//! replaced by the neighbour with the least weighted squared error; the
//! scale whose least-squares fit explains the most is kept, and the points
//! off the grid are fitted once more to it. The group scales are then
//! quantized to 4 bits against the block's largest (`d = max / 31`, times
//! a small factor each type's author tuned).
//!
//! Each value's weight in the fits is `x^2` without an importance matrix
//! (IQ2_S: `sigma2 / 4 + x^2`, `sigma2` twice the block's mean square), and
//! with one `importance * sqrt(sigma2 + x^2)` (`sigma2` the block's mean
//! square for IQ2_XXS and IQ2_XS, twice it for the others). IQ2_XXS and
//! IQ2_XS have no quantizer without importance (ggml asserts one).
//!
//! The types with 7 sign bits an 8 values (IQ2_XXS, IQ2_XS, IQ3_XXS) store
//! an even number of minus signs: where the count is odd, the value that
//! matters least flips sign and is fitted as a negative magnitude.
//!
//! Every float operation is the reference's, in its order and in f32, so the
//! bytes equal ggml's. Where ggml's code has a quirk that shows in the bytes
//! it is kept (IQ3_S, below), so files match llama-quantize's.

use half::f16;

use super::blocks::{BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS, QK_K};
use super::kquantize::{nearest_int, GROUP_MAX_EPS};
use super::lattice::{self, Lattice};
use super::weighted::{make_qp_quants, sum_squares};

/// Below this a group's largest magnitude counts as zero (IQ3_XXS, IQ2_S).
const GROUP_MAX_EPS_1E8: f32 = 1e-8;

/// Which points the search fits once more to the chosen scale.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Refit {
    /// All of them, whenever the scale is positive (IQ2_XXS).
    Always,
    /// All of them, when the chosen scale left some off the grid (IQ3_S).
    AllIfOffGrid,
    /// Only those the chosen scale left off the grid (the others).
    OffGrid,
}

/// A type's search for a group's scale.
struct Search {
    /// Levels a coordinate: 3 (IQ2) or 8 (IQ3).
    kmax: i32,
    /// Candidates `-steps..=steps`.
    steps: i32,
    /// The step between candidates, in levels.
    step: f32,
    /// Which points are fitted again.
    refit: Refit,
    /// Whether points count as on the grid before any candidate wins.
    on_grid_start: bool,
}

/// The weighted fit of levels to magnitudes: `(sum w x q, sum w q^2)` for
/// `q = 2 l + 1`.
fn fit_sums(weight: &[f32], xval: &[f32], levels: &[i8]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for ((&w, &x), &l) in weight.iter().zip(xval).zip(levels) {
        let q = f32::from(2 * l + 1);
        sumqx += w * x * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// Replaces `levels` (one point) with the neighbour in `near` closest to
/// `xval` at `scale`, by squared error weighted by `waux`; the first of
/// equals wins. With no finite error (non-finite input) the levels stay.
fn best_neighbour(
    lat: &Lattice,
    near: &[u16],
    xval: &[f32],
    waux: &[f32],
    scale: f32,
    levels: &mut [i8],
) {
    let mut best_d2 = f32::MAX;
    let mut best = None;
    for &j in near {
        let mut d2 = 0.0f32;
        for ((&g, &x), &w) in lat.point(j).iter().zip(xval).zip(waux) {
            let diff = scale * f32::from(g) - x;
            d2 += w * diff * diff;
        }
        if d2 < best_d2 {
            best_d2 = d2;
            best = Some(j);
        }
    }
    if let Some(j) = best {
        lat.levels_of(j, levels);
    }
}

/// Rounds `xval` to levels at inverse scale `id` into `levels`, one point
/// at a time, moving each point off the grid to its best neighbour at
/// `scale`. Points in `skip` are left as they are; `on_grid` says which of
/// the others were on the grid.
#[allow(clippy::too_many_arguments)]
fn round_points(
    lat: &Lattice,
    kmax: i32,
    xval: &[f32],
    waux: &[f32],
    id: f32,
    scale: f32,
    levels: &mut [i8],
    skip: &[bool],
    on_grid: &mut [bool],
) {
    let dim = lat.dim();
    for (k, ((x, w), l)) in xval
        .chunks_exact(dim)
        .zip(waux.chunks_exact(dim))
        .zip(levels.chunks_exact_mut(dim))
        .enumerate()
    {
        if skip[k] {
            continue;
        }
        for (l, &x) in l.iter_mut().zip(x) {
            *l = nearest_int(0.5 * (id * x - 1.0)).clamp(0, kmax - 1) as i8;
        }
        on_grid[k] = match lat.find(l) {
            Ok(_) => true,
            Err(near) => {
                best_neighbour(lat, near, x, w, scale, l);
                false
            }
        };
    }
}

/// Searches one group's scale: candidates around `top / (2 kmax - 1)` for
/// `top` the group's largest magnitude (IQ2_XXS: an effective maximum),
/// `scale` the scale to keep if none fits. Writes the group's levels (all
/// on the grid) and returns its scale.
#[allow(clippy::too_many_arguments)]
fn search_group(
    lat: &Lattice,
    p: &Search,
    xval: &[f32],
    weight: &[f32],
    waux: &[f32],
    top: f32,
    mut scale: f32,
    levels: &mut [i8],
) -> f32 {
    let n = xval.len();
    let points = n / lat.dim();
    let mut best = 0.0f32;
    let mut on_grid = [p.on_grid_start; 8];
    let mut aux = [0i8; 32];
    let mut on_grid_aux = [true; 8];
    let none = [false; 8];
    for is in -p.steps..=p.steps {
        let id = ((2 * p.kmax - 1) as f32 + is as f32 * p.step) / top;
        let this_scale = 1.0 / id;
        round_points(
            lat,
            p.kmax,
            xval,
            waux,
            id,
            this_scale,
            &mut aux[..n],
            &none,
            &mut on_grid_aux,
        );
        let (sumqx, sumq2) = fit_sums(weight, xval, &aux[..n]);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            levels.copy_from_slice(&aux[..n]);
            on_grid = on_grid_aux;
        }
    }
    let off_grid = on_grid[..points].iter().any(|&g| !g);
    let refit = scale > 0.0
        && match p.refit {
            Refit::Always => true,
            Refit::AllIfOffGrid | Refit::OffGrid => off_grid,
        };
    if refit {
        let skip = if p.refit == Refit::OffGrid {
            on_grid
        } else {
            none
        };
        let id = 1.0 / scale;
        round_points(
            lat,
            p.kmax,
            xval,
            waux,
            id,
            scale,
            levels,
            &skip,
            &mut on_grid_aux,
        );
        let (sumqx, sumq2) = fit_sums(weight, xval, levels);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    scale
}

/// The grid index of a point's levels. Only non-finite input leaves a
/// point off the grid (ggml aborts there); it reads as point 0.
fn grid_index(lat: &Lattice, levels: &[i8]) -> u16 {
    lat.find(levels).unwrap_or(0)
}

/// A group's values as magnitudes and sign bits, 8 values a byte. With
/// `even`, each 8's count of minus signs is made even by fitting the value
/// with the least `weight * x^2` as a negative magnitude (its sign bit
/// flipped), and the bytes keep 7 bits.
fn magnitudes(xb: &[f32], weight: &[f32], even: bool, xval: &mut [f32], signs: &mut [u8]) {
    for (k, s_out) in signs.iter_mut().enumerate() {
        let r = 8 * k..8 * k + 8;
        let mut s = 0u8;
        let mut flips = 0;
        for (i, (v, &x)) in xval[r.clone()].iter_mut().zip(&xb[r.clone()]).enumerate() {
            if x >= 0.0 {
                *v = x;
            } else {
                *v = -x;
                flips += 1;
                s |= 1 << i;
            }
        }
        if even && flips % 2 == 1 {
            let (x, w) = (&xb[r.clone()], &weight[r.clone()]);
            let mut imin = 0;
            let mut min = w[0] * x[0] * x[0];
            for i in 1..8 {
                let ax = w[i] * x[i] * x[i];
                if ax < min {
                    min = ax;
                    imin = i;
                }
            }
            xval[8 * k + imin] = -xval[8 * k + imin];
            s ^= 1 << imin;
        }
        *s_out = if even { s & 127 } else { s };
    }
}

/// ggml's `MAX(a, b)`: `b` unless `a` is larger (a NaN `a` gives `b`).
pub(super) fn ggml_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// ggml's running `MAX` over `x`, from its first value.
fn largest(x: &[f32]) -> f32 {
    x[1..].iter().fold(x[0], |max, &v| ggml_max(max, v))
}

/// Each value's weight: `importance * sqrt(sigma2 + x^2)` with an
/// importance, else `base + x^2`.
fn group_weights(xb: &[f32], importance: Option<&[f32]>, sigma2: f32, base: f32, w: &mut [f32]) {
    match importance {
        Some(qw) => {
            for ((w, &x), &q) in w.iter_mut().zip(xb).zip(qw) {
                *w = q * (sigma2 + x * x).sqrt();
            }
        }
        None => {
            for (w, &x) in w.iter_mut().zip(xb) {
                *w = base + x * x;
            }
        }
    }
}

/// The 4-bit code of group scale `scale` against inverse block factor
/// `id`: the scale stands for `d * (2 l + 1)`.
fn scale_code(id: f32, scale: f32) -> u8 {
    nearest_int(0.5 * (id * scale - 1.0)).clamp(0, 15) as u8
}

/// `sigma2` of a block: `factor` times its mean square.
pub(super) fn block_sigma2(x: &[f32; QK_K], factor: f32) -> f32 {
    factor * sum_squares(x) / QK_K as f32
}

/// How a type fits one group of 16 or 32 values.
struct GroupFit {
    lat: &'static Lattice,
    search: Search,
    /// Sign bytes of 7 bits with an even count of minus signs (IQ2_XXS,
    /// IQ2_XS, IQ3_XXS), or of 8.
    even: bool,
    /// Below this the group's largest magnitude counts as zero; `None`:
    /// only zero does (IQ3_S).
    eps: Option<f32>,
    /// The search starts from ggml's `make_qp_quants` fit (IQ2_XXS) rather
    /// than from `max / (2 kmax - 1)`.
    qp_start: bool,
    /// Each value's weight without importance, `base + x^2`.
    base: f32,
}

/// A fitted group: its points' grid indices and sign bytes (the first
/// `n / dim` and `n / 8` used), and its scale.
struct Fitted {
    index: [u16; 8],
    signs: [u8; 4],
    scale: f32,
}

impl GroupFit {
    /// Fits the group `xb` (16 or 32 values) with its importance, if any,
    /// and the block's `sigma2`; `None` for a group that counts as zero.
    fn fit(&self, xb: &[f32], importance: Option<&[f32]>, sigma2: f32) -> Option<Fitted> {
        let n = xb.len();
        let mut weight = [0.0f32; 32];
        let weight = &mut weight[..n];
        group_weights(xb, importance, sigma2, self.base, weight);
        let mut waux = [0.0f32; 32];
        for (a, &w) in waux.iter_mut().zip(weight.iter()) {
            *a = w.sqrt();
        }
        let mut xval = [0.0f32; 32];
        let mut signs = [0u8; 4];
        magnitudes(xb, weight, self.even, &mut xval[..n], &mut signs[..n / 8]);
        let max = largest(&xval[..n]);
        let zero = match self.eps {
            Some(eps) => max < eps,
            None => max == 0.0,
        };
        if zero {
            return None;
        }
        let kmax = self.search.kmax;
        let (top, start) = match (self.qp_start, <&[f32; 32]>::try_from(&xval[..n])) {
            (true, Ok(x32)) => {
                let w32 = <&[f32; 32]>::try_from(&*weight).ok()?;
                let start = make_qp_quants(x32, kmax + 1, w32, &mut [0u8; 32]);
                let eff_max = start * kmax as f32;
                if eff_max <= 0.0 {
                    return None;
                }
                (eff_max, start)
            }
            _ => (max, max / (2 * kmax - 1) as f32),
        };
        let mut levels = [0i8; 32];
        let mut scale = search_group(
            self.lat,
            &self.search,
            &xval[..n],
            weight,
            &waux[..n],
            top,
            start,
            &mut levels[..n],
        );
        if scale < 0.0 {
            scale = -scale;
            for s in &mut signs {
                *s = if self.even { !*s & 127 } else { !*s };
            }
        }
        let mut index = [0u16; 8];
        for (i, l) in index
            .iter_mut()
            .zip(levels[..n].chunks_exact(self.lat.dim()))
        {
            *i = grid_index(self.lat, l);
        }
        Some(Fitted {
            index,
            signs,
            scale,
        })
    }
}

/// The IQ2 types' search: 3 levels a coordinate.
fn iq2_search(steps: i32, refit: Refit) -> Search {
    Search {
        kmax: 3,
        steps,
        step: 0.1,
        refit,
        on_grid_start: true,
    }
}

/// Quantizes 256 values to IQ2_XXS with a block of the importance matrix.
pub(super) fn quantize_block_iq2_xxs(x: &[f32; QK_K], importance: &[f32; QK_K]) -> BlockIQ2XXS {
    let fit = GroupFit {
        lat: lattice::iq2xxs(),
        search: iq2_search(6, Refit::Always),
        even: true,
        eps: Some(GROUP_MAX_EPS),
        qp_start: true,
        base: 0.0,
    };
    let sigma2 = block_sigma2(x, 1.0);
    let mut q2 = [0u32; QK_K / 16];
    let mut scales = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    for ib in 0..QK_K / 32 {
        let (xb, qw) = (&x[32 * ib..][..32], &importance[32 * ib..][..32]);
        let Some(f) = fit.fit(xb, Some(qw), sigma2) else {
            continue;
        };
        for k in 0..4 {
            q2[2 * ib] |= u32::from(f.index[k]) << (8 * k);
            q2[2 * ib + 1] |= u32::from(f.signs[k]) << (7 * k);
        }
        scales[ib] = f.scale;
        max_scale = ggml_max(max_scale, f.scale);
    }
    if max_scale == 0.0 {
        return BlockIQ2XXS {
            d: f16::ZERO,
            qs: [0; QK_K / 8],
        };
    }
    let d = max_scale / 31.0;
    let id = 1.0 / d;
    for (ib, &s) in scales.iter().enumerate() {
        q2[2 * ib + 1] |= u32::from(scale_code(id, s)) << 28;
    }
    BlockIQ2XXS {
        d: f16::from_f32(d),
        qs: bytemuck::cast(q2),
    }
}

/// Quantizes 256 values to IQ2_XS with a block of the importance matrix.
pub(super) fn quantize_block_iq2_xs(x: &[f32; QK_K], importance: &[f32; QK_K]) -> BlockIQ2XS {
    let fit = GroupFit {
        lat: lattice::iq2xs(),
        search: iq2_search(9, Refit::OffGrid),
        even: true,
        eps: Some(GROUP_MAX_EPS),
        qp_start: false,
        base: 0.0,
    };
    let sigma2 = block_sigma2(x, 1.0);
    let mut qs = [0u16; QK_K / 8];
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    for ib in 0..QK_K / 16 {
        let (xb, qw) = (&x[16 * ib..][..16], &importance[16 * ib..][..16]);
        let Some(f) = fit.fit(xb, Some(qw), sigma2) else {
            continue;
        };
        for k in 0..2 {
            qs[2 * ib + k] = f.index[k] | (u16::from(f.signs[k]) << 9);
        }
        scales[ib] = f.scale;
        max_scale = ggml_max(max_scale, f.scale);
    }
    let mut block = BlockIQ2XS {
        d: f16::ZERO,
        qs: [0; QK_K / 8],
        scales: [0; QK_K / 32],
    };
    if max_scale == 0.0 {
        return block;
    }
    let d = max_scale / 31.0;
    let id = 1.0 / d;
    block.d = f16::from_f32(d);
    block.qs = qs;
    for (ib, &s) in scales.iter().enumerate() {
        block.scales[ib / 2] |= scale_code(id, s) << (4 * (ib % 2));
    }
    block
}

/// Quantizes 256 values to IQ2_S, with a block of the importance matrix or
/// without.
pub(super) fn quantize_block_iq2_s(x: &[f32; QK_K], importance: Option<&[f32; QK_K]>) -> BlockIQ2S {
    let sigma2 = block_sigma2(x, 2.0);
    let fit = GroupFit {
        lat: lattice::iq2s(),
        search: iq2_search(9, Refit::OffGrid),
        even: false,
        eps: Some(GROUP_MAX_EPS_1E8),
        qp_start: false,
        base: 0.25 * sigma2,
    };
    let mut block = BlockIQ2S {
        d: f16::ZERO,
        qs: [0; QK_K / 4],
        qh: [0; QK_K / 32],
        scales: [0; QK_K / 32],
    };
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    for ib in 0..QK_K / 16 {
        let xb = &x[16 * ib..][..16];
        let Some(f) = fit.fit(xb, importance.map(|w| &w[16 * ib..][..16]), sigma2) else {
            continue;
        };
        for k in 0..2 {
            let i8 = 2 * ib + k;
            block.qs[i8] = (f.index[k] & 255) as u8;
            block.qh[i8 / 4] |= ((f.index[k] >> 8) as u8) << (2 * (i8 % 4));
            block.qs[QK_K / 8 + i8] = f.signs[k];
        }
        scales[ib] = f.scale;
        max_scale = ggml_max(max_scale, f.scale);
    }
    if max_scale == 0.0 {
        return block;
    }
    let d = max_scale / 31.0;
    block.d = f16::from_f32(d * 0.9875);
    let id = 1.0 / d;
    for (ib, &s) in scales.iter().enumerate() {
        block.scales[ib / 2] |= scale_code(id, s) << (4 * (ib % 2));
    }
    block
}

/// IQ3's search: 8 levels a coordinate, candidates 0.2 levels apart.
fn iq3_search(steps: i32, refit: Refit, on_grid_start: bool) -> Search {
    Search {
        kmax: 8,
        steps,
        step: 0.2,
        refit,
        on_grid_start,
    }
}

/// Quantizes 256 values to IQ3_XXS, with a block of the importance matrix
/// or without.
pub(super) fn quantize_block_iq3_xxs(
    x: &[f32; QK_K],
    importance: Option<&[f32; QK_K]>,
) -> BlockIQ3XXS {
    let fit = GroupFit {
        lat: lattice::iq3xxs(),
        search: iq3_search(15, Refit::OffGrid, true),
        even: true,
        eps: Some(GROUP_MAX_EPS_1E8),
        qp_start: false,
        base: 0.0,
    };
    let sigma2 = block_sigma2(x, 2.0);
    // 64 point indices, then a word a group: 4 x 7 sign bits and the scale.
    let mut indices = [0u8; QK_K / 4];
    let mut words = [0u32; QK_K / 32];
    let mut scales = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    for ib in 0..QK_K / 32 {
        let xb = &x[32 * ib..][..32];
        let Some(f) = fit.fit(xb, importance.map(|w| &w[32 * ib..][..32]), sigma2) else {
            continue;
        };
        for (out, &i) in indices[8 * ib..][..8].iter_mut().zip(&f.index) {
            *out = i as u8;
        }
        words[ib] = u32::from(f.signs[0])
            | u32::from(f.signs[1]) << 7
            | u32::from(f.signs[2]) << 14
            | u32::from(f.signs[3]) << 21;
        scales[ib] = f.scale;
        max_scale = ggml_max(max_scale, f.scale);
    }
    let mut block = BlockIQ3XXS {
        d: f16::ZERO,
        qs: [0; 3 * QK_K / 8],
    };
    if max_scale == 0.0 {
        return block;
    }
    let d = max_scale / 31.0;
    block.d = f16::from_f32(d * 1.0125);
    let id = 1.0 / d;
    for (w, &s) in words.iter_mut().zip(&scales) {
        *w |= u32::from(scale_code(id, s)) << 28;
    }
    block.qs[..QK_K / 4].copy_from_slice(&indices);
    for (out, w) in block.qs[QK_K / 4..].chunks_exact_mut(4).zip(words) {
        out.copy_from_slice(&w.to_le_bytes());
    }
    block
}

/// Quantizes 256 values to IQ3_S, with a block of the importance matrix or
/// without.
///
/// ggml moves on to the next group's index and sign bytes only after a
/// group it quantizes: a group of zeros leaves its bytes to the group after
/// it (whose own are then read as the next one's, and the block's last
/// ones stay zero), while the high index bits and the scales keep their
/// places. The bytes here follow it, so a file matches llama-quantize's.
pub(super) fn quantize_block_iq3_s(x: &[f32; QK_K], importance: Option<&[f32; QK_K]>) -> BlockIQ3S {
    let fit = GroupFit {
        lat: lattice::iq3s(),
        search: iq3_search(9, Refit::AllIfOffGrid, false),
        even: false,
        eps: None,
        qp_start: false,
        base: 0.0,
    };
    let sigma2 = block_sigma2(x, 2.0);
    let mut block = BlockIQ3S {
        d: f16::ZERO,
        qs: [0; QK_K / 4],
        qh: [0; QK_K / 32],
        signs: [0; QK_K / 8],
        scales: [0; QK_K / 64],
    };
    let mut scales = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    // Where the next quantized group's index and sign bytes go.
    let mut at = 0;
    for ib in 0..QK_K / 32 {
        let xb = &x[32 * ib..][..32];
        let Some(f) = fit.fit(xb, importance.map(|w| &w[32 * ib..][..32]), sigma2) else {
            continue;
        };
        for (k, &index) in f.index.iter().enumerate() {
            let point = 8 * ib + k;
            block.qs[8 * at + k] = (index & 255) as u8;
            block.qh[point / 8] |= ((index >> 8) as u8) << (point % 8);
        }
        block.signs[4 * at..][..4].copy_from_slice(&f.signs);
        at += 1;
        scales[ib] = f.scale;
        max_scale = ggml_max(max_scale, f.scale);
    }
    if max_scale == 0.0 {
        return block;
    }
    let d = max_scale / 31.0;
    block.d = f16::from_f32(d * 1.033);
    let id = 1.0 / d;
    for (ib, pair) in scales.chunks_exact(2).enumerate() {
        block.scales[ib] = scale_code(id, pair[0]) | scale_code(id, pair[1]) << 4;
    }
    block
}
