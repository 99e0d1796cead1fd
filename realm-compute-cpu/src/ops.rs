//! f32 kernels for everything but matmul: RMSNorm, RoPE, softmax, SiLU,
//! GELU, gated products.
//!
//! Reductions accumulate into 8 explicit partial sums combined in a fixed
//! order: the compiler vectorises that shape without reordering anything, so
//! results are deterministic and per row.

use realm_core::backend::{BackendError, BackendResult, RopeMode, RopeParams};

/// Sum of `f(a[i], b[i])` over 8 interleaved partial sums.
#[inline(always)]
fn reduce8(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, a_tail) = a.as_chunks::<8>();
    let (b8, b_tail) = b.as_chunks::<8>();
    for (ca, cb) in a8.iter().zip(b8) {
        for i in 0..8 {
            acc[i] += f(ca[i], cb[i]);
        }
    }
    let head = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    a_tail
        .iter()
        .zip(b_tail)
        .fold(head, |s, (&x, &y)| s + f(x, y))
}

/// Dot product with a fixed reduction order.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    reduce8(a, b, |x, y| x * y)
}

/// `len` must be a non-zero divisor of `x.len()`.
pub(crate) fn check_rows(op: &'static str, len: usize, row: usize) -> BackendResult<()> {
    if row == 0 {
        return Err(BackendError::InvalidParameter {
            op,
            what: "row length is zero",
        });
    }
    if !len.is_multiple_of(row) {
        return Err(BackendError::Shape {
            op,
            what: "input length (a multiple of the row length)",
            expected: len.next_multiple_of(row),
            got: len,
        });
    }
    Ok(())
}

/// `out = x / rms(x) * w` per row.
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        let scale = rms_scale(xr, eps);
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// [`rms_norm`] in place.
pub(crate) fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    for xr in x.chunks_exact_mut(w.len()) {
        let scale = rms_scale(xr, eps);
        for (v, &g) in xr.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

/// LayerNorm of each row of `x` (as long as `w`) in place: the row less
/// its mean, over the square root of its variance plus `eps`, times `w`,
/// plus `b` where given. The sums are in f64, in order (ggml's are too).
pub(crate) fn layer_norm_inplace(x: &mut [f32], w: &[f32], b: Option<&[f32]>, eps: f32) {
    for xr in x.chunks_exact_mut(w.len()) {
        let n = xr.len() as f64;
        let mean = (xr.iter().map(|&v| f64::from(v)).sum::<f64>() / n) as f32;
        let mut var = 0.0f64;
        for v in xr.iter_mut() {
            *v -= mean;
            var += f64::from(*v * *v);
        }
        let scale = 1.0 / ((var / n) as f32 + eps).sqrt();
        for (v, &g) in xr.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
        if let Some(b) = b {
            for (v, &c) in xr.iter_mut().zip(b) {
                *v += c;
            }
        }
    }
}

#[inline]
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let mean = dot(x, x) / x.len() as f32;
    1.0 / (mean + eps).sqrt()
}

/// The most rotated dimensions per head RoPE supports (a stack table).
pub(crate) const ROPE_MAX_DIMS: usize = 1024;

/// Rotates each head of each token (layout checked by the caller).
pub(crate) fn rope(
    x: &mut [f32],
    head_dim: usize,
    positions: &[u32],
    p: &RopeParams,
    cache: &mut RopeCache,
) {
    let half = p.n_dims / 2;
    let per_token = x.len() / positions.len().max(1);
    let angles = cache.angles(positions, p);
    for (xt, cs) in x
        .chunks_exact_mut(per_token)
        .zip(angles.chunks_exact(p.n_dims))
    {
        let (cos, sin) = cs.split_at(half);
        for head in xt.chunks_exact_mut(head_dim) {
            match p.mode {
                RopeMode::Normal => {
                    for (i, pair) in head[..p.n_dims].chunks_exact_mut(2).enumerate() {
                        let (a, b) = (pair[0], pair[1]);
                        pair[0] = a * cos[i] - b * sin[i];
                        pair[1] = a * sin[i] + b * cos[i];
                    }
                }
                RopeMode::Neox => {
                    let (lo, hi) = head[..p.n_dims].split_at_mut(half);
                    for i in 0..half {
                        let (a, b) = (lo[i], hi[i]);
                        lo[i] = a * cos[i] - b * sin[i];
                        hi[i] = a * sin[i] + b * cos[i];
                    }
                }
            }
        }
    }
}

