//! The HTTP side of `realm serve`: routes, request checks, and answers
//! whole or streamed as server-sent events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tower_http::cors::{AllowOrigin, CorsLayer};

use realm_core::tokenizer::Tokenizer;
use realm_models::reasoning::{ReasoningFormat, ReasoningSplitter, ReplyParts};
use realm_models::tools::{ToolCall, Tools};
use realm_models::StopReason;

use super::body::Body;
use super::engine::{Conversation, Event, Events, Input, Job, Ticket};
use super::logprobs::{chat_logprobs, completion_logprobs, TokenLogprob};
use super::lora::{self, Loras};
use super::metrics::Metrics;
use super::openai::Limits;
use super::openai::{
    finish_reason, ApiError, ChatRequest, CompletionRequest, Options, PromptCount, Usage,
};
use super::props::{self, Props};
use super::tools::{self, Outcome, ToolMode};
use super::{anthropic, embeddings, native, rerank, responses, tokens};

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// The engine's queue.
    pub jobs: Sender<Job>,
    /// Requests held now (running or waiting).
    pub held: Arc<AtomicUsize>,
    /// Most requests held at once; more get a 503.
    pub limit: usize,
    /// The model's name in answers.
    pub model: String,
    /// When the server started (Unix seconds), the model's `created`.
    pub created: u64,
    /// Numbers requests' ids.
    pub count: AtomicU64,
    /// The key clients must send (`Authorization: Bearer KEY`), if any.
    pub api_key: Option<String>,
    /// The model's tokenizer, for /tokenize and /detokenize.
    pub tokenizer: Tokenizer,
    /// The engine's counters, when `/metrics` serves them.
    pub metrics: Option<Arc<Metrics>>,
    /// What `/props` reports; the template `/apply-template` renders with.
    pub props: Props,
    /// The LoRA adapters and the scales requests run with.
    pub loras: Loras,
    /// How chat replies' reasoning is told from their answers, unless a
    /// request says otherwise (`None`: it is not).
    pub reasoning: Option<ReasoningFormat>,
}

impl App {
    /// A chat request's messages and tools for the model's chat template
    /// ([`tools::prepare`]).
    pub(super) fn prepare(
        &self,
        req: &ChatRequest,
    ) -> Result<(Conversation, Option<ToolMode>), ApiError> {
        let source = self.props.template.as_ref().ok().map(|t| t.source());
        tools::prepare(req, source)
    }

    /// The control tokens chat replies show as text whatever the request
    /// asks: the template's reasoning markers where they are control
    /// tokens (Mistral's `[THINK]`), as llama-server preserves them.
    pub(super) fn chat_markers(&self) -> &'static [&'static str] {
        self.props
            .template
            .as_ref()
            .ok()
            .and_then(|t| ReasoningFormat::of_template(t.source()))
            .map_or(&[], ReasoningFormat::preserved_tokens)
    }
}

/// The CORS policy for `origins` (`*`: any), or none.
pub fn cors(origins: &[String]) -> anyhow::Result<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                header::HeaderValue::from_str(o)
                    .map_err(|_| anyhow::anyhow!("--cors: `{o}` is no origin"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]),
    ))
}

/// The routes, with and without the `/v1` prefix (as llama.cpp's server);
/// all but `/health` need the API key when the server has one. A CORS
/// policy, if given, answers browsers' preflight requests before any route.
pub fn router(app: Arc<App>, body_limit: usize, cors: Option<CorsLayer>) -> Router {
    let mut router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/completions", post(completion))
        .route("/completions", post(native::completion))
        .route("/completion", post(native::completion))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/embeddings", post(embeddings::embeddings))
        .route("/embedding", post(embeddings::embeddings))
        .route("/v1/rerank", post(rerank::rerank))
        .route("/rerank", post(rerank::rerank))
        .route("/v1/reranking", post(rerank::rerank))
        .route("/reranking", post(rerank::rerank))
        .route("/tokenize", post(tokens::tokenize))
        .route("/detokenize", post(tokens::detokenize))
        .route("/props", get(props::props))
        .route("/apply-template", post(props::apply_template))
        .route("/v1/responses", post(responses::responses))
        .route("/responses", post(responses::responses))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/lora-adapters", get(lora::list).post(lora::set))
        .route("/v1/models", get(models))
        .route("/models", get(models));
    if app.metrics.is_some() {
        router = router.route("/metrics", get(metrics));
    }
    let router = router
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize))
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .fallback(|| async { error(ApiError::new(StatusCode::NOT_FOUND, "no such route")) })
        .method_not_allowed_fallback(|| async {
            error(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            ))
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app);
    match cors {
        Some(c) => router.layer(c),
        None => router,
    }
}

