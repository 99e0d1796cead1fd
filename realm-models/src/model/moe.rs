//! Mixture-of-experts feed-forward blocks (Mixtral's llama, Qwen 2 and 3
//! MoE), as llama.cpp computes them: a router scores every expert for each
//! token (softmax of `ffn_gate_inp`'s products), the `used` best run their
//! SwiGLU block (`ffn_{gate,up,down}_exps`, one slice of each 3-D tensor an
//! expert), and the token's output is their outputs weighted by their
//! probabilities (renormalised over the chosen, but for Qwen 2 MoE), summed
//! best first; Qwen 2 MoE adds a shared expert's SwiGLU block
//! (`ffn_{gate,up,down}_shexp`), weighted by the sigmoid of its own
//! score (`ffn_gate_inp_shexp`). gpt-oss adds biases to the router's
//! scores and to each expert's three products, chooses its experts by
//! score and weighs them by a softmax over the chosen, and gates with its
//! clamped SwiGLU. GLM-4.5 scores experts by their sigmoids, and it and
//! ERNIE 4.5 choose them by their probabilities plus a bias of each block
//! (`exp_probs_b.bias`), weighing them by the unbiased ones; their shared
//! experts are ungated.
//!
//! The routing runs on the host between backend products: each expert
//! multiplies the rows of the tokens that chose it, gathered, so every
//! backend runs it with the ops it has (a static step cannot hold it: a
//! model with experts runs its steps op by op). LoRA adapters of experts
//! are not supported.

use realm_core::backend::Backend;
use realm_core::gguf::Gguf;
use realm_core::TensorView;

use crate::config::{ExpertActivation, Gating, MoeConfig, SelectionBias};
use crate::imatrix::Collector;
use crate::{Error, Result};

/// One layer's experts and router.
#[derive(Debug)]
pub(crate) struct Moe<'a, B: Backend + 'a> {
    /// `[experts, d_model]`: each expert's score of a token.
    router: B::Weight<'a>,
    /// Per expert: its gate and up, and its down (`[d_model, ffn]`).
    experts: Vec<(GateUp<B::Weight<'a>>, B::Weight<'a>)>,
    /// The shared expert, if the block has one.
    shared: Option<Shared<'a, B>>,
    /// The router's and the experts' biases, if the block has them.
    biases: Option<Biases<B>>,
    /// The bias on each expert's probability for choosing it, if the
    /// block has one.
    selection_bias: Option<Vec<f32>>,
    /// Into the experts' latent space and out of it (`[latent, d_model]`
    /// and `[d_model, latent]`), if they run in one.
    latent: Option<(B::Weight<'a>, B::Weight<'a>)>,
    /// A factor on each expert's output (`ffn_down_exps.scale`, Gemma 4's),
    /// where the file has them.
    scales: Option<Vec<f32>>,
}

/// Experts beside a block's dense feed-forward network (Gemma 4's 26B
/// A4B): the network's output normed by `post_dense`; the experts' input
/// the block's input normed by `pre`, their router's that input normed
/// without weights and scaled by `router_scale` (`ffn_gate_inp.scale` over
/// the square root of the width); their output normed by `post`; the two
/// summed.
#[derive(Debug)]
pub(crate) struct BesideMoe<'a, B: Backend + 'a> {
    pub(crate) moe: Moe<'a, B>,
    pub(crate) pre: B::Buffer,
    pub(crate) post_dense: B::Buffer,
    pub(crate) post: B::Buffer,
    pub(crate) router_scale: B::Buffer,
}

impl<'a, B: Backend + 'a> BesideMoe<'a, B> {
    pub(crate) fn load<S: AsRef<[u8]>>(
        file: &'a Gguf<S>,
        backend: &'a B,
        layer: usize,
        m: &MoeConfig,
        d: usize,
    ) -> Result<Self> {
        let vector = |s: &str| super::recurrent::vector(file, &format!("blk.{layer}.{s}"), d);
        let up = |s: &str| -> Result<B::Buffer> { Ok(backend.upload(&vector(s)?)?) };
        let inv = 1.0 / (d as f32).sqrt();
        let scale: Vec<f32> = vector("ffn_gate_inp.scale")?
            .iter()
            .map(|s| s * inv)
            .collect();
        Ok(Self {
            moe: Moe::load(file, backend, layer, m, d)?,
            pre: up("pre_ffw_norm_2.weight")?,
            post_dense: up("post_ffw_norm_1.weight")?,
            post: up("post_ffw_norm_2.weight")?,
            router_scale: backend.upload(&scale)?,
        })
    }
}

