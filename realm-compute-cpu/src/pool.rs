//! A small fork-join pool for the matmuls (and attention) of a decode step.
//!
//! A decode step runs a few hundred matrix-vector products of tens of
//! microseconds each. Handing each one to rayon from outside its pool costs
//! two thread wake-ups per product (the worker, then the blocked caller),
//! which is a large share of the step. Here the calling thread takes part
//! in the work, and the helper threads spin for a short while after each
//! job, so the next product of the step finds them awake; only after
//! [`SPIN`] without work do they sleep on a condition variable.
//!
//! One job runs at a time. A caller that finds the pool busy (another
//! session's step) gets `false` back and runs the work some other way.
//! Which thread computes a chunk never changes its result: the kernels are
//! per output element.

use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle helper keeps spinning before it sleeps.
const SPIN: Duration = Duration::from_micros(800);

/// The job being run: `f(chunk)` for every chunk in `0..n_chunks`.
type Job = *const (dyn Fn(usize) + Sync + 'static);

/// `state` layout: the job's generation in the high 32 bits, [`OPEN`] while
/// helpers may still join, and the number that joined in the low bits.
const OPEN: u64 = 1 << 31;
const JOINED: u64 = OPEN - 1;

struct Shared {
    /// Generation, open flag and join count of the current job (see
    /// [`OPEN`]). A helper joins by incrementing the count while the job
    /// is open; the caller closes it once every chunk is taken, so a helper
    /// that wakes late never touches a finished job.
    state: AtomicU64,
    /// Written by the caller before the job is opened, read by helpers that
    /// joined it, until they count themselves in `done`.
    job: UnsafeCell<Option<Job>>,
    n_chunks: AtomicUsize,
    /// The next chunk to take.
    next: AtomicUsize,
    /// Helpers that joined the current job and finished it.
    done: AtomicUsize,
    /// A chunk panicked on a helper.
    panicked: AtomicBool,
    /// Helpers asleep on `wake`.
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

// SAFETY: `job` is the only field that is not already `Sync`. It is written
// only by the caller that holds `SpinPool::busy`, while the job is closed
// and every helper that joined the previous one has counted itself done, so
// no helper reads it; helpers read it only after joining an open job
// (acquire, after the write) and before counting themselves done
// (release). The closure it points to is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

impl Shared {
    /// Takes chunks of the current job until none are left; true if one
    /// panicked. Only the caller, or a helper that joined the job.
    fn work(&self) -> bool {
        // SAFETY: the job is published and not withdrawn before this
        // thread is done with it (see `Sync` above).
        let job = unsafe { *self.job.get() };
        let Some(job) = job else { return false };
        let n = self.n_chunks.load(Ordering::Relaxed);
        let mut panicked = false;
        loop {
            let c = self.next.fetch_add(1, Ordering::Relaxed);
            if c >= n {
                return panicked;
            }
            // SAFETY: the caller keeps the closure alive until every helper
            // that joined has counted itself done, which is after this call.
            let f = unsafe { &*job };
            panicked |= panic::catch_unwind(AssertUnwindSafe(|| f(c))).is_err();
        }
    }

    /// Joins the job of generation `gen` if it is still open.
    fn join(&self, gen: u64) -> bool {
        let mut st = self.state.load(Ordering::Acquire);
        while st >> 32 == gen && st & OPEN != 0 {
            match self
                .state
                .compare_exchange_weak(st, st + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => st = now,
            }
        }
        false
    }
}

/// Helper threads that run [`SpinPool::run`] jobs with the caller.
pub(crate) struct SpinPool {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// Held by the caller whose job is running.
    busy: AtomicBool,
}

impl std::fmt::Debug for SpinPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpinPool")
            .field("helpers", &self.helpers.len())
            .finish()
    }
}

