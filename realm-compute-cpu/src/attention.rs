//! KV cache and causal attention.
//!
//! The cache is f32, f16 or Q8_0, one region per `[layer][kv_head]`. Values
//! are laid out `[position][head_dim]`; keys in tiles of [`KEY_TILE`] positions,
//! `[tile][head_dim][8]`, so that one vector load holds dimension `d` of 8
//! keys and a score needs no horizontal sum: each (query, key) score is
//! `s = fma(q[d], k[d], s)` over `d` in order, in one lane. Each (token,
//! head) pair is computed by one thread from its query and the cache alone:
//! scores, an exact two-pass softmax, then values weighted in position
//! order, the same arithmetic whether the token comes alone or in a batch.
//!
//! A Q8_0 cache keeps the same layouts in signed bytes, with one f16 scale
//! per 32 dimensions of a position: keys' scales `[tile][block][8]`,
//! values' `[position][block]`. The AVX2 kernels dequantize each row in
//! registers (exactly: an f16 scale times a byte fits an f32) before the
//! FMAs the f32 cache's rows get; the scalar path dequantizes what the
//! call's tokens see, once per call, into the workspace and runs the f32
//! code. Either way attention gives what an f32 cache holding the
//! dequantized values gives, bit for bit.

use half::f16;
use rayon::prelude::*;
use realm_core::backend::{
    check_kv_layer, check_kv_read, check_sinks, AttentionParams, BackendError, BackendResult,
    KvCacheConfig, KvDtype, KvSpan,
};

use realm_core::quant::blocks::QK;
use realm_core::quant::quantize_block_q8_0;

use crate::{CpuBackend, CpuWorkspace, Isa};

/// Keys and values in the cache's element type.
#[derive(Debug, Clone)]
enum Store {
    F32 {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    F16 {
        k: Vec<f16>,
        v: Vec<f16>,
    },
    /// Bytes where the others hold values, and the blocks' scales.
    Q8 {
        k: Vec<i8>,
        v: Vec<i8>,
        ks: Vec<f16>,
        vs: Vec<f16>,
    },
}

/// Keys and values of every layer of one sequence.
#[derive(Debug, Clone)]
pub struct CpuKvCache {
    cfg: KvCacheConfig,
    /// Where each layer's region starts, in values.
    offsets: Vec<usize>,
    store: Store,
}

/// Tokens from which a call reads a Q8_0 cache dequantized once for all
/// of them rather than row by row in registers.
const FLAT_TOKENS: usize = 16;

/// Positions per key tile.
pub(crate) const KEY_TILE: usize = 8;

/// Positions a head's region holds: the context rounded up to whole tiles.
fn seq_cap(cfg: &KvCacheConfig) -> Option<usize> {
    cfg.max_seq_len.checked_next_multiple_of(KEY_TILE)
}

impl CpuKvCache {
    /// The cache's dimensions.
    pub fn config(&self) -> &KvCacheConfig {
        &self.cfg
    }

    fn head_base(&self, layer: usize, head: usize) -> usize {
        let cap = self.cfg.max_seq_len.next_multiple_of(KEY_TILE);
        self.offsets[layer] + head * cap * self.cfg.shape(layer).head_dim
    }

