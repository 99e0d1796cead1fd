//! JSON schemas to GBNF: the grammar of the JSON documents a schema
//! describes, written to generate the same documents as llama.cpp's
//! converter (the same whitespace, property order and number forms), so
//! that a schema constrains Realm and llama.cpp alike.
//!
//! Supported: `type` (one or a list), `properties`, `required`,
//! `additionalProperties`, `items` / `prefixItems`, `minItems`,
//! `maxItems`, `enum`, `const`, `anyOf` / `oneOf`, `$ref` into the same
//! document (recursion included), `minLength` / `maxLength`, `format`
//! (`date`, `time`, `date-time`, `uuid`) and `pattern` (see `regex`) for
//! strings, `minimum` / `maximum` and their exclusive forms on integers,
//! and `allOf` as llama.cpp reads it. Refused with an error rather than
//! ignored: patterns outside that subset and `$ref` loops. Annotations
//! (`title`, `description`, `default`, ...) and bounds on non-integer
//! numbers change nothing, as in llama.cpp.

use std::collections::{BTreeMap, HashSet};

use serde_json::Value;

use super::GrammarError;

/// Optional whitespace between tokens: nothing, a space, or one or two
/// newlines and up to 20 blanks of indentation.
const SPACE: &str = r#"| " " | "\n"{1,2} [ \t]{0,20}"#;

