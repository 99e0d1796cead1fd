//! AVX2 + FMA + F16C kernels for x86-64, selected at run time.
//!
//! Technique (as in ggml's x86 path): weights are unpacked to bytes in a
//! register, multiplied with 8-bit activations by `vpmaddubsw` (unsigned by
//! signed bytes, pairs summed to i16), widened by `vpmaddwd`, converted to
//! f32 once per block and accumulated with FMA under the product of the two
//! block scales. Offsets and mins are folded in through the activation
//! block sums, so 4- and 5-bit weights need no sign trick.
//!
//! Batch invariance: [`tile`] computes an `R x C` tile of (row, token)
//! pairs, but each pair has its own accumulator updated block by block with
//! the same instructions whatever `R` and `C` are, so a pair's result is
//! bit-identical in every tile shape.
//!
//! Every function here is compiled with `avx2,fma,f16c`; the only entry
//! points from ordinary code ([`rows`], [`dot_float`]) check the CPU first.

use std::arch::x86_64::*;
use std::ops::Range;

use half::{bf16, f16};
use realm_core::quant::blocks::{
    BlockIQ4NL, BlockIQ4XS, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K,
    BlockQ5_0, BlockQ5_1, BlockQ6K, BlockQ8_0, KVALUES_IQ4NL,
};

use crate::act::{BlockQ8K, BlockQ8x32};
use crate::matmul::OutRows;
use crate::ops::{GELU_COEF_A, GELU_SQRT_2_OVER_PI};
use crate::reference::{scale_min_k4, scales_q3k, WeightBlock};

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

/// 16 bytes of nibbles as 32 bytes: low nibbles, then high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: [u8; 16]) -> __m256i {
    let v: __m128i = bytemuck::cast(qs);
    let m4 = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(v, m4);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), m4);
    _mm256_set_m128i(hi, lo)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq4_table() -> __m256i {
    let t: __m128i = bytemuck::cast(KVALUES_IQ4NL);
    _mm256_broadcastsi128_si256(t)
}

/// A SIMD kernel for one weight type: unpack a block once, then fold it into
/// any number of (row, token) accumulators.
pub(crate) trait Kernel {
    /// The weight block.
    type Block: WeightBlock;
    /// A block unpacked to registers.
    type Unpacked: Copy;
    /// One (row, token) accumulator.
    type Acc: Copy;
    /// Rows per tile when several tokens share the weights (prefill).
    const ROWS_BATCH: usize;

    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    unsafe fn unpack(b: &Self::Block) -> Self::Unpacked;
    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    unsafe fn zero() -> Self::Acc;
    /// # Safety
    /// The CPU supports avx2, fma and f16c.
    unsafe fn step(u: &Self::Unpacked, x: &<Self::Block as WeightBlock>::Act, acc: &mut Self::Acc);
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

/// Dot products of `R` weight rows with `C` activation rows (all `nb`
/// blocks long).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<K: Kernel, const R: usize, const C: usize>(
    w: [&[K::Block]; R],
    x: [&[Act<K>]; C],
    nb: usize,
    ahead: usize,
) -> [[f32; C]; R] {
    let w = w.map(|s| &s[..nb]);
    let x = x.map(|s| &s[..nb]);
    // SAFETY: this function is compiled with avx2,fma,f16c, which its
    // callers have checked the CPU supports.
    let mut acc = [[unsafe { K::zero() }; C]; R];
    for b in 0..nb {
        for (wr, accr) in w.iter().zip(acc.iter_mut()) {
            // `ahead` blocks further on (see `row_tile`). A prefetch never
            // faults, so running past the end is harmless.
            let ahead = wr.as_ptr().wrapping_add(b + ahead).cast::<i8>();
            _mm_prefetch::<_MM_HINT_T0>(ahead);
            // SAFETY: as above.
            let u = unsafe { K::unpack(&wr[b]) };
            for (xc, a) in x.iter().zip(accr.iter_mut()) {
                // SAFETY: as above.
                unsafe { K::step(&u, &xc[b], a) };
            }
        }
    }
    // SAFETY: as above.
    acc.map(|r| r.map(|a| unsafe { K::finish(a) }))
}

