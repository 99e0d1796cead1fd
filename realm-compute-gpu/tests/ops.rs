//! Every op of the GPU backend against the CPU backend, on random shapes and
//! data. The device is candle's CPU device unless `REALM_GPU_TEST_DEVICE`
//! names another (`cuda:0` on a machine with a GPU and a `cuda` build).

mod common;

use common::{assert_close, Rng};
use proptest::prelude::*;
use realm_compute_cpu::CpuBackend;
use realm_compute_gpu::{Dequantized, GpuBackend, GpuDevice, StepMode};
use realm_core::backend::{
    ActivationOps, AttentionOps, AttentionParams, BackendCore, BackendError, KvCacheConfig,
    KvDtype, KvSpan, MatMulOps, NormOps, QkNorm, RopeMode, RopeOps, RopeParams, StepInputs,
    StepOps, WeightInfo,
};
use realm_core::quant::blocks::BlockIQ1M;
use realm_core::{quant, GgmlType, TensorView};

fn gpu() -> GpuBackend {
    let dev = std::env::var("REALM_GPU_TEST_DEVICE")
        .map(|s| GpuDevice::parse(&s).expect("REALM_GPU_TEST_DEVICE"))
        .unwrap_or(GpuDevice::Cpu);
    GpuBackend::new(dev).expect("device")
}

/// The relative and absolute tolerances of attention over keys the GPU
/// rotated and stored. Keys are rotated before they are rounded to f16; the
/// two backends' rotations may differ in f32's last bit, which can flip a
/// rounding (an f16 ulp of a key) and move the result by more than f32
/// rounding: absolutely, since an output near 0 is a sum of values that
/// cancel (2.3e-4 seen in 1500 cases; 5e-4 held for 60000).
fn rope_tolerance(f16: bool) -> (f32, f32) {
    if f16 {
        (2e-3, 5e-4)
    } else {
        (1e-4, 1e-5)
    }
}

fn cpu() -> CpuBackend {
    CpuBackend::new().unwrap()
}

fn down(g: &GpuBackend, b: &<GpuBackend as BackendCore>::Buffer, n: usize) -> Vec<f32> {
    let mut v = vec![0.0; n];
    g.download(b, &mut v).unwrap();
    v
}

/// Every type realm-core can quantize (to make test weights) that the GPU
/// backend multiplies by.
fn types() -> Vec<GgmlType> {
    let g = gpu();
    quant::DEQUANTIZE_TYPES
        .iter()
        .copied()
        .filter(|&t| quant::can_quantize(t) && g.supports_matmul(t))
        .collect()
}

/// Which of attention's per-head extras a case has: sinks, ALiBi, and
/// chunks of some length.
fn extras() -> impl Strategy<Value = (bool, bool, Option<usize>)> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(1usize..6),
    )
}

/// Attention sinks and ALiBi slopes for `n_heads` heads, and a chunk
/// length, as `extras` asks (no chunks bidirectionally).
struct HeadExtras {
    sinks: Option<Vec<f32>>,
    slopes: Option<Vec<f32>>,
    chunk: Option<usize>,
}

impl HeadExtras {
    fn new(
        rng: &mut Rng,
        (sinks, alibi, chunk): (bool, bool, Option<usize>),
        n_heads: usize,
        bidirectional: bool,
    ) -> Self {
        let causal = !bidirectional;
        Self {
            sinks: sinks.then(|| rng.f32s(n_heads, -2.0, 3.0)),
            slopes: alibi.then(|| {
                (0..n_heads)
                    .map(|h| AttentionParams::alibi_slope(8.0, n_heads, h))
                    .collect()
            }),
            chunk: chunk.filter(|_| causal),
        }
    }

    /// Parameters with these extras (the rest to be set).
    fn params(&self) -> AttentionParams<'_> {
        AttentionParams {
            n_heads: 0,
            n_kv_heads: 0,
            head_dim: 0,
            scale: 1.0,
            sliding_window: None,
            chunk: self.chunk,
            softcap: None,
            sinks: self.sinks.as_deref(),
            alibi: self.slopes.as_deref(),
            bidirectional: false,
        }
    }
}

