//! `realm chat MODEL`: an interactive multi-turn chat. The KV cache is kept
//! between turns: each turn runs only its new tokens, not the conversation.

use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};
use realm_core::backend::Backend;
use realm_core::chat::{ChatMessage, ChatTemplate};
use realm_core::tokenizer::Tokenizer;
use realm_models::reasoning::ReasoningFormat;
use realm_models::{generate, GenerateParams, Model, StopReason, CHECKPOINT_TAIL};

use crate::device::Device;
use crate::load::{self, Loaded};
use crate::run::{context_len, EscapeArgs, SamplingArgs, ShiftArgs};

/// Arguments of `realm chat`.
#[derive(Debug, clap::Args)]
pub struct ChatArgs {
    /// A GGUF file, or a short name from the model cache (smollm2, gemma3).
    pub model: String,
    /// A system prompt.
    #[arg(short, long)]
    pub system: Option<String>,
    /// Most tokens per answer.
    #[arg(short = 'n', long, default_value_t = 512)]
    pub n_predict: usize,
    /// CPU threads (0: one per core).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// KV cache element type.
    #[arg(long, value_enum, default_value_t = load::CacheType::F32)]
    pub cache_type: load::CacheType,
    /// Context length (0: the model's, capped at 4096).
    #[arg(short = 'c', long, default_value_t = 0)]
    pub ctx_size: usize,
    /// Checkpoints of a recurrent model's states (Qwen 3.5, LFM2, Mamba-2
    /// hybrids) kept, one taken 4 tokens before each turn's end, so that
    /// a turn whose template writes an earlier reply back otherwise (its
    /// thinking dropped) runs from there instead of from the start, as
    /// the server's --ctx-checkpoints; 0 keeps none.
    #[arg(long, default_value_t = 4)]
    pub ctx_checkpoints: usize,
    #[command(flatten)]
    pub shift: ShiftArgs,
    #[command(flatten)]
    pub escape: EscapeArgs,
    #[command(flatten)]
    pub template: TemplateArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub lora: load::LoraArgs,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
}

/// `--chat-template` and `--chat-template-file`: a template used instead of
/// the model's (as llama.cpp's flags of those names).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TemplateArgs {
    /// The chat template to use instead of the model's: a built-in one
    /// (chatml, gemma) or Jinja source.
    #[arg(long, value_name = "NAME|JINJA")]
    pub chat_template: Option<String>,
    /// Read the chat template (Jinja) from FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "chat_template")]
    pub chat_template_file: Option<std::path::PathBuf>,
}

