//! Attention over the KV caches on the device.

use std::ops::Range;

use candle_core::{DType, Tensor};
use realm_core::backend::{
    check_kv_layer, check_kv_read, check_sinks, chunk_start, rope_attend_in_turn, AttentionOps,
    AttentionParams, BackendError, BackendResult, KvCacheConfig, KvSpan, NormOps, QkNorm, RopeMode,
    RopeOps, RopeParams,
};

use crate::fused::q8::Blocks;
use crate::fused::{FusedAttention, QueryPositions, Rope, RopeStore, MAX_HEAD_DIM};
#[cfg(feature = "cuda")]
use crate::fused::{SlotTable, SLOT_ROWS};
use crate::kv::{dtype_of, GpuKvCache};
use crate::ops::{check_rope, split_blocks};
use crate::scratch::scratch_err;
use crate::{dev_err, product, GpuBackend, GpuBuffer, GpuWorkspace};

/// The most attention masks a workspace keeps (a chunk's, per window).
const MASKS: usize = 4;

/// Checks attention parameters against a cache.
fn check_params(
    op: &'static str,
    cfg: &KvCacheConfig,
    layer: usize,
    p: &AttentionParams,
) -> BackendResult<()> {
    check_kv_layer(op, cfg, layer)?;
    let shape = cfg.shape(layer);
    if p.n_kv_heads != shape.n_kv_heads
        || p.head_dim != shape.head_dim
        || p.n_heads == 0
        || !p.n_heads.is_multiple_of(p.n_kv_heads)
    {
        return Err(BackendError::InvalidParameter {
            op,
            what: "heads and head_dim must match the cache, n_heads a multiple of n_kv_heads",
        });
    }
    if p.sliding_window == Some(0) || !p.scale.is_finite() {
        return Err(BackendError::InvalidParameter {
            op,
            what: "sliding window of 0 or non-finite scale",
        });
    }
    if p.softcap.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
        return Err(BackendError::InvalidParameter {
            op,
            what: "soft-cap must be positive and finite",
        });
    }
    check_sinks(op, p)?;
    if p.chunk == Some(0) {
        return Err(BackendError::InvalidParameter {
            op,
            what: "chunk of zero",
        });
    }
    if p.bidirectional && p.chunk.is_some() {
        return Err(BackendError::InvalidParameter {
            op,
            what: "bidirectional attention with chunks",
        });
    }
    Ok(())
}

/// What the scores get per head beside the mask, each shaped to broadcast
/// over them: ALiBi's bias (the heads' slopes times minus each key's
/// distance from its query, `-|j - pos|`, on either side) and
/// the attention sinks, one more logit a head that no value goes with.
#[derive(Default)]
struct HeadTerms {
    /// The slopes and the distances.
    alibi: Option<(Tensor, Tensor)>,
    sinks: Option<Tensor>,
}

impl HeadTerms {
    /// The terms of `p` (none where it has neither): `heads` is the shape
    /// of the scores' head axes with ones elsewhere (`[kv heads, 1, group,
    /// 1]` or `[1, kv heads, group, 1]`); `distances` makes the distances
    /// `-|j - pos|` when ALiBi needs them.
    fn of(
        op: &'static str,
        ws: &mut GpuWorkspace,
        device: &candle_core::Device,
        p: &AttentionParams,
        heads: &[usize],
        distances: impl FnOnce(&mut GpuWorkspace) -> candle_core::Result<Tensor>,
    ) -> BackendResult<Self> {
        let mut shaped = |values: Option<&[f32]>| -> BackendResult<Option<Tensor>> {
            values
                .map(|v| {
                    ws.head_values(device, v)?
                        .reshape(heads)
                        .map_err(dev_err(op))
                })
                .transpose()
        };
        let sinks = shaped(p.sinks)?;
        let slopes = shaped(p.alibi)?;
        let alibi = match slopes {
            Some(s) => Some((s, distances(ws).map_err(dev_err(op))?)),
            None => None,
        };
        Ok(Self { alibi, sinks })
    }
}

/// Minus the distances of key positions `lo..lo + len` from the query
/// positions `pos` (`[n]`, any integer or float type), `[n, len]` f32:
/// ALiBi's `-|j - pos|`.
fn distances(pos: &Tensor, lo: usize, len: usize) -> candle_core::Result<Tensor> {
    let n = pos.elem_count();
    let keys = Tensor::arange(lo as f32, (lo + len) as f32, pos.device())?.reshape((1, len))?;
    keys.broadcast_sub(&pos.to_dtype(DType::F32)?.reshape((n, 1))?)?
        .abs()?
        .neg()
}