proptest! {
    // 24 cases (candle's CPU device is slow), unless PROPTEST_CASES says
    // otherwise (`cargo xtask proptest`).
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24), failure_persistence: None, ..ProptestConfig::default() })]

    /// Quantized matmul and embedding: the GPU's product matches the CPU's
    /// within the error of 8-bit activation rounding (both quantize the
    /// activations, by different block types for some weights); embedding
    /// rows are the exact dequantized weights on both.
    #[test]
    fn matmul_and_embed_match_cpu(ti in 0usize..64, m in 1usize..40, kb in 1usize..3, n in 1usize..6, seed in any::<u64>()) {
        let types = types();
        let t = types[ti % types.len()];
        let k = kb * 256;
        let mut rng = Rng(seed);
        let w = rng.f32s(m * k, -1.0, 1.0);
        let bytes = quant::quantize_row_to_vec(t, &w).unwrap();
        let shape = [k as u64, m as u64];
        let view = TensorView::new("w", t, &shape, &bytes).unwrap();
        let x = rng.f32s(n * k, -1.0, 1.0);
        let (g, c) = (gpu(), cpu());
        let (gw, cw) = (g.weight(&view).unwrap(), c.weight(&view).unwrap());
        let mut cout = c.buffer(n * m).unwrap();
        c.matmul(&mut c.workspace(), &cw, &x, n, &mut cout).unwrap();
        let gx = g.upload(&x).unwrap();
        let mut gout = g.buffer(n * m + 3).unwrap();
        g.matmul(&mut g.workspace(), &gw, &gx, n, &mut gout).unwrap();
        // Sums of k products of values up to 1: rounding of activations to
        // 8 bits gives errors of about sqrt(k) * 2^-8 per output, on each
        // side, and the sides may round differently (candle's CPU kernels
        // take Q8_0 weights' activations as Q8_0 or as Q8_K blocks by the
        // matrix's shape): five times that error's spread.
        let tol = (k as f32).sqrt() * 0.01;
        assert_close(&down(&g, &gout, n * m), &cout, 0.0, tol, &format!("{t} matmul"));
        let ids: Vec<u32> = (0..n as u32).map(|i| (i * 7) % m as u32).collect();
        let mut ce = c.buffer(n * k).unwrap();
        c.embed(&mut c.workspace(), &cw, &ids, &mut ce).unwrap();
        let mut ge = g.buffer(n * k).unwrap();
        g.embed(&mut g.workspace(), &gw, &ids, &mut ge).unwrap();
        prop_assert_eq!(down(&g, &ge, n * k), ce, "{} embed", t);
    }

    /// A stacked weight's product, split by columns, is each part's
    /// product (the input quantized once instead of per part); the CPU's
    /// split of the same rows agrees.
    #[test]
    fn stacked_products_split_into_the_parts(ti in 0usize..64, parts in proptest::collection::vec(1usize..9, 1..4), n in 1usize..6, seed in any::<u64>()) {
        let types = types();
        let t = types[ti % types.len()];
        let k = 256;
        let mut rng = Rng(seed);
        let (g, c) = (gpu(), cpu());
        let bytes: Vec<Vec<u8>> = parts
            .iter()
            .map(|&m| quant::quantize_row_to_vec(t, &rng.f32s(m * k, -1.0, 1.0)).unwrap())
            .collect();
        let shapes: Vec<[u64; 2]> = parts.iter().map(|&m| [k as u64, m as u64]).collect();
        let views: Vec<TensorView<'_>> = bytes
            .iter()
            .zip(&shapes)
            .map(|(b, s)| TensorView::new("w", t, s, b).unwrap())
            .collect();
        let stacked = g.stack(&views).unwrap().expect("the GPU backend stacks");
        let total: usize = parts.iter().sum();
        prop_assert_eq!((stacked.rows(), stacked.cols()), (total, k));
        let x = g.upload(&rng.f32s(n * k, -1.0, 1.0)).unwrap();
        let mut ws = g.workspace();
        let mut all = g.buffer(n * total).unwrap();
        g.matmul(&mut ws, &stacked, &x, n, &mut all).unwrap();
        let mut outs: Vec<_> = parts.iter().map(|&m| g.buffer(n * m).unwrap()).collect();
        g.split_cols(&all, n, &parts, &mut outs.iter_mut().collect::<Vec<_>>()).unwrap();
        let host_all = down(&g, &all, n * total);
        let mut cpu_outs: Vec<Vec<f32>> = parts.iter().map(|&m| vec![0.0; n * m]).collect();
        c.split_cols(&host_all, n, &parts, &mut cpu_outs.iter_mut().collect::<Vec<_>>()).unwrap();
        for ((view, out), cpu_out) in views.iter().zip(&outs).zip(&cpu_outs) {
            let w = g.weight(view).unwrap();
            let mut alone = g.buffer(n * w.rows()).unwrap();
            g.matmul(&mut ws, &w, &x, n, &mut alone).unwrap();
            let alone = down(&g, &alone, n * w.rows());
            // Exact but for the activations' rounding, which candle's CPU
            // kernels may choose by the matrix's rows (as in the test above).
            let tol = if g.name() == "candle-cpu" { (k as f32).sqrt() * 0.01 } else { 1e-4 };
            assert_close(&down(&g, out, n * w.rows()), &alone, 1e-5, tol, &format!("{t} part"));
            prop_assert_eq!(cpu_out, &down(&g, out, n * w.rows()));
        }
    }

    /// The fused ops' results as Q8_1 blocks, which the next quantized
    /// product reads in place of quantizing its input (up to 8 rows), and
    /// for more rows in the layout of the matrix products: the residual
    /// add + norm, the gated unit, a chunk's attention and a batch's, each
    /// before a product by every type. The op's values do not change; on
    /// CUDA the product does not either, bit for bit; on candle's CPU
    /// device, which quantizes the blocks' values again, it stays within
    /// that second rounding.
    #[test]
    fn products_read_the_blocks_ops_write(ti in 0usize..64, n in prop_oneof![1usize..20, 120usize..160], which in 0usize..4, seed in any::<u64>()) {
        let types = types();
        let t = types[ti % types.len()];
        // Attention's rows are 4 heads of 64; the others' 768 values, padded
        // to 1024 in the matrix products' layout. An odd row count for the
        // weight.
        let (k, m, past) = (if which >= 2 { 256 } else { 768 }, 41, 3);
        let mut rng = Rng(seed);
        let bytes = quant::quantize_row_to_vec(t, &rng.f32s(m * k, -1.0, 1.0)).unwrap();
        let shape = [k as u64, m as u64];
        let view = TensorView::new("w", t, &shape, &bytes).unwrap();
        let x = rng.f32s(n * k, -2.0, 2.0);
        let y = rng.f32s(n * k, -2.0, 2.0);
        let w = rng.f32s(k, 0.5, 1.5);
        // Attention: 4 heads of 64 over 2 KV heads, after `past` keys.
        let cfg = KvCacheConfig { n_layers: 1, n_kv_heads: 2, head_dim: 64, max_seq_len: past + n, dtype: KvDtype::F32, layer_shapes: None, };
        let kv = [rng.f32s((past + n) * 128, -1.0, 1.0), rng.f32s((past + n) * 128, -1.0, 1.0)];
        let p = AttentionParams { n_heads: 4, n_kv_heads: 2, head_dim: 64, scale: 0.125, sliding_window: None, chunk: None, softcap: None, sinks: None, alibi: None, bidirectional: false };
        let at = |start_pos| KvSpan { layer: 0, start_pos };
        let mut results = Vec::new();
        for blocks in [false, true] {
            let g = gpu().with_q8_blocks(blocks);
            let gw = g.weight(&view).unwrap();
            let mut ws = g.workspace();
            let (gx, gy) = (g.upload(&x).unwrap(), g.upload(&y).unwrap());
            let mut input = g.buffer(n * k).unwrap();
            match which {
                0 => {
                    let mut sum = gx.clone();
                    g.add_rms_norm(&mut sum, &gy, &g.upload(&w).unwrap(), 1e-5, n, k, &mut input).unwrap();
                }
                1 => {
                    // Gate and up as the halves of a stacked product's rows.
                    let stacked: Vec<f32> = x
                        .chunks(k)
                        .zip(y.chunks(k))
                        .flat_map(|(a, b)| a.iter().chain(b).copied())
                        .collect();
                    let mut up = g.buffer(n * k).unwrap();
                    g.split_cols(&g.upload(&stacked).unwrap(), n, &[k, k], &mut [&mut input, &mut up]).unwrap();
                    g.swiglu_inplace(&mut input, &up, n * k).unwrap();
                }
                2 => {
                    let mut cache = g.kv_cache(&cfg).unwrap();
                    let (gk, gv) = (g.upload(&kv[0]).unwrap(), g.upload(&kv[1]).unwrap());
                    g.kv_write(&mut ws, &mut cache, at(0), &gk, &gv, 0..past + n).unwrap();
                    g.attention(&mut ws, &cache, at(past), &gx, 0..n, &p, &mut input).unwrap();
                }
                _ => {
                    // A batch: each row at position `past` of a cache of
                    // its own, its key rotated and stored with its value.
                    // After 32 other caches (blocks of 1, 1, 2, 4, 8 and 16
                    // slots), up to 32 rows' caches are consecutive slots
                    // of one block, which off CUDA is one run of the fused
                    // kernel.
                    let (gk, gv) = (g.upload(&kv[0]).unwrap(), g.upload(&kv[1]).unwrap());
                    let _others: Vec<_> = (0..32).map(|_| g.kv_cache(&cfg).unwrap()).collect();
                    let mut caches: Vec<_> = (0..n).map(|_| g.kv_cache(&cfg).unwrap()).collect();
                    for c in &mut caches {
                        g.kv_write(&mut ws, c, at(0), &gk, &gv, 0..past).unwrap();
                    }
                    let mut rows: Vec<_> = caches.iter_mut().collect();
                    let positions = vec![past as u32; n];
                    let rope = RopeParams { n_dims: 64, base: 10000.0, freq_scale: 1.0, mode: RopeMode::Neox, factors: None, magnitude: 1.0 };
                    let (mut q, mut nk) = (gx.clone(), g.upload(&kv[0][..n * 128]).unwrap());
                    let nv = g.upload(&kv[1][..n * 128]).unwrap();
                    g.rope_attend_rows(&mut ws, &mut rows, 0, &positions, (&mut q, &mut nk, &nv), None, &rope, &p, &mut input).unwrap();
                }
            }
            let before = g.blocks_products();
            let mut out = g.buffer(n * m).unwrap();
            g.matmul(&mut ws, &gw, &input, n, &mut out).unwrap();
            let took = g.blocks_products() - before;
            // Which ops write blocks of these rows: the fused attention
            // kernel takes a chunk of more than 8 rows only on CUDA; a
            // batch's rows, up to 32 (by address on CUDA, elsewhere as one
            // run of slots; more rows are more runs, whose results are
            // joined).
            let writes = match which {
                0 | 1 => true,
                2 => n <= 8 || !matches!(g.device(), GpuDevice::Cpu),
                _ => n <= 32,
            };
            // Past 8 rows, for the types whose matrix kernels read that
            // layout (Q2_K's reads another).
            let reads = n <= 8 || t != GgmlType::Q2_K;
            prop_assert_eq!(took, u64::from(g.q8_blocks() && writes && reads && t.is_quantized()), "blocks products");
            results.push((down(&g, &input, n * k), down(&g, &out, n * m)));
        }
        let ((v0, y0), (v1, y1)) = (&results[0], &results[1]);
        prop_assert_eq!(v0, v1, "the op's values");
        if matches!(gpu().device(), GpuDevice::Cpu) {
            // Two roundings of up to amax / 254 each, over k products by
            // weights up to 1: about 4 standard deviations. A product of the
            // wrong values would be off by about sqrt(k) * amax / 3.
            let amax = v0.iter().fold(0f32, |a, v| a.max(v.abs()));
            let tol = (k as f32).sqrt() * amax * 0.012;
            assert_close(y1, y0, 0.0, tol, &format!("{t} product of blocks"));
        } else {
            prop_assert_eq!(y1, y0, "{} product of blocks", t);
        }
    }

    /// Norms, RoPE (both layouts, partial rotation), activations (the
    /// residual add + norm and the gated units fused and not).
    #[test]
    fn elementwise_ops_match_cpu(rows in 1usize..5, heads in 1usize..4, half in 1usize..17, extra in 0usize..3, neox in any::<bool>(), seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let (g, c) = (gpu(), cpu());
        let hd = 2 * half + 2 * extra;
        let width = heads * hd;
        let len = rows * width;
        let x = rng.f32s(len, -3.0, 3.0);
        let y = rng.f32s(len, -2.0, 2.0);
        let w = rng.f32s(width, 0.5, 1.5);
        let bias = rng.f32s(width, -1.0, 1.0);
        let gx = g.upload(&x).unwrap();
        let (gw, gb) = (g.upload(&w).unwrap(), g.upload(&bias).unwrap());

        let mut cout = vec![0.0; len];
        c.rms_norm(&x, &w, 1e-5, rows, &mut cout).unwrap();
        let mut gout = g.buffer(len).unwrap();
        g.rms_norm(&gx, &gw, 1e-5, rows, &mut gout).unwrap();
        assert_close(&down(&g, &gout, len), &cout, 1e-5, 1e-5, "rms_norm");

        // Clamped (OLMo's and MPT's queries, keys and values).
        let mut cc = x.clone();
        c.clamp_inplace(&mut cc, 1.25, len).unwrap();
        let mut gc = gx.clone();
        g.clamp_inplace(&mut gc, 1.25, len).unwrap();
        prop_assert_eq!(down(&g, &gc, len), cc.clone());
        prop_assert!(cc.iter().all(|v| v.abs() <= 1.25));

        // LayerNorm with and without a bias, out of place and in place.
        for b in [Some((&bias, &gb)), None] {
            let (cb, gbias) = (b.map(|b| b.0), b.map(|b| b.1));
            c.layer_norm(&x, &w, cb, 1e-5, rows, &mut cout).unwrap();
            g.layer_norm(&gx, &gw, gbias, 1e-5, rows, &mut gout).unwrap();
            assert_close(&down(&g, &gout, len), &cout, 1e-5, 1e-5, "layer_norm");
            let mut gin = gx.clone();
            g.layer_norm_inplace(&mut gin, &gw, gbias, 1e-5, rows).unwrap();
            assert_close(&down(&g, &gin, len), &cout, 1e-5, 1e-5, "layer_norm in place");
        }
        // A bias of another length than the weight is an error.
        let short = g.upload(&bias[1..]).unwrap();
        prop_assert!(g.layer_norm(&gx, &gw, Some(&short), 1e-5, rows, &mut gout).is_err());

        // The residual add and the norm after it, fused and not.
        let unfused = gpu().with_fused_kernels(false);
        let (mut cx, mut cn) = (x.clone(), vec![0.0; len]);
        c.add_rms_norm(&mut cx, &y, &w, 1e-5, rows, width, &mut cn).unwrap();
        for g in [&g, &unfused] {
            let (mut gx, gy, gw) = (g.upload(&x).unwrap(), g.upload(&y).unwrap(), g.upload(&w).unwrap());
            let mut gn = g.buffer(len).unwrap();
            g.add_rms_norm(&mut gx, &gy, &gw, 1e-5, rows, width, &mut gn).unwrap();
            assert_close(&down(g, &gx, len), &cx, 1e-6, 1e-6, "add_rms_norm sum");
            assert_close(&down(g, &gn, len), &cn, 1e-5, 1e-5, "add_rms_norm");
            // A weight of another width is an error.
            prop_assert!(g.add_rms_norm(&mut gx, &gy, &gw, 1e-5, rows, width + 1, &mut gn).is_err());
        }
        // The same with y normed first (Gemma's norms after attention and
        // after the feed-forward network).
        let yw = rng.f32s(width, 0.5, 1.5);
        let (mut cx, mut cy, mut cn) = (x.clone(), y.clone(), vec![0.0; len]);
        c.norm_add_rms_norm(&mut cx, &mut cy, &yw, &w, 1e-5, rows, width, &mut cn).unwrap();
        for g in [&g, &unfused] {
            let (mut gx, mut gy, gyw, gw) = (g.upload(&x).unwrap(), g.upload(&y).unwrap(), g.upload(&yw).unwrap(), g.upload(&w).unwrap());
            let mut gn = g.buffer(len).unwrap();
            g.norm_add_rms_norm(&mut gx, &mut gy, &gyw, &gw, 1e-5, rows, width, &mut gn).unwrap();
            assert_close(&down(g, &gx, len), &cx, 1e-5, 1e-5, "norm_add_rms_norm sum");
            assert_close(&down(g, &gn, len), &cn, 1e-5, 1e-5, "norm_add_rms_norm");
            prop_assert!(g.norm_add_rms_norm(&mut gx, &mut gy, &gw, &gyw, 1e-5, rows, width + 1, &mut gn).is_err());
        }

        // (NeoX with LongRoPE's magnitude.)
        let magnitude = if neox { 1.190_238 } else { 1.0 };
        let p = RopeParams { n_dims: 2 * half, base: 10000.0, freq_scale: 1.0, mode: if neox { RopeMode::Neox } else { RopeMode::Normal }, factors: None, magnitude };
        let positions: Vec<u32> = (0..rows as u32).map(|i| i * 37 + 5).collect();
        let mut cr = x.clone();
        c.rope(&mut c.workspace(), &mut cr, heads, hd, &positions, &p).unwrap();
        let mut gr = gx.clone();
        let mut gws = g.workspace();
        g.rope(&mut gws, &mut gr, heads, hd, &positions, &p).unwrap();
        assert_close(&down(&g, &gr, len), &cr, 1e-5, 1e-5, "rope");
        // A second call with the same positions uses the cached tables.
        let mut gr2 = gx.clone();
        g.rope(&mut gws, &mut gr2, heads, hd, &positions, &p).unwrap();
        prop_assert_eq!(down(&g, &gr2, len), down(&g, &gr, len));

        type Op = (&'static str, fn(&CpuBackend, &mut Vec<f32>, &Vec<f32>, usize), fn(&GpuBackend, &mut realm_compute_gpu::GpuBuffer, &realm_compute_gpu::GpuBuffer, usize));
        let ops: [Op; 5] = [
            ("swiglu", |c, a, b, n| c.swiglu_inplace(a, b, n).unwrap(), |g, a, b, n| g.swiglu_inplace(a, b, n).unwrap()),
            ("sigmoid_mul", |c, a, b, n| c.sigmoid_mul_inplace(a, b, n).unwrap(), |g, a, b, n| g.sigmoid_mul_inplace(a, b, n).unwrap()),
            ("geglu", |c, a, b, n| c.geglu_inplace(a, b, n).unwrap(), |g, a, b, n| g.geglu_inplace(a, b, n).unwrap()),
            ("add", |c, a, b, n| c.add_inplace(a, b, n).unwrap(), |g, a, b, n| g.add_inplace(a, b, n).unwrap()),
            ("mul", |c, a, b, n| c.mul_inplace(a, b, n).unwrap(), |g, a, b, n| g.mul_inplace(a, b, n).unwrap()),
        ];
        // A gated unit's halves split from one stacked product's rows
        // (strided views, read in place by the fused kernel).
        {
            let both: Vec<f32> = x.chunks(width).zip(y.chunks(width)).flat_map(|(a, b)| a.iter().chain(b).copied()).collect();
            let all = g.upload(&both).unwrap();
            let (mut ga, mut gb) = (g.buffer(len).unwrap(), g.buffer(len).unwrap());
            g.split_cols(&all, rows, &[width, width], &mut [&mut ga, &mut gb]).unwrap();
            let mut ca = x.clone();
            c.swiglu_inplace(&mut ca, &y, len).unwrap();
            g.swiglu_inplace(&mut ga, &gb, len).unwrap();
            assert_close(&down(&g, &ga, len), &ca, 1e-5, 1e-6, "swiglu of a stacked product's halves");
        }
        // gpt-oss's SwiGLU: values past its limit of 7 on both sides.
        {
            let (gx7, gy7): (Vec<f32>, Vec<f32>) = (x.iter().map(|v| v * 5.0).collect(), y.iter().map(|v| v * 5.0).collect());
            let mut ca = gx7.clone();
            c.swiglu_oai_inplace(&mut ca, &gy7, (1.702, 7.0), len).unwrap();
            let (mut ga, gb) = (g.upload(&gx7).unwrap(), g.upload(&gy7).unwrap());
            g.swiglu_oai_inplace(&mut ga, &gb, (1.702, 7.0), len).unwrap();
            assert_close(&down(&g, &ga, len), &ca, 1e-5, 1e-6, "swiglu_oai");
        }
        // The gated units with Realm's fused kernel and with candle's ops.
        for (name, cf, gf) in ops {
            let mut ca = x.clone();
            cf(&c, &mut ca, &y, len);
            for g in [&g, &unfused] {
                let (mut ga, gy) = (g.upload(&x).unwrap(), g.upload(&y).unwrap());
                gf(g, &mut ga, &gy, len);
                assert_close(&down(g, &ga, len), &ca, 1e-5, 1e-6, name);
            }
        }
        let (mut ca, mut ga) = (x.clone(), gx.clone());
        c.silu_inplace(&mut ca, len).unwrap();
        g.silu_inplace(&mut ga, len).unwrap();
        assert_close(&down(&g, &ga, len), &ca, 1e-5, 1e-6, "silu");
        let (mut ca, mut ga) = (x.clone(), gx.clone());
        c.gelu_inplace(&mut ca, len).unwrap();
        g.gelu_inplace(&mut ga, len).unwrap();
        assert_close(&down(&g, &ga, len), &ca, 1e-5, 1e-6, "gelu");
        let (mut ca, mut ga) = (x.clone(), gx.clone());
        c.relu_squared_inplace(&mut ca, len).unwrap();
        g.relu_squared_inplace(&mut ga, len).unwrap();
        assert_close(&down(&g, &ga, len), &ca, 1e-5, 1e-6, "relu_squared");
        let (mut ca, mut ga) = (x.clone(), gx.clone());
        c.softmax_inplace(&mut ca, width, rows).unwrap();
        g.softmax_inplace(&mut ga, width, rows).unwrap();
        assert_close(&down(&g, &ga, len), &ca, 1e-5, 1e-7, "softmax");
        let (mut ca, mut ga) = (x.clone(), gx.clone());
        c.add_row_inplace(&mut ca, &bias, rows).unwrap();
        g.add_row_inplace(&mut ga, &gb, rows).unwrap();
        prop_assert_eq!(down(&g, &ga, len), ca);
        let (mut ca, mut ga) = (x.clone(), gx.clone());
        c.scale_inplace(&mut ca, 0.37, len).unwrap();
        g.scale_inplace(&mut ga, 0.37, len).unwrap();
        prop_assert_eq!(down(&g, &ga, len), ca);
        let mut cc = vec![0.0; width];
        c.copy_rows(&x, rows - 1..rows, width, &mut cc).unwrap();
        let mut gc = g.buffer(width).unwrap();
        g.copy_rows(&gx, rows - 1..rows, width, &mut gc).unwrap();
        prop_assert_eq!(down(&g, &gc, width), cc);
    }

    /// Attention over the cache: prefill chunks and row-by-row batches,
    /// GQA, sliding windows, soft-capping, f32 and f16 caches, causal and
    /// bidirectional (an encoder's, its windows on both sides), attention
    /// sinks, ALiBi and chunks (causal); with the fused kernel and with
    /// candle's ops.
    #[test]
    fn attention_matches_cpu(n_kv in 1usize..3, group in 1usize..4, hd in 1usize..40, past in 0usize..12, n in 1usize..7, window in proptest::option::of(1usize..8), softcap in proptest::option::of(1f32..50.0), f16 in any::<bool>(), bidirectional in any::<bool>(), extras in extras(), seed in any::<u64>()) {
        for fused in [true, false] {
            let mut rng = Rng(seed);
            let (g, c) = (gpu().with_fused_kernels(fused), cpu());
            let n_heads = n_kv * group;
            let total = past + n;
            let cfg = KvCacheConfig { n_layers: 2, n_kv_heads: n_kv, head_dim: hd, max_seq_len: total + 2, dtype: if f16 { KvDtype::F16 } else { KvDtype::F32 }, layer_shapes: None, };
            let k = rng.f32s(total * n_kv * hd, -1.0, 1.0);
            let v = rng.f32s(total * n_kv * hd, -1.0, 1.0);
            let q = rng.f32s(n * n_heads * hd, -1.0, 1.0);
            let heads = HeadExtras::new(&mut rng, extras, n_heads, bidirectional);
            let p = AttentionParams { n_heads, n_kv_heads: n_kv, head_dim: hd, scale: 1.0 / (hd as f32).sqrt(), sliding_window: window, softcap, bidirectional, ..heads.params() };
            let at = |start_pos| KvSpan { layer: 1, start_pos };

            let mut cc = c.kv_cache(&cfg).unwrap();
            c.kv_write(&mut c.workspace(), &mut cc, at(0), &k, &v, 0..total).unwrap();
            let mut cout = vec![0.0; q.len()];
            c.attention(&mut c.workspace(), &cc, at(past), &q, 0..n, &p, &mut cout).unwrap();

            // Keys written in two calls, one of them a row range.
            let mut gc = g.kv_cache(&cfg).unwrap();
            let (gk, gv) = (g.upload(&k).unwrap(), g.upload(&v).unwrap());
            g.kv_write(&mut g.workspace(), &mut gc, at(0), &gk, &gv, 0..past).unwrap();
            g.kv_write(&mut g.workspace(), &mut gc, at(past), &gk, &gv, past..total).unwrap();
            let gq = g.upload(&q).unwrap();
            let mut gout = g.buffer(q.len()).unwrap();
            let mut ws = g.workspace();
            g.attention(&mut ws, &gc, at(past), &gq, 0..n, &p, &mut gout).unwrap();
            assert_close(&down(&g, &gout, q.len()), &cout, 1e-4, 1e-5, "attention");

            // Row by row, as a batch of sequences fills its output (a
            // bidirectional call's rows see each other: not so).
            if bidirectional {
                continue;
            }
            let mut grow = g.buffer(q.len()).unwrap();
            for t in 0..n {
                g.attention(&mut ws, &gc, at(past + t), &gq, t..t + 1, &p, &mut grow).unwrap();
            }
            assert_close(&down(&g, &grow, q.len()), &cout, 1e-4, 1e-5, "attention by rows");
        }
    }

    /// A batch's attention over many caches (`attend_rows`): the GPU
    /// attends each run of consecutive cache slots at once, the CPU row by
    /// row; rows at their own positions, in cache order or shuffled (no
    /// runs), GQA, windows, soft-capping, f32 and f16 caches; with the fused
    /// kernel and with candle's ops; sinks, ALiBi and chunks. The GPU's
    /// caches are reused slots: NaN at every position before the history
    /// is written, which no row may read. In a static step (`span`) every
    /// row spans the whole cache.
    #[test]
    fn attend_rows_matches_cpu(n_kv in 1usize..3, group in 1usize..4, hd in 1usize..33, pasts in proptest::collection::vec(0usize..10, 1..7), shuffle in any::<bool>(), window in proptest::option::of(1usize..6), softcap in proptest::option::of(1f32..50.0), f16 in any::<bool>(), span in any::<bool>(), extras in extras(), seed in any::<u64>()) {
        for fused in [true, false] {
            let mut rng = Rng(seed);
            let (g, c) = (gpu().with_fused_kernels(fused).with_steps(StepMode::Static), cpu());
            let n_heads = n_kv * group;
            let rows = pasts.len();
            let kv_width = n_kv * hd;
            let cfg = KvCacheConfig { n_layers: 2, n_kv_heads: n_kv, head_dim: hd, max_seq_len: 12, dtype: if f16 { KvDtype::F16 } else { KvDtype::F32 }, layer_shapes: None, };
            let heads = HeadExtras::new(&mut rng, extras, n_heads, false);
            let p = AttentionParams { n_heads, n_kv_heads: n_kv, head_dim: hd, scale: 1.0 / (hd as f32).sqrt(), sliding_window: window, softcap, ..heads.params() };
            // Each sequence's history, written one call each.
            let hist: Vec<(Vec<f32>, Vec<f32>)> = pasts.iter().map(|&p| (rng.f32s(p * kv_width, -1.0, 1.0), rng.f32s(p * kv_width, -1.0, 1.0))).collect();
            let (k, v, q) = (rng.f32s(rows * kv_width, -1.0, 1.0), rng.f32s(rows * kv_width, -1.0, 1.0), rng.f32s(rows * n_heads * hd, -1.0, 1.0));
            let mut ccaches: Vec<_> = (0..rows).map(|_| c.kv_cache(&cfg).unwrap()).collect();
            let mut gcaches: Vec<_> = (0..rows).map(|_| g.kv_cache(&cfg).unwrap()).collect();
            // (`start`, not `span`: that is the static-step flag.)
            let start = KvSpan { layer: 1, start_pos: 0 };
            let nan = g.upload(&vec![f32::NAN; cfg.max_seq_len * kv_width]).unwrap();
            for cache in &mut gcaches {
                g.kv_write(&mut g.workspace(), cache, start, &nan, &nan, 0..cfg.max_seq_len).unwrap();
            }
            for (i, (hk, hv)) in hist.iter().enumerate() {
                if pasts[i] > 0 {
                    c.kv_write(&mut c.workspace(), &mut ccaches[i], start, hk, hv, 0..pasts[i]).unwrap();
                    let (gk, gv) = (g.upload(hk).unwrap(), g.upload(hv).unwrap());
                    g.kv_write(&mut g.workspace(), &mut gcaches[i], start, &gk, &gv, 0..pasts[i]).unwrap();
                }
            }
            // Row r of the batch is sequence r, or (shuffled) sequence rows - 1 - r:
            // then no two rows are in consecutive slots.
            let mut positions: Vec<u32> = pasts.iter().map(|&p| p as u32).collect();
            let mut cc: Vec<_> = ccaches.iter_mut().collect();
            let mut gc: Vec<_> = gcaches.iter_mut().collect();
            if shuffle {
                positions.reverse();
                cc.reverse();
                gc.reverse();
            }
            let mut cout = vec![0.0; q.len()];
            c.attend_rows(&mut c.workspace(), &mut cc, 1, &positions, (&k, &v), &q, &p, &mut cout).unwrap();
            let (gk, gv, gq) = (g.upload(&k).unwrap(), g.upload(&v).unwrap(), g.upload(&q).unwrap());
            let mut gout = g.buffer(q.len()).unwrap();
            let mut ws = g.workspace();
            if span {
                let ids = vec![0; rows];
                g.begin_step(&mut ws, &StepInputs { ids: &ids, positions: &positions, kv_len: cfg.max_seq_len }).unwrap();
            }
            g.attend_rows(&mut ws, &mut gc, 1, &positions, (&gk, &gv), &gq, &p, &mut gout).unwrap();
            g.end_step(&mut ws);
            assert_close(&down(&g, &gout, q.len()), &cout, 1e-4, 1e-5, &format!("attend_rows (fused: {fused}, span: {span})"));
            // The rows' keys and values were stored: attending again, one row at
            // a time, gives the same.
            for (r, cache) in gc.iter().enumerate() {
                let mut one = g.buffer(q.len()).unwrap();
                let at = KvSpan { layer: 1, start_pos: positions[r] as usize };
                let gq_row = g.upload(&q[r * n_heads * hd..(r + 1) * n_heads * hd]).unwrap();
                let mut ws = g.workspace();
                if span {
                    g.begin_step(&mut ws, &StepInputs { ids: &[0], positions: &positions[r..r + 1], kv_len: cfg.max_seq_len }).unwrap();
                }
                g.attention(&mut ws, cache, at, &gq_row, 0..1, &p, &mut one).unwrap();
                g.end_step(&mut ws);
                assert_close(&down(&g, &one, n_heads * hd), &cout[r * n_heads * hd..(r + 1) * n_heads * hd], 1e-4, 1e-5, "stored row");
            }
        }
    }

    /// A decode step's rotations, KV store and attention in one call
    /// (`rope_attend_rows`): the GPU rotates keys as it stores them and
    /// queries as it attends (fused) or runs the ops (unfused); the CPU
    /// rotates, then attends row by row. Both RoPE layouts, partial
    /// rotation, runs of slots and shuffled rows, f32 and f16 caches.
    #[test]
    fn rope_attend_rows_matches_cpu(n_kv in 1usize..3, group in 1usize..3, half in 1usize..9, extra in 0usize..3, neox in any::<bool>(), pasts in proptest::collection::vec(0usize..10, 1..6), shuffle in any::<bool>(), window in proptest::option::of(1usize..6), f16 in any::<bool>(), seed in any::<u64>()) {
        let hd = 2 * half + 2 * extra;
        let n_heads = n_kv * group;
        let rows = pasts.len();
        let kv_width = n_kv * hd;
        let cfg = KvCacheConfig { n_layers: 2, n_kv_heads: n_kv, head_dim: hd, max_seq_len: 12, dtype: if f16 { KvDtype::F16 } else { KvDtype::F32 }, layer_shapes: None, };
        let p = AttentionParams { n_heads, n_kv_heads: n_kv, head_dim: hd, scale: 1.0 / (hd as f32).sqrt(), sliding_window: window, chunk: None, softcap: None, sinks: None, alibi: None, bidirectional: false };
        let rope = RopeParams { n_dims: 2 * half, base: 10000.0, freq_scale: 1.0, mode: if neox { RopeMode::Neox } else { RopeMode::Normal }, factors: None, magnitude: 1.0 };
        let mut rng = Rng(seed);
        let hist: Vec<(Vec<f32>, Vec<f32>)> = pasts.iter().map(|&p| (rng.f32s(p * kv_width, -1.0, 1.0), rng.f32s(p * kv_width, -1.0, 1.0))).collect();
        let (k, v, q) = (rng.f32s(rows * kv_width, -1.0, 1.0), rng.f32s(rows * kv_width, -1.0, 1.0), rng.f32s(rows * n_heads * hd, -1.0, 1.0));
        let mut positions: Vec<u32> = pasts.iter().map(|&p| p as u32).collect();
        if shuffle {
            positions.reverse();
        }
        let span = KvSpan { layer: 1, start_pos: 0 };
        let c = cpu();
        let mut ccaches: Vec<_> = (0..rows).map(|_| c.kv_cache(&cfg).unwrap()).collect();
        for (i, (hk, hv)) in hist.iter().enumerate() {
            if pasts[i] > 0 {
                c.kv_write(&mut c.workspace(), &mut ccaches[i], span, hk, hv, 0..pasts[i]).unwrap();
            }
        }
        let mut cc: Vec<_> = ccaches.iter_mut().collect();
        if shuffle {
            cc.reverse();
        }
        // Gemma 3's per-head Q/K norms, on some cases.
        let qk: Option<(Vec<f32>, Vec<f32>)> = (seed % 2 == 1).then(|| (rng.f32s(hd, 0.5, 1.5), rng.f32s(hd, 0.5, 1.5)));
        let mut cout = vec![0.0; q.len()];
        let (mut cq, mut ck) = (q.clone(), k.clone());
        let cnorm = qk.as_ref().map(|(qn, kn)| QkNorm { q: qn, k: kn, eps: 1e-6 });
        c.rope_attend_rows(&mut c.workspace(), &mut cc, 1, &positions, (&mut cq, &mut ck, &v), cnorm, &rope, &p, &mut cout).unwrap();
        let (rel, abs) = rope_tolerance(f16);
        // Queries, keys and values uploaded apart, or split from one
        // stacked product's rows (then strided views, read in place); on
        // CUDA, keys and values stored by the attention kernel or by one
        // of their own.
        for (fused, stacked, stores) in [(true, false, true), (false, false, true), (true, true, true), (true, true, false)] {
            let g = gpu().with_fused_kernels(fused).with_store_in_attention(stores);
            let mut gcaches: Vec<_> = (0..rows).map(|_| g.kv_cache(&cfg).unwrap()).collect();
            for (i, (hk, hv)) in hist.iter().enumerate() {
                if pasts[i] > 0 {
                    let (gk, gv) = (g.upload(hk).unwrap(), g.upload(hv).unwrap());
                    g.kv_write(&mut g.workspace(), &mut gcaches[i], span, &gk, &gv, 0..pasts[i]).unwrap();
                }
            }
            let mut gc: Vec<_> = gcaches.iter_mut().collect();
            if shuffle {
                gc.reverse();
            }
            let (mut gq, mut gk, mut gv) = (g.upload(&q).unwrap(), g.upload(&k).unwrap(), g.upload(&v).unwrap());
            if stacked {
                let qw = n_heads * hd;
                let rows_qkv: Vec<f32> = (0..rows)
                    .flat_map(|r| {
                        let (qr, kr, vr) = (&q[r * qw..][..qw], &k[r * kv_width..][..kv_width], &v[r * kv_width..][..kv_width]);
                        qr.iter().chain(kr).chain(vr).copied().collect::<Vec<_>>()
                    })
                    .collect();
                let all = g.upload(&rows_qkv).unwrap();
                g.split_cols(&all, rows, &[qw, kv_width, kv_width], &mut [&mut gq, &mut gk, &mut gv]).unwrap();
            }
            let mut gout = g.buffer(q.len()).unwrap();
            let gqk = qk.as_ref().map(|(qn, kn)| (g.upload(qn).unwrap(), g.upload(kn).unwrap()));
            let gnorm = gqk.as_ref().map(|(qn, kn)| QkNorm { q: qn, k: kn, eps: 1e-6 });
            g.rope_attend_rows(&mut g.workspace(), &mut gc, 1, &positions, (&mut gq, &mut gk, &gv), gnorm, &rope, &p, &mut gout).unwrap();
            assert_close(&down(&g, &gout, q.len()), &cout, rel, abs, &format!("rope_attend_rows (stacked: {stacked}, stores: {stores})"));
            // The stored keys are the rotated ones: each row attended again
            // (queries rotated on the CPU) gives the same.
            for (r, cache) in gc.iter().enumerate() {
                let mut one = g.buffer(n_heads * hd).unwrap();
                let at = KvSpan { layer: 1, start_pos: positions[r] as usize };
                let gq_row = g.upload(&cq[r * n_heads * hd..(r + 1) * n_heads * hd]).unwrap();
                g.attention(&mut g.workspace(), cache, at, &gq_row, 0..1, &p, &mut one).unwrap();
                assert_close(&down(&g, &one, n_heads * hd), &cout[r * n_heads * hd..(r + 1) * n_heads * hd], rel, abs, "stored rotated row");
            }
        }
    }

    /// A chunk of one sequence (`rope_attend`, a prompt's): the GPU stores
    /// the rotated keys in one kernel and attends in another (on CUDA, the
    /// tiled kernel past 8 rows) or runs the ops (unfused); the CPU runs
    /// the ops in turn. After a past, in the second slot of a block, both
    /// RoPE layouts, partial rotation, GQA, windows, soft-capping, Gemma
    /// 3's head norms, f32 and f16 caches, stacked rows. The stored keys
    /// and values are then read back by one more token's attention.
    #[test]
    fn rope_attend_matches_cpu(n_kv in 1usize..3, group in 1usize..4, half in 1usize..17, extra in 0usize..3, neox in any::<bool>(), past in 0usize..12, n in 1usize..21, window in proptest::option::of(1usize..9), softcap in proptest::option::of(1f32..50.0), f16 in any::<bool>(), seed in any::<u64>()) {
        let hd = 2 * half + 2 * extra;
        let n_heads = n_kv * group;
        let (kv_width, width) = (n_kv * hd, n_heads * hd);
        let total = past + n;
        let cfg = KvCacheConfig { n_layers: 2, n_kv_heads: n_kv, head_dim: hd, max_seq_len: total + 2, dtype: if f16 { KvDtype::F16 } else { KvDtype::F32 }, layer_shapes: None, };
        let p = AttentionParams { n_heads, n_kv_heads: n_kv, head_dim: hd, scale: 1.0 / (hd as f32).sqrt(), sliding_window: window, chunk: None, softcap, sinks: None, alibi: None, bidirectional: false };
        let rope = RopeParams { n_dims: 2 * half, base: 10000.0, freq_scale: 1.0, mode: if neox { RopeMode::Neox } else { RopeMode::Normal }, factors: None, magnitude: 1.0 };
        let mut rng = Rng(seed);
        let (hk, hv) = (rng.f32s(past * kv_width, -1.0, 1.0), rng.f32s(past * kv_width, -1.0, 1.0));
        let (k, v, q) = (rng.f32s(n * kv_width, -1.0, 1.0), rng.f32s(n * kv_width, -1.0, 1.0), rng.f32s(n * width, -1.0, 1.0));
        let next_q = rng.f32s(width, -1.0, 1.0);
        let qk: Option<(Vec<f32>, Vec<f32>)> = (seed % 2 == 1).then(|| (rng.f32s(hd, 0.5, 1.5), rng.f32s(hd, 0.5, 1.5)));
        let positions: Vec<u32> = (past as u32..total as u32).collect();
        let span = KvSpan { layer: 1, start_pos: 0 };
        let c = cpu();
        let mut cc = c.kv_cache(&cfg).unwrap();
        if past > 0 {
            c.kv_write(&mut c.workspace(), &mut cc, span, &hk, &hv, 0..past).unwrap();
        }
        let (mut cq, mut ck) = (q.clone(), k.clone());
        let cnorm = qk.as_ref().map(|(qn, kn)| QkNorm { q: qn, k: kn, eps: 1e-6 });
        let mut cout = vec![0.0; q.len()];
        c.rope_attend(&mut c.workspace(), &mut cc, 1, &positions, (&mut cq, &mut ck, &v), cnorm, &rope, &p, &mut cout).unwrap();
        // One more token (its query as it is) reads what the chunk stored.
        let (next_k, next_v) = (rng.f32s(kv_width, -1.0, 1.0), rng.f32s(kv_width, -1.0, 1.0));
        let next = KvSpan { layer: 1, start_pos: total };
        let mut cnext = vec![0.0; width];
        c.kv_write(&mut c.workspace(), &mut cc, next, &next_k, &next_v, 0..1).unwrap();
        c.attention(&mut c.workspace(), &cc, next, &next_q, 0..1, &p, &mut cnext).unwrap();
        let (rel, abs) = rope_tolerance(f16);
        for (fused, stacked) in [(true, false), (false, false), (true, true)] {
            let g = gpu().with_fused_kernels(fused);
            // The sequence's cache is the second slot of its block.
            let _first = g.kv_cache(&cfg).unwrap();
            let mut gc = g.kv_cache(&cfg).unwrap();
            if past > 0 {
                let (gk, gv) = (g.upload(&hk).unwrap(), g.upload(&hv).unwrap());
                g.kv_write(&mut g.workspace(), &mut gc, span, &gk, &gv, 0..past).unwrap();
            }
            let (mut gq, mut gk, mut gv) = (g.upload(&q).unwrap(), g.upload(&k).unwrap(), g.upload(&v).unwrap());
            if stacked {
                let rows_qkv: Vec<f32> = (0..n)
                    .flat_map(|r| {
                        let (qr, kr, vr) = (&q[r * width..][..width], &k[r * kv_width..][..kv_width], &v[r * kv_width..][..kv_width]);
                        qr.iter().chain(kr).chain(vr).copied().collect::<Vec<_>>()
                    })
                    .collect();
                let all = g.upload(&rows_qkv).unwrap();
                g.split_cols(&all, n, &[width, kv_width, kv_width], &mut [&mut gq, &mut gk, &mut gv]).unwrap();
            }
            let gqk = qk.as_ref().map(|(qn, kn)| (g.upload(qn).unwrap(), g.upload(kn).unwrap()));
            let gnorm = gqk.as_ref().map(|(qn, kn)| QkNorm { q: qn, k: kn, eps: 1e-6 });
            let mut gout = g.buffer(q.len()).unwrap();
            let mut ws = g.workspace();
            g.rope_attend(&mut ws, &mut gc, 1, &positions, (&mut gq, &mut gk, &gv), gnorm, &rope, &p, &mut gout).unwrap();
            let what = format!("rope_attend (fused: {fused}, stacked: {stacked})");
            assert_close(&down(&g, &gout, q.len()), &cout, rel, abs, &what);
            let (gk, gv, gq) = (g.upload(&next_k).unwrap(), g.upload(&next_v).unwrap(), g.upload(&next_q).unwrap());
            g.kv_write(&mut ws, &mut gc, next, &gk, &gv, 0..1).unwrap();
            let mut gnext = g.buffer(width).unwrap();
            g.attention(&mut ws, &gc, next, &gq, 0..1, &p, &mut gnext).unwrap();
            assert_close(&down(&g, &gnext, width), &cnext, rel, abs, &format!("{what}, stored"));
        }
    }
}

