//! The HTTP side of `realm serve`: routes, request checks, and answers
//! whole or streamed as server-sent events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::engine::{Event, Input, Job, Ticket};
use super::openai::Limits;
use super::openai::{
    chat_logprobs, completion_logprobs, finish_reason, ApiError, ChatRequest, CompletionRequest,
    Options, PromptCount, TokenLogprob, Usage,
};

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
}

/// The routes, with and without the `/v1` prefix (as llama.cpp's server);
/// all but `/health` need the API key when the server has one.
pub fn router(app: Arc<App>, body_limit: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/completions", post(completion))
        .route("/completions", post(completion))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize))
        .route("/health", get(health))
        .fallback(|| async { error(ApiError::new(StatusCode::NOT_FOUND, "no such route")) })
        .method_not_allowed_fallback(|| async {
            error(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            ))
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(app)
}

/// Lets a request through if the server has no key or the request bears it.
async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(key) = &app.api_key else {
        return next.run(req).await;
    };
    let sent = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
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
            "a valid API key is needed: send `Authorization: Bearer KEY`",
        ))
    }
}

fn error(e: ApiError) -> Response {
    (e.status, Json(e.body())).into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A body that is not the JSON a route takes, as an OpenAI error.
fn rejected(r: JsonRejection) -> Response {
    error(ApiError::new(r.status(), r.body_text()))
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

async fn chat(
    State(app): State<Arc<App>>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(r) => return rejected(r),
    };
    let asked = req
        .conversation()
        .and_then(|turns| Ok((turns, req.options.chat_logprobs()?)));
    match asked {
        Ok((turns, logprobs)) => {
            let extra = Extra {
                logprobs,
                echo: false,
            };
            answer(&app, Kind::Chat, Input::Chat(turns), &req.options, extra).await
        }
        Err(e) => error(e),
    }
}

async fn completion(
    State(app): State<Arc<App>>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(r)) => r,
        Err(r) => return rejected(r),
    };
    let asked = req
        .prompt()
        .and_then(|p| Ok((p, req.options.completion_logprobs()?)));
    match asked {
        Ok((p, logprobs)) => {
            let extra = Extra {
                logprobs,
                echo: req.echo == Some(true),
            };
            answer(&app, Kind::Text, Input::Prompt(p), &req.options, extra).await
        }
        Err(e) => error(e),
    }
}

/// What the two endpoints ask for in their own ways.
#[derive(Debug, Clone, Copy)]
struct Extra {
    /// Alternatives per token, if log-probabilities are asked for.
    logprobs: Option<usize>,
    echo: bool,
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

    /// The whole answer.
    fn whole(&self, text: String, tokens: &[TokenLogprob], reason: &str, usage: Usage) -> Value {
        let logprobs = self.logprobs(tokens, &mut 0);
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": reason,
            }),
            Kind::Text => json!({
                "index": 0,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": reason,
            }),
        };
        self.wrap(false, json!([choice]), Some(usage))
    }

    /// The events that stream engine event `e` (`None`: the engine
    /// stopped) to the client; whether the stream ends with them. A text
    /// completion's log-probability offsets go on from `offset`.
    fn events(
        &self,
        e: Option<Event>,
        prompt: PromptCount,
        include_usage: bool,
        offset: &mut usize,
        out: &mut VecDeque<sse::Event>,
    ) -> bool {
        match e {
            Some(Event::Text { text, logprobs }) => {
                let logprobs = self.logprobs(&logprobs, offset);
                out.push_back(data(&self.chunk(Some(&text), None, logprobs)));
                false
            }
            Some(Event::Done {
                reason,
                completion_tokens,
            }) => {
                let end = self.chunk(None, Some(finish_reason(reason)), Value::Null);
                out.push_back(data(&end));
                if include_usage {
                    let usage = Usage::new(prompt, completion_tokens);
                    out.push_back(data(&self.wrap(true, json!([]), Some(usage))));
                }
                out.push_back(sse::Event::default().data("[DONE]"));
                true
            }
            Some(Event::Failed(e)) => {
                out.push_back(data(&e.body()));
                true
            }
            Some(Event::Started { .. }) | None => {
                out.push_back(data(&stopped().body()));
                true
            }
        }
    }

    /// A streamed piece: text and its `logprobs`, or the end (`reason`).
    fn chunk(&self, text: Option<&str>, reason: Option<&str>, logprobs: Value) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let delta = text.map_or(json!({}), |t| json!({"content": t}));
                json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason})
            }
            Kind::Text => json!({
                "index": 0,
                "text": text.unwrap_or(""),
                "logprobs": logprobs,
                "finish_reason": reason,
            }),
        };
        self.wrap(true, json!([choice]), None)
    }
}

