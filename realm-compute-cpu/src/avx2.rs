//! AVX2 + FMA + F16C kernels for x86-64, selected at run time.
//!
//! Technique (as in ggml's x86 path): weights are unpacked to bytes in a
//! register, multiplied with 8-bit activations by `vpmaddubsw` (unsigned by
//! signed bytes, pairs summed to i16), widened by `vpmaddwd`, converted to
//! f32 once per block and accumulated with FMA under the product of the two
//! block scales. Offsets and mins are folded in through the activation
//! block sums, so 4- and 5-bit weights need no sign trick.
//!
//! Batch invariance: a one-token pass reads the weight blocks directly,
//! several tokens go through a packed copy of a few rows, but every (row,
//! token) pair has its own accumulator updated block by block with the same
//! arithmetic in both, so a pair's result is bit-identical in every tile
//! shape and batch size.
//!
//! Every function here is compiled with `avx2,fma,f16c`; the only entry
//! points from ordinary code ([`packed_rows`], [`kquant_rows`],
//! [`float_rows`], [`add_combination`], [`attend_group`]) check the CPU
//! first.

use std::arch::x86_64::*;
use std::ops::Range;

use half::{bf16, f16};
use realm_core::quant::blocks::QK_K;
use realm_core::quant::blocks::{
    BlockIQ1M, BlockIQ1S, BlockIQ2S, BlockIQ2XS, BlockIQ2XXS, BlockIQ3S, BlockIQ3XXS, BlockIQ4NL,
    BlockIQ4XS, BlockMXFP4, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K,
    BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, BlockTQ1_0, BlockTQ2_0, KVALUES_IQ4NL,
    KVALUES_MXFP4,
};
use realm_core::quant::iq_grids::{IQ1S_GRID, IQ3S_GRID};
use realm_core::quant::{e8m0_to_f32_half, IqGroup, IqLattice};

use crate::act::{BlockQ8K, BlockQ8x32};
use crate::attention::Scoring;
use crate::matmul::OutRows;
use crate::ops::{Activation, GELU_COEF_A, GELU_SQRT_2_OVER_PI};
use crate::reference::{scales_q3k, WeightBlock};

/// True when the CPU has every feature these kernels use.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn h2f(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

/// Sum of the 8 lanes, in a fixed order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Byte `i` is `0xff` where bit `i` of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bits_to_bytes(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        ),
    );
    let select = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select)
}

/// 16 bytes of nibbles as 32 bytes: low nibbles, then high nibbles. The
/// bytes go to both halves in one load, and one variable shift moves the
/// high half's nibbles down, so the split costs two vector operations.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: [u8; 16]) -> __m256i {
    let v = _mm256_broadcastsi128_si256(bytemuck::cast(qs));
    let shifted = _mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4));
    _mm256_and_si256(shifted, _mm256_set1_epi8(0x0f))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq4_table() -> __m256i {
    let t: __m128i = bytemuck::cast(KVALUES_IQ4NL);
    _mm256_broadcastsi128_si256(t)
}

/// A SIMD kernel for one weight type: unpack a block to registers, then fold
/// it into a (row, token) accumulator.
pub(crate) trait Kernel {
    /// The weight block.
    type Block: WeightBlock;
    /// A block unpacked to registers (or the block itself, for a kernel
    /// that reads it as it multiplies).
    type Unpacked<'a>: Copy
    where
        Self: 'a;
    /// One (row, token) accumulator.
    type Acc: Copy;

    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    unsafe fn unpack(b: &Self::Block) -> Self::Unpacked<'_>;
    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    unsafe fn zero() -> Self::Acc;
    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    unsafe fn step(
        u: &Self::Unpacked<'_>,
        x: &<Self::Block as WeightBlock>::Act,
        acc: &mut Self::Acc,
    );
    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    unsafe fn finish(acc: Self::Acc) -> f32;
}

type Act<K> = <<K as Kernel>::Block as WeightBlock>::Act;

/// Rows per tile, and so streams per thread, of a one-token pass.
const DECODE_STREAMS: usize = 4;

/// The order in which a one-token pass visits rows `rows`: tiles of `R`
/// rows taken from `R` separate stretches of the range (tile `j` holds rows
/// `start + j`, `start + q + j`, ... with `q = ceil(len / R)`), so the
/// hardware prefetcher follows `R` independent streams. Reading a matrix
/// this way measured twice the bandwidth of reading it front to back (the
/// Q8_0 262144x640 output matrix: 13 GB/s to 24-30 GB/s on 2 threads),
/// which is what a decode step is bound by.
///
/// Yields the tile's rows and how many of them are real: in the last tiles
/// the later stretches have run out, and their slots repeat a real row
/// (loaded, never stored), so the kernel always runs full tiles.
struct StreamTiles<const R: usize> {
    rows: Range<usize>,
    stretch: usize,
    j: usize,
}

impl<const R: usize> StreamTiles<R> {
    fn new(rows: Range<usize>) -> Self {
        let stretch = rows.len().div_ceil(R);
        Self {
            rows,
            stretch,
            j: 0,
        }
    }
}

impl<const R: usize> Iterator for StreamTiles<R> {
    type Item = ([usize; R], usize);

    fn next(&mut self) -> Option<Self::Item> {
        let (n, q, j) = (self.rows.len(), self.stretch, self.j);
        if j >= q {
            return None;
        }
        self.j += 1;
        // Stretch `i` holds offsets `i * q..(i + 1) * q`; stretch 0 always
        // has offset `j`, so the real rows come first.
        let real = (0..R).take_while(|i| i * q + j < n).count();
        let idx = std::array::from_fn(|i| {
            let off = if i < real { i * q + j } else { j };
            self.rows.start + off
        });
        Some((idx, real))
    }
}

/// Rows `idx` of `w` (`nb` blocks each), by a plain loop: written as
/// `idx.map(...)` or `array::from_fn` in the kernels, the closure and the
/// array function stayed out of line, 4-5 calls per tile (about 5% of a
/// decode step in profiles of both models).
#[inline(always)]
fn row_slices<B, const R: usize>(w: &[B], nb: usize, idx: [usize; R]) -> [&[B]; R] {
    let mut rows: [&[B]; R] = [&[]; R];
    for (row, r) in rows.iter_mut().zip(idx) {
        *row = &w[r * nb..(r + 1) * nb];
    }
    rows
}

/// Prefetches the first [`PREFETCH_BYTES`] of each stream that starts at
/// row `idx[i]`: the in-loop prefetches run that far ahead, so without this
/// the start of every stream would be a string of demand misses, a large
/// share of a small matrix's product.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_stream_starts<B, const R: usize>(w: &[B], nb: usize, idx: [usize; R]) {
    for r in idx {
        let start = w.as_ptr().wrapping_add(r * nb).cast::<i8>();
        for line in (0..PREFETCH_BYTES.min(nb * size_of::<B>())).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(line));
        }
    }
}

/// Dot products of `R` weight rows with one activation row (all `nb`
/// blocks long).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<K: Kernel, const R: usize>(w: [&[K::Block]; R], x: &[Act<K>], nb: usize) -> [f32; R] {
    let w = w.map(|s| &s[..nb]);
    let x = &x[..nb];
    // SAFETY: this function is compiled with avx2,fma,f16c, which its
    // callers have checked the CPU supports.
    let mut acc = [unsafe { K::zero() }; R];
    for (b, xb) in x.iter().enumerate() {
        for (wr, a) in w.iter().zip(acc.iter_mut()) {
            // `PREFETCH_BYTES` further on in this row's stream (see
            // `StreamTiles`), every cache line of a block. A prefetch never
            // faults, so running past the end is harmless.
            let ahead = wr.as_ptr().wrapping_add(b).cast::<i8>();
            let mut line = PREFETCH_BYTES;
            while line < PREFETCH_BYTES + size_of::<K::Block>() {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line));
                line += 64;
            }
            // SAFETY: as above.
            let u = unsafe { K::unpack(&wr[b]) };
            // SAFETY: as above.
            unsafe { K::step(&u, xb, a) };
        }
    }
    // SAFETY: as above.
    acc.map(|a| unsafe { K::finish(a) })
}

/// One token (decode): rows `rows` in [`StreamTiles`] order.
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_impl<K: Kernel>(
    w: &[K::Block],
    nb: usize,
    rows: Range<usize>,
    x: &[Act<K>],
    t: usize,
    out: &mut OutRows<'_>,
) {
    for (j, (idx, real)) in StreamTiles::<DECODE_STREAMS>::new(rows).enumerate() {
        if j == 0 {
            prefetch_stream_starts(w, nb, idx);
        }
        let res = tile::<K, DECODE_STREAMS>(row_slices(w, nb, idx), x, nb);
        for (&r, &v) in idx.iter().zip(&res).take(real) {
            out.set(t, r, v);
        }
    }
}

// ---- 32-element blocks ----------------------------------------------------

/// How a 32-element type's values relate to its unpacked bytes.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Form {
    /// Signed bytes, `value = d * q`.
    Signed,
    /// Unsigned bytes, `value = d * (q - offset)`.
    Offset(f32),
    /// Unsigned bytes, `value = d * q + m`.
    Min,
}

/// A 32-element weight type as bytes in a register.
pub(crate) trait LegacySimd: WeightBlock<Act = BlockQ8x32> {
    const FORM: Form;
    /// The 32 quants, the scale, and the min (for [`Form::Min`]).
    ///
    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    unsafe fn load(&self) -> (__m256i, f32, f32);

    /// The f16 bits of the scale (low half) and of the min (high half, 0
    /// for types without a min); for a type whose scale is no f16
    /// ([`LegacySimd::scales`] overridden), its scale's own bits.
    fn scale_bits(&self) -> u32;

    /// The scales of one block of each of `FUSED_ROWS` rows.
    ///
    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(blks: [&Self; FUSED_ROWS]) -> __m128 {
        let bits: [u16; FUSED_ROWS] = blks.map(|b| b.scale_bits() as u16);
        _mm_cvtph_ps(_mm_cvtsi64_si128(bytemuck::cast(bits)))
    }
}

impl LegacySimd for BlockQ4_0 {
    const FORM: Form = Form::Offset(8.0);
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(&self) -> (__m256i, f32, f32) {
        (nibbles(self.qs), h2f(self.d), 0.0)
    }

    #[inline(always)]
    fn scale_bits(&self) -> u32 {
        u32::from(self.d.to_bits())
    }
}

impl LegacySimd for BlockQ4_1 {
    const FORM: Form = Form::Min;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(&self) -> (__m256i, f32, f32) {
        (nibbles(self.qs), h2f(self.d), h2f(self.m))
    }

    #[inline(always)]
    fn scale_bits(&self) -> u32 {
        u32::from(self.d.to_bits()) | (u32::from(self.m.to_bits()) << 16)
    }
}

impl LegacySimd for BlockQ5_0 {
    const FORM: Form = Form::Offset(16.0);
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(&self) -> (__m256i, f32, f32) {
        let high = _mm256_and_si256(
            bits_to_bytes(u32::from_le_bytes(self.qh)),
            _mm256_set1_epi8(0x10),
        );
        (_mm256_or_si256(nibbles(self.qs), high), h2f(self.d), 0.0)
    }

    #[inline(always)]
    fn scale_bits(&self) -> u32 {
        u32::from(self.d.to_bits())
    }
}

impl LegacySimd for BlockQ5_1 {
    const FORM: Form = Form::Min;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(&self) -> (__m256i, f32, f32) {
        let high = _mm256_and_si256(
            bits_to_bytes(u32::from_le_bytes(self.qh)),
            _mm256_set1_epi8(0x10),
        );
        (
            _mm256_or_si256(nibbles(self.qs), high),
            h2f(self.d),
            h2f(self.m),
        )
    }

    #[inline(always)]
    fn scale_bits(&self) -> u32 {
        u32::from(self.d.to_bits()) | (u32::from(self.m.to_bits()) << 16)
    }
}

impl LegacySimd for BlockQ8_0 {
    const FORM: Form = Form::Signed;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(&self) -> (__m256i, f32, f32) {
        (bytemuck::cast(self.qs), h2f(self.d), 0.0)
    }

    #[inline(always)]
    fn scale_bits(&self) -> u32 {
        u32::from(self.d.to_bits())
    }
}

impl LegacySimd for BlockIQ4NL {
    const FORM: Form = Form::Signed;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(&self) -> (__m256i, f32, f32) {
        let q = _mm256_shuffle_epi8(iq4_table(), nibbles(self.qs));
        (q, h2f(self.d), 0.0)
    }

    #[inline(always)]
    fn scale_bits(&self) -> u32 {
        u32::from(self.d.to_bits())
    }
}

/// MXFP4's table plus 12: every value as an unsigned byte (0..=24), so
/// that its products take the offset form, as Q4_0's do, without the
/// signed form's sign shuffling.
const MXFP4_PLUS_12: [i8; 16] = {
    let mut t = [0i8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = KVALUES_MXFP4[i] + 12;
        i += 1;
    }
    t
};

impl LegacySimd for BlockMXFP4 {
    const FORM: Form = Form::Offset(12.0);
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load(&self) -> (__m256i, f32, f32) {
        let t: __m128i = bytemuck::cast(MXFP4_PLUS_12);
        let q = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(t), nibbles(self.qs));
        (q, e8m0_to_f32_half(self.e), 0.0)
    }

    #[inline(always)]
    fn scale_bits(&self) -> u32 {
        u32::from(self.e)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(blks: [&Self; FUSED_ROWS]) -> __m128 {
        let [a, b, c, d] = blks.map(|b| E8M0_HALF[usize::from(b.e)]);
        _mm_setr_ps(a, b, c, d)
    }
}