    /// Where a head's region of Q8_0 scales starts.
    fn scale_base(&self, layer: usize, head: usize) -> usize {
        self.head_base(layer, head) / QK
    }
}

/// Offset of the scale of key `pos`, block `b` (of `nb`), in its head's
/// scales.
#[inline]
fn key_scale_at(pos: usize, b: usize, nb: usize) -> usize {
    (pos / KEY_TILE) * KEY_TILE * nb + b * KEY_TILE + pos % KEY_TILE
}

/// Offset of key `pos`, dimension `d`, in its head's region.
#[inline]
fn key_at(pos: usize, d: usize, hd: usize) -> usize {
    (pos / KEY_TILE) * KEY_TILE * hd + d * KEY_TILE + pos % KEY_TILE
}

pub(crate) fn new_cache(cfg: &KvCacheConfig) -> BackendResult<CpuKvCache> {
    const OP: &str = "kv_cache";
    if cfg.n_layers == 0 || cfg.max_seq_len == 0 {
        return Err(BackendError::InvalidParameter {
            op: OP,
            what: "a cache dimension is zero",
        });
    }
    cfg.check_shapes(OP)?;
    let overflow = BackendError::InvalidParameter {
        op: OP,
        what: "cache size overflows",
    };
    let cap = seq_cap(cfg).ok_or(overflow.clone())?;
    // Each layer's region: its heads' keys (or values), one after another.
    let mut offsets = Vec::with_capacity(cfg.n_layers);
    let mut len = 0usize;
    for l in 0..cfg.n_layers {
        offsets.push(len);
        let s = cfg.shape(l);
        len = [s.n_kv_heads, s.head_dim, cap]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| len.checked_add(n))
            .ok_or(overflow.clone())?;
    }
    let store = match cfg.dtype {
        KvDtype::F32 => Store::F32 {
            k: vec![0.0; len],
            v: vec![0.0; len],
        },
        KvDtype::F16 => Store::F16 {
            k: vec![f16::ZERO; len],
            v: vec![f16::ZERO; len],
        },
        KvDtype::Q8_0 if (0..cfg.n_layers).any(|l| !cfg.shape(l).head_dim.is_multiple_of(QK)) => {
            return Err(BackendError::InvalidParameter {
                op: OP,
                what: "a Q8_0 cache needs a head size that is a multiple of 32",
            })
        }
        KvDtype::Q8_0 => Store::Q8 {
            k: vec![0; len],
            v: vec![0; len],
            ks: vec![f16::ZERO; len / QK],
            vs: vec![f16::ZERO; len / QK],
        },
    };
    Ok(CpuKvCache {
        cfg: cfg.clone(),
        offsets,
        store,
    })
}

