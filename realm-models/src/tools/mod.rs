//! Tool calling ("function calling"): the model is told which tools it may
//! call and answers with one JSON object, a call or a reply:
//!
//! ```text
//! {"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}
//! {"response": "It is sunny in Paris."}
//! ```
//!
//! A grammar built from the tools' parameter schemas holds sampling to
//! that shape, so what comes back always parses, and a call names a tool
//! that exists with arguments its schema allows. The format asks nothing
//! of the chat template, so it works with any model; it is the shape
//! llama.cpp's server uses for templates with no tool format of their own.
//! A conversation's earlier calls and the tools' results go back to the
//! model in the same JSON ([`calls_text`], [`result_text`]).
//!
//! Models trained on a tool format of their own (Qwen's `<tool_call>`,
//! gpt-oss's harmony, Llama 3's, Mistral's) do better in it:
//! [`Tools::for_template`] reads the format off the chat template
//! ([`ToolFormat`]), and the grammar, its triggers (a lazy grammar: free
//! text until a call opens), the markers to keep in the text and the
//! reading of replies follow it; the template itself is then given the
//! tools and the earlier calls.
//!
//! ```
//! use realm_models::tools::{ToolReply, Tools};
//! use serde_json::json;
//! let tools = json!([{"type": "function", "function": {
//!     "name": "get_weather",
//!     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
//!                    "required": ["city"]}}}]);
//! let tools = Tools::from_openai(&tools, None, None)?.expect("tools were given");
//! let grammar = tools.grammar(None)?; // hand to GenerateParams::grammar
//! # let _ = grammar;
//! let reply = tools.parse(r#"{"tool_call": {"name": "get_weather", "arguments": {"city": "Paris"}}}"#)?;
//! let ToolReply::Calls(calls) = reply else { panic!() };
//! assert_eq!(calls[0].arguments, json!({"city": "Paris"}));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde_json::{json, Map, Value};

use crate::grammar::{Grammar, GrammarError};

mod marked;
mod native;
mod partial;
mod xml;

/// What the formats' tests share: tools, and whether a native grammar
/// takes a text whole.
#[cfg(test)]
mod testing {
    use std::sync::Arc;

    use serde_json::json;

    use super::Tools;
    use crate::grammar::Matcher;

    /// `get_weather` (a text `city`, required, and an integer `days`) and
    /// `now`, in `template`'s format.
    pub(super) fn weather_tools(template: &str, parallel: bool) -> Tools {
        let list = json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"},
                                                 "days": {"type": "integer"}},
                "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}},
        ]);
        Tools::from_openai(&list, None, Some(parallel))
            .unwrap()
            .unwrap()
            .for_template(template)
    }

    /// Whether `t`'s native grammar takes `text` whole.
    pub(super) fn accepts(t: &Tools, text: &str) -> bool {
        let mut m = Matcher::new(Arc::new(t.native_grammar().unwrap()));
        m.accept(text.as_bytes()).is_ok() && m.is_complete()
    }
}

pub use native::{NativeReply, ToolFormat};
pub use partial::CallPrefix;

/// What is wrong with tools, a tool choice, or a model's reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ToolError {
    /// A tool definition is malformed, or its parameter schema cannot be
    /// turned into a grammar.
    #[error("tools[{index}]: {message}")]
    BadTool {
        /// The tool's place in the list.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The tool choice is malformed or names no given tool.
    #[error("tool_choice: {0}")]
    BadChoice(String),
    /// A reply is neither a tool call nor a response.
    #[error("the reply is not a tool call or a response: {0}")]
    BadReply(String),
}

/// One tool: a function the model may ask the caller to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// The function's name (letters, digits, `_` and `-`; at most 64).
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// A JSON schema of its arguments (an object).
    pub parameters: Value,
}