/// Lets a request through if the server has no key or the request bears it.
async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(key) = &app.api_key else {
        return next.run(req).await;
    };
    let headers = req.headers();
    // Anthropic's clients send theirs as `x-api-key`.
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    // Every byte is compared, so that the time taken does not tell how
    // much of a guess was right.
    let matches = sent.is_some_and(|s| {
        s.len() == key.len() && s.bytes().zip(key.bytes()).fold(0, |d, (a, b)| d | (a ^ b)) == 0
    });
    if matches {
        next.run(req).await
    } else {
        error(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid API key is needed: send `Authorization: Bearer KEY` (or `x-api-key: KEY`)",
        ))
    }
}

pub(super) fn error(e: ApiError) -> Response {
    (e.status, Json(e.body())).into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = app.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": app.model,
            "object": "model",
            "created": app.created,
            "owned_by": "realm",
        }],
    }))
}

async fn chat(State(app): State<Arc<App>>, Body(req): Body<ChatRequest>) -> Response {
    let asked = app.prepare(&req).and_then(|(turns, tools)| {
        let reasoning = reasoning(&app, &req, &turns)?;
        Ok((turns, req.options.chat_logprobs()?, tools, reasoning))
    });
    match asked {
        Ok((turns, logprobs, tools, reasoning)) => {
            let extra = Extra {
                logprobs,
                echo: false,
                tools,
                reasoning,
            };
            answer(
                &app,
                Kind::Chat,
                vec![Input::Chat(turns)],
                &req.options,
                extra,
            )
            .await
        }
        Err(e) => error(e),
    }
}

/// A chat request's reasoning format (its `reasoning_format`, or the
/// server's; `deepseek` a think block with the template's markers), and
/// whether its prompt opens a think block already (the template's
/// generation prompt ends with `<think>`, as Qwen 3's and DeepSeek R1's
/// may).
pub(super) fn reasoning(
    app: &App,
    req: &ChatRequest,
    chat: &Conversation,
) -> Result<Option<(ReasoningFormat, bool)>, ApiError> {
    let format = match req.reasoning_format.as_deref() {
        None | Some("auto") => app.reasoning,
        Some("none") => None,
        Some("deepseek") => Some(
            app.props
                .template
                .as_ref()
                .map_or(ReasoningFormat::Think, |t| {
                    ReasoningFormat::block_of_template(t.source())
                }),
        ),
        Some(other) => {
            return Err(ApiError::invalid(
                Some("reasoning_format"),
                format!("reasoning_format `{other}`: none, deepseek or auto"),
            ))
        }
    };
    Ok(format.map(|f| {
        let thinking = f.block().is_some()
            && super::prompt::render(&app.props.template, chat).is_ok_and(|p| f.opened_by(&p));
        (f, thinking)
    }))
}

async fn completion(State(app): State<Arc<App>>, Body(req): Body<CompletionRequest>) -> Response {
    let asked = req
        .prompts()
        .and_then(|p| Ok((p, req.options.completion_logprobs()?)));
    match asked {
        Ok((prompts, logprobs)) => {
            let extra = Extra {
                logprobs,
                echo: req.echo == Some(true),
                tools: None,
                reasoning: None,
            };
            let inputs = prompts.into_iter().map(Input::Prompt).collect();
            answer(&app, Kind::Text, inputs, &req.options, extra).await
        }
        Err(e) => error(e),
    }
}

/// What the two endpoints ask for in their own ways.
#[derive(Debug, Clone)]
struct Extra {
    /// Alternatives per token, if log-probabilities are asked for.
    logprobs: Option<usize>,
    echo: bool,
    /// A chat's tools, whose grammar replaces any other.
    tools: Option<ToolMode>,
    /// A chat's reasoning format, and whether its prompt opened a think
    /// block.
    reasoning: Option<(ReasoningFormat, bool)>,
}

