//! The KV cache on the device and attention over it.

use std::ops::Range;

use candle_core::{DType, Tensor};
use realm_core::backend::{
    AttentionOps, AttentionParams, BackendError, BackendResult, KvCacheConfig, KvDtype, KvSpan,
};

use crate::{dev_err, product, GpuBackend, GpuBuffer, GpuWorkspace};

/// Keys and values of every layer of one sequence, on the device: per
/// layer one `[n_kv_heads, max_seq_len, head_dim]` tensor of keys and one
/// of values, in the cache's element type, written in place.
pub struct GpuKvCache {
    cfg: KvCacheConfig,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl std::fmt::Debug for GpuKvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuKvCache")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl GpuKvCache {
    /// The configuration the cache was made with.
    pub fn config(&self) -> &KvCacheConfig {
        &self.cfg
    }
}

fn dtype_of(d: KvDtype) -> DType {
    match d {
        KvDtype::F32 => DType::F32,
        KvDtype::F16 => DType::F16,
    }
}

fn check_layer(op: &'static str, cfg: &KvCacheConfig, layer: usize) -> BackendResult<()> {
    if layer >= cfg.n_layers {
        return Err(BackendError::OutOfRange {
            op,
            what: "layer",
            index: layer,
            limit: cfg.n_layers,
        });
    }
    Ok(())
}

fn check_end(op: &'static str, cfg: &KvCacheConfig, start: usize, n: usize) -> BackendResult<()> {
    let end = start.saturating_add(n);
    if end > cfg.max_seq_len {
        return Err(BackendError::OutOfRange {
            op,
            what: "end position",
            index: end,
            limit: cfg.max_seq_len + 1,
        });
    }
    Ok(())
}

