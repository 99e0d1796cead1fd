//! A session's state saved and restored: the tokens it holds and their
//! keys and values, so that a prompt run once need not run again (`realm
//! run --prompt-cache`, as llama.cpp's `--prompt-cache`), and a sequence
//! can be put aside and picked up later, on this backend or another.
//!
//! The format, little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `REALMKV\0` |
//! | 4 | version (1) |
//! | 8 | the model's [`Model::fingerprint`] |
//! | 4, 4, 4 | layers with a KV cache, KV heads, values per head |
//! | 1 | element type: 0 f32, 1 f16, 2 Q8_0 (the cache's) |
//! | 4 | tokens `n` |
//! | 4 `n` | their ids |
//! | per layer | `n` rows of keys, then `n` rows of values (KV heads × values per head each) |
//! | per delta net | its state, f32 (a model with delta nets: Qwen 3.5's) |
//!
//! Keys are stored as the cache holds them, rotated. Restoring writes them
//! back through the backend, bit for bit, so that the session then gives
//! the logits it would have given had it never stopped. A Q8_0 cache's
//! rows are stored as ggml's Q8_0 blocks (each 32 values of a head one f16
//! scale and 32 bytes): quantizing the values the cache gives back makes
//! the blocks it holds again, so its states restore bit for bit too.

use std::io::{Read, Write};

use half::f16;
use realm_core::backend::{Backend, KvDtype, KvSpan};
use realm_core::gguf::Gguf;
use realm_core::quant::blocks::QK;
use realm_core::quant::{dequantize_block_q8_0, quantize_block_q8_0};

use super::{Model, Session};
use crate::{Error, Result};

const MAGIC: &[u8; 8] = b"REALMKV\0";
const VERSION: u32 = 1;
/// Bytes before the token ids.
const HEADER: usize = 8 + 4 + 8 + 12 + 1 + 4;

/// FNV-1a, 64 bits: a fixed, documented hash, so that fingerprints stay
/// the same across builds and platforms.
struct Fnv(u64);

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The fingerprint of a model file: each tensor's name, type, shape, and
/// its first and last 256 bytes of data, hashed. Two files that differ in
/// any of these differ in it; it is not a hash of every weight.
pub(super) fn fingerprint<S: AsRef<[u8]>>(file: &Gguf<S>) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    for t in file.tensors().flatten() {
        h.write(t.name().as_bytes());
        h.write(&(t.dtype() as u32).to_le_bytes());
        for d in t.shape() {
            h.write(&d.to_le_bytes());
        }
        let data = t.data();
        let n = data.len().min(256);
        h.write(&data[..n]);
        h.write(&data[data.len() - n..]);
    }
    h.0
}

fn state_err(what: impl Into<String>) -> Error {
    Error::State(what.into())
}

fn io_err(e: std::io::Error) -> Error {
    state_err(format!("i/o: {e}"))
}

