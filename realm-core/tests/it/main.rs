//! realm-core's integration tests, one binary (`cargo test -p realm-core --test it`;
//! a module's alone: `-- quant_models::`): GGUF files, quantization and
//! tokenizers against llama.cpp's fixtures, and their property tests.
//!
//! One binary rather than one a file: each would link the crates (and
//! compile their generic code) again, minutes of the test run's build.

mod bpe_fixture;
mod common;

mod gguf_mmap;
mod gguf_props;
mod gguf_real;
mod imatrix_props;
mod quant_api;
mod quant_fixtures;
mod quant_models;
mod quant_roundtrip;
mod quant_weighted;
mod tokenizer_chat;
mod tokenizer_gemma4;
mod tokenizer_golden;
mod tokenizer_o200k;
mod tokenizer_props;
