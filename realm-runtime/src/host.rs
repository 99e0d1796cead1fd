//! The host functions a guest imports (module `realm`), and the per-tenant
//! state they work on. `ABI.md` in realm-wasm documents them for guest
//! authors.
//!
//! Every pointer and length a guest passes is checked against its memory
//! before use; a wasm32 guest passes its 32-bit pointers zero-extended to
//! `u64`. Misuse (a bad pointer, a foreign or dropped handle, layers out of
//! order) is an error that ends the guest's call; a full context is a status
//! the guest can handle.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use realm_models::LoraId;
use wasmtime::{Caller, Extern, Linker, ResourceLimiter};

use crate::batch::{Batcher, StepReply};
use crate::store::{AnySession, LoadedModel};

/// Largest prefill chunk a guest may ask a session for.
const MAX_SESSION_BATCH: u64 = 512;

/// What a guest did wrong; becomes the error its call ends with.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AbiError {
    #[error("the guest exports no memory named `memory`")]
    NoMemory,
    #[error("{what}: {len} bytes at {ptr:#x} are outside guest memory ({mem} bytes)")]
    OutOfBounds {
        what: &'static str,
        ptr: u64,
        len: u64,
        mem: usize,
    },
    #[error("{what}: length overflows")]
    Overflow { what: &'static str },
    #[error("model index {0} is not granted to this tenant")]
    BadModel(u32),
    #[error("session handle {0} is not a live session of this tenant")]
    BadHandle(u64),
    #[error("session is busy")]
    Busy,
    #[error("{what}: {got} logits do not fit a buffer of {cap}")]
    SmallBuffer {
        what: &'static str,
        got: usize,
        cap: u64,
    },
    #[error("bad session size: max_seq_len {0}, batch {1}")]
    BadSessionSize(u64, u64),
    #[error(
        "a session of {asked} tokens passes the tenant's budget ({used} of {limit} tokens in use)"
    )]
    SessionBudget {
        asked: u64,
        used: usize,
        limit: usize,
    },
    #[error("text is not UTF-8")]
    NotUtf8,
    #[error("{0}")]
    Model(#[from] realm_models::Error),
    #[error("batch scheduler: {0}")]
    Scheduler(String),
}

/// The memory cap of a tenant's store.
#[derive(Debug)]
pub(crate) struct Limits {
    pub(crate) memory_limit: usize,
    pub(crate) exceeded: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.exceeded = true;
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// A session a tenant created. `session` is `None` while a batched step has
/// it on the scheduler.
#[derive(Debug)]
struct HostSession {
    model: Arc<LoadedModel>,
    tokens: usize,
    session: Option<AnySession>,
}

/// What `finish` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Finish {
    pub(crate) prompt_tokens: u64,
    pub(crate) generated_tokens: u64,
    pub(crate) stop_reason: i32,
}

/// Handles are unique across tenants, so another tenant's handle is never
/// one of ours.
static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

/// A tenant's host-side state (the data of its wasmtime store).
#[derive(Debug)]
pub(crate) struct TenantState {
    pub(crate) limits: Limits,
    models: Vec<Arc<LoadedModel>>,
    /// The LoRA adapters each model's sessions run with (by model index).
    loras: Vec<Vec<(LoraId, f32)>>,
    sessions: HashMap<u64, HostSession>,
    /// Most tokens all live sessions may hold together (bounds KV memory).
    session_tokens_limit: usize,
    session_tokens: usize,
    batcher: Option<Arc<Batcher>>,
    reply: (mpsc::SyncSender<StepReply>, mpsc::Receiver<StepReply>),
    tokens: Vec<u32>,
    pub(crate) sink: Option<mpsc::Sender<String>>,
    pub(crate) finish: Option<Finish>,
    /// When the guest first got logits in this call (the end of its
    /// prompt's prefill).
    pub(crate) first_logits: Option<Instant>,
    /// The largest batch of the sessions the guest made in this call.
    pub(crate) session_batch: Option<u64>,
    /// Context shifts the guest made in this call.
    pub(crate) context_shifts: u64,
}

