//! The transformer: weights borrowed from a GGUF file, a forward pass
//! generic over the backend, and a per-sequence [`Session`] (KV cache and
//! scratch) so that a decode step allocates nothing.

use realm_core::backend::{
    AttentionParams, Backend, KvCacheConfig, KvDtype, KvSpan, RopeParams, WeightInfo,
};
use realm_core::gguf::Gguf;
use realm_core::{quant, TensorView};

use crate::config::{Architecture, ModelConfig};
use crate::{Error, Result};

/// One transformer block's weights.
#[derive(Debug)]
struct Layer<'a, B: Backend + 'a> {
    attn_norm: Vec<f32>,
    wq: B::Weight<'a>,
    wk: B::Weight<'a>,
    wv: B::Weight<'a>,
    wo: B::Weight<'a>,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    w_gate: B::Weight<'a>,
    w_up: B::Weight<'a>,
    w_down: B::Weight<'a>,
    post_ffn_norm: Option<Vec<f32>>,
}

/// A transformer whose weights stay in the GGUF file (borrowed, still
/// quantized) and whose math runs on backend `B`.
///
/// Many [`Session`]s can run on one `Model` at once: the model is read-only.
#[derive(Debug)]
pub struct Model<'a, B: Backend> {
    backend: &'a B,
    config: ModelConfig,
    embed: B::Weight<'a>,
    layers: Vec<Layer<'a, B>>,
    output_norm: Vec<f32>,
    output: B::Weight<'a>,
}

fn f32_vec(t: &TensorView<'_>) -> Result<Vec<f32>> {
    let mut v = vec![0f32; t.n_elements() as usize];
    quant::dequantize(t.dtype(), t.data(), &mut v)?;
    Ok(v)
}

