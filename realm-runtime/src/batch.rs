//! Cross-tenant batching: single-token decode steps of sessions on the same
//! model, from any tenants, are gathered by a scheduler thread and run as one
//! batched forward ([`realm_models::Model::forward_batch`]): the weights are
//! read once for every row. The backend is batch invariant, so each row's
//! logits are bit-identical to an unbatched step. A step of a model's only
//! live session has no one to wait for, and runs on its tenant's thread
//! instead: going through the scheduler would only add two thread switches
//! to every token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::{AnyBatchScratch, AnySession, LoadedModel, ModelId};

/// A session coming back from the scheduler, with its step's outcome.
pub(crate) type StepReply = (AnySession, Result<(), String>);

/// One decode step waiting for a batch.
struct Step {
    model: Arc<LoadedModel>,
    session: AnySession,
    token: u32,
    reply: SyncSender<StepReply>,
}

/// Live sessions per model: how many steps a batch can expect.
type Active = Arc<Mutex<HashMap<ModelId, usize>>>;

fn lock(active: &Active) -> std::sync::MutexGuard<'_, HashMap<ModelId, usize>> {
    // Counts stay consistent under a panic (single updates): ignore poison.
    active.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters of the scheduler.
#[derive(Debug, Default)]
struct Counters {
    steps: AtomicU64,
    batches: AtomicU64,
}

/// Batching statistics since the runtime started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Decode steps run by the scheduler.
    pub steps: u64,
    /// Batched forwards they were run in.
    pub batches: u64,
}

/// The scheduler thread and the way to it.
#[derive(Debug)]
pub(crate) struct Batcher {
    tx: Option<Sender<Step>>,
    active: Active,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("model", &self.model.id)
            .field("token", &self.token)
            .finish()
    }
}

impl Batcher {
    /// Starts the scheduler: batches of up to `max_batch` rows, waiting at
    /// most `window` for the steps of the other sessions decoding
    /// ([`wanted`]).
    pub(crate) fn start(max_batch: usize, window: Duration) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let active = Active::default();
        let counters = Arc::new(Counters::default());
        let (a, c) = (active.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name("realm-batcher".into())
            .spawn(move || schedule(rx, a, c, max_batch, window))?;
        Ok(Self {
            tx: Some(tx),
            active,
            counters,
            thread: Some(thread),
        })
    }

    pub(crate) fn session_opened(&self, model: &LoadedModel) {
        *lock(&self.active).entry(model.id.clone()).or_insert(0) += 1;
    }

    pub(crate) fn session_closed(&self, model: &LoadedModel) {
        let mut active = lock(&self.active);
        if let Some(n) = active.get_mut(&model.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                active.remove(&model.id);
            }
        }
    }

    /// Whether `model` has other live sessions than one: only then can a
    /// step find company in a batch.
    pub(crate) fn has_company(&self, model: &LoadedModel) -> bool {
        lock(&self.active).get(&model.id).is_some_and(|&n| n > 1)
    }

    /// Runs one decode step of `session` through the scheduler; `reply` is
    /// the caller's channel for the answer.
    pub(crate) fn step(
        &self,
        model: &Arc<LoadedModel>,
        session: AnySession,
        token: u32,
        reply: &(SyncSender<StepReply>, Receiver<StepReply>),
    ) -> Result<StepReply, String> {
        let tx = self.tx.as_ref().ok_or("scheduler stopped")?;
        let step = Step {
            model: model.clone(),
            session,
            token,
            reply: reply.0.clone(),
        };
        tx.send(step).map_err(|_| "scheduler stopped".to_string())?;
        reply.1.recv().map_err(|_| "scheduler stopped".to_string())
    }

    pub(crate) fn stats(&self) -> BatchStats {
        BatchStats {
            steps: self.counters.steps.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            // The scheduler ends when the channel closes; a panic in it has
            // already failed its callers' steps.
            let _ = t.join();
        }
    }
}

/// The sessions of a model's last two batches: those decoding now.
#[derive(Debug, Default)]
struct Decoding {
    last: Vec<u64>,
    before: Vec<u64>,
}

impl Decoding {
    /// Sessions in either batch.
    fn count(&self) -> usize {
        self.last.len()
            + self
                .before
                .iter()
                .filter(|id| !self.last.contains(id))
                .count()
    }

