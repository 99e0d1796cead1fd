//! What the other APIs' endpoints share (Anthropic's Messages, OpenAI's
//! Responses): a chat request run on the engine, its events read one at a
//! time, and server-sent events named by their `type`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use realm_models::reasoning::{ReasoningFormat, ReasoningSplitter, ReplyParts};
use realm_models::tools::Tools;
use realm_models::StopReason;
use serde_json::{Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::engine::{Event, Input};
use super::http::{number, reasoning, stopped, submit, App};
use super::openai::{ApiError, ChatRequest};
use super::tools::{self, Outcome};

/// Copies the fields `(from, to)` of `from` that are set into `to` under
/// their new names.
pub fn copy_fields(from: &Map<String, Value>, to: &mut Map<String, Value>, names: &[(&str, &str)]) {
    for (f, t) in names {
        if let Some(v) = from.get(*f).filter(|v| !v.is_null()) {
            to.insert((*t).into(), v.clone());
        }
    }
}

/// A chat completion request (OpenAI's JSON, as an adapter made it) read.
pub fn chat_request(body: Value) -> Result<ChatRequest, ApiError> {
    serde_json::from_value(body).map_err(|e| ApiError::invalid(None, e.to_string()))
}

/// One chat request running on the engine, after it started.
pub struct Run {
    rx: UnboundedReceiver<(usize, Event)>,
    early: VecDeque<Event>,
    /// The request's number (unique to the server).
    pub n: u64,
    pub prompt_tokens: usize,
    /// Of those, the ones a kept cache held.
    pub cached_tokens: usize,
    /// The request's tools: its reply is read as calls or content.
    pub tools: Option<Arc<Tools>>,
    /// Whether the request asked for a stream.
    pub stream: bool,
    /// How its reasoning is told from its answer, and whether its prompt
    /// opened a think block.
    pub reasoning: Option<(ReasoningFormat, bool)>,
}

/// A reply that ended.
pub struct Finished {
    /// The reply, or where its reasoning was told apart its answer.
    pub text: String,
    /// The reply as generated (markers and reasoning included).
    pub raw: String,
    /// Its reasoning, where that was told apart.
    pub reasoning: String,
    pub reason: StopReason,
    pub completion_tokens: usize,
    /// The stop string that ended it.
    pub stop_word: Option<String>,
}

impl Finished {
    /// The reply read under the request's tools (its text without them).
    pub fn outcome(&self, tools: Option<&Tools>) -> Outcome {
        match tools {
            Some(t) => tools::outcome(t, &self.text, &self.raw),
            None => Outcome::Content(self.text.clone()),
        }
    }
}

impl Run {
    /// Queues `req` (one answer) and waits until it starts or fails.
    pub async fn start(app: &App, req: &ChatRequest) -> Result<Self, ApiError> {
        let (turns, tool_mode) = app.prepare(req)?;
        let reasoning = reasoning(app, req, &turns)?;
        if req.options.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(Some("n"), "this API answers once"));
        }
        let (n, seed) = number(app);
        let limits = tools::limits(
            &req.options,
            seed,
            false,
            tool_mode.as_ref(),
            app.chat_markers(),
        )?;
        let mut rx = submit(app, vec![(Input::Chat(turns), limits)])?;
        let mut early = VecDeque::new();
        loop {
            match rx.recv().await.map(|(_, e)| e) {
                Some(Event::Started {
                    prompt_tokens,
                    cached_tokens,
                }) => {
                    return Ok(Self {
                        rx,
                        early,
                        n,
                        prompt_tokens,
                        cached_tokens,
                        tools: tool_mode.map(|(t, _)| t),
                        stream: req.options.stream,
                        reasoning,
                    })
                }
                Some(Event::Failed(e)) => return Err(e),
                Some(e) => early.push_back(e),
                None => return Err(stopped()),
            }
        }
    }

    /// [`Run::start`] for a request an adapter read (or failed to).
    pub async fn read_and_start(
        app: &App,
        req: Result<ChatRequest, ApiError>,
    ) -> Result<Self, ApiError> {
        Self::start(app, &req?).await
    }

    /// The next event; `None` when the engine has gone.
    pub async fn next(&mut self) -> Option<Event> {
        match self.early.pop_front() {
            Some(e) => Some(e),
            None => self.rx.recv().await.map(|(_, e)| e),
        }
    }

    /// The whole reply, its reasoning told apart with `reasoning`'s
    /// format.
    pub async fn finish(
        &mut self,
        reasoning: Option<(ReasoningFormat, bool)>,
    ) -> Result<Finished, ApiError> {
        let mut text = String::new();
        loop {
            match self.next().await {
                Some(Event::Text { text: piece, .. }) => text.push_str(&piece),
                Some(Event::Done {
                    reason,
                    completion_tokens,
                    stop_word,
                }) => {
                    let parts = tools::split_reply(self.tools.as_deref(), reasoning, &text);
                    return Ok(Finished {
                        text: parts.content,
                        raw: text,
                        reasoning: parts.reasoning,
                        reason,
                        completion_tokens,
                        stop_word,
                    });
                }
                Some(Event::Failed(e)) => return Err(e),
                _ => return Err(stopped()),
            }
        }
    }
}