/// The cos/sin tables of the last two RoPE settings used, so that the
/// layers of one forward step, which all rotate the same positions, compute
/// them once (two, for models whose local and global layers use different
/// bases, as Gemma 3's do). Entries keep their memory, so decode allocates
/// nothing once warm.
#[derive(Debug, Default)]
pub(crate) struct RopeCache {
    /// Boxed: workspaces live inside sessions, which stay small.
    entries: Box<[RopeAngles; 2]>,
    /// The entry to replace next.
    next: usize,
}

#[derive(Debug, Default)]
struct RopeAngles {
    positions: Vec<u32>,
    /// `(base, freq_scale, magnitude, n_dims)`, bit patterns for exact
    /// comparison.
    key: (u32, u32, u32, usize),
    /// The frequency factors (empty for none).
    factors: Vec<f32>,
    /// Per token: `n_dims / 2` cosines, then as many sines.
    table: Vec<f32>,
}

impl RopeCache {
    /// The table for `positions` and `p`, computed if not cached.
    fn angles(&mut self, positions: &[u32], p: &RopeParams) -> &[f32] {
        let key = (
            p.base.to_bits(),
            p.freq_scale.to_bits(),
            p.magnitude.to_bits(),
            p.n_dims,
        );
        let factors = p.factors.unwrap_or_default();
        let same = |a: &[f32]| {
            a.len() == factors.len()
                && a.iter()
                    .zip(factors)
                    .all(|(x, y)| x.to_bits() == y.to_bits())
        };
        let hit = self.entries.iter().position(|e| {
            e.key == key && e.positions == positions && same(&e.factors) && !e.table.is_empty()
        });
        let at = match hit {
            Some(i) => i,
            None => {
                let i = self.next;
                self.next = (i + 1) % self.entries.len();
                let e = &mut self.entries[i];
                e.key = key;
                e.factors.clear();
                e.factors.extend_from_slice(factors);
                e.positions.clear();
                e.positions.extend_from_slice(positions);
                fill_angles(&mut e.table, positions, p);
                i
            }
        };
        &self.entries[at].table
    }
}

/// Pair `i` of a token at `pos` turns by `pos * freq_scale *
/// inv_freq[i]` ([`RopeParams::inv_freqs`]), evaluated in f64 and rounded
/// once; the cosines and sines are then scaled by the magnitude, in f32 as
/// ggml scales them.
fn fill_angles(table: &mut Vec<f32>, positions: &[u32], p: &RopeParams) {
    let half = p.n_dims / 2;
    let mut inv_freq = [0.0f64; ROPE_MAX_DIMS / 2];
    for (f, v) in inv_freq[..half].iter_mut().zip(p.inv_freqs()) {
        *f = v;
    }
    table.clear();
    for &pos in positions {
        let theta = |i: usize| f64::from(pos) * f64::from(p.freq_scale) * inv_freq[i];
        let m = p.magnitude;
        table.extend((0..half).map(|i| theta(i).cos() as f32 * m));
        table.extend((0..half).map(|i| theta(i).sin() as f32 * m));
    }
}

/// Softmax of each row in place.
pub(crate) fn softmax_inplace(x: &mut [f32], row_len: usize) {
    for row in x.chunks_exact_mut(row_len) {
        softmax_row(row);
    }
}

/// Softmax of one row in place (sum in index order).
pub(crate) fn softmax_row(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// An activation of the feed-forward gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// [`gelu`].
    Gelu,
    /// [`silu`].
    Silu,
}

impl Activation {
    /// The activation of one value.
    #[inline]
    pub(crate) fn apply(self, x: f32) -> f32 {
        match self {
            Self::Gelu => gelu(x),
            Self::Silu => silu(x),
        }
    }
}

