//! Mamba's (the first's) mixers ([`Mamba1Config`]): a selective state
//! space whose decay, step and input and output projections differ per
//! channel.
//!
//! The products run on the backend: the input product (`ssm_in`: the
//! channels `x`, then the gate `z`), the channels' product to each token's
//! low-rank step, `B` and `C` (`ssm_x`), the step's product back to every
//! channel (`ssm_dt`) and the output product (`ssm_out`, the block's
//! `wo`). Between them, on the host: the causal convolution (`ssm_conv1d`,
//! its bias) and SiLU over each row in order, Falcon Mamba's RMSNorms
//! without weights of the step, `B` and `C` (`ssm.dt_b_c_rms`), and each
//! channel's state update and read (`ssm_dt.bias`, `ssm_a` a channel,
//! `ssm_d`), the gate's SiLU. The state lives in the session
//! ([`Recurrent`]).

use realm_core::backend::Backend;
use realm_core::gguf::Gguf;

use super::recurrent::{causal_conv, fetch, rms_scale, silu, softplus, state, vector, Recurrent};
use super::{checked_weight, Scratch};
use crate::config::{Mamba1Config, ModelConfig};
use crate::{Error, Result};

/// A mixer's weights (its output product is the block's `wo`).
#[derive(Debug)]
pub(crate) struct Mamba1<'a, B: Backend + 'a> {
    /// `[2 inner, d]`: `x`, then `z`.
    input: B::Weight<'a>,
    /// `[dt_rank + 2 state, inner]`: the step, `B`, `C`.
    x_proj: B::Weight<'a>,
    /// `[inner, dt_rank]`: the step to every channel.
    dt_proj: B::Weight<'a>,
    /// `conv_kernel` taps a channel, the oldest input's first.
    conv: Vec<f32>,
    conv_bias: Vec<f32>,
    /// Each channel's step bias, its `state` decay rates (`-exp(A_log)`)
    /// and its skip.
    dt_bias: Vec<f32>,
    a: Vec<f32>,
    d: Vec<f32>,
}

/// Room for a mixer's steps.
#[derive(Debug)]
pub(crate) struct Mamba1Scratch<B: Backend> {
    input: B::Buffer,
    /// The convolved channels, `inner` a row.
    conv: B::Buffer,
    /// `ssm_x`'s products, `dt_rank + 2 state` a row.
    xdb: B::Buffer,
    /// The low-rank steps, `dt_rank` a row, and their products.
    dt_in: B::Buffer,
    dt_out: B::Buffer,
    /// The mix's output, `inner` a row, before `ssm_out`.
    pub(super) out: B::Buffer,
    host_in: Vec<f32>,
    host_conv: Vec<f32>,
    host_xdb: Vec<f32>,
    host_dt: Vec<f32>,
    host_steps: Vec<f32>,
    host_out: Vec<f32>,
}

impl<B: Backend> Mamba1Scratch<B> {
    pub(super) fn new(backend: &B, m: &Mamba1Config, rows: usize) -> Result<Self> {
        let buf = |width: usize| backend.buffer(rows * width);
        Ok(Self {
            input: buf(2 * m.inner)?,
            conv: buf(m.inner)?,
            xdb: buf(m.dt_rank + 2 * m.state)?,
            dt_in: buf(m.dt_rank)?,
            dt_out: buf(m.inner)?,
            out: buf(m.inner)?,
            host_in: Vec::new(),
            host_conv: Vec::new(),
            host_xdb: Vec::new(),
            host_dt: Vec::new(),
            host_steps: Vec::new(),
            host_out: Vec::new(),
        })
    }
}

impl<'a, B: Backend> Mamba1<'a, B> {
    /// Block `layer`'s mixer from `file`.
    pub(super) fn load<S: AsRef<[u8]>>(
        file: &'a Gguf<S>,
        backend: &B,
        layer: usize,
        c: &ModelConfig,
        m: &Mamba1Config,
    ) -> Result<Self> {
        let n = |s: &str| format!("blk.{layer}.{s}");
        let vector = |s: &str, len: usize| vector(file, &n(s), len);
        let weight = |s: &str, rows: usize, cols: usize| {
            checked_weight(backend, &file.tensor(&n(s))?, rows, cols)
        };
        Ok(Self {
            input: weight("ssm_in.weight", 2 * m.inner, c.d_model)?,
            x_proj: weight("ssm_x.weight", m.dt_rank + 2 * m.state, m.inner)?,
            dt_proj: weight("ssm_dt.weight", m.inner, m.dt_rank)?,
            conv: vector("ssm_conv1d.weight", m.inner * m.conv_kernel)?,
            conv_bias: vector("ssm_conv1d.bias", m.inner)?,
            dt_bias: vector("ssm_dt.bias", m.inner)?,
            a: vector("ssm_a", m.inner * m.state)?,
            d: vector("ssm_d", m.inner)?,
        })
    }

