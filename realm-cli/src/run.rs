//! `realm run MODEL -p PROMPT`: generate text, streamed to stdout.

use std::io::Write;

use anyhow::{bail, Context, Result};
use realm_core::backend::Backend;
use realm_core::tokenizer::Tokenizer;
use realm_models::sampling::SamplerKind;
use realm_models::{
    generate_after, ContextShift, GenerateParams, Lookup, Mirostat, Model, SamplingParams,
};

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
    /// Repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the repetition, presence and frequency
    /// penalties look at (0: none).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Subtract from the logit of every recent token (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Subtract this times its recent count from a token's logit (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Add to a token's logit: TOKEN_ID+BIAS or TOKEN_ID-BIAS, as
    /// `15043+1` or `15043-inf` (repeatable).
    #[arg(short = 'l', long, value_name = "ID(+|-)BIAS", value_parser = parse_bias)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Top-p, min-p, typical-p and XTC keep at least N tokens.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub min_keep: usize,
    /// Locally typical sampling with this probability mass (1: off).
    #[arg(long = "typical", value_name = "P", default_value_t = 1.0)]
    pub typical_p: f32,
    /// Keep tokens within N standard deviations of the top logit (0 or
    /// below: off).
    #[arg(long = "top-nsigma", value_name = "N", default_value_t = -1.0, allow_negative_numbers = true)]
    pub top_n_sigma: f32,
    /// XTC: the chance of dropping the most likely tokens (0: off).
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    pub xtc_probability: f32,
    /// XTC: the probability a token needs to be dropped (above 0.5: off).
    #[arg(long, value_name = "P", default_value_t = 0.1)]
    pub xtc_threshold: f32,
    /// Dynamic temperature: the temperature moves within --temp ± this, by
    /// the candidates' entropy (0: off).
    #[arg(long, value_name = "R", default_value_t = 0.0)]
    pub dynatemp_range: f32,
    /// Dynamic temperature: the exponent on the normalised entropy.
    #[arg(long = "dynatemp-exp", value_name = "E", default_value_t = 1.0)]
    pub dynatemp_exponent: f32,
    /// DRY: the penalty's multiplier (0: off).
    #[arg(long, value_name = "M", default_value_t = 0.0)]
    pub dry_multiplier: f32,
    /// DRY: the penalty's base.
    #[arg(long, value_name = "B", default_value_t = 1.75)]
    pub dry_base: f32,
    /// DRY: repeats up to this long go unpunished.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub dry_allowed_length: usize,
    /// DRY: how many recent tokens it looks at (0: off).
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub dry_penalty_last_n: usize,
    /// DRY: a sequence breaker, in place of the defaults ("\n", ":", "\"",
    /// "*"); "none" for none (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub dry_sequence_breaker: Vec<String>,
    /// Mirostat sampling: 1 or 2 (0: off); replaces the other samplers
    /// but the logit bias and the temperature.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=2))]
    pub mirostat: u32,
    /// Mirostat's learning rate (eta).
    #[arg(long, value_name = "ETA", default_value_t = 0.1)]
    pub mirostat_lr: f32,
    /// Mirostat's target entropy (tau).
    #[arg(long, value_name = "TAU", default_value_t = 5.0)]
    pub mirostat_ent: f32,
    /// The samplers that run, in order, separated by `;` (default:
    /// penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature).
    #[arg(long, value_name = "NAMES", value_parser = parse_samplers)]
    pub samplers: Option<Order>,
    /// The samplers by letter, in order (default: edskypmxt).
    #[arg(long, value_name = "LETTERS", value_parser = parse_sampler_letters, conflicts_with = "samplers")]
    pub sampler_seq: Option<Order>,
    /// Never end at an end-of-generation token (its logit set to -inf).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Random seed (its low 32 bits seed the generator, as in llama.cpp,
    /// whose draws a seed repeats; -1: a random seed).
    #[arg(long, default_value_t = 0x5eed, value_parser = parse_seed, allow_negative_numbers = true)]
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
    /// The sampling asked for; DRY breakers with their escapes read as
    /// `escape` says.
    pub fn params(&self, escape: &EscapeArgs) -> SamplingParams {
        let d = SamplingParams::default();
        let dry_sequence_breakers = match self.dry_sequence_breaker.as_slice() {
            [] => d.dry_sequence_breakers.clone(),
            [none] if none == "none" => Vec::new(),
            given => given.iter().map(|b| escape.apply(b)).collect(),
        };
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            min_keep: self.min_keep,
            typical_p: self.typical_p,
            top_n_sigma: self.top_n_sigma,
            xtc_probability: self.xtc_probability,
            xtc_threshold: self.xtc_threshold,
            dynatemp_range: self.dynatemp_range,
            dynatemp_exponent: self.dynatemp_exponent,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_last_n: self.repeat_last_n,
            dry_multiplier: self.dry_multiplier,
            dry_base: self.dry_base,
            dry_allowed_length: self.dry_allowed_length,
            dry_penalty_last_n: self.dry_penalty_last_n,
            dry_sequence_breakers,
            mirostat: Mirostat::from_version(self.mirostat).unwrap_or_default(),
            mirostat_tau: self.mirostat_ent,
            mirostat_eta: self.mirostat_lr,
            logit_bias: self.logit_bias.clone(),
            seed: self.seed,
            ignore_eos: self.ignore_eos,
            samplers: self
                .samplers
                .clone()
                .or_else(|| self.sampler_seq.clone())
                .map_or(d.samplers, |o| o.0),
        }
    }

    /// Prompt lookup, if asked for.
    pub fn lookup(&self) -> Option<Lookup> {
        (self.lookup > 0).then(|| Lookup::new(self.lookup))
    }
}

