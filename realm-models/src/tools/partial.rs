//! Calls as they are written: each call's tool as soon as its name is
//! complete, and the text of its arguments so far, so that a server can
//! stream a call's arguments piece by piece (as llama-server does) rather
//! than whole once the reply ends.
//!
//! Where the format writes a call's arguments as one JSON object (Hermes,
//! Llama 3, Mistral's `[ARGS]`, harmony) their text is the model's own;
//! XML parameters' are built as they come (a text value's characters
//! escaped one by one, its last line break held until the parameter
//! closes; other values whole once their parameter closes). Either way
//! the pieces put together are a JSON object, equal as JSON to the
//! call's arguments once it is read. The generic format and Mistral
//! Nemo's list give no prefixes, and their calls go out whole.

use std::borrow::Cow;

use super::native::{HARMONY_ENDS, HARMONY_TO, HERMES_CLOSE, HERMES_OPEN, MESSAGE};
use super::native::{MISTRAL_ARGS, MISTRAL_OPEN};
use super::{ToolFormat, Tools};

/// A call being written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallPrefix<'t> {
    /// The tool it calls (one of the tools given).
    pub name: &'t str,
    /// Its arguments' text so far: the start of a JSON object, empty
    /// until it begins (the reply's own text, or built from XML
    /// parameters).
    pub arguments: Cow<'t, str>,
    /// Whether the arguments' object is complete.
    pub complete: bool,
}

