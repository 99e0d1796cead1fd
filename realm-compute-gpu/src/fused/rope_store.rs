//! [`RopeStore`]: a decode step's keys and values stored in their cache
//! slots, the keys rotated by RoPE as they go, in one kernel
//! (`kernels/rope_store.cu`), in place of candle's rotation kernel and two
//! scatters into the caches.

use candle_core::{CpuStorage, DType, InplaceOp3, Layout, Result, Tensor};

use super::{values, Rope, RowLayout, SlotTable};

/// In place on a block of caches `[2, slots, n_kv_heads, max_seq,
/// head_dim]` (keys, then values; f32 or f16), with the rows' keys `[rows,
/// n_kv_heads * head_dim]` (f32, rows contiguous at any stride: a stacked
/// product's columns) and positions `[rows]` (u32): row `r`'s
/// key, rotated by `rope`'s row `r`, and its value (from `values`, shaped
/// as the keys) go to slot `slot0 + r` (or `slot0` with `one_slot`) at
/// position `positions[r]`, or
/// (CUDA only) to the caches `slots` names, which may be slots of any
/// block of the same configuration.
///
/// `values` is read with candle's plain read lock inside the op: it must
/// be a tensor no other thread writes (a product's output is).
#[derive(Debug)]
pub(crate) struct RopeStore {
    pub(crate) slot0: usize,
    /// Every row to slot `slot0` (the rows are one sequence's next tokens)
    /// instead of row `r` to slot `slot0 + r`.
    pub(crate) one_slot: bool,
    pub(crate) rope: Rope,
    pub(crate) values: Tensor,
    pub(crate) slots: Option<SlotTable>,
}

/// The shapes of one call.
struct Dims {
    rows: usize,
    n_kv: usize,
    head_dim: usize,
    max_seq: usize,
    slots: usize,
}

impl RopeStore {
    fn dims(&self, lc: &Layout, lk: &Layout, lp: &Layout) -> Result<Dims> {
        let (two, slots, n_kv, max_seq, head_dim) = lc.shape().dims5()?;
        let (rows, width) = lk.shape().dims2()?;
        if two != 2 || width != n_kv * head_dim || lp.shape().dims1()? != rows {
            candle_core::bail!("rope_store: keys or positions do not fit the cache");
        }
        let lv = self.values.layout();
        if lv.shape() != lk.shape() || self.values.dtype() != DType::F32 {
            candle_core::bail!("rope_store: values unlike the keys");
        }
        RowLayout::of(lk)?;
        RowLayout::of(lv)?;
        let named = self.slots.is_some();
        let used = if self.one_slot { 1 } else { rows };
        if rows == 0 || (!named && self.slot0 + used > slots) || (named && rows > super::SLOT_ROWS)
        {
            candle_core::bail!("rope_store: rows past the block's slots");
        }
        self.rope.check(rows, head_dim)?;
        for l in [lc, lp] {
            if !l.is_contiguous() {
                candle_core::bail!("rope_store: arguments must be contiguous");
            }
        }
        let fits = |n: usize| i32::try_from(n).is_ok();
        if !(fits(slots) && fits(n_kv) && fits(max_seq) && fits(head_dim)) || n_kv > 65535 {
            candle_core::bail!("rope_store: sizes past the kernel's");
        }
        Ok(Dims {
            rows,
            n_kv,
            head_dim,
            max_seq,
            slots,
        })
    }

