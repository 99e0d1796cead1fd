//! OpenAI's Responses API, `POST /v1/responses` (and `/responses`), as
//! llama.cpp's server offers it.
//!
//! A request is read into the chat completion request it means:
//! `instructions` as the system message; `input` a text (the user's turn)
//! or a list of items (messages with text content, `function_call` items as
//! an assistant's tool calls, `function_call_output` items as tool
//! messages); function `tools`, `tool_choice`, `parallel_tool_calls`;
//! `max_output_tokens`, `temperature`, `top_p`, `stream`, and `text.format`
//! (`json_schema`, `json_object`) as a response format. The answer is a
//! `response` whose `output` holds a `message` of `output_text`, or
//! `function_call` items, with `status` `completed` or `incomplete` (with
//! `incomplete_details.reason` `max_output_tokens`) and `usage`; streamed,
//! the events from `response.created` to `response.completed`, each with
//! its `sequence_number`. Stored responses (`previous_response_id`) are
//! not kept, so they are refused.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use realm_models::tools::Tools;
use realm_models::StopReason;
use serde_json::{json, Map, Value};

use super::adapter::{self, Finished, Live, Run};
use super::body::Body;
use super::engine::Event;
use super::http::{error, stopped, App};
use super::openai::{ApiError, ChatRequest};
use super::tools::Outcome;

fn invalid(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(Some(param), message)
}

/// A message item's content (a text, or parts) as text: its text parts
/// (`input_text`, `output_text`, `text`) joined.
fn text_of(content: &Value) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match (p["type"].as_str(), p["text"].as_str()) {
                (Some("input_text" | "output_text" | "text"), Some(t)) => Ok(t),
                (kind, _) => Err(invalid(
                    "input",
                    format!(
                        "a {} content part is not supported (text only)",
                        kind.unwrap_or("untyped")
                    ),
                )),
            })
            .collect(),
        _ => Err(invalid(
            "input",
            "a message's content is a text or a list of parts",
        )),
    }
}

