//! The tool formats whose calls are XML elements, a parameter an element
//! of its own: Qwen 3 Coder's `<function=NAME>` with `<parameter=P>`
//! elements, GLM-4.5's and GLM-4.7's name after `<tool_call>` with
//! `<arg_key>`/`<arg_value>` pairs, MiniMax-M2's `<invoke name="NAME">`
//! with `<parameter name="P">` elements. One [`XmlMarkup`] a format gives
//! its grammar (calls as its templates write them), its reading (any
//! whitespace between tags) and its calls as JSON as they are written.
//!
//! A text parameter's (a `string` schema's) value is the text as it is
//! (Qwen's without the line breaks around it); any other value is JSON of
//! its schema, read as text where it is no JSON.

use std::borrow::Cow;

use serde_json::Value;

use super::native::{is_text, sections, NativeReply};
use super::partial::CallPrefix;
use super::{Tool, ToolCall, Tools};
use crate::grammar::{convert_framed, gbnf_literal, Grammar, GrammarError};

/// The markup of an XML tool format: its tags, and what its templates
/// write between them (a line break or nothing), which the grammar writes
/// and reading does without.
#[derive(Debug)]
pub(super) struct XmlMarkup {
    /// Opens a block of calls.
    pub(super) open: &'static str,
    /// Closes a block of calls.
    pub(super) close: &'static str,
    /// Comes before a call's name.
    name_open: &'static str,
    /// Comes after a call's name; empty where the name ends at the line
    /// break or tag after it (GLM's).
    name_close: &'static str,
    /// Closes a call; empty where the block's close does (GLM's).
    call_close: &'static str,
    /// Comes before a parameter's name.
    key_open: &'static str,
    /// Comes after a parameter's name.
    key_close: &'static str,
    /// Opens a parameter's value (empty for none).
    value_open: &'static str,
    /// Closes a parameter's value.
    value_close: &'static str,
    /// What the templates write between elements.
    nl: &'static str,
    /// Whether a text value stands between line breaks (Qwen's), which
    /// reading drops.
    padded: bool,
    /// Whether one block holds all of a reply's calls (MiniMax's), not one
    /// call.
    many: bool,
    /// The special tokens the format's markup is made of.
    pub(super) preserved: &'static [&'static str],
}

/// Qwen 3 Coder's, Qwen 3.5's, Nemotron 3 Nano's:
/// `<tool_call>\n<function=NAME>\n<parameter=P>\nVALUE\n</parameter>\n</function>\n</tool_call>`.
pub(super) const QWEN: XmlMarkup = XmlMarkup {
    open: "<tool_call>",
    close: "</tool_call>",
    name_open: "<function=",
    name_close: ">",
    call_close: "</function>",
    key_open: "<parameter=",
    key_close: ">",
    value_open: "",
    value_close: "</parameter>",
    nl: "\n",
    padded: true,
    many: false,
    preserved: &["<tool_call>", "</tool_call>"],
};

/// GLM-4.5's and GLM-4.6's:
/// `<tool_call>NAME\n<arg_key>P</arg_key>\n<arg_value>VALUE</arg_value>\n</tool_call>`.
pub(super) const GLM45: XmlMarkup = XmlMarkup {
    open: "<tool_call>",
    close: "</tool_call>",
    name_open: "",
    name_close: "",
    call_close: "",
    key_open: "<arg_key>",
    key_close: "</arg_key>",
    value_open: "<arg_value>",
    value_close: "</arg_value>",
    nl: "\n",
    padded: false,
    many: false,
    preserved: &[
        "<tool_call>",
        "</tool_call>",
        "<arg_key>",
        "</arg_key>",
        "<arg_value>",
        "</arg_value>",
    ],
};

/// GLM-4.7's: GLM-4.5's without line breaks.
pub(super) const GLM47: XmlMarkup = XmlMarkup { nl: "", ..GLM45 };

/// MiniMax-M2's, all of a reply's calls in one block:
/// `<minimax:tool_call>\n<invoke name="NAME">\n<parameter name="P">VALUE</parameter>\n</invoke>\n</minimax:tool_call>`.
pub(super) const MINIMAX: XmlMarkup = XmlMarkup {
    open: "<minimax:tool_call>",
    close: "</minimax:tool_call>",
    name_open: "<invoke name=\"",
    name_close: "\">",
    call_close: "</invoke>",
    key_open: "<parameter name=\"",
    key_close: "\">",
    value_open: "",
    value_close: "</parameter>",
    nl: "\n",
    padded: false,
    many: true,
    preserved: &["<minimax:tool_call>", "</minimax:tool_call>"],
};

