//! [`FusedAttention`]: attention of query rows over KV caches in one
//! kernel, in place of candle's two batched products, scale, soft-cap,
//! mask add, softmax and the copies between them: a decode step's rows
//! (`kernels/decode_attention.cu`, a block for each row and head), or a
//! chunk of one sequence's (`kernels/prefill_attention.cu`, tiles of keys
//! shared by many rows).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::{q8, values, Rope, RowLayout, SlotTable};

/// The largest `head_dim` [`FusedAttention`] takes.
pub(crate) const MAX_HEAD_DIM: usize = 256;

/// Where a query row sits in its sequence.
#[derive(Debug, Clone)]
pub(crate) enum QueryPositions {
    /// Row `r` at `positions[r]`, a `u32` tensor on the device (a static
    /// step's, which the device rewrites in place, or a batch's).
    Device(Tensor),
    /// Row `r` at `start + r` (a chunk of one sequence).
    From(usize),
}

/// Attention of query rows over KV caches: row `r` at position `p` sees
/// the keys at positions `j <= p` (and `j > p - window` with a sliding
/// window), scores `q . k * scale`, soft-capped, softmax, and the weighted
/// sum of values.
///
/// Arguments: `q` `[rows, n_heads * head_dim]` f32 (rows contiguous, at
/// any stride: a stacked product's columns); keys and values either
/// `[rows, n_kv_heads, max_seq, head_dim]` (a cache per row) or
/// `[n_kv_heads, max_seq, head_dim]` (one cache for every row, or row 0's
/// when `slots` names each row's), f32 or f16, contiguous. Result: `[rows, n_heads * head_dim]` f32, or with
/// `blocks` the same values flat and then their blocks of that kind
/// ([`q8::Blocks`]; `head_dim` a multiple of 32).
#[derive(Debug)]
pub(crate) struct FusedAttention {
    pub(crate) positions: QueryPositions,
    pub(crate) n_heads: usize,
    pub(crate) n_kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) scale: f32,
    pub(crate) softcap: Option<f32>,
    pub(crate) window: Option<usize>,
    /// RoPE to apply to the queries first (`None`: they are rotated).
    pub(crate) rope: Option<Rope>,
    /// The blocks that follow the result: Q8_1 blocks (the decode kernel
    /// only), the matrix products' layout, or none.
    pub(crate) blocks: q8::Blocks,
    /// Each row's cache, like the arguments' (CUDA only); `None`: the
    /// arguments are the caches.
    pub(crate) slots: Option<SlotTable>,
    /// Whether many rows of one cache may go to the tiled kernel (CUDA).
    pub(crate) tiled: bool,
    /// The most keys a row may see (at least the furthest position + 1; a
    /// static step's span), and the blocks that fill the device: with few
    /// rows and heads and many keys, the decode kernel splits each row's
    /// keys over several blocks (CUDA; `fill` 0: never).
    pub(crate) keys: usize,
    pub(crate) fill: usize,
    /// The rows' new keys and values, `[rows, n_kv_heads * head_dim]` f32
    /// (rows contiguous, at any stride): with `slots` naming a different
    /// cache for each row and `rope` (CUDA only), the decode kernel norms
    /// (`rope.k_norm`) and rotates each row's key, stores both at the
    /// row's position in its cache and attends to them there, in place of
    /// a [`super::RopeStore`] launch.
    /// Read with candle's plain read lock inside the op, as
    /// [`super::RopeStore`]'s values are.
    pub(crate) stores: Option<(Tensor, Tensor)>,
}

/// The shapes of one call.
struct Dims {
    rows: usize,
    max_seq: usize,
    /// Values from one row's cache to the next (0: one cache).
    row_stride: usize,
}

