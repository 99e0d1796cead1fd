//! Anthropic's Messages API: `POST /v1/messages` and
//! `POST /v1/messages/count_tokens`, as llama.cpp's server offers them.
//!
//! A request is read into the chat completion request it means (`system`
//! as the system message, content blocks as text, `tool_use` blocks as an
//! assistant's tool calls, `tool_result` blocks as tool messages, `tools`
//! with their `input_schema`, `tool_choice`, `stop_sequences`) and runs on
//! the same engine. The answer is a `message` of content blocks (`text`,
//! `tool_use` with the call's `input` as JSON) with Anthropic's
//! `stop_reason` (`end_turn`, `max_tokens`, `stop_sequence` with its
//! `stop_sequence`, `tool_use`) and `usage`; streamed, the events
//! `message_start`, `content_block_start`, `content_block_delta`
//! (`text_delta`, `input_json_delta`), `content_block_stop`,
//! `message_delta` and `message_stop`. Errors have Anthropic's shape:
//! `{"type": "error", "error": {"type", "message"}}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use realm_models::reasoning::ReplyParts;
use realm_models::tools::Tools;
use realm_models::StopReason;
use serde_json::{json, Map, Value};

use super::adapter::{self, Finished, Live, Run};
use super::body::Body;
use super::engine::Event;
use super::http::{stopped, App};
use super::openai::{ApiError, ChatRequest};
use super::tools::Outcome;

/// Anthropic's error body for `e`, with its status.
fn error(e: ApiError) -> Response {
    let kind = match e.status {
        StatusCode::UNAUTHORIZED => "authentication_error",
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
        s if s.is_client_error() => "invalid_request_error",
        _ => "api_error",
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": e.message}});
    (e.status, Json(body)).into_response()
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::invalid(None, message)
}

/// A content field (a string, or blocks) as text: its `text` blocks
/// joined; anything else is refused.
fn text_of(content: &Value, what: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| match (b["type"].as_str(), b["text"].as_str()) {
                (Some("text"), Some(t)) => Ok(t),
                (kind, _) => Err(invalid(format!(
                    "{what}: a {} block is not supported here (text only)",
                    kind.unwrap_or("untyped")
                ))),
            })
            .collect(),
        Value::Null => Ok(String::new()),
        _ => Err(invalid(format!("{what} is a string or an array of blocks"))),
    }
}