impl Tool {
    /// A tool from OpenAI's `{"type": "function", "function": {"name",
    /// "description", "parameters"}}`; absent parameters take none.
    pub fn from_openai(v: &Value) -> Result<Self, String> {
        match v.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(t) => {
                return Err(format!(
                    "tools of type `{t}` are not supported (only function)"
                ))
            }
            None => return Err("a tool needs `type: \"function\"`".into()),
        }
        let f = v
            .get("function")
            .and_then(Value::as_object)
            .ok_or("a tool needs a `function` object")?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a function needs a `name`")?;
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if name.is_empty() || name.len() > 64 || !name.chars().all(valid) {
            return Err(format!(
                "function name `{name}`: 1 to 64 letters, digits, `_` or `-`"
            ));
        }
        let description = match f.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(d)) => Some(d.clone()),
            Some(_) => return Err("a function's `description` is a string".into()),
        };
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err("a function's `parameters` is a JSON schema object".into()),
        };
        Ok(Self {
            name: name.to_string(),
            description,
            parameters,
        })
    }

    /// The schema of a call of this tool.
    fn call_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"const": self.name},
                "arguments": self.parameters,
            },
            "required": ["name", "arguments"],
        })
    }
}

/// Which replies the model may give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// A call or a response, as the model sees fit.
    Auto,
    /// A call of some tool.
    Required,
    /// A call of this tool.
    Function(String),
}

/// A model's call of a tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The tool's name.
    pub name: String,
    /// Its arguments (a JSON object, as the tool's schema has it).
    pub arguments: Value,
}

/// What a model answered.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolReply {
    /// One call, or several with parallel calls allowed.
    Calls(Vec<ToolCall>),
    /// A reply to the user: a string, or JSON of the response schema.
    Response(Value),
}

/// The tools of a request, which of them the model may call, and whether
/// it may call several at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    tools: Vec<Tool>,
    choice: ToolChoice,
    parallel: bool,
    /// How calls are written ([`Tools::for_template`]).
    format: ToolFormat,
    /// Whether the template writes think blocks (a required call may
    /// follow one).
    thinks: bool,
}

impl Tools {
    /// Tools with a choice; checks that there are some, that names are
    /// distinct, that a chosen function is among them, and that every
    /// parameter schema can constrain generation.
    pub fn new(tools: Vec<Tool>, choice: ToolChoice, parallel: bool) -> Result<Self, ToolError> {
        if tools.is_empty() {
            return Err(ToolError::BadChoice("there are no tools to call".into()));
        }
        for (index, t) in tools.iter().enumerate() {
            let bad = |message| ToolError::BadTool { index, message };
            if tools[..index].iter().any(|u| u.name == t.name) {
                return Err(bad(format!("a second tool named `{}`", t.name)));
            }
            Grammar::from_json_schema(&t.parameters)
                .map_err(|e| bad(format!("parameters of `{}`: {e}", t.name)))?;
        }
        if let ToolChoice::Function(name) = &choice {
            if !tools.iter().any(|t| &t.name == name) {
                return Err(ToolError::BadChoice(format!("no tool is named `{name}`")));
            }
        }
        Ok(Self {
            tools,
            choice,
            parallel,
            format: ToolFormat::Generic,
            thinks: false,
        })
    }

