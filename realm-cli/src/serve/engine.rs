//! The server's engine: one thread that owns the model and runs every
//! request, the running ones decoded together.
//!
//! Each turn of its loop admits waiting requests while fewer than
//! `parallel` run, runs one prefill chunk (at most `batch` tokens of one
//! request's prompt), then one decode step of every request that has a
//! token to run, as one batch ([`Model::forward_batch`]). A long prompt
//! therefore delays the others by one chunk a turn, not by its whole
//! prefill. The backend is batch invariant, so a request's tokens are the
//! same whatever else runs beside it.
//!
//! A finished request's KV cache is kept (the last `prompt_cache` of
//! them), and a later request whose prompt begins with the tokens one holds
//! runs only the rest (unless it wants its prompt's log-probabilities,
//! which need every prompt token run). A model with recurrent blocks
//! (Qwen 3.5's delta nets), whose states cannot forget tokens, keeps
//! checkpoints of them instead (`ctx_checkpoints` a session, llama.cpp's
//! `--ctx-checkpoints`): one taken [`CHECKPOINT_TAIL`] tokens before each
//! prompt's end (its prefill chunk stops there), so a next prompt that
//! leaves the kept tokens after it (a chat template writing the reply
//! back otherwise than it was generated) runs only what follows the
//! checkpoint. A request whose client has gone
//! (its event channel closed) is dropped at the next turn, with its KV
//! cache.
//!
//! A request asking for log-probabilities gets, with each piece of text,
//! the tokens that released it: the token, its log-probability under the
//! logits it was sampled from, and the most likely alternatives. A token
//! whose text is not yet whole goes with the next piece; a stop string's
//! tokens are dropped from its first character on, as its text is.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use axum::http::StatusCode;
use realm_core::backend::{Backend, KvDtype};
use realm_core::tokenizer::Tokenizer;
use realm_models::embedding::{self, Pooling};
use realm_models::generate::{Continuation, Step};
use realm_models::{
    BatchScratch, ContextShift, GenerateParams, LogProbs, LoraId, Model, Session, StopReason,
    CHECKPOINT_TAIL,
};
use tokio::sync::mpsc::UnboundedSender;

use super::logprobs::TokenLogprob;
use super::metrics::{self, Metrics};
use super::openai::{ApiError, Limits, Prompt};
use super::prompt::Prompts;
use crate::device::{Device, DeviceArgs};
use crate::load::{self, Loaded};

/// What a request continues.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A conversation, through the model's chat template.
    Chat(Conversation),
    /// A text completion's prompt.
    Prompt(Prompt),
    /// A text to embed.
    Embed(Prompt),
    /// A query and a document for a reranker to score.
    Rerank { query: String, document: String },
}

/// A chat request's conversation: its messages as the chat template reads
/// them (`{"role", "content"}`, and in a template's own tool format
/// `tool_calls` and more), and more variables for the template
/// (`chat_template_kwargs`, `reasoning_effort`, `tools`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conversation {
    pub messages: Vec<serde_json::Value>,
    pub vars: serde_json::Map<String, serde_json::Value>,
}

/// What the engine tells a request's handler, in this order: `Started` or
/// `Failed`; then `Text` pieces (with `echo`, the prompt's first); then
/// `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started {
        prompt_tokens: usize,
        /// Of those, the ones a kept KV cache already held.
        cached_tokens: usize,
    },
    Text {
        text: String,
        /// The tokens this text completes, when log-probabilities were
        /// asked for.
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        reason: StopReason,
        completion_tokens: usize,
        /// The stop string that ended it, where known.
        stop_word: Option<String>,
    },
    Failed(ApiError),
    /// An embedding's vector (after `Started`), which ends it.
    Embedding(Vec<f32>),
}

/// A place among the sequences the server holds (running or waiting):
/// given back when the sequence ends, whichever way.
#[derive(Debug)]
pub struct Ticket(Arc<AtomicUsize>);

impl Ticket {
    /// `count` places, unless fewer than that are free of `limit`.
    pub fn take(held: &Arc<AtomicUsize>, limit: usize, count: usize) -> Option<Vec<Self>> {
        held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            n.checked_add(count).filter(|&m| m <= limit)
        })
        .ok()
        .map(|_| (0..count).map(|_| Self(held.clone())).collect())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a sequence's events go: its HTTP request's channel, which the
