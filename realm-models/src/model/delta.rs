//! Qwen 3.5's gated delta net ([`DeltaNetConfig`]): a block that mixes
//! tokens through a recurrent state instead of attention.
//!
//! Its four products with the block's input (`attn_qkv`: queries, keys
//! and values; `attn_gate`: the output gate; `ssm_beta` and `ssm_alpha`:
//! each value head's rate and decay) and its output product
//! (`ssm_out`) run on the backend. Between them, on the host, each token
//! in order: the causal convolution (`ssm_conv1d`) over the channels'
//! last inputs, SiLU, the queries' and keys' L2 norms, the decay
//! `exp(softplus(alpha + ssm_dt.bias) * ssm_a)` and rate
//! `sigmoid(beta)`, the delta rule on each value head's state, and the
//! output's per-head RMSNorm (`ssm_norm`) times the SiLU of its gate.
//! The state lives in the session ([`Recurrent`]), on the host, as
//! llama.cpp's recurrent cells hold it on its CPU backend; a model with
//! delta nets runs its steps op by op.

use realm_core::backend::Backend;
use realm_core::gguf::Gguf;

use super::{checked_weight, f32_vec, Scratch};
use crate::config::{DeltaNetConfig, ModelConfig};
use crate::{Error, Result};

/// A delta-net block's weights.
#[derive(Debug)]
pub(crate) struct DeltaNet<'a, B: Backend + 'a> {
    /// `[channels, d]`: queries, keys and values before the convolution.
    qkv: B::Weight<'a>,
    /// `[v_dim, d]`: the output's gate.
    z: B::Weight<'a>,
    /// `[v_heads, d]`: each value head's rate, before the sigmoid.
    beta: B::Weight<'a>,
    /// `[v_heads, d]`: each value head's decay, before its bias.
    alpha: B::Weight<'a>,
    /// `conv_kernel` taps a channel, the oldest input's first.
    conv: Vec<f32>,
    /// Each value head's decay bias (`ssm_dt.bias`).
    dt_bias: Vec<f32>,
    /// Each value head's decay rate (`ssm_a`: `-exp(A_log)`).
    a: Vec<f32>,
    /// The output's RMSNorm, one head wide, shared by the heads.
    norm: Vec<f32>,
}

/// One session's delta-net states: per block, the convolution's last
/// `conv_kernel - 1` inputs (oldest first, all channels a row), then each
/// value head's `head_dim x head_dim` state (a row a value dimension);
/// none for the attention blocks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recurrent {
    pub(crate) layers: Vec<Vec<f32>>,
}

impl Recurrent {
    /// Zero states for the delta nets of `c`.
    pub(crate) fn new(c: &ModelConfig) -> Self {
        let layers = match &c.delta_net {
            Some(d) => (0..c.n_layers)
                .map(|l| match c.is_recurrent(l) {
                    true => vec![0.0; d.state_len()],
                    false => Vec::new(),
                })
                .collect(),
            None => Vec::new(),
        };
        Self { layers }
    }

    /// Whether the model has any delta net.
    pub(crate) fn any(&self) -> bool {
        !self.layers.is_empty()
    }

    /// Back to the state before any token.
    pub(crate) fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| l.fill(0.0));
    }
}

/// Room for a delta net's steps: the products' device buffers for `rows`
/// rows, and the host's copies.
#[derive(Debug)]
pub(crate) struct DeltaScratch<B: Backend> {
    mixed: B::Buffer,
    z: B::Buffer,
    beta: B::Buffer,
    alpha: B::Buffer,
    /// The mix's output, `v_dim` a row, before `ssm_out`.
    pub(super) out: B::Buffer,
    /// A gated attention's queries and gates, each head's query followed
    /// by its gate, and the gates apart.
    pub(super) q_gate: B::Buffer,
    pub(super) gate: B::Buffer,
    host: DeltaHost,
}

/// The host's copies of the products, and its own work.
#[derive(Debug, Default)]
struct DeltaHost {
    mixed: Vec<f32>,
    z: Vec<f32>,
    beta: Vec<f32>,
    alpha: Vec<f32>,
    out: Vec<f32>,
    /// One token's channels after the convolution.
    conv: Vec<f32>,
    /// One head's delta.
    delta: Vec<f32>,
}

