//! Several wasm tenants generating at once from one shared SmolLM2, with and
//! without cross-tenant batching, against native generation.
//!
//! ```text
//! cargo xtask wasm && cargo run --release -p realm-runtime --example multi_tenant [TOKENS]
//! ```

use std::time::Instant;

use realm_compute_cpu::CpuBackend;
use realm_core::catalog;
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use realm_models::{GenerateParams, Model, SamplingParams};
use realm_runtime::{GenerateRequest, Runtime, RuntimeConfig, TenantConfig};

const PROMPT: &str = "<|im_start|>user\nWrite a long story about a dragon who learns to cook.<|im_end|>\n<|im_start|>assistant\n";

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let tokens: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(64);
    let path = catalog::cached_path(&catalog::SMOLLM2)
        .filter(|p| p.is_file())
        .ok_or("SmolLM2 is not cached: run `cargo xtask fetch-model`")?;
    let wasm_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(realm_runtime::GUEST_WASM_PATH);
    let wasm = std::fs::read(&wasm_path)
        .map_err(|e| format!("{}: {e} (run `cargo xtask wasm`)", wasm_path.display()))?;
    let req = GenerateRequest {
        max_tokens: tokens,
        sampling: SamplingParams::greedy(),
        ..GenerateRequest::default()
    };
    println!(
        "guest: {} KiB; {tokens} tokens per generation, greedy",
        wasm.len() / 1024
    );
    println!(
        "native, 1 sequence:           {:7.1} tok/s",
        native(&path, tokens)?
    );

    for batching in [false, true] {
        let runtime = Runtime::new(RuntimeConfig {
            batching,
            ..RuntimeConfig::default()
        })?;
        let id = runtime.load_model(&path)?;
        let label = if batching { "batched" } else { "unbatched" };
        for n in [1usize, 2, 4] {
            let mut tenants = (0..n)
                .map(|_| runtime.tenant(&wasm, TenantConfig::new(vec![id.clone()])))
                .collect::<Result<Vec<_>, _>>()?;
            // Warm up (instantiation, tokenizer build) outside the timing.
            for t in &mut tenants {
                t.generate(
                    PROMPT,
                    &GenerateRequest {
                        max_tokens: 1,
                        ..req.clone()
                    },
                    |_| {},
                )?;
            }
            if n > 1 && !batching {
                let t0 = Instant::now();
                let mut total = 0;
                for t in &mut tenants {
                    total += t.generate(PROMPT, &req, |_| {})?.generated_tokens;
                }
                let tps = total as f64 / t0.elapsed().as_secs_f64();
                println!("wasm, {n} tenant(s), sequential:  {tps:7.1} tok/s aggregate");
            }
            let before = runtime.batch_stats();
            let t0 = Instant::now();
            let total: u64 = std::thread::scope(|s| {
                let handles: Vec<_> = tenants
                    .iter_mut()
                    .map(|t| {
                        s.spawn(|| t.generate(PROMPT, &req, |_| {}).map(|g| g.generated_tokens))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .map_err(|_| "tenant thread panicked")?
                            .map_err(|e| e.to_string())
                    })
                    .sum::<Result<u64, _>>()
            })?;
            let tps = total as f64 / t0.elapsed().as_secs_f64();
            let stats = runtime.batch_stats();
            let rows = match stats.batches - before.batches {
                0 => String::new(),
                b => format!(
                    " (avg batch {:.2})",
                    (stats.steps - before.steps) as f64 / b as f64
                ),
            };
            println!("wasm, {n} tenant(s), concurrent, {label}: {tps:7.1} tok/s aggregate{rows}");
        }
    }
    Ok(())
}

/// Native decode speed of one sequence (tokens per second, prefill excluded).
fn native(path: &std::path::Path, tokens: u32) -> Result<f64, Error> {
    let file = GgufFile::open(path)?;
    let cpu = CpuBackend::new()?;
    let model = Model::load(&file, &cpu)?;
    let tok = Tokenizer::from_metadata(file.metadata())?;
    let ids = tok.encode(PROMPT, true, true)?;
    let mut session = model.session(ids.len() + tokens as usize, 64)?;
    let params = GenerateParams {
        max_tokens: tokens as usize,
        sampling: SamplingParams::greedy(),
        ..GenerateParams::default()
    };
    let t0 = Instant::now();
    let g = realm_models::generate(&model, &tok, &mut session, &ids, &params, |_| true)?;
    Ok(g.tokens.len() as f64 / t0.elapsed().as_secs_f64())
}