    fn ran(&mut self, ids: impl IntoIterator<Item = u64>) {
        self.before = std::mem::take(&mut self.last);
        self.last.extend(ids);
    }
}

/// How many steps a batch of `model` waits for (at most `window`): one
/// from each session that stepped in either of its last two batches (two,
/// so that a step that missed one batch is still waited for), at most its
/// live sessions; before its first batch, every live session. A live
/// session that does not step (idle, or prefilling) is waited for by two
/// batches at most, not by every step of the others.
fn wanted(decoding: Option<&Decoding>, live: usize, max_batch: usize) -> usize {
    decoding
        .map_or(live, |d| d.count().min(live))
        .clamp(1, max_batch)
}

/// The scheduler loop: gather, group by model, run, reply.
fn schedule(
    rx: Receiver<Step>,
    active: Active,
    counters: Arc<Counters>,
    max_batch: usize,
    window: Duration,
) {
    let mut scratch: Vec<(Weak<LoadedModel>, AnyBatchScratch)> = Vec::new();
    let mut pending: Vec<Step> = Vec::new();
    let mut decoding: HashMap<ModelId, Decoding> = HashMap::new();
    while let Ok(first) = rx.recv() {
        let live = lock(&active).get(&first.model.id).copied().unwrap_or(1);
        let want = wanted(decoding.get(&first.model.id), live, max_batch);
        pending.push(first);
        let deadline = Instant::now() + window;
        while pending.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(step) => pending.push(step),
                Err(_) => break,
            }
        }
        // Steps already sent join too (a session that starts decoding).
        pending.extend(rx.try_iter());
        scratch.retain(|(w, _)| w.strong_count() > 0);
        // A model whose sessions all closed starts afresh.
        {
            let live = lock(&active);
            decoding.retain(|id, _| live.contains_key(id));
        }
        while !pending.is_empty() {
            let id = pending[0].model.id.clone();
            let (mut group, rest): (Vec<Step>, Vec<Step>) =
                pending.drain(..).partition(|s| s.model.id == id);
            pending = rest;
            let tail = group.split_off(group.len().min(max_batch));
            pending.extend(tail);
            decoding
                .entry(id)
                .or_default()
                .ran(group.iter().map(|s| s.session.id()));
            // A panic fails its batch's callers (their replies go with
            // it), not the scheduler: every tenant's later steps still
            // batch. The scratch it left half-written is made again.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_group(group, &mut scratch, max_batch, &counters)
            }));
            if ran.is_err() {
                scratch.clear();
            }
        }
    }
}

