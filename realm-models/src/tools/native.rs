//! Tool calls in a model's own format: the chat template is given the
//! tools (and earlier calls, as OpenAI's messages hold them) and writes
//! them as the model was trained to read them; the model's calls are read
//! back from the markers it was trained to write.
//!
//! These formats are known, told from the template's text as llama.cpp
//! tells them:
//!
//! - [`ToolFormat::Hermes`]: `<tool_call>\n{"name": ..., "arguments":
//!   {...}}\n</tool_call>` blocks (Hermes 2 Pro and 3, Qwen 2.5, QwQ,
//!   Qwen 3), which may follow some text and a `<think>` block.
//! - [`ToolFormat::Harmony`]: gpt-oss's messages to a function,
//!   `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>`
//!   and the arguments, ended by `<|call|>` (or the recipient before the
//!   channel: `<|start|>assistant to=functions.NAME<|channel|>...`).
//! - [`ToolFormat::Llama3`]: Llama 3.1-3.3's `{"name": ..., "parameters":
//!   {...}}`.
//! - [`ToolFormat::XmlParameters`] (Qwen 3 Coder, Qwen 3.5, Nemotron 3
//!   Nano, Step 3.5): `<tool_call>\n<function=NAME>\n<parameter=P>\nVALUE`
//!   `\n</parameter>\n</function>\n</tool_call>`, text values as they
//!   are, others as JSON.
//! - [`ToolFormat::Mistral`]: Mistral Small 3.2's, Devstral's and Ministral
//!   3's `[TOOL_CALLS]NAME[ARGS]{...}` (a `[CALL_ID]` may come between),
//!   and [`ToolFormat::MistralNemo`]: Mistral Nemo's `[TOOL_CALLS][{"name":
//!   ..., "arguments": {...}, "id": "..."}]`. Their markers are special
//!   tokens, kept in the text ([`Tools::preserved_tokens`]); their call ids
//!   are nine letters and digits ([`ToolFormat::short_ids`]).
//!
//! Under the choice `auto` the grammar of the calls is lazy: the model
//! writes freely until it opens a call, and from there on only calls of
//! the tools it was given, with arguments their schemas allow. Under
//! `required` (or a named function) the grammar holds from the first
//! token, allowing the reasoning these models write first.
//!
//! ```
//! use realm_models::tools::{ToolFormat, Tools};
//! let template = "{% for t in tools %}{{ t | tojson }}{% endfor %} <tool_call>";
//! assert_eq!(ToolFormat::of_template(template), ToolFormat::Hermes);
//! let tools = serde_json::json!([{"type": "function", "function": {"name": "now"}}]);
//! let tools = Tools::from_openai(&tools, None, None)?.unwrap().for_template(template);
//! assert_eq!(tools.triggers(), ["<tool_call>"]);
//! let reply = tools.parse_native("Let me look.\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>");
//! assert_eq!(reply.content, "Let me look.");
//! assert_eq!(reply.calls[0].name, "now");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;

use serde_json::Value;

use super::marked::{self, JsonMarkup};
use super::xml::{self, XmlMarkup};
use super::{ToolCall, ToolChoice, Tools};
use crate::grammar::{convert_framed, gbnf_literal, Grammar, GrammarError};

/// How a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ToolFormat {
    /// Realm's JSON replies, for any model (see [`crate::tools`]).
    #[default]
    Generic,
    /// `<tool_call>` blocks of JSON (Hermes, Qwen 2.5, QwQ, Qwen 3).
    Hermes,
    /// gpt-oss's messages to `functions.NAME`.
    Harmony,
    /// Llama 3.1, 3.2 and 3.3's JSON calls, `{"name": ..., "parameters":
    /// {...}}`, results read back in the `ipython` role.
    Llama3,
    /// `[TOOL_CALLS]NAME[ARGS]{...}` (Mistral Small 3.2, Devstral,
    /// Ministral 3).
    Mistral,
    /// `<tool_call>` blocks of `<function=NAME>` and `<parameter=P>`
    /// elements (Qwen 3 Coder, Qwen 3.5, Nemotron 3 Nano, Step 3.5).
    XmlParameters,
    /// `<tool_call>NAME` and `<arg_key>`/`<arg_value>` pairs, a line
    /// break after each (GLM-4.5, GLM-4.6).
    Glm45,
    /// GLM-4.5's calls without line breaks (GLM-4.7).
    Glm47,
    /// `<minimax:tool_call>` blocks of `<invoke name="NAME">` and
    /// `<parameter name="P">` elements (MiniMax-M2).
    MinimaxM2,
    /// `<｜tool▁calls▁begin｜>` sections of `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}`
    /// calls (DeepSeek V3.1).
    DeepSeekV31,
    /// DeepSeek V3.1's sections of `function<｜tool▁sep｜>NAME` calls with
    /// their arguments in a JSON code block (DeepSeek R1 and its distills).
    DeepSeekR1,
    /// `<|tool_calls_section_begin|>` sections of
    /// `<|tool_call_begin|>functions.NAME:N<|tool_call_argument_begin|>{...}`
    /// calls (Kimi K2).
    KimiK2,
    /// `[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}]`
    /// (Mistral Nemo).
    MistralNemo,
}