impl Tools {
    /// The calls written so far in a reply: in `content` (its answer, as
    /// [`Tools::parse_native`] reads it), or for harmony in `raw` (the
    /// reply as generated), in order, each from the moment its tool's
    /// name is complete. Each later prefix of a reply gives the same
    /// calls (and maybe more), each call's arguments extending the
    /// earlier text. A call that names no tool given is skipped, as
    /// reading skips it; the list stops at the first call it cannot
    /// stream (its arguments not an object, or written before its name).
    ///
    /// ```
    /// use realm_models::tools::Tools;
    /// use serde_json::json;
    /// let tools = json!([{"type": "function", "function": {"name": "get_weather",
    ///     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    /// let tools = Tools::from_openai(&tools, None, None)?.unwrap().for_template("<tool_call>");
    /// let calls = tools.call_prefixes("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"ci", "");
    /// assert_eq!((calls[0].name, &*calls[0].arguments), ("get_weather", "{\"ci"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn call_prefixes<'t>(&self, content: &'t str, raw: &'t str) -> Vec<CallPrefix<'t>> {
        self.prefixes(content, raw, false)
    }

    /// [`Tools::call_prefixes`] of a reply that has ended: an XML call
    /// cut short is closed where the reply ends, as reading takes it
    /// (JSON cut short is no call).
    pub fn ended_call_prefixes<'t>(&self, content: &'t str, raw: &'t str) -> Vec<CallPrefix<'t>> {
        self.prefixes(content, raw, true)
    }

    fn prefixes<'t>(&self, content: &'t str, raw: &'t str, ended: bool) -> Vec<CallPrefix<'t>> {
        let mut out = Vec::new();
        match self.format {
            ToolFormat::Hermes => self.hermes_prefixes(content, &mut out),
            ToolFormat::Llama3 => self.llama3_prefixes(content, &mut out),
            ToolFormat::Mistral => self.mistral_prefixes(content, &mut out),
            ToolFormat::Harmony => self.harmony_prefixes(raw, &mut out),
            f => {
                if let Some(m) = f.xml() {
                    self.xml_prefixes(m, content, ended, &mut out)
                }
                if let Some(m) = f.marked() {
                    self.marked_prefixes(m, content, &mut out)
                }
            }
        }
        out
    }

    fn known(&self, name: &str) -> bool {
        self.tools.iter().any(|t| t.name == name)
    }

    /// `<tool_call>` blocks of `{"name": ..., "arguments": {...}}`.
    fn hermes_prefixes<'t>(&self, content: &'t str, out: &mut Vec<CallPrefix<'t>>) {
        let mut rest = content;
        while let Some(at) = rest.find(HERMES_OPEN) {
            let after = &rest[at + HERMES_OPEN.len()..];
            let (body, next) = match after.find(HERMES_CLOSE) {
                Some(end) => (&after[..end], Some(&after[end + HERMES_CLOSE.len()..])),
                None => (after, None),
            };
            match call_members(body.trim_start(), &["arguments"]) {
                Members::Call(c) if self.known(c.name) => out.push(c),
                Members::Call(_) => {}
                Members::Waiting | Members::Unstreamable => return,
            }
            match next {
                Some(n) => rest = n,
                None => return,
            }
        }
    }

    /// Llama 3's `{"name": ..., "parameters": {...}}` objects, one after
    /// another.
    fn llama3_prefixes<'t>(&self, content: &'t str, out: &mut Vec<CallPrefix<'t>>) {
        let mut rest = content;
        while let Some(at) = rest.find('{') {
            let call = &rest[at..];
            match call_members(call, &["parameters", "arguments"]) {
                Members::Call(c) if self.known(c.name) => out.push(c),
                Members::Call(_) => {}
                Members::Waiting | Members::Unstreamable => return,
            }
            match value_extent(call) {
                (len, true) => rest = &call[len..],
                (_, false) => return,
            }
        }
    }

    /// `[TOOL_CALLS]NAME[CALL_ID]ID[ARGS]{...}` (the id where the
    /// template has one).
    fn mistral_prefixes<'t>(&self, content: &'t str, out: &mut Vec<CallPrefix<'t>>) {
        let mut rest = content;
        while let Some(at) = rest.find(MISTRAL_OPEN) {
            let after = &rest[at + MISTRAL_OPEN.len()..];
            let name_end = after.find(['[', '{']).unwrap_or(after.len());
            let Some(args_at) = after.find(MISTRAL_ARGS).filter(|&a| a >= name_end) else {
                return;
            };
            let name = after[..name_end].trim();
            let args = after[args_at + MISTRAL_ARGS.len()..].trim_start();
            match self.object_args(name, args, args.len(), out) {
                Some(r) => rest = r,
                None => return,
            }
        }
    }

    /// Harmony's messages to `functions.NAME`: the message is the
    /// arguments.
    fn harmony_prefixes<'t>(&self, raw: &'t str, out: &mut Vec<CallPrefix<'t>>) {
        let mut rest = raw;
        while let Some(at) = rest.find(HARMONY_TO) {
            let after = &rest[at + HARMONY_TO.len()..];
            let Some(len) =
                after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            else {
                return;
            };
            let name = &after[..len];
            let Some(open) = after.find(MESSAGE) else {
                return;
            };
            let args = after[open + MESSAGE.len()..].trim_start();
            // The message ends at its end marker; the object, before it.
            let end = HARMONY_ENDS
                .iter()
                .filter_map(|m| args.find(m))
                .min()
                .unwrap_or(args.len());
            match self.object_args(name, args, end, out) {
                Some(r) => rest = r,
                None => return,
            }
        }
    }

    /// A call of `name` whose arguments are the JSON object `args` begins
    /// with (within its first `limit` bytes), added where the tool is
    /// given; the text after the object, where it is complete (`None`
    /// where it is not, or is no object).
    fn object_args<'t>(
        &self,
        name: &'t str,
        args: &'t str,
        limit: usize,
        out: &mut Vec<CallPrefix<'t>>,
    ) -> Option<&'t str> {
        if !args.is_empty() && !args.starts_with('{') {
            return None;
        }
        let (len, complete) = value_extent(&args[..limit]);
        if self.known(name) {
            out.push(CallPrefix {
                name,
                arguments: Cow::Borrowed(&args[..len]),
                complete,
            });
        }
        complete.then(|| &args[len..])
    }
}

/// What a call object's start tells.
enum Members<'t> {
    /// The call, its name known.
    Call(CallPrefix<'t>),
    /// Its name is not complete yet.
    Waiting,
    /// It cannot stream: its arguments come before its name, or are no
    /// object, or it is no object.
    Unstreamable,
}