/// Every E8M0 exponent's halved scale ([`e8m0_to_f32_half`]), looked up
/// rather than built, four rows at a time.
static E8M0_HALF: [f32; 256] = {
    let mut t = [0.0f32; 256];
    let mut e = 0;
    while e < 256 {
        t[e] = e8m0_to_f32_half(e as u8);
        e += 1;
    }
    t
};

// ---- 256-element super-blocks ---------------------------------------------

/// A super-block as it enters the shared k-quant kernel: 8 groups of 32
/// bytes, one scale per 16 values, and (for types with mins) one min per 16.
pub(crate) struct KParts {
    q: [__m256i; 8],
    /// 16 signed bytes.
    scales: __m128i,
    /// 16 signed bytes (zero for types without mins).
    mins: __m128i,
    d: f32,
    dmin: f32,
}

/// A 256-element weight type as 8 registers of bytes.
pub(crate) trait KSimd: WeightBlock<Act = BlockQ8K> {
    /// Bytes are signed table values (IQ4_XS), not unsigned quants.
    const SIGNED: bool = false;
    /// Signed values of magnitude at most 63, so that the packed tile may
    /// add two `maddubs` results in i16 (at most 4 * 63 * 127) before
    /// `madd`, as it does for the unsigned types.
    const NARROW: bool = false;
    /// Value = byte - `OFFSET` (Q3_K: 4, Q6_K: 32).
    const OFFSET: i32 = 0;
    /// The type subtracts `dmin * min` per sub-block.
    const HAS_MIN: bool = false;
    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    unsafe fn parts(&self) -> KParts;
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32(b: [u8; 32]) -> __m256i {
    bytemuck::cast(b)
}

/// `v >> n` per 16-bit lane, `n` at run time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn srl16(v: __m256i, n: usize) -> __m256i {
    _mm256_srl_epi16(v, _mm_cvtsi32_si128(n as i32))
}

/// Scales and mins of a Q4_K/Q5_K block, one per 16 values (each of the
/// eight 6-bit values twice), worked out four at a time in 32-bit words
/// rather than byte by byte: the first four of each are the low 6 bits of
/// bytes 0-3 (scales) and 4-7 (mins); the last four take their low 4 bits
/// from bytes 8-11 (low nibbles for scales, high for mins) and their top 2
/// from the top bits of bytes 0-3 (scales) or 4-7 (mins).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales_mins_k4(s: &[u8; 12]) -> (__m128i, __m128i) {
    let [a, b, c]: [u32; 3] = bytemuck::cast(*s);
    let (low6, low4, low2) = (0x3f3f_3f3f, 0x0f0f_0f0f, 0x0303_0303);
    let sc_hi = (c & low4) | (((a >> 6) & low2) << 4);
    let mn_hi = ((c >> 4) & low4) | (((b >> 6) & low2) << 4);
    let sc = u64::from(a & low6) | (u64::from(sc_hi) << 32);
    let mn = u64::from(b & low6) | (u64::from(mn_hi) << 32);
    let twice = |v: u64| {
        let v = _mm_cvtsi64_si128(v as i64);
        _mm_unpacklo_epi8(v, v)
    };
    (twice(sc), twice(mn))
}

/// 256 2-bit values laid out as Q2_K's (and TQ2_0's): value `128 n + 32 j
/// + l` in bits `2 j` of byte `32 n + l`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn two_bits(qs: [u8; 64]) -> [__m256i; 8] {
    let halves: [[u8; 32]; 2] = bytemuck::cast(qs);
    let m3 = _mm256_set1_epi8(3);
    std::array::from_fn(|g| _mm256_and_si256(srl16(load32(halves[g / 4]), 2 * (g % 4)), m3))
}

impl KSimd for BlockQ2K {
    const HAS_MIN: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn parts(&self) -> KParts {
        let q = two_bits(self.qs);
        let sc: __m128i = bytemuck::cast(self.scales);
        let low4 = _mm_set1_epi8(0x0f);
        KParts {
            q,
            scales: _mm_and_si128(sc, low4),
            mins: _mm_and_si128(_mm_srli_epi16::<4>(sc), low4),
            d: h2f(self.d),
            dmin: h2f(self.dmin),
        }
    }
}

impl KSimd for BlockQ3K {
    const OFFSET: i32 = 4;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn parts(&self) -> KParts {
        let halves: [[u8; 32]; 2] = bytemuck::cast(self.qs);
        let hmask = load32(self.hmask);
        let (m3, one) = (_mm256_set1_epi8(3), _mm256_set1_epi8(1));
        let q = std::array::from_fn(|g| {
            let low = _mm256_and_si256(srl16(load32(halves[g / 4]), 2 * (g % 4)), m3);
            let high = _mm256_and_si256(srl16(hmask, g), one);
            _mm256_or_si256(low, _mm256_slli_epi16::<2>(high))
        });
        KParts {
            q,
            scales: bytemuck::cast(scales_q3k(&self.scales)),
            mins: _mm_setzero_si128(),
            d: h2f(self.d),
            dmin: 0.0,
        }
    }
}

impl KSimd for BlockQ4K {
    const HAS_MIN: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn parts(&self) -> KParts {
        let chunks: [[u8; 32]; 4] = bytemuck::cast(self.qs);
        let m4 = _mm256_set1_epi8(0x0f);
        let q = std::array::from_fn(|g| {
            let v = load32(chunks[g / 2]);
            _mm256_and_si256(srl16(v, 4 * (g % 2)), m4)
        });
        let (scales, mins) = scales_mins_k4(&self.scales);
        KParts {
            q,
            scales,
            mins,
            d: h2f(self.d),
            dmin: h2f(self.dmin),
        }
    }
}

impl KSimd for BlockQ5K {
    const HAS_MIN: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn parts(&self) -> KParts {
        let chunks: [[u8; 32]; 4] = bytemuck::cast(self.qs);
        let qh = load32(self.qh);
        let (m4, one) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(1));
        let q = std::array::from_fn(|g| {
            let low = _mm256_and_si256(srl16(load32(chunks[g / 2]), 4 * (g % 2)), m4);
            let high = _mm256_and_si256(srl16(qh, g), one);
            _mm256_or_si256(low, _mm256_slli_epi16::<4>(high))
        });
        let (scales, mins) = scales_mins_k4(&self.scales);
        KParts {
            q,
            scales,
            mins,
            d: h2f(self.d),
            dmin: h2f(self.dmin),
        }
    }
}

impl KSimd for BlockQ6K {
    const OFFSET: i32 = 32;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn parts(&self) -> KParts {
        let ql: [[u8; 32]; 4] = bytemuck::cast(self.ql);
        let qh: [[u8; 32]; 2] = bytemuck::cast(self.qh);
        let (m4, m3) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
        let q = std::array::from_fn(|g| {
            let (n, j) = (g / 4, g % 4);
            let low = _mm256_and_si256(srl16(load32(ql[2 * n + j % 2]), 4 * (j / 2)), m4);
            let high = _mm256_and_si256(srl16(load32(qh[n]), 2 * j), m3);
            _mm256_or_si256(low, _mm256_slli_epi16::<4>(high))
        });
        KParts {
            q,
            scales: bytemuck::cast(self.scales),
            mins: _mm_setzero_si128(),
            d: h2f(self.d),
            dmin: 0.0,
        }
    }
}

impl KSimd for BlockIQ4XS {
    const SIGNED: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn parts(&self) -> KParts {
        let chunks: [[u8; 16]; 8] = bytemuck::cast(self.qs);
        let table = iq4_table();
        let q = std::array::from_fn(|g| _mm256_shuffle_epi8(table, nibbles(chunks[g])));
        let ls: [i8; 8] = std::array::from_fn(|ib| {
            let low = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
            let high = ((self.scales_h >> (2 * ib)) & 3) as u8;
            (low | (high << 4)) as i8 - 32
        });
        KParts {
            q,
            scales: bytemuck::cast::<[i8; 16], __m128i>(std::array::from_fn(|i| ls[i / 2])),
            mins: _mm_setzero_si128(),
            d: h2f(self.d),
            dmin: 0.0,
        }
    }
}

/// The ternary types' scales: every sub-block's 1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ternary_scales() -> __m128i {
    _mm_set1_epi8(1)
}

impl KSimd for BlockTQ1_0 {
    // (Bytes are `t + 1`.)
    const OFFSET: i32 = 1;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn parts(&self) -> KParts {
        // Five trits a byte do not unpack by shifts: the scalar unpacking,
        // then the registers.
        let t = realm_core::quant::unpack_tq1_0(self).map(|t| (t + 1) as u8);
        let chunks: [[u8; 32]; 8] = bytemuck::cast(t);
        KParts {
            q: chunks.map(|c| load32(c)),
            scales: ternary_scales(),
            mins: _mm_setzero_si128(),
            d: h2f(self.d),
            dmin: 0.0,
        }
    }
}

impl KSimd for BlockTQ2_0 {
    const OFFSET: i32 = 1;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn parts(&self) -> KParts {
        // (`t + 1` laid out as Q2_K's quants.)
        KParts {
            q: two_bits(self.qs),
            scales: ternary_scales(),
            mins: _mm_setzero_si128(),
            d: h2f(self.d),
            dmin: 0.0,
        }
    }
}

/// Group `g` of a lattice block (`group` its [`IqLattice::group`]) in
/// registers: magnitudes and multipliers whose signs are the values'.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq_group<B: IqSimd>(b: &B, g: usize, group: &IqGroup) -> (__m256i, __m256i) {
    // SAFETY: compiled with the features `points` and `multipliers` need.
    let (points, signs) = unsafe { (b.points(g, group), b.multipliers(g, group)) };
    if B::SHIFTED {
        // `8 g` (bytes -1, 0, 1 shifted within 16-bit lanes, the bits
        // carried out of the low byte cleared), plus the shift, 1 or -1.
        let eight = _mm256_and_si256(
            _mm256_slli_epi16::<3>(points),
            _mm256_set1_epi8(0xf8u8 as i8),
        );
        let q = _mm256_add_epi8(eight, signs);
        (_mm256_abs_epi8(q), q)
    } else {
        (points, signs)
    }
}

/// A lattice type's super-block built in registers, group by group.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq_parts<B: IqSimd>(b: &B) -> KParts {
    let mut scales = [0u64; 2];
    let mut q = [_mm256_setzero_si256(); 8];
    // (A loop, not `array::from_fn`: LLVM left that closure a call.)
    for (g, q) in q.iter_mut().enumerate() {
        let group = b.group(g);
        scales[g / 4] |= u64::from(u16::from_le_bytes(group.scales)) << (16 * (g % 4));
        let (magnitudes, signs) = iq_group(b, g, &group);
        *q = _mm256_sign_epi8(magnitudes, signs);
    }
    KParts {
        q,
        scales: _mm_set_epi64x(scales[1] as i64, scales[0] as i64),
        mins: _mm_setzero_si128(),
        d: b.factor(),
        dmin: 0.0,
    }
}

macro_rules! iq_simd {
    ($($block:ty),*) => {$(
        impl KSimd for $block {
            const SIGNED: bool = true;
            // (Magnitudes: IQ1 at most 9, IQ2 43, IQ3_XXS 62, IQ3_S 15.)
            const NARROW: bool = true;
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn parts(&self) -> KParts {
                iq_parts(self)
            }
        }
    )*};
}

iq_simd!(
    BlockIQ1M,
    BlockIQ1S,
    BlockIQ2S,
    BlockIQ2XS,
    BlockIQ2XXS,
    BlockIQ3S,
    BlockIQ3XXS
);

/// How [`IqDirect`] reads a lattice type's grid entries and signs.
pub(crate) trait IqSimd: IqLattice + WeightBlock<Act = BlockQ8K> {
    /// Group `g`'s 32 grid values; by default `group`'s entries.
    ///
    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn points(&self, _g: usize, group: &IqGroup) -> __m256i {
        let [a, b, c, d] = group.points.map(|w| w as i64);
        _mm256_set_epi64x(d, c, b, a)
    }

    /// Group `g`'s signs as multipliers, bytes 1 or -1 (for the
    /// [`IqLattice::SHIFTED`] types, their shifts); by default from
    /// `group`'s masks.
    ///
    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn multipliers(&self, _g: usize, group: &IqGroup) -> __m256i {
        let [a, b, c, d] = group.signs.map(|w| w as i64);
        _mm256_or_si256(_mm256_set_epi64x(d, c, b, a), _mm256_set1_epi8(1))
    }

    /// The block's integer product with `x`'s quants: each group's sums
    /// of `q * x` times its scales, added in 8 lanes; by default group by
    /// group from [`IqLattice::group`].
    ///
    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn isum(&self, x: &BlockQ8K) -> __m256i {
        let xs: &[[i8; 32]; 8] = bytemuck::cast_ref(&x.qs);
        let mut isum = _mm256_setzero_si256();
        for (g, xg) in xs.iter().enumerate() {
            let group = self.group(g);
            let xv: __m256i = bytemuck::cast(*xg);
            let (magnitudes, signs) = iq_group(self, g, &group);
            let pairs = _mm256_maddubs_epi16(magnitudes, _mm256_sign_epi8(xv, signs));
            let [s0, s1] = group.scales.map(i16::from);
            let sc = _mm256_setr_m128i(_mm_set1_epi16(s0), _mm_set1_epi16(s1));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, sc));
        }
        isum
    }
}

