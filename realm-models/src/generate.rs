//! The generation loop: prefill a prompt, then sample and decode token by
//! token, streaming text pieces, until an end-of-generation token, a stop
//! string, the token limit or a full context.

use std::sync::Arc;

use realm_core::backend::Backend;
use realm_core::tokenizer::{StreamDecoder, Tokenizer};

use crate::grammar::{Grammar, GrammarError, Matcher};
use crate::lookup::Lookup;
use crate::sampling::{Sampler, SamplingParams};
use crate::{ContextShift, Error, Model, Result, Session};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Stop as soon as the text contains one of these (not emitted).
    pub stop: Vec<String>,
    /// How to choose tokens.
    pub sampling: SamplingParams,
    /// Stop quietly when the context is full, instead of failing.
    pub stop_at_context_end: bool,
    /// Only generate text this grammar allows (see [`crate::grammar`]);
    /// an end-of-generation token is then allowed only where the grammar
    /// is complete.
    pub grammar: Option<Arc<Grammar>>,
    /// With triggers the grammar is lazy, as llama.cpp's can be: text is
    /// free until the generated text holds one of these strings, and from
    /// that string's first byte on (the string included) it must be text
    /// the grammar allows. A token that completes a trigger but goes on
    /// where the grammar refuses is drawn again among the tokens it
    /// allows there. Empty: the grammar holds from the first token.
    pub grammar_triggers: Vec<String>,
    /// Special tokens (by their text) whose text stays in the generated
    /// text, as llama.cpp's "preserved tokens": a tool format's markers,
    /// such as Mistral's `[TOOL_CALLS]`, which a parser reads back. Texts
    /// that are no token of the vocabulary are ignored.
    pub preserved_tokens: Vec<String>,
    /// Draft tokens by prompt lookup and check them in one forward pass
    /// (see [`crate::lookup`]); the text is the same either way.
    pub lookup: Option<Lookup>,
    /// When the context is full, forget the older half of what follows
    /// the first `keep` tokens and go on ([`Model::shift_context`]),
    /// instead of ending; also before a prompt that does not fit.
    pub context_shift: Option<ContextShift>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            stop: Vec::new(),
            sampling: SamplingParams::default(),
            stop_at_context_end: true,
            grammar: None,
            grammar_triggers: Vec::new(),
            preserved_tokens: Vec::new(),
            lookup: None,
            context_shift: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// `max_tokens` were generated.
    MaxTokens,
    /// A stop string appeared.
    StopString,
    /// The session's context is full.
    ContextFull,
    /// The caller's callback asked to stop.
    Cancelled,
}

/// Token counts and timings of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GenerationStats {
    /// Tokens of the prompt that were run (prefill).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Seconds spent in prefill.
    pub prefill_seconds: f64,
    /// Seconds spent generating (decode forward passes and sampling).
    pub decode_seconds: f64,
    /// Tokens drafted by prompt lookup, and those of them the model
    /// confirmed (each saves a forward pass of its own).
    pub drafted_tokens: usize,
    /// See [`GenerationStats::drafted_tokens`].
    pub accepted_tokens: usize,
    /// Context shifts made ([`GenerateParams::context_shift`]).
    pub context_shifts: usize,
}

impl GenerationStats {
    /// Prefill speed in tokens per second.
    pub fn prefill_tps(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_seconds)
    }

    /// Decode speed in tokens per second.
    pub fn decode_tps(&self) -> f64 {
        rate(self.generated_tokens, self.decode_seconds)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// The result of [`generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated text (stop strings excluded).
    pub text: String,
    /// The generated token ids.
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub stop_reason: StopReason,
    /// Counts and timings.
    pub stats: GenerationStats,
}

/// A monotonic clock where the platform has one (wasm32 has none: timings
/// are then zero).
mod clock {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn now() -> Option<std::time::Instant> {
        Some(std::time::Instant::now())
    }

    #[cfg(target_arch = "wasm32")]
    pub fn now() -> Option<std::time::Instant> {
        None
    }

    pub fn since(t: Option<std::time::Instant>) -> f64 {
        t.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }
}