impl XmlMarkup {
    /// What ends a call: its close, or the block's.
    fn call_end(&self) -> &'static str {
        match self.call_close {
            "" => self.close,
            c => c,
        }
    }

    /// Where the name at the start of `s` ends, if it is complete: at the
    /// name's close, or (without one) at the line break or tag after it.
    fn name_end(&self, s: &str) -> Option<usize> {
        match self.name_close {
            "" => s.find(['\n', '<']),
            c => s.find(c),
        }
    }
}

impl Tools {
    /// The grammar of calls in XML format `m`: each tool's parameters in
    /// its schema's order (the required ones required), a text parameter's
    /// value any text without `</`, another's JSON of its schema; blocks
    /// of one call (several where calls may be parallel), or MiniMax's one
    /// block of calls.
    pub(super) fn xml_grammar(&self, m: &XmlMarkup, lazy: bool) -> Result<Grammar, GrammarError> {
        let tools: Vec<&Tool> = self.callable().collect();
        let mut values: Vec<(String, &Value)> = Vec::new();
        let mut calls = Vec::new();
        let nl = m.nl;
        for (i, t) in tools.iter().enumerate() {
            let required: Vec<&str> = t.parameters["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut params = String::new();
            if let Some(props) = t.parameters["properties"].as_object() {
                for (j, (name, schema)) in props.iter().enumerate() {
                    let value = if is_text(schema) {
                        "xml-text".to_string()
                    } else {
                        let rule = format!("param-{i}-{j}");
                        values.push((rule.clone(), schema));
                        rule
                    };
                    let before_value = match m.padded || !m.value_open.is_empty() {
                        true => nl,
                        false => "",
                    };
                    let pad = if m.padded { nl } else { "" };
                    let element = format!(
                        "{} {value} {}",
                        gbnf_literal(&format!(
                            "{}{name}{}{before_value}{}",
                            m.key_open, m.key_close, m.value_open
                        )),
                        gbnf_literal(&format!("{pad}{}{nl}", m.value_close))
                    );
                    match required.contains(&name.as_str()) {
                        true => params.push_str(&format!(" {element}")),
                        false => params.push_str(&format!(" ({element})?")),
                    }
                }
            }
            let end = match m.call_close {
                "" => String::new(),
                c => gbnf_literal(&format!("{c}{nl}")),
            };
            calls.push(format!(
                "{}{params} {end}",
                gbnf_literal(&format!("{}{}{}{nl}", m.name_open, t.name, m.name_close))
            ));
        }
        let call = format!("({})", calls.join(" | "));
        let after_open = if m.name_open.is_empty() { "" } else { nl };
        let open = gbnf_literal(&format!("{}{after_open}", m.open));
        let close = gbnf_literal(m.close);
        let root = match (m.many, self.parallel) {
            (true, true) => {
                let calls = format!("{open} {call}+ {close}");
                self.blocks_root(&calls, lazy, false)
            }
            _ => self.blocks_root(&format!("{open} {call} {close}"), lazy, self.parallel),
        };
        let text = "([^<] | \"<\" [^/])*".to_string();
        convert_framed(&[("root", root), ("xml-text", text)], &values)
    }

    /// Reads XML calls: each block's calls of tools given, their
    /// parameters' values read by their schemas; a block with a call
    /// that does not read, or of a tool not given, stays in the content.
    pub(super) fn xml(&self, m: &XmlMarkup, text: &str) -> NativeReply {
        sections(text, (m.open, m.close), |body| self.xml_block(m, body))
    }

    /// The calls of a block's `body` (none where one does not read).
    fn xml_block(&self, m: &XmlMarkup, body: &str) -> Option<Vec<ToolCall>> {
        let mut calls = Vec::new();
        let mut rest = body;
        loop {
            let s = match m.name_open {
                "" => rest.trim_start(),
                o => match rest.find(o) {
                    Some(at) => &rest[at + o.len()..],
                    None if calls.is_empty() => return None,
                    None => return Some(calls),
                },
            };
            let name_end = match m.name_close {
                "" => s.find('<').unwrap_or(s.len()),
                c => s.find(c)?,
            };
            let tool = self.tools.iter().find(|t| t.name == s[..name_end].trim())?;
            let s = &s[name_end + m.name_close.len()..];
            let end = match m.call_close {
                "" => s.len(),
                c => s.find(c).unwrap_or(s.len()),
            };
            calls.push(ToolCall {
                name: tool.name.clone(),
                arguments: Value::Object(xml_params(m, &s[..end], &tool.parameters)?),
            });
            if !m.many {
                return Some(calls);
            }
            rest = &s[(end + m.call_close.len()).min(s.len())..];
        }
    }

    /// Calls in XML format `m` as JSON built as they come (see
    /// [`Tools::call_prefixes`]); `ended`: a call cut short is closed where
    /// the reply ends.
    pub(super) fn xml_prefixes<'t>(
        &self,
        m: &XmlMarkup,
        content: &'t str,
        ended: bool,
        out: &mut Vec<CallPrefix<'t>>,
    ) {
        let mut rest = content;
        while let Some(at) = rest.find(m.open) {
            let mut body = &rest[at + m.open.len()..];
            // The block's calls, one after another.
            loop {
                let s = match m.name_open {
                    "" => body.trim_start(),
                    o => {
                        let next = body.find(o);
                        match body.find(m.close) {
                            // The block closes first.
                            Some(c) if next.is_none_or(|n| c < n) => {
                                rest = &body[c + m.close.len()..];
                                break;
                            }
                            _ => {}
                        }
                        match next {
                            Some(n) => &body[n + o.len()..],
                            None => return,
                        }
                    }
                };
                let Some(name_end) = m.name_end(s) else {
                    return;
                };
                let name = s[..name_end].trim();
                let Some(tool) = self.tools.iter().find(|t| t.name == name) else {
                    // Not a tool given: its block reads as content.
                    match body.find(m.close) {
                        Some(c) => {
                            rest = &body[c + m.close.len()..];
                            break;
                        }
                        None => return,
                    }
                };
                let args = &s[name_end + m.name_close.len()..];
                let (mut arguments, mut complete, used) = xml_arguments(m, args, &tool.parameters);
                if ended && !complete {
                    // Closed where the reply ends: in a value, or after.
                    let end = m.call_end();
                    for close in [format!("{}{end}", m.value_close), end.to_string()] {
                        let (a, c, _) =
                            xml_arguments(m, &format!("{args}{close}"), &tool.parameters);
                        if c {
                            (arguments, complete) = (a, c);
                            break;
                        }
                    }
                }
                out.push(CallPrefix {
                    name,
                    arguments: Cow::Owned(arguments),
                    complete,
                });
                if !complete {
                    return;
                }
                body = &args[used..];
                if m.call_close.is_empty() {
                    // The block's close ended the call.
                    rest = body;
                    break;
                }
                if !m.many {
                    match body.find(m.close) {
                        Some(c) => {
                            rest = &body[c + m.close.len()..];
                            break;
                        }
                        None => return,
                    }
                }
            }
        }
    }
}

