//! Gemma 3n's extras ([`AltUpConfig`]): its residual streams (AltUp), the
//! low-rank path beside the attention (LAuReL) and the first feed-forward
//! blocks' sparse activations (each block's own input is in
//! [`super::ple`]). The
//! matrix products run on the backend; the streams, a few values a row
//! each block, on the host, in ggml's order of operations.

use realm_core::backend::{Backend, BackendError};
use realm_core::gguf::Gguf;

use super::ple::half_root;
use super::recurrent::{dot, fetch, rms_scale, vector};
use super::{checked_weight, no_room, slices, Attend, Ffn, Model, Scratch};
use crate::config::{AltUpConfig, ModelConfig};
use crate::lora::LoraRun;
use crate::Result;

/// The model's own weights: the ways into the streams and out of them.
#[derive(Debug)]
pub(super) struct AltUp<'a, B: Backend + 'a> {
    /// From the embedding to each other stream (`altup_proj`).
    up: Vec<B::Weight<'a>>,
    /// From each other stream back (`altup_unembd_proj`).
    down: Vec<B::Weight<'a>>,
}

/// One block's weights.
#[derive(Debug)]
pub(super) struct AltUpBlock<'a, B: Backend + 'a> {
    /// The router's input norm (`altup_router_norm`) and its matrix
    /// (`altup_router`, `d_model` values a stream), on the host.
    router_norm: Vec<f32>,
    router: Vec<f32>,
    /// The prediction's coefficients from the router's outputs
    /// (`altup_predict_coef`: `inputs` values for each of `inputs^2`).
    predict: Vec<f32>,
    /// The correction's (`altup_correct_coef`: `inputs` for each stream).
    correct: Vec<f32>,
    /// The corrected active stream's scale before the block input's gate
    /// (`altup_correct_scale`).
    correct_scale: Vec<f32>,
    /// LAuReL's two products (`laurel_l`, `laurel_r`) and norm.
    laurel_l: B::Weight<'a>,
    laurel_r: B::Weight<'a>,
    laurel_norm: B::Buffer,
}

/// Room for a pass's rows.
#[derive(Debug)]
pub(super) struct AltUpScratch<B: Backend> {
    /// Stream `s`'s row `r` at `(s * n + r) * d_model` (`n` the pass's
    /// rows).
    streams: Vec<f32>,
    /// A block's predictions, laid out alike.
    pred: Vec<f32>,
    /// A row's router outputs (`inputs`) and coefficients (`inputs^2`).
    modal: Vec<f32>,
    coefs: Vec<f32>,
    /// Values read back from the backend, and a second such.
    host: Vec<f32>,
    table: Vec<f32>,
    /// Rows of LAuReL's rank, and its output.
    mid: B::Buffer,
    laurel: B::Buffer,
    /// What the host hands back, before its rows go where they belong.
    staging: B::Buffer,
}

impl<'a, B: Backend> AltUp<'a, B> {
    pub(super) fn load<S: AsRef<[u8]>>(
        file: &'a Gguf<S>,
        backend: &B,
        c: &ModelConfig,
        a: &AltUpConfig,
    ) -> Result<Self> {
        let d = c.d_model;
        let streams = |name: &str| slices(backend, &file.tensor(name)?, d, d, a.inputs - 1);
        Ok(Self {
            up: streams("altup_proj.weight")?,
            down: streams("altup_unembd_proj.weight")?,
        })
    }
}

impl<'a, B: Backend> AltUpBlock<'a, B> {
    pub(super) fn load<S: AsRef<[u8]>>(
        file: &'a Gguf<S>,
        backend: &B,
        layer: usize,
        c: &ModelConfig,
        a: &AltUpConfig,
    ) -> Result<Self> {
        let n = |s: &str| format!("blk.{layer}.{s}");
        let (d, k, r) = (c.d_model, a.inputs, a.laurel_rank);
        let weight =
            |s: &str, rows, cols| checked_weight(backend, &file.tensor(&n(s))?, rows, cols);
        let host = |s: &str, len| vector(file, &n(s), len);
        let buffer = |s: &str, len| Ok::<_, crate::Error>(backend.upload(&host(s, len)?)?);
        Ok(Self {
            router_norm: host("altup_router_norm.weight", d)?,
            router: host("altup_router.weight", k * d)?,
            predict: host("altup_predict_coef.weight", k * k * k)?,
            correct: host("altup_correct_coef.weight", k * k)?,
            correct_scale: host("altup_correct_scale.weight", d)?,
            laurel_l: weight("laurel_l.weight", r, d)?,
            laurel_r: weight("laurel_r.weight", d, r)?,
            laurel_norm: buffer("laurel_post_norm.weight", d)?,
        })
    }

