//! Runnable templates for the Realm crates; the code is in the examples:
//!
//! - `paris`: load a model, render a question through its chat template,
//!   generate greedily (`cargo run --release --example paris`).
//! - `stream`: stream a completion with sampling options
//!   (`cargo run --release --example stream -- "Once upon a time" 0.8 42`).
//! - `search`: rank documents by the cosine similarity of their
//!   embeddings to a query's
//!   (`cargo run --release --example search -- "Where is the Eiffel Tower?"`).
//! - `tenants`: wasm tenants of one model, each with a LoRA adapter of its
//!   own, decoding in shared batches
//!   (`cargo run --release --example tenants -- [ADAPTER.gguf ...]`).
//! - `gpu`: `paris` on the GPU backend, a CUDA device with `--features
//!   cuda` (`cargo run --release --example gpu --features cuda -- cuda:0`).