/// `-e/--escape` and `--no-escape`, shared by `run` and `chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct EscapeArgs {
    /// Read escapes (\n, \r, \t, \', \", \\, \xNN) in the prompt, stop
    /// strings and DRY sequence breakers, as llama.cpp does (the default).
    #[arg(short = 'e', long, overrides_with = "no_escape")]
    pub escape: bool,
    /// Take the prompt, stop strings and DRY breakers as written.
    #[arg(long, overrides_with = "escape")]
    pub no_escape: bool,
}

impl EscapeArgs {
    /// `s` with its escapes read, unless `--no-escape`.
    pub fn apply(&self, s: &str) -> String {
        if self.no_escape {
            s.to_string()
        } else {
            unescape(s)
        }
    }
}

/// `s` with llama.cpp's escapes read: `\n`, `\r`, `\t`, `\'`, `\"`,
/// `\\` and `\xNN` (an ASCII byte; others stay as written, as does any
/// other backslash).
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(&next) = chars.peek() else {
            out.push(c);
            break;
        };
        let plain = match next {
            'n' => Some('\n'),
            'r' => Some('\r'),
            't' => Some('\t'),
            '\'' | '"' | '\\' => Some(next),
            _ => None,
        };
        if let Some(p) = plain {
            chars.next();
            out.push(p);
            continue;
        }
        if next == 'x' {
            let hex: String = chars.clone().skip(1).take(2).collect();
            if let Some(b) = u8::from_str_radix(&hex, 16).ok().filter(|b| b.is_ascii()) {
                if hex.len() == 2 && hex.chars().all(|h| h.is_ascii_hexdigit()) {
                    chars.nth(2);
                    out.push(char::from(b));
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

/// `--context-shift` and `--keep`, shared by `run` and `chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct ShiftArgs {
    /// When the context is full, forget the older half of the tokens after
    /// the first --keep, and go on (as llama.cpp's --context-shift).
    #[arg(long)]
    pub context_shift: bool,
    /// With --context-shift: prompt tokens never forgotten, after the BOS
    /// token, which always stays (-1: the whole initial prompt).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true,
        requires = "context_shift"
    )]
    pub keep: i64,
}