impl<B: Backend> DeltaScratch<B> {
    pub(super) fn new(
        backend: &B,
        c: &ModelConfig,
        d: &DeltaNetConfig,
        rows: usize,
    ) -> Result<Self> {
        let buf = |w: usize| backend.buffer(rows * w);
        Ok(Self {
            mixed: buf(d.channels())?,
            z: buf(d.v_dim())?,
            beta: buf(d.v_heads)?,
            alpha: buf(d.v_heads)?,
            out: buf(d.v_dim())?,
            q_gate: buf(2 * c.q_dim())?,
            gate: buf(c.q_dim())?,
            host: DeltaHost::default(),
        })
    }
}

/// `buf`'s first `len` values into `host` (a copy, unless the backend's
/// buffers are host memory, where only the length is checked).
fn fetch<B: Backend>(b: &B, buf: &B::Buffer, len: usize, host: &mut Vec<f32>) -> Result<()> {
    host.resize(len, 0.0);
    match B::host_slice(buf) {
        Some(v) => match v.get(..len) {
            Some(v) => host.copy_from_slice(v),
            None => {
                return Err(Error::BadConfig(format!(
                    "a delta net's buffer holds {} values, not {len}",
                    v.len()
                )))
            }
        },
        None => b.download(buf, host)?,
    }
    Ok(())
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// ggml's softplus: `x` itself past 20.
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `x` times `1 / sqrt(mean(x^2) + eps)`, the mean's sum in f64 as
/// ggml's RMSNorm takes it.
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl<'a, B: Backend> DeltaNet<'a, B> {
    /// Block `layer`'s delta-net weights from `file`.
    pub(super) fn load<S: AsRef<[u8]>>(
        file: &'a Gguf<S>,
        backend: &B,
        layer: usize,
        c: &ModelConfig,
        dn: &DeltaNetConfig,
    ) -> Result<Self> {
        let n = |s: &str| format!("blk.{layer}.{s}");
        let d = c.d_model;
        let weight = |s: &str, rows: usize| checked_weight(backend, &file.tensor(&n(s))?, rows, d);
        let vector = |s: &str, len: usize| -> Result<Vec<f32>> {
            let name = n(s);
            let t = file.tensor(&name)?;
            let v = f32_vec(&t)?;
            if v.len() != len {
                return Err(Error::BadTensorShape {
                    tensor: name,
                    expected: vec![len as u64],
                    got: t.shape().to_vec(),
                });
            }
            Ok(v)
        };
        Ok(Self {
            qkv: weight("attn_qkv.weight", dn.channels())?,
            z: weight("attn_gate.weight", dn.v_dim())?,
            beta: weight("ssm_beta.weight", dn.v_heads)?,
            alpha: weight("ssm_alpha.weight", dn.v_heads)?,
            conv: vector("ssm_conv1d.weight", dn.channels() * dn.conv_kernel)?,
            dt_bias: vector("ssm_dt.bias", dn.v_heads)?,
            a: vector("ssm_a", dn.v_heads)?,
            norm: vector("ssm_norm.weight", dn.head_dim)?,
        })
    }

    /// The block's mix of the first `n` rows of `sc.xn` into
    /// `sc.delta.out` (`v_dim` a row), each row advancing `states[0]`
    /// (the rows are one sequence's tokens, in order) or `states[row]`
    /// (each row another sequence's next token).
    pub(super) fn run(
        &self,
        b: &B,
        sc: &mut Scratch<B>,
        (c, dn, li): (&ModelConfig, &DeltaNetConfig, usize),
        n: usize,
        states: &mut [&mut Recurrent],
    ) -> Result<()> {
        let ds = sc
            .delta
            .as_mut()
            .ok_or_else(|| Error::BadConfig("no room for a delta net".into()))?;
        let d = c.d_model;
        for (w, out, name) in [
            (&self.qkv, &mut ds.mixed, "attn_qkv"),
            (&self.z, &mut ds.z, "attn_gate"),
            (&self.beta, &mut ds.beta, "ssm_beta"),
            (&self.alpha, &mut ds.alpha, "ssm_alpha"),
        ] {
            b.matmul(&mut sc.ws, w, &sc.xn, n, out)?;
            if let Some(seen) = sc.seen.as_mut() {
                let name = format!("blk.{li}.{name}.weight");
                seen.observe_named(b, &mut sc.ws, &name, (&sc.xn, n, d))?;
            }
        }
        let (ch, vd, vh) = (dn.channels(), dn.v_dim(), dn.v_heads);
        let h = &mut ds.host;
        fetch(b, &ds.mixed, n * ch, &mut h.mixed)?;
        fetch(b, &ds.z, n * vd, &mut h.z)?;
        fetch(b, &ds.beta, n * vh, &mut h.beta)?;
        fetch(b, &ds.alpha, n * vh, &mut h.alpha)?;
        h.out.resize(n * vd, 0.0);
        h.conv.resize(ch, 0.0);
        h.delta.resize(dn.head_dim, 0.0);
        let one = states.len() == 1;
        if !one && states.len() != n {
            return Err(Error::BadConfig(format!(
                "{} recurrent states for {n} rows",
                states.len()
            )));
        }
        for r in 0..n {
            let st = states[if one { 0 } else { r }]
                .layers
                .get_mut(li)
                .filter(|s| s.len() == dn.state_len())
                .ok_or_else(|| Error::BadConfig(format!("no recurrent state for layer {li}")))?;
            self.token(
                (c, dn),
                st,
                (
                    &h.mixed[r * ch..(r + 1) * ch],
                    &h.z[r * vd..(r + 1) * vd],
                    &h.beta[r * vh..(r + 1) * vh],
                    &h.alpha[r * vh..(r + 1) * vh],
                ),
                (&mut h.conv, &mut h.delta),
                &mut h.out[r * vd..(r + 1) * vd],
            );
        }
        b.upload_into(&h.out, &mut ds.out)?;
        Ok(())
    }

    /// One token through the block's mix: its products `(mixed, z, beta,
    /// alpha)`, the sequence's state `st`, the output `out` (`v_dim`).
    #[allow(clippy::type_complexity)]
    fn token(
        &self,
        (c, dn): (&ModelConfig, &DeltaNetConfig),
        st: &mut [f32],
        (mixed, z, beta, alpha): (&[f32], &[f32], &[f32], &[f32]),
        (conv, delta): (&mut [f32], &mut [f32]),
        out: &mut [f32],
    ) {
        let (ch, taps, s) = (dn.channels(), dn.conv_kernel, dn.head_dim);
        let (past, heads) = st.split_at_mut((taps - 1) * ch);
        // The causal convolution over each channel's last inputs and this
        // one, in ggml's order (oldest first), then SiLU.
        for (i, y) in conv.iter_mut().enumerate() {
            let w = &self.conv[i * taps..(i + 1) * taps];
            let mut acc = 0.0f32;
            for (t, wt) in w[..taps - 1].iter().enumerate() {
                acc += past[t * ch + i] * wt;
            }
            acc += mixed[i] * w[taps - 1];
            *y = silu(acc);
        }
        if taps > 1 {
            past.copy_within(ch.., 0);
            past[(taps - 2) * ch..].copy_from_slice(mixed);
        }
        // L2 norms of each query and key head, as llama.cpp takes them
        // (an RMSNorm with eps / n, over sqrt(n)).
        let kd = dn.k_dim();
        let (qk, v) = conv.split_at_mut(2 * kd);
        let eps = c.rms_eps;
        let root = 1.0 / (s as f32).sqrt();
        for head in qk.chunks_exact_mut(s) {
            let scale = rms_scale(head, eps / s as f32);
            head.iter_mut().for_each(|x| *x = *x * scale * root);
        }
        let (q, k) = qk.split_at(kd);
        for (hv, state) in heads.chunks_exact_mut(s * s).enumerate() {
            let hk = hv % dn.k_heads;
            let (q, k) = (&q[hk * s..(hk + 1) * s], &k[hk * s..(hk + 1) * s]);
            let v = &v[hv * s..(hv + 1) * s];
            let g = softplus(alpha[hv] + self.dt_bias[hv]) * self.a[hv];
            let rate = 1.0 / (1.0 + (-beta[hv]).exp());
            let decay = g.exp();
            state.iter_mut().for_each(|x| *x *= decay);
            for (j, dj) in delta.iter_mut().enumerate() {
                *dj = (v[j] - dot(&state[j * s..(j + 1) * s], k)) * rate;
            }
            for (row, &dj) in state.chunks_exact_mut(s).zip(delta.iter()) {
                row.iter_mut().zip(k).for_each(|(x, &kv)| *x += kv * dj);
            }
            let o = &mut out[hv * s..(hv + 1) * s];
            for (j, oj) in o.iter_mut().enumerate() {
                *oj = dot(&state[j * s..(j + 1) * s], q) * root;
            }
            // The head's RMSNorm, times the SiLU of its gate.
            let scale = rms_scale(o, eps);
            let zh = &z[hv * s..(hv + 1) * s];
            for ((x, &w), &g) in o.iter_mut().zip(&self.norm).zip(zh) {
                *x = *x * scale * w * silu(g);
            }
        }
    }
}
