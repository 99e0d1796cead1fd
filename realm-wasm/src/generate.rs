//! The generation loop, over the host functions of the [`Host`] trait. Its
//! steps are `realm_models::generate`'s ([`Continuation`]), so that a greedy
//! run in a guest gives the same tokens and text as a native one.

use std::sync::Arc;

use realm_core::tokenizer::Tokenizer;
use realm_models::generate::{Continuation, Step};
use realm_models::{ContextShift, GenerateParams, Grammar, StopReason as Ended};

use crate::params::{
    Params, FLAG_ADD_SPECIAL, FLAG_CONTEXT_SHIFT, FLAG_LAYERED, FLAG_PARSE_SPECIAL,
};

/// Prompt tokens per prefill chunk of the layer-by-layer path (and the batch
/// size of the sessions the guest creates).
const CHUNK: usize = 64;

/// The host functions the loop needs (`ABI.md` names the imports).
pub trait Host {
    /// Creates a session of model `model` holding `max_seq_len` tokens,
    /// prefilled in chunks of up to `batch`; returns its handle.
    fn session_create(&mut self, model: u32, max_seq_len: u64, batch: u64) -> u64;
    /// Frees a session.
    fn session_drop(&mut self, session: u64);
    /// Forgets the `discard` tokens after the first `keep` of the session
    /// and moves the rest down (a context shift).
    fn session_shift(&mut self, session: u64, keep: u64, discard: u64);
    /// Runs `tokens` and writes the last one's logits; false when the
    /// session's context is full (nothing was run).
    fn forward(&mut self, session: u64, tokens: &[u32], logits: &mut [f32]) -> bool;
    /// Starts a chunk of at most `batch` tokens; false when the context is
    /// full.
    fn embed_tokens(&mut self, session: u64, tokens: &[u32]) -> bool;
    /// Runs one transformer block on the chunk.
    fn forward_layer(&mut self, session: u64, layer: u32);
    /// Writes the logits of the chunk's last token.
    fn compute_logits(&mut self, session: u64, logits: &mut [f32]);
    /// Streams a piece of text; false asks to stop.
    fn emit(&mut self, text: &str) -> bool;
}

/// Why generation ended (the codes are the ABI's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration = 0,
    /// `max_tokens` were generated.
    MaxTokens = 1,
    /// A stop string appeared.
    StopString = 2,
    /// The session's context is full.
    ContextFull = 3,
    /// The host's `emit` asked to stop.
    Cancelled = 4,
}

/// What a generation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Why it ended.
    pub stop_reason: StopReason,
}

/// The model as the loop sees it: one session, the path to run it by, and
/// how many tokens it holds.
struct Runner<'h, H: Host> {
    host: &'h mut H,
    session: u64,
    n_layers: u32,
    layered: bool,
    held: usize,
    capacity: usize,
    shift: Option<ContextShift>,
}

impl<H: Host> Runner<'_, H> {
    fn run(&mut self, tokens: &[u32], logits: &mut [f32]) -> bool {
        let ran = if self.layered {
            self.run_layered(tokens, logits)
        } else {
            self.host.forward(self.session, tokens, logits)
        };
        if ran {
            self.held += tokens.len();
        }
        ran
    }

    fn run_layered(&mut self, tokens: &[u32], logits: &mut [f32]) -> bool {
        for chunk in tokens.chunks(CHUNK) {
            if !self.host.embed_tokens(self.session, chunk) {
                return false;
            }
            for layer in 0..self.n_layers {
                self.host.forward_layer(self.session, layer);
            }
        }
        self.host.compute_logits(self.session, logits);
        true
    }

    /// Makes room for one more token by a context shift, when the session
    /// is full and the parameters ask for shifts (as native generation
    /// does).
    fn make_room(&mut self) {
        let Some(shift) = self.shift else {
            return;
        };
        let discard = shift.discard(self.held);
        if self.held >= self.capacity && discard > 0 {
            self.host
                .session_shift(self.session, shift.keep as u64, discard as u64);
            self.held -= discard;
        }
    }
}

