//! Realm's CUDA kernels (`kernels/*.cu`) on the CPU, under a small SIMT
//! emulator (`tests/emu/emu.h`: a block's threads are fibers switched at
//! the barriers of `__syncthreads` and warp shuffles), against the CPU
//! backend. This checks the kernels' own source (indexing, masks, the
//! warps' running softmax and its merge, reductions) on machines without a
//! GPU; a GPU machine runs the same kernels for real through the op tests.
//!
//! The tests need a C++20 compiler (`$CXX`, else `c++`), so they are
//! ignored by a plain `cargo test`; `cargo xtask test` runs them where it
//! finds one.
//!
//! `EMU_SANITIZE` builds the emulator with the compiler's sanitizers, what
//! a GPU's `compute-sanitizer` would check: `EMU_SANITIZE=address,undefined`
//! catches a read or write outside an array, `EMU_SANITIZE=thread` a race
//! between a block's threads on shared memory (a missing barrier: with it,
//! the threads are OS threads, which ThreadSanitizer sees, not fibers).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{assert_close, Rng};
use realm_compute_cpu::CpuBackend;
use realm_core::backend::{
    ActivationOps, AttentionOps, AttentionParams, BackendCore, KvCacheConfig, KvDtype, KvSpan,
    NormOps, RopeMode, RopeOps, RopeParams,
};

/// The emulated kernels' driver, built once.
fn driver() -> &'static Path {
    static DRIVER: OnceLock<PathBuf> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emu");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
        let sanitize = std::env::var("EMU_SANITIZE").ok().filter(|s| !s.is_empty());
        let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join(match &sanitize {
            None => "realm-emulated-kernels".to_string(),
            Some(s) => format!("realm-emulated-kernels-{}", s.replace(',', "-")),
        });
        let mut build = Command::new(&cxx);
        build.args(["-std=c++20", "-O1", "-pthread"]);
        if sanitize.as_deref().is_some_and(|s| s.contains("thread")) {
            build.arg("-DEMU_OS_THREADS");
        }
        if let Some(s) = &sanitize {
            // Checked vectors, so that a read past an array's end but
            // within its allocation is caught too.
            build.args([
                "-g",
                "-fno-sanitize-recover=all",
                "-D_GLIBCXX_SANITIZE_VECTOR",
            ]);
            build.arg(format!("-fsanitize={s}"));
        }
        let out = build
            .arg("-I")
            .arg(&dir)
            .arg(dir.join("driver.cpp"))
            .arg("-o")
            .arg(&exe)
            .output()
            .unwrap_or_else(|e| panic!("cannot run the C++ compiler `{cxx}`: {e}"));
        assert!(
            out.status.success(),
            "building the emulated kernels failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        exe
    })
}

/// A scratch folder for one call's files.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("emulated-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write<T: bytemuck::Pod>(dir: &Path, name: &str, values: &[T]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytemuck::cast_slice(values)).unwrap();
    path.to_str().unwrap().to_string()
}

/// Runs `kernel` with `args`; returns the f32 values it wrote to `out`.
fn run(kernel: &str, args: &[String], out: &Path) -> Vec<f32> {
    run_env(kernel, args, out, &[])
}

/// [`run`], with `env` (the driver's strides) set.
fn run_env(kernel: &str, args: &[String], out: &Path, env: &[(&str, String)]) -> Vec<f32> {
    let status = Command::new(driver())
        .arg(kernel)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .status()
        .unwrap();
    assert!(status.success(), "{kernel} failed: {status}");
    let bytes = std::fs::read(out).unwrap();
    bytemuck::pod_collect_to_vec(&bytes)
}

/// The Q8_1 blocks candle's product kernels quantize `values` to (GGUF's
/// Q8_1, as ggml's CUDA quantizer writes it): per 32 values, the half of
/// `amax / 127`, the half of their sum as a warp's butterfly adds it (lane
/// i adds lane i ^ o, o = 16 .. 1), and the int8 quants `round(x / d)`.
/// Written from that description, apart from the backend's own form, as
/// the oracle for the kernels' blocks.
fn candle_q8_1(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for block in values.chunks_exact(32) {
        let mut sums = block.to_vec();
        for o in [16, 8, 4, 2, 1] {
            let prev = sums.clone();
            for (i, s) in sums.iter_mut().enumerate() {
                *s = prev[i] + prev[i ^ o];
            }
        }
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        out.extend(half::f16::from_f32(d).to_le_bytes());
        out.extend(half::f16::from_f32(sums[0]).to_le_bytes());
        out.extend(block.iter().map(|&x| match amax {
            0.0 => 0,
            _ => (x / d).round() as i8 as u8,
        }));
    }
    out
}

/// Checks the blocks a kernel wrote (`file`) of the values it wrote.
fn assert_blocks(file: &Path, values: &[f32], what: &str) {
    let got = std::fs::read(file).unwrap();
    let want = candle_q8_1(values);
    assert_eq!(got.len(), want.len(), "{what}: blocks length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: block {} byte {}: got {}, want {}",
            i / 36,
            i % 36,
            got[i],
            want[i]
        );
    }
}