/// The additive mask `[n, len]` of `n` queries at positions `start..` over
/// keys at positions `lo..lo + len`, or `None` when every query sees every
/// key.
fn mask(start: usize, n: usize, lo: usize, len: usize, window: Option<usize>) -> Option<Vec<f32>> {
    let visible = |p: usize, j: usize| j <= p && window.is_none_or(|w| j + w > p);
    let all = (0..n).all(|t| visible(start + t, lo) && visible(start + t, lo + len - 1));
    if all {
        return None;
    }
    let mut m = Vec::with_capacity(n * len);
    for t in 0..n {
        m.extend((lo..lo + len).map(|j| {
            if visible(start + t, j) {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        }));
    }
    Some(m)
}

impl AttentionOps for GpuBackend {
    type KvCache = GpuKvCache;

    fn kv_cache(&self, cfg: &KvCacheConfig) -> BackendResult<GpuKvCache> {
        const OP: &str = "kv_cache";
        if cfg.n_layers == 0 || cfg.n_kv_heads == 0 || cfg.head_dim == 0 || cfg.max_seq_len == 0 {
            return Err(BackendError::InvalidParameter {
                op: OP,
                what: "every dimension of a KV cache must be positive",
            });
        }
        let per_layer = product(OP, "cache size overflows", cfg.n_kv_heads, cfg.head_dim)
            .and_then(|v| product(OP, "cache size overflows", v, cfg.max_seq_len))?;
        product(OP, "cache size overflows", per_layer, 2 * cfg.n_layers)?;
        let shape = (cfg.n_kv_heads, cfg.max_seq_len, cfg.head_dim);
        let dt = dtype_of(cfg.dtype);
        let mut k = Vec::with_capacity(cfg.n_layers);
        let mut v = Vec::with_capacity(cfg.n_layers);
        for _ in 0..cfg.n_layers {
            k.push(Tensor::zeros(shape, dt, &self.device).map_err(dev_err(OP))?);
            v.push(Tensor::zeros(shape, dt, &self.device).map_err(dev_err(OP))?);
        }
        Ok(GpuKvCache { cfg: *cfg, k, v })
    }

    fn kv_write(
        &self,
        ws: &mut GpuWorkspace,
        cache: &mut GpuKvCache,
        at: KvSpan,
        k: &GpuBuffer,
        v: &GpuBuffer,
        rows: Range<usize>,
    ) -> BackendResult<()> {
        const OP: &str = "kv_write";
        let cfg = cache.cfg;
        check_layer(OP, &cfg, at.layer)?;
        let width = cfg.n_kv_heads * cfg.head_dim;
        let n = rows.len();
        let kt = k.rows(OP, "k length", &rows, width)?;
        let vt = v.rows(OP, "v length", &rows, width)?;
        check_end(OP, &cfg, at.start_pos, n)?;
        if n == 0 {
            return Ok(());
        }
        let dt = dtype_of(cfg.dtype);
        // In a static step the positions come from the device: a scatter
        // along the position axis, with every row's index spread over its
        // heads and values.
        let index = match ws.step() {
            Some(st) => {
                st.check_positions(OP, rows.start, at.start_pos..at.start_pos + n)?;
                let index = st
                    .kv_index(rows.start, n, cfg.n_kv_heads, cfg.head_dim)
                    .map_err(dev_err(OP))?;
                Some(index)
            }
            None => None,
        };
        let store = |src: Tensor, dst: &Tensor| -> candle_core::Result<()> {
            // [n, heads * dim] -> [heads, n, dim], the cache's layout.
            let src = src
                .reshape((n, cfg.n_kv_heads, cfg.head_dim))?
                .transpose(0, 1)?
                .to_dtype(dt)?
                .contiguous()?;
            match &index {
                Some(index) => dst.scatter_set(index, &src, 1),
                None => dst.slice_set(&src, 1, at.start_pos),
            }
        };
        store(kt, &cache.k[at.layer]).map_err(dev_err(OP))?;
        store(vt, &cache.v[at.layer]).map_err(dev_err(OP))
    }

    fn attention(
        &self,
        ws: &mut GpuWorkspace,
        cache: &GpuKvCache,
        at: KvSpan,
        q: &GpuBuffer,
        rows: Range<usize>,
        p: &AttentionParams,
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        const OP: &str = "attention";
        let cfg = &cache.cfg;
        check_layer(OP, cfg, at.layer)?;
        if p.n_kv_heads != cfg.n_kv_heads
            || p.head_dim != cfg.head_dim
            || p.n_heads == 0
            || !p.n_heads.is_multiple_of(p.n_kv_heads)
        {
            return Err(BackendError::InvalidParameter {
                op: OP,
                what: "heads and head_dim must match the cache, n_heads a multiple of n_kv_heads",
            });
        }
        if p.sliding_window == Some(0) || !p.scale.is_finite() {
            return Err(BackendError::InvalidParameter {
                op: OP,
                what: "sliding window of 0 or non-finite scale",
            });
        }
        if p.softcap.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return Err(BackendError::InvalidParameter {
                op: OP,
                what: "soft-cap must be positive and finite",
            });
        }
        let width = p.n_heads * p.head_dim;
        let n = rows.len();
        let qt = q.rows(OP, "q length", &rows, width)?;
        let out_end = product(OP, "row offset overflows", rows.end, width)?;
        out.check_room(OP, "out length", out_end)?;
        check_end(OP, cfg, at.start_pos, n)?;
        if n == 0 {
            return Ok(());
        }
        let (kvh, hd, group) = (p.n_kv_heads, p.head_dim, p.n_heads / p.n_kv_heads);
        let (lo, len, m) = match ws.step() {
            // A static step spans the same keys every step, masked on the
            // device by the step's positions.
            Some(st) => {
                let len = st.kv_len().min(cfg.max_seq_len);
                st.check_positions(OP, rows.start, at.start_pos..at.start_pos + n)?;
                if at.start_pos + n > len {
                    return Err(BackendError::InvalidParameter {
                        op: OP,
                        what: "positions past the static step's span",
                    });
                }
                let m = (|| {
                    st.mask(p.sliding_window)?
                        .narrow(0, rows.start, n)?
                        .narrow(1, 0, len)?
                        .contiguous()?
                        .reshape((1, n, 1, len))
                })()
                .map_err(dev_err(OP))?;
                (0, len, Some(m))
            }
            None => {
                // Keys the first query can see onwards (the window only narrows).
                let lo = p
                    .sliding_window
                    .map_or(0, |w| (at.start_pos + 1).saturating_sub(w));
                let len = at.start_pos + n - lo;
                let m = mask(at.start_pos, n, lo, len, p.sliding_window)
                    .map(|m| Tensor::from_vec(m, (1, n, 1, len), &self.device))
                    .transpose()
                    .map_err(dev_err(OP))?;
                (lo, len, m)
            }
        };
        let y = (|| -> candle_core::Result<Tensor> {
            // The products read an f32 cache in place: each head's keys are
            // contiguous rows, and heads are a strided batch.
            let keys = cache.k[at.layer].narrow(1, lo, len)?.to_dtype(DType::F32)?;
            let values = cache.v[at.layer].narrow(1, lo, len)?.to_dtype(DType::F32)?;
            // Queries grouped by KV head: [kvh, n * group, hd], rows (token, head in group).
            let qg = qt
                .reshape((n, kvh, group * hd))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((kvh, n * group, hd))?;
            let mut scores = qg.matmul(&keys.t()?)?.affine(f64::from(p.scale), 0.0)?;
            if let Some(c) = p.softcap {
                let c = f64::from(c);
                scores = scores.affine(1.0 / c, 0.0)?.tanh()?.affine(c, 0.0)?;
            }
            if let Some(m) = &m {
                scores = scores
                    .reshape((kvh, n, group, len))?
                    .broadcast_add(m)?
                    .reshape((kvh, n * group, len))?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            // [kvh, n * group, hd] -> [n, kvh * group * hd].
            probs
                .matmul(&values)?
                .reshape((kvh, n, group * hd))?
                .transpose(0, 1)?
                .contiguous()
        })()
        .map_err(dev_err(OP))?;
        out.set_rows(OP, "out length", &rows, width, y)
    }
}
