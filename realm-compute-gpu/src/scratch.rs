//! Ordering of candle's matrix-product scratch between host threads.
//!
//! candle quantizes a product's input into one scratch buffer per device
//! (one for its vector kernels, up to 8 rows, one for its matrix kernels),
//! and grows the buffer, freeing the old one, when a product needs more.
//! On CUDA every host thread launches on its own stream (candle uses the
//! per-thread default stream), so two tenants' products on two threads
//! could run at once and overwrite each other's quantized input. Each
//! product therefore goes through [`Scratch`]:
//! - one product at a time is launched, under a lock;
//! - each product is followed by an event on its thread's stream, and
//!   when the thread launching differs from the last one, its stream first
//!   waits for that event (on the device; the host does not wait);
//! - growth is counted as an epoch: a recorded step holds the scratch's
//!   address, so a recording from an older epoch is stale, and a recording
//!   that would grow the scratch is refused (the growth would be made, and
//!   freed, inside the graph).
//!
//! A replay goes through the same lock, so that its staleness check and its
//! launch are one step that no growth can come between. So do candle's
//! float products (cuBLAS, in attention over long chunks), whose workspace
//! every thread's stream shares the same way.

use std::sync::Mutex;
use std::thread::ThreadId;

use candle_core::Device;
use realm_core::backend::BackendError;

use crate::dev_err;

/// The state behind [`Scratch`]'s lock.
#[derive(Debug, Default)]
struct State {
    /// The most `rows * padded columns` a product has had, for candle's
    /// vector kernels (up to 8 rows) and its matrix kernels.
    vector_need: usize,
    matrix_need: usize,
    /// Bumped whenever either need grows.
    epoch: u64,
    /// The thread that launched the last product.
    last: Option<ThreadId>,
    /// Recorded after the last product.
    #[cfg(feature = "cuda")]
    event: Option<cuda::Event>,
}

/// What a product is launched within (see the module's text).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    state: Mutex<State>,
}

/// Why a product or replay could not go through [`Scratch`].
#[derive(Debug)]
pub(crate) enum ScratchError {
    /// The product would grow candle's scratch while recording.
    GrowsWhileRecording,
    /// The recording's epoch is not the current one.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // Only CUDA replays.
    Stale,
    /// The device failed.
    Device(candle_core::Error),
}

/// Maps a [`ScratchError`] to a [`BackendError`] for `op`.
pub(crate) fn scratch_err(op: &'static str) -> impl Fn(ScratchError) -> BackendError {
    move |e| match e {
        ScratchError::GrowsWhileRecording => BackendError::InvalidParameter {
            op,
            what: "a product recorded would grow candle's scratch (run it unrecorded first)",
        },
        ScratchError::Stale => BackendError::InvalidParameter {
            op,
            what: "the recording is stale: candle's scratch has grown since",
        },
        ScratchError::Device(e) => dev_err(op)(e),
    }
}

impl From<candle_core::Error> for ScratchError {
    fn from(e: candle_core::Error) -> Self {
        Self::Device(e)
    }
}

impl Scratch {
    /// The current epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent across a panic in a launch: it is only
        // written after the launch returns.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `launch`, a product of `rows` by `cols` on `device`, ordered
    /// after the last product of any other thread. `recording` says that
    /// this thread's stream is being captured: nothing runs now, so nothing
    /// is ordered, but the product must not grow the scratch.
    pub(crate) fn product<R>(
        &self,
        device: &Device,
        recording: bool,
        rows: usize,
        cols: usize,
        launch: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R, ScratchError> {
        let mut st = self.lock();
        // candle pads columns to 512 and uses its vector kernels up to 8
        // rows; its scratch grows with rows times padded columns.
        let need = rows.saturating_mul(cols.next_multiple_of(512));
        let vector = rows <= 8;
        let grows = need > st.need(vector);
        if grows && recording {
            return Err(ScratchError::GrowsWhileRecording);
        }
        if grows {
            st.epoch += 1;
        }
        let out = Self::run(&mut st, device, recording, launch);
        match &out {
            // The scratch is as large as that only once a product used it.
            Ok(_) if grows => *st.need_mut(vector) = need,
            Ok(_) => {}
            // candle may have grown (and freed) its scratch before failing.
            Err(_) => st.epoch += 1,
        }
        out
    }

    /// Runs `launch`, ops that use a resource every thread's stream shares
    /// (cuBLAS's workspace, for candle's float products), ordered like a
    /// product.
    pub(crate) fn shared<R>(
        &self,
        device: &Device,
        recording: bool,
        launch: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R, ScratchError> {
        Self::run(&mut self.lock(), device, recording, launch)
    }

    fn run<R>(
        st: &mut State,
        device: &Device,
        recording: bool,
        launch: impl FnOnce() -> candle_core::Result<R>,
    ) -> Result<R, ScratchError> {
        if recording {
            return Ok(launch()?);
        }
        st.before(device)?;
        // Marked even when it fails: it may have queued some kernels.
        let out = launch();
        let marked = st.after(device);
        let out = out?;
        marked?;
        Ok(out)
    }

    /// Runs `launch`, the replay of a recording made at `epoch`, ordered
    /// like a product; [`ScratchError::Stale`] if the scratch has grown
    /// since.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))] // Only CUDA replays.
    pub(crate) fn replay(
        &self,
        device: &Device,
        epoch: u64,
        launch: impl FnOnce() -> candle_core::Result<()>,
    ) -> Result<(), ScratchError> {
        let mut st = self.lock();
        if st.epoch != epoch {
            return Err(ScratchError::Stale);
        }
        Self::run(&mut st, device, false, launch)
    }
}

impl State {
    /// The largest product (rows times padded columns) of vector products
    /// (`vector`) or of matrix products so far.
    fn need(&self, vector: bool) -> usize {
        match vector {
            true => self.vector_need,
            false => self.matrix_need,
        }
    }

    fn need_mut(&mut self, vector: bool) -> &mut usize {
        match vector {
            true => &mut self.vector_need,
            false => &mut self.matrix_need,
        }
    }

    /// Orders this thread's stream after the last product of another.
    fn before(&mut self, device: &Device) -> candle_core::Result<()> {
        let me = std::thread::current().id();
        let switched = self.last.is_some_and(|t| t != me);
        self.last = Some(me);
        #[cfg(feature = "cuda")]
        if let (true, Device::Cuda(dev), Some(ev)) = (switched, device, &self.event) {
            return ev.wait(dev);
        }
        let _ = (device, switched);
        Ok(())
    }

    /// Marks the end of this thread's product for the next thread.
    fn after(&mut self, device: &Device) -> candle_core::Result<()> {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(dev) = device {
            match &self.event {
                Some(ev) => ev.record(dev)?,
                None => self.event = Some(cuda::Event::recorded(dev)?),
            }
        }
        let _ = device;
        Ok(())
    }
}

/// CUDA events on candle's per-thread streams.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{sys, CudaEvent};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, Result};

    /// An event without timing, recorded on some thread's stream.
    pub(super) struct Event(CudaEvent);

    impl std::fmt::Debug for Event {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Event")
        }
    }