/// The chat completion request (OpenAI's JSON) that an Anthropic request
/// means.
pub fn to_openai(body: &Value) -> Result<Value, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(invalid("the body is a JSON object"));
    };
    let mut messages = Vec::new();
    if let Some(system) = obj.get("system") {
        messages.push(json!({"role": "system", "content": text_of(system, "system")?}));
    }
    let Some(list) = obj.get("messages").and_then(Value::as_array) else {
        return Err(invalid("messages is required: an array of messages"));
    };
    for m in list {
        let role = m["role"].as_str().unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(invalid(format!(
                "a message's role is user or assistant, not {role:?}"
            )));
        }
        let blocks = match &m["content"] {
            Value::String(s) => {
                messages.push(json!({"role": role, "content": s}));
                continue;
            }
            Value::Array(blocks) => blocks,
            _ => return Err(invalid("a message's content is a string or an array")),
        };
        let (mut text, mut calls, mut results) = (String::new(), Vec::new(), Vec::new());
        let mut thinking = String::new();
        for b in blocks {
            match b["type"].as_str() {
                Some("text") => text.push_str(b["text"].as_str().unwrap_or_default()),
                // A model's earlier reasoning goes back as its
                // `reasoning_content`: templates that write it back (during
                // a turn of tool calls, as Qwen 3's and gpt-oss's) do.
                Some("thinking") => thinking.push_str(b["thinking"].as_str().unwrap_or_default()),
                Some("redacted_thinking") => {}
                Some("tool_use") => calls.push(json!({
                    "id": b["id"],
                    "type": "function",
                    "function": {"name": b["name"], "arguments": b["input"].to_string()},
                })),
                Some("tool_result") => results.push(json!({
                    "role": "tool",
                    "tool_call_id": b["tool_use_id"],
                    "content": text_of(&b["content"], "a tool_result's content")?,
                })),
                other => {
                    return Err(invalid(format!(
                        "a {} content block is not supported",
                        other.unwrap_or("untyped")
                    )))
                }
            }
        }
        // Results answer the calls before them: they go before any text
        // that follows them.
        messages.extend(results);
        if !text.is_empty() || !calls.is_empty() {
            let mut msg = json!({"role": role, "content": text});
            if !calls.is_empty() {
                msg["tool_calls"] = json!(calls);
            }
            if !thinking.is_empty() && role == "assistant" {
                msg["reasoning_content"] = json!(thinking);
            }
            messages.push(msg);
        }
    }
    let mut out = Map::new();
    out.insert("messages".into(), json!(messages));
    if let Some(tools) = obj.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t["name"],
                    "description": t.get("description").cloned().unwrap_or(json!("")),
                    "parameters": t.get("input_schema").cloned().unwrap_or(json!({})),
                }})
            })
            .collect();
        out.insert("tools".into(), json!(tools));
    }
    if let Some(choice) = obj.get("tool_choice") {
        let oai = match choice["type"].as_str() {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": choice["name"]}}),
            _ => return Err(invalid("tool_choice's type is auto, any, tool or none")),
        };
        out.insert("tool_choice".into(), oai);
        if choice["disable_parallel_tool_use"] == json!(true) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    let fields = [
        ("max_tokens", "max_tokens"),
        ("stop_sequences", "stop"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stream", "stream"),
    ];
    adapter::copy_fields(obj, &mut out, &fields);
    Ok(Value::Object(out))
}

/// The request read as a chat completion request.
fn chat_request(body: &Value) -> Result<ChatRequest, ApiError> {
    adapter::chat_request(to_openai(body)?)
}

/// `POST /v1/messages/count_tokens`: `{"input_tokens": N}`, the tokens of
/// the prompt the request would run (its tools' instructions included).
pub async fn count_tokens(State(app): State<Arc<App>>, Body(body): Body<Value>) -> Response {
    let counted = chat_request(&body).and_then(|req| {
        let (turns, _) = app.prepare(&req)?;
        let text = super::prompt::render(&app.props.template, &turns)?;
        crate::chat::encode_rendered(&app.tokenizer, &text).map_err(|e| invalid(e.to_string()))
    });
    match counted {
        Ok(ids) => Json(json!({"input_tokens": ids.len()})).into_response(),
        Err(e) => error(e),
    }
}

/// Anthropic's `stop_reason` for how generation ended.
fn stop_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndOfGeneration | StopReason::Cancelled => "end_turn",
        StopReason::StopString => "stop_sequence",
        StopReason::MaxTokens | StopReason::ContextFull => "max_tokens",
    }
}

/// The ids and counts every part of an answer needs.
struct Reply {
    id: String,
    model: String,
    input_tokens: usize,
    cached_tokens: usize,
}

impl Reply {
    fn new(app: &App, run: &Run) -> Self {
        Self {
            id: format!("msg_{:x}{:04x}", app.created, run.n),
            model: app.model.clone(),
            input_tokens: run.prompt_tokens,
            cached_tokens: run.cached_tokens,
        }
    }

    fn usage(&self, output_tokens: usize) -> Value {
        json!({
            "input_tokens": self.input_tokens - self.cached_tokens,
            "cache_read_input_tokens": self.cached_tokens,
            "output_tokens": output_tokens,
        })
    }

    /// The content blocks of a finished reply and its stop reason.
    fn blocks(&self, done: &Finished, tools: Option<&Tools>) -> (Vec<Value>, &'static str) {
        match done.outcome(tools) {
            Outcome::Calls(calls, content) => {
                let stem = self.id.strip_prefix("msg_").unwrap_or(&self.id);
                let text = (!content.is_empty()).then(|| json!({"type": "text", "text": content}));
                let blocks = text
                    .into_iter()
                    .chain(calls.iter().enumerate().map(|(k, c)| {
                        json!({"type": "tool_use", "id": super::tools::call_id(tools, "toolu_", stem, k),
                               "name": c.name, "input": c.arguments})
                    }))
                    .collect();
                (blocks, "tool_use")
            }
            Outcome::Content(t) => (
                vec![json!({"type": "text", "text": t})],
                stop_reason(done.reason),
            ),
        }
    }

    fn message(
        &self,
        content: Vec<Value>,
        reason: Option<&str>,
        stop: Option<&str>,
        out: usize,
    ) -> Value {
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": reason,
            "stop_sequence": stop,
            "usage": self.usage(out),
        })
    }
}

/// The stop string to report: only when one ended the reply.
fn stop_sequence<'a>(done: &'a Finished, why: &str) -> Option<&'a str> {
    done.stop_word.as_deref().filter(|_| why == "stop_sequence")
}