pub(crate) fn kv_write(
    cache: &mut CpuKvCache,
    layer: usize,
    start_pos: usize,
    k: &[f32],
    v: &[f32],
) -> BackendResult<()> {
    const OP: &str = "kv_write";
    let cfg = &cache.cfg;
    check_kv_layer(OP, cfg, layer)?;
    let (width, hd) = (cfg.shape(layer).width(), cfg.shape(layer).head_dim);
    if !k.len().is_multiple_of(width) {
        return Err(BackendError::Shape {
            op: OP,
            what: "k length (a multiple of n_kv_heads * head_dim)",
            expected: k.len().next_multiple_of(width),
            got: k.len(),
        });
    }
    if v.len() != k.len() {
        return Err(BackendError::Shape {
            op: OP,
            what: "v length",
            expected: k.len(),
            got: v.len(),
        });
    }
    let n = k.len() / width;
    let end = start_pos.saturating_add(n);
    if end > cfg.max_seq_len {
        return Err(BackendError::OutOfRange {
            op: OP,
            what: "end position",
            index: end,
            limit: cfg.max_seq_len + 1,
        });
    }
    for (t, (kt, vt)) in k.chunks_exact(width).zip(v.chunks_exact(width)).enumerate() {
        for (h, (kh, vh)) in kt.chunks_exact(hd).zip(vt.chunks_exact(hd)).enumerate() {
            let base = cache.head_base(layer, h);
            let pos = start_pos + t;
            let at = base + pos * hd;
            match &mut cache.store {
                Store::F32 { k, v } => {
                    for (d, &x) in kh.iter().enumerate() {
                        k[base + key_at(pos, d, hd)] = x;
                    }
                    v[at..at + hd].copy_from_slice(vh);
                }
                Store::F16 { k, v } => {
                    for (d, &x) in kh.iter().enumerate() {
                        k[base + key_at(pos, d, hd)] = f16::from_f32(x);
                    }
                    v[at..at + hd]
                        .iter_mut()
                        .zip(vh)
                        .for_each(|(d, &x)| *d = f16::from_f32(x));
                }
                Store::Q8 { k, v, ks, vs } => {
                    let (sb, nb) = (base / QK, hd / QK);
                    for (b, (kb, vb)) in kh
                        .as_chunks::<QK>()
                        .0
                        .iter()
                        .zip(vh.as_chunks::<QK>().0)
                        .enumerate()
                    {
                        let kq = quantize_block_q8_0(kb);
                        for (i, &q) in kq.qs.iter().enumerate() {
                            k[base + key_at(pos, b * QK + i, hd)] = q;
                        }
                        ks[sb + key_scale_at(pos, b, nb)] = kq.d;
                        let vq = quantize_block_q8_0(vb);
                        v[at + b * QK..][..QK].copy_from_slice(&vq.qs);
                        vs[sb + pos * nb + b] = vq.d;
                    }
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn kv_read(
    cache: &CpuKvCache,
    layer: usize,
    positions: std::ops::Range<usize>,
    k: &mut [f32],
    v: &mut [f32],
) -> BackendResult<()> {
    let cfg = &cache.cfg;
    let width = check_kv_read("kv_read", cfg, layer, &positions, k.len(), v.len())?;
    let shape = cfg.shape(layer);
    let hd = shape.head_dim;
    for (t, pos) in positions.enumerate() {
        for h in 0..shape.n_kv_heads {
            let base = cache.head_base(layer, h);
            let (kh, vh) = (
                &mut k[t * width + h * hd..][..hd],
                &mut v[t * width + h * hd..][..hd],
            );
            let at = base + pos * hd;
            match &cache.store {
                Store::F32 { k, v } => {
                    kh.iter_mut()
                        .enumerate()
                        .for_each(|(d, x)| *x = k[base + key_at(pos, d, hd)]);
                    vh.copy_from_slice(&v[at..at + hd]);
                }
                Store::F16 { k, v } => {
                    kh.iter_mut()
                        .enumerate()
                        .for_each(|(d, x)| *x = k[base + key_at(pos, d, hd)].to_f32());
                    vh.iter_mut()
                        .zip(&v[at..at + hd])
                        .for_each(|(x, &y)| *x = y.to_f32());
                }
                Store::Q8 { k, v, ks, vs } => {
                    let (sb, nb) = (base / QK, hd / QK);
                    for (d, x) in kh.iter_mut().enumerate() {
                        let scale = ks[sb + key_scale_at(pos, d / QK, nb)].to_f32();
                        *x = scale * f32::from(k[base + key_at(pos, d, hd)]);
                    }
                    for (d, x) in vh.iter_mut().enumerate() {
                        *x = vs[sb + pos * nb + d / QK].to_f32() * f32::from(v[at + d]);
                    }
                }
            }
        }
    }
    Ok(())
}

fn check_params(
    cache: &CpuKvCache,
    layer: usize,
    start_pos: usize,
    q: usize,
    out: usize,
    p: &AttentionParams,
) -> BackendResult<usize> {
    const OP: &str = "attention";
    let cfg = &cache.cfg;
    if layer >= cfg.n_layers {
        return Err(BackendError::OutOfRange {
            op: OP,
            what: "layer",
            index: layer,
            limit: cfg.n_layers,
        });
    }
    let shape = cfg.shape(layer);
    if p.head_dim != shape.head_dim {
        return Err(BackendError::Shape {
            op: OP,
            what: "head_dim",
            expected: shape.head_dim,
            got: p.head_dim,
        });
    }
    if p.n_kv_heads != shape.n_kv_heads {
        return Err(BackendError::Shape {
            op: OP,
            what: "n_kv_heads",
            expected: shape.n_kv_heads,
            got: p.n_kv_heads,
        });
    }
    if p.n_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) {
        return Err(BackendError::InvalidParameter {
            op: OP,
            what: "n_heads is not a positive multiple of n_kv_heads",
        });
    }
    check_sinks(OP, p)?;
    if p.sliding_window == Some(0) || p.chunk == Some(0) {
        return Err(BackendError::InvalidParameter {
            op: OP,
            what: "sliding window or chunk of zero",
        });
    }
    if p.softcap.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
        return Err(BackendError::InvalidParameter {
            op: OP,
            what: "soft-cap must be positive and finite",
        });
    }
    if p.bidirectional && p.chunk.is_some() {
        return Err(BackendError::InvalidParameter {
            op: OP,
            what: "bidirectional attention with chunks",
        });
    }
    let width = p.n_heads * p.head_dim;
    if !q.is_multiple_of(width) {
        return Err(BackendError::Shape {
            op: OP,
            what: "q length (a multiple of n_heads * head_dim)",
            expected: q.next_multiple_of(width),
            got: q,
        });
    }
    if out != q {
        return Err(BackendError::Shape {
            op: OP,
            what: "out length",
            expected: q,
            got: out,
        });
    }
    let n = q / width;
    let end = start_pos.saturating_add(n);
    if end > cfg.max_seq_len {
        return Err(BackendError::OutOfRange {
            op: OP,
            what: "end position",
            index: end,
            limit: cfg.max_seq_len + 1,
        });
    }
    Ok(n)
}

/// Where attention reads keys and values: the cache, or (for a Q8_0
/// cache) its visible part dequantized, per head `kspan` values of key
/// tiles from tile `t0` and `vspan` values from position `p0`.
enum Source<'a> {
    Cache(&'a CpuKvCache),
    Flat {
        k: &'a [f32],
        v: &'a [f32],
        t0: usize,
        p0: usize,
        kspan: usize,
        vspan: usize,
    },
}

/// Dequantizes the key tiles from `t0` and the values from position `p0`
/// up to position `end` of every head of `layer` of a Q8_0 cache into
/// `buf`, in the f32 cache's layouts: the [`Source::Flat`] over them.
fn dequantize_layer<'b>(
    cache: &CpuKvCache,
    layer: usize,
    p0: usize,
    end: usize,
    buf: &'b mut Vec<f32>,
) -> Source<'b> {
    let shape = cache.cfg.shape(layer);
    let hd = shape.head_dim;
    let nb = hd / QK;
    let t0 = p0 / KEY_TILE;
    let tile = KEY_TILE * hd;
    let kspan = (end.div_ceil(KEY_TILE) - t0) * tile;
    let vspan = (end - p0) * hd;
    buf.clear();
    buf.resize(shape.n_kv_heads * (kspan + vspan), 0.0);
    let (kbuf, vbuf) = buf.split_at_mut(shape.n_kv_heads * kspan);
    if let Store::Q8 { k, v, ks, vs } = &cache.store {
        for h in 0..shape.n_kv_heads {
            let base = cache.head_base(layer, h);
            let sb = cache.scale_base(layer, h);
            let kh = &mut kbuf[h * kspan..][..kspan];
            for (t, kt) in (t0..).zip(kh.chunks_exact_mut(tile)) {
                let bytes = &k[base + t * tile..][..tile];
                let scales = &ks[sb + t * KEY_TILE * nb..][..KEY_TILE * nb];
                // Each block's 32 dimensions of the tile's 8 keys.
                for ((out, q), s) in kt
                    .chunks_exact_mut(QK * KEY_TILE)
                    .zip(bytes.chunks_exact(QK * KEY_TILE))
                    .zip(scales.chunks_exact(KEY_TILE))
                {
                    let s: [f32; KEY_TILE] = std::array::from_fn(|i| s[i].to_f32());
                    for (out, q) in out
                        .as_chunks_mut::<KEY_TILE>()
                        .0
                        .iter_mut()
                        .zip(q.as_chunks::<KEY_TILE>().0)
                    {
                        for i in 0..KEY_TILE {
                            out[i] = s[i] * f32::from(q[i]);
                        }
                    }
                }
            }
            let vh = &mut vbuf[h * vspan..][..vspan];
            for (p, vp) in (p0..end).zip(vh.chunks_exact_mut(hd)) {
                let bytes = &v[base + p * hd..][..hd];
                let scales = &vs[sb + p * nb..][..nb];
                for ((o, q), &s) in vp
                    .chunks_exact_mut(QK)
                    .zip(bytes.chunks_exact(QK))
                    .zip(scales)
                {
                    let s = s.to_f32();
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = s * f32::from(q);
                    }
                }
            }
        }
    }
    Source::Flat {
        k: kbuf,
        v: vbuf,
        t0,
        p0,
        kspan,
        vspan,
    }
}

