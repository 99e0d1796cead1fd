//! What recurrent blocks share: a session's states, one a block ([`Recurrent`]),
//! and the host's copies of the backend's products they work on.

use realm_core::backend::Backend;
use realm_core::gguf::Gguf;

use crate::config::ModelConfig;
use crate::{Error, Result};

/// One session's recurrent states: per block, the values its state holds
/// (a delta net's convolution inputs and heads' states, a short
/// convolution's inputs); none for the attention blocks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recurrent {
    pub(crate) layers: Vec<Vec<f32>>,
}

impl Recurrent {
    /// Zero states for the recurrent blocks of `c`.
    pub(crate) fn new(c: &ModelConfig) -> Self {
        let layers = match c.has_recurrent() {
            true => (0..c.n_layers)
                .map(|l| vec![0.0; c.recurrent_state_len(l)])
                .collect(),
            false => Vec::new(),
        };
        Self { layers }
    }

    /// Whether the model has any recurrent block.
    pub(crate) fn any(&self) -> bool {
        !self.layers.is_empty()
    }

    /// Back to the state before any token.
    pub(crate) fn reset(&mut self) {
        self.layers.iter_mut().for_each(|l| l.fill(0.0));
    }
}

/// Block `li`'s state in `states[r]`, or `states[0]` where there is one
/// (the rows of one sequence), checked to hold `len` values.
pub(crate) fn state<'s>(
    states: &'s mut [&mut Recurrent],
    r: usize,
    (li, len): (usize, usize),
) -> Result<&'s mut [f32]> {
    let one = states.len() == 1;
    states[if one { 0 } else { r }]
        .layers
        .get_mut(li)
        .filter(|s| s.len() == len)
        .map(|s| s.as_mut_slice())
        .ok_or_else(|| Error::BadConfig(format!("no recurrent state for layer {li}")))
}

/// `buf`'s first `len` values into `host` (a copy, unless the backend's
/// buffers are host memory, where only the length is checked).
pub(crate) fn fetch<B: Backend>(
    b: &B,
    buf: &B::Buffer,
    len: usize,
    host: &mut Vec<f32>,
) -> Result<()> {
    host.resize(len, 0.0);
    match B::host_slice(buf) {
        Some(v) => match v.get(..len) {
            Some(v) => host.copy_from_slice(v),
            None => {
                return Err(Error::BadConfig(format!(
                    "a recurrent block's buffer holds {} values, not {len}",
                    v.len()
                )))
            }
        },
        None => b.download(buf, host)?,
    }
    Ok(())
}

/// A dot product with eight running sums (which the compiler keeps in
/// one vector register).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, ar) = a.as_chunks::<8>();
    let (bc, br) = b.as_chunks::<8>();
    for (x, y) in ac.iter().zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        sum += x * y;
    }
    sum
}

pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// ggml's softplus: `x` itself past 20.
pub(crate) fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// `x` times `1 / sqrt(mean(x^2) + eps)`, the mean's sum in f64 as
/// ggml's RMSNorm takes it.
pub(crate) fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// Tensor `name` of `file` as f32 values, checked to hold `len`.
pub(crate) fn vector<S: AsRef<[u8]>>(file: &Gguf<S>, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = file.tensor(name)?;
    let v = super::f32_vec(&t)?;
    if v.len() != len {
        return Err(Error::BadTensorShape {
            tensor: name.to_string(),
            expected: vec![len as u64],
            got: t.shape().to_vec(),
        });
    }
    Ok(v)
}

/// One token through a causal convolution of `taps` taps a channel:
/// `out[i]` is the sum over the channel's kept inputs (`past`, a row of
/// all channels an input, oldest first) and `input[i]` of each times its
/// tap (`weights`, `taps` a channel), in ggml's order; then `input`
/// joins `past` and its oldest row goes.
pub(crate) fn causal_conv(
    past: &mut [f32],
    weights: &[f32],
    taps: usize,
    input: &[f32],
    out: &mut [f32],
) {
    let ch = input.len();
    for (i, o) in out.iter_mut().enumerate() {
        let w = &weights[i * taps..(i + 1) * taps];
        let mut acc = 0.0f32;
        for (t, wt) in w[..taps - 1].iter().enumerate() {
            acc += past[t * ch + i] * wt;
        }
        *o = acc + input[i] * w[taps - 1];
    }
    if taps > 1 {
        past.copy_within(ch.., 0);
        past[(taps - 2) * ch..].copy_from_slice(input);
    }
}