    /// Tools from an OpenAI request's `tools`, `tool_choice` (`"auto"`,
    /// the default; `"required"`; `"none"`; or `{"type": "function",
    /// "function": {"name"}}`) and `parallel_tool_calls` (default false,
    /// as llama.cpp's server). `None` when there is nothing to call: no
    /// tools, an empty list, or the choice `"none"`.
    pub fn from_openai(
        tools: &Value,
        choice: Option<&Value>,
        parallel: Option<bool>,
    ) -> Result<Option<Self>, ToolError> {
        let list = match tools {
            Value::Null => return Ok(None),
            Value::Array(list) => list,
            _ => {
                return Err(ToolError::BadTool {
                    index: 0,
                    message: "tools is a list".into(),
                })
            }
        };
        let choice = match choice {
            None | Some(Value::Null) => ToolChoice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                "none" => return Ok(None),
                other => {
                    return Err(ToolError::BadChoice(format!(
                        "`{other}` is not auto, required, none or a function"
                    )))
                }
            },
            Some(v) => {
                let name = v
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"));
                match name {
                    Some(n) => ToolChoice::Function(n.to_string()),
                    None => {
                        return Err(ToolError::BadChoice(
                            "an object choice is {\"type\": \"function\", \"function\": {\"name\": ...}}"
                                .into(),
                        ))
                    }
                }
            }
        };
        if list.is_empty() {
            return match choice {
                ToolChoice::Auto => Ok(None),
                _ => Err(ToolError::BadChoice("there are no tools to call".into())),
            };
        }
        let tools = list
            .iter()
            .enumerate()
            .map(|(index, t)| {
                Tool::from_openai(t).map_err(|message| ToolError::BadTool { index, message })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(tools, choice, parallel.unwrap_or(false)).map(Some)
    }

    /// The tools.
    pub fn tools(&self) -> &[Tool] {
        &self.tools
    }

    /// The choice.
    pub fn choice(&self) -> &ToolChoice {
        &self.choice
    }

    /// The tools the model may call under the choice.
    fn callable(&self) -> impl Iterator<Item = &Tool> {
        self.tools.iter().filter(|t| match &self.choice {
            ToolChoice::Function(name) => &t.name == name,
            _ => true,
        })
    }

    /// What the model is told, for the system prompt: the tools (name,
    /// description, parameters, as JSON) and the replies it may give.
    pub fn instructions(&self) -> String {
        let list: Vec<Value> = self
            .callable()
            .map(|t| {
                let mut o = Map::new();
                o.insert("name".into(), json!(t.name));
                if let Some(d) = &t.description {
                    o.insert("description".into(), json!(d));
                }
                o.insert("parameters".into(), t.parameters.clone());
                Value::Object(o)
            })
            .collect();
        let list = serde_json::to_string_pretty(&list).unwrap_or_default();
        let call = if self.parallel {
            r#"{"tool_calls": [{"name": "<tool name>", "arguments": {...}}, ...]}"#
        } else {
            r#"{"tool_call": {"name": "<tool name>", "arguments": {...}}}"#
        };
        let mut text = format!("These tools are available to you:\n{list}\n\n");
        if self.choice == ToolChoice::Auto {
            text.push_str(&format!(
                "Reply with a single JSON object. To call a tool, write {call}; \
                 the result will come back to you. To answer the user directly, \
                 write {{\"response\": \"<your answer>\"}}."
            ));
        } else {
            text.push_str(&format!(
                "Reply with a single JSON object that calls a tool: {call}."
            ));
        }
        text
    }

    /// The JSON schema of the replies allowed; `response` is the schema of
    /// a direct answer (a string by default).
    pub fn schema(&self, response: Option<&Value>) -> Value {
        let calls: Vec<Value> = self.callable().map(Tool::call_schema).collect();
        let one = native::any_of(calls);
        let call = if self.parallel {
            json!({
                "type": "object",
                "properties": {"tool_calls": {"type": "array", "items": one, "minItems": 1}},
                "required": ["tool_calls"],
            })
        } else {
            json!({
                "type": "object",
                "properties": {"tool_call": one},
                "required": ["tool_call"],
            })
        };
        if self.choice != ToolChoice::Auto {
            return call;
        }
        let response = response.cloned().unwrap_or(json!({"type": "string"}));
        json!({"anyOf": [call, {
            "type": "object",
            "properties": {"response": response},
            "required": ["response"],
        }]})
    }

    /// The grammar of [`Tools::schema`]; in a native format
    /// ([`Tools::for_template`]), of the calls as the model writes them
    /// (`response` is the generic format's alone).
    pub fn grammar(&self, response: Option<&Value>) -> Result<Grammar, GrammarError> {
        match self.format {
            ToolFormat::Generic => Grammar::from_json_schema(&self.schema(response)),
            _ => self.native_grammar(),
        }
    }

    /// Reads a reply: calls (of tools that exist) or a response.
    pub fn parse(&self, text: &str) -> Result<ToolReply, ToolError> {
        let bad = |m: String| ToolError::BadReply(m);
        let v: Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let call = |c: &Value| -> Result<ToolCall, ToolError> {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("a call without a name".into()))?;
            if !self.tools.iter().any(|t| t.name == name) {
                return Err(bad(format!("no tool is named `{name}`")));
            }
            let arguments = c.get("arguments").cloned().unwrap_or(json!({}));
            Ok(ToolCall {
                name: name.to_string(),
                arguments,
            })
        };
        if let Some(c) = v.get("tool_call") {
            return Ok(ToolReply::Calls(vec![call(c)?]));
        }
        if let Some(cs) = v.get("tool_calls") {
            let cs = cs
                .as_array()
                .filter(|cs| !cs.is_empty())
                .ok_or_else(|| bad("tool_calls is not a list of calls".into()))?;
            return cs
                .iter()
                .map(call)
                .collect::<Result<_, _>>()
                .map(ToolReply::Calls);
        }
        match v.get("response") {
            Some(r) => Ok(ToolReply::Response(r.clone())),
            None => Err(bad("neither tool_call, tool_calls nor response".into())),
        }
    }
}

