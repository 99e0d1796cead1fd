//! Matmul throughput on the shapes of the real models.
//!
//! - `cpu_bandwidth/copy_256MiB`: a 256 MiB copy split over the threads; its
//!   bytes moved (read + written) per second is the machine's memory
//!   bandwidth, the yardstick for matrix-vector products.
//!   `cpu_bandwidth/read_256MiB` (a parallel sum) gives the read-only rate,
//!   closer to what a matrix-vector product does.
//! - `cpu_matvec/...`: one token (decode), throughput in weight bytes
//!   streamed.
//! - `cpu_prefill/...`: 512 tokens, throughput in elements (report GFLOP/s
//!   as 2 * elements / s).
//!
//! After criterion's own output, a summary table gives each matrix-vector
//! kernel's GB/s twice: "hot", one matrix multiplied again and again (the
//! small ones then sit in cache, so this is the kernel's compute rate), and
//! "streamed", a different copy of the matrix each call, cycling through at
//! least 96 MiB of them (as a decode step reads its layers, from memory),
//! the latter also as a fraction of the copy and read bandwidth; then each
//! prefill's GFLOP/s (medians of a short timed run). This machine's
//! bandwidth drifts by up to 2x within minutes (other guests on the host),
//! so the fractions are paired: each of [`ROUNDS`] rounds times a copy, a
//! read and the streamed kernel back to back, and the table gives the
//! medians of the per-round figures and ratios. Threads: `REALM_BENCH_THREADS`
//! (default 2); `REALM_BENCH_ONLY=q8_0/49152` runs only the cases whose name
//! contains the string.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use realm_compute_cpu::{CpuBackend, CpuConfig};
use realm_core::backend::{BackendCore, MatMulOps};
use realm_core::{GgmlType, TensorView};

/// Decode shapes `(type, rows, cols)`: SmolLM2-135M (Q4_1 layers, Q8_0
/// output), Gemma 3 270M (Q5_0/Q4_K/Q6_K layers, Q8_0 output) and
/// gpt-oss-20b's MXFP4 experts, the lattice types on Gemma's shape and
/// SmolLM2's up projection in F16. k-quants need 256-multiples, so Gemma's
/// 640-wide inputs only appear in Q5_0/Q8_0.
const DECODE: &[(GgmlType, usize, usize)] = &[
    (GgmlType::Q4_1, 576, 576),
    (GgmlType::Q4_1, 1536, 576),
    (GgmlType::Q4_1, 576, 1536),
    (GgmlType::Q8_0, 49152, 576),
    (GgmlType::Q5_0, 2048, 640),
    (GgmlType::Q5_0, 640, 2048),
    (GgmlType::Q4_K, 640, 2048),
    (GgmlType::Q6_K, 640, 2048),
    (GgmlType::Q4_0, 2048, 640),
    (GgmlType::Q8_0, 2048, 640),
    (GgmlType::Q8_0, 262144, 640),
    (GgmlType::MXFP4, 2880, 2880),
    (GgmlType::IQ2_XXS, 640, 2048),
    (GgmlType::IQ3_S, 640, 2048),
    (GgmlType::IQ1_S, 640, 2048),
    (GgmlType::IQ1_M, 640, 2048),
    (GgmlType::F16, 1536, 576),
];

/// Prefill shapes, 512 tokens (the float ones SmolLM2's up projection).
const PREFILL: &[(GgmlType, usize, usize)] = &[
    (GgmlType::Q4_1, 1536, 576),
    (GgmlType::Q4_1, 576, 1536),
    (GgmlType::Q8_0, 576, 576),
    (GgmlType::Q5_0, 2048, 640),
    (GgmlType::Q4_K, 640, 2048),
    (GgmlType::Q6_K, 640, 2048),
    (GgmlType::MXFP4, 2880, 2880),
    (GgmlType::IQ2_XXS, 640, 2048),
    (GgmlType::IQ3_S, 640, 2048),
    (GgmlType::F16, 1536, 576),
    (GgmlType::BF16, 1536, 576),
];
const PREFILL_TOKENS: usize = 512;

