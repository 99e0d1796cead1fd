//! The ggml quantization formats: block layouts, dequantization to f32 and
//! quantization from f32.
//!
//! - [`dequantize`] / [`dequantize_row_to_vec`] turn the bytes of any type in
//!   [`DEQUANTIZE_TYPES`] into f32, bit for bit as ggml (and the `gguf` Python
//!   package) compute them.
//! - [`quantize`] / [`quantize_row_to_vec`] turn f32 into the bytes of any type
//!   in [`QUANTIZE_TYPES`], following ggml's quantizers without an importance
//!   matrix (its reference ones, and for IQ4_NL `quantize_iq4_nl`, which
//!   llama-quantize calls), so a file written here matches one written by ggml.
//! - [`quantize_weighted`] does the same with a row of an importance matrix,
//!   as ggml's quantizers do for llama-quantize's `--imatrix`, for those
//!   types and the ones ggml quantizes only with one ([`IMPORTANCE_TYPES`]).
//! - [`can_dequantize`], [`can_quantize`] and [`can_quantize_weighted`] say
//!   up front whether a type is supported, so nothing fails late at decode
//!   time.
//! - The per-block functions (`dequantize_block_*`, `quantize_block_*`) work on
//!   the layouts of [`blocks`] for callers that walk blocks themselves.
//!
//! Byte slices may have any alignment: blocks are viewed in place when the
//! bytes are aligned for them and read one by one otherwise. Lengths are
//! checked before anything is written, and no input makes these functions
//! panic. Multi-byte fields are little-endian, as in GGUF files.
//!
//! ```
//! use realm_core::{quant, GgmlType};
//! let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.3).sin()).collect();
//! let bytes = quant::quantize_row_to_vec(GgmlType::Q8_0, &x)?;
//! assert_eq!(bytes.len(), 68);
//! let y = quant::dequantize_row_to_vec(GgmlType::Q8_0, &bytes)?;
//! assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 0.01));
//! # Ok::<(), realm_core::Error>(())
//! ```

pub mod blocks;
mod float;
mod iq123;
mod iq1_quantize;
mod iq4;
pub mod iq_grids;
mod kquantize;
mod kquants;
mod lattice;
mod lattice_quantize;
mod legacy;
mod mxfp4;
mod ternary;
mod weighted;

use bytemuck::Pod;

use crate::{Error, GgmlType, Result};
use blocks::{QK, QK_K};

pub use iq123::{
    dequantize_block_iq1_m, dequantize_block_iq1_s, dequantize_block_iq2_s,
    dequantize_block_iq2_xs, dequantize_block_iq2_xxs, dequantize_block_iq3_s,
    dequantize_block_iq3_xxs, IqBlock, IqGroup, IqLattice,
};
pub use iq4::{
    dequantize_block_iq4_nl, dequantize_block_iq4_xs, quantize_block_iq4_nl, quantize_block_iq4_xs,
};
pub use kquantize::{
    quantize_block_q2_k, quantize_block_q3_k, quantize_block_q4_k, quantize_block_q5_k,
    quantize_block_q6_k, quantize_block_q8_k,
};
pub use kquants::{
    dequantize_block_q2_k, dequantize_block_q3_k, dequantize_block_q4_k, dequantize_block_q5_k,
    dequantize_block_q6_k, dequantize_block_q8_k, scale_min_k4,
};
pub use legacy::{
    dequantize_block_q4_0, dequantize_block_q4_1, dequantize_block_q5_0, dequantize_block_q5_1,
    dequantize_block_q8_0, dequantize_block_q8_1, quantize_block_q4_0, quantize_block_q4_1,
    quantize_block_q5_0, quantize_block_q5_1, quantize_block_q8_0, quantize_block_q8_1,
};
pub use mxfp4::{dequantize_block_mxfp4, e8m0_to_f32_half, quantize_block_mxfp4};
pub use ternary::{
    dequantize_block_tq1_0, dequantize_block_tq2_0, quantize_block_tq1_0, quantize_block_tq2_0,
    unpack_tq1_0, unpack_tq2_0,
};