/// Multipliers 1 or -1 from 32 sign bits, value `j`'s in bit `j % 8` of
/// byte `j / 8` (set for -1): each byte spread over its 8 values, one bit
/// tested in each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sign_bits(bytes: [u8; 4]) -> __m256i {
    let spread: [u8; 32] = std::array::from_fn(|j| (j / 8) as u8);
    let v = _mm256_set1_epi32(i32::from_le_bytes(bytes));
    // (Per 128-bit lane: the high lane's bytes 2 and 3 are its own too.)
    let v = _mm256_shuffle_epi8(v, bytemuck::cast(spread));
    let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(v, bits), bits);
    _mm256_or_si256(set, _mm256_set1_epi8(1))
}

impl IqSimd for BlockIQ1M {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn isum(&self, x: &BlockQ8K) -> __m256i {
        // The group's own `points` and `multipliers` read the block, not
        // the unpacked group, which is never made; the scales are made
        // once a block: each `2 s + 1` (3 bits of the scale words, 6 a
        // group) twice in a 32-bit lane, groups 0-3's then 4-7's in order
        // of half-group, and a permute a group spreads its two.
        const UNREAD: IqGroup = IqGroup {
            points: [0; 4],
            signs: [0; 4],
            scales: [0; 2],
        };
        let mut scales = [0u32; 16];
        for (k, sc) in scales.iter_mut().enumerate() {
            let word = u32::from(u16::from_le_bytes([
                self.scales[2 * (k / 4)],
                self.scales[2 * (k / 4) + 1],
            ]));
            let s = 2 * ((word >> (3 * (k % 4))) & 7) + 1;
            *sc = s | (s << 16);
        }
        let halves: [__m256i; 2] = bytemuck::cast(scales);
        let xs: &[[i8; 32]; 8] = bytemuck::cast_ref(&x.qs);
        let mut isum = _mm256_setzero_si256();
        for (g, xg) in xs.iter().enumerate() {
            let (magnitudes, signs) = iq_group(self, g, &UNREAD);
            let xv: __m256i = bytemuck::cast(*xg);
            let pairs = _mm256_maddubs_epi16(magnitudes, _mm256_sign_epi8(xv, signs));
            let k = 2 * (g % 4) as i32;
            let sc = _mm256_permutevar8x32_epi32(
                halves[g / 4],
                _mm256_setr_epi32(k, k, k, k, k + 1, k + 1, k + 1, k + 1),
            );
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, sc));
        }
        isum
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn points(&self, g: usize, _group: &IqGroup) -> __m256i {
        // The 4 eleven-bit indices in scalar registers (low bytes from
        // `qs`, entry `l`'s high bits bits `4 l` to `4 l + 2` of the
        // 16-bit word of `qh`), then 4 loads: measured faster than
        // building them in a vector and extracting them one by one.
        let low = u32::from_le_bytes([
            self.qs[4 * g],
            self.qs[4 * g + 1],
            self.qs[4 * g + 2],
            self.qs[4 * g + 3],
        ]) as usize;
        let h = usize::from(u16::from_le_bytes([self.qh[2 * g], self.qh[2 * g + 1]]));
        let e = [
            (low & 0xff) | ((h & 0x7) << 8),
            ((low >> 8) & 0xff) | ((h & 0x70) << 4),
            ((low >> 16) & 0xff) | (h & 0x700),
            (low >> 24) | ((h & 0x7000) >> 4),
        ]
        .map(|i| IQ1S_GRID[i & 2047] as i64);
        _mm256_set_epi64x(e[3], e[2], e[1], e[0])
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn multipliers(&self, g: usize, _group: &IqGroup) -> __m256i {
        iq1m_shifts(self, g)
    }
}

/// IQ1_M group `g`'s shifts as multipliers, bytes 1 or -1: entry `l`'s is
/// negative where bit `4 l + 3` of its 16-bit word is set, that bit
/// tested in each 16-bit lane of entry `l`'s 64 bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq1m_shifts(b: &BlockIQ1M, g: usize) -> __m256i {
    let h = u16::from_le_bytes([b.qh[2 * g], b.qh[2 * g + 1]]);
    let bits: [u16; 16] = std::array::from_fn(|i| 8 << (4 * (i / 4)));
    let bits: __m256i = bytemuck::cast(bits);
    let v = _mm256_and_si256(_mm256_set1_epi16(h as i16), bits);
    _mm256_or_si256(_mm256_cmpeq_epi16(v, bits), _mm256_set1_epi8(1))
}

impl IqSimd for BlockIQ1S {}
impl IqSimd for BlockIQ2XS {}
impl IqSimd for BlockIQ2XXS {}
impl IqSimd for BlockIQ3XXS {}

impl IqSimd for BlockIQ2S {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn multipliers(&self, g: usize, _group: &IqGroup) -> __m256i {
        // (The sign bytes follow the 32 low index bytes.)
        let at = QK_K / 8 + 4 * g;
        sign_bits([
            self.qs[at],
            self.qs[at + 1],
            self.qs[at + 2],
            self.qs[at + 3],
        ])
    }
}

impl IqSimd for BlockIQ3S {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn points(&self, g: usize, _group: &IqGroup) -> __m256i {
        // The 8 nine-bit indices in scalar registers (point `i`'s ninth bit
        // is bit `i` of `qh[g]`), then 8 loads.
        let h = usize::from(self.qh[g]);
        let e: [i32; 8] = std::array::from_fn(|i| {
            IQ3S_GRID[usize::from(self.qs[8 * g + i]) | (((h >> i) & 1) << 8)] as i32
        });
        _mm256_setr_epi32(e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7])
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn multipliers(&self, g: usize, _group: &IqGroup) -> __m256i {
        let s = &self.signs[4 * g..];
        sign_bits([s[0], s[1], s[2], s[3]])
    }
}

/// A lattice type's one-token kernel: each group of 32 values goes from
/// its grid entries straight into the product, the signs applied to the
/// activations (`_mm256_sign_epi8`, the entries being magnitudes; Q8_K's
/// quants stop at -127, so none overflows) rather than to the weights, and
/// no unpacked block is kept (with one token nothing would reuse it).
pub(crate) struct IqDirect<B>(std::marker::PhantomData<B>);