pub(super) const HERMES_OPEN: &str = "<tool_call>";
pub(super) const MISTRAL_OPEN: &str = "[TOOL_CALLS]";
pub(super) const MISTRAL_ARGS: &str = "[ARGS]";
const MISTRAL_ID: &str = "[CALL_ID]";
/// How Llama 3's calls begin.
const LLAMA3_OPEN: &str = "{\"name\"";
pub(super) const HERMES_CLOSE: &str = "</tool_call>";
pub(super) const HARMONY_TO: &str = " to=functions.";
pub(super) const MESSAGE: &str = "<|message|>";
/// The markers that end a harmony message.
pub(super) const HARMONY_ENDS: [&str; 3] = ["<|end|>", "<|return|>", "<|call|>"];

impl ToolFormat {
    /// The format a chat template writes calls in: harmony where it
    /// writes `<|channel|>` and recipients, Hermes where it writes
    /// `<tool_call>` around JSON, the XML parameters where it writes
    /// `<function=` and `<parameter=` inside them (not MiniMax's or GLM's
    /// XML), Llama 3's where it opens `ipython` turns
    /// (not Functionary's `<function=` calls), Mistral's where it writes
    /// `[TOOL_CALLS]` (with `[ARGS]` or Nemo's JSON), else the generic
    /// format.
    pub fn of_template(source: &str) -> Self {
        let xml = ["<function=", "<invoke", "<arg_key>"]
            .iter()
            .any(|m| source.contains(m));
        if source.contains("<|channel|>") && source.contains(" to=") {
            Self::Harmony
        } else if source.contains(MISTRAL_OPEN) {
            match source.contains(MISTRAL_ARGS) {
                true => Self::Mistral,
                false => Self::MistralNemo,
            }
        } else if source.contains(marked::KIMI_K2.open)
            && source.contains("<|tool_call_argument_begin|>")
        {
            Self::KimiK2
        } else if source.contains(marked::DEEPSEEK_V31.open) && source.contains("<｜tool▁sep｜>")
        {
            match source.contains("```json") {
                true => Self::DeepSeekR1,
                false => Self::DeepSeekV31,
            }
        } else if source.contains(xml::MINIMAX.open) && source.contains("<invoke name=") {
            Self::MinimaxM2
        } else if source.contains(HERMES_OPEN) && source.contains("<arg_key>") {
            // GLM-4.7's instructions show its calls without line breaks.
            match source.contains("</arg_value><arg_key>") {
                true => Self::Glm47,
                false => Self::Glm45,
            }
        } else if source.contains(HERMES_OPEN)
            && source.contains("<function=")
            && source.contains("<parameter=")
        {
            Self::XmlParameters
        } else if source.contains(HERMES_OPEN) && !xml {
            Self::Hermes
        } else if source.contains("<|start_header_id|>ipython<|end_header_id|>") && !xml {
            Self::Llama3
        } else {
            Self::Generic
        }
    }

    /// The format's name, as `realm chat-template` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Generic => "generic",
            Self::Hermes => "hermes",
            Self::Harmony => "harmony",
            Self::Llama3 => "llama3",
            Self::Mistral => "mistral",
            Self::MistralNemo => "mistral-nemo",
            Self::XmlParameters => "xml-parameters",
            Self::Glm45 => "glm-4.5",
            Self::Glm47 => "glm-4.7",
            Self::MinimaxM2 => "minimax-m2",
            Self::DeepSeekV31 => "deepseek-v3.1",
            Self::DeepSeekR1 => "deepseek-r1",
            Self::KimiK2 => "kimi-k2",
        }
    }

    /// The markup of a format of named JSON calls in a section.
    pub(super) fn marked(self) -> Option<&'static JsonMarkup> {
        match self {
            Self::DeepSeekV31 => Some(&marked::DEEPSEEK_V31),
            Self::DeepSeekR1 => Some(&marked::DEEPSEEK_R1),
            Self::KimiK2 => Some(&marked::KIMI_K2),
            _ => None,
        }
    }

    /// The markup of an XML format's calls.
    pub(super) fn xml(self) -> Option<&'static XmlMarkup> {
        match self {
            Self::XmlParameters => Some(&xml::QWEN),
            Self::Glm45 => Some(&xml::GLM45),
            Self::Glm47 => Some(&xml::GLM47),
            Self::MinimaxM2 => Some(&xml::MINIMAX),
            _ => None,
        }
    }

    /// Whether the template insists on call ids of nine letters and
    /// digits (Mistral's do), which the ids handed out must then be.
    pub fn short_ids(self) -> bool {
        matches!(self, Self::Mistral | Self::MistralNemo)
    }
}