/// Scores scaled, soft-capped, masked and biased, then softmax (with the
/// sinks, if any): `scores` is `q . k` of any shape whose last axis is
/// keys; `mask` and `terms` broadcast to it.
fn probabilities(
    scores: Tensor,
    p: &AttentionParams,
    mask: Option<&Tensor>,
    terms: &HeadTerms,
) -> candle_core::Result<Tensor> {
    let mut scores = scores.affine(f64::from(p.scale), 0.0)?;
    if let Some(c) = p.softcap {
        let c = f64::from(c);
        scores = scores.affine(1.0 / c, 0.0)?.tanh()?.affine(c, 0.0)?;
    }
    if let Some(m) = mask {
        scores = scores.broadcast_add(m)?;
    }
    if let Some((slopes, d)) = &terms.alibi {
        scores = scores.broadcast_add(&d.broadcast_mul(slopes)?)?;
    }
    let Some(sinks) = &terms.sinks else {
        return candle_nn::ops::softmax_last_dim(&scores);
    };
    // Each softmax over the keys and its head's sink, whose weight is
    // dropped.
    let mut dims = scores.dims().to_vec();
    let last = dims.len() - 1;
    let len = dims[last];
    dims[last] = 1;
    let sink = sinks.broadcast_as(dims)?.contiguous()?;
    let all = Tensor::cat(&[&scores, &sink], last)?;
    candle_nn::ops::softmax_last_dim(&all)?
        .narrow(last, 0, len)?
        .contiguous()
}

/// Keys or values `t` with every position that `keep` (1 where some query
/// sees the position, else 0; broadcasting to `t`) hides set to zero. A
/// position no query sees may hold anything a slot's earlier session left
/// there, NaN or infinity included, and a softmax weight of 0 times NaN is
/// NaN: masking the scores alone does not hide it.
fn zero_hidden(t: &Tensor, keep: &Tensor) -> candle_core::Result<Tensor> {
    let keep = keep.broadcast_as(t.shape())?;
    let zero = Tensor::zeros((), t.dtype(), t.device())?.broadcast_as(t.shape())?;
    keep.where_cond(t, &zero)
}