/// The built-in rules and those each needs.
const PRIMITIVES: &[(&str, &str, &[&str])] = &[
    ("boolean", r#"("true" | "false")"#, &[]),
    ("null", r#""null""#, &[]),
    ("decimal-part", "[0-9]{1,16}", &[]),
    ("integral-part", "[0] | [1-9] [0-9]{0,15}", &[]),
    (
        "number",
        r#"("-"? integral-part) ("." decimal-part)? ([eE] [-+]? integral-part)?"#,
        &["integral-part", "decimal-part"],
    ),
    ("integer", r#"("-"? integral-part)"#, &["integral-part"]),
    (
        "char",
        r#"[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})"#,
        &[],
    ),
    ("string", r#""\"" char* "\"""#, &["char"]),
    (
        "value",
        "object | array | string | number | boolean | null",
        &["object", "array", "string", "number", "boolean", "null"],
    ),
    (
        "object",
        r#""{" space ( string ":" space value ("," space string ":" space value)* )? space "}""#,
        &["string", "value"],
    ),
    (
        "array",
        r#""[" space ( value ("," space value)* )? space "]""#,
        &["value"],
    ),
    (
        "uuid",
        r#""\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\"""#,
        &[],
    ),
    (
        "date",
        r#"[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )"#,
        &[],
    ),
    (
        "time",
        r#"([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )"#,
        &[],
    ),
    ("date-time", r#"date "T" time"#, &["date", "time"]),
    ("date-string", r#""\"" date "\"""#, &["date"]),
    ("time-string", r#""\"" time "\"""#, &["time"]),
    ("date-time-string", r#""\"" date-time "\"""#, &["date-time"]),
];

/// The GBNF grammar (rules sorted by name, `root` the schema's) of the
/// JSON documents `schema` describes.
///
/// ```
/// use realm_models::grammar::{schema_to_gbnf, Grammar, Matcher};
/// let schema = serde_json::json!({
///     "type": "object",
///     "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
///     "required": ["name"]
/// });
/// let g = Grammar::parse(&schema_to_gbnf(&schema).unwrap()).unwrap();
/// let mut m = Matcher::new(std::sync::Arc::new(g));
/// m.accept(br#"{"name": "Ada", "age": 36}"#).unwrap();
/// assert!(m.is_complete());
/// assert!(!m.accepts(b" "));
/// ```
pub fn schema_to_gbnf(schema: &Value) -> Result<String, GrammarError> {
    convert(schema).map(|g| g.source().to_string())
}

/// The grammar of `schema`'s documents, parsed.
pub(super) fn convert(schema: &Value) -> Result<super::Grammar, GrammarError> {
    let mut c = Converter {
        doc: schema,
        rules: BTreeMap::new(),
        resolving: HashSet::new(),
    };
    c.rules.insert("space".into(), SPACE.into());
    c.visit(schema, "", "#")?;
    let mut out = String::new();
    for (name, body) in &c.rules {
        out.push_str(name);
        out.push_str(" ::= ");
        out.push_str(body);
        out.push('\n');
    }
    // What comes out parses (a schema that only refers to itself does not:
    // its rule is left-recursive).
    super::Grammar::parse(&out)
}

/// A grammar of the GBNF `rules` (`(name, expression)`, `root` among
/// them) and, for each name of `values`, a rule matching the JSON
/// documents of its schema (a name GBNF accepts, not `root` nor a
/// built-in's such as `string`). Tool calls framed by a model's markers
/// are written so.
pub(crate) fn convert_framed(
    rules: &[(&str, String)],
    values: &[(String, &Value)],
) -> Result<super::Grammar, GrammarError> {
    let empty = Value::Null;
    let mut c = Converter {
        doc: values.first().map_or(&empty, |(_, v)| v),
        rules: BTreeMap::new(),
        resolving: HashSet::new(),
    };
    c.rules.insert("space".into(), SPACE.into());
    for (name, schema) in values {
        c.doc = schema;
        let rule = c.visit(schema, name, "#")?;
        if rule != *name {
            c.rules.insert(name.clone(), rule);
        }
    }
    for (name, body) in rules {
        c.rules.insert((*name).to_string(), body.clone());
    }
    let mut out = String::new();
    for (name, body) in &c.rules {
        out.push_str(&format!("{name} ::= {body}\n"));
    }
    super::Grammar::parse(&out)
}

/// A GBNF literal matching exactly `text`.
pub(crate) fn gbnf_literal(text: &str) -> String {
    literal(text)
}

struct Converter<'a> {
    doc: &'a Value,
    rules: BTreeMap<String, String>,
    /// `$ref`s being converted (a reference back to one is recursion).
    resolving: HashSet<String>,
}

fn error(path: &str, message: impl Into<String>) -> GrammarError {
    GrammarError::Schema {
        path: path.to_string(),
        message: message.into(),
    }
}

/// A rule name from any text: runs of other characters become `-`.
fn rule_name(name: &str) -> String {
    let mut out = String::new();
    let mut run = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            out.push(c);
            run = false;
        } else if !run {
            out.push('-');
            run = true;
        }
    }
    out
}

/// A GBNF literal matching exactly `text`.
fn literal(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Most digits of an integer with an open end (as llama.cpp bounds them).
const OPEN_DIGITS: u32 = 16;

/// An integer's bound: `key`'s value, rounded inwards (`up` for a lower
/// bound).
fn bound(
    obj: &serde_json::Map<String, Value>,
    key: &str,
    up: bool,
    path: &str,
) -> Result<Option<i128>, GrammarError> {
    let Some(v) = obj.get(key) else {
        return Ok(None);
    };
    if let Some(i) = v.as_i64() {
        return Ok(Some(i128::from(i)));
    }
    let f = v
        .as_f64()
        .filter(|f| f.abs() < 1e18)
        .ok_or_else(|| error(path, format!("{key} must be a number")))?;
    Ok(Some(if up { f.ceil() } else { f.floor() } as i128))
}

/// The grammar of the integers `minimum` / `exclusiveMinimum` to
/// `maximum` / `exclusiveMaximum` allow, written without leading zeros; an
/// open end stops at 16 digits. `None` when there are no bounds.
fn bounded_integer(
    obj: &serde_json::Map<String, Value>,
    path: &str,
) -> Result<Option<String>, GrammarError> {
    let lo = match bound(obj, "minimum", true, path)? {
        Some(m) => Some(m),
        None => bound(obj, "exclusiveMinimum", false, path)?.map(|m| m + 1),
    };
    let hi = match bound(obj, "maximum", false, path)? {
        Some(m) => Some(m),
        None => bound(obj, "exclusiveMaximum", true, path)?.map(|m| m - 1),
    };
    let open = 10i128.pow(OPEN_DIGITS) - 1;
    let (lo, hi) = match (lo, hi) {
        (None, None) => return Ok(None),
        (lo, hi) => (lo.unwrap_or(-open), hi.unwrap_or(open)),
    };
    if ![lo, hi].iter().all(|b| (-open..=open).contains(b)) {
        return Err(error(
            path,
            format!("integer bounds beyond {OPEN_DIGITS} digits are not supported"),
        ));
    }
    if lo > hi {
        return Err(error(path, "the integer's minimum is above its maximum"));
    }
    // Negative numbers as "-" and their magnitude; like llama.cpp's, a
    // range across zero also allows "-0".
    let body = if hi < 0 {
        format!("\"-\" {}", digits_range(-hi, -lo))
    } else if lo < 0 {
        format!("\"-\" {} | {}", digits_range(0, -lo), digits_range(0, hi))
    } else {
        digits_range(lo, hi)
    };
    Ok(Some(format!("({body})")))
}

/// The decimal numerals of `lo..=hi` (both at least 0), a group.
fn digits_range(lo: i128, hi: i128) -> String {
    let (lo_s, hi_s) = (lo.to_string(), hi.to_string());
    let mut alts = Vec::new();
    for len in lo_s.len()..=hi_s.len() {
        let first = if len == 1 {
            0
        } else {
            10i128.pow(len as u32 - 1)
        };
        let last = 10i128.pow(len as u32) - 1;
        let a = lo.max(first).to_string();
        let b = hi.min(last).to_string();
        alts.push(same_length(a.as_bytes(), b.as_bytes()));
    }
    format!("({})", alts.join(" | "))
}

/// The numerals of one length from `a` to `b` (digit strings, `a <= b`).
fn same_length(a: &[u8], b: &[u8]) -> String {
    let Some((&a0, a_rest)) = a.split_first() else {
        return String::new();
    };
    let (&b0, b_rest) = b.split_first().unwrap_or((&b'0', &[]));
    let (a0, b0) = (char::from(a0), char::from(b0));
    if a0 == b0 {
        return format!("[{a0}] {}", same_length(a_rest, b_rest))
            .trim_end()
            .to_string();
    }
    let k = a_rest.len();
    let any = match k {
        0 => String::new(),
        1 => " [0-9]".to_string(),
        k => format!(" [0-9]{{{k}}}"),
    };
    let a_low = a_rest.iter().all(|&d| d == b'0');
    let b_high = b_rest.iter().all(|&d| d == b'9');
    let mut alts = Vec::new();
    let mut from = a0;
    if !a_low {
        alts.push(format!("[{a0}] {}", same_length(a_rest, &vec![b'9'; k])));
        from = (a0 as u8 + 1) as char;
    }
    let to = if b_high { b0 } else { (b0 as u8 - 1) as char };
    if from <= to {
        alts.push(format!("[{from}-{to}]{any}"));
    }
    if !b_high {
        alts.push(format!("[{b0}] {}", same_length(&vec![b'0'; k], b_rest)));
    }
    format!("({})", alts.join(" | "))
}

/// `item` `min` to `max` (None: no limit) times, with `sep` between.
fn repetition(item: &str, min: u64, max: Option<u64>, sep: Option<&str>) -> String {
    if max == Some(0) {
        return String::new();
    }
    if min == 0 && max == Some(1) {
        return format!("{item}?");
    }
    let Some(sep) = sep else {
        return match (min, max) {
            (1, None) => format!("{item}+"),
            (0, None) => format!("{item}*"),
            (min, max) => format!(
                "{item}{{{min},{}}}",
                max.map_or(String::new(), |m| m.to_string())
            ),
        };
    };
    let rest = repetition(
        &format!("({sep} {item})"),
        min.saturating_sub(1),
        max.map(|m| m - 1),
        None,
    );
    let both = format!("{item} {rest}");
    if min == 0 {
        format!("({both})?")
    } else {
        both
    }
}

impl Converter<'_> {
    /// Adds rule `name` (made unique if a different rule has it); returns
    /// the name used.
    fn add_rule(&mut self, name: &str, body: String) -> String {
        let base = rule_name(name);
        let mut key = base.clone();
        let mut i = 0;
        while let Some(existing) = self.rules.get(&key) {
            if *existing == body {
                return key;
            }
            key = format!("{base}{i}");
            i += 1;
        }
        self.rules.insert(key.clone(), body);
        key
    }

    /// Adds a built-in rule and those it needs; returns its name.
    fn primitive(&mut self, ty: &str) -> String {
        self.primitive_as(ty, ty)
    }

    /// Adds built-in rule `ty` under `name`, and the rules it needs.
    fn primitive_as(&mut self, name: &str, ty: &str) -> String {
        let (body, deps) = PRIMITIVES
            .iter()
            .find(|p| p.0 == ty)
            .map_or(("", &[][..]), |p| (p.1, p.2));
        let key = self.add_rule(name, body.to_string());
        for dep in deps {
            if !self.rules.contains_key(*dep) {
                self.primitive(dep);
            }
        }
        key
    }

    /// The rule for `schema`, to be named after `name` (the root's is
    /// `root`); `path` is where it sits, for errors.
    fn visit(&mut self, schema: &Value, name: &str, path: &str) -> Result<String, GrammarError> {
        let reserved = name == "root" || PRIMITIVES.iter().any(|p| p.0 == name);
        let rule = if reserved {
            format!("{name}-")
        } else if name.is_empty() {
            "root".to_string()
        } else {
            name.to_string()
        };
        let sub = if name.is_empty() {
            String::new()
        } else {
            format!("{name}-")
        };
        let Some(obj) = schema.as_object() else {
            return Err(error(path, "a schema must be an object"));
        };
        if let Some(r) = obj.get("$ref") {
            let target = self.reference(r, path)?;
            return Ok(self.add_rule(&rule, target));
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(alts) = obj.get(key) {
                let alts = alts
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .ok_or_else(|| error(path, format!("{key} must be a non-empty array")))?;
                let mut names = Vec::new();
                for (i, alt) in alts.iter().enumerate() {
                    let n = if name.is_empty() {
                        format!("alternative-{i}")
                    } else {
                        format!("{name}-{i}")
                    };
                    names.push(self.visit(alt, &n, &format!("{path}/{key}/{i}"))?);
                }
                return Ok(self.add_rule(&rule, names.join(" | ")));
            }
        }
        let ty = obj.get("type");
        if let Some(Value::Array(types)) = ty {
            if types.is_empty() {
                return Err(error(path, "type must not be empty"));
            }
            let mut names = Vec::new();
            for (i, t) in types.iter().enumerate() {
                let mut alt = obj.clone();
                alt.insert("type".into(), t.clone());
                names.push(self.visit(
                    &Value::Object(alt),
                    &format!("{sub}{i}"),
                    &format!("{path}/type/{i}"),
                )?);
            }
            return Ok(self.add_rule(&rule, names.join(" | ")));
        }
        if let Some(v) = obj.get("const") {
            return Ok(self.add_rule(&rule, literal(&v.to_string())));
        }
        if let Some(values) = obj.get("enum") {
            let values = values
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or_else(|| error(path, "enum must be a non-empty array"))?;
            let alts: Vec<String> = values.iter().map(|v| literal(&v.to_string())).collect();
            return Ok(self.add_rule(&rule, format!("({})", alts.join(" | "))));
        }
        let ty = match ty {
            None => None,
            Some(Value::String(t)) => Some(t.as_str()),
            Some(_) => return Err(error(path, "type must be a string or an array of strings")),
        };
        let has_properties = obj.contains_key("properties")
            || obj
                .get("additionalProperties")
                .is_some_and(|a| *a != Value::Bool(true));
        if let Some(all) = obj.get("allOf") {
            // As llama.cpp reads it: where no properties of its own or a
            // type other than object or string decide first.
            if !has_properties && matches!(ty, None | Some("object" | "string")) {
                return self.all_of(all, &rule, name, path);
            }
        }
        let is_string = ["pattern", "minLength", "maxLength", "format"]
            .iter()
            .any(|k| obj.contains_key(*k));
        let ty = match ty {
            Some(t) => t,
            None if has_properties => "object",
            None if obj.contains_key("items") || obj.contains_key("prefixItems") => "array",
            None if is_string => "string",
            None => return Ok(self.any(&rule)),
        };
        let body = match ty {
            "object" => return self.object(obj, &rule, name, path),
            "array" => return self.array(obj, &rule, &sub, path),
            "string" => return self.string(obj, &rule, path),
            "integer" => {
                if let Some(body) = bounded_integer(obj, path)? {
                    return Ok(self.add_rule(&rule, body));
                }
                "integer"
            }
            "number" | "boolean" | "null" => ty,
            other => return Err(error(path, format!("unknown type `{other}`"))),
        };
        Ok(self.simple(&rule, body))
    }

    /// A built-in type's rule: under its own name, or the root's.
    fn simple(&mut self, rule: &str, ty: &str) -> String {
        self.primitive_as(if rule == "root" { "root" } else { ty }, ty)
    }

    /// Any JSON value.
    fn any(&mut self, rule: &str) -> String {
        let v = self.primitive("value");
        self.add_rule(rule, v)
    }

    fn reference(&mut self, r: &Value, path: &str) -> Result<String, GrammarError> {
        let r = r
            .as_str()
            .ok_or_else(|| error(path, "$ref must be a string"))?;
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(error(
                path,
                format!("$ref `{r}`: only references into the same document are supported"),
            ));
        };
        let name = format!("ref{}", rule_name(pointer));
        if self.rules.contains_key(&name) || self.resolving.contains(r) {
            return Ok(name);
        }
        let doc = self.doc;
        let target = doc
            .pointer(pointer)
            .ok_or_else(|| error(path, format!("$ref `{r}` points at nothing")))?;
        self.resolving.insert(r.to_string());
        let out = self.visit(target, &name, r);
        self.resolving.remove(r);
        out
    }

    fn count(
        obj: &serde_json::Map<String, Value>,
        key: &str,
        path: &str,
    ) -> Result<Option<u64>, GrammarError> {
        match obj.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| error(path, format!("{key} must be a non-negative integer"))),
        }
    }

    fn string(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        rule: &str,
        path: &str,
    ) -> Result<String, GrammarError> {
        if let Some(pattern) = obj.get("pattern") {
            let pattern = pattern
                .as_str()
                .ok_or_else(|| error(path, "pattern must be a string"))?;
            let body = super::regex::pattern_to_gbnf(pattern)
                .map_err(|m| error(path, format!("pattern `{pattern}`: {m}")))?;
            return Ok(self.add_rule(rule, format!("\"\\\"\" {body} \"\\\"\"")));
        }
        if let Some(format) = obj.get("format").and_then(Value::as_str) {
            let prim = match format {
                "uuid" => Some("uuid"),
                "date" => Some("date-string"),
                "time" => Some("time-string"),
                "date-time" => Some("date-time-string"),
                _ => None,
            };
            if let Some(prim) = prim {
                if prim == "uuid" {
                    return Ok(self.simple(rule, "uuid"));
                }
                let p = self.primitive(prim);
                return Ok(self.add_rule(rule, p));
            }
        }
        let min = Self::count(obj, "minLength", path)?.unwrap_or(0);
        let max = Self::count(obj, "maxLength", path)?;
        if min > 0 || max.is_some() {
            if max.is_some_and(|m| m < min) {
                return Err(error(path, "maxLength is below minLength"));
            }
            if min.max(max.unwrap_or(0)) > super::parse::MAX_REPETITION {
                return Err(error(path, "string lengths are limited to 2000"));
            }
            let c = self.primitive("char");
            return Ok(self.add_rule(
                rule,
                format!("\"\\\"\" {} \"\\\"\"", repetition(&c, min, max, None)),
            ));
        }
        Ok(self.simple(rule, "string"))
    }

    fn array(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        rule: &str,
        sub: &str,
        path: &str,
    ) -> Result<String, GrammarError> {
        let key = if obj.contains_key("items") {
            "items"
        } else {
            "prefixItems"
        };
        match obj.get(key) {
            Some(Value::Array(items)) => {
                let mut body = String::from("\"[\" space ");
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        body.push_str(" \",\" space ");
                    }
                    body.push_str(&self.visit(
                        item,
                        &format!("{sub}tuple-{i}"),
                        &format!("{path}/{key}/{i}"),
                    )?);
                }
                body.push_str(" space \"]\"");
                Ok(self.add_rule(rule, body))
            }
            items => {
                let min = Self::count(obj, "minItems", path)?.unwrap_or(0);
                let max = Self::count(obj, "maxItems", path)?;
                if max.is_some_and(|m| m < min) {
                    return Err(error(path, "maxItems is below minItems"));
                }
                if min.max(max.unwrap_or(0)) > super::parse::MAX_REPETITION {
                    return Err(error(path, "array lengths are limited to 2000"));
                }
                let any_items = items.is_none_or(|i| i.as_object().is_some_and(|o| o.is_empty()));
                if any_items && min == 0 && max.is_none() {
                    return Ok(self.simple(rule, "array"));
                }
                let item = match items {
                    Some(i) if !any_items => {
                        self.visit(i, &format!("{sub}item"), &format!("{path}/{key}"))?
                    }
                    _ => {
                        let v = self.primitive("value");
                        self.add_rule(&format!("{sub}item"), v)
                    }
                };
                let body = format!(
                    "\"[\" space {} space \"]\"",
                    repetition(&item, min, max, Some("\",\" space"))
                );
                Ok(self.add_rule(rule, body))
            }
        }
    }

    /// `allOf`, as llama.cpp's converter reads it: the values every
    /// component is an `enum` of, if any; else one object of every
    /// component's properties (those of `anyOf` components optional, the
    /// others required) and no others.
    fn all_of(
        &mut self,
        all: &Value,
        rule: &str,
        name: &str,
        path: &str,
    ) -> Result<String, GrammarError> {
        let parts = all
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| error(path, "allOf must be a non-empty array"))?;
        let mut properties = serde_json::Map::new();
        let mut required = Vec::new();
        let mut enums: Vec<(String, usize)> = Vec::new();
        for part in parts {
            let alts = match part.get("anyOf") {
                Some(Value::Array(alts)) => alts.iter().map(|a| (a, false)).collect(),
                _ => vec![(part, true)],
            };
            for (mut c, is_required) in alts {
                // A `$ref` component stands for what it points at (a chain
                // of references, so long it must be a loop, is an error).
                let mut hops = 0;
                while let Some(r) = c.get("$ref").and_then(Value::as_str) {
                    let target = r.strip_prefix('#').and_then(|p| self.doc.pointer(p));
                    c = target
                        .ok_or_else(|| error(path, format!("$ref `{r}` points at nothing")))?;
                    hops += 1;
                    if hops > 64 {
                        return Err(error(path, format!("$ref `{r}` refers to itself")));
                    }
                }
                if let Some(Value::Object(props)) = c.get("properties") {
                    for (k, v) in props {
                        if !properties.contains_key(k) {
                            properties.insert(k.clone(), v.clone());
                        }
                        if is_required && !required.contains(k) {
                            required.push(k.clone());
                        }
                    }
                } else if let Some(Value::Array(values)) = c.get("enum") {
                    for v in values {
                        let lit = literal(&v.to_string());
                        match enums.iter_mut().find(|(l, _)| *l == lit) {
                            Some((_, n)) => *n += 1,
                            None => enums.push((lit, 1)),
                        }
                    }
                }
            }
        }
        let common: Vec<String> = enums
            .into_iter()
            .filter(|(_, n)| *n == parts.len())
            .map(|(l, _)| l)
            .collect();
        if !common.is_empty() {
            return Ok(self.add_rule(rule, format!("({})", common.join(" | "))));
        }
        let merged = serde_json::json!({
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        });
        let Value::Object(merged) = merged else {
            return Err(error(path, "allOf"));
        };
        self.object(&merged, rule, name, path)
    }

    fn object(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        rule: &str,
        name: &str,
        path: &str,
    ) -> Result<String, GrammarError> {
        let props = match obj.get("properties") {
            None => None,
            Some(Value::Object(p)) => Some(p),
            Some(_) => return Err(error(path, "properties must be an object")),
        };
        // Extra properties: any value, a schema's, or none.
        let extra = match obj.get("additionalProperties") {
            None if props.is_none() => Some(None),
            None | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(None),
            Some(s @ Value::Object(_)) => Some(Some(s)),
            Some(_) => {
                return Err(error(
                    path,
                    "additionalProperties must be a boolean or a schema",
                ))
            }
        };
        let extra_is_any =
            |e: &Option<&Value>| e.is_none_or(|s| s.as_object().is_some_and(|o| o.is_empty()));
        if props.is_none_or(|p| p.is_empty()) && extra.as_ref().is_some_and(extra_is_any) {
            let o = self.primitive("object");
            return Ok(self.add_rule(rule, o));
        }
        let required: HashSet<&str> = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let prefix = if name.is_empty() {
            String::new()
        } else {
            format!("{name}-")
        };
        let mut kv: Vec<(String, String)> = Vec::new();
        let mut required_kv = Vec::new();
        let mut optional = Vec::new();
        let mut names = Vec::new();
        for (prop, schema) in props.into_iter().flatten() {
            let value = self.visit(
                schema,
                &format!("{prefix}{prop}"),
                &format!("{path}/properties/{prop}"),
            )?;
            let key = literal(&Value::String(prop.clone()).to_string());
            let k = self.add_rule(
                &format!("{prefix}{prop}-kv"),
                format!("{key} space \":\" space {value}"),
            );
            if required.contains(prop.as_str()) {
                required_kv.push(k);
            } else {
                optional.push(kv.len());
                kv.push((prop.clone(), k));
            }
            names.push(prop.as_str());
        }
        if let Some(extra) = extra {
            let sub = format!("{prefix}additional");
            let value = match extra {
                Some(s) if !extra_is_any(&Some(s)) => self.visit(
                    s,
                    &format!("{sub}-value"),
                    &format!("{path}/additionalProperties"),
                )?,
                _ => self.primitive("value"),
            };
            let key = if names.is_empty() {
                self.primitive("string")
            } else {
                let body = self.not_names(&names, &format!("{sub}-k"));
                self.add_rule(&format!("{sub}-k"), body)
            };
            let k = self.add_rule(&format!("{sub}-kv"), format!("{key} \":\" space {value}"));
            optional.push(kv.len());
            kv.push(("*".into(), k));
        }
        if required_kv.is_empty() && optional.is_empty() {
            return Ok(self.add_rule(rule, "\"{\" space \"}\"".into()));
        }
        let mut body = String::from("\"{\" space ");
        body.push_str(&required_kv.join(" \",\" space "));
        if !optional.is_empty() {
            body.push_str(" (");
            if !required_kv.is_empty() {
                body.push_str(" \",\" space ( ");
            }
            let alts: Vec<String> = (0..kv.len())
                .map(|i| self.optional_from(&kv[i..], false, &prefix))
                .collect();
            body.push_str(&alts.join(" | "));
            if !required_kv.is_empty() {
                body.push_str(" )");
            }
            body.push_str(" )?");
        }
        body.push_str(" space \"}\"");
        Ok(self.add_rule(rule, body))
    }

    /// The optional properties `kv` in order, the first present unless
    /// `first_optional`, any of the rest after it; `*` (extra properties)
    /// any number of times.
    fn optional_from(
        &mut self,
        kv: &[(String, String)],
        first_optional: bool,
        prefix: &str,
    ) -> String {
        let Some(((prop, k), rest)) = kv.split_first() else {
            return String::new();
        };
        let comma = format!("( \",\" space {k} )");
        let mut out = match (first_optional, prop == "*") {
            (true, true) => format!("{comma}*"),
            (true, false) => format!("{comma}?"),
            (false, true) => format!("{k} {comma}*"),
            (false, false) => k.clone(),
        };
        if !rest.is_empty() {
            let body = self.optional_from(rest, true, prefix);
            let r = self.add_rule(&format!("{prefix}{prop}-rest"), body);
            out.push(' ');
            out.push_str(&r);
        }
        out
    }

    /// A JSON string that is none of `names`: a trie of the names, each
    /// node allowing an end (unless a name ends there), its children's
    /// characters, or any other character followed by anything.
    fn not_names(&mut self, names: &[&str], base: &str) -> String {
        let c = self.primitive("char");
        let strings: Vec<Vec<char>> = names.iter().map(|n| n.chars().collect()).collect();
        let body = self.not_names_node(&strings, 0, base, &c);
        format!("[\"] {body} [\"]")
    }

    /// The rest of a string after a prefix of length `depth` shared by
    /// `names`, such that the whole is none of them.
    fn not_names_node(&mut self, names: &[Vec<char>], depth: usize, base: &str, c: &str) -> String {
        let ends_here = names.iter().any(|n| n.len() == depth);
        let mut next: Vec<char> = names.iter().filter_map(|n| n.get(depth).copied()).collect();
        next.sort_unstable();
        next.dedup();
        // Characters a string holds unescaped: only those can spell a name.
        next.retain(|&ch| ch != '"' && ch != '\\' && ch >= ' ' && ch != '\x7f');
        let mut alts = Vec::new();
        if !ends_here {
            alts.push(String::new());
        }
        let mut excluded = String::new();
        for ch in next {
            let sub: Vec<Vec<char>> = names
                .iter()
                .filter(|n| n.get(depth) == Some(&ch))
                .cloned()
                .collect();
            let rest = self.not_names_node(&sub, depth + 1, base, c);
            let lit = literal(&ch.to_string());
            alts.push(format!("{lit} {rest}"));
            excluded.push_str(&match ch {
                ']' | '-' => format!("\\{ch}"),
                ch => ch.to_string(),
            });
        }
        alts.push(format!(r#"[^"\\\x7F\x00-\x1F{excluded}] {c}*"#));
        alts.push(format!(r#"[\\] (["\\bfnrt] | "u" [0-9a-fA-F]{{4}}) {c}*"#));
        let body = format!("( {} )", alts.join(" | "));
        self.add_rule(&format!("{base}-{depth}"), body)
    }
}
