//! The runtime: one wasmtime engine (Memory64, epoch interruption, pooling
//! allocator), the model store, the batch scheduler, and tenants.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use realm_compute_cpu::{CpuBackend, CpuConfig};
use realm_compute_gpu::{GpuBackend, GpuDevice, StepMode};
use realm_core::backend::KvDtype;
use realm_models::LoraId;
use realm_wasm::{Params, FLAG_ADD_SPECIAL, FLAG_CONTEXT_SHIFT, FLAG_LAYERED, FLAG_PARSE_SPECIAL};
use sha2::{Digest, Sha256};
use wasmtime::{
    Engine, Instance, InstanceAllocationStrategy, InstancePre, Linker, PoolingAllocationConfig,
    Store, Trap, TypedFunc,
};

use crate::batch::{BatchStats, Batcher};
use crate::host::{linker, TenantState};
use crate::modules::{self, ModuleSource};
use crate::store::{LoadedModel, ModelId, ModelStore, StoreBackend};
use crate::{Error, Result};

/// How to build a [`Runtime`].
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeConfig {
    /// Threads of the CPU backend (0: one per core).
    pub threads: usize,
    /// Run the models on the GPU backend on this device instead of the CPU
    /// backend (`None`: the CPU).
    pub gpu: Option<GpuDevice>,
    /// How the GPU backend runs decode steps (`None`: its default, recorded
    /// as CUDA graphs on CUDA).
    pub gpu_steps: Option<StepMode>,
    /// Element type of every tenant's KV caches: f32 (exact) or f16 (half
    /// the memory, as llama.cpp's default cache).
    pub kv_dtype: KvDtype,
    /// Most tenants alive at once (the pooling allocator's slots).
    pub max_tenants: u32,
    /// Largest memory any tenant may be given, in bytes.
    pub max_memory: usize,
    /// Interval of the epoch ticker: the granularity of time limits.
    pub tick: Duration,
    /// Largest wasm stack of a guest, in bytes.
    pub max_wasm_stack: usize,
    /// Merge concurrent single-token decode steps of sessions on the same
    /// model into one batched forward.
    pub batching: bool,
    /// Most rows of a batched forward.
    pub max_batch: usize,
    /// Longest the scheduler waits for the steps of the other sessions
    /// decoding (those that stepped in the model's last two batches).
    pub batch_window: Duration,
    /// A directory to keep compiled guest modules in, so that a later
    /// process starts tenants of the same module without compiling it
    /// (`None`: compile in every process). The directory must be writable
    /// by the user alone: the machine code in it is run as it is.
    pub module_cache: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            gpu: None,
            gpu_steps: None,
            kv_dtype: KvDtype::F32,
            max_tenants: 64,
            max_memory: 1 << 30,
            tick: Duration::from_millis(10),
            max_wasm_stack: 1 << 20,
            batching: true,
            max_batch: 16,
            batch_window: Duration::from_millis(2),
            module_cache: None,
        }
    }
}

/// What a tenant may use.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    /// The models granted, in the order the guest indexes them (0, 1, ...).
    pub models: Vec<ModelId>,
    /// Most bytes of linear memory the guest may have.
    pub memory_limit: usize,
    /// Wall-clock budget of one call into the guest (host work included).
    pub time_limit: Duration,
    /// Most tokens the guest's live sessions may hold together: bounds the
    /// host memory of its KV caches.
    pub session_tokens: usize,
    /// LoRA adapters its sessions run with: each names one of a granted
    /// model's adapters ([`ModelStore::load_with_loras`]) and its scale.
    /// Tenants of one model with different adapters still share its
    /// weights, and their decode steps still run in one batch.
    pub loras: Vec<TenantLora>,
}

/// A LoRA adapter a tenant's sessions of a model run with.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLora {
    /// The model (one of the tenant's).
    pub model: ModelId,
    /// The adapter's place among the model's, as they were loaded.
    pub adapter: usize,
    /// The scale of its updates (1: as trained).
    pub scale: f32,
}

impl TenantConfig {
    /// A tenant granted `models`, with 256 MiB of memory, 120 s a call and
    /// sessions of 16384 tokens in all.
    pub fn new(models: Vec<ModelId>) -> Self {
        Self {
            models,
            memory_limit: 256 << 20,
            time_limit: Duration::from_secs(120),
            session_tokens: 16384,
            loras: Vec::new(),
        }
    }
}

