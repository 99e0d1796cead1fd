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
    /// One token's channels after the convolution.
    conv: Vec<f32>,
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
        let (w, ch) = (m.in_width(), m.channels());
        fetch(b, &ms.input, n * w, &mut ms.host_in)?;
        ms.host_out.resize(n * m.inner, 0.0);
        ms.conv.resize(ch, 0.0);
        for r in 0..n {
            let st = state(states, r, (li, m.state_len()))?;
            let row = &ms.host_in[r * w..(r + 1) * w];
            let out = &mut ms.host_out[r * m.inner..(r + 1) * m.inner];
            self.token((c, m), st, row, &mut ms.conv, out);
        }
        b.upload_into(&ms.host_out, &mut ms.out)?;
        Ok(())
    }

    /// One token through the mixer: its input product `row`, the
    /// sequence's state `st`, the output `out` (`inner`).
    fn token(
        &self,
        (c, m): (&ModelConfig, &MambaConfig),
        st: &mut [f32],
        row: &[f32],
        conv: &mut [f32],
        out: &mut [f32],
    ) {
        let (ch, taps, ds) = (m.channels(), m.conv_kernel, m.state);
        let (z, rest) = row.split_at(m.inner);
        let (xbc, dt) = rest.split_at(ch);
        let (past, heads) = st.split_at_mut((taps - 1) * ch);
        // The causal convolution over each channel's last inputs and this
        // one, its bias, then SiLU.
        causal_conv(past, &self.conv, taps, xbc, conv);
        for (y, b) in conv.iter_mut().zip(&self.conv_bias) {
            *y = silu(*y + b);
        }
        let (x, bc) = conv.split_at(m.inner);
        let (bs, cs) = bc.split_at(m.groups * ds);
        let head_dim = m.inner / m.heads;
        let per_group = m.heads / m.groups;
        for (h, state) in heads.chunks_exact_mut(head_dim * ds).enumerate() {
            let step = softplus(dt[h] + self.dt_bias[h]);
            let decay = (step * self.a[h]).exp();
            let g = h / per_group;
            let (bg, cg) = (&bs[g * ds..(g + 1) * ds], &cs[g * ds..(g + 1) * ds]);
            for (i, s) in state.chunks_exact_mut(ds).enumerate() {
                let xi = x[h * head_dim + i];
                let x_dt = xi * step;
                let mut acc = [0.0f32; 8];
                let (sc, s_rest) = s.as_chunks_mut::<8>();
                let (bc8, b_rest) = bg.as_chunks::<8>();
                let (cc8, c_rest) = cg.as_chunks::<8>();
                for ((sv, bv), cv) in sc.iter_mut().zip(bc8).zip(cc8) {
                    for k in 0..8 {
                        sv[k] = sv[k] * decay + bv[k] * x_dt;
                        acc[k] += sv[k] * cv[k];
                    }
                }
                let mut y = acc.iter().sum::<f32>();
                for ((sv, &bv), &cv) in s_rest.iter_mut().zip(b_rest).zip(c_rest) {
                    *sv = *sv * decay + bv * x_dt;
                    y += *sv * cv;
                }
                out[h * head_dim + i] = y + xi * self.d[h];
            }
        }
        // The gate's SiLU, then the norm by groups.
        out.iter_mut().zip(z).for_each(|(y, &g)| *y *= silu(g));
        let Some(norm) = &self.norm else {
            return;
        };
        let eps = c.rms_eps;
        for (o, w) in out
            .chunks_exact_mut(m.inner / m.groups)
            .zip(norm.chunks_exact(m.inner / m.groups))
        {
            let scale = rms_scale(o, eps);
            o.iter_mut().zip(w).for_each(|(x, &w)| *x = *x * scale * w);
        }
    }
}