/// The parameters of a call's text (after its name), read by their
/// schemas; `None` where a parameter's name does not end.
fn xml_params(
    m: &XmlMarkup,
    text: &str,
    parameters: &Value,
) -> Option<serde_json::Map<String, Value>> {
    let mut arguments = serde_json::Map::new();
    let mut rest = text;
    while let Some(at) = rest.find(m.key_open) {
        let p = &rest[at + m.key_open.len()..];
        let name_end = p.find(m.key_close)?;
        let name = p[..name_end].trim();
        let v = value_start(m, &p[name_end + m.key_close.len()..]).unwrap_or("");
        let close = v.find(m.value_close).unwrap_or(v.len());
        let raw = unpadded(m, &v[..close]);
        let raw = match m.padded {
            true => raw.strip_suffix('\n').unwrap_or(raw),
            false => raw,
        };
        let value = match is_text(&parameters["properties"][name]) {
            true => Value::String(raw.to_string()),
            false => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())),
        };
        arguments.insert(name.to_string(), value);
        rest = &v[close..];
    }
    Some(arguments)
}

/// The text of a value after its parameter's name: after the value's
/// open tag where the format has one (whitespace before it allowed; the
/// text as it is where the tag is missing); `None` while `v` may still
/// be becoming the tag.
fn value_start<'v>(m: &XmlMarkup, v: &'v str) -> Option<&'v str> {
    if m.value_open.is_empty() {
        return Some(v);
    }
    let t = v.trim_start();
    match t.strip_prefix(m.value_open) {
        Some(after) => Some(after),
        None if m.value_open.starts_with(t) => None,
        None => Some(t),
    }
}

