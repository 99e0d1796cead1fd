//! The `paris` template on the GPU backend: the same question, asked on a
//! CUDA device (a build with `--features cuda`), or on candle's CPU device
//! anywhere else. On CUDA each decode step is recorded as a CUDA graph and
//! replayed.
//!
//! ```text
//! cargo xtask fetch-model
//! cargo run --release --example gpu --features cuda -- cuda:0
//! cargo run --release --example gpu -- cpu      # candle's CPU device: slow, for checking
//! ```

use realm_compute_gpu::{GpuBackend, GpuDevice};
use realm_core::catalog;
use realm_core::chat::{ChatMessage, ChatTemplate};
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use realm_models::{generate, GenerateParams, Model, SamplingParams};

type Error = Box<dyn std::error::Error>;

/// Asks `question` of the model at `path` on `gpu`; returns the greedy
/// answer (at most `max_tokens` tokens) and the decode speed in tokens per
/// second.
fn ask(
    path: &std::path::Path,
    gpu: &GpuBackend,
    question: &str,
    max_tokens: usize,
) -> Result<(String, f64), Error> {
    let file = GgufFile::open(path)?;
    let tokenizer = Tokenizer::from_metadata(file.metadata())?;
    // Weights go to the device once, still quantized.
    let model = Model::load(&file, gpu)?;

    let template = ChatTemplate::from_metadata(file.metadata(), &tokenizer)?;
    let messages = [
        ChatMessage::new("system", "Answer in one short English sentence."),
        ChatMessage::new("user", question),
    ];
    let prompt = tokenizer.encode(&template.render(&messages, true)?, false, true)?;

    // The KV cache lives on the device too.
    let mut session = model.session(1024, 64)?;
    let params = GenerateParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        ..GenerateParams::default()
    };
    let answer = generate(&model, &tokenizer, &mut session, &prompt, &params, |_| true)?;
    if let Some(why) = session.recording_failure() {
        eprintln!("decode steps ran op by op: {why}");
    }
    Ok((answer.text, answer.stats.decode_tps()))
}

fn main() -> Result<(), Error> {
    let device = match std::env::args().nth(1) {
        Some(d) => GpuDevice::parse(&d)?,
        None if GpuDevice::Cuda(0).compiled_in() => GpuDevice::Cuda(0),
        None => GpuDevice::Cpu,
    };
    let path = catalog::cached_path(&catalog::SMOLLM2)
        .filter(|p| p.is_file())
        .ok_or("SmolLM2 is not cached: run `cargo xtask fetch-model`")?;
    let gpu = GpuBackend::new(device)?;
    let (answer, speed) = ask(&path, &gpu, "Which city is the capital of France?", 64)?;
    println!("{answer}");
    let (recorded, replayed) = gpu.step_counts();
    eprintln!(
        "{device}: {speed:.1} tokens/s decoding; steps {:?}, {recorded} recorded, {replayed} replayed",
        gpu.steps()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use realm_compute_gpu::StepMode;

    /// The real model through the GPU backend's static decode steps (the
    /// shapes and device-held inputs a CUDA graph records), on candle's CPU
    /// device.
    #[test]
    fn answers_paris_with_static_steps() {
        let Some(path) = catalog::cached_path(&catalog::SMOLLM2).filter(|p| p.is_file()) else {
            eprintln!("skipped: SmolLM2 is not cached");
            return;
        };
        let gpu = GpuBackend::new(GpuDevice::Cpu)
            .unwrap()
            .with_steps(StepMode::Static);
        let (answer, _) = ask(&path, &gpu, "Which city is the capital of France?", 16).unwrap();
        assert!(answer.contains("Paris"), "{answer}");
    }
}