/// One generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The model (one of the tenant's); `None` is its first.
    pub model: Option<ModelId>,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Tokens the session holds (0: prompt plus `max_tokens`).
    pub max_seq_len: u32,
    /// Sampling.
    pub sampling: realm_models::SamplingParams,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Add BOS (and such) as the vocabulary asks.
    pub add_special: bool,
    /// Turn special-token text in the prompt into ids.
    pub parse_special: bool,
    /// Run the model layer by layer through the host instead of fused.
    pub layered: bool,
    /// A GBNF grammar the guest keeps its text to (for a JSON schema,
    /// [`realm_models::grammar::schema_to_gbnf`]'s).
    pub grammar: Option<String>,
    /// With these, the grammar is lazy: free text until the generated
    /// text holds one of them, the grammar's from there on (see
    /// [`realm_models::GenerateParams::grammar_triggers`]).
    pub grammar_triggers: Vec<String>,
    /// Special tokens whose text stays in the generated text (see
    /// [`realm_models::GenerateParams::preserved_tokens`]).
    pub preserved_tokens: Vec<String>,
    /// Context shift: `Some(n_keep)` lets generation go on past a full
    /// session by forgetting the older half of the tokens after the
    /// prompt's first `n_keep` (after BOS, as llama.cpp counts `--keep`;
    /// -1: the whole prompt), as [`realm_models::ContextShift`] does
    /// natively. `None`: a full session ends generation.
    pub context_shift: Option<i64>,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            model: None,
            max_tokens: 256,
            max_seq_len: 0,
            sampling: realm_models::SamplingParams::default(),
            stop: Vec::new(),
            add_special: true,
            parse_special: true,
            layered: false,
            grammar: None,
            grammar_triggers: Vec::new(),
            preserved_tokens: Vec::new(),
            context_shift: None,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// `max_tokens` were generated.
    MaxTokens,
    /// A stop string appeared.
    StopString,
    /// The session's context is full.
    ContextFull,
    /// Generation was cancelled.
    Cancelled,
}

/// What a generation did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationStats {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Wall-clock seconds of the whole call.
    pub seconds: f64,
    /// Seconds from the call until the guest first had logits: the prompt's
    /// tokenization and prefill, or time to first token less one sampling
    /// (the whole call's when the guest never asked for logits).
    pub prompt_seconds: f64,
    /// The most tokens one forward of the guest's sessions takes (the
    /// largest batch the guest made a session with in this call; `None`
    /// when it made none): its prompt's prefill chunk.
    pub session_batch: Option<u64>,
    /// Context shifts the guest made ([`GenerateRequest::context_shift`]).
    pub context_shifts: u64,
}

impl GenerationStats {
    /// Generated tokens per second after the first: decode speed, without
    /// the prompt (as llama-bench's tg). `None` for fewer than 2 tokens.
    pub fn decode_tokens_per_second(&self) -> Option<f64> {
        let decode = self.seconds - self.prompt_seconds;
        (self.generated_tokens >= 2 && decode > 0.0)
            .then(|| (self.generated_tokens - 1) as f64 / decode)
    }
}

/// Shared by the runtime and its tenants.
struct Shared {
    engine: Engine,
    linker: Linker<TenantState>,
    store: ModelStore,
    batcher: Option<Arc<Batcher>>,
    modules: Mutex<HashMap<[u8; 32], InstancePre<TenantState>>>,
    /// Guest modules compiled, and loaded from the module cache.
    module_counts: (AtomicU64, AtomicU64),
    config: RuntimeConfig,
    /// Held for its `Drop`: stops the epoch thread with the last user.
    _ticker: Ticker,
}

