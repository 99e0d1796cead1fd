//! Context shift on the real models: a session that forgot a stretch of
//! tokens and moved the rest down gives bit for bit the logits of a session
//! restored from its saved state shifted by the test's own rotation (f32
//! and f16 caches; on Gemma 3, whose local and global layers rotate with other
//! bases, across its 512-token sliding window), and generation with a shift
//! goes on past a full context, with the text of plain generation until
//! then.

use crate::common;

use realm_compute_cpu::CpuBackend;
use realm_core::backend::{KvDtype, RopeMode};
use realm_core::catalog;
use realm_core::gguf::Gguf;
use realm_core::tokenizer::Tokenizer;
use realm_models::synthetic::SyntheticLayout;
use realm_models::{generate, ContextShift, GenerateParams, Model, SamplingParams, StopReason};

/// A text of about `n` tokens.
fn text(tok: &Tokenizer, n: usize) -> Vec<u32> {
    let para = "The river runs past the old mill, where the miller's daughter counts \
                sacks of flour each morning and sings about the sea she has never seen. ";
    let mut ids = tok.encode(&para.repeat(n / 20 + 1), true, false).unwrap();
    ids.truncate(n);
    ids
}

/// Does what a context shift should, independently: from a saved state
/// (the format `Model::save_state` documents), drops tokens
/// `keep..keep + discard` and turns the keys of the later ones back by
/// `discard` positions, with each layer's RoPE base and pairing, in the CPU
/// backend's arithmetic (angles in f64 rounded once to f32 cosines and
/// sines, the turn in f32), so that the result is exact.
fn shift_state(
    model: &Model<'_, CpuBackend>,
    state: &[u8],
    keep: usize,
    discard: usize,
) -> Vec<u8> {
    let c = model.config();
    let n = u32::from_le_bytes(state[33..37].try_into().unwrap()) as usize;
    let kind = state[32];
    let width = c.n_kv_heads * c.head_dim;
    // A row's bytes: f32s, f16s, or Q8_0 blocks of 32.
    let row = match kind {
        0 => width * 4,
        1 => width * 2,
        _ => width / 32 * 34,
    };
    let kept = n - discard;
    let mut out = state[..33].to_vec();
    out.extend_from_slice(&(kept as u32).to_le_bytes());
    let ids = &state[37..37 + 4 * n];
    out.extend_from_slice(&ids[..4 * keep]);
    out.extend_from_slice(&ids[4 * (keep + discard)..]);
    let mut at = 37 + 4 * n;
    let decode = |r: &[u8]| -> Vec<f32> {
        match kind {
            0 => r
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            1 => r
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32())
                .collect(),
            _ => r
                .chunks_exact(34)
                .flat_map(|b| {
                    let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                    b[2..].iter().map(move |&q| d * f32::from(q as i8))
                })
                .collect(),
        }
    };
    let encode = |out: &mut Vec<u8>, x: &[f32]| match kind {
        0 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        1 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        _ => x.as_chunks::<32>().0.iter().for_each(|c| {
            let q = realm_core::quant::quantize_block_q8_0(c);
            out.extend_from_slice(&q.d.to_le_bytes());
            out.extend(q.qs.iter().map(|&v| v as u8));
        }),
    };
    let half_dims = c.rope_dims / 2;
    // (The layers with caches of their own are the first: Gemma 3n's
    // last ones read theirs.)
    for layer in 0..c.kv_layers() {
        for is_key in [true, false] {
            let rows = &state[at..at + n * row];
            at += n * row;
            for (t, r) in rows.chunks_exact(row).enumerate() {
                if (keep..keep + discard).contains(&t) {
                    continue;
                }
                let mut x = decode(r);
                if is_key && t >= keep + discard {
                    let base = f64::from(c.layer_rope_base(layer));
                    for head in x.chunks_exact_mut(c.head_dim) {
                        for i in 0..half_dims {
                            let theta = -(discard as f64)
                                * f64::from(c.rope_freq_scale)
                                * base.powf(-2.0 * i as f64 / c.rope_dims as f64);
                            let (a, b) = match c.rope_mode {
                                RopeMode::Normal => (2 * i, 2 * i + 1),
                                RopeMode::Neox => (i, i + half_dims),
                            };
                            let (cos, sin) = (theta.cos() as f32, theta.sin() as f32);
                            let (xa, xb) = (head[a], head[b]);
                            head[a] = xa * cos - xb * sin;
                            head[b] = xa * sin + xb * cos;
                        }
                    }
                }
                encode(&mut out, &x);
            }
        }
    }
    out
}