/// [`zero_hidden`]'s `keep` from an additive mask (0 or minus infinity),
/// made on the device: `exp` is 1 or 0.
fn kept(mask: &Tensor) -> candle_core::Result<Tensor> {
    mask.exp()?.to_dtype(DType::U8)
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
fn mask(start: usize, n: usize, lo: usize, len: usize, p: &AttentionParams) -> Option<Vec<f32>> {
    let all = (0..n).all(|t| visible(start + t, lo, p) && visible(start + t, lo + len - 1, p));
    if all {
        return None;
    }
    let mut m = Vec::with_capacity(n * len);
    for t in 0..n {
        m.extend((lo..lo + len).map(|j| mask_value(start + t, j, p)));
    }
    Some(m)
}

/// Whether a causal query at position `pos` sees the key at position `j`:
/// one of its own or an earlier position, and of its window and chunk
/// where there are.
fn visible(pos: usize, j: usize, p: &AttentionParams) -> bool {
    j <= pos && j >= p.first_key(pos)
}

/// The additive mask of that pair: 0 or minus infinity.
fn mask_value(pos: usize, j: usize, p: &AttentionParams) -> f32 {
    if visible(pos, j, p) {
        0.0
    } else {
        f32::NEG_INFINITY
    }
}

impl AttentionOps for GpuBackend {
    type KvCache = GpuKvCache;

    fn supports_sinks(&self) -> bool {
        true
    }

    fn supports_alibi(&self) -> bool {
        true
    }

    fn supports_chunks(&self) -> bool {
        true
    }

    fn kv_cache(&self, cfg: &KvCacheConfig) -> BackendResult<GpuKvCache> {
        self.kv_pool.cache(&self.device, cfg)
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
        let cfg = cache.config().clone();
        check_kv_layer(OP, &cfg, at.layer)?;
        let shape = cfg.shape(at.layer);
        let width = shape.width();
        let n = rows.len();
        let kt = k.rows(OP, "k length", &rows, width)?;
        let vt = v.rows(OP, "v length", &rows, width)?;
        check_end(OP, &cfg, at.start_pos, n)?;
        if n == 0 {
            return Ok(());
        }
        let dt = dtype_of(cfg.dtype)?;
        // In a static step the positions come from the device: a scatter
        // along the position axis, with every row's index spread over its
        // heads and values.
        let index = match ws.step() {
            Some(st) => {
                st.check_positions(OP, rows.start, at.start_pos..at.start_pos + n)?;
                let index = st
                    .scatter_index(rows.start, n, shape.n_kv_heads, shape.head_dim, false)
                    .map_err(dev_err(OP))?;
                Some(index)
            }
            None => None,
        };
        let store = |src: Tensor, dst: &Tensor| -> candle_core::Result<()> {
            // [n, heads * dim] -> [heads, n, dim], the cache's layout.
            let src = src
                .reshape((n, shape.n_kv_heads, shape.head_dim))?
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

    fn kv_read(
        &self,
        cache: &GpuKvCache,
        layer: usize,
        positions: Range<usize>,
        k: &mut [f32],
        v: &mut [f32],
    ) -> BackendResult<()> {
        const OP: &str = "kv_read";
        let cfg = cache.config();
        check_kv_read(OP, cfg, layer, &positions, k.len(), v.len())?;
        let n = positions.len();
        if n == 0 {
            return Ok(());
        }
        let read = |src: &Tensor, out: &mut [f32]| -> candle_core::Result<()> {
            // [heads, positions, dim] -> [n, heads * dim], kv_write's rows.
            let rows = src
                .narrow(1, positions.start, n)?
                .transpose(0, 1)?
                .to_dtype(DType::F32)?
                .contiguous()?
                .flatten_all()?
                .to_vec1::<f32>()?;
            out.copy_from_slice(&rows);
            Ok(())
        };
        read(&cache.k[layer], k).map_err(dev_err(OP))?;
        read(&cache.v[layer], v).map_err(dev_err(OP))
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
        let cfg = cache.config();
        check_params(OP, cfg, at.layer, p)?;
        let width = p.n_heads * p.head_dim;
        let n = rows.len();
        let qt = q.rows(OP, "q length", &rows, width)?;
        let out_end = product(OP, "row offset overflows", rows.end, width)?;
        out.check_room(OP, "out length", out_end)?;
        check_end(OP, cfg, at.start_pos, n)?;
        if n == 0 {
            return Ok(());
        }
        if self.fuses_chunk(p, n) {
            let positions = match ws.step() {
                Some(st) => {
                    st.check_positions(OP, rows.start, at.start_pos..at.start_pos + n)?;
                    QueryPositions::Device(st.positions(rows.start, n).map_err(dev_err(OP))?)
                }
                None => QueryPositions::From(at.start_pos),
            };
            let mut op = fused_attention(p, positions);
            // Blocks only for a whole result (rows from the first).
            if rows.start == 0 {
                op.blocks = self.attention_blocks(n, p);
            }
            op.tiled = self.tiled;
            op.keys = match ws.step() {
                Some(st) => st.kv_len().min(cfg.max_seq_len),
                None => at.start_pos + n,
            };
            op.fill = self.split_fill();
            let y = qt
                .reshape((n, width))
                .and_then(|q| q.apply_op3_no_bwd(&cache.k[at.layer], &cache.v[at.layer], &op))
                .map_err(dev_err(OP))?;
            if op.blocks != Blocks::No {
                let (y, b) = split_blocks(OP, y, (n, width), op.blocks)?;
                return out.set_prefix_with_blocks(OP, "out length", n * width, y, b);
            }
            return out.set_rows(OP, "out length", &rows, width, y);
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
                    st.mask(p.sliding_window, p.chunk)?
                        .narrow(0, rows.start, n)?
                        .narrow(1, 0, len)?
                        .contiguous()?
                        .reshape((1, n, 1, len))
                })()
                .map_err(dev_err(OP))?;
                (0, len, Some(m))
            }
            // Every query sees every key up to the call's last, or those
            // of its symmetric window.
            None if p.bidirectional => {
                let len = at.start_pos + n;
                let m = p
                    .sliding_window
                    .map(|w| {
                        let half = w / 2;
                        let m: Vec<f32> = (0..n)
                            .flat_map(|t| {
                                let pos = at.start_pos + t;
                                (0..len).map(move |j| match pos.abs_diff(j) <= half {
                                    true => 0.0,
                                    false => f32::NEG_INFINITY,
                                })
                            })
                            .collect();
                        Tensor::from_vec(m, (1, n, 1, len), &self.device)
                    })
                    .transpose()
                    .map_err(dev_err(OP))?;
                (0, len, m)
            }
            None => {
                // Keys the first query can see onwards (the window only narrows).
                let lo = p.first_key(at.start_pos);
                let len = at.start_pos + n - lo;
                let key = (at.start_pos, n, p.sliding_window, p.chunk);
                let m = match ws.masks.iter().find(|(k, _)| *k == key) {
                    Some((_, m)) => m.clone(),
                    None => {
                        // Every layer of a chunk has the same mask (per
                        // window): made once, kept for the next layers.
                        let m = mask(at.start_pos, n, lo, len, p)
                            .map(|m| Tensor::from_vec(m, (1, n, 1, len), &self.device))
                            .transpose()
                            .map_err(dev_err(OP))?;
                        if ws.masks.len() == MASKS {
                            ws.masks.remove(0);
                        }
                        ws.masks.push((key, m.clone()));
                        m
                    }
                };
                (lo, len, m)
            }
        };
        let (start, first) = (at.start_pos, rows.start);
        let terms = HeadTerms::of(OP, ws, &self.device, p, &[kvh, 1, group, 1], |ws| {
            let d = match ws.step() {
                Some(st) => st.distances()?.narrow(0, first, n)?.narrow(1, 0, len)?,
                None => {
                    let pos = Tensor::arange(start as u32, (start + n) as u32, &self.device)?;
                    distances(&pos, lo, len)?
                }
            };
            d.reshape((1, n, 1, len))
        })?;
        let recording = ws.recording();
        // A static step spans positions past its query, which may hold a
        // reused slot's leftovers; otherwise every position from lo is
        // this sequence's and some query of the chunk sees it.
        let leftovers = ws.step().is_some();
        let attend = || -> candle_core::Result<Tensor> {
            // The products read an f32 cache in place: each head's keys are
            // contiguous rows, and heads are a strided batch.
            let mut keys = cache.k[at.layer].narrow(1, lo, len)?.to_dtype(DType::F32)?;
            let mut values = cache.v[at.layer].narrow(1, lo, len)?.to_dtype(DType::F32)?;
            if let Some(m) = m.as_ref().filter(|_| leftovers) {
                // Positions no query sees.
                let keep = kept(&m.max_keepdim(1)?)?.reshape((1, len, 1))?;
                keys = zero_hidden(&keys, &keep)?;
                values = zero_hidden(&values, &keep)?;
            }
            // Queries grouped by KV head: [kvh, n * group, hd], rows (token, head in group).
            let qg = qt
                .reshape((n, kvh, group * hd))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((kvh, n * group, hd))?;
            // [kvh, n, group, len] scores: the mask broadcasts over heads.
            let scores = qg.matmul(&keys.t()?)?.reshape((kvh, n, group, len))?;
            let probs =
                probabilities(scores, p, m.as_ref(), &terms)?.reshape((kvh, n * group, len))?;
            // [kvh, n * group, hd] -> [n, kvh * group * hd].
            probs
                .matmul(&values)?
                .reshape((kvh, n, group * hd))?
                .transpose(0, 1)?
                .contiguous()
        };
        // cuBLAS's workspace is shared between threads' streams.
        let y = self
            .scratch
            .shared(&self.device, recording, attend)
            .map_err(scratch_err(OP))?;
        out.set_rows(OP, "out length", &rows, width, y)
    }

    /// Rows whose caches are consecutive slots of one block (sessions made
    /// one after another) store and attend together: a scatter per block
    /// for keys and one for values, and one batched product each for
    /// scores and outputs.
    fn attend_rows(
        &self,
        ws: &mut GpuWorkspace,
        caches: &mut [&mut GpuKvCache],
        layer: usize,
        positions: &[u32],
        kv: (&GpuBuffer, &GpuBuffer),
        q: &GpuBuffer,
        p: &AttentionParams,
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        self.attend_rows_with(ws, caches, layer, positions, kv, q, p, out, None)
    }

    /// With the fused kernels, keys are rotated as they are stored and
    /// queries as they are attended: one kernel stores the keys (rotated)
    /// and values and one attends, per run of consecutive slots (on CUDA,
    /// once for the whole batch, its caches named by a slot table), in
    /// place of two rotations, two scatters and the attention.
    fn rope_attend_rows(
        &self,
        ws: &mut GpuWorkspace,
        caches: &mut [&mut GpuKvCache],
        layer: usize,
        positions: &[u32],
        qkv: (&mut GpuBuffer, &mut GpuBuffer, &GpuBuffer),
        qk_norm: Option<QkNorm<'_, GpuBuffer>>,
        rope: &RopeParams,
        p: &AttentionParams,
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        const OP: &str = "rope_attend_rows";
        let (q, k, v) = qkv;
        if !self.fuses(p) || positions.is_empty() {
            if let Some(n) = &qk_norm {
                let rows = positions.len();
                self.rms_norm_inplace(q, n.q, n.eps, rows * p.n_heads)?;
                self.rms_norm_inplace(k, n.k, n.eps, rows * p.n_kv_heads)?;
            }
            self.rope(ws, q, p.n_heads, p.head_dim, positions, rope)?;
            self.rope(ws, k, p.n_kv_heads, p.head_dim, positions, rope)?;
            return self.attend_rows(ws, caches, layer, positions, (k, v), q, p, out);
        }
        let tables = self.kernel_rope(OP, ws, positions, rope, p, qk_norm.as_ref())?;
        self.attend_rows_with(
            ws,
            caches,
            layer,
            positions,
            (k, v),
            q,
            p,
            out,
            Some(&tables),
        )
    }

    fn rope_attend(
        &self,
        ws: &mut GpuWorkspace,
        cache: &mut GpuKvCache,
        layer: usize,
        positions: &[u32],
        qkv: (&mut GpuBuffer, &mut GpuBuffer, &GpuBuffer),
        qk_norm: Option<QkNorm<'_, GpuBuffer>>,
        rope: &RopeParams,
        p: &AttentionParams,
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        // A static step reads its positions from the device; its ops go in
        // turn (a decode step's single rows take `rope_attend_rows`).
        let n = positions.len();
        if !self.fuses_chunk(p, n) || ws.step().is_some() || n == 0 {
            return rope_attend_in_turn(
                self, ws, cache, layer, positions, qkv, qk_norm, rope, p, out,
            );
        }
        let (q, k, v) = qkv;
        let tables = self.kernel_rope("rope_attend", ws, positions, rope, p, qk_norm.as_ref())?;
        self.rope_attend_fused(ws, cache, layer, positions, (k, v), q, tables, p, out)
    }
}

