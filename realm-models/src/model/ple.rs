//! Each block's own input (Gemma 3n's and Gemma 4's per-layer
//! embeddings): a row of a second embedding table plus a projection of
//! the token's scaled embedding, a block's share at a time normed, which
//! gates a product of the block's output on its way back into the
//! residual stream. The products run on the backend; the norms of the
//! inputs, a few values a row, on the host in ggml's order.

use realm_core::backend::{Backend, WeightInfo};
use realm_core::gguf::Gguf;

use super::recurrent::{fetch, rms_scale, vector};
use super::{checked_weight, Model};
use crate::config::ModelConfig;
use crate::imatrix::Collector;
use crate::Result;

/// The model's weights of the blocks' inputs.
#[derive(Debug)]
pub(super) struct Ple<'a, B: Backend + 'a> {
    /// Each token's inputs to every block, `per_layer` values a block
    /// (`per_layer_token_embd`).
    embed: B::Weight<'a>,
    /// The scaled embedding's share of them (`per_layer_model_proj`).
    model_proj: B::Weight<'a>,
    /// Its norm, a block's input at a time (`per_layer_proj_norm`).
    proj_norm: Vec<f32>,
}

/// One block's weights: the gate its output makes (`inp_gate`), the
/// product back to the model's width (`proj`) and its norm (`post_norm`).
#[derive(Debug)]
pub(super) struct PleBlock<'a, B: Backend + 'a> {
    gate: B::Weight<'a>,
    proj: B::Weight<'a>,
    post_norm: B::Buffer,
}

/// Room for a pass's rows.
#[derive(Debug)]
pub(super) struct PleScratch<B: Backend> {
    /// Values read back from the backend, and a second such.
    host: Vec<f32>,
    table: Vec<f32>,
    /// Block `l`'s input of row `r` at `(l * n + r) * per_layer`: made on
    /// the host, then in the backend.
    inputs_host: Vec<f32>,
    inputs: B::Buffer,
    /// Rows of every block's inputs (`per_layer * n_layers` wide).
    wide: B::Buffer,
    /// Rows of a block's gate and of its input (`per_layer` wide).
    gate: B::Buffer,
    input: B::Buffer,
}

impl<'a, B: Backend> Ple<'a, B> {
    pub(super) fn load<S: AsRef<[u8]>>(
        file: &'a Gguf<S>,
        backend: &B,
        c: &ModelConfig,
        per_layer: usize,
    ) -> Result<Self> {
        let (d, wide) = (c.d_model, per_layer * c.n_layers);
        let weight =
            |name: &str, rows, cols| checked_weight(backend, &file.tensor(name)?, rows, cols);
        Ok(Self {
            embed: weight("per_layer_token_embd.weight", c.vocab_size, wide)?,
            model_proj: weight("per_layer_model_proj.weight", wide, d)?,
            proj_norm: vector(file, "per_layer_proj_norm.weight", per_layer)?,
        })
    }
}

impl<'a, B: Backend> PleBlock<'a, B> {
    pub(super) fn load<S: AsRef<[u8]>>(
        file: &'a Gguf<S>,
        backend: &B,
        layer: usize,
        c: &ModelConfig,
        per_layer: usize,
    ) -> Result<Self> {
        let n = |s: &str| format!("blk.{layer}.{s}");
        let d = c.d_model;
        let weight =
            |s: &str, rows, cols| checked_weight(backend, &file.tensor(&n(s))?, rows, cols);
        Ok(Self {
            gate: weight("inp_gate.weight", per_layer, d)?,
            proj: weight("proj.weight", d, per_layer)?,
            post_norm: backend.upload(&vector(file, &n("post_norm.weight"), d)?)?,
        })
    }
}

