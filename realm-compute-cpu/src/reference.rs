//! The scalar reference: what each weight block means, and its dot product
//! with a quantized activation block in plain integer arithmetic.
//!
//! Every weight type is described by one unpacking function that turns a
//! block into small integers plus scales (`value = d * scale * q - dmin *
//! min`); the reference dot product and the dequantization both derive from
//! it. The SIMD kernels must agree with these within rounding.

use realm_core::quant::blocks::{
    BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS, BlockIQ4NL,
    BlockIQ4XS, BlockMXFP4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K,
    BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, BlockTQ1_0, BlockTQ2_0, KVALUES_IQ4NL,
    KVALUES_MXFP4, QK_K,
};
use realm_core::quant::{e8m0_to_f32_half, scale_min_k4, unpack_tq1_0, unpack_tq2_0, IqLattice};

use crate::act::{ActBlock, BlockQ8K, BlockQ8x32};

/// A quantized weight block type: its format, reference dot product and
/// dequantization.
pub trait WeightBlock: bytemuck::Pod + Send + Sync {
    /// The activation block it multiplies.
    type Act: ActBlock;
    /// Reference dot product of this block with `x`.
    fn dot(&self, x: &Self::Act) -> f32;
    /// Writes the block's `Self::Act::N` values to `out`.
    fn dequantize(&self, out: &mut [f32]);
}

/// The scales of a 256-element super-block: `value[e] = d * sc[e / 16] *
/// q[e] - dmin * mn[e / 16]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KScales {
    pub sc: [i32; 16],
    pub mn: [i32; 16],
    pub d: f32,
    pub dmin: f32,
}

impl KScales {
    /// The block's term of a row's dot product, from the exact integer sum
    /// `sumi` of `sc[g]` times group `g`'s dot product with `x`: the float
    /// arithmetic every path that must match the reference bit for bit
    /// shares.
    #[inline(always)]
    pub(crate) fn term(&self, sumi: i32, x: &BlockQ8K) -> f32 {
        let summ: i32 = self
            .mn
            .iter()
            .zip(&x.bsums)
            .map(|(&m, &s)| m * i32::from(s))
            .sum();
        x.d * (self.d * sumi as f32 - self.dmin * summ as f32)
    }
}

/// Splits 16 bytes of nibbles into 32 values: low nibbles first, then high.
#[inline(always)]
fn nibbles(qs: &[u8; 16], f: impl Fn(u8) -> i8) -> [i8; 32] {
    let mut q = [0i8; 32];
    for (j, &b) in qs.iter().enumerate() {
        q[j] = f(b & 0x0f);
        q[j + 16] = f(b >> 4);
    }
    q
}

/// Adds the fifth bits of a Q5 block (bit `i` of `qh` for element `i`).
#[inline(always)]
fn with_fifth_bits(qs: &[u8; 16], qh: [u8; 4], offset: i8) -> [i8; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut q = nibbles(qs, |v| v as i8);
    for (i, v) in q.iter_mut().enumerate() {
        *v = (*v | (((qh >> i) & 1) << 4) as i8) - offset;
    }
    q
}

/// Unpacks a legacy (32-element) block: `value[i] = d * q[i] + m`.
pub(crate) trait UnpackLegacy {
    /// `(d, m)`.
    fn scales(&self) -> (f32, f32);
    fn quants(&self) -> [i8; 32];
}

/// One legacy block's term of a row's dot product, from the exact integer
/// dot product `isum` of its quants with `x`'s: the float arithmetic every
/// path that must match the reference bit for bit shares.
#[inline(always)]
pub(crate) fn legacy_term(d: f32, m: f32, isum: i32, x: &BlockQ8x32) -> f32 {
    d * x.d * isum as f32 + m * x.s
}

impl UnpackLegacy for BlockQ4_0 {
    fn scales(&self) -> (f32, f32) {
        (self.d.to_f32(), 0.0)
    }

    fn quants(&self) -> [i8; 32] {
        nibbles(&self.qs, |v| v as i8 - 8)
    }
}

impl UnpackLegacy for BlockQ4_1 {
    fn scales(&self) -> (f32, f32) {
        (self.d.to_f32(), self.m.to_f32())
    }

    fn quants(&self) -> [i8; 32] {
        nibbles(&self.qs, |v| v as i8)
    }
}

impl UnpackLegacy for BlockQ5_0 {
    fn scales(&self) -> (f32, f32) {
        (self.d.to_f32(), 0.0)
    }

    fn quants(&self) -> [i8; 32] {
        with_fifth_bits(&self.qs, self.qh, 16)
    }
}

impl UnpackLegacy for BlockQ5_1 {
    fn scales(&self) -> (f32, f32) {
        (self.d.to_f32(), self.m.to_f32())
    }

    fn quants(&self) -> [i8; 32] {
        with_fifth_bits(&self.qs, self.qh, 0)
    }
}