impl TenantState {
    /// Waits for the device work this thread queued for the tenant's
    /// models: a guest's host calls may return with work in flight (the
    /// layers of a prefill), and its sessions may next be dropped or
    /// stepped on another thread.
    pub(crate) fn settle(&self) -> Result<(), realm_models::Error> {
        self.models.iter().try_for_each(|m| m.synchronize())
    }

    pub(crate) fn new(
        models: Vec<Arc<LoadedModel>>,
        loras: Vec<Vec<(LoraId, f32)>>,
        memory_limit: usize,
        session_tokens_limit: usize,
        batcher: Option<Arc<Batcher>>,
    ) -> Self {
        Self {
            loras,
            session_tokens_limit,
            session_tokens: 0,
            limits: Limits {
                memory_limit,
                exceeded: false,
            },
            models,
            sessions: HashMap::new(),
            batcher,
            reply: mpsc::sync_channel(1),
            tokens: Vec::new(),
            sink: None,
            finish: None,
            first_logits: None,
            session_batch: None,
            context_shifts: 0,
        }
    }

    /// Live sessions (for tests and stats).
    pub(crate) fn session_count(&self) -> usize {
        self.sessions.len()
    }

    fn model(&self, index: u32) -> Result<&Arc<LoadedModel>, AbiError> {
        self.models
            .get(index as usize)
            .ok_or(AbiError::BadModel(index))
    }

    fn session(&mut self, handle: u64) -> Result<(&Arc<LoadedModel>, &mut AnySession), AbiError> {
        let s = self
            .sessions
            .get_mut(&handle)
            .ok_or(AbiError::BadHandle(handle))?;
        Ok((&s.model, s.session.as_mut().ok_or(AbiError::Busy)?))
    }
}

/// `ptr..ptr + count * elem` if it lies in a memory of `mem` bytes.
fn range(
    what: &'static str,
    mem: usize,
    ptr: u64,
    count: u64,
    elem: u64,
) -> Result<Range<usize>, AbiError> {
    let len = count.checked_mul(elem).ok_or(AbiError::Overflow { what })?;
    let end = ptr.checked_add(len).ok_or(AbiError::Overflow { what })?;
    if end > mem as u64 {
        return Err(AbiError::OutOfBounds {
            what,
            ptr,
            len,
            mem,
        });
    }
    // `end <= mem`, a usize, so both fit.
    Ok(ptr as usize..end as usize)
}

