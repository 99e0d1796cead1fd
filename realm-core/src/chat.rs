//! Chat templates: turning a conversation into the prompt text a model was
//! trained on.
//!
//! GGUF files carry their Hugging Face Jinja template in
//! `tokenizer.chat_template`; it is rendered here with minijinja, set up the
//! way `transformers` sets up Jinja (`trim_blocks`, `lstrip_blocks`, loop
//! controls, Python string methods such as `.strip()`, `raise_exception`).
//! Files without a template get a built-in one: Gemma's turn format when the
//! vocabulary has `<start_of_turn>`, ChatML otherwise.
//!
//! ```
//! use realm_core::chat::{ChatMessage, ChatTemplate};
//! let t = ChatTemplate::chatml();
//! let text = t.render(&[ChatMessage::new("user", "Hi!")], true)?;
//! assert_eq!(text, "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n");
//! # Ok::<(), realm_core::Error>(())
//! ```

use minijinja::value::Kwargs;
use minijinja::{Environment, ErrorKind, Value};

use crate::gguf::Metadata;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The metadata key of the chat template.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

const CHATML: &str = include_str!("chat/chatml.jinja");
const GEMMA: &str = include_str!("chat/gemma.jinja");

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, or whatever the template knows.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message from `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Where a template came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateOrigin {
    /// The model file's `tokenizer.chat_template`.
    Metadata,
    /// Built-in Gemma turn format (`<start_of_turn>user ... <end_of_turn>`).
    Gemma,
    /// Built-in ChatML (`<|im_start|>role ... <|im_end|>`).
    ChatMl,
    /// Given by the caller.
    Custom,
}

/// A chat template with the BOS/EOS texts it may refer to.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    origin: TemplateOrigin,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// A template from Jinja source. Syntax errors are reported here, with
    /// the line.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self> {
        let t = Self {
            source: source.into(),
            origin: TemplateOrigin::Custom,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        };
        let env = environment();
        env.template_from_str(&t.source).map_err(|e| t.error(&e))?;
        Ok(t)
    }

    /// The built-in ChatML template.
    pub fn chatml() -> Self {
        Self {
            source: CHATML.to_owned(),
            origin: TemplateOrigin::ChatMl,
            bos_token: String::new(),
            eos_token: String::new(),
        }
    }

    /// The template of a model: its `tokenizer.chat_template`, else the
    /// built-in one its vocabulary suggests. `bos_token` and `eos_token`
    /// are the texts of the tokenizer's BOS and EOS tokens.
    pub fn from_metadata(md: &Metadata, tokenizer: &Tokenizer) -> Result<Self> {
        let (bos, eos) = special_texts(tokenizer);
        let (source, origin) = if md.get(CHAT_TEMPLATE_KEY).is_some() {
            (
                md.get_str(CHAT_TEMPLATE_KEY)?.to_owned(),
                TemplateOrigin::Metadata,
            )
        } else if tokenizer.token_id("<start_of_turn>").is_some() {
            (GEMMA.to_owned(), TemplateOrigin::Gemma)
        } else {
            (CHATML.to_owned(), TemplateOrigin::ChatMl)
        };
        let mut t = Self::new(source, bos, eos)?;
        t.origin = origin;
        Ok(t)
    }

    /// A template given by the user for a model: a built-in one by name
    /// (`chatml`, `gemma`) or Jinja source, with the tokenizer's BOS and EOS
    /// texts (as llama.cpp's `--chat-template`).
    ///
    /// ```
    /// use realm_core::chat::{ChatMessage, ChatTemplate, TemplateOrigin};
    /// use realm_core::tokenizer::{Tokenizer, Vocab, VocabKind};
    /// let pieces = ["<unk>", "<s>", "</s>", "▁", "h", "i"];
    /// let vocab = Vocab::new(VocabKind::Spm, pieces.iter().map(|s| s.to_string()).collect());
    /// let tok = Tokenizer::from_parts(vocab)?;
    /// let t = ChatTemplate::for_tokenizer("chatml", &tok)?;
    /// assert_eq!(t.origin(), TemplateOrigin::ChatMl);
    /// let t = ChatTemplate::for_tokenizer("{{ bos_token }}{{ messages[0].content }}!", &tok)?;
    /// assert_eq!(t.render(&[ChatMessage::new("user", "Hi")], true)?, "<s>Hi!");
    /// assert!(ChatTemplate::for_tokenizer("llama9", &tok).is_err());
    /// # Ok::<(), realm_core::Error>(())
    /// ```
    pub fn for_tokenizer(name_or_source: &str, tokenizer: &Tokenizer) -> Result<Self> {
        let (bos, eos) = special_texts(tokenizer);
        let (source, origin) = match name_or_source {
            "chatml" => (CHATML, TemplateOrigin::ChatMl),
            "gemma" => (GEMMA, TemplateOrigin::Gemma),
            s if s.contains("{{") || s.contains("{%") => (s, TemplateOrigin::Custom),
            other => {
                return Err(Error::ChatTemplate(format!(
                    "`{other}` is neither a built-in template (chatml, gemma) nor Jinja"
                )))
            }
        };
        let mut t = Self::new(source, bos, eos)?;
        t.origin = origin;
        Ok(t)
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from.
    pub fn origin(&self) -> TemplateOrigin {
        self.origin
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends with
    /// the opening of the assistant's turn. Errors (including the
    /// template's own `raise_exception`) name the template line.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &())
    }

    /// [`ChatTemplate::render`] with more variables for the template:
    /// `vars` serialized to a map (llama.cpp's server passes a request's
    /// `chat_template_kwargs`, such as `enable_thinking`, and its
    /// `reasoning_effort` so). `messages`, `add_generation_prompt`,
    /// `bos_token` and `eos_token` are the render's own, whatever `vars`
    /// holds; `()` adds nothing.
    ///
    /// ```
    /// use realm_core::chat::{ChatMessage, ChatTemplate};
    /// let t = ChatTemplate::new("{{ messages[0].content }}{% if think %}!{% endif %}", "", "")?;
    /// let hi = [ChatMessage::new("user", "Hi")];
    /// let vars = std::collections::BTreeMap::from([("think", true)]);
    /// assert_eq!(t.render_with(&hi, true, &vars)?, "Hi!");
    /// # Ok::<(), realm_core::Error>(())
    /// ```
    pub fn render_with<V: serde::Serialize>(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        vars: &V,
    ) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_iter([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        self.render_value(Value::from(messages), add_generation_prompt, vars)
    }

    /// [`ChatTemplate::render_with`] for messages with more than a role
    /// and a text: anything that serializes to a list of maps, such as
    /// OpenAI's messages with their `tool_calls` and `tool_call_id`, which
    /// templates that know tools write in their own format.
    ///
    /// ```
    /// use realm_core::chat::ChatTemplate;
    /// let t = ChatTemplate::new(
    ///     "{% for m in messages %}{{ m.tool_calls[0].function.arguments | tojson }}{% endfor %}",
    ///     "", "")?;
    /// let messages = serde_json::json!([{"role": "assistant", "content": null,
    ///     "tool_calls": [{"function": {"name": "f", "arguments": {"city": "Paris", "n": 2}}}]}]);
    /// assert_eq!(t.render_messages(&messages, false, &())?, r#"{"city": "Paris", "n": 2}"#);
    /// # Ok::<(), realm_core::Error>(())
    /// ```
    pub fn render_messages<M: serde::Serialize, V: serde::Serialize>(
        &self,
        messages: &M,
        add_generation_prompt: bool,
        vars: &V,
    ) -> Result<String> {
        self.render_value(Value::from_serialize(messages), add_generation_prompt, vars)
    }

    fn render_value<V: serde::Serialize>(
        &self,
        messages: Value,
        add_generation_prompt: bool,
        vars: &V,
    ) -> Result<String> {
        let env = environment();
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| self.error(&e))?;
        let own = [
            ("messages", messages),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(self.bos_token.as_str())),
            ("eos_token", Value::from(self.eos_token.as_str())),
        ];
        let extra = Value::from_serialize(vars);
        let mut ctx: Vec<(Value, Value)> = Vec::new();
        if let Ok(keys) = extra.try_iter() {
            for key in keys {
                let taken = own.iter().any(|(k, _)| key.as_str() == Some(*k));
                if !taken {
                    let v = extra.get_item(&key).unwrap_or_default();
                    ctx.push((key, v));
                }
            }
        }
        ctx.extend(own.into_iter().map(|(k, v)| (Value::from(k), v)));
        tmpl.render(Value::from_iter(ctx))
            .map_err(|e| self.error(&e))
    }

    fn error(&self, e: &minijinja::Error) -> Error {
        let mut msg = match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        };
        if let Some(line) = e.line() {
            let text = self
                .source
                .lines()
                .nth(line.saturating_sub(1))
                .unwrap_or("")
                .trim();
            msg.push_str(&format!(" (line {line}: `{text}`)"));
        }
        Error::ChatTemplate(msg)
    }
}

