//! Qwen 3.5's gated delta net ([`DeltaNetConfig`]): a block that mixes
//! tokens through a recurrent state instead of attention.
//!
//! Its four products with the block's input (`attn_qkv`: queries, keys
//! and values; `attn_gate`: the output gate; `ssm_beta` and `ssm_alpha`:
//! each value head's rate and decay) and its output product
//! (`ssm_out`) run on the backend. Qwen3-Next's files hold the rates and
//! decays in one product (`ssm_ba`: each query/key head's value
//! heads' rates, then their decays), and its older files the queries,
//! keys, values and gate in one too (`ssm_in`: each query/key head's
//! query, key, values and gates); the host sorts their columns. Between them, on the host, each token
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

use super::recurrent::{
    causal_conv, dot, fetch, rms_scale, silu, softplus, state, vector, Recurrent,
};
use super::{checked_weight, Scratch};
use crate::config::{DeltaNetConfig, ModelConfig};
use crate::imatrix::Collector;
use crate::{Error, Result};

/// A delta-net block's weights.
#[derive(Debug)]
pub(crate) struct DeltaNet<'a, B: Backend + 'a> {
    /// `attn_qkv` (`[channels, d]`: queries, keys and values) and
    /// `attn_gate` (`[v_dim, d]`: the output's gate), or `ssm_in`: for
    /// each query/key head its query, its key, its value heads' values
    /// and their gates.
    mix: Pair<B::Weight<'a>>,
    /// `ssm_beta` and `ssm_alpha` (`[v_heads, d]` each: each value head's
    /// rate before the sigmoid, its decay before its bias), or `ssm_ba`:
    /// for each query/key head its value heads' rates, then their decays.
    rates: Pair<B::Weight<'a>>,
    /// `conv_kernel` taps a channel, the oldest input's first.
    conv: Vec<f32>,
    /// Each value head's decay bias (`ssm_dt.bias`).
    dt_bias: Vec<f32>,
    /// Each value head's decay rate (`ssm_a`: `-exp(A_log)`).
    a: Vec<f32>,
    /// The output's RMSNorm, one head wide, shared by the heads.
    norm: Vec<f32>,
}

/// Two products of a block's input: apart, or in one matrix by
/// query/key head (Qwen3-Next's files).
#[derive(Debug)]
enum Pair<W> {
    Split(W, W),
    Fused(W),
}

/// Room for a delta net's steps: the products' device buffers for `rows`
/// rows, and the host's copies.
#[derive(Debug)]
pub(crate) struct DeltaScratch<B: Backend> {
    /// The convolution's channels, or (Qwen3-Next's files may fuse them)
    /// the fused product's columns.
    mixed: B::Buffer,
    z: B::Buffer,
    /// Each value head's rate, or (Qwen3-Next's) the fused product's
    /// rates and decays.
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
    /// Each row's value heads' `beta`, then their rates.
    beta: Vec<f32>,
    /// Each row's value heads' `alpha`, then their decays.
    alpha: Vec<f32>,
    out: Vec<f32>,
    /// Each row's channels after the convolution.
    conv: Vec<f32>,
    /// One sequence's outputs head by head (each head's rows together).
    heads: Vec<f32>,
    /// A fused product's columns, before they are sorted.
    packed: Vec<f32>,
}

