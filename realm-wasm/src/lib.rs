//! # realm-wasm
//!
//! Realm's WebAssembly guest. Built for `wasm32-unknown-unknown` by
//! `cargo xtask wasm`, it runs inside a `realm-runtime` tenant: it tokenizes
//! the prompt with realm-core's tokenizer (built from the model's metadata,
//! which the host hands over), calls the host for every forward pass, samples
//! with realm-models' sampler and streams text back through a host callback.
//!
//! The C ABI it implements is documented in `ABI.md`. On other targets only
//! the target-independent parts build (the parameter block and the
//! generation loop over the [`Host`] trait), so that `cargo test --workspace`
//! covers them.
#![warn(missing_docs)]

mod generate;
mod params;

#[cfg(target_arch = "wasm32")]
mod ffi;

pub use generate::{generate, Failure, Host, Outcome, StopReason};
pub use params::{
    Params, ParamsError, FLAG_ADD_SPECIAL, FLAG_CONTEXT_SHIFT, FLAG_LAYERED, FLAG_PARSE_SPECIAL,
    PARAMS_VERSION,
};
