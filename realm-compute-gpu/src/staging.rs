//! Host memory a workspace keeps for reading device values in place
//! ([`realm_core::backend::BackendCore::read_on_host`]). On CUDA it is
//! page-locked: the device copies into it directly, at the link's full
//! speed, and the caller reads it there. A download into pageable memory
//! goes through the driver's own page-locked buffer instead, one more pass
//! over the values on the host (llama.cpp keeps its outputs in page-locked
//! memory for the same reason).

use candle_core::Tensor;

/// Staging memory for [`Staging::read`], grown to the largest read.
#[derive(Debug, Default)]
pub(crate) struct Staging {
    /// Page-locked memory of the CUDA context of the last read.
    #[cfg(feature = "cuda")]
    pinned: Option<candle_core::cuda_backend::cudarc::driver::PinnedHostSlice<f32>>,
}

/// A workspace may be dropped on a thread that never ran CUDA work: the
/// page-locked memory goes back through its context, made current first.
#[cfg(feature = "cuda")]
impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(p) = &self.pinned {
            let ctx = p.context();
            ctx.record_err(ctx.bind_to_thread());
        }
    }
}

impl Staging {
    /// Lends the values of `t` (f32, one dimension), in host memory, to
    /// `read`.
    pub(crate) fn read<R>(
        &mut self,
        t: &Tensor,
        read: impl FnOnce(&[f32]) -> R,
    ) -> candle_core::Result<R> {
        #[cfg(feature = "cuda")]
        if t.device().is_cuda() {
            return self.read_cuda(t, read);
        }
        Ok(read(&t.to_vec1::<f32>()?))
    }

    /// [`Staging::read`] of contiguous values on a CUDA device: one copy
    /// into the page-locked memory, on the tensor's stream after the work
    /// queued there.
    #[cfg(feature = "cuda")]
    fn read_cuda<R>(
        &mut self,
        t: &Tensor,
        read: impl FnOnce(&[f32]) -> R,
    ) -> candle_core::Result<R> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::WrapErr;
        use candle_core::Storage;

        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else {
            candle_core::bail!("read on host: values on another device");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("read on host: values must be contiguous");
        };
        let len = b - a;
        let stream = s.device().cuda_stream();
        let fits = |p: &candle_core::cuda_backend::cudarc::driver::PinnedHostSlice<f32>| {
            p.len() >= len && std::sync::Arc::ptr_eq(p.context(), stream.context())
        };
        let pinned = match self.pinned.take() {
            Some(p) if fits(&p) => p,
            old => {
                // The old memory goes back, through its own context, before
                // the new is taken.
                if let Some(o) = &old {
                    o.context().bind_to_thread().w()?;
                }
                drop(old);
                // Flags 0: cached memory, which the host reads at full speed
                // (cudarc's `alloc_pinned` asks for write-combined memory,
                // made for the host to write and slow for it to read).
                // SAFETY: the memory starts uninitialised; the host reads
                // only its first `len` values below, after the copy from the
                // device wrote them and the stream finished it.
                unsafe { stream.context().alloc_pinned_with_flags::<f32>(len, 0) }.w()?
            }
        };
        let pinned = self.pinned.insert(pinned);
        let view = s.as_cuda_slice::<f32>()?.slice(a..b);
        stream.memcpy_dtoh(&view, pinned).w()?;
        // Waits as the context waits for its stream (spinning, by default),
        // rather than on the slice's own event, whose blocking wait puts the
        // thread to sleep; the event has completed by then.
        stream.synchronize().w()?;
        let host = pinned.as_slice().w()?;
        Ok(read(&host[..len]))
    }
}