impl UnpackLegacy for BlockQ8_0 {
    fn scales(&self) -> (f32, f32) {
        (self.d.to_f32(), 0.0)
    }

    fn quants(&self) -> [i8; 32] {
        self.qs
    }
}

impl UnpackLegacy for BlockIQ4NL {
    fn scales(&self) -> (f32, f32) {
        (self.d.to_f32(), 0.0)
    }

    fn quants(&self) -> [i8; 32] {
        nibbles(&self.qs, |v| KVALUES_IQ4NL[usize::from(v)])
    }
}

impl UnpackLegacy for BlockMXFP4 {
    fn scales(&self) -> (f32, f32) {
        (e8m0_to_f32_half(self.e), 0.0)
    }

    fn quants(&self) -> [i8; 32] {
        nibbles(&self.qs, |v| KVALUES_MXFP4[usize::from(v)])
    }
}

macro_rules! legacy_weight {
    ($($block:ty),* $(,)?) => {$(
        impl WeightBlock for $block {
            type Act = BlockQ8x32;

            fn dot(&self, x: &BlockQ8x32) -> f32 {
                let ((d, m), q) = (self.scales(), self.quants());
                let isum: i32 = q.iter().zip(&x.qs).map(|(&w, &a)| i32::from(w) * i32::from(a)).sum();
                legacy_term(d, m, isum, x)
            }

            fn dequantize(&self, out: &mut [f32]) {
                let ((d, m), q) = (self.scales(), self.quants());
                for (o, &q) in out.iter_mut().zip(&q) {
                    *o = d * f32::from(q) + m;
                }
            }
        }
    )*};
}

legacy_weight! {
    BlockQ4_0,
    BlockQ4_1,
    BlockQ5_0,
    BlockQ5_1,
    BlockQ8_0,
    BlockIQ4NL,
    BlockMXFP4,
}

/// Unpacks a 256-element super-block: its scales, and its 256 quants as
/// small signed integers.
pub(crate) trait UnpackK {
    fn scales(&self) -> KScales;
    fn quants(&self) -> [i8; QK_K];
}

/// The 16 signed 6-bit scales of a Q3_K block (already minus 32).
#[inline(always)]
pub(crate) fn scales_q3k(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0x0f } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// Fills `sc`/`mn` (per 16 values) from per-32 values.
#[inline(always)]
fn per16(v: [i32; 8]) -> [i32; 16] {
    std::array::from_fn(|i| v[i / 2])
}

impl UnpackK for BlockQ2K {
    fn quants(&self) -> [i8; QK_K] {
        std::array::from_fn(|e| {
            let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
            ((self.qs[32 * n + l] >> (2 * j)) & 3) as i8
        })
    }

    fn scales(&self) -> KScales {
        KScales {
            sc: std::array::from_fn(|i| i32::from(self.scales[i] & 0x0f)),
            mn: std::array::from_fn(|i| i32::from(self.scales[i] >> 4)),
            d: self.d.to_f32(),
            dmin: self.dmin.to_f32(),
        }
    }
}

impl UnpackK for BlockQ3K {
    fn quants(&self) -> [i8; QK_K] {
        std::array::from_fn(|e| {
            let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = ((self.qs[32 * n + l] >> (2 * j)) & 3) as i8;
            let high = (self.hmask[l] >> (4 * n + j)) & 1;
            low - if high == 1 { 0 } else { 4 }
        })
    }

    fn scales(&self) -> KScales {
        let s = scales_q3k(&self.scales);
        KScales {
            sc: std::array::from_fn(|i| i32::from(s[i])),
            mn: [0; 16],
            d: self.d.to_f32(),
            dmin: 0.0,
        }
    }
}

impl UnpackK for BlockQ4K {
    fn quants(&self) -> [i8; QK_K] {
        std::array::from_fn(|e| {
            let (j, half, l) = (e / 64, (e % 64) / 32, e % 32);
            ((self.qs[32 * j + l] >> (4 * half)) & 0x0f) as i8
        })
    }

    fn scales(&self) -> KScales {
        let sm: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, &self.scales));
        KScales {
            sc: per16(sm.map(|(s, _)| i32::from(s))),
            mn: per16(sm.map(|(_, m)| i32::from(m))),
            d: self.d.to_f32(),
            dmin: self.dmin.to_f32(),
        }
    }
}

impl UnpackK for BlockQ5K {
    fn quants(&self) -> [i8; QK_K] {
        std::array::from_fn(|e| {
            let (j, half, l) = (e / 64, (e % 64) / 32, e % 32);
            let low = (self.qs[32 * j + l] >> (4 * half)) & 0x0f;
            let high = (self.qh[l] >> (2 * j + half)) & 1;
            (low | (high << 4)) as i8
        })
    }