/// Holds back text that could be the start of a stop string, so that a stop
/// string is never partly streamed. Guests with their own generation loop
/// (realm-wasm) use it too.
///
/// ```
/// use realm_models::generate::StopMatcher;
/// let stops = vec!["</s>".to_string()];
/// let mut m = StopMatcher::new(&stops);
/// assert_eq!(m.push("Hi <"), ("Hi ".to_string(), false));
/// assert_eq!(m.push("/s> more"), (String::new(), true));
/// assert_eq!(m.matched(), Some("</s>"));
/// ```
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    /// The stop string found, once one is.
    matched: Option<usize>,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings never match).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.to_vec(),
            pending: String::new(),
            matched: None,
        }
    }

    /// The stop string that ended the text, once one has (the earliest in
    /// the text; the first given among those there).
    pub fn matched(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Adds `piece`; returns the text safe to emit and whether a stop string
    /// was found (the text before it is returned; the rest is dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.pending.push_str(piece);
        let hit = self
            .stops
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .filter_map(|(i, s)| self.pending.find(s.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, i)) = hit {
            self.matched = Some(i);
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // The longest tail of `pending` that begins some stop string.
        let hold = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&self.pending[i..])))
            .unwrap_or(self.pending.len());
        let out = self.pending[..hold].to_string();
        self.pending.drain(..hold);
        (out, false)
    }

    /// The text still held back, once generation ends without a stop string
    /// (the matcher then holds nothing).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// What [`Continuation::step`] chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stream `text`, run `token` through the model, and step again with
    /// its logits.
    Token {
        /// The token chosen, to run next.
        token: u32,
        /// Text that is now final (maybe empty).
        text: String,
    },
    /// Generation ended.
    End {
        /// Why.
        reason: StopReason,
        /// The last of the text, to stream (maybe empty).
        text: String,
    },
}

/// One sequence's generation after its prompt, a token at a time, for
/// callers that run the model themselves (a server decoding many
/// sequences in batches, a wasm guest): given the logits after each token
/// has run, it samples the next one, turns it into text that is safe to
/// stream (whole UTF-8 characters, nothing that could begin a stop string)
/// and says when generation ends. [`generate`] is this loop around
/// [`Model::forward`].
///
/// ```
/// use realm_models::generate::{Continuation, Step};
/// # fn run(tok: &realm_core::tokenizer::Tokenizer, prompt_logits: &[f32]) -> realm_models::Result<()> {
/// let params = realm_models::GenerateParams::default();
/// let mut c = Continuation::new(tok, &[1, 2, 3], &params)?;
/// let mut step = c.step(prompt_logits)?;
/// while let Step::Token { token, text } = step {
///     print!("{text}");
///     let logits = vec![0.0; tok.n_vocab()]; // the model's, after `token`
///     step = c.step(&logits)?;
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Continuation<'t> {
    tokenizer: &'t Tokenizer,
    sampler: Sampler,
    /// The prompt, then every generated token.
    history: Vec<u32>,
    prompt_len: usize,
    max_tokens: usize,
    decoder: StreamDecoder<'t>,
    stop: StopMatcher,
    /// The grammar's progress, if generation is constrained.
    matcher: Option<Matcher>,
    /// A lazy grammar not yet triggered.
    lazy: Option<Lazy>,
    /// Scratch: the logits with the grammar's refusals masked.
    masked: Vec<f32>,
}

/// A lazy grammar waiting for its trigger.
#[derive(Debug)]
struct Lazy {
    grammar: Arc<Grammar>,
    triggers: Vec<String>,
    /// The generated text's bytes so far (control tokens as their text).
    seen: Vec<u8>,
}

/// What a token does to a lazy grammar.
enum Triggered {
    /// Nothing: no trigger is complete.
    No,
    /// It completes a trigger and the grammar takes the text from the
    /// trigger on: the matcher after it.
    Whole(Matcher),
    /// It completes a trigger but the grammar refuses what follows it: a
    /// matcher after the trigger's bytes before this token, to draw the
    /// token again under.
    Refused(Matcher),
}

