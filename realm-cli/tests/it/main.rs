//! The `realm` command's tests, one binary (`cargo test -p realm-cli --test it`;
//! a module's alone: `-- serve::`): each runs the built `realm` on the
//! real models and synthetic ones.
//!
//! One binary rather than one a file: each would link the crates (and
//! compile their generic code) again, minutes of the test run's build.

mod common;

mod embed;
mod imatrix;
mod info;
mod perplexity;
mod quantize;
mod run;
mod serve;