    impl Event {
        /// A new event, recorded on this thread's stream.
        pub(super) fn recorded(dev: &CudaDevice) -> Result<Self> {
            let stream = dev.cuda_stream();
            let ev = stream
                .context()
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
                .w()?;
            ev.record(&stream).w()?;
            Ok(Self(ev))
        }

        /// Records the event again on this thread's stream.
        pub(super) fn record(&self, dev: &CudaDevice) -> Result<()> {
            self.0.record(&dev.cuda_stream()).w()
        }

        /// Makes this thread's stream wait for the event's last record.
        pub(super) fn wait(&self, dev: &CudaDevice) -> Result<()> {
            dev.cuda_stream().wait(&self.0).w()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_bumps_the_epoch_and_is_refused_while_recording() {
        let s = Scratch::default();
        let dev = Device::Cpu;
        let run = |rec, rows, cols| s.product(&dev, rec, rows, cols, || Ok(()));
        assert_eq!(s.epoch(), 0);
        run(false, 1, 576).unwrap();
        assert_eq!(s.epoch(), 1);
        // Same padded size (576 and 1000 both pad to 1024): no growth.
        run(false, 1, 1000).unwrap();
        run(true, 1, 1000).unwrap();
        assert_eq!(s.epoch(), 1);
        // More rows of the vector kernels while recording: refused, and
        // nothing is counted.
        assert!(matches!(
            run(true, 2, 576),
            Err(ScratchError::GrowsWhileRecording)
        ));
        assert_eq!(s.epoch(), 1);
        // The matrix kernels' scratch is apart from the vector kernels'.
        run(false, 9, 576).unwrap();
        assert_eq!(s.epoch(), 2);
        run(false, 8, 576).unwrap();
        assert_eq!(s.epoch(), 3);
        run(true, 8, 576).unwrap();
        run(true, 9, 576).unwrap();
        assert_eq!(s.epoch(), 3);
    }

    /// A product that fails made recordings stale (candle may have grown
    /// its scratch first) and does not count as the size it asked for: the
    /// next product of that size grows again.
    #[test]
    fn a_failed_product_counts_as_growth_but_not_as_size() {
        let s = Scratch::default();
        let dev = Device::Cpu;
        let fail = || -> candle_core::Result<()> { Err(candle_core::Error::Msg("oom".into())) };
        s.product(&dev, false, 1, 64, || Ok(())).unwrap();
        assert_eq!(s.epoch(), 1);
        assert!(s.product(&dev, false, 4, 64, fail).is_err());
        assert_eq!(s.epoch(), 3);
        assert!(s.product(&dev, false, 1, 64, fail).is_err());
        assert_eq!(s.epoch(), 4);
        s.product(&dev, false, 4, 64, || Ok(())).unwrap();
        assert_eq!(s.epoch(), 5);
        s.product(&dev, false, 4, 64, || Ok(())).unwrap();
        assert_eq!(s.epoch(), 5);
    }

    #[test]
    fn a_replay_of_an_older_epoch_is_stale() {
        let s = Scratch::default();
        let dev = Device::Cpu;
        let e = s.epoch();
        let mut launched = 0;
        s.replay(&dev, e, || {
            launched += 1;
            Ok(())
        })
        .unwrap();
        s.product(&dev, false, 1, 64, || Ok(())).unwrap();
        assert!(matches!(
            s.replay(&dev, e, || {
                launched += 1;
                Ok(())
            }),
            Err(ScratchError::Stale)
        ));
        assert_eq!(launched, 1);
    }

    #[test]
    fn the_last_thread_is_remembered() {
        let s = Scratch::default();
        let dev = Device::Cpu;
        s.product(&dev, false, 1, 64, || Ok(())).unwrap();
        assert_eq!(s.lock().last, Some(std::thread::current().id()));
        let other = std::thread::scope(|t| {
            t.spawn(|| {
                s.product(&dev, false, 1, 64, || Ok(())).unwrap();
                std::thread::current().id()
            })
            .join()
            .unwrap()
        });
        assert_eq!(s.lock().last, Some(other));
        // A recording runs nothing now, so it orders nothing.
        s.product(&dev, true, 1, 64, || Ok(())).unwrap();
        assert_eq!(s.lock().last, Some(other));
    }
}