/// An assistant turn's earlier calls, as the model would have written
/// them.
///
/// ```
/// use realm_models::tools::{calls_text, ToolCall};
/// let call = ToolCall { name: "f".into(), arguments: serde_json::json!({"x": 1}) };
/// assert_eq!(calls_text(&[call]), r#"{"tool_call":{"name":"f","arguments":{"x":1}}}"#);
/// ```
pub fn calls_text(calls: &[ToolCall]) -> String {
    let call = |c: &ToolCall| json!({"name": c.name, "arguments": c.arguments});
    match calls {
        [c] => json!({ "tool_call": call(c) }).to_string(),
        cs => json!({ "tool_calls": cs.iter().map(call).collect::<Vec<_>>() }).to_string(),
    }
}

/// A tool's result, for the turn that hands it back: `content` goes in as
/// JSON when it is JSON, else as a string.
///
/// ```
/// use realm_models::tools::result_text;
/// assert_eq!(result_text(Some("f"), "{\"t\": 21}"),
///            r#"{"tool_response":{"name":"f","content":{"t":21}}}"#);
/// ```
pub fn result_text(name: Option<&str>, content: &str) -> String {
    let content = serde_json::from_str::<Value>(content).unwrap_or_else(|_| json!(content));
    let mut r = Map::new();
    if let Some(n) = name {
        r.insert("name".into(), json!(n));
    }
    r.insert("content".into(), content);
    json!({ "tool_response": r }).to_string()
}

/// JSON's whitespace.
const WS: [char; 4] = [' ', '\t', '\n', '\r'];

/// The text of a string response decoded as far as `text` (a reply being
/// generated) goes: `None` until the reply is known to be
/// `{"response": "...`, then the characters so far, an unfinished escape
/// left out. Each later prefix's answer extends the earlier one, which is
/// what streaming needs.
///
/// ```
/// use realm_models::tools::streamed_response;
/// assert_eq!(streamed_response(r#"{"resp"#), None);
/// assert_eq!(streamed_response(r#"{"response": "Hi\n\u00e9 th"#).as_deref(), Some("Hi\né th"));
/// assert_eq!(streamed_response(r#"{"response": "a\u00"#).as_deref(), Some("a"));
/// ```
pub fn streamed_response(text: &str) -> Option<String> {
    let rest = text.trim_start_matches(WS).strip_prefix('{')?;
    let rest = rest.trim_start_matches(WS).strip_prefix("\"response\"")?;
    let rest = rest.trim_start_matches(WS).strip_prefix(':')?;
    let mut rest = rest.trim_start_matches(WS).strip_prefix('"')?;
    let mut out = String::new();
    loop {
        let Some(i) = rest.find(['"', '\\']) else {
            out.push_str(rest);
            return Some(out);
        };
        out.push_str(&rest[..i]);
        if rest[i..].starts_with('"') {
            return Some(out);
        }
        let Some((c, len)) = escape(&rest[i + 1..]) else {
            return Some(out);
        };
        out.push(c);
        rest = &rest[i + 1 + len..];
    }
}