/// Long caches: on CUDA a decode row's keys are split over several blocks
/// (flash-decoding) whose results a second kernel merges; split or not,
/// attention matches the CPU's. SmolLM2's heads (a batch by slot table,
/// rows at very different depths) and Gemma 3's (global, or a window long
/// enough to split, whose start falls inside a split),
/// f32 and f16 caches, the step's keys stored by the attention kernel or
/// before it, and one row of one cache (`attention`), which reads them.
#[test]
fn long_caches_attend_alike_split_or_not() {
    struct Case {
        n_kv: usize,
        group: usize,
        hd: usize,
        window: Option<usize>,
        f16: bool,
        neox: bool,
    }
    let cases = [
        Case {
            n_kv: 3,
            group: 3,
            hd: 64,
            window: None,
            f16: false,
            neox: false,
        },
        Case {
            n_kv: 1,
            group: 4,
            hd: 256,
            window: None,
            f16: true,
            neox: true,
        },
        Case {
            n_kv: 1,
            group: 4,
            hd: 256,
            window: Some(1100),
            f16: false,
            neox: true,
        },
    ];
    let pasts = [1300usize, 5, 1500];
    for (i, case) in cases.iter().enumerate() {
        let (n_kv, hd) = (case.n_kv, case.hd);
        let n_heads = n_kv * case.group;
        let (rows, kv_width, width) = (pasts.len(), n_kv * hd, n_heads * hd);
        let cfg = KvCacheConfig {
            n_layers: 1,
            n_kv_heads: n_kv,
            head_dim: hd,
            max_seq_len: 1600,
            dtype: if case.f16 { KvDtype::F16 } else { KvDtype::F32 },
            layer_shapes: None,
        };
        let p = AttentionParams {
            n_heads,
            n_kv_heads: n_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            sliding_window: case.window,
            chunk: None,
            softcap: None,
            sinks: None,
            alibi: None,
            bidirectional: false,
        };
        let rope = RopeParams {
            n_dims: hd,
            base: 10000.0,
            freq_scale: 1.0,
            mode: if case.neox {
                RopeMode::Neox
            } else {
                RopeMode::Normal
            },
            factors: None,
            magnitude: 1.0,
        };
        let mut rng = Rng(40 + i as u64);
        let hist: Vec<(Vec<f32>, Vec<f32>)> = pasts
            .iter()
            .map(|&n| {
                (
                    rng.f32s(n * kv_width, -1.0, 1.0),
                    rng.f32s(n * kv_width, -1.0, 1.0),
                )
            })
            .collect();
        let k = rng.f32s(rows * kv_width, -1.0, 1.0);
        let v = rng.f32s(rows * kv_width, -1.0, 1.0);
        let q = rng.f32s(rows * width, -1.0, 1.0);
        let positions: Vec<u32> = pasts.iter().map(|&n| n as u32).collect();
        let span = KvSpan {
            layer: 0,
            start_pos: 0,
        };
        let c = cpu();
        let mut ccaches: Vec<_> = (0..rows).map(|_| c.kv_cache(&cfg).unwrap()).collect();
        for (cache, (hk, hv)) in ccaches.iter_mut().zip(&hist) {
            let n = hk.len() / kv_width;
            c.kv_write(&mut c.workspace(), cache, span, hk, hv, 0..n)
                .unwrap();
        }
        let mut cc: Vec<_> = ccaches.iter_mut().collect();
        let (mut cq, mut ck) = (q.clone(), k.clone());
        let mut want = vec![0.0; q.len()];
        c.rope_attend_rows(
            &mut c.workspace(),
            &mut cc,
            0,
            &positions,
            (&mut cq, &mut ck, &v),
            None,
            &rope,
            &p,
            &mut want,
        )
        .unwrap();
        // The first row again, alone in its cache, its query rotated.
        let at = KvSpan {
            layer: 0,
            start_pos: pasts[0],
        };
        let mut want_one = vec![0.0; width];
        c.attention(
            &mut c.workspace(),
            &ccaches[0],
            at,
            &cq[..width].to_vec(),
            0..1,
            &p,
            &mut want_one,
        )
        .unwrap();
        let (rel, abs) = rope_tolerance(case.f16);
        // On CUDA: split or not, keys stored by the attention kernel or not.
        for (split, stores) in [(true, true), (false, true), (true, false)] {
            let g = gpu().with_split_keys(split).with_store_in_attention(stores);
            let mut gcaches: Vec<_> = (0..rows).map(|_| g.kv_cache(&cfg).unwrap()).collect();
            for (cache, (hk, hv)) in gcaches.iter_mut().zip(&hist) {
                let n = hk.len() / kv_width;
                let (gk, gv) = (g.upload(hk).unwrap(), g.upload(hv).unwrap());
                g.kv_write(&mut g.workspace(), cache, span, &gk, &gv, 0..n)
                    .unwrap();
            }
            let mut gc: Vec<_> = gcaches.iter_mut().collect();
            let (mut gq, mut gk, gv) = (
                g.upload(&q).unwrap(),
                g.upload(&k).unwrap(),
                g.upload(&v).unwrap(),
            );
            let mut gout = g.buffer(q.len()).unwrap();
            let mut ws = g.workspace();
            g.rope_attend_rows(
                &mut ws,
                &mut gc,
                0,
                &positions,
                (&mut gq, &mut gk, &gv),
                None,
                &rope,
                &p,
                &mut gout,
            )
            .unwrap();
            let what = format!("case {i}, split {split}, stores {stores}");
            assert_close(&down(&g, &gout, q.len()), &want, rel, abs, &what);
            let gq_one = g.upload(&cq[..width]).unwrap();
            let mut one = g.buffer(width).unwrap();
            g.attention(&mut ws, &gcaches[0], at, &gq_one, 0..1, &p, &mut one)
                .unwrap();
            assert_close(
                &down(&g, &one, width),
                &want_one,
                rel,
                abs,
                &format!("{what}, one row"),
            );
        }
    }
}

