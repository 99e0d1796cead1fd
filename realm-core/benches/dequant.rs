//! Dequantization throughput per type, in bytes of f32 output per second.
//!
//! Each type dequantizes a row of 1M elements (4 MiB of f32 output) made by
//! quantizing a deterministic signal where the type can be quantized, and from
//! pseudo-random blocks with sane scales otherwise.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use realm_core::{quant, GgmlType};

const N: usize = 1 << 20;

/// A small deterministic generator (xorshift) for block bytes.
fn random_bytes(n: usize, mut state: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// `N` elements of `t`: quantized from a signal, or random blocks whose f16
/// scales are replaced with 0.01 (so no NaN or infinity is produced).
fn input(t: GgmlType) -> Vec<u8> {
    if quant::can_quantize(t) {
        let x: Vec<f32> = (0..N).map(|i| (i as f32 * 0.37).sin() * 0.1).collect();
        return quant::quantize_row_to_vec(t, &x).expect("quantize");
    }
    let ts = t.type_size();
    let mut bytes = random_bytes(N / t.block_size() * ts, 0x9e37_79b9_7f4a_7c15);
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    let offsets: &[usize] = match t {
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        _ => &[0],
    };
    for block in bytes.chunks_exact_mut(ts) {
        for &o in offsets {
            block[o..o + 2].copy_from_slice(&scale);
        }
    }
    bytes
}

fn bench_dequantize(c: &mut Criterion) {
    let mut group = c.benchmark_group("dequantize");
    group.throughput(Throughput::Bytes((N * std::mem::size_of::<f32>()) as u64));
    let mut out = vec![0.0f32; N];
    for &t in quant::DEQUANTIZE_TYPES {
        let src = input(t);
        group.bench_with_input(BenchmarkId::from_parameter(t.name()), &src, |b, src| {
            b.iter(|| {
                quant::dequantize(t, black_box(src), black_box(&mut out)).expect("dequantize")
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_dequantize);
criterion_main!(benches);