/// The members of the call object at the start of `text`: `"name"`'s
/// string and the value of the first of `keys` (the arguments), read as
/// far as the text goes.
fn call_members<'t>(text: &'t str, keys: &[&str]) -> Members<'t> {
    if text.is_empty() {
        return Members::Waiting;
    }
    let Some(mut rest) = text.strip_prefix('{') else {
        return Members::Unstreamable;
    };
    let mut name = None;
    loop {
        rest = rest.trim_start();
        let Some(after_quote) = rest.strip_prefix('"') else {
            return match (rest.is_empty(), name) {
                (true, Some(name)) => call(name, "", false),
                (true, None) => Members::Waiting,
                // `}` without arguments, or anything unexpected.
                (false, _) => Members::Unstreamable,
            };
        };
        let Some(key_len) = after_quote.find('"') else {
            return waiting_or(name);
        };
        let key = &after_quote[..key_len];
        let value = after_quote[key_len + 1..].trim_start();
        let Some(value) = value.strip_prefix(':') else {
            return waiting_or(name);
        };
        let value = value.trim_start();
        if value.is_empty() {
            return waiting_or(name);
        }
        if keys.contains(&key) {
            let Some(name) = name else {
                return Members::Unstreamable;
            };
            if !value.starts_with('{') {
                return Members::Unstreamable;
            }
            let (len, complete) = value_extent(value);
            return call(name, &value[..len], complete);
        }
        let (len, complete) = value_extent(value);
        if !complete {
            return waiting_or(name);
        }
        if key == "name" {
            // A name written plainly, as the grammar writes it.
            let quoted = &value[..len];
            match quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
                Some(n) if !n.contains('\\') => name = Some(n),
                _ => return Members::Unstreamable,
            }
        }
        rest = value[len..].trim_start();
        match rest.strip_prefix(',') {
            Some(r) => rest = r,
            None if rest.is_empty() => return waiting_or(name),
            None => return Members::Unstreamable,
        }
    }
}

fn call<'t>(name: &'t str, arguments: &'t str, complete: bool) -> Members<'t> {
    Members::Call(CallPrefix {
        name,
        arguments: Cow::Borrowed(arguments),
        complete,
    })
}

/// The call with no arguments yet, once its name is known.
fn waiting_or(name: Option<&str>) -> Members<'_> {
    match name {
        Some(name) => call(name, "", false),
        None => Members::Waiting,
    }
}