    /// The CPU form: the keys rotated, then stored, and the values stored.
    fn cpu_rows<T>(
        &self,
        dims: &Dims,
        cache: &mut [T],
        k: &[f32],
        positions: &[u32],
        of_f32: impl Fn(f32) -> T,
    ) -> Result<()> {
        let Dims {
            n_kv,
            head_dim: hd,
            max_seq,
            slots,
            ..
        } = *dims;
        let mut k = k.to_vec();
        self.rope
            .rotate_rows(&mut k, n_kv, hd, self.rope.k_norm.as_ref())?;
        let v = self.values.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let v_off = slots * n_kv * max_seq * hd;
        for (r, &pos) in positions.iter().enumerate().take(dims.rows) {
            let pos = pos as usize;
            if pos >= max_seq {
                candle_core::bail!("rope_store: position {pos} past the cache");
            }
            for h in 0..n_kv {
                let src = (r * n_kv + h) * hd;
                let slot = self.slot0 + if self.one_slot { 0 } else { r };
                let at = ((slot * n_kv + h) * max_seq + pos) * hd;
                for (off, rows) in [(0, &k), (v_off, &v)] {
                    let dst = &mut cache[off + at..off + at + hd];
                    for (d, &x) in dst.iter_mut().zip(&rows[src..src + hd]) {
                        *d = of_f32(x);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The contiguous values of `s` under `l`, to write.
fn values_mut<'a, T>(s: &'a mut [T], l: &Layout) -> Result<&'a mut [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) if b <= s.len() => Ok(&mut s[a..b]),
        _ => candle_core::bail!("rope_store: the cache must be contiguous"),
    }
}

impl InplaceOp3 for RopeStore {
    fn name(&self) -> &'static str {
        "rope-store"
    }

    fn cpu_fwd(
        &self,
        sc: &mut CpuStorage,
        lc: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sp: &CpuStorage,
        lp: &Layout,
    ) -> Result<()> {
        let dims = self.dims(lc, lk, lp)?;
        if self.slots.is_some() {
            candle_core::bail!("rope_store: caches named by address are CUDA's");
        }
        let (CpuStorage::F32(k), CpuStorage::U32(positions)) = (sk, sp) else {
            candle_core::bail!("rope_store: f32 keys and u32 positions");
        };
        let (k, positions) = (RowLayout::of(lk)?.gather(k)?, values(positions, lp)?);
        let k = &k[..];
        match sc {
            CpuStorage::F32(c) => self.cpu_rows(&dims, values_mut(c, lc)?, k, positions, |x| x),
            CpuStorage::F16(c) => {
                self.cpu_rows(&dims, values_mut(c, lc)?, k, positions, half::f16::from_f32)
            }
            _ => candle_core::bail!("rope_store: f32 or f16 caches"),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        sc: &mut candle_core::CudaStorage,
        lc: &Layout,
        sk: &candle_core::CudaStorage,
        lk: &Layout,
        sp: &candle_core::CudaStorage,
        lp: &Layout,
    ) -> Result<()> {
        cuda::forward(self, sc, lc, sk, lk, sp, lp)
    }
}

/// The CUDA form: `kernels/rope_store.cu`.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig};
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaStorage, DType, Layout, Result, Storage};

    use super::{Dims, RopeStore, SlotTable};
    use crate::fused::cuda::{offsets, with_address, with_tables};
    use crate::fused::launch::Kernel;
    use crate::fused::RowLayout;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/rope_store.ptx"));
    /// The kernel's `STORE_THREADS`.
    const THREADS: u32 = 128;

    pub(super) fn forward(
        op: &RopeStore,
        sc: &mut CudaStorage,
        lc: &Layout,
        sk: &CudaStorage,
        lk: &Layout,
        sp: &CudaStorage,
        lp: &Layout,
    ) -> Result<()> {
        let dims = op.dims(lc, lk, lp)?;
        match sc.dtype() {
            DType::F32 => launch::<f32>(op, &dims, "rope_store_f32", (sc, lc), (sk, lk), (sp, lp)),
            DType::F16 => {
                launch::<half::f16>(op, &dims, "rope_store_f16", (sc, lc), (sk, lk), (sp, lp))
            }
            _ => candle_core::bail!("rope_store: f32 or f16 caches"),
        }
    }

    fn launch<T: DeviceRepr + CudaDType>(
        op: &RopeStore,
        dims: &Dims,
        name: &str,
        (sc, lc): (&mut CudaStorage, &Layout),
        (sk, lk): (&CudaStorage, &Layout),
        (sp, lp): (&CudaStorage, &Layout),
    ) -> Result<()> {
        let dev = sc.device().clone();
        let (ca, cb) = offsets(lc)?;
        let kl = RowLayout::of(lk)?;
        let (ka, kb) = (kl.start, kl.end());
        let (pa, pb) = offsets(lp)?;
        let k = sk.as_cuda_slice::<f32>()?.slice(ka..kb);
        let positions = sp.as_cuda_slice::<u32>()?.slice(pa..pb);
        let mut cache = sc.as_cuda_slice_mut::<T>()?.slice_mut(ca..cb);
        let (vs, vl) = op.values.storage_and_layout();
        let Storage::Cuda(vs) = &*vs else {
            candle_core::bail!("rope_store: values on another device");
        };
        let vl = RowLayout::of(vl)?;
        let (va, vb) = (vl.start, vl.end());
        let v = vs.as_cuda_slice::<f32>()?.slice(va..vb);
        let v_off = (dims.slots * dims.n_kv * dims.max_seq * dims.head_dim) as i64;
        let ints = [
            op.slot0,
            usize::from(!op.one_slot),
            dims.n_kv,
            dims.head_dim,
            dims.max_seq,
            op.rope.n_dims,
            usize::from(op.rope.neox),
        ]
        .map(|n| n as i32);
        let (table, by_slots) = match &op.slots {
            Some(t) => (*t, 1i32),
            None => (SlotTable::none(), 0),
        };
        let (k_stride, v_stride) = (kl.stride as i64, vl.stride as i64);
        let cfg = LaunchConfig {
            grid_dim: (dims.rows as u32, dims.n_kv as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let kernel = Kernel::load(&dev, name, "realm_rope_store", PTX)?;
        with_tables(&op.rope, |cos, sin| {
            with_address(op.rope.k_norm.as_ref(), |k_norm| {
                let mut b = kernel.args();
                b.arg_mut(&mut cache);
                b.arg(&k);
                b.arg(&v);
                b.arg(&positions);
                b.arg(cos);
                b.arg(sin);
                for i in &ints {
                    b.arg(i);
                }
                b.arg(&v_off);
                b.arg(&table);
                b.arg(&by_slots);
                b.arg(&k_stride);
                b.arg(&v_stride);
                b.arg(&k_norm);
                b.arg(&op.rope.norm_eps);
                // SAFETY: the arguments match the kernel's parameters in
                // order and type; `dims` checked that the cache is keys then
                // values (v_off apart), that rows fit the block's slots (or,
                // with one_slot, that slot0 is one of the block's slots;
                // with a slot table, that it names at most its rows, each a
                // cache of this block's configuration, from tensors the
                // caller holds), that the keys, values (rows of n_kv_heads *
                // head_dim at their strides, within their views), positions,
                // tables and key norm (head_dim values, held by
                // `with_address`) fit the rows, and the kernel writes nothing
                // for a position past max_seq.
                unsafe { b.launch(cfg) }?;
                Ok(())
            })
        })
    }
}