/// The chat completion request (OpenAI's JSON) that a Responses request
/// means.
pub fn to_chat(body: &Value) -> Result<Value, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::invalid(None, "the body is a JSON object"));
    };
    if obj
        .get("previous_response_id")
        .is_some_and(|v| !v.is_null())
    {
        return Err(invalid(
            "previous_response_id",
            "responses are not stored: send the whole conversation as input",
        ));
    }
    let mut messages = Vec::new();
    if let Some(i) = obj.get("instructions").filter(|v| !v.is_null()) {
        let text = i
            .as_str()
            .ok_or_else(|| invalid("instructions", "instructions is a text"))?;
        messages.push(json!({"role": "system", "content": text}));
    }
    match obj.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            // A reasoning item's text, for the assistant message after it.
            let mut reasoning: Option<String> = None;
            for item in items {
                let kind = item["type"].as_str().unwrap_or("message");
                match kind {
                    "message" => {
                        let role = item["role"].as_str().unwrap_or_default();
                        if !matches!(role, "user" | "assistant" | "system" | "developer") {
                            return Err(invalid(
                                "input",
                                format!("a message's role {role:?} is not user, assistant, system or developer"),
                            ));
                        }
                        let text = text_of(&item["content"])?;
                        let mut m = json!({"role": role, "content": text});
                        if let Some(r) = reasoning.take().filter(|_| role == "assistant") {
                            m["reasoning_content"] = json!(r);
                        }
                        messages.push(m);
                    }
                    "function_call" => {
                        let call = json!({"id": item["call_id"], "type": "function",
                            "function": {"name": item["name"], "arguments": item["arguments"]}});
                        // Calls of one turn go in one assistant message.
                        match messages.last_mut() {
                            Some(m)
                                if m["role"] == "assistant" && m.get("tool_calls").is_some() =>
                            {
                                if let Some(calls) = m["tool_calls"].as_array_mut() {
                                    calls.push(call);
                                }
                            }
                            _ => {
                                let mut m = json!({"role": "assistant", "content": null,
                                                   "tool_calls": [call]});
                                if let Some(r) = reasoning.take() {
                                    m["reasoning_content"] = json!(r);
                                }
                                messages.push(m);
                            }
                        }
                    }
                    "function_call_output" => {
                        let output = match &item["output"] {
                            Value::String(s) => s.clone(),
                            v => text_of(v)?,
                        };
                        messages.push(json!({"role": "tool", "tool_call_id": item["call_id"],
                                             "content": output}));
                    }
                    // A model's earlier reasoning goes back as the next
                    // assistant message's `reasoning_content` (templates
                    // that write it back within a turn of calls do).
                    "reasoning" => {
                        let parts = item["content"].as_array().into_iter().flatten();
                        let text: String = parts.filter_map(|p| p["text"].as_str()).collect();
                        reasoning = Some(text).filter(|t| !t.is_empty());
                    }
                    other => {
                        return Err(invalid(
                            "input",
                            format!("a {other} input item is not supported"),
                        ))
                    }
                }
            }
        }
        _ => {
            return Err(invalid(
                "input",
                "input is required: a text or a list of items",
            ))
        }
    }
    let mut out = Map::new();
    out.insert("messages".into(), json!(messages));
    if let Some(tools) = obj.get("tools").and_then(Value::as_array) {
        let mut list = Vec::new();
        for t in tools {
            if t["type"] != "function" {
                return Err(invalid(
                    "tools",
                    format!("a {} tool is not supported (functions only)", t["type"]),
                ));
            }
            let mut f = t.clone();
            if let Some(o) = f.as_object_mut() {
                o.remove("type");
            }
            list.push(json!({"type": "function", "function": f}));
        }
        out.insert("tools".into(), json!(list));
    }
    if let Some(choice) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        let chat = match choice {
            Value::String(_) => choice.clone(),
            _ if choice["type"] == "function" => {
                json!({"type": "function", "function": {"name": choice["name"]}})
            }
            _ => {
                return Err(invalid(
                    "tool_choice",
                    "tool_choice is auto, none, required or a function",
                ))
            }
        };
        out.insert("tool_choice".into(), chat);
    }
    match obj.get("text").map(|t| &t["format"]) {
        Some(f) if f["type"] == "json_schema" => {
            let schema = json!({"name": f["name"], "schema": f["schema"], "strict": f["strict"]});
            out.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": schema}),
            );
        }
        Some(f) if f["type"] == "json_object" => {
            out.insert("response_format".into(), json!({"type": "json_object"}));
        }
        _ => {}
    }
    let fields = [
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("stream", "stream"),
    ];
    adapter::copy_fields(obj, &mut out, &fields);
    Ok(Value::Object(out))
}

fn chat_request(body: &Value) -> Result<ChatRequest, ApiError> {
    adapter::chat_request(to_chat(body)?)
}

/// The ids, times and counts every part of an answer needs.
struct Reply {
    id: String,
    model: String,
    created: u64,
    input_tokens: usize,
    cached_tokens: usize,
}

impl Reply {
    fn new(app: &App, run: &Run) -> Self {
        Self {
            id: format!("resp_{:x}{:04x}", app.created, run.n),
            model: app.model.clone(),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            input_tokens: run.prompt_tokens,
            cached_tokens: run.cached_tokens,
        }
    }

    fn stem(&self) -> &str {
        self.id.strip_prefix("resp_").unwrap_or(&self.id)
    }

    fn message_id(&self) -> String {
        format!("msg_{}", self.stem())
    }

    /// The output items of a finished reply.
    fn output(&self, done: &Finished, tools: Option<&Tools>) -> Vec<Value> {
        match done.outcome(tools) {
            Outcome::Calls(calls, content) => {
                let text = (!content.is_empty()).then(|| self.message(&content, "completed"));
                text.into_iter()
                    .chain(calls.iter().enumerate().map(|(k, c)| {
                        json!({"type": "function_call", "id": format!("fc_{}_{k}", self.stem()),
                               "call_id": super::tools::call_id(tools, "call_", self.stem(), k), "name": c.name,
                               "arguments": c.arguments.to_string(), "status": "completed"})
                    }))
                    .collect()
            }
            Outcome::Content(text) => vec![self.message(&text, "completed")],
        }
    }

    fn reasoning_id(&self) -> String {
        format!("rs_{}", self.stem())
    }

    /// The reasoning item: the reply's reasoning as its `reasoning_text`.
    fn reasoning(&self, text: &str, status: &str) -> Value {
        json!({"type": "reasoning", "id": self.reasoning_id(), "status": status, "summary": [],
               "content": [{"type": "reasoning_text", "text": text}]})
    }

