//! The plain float types: F32, F16 and BF16, converted to and from f32.
//!
//! Bytes are little-endian, as GGUF stores them. Every function here takes
//! slices whose lengths the dispatcher in [`super`] has already checked, and
//! none of them can panic.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// Copies little-endian f32 bytes into `dst` (`src.len() == 4 * dst.len()`).
pub(crate) fn f32_to_f32(src: &[u8], dst: &mut [f32]) {
    match bytemuck::try_cast_slice::<u8, f32>(src) {
        Ok(values) if cfg!(target_endian = "little") && values.len() == dst.len() => {
            dst.copy_from_slice(values);
        }
        _ => {
            for (out, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *out = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

/// Widens little-endian f16 bytes into `dst` (`src.len() == 2 * dst.len()`).
pub(crate) fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    match bytemuck::try_cast_slice::<u8, f16>(src) {
        Ok(values) if cfg!(target_endian = "little") && values.len() == dst.len() => {
            values.convert_to_f32_slice(dst);
        }
        _ => {
            for (out, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *out = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
    }
}

/// Widens little-endian bf16 bytes into `dst` (`src.len() == 2 * dst.len()`):
/// the 16 bits become the top half of the f32, NaN payloads included.
pub(crate) fn bf16_to_f32(src: &[u8], dst: &mut [f32]) {
    for (out, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *out = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
    }
}

/// Writes `src` as little-endian f32 bytes (`dst.len() == 4 * src.len()`).
pub(crate) fn f32_from_f32(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(4)) {
        out.copy_from_slice(&x.to_le_bytes());
    }
}

/// Narrows `src` to little-endian f16 bytes, rounding to nearest even
/// (`dst.len() == 2 * src.len()`).
pub(crate) fn f16_from_f32(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(2)) {
        out.copy_from_slice(&f16::from_f32(*x).to_le_bytes());
    }
}

/// Narrows `src` to little-endian bf16 bytes the way ggml does
/// (`dst.len() == 2 * src.len()`).
pub(crate) fn bf16_from_f32(src: &[f32], dst: &mut [u8]) {
    for (x, out) in src.iter().zip(dst.chunks_exact_mut(2)) {
        out.copy_from_slice(&f32_to_bf16_bits(*x).to_le_bytes());
    }
}

/// ggml's f32 to bf16 conversion: a NaN keeps its sign and top mantissa bits
/// and is made quiet; anything else rounds to nearest, ties to even.
fn f32_to_bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let top = if bits & 0x7fff_ffff > 0x7f80_0000 {
        (bits >> 16) | 0x40
    } else {
        let rounded = u64::from(bits) + 0x7fff + u64::from((bits >> 16) & 1);
        // At most 0xff80_0000 + 0x8000 before the shift, so this fits 16 bits.
        (rounded >> 16) as u32
    };
    top as u16
}