impl GpuBackend {
    /// [`AttentionOps::rope_attend`] with the fused kernels: one stores the
    /// chunk's keys (normed and rotated) and values in the sequence's slot,
    /// one attends, norming and rotating the queries (the tiled kernel for
    /// a long chunk on CUDA).
    #[allow(clippy::too_many_arguments)]
    fn rope_attend_fused(
        &self,
        ws: &mut GpuWorkspace,
        cache: &GpuKvCache,
        layer: usize,
        positions: &[u32],
        kv: (&GpuBuffer, &GpuBuffer),
        q: &GpuBuffer,
        rope: Rope,
        p: &AttentionParams,
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        const OP: &str = "rope_attend";
        let start = chunk_start(OP, positions)?;
        let n = positions.len();
        let cfg = cache.config().clone();
        check_params(OP, &cfg, layer, p)?;
        check_end(OP, &cfg, start, n)?;
        let width = p.n_heads * p.head_dim;
        let kv_width = p.n_kv_heads * p.head_dim;
        let rows = Rows {
            k: kv.0.row_view(OP, "k length", n, kv_width)?,
            v: kv.1.row_view(OP, "v length", n, kv_width)?,
            q: q.row_view(OP, "q length", n, width)?,
        };
        out.check_room(OP, "out length", product(OP, "rows overflow", n, width)?)?;
        let pos = ws.positions_tensor(&self.device, positions)?;
        let blocks = self.attention_blocks(n, p);
        let (block, slot) = cache.block();
        let y = (|| -> candle_core::Result<Tensor> {
            let store = RopeStore {
                slot0: slot,
                one_slot: true,
                rope,
                values: rows.v.clone(),
                slots: None,
            };
            block.kv[layer].inplace_op3(&rows.k, &pos, &store)?;
            let mut op = fused_attention(p, QueryPositions::From(start));
            op.rope = Some(store.rope);
            op.blocks = blocks;
            op.tiled = self.tiled;
            op.keys = start + n;
            op.fill = self.split_fill();
            rows.q
                .apply_op3_no_bwd(&cache.k[layer], &cache.v[layer], &op)
        })()
        .map_err(dev_err(OP))?;
        let (y, b) = split_blocks(OP, y, (n, width), blocks)?;
        out.set_prefix_with_blocks(OP, "out length", n * width, y, b)
    }

