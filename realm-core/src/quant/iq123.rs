//! IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S: weights as
//! points of fixed lattices (the grids of [`super::iq_grids`]), 4 or 8
//! values a point, with signs and small per-group scales.
//!
//! Each type's block reads as 8 groups of 32 values ([`IqLattice`]: four
//! grid entries, their signs, two scales) and unpacks to the same form,
//! [`IqBlock`]: 256 small integers
//! `q`, a scale a 16 values and one factor `d`, each value `d * scale * q`.
//! The factors are those of ggml's `dequantize_row_iq*` with the powers of
//! two taken into `d` (IQ2's `(0.5 + s) / 4` is `(2 s + 1) / 8`), and IQ1's
//! shift of 1/8 taken into `q` (`8 g +- 1`, with `d` an eighth), so the
//! dequantized values are ggml's bit for bit (a power of two changes no
//! rounding). The CPU backend's kernels multiply the same integers.
//!
//! Quantizing to them is `super::lattice_quantize`'s (IQ2 and IQ3) and
//! `super::iq1_quantize`'s (IQ1).

use super::blocks::{
    BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS, QK_K,
};
use super::iq_grids::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};

/// A 256-value block as small integers: value `e` is `d * scales[e / 16] *
/// q[e]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IqBlock {
    /// The values' integers.
    pub q: [i8; QK_K],
    /// A scale a 16 values.
    pub scales: [u8; 16],
    /// The block's factor.
    pub d: f32,
}

impl IqBlock {
    /// The block's values.
    pub fn dequantize(&self, out: &mut [f32; QK_K]) {
        for (e, y) in out.iter_mut().enumerate() {
            *y = self.d * f32::from(self.scales[e / 16]) * f32::from(self.q[e]);
        }
    }
}

/// For each sign byte, the mask whose byte `j` is 0xff where bit `j` is
/// set.
static SIGN_MASKS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut s = 0;
    while s < 256 {
        let mut j = 0;
        while j < 8 {
            if s & (1 << j) != 0 {
                t[s] |= 0xff << (8 * j);
            }
            j += 1;
        }
        s += 1;
    }
    t
};

/// The masks of [`SIGN_MASKS`] of the eight signs each 7-bit index
/// stands for: its bits, and an eighth that makes the count of minus signs
/// even (ggml's `ksigns_iq2xs`).
static SIGN7_MASKS: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let parity = (i as u32).count_ones() as usize & 1;
        t[i] = SIGN_MASKS[i | (parity << 7)];
        i += 1;
    }
    t
};

/// 32 values of a lattice block before their signs: four grid entries of 8
/// values each, how each entry is signed, and the scales of the group's two
/// halves of 16. The CPU backend builds its registers from these, and
/// [`IqLattice::unpack`] its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IqGroup {
    /// The grid entries, value `j` of entry `l` in byte `j`: magnitudes
    /// (IQ2, IQ3) or -1, 0 and 1 (IQ1).
    pub points: [u64; 4],
    /// Per entry: for IQ2 and IQ3 a mask whose bytes are 0xff where the
    /// value is negated; for IQ1 all ones where the entry is shifted by
    /// -1/8 and zero where by +1/8.
    pub signs: [u64; 4],
    /// The scales of values 0-15 and 16-31.
    pub scales: [u8; 2],
}

/// A lattice type's block as 8 [`IqGroup`]s and a factor.
///
/// ```
/// use realm_core::quant::blocks::BlockIQ2XXS;
/// use realm_core::quant::IqLattice;
///
/// let block = BlockIQ2XXS { d: half::f16::from_f32(1.0), qs: [0; 32] };
/// // Grid entry 0 is eight 8s, unsigned; scale nibble 0 is scale 1; the
/// // factor is d / 8: every value is 1.
/// let unpacked = block.unpack();
/// assert!(unpacked.q.iter().all(|&q| q == 8));
/// assert_eq!(unpacked.d, 0.125);
/// ```
pub trait IqLattice {
    /// Whether the type is IQ1's: value `8 g +- 1` for grid value `g`
    /// (`d` an eighth of ggml's), not `+-g`.
    const SHIFTED: bool;