/// An expert's gate and up products: one matrix each (`[ffn, d_model]`),
/// or one matrix of both (`[2 ffn, d_model]`, gate first: a file's
/// `ffn_gate_up_exps`, as llama.cpp's converter fuses them on request).
#[derive(Debug)]
enum GateUp<W> {
    Split(W, W),
    Fused(W),
    /// No gate: an up product alone (Nemotron-H's squared ReLUs).
    Up(W),
}

/// A block's biases: the router's on the host (beside the routing), and
/// per expert its gate's, up's and down's.
#[derive(Debug)]
struct Biases<B: Backend> {
    router: Vec<f32>,
    experts: Vec<[B::Buffer; 3]>,
}

/// A shared expert: its router's row (where its output is gated), its
/// gate (none for squared ReLUs), up and down.
#[derive(Debug)]
struct Shared<'a, B: Backend + 'a> {
    router: Option<Vec<f32>>,
    gate: Option<B::Weight<'a>>,
    up: B::Weight<'a>,
    down: B::Weight<'a>,
}

/// Host memory for a call's routing and expert outputs (kept between
/// calls, so that it grows once).
#[derive(Debug, Default)]
pub(crate) struct MoeHost {
    xn: Vec<f32>,
    /// The tokens in the experts' latent space, where they run in one.
    xl: Vec<f32>,
    scores: Vec<f32>,
    /// Per token, the chosen experts and their weights, best first.
    chosen: Vec<(usize, f32)>,
    /// One token's routing: its experts' exponentials and their order.
    ranked: Ranked,
    /// One expert's input rows, gathered.
    rows: Vec<f32>,
    /// One expert's output rows.
    y: Vec<f32>,
    /// Per token and choice, the weighted output.
    weighted: Vec<f32>,
    out: Vec<f32>,
}