impl<B: IqSimd> Kernel for IqDirect<B> {
    type Block = B;
    type Unpacked<'a>
        = &'a B
    where
        B: 'a;
    type Acc = __m256;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(b: &B) -> &B {
        b
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(u: &&B, x: &BlockQ8K, acc: &mut __m256) {
        // SAFETY: `step` runs only where avx2, fma and f16c are, as its
        // own features say.
        let isum = unsafe { u.isum(x) };
        *acc = _mm256_fmadd_ps(
            _mm256_set1_ps(u.factor() * x.d),
            _mm256_cvtepi32_ps(isum),
            *acc,
        );
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256) -> f32 {
        hsum(acc)
    }
}

/// Kernel for the 256-element types.
pub(crate) struct KQuant<B>(std::marker::PhantomData<B>);

/// An unpacked super-block: bytes, per-group scale vectors (i16, one value
/// per 16 lanes), all 16 scales and mins as i16, and the two block scales.
#[derive(Clone, Copy)]
pub(crate) struct KUnpacked {
    q: [__m256i; 8],
    sc: [__m256i; 8],
    scales: __m256i,
    mins: __m256i,
    d: f32,
    dmin: f32,
}

impl<B: KSimd> Kernel for KQuant<B> {
    type Block = B;
    type Unpacked<'a>
        = KUnpacked
    where
        B: 'a;
    type Acc = __m256;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(b: &B) -> KUnpacked {
        // SAFETY: this function is compiled with the features `parts` needs.
        let p = unsafe { b.parts() };
        let scales = _mm256_cvtepi8_epi16(p.scales);
        // Group `g` covers scales `2g` (its first 16 lanes) and `2g + 1`:
        // both in the low half of `scales` for `g < 4`, else the high half.
        // With that half in both halves of a register, one byte shuffle
        // spreads scale `2g` over the low 8 i16 lanes and `2g + 1` over the
        // high 8.
        let halves = [
            _mm256_permute2x128_si256::<0x00>(scales, scales),
            _mm256_permute2x128_si256::<0x11>(scales, scales),
        ];
        let sc = std::array::from_fn(|g| {
            let pick: [u8; 32] = std::array::from_fn(|i| {
                let lane = (2 * g + i / 16) % 8;
                (2 * lane + i % 2) as u8
            });
            _mm256_shuffle_epi8(halves[g / 4], bytemuck::cast(pick))
        });
        KUnpacked {
            q: p.q,
            sc,
            scales,
            mins: _mm256_cvtepi8_epi16(p.mins),
            d: p.d,
            dmin: p.dmin,
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn step(u: &KUnpacked, x: &BlockQ8K, acc: &mut __m256) {
        let xs: [[i8; 32]; 8] = bytemuck::cast(x.qs);
        let mut isum = _mm256_setzero_si256();
        for ((q, sc), xg) in u.q.iter().zip(&u.sc).zip(xs) {
            let xv: __m256i = bytemuck::cast(xg);
            let pairs = if B::SIGNED {
                _mm256_maddubs_epi16(_mm256_abs_epi8(*q), _mm256_sign_epi8(xv, *q))
            } else {
                _mm256_maddubs_epi16(*q, xv)
            };
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(pairs, *sc));
        }
        let bsums: __m256i = bytemuck::cast(x.bsums);
        if B::OFFSET != 0 {
            let off = _mm256_madd_epi16(bsums, u.scales);
            isum = _mm256_sub_epi32(isum, _mm256_mullo_epi32(off, _mm256_set1_epi32(B::OFFSET)));
        }
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(u.d * x.d), _mm256_cvtepi32_ps(isum), *acc);
        if B::HAS_MIN {
            let m = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsums, u.mins));
            *acc = _mm256_fnmadd_ps(_mm256_set1_ps(u.dmin * x.d), m, *acc);
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn finish(acc: __m256) -> f32 {
        hsum(acc)
    }
}

// ---- float weights ----------------------------------------------------------

/// A float weight element type that loads 8 at a time as f32.
pub(crate) trait FloatSimd: bytemuck::Pod {
    /// Whether a prompt's tiles widen these rows to f32 once rather than
    /// at every load: bf16's widening takes two instructions on the
    /// multiplies' ports (measured +25-40% on SmolLM2's pp128), f16's one
    /// instruction elsewhere (widening first measured 5-10% slower).
    const WIDEN_FIRST: bool = false;
    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    unsafe fn load8(w: &[Self; 8]) -> __m256;
    /// The value as f32.
    fn to_f32(self) -> f32;
}

impl FloatSimd for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(w: &[f32; 8]) -> __m256 {
        bytemuck::cast(*w)
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl FloatSimd for f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(w: &[f16; 8]) -> __m256 {
        _mm256_cvtph_ps(bytemuck::cast(*w))
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl FloatSimd for bf16 {
    const WIDEN_FIRST: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(w: &[bf16; 8]) -> __m256 {
        let wide = _mm256_cvtepu16_epi32(bytemuck::cast(*w));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
    }
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// Adds the products of chunk `c..c + 8` of the `R` rows at `wp` with the
/// `C` tokens at `xp` to `acc` (a function, not a closure, so that it
/// inlines whatever the tile's size).
///
/// # Safety
/// Each row and token holds `c + 8` values; the CPU supports avx2, fma and
/// f16c.
#[inline(always)]
unsafe fn float_step<T: FloatSimd, X: FloatSimd, const R: usize, const C: usize>(
    acc: &mut [[__m256; C]; R],
    wp: [*const T; R],
    xp: [*const X; C],
    c: usize,
) {
    // SAFETY: the caller's promises.
    unsafe {
        let wv: [__m256; R] = std::array::from_fn(|i| T::load8(&*wp[i].add(c).cast::<[T; 8]>()));
        for j in 0..C {
            let xv = X::load8(&*xp[j].add(c).cast::<[X; 8]>());
            for i in 0..R {
                acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
            }
        }
    }
}

/// The rows' and tokens' common length (at most `k`), its whole 32-value
/// groups and its whole 8-value chunks.
#[inline(always)]
fn float_lengths<T, X, const R: usize, const C: usize>(
    w: [&[T]; R],
    x: [&[X]; C],
    k: usize,
) -> (usize, usize, usize) {
    let len = w
        .iter()
        .map(|r| r.len())
        .chain(x.iter().map(|t| t.len()))
        .fold(k, usize::min);
    (len, len / 32 * 32, len / 8 * 8)
}

/// Each pair's four accumulators summed (pairwise), then its lanes, then
/// the values from `whole` to `len` in order.
#[inline(always)]
fn float_finish<T: FloatSimd, X: FloatSimd, const R: usize, const C: usize>(
    part: &[[[__m256; C]; R]; 4],
    w: [&[T]; R],
    x: [&[X]; C],
    (whole, len): (usize, usize),
) -> [[f32; C]; R] {
    let mut out = [[0.0; C]; R];
    for i in 0..R {
        for j in 0..C {
            // SAFETY: only inlined into functions compiled with avx2, fma
            // and f16c.
            let sum = unsafe {
                hsum(_mm256_add_ps(
                    _mm256_add_ps(part[0][i][j], part[1][i][j]),
                    _mm256_add_ps(part[2][i][j], part[3][i][j]),
                ))
            };
            out[i][j] = w[i][whole..len]
                .iter()
                .zip(&x[j][whole..len])
                .fold(sum, |s, (&a, &b)| s + a.to_f32() * b.to_f32());
        }
    }
    out
}

/// The product of a weight row with a token's activations, `k` values
/// each, reduced as every float product is: its 8-value chunks into four
/// accumulators in turn (chunk `c` into the `c % 4`-th) through the last
/// whole 32 values, the chunks after them into the first, the sum of the
/// four (pairwise), the sum of its lanes, then the values past the last
/// whole chunk in order. So a (row, token) pair's result is the same alone
/// and in every tile ([`float_tile_passes`]) and batch.
#[inline(always)]
fn float_dot<T: FloatSimd, X: FloatSimd>(w: &[T], x: &[X], k: usize) -> f32 {
    let (len, groups, whole) = float_lengths([w], [x], k);
    let (wp, xp) = ([w.as_ptr()], [x.as_ptr()]);
    // SAFETY: at each call `c + 8 <= whole <= len`, neither slice
    // shorter than `len`; this function is only inlined into functions
    // compiled with avx2, fma and f16c.
    let step = |acc: &mut [[__m256; 1]; 1], c: usize| unsafe { float_step(acc, wp, xp, c) };
    // SAFETY: as above (the features).
    let zero = unsafe { _mm256_setzero_ps() };
    let mut part = [[[zero; 1]; 1]; 4];
    let [a0, a1, a2, a3] = &mut part;
    let mut c = 0;
    while c < groups {
        step(a0, c);
        step(a1, c + 8);
        step(a2, c + 16);
        step(a3, c + 24);
        c += 32;
    }
    while c < whole {
        step(a0, c);
        c += 8;
    }
    float_finish(&part, [w], [x], (whole, len))[0][0]
}

/// Values of a row a pass of [`float_tile_passes`] covers before the
/// next accumulator's pass: the tile's rows and tokens of this stretch
/// stay in L1 through the four passes.
const FLOAT_PASS_VALUES: usize = 512;

/// [`float_dot`]'s sums, the same bit for bit, for a tile of `R` rows by
/// `C` tokens, too many for four accumulators a pair in registers: over
/// each stretch of [`FLOAT_PASS_VALUES`], one pass for each of the four
/// accumulators (its chunks, every fourth, in order), the tile's `R * C`
/// sums of that accumulator in registers and put aside between passes.
#[inline(always)]
fn float_tile_passes<T: FloatSimd, X: FloatSimd, const R: usize, const C: usize>(
    w: [&[T]; R],
    x: [&[X]; C],
    k: usize,
) -> [[f32; C]; R] {
    let (len, groups, whole) = float_lengths(w, x, k);
    let wp = w.map(<[T]>::as_ptr);
    let xp = x.map(<[X]>::as_ptr);
    // SAFETY: at each call `c + 8 <= whole <= len`, no row or token
    // shorter than `len`; this function is only inlined into functions
    // compiled with avx2, fma and f16c.
    let step = |acc: &mut [[__m256; C]; R], c: usize| unsafe { float_step(acc, wp, xp, c) };
    // SAFETY: as above (the features).
    let zero = unsafe { _mm256_setzero_ps() };
    let mut part = [[[zero; C]; R]; 4];
    let mut start = 0;
    while start < groups {
        let end = (start + FLOAT_PASS_VALUES).min(groups);
        for (a, p) in part.iter_mut().enumerate() {
            let mut acc = *p;
            let mut c = start + 8 * a;
            while c < end {
                step(&mut acc, c);
                c += 32;
            }
            *p = acc;
        }
        start = end;
    }
    let mut c = groups;
    while c < whole {
        step(&mut part[0], c);
        c += 8;
    }
    float_finish(&part, w, x, (whole, len))
}

/// [`float_tile_passes`] of `rows` (rows `r..r + R`) and `C` tokens at a
/// time from `tokens.start` while `C` remain; returns the first token not
/// done.
#[inline(always)]
fn float_token_tiles<W: FloatSimd, X: FloatSimd, const R: usize, const C: usize>(
    rows: [&[W]; R],
    (k, r): (usize, usize),
    x: &[X],
    tokens: Range<usize>,
    out: &mut OutRows<'_>,
) -> usize {
    let tok = |t: usize| &x[t * k..(t + 1) * k];
    let mut t = tokens.start;
    while t + C <= tokens.end {
        let v = float_tile_passes::<W, X, R, C>(rows, std::array::from_fn(|j| tok(t + j)), k);
        for (i, row) in v.iter().enumerate() {
            for (j, &y) in row.iter().enumerate() {
                out.set(t + j, r + i, y);
            }
        }
        t += C;
    }
    t
}

/// Rows `r..r + R` against tokens `tokens`: [`float_tile_passes`] of `C`
/// tokens at a time, the last few one at a time ([`float_dot`]). With
/// `wide` (room for `R` rows of f32: [`FloatSimd::WIDEN_FIRST`] types) and
/// tokens enough, the rows are widened to f32 there first, once for all
/// the tiles rather than at each load.
#[inline(always)]
fn float_row_tiles<T: FloatSimd, X: FloatSimd, const R: usize, const C: usize>(
    w: &[T],
    (k, r): (usize, usize),
    x: &[X],
    tokens: Range<usize>,
    wide: &mut [f32],
    out: &mut OutRows<'_>,
) {
    let rows: [&[T]; R] = std::array::from_fn(|i| &w[(r + i) * k..(r + i + 1) * k]);
    let tok = |t: usize| &x[t * k..(t + 1) * k];
    let t;
    if tokens.len() >= FLOAT_WIDEN_TOKENS && wide.len() >= R * k {
        for (d, row) in wide.chunks_exact_mut(k).zip(rows) {
            let ((d8, d_rest), (r8, r_rest)) = (d.as_chunks_mut::<8>(), row.as_chunks::<8>());
            for (d, r) in d8.iter_mut().zip(r8) {
                // SAFETY: only inlined into functions compiled with avx2,
                // fma and f16c, which `load8` and the store need; `d` has
                // room for the 8 values.
                unsafe { _mm256_storeu_ps(d.as_mut_ptr(), T::load8(r)) };
            }
            for (d, &v) in d_rest.iter_mut().zip(r_rest) {
                *d = v.to_f32();
            }
        }
        let rows: [&[f32]; R] = std::array::from_fn(|i| &wide[i * k..(i + 1) * k]);
        t = float_token_tiles::<f32, X, R, C>(rows, (k, r), x, tokens.clone(), out);
    } else {
        t = float_token_tiles::<T, X, R, C>(rows, (k, r), x, tokens.clone(), out);
    }
    for t in t..tokens.end {
        for (i, row) in rows.iter().enumerate() {
            out.set(t, r + i, float_dot(row, tok(t), k));
        }
    }
}

/// Tokens from which a tile of rows is widened to f32 first.
const FLOAT_WIDEN_TOKENS: usize = 16;

/// Activation bytes a pass over the rows works on: a block of tokens stays
/// in L2 while every tile of rows reads it.
const FLOAT_TOKEN_BLOCK_BYTES: usize = 192 * 1024;

/// Rows `rows` in tiles of `R` rows by `C` tokens, the last rows one at
/// a time, over blocks of tokens that fit in L2 (a pass over the rows a
/// block); a lone token a row at a time.
#[inline(always)]
fn float_rows_by<T: FloatSimd, X: FloatSimd, const R: usize, const C: usize>(
    w: &[T],
    k: usize,
    rows: Range<usize>,
    x: &[X],
    n: usize,
    out: &mut OutRows<'_>,
) {
    let block = (FLOAT_TOKEN_BLOCK_BYTES / (size_of::<X>() * k.max(1)) / C * C).max(C);
    let mut wide = if T::WIDEN_FIRST && n >= FLOAT_WIDEN_TOKENS {
        vec![0.0; R * k]
    } else {
        Vec::new()
    };
    let mut t0 = 0;
    while t0 < n {
        let tokens = t0..(t0 + block).min(n);
        let mut r = rows.start;
        if tokens.len() >= C {
            while r + R <= rows.end {
                float_row_tiles::<T, X, R, C>(w, (k, r), x, tokens.clone(), &mut wide, out);
                r += R;
            }
        }
        for r in r..rows.end {
            float_row_tiles::<T, X, 1, C>(w, (k, r), x, tokens.clone(), &mut wide, out);
        }
        t0 = tokens.end;
    }
}

/// Four rows by two tokens at a time: eight sums, four weight chunks and
/// a token's chunk, within sixteen registers (three by four, or four by
/// three, spill and measured slower).
#[target_feature(enable = "avx2,fma,f16c")]
fn float_rows_impl<T: FloatSimd, X: FloatSimd>(
    w: &[T],
    k: usize,
    rows: Range<usize>,
    x: &[X],
    n: usize,
    out: &mut OutRows<'_>,
) {
    float_rows_by::<T, X, 4, 2>(w, k, rows, x, n, out);
}

/// Four rows by six tokens at a time, where AVX-512's 32 registers hold
/// the 24 sums beside the weights' chunks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
fn float_rows_wide<T: FloatSimd, X: FloatSimd>(
    w: &[T],
    k: usize,
    rows: Range<usize>,
    x: &[X],
    n: usize,
    out: &mut OutRows<'_>,
) {
    float_rows_by::<T, X, 4, 6>(w, k, rows, x, n, out);
}

/// The products of float weight rows `rows` (`w`: rows of `k` values) with
/// `n` tokens of activations (`x`: f32, or the weights' own 16-bit type),
/// or `false` when the CPU lacks the features: a pair's result is
/// [`float_dot`]'s, the same in every tile and batch, in tiles of four
/// rows by two tokens (four by six where the CPU has AVX-512's
/// registers). Lengths are the caller's to check: `w` holds `rows.end`
/// rows, `x` `n` tokens.
pub(crate) fn float_rows<T: FloatSimd, X: FloatSimd>(
    w: &[T],
    k: usize,
    rows: Range<usize>,
    x: &[X],
    n: usize,
    out: &mut OutRows<'_>,
) -> bool {
    if !available() {
        return false;
    }
    if n > 1 && is_x86_feature_detected!("avx512vl") {
        // SAFETY: the CPU supports avx2, fma, f16c (checked just above),
        // avx512f and avx512vl (which avx512vl implies, checked here).
        unsafe { float_rows_wide(w, k, rows, x, n, out) };
    } else {
        // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
        unsafe { float_rows_impl(w, k, rows, x, n, out) };
    }
    true
}

/// `d[i] += sum_t c[t] * w[t * m + i]` for `i` in `0..d.len()` (`m`),
/// eight values at a time in a register through all of `c`, or `false`
/// when the CPU lacks the features. Lengths are the caller's to check:
/// `w` holds `c.len()` rows of `d.len()` values.
pub(crate) fn add_combination(d: &mut [f32], c: &[f32], w: &[f32]) -> bool {
    if !available() || w.len() < c.len() * d.len() {
        return false;
    }
    // SAFETY: the CPU supports avx2 and fma (checked just above), and `w`
    // holds `c.len()` rows of `d.len()` values.
    unsafe { add_combination_impl(d, c, w) };
    true
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn add_combination_impl(d: &mut [f32], c: &[f32], w: &[f32]) {
    let m = d.len();
    let whole = m / 8 * 8;
    let (dp, wp) = (d.as_mut_ptr(), w.as_ptr());
    for i in (0..whole).step_by(8) {
        // SAFETY: `i + 8 <= m`, and each row `t < c.len()` of `w` holds
        // `m` values (the caller's check).
        unsafe {
            let mut acc = _mm256_loadu_ps(dp.add(i));
            for (t, &ct) in c.iter().enumerate() {
                let wv = _mm256_loadu_ps(wp.add(t * m + i));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(ct), wv, acc);
            }
            _mm256_storeu_ps(dp.add(i), acc);
        }
    }
    for i in whole..m {
        d[i] = c
            .iter()
            .enumerate()
            .fold(d[i], |a, (t, &ct)| ct.mul_add(w[t * m + i], a));
    }
}

// ---- 32-element blocks, packed-weight kernel --------------------------------
//
// The 32-element types run through one kernel that first unpacks a tile of
// `PACK_ROWS` weight rows into an L1-resident buffer of bytes and scales,
// then sweeps every token of the call past it. Per (row, token) pair the
// arithmetic is fixed by `k` alone:
//
// - for each block `b` in order:
//   `acc = fma(d_w[b] * d_x[b], f32(madd(maddubs(w[b], x[b]), 1)), acc)`,
//   with `acc` 8 lanes wide;
// - `hsum` adds the 8 lanes in a fixed order;
// - types with an offset or a min then add (or subtract `offset *`) the sum,
//   in block order, of the per-block factors `aux_w[b]` times the
//   activation block sums `s_x[b]` (one rounding per product and per sum,
//   as the old scalar accumulator did: it keeps Gemma's logits closest to
//   llama.cpp's).
//
// The packed kernel computes exactly that, transposed: lane `l` of a pair's
// accumulator only ever sees bytes `4l..4l + 4` of each block, so the pack
// stores, per block and per `l`, those 4 bytes of every row of the tile
// side by side, one row per lane. Against one token (its 4 bytes broadcast)
// `maddubs` + `madd` then give lane `l` of all `PACK_ROWS` pairs at once,
// the scale products `d_w * d_x` of all rows take one multiply, and the 8
// lanes of `hsum` become 7 vertical adds in its order. The sequential
// offset/min sum runs in the same row lanes, one multiply and one add per
// block and token.
//
// Neither the tile shape nor the number of tokens changes this sequence, so
// one token alone (decode) and the same token inside a batch give
// bit-identical results.

/// Rows unpacked together, one per vector lane.
const PACK_ROWS: usize = 8;
/// Tokens whose activations stay in L2 while the row tiles stream past.
const PACK_TOKEN_GROUP: usize = 64;

/// One 32-bit word per row of a tile, aligned for a vector load.
#[repr(C, align(32))]
#[derive(Clone, Copy, Default)]
struct Lanes([u32; PACK_ROWS]);

/// Per-thread scratch of the packed kernel; it grows to the largest call
/// and is then reused.
#[derive(Default)]
struct Pack {
    /// `[block][l]`: bytes `4l..4l + 4` fed to `maddubs` (absolute values
    /// for signed types) of each row.
    qa: Vec<Lanes>,
    /// `[block][l]`: the signed bytes likewise (signed types only).
    q: Vec<Lanes>,
    /// `[block]`: the rows' block scales.
    d: Vec<[f32; PACK_ROWS]>,
    /// `[block]`: the rows' offset/min factors.
    aux: Vec<[f32; PACK_ROWS]>,
}

thread_local! {
    static PACK: std::cell::RefCell<Pack> = std::cell::RefCell::new(Pack::default());
}

fn grow<T: Clone + Default>(v: &mut Vec<T>, n: usize) {
    if v.len() < n {
        v.resize(n, T::default());
    }
}

/// The 8x8 transpose of 32-bit words: word `i` of result `l` is word `l`
/// of `v[i]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose8(v: [__m256i; 8]) -> [__m256i; 8] {
    // Pairs of rows interleaved by word, then by two words: `u[4h + j]`
    // holds word `j` (low half) and `j + 4` (high half) of rows `4h..4h + 4`.
    let t: [__m256i; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[i / 2 * 2], v[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_epi32(a, b)
        } else {
            _mm256_unpackhi_epi32(a, b)
        }
    });
    let u: [__m256i; 8] = std::array::from_fn(|i| {
        let (h, j) = (i / 4, i % 4);
        let (a, b) = (t[4 * h + j / 2], t[4 * h + j / 2 + 2]);
        if j % 2 == 0 {
            _mm256_unpacklo_epi64(a, b)
        } else {
            _mm256_unpackhi_epi64(a, b)
        }
    });
    std::array::from_fn(|l| {
        let (a, b) = (u[l % 4], u[4 + l % 4]);
        if l < 4 {
            _mm256_permute2x128_si256::<0x20>(a, b)
        } else {
            _mm256_permute2x128_si256::<0x31>(a, b)
        }
    })
}

/// Unpacks rows `rows[i]` (all `nb` blocks) into lane `i` of `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_rows<B: LegacySimd>(w: &[B], nb: usize, rows: [usize; PACK_ROWS], p: &mut Pack) {
    let wr = row_slices(w, nb, rows);
    let (qa, _) = p.qa[..nb * 8].as_chunks_mut::<8>();
    let (qs, _) = p.q.as_chunks_mut::<8>();
    for b in 0..nb {
        let mut q = [_mm256_setzero_si256(); PACK_ROWS];
        for (i, row) in wr.iter().enumerate() {
            // SAFETY: this function is compiled with the features `load` needs.
            let (qi, d, m) = unsafe { row[b].load() };
            q[i] = qi;
            p.d[b][i] = d;
            p.aux[b][i] = match B::FORM {
                Form::Signed => 0.0,
                Form::Offset(_) => d,
                Form::Min => m,
            };
        }
        for (l, v) in transpose8(q).into_iter().enumerate() {
            if B::FORM == Form::Signed {
                qs[b][l] = Lanes(bytemuck::cast(v));
                qa[b][l] = Lanes(bytemuck::cast(_mm256_abs_epi8(v)));
            } else {
                qa[b][l] = Lanes(bytemuck::cast(v));
            }
        }
    }
}

/// The packed rows against one token: the accumulators transposed (lane
/// `i` of element `l`: lane `l` of row `i`'s accumulator) and the rows'
/// offset/min sums (lane `i`: row `i`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn packed_tile<B: LegacySimd>(p: &Pack, x: &[BlockQ8x32]) -> ([__m256; 8], __m256) {
    let nb = x.len();
    let (qa, _) = p.qa[..nb * 8].as_chunks::<8>();
    let (qs, _) = p.q.as_chunks::<8>();
    let (d, aux) = (&p.d[..nb], &p.aux[..nb]);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut seq = _mm256_setzero_ps();
    for (b, xb) in x.iter().enumerate() {
        let prod = _mm256_mul_ps(bytemuck::cast(d[b]), _mm256_set1_ps(xb.d));
        let xw: [i32; 8] = bytemuck::cast(xb.qs);
        for (l, acc) in acc.iter_mut().enumerate() {
            let xl = _mm256_set1_epi32(xw[l]);
            let xl = if B::FORM == Form::Signed {
                _mm256_sign_epi8(xl, bytemuck::cast(qs[b][l].0))
            } else {
                xl
            };
            let wa: __m256i = bytemuck::cast(qa[b][l].0);
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(wa, xl), ones));
            *acc = _mm256_fmadd_ps(prod, sums, *acc);
        }
        if B::FORM != Form::Signed {
            // A separate multiply and add: the rounding of the scalar
            // `seq + aux * s`, in each lane.
            let s = if B::FORM == Form::Min { xb.s } else { xb.sd };
            let prod = _mm256_mul_ps(bytemuck::cast(aux[b]), _mm256_set1_ps(s));
            seq = _mm256_add_ps(seq, prod);
        }
    }
    (acc, seq)
}

