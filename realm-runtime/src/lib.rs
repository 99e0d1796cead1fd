//! # realm-runtime
//!
//! Many isolated WebAssembly tenants sharing one memory-mapped, still
//! quantized GGUF model. Each tenant is a wasm guest (tokenizer, sampler,
//! generation loop; `realm-wasm` is Realm's own) running in wasmtime with
//! Memory64 enabled; the transformer math runs on the host through the host
//! functions of the `realm` import module (documented in `realm-wasm/ABI.md`).
//!
//! - [`Runtime`]: the wasmtime engine (Memory64, epoch interruption, pooling
//!   allocator), an epoch ticker thread, the [`ModelStore`] and the
//!   cross-tenant batch scheduler.
//! - [`Tenant`]: one guest with the models granted to it, a memory cap and a
//!   time limit per call. A guest that traps, runs out of time or memory, or
//!   misuses the ABI fails its own call only; its sessions are freed.
//!
//! ```no_run
//! # fn main() -> Result<(), realm_runtime::Error> {
//! use realm_runtime::{GenerateRequest, Runtime, RuntimeConfig, TenantConfig};
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let model = runtime.load_model("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let wasm = std::fs::read("target/wasm32-unknown-unknown/wasm-guest/realm_wasm.wasm").unwrap();
//! let mut tenant = runtime.tenant(&wasm, TenantConfig::new(vec![model]))?;
//! let stats = tenant.generate("Hello", &GenerateRequest::default(), |text| print!("{text}"))?;
//! println!("\n{} tokens in {:.2}s", stats.generated_tokens, stats.seconds);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod batch;
mod error;
mod host;
mod modules;
mod runtime;
mod store;

pub use batch::BatchStats;
pub use error::{Error, Result};
pub use realm_compute_gpu::{GpuDevice, StepMode};
pub use realm_core::backend::KvDtype;
pub use runtime::{
    GenerateRequest, GenerationStats, Runtime, RuntimeConfig, StopReason, Tenant, TenantConfig,
    TenantLora,
};
pub use store::{ModelId, ModelStore, StoreBackend};

/// Where `cargo xtask wasm` writes the realm-wasm guest, relative to the
/// workspace root.
pub const GUEST_WASM_PATH: &str = "target/wasm32-unknown-unknown/wasm-guest/realm_wasm.wasm";