/// request's choices share, each event tagged with the choice's index.
#[derive(Debug, Clone)]
pub struct Events {
    pub index: usize,
    pub tx: UnboundedSender<(usize, Event)>,
}

impl Events {
    /// Sends `e`; an error when the client has gone.
    pub fn send(&self, e: Event) -> Result<(), Event> {
        self.tx.send((self.index, e)).map_err(|e| e.0 .1)
    }

    /// Whether the client has gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// One sequence to generate: a request's prompt, or one of its prompts
/// or choices.
#[derive(Debug)]
pub struct Job {
    pub input: Input,
    pub limits: Limits,
    /// The LoRA adapters it runs with (ids of the server's, in order) and
    /// their scales.
    pub loras: Vec<(usize, f32)>,
    pub events: Events,
    /// Held for its drop, which gives the place back.
    pub _ticket: Ticket,
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model: String,
    /// A chat template used instead of the model's.
    pub chat_template: Option<String>,
    pub threads: usize,
    pub device: DeviceArgs,
    /// Most requests decoded together.
    pub parallel: usize,
    /// Context length of each request (0: the model's, capped at 4096).
    pub ctx_size: usize,
    /// Most prompt tokens of one prefill chunk.
    pub batch: usize,
    pub kv_dtype: KvDtype,
    /// Most finished requests' KV caches kept for requests whose prompts
    /// begin the same (0: none; then each cache is sized to its request).
    pub prompt_cache: usize,
    /// Most checkpoints of a recurrent model's states a session keeps
    /// (0: none).
    pub ctx_checkpoints: usize,
    /// Shift a full context instead of ending the request.
    pub context_shift: bool,
    /// What the engine counts, for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The LoRA adapters (ids in order: `--lora`'s, then
    /// `--lora-scaled`'s).
    pub lora: load::LoraArgs,
}

/// What the engine says once its model is loaded.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The model file's name.
    pub name: String,
    /// Each request's context length.
    pub ctx: usize,
}