    /// The RoPE tables of `positions` and the heads' norms, for the fused
    /// kernels, which norm and rotate the keys as they store them and the
    /// queries as they attend.
    fn kernel_rope(
        &self,
        op: &'static str,
        ws: &mut GpuWorkspace,
        positions: &[u32],
        rope: &RopeParams,
        p: &AttentionParams,
        qk_norm: Option<&QkNorm<'_, GpuBuffer>>,
    ) -> BackendResult<Rope> {
        check_rope(op, rope, p.head_dim)?;
        let (cos, sin) = ws.rope_tables(&self.device, positions, rope)?;
        let shape = (positions.len(), rope.n_dims / 2);
        (|| -> candle_core::Result<Rope> {
            Ok(Rope {
                cos: cos.reshape(shape)?,
                sin: sin.reshape(shape)?,
                n_dims: rope.n_dims,
                neox: rope.mode == RopeMode::Neox,
                q_norm: qk_norm.map(|n| n.q.all().clone()),
                k_norm: qk_norm.map(|n| n.k.all().clone()),
                norm_eps: qk_norm.map_or(0.0, |n| n.eps),
            })
        })()
        .map_err(dev_err(op))
    }

    /// [`AttentionOps::attend_rows`], with keys and queries still to be
    /// rotated by `rope` (only with the fused kernels).
    #[allow(clippy::too_many_arguments)]
    fn attend_rows_with(
        &self,
        ws: &mut GpuWorkspace,
        caches: &mut [&mut GpuKvCache],
        layer: usize,
        positions: &[u32],
        kv: (&GpuBuffer, &GpuBuffer),
        q: &GpuBuffer,
        p: &AttentionParams,
        out: &mut GpuBuffer,
        rope: Option<&Rope>,
    ) -> BackendResult<()> {
        const OP: &str = "attend_rows";
        let n = caches.len();
        if positions.len() != n {
            return Err(BackendError::InvalidParameter {
                op: OP,
                what: "one position per cache",
            });
        }
        for (c, &pos) in caches.iter().zip(positions) {
            check_params(OP, c.config(), layer, p)?;
            check_end(OP, c.config(), pos as usize, 1)?;
        }
        if n == 0 {
            return Ok(());
        }
        if let Some(st) = ws.step() {
            st.check_positions(OP, 0, positions.iter().map(|&p| p as usize))?;
        }
        let width = p.n_heads * p.head_dim;
        let kv_width = p.n_kv_heads * p.head_dim;
        let rows = Rows {
            k: kv.0.row_view(OP, "k length", n, kv_width)?,
            v: kv.1.row_view(OP, "v length", n, kv_width)?,
            q: q.row_view(OP, "q length", n, width)?,
        };
        out.check_room(OP, "out length", product(OP, "rows overflow", n, width)?)?;
        #[cfg(feature = "cuda")]
        if let Some(rope) = rope {
            let one_config = caches.iter().all(|c| c.storage() == caches[0].storage());
            if self.device.is_cuda() && n <= SLOT_ROWS && one_config {
                return self.attend_by_slots(ws, caches, layer, positions, &rows, p, rope, out);
            }
        }
        // Runs of consecutive slots.
        let mut runs = Vec::new();
        let mut first = 0;
        while first < n {
            let mut end = first + 1;
            while end < n && caches[end - 1].precedes(caches[end]) {
                end += 1;
            }
            runs.push(first..end);
            first = end;
        }
        // One run's result is the whole result, which may carry blocks.
        let blocks = match runs.len() {
            1 => self.attention_blocks(n, p),
            _ => Blocks::No,
        };
        let mut ys = Vec::new();
        for run in runs {
            let at = &positions[run.clone()];
            let y = self.attend_slots(
                ws,
                &*caches[run.start],
                layer,
                run.start,
                at,
                &rows,
                p,
                rope,
                blocks,
            )?;
            ys.push(y);
        }
        if blocks != Blocks::No {
            let y = ys.pop().ok_or(BackendError::InvalidParameter {
                op: OP,
                what: "no rows",
            })?;
            let (y, b) = split_blocks(OP, y, (n, width), blocks)?;
            return out.set_prefix_with_blocks(OP, "out length", n * width, y, b);
        }
        let y = match ys.len() {
            1 => ys.pop().ok_or(BackendError::InvalidParameter {
                op: OP,
                what: "no rows",
            })?,
            _ => Tensor::cat(&ys, 0).map_err(dev_err(OP))?,
        };
        out.set_prefix(OP, "out length", n * width, y)
    }
}

