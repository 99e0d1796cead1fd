//! IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S: weights as
//! points of fixed lattices (the grids of [`super::iq_grids`]), 4 or 8
//! values a point, with signs and small per-group scales.
//!
//! Every type unpacks to the same form, [`IqBlock`]: 256 small integers
//! `q`, a scale a 16 values and one factor `d`, each value `d * scale * q`.
//! The factors are those of ggml's `dequantize_row_iq*` with the powers of
//! two taken into `d` (IQ2's `(0.5 + s) / 4` is `(2 s + 1) / 8`), and IQ1's
//! shift of 1/8 taken into `q` (`8 g +- 1`, with `d` an eighth), so the
//! dequantized values are ggml's bit for bit (a power of two changes no
//! rounding). The CPU backend's kernels multiply the same integers.
//!
//! Quantizing to these types (ggml's searches over the grids' neighbours,
//! which need an importance matrix for most) is not supported.

use super::blocks::{
    BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS, QK_K,
};
use super::iq_grids::{IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use half::f16;

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

/// A grid entry's 8 bytes (each 1 to 127) as signed bytes, negated where
/// `mask`'s bytes are 0xff: `(b ^ 0xff) + 1`, which never carries into the
/// next byte for a nonzero `b`.
#[inline]
fn negated(entry: u64, mask: u64) -> u64 {
    (entry ^ mask).wrapping_add(mask & 0x0101_0101_0101_0101)
}

/// `entry` with the signs of a sign byte.
#[inline]
fn signed(entry: u64, signs: u8) -> u64 {
    negated(entry, SIGN_MASKS[usize::from(signs)])
}

/// `entry` with the signs of a 7-bit sign index.
#[inline]
fn signed7(entry: u64, index: u32) -> u64 {
    negated(entry, SIGN7_MASKS[(index & 127) as usize])
}

/// 32 groups of 8 signed bytes as the block's 256 values.
#[inline]
fn values(groups: [u64; 32]) -> [i8; QK_K] {
    bytemuck::cast(groups.map(u64::to_le_bytes))
}

/// Both halves of a group of 32 at one scale.
fn both(s: u8) -> [u8; 2] {
    [s, s]
}

/// Unpacks an IQ2_XXS block.
#[inline]
pub fn unpack_iq2_xxs(b: &BlockIQ2XXS) -> IqBlock {
    let mut q = [0u64; 32];
    let mut scales = [0u8; 16];
    for g in 0..8 {
        let word = |i: usize| u32::from(b.qs[4 * g + i]) | (u32::from(b.qs[4 * g + i + 1]) << 16);
        let (points, rest) = (word(0), word(2));
        scales[2 * g..][..2].copy_from_slice(&both(2 * (rest >> 28) as u8 + 1));
        for l in 0..4 {
            let entry = IQ2XXS_GRID[((points >> (8 * l)) & 0xff) as usize];
            q[4 * g + l] = signed7(entry, rest >> (7 * l));
        }
    }
    IqBlock {
        q: values(q),
        scales,
        d: b.d.to_f32() * 0.125,
    }
}

/// Unpacks an IQ2_XS block.
#[inline]
pub fn unpack_iq2_xs(b: &BlockIQ2XS) -> IqBlock {
    let q =
        b.qs.map(|v| signed7(IQ2XS_GRID[usize::from(v & 511)], u32::from(v >> 9)));
    IqBlock {
        q: values(q),
        scales: std::array::from_fn(|i| 2 * ((b.scales[i / 2] >> (4 * (i % 2))) & 15) + 1),
        d: b.d.to_f32() * 0.125,
    }
}

/// Unpacks an IQ2_S block.
#[inline]
pub fn unpack_iq2_s(b: &BlockIQ2S) -> IqBlock {
    let (low, signs) = b.qs.split_at(QK_K / 8);
    let q = std::array::from_fn(|p| {
        let (g, l) = (p / 4, p % 4);
        let high = (usize::from(b.qh[g]) << (8 - 2 * l)) & 0x300;
        signed(IQ2S_GRID[usize::from(low[p]) | high], signs[p])
    });
    IqBlock {
        q: values(q),
        scales: std::array::from_fn(|i| 2 * ((b.scales[i / 2] >> (4 * (i % 2))) & 15) + 1),
        d: b.d.to_f32() * 0.125,
    }
}

/// Unpacks an IQ3_XXS block.
#[inline]
pub fn unpack_iq3_xxs(b: &BlockIQ3XXS) -> IqBlock {
    let mut q = [0u64; 32];
    let mut scales = [0u8; 16];
    let (points, words) = b.qs.split_at(QK_K / 4);
    for g in 0..8 {
        let w = u32::from_le_bytes([
            words[4 * g],
            words[4 * g + 1],
            words[4 * g + 2],
            words[4 * g + 3],
        ]);
        scales[2 * g..][..2].copy_from_slice(&both(2 * (w >> 28) as u8 + 1));
        for l in 0..4 {
            let pair = u64::from(IQ3XXS_GRID[usize::from(points[8 * g + 2 * l])])
                | (u64::from(IQ3XXS_GRID[usize::from(points[8 * g + 2 * l + 1])]) << 32);
            q[4 * g + l] = signed7(pair, w >> (7 * l));
        }
    }
    IqBlock {
        q: values(q),
        scales,
        d: b.d.to_f32() * 0.25,
    }
}

/// Unpacks an IQ3_S block.
#[inline]
pub fn unpack_iq3_s(b: &BlockIQ3S) -> IqBlock {
    let mut q = [0u64; 32];
    let mut scales = [0u8; 16];
    for g in 0..8 {
        let s = (b.scales[g / 2] >> (4 * (g % 2))) & 15;
        scales[2 * g..][..2].copy_from_slice(&both(2 * s + 1));
        let qh = usize::from(b.qh[g]);
        for l in 0..4 {
            let idx = |i: usize, shift: usize| {
                usize::from(b.qs[8 * g + 2 * l + i]) | ((qh << shift) & 256)
            };
            let pair = u64::from(IQ3S_GRID[idx(0, 8 - 2 * l)])
                | (u64::from(IQ3S_GRID[idx(1, 7 - 2 * l)]) << 32);
            q[4 * g + l] = signed(pair, b.signs[4 * g + l]);
        }
    }
    IqBlock {
        q: values(q),
        scales,
        d: b.d.to_f32(),
    }
}

/// An IQ1 point's 8 values shifted by +-1/8, times 8.
#[inline]
fn shifted(entry: u64, negative: bool, out: &mut [i8]) {
    let shift = if negative { -1 } else { 1 };
    for (j, o) in out.iter_mut().enumerate().take(8) {
        *o = 8 * ((entry >> (8 * j)) & 0xff) as u8 as i8 + shift;
    }
}

/// Unpacks an IQ1_S block.
#[inline]
pub fn unpack_iq1_s(b: &BlockIQ1S) -> IqBlock {
    let mut q = [0i8; QK_K];
    let mut scales = [0u8; 16];
    for (g, &h) in b.qh.iter().enumerate() {
        scales[2 * g..][..2].copy_from_slice(&both(2 * ((h >> 12) & 7) as u8 + 1));
        for l in 0..4 {
            let idx = usize::from(b.qs[4 * g + l]) | (usize::from((h >> (3 * l)) & 7) << 8);
            shifted(IQ1S_GRID[idx], h & 0x8000 != 0, &mut q[32 * g + 8 * l..]);
        }
    }
    IqBlock {
        q,
        scales,
        d: b.d.to_f32() * 0.125,
    }
}

/// Unpacks an IQ1_M block.
#[inline]
pub fn unpack_iq1_m(b: &BlockIQ1M) -> IqBlock {
    let sc: [u16; 4] =
        std::array::from_fn(|i| u16::from_le_bytes([b.scales[2 * i], b.scales[2 * i + 1]]));
    let d = f16::from_bits(
        (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000),
    );
    let mut q = [0i8; QK_K];
    let mut scales = [0u8; 16];
    for g in 0..8 {
        let s = sc[g / 2] >> (6 * (g % 2));
        scales[2 * g] = 2 * (s & 7) as u8 + 1;
        scales[2 * g + 1] = 2 * ((s >> 3) & 7) as u8 + 1;
        let (h0, h1) = (u16::from(b.qh[2 * g]), u16::from(b.qh[2 * g + 1]));
        let points = [
            (h0 << 8, h0 & 0x08),
            (h0 << 4, h0 & 0x80),
            (h1 << 8, h1 & 0x08),
            (h1 << 4, h1 & 0x80),
        ];
        for (l, (high, neg)) in points.into_iter().enumerate() {
            let idx = usize::from(b.qs[4 * g + l]) | usize::from(high & 0x700);
            shifted(IQ1S_GRID[idx], neg != 0, &mut q[32 * g + 8 * l..]);
        }
    }
    IqBlock {
        q,
        scales,
        d: d.to_f32() * 0.125,
    }
}

macro_rules! dequantizers {
    ($($(#[$doc:meta])* $name:ident($block:ty) = $unpack:ident;)*) => {$(
        $(#[$doc])*
        pub fn $name(block: &$block, out: &mut [f32; QK_K]) {
            $unpack(block).dequantize(out);
        }
    )*};
}

dequantizers! {
    /// Dequantizes one IQ2_XXS block.
    dequantize_block_iq2_xxs(BlockIQ2XXS) = unpack_iq2_xxs;
    /// Dequantizes one IQ2_XS block.
    dequantize_block_iq2_xs(BlockIQ2XS) = unpack_iq2_xs;
    /// Dequantizes one IQ2_S block.
    dequantize_block_iq2_s(BlockIQ2S) = unpack_iq2_s;
    /// Dequantizes one IQ3_XXS block.
    dequantize_block_iq3_xxs(BlockIQ3XXS) = unpack_iq3_xxs;
    /// Dequantizes one IQ3_S block.
    dequantize_block_iq3_s(BlockIQ3S) = unpack_iq3_s;
    /// Dequantizes one IQ1_S block.
    dequantize_block_iq1_s(BlockIQ1S) = unpack_iq1_s;
    /// Dequantizes one IQ1_M block.
    dequantize_block_iq1_m(BlockIQ1M) = unpack_iq1_m;
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
