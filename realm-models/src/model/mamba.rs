//! Granite 4.0's Mamba-2 mixers ([`MambaConfig`]): blocks that mix tokens
//! through a selective state space instead of attention.
//!
//! The input product (`ssm_in`: the gate `z`, the channels `x`, `B`, `C`
//! and each head's `dt`) and the output product (`ssm_out`, the block's
//! `wo`) run on the backend. Between them, on the host, each token in
//! order: the causal convolution (`ssm_conv1d`, its bias) over the
//! channels' last inputs and SiLU, each head's state update and read
//! (`ssm_dt.bias`, `ssm_a`, `ssm_d`), the gate's SiLU and the norm by
//! groups (`ssm_norm`, where the file has it: Falcon-H1's may not). The
//! state lives in the session ([`Recurrent`]). Falcon-H1's mixers run
//! beside attention: their output product is their own, into a buffer
//! of theirs that joins the attention's output.

use realm_core::backend::Backend;
use realm_core::gguf::Gguf;

use super::recurrent::{causal_conv, fetch, rms_scale, silu, softplus, state, vector, Recurrent};
use super::{checked_weight, Scratch};
use crate::config::{MambaConfig, ModelConfig};
use crate::{Error, Result};

/// A mixer's weights (its output product is the block's `wo`, or its
/// own beside attention).
#[derive(Debug)]
pub(crate) struct Mamba<'a, B: Backend + 'a> {
    /// `[in_width, d]`: `z`, `x`, `B`, `C`, `dt`.
    input: B::Weight<'a>,
    /// `[d, inner]`: the output product of a mixer beside attention.
    output: Option<B::Weight<'a>>,
    /// `conv_kernel` taps a channel, the oldest input's first.
    conv: Vec<f32>,
    conv_bias: Vec<f32>,
    /// Each head's step bias, decay rate (`-exp(A_log)`) and skip.
    dt_bias: Vec<f32>,
    a: Vec<f32>,
    d: Vec<f32>,
    /// The output's norm, `inner` values (one group after another).
    norm: Option<Vec<f32>>,
}

/// Room for a mixer's steps.
#[derive(Debug)]
pub(crate) struct MambaScratch<B: Backend> {
    input: B::Buffer,
    /// The mix's output, `inner` a row, before `ssm_out`.
    pub(super) out: B::Buffer,
    /// A mixer beside attention: its output product, `d` a row.
    pub(super) proj: B::Buffer,
    host_in: Vec<f32>,
    host_out: Vec<f32>,
    /// Each row's channels after the convolution.
    conv: Vec<f32>,
    /// One sequence's outputs head by head (each head's rows together).
    heads: Vec<f32>,
}

impl<B: Backend> MambaScratch<B> {
    pub(super) fn new(backend: &B, c: &ModelConfig, m: &MambaConfig, rows: usize) -> Result<Self> {
        Ok(Self {
            input: backend.buffer(rows * m.in_width())?,
            out: backend.buffer(rows * m.inner)?,
            proj: backend.buffer(if m.parallel { rows * c.d_model } else { 1 })?,
            host_in: Vec::new(),
            host_out: Vec::new(),
            conv: Vec::new(),
            heads: Vec::new(),
        })
    }
}

impl<'a, B: Backend> Mamba<'a, B> {
    /// Block `layer`'s mixer from `file`.
    pub(super) fn load<S: AsRef<[u8]>>(
        file: &'a Gguf<S>,
        backend: &B,
        layer: usize,
        c: &ModelConfig,
        m: &MambaConfig,
    ) -> Result<Self> {
        let n = |s: &str| format!("blk.{layer}.{s}");
        let vector = |s: &str, len: usize| vector(file, &n(s), len);
        let input = file.tensor(&n("ssm_in.weight"))?;
        let output = match m.parallel {
            true => Some(checked_weight(
                backend,
                &file.tensor(&n("ssm_out.weight"))?,
                c.d_model,
                m.inner,
            )?),
            false => None,
        };
        Ok(Self {
            input: checked_weight(backend, &input, m.in_width(), c.d_model)?,
            output,
            conv: vector("ssm_conv1d.weight", m.channels() * m.conv_kernel)?,
            conv_bias: vector("ssm_conv1d.bias", m.channels())?,
            dt_bias: vector("ssm_dt.bias", m.heads)?,
            a: vector("ssm_a", m.heads)?,
            d: vector("ssm_d", m.heads)?,
            // (Falcon-H1's files may have none, as llama.cpp reads them.)
            norm: match file.tensor(&n("ssm_norm.weight")) {
                Err(realm_core::Error::TensorNotFound(_)) if m.parallel => None,
                _ => Some(vector("ssm_norm.weight", m.inner)?),
            },
        })
    }

