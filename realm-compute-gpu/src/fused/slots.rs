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

    /// Whether the first `rows` rows name `rows` different caches (keys
    /// and values), so that a kernel may write one row's while it reads
    /// another's.
    pub(crate) fn distinct(&self, rows: usize) -> bool {
        let rows = rows.min(SLOT_ROWS);
        (0..rows).all(|r| (0..r).all(|s| self.k[r] != self.k[s] && self.v[r] != self.v[s]))
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

#[cfg(test)]
mod tests {
    use super::{SlotTable, SLOT_ROWS};

    #[test]
    fn a_table_knows_whether_its_rows_share_a_cache() {
        let mut t = SlotTable::none();
        for r in 0..3 {
            t.k[r] = 0x1000 * (r as u64 + 1);
            t.v[r] = 0x9000 * (r as u64 + 1);
        }
        assert!(t.distinct(3));
        // Rows past those asked about are not compared.
        assert!(t.distinct(1));
        t.k[2] = t.k[0];
        assert!(!t.distinct(3));
        assert!(t.distinct(2));
        t.k[2] = 0x5000;
        t.v[1] = t.v[2];
        assert!(!t.distinct(3));
        // The table of no rows names one cache (0) for all of them.
        assert!(!SlotTable::none().distinct(SLOT_ROWS));
    }
}