/// Runs the packed tile against token `t` and stores the valid rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn packed_store<B: LegacySimd>(
    p: &Pack,
    x: &[BlockQ8x32],
    t: usize,
    r0: usize,
    n_rows: usize,
    out: &mut OutRows<'_>,
) {
    let (a, seq) = packed_tile::<B>(p, x);
    // `hsum` of every row at once, in its order.
    let sum = _mm256_add_ps(
        _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6])),
        _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7])),
    );
    let v = match B::FORM {
        Form::Signed => sum,
        Form::Offset(o) => _mm256_sub_ps(sum, _mm256_mul_ps(_mm256_set1_ps(o), seq)),
        Form::Min => _mm256_add_ps(sum, seq),
    };
    let v: [f32; PACK_ROWS] = bytemuck::cast(v);
    for (i, &v) in v.iter().enumerate().take(n_rows) {
        out.set(t, r0 + i, v);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn packed_rows_impl<B: LegacySimd>(
    w: &[B],
    nb: usize,
    rows: Range<usize>,
    x: &[BlockQ8x32],
    n_tokens: usize,
    out: &mut OutRows<'_>,
    p: &mut Pack,
) {
    grow(&mut p.qa, nb * 8);
    if B::FORM == Form::Signed {
        grow(&mut p.q, nb * 8);
    }
    grow(&mut p.d, nb);
    grow(&mut p.aux, nb);
    let mut t0 = 0;
    while t0 < n_tokens {
        let t_end = (t0 + PACK_TOKEN_GROUP).min(n_tokens);
        let mut r = rows.start;
        while r < rows.end {
            let n_rows = (rows.end - r).min(PACK_ROWS);
            // A short tile repeats its last row; those results are dropped.
            let idx = std::array::from_fn(|i| r + i.min(n_rows - 1));
            pack_rows::<B>(w, nb, idx, p);
            for t in t0..t_end {
                packed_store::<B>(p, &x[t * nb..(t + 1) * nb], t, r, n_rows, out);
            }
            r += n_rows;
        }
        t0 = t_end;
    }
}

/// Most tokens a call runs through the one-token kernels, one after the
/// other over each cache-sized stretch of rows ([`few_tokens`]), rather
/// than through the packed kernels, whose unpacking of every row tile pays
/// off only over more tokens (SmolLM2 on 2 threads, 2026-12-04: pp2 +30 to
/// +80%, pp4 +15 to +30%, pp8 -15 to -20% this way).
const FEW_TOKENS: usize = 4;

/// Bytes of weight rows a stretch of [`few_tokens`] holds: small enough to
/// stay in L2 while every token passes over it, so that the rows are read
/// from memory once per call.
const FEW_TOKENS_STRETCH: usize = 96 * 1024;

/// The (rows, token) passes of a call of `n_tokens` tokens over `rows`
/// (each `row_bytes` long): for each stretch of about
/// [`FEW_TOKENS_STRETCH`] bytes (whole tiles of 4 rows), every token in
/// turn. Each (row, token) result is the one-token kernel's, so it is the
/// one a call of that token alone gives, bit for bit.
fn few_tokens(
    rows: Range<usize>,
    row_bytes: usize,
    n_tokens: usize,
) -> impl Iterator<Item = (Range<usize>, usize)> {
    let step = (FEW_TOKENS_STRETCH / row_bytes.max(1)).max(4) / 4 * 4;
    let end = rows.end;
    rows.step_by(step).flat_map(move |r| {
        let sub = r..(r + step).min(end);
        (0..n_tokens).map(move |t| (sub.clone(), t))
    })
}

/// Rows the one-token kernel streams together.
const FUSED_ROWS: usize = 4;
/// How far ahead the one-token kernel prefetches each stream.
const PREFETCH_BYTES: usize = 512;

/// One token (decode): the arithmetic of [`packed_tile`] and
/// [`packed_store`] step for step, but straight from the weight blocks,
/// since nothing would reuse a packed copy.
#[target_feature(enable = "avx2,fma,f16c")]
fn fused_rows_impl<B: LegacySimd>(
    w: &[B],
    nb: usize,
    rows: Range<usize>,
    x: &[BlockQ8x32],
    t: usize,
    out: &mut OutRows<'_>,
) {
    let x = &x[..nb];
    let ones = _mm256_set1_epi16(1);
    for (j, (idx, n_rows)) in StreamTiles::<FUSED_ROWS>::new(rows).enumerate() {
        if j == 0 {
            prefetch_stream_starts(w, nb, idx);
        }
        let [w0, w1, w2, w3] = row_slices(w, nb, idx);
        let mut acc = [_mm256_setzero_ps(); FUSED_ROWS];
        // The sequential offset/min sums: row `i` in lane `i` (offset
        // forms) or lane `2i + 1` (min forms).
        let mut aux = _mm256_setzero_ps();
        // Zipped rather than indexed: no bounds checks in the loop.
        for ((((xb, b0), b1), b2), b3) in x.iter().zip(w0).zip(w1).zip(w2).zip(w3) {
            let blks = [b0, b1, b2, b3];
            let xv: __m256i = bytemuck::cast(xb.qs);
            // The 4 rows' scale products at once (the vector pipes, not
            // the loads, bound this loop): `d_w * d_x` for every row, and
            // `f * s_x` with `f` the min or the scale, each product rounded
            // as the scalar products of `packed_tile` are. `prod` lane
            // `lane(i)` holds row `i`'s `d_w * d_x`.
            let (prod, lane): (__m256, fn(usize) -> i32) = if B::FORM == Form::Min {
                // `[d_i, m_i]` pairs times `[d_x, s_x]` pairs.
                let bits: [u32; FUSED_ROWS] = blks.map(|b| b.scale_bits());
                let dm = _mm256_cvtph_ps(bytemuck::cast(bits));
                let xds = _mm256_castpd_ps(_mm256_set1_pd(bytemuck::cast([xb.d, xb.s])));
                let prod = _mm256_mul_ps(dm, xds);
                aux = _mm256_add_ps(aux, prod);
                (prod, |i| 2 * i as i32)
            } else {
                // SAFETY: this function is compiled with the features
                // `scales` needs.
                let d = unsafe { B::scales(blks) };
                if B::FORM != Form::Signed {
                    let fs = _mm_mul_ps(d, _mm_set1_ps(xb.sd));
                    aux = _mm256_castps128_ps256(_mm_add_ps(_mm256_castps256_ps128(aux), fs));
                }
                let prod = _mm_mul_ps(d, _mm_set1_ps(xb.d));
                (_mm256_castps128_ps256(prod), |i| i as i32)
            };
            for (i, blk) in blks.into_iter().enumerate() {
                // 512 bytes ahead in this row's stream (the rows of a
                // stretch are contiguous, so past the row's end is the next
                // row of the stream): SmolLM2 tg128 +8-28% over 4 blocks
                // ahead (96 bytes of Q4_1). A prefetch never faults, so
                // running past the end is harmless.
                let ahead = std::ptr::from_ref(blk).wrapping_add(PREFETCH_BYTES / size_of::<B>());
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast::<i8>());
                // SAFETY: this function is compiled with the features
                // `load` needs.
                let (q, _, _) = unsafe { blk.load() };
                let (qa, xj) = match B::FORM {
                    Form::Signed => (_mm256_abs_epi8(q), _mm256_sign_epi8(xv, q)),
                    _ => (q, xv),
                };
                let sums =
                    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(qa, xj), ones));
                let scale = _mm256_permutevar8x32_ps(prod, _mm256_set1_epi32(lane(i)));
                acc[i] = _mm256_fmadd_ps(scale, sums, acc[i]);
            }
        }
        let aux: [f32; 8] = bytemuck::cast(aux);
        for i in 0..n_rows {
            let v = hsum(acc[i]);
            let v = match B::FORM {
                Form::Signed => v,
                Form::Offset(o) => v - o * aux[i],
                Form::Min => v + aux[2 * i + 1],
            };
            out.set(t, idx[i], v);
        }
    }
}