/// `POST /v1/messages`.
pub async fn messages(State(app): State<Arc<App>>, Body(body): Body<Value>) -> Response {
    let mut run = match Run::read_and_start(&app, chat_request(&body)).await {
        Ok(run) => run,
        Err(e) => return error(e),
    };
    let reply = Reply::new(&app, &run);
    if run.stream {
        return streamed(reply, run);
    }
    match run.finish(run.reasoning).await {
        Ok(done) => {
            let (mut content, why) = reply.blocks(&done, run.tools.as_deref());
            if !done.reasoning.is_empty() {
                content.insert(0, thinking_block(&done.reasoning));
            }
            let stop = stop_sequence(&done, why);
            Json(reply.message(content, Some(why), stop, done.completion_tokens)).into_response()
        }
        Err(e) => error(e),
    }
}

/// A whole block's events: its start, its content as one delta, its stop.
fn block_events(index: usize, mut b: Value) -> [Value; 3] {
    let delta = match b["type"].as_str() {
        Some("tool_use") => {
            let input = b["input"].take();
            b["input"] = json!({});
            json!({"type": "input_json_delta", "partial_json": input.to_string()})
        }
        _ => {
            let text = b["text"].take();
            b["text"] = json!("");
            json!({"type": "text_delta", "text": text})
        }
    };
    [
        json!({"type": "content_block_start", "index": index, "content_block": b}),
        json!({"type": "content_block_delta", "index": index, "delta": delta}),
        json!({"type": "content_block_stop", "index": index}),
    ]
}

/// The content blocks being streamed: the open one (its index and
/// type), and the next index.
#[derive(Default)]
struct Blocks {
    open: Option<(usize, &'static str)>,
    next: usize,
}

impl Blocks {
    /// Closes the open block, if any.
    fn close(&mut self, out: &mut Vec<Value>) {
        if let Some((index, _)) = self.open.take() {
            out.push(json!({"type": "content_block_stop", "index": index}));
        }
    }

    /// The open block of `kind` (`thinking` or `text`), opened (after the
    /// open one of the other kind is closed) if need be; its index.
    fn to(&mut self, kind: &'static str, out: &mut Vec<Value>) -> usize {
        match self.open {
            Some((index, k)) if k == kind => index,
            _ => {
                self.close(out);
                let index = self.take();
                let block = match kind {
                    "thinking" => json!({"type": "thinking", "thinking": "", "signature": ""}),
                    _ => json!({"type": "text", "text": ""}),
                };
                out.push(json!({"type": "content_block_start", "index": index,
                                "content_block": block}));
                self.open = Some((index, kind));
                index
            }
        }
    }

    /// A new block's index.
    fn take(&mut self) -> usize {
        self.next += 1;
        self.next - 1
    }

    /// A piece of reasoning and of answer text, as deltas of their blocks.
    fn deltas(&mut self, parts: &ReplyParts, out: &mut Vec<Value>) {
        if !parts.reasoning.is_empty() {
            let index = self.to("thinking", out);
            out.push(json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "thinking_delta", "thinking": parts.reasoning}}));
        }
        if !parts.content.is_empty() {
            let index = self.to("text", out);
            out.push(json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "text_delta", "text": parts.content}}));
        }
    }
}

/// A reply's reasoning as a `thinking` block (unsigned: nothing checks
/// it here).
fn thinking_block(reasoning: &str) -> Value {
    json!({"type": "thinking", "thinking": reasoning, "signature": ""})
}