impl ShiftArgs {
    /// The shift for a session whose first tokens are `prompt`, as
    /// llama.cpp counts `--keep`: after a BOS token, and at most the prompt.
    pub fn shift(&self, tokenizer: &Tokenizer, prompt: &[u32]) -> Option<ContextShift> {
        self.context_shift
            .then(|| ContextShift::for_prompt(prompt, tokenizer.bos(), self.keep))
    }

    /// The shift a wasm guest makes: `n_keep` (it counts the prompt's
    /// tokens itself).
    pub fn n_keep(&self) -> Option<i64> {
        self.context_shift.then_some(self.keep)
    }
}

/// The samplers in the order they run (one command-line value).
#[derive(Debug, Clone)]
pub struct Order(pub Vec<SamplerKind>);

fn parse_samplers(s: &str) -> Result<Order, String> {
    SamplerKind::parse_names(s)
        .map(Order)
        .map_err(|e| e.to_string())
}

/// A `--seed`: a number, or -1 for a random one (from the system's
/// hasher keys, which differ from run to run).
fn parse_seed(s: &str) -> Result<u64, String> {
    if s.trim() == "-1" {
        use std::hash::BuildHasher;
        return Ok(std::collections::hash_map::RandomState::new().hash_one(0u8));
    }
    s.parse()
        .map_err(|_| format!("`{s}` is not a seed (a number from 0, or -1 for a random one)"))
}

fn parse_sampler_letters(s: &str) -> Result<Order, String> {
    SamplerKind::parse_letters(s)
        .map(Order)
        .map_err(|e| e.to_string())
}

/// A `--logit-bias`: `ID+BIAS` or `ID-BIAS` (the bias may be `inf`).
fn parse_bias(s: &str) -> Result<(u32, f32), String> {
    let bad = || format!("`{s}` is not TOKEN_ID+BIAS or TOKEN_ID-BIAS");
    let at = s.find(['+', '-']).ok_or_else(bad)?;
    let id = s[..at].parse::<u32>().map_err(|_| bad())?;
    let bias = s[at..].parse::<f32>().map_err(|_| bad())?;
    if bias.is_nan() {
        return Err(bad());
    }
    Ok((id, bias))
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
    /// Most tokens to generate (-1: until the model ends, or forever with
    /// --context-shift; -2: until the context is full).
    #[arg(short = 'n', long, default_value_t = 256, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i64).range(-2..))]
    pub n_predict: i64,
    /// Do not print the prompt before the generated text.
    #[arg(long)]
    pub no_display_prompt: bool,
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
    pub shift: ShiftArgs,
    #[command(flatten)]
    pub escape: EscapeArgs,
    #[command(flatten)]
    pub template: crate::chat::TemplateArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub lora: load::LoraArgs,
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
        (None, Some(f)) => {
            let mut t = std::fs::read_to_string(f)
                .with_context(|| format!("reading the prompt from {}", f.display()))?;
            // The file's last line break is not the prompt's (as llama.cpp
            // reads -f).
            if t.ends_with('\n') {
                t.pop();
            }
            t
        }
        (None, None) => bail!("give a prompt: -p TEXT or -f FILE"),
    };
    let text = args.escape.apply(&text);
    if args.guest.wasm {
        if args.prompt_cache.is_some() {
            bail!("--prompt-cache is the native engine's (not with --wasm)");
        }
        return run_in_guest(args, &text);
    }
    if args.prompt_cache.is_some() && args.lora.any() {
        // A saved state does not say which adapters computed it.
        bail!("--prompt-cache does not go with LoRA adapters");
    }
    let mut l = load::open(&args.model, args.threads)?;
    l.chat_template = args.template.source()?;
    match args.device.device {
        device::Device::Cpu => run_native(args, &text, &l, &l.backend),
        device::Device::Gpu(_) => run_native(args, &text, &l, &args.device.gpu()?),
    }
}