/// Queues the request and answers it, whole or streamed.
async fn answer(app: &App, kind: Kind, input: Input, options: &Options, extra: Extra) -> Response {
    let n = app.count.fetch_add(1, Ordering::Relaxed);
    // A request without a seed gets one of its own.
    let seed = (u64::from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    )) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let limits = match options.limits(seed, extra.echo) {
        Ok(l) => Limits {
            logprobs: extra.logprobs,
            ..l
        },
        Err(e) => return error(e),
    };
    let Some(ticket) = Ticket::take(&app.held, app.limit) else {
        return error(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server holds {} requests already; try again later",
                app.limit
            ),
        ));
    };
    let (events, mut rx) = unbounded_channel();
    let job = Job {
        input,
        limits,
        events,
        _ticket: ticket,
    };
    if app.jobs.send(job).is_err() {
        return error(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine has stopped",
        ));
    }
    let prompt = match rx.recv().await {
        Some(Event::Started {
            prompt_tokens,
            cached_tokens,
        }) => PromptCount {
            tokens: prompt_tokens,
            cached: cached_tokens,
        },
        Some(Event::Failed(e)) => return error(e),
        _ => return error(stopped()),
    };
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
    };
    if options.stream {
        stream(reply, rx, prompt, options.include_usage())
    } else {
        whole(reply, rx, prompt).await
    }
}

fn stopped() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the engine stopped before the answer ended",
    )
}

async fn whole(reply: Reply, mut rx: UnboundedReceiver<Event>, prompt: PromptCount) -> Response {
    let mut text = String::new();
    let mut tokens = Vec::new();
    loop {
        match rx.recv().await {
            Some(Event::Text { text: t, logprobs }) => {
                text.push_str(&t);
                tokens.extend(logprobs);
            }
            Some(Event::Done {
                reason,
                completion_tokens,
            }) => {
                let usage = Usage::new(prompt, completion_tokens);
                let answer = reply.whole(text, &tokens, finish_reason(reason), usage);
                return Json(answer).into_response();
            }
            Some(Event::Failed(e)) => return error(e),
            Some(Event::Started { .. }) | None => return error(stopped()),
        }
    }
}

/// The answer as server-sent events: for a chat, a first chunk with the
/// role; a chunk per piece of text; a last chunk with the finish reason;
/// with `include_usage` a chunk of token counts; then `[DONE]`. An error
/// after the stream began is sent as an `{"error": ...}` event, and the
/// stream ends.
fn stream(
    reply: Reply,
    rx: UnboundedReceiver<Event>,
    prompt: PromptCount,
    include_usage: bool,
) -> Response {
    let mut first = VecDeque::new();
    if let Kind::Chat = reply.kind {
        let mut role = reply.chunk(None, None, Value::Null);
        role["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
        first.push_back(data(&role));
    }
    let reply = Arc::new(reply);
    let state = (rx, first, false, 0);
    let events =
        futures_util::stream::unfold(state, move |(mut rx, mut out, mut ended, mut at)| {
            let reply = reply.clone();
            async move {
                loop {
                    if let Some(e) = out.pop_front() {
                        return Some((Ok::<_, Infallible>(e), (rx, out, ended, at)));
                    }
                    if ended {
                        return None;
                    }
                    let e = rx.recv().await;
                    ended = reply.events(e, prompt, include_usage, &mut at, &mut out);
                }
            }
        });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn data(v: &Value) -> sse::Event {
    sse::Event::default().data(v.to_string())
}