/// Which endpoint answers: they differ only in their JSON.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Chat,
    Text,
}

/// An answer's fixed fields and the shapes of its JSON.
struct Reply {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    /// Whether choices carry log-probabilities.
    logprobs: bool,
    /// Choices in all (prompts times `n`).
    choices: usize,
    /// Choices per prompt (`n`).
    per_prompt: usize,
    /// A chat's tools: replies are read as calls or content.
    tools: Option<Arc<Tools>>,
    /// A chat's reasoning format, and whether its prompt opened a think
    /// block.
    reasoning: Option<(ReasoningFormat, bool)>,
}

/// One choice's answer, as its events arrive.
#[derive(Debug, Default)]
struct Choice {
    /// The reply, or with a reasoning format its answer.
    text: String,
    /// With a reasoning format, the reply as generated (see [`Choice::raw`]).
    raw: String,
    /// With a reasoning format: the reasoning, and what tells it apart.
    reasoning: String,
    split: Option<ReasoningSplitter>,
    tokens: Vec<TokenLogprob>,
    /// Why it ended and how many tokens it generated, once it has.
    done: Option<(StopReason, usize)>,
    /// A text completion's character offset for its next token.
    offset: usize,
    /// With tools: bytes of content streamed so far, and tokens whose
    /// log-probabilities have not gone out with a chunk yet.
    sent: usize,
    held: Vec<TokenLogprob>,
    /// With tools: each call that streams as it is written, its argument
    /// bytes streamed so far.
    calls: Vec<usize>,
}

/// A request's events: those that came before every choice had started,
/// then the channel's.
struct Inbox {
    early: VecDeque<(usize, Event)>,
    rx: UnboundedReceiver<(usize, Event)>,
}

impl Choice {
    fn new(reply: &Reply) -> Self {
        Self {
            split: reply.reasoning.map(|(format, thinking)| {
                tools::splitter(reply.tools.as_deref(), format, thinking)
            }),
            ..Self::default()
        }
    }

    /// What a piece of the reply adds to the reasoning and the answer
    /// (`None`: the reply has ended; what was held back).
    fn parts(&mut self, text: Option<&str>) -> ReplyParts {
        match (&mut self.split, text) {
            (Some(s), Some(t)) => s.push(t),
            (Some(s), None) => s.finish(),
            (None, t) => ReplyParts {
                reasoning: String::new(),
                content: t.unwrap_or_default().to_string(),
            },
        }
    }

    /// The `tool_calls` deltas of the calls written since the last ones
    /// ([`tools::call_deltas`]).
    fn call_deltas(&mut self, tools: &Tools, stem: &str) -> Vec<Value> {
        let raw = if self.split.is_some() {
            &self.raw
        } else {
            &self.text
        };
        let prefixes = tools.call_prefixes(&self.text, raw);
        tools::call_deltas(tools, &prefixes, &mut self.calls, stem)
    }

    /// The `tool_calls` deltas that end the reply, whose calls are `calls`
    /// ([`tools::last_call_deltas`]).
    fn last_call_deltas(&mut self, tools: &Tools, calls: &[ToolCall], stem: &str) -> Vec<Value> {
        let raw = if self.split.is_some() {
            &self.raw
        } else {
            &self.text
        };
        let prefixes = tools.ended_call_prefixes(&self.text, raw);
        tools::last_call_deltas(tools, &prefixes, calls, &mut self.calls, stem)
    }

    /// The reply as generated, markers and reasoning included.
    fn raw(&self) -> &str {
        match self.split {
            Some(_) => &self.raw,
            None => &self.text,
        }
    }

    /// Adds a piece of the reply (`None`: the reply has ended) to the
    /// answer and the reasoning; returns the reasoning it added. Without a
    /// reasoning format the piece goes to the answer as it is, uncopied.
    fn add(&mut self, text: Option<&str>) -> String {
        if self.split.is_none() {
            self.text.push_str(text.unwrap_or_default());
            return String::new();
        }
        self.raw.push_str(text.unwrap_or_default());
        let parts = self.parts(text);
        self.text.push_str(&parts.content);
        self.reasoning.push_str(&parts.reasoning);
        parts.reasoning
    }
}

