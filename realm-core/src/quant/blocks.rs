//! Block layouts of the quantized types, byte for byte as ggml stores them.
//!
//! Every block is `#[repr(C)]` and [`bytemuck::Pod`], so a slice of file bytes
//! can be viewed as a slice of blocks without copying; each size is checked at
//! compile time against [`GgmlType::type_size`].

use bytemuck::{Pod, Zeroable};
use half::f16;

use crate::GgmlType;

/// Elements in a block of the "legacy" types (Q4_0 ... Q8_1, IQ4_NL).
pub const QK: usize = 32;
/// Elements in a super-block of the k-quants (Q2_K ... Q8_K, IQ4_XS).
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales and mins in a Q4_K/Q5_K block.
pub const K_SCALE_SIZE: usize = 12;

/// Q4_0: 32 weights as 4-bit values `q`, each `d * (q - 8)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Nibbles: element `i` in the low half of byte `i`, element `i + 16` in the high half.
    pub qs: [u8; QK / 2],
}

/// Q4_1: 32 weights as 4-bit values `q`, each `d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum (offset).
    pub m: f16,
    /// Nibbles, laid out as in [`BlockQ4_0`].
    pub qs: [u8; QK / 2],
}

/// Q5_0: 32 weights as 5-bit values `q`, each `d * (q - 16)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bit of each element, little-endian bit `i` for element `i`.
    pub qh: [u8; 4],
    /// Low nibbles, laid out as in [`BlockQ4_0`].
    pub qs: [u8; QK / 2],
}

/// Q5_1: 32 weights as 5-bit values `q`, each `d * q + m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Minimum (offset).
    pub m: f16,
    /// Fifth bits, as in [`BlockQ5_0`].
    pub qh: [u8; 4],
    /// Low nibbles, as in [`BlockQ4_0`].
    pub qs: [u8; QK / 2],
}

/// Q8_0: 32 weights as signed bytes, each `d * q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Quants.
    pub qs: [i8; QK],
}

/// Q8_1: Q8_0 plus `s = d * sum(qs)`, used for activations against Q4_1/Q5_1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d * sum(qs)`.
    pub s: f16,
    /// Quants.
    pub qs: [i8; QK],
}

/// Q2_K: 16 sub-blocks of 16 weights, 2-bit quants, 4-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ2K {
    /// Low nibble: scale, high nibble: min, per sub-block.
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
}

/// Q3_K: 16 sub-blocks of 16 weights, 3-bit quants, 6-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ3K {
    /// High (third) bit of each quant.
    pub hmask: [u8; QK_K / 8],
    /// Low two bits of each quant.
    pub qs: [u8; QK_K / 4],
    /// 16 packed 6-bit scales.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}

/// Q4_K: 8 sub-blocks of 32 weights, 4-bit quants, 6-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// 8 scales and 8 mins, 6 bits each, packed.
    pub scales: [u8; K_SCALE_SIZE],
    /// 4-bit quants.
    pub qs: [u8; QK_K / 2],
}

/// Q5_K: 8 sub-blocks of 32 weights, 5-bit quants, 6-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5K {
    /// Super-block scale of the scales.
    pub d: f16,
    /// Super-block scale of the mins.
    pub dmin: f16,
    /// 8 scales and 8 mins, 6 bits each, packed as in [`BlockQ4K`].
    pub scales: [u8; K_SCALE_SIZE],
    /// Fifth bit of each quant.
    pub qh: [u8; QK_K / 8],
    /// Low nibbles.
    pub qs: [u8; QK_K / 2],
}

/// Q6_K: 16 sub-blocks of 16 weights, 6-bit quants, 8-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    /// Low four bits of each quant.
    pub ql: [u8; QK_K / 2],
    /// High two bits of each quant.
    pub qh: [u8; QK_K / 4],
    /// Signed per-sub-block scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}

/// Q8_K: 256 signed bytes with an f32 scale and per-16 sums (activations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8K {
    /// Scale.
    pub d: f32,
    /// Quants.
    pub qs: [i8; QK_K],
    /// Sum of each group of 16 quants.
    pub bsums: [i16; QK_K / 16],
}