    fn message(&self, text: &str, status: &str) -> Value {
        json!({"type": "message", "id": self.message_id(), "status": status,
               "role": "assistant", "content": [part(text)]})
    }

    /// The `response` object; `done` is `None` while it runs.
    fn response(&self, output: Vec<Value>, done: Option<&Finished>) -> Value {
        let (status, details, usage) = match done {
            None => ("in_progress", Value::Null, Value::Null),
            Some(d) => {
                let cut = matches!(d.reason, StopReason::MaxTokens | StopReason::ContextFull);
                let usage = json!({
                    "input_tokens": self.input_tokens,
                    "input_tokens_details": {"cached_tokens": self.cached_tokens},
                    "output_tokens": d.completion_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": self.input_tokens + d.completion_tokens,
                });
                match cut {
                    true => ("incomplete", json!({"reason": "max_output_tokens"}), usage),
                    false => ("completed", Value::Null, usage),
                }
            }
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "incomplete_details": details,
            "error": null,
            "model": self.model,
            "output": output,
            "usage": usage,
        })
    }
}

/// An `output_text` part.
fn part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// `POST /v1/responses`.
pub async fn responses(State(app): State<Arc<App>>, Body(body): Body<Value>) -> Response {
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
            let mut output = reply.output(&done, run.tools.as_deref());
            if !done.reasoning.is_empty() {
                output.insert(0, reply.reasoning(&done.reasoning, "completed"));
            }
            Json(reply.response(output, Some(&done))).into_response()
        }
        Err(e) => error(e),
    }
}

/// Numbers the events of one stream.
struct Sequence(u64);

impl Sequence {
    fn next(&mut self, mut v: Value) -> Value {
        v["sequence_number"] = json!(self.0);
        self.0 += 1;
        v
    }
}

/// More of a streaming call's arguments (`call`: its item's output index
/// and id, and its arguments so far), as a delta (nothing for none).
fn arguments_delta(call: &mut (usize, String, String), more: &str, out: &mut Vec<Value>) {
    if more.is_empty() {
        return;
    }
    call.2.push_str(more);
    out.push(json!({"type": "response.function_call_arguments.delta",
                    "item_id": call.1, "output_index": call.0, "delta": more}));
}

/// Where a streamed answer's items are: the reasoning item's index and
/// text so far, the message's index once its text has begun, and the next
/// index.
#[derive(Default)]
struct Items {
    reasoning: Option<(usize, String)>,
    message: Option<usize>,
    next: usize,
}

impl Items {
    fn take(&mut self) -> usize {
        self.next += 1;
        self.next - 1
    }

    /// A piece of reasoning as a delta of the reasoning item (opened, at
    /// the next index, with the first).
    fn reason(&mut self, reply: &Reply, text: &str, out: &mut Vec<Value>) {
        if text.is_empty() {
            return;
        }
        let index = match &mut self.reasoning {
            Some((index, all)) => {
                all.push_str(text);
                *index
            }
            None => {
                let index = self.take();
                self.reasoning = Some((index, text.to_string()));
                out.push(
                    json!({"type": "response.output_item.added", "output_index": index,
                                "item": reply.reasoning("", "in_progress")}),
                );
                index
            }
        };
        out.push(
            json!({"type": "response.reasoning_text.delta", "item_id": reply.reasoning_id(),
                        "output_index": index, "content_index": 0, "delta": text}),
        );
    }
}