/// The thread that advances the engine's epoch (time limits); it stops when
/// the runtime and every tenant are gone.
#[derive(Debug)]
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("realm-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The ticker only sleeps and ticks; a join error cannot matter.
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The multi-tenant runtime. Tenants keep what they need (engine, models,
/// the ticker and scheduler threads) alive after the runtime is dropped.
#[derive(Debug)]
pub struct Runtime {
    shared: Arc<Shared>,
}

fn wasm_err(e: impl std::fmt::Display) -> Error {
    Error::Wasm(format!("{e:#}"))
}

impl Runtime {
    /// A runtime as `config` says.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        if config.tick.is_zero() || config.max_batch == 0 || config.max_tenants == 0 {
            return Err(Error::Config(
                "tick, max_batch and max_tenants must be positive".into(),
            ));
        }
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(config.max_tenants)
            .total_memories(config.max_tenants)
            .total_tables(config.max_tenants)
            .max_memory_size(config.max_memory);
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_memory64(true)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(wasm_err)?;
        let backend = match config.gpu {
            None => StoreBackend::Cpu(Arc::new(CpuBackend::with_config(CpuConfig {
                threads: config.threads,
                ..CpuConfig::default()
            })?)),
            Some(d) => {
                let mut gpu = GpuBackend::new(d)?;
                if let Some(steps) = config.gpu_steps {
                    gpu = gpu.with_steps(steps);
                }
                StoreBackend::Gpu(Arc::new(gpu))
            }
        };
        let batcher = match config.batching {
            true => Some(Arc::new(
                Batcher::start(config.max_batch, config.batch_window)
                    .map_err(|e| Error::Config(e.to_string()))?,
            )),
            false => None,
        };
        let ticker =
            Ticker::start(engine.clone(), config.tick).map_err(|e| Error::Config(e.to_string()))?;
        let shared = Arc::new(Shared {
            linker: linker(&engine).map_err(wasm_err)?,
            engine,
            store: ModelStore::new(backend).with_kv_dtype(config.kv_dtype),
            batcher,
            modules: Mutex::new(HashMap::new()),
            module_counts: Default::default(),
            config,
            _ticker: ticker,
        });
        Ok(Self { shared })
    }

    /// The model store.
    pub fn models(&self) -> &ModelStore {
        &self.shared.store
    }

    /// Loads a GGUF model (see [`ModelStore::load`]).
    pub fn load_model(&self, path: impl AsRef<Path>) -> Result<ModelId> {
        self.shared.store.load(path)
    }

    /// Guest modules this runtime compiled, and those it loaded compiled
    /// from [`RuntimeConfig::module_cache`] (each distinct module counts
    /// once: later tenants of it reuse it).
    pub fn module_counts(&self) -> (u64, u64) {
        let (c, l) = &self.shared.module_counts;
        (c.load(Ordering::Relaxed), l.load(Ordering::Relaxed))
    }

    /// Batching statistics (zero when batching is off).
    pub fn batch_stats(&self) -> BatchStats {
        self.shared
            .batcher
            .as_ref()
            .map(|b| b.stats())
            .unwrap_or_default()
    }

    /// A tenant running the guest module `wasm` (binary; compiled once per
    /// distinct module) with the models and limits of `config`.
    pub fn tenant(&self, wasm: &[u8], config: TenantConfig) -> Result<Tenant> {
        if config.memory_limit > self.shared.config.max_memory {
            return Err(Error::Config(format!(
                "memory limit {} is above the runtime's maximum {}",
                config.memory_limit, self.shared.config.max_memory
            )));
        }
        let models = config
            .models
            .iter()
            .map(|id| self.shared.store.get(id))
            .collect::<Result<Vec<_>>>()?;
        let mut loras = vec![Vec::new(); models.len()];
        for l in &config.loras {
            let at = config.models.iter().position(|m| *m == l.model);
            let adapter = at.and_then(|i| models[i].loras.get(l.adapter).map(|a| (i, a.0)));
            let Some((i, id)) = adapter else {
                return Err(Error::Config(format!(
                    "LoRA adapter {} of model {}: the tenant has no such model or adapter",
                    l.adapter, l.model
                )));
            };
            if !l.scale.is_finite() {
                return Err(Error::Config(format!(
                    "LoRA adapter {} of model {}: the scale {} is not finite",
                    l.adapter, l.model, l.scale
                )));
            }
            loras[i].push((id, l.scale));
        }
        let key: [u8; 32] = Sha256::digest(wasm).into();
        let cached = self
            .shared
            .modules
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let pre = match cached {
            Some(pre) => pre,
            None => {
                let (module, source) = modules::module(
                    &self.shared.engine,
                    wasm,
                    &key,
                    self.shared.config.module_cache.as_deref(),
                )
                .map_err(wasm_err)?;
                let count = match source {
                    ModuleSource::Compiled => &self.shared.module_counts.0,
                    ModuleSource::Cached => &self.shared.module_counts.1,
                };
                count.fetch_add(1, Ordering::Relaxed);
                let pre = self
                    .shared
                    .linker
                    .instantiate_pre(&module)
                    .map_err(wasm_err)?;
                self.shared
                    .modules
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, pre.clone());
                pre
            }
        };
        Ok(Tenant {
            shared: self.shared.clone(),
            pre,
            config,
            models,
            loras,
            live: None,
        })
    }
}

/// An instance of a tenant's guest.
struct Live {
    store: Store<TenantState>,
    instance: Instance,
}

/// The exports `generate` needs.
struct GuestAbi {
    alloc: TypedFunc<u64, u64>,
    free: TypedFunc<(u64, u64), ()>,
    generate: TypedFunc<(u64, u64, u64, u64), i32>,
}