/// A reply in a native format, read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NativeReply {
    /// The text around the calls (trimmed), including any call that did
    /// not parse, as the model wrote it.
    pub content: String,
    /// The calls, in order.
    pub calls: Vec<ToolCall>,
}

impl Tools {
    /// These tools in the format `template` (a chat template's source)
    /// writes calls in; a template that writes `<think>` lets a required
    /// call follow a think block.
    pub fn for_template(mut self, template: &str) -> Self {
        self.format = ToolFormat::of_template(template);
        self.thinks = template.contains("<think>");
        self
    }

    /// The format calls are written in.
    pub fn format(&self) -> ToolFormat {
        self.format
    }

    /// The texts that start a call, for a lazy grammar
    /// ([`crate::GenerateParams::grammar_triggers`]): none in the generic
    /// format or where a call is required (the grammar holds throughout).
    pub fn triggers(&self) -> Vec<String> {
        if self.choice != ToolChoice::Auto {
            return Vec::new();
        }
        match self.format {
            ToolFormat::Generic => Vec::new(),
            ToolFormat::Hermes => vec![HERMES_OPEN.to_string()],
            ToolFormat::Harmony => vec![HARMONY_TO.to_string()],
            ToolFormat::Llama3 => vec![LLAMA3_OPEN.to_string()],
            ToolFormat::Mistral | ToolFormat::MistralNemo => vec![MISTRAL_OPEN.to_string()],
            // The XML formats' block, the others' section.
            f => match (f.xml(), f.marked()) {
                (Some(m), _) => vec![m.open.to_string()],
                (_, Some(m)) => vec![m.open.to_string()],
                _ => Vec::new(),
            },
        }
    }

