//! NEON kernels (aarch64) for the quantized matmul.
//!
//! Only the integer part is vector code. Each weight block is unpacked once
//! into signed bytes in registers (16 values per register, in element
//! order), and its dot products with the activation blocks of up to
//! [`TOKEN_TILE`] tokens are summed exactly: `vmull_s8` products fit in i16
//! (at most 128 * 127), and `vpadalq_s16` widens them pairwise into i32.
//! Each block's float term then comes from the reference's own functions
//! ([`legacy_term`], [`KScales::term`]) and is added to its (row, token) sum
//! in block order, as [`crate::reference::dot_row`] does. So this path gives
//! the scalar path's results bit for bit, whatever the batch or thread
//! count; the tests check that under emulation (`cargo xtask neon`).

use std::arch::aarch64::*;
use std::ops::Range;

use realm_core::quant::blocks::{
    BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS, BlockIQ4NL,
    BlockIQ4XS, BlockMXFP4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K,
    BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, BlockTQ1_0, BlockTQ2_0, KVALUES_IQ4NL,
    KVALUES_MXFP4,
};
use realm_core::quant::IqLattice;

use crate::act::{BlockQ8K, BlockQ8x32};
use crate::matmul::OutRows;
use crate::reference::{legacy_term, KScales, UnpackK, UnpackLegacy, WeightBlock};

/// Tokens whose sums a row keeps while its blocks are unpacked once each.
const TOKEN_TILE: usize = 8;

/// A weight block with a NEON unpacking.
pub(crate) trait NeonBlock: WeightBlock {
    /// The block unpacked to registers.
    type Unpacked;
    /// # Safety
    /// The CPU supports NEON.
    unsafe fn unpack_neon(&self) -> Self::Unpacked;
    /// The block's term of a row's dot product with `x`, rounded as the
    /// reference's [`WeightBlock::dot`].
    ///
    /// # Safety
    /// The CPU supports NEON.
    unsafe fn term(u: &Self::Unpacked, x: &Self::Act) -> f32;
}

/// Rows `rows` of `w` (`nb` blocks each) against `n_tokens` activation
/// rows, or `false` when the CPU lacks NEON.
pub(crate) fn rows<B: NeonBlock>(
    w: &[B],
    nb: usize,
    rows: Range<usize>,
    x: &[B::Act],
    n_tokens: usize,
    out: &mut OutRows<'_>,
) -> bool {
    if !std::arch::is_aarch64_feature_detected!("neon") {
        return false;
    }
    // SAFETY: the CPU supports NEON (checked just above).
    unsafe { rows_impl(w, nb, rows, x, n_tokens, out) };
    true
}

#[target_feature(enable = "neon")]
fn rows_impl<B: NeonBlock>(
    w: &[B],
    nb: usize,
    rows: Range<usize>,
    x: &[B::Act],
    n_tokens: usize,
    out: &mut OutRows<'_>,
) {
    for r in rows {
        let wr = &w[r * nb..(r + 1) * nb];
        let mut t0 = 0;
        while t0 < n_tokens {
            let nt = (n_tokens - t0).min(TOKEN_TILE);
            let xt = &x[t0 * nb..(t0 + nt) * nb];
            let mut acc = [0.0f32; TOKEN_TILE];
            for (b, blk) in wr.iter().enumerate() {
                // SAFETY: this function is compiled with NEON.
                let u = unsafe { blk.unpack_neon() };
                for (a, xr) in acc.iter_mut().zip(xt.chunks_exact(nb)) {
                    // SAFETY: as above.
                    *a += unsafe { B::term(&u, &xr[b]) };
                }
            }
            for (j, &a) in acc.iter().enumerate().take(nt) {
                out.set(t0 + j, r, a);
            }
            t0 += nt;
        }
    }
}

/// `acc` plus the products of `q` and `x`, pairwise in i32 lanes.
#[inline]
#[target_feature(enable = "neon")]
fn dot16(acc: int32x4_t, q: int8x16_t, x: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(q), vget_low_s8(x));
    let hi = vmull_high_s8(q, x);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

#[inline]
#[target_feature(enable = "neon")]
fn bytes(b: [u8; 16]) -> uint8x16_t {
    bytemuck::cast(b)
}

#[inline]
#[target_feature(enable = "neon")]
fn signed(v: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(v)
}