fn run_group(
    mut group: Vec<Step>,
    scratch: &mut Vec<(Weak<LoadedModel>, AnyBatchScratch)>,
    max_batch: usize,
    counters: &Counters,
) {
    let model = group[0].model.clone();
    // Steps arrive in whatever order their tenants' threads sent them; a
    // batch is recorded (on CUDA) for its sessions in order, so one order
    // lets the next steps replay it.
    group.sort_by_key(|s| s.session.id());
    let found = scratch
        .iter()
        .position(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&model)));
    let index = match found {
        Some(i) => Ok(i),
        None => model.batch_scratch(max_batch).map(|s| {
            scratch.push((Arc::downgrade(&model), s));
            scratch.len() - 1
        }),
    };
    let mut forwards = 1;
    let results: Vec<Result<(), String>> = match index {
        Err(e) => vec![Err(e.to_string()); group.len()],
        Ok(i) => {
            let rows: Vec<(&mut AnySession, u32)> = group
                .iter_mut()
                .map(|s| (&mut s.session, s.token))
                .collect();
            match model.forward_batch(rows, &mut scratch[i].1) {
                Ok(()) => vec![Ok(()); group.len()],
                // A failed batch advanced no session: each step again
                // alone, so that one tenant's bad step fails only its own.
                Err(_) if group.len() > 1 => {
                    let _ = model.synchronize();
                    forwards += group.len();
                    group
                        .iter_mut()
                        .map(|s| {
                            model
                                .forward_batch(vec![(&mut s.session, s.token)], &mut scratch[i].1)
                                .map_err(|e| e.to_string())
                        })
                        .collect()
                }
                Err(e) => vec![Err(e.to_string())],
            }
        }
    };
    counters
        .steps
        .fetch_add(group.len() as u64, Ordering::Relaxed);
    counters
        .batches
        .fetch_add(forwards as u64, Ordering::Relaxed);
    // A step that failed part way may have left work queued on this
    // thread's stream: done before the sessions go back to their threads.
    if results.iter().any(Result::is_err) {
        let _ = model.synchronize();
    }
    // The worker lets go of the model (its own hold and every step's)
    // before any caller hears back, so a caller that finishes sees only
    // the holders that remain.
    drop(model);
    let replies: Vec<_> = group
        .into_iter()
        .zip(results)
        .map(|(step, result)| (step.reply, step.session, result))
        .collect();
    for (reply, session, result) in replies {
        // A caller that went away (its tenant was dropped) no longer waits.
        let _ = reply.send((session, result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ModelStore;
    use realm_compute_cpu::CpuBackend;
    use realm_models::synthetic::SyntheticLayout;

    /// A step of `session` with `token`, and where its answer comes.
    fn step(
        model: &Arc<LoadedModel>,
        session: AnySession,
        token: u32,
    ) -> (Step, Receiver<StepReply>) {
        let (reply, answer) = mpsc::sync_channel(1);
        let step = Step {
            model: model.clone(),
            session,
            token,
            reply,
        };
        (step, answer)
    }

    /// A batch waits for the sessions of the model's last two batches, at
    /// most its live ones; before its first batch, for every live session.
    #[test]
    fn batches_wait_for_the_sessions_that_step() {
        assert_eq!(wanted(None, 5, 16), 5);
        assert_eq!(wanted(None, 40, 16), 16);
        let mut d = Decoding::default();
        d.ran([1, 2, 3]);
        assert_eq!(wanted(Some(&d), 5, 16), 3);
        // Session 3 missed a batch: still waited for.
        d.ran([2, 1]);
        assert_eq!(wanted(Some(&d), 5, 16), 3);
        // Two batches without it (idle, or prefilling): no longer.
        d.ran([1, 2]);
        assert_eq!(wanted(Some(&d), 5, 16), 2);
        // A session that starts stepping counts from its first batch.
        d.ran([1, 2, 4]);
        assert_eq!(wanted(Some(&d), 5, 16), 3);
        // Never more than are live.
        assert_eq!(wanted(Some(&d), 2, 16), 2);
    }

    /// A batch with a step that cannot run (its session is full) fails that
    /// step alone: the others run, and every session comes back to its own
    /// caller, whatever order the steps came in.
    #[test]
    fn a_bad_step_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let layout = SyntheticLayout::tiny("llama").unwrap();
        std::fs::write(&path, layout.write(2).unwrap()).unwrap();
        let store = ModelStore::new(Arc::new(CpuBackend::new().unwrap()));
        let model = store.get(&store.load(&path).unwrap()).unwrap();
        let mut sessions: Vec<AnySession> =
            (0..3).map(|_| model.session(4, 1, &[]).unwrap()).collect();
        // The middle one is full.
        for _ in 0..4 {
            model.forward(&mut sessions[1], &[3]).unwrap();
        }
        let ids: Vec<u64> = sessions.iter().map(AnySession::id).collect();
        // Newest first: not the order a batch is run in.
        let (steps, answers): (Vec<_>, Vec<_>) = sessions
            .into_iter()
            .rev()
            .map(|s| step(&model, s, 5))
            .unzip();
        let mut scratch = Vec::new();
        let counters = Counters::default();
        run_group(steps, &mut scratch, 4, &counters);
        let back: Vec<StepReply> = answers.iter().map(|a| a.recv().unwrap()).collect();
        for ((session, result), id) in back.iter().zip(ids.iter().rev()) {
            assert_eq!(session.id(), *id, "each caller gets its own session");
            match *id == ids[1] {
                true => assert!(result.is_err()),
                false => {
                    assert_eq!(result, &Ok(()));
                    assert_eq!(session.position(), 1);
                }
            }
        }
        // The batch, then each step alone.
        assert_eq!(counters.batches.load(Ordering::Relaxed), 4);
        assert_eq!(counters.steps.load(Ordering::Relaxed), 3);
    }
}
