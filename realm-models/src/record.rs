//! A scratch's recorded decode step, and when it records again after a
//! recording (or a replay) failed.
//!
//! A failure may be the step's own, which would come back every time, or
//! another call's: a CUDA context keeps the error of a call that cannot
//! return one (a free) in one slot for every thread, and the next call of
//! any thread fails with it, a captured op too. So a scratch does not give
//! up at the first failure: it runs [`RETRY_AFTER`] static steps op by op,
//! then records again, and only after [`RECORD_TRIES`] failures in a row
//! runs every step op by op for good.

use realm_core::backend::Backend;

/// Failures in a row (recordings or replays) after which a scratch runs
/// every step op by op.
pub(crate) const RECORD_TRIES: u32 = 3;

/// Static steps a scratch runs op by op after a failure before it records
/// again.
pub(crate) const RETRY_AFTER: u32 = 64;

/// What a static step is for: the sessions (in row order), the cache
/// positions it spans and the model.
pub(crate) type StepKey = (Vec<u64>, usize, u64);

/// A scratch's recorded decode step.
#[derive(Debug)]
pub(crate) struct Recorded<B: Backend> {
    /// The recording, and what it is for.
    /// (Boxed: a backend's recording can be large, and most sessions
    /// never hold one.)
    pub(crate) ready: Option<Box<(StepKey, B::Recording)>>,
    /// The last step run op by op: a step is recorded when the same one
    /// comes twice in a row, so that batches whose sessions change from
    /// step to step are not recorded every step.
    pub(crate) seen: Option<StepKey>,
    /// Why the last recording or replay failed, until a recording
    /// succeeds.
    failed: Option<String>,
    /// Failures since the last recording that succeeded.
    failures: u32,
    /// Static steps still to run op by op after a failure.
    wait: u32,
}

impl<B: Backend> Default for Recorded<B> {
    fn default() -> Self {
        Self {
            ready: None,
            seen: None,
            failed: None,
            failures: 0,
            wait: 0,
        }
    }
}

impl<B: Backend> Recorded<B> {
    /// Whether this static step may replay or be recorded; counts the
    /// step. False for [`RETRY_AFTER`] steps after a failure, and for
    /// good after [`RECORD_TRIES`] failures in a row.
    pub(crate) fn may_record(&mut self) -> bool {
        if self.failures >= RECORD_TRIES {
            return false;
        }
        if self.wait > 0 {
            self.wait -= 1;
            return false;
        }
        true
    }

    /// Whether a failure since this step's [`Recorded::may_record`] keeps
    /// it from being recorded.
    pub(crate) fn waiting(&self) -> bool {
        self.failures >= RECORD_TRIES || self.wait > 0
    }

    /// Notes a failed recording or replay (`why`): the steps after it run
    /// op by op for a while, or for good.
    pub(crate) fn fail(&mut self, why: String) {
        self.ready = None;
        self.seen = None;
        self.failed = Some(why);
        self.failures += 1;
        self.wait = RETRY_AFTER;
    }

    /// Notes a recording that succeeded: failures before it no longer
    /// count.
    pub(crate) fn succeeded(&mut self) {
        self.failed = None;
        self.failures = 0;
    }

    /// Why the last recording or replay failed, unless a recording has
    /// succeeded since.
    pub(crate) fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use realm_compute_cpu::CpuBackend;

    use super::*;

    /// Steps `r` lets record among the next `n`.
    fn allowed(r: &mut Recorded<CpuBackend>, n: u32) -> u32 {
        (0..n).filter(|_| r.may_record()).count() as u32
    }

    #[test]
    fn a_failure_waits_and_three_in_a_row_give_up() {
        let mut r = Recorded::<CpuBackend>::default();
        assert_eq!(allowed(&mut r, 5), 5);
        r.seen = Some((vec![1], 256, 0));
        r.fail("first".into());
        assert!(r.waiting() && r.seen.is_none());
        assert_eq!(r.failure(), Some("first"));
        // The steps after a failure run op by op, then one records again.
        assert_eq!(allowed(&mut r, RETRY_AFTER), 0);
        assert!(!r.waiting());
        assert!(r.may_record());
        for i in 1..RECORD_TRIES {
            r.fail(format!("again {i}"));
            assert_eq!(
                allowed(&mut r, RETRY_AFTER + 1),
                u32::from(i + 1 < RECORD_TRIES)
            );
        }
        // Given up: no step records again.
        assert!(r.waiting());
        assert_eq!(allowed(&mut r, 10 * RETRY_AFTER), 0);
        assert_eq!(r.failure(), Some("again 2"));
    }

    #[test]
    fn a_recording_that_succeeds_clears_the_failures() {
        let mut r = Recorded::<CpuBackend>::default();
        for _ in 1..RECORD_TRIES {
            r.fail("failed".into());
            assert_eq!(allowed(&mut r, RETRY_AFTER + 1), 1);
        }
        r.succeeded();
        assert_eq!(r.failure(), None);
        // As many failures as ever before it gives up.
        for i in 1..=RECORD_TRIES {
            r.fail("failed".into());
            assert_eq!(
                allowed(&mut r, RETRY_AFTER + 1),
                u32::from(i < RECORD_TRIES)
            );
        }
    }
}