/// Heads past the fused kernels' largest (256 values) are attended by
/// candle's ops, which write no blocks: a batch of them (one row, or 16
/// consecutive slots) attends as the CPU does with blocks on too (it once
/// asked candle's ops for blocks and failed).
#[test]
fn heads_past_the_fused_kernels_attend_without_blocks() {
    let hd = 320;
    let cfg = KvCacheConfig {
        n_layers: 1,
        n_kv_heads: 1,
        head_dim: hd,
        max_seq_len: 4,
        dtype: KvDtype::F32,
        layer_shapes: None,
    };
    let p = AttentionParams {
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        sliding_window: None,
        chunk: None,
        softcap: None,
        sinks: None,
        alibi: None,
        bidirectional: false,
    };
    for n in [1, 16] {
        let mut rng = Rng(n as u64);
        let (k, v, q) = (
            rng.f32s(n * hd, -1.0, 1.0),
            rng.f32s(n * hd, -1.0, 1.0),
            rng.f32s(n * 2 * hd, -1.0, 1.0),
        );
        let positions = vec![0u32; n];
        let c = cpu();
        let mut cc: Vec<_> = (0..n).map(|_| c.kv_cache(&cfg).unwrap()).collect();
        let mut want = vec![0.0; q.len()];
        c.attend_rows(
            &mut c.workspace(),
            &mut cc.iter_mut().collect::<Vec<_>>(),
            0,
            &positions,
            (&k, &v),
            &q,
            &p,
            &mut want,
        )
        .unwrap();
        for blocks in [false, true] {
            let g = gpu().with_q8_blocks(blocks);
            // After 32 caches, the next 16 are consecutive slots of a block.
            let _others: Vec<_> = (0..32).map(|_| g.kv_cache(&cfg).unwrap()).collect();
            let mut gc: Vec<_> = (0..n).map(|_| g.kv_cache(&cfg).unwrap()).collect();
            let (gk, gv, gq) = (
                g.upload(&k).unwrap(),
                g.upload(&v).unwrap(),
                g.upload(&q).unwrap(),
            );
            let mut out = g.buffer(q.len()).unwrap();
            g.attend_rows(
                &mut g.workspace(),
                &mut gc.iter_mut().collect::<Vec<_>>(),
                0,
                &positions,
                (&gk, &gv),
                &gq,
                &p,
                &mut out,
            )
            .unwrap();
            assert_close(
                &down(&g, &out, q.len()),
                &want,
                1e-4,
                1e-5,
                &format!("{n} rows, blocks {blocks}"),
            );
        }
    }
}