/// How much of `text` the JSON value at its start takes, and whether it
/// is complete there: strings, objects and arrays to their end, other
/// values to the first character that cannot go on one.
pub(super) fn value_extent(text: &str) -> (usize, bool) {
    let bytes = text.as_bytes();
    let Some(&first) = bytes.first() else {
        return (0, false);
    };
    if !matches!(first, b'{' | b'[' | b'"') {
        // A number or literal: complete where something else follows.
        return match bytes
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')))
        {
            Some(end) => (end, true),
            None => (bytes.len(), false),
        };
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    in_string = false;
                    if depth == 0 {
                        return (i + 1, true);
                    }
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return (i + 1, true);
                }
            }
            _ => {}
        }
    }
    (bytes.len(), false)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn tools(template: &str) -> Tools {
        let list = json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"},
                                                 "days": {"type": "integer"}}}}},
            {"type": "function", "function": {"name": "now",
                "parameters": {"type": "object", "properties": {}}}},
        ]);
        Tools::from_openai(&list, None, None)
            .unwrap()
            .unwrap()
            .for_template(template)
    }

    /// Every prefix of `reply` (at char boundaries) gives calls that the
    /// longer prefixes extend; the whole reply's arguments are JSON equal
    /// to the call's as read. Returns the whole reply's calls.
    fn grows(t: &Tools, reply: &str, harmony: bool) -> Vec<(String, Value)> {
        let at = |n: usize| {
            let text = &reply[..n];
            match harmony {
                true => t.call_prefixes("", text),
                false => t.call_prefixes(text, ""),
            }
        };
        let mut last: Vec<CallPrefix<'_>> = Vec::new();
        for n in (0..=reply.len()).filter(|&n| reply.is_char_boundary(n)) {
            let now = at(n);
            assert!(
                now.len() >= last.len(),
                "{:?}: calls went away",
                &reply[..n]
            );
            for (a, b) in last.iter().zip(&now) {
                assert_eq!(a.name, b.name);
                assert!(b.arguments.starts_with(&*a.arguments), "{:?}", &reply[..n]);
                assert!(!a.complete || b.arguments == a.arguments);
            }
            last = now;
        }
        let read = t.parse_native(reply).calls;
        assert_eq!(last.len(), read.len(), "{reply:?}");
        last.iter()
            .zip(&read)
            .map(|(p, c)| {
                assert!(p.complete, "{reply:?}");
                assert_eq!(p.name, c.name);
                let args: Value = serde_json::from_str(&p.arguments).unwrap();
                assert_eq!(args, c.arguments, "{reply:?}");
                (p.name.to_string(), args)
            })
            .collect()
    }

    #[test]
    fn hermes_calls_grow() {
        let t = tools("<tool_call>");
        let reply = "Let me see.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \
                     {\"city\": \"Oslo \\\"}\", \"days\": 12}}\n</tool_call>\n<tool_call>\n\
                     {\"name\": \"nope\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n\
                     {\"name\":\"now\",\"arguments\":{}}\n</tool_call>";
        let calls = grows(&t, reply, false);
        assert_eq!(
            calls,
            [
                (
                    "get_weather".into(),
                    json!({"city": "Oslo \"}", "days": 12})
                ),
                ("now".into(), json!({}))
            ]
        );
        // The name first, then the arguments.
        let c = t.call_prefixes("<tool_call>\n{\"name\": \"get_weather\", ", "");
        assert_eq!((c[0].name, &*c[0].arguments), ("get_weather", ""));
        assert!(t
            .call_prefixes("<tool_call>\n{\"name\": \"get_wea", "")
            .is_empty());
        // Arguments before the name, or as a string: whole, later.
        let late = "<tool_call>{\"arguments\": {}, \"name\": \"now\"}</tool_call>";
        assert!(t.call_prefixes(late, "").is_empty());
        let string = "<tool_call>{\"name\": \"now\", \"arguments\": \"{}\"}</tool_call>";
        assert!(t.call_prefixes(string, "").is_empty());
    }

    #[test]
    fn llama3_mistral_and_harmony_calls_grow() {
        let llama = tools("<|start_header_id|>ipython<|end_header_id|>");
        assert_eq!(llama.format(), ToolFormat::Llama3);
        let calls = grows(
            &llama,
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Lima\"}}",
            false,
        );
        assert_eq!(calls[0].1, json!({"city": "Lima"}));

        let mistral = tools("[TOOL_CALLS] [ARGS] [CALL_ID]");
        assert_eq!(mistral.format(), ToolFormat::Mistral);
        let reply = "[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{\"city\": \"Oslo\"}\
                     [TOOL_CALLS]now[ARGS]{}";
        assert_eq!(grows(&mistral, reply, false).len(), 2);

        let harmony = tools("<|channel|> to=functions");
        assert_eq!(harmony.format(), ToolFormat::Harmony);
        let reply = "<|channel|>analysis<|message|>Look up.<|end|><|start|>assistant\
                     <|channel|>commentary to=functions.get_weather <|constrain|>json\
                     <|message|>{\"city\": \"Oslo\", \"days\": 3}<|call|>";
        let calls = grows(&harmony, reply, true);
        assert_eq!(calls[0].1, json!({"city": "Oslo", "days": 3}));
    }

    #[test]
    fn xml_parameters_grow_as_json() {
        let xml = tools("<tool_call> <function=x> <parameter=y>");
        assert_eq!(xml.format(), ToolFormat::XmlParameters);
        let reply = "Sure.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nSão \"P\"\n\
                     line two\n</parameter>\n<parameter=days>\n12\n</parameter>\n</function>\n\
                     </tool_call>\n<tool_call>\n<function=nope>\n</function>\n</tool_call>\n\
                     <tool_call>\n<function=now>\n</function>\n</tool_call>";
        let calls = grows(&xml, reply, false);
        assert_eq!(
            calls,
            [
                (
                    "get_weather".into(),
                    json!({"city": "São \"P\"\nline two", "days": 12})
                ),
                ("now".into(), json!({}))
            ]
        );
        // A text value as it comes, its last line break held.
        let c = xml.call_prefixes(
            "<tool_call>\n<function=get_weather>\n<parameter=city>\nOs\n</para",
            "",
        );
        assert_eq!(&*c[0].arguments, "{\"city\":\"Os");
        // Cut short, it reads as closed where the reply ends.
        let cut = "<tool_call>\n<function=get_weather>\n<parameter=city>\nOs\n</para";
        let ended = xml.ended_call_prefixes(cut, "");
        assert!(ended[0].complete);
        let read = xml.parse_native(cut).calls;
        let args: Value = serde_json::from_str(&ended[0].arguments).unwrap();
        assert_eq!(args, read[0].arguments);
        assert!(ended[0]
            .arguments
            .starts_with(&*xml.call_prefixes(cut, "")[0].arguments));
        // A number waits for its parameter's end.
        let c = xml.call_prefixes(
            "<tool_call>\n<function=get_weather>\n<parameter=days>\n1",
            "",
        );
        assert_eq!(&*c[0].arguments, "");
    }

    #[test]
    fn glm_and_minimax_calls_grow() {
        let glm45 = tools("<tool_call>{name}\n<arg_key>{k}</arg_key>\n<arg_value>{v}</arg_value>");
        assert_eq!(glm45.format(), ToolFormat::Glm45);
        let reply = "Sure.\n<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>S\u{e3}o \"P\"\n\
                     <x></arg_value>\n<arg_key>days</arg_key>\n<arg_value>12</arg_value>\n</tool_call>\n\
                     <tool_call>nope\n</tool_call>\n<tool_call>now\n</tool_call>";
        let calls = grows(&glm45, reply, false);
        assert_eq!(
            calls,
            [
                (
                    "get_weather".into(),
                    json!({"city": "S\u{e3}o \"P\"\n<x>", "days": 12})
                ),
                ("now".into(), json!({}))
            ]
        );
        let glm47 =
            tools("<tool_call>{name}<arg_key>{k}</arg_key><arg_value>{v}</arg_value><arg_key>");
        assert_eq!(glm47.format(), ToolFormat::Glm47);
        let reply = "<tool_call>now</tool_call><tool_call>get_weather<arg_key>city</arg_key>\
                     <arg_value>Oslo</arg_value></tool_call>";
        assert_eq!(grows(&glm47, reply, false).len(), 2);
        let mm = tools("<minimax:tool_call> <invoke name=\"x\"> <parameter name=\"y\">");
        assert_eq!(mm.format(), ToolFormat::MinimaxM2);
        let reply = "<minimax:tool_call>\n<invoke name=\"get_weather\">\n<parameter name=\"city\">\
                     Lima</parameter>\n<parameter name=\"days\">3</parameter>\n</invoke>\n\
                     <invoke name=\"now\">\n</invoke>\n</minimax:tool_call> Done.";
        let calls = grows(&mm, reply, false);
        assert_eq!(calls[0].1, json!({"city": "Lima", "days": 3}));
        assert_eq!(calls[1].0, "now");
        // A text value as it comes, what may be its close held; cut
        // short, closed where the reply ends, as reading takes it.
        let cut = "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Os</arg_v";
        assert_eq!(
            &*glm45.call_prefixes(cut, "")[0].arguments,
            "{\"city\":\"Os"
        );
        let ended = glm45.ended_call_prefixes(cut, "");
        assert!(ended[0].complete);
        let args: Value = serde_json::from_str(&ended[0].arguments).unwrap();
        assert_eq!(args, glm45.parse_native(cut).calls[0].arguments);
        // The value's open tag being written holds its key.
        let c = glm45.call_prefixes(
            "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_v",
            "",
        );
        assert_eq!(&*c[0].arguments, "");
    }

    #[test]
    fn deepseek_and_kimi_calls_grow() {
        let args = "{\"city\": \"Oslo \\\"}\", \"days\": 12}";
        for (template, call) in [
            (
                "'<｜tool▁calls▁begin｜>' + name + '<｜tool▁sep｜>'",
                format!("<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{args}<｜tool▁call▁end｜>"),
            ),
            (
                "'<｜tool▁calls▁begin｜>' + '<｜tool▁sep｜>' + '```json'",
                format!(
                    "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{args}\n```\
                     <｜tool▁call▁end｜>"
                ),
            ),
            (
                "<|tool_calls_section_begin|> <|tool_call_argument_begin|>",
                format!(
                    "<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{args}\
                     <|tool_call_end|>"
                ),
            ),
        ] {
            let t = tools(template);
            let m = t.format().marked().unwrap();
            let reply = format!("Sure.\n{}{call}{}", m.open, m.close);
            let calls = grows(&t, &reply, false);
            assert_eq!(calls[0].1, json!({"city": "Oslo \"}", "days": 12}));
        }
    }

    #[test]
    fn other_formats_stream_whole() {
        let nemo = tools("[TOOL_CALLS] [AVAILABLE_TOOLS]");
        assert!(nemo
            .call_prefixes("[TOOL_CALLS][{\"name\": \"now\", \"arguments\": {}", "")
            .is_empty());
    }

    #[test]
    fn values_end_where_json_does() {
        assert_eq!(value_extent("{\"a\": \"}\\\"\"} x"), (12, true));
        assert_eq!(value_extent("[1, {\"b\": [2]}],"), (15, true));
        assert_eq!(value_extent("{\"a\": [1,"), (9, false));
        assert_eq!(value_extent("12, "), (2, true));
        assert_eq!(value_extent("tru"), (3, false));
        assert_eq!(value_extent(""), (0, false));
    }
}