impl Inbox {
    async fn next(&mut self) -> Option<(usize, Event)> {
        match self.early.pop_front() {
            Some(e) => Some(e),
            None => self.rx.recv().await,
        }
    }
}

impl Reply {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Text, _) => "text_completion",
        }
    }

    fn wrap(&self, chunk: bool, choices: Value, usage: Option<Usage>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = json!(u);
        }
        v
    }

    /// A choice's `logprobs` for `tokens` (null unless asked for); a text
    /// completion's offsets go on from `offset`.
    fn logprobs(&self, tokens: &[TokenLogprob], offset: &mut usize) -> Value {
        match (self.logprobs, self.kind) {
            (false, _) => Value::Null,
            (true, Kind::Chat) => chat_logprobs(tokens),
            (true, Kind::Text) => completion_logprobs(tokens, offset),
        }
    }

    /// The token counts of finished `choices` (a prompt counted once
    /// however many choices it has).
    fn usage(&self, prompts: &[PromptCount], choices: &[Choice]) -> Usage {
        let prompt = prompts.iter().step_by(self.per_prompt).fold(
            PromptCount {
                tokens: 0,
                cached: 0,
            },
            |a, p| PromptCount {
                tokens: a.tokens + p.tokens,
                cached: a.cached + p.cached,
            },
        );
        let generated = choices.iter().filter_map(|c| c.done).map(|(_, n)| n).sum();
        Usage::new(prompt, generated)
    }

    /// The whole answer.
    fn whole(&self, choices: &[Choice], usage: Usage) -> Value {
        let choices: Vec<Value> = choices
            .iter()
            .enumerate()
            .map(|(index, c)| {
                let logprobs = self.logprobs(&c.tokens, &mut 0);
                let mut reason = c.done.map(|(r, _)| finish_reason(r));
                match self.kind {
                    Kind::Chat => {
                        let mut message = json!({"role": "assistant", "content": c.text});
                        if !c.reasoning.is_empty() {
                            message["reasoning_content"] = json!(c.reasoning);
                        }
                        if let Some(t) = &self.tools {
                            match tools::outcome(t, &c.text, c.raw()) {
                                Outcome::Calls(calls, content) => {
                                    message["content"] = match content.is_empty() {
                                        true => Value::Null,
                                        false => json!(content),
                                    };
                                    message["tool_calls"] =
                                        tools::calls_json(t, &calls, &self.call_id(index), false);
                                    reason = Some("tool_calls");
                                }
                                Outcome::Content(text) => message["content"] = json!(text),
                            }
                        }
                        json!({
                            "index": index,
                            "message": message,
                            "logprobs": logprobs,
                            "finish_reason": reason,
                        })
                    }
                    Kind::Text => json!({
                        "index": index,
                        "text": c.text,
                        "logprobs": logprobs,
                        "finish_reason": reason,
                    }),
                }
            })
            .collect();
        self.wrap(false, json!(choices), Some(usage))
    }

    /// The stem of the ids of choice `index`'s tool calls.
    fn call_id(&self, index: usize) -> String {
        let id = self.id.strip_prefix("chatcmpl-").unwrap_or(&self.id);
        format!("{id}_{index}")
    }

    /// A streamed piece of choice `index`: text and its `logprobs`, or the
    /// end (`reason`).
    fn chunk(
        &self,
        index: usize,
        text: Option<&str>,
        reason: Option<&str>,
        logprobs: Value,
    ) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let delta = text.map_or(json!({}), |t| json!({"content": t}));
                json!({"index": index, "delta": delta, "logprobs": logprobs,
                       "finish_reason": reason})
            }
            Kind::Text => json!({
                "index": index,
                "text": text.unwrap_or(""),
                "logprobs": logprobs,
                "finish_reason": reason,
            }),
        };
        self.wrap(true, json!([choice]), None)
    }

    /// A streamed piece of a chat's choice `index` with reasoning: its
    /// reasoning and answer text (whichever it has) and `logprobs`.
    fn parts_chunk(&self, index: usize, parts: &ReplyParts, logprobs: Value) -> Value {
        let mut chunk = self.chunk(index, None, None, logprobs);
        let delta = &mut chunk["choices"][0]["delta"];
        if !parts.reasoning.is_empty() {
            delta["reasoning_content"] = json!(parts.reasoning);
        }
        if !parts.content.is_empty() {
            delta["content"] = json!(parts.content);
        }
        chunk
    }
}

