//! Realm's own fused kernels, as candle custom ops. Each has a CPU form of
//! the same arithmetic, which runs on candle's CPU device (where the tests
//! run without a GPU) and which the tests compare the CUDA form with. The
//! CUDA forms live in `kernels/*.cu`, compiled to PTX by `build.rs`.
//!
//! A small model's decode step is launch-bound: these replace several of
//! candle's kernels each with one.

mod add_norm;
mod attention;
mod gated;

pub(crate) use add_norm::AddRmsNorm;
pub(crate) use attention::{DecodeAttention, QueryPositions, MAX_HEAD_DIM};
pub(crate) use gated::{Gate, Gated};

use candle_core::{Layout, Result};

/// The contiguous values of `s` under `l`.
fn values<'a, T>(s: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) if b <= s.len() => Ok(&s[a..b]),
        _ => candle_core::bail!("fused op: arguments must be contiguous"),
    }
}

/// What the CUDA forms share.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::{Layout, Result};

    /// The start and end of `l`'s values, which must be contiguous.
    pub(super) fn offsets(l: &Layout) -> Result<(usize, usize)> {
        l.contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("fused op: arguments must be contiguous".into()))
    }
}