/// Gated units of no values do nothing, fused or not (a CUDA launch of no
/// blocks would be an error).
#[test]
fn empty_gated_units_do_nothing() {
    for fused in [true, false] {
        let g = gpu().with_fused_kernels(fused);
        let mut gate = g.upload(&[1.0, 2.0]).unwrap();
        let up = g.upload(&[3.0, 4.0]).unwrap();
        g.swiglu_inplace(&mut gate, &up, 0).unwrap();
        g.geglu_inplace(&mut gate, &up, 0).unwrap();
        assert_eq!(down(&g, &gate, 2), [1.0, 2.0], "fused: {fused}");
    }
}

/// A chunk's positions must be consecutive, on either path.
#[test]
fn rope_attend_refuses_scattered_positions() {
    let cfg = KvCacheConfig {
        n_layers: 1,
        n_kv_heads: 1,
        head_dim: 4,
        max_seq_len: 8,
        dtype: KvDtype::F32,
        layer_shapes: None,
    };
    let p = AttentionParams {
        n_heads: 1,
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
    let rope = RopeParams {
        n_dims: 4,
        base: 10000.0,
        freq_scale: 1.0,
        mode: RopeMode::Normal,
        factors: None,
        magnitude: 1.0,
    };
    for fused in [true, false] {
        let g = gpu().with_fused_kernels(fused);
        let mut cache = g.kv_cache(&cfg).unwrap();
        let (mut q, mut k, v) = (
            g.upload(&[1.0; 8]).unwrap(),
            g.upload(&[1.0; 8]).unwrap(),
            g.upload(&[1.0; 8]).unwrap(),
        );
        let mut out = g.buffer(8).unwrap();
        let err = g.rope_attend(
            &mut g.workspace(),
            &mut cache,
            0,
            &[0, 2],
            (&mut q, &mut k, &v),
            None,
            &rope,
            &p,
            &mut out,
        );
        assert!(
            matches!(err, Err(BackendError::InvalidParameter { .. })),
            "{err:?}"
        );
    }
}

/// Reads through one workspace's staging memory (none, then made, grown,
/// reused for fewer values) lend exactly what a download gives; so does a
/// read of a buffer holding far fewer values than it was made for (a
/// batch of fewer rows than its scratch), whose device allocation is
/// only those values: on CUDA the staging memory is then much larger than
/// what it copies, and a copy of more would run past the allocation.
#[test]
fn reads_on_host_lend_what_downloads_give() {
    let g = gpu();
    let mut ws = g.workspace();
    for (n, len) in [(10, 0), (40, 40), (5000, 4099), (100, 7), (5000, 5000)] {
        let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
        let buf = g.upload(&values).unwrap();
        let mut want = vec![0.0; len];
        g.download(&buf, &mut want).unwrap();
        let got = g.read_on_host(&mut ws, &buf, len, |v| v.to_vec()).unwrap();
        assert_eq!(got, want, "{len} of {n} values");
    }
    let (rows, width) = (3, 1000);
    let values: Vec<f32> = (0..rows * width).map(|i| (i as f32 * 0.11).cos()).collect();
    let src = g.upload(&values).unwrap();
    let mut batch = g.buffer(1 << 22).unwrap();
    g.copy_rows(&src, 0..rows, width, &mut batch).unwrap();
    let mut fresh = g.workspace();
    for ws in [&mut fresh, &mut ws] {
        let got = g
            .read_on_host(ws, &batch, rows * width, |v| v.to_vec())
            .unwrap();
        assert_eq!(got, values);
    }
}

/// Bad input is an error, never a panic, on the GPU path too.
#[test]
fn bad_input_is_an_error() {
    let g = gpu();
    let x = g.upload(&[1.0; 8]).unwrap();
    let w = g.upload(&[1.0; 4]).unwrap();
    let mut out = g.buffer(4).unwrap();
    assert!(matches!(
        g.rms_norm(&x, &w, 1e-5, 2, &mut out),
        Err(BackendError::Shape { .. })
    ));
    assert!(g
        .rms_norm(&x, &w, 1e-5, 3, &mut g.buffer(12).unwrap())
        .is_err());
    let mut small = g.buffer(4).unwrap();
    g.scale_inplace(&mut small, 2.0, 2).unwrap();
    // Only 2 values are defined now: reading 4 is refused, not stale data.
    assert!(g.download(&small, &mut [0.0; 4]).is_err());
    assert!(g.download(&x, &mut [0.0; 9]).is_err());
    let mut ws = g.workspace();
    assert!(g.read_on_host(&mut ws, &small, 4, |_| ()).is_err());
    assert!(g.read_on_host(&mut ws, &x, 9, |_| ()).is_err());
    let bytes = vec![0u8; 18 * 2];
    let shape = [32u64, 2];
    let view = TensorView::new("w", GgmlType::Q4_0, &shape, &bytes).unwrap();
    let wt = g.weight(&view).unwrap();
    let mut e = g.buffer(64).unwrap();
    assert!(matches!(
        g.embed(&mut g.workspace(), &wt, &[0, 2], &mut e),
        Err(BackendError::OutOfRange { index: 2, .. })
    ));
    let view = TensorView::new("w", GgmlType::IQ4_NL, &shape, &bytes).unwrap();
    assert!(matches!(
        g.weight(&view),
        Err(BackendError::UnsupportedType { .. })
    ));
    // Stacking needs one type and column count; splitting, one width per
    // output and room for each.
    let q8 = vec![0u8; 34 * 2];
    let other = TensorView::new("w", GgmlType::Q8_0, &shape, &q8).unwrap();
    let q4 = TensorView::new("w", GgmlType::Q4_0, &shape, &bytes).unwrap();
    assert!(g.stack(&[q4, other]).is_err());
    let (mut a, mut b) = (g.buffer(2).unwrap(), g.buffer(1).unwrap());
    assert!(g.split_cols(&x, 2, &[2, 2], &mut [&mut a]).is_err());
    assert!(g.split_cols(&x, 2, &[2, 2], &mut [&mut a, &mut b]).is_err());
    assert!(g.split_cols(&x, 3, &[2, 2], &mut [&mut a, &mut b]).is_err());
    let cfg = KvCacheConfig {
        n_layers: 1,
        n_kv_heads: 1,
        head_dim: 4,
        max_seq_len: 4,
        dtype: KvDtype::F32,
        layer_shapes: None,
    };
    let mut cache = g.kv_cache(&cfg).unwrap();
    let kv = g.upload(&[0.5; 8]).unwrap();
    let span = |layer, start_pos| KvSpan { layer, start_pos };
    assert!(g
        .kv_write(&mut g.workspace(), &mut cache, span(1, 0), &kv, &kv, 0..1)
        .is_err());
    assert!(g
        .kv_write(&mut g.workspace(), &mut cache, span(0, 3), &kv, &kv, 0..2)
        .is_err());
    assert!(g
        .kv_write(&mut g.workspace(), &mut cache, span(0, 0), &kv, &kv, 0..3)
        .is_err());
    g.kv_write(&mut g.workspace(), &mut cache, span(0, 0), &kv, &kv, 0..2)
        .unwrap();
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
    let mut att = g.buffer(8).unwrap();
    let mut ws = g.workspace();
    g.attention(&mut ws, &cache, span(0, 1), &kv, 0..1, &p, &mut att)
        .unwrap();
    assert!(g
        .attention(&mut ws, &cache, span(0, 4), &kv, 0..1, &p, &mut att)
        .is_err());
    assert!(g
        .attention(
            &mut ws,
            &cache,
            span(0, 0),
            &kv,
            0..1,
            &AttentionParams { n_heads: 3, ..p },
            &mut att
        )
        .is_err());
    assert!(g
        .attention(
            &mut ws,
            &cache,
            span(0, 0),
            &kv,
            0..1,
            &AttentionParams {
                sliding_window: Some(0),
                chunk: None,
                ..p
            },
            &mut att
        )
        .is_err());
    // Sinks and slopes: one finite value a head; chunks of some length;
    // no chunks in an encoder's attention.
    let (short, nan) = (vec![0.5; p.n_heads - 1], vec![f32::NAN; p.n_heads]);
    let bad = [
        AttentionParams {
            sinks: Some(&short),
            ..p
        },
        AttentionParams {
            sinks: Some(&nan),
            ..p
        },
        AttentionParams {
            alibi: Some(&short),
            ..p
        },
        AttentionParams {
            chunk: Some(0),
            ..p
        },
        AttentionParams {
            chunk: Some(4),
            bidirectional: true,
            ..p
        },
    ];
    for p in &bad {
        let err = g.attention(&mut ws, &cache, span(0, 0), &kv, 0..1, p, &mut att);
        assert!(err.is_err(), "{p:?}");
    }
}

/// A build without the `cuda` feature says so when asked for CUDA.
#[test]
fn missing_gpu_support_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let err = GpuBackend::new(GpuDevice::Cuda(0)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("--features cuda"), "{msg}");
    assert_eq!("cuda:2".parse::<GpuDevice>(), Ok(GpuDevice::Cuda(2)));
    assert!("cpu:1".parse::<GpuDevice>().is_err());
}