    /// The router's outputs for row `x` into `out` (`inputs` values):
    /// `tanh` of its matrix times `x` normed, weighted and divided by its
    /// width.
    fn route(&self, x: &[f32], eps: f32, normed: &mut Vec<f32>, out: &mut [f32]) {
        let d = x.len();
        let (scale, inv_d) = (rms_scale(x, eps), 1.0 / d as f32);
        normed.clear();
        normed.extend(
            x.iter()
                .zip(&self.router_norm)
                .map(|(&v, &w)| v * scale * w * inv_d),
        );
        for (o, row) in out.iter_mut().zip(self.router.chunks_exact(d)) {
            *o = dot(row, normed).tanh();
        }
    }
}

impl<B: Backend> AltUpScratch<B> {
    pub(super) fn new(backend: &B, c: &ModelConfig, a: &AltUpConfig, rows: usize) -> Result<Self> {
        let buf = |width: usize| backend.buffer(rows * width);
        Ok(Self {
            streams: Vec::new(),
            pred: Vec::new(),
            modal: vec![0.0; a.inputs],
            coefs: vec![0.0; a.inputs * a.inputs],
            host: Vec::new(),
            table: Vec::new(),
            mid: buf(a.laurel_rank)?,
            laurel: buf(c.d_model)?,
            staging: buf(c.d_model)?,
        })
    }
}

/// `sqrt(sum(x^2))`, the sum in f64 as ggml's row sums take it.
fn magnitude(x: &[f32]) -> f32 {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    (sum as f32).sqrt()
}

impl<'a, B: Backend> Model<'a, B> {
    /// Rows `rows` of `src` (on the host, `width` wide) into the first rows
    /// of `dst` (which keeps its room).
    fn host_rows(
        &self,
        staging: &mut B::Buffer,
        src: &[f32],
        width: usize,
        dst: &mut B::Buffer,
    ) -> Result<()> {
        let b = self.backend;
        b.upload_into(src, staging)?;
        b.copy_rows(staging, 0..src.len() / width, width, dst)?;
        Ok(())
    }

    /// The streams of the pass's `n` rows, whose scaled embeddings are
    /// the first rows of `sc.x`.
    pub(super) fn altup_embed(
        &self,
        alt: &AltUp<'a, B>,
        sc: &mut Scratch<B>,
        n: usize,
    ) -> Result<()> {
        let (b, c) = (self.backend, &self.config);
        let a = c.altup.as_ref().ok_or_else(|| no_room("AltUp"))?;
        let s = sc.altup.as_mut().ok_or_else(|| no_room("AltUp"))?;
        let d = c.d_model;
        // The streams: the embedding, and its products brought to its
        // magnitude.
        fetch(b, &sc.x, n * d, &mut s.host)?;
        s.streams.resize(a.inputs * n * d, 0.0);
        let (first, rest) = s.streams.split_at_mut(n * d);
        first.copy_from_slice(&s.host[..n * d]);
        for (w, stream) in alt.up.iter().zip(rest.chunks_exact_mut(n * d)) {
            b.matmul(&mut sc.ws, w, &sc.x, n, &mut sc.proj)?;
            fetch(b, &sc.proj, n * d, &mut s.host)?;
            let rows = stream.chunks_exact_mut(d).zip(s.host.chunks_exact(d));
            for ((out, made), x) in rows.zip(first.chunks_exact(d)) {
                let (target, own) = (magnitude(x), magnitude(made));
                for (o, &v) in out.iter_mut().zip(made) {
                    *o = v * target / own;
                }
            }
        }
        Ok(())
    }