impl<'a, B: Backend> Model<'a, B> {
    /// Loads the model in `file` for `backend`. Fails, naming it, on an
    /// architecture, tensor or tensor type the code does not know.
    pub fn load<S: AsRef<[u8]>>(file: &'a Gguf<S>, backend: &'a B) -> Result<Self> {
        let config = ModelConfig::from_metadata(file.metadata())?;
        let tensor = |name: &str| file.tensor(name).map_err(Error::from);
        let weight = |name: &str, rows: usize, cols: usize| -> Result<B::Weight<'a>> {
            let t = file.tensor(name)?;
            if !backend.supports_matmul(t.dtype()) {
                return Err(Error::UnsupportedWeight {
                    tensor: name.to_string(),
                    dtype: t.dtype(),
                    backend: backend.name().to_string(),
                });
            }
            let w = backend.weight(&t)?;
            if (w.rows(), w.cols()) != (rows, cols) {
                return Err(Error::BadTensorShape {
                    tensor: name.to_string(),
                    expected: vec![cols as u64, rows as u64],
                    got: t.shape().to_vec(),
                });
            }
            Ok(w)
        };
        let norm = |name: &str, len: usize| -> Result<Vec<f32>> {
            let v = f32_vec(&tensor(name)?)?;
            if v.len() != len {
                return Err(Error::BadTensorShape {
                    tensor: name.to_string(),
                    expected: vec![len as u64],
                    got: vec![v.len() as u64],
                });
            }
            Ok(v)
        };
        let optional_norm = |name: &str, len: usize| -> Result<Option<Vec<f32>>> {
            match file.tensor(name) {
                Ok(_) => norm(name, len).map(Some),
                Err(realm_core::Error::TensorNotFound(_)) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        let c = &config;
        let gemma = c.arch == Architecture::Gemma3;
        let qwen = c.arch == Architecture::Qwen2;
        let (d, q, kv, ff) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let bias = |s: &str, len| {
                if qwen {
                    norm(&n(s), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            let must = |s: &str, len| {
                if gemma {
                    norm(&n(s), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: norm(&n("attn_norm.weight"), d)?,
                wq: weight(&n("attn_q.weight"), q, d)?,
                wk: weight(&n("attn_k.weight"), kv, d)?,
                wv: weight(&n("attn_v.weight"), kv, d)?,
                wo: weight(&n("attn_output.weight"), d, q)?,
                bq: bias("attn_q.bias", q)?,
                bk: bias("attn_k.bias", kv)?,
                bv: bias("attn_v.bias", kv)?,
                q_norm: must("attn_q_norm.weight", c.head_dim)?,
                k_norm: must("attn_k_norm.weight", c.head_dim)?,
                post_attn_norm: must("post_attention_norm.weight", d)?,
                ffn_norm: norm(&n("ffn_norm.weight"), d)?,
                w_gate: weight(&n("ffn_gate.weight"), ff, d)?,
                w_up: weight(&n("ffn_up.weight"), ff, d)?,
                w_down: weight(&n("ffn_down.weight"), d, ff)?,
                post_ffn_norm: must("post_ffw_norm.weight", d)?,
            });
        }
        let embed = weight("token_embd.weight", c.vocab_size, d)?;
        let output = match file.tensor("output.weight") {
            Ok(_) => weight("output.weight", c.vocab_size, d)?,
            // Tied embeddings: the output projection is the embedding table.
            Err(realm_core::Error::TensorNotFound(_)) => {
                weight("token_embd.weight", c.vocab_size, d)?
            }
            Err(e) => return Err(e.into()),
        };
        let output_norm = optional_norm("output_norm.weight", d)?
            .ok_or_else(|| realm_core::Error::TensorNotFound("output_norm.weight".into()))?;
        Ok(Self {
            backend,
            config,
            embed,
            layers,
            output_norm,
            output,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &'a B {
        self.backend
    }

    /// A new sequence with room for `max_seq_len` tokens (at most the model's
    /// context length is sensible, but longer is allowed) and prefill chunks
    /// of up to `batch` tokens.
    pub fn session(&self, max_seq_len: usize, batch: usize) -> Result<Session<B>> {
        self.session_with_kv(max_seq_len, batch, KvDtype::F32)
    }

    /// [`Model::session`] with the KV cache stored as `kv_dtype` (f16 halves
    /// its memory; llama.cpp's default).
    pub fn session_with_kv(
        &self,
        max_seq_len: usize,
        batch: usize,
        kv_dtype: KvDtype,
    ) -> Result<Session<B>> {
        if max_seq_len == 0 || batch == 0 {
            return Err(Error::BadConfig(
                "max_seq_len and batch must be positive".into(),
            ));
        }
        let c = &self.config;
        let cache = self.backend.kv_cache(&KvCacheConfig {
            n_layers: c.n_layers,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            max_seq_len,
            dtype: kv_dtype,
        })?;
        let n = batch;
        Ok(Session {
            cache,
            ws: self.backend.workspace(),
            pos: 0,
            max_seq_len,
            batch,
            x: vec![0.0; n * c.d_model],
            xn: vec![0.0; n * c.d_model],
            q: vec![0.0; n * c.q_dim()],
            k: vec![0.0; n * c.kv_dim()],
            v: vec![0.0; n * c.kv_dim()],
            att: vec![0.0; n * c.q_dim()],
            proj: vec![0.0; n * c.d_model],
            gate: vec![0.0; n * c.ffn_dim],
            up: vec![0.0; n * c.ffn_dim],
            positions: Vec::with_capacity(n),
            logits: vec![0.0; c.vocab_size],
        })
    }

    /// Runs `tokens` through the model at the session's current position,
    /// in chunks of the session's batch size, appending them to its KV
    /// cache; returns the logits of the last token.
    ///
    /// A sequence that would pass the session's capacity is an error
    /// ([`Error::ContextFull`]) and leaves the session unchanged.
    pub fn forward<'s>(&self, s: &'s mut Session<B>, tokens: &[u32]) -> Result<&'s [f32]> {
        if tokens.is_empty() {
            return Err(Error::BadConfig("forward needs at least one token".into()));
        }
        if s.pos + tokens.len() > s.max_seq_len {
            return Err(Error::ContextFull {
                capacity: s.max_seq_len,
                needed: s.pos + tokens.len(),
            });
        }
        if let Some(&bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(Error::BadToken {
                token: bad,
                vocab_size: self.config.vocab_size,
            });
        }
        let chunks = tokens.chunks(s.batch);
        let last = chunks.len() - 1;
        for (i, chunk) in tokens.chunks(s.batch).enumerate() {
            self.forward_chunk(s, chunk, i == last)?;
        }
        Ok(&s.logits)
    }

    /// Hot path: one chunk of at most `batch` tokens. Allocates nothing.
    fn forward_chunk(&self, s: &mut Session<B>, tokens: &[u32], want_logits: bool) -> Result<()> {
        let b = self.backend;
        let c = &self.config;
        let n = tokens.len();
        let (d, qd, kvd, ff) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let start = s.pos;
        s.positions.clear();
        s.positions.extend((start..start + n).map(|p| p as u32));

        let x = &mut s.x[..n * d];
        b.embed(&self.embed, tokens, x)?;
        if c.scale_embeddings {
            b.scale_inplace(x, (d as f32).sqrt());
        }
        for (li, layer) in self.layers.iter().enumerate() {
            let xn = &mut s.xn[..n * d];
            b.rms_norm(x, &layer.attn_norm, c.rms_eps, xn)?;
            let (q, k, v) = (&mut s.q[..n * qd], &mut s.k[..n * kvd], &mut s.v[..n * kvd]);
            b.matmul(&mut s.ws, &layer.wq, xn, n, q)?;
            b.matmul(&mut s.ws, &layer.wk, xn, n, k)?;
            b.matmul(&mut s.ws, &layer.wv, xn, n, v)?;
            for (out, bias) in [
                (&mut *q, &layer.bq),
                (&mut *k, &layer.bk),
                (&mut *v, &layer.bv),
            ] {
                if let Some(bias) = bias {
                    for row in out.chunks_exact_mut(bias.len()) {
                        b.add_inplace(row, bias)?;
                    }
                }
            }
            if let Some(w) = &layer.q_norm {
                b.rms_norm_inplace(q, w, c.rms_eps)?;
            }
            if let Some(w) = &layer.k_norm {
                b.rms_norm_inplace(k, w, c.rms_eps)?;
            }
            let rope = RopeParams {
                n_dims: c.rope_dims,
                base: c.layer_rope_base(li),
                freq_scale: c.rope_freq_scale,
                mode: c.rope_mode,
            };
            b.rope(q, c.head_dim, &s.positions, &rope)?;
            b.rope(k, c.head_dim, &s.positions, &rope)?;
            let at = KvSpan {
                layer: li,
                start_pos: start,
            };
            b.kv_write(&mut s.cache, at, k, v)?;
            let att = &mut s.att[..n * qd];
            let params = AttentionParams {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: c.head_dim,
                scale: c.attn_scale,
                sliding_window: c.layer_window(li),
                softcap: None,
            };
            b.attention(&mut s.ws, &s.cache, at, q, &params, att)?;
            let proj = &mut s.proj[..n * d];
            b.matmul(&mut s.ws, &layer.wo, att, n, proj)?;
            if let Some(w) = &layer.post_attn_norm {
                b.rms_norm_inplace(proj, w, c.rms_eps)?;
            }
            b.add_inplace(x, proj)?;

            b.rms_norm(x, &layer.ffn_norm, c.rms_eps, xn)?;
            let (gate, up) = (&mut s.gate[..n * ff], &mut s.up[..n * ff]);
            b.matmul(&mut s.ws, &layer.w_gate, xn, n, gate)?;
            b.matmul(&mut s.ws, &layer.w_up, xn, n, up)?;
            match c.arch {
                Architecture::Gemma3 => b.geglu_inplace(gate, up)?,
                _ => b.swiglu_inplace(gate, up)?,
            }
            b.matmul(&mut s.ws, &layer.w_down, gate, n, proj)?;
            if let Some(w) = &layer.post_ffn_norm {
                b.rms_norm_inplace(proj, w, c.rms_eps)?;
            }
            b.add_inplace(x, proj)?;
        }
        s.pos += n;
        if want_logits {
            let last = &x[(n - 1) * d..n * d];
            let xn = &mut s.xn[..d];
            b.rms_norm(last, &self.output_norm, c.rms_eps, xn)?;
            b.matmul(&mut s.ws, &self.output, xn, 1, &mut s.logits)?;
        }
        Ok(())
    }
}

/// One sequence's state: its KV cache, its position, and scratch buffers
/// sized once so that decoding allocates nothing.
#[derive(Debug)]
pub struct Session<B: Backend> {
    cache: B::KvCache,
    ws: B::Workspace,
    pos: usize,
    max_seq_len: usize,
    batch: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    positions: Vec<u32>,
    logits: Vec<f32>,
}

impl<B: Backend> Session<B> {
    /// Tokens in the KV cache so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Most tokens the session can hold.
    pub fn capacity(&self) -> usize {
        self.max_seq_len
    }

    /// Forgets every token after the first `pos` (the cache keeps the rest).
    pub fn truncate(&mut self, pos: usize) {
        self.pos = self.pos.min(pos);
    }

    /// The logits of the last token run.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
}
