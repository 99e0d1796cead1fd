//! `realm run MODEL -p PROMPT`: generate text, streamed to stdout.

use std::io::Write;

use anyhow::{bail, Context, Result};
use realm_core::backend::Backend;
use realm_models::{generate_after, GenerateParams, Lookup, Model, SamplingParams};

use crate::{device, load, prompt_cache};

/// Sampling flags shared by `run` and `chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Temperature (0: greedy).
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely (0: off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty over the last 64 tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// Prompt lookup decoding: draft up to N tokens by finding the last
    /// tokens earlier in the context, checked in one pass (the same text,
    /// faster where it repeats its context; 0: off).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub lookup: usize,
    /// A grammar or JSON schema the output keeps to.
    #[command(flatten)]
    pub constraint: crate::grammar::ConstraintArgs,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }

    /// Prompt lookup, if asked for.
    pub fn lookup(&self) -> Option<Lookup> {
        (self.lookup > 0).then(|| Lookup::new(self.lookup))
    }
}

/// Arguments of `realm run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// A GGUF file, or a short name from the model cache (smollm2, gemma3).
    pub model: String,
    /// The prompt.
    #[arg(short, long, required_unless_present = "file")]
    pub prompt: Option<String>,
    /// Read the prompt from FILE.
    #[arg(short, long, value_name = "FILE", conflicts_with = "prompt")]
    pub file: Option<std::path::PathBuf>,
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 256)]
    pub n_predict: usize,
    /// Send the prompt through the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message before the prompt.
    #[arg(short, long, requires = "chat")]
    pub system: Option<String>,
    /// CPU threads (0: one per core).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// KV cache element type.
    #[arg(long, value_enum, default_value_t = load::CacheType::F32)]
    pub cache_type: load::CacheType,
    /// Context length (0: the model's, capped at 4096).
    #[arg(short = 'c', long, default_value_t = 0)]
    pub ctx_size: usize,
    /// Prefill batch size.
    #[arg(short, long, default_value_t = 256)]
    pub batch_size: usize,
    /// Stop when the text contains this (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep the prompt's KV state in FILE: a later run whose prompt begins
    /// with the same tokens runs only the rest (as llama.cpp's
    /// --prompt-cache).
    #[arg(long, value_name = "FILE")]
    pub prompt_cache: Option<std::path::PathBuf>,
    /// With --prompt-cache: keep the generated tokens too.
    #[arg(long, requires = "prompt_cache")]
    pub prompt_cache_all: bool,
    /// With --prompt-cache: use the file, never write it.
    #[arg(long, requires = "prompt_cache", conflicts_with = "prompt_cache_all")]
    pub prompt_cache_ro: bool,
    #[command(flatten)]
    pub template: crate::chat::TemplateArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub device: device::DeviceArgs,
    #[command(flatten)]
    pub guest: crate::guest::GuestArgs,
}

pub fn context_len(requested: usize, model_ctx: usize) -> usize {
    match requested {
        0 => model_ctx.min(4096),
        n => n,
    }
}

pub fn run(args: &RunArgs) -> Result<()> {
    let text = match (&args.prompt, &args.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("reading the prompt from {}", f.display()))?,
        (None, None) => bail!("give a prompt: -p TEXT or -f FILE"),
    };
    if args.guest.wasm {
        if args.prompt_cache.is_some() {
            bail!("--prompt-cache is the native engine's (not with --wasm)");
        }
        return run_in_guest(args, &text);
    }
    let mut l = load::open(&args.model, args.threads)?;
    l.chat_template = args.template.source()?;
    match args.device.device {
        device::Device::Cpu => run_native(args, &text, &l, &l.backend),
        device::Device::Gpu(_) => run_native(args, &text, &l, &args.device.gpu()?),
    }
}