    /// A mixer beside attention: its output product of the first `n`
    /// rows of `sc.mamba.out` into `sc.mamba.proj`.
    pub(super) fn output(
        &self,
        b: &B,
        sc: &mut Scratch<B>,
        (m, li): (&MambaConfig, usize),
        n: usize,
    ) -> Result<()> {
        let (ms, w) = sc
            .mamba
            .as_mut()
            .zip(self.output.as_ref())
            .ok_or_else(|| Error::BadConfig("no output product for a Mamba-2 mixer".into()))?;
        b.matmul(&mut sc.ws, w, &ms.out, n, &mut ms.proj)?;
        if let Some(seen) = sc.seen.as_mut() {
            let name = format!("blk.{li}.ssm_out.weight");
            seen.observe_named(b, &mut sc.ws, &name, (&ms.out, n, m.inner))?;
        }
        Ok(())
    }

    /// The block's mix of the first `n` rows of `sc.xn` into
    /// `sc.mamba.out`, each row advancing `states[0]` (the rows are one
    /// sequence's tokens, in order) or `states[row]` (each row another
    /// sequence's next token).
    pub(super) fn run(
        &self,
        b: &B,
        sc: &mut Scratch<B>,
        (c, m, li): (&ModelConfig, &MambaConfig, usize),
        n: usize,
        states: &mut [&mut Recurrent],
    ) -> Result<()> {
        let ms = sc
            .mamba
            .as_mut()
            .ok_or_else(|| Error::BadConfig("no room for a Mamba-2 mixer".into()))?;
        b.matmul(&mut sc.ws, &self.input, &sc.xn, n, &mut ms.input)?;
        if let Some(seen) = sc.seen.as_mut() {
            let name = format!("blk.{li}.ssm_in.weight");
            seen.observe_named(b, &mut sc.ws, &name, (&sc.xn, n, c.d_model))?;
        }
        if states.len() != 1 && states.len() != n {
            return Err(Error::BadConfig(format!(
                "{} recurrent states for {n} rows",
                states.len()
            )));
        }
        let (w, ch, inner) = (m.in_width(), m.channels(), m.inner);
        let (taps, hd) = (m.conv_kernel, m.inner / m.heads);
        fetch(b, &ms.input, n * w, &mut ms.host_in)?;
        ms.host_out.resize(n * inner, 0.0);
        ms.conv.resize(n * ch, 0.0);
        ms.heads.resize(n * inner, 0.0);
        let skip = (&self.dt_bias[..], &self.a[..], &self.d[..]);
        if states.len() == 1 {
            // One sequence: its rows' convolutions in order, then its heads
            // on the backend's host threads, each through all the rows.
            let st = state(states, 0, (li, m.state_len()))?;
            let (past, heads) = st.split_at_mut((taps - 1) * ch);
            for (row, conv) in ms.host_in.chunks_exact(w).zip(ms.conv.chunks_exact_mut(ch)) {
                self.convolve(past, (&row[inner..inner + ch], taps), conv);
            }
            let (input, conv) = (&ms.host_in, &ms.conv);
            b.host_chunks(
                (heads, hd * m.state),
                (&mut ms.heads, n * hd),
                &|h, s, y| {
                    for (r, y) in y.chunks_exact_mut(hd).enumerate() {
                        let dt = input[r * w + inner + ch + h];
                        scan(m, skip, (h, s), (&conv[r * ch..(r + 1) * ch], dt), y);
                    }
                },
            );
            for (h, y) in ms.heads.chunks_exact(n * hd).enumerate() {
                for (r, y) in y.chunks_exact(hd).enumerate() {
                    ms.host_out[r * inner + h * hd..r * inner + (h + 1) * hd].copy_from_slice(y);
                }
            }
        } else {
            // A row a sequence: each row's convolution and heads in turn.
            for r in 0..n {
                let st = state(states, r, (li, m.state_len()))?;
                let (past, heads) = st.split_at_mut((taps - 1) * ch);
                let row = &ms.host_in[r * w..(r + 1) * w];
                let conv = &mut ms.conv[r * ch..(r + 1) * ch];
                self.convolve(past, (&row[inner..inner + ch], taps), conv);
                let out = &mut ms.host_out[r * inner..(r + 1) * inner];
                let states = heads.chunks_exact_mut(hd * m.state);
                for (h, (s, y)) in states.zip(out.chunks_exact_mut(hd)).enumerate() {
                    scan(m, skip, (h, s), (conv, row[inner + ch + h]), y);
                }
            }
        }
        for (out, row) in ms
            .host_out
            .chunks_exact_mut(inner)
            .zip(ms.host_in.chunks_exact(w))
        {
            self.gate_and_norm(c, m, &row[..inner], out);
        }
        b.upload_into(&ms.host_out, &mut ms.out)?;
        Ok(())
    }

