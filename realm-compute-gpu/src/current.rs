//! A device's CUDA context made current on the thread that frees its
//! memory.
//!
//! cudarc frees device memory on the freeing thread's stream (candle's
//! handle to CUDA's per-thread stream) without making the memory's context
//! current first. On a thread that has made no CUDA call, such as one a
//! runtime drops a tenant's session on, the free then fails: the memory
//! is lost, and the error waits in cudarc's one slot for every thread to
//! fail some other caller's next call. So the types that own device memory
//! call [`make_current`] as they are dropped, before their fields go.

use candle_core::Device;

/// Makes `device`'s CUDA context current on this thread (nothing on
/// other devices), without reading cudarc's error slot: cudarc's own
/// `bind_to_thread` would take an error left there and return it instead
/// of making the context current.
#[cfg(feature = "cuda")]
pub(crate) fn make_current(device: &Device) {
    use candle_core::cuda_backend::cudarc::driver::result::ctx;

    let Device::Cuda(cuda) = device else {
        return;
    };
    let want = cuda.cuda_stream().context().cu_ctx();
    if !matches!(ctx::get_current(), Ok(Some(c)) if c == want) {
        // SAFETY: `want` is the context of `device`, which holds it (a
        // retained primary context), so the handle is valid. Making it
        // current only changes which context this thread's later driver
        // calls use, and every CUDA call of candle, cudarc and this crate
        // makes its own context current first. A failure leaves the thread
        // as it was, and the free reports its error as it would have.
        let _ = unsafe { ctx::set_current(want) };
    }
}

/// Off CUDA no context needs to be current.
#[cfg(not(feature = "cuda"))]
pub(crate) fn make_current(_device: &Device) {}
