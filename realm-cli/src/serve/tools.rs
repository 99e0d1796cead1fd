//! Tool calling in chat completions, in the generic JSON format of
//! [`realm_models::tools`]: a request's `tools` become instructions in the
//! system message and a grammar over the replies; earlier calls and `tool`
//! messages go back into the conversation as that JSON; a reply is read
//! back as OpenAI's `tool_calls` (finish reason `tool_calls`) or as
//! content. Streamed, a response's text goes out as it is generated, and a
//! call in one piece once it is complete.

use std::collections::HashMap;
use std::sync::Arc;

use realm_models::reasoning::{ReasoningFormat, ReasoningSplitter, ReplyParts};
use realm_models::tools::{
    calls_text, result_text, streamed_response, CallPrefix, ToolCall, ToolError, ToolFormat,
    ToolReply, Tools,
};
use realm_models::Grammar;
use serde_json::{json, Value};

use super::engine::Conversation;
use super::openai::{ApiError, ChatRequest, Limits, Message, Options};

/// A request's tools and the grammar that holds replies to them.
pub type ToolMode = (Arc<Tools>, Arc<Grammar>);

/// The tools a chat request asks the model to use, if any, in the format
/// of `template` (the chat template's source) unless a `response_format`
/// schema shapes the direct answers (only the generic format has them); a
/// GBNF `grammar` cannot be combined with them.
pub fn requested(req: &ChatRequest, template: Option<&str>) -> Result<Option<ToolMode>, ApiError> {
    let tools = Tools::from_openai(
        &req.tools,
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )
    .map_err(|e| {
        let param = match e {
            ToolError::BadChoice(_) => "tool_choice",
            _ => "tools",
        };
        ApiError::invalid(Some(param), e.to_string())
    })?;
    let Some(tools) = tools else {
        return Ok(None);
    };
    if req.options.grammar.is_some() {
        return Err(ApiError::invalid(
            Some("grammar"),
            "a GBNF grammar cannot be combined with tools (a response_format can)",
        ));
    }
    let schema = req.options.response_schema()?;
    let tools = match (template, &schema) {
        (Some(src), None) => tools.for_template(src),
        _ => tools,
    };
    let grammar = tools
        .grammar(schema.as_ref())
        .map_err(|e| ApiError::invalid(Some("response_format"), e.to_string()))?;
    Ok(Some((Arc::new(tools), Arc::new(grammar))))
}

/// A chat request's messages for `template` (its source) with its
/// template variables, and its tools, checked. A template that writes
/// tool calls in a format of its own is given OpenAI's messages (calls
/// and results structured, [`native_messages`]) and the request's
/// `tools`; any other, (role, text) turns ([`conversation`]).
pub fn prepare(
    req: &ChatRequest,
    template: Option<&str>,
) -> Result<(Conversation, Option<ToolMode>), ApiError> {
    let tools = requested(req, template)?;
    let format = match &tools {
        Some((t, _)) => t.format(),
        None => template.map_or(ToolFormat::Generic, ToolFormat::of_template),
    };
    let mut vars = req.template_vars()?;
    let messages = if format == ToolFormat::Generic {
        req.conversation(tools.as_ref().map(|(t, _)| &**t))?
            .into_iter()
            .map(|(role, content)| json!({"role": role, "content": content}))
            .collect()
    } else {
        if tools.is_some() {
            vars.insert("tools".into(), req.tools.clone());
        }
        let blocks = template.is_some_and(thinking_blocks);
        native_messages(req.texts()?, format, blocks)?
    };
    Ok((Conversation { messages, vars }, tools))
}

/// Whether a template reads system and assistant messages as lists of
/// `text` and `thinking` blocks (Ministral 3's and Mistral Large 3's,
/// told as llama.cpp tells them: `[SYSTEM_PROMPT]`, `[TOOL_CALLS]` and
/// `[ARGS]` without Mistral Small 3.2's `[CALL_ID]`).
pub fn thinking_blocks(template: &str) -> bool {
    ["[SYSTEM_PROMPT]", "[TOOL_CALLS]", "[ARGS]"]
        .iter()
        .all(|m| template.contains(m))
        && !template.contains("[CALL_ID]")
}