/// The blocks candle's matrix products quantize `rows` rows of `width`
/// values to (ggml's CUDA quantizer for its MMQ kernels), without the
/// spare blocks: both kinds, DS4 (half scale, half sum) and D4 (float
/// scale), each as `(bytes, blocks)`. Rows are padded with zeros to 512
/// values; block c * rows + r holds row r's values 128c .. 128c + 127:
/// 16 bytes of scales (per 32 values) and 128 quants. Per 32 values,
/// with d_inv = 127 / amax: quants round(x * d_inv), d = 1 / d_inv, and
/// the sum of 8 threads' sums of 4 values (each in order), the threads
/// paired by xor 4, 2 and 1. Written from that description, apart from
/// the backend's own form, as the oracle for the kernels' blocks. Values
/// that are NaN by design (attention past its cache: 32 NaN at once) are
/// Realm's mark instead: quants 0, NaN scales and sums.
fn candle_q8_1_mmq(values: &[f32], rows: usize, width: usize) -> [Vec<u8>; 2] {
    let padded = width.div_ceil(512) * 512;
    let mut kinds = [
        vec![0u8; rows * padded / 128 * 144],
        vec![0u8; rows * padded / 128 * 144],
    ];
    for r in 0..rows {
        for c0 in (0..width).step_by(32) {
            let x = &values[r * width + c0..r * width + c0 + 32];
            let at = ((c0 / 128) * rows + r) * 144;
            let sub = c0 % 128 / 32;
            if x.iter().all(|v| v.is_nan()) {
                let nan = half::f16::from_f32(f32::NAN).to_le_bytes();
                kinds[0][at + 4 * sub..at + 4 * sub + 4].copy_from_slice(&[nan, nan].concat());
                kinds[1][at + 4 * sub..at + 4 * sub + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                continue;
            }
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let mut t: Vec<f32> = x.chunks(4).map(|q| q[0] + q[1] + q[2] + q[3]).collect();
            for o in [4, 2, 1] {
                t = (0..8).map(|i| t[i] + t[i ^ o]).collect();
            }
            let d_inv = 127.0 / amax;
            for kind in &mut kinds {
                for (k, &v) in x.iter().enumerate() {
                    let q = (v * d_inv).round();
                    kind[at + 16 + c0 % 128 + k] = if q.is_nan() { 0 } else { q as i8 as u8 };
                }
            }
            let d = 1.0 / d_inv;
            kinds[0][at + 4 * sub..at + 4 * sub + 2]
                .copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
            kinds[0][at + 4 * sub + 2..at + 4 * sub + 4]
                .copy_from_slice(&half::f16::from_f32(t[0]).to_le_bytes());
            kinds[1][at + 4 * sub..at + 4 * sub + 4].copy_from_slice(&d.to_le_bytes());
        }
    }
    kinds
}

/// Checks the matrix-layout blocks a kernel wrote (`file`, both kinds
/// with their spare blocks) of `rows` rows of `width` values it wrote.
fn assert_mmq_blocks(file: &Path, values: &[f32], rows: usize, width: usize, what: &str) {
    let got = std::fs::read(file).unwrap();
    let want = candle_q8_1_mmq(values, rows, width);
    let per_kind = want[0].len() + 128 * 144;
    assert_eq!(got.len(), 2 * per_kind, "{what}: blocks length");
    for (k, want) in want.iter().enumerate() {
        let got = &got[k * per_kind..k * per_kind + want.len()];
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!(
                "{what}: kind {k}, block {} byte {}: got {}, want {}",
                i / 144,
                i % 144,
                got[i],
                want[i]
            );
        }
    }
}

/// One decode-attention case: `positions[r]` is row r's position; the
/// rows share one cache (`shared`, positions consecutive from the first)
/// or have one each.
struct Case {
    n_kv: usize,
    group: usize,
    hd: usize,
    positions: Vec<u32>,
    shared: bool,
    window: Option<usize>,
    softcap: Option<f32>,
    f16: bool,
    device_positions: bool,
    /// RoPE for the queries (rotated by the kernel): `(n_dims, neox)`.
    rope: Option<(usize, bool)>,
}

/// The RoPE parameters the emulated tests use.
fn rope_params(n_dims: usize, neox: bool) -> RopeParams<'static> {
    RopeParams {
        n_dims,
        base: 10000.0,
        freq_scale: 1.0,
        mode: if neox {
            RopeMode::Neox
        } else {
            RopeMode::Normal
        },
        factors: None,
        magnitude: 1.0,
    }
}

/// Each position's cosines and sines, `[positions, n_dims / 2]`: the
/// angles the backends compute (in f64, rounded once).
fn angles(positions: &[u32], p: &RopeParams) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for &pos in positions {
        for inv in p.inv_freqs() {
            let theta = f64::from(pos) * f64::from(p.freq_scale) * inv;
            cos.push(theta.cos() as f32 * p.magnitude);
            sin.push(theta.sin() as f32 * p.magnitude);
        }
    }
    (cos, sin)
}

/// What the decode kernel stores before it attends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stores {
    /// Nothing: each row's key and value at its position are in its cache.
    Nothing,
    /// Each row's new key (rotated with the queries' RoPE) and value, at
    /// its position of its cache, where the files hold NaN.
    Keys,
    /// The same, each key head RMS-normed first (Gemma 3's key norm).
    NormedKeys,
}

/// Which attention kernel a case runs.
#[derive(Clone, Copy)]
enum Kernel {
    /// `decode_attention`; with `by_slots`, the kernel is handed each
    /// row's cache (stored here in reverse row order) by address instead
    /// of by stride; with `splits` above 1, each row's keys are split over
    /// that many blocks and `decode_attention_merge` weighs their results;
    /// `stores` says what the kernel stores first (only `by_slots`).
    Decode {
        by_slots: bool,
        splits: u32,
        stores: Stores,
    },
    /// `prefill_attention` for heads of up to `max_hd` values (one cache).
    Prefill { max_hd: usize },
}