/// Loads the model and serves `jobs` until every sender is gone; `ready`
/// hears once, when the model is loaded or could not be.
pub fn run(cfg: &EngineConfig, jobs: Receiver<Job>, ready: Sender<Result<Ready>>) {
    let l = match load::open(&cfg.model, cfg.threads) {
        Ok(mut l) => {
            l.chat_template = cfg.chat_template.clone();
            l
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    match cfg.device.device {
        Device::Cpu => serve(cfg, &l, &l.backend, jobs, ready),
        Device::Gpu(_) => match cfg.device.gpu() {
            Ok(b) => serve(cfg, &l, &b, jobs, ready),
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        },
    }
}

fn serve<B: Backend>(
    cfg: &EngineConfig,
    l: &Loaded,
    backend: &B,
    jobs: Receiver<Job>,
    ready: Sender<Result<Ready>>,
) {
    let adapters = match cfg.lora.open() {
        Ok(a) => a,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let started = Model::load(&l.file, backend)
        .map_err(anyhow::Error::from)
        .and_then(|mut model| {
            let loras = load::add_loras(&mut model, &adapters)?;
            let scratch = model.batch_scratch(cfg.parallel)?;
            Ok((model, loras, scratch, crate::embed::model_pooling(l)))
        });
    let (model, loras, scratch, pooling) = match started {
        Ok(m) => m,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let ctx = crate::run::context_len(cfg.ctx_size, model.config().context_length);
    let mut engine = Engine {
        model: &model,
        loras: loras.into_iter().map(|(id, _)| id).collect(),
        l,
        prompts: Prompts::new(l, ctx),
        cfg,
        scratch,
        running: Vec::new(),
        waiting: VecDeque::new(),
        kept: VecDeque::new(),
        embeds: None,
        pooling,
    };
    let _ = ready.send(Ok(Ready {
        name: l.name.clone(),
        ctx,
    }));
    engine.serve(&jobs);
}

/// What a request starts with.
struct Start<'t, B: Backend> {
    prompt: Vec<u32>,
    session: Session<B>,
    /// Prompt tokens the session holds already.
    cached: usize,
    text: Continuation<'t>,
    /// With `echo`: the prompt's text.
    echo: Option<String>,
}

/// A running request.
struct Seq<'t, B: Backend> {
    job: Job,
    session: Session<B>,
    prompt: Vec<u32>,
    /// Prompt tokens run so far.
    prefilled: usize,
    /// Sampling, streaming and where to stop.
    text: Continuation<'t>,
    /// A sampled token the next decode step runs.
    next: Option<u32>,
    start: Instant,
    /// With `echo`: the prompt's text, sent once the prompt has run.
    echo: Option<String>,
    /// Log-probabilities not yet sent: the prompt's (with `echo`), then
    /// generated tokens whose text is not yet out.
    pending: Vec<TokenLogprob>,
    /// Bytes of generated text sent, and of the generated tokens whose
    /// log-probabilities were sent.
    sent_text: usize,
    sent_tokens: usize,
    /// How a full context makes room, if it may.
    shift: Option<ContextShift>,
    /// Whether the context has shifted: the session then no longer holds
    /// the tokens' prefix, and is not kept for later requests.
    shifted: bool,
}

impl<B: Backend> Seq<'_, B> {
    /// Whether the prompt's tokens get log-probabilities.
    fn scores_prompt(&self) -> bool {
        self.job.limits.echo && self.job.limits.logprobs.is_some()
    }

    /// Sends a piece of generated text with the pending tokens; whether the
    /// client still listens.
    fn send(&mut self, text: String) -> bool {
        self.sent_text += text.len();
        self.sent_tokens += self.pending.iter().map(|t| t.token.len()).sum::<usize>();
        let logprobs = std::mem::take(&mut self.pending);
        self.job.events.send(Event::Text { text, logprobs }).is_ok()
    }
}

/// The bytes of token `id` as text shows it (control tokens are empty, as
/// in generated text); alternatives show theirs (`special`).
fn piece(tok: &Tokenizer, id: u32, special: bool) -> Vec<u8> {
    tok.token_to_piece(id, special)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// `token`'s log-probability under `lp`, with the `k` likeliest tokens.
fn scored(tok: &Tokenizer, lp: &LogProbs<'_>, token: u32, k: usize) -> TokenLogprob {
    TokenLogprob {
        id: token,
        token: piece(tok, token, false),
        logprob: lp.of(token),
        top: Some(
            lp.top(k)
                .into_iter()
                .map(|(t, l)| (t, piece(tok, t, true), l))
                .collect(),
        ),
    }
}

/// `token`'s log-probability in the distribution the sampler drew it from
/// (`last`, most likely first), with the `k` likeliest of it.
fn drawn(tok: &Tokenizer, last: &[(u32, f32)], token: u32, k: usize) -> TokenLogprob {
    let ln = |p: f32| f64::from(p).ln();
    TokenLogprob {
        id: token,
        token: piece(tok, token, false),
        logprob: last.iter().find(|t| t.0 == token).map(|t| ln(t.1)),
        top: Some(
            last.iter()
                .take(k)
                .filter(|t| t.1 > 0.0)
                .map(|&(t, p)| (t, piece(tok, t, true), ln(p)))
                .collect(),
        ),
    }
}

struct Engine<'m, 'a, B: Backend> {
    model: &'m Model<'a, B>,
    /// The model's LoRA adapters, by the server's ids.
    loras: Vec<LoraId>,
    l: &'m Loaded,
    prompts: Prompts<'m>,
    cfg: &'m EngineConfig,
    scratch: BatchScratch<B>,
    running: Vec<Seq<'m, B>>,
    waiting: VecDeque<Job>,
    /// Finished requests' sessions and the tokens they hold, oldest first.
    kept: VecDeque<(Vec<u32>, Session<B>)>,
    /// The session embeddings run in (made at the first), and their pooling.
    embeds: Option<Session<B>>,
    pooling: Pooling,
}

impl<'m, B: Backend> Engine<'m, '_, B> {
    fn serve(&mut self, jobs: &Receiver<Job>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match jobs.recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => return,
                }
            }
            self.waiting.extend(jobs.try_iter());
            self.waiting.retain(|j| !j.events.is_closed());
            // Embeddings run at once, each prompt whole: they take no
            // place among the running requests.
            let mut i = 0;
            while i < self.waiting.len() {
                if let Input::Embed(_) | Input::Rerank { .. } = self.waiting[i].input {
                    if let Some(job) = self.waiting.remove(i) {
                        self.embed(&job);
                    }
                } else {
                    i += 1;
                }
            }
            while self.running.len() < self.cfg.parallel {
                let Some(job) = self.waiting.pop_front() else {
                    break;
                };
                if let Some(seq) = self.admit(job) {
                    self.running.push(seq);
                }
            }
            self.running.retain(|s| !s.job.events.is_closed());
            let m = &self.cfg.metrics;
            metrics::set(&m.running, self.running.len() as u64);
            metrics::set(&m.waiting, self.waiting.len() as u64);
            self.prefill();
            self.decode();
        }
    }

    /// Answers an embedding request: its prompt's final hidden states,
    /// pooled and scaled to unit length.
    fn embed(&mut self, job: &Job) {
        let started = Instant::now();
        let ran = self.prompts.tokens(&job.input).and_then(|ids| {
            let server_error = |e: realm_models::Error| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            };
            if self.embeds.is_none() {
                // (Bidirectional attention reads a prompt in one batch.)
                let batch = match self.model.config().bidirectional {
                    true => self.prompts.ctx,
                    false => self.cfg.batch,
                };
                let s = self
                    .model
                    .session_with_kv(self.prompts.ctx, batch, self.cfg.kv_dtype)
                    .map_err(server_error)?;
                self.embeds = Some(s);
            }
            let loras = self.lora_ids(job)?;
            let session = self.embeds.as_mut().ok_or_else(|| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "no embedding session")
            })?;
            session.set_loras(&loras);
            // A reranker's scores are not scaled; other embeddings are.
            let rank = matches!(job.input, Input::Rerank { .. });
            let ranks = self.pooling == Pooling::Rank;
            if rank != ranks {
                return Err(ApiError::invalid(
                    None,
                    match ranks {
                        true => "the model is a reranker: ask /v1/rerank",
                        false => "the model has no reranker's head: it embeds, it does not rank",
                    },
                ));
            }
            let mut v = embedding::embed(self.model, session, &ids, self.pooling)
                .map_err(server_error)?
                .pop()
                .unwrap_or_default();
            if !rank {
                embedding::normalize(&mut v, 2);
            }
            Ok((ids.len(), v))
        });
        match ran {
            Ok((prompt_tokens, v)) => {
                let m = &self.cfg.metrics;
                metrics::add(&m.embeddings, 1);
                metrics::add(&m.prompt_tokens, prompt_tokens as u64);
                metrics::add(&m.prompt_micros, started.elapsed().as_micros() as u64);
                let _ = job.events.send(Event::Started {
                    prompt_tokens,
                    cached_tokens: 0,
                });
                let _ = job.events.send(Event::Embedding(v));
            }
            Err(e) => {
                let _ = job.events.send(Event::Failed(e));
            }
        }
    }

    /// The request, with its prompt tokens and KV cache; or none, when
    /// it cannot run and has been told why.
    fn admit(&mut self, job: Job) -> Option<Seq<'m, B>> {
        match self.start(&job) {
            Ok(Start {
                prompt,
                session,
                cached,
                text,
                echo,
            }) => {
                // A client gone already is noticed at the next turn.
                let _ = job.events.send(Event::Started {
                    prompt_tokens: prompt.len(),
                    cached_tokens: cached,
                });
                metrics::add(&self.cfg.metrics.prompt_tokens_cached, cached as u64);
                let shift = self.cfg.context_shift.then(|| {
                    shift_for(
                        &self.l.tokenizer,
                        &prompt,
                        job.limits.n_keep,
                        session.capacity(),
                    )
                });
                let mut seq = Seq {
                    shift,
                    shifted: false,
                    prompt,
                    prefilled: cached,
                    text,
                    next: None,
                    session,
                    job,
                    start: Instant::now(),
                    echo,
                    pending: Vec::new(),
                    sent_text: 0,
                    sent_tokens: 0,
                };
                if seq.scores_prompt() {
                    // Nothing predicts the first token.
                    seq.pending.push(TokenLogprob {
                        id: seq.prompt[0],
                        token: piece(&self.l.tokenizer, seq.prompt[0], false),
                        logprob: None,
                        top: None,
                    });
                }
                Some(seq)
            }
            Err(e) => {
                let _ = job.events.send(Event::Failed(e));
                None
            }
        }
    }

    /// The model's ids of the adapters `job` runs with, and their scales.
    fn lora_ids(&self, job: &Job) -> Result<Vec<(LoraId, f32)>, ApiError> {
        job.loras
            .iter()
            .map(|&(i, s)| {
                let id = self.loras.get(i).ok_or_else(|| {
                    ApiError::invalid(Some("lora"), format!("no LoRA adapter {i}"))
                })?;
                Ok((*id, s))
            })
            .collect()
    }

    fn start(&mut self, job: &Job) -> Result<Start<'m, B>, ApiError> {
        if self.model.config().encoder {
            let e = realm_models::Error::NoLogits(self.model.config().arch.name());
            return Err(ApiError::invalid(None, format!("{e}: ask /v1/embeddings")));
        }
        let prompt = self.prompts.tokens(&job.input)?;
        // Kept caches are of the whole context, so that any later request
        // fits one.
        let room = match job.limits.max_tokens {
            Some(n) if self.cfg.prompt_cache == 0 => {
                prompt.len().saturating_add(n).min(self.prompts.ctx)
            }
            _ => self.prompts.ctx,
        };
        let params = GenerateParams {
            // Without a limit, the context's end stops it.
            max_tokens: job.limits.max_tokens.unwrap_or(usize::MAX),
            stop: job.limits.stop.clone(),
            sampling: job.limits.sampling.clone(),
            stop_at_context_end: true,
            grammar: job.limits.grammar.clone(),
            grammar_triggers: job.limits.grammar_triggers.clone(),
            preserved_tokens: job.limits.preserved_tokens.clone(),
            lookup: None,
            context_shift: None,
        };
        let text = Continuation::new(&self.l.tokenizer, &prompt, &params)
            .map_err(|e| ApiError::invalid(None, e.to_string()))?;
        let scores_prompt = job.limits.echo && job.limits.logprobs.is_some();
        let loras = self.lora_ids(job)?;
        let reused = if scores_prompt {
            None
        } else {
            self.reuse(&prompt, room, &loras)
        };
        let (session, cached) = match reused {
            Some(s) => s,
            None => self
                .model
                .session_with_kv(room, self.cfg.batch, self.cfg.kv_dtype)
                .map(|mut s| {
                    s.set_loras(&loras);
                    s.set_max_checkpoints(self.cfg.ctx_checkpoints);
                    (s, 0)
                })
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        };
        let echo = match (job.limits.echo, &job.input) {
            (false, _) => None,
            (true, Input::Prompt(Prompt::Text(t))) => Some(t.clone()),
            (true, _) => Some(
                self.l
                    .tokenizer
                    .decode(&prompt, true, false)
                    .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))?,
            ),
        };
        Ok(Start {
            prompt,
            session,
            cached,
            text,
            echo,
        })
    }

    /// A kept session for `prompt`, whose tokens ran with adapters
    /// `loras`: the one holding its longest beginning (the oldest of
    /// equals), cut back to that beginning, and how many tokens it holds;
    /// at least the prompt's last token is left to run, for its logits.
    /// A model whose state cannot forget tokens (Qwen 3.5's delta nets)
    /// reuses a session up to its last checkpoint within that beginning,
    /// or whole where its every token begins the prompt.
    fn reuse(
        &mut self,
        prompt: &[u32],
        room: usize,
        loras: &[(LoraId, f32)],
    ) -> Option<(Session<B>, usize)> {
        let (i, common) = self
            .kept
            .iter()
            .enumerate()
            .filter(|(_, (_, s))| s.capacity() >= room && s.loras() == loras)
            .map(|(i, (held, s))| {
                let common = held.iter().zip(prompt).take_while(|(a, b)| a == b).count();
                (i, s.reachable(common.min(prompt.len() - 1)))
            })
            .max_by_key(|&(i, common)| (common, std::cmp::Reverse(i)))?;
        let (_, mut session) = self.kept.remove(i)?;
        session.truncate(common);
        let held = session.position();
        Some((session, held))
    }

    /// Keeps a finished request's session, with the tokens it holds, for
    /// the requests after it (the oldest kept one goes if there is no room).
    fn keep(&mut self, held: Vec<u32>, session: Session<B>) {
        if self.cfg.prompt_cache == 0 {
            return;
        }
        self.kept.push_back((held, session));
        while self.kept.len() > self.cfg.prompt_cache {
            self.kept.pop_front();
        }
    }

    /// Runs one chunk of the first prompt not yet run; a prompt run whole
    /// samples its first token.
    fn prefill(&mut self) {
        let Some(i) = self
            .running
            .iter()
            .position(|s| s.prefilled < s.prompt.len())
        else {
            return;
        };
        let s = &mut self.running[i];
        let mut end = s.prompt.len().min(s.prefilled + s.session.batch());
        // A recurrent model's chunk stops where a checkpoint is due.
        let due = s.prompt.len().checked_sub(CHECKPOINT_TAIL);
        let checkpoint = due.filter(|&at| {
            !self.model.can_forget() && self.cfg.ctx_checkpoints > 0 && at > s.prefilled
        });
        if let Some(at) = checkpoint {
            end = end.min(at);
        }
        let started = Instant::now();
        let ran = match s.job.limits.logprobs {
            Some(k) if s.scores_prompt() => {
                // Each prompt token's logits score the token after it.
                let (tok, base, prompt) = (&self.l.tokenizer, s.prefilled, &s.prompt);
                let pending = &mut s.pending;
                self.model
                    .forward_outputs(&mut s.session, &prompt[base..end], 0, |j, logits| {
                        if let Some(&next) = prompt.get(base + j + 1) {
                            pending.push(scored(tok, &LogProbs::new(logits), next, k));
                        }
                    })
            }
            _ => self
                .model
                .forward(&mut s.session, &s.prompt[s.prefilled..end])
                .map(|_| ()),
        };
        if let Err(e) = ran {
            let s = self.running.remove(i);
            fail(s, &e);
            return;
        }
        let m = &self.cfg.metrics;
        metrics::add(&m.prompt_tokens, (end - s.prefilled) as u64);
        metrics::add(&m.prompt_micros, started.elapsed().as_micros() as u64);
        s.prefilled = end;
        if checkpoint == Some(end) {
            s.session.checkpoint();
        }
        if end == s.prompt.len() {
            if let Some(text) = s.echo.take() {
                let logprobs = std::mem::take(&mut s.pending);
                // A client gone already is noticed at the next turn.
                let _ = s.job.events.send(Event::Text { text, logprobs });
            }
            self.advance(i);
        }
    }

    /// One decode step of every request with a token to run.
    fn decode(&mut self) {
        let mut rows: Vec<(&mut Session<B>, u32)> = self
            .running
            .iter_mut()
            .filter_map(|s| s.next.map(|t| (&mut s.session, t)))
            .collect();
        if rows.is_empty() {
            return;
        }
        let started = Instant::now();
        let ran = if let [(session, token)] = rows.as_mut_slice() {
            // One request alone takes the single-sequence path (the decode
            // step a GPU records as a graph); its logits are the same.
            self.model.forward(session, &[*token]).map(|_| ())
        } else {
            rows.sort_by_key(|(s, _)| s.id());
            self.model.forward_batch(&mut rows, &mut self.scratch)
        };
        if ran.is_err() {
            // No session advanced: run the rows one by one, so that only a
            // request whose own step fails fails (as the runtime's batcher).
            let mut i = 0;
            while i < self.running.len() {
                let s = &mut self.running[i];
                match s.next {
                    Some(t) => match self.model.forward(&mut s.session, &[t]) {
                        Ok(_) => i += 1,
                        Err(e) => fail(self.running.remove(i), &e),
                    },
                    None => i += 1,
                }
            }
        }
        let m = &self.cfg.metrics;
        metrics::add(&m.decode_steps, 1);
        metrics::add(&m.decode_micros, started.elapsed().as_micros() as u64);
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].next.take().is_some() && !self.advance(i) {
                continue;
            }
            i += 1;
        }
    }

    /// Samples request `i`'s next token from its logits and streams its
    /// text; returns whether the request still runs (if not, it has been
    /// removed and answered).
    fn advance(&mut self, i: usize) -> bool {
        let s = &mut self.running[i];
        let before = s.text.generated().len();
        let logits = s.session.logits();
        let stepped = s.text.step(logits);
        if let Some(k) = s.job.limits.logprobs {
            // The token sampled, unless generation ended without one.
            if let Some(&token) = s.text.generated().get(before) {
                let tok = &self.l.tokenizer;
                let entry = match s.job.limits.post_sampling {
                    true => drawn(tok, &s.text.sampler().last_distribution(), token, k),
                    false => scored(tok, &LogProbs::new(logits), token, k),
                };
                s.pending.push(entry);
            }
        }
        let (reason, text) = match stepped {
            Err(e) => {
                let s = self.running.remove(i);
                fail(s, &e);
                return false;
            }
            Ok(Step::End { reason, text }) => (reason, text),
            Ok(Step::Token { token, text }) => {
                if !text.is_empty() && !s.send(text) {
                    (StopReason::Cancelled, String::new())
                } else if s.session.position() >= s.session.capacity() {
                    // No room for the token just sampled: make some, or end.
                    let discard = s.shift.map_or(0, |sh| sh.discard(s.session.position()));
                    let keep = s.shift.map_or(0, |sh| sh.keep);
                    if discard == 0 {
                        (StopReason::ContextFull, s.text.end(StopReason::ContextFull))
                    } else if let Err(e) = self.model.shift_context(&mut s.session, keep, discard) {
                        let s = self.running.remove(i);
                        fail(s, &e);
                        return false;
                    } else {
                        s.shifted = true;
                        s.next = Some(token);
                        return true;
                    }
                } else {
                    s.next = Some(token);
                    return true;
                }
            }
        };
        let s = self.running.remove(i);
        let shifted = s.shifted;
        let (held, session) = finish(s, reason, text, &self.cfg.metrics);
        if !shifted {
            self.keep(held, session);
        }
        false
    }
}