/// The request's number, and a seed for a request without one of its own.
pub(super) fn number(app: &App) -> (u64, u64) {
    let n = app.count.fetch_add(1, Ordering::Relaxed);
    let seed = (u64::from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    )) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (n, seed)
}

/// Queues the request's sequences (each prompt `n` times) and answers them,
/// whole or streamed, once every one has started (or one has failed).
async fn answer(
    app: &App,
    kind: Kind,
    inputs: Vec<Input>,
    options: &Options,
    extra: Extra,
) -> Response {
    let (n, seed) = number(app);
    let asked = options.choices().and_then(|per_prompt| {
        let markers = match kind {
            Kind::Chat => app.chat_markers(),
            Kind::Text => &[],
        };
        let limits = tools::limits(options, seed, extra.echo, extra.tools.as_ref(), markers)?;
        Ok((per_prompt, limits))
    });
    let (per_prompt, limits) = match asked {
        Ok(a) => a,
        Err(e) => return error(e),
    };
    let total = inputs.len() * per_prompt;
    let sequences = inputs
        .iter()
        .flat_map(|input| std::iter::repeat_n(input, per_prompt))
        .enumerate()
        .map(|(index, input)| {
            let mut limits = Limits {
                logprobs: extra.logprobs,
                ..limits.clone()
            };
            limits.sampling.seed = limits
                .sampling
                .seed
                .wrapping_add((index % per_prompt) as u64);
            (input.clone(), limits)
        })
        .collect();
    let rx = match submit(app, sequences) {
        Ok(rx) => rx,
        Err(e) => return error(e),
    };
    let mut inbox = Inbox {
        early: VecDeque::new(),
        rx,
    };
    let mut prompts: Vec<Option<PromptCount>> = vec![None; total];
    while prompts.iter().any(Option::is_none) {
        match inbox.rx.recv().await {
            Some((
                i,
                Event::Started {
                    prompt_tokens,
                    cached_tokens,
                },
            )) => match prompts.get_mut(i) {
                Some(p) => {
                    *p = Some(PromptCount {
                        tokens: prompt_tokens,
                        cached: cached_tokens,
                    });
                }
                None => return error(stopped()),
            },
            Some((_, Event::Failed(e))) => return error(e),
            Some(e) => inbox.early.push_back(e),
            None => return error(stopped()),
        }
    }
    let prompts: Vec<PromptCount> = prompts.into_iter().flatten().collect();
    let reply = Reply {
        kind,
        id: format!(
            "{}-{:x}{n:04x}",
            match kind {
                Kind::Chat => "chatcmpl",
                Kind::Text => "cmpl",
            },
            app.created
        ),
        created: now(),
        model: app.model.clone(),
        logprobs: extra.logprobs.is_some(),
        choices: total,
        per_prompt,
        tools: extra.tools.map(|(t, _)| t),
        reasoning: extra.reasoning,
    };
    if options.stream {
        stream(reply, inbox, prompts, options.include_usage())
    } else {
        whole(reply, inbox, &prompts).await
    }
}

/// Takes a place for each sequence and queues it for the engine, its events
/// tagged with its index on one channel, which is returned.
pub(super) fn submit(
    app: &App,
    sequences: Vec<(Input, Limits)>,
) -> Result<UnboundedReceiver<(usize, Event)>, ApiError> {
    let count = sequences.len();
    let tickets = Ticket::take(&app.held, app.limit, count).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server holds at most {} sequences and has no room for {count} more; \
                 try again later",
                app.limit
            ),
        )
    })?;
    let loras = sequences
        .iter()
        .map(|(_, l)| app.loras.resolve(l.lora.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    let (tx, rx) = unbounded_channel();
    let jobs = sequences.into_iter().zip(loras).enumerate().zip(tickets);
    for ((index, ((input, limits), loras)), ticket) in jobs {
        let job = Job {
            input,
            limits,
            loras,
            events: Events {
                index,
                tx: tx.clone(),
            },
            _ticket: ticket,
        };
        app.jobs.send(job).map_err(|_| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the engine has stopped")
        })?;
    }
    Ok(rx)
}