fn attention_kernel(case: &Case, seed: u64, kernel: Kernel) {
    let (by_slots, splits, stores) = match kernel {
        Kernel::Decode {
            by_slots,
            splits,
            stores,
        } => (by_slots, splits, stores),
        Kernel::Prefill { .. } => (false, 1, Stores::Nothing),
    };
    assert!(
        stores == Stores::Nothing || by_slots,
        "stores need caches by address"
    );
    let dir = scratch(&format!(
        "attention-{seed}-{by_slots}-{splits}-{stores:?}-{}",
        case.positions.len()
    ));
    // What every run of the kernel is told: its splits, and the new keys
    // and values (set below).
    let mut env = vec![("EMU_SPLITS", splits.to_string())];
    let mut rng = Rng(seed);
    let (n_kv, hd) = (case.n_kv, case.hd);
    let n_heads = n_kv * case.group;
    let rows = case.positions.len();
    let max_seq = *case.positions.iter().max().unwrap() as usize + 3;
    let caches = if case.shared { 1 } else { rows };
    let per_cache = n_kv * max_seq * hd;
    // The kernel's layout: [cache][kv head][position][dim].
    let mut k = rng.f32s(caches * per_cache, -1.0, 1.0);
    let mut v = rng.f32s(caches * per_cache, -1.0, 1.0);
    let q = rng.f32s(rows * n_heads * hd, -1.0, 1.0);
    // Positions past a cache's last query are NaN: a kernel that let them
    // into a sum (even times 0) would show it.
    for c in 0..caches {
        let last = match case.shared {
            true => *case.positions.iter().max().unwrap() as usize,
            false => case.positions[c] as usize,
        };
        for h in 0..n_kv {
            let from = c * per_cache + (h * max_seq + last + 1) * hd;
            let to = c * per_cache + (h + 1) * max_seq * hd;
            k[from..to].fill(f32::NAN);
            v[from..to].fill(f32::NAN);
        }
    }
    let p = AttentionParams {
        n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        sliding_window: case.window,
        chunk: None,
        softcap: case.softcap,
        sinks: None,
        alibi: None,
        bidirectional: false,
    };
    let cpu = CpuBackend::new().unwrap();
    // With stores, each row's new key (normed, rotated) and value go into
    // the reference caches at its position, and the kernel's files hold
    // NaN there: it must attend to what it stores, not read it back.
    let mut kernel_kv = (k.clone(), v.clone());
    if stores != Stores::Nothing {
        let kv_width = n_kv * hd;
        let new_k = rng.f32s(rows * kv_width, -1.0, 1.0);
        let new_v = rng.f32s(rows * kv_width, -1.0, 1.0);
        // Rows at a stacked product's strides, which differ.
        let (k_pad, v_pad) = (5, 9);
        let padded = |t: &[f32], pad: usize| -> Vec<f32> {
            t.chunks(kv_width)
                .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(7.0, pad)))
                .collect()
        };
        env.push(("EMU_NEW_K", write(&dir, "new-k", &padded(&new_k, k_pad))));
        env.push(("EMU_NEW_V", write(&dir, "new-v", &padded(&new_v, v_pad))));
        env.push(("EMU_NEW_K_STRIDE", (kv_width + k_pad).to_string()));
        env.push(("EMU_NEW_V_STRIDE", (kv_width + v_pad).to_string()));
        let k_norm = Rng(seed + 11).f32s(hd, 0.5, 1.5);
        if stores == Stores::NormedKeys {
            env.push(("EMU_K_NORM", write(&dir, "k-norm", &k_norm)));
        }
        for (r, &pos) in case.positions.iter().enumerate() {
            let mut kr = new_k[r * kv_width..(r + 1) * kv_width].to_vec();
            if stores == Stores::NormedKeys {
                cpu.rms_norm_inplace(&mut kr, &k_norm, 1e-6, n_kv).unwrap();
            }
            if let Some((n_dims, neox)) = case.rope {
                let rp = rope_params(n_dims, neox);
                cpu.rope(&mut cpu.workspace(), &mut kr, n_kv, hd, &[pos], &rp)
                    .unwrap();
            }
            for h in 0..n_kv {
                let at = r * per_cache + (h * max_seq + pos as usize) * hd;
                let from = (r * n_kv + h) * hd;
                k[at..at + hd].copy_from_slice(&kr[h * hd..(h + 1) * hd]);
                v[at..at + hd].copy_from_slice(&new_v[from..from + hd]);
                kernel_kv.0[at..at + hd].fill(f32::NAN);
                kernel_kv.1[at..at + hd].fill(f32::NAN);
            }
        }
        env.push(("EMU_CACHES", dir.join("caches").to_str().unwrap().into()));
    }
    // The CPU backend: each cache's positions written row by row, in the
    // backend's [position][kv head * dim] rows; then each row attended.
    let cfg = KvCacheConfig {
        n_layers: 1,
        n_kv_heads: n_kv,
        head_dim: hd,
        max_seq_len: max_seq,
        dtype: if case.f16 { KvDtype::F16 } else { KvDtype::F32 },
        layer_shapes: None,
    };
    let mut cpu_caches: Vec<_> = (0..caches).map(|_| cpu.kv_cache(&cfg).unwrap()).collect();
    for (c, cache) in cpu_caches.iter_mut().enumerate() {
        let row_of = |t: &[f32], pos: usize| -> Vec<f32> {
            (0..n_kv)
                .flat_map(|h| {
                    let at = c * per_cache + (h * max_seq + pos) * hd;
                    t[at..at + hd].to_vec()
                })
                .collect()
        };
        let ks: Vec<f32> = (0..max_seq).flat_map(|pos| row_of(&k, pos)).collect();
        let vs: Vec<f32> = (0..max_seq).flat_map(|pos| row_of(&v, pos)).collect();
        let span = KvSpan {
            layer: 0,
            start_pos: 0,
        };
        cpu.kv_write(&mut cpu.workspace(), cache, span, &ks, &vs, 0..max_seq)
            .unwrap();
    }
    // The rows attended, each query head normed first with `q_norm` if
    // given (Gemma 3's query norm), then rotated.
    let reference = |q_norm: Option<&Vec<f32>>| -> Vec<f32> {
        let mut want = vec![0f32; q.len()];
        for (r, &pos) in case.positions.iter().enumerate() {
            let cache = &cpu_caches[if case.shared { 0 } else { r }];
            let width = n_heads * hd;
            let mut out = vec![0f32; width];
            let at = KvSpan {
                layer: 0,
                start_pos: pos as usize,
            };
            let mut qr = q[r * width..(r + 1) * width].to_vec();
            if let Some(w) = q_norm {
                cpu.rms_norm_inplace(&mut qr, w, 1e-6, n_heads).unwrap();
            }
            if let Some((n_dims, neox)) = case.rope {
                let rp = rope_params(n_dims, neox);
                cpu.rope(&mut cpu.workspace(), &mut qr, n_heads, hd, &[pos], &rp)
                    .unwrap();
            }
            cpu.attention(&mut cpu.workspace(), cache, at, &qr, 0..1, &p, &mut out)
                .unwrap();
            want[r * width..(r + 1) * width].copy_from_slice(&out);
        }
        want
    };
    let want = reference(None);
    // The kernel.
    let order = |t: &[f32]| -> Vec<f32> {
        match by_slots {
            true => t.chunks(per_cache).rev().flatten().copied().collect(),
            false => t.to_vec(),
        }
    };
    let (kernel_k, kernel_v) = (order(&kernel_kv.0), order(&kernel_kv.1));
    let (kf, vf) = if case.f16 {
        let half = |t: &[f32]| -> Vec<u16> {
            t.iter()
                .map(|&x| half::f16::from_f32(x).to_bits())
                .collect()
        };
        (
            write(&dir, "k", &half(&kernel_k)),
            write(&dir, "v", &half(&kernel_v)),
        )
    } else {
        (write(&dir, "k", &kernel_k), write(&dir, "v", &kernel_v))
    };
    let pos_file = if case.device_positions {
        write(&dir, "pos", &case.positions)
    } else {
        "-".to_string()
    };
    let out = dir.join("out");
    let dtype = if case.f16 { "f16" } else { "f32" };
    // The instance for the smallest largest head that fits.
    let decode_hd = [64, 128, 256].into_iter().find(|&m| hd <= m).unwrap();
    let (kernel, decode) = match kernel {
        Kernel::Decode { .. } => (format!("decode_attention_{dtype}_{decode_hd}"), true),
        Kernel::Prefill { max_hd } => (format!("prefill_attention_{dtype}_{max_hd}"), false),
    };
    let kernel = kernel.as_str();
    let mut args = vec![
        write(&dir, "q", &q),
        kf,
        vf,
        pos_file,
        out.to_str().unwrap().to_string(),
        rows.to_string(),
        n_heads.to_string(),
        n_kv.to_string(),
        hd.to_string(),
        max_seq.to_string(),
    ];
    // The prefill kernel reads one cache, without a row stride.
    if decode {
        args.push(match (case.shared, by_slots) {
            (true, _) => "0".to_string(),
            (false, false) => per_cache.to_string(),
            (false, true) => format!("-{per_cache}"),
        });
    }
    args.extend([
        p.scale.to_string(),
        case.softcap.unwrap_or(0.0).to_string(),
        case.window.unwrap_or(0).to_string(),
        case.positions[0].to_string(),
    ]);
    match case.rope {
        Some((n_dims, neox)) => {
            let (cos, sin) = angles(&case.positions, &rope_params(n_dims, neox));
            args.extend([
                write(&dir, "cos", &cos),
                write(&dir, "sin", &sin),
                n_dims.to_string(),
                u8::from(neox).to_string(),
            ]);
        }
        None => args.extend(["-", "-", "0", "0"].map(String::from)),
    }
    // With heads of whole blocks, the decode kernel's Q8_1 blocks too, and
    // either kernel's blocks in the matrix products' layout.
    let blocks = dir.join("blocks");
    let mmq = dir.join("mmq");
    let whole = hd % 32 == 0;
    if decode && whole {
        args.push(blocks.to_str().unwrap().to_string());
    }
    let mut first = env.clone();
    if whole {
        first.push(("EMU_MMQ", mmq.to_str().unwrap().to_string()));
    }
    let got = run_env(kernel, &args, &out, &first);
    assert_close(&got, &want, 1e-4, 1e-4, kernel);
    if whole {
        if decode {
            assert_blocks(&blocks, &got, kernel);
        }
        assert_mmq_blocks(&mmq, &got, rows, n_heads * hd, kernel);
    }
    // What the kernel stored: the reference caches (as the cache's type
    // holds them), and nothing else changed. The emulator runs blocks one
    // at a time, and in order the first block of each KV group (the one
    // that stores) runs before the others: in reverse, a block that read
    // the stored position back from the cache would read NaN.
    if stores != Stores::Nothing {
        let reversed = [&env[..], &[("EMU_REVERSE_BLOCKS", "1".to_string())]].concat();
        let got = run_env(kernel, &args, &out, &reversed);
        assert_close(
            &got,
            &want,
            1e-4,
            1e-4,
            &format!("{kernel}, blocks reversed"),
        );
        let stored = |t: &[f32]| -> Vec<f32> {
            t.iter()
                .map(|&x| match case.f16 {
                    true => half::f16::from_f32(x).to_f32(),
                    false => x,
                })
                .collect()
        };
        for (name, want) in [("k", stored(&k)), ("v", stored(&v))] {
            let file = dir.join(format!("caches.{name}"));
            let got: Vec<f32> = bytemuck::pod_collect_to_vec(&std::fs::read(file).unwrap());
            let got = order(&got);
            let what = format!("{kernel}: stored {name}");
            assert_eq!(got.len(), want.len(), "{what}: length");
            for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                // A key's last f32 bit may round either way to f16.
                let tol = if case.f16 { 1e-3 } else { 1e-6 };
                let same = (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * (1.0 + b.abs());
                assert!(same, "{what}[{i}]: got {a}, want {b}");
            }
        }
    }
    // Queries as strided rows (a stacked product's columns).
    let width = n_heads * hd;
    let stride = width + 7;
    let padded: Vec<f32> = q
        .chunks(width)
        .flat_map(|r| r.iter().copied().chain([9.0; 7]))
        .collect();
    args[0] = write(&dir, "q-strided", &padded);
    let strided = [&env[..], &[("EMU_Q_STRIDE", stride.to_string())]].concat();
    let what = format!("{kernel}, strided queries");
    assert_close(
        &run_env(kernel, &args, &out, &strided),
        &want,
        1e-4,
        1e-4,
        &what,
    );
    // Each query head normed before its rotation.
    let q_norm = Rng(seed + 7).f32s(hd, 0.5, 1.5);
    let normed = [&env[..], &[("EMU_Q_NORM", write(&dir, "q-norm", &q_norm))]].concat();
    args[0] = write(&dir, "q", &q);
    let what = format!("{kernel}, normed queries");
    let want = reference(Some(&q_norm));
    assert_close(
        &run_env(kernel, &args, &out, &normed),
        &want,
        1e-4,
        1e-4,
        &what,
    );
}

