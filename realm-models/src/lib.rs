//! # realm-models
//!
//! Transformers over Realm's backend trait ([`realm_core::backend::Backend`]):
//! the llama family (llama, mistral, qwen2 and qwen3, their mixtures of
//! experts, phi3, smollm3, granite), Gemma 2 and 3, and gpt-oss
//! ([`Architecture`]), configured from GGUF metadata, with a per-sequence KV
//! cache, sampling and generation, and a reply's reasoning told from its
//! answer ([`reasoning`]).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use realm_core::gguf::GgufFile;
//! use realm_models::Model;
//! use realm_compute_cpu::CpuBackend;
//! let file = GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let cpu = CpuBackend::new()?;
//! let model = Model::load(&file, &cpu)?;           // weights stay in the map
//! let mut session = model.session(2048, 64)?;       // KV cache + scratch
//! let logits = model.forward(&mut session, &[1, 2, 3])?;
//! # let _ = logits; Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod config;
mod error;
pub mod model;
mod record;

pub mod embedding;
pub mod generate;
pub mod grammar;
pub mod imatrix;
pub mod logprob;
pub mod lookup;
pub mod lora;
pub mod reasoning;
pub mod sampling;
pub mod synthetic;
pub mod tools;

pub use config::{
    Architecture, AttnTemperature, DeltaNetConfig, ExpertActivation, GateActivation, Gating,
    MlaConfig, ModelConfig, MoeConfig, SelectionBias, YarnConfig,
};
pub use error::{Error, Result};
pub use model::{
    BatchScratch, ContextShift, Model, Session, CHECKPOINT_TAIL, OUTPUT_ROWS, STEP_SPAN,
};

pub use generate::{
    generate, generate_after, GenerateParams, Generation, GenerationStats, StopReason,
};
pub use grammar::{Grammar, GrammarError};
pub use logprob::{Divergence, LogProbs};
pub use lookup::Lookup;
pub use lora::{LoraId, LoraInfo};
pub use sampling::{Mirostat, Sampler, SamplingParams};