pub(super) fn stopped() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the engine stopped before the answer ended",
    )
}

async fn whole(reply: Reply, mut inbox: Inbox, prompts: &[PromptCount]) -> Response {
    let mut choices: Vec<Choice> = (0..reply.choices).map(|_| Choice::new(&reply)).collect();
    let mut left = reply.choices;
    while left > 0 {
        let e = inbox.next().await;
        // (Every event is of one of the request's choices.)
        let Some(c) = e.as_ref().and_then(|(i, _)| choices.get_mut(*i)) else {
            return error(stopped());
        };
        match e {
            Some((_, Event::Text { text, logprobs })) => {
                c.add(Some(&text));
                c.tokens.extend(logprobs);
            }
            Some((
                _,
                Event::Done {
                    reason,
                    completion_tokens,
                    ..
                },
            )) => {
                if c.done.is_none() {
                    left -= 1;
                    c.add(None);
                }
                c.done = Some((reason, completion_tokens));
            }
            Some((_, Event::Failed(e))) => return error(e),
            Some((_, Event::Started { .. } | Event::Embedding(_))) | None => {
                return error(stopped())
            }
        }
    }
    let usage = reply.usage(prompts, &choices);
    Json(reply.whole(&choices, usage)).into_response()
}

/// A streamed answer's state.
struct Streaming {
    inbox: Inbox,
    /// Events ready to go.
    out: VecDeque<sse::Event>,
    choices: Vec<Choice>,
    left: usize,
    ended: bool,
}

