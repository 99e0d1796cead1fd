//! The model store: each GGUF file memory-mapped and loaded once, shared by
//! every tenant it is granted to.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use realm_compute_cpu::CpuBackend;
use realm_compute_gpu::GpuBackend;
use realm_core::backend::{BackendCore, KvDtype};
use realm_core::gguf::{GgufFile, GgufWriter};
use realm_models::{BatchScratch, LoraId, Model, Session};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// A model's identity in the store: a caller-chosen name, or the first 16
/// bytes of the file's SHA-256 in hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelId(Arc<str>);

impl ModelId {
    /// An id with this name.
    pub fn new(name: &str) -> Self {
        Self(name.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The backend a store's models run on: Realm's CPU backend or the GPU
/// backend (candle; CUDA, Metal or candle's CPU device).
#[derive(Debug, Clone)]
pub enum StoreBackend {
    /// Realm's CPU backend.
    Cpu(Arc<CpuBackend>),
    /// The GPU backend.
    Gpu(Arc<GpuBackend>),
}

impl From<Arc<CpuBackend>> for StoreBackend {
    fn from(b: Arc<CpuBackend>) -> Self {
        Self::Cpu(b)
    }
}

impl From<Arc<GpuBackend>> for StoreBackend {
    fn from(b: Arc<GpuBackend>) -> Self {
        Self::Gpu(b)
    }
}

/// What a loaded model borrows from: the mapped file and the backend.
#[derive(Debug)]
pub(crate) struct ModelOwner<B> {
    file: GgufFile,
    /// LoRA adapters' files, added to the model in order.
    loras: Vec<(String, GgufFile)>,
    backend: Arc<B>,
}

impl<B: realm_core::backend::Backend> ModelOwner<B> {
    /// The model in the owned file, with the owned adapters added.
    fn model(&self) -> ModelResult<Model<'_, B>> {
        let mut m = Model::load(&self.file, &*self.backend)?;
        for (name, f) in &self.loras {
            m.add_lora(f, name.clone())?;
        }
        Ok(m)
    }
}

type CpuModel<'a> = Model<'a, CpuBackend>;
type GpuModel<'a> = Model<'a, GpuBackend>;

self_cell::self_cell!(
    /// The mapped file together with the model borrowing it (CPU).
    pub(crate) struct CpuCell {
        owner: ModelOwner<CpuBackend>,
        #[not_covariant]
        dependent: CpuModel,
    }
    impl {Debug}
);

self_cell::self_cell!(
    /// The mapped file together with the model borrowing it (GPU).
    pub(crate) struct GpuCell {
        owner: ModelOwner<GpuBackend>,
        #[not_covariant]
        dependent: GpuModel,
    }
    impl {Debug}
);

/// A model on one of the backends.
#[derive(Debug)]
enum ModelCell {
    Cpu(CpuCell),
    Gpu(GpuCell),
}

/// A session of a model on one of the backends (boxed: sessions are a few
/// hundred bytes, moved to and from the batch scheduler every step).
#[derive(Debug)]
pub(crate) enum AnySession {
    Cpu(Box<Session<CpuBackend>>),
    Gpu(Box<Session<GpuBackend>>),
}

impl AnySession {
    pub(crate) fn id(&self) -> u64 {
        match self {
            Self::Cpu(s) => s.id(),
            Self::Gpu(s) => s.id(),
        }
    }

    pub(crate) fn logits(&self) -> &[f32] {
        match self {
            Self::Cpu(s) => s.logits(),
            Self::Gpu(s) => s.logits(),
        }
    }

    pub(crate) fn position(&self) -> usize {
        match self {
            Self::Cpu(s) => s.position(),
            Self::Gpu(s) => s.position(),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        match self {
            Self::Cpu(s) => s.capacity(),
            Self::Gpu(s) => s.capacity(),
        }
    }
}

/// Scratch of batched decode steps on one of the backends (boxed, as
/// sessions are).
#[derive(Debug)]
pub(crate) enum AnyBatchScratch {
    Cpu(Box<BatchScratch<CpuBackend>>),
    Gpu(Box<BatchScratch<GpuBackend>>),
}

fn mismatch() -> realm_models::Error {
    realm_models::Error::BadConfig("a session was used with a model on another backend".into())
}

/// Runs `$body` with `$m` the model and `$s` the session, whichever backend
/// they are on.
macro_rules! with_session {
    ($model:expr, $session:expr, |$m:ident, $s:ident| $body:expr) => {
        match (&$model.cell, $session) {
            (ModelCell::Cpu(c), AnySession::Cpu($s)) => c.with_dependent(|_, $m| $body),
            (ModelCell::Gpu(c), AnySession::Gpu($s)) => c.with_dependent(|_, $m| $body),
            _ => Err(mismatch()),
        }
    };
}

/// One model in the store.
#[derive(Debug)]
pub(crate) struct LoadedModel {
    pub(crate) id: ModelId,
    cell: ModelCell,
    /// The file's metadata as a tensor-less GGUF file: what the guest builds
    /// its tokenizer from.
    pub(crate) metadata: Vec<u8>,
    pub(crate) vocab_size: usize,
    pub(crate) n_layers: usize,
    /// Element type of its sessions' KV caches (the store's).
    kv_dtype: KvDtype,
    /// Its LoRA adapters' ids, in the order they were given, and names.
    pub(crate) loras: Vec<(LoraId, String)>,
}

type ModelResult<T> = std::result::Result<T, realm_models::Error>;

impl LoadedModel {
    /// A new session, its KV cache of the store's element type (see
    /// [`Model::session_with_kv`]), running with LoRA adapters `loras`.
    pub(crate) fn session(
        &self,
        max_seq_len: usize,
        batch: usize,
        loras: &[(LoraId, f32)],
    ) -> ModelResult<AnySession> {
        let kv = self.kv_dtype;
        match &self.cell {
            ModelCell::Cpu(c) => c
                .with_dependent(|_, m| m.session_with_kv(max_seq_len, batch, kv))
                .map(|mut s| {
                    s.set_loras(loras);
                    AnySession::Cpu(Box::new(s))
                }),
            ModelCell::Gpu(c) => c
                .with_dependent(|_, m| m.session_with_kv(max_seq_len, batch, kv))
                .map(|mut s| {
                    s.set_loras(loras);
                    AnySession::Gpu(Box::new(s))
                }),
        }
    }

    /// Waits for the device work this thread queued on the model's
    /// backend (none on the CPU), so that what it wrote may be handed to
    /// another thread or freed.
    pub(crate) fn synchronize(&self) -> ModelResult<()> {
        match &self.cell {
            ModelCell::Cpu(_) => Ok(()),
            ModelCell::Gpu(c) => {
                c.with_dependent(|_, m| BackendCore::synchronize(m.backend()).map_err(Into::into))
            }
        }
    }

    /// Scratch for batched steps of up to `rows` sessions.
    pub(crate) fn batch_scratch(&self, rows: usize) -> ModelResult<AnyBatchScratch> {
        match &self.cell {
            ModelCell::Cpu(c) => c
                .with_dependent(|_, m| m.batch_scratch(rows))
                .map(|s| AnyBatchScratch::Cpu(Box::new(s))),
            ModelCell::Gpu(c) => c
                .with_dependent(|_, m| m.batch_scratch(rows))
                .map(|s| AnyBatchScratch::Gpu(Box::new(s))),
        }
    }

    /// [`Model::forward`], leaving the logits in the session.
    pub(crate) fn forward(&self, s: &mut AnySession, tokens: &[u32]) -> ModelResult<()> {
        with_session!(self, s, |m, s| m.forward(s, tokens).map(|_| ()))
    }

    /// [`Model::embed_tokens`].
    pub(crate) fn embed_tokens(&self, s: &mut AnySession, tokens: &[u32]) -> ModelResult<()> {
        with_session!(self, s, |m, s| m.embed_tokens(s, tokens))
    }

    /// [`Model::forward_layer`].
    pub(crate) fn forward_layer(&self, s: &mut AnySession, layer: usize) -> ModelResult<()> {
        with_session!(self, s, |m, s| m.forward_layer(s, layer))
    }

    /// [`Model::shift_context`].
    pub(crate) fn shift_context(
        &self,
        s: &mut AnySession,
        keep: usize,
        discard: usize,
    ) -> ModelResult<()> {
        with_session!(self, s, |m, s| m.shift_context(s, keep, discard))
    }

    /// [`Model::compute_logits`], leaving the logits in the session.
    pub(crate) fn compute_logits(&self, s: &mut AnySession) -> ModelResult<()> {
        with_session!(self, s, |m, s| m.compute_logits(s).map(|_| ()))
    }

    /// [`Model::forward_batch`] over sessions of this model.
    pub(crate) fn forward_batch(
        &self,
        rows: Vec<(&mut AnySession, u32)>,
        scratch: &mut AnyBatchScratch,
    ) -> ModelResult<()> {
        match (&self.cell, scratch) {
            (ModelCell::Cpu(c), AnyBatchScratch::Cpu(sc)) => {
                let mut typed = Vec::with_capacity(rows.len());
                for (s, t) in rows {
                    match s {
                        AnySession::Cpu(s) => typed.push((&mut **s, t)),
                        AnySession::Gpu(_) => return Err(mismatch()),
                    }
                }
                c.with_dependent(|_, m| m.forward_batch(&mut typed, sc))
            }
            (ModelCell::Gpu(c), AnyBatchScratch::Gpu(sc)) => {
                let mut typed = Vec::with_capacity(rows.len());
                for (s, t) in rows {
                    match s {
                        AnySession::Gpu(s) => typed.push((&mut **s, t)),
                        AnySession::Cpu(_) => return Err(mismatch()),
                    }
                }
                c.with_dependent(|_, m| m.forward_batch(&mut typed, sc))
            }
            _ => Err(mismatch()),
        }
    }

    /// Bytes of the mapped file (all of a split model's files).
    fn file_len(&self) -> usize {
        match &self.cell {
            ModelCell::Cpu(c) => c.borrow_owner().file.len(),
            ModelCell::Gpu(c) => c.borrow_owner().file.len(),
        }
    }
}

/// Models loaded once and shared: loading a file that is already loaded
/// returns the same [`ModelId`]; a model can be removed once no tenant holds
/// it.
#[derive(Debug)]
pub struct ModelStore {
    backend: StoreBackend,
    /// Element type of the KV caches of sessions on models it loads.
    kv_dtype: KvDtype,
    models: Mutex<HashMap<ModelId, Arc<LoadedModel>>>,
}

/// The SHA-256 of a file, as a [`ModelId`].
fn hash_file(path: &Path) -> Result<ModelId> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let digest = hasher.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    Ok(ModelId(hex.into()))
}

impl ModelStore {
    /// An empty store whose models run on `backend` (an `Arc<CpuBackend>`
    /// or an `Arc<GpuBackend>`).
    pub fn new(backend: impl Into<StoreBackend>) -> Self {
        Self {
            backend: backend.into(),
            kv_dtype: KvDtype::F32,
            models: Mutex::new(HashMap::new()),
        }
    }

    /// The store, with the sessions of models it loads from now on keeping
    /// their keys and values as `kv_dtype` (f32 by default, exact; f16
    /// halves every tenant's KV memory, as llama.cpp's default cache).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use realm_compute_cpu::CpuBackend;
    /// use realm_runtime::{KvDtype, ModelStore};
    ///
    /// let store = ModelStore::new(Arc::new(CpuBackend::new()?)).with_kv_dtype(KvDtype::F16);
    /// assert_eq!(store.kv_dtype(), KvDtype::F16);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn with_kv_dtype(mut self, kv_dtype: KvDtype) -> Self {
        self.kv_dtype = kv_dtype;
        self
    }

    /// The element type of the KV caches of sessions on models it loads.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ModelId, Arc<LoadedModel>>> {
        // A panic while holding the lock cannot leave the map inconsistent
        // (every change is one insert or remove), so a poisoned lock is used.
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the GGUF file at `path` (memory-mapped), identified by its
    /// content hash; a file already loaded is not loaded again.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<ModelId> {
        let path = path.as_ref();
        let id = hash_file(path)?;
        self.load_as(path, id)
    }