/// Low and high nibbles of 16 bytes.
#[inline]
#[target_feature(enable = "neon")]
fn nibbles(qs: [u8; 16]) -> [uint8x16_t; 2] {
    let v = bytes(qs);
    [vandq_u8(v, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(v)]
}

/// `v >> n` per byte, `n` at run time.
#[inline]
#[target_feature(enable = "neon")]
fn shr(v: uint8x16_t, n: usize) -> uint8x16_t {
    vshlq_u8(v, vdupq_n_s8(-(n as i8)))
}

/// `value` in the bytes whose bit `bit` is set in `v`, else 0.
#[inline]
#[target_feature(enable = "neon")]
fn bit_as(v: uint8x16_t, bit: usize, value: u8) -> uint8x16_t {
    vandq_u8(vtstq_u8(v, vdupq_n_u8(1 << bit)), vdupq_n_u8(value))
}

/// Byte `i` is `0x10` where bit `i` of `bits` is set.
#[inline]
#[target_feature(enable = "neon")]
fn fifth_bits(bits: u16) -> uint8x16_t {
    let [lo, hi] = bits.to_le_bytes();
    let spread = vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi));
    let select = bytes([1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128]);
    vandq_u8(vtstq_u8(spread, select), vdupq_n_u8(0x10))
}

/// 16 bytes of nibbles through the IQ4_NL table.
#[inline]
#[target_feature(enable = "neon")]
fn iq4_values(qs: [u8; 16]) -> [int8x16_t; 2] {
    let table: int8x16_t = bytemuck::cast(KVALUES_IQ4NL);
    nibbles(qs).map(|n| vqtbl1q_s8(table, n))
}

// ---- 32-element blocks ----------------------------------------------------

/// A legacy block in registers: its 32 quants and `(d, m)`.
pub(crate) struct LegacyRegs {
    q: [int8x16_t; 2],
    d: f32,
    m: f32,
}

/// The 32 quants of a legacy block, as the reference's `quants`.
trait LegacyQuants: UnpackLegacy {
    /// # Safety
    /// The CPU supports NEON.
    unsafe fn quants_neon(&self) -> [int8x16_t; 2];
}

impl LegacyQuants for BlockQ4_0 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 2] {
        nibbles(self.qs).map(|n| vsubq_s8(signed(n), vdupq_n_s8(8)))
    }
}

impl LegacyQuants for BlockQ4_1 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 2] {
        nibbles(self.qs).map(|n| signed(n))
    }
}

/// Nibbles plus fifth bits, minus `offset`.
#[inline]
#[target_feature(enable = "neon")]
fn five_bit(qs: [u8; 16], qh: [u8; 4], offset: i8) -> [int8x16_t; 2] {
    let qh = u32::from_le_bytes(qh);
    let [lo, hi] = nibbles(qs);
    let high = [fifth_bits(qh as u16), fifth_bits((qh >> 16) as u16)];
    [
        vsubq_s8(signed(vorrq_u8(lo, high[0])), vdupq_n_s8(offset)),
        vsubq_s8(signed(vorrq_u8(hi, high[1])), vdupq_n_s8(offset)),
    ]
}

impl LegacyQuants for BlockQ5_0 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 2] {
        five_bit(self.qs, self.qh, 16)
    }
}

impl LegacyQuants for BlockQ5_1 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 2] {
        five_bit(self.qs, self.qh, 0)
    }
}

impl LegacyQuants for BlockQ8_0 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 2] {
        bytemuck::cast(self.qs)
    }
}

impl LegacyQuants for BlockIQ4NL {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 2] {
        iq4_values(self.qs)
    }
}

impl LegacyQuants for BlockMXFP4 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 2] {
        let table: int8x16_t = bytemuck::cast(KVALUES_MXFP4);
        nibbles(self.qs).map(|n| vqtbl1q_s8(table, n))
    }
}

macro_rules! legacy_neon {
    ($($block:ty),*) => {$(
        impl NeonBlock for $block {
            type Unpacked = LegacyRegs;

            #[inline]
            #[target_feature(enable = "neon")]
            unsafe fn unpack_neon(&self) -> LegacyRegs {
                let (d, m) = self.scales();
                // SAFETY: compiled with NEON, which the caller has checked.
                let q = unsafe { self.quants_neon() };
                LegacyRegs { q, d, m }
            }

            #[inline]
            #[target_feature(enable = "neon")]
            unsafe fn term(u: &LegacyRegs, x: &BlockQ8x32) -> f32 {
                let xq: [int8x16_t; 2] = bytemuck::cast(x.qs);
                let acc = dot16(dot16(vdupq_n_s32(0), u.q[0], xq[0]), u.q[1], xq[1]);
                legacy_term(u.d, u.m, vaddvq_s32(acc), x)
            }
        }
    )*};
}