impl GpuBackend {
    /// [`AttentionOps::rope_attend_rows`] on CUDA with the fused kernels,
    /// for rows whose caches (of one storage configuration) may be slots of
    /// any blocks: the caches named by address (a [`SlotTable`]), one
    /// launch stores every row's key and value and one attends every row,
    /// where each run of consecutive slots took two.
    #[cfg(feature = "cuda")]
    #[allow(clippy::too_many_arguments)]
    fn attend_by_slots(
        &self,
        ws: &mut GpuWorkspace,
        caches: &[&mut GpuKvCache],
        layer: usize,
        positions: &[u32],
        rows: &Rows,
        p: &AttentionParams,
        rope: &Rope,
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        const OP: &str = "attend_rows";
        let n = caches.len();
        let width = p.n_heads * p.head_dim;
        // Before any op holds a block (see `SlotTable::of`).
        let table = SlotTable::of(caches.iter().map(|c| (&c.k[layer], &c.v[layer])))
            .map_err(dev_err(OP))?;
        let furthest = positions.iter().max().map_or(0, |&p| p as usize + 1);
        // A static step's rows may be anywhere in its span when replayed.
        let (pos, keys) = match ws.step() {
            Some(st) => {
                let span = st.kv_len().min(caches[0].storage().max_seq_len);
                if furthest > span {
                    return Err(BackendError::InvalidParameter {
                        op: OP,
                        what: "positions past the static step's span",
                    });
                }
                (st.positions(0, n).map_err(dev_err(OP))?, span)
            }
            None => (ws.positions_tensor(&self.device, positions)?, furthest),
        };
        let blocks = self.attention_blocks(n, p);
        let (block, _) = caches[0].block();
        let y = (|| -> candle_core::Result<Tensor> {
            // The keys and values stored by the attention kernel, or by a
            // kernel of their own before it.
            let stores = match self.store_in_attention {
                true => Some((rows.k.clone(), rows.v.clone())),
                false => {
                    let store = RopeStore {
                        slot0: 0,
                        one_slot: false,
                        rope: rope.clone(),
                        values: rows.v.clone(),
                        slots: Some(table),
                    };
                    block.kv[layer].inplace_op3(&rows.k, &pos, &store)?;
                    None
                }
            };
            let mut op = fused_attention(p, QueryPositions::Device(pos));
            op.rope = Some(rope.clone());
            op.stores = stores;
            op.blocks = blocks;
            op.slots = Some(table);
            op.keys = keys;
            op.fill = self.split_fill();
            rows.q
                .apply_op3_no_bwd(&caches[0].k[layer], &caches[0].v[layer], &op)
        })()
        .map_err(dev_err(OP))?;
        let (y, b) = split_blocks(OP, y, (n, width), blocks)?;
        out.set_prefix_with_blocks(OP, "out length", n * width, y, b)
    }
}

