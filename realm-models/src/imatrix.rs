//! Collecting an importance matrix (llama.cpp's `llama-imatrix`): while a
//! session runs text, the input rows of each of its model's matrix products
//! are squared and summed per column ([`realm_core::imatrix::Imatrix`]).
//! Quantizing with the result (`realm quantize --imatrix`) keeps the
//! columns the activations use most best.
//!
//! ```
//! use realm_core::imatrix::Imatrix;
//! use realm_models::{synthetic::SyntheticLayout, Model};
//! let file = realm_core::gguf::Gguf::from_bytes(SyntheticLayout::tiny("llama")?.write(1)?)?;
//! let backend = realm_compute_cpu::CpuBackend::new().unwrap();
//! let model = Model::load(&file, &backend)?;
//! let mut s = model.session(16, 16)?;
//! s.collect_imatrix(Imatrix::new(8), false);
//! model.forward(&mut s, &[1, 2, 3, 4, 5, 6, 7, 8])?;
//! let m = s.take_imatrix().unwrap();
//! // Every block matrix saw the eight tokens.
//! assert_eq!(m.len(), 7 * model.config().n_layers);
//! assert_eq!(m.entry("blk.0.ffn_down.weight").unwrap().counts, [8]);
//! # Ok::<(), realm_models::Error>(())
//! ```

use realm_core::backend::Backend;
use realm_core::imatrix::Imatrix;

use crate::lora::Target;
use crate::Result;

/// An importance matrix being collected, and whether it takes the
/// untied output matrix's inputs too (llama-imatrix's `--process-output`).
#[derive(Debug)]
pub(crate) struct Collector {
    pub(crate) matrix: Imatrix,
    pub(crate) output: bool,
}

impl Collector {
    /// Adds the `n` input rows of `k` values in `x` of the product with
    /// block matrix `at` (`None`: the output matrix).
    pub(crate) fn observe<B: Backend>(
        &mut self,
        b: &B,
        ws: &mut B::Workspace,
        at: Option<(usize, Target)>,
        (x, n, k): (&B::Buffer, usize, usize),
    ) -> Result<()> {
        let name = match at {
            Some((layer, t)) => format!("blk.{layer}.{}.weight", t.name()),
            None if self.output => "output.weight".to_string(),
            None => return Ok(()),
        };
        self.observe_named(b, ws, &name, (x, n, k))
    }

    /// [`Collector::observe`] for matrix `name`.
    pub(crate) fn observe_named<B: Backend>(
        &mut self,
        b: &B,
        ws: &mut B::Workspace,
        name: &str,
        (x, n, k): (&B::Buffer, usize, usize),
    ) -> Result<()> {
        let m = &mut self.matrix;
        Ok(b.read_on_host(ws, x, n * k, |rows| m.add(name, rows, k))??)
    }

    /// Adds the `n` input rows of `k` values in `x` of expert `expert`
    /// (of `experts`) of block matrix `name`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn observe_expert<B: Backend>(
        &mut self,
        b: &B,
        ws: &mut B::Workspace,
        name: &str,
        (expert, experts): (usize, usize),
        (x, n, k): (&B::Buffer, usize, usize),
    ) -> Result<()> {
        let m = &mut self.matrix;
        Ok(b.read_on_host(ws, x, n * k, |rows| {
            m.add_expert(name, expert, experts, rows, k)
        })??)
    }
}
