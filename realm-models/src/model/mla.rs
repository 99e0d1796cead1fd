//! DeepSeek's multi-head latent attention ([`MlaConfig`]), in the absorbed
//! form llama.cpp runs: a block's attention is over one latent key and
//! value a token, so it runs as the other architectures' attention does
//! (one key/value head `kv_lora + rope` wide, RoPE over each head's first
//! `rope` values) between two steps of its own:
//!
//! - before: each token's queries (`attn_q`, or `attn_q_a`, its norm and
//!   `attn_q_b`), its latent and rotated key values (`attn_kv_a_mqa`, the
//!   latent normed by `attn_kv_a_norm`), each head's unrotated query taken
//!   into the latent space by its slice of `attn_k_b`; queries and keys
//!   laid out rotated part first, values as the latent and zeros;
//! - after: each head's output, the first `kv_lora` values of its
//!   attention, taken out of the latent space by its slice of `attn_v_b`,
//!   then `attn_output`.
//!
//! The per-head products run on the backend, one head's rows at a time,
//! gathered on the host (as a mixture of experts gathers its rows): a
//! model with latent attention runs its steps op by op. LoRA adapters of
//! its attention are not supported.

use realm_core::backend::{Backend, WeightInfo};
use realm_core::gguf::Gguf;

use super::{checked_weight, slices, Scratch};
use crate::config::{MlaConfig, ModelConfig};
use crate::{Error, Result};

/// A block's latent attention weights.
#[derive(Debug)]
pub(crate) struct Mla<'a, B: Backend + 'a> {
    /// The queries, `[heads * (nope + rope), d]` in one product or two.
    q: Query<'a, B>,
    /// `[kv_lora + rope, d]`: a token's latent and its rotated key values.
    kv_a: B::Weight<'a>,
    /// The latent's RMSNorm.
    kv_norm: B::Buffer,
    /// Per head, `[kv_lora, nope]`: its unrotated query into the latent
    /// space.
    k_b: Vec<B::Weight<'a>>,
    /// Per head, `[v_dim, kv_lora]`: its output out of the latent space.
    v_b: Vec<B::Weight<'a>>,
}