legacy_neon!(BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockIQ4NL, BlockMXFP4);

// ---- 256-element super-blocks ---------------------------------------------

/// A super-block in registers: 16 groups of 16 quants, and its scales.
pub(crate) struct KRegs {
    q: [int8x16_t; 16],
    s: KScales,
}

/// The 256 quants of a super-block, as the reference's `quants`, 16 per
/// register.
trait KQuants: UnpackK {
    /// # Safety
    /// The CPU supports NEON.
    unsafe fn quants_neon(&self) -> [int8x16_t; 16];
}

/// The two 16-byte halves of 32 bytes.
#[inline]
#[target_feature(enable = "neon")]
fn halves(b: &[u8]) -> [uint8x16_t; 2] {
    std::array::from_fn(|h| bytes(std::array::from_fn(|i| b[16 * h + i])))
}

/// 256 2-bit values laid out as Q2_K's (and TQ2_0's): element `128 n +
/// 32 j + l` in bits `2 j` of byte `32 n + l`.
#[inline]
#[target_feature(enable = "neon")]
fn two_bits(qs: &[u8; 64]) -> [uint8x16_t; 16] {
    let qs = [halves(&qs[..32]), halves(&qs[32..])];
    std::array::from_fn(|g| {
        let (n, j, h) = (g / 8, (g % 8) / 2, g % 2);
        vandq_u8(shr(qs[n][h], 2 * j), vdupq_n_u8(3))
    })
}

impl KQuants for BlockQ2K {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 16] {
        two_bits(&self.qs).map(|q| signed(q))
    }
}

impl KQuants for BlockQ3K {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 16] {
        // As Q2_K, less 4 where bit `4 n + j` of `hmask[l]` is clear.
        let qs = [halves(&self.qs[..32]), halves(&self.qs[32..])];
        let hm = halves(&self.hmask);
        std::array::from_fn(|g| {
            let (n, j, h) = (g / 8, (g % 8) / 2, g % 2);
            let low = vandq_u8(shr(qs[n][h], 2 * j), vdupq_n_u8(3));
            let q = vorrq_u8(low, bit_as(hm[h], 4 * n + j, 4));
            vsubq_s8(signed(q), vdupq_n_s8(4))
        })
    }
}

/// Q4_K and Q5_K quants: element `64 j + 32 half + l` is nibble `half` of
/// byte `32 j + l`, plus for Q5_K bit `2 j + half` of `qh[l]` as 16.
#[inline]
#[target_feature(enable = "neon")]
fn quants_k4(qs: &[u8; 128], qh: Option<&[u8; 32]>) -> [int8x16_t; 16] {
    let chunks: [[uint8x16_t; 2]; 4] = std::array::from_fn(|j| halves(&qs[32 * j..]));
    let qh = qh.map(|h| halves(h));
    std::array::from_fn(|g| {
        let (j, half, h) = (g / 4, (g % 4) / 2, g % 2);
        let v = chunks[j][h];
        let mut q = if half == 0 {
            vandq_u8(v, vdupq_n_u8(0x0f))
        } else {
            vshrq_n_u8::<4>(v)
        };
        if let Some(qh) = qh {
            q = vorrq_u8(q, bit_as(qh[h], 2 * j + half, 0x10));
        }
        signed(q)
    })
}

impl KQuants for BlockQ4K {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 16] {
        quants_k4(&self.qs, None)
    }
}

impl KQuants for BlockQ5K {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 16] {
        quants_k4(&self.qs, Some(&self.qh))
    }
}