impl TemplateArgs {
    /// The template given, if one is: a name or Jinja source.
    pub fn source(&self) -> Result<Option<String>> {
        match (&self.chat_template, &self.chat_template_file) {
            (Some(t), _) => Ok(Some(t.clone())),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading the chat template {}", f.display()))
                .map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// The chat template of `l`: the one given (`--chat-template`), else the
/// model's.
pub fn template(l: &Loaded) -> Result<ChatTemplate> {
    Ok(match &l.chat_template {
        Some(t) => ChatTemplate::for_tokenizer(t, &l.tokenizer)?,
        None => ChatTemplate::from_metadata(l.file.metadata(), &l.tokenizer)?,
    })
}

/// True when a rendered template already begins with the BOS token's text.
pub fn starts_with_bos(tokenizer: &Tokenizer, text: &str) -> bool {
    let bos_text = tokenizer.bos().and_then(|b| tokenizer.token_text(b).ok());
    bos_text.is_some_and(|b| text.starts_with(b))
}

/// Token ids of `text` rendered by a chat template: special tokens are
/// parsed, and BOS is added only if the template did not write it.
pub fn encode_rendered(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tokenizer.encode(text, !starts_with_bos(tokenizer, text), true)?)
}

/// One user message (after an optional system message) rendered by the
/// model's chat template, with the generation prompt.
pub fn render_user_text(l: &Loaded, system: Option<&str>, prompt: &str) -> Result<String> {
    let mut messages: Vec<ChatMessage> = system
        .map(|s| ChatMessage::new("system", s))
        .into_iter()
        .collect();
    messages.push(ChatMessage::new("user", prompt));
    Ok(template(l)?.render(&messages, true)?)
}

/// [`render_user_text`], tokenized, ready to generate.
pub fn render_user_turn(l: &Loaded, system: Option<&str>, prompt: &str) -> Result<Vec<u32>> {
    encode_rendered(&l.tokenizer, &render_user_text(l, system, prompt)?)
}

pub fn run(args: &ChatArgs) -> Result<()> {
    let mut l = load::open(&args.model, args.threads)?;
    l.chat_template = args.template.source()?;
    match args.device.device {
        Device::Cpu => chat(args, &l, &l.backend),
        Device::Gpu(_) => chat(args, &l, &args.device.gpu()?),
    }
}

fn chat<B: Backend>(args: &ChatArgs, l: &Loaded, backend: &B) -> Result<()> {
    let adapters = args.lora.open()?;
    let mut model = Model::load(&l.file, backend)?;
    model.check_logits()?;
    let loras = load::add_loras(&mut model, &adapters)?;
    let tpl = template(l)?;
    let ctx = context_len(args.ctx_size, model.config().context_length);
    let mut session = model.session_with_kv(ctx, 256, args.cache_type.into())?;
    session.set_loras(&loras);
    session.set_max_checkpoints(args.ctx_checkpoints);
    let mut messages: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s))
        .collect();
    // The rendered conversation that is already in the KV cache, and its
    // tokens (none known after a context shift moved them).
    let mut in_cache = String::new();
    let mut tokens_held: Option<Vec<u32>> = Some(Vec::new());
    let mut params = GenerateParams {
        max_tokens: args.n_predict,
        stop: Vec::new(),
        sampling: args.sampling.params(&args.escape),
        stop_at_context_end: true,
        grammar: args.sampling.constraint.grammar()?,
        grammar_triggers: Vec::new(),
        // The template's reasoning markers stay in the replies (and so in
        // the history) where they are control tokens.
        preserved_tokens: ReasoningFormat::of_template(tpl.source())
            .map_or(&[][..], ReasoningFormat::preserved_tokens)
            .iter()
            .map(|m| m.to_string())
            .collect(),
        lookup: args.sampling.lookup(),
        context_shift: None,
    };
    eprintln!(
        "realm: chatting with {}; an empty line or end of input quits",
        l.name
    );
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        messages.push(ChatMessage::new("user", line.trim_end()));
        let rendered = tpl.render(&messages, true)?;
        // Only the new part of the conversation runs; if the template
        // rewrote earlier turns (a reply's thinking dropped), the cache
        // keeps the tokens the whole conversation still begins with (a
        // recurrent model's states: up to their last checkpoint there).
        let new_text = match rendered.strip_prefix(in_cache.as_str()) {
            Some(rest) if !in_cache.is_empty() => l.tokenizer.encode(rest, false, true)?,
            _ => {
                let all = encode_rendered(&l.tokenizer, &rendered)?;
                let common = tokens_held.as_ref().map_or(0, |held| {
                    held.iter().zip(&all).take_while(|(a, b)| a == b).count()
                });
                session.truncate(common.min(all.len().saturating_sub(1)));
                if let Some(held) = tokens_held.as_mut() {
                    held.truncate(session.position());
                }
                all[session.position()..].to_vec()
            }
        };
        let reused = session.position();
        if session.position() == 0 {
            // What --keep counts from: the first turn.
            params.context_shift = args.shift.shift(&l.tokenizer, &new_text);
        }
        // With a shift, what is kept and the new turn must fit.
        let held = params
            .context_shift
            .map_or(session.position(), |s| s.keep.min(session.position()));
        if held + new_text.len() >= session.capacity() {
            bail!("the conversation no longer fits the context of {ctx} tokens");
        }
        // A recurrent model's states kept a few tokens before the turn's
        // end, where the next turn's rendering of this reply may leave it.
        let mut prompt = &new_text[..];
        if !model.can_forget() && args.ctx_checkpoints > 0 && prompt.len() > CHECKPOINT_TAIL {
            let (head, tail) = prompt.split_at(prompt.len() - CHECKPOINT_TAIL);
            model.forward(&mut session, head)?;
            session.checkpoint();
            prompt = tail;
        }
        if let Some(held) = tokens_held.as_mut() {
            held.extend_from_slice(&new_text);
        }
        let g = generate(
            &model,
            &l.tokenizer,
            &mut session,
            prompt,
            &params,
            |piece| {
                out.write_all(piece.as_bytes())
                    .and_then(|()| out.flush())
                    .is_ok()
            },
        )?;
        writeln!(out)?;
        // generate() does not run the token it stopped on unless it was an
        // end-of-turn token; run it so the cache holds the whole answer.
        if g.stop_reason != StopReason::EndOfGeneration {
            if let Some(&last) = g.tokens.last() {
                model.forward(&mut session, &[last])?;
            }
        }
        messages.push(ChatMessage::new("assistant", &g.text));
        // What the cache holds now: the prompt and the answer, but not the
        // end-of-turn token the model stopped on, which was never run.
        in_cache = rendered + &g.text;
        match tokens_held.as_mut() {
            _ if g.stats.context_shifts > 0 => tokens_held = None,
            Some(held) => {
                held.extend_from_slice(&g.tokens);
                held.truncate(session.position());
            }
            None => {}
        }
        eprintln!(
            "realm: {} tokens at {:.1} t/s ({} in context, {reused} reused)",
            g.stats.generated_tokens,
            g.stats.decode_tps(),
            session.position()
        );
    }
}
