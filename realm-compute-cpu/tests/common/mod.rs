//! Test helpers: random weight tensors of every type and an independent
//! dequantizer that reads raw block bytes at their byte offsets (it shares no
//! code with the crate's kernels), plus f64 reference math.
#![allow(dead_code)]

use half::{bf16, f16};
use realm_compute_cpu::{CpuBackend, CpuConfig, Isa};
use realm_core::quant::blocks::{BlockIQ1M, KVALUES_IQ4NL};
use realm_core::GgmlType;

/// The weight types the CPU backend multiplies.
pub const TYPES: [GgmlType; 25] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4_NL,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_XS,
    GgmlType::MXFP4,
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

/// The grid types, whose lattices the test takes from realm-core (proven
/// bit for bit against ggml's there) rather than writing them again.
pub const GRID_TYPES: [GgmlType; 7] = [
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_S,
    GgmlType::IQ3_XXS,
    GgmlType::IQ3_S,
    GgmlType::IQ1_S,
    GgmlType::IQ1_M,
];

/// splitmix64: small, seedable, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn f32s(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// Byte offsets of the f16 scale fields of a block, with the magnitude that
/// keeps dequantized weights around 1.
fn scale_fields(t: GgmlType) -> &'static [(usize, f32)] {
    match t {
        GgmlType::Q4_0 | GgmlType::IQ4_NL => &[(0, 0.15)],
        GgmlType::Q4_1 => &[(0, 0.15), (2, 1.0)],
        GgmlType::Q5_0 => &[(0, 0.07)],
        GgmlType::Q5_1 => &[(0, 0.07), (2, 1.0)],
        GgmlType::Q8_0 => &[(0, 0.01)],
        GgmlType::Q2_K => &[(80, 0.05), (82, 0.05)],
        GgmlType::Q3_K => &[(108, 0.01)],
        GgmlType::Q4_K => &[(0, 0.003), (2, 0.01)],
        GgmlType::Q5_K => &[(0, 0.0015), (2, 0.01)],
        GgmlType::Q6_K => &[(208, 0.0003)],
        GgmlType::IQ4_XS => &[(0, 0.0005)],
        GgmlType::TQ1_0 => &[(52, 1.0)],
        GgmlType::TQ2_0 => &[(64, 1.0)],
        GgmlType::IQ2_XXS | GgmlType::IQ2_XS | GgmlType::IQ2_S => &[(0, 0.006)],
        GgmlType::IQ3_XXS | GgmlType::IQ3_S => &[(0, 0.002)],
        GgmlType::IQ1_S => &[(0, 0.06)],
        _ => &[],
    }
}