/// The most rows of one sequence the fused op takes off CUDA.
const FUSED_CHUNK: usize = 8;

/// The fused kernel's op for `p`, rows at `positions`.
fn fused_attention(p: &AttentionParams, positions: QueryPositions) -> FusedAttention {
    FusedAttention {
        positions,
        n_heads: p.n_heads,
        n_kv_heads: p.n_kv_heads,
        head_dim: p.head_dim,
        scale: p.scale,
        softcap: p.softcap,
        window: p.sliding_window,
        rope: None,
        blocks: Blocks::No,
        slots: None,
        tiled: false,
        keys: 0,
        fill: 0,
        stores: None,
    }
}

/// The rows of a batch's keys, values and queries, `[rows, width]` (each
/// row contiguous; rows maybe strided, as a stacked product's columns).
struct Rows {
    k: Tensor,
    v: Tensor,
    q: Tensor,
}

impl GpuBackend {
    /// Whether attention with `p` runs as the fused kernel: not with
    /// sinks, ALiBi or chunks, which are candle's products alone.
    fn fuses(&self, p: &AttentionParams) -> bool {
        self.fused
            && p.head_dim <= MAX_HEAD_DIM
            && p.sinks.is_none()
            && p.alibi.is_none()
            && p.chunk.is_none()
    }

    /// Whether `n` rows of one sequence are attended by the fused kernels:
    /// on CUDA any chunk (the tiled kernel past 8 rows); elsewhere up to 8
    /// rows, since the fused op's CPU form reads every key once per row
    /// and head on one thread, slower than candle's products for a prompt.
    /// Bidirectional attention is candle's products alone.
    fn fuses_chunk(&self, p: &AttentionParams, n: usize) -> bool {
        self.fuses(p) && !p.bidirectional && (n <= FUSED_CHUNK || self.device.is_cuda())
    }

    /// The blocks the fused kernels write of `rows` rows of attention's
    /// output ([`GpuBackend::blocks_for`]): none where they do not run
    /// (heads past [`MAX_HEAD_DIM`]), or unless heads are whole blocks of
    /// 32 values, since the kernels write each head apart.
    fn attention_blocks(&self, rows: usize, p: &AttentionParams) -> Blocks {
        match self.fuses(p) && p.head_dim.is_multiple_of(crate::fused::q8::BLOCK) {
            true => self.blocks_for(rows, p.n_heads * p.head_dim),
            false => Blocks::No,
        }
    }