/// A value's text without the line break a padded format writes first.
fn unpadded<'v>(m: &XmlMarkup, raw: &'v str) -> &'v str {
    match m.padded {
        true => raw.strip_prefix('\n').unwrap_or(raw),
        false => raw,
    }
}

/// The JSON object of a call's parameters as far as `body` (the text
/// after its name) goes: its text so far, whether the call is closed, and
/// the bytes of `body` it took. A text value (of a `string` parameter)
/// streams escaped, but for what may begin its close (and, padded, a
/// line break around it), which waits; any other value goes out once its
/// parameter closes, as reading takes it (JSON, or the text where it is
/// none).
fn xml_arguments(m: &XmlMarkup, body: &str, parameters: &Value) -> (String, bool, usize) {
    let mut json = String::new();
    let mut rest = body;
    let end = m.call_end();
    loop {
        let trimmed = rest.trim_start();
        let skipped = rest.len() - trimmed.len();
        if let Some(after) = trimmed.strip_prefix(end) {
            if json.is_empty() {
                json.push('{');
            }
            json.push('}');
            return (json, true, body.len() - after.len());
        }
        let Some(p) = trimmed.strip_prefix(m.key_open) else {
            // A tag being written, or nothing yet.
            return (json, false, body.len() - rest.len() + skipped);
        };
        let Some(name_end) = p.find(m.key_close) else {
            return (json, false, body.len() - rest.len());
        };
        let name = p[..name_end].trim();
        let mark = json.len();
        json.push(if json.is_empty() { '{' } else { ',' });
        json.push_str(&serde_json::to_string(name).unwrap_or_default());
        json.push(':');
        let Some(v) = value_start(m, &p[name_end + m.key_close.len()..]) else {
            // (The key goes out with its value.)
            json.truncate(mark);
            return (json, false, body.len() - rest.len());
        };
        let close = v.find(m.value_close);
        let raw = unpadded(m, &v[..close.unwrap_or(v.len())]);
        let trailing = |s: &'_ str| -> usize {
            match m.padded && s.ends_with('\n') {
                true => 1,
                false => 0,
            }
        };
        if is_text(&parameters["properties"][name]) {
            json.push('"');
            let shown = match close {
                Some(_) => &raw[..raw.len() - trailing(raw)],
                // Hold what may begin the close, and a padded line break.
                None => {
                    let held = (1..m.value_close.len())
                        .rev()
                        .find(|&k| raw.ends_with(&m.value_close[..k]))
                        .unwrap_or(0);
                    let shown = &raw[..raw.len() - held];
                    &shown[..shown.len() - trailing(shown)]
                }
            };
            let escaped = serde_json::to_string(shown).unwrap_or_default();
            json.push_str(&escaped[1..escaped.len() - 1]);
            if close.is_none() {
                return (json, false, body.len());
            }
            json.push('"');
        } else {
            if close.is_none() {
                json.truncate(mark);
                return (json, false, body.len());
            }
            let raw = &raw[..raw.len() - trailing(raw)];
            let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
            json.push_str(&value.to_string());
        }
        let close = close.unwrap_or(v.len());
        rest = &v[close + m.value_close.len()..];
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::tools::testing::{accepts, weather_tools as tools};
    use crate::tools::ToolFormat;

    /// GLM-4.6's, GLM-4.7's and MiniMax-M2's instructions, as their
    /// templates write them.
    const GLM46: &str = "<tool_call>{function-name}\n<arg_key>{arg-key-1}</arg_key>\n\
                         <arg_value>{arg-value-1}</arg_value>\n</tool_call>";
    const GLM47: &str = "<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key>\
                         <arg_value>{arg-value-1}</arg_value><arg_key>{arg-key-2}</arg_key>";
    const MINIMAX: &str = "<minimax:tool_call>\n<invoke name=\"tool-name-1\">\n\
                           <parameter name=\"param-key-1\">param-value-1</parameter>";

    #[test]
    fn formats_are_told_from_their_templates() {
        for (template, format, open) in [
            (GLM46, ToolFormat::Glm45, "<tool_call>"),
            (GLM47, ToolFormat::Glm47, "<tool_call>"),
            (MINIMAX, ToolFormat::MinimaxM2, "<minimax:tool_call>"),
        ] {
            let t = tools(template, false);
            assert_eq!(t.format(), format);
            assert_eq!(t.triggers(), [open]);
            assert_eq!(t.reasoning_ends(), [open]);
            assert!(t.preserved_tokens().contains(&open.to_string()));
        }
    }

    /// Calls as each template writes them (rendered by Jinja2) are what
    /// the grammar allows and what reading gives back.
    #[test]
    fn calls_as_templates_write_them() {
        let oslo = json!({"city": "Oslo", "days": 2});
        for (template, call, now) in [
            (
                GLM46,
                "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Oslo</arg_value>\n\
                 <arg_key>days</arg_key>\n<arg_value>2</arg_value>\n</tool_call>",
                "<tool_call>now\n</tool_call>",
            ),
            (
                GLM47,
                "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo</arg_value>\
                 <arg_key>days</arg_key><arg_value>2</arg_value></tool_call>",
                "<tool_call>now</tool_call>",
            ),
            (
                MINIMAX,
                "<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">\
                 Oslo</parameter>\n<parameter name=\"days\">2</parameter>\n</invoke>\n\
                 </minimax:tool_call>",
                "<minimax:tool_call>\n<invoke name=\"now\">\n</invoke>\n</minimax:tool_call>",
            ),
        ] {
            let t = tools(template, false);
            assert!(accepts(&t, call), "{call}");
            assert!(accepts(&t, now), "{now}");
            assert!(!accepts(&t, &call.replace(">2<", ">two<")), "{call}");
            assert!(!accepts(&t, &call.replace("get_weather", "get_time")));
            assert!(!accepts(&t, &format!("{call}\n{now}")));
            let reply = t.parse_native(&format!("Checking.\n{call}"));
            assert_eq!(reply.content, "Checking.");
            assert_eq!(reply.calls.len(), 1);
            assert_eq!(reply.calls[0].arguments, oslo);
            assert_eq!(t.parse_native(now).calls[0].arguments, json!({}));
            assert_eq!(
                t.streamable(&format!("Checking.\n{}", &call[..5]))
                    .as_deref(),
                Some("Checking.")
            );
        }
    }

    #[test]
    fn parallel_calls_in_blocks_or_one_block() {
        let glm = tools(GLM46, true);
        let two = "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Oslo</arg_value>\n\
                   </tool_call>\n<tool_call>now\n</tool_call>";
        assert!(accepts(&glm, two));
        assert_eq!(glm.parse_native(two).calls.len(), 2);
        // MiniMax-M2 writes a reply's calls in one block.
        let mm = tools(MINIMAX, true);
        let one_block = "<minimax:tool_call>\n<invoke name=\"get_weather\">\n\
                         <parameter name=\"city\">Oslo</parameter>\n</invoke>\n\
                         <invoke name=\"now\">\n</invoke>\n</minimax:tool_call>";
        assert!(accepts(&mm, one_block));
        let calls = mm.parse_native(one_block).calls;
        assert_eq!(
            calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["get_weather", "now"]
        );
        assert!(!accepts(&tools(MINIMAX, false), one_block));
    }

    #[test]
    fn values_are_read_leniently() {
        let glm = tools(GLM46, false);
        // Text as it is (line breaks kept, as llama.cpp keeps them), other
        // values JSON, or text where they are none; any whitespace
        // between tags.
        let reply = glm.parse_native(
            "<tool_call> get_weather <arg_key>city</arg_key><arg_value>\nSão \"P\"\n</arg_value>\
             <arg_key>days</arg_key>  <arg_value>x2</arg_value></tool_call>",
        );
        assert_eq!(
            reply.calls[0].arguments,
            json!({"city": "\nSão \"P\"\n", "days": "x2"})
        );
        // A block of a tool not given stays in the content, whole.
        let mm = tools(MINIMAX, true);
        let unknown =
            "<minimax:tool_call>\n<invoke name=\"nope\">\n</invoke>\n</minimax:tool_call>";
        let reply = mm.parse_native(&format!("A {unknown} B"));
        assert!(reply.calls.is_empty());
        assert_eq!(reply.content, format!("A {unknown} B"));
    }
}