impl KQuants for BlockQ6K {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 16] {
        // Element `128 n + 32 g + l`: nibble `g / 2` of
        // `ql[64 n + 32 (g % 2) + l]`, plus bits `2 g` of `qh[32 n + l]` as
        // bits 4-5, less 32.
        std::array::from_fn(|k| {
            let (n, g, h) = (k / 8, (k % 8) / 2, k % 2);
            let ql = halves(&self.ql[64 * n + 32 * (g % 2)..])[h];
            let qh = halves(&self.qh[32 * n..])[h];
            let low = if g / 2 == 0 {
                vandq_u8(ql, vdupq_n_u8(0x0f))
            } else {
                vshrq_n_u8::<4>(ql)
            };
            let high = vshlq_n_u8::<4>(vandq_u8(shr(qh, 2 * g), vdupq_n_u8(3)));
            vsubq_s8(signed(vorrq_u8(low, high)), vdupq_n_s8(32))
        })
    }
}

impl KQuants for BlockIQ4XS {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 16] {
        let blocks: [[u8; 16]; 8] = bytemuck::cast(self.qs);
        bytemuck::cast(blocks.map(|b| iq4_values(b)))
    }
}

impl KQuants for BlockTQ1_0 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 16] {
        // (Five trits a byte: the scalar unpacking.)
        bytemuck::cast(realm_core::quant::unpack_tq1_0(self))
    }
}

impl KQuants for BlockTQ2_0 {
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn quants_neon(&self) -> [int8x16_t; 16] {
        // Q2_K's layout, less 1.
        two_bits(&self.qs).map(|q| vsubq_s8(signed(q), vdupq_n_s8(1)))
    }
}

/// A lattice type's 256 values built in registers, 16 (two grid entries)
/// at a time, as the AVX2 kernel builds them.
#[inline]
#[target_feature(enable = "neon")]
fn iq_quants<B: IqLattice>(b: &B) -> [int8x16_t; 16] {
    let pair = |w: [u64; 4], h: usize| vcombine_u8(vcreate_u8(w[2 * h]), vcreate_u8(w[2 * h + 1]));
    let groups: [[int8x16_t; 2]; 8] = std::array::from_fn(|g| {
        let group = b.group(g);
        std::array::from_fn(|h| {
            let (points, signs) = (pair(group.points, h), pair(group.signs, h));
            if B::SHIFTED {
                // `8 g`, plus 1 or minus 1.
                let one = vorrq_u8(signs, vdupq_n_u8(1));
                signed(vaddq_u8(vshlq_n_u8::<3>(points), one))
            } else {
                // Negated where the mask is all ones.
                signed(vsubq_u8(veorq_u8(points, signs), signs))
            }
        })
    });
    bytemuck::cast(groups)
}

macro_rules! iq_neon {
    ($($block:ty),*) => {$(
        impl KQuants for $block {
            #[inline]
            #[target_feature(enable = "neon")]
            unsafe fn quants_neon(&self) -> [int8x16_t; 16] {
                iq_quants(self)
            }
        }
    )*};
}

iq_neon!(
    BlockIQ1M,
    BlockIQ1S,
    BlockIQ2S,
    BlockIQ2XS,
    BlockIQ2XXS,
    BlockIQ3S,
    BlockIQ3XXS
);

macro_rules! k_neon {
    ($($block:ty),* $(,)?) => {$(
        impl NeonBlock for $block {
            type Unpacked = KRegs;

            #[inline]
            #[target_feature(enable = "neon")]
            unsafe fn unpack_neon(&self) -> KRegs {
                // SAFETY: compiled with NEON, which the caller has checked.
                let q = unsafe { self.quants_neon() };
                KRegs { q, s: self.scales() }
            }

            #[inline]
            #[target_feature(enable = "neon")]
            unsafe fn term(u: &KRegs, x: &BlockQ8K) -> f32 {
                let xq: [int8x16_t; 16] = bytemuck::cast(x.qs);
                let mut sumi = vdupq_n_s32(0);
                for ((&q, &xg), &sc) in u.q.iter().zip(&xq).zip(&u.s.sc) {
                    sumi = vmlaq_n_s32(sumi, dot16(vdupq_n_s32(0), q, xg), sc);
                }
                u.s.term(vaddvq_s32(sumi), x)
            }
        }
    )*};
}

k_neon!(
    BlockQ2K,
    BlockQ3K,
    BlockQ4K,
    BlockQ5K,
    BlockQ6K,
    BlockIQ4XS,
    BlockTQ1_0,
    BlockTQ2_0,
    BlockIQ1M,
    BlockIQ1S,
    BlockIQ2S,
    BlockIQ2XS,
    BlockIQ2XXS,
    BlockIQ3S,
    BlockIQ3XXS,
);