impl<B: Backend> Model<'_, B> {
    /// Identifies the model's file (see the module's notes): a saved state
    /// is restored only into a model with the same fingerprint.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Writes `session`'s state: `tokens` (the ids at its positions, as
    /// many as [`Session::position`]) and their keys and values. The LoRA
    /// adapters that computed them are not part of it: restore a state
    /// into a session that runs with the same ones.
    ///
    /// ```
    /// use realm_models::{synthetic::SyntheticLayout, Model};
    /// let file = realm_core::gguf::Gguf::from_bytes(SyntheticLayout::tiny("llama")?.write(1)?)?;
    /// let backend = realm_compute_cpu::CpuBackend::new().unwrap();
    /// let model = Model::load(&file, &backend)?;
    /// let mut s = model.session(64, 8)?;
    /// model.forward(&mut s, &[1, 2, 3])?;
    /// let mut saved = Vec::new();
    /// model.save_state(&s, &[1, 2, 3], &mut saved)?;
    ///
    /// let mut t = model.session(64, 8)?;
    /// assert_eq!(model.load_state(&mut t, &mut saved.as_slice())?, [1, 2, 3]);
    /// let (a, b) = (model.forward(&mut s, &[4])?.to_vec(), model.forward(&mut t, &[4])?.to_vec());
    /// assert_eq!(a, b);
    /// # Ok::<(), realm_models::Error>(())
    /// ```
    pub fn save_state(
        &self,
        session: &Session<B>,
        tokens: &[u32],
        w: &mut impl Write,
    ) -> Result<()> {
        let n = session.pos;
        if tokens.len() != n {
            return Err(state_err(format!(
                "{} token ids for a session holding {n}",
                tokens.len()
            )));
        }
        let c = &self.config;
        // (Each layer's rows as wide as its heads.)
        let kc = c.kv_cache_config(session.max_seq_len, session.kv_dtype);
        let mut head = Vec::with_capacity(HEADER + 4 * n);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&self.fingerprint.to_le_bytes());
        for d in [c.kv_layers(), c.n_kv_heads, c.head_dim] {
            head.extend_from_slice(&(d as u32).to_le_bytes());
        }
        head.push(match session.kv_dtype {
            KvDtype::F32 => 0,
            KvDtype::F16 => 1,
            KvDtype::Q8_0 => 2,
        });
        head.extend_from_slice(&(n as u32).to_le_bytes());
        tokens
            .iter()
            .for_each(|t| head.extend_from_slice(&t.to_le_bytes()));
        w.write_all(&head).map_err(io_err)?;
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut bytes = Vec::new();
        for layer in 0..c.kv_layers() {
            let width = kc.shape(layer).width();
            k.resize(n * width, 0.0);
            v.resize(n * width, 0.0);
            self.backend
                .kv_read(&session.cache, layer, 0..n, &mut k, &mut v)?;
            for x in [&k, &v] {
                bytes.clear();
                match session.kv_dtype {
                    KvDtype::F32 => x
                        .iter()
                        .for_each(|e| bytes.extend_from_slice(&e.to_le_bytes())),
                    KvDtype::F16 => x
                        .iter()
                        .for_each(|e| bytes.extend_from_slice(&f16::from_f32(*e).to_le_bytes())),
                    // (A Q8_0 cache's heads are whole blocks.)
                    KvDtype::Q8_0 => x.as_chunks::<QK>().0.iter().for_each(|b| {
                        let q = quantize_block_q8_0(b);
                        bytes.extend_from_slice(&q.d.to_le_bytes());
                        bytes.extend(q.qs.iter().map(|&v| v as u8));
                    }),
                }
                w.write_all(&bytes).map_err(io_err)?;
            }
        }
        for state in &session.recurrent.layers {
            bytes.clear();
            state
                .iter()
                .for_each(|e| bytes.extend_from_slice(&e.to_le_bytes()));
            w.write_all(&bytes).map_err(io_err)?;
        }
        Ok(())
    }

    /// Restores a state written by [`Model::save_state`] into `session`,
    /// which then holds its tokens (whatever it held before is forgotten);
    /// returns their ids. The state must come from this model (its
    /// fingerprint) and the session's KV cache must have the state's
    /// element type and room for its tokens. Run at least one token
    /// before reading logits: the state holds keys and values, not the
    /// last logits. With LongRoPE, restore into a session on the same side
    /// of the original context as the one saved
    /// ([`ModelConfig::rope_original_context`]): the keys were turned with
    /// its factors.
    ///
    /// [`ModelConfig::rope_original_context`]: crate::ModelConfig::rope_original_context
    ///
    /// Errors (a truncated, foreign or malformed state) leave the session
    /// empty, never half restored.
    pub fn load_state(&self, session: &mut Session<B>, r: &mut impl Read) -> Result<Vec<u32>> {
        session.truncate(0);
        let mut head = [0u8; HEADER];
        r.read_exact(&mut head).map_err(io_err)?;
        let u32_at =
            |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        if &head[..8] != MAGIC {
            return Err(state_err("not a Realm session state (bad magic)"));
        }
        if u32_at(8) != VERSION {
            return Err(state_err(format!(
                "state version {} (this build reads {VERSION})",
                u32_at(8)
            )));
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&head[12..20]);
        if u64::from_le_bytes(fp) != self.fingerprint {
            return Err(state_err("the state was saved from another model"));
        }
        let c = &self.config;
        let dims = [u32_at(20), u32_at(24), u32_at(28)];
        if dims.map(|d| d as usize) != [c.kv_layers(), c.n_kv_heads, c.head_dim] {
            return Err(state_err(format!(
                "the state's cache is {dims:?} (layers, KV heads, values per head), the model's \
                 {:?}",
                [c.kv_layers(), c.n_kv_heads, c.head_dim]
            )));
        }
        let dtype = match head[32] {
            0 => KvDtype::F32,
            1 => KvDtype::F16,
            2 => KvDtype::Q8_0,
            t => return Err(state_err(format!("unknown element type {t}"))),
        };
        if dtype != session.kv_dtype {
            return Err(state_err(format!(
                "the state's KV cache is {dtype:?}, the session's {:?}",
                session.kv_dtype
            )));
        }
        let n = u32_at(33) as usize;
        if n > session.max_seq_len {
            return Err(state_err(format!(
                "the state holds {n} tokens; the session has room for {}",
                session.max_seq_len
            )));
        }
        let mut ids = vec![0u8; 4 * n];
        r.read_exact(&mut ids).map_err(io_err)?;
        let tokens: Vec<u32> = ids
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::BadToken {
                token: t,
                vocab_size: c.vocab_size,
            });
        }
        let kc = c.kv_cache_config(session.max_seq_len, dtype);
        // Bytes per 32 values.
        let size = match dtype {
            KvDtype::F32 => 4 * QK,
            KvDtype::F16 => 2 * QK,
            KvDtype::Q8_0 => 2 + QK,
        };
        let mut bytes = Vec::new();
        let mut rows = [Vec::new(), Vec::new()];
        for layer in 0..c.kv_layers() {
            let width = kc.shape(layer).width();
            if !width.is_multiple_of(QK) {
                return Err(state_err(format!(
                    "{width} values per row are not whole blocks"
                )));
            }
            bytes.resize(n * width / QK * size, 0);
            for x in rows.iter_mut() {
                x.resize(n * width, 0.0);
                r.read_exact(&mut bytes).map_err(io_err)?;
                match dtype {
                    KvDtype::F32 => x.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(x, b)| {
                        *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    }),
                    KvDtype::F16 => x.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(x, b)| {
                        *x = f16::from_le_bytes([b[0], b[1]]).to_f32();
                    }),
                    KvDtype::Q8_0 => {
                        let rows = x.as_chunks_mut::<QK>().0.iter_mut();
                        for (x, b) in rows.zip(bytes.chunks_exact(2 + QK)) {
                            let block = realm_core::quant::blocks::BlockQ8_0 {
                                d: f16::from_le_bytes([b[0], b[1]]),
                                qs: std::array::from_fn(|i| b[2 + i] as i8),
                            };
                            dequantize_block_q8_0(&block, x);
                        }
                    }
                }
            }
            if n == 0 {
                continue;
            }
            let k = self.backend.upload(&rows[0])?;
            let v = self.backend.upload(&rows[1])?;
            let at = KvSpan {
                layer,
                start_pos: 0,
            };
            self.backend.kv_write(
                &mut session.scratch.ws,
                &mut session.cache,
                at,
                &k,
                &v,
                0..n,
            )?;
        }
        // The delta nets' states, whole before any is set.
        let mut states = session.recurrent.clone();
        for state in states.layers.iter_mut() {
            let mut raw = vec![0u8; 4 * state.len()];
            r.read_exact(&mut raw).map_err(io_err)?;
            for (x, b) in state.iter_mut().zip(raw.chunks_exact(4)) {
                *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        session.recurrent = states;
        session.checkpoints.clear();
        session.pos = n;
        Ok(tokens)
    }
}
