//! Device time op by op, without a profiler: [`OpClock`].

use std::time::Duration;

use realm_core::backend::BackendResult;

use crate::GpuBackend;

/// Device time between marks on this thread's CUDA stream, for timing ops
/// as a recorded step runs them: back to back, with no wait for the host.
///
/// [`OpClock::hold`] stalls the stream for a while (a kernel that sleeps
/// on the device's timer), so that the ops the host launches next queue up
/// behind it and then run one after another without the host's launch
/// latency between them; a mark before and after each op then gives the
/// op's device time. Made by [`GpuBackend::op_clock`], on CUDA devices.
#[derive(Debug)]
pub struct OpClock {
    #[cfg(feature = "cuda")]
    marks: cuda::Marks,
    #[cfg(not(feature = "cuda"))]
    never: std::convert::Infallible,
}

impl GpuBackend {
    /// A clock of device time between marks on the calling thread's
    /// stream, or `None` off CUDA (candle's CPU device runs each op before
    /// returning).
    ///
    /// ```
    /// use realm_compute_gpu::{GpuBackend, GpuDevice};
    ///
    /// let be = GpuBackend::new(GpuDevice::Cpu)?;
    /// assert!(be.op_clock()?.is_none());
    /// # Ok::<(), realm_core::backend::BackendError>(())
    /// ```
    pub fn op_clock(&self) -> BackendResult<Option<OpClock>> {
        #[cfg(feature = "cuda")]
        if let candle_core::Device::Cuda(d) = &self.device {
            return Ok(Some(OpClock {
                marks: cuda::Marks::new(d.clone()),
            }));
        }
        Ok(None)
    }
}

impl OpClock {
    /// Stalls this thread's stream for `time`: the work launched next
    /// starts when it ends, or when the host has launched it, whichever is
    /// later.
    pub fn hold(&self, time: Duration) -> BackendResult<()> {
        #[cfg(feature = "cuda")]
        return self.marks.hold(time);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = time;
            match self.never {}
        }
    }

    /// Marks this thread's stream where its work now ends.
    pub fn mark(&mut self) -> BackendResult<()> {
        #[cfg(feature = "cuda")]
        return self.marks.mark();
        #[cfg(not(feature = "cuda"))]
        match self.never {}
    }

    /// Waits for the device and returns the time from each mark to the
    /// next (one fewer than the marks), forgetting the marks.
    pub fn take(&mut self) -> BackendResult<Vec<Duration>> {
        #[cfg(feature = "cuda")]
        return self.marks.take();
        #[cfg(not(feature = "cuda"))]
        match self.never {}
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::time::Duration;

    use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
    use candle_core::cuda_backend::cudarc::driver::{CudaEvent, LaunchConfig};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::CudaDevice;
    use realm_core::backend::BackendResult;

    use crate::dev_err;
    use crate::fused::Kernel;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/hold.ptx"));

    /// Timed events recorded on the stream, and spare ones to record again.
    pub(super) struct Marks {
        device: CudaDevice,
        marks: Vec<CudaEvent>,
        spare: Vec<CudaEvent>,
    }

    impl std::fmt::Debug for Marks {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Marks({} recorded)", self.marks.len())
        }
    }

    impl Marks {
        pub(super) fn new(device: CudaDevice) -> Self {
            Self {
                device,
                marks: Vec::new(),
                spare: Vec::new(),
            }
        }

        pub(super) fn hold(&self, time: Duration) -> BackendResult<()> {
            const OP: &str = "hold";
            let ns = u64::try_from(time.as_nanos()).unwrap_or(u64::MAX);
            let kernel = Kernel::load(&self.device, "hold_stream", "realm_hold", PTX)
                .map_err(dev_err(OP))?;
            let mut b = kernel.args();
            b.arg(&ns);
            let cfg = LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the kernel's one parameter is a count of nanoseconds,
            // and it touches no memory.
            unsafe { b.launch(cfg) }.map_err(dev_err(OP))
        }

        pub(super) fn mark(&mut self) -> BackendResult<()> {
            const OP: &str = "mark";
            let stream = self.device.cuda_stream();
            let event = match self.spare.pop() {
                Some(e) => e,
                None => stream
                    .context()
                    .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                    .w()
                    .map_err(dev_err(OP))?,
            };
            event.record(&stream).w().map_err(dev_err(OP))?;
            self.marks.push(event);
            Ok(())
        }

        pub(super) fn take(&mut self) -> BackendResult<Vec<Duration>> {
            const OP: &str = "take";
            let times = self
                .marks
                .windows(2)
                .map(|w| {
                    let ms = w[0].elapsed_ms(&w[1]).w().map_err(dev_err(OP))?;
                    Ok(Duration::from_secs_f64(f64::from(ms.max(0.0)) / 1e3))
                })
                .collect();
            self.spare.append(&mut self.marks);
            times
        }
    }
}