    fn scales(&self) -> KScales {
        let sm: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, &self.scales));
        KScales {
            sc: per16(sm.map(|(s, _)| i32::from(s))),
            mn: per16(sm.map(|(_, m)| i32::from(m))),
            d: self.d.to_f32(),
            dmin: self.dmin.to_f32(),
        }
    }
}

impl UnpackK for BlockQ6K {
    fn quants(&self) -> [i8; QK_K] {
        std::array::from_fn(|e| {
            let (n, g, l) = (e / 128, (e % 128) / 32, e % 32);
            let low = (self.ql[64 * n + 32 * (g % 2) + l] >> (4 * (g / 2))) & 0x0f;
            let high = (self.qh[32 * n + l] >> (2 * g)) & 3;
            (low | (high << 4)) as i8 - 32
        })
    }

    fn scales(&self) -> KScales {
        KScales {
            sc: std::array::from_fn(|i| i32::from(self.scales[i])),
            mn: [0; 16],
            d: self.d.to_f32(),
            dmin: 0.0,
        }
    }
}

impl UnpackK for BlockIQ4XS {
    fn quants(&self) -> [i8; QK_K] {
        let mut q = [0i8; QK_K];
        for (ib, chunk) in q.chunks_exact_mut(32).enumerate() {
            let qs: [u8; 16] = std::array::from_fn(|i| self.qs[16 * ib + i]);
            chunk.copy_from_slice(&nibbles(&qs, |v| KVALUES_IQ4NL[usize::from(v)]));
        }
        q
    }

    fn scales(&self) -> KScales {
        let ls: [i32; 8] = std::array::from_fn(|ib| {
            let low = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
            let high = ((self.scales_h >> (2 * ib)) & 3) as u8;
            i32::from(low | (high << 4)) - 32
        });
        KScales {
            sc: per16(ls),
            mn: [0; 16],
            d: self.d.to_f32(),
            dmin: 0.0,
        }
    }
}

/// The ternary types' scales: one block scale, every sub-block's 1.
fn ternary_scales(d: f32) -> KScales {
    KScales {
        sc: [1; 16],
        mn: [0; 16],
        d,
        dmin: 0.0,
    }
}

impl UnpackK for BlockTQ1_0 {
    fn quants(&self) -> [i8; QK_K] {
        unpack_tq1_0(self)
    }

    fn scales(&self) -> KScales {
        ternary_scales(self.d.to_f32())
    }
}

impl UnpackK for BlockTQ2_0 {
    fn quants(&self) -> [i8; QK_K] {
        unpack_tq2_0(self)
    }

    fn scales(&self) -> KScales {
        ternary_scales(self.d.to_f32())
    }
}

/// The IQ1-IQ3 types: realm-core unpacks them (grid points, signs and
/// scales) to small integers, per-16 scales and one factor.
macro_rules! iq_unpack {
    ($($block:ty),* $(,)?) => {$(
        impl UnpackK for $block {
            fn quants(&self) -> [i8; QK_K] {
                self.unpack().q
            }

            fn scales(&self) -> KScales {
                let u = self.unpack();
                KScales {
                    sc: u.scales.map(i32::from),
                    mn: [0; 16],
                    d: u.d,
                    dmin: 0.0,
                }
            }
        }
    )*};
}

iq_unpack! {
    BlockIQ1M,
    BlockIQ1S,
    BlockIQ2S,
    BlockIQ2XS,
    BlockIQ2XXS,
    BlockIQ3S,
    BlockIQ3XXS,
}

macro_rules! k_weight {
    ($($block:ty),* $(,)?) => {$(
        impl WeightBlock for $block {
            type Act = BlockQ8K;

            fn dot(&self, x: &BlockQ8K) -> f32 {
                let (q, b) = (self.quants(), self.scales());
                let mut sumi = 0i32;
                for ((q, a), sc) in q.chunks_exact(16).zip(x.qs.chunks_exact(16)).zip(b.sc) {
                    let s: i32 = q.iter().zip(a).map(|(&w, &v)| i32::from(w) * i32::from(v)).sum();
                    sumi += sc * s;
                }
                b.term(sumi, x)
            }

            fn dequantize(&self, out: &mut [f32]) {
                let (q, b) = (self.quants(), self.scales());
                for (e, o) in out.iter_mut().enumerate().take(QK_K) {
                    let ds = b.d * b.sc[e / 16] as f32;
                    *o = ds * f32::from(q[e]) - b.dmin * b.mn[e / 16] as f32;
                }
            }
        }
    )*};
}

k_weight! {
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
}

/// Reference dot product of one weight row with one quantized activation row
/// (block by block, in order).
#[inline]
pub(crate) fn dot_row<B: WeightBlock>(w: &[B], x: &[B::Act]) -> f32 {
    w.iter().zip(x).fold(0.0, |acc, (w, x)| acc + w.dot(x))
}
