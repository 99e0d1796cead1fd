//! Norm, RoPE, activations and attention against f64 reference math, and
//! batch invariance of attention. Case counts follow `PROPTEST_CASES`.

// Reference math indexes several arrays by the same position; plain index
// loops read closest to the formulas.
#![allow(clippy::needless_range_loop)]

mod common;

use common::{backend, Rng};
use proptest::prelude::*;
use realm_compute_cpu::{CpuBackend, CpuKvCache, Isa};
use realm_core::backend::{
    ActivationOps, AttentionOps, AttentionParams, BackendCore, KvCacheConfig, KvDtype, KvShape,
    KvSpan, NormOps, RopeMode, RopeOps, RopeParams,
};

fn be(threads: usize) -> CpuBackend {
    backend(Isa::detect(), threads).unwrap()
}

fn close(got: f32, want: f64, rel: f64, abs: f64) -> bool {
    (f64::from(got) - want).abs() <= rel * want.abs() + abs
}

proptest! {
    #[test]
    fn rms_norm_matches_f64(rows in 1usize..5, dim in 1usize..200, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = rng.f32s(rows * dim, -4.0, 4.0);
        let w = rng.f32s(dim, -2.0, 2.0);
        let eps = 1e-6;
        let mut out = vec![0.0; x.len()];
        be(1).rms_norm(&x, &w, eps, rows, &mut out).unwrap();
        let mut inplace = x.clone();
        be(1).rms_norm_inplace(&mut inplace, &w, eps, rows).unwrap();
        prop_assert_eq!(&out, &inplace);
        for r in 0..rows {
            let xr = &x[r * dim..(r + 1) * dim];
            let ms: f64 = xr.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / dim as f64;
            let s = 1.0 / (ms + f64::from(eps)).sqrt();
            for j in 0..dim {
                let want = f64::from(xr[j]) * s * f64::from(w[j]);
                prop_assert!(close(out[r * dim + j], want, 1e-5, 1e-6));
            }
        }
    }

    #[test]
    fn rope_matches_f64(n_tok in 1usize..4, n_heads in 1usize..4, half_dims in 1usize..33, extra in 0usize..3, neox in any::<bool>(), base in 100f32..1e6, fs in 0.1f32..1.0, mag in 0.5f32..2.0, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let n_dims = 2 * half_dims;
        let head_dim = n_dims + 2 * extra;
        let positions: Vec<u32> = (0..n_tok).map(|_| (rng.next_u64() % 5000) as u32).collect();
        let x = rng.f32s(n_tok * n_heads * head_dim, -2.0, 2.0);
        let p = RopeParams { n_dims, base, freq_scale: fs, mode: if neox { RopeMode::Neox } else { RopeMode::Normal }, factors: None, magnitude: mag };
        let mut y = x.clone();
        let b = be(1);
        b.rope(&mut b.workspace(), &mut y, n_heads, head_dim, &positions, &p).unwrap();
        for t in 0..n_tok {
            for h in 0..n_heads {
                let o = (t * n_heads + h) * head_dim;
                for i in 0..half_dims {
                    let theta = f64::from(positions[t]) * f64::from(fs) * f64::from(base).powf(-2.0 * i as f64 / n_dims as f64);
                    let (a, b) = if neox { (o + i, o + i + half_dims) } else { (o + 2 * i, o + 2 * i + 1) };
                    let (xa, xb) = (f64::from(x[a]), f64::from(x[b]));
                    let (c, s) = (theta.cos() * f64::from(mag), theta.sin() * f64::from(mag));
                    prop_assert!(close(y[a], xa * c - xb * s, 1e-5, 1e-5));
                    prop_assert!(close(y[b], xa * s + xb * c, 1e-5, 1e-5));
                }
                prop_assert_eq!(&y[o + n_dims..o + head_dim], &x[o + n_dims..o + head_dim]);
            }
        }
    }

    #[test]
    fn activations_match_f64(n in 1usize..300, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let x = rng.f32s(n, -8.0, 8.0);
        let up = rng.f32s(n, -2.0, 2.0);
        let b = be(1);
        let silu = |v: f64| v / (1.0 + (-v).exp());
        let gelu = |v: f64| 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * v * (1.0 + 0.044715 * v * v)).tanh());
        let (mut s, mut g, mut sg, mut gg) = (x.clone(), x.clone(), x.clone(), x.clone());
        b.silu_inplace(&mut s, n).unwrap();
        b.gelu_inplace(&mut g, n).unwrap();
        b.swiglu_inplace(&mut sg, &up, n).unwrap();
        b.geglu_inplace(&mut gg, &up, n).unwrap();
        // gpt-oss's: gate capped at 7, up clamped to +-7 (the ranges above
        // reach both), sigmoid with alpha 1.702.
        let mut oai = x.clone();
        let up7: Vec<f32> = up.iter().map(|u| u * 5.0).collect();
        b.swiglu_oai_inplace(&mut oai, &up7, (1.702, 7.0), n).unwrap();
        for i in 0..n {
            let g = f64::from(x[i]).min(7.0);
            let u = f64::from(up7[i]).clamp(-7.0, 7.0);
            prop_assert!(close(oai[i], g / (1.0 + (-1.702 * g).exp()) * (u + 1.0), 1e-5, 1e-6));
        }
        for i in 0..n {
            let v = f64::from(x[i]);
            prop_assert!(close(s[i], silu(v), 1e-5, 1e-6));
            prop_assert!(close(g[i], gelu(v), 1e-5, 1e-6));
            prop_assert!(close(sg[i], silu(v) * f64::from(up[i]), 1e-5, 1e-6));
            prop_assert!(close(gg[i], gelu(v) * f64::from(up[i]), 1e-5, 1e-6));
        }
        let mut sm = x.clone();
        b.softmax_inplace(&mut sm, n, 1).unwrap();
        let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let z: f64 = x.iter().map(|&v| (f64::from(v) - max).exp()).sum();
        for i in 0..n {
            prop_assert!(close(sm[i], (f64::from(x[i]) - max).exp() / z, 1e-5, 1e-7));
        }
        let (mut a, mut m) = (x.clone(), x.clone());
        let (mut sc, mut ar) = (x.clone(), x.clone());
        b.add_inplace(&mut a, &up, n).unwrap();
        b.mul_inplace(&mut m, &up, n).unwrap();
        b.scale_inplace(&mut sc, 0.5, n).unwrap();
        b.add_row_inplace(&mut ar, &up[..1].to_vec(), n).unwrap();
        for i in 0..n {
            prop_assert_eq!(a[i], x[i] + up[i]);
            prop_assert_eq!(m[i], x[i] * up[i]);
            prop_assert_eq!(sc[i], x[i] * 0.5);
            prop_assert_eq!(ar[i], x[i] + up[0]);
        }
        prop_assert!(b.add_inplace(&mut a, &up[1..].to_vec(), n).is_err());
        prop_assert!(b.scale_inplace(&mut sc, 0.5, n + 1).is_err());
    }

    #[test]
    fn attention_matches_f64(n_kv in 1usize..3, group in 1usize..6, hd in 1usize..20, past in 0usize..20, n in 1usize..6, window in proptest::option::of(1usize..12), chunk in proptest::option::of(1usize..10), softcap in proptest::option::of(1f32..50.0), sinks in any::<bool>(), alibi in proptest::option::of(0.5f32..16.0), threads in 1usize..3, scalar in any::<bool>(), f16_cache in any::<bool>(), bidirectional in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        // (An encoder's attention has neither chunks nor ALiBi.)
        let chunk = if bidirectional { None } else { chunk };
        let n_heads = n_kv * group;
        let total = past + n;
        let dtype = if f16_cache { KvDtype::F16 } else { KvDtype::F32 };
        let cfg = KvCacheConfig { n_layers: 2, n_kv_heads: n_kv, head_dim: hd, max_seq_len: total + 3, dtype, layer_shapes: None, };
        let b = if scalar { backend(Isa::Scalar, threads).unwrap() } else { be(threads) };
        let mut cache = b.kv_cache(&cfg).unwrap();
        let k = rng.f32s(total * n_kv * hd, -1.0, 1.0);
        let v = rng.f32s(total * n_kv * hd, -1.0, 1.0);
        b.kv_write(&mut b.workspace(), &mut cache, KvSpan { layer: 1, start_pos: 0 }, &k, &v, 0..total).unwrap();
        // What an f16 cache holds.
        let stored = |x: Vec<f32>| if f16_cache { x.iter().map(|&a| half::f16::from_f32(a).to_f32()).collect() } else { x };
        let (k, v) = (stored(k), stored(v));
        let q = rng.f32s(n * n_heads * hd, -1.0, 1.0);
        // Sinks from well below the scores to well above them.
        let sink = rng.f32s(n_heads, -4.0, 4.0);
        let slopes: Vec<f32> = (0..n_heads).map(|h| AttentionParams::alibi_slope(alibi.unwrap_or(0.0), n_heads, h)).collect();
        let p = AttentionParams { n_heads, n_kv_heads: n_kv, head_dim: hd, scale: 1.0 / (hd as f32).sqrt(), sliding_window: window, chunk, softcap, sinks: sinks.then_some(&sink[..]), alibi: alibi.map(|_| &slopes[..]), bidirectional };
        // ALiBi's slopes, from their definition: 2^(-8/n) to the powers
        // 1, 2, ... for a power of two of heads, the others interleaved.
        let slope = |h: usize| -> f64 {
            let n2 = 1usize << n_heads.ilog2();
            let b = f64::from(alibi.unwrap_or(0.0));
            match h < n2 {
                true => 2f64.powf(-b / n2 as f64 * (h + 1) as f64),
                false => 2f64.powf(-b / 2.0 / n2 as f64 * (2 * (h - n2) + 1) as f64),
            }
        };
        let mut out = vec![0.0; q.len()];
        let mut ws = b.workspace();
        b.attention(&mut ws, &cache, KvSpan { layer: 1, start_pos: past }, &q, 0..n, &p, &mut out).unwrap();
        for t in 0..n {
            let pos = past + t;
            // The window's start, or the chunk's where later, to the
            // query; bidirectional, the whole call or both sides of the
            // query by half a window.
            let (lo, hi) = match bidirectional {
                false => (window.map_or(0, |w| (pos + 1).saturating_sub(w)).max(chunk.map_or(0, |c| pos / c * c)), pos),
                true => window.map_or((0, total - 1), |w| (pos.saturating_sub(w / 2), (pos + w / 2).min(total - 1))),
            };
            for h in 0..n_heads {
                let g = h / group;
                let qh = &q[(t * n_heads + h) * hd..][..hd];
                let scores: Vec<f64> = (lo..=hi).map(|j| {
                    let kj = &k[(j * n_kv + g) * hd..][..hd];
                    let s = qh.iter().zip(kj).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>() * f64::from(p.scale);
                    let s = softcap.map_or(s, |c| f64::from(c) * (s / f64::from(c)).tanh());
                    // The query's distance from the key (either side), times the slope.
                    s - alibi.map_or(0.0, |_| slope(h) * pos.abs_diff(j) as f64)
                }).collect();
                let max = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
                let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                // A sink adds to the denominator only.
                let z = z + p.sinks.map_or(0.0, |k| (f64::from(k[h]) - max).exp());
                for d in 0..hd {
                    let want: f64 = (lo..=hi).zip(&scores).map(|(j, s)| (s - max).exp() / z * f64::from(v[(j * n_kv + g) * hd + d])).sum();
                    prop_assert!(close(out[(t * n_heads + h) * hd + d], want, 1e-4, 1e-5));
                }
            }
        }
    }
}

