//! Many tenants, one model, each with a LoRA adapter of its own: the
//! runtime maps the quantized model once, every tenant is a WebAssembly
//! guest (tokenizer, sampler and loop in wasm), and the tenants' decode
//! steps run together in batched forward passes whatever adapter each
//! runs with.
//!
//! ```text
//! cargo xtask fetch-model && cargo xtask wasm
//! cargo run --release --example tenants -- [ADAPTER.gguf ...]
//! ```
//!
//! Without adapter files (llama.cpp's GGUF LoRA format, as
//! `convert_lora_to_gguf.py` writes it) it writes two synthetic ones,
//! seeded values that show the mechanics, not a fine-tune.

use std::path::{Path, PathBuf};
use std::time::Duration;

use realm_core::catalog;
use realm_core::gguf::GgufFile;
use realm_models::synthetic::SyntheticLora;
use realm_models::SamplingParams;
use realm_runtime::{
    GenerateRequest, ModelId, Runtime, RuntimeConfig, TenantConfig, TenantLora, GUEST_WASM_PATH,
};

type Error = Box<dyn std::error::Error>;

const PROMPT: &str = "Once upon a time, in a small village by the sea,";

/// Two synthetic adapters for the model at `model`, written into `dir`.
fn synthetic_adapters(model: &Path, dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let file = GgufFile::open(model)?;
    std::fs::create_dir_all(dir)?;
    (0..2u64)
        .map(|i| {
            let mut lora = SyntheticLora::new(8, 16.0);
            lora.amplitude = 0.15;
            let path = dir.join(format!("synthetic-{i}.gguf"));
            std::fs::write(&path, lora.write(&file, i + 1)?)?;
            Ok(path)
        })
        .collect()
}

/// What each tenant wrote (the first without an adapter, then one per
/// adapter), and how many decode steps ran in how many batched forwards.
fn run_tenants(
    model: &Path,
    adapters: &[PathBuf],
    guest: &[u8],
) -> Result<(Vec<String>, (u64, u64)), Error> {
    let runtime = Runtime::new(RuntimeConfig {
        // How long a batch waits for the other tenants' steps.
        batch_window: Duration::from_millis(20),
        ..RuntimeConfig::default()
    })?;
    let id = runtime
        .models()
        .load_with_loras(model, ModelId::new("model"), adapters)?;
    let req = GenerateRequest {
        max_tokens: 32,
        sampling: SamplingParams::greedy(),
        ..GenerateRequest::default()
    };
    let mut tenants = Vec::new();
    for adapter in std::iter::once(None).chain((0..adapters.len()).map(Some)) {
        let mut config = TenantConfig::new(vec![id.clone()]);
        if let Some(adapter) = adapter {
            config.loras.push(TenantLora {
                model: id.clone(),
                adapter,
                scale: 1.0,
            });
        }
        tenants.push(runtime.tenant(guest, config)?);
    }
    let before = runtime.batch_stats();
    let texts = std::thread::scope(|s| {
        let running: Vec<_> = tenants
            .iter_mut()
            .map(|t| {
                let req = &req;
                s.spawn(move || {
                    let mut text = String::new();
                    t.generate(PROMPT, req, |piece| text.push_str(piece))
                        .map(|_| text)
                })
            })
            .collect();
        running
            .into_iter()
            .map(|h| h.join().expect("a tenant's thread panicked"))
            .collect::<Result<Vec<_>, _>>()
    })?;
    let after = runtime.batch_stats();
    Ok((
        texts,
        (after.steps - before.steps, after.batches - before.batches),
    ))
}

fn main() -> Result<(), Error> {
    let model = catalog::cached_path(&catalog::SMOLLM2)
        .filter(|p| p.is_file())
        .ok_or("SmolLM2 is not cached: run `cargo xtask fetch-model`")?;
    let guest = std::fs::read(GUEST_WASM_PATH)
        .map_err(|e| format!("{GUEST_WASM_PATH}: {e} (build it with `cargo xtask wasm`)"))?;
    let mut adapters: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if adapters.is_empty() {
        let dir = std::env::temp_dir().join("realm-example-adapters");
        adapters = synthetic_adapters(&model, &dir)?;
        eprintln!(
            "no adapters given: wrote two synthetic ones to {}",
            dir.display()
        );
    }
    let (texts, (steps, batches)) = run_tenants(&model, &adapters, &guest)?;
    let names = std::iter::once("no adapter".to_string())
        .chain(adapters.iter().map(|a| a.display().to_string()));
    for (name, text) in names.zip(&texts) {
        println!("[{name}] {PROMPT}{text}\n");
    }
    eprintln!("{steps} decode steps ran in {batches} batched forward passes");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_with_adapters_write_their_own_text_in_shared_batches() {
        let Some(model) = catalog::cached_path(&catalog::SMOLLM2).filter(|p| p.is_file()) else {
            eprintln!("skipped: SmolLM2 is not cached");
            return;
        };
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(GUEST_WASM_PATH);
        let Ok(guest) = std::fs::read(&path) else {
            eprintln!("skipped: no guest at {}", path.display());
            return;
        };
        let dir = std::env::temp_dir().join(format!("realm-tenants-{}", std::process::id()));
        let adapters = synthetic_adapters(&model, &dir).unwrap();
        let (texts, (steps, batches)) = run_tenants(&model, &adapters, &guest).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(texts.len(), 3);
        assert!(texts[0] != texts[1] && texts[1] != texts[2] && texts[0] != texts[2]);
        assert!(
            steps > 0 && batches <= steps,
            "{steps} steps, {batches} batches"
        );
    }
}