/// The texts of a tokenizer's BOS and EOS tokens (empty where it has none).
fn special_texts(tokenizer: &Tokenizer) -> (String, String) {
    let text = |id: Option<u32>| -> String {
        id.and_then(|id| tokenizer.token_text(id).ok())
            .unwrap_or_default()
            .to_owned()
    };
    (text(tokenizer.bos()), text(tokenizer.eos()))
}

/// A Jinja environment configured like `transformers`' chat templating.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("strftime_now", |format: String| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        strftime(&format, now)
    });
    env.add_filter("tojson", tojson);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env
}

/// `tojson` as transformers defines it for chat templates: Python's
/// `json.dumps` (`", "` and `": "` between items, `","` after an item
/// when indenting; text as it is, not escaped for HTML as Jinja's own
/// filter does), with its `indent`, `separators` and `sort_keys`
/// arguments.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_string(),
            None => " ".repeat(usize::try_from(v).unwrap_or(0)),
        }),
    };
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson's separators are two strings",
            ))
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let mut out = String::new();
    let style = JsonStyle {
        indent,
        item,
        key,
        sort_keys: sort_keys.unwrap_or(false),
    };
    style.write(value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// How [`tojson`] writes JSON.
struct JsonStyle {
    indent: Option<String>,
    item: String,
    key: String,
    sort_keys: bool,
}

impl JsonStyle {
    fn write(
        &self,
        v: &Value,
        depth: usize,
        out: &mut String,
    ) -> std::result::Result<(), minijinja::Error> {
        use minijinja::value::ValueKind;
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => match v.as_i64() {
                Some(i) if !format!("{v}").contains(['.', 'e', 'E', 'i', 'N']) => {
                    out.push_str(&i.to_string())
                }
                _ => out.push_str(&python_float(f64::try_from(v.clone()).unwrap_or(f64::NAN))),
            },
            ValueKind::String => json_string(v.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.container(('[', ']'), items.len(), depth, out, |i, out| {
                    self.write(&items[i], depth + 1, out)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                self.container(('{', '}'), keys.len(), depth, out, |i, out| {
                    let k = &keys[i];
                    match k.as_str() {
                        Some(s) => json_string(s, out),
                        None => json_string(&k.to_string(), out),
                    }
                    out.push_str(&self.key);
                    self.write(&v.get_item(k)?, depth + 1, out)
                })?;
            }
            _ => json_string(&v.to_string(), out),
        }
        Ok(())
    }

    /// A list or map of `n` items between `brackets`, each written by `item`.
    fn container(
        &self,
        brackets: (char, char),
        n: usize,
        depth: usize,
        out: &mut String,
        mut item: impl FnMut(usize, &mut String) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(brackets.0);
        if n == 0 {
            out.push(brackets.1);
            return Ok(());
        }
        for i in 0..n {
            if i > 0 {
                out.push_str(&self.item);
            }
            if let Some(ind) = &self.indent {
                out.push('\n');
                out.push_str(&ind.repeat(depth + 1));
            }
            item(i, out)?;
        }
        if let Some(ind) = &self.indent {
            out.push('\n');
            out.push_str(&ind.repeat(depth));
        }
        out.push(brackets.1);
        Ok(())
    }
}

/// A JSON string as Python's `json.dumps(..., ensure_ascii=False)` writes
/// it.
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `repr` writes it: the shortest digits that read
/// back, `1.0` for a whole number, an exponent below 1e-4 and from 1e16.
fn python_float(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        // Rust writes `1e-5` and `1.5e16`; Python `1e-05` and `1.5e+16`.
        let e = format!("{x:e}");
        let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let s = format!("{x}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// `secs` seconds after the Unix epoch (UTC) as `format` says, with C's
/// `strftime` codes (`%Y %y %m %d %e %j %H %I %M %S %p %B %b %h %A %a %%`):
/// transformers' `strftime_now`, which templates use for today's date
/// (gpt-oss's, Llama 3.1's).
fn strftime(format: &str, secs: u64) -> std::result::Result<String, minijinja::Error> {
    let days = secs / 86_400;
    let (h, mi, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // The civil date of a day count: years of 400 (146,097 days) from
    // 0000-03-01, then centuries, four-year groups and years, with the
    // year starting in March so that a leap day is its last.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_march = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_march + 2) / 153;
    let day = doy_march - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    let leap = year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400));
    let before: [u64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = before[(month - 1) as usize] + day + u64::from(leap && month > 2);
    // 1970-01-01 was a Thursday.
    let weekday = ((days + 3) % 7) as usize;
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let code = chars.next().unwrap_or('%');
        let piece = match code {
            'Y' => year.to_string(),
            'y' => format!("{:02}", year % 100),
            'm' => format!("{month:02}"),
            'd' => format!("{day:02}"),
            'e' => format!("{day:>2}"),
            'j' => format!("{yday:03}"),
            'H' => format!("{h:02}"),
            'I' => format!("{:02}", (h + 11) % 12 + 1),
            'M' => format!("{mi:02}"),
            'S' => format!("{s:02}"),
            'p' => (if h < 12 { "AM" } else { "PM" }).to_string(),
            'B' => month_name.to_string(),
            'b' | 'h' => month_name[..3].to_string(),
            'A' => WEEKDAYS[weekday].to_string(),
            'a' => WEEKDAYS[weekday][..3].to_string(),
            '%' => "%".to_string(),
            other => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: %{other} is not supported"),
                ))
            }
        };
        out.push_str(&piece);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_formats_dates() {
        // 2026-12-06 02:25:58 UTC, a Sunday; 2024-02-29 (a leap day) 13:05.
        let f = |fmt: &str, secs| strftime(fmt, secs).unwrap();
        let t = 1_796_523_958;
        assert_eq!(f("%Y-%m-%d %H:%M:%S", t), "2026-12-06 02:25:58");
        assert_eq!(
            f("%d %b %Y, %A (%a) %B %j %e %y %%", t),
            "06 Dec 2026, Sunday (Sun) December 340  6 26 %"
        );
        let leap = 1_709_211_900;
        assert_eq!(f("%Y-%m-%d %I:%M %p %j", leap), "2024-02-29 01:05 PM 060");
        assert_eq!(f("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        assert!(strftime("%Q", 0).is_err());
    }

    /// `tojson` writes what Python's `json.dumps` writes, as transformers
    /// calls it (the expected texts are Python's, for the same value).
    #[test]
    fn tojson_is_pythons() {
        let value = serde_json::json!({
            "b": [1, 2.5, 1e-5, 1e16, 0.1, true, null],
            "a": "x\"\\\n\té<>&\u{1}",
            "e": {},
            "l": [],
        });
        let t = |src: &str| {
            ChatTemplate::new(src, "", "")
                .unwrap()
                .render_messages(&[&value], false, &())
                .unwrap()
        };
        assert_eq!(
            t("{{ messages[0] | tojson }}"),
            r#"{"b": [1, 2.5, 1e-05, 1e+16, 0.1, true, null], "a": "x\"\\\n\té<>&\u0001", "e": {}, "l": []}"#
        );
        assert_eq!(
            t("{{ messages[0] | tojson(indent=2) }}"),
            "{\n  \"b\": [\n    1,\n    2.5,\n    1e-05,\n    1e+16,\n    0.1,\n    true,\n    null\n  ],\n  \
             \"a\": \"x\\\"\\\\\\n\\té<>&\\u0001\",\n  \"e\": {},\n  \"l\": []\n}"
        );
        assert_eq!(
            t("{{ messages[0] | tojson(sort_keys=true, separators=(',', ':')) }}"),
            r#"{"a":"x\"\\\n\té<>&\u0001","b":[1,2.5,1e-05,1e+16,0.1,true,null],"e":{},"l":[]}"#
        );
    }

    /// `loop.previtem` and `loop.nextitem` (Hermes 3's template reads
    /// them to group tool results).
    #[test]
    fn loops_see_their_neighbours() {
        let t = ChatTemplate::new(
            "{% for m in messages %}{{ loop.previtem.content if loop.previtem else '^' }}\
             {{ m.content }}{{ loop.nextitem.content if loop.nextitem else '$' }} {% endfor %}",
            "",
            "",
        )
        .unwrap();
        let m = |c: &str| ChatMessage::new("user", c);
        let out = t.render(&[m("a"), m("b"), m("c")], false).unwrap();
        assert_eq!(out, "^ab abc bc$ ");
    }

    #[test]
    fn python_string_methods_and_namespace() {
        let src = "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}\
                   {{ m.content.strip().upper() }}{% if not loop.last %}|{% endif %}{% endfor %} {{ ns.n }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let out = t
            .render(
                &[
                    ChatMessage::new("user", "  a "),
                    ChatMessage::new("user", "b"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(out, "A|B 2");
    }

    #[test]
    fn errors_name_the_line() {
        let err = ChatTemplate::new("ok\n{% if %}", "", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let t = ChatTemplate::new("a\nb\n{{ raise_exception('no system role') }}", "", "").unwrap();
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(
            err.contains("no system role") && err.contains("line 3"),
            "{err}"
        );
    }
}