impl FusedAttention {
    fn dims(&self, lq: &Layout, lk: &Layout, lv: &Layout) -> Result<Dims> {
        let (nh, kvh, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        // CUDA grids have at most 65535 blocks along y, one a head.
        if kvh == 0 || nh % kvh != 0 || nh > 65535 || hd == 0 || hd > MAX_HEAD_DIM {
            candle_core::bail!("fused attention: {nh} heads, {kvh} KV heads of {hd} values");
        }
        let (rows, width) = lq.shape().dims2()?;
        if rows == 0 {
            candle_core::bail!("fused attention: no rows");
        }
        if width != nh * hd {
            candle_core::bail!("fused attention: query rows of {width} values");
        }
        if lk.shape() != lv.shape() {
            candle_core::bail!("fused attention: keys and values differ in shape");
        }
        let (cache_rows, max_seq) = match *lk.dims() {
            [r, h, s, d] if h == kvh && d == hd => (Some(r), s),
            [h, s, d] if h == kvh && d == hd => (None, s),
            _ => candle_core::bail!("fused attention: caches of shape {:?}", lk.dims()),
        };
        if cache_rows.is_some_and(|r| r != rows) {
            candle_core::bail!("fused attention: a cache per row, but not {rows} of them");
        }
        if self.slots.is_some() && (cache_rows.is_some() || rows > super::SLOT_ROWS) {
            candle_core::bail!("fused attention: named caches need row 0's and at most 32 rows");
        }
        if let Some(r) = &self.rope {
            r.check(rows, hd)?;
        }
        if let Some((k, v)) = &self.stores {
            // Each row writes its own cache, which no other row reads.
            let distinct = self.slots.is_some_and(|t| t.distinct(rows));
            if !distinct || self.rope.is_none() {
                candle_core::bail!("fused attention: stores need a cache per row and RoPE");
            }
            for t in [k, v] {
                if t.dims() != [rows, kvh * hd] || t.dtype() != candle_core::DType::F32 {
                    candle_core::bail!("fused attention: new keys or values of {:?}", t.dims());
                }
                RowLayout::of(t.layout())?;
            }
        }
        if self.blocks != q8::Blocks::No && !hd.is_multiple_of(q8::BLOCK) {
            candle_core::bail!("fused attention: blocks of heads of {hd} values");
        }
        if let QueryPositions::Device(t) = &self.positions {
            if t.dims1()? != rows {
                candle_core::bail!("fused attention: not one position per row");
            }
        }
        RowLayout::of(lq)?;
        for l in [lk, lv] {
            if !l.is_contiguous() {
                candle_core::bail!("fused attention: caches must be contiguous");
            }
        }
        // The kernel takes 32-bit sizes.
        let fits = |n: usize| i32::try_from(n).is_ok();
        if !(fits(nh) && fits(max_seq) && fits(rows) && fits(max_seq * hd)) {
            candle_core::bail!("fused attention: sizes past 2^31");
        }
        Ok(Dims {
            rows,
            max_seq,
            row_stride: cache_rows.map_or(0, |_| kvh * max_seq * hd),
        })
    }

    /// The result's shape for `rows` rows.
    fn shape(&self, rows: usize) -> Shape {
        let width = self.n_heads * self.head_dim;
        match self.blocks {
            q8::Blocks::No => Shape::from((rows, width)),
            blocks => Shape::from(rows * width + blocks.words(rows, width)),
        }
    }

    /// The CPU form: for each row and head, scores over the visible keys,
    /// softmax (max subtracted), and the weighted sum of values.
    fn cpu_rows<T: Copy>(
        &self,
        dims: &Dims,
        q: &[f32],
        caches: (&[T], &[T]),
        positions: &[usize],
        f32_of: impl Fn(T) -> f32,
    ) -> Result<Vec<f32>> {
        let (nh, kvh, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let group = nh / kvh;
        let (k, v) = caches;
        let cache_len = dims.row_stride * (dims.rows - 1) + kvh * dims.max_seq * hd;
        if k.len() < cache_len || v.len() < cache_len {
            candle_core::bail!("fused attention: caches shorter than their shape");
        }
        let mut out = vec![0f32; dims.rows * nh * hd];
        let mut probs = Vec::new();
        for (r, &pos) in positions.iter().enumerate() {
            if pos >= dims.max_seq {
                candle_core::bail!("fused attention: position {pos} past the cache");
            }
            let lo = self.window.map_or(0, |w| (pos + 1).saturating_sub(w));
            for h in 0..nh {
                let base = r * dims.row_stride + (h / group) * dims.max_seq * hd;
                let qh = &q[(r * nh + h) * hd..][..hd];
                probs.clear();
                for j in lo..=pos {
                    let kj = &k[base + j * hd..][..hd];
                    let dot: f32 = qh.iter().zip(kj).map(|(&a, &b)| a * f32_of(b)).sum();
                    let mut s = dot * self.scale;
                    if let Some(c) = self.softcap {
                        s = c * (s / c).tanh();
                    }
                    probs.push(s);
                }
                let top = probs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0f32;
                for p in &mut probs {
                    *p = (*p - top).exp();
                    total += *p;
                }
                let oh = &mut out[(r * nh + h) * hd..][..hd];
                for (j, &p) in (lo..=pos).zip(&probs) {
                    let vj = &v[base + j * hd..][..hd];
                    for (o, &x) in oh.iter_mut().zip(vj) {
                        *o += p * f32_of(x);
                    }
                }
                for o in oh.iter_mut() {
                    *o /= total;
                }
            }
        }
        Ok(out)
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = self.dims(lq, lk, lv)?;
        if self.slots.is_some() {
            candle_core::bail!("fused attention: caches named by address are CUDA's");
        }
        let positions: Vec<usize> = match &self.positions {
            QueryPositions::Device(t) => t
                .to_vec1::<u32>()?
                .into_iter()
                .map(|p| p as usize)
                .collect(),
            QueryPositions::From(start) => (*start..start + dims.rows).collect(),
        };
        let CpuStorage::F32(q) = sq else {
            candle_core::bail!("fused attention: f32 queries");
        };
        let mut q = RowLayout::of(lq)?.gather(q)?;
        if let Some(r) = &self.rope {
            r.rotate_rows(&mut q, self.n_heads, self.head_dim, r.q_norm.as_ref())?;
        }
        let q = &q[..];
        let mut out = match (sk, sv) {
            (CpuStorage::F32(k), CpuStorage::F32(v)) => {
                let caches = (values(k, lk)?, values(v, lv)?);
                self.cpu_rows(&dims, q, caches, &positions, |x| x)?
            }
            (CpuStorage::F16(k), CpuStorage::F16(v)) => {
                let caches = (values(k, lk)?, values(v, lv)?);
                self.cpu_rows(&dims, q, caches, &positions, half::f16::to_f32)?
            }
            _ => candle_core::bail!("fused attention: f32 or f16 caches"),
        };
        if self.blocks != q8::Blocks::No {
            let values = out.clone();
            let width = self.n_heads * self.head_dim;
            self.blocks
                .quantize_into(&values, dims.rows, width, &mut out);
        }
        Ok((CpuStorage::F32(out), self.shape(dims.rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sq: &candle_core::CudaStorage,
        lq: &Layout,
        sk: &candle_core::CudaStorage,
        lk: &Layout,
        sv: &candle_core::CudaStorage,
        lv: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, sq, lq, sk, lk, sv, lv)
    }
}

/// The CUDA form: `kernels/decode_attention.cu`.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DevicePtr, DeviceRepr, LaunchConfig,
    };
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage};

    use super::{q8, Dims, FusedAttention, QueryPositions, SlotTable};
    use crate::fused::cuda::{offsets, with_address, with_tables};
    use crate::fused::launch::Kernel;
    use crate::fused::RowLayout;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decode_attention.ptx"));
    const MODULE: &str = "realm_decode_attention";
    const TILED_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/prefill_attention.ptx"));
    const TILED_MODULE: &str = "realm_prefill_attention";
    /// Threads per block: the decode kernel's `32 * WARPS`, the tiled
    /// kernel's `32 * PF_WARPS`.
    const THREADS: u32 = 256;
    const TILED_THREADS: u32 = 128;
    /// The most rows of one cache the decode kernel attends (a block for
    /// each row and head); more go to the tiled kernel.
    const DECODE_ROWS: usize = 8;
    /// The fewest keys a split of the decode kernel takes (two of its
    /// blocks' stretches of 32 keys per warp), and the most splits.
    const SPLIT_KEYS: usize = 512;
    const MAX_SPLITS: usize = 32;
    /// The merge kernel's threads per block (`MERGE_THREADS`).
    const MERGE_THREADS: u32 = 128;

    /// The largest head of the kernels' instance for heads of `head_dim`
    /// values (at most [`super::MAX_HEAD_DIM`], which `dims` checked).
    fn largest_head(head_dim: usize) -> usize {
        match head_dim {
            0..=64 => 64,
            65..=128 => 128,
            _ => 256,
        }
    }

    /// The blocks over which the decode kernel splits each row and head's
    /// keys: 1 unless rows times heads leave the device short of `op.fill`
    /// blocks and there are keys for at least [`SPLIT_KEYS`] per split
    /// (the merge kernel's launch then costs less than the idle SMs).
    fn splits(op: &FusedAttention, dims: &Dims) -> usize {
        let blocks = dims.rows * op.n_heads;
        let keys = op.window.map_or(op.keys, |w| w.min(op.keys));
        if op.fill == 0 || blocks >= op.fill {
            return 1;
        }
        (keys / SPLIT_KEYS)
            .min(op.fill.div_ceil(blocks))
            .clamp(1, MAX_SPLITS)
    }

    /// The largest head of the tiled kernel that runs `op` on `dims`, and
    /// the rows of its blocks; `None` where the decode kernel runs (not
    /// asked, a cache per row or by address, few rows, Q8_1 blocks, or
    /// heads whose size is not a multiple of 4).
    fn tiled(op: &FusedAttention, dims: &Dims) -> Option<(usize, usize)> {
        let one_cache = dims.row_stride == 0 && op.slots.is_none();
        if !op.tiled
            || !one_cache
            || dims.rows <= DECODE_ROWS
            || op.blocks == q8::Blocks::Vector
            || !op.head_dim.is_multiple_of(4)
        {
            return None;
        }
        // 4 warps of 4 rows, or of 2 for heads of up to 256 values.
        let max = largest_head(op.head_dim);
        Some((max, if max == 256 { 8 } else { 16 }))
    }

    pub(super) fn forward(
        op: &FusedAttention,
        sq: &CudaStorage,
        lq: &Layout,
        sk: &CudaStorage,
        lk: &Layout,
        sv: &CudaStorage,
        lv: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dims = op.dims(lq, lk, lv)?;
        let out = match (sk.dtype(), sv.dtype()) {
            (DType::F32, DType::F32) => {
                launch::<f32>(op, &dims, "f32", (sq, lq), (sk, lk), (sv, lv))?
            }
            (DType::F16, DType::F16) => {
                launch::<half::f16>(op, &dims, "f16", (sq, lq), (sk, lk), (sv, lv))?
            }
            _ => candle_core::bail!("fused attention: f32 or f16 caches"),
        };
        Ok((
            CudaStorage::wrap_cuda_slice(out, sq.device().clone()),
            op.shape(dims.rows),
        ))
    }

    /// One launch's device pointers and RoPE (pointers 0 for none).
    struct Args<'a, T> {
        q: CudaView<'a, f32>,
        /// Values from one query row to the next.
        q_stride: i64,
        k: CudaView<'a, T>,
        v: CudaView<'a, T>,
        positions: u64,
        pos_base: u32,
        cos: u64,
        sin: u64,
        n_dims: i32,
        neox: i32,
        /// The new keys and values to store, and their row strides (0 for
        /// none).
        new_k: u64,
        new_v: u64,
        new_k_stride: i64,
        new_v_stride: i64,
    }