/// OpenAI's messages as templates that know tools read them: text
/// content; an assistant's `tool_calls` as `[{"id", "type": "function",
/// "function": {"name", "arguments"}}]` with the arguments an object
/// (templates write them with `tojson`); `tool` messages with their
/// `tool_call_id` and the called tool's `name`; `developer` read as
/// `system` except by harmony, whose templates know it. With `blocks`
/// ([`thinking_blocks`]), system and assistant messages' content is a
/// list of blocks, the reasoning a `thinking` block before the `text`
/// one, as llama.cpp gives them to Ministral 3's template.
pub fn native_messages(
    messages: Vec<(&Message, String)>,
    format: ToolFormat,
    blocks: bool,
) -> Result<Vec<Value>, ApiError> {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(messages.len());
    for (m, text) in messages {
        let role = match m.role.as_str() {
            "developer" if format != ToolFormat::Harmony => "system",
            r => r,
        };
        let mut v = json!({"role": role, "content": text});
        if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_null()) {
            if m.role != "assistant" {
                return Err(ApiError::invalid(
                    Some("messages"),
                    "only assistant messages hold tool_calls",
                ));
            }
            let ids: Vec<Option<&str>> = calls
                .as_array()
                .map(|cs| {
                    cs.iter()
                        .map(|c| c.get("id").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            let calls = earlier_calls(calls, &mut names)?;
            if !calls.is_empty() {
                let list: Vec<Value> = calls
                    .iter()
                    .zip(ids.iter().chain(std::iter::repeat(&None)))
                    .map(|(c, id)| {
                        let mut call = json!({"type": "function",
                            "function": {"name": c.name, "arguments": c.arguments}});
                        if let Some(id) = id {
                            call["id"] = json!(id);
                        }
                        call
                    })
                    .collect();
                v["tool_calls"] = json!(list);
            }
        }
        if let Some(r) = m
            .reasoning_content
            .as_ref()
            .filter(|_| m.role == "assistant")
        {
            v["reasoning_content"] = json!(r);
            if format == ToolFormat::Harmony {
                // gpt-oss's template reads it as `thinking`, and refuses
                // both it and content beside calls.
                v["thinking"] = json!(r);
                if let Some(o) = v.as_object_mut().filter(|o| o.contains_key("tool_calls")) {
                    o.remove("content");
                }
            }
        }
        if blocks && matches!(role, "system" | "assistant") {
            let mut list = Vec::new();
            if let Some(r) = v
                .as_object_mut()
                .and_then(|o| o.remove("reasoning_content"))
            {
                list.push(json!({"type": "thinking", "thinking": r}));
            }
            list.push(json!({"type": "text", "text": v["content"].take()}));
            v["content"] = json!(list);
        }
        if m.role == "tool" {
            if let Some(id) = &m.tool_call_id {
                v["tool_call_id"] = json!(id);
            }
            let name = m
                .tool_call_id
                .as_ref()
                .and_then(|id| names.get(id))
                .or(m.name.as_ref());
            if let Some(n) = name {
                v["name"] = json!(n);
            }
        }
        out.push(v);
    }
    if out.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "messages must hold at least one message",
        ));
    }
    Ok(out)
}

/// A conversation as (role, text) turns.
pub type Turns = Vec<(String, String)>;