/// Attention for `q.len() / head_dim` consecutive query heads of one token
/// at position `at` that share the key/value head `kv_head`, over the
/// keys at positions `lo..=pos` ([`visible_keys`]; `pos` is `at` but in an
/// encoder's attention), with their sinks if they have them;
/// `scores` holds at least that many times [`scores_per_head`] values.
#[allow(clippy::too_many_arguments)]
fn group_attention(
    isa: Isa,
    src: &Source<'_>,
    layer: usize,
    kv_head: usize,
    (lo, pos, at): (usize, usize, usize),
    (q, sinks, slopes): (&[f32], Option<&[f32]>, Option<&[f32]>),
    p: &AttentionParams,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = p.head_dim;
    let score = Scoring {
        scale: p.scale,
        softcap: p.softcap,
        alibi: slopes.map(|s| (s, at - lo)),
    };
    // The key tiles that hold positions `lo..=pos`, and the values.
    let (t_lo, t_hi) = (lo / KEY_TILE, (pos + 1).div_ceil(KEY_TILE));
    let skip = lo - t_lo * KEY_TILE;
    match *src {
        Source::Cache(cache) => {
            let base = cache.head_base(layer, kv_head);
            let keys = base + t_lo * KEY_TILE * hd..base + t_hi * KEY_TILE * hd;
            let values = base + lo * hd..base + (pos + 1) * hd;
            match &cache.store {
                Store::F32 { k, v } => attend(
                    isa,
                    &k[keys],
                    skip,
                    &v[values],
                    (q, sinks),
                    (hd, score),
                    scores,
                    out,
                ),
                Store::F16 { k, v } => attend(
                    isa,
                    &k[keys],
                    skip,
                    &v[values],
                    (q, sinks),
                    (hd, score),
                    scores,
                    out,
                ),
                // Dequantized in registers (AVX2; other CPUs read a Q8_0
                // cache as its dequantized `Flat` source).
                #[cfg(target_arch = "x86_64")]
                Store::Q8 { k, v, ks, vs } => {
                    let sb = cache.scale_base(layer, kv_head);
                    let nb = hd / QK;
                    let rows = crate::avx2::Q8Rows {
                        k: &k[keys],
                        ks: &ks[sb + t_lo * KEY_TILE * nb..sb + t_hi * KEY_TILE * nb],
                        v: &v[values],
                        vs: &vs[sb + lo * nb..sb + (pos + 1) * nb],
                    };
                    let (n_tiles, len) = (t_hi - t_lo, pos + 1 - lo);
                    crate::avx2::attend_group_q8(
                        rows,
                        (n_tiles, skip, len, hd),
                        (q, sinks),
                        score,
                        scores,
                        out,
                    );
                }
                #[cfg(not(target_arch = "x86_64"))]
                Store::Q8 { .. } => {}
            }
        }
        Source::Flat {
            k,
            v,
            t0,
            p0,
            kspan,
            vspan,
        } => {
            let kb = kv_head * kspan;
            let vb = kv_head * vspan;
            let keys = &k[kb + (t_lo - t0) * KEY_TILE * hd..kb + (t_hi - t0) * KEY_TILE * hd];
            let values = &v[vb + (lo - p0) * hd..vb + (pos + 1 - p0) * hd];
            attend(
                isa,
                keys,
                skip,
                values,
                (q, sinks),
                (hd, score),
                scores,
                out,
            );
        }
    }
}