impl Streaming {
    /// Turns the next engine event (`None`: the engine stopped) into
    /// events for the client: a choice's text, a choice's end; after the
    /// last choice's end, the usage (if asked for) and `[DONE]`.
    fn on(
        &mut self,
        reply: &Reply,
        e: Option<(usize, Event)>,
        prompts: &[PromptCount],
        include_usage: bool,
    ) {
        let i = match &e {
            Some((i, _)) if *i < self.choices.len() => *i,
            // (Every event is of one of the request's choices.)
            _ => {
                self.out.push_back(data(&stopped().body()));
                self.ended = true;
                return;
            }
        };
        match e {
            Some((_, Event::Text { text, logprobs })) if reply.tools.is_some() => {
                let c = &mut self.choices[i];
                let reasoning = c.add(Some(&text));
                if !reasoning.is_empty() {
                    let reasoning = ReplyParts {
                        reasoning,
                        content: String::new(),
                    };
                    self.out
                        .push_back(data(&reply.parts_chunk(i, &reasoning, Value::Null)));
                }
                c.held.extend(logprobs);
                let tools = reply.tools.as_ref().expect("matched with tools");
                if let Some(content) = tools.streamable(&c.text) {
                    if content.len() > c.sent {
                        let logprobs = reply.logprobs(&std::mem::take(&mut c.held), &mut 0);
                        let chunk = reply.chunk(i, Some(&content[c.sent..]), None, logprobs);
                        c.sent = content.len();
                        self.out.push_back(data(&chunk));
                    }
                }
                // Calls as they are written.
                let deltas = c.call_deltas(tools, &reply.call_id(i));
                if !deltas.is_empty() {
                    let logprobs = reply.logprobs(&std::mem::take(&mut c.held), &mut 0);
                    let mut chunk = reply.chunk(i, None, None, logprobs);
                    chunk["choices"][0]["delta"] = json!({ "tool_calls": deltas });
                    self.out.push_back(data(&chunk));
                }
            }
            Some((_, Event::Text { text, logprobs })) => {
                let c = &mut self.choices[i];
                let logprobs = reply.logprobs(&logprobs, &mut c.offset);
                let chunk = match c.split.is_some() {
                    true => {
                        let parts = c.parts(Some(&text));
                        // (Text the splitter holds back makes no chunk of
                        // its own, unless its tokens' log-probabilities go.)
                        let empty = parts == ReplyParts::default() && logprobs.is_null();
                        (!empty).then(|| reply.parts_chunk(i, &parts, logprobs))
                    }
                    false => Some(reply.chunk(i, Some(&text), None, logprobs)),
                };
                self.out.extend(chunk.map(|c| data(&c)));
            }
            Some((
                _,
                Event::Done {
                    reason,
                    completion_tokens,
                    ..
                },
            )) => {
                if self.choices[i].done.is_none() {
                    self.left = self.left.saturating_sub(1);
                    // What the reasoning splitter held back.
                    let c = &mut self.choices[i];
                    if c.split.is_some() {
                        let mut parts = c.parts(None);
                        if reply.tools.is_some() {
                            c.text.push_str(&std::mem::take(&mut parts.content));
                        }
                        if parts != ReplyParts::default() {
                            self.out
                                .push_back(data(&reply.parts_chunk(i, &parts, Value::Null)));
                        }
                    }
                }
                self.choices[i].done = Some((reason, completion_tokens));
                let mut reason = finish_reason(reason);
                if let Some(tools) = &reply.tools {
                    let c = &mut self.choices[i];
                    let held = std::mem::take(&mut c.held);
                    let logprobs = reply.logprobs(&held, &mut 0);
                    match tools::outcome(tools, &c.text, c.raw()) {
                        Outcome::Calls(calls, content) => {
                            // Content beside the calls that has not gone out.
                            let rest = content.get(c.sent..).unwrap_or("");
                            if !rest.is_empty() {
                                let chunk = reply.chunk(i, Some(rest), None, Value::Null);
                                self.out.push_back(data(&chunk));
                            }
                            let deltas = c.last_call_deltas(tools, &calls, &reply.call_id(i));
                            if !deltas.is_empty() || !held.is_empty() {
                                let mut chunk = reply.chunk(i, None, None, logprobs);
                                if !deltas.is_empty() {
                                    chunk["choices"][0]["delta"] = json!({ "tool_calls": deltas });
                                }
                                self.out.push_back(data(&chunk));
                            }
                            reason = "tool_calls";
                        }
                        Outcome::Content(content) => {
                            let rest = content.get(c.sent..).unwrap_or("");
                            if !rest.is_empty() || !held.is_empty() {
                                let chunk = reply.chunk(i, Some(rest), None, logprobs);
                                self.out.push_back(data(&chunk));
                            }
                        }
                    }
                }
                let end = reply.chunk(i, None, Some(reason), Value::Null);
                self.out.push_back(data(&end));
                if self.left == 0 {
                    if include_usage {
                        let usage = reply.usage(prompts, &self.choices);
                        self.out
                            .push_back(data(&reply.wrap(true, json!([]), Some(usage))));
                    }
                    self.out.push_back(sse::Event::default().data("[DONE]"));
                    self.ended = true;
                }
            }
            Some((_, Event::Failed(e))) => {
                self.out.push_back(data(&e.body()));
                self.ended = true;
            }
            Some((_, Event::Started { .. } | Event::Embedding(_))) | None => {
                self.out.push_back(data(&stopped().body()));
                self.ended = true;
            }
        }
    }
}

/// The answer as server-sent events: for a chat, a first chunk per choice
/// with the role; a chunk per piece of text, tagged with its choice's
/// index; a chunk with each choice's finish reason; with `include_usage` a
/// chunk of token counts; then `[DONE]`. An error after the stream began
/// is sent as an `{"error": ...}` event, and the stream ends.
fn stream(reply: Reply, inbox: Inbox, prompts: Vec<PromptCount>, include_usage: bool) -> Response {
    let mut out = VecDeque::new();
    if let Kind::Chat = reply.kind {
        for i in 0..reply.choices {
            let mut role = reply.chunk(i, None, None, Value::Null);
            role["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
            out.push_back(data(&role));
        }
    }
    let state = Streaming {
        inbox,
        out,
        choices: (0..reply.choices).map(|_| Choice::new(&reply)).collect(),
        left: reply.choices,
        ended: false,
    };
    let shared = Arc::new((reply, prompts));
    let events = futures_util::stream::unfold(state, move |mut st| {
        let shared = shared.clone();
        async move {
            loop {
                if let Some(e) = st.out.pop_front() {
                    return Some((Ok::<_, Infallible>(e), st));
                }
                if st.ended {
                    return None;
                }
                let e = st.inbox.next().await;
                let (reply, prompts) = &*shared;
                st.on(reply, e, prompts, include_usage);
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub(super) fn data(v: &Value) -> sse::Event {
    sse::Event::default().data(v.to_string())
}