impl<'a, B: Backend + 'a> Moe<'a, B> {
    /// Layer `layer`'s router and experts from `file`, checked against `m`
    /// and the model's width `d`.
    pub(crate) fn load<S: AsRef<[u8]>>(
        file: &'a Gguf<S>,
        backend: &'a B,
        layer: usize,
        m: &MoeConfig,
        d: usize,
    ) -> Result<Self> {
        let name = |s: &str| format!("blk.{layer}.{s}");
        let matrix = |t: &TensorView<'a>, rows: usize, cols: usize| {
            super::checked_weight(backend, t, rows, cols)
        };
        let router = matrix(&file.tensor(&name("ffn_gate_inp.weight"))?, m.experts, d)?;
        let slices = |short: &str, rows: usize, cols: usize| {
            super::slices(backend, &file.tensor(&name(short))?, rows, cols, m.experts)
        };
        // Nemotron 3 Super's experts read and write a latent space.
        let latent = match m.latent {
            Some(l) => Some((
                matrix(&file.tensor(&name("ffn_latent_down.weight"))?, l, d)?,
                matrix(&file.tensor(&name("ffn_latent_up.weight"))?, d, l)?,
            )),
            None => None,
        };
        // The experts' width: the latent one where they run in it.
        let e = m.latent.unwrap_or(d);
        let gateless = matches!(
            m.activation,
            ExpertActivation::SquaredRelu | ExpertActivation::Gelu
        );
        let gate_up: Vec<GateUp<B::Weight<'a>>> =
            match file.tensor(&name("ffn_gate_up_exps.weight")) {
                _ if gateless => slices("ffn_up_exps.weight", m.ffn_dim, e)?
                    .into_iter()
                    .map(GateUp::Up)
                    .collect(),
                Ok(_) => slices("ffn_gate_up_exps.weight", 2 * m.ffn_dim, e)?
                    .into_iter()
                    .map(GateUp::Fused)
                    .collect(),
                Err(realm_core::Error::TensorNotFound(_)) => {
                    slices("ffn_gate_exps.weight", m.ffn_dim, e)?
                        .into_iter()
                        .zip(slices("ffn_up_exps.weight", m.ffn_dim, e)?)
                        .map(|(g, u)| GateUp::Split(g, u))
                        .collect()
                }
                Err(err) => return Err(err.into()),
            };
        let down = slices("ffn_down_exps.weight", e, m.ffn_dim)?;
        let experts = gate_up.into_iter().zip(down).collect();
        let shared = match m.shared_ffn_dim {
            Some(ff) => {
                let w = |short: &str, rows, cols| matrix(&file.tensor(&name(short))?, rows, cols);
                // The router is one row, stored as a vector: its scores are
                // taken on the host, beside the routing.
                let router = match m.shared_gated {
                    true => {
                        let t = file.tensor(&name("ffn_gate_inp_shexp.weight"))?;
                        if t.shape() != [d as u64] {
                            return Err(Error::BadTensorShape {
                                tensor: t.name().to_string(),
                                expected: vec![d as u64],
                                got: t.shape().to_vec(),
                            });
                        }
                        let mut router = vec![0f32; d];
                        realm_core::quant::dequantize(t.dtype(), t.data(), &mut router)?;
                        Some(router)
                    }
                    false => None,
                };
                // (Grok-2's is the block's own dense network.)
                let shared = |s: &str| match m.dense_beside {
                    true => format!("ffn_{s}.weight"),
                    false => format!("ffn_{s}_shexp.weight"),
                };
                Some(Shared {
                    router,
                    gate: match gateless {
                        true => None,
                        false => Some(w(&shared("gate"), ff, d)?),
                    },
                    up: w(&shared("up"), ff, d)?,
                    down: w(&shared("down"), d, ff)?,
                })
            }
            None => None,
        };
        let biases = match m.biases {
            true => Some(load_biases(file, backend, layer, m, d)?),
            false => None,
        };
        let selection = name("exp_probs_b.bias");
        let selection_bias = match (m.selection_bias, file.tensor(&selection)) {
            (SelectionBias::None, _) => None,
            (SelectionBias::WherePresent, Err(realm_core::Error::TensorNotFound(_))) => None,
            (_, Err(e)) => return Err(e.into()),
            (_, Ok(t)) => {
                let v = super::f32_vec(&t)?;
                if v.len() != m.experts || t.shape().len() != 1 {
                    return Err(Error::BadTensorShape {
                        tensor: selection,
                        expected: vec![m.experts as u64],
                        got: t.shape().to_vec(),
                    });
                }
                Some(v)
            }
        };
        let scales = match file.tensor(&name("ffn_down_exps.scale")) {
            Err(realm_core::Error::TensorNotFound(_)) => None,
            Err(e) => return Err(e.into()),
            Ok(t) => {
                let v = super::f32_vec(&t)?;
                if v.len() != m.experts {
                    return Err(Error::BadTensorShape {
                        tensor: name("ffn_down_exps.scale"),
                        expected: vec![m.experts as u64],
                        got: t.shape().to_vec(),
                    });
                }
                Some(v)
            }
        };
        Ok(Self {
            router,
            experts,
            shared,
            biases,
            selection_bias,
            latent,
            scales,
        })
    }
}

/// Layer `layer`'s router bias (`[experts]`) and its experts' gate, up
/// (`[ffn, experts]`) and down (`[d, experts]`) biases.
fn load_biases<S: AsRef<[u8]>, B: Backend>(
    file: &Gguf<S>,
    backend: &B,
    layer: usize,
    m: &MoeConfig,
    d: usize,
) -> Result<Biases<B>> {
    let rows = |short: &str, width: usize| -> Result<Vec<Vec<f32>>> {
        let t = file.tensor(&format!("blk.{layer}.{short}"))?;
        let want = [width as u64, m.experts as u64];
        let shape = t.shape();
        // The router's bias is one vector (a row per expert of width 1).
        let fits = shape == want || (width == 1 && shape == [m.experts as u64]);
        if !fits {
            return Err(Error::BadTensorShape {
                tensor: t.name().to_string(),
                expected: want.to_vec(),
                got: shape.to_vec(),
            });
        }
        let v = super::f32_vec(&t)?;
        Ok(v.chunks_exact(width).map(<[f32]>::to_vec).collect())
    };
    let router = rows("ffn_gate_inp.bias", 1)?.concat();
    let per_expert = [
        rows("ffn_gate_exps.bias", m.ffn_dim)?,
        rows("ffn_up_exps.bias", m.ffn_dim)?,
        rows("ffn_down_exps.bias", d)?,
    ];
    let [gate, up, down] = per_expert;
    let experts = gate
        .iter()
        .zip(&up)
        .zip(&down)
        .map(|((g, u), dn)| Ok([backend.upload(g)?, backend.upload(u)?, backend.upload(dn)?]))
        .collect::<Result<Vec<_>>>()?;
    Ok(Biases { router, experts })
}

