//! LFM2's gated short convolution ([`ShortConvConfig`]): a block that
//! mixes tokens through a causal convolution of its last inputs instead
//! of attention.
//!
//! Its input product (`shortconv.in_proj`: `b`, `c` and `x`, each
//! `d_model` wide) and its output product (`shortconv.out_proj`) run on
//! the backend; between them, on the host, each token in order: `b * x`,
//! the convolution (`shortconv.conv`) over each channel's last values of
//! it and this one, times `c`. The session keeps each such block's last
//! `l_cache - 1` values of `b * x` ([`Recurrent`]).

use realm_core::backend::Backend;
use realm_core::gguf::Gguf;

use super::recurrent::{causal_conv, fetch, state, vector, Recurrent};
use super::{checked_weight, Scratch};
use crate::config::{ModelConfig, ShortConvConfig};
use crate::{Error, Result};

/// A short convolution block's weights (its output product is the
/// block's `wo`).
#[derive(Debug)]
pub(crate) struct ShortConv<'a, B: Backend + 'a> {
    /// `[3 d, d]`: `b`, `c` and `x`.
    in_proj: B::Weight<'a>,
    /// `l_cache` taps a channel, the oldest value's first.
    conv: Vec<f32>,
}

/// Room for a short convolution's steps.
#[derive(Debug)]
pub(crate) struct ConvScratch<B: Backend> {
    bcx: B::Buffer,
    /// The mix's output, `d_model` a row, before `shortconv.out_proj`.
    pub(super) out: B::Buffer,
    host_bcx: Vec<f32>,
    host_out: Vec<f32>,
}

impl<B: Backend> ConvScratch<B> {
    pub(super) fn new(backend: &B, c: &ModelConfig, rows: usize) -> Result<Self> {
        Ok(Self {
            bcx: backend.buffer(rows * 3 * c.d_model)?,
            out: backend.buffer(rows * c.d_model)?,
            host_bcx: Vec::new(),
            host_out: Vec::new(),
        })
    }
}

impl<'a, B: Backend> ShortConv<'a, B> {
    /// Block `layer`'s weights from `file`.
    pub(super) fn load<S: AsRef<[u8]>>(
        file: &'a Gguf<S>,
        backend: &B,
        layer: usize,
        c: &ModelConfig,
        sc: &ShortConvConfig,
    ) -> Result<Self> {
        let d = c.d_model;
        let conv = vector(
            file,
            &format!("blk.{layer}.shortconv.conv.weight"),
            d * sc.l_cache,
        )?;
        let in_proj = file.tensor(&format!("blk.{layer}.shortconv.in_proj.weight"))?;
        Ok(Self {
            in_proj: checked_weight(backend, &in_proj, 3 * d, d)?,
            conv,
        })
    }

    /// The block's mix of the first `n` rows of `sc.xn` into
    /// `sc.conv.out`, each row advancing `states[0]` (the rows are one
    /// sequence's tokens, in order) or `states[row]` (each row another
    /// sequence's next token).
    pub(super) fn run(
        &self,
        b: &B,
        sc: &mut Scratch<B>,
        (c, cc, li): (&ModelConfig, &ShortConvConfig, usize),
        n: usize,
        states: &mut [&mut Recurrent],
    ) -> Result<()> {
        let cs = sc
            .conv
            .as_mut()
            .ok_or_else(|| Error::BadConfig("no room for a short convolution".into()))?;
        let d = c.d_model;
        b.matmul(&mut sc.ws, &self.in_proj, &sc.xn, n, &mut cs.bcx)?;
        if let Some(seen) = sc.seen.as_mut() {
            let name = format!("blk.{li}.shortconv.in_proj.weight");
            seen.observe_named(b, &mut sc.ws, &name, (&sc.xn, n, d))?;
        }
        if states.len() != 1 && states.len() != n {
            return Err(Error::BadConfig(format!(
                "{} recurrent states for {n} rows",
                states.len()
            )));
        }
        fetch(b, &cs.bcx, n * 3 * d, &mut cs.host_bcx)?;
        cs.host_out.resize(n * d, 0.0);
        let taps = cc.l_cache;
        let len = (taps - 1) * d;
        for r in 0..n {
            let past = state(states, r, (li, len))?;
            let row = &mut cs.host_bcx[r * 3 * d..(r + 1) * 3 * d];
            let (bc, x) = row.split_at_mut(2 * d);
            let (bg, cg) = bc.split_at(d);
            // `b * x`, in place of `x`.
            x.iter_mut().zip(bg).for_each(|(x, &g)| *x *= g);
            let out = &mut cs.host_out[r * d..(r + 1) * d];
            // The convolution over each channel's last values and this
            // one, times `c`.
            causal_conv(past, &self.conv, taps, x, out);
            out.iter_mut().zip(cg).for_each(|(o, &g)| *o *= g);
        }
        b.upload_into(&cs.host_out, &mut cs.out)?;
        Ok(())
    }
}
