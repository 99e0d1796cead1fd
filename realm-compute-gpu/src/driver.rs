//! What this backend does around two habits of cudarc's driver calls.
//!
//! - cudarc frees device memory on the freeing thread's stream (candle's
//!   handle to CUDA's per-thread stream) without making the memory's
//!   context current first. On a thread that has made no CUDA call, such
//!   as one a runtime drops a tenant's session on, the free then fails:
//!   the memory is lost, and the error waits in cudarc's one slot for
//!   every thread to fail some other caller's next call. So the types that
//!   own device memory call [`make_current`] as they are dropped, before
//!   their fields go.
//! - Every cudarc call first takes an error left in that slot and returns
//!   it instead of doing its work; a wait for the device that returns at
//!   once with another thread's error is no wait. [`synchronize`] waits
//!   whatever the slot holds, and leaves it for the next call;
//!   [`aside_pending_error`] runs other calls with the slot emptied, and
//!   fills it again after.

use candle_core::Device;

/// Makes `device`'s CUDA context current on this thread (nothing on
/// other devices), without reading cudarc's error slot: cudarc's own
/// `bind_to_thread` would take an error left there and return it instead
/// of making the context current. It stays current after: a thread that
/// also drives another context of its own (another library's) makes that
/// one current again before its calls, as cudarc and candle do.
#[cfg(feature = "cuda")]
pub(crate) fn make_current(device: &Device) {
    if let Device::Cuda(cuda) = device {
        bind(cuda);
    }
}

/// [`make_current`] of a CUDA device.
#[cfg(feature = "cuda")]
fn bind(cuda: &candle_core::CudaDevice) {
    use candle_core::cuda_backend::cudarc::driver::result::ctx;

    let want = cuda.cuda_stream().context().cu_ctx();
    if !matches!(ctx::get_current(), Ok(Some(c)) if c == want) {
        // SAFETY: `want` is the context of `cuda`, which holds it (a
        // retained primary context), so the handle is valid. Making it
        // current only changes which context this thread's later driver
        // calls use, and every CUDA call of candle, cudarc and this crate
        // makes its own context current first. A failure leaves the thread
        // as it was, and the free reports its error as it would have.
        let _ = unsafe { ctx::set_current(want) };
    }
}

/// Runs `f` with an error another call left in cudarc's slot for every
/// thread taken out of it, then puts that error back (unless `f` left one
/// of its own there): `f`'s cudarc calls do their work, and the error is
/// still there for the call it belongs to.
#[cfg(feature = "cuda")]
pub(crate) fn aside_pending_error<R>(device: &Device, f: impl FnOnce() -> R) -> R {
    let Device::Cuda(cuda) = device else {
        return f();
    };
    let ctx = cuda.cuda_stream().context().clone();
    let pending = ctx.check_err();
    let out = f();
    let left = ctx.check_err();
    ctx.record_err(left.and(pending));
    out
}

/// Off CUDA no context needs to be current.
#[cfg(not(feature = "cuda"))]
pub(crate) fn make_current(_device: &Device) {}

/// Waits for the work this thread queued on `device`, returning the wait's
/// own error only: an error another call left in cudarc's slot is left
/// there (cudarc's wait would return it without waiting).
#[cfg(feature = "cuda")]
pub(crate) fn synchronize(device: &Device) -> candle_core::Result<()> {
    use candle_core::cuda_backend::WrapErr;

    match device {
        Device::Cuda(cuda) => wait(cuda).w(),
        _ => device.synchronize(),
    }
}

/// [`synchronize`] on CUDA, with the driver's error.
#[cfg(feature = "cuda")]
pub(crate) fn wait(
    cuda: &candle_core::CudaDevice,
) -> Result<(), candle_core::cuda_backend::cudarc::driver::DriverError> {
    use candle_core::cuda_backend::cudarc::driver::result::stream;

    bind(cuda);
    let s = cuda.cuda_stream();
    // SAFETY: the stream is candle's handle to this thread's stream of
    // `cuda`'s context, which `bind` made current here.
    unsafe { stream::synchronize(s.cu_stream()) }
}

/// Waits for the work this thread queued on `device`.
#[cfg(not(feature = "cuda"))]
pub(crate) fn synchronize(device: &Device) -> candle_core::Result<()> {
    device.synchronize()
}