    /// Loads the file at `path` under the caller's `id`; if `id` is already
    /// loaded (with no LoRA adapters: see
    /// [`ModelStore::load_with_loras`]), that model is kept and `id`
    /// returned.
    pub fn load_as(&self, path: impl AsRef<Path>, id: ModelId) -> Result<ModelId> {
        self.load_with_loras(path, id, &[])
    }

    /// [`ModelStore::load_as`] with LoRA adapters (llama.cpp's GGUF adapter
    /// files) added to the model, in order: a tenant runs with the ones
    /// its [`TenantConfig::loras`] names, by their place here. If `id` is
    /// already loaded, it must have been with the same adapter files.
    ///
    /// [`TenantConfig::loras`]: crate::TenantConfig::loras
    pub fn load_with_loras(
        &self,
        path: impl AsRef<Path>,
        id: ModelId,
        loras: &[std::path::PathBuf],
    ) -> Result<ModelId> {
        let names: Vec<String> = loras.iter().map(|p| p.display().to_string()).collect();
        if let Some(m) = self.lock().get(&id) {
            let have: Vec<&String> = m.loras.iter().map(|(_, n)| n).collect();
            if have.iter().copied().ne(names.iter()) {
                return Err(Error::Config(format!(
                    "model {id} is loaded with LoRA adapters {have:?}, not {names:?}"
                )));
            }
            return Ok(id);
        }
        let file = GgufFile::open(path)?;
        let loras = names
            .iter()
            .zip(loras)
            .map(|(n, p)| Ok((n.clone(), GgufFile::open(p)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut writer = GgufWriter::new();
        *writer.metadata_mut() = file.metadata().clone();
        let metadata = writer.to_bytes()?;
        // What the store keeps of a model: its sizes and adapters' ids.
        fn facts<B: realm_core::backend::Backend>(
            m: &Model<'_, B>,
        ) -> (usize, usize, Vec<(LoraId, String)>) {
            let loras = m.loras().map(|(id, i)| (id, i.name.clone())).collect();
            (m.config().vocab_size, m.config().n_layers, loras)
        }
        let (cell, (vocab_size, n_layers, loras)) = match &self.backend {
            StoreBackend::Cpu(b) => {
                let owner = ModelOwner {
                    file,
                    loras,
                    backend: b.clone(),
                };
                let cell = CpuCell::try_new(owner, |o| o.model())?;
                let facts = cell.with_dependent(|_, m| facts(m));
                (ModelCell::Cpu(cell), facts)
            }
            StoreBackend::Gpu(b) => {
                let owner = ModelOwner {
                    file,
                    loras,
                    backend: b.clone(),
                };
                let cell = GpuCell::try_new(owner, |o| o.model())?;
                let facts = cell.with_dependent(|_, m| facts(m));
                (ModelCell::Gpu(cell), facts)
            }
        };
        let model = Arc::new(LoadedModel {
            id: id.clone(),
            cell,
            metadata,
            vocab_size,
            n_layers,
            kv_dtype: self.kv_dtype,
            loras,
        });
        // Two threads may have loaded the same id at once: the first wins.
        self.lock().entry(id.clone()).or_insert(model);
        Ok(id)
    }

    /// Removes a model no tenant holds; fails with [`Error::ModelInUse`]
    /// otherwise. The file is unmapped when the last reference goes.
    pub fn remove(&self, id: &ModelId) -> Result<()> {
        let mut models = self.lock();
        let model = models
            .get(id)
            .ok_or_else(|| Error::UnknownModel(id.clone()))?;
        let holders = Arc::strong_count(model) - 1;
        if holders > 0 {
            return Err(Error::ModelInUse(id.clone(), holders));
        }
        models.remove(id);
        Ok(())
    }

    /// The ids loaded, sorted.
    pub fn ids(&self) -> Vec<ModelId> {
        let mut ids: Vec<ModelId> = self.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// How many holders (tenants, in-flight steps) share model `id` besides
    /// the store; `None` when it is not loaded.
    pub fn holders(&self, id: &ModelId) -> Option<usize> {
        self.lock().get(id).map(|m| Arc::strong_count(m) - 1)
    }

    /// Bytes of the files mapped by the store (each loaded model once).
    pub fn mapped_bytes(&self) -> usize {
        self.lock().values().map(|m| m.file_len()).sum()
    }

    /// The model `id`, for a tenant being granted it.
    pub(crate) fn get(&self, id: &ModelId) -> Result<Arc<LoadedModel>> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::UnknownModel(id.clone()))
    }
}