#[test]
#[ignore = "needs a C++20 compiler; cargo xtask test runs it where it finds one"]
fn decode_attention_matches_the_cpu() {
    let cases = [
        // SmolLM2's heads: 9 of 64 values over 3 KV heads, its RoPE; a
        // batch.
        Case {
            n_kv: 3,
            group: 3,
            hd: 64,
            positions: vec![0, 5, 40, 130],
            shared: false,
            window: None,
            softcap: None,
            f16: false,
            device_positions: true,
            rope: Some((64, false)),
        },
        // Gemma 3's: 4 of 256 over 1, neox RoPE, a sliding window, f16
        // caches.
        Case {
            n_kv: 1,
            group: 4,
            hd: 256,
            positions: vec![7, 33],
            shared: false,
            window: Some(16),
            softcap: None,
            f16: true,
            device_positions: true,
            rope: Some((256, true)),
        },
        // A chunk of one sequence (positions from pos_base), soft-capped,
        // odd head size.
        Case {
            n_kv: 2,
            group: 2,
            hd: 37,
            positions: vec![9, 10, 11],
            shared: true,
            window: None,
            softcap: Some(5.0),
            f16: false,
            device_positions: false,
            rope: None,
        },
        // One key visible (position 0, and a window of 1).
        Case {
            n_kv: 1,
            group: 1,
            hd: 1,
            positions: vec![0, 3],
            shared: false,
            window: Some(1),
            softcap: None,
            f16: true,
            device_positions: true,
            rope: None,
        },
        // Gemma 3's local layers past their 512-token window.
        Case {
            n_kv: 1,
            group: 4,
            hd: 256,
            positions: vec![600],
            shared: false,
            window: Some(512),
            softcap: None,
            f16: false,
            device_positions: true,
            rope: Some((256, true)),
        },
        // Heads of 96 values in the instance for 128 (lanes past the head
        // idle), f16 caches, soft-capped, neox RoPE, a batch.
        Case {
            n_kv: 2,
            group: 2,
            hd: 96,
            positions: vec![3, 70],
            shared: false,
            window: None,
            softcap: Some(20.0),
            f16: true,
            device_positions: true,
            rope: Some((96, true)),
        },
        // Partial rotation (the first 20 of 36 dimensions), a batch.
        Case {
            n_kv: 2,
            group: 1,
            hd: 36,
            positions: vec![4, 2, 9],
            shared: false,
            window: None,
            softcap: None,
            f16: false,
            device_positions: true,
            rope: Some((20, false)),
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let decode = |by_slots, stores| Kernel::Decode {
            by_slots,
            splits: 1,
            stores,
        };
        attention_kernel(case, 100 + i as u64, decode(false, Stores::Nothing));
        if !case.shared {
            attention_kernel(case, 100 + i as u64, decode(true, Stores::Nothing));
            // The step's keys and values stored by the kernel: keys normed
            // first in every other case.
            let stores = match i % 2 {
                0 => Stores::Keys,
                _ => Stores::NormedKeys,
            };
            attention_kernel(case, 100 + i as u64, decode(true, stores));
        }
    }
}

/// Long caches whose keys are split over several blocks per row and head
/// (flash-decoding), merged by `decode_attention_merge`: splits with every
/// share of keys, and splits that see none (a short row beside long ones,
/// or a window).
#[test]
#[ignore = "needs a C++20 compiler; cargo xtask test runs it where it finds one"]
fn split_decode_attention_matches_the_cpu() {
    let smollm2 = Case {
        n_kv: 3,
        group: 3,
        hd: 64,
        positions: vec![1300, 5, 700],
        shared: false,
        window: None,
        softcap: None,
        f16: false,
        device_positions: true,
        rope: Some((64, false)),
    };
    let gemma3 = Case {
        n_kv: 1,
        group: 4,
        hd: 256,
        positions: vec![1100],
        shared: false,
        window: Some(512),
        softcap: Some(30.0),
        f16: true,
        device_positions: true,
        rope: Some((256, true)),
    };
    let decode = |by_slots, splits, stores| Kernel::Decode {
        by_slots,
        splits,
        stores,
    };
    for (i, (case, splits)) in [(&smollm2, 4), (&smollm2, 3), (&gemma3, 3)]
        .into_iter()
        .enumerate()
    {
        let seed = 200 + i as u64;
        attention_kernel(case, seed, decode(false, splits, Stores::Nothing));
    }
    // Caches by address (the split path does not depend on it), and the
    // step's keys and values stored by split 0's blocks.
    attention_kernel(&smollm2, 200, decode(true, 4, Stores::Nothing));
    attention_kernel(&smollm2, 201, decode(true, 3, Stores::Keys));
    attention_kernel(&gemma3, 202, decode(true, 3, Stores::NormedKeys));
}

/// The driver's arguments for an attention kernel over one KV head (files
/// written to `dir`, output `dir/out`): `q`, keys and values `kv`,
/// positions `pos` (a file, or "-"), `(rows, n_heads, head_dim, max_seq)`,
/// the decode kernel's cache stride (`None`: the prefill kernel's
/// arguments), scale 1 / sqrt(head_dim), no soft-cap, window or RoPE,
/// from position 0.
fn plain_attention_args(
    dir: &Path,
    q: &[f32],
    kv: &[Vec<f32>; 2],
    pos: String,
    (rows, n_heads, hd, max_seq): (usize, usize, usize, usize),
    stride: Option<usize>,
) -> Vec<String> {
    let mut args = vec![
        write(dir, "q", q),
        write(dir, "k", &kv[0]),
        write(dir, "v", &kv[1]),
        pos,
        dir.join("out").to_str().unwrap().to_string(),
        rows.to_string(),
        n_heads.to_string(),
        "1".into(),
        hd.to_string(),
        max_seq.to_string(),
    ];
    args.extend(stride.map(|s| s.to_string()));
    args.push((1.0 / (hd as f32).sqrt()).to_string());
    args.extend(["0", "0", "0", "-", "-", "0", "0"].map(String::from));
    args
}

/// A row whose position is past its cache is NaN (values and blocks of
/// both layouts), split or not, and the other rows are the same split or not: two rows
/// of one KV head, caches of 1600 positions, the kernel told 1200.
#[test]
#[ignore = "needs a C++20 compiler; cargo xtask test runs it where it finds one"]
fn split_rows_past_the_cache_are_nan() {
    let (n_heads, hd, real_seq, max_seq) = (4usize, 64usize, 1600usize, 1200usize);
    let positions: [u32; 2] = [1100, 1500];
    let mut rng = Rng(300);
    let per_cache = real_seq * hd;
    let dir = scratch("split-past-the-cache");
    let q = rng.f32s(2 * n_heads * hd, -1.0, 1.0);
    let kv = [
        rng.f32s(2 * per_cache, -1.0, 1.0),
        rng.f32s(2 * per_cache, -1.0, 1.0),
    ];
    let pos = write(&dir, "pos", &positions);
    let mut args = plain_attention_args(
        &dir,
        &q,
        &kv,
        pos,
        (2, n_heads, hd, max_seq),
        Some(per_cache),
    );
    args.push(dir.join("blocks").to_str().unwrap().to_string());
    let width = n_heads * hd;
    let mmq = dir.join("mmq");
    let mut results = Vec::new();
    for splits in [1, 3] {
        let env = [
            ("EMU_SPLITS", splits.to_string()),
            ("EMU_MMQ", mmq.to_str().unwrap().to_string()),
        ];
        let got = run_env("decode_attention_f32_64", &args, &dir.join("out"), &env);
        assert!(
            got[..width].iter().all(|x| x.is_finite()),
            "splits {splits}: row 0"
        );
        assert!(
            got[width..].iter().all(|x| x.is_nan()),
            "splits {splits}: row 1"
        );
        let blocks = std::fs::read(dir.join("blocks")).unwrap();
        let per_row = width / 32 * 36;
        for b in blocks[per_row..].chunks(36) {
            let d = half::f16::from_le_bytes([b[0], b[1]]);
            assert!(d.is_nan(), "splits {splits}: row 1's blocks");
        }
        assert_mmq_blocks(&mmq, &got, 2, width, &format!("splits {splits}"));
        results.push(got);
    }
    assert_close(
        &results[1][..width],
        &results[0][..width],
        1e-5,
        1e-6,
        "split row 0",
    );
}

/// The tiled kernel's rows past the cache are NaN too (values, and blocks
/// in the matrix products' layout), beside rows that are not: a chunk of
/// 20 rows from position 0 over a cache of 10 positions, in blocks of 16
/// rows (one with both kinds, one past the cache).
#[test]
#[ignore = "needs a C++20 compiler; cargo xtask test runs it where it finds one"]
fn prefill_rows_past_the_cache_are_nan() {
    let (rows, n_heads, hd, max_seq) = (20usize, 4usize, 64usize, 10usize);
    let mut rng = Rng(310);
    let dir = scratch("prefill-past-the-cache");
    let out = dir.join("out");
    let mmq = dir.join("mmq");
    let q = rng.f32s(rows * n_heads * hd, -1.0, 1.0);
    let kv = [
        rng.f32s(max_seq * hd, -1.0, 1.0),
        rng.f32s(max_seq * hd, -1.0, 1.0),
    ];
    let args = plain_attention_args(
        &dir,
        &q,
        &kv,
        "-".into(),
        (rows, n_heads, hd, max_seq),
        None,
    );
    let env = [("EMU_MMQ", mmq.to_str().unwrap().to_string())];
    let got = run_env("prefill_attention_f32_64", &args, &out, &env);
    let width = n_heads * hd;
    let (seen, past) = got.split_at(max_seq * width);
    assert!(seen.iter().all(|x| x.is_finite()), "rows in the cache");
    assert!(past.iter().all(|x| x.is_nan()), "rows past the cache");
    assert_mmq_blocks(&mmq, &got, rows, width, "prefill_attention_f32_64");
}

/// Positions `start..start + n`, a chunk of one sequence.
fn chunk(start: u32, n: u32) -> Vec<u32> {
    (start..start + n).collect()
}

#[test]
#[ignore = "needs a C++20 compiler; cargo xtask test runs it where it finds one"]
fn prefill_attention_matches_the_cpu() {
    let cases = [
        // SmolLM2's heads and RoPE: 45 rows (blocks of 16, the last part
        // full) after 5 cached tokens, so a block's keys span two tiles.
        (
            Case {
                n_kv: 3,
                group: 3,
                hd: 64,
                positions: chunk(5, 45),
                shared: true,
                window: None,
                softcap: None,
                f16: false,
                device_positions: false,
                rope: Some((64, false)),
            },
            64,
        ),
        // Gemma 3's: 4 heads of 256 over 1, neox RoPE, f16 caches, a
        // window that leaves the early keys of a tile out; positions from
        // the device.
        (
            Case {
                n_kv: 1,
                group: 4,
                hd: 256,
                positions: chunk(30, 21),
                shared: true,
                window: Some(16),
                softcap: None,
                f16: true,
                device_positions: true,
                rope: Some((256, true)),
            },
            256,
        ),
        // Heads of 128, soft-capped, f16, no RoPE; the first row at 0.
        (
            Case {
                n_kv: 2,
                group: 2,
                hd: 128,
                positions: chunk(0, 19),
                shared: true,
                window: None,
                softcap: Some(5.0),
                f16: true,
                device_positions: false,
                rope: None,
            },
            128,
        ),
        // Heads of 36 in the 64 kernel (lanes past the head idle), partial
        // rotation, a window of 1.
        (
            Case {
                n_kv: 2,
                group: 1,
                hd: 36,
                positions: chunk(2, 17),
                shared: true,
                window: Some(1),
                softcap: None,
                f16: false,
                device_positions: true,
                rope: Some((20, false)),
            },
            64,
        ),
    ];
    for (i, (case, max_hd)) in cases.iter().enumerate() {
        attention_kernel(case, 200 + i as u64, Kernel::Prefill { max_hd: *max_hd });
    }
}

/// The driver's arguments for `add_rms_norm_f32`: x, y and w written to
/// `dir`, the output file, rows, width and epsilon 1e-6.
fn norm_args(
    dir: &Path,
    [x, y, w]: [&[f32]; 3],
    out: &Path,
    rows: usize,
    width: usize,
) -> Vec<String> {
    vec![
        write(dir, "x", x),
        write(dir, "y", y),
        write(dir, "w", w),
        out.to_str().unwrap().to_string(),
        rows.to_string(),
        width.to_string(),
        "1e-6".to_string(),
    ]
}

#[test]
#[ignore = "needs a C++20 compiler; cargo xtask test runs it where it finds one"]
fn add_rms_norm_matches_the_cpu() {
    let cpu = CpuBackend::new().unwrap();
    let mut rng = Rng(7);
    // SmolLM2's and Gemma 3's widths, one past a block's threads, and one
    // past the values the threads keep in registers (2048).
    for (rows, width) in [(1, 576), (3, 640), (2, 300), (1, 1), (2, 2336)] {
        let x = rng.f32s(rows * width, -3.0, 3.0);
        let y = rng.f32s(rows * width, -2.0, 2.0);
        let w = rng.f32s(width, 0.5, 1.5);
        let (mut sum, mut norm) = (x.clone(), vec![0f32; rows * width]);
        cpu.add_rms_norm(&mut sum, &y, &w, 1e-6, rows, width, &mut norm)
            .unwrap();
        let dir = scratch(&format!("norm-{width}"));
        let out = dir.join("out");
        let blocks = dir.join("blocks");
        let mut args = norm_args(&dir, [&x, &y, &w], &out, rows, width);
        // Rows of whole blocks: the norms' blocks too.
        if width % 32 == 0 {
            args.push(blocks.to_str().unwrap().to_string());
        }
        let got = run("add_rms_norm_f32", &args, &out);
        let (got_sum, got_norm) = got.split_at(rows * width);
        assert_close(got_sum, &sum, 1e-6, 1e-6, "add_rms_norm sums");
        assert_close(got_norm, &norm, 1e-5, 1e-5, "add_rms_norm norms");
        if width % 32 == 0 {
            assert_blocks(&blocks, got_norm, "add_rms_norm blocks");
        }
        // With y normed first.
        let yw = rng.f32s(width, 0.5, 1.5);
        let (mut sum, mut yn, mut norm) = (x.clone(), y.clone(), vec![0f32; rows * width]);
        cpu.norm_add_rms_norm(&mut sum, &mut yn, &yw, &w, 1e-6, rows, width, &mut norm)
            .unwrap();
        let env = [("EMU_Y_NORM", write(&dir, "yw", &yw))];
        let got = run_env("add_rms_norm_f32", &args, &out, &env);
        let (got_sum, got_norm) = got.split_at(rows * width);
        assert_close(got_sum, &sum, 1e-5, 1e-5, "norm_add_rms_norm sums");
        assert_close(got_norm, &norm, 1e-5, 1e-5, "norm_add_rms_norm norms");
    }
    // More rows: the norms in the matrix products' layout. SmolLM2's width
    // (padded to 1024), Gemma 3's (640), one of whole 512s, and one past
    // the values the threads keep, with a row of zeros.
    for (rows, width) in [(9, 576), (12, 640), (10, 1536), (9, 2336 + 32)] {
        let mut x = rng.f32s(rows * width, -3.0, 3.0);
        let mut y = rng.f32s(rows * width, -2.0, 2.0);
        x[width..2 * width].fill(0.0);
        y[width..2 * width].fill(0.0);
        let w = rng.f32s(width, 0.5, 1.5);
        let dir = scratch(&format!("norm-mmq-{width}"));
        let (out, mmq) = (dir.join("out"), dir.join("mmq"));
        let args = norm_args(&dir, [&x, &y, &w], &out, rows, width);
        let env = [("EMU_MMQ", mmq.to_str().unwrap().to_string())];
        let got = run_env("add_rms_norm_f32", &args, &out, &env);
        let got_norm = &got[rows * width..];
        let what = format!("add_rms_norm matrix blocks, {rows} x {width}");
        assert_mmq_blocks(&mmq, got_norm, rows, width, &what);
    }
}

#[test]
#[ignore = "needs a C++20 compiler; cargo xtask test runs it where it finds one"]
fn gated_units_match_the_cpu() {
    let cpu = CpuBackend::new().unwrap();
    let mut rng = Rng(11);
    // Past one block of 1024 threads.
    let n = 2500;
    let g = rng.f32s(n, -6.0, 6.0);
    let u = rng.f32s(n, -2.0, 2.0);
    let dir = scratch("gated");
    let out = dir.join("out");
    let args = vec![
        write(&dir, "g", &g),
        write(&dir, "u", &u),
        out.to_str().unwrap().to_string(),
    ];
    let mut swiglu = g.clone();
    cpu.swiglu_inplace(&mut swiglu, &u, n).unwrap();
    assert_close(
        &run("swiglu_f32", &args, &out),
        &swiglu,
        1e-5,
        1e-5,
        "swiglu",
    );
    let mut geglu = g.clone();
    cpu.geglu_inplace(&mut geglu, &u, n).unwrap();
    assert_close(&run("geglu_f32", &args, &out), &geglu, 1e-5, 1e-5, "geglu");
    // Whole blocks (past one block of threads): the results' blocks too.
    let whole = 2048 + 384;
    let blocks = dir.join("blocks");
    let args = vec![
        write(&dir, "g", &g[..whole]),
        write(&dir, "u", &u[..whole]),
        out.to_str().unwrap().to_string(),
        blocks.to_str().unwrap().to_string(),
    ];
    for kernel in ["swiglu_f32", "geglu_f32"] {
        let got = run(kernel, &args, &out);
        assert_blocks(&blocks, &got, kernel);
    }
    // Gate and up as the halves of a stacked product's rows: `rows` rows of
    // `width`, row r's gate at r * 2 * width and its up `width` after; with
    // `mmq`, the results' blocks in the matrix products' layout there too.
    let strided = |kernel: &str, rows: usize, width: usize, mmq: Option<&Path>| {
        let stacked: Vec<f32> = g[..rows * width]
            .chunks(width)
            .zip(u[..rows * width].chunks(width))
            .flat_map(|(a, b)| a.iter().chain(b).copied())
            .collect();
        let args = vec![
            write(&dir, "gate-stacked", &stacked),
            write(&dir, "up-stacked", &stacked[width..]),
            out.to_str().unwrap().to_string(),
        ];
        let mut env = vec![
            ("EMU_N", (rows * width).to_string()),
            ("EMU_WIDTH", width.to_string()),
            ("EMU_GATE_STRIDE", (2 * width).to_string()),
            ("EMU_UP_STRIDE", (2 * width).to_string()),
        ];
        if let Some(mmq) = mmq {
            env.push(("EMU_MMQ", mmq.to_str().unwrap().to_string()));
        }
        run_env(kernel, &args, &out, &env)
    };
    let (rows, width) = (3, 800);
    let got = strided("swiglu_f32", rows, width, None);
    assert_close(&got, &swiglu[..rows * width], 1e-5, 1e-5, "swiglu, strided");
    // More rows, their results in the matrix products' layout: 9 rows of
    // 160 (padded to 512), 2 blocks of threads.
    let (rows, width) = (9, 160);
    let mmq = dir.join("mmq");
    for kernel in ["swiglu_f32", "geglu_f32"] {
        let got = strided(kernel, rows, width, Some(&mmq));
        let what = format!("{kernel} matrix blocks");
        assert_mmq_blocks(&mmq, &got, rows, width, &what);
    }
}

#[test]
#[ignore = "needs a C++20 compiler; cargo xtask test runs it where it finds one"]
fn rope_store_matches_the_cpu() {
    let cpu = CpuBackend::new().unwrap();
    let mut rng = Rng(13);
    // (slots, kv heads, head_dim, max_seq, n_dims, neox, first slot,
    // positions, f16, one slot: every row to the first slot, a chunk of
    // one sequence)
    let cases = [
        (4, 3, 64, 40, 64, false, 1, vec![0u32, 17, 39], false, false),
        (2, 1, 256, 9, 256, true, 0, vec![8, 3], true, false),
        (3, 2, 36, 5, 20, true, 2, vec![4], false, false),
        (1, 1, 2, 3, 2, false, 0, vec![1], true, false),
        (3, 3, 64, 30, 64, false, 1, chunk(4, 21), false, true),
        (2, 1, 256, 12, 256, true, 1, chunk(0, 12), true, true),
    ];
    // Each case plain, then with every key head normed first (Gemma 3's
    // key norm).
    let cases = cases
        .iter()
        .flat_map(|c| [(c.clone(), false), (c.clone(), true)]);
    for ((slots, n_kv, hd, max_seq, n_dims, neox, slot0, positions, f16, one_slot), normed) in cases
    {
        let rows = positions.len();
        let rp = rope_params(n_dims, neox);
        let k_norm = normed.then(|| rng.f32s(hd, 0.5, 1.5));
        // Keys, then values.
        let v_off = slots * n_kv * max_seq * hd;
        let cache = rng.f32s(2 * v_off, -1.0, 1.0);
        let k = rng.f32s(rows * n_kv * hd, -1.0, 1.0);
        let v = rng.f32s(rows * n_kv * hd, -1.0, 1.0);
        // The CPU backend's rotation, placed as the kernel must place it,
        // and the values as they are.
        let mut want: Vec<f32> = match f16 {
            true => cache
                .iter()
                .map(|&x| half::f16::from_f32(x).to_f32())
                .collect(),
            false => cache.clone(),
        };
        let mut rotated = k.clone();
        if let Some(w) = &k_norm {
            cpu.rms_norm_inplace(&mut rotated, w, 1e-6, rows * n_kv)
                .unwrap();
        }
        cpu.rope(
            &mut cpu.workspace(),
            &mut rotated,
            n_kv,
            hd,
            &positions,
            &rp,
        )
        .unwrap();
        for (r, &pos) in positions.iter().enumerate() {
            for h in 0..n_kv {
                let slot = slot0 + if one_slot { 0 } else { r };
                let at = ((slot * n_kv + h) * max_seq + pos as usize) * hd;
                for d in 0..hd {
                    let src = (r * n_kv + h) * hd + d;
                    for (dst, x) in [(at + d, rotated[src]), (v_off + at + d, v[src])] {
                        want[dst] = if f16 {
                            half::f16::from_f32(x).to_f32()
                        } else {
                            x
                        };
                    }
                }
            }
        }
        let dir = scratch(&format!("rope-store-{hd}-{normed}-{rows}"));
        let mut norm_env: Vec<(&str, String)> = match &k_norm {
            Some(w) => vec![("EMU_K_NORM", write(&dir, "k-norm", w))],
            None => Vec::new(),
        };
        if one_slot {
            norm_env.push(("EMU_SLOT_STEP", "0".to_string()));
        }
        let cache_file = if f16 {
            let bits: Vec<u16> = cache
                .iter()
                .map(|&x| half::f16::from_f32(x).to_bits())
                .collect();
            write(&dir, "cache", &bits)
        } else {
            write(&dir, "cache", &cache)
        };
        let (cos, sin) = angles(&positions, &rp);
        let out = dir.join("out");
        let args = vec![
            cache_file,
            write(&dir, "k", &k),
            write(&dir, "v", &v),
            write(&dir, "pos", &positions),
            write(&dir, "cos", &cos),
            write(&dir, "sin", &sin),
            out.to_str().unwrap().to_string(),
            rows.to_string(),
            slots.to_string(),
            n_kv.to_string(),
            hd.to_string(),
            max_seq.to_string(),
            n_dims.to_string(),
            u8::from(neox).to_string(),
            slot0.to_string(),
        ];
        let kernel = if f16 {
            "rope_store_f16"
        } else {
            "rope_store_f32"
        };
        // f16 stores may round the other way after a last-bit difference.
        let tol = if f16 { 1e-3 } else { 1e-6 };
        assert_close(
            &run_env(kernel, &args, &out, &norm_env),
            &want,
            tol,
            tol,
            kernel,
        );
        // Keys and values as strided rows (a stacked product's columns).
        let width = n_kv * hd;
        let pad = |t: &[f32], extra: usize| -> Vec<f32> {
            t.chunks(width)
                .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(9.0, extra)))
                .collect()
        };
        let mut strided = args.clone();
        strided[1] = write(&dir, "k-strided", &pad(&k, 5));
        strided[2] = write(&dir, "v-strided", &pad(&v, 3));
        let mut env = norm_env.clone();
        env.extend([
            ("EMU_K_STRIDE", (width + 5).to_string()),
            ("EMU_V_STRIDE", (width + 3).to_string()),
        ]);
        let what = format!("{kernel}, strided rows");
        assert_close(
            &run_env(kernel, &strided, &out, &env),
            &want,
            tol,
            tol,
            &what,
        );
        // The same rows, their slots named one by one (a batch's).
        if one_slot {
            continue;
        }
        let mut args = args;
        args.push("by-slots".to_string());
        let what = format!("{kernel} by slots");
        let got = run_env(kernel, &args, &out, &norm_env);
        assert_close(&got, &want, tol, tol, &what);
    }
}