/// Attention of the query heads `q` (with their sinks, if any) over key
/// tiles (the first `skip` positions not visible) and values, in any float
/// element type.
#[allow(clippy::too_many_arguments)]
fn attend<T: Element>(
    isa: Isa,
    ktiles: &[T],
    skip: usize,
    values: &[T],
    (q, sinks): (&[f32], Option<&[f32]>),
    (hd, score): (usize, Scoring<'_>),
    scores: &mut [f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2
        && crate::avx2::attend_group((ktiles, skip, values, hd), (q, sinks), score, scores, out)
    {
        return;
    }
    let _ = isa;
    let scores = &mut scores[..values.len() / hd];
    for (h, (qh, oh)) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).enumerate() {
        let sink = sinks.map(|s| s[h]);
        weigh(ktiles, skip, values, (qh, sink, h), (hd, score), scores, oh);
    }
}

/// An element type attention reads keys and values in.
#[cfg(target_arch = "x86_64")]
trait Element: crate::avx2::FloatSimd + Into<f32> {}
#[cfg(target_arch = "x86_64")]
impl<T: crate::avx2::FloatSimd + Into<f32>> Element for T {}
/// An element type attention reads keys and values in.
#[cfg(not(target_arch = "x86_64"))]
trait Element: Copy + Into<f32> {}
#[cfg(not(target_arch = "x86_64"))]
impl<T: Copy + Into<f32>> Element for T {}

/// What becomes of a head's raw `q . k` scores over its visible keys, in
/// order: times the scale, soft-capped, and less ALiBi's bias (the heads'
/// slopes, and the first visible key's position relative to the query's:
/// each key's distance is its difference from that, either side).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scoring<'a> {
    pub(crate) scale: f32,
    pub(crate) softcap: Option<f32>,
    pub(crate) alibi: Option<(&'a [f32], usize)>,
}

impl Scoring<'_> {
    /// Applies the scale, soft-cap and bias to head `h`'s scores.
    pub(crate) fn apply(&self, scores: &mut [f32], h: usize) {
        for v in scores.iter_mut() {
            let raw = *v * self.scale;
            *v = match self.softcap {
                Some(c) => c * (raw / c).tanh(),
                None => raw,
            };
        }
        if let Some((slopes, first)) = self.alibi {
            // (llama.cpp's mask holds `-|distance|` and adds it times the
            // slope.)
            let slope = slopes[h];
            for (i, v) in scores.iter_mut().enumerate() {
                *v -= slope * (first as f32 - i as f32).abs();
            }
        }
    }
}