/// The packed kernel for rows `rows`, or `false` when the CPU lacks the
/// features.
pub(crate) fn packed_rows<B: LegacySimd>(
    w: &[B],
    nb: usize,
    rows: Range<usize>,
    x: &[BlockQ8x32],
    n_tokens: usize,
    out: &mut OutRows<'_>,
) -> bool {
    if !available() {
        return false;
    }
    if n_tokens <= FEW_TOKENS {
        for (sub, t) in few_tokens(rows, nb * size_of::<B>(), n_tokens) {
            // SAFETY: the CPU supports avx2, fma and f16c (checked just
            // above).
            unsafe { fused_rows_impl::<B>(w, nb, sub, &x[t * nb..(t + 1) * nb], t, out) };
        }
        return true;
    }
    let mut p = PACK.take();
    // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
    unsafe { packed_rows_impl::<B>(w, nb, rows, x, n_tokens, out, &mut p) };
    PACK.set(p);
    true
}

// ---- 256-element super-blocks, packed-weight kernel -------------------------
//
// Prefill of the k-quants follows the 32-element packed kernel: a tile of
// `KPACK_ROWS` rows is unpacked once into a per-thread buffer, then the
// tokens of the call run past it two at a time, the `KPACK_ROWS x 2` integer
// sums of a super-block held in registers.
//
// The bytes are rearranged so that one `madd` serves two groups of 32: for
// groups `a` and `b` (`2p` and `2p + 1`), lane `k` of the first register
// holds bytes `4k, 4k + 1` of `a` then of `b`, of the second bytes
// `4k + 2, 4k + 3` of `a` then of `b` ([`interleave`]), weights and
// activations alike. Two `maddubs` and an i16 add then give, in i16 lane
// `2k`, the four products of `a` that `KQuant::step` sums into i32 lane `k`
// and in lane `2k + 1` those of `b`, and one `madd` with the two groups'
// scales adds both, scaled, into lane `k`: 12 multiplies per super-block
// and (row, token) pair instead of 16. The i16 sums cannot overflow: at most 4 * 63 * 127. (Signed
// types, whose products reach 127 * 127, keep them apart: one `madd` per
// `maddubs`.)
//
// Per (row, token) pair the arithmetic is that of `KQuant::step`:
//
// - lane `k` of a block's i32 sum gathers the same products (integer sums
//   are exact, so their grouping is free); the offset enters as
//   `madd(bsums, OFFSET * scales)`, the same integer as
//   `OFFSET * madd(bsums, scales)`;
// - the float updates are the same: `fma(d_w * d_x, f32(sum), acc)`, then
//   for types with mins `fnmadd(dmin_w * d_x, f32(madd(bsums, mins)), acc)`,
//   block by block, and `hsum` at the end.
//
// So a token's results match the one-token pass (`tile`) bit for bit.

/// Rows unpacked together by the k-quant packed kernel.
const KPACK_ROWS: usize = 4;

/// Groups `a` and `b` of 32 bytes as the two registers of a paired `madd`:
/// in each i32 lane of the first, the lane's low two bytes of `a` then of
/// `b`; of the second, its high two bytes of `a` then of `b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn interleave(a: __m256i, b: __m256i) -> [Bytes32; 2] {
    [
        Bytes32(bytemuck::cast(_mm256_blend_epi16::<0xaa>(
            a,
            _mm256_slli_epi32::<16>(b),
        ))),
        Bytes32(bytemuck::cast(_mm256_blend_epi16::<0xaa>(
            _mm256_srli_epi32::<16>(a),
            b,
        ))),
    ]
}

/// 32 bytes, aligned for a vector load.
#[repr(C, align(32))]
#[derive(Clone, Copy, Default)]
struct Bytes32([u8; 32]);

/// One row's super-block, unpacked for [`kpacked_tile`].
#[repr(C, align(32))]
#[derive(Clone, Copy, Default)]
struct KPacked {
    /// Per pair of groups, the two registers of [`interleave`] fed to
    /// `maddubs` (absolute values for signed types).
    q: [[Bytes32; 2]; 4],
    /// Per pair of groups `a, b`, the scales of `a` and `b` as i16 in
    /// alternate lanes (as each i32 lane needs them).
    sc: [Bytes32; 4],
    /// The 16 scales as i16 times the type's offset.
    off: Bytes32,
    /// The 16 mins as i16.
    mins: Bytes32,
    /// `d` in every lane.
    d: Bytes32,
    /// `dmin` in every lane.
    dmin: Bytes32,
}

/// Per-thread scratch of the k-quant packed kernel; it grows to the
/// largest call and is then reused.
#[derive(Default)]
struct KPack {
    /// `[block][row]` unpacked super-blocks.
    blocks: Vec<KPacked>,
    /// `[block][row]` signed bytes as in `KPacked::q` (signed types only).
    signs: Vec<[[Bytes32; 2]; 4]>,
    /// `[token][block]` activation quants as in `KPacked::q`.
    xq: Vec<[[Bytes32; 2]; 4]>,
}

thread_local! {
    static KPACK: std::cell::RefCell<KPack> = std::cell::RefCell::new(KPack::default());
}

/// Groups `2p, 2p + 1` of 8 interleaved pairwise.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn interleave_pairs(g: [__m256i; 8]) -> [[Bytes32; 2]; 4] {
    std::array::from_fn(|p| interleave(g[2 * p], g[2 * p + 1]))
}

/// Unpacks rows `rows[i]` (all `nb` super-blocks) into `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn kpack_rows<B: KSimd>(w: &[B], nb: usize, rows: [usize; KPACK_ROWS], p: &mut KPack) {
    let offset = _mm256_set1_epi16(B::OFFSET as i16);
    for (i, &r) in rows.iter().enumerate() {
        let wr = &w[r * nb..(r + 1) * nb];
        for (b, blk) in wr.iter().enumerate() {
            // SAFETY: this function is compiled with the features `unpack`
            // needs.
            let u = unsafe { KQuant::<B>::unpack(blk) };
            let at = b * KPACK_ROWS + i;
            let q = if B::SIGNED {
                p.signs[at] = interleave_pairs(u.q);
                u.q.map(|q| _mm256_abs_epi8(q))
            } else {
                u.q
            };
            p.blocks[at] = KPacked {
                q: interleave_pairs(q),
                // `sc[g]` holds the scale of group `g` in every i16 lane of
                // the i32 lanes it covers.
                sc: std::array::from_fn(|j| {
                    let s = _mm256_blend_epi16::<0xaa>(u.sc[2 * j], u.sc[2 * j + 1]);
                    Bytes32(bytemuck::cast(s))
                }),
                // Scales within +-128 and offsets of at most 32: exact in
                // i16.
                off: Bytes32(bytemuck::cast(_mm256_mullo_epi16(u.scales, offset))),
                mins: Bytes32(bytemuck::cast(u.mins)),
                d: Bytes32(bytemuck::cast(_mm256_set1_ps(u.d))),
                dmin: Bytes32(bytemuck::cast(_mm256_set1_ps(u.dmin))),
            };
        }
    }
}

/// Rearranges the activation quants of tokens `tokens` (all `nb` blocks)
/// into `p.xq` as in `KPacked::q`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn kpack_tokens(x: &[BlockQ8K], nb: usize, tokens: Range<usize>, p: &mut KPack) {
    let x = &x[tokens.start * nb..tokens.end * nb];
    for (xb, out) in x.iter().zip(p.xq.iter_mut()) {
        let g: [[u8; 32]; 8] = bytemuck::cast(xb.qs);
        *out = interleave_pairs(g.map(|v| load32(v)));
    }
}

/// `v`, hidden from the optimizer. Without it LLVM regroups a block's
/// integer sums into one tree per (row, token) and computes the trees one
/// after another, spilling the weights that the tokens share.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn opaque(mut v: __m256i) -> __m256i {
    // SAFETY: the template is empty: no instruction runs, `v` stays in its
    // register unchanged.
    unsafe {
        std::arch::asm!("/* {0} */", inout(ymm_reg) v, options(pure, nomem, nostack, preserves_flags));
    }
    v
}

/// The 8-lane accumulators of `KPACK_ROWS` packed rows against `C` tokens:
/// `x` their activation blocks, `xq` their quants as in `KPacked::q`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn kpacked_tile<B: KSimd, const C: usize>(
    p: &KPack,
    nb: usize,
    x: [&[BlockQ8K]; C],
    xq: [&[[[Bytes32; 2]; 4]]; C],
) -> [[__m256; C]; KPACK_ROWS] {
    let (blocks, _) = p.blocks[..nb * KPACK_ROWS].as_chunks::<KPACK_ROWS>();
    let (signs, _) = p.signs.as_chunks::<KPACK_ROWS>();
    let x = x.map(|s| &s[..blocks.len()]);
    let xq = xq.map(|s| &s[..blocks.len()]);
    let mut acc = [[_mm256_setzero_ps(); C]; KPACK_ROWS];
    for (b, wb) in blocks.iter().enumerate() {
        let mut isum = [[_mm256_setzero_si256(); C]; KPACK_ROWS];
        for pair in 0..4 {
            let xv: [[__m256i; 2]; C] =
                std::array::from_fn(|j| xq[j][b][pair].map(|v| bytemuck::cast(v.0)));
            for (i, (w, s)) in wb.iter().zip(isum.iter_mut()).enumerate() {
                let q: [__m256i; 2] = w.q[pair].map(|v| bytemuck::cast(v.0));
                let sc: __m256i = bytemuck::cast(w.sc[pair].0);
                for (xj, sj) in xv.iter().zip(s.iter_mut()) {
                    let sum = if B::SIGNED {
                        let sign: [__m256i; 2] = signs[b][i][pair].map(|v| bytemuck::cast(v.0));
                        let lo = _mm256_maddubs_epi16(q[0], _mm256_sign_epi8(xj[0], sign[0]));
                        let hi = _mm256_maddubs_epi16(q[1], _mm256_sign_epi8(xj[1], sign[1]));
                        if B::NARROW {
                            _mm256_madd_epi16(_mm256_add_epi16(lo, hi), sc)
                        } else {
                            _mm256_add_epi32(_mm256_madd_epi16(lo, sc), _mm256_madd_epi16(hi, sc))
                        }
                    } else {
                        let lo = _mm256_maddubs_epi16(q[0], xj[0]);
                        let hi = _mm256_maddubs_epi16(q[1], xj[1]);
                        _mm256_madd_epi16(_mm256_add_epi16(lo, hi), sc)
                    };
                    *sj = opaque(_mm256_add_epi32(*sj, sum));
                }
            }
        }
        let bsums: [__m256i; C] = std::array::from_fn(|j| bytemuck::cast(x[j][b].bsums));
        let dx: [__m256; C] = std::array::from_fn(|j| _mm256_set1_ps(x[j][b].d));
        for ((w, s), a) in wb.iter().zip(&isum).zip(acc.iter_mut()) {
            for j in 0..C {
                let mut sum = s[j];
                if B::OFFSET != 0 {
                    let off = _mm256_madd_epi16(bsums[j], bytemuck::cast(w.off.0));
                    sum = _mm256_sub_epi32(sum, off);
                }
                // `d_w * d_x` in every lane.
                let d = _mm256_mul_ps(bytemuck::cast(w.d.0), dx[j]);
                a[j] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sum), a[j]);
                if B::HAS_MIN {
                    let m = _mm256_madd_epi16(bsums[j], bytemuck::cast(w.mins.0));
                    let dmin = _mm256_mul_ps(bytemuck::cast(w.dmin.0), dx[j]);
                    a[j] = _mm256_fnmadd_ps(dmin, _mm256_cvtepi32_ps(m), a[j]);
                }
            }
        }
    }
    acc
}