/// The types [`dequantize`] supports, in id order.
pub const DEQUANTIZE_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ3_XXS,
    GgmlType::IQ1_S,
    GgmlType::IQ4_NL,
    GgmlType::IQ3_S,
    GgmlType::IQ2_S,
    GgmlType::IQ4_XS,
    GgmlType::BF16,
    GgmlType::IQ1_M,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::MXFP4,
];

/// The types [`quantize`] supports, in id order.
pub const QUANTIZE_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
    GgmlType::IQ3_XXS,
    GgmlType::IQ4_NL,
    GgmlType::IQ3_S,
    GgmlType::IQ2_S,
    GgmlType::IQ4_XS,
    GgmlType::IQ1_M,
    GgmlType::BF16,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::MXFP4,
];

/// The types only [`quantize_weighted`] supports: ggml quantizes them only
/// with an importance matrix (`ggml_quantize_requires_imatrix`), and
/// [`quantize`] answers [`Error::ImportanceRequired`].
///
/// ```
/// use realm_core::{quant, Error, GgmlType};
/// let x: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
/// let mut q = vec![0u8; GgmlType::IQ2_XXS.type_size()];
/// assert!(matches!(
///     quant::quantize(GgmlType::IQ2_XXS, &x, &mut q),
///     Err(Error::ImportanceRequired(GgmlType::IQ2_XXS))
/// ));
/// // With one importance a column (an importance matrix's entry).
/// let importance = vec![1.0f32; 256];
/// quant::quantize_weighted(GgmlType::IQ2_XXS, &x, &importance, &mut q)?;
/// let y = quant::dequantize_row_to_vec(GgmlType::IQ2_XXS, &q)?;
/// // 2.06 bits a weight: close, not exact.
/// let err = x.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f32>() / 256.0;
/// assert!(err < 0.05, "{err}");
/// # Ok::<(), realm_core::Error>(())
/// ```
pub const IMPORTANCE_TYPES: &[GgmlType] = &[GgmlType::IQ2_XXS, GgmlType::IQ2_XS, GgmlType::IQ1_S];

/// True if [`dequantize`] supports `t`.
pub fn can_dequantize(t: GgmlType) -> bool {
    DEQUANTIZE_TYPES.contains(&t)
}

/// True if [`quantize`] supports `t`.
pub fn can_quantize(t: GgmlType) -> bool {
    QUANTIZE_TYPES.contains(&t)
}

/// True if [`quantize_weighted`] supports `t`: every type [`quantize`]
/// does, and those of [`IMPORTANCE_TYPES`].
pub fn can_quantize_weighted(t: GgmlType) -> bool {
    can_quantize(t) || IMPORTANCE_TYPES.contains(&t)
}

/// The byte length `n_elements` elements of `dtype` take, or a
/// [`Error::SizeMismatch`] when `n_elements` is not a whole number of blocks.
/// Checks that `op` supports `dtype` and that `n_bytes` are exactly the bytes
/// of `n_elements` elements of it.
fn check_op(
    op: &'static str,
    supported: bool,
    dtype: GgmlType,
    n_elements: usize,
    n_bytes: usize,
) -> Result<()> {
    if !supported {
        return Err(Error::UnsupportedType { op, dtype });
    }
    let expected = byte_len(dtype, n_elements, op)?;
    if n_bytes != expected {
        return Err(Error::SizeMismatch {
            what: format!("{op}: bytes of {n_elements} {dtype} elements"),
            expected,
            got: n_bytes,
        });
    }
    Ok(())
}