/// The first and last key positions a query at `pos` sees in a call that
/// ends at position `ctx - 1`: causal, from its window's or chunk's start
/// to its own; bidirectional, the whole call, or llama.cpp's symmetric
/// window (`pos - w / 2 ..= pos + w / 2`).
fn visible_keys(p: &AttentionParams, pos: usize, ctx: usize) -> (usize, usize) {
    match (p.bidirectional, p.sliding_window) {
        (false, _) => (p.first_key(pos), pos),
        (true, None) => (0, ctx - 1),
        (true, Some(w)) => (pos.saturating_sub(w / 2), (pos + w / 2).min(ctx - 1)),
    }
}

/// Score slots per head for a query that sees up to `ctx` positions: whole
/// tiles, plus one for a window that starts inside a tile.
fn scores_per_head(ctx: usize) -> usize {
    ctx.div_ceil(KEY_TILE) * KEY_TILE + KEY_TILE
}

/// Replaces scores by `exp(s - max)` (in order) and returns their sum (in
/// order), then the sink's `exp(sink - max)`, if there is one (the max
/// taken over it too).
fn softmax_exp(scores: &mut [f32], sink: Option<f32>) -> f32 {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let max = sink.map_or(max, |s| max.max(s));
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    sum + sink.map_or(0.0, |s| (s - max).exp())
}