fn run_native<B: Backend>(args: &RunArgs, text: &str, l: &load::Loaded, backend: &B) -> Result<()> {
    let model = Model::load(&l.file, backend)?;
    let prompt = if args.chat {
        crate::chat::render_user_turn(l, args.system.as_deref(), text)?
    } else {
        l.tokenizer.encode(text, true, false)?
    };
    let ctx = context_len(args.ctx_size, model.config().context_length);
    if prompt.len() >= ctx {
        bail!(
            "the prompt is {} tokens; the context holds {ctx} (raise it with -c)",
            prompt.len()
        );
    }
    let mut session = model.session_with_kv(ctx, args.batch_size, args.cache_type.into())?;
    let (cached, held) = match &args.prompt_cache {
        Some(path) => prompt_cache::restore(&model, &mut session, path, &prompt),
        None => (0, 0),
    };
    let params = GenerateParams {
        max_tokens: args.n_predict,
        stop: args.stop.clone(),
        sampling: args.sampling.params(),
        stop_at_context_end: true,
        grammar: args.sampling.constraint.grammar()?,
        lookup: args.sampling.lookup(),
    };
    let mut out = std::io::stdout().lock();
    if !args.chat {
        write!(out, "{text}")?;
        out.flush()?;
    }
    let g = generate_after(
        &model,
        &l.tokenizer,
        &mut session,
        &prompt,
        cached,
        &params,
        |piece| {
            out.write_all(piece.as_bytes())
                .and_then(|()| out.flush())
                .is_ok()
        },
    )?;
    writeln!(out)?;
    if let Some(path) = args.prompt_cache.as_ref().filter(|_| !args.prompt_cache_ro) {
        let mut tokens = prompt.clone();
        if args.prompt_cache_all {
            tokens.extend(&g.tokens);
        }
        prompt_cache::save(&model, &mut session, path, tokens, held)?;
    }
    let s = g.stats;
    eprintln!(
        "realm: prompt {} tokens at {:.1} t/s, generated {} tokens at {:.1} t/s ({:?})",
        s.prompt_tokens,
        s.prefill_tps(),
        s.generated_tokens,
        s.decode_tps(),
        g.stop_reason
    );
    if s.drafted_tokens > 0 {
        eprintln!(
            "realm: lookup drafted {} tokens, {} accepted",
            s.drafted_tokens, s.accepted_tokens
        );
    }
    Ok(())
}

fn run_in_guest(args: &RunArgs, prompt: &str) -> Result<()> {
    let (text, add_special) = if args.chat {
        let mut l = load::open(&args.model, 1)?;
        l.chat_template = args.template.source()?;
        let rendered = crate::chat::render_user_text(&l, args.system.as_deref(), prompt)?;
        let starts_with_bos = crate::chat::starts_with_bos(&l, &rendered);
        (rendered, !starts_with_bos)
    } else {
        (prompt.to_string(), true)
    };
    let mut run = crate::guest::start(
        &args.guest,
        &args.model,
        args.threads,
        &args.device,
        args.cache_type.into(),
    )?;
    let req = realm_runtime::GenerateRequest {
        max_tokens: args.n_predict as u32,
        max_seq_len: args.ctx_size as u32,
        sampling: args.sampling.params(),
        stop: args.stop.clone(),
        add_special,
        parse_special: args.chat,
        grammar: args
            .sampling
            .constraint
            .grammar()?
            .map(|g| g.source().to_string()),
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    if !args.chat {
        write!(out, "{text}")?;
        out.flush()?;
    }
    let stats = crate::guest::generate(&mut run, &text, &req, |piece| {
        let _ = out.write_all(piece.as_bytes()).and_then(|()| out.flush());
    })?;
    writeln!(out)?;
    eprintln!(
        "realm: prompt {} tokens at {:.1} t/s, generated {} tokens at {:.1} t/s ({:?}, wasm)",
        stats.prompt_tokens,
        stats.prompt_tokens as f64 / stats.prompt_seconds.max(1e-9),
        stats.generated_tokens,
        stats.decode_tokens_per_second().unwrap_or(0.0),
        stats.stop_reason
    );
    Ok(())
}