    /// Gemma 3n's block `li` over the pass's `n` rows: the streams'
    /// prediction, the block on the active one's (with LAuReL beside its
    /// attention), the correction and the block's own input; after the
    /// last block the streams' mean goes to `sc.x`.
    pub(super) fn altup_layer(
        &self,
        alt: &AltUp<'a, B>,
        sc: &mut Scratch<B>,
        (n, li): (usize, usize),
        runs: &[LoraRun<'_>],
        attend: &mut impl FnMut(&B, Attend<'_, B>) -> Result<(), BackendError>,
    ) -> Result<()> {
        let (b, c) = (self.backend, &self.config);
        let a = c.altup.as_ref().ok_or_else(|| no_room("AltUp"))?;
        let layer = &self.layers[li];
        let w = layer.altup.as_ref().ok_or_else(|| no_room("AltUp block"))?;
        let (d, k, eps) = (c.d_model, a.inputs, c.rms_eps);
        let nd = n * d;
        fn norm<X>(w: &Option<X>) -> Result<&X> {
            w.as_ref().ok_or_else(|| no_room("norm"))
        }
        {
            let s = sc.altup.as_mut().ok_or_else(|| no_room("AltUp"))?;
            // Each stream predicted from all by the router's coefficients.
            s.pred.resize(k * nd, 0.0);
            for r in 0..n {
                let active = &s.streams[r * d..(r + 1) * d];
                w.route(active, eps, &mut s.host, &mut s.modal);
                for (c, row) in s.coefs.iter_mut().zip(w.predict.chunks_exact(k)) {
                    *c = dot(row, &s.modal);
                }
                for j in 0..k {
                    let at = (j * n + r) * d;
                    let coefs = &s.coefs[j * k..(j + 1) * k];
                    for e in 0..d {
                        let mut sum = 0.0f64;
                        for (i, &cf) in coefs.iter().enumerate() {
                            sum += f64::from(s.streams[(i * n + r) * d + e] * cf);
                        }
                        s.pred[at + e] = sum as f32 + s.streams[at + e];
                    }
                }
            }
            // The active stream's prediction through the block.
            b.upload_into(&s.pred[..nd], &mut s.staging)?;
            b.copy_rows(&s.staging, 0..n, d, &mut sc.x)?;
            b.rms_norm(&sc.x, norm(&layer.attn_norm)?, eps, n, &mut sc.xn)?;
            // LAuReL: the normed input plus its low-rank product, normed.
            b.matmul(&mut sc.ws, &w.laurel_l, &sc.xn, n, &mut s.mid)?;
            b.matmul(&mut sc.ws, &w.laurel_r, &s.mid, n, &mut s.laurel)?;
            b.rms_norm_inplace(&mut s.laurel, &w.laurel_norm, eps, n)?;
            b.add_inplace(&mut s.laurel, &sc.xn, nd)?;
        }
        self.attention(sc, (n, li), runs, attend)?;
        b.rms_norm_inplace(&mut sc.proj, norm(&layer.post_attn_norm)?, eps, n)?;
        b.add_inplace(&mut sc.x, &sc.proj, nd)?;
        {
            let s = sc.altup.as_ref().ok_or_else(|| no_room("AltUp"))?;
            b.add_inplace(&mut sc.x, &s.laurel, nd)?;
        }
        b.scale_inplace(&mut sc.x, half_root(), nd)?;
        b.rms_norm(&sc.x, norm(&layer.ffn_norm)?, eps, n, &mut sc.xn)?;
        match &layer.ffn {
            Ffn::Dense(gate_up, down) => {
                let f = (gate_up, down, &layer.ffn_b);
                self.dense_ffn(sc, (n, li, layer.fused.gate_up), runs, f)?
            }
            _ => return Err(no_room("Gemma 3n's feed-forward block")),
        }
        b.rms_norm_inplace(&mut sc.proj, norm(&layer.post_ffn_norm)?, eps, n)?;
        b.add_inplace(&mut sc.x, &sc.proj, nd)?;
        let s = sc.altup.as_mut().ok_or_else(|| no_room("AltUp"))?;
        // Each stream corrected by the block's change to the active one.
        fetch(b, &sc.x, nd, &mut s.table)?;
        for r in 0..n {
            let out = &s.table[r * d..(r + 1) * d];
            w.route(out, eps, &mut s.host, &mut s.modal);
            for (c, row) in s.coefs.iter_mut().zip(w.correct.chunks_exact(k)) {
                *c = dot(row, &s.modal) + 1.0;
            }
            for (i, &cf) in s.coefs[..k].iter().enumerate() {
                let at = (i * n + r) * d;
                let (active, pred) = (&s.pred[r * d..(r + 1) * d], &s.pred[at..at + d]);
                let parts = out.iter().zip(active).zip(pred);
                for (v, ((&o, &a), &p)) in s.streams[at..at + d].iter_mut().zip(parts) {
                    *v = (o - a) * cf + p;
                }
            }
        }
        // The block's own input, gated by the corrected active stream,
        // joins the other streams.
        s.host.clear();
        let scaled = s.streams[..nd]
            .chunks_exact(d)
            .flat_map(|row| row.iter().zip(&w.correct_scale).map(|(&v, &g)| v * g));
        s.host.extend(scaled);
        self.host_rows(&mut s.staging, &s.host[..nd], d, &mut sc.xn)?;
        let (ple, pw) = (
            sc.ple.as_mut().ok_or_else(|| no_room("block inputs"))?,
            layer.ple.as_ref().ok_or_else(|| no_room("block input"))?,
        );
        self.ple_gate(
            pw,
            ple,
            &mut sc.ws,
            &mut sc.seen,
            (&sc.xn, n, li),
            &mut sc.proj,
        )?;
        fetch(b, &sc.proj, nd, &mut s.host)?;
        for stream in s.streams[nd..k * nd].chunks_exact_mut(nd) {
            stream.iter_mut().zip(&s.host).for_each(|(v, &g)| *v += g);
        }
        if li + 1 == self.layers.len() {
            self.altup_merge(alt, sc, n)?;
        }
        Ok(())
    }

    /// The streams' mean into the first `n` rows of `sc.x`: the others
    /// back through their products, each brought to the first's
    /// magnitude.
    fn altup_merge(&self, alt: &AltUp<'a, B>, sc: &mut Scratch<B>, n: usize) -> Result<()> {
        let (b, c) = (self.backend, &self.config);
        let s = sc.altup.as_mut().ok_or_else(|| no_room("AltUp"))?;
        let (d, nd) = (c.d_model, n * c.d_model);
        s.table.clear();
        s.table.extend_from_slice(&s.streams[..nd]);
        let (first, rest) = s.streams.split_at(nd);
        for (w, stream) in alt.down.iter().zip(rest.chunks_exact(nd)) {
            self.host_rows(&mut s.staging, stream, d, &mut sc.xn)?;
            b.matmul(&mut sc.ws, w, &sc.xn, n, &mut sc.proj)?;
            fetch(b, &sc.proj, nd, &mut s.host)?;
            let rows = s.table.chunks_exact_mut(d).zip(s.host.chunks_exact(d));
            for ((sum, made), x) in rows.zip(first.chunks_exact(d)) {
                let (target, own) = (magnitude(x), magnitude(made));
                for (o, &v) in sum.iter_mut().zip(made) {
                    *o += v * target / own;
                }
            }
        }
        let mean = 1.0 / alt.down.len().saturating_add(1) as f32;
        s.table.iter_mut().for_each(|v| *v *= mean);
        self.host_rows(&mut s.staging, &s.table, d, &mut sc.x)
    }

    /// Gemma 3n's sparse activations on the first `n` rows of `sc.gate`
    /// (the feed-forward gate, `ffn_dim` wide): each value less its row's
    /// mean plus `mul` sample standard deviations, below zero made zero.
    pub(super) fn sparsify(&self, sc: &mut Scratch<B>, n: usize, mul: f32) -> Result<()> {
        let (b, ff) = (self.backend, self.config.ffn_dim);
        let s = sc.altup.as_mut().ok_or_else(|| no_room("AltUp"))?;
        fetch(b, &sc.gate, n * ff, &mut s.host)?;
        for row in s.host.chunks_exact_mut(ff) {
            let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
            let mean = sum as f32 / ff as f32;
            let var: f64 = row
                .iter()
                .map(|&v| f64::from((v - mean) * (v - mean)))
                .sum();
            let std = (var as f32 * (1.0 / ff.saturating_sub(1).max(1) as f32)).sqrt();
            let cutoff = mean + std * mul;
            row.iter_mut().for_each(|v| *v = (*v - cutoff).max(0.0));
        }
        self.host_rows(&mut s.staging, &s.host, ff, &mut sc.gate)
    }
}