/// Matrices of the types candle cannot multiply (MXFP4, the IQ types, the
/// ternary ones), dequantized when asked:
/// in f32 the product is the exact math of the file's weights (an f64 sum
/// of the dequantized weights' products, within f32 rounding); in f16
/// within the rounding of weights and inputs to 11 bits; embedding rows
/// are the dequantized weights (f16: MXFP4's exactly). Not asked, the
/// types are refused, by `supports_matmul` and by `weight` alike.
#[test]
fn dequantized_matrices_multiply_their_exact_weights() {
    let (m, k, n) = (41, 512, 3);
    let mut rng = Rng(11);
    let x = rng.f32s(n * k, -1.0, 1.0);
    let types = [
        GgmlType::MXFP4,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ2_S,
        GgmlType::IQ3_XXS,
        GgmlType::IQ3_S,
        GgmlType::IQ1_S,
        GgmlType::IQ1_M,
    ];
    // The lattice types, which Realm reads but does not write: random
    // blocks, their f16 scales set so that values are about 1.
    let lattice = |t: GgmlType, rng: &mut Rng| -> Vec<u8> {
        let size = t.type_size();
        let d = match t {
            GgmlType::IQ3_XXS | GgmlType::IQ3_S => 0.002,
            GgmlType::IQ1_S | GgmlType::IQ1_M => 0.05,
            _ => 0.01,
        };
        let d = half::f16::from_f32(d);
        let n = m * k / t.block_size() * size;
        let mut bytes: Vec<u8> = rng.f32s(n, 0.0, 256.0).iter().map(|&v| v as u8).collect();
        for block in bytes.chunks_exact_mut(size) {
            match t {
                GgmlType::IQ1_M => bytemuck::from_bytes_mut::<BlockIQ1M>(block).set_d(d),
                _ => block[..2].copy_from_slice(&d.to_bits().to_le_bytes()),
            }
        }
        bytes
    };
    for t in types {
        let bytes = match quant::can_quantize(t) {
            true => quant::quantize_row_to_vec(t, &rng.f32s(m * k, -1.0, 1.0)).unwrap(),
            false => lattice(t, &mut rng),
        };
        let shape = [k as u64, m as u64];
        let view = TensorView::new("w", t, &shape, &bytes).unwrap();
        let w = quant::dequantize_row_to_vec(t, &bytes).unwrap();
        let want: Vec<f32> = (0..n)
            .flat_map(|r| {
                let (x, w) = (&x, &w);
                (0..m).map(move |i| {
                    (0..k)
                        .map(|j| f64::from(x[r * k + j]) * f64::from(w[i * k + j]))
                        .sum::<f64>() as f32
                })
            })
            .collect();
        let plain = gpu();
        assert!(!plain.supports_matmul(t));
        assert!(matches!(
            plain.weight(&view),
            Err(BackendError::UnsupportedType { .. })
        ));
        for (to, abs) in [(Dequantized::F32, 1e-4), (Dequantized::F16, 0.02)] {
            let g = gpu().with_dequantized(Some(to));
            assert!(g.supports_matmul(t));
            let gw = g.weight(&view).unwrap();
            assert_eq!((gw.rows(), gw.cols()), (m, k));
            let gx = g.upload(&x).unwrap();
            let mut out = g.buffer(n * m).unwrap();
            g.matmul(&mut g.workspace(), &gw, &gx, n, &mut out).unwrap();
            assert_close(
                &down(&g, &out, n * m),
                &want,
                0.0,
                abs,
                &format!("{t} as {to:?}"),
            );
            // Stacked with itself: the rows twice.
            let both = g.stack(&[view, view]).unwrap().unwrap();
            let mut out2 = g.buffer(n * 2 * m).unwrap();
            g.matmul(&mut g.workspace(), &both, &gx, n, &mut out2)
                .unwrap();
            let got2 = down(&g, &out2, n * 2 * m);
            let twice: Vec<f32> = want
                .chunks(m)
                .flat_map(|r| r.iter().chain(r))
                .copied()
                .collect();
            assert_close(&got2, &twice, 0.0, abs, &format!("{t} stacked as {to:?}"));
            // Embedding rows: the weights (rounded to f16 in f16).
            let ids = [0u32, 40, 7];
            let mut e = g.buffer(ids.len() * k).unwrap();
            g.embed(&mut g.workspace(), &gw, &ids, &mut e).unwrap();
            let rows: Vec<f32> = ids
                .iter()
                .flat_map(|&i| &w[i as usize * k..(i as usize + 1) * k])
                .map(|&v| match to {
                    Dequantized::F16 => half::f16::from_f32(v).to_f32(),
                    Dequantized::F32 => v,
                })
                .collect();
            assert_eq!(down(&g, &e, ids.len() * k), rows, "{t} embedding as {to:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24), failure_persistence: None, ..ProptestConfig::default() })]

    /// A LoRA update added to some rows of a batch: the GPU's rows are the
    /// CPU's, and the rows before and after (defined by an earlier write)
    /// are kept.
    #[test]
    fn add_rows_product_matches_cpu(n in 1usize..5, first in 0usize..3, after in 0usize..3, k in 1usize..20, m in 1usize..40, s in -2f32..2.0, seed in any::<u64>()) {
        let (g, c) = (gpu(), cpu());
        let mut rng = Rng(seed);
        let rows = first + n + after;
        let dst0 = rng.f32s(rows * m, -1.0, 1.0);
        let (x, w) = (rng.f32s(n * k, -2.0, 2.0), rng.f32s(k * m, -1.0, 1.0));
        let mut want = dst0.clone();
        c.add_rows_product(&mut want, first, &x, n, &w, (k, m), s).unwrap();
        let mut dst = g.upload(&dst0).unwrap();
        let (gx, gw) = (g.upload(&x).unwrap(), g.upload(&w).unwrap());
        g.add_rows_product(&mut dst, first, &gx, n, &gw, (k, m), s).unwrap();
        assert_close(&down(&g, &dst, rows * m), &want, 1e-5, 1e-5, "add_rows_product");
        // Rows past what the buffer holds are an error.
        let mut small = g.upload(&dst0[..(first + n) * m]).unwrap();
        prop_assert!(g.add_rows_product(&mut small, first + 1, &gx, n, &gw, (k, m), s).is_err());
    }
}