/// Scratch a block needs from the model's: the normed input (`n` rows of
/// `d`), room for `n` rows of router scores, of an expert's input and
/// output (`d` wide) and of its hidden values (`ffn` wide, two).
pub(crate) struct MoeBuffers<'x, B: Backend> {
    pub(crate) ws: &'x mut B::Workspace,
    pub(crate) xn: &'x B::Buffer,
    /// The router's input, where it is not the experts' (Gemma 4's).
    pub(crate) router_in: Option<&'x B::Buffer>,
    pub(crate) scores: &'x mut B::Buffer,
    /// An expert's gathered input rows, then the block's output (a buffer
    /// of its own, which uploads replace).
    pub(crate) input: &'x mut B::Buffer,
    pub(crate) gate: &'x mut B::Buffer,
    pub(crate) up: &'x mut B::Buffer,
    /// An expert's output; on return, the block's (`n` rows of `d`).
    pub(crate) out: &'x mut B::Buffer,
    /// Room for a fused gate and up product (`rows` of twice the experts'
    /// width; see [`Moe::stacked_width`]).
    pub(crate) stacked: &'x mut B::Buffer,
    pub(crate) host: &'x mut MoeHost,
    /// The importance matrix being collected, if one is.
    pub(crate) seen: Option<&'x mut Collector>,
}