/// `x * sigmoid(x)`.
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `sqrt(2 / pi)`, GELU's tanh-approximation scale.
pub(crate) const GELU_SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of GELU's tanh approximation.
pub(crate) const GELU_COEF_A: f32 = 0.044_715;

/// GELU, tanh approximation (the constants ggml uses), written as
/// `x * sigmoid(2 u)` with `u = sqrt(2 / pi) (x + 0.044715 x^3)`: equal to
/// `0.5 x (1 + tanh u)`, without the cancellation of `1 + tanh u` for
/// negative `x`, and with only an exponential to evaluate (the AVX2 path
/// does the same with its own vector `exp`).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    let u = GELU_SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

/// GELU's tanh approximation at every f16 input, rounded to f16 (each
/// entry's index the input's bits, its value the output's): the table
/// llama.cpp's CPU backend reads GELU from (ggml's `ggml_table_gelu_f16`,
/// made by the same formula in f32).
pub(crate) fn gelu_table() -> Box<[u16]> {
    (0..=u16::MAX)
        .map(|bits| {
            let x = half::f16::from_bits(bits).to_f32();
            let u = GELU_SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x);
            half::f16::from_f32(0.5 * x * (1.0 + u.tanh())).to_bits()
        })
        .collect()
}

/// GELU as llama.cpp's CPU backend computes it: 0 at or below -10, `x`
/// itself at or above 10, between them `table`'s value at `x` rounded to
/// f16 ([`gelu_table`]).
#[inline]
pub(crate) fn gelu_looked_up(table: &[u16], x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        let at = usize::from(half::f16::from_f32(x).to_bits());
        half::f16::from_bits(table.get(at).copied().unwrap_or(0)).to_f32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_norm_centres_scales_and_shifts_each_row() {
        // Rows of mean 2.5 and variance 1.25, and of one value repeated.
        let mut x = [1.0f32, 2.0, 3.0, 4.0, 7.0, 7.0, 7.0, 7.0];
        let w = [1.0, 2.0, 1.0, 0.5];
        let b = [0.0, 0.0, 1.0, -1.0];
        layer_norm_inplace(&mut x[..4], &w, Some(&b), 0.0);
        layer_norm_inplace(&mut x[4..], &w, Some(&b), 1e-5);
        let s = 1.0 / 1.25f32.sqrt();
        let want = [-1.5 * s, -0.5 * s * 2.0, 0.5 * s + 1.0, 1.5 * s * 0.5 - 1.0];
        for (g, w) in x[..4].iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} {w}");
        }
        // (x - mean) is 0: the bias alone, whatever eps.
        assert_eq!(x[4..], b);
        let mut y = [1.0f32, 3.0];
        layer_norm_inplace(&mut y, &[1.0, 1.0], None, 0.0);
        assert_eq!(y, [-1.0, 1.0]);
    }

    #[test]
    fn gelu_table_is_gelu_in_half_precision() {
        let t = gelu_table();
        assert_eq!(t.len(), 1 << 16);
        for x in [-9.5f32, -3.0, -0.7, -1e-3, 0.0, 0.3, 1.0, 2.5, 9.9] {
            let got = gelu_looked_up(&t, x);
            // Within f16's rounding of the input and of the output.
            assert!((got - gelu(x)).abs() <= 2e-3 * (1.0 + gelu(x).abs()), "{x}");
        }
        assert_eq!(gelu_looked_up(&t, -10.0), 0.0);
        assert_eq!(gelu_looked_up(&t, 12.0), 12.0);
        // The input is rounded first: values one f16 step apart share it.
        let step = half::f16::from_f32(1.0).to_f32();
        assert_eq!(gelu_looked_up(&t, step + 1e-4), gelu_looked_up(&t, step));
        assert!(gelu_looked_up(&t, f32::NAN).is_nan());
    }

    #[test]
    fn dot_matches_sequential_sum_closely() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 3.0).collect();
        let exact: f64 = a.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!((f64::from(dot(&a, &a)) - exact).abs() < 1e-3);
    }

    #[test]
    fn gelu_and_silu_known_values() {
        assert!((gelu(1.0) - 0.841_192).abs() < 1e-5);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert_eq!(gelu(0.0), 0.0);
    }
}
