//! The model store: each GGUF file memory-mapped and loaded once, shared by
//! every tenant it is granted to.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use realm_compute_cpu::CpuBackend;
use realm_core::gguf::{GgufFile, GgufWriter};
use realm_models::Model;
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

/// What a loaded model borrows from: the mapped file and the backend.
#[derive(Debug)]
pub(crate) struct ModelOwner {
    file: GgufFile,
    backend: Arc<CpuBackend>,
}

type CpuModel<'a> = Model<'a, CpuBackend>;

self_cell::self_cell!(
    /// The mapped file together with the model borrowing it.
    pub(crate) struct ModelCell {
        owner: ModelOwner,
        #[not_covariant]
        dependent: CpuModel,
    }
    impl {Debug}
);

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
}

impl LoadedModel {
    /// Runs `f` on the model.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&Model<'_, CpuBackend>) -> R) -> R {
        self.cell.with_dependent(|_, model| f(model))
    }

    /// Bytes of the mapped file.
    fn file_len(&self) -> usize {
        self.cell.borrow_owner().file.as_bytes().len()
    }
}

/// Models loaded once and shared: loading a file that is already loaded
/// returns the same [`ModelId`]; a model can be removed once no tenant holds
/// it.
#[derive(Debug)]
pub struct ModelStore {
    backend: Arc<CpuBackend>,
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
    /// An empty store whose models run on `backend`.
    pub fn new(backend: Arc<CpuBackend>) -> Self {
        Self {
            backend,
            models: Mutex::new(HashMap::new()),
        }
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
    /// loaded, that model is kept and `id` returned.
    pub fn load_as(&self, path: impl AsRef<Path>, id: ModelId) -> Result<ModelId> {
        if self.lock().contains_key(&id) {
            return Ok(id);
        }
        let file = GgufFile::open(path)?;
        let mut writer = GgufWriter::new();
        *writer.metadata_mut() = file.metadata().clone();
        let metadata = writer.to_bytes()?;
        let owner = ModelOwner {
            file,
            backend: self.backend.clone(),
        };
        let cell = ModelCell::try_new(owner, |o| Model::load(&o.file, &*o.backend))?;
        let (vocab_size, n_layers) =
            cell.with_dependent(|_, m| (m.config().vocab_size, m.config().n_layers));
        let model = Arc::new(LoadedModel {
            id: id.clone(),
            cell,
            metadata,
            vocab_size,
            n_layers,
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