/// The conversation as (role, text) turns: an assistant's `tool_calls`
/// written after its content as the model writes calls; `tool` messages as
/// a user turn of results (consecutive ones in one turn, so that templates
/// that insist on alternating roles take them), each named by the call it
/// answers; `developer` read as `system`. With `tools`, their instructions
/// end the system message (one is added if there is none).
pub fn conversation(
    messages: Vec<(&Message, String)>,
    tools: Option<&Tools>,
) -> Result<Turns, ApiError> {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut turns: Vec<(String, String)> = Vec::new();
    let mut after_tool = false;
    for (m, mut text) in messages {
        if m.role == "tool" {
            let name = m
                .tool_call_id
                .as_ref()
                .and_then(|id| names.get(id))
                .or(m.name.as_ref());
            let result = result_text(name.map(String::as_str), &text);
            match turns.last_mut() {
                Some((_, t)) if after_tool => {
                    t.push('\n');
                    t.push_str(&result);
                }
                _ => turns.push(("user".into(), result)),
            }
            after_tool = true;
            continue;
        }
        after_tool = false;
        if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_null()) {
            if m.role != "assistant" {
                return Err(ApiError::invalid(
                    Some("messages"),
                    "only assistant messages hold tool_calls",
                ));
            }
            let calls = earlier_calls(calls, &mut names)?;
            if !calls.is_empty() {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&calls_text(&calls));
            }
        }
        // OpenAI's newer name for the system role.
        let role = match m.role.as_str() {
            "developer" => "system",
            r => r,
        };
        turns.push((role.to_string(), text));
    }
    if let Some(tools) = tools {
        let instructions = tools.instructions();
        match turns.first_mut() {
            Some((role, text)) if role == "system" => {
                if !text.is_empty() {
                    text.push_str("\n\n");
                }
                text.push_str(&instructions);
            }
            _ => turns.insert(0, ("system".into(), instructions)),
        }
    }
    Ok(turns)
}

/// An assistant message's `tool_calls` (`[{"id", "type": "function",
/// "function": {"name", "arguments"}}]`, arguments a JSON string or
/// object), noting each call's tool by its id.
fn earlier_calls(
    calls: &Value,
    names: &mut HashMap<String, String>,
) -> Result<Vec<ToolCall>, ApiError> {
    let bad = || {
        ApiError::invalid(
            Some("messages"),
            "a message's tool_calls are [{\"id\", \"type\": \"function\", \
             \"function\": {\"name\", \"arguments\"}}]",
        )
    };
    let calls = calls.as_array().ok_or_else(bad)?;
    calls
        .iter()
        .map(|c| {
            let f = c.get("function").ok_or_else(bad)?;
            let name = f.get("name").and_then(Value::as_str).ok_or_else(bad)?;
            let arguments = match f.get("arguments") {
                None | Some(Value::Null) => json!({}),
                Some(Value::String(s)) => {
                    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
                }
                Some(v) => v.clone(),
            };
            if let Some(id) = c.get("id").and_then(Value::as_str) {
                names.insert(id.to_string(), name.to_string());
            }
            Ok(ToolCall {
                name: name.to_string(),
                arguments,
            })
        })
        .collect()
}

/// What a generated reply says.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Tool calls, and the content written beside them (a native format's
    /// text before a call; empty in the generic format).
    Calls(Vec<ToolCall>, String),
    /// Content: a string response, a response of the schema as indented
    /// JSON, or, for a reply cut short, the response so far (or the raw
    /// text, when it is not a string response); in a native format, the
    /// answer as it is.
    Content(String),
}