    /// One token's channels `xbc` through the causal convolution over each
    /// channel's last inputs (`past`, which it joins), its bias, then
    /// SiLU, into `conv`.
    fn convolve(&self, past: &mut [f32], (xbc, taps): (&[f32], usize), conv: &mut [f32]) {
        causal_conv(past, &self.conv, taps, xbc, conv);
        for (y, b) in conv.iter_mut().zip(&self.conv_bias) {
            *y = silu(*y + b);
        }
    }

    /// A token's output `out` (`inner`) times the SiLU of its gate `z`,
    /// then normed by groups (where the mixer has a norm).
    fn gate_and_norm(&self, c: &ModelConfig, m: &MambaConfig, z: &[f32], out: &mut [f32]) {
        out.iter_mut().zip(z).for_each(|(y, &g)| *y *= silu(g));
        let Some(norm) = &self.norm else {
            return;
        };
        let group = m.inner / m.groups;
        for (o, w) in out.chunks_exact_mut(group).zip(norm.chunks_exact(group)) {
            let scale = rms_scale(o, c.rms_eps);
            o.iter_mut().zip(w).for_each(|(x, &w)| *x = *x * scale * w);
        }
    }
}

/// Head `h`'s state `s` (`head_dim x state`) through one token: its
/// convolved channels `conv` (`x`, then each group's `B` and `C`) and step
/// `dt` before its bias; the head's output (`head_dim`, with the `D`
/// skip) into `y`. `(dt_bias, a, d)`: each head's step bias, decay rate
/// and skip.
fn scan(
    m: &MambaConfig,
    (dt_bias, a, d): (&[f32], &[f32], &[f32]),
    (h, s): (usize, &mut [f32]),
    (conv, dt): (&[f32], f32),
    y: &mut [f32],
) {
    let ds = m.state;
    let hd = m.inner / m.heads;
    let (x, bc) = conv.split_at(m.inner);
    let (bs, cs) = bc.split_at(m.groups * ds);
    let step = softplus(dt + dt_bias[h]);
    let decay = (step * a[h]).exp();
    let g = h / (m.heads / m.groups);
    let (bg, cg) = (&bs[g * ds..(g + 1) * ds], &cs[g * ds..(g + 1) * ds]);
    for (i, (row, yi)) in s.chunks_exact_mut(ds).zip(y.iter_mut()).enumerate() {
        let xi = x[h * hd + i];
        let x_dt = xi * step;
        let mut acc = [0.0f32; 8];
        let (sc, s_rest) = row.as_chunks_mut::<8>();
        let (bc8, b_rest) = bg.as_chunks::<8>();
        let (cc8, c_rest) = cg.as_chunks::<8>();
        for ((sv, bv), cv) in sc.iter_mut().zip(bc8).zip(cc8) {
            for k in 0..8 {
                sv[k] = sv[k] * decay + bv[k] * x_dt;
                acc[k] += sv[k] * cv[k];
            }
        }
        let mut out = acc.iter().sum::<f32>();
        for ((sv, &bv), &cv) in s_rest.iter_mut().zip(b_rest).zip(c_rest) {
            *sv = *sv * decay + bv * x_dt;
            out += *sv * cv;
        }
        *yi = out + xi * d[h];
    }
}