/// Runs one k-quant packed tile against tokens `t..t + C` (`t0` the first
/// token in `p.xq`) and stores the valid rows.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
fn kpacked_store<B: KSimd, const C: usize>(
    p: &KPack,
    nb: usize,
    x: &[BlockQ8K],
    t0: usize,
    t: usize,
    r0: usize,
    n_rows: usize,
    out: &mut OutRows<'_>,
) {
    let xt: [&[BlockQ8K]; C] = std::array::from_fn(|j| &x[(t + j) * nb..(t + j + 1) * nb]);
    let xq = std::array::from_fn(|j| {
        let at = t + j - t0;
        &p.xq[at * nb..(at + 1) * nb]
    });
    let acc = kpacked_tile::<B, C>(p, nb, xt, xq);
    for (i, row) in acc.iter().enumerate().take(n_rows) {
        for (j, &a) in row.iter().enumerate() {
            out.set(t + j, r0 + i, hsum(a));
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn kpacked_rows_impl<B: KSimd>(
    w: &[B],
    nb: usize,
    rows: Range<usize>,
    x: &[BlockQ8K],
    n_tokens: usize,
    out: &mut OutRows<'_>,
    p: &mut KPack,
) {
    grow(&mut p.blocks, nb * KPACK_ROWS);
    if B::SIGNED {
        grow(&mut p.signs, nb * KPACK_ROWS);
    }
    grow(&mut p.xq, nb * PACK_TOKEN_GROUP.min(n_tokens));
    let mut t0 = 0;
    while t0 < n_tokens {
        let t_end = (t0 + PACK_TOKEN_GROUP).min(n_tokens);
        kpack_tokens(x, nb, t0..t_end, p);
        let mut r = rows.start;
        while r < rows.end {
            let n_rows = (rows.end - r).min(KPACK_ROWS);
            // A short tile repeats its last row; those results are dropped.
            let idx = std::array::from_fn(|i| r + i.min(n_rows - 1));
            kpack_rows::<B>(w, nb, idx, p);
            let mut t = t0;
            while t + 2 <= t_end {
                kpacked_store::<B, 2>(p, nb, x, t0, t, r, n_rows, out);
                t += 2;
            }
            if t < t_end {
                kpacked_store::<B, 1>(p, nb, x, t0, t, r, n_rows, out);
            }
            r += n_rows;
        }
        t0 = t_end;
    }
}

/// The k-quant kernel for rows `rows`, or `false` when the CPU lacks the
/// features: one token straight from the weight blocks ([`rows_impl`]),
/// several through the packed tile.
pub(crate) fn kquant_rows<B: KSimd>(
    w: &[B],
    nb: usize,
    rows: Range<usize>,
    x: &[BlockQ8K],
    n_tokens: usize,
    out: &mut OutRows<'_>,
) -> bool {
    super_block_rows::<KQuant<B>>(w, nb, rows, x, n_tokens, out)
}

/// [`kquant_rows`] for the lattice types, one token through [`IqDirect`].
pub(crate) fn iq_rows<B: KSimd + IqSimd>(
    w: &[B],
    nb: usize,
    rows: Range<usize>,
    x: &[BlockQ8K],
    n_tokens: usize,
    out: &mut OutRows<'_>,
) -> bool {
    super_block_rows::<IqDirect<B>>(w, nb, rows, x, n_tokens, out)
}

/// A 256-element type's rows: one token through the kernel `K`, several
/// through the packed tile.
fn super_block_rows<K: Kernel<Block: KSimd>>(
    w: &[K::Block],
    nb: usize,
    rows: Range<usize>,
    x: &[BlockQ8K],
    n_tokens: usize,
    out: &mut OutRows<'_>,
) -> bool {
    if !available() {
        return false;
    }
    if n_tokens <= FEW_TOKENS {
        for (sub, t) in few_tokens(rows, nb * size_of::<K::Block>(), n_tokens) {
            // SAFETY: the CPU supports avx2, fma and f16c (checked just
            // above).
            unsafe { rows_impl::<K>(w, nb, sub, &x[t * nb..(t + 1) * nb], t, out) };
        }
        return true;
    }
    let mut p = KPACK.take();
    // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
    unsafe { kpacked_rows_impl::<K::Block>(w, nb, rows, x, n_tokens, out, &mut p) };
    KPACK.set(p);
    true
}

// ---- activation quantization -----------------------------------------------------

/// `max |x|` of 32 values.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn amax32(x: &[f32; 32]) -> f32 {
    let (x8, _) = x.as_chunks::<8>();
    let sign = _mm256_set1_ps(-0.0);
    // `max(v, m)` returns `m` when `v` is NaN: NaN is skipped, as by the
    // scalar path's `f32::max`.
    let m = x8.iter().fold(_mm256_setzero_ps(), |m, c| {
        _mm256_max_ps(_mm256_andnot_ps(sign, bytemuck::cast(*c)), m)
    });
    hmax(m)
}

/// Quantizes 32 values with inverse scale `id` into `qs` as the scalar
/// path does (`v * id` rounded to nearest, ties to even, clamped to
/// `-127..=127`); returns the sums of the two halves of `qs`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize32(x: &[f32; 32], id: f32, qs: &mut [i8; 32]) -> [i32; 2] {
    let (x8, _) = x.as_chunks::<8>();
    let idv = _mm256_set1_ps(id);
    // The default rounding mode (which Rust never changes) is to nearest,
    // ties to even, as the scalar `nearest_int`.
    let q: [__m256i; 4] =
        std::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(bytemuck::cast(x8[i]), idv)));
    // Saturating packs leave dwords in the order 0 4 1 5 2 6 3 7.
    let p = _mm256_packs_epi16(
        _mm256_packs_epi32(q[0], q[1]),
        _mm256_packs_epi32(q[2], q[3]),
    );
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let p = _mm256_max_epi8(p, _mm256_set1_epi8(-127));
    *qs = bytemuck::cast(p);
    // Sums from the clamped bytes, 16 per half.
    let wide = _mm256_madd_epi16(
        _mm256_maddubs_epi16(_mm256_set1_epi8(1), p),
        _mm256_set1_epi16(1),
    );
    let lanes: [i32; 8] = bytemuck::cast(wide);
    [lanes[..4].iter().sum(), lanes[4..].iter().sum()]
}

/// The scale of `max |x| / 127` and its inverse (0 for an all-zero block),
/// as the scalar path computes them.
fn scales(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

/// [`BlockQ8x32`] of 32 values, bit for bit the scalar quantization, or
/// `false` when the CPU lacks the features.
pub(crate) fn quantize_q8x32(x: &[f32], out: &mut BlockQ8x32) -> bool {
    let Ok(x) = <&[f32; 32]>::try_from(x) else {
        return false;
    };
    if !available() {
        return false;
    }
    // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
    let (d, sums) = unsafe {
        let (d, id) = scales(amax32(x));
        (d, quantize32(x, id, &mut out.qs))
    };
    (out.d, out.s, out.sd) = crate::act::q8x32_scales(d, sums[0] + sums[1]);
    true
}

/// [`BlockQ8K`] of 256 values, bit for bit the scalar quantization, or
/// `false` when the CPU lacks the features.
pub(crate) fn quantize_q8k(x: &[f32], out: &mut BlockQ8K) -> bool {
    let Ok(x) = <&[f32; 256]>::try_from(x) else {
        return false;
    };
    if !available() {
        return false;
    }
    let (x32, _) = x.as_chunks::<32>();
    let (q32, _) = out.qs.as_chunks_mut::<32>();
    // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
    unsafe {
        let amax = x32.iter().fold(0.0f32, |m, c| m.max(amax32(c)));
        let (d, id) = scales(amax);
        out.d = d;
        for (g, (xc, qc)) in x32.iter().zip(q32).enumerate() {
            let sums = quantize32(xc, id, qc);
            // |sum of 16 values| <= 16 * 127, well inside i16.
            out.bsums[2 * g] = sums[0] as i16;
            out.bsums[2 * g + 1] = sums[1] as i16;
        }
    }
    true
}

// ---- GELU ---------------------------------------------------------------------

/// `e^x` in every lane, within about 2 ulp: `x = n ln 2 + r` with `|r| <=
/// ln 2 / 2` (`ln 2` in two parts so that `r` is exact), `e^r` by its
/// Taylor series to `r^7` (the next term is below 6e-9), times `2^n` built
/// in the exponent bits. Inputs are clamped to `[-87.3, 88.3]`, where `2^n`
/// stays a normal float; NaN lanes come out finite, so callers propagate
/// NaN some other way.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
        _mm256_set1_ps(88.3),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    // 1/7!, 1/6!, ..., 1/1!, 1/0!.
    const C: [f32; 8] = [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let mut p = _mm256_set1_ps(C[0]);
    for c in &C[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
}

/// [`crate::ops::gelu`] in every lane, with [`exp8`]; a NaN input stays NaN
/// through the numerator.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn gelu8(v: __m256) -> __m256 {
    let one = _mm256_set1_ps(1.0);
    let a = _mm256_set1_ps(GELU_COEF_A);
    let inner = _mm256_fmadd_ps(_mm256_mul_ps(a, v), v, one);
    let u = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(GELU_SQRT_2_OVER_PI), v), inner);
    let e = exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0), u));
    _mm256_div_ps(v, _mm256_add_ps(one, e))
}

/// [`crate::ops::silu`] in every lane, with [`exp8`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn silu8(v: __m256) -> __m256 {
    let one = _mm256_set1_ps(1.0);
    let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), v));
    _mm256_div_ps(v, _mm256_add_ps(one, e))
}

/// `x[i] = f(x[i]) * up[i]` (or `f(x[i])` without `up`; `up` as long as
/// `x`), eight at a time.
#[target_feature(enable = "avx2,fma,f16c")]
fn activate_impl(f: Activation, x: &mut [f32], up: Option<&[f32]>) {
    let (x8, tail) = x.as_chunks_mut::<8>();
    for (c, xc) in x8.iter_mut().enumerate() {
        let v: __m256 = bytemuck::cast(*xc);
        let g = match f {
            Activation::Gelu => gelu8(v),
            Activation::Silu => silu8(v),
        };
        let g = match up {
            Some(u) => {
                let u: [f32; 8] = u[8 * c..8 * c + 8].try_into().expect("8 values");
                _mm256_mul_ps(g, bytemuck::cast(u))
            }
            None => g,
        };
        *xc = bytemuck::cast(g);
    }
    let done = x8.len() * 8;
    for (i, v) in tail.iter_mut().enumerate() {
        *v = f.apply(*v) * up.map_or(1.0, |u| u[done + i]);
    }
}

/// [`activate_impl`], or `false` when the CPU lacks the features or `up` is
/// not as long as `x`.
pub(crate) fn activate(f: Activation, x: &mut [f32], up: Option<&[f32]>) -> bool {
    if !available() || up.is_some_and(|u| u.len() != x.len()) {
        return false;
    }
    // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
    unsafe { activate_impl(f, x, up) };
    true
}

/// Replaces `s` by `exp(s - max)` ([`exp8`]) and returns their sum, 8
/// lanes at a time: a fixed function of the slice, whatever its position
/// in a batch. With a sink, `max` is taken over it too and its
/// `exp(sink - max)` joins the sum.
#[target_feature(enable = "avx2,fma,f16c")]
fn softmax_exp(s: &mut [f32], sink: Option<f32>) -> f32 {
    let (s8, tail) = s.as_chunks_mut::<8>();
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in s8.iter() {
        m = _mm256_max_ps(m, bytemuck::cast(*c));
    }
    let max = tail.iter().fold(hmax(m), |a, &v| a.max(v));
    let max = sink.map_or(max, |k| max.max(k));
    let mv = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    for c in s8.iter_mut() {
        let e = exp8(_mm256_sub_ps(bytemuck::cast(*c), mv));
        sum = _mm256_add_ps(sum, e);
        *c = bytemuck::cast(e);
    }
    if !tail.is_empty() {
        let mut last = [max; 8];
        last[..tail.len()].copy_from_slice(tail);
        let e: [f32; 8] = bytemuck::cast(exp8(_mm256_sub_ps(bytemuck::cast(last), mv)));
        tail.copy_from_slice(&e[..tail.len()]);
        let mut add = [0.0f32; 8];
        add[..tail.len()].copy_from_slice(tail);
        sum = _mm256_add_ps(sum, bytemuck::cast(add));
    }
    hsum(sum) + sink.map_or(0.0, |k| (k - max).exp())
}

/// The largest of 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

// ---- attention ----------------------------------------------------------------

/// `acc[h][j] += x[h] * rows[j]` for every head and row: one FMA each,
/// in the order every path keeps (a dimension of the scores, a position of
/// the weighted values).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fma_heads<const H: usize, const N: usize>(
    acc: &mut [[__m256; N]; H],
    x: [f32; H],
    rows: &[__m256; N],
) {
    for (a, &xh) in acc.iter_mut().zip(&x) {
        let xb = _mm256_set1_ps(xh);
        for (aj, rj) in a.iter_mut().zip(rows) {
            *aj = _mm256_fmadd_ps(xb, *rj, *aj);
        }
    }
}

/// Head `h`'s scores of tile `t0 + j` from `acc[h][j]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_scores<const H: usize, const TT: usize>(
    acc: &[[__m256; TT]; H],
    t0: usize,
    scores: &mut [f32],
    stride: usize,
) {
    for (h, a) in acc.iter().enumerate() {
        for (j, aj) in a.iter().enumerate() {
            let at = h * stride + 8 * (t0 + j);
            let o: &mut [f32; 8] = (&mut scores[at..at + 8]).try_into().expect("8 scores");
            *o = bytemuck::cast(*aj);
        }
    }
}

/// Head `h`'s outputs `d0 + 8 k..` from `acc[h][k]` times `inv[h]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_values<const G: usize, const D: usize>(
    acc: &[[__m256; D]; G],
    inv: [f32; G],
    hd: usize,
    d0: usize,
    out: &mut [f32],
) {
    for (h, a) in acc.iter().enumerate() {
        let scale = _mm256_set1_ps(inv[h]);
        for (k, ak) in a.iter().enumerate() {
            let at = h * hd + d0 + 8 * k;
            let o: &mut [f32; 8] = (&mut out[at..at + 8]).try_into().expect("8 outputs");
            *o = bytemuck::cast(_mm256_mul_ps(*ak, scale));
        }
    }
}