    /// Group `g` (0 to 7): values `32 g` to `32 g + 31`.
    fn group(&self, g: usize) -> IqGroup;

    /// The block's factor, `d` of [`IqBlock`].
    fn factor(&self) -> f32;

    /// The block as 256 integers, their scales and the factor.
    #[inline]
    fn unpack(&self) -> IqBlock {
        let mut q = [0u64; 32];
        let mut scales = [0u8; 16];
        for g in 0..8 {
            let group = self.group(g);
            scales[2 * g..][..2].copy_from_slice(&group.scales);
            for l in 0..4 {
                let (point, sign) = (group.points[l], group.signs[l]);
                q[4 * g + l] = if Self::SHIFTED {
                    shifted(point, sign)
                } else {
                    negated(point, sign)
                };
            }
        }
        IqBlock {
            q: bytemuck::cast(q.map(u64::to_le_bytes)),
            scales,
            d: self.factor(),
        }
    }
}

/// A grid entry's 8 bytes (each 1 to 127) as signed bytes, negated where
/// `mask`'s bytes are 0xff: `(b ^ 0xff) + 1`, which never carries into the
/// next byte for a nonzero `b`.
#[inline]
fn negated(entry: u64, mask: u64) -> u64 {
    (entry ^ mask).wrapping_add(mask & 0x0101_0101_0101_0101)
}

/// An IQ1 entry's 8 values (-1, 0, 1) times 8, plus 1, or minus 1 where
/// `mask` is nonzero.
#[inline]
fn shifted(entry: u64, mask: u64) -> u64 {
    let shift: u8 = if mask == 0 { 1 } else { 0xff };
    u64::from_le_bytes(
        entry
            .to_le_bytes()
            .map(|b| b.wrapping_mul(8).wrapping_add(shift)),
    )
}

/// Both halves of a group of 32 at one scale, `2 s + 1` for `s` the low
/// 4 bits of the argument.
#[inline]
fn both(s: u32) -> [u8; 2] {
    let s = 2 * (s & 15) as u8 + 1;
    [s, s]
}

/// The scales `2 s + 1` of group `g` of IQ2_XS and IQ2_S: a nibble each.
#[inline]
fn nibble_scales(scales: &[u8; 8], g: usize) -> [u8; 2] {
    let s = scales[g];
    [2 * (s & 15) + 1, 2 * (s >> 4) + 1]
}

impl IqLattice for BlockIQ2XXS {
    const SHIFTED: bool = false;

    #[inline]
    fn group(&self, g: usize) -> IqGroup {
        let word =
            |i: usize| u32::from(self.qs[4 * g + i]) | (u32::from(self.qs[4 * g + i + 1]) << 16);
        let (points, rest) = (word(0), word(2));
        IqGroup {
            points: std::array::from_fn(|l| IQ2XXS_GRID[((points >> (8 * l)) & 0xff) as usize]),
            signs: std::array::from_fn(|l| SIGN7_MASKS[((rest >> (7 * l)) & 127) as usize]),
            scales: both(rest >> 28),
        }
    }

    #[inline]
    fn factor(&self) -> f32 {
        self.d.to_f32() * 0.125
    }
}

impl IqLattice for BlockIQ2XS {
    const SHIFTED: bool = false;

    #[inline]
    fn group(&self, g: usize) -> IqGroup {
        let v = |l: usize| usize::from(self.qs[4 * g + l]);
        IqGroup {
            points: std::array::from_fn(|l| IQ2XS_GRID[v(l) & 511]),
            signs: std::array::from_fn(|l| SIGN7_MASKS[v(l) >> 9]),
            scales: nibble_scales(&self.scales, g),
        }
    }