/// An isolated guest with its models and limits. After a failure its
/// instance (memory, sessions) is dropped and the next call starts afresh.
pub struct Tenant {
    shared: Arc<Shared>,
    pre: InstancePre<TenantState>,
    config: TenantConfig,
    models: Vec<Arc<LoadedModel>>,
    /// The adapters each model's sessions run with.
    loras: Vec<Vec<(LoraId, f32)>>,
    live: Option<Live>,
}

impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("config", &self.config)
            .field("live", &self.live.is_some())
            .finish_non_exhaustive()
    }
}

impl Tenant {
    fn instantiate(&self) -> Result<Live> {
        let state = TenantState::new(
            self.models.clone(),
            self.loras.clone(),
            self.config.memory_limit,
            self.config.session_tokens,
            self.shared.batcher.clone(),
        );
        let mut store = Store::new(&self.shared.engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let instance = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| self.classify(&store, e))?;
        Ok(Live { store, instance })
    }

    fn deadline_ticks(&self) -> u64 {
        let tick = self.shared.config.tick.as_nanos().max(1);
        (self.config.time_limit.as_nanos().div_ceil(tick)).clamp(1, u64::MAX as u128) as u64
    }

    /// Turns a wasmtime error into the runtime's.
    fn classify(&self, store: &Store<TenantState>, e: wasmtime::Error) -> Error {
        if store.data().limits.exceeded {
            return Error::MemoryLimit(self.config.memory_limit as u64);
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Error::TimeLimit(self.config.time_limit),
            Some(trap) => Error::Guest(trap.to_string()),
            // A host function's error (ABI misuse), without the wasm backtrace.
            None => Error::Guest(e.root_cause().to_string()),
        }
    }

    /// Sessions the guest holds on the host now.
    pub fn live_sessions(&self) -> usize {
        self.live
            .as_ref()
            .map_or(0, |l| l.store.data().session_count())
    }

    /// Calls the guest's exported `name` (no parameters, no results) under
    /// the tenant's limits: for guests other than realm-wasm and for tests.
    pub fn call(&mut self, name: &str) -> Result<()> {
        let mut live = self.take_live()?;
        live.store.set_epoch_deadline(self.deadline_ticks());
        let result = live
            .instance
            .get_typed_func::<(), ()>(&mut live.store, name)
            .map_err(|e| Error::Guest(format!("{e:#}")))
            .and_then(|f| {
                f.call(&mut live.store, ())
                    .map_err(|e| self.classify(&live.store, e))
            });
        // The device work this thread queued is done before the guest's
        // sessions may be stepped on another thread, or dropped.
        let settled = live.store.data().settle().map_err(Error::from);
        let result = result.and(settled);
        if result.is_ok() {
            self.live = Some(live);
        }
        result
    }

    fn take_live(&mut self) -> Result<Live> {
        match self.live.take() {
            Some(l) => Ok(l),
            None => self.instantiate(),
        }
    }

    /// Generates from `prompt` in the guest, calling `on_text` with each
    /// piece of text as it is streamed.
    pub fn generate(
        &mut self,
        prompt: &str,
        req: &GenerateRequest,
        mut on_text: impl FnMut(&str),
    ) -> Result<GenerationStats> {
        self.generate_while(prompt, req, |piece| {
            on_text(piece);
            true
        })
    }