/// How the queries are made.
#[derive(Debug)]
enum Query<'a, B: Backend + 'a> {
    /// One product (`attn_q`).
    Direct(B::Weight<'a>),
    /// A low-rank product (`attn_q_a`), its RMSNorm and the queries'
    /// product (`attn_q_b`).
    LowRank {
        a: B::Weight<'a>,
        norm: B::Buffer,
        b: B::Weight<'a>,
    },
}

/// Room for latent attention's steps: device buffers for `rows` rows and
/// the host's copies.
#[derive(Debug)]
pub(crate) struct MlaScratch<B: Backend> {
    qa: B::Buffer,
    q: B::Buffer,
    kv: B::Buffer,
    latent: B::Buffer,
    pe: B::Buffer,
    /// A head's rows, uploaded (or a whole assembled input).
    rows_in: B::Buffer,
    /// A head's product.
    head_out: B::Buffer,
    host: MlaHost,
}

/// For each head (one of `mats`): the values `part` of its piece of each
/// of the `n` rows of `src` (rows of a piece a head, `stride` values
/// each), gathered, times the head's matrix (`out` values a row); `place`
/// gets each row's product with its row and head.
#[allow(clippy::too_many_arguments)]
fn per_head<B: Backend>(
    b: &B,
    ws: &mut B::Workspace,
    mats: &[B::Weight<'_>],
    (src, stride, part): (&[f32], usize, std::ops::Range<usize>),
    n: usize,
    out: usize,
    (rows_in, head_out): (&mut B::Buffer, &mut B::Buffer),
    (gathered, product): (&mut Vec<f32>, &mut Vec<f32>),
    mut place: impl FnMut(usize, usize, &[f32]),
) -> Result<()> {
    let h = mats.len();
    for (head, w) in mats.iter().enumerate() {
        gathered.clear();
        for t in 0..n {
            let at = (t * h + head) * stride;
            gathered.extend_from_slice(&src[at + part.start..at + part.end]);
        }
        b.upload_into(gathered, rows_in)?;
        b.matmul(ws, w, rows_in, n, head_out)?;
        product.resize(n * out, 0.0);
        b.download(head_out, product)?;
        for (t, row) in product.chunks_exact(out).enumerate() {
            place(t, head, row);
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
struct MlaHost {
    q: Vec<f32>,
    latent: Vec<f32>,
    pe: Vec<f32>,
    gathered: Vec<f32>,
    product: Vec<f32>,
    assembled: Vec<f32>,
}

impl<B: Backend> MlaScratch<B> {
    /// Room for `rows` rows of model `c` (whose `mla` is `m`).
    pub(crate) fn new(backend: &B, c: &ModelConfig, m: &MlaConfig, rows: usize) -> Result<Self> {
        let buf = |width: usize| backend.buffer(rows * width.max(1));
        Ok(Self {
            qa: buf(m.q_lora)?,
            q: buf(c.n_heads * (m.nope + m.rope))?,
            kv: buf(m.kv_lora + m.rope)?,
            latent: buf(m.kv_lora)?,
            pe: buf(m.rope)?,
            rows_in: backend.buffer(1)?,
            head_out: buf(m.kv_lora.max(m.v_dim))?,
            host: MlaHost::default(),
        })
    }
}

impl<'a, B: Backend + 'a> Mla<'a, B> {
    /// Layer `layer`'s latent attention from `file`, checked against `c`.
    pub(crate) fn load<S: AsRef<[u8]>>(
        file: &'a Gguf<S>,
        backend: &'a B,
        layer: usize,
        c: &ModelConfig,
        m: &MlaConfig,
    ) -> Result<Self> {
        let name = |s: &str| format!("blk.{layer}.{s}");
        let d = c.d_model;
        let h = c.n_heads;
        let weight =
            |s: &str, rows, cols| checked_weight(backend, &file.tensor(&name(s))?, rows, cols);
        let norm = |s: &str, len: usize| -> Result<B::Buffer> {
            let v = super::f32_vec(&file.tensor(&name(s))?)?;
            if v.len() != len {
                return Err(Error::BadTensorShape {
                    tensor: name(s),
                    expected: vec![len as u64],
                    got: vec![v.len() as u64],
                });
            }
            Ok(backend.upload(&v)?)
        };
        let q_width = h * (m.nope + m.rope);
        let q = match file.tensor(&name("attn_q_a.weight")) {
            Ok(t) => {
                let rank = t.shape().get(1).copied().unwrap_or(0) as usize;
                if m.q_lora != 0 && rank != m.q_lora {
                    return Err(Error::BadConfig(format!(
                        "{}: rank {rank}, not q_lora_rank {}",
                        t.name(),
                        m.q_lora
                    )));
                }
                Query::LowRank {
                    a: checked_weight(backend, &t, rank, d)?,
                    norm: norm("attn_q_a_norm.weight", rank)?,
                    b: weight("attn_q_b.weight", q_width, rank)?,
                }
            }
            Err(realm_core::Error::TensorNotFound(_)) => {
                Query::Direct(weight("attn_q.weight", q_width, d)?)
            }
            Err(e) => return Err(e.into()),
        };
        let heads = |s: &str, rows, cols| slices(backend, &file.tensor(&name(s))?, rows, cols, h);
        Ok(Self {
            q,
            kv_a: weight("attn_kv_a_mqa.weight", m.kv_lora + m.rope, d)?,
            kv_norm: norm("attn_kv_a_norm.weight", m.kv_lora)?,
            k_b: heads("attn_k_b.weight", m.kv_lora, m.nope)?,
            v_b: heads("attn_v_b.weight", m.v_dim, m.kv_lora)?,
        })
    }
}

impl<B: Backend> Mla<'_, B> {
    /// The queries, keys and values of the first `n` rows of `sc.xn` into
    /// `sc.q`, `sc.k` and `sc.v`, laid out for the attention (not yet
    /// rotated); an importance matrix being collected sees the products'
    /// inputs.
    pub(crate) fn qkv(
        &self,
        b: &B,
        sc: &mut Scratch<B>,
        (c, m, layer): (&ModelConfig, &MlaConfig, usize),
        n: usize,
    ) -> Result<()> {
        let (h, eps, d) = (c.n_heads, c.rms_eps, c.d_model);
        let s = sc
            .mla
            .as_mut()
            .ok_or_else(|| Error::BadConfig("latent attention without its scratch".into()))?;
        let name = |t: &str| format!("blk.{layer}.{t}.weight");
        if let Some(seen) = sc.seen.as_deref_mut() {
            let first = match self.q {
                Query::Direct(_) => "attn_q",
                Query::LowRank { .. } => "attn_q_a",
            };
            for t in [first, "attn_kv_a_mqa"] {
                seen.observe_named(b, &mut sc.ws, &name(t), (&sc.xn, n, d))?;
            }
        }
        match &self.q {
            Query::Direct(w) => b.matmul(&mut sc.ws, w, &sc.xn, n, &mut s.q)?,
            Query::LowRank { a, norm, b: wb } => {
                b.matmul(&mut sc.ws, a, &sc.xn, n, &mut s.qa)?;
                b.rms_norm_inplace(&mut s.qa, norm, eps, n)?;
                if let Some(seen) = sc.seen.as_deref_mut() {
                    seen.observe_named(b, &mut sc.ws, &name("attn_q_b"), (&s.qa, n, a.rows()))?;
                }
                b.matmul(&mut sc.ws, wb, &s.qa, n, &mut s.q)?;
            }
        }
        b.matmul(&mut sc.ws, &self.kv_a, &sc.xn, n, &mut s.kv)?;
        let (kvl, rope, nope) = (m.kv_lora, m.rope, m.nope);
        b.split_cols(&s.kv, n, &[kvl, rope], &mut [&mut s.latent, &mut s.pe])?;
        b.rms_norm_inplace(&mut s.latent, &self.kv_norm, eps, n)?;
        let host = &mut s.host;
        let qw = nope + rope;
        host.q.resize(n * h * qw, 0.0);
        b.download(&s.q, &mut host.q)?;
        host.latent.resize(n * kvl, 0.0);
        b.download(&s.latent, &mut host.latent)?;
        host.pe.resize(n * rope, 0.0);
        b.download(&s.pe, &mut host.pe)?;
        // Each head's query: its rotated part, then its unrotated part in
        // the latent space.
        let hd = rope + kvl;
        host.assembled.clear();
        host.assembled.resize(n * h * hd, 0.0);
        let MlaHost {
            q,
            gathered,
            product,
            assembled,
            ..
        } = host;
        let bufs = (&mut s.rows_in, &mut s.head_out);
        per_head(
            b,
            &mut sc.ws,
            &self.k_b,
            (q, qw, 0..nope),
            n,
            kvl,
            bufs,
            (gathered, product),
            |t, head, row| {
                let at = (t * h + head) * qw;
                let dst = &mut assembled[(t * h + head) * hd..][..hd];
                dst[..rope].copy_from_slice(&q[at + nope..at + qw]);
                dst[rope..].copy_from_slice(row);
            },
        )?;
        b.upload_into(&host.assembled, &mut s.rows_in)?;
        b.copy_rows(&s.rows_in, 0..n, h * hd, &mut sc.q)?;
        // The key: the rotated values, then the latent; the value: the
        // latent, then zeros.
        for (out, rotated_first) in [(&mut sc.k, true), (&mut sc.v, false)] {
            host.assembled.clear();
            for t in 0..n {
                let latent = &host.latent[t * kvl..(t + 1) * kvl];
                match rotated_first {
                    true => {
                        host.assembled
                            .extend_from_slice(&host.pe[t * rope..(t + 1) * rope]);
                        host.assembled.extend_from_slice(latent);
                    }
                    false => {
                        host.assembled.extend_from_slice(latent);
                        host.assembled.resize(host.assembled.len() + rope, 0.0);
                    }
                }
            }
            b.upload_into(&host.assembled, &mut s.rows_in)?;
            b.copy_rows(&s.rows_in, 0..n, hd, out)?;
        }
        Ok(())
    }

    /// The attention's output in `sc.att` (each head's attention over the
    /// latents) through each head's `attn_v_b` and `wo`, into `sc.proj`.
    pub(crate) fn output(
        &self,
        b: &B,
        sc: &mut Scratch<B>,
        (c, m, layer): (&ModelConfig, &MlaConfig, usize),
        wo: &B::Weight<'_>,
        n: usize,
    ) -> Result<()> {
        let h = c.n_heads;
        let (kvl, hd, v) = (m.kv_lora, m.kv_lora + m.rope, m.v_dim);
        let s = sc
            .mla
            .as_mut()
            .ok_or_else(|| Error::BadConfig("latent attention without its scratch".into()))?;
        let host = &mut s.host;
        host.q.resize(n * h * hd, 0.0);
        b.download(&sc.att, &mut host.q)?;
        host.assembled.clear();
        host.assembled.resize(n * h * v, 0.0);
        let MlaHost {
            q,
            gathered,
            product,
            assembled,
            ..
        } = host;
        let bufs = (&mut s.rows_in, &mut s.head_out);
        per_head(
            b,
            &mut sc.ws,
            &self.v_b,
            (q, hd, 0..kvl),
            n,
            v,
            bufs,
            (gathered, product),
            |t, head, row| assembled[(t * h + head) * v..][..v].copy_from_slice(row),
        )?;
        b.upload_into(&host.assembled, &mut s.rows_in)?;
        if let Some(seen) = sc.seen.as_deref_mut() {
            let name = format!("blk.{layer}.attn_output.weight");
            seen.observe_named(b, &mut sc.ws, &name, (&s.rows_in, n, h * v))?;
        }
        b.matmul(&mut sc.ws, wo, &s.rows_in, n, &mut sc.proj)?;
        Ok(())
    }
}