fn byte_len(dtype: GgmlType, n_elements: usize, what: &str) -> Result<usize> {
    let bs = dtype.block_size();
    if !n_elements.is_multiple_of(bs) {
        return Err(Error::SizeMismatch {
            what: format!("{what}: {n_elements} elements of {dtype} (blocks of {bs})"),
            expected: n_elements
                .checked_next_multiple_of(bs)
                .unwrap_or(usize::MAX),
            got: n_elements,
        });
    }
    (n_elements / bs)
        .checked_mul(dtype.type_size())
        .ok_or_else(|| Error::SizeMismatch {
            what: format!("{what}: byte length of {n_elements} elements of {dtype} overflows"),
            expected: usize::MAX,
            got: n_elements,
        })
}

/// The number of elements `n_bytes` bytes of `dtype` hold, or a
/// [`Error::SizeMismatch`] when they are not a whole number of blocks.
fn element_count(dtype: GgmlType, n_bytes: usize, what: &str) -> Result<usize> {
    let ts = dtype.type_size();
    if !n_bytes.is_multiple_of(ts) {
        return Err(Error::SizeMismatch {
            what: format!("{what}: {n_bytes} bytes of {dtype} (blocks of {ts} bytes)"),
            expected: n_bytes - n_bytes % ts,
            got: n_bytes,
        });
    }
    (n_bytes / ts)
        .checked_mul(dtype.block_size())
        .ok_or_else(|| Error::SizeMismatch {
            what: format!("{what}: element count of {n_bytes} bytes of {dtype} overflows"),
            expected: usize::MAX,
            got: n_bytes,
        })
}

/// An error for a block that could not be read (never expected once the
/// lengths have been checked).
fn block_error(dtype: GgmlType, expected: usize, got: usize) -> Error {
    Error::SizeMismatch {
        what: format!("{dtype} block"),
        expected,
        got,
    }
}

/// Runs `f` on every block of `src` and the matching `N` outputs of `dst`.
/// The caller has checked that both hold the same whole number of blocks.
fn dequantize_blocks<B: Pod, const N: usize>(
    dtype: GgmlType,
    src: &[u8],
    dst: &mut [f32],
    f: impl Fn(&B, &mut [f32; N]),
) -> Result<()> {
    let size = std::mem::size_of::<B>();
    let outs = dst.chunks_exact_mut(N);
    match bytemuck::try_cast_slice::<u8, B>(src) {
        Ok(blocks) => {
            for (block, out) in blocks.iter().zip(outs) {
                let out = <&mut [f32; N]>::try_from(out).map_err(|_| block_error(dtype, N, 0))?;
                f(block, out);
            }
        }
        Err(_) => {
            for (bytes, out) in src.chunks_exact(size).zip(outs) {
                let block: B = bytemuck::try_pod_read_unaligned(bytes)
                    .map_err(|_| block_error(dtype, size, bytes.len()))?;
                let out = <&mut [f32; N]>::try_from(out).map_err(|_| block_error(dtype, N, 0))?;
                f(&block, out);
            }
        }
    }
    Ok(())
}