    #[inline]
    fn factor(&self) -> f32 {
        self.d.to_f32() * 0.125
    }
}

impl IqLattice for BlockIQ2S {
    const SHIFTED: bool = false;

    #[inline]
    fn group(&self, g: usize) -> IqGroup {
        let (low, signs) = self.qs.split_at(QK_K / 8);
        let qh = usize::from(self.qh[g]);
        IqGroup {
            points: std::array::from_fn(|l| {
                IQ2S_GRID[usize::from(low[4 * g + l]) | ((qh << (8 - 2 * l)) & 0x300)]
            }),
            signs: std::array::from_fn(|l| SIGN_MASKS[usize::from(signs[4 * g + l])]),
            scales: nibble_scales(&self.scales, g),
        }
    }

    #[inline]
    fn factor(&self) -> f32 {
        self.d.to_f32() * 0.125
    }
}

impl IqLattice for BlockIQ3XXS {
    const SHIFTED: bool = false;

    #[inline]
    fn group(&self, g: usize) -> IqGroup {
        let (points, words) = self.qs.split_at(QK_K / 4);
        let w = u32::from_le_bytes([
            words[4 * g],
            words[4 * g + 1],
            words[4 * g + 2],
            words[4 * g + 3],
        ]);
        let half = |i: usize| u64::from(IQ3XXS_GRID[usize::from(points[8 * g + i])]);
        IqGroup {
            points: std::array::from_fn(|l| half(2 * l) | (half(2 * l + 1) << 32)),
            signs: std::array::from_fn(|l| SIGN7_MASKS[((w >> (7 * l)) & 127) as usize]),
            scales: both(w >> 28),
        }
    }

    #[inline]
    fn factor(&self) -> f32 {
        self.d.to_f32() * 0.25
    }
}

impl IqLattice for BlockIQ3S {
    const SHIFTED: bool = false;

    #[inline]
    fn group(&self, g: usize) -> IqGroup {
        let qh = usize::from(self.qh[g]);
        // Point `i` of the group's 8 takes its ninth bit from bit `i` of
        // `qh`.
        let half = |i: usize| {
            let idx = usize::from(self.qs[8 * g + i]) | ((qh << (8 - i)) & 256);
            u64::from(IQ3S_GRID[idx])
        };
        IqGroup {
            points: std::array::from_fn(|l| half(2 * l) | (half(2 * l + 1) << 32)),
            signs: std::array::from_fn(|l| SIGN_MASKS[usize::from(self.signs[4 * g + l])]),
            scales: both(u32::from(self.scales[g / 2] >> (4 * (g % 2)))),
        }
    }

    #[inline]
    fn factor(&self) -> f32 {
        self.d.to_f32()
    }
}

impl IqLattice for BlockIQ1S {
    const SHIFTED: bool = true;

    #[inline]
    fn group(&self, g: usize) -> IqGroup {
        let h = self.qh[g];
        let idx =
            |l: usize| usize::from(self.qs[4 * g + l]) | (usize::from((h >> (3 * l)) & 7) << 8);
        let s = 2 * ((h >> 12) & 7) as u8 + 1;
        IqGroup {
            points: std::array::from_fn(|l| IQ1S_GRID[idx(l)]),
            signs: [if h & 0x8000 != 0 { !0 } else { 0 }; 4],
            scales: [s, s],
        }
    }

    #[inline]
    fn factor(&self) -> f32 {
        self.d.to_f32() * 0.125
    }
}

impl BlockIQ1M {
    /// Scale word `i`: its low 12 bits are four 3-bit scales, its top 4
    /// a nibble of the block's f16.
    #[inline]
    fn scale_word(&self, i: usize) -> u16 {
        u16::from_le_bytes([self.scales[2 * i], self.scales[2 * i + 1]])
    }
}

impl IqLattice for BlockIQ1M {
    const SHIFTED: bool = true;

