//! realm-models' integration tests, one binary (`cargo test -p realm-models --test it`;
//! a module's alone: `-- golden::`): the models against llama.cpp's
//! fixtures, generation, sampling, grammars, states, shifts and splits.
//!
//! One binary rather than one a file: each would link the crates (and
//! compile their generic code) again, minutes of the test run's build.

mod common;

mod architectures;
mod generate;
mod golden;
mod grammar;
mod imatrix;
mod lora;
mod reasoning_props;
mod samplers;
mod shift;
mod split;
mod state;
mod synthetic;