/// The answer as Anthropic's events: its reasoning as it comes, in a
/// thinking block, where the model's format tells it apart; its text as it
/// comes, in a text block (under tools, the string response the reply
/// writes: see [`Live`]); its calls as they are written, in `tool_use`
/// blocks (their input as `input_json_delta`s), where the tools' format
/// streams them; and at the end what has not gone out (the other calls'
/// `tool_use` blocks, whole).
fn streamed(reply: Reply, run: Run) -> Response {
    let start = json!({"type": "message_start",
                       "message": reply.message(Vec::new(), None, None, 0)});
    let tools = run.tools.clone();
    let mut live = Live::new(run.tools.clone(), run.reasoning);
    let mut open = Blocks::default();
    // Each streaming call's block.
    let mut call_blocks: Vec<usize> = Vec::new();
    let stem = reply
        .id
        .strip_prefix("msg_")
        .unwrap_or(&reply.id)
        .to_string();
    adapter::stream(run, vec![start], move |e| match e {
        Some(Event::Text { text: piece, .. }) => {
            let mut out = Vec::new();
            open.deltas(&live.push(&piece), &mut out);
            for p in live.call_pieces() {
                let index = match p.name {
                    Some(name) => {
                        open.close(&mut out);
                        let index = open.take();
                        let id = super::tools::call_id(tools.as_deref(), "toolu_", &stem, p.index);
                        out.push(json!({"type": "content_block_start", "index": index,
                            "content_block": {"type": "tool_use", "id": id, "name": name,
                                              "input": {}}}));
                        open.open = Some((index, "tool_use"));
                        call_blocks.push(index);
                        index
                    }
                    None => call_blocks[p.index],
                };
                input_delta(index, &p.arguments, &mut out);
            }
            (out, false)
        }
        Some(Event::Done {
            reason,
            completion_tokens,
            stop_word,
        }) => {
            let streamed_text = live.started();
            let (done, held) = live.finish(reason, completion_tokens, stop_word);
            let mut out = Vec::new();
            let held = ReplyParts {
                reasoning: held,
                content: String::new(),
            };
            open.deltas(&held, &mut out);
            // The rest of the calls that went out as they were written.
            let calls = match done.outcome(tools.as_deref()) {
                Outcome::Calls(calls, _) => calls,
                Outcome::Content(_) => Vec::new(),
            };
            let (pieces, begun) = live.last_call_pieces(&done, &calls);
            for p in pieces {
                input_delta(call_blocks[p.index], &p.arguments, &mut out);
            }
            let (blocks, why) = reply.blocks(&done, tools.as_deref());
            let mut k = 0;
            for b in blocks {
                if b["type"] == "tool_use" {
                    k += 1;
                    if k <= begun {
                        continue;
                    }
                }
                match b["text"].as_str() {
                    // What of the text has not gone out.
                    Some(t) if streamed_text => {
                        let rest = ReplyParts {
                            reasoning: String::new(),
                            content: live.rest(t).to_string(),
                        };
                        open.deltas(&rest, &mut out);
                    }
                    _ => {
                        open.close(&mut out);
                        out.extend(block_events(open.take(), b));
                    }
                }
            }
            open.close(&mut out);
            out.push(json!({"type": "message_delta",
                "delta": {"stop_reason": why, "stop_sequence": stop_sequence(&done, why)},
                "usage": {"output_tokens": completion_tokens}}));
            out.push(json!({"type": "message_stop"}));
            (out, true)
        }
        Some(Event::Failed(e)) => (vec![error_event(&e)], true),
        _ => (vec![error_event(&stopped())], true),
    })
}

/// More of a streaming call's input, as a delta of its block `index`
/// (nothing for none).
fn input_delta(index: usize, json: &str, out: &mut Vec<Value>) {
    if !json.is_empty() {
        out.push(json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": json}}));
    }
}

/// An error after the stream began, as Anthropic streams one.
fn error_event(e: &ApiError) -> Value {
    json!({"type": "error", "error": {"type": "api_error", "message": e.message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    /// System text, content blocks, an earlier tool call and its result,
    /// tools, tool_choice and the sampling fields become the chat request
    /// they mean.
    #[test]
    fn requests_read_as_chat_completions() {
        let body = json!({
            "model": "x", "max_tokens": 64, "temperature": 0.5, "top_k": 3,
            "stop_sequences": ["END"], "stream": true, "metadata": {"user_id": "u"},
            "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": ""},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "t1", "name": "get_weather",
                     "input": {"city": "Oslo"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1",
                     "content": [{"type": "text", "text": "rain"}]},
                    {"type": "text", "text": "And now?"}]},
            ],
            "tools": [{"name": "get_weather", "description": "Weather",
                       "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "get_weather",
                            "disable_parallel_tool_use": true},
        });
        let want = json!({
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "t1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}],
                 "reasoning_content": "hm"},
                {"role": "tool", "tool_call_id": "t1", "content": "rain"},
                {"role": "user", "content": "And now?"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "description": "Weather", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "max_tokens": 64, "stop": ["END"], "temperature": 0.5, "top_k": 3, "stream": true,
        });
        assert_eq!(to_openai(&body).unwrap(), want);
        let req = chat_request(&body).unwrap();
        assert_eq!(req.messages.len(), 5);
    }

    #[test]
    fn what_cannot_be_read_is_refused_by_name() {
        for (body, says) in [
            (json!([]), "object"),
            (json!({"max_tokens": 1}), "messages is required"),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                "role",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image"}]}]}),
                "image",
            ),
            (json!({"system": 3, "messages": []}), "system"),
            (
                json!({"messages": [], "tool_choice": {"type": "sometimes"}}),
                "tool_choice",
            ),
        ] {
            let e = to_openai(&body).unwrap_err();
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
    }
}