/// IQ4_NL: 32 weights as 4-bit indices into a non-linear table, times `d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ4NL {
    /// Scale.
    pub d: f16,
    /// Table indices, laid out as in [`BlockQ4_0`].
    pub qs: [u8; QK / 2],
}

/// IQ4_XS: 8 sub-blocks of 32 weights, non-linear 4-bit indices, 6-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ4XS {
    /// Super-block scale.
    pub d: f16,
    /// High two bits of each sub-block's scale.
    pub scales_h: u16,
    /// Low four bits of each sub-block's scale.
    pub scales_l: [u8; QK_K / 64],
    /// Table indices.
    pub qs: [u8; QK_K / 2],
}

/// MXFP4 (OCP microscaling FP4, gpt-oss's experts): 32 E2M1 values as
/// 4-bit codes, times a shared power of two stored as an E8M0 exponent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockMXFP4 {
    /// Exponent: the scale is `2^(e - 128)` (ggml keeps the table's values
    /// doubled and the scale halved).
    pub e: u8,
    /// Codes, laid out as in [`BlockQ4_0`].
    pub qs: [u8; QK / 2],
}

/// IQ2_XXS: 8 groups of 32 weights, each four 8-value lattice points
/// (`IQ2XXS_GRID` indices in its first word's bytes), their signs (7 bits
/// each, the eighth the parity) and a 4-bit scale in its second word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ2XXS {
    /// Super-block scale.
    pub d: f16,
    /// Two 32-bit words a group of 32.
    pub qs: [u16; QK_K / 8],
}

/// IQ2_XS: 32 lattice points a block, each a 9-bit `IQ2XS_GRID` index and
/// 7 sign bits in one `u16`, and a 4-bit scale a 16 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ2XS {
    /// Super-block scale.
    pub d: f16,
    /// Index and signs of each 8-value point.
    pub qs: [u16; QK_K / 8],
    /// Two 4-bit scales a group of 32.
    pub scales: [u8; QK_K / 32],
}

/// IQ2_S: 32 lattice points a block, 10-bit `IQ2S_GRID` indices (low bytes
/// in `qs`, high bits in `qh`), a sign byte each, and a 4-bit scale a 16
/// weights.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ2S {
    /// Super-block scale.
    pub d: f16,
    /// The points' low index bytes, then their sign bytes.
    pub qs: [u8; QK_K / 4],
    /// Two high index bits a point, four points a byte.
    pub qh: [u8; QK_K / 32],
    /// Two 4-bit scales a group of 32.
    pub scales: [u8; QK_K / 32],
}

/// IQ3_XXS: 64 4-value lattice points (`IQ3XXS_GRID` indices), then a
/// word a group of 32 of signs (7 bits an 8 values) and a 4-bit scale.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ3XXS {
    /// Super-block scale.
    pub d: f16,
    /// Point indices, then each group's signs and scale.
    pub qs: [u8; 3 * QK_K / 8],
}

/// IQ3_S: 64 4-value lattice points (9-bit `IQ3S_GRID` indices), a sign
/// bit a weight, and a 4-bit scale a 32 weights.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ3S {
    /// Super-block scale.
    pub d: f16,
    /// Low index bytes.
    pub qs: [u8; QK_K / 4],
    /// High index bits, one a point.
    pub qh: [u8; QK_K / 32],
    /// One sign bit a weight.
    pub signs: [u8; QK_K / 8],
    /// Two 4-bit scales a 64 weights.
    pub scales: [u8; QK_K / 64],
}

/// IQ1_S: 32 8-value lattice points of -1, 0 and 1 (11-bit `IQ1S_GRID`
/// indices), a 3-bit scale and the sign of a shift of 1/8 a group of 32.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ1S {
    /// Super-block scale.
    pub d: f16,
    /// Low index bytes.
    pub qs: [u8; QK_K / 8],
    /// A group's high index bits (3 a point), scale and shift's sign.
    pub qh: [u16; QK_K / 32],
}