impl Lazy {
    /// Looks at the next token's text for a trigger.
    fn see(&mut self, tokenizer: &Tokenizer, token: u32) -> Triggered {
        if tokenizer.is_eog(token) {
            return Triggered::No;
        }
        let before = self.seen.len();
        if let Ok(piece) = tokenizer.token_to_piece(token, true) {
            self.seen.extend_from_slice(piece);
        }
        // Earlier tokens completed no trigger, so one found now ends in
        // this token's bytes: search from where the longest could start.
        let longest = self.triggers.iter().map(String::len).max().unwrap_or(0);
        let from = before.saturating_sub(longest.saturating_sub(1));
        let start = self
            .triggers
            .iter()
            .filter(|t| !t.is_empty())
            .filter_map(|t| {
                self.seen[from..]
                    .windows(t.len())
                    .position(|w| w == t.as_bytes())
                    .map(|i| from + i)
            })
            .min();
        let Some(start) = start else {
            return Triggered::No;
        };
        let mut m = Matcher::new(self.grammar.clone());
        if m.accept(&self.seen[start..]).is_ok() {
            return Triggered::Whole(m);
        }
        let mut m = Matcher::new(self.grammar.clone());
        let held = &self.seen[start.min(before)..before];
        if m.accept(held).is_err() {
            // The trigger's start in earlier text is itself refused (a
            // grammar that does not begin with its triggers): hold from
            // this token on.
            m = Matcher::new(self.grammar.clone());
        }
        Triggered::Refused(m)
    }
}

impl<'t> Continuation<'t> {
    /// A generation after `prompt` with `params`' limit, stop strings and
    /// sampling (checked here); `params.stop_at_context_end` is the
    /// caller's to apply.
    pub fn new(tokenizer: &'t Tokenizer, prompt: &[u32], params: &GenerateParams) -> Result<Self> {
        Ok(Self {
            tokenizer,
            sampler: Sampler::with_tokenizer(params.sampling.clone(), tokenizer)?,
            history: prompt.to_vec(),
            prompt_len: prompt.len(),
            max_tokens: params.max_tokens,
            decoder: tokenizer.stream_decoder(false).showing(
                params
                    .preserved_tokens
                    .iter()
                    .filter_map(|t| tokenizer.token_id(t))
                    .collect(),
            ),
            stop: StopMatcher::new(&params.stop),
            matcher: params
                .grammar
                .clone()
                .filter(|_| params.grammar_triggers.is_empty())
                .map(Matcher::new),
            lazy: params
                .grammar
                .clone()
                .filter(|_| !params.grammar_triggers.is_empty())
                .map(|grammar| Lazy {
                    grammar,
                    triggers: params.grammar_triggers.clone(),
                    seen: Vec::new(),
                }),
            masked: Vec::new(),
        })
    }

    /// Chooses the token after the one whose `logits` these are.
    pub fn step(&mut self, logits: &[f32]) -> Result<Step> {
        if self.generated().len() >= self.max_tokens {
            return Ok(self.end_with(StopReason::MaxTokens, String::new()));
        }
        let token = match self.choose(logits)? {
            Some(token) => token,
            None => return Ok(self.end_with(StopReason::EndOfGeneration, String::new())),
        };
        if self.tokenizer.is_eog(token) {
            return Ok(self.end_with(StopReason::EndOfGeneration, String::new()));
        }
        self.history.push(token);
        let piece = self.decoder.push(token)?;
        let (text, hit) = self.stop.push(&piece);
        Ok(if hit {
            Step::End {
                reason: StopReason::StopString,
                text,
            }
        } else if self.generated().len() == self.max_tokens {
            self.end_with(StopReason::MaxTokens, text)
        } else {
            Step::Token { token, text }
        })
    }