/// A reply's text as it streams, and how much of its content has gone
/// out. Without tools the content is the text (its answer, where its
/// reasoning is told apart); under tools it is the string response the
/// answer is writing, while it reads as one (as the chat completion
/// endpoint streams it), and a call goes out whole at the end.
pub struct Live {
    tools: Option<Arc<Tools>>,
    split: Option<ReasoningSplitter>,
    text: String,
    /// The reply as generated.
    raw: String,
    sent: usize,
    /// Each call that streams as it is written, its argument bytes out.
    calls: Vec<usize>,
}

impl Live {
    pub fn new(tools: Option<Arc<Tools>>, reasoning: Option<(ReasoningFormat, bool)>) -> Self {
        let split = reasoning.map(|(f, thinking)| tools::splitter(tools.as_deref(), f, thinking));
        Self {
            tools,
            split,
            text: String::new(),
            raw: String::new(),
            sent: 0,
            calls: Vec::new(),
        }
    }

    /// The calls written since the last time, as pieces
    /// ([`tools::call_pieces`]; none without tools, or in a format whose
    /// calls go out whole).
    pub fn call_pieces(&mut self) -> Vec<tools::CallPiece> {
        let Some(t) = &self.tools else {
            return Vec::new();
        };
        let prefixes = t.call_prefixes(&self.text, &self.raw);
        tools::call_pieces(&prefixes, &mut self.calls)
    }

    /// The pieces that end the begun calls of the finished reply `done`
    /// whose calls are `calls`, and how many calls have begun.
    pub fn last_call_pieces(
        &mut self,
        done: &Finished,
        calls: &[realm_models::tools::ToolCall],
    ) -> (Vec<tools::CallPiece>, usize) {
        let Some(t) = &self.tools else {
            return (Vec::new(), 0);
        };
        let prefixes = t.ended_call_prefixes(&done.text, &done.raw);
        let begun = self.calls.len();
        (
            tools::ending_pieces(&prefixes, calls, &mut self.calls),
            begun,
        )
    }

    /// Adds a piece of the reply; returns the reasoning and the content it
    /// adds, to stream now (empty where there is none yet).
    pub fn push(&mut self, piece: &str) -> ReplyParts {
        self.raw.push_str(piece);
        match &mut self.split {
            Some(s) => {
                let parts = s.push(piece);
                ReplyParts {
                    content: self.answer(&parts.content),
                    reasoning: parts.reasoning,
                }
            }
            None => ReplyParts {
                reasoning: String::new(),
                content: self.answer(piece),
            },
        }
    }

    /// Adds a piece of the answer; returns the content to stream now.
    fn answer(&mut self, piece: &str) -> String {
        self.text.push_str(piece);
        if self.tools.is_none() {
            // The content is the text: the piece itself.
            self.sent = self.text.len();
            return piece.to_string();
        }
        match self.tools.as_ref().and_then(|t| t.streamable(&self.text)) {
            Some(c) if c.len() > self.sent => {
                let new = c[self.sent..].to_string();
                self.sent = c.len();
                new
            }
            _ => String::new(),
        }
    }

    /// Whether any content has gone out.
    pub fn started(&self) -> bool {
        self.sent > 0
    }

    /// The part of the finished reply's `content` that has not gone out.
    pub fn rest<'a>(&self, content: &'a str) -> &'a str {
        content.get(self.sent..).unwrap_or("")
    }

    /// The reply, ended as the engine says, and the reasoning the
    /// splitter held back, to stream before the rest (its held answer
    /// joins the reply's text, whose rest [`Live::rest`] gives).
    pub fn finish(
        &mut self,
        reason: StopReason,
        completion_tokens: usize,
        stop_word: Option<String>,
    ) -> (Finished, String) {
        let held = self.split.as_mut().map(ReasoningSplitter::finish);
        let reasoning = held.map_or(String::new(), |h| {
            self.text.push_str(&h.content);
            h.reasoning
        });
        let done = Finished {
            text: std::mem::take(&mut self.text),
            raw: std::mem::take(&mut self.raw),
            reasoning: String::new(),
            reason,
            completion_tokens,
            stop_word,
        };
        (done, reasoning)
    }
}

/// An SSE event named by its data's `type`.
pub fn named(data: &Value) -> sse::Event {
    let name = data["type"].as_str().unwrap_or("message");
    sse::Event::default().event(name).data(data.to_string())
}

/// A streamed answer: `first`, then what `on` makes of each of `run`'s
/// events (with whether that ended the answer), each as a named event.
pub fn stream(
    run: Run,
    first: Vec<Value>,
    on: impl FnMut(Option<Event>) -> (Vec<Value>, bool) + Send + 'static,
) -> Response {
    let state = (run, VecDeque::from(first), false, on);
    let events = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(v) = st.1.pop_front() {
                return Some((Ok::<_, Infallible>(named(&v)), st));
            }
            if st.2 {
                return None;
            }
            let e = st.0.next().await;
            let (out, ended) = (st.3)(e);
            st.1.extend(out);
            st.2 = ended;
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