impl<B: Backend> DeltaScratch<B> {
    pub(super) fn new(
        backend: &B,
        c: &ModelConfig,
        d: &DeltaNetConfig,
        rows: usize,
    ) -> Result<Self> {
        let buf = |w: usize| backend.buffer(rows * w);
        // (Only Qwen3-Next's files fuse the products.)
        let fused = |w: usize, extra: usize| w + if d.grouped { extra } else { 0 };
        Ok(Self {
            mixed: buf(fused(d.channels(), d.v_dim()))?,
            z: buf(d.v_dim())?,
            beta: buf(fused(d.v_heads, d.v_heads))?,
            alpha: buf(d.v_heads)?,
            out: buf(d.v_dim())?,
            q_gate: buf(2 * c.q_dim())?,
            gate: buf(c.q_dim())?,
            host: DeltaHost::default(),
        })
    }
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
        let vector = |s: &str, len: usize| vector(file, &n(s), len);
        // (Qwen3-Next's products may be fused, as its value heads are
        // grouped; Qwen 3.5's never are.)
        let has = |s: &str| dn.grouped && file.tensor(&n(s)).is_ok();
        let pair = |fused: &str, (a, b): (&str, &str), (wa, wb): (usize, usize)| {
            Ok::<_, Error>(match has(fused) {
                true => Pair::Fused(weight(fused, wa + wb)?),
                false => Pair::Split(weight(a, wa)?, weight(b, wb)?),
            })
        };
        let (ch, vd, vh) = (dn.channels(), dn.v_dim(), dn.v_heads);
        Ok(Self {
            mix: pair(
                "ssm_in.weight",
                ("attn_qkv.weight", "attn_gate.weight"),
                (ch, vd),
            )?,
            rates: pair(
                "ssm_ba.weight",
                ("ssm_beta.weight", "ssm_alpha.weight"),
                (vh, vh),
            )?,
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
        let (ch, vd, vh) = (dn.channels(), dn.v_dim(), dn.v_heads);
        let (s, kd, g) = (dn.head_dim, dn.k_dim(), vh / dn.k_heads);
        // Each fused group's parts: their widths, which output each goes
        // to and where in its row.
        let mix_parts = [(s, 0, 0), (s, 0, kd), (g * s, 0, 2 * kd), (g * s, 1, 0)];
        let h = &mut ds.host;
        let run = ProductRun {
            b,
            xn: &sc.xn,
            n,
            d: c.d_model,
            li,
        };
        run.pair(
            (&mut sc.ws, sc.seen.as_deref_mut()),
            (&self.mix, ["attn_qkv", "attn_gate", "ssm_in"]),
            ([&mut ds.mixed, &mut ds.z], [ch, vd]),
            ((dn.k_heads, &mix_parts), &mut h.packed),
            [&mut h.mixed, &mut h.z],
        )?;
        run.pair(
            (&mut sc.ws, sc.seen.as_deref_mut()),
            (&self.rates, ["ssm_beta", "ssm_alpha", "ssm_ba"]),
            ([&mut ds.beta, &mut ds.alpha], [vh, vh]),
            ((dn.k_heads, &[(g, 0, 0), (g, 1, 0)]), &mut h.packed),
            [&mut h.beta, &mut h.alpha],
        )?;
        h.out.resize(n * vd, 0.0);
        h.conv.resize(n * ch, 0.0);
        let one = states.len() == 1;
        if !one && states.len() != n {
            return Err(Error::BadConfig(format!(
                "{} recurrent states for {n} rows",
                states.len()
            )));
        }
        let state_len = dn.state_len();
        // Each row's convolution, norms, decays and rates, in order (a
        // sequence's rows shift its convolution's inputs).
        for r in 0..n {
            self.mix_in(
                (c, dn),
                state(states, r, (li, state_len))?,
                &h.mixed[r * ch..(r + 1) * ch],
                &mut h.conv[r * ch..(r + 1) * ch],
                (
                    &mut h.beta[r * vh..(r + 1) * vh],
                    &mut h.alpha[r * vh..(r + 1) * vh],
                ),
            );
        }
        // Each value head's state through the rows: a sequence's head at a
        // time, while its state is in cache.
        let (s, past) = (dn.head_dim, (dn.conv_kernel - 1) * ch);
        let kd = dn.k_dim();
        let head = |r: usize, hv: usize| {
            let y = &h.conv[r * ch..(r + 1) * ch];
            let hk = match dn.grouped {
                true => hv / (vh / dn.k_heads),
                false => hv % dn.k_heads,
            };
            let at = |base: usize, i: usize| &y[base + i * s..base + (i + 1) * s];
            (at(0, hk), at(kd, hk), at(2 * kd, hv))
        };
        if one {
            // One sequence: its heads on the backend's host threads, each
            // through all the rows while its state is in cache.
            let st = state(states, 0, (li, state_len))?;
            h.heads.resize(n * vd, 0.0);
            let (alpha, beta) = (&h.alpha, &h.beta);
            b.host_chunks(
                (&mut st[past..], s * s),
                (&mut h.heads, n * s),
                &|hv, m, o| {
                    for (r, o) in o.chunks_exact_mut(s).enumerate() {
                        let rate = (alpha[r * vh + hv], beta[r * vh + hv]);
                        delta_rule(m, head(r, hv), rate, o);
                    }
                },
            );
            for (hv, o) in h.heads.chunks_exact(n * s).enumerate() {
                for (r, o) in o.chunks_exact(s).enumerate() {
                    h.out[r * vd + hv * s..r * vd + (hv + 1) * s].copy_from_slice(o);
                }
            }
        } else {
            // A row a sequence: each row's heads in turn.
            for r in 0..n {
                let st = state(states, r, (li, state_len))?;
                let heads = st[past..].chunks_exact_mut(s * s);
                for (hv, m) in heads.enumerate() {
                    let o = &mut h.out[r * vd + hv * s..r * vd + (hv + 1) * s];
                    delta_rule(
                        m,
                        head(r, hv),
                        (h.alpha[r * vh + hv], h.beta[r * vh + hv]),
                        o,
                    );
                }
            }
        }
        // Each head's output RMS-normed, times the SiLU of its gate.
        for (o, z) in h.out.chunks_exact_mut(s).zip(h.z.chunks_exact(s)) {
            let scale = rms_scale(o, c.rms_eps);
            for ((x, &w), &g) in o.iter_mut().zip(&self.norm).zip(z) {
                *x = *x * scale * w * silu(g);
            }
        }
        b.upload_into(&h.out, &mut ds.out)?;
        Ok(())
    }

    /// One token's channels through the convolution (`st`: the
    /// sequence's state; `mixed`: the token's channels; `y`: them
    /// convolved, SiLU'd, the queries and keys L2-normed), and its value
    /// heads' `beta` and `alpha` made their rates and decays.
    fn mix_in(
        &self,
        (c, dn): (&ModelConfig, &DeltaNetConfig),
        st: &mut [f32],
        mixed: &[f32],
        y: &mut [f32],
        (beta, alpha): (&mut [f32], &mut [f32]),
    ) {
        let (ch, taps, s) = (dn.channels(), dn.conv_kernel, dn.head_dim);
        // The causal convolution over each channel's last inputs and this
        // one, then SiLU.
        causal_conv(&mut st[..(taps - 1) * ch], &self.conv, taps, mixed, y);
        y.iter_mut().for_each(|v| *v = silu(*v));
        // L2 norms of each query and key head, as llama.cpp takes them
        // (an RMSNorm with eps / n, over sqrt(n)).
        let root = 1.0 / (s as f32).sqrt();
        for head in y[..2 * dn.k_dim()].chunks_exact_mut(s) {
            let scale = rms_scale(head, c.rms_eps / s as f32);
            head.iter_mut().for_each(|x| *x = *x * scale * root);
        }
        for (hv, (b, a)) in beta.iter_mut().zip(alpha.iter_mut()).enumerate() {
            *b = 1.0 / (1.0 + (-*b).exp());
            *a = (softplus(*a + self.dt_bias[hv]) * self.a[hv]).exp();
        }
    }
}

/// A fused product's group's parts: each one's width, the output it goes
/// to (0 or 1) and its offset in that output's row.
type Parts<'p> = &'p [(usize, usize, usize)];

/// The products of a block's input for `n` rows of `xn` (block `li`, `d`
/// wide).
struct ProductRun<'r, B: Backend> {
    b: &'r B,
    xn: &'r B::Buffer,
    n: usize,
    d: usize,
    li: usize,
}