/// Dequantizes `src`, the bytes of `dst.len()` elements of `dtype`, into `dst`.
///
/// # Errors
///
/// [`Error::UnsupportedType`] if `dtype` is not in [`DEQUANTIZE_TYPES`];
/// [`Error::SizeMismatch`] if `dst.len()` is not a whole number of blocks or
/// `src.len()` is not exactly the bytes those blocks take. Nothing is written
/// to `dst` on error.
pub fn dequantize(dtype: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    check_op(
        "dequantize",
        can_dequantize(dtype),
        dtype,
        dst.len(),
        src.len(),
    )?;
    match dtype {
        GgmlType::F32 => float::f32_to_f32(src, dst),
        GgmlType::F16 => float::f16_to_f32(src, dst),
        GgmlType::BF16 => float::bf16_to_f32(src, dst),
        GgmlType::Q4_0 => dequantize_blocks::<_, QK>(dtype, src, dst, dequantize_block_q4_0)?,
        GgmlType::Q4_1 => dequantize_blocks::<_, QK>(dtype, src, dst, dequantize_block_q4_1)?,
        GgmlType::Q5_0 => dequantize_blocks::<_, QK>(dtype, src, dst, dequantize_block_q5_0)?,
        GgmlType::Q5_1 => dequantize_blocks::<_, QK>(dtype, src, dst, dequantize_block_q5_1)?,
        GgmlType::Q8_0 => dequantize_blocks::<_, QK>(dtype, src, dst, dequantize_block_q8_0)?,
        GgmlType::Q8_1 => dequantize_blocks::<_, QK>(dtype, src, dst, dequantize_block_q8_1)?,
        GgmlType::Q2_K => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_q2_k)?,
        GgmlType::Q3_K => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_q3_k)?,
        GgmlType::Q4_K => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_q4_k)?,
        GgmlType::Q5_K => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_q5_k)?,
        GgmlType::Q6_K => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_q6_k)?,
        GgmlType::Q8_K => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_q8_k)?,
        GgmlType::IQ2_XXS => {
            dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_iq2_xxs)?
        }
        GgmlType::IQ2_XS => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_iq2_xs)?,
        GgmlType::IQ3_XXS => {
            dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_iq3_xxs)?
        }
        GgmlType::IQ1_S => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_iq1_s)?,
        GgmlType::IQ4_NL => dequantize_blocks::<_, QK>(dtype, src, dst, dequantize_block_iq4_nl)?,
        GgmlType::IQ3_S => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_iq3_s)?,
        GgmlType::IQ2_S => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_iq2_s)?,
        GgmlType::IQ4_XS => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_iq4_xs)?,
        GgmlType::IQ1_M => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_iq1_m)?,
        GgmlType::MXFP4 => dequantize_blocks::<_, QK>(dtype, src, dst, dequantize_block_mxfp4)?,
        GgmlType::TQ1_0 => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_tq1_0)?,
        GgmlType::TQ2_0 => dequantize_blocks::<_, QK_K>(dtype, src, dst, dequantize_block_tq2_0)?,
        _ => {
            return Err(Error::UnsupportedType {
                op: "dequantize",
                dtype,
            })
        }
    }
    Ok(())
}

/// Dequantizes `src`, a whole number of `dtype` blocks, into a new vector.
///
/// # Errors
///
/// As [`dequantize`]; [`Error::SizeMismatch`] if `src.len()` is not a
/// multiple of the block's byte size.
pub fn dequantize_row_to_vec(dtype: GgmlType, src: &[u8]) -> Result<Vec<f32>> {
    if !can_dequantize(dtype) {
        return Err(Error::UnsupportedType {
            op: "dequantize",
            dtype,
        });
    }
    let n = element_count(dtype, src.len(), "dequantize input")?;
    let mut out = vec![0.0f32; n];
    dequantize(dtype, src, &mut out)?;
    Ok(out)
}

/// Runs `f` on every `N` inputs of `src` and writes each block it returns to
/// the matching bytes of `dst`. The caller has checked the lengths.
fn quantize_blocks<B: Pod, const N: usize>(
    dtype: GgmlType,
    src: &[f32],
    dst: &mut [u8],
    f: impl Fn(&[f32; N]) -> B,
) -> Result<()> {
    let size = std::mem::size_of::<B>();
    for (x, out) in src.chunks_exact(N).zip(dst.chunks_exact_mut(size)) {
        let x = <&[f32; N]>::try_from(x).map_err(|_| block_error(dtype, N, x.len()))?;
        out.copy_from_slice(bytemuck::bytes_of(&f(x)));
    }
    Ok(())
}