/// Reads a reply generated under `tools`: `content` is the answer (the
/// reply with any reasoning told apart), `raw` the reply as generated
/// (harmony's calls are messages of their own, outside the answer).
pub fn outcome(tools: &Tools, content: &str, raw: &str) -> Outcome {
    let native = match tools.format() {
        ToolFormat::Generic => None,
        ToolFormat::Harmony => Some(raw),
        _ => Some(content),
    };
    if let Some(text) = native {
        // (Content trimmed, as `Tools::streamable` streams it, but
        // harmony's, which the reasoning splitter made.)
        let reply = tools.parse_native(text);
        let beside = match tools.format() {
            ToolFormat::Harmony => content.to_string(),
            _ if reply.calls.is_empty() => content.trim().to_string(),
            _ => reply.content,
        };
        return match reply.calls.is_empty() {
            true => Outcome::Content(beside),
            false => Outcome::Calls(reply.calls, beside),
        };
    }
    match tools.parse(content) {
        Ok(ToolReply::Calls(calls)) => Outcome::Calls(calls, String::new()),
        Ok(ToolReply::Response(Value::String(s))) => Outcome::Content(s),
        Ok(ToolReply::Response(v)) => {
            Outcome::Content(serde_json::to_string_pretty(&v).unwrap_or_default())
        }
        Err(_) => {
            Outcome::Content(streamed_response(content).unwrap_or_else(|| content.to_string()))
        }
    }
}

/// A splitter of a reply's reasoning in `format` (`thinking`: the prompt
/// opened a think block), a call in the tools' format ending a block too.
pub fn splitter(
    tools: Option<&Tools>,
    format: ReasoningFormat,
    thinking: bool,
) -> ReasoningSplitter {
    let ends = tools.map_or(&[][..], Tools::reasoning_ends);
    ReasoningSplitter::new(format, thinking).ended_by(ends)
}

/// A whole reply's reasoning and answer (with no reasoning format, all
/// answer).
pub fn split_reply(
    tools: Option<&Tools>,
    reasoning: Option<(ReasoningFormat, bool)>,
    reply: &str,
) -> ReplyParts {
    match reasoning {
        Some((format, thinking)) => {
            let mut s = splitter(tools, format, thinking);
            let mut parts = s.push(reply);
            parts.append(s.finish());
            parts
        }
        None => ReplyParts {
            reasoning: String::new(),
            content: reply.to_string(),
        },
    }
}

/// A request's limits: under tools, their grammar (lazy where the
/// format's triggers say) and the format's markers kept in the text;
/// `markers`, control tokens kept in the text besides (a chat template's
/// reasoning markers).
pub fn limits(
    options: &Options,
    seed: u64,
    echo: bool,
    tools: Option<&ToolMode>,
    markers: &[&str],
) -> Result<Limits, ApiError> {
    let mut limits = match tools {
        Some((tools, grammar)) => Limits {
            grammar_triggers: tools.triggers(),
            preserved_tokens: tools.preserved_tokens(),
            ..options.limits_with(seed, echo, Some(grammar.clone()))?
        },
        None => options.limits(seed, echo)?,
    };
    limits
        .preserved_tokens
        .extend(markers.iter().map(|m| m.to_string()));
    Ok(limits)
}

/// A whole reply read as the server reads it under `tools`: its reasoning
/// told apart in `reasoning`'s format (and whether the prompt opened a
/// think block), then its calls and content, as
/// `{"content", "reasoning_content", "tool_calls": [{"name", "arguments"}]}`
/// (`realm chat-template --tools --parse` prints it).
pub fn read_reply(tools: &Tools, reasoning: Option<(ReasoningFormat, bool)>, reply: &str) -> Value {
    let parts = split_reply(Some(tools), reasoning, reply);
    let (content, calls) = match outcome(tools, &parts.content, reply) {
        Outcome::Calls(calls, content) => (content, calls),
        Outcome::Content(content) => (content, Vec::new()),
    };
    let calls: Vec<Value> = calls
        .iter()
        .map(|c| json!({"name": c.name, "arguments": c.arguments.to_string()}))
        .collect();
    json!({"content": content, "reasoning_content": parts.reasoning, "tool_calls": calls})
}

/// The id of call `k` of a reply whose ids are made of `stem` (unique
/// to the request's choice): `{prefix}{stem}_{k}`, or, where the template
/// insists on nine letters and digits (Mistral's), nine made of the same.
pub fn call_id(tools: Option<&Tools>, prefix: &str, stem: &str, k: usize) -> String {
    if !tools.is_some_and(|t| t.format().short_ids()) {
        return format!("{prefix}{stem}_{k}");
    }
    // FNV-1a of the long id, in base 36.
    let long = format!("{stem}_{k}");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in long.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..9)
        .map(|_| {
            let d = DIGITS[(h % 36) as usize] as char;
            h /= 36;
            d
        })
        .collect()
}