    #[inline]
    fn group(&self, g: usize) -> IqGroup {
        let s = self.scale_word(g / 2) >> (6 * (g % 2));
        // A nibble an entry: 3 high index bits and the sign bit.
        let h = u16::from_le_bytes([self.qh[2 * g], self.qh[2 * g + 1]]);
        let nibble = |l: usize| (h >> (4 * l)) & 15;
        IqGroup {
            points: std::array::from_fn(|l| {
                IQ1S_GRID[usize::from(self.qs[4 * g + l]) | (usize::from(nibble(l) & 7) << 8)]
            }),
            signs: std::array::from_fn(|l| 0u64.wrapping_sub(u64::from(nibble(l) >> 3))),
            scales: [2 * (s & 7) as u8 + 1, 2 * ((s >> 3) & 7) as u8 + 1],
        }
    }

    #[inline]
    fn factor(&self) -> f32 {
        self.d().to_f32() * 0.125
    }
}

macro_rules! dequantizers {
    ($($(#[$doc:meta])* $name:ident($block:ty);)*) => {$(
        $(#[$doc])*
        pub fn $name(block: &$block, out: &mut [f32; QK_K]) {
            block.unpack().dequantize(out);
        }
    )*};
}

dequantizers! {
    /// Dequantizes one IQ2_XXS block.
    dequantize_block_iq2_xxs(BlockIQ2XXS);
    /// Dequantizes one IQ2_XS block.
    dequantize_block_iq2_xs(BlockIQ2XS);
    /// Dequantizes one IQ2_S block.
    dequantize_block_iq2_s(BlockIQ2S);
    /// Dequantizes one IQ3_XXS block.
    dequantize_block_iq3_xxs(BlockIQ3XXS);
    /// Dequantizes one IQ3_S block.
    dequantize_block_iq3_s(BlockIQ3S);
    /// Dequantizes one IQ1_S block.
    dequantize_block_iq1_s(BlockIQ1S);
    /// Dequantizes one IQ1_M block.
    dequantize_block_iq1_m(BlockIQ1M);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's `ksigns_iq2xs` entry `i`.
    fn signs7(i: u32) -> u8 {
        let i = (i & 127) as u8;
        i | (((i.count_ones() & 1) as u8) << 7)
    }

    #[test]
    fn signs_have_even_parity() {
        // ggml's first entries: 0, 129, 130, 3, 132, 5, 6, 135.
        let first: Vec<u8> = (0..8).map(signs7).collect();
        assert_eq!(first, [0, 129, 130, 3, 132, 5, 6, 135]);
        assert!((0..128).all(|i| signs7(i).count_ones().is_multiple_of(2)));
        assert!((0..128).all(|i| SIGN7_MASKS[i as usize] == SIGN_MASKS[usize::from(signs7(i))]));
    }

    #[test]
    fn grids_hold_their_formats_values() {
        let bytes = |g: &[u64]| g.iter().flat_map(|e| e.to_le_bytes()).collect::<Vec<u8>>();
        assert!(bytes(&IQ2XXS_GRID).iter().all(|b| [8, 25, 43].contains(b)));
        assert!(bytes(&IQ2XS_GRID).iter().all(|b| [8, 25, 43].contains(b)));
        assert!(bytes(&IQ2S_GRID).iter().all(|b| [8, 25, 43].contains(b)));
        assert!(bytes(&IQ1S_GRID).iter().all(|&b| [0xff, 0, 1].contains(&b)));
        let all = |g: &[u32], of: &[u8]| {
            g.iter()
                .flat_map(|e| e.to_le_bytes())
                .all(|b| of.contains(&b))
        };
        assert!(all(&IQ3XXS_GRID, &[4, 12, 20, 28, 36, 44, 52, 62]));
        assert!(all(&IQ3S_GRID, &[1, 3, 5, 7, 9, 11, 13, 15]));
    }
}