impl<B: Backend> Moe<'_, B> {
    /// Values per row a fused gate and up product needs (0 for none).
    pub(crate) fn stacked_width(&self, m: &MoeConfig) -> usize {
        match self.experts.first() {
            Some((GateUp::Fused(_), _)) => 2 * m.ffn_dim,
            _ => 0,
        }
    }

    /// Layer `layer`'s block output for the first `n` rows of `buf.xn`
    /// into `buf.out`; an importance matrix being collected sees the
    /// router's input and each expert's inputs (llama-imatrix's entries
    /// `ffn_gate_inp`, and `ffn_{gate,up,down}_exps` by expert).
    pub(crate) fn run(
        &self,
        b: &B,
        (m, layer): (&MoeConfig, usize),
        d: usize,
        n: usize,
        mut buf: MoeBuffers<'_, B>,
    ) -> Result<()> {
        let (e, k, ff) = (m.experts, m.used, m.ffn_dim);
        let name = |s: &str| format!("blk.{layer}.ffn_{s}.weight");
        let h = buf.host;
        let router_in = buf.router_in.unwrap_or(buf.xn);
        b.matmul(buf.ws, &self.router, router_in, n, buf.scores)?;
        if let Some(c) = buf.seen.as_deref_mut() {
            c.observe_named(b, buf.ws, &name("gate_inp"), (router_in, n, d))?;
        }
        h.scores.resize(n * e, 0.0);
        b.download(buf.scores, &mut h.scores)?;
        if let Some(bias) = &self.biases {
            for row in h.scores.chunks_exact_mut(e) {
                row.iter_mut().zip(&bias.router).for_each(|(s, b)| *s += b);
            }
        }
        h.xn.resize(n * d, 0.0);
        b.download(buf.xn, &mut h.xn)?;
        // The experts' input: the tokens, or them in the latent space.
        let e_d = m.latent.unwrap_or(d);
        if let Some((down, _)) = &self.latent {
            b.matmul(buf.ws, down, buf.xn, n, buf.out)?;
            if let Some(c) = buf.seen.as_deref_mut() {
                c.observe_named(b, buf.ws, &name("latent_down"), (buf.xn, n, d))?;
            }
            h.xl.resize(n * e_d, 0.0);
            b.download(buf.out, &mut h.xl)?;
        }
        let x_in = match self.latent {
            Some(_) => &h.xl,
            None => &h.xn,
        };
        h.chosen.clear();
        for row in h.scores.chunks_exact(e) {
            let bias = self.selection_bias.as_deref();
            route(row, (m, bias), &mut h.ranked, &mut h.chosen);
        }
        h.weighted.clear();
        h.weighted.resize(n * k * e_d, 0.0);
        for (x, w) in self.experts.iter().enumerate() {
            // The (token, choice) pairs that chose expert `x`.
            let picks = || {
                h.chosen
                    .iter()
                    .enumerate()
                    .filter(move |(_, c)| c.0 == x)
                    .map(|(i, c)| (i, c.1))
            };
            let rows = picks().count();
            if rows == 0 {
                continue;
            }
            h.rows.clear();
            for (i, weight) in picks() {
                let t = i / k;
                let x = &x_in[t * e_d..(t + 1) * e_d];
                match m.weights_on_input {
                    // (Llama 4's: the token times its weight.)
                    true => h.rows.extend(x.iter().map(|v| v * weight)),
                    false => h.rows.extend_from_slice(x),
                }
            }
            b.upload_into(&h.rows, buf.input)?;
            let input = &*buf.input;
            let (gate_up, down) = w;
            match gate_up {
                GateUp::Split(g, u) => {
                    b.matmul(buf.ws, g, input, rows, buf.gate)?;
                    b.matmul(buf.ws, u, input, rows, buf.up)?;
                }
                GateUp::Fused(gu) => {
                    b.matmul(buf.ws, gu, input, rows, buf.stacked)?;
                    b.split_cols(
                        buf.stacked,
                        rows,
                        &[ff, ff],
                        &mut [&mut *buf.gate, &mut *buf.up],
                    )?;
                }
                // (The activation reads `gate`.)
                GateUp::Up(u) => b.matmul(buf.ws, u, input, rows, buf.gate)?,
            }
            let bias = self.biases.as_ref().map(|bs| &bs.experts[x]);
            if let Some([g, u, _]) = bias {
                b.add_row_inplace(buf.gate, g, rows)?;
                b.add_row_inplace(buf.up, u, rows)?;
            }
            match m.activation {
                ExpertActivation::Swiglu => b.swiglu_inplace(buf.gate, buf.up, rows * ff)?,
                ExpertActivation::SwigluOai { alpha, limit } => {
                    b.swiglu_oai_inplace(buf.gate, buf.up, (alpha, limit), rows * ff)?
                }
                ExpertActivation::SquaredRelu => b.relu_squared_inplace(buf.gate, rows * ff)?,
                ExpertActivation::Geglu => b.geglu_inplace(buf.gate, buf.up, rows * ff)?,
                ExpertActivation::Gelu => b.gelu_inplace(buf.gate, rows * ff)?,
            }
            if let Some(c) = buf.seen.as_deref_mut() {
                let inputs: &[&str] = match gate_up {
                    GateUp::Split(..) => &["gate_exps", "up_exps"],
                    GateUp::Fused(_) => &["gate_up_exps"],
                    GateUp::Up(_) => &["up_exps"],
                };
                for s in inputs {
                    c.observe_expert(b, buf.ws, &name(s), (x, e), (input, rows, e_d))?;
                }
                c.observe_expert(b, buf.ws, &name("down_exps"), (x, e), (buf.gate, rows, ff))?;
            }
            b.matmul(buf.ws, down, buf.gate, rows, buf.out)?;
            if let Some([_, _, dn]) = bias {
                b.add_row_inplace(buf.out, dn, rows)?;
            }
            h.y.resize(rows * e_d, 0.0);
            b.download(buf.out, &mut h.y)?;
            // (The expert's own factor first, as ggml scales its product.)
            if let Some(&s) = self.scales.as_ref().and_then(|s| s.get(x)) {
                h.y.iter_mut().for_each(|v| *v *= s);
            }
            for ((i, weight), y) in picks().zip(h.y.chunks_exact(e_d)) {
                let out = &mut h.weighted[i * e_d..(i + 1) * e_d];
                match m.weights_on_input {
                    true => out.copy_from_slice(y),
                    false => out.iter_mut().zip(y).for_each(|(o, v)| *o = v * weight),
                }
            }
        }
        // Each token's outputs summed best first, as llama.cpp adds them.
        h.out.clear();
        for token in h.weighted.chunks_exact(k * e_d) {
            let (first, rest) = token.split_at(e_d);
            let start = h.out.len();
            h.out.extend_from_slice(first);
            for y in rest.chunks_exact(e_d) {
                for (o, v) in h.out[start..].iter_mut().zip(y) {
                    *o += v;
                }
            }
        }
        // Out of the latent space.
        if let Some((_, up)) = &self.latent {
            b.upload_into(&h.out, buf.input)?;
            b.matmul(buf.ws, up, buf.input, n, buf.out)?;
            if let Some(c) = buf.seen.as_deref_mut() {
                c.observe_named(b, buf.ws, &name("latent_up"), (buf.input, n, e_d))?;
            }
            h.out.resize(n * d, 0.0);
            b.download(buf.out, &mut h.out)?;
        }
        if let (Some(sh), Some(ff)) = (&self.shared, m.shared_ffn_dim) {
            match &sh.gate {
                Some(g) => {
                    b.matmul(buf.ws, g, buf.xn, n, buf.gate)?;
                    b.matmul(buf.ws, &sh.up, buf.xn, n, buf.up)?;
                    match m.activation {
                        ExpertActivation::Geglu => b.geglu_inplace(buf.gate, buf.up, n * ff)?,
                        _ => b.swiglu_inplace(buf.gate, buf.up, n * ff)?,
                    }
                }
                None => {
                    b.matmul(buf.ws, &sh.up, buf.xn, n, buf.gate)?;
                    b.relu_squared_inplace(buf.gate, n * ff)?;
                }
            }
            if let Some(c) = buf.seen.as_deref_mut() {
                let gated = sh.router.is_some();
                let has_gate = sh.gate.is_some();
                let shared = |s: &str| match m.dense_beside {
                    true => s.to_string(),
                    false => format!("{s}_shexp"),
                };
                for s in ["gate_inp", "gate", "up"]
                    .into_iter()
                    .filter(|&s| gated || s != "gate_inp")
                    .filter(|&s| has_gate || s != "gate")
                {
                    c.observe_named(b, buf.ws, &name(&shared(s)), (buf.xn, n, d))?;
                }
                c.observe_named(b, buf.ws, &name(&shared("down")), (buf.gate, n, ff))?;
            }
            b.matmul(buf.ws, &sh.down, buf.gate, n, buf.out)?;
            h.y.resize(n * d, 0.0);
            b.download(buf.out, &mut h.y)?;
            let rows = h.out.chunks_exact_mut(d).zip(h.y.chunks_exact(d));
            for ((o, y), x) in rows.zip(h.xn.chunks_exact(d)) {
                let Some(router) = &sh.router else {
                    // Ungated: added as it is.
                    for (o, v) in o.iter_mut().zip(y) {
                        *o += v;
                    }
                    continue;
                };
                let dot: f64 = x.iter().zip(router).map(|(a, b)| f64::from(a * b)).sum();
                let g = dot as f32;
                // The sigmoid as ggml takes it: SiLU over its input.
                let gate = g / (1.0 + (-g).exp()) / g;
                for (o, v) in o.iter_mut().zip(y) {
                    *o += v * gate;
                }
            }
            // (Grok-2's sum, as llama.cpp scales it.)
            if m.dense_beside {
                let half_root = std::f32::consts::SQRT_2 / 2.0;
                h.out.iter_mut().for_each(|o| *o *= half_root);
            }
        }
        b.upload_into(&h.out, buf.input)?;
        b.copy_rows(buf.input, 0..n, d, buf.out)?;
        Ok(())
    }
}

