//! [`SlotTable`]: each row's KV cache by device address
//! (`kernels/slots.cuh`), so that one launch stores and attends a batch
//! whose caches are slots of different blocks (sessions made at different
//! times), where one launch per run of consecutive slots was needed.

/// The most rows a table names (the kernels' `SLOT_ROWS`).
pub(crate) const SLOT_ROWS: usize = 32;

/// Row `r`'s keys at `k[r]` and values at `v[r]`: device addresses of
/// `[n_kv_heads, max_seq, head_dim]` caches, passed to the kernels by
/// value (a recorded step keeps them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SlotTable {
    k: [u64; SLOT_ROWS],
    v: [u64; SLOT_ROWS],
}

#[cfg(feature = "cuda")]
// SAFETY: plain integers, laid out (`repr(C)`) as the kernels' struct.
unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for SlotTable {}

impl SlotTable {
    /// The table of no rows, for launches that take their caches by
    /// stride.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // Only CUDA launches.
    pub(crate) fn none() -> Self {
        Self {
            k: [0; SLOT_ROWS],
            v: [0; SLOT_ROWS],
        }
    }

    /// The table of rows whose keys and values are `caches` (contiguous
    /// CUDA tensors of one shape and type), at most [`SLOT_ROWS`].
    ///
    /// It reads each tensor's storage in turn, so no op may hold one of
    /// them while it runs (candle's plain read lock would wait on a
    /// writer queued behind that op): build it before the ops that use it.
    #[cfg(feature = "cuda")]
    pub(crate) fn of<'a>(
        caches: impl ExactSizeIterator<Item = (&'a candle_core::Tensor, &'a candle_core::Tensor)>,
    ) -> candle_core::Result<Self> {
        if caches.len() > SLOT_ROWS {
            candle_core::bail!("slot table: {} rows, at most {SLOT_ROWS}", caches.len());
        }
        let mut table = Self::none();
        for (r, (k, v)) in caches.enumerate() {
            table.k[r] = address(k)?;
            table.v[r] = address(v)?;
        }
        Ok(table)
    }
}

/// The device address of contiguous CUDA tensor `t`'s first value.
#[cfg(feature = "cuda")]
fn address(t: &candle_core::Tensor) -> candle_core::Result<u64> {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    use candle_core::{DType, Storage};

    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        candle_core::bail!("slot table: a cache on another device");
    };
    if !layout.is_contiguous() {
        candle_core::bail!("slot table: a cache must be contiguous");
    }
    let stream = s.device().cuda_stream();
    let base = match s.dtype() {
        DType::F32 => s.as_cuda_slice::<f32>()?.device_ptr(&stream).0,
        DType::F16 => s.as_cuda_slice::<half::f16>()?.device_ptr(&stream).0,
        other => candle_core::bail!("slot table: caches of {other:?}"),
    };
    Ok(base + (layout.start_offset() * t.dtype().size_in_bytes()) as u64)
}