/// IQ1_M: IQ1_S's points with a shift's sign a point and a 3-bit scale a
/// 16 weights; the f16 super-block scale is spread over the scales' top
/// nibbles.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ1M {
    /// Low index bytes.
    pub qs: [u8; QK_K / 8],
    /// High index bits and shift signs, a nibble a point.
    pub qh: [u8; QK_K / 16],
    /// 3-bit scales, four a 16-bit word, and the super-block scale.
    pub scales: [u8; QK_K / 32],
}

impl BlockIQ1M {
    /// The super-block scale: the top nibbles of the four 16-bit scale
    /// words, the first word's the lowest.
    ///
    /// ```
    /// use realm_core::quant::blocks::BlockIQ1M;
    ///
    /// let mut b: BlockIQ1M = bytemuck::Zeroable::zeroed();
    /// b.set_d(half::f16::from_f32(0.5));
    /// assert_eq!(b.d().to_f32(), 0.5);
    /// assert_eq!(b.scales[7] & 0xf0, 0x30); // 0.5 is 0x3800
    /// ```
    pub fn d(&self) -> f16 {
        let nibble = |i: usize| u16::from(self.scales[2 * i + 1] >> 4) << (4 * i);
        f16::from_bits(nibble(0) | nibble(1) | nibble(2) | nibble(3))
    }

    /// Sets the super-block scale, keeping the 3-bit scales.
    pub fn set_d(&mut self, d: f16) {
        let bits = d.to_bits();
        for i in 0..4 {
            let b = &mut self.scales[2 * i + 1];
            *b = (*b & 0x0f) | ((((bits >> (4 * i)) & 0xf) as u8) << 4);
        }
    }
}

/// TQ1_0 (BitNet b1.58's ternary weights): 256 trits, five to a byte in
/// `qs` and four in each of `qh`'s, times `d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockTQ1_0 {
    /// Trits of the first 240 values, five a byte.
    pub qs: [u8; 48],
    /// Trits of the last 16, four a byte.
    pub qh: [u8; 4],
    /// Scale.
    pub d: f16,
}

/// TQ2_0: 256 trits as 2-bit values `t + 1`, times `d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockTQ2_0 {
    /// Two bits a value, four runs of 32 a 32 bytes.
    pub qs: [u8; QK_K / 4],
    /// Scale.
    pub d: f16,
}

/// The 16 values an MXFP4 code selects: E2M1's values doubled, so that
/// they are integers (sign in the code's high bit).
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// The 16 values an IQ4_NL / IQ4_XS index selects.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

macro_rules! assert_block_size {
    ($($block:ty => $ty:expr),* $(,)?) => {
        $(const _: () = assert!(std::mem::size_of::<$block>() == $ty.type_size());)*
    };
}

assert_block_size! {
    BlockQ4_0 => GgmlType::Q4_0,
    BlockQ4_1 => GgmlType::Q4_1,
    BlockQ5_0 => GgmlType::Q5_0,
    BlockQ5_1 => GgmlType::Q5_1,
    BlockQ8_0 => GgmlType::Q8_0,
    BlockQ8_1 => GgmlType::Q8_1,
    BlockQ2K => GgmlType::Q2_K,
    BlockQ3K => GgmlType::Q3_K,
    BlockQ4K => GgmlType::Q4_K,
    BlockQ5K => GgmlType::Q5_K,
    BlockQ6K => GgmlType::Q6_K,
    BlockQ8K => GgmlType::Q8_K,
    BlockIQ4NL => GgmlType::IQ4_NL,
    BlockIQ4XS => GgmlType::IQ4_XS,
    BlockMXFP4 => GgmlType::MXFP4,
    BlockIQ2XXS => GgmlType::IQ2_XXS,
    BlockIQ2XS => GgmlType::IQ2_XS,
    BlockIQ2S => GgmlType::IQ2_S,
    BlockIQ3XXS => GgmlType::IQ3_XXS,
    BlockIQ3S => GgmlType::IQ3_S,
    BlockIQ1S => GgmlType::IQ1_S,
    BlockIQ1M => GgmlType::IQ1_M,
    BlockTQ1_0 => GgmlType::TQ1_0,
    BlockTQ2_0 => GgmlType::TQ2_0,
}