/// Errors of [`generate`], with the status code `generate` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The prompt is not UTF-8, or tokenizes to nothing.
    BadPrompt = -3,
    /// The sampling parameters are out of range.
    BadSampling = -4,
    /// The tokenizer failed on a token id.
    Tokenizer = -5,
    /// The grammar does not parse, or generation cannot keep to it.
    Grammar = -6,
}

/// Generates from `prompt` with model `params.model` (tokenized by
/// `tokenizer`, `n_layers` blocks, `vocab` logits), streaming text through
/// `host.emit`. The session is dropped before returning.
pub fn generate<H: Host>(
    host: &mut H,
    tokenizer: &Tokenizer,
    n_layers: u32,
    vocab: usize,
    prompt: &str,
    params: &Params,
) -> Result<Outcome, Failure> {
    let ids = tokenizer
        .encode(
            prompt,
            params.flags & FLAG_ADD_SPECIAL != 0,
            params.flags & FLAG_PARSE_SPECIAL != 0,
        )
        .map_err(|_| Failure::BadPrompt)?;
    if ids.is_empty() {
        return Err(Failure::BadPrompt);
    }
    let grammar = match &params.grammar {
        None => None,
        Some(g) => Some(Arc::new(Grammar::parse(g).map_err(|_| Failure::Grammar)?)),
    };
    let max_tokens = params.max_tokens as usize;
    let text = Continuation::new(
        tokenizer,
        &ids,
        &GenerateParams {
            max_tokens,
            stop: params.stop.clone(),
            sampling: params.sampling.clone(),
            stop_at_context_end: true,
            grammar,
            grammar_triggers: params.grammar_triggers.clone(),
            preserved_tokens: params.preserved_tokens.clone(),
            lookup: None,
            context_shift: None,
        },
    )
    .map_err(|_| Failure::BadSampling)?;
    let capacity = match params.max_seq_len {
        0 => ids.len() + max_tokens.max(1),
        n => n as usize,
    };
    let session = host.session_create(params.model, capacity as u64, CHUNK as u64);
    let shift = (params.flags & FLAG_CONTEXT_SHIFT != 0)
        .then(|| ContextShift::for_prompt(&ids, tokenizer.bos(), i64::from(params.n_keep)));
    let mut runner = Runner {
        host,
        session,
        n_layers,
        layered: params.flags & FLAG_LAYERED != 0,
        held: 0,
        capacity,
        shift,
    };
    let result = run_loop(&mut runner, text, vocab, &ids);
    runner.host.session_drop(session);
    result
}

fn run_loop<H: Host>(
    runner: &mut Runner<'_, H>,
    mut text: Continuation<'_>,
    vocab: usize,
    prompt: &[u32],
) -> Result<Outcome, Failure> {
    let mut logits = vec![0f32; vocab];
    let outcome = |text: &Continuation<'_>, stop_reason| Outcome {
        prompt_tokens: prompt.len(),
        generated_tokens: text.generated().len(),
        stop_reason,
    };
    if !runner.run(prompt, &mut logits) {
        return Ok(outcome(&text, StopReason::ContextFull));
    }
    let emit = |host: &mut H, piece: &str| piece.is_empty() || host.emit(piece);
    loop {
        let step = text.step(&logits).map_err(|e| match e {
            realm_models::Error::Grammar(_) => Failure::Grammar,
            _ => Failure::Tokenizer,
        })?;
        match step {
            Step::End { reason, text: last } => {
                emit(runner.host, &last);
                return Ok(outcome(&text, reason.into()));
            }
            Step::Token { token, text: piece } => {
                if !emit(runner.host, &piece) {
                    return Ok(outcome(&text, StopReason::Cancelled));
                }
                runner.make_room();
                if !runner.run(&[token], &mut logits) {
                    emit(runner.host, &text.end(Ended::ContextFull));
                    return Ok(outcome(&text, StopReason::ContextFull));
                }
            }
        }
    }
}

impl From<Ended> for StopReason {
    fn from(r: Ended) -> Self {
        match r {
            Ended::EndOfGeneration => Self::EndOfGeneration,
            Ended::MaxTokens => Self::MaxTokens,
            Ended::StopString => Self::StopString,
            Ended::ContextFull => Self::ContextFull,
            Ended::Cancelled => Self::Cancelled,
        }
    }
}
