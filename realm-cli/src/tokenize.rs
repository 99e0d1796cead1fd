//! `realm tokenize MODEL TEXT` and `realm chat-template MODEL`: a model's own
//! tokenizer and chat template, as the model file describes them.

use std::io::Write;

use anyhow::{Context, Result};
use realm_core::catalog;
use realm_core::chat::{ChatMessage, ChatTemplate};
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use serde_json::json;

/// Arguments of `realm tokenize`.
#[derive(Debug, clap::Args)]
pub struct TokenizeArgs {
    /// A GGUF file, or a short name from the model cache (smollm2, gemma3).
    pub model: String,
    /// The text to tokenize.
    pub text: String,
    /// Match special tokens written in the text (`<|im_start|>`) as single tokens.
    #[arg(long)]
    pub special: bool,
    /// Do not add BOS/EOS even if the model asks for them.
    #[arg(long)]
    pub no_add_special: bool,
    /// Print JSON (`{"ids": [...], "pieces": [...]}`).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `realm chat-template`.
#[derive(Debug, clap::Args)]
pub struct ChatTemplateArgs {
    /// A GGUF file, or a short name from the model cache (smollm2, gemma3).
    pub model: String,
    #[command(flatten)]
    pub template: crate::chat::TemplateArgs,
}

fn open(model: &str) -> Result<(GgufFile, Tokenizer)> {
    let path = catalog::resolve_model(model).map_err(anyhow::Error::msg)?;
    let file = GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let tok = Tokenizer::from_metadata(file.metadata()).context("building the tokenizer")?;
    Ok((file, tok))
}

pub fn tokenize(args: &TokenizeArgs) -> Result<()> {
    let (_file, tok) = open(&args.model)?;
    let ids = tok.encode(&args.text, !args.no_add_special, args.special)?;
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| {
            tok.token_to_piece(id, true)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        })
        .collect::<Result<_, _>>()?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", json!({ "ids": ids, "pieces": pieces }))?;
    } else {
        for (id, piece) in ids.iter().zip(&pieces) {
            writeln!(out, "{id:>8} {piece:?}")?;
        }
        eprintln!("{} tokens", ids.len());
    }
    Ok(())
}

pub fn chat_template(args: &ChatTemplateArgs) -> Result<()> {
    let (file, tok) = open(&args.model)?;
    let tpl = match args.template.source()? {
        Some(t) => ChatTemplate::for_tokenizer(&t, &tok)?,
        None => ChatTemplate::from_metadata(file.metadata(), &tok)?,
    };
    let messages = [
        ChatMessage::new("system", "You are a helpful assistant."),
        ChatMessage::new("user", "Hello! Who are you?"),
        ChatMessage::new("assistant", "I am a small language model."),
        ChatMessage::new("user", "Which city is the capital of France?"),
    ];
    eprintln!("template: {:?}", tpl.origin());
    print!("{}", tpl.render(&messages, true)?);
    Ok(())
}