/// Busy-waits politely: a pause at first, then a yield of the time slice,
/// so that a waiting thread does not starve the one it waits for when the
/// machine has fewer free cores than threads.
fn relax(spins: u32) {
    if spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn helper_loop(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Wait for a new job: spin, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        let gen = loop {
            let g = s.state.load(Ordering::Acquire) >> 32;
            if g != seen {
                break g;
            }
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            spins = spins.saturating_add(1);
            if spins < 64 || !spins.is_multiple_of(16) || start.elapsed() < SPIN {
                relax(spins);
                continue;
            }
            let mut guard = s.lock.lock().unwrap_or_else(PoisonError::into_inner);
            s.sleeping.fetch_add(1, Ordering::SeqCst);
            while s.state.load(Ordering::SeqCst) >> 32 == seen && !s.stop.load(Ordering::SeqCst) {
                guard = s.wake.wait(guard).unwrap_or_else(PoisonError::into_inner);
            }
            s.sleeping.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
        };
        seen = gen;
        if s.join(gen) {
            if s.work() {
                s.panicked.store(true, Ordering::Relaxed);
            }
            s.done.fetch_add(1, Ordering::Release);
        }
    }
}

impl SpinPool {
    /// A pool with `helpers` threads besides the caller; fewer if threads
    /// cannot be started (the caller then does more of the work).
    pub(crate) fn new(helpers: usize) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            n_chunks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let helpers = (0..helpers)
            .map_while(|i| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("realm-spin-{i}"))
                    .spawn(move || helper_loop(&s))
                    .ok()
            })
            .collect();
        Self {
            shared,
            helpers,
            busy: AtomicBool::new(false),
        }
    }

    /// Runs `f(c)` for every `c` in `0..n_chunks`, on the caller and any
    /// helpers that join in time. Returns `false` without running anything
    /// when the pool has no helpers or another caller's job is running.
    pub(crate) fn run(&self, n_chunks: usize, f: &(dyn Fn(usize) + Sync)) -> bool {
        if self.helpers.is_empty()
            || self
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased. The pointer is published to
        // the helpers below and withdrawn before this function returns,
        // after every helper that joined has counted itself done, so it
        // never outlives `f`.
        let job: Job = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), Job>(f as *const _)
        };
        // SAFETY: `busy` is held and the previous job is closed with all of
        // its helpers done, so no helper reads `job` now.
        unsafe { *s.job.get() = Some(job) };
        s.n_chunks.store(n_chunks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        let gen = (s.state.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xffff_ffff;
        // Generation 0 means "no job yet" to a new helper.
        let gen = gen.max(1);
        s.state.store((gen << 32) | OPEN, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(PoisonError::into_inner);
            s.wake.notify_all();
        }
        let mine = s.work();
        // Every chunk is taken: close the job to latecomers, then wait for
        // those that joined (they are running their last chunk).
        let joined = (s.state.fetch_and(!OPEN, Ordering::AcqRel) & JOINED) as usize;
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) != joined {
            spins = spins.saturating_add(1);
            relax(spins);
        }
        // SAFETY: the job is closed and every helper that joined is done,
        // so none reads `job`.
        unsafe { *s.job.get() = None };
        let theirs = s.panicked.swap(false, Ordering::Relaxed);
        self.busy.store(false, Ordering::Release);
        if mine || theirs {
            // A kernel panicked (a bug): report it on the caller, as rayon
            // would.
            panic::resume_unwind(Box::new("a matmul chunk panicked"));
        }
        true
    }
}

/// The work of [`SpinPool::run_chunks`]: chunk index and the two chunks.
type ChunkJob<'a, A, B> = dyn Fn(usize, &mut [A], &mut [B]) + Sync + 'a;

/// A slice cut into chunks of `chunk` elements that threads take one each.
struct Chunks<T> {
    ptr: *mut T,
    len: usize,
    chunk: usize,
}

// SAFETY: a `Chunks` only hands out the disjoint chunks of one `&mut [T]`
// (see `get`), so sharing it between threads is sharing `&mut` chunks of
// `T: Send` data, one thread each.
unsafe impl<T: Send> Sync for Chunks<T> {}