    fn launch<T: DeviceRepr + CudaDType>(
        op: &FusedAttention,
        dims: &Dims,
        dtype: &str,
        (sq, lq): (&CudaStorage, &Layout),
        (sk, lk): (&CudaStorage, &Layout),
        (sv, lv): (&CudaStorage, &Layout),
    ) -> Result<CudaSlice<f32>> {
        let dev = sq.device();
        let stream = dev.cuda_stream();
        let ql = RowLayout::of(lq)?;
        let (qa, qb) = (ql.start, ql.end());
        let (ka, kb) = offsets(lk)?;
        let (va, vb) = offsets(lv)?;
        // A null pointer says: row r at pos_base + r.
        let (guard, pos_base) = match &op.positions {
            QueryPositions::Device(t) => (Some(t.storage_and_layout()), 0u32),
            QueryPositions::From(start) => (
                None,
                u32::try_from(*start).map_err(|_| {
                    candle_core::Error::Msg("fused attention: position past 2^32".into())
                })?,
            ),
        };
        let positions = match &guard {
            Some((storage, layout)) => match &**storage {
                Storage::Cuda(s) => {
                    let (a, b) = offsets(layout)?;
                    Some(s.as_cuda_slice::<u32>()?.slice(a..b))
                }
                _ => candle_core::bail!("fused attention: positions on another device"),
            },
            None => None,
        };
        // The new keys and values, rows at their strides.
        let stored = op
            .stores
            .as_ref()
            .map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout()));
        let new = match &stored {
            Some(((ks, kl), (vs, vl))) => {
                let (Storage::Cuda(ks), Storage::Cuda(vs)) = (&**ks, &**vs) else {
                    candle_core::bail!("fused attention: new keys on another device");
                };
                let (kl, vl) = (RowLayout::of(kl)?, RowLayout::of(vl)?);
                Some((
                    ks.as_cuda_slice::<f32>()?.slice(kl.start..kl.end()),
                    vs.as_cuda_slice::<f32>()?.slice(vl.start..vl.end()),
                    kl.stride as i64,
                    vl.stride as i64,
                ))
            }
            None => None,
        };
        let args = |cos: u64, sin: u64| -> Result<Args<'_, T>> {
            Ok(Args {
                q: sq.as_cuda_slice::<f32>()?.slice(qa..qb),
                q_stride: ql.stride as i64,
                k: sk.as_cuda_slice::<T>()?.slice(ka..kb),
                v: sv.as_cuda_slice::<T>()?.slice(va..vb),
                positions: positions.as_ref().map_or(0, |p| p.device_ptr(&stream).0),
                pos_base,
                cos,
                sin,
                n_dims: op.rope.as_ref().map_or(0, |r| r.n_dims as i32),
                neox: op.rope.as_ref().map_or(0, |r| i32::from(r.neox)),
                new_k: new.as_ref().map_or(0, |n| n.0.device_ptr(&stream).0),
                new_v: new.as_ref().map_or(0, |n| n.1.device_ptr(&stream).0),
                new_k_stride: new.as_ref().map_or(0, |n| n.2),
                new_v_stride: new.as_ref().map_or(0, |n| n.3),
            })
        };
        // Null tables say: the queries are rotated already.
        match &op.rope {
            Some(rope) => with_tables(rope, |cos, sin| {
                let a = args(cos.device_ptr(&stream).0, sin.device_ptr(&stream).0)?;
                run(op, dims, dtype, dev, a)
            }),
            None => run(op, dims, dtype, dev, args(0, 0)?),
        }
    }

    fn run<T: DeviceRepr>(
        op: &FusedAttention,
        dims: &Dims,
        dtype: &str,
        dev: &CudaDevice,
        a: Args<'_, T>,
    ) -> Result<CudaSlice<f32>> {
        let tiled = tiled(op, dims);
        let splits = match tiled {
            Some(_) => 1,
            None => splits(op, dims),
        };
        let values = dims.rows * op.n_heads * op.head_dim;
        // SAFETY: every value of `out` is written (each row's head, every
        // one of head_dim values, and with blocks their words, all but
        // matrix blocks' spare blocks, which a product reads only for
        // results it drops: any bits are an f32): by the attention kernel,
        // or with splits by the merge kernel after it.
        let out = unsafe { dev.alloc::<f32>(op.shape(dims.rows).elem_count())? };
        // Null pointers say: no blocks (of that layout).
        let blocks_at = crate::fused::cuda::address(&out, values);
        let (blocks, matrix) = match op.blocks {
            q8::Blocks::No => (0, 0),
            q8::Blocks::Vector => (blocks_at, 0),
            q8::Blocks::Matrix => (0, blocks_at),
        };
        let (kernel, grid_x, threads) = match tiled {
            Some((max_hd, rows)) => (
                Kernel::load(
                    dev,
                    &format!("prefill_attention_{dtype}_{max_hd}"),
                    TILED_MODULE,
                    TILED_PTX,
                )?,
                dims.rows.div_ceil(rows),
                TILED_THREADS,
            ),
            None => (
                Kernel::load(
                    dev,
                    &format!("decode_attention_{dtype}_{}", largest_head(op.head_dim)),
                    MODULE,
                    PTX,
                )?,
                dims.rows,
                THREADS,
            ),
        };
        let ints = [op.n_heads, op.n_kv_heads, op.head_dim, dims.max_seq].map(|n| n as i32);
        let rows = dims.rows as i32;
        let row_stride = dims.row_stride as i64;
        let softcap = op.softcap.unwrap_or(0.0);
        let window = op.window.map_or(0, |w| w.min(i32::MAX as usize) as i32);
        let (table, by_slots) = match &op.slots {
            Some(t) => (*t, 1i32),
            None => (SlotTable::none(), 0),
        };
        let q_norm = op.rope.as_ref().and_then(|r| r.q_norm.as_ref());
        // The key norm, for keys the kernel stores.
        let k_norm = match op.stores {
            Some(_) => op.rope.as_ref().and_then(|r| r.k_norm.as_ref()),
            None => None,
        };
        let norm_eps = op.rope.as_ref().map_or(0.0, |r| r.norm_eps);
        let cfg = LaunchConfig {
            grid_dim: (grid_x as u32, op.n_heads as u32, splits as u32),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        // Split launches' partial results: per row, head and split, the
        // weighted sum of values, then per split the maximum and the sum.
        let part = match splits {
            1 => None,
            // SAFETY: the decode kernel writes every value the merge kernel
            // reads: each split block its head_dim sums and its two stats.
            _ => Some(unsafe {
                dev.alloc::<f32>(dims.rows * op.n_heads * splits * (op.head_dim + 2))?
            }),
        };
        let part_ptr = part
            .as_ref()
            .map_or(0, |p| crate::fused::cuda::address(p, 0));
        with_address(q_norm, |q_norm| {
            with_address(k_norm, |k_norm| {
                let mut b = kernel.args();
                b.arg(&a.q);
                b.arg(&a.k);
                b.arg(&a.v);
                b.arg(&a.positions);
                b.arg(&out);
                b.arg(&a.pos_base);
                for i in &ints {
                    b.arg(i);
                }
                // The decode kernel's caches by row; the tiled kernel's rows.
                match tiled {
                    None => {
                        b.arg(&row_stride);
                        b.arg(&table);
                        b.arg(&by_slots);
                    }
                    Some(_) => {
                        b.arg(&rows);
                    }
                }
                b.arg(&op.scale);
                b.arg(&softcap);
                b.arg(&window);
                b.arg(&a.cos);
                b.arg(&a.sin);
                b.arg(&a.n_dims);
                b.arg(&a.neox);
                if tiled.is_none() {
                    b.arg(&blocks);
                    b.arg(&matrix);
                }
                b.arg(&a.q_stride);
                b.arg(&q_norm);
                b.arg(&norm_eps);
                if tiled.is_none() {
                    b.arg(&part_ptr);
                    b.arg(&a.new_k);
                    b.arg(&a.new_v);
                    b.arg(&a.new_k_stride);
                    b.arg(&a.new_v_stride);
                    b.arg(&k_norm);
                } else {
                    b.arg(&matrix);
                }
                // SAFETY: the arguments match the kernel's parameters in order
                // and type; `dims` checked that every key and value a row reads
                // (up to max_seq positions of its cache) lies within `k` and `v`
                // and that the RoPE tables (and the query norm, head_dim values,
                // held by `with_address`) fit the rows, and both kernels write
                // NaN rather than read past a position >= max_seq; with a slot
                // table, its addresses are each row's cache of the same shape
                // and type as row 0's, which `dims` checked (`SlotTable::of`
                // took them from live tensors, which the caller holds); with
                // blocks (Q8_1 blocks: decode kernel only), `out` has their
                // words after the values (matrix blocks: rows x n_heads x
                // head_dim padded, both kinds, and the spare blocks) and
                // head_dim is a multiple of 32, so each warp's values are one
                // block or a quarter of one. The decode kernel reads keys four at a time
                // only where head_dim is a multiple of 4 and the keys are
                // 16-byte aligned (it checks both). The tiled kernel runs only
                // on one cache, with head_dim a multiple of 4 and at most its
                // largest (`tiled`), so its float4 reads of shared memory stay
                // within each row. With new keys (decode kernel only, with a
                // slot table: `dims` checked both), their rows and the values'
                // (n_kv_heads * head_dim values at their strides, within their
                // views) and the key norm (head_dim values, held by
                // `with_address`) fit the rows, and that the table names a
                // different cache for each row; the kernel writes each row's
                // new key and value only at its position (below max_seq) of
                // its own cache, which no block of this launch reads (its
                // reads of that cache stop at the position before), and the
                // caller's exclusive borrow of each row's cache keeps other
                // work off those positions.
                unsafe { b.launch(cfg) }?;
                Ok(())
            })
        })?;
        if let Some(part) = &part {
            let merge = Kernel::load(dev, "decode_attention_merge", MODULE, PTX)?;
            let cfg = LaunchConfig {
                grid_dim: (dims.rows as u32, op.n_heads as u32, 1),
                block_dim: (MERGE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let (max_seq, n_heads, head_dim) = (ints[3], ints[0], ints[2]);
            let splits = splits as i32;
            let mut b = merge.args();
            b.arg(part);
            b.arg(&a.positions);
            b.arg(&a.pos_base);
            b.arg(&max_seq);
            b.arg(&out);
            b.arg(&blocks);
            b.arg(&matrix);
            b.arg(&n_heads);
            b.arg(&head_dim);
            b.arg(&splits);
            // SAFETY: the arguments match `decode_attention_merge`'s
            // parameters in order and type; `part` holds the partial results
            // of `splits` splits of every row and head, which the launch
            // before it on this stream wrote; `positions` (or pos_base) and
            // `out` (with its blocks) are the attention launch's, of `rows`
            // rows of n_heads heads.
            unsafe { b.launch(cfg) }?;
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::super::{q8, Dims, FusedAttention, QueryPositions};
        use super::{splits, tiled, MAX_SPLITS};

        /// SmolLM2's heads, `keys` seen, the device filled by `fill` blocks.
        fn op(keys: usize, fill: usize) -> FusedAttention {
            FusedAttention {
                positions: QueryPositions::From(0),
                n_heads: 9,
                n_kv_heads: 3,
                head_dim: 64,
                scale: 0.125,
                softcap: None,
                window: None,
                rope: None,
                blocks: q8::Blocks::No,
                slots: None,
                tiled: true,
                keys,
                fill,
                stores: None,
            }
        }

        fn dims(rows: usize) -> Dims {
            Dims {
                rows,
                max_seq: 8192,
                row_stride: 0,
            }
        }

        #[test]
        fn long_caches_of_few_rows_split_their_keys() {
            // tg128 (and llama-batched-bench's 512-token prompts): one split.
            assert_eq!(splits(&op(128, 264), &dims(1)), 1);
            assert_eq!(splits(&op(640, 264), &dims(32)), 1);
            // One sequence 4096 keys deep: 8 splits of 512 keys.
            assert_eq!(splits(&op(4096, 264), &dims(1)), 8);
            // Deeper: as many as fill the device, at most MAX_SPLITS.
            assert_eq!(splits(&op(100_000, 264), &dims(1)), 30);
            assert_eq!(splits(&op(100_000, 10_000), &dims(1)), MAX_SPLITS);
            // A window bounds the keys; fill 0 (off, or not CUDA) never splits.
            let mut local = op(4096, 264);
            local.window = Some(512);
            assert_eq!(splits(&local, &dims(1)), 1);
            assert_eq!(splits(&op(4096, 0), &dims(1)), 1);
        }

        #[test]
        fn long_chunks_of_one_cache_are_tiled() {
            assert_eq!(tiled(&op(64, 0), &dims(8)), None);
            assert_eq!(tiled(&op(64, 0), &dims(9)), Some((64, 16)));
            let mut gemma = op(64, 0);
            gemma.head_dim = 256;
            assert_eq!(tiled(&gemma, &dims(512)), Some((256, 8)));
            // Matrix blocks wanted: tiled.
            let mut matrix = op(64, 0);
            matrix.blocks = q8::Blocks::Matrix;
            assert_eq!(tiled(&matrix, &dims(64)), Some((64, 16)));
            // Not asked, Q8_1 blocks wanted, a cache per row, odd heads:
            // decode.
            let mut off = op(64, 0);
            off.tiled = false;
            assert_eq!(tiled(&off, &dims(64)), None);
            let mut blocks = op(64, 0);
            blocks.blocks = q8::Blocks::Vector;
            assert_eq!(tiled(&blocks, &dims(64)), None);
            let per_row = Dims {
                row_stride: 3 * 8192 * 64,
                ..dims(64)
            };
            assert_eq!(tiled(&op(64, 0), &per_row), None);
            let mut odd = op(64, 0);
            odd.head_dim = 62;
            assert_eq!(tiled(&odd, &dims(64)), None);
        }
    }
}