/// A random tensor of `rows x cols` values of type `t`: random quants, and
/// scales drawn so that values are of order 1. Returned as u64 words so the
/// bytes are 8-aligned.
pub fn random_weights(t: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u64> {
    let bytes = t.row_bytes(cols as u64).expect("whole blocks") as usize * rows;
    let mut words: Vec<u64> = (0..bytes.div_ceil(8)).map(|_| rng.next_u64()).collect();
    let data: &mut [u8] = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes];
    match t {
        GgmlType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.uniform(-1.5, 1.5).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&f16::from_f32(rng.uniform(-1.5, 1.5)).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&bf16::from_f32(rng.uniform(-1.5, 1.5)).to_le_bytes());
            }
        }
        GgmlType::MXFP4 => {
            // Scales 2^-6 ..= 2^-3: values up to 1.5.
            for block in data.chunks_exact_mut(t.type_size()) {
                block[0] = 122 + (rng.next_u64() % 4) as u8;
            }
        }
        GgmlType::IQ1_M => {
            for block in data.chunks_exact_mut(t.type_size()) {
                let d = f16::from_f32(rng.uniform(-0.06, 0.06));
                bytemuck::from_bytes_mut::<BlockIQ1M>(block).set_d(d);
            }
        }
        _ => {
            for block in data.chunks_exact_mut(t.type_size()) {
                for &(off, mag) in scale_fields(t) {
                    let v = f16::from_f32(rng.uniform(-mag, mag));
                    block[off..off + 2].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    words
}

/// The bytes of a weight tensor made by [`random_weights`].
pub fn bytes_of(words: &[u64], t: GgmlType, rows: usize, cols: usize) -> &[u8] {
    let n = t.row_bytes(cols as u64).unwrap() as usize * rows;
    &bytemuck::cast_slice::<u64, u8>(words)[..n]
}

fn h(b: &[u8], at: usize) -> f64 {
    f64::from(f16::from_le_bytes([b[at], b[at + 1]]).to_f32())
}

fn nib(qs: &[u8], i: usize) -> u8 {
    if i < 16 {
        qs[i] & 15
    } else {
        qs[i - 16] >> 4
    }
}

/// Dequantizes one block of raw bytes (independent of the crate).
fn dequant_block(t: GgmlType, b: &[u8], out: &mut Vec<f64>) {
    match t {
        GgmlType::Q4_0 => out.extend((0..32).map(|i| h(b, 0) * (f64::from(nib(&b[2..], i)) - 8.0))),
        GgmlType::Q4_1 => {
            out.extend((0..32).map(|i| h(b, 0) * f64::from(nib(&b[4..], i)) + h(b, 2)))
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (qh_at, qs_at) = if t == GgmlType::Q5_0 { (2, 6) } else { (4, 8) };
            let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
            for i in 0..32 {
                let q = f64::from(nib(&b[qs_at..], i) | ((((qh >> i) & 1) as u8) << 4));
                out.push(if t == GgmlType::Q5_0 {
                    h(b, 0) * (q - 16.0)
                } else {
                    h(b, 0) * q + h(b, 2)
                });
            }
        }
        GgmlType::Q8_0 => out.extend((0..32).map(|i| h(b, 0) * f64::from(b[2 + i] as i8))),
        GgmlType::MXFP4 => {
            // E2M1's values, doubled, and half of E8M0's scale.
            const FP4: [f64; 16] = [
                0., 1., 2., 3., 4., 6., 8., 12., 0., -1., -2., -3., -4., -6., -8., -12.,
            ];
            let d = 2f64.powi(i32::from(b[0]) - 128);
            out.extend((0..32).map(|i| d * FP4[nib(&b[1..], i) as usize]))
        }
        GgmlType::IQ4_NL => out
            .extend((0..32).map(|i| h(b, 0) * f64::from(KVALUES_IQ4NL[nib(&b[2..], i) as usize]))),
        GgmlType::Q2_K => {
            let (scales, qs, d, dmin) = (&b[0..16], &b[16..80], h(b, 80), h(b, 82));
            for e in 0..256 {
                let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
                let q = f64::from((qs[32 * n + l] >> (2 * j)) & 3);
                let s = scales[e / 16];
                out.push(d * f64::from(s & 15) * q - dmin * f64::from(s >> 4));
            }
        }
        GgmlType::Q3_K => {
            let (hmask, qs, sc, d) = (&b[0..32], &b[32..96], &b[96..108], h(b, 108));
            for e in 0..256 {
                let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
                let low = i32::from((qs[32 * n + l] >> (2 * j)) & 3);
                let hbit = (hmask[l] >> (4 * n + j)) & 1;
                let q = low - if hbit == 1 { 0 } else { 4 };
                let s = e / 16;
                let nibble = if s < 8 { sc[s] & 15 } else { sc[s - 8] >> 4 };
                let top = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
                let scale = i32::from(nibble | (top << 4)) - 32;
                out.push(d * f64::from(scale * q));
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin, s) = (h(b, 0), h(b, 2), &b[4..16]);
            let (qh, qs) = if t == GgmlType::Q4_K {
                (None, &b[16..144])
            } else {
                (Some(&b[16..48]), &b[48..176])
            };
            for e in 0..256 {
                let (j, hi, l, sub) = (e / 64, (e % 64) / 32, e % 32, e / 32);
                let mut q = (qs[32 * j + l] >> (4 * hi)) & 15;
                if let Some(qh) = qh {
                    q |= ((qh[l] >> sub) & 1) << 4;
                }
                let (sc, m) = if sub < 4 {
                    (s[sub] & 63, s[sub + 4] & 63)
                } else {
                    (
                        (s[sub + 4] & 15) | ((s[sub - 4] >> 6) << 4),
                        (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4),
                    )
                };
                out.push(d * f64::from(sc) * f64::from(q) - dmin * f64::from(m));
            }
        }
        GgmlType::Q6_K => {
            let (ql, qh, sc, d) = (&b[0..128], &b[128..192], &b[192..208], h(b, 208));
            for e in 0..256 {
                let (n, r) = (e / 128, e % 128);
                let (g, l) = (r / 32, r % 32);
                let low = (ql[64 * n + 32 * (g & 1) + l] >> (4 * (g >> 1))) & 15;
                let high = (qh[32 * n + l] >> (2 * g)) & 3;
                let q = i32::from(low | (high << 4)) - 32;
                out.push(d * f64::from(sc[e / 16] as i8) * f64::from(q));
            }
        }
        GgmlType::IQ4_XS => {
            let d = h(b, 0);
            let sh = u16::from_le_bytes([b[2], b[3]]);
            let (sl, qs) = (&b[4..8], &b[8..136]);
            for e in 0..256 {
                let (ib, i) = (e / 32, e % 32);
                let ls =
                    ((sl[ib / 2] >> (4 * (ib % 2))) & 15) | ((((sh >> (2 * ib)) & 3) as u8) << 4);
                let v = KVALUES_IQ4NL[nib(&qs[16 * ib..], i) as usize];
                out.push(d * f64::from(i32::from(ls) - 32) * f64::from(v));
            }
        }
        GgmlType::TQ1_0 => {
            // Trit k of a byte: the top third of the byte times 3^k, mod 256.
            let trit = |byte: u8, k: u32| -> f64 {
                let v = (u32::from(byte) * 3u32.pow(k)) % 256;
                f64::from((v * 3 / 256) as i32 - 1)
            };
            let (qs, qh, d) = (&b[0..48], &b[48..52], h(b, 52));
            for (start, run) in [(0, 32), (32, 16)] {
                for k in 0..5 {
                    out.extend((0..run).map(|m| d * trit(qs[start + m], k)));
                }
            }
            for k in 0..4 {
                out.extend((0..4).map(|j| d * trit(qh[j], k)));
            }
        }
        GgmlType::TQ2_0 => {
            let (qs, d) = (&b[0..64], h(b, 64));
            for e in 0..256 {
                let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
                out.push(d * (f64::from((qs[32 * n + l] >> (2 * j)) & 3) - 1.0));
            }
        }
        t if GRID_TYPES.contains(&t) => {
            let v = realm_core::quant::dequantize_row_to_vec(t, b).unwrap();
            out.extend(v.iter().map(|&v| f64::from(v)));
        }
        other => panic!("no test dequantizer for {other}"),
    }
}

/// All values of a weight tensor, row after row, as f64.
pub fn dequantize(t: GgmlType, data: &[u8]) -> Vec<f64> {
    let mut out = Vec::new();
    match t {
        GgmlType::F32 => out.extend(
            data.chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        ),
        GgmlType::F16 => out.extend(
            data.chunks_exact(2)
                .map(|c| f64::from(f16::from_le_bytes([c[0], c[1]]).to_f32())),
        ),
        GgmlType::BF16 => out.extend(
            data.chunks_exact(2)
                .map(|c| f64::from(bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        ),
        _ => {
            for b in data.chunks_exact(t.type_size()) {
                dequant_block(t, b, &mut out);
            }
        }
    }
    out
}

/// A backend with the given instruction set and thread count, or `None`
/// when this CPU lacks the instruction set.
/// Every instruction set; tests skip those this CPU lacks.
#[allow(dead_code)]
pub const ISAS: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Neon];

pub fn backend(isa: Isa, threads: usize) -> Option<CpuBackend> {
    isa.is_available().then(|| {
        CpuBackend::with_config(CpuConfig {
            threads,
            isa: Some(isa),
        })
        .expect("backend")
    })
}

/// Bound on `|computed - exact|` for one dot product of dequantized weights
/// `w` with activations `x`: the error of quantizing `x` per block of `qk`
/// values to 8 bits (half a step, step `max|x| / 127`, times `sum |w|`), plus
/// f32 rounding of the accumulation; for f16 and bf16 weights, the
/// rounding of `x` to their type.
pub fn dot_error_bound(t: GgmlType, w: &[f64], x: &[f32]) -> f64 {
    let qk = match t {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 0,
        t => t.block_size(),
    };
    let abs_sum: f64 = w
        .iter()
        .zip(x)
        .map(|(a, &b)| (a * f64::from(b)).abs())
        .sum();
    let rounding = 2e-6 * abs_sum * (w.len() as f64).sqrt() + 1e-6;
    // f16 and bf16 products round the activations to the weights' type
    // first (as ggml's do): half an ulp of each.
    match t {
        GgmlType::F16 => return rounding + abs_sum * 2f64.powi(-11),
        GgmlType::BF16 => return rounding + abs_sum * 2f64.powi(-8),
        _ => {}
    }
    if qk == 0 {
        return rounding;
    }
    let quant: f64 = w
        .chunks(qk)
        .zip(x.chunks(qk))
        .map(|(wb, xb)| {
            let amax = xb.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
            let wsum: f64 = wb.iter().map(|v| v.abs()).sum();
            amax / 127.0 * 0.5 * wsum
        })
        .sum();
    quant * 1.001 + rounding
}