impl<B: Backend> ProductRun<'_, B> {
    /// A pair of products (named `names`: the two apart, then the fused
    /// one) into `bufs` (`widths` a row), and on the host into `host`:
    /// a fused product's groups (`groups` of `parts`: each part's width,
    /// which output it goes to and where in its row) sorted through
    /// `packed`.
    fn pair(
        &self,
        (ws, mut seen): (&mut B::Workspace, Option<&mut Collector>),
        (pair, names): (&Pair<B::Weight<'_>>, [&str; 3]),
        (bufs, widths): ([&mut B::Buffer; 2], [usize; 2]),
        ((groups, parts), packed): ((usize, Parts<'_>), &mut Vec<f32>),
        host: [&mut Vec<f32>; 2],
    ) -> Result<()> {
        let (b, n) = (self.b, self.n);
        let [buf_a, buf_b] = bufs;
        let mut product = |w: &B::Weight<'_>, out: &mut B::Buffer, name: &str| -> Result<()> {
            b.matmul(ws, w, self.xn, n, out)?;
            if let Some(seen) = seen.as_deref_mut() {
                let name = format!("blk.{}.{name}.weight", self.li);
                seen.observe_named(b, ws, &name, (self.xn, n, self.d))?;
            }
            Ok(())
        };
        let [host_a, host_b] = host;
        match pair {
            Pair::Split(wa, wb) => {
                product(wa, buf_a, names[0])?;
                product(wb, buf_b, names[1])?;
                fetch(b, buf_a, n * widths[0], host_a)?;
                fetch(b, buf_b, n * widths[1], host_b)?;
            }
            Pair::Fused(w) => {
                product(w, buf_a, names[2])?;
                let row = widths[0] + widths[1];
                fetch(b, buf_a, n * row, packed)?;
                host_a.resize(n * widths[0], 0.0);
                host_b.resize(n * widths[1], 0.0);
                let group = row / groups;
                for (r, fused) in packed.chunks_exact(row).enumerate() {
                    for (hk, g) in fused.chunks_exact(group).enumerate() {
                        let mut at = 0;
                        for &(width, o, offset) in parts {
                            let (out, w) = match o {
                                0 => (&mut *host_a, widths[0]),
                                _ => (&mut *host_b, widths[1]),
                            };
                            let start = r * w + offset + hk * width;
                            out[start..start + width].copy_from_slice(&g[at..at + width]);
                            at += width;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The delta rule on one value head's state `m` (a row a value
/// dimension) for one token: `m = decay m; m += rate (v - m k) k^T; o =
/// m q / sqrt(len)`, each row read twice (its product with `k`, then its
/// update and product with `q`) with eight running sums.
fn delta_rule(
    m: &mut [f32],
    (q, k, v): (&[f32], &[f32], &[f32]),
    (decay, rate): (f32, f32),
    o: &mut [f32],
) {
    let s = q.len();
    let root = 1.0 / (s as f32).sqrt();
    for ((row, &vj), oj) in m.chunks_exact_mut(s).zip(v).zip(o.iter_mut()) {
        let d = (vj - decay * dot(row, k)) * rate;
        let mut acc = [0.0f32; 8];
        let (rows, rest) = row.as_chunks_mut::<8>();
        let (ks, k_rest) = k.as_chunks::<8>();
        let (qs, q_rest) = q.as_chunks::<8>();
        for ((x, kc), qc) in rows.iter_mut().zip(ks).zip(qs) {
            for i in 0..8 {
                x[i] = x[i] * decay + kc[i] * d;
                acc[i] += x[i] * qc[i];
            }
        }
        let mut sum = acc.iter().sum::<f32>();
        for ((x, &kv), &qv) in rest.iter_mut().zip(k_rest).zip(q_rest) {
            *x = *x * decay + kv * d;
            sum += *x * qv;
        }
        *oj = sum * root;
    }
}
