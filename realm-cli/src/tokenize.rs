//! `realm tokenize MODEL TEXT` and `realm chat-template MODEL`: a model's own
//! tokenizer and chat template, as the model file describes them.

use std::io::Write;

use anyhow::{Context, Result};
use realm_core::catalog;
use realm_core::chat::{ChatMessage, ChatTemplate};
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use realm_models::reasoning::ReasoningFormat;
use realm_models::tools::{ToolFormat, Tools};
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
    /// OpenAI tools (a JSON file): with `--parse`, read replies as the
    /// server reads them under these tools.
    #[arg(long, value_name = "FILE", requires = "parse")]
    pub tools: Option<std::path::PathBuf>,
    /// Replies (a JSON file: a list of texts, as generated, markers
    /// included) to read as the server would: one line of JSON each,
    /// `{"content", "reasoning_content", "tool_calls"}`.
    #[arg(long, value_name = "FILE", requires = "tools")]
    pub parse: Option<std::path::PathBuf>,
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
    eprintln!(
        "tool calls: {}",
        ToolFormat::of_template(tpl.source()).name()
    );
    if let (Some(tools), Some(replies)) = (&args.tools, &args.parse) {
        return read_replies(&tpl, tools, replies);
    }
    print!("{}", tpl.render(&messages, true)?);
    Ok(())
}

/// `--tools FILE --parse FILE`: each reply read as the server reads a
/// chat's reply under those tools (`auto`, parallel calls allowed) with
/// the template's reasoning format.
fn read_replies(
    tpl: &ChatTemplate,
    tools: &std::path::Path,
    replies: &std::path::Path,
) -> Result<()> {
    let read = |p: &std::path::Path| -> Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
    };
    let list = read(tools)?;
    let tools = Tools::from_openai(&list, None, Some(true))?
        .context("no tools to call")?
        .for_template(tpl.source());
    let replies: Vec<String> =
        serde_json::from_value(read(replies)?).context("replies are a list of texts")?;
    // Whether the prompt opens a think block, as the server tells it.
    let prompt = tpl.render_messages(
        &[json!({"role": "user", "content": "Hi"})],
        true,
        &json!({"tools": list}),
    )?;
    let reasoning = ReasoningFormat::of_template(tpl.source()).map(|f| (f, f.opened_by(&prompt)));
    let mut out = std::io::stdout().lock();
    for reply in &replies {
        writeln!(
            out,
            "{}",
            crate::serve::read_reply(&tools, reasoning, reply)
        )?;
    }
    Ok(())
}