    /// The block's mix of the first `n` rows of `sc.xn` into
    /// `sc.mamba1.out`, each row advancing `states[0]` (the rows are one
    /// sequence's tokens, in order) or `states[row]` (each row another
    /// sequence's next token).
    pub(super) fn run(
        &self,
        b: &B,
        sc: &mut Scratch<B>,
        (c, m, li): (&ModelConfig, &Mamba1Config, usize),
        n: usize,
        states: &mut [&mut Recurrent],
    ) -> Result<()> {
        if states.len() != 1 && states.len() != n {
            return Err(Error::BadConfig(format!(
                "{} recurrent states for {n} rows",
                states.len()
            )));
        }
        let ms = sc
            .mamba1
            .as_mut()
            .ok_or_else(|| Error::BadConfig("no room for a Mamba mixer".into()))?;
        let (inner, ds, rank) = (m.inner, m.state, m.dt_rank);
        let taps = m.conv_kernel;
        let xdb_w = rank + 2 * ds;
        b.matmul(&mut sc.ws, &self.input, &sc.xn, n, &mut ms.input)?;
        fetch(b, &ms.input, n * 2 * inner, &mut ms.host_in)?;
        // Each row's channels through its sequence's convolution, in order.
        ms.host_conv.resize(n * inner, 0.0);
        for (r, (row, conv)) in ms
            .host_in
            .chunks_exact(2 * inner)
            .zip(ms.host_conv.chunks_exact_mut(inner))
            .enumerate()
        {
            let st = state(states, r, (li, m.state_len()))?;
            let past = &mut st[..(taps - 1) * inner];
            causal_conv(past, &self.conv, taps, &row[..inner], conv);
            for (y, b) in conv.iter_mut().zip(&self.conv_bias) {
                *y = silu(*y + b);
            }
        }
        b.upload_into(&ms.host_conv, &mut ms.conv)?;
        b.matmul(&mut sc.ws, &self.x_proj, &ms.conv, n, &mut ms.xdb)?;
        fetch(b, &ms.xdb, n * xdb_w, &mut ms.host_xdb)?;
        // Falcon Mamba's norms of the step, B and C.
        if m.dt_b_c_rms {
            for row in ms.host_xdb.chunks_exact_mut(xdb_w) {
                let (dt, bc) = row.split_at_mut(rank);
                let (bs, cs) = bc.split_at_mut(ds);
                for part in [dt, bs, cs] {
                    let s = rms_scale(part, c.rms_eps);
                    part.iter_mut().for_each(|v| *v *= s);
                }
            }
        }
        ms.host_dt.clear();
        for row in ms.host_xdb.chunks_exact(xdb_w) {
            ms.host_dt.extend_from_slice(&row[..rank]);
        }
        b.upload_into(&ms.host_dt, &mut ms.dt_in)?;
        b.matmul(&mut sc.ws, &self.dt_proj, &ms.dt_in, n, &mut ms.dt_out)?;
        fetch(b, &ms.dt_out, n * inner, &mut ms.host_steps)?;
        if let Some(seen) = sc.seen.as_mut() {
            for (name, x, width) in [
                ("ssm_in", &sc.xn, c.d_model),
                ("ssm_x", &ms.conv, inner),
                ("ssm_dt", &ms.dt_in, rank),
            ] {
                let name = format!("blk.{li}.{name}.weight");
                seen.observe_named(b, &mut sc.ws, &name, (x, n, width))?;
            }
        }
        // Each row's channels through its sequence's state, in order.
        ms.host_out.resize(n * inner, 0.0);
        for r in 0..n {
            let st = state(states, r, (li, m.state_len()))?;
            let s = &mut st[(taps - 1) * inner..];
            let xdb = &ms.host_xdb[r * xdb_w..(r + 1) * xdb_w];
            let (bs, cs) = xdb[rank..].split_at(ds);
            let x = &ms.host_conv[r * inner..(r + 1) * inner];
            let steps = &ms.host_steps[r * inner..(r + 1) * inner];
            let z = &ms.host_in[r * 2 * inner + inner..(r + 1) * 2 * inner];
            let out = &mut ms.host_out[r * inner..(r + 1) * inner];
            for (i, row) in s.chunks_exact_mut(ds).enumerate() {
                let step = softplus(steps[i] + self.dt_bias[i]);
                let x_dt = x[i] * step;
                let a = &self.a[i * ds..(i + 1) * ds];
                let mut y = 0.0f32;
                for (((sv, &av), &bv), &cv) in row.iter_mut().zip(a).zip(bs).zip(cs) {
                    *sv = *sv * (step * av).exp() + bv * x_dt;
                    y += *sv * cv;
                }
                out[i] = (y + x[i] * self.d[i]) * silu(z[i]);
            }
        }
        b.upload_into(&ms.host_out, &mut ms.out)?;
        Ok(())
    }
}
