//! Values that must be dropped on the thread that made them, let go on
//! another: each is kept until its own thread next asks for its strays.
//!
//! candle's upload-cache guard counts down the cache of whichever thread
//! drops it. A step left open by a panic, whose workspace is then dropped
//! on another thread, would leave its thread's cache on for good (so that
//! thread's later uploads would fill the process-wide parameter cache
//! without the gate that orders them); instead its guard waits here for
//! that thread's next step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;

/// Values kept for the threads that must drop them.
pub(crate) struct Strays<T> {
    /// Whether any value is kept: the common case takes no lock.
    any: AtomicBool,
    kept: Mutex<Vec<(ThreadId, T)>>,
}

impl<T> Strays<T> {
    pub(crate) const fn new() -> Self {
        Self {
            any: AtomicBool::new(false),
            kept: Mutex::new(Vec::new()),
        }
    }

    /// Keeps `value` until `thread` calls [`Strays::drop_mine`]. A value
    /// of a thread that has ended stays (it must not be dropped on
    /// another).
    pub(crate) fn keep(&self, thread: ThreadId, value: T) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.push((thread, value));
        self.any.store(true, Ordering::Release);
    }

    /// Drops the values kept for this thread, here; returns how many.
    pub(crate) fn drop_mine(&self) -> usize {
        if !self.any.load(Ordering::Acquire) {
            return 0;
        }
        let me = std::thread::current().id();
        let mine: Vec<T> = {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let (mine, others): (Vec<_>, Vec<_>) = kept.drain(..).partition(|(t, _)| *t == me);
            *kept = others;
            self.any.store(!kept.is_empty(), Ordering::Release);
            mine.into_iter().map(|(_, v)| v).collect()
        };
        // Dropped outside the lock, here.
        let n = mine.len();
        drop(mine);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// How many `Counted` values this thread has dropped.
        static DROPPED: Cell<usize> = const { Cell::new(0) };
    }

    /// Counts its drop on the thread that drops it, as candle's guard
    /// counts its cache down.
    struct Counted;

    impl Drop for Counted {
        fn drop(&mut self) {
            DROPPED.with(|d| d.set(d.get() + 1));
        }
    }

    #[test]
    fn strays_are_dropped_on_their_own_thread() {
        let strays = std::sync::Arc::new(Strays::new());
        assert_eq!(strays.drop_mine(), 0);
        let me = std::thread::current().id();
        // Two values of this thread, let go on another thread, which also
        // keeps one of its own.
        let other = {
            let strays = strays.clone();
            std::thread::spawn(move || {
                strays.keep(me, Counted);
                strays.keep(me, Counted);
                strays.keep(std::thread::current().id(), Counted);
                let id = std::thread::current().id();
                // Not this thread's to drop.
                assert_eq!(strays.drop_mine(), 1);
                assert_eq!(DROPPED.with(Cell::get), 1);
                id
            })
            .join()
            .unwrap()
        };
        assert_ne!(other, me);
        assert_eq!(DROPPED.with(Cell::get), 0);
        assert_eq!(strays.drop_mine(), 2);
        assert_eq!(DROPPED.with(Cell::get), 2);
        assert_eq!(strays.drop_mine(), 0);
        // A value of a thread that ended stays kept, never dropped here.
        strays.keep(other, Counted);
        assert_eq!(strays.drop_mine(), 0);
        assert_eq!(DROPPED.with(Cell::get), 2);
    }
}