/// A request's context shift, as llama.cpp's server counts `n_keep`: the
/// prompt's tokens after the BOS token that stay (negative: all of them),
/// at most four short of the context.
fn shift_for(tok: &Tokenizer, prompt: &[u32], n_keep: i64, capacity: usize) -> ContextShift {
    let keep = ContextShift::for_prompt(prompt, tok.bos(), n_keep).keep;
    ContextShift {
        keep: keep.min(capacity.saturating_sub(4)),
    }
}

/// Ends a request that generated what it will, with the last of its
/// `text`; returns its session and the tokens that session holds.
fn finish<B: Backend>(
    mut s: Seq<'_, B>,
    reason: StopReason,
    text: String,
    m: &Metrics,
) -> (Vec<u32>, Session<B>) {
    let generated = s.text.generated().len();
    let history = s.text.history();
    let held = history[..s.session.position().min(history.len())].to_vec();
    if reason != StopReason::Cancelled {
        if reason == StopReason::StopString {
            // Keep the tokens whose text begins before the stop string.
            let (mut at, end) = (s.sent_tokens, s.sent_text + text.len());
            s.pending.retain(|t| {
                let keep = at < end;
                at += t.token.len();
                keep
            });
        }
        if !text.is_empty() || !s.pending.is_empty() {
            s.send(text);
        }
        eprintln!(
            "realm: served {} + {generated} tokens in {:.2} s ({reason:?})",
            s.prompt.len(),
            s.start.elapsed().as_secs_f64()
        );
        let _ = s.job.events.send(Event::Done {
            reason,
            completion_tokens: generated,
            stop_word: s.text.stop_string().map(String::from),
        });
        metrics::add(&m.tokens_predicted, generated as u64);
        metrics::add(&m.sequences_done, 1);
    }
    (held, s.session)
}

/// Ends a request on an error of the model or tokenizer.
fn fail<B: Backend>(s: Seq<'_, B>, e: &dyn std::fmt::Display) {
    eprintln!("realm: a request failed: {e}");
    let _ = s.job.events.send(Event::Failed(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        e.to_string(),
    )));
}