/// The answer as the Responses API's events: its reasoning as it comes, in
/// a reasoning item, where the model's format tells it apart; its text as
/// it comes, in one message (under tools, the string response the reply
/// writes: see [`Live`]); its calls as they are written, in
/// `function_call` items (their arguments as
/// `response.function_call_arguments.delta`s), where the tools' format
/// streams them; and at the end what has not gone out (the other calls'
/// items, whole).
fn streamed(reply: Reply, run: Run) -> Response {
    let tools = run.tools.clone();
    let mut live = Live::new(run.tools.clone(), run.reasoning);
    let mut seq = Sequence(0);
    let first = vec![
        seq.next(json!({"type": "response.created", "response": reply.response(Vec::new(), None)})),
        seq.next(
            json!({"type": "response.in_progress", "response": reply.response(Vec::new(), None)}),
        ),
    ];
    let item = reply.message_id();
    // The message's opening events.
    let opening = |reply: &Reply, index: usize| {
        [
            json!({"type": "response.output_item.added", "output_index": index,
                   "item": reply.message("", "in_progress")}),
            json!({"type": "response.content_part.added", "item_id": reply.message_id(),
                   "output_index": index, "content_index": 0, "part": part("")}),
        ]
    };
    let mut items = Items::default();
    // Each streaming call's item (output index, id) and arguments so far.
    let mut calls_out: Vec<(usize, String, String)> = Vec::new();
    adapter::stream(run, first, move |e| {
        let mut out = Vec::new();
        let ended = match e {
            Some(Event::Text { text: piece, .. }) => {
                let parts = live.push(&piece);
                items.reason(&reply, &parts.reasoning, &mut out);
                if !parts.content.is_empty() {
                    let index = match items.message {
                        Some(index) => index,
                        None => {
                            let index = items.take();
                            items.message = Some(index);
                            out.extend(opening(&reply, index));
                            index
                        }
                    };
                    out.push(
                        json!({"type": "response.output_text.delta", "item_id": item,
                                "output_index": index, "content_index": 0,
                                "delta": parts.content}),
                    );
                }
                for p in live.call_pieces() {
                    if let Some(name) = &p.name {
                        let (index, k) = (items.take(), p.index);
                        let id = format!("fc_{}_{k}", reply.stem());
                        let call_id =
                            super::tools::call_id(tools.as_deref(), "call_", reply.stem(), k);
                        out.push(json!({"type": "response.output_item.added",
                            "output_index": index, "item": {"type": "function_call", "id": id,
                            "call_id": call_id, "name": name, "arguments": "",
                            "status": "in_progress"}}));
                        calls_out.push((index, id, String::new()));
                    }
                    arguments_delta(&mut calls_out[p.index], &p.arguments, &mut out);
                }
                false
            }
            Some(Event::Done {
                reason,
                completion_tokens,
                stop_word,
            }) => {
                let (done, held) = live.finish(reason, completion_tokens, stop_word);
                items.reason(&reply, &held, &mut out);
                // The rest of the calls that went out as they were written.
                let calls = match done.outcome(tools.as_deref()) {
                    Outcome::Calls(calls, _) => calls,
                    Outcome::Content(_) => Vec::new(),
                };
                let (pieces, begun) = live.last_call_pieces(&done, &calls);
                for p in pieces {
                    arguments_delta(&mut calls_out[p.index], &p.arguments, &mut out);
                }
                let mut k = 0;
                let mut output = Vec::new();
                if let Some((index, text)) = &items.reasoning {
                    let it = reply.reasoning(text, "completed");
                    out.push(json!({"type": "response.reasoning_text.done",
                        "item_id": reply.reasoning_id(), "output_index": index,
                        "content_index": 0, "text": text}));
                    out.push(
                        json!({"type": "response.output_item.done", "output_index": index,
                                    "item": it}),
                    );
                    output.push((*index, it));
                }
                for mut it in reply.output(&done, tools.as_deref()) {
                    if it["type"] == "function_call" && k < begun {
                        // Its arguments as they went out (the model's
                        // text: equal as JSON).
                        let (index, _, arguments) = &calls_out[k];
                        k += 1;
                        it["arguments"] = json!(arguments);
                        out.push(json!({"type": "response.function_call_arguments.done",
                            "item_id": it["id"], "output_index": index,
                            "arguments": it["arguments"]}));
                        out.push(json!({"type": "response.output_item.done",
                                        "output_index": index, "item": it}));
                        output.push((*index, it));
                        continue;
                    }
                    if it["type"] == "function_call" {
                        let index = items.take();
                        out.push(json!({"type": "response.output_item.added",
                                        "output_index": index, "item": it}));
                        out.push(json!({"type": "response.function_call_arguments.delta",
                            "item_id": it["id"], "output_index": index, "delta": it["arguments"]}));
                        out.push(json!({"type": "response.function_call_arguments.done",
                            "item_id": it["id"], "output_index": index,
                            "arguments": it["arguments"]}));
                        out.push(json!({"type": "response.output_item.done",
                                        "output_index": index, "item": it}));
                        output.push((index, it));
                        continue;
                    }
                    let t = it["content"][0]["text"].as_str().unwrap_or_default();
                    let index = match items.message {
                        Some(index) => index,
                        None => {
                            let index = items.take();
                            out.extend(opening(&reply, index));
                            index
                        }
                    };
                    let rest = live.rest(t);
                    if !rest.is_empty() {
                        out.push(
                            json!({"type": "response.output_text.delta", "item_id": item,
                            "output_index": index, "content_index": 0, "delta": rest}),
                        );
                    }
                    out.push(json!({"type": "response.output_text.done", "item_id": item,
                        "output_index": index, "content_index": 0, "text": t}));
                    out.push(
                        json!({"type": "response.content_part.done", "item_id": item,
                        "output_index": index, "content_index": 0, "part": it["content"][0]}),
                    );
                    out.push(
                        json!({"type": "response.output_item.done", "output_index": index,
                                    "item": it}),
                    );
                    output.push((index, it));
                }
                output.sort_by_key(|(index, _)| *index);
                let output: Vec<Value> = output.into_iter().map(|(_, it)| it).collect();
                let kind = match reply.response(Vec::new(), Some(&done))["status"].as_str() {
                    Some("incomplete") => "response.incomplete",
                    _ => "response.completed",
                };
                out.push(json!({"type": kind, "response": reply.response(output, Some(&done))}));
                true
            }
            Some(Event::Failed(e)) => {
                out.push(
                    json!({"type": "error", "code": null, "message": e.message, "param": null}),
                );
                true
            }
            _ => {
                out.push(
                    json!({"type": "error", "code": null, "message": stopped().message,
                                "param": null}),
                );
                true
            }
        };
        (out.into_iter().map(|v| seq.next(v)).collect(), ended)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Instructions, messages of parts, an earlier call and its output,
    /// tools, tool_choice, the text format and the sampling fields become
    /// the chat request they mean.
    #[test]
    fn requests_read_as_chat_completions() {
        let body = json!({
            "model": "x", "instructions": "Be brief.", "max_output_tokens": 50,
            "temperature": 0.5, "stream": true, "store": false,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "reasoning", "summary": [],
                 "content": [{"type": "reasoning_text", "text": "Ask w."}]},
                {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "rain"},
                {"type": "message", "role": "assistant",
                 "content": [{"type": "output_text", "text": "It rains."}]},
            ],
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "w"},
            "text": {"format": {"type": "json_schema", "name": "r", "schema": {"type": "object"},
                                "strict": true}},
        });
        let want = json!({
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}},
                    {"id": "c2", "type": "function",
                     "function": {"name": "w", "arguments": "{\"a\":1}"}}],
                 "reasoning_content": "Ask w."},
                {"role": "tool", "tool_call_id": "c1", "content": "rain"},
                {"role": "assistant", "content": "It rains."},
            ],
            "tools": [{"type": "function",
                       "function": {"name": "w", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "w"}},
            "response_format": {"type": "json_schema", "json_schema":
                {"name": "r", "schema": {"type": "object"}, "strict": true}},
            "max_tokens": 50, "temperature": 0.5, "stream": true,
        });
        assert_eq!(to_chat(&body).unwrap(), want);
        assert_eq!(chat_request(&body).unwrap().messages.len(), 5);
        let plain = to_chat(&json!({"input": "Hi"})).unwrap();
        assert_eq!(
            plain["messages"],
            json!([{"role": "user", "content": "Hi"}])
        );
    }

    #[test]
    fn what_cannot_be_read_is_refused_by_name() {
        for (body, param) in [
            (
                json!({"input": "x", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (json!({"max_output_tokens": 3}), "input"),
            (json!({"input": [{"type": "file_search_call"}]}), "input"),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}),
                "input",
            ),
            (
                json!({"input": "x", "tools": [{"type": "web_search"}]}),
                "tools",
            ),
            (
                json!({"input": "x", "tool_choice": {"type": "mcp"}}),
                "tool_choice",
            ),
        ] {
            let e = to_chat(&body).unwrap_err();
            assert_eq!(e.param, Some(param), "{body}: {}", e.message);
        }
    }
}
