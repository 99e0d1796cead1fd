//! Host memory a workspace keeps for reading device values in place
//! ([`realm_core::backend::BackendCore::read_on_host`]). On CUDA it is
//! page-locked: the device copies into it directly, at the link's full
//! speed, and the caller reads it there. A download into pageable memory
//! goes through the driver's own page-locked buffer instead, one more pass
//! over the values on the host (llama.cpp keeps its outputs in page-locked
//! memory for the same reason).

use candle_core::Tensor;

/// Staging memory for [`Staging::read`], as large as the largest buffer
/// read through it (so a batch that grows row by row allocates once).
#[derive(Debug, Default)]
pub(crate) struct Staging {
    /// Page-locked memory of the CUDA context of the last read, every value
    /// initialised. cudarc's drop of it makes its context current first, so
    /// a workspace may be dropped on any thread.
    #[cfg(feature = "cuda")]
    pinned: Option<candle_core::cuda_backend::cudarc::driver::PinnedHostSlice<f32>>,
}

impl Staging {
    /// Lends the values of `t` (f32, one dimension, a prefix of a buffer of
    /// `room` values), in host memory, to `read`; on error `read` is not
    /// called.
    pub(crate) fn read<R>(
        &mut self,
        t: &Tensor,
        room: usize,
        read: impl FnOnce(&[f32]) -> R,
    ) -> candle_core::Result<R> {
        #[cfg(feature = "cuda")]
        if t.device().is_cuda() {
            return self.read_cuda(t, room, read);
        }
        let _ = room;
        Ok(read(&t.to_vec1::<f32>()?))
    }

    /// [`Staging::read`] of contiguous values on a CUDA device: one copy
    /// into the page-locked memory, on the tensor's stream after the work
    /// queued there.
    #[cfg(feature = "cuda")]
    fn read_cuda<R>(
        &mut self,
        t: &Tensor,
        room: usize,
        read: impl FnOnce(&[f32]) -> R,
    ) -> candle_core::Result<R> {
        use candle_core::cuda_backend::cudarc::driver::PinnedHostSlice;
        use candle_core::cuda_backend::WrapErr;

        // An error another call left in cudarc's slot would fail this read
        // instead (and be lost to its own call).
        let device = t.device();
        crate::driver::aside_pending_error(device, || {
            with_cuda_values(t, "read on host", |stream, view| {
                let len = view.len();
                if len == 0 {
                    // Nothing to copy (and no allocation of no bytes, which CUDA
                    // leaves undefined).
                    return Ok(read(&[]));
                }
                let fits = |p: &PinnedHostSlice<f32>| {
                    p.len() >= len && std::sync::Arc::ptr_eq(p.context(), stream.context())
                };
                let pinned = match self.pinned.take() {
                    Some(p) if fits(&p) => p,
                    old => {
                        // The old memory goes back before the new is taken.
                        drop(old);
                        let n = len.max(room);
                        // Flags 0: cached memory, which the host reads at full
                        // speed (cudarc's `alloc_pinned` asks for write-combined
                        // memory, made for the host to write and slow for it to
                        // read).
                        // SAFETY: the memory is uninitialised until the write
                        // below.
                        let mut p =
                            unsafe { stream.context().alloc_pinned_with_flags::<f32>(n, 0) }.w()?;
                        let ptr = p.as_mut_ptr().w()?;
                        // SAFETY: `ptr` is the start of the allocation just made,
                        // of `n` f32 values, which nothing else can reach yet;
                        // zeros are a valid f32, so every value is initialised
                        // from here on and slices of the memory are sound.
                        unsafe { std::ptr::write_bytes(ptr, 0, n) };
                        p
                    }
                };
                // Into the first `len` values only: cudarc copies as many bytes
                // as its destination holds, and the memory may be larger than
                // the buffer's values (a batch of fewer rows than its scratch
                // was made for), whose device allocation then ends first.
                // (`as_mut_slice` waits on the memory's own event, which
                // cudarc records only with event tracking, off in this
                // backend: it returns at once.)
                let host = &mut self.pinned.insert(pinned).as_mut_slice().w()?[..len];
                stream.memcpy_dtoh(&view, host).w()?;
                // The copy is queued, not done (the destination is page-locked,
                // so the driver returns before it ends): this wait is what
                // makes the values readable.
                crate::driver::synchronize(device)?;
                Ok(read(host))
            })
        })
    }
}

/// Copies `t` (contiguous f32 values on a CUDA device) into `out`, on this
/// thread's stream after the work queued there; the copy into pageable
/// memory returns when it is done.
#[cfg(feature = "cuda")]
pub(crate) fn cuda_download(t: &Tensor, out: &mut [f32]) -> candle_core::Result<()> {
    use candle_core::cuda_backend::WrapErr;

    with_cuda_values(t, "download", |stream, view| {
        if view.len() != out.len() {
            candle_core::bail!("download: {} values into {}", view.len(), out.len());
        }
        stream.memcpy_dtoh(&view, out).w()
    })
}

/// Runs `copy` with this thread's stream and the device values of `t`
/// (contiguous f32 values on a CUDA device; `op` names the caller in
/// errors).
#[cfg(feature = "cuda")]
fn with_cuda_values<R>(
    t: &Tensor,
    op: &str,
    copy: impl FnOnce(
        &std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
        candle_core::cuda_backend::cudarc::driver::CudaView<'_, f32>,
    ) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    use candle_core::backend::BackendStorage;
    use candle_core::Storage;

    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        candle_core::bail!("{op}: values on another device");
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: values must be contiguous");
    };
    let stream = s.device().cuda_stream();
    copy(&stream, s.as_cuda_slice::<f32>()?.slice(a..b))
}