/// Scores, softmax and weighted values over one head's visible keys (in
/// tiles, the first `skip` positions not visible) and values.
fn weigh<T: Copy + Into<f32>>(
    ktiles: &[T],
    skip: usize,
    values: &[T],
    (q, sink, h): (&[f32], Option<f32>, usize),
    (hd, score): (usize, Scoring<'_>),
    scores: &mut [f32],
    out: &mut [f32],
) {
    for (i, s) in scores.iter_mut().enumerate() {
        *s = q.iter().enumerate().fold(0.0f32, |a, (d, &x)| {
            x.mul_add(ktiles[key_at(skip + i, d, hd)].into(), a)
        });
    }
    score.apply(scores, h);
    let sum = softmax_exp(scores, sink);
    out.fill(0.0);
    for (&e, v) in scores.iter().zip(values.chunks_exact(hd)) {
        for (o, &x) in out.iter_mut().zip(v) {
            *o += e * x.into();
        }
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

pub(crate) fn attention(
    be: &CpuBackend,
    ws: &mut CpuWorkspace,
    cache: &CpuKvCache,
    KvSpan { layer, start_pos }: KvSpan,
    q: &[f32],
    p: &AttentionParams,
    out: &mut [f32],
) -> BackendResult<()> {
    let n = check_params(cache, layer, start_pos, q.len(), out.len(), p)?;
    let hd = p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    let pairs = n * p.n_heads;
    let ctx = start_pos + n;
    // Several tokens: the query heads sharing a key/value head go together
    // (each head's arithmetic is the same either way), so each key and
    // value is loaded once for all of them.
    // A Q8_0 cache's rows are dequantized in registers: one token's heads
    // that share them go together too, so each row is dequantized once for
    // all of them.
    let q8 = matches!(cache.store, Store::Q8 { .. });
    let g = if (n > 1 || q8) && be.isa == Isa::Avx2 {
        group
    } else {
        1
    };
    let units = pairs / g;
    // One scores buffer per chunk of units; chunks run in parallel when the
    // work is worth it.
    let work = pairs * ctx * hd;
    let n_chunks = if be.threads > 1 && work >= 1 << 16 {
        (be.threads * 4).min(units)
    } else {
        1
    };
    let per_chunk = units.div_ceil(n_chunks);
    let n_chunks = units.div_ceil(per_chunk);
    let span = g * scores_per_head(ctx);
    if ws.scores.len() < n_chunks * span {
        ws.scores.resize(n_chunks * span, 0.0);
    }
    let isa = be.isa;
    // A Q8_0 cache: what the call's tokens see, dequantized once for all,
    // for many tokens (a prefill chunk, where each row is read by every
    // token) or without AVX2; else the kernels dequantize in registers.
    let src = match cache.store {
        Store::Q8 { .. } if be.isa != Isa::Avx2 || n >= FLAT_TOKENS => {
            let first = visible_keys(p, start_pos, ctx).0;
            dequantize_layer(cache, layer, first, ctx, &mut ws.kv)
        }
        _ => Source::Cache(cache),
    };
    let run = |c: usize, o: &mut [f32], scores: &mut [f32]| {
        for (i, oh) in o.chunks_exact_mut(g * hd).enumerate() {
            let pair = (c * per_chunk + i) * g;
            let (t, h) = (pair / p.n_heads, pair % p.n_heads);
            let qh = &q[pair * hd..(pair + g) * hd];
            let sinks = p.sinks.map(|s| &s[h..h + g]);
            let slopes = p.alibi.map(|s| &s[h..h + g]);
            let at = start_pos + t;
            let (lo, hi) = visible_keys(p, at, ctx);
            group_attention(
                isa,
                &src,
                layer,
                h / group,
                (lo, hi, at),
                (qh, sinks, slopes),
                p,
                scores,
                oh,
            );
        }
    };
    if n_chunks == 1 {
        run(0, out, &mut ws.scores[..span]);
        return Ok(());
    }
    let scores = &mut ws.scores[..n_chunks * span];
    let out_chunk = per_chunk * g * hd;
    // The matmuls' pool first: its helpers are awake between the matmuls
    // of a step, where waking rayon's costs two thread wake-ups a call
    // (and its spinning helper then competes with rayon's for the cores).
    if !be
        .spin
        .run_chunks((&mut *out, out_chunk), (&mut *scores, span), &run)
    {
        be.pool.install(|| {
            out.par_chunks_mut(out_chunk)
                .zip(scores.par_chunks_mut(span))
                .enumerate()
                .for_each(|(c, (o, s))| run(c, o, s))
        });
    }
    Ok(())
}