    /// [`AttentionOps::attend_rows`] of the rows `first..` whose caches are
    /// the consecutive slots from `cache`'s (one per position); returns
    /// their outputs, `[rows, n_heads * head_dim]`, or with `blocks` (only
    /// with the fused kernel) the same flat and then their blocks.
    #[allow(clippy::too_many_arguments)]
    fn attend_slots(
        &self,
        ws: &mut GpuWorkspace,
        cache: &GpuKvCache,
        layer: usize,
        first: usize,
        positions: &[u32],
        rows: &Rows,
        p: &AttentionParams,
        rope: Option<&Rope>,
        blocks: Blocks,
    ) -> BackendResult<Tensor> {
        const OP: &str = "attend_rows";
        // The run's caches share a block, so its positions, not each
        // cache's own length (checked by the caller).
        let cfg = cache.storage().clone();
        let (block, slot) = cache.block();
        let n = positions.len();
        let (kvh, hd, group) = (p.n_kv_heads, p.head_dim, p.n_heads / p.n_kv_heads);
        let furthest = positions.iter().max().map_or(0, |&p| p as usize + 1);
        let fused = self.fuses(p);
        if blocks != Blocks::No && !fused {
            return Err(BackendError::InvalidParameter {
                op: OP,
                what: "blocks without the fused kernel",
            });
        }
        // Where each row's key goes (unless the fused store puts it), the
        // rows' positions on the device, how many keys are read, and
        // (without the fused kernel) the mask.
        let scatters = rope.is_none();
        let (index, pos, len, mask) = match ws.step() {
            Some(st) => {
                let len = st.kv_len().min(cfg.max_seq_len);
                if furthest > len {
                    return Err(BackendError::InvalidParameter {
                        op: OP,
                        what: "positions past the static step's span",
                    });
                }
                let made = (|| -> candle_core::Result<_> {
                    let index = match scatters {
                        true => Some(st.scatter_index(first, n, kvh, hd, true)?),
                        false => None,
                    };
                    let pos = st.positions(first, n)?;
                    let mask = match fused {
                        true => None,
                        false => Some(
                            st.mask(p.sliding_window, p.chunk)?
                                .narrow(0, first, n)?
                                .narrow(1, 0, len)?
                                .contiguous()?
                                .reshape((n, 1, 1, len))?,
                        ),
                    };
                    Ok((index, pos, mask))
                })()
                .map_err(dev_err(OP))?;
                (made.0, made.1, len, made.2)
            }
            None => {
                let len = furthest;
                let made = (|| -> candle_core::Result<_> {
                    let pos = Tensor::from_slice(positions, n, &self.device)?;
                    let index = match scatters {
                        true => Some(
                            pos.reshape((n, 1, 1, 1))?
                                .broadcast_as((n, kvh, 1, hd))?
                                .contiguous()?,
                        ),
                        false => None,
                    };
                    // A row sees every key when it is at the furthest
                    // position and its window or chunk (if any) starts at 0.
                    let hides = positions.iter().any(|&pos| {
                        let pos = pos as usize;
                        pos + 1 < len || p.first_key(pos) > 0
                    });
                    let mask = match fused || !hides {
                        true => None,
                        false => {
                            let mask: Vec<f32> = positions
                                .iter()
                                .flat_map(|&pos| {
                                    (0..len).map(move |j| mask_value(pos as usize, j, p))
                                })
                                .collect();
                            Some(Tensor::from_vec(mask, (n, 1, 1, len), &self.device)?)
                        }
                    };
                    Ok((index, pos, mask))
                })()
                .map_err(dev_err(OP))?;
                (made.0, made.1, len, made.2)
            }
        };
        let terms = HeadTerms::of(OP, ws, &self.device, p, &[1, kvh, group, 1], |ws| {
            let d = match ws.step() {
                Some(st) => st.distances()?.narrow(0, first, n)?.narrow(1, 0, len)?,
                None => distances(&pos, 0, len)?,
            };
            d.reshape((n, 1, 1, len))
        })?;
        let dt = dtype_of(cfg.dtype)?;
        let recording = ws.recording();
        let attend = || -> candle_core::Result<Tensor> {
            let width = p.n_heads * hd;
            // These rows, `[n, w]` (rows contiguous, maybe strided).
            let row = |t: &Tensor| t.narrow(0, first, n);
            let keys = block.k[layer].narrow(0, slot, n)?;
            let values = block.v[layer].narrow(0, slot, n)?;
            // These rows' RoPE angles.
            let rope = match rope {
                Some(r) => Some(Rope {
                    cos: r.cos.narrow(0, first, n)?,
                    sin: r.sin.narrow(0, first, n)?,
                    ..r.clone()
                }),
                None => None,
            };
            // Keys rotated as they are stored and values with them (f32
            // rows, converted by the kernel), or each scattered as they are.
            let rope = match rope {
                Some(r) => {
                    let store = RopeStore {
                        slot0: slot,
                        one_slot: false,
                        rope: r,
                        values: row(&rows.v)?,
                        slots: None,
                    };
                    let k = row(&rows.k)?;
                    block.kv[layer].inplace_op3(&k, &pos, &store)?;
                    Some(store.rope)
                }
                None => {
                    let Some(index) = &index else {
                        candle_core::bail!("attend_rows: no scatter index");
                    };
                    let k = row(&rows.k)?
                        .reshape((n, kvh, 1, hd))?
                        .to_dtype(dt)?
                        .contiguous()?;
                    keys.scatter_set(index, &k, 2)?;
                    let v = row(&rows.v)?
                        .reshape((n, kvh, 1, hd))?
                        .to_dtype(dt)?
                        .contiguous()?;
                    values.scatter_set(index, &v, 2)?;
                    None
                }
            };
            if fused {
                let mut op = fused_attention(p, QueryPositions::Device(pos));
                op.rope = rope;
                op.blocks = blocks;
                op.keys = len;
                op.fill = self.split_fill();
                let q = row(&rows.q)?;
                return q.apply_op3_no_bwd(&keys, &values, &op);
            }
            // [rows, heads, len, dim], read in place for an f32 cache.
            let mut keys = keys.narrow(2, 0, len)?.to_dtype(DType::F32)?;
            let mut values = values.narrow(2, 0, len)?.to_dtype(DType::F32)?;
            if let Some(m) = &mask {
                // A row's cache past its position (or before its window):
                // a reused slot's leftovers.
                let keep = kept(m)?.reshape((n, 1, len, 1))?;
                keys = zero_hidden(&keys, &keep)?;
                values = zero_hidden(&values, &keep)?;
            }
            // One token a row: a row's heads are [kv head, head in group].
            let qg = row(&rows.q)?.reshape((n, kvh, group, hd))?;
            let scores = qg.matmul(&keys.t()?)?;
            let probs = probabilities(scores, p, mask.as_ref(), &terms)?;
            probs.matmul(&values)?.reshape((n, width))
        };
        match fused {
            true => attend().map_err(dev_err(OP)),
            // cuBLAS's workspace is shared between threads' streams.
            false => self
                .scratch
                .shared(&self.device, recording, attend)
                .map_err(scratch_err(OP)),
        }
    }
}
