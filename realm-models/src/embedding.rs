//! Embeddings: a text's final hidden states (after the output norm), pooled
//! into one vector and normalised, as llama.cpp's `llama-embedding` and its
//! server's `/v1/embeddings` compute them.
//!
//! ```
//! use realm_models::embedding::{embed, normalize, Pooling};
//! use realm_models::{synthetic::SyntheticLayout, Model};
//! let file = realm_core::gguf::Gguf::from_bytes(SyntheticLayout::tiny("llama")?.write(1)?)?;
//! let backend = realm_compute_cpu::CpuBackend::new().unwrap();
//! let model = Model::load(&file, &backend)?;
//! let mut s = model.session(16, 8)?;
//! let mut v = embed(&model, &mut s, &[1, 2, 3], Pooling::Mean)?.remove(0);
//! normalize(&mut v, 2);
//! let length: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
//! assert!((length - 1.0).abs() < 1e-5);
//! # Ok::<(), realm_models::Error>(())
//! ```

use realm_core::backend::Backend;

use crate::{Error, Model, Result, Session};

/// How a text's per-token hidden states become its embedding (llama.cpp's
/// `llama_pooling_type`, less ranking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// No pooling: one vector per token.
    None,
    /// The mean over the tokens.
    Mean,
    /// The first token's.
    Cls,
    /// The last token's.
    Last,
    /// A reranker's: the first token's (the last's where attention is
    /// causal), through the model's classification head
    /// ([`Model::rank`]): one score a label, not normalised.
    Rank,
}

impl Pooling {
    /// The pooling a GGUF's `{arch}.pooling_type` names (0 none, 1 mean,
    /// 2 cls, 3 last, 4 rank).
    pub fn from_gguf(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::None),
            1 => Some(Self::Mean),
            2 => Some(Self::Cls),
            3 => Some(Self::Last),
            4 => Some(Self::Rank),
            _ => None,
        }
    }

    /// The pooling named `name` (`none`, `mean`, `cls`, `last`, `rank`).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "none" => Some(Self::None),
            "mean" => Some(Self::Mean),
            "cls" => Some(Self::Cls),
            "last" => Some(Self::Last),
            "rank" => Some(Self::Rank),
            _ => None,
        }
    }
}

/// Runs `tokens` through `session` from its start (what it held is
/// dropped) and pools their final hidden states: one vector, or one per
/// token with [`Pooling::None`], projected as the model asks
/// ([`Model::project_pooled`]); not normalised. With [`Pooling::Rank`],
/// the reranker's scores ([`Model::rank`]).
pub fn embed<B: Backend>(
    model: &Model<'_, B>,
    session: &mut Session<B>,
    tokens: &[u32],
    pooling: Pooling,
) -> Result<Vec<Vec<f32>>> {
    if tokens.is_empty() {
        return Err(Error::BadConfig(
            "an embedding needs at least one token".into(),
        ));
    }
    let d = model.config().d_model;
    let n = tokens.len();
    session.truncate(0);
    // A reranker reads its first token's state, the tokens' mean, or its
    // last token's where its attention is causal ([`Model::rank_pooling`]).
    let rank = pooling == Pooling::Rank;
    let pooling = match pooling {
        Pooling::Rank => model
            .rank_pooling()
            .ok_or_else(|| Error::BadConfig("the model has no reranker's head (cls)".into()))?,
        p => p,
    };
    let from = match pooling {
        Pooling::Last => n - 1,
        _ => 0,
    };
    let mut out = match pooling {
        Pooling::None => Vec::with_capacity(n),
        _ => vec![vec![0f32; d]],
    };
    model.forward_embeddings(session, tokens, from, |i, h| match pooling {
        Pooling::None => out.push(h.to_vec()),
        Pooling::Mean => {
            let scale = 1.0 / n as f32;
            out[0].iter_mut().zip(h).for_each(|(m, x)| *m += x * scale);
        }
        Pooling::Cls if i == 0 => out[0].copy_from_slice(h),
        Pooling::Last | Pooling::Rank => out[0].copy_from_slice(h),
        Pooling::Cls => {}
    })?;
    if rank {
        return Ok(vec![model.rank(&out[0])?]);
    }
    model.project_pooled(&mut out)?;
    Ok(out)
}

/// Normalises `v` in place as llama.cpp's `embd_normalize` does: -1 none,
/// 0 to the int16 range by the largest magnitude, 2 to unit length, any
/// other `p` to unit p-norm (a zero vector stays zero).
pub fn normalize(v: &mut [f32], p: i32) {
    let sum: f64 = match p {
        -1 => 1.0,
        0 => v.iter().fold(0f64, |m, &x| m.max(f64::from(x.abs()))) / 32760.0,
        2 => v.iter().map(|&x| f64::from(x * x)).sum::<f64>().sqrt(),
        p => v
            .iter()
            .map(|&x| f64::from(x.abs()).powi(p))
            .sum::<f64>()
            .powf(1.0 / f64::from(p)),
    };
    let scale = if sum > 0.0 { (1.0 / sum) as f32 } else { 0.0 };
    v.iter_mut().for_each(|x| *x *= scale);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms() {
        let mut v = [3.0, -4.0];
        normalize(&mut v, 2);
        assert_eq!(v, [0.6, -0.8]);
        let mut v = [3.0, -4.0];
        normalize(&mut v, 1);
        assert!((v[0] - 3.0 / 7.0).abs() < 1e-7 && (v[1] + 4.0 / 7.0).abs() < 1e-7);
        let mut v = [1.0, -0.5];
        normalize(&mut v, 0);
        assert_eq!(v, [32760.0, -16380.0]);
        let mut v = [1.5, 2.0];
        normalize(&mut v, -1);
        assert_eq!(v, [1.5, 2.0]);
        let mut zero = [0.0, 0.0];
        normalize(&mut zero, 2);
        assert_eq!(zero, [0.0, 0.0]);
        assert_eq!(Pooling::parse("mean"), Some(Pooling::Mean));
        assert_eq!(Pooling::from_gguf(3), Some(Pooling::Last));
        assert_eq!(Pooling::from_gguf(4), Some(Pooling::Rank));
        assert_eq!(Pooling::from_gguf(5), None);
    }
}