/// Deterministic filler bytes with sane f16 scales (every block's first two
/// bytes, or the k-quant super-scale fields, are set to a small float).
fn weights(t: GgmlType, rows: usize, cols: usize) -> Vec<u64> {
    let bytes = t.row_bytes(cols as u64).unwrap() as usize * rows;
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut words: Vec<u64> = (0..bytes.div_ceil(8))
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        })
        .collect();
    let data: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    let fields: &[usize] = match t {
        GgmlType::Q6_K => &[208],
        GgmlType::Q3_K => &[108],
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        // (MXFP4's scale is one exponent byte.)
        GgmlType::MXFP4 => &[],
        _ => &[0],
    };
    for block in data[..bytes].chunks_exact_mut(t.type_size()) {
        for &f in fields {
            block[f..f + 2].copy_from_slice(&scale);
        }
        if t == GgmlType::MXFP4 {
            block[0] = 121; // 2^-7
        }
    }
    words
}

struct Case {
    t: GgmlType,
    rows: usize,
    cols: usize,
    words: Vec<u64>,
    shape: [u64; 2],
}

/// Bytes of weights the streamed matrix-vector runs cycle through: well
/// past this machine's 32 MiB L3.
const STREAM_BYTES: usize = 96 << 20;

impl Case {
    fn new(t: GgmlType, rows: usize, cols: usize) -> Self {
        Self {
            t,
            rows,
            cols,
            words: weights(t, rows, cols),
            shape: [cols as u64, rows as u64],
        }
    }
    fn bytes(&self) -> usize {
        self.t.row_bytes(self.cols as u64).unwrap() as usize * self.rows
    }
    fn view(&self) -> TensorView<'_> {
        let data = &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.bytes()];
        TensorView::new("w", self.t, &self.shape, data).unwrap()
    }
    /// `copies` matrices of this case's shape, back to back in one
    /// allocation.
    fn copies(&self, copies: usize) -> Vec<u64> {
        weights(self.t, self.rows * copies, self.cols)
    }
    fn name(&self) -> String {
        format!("{}/{}x{}", self.t, self.rows, self.cols)
    }
}

/// Rounds of the paired bandwidth and streamed-kernel measurement.
const ROUNDS: usize = 9;

/// The median of `v` (not empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds per call of `f` over about `budget`.
fn median_secs(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut times = Vec::new();
    while start.elapsed() < budget || times.len() < 5 {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn parallel_copy(pool: &rayon::ThreadPool, src: &[u64], dst: &mut [u64]) {
    use rayon::prelude::*;
    let chunk = src.len().div_ceil(pool.current_num_threads() * 4);
    pool.install(|| {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s))
    });
}