impl<B: Backend> PleScratch<B> {
    pub(super) fn new(backend: &B, c: &ModelConfig, per_layer: usize, rows: usize) -> Result<Self> {
        let buf = |width: usize| backend.buffer(rows * width);
        Ok(Self {
            host: Vec::new(),
            table: Vec::new(),
            inputs_host: Vec::new(),
            inputs: buf(per_layer * c.n_layers)?,
            wide: buf(per_layer * c.n_layers)?,
            gate: buf(per_layer)?,
            input: buf(per_layer)?,
        })
    }
}

/// `1 / sqrt(2)` as ggml's graph makes it.
pub(super) fn half_root() -> f32 {
    1.0 / 2f32.sqrt()
}

impl<'a, B: Backend> Model<'a, B> {
    /// Every block's input for the pass's `n` tokens, whose scaled
    /// embeddings are the first rows of `x`: the table's row times
    /// sqrt(p), plus the embedding's product divided by sqrt(d) and
    /// normed, all over sqrt(2).
    pub(super) fn ple_inputs(
        &self,
        ple: &Ple<'a, B>,
        s: &mut PleScratch<B>,
        ws: &mut B::Workspace,
        x: &B::Buffer,
        tokens: &[u32],
    ) -> Result<()> {
        let (b, c) = (self.backend, &self.config);
        let p = ple.proj_norm.len();
        let (n, d, layers) = (tokens.len(), c.d_model, c.n_layers);
        let wide = p * layers;
        b.embed(ws, &ple.embed, tokens, &mut s.wide)?;
        fetch(b, &s.wide, n * wide, &mut s.table)?;
        b.matmul(ws, &ple.model_proj, x, n, &mut s.wide)?;
        fetch(b, &s.wide, n * wide, &mut s.host)?;
        let (proj_scale, table_scale) = (1.0 / (d as f32).sqrt(), (p as f32).sqrt());
        let half = half_root();
        s.inputs_host.resize(layers * n * p, 0.0);
        for r in 0..n {
            for l in 0..layers {
                let at = r * wide + l * p;
                let proj = &mut s.host[at..at + p];
                proj.iter_mut().for_each(|v| *v *= proj_scale);
                let scale = rms_scale(proj, c.rms_eps);
                let out = &mut s.inputs_host[(l * n + r) * p..][..p];
                let parts = proj.iter().zip(&ple.proj_norm).zip(&s.table[at..at + p]);
                for (o, ((&v, &w), &t)) in out.iter_mut().zip(parts) {
                    *o = (v * scale * w + t * table_scale) * half;
                }
            }
        }
        b.upload_into(&s.inputs_host, &mut s.inputs)?;
        Ok(())
    }

    /// Block `li`'s input gated by `x` (its first `n` rows): the GELU of
    /// `x`'s gate product times the input, back to the model's width and
    /// normed, into `out`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ple_gate(
        &self,
        w: &PleBlock<'a, B>,
        s: &mut PleScratch<B>,
        ws: &mut B::Workspace,
        seen: &mut Option<Box<Collector>>,
        (x, n, li): (&B::Buffer, usize, usize),
        out: &mut B::Buffer,
    ) -> Result<()> {
        let b = self.backend;
        let (d, p) = (self.config.d_model, w.gate.rows());
        b.matmul(ws, &w.gate, x, n, &mut s.gate)?;
        if let Some(seen) = seen {
            let name = format!("blk.{li}.inp_gate.weight");
            seen.observe_named(b, ws, &name, (x, n, d))?;
        }
        b.copy_rows(&s.inputs, li * n..(li + 1) * n, p, &mut s.input)?;
        b.geglu_inplace(&mut s.gate, &s.input, n * p)?;
        b.matmul(ws, &w.proj, &s.gate, n, out)?;
        if let Some(seen) = seen {
            let name = format!("blk.{li}.proj.weight");
            seen.observe_named(b, ws, &name, (&s.gate, n, p))?;
        }
        b.rms_norm_inplace(out, &w.post_norm, self.config.rms_eps, n)?;
        Ok(())
    }
}