fn run_native<B: Backend>(args: &RunArgs, text: &str, l: &load::Loaded, backend: &B) -> Result<()> {
    let adapters = args.lora.open()?;
    let mut model = Model::load(&l.file, backend)?;
    model.check_logits()?;
    let loras = load::add_loras(&mut model, &adapters)?;
    let prompt = if args.chat {
        crate::chat::render_user_turn(l, args.system.as_deref(), text)?
    } else {
        // Special-token text in the prompt (`<|im_start|>`) is the token,
        // as llama-completion reads a prompt.
        crate::chat::encode_rendered(&l.tokenizer, text)?
    };
    let ctx = context_len(args.ctx_size, model.config().context_length);
    if prompt.len() >= ctx {
        bail!(
            "the prompt is {} tokens; the context holds {ctx} (raise it with -c)",
            prompt.len()
        );
    }
    let mut session = model.session_with_kv(ctx, args.batch_size, args.cache_type.into())?;
    session.set_loras(&loras);
    let (cached, held) = match &args.prompt_cache {
        Some(path) => prompt_cache::restore(&model, &mut session, path, &prompt),
        None => (0, 0),
    };
    let shift = args.shift.shift(&l.tokenizer, &prompt);
    let params = GenerateParams {
        max_tokens: match args.n_predict {
            -2 => ctx - prompt.len(),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        },
        stop: args.stop.iter().map(|s| args.escape.apply(s)).collect(),
        sampling: args.sampling.params(&args.escape),
        stop_at_context_end: true,
        grammar: args.sampling.constraint.grammar()?,
        grammar_triggers: Vec::new(),
        preserved_tokens: Vec::new(),
        lookup: args.sampling.lookup(),
        context_shift: shift,
    };
    let mut out = std::io::stdout().lock();
    if !args.chat && !args.no_display_prompt {
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
    if s.context_shifts > 0 {
        eprintln!("realm: the context shifted {} times", s.context_shifts);
    }
    Ok(())
}

fn run_in_guest(args: &RunArgs, prompt: &str) -> Result<()> {
    let (text, add_special) = if args.chat {
        let mut l = load::open(&args.model, 1)?;
        l.chat_template = args.template.source()?;
        let rendered = crate::chat::render_user_text(&l, args.system.as_deref(), prompt)?;
        let starts_with_bos = crate::chat::starts_with_bos(&l.tokenizer, &rendered);
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
        &args.lora,
    )?;
    let Ok(max_tokens) = u32::try_from(args.n_predict) else {
        bail!("-n -1 and -2 are the native engine's (not with --wasm)");
    };
    let req = realm_runtime::GenerateRequest {
        max_tokens,
        max_seq_len: args.ctx_size as u32,
        sampling: args.sampling.params(&args.escape),
        stop: args.stop.iter().map(|s| args.escape.apply(s)).collect(),
        add_special,
        parse_special: true,
        grammar: args
            .sampling
            .constraint
            .grammar()?
            .map(|g| g.source().to_string()),
        context_shift: args.shift.n_keep(),
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    if !args.chat && !args.no_display_prompt {
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
    if stats.context_shifts > 0 {
        eprintln!("realm: the context shifted {} times", stats.context_shifts);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_read_as_llama_cpp_reads_them() {
        assert_eq!(unescape(r"a\nb\tc\\d\'\x41\q"), "a\nb\tc\\d'A\\q");
        assert_eq!(unescape(r"\x4"), r"\x4");
        assert_eq!(unescape(r"\xff"), r"\xff");
        assert_eq!(unescape("ends with \\"), "ends with \\");
        assert_eq!(unescape("é\\n"), "é\n");
    }

    #[test]
    fn seeds_are_numbers_or_minus_one_for_a_random_one() {
        assert_eq!(parse_seed("42"), Ok(42));
        let (a, b) = (parse_seed("-1").unwrap(), parse_seed("-1").unwrap());
        assert_ne!(a, b);
        assert!(parse_seed("-2").is_err() && parse_seed("x").is_err());
    }
}