/// A session of `ids[..held]` that forgot `discard` tokens after the
/// first `keep` decodes the rest of `ids` bit for bit as one restored from
/// its state shifted by [`shift_state`], with each cache type.
fn shifts_as_the_tests_own(
    model: &Model<'_, CpuBackend>,
    ids: &[u32],
    (held, keep, discard): (usize, usize, usize),
    name: &str,
) {
    let (prompt, next) = ids.split_at(held);
    for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Q8_0] {
        let mut s = model.session_with_kv(held + 8, 64, dtype).unwrap();
        model.forward(&mut s, prompt).unwrap();
        let mut state = Vec::new();
        model.save_state(&s, prompt, &mut state).unwrap();
        model.shift_context(&mut s, keep, discard).unwrap();
        assert_eq!(s.position(), held - discard);
        let mut r = model.session_with_kv(held + 8, 64, dtype).unwrap();
        let shifted = shift_state(model, &state, keep, discard);
        let kept = model.load_state(&mut r, &mut shifted.as_slice()).unwrap();
        assert_eq!(kept.len(), held - discard);
        for (i, &t) in next.iter().enumerate() {
            let a = model.forward(&mut s, &[t]).unwrap().to_vec();
            let b = model.forward(&mut r, &[t]).unwrap();
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name} {dtype:?} token {i}"
            );
        }
    }
}

/// Gemma 3n's last blocks read earlier blocks' caches: a shift turns each
/// cache once (its keys as the block that stores them), and they read the
/// turned keys.
#[test]
fn gemma3n_shifts_each_cache_once() {
    let bytes = SyntheticLayout::by_name("tiny-gemma3n-shared")
        .unwrap()
        .write(3)
        .unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    let cpu = CpuBackend::new().unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    assert_eq!(model.config().kv_layers(), 20);
    let ids: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 297 + 3).collect();
    shifts_as_the_tests_own(&model, &ids, (36, 4, 20), "tiny-gemma3n-shared");
}

#[test]
fn shifted_sessions_decode_as_the_tests_own_shift() {
    for m in [&catalog::SMOLLM2, &catalog::GEMMA3] {
        let Some(file) = common::open(m) else {
            continue;
        };
        let cpu = CpuBackend::new().unwrap();
        let model = Model::load(&file, &cpu).unwrap();
        let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
        // Gemma 3's local layers see 512 tokens: 700 held, 300 forgotten.
        let (held, keep, discard) = if m.short_name == "gemma3" {
            (700, 5, 300)
        } else {
            (200, 5, 90)
        };
        let ids = text(&tok, held + 4);
        shifts_as_the_tests_own(&model, &ids, (held, keep, discard), m.short_name);
        // Forgetting more than the session holds is refused, and changes
        // nothing.
        let mut s = model.session(64, 16).unwrap();
        model.forward(&mut s, &ids[..20]).unwrap();
        assert!(model.shift_context(&mut s, 10, 11).is_err());
        assert_eq!(s.position(), 20);
    }
}

#[test]
fn generation_shifts_past_a_full_context() {
    let Some(file) = common::open(&catalog::SMOLLM2) else {
        return;
    };
    let cpu = CpuBackend::new().unwrap();
    let model = Model::load(&file, &cpu).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    let prompt = tok
        .encode("Once upon a time, in a village by the sea,", true, false)
        .unwrap();
    let params = GenerateParams {
        max_tokens: 150,
        sampling: SamplingParams {
            seed: 3,
            ..SamplingParams::default()
        },
        ..GenerateParams::default()
    };
    let ctx = 64;
    let mut plain = model.session(ctx, 16).unwrap();
    let ended = generate(&model, &tok, &mut plain, &prompt, &params, |_| true).unwrap();
    assert_eq!(ended.stop_reason, StopReason::ContextFull);
    let keep = prompt.len();
    let shifting = GenerateParams {
        context_shift: Some(ContextShift { keep }),
        ..params
    };
    let mut s = model.session(ctx, 16).unwrap();
    let g = generate(&model, &tok, &mut s, &prompt, &shifting, |_| true).unwrap();
    assert_eq!(g.stop_reason, StopReason::MaxTokens, "{:?}", g.stats);
    assert_eq!(g.tokens[..ended.tokens.len()], ended.tokens[..]);
    // Each shift forgets half of what follows the prompt: count them.
    let (mut held, mut shifts) = (prompt.len(), 0);
    for _ in 0..150 - 1 {
        if held == ctx {
            held -= (held - keep) / 2;
            shifts += 1;
        }
        held += 1;
    }
    assert_eq!(g.stats.context_shifts, shifts);
    assert!(shifts >= 2);
    assert_eq!(s.position(), held);
    // The prompt (kept) still steers: the text is not the one without it.
    let restart = GenerateParams {
        context_shift: Some(ContextShift { keep: 0 }),
        ..shifting
    };
    let mut z = model.session(ctx, 16).unwrap();
    let other = generate(&model, &tok, &mut z, &prompt, &restart, |_| true).unwrap();
    assert_eq!(other.tokens[..ended.tokens.len()], ended.tokens[..]);
    assert_eq!(other.tokens.len(), 150);
}