fn parallel_sum(pool: &rayon::ThreadPool, src: &[u64]) -> u64 {
    use rayon::prelude::*;
    let chunk = src.len().div_ceil(pool.current_num_threads() * 4);
    pool.install(|| {
        src.par_chunks(chunk)
            .map(|s| s.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
            .reduce(|| 0, u64::wrapping_add)
    })
}

/// One matrix-vector line of the summary: GB/s hot and streamed, and the
/// streamed rate over the copy and read bandwidth of the same rounds.
struct Row {
    name: String,
    bytes: f64,
    hot: f64,
    streamed: f64,
    of_copy: f64,
    of_read: f64,
}

fn main() {
    let threads: usize = std::env::var("REALM_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let be = CpuBackend::with_config(CpuConfig { threads, isa: None }).expect("backend");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut c = Criterion::default().configure_from_args();
    let summary_budget = Duration::from_millis(400);

    // Memory bandwidth: copy 256 MiB.
    let n_words = 32 << 20;
    let src: Vec<u64> = (0..n_words as u64).collect();
    let mut dst = vec![0u64; n_words];
    let copy_bytes = 2 * n_words * 8;
    {
        let mut g = c.benchmark_group("cpu_bandwidth");
        g.throughput(Throughput::Bytes(copy_bytes as u64));
        g.sample_size(10);
        g.bench_function("copy_256MiB", |b| {
            b.iter(|| parallel_copy(&pool, &src, &mut dst))
        });
        g.throughput(Throughput::Bytes(copy_bytes as u64 / 2));
        g.bench_function("read_256MiB", |b| {
            b.iter(|| black_box(parallel_sum(&pool, &src)))
        });
        g.finish();
    }
    let mut copy_gbs = || {
        let t = Instant::now();
        parallel_copy(&pool, &src, &mut dst);
        copy_bytes as f64 / t.elapsed().as_secs_f64() / 1e9
    };
    let read_gbs = || {
        let t = Instant::now();
        black_box(parallel_sum(&pool, &src));
        copy_bytes as f64 / 2.0 / t.elapsed().as_secs_f64() / 1e9
    };
    let (bw, read_bw) = (
        median((0..ROUNDS).map(|_| copy_gbs()).collect()),
        median((0..ROUNDS).map(|_| read_gbs()).collect()),
    );

    let mut ws = be.workspace();
    let mut rows_out = Vec::new();
    let only = std::env::var("REALM_BENCH_ONLY").unwrap_or_default();
    for &(t, m, k) in DECODE {
        let case = Case::new(t, m, k);
        if !case.name().contains(&only) {
            continue;
        }
        let view = case.view();
        let w = be.weight(&view).unwrap();
        let x: Vec<f32> = (0..k).map(|i| (i as f32 * 0.1).sin()).collect();
        let mut out = vec![0.0f32; m];
        let mut g = c.benchmark_group("cpu_matvec");
        g.throughput(Throughput::Bytes(case.bytes() as u64));
        g.bench_function(case.name(), |b| {
            b.iter(|| be.matmul(&mut ws, &w, black_box(&x), 1, &mut out).unwrap())
        });
        g.finish();
        let hot = median_secs(summary_budget, || {
            be.matmul(&mut ws, &w, &x, 1, &mut out).unwrap()
        });
        let copies = STREAM_BYTES.div_ceil(case.bytes());
        let words = case.copies(copies);
        let data: &[u8] = bytemuck::cast_slice(&words);
        let views: Vec<TensorView<'_>> = data
            .chunks_exact(case.bytes())
            .take(copies)
            .map(|d| TensorView::new("w", case.t, &case.shape, d).unwrap())
            .collect();
        let ws_copies: Vec<_> = views.iter().map(|v| be.weight(v).unwrap()).collect();
        let mut streamed_gbs = |ws: &mut _| {
            let secs = median_secs(summary_budget / 4, || {
                for w in &ws_copies {
                    be.matmul(ws, w, &x, 1, &mut out).unwrap();
                }
            }) / copies as f64;
            case.bytes() as f64 / secs / 1e9
        };
        let mut rounds = Vec::new();
        for _ in 0..ROUNDS {
            let (c, r) = (copy_gbs(), read_gbs());
            let k = streamed_gbs(&mut ws);
            rounds.push((k, k / c, k / r));
        }
        let col = |f: fn(&(f64, f64, f64)) -> f64| median(rounds.iter().map(f).collect());
        rows_out.push(Row {
            name: case.name(),
            bytes: case.bytes() as f64,
            hot: case.bytes() as f64 / hot / 1e9,
            streamed: col(|r| r.0),
            of_copy: col(|r| r.1),
            of_read: col(|r| r.2),
        });
    }
    drop((src, dst));

    let mut prefill_out = Vec::new();
    for &(t, m, k) in PREFILL {
        let case = Case::new(t, m, k);
        if !case.name().contains(&only) {
            continue;
        }
        let view = case.view();
        let w = be.weight(&view).unwrap();
        let n = PREFILL_TOKENS;
        let x: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.1).sin()).collect();
        let mut out = vec![0.0f32; m * n];
        let mut g = c.benchmark_group("cpu_prefill");
        g.throughput(Throughput::Elements((m * k * n) as u64));
        g.sample_size(10);
        g.bench_function(format!("{}/{}tok", case.name(), n), |b| {
            b.iter(|| be.matmul(&mut ws, &w, black_box(&x), n, &mut out).unwrap())
        });
        g.finish();
        let secs = median_secs(summary_budget, || {
            be.matmul(&mut ws, &w, &x, n, &mut out).unwrap()
        });
        prefill_out.push((case.name(), 2.0 * (m * k * n) as f64 / secs / 1e9, secs));
    }
    c.final_summary();

    println!("\n== summary ({}, {threads} threads) ==", be.name());
    println!(
        "memory bandwidth at the start: copy (read+write) {bw:.1} GB/s, read-only {read_bw:.1} GB/s \
         (the fractions below pair each kernel with its own rounds)"
    );
    println!(
        "{:<22} {:>8} {:>9} {:>9} {:>9} {:>10}",
        "matvec (GB/s)", "hot", "streamed", "of copy", "of read", "us/call"
    );
    for r in rows_out {
        println!(
            "{:<22} {:>8.1} {:>9.1} {:>8.0}% {:>8.0}% {:>10.1}",
            r.name,
            r.hot,
            r.streamed,
            100.0 * r.of_copy,
            100.0 * r.of_read,
            r.bytes / r.streamed / 1e3
        );
    }
    println!(
        "{:<22} {:>10} {:>10}",
        "prefill 512 tok", "GFLOP/s", "ms/call"
    );
    for (name, gflops, secs) in prefill_out {
        println!("{name:<22} {gflops:>10.1} {:>10.2}", secs * 1e3);
    }
}