/// Room for ranking one token's experts (kept between tokens).
#[derive(Debug, Default)]
pub(crate) struct Ranked {
    probs: Vec<f32>,
    keys: Vec<f32>,
    order: Vec<usize>,
    groups: Vec<(f32, usize)>,
}

/// Leaves in `keys` (one a expert, `n` groups of them in order) only the
/// `used` groups whose two best keys sum highest (the lower group first
/// among equals), the others' keys minus infinity, as llama.cpp masks
/// them.
fn mask_groups(keys: &mut [f32], (n, used): (usize, usize), scores: &mut Vec<(f32, usize)>) {
    let size = keys.len() / n.max(1);
    scores.clear();
    for (g, group) in keys.chunks_exact(size.max(1)).enumerate() {
        let (mut best, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
        for &k in group {
            if k > best {
                (best, second) = (k, best);
            } else if k > second {
                second = k;
            }
        }
        let score = if group.len() > 1 { best + second } else { best };
        scores.push((score, g));
    }
    scores.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, g) in &scores[used.min(scores.len())..] {
        keys[g * size..(g + 1) * size].fill(f32::NEG_INFINITY);
    }
}

/// Appends a token's `used` chosen experts and their weights, best first,
/// to `chosen`, from its router scores `scores` (one per expert): by
/// [`MoeConfig::gating`], either the probabilities of the softmax of all
/// the scores (summed in f64, as ggml sums) or of the sigmoid of each,
/// the best `used` by probability plus `bias` where the block has one
/// (the lower index first among equals), weighted by their unbiased
/// probabilities; or the best `used` by score, weighted by the softmax of
/// their scores. Then renormalised if asked (over a sum of at least
/// 2^-14, as llama.cpp clamps it) and scaled.
pub(crate) fn route(
    scores: &[f32],
    (m, bias): (&MoeConfig, Option<&[f32]>),
    ranked: &mut Ranked,
    chosen: &mut Vec<(usize, f32)>,
) {
    let Ranked {
        probs,
        keys,
        order,
        groups,
    } = ranked;
    order.clear();
    order.extend(0..scores.len());
    let start = chosen.len();
    probs.clear();
    match m.gating {
        Gating::Softmax => {
            let max = scores.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            probs.extend(scores.iter().map(|&v| (v - max).exp()));
            let sum: f64 = probs.iter().map(|&v| f64::from(v)).sum();
            let inv = (1.0 / sum) as f32;
            probs.iter_mut().for_each(|p| *p *= inv);
        }
        // As ggml's sigmoid.
        Gating::Sigmoid => probs.extend(scores.iter().map(|&v| 1.0 / (1.0 + (-v).exp()))),
        Gating::SoftmaxChosen => {
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            let best = &order[..m.used.min(order.len())];
            // The best is first: its score is the chosen's max.
            let max = best.first().map_or(0.0, |&i| scores[i]);
            let sum: f64 = best
                .iter()
                .map(|&i| f64::from((scores[i] - max).exp()))
                .sum();
            let inv = (1.0 / sum) as f32;
            chosen.extend(best.iter().map(|&i| (i, (scores[i] - max).exp() * inv)));
        }
    }
    if m.gating != Gating::SoftmaxChosen {
        keys.clear();
        match bias {
            Some(bias) => keys.extend(probs.iter().zip(bias).map(|(p, b)| p + b)),
            None => keys.extend_from_slice(probs),
        }
        if let Some((n, used)) = m.groups {
            mask_groups(keys, (n, used), groups);
        }
        order.sort_by(|&a, &b| keys[b].total_cmp(&keys[a]).then(a.cmp(&b)));
        chosen.extend(order.iter().take(m.used).map(|&i| (i, probs[i])));
    }
    let picked = &mut chosen[start..];
    if m.norm_weights {
        let total: f64 = picked.iter().map(|c| f64::from(c.1)).sum();
        let total = (total as f32).max(6.103_515_6e-5);
        for c in picked.iter_mut() {
            c.1 /= total;
        }
    }
    if m.weights_scale != 1.0 {
        for c in picked.iter_mut() {
            c.1 *= m.weights_scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(used: usize, norm: bool) -> MoeConfig {
        MoeConfig {
            experts: 4,
            used,
            ffn_dim: 8,
            norm_weights: norm,
            weights_scale: 1.0,
            shared_ffn_dim: None,
            shared_gated: false,
            dense_beside: false,
            gating: Gating::Softmax,
            activation: ExpertActivation::Swiglu,
            biases: false,
            selection_bias: SelectionBias::None,
            dense_lead: 0,
            groups: None,
            every: 1,
            weights_on_input: false,
            latent: None,
        }
    }

    #[test]
    fn routes_to_the_best_experts_with_renormalised_weights() {
        let mut chosen = Vec::new();
        route(
            &[0.5, 2.0, -1.0, 1.0],
            (&cfg(2, true), None),
            &mut Ranked::default(),
            &mut chosen,
        );
        assert_eq!(chosen.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 3]);
        let (a, b) = (2.0f64.exp(), 1.0f64.exp());
        assert!((f64::from(chosen[0].1) - a / (a + b)).abs() < 1e-6);
        assert!((chosen[0].1 + chosen[1].1 - 1.0).abs() < 1e-6);
        // Without renormalisation the weights are the softmax's.
        let mut raw = Vec::new();
        route(
            &[0.5, 2.0, -1.0, 1.0],
            (&cfg(2, false), None),
            &mut Ranked::default(),
            &mut raw,
        );
        let all: f64 = [0.5f64, 2.0, -1.0, 1.0].iter().map(|v| v.exp()).sum();
        assert!((f64::from(raw[0].1) - a / all).abs() < 1e-6);
        // Ties: the lower index first.
        let mut tied = Vec::new();
        route(
            &[1.0, 1.0, 1.0, 0.0],
            (&cfg(2, true), None),
            &mut Ranked::default(),
            &mut tied,
        );
        assert_eq!(tied.iter().map(|c| c.0).collect::<Vec<_>>(), [0, 1]);
        // gpt-oss's: the softmax of the chosen scores alone.
        let chosen_only = MoeConfig {
            gating: Gating::SoftmaxChosen,
            ..cfg(2, false)
        };
        let mut soft = Vec::new();
        route(
            &[0.5, 2.0, -1.0, 1.0],
            (&chosen_only, None),
            &mut Ranked::default(),
            &mut soft,
        );
        assert_eq!(soft.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 3]);
        assert!((f64::from(soft[0].1) - a / (a + b)).abs() < 1e-6);
        assert!((soft[0].1 + soft[1].1 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn experts_are_chosen_from_the_best_groups() {
        // Groups {0, 1}, {2, 3}, {4, 5}: their two best sum to 0.9, 1.0
        // and 1.0; the first two best (1 and 2, the lower first) are kept.
        let mut keys = [0.1f32, 0.8, 0.5, 0.5, 0.9, 0.1];
        let mut scores = Vec::new();
        mask_groups(&mut keys, (3, 2), &mut scores);
        let inf = f32::NEG_INFINITY;
        assert_eq!(keys, [inf, inf, 0.5, 0.5, 0.9, 0.1]);
        // In routing: groups 0 and 2 win (the softmax's two best in each
        // summed), expert 4 over 5 (the lower first); with one group to
        // choose, both experts come from group 0.
        let m = MoeConfig {
            experts: 6,
            groups: Some((3, 2)),
            ..cfg(2, false)
        };
        let mut chosen = Vec::new();
        let scores = [0.1f32, 3.0, 0.5, 0.5, 1.0, 1.0];
        route(&scores, (&m, None), &mut Ranked::default(), &mut chosen);
        let all: f64 = scores.iter().map(|&v| f64::from(v).exp()).sum();
        assert_eq!(chosen.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 4]);
        assert!((f64::from(chosen[0].1) - 3f64.exp() / all).abs() < 1e-6);
        let grouped = MoeConfig {
            groups: Some((3, 1)),
            ..m
        };
        let mut chosen = Vec::new();
        route(
            &scores,
            (&grouped, None),
            &mut Ranked::default(),
            &mut chosen,
        );
        assert_eq!(chosen.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 0]);
    }

    #[test]
    fn a_selection_bias_chooses_but_does_not_weigh() {
        let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
        let scores = [0.5f32, 2.0, -1.0, 1.0];
        let m = MoeConfig {
            gating: Gating::Sigmoid,
            ..cfg(2, false)
        };
        // Unbiased: the two best sigmoids, weighted by themselves.
        let mut plain = Vec::new();
        route(&scores, (&m, None), &mut Ranked::default(), &mut plain);
        assert_eq!(plain.iter().map(|c| c.0).collect::<Vec<_>>(), [1, 3]);
        assert!((f64::from(plain[1].1) - sigmoid(1.0)).abs() < 1e-6);
        // A bias lifts expert 2 to first and expert 0 past expert 1; the
        // weights stay the sigmoids, in the biased order.
        let bias = [0.3f32, 0.0, 1.0, 0.0];
        let mut biased = Vec::new();
        route(
            &scores,
            (&m, Some(&bias)),
            &mut Ranked::default(),
            &mut biased,
        );
        assert_eq!(biased.iter().map(|c| c.0).collect::<Vec<_>>(), [2, 0]);
        assert!((f64::from(biased[0].1) - sigmoid(-1.0)).abs() < 1e-6);
        // Renormalised and scaled, as GLM-4.5's.
        let scaled = MoeConfig {
            weights_scale: 2.5,
            ..MoeConfig {
                norm_weights: true,
                ..m.clone()
            }
        };
        let mut w = Vec::new();
        route(
            &scores,
            (&scaled, Some(&bias)),
            &mut Ranked::default(),
            &mut w,
        );
        assert!((w[0].1 + w[1].1 - 2.5).abs() < 1e-5);
        let (lo, hi) = (sigmoid(-1.0), sigmoid(0.5));
        assert!((f64::from(w[0].1) - 2.5 * lo / (lo + hi)).abs() < 1e-5);
        // A softmax's probabilities biased alike (ERNIE 4.5's).
        let soft = cfg(2, false);
        let mut s = Vec::new();
        route(
            &scores,
            (&soft, Some(&bias)),
            &mut Ranked::default(),
            &mut s,
        );
        assert_eq!(s.iter().map(|c| c.0).collect::<Vec<_>>(), [2, 1]);
        let all: f64 = scores.iter().map(|&v| f64::from(v).exp()).sum();
        assert!((f64::from(s[0].1) - (-1f64).exp() / all).abs() < 1e-6);
    }
}