/// Raw scores of `H` query heads against key tiles `t0..t0 + TT` (see
/// [`crate::attention::KEY_TILE`]: a tile holds `hd` rows of 8 positions),
/// written to `scores[h * stride + 8 t..][..8]` for tile `t`. Each (head,
/// position) score is `s = fma(q[d], k[d], s)` for `d` in order from `s =
/// 0`, in one lane: the same sequence for any `H`, `TT` and tile, and the
/// scalar path's. The `H x TT` accumulators keep the FMA units busy and
/// reuse each loaded key row `H` times.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_scores<T: FloatSimd, const H: usize, const TT: usize>(
    ktiles: &[T],
    hd: usize,
    q: [&[f32]; H],
    t0: usize,
    scores: &mut [f32],
    stride: usize,
) {
    let tile = 8 * hd;
    let rows: [&[[T; 8]]; TT] = std::array::from_fn(|j| {
        let t = &ktiles[(t0 + j) * tile..(t0 + j + 1) * tile];
        &t.as_chunks::<8>().0[..hd]
    });
    let q = q.map(|s| &s[..hd]);
    let mut acc = [[_mm256_setzero_ps(); TT]; H];
    for d in 0..hd {
        // SAFETY: this function is compiled with the features `load8` needs.
        let kv: [__m256; TT] = std::array::from_fn(|j| unsafe { T::load8(&rows[j][d]) });
        fma_heads(&mut acc, q.map(|qh| qh[d]), &kv);
    }
    store_scores(&acc, t0, scores, stride);
}

/// [`tile_scores`] over all `n_tiles` tiles, `TT` at a time, then one at
/// a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn all_tile_scores<T: FloatSimd, const H: usize, const TT: usize>(
    ktiles: &[T],
    hd: usize,
    q: [&[f32]; H],
    n_tiles: usize,
    scores: &mut [f32],
    stride: usize,
) {
    let mut t = 0;
    while t + TT <= n_tiles {
        tile_scores::<T, H, TT>(ktiles, hd, q, t, scores, stride);
        t += TT;
    }
    while t < n_tiles {
        tile_scores::<T, H, 1>(ktiles, hd, q, t, scores, stride);
        t += 1;
    }
}

/// `out[h][d0 + i] = inv[h] * sum_p scores[h][p] v[p][d0 + i]` for the `G`
/// heads and `8 D` columns from `d0`: one FMA per position, in position
/// order, per element (the arithmetic of every tiling), with the `G * D`
/// accumulators in registers.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weigh_values<T: FloatSimd, const G: usize, const D: usize>(
    values: &[T],
    hd: usize,
    scores: [&[f32]; G],
    inv: [f32; G],
    d0: usize,
    out: &mut [f32],
) {
    let mut acc = [[_mm256_setzero_ps(); D]; G];
    for (p, v) in values.chunks_exact(hd).enumerate() {
        let (v8, _) = v[d0..d0 + 8 * D].as_chunks::<8>();
        // SAFETY: this function is compiled with the features `load8` needs.
        let vv: [__m256; D] = std::array::from_fn(|k| unsafe { T::load8(&v8[k]) });
        fma_heads(&mut acc, scores.map(|sh| sh[p]), &vv);
    }
    store_values(&acc, inv, hd, d0, out);
}

/// [`weigh_values`] over all full 8-column chunks: `D` chunks per pass,
/// then the rest one at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weigh_all<T: FloatSimd, const G: usize, const D: usize>(
    values: &[T],
    hd: usize,
    scores: [&[f32]; G],
    inv: [f32; G],
    out: &mut [f32],
) {
    let full = hd / 8 * 8;
    let mut d = 0;
    while d + 8 * D <= full {
        weigh_values::<T, G, D>(values, hd, scores, inv, d, out);
        d += 8 * D;
    }
    while d < full {
        weigh_values::<T, G, 1>(values, hd, scores, inv, d, out);
        d += 8;
    }
}

/// A Q8_0 cache's keys and values of one head (see
/// [`crate::attention`]): key bytes in tiles with their scales
/// `[tile][block][8]`, value bytes `[position][head_dim]` with their scales
/// `[position][block]`, from the first tile and value the call sees.
#[derive(Clone, Copy)]
pub(crate) struct Q8Rows<'a> {
    pub k: &'a [i8],
    pub ks: &'a [f16],
    pub v: &'a [i8],
    pub vs: &'a [f16],
}

/// Eight signed bytes as f32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bytes8(b: &[i8; 8]) -> __m256 {
    let x = i64::from_le_bytes(bytemuck::cast(*b));
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(x)))
}

/// [`tile_scores`] over Q8_0 key tiles: each key row dequantized in
/// registers (its 8 bytes times their 8 scales, exact in f32), then the
/// same FMAs in the same order, so the scores are those of an f32 cache
/// holding the dequantized keys.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_scores_q8<const H: usize, const TT: usize>(
    src: Q8Rows<'_>,
    hd: usize,
    q: [&[f32]; H],
    t0: usize,
    scores: &mut [f32],
    stride: usize,
) {
    let (tile, nb) = (8 * hd, hd / 32);
    let rows: [&[[i8; 8]]; TT] = std::array::from_fn(|j| {
        let t = &src.k[(t0 + j) * tile..(t0 + j + 1) * tile];
        &t.as_chunks::<8>().0[..hd]
    });
    let scales: [&[[f16; 8]]; TT] = std::array::from_fn(|j| {
        let s = &src.ks[(t0 + j) * 8 * nb..(t0 + j + 1) * 8 * nb];
        &s.as_chunks::<8>().0[..nb]
    });
    let q = q.map(|s| &s[..hd]);
    let mut acc = [[_mm256_setzero_ps(); TT]; H];
    for d0 in (0..hd).step_by(32) {
        let sc: [__m256; TT] =
            std::array::from_fn(|j| _mm256_cvtph_ps(bytemuck::cast(scales[j][d0 / 32])));
        for d in d0..d0 + 32 {
            let kv: [__m256; TT] =
                std::array::from_fn(|j| _mm256_mul_ps(bytes8(&rows[j][d]), sc[j]));
            fma_heads(&mut acc, q.map(|qh| qh[d]), &kv);
        }
    }
    store_scores(&acc, t0, scores, stride);
}

/// [`weigh_values`] over Q8_0 values: each row's 8 bytes times their
/// block's scale (exact in f32), then the same FMAs in the same order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weigh_values_q8<const G: usize, const D: usize>(
    src: Q8Rows<'_>,
    hd: usize,
    scores: [&[f32]; G],
    inv: [f32; G],
    d0: usize,
    out: &mut [f32],
) {
    let nb = hd / 32;
    let mut acc = [[_mm256_setzero_ps(); D]; G];
    let len = scores[0].len();
    for p in 0..len {
        let (v8, _) = src.v[p * hd + d0..p * hd + d0 + 8 * D].as_chunks::<8>();
        let s = &src.vs[p * nb..(p + 1) * nb];
        let vv: [__m256; D] = std::array::from_fn(|k| {
            let scale = _mm256_set1_ps(s[(d0 + 8 * k) / 32].to_f32());
            _mm256_mul_ps(bytes8(&v8[k]), scale)
        });
        fma_heads(&mut acc, scores.map(|sh| sh[p]), &vv);
    }
    store_values(&acc, inv, hd, d0, out);
}

/// The keys and values [`attend_heads`] reads: floats, or Q8_0 bytes.
#[derive(Clone, Copy)]
enum Rows<'a, T> {
    Float { ktiles: &'a [T], values: &'a [T] },
    Q8(Q8Rows<'a>),
}

/// Scores and weighted values for `G` heads: `q` and `out` hold them back
/// to back, `scores` their score rows `stride` apart, of which positions
/// `skip..skip + len` are the visible ones.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn attend_heads<T: FloatSimd, const G: usize, const TT: usize, const D: usize>(
    rows: Rows<'_, T>,
    len: usize,
    hd: usize,
    q: &[f32],
    scores: &mut [f32],
    stride: usize,
    skip: usize,
    post: &dyn Fn(&mut [f32], usize) -> f32,
    out: &mut [f32],
) {
    let qh: [&[f32]; G] = std::array::from_fn(|h| &q[h * hd..(h + 1) * hd]);
    let n_tiles = stride / 8;
    match rows {
        Rows::Float { ktiles, .. } => {
            all_tile_scores::<T, G, TT>(ktiles, hd, qh, n_tiles, scores, stride)
        }
        Rows::Q8(src) => {
            let mut t = 0;
            while t + TT <= n_tiles {
                tile_scores_q8::<G, TT>(src, hd, qh, t, scores, stride);
                t += TT;
            }
            while t < n_tiles {
                tile_scores_q8::<G, 1>(src, hd, qh, t, scores, stride);
                t += 1;
            }
        }
    }
    let mut inv = [0.0f32; G];
    for (h, iv) in inv.iter_mut().enumerate() {
        *iv = 1.0 / post(&mut scores[h * stride + skip..h * stride + skip + len], h);
    }
    let sc: [&[f32]; G] = std::array::from_fn(|h| &scores[h * stride + skip..][..len]);
    let values = match rows {
        Rows::Float { values, .. } => values,
        Rows::Q8(src) => {
            // (Q8_0 heads are whole blocks of 32: no columns are left over.)
            let mut d = 0;
            while d + 8 * D <= hd {
                weigh_values_q8::<G, D>(src, hd, sc, inv, d, out);
                d += 8 * D;
            }
            while d < hd {
                weigh_values_q8::<G, 1>(src, hd, sc, inv, d, out);
                d += 8;
            }
            return;
        }
    };
    weigh_all::<T, G, D>(values, hd, sc, inv, out);
    let full = hd / 8 * 8;
    for d in full..hd {
        for (h, s) in sc.iter().enumerate() {
            let mut a = 0.0f32;
            for (p, v) in values.chunks_exact(hd).enumerate() {
                a = s[p].mul_add(v[d].to_f32(), a);
            }
            out[h * hd + d] = a * inv[h];
        }
    }
}

/// Causal attention of `g` query heads that share one key/value head, at
/// one position: `q` and `out` hold the `g` heads back to back, `sinks`
/// their sinks if they have them; `rows` the key tiles that cover the
/// visible positions (`n_tiles` of them), of which the first `skip`
/// positions are not visible, and the `len` visible positions' values;
/// `scores` at least `g` times the tiles' positions. Each head's result
/// depends only on its own query (never on `g`): raw scores as
/// [`tile_scores`] computes them, scaled and soft-capped, the shared
/// softmax (with the head's sink in its denominator), then values
/// accumulated in position order with one FMA per element.
#[target_feature(enable = "avx2,fma,f16c")]
fn attend_group_impl<T: FloatSimd>(
    rows: Rows<'_, T>,
    (n_tiles, skip, len, hd): (usize, usize, usize, usize),
    (q, sinks): (&[f32], Option<&[f32]>),
    score: Scoring<'_>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let stride = n_tiles * 8;
    let post = |s: &mut [f32], h: usize| {
        score.apply(s, h);
        softmax_exp(s, sinks.map(|k| k[h]))
    };
    let g = q.len() / hd;
    for h0 in (0..g).step_by(4) {
        // Heads `h0..` as their own group of up to 4.
        let gh = (g - h0).min(4);
        let qg = &q[h0 * hd..(h0 + gh) * hd];
        let o = &mut out[h0 * hd..(h0 + gh) * hd];
        let sc = &mut scores[h0 * stride..(h0 + gh) * stride];
        let post = |s: &mut [f32], h: usize| post(s, h0 + h);
        macro_rules! run {
            ($g:literal, $tt:literal, $d:literal) => {
                attend_heads::<T, $g, $tt, $d>(rows, len, hd, qg, sc, stride, skip, &post, o)
            };
        }
        match gh {
            1 => run!(1, 4, 8),
            2 => run!(2, 4, 4),
            3 => run!(3, 3, 2),
            _ => run!(4, 2, 3),
        }
    }
}

/// [`attend_group_impl`] over float keys (`ktiles`, the first `skip`
/// positions not visible) and values, or `false` when the CPU lacks the
/// features.
pub(crate) fn attend_group<T: FloatSimd>(
    (ktiles, skip, values, hd): (&[T], usize, &[T], usize),
    q: (&[f32], Option<&[f32]>),
    score: Scoring<'_>,
    scores: &mut [f32],
    out: &mut [f32],
) -> bool {
    if !available() {
        return false;
    }
    let (n_tiles, len) = (ktiles.len() / (8 * hd), values.len() / hd);
    let rows = Rows::Float { ktiles, values };
    let shape = (n_tiles, skip, len, hd);
    // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
    unsafe { attend_group_impl(rows, shape, q, score, scores, out) };
    true
}

/// [`attend_group_impl`] over a Q8_0 cache's keys and values (`len`
/// visible positions, in `n_tiles` key tiles), or `false` when the CPU
/// lacks the features. The results are bit for bit those of an f32 cache
/// holding the dequantized values.
pub(crate) fn attend_group_q8(
    src: Q8Rows<'_>,
    shape: (usize, usize, usize, usize),
    q: (&[f32], Option<&[f32]>),
    score: Scoring<'_>,
    scores: &mut [f32],
    out: &mut [f32],
) -> bool {
    if !available() || !shape.3.is_multiple_of(32) {
        return false;
    }
    let rows = Rows::<f32>::Q8(src);
    // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
    unsafe { attend_group_impl(rows, shape, q, score, scores, out) };
    true
}

#[cfg(test)]
mod tests {
    use super::StreamTiles;

    #[test]
    fn stream_tiles_visit_every_row_once() {
        for start in [0, 3, 100] {
            for len in 0..40 {
                let mut seen = vec![0u32; len];
                for (idx, real) in StreamTiles::<4>::new(start..start + len) {
                    assert!((1..=4).contains(&real));
                    for (i, &r) in idx.iter().enumerate() {
                        // Padding slots repeat a row of the range.
                        assert!((start..start + len).contains(&r));
                        if i < real {
                            seen[r - start] += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "len {len}: {seen:?}");
            }
        }
    }
}