    /// Markers that end a think block where a model opens a call without
    /// closing its reasoning ([`crate::reasoning::ReasoningSplitter::ended_by`]):
    /// `<tool_call>` in the formats of such blocks.
    pub fn reasoning_ends(&self) -> &'static [&'static str] {
        match self.format.xml() {
            Some(m) => std::slice::from_ref(&m.open),
            None if self.format == ToolFormat::Hermes => &[HERMES_OPEN],
            None => &[],
        }
    }

    /// The special tokens whose text must stay in the reply for its calls
    /// to be read ([`crate::GenerateParams::preserved_tokens`]): the
    /// format's markers.
    pub fn preserved_tokens(&self) -> Vec<String> {
        let marks: &[&str] = match self.format {
            ToolFormat::Generic | ToolFormat::Llama3 => &[],
            ToolFormat::Hermes => &[HERMES_OPEN, HERMES_CLOSE],
            ToolFormat::Harmony => &["<|channel|>", "<|message|>", "<|constrain|>", "<|start|>"],
            ToolFormat::Mistral => &[MISTRAL_OPEN, MISTRAL_ARGS, MISTRAL_ID],
            ToolFormat::MistralNemo => &[MISTRAL_OPEN],
            f => match (f.xml(), f.marked()) {
                (Some(m), _) => m.preserved,
                (_, Some(m)) => m.preserved,
                _ => &[],
            },
        };
        marks.iter().map(|m| m.to_string()).collect()
    }

    /// The grammar of calls in a native format: from a trigger on (see
    /// [`Tools::triggers`]), or of the whole reply when a call is required.
    pub(super) fn native_grammar(&self) -> Result<Grammar, GrammarError> {
        let lazy = self.choice == ToolChoice::Auto;
        if let Some(m) = self.format.xml() {
            return self.xml_grammar(m, lazy);
        }
        if let Some(m) = self.format.marked() {
            return self.marked_grammar(m, lazy);
        }
        match self.format {
            ToolFormat::Harmony => {
                let tools: Vec<&super::Tool> = self.callable().collect();
                let values = argument_rules(&tools);
                // After the name: the channel when the recipient came
                // first, the arguments' type (a word of at most 16), then
                // the message.
                let head = "(\"<|channel|>\" (\"commentary\" | \"analysis\"))? \
                            (\" \"? \"<|constrain|>\" [a-zA-Z0-9_-]{1,16} | \" \" [a-zA-Z0-9_-]{1,16})? \
                            \"<|message|>\"";
                let names: Vec<String> = tools
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("{} {head} args-{i}", gbnf_literal(&t.name)))
                    .collect();
                let call = format!("{} ({})", gbnf_literal(HARMONY_TO), names.join(" | "));
                let root = match lazy {
                    true => call,
                    // Reasoning first, then the call's header: the
                    // recipient after the role or after the channel.
                    false => format!(
                        "(\"<|channel|>analysis<|message|>\" ([^<] | \"<\" [^|])* \
                         \"<|end|><|start|>assistant\")? (\"<|channel|>commentary\")? {call}"
                    ),
                };
                convert_framed(&[("root", root)], &values)
            }
            ToolFormat::Llama3 => {
                // `{"name": ..., "parameters": ...}`, compact where the
                // call is lazy (its trigger is the compact opening).
                let calls: Vec<Value> = self
                    .callable()
                    .map(|t| {
                        serde_json::json!({
                            "type": "object",
                            "properties": {"name": {"const": t.name}, "parameters": t.parameters},
                            "required": ["name", "parameters"],
                        })
                    })
                    .collect();
                let call = any_of(calls);
                let root = match lazy {
                    true => "call",
                    false => "[ \\t\\n]* call",
                };
                convert_framed(
                    &[("root", root.to_string())],
                    &[("call".to_string(), &call)],
                )
            }
            ToolFormat::MistralNemo => {
                let calls: Vec<Value> = self
                    .callable()
                    .map(|t| {
                        serde_json::json!({
                            "type": "object",
                            "properties": {
                                "name": {"const": t.name},
                                "arguments": t.parameters,
                                "id": {"type": "string", "pattern": "^[a-zA-Z0-9]{9}$"},
                            },
                            "required": ["name", "arguments", "id"],
                        })
                    })
                    .collect();
                let call = any_of(calls);
                let list = match self.parallel {
                    true => "call (\",\" [ \\t\\n]* call)*",
                    false => "call",
                };
                let open = gbnf_literal(MISTRAL_OPEN);
                let lead = if lazy { "" } else { "[ \\t\\n]* " };
                let root =
                    format!("{lead}{open} [ \\t\\n]* \"[\" [ \\t\\n]* {list} [ \\t\\n]* \"]\"");
                convert_framed(&[("root", root)], &[("call".to_string(), &call)])
            }
            ToolFormat::Mistral => {
                let tools: Vec<&super::Tool> = self.callable().collect();
                let values = argument_rules(&tools);
                // `[TOOL_CALLS]NAME`, maybe `[CALL_ID]` and nine letters
                // and digits, `[ARGS]` and the arguments.
                let names: Vec<String> = tools
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        format!(
                            "{} ({} [a-zA-Z0-9]{{9}})? {} args-{i}",
                            gbnf_literal(&t.name),
                            gbnf_literal(MISTRAL_ID),
                            gbnf_literal(MISTRAL_ARGS)
                        )
                    })
                    .collect();
                let call = format!("{} ({})", gbnf_literal(MISTRAL_OPEN), names.join(" | "));
                let calls = match self.parallel {
                    true => format!("({call})+"),
                    false => call,
                };
                let root = match lazy {
                    true => calls,
                    false => format!("[ \\t\\n]* {calls}"),
                };
                convert_framed(&[("root", root)], &values)
            }
            // Realm's generic calls and Hermes' (XML formats were read above).
            _ => {
                let calls: Vec<Value> = self.callable().map(super::Tool::call_schema).collect();
                let call = any_of(calls);
                let block = format!(
                    "{} call {}",
                    gbnf_literal(&format!("{HERMES_OPEN}\n")),
                    gbnf_literal(&format!("\n{HERMES_CLOSE}"))
                );
                let root = self.blocks_root(&block, lazy, self.parallel);
                convert_framed(&[("root", root)], &[("call".to_string(), &call)])
            }
        }
    }

    /// What of a reply's content may stream before it ends: in the generic
    /// format a string response's text so far ([`super::streamed_response`]);
    /// in Hermes the text before a call (not what may be a call's
    /// opening), in Llama 3's the text before any `{`; in harmony all of
    /// it (calls are messages of their own, not content). Each later
    /// prefix's answer extends the earlier one; only the generic format's
    /// is a copy (its escapes decoded).
    pub fn streamable<'c>(&self, content: &'c str) -> Option<Cow<'c, str>> {
        let before = |open: &str| Some(Cow::Borrowed(held_before(content, open).trim()));
        if let Some(m) = self.format.xml() {
            return before(m.open);
        }
        if let Some(m) = self.format.marked() {
            return before(m.open);
        }
        match self.format {
            ToolFormat::Generic => super::streamed_response(content).map(Cow::Owned),
            ToolFormat::Hermes => before(HERMES_OPEN),
            ToolFormat::Harmony => Some(Cow::Borrowed(content)),
            // (Any `{` may open a call.)
            ToolFormat::Llama3 => before("{"),
            ToolFormat::Mistral | ToolFormat::MistralNemo => before(MISTRAL_OPEN),
            _ => None,
        }
    }

    /// Reads a reply in a native format: Hermes' calls out of the content
    /// (`text`, the answer), harmony's out of the whole reply as
    /// generated (`text`, with its markers). A call that does not parse,
    /// or names no tool given, stays in the content (Hermes) or is
    /// dropped (harmony: its message was never content).
    pub fn parse_native(&self, text: &str) -> NativeReply {
        if let Some(m) = self.format.xml() {
            return self.xml(m, text);
        }
        if let Some(m) = self.format.marked() {
            return self.marked(m, text);
        }
        match self.format {
            ToolFormat::Harmony => NativeReply {
                content: String::new(),
                calls: self.harmony_calls(text),
            },
            ToolFormat::Llama3 => self.llama3(text),
            ToolFormat::Mistral | ToolFormat::MistralNemo => self.mistral(text),
            _ => self.hermes(text),
        }
    }

    /// Llama 3's JSON calls: each JSON object of a call in the text
    /// (however it is spaced), the rest content.
    fn llama3(&self, text: &str) -> NativeReply {
        let mut content = String::new();
        let mut calls = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find('{') {
            content.push_str(&rest[..at]);
            let after = &rest[at..];
            let mut values = serde_json::Deserializer::from_str(after).into_iter::<Value>();
            let call = values
                .next()
                .and_then(Result::ok)
                .and_then(|v| self.call_of(&v));
            // A call's text is taken; any other `{` stays.
            let end = match call {
                Some(call) => {
                    calls.push(call);
                    values.byte_offset()
                }
                None => {
                    content.push('{');
                    1
                }
            };
            rest = &after[end..];
        }
        content.push_str(rest);
        NativeReply {
            content: content.trim().to_string(),
            calls,
        }
    }

    /// The root of a grammar of `<tool_call>` blocks (`block`, one or
    /// with parallel calls several): lazy, the blocks; else after
    /// whitespace, and, for templates that think, a think block first or
    /// the rest of one the prompt opened (any text without `</` but its
    /// end, which a call may stand for, as [`Tools::reasoning_ends`]).
    pub(super) fn blocks_root(&self, block: &str, lazy: bool, parallel: bool) -> String {
        let calls = match parallel {
            true => format!("{block} ([ \\t\\n]* {block})*"),
            false => block.to_string(),
        };
        match (lazy, self.thinks) {
            (true, _) => calls,
            (false, false) => format!("[ \\t\\n]* {calls}"),
            (false, true) => {
                format!("(\"<think>\"? ([^<] | \"<\" [^/])* \"</think>\"?)? [ \\t\\n]* {calls}")
            }
        }
    }

    /// Mistral's calls after each `[TOOL_CALLS]`: Nemo's JSON list, or a
    /// name, maybe `[CALL_ID]` and an id, `[ARGS]` and a JSON object.
    fn mistral(&self, text: &str) -> NativeReply {
        let mut content = String::new();
        let mut calls = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(MISTRAL_OPEN) {
            content.push_str(&rest[..at]);
            let after = &rest[at + MISTRAL_OPEN.len()..];
            let (found, used) = match after.trim_start().starts_with('[') {
                true => {
                    let skip = after.len() - after.trim_start().len();
                    let (list, used) = first_json(&after[skip..]);
                    let found: Vec<ToolCall> = list
                        .as_ref()
                        .and_then(Value::as_array)
                        .map(|l| l.iter().filter_map(|c| self.call_of(c)).collect())
                        .unwrap_or_default();
                    (found, skip + used)
                }
                false => {
                    let name_end = after.find(['[', '{']).unwrap_or(after.len());
                    let name = after[..name_end].trim();
                    let args_at = after.find(MISTRAL_ARGS).map(|i| i + MISTRAL_ARGS.len());
                    match args_at {
                        Some(a) if a >= name_end => {
                            let (args, used) = first_json(&after[a..]);
                            let call = args.and_then(|arguments| {
                                self.call_of(
                                    &serde_json::json!({"name": name, "arguments": arguments}),
                                )
                            });
                            (call.into_iter().collect(), a + used)
                        }
                        _ => (Vec::new(), 0),
                    }
                }
            };
            if found.is_empty() {
                content.push_str(MISTRAL_OPEN);
                rest = after;
            } else {
                calls.extend(found);
                rest = &after[used..];
            }
        }
        content.push_str(rest);
        NativeReply {
            content: content.trim().to_string(),
            calls,
        }
    }

    /// Hermes' `<tool_call>` blocks of JSON.
    fn hermes(&self, text: &str) -> NativeReply {
        sections(text, (HERMES_OPEN, HERMES_CLOSE), |body| {
            let v = serde_json::from_str(body.trim()).ok()?;
            self.call_of(&v).map(|c| vec![c])
        })
    }

    /// `{"name": ..., "arguments": {...}}` (or `"parameters"`, as Llama
    /// 3 writes) of a tool given, the arguments an object or a string
    /// holding one.
    fn call_of(&self, v: &Value) -> Option<ToolCall> {
        let name = v.get("name")?.as_str()?;
        self.tools.iter().any(|t| t.name == name).then_some(())?;
        let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
            None | Some(Value::Null) => serde_json::json!({}),
            Some(Value::String(s)) => serde_json::from_str(s).ok()?,
            Some(a) => a.clone(),
        };
        Some(ToolCall {
            name: name.to_string(),
            arguments,
        })
    }

    fn harmony_calls(&self, text: &str) -> Vec<ToolCall> {
        let mut calls = Vec::new();
        let mut rest = text;
        while let Some(at) = rest.find(HARMONY_TO) {
            let after = &rest[at + HARMONY_TO.len()..];
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(after.len());
            let name = &after[..len];
            let Some(open) = after.find(MESSAGE) else {
                break;
            };
            let body = &after[open + MESSAGE.len()..];
            let end = HARMONY_ENDS
                .iter()
                .filter_map(|m| body.find(m))
                .min()
                .unwrap_or(body.len());
            let known = self.tools.iter().any(|t| t.name == name);
            if let (true, Ok(arguments)) = (known, serde_json::from_str(body[..end].trim())) {
                calls.push(ToolCall {
                    name: name.to_string(),
                    arguments,
                });
            }
            rest = &body[end..];
        }
        calls
    }
}

