//! The tool formats whose calls are a name and a JSON object between
//! special tokens, in a section of calls: DeepSeek V3.1's
//! `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜><｜tool▁calls▁end｜>`,
//! DeepSeek R1's (`function<｜tool▁sep｜>NAME` and the arguments in a
//! ```` ```json ```` block) and Kimi K2's
//! `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:0<|tool_call_argument_begin|>{...}<|tool_call_end|><|tool_calls_section_end|>`.
//! One [`JsonMarkup`] a format gives its grammar, its reading and its
//! calls as they are written.

use std::borrow::Cow;

use serde_json::Value;

use super::native::{argument_rules, sections, NativeReply};
use super::partial::{value_extent, CallPrefix};
use super::{Tool, ToolCall, Tools};
use crate::grammar::{convert_framed, gbnf_literal, Grammar, GrammarError};

/// The markup of a format of named JSON calls in a section.
#[derive(Debug)]
pub(super) struct JsonMarkup {
    /// Opens the section of calls.
    pub(super) open: &'static str,
    /// Closes it.
    pub(super) close: &'static str,
    /// Opens a call.
    call_open: &'static str,
    /// Comes before the name.
    before_name: &'static str,
    /// Ends the name.
    name_end: &'static str,
    /// Whether the name is followed by the call's number (Kimi K2's
    /// `:0`).
    numbered: bool,
    /// Opens the arguments (after the name's end and any number).
    args_open: &'static str,
    /// Follows the arguments.
    args_close: &'static str,
    /// Closes a call.
    call_close: &'static str,
    /// The special tokens the markup is made of.
    pub(super) preserved: &'static [&'static str],
}

/// DeepSeek V3.1's.
pub(super) const DEEPSEEK_V31: JsonMarkup = JsonMarkup {
    open: "<｜tool▁calls▁begin｜>",
    close: "<｜tool▁calls▁end｜>",
    call_open: "<｜tool▁call▁begin｜>",
    before_name: "",
    name_end: "<｜tool▁sep｜>",
    numbered: false,
    args_open: "",
    args_close: "",
    call_close: "<｜tool▁call▁end｜>",
    preserved: &[
        "<｜tool▁calls▁begin｜>",
        "<｜tool▁calls▁end｜>",
        "<｜tool▁call▁begin｜>",
        "<｜tool▁call▁end｜>",
        "<｜tool▁sep｜>",
    ],
};

/// DeepSeek R1's (and its distills').
pub(super) const DEEPSEEK_R1: JsonMarkup = JsonMarkup {
    before_name: "function<｜tool▁sep｜>",
    name_end: "\n",
    args_open: "```json\n",
    args_close: "\n```",
    ..DEEPSEEK_V31
};

/// Kimi K2's.
pub(super) const KIMI_K2: JsonMarkup = JsonMarkup {
    open: "<|tool_calls_section_begin|>",
    close: "<|tool_calls_section_end|>",
    call_open: "<|tool_call_begin|>",
    before_name: "functions.",
    name_end: ":",
    numbered: true,
    args_open: "<|tool_call_argument_begin|>",
    args_close: "",
    call_close: "<|tool_call_end|>",
    preserved: &[
        "<|tool_calls_section_begin|>",
        "<|tool_calls_section_end|>",
        "<|tool_call_begin|>",
        "<|tool_call_argument_begin|>",
        "<|tool_call_end|>",
    ],
};