/// The character of a JSON escape (after its backslash) and the bytes it
/// takes; `None` if unfinished or malformed.
fn escape(s: &str) -> Option<(char, usize)> {
    let c = match s.as_bytes().first()? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let hex = |s: &str| u32::from_str_radix(s.get(..4)?, 16).ok();
            let hi = hex(&s[1..])?;
            if !(0xd800..0xdc00).contains(&hi) {
                return char::from_u32(hi).map(|c| (c, 5));
            }
            let lo = hex(s.get(5..)?.strip_prefix("\\u")?)?;
            if !(0xdc00..0xe000).contains(&lo) {
                return None;
            }
            let c = char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00))?;
            return Some((c, 11));
        }
        _ => return None,
    };
    Some((c, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grammar::Matcher;
    use std::sync::Arc;

    fn weather() -> Value {
        json!({"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather in a city now.",
            "parameters": {"type": "object",
                           "properties": {"city": {"type": "string"},
                                          "unit": {"enum": ["C", "F"]}},
                           "required": ["city"]}}})
    }

    fn time() -> Value {
        json!({"type": "function", "function": {"name": "get_time"}})
    }

    fn matches(g: &Grammar, text: &str) -> bool {
        let mut m = Matcher::new(Arc::new(g.clone()));
        m.accept(text.as_bytes()).is_ok() && m.is_complete()
    }

    #[test]
    fn choices_shape_the_grammar() {
        let list = json!([weather(), time()]);
        let call =
            r#"{"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}}"#;
        let other = r#"{"tool_call": {"name": "get_time", "arguments": {}}}"#;
        let response = r#"{"response": "Hello."}"#;

        let auto = Tools::from_openai(&list, None, None).unwrap().unwrap();
        let g = auto.grammar(None).unwrap();
        assert!(matches(&g, call) && matches(&g, other) && matches(&g, response));
        for wrong in [
            r#"{"tool_call": {"name": "get_wether", "arguments": {"city": "Oslo"}}}"#,
            r#"{"tool_call": {"name": "get_weather", "arguments": {"unit": "C"}}}"#,
            r#"{"tool_call": {"name": "get_weather", "arguments": {"city": 3}}}"#,
            r#"{"answer": "x"}"#,
        ] {
            assert!(!matches(&g, wrong), "{wrong}");
        }

        let required = Tools::from_openai(&list, Some(&json!("required")), None)
            .unwrap()
            .unwrap();
        let g = required.grammar(None).unwrap();
        assert!(matches(&g, call) && matches(&g, other) && !matches(&g, response));

        let named = json!({"type": "function", "function": {"name": "get_time"}});
        let one = Tools::from_openai(&list, Some(&named), None)
            .unwrap()
            .unwrap();
        let g = one.grammar(None).unwrap();
        assert!(matches(&g, other) && !matches(&g, call) && !matches(&g, response));
        assert!(!one.instructions().contains("get_weather"));

        let parallel = Tools::from_openai(&list, None, Some(true))
            .unwrap()
            .unwrap();
        let g = parallel.grammar(None).unwrap();
        let both = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}},
            {"name": "get_time", "arguments": {}}]}"#;
        assert!(matches(&g, both) && matches(&g, response), "{both}");
        assert!(!matches(&g, call));

        // A response of a schema, with tools.
        let schema =
            json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
        let g = auto.grammar(Some(&schema)).unwrap();
        assert!(matches(&g, r#"{"response": {"n": 4}}"#) && !matches(&g, response));
    }

    #[test]
    fn none_and_empty_mean_no_tools_and_bad_input_is_named() {
        let list = json!([weather()]);
        assert_eq!(Tools::from_openai(&Value::Null, None, None), Ok(None));
        assert_eq!(Tools::from_openai(&json!([]), None, None), Ok(None));
        assert_eq!(
            Tools::from_openai(&list, Some(&json!("none")), None),
            Ok(None)
        );
        let err = |tools: Value, choice: Option<Value>| {
            Tools::from_openai(&tools, choice.as_ref(), None)
                .unwrap_err()
                .to_string()
        };
        assert!(err(json!([]), Some(json!("required"))).contains("no tools"));
        assert!(err(list.clone(), Some(json!("always"))).contains("always"));
        let named = json!({"type": "function", "function": {"name": "nope"}});
        assert!(err(list.clone(), Some(named)).contains("nope"));
        assert!(err(json!({"a": 1}), None).contains("list"));
        assert!(err(json!([weather(), weather()]), None).starts_with("tools[1]: a second"));
        assert!(err(json!([{"type": "retrieval"}]), None).contains("retrieval"));
        assert!(err(
            json!([{"type": "function", "function": {"name": "a b"}}]),
            None
        )
        .contains("a b"));
        let bad_schema = json!([{"type": "function", "function": {
            "name": "f", "parameters": {"$ref": "#/nowhere"}}}]);
        assert!(err(bad_schema, None).starts_with("tools[0]: parameters of `f`"));
    }

    #[test]
    fn replies_parse_and_round_trip() {
        let tools = Tools::from_openai(&json!([weather(), time()]), None, Some(true))
            .unwrap()
            .unwrap();
        let calls = vec![
            ToolCall {
                name: "get_weather".into(),
                arguments: json!({"city": "Lima"}),
            },
            ToolCall {
                name: "get_time".into(),
                arguments: json!({}),
            },
        ];
        // The text of earlier calls is what the grammars allow.
        let single = Tools::new(tools.tools().to_vec(), ToolChoice::Auto, false).unwrap();
        let one = calls_text(&calls[..1]);
        assert!(matches(&single.grammar(None).unwrap(), &one));
        assert_eq!(
            single.parse(&one),
            Ok(ToolReply::Calls(calls[..1].to_vec()))
        );
        let two = calls_text(&calls);
        assert!(matches(&tools.grammar(None).unwrap(), &two));
        assert_eq!(tools.parse(&two), Ok(ToolReply::Calls(calls.clone())));
        assert_eq!(
            tools.parse(r#" {"response": "a\"b"} "#),
            Ok(ToolReply::Response(json!("a\"b")))
        );
        for bad in [
            "",
            "{\"response\": ",
            r#"{"tool_call": {"name": "rm", "arguments": {}}}"#,
            r#"{"tool_calls": []}"#,
            r#"{"other": 1}"#,
        ] {
            assert!(
                matches!(tools.parse(bad), Err(ToolError::BadReply(_))),
                "{bad}"
            );
        }
        assert_eq!(
            result_text(None, "plain words"),
            r#"{"tool_response":{"content":"plain words"}}"#
        );
    }

    #[test]
    fn streamed_responses_grow_with_the_text() {
        let full = "{\n  \"response\" : \"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ end\"}";
        let want = "café 😀 \"q\" \\ end";
        let mut last = String::new();
        for i in 0..=full.len() {
            if !full.is_char_boundary(i) {
                continue;
            }
            match streamed_response(&full[..i]) {
                None => assert!(i <= full.find(": \"").unwrap() + 2, "{i}"),
                Some(s) => {
                    assert!(s.starts_with(&last) && want.starts_with(&s), "{s:?}");
                    last = s;
                }
            }
        }
        assert_eq!(last, want);
        assert_eq!(streamed_response(r#"{"tool_call": {"#), None);
        assert_eq!(streamed_response(r#"{"response": {"n": 1}}"#), None);
    }

    /// `text` with every non-ASCII character written as `\u` escapes
    /// (UTF-16 units, so surrogate pairs above the BMP).
    fn ascii_escaped(text: &str) -> String {
        let mut out = String::new();
        for c in text.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
        out
    }

    proptest::proptest! {
        /// Whatever the string and however it is written, every prefix of
        /// a response decodes to a prefix of the string, growing, and the
        /// whole to the string.
        #[test]
        fn streamed_responses_are_growing_prefixes(
            s in ".{0,40}",
            pretty: bool,
            ascii: bool,
        ) {
            let v = json!({"response": s});
            let mut text = if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                v.to_string()
            };
            if ascii {
                text = ascii_escaped(&text);
            }
            let mut last = String::new();
            for i in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
                if let Some(p) = streamed_response(&text[..i]) {
                    proptest::prop_assert!(p.starts_with(&last) && s.starts_with(&p));
                    last = p;
                }
            }
            proptest::prop_assert_eq!(last, s);
        }
    }
}