proptest! {
    /// A Q8_0 cache holds ggml's Q8_0 blocks of what was written (what it
    /// reads back is their dequantized values, and writing those again
    /// changes nothing), and attends bit for bit as an f32 cache holding
    /// those values does: scalar and AVX2, one thread or two, grouped
    /// heads, windows, soft-caps, sinks.
    #[test]
    fn q8_0_cache_attends_as_f32_over_its_values(n_kv in 1usize..3, group in 1usize..5, blocks in 1usize..4, past in 0usize..40, n in 1usize..20, window in proptest::option::of(1usize..30), softcap in proptest::option::of(1f32..50.0), sinks in any::<bool>(), threads in 1usize..3, scalar in any::<bool>(), bidirectional in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let hd = 32 * blocks;
        let n_heads = n_kv * group;
        let total = past + n;
        let width = n_kv * hd;
        let cfg = |dtype| KvCacheConfig { n_layers: 2, n_kv_heads: n_kv, head_dim: hd, max_seq_len: total + 3, dtype, layer_shapes: None, };
        let b = if scalar { backend(Isa::Scalar, threads).unwrap() } else { be(threads) };
        let at = KvSpan { layer: 1, start_pos: 0 };
        let mut q8 = b.kv_cache(&cfg(KvDtype::Q8_0)).unwrap();
        let k = rng.f32s(total * width, -1.0, 1.0);
        let v = rng.f32s(total * width, -1.0, 1.0);
        b.kv_write(&mut b.workspace(), &mut q8, at, &k, &v, 0..total).unwrap();
        let round = |x: &[f32]| -> Vec<f32> {
            x.as_chunks::<32>().0.iter().flat_map(|c| {
                let mut out = [0f32; 32];
                realm_core::quant::dequantize_block_q8_0(&realm_core::quant::quantize_block_q8_0(c), &mut out);
                out
            }).collect()
        };
        let (mut kr, mut vr) = (vec![0.0; k.len()], vec![0.0; v.len()]);
        b.kv_read(&q8, 1, 0..total, &mut kr, &mut vr).unwrap();
        prop_assert_eq!(&kr, &round(&k));
        prop_assert_eq!(&vr, &round(&v));
        let mut again = b.kv_cache(&cfg(KvDtype::Q8_0)).unwrap();
        b.kv_write(&mut b.workspace(), &mut again, at, &kr, &vr, 0..total).unwrap();
        let (mut k2, mut v2) = (vec![0.0; k.len()], vec![0.0; v.len()]);
        b.kv_read(&again, 1, 0..total, &mut k2, &mut v2).unwrap();
        prop_assert!(k2 == kr && v2 == vr);
        let mut f32s = b.kv_cache(&cfg(KvDtype::F32)).unwrap();
        b.kv_write(&mut b.workspace(), &mut f32s, at, &kr, &vr, 0..total).unwrap();
        let q = rng.f32s(n * n_heads * hd, -1.0, 1.0);
        let sink = rng.f32s(n_heads, -4.0, 4.0);
        let p = AttentionParams { n_heads, n_kv_heads: n_kv, head_dim: hd, scale: 1.0 / (hd as f32).sqrt(), sliding_window: window, chunk: None, softcap, sinks: sinks.then_some(&sink[..]), alibi: None, bidirectional };
        let attend = |cache| {
            let mut out = vec![0.0; q.len()];
            b.attention(&mut b.workspace(), cache, KvSpan { layer: 1, start_pos: past }, &q, 0..n, &p, &mut out).unwrap();
            out
        };
        let (got, want) = (attend(&q8), attend(&f32s));
        prop_assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

proptest! {
    /// A cache whose layers have heads of their own (Gemma 4's) keeps each
    /// layer as a cache of that layer's heads alone would: what each
    /// layer reads back and attends is bit for bit the uniform cache's,
    /// whatever the other layers hold; calls with another layer's heads
    /// are errors.
    #[test]
    fn layers_of_their_own_heads_attend_as_uniform_caches(shapes in proptest::collection::vec((1usize..3, 1usize..3), 1..4), group in 1usize..3, past in 0usize..12, n in 1usize..5, q8 in any::<bool>(), f16_cache in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let total = past + n;
        let dtype = match (q8, f16_cache) {
            (true, _) => KvDtype::Q8_0,
            (_, true) => KvDtype::F16,
            _ => KvDtype::F32,
        };
        // Heads of 32 or 64 values, as Q8_0 needs.
        let shapes: Vec<KvShape> = shapes.iter().map(|&(h, b)| KvShape { n_kv_heads: h, head_dim: 32 * b }).collect();
        let cfg = KvCacheConfig { n_layers: shapes.len(), n_kv_heads: 1, head_dim: 32, max_seq_len: total + 3, dtype, layer_shapes: Some(shapes.clone().into()) };
        let b = be(2);
        let mut cache = b.kv_cache(&cfg).unwrap();
        let mut ws = b.workspace();
        let kvs: Vec<(Vec<f32>, Vec<f32>)> = shapes.iter().map(|s| (rng.f32s(total * s.width(), -1.0, 1.0), rng.f32s(total * s.width(), -1.0, 1.0))).collect();
        for (l, (k, v)) in kvs.iter().enumerate() {
            b.kv_write(&mut ws, &mut cache, KvSpan { layer: l, start_pos: 0 }, k, v, 0..total).unwrap();
        }
        for (l, (s, (k, v))) in shapes.iter().zip(&kvs).enumerate() {
            let one = KvCacheConfig { n_layers: 1, n_kv_heads: s.n_kv_heads, head_dim: s.head_dim, max_seq_len: total + 3, dtype, layer_shapes: None };
            let mut alone = b.kv_cache(&one).unwrap();
            b.kv_write(&mut ws, &mut alone, KvSpan { layer: 0, start_pos: 0 }, k, v, 0..total).unwrap();
            let read = |c: &CpuKvCache, layer| {
                let (mut k, mut v) = (vec![0.0; total * s.width()], vec![0.0; total * s.width()]);
                b.kv_read(c, layer, 0..total, &mut k, &mut v).unwrap();
                (k, v)
            };
            prop_assert_eq!(read(&cache, l), read(&alone, 0));
            let n_heads = s.n_kv_heads * group;
            let q = rng.f32s(n * n_heads * s.head_dim, -1.0, 1.0);
            let p = AttentionParams { n_heads, n_kv_heads: s.n_kv_heads, head_dim: s.head_dim, scale: 0.125, sliding_window: None, chunk: None, softcap: None, sinks: None, alibi: None, bidirectional: false };
            let attend = |c: &CpuKvCache, layer| {
                let mut out = vec![0.0; q.len()];
                b.attention(&mut b.workspace(), c, KvSpan { layer, start_pos: past }, &q, 0..n, &p, &mut out).unwrap();
                out
            };
            let (got, want) = (attend(&cache, l), attend(&alone, 0));
            prop_assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
            // Another shape's heads do not fit this layer.
            let wrong = AttentionParams { head_dim: s.head_dim + 32, ..p };
            let mut out = vec![0.0; n * n_heads * (s.head_dim + 32)];
            let q = vec![0.0; out.len()];
            let at = KvSpan { layer: l, start_pos: past };
            let refused = b.attention(&mut ws, &cache, at, &q, 0..n, &wrong, &mut out).is_err();
            prop_assert!(refused);
            let at = KvSpan { layer: l, start_pos: 0 };
            let refused = b.kv_write(&mut ws, &mut cache, at, &k[..s.width() - 1].to_vec(), &v[..s.width() - 1].to_vec(), 0..1).is_err();
            prop_assert!(refused);
        }
        // One shape a layer, each positive.
        let short = KvCacheConfig { layer_shapes: Some(shapes[..shapes.len() - 1].to_vec().into()), ..cfg.clone() };
        prop_assert!(b.kv_cache(&short).is_err());
        let mut zero = shapes.clone();
        zero[0].head_dim = 0;
        let zeroed = KvCacheConfig { layer_shapes: Some(zero.into()), ..cfg };
        prop_assert!(b.kv_cache(&zeroed).is_err());
    }
}

/// A Q8_0 cache needs heads of whole blocks.
#[test]
fn q8_0_caches_need_heads_of_32() {
    let cfg = KvCacheConfig {
        n_layers: 1,
        n_kv_heads: 1,
        head_dim: 48,
        max_seq_len: 8,
        dtype: KvDtype::Q8_0,
        layer_shapes: None,
    };
    let err = be(1).kv_cache(&cfg).unwrap_err();
    assert!(err.to_string().contains("multiple of 32"), "{err}");
}

/// A workspace reused across calls (its cached angles) gives the results of
/// a fresh one, whatever the order of settings and positions.
#[test]
fn rope_angle_cache_is_transparent() {
    let mut rng = Rng::new(7);
    let (n_heads, head_dim) = (2, 16);
    let b = be(1);
    let mut ws = b.workspace();
    // (base, rotated dimensions, magnitude)
    let settings = [
        (10_000.0f32, 16usize, 1.0f32),
        (1e6, 16, 1.0),
        (10_000.0, 8, 1.0),
        (10_000.0, 16, 1.25),
    ];
    let runs = [
        (0, vec![0u32, 1, 2]),
        (1, vec![0, 1, 2]),
        (0, vec![0, 1, 2]),
        (0, vec![3]),
        // The same angles at another magnitude.
        (3, vec![3]),
        (2, vec![3]),
        (1, vec![3]),
        (0, vec![3]),
        (1, vec![0, 1, 2]),
    ];
    for (s, positions) in runs {
        let (base, n_dims, magnitude) = settings[s];
        let p = RopeParams {
            n_dims,
            base,
            freq_scale: 1.0,
            mode: RopeMode::Neox,
            factors: None,
            magnitude,
        };
        let x = rng.f32s(positions.len() * n_heads * head_dim, -2.0, 2.0);
        let (mut cached, mut fresh) = (x.clone(), x);
        b.rope(&mut ws, &mut cached, n_heads, head_dim, &positions, &p)
            .unwrap();
        b.rope(
            &mut b.workspace(),
            &mut fresh,
            n_heads,
            head_dim,
            &positions,
            &p,
        )
        .unwrap();
        assert_eq!(cached, fresh, "setting {s}, positions {positions:?}");
    }
}

/// Prefilling n tokens in one call and decoding them one by one give
/// bit-identical attention outputs, with any thread count.
#[test]
fn attention_is_batch_invariant() {
    let mut rng = Rng::new(42);
    let (n_kv, n_heads, hd, n) = (3, 9, 64, 40);
    let cfg = KvCacheConfig {
        n_layers: 1,
        n_kv_heads: n_kv,
        head_dim: hd,
        max_seq_len: 64,
        dtype: KvDtype::F32,
        layer_shapes: None,
    };
    let k = rng.f32s(n * n_kv * hd, -1.0, 1.0);
    let v = rng.f32s(n * n_kv * hd, -1.0, 1.0);
    let q = rng.f32s(n * n_heads * hd, -1.0, 1.0);
    let p = AttentionParams {
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: 0.125,
        sliding_window: Some(16),
        chunk: None,
        softcap: None,
        sinks: None,
        alibi: None,
        bidirectional: false,
    };
    let b2 = be(2);
    let mut cache = b2.kv_cache(&cfg).unwrap();
    b2.kv_write(
        &mut b2.workspace(),
        &mut cache,
        KvSpan {
            layer: 0,
            start_pos: 0,
        },
        &k,
        &v,
        0..n,
    )
    .unwrap();
    let mut batched = vec![0.0; q.len()];
    b2.attention(
        &mut b2.workspace(),
        &cache,
        KvSpan {
            layer: 0,
            start_pos: 0,
        },
        &q,
        0..n,
        &p,
        &mut batched,
    )
    .unwrap();
    let b1 = be(1);
    let mut ws = b1.workspace();
    let w = n_heads * hd;
    // Row by row, as a batch of sequences is run: each call fills its row.
    let mut one = vec![f32::NAN; q.len()];
    for t in 0..n {
        b1.attention(
            &mut ws,
            &cache,
            KvSpan {
                layer: 0,
                start_pos: t,
            },
            &q,
            t..t + 1,
            &p,
            &mut one,
        )
        .unwrap();
        let same = one[t * w..(t + 1) * w]
            .iter()
            .zip(&batched[t * w..(t + 1) * w])
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "token {t}");
    }
}

#[test]
fn bad_parameters_are_errors() {
    let b = be(1);
    let cfg = KvCacheConfig {
        n_layers: 1,
        n_kv_heads: 1,
        head_dim: 4,
        max_seq_len: 4,
        dtype: KvDtype::F32,
        layer_shapes: None,
    };
    let mut cache = b.kv_cache(&cfg).unwrap();
    assert!(b.kv_cache(&KvCacheConfig { n_layers: 0, ..cfg }).is_err());
    assert!(b
        .kv_write(
            &mut b.workspace(),
            &mut cache,
            KvSpan {
                layer: 1,
                start_pos: 0
            },
            &vec![0.0; 4],
            &vec![0.0; 4],
            0..1
        )
        .is_err());
    assert!(b
        .kv_write(
            &mut b.workspace(),
            &mut cache,
            KvSpan {
                layer: 0,
                start_pos: 4
            },
            &vec![0.0; 4],
            &vec![0.0; 4],
            0..1
        )
        .is_err());
    assert!(b
        .kv_write(
            &mut b.workspace(),
            &mut cache,
            KvSpan {
                layer: 0,
                start_pos: 0
            },
            &vec![0.0; 4],
            &vec![0.0; 3],
            0..1
        )
        .is_err());
    let p = AttentionParams {
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
        scale: 0.5,
        sliding_window: None,
        chunk: None,
        softcap: None,
        sinks: None,
        alibi: None,
        bidirectional: false,
    };
    let mut ws = b.workspace();
    let mut out = vec![0.0; 8];
    let q8 = vec![0.0; 8];
    // Sinks: one finite value per query head.
    for sinks in [&[0.5][..], &[0.5, 1.0, 2.0], &[0.5, f32::NAN]] {
        let p = AttentionParams {
            sinks: Some(sinks),
            alibi: None,
            ..p
        };
        let at = KvSpan {
            layer: 0,
            start_pos: 3,
        };
        assert!(b
            .attention(&mut ws, &cache, at, &q8, 0..1, &p, &mut out)
            .is_err());
    }
    assert!(b
        .attention(
            &mut ws,
            &cache,
            KvSpan {
                layer: 0,
                start_pos: 3
            },
            &q8,
            0..1,
            &p,
            &mut out
        )
        .is_ok());
    assert!(b
        .attention(
            &mut ws,
            &cache,
            KvSpan {
                layer: 0,
                start_pos: 4
            },
            &q8,
            0..1,
            &p,
            &mut out
        )
        .is_err());
    assert!(b
        .attention(
            &mut ws,
            &cache,
            KvSpan {
                layer: 0,
                start_pos: 0
            },
            &vec![0.0; 7],
            0..1,
            &p,
            &mut out
        )
        .is_err());
    assert!(b
        .attention(
            &mut ws,
            &cache,
            KvSpan {
                layer: 0,
                start_pos: 0
            },
            &q8,
            0..1,
            &AttentionParams {
                sliding_window: Some(0),
                chunk: None,
                ..p
            },
            &mut out
        )
        .is_err());
    assert!(b
        .attention(
            &mut ws,
            &cache,
            KvSpan {
                layer: 0,
                start_pos: 0
            },
            &q8,
            0..1,
            &AttentionParams { n_heads: 3, ..p },
            &mut out
        )
        .is_err());
    let mut x = vec![0.0f32; 8];
    let mut ws = b.workspace();
    assert!(b
        .rope(
            &mut ws,
            &mut x,
            1,
            4,
            &[0, 1],
            &RopeParams {
                n_dims: 6,
                base: 1e4,
                freq_scale: 1.0,
                mode: RopeMode::Normal,
                factors: None,
                magnitude: 1.0,
            }
        )
        .is_err());
    assert!(b
        .rope(
            &mut ws,
            &mut x,
            1,
            4,
            &[0, 1, 2],
            &RopeParams {
                n_dims: 4,
                base: 1e4,
                freq_scale: 1.0,
                mode: RopeMode::Neox,
                factors: None,
                magnitude: 1.0,
            }
        )
        .is_err());
    assert!(b
        .rope(
            &mut ws,
            &mut x,
            3,
            4,
            &[0],
            &RopeParams {
                n_dims: 4,
                base: 1e4,
                freq_scale: 1.0,
                mode: RopeMode::Neox,
                factors: None,
                magnitude: 1.0,
            }
        )
        .is_err());
    assert!(b.rms_norm_inplace(&mut x, &vec![1.0; 3], 1e-5, 3).is_err());
    assert!(b.rms_norm_inplace(&mut x, &vec![], 1e-5, 1).is_err());
    assert!(b.softmax_inplace(&mut x, 0, 1).is_err());
    assert!(b.softmax_inplace(&mut x, 3, 3).is_err());
    // A read on the host lends the buffer in place, within its length.
    let first = b.read_on_host(&mut b.workspace(), &x, 2, |v| v.to_vec());
    assert_eq!(first.unwrap(), x[..2]);
    assert!(b
        .read_on_host(&mut b.workspace(), &x, x.len() + 1, |_| ())
        .is_err());
}

/// An f16 cache gives what an f32 cache gives for keys and values that are
/// already f16 values (the same math, only the storage differs).
#[test]
fn f16_cache_matches_f32_cache_on_f16_values() {
    let mut rng = Rng::new(11);
    let (n_kv, n_heads, hd, n) = (2, 4, 64, 9);
    let round = |x: Vec<f32>| {
        x.into_iter()
            .map(|v| half::f16::from_f32(v).to_f32())
            .collect::<Vec<_>>()
    };
    let k = round(rng.f32s(n * n_kv * hd, -1.0, 1.0));
    let v = round(rng.f32s(n * n_kv * hd, -1.0, 1.0));
    let q = rng.f32s(n * n_heads * hd, -1.0, 1.0);
    let p = AttentionParams {
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: 0.125,
        sliding_window: Some(5),
        chunk: None,
        softcap: None,
        sinks: None,
        alibi: None,
        bidirectional: false,
    };
    let b = CpuBackend::new().unwrap();
    let mut outs = Vec::new();
    for dtype in [KvDtype::F32, KvDtype::F16] {
        let cfg = KvCacheConfig {
            n_layers: 1,
            n_kv_heads: n_kv,
            head_dim: hd,
            max_seq_len: 16,
            dtype,
            layer_shapes: None,
        };
        let mut cache = b.kv_cache(&cfg).unwrap();
        b.kv_write(
            &mut b.workspace(),
            &mut cache,
            KvSpan {
                layer: 0,
                start_pos: 0,
            },
            &k,
            &v,
            0..n,
        )
        .unwrap();
        let mut ws = b.workspace();
        let mut out = vec![0.0; q.len()];
        b.attention(
            &mut ws,
            &cache,
            KvSpan {
                layer: 0,
                start_pos: 0,
            },
            &q,
            0..n,
            &p,
            &mut out,
        )
        .unwrap();
        outs.push(out);
    }
    for (a, b) in outs[0].iter().zip(&outs[1]) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

proptest! {
    /// `add_rows_product` (a LoRA adapter's second product) against f64,
    /// on every ISA and thread count: the rows it names get `s * x W`, the
    /// rest of `dst` is untouched, and the result does not depend on the
    /// thread count or how many rows share the call.
    #[test]
    fn add_rows_product_matches_f64(n in 1usize..5, first in 0usize..3, after in 0usize..2, k in 1usize..80, m in 1usize..70, s in -3f32..3.0, seed in any::<u64>()) {
        use realm_core::backend::MatMulOps;
        let mut rng = Rng::new(seed);
        let x = rng.f32s(n * k, -2.0, 2.0);
        let w = rng.f32s(k * m, -1.0, 1.0);
        let dst0 = rng.f32s((first + n + after) * m, -1.0, 1.0);
        let mut results = Vec::new();
        for isa in [Isa::Scalar, Isa::detect()] {
            for threads in [1, 2] {
                let Some(b) = backend(isa, threads) else { continue };
                let mut dst = dst0.clone();
                b.add_rows_product(&mut dst, first, &x, n, &w, (k, m), s).unwrap();
                for (i, (&got, &was)) in dst.iter().zip(&dst0).enumerate() {
                    let (row, col) = (i / m, i % m);
                    if row < first || row >= first + n {
                        prop_assert_eq!(got, was);
                        continue;
                    }
                    let t = row - first;
                    let sum: f64 = (0..k).map(|j| f64::from(x[t * k + j]) * f64::from(w[j * m + col])).sum();
                    let want = f64::from(was) + f64::from(s) * sum;
                    prop_assert!(close(got, want, 1e-5, 1e-5 * k as f64), "{} vs {}", got, want);
                }
                // Row by row, the same bits.
                let mut one = dst0.clone();
                for t in 0..n {
                    b.add_rows_product(&mut one, first + t, &x[t * k..].to_vec(), 1, &w, (k, m), s).unwrap();
                }
                prop_assert_eq!(&one, &dst);
                results.push((isa, dst));
            }
        }
        // Threads never change a result of one ISA.
        for pair in results.windows(2) {
            if pair[0].0 == pair[1].0 {
                prop_assert_eq!(&pair[0].1, &pair[1].1);
            }
        }
    }
}

#[test]
fn add_rows_product_checks_lengths() {
    use realm_core::backend::MatMulOps;
    let b = be(1);
    let (x, w) = (vec![1.0; 6], vec![1.0; 12]);
    let mut dst = vec![0.0; 8];
    // Two rows of 4 from row 1 end past the 2 rows there are.
    assert!(b
        .add_rows_product(&mut dst, 1, &x, 2, &w, (3, 4), 1.0)
        .is_err());
    assert!(b
        .add_rows_product(&mut dst, 0, &x, 3, &w, (3, 4), 1.0)
        .is_err());
    assert!(b
        .add_rows_product(&mut dst, 0, &x, 2, &w, (4, 4), 1.0)
        .is_err());
    assert!(b
        .add_rows_product(&mut dst, usize::MAX, &x, 1, &w, (3, 4), 1.0)
        .is_err());
    b.add_rows_product(&mut dst, 0, &x, 2, &w, (3, 4), 0.5)
        .unwrap();
    assert_eq!(dst, vec![1.5; 8]);
}

#[test]
fn add_rows_product_is_the_same_split_over_threads() {
    use realm_core::backend::MatMulOps;
    let mut rng = Rng::new(7);
    let (n, k, m) = (40, 16, 1536);
    let (x, w) = (rng.f32s(n * k, -2.0, 2.0), rng.f32s(k * m, -1.0, 1.0));
    let dst0 = rng.f32s(n * m, -1.0, 1.0);
    let (mut split, mut rows) = (dst0.clone(), dst0.clone());
    // Enough work for the pool.
    be(2)
        .add_rows_product(&mut split, 0, &x, n, &w, (k, m), 0.7)
        .unwrap();
    for t in 0..n {
        let xt = x[t * k..(t + 1) * k].to_vec();
        be(1)
            .add_rows_product(&mut rows, t, &xt, 1, &w, (k, m), 0.7)
            .unwrap();
    }
    assert_eq!(split, rows);
    assert_ne!(split, dst0);
}

/// Host work on the pool: every chunk of `a` once, with its matching
/// chunk of `b` (the last ones short), whichever thread runs it.
#[test]
fn host_chunks_visit_every_chunk_once() {
    use realm_core::backend::BackendCore;
    for threads in [1, 2, 3] {
        let b = be(threads);
        let mut a: Vec<f32> = (0..22).map(|i| i as f32).collect();
        let mut out = vec![0.0f32; 12];
        b.host_chunks((&mut a, 4), (&mut out, 2), &|c, a, out| {
            for x in a.iter_mut() {
                *x += 100.0 * (c as f32 + 1.0);
            }
            out.fill(a.len() as f32);
        });
        for (i, x) in a.iter().enumerate() {
            assert_eq!(*x, i as f32 + 100.0 * ((i / 4) as f32 + 1.0), "{threads}");
        }
        assert_eq!(
            out,
            [4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 2.0, 2.0]
        );
    }
}
