//! The shortest useful program: load SmolLM2, ask a question through its
//! chat template, print the greedy answer.
//!
//! ```text
//! cargo xtask fetch-model
//! cargo run --release --example paris
//! ```

use realm_compute_cpu::CpuBackend;
use realm_core::catalog;
use realm_core::chat::{ChatMessage, ChatTemplate};
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use realm_models::{generate, GenerateParams, Model, SamplingParams};

type Error = Box<dyn std::error::Error>;

/// Asks `question` of the model at `path` and returns its greedy answer.
fn ask(path: &std::path::Path, question: &str) -> Result<String, Error> {
    let file = GgufFile::open(path)?; // memory-mapped; weights stay quantized
    let tokenizer = Tokenizer::from_metadata(file.metadata())?;
    let cpu = CpuBackend::new()?;
    let model = Model::load(&file, &cpu)?;

    let template = ChatTemplate::from_metadata(file.metadata(), &tokenizer)?;
    let messages = [
        ChatMessage::new("system", "Answer in one short English sentence."),
        ChatMessage::new("user", question),
    ];
    let text = template.render(&messages, true)?;
    // The template writes any BOS itself; special tokens in it are parsed.
    let prompt = tokenizer.encode(&text, false, true)?;

    let mut session = model.session(1024, 64)?;
    let params = GenerateParams {
        max_tokens: 64,
        sampling: SamplingParams::greedy(),
        ..GenerateParams::default()
    };
    let answer = generate(&model, &tokenizer, &mut session, &prompt, &params, |_| true)?;
    Ok(answer.text)
}

fn main() -> Result<(), Error> {
    let path = catalog::cached_path(&catalog::SMOLLM2)
        .filter(|p| p.is_file())
        .ok_or("SmolLM2 is not cached: run `cargo xtask fetch-model`")?;
    println!("{}", ask(&path, "Which city is the capital of France?")?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_paris() {
        let Some(path) = catalog::cached_path(&catalog::SMOLLM2).filter(|p| p.is_file()) else {
            eprintln!("skipped: SmolLM2 is not cached");
            return;
        };
        let answer = ask(&path, "Which city is the capital of France?").unwrap();
        assert!(answer.contains("Paris"), "{answer}");
    }
}