/// Each tool's parameter schema as the rule `args-I` (its place).
pub(super) fn argument_rules<'t>(tools: &[&'t super::Tool]) -> Vec<(String, &'t Value)> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("args-{i}"), &t.parameters))
        .collect()
}

/// A schema of one of `schemas` (the one itself when there is one).
pub(super) fn any_of(schemas: Vec<Value>) -> Value {
    match <[Value; 1]>::try_from(schemas) {
        Ok([one]) => one,
        Err(all) => serde_json::json!({"anyOf": all}),
    }
}

/// The calls of each `open`...`close` section in `text` (to the text's
/// end where one is not closed), each read by `read` (a section that
/// reads as none stays in the content, as it is), and the rest of the
/// text, trimmed.
pub(super) fn sections(
    text: &str,
    (open, close): (&str, &str),
    read: impl Fn(&str) -> Option<Vec<ToolCall>>,
) -> NativeReply {
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(open) {
        content.push_str(&rest[..at]);
        let after = &rest[at + open.len()..];
        let (body, next) = match after.find(close) {
            Some(end) => (&after[..end], &after[end + close.len()..]),
            None => (after, ""),
        };
        match read(body) {
            Some(read) => calls.extend(read),
            None => content.push_str(&rest[at..rest.len() - next.len()]),
        }
        rest = next;
    }
    content.push_str(rest);
    NativeReply {
        content: content.trim().to_string(),
        calls,
    }
}