#[test]
#[ignore = "needs a C++20 compiler; cargo xtask test runs it where it finds one"]
fn rope_angles_match_the_host() {
    // SmolLM2's and Gemma 3's (local and global bases, 256 dimensions),
    // positions up to far past any context used.
    let positions: Vec<u32> = vec![0, 1, 7, 255, 4096, 131_071];
    // Llama 3.1-like frequency factors (1 to 8) for 64 dimensions.
    let factors: Vec<f32> = (0..32).map(|i| 1.0 + 7.0 * i as f32 / 31.0).collect();
    // (The last with LongRoPE's magnitude.)
    for (n_dims, base, factors, scale, magnitude) in [
        (64, 100_000.0f32, None, 1.0f32, 1.0f32),
        (256, 10_000.0, None, 1.0, 1.0),
        (256, 1_000_000.0, None, 0.125, 1.0),
        (2, 10_000.0, None, 1.0, 1.0),
        (64, 500_000.0, Some(&factors[..]), 1.0, 1.0),
        (64, 10_000.0, Some(&factors[..]), 1.0, 1.190_238),
    ] {
        let rp = RopeParams {
            base,
            freq_scale: scale,
            factors,
            magnitude,
            ..rope_params(n_dims, false)
        };
        let (cos, sin) = angles(&positions, &rp);
        let dir = scratch(&format!("angles-{n_dims}-{base}"));
        let out = dir.join("out");
        let inv: Vec<f64> = rp.inv_freqs().collect();
        let args = vec![
            write(&dir, "pos", &positions),
            out.to_str().unwrap().to_string(),
            n_dims.to_string(),
            write(&dir, "inv", &inv),
            scale.to_string(),
            magnitude.to_string(),
        ];
        let got = run("rope_angles_f32", &args, &out);
        // The same double-precision arithmetic, rounded once: equal.
        let want: Vec<f32> = cos.into_iter().chain(sin).collect();
        assert_eq!(got, want, "{n_dims} dimensions, base {base}");
    }
}
