//! Streaming generation with sampling options: pieces of text are printed
//! as soon as they are whole, with temperature, top-k/top-p/min-p, a
//! repetition penalty and a seed (the same seed gives the same text).
//!
//! ```text
//! cargo run --release --example stream -- [PROMPT] [TEMPERATURE] [SEED]
//! ```

use std::io::Write;

use realm_compute_cpu::CpuBackend;
use realm_core::catalog;
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use realm_models::{generate, GenerateParams, Generation, Model, SamplingParams};

type Error = Box<dyn std::error::Error>;

/// Streams a continuation of `prompt` to `out` and returns the generation.
fn stream(
    path: &std::path::Path,
    prompt: &str,
    temperature: f32,
    seed: u64,
    out: &mut impl Write,
) -> Result<Generation, Error> {
    let file = GgufFile::open(path)?;
    let tokenizer = Tokenizer::from_metadata(file.metadata())?;
    let cpu = CpuBackend::new()?;
    let model = Model::load(&file, &cpu)?;
    let ids = tokenizer.encode(prompt, true, false)?;
    let mut session = model.session(2048, 256)?;
    let params = GenerateParams {
        max_tokens: 48,
        stop: vec!["\n\n".into()],
        sampling: SamplingParams {
            temperature,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.1,
            seed,
            ..SamplingParams::default()
        },
        ..GenerateParams::default()
    };
    write!(out, "{prompt}")?;
    let g = generate(&model, &tokenizer, &mut session, &ids, &params, |piece| {
        // Return false to stop early (a closed pipe, a user's Ctrl-C flag).
        out.write_all(piece.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    })?;
    writeln!(out)?;
    Ok(g)
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let prompt = args.next().unwrap_or_else(|| "Once upon a time".into());
    let temperature = args.next().map(|t| t.parse()).transpose()?.unwrap_or(0.8);
    let seed = args.next().map(|s| s.parse()).transpose()?.unwrap_or(42);
    let path = catalog::cached_path(&catalog::SMOLLM2)
        .filter(|p| p.is_file())
        .ok_or("SmolLM2 is not cached: run `cargo xtask fetch-model`")?;
    let g = stream(&path, &prompt, temperature, seed, &mut std::io::stdout())?;
    let s = g.stats;
    eprintln!(
        "{} prompt tokens at {:.1} t/s, {} generated at {:.1} t/s ({:?})",
        s.prompt_tokens,
        s.prefill_tps(),
        s.generated_tokens,
        s.decode_tps(),
        g.stop_reason
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_a_seed_repeats_its_text() {
        let Some(path) = catalog::cached_path(&catalog::SMOLLM2).filter(|p| p.is_file()) else {
            eprintln!("skipped: SmolLM2 is not cached");
            return;
        };
        let run = |seed| {
            let mut out = Vec::new();
            let g = stream(&path, "Once upon a time", 0.9, seed, &mut out).unwrap();
            let streamed = String::from_utf8(out).unwrap();
            assert_eq!(streamed, format!("Once upon a time{}\n", g.text));
            assert!(g.stats.generated_tokens > 0);
            g.text
        };
        let a = run(7);
        assert_eq!(a, run(7));
        let others: Vec<String> = (8..11).map(run).collect();
        assert!(
            others.iter().any(|t| *t != a),
            "different seeds, different text"
        );
    }
}
