//! `realm`: inspect, run, benchmark and serve GGUF models.

mod bench;
mod chat;
mod device;
mod divergence;
mod embed;
mod export_lora;
mod grammar;
mod guest;
mod imatrix;
mod info;
mod load;
mod perplexity;
mod profile;
mod prompt_cache;
mod quantize;
mod rerank;
mod run;
mod serve;
mod split;
mod synth;
mod tokenize;

use clap::{Parser, Subcommand};

/// Realm: multi-tenant LLM inference on shared quantized weights.
#[derive(Debug, Parser)]
#[command(name = "realm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print a model's metadata and tensor table (like gguf-dump).
    Info(info::InfoArgs),
    /// Generate text from a prompt, streamed to stdout.
    Run(Box<run::RunArgs>),
    /// An interactive chat that keeps the KV cache between turns.
    Chat(chat::ChatArgs),
    /// Prefill and decode speed, as llama-bench reports it (pp512, tg128).
    Bench(bench::BenchArgs),
    /// A text's embedding: final hidden states pooled, as llama-embedding gives it.
    Embed(embed::EmbedArgs),
    /// A reranker's score of each document for a query, as llama.cpp's server ranks them.
    Rerank(rerank::RerankArgs),
    /// Token ids (and pieces) of a text, with the model's own tokenizer.
    Tokenize(tokenize::TokenizeArgs),
    /// Render a sample conversation with the model's chat template.
    ChatTemplate(tokenize::ChatTemplateArgs),
    /// Check a GBNF grammar, or turn a JSON schema into one, and print it.
    Grammar(grammar::GrammarArgs),
    /// A model's perplexity on a text file, measured as llama-perplexity does.
    Perplexity(perplexity::PerplexityArgs),
    /// An importance matrix of a model on a text, as llama-imatrix collects it.
    Imatrix(imatrix::ImatrixArgs),
    /// Quantize a model file to another type, as llama-quantize does.
    Quantize(quantize::QuantizeArgs),
    /// Merge LoRA adapters into a model's weights, as llama-export-lora does.
    ExportLora(export_lora::ExportLoraArgs),
    /// Split a model into several files, or merge them, as llama-gguf-split does.
    GgufSplit(split::SplitArgs),
    /// An OpenAI-compatible HTTP server (chat and text completions, streamed or whole).
    Serve(serve::ServeArgs),
    /// Write a synthetic-weight model with a real model's exact layout.
    Synth(synth::SynthArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Info(args) => info::run(&args),
        Cmd::Run(args) => run::run(&args),
        Cmd::Chat(args) => chat::run(&args),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Embed(args) => embed::run(&args),
        Cmd::Rerank(args) => rerank::run(&args),
        Cmd::Tokenize(args) => tokenize::tokenize(&args),
        Cmd::ChatTemplate(args) => tokenize::chat_template(&args),
        Cmd::Grammar(args) => grammar::run(&args),
        Cmd::Perplexity(args) => perplexity::run(&args),
        Cmd::Imatrix(args) => imatrix::run(&args),
        Cmd::ExportLora(args) => export_lora::run(&args),
        Cmd::GgufSplit(args) => split::run(&args),
        Cmd::Quantize(args) => quantize::run(&args),
        Cmd::Serve(args) => serve::run(&args),
        Cmd::Synth(args) => synth::run(&args),
    };
    if let Err(e) = result {
        // A closed pipe (`realm info x | head`) is the reader's choice, not an error.
        let broken_pipe = e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe);
        if broken_pipe {
            return;
        }
        eprintln!("realm: error: {e:#}");
        let unsupported = e.chain().any(|c| {
            matches!(c.downcast_ref(), Some(realm_models::Error::UnsupportedWeight { backend, .. })
                if backend.starts_with("candle"))
        });
        if unsupported {
            eprintln!(
                "realm: `--dequantize f16` (or f32) puts such matrices on the GPU dequantized"
            );
        }
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    /// clap's own checks of the flags (duplicate short flags, conflicts and
    /// requirements naming flags that exist), which it makes only in debug
    /// builds on first use.
    #[test]
    fn the_command_line_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