    /// [`Tenant::generate`], where `on_text` returns `false` to stop (a
    /// server's client went away): the guest is told at its next piece of
    /// text (`emit` returns non-zero) and ends with
    /// [`StopReason::Cancelled`]; no text reaches `on_text` after that.
    pub fn generate_while(
        &mut self,
        prompt: &str,
        req: &GenerateRequest,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<GenerationStats> {
        let started = Instant::now();
        let model = match &req.model {
            None => 0,
            Some(id) => self
                .config
                .models
                .iter()
                .position(|m| m == id)
                .ok_or_else(|| Error::NotGranted(id.clone()))?,
        };
        let flags = [
            (req.add_special, FLAG_ADD_SPECIAL),
            (req.parse_special, FLAG_PARSE_SPECIAL),
            (req.layered, FLAG_LAYERED),
            (req.context_shift.is_some(), FLAG_CONTEXT_SHIFT),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |acc, (_, f)| acc | f);
        let params = Params {
            model: model as u32,
            max_tokens: req.max_tokens,
            max_seq_len: req.max_seq_len,
            sampling: req.sampling.clone(),
            flags,
            stop: req.stop.clone(),
            grammar: req.grammar.clone(),
            grammar_triggers: req.grammar_triggers.clone(),
            preserved_tokens: req.preserved_tokens.clone(),
            // Past i32's range means the whole prompt either way.
            n_keep: req
                .context_shift
                .map_or(0, |n| i32::try_from(n).unwrap_or(-1)),
        }
        .to_bytes();
        let mut live = self.take_live()?;
        live.store.set_epoch_deadline(self.deadline_ticks());
        live.store.data_mut().finish = None;
        live.store.data_mut().first_logits = None;
        live.store.data_mut().session_batch = None;
        live.store.data_mut().context_shifts = 0;
        let (tx, rx) = mpsc::channel::<String>();
        live.store.data_mut().sink = Some(tx);
        let outcome = std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .stack_size(8 << 20)
                .spawn_scoped(scope, || {
                    // A panic (of a host call) is an error here, so that
                    // the wait below still happens.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        call_generate(&mut live, prompt.as_bytes(), &params)
                    }))
                    .unwrap_or_else(|_| Err(wasmtime::Error::msg("a host call panicked")));
                    // This thread's device work is done before it ends.
                    let settled = live.store.data().settle();
                    live.store.data_mut().sink = None;
                    r.and_then(|status| settled.map(|()| status).map_err(wasmtime::Error::new))
                })
                .map_err(|e| Error::Config(format!("cannot start a guest thread: {e}")))?;
            let mut wanted = true;
            while wanted {
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(piece) => wanted = on_text(&piece),
                    Err(mpsc::RecvTimeoutError::Timeout) if !worker.is_finished() => {}
                    Err(_) => break,
                }
            }
            if wanted {
                rx.try_iter().for_each(|piece| {
                    let _ = on_text(&piece);
                });
            }
            // The guest's next `emit` finds no reader and asks it to stop.
            drop(rx);
            worker
                .join()
                .map_err(|_| Error::Guest("the guest thread panicked".into()))
        })?;
        let status = match outcome {
            Ok(status) => status,
            Err(e) => return Err(self.classify(&live.store, e)),
        };
        let finish = live.store.data().finish;
        let first_logits = live.store.data().first_logits;
        let session_batch = live.store.data().session_batch;
        let context_shifts = live.store.data().context_shifts;
        let ended = Instant::now();
        self.live = Some(live);
        if status != 0 {
            return Err(Error::GuestStatus(status));
        }
        let f = finish.ok_or_else(|| Error::Guest("the guest did not call `finish`".into()))?;
        let stop_reason = match f.stop_reason {
            0 => StopReason::EndOfGeneration,
            1 => StopReason::MaxTokens,
            2 => StopReason::StopString,
            3 => StopReason::ContextFull,
            _ => StopReason::Cancelled,
        };
        Ok(GenerationStats {
            prompt_tokens: f.prompt_tokens,
            generated_tokens: f.generated_tokens,
            stop_reason,
            seconds: ended.duration_since(started).as_secs_f64(),
            prompt_seconds: first_logits
                .unwrap_or(ended)
                .duration_since(started)
                .as_secs_f64(),
            session_batch,
            context_shifts,
        })
    }
}

/// Writes `bytes` into guest memory through its allocator; 0 for empty.
fn put(live: &mut Live, abi: &GuestAbi, bytes: &[u8]) -> wasmtime::Result<u64> {
    if bytes.is_empty() {
        return Ok(0);
    }
    let ptr = abi.alloc.call(&mut live.store, bytes.len() as u64)?;
    let memory = live
        .instance
        .get_memory(&mut live.store, "memory")
        .ok_or_else(|| wasmtime::Error::msg("the guest exports no memory named `memory`"))?;
    let start = usize::try_from(ptr)?;
    if ptr == 0 {
        return Err(wasmtime::Error::msg("the guest's realm_alloc returned 0"));
    }
    memory.write(&mut live.store, start, bytes)?;
    Ok(ptr)
}

fn call_generate(live: &mut Live, prompt: &[u8], params: &[u8]) -> wasmtime::Result<i32> {
    let abi = GuestAbi {
        alloc: live
            .instance
            .get_typed_func(&mut live.store, "realm_alloc")?,
        free: live
            .instance
            .get_typed_func(&mut live.store, "realm_free")?,
        generate: live.instance.get_typed_func(&mut live.store, "generate")?,
    };
    let p = put(live, &abi, prompt)?;
    let q = put(live, &abi, params)?;
    let status = abi.generate.call(
        &mut live.store,
        (p, prompt.len() as u64, q, params.len() as u64),
    )?;
    abi.free.call(&mut live.store, (p, prompt.len() as u64))?;
    abi.free.call(&mut live.store, (q, params.len() as u64))?;
    Ok(status)
}