/// Rows `idx` against tokens `tokens`, in tiles of up to 4 tokens (8 for a
/// single row, whose unpacked block is the costly part); results are stored
/// for the first `real` rows only.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
fn row_tile<K: Kernel, const R: usize>(
    w: &[K::Block],
    nb: usize,
    idx: [usize; R],
    real: usize,
    x: &[Act<K>],
    tokens: Range<usize>,
    out: &mut OutRows<'_>,
) {
    let wr: [&[K::Block]; R] = idx.map(|r| &w[r * nb..(r + 1) * nb]);
    // Prefetch distance in blocks. A single token streams each row of
    // its tile on its own (see `StreamTiles`): a few blocks ahead. Several
    // tokens take contiguous rows: one tile further on, since each tile
    // streams only a few hundred bytes per row, too little for the hardware
    // prefetcher to lock on.
    let ahead = if tokens.len() == 1 { 4 } else { 4 * R * nb };
    let xt = |t: usize| &x[t * nb..(t + 1) * nb];
    let mut t = tokens.start;
    while t < tokens.end {
        let left = tokens.end - t;
        let c = if R == 1 && left >= 8 { 8 } else { left.min(4) };
        macro_rules! run {
            ($c:literal) => {{
                let res = tile::<K, R, $c>(wr, std::array::from_fn(|j| xt(t + j)), nb, ahead);
                for (&r, row) in idx.iter().zip(&res).take(real) {
                    for (j, &v) in row.iter().enumerate() {
                        out.set(t + j, r, v);
                    }
                }
            }};
        }
        match c {
            8 => run!(8),
            4 => run!(4),
            3 => run!(3),
            2 => run!(2),
            _ => run!(1),
        }
        t += c;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn rows_impl<K: Kernel>(
    w: &[K::Block],
    nb: usize,
    rows: Range<usize>,
    x: &[Act<K>],
    n_tokens: usize,
    out: &mut OutRows<'_>,
) {
    // Tokens in groups small enough that their activations stay in L2 while
    // the rows stream past them.
    const TOKEN_GROUP: usize = 64;
    if n_tokens == 1 {
        for (idx, real) in StreamTiles::<DECODE_STREAMS>::new(rows) {
            row_tile::<K, DECODE_STREAMS>(w, nb, idx, real, x, 0..1, out);
        }
        return;
    }
    let mut t0 = 0;
    while t0 < n_tokens {
        let tokens = t0..(t0 + TOKEN_GROUP).min(n_tokens);
        let wide = K::ROWS_BATCH;
        let mut r = rows.start;
        while r < rows.end {
            let left = rows.end - r;
            let t = tokens.clone();
            if wide >= 4 && left >= 4 {
                row_tile::<K, 4>(w, nb, std::array::from_fn(|i| r + i), 4, x, t, out);
                r += 4;
            } else if wide >= 2 && left >= 2 {
                row_tile::<K, 2>(w, nb, [r, r + 1], 2, x, t, out);
                r += 2;
            } else {
                row_tile::<K, 1>(w, nb, [r], 1, x, t, out);
                r += 1;
            }
        }
        t0 = tokens.end;
    }
}

/// Computes rows `rows` of the product for every token, or returns `false`
/// (doing nothing) when the CPU lacks the features.
pub(crate) fn rows<K: Kernel>(
    w: &[K::Block],
    nb: usize,
    rows: Range<usize>,
    x: &[Act<K>],
    n_tokens: usize,
    out: &mut OutRows<'_>,
) -> bool {
    if !available() {
        return false;
    }
    // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
    unsafe { rows_impl::<K>(w, nb, rows, x, n_tokens, out) };
    true
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
    /// for types without a min).
    fn scale_bits(&self) -> u32;
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

// ---- 256-element super-blocks ---------------------------------------------

/// A super-block as it enters the shared k-quant kernel: 8 groups of 32
/// bytes, one scale per 16 values, and (for types with mins) one min per 16.
pub(crate) struct KParts {
    q: [__m256i; 8],
    scales: [i8; 16],
    mins: [i8; 16],
    d: f32,
    dmin: f32,
}

/// A 256-element weight type as 8 registers of bytes.
pub(crate) trait KSimd: WeightBlock<Act = BlockQ8K> {
    /// Bytes are signed table values (IQ4_XS), not unsigned quants.
    const SIGNED: bool = false;
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

/// Scales and mins of a Q4_K/Q5_K block, one per 16 values.
fn scales_mins_k4(s: &[u8; 12]) -> ([i8; 16], [i8; 16]) {
    let sm: [(u8, u8); 8] = std::array::from_fn(|j| scale_min_k4(j, s));
    (
        std::array::from_fn(|i| sm[i / 2].0 as i8),
        std::array::from_fn(|i| sm[i / 2].1 as i8),
    )
}

impl KSimd for BlockQ2K {
    const HAS_MIN: bool = true;
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn parts(&self) -> KParts {
        let halves: [[u8; 32]; 2] = bytemuck::cast(self.qs);
        let m3 = _mm256_set1_epi8(3);
        let q = std::array::from_fn(|g| {
            _mm256_and_si256(srl16(load32(halves[g / 4]), 2 * (g % 4)), m3)
        });
        KParts {
            q,
            scales: self.scales.map(|s| (s & 0x0f) as i8),
            mins: self.scales.map(|s| (s >> 4) as i8),
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
            scales: scales_q3k(&self.scales),
            mins: [0; 16],
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
            scales: self.scales,
            mins: [0; 16],
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
            scales: std::array::from_fn(|i| ls[i / 2]),
            mins: [0; 16],
            d: h2f(self.d),
            dmin: 0.0,
        }
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
    type Unpacked = KUnpacked;
    type Acc = __m256;
    const ROWS_BATCH: usize = 1;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack(b: &B) -> KUnpacked {
        // SAFETY: this function is compiled with the features `parts` needs.
        let p = unsafe { b.parts() };
        let s: __m128i = bytemuck::cast(p.scales);
        let sc = std::array::from_fn(|g| {
            let lo = (2 * g) as i8;
            let hi = lo + 1;
            let pick = _mm_setr_epi8(
                lo, lo, lo, lo, lo, lo, lo, lo, hi, hi, hi, hi, hi, hi, hi, hi,
            );
            _mm256_cvtepi8_epi16(_mm_shuffle_epi8(s, pick))
        });
        let mins: __m128i = bytemuck::cast(p.mins);
        KUnpacked {
            q: p.q,
            sc,
            scales: _mm256_cvtepi8_epi16(s),
            mins: _mm256_cvtepi8_epi16(mins),
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

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_float_impl<T: FloatSimd>(w: &[T], x: &[f32]) -> f32 {
    let n = w.len().min(x.len());
    let (w, x) = (&w[..n], &x[..n]);
    let (w32, _) = w.as_chunks::<32>();
    let (x32, _) = x.as_chunks::<32>();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (wc, xc) in w32.iter().zip(x32) {
        let (wc, _) = wc.as_chunks::<8>();
        let (xc, _) = xc.as_chunks::<8>();
        for ((a, w8), x8) in acc.iter_mut().zip(wc).zip(xc) {
            // SAFETY: this function is compiled with the features `load8` needs.
            let wv = unsafe { T::load8(w8) };
            *a = _mm256_fmadd_ps(wv, bytemuck::cast(*x8), *a);
        }
    }
    let done = w32.len() * 32;
    let (w8s, _) = w[done..].as_chunks::<8>();
    let (x8s, _) = x[done..].as_chunks::<8>();
    for (w8, x8) in w8s.iter().zip(x8s) {
        // SAFETY: as above.
        let wv = unsafe { T::load8(w8) };
        acc[0] = _mm256_fmadd_ps(wv, bytemuck::cast(*x8), acc[0]);
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let done = done + w8s.len() * 8;
    w[done..]
        .iter()
        .zip(&x[done..])
        .fold(hsum(sum), |s, (&a, &b)| s + a.to_f32() * b)
}

/// Dot product of a float weight row with f32 activations, or `None` when
/// the CPU lacks the features.
pub(crate) fn dot_float<T: FloatSimd>(w: &[T], x: &[f32]) -> Option<f32> {
    if !available() {
        return None;
    }
    // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
    Some(unsafe { dot_float_impl(w, x) })
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
    let wr: [&[B]; PACK_ROWS] = rows.map(|r| &w[r * nb..(r + 1) * nb]);
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
            let prod = _mm256_mul_ps(bytemuck::cast(aux[b]), _mm256_set1_ps(xb.s));
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

/// Rows the one-token kernel streams together.
const FUSED_ROWS: usize = 4;

/// One token (decode): the arithmetic of [`packed_tile`] and
/// [`packed_store`] step for step, but straight from the weight blocks,
/// since nothing would reuse a packed copy.
#[target_feature(enable = "avx2,fma,f16c")]
fn fused_rows_impl<B: LegacySimd>(
    w: &[B],
    nb: usize,
    rows: Range<usize>,
    x: &[BlockQ8x32],
    out: &mut OutRows<'_>,
) {
    let x = &x[..nb];
    let ones = _mm256_set1_epi16(1);
    for (idx, n_rows) in StreamTiles::<FUSED_ROWS>::new(rows) {
        // Sliced to `x.len()` so that indexing by block needs fewer checks.
        let wr: [&[B]; FUSED_ROWS] = std::array::from_fn(|i| {
            let row = idx[i];
            &w[row * nb..(row + 1) * nb][..x.len()]
        });
        let mut acc = [_mm256_setzero_ps(); FUSED_ROWS];
        // Lane 1: the sequential offset/min sum (lane 0 is unused).
        let mut aux = [_mm_setzero_ps(); FUSED_ROWS];
        for (b, xb) in x.iter().enumerate() {
            let xv: __m256i = bytemuck::cast(xb.qs);
            // `[d_x, s_x]` in lanes 0 and 1.
            let xds = _mm_castsi128_ps(_mm_cvtsi64_si128(bytemuck::cast([xb.d, xb.s])));
            for i in 0..FUSED_ROWS {
                // A few blocks ahead in this row's stream. A prefetch never
                // faults, so running past the end is harmless.
                let ahead = wr[i].as_ptr().wrapping_add(b + 4);
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast::<i8>());
                let blk = &wr[i][b];
                // SAFETY: this function is compiled with the features
                // `load` needs.
                let (q, _, _) = unsafe { blk.load() };
                let (qa, xj) = match B::FORM {
                    Form::Signed => (_mm256_abs_epi8(q), _mm256_sign_epi8(xv, q)),
                    _ => (q, xv),
                };
                let sums =
                    _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(qa, xj), ones));
                // `[d_w * d_x, f * s_x]` with `f` the min or the scale: both
                // scales converted at once, each product rounded as the
                // scalar products of `packed_tile` are.
                let wds = _mm_cvtph_ps(_mm_cvtsi32_si128(blk.scale_bits() as i32));
                let wds = match B::FORM {
                    Form::Offset(_) => _mm_moveldup_ps(wds),
                    _ => wds,
                };
                let prod = _mm_mul_ps(wds, xds);
                acc[i] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), sums, acc[i]);
                if B::FORM != Form::Signed {
                    aux[i] = _mm_add_ps(aux[i], prod);
                }
            }
        }
        for i in 0..n_rows {
            let v = hsum(acc[i]);
            let a = _mm_cvtss_f32(_mm_movehdup_ps(aux[i]));
            let v = match B::FORM {
                Form::Signed => v,
                Form::Offset(o) => v - o * a,
                Form::Min => v + a,
            };
            out.set(0, idx[i], v);
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
    if n_tokens == 1 {
        // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
        unsafe { fused_rows_impl::<B>(w, nb, rows, x, out) };
        return true;
    }
    let mut p = PACK.take();
    // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
    unsafe { packed_rows_impl::<B>(w, nb, rows, x, n_tokens, out, &mut p) };
    PACK.set(p);
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

/// [`crate::ops::gelu`] of every element of `x`, times `up[i]` when given
/// (`up` as long as `x`), eight at a time with [`exp8`].
#[target_feature(enable = "avx2,fma,f16c")]
fn gelu_impl(x: &mut [f32], up: Option<&[f32]>) {
    let (s, a) = (
        _mm256_set1_ps(GELU_SQRT_2_OVER_PI),
        _mm256_set1_ps(GELU_COEF_A),
    );
    let (one, minus_two) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-2.0));
    let (x8, tail) = x.as_chunks_mut::<8>();
    for (c, xc) in x8.iter_mut().enumerate() {
        let v: __m256 = bytemuck::cast(*xc);
        let inner = _mm256_fmadd_ps(_mm256_mul_ps(a, v), v, one);
        let u = _mm256_mul_ps(_mm256_mul_ps(s, v), inner);
        let e = exp8(_mm256_mul_ps(minus_two, u));
        // A NaN input stays NaN through the numerator.
        let g = _mm256_div_ps(v, _mm256_add_ps(one, e));
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
        *v = crate::ops::gelu(*v) * up.map_or(1.0, |u| u[done + i]);
    }
}

/// [`gelu_impl`], or `false` when the CPU lacks the features or `up` is
/// not as long as `x`.
pub(crate) fn gelu(x: &mut [f32], up: Option<&[f32]>) -> bool {
    if !available() || up.is_some_and(|u| u.len() != x.len()) {
        return false;
    }
    // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
    unsafe { gelu_impl(x, up) };
    true
}

// ---- attention ----------------------------------------------------------------

/// `q . k` for one head: 8-lane FMAs alternating between two accumulators
/// (chunk `c` into accumulator `c % 2`), summed, reduced by [`hsum`], then
/// the tail (`hd % 8` values) added in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_head<T: FloatSimd>(q: &[f32], k: &[T]) -> f32 {
    let (q8, q_tail) = q.as_chunks::<8>();
    let (k8, k_tail) = k.as_chunks::<8>();
    let mut acc = [_mm256_setzero_ps(); 2];
    for (c, (qc, kc)) in q8.iter().zip(k8).enumerate() {
        // SAFETY: this function is compiled with the features `load8` needs.
        let kv = unsafe { T::load8(kc) };
        acc[c & 1] = _mm256_fmadd_ps(bytemuck::cast(*qc), kv, acc[c & 1]);
    }
    q_tail
        .iter()
        .zip(k_tail)
        .fold(hsum(_mm256_add_ps(acc[0], acc[1])), |s, (&a, &b)| {
            s + a * b.to_f32()
        })
}

/// [`dot_head`] of one query with `P` keys at once: each product has its
/// own two accumulators and the same sequence of operations as
/// [`dot_head`], so results are bit-identical; the `2 P` independent FMA
/// chains keep the FMA units busy where one pair of chains waits on
/// latency.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_heads<T: FloatSimd, const P: usize>(q: &[f32], k: [&[T]; P]) -> [f32; P] {
    let (q8, q_tail) = q.as_chunks::<8>();
    let k = k.map(|k| &k[..q.len()]);
    let k8 = k.map(|k| k.as_chunks::<8>().0);
    let mut acc = [[_mm256_setzero_ps(); 2]; P];
    for (c, qc) in q8.iter().enumerate() {
        let qv: __m256 = bytemuck::cast(*qc);
        for (a, kp) in acc.iter_mut().zip(&k8) {
            // SAFETY: this function is compiled with the features `load8` needs.
            let kv = unsafe { T::load8(&kp[c]) };
            a[c & 1] = _mm256_fmadd_ps(qv, kv, a[c & 1]);
        }
    }
    let full = q8.len() * 8;
    std::array::from_fn(|i| {
        q_tail
            .iter()
            .zip(&k[i][full..])
            .fold(hsum(_mm256_add_ps(acc[i][0], acc[i][1])), |s, (&a, &b)| {
                s + a * b.to_f32()
            })
    })
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
    scores: &[f32],
    inv: &[f32; MAX_GROUP],
    d0: usize,
    out: &mut [f32],
) {
    let len = values.len() / hd;
    let scores: [&[f32]; G] = std::array::from_fn(|h| &scores[h * len..(h + 1) * len]);
    let mut acc = [[_mm256_setzero_ps(); D]; G];
    for (p, v) in values.chunks_exact(hd).enumerate() {
        let (v8, _) = v[d0..d0 + 8 * D].as_chunks::<8>();
        // SAFETY: this function is compiled with the features `load8` needs.
        let vv: [__m256; D] = std::array::from_fn(|k| unsafe { T::load8(&v8[k]) });
        for (a, sh) in acc.iter_mut().zip(&scores) {
            let sp = _mm256_set1_ps(sh[p]);
            for (ak, vk) in a.iter_mut().zip(&vv) {
                *ak = _mm256_fmadd_ps(sp, *vk, *ak);
            }
        }
    }
    for (h, a) in acc.iter().enumerate() {
        let scale = _mm256_set1_ps(inv[h]);
        for (k, ak) in a.iter().enumerate() {
            let at = h * hd + d0 + 8 * k;
            let o: &mut [f32; 8] = (&mut out[at..at + 8]).try_into().expect("8 outputs");
            *o = bytemuck::cast(_mm256_mul_ps(*ak, scale));
        }
    }
}

/// [`weigh_values`] over all full 8-column chunks: `D` chunks per pass,
/// then the rest one at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weigh_all<T: FloatSimd, const G: usize, const D: usize>(
    values: &[T],
    hd: usize,
    scores: &[f32],
    inv: &[f32; MAX_GROUP],
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

/// Causal attention of `g` query heads that share one key/value head, at
/// one position: `q` and `out` hold the `g` heads back to back, `keys` and
/// `values` the visible positions, `scores` at least `g` times as many
/// values. Each head's result depends only on its own query (never on `g`):
/// scores in position order, the shared softmax, then values accumulated
/// in position order with one FMA per element.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
fn attend_group_impl<T: FloatSimd>(
    keys: &[T],
    values: &[T],
    hd: usize,
    q: &[f32],
    scale: f32,
    softcap: Option<f32>,
    scores: &mut [f32],
    out: &mut [f32],
    softmax: fn(&mut [f32]) -> f32,
) {
    let len = keys.len() / hd;
    let g = q.len() / hd;
    let scores = &mut scores[..g * len];
    let cap = |raw: f32| match softcap {
        Some(c) => c * (raw / c).tanh(),
        None => raw,
    };
    // Four positions at a time (independent FMA chains), then the rest.
    const P: usize = 4;
    let full = len / P * P;
    for p0 in (0..full).step_by(P) {
        let k: [&[T]; P] = std::array::from_fn(|i| &keys[(p0 + i) * hd..(p0 + i + 1) * hd]);
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            let raw = dot_heads::<T, P>(qh, k);
            for (i, r) in raw.iter().enumerate() {
                scores[h * len + p0 + i] = cap(r * scale);
            }
        }
    }
    for p in full..len {
        let k = &keys[p * hd..(p + 1) * hd];
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            scores[h * len + p] = cap(dot_head(qh, k) * scale);
        }
    }
    let mut inv = [0.0f32; 16];
    for (h, s) in scores.chunks_exact_mut(len).enumerate() {
        inv[h] = 1.0 / softmax(s);
    }
    match g {
        1 => weigh_all::<T, 1, 8>(values, hd, scores, &inv, out),
        2 => weigh_all::<T, 2, 4>(values, hd, scores, &inv, out),
        3 => weigh_all::<T, 3, 2>(values, hd, scores, &inv, out),
        4 => weigh_all::<T, 4, 2>(values, hd, scores, &inv, out),
        _ => {
            for h0 in (0..g).step_by(4) {
                // Heads `h0..` as their own group of up to 4.
                let gh = (g - h0).min(4);
                let sc = &scores[h0 * len..(h0 + gh) * len];
                let iv: [f32; MAX_GROUP] =
                    std::array::from_fn(|i| inv[(h0 + i).min(MAX_GROUP - 1)]);
                let o = &mut out[h0 * hd..(h0 + gh) * hd];
                match gh {
                    1 => weigh_all::<T, 1, 8>(values, hd, sc, &iv, o),
                    2 => weigh_all::<T, 2, 4>(values, hd, sc, &iv, o),
                    3 => weigh_all::<T, 3, 2>(values, hd, sc, &iv, o),
                    _ => weigh_all::<T, 4, 2>(values, hd, sc, &iv, o),
                }
            }
        }
    }
    let full = hd / 8 * 8;
    for d in full..hd {
        for h in 0..g {
            let mut a = 0.0f32;
            for (p, v) in values.chunks_exact(hd).enumerate() {
                a = scores[h * len + p].mul_add(v[d].to_f32(), a);
            }
            out[h * hd + d] = a * inv[h];
        }
    }
}

/// The most query heads [`attend_group`] takes at once.
pub(crate) const MAX_GROUP: usize = 16;

/// [`attend_group_impl`], or `false` when the CPU lacks the features.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_group<T: FloatSimd>(
    keys: &[T],
    values: &[T],
    hd: usize,
    q: &[f32],
    scale: f32,
    softcap: Option<f32>,
    scores: &mut [f32],
    out: &mut [f32],
    softmax: fn(&mut [f32]) -> f32,
) -> bool {
    if !available() || q.len() / hd > MAX_GROUP {
        return false;
    }
    // SAFETY: the CPU supports avx2, fma and f16c (checked just above).
    unsafe { attend_group_impl(keys, values, hd, q, scale, softcap, scores, out, softmax) };
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