/// Reads `count` little-endian `u32` tokens at `ptr` into `out`.
fn read_tokens(mem: &[u8], ptr: u64, count: u64, out: &mut Vec<u32>) -> Result<(), AbiError> {
    let r = range("tokens", mem.len(), ptr, count, 4)?;
    out.clear();
    out.extend(
        mem[r]
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
    Ok(())
}

/// The byte range for `logits` at `ptr` with room for `cap` floats.
fn logits_range(mem: usize, ptr: u64, cap: u64, vocab: usize) -> Result<Range<usize>, AbiError> {
    if cap < vocab as u64 {
        return Err(AbiError::SmallBuffer {
            what: "logits",
            got: vocab,
            cap,
        });
    }
    range("logits", mem, ptr, vocab as u64, 4)
}

fn write_logits(dst: &mut [u8], logits: &[f32]) {
    for (d, v) in dst.chunks_exact_mut(4).zip(logits) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// The guest's memory and the tenant state, borrowed together.
fn parts<'a>(
    caller: &'a mut Caller<'_, TenantState>,
) -> Result<(&'a mut [u8], &'a mut TenantState), AbiError> {
    let memory = match caller.get_export("memory") {
        Some(Extern::Memory(m)) => m,
        _ => return Err(AbiError::NoMemory),
    };
    Ok(memory.data_and_store_mut(caller))
}

type HostResult<T> = wasmtime::Result<T>;

fn fail<T>(e: AbiError) -> HostResult<T> {
    Err(wasmtime::Error::new(e))
}

/// A model error that only a misbehaving guest causes becomes an ABI error;
/// a full context becomes status 1.
fn status(r: realm_models::Result<()>) -> HostResult<i32> {
    match r {
        Ok(()) => Ok(0),
        Err(realm_models::Error::ContextFull { .. }) => Ok(1),
        Err(e) => fail(e.into()),
    }
}

fn model_metadata(
    mut caller: Caller<'_, TenantState>,
    model: u32,
    ptr: u64,
    cap: u64,
) -> HostResult<u64> {
    let (mem, st) = parts(&mut caller)?;
    let meta = &st.model(model)?.metadata;
    if cap >= meta.len() as u64 {
        let r = range("metadata", mem.len(), ptr, meta.len() as u64, 1)?;
        mem[r].copy_from_slice(meta);
    }
    Ok(meta.len() as u64)
}

fn session_create(
    mut caller: Caller<'_, TenantState>,
    model: u32,
    max_seq_len: u64,
    batch: u64,
) -> HostResult<u64> {
    let st = caller.data_mut();
    let index = model as usize;
    let model = st.model(model)?.clone();
    if batch == 0 || batch > MAX_SESSION_BATCH || max_seq_len == 0 {
        return fail(AbiError::BadSessionSize(max_seq_len, batch));
    }
    let (used, limit) = (st.session_tokens, st.session_tokens_limit);
    let tokens = match usize::try_from(max_seq_len) {
        Ok(n) if n <= limit - used => n,
        _ => {
            return fail(AbiError::SessionBudget {
                asked: max_seq_len,
                used,
                limit,
            })
        }
    };
    let session = model
        .session(
            max_seq_len as usize,
            batch as usize,
            st.loras.get(index).map_or(&[][..], |l| &l[..]),
        )
        .map_err(AbiError::from)?;
    let handle = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
    st.session_tokens += tokens;
    st.session_batch = Some(st.session_batch.map_or(batch, |b| b.max(batch)));
    if let Some(b) = &st.batcher {
        b.session_opened(&model);
    }
    st.sessions.insert(
        handle,
        HostSession {
            model,
            tokens,
            session: Some(session),
        },
    );
    Ok(handle)
}

fn session_drop(mut caller: Caller<'_, TenantState>, handle: u64) -> HostResult<()> {
    let st = caller.data_mut();
    let s = st
        .sessions
        .remove(&handle)
        .ok_or(AbiError::BadHandle(handle))?;
    st.session_tokens -= s.tokens;
    if let Some(b) = &st.batcher {
        b.session_closed(&s.model);
    }
    // Its cache slot goes back to the pool when `s` drops: this thread's
    // writes to it are done first.
    s.model.synchronize().map_err(AbiError::from)?;
    Ok(())
}

fn session_shift(
    mut caller: Caller<'_, TenantState>,
    handle: u64,
    keep: u64,
    discard: u64,
) -> HostResult<()> {
    let st = caller.data_mut();
    let (model, session) = st.session(handle)?;
    // Counts past the address space are past any session's tokens too.
    let (keep, discard) = (
        usize::try_from(keep).unwrap_or(usize::MAX),
        usize::try_from(discard).unwrap_or(usize::MAX),
    );
    model
        .shift_context(session, keep, discard)
        .map_err(AbiError::from)?;
    st.context_shifts += 1;
    Ok(())
}

fn forward(
    mut caller: Caller<'_, TenantState>,
    handle: u64,
    tokens: u64,
    n_tokens: u64,
    logits: u64,
    n_logits: u64,
) -> HostResult<i32> {
    let (mem, st) = parts(&mut caller)?;
    read_tokens(mem, tokens, n_tokens, &mut st.tokens)?;
    let TenantState {
        sessions,
        batcher,
        reply,
        tokens,
        first_logits,
        ..
    } = st;
    let entry = sessions
        .get_mut(&handle)
        .ok_or(AbiError::BadHandle(handle))?;
    let out = logits_range(mem.len(), logits, n_logits, entry.model.vocab_size)?;
    let session = entry.session.as_mut().ok_or(AbiError::Busy)?;
    match (batcher, tokens.as_slice()) {
        // A step that cannot run (a full session, a token past the
        // vocabulary) fails here, alone, not in a batch.
        (Some(b), &[token])
            if session.position() < session.capacity()
                && (token as usize) < entry.model.vocab_size
                && b.has_company(&entry.model) =>
        {
            // The worker's stream reads what this thread's wrote.
            entry.model.synchronize().map_err(AbiError::from)?;
            let Some(taken) = entry.session.take() else {
                return fail(AbiError::Busy);
            };
            let (back, result) = b
                .step(&entry.model, taken, token, reply)
                .map_err(AbiError::Scheduler)?;
            let session = entry.session.insert(back);
            result.map_err(AbiError::Scheduler)?;
            write_logits(&mut mem[out], session.logits());
            first_logits.get_or_insert_with(Instant::now);
            Ok(0)
        }
        _ => {
            let r = entry.model.forward(session, tokens);
            if r.is_ok() {
                write_logits(&mut mem[out], session.logits());
                first_logits.get_or_insert_with(Instant::now);
            }
            status(r)
        }
    }
}

fn embed_tokens(
    mut caller: Caller<'_, TenantState>,
    handle: u64,
    tokens: u64,
    n_tokens: u64,
) -> HostResult<i32> {
    let (mem, st) = parts(&mut caller)?;
    let mut ids = std::mem::take(&mut st.tokens);
    let r = read_tokens(mem, tokens, n_tokens, &mut ids).and_then(|()| {
        let (model, session) = st.session(handle)?;
        Ok(model.embed_tokens(session, &ids))
    });
    st.tokens = ids;
    status(r?)
}

fn forward_layer(mut caller: Caller<'_, TenantState>, handle: u64, layer: u32) -> HostResult<()> {
    let (model, session) = caller.data_mut().session(handle)?;
    model
        .forward_layer(session, layer as usize)
        .map_err(AbiError::from)?;
    Ok(())
}

fn compute_logits(
    mut caller: Caller<'_, TenantState>,
    handle: u64,
    logits: u64,
    n_logits: u64,
) -> HostResult<()> {
    let (mem, st) = parts(&mut caller)?;
    let (model, session) = st.session(handle)?;
    let out = logits_range(mem.len(), logits, n_logits, model.vocab_size)?;
    let values = model.compute_logits(session).map_err(AbiError::from);
    values?;
    write_logits(&mut mem[out], session.logits());
    st.first_logits.get_or_insert_with(Instant::now);
    Ok(())
}

fn emit(mut caller: Caller<'_, TenantState>, ptr: u64, len: u64) -> HostResult<i32> {
    let (mem, st) = parts(&mut caller)?;
    let r = range("text", mem.len(), ptr, len, 1)?;
    let text = std::str::from_utf8(&mem[r]).map_err(|_| AbiError::NotUtf8)?;
    match &st.sink {
        // The caller stopped reading: it wants no more text.
        Some(sink) if sink.send(text.to_string()).is_err() => Ok(1),
        _ => Ok(0),
    }
}

/// The linker with every `realm` import.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<TenantState>> {
    let mut l = Linker::new(engine);
    l.func_wrap("realm", "model_metadata", model_metadata)?;
    l.func_wrap(
        "realm",
        "model_vocab_size",
        |c: Caller<'_, TenantState>, model: u32| -> HostResult<u64> {
            Ok(c.data().model(model)?.vocab_size as u64)
        },
    )?;
    l.func_wrap(
        "realm",
        "model_layers",
        |c: Caller<'_, TenantState>, model: u32| -> HostResult<u64> {
            Ok(c.data().model(model)?.n_layers as u64)
        },
    )?;
    l.func_wrap("realm", "session_create", session_create)?;
    l.func_wrap("realm", "session_drop", session_drop)?;
    l.func_wrap("realm", "session_shift", session_shift)?;
    l.func_wrap("realm", "forward", forward)?;
    l.func_wrap("realm", "embed_tokens", embed_tokens)?;
    l.func_wrap("realm", "forward_layer", forward_layer)?;
    l.func_wrap("realm", "compute_logits", compute_logits)?;
    l.func_wrap("realm", "emit", emit)?;
    l.func_wrap(
        "realm",
        "finish",
        |mut c: Caller<'_, TenantState>,
         prompt_tokens: u64,
         generated_tokens: u64,
         stop_reason: i32| {
            c.data_mut().finish = Some(Finish {
                prompt_tokens,
                generated_tokens,
                stop_reason,
            });
        },
    )?;
    Ok(l)
}

impl Drop for TenantState {
    fn drop(&mut self) {
        if let Some(b) = &self.batcher {
            for s in self.sessions.values() {
                b.session_closed(&s.model);
            }
        }
    }
}