/// A call's head read: its name and where its arguments begin (`None`
/// while the head is not complete).
fn head<'t>(m: &JsonMarkup, call: &'t str) -> Option<(&'t str, &'t str)> {
    let s = call.trim_start().strip_prefix(m.before_name)?;
    let end = s.find(m.name_end)?;
    let name = s[..end].trim();
    let mut rest = &s[end + m.name_end.len()..];
    if m.numbered {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let rest = rest.trim_start();
    let args = match m.args_open {
        "" => rest,
        open => rest.strip_prefix(open)?,
    };
    Some((name, args.trim_start()))
}

impl Tools {
    /// The grammar of calls in format `m`: a section of one call (several
    /// where calls may be parallel), each a tool's name and arguments of
    /// its schema; where a call is required, whitespace first, or, for a
    /// template that thinks, a think block.
    pub(super) fn marked_grammar(
        &self,
        m: &JsonMarkup,
        lazy: bool,
    ) -> Result<Grammar, GrammarError> {
        let tools: Vec<&Tool> = self.callable().collect();
        let values = argument_rules(&tools);
        let number = if m.numbered { " [0-9]{1,3}" } else { "" };
        let calls: Vec<String> = tools
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    "{}{number} {} args-{i} {}",
                    gbnf_literal(&format!(
                        "{}{}{}{}",
                        m.call_open, m.before_name, t.name, m.name_end
                    )),
                    gbnf_literal(m.args_open),
                    gbnf_literal(&format!("{}{}", m.args_close, m.call_close)),
                )
            })
            .collect();
        let call = format!("({})", calls.join(" | "));
        let calls = match self.parallel {
            true => format!("{call}+"),
            false => call,
        };
        let section = format!("{} {calls} {}", gbnf_literal(m.open), gbnf_literal(m.close));
        // (One section; a think block first where the template thinks.)
        let root = self.blocks_root(&section, lazy, false);
        convert_framed(&[("root", root)], &values)
    }

    /// Reads calls in format `m`: each section's calls of tools given
    /// with arguments that are JSON objects; a section with any other
    /// stays in the content.
    pub(super) fn marked(&self, m: &JsonMarkup, text: &str) -> NativeReply {
        sections(text, (m.open, m.close), |body| self.marked_section(m, body))
    }

    fn marked_section(&self, m: &JsonMarkup, body: &str) -> Option<Vec<ToolCall>> {
        let mut calls = Vec::new();
        for call in body.split(m.call_open).skip(1) {
            let call = call.split(m.call_close).next().unwrap_or(call);
            let (name, args) = head(m, call)?;
            let tool = self.tools.iter().find(|t| t.name == name)?;
            let mut values = serde_json::Deserializer::from_str(args).into_iter::<Value>();
            let arguments = match values.next() {
                Some(Ok(v @ Value::Object(_))) => v,
                _ => return None,
            };
            calls.push(ToolCall {
                name: tool.name.clone(),
                arguments,
            });
        }
        (!calls.is_empty()).then_some(calls)
    }

    /// Calls in format `m` as they are written (see
    /// [`Tools::call_prefixes`]): each from its name's end, its arguments
    /// the model's own text.
    pub(super) fn marked_prefixes<'t>(
        &self,
        m: &JsonMarkup,
        content: &'t str,
        out: &mut Vec<CallPrefix<'t>>,
    ) {
        let calls = content.split(m.open).skip(1).flat_map(|section| {
            section
                .split(m.close)
                .next()
                .unwrap_or(section)
                .split(m.call_open)
                .skip(1)
        });
        for call in calls {
            let Some((name, args)) = head(m, call) else {
                return;
            };
            if !args.is_empty() && !args.starts_with('{') {
                return;
            }
            let (len, complete) = value_extent(args);
            if self.tools.iter().any(|t| t.name == name) {
                out.push(CallPrefix {
                    name,
                    arguments: Cow::Borrowed(&args[..len]),
                    complete,
                });
            }
            if !complete {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::tools::testing::{accepts, weather_tools as tools};
    use crate::tools::ToolFormat;

    /// The parts of DeepSeek V3.1's, R1's and Kimi K2's templates that
    /// tell their formats.
    const V31: &str = "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + name + '<｜tool▁sep｜>' + args | tojson}}";
    const R1: &str = "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + type + '<｜tool▁sep｜>' + name + '\\n' + '```json'}}";
    const KIMI: &str =
        "<|tool_calls_section_begin|><|tool_call_begin|>{{ id }}<|tool_call_argument_begin|>";

    /// Calls as each template writes them: what the grammar allows and
    /// reading gives back; two in one section where calls are parallel.
    #[test]
    fn calls_as_templates_write_them() {
        let args = "{\"city\": \"Oslo\", \"days\": 2}";
        for (template, format, call, now) in [
            (
                V31,
                ToolFormat::DeepSeekV31,
                format!("<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{args}<｜tool▁call▁end｜>"),
                "<｜tool▁call▁begin｜>now<｜tool▁sep｜>{}<｜tool▁call▁end｜>",
            ),
            (
                R1,
                ToolFormat::DeepSeekR1,
                format!(
                    "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{args}\n```\
                     <｜tool▁call▁end｜>"
                ),
                "<｜tool▁call▁begin｜>function<｜tool▁sep｜>now\n```json\n{}\n```<｜tool▁call▁end｜>",
            ),
            (
                KIMI,
                ToolFormat::KimiK2,
                format!(
                    "<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{args}\
                     <|tool_call_end|>"
                ),
                "<|tool_call_begin|>functions.now:1<|tool_call_argument_begin|>{}<|tool_call_end|>",
            ),
        ] {
            let t = tools(template, false);
            assert_eq!(t.format(), format, "{template}");
            let m = format.marked().unwrap();
            assert_eq!(t.triggers(), [m.open]);
            let section = |calls: &str| format!("{}{calls}{}", m.open, m.close);
            let one = section(&call);
            assert!(accepts(&t, &one), "{one}");
            assert!(accepts(&t, &section(now)));
            assert!(!accepts(&t, &one.replace(": 2", ": \"two\"")));
            assert!(!accepts(&t, &one.replace("get_weather", "get_time")));
            let two = section(&format!("{call}{now}"));
            assert!(!accepts(&t, &two));
            assert!(accepts(&tools(template, true), &two));
            let reply = t.parse_native(&format!("Checking.\n{two}"));
            assert_eq!(reply.content, "Checking.");
            assert_eq!(reply.calls.len(), 2);
            assert_eq!(reply.calls[0].arguments, json!({"city": "Oslo", "days": 2}));
            assert_eq!(reply.calls[1].name, "now");
            // A section with a call of a tool not given stays in the
            // content, whole.
            let unknown = one.replace("get_weather", "get_time");
            let reply = t.parse_native(&unknown);
            assert!(reply.calls.is_empty());
            assert_eq!(reply.content, unknown);
            // Streamed: each call from its name's end, its arguments the
            // model's text as far as it goes.
            let cut = &two[..two.find(": 2").unwrap()];
            let prefixes = t.call_prefixes(cut, "");
            assert_eq!(prefixes.len(), 1);
            assert_eq!(prefixes[0].name, "get_weather");
            assert_eq!(prefixes[0].arguments, "{\"city\": \"Oslo\", \"days\"");
            let whole = t.call_prefixes(&two, "");
            assert_eq!(whole.len(), 2);
            assert!(whole.iter().all(|p| p.complete));
            // (What may begin the section's open waits, cut anywhere.)
            let two_chars = m.open.char_indices().nth(2).map_or(0, |(i, _)| i);
            assert_eq!(
                t.streamable(&format!("Checking.\n{}", &m.open[..two_chars])).as_deref(),
                Some("Checking.")
            );
        }
    }
}