    /// Samples the next token; under a grammar, a token it allows: the
    /// unconstrained choice when the grammar takes it (most steps), else a
    /// second draw from the logits with every refused token masked, as
    /// llama.cpp does. `None`: the grammar is complete and allows no
    /// token, not even an end-of-generation one.
    fn choose(&mut self, logits: &[f32]) -> Result<Option<u32>> {
        let token = self.sampler.sample(logits, &self.history);
        if let Some(lazy) = self.lazy.as_mut() {
            match lazy.see(self.tokenizer, token) {
                Triggered::No => return Ok(Some(token)),
                Triggered::Whole(m) => {
                    self.lazy = None;
                    self.matcher = Some(m);
                    return Ok(Some(token));
                }
                Triggered::Refused(m) => {
                    self.lazy = None;
                    self.matcher = Some(m);
                }
            }
        } else {
            let Some(m) = self.matcher.as_mut() else {
                return Ok(Some(token));
            };
            match m.accept_token(self.tokenizer, token) {
                Ok(()) => return Ok(Some(token)),
                Err(GrammarError::Rejected) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let m = self.matcher.as_mut().expect("set above");
        let mut masked = std::mem::take(&mut self.masked);
        masked.clear();
        masked.extend_from_slice(logits);
        m.mask(self.tokenizer, &mut masked);
        if m.overflowed() {
            self.masked = masked;
            return Err(GrammarError::TooComplex.into());
        }
        let any = masked.iter().any(|&l| l > f32::NEG_INFINITY);
        let token = any.then(|| self.sampler.sample(&masked, &self.history));
        self.masked = masked;
        let m = self.matcher.as_mut().expect("checked above");
        match token {
            Some(token) => {
                m.accept_token(self.tokenizer, token)?;
                Ok(Some(token))
            }
            None if m.is_complete() => Ok(None),
            None => Err(GrammarError::NoToken.into()),
        }
    }

    /// Ends generation early for `reason` (the context is full, the caller
    /// cancels): the text still held back, to stream; none for a
    /// cancellation.
    pub fn end(&mut self, reason: StopReason) -> String {
        let mut rest = String::new();
        if !matches!(reason, StopReason::StopString | StopReason::Cancelled) {
            rest.push_str(&self.stop.finish());
            rest.push_str(&self.decoder.finish());
        }
        rest
    }

    /// The end for `reason`: `text`, then what [`Continuation::end`] gives.
    fn end_with(&mut self, reason: StopReason, mut text: String) -> Step {
        text.push_str(&self.end(reason));
        Step::End { reason, text }
    }

    /// The stop string that ended generation, if one did.
    pub fn stop_string(&self) -> Option<&str> {
        self.stop.matched()
    }

    /// The sampler (its [`Sampler::last_distribution`] is what the last
    /// token was drawn from).
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The tokens generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.history[self.prompt_len..]
    }

    /// The prompt and the tokens generated so far.
    pub fn history(&self) -> &[u32] {
        &self.history
    }
}

/// Runs `prompt` (token ids) through `session` and generates up to
/// `params.max_tokens` tokens, calling `on_text` with each piece of text as
/// soon as it is whole (UTF-8 sequences split across tokens are held back);
/// `on_text` returns `false` to stop.
///
/// The session keeps everything: a later call continues the same sequence
/// (a chat's next turn only runs its new tokens).
pub fn generate<B: Backend>(
    model: &Model<'_, B>,
    tokenizer: &Tokenizer,
    session: &mut Session<B>,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    generate_after(model, tokenizer, session, prompt, 0, params, on_text)
}

/// [`generate`] for a session that already holds the first `cached`
/// tokens of `prompt` (restored with [`Model::load_state`], or kept from
/// an earlier request): only the rest runs, at least one token, and
/// sampling sees the whole prompt (its penalties), as if all of it had
/// run. [`GenerationStats::prompt_tokens`] counts the tokens run.
pub fn generate_after<B: Backend>(
    model: &Model<'_, B>,
    tokenizer: &Tokenizer,
    session: &mut Session<B>,
    prompt: &[u32],
    cached: usize,
    params: &GenerateParams,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    if cached >= prompt.len() || cached > session.position() {
        return Err(Error::BadConfig(format!(
            "{cached} cached tokens of a {}-token prompt in a session holding {}: at least one \
             prompt token must run, and the session must hold the cached ones",
            prompt.len(),
            session.position()
        )));
    }
    let mut c = Continuation::new(tokenizer, prompt, params)?;
    let mut stats = GenerationStats {
        prompt_tokens: prompt.len() - cached,
        ..Default::default()
    };
    let mut text = String::new();
    let mut emit = |piece: &str| -> bool {
        text.push_str(piece);
        piece.is_empty() || on_text(piece)
    };

    let t0 = clock::now();
    if let Some(shift) = &params.context_shift {
        let new = prompt.len() - cached;
        let over = (session.position() + new).saturating_sub(session.capacity());
        if over > 0 {
            // Forget at least what does not fit (more, if half the rest is
            // more), as long as what is kept and the new tokens fit.
            let discard = shift.discard(session.position()).max(over);
            if shift.keep + discard <= session.position() {
                model.shift_context(session, shift.keep, discard)?;
                stats.context_shifts += 1;
            }
        }
    }
    let mut step = {
        let logits = model.forward(session, &prompt[cached..])?;
        c.step(logits)?
    };
    stats.prefill_seconds = clock::since(t0);

    let t1 = clock::now();
    let reason = loop {
        match step {
            Step::End { reason, text } => {
                emit(&text);
                break reason;
            }
            Step::Token { token, text } => {
                if !emit(&text) {
                    break StopReason::Cancelled;
                }
                if let Some(shift) = &params.context_shift {
                    let discard = shift.discard(session.position());
                    if session.position() >= session.capacity() && discard > 0 {
                        model.shift_context(session, shift.keep, discard)?;
                        stats.context_shifts += 1;
                    }
                }
                let room = session.capacity().saturating_sub(session.position() + 1);
                let draft = match &params.lookup {
                    // (A model whose state cannot forget tokens checks
                    // no drafts: a rejected one could not be taken back.)
                    Some(l) if room > 0 && model.can_forget() => l.draft(c.history(), room),
                    _ => Vec::new(),
                };
                if !draft.is_empty() {
                    let (checked, cancelled) =
                        verify(model, session, &mut c, token, &draft, &mut emit)?;
                    stats.drafted_tokens += draft.len();
                    stats.accepted_tokens += checked.accepted;
                    if cancelled {
                        break StopReason::Cancelled;
                    }
                    step = checked.next;
                    continue;
                }
                step = match model.forward(session, &[token]) {
                    Ok(logits) => c.step(logits)?,
                    Err(Error::ContextFull { .. }) if params.stop_at_context_end => {
                        emit(&c.end(StopReason::ContextFull));
                        break StopReason::ContextFull;
                    }
                    Err(e) => return Err(e),
                };
            }
        }
    };
    stats.generated_tokens = c.generated().len();
    stats.decode_seconds = clock::since(t1);
    Ok(Generation {
        text,
        tokens: c.generated().to_vec(),
        stop_reason: reason,
        stats,
    })
}

/// What checking a draft gave: the step after the last accepted token,
/// and how many of the draft's tokens were accepted.
struct Checked {
    next: Step,
    accepted: usize,
}

/// Runs `token` and `draft` in one pass and lets `c` choose after each, as
/// it would have one pass at a time: a draft token it chooses too is
/// accepted (its text emitted), the first it does not choose is the next
/// step, and the session keeps exactly the tokens that were accepted. The
/// backend is batch invariant, so every choice sees the logits a pass of
/// its own would have given: the text is the same. `true` when `emit`
/// cancelled.
fn verify<B: Backend>(
    model: &Model<'_, B>,
    session: &mut Session<B>,
    c: &mut Continuation<'_>,
    token: u32,
    draft: &[u32],
    emit: &mut impl FnMut(&str) -> bool,
) -> Result<(Checked, bool)> {
    let base = session.position();
    let mut batch = Vec::with_capacity(draft.len() + 1);
    batch.push(token);
    batch.extend_from_slice(draft);
    let mut steps: Vec<Step> = Vec::with_capacity(batch.len());
    let (mut open, mut failed) = (true, None);
    // The logits after `batch[i]` choose the token after it: while that is
    // `draft[i]`, the next logits are still the ones to read.
    model.forward_draft(session, &batch, |i, logits| {
        if !open {
            return;
        }
        match c.step(logits) {
            Ok(s) => {
                open = matches!(&s, Step::Token { token, .. } if draft.get(i) == Some(token));
                steps.push(s);
            }
            Err(e) => {
                open = false;
                failed = Some(e);
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let next = steps
        .pop()
        .expect("the first token's logits are always read");
    let accepted = steps.len();
    for (j, s) in steps.into_iter().enumerate() {
        if let Step::Token { text, .. } = s {
            if !emit(&text) {
                session.truncate(base + j + 1);
                return Ok((Checked { next, accepted }, true));
            }
        }
    }
    session.truncate(base + accepted + 1);
    Ok((Checked { next, accepted }, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let stops = vec!["<END>".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("Hello <"), ("Hello ".to_string(), false));
        assert_eq!(m.push("E"), (String::new(), false));
        assert_eq!(m.push("x"), ("<Ex".to_string(), false));
        assert_eq!(m.push(" ok <EN"), (" ok ".to_string(), false));
        assert_eq!(m.push("D> more"), (String::new(), true));
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("tail <E"), ("tail ".to_string(), false));
        assert_eq!(m.finish(), "<E");
    }
}