/// OpenAI's `tool_calls` of `calls`, with ids made of `stem` (see
/// [`call_id`]); streamed chunks number them with `index`.
pub fn calls_json(tools: &Tools, calls: &[ToolCall], stem: &str, streamed: bool) -> Value {
    let list: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let mut v = json!({
                "id": call_id(Some(tools), "call_", stem, k),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments.to_string()},
            });
            if streamed {
                v["index"] = json!(k);
            }
            v
        })
        .collect();
    json!(list)
}

/// A piece of a call as it streams: call `index` begins (`name` given,
/// with its arguments so far) or its arguments go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallPiece {
    pub index: usize,
    pub name: Option<String>,
    pub arguments: String,
}

/// The pieces that stream the calls written so far (`prefixes`,
/// [`Tools::call_prefixes`]) past what went out: `sent` holds each begun
/// call's argument bytes out, and grows with the calls begun.
pub fn call_pieces(prefixes: &[CallPrefix<'_>], sent: &mut Vec<usize>) -> Vec<CallPiece> {
    let mut out = Vec::new();
    for (index, p) in prefixes.iter().enumerate() {
        match sent.get_mut(index) {
            None => {
                out.push(CallPiece {
                    index,
                    name: Some(p.name.to_string()),
                    arguments: p.arguments.to_string(),
                });
                sent.push(p.arguments.len());
            }
            Some(n) => {
                if let Some(more) = p.arguments.get(*n..).filter(|m| !m.is_empty()) {
                    out.push(CallPiece {
                        index,
                        name: None,
                        arguments: more.to_string(),
                    });
                    *n = p.arguments.len();
                }
            }
        }
    }
    out
}

/// The pieces that end the calls begun in a streamed reply (`sent` as
/// [`call_pieces`] left it) that has ended with `calls`: the rest of each,
/// from `prefixes` of the whole reply ([`Tools::ended_call_prefixes`]) as
/// far as they stand for `calls` (complete, the same tools).
pub fn ending_pieces(
    prefixes: &[CallPrefix<'_>],
    calls: &[ToolCall],
    sent: &mut Vec<usize>,
) -> Vec<CallPiece> {
    let agree = prefixes
        .iter()
        .zip(calls)
        .take(sent.len())
        .take_while(|(p, c)| p.complete && p.name == c.name)
        .count();
    call_pieces(&prefixes[..agree], sent)
}

/// The `tool_calls` deltas that stream calls as they are written
/// ([`call_pieces`]): a call's first delta has its index, id, type, name
/// and arguments so far, later ones the arguments that came since.
pub fn call_deltas(
    tools: &Tools,
    prefixes: &[CallPrefix<'_>],
    sent: &mut Vec<usize>,
    stem: &str,
) -> Vec<Value> {
    piece_deltas(tools, call_pieces(prefixes, sent), stem)
}

/// Call pieces as `tool_calls` deltas.
fn piece_deltas(tools: &Tools, pieces: Vec<CallPiece>, stem: &str) -> Vec<Value> {
    pieces
        .into_iter()
        .map(|p| match p.name {
            Some(name) => json!({
                "index": p.index,
                "id": call_id(Some(tools), "call_", stem, p.index),
                "type": "function",
                "function": {"name": name, "arguments": p.arguments},
            }),
            None => json!({"index": p.index, "function": {"arguments": p.arguments}}),
        })
        .collect()
}

/// The `tool_calls` deltas that end a streamed reply whose calls are
/// `calls`: the rest of the calls that streamed as they were written
/// (`prefixes` of the whole reply, `sent` as [`call_deltas`] left it),
/// then the others whole.
pub fn last_call_deltas(
    tools: &Tools,
    prefixes: &[CallPrefix<'_>],
    calls: &[ToolCall],
    sent: &mut Vec<usize>,
    stem: &str,
) -> Vec<Value> {
    let mut out = piece_deltas(tools, ending_pieces(prefixes, calls, sent), stem);
    if let Value::Array(whole) = calls_json(tools, calls, stem, true) {
        out.extend(whole.into_iter().skip(sent.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    }

    /// A conversation with a call and its result reads as the model would
    /// have written it, under instructions that name the tools.
    #[test]
    fn history_and_instructions_go_into_the_conversation() {
        let r = request(json!({
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Oslo and Lima?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
                    {"id": "c2", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Lima\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 3}"},
                {"role": "tool", "tool_call_id": "c2", "content": "warm"},
            ],
            "tools": weather(),
        }));
        let (tools, _) = requested(&r, None).unwrap().unwrap();
        let turns = r.conversation(Some(&tools)).unwrap();
        let roles: Vec<&str> = turns.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(turns[0].1.starts_with("Be brief.\n\nThese tools"));
        assert!(turns[0].1.contains("\"get_weather\""));
        assert_eq!(
            turns[2].1,
            r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Oslo"}},{"name":"get_weather","arguments":{"city":"Lima"}}]}"#
        );
        assert_eq!(
            turns[3].1,
            "{\"tool_response\":{\"name\":\"get_weather\",\"content\":{\"temp\":3}}}\n\
             {\"tool_response\":{\"name\":\"get_weather\",\"content\":\"warm\"}}"
        );
        // Without tools the history is the same, with no instructions.
        let plain = r.conversation(None).unwrap();
        assert_eq!(plain[0].1, "Be brief.");
        assert_eq!(plain[1..], turns[1..]);
    }

    /// A template with a tool format of its own gets OpenAI's messages:
    /// calls with object arguments and their ids, results with their id
    /// and the tool's name, reasoning (for harmony, as `thinking` too and
    /// without content beside calls), `developer` as `system` but for
    /// harmony; and the tools.
    #[test]
    fn native_templates_get_structured_messages() {
        let r = request(json!({
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": "", "reasoning_content": "Look it up.",
                 "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "3"},
            ],
            "tools": weather(),
        }));
        let (chat, _) = prepare(&r, Some("<tool_call>")).unwrap();
        assert_eq!(chat.vars["tools"], weather());
        assert_eq!(
            chat.messages,
            [
                json!({"role": "system", "content": "Be brief."}),
                json!({"role": "user", "content": "Weather in Oslo?"}),
                json!({"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "get_weather",
                     "arguments": {"city": "Oslo"}}, "id": "c1"}],
                    "reasoning_content": "Look it up."}),
                json!({"role": "tool", "content": "3", "tool_call_id": "c1",
                       "name": "get_weather"}),
            ]
        );
        // Ministral 3's template reads blocks.
        let ministral = "[SYSTEM_PROMPT] [TOOL_CALLS] [ARGS] [THINK]";
        let (blocks, _) = prepare(&r, Some(ministral)).unwrap();
        assert_eq!(
            blocks.messages[0]["content"],
            json!([{"type": "text", "text": "Be brief."}])
        );
        assert_eq!(
            blocks.messages[2]["content"],
            json!([{"type": "thinking", "thinking": "Look it up."},
                   {"type": "text", "text": ""}])
        );
        assert!(blocks.messages[2].get("reasoning_content").is_none());
        assert_eq!(blocks.messages[1], chat.messages[1]);
        assert!(!thinking_blocks(
            "[SYSTEM_PROMPT] [TOOL_CALLS] [ARGS] [CALL_ID]"
        ));
        let (harmony, _) = prepare(&r, Some("<|channel|> to=")).unwrap();
        assert_eq!(harmony.messages[0]["role"], "developer");
        assert_eq!(harmony.messages[2]["thinking"], "Look it up.");
        assert!(harmony.messages[2].get("content").is_none());
        // A template without one: (role, text) turns, instructions given.
        let (plain, _) = prepare(&r, Some("{{ messages }}")).unwrap();
        assert!(plain.vars.get("tools").is_none());
        assert_eq!(plain.messages[3]["role"], "user");
    }

    /// A chat template's markers stay in the text beside the tools' own.
    #[test]
    fn limits_keep_the_templates_markers() {
        let r = request(json!({"messages": [{"role": "user", "content": "hi"}],
                               "tools": weather()}));
        let plain = limits(&r.options, 1, false, None, &["[THINK]"]).unwrap();
        assert_eq!(plain.preserved_tokens, ["[THINK]"]);
        let tools = requested(&r, Some("[TOOL_CALLS] [ARGS] [CALL_ID]")).unwrap();
        let both = limits(&r.options, 1, false, tools.as_ref(), &["[THINK]"]).unwrap();
        assert_eq!(both.preserved_tokens.last().unwrap(), "[THINK]");
        assert!(both.preserved_tokens.contains(&"[TOOL_CALLS]".to_string()));
    }

    #[test]
    fn bad_tool_requests_name_their_field() {
        let m = json!([{"role": "user", "content": "hi"}]);
        for (body, param) in [
            (json!({"messages": m, "tools": {"a": 1}}), "tools"),
            (json!({"messages": m, "tools": [{"type": "x"}]}), "tools"),
            (
                json!({"messages": m, "tools": weather(), "tool_choice": "maybe"}),
                "tool_choice",
            ),
            (
                json!({"messages": m, "tools": weather(), "grammar": "root ::= \"a\""}),
                "grammar",
            ),
            (
                json!({"messages": m, "tools": [], "tool_choice": "required"}),
                "tool_choice",
            ),
        ] {
            let e = requested(&request(body), None).unwrap_err();
            assert_eq!(e.param, Some(param), "{}", e.message);
        }
        let user_calls = request(json!({"messages": [
            {"role": "user", "content": "hi", "tool_calls": []}]}));
        assert_eq!(
            user_calls.conversation(None).unwrap_err().param,
            Some("messages")
        );
        let no_name = request(json!({"messages": [
            {"role": "assistant", "tool_calls": [{"function": {}}]}]}));
        assert_eq!(
            no_name.conversation(None).unwrap_err().param,
            Some("messages")
        );
        // No tools, or the choice none: a plain chat.
        for extra in [
            json!({}),
            json!({"tools": []}),
            json!({"tools": weather(), "tool_choice": "none"}),
        ] {
            let mut body = json!({"messages": m});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            assert!(requested(&request(body), None).unwrap().is_none());
        }
    }

    #[test]
    fn replies_become_calls_or_content() {
        let tools = Tools::from_openai(&weather(), None, None).unwrap().unwrap();
        let call = r#"{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}"#;
        let Outcome::Calls(calls, _) = outcome(&tools, call, call) else {
            panic!("not a call")
        };
        assert_eq!(
            calls_json(&tools, &calls, "x_0", true),
            json!([{"index": 0, "id": "call_x_0_0", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}])
        );
        assert_eq!(
            outcome(&tools, r#"{"response": "Hi."}"#, ""),
            Outcome::Content("Hi.".into())
        );
        assert_eq!(
            outcome(&tools, r#"{"response": {"a": 1}}"#, ""),
            Outcome::Content("{\n  \"a\": 1\n}".into())
        );
        // Cut short: the response so far, or the text.
        assert_eq!(
            outcome(&tools, r#"{"response": "Hel"#, ""),
            Outcome::Content("Hel".into())
        );
        assert_eq!(
            outcome(&tools, r#"{"tool_call": {"na"#, ""),
            Outcome::Content(r#"{"tool_call": {"na"#.into())
        );
    }
}
