//! # realm-core
//!
//! The bottom layer of Realm: bytes and formats.
//!
//! - [`gguf`]: read GGUF files (memory-mapped, zero copy, strictly validated)
//!   and write them.
//! - [`tokenizer`]: the tokenizer a GGUF file describes (SentencePiece BPE,
//!   byte-level BPE, WordPiece and SentencePiece unigram), identical to
//!   llama.cpp's; [`chat`]: chat templates.
//! - [`quant`]: the ggml quantization formats: block layouts, dequantization
//!   and quantization.
//! - [`imatrix`]: importance matrices (llama-imatrix's files), which weight
//!   quantization towards the columns a model's activations use most.
//! - [`GgmlType`] and [`TensorView`]: a tensor's type, shape and borrowed bytes,
//!   which the compute backends take.
//!
//! ```no_run
//! # fn main() -> realm_core::Result<()> {
//! let model = realm_core::gguf::GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let layers = model.metadata().get_u32("llama.block_count")?;
//! let embd = model.tensor("token_embd.weight")?; // borrowed from the map
//! println!("{layers} layers, token_embd is {} {:?}", embd.dtype(), embd.shape());
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod backend;
pub mod catalog;
pub mod chat;
mod dtype;
mod error;
pub mod gguf;
pub mod imatrix;
pub mod quant;
mod tensor;
pub mod tokenizer;

pub use dtype::GgmlType;
pub use error::{Error, Result};
pub use tensor::TensorView;