/// Quantizes `src` to `dtype`, writing exactly the bytes of `src.len()`
/// elements to `dst`.
///
/// Every type is quantized as ggml quantizes it without an importance
/// matrix (`ggml_quantize_chunk` with none, as llama-quantize runs it),
/// which for all but IQ4_NL is its reference quantizer
/// (`quantize_row_*_ref`). For IQ4_NL that is `quantize_iq4_nl`, which
/// searches each block's scale; ggml's `quantize_row_iq4_nl_ref` (its CPU
/// backend's conversion of f32 to IQ4_NL) does not, and gives other bytes.
/// The lattice types IQ1_M, IQ2_S, IQ3_XXS and IQ3_S search their points
/// and scales weighting each value by its square (IQ2_S: plus a quarter of
/// twice the block's mean square) (`quantize_iq*(..., NULL)`).
///
/// # Errors
///
/// [`Error::ImportanceRequired`] if `dtype` is in [`IMPORTANCE_TYPES`];
/// [`Error::UnsupportedType`] if `dtype` is not in [`QUANTIZE_TYPES`];
/// [`Error::SizeMismatch`] if `src.len()` is not a whole number of blocks or
/// `dst.len()` is not exactly the bytes they take.
pub fn quantize(dtype: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    if IMPORTANCE_TYPES.contains(&dtype) {
        return Err(Error::ImportanceRequired(dtype));
    }
    check_op("quantize", can_quantize(dtype), dtype, src.len(), dst.len())?;
    match dtype {
        GgmlType::F32 => float::f32_from_f32(src, dst),
        GgmlType::F16 => float::f16_from_f32(src, dst),
        GgmlType::BF16 => float::bf16_from_f32(src, dst),
        GgmlType::Q4_0 => quantize_blocks::<_, QK>(dtype, src, dst, quantize_block_q4_0)?,
        GgmlType::Q4_1 => quantize_blocks::<_, QK>(dtype, src, dst, quantize_block_q4_1)?,
        GgmlType::Q5_0 => quantize_blocks::<_, QK>(dtype, src, dst, quantize_block_q5_0)?,
        GgmlType::Q5_1 => quantize_blocks::<_, QK>(dtype, src, dst, quantize_block_q5_1)?,
        GgmlType::Q8_0 => quantize_blocks::<_, QK>(dtype, src, dst, quantize_block_q8_0)?,
        GgmlType::Q8_1 => quantize_blocks::<_, QK>(dtype, src, dst, quantize_block_q8_1)?,
        GgmlType::Q2_K => quantize_blocks::<_, QK_K>(dtype, src, dst, quantize_block_q2_k)?,
        GgmlType::Q3_K => quantize_blocks::<_, QK_K>(dtype, src, dst, quantize_block_q3_k)?,
        GgmlType::Q4_K => quantize_blocks::<_, QK_K>(dtype, src, dst, quantize_block_q4_k)?,
        GgmlType::Q5_K => quantize_blocks::<_, QK_K>(dtype, src, dst, quantize_block_q5_k)?,
        GgmlType::Q6_K => quantize_blocks::<_, QK_K>(dtype, src, dst, quantize_block_q6_k)?,
        GgmlType::Q8_K => quantize_blocks::<_, QK_K>(dtype, src, dst, quantize_block_q8_k)?,
        GgmlType::IQ4_NL => quantize_blocks::<_, QK>(dtype, src, dst, quantize_block_iq4_nl)?,
        GgmlType::IQ4_XS => quantize_blocks::<_, QK_K>(dtype, src, dst, quantize_block_iq4_xs)?,
        GgmlType::IQ2_S => quantize_blocks::<_, QK_K>(dtype, src, dst, |x| {
            lattice_quantize::quantize_block_iq2_s(x, None)
        })?,
        GgmlType::IQ3_XXS => quantize_blocks::<_, QK_K>(dtype, src, dst, |x| {
            lattice_quantize::quantize_block_iq3_xxs(x, None)
        })?,
        GgmlType::IQ3_S => quantize_blocks::<_, QK_K>(dtype, src, dst, |x| {
            lattice_quantize::quantize_block_iq3_s(x, None)
        })?,
        GgmlType::IQ1_M => quantize_blocks::<_, QK_K>(dtype, src, dst, |x| {
            iq1_quantize::quantize_block_iq1_m(x, None)
        })?,
        GgmlType::MXFP4 => quantize_blocks::<_, QK>(dtype, src, dst, quantize_block_mxfp4)?,
        GgmlType::TQ1_0 => quantize_blocks::<_, QK_K>(dtype, src, dst, quantize_block_tq1_0)?,
        GgmlType::TQ2_0 => quantize_blocks::<_, QK_K>(dtype, src, dst, quantize_block_tq2_0)?,
        _ => {
            return Err(Error::UnsupportedType {
                op: "quantize",
                dtype,
            })
        }
    }
    Ok(())
}