impl<T> Chunks<T> {
    fn new(s: &mut [T], chunk: usize) -> Self {
        Self {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            chunk,
        }
    }

    /// Chunk `c` (short or empty past the end).
    ///
    /// # Safety
    /// No other reference to chunk `c` may be live, and the slice given to
    /// [`Chunks::new`] must still be mutably borrowed for the result's
    /// lifetime.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self, c: usize) -> &mut [T] {
        let start = c.saturating_mul(self.chunk).min(self.len);
        let end = start.saturating_add(self.chunk).min(self.len);
        // SAFETY: `start..end` lies inside the slice, and the caller
        // promises it is borrowed by nobody else.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

impl SpinPool {
    /// [`SpinPool::run`] over matching chunks of two slices: `f(c, a_c, b_c)`
    /// with `a_c` the `c`-th chunk of `a_chunk` elements of `a` and `b_c`
    /// that of `b`, for every chunk of `a` (like rayon's
    /// `a.par_chunks_mut(..).zip(b.par_chunks_mut(..)).enumerate()`).
    /// Returns `false`, having run nothing, where `run` would.
    pub(crate) fn run_chunks<A: Send, B: Send>(
        &self,
        (a, a_chunk): (&mut [A], usize),
        (b, b_chunk): (&mut [B], usize),
        f: &ChunkJob<'_, A, B>,
    ) -> bool {
        let n = a.len().div_ceil(a_chunk.max(1));
        let (a, b) = (Chunks::new(a, a_chunk), Chunks::new(b, b_chunk));
        self.run(n, &|c| {
            // SAFETY: `run` calls this closure once for each `c` in `0..n`
            // (chunks are taken by a shared counter), so no two threads
            // hold the same chunk; `a` and `b` stay mutably borrowed by
            // this function until `run` returns, after every chunk is done.
            let (ac, bc) = unsafe { (a.get(c), b.get(c)) };
            f(c, ac, bc)
        })
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self
                .shared
                .lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            // A helper that panicked has nothing left to clean up.
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once() {
        let pool = SpinPool::new(1);
        for n in [0, 1, 2, 7, 64] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            assert!(pool.run(n, &|c| {
                hits[c].fetch_add(1, Ordering::Relaxed);
            }));
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn helpers_wake_after_sleeping() {
        let pool = SpinPool::new(2);
        std::thread::sleep(SPIN * 3);
        let sum = AtomicUsize::new(0);
        assert!(pool.run(100, &|c| {
            sum.fetch_add(c, Ordering::Relaxed);
        }));
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }

    #[test]
    fn chunks_are_disjoint_and_cover_both_slices() {
        let pool = SpinPool::new(2);
        for (len, chunk) in [(0, 3), (10, 3), (12, 4), (7, 7), (5, 9)] {
            let mut a: Vec<usize> = vec![usize::MAX; len];
            let n = len.div_ceil(chunk);
            let mut b = vec![0u32; n * 2];
            assert!(pool.run_chunks((&mut a, chunk), (&mut b, 2), &|c, ac, bc| {
                assert!(!ac.is_empty() && ac.len() <= chunk);
                ac.fill(c);
                for v in bc.iter_mut() {
                    *v += 1;
                }
            }));
            let want: Vec<usize> = (0..len).map(|i| i / chunk).collect();
            assert_eq!(a, want, "len {len}, chunk {chunk}");
            assert!(b.iter().all(|&v| v == 1), "{b:?}");
        }
    }

    #[test]
    fn busy_pool_declines() {
        let pool = SpinPool::new(1);
        let inner = AtomicBool::new(true);
        assert!(pool.run(1, &|_| {
            inner.store(pool.run(1, &|_| {}), Ordering::Relaxed);
        }));
        assert!(!inner.load(Ordering::Relaxed));
    }
}
