//! One sampling step on the real vocabularies (49,152 and 262,144 tokens):
//! greedy, llama.cpp's default chain, the chain with DRY, with typical-p,
//! top-n-sigma and XTC, and mirostat 2, after a 256-token history; and
//! building a sampler whose DRY breakers are searched for in the
//! vocabulary. The logits are Zipf-like with a fixed pattern of noise, so
//! that the filters keep what they keep on a model's. Models come from
//! `$REALM_MODELS` (default `~/.cache/realm/models`); missing ones are
//! skipped.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use realm_core::catalog;
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use realm_models::sampling::SamplerKind;
use realm_models::{Mirostat, Sampler, SamplingParams};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sampling");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    for model in catalog::KNOWN_MODELS {
        let name = model.short_name;
        let Some(path) = catalog::cached_path(model).filter(|p| p.is_file()) else {
            eprintln!("skipping {name}: not in the model cache");
            continue;
        };
        let gguf = GgufFile::open(&path).expect("open");
        let tok = Tokenizer::from_metadata(gguf.metadata()).expect("tokenizer");
        let n = tok.n_vocab();
        // Token i's rank is a fixed shuffle of i; its logit falls with the
        // rank's log, plus a little noise.
        let logits: Vec<f32> = (0..n)
            .map(|i| {
                let rank = (i.wrapping_mul(2_654_435_761) % n) as f32 + 1.0;
                let noise = ((i * 7919) % 1000) as f32 / 1000.0;
                12.0 - 1.6 * rank.ln() + noise
            })
            .collect();
        let history: Vec<u32> = (0..256).map(|i| ((i * 37) % 500) as u32).collect();
        let cases = [
            ("greedy", SamplingParams::greedy()),
            ("default", SamplingParams::default()),
            (
                "dry",
                SamplingParams {
                    dry_multiplier: 0.8,
                    ..Default::default()
                },
            ),
            (
                "typical_sigma_xtc",
                SamplingParams {
                    typical_p: 0.9,
                    top_n_sigma: 2.0,
                    xtc_probability: 0.5,
                    ..Default::default()
                },
            ),
            (
                // Temperature alone over the whole vocabulary.
                "plain",
                SamplingParams {
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.0,
                    temperature: 1.0,
                    ..Default::default()
                },
            ),
            (
                "top_p_first",
                SamplingParams {
                    samplers: vec![
                        SamplerKind::TopP,
                        SamplerKind::TopK,
                        SamplerKind::MinP,
                        SamplerKind::Temperature,
                    ],
                    ..Default::default()
                },
            ),
            (
                "mirostat2",
                SamplingParams {
                    mirostat: Mirostat::V2,
                    ..Default::default()
                },
            ),
        ];
        for (case, params) in cases {
            let mut s = Sampler::with_tokenizer(params, &tok).expect("sampler");
            group.bench_function(format!("{name}/{case}"), |b| {
                b.iter(|| s.sample(&logits, &history))
            });
        }
        let dry = SamplingParams {
            dry_multiplier: 0.8,
            ..Default::default()
        };
        group.bench_function(format!("{name}/dry_breakers"), |b| {
            b.iter(|| Sampler::with_tokenizer(dry.clone(), &tok).expect("sampler"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