/// Whether a parameter's schema is of text alone (its value is written as
/// it is in the XML format).
pub(super) fn is_text(schema: &Value) -> bool {
    schema["type"] == "string"
}

/// The JSON value `text` begins with, and the bytes it takes (0 when it
/// begins with none).
fn first_json(text: &str) -> (Option<Value>, usize) {
    let mut values = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    match values.next() {
        Some(Ok(v)) => (Some(v), values.byte_offset()),
        _ => (None, 0),
    }
}

/// `content` before `open`, or all of it but an end that may begin
/// `open`.
fn held_before<'a>(content: &'a str, open: &str) -> &'a str {
    match content.find(open) {
        Some(at) => &content[..at],
        None => {
            let held = (1..open.len())
                .rev()
                .filter(|&k| open.is_char_boundary(k))
                .find(|&k| content.ends_with(&open[..k]))
                .unwrap_or(0);
            &content[..content.len() - held]
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::grammar::Matcher;

    fn tools(choice: Option<Value>, parallel: bool, template: &str) -> Tools {
        let list = json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}},
        ]);
        Tools::from_openai(&list, choice.as_ref(), Some(parallel))
            .unwrap()
            .unwrap()
            .for_template(template)
    }

    fn accepts(g: &Grammar, text: &str) -> bool {
        let mut m = Matcher::new(Arc::new(g.clone()));
        m.accept(text.as_bytes()).is_ok() && m.is_complete()
    }

    #[test]
    fn formats_are_told_from_templates() {
        for (template, format) in [
            ("{{ x }}", ToolFormat::Generic),
            ("<tool_call>\n{{ tool_call.name }}", ToolFormat::Hermes),
            ("<tool_call><function={{ n }}>", ToolFormat::Generic),
            (
                "<tool_call>\n<function={{ n }}>\n<parameter={{ p }}>",
                ToolFormat::XmlParameters,
            ),
            (
                "<|start|>assistant to=functions.{{ n }}<|channel|>",
                ToolFormat::Harmony,
            ),
            (
                "{{ '<|start_header_id|>ipython<|end_header_id|>\n\n' }}",
                ToolFormat::Llama3,
            ),
            ("[TOOL_CALLS]{{ n }}[ARGS]", ToolFormat::Mistral),
            ("[TOOL_CALLS][", ToolFormat::MistralNemo),
        ] {
            assert_eq!(ToolFormat::of_template(template), format, "{template}");
        }
    }

    #[test]
    fn hermes_grammar_holds_calls_lazily_or_throughout() {
        let t = tools(None, false, "<tool_call>");
        let g = t.native_grammar().unwrap();
        let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
        assert!(accepts(&g, call));
        assert!(!accepts(&g, &call.replace("Oslo\"", "Oslo\", \"x\": 1")));
        assert!(!accepts(&g, &call.replace("get_weather", "get_time")));
        assert!(!accepts(&g, &format!("{call}\n{call}")));
        let parallel = tools(None, true, "<tool_call>").native_grammar().unwrap();
        assert!(accepts(&parallel, &format!("{call}\n{call}")));

        let required = tools(Some(json!("required")), false, "<tool_call> <think>");
        assert!(required.triggers().is_empty());
        let g = required.native_grammar().unwrap();
        assert!(accepts(&g, call));
        assert!(accepts(
            &g,
            &format!("<think>\nrain? a<b</think>\n\n{call}")
        ));
        assert!(accepts(&g, &format!("opened before.</think>\n{call}")));
        // A call ends reasoning left open, as the splitter reads it.
        assert!(accepts(&g, &format!("<think>Rain?\n{call}")));
        assert!(!accepts(&g, &format!("a</b {call}")));
        let plain = tools(Some(json!("required")), false, "<tool_call>");
        assert!(!accepts(
            &plain.native_grammar().unwrap(),
            &format!("Sure. {call}")
        ));
    }

    #[test]
    fn harmony_grammar_takes_both_headers() {
        let t = tools(None, false, "<|channel|> to=");
        assert_eq!(t.triggers(), [" to=functions."]);
        let g = t.native_grammar().unwrap();
        for head in [
            " to=functions.get_weather <|constrain|>json<|message|>",
            " to=functions.get_weather<|channel|>commentary json<|message|>",
            " to=functions.get_weather<|message|>",
        ] {
            assert!(
                accepts(&g, &format!("{head}{{\"city\": \"Oslo\"}}")),
                "{head}"
            );
        }
        assert!(!accepts(&g, " to=functions.get_time<|message|>{}"));
        let required = tools(Some(json!("required")), false, "<|channel|> to=");
        let g = required.native_grammar().unwrap();
        let call = "<|channel|>commentary to=functions.now <|constrain|>json<|message|>{}";
        assert!(accepts(&g, call));
        assert!(accepts(
            &g,
            &format!("<|channel|>analysis<|message|>Time? Ask.<|end|><|start|>assistant{call}")
        ));
        assert!(!accepts(&g, "<|channel|>final<|message|>Noon."));
    }

    #[test]
    fn llama3_calls_are_json_with_parameters() {
        let ipython = "<|start_header_id|>ipython<|end_header_id|>";
        let t = tools(None, false, ipython);
        assert_eq!(t.triggers(), ["{\"name\""]);
        let g = t.native_grammar().unwrap();
        let call = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}";
        assert!(accepts(&g, call));
        assert!(!accepts(&g, &call.replace("parameters", "arguments")));
        let required = tools(Some(json!("required")), false, ipython);
        assert!(accepts(
            &required.native_grammar().unwrap(),
            &format!("\n {call}")
        ));

        let pretty = "{\n  \"name\": \"now\",\n  \"parameters\": {}\n}";
        let reply = t.parse_native(&format!("Sure. {call} {{\"name\": 1}} {pretty} {{\"x"));
        assert_eq!(reply.calls.len(), 2);
        assert_eq!(reply.calls[0].arguments, json!({"city": "Oslo"}));
        assert_eq!(reply.calls[1].name, "now");
        assert_eq!(reply.content, "Sure.  {\"name\": 1}  {\"x");
        assert_eq!(t.streamable("Sure. {\"na").as_deref(), Some("Sure."));
    }

    #[test]
    fn xml_parameters_are_text_or_json() {
        let template = "<tool_call>\n<function={{ n }}>\n<parameter={{ p }}>";
        let t = super::super::testing::weather_tools(template, false);
        assert_eq!(t.format(), ToolFormat::XmlParameters);
        assert_eq!(t.triggers(), ["<tool_call>"]);
        let g = t.native_grammar().unwrap();
        let call = "<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Jos\u{e9}, CA\n</parameter>\n\
                    <parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";
        assert!(accepts(&g, call));
        assert!(accepts(
            &g,
            &call.replace("<parameter=days>\n3\n</parameter>\n", "")
        ));
        assert!(!accepts(&g, &call.replace("\n3\n", "\nthree\n")));
        assert!(!accepts(
            &g,
            &call.replace("<parameter=city>\nSan Jos\u{e9}, CA\n</parameter>\n", "")
        ));
        assert!(accepts(
            &g,
            "<tool_call>\n<function=now>\n</function>\n</tool_call>"
        ));

        let reply = t.parse_native(&format!("Looking.\n\n{call}"));
        assert_eq!(reply.content, "Looking.");
        assert_eq!(
            reply.calls[0].arguments,
            json!({"city": "San Jos\u{e9}, CA", "days": 3})
        );
        let multi = t.parse_native(
            "<tool_call>\n<function=get_weather>\n<parameter=city>\na\nb\n</parameter>\n\
             </function>\n</tool_call><tool_call>\n<function=nope>\n</function>\n</tool_call>",
        );
        assert_eq!(multi.calls[0].arguments, json!({"city": "a\nb"}));
        assert_eq!(
            multi.content,
            "<tool_call>\n<function=nope>\n</function>\n</tool_call>"
        );
    }

    #[test]
    fn mistral_calls_in_both_forms() {
        let t = tools(None, true, "[TOOL_CALLS]{{ n }}[ARGS]");
        assert_eq!(t.format(), ToolFormat::Mistral);
        assert_eq!(t.triggers(), ["[TOOL_CALLS]"]);
        assert_eq!(
            t.preserved_tokens(),
            ["[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"]
        );
        let g = t.native_grammar().unwrap();
        let one = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Oslo\"}";
        let two = format!("{one}[TOOL_CALLS]now[CALL_ID]a1b2c3d4e[ARGS]{{}}");
        assert!(accepts(&g, one));
        assert!(accepts(&g, &two));
        assert!(!accepts(&g, "[TOOL_CALLS]now[CALL_ID]short[ARGS]{}"));
        let reply = t.parse_native(&format!("Sure. {two}"));
        assert_eq!(reply.content, "Sure.");
        assert_eq!(reply.calls.len(), 2);
        assert_eq!(reply.calls[1].name, "now");
        assert_eq!(t.streamable("Sure. [TOOL_").as_deref(), Some("Sure."));
        let bad = t.parse_native("[TOOL_CALLS]nope[ARGS]{}");
        assert_eq!(
            (bad.calls.len(), bad.content.as_str()),
            (0, "[TOOL_CALLS]nope[ARGS]{}")
        );

        let nemo = tools(None, true, "[TOOL_CALLS][");
        assert_eq!(nemo.format(), ToolFormat::MistralNemo);
        assert!(nemo.format().short_ids());
        let g = nemo.native_grammar().unwrap();
        let call = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}, \
                    \"id\": \"abcdefghi\"}]";
        assert!(accepts(&g, call));
        assert!(!accepts(&g, &call.replace("abcdefghi", "abc")));
        let reply = nemo.parse_native(call);
        assert_eq!(reply.calls[0].arguments, json!({"city": "Oslo"}));
        assert_eq!(reply.content, "");
    }

    #[test]
    fn replies_are_read_in_each_format() {
        let h = tools(None, true, "<tool_call>");
        let reply = h.parse_native(
            "Checking.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"now\", \"arguments\": \"{}\"}\n</tool_call>\n\
             <tool_call>\n{\"name\": \"nope\"}\n</tool_call>",
        );
        assert_eq!(reply.calls.len(), 2);
        assert_eq!(reply.calls[0].arguments, json!({"city": "Oslo"}));
        assert_eq!(reply.calls[1].arguments, json!({}));
        assert_eq!(
            reply.content,
            "Checking.\n\n\n<tool_call>\n{\"name\": \"nope\"}\n</tool_call>"
        );
        assert_eq!(
            h.streamable("Checking.\n<tool_").as_deref(),
            Some("Checking.")
        );
        assert_eq!(h.streamable("a <tool_call>\n{").as_deref(), Some("a"));

        let g = tools(None, false, "<|channel|> to=");
        let reply = g.parse_native(
            "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary \
             to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Lima\"}",
        );
        assert_eq!(reply.calls.len(), 1);
        assert_eq!(reply.calls[0].name, "get_weather");
        assert_eq!(reply.calls[0].arguments, json!({"city": "Lima"}));
        let other = g.parse_native(
            "<|start|>assistant to=functions.now<|channel|>commentary json<|message|>{}<|call|>",
        );
        assert_eq!(other.calls[0].name, "now");
    }
}