/// Runs `f` on every block of every `importance.len()`-value row of `src`,
/// with the matching block of `importance` and the row's mean square, and
/// writes each block it returns to the matching bytes of `dst`. The caller
/// has checked the lengths (rows of whole blocks, at least one value).
fn quantize_weighted_blocks<B: Pod, const N: usize>(
    src: &[f32],
    importance: &[f32],
    dst: &mut [u8],
    f: impl Fn(&[f32; N], &[f32; N], f32) -> B,
) {
    let n = importance.len();
    let size = std::mem::size_of::<B>();
    let qw = importance.as_chunks::<N>().0;
    for (row, out) in src.chunks_exact(n).zip(dst.chunks_exact_mut(n / N * size)) {
        let sigma2 = weighted::sum_squares(row) / n as f32;
        for ((x, w), out) in row
            .as_chunks::<N>()
            .0
            .iter()
            .zip(qw)
            .zip(out.chunks_exact_mut(size))
        {
            out.copy_from_slice(bytemuck::bytes_of(&f(x, w, sigma2)));
        }
    }
}

/// Quantizes whole rows of `importance.len()` values each from `src` into
/// `dst`, weighting each column's error by its importance (an importance
/// matrix's row for this tensor, as llama-quantize --imatrix passes it) as
/// ggml's quantizers do; types that ignore importance give what `quantize`
/// gives.
///
/// Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS
/// and the lattice types IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S search
/// their scales (and lattice points) against the importance (ggml's
/// `quantize_row_*_impl`, byte for byte); every other type in
/// [`QUANTIZE_TYPES`] ignores it, as ggml does. The types of
/// [`IMPORTANCE_TYPES`] are quantized only here.
/// Every row is quantized with the same importance vector.
///
/// ```
/// use realm_core::{quant, GgmlType};
/// // Two rows of 256 values, and one importance per column.
/// let x: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
/// let importance: Vec<f32> = (0..256).map(|i| 1.0 + (i % 7) as f32).collect();
/// let mut q = vec![0u8; 2 * GgmlType::Q4_K.type_size()];
/// quant::quantize_weighted(GgmlType::Q4_K, &x, &importance, &mut q)?;
/// let y = quant::dequantize_row_to_vec(GgmlType::Q4_K, &q)?;
/// assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 0.1));
///
/// // Q8_0 has no use for the importance.
/// let mut q8 = vec![0u8; 16 * GgmlType::Q8_0.type_size()];
/// quant::quantize_weighted(GgmlType::Q8_0, &x, &importance, &mut q8)?;
/// assert_eq!(q8, quant::quantize_row_to_vec(GgmlType::Q8_0, &x)?);
/// # Ok::<(), realm_core::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::UnsupportedType`] if `dtype` is in neither [`QUANTIZE_TYPES`]
/// nor [`IMPORTANCE_TYPES`]; [`Error::SizeMismatch`] if `importance` is empty or not a whole number of
/// blocks, `src.len()` is not a multiple of `importance.len()`, or
/// `dst.len()` is not exactly the bytes of `src.len()` elements. Nothing is
/// written to `dst` on error.
pub fn quantize_weighted(
    dtype: GgmlType,
    src: &[f32],
    importance: &[f32],
    dst: &mut [u8],
) -> Result<()> {
    const OP: &str = "quantize_weighted";
    if !can_quantize_weighted(dtype) {
        return Err(Error::UnsupportedType { op: OP, dtype });
    }
    let n = importance.len();
    if n == 0 {
        return Err(Error::SizeMismatch {
            what: format!("{OP}: importance of a row of {dtype} (one value per column)"),
            expected: dtype.block_size(),
            got: 0,
        });
    }
    byte_len(dtype, n, "quantize_weighted: row")?;
    if !src.len().is_multiple_of(n) {
        return Err(Error::SizeMismatch {
            what: format!("{OP}: {} values in rows of {n}", src.len()),
            expected: src.len().checked_next_multiple_of(n).unwrap_or(usize::MAX),
            got: src.len(),
        });
    }
    check_op(OP, true, dtype, src.len(), dst.len())?;
    match dtype {
        GgmlType::Q4_0 => {
            quantize_weighted_blocks::<_, QK>(src, importance, dst, weighted::quantize_block_q4_0)
        }
        GgmlType::Q4_1 => {
            quantize_weighted_blocks::<_, QK>(src, importance, dst, weighted::quantize_block_q4_1)
        }
        GgmlType::Q5_0 => {
            quantize_weighted_blocks::<_, QK>(src, importance, dst, weighted::quantize_block_q5_0)
        }
        GgmlType::Q5_1 => {
            quantize_weighted_blocks::<_, QK>(src, importance, dst, weighted::quantize_block_q5_1)
        }
        GgmlType::Q2_K => quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
            weighted::quantize_block_q2_k(x, w)
        }),
        GgmlType::Q3_K => quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
            weighted::quantize_block_q3_k(x, w)
        }),
        GgmlType::Q4_K => quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
            weighted::quantize_block_q4_k(x, w)
        }),
        GgmlType::Q5_K => quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
            weighted::quantize_block_q5_k(x, w)
        }),
        GgmlType::Q6_K => quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
            weighted::quantize_block_q6_k(x, w)
        }),
        GgmlType::IQ4_NL => quantize_weighted_blocks::<_, QK>(src, importance, dst, |x, w, _| {
            weighted::quantize_block_iq4_nl(x, w)
        }),
        GgmlType::IQ4_XS => quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
            weighted::quantize_block_iq4_xs(x, w)
        }),
        GgmlType::IQ2_XXS => {
            quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
                lattice_quantize::quantize_block_iq2_xxs(x, w)
            })
        }
        GgmlType::IQ2_XS => quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
            lattice_quantize::quantize_block_iq2_xs(x, w)
        }),
        GgmlType::IQ2_S => quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
            lattice_quantize::quantize_block_iq2_s(x, Some(w))
        }),
        GgmlType::IQ3_XXS => {
            quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
                lattice_quantize::quantize_block_iq3_xxs(x, Some(w))
            })
        }
        GgmlType::IQ3_S => quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
            lattice_quantize::quantize_block_iq3_s(x, Some(w))
        }),
        GgmlType::IQ1_S => quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
            iq1_quantize::quantize_block_iq1_s(x, w)
        }),
        GgmlType::IQ1_M => quantize_weighted_blocks::<_, QK_K>(src, importance, dst, |x, w, _| {
            iq1_quantize::quantize_block_iq1_m(x, Some(w))
        }),
        _ => return quantize(dtype, src, dst),
    }
    Ok(())
}

/// Quantizes `src`, a whole number of `dtype` blocks, into a new byte vector.
///
/// # Errors
///
/// As [`quantize`].
pub fn quantize_row_to_vec(dtype: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    if !can_quantize(dtype) {
        return Err(Error::UnsupportedType {
            op: "quantize",
            dtype,
        });
    }
    let mut out = vec![0u8; byte_len(dtype, src.len(), "quantize input")?];
    quantize(dtype, src, &mut out)?;
    Ok(out)
}
