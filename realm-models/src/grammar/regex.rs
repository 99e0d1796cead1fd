//! A JSON schema's `pattern` (a regular expression) as GBNF, for the
//! subset that maps onto it directly, as llama.cpp's converter does:
//! anchored at both ends (`^...$`), literals and escaped metacharacters,
//! `.` (any character but a line break), classes `[...]` / `[^...]` with
//! ranges, groups `(...)` / `(?:...)`, `|`, and the quantifiers `*`, `+`,
//! `?`, `{m}`, `{m,}`, `{m,n}`, `{,n}`. Beyond llama.cpp's, `\d`, `\w` and
//! `\s` are understood (in and out of classes), and the text stays valid
//! JSON: the pattern describes the string's characters, so a quote,
//! backslash or line break it allows is written escaped (`\"`, `\\`,
//! `\n`), and `.` and negated classes never give a raw quote, backslash or
//! control character (llama.cpp's converter writes them raw). Anything
//! else (lookaround, backreferences, anchors inside, `\b`, ...) is an
//! error.

use super::parse::MAX_REPETITION;

/// Most nested groups.
const MAX_DEPTH: usize = 100;

/// The GBNF of the text `pattern` matches (a group, to follow the JSON
/// string's opening quote).
pub(super) fn pattern_to_gbnf(pattern: &str) -> Result<String, String> {
    let inner = pattern
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix('$'))
        .ok_or("only patterns anchored with ^ and $ are supported")?;
    let mut t = Translator {
        chars: inner.chars().collect(),
        pos: 0,
        depth: 0,
    };
    let body = t.alternatives()?;
    if t.pos < t.chars.len() {
        return Err(format!("unbalanced `{}`", t.chars[t.pos]));
    }
    Ok(format!("({body})"))
}

struct Translator {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

/// A character as it goes inside a GBNF literal or class.
fn escaped(c: char) -> String {
    match c {
        '"' => "\\\"".into(),
        '\\' => "\\\\".into(),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        '\t' => "\\t".into(),
        '[' => "\\[".into(),
        ']' => "\\]".into(),
        '-' => "\\-".into(),
        c => c.to_string(),
    }
}

/// The ranges of `\d`, `\w`, `\s`.
fn shorthand(c: char) -> Option<&'static [(u32, u32)]> {
    match c {
        'd' => Some(&[(0x30, 0x39)]),
        'w' => Some(&[(0x30, 0x39), (0x41, 0x5a), (0x5f, 0x5f), (0x61, 0x7a)]),
        's' => Some(&[(0x20, 0x20), (0x09, 0x0d)]),
        _ => None,
    }
}

impl Translator {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn alternatives(&mut self) -> Result<String, String> {
        let mut alts = vec![self.sequence()?];
        while self.peek() == Some('|') {
            self.pos += 1;
            alts.push(self.sequence()?);
        }
        Ok(alts.join(" | "))
    }

    fn sequence(&mut self) -> Result<String, String> {
        let mut items: Vec<String> = Vec::new();
        while let Some(c) = self.peek() {
            let atom = match c {
                '|' | ')' => break,
                '(' => {
                    self.pos += 1;
                    if self.peek() == Some('?') {
                        if self.chars.get(self.pos + 1) != Some(&':') {
                            return Err("only (?:...) groups are supported".into());
                        }
                        self.pos += 2;
                    }
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return Err("groups nested too deep".into());
                    }
                    let inner = self.alternatives()?;
                    if self.peek() != Some(')') {
                        return Err("unbalanced `(`".into());
                    }
                    self.pos += 1;
                    self.depth -= 1;
                    format!("({inner})")
                }
                '[' => self.class()?,
                '.' => {
                    self.pos += 1;
                    DOT.into()
                }
                '\\' => {
                    let e = *self.chars.get(self.pos + 1).ok_or("a trailing backslash")?;
                    self.pos += 2;
                    match shorthand(e) {
                        Some(ranges) => render_class(false, ranges),
                        None => json_char(self.escape(e)?)?,
                    }
                }
                '*' | '+' | '?' | '{' => return Err(format!("nothing to repeat before `{c}`")),
                '^' | '$' => return Err("anchors inside the pattern are not supported".into()),
                c => {
                    self.pos += 1;
                    json_char(c)?
                }
            };
            let quantifier = self.quantifier()?;
            items.push(atom + &quantifier);
        }
        Ok(items.join(" "))
    }

    /// The character an escape stands for.
    fn escape(&self, e: char) -> Result<char, String> {
        match e {
            'n' => Ok('\n'),
            'r' => Ok('\r'),
            't' => Ok('\t'),
            c if c.is_ascii_punctuation() => Ok(c),
            c => Err(format!("unsupported escape `\\{c}`")),
        }
    }

    /// `*`, `+`, `?`, `{m}`, `{m,}`, `{m,n}`, `{,n}`, or nothing.
    fn quantifier(&mut self) -> Result<String, String> {
        match self.peek() {
            Some(q @ ('*' | '+' | '?')) => {
                self.pos += 1;
                if matches!(self.peek(), Some('?' | '+')) {
                    return Err("lazy and possessive quantifiers are not supported".into());
                }
                Ok(q.to_string())
            }
            Some('{') => {
                let close = self.chars[self.pos..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or("an unterminated `{`")?;
                let inside: String = self.chars[self.pos + 1..self.pos + close].iter().collect();
                self.pos += close + 1;
                let num = |s: &str| -> Result<Option<u64>, String> {
                    if s.is_empty() {
                        return Ok(None);
                    }
                    let n: u64 = s
                        .parse()
                        .map_err(|_| format!("a bad count `{{{inside}}}`"))?;
                    if n > MAX_REPETITION {
                        return Err(format!("counts are limited to {MAX_REPETITION}"));
                    }
                    Ok(Some(n))
                };
                let (min, max) = match inside.split_once(',') {
                    None => {
                        let n = num(&inside)?.ok_or("an empty `{}`")?;
                        (n, Some(n))
                    }
                    Some((a, b)) => (num(a)?.unwrap_or(0), num(b)?),
                };
                if max.is_some_and(|m| m < min) {
                    return Err(format!("`{{{inside}}}` has its maximum below its minimum"));
                }
                Ok(match max {
                    Some(m) if m == min => format!("{{{m}}}"),
                    Some(m) => format!("{{{min},{m}}}"),
                    None => format!("{{{min},}}"),
                })
            }
            _ => Ok(String::new()),
        }
    }

    /// `[...]` or `[^...]`.
    fn class(&mut self) -> Result<String, String> {
        self.pos += 1;
        let negated = self.peek() == Some('^');
        if negated {
            self.pos += 1;
        }
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        let mut first = true;
        loop {
            let c = self.peek().ok_or("an unterminated `[`")?;
            self.pos += 1;
            let lo = match c {
                ']' if !first => break,
                '\\' => {
                    let e = self.peek().ok_or("a trailing backslash")?;
                    self.pos += 1;
                    if let Some(members) = shorthand(e) {
                        ranges.extend_from_slice(members);
                        first = false;
                        continue;
                    }
                    self.escape(e)?
                }
                c => c,
            };
            first = false;
            // `a-z`; a dash first or last is itself.
            let is_range =
                self.peek() == Some('-') && self.chars.get(self.pos + 1).is_some_and(|&n| n != ']');
            if !is_range {
                ranges.push((lo as u32, lo as u32));
                continue;
            }
            self.pos += 1;
            let hi = match self.peek().ok_or("an unterminated `[`")? {
                '\\' => {
                    let e = *self.chars.get(self.pos + 1).ok_or("a trailing backslash")?;
                    self.pos += 2;
                    self.escape(e)?
                }
                c => {
                    self.pos += 1;
                    c
                }
            };
            if (hi as u32) < (lo as u32) {
                return Err(format!("the range `{lo}-{hi}` runs backwards"));
            }
            ranges.push((lo as u32, hi as u32));
        }
        Ok(render_class(negated, &ranges))
    }
}

/// Any character of a JSON string but a line break: one written plainly,
/// or an escape (not `\n` or `\r`).
const DOT: &str = r#"([^"\\\x7F\x00-\x1F] | "\\" (["\\/bft] | "u" [0-9a-fA-F]{4}))"#;

/// Characters a JSON string cannot hold plainly: controls, `"`, `\`,
/// (and DEL, as llama.cpp's string rule has it).
const NOT_PLAIN: [(u32, u32); 4] = [(0, 0x1f), (0x22, 0x22), (0x5c, 0x5c), (0x7f, 0x7f)];

/// How a character is written in a JSON string, as GBNF.
fn json_char(c: char) -> Result<String, String> {
    Ok(match c {
        '"' => r#""\\\"""#.into(),
        '\\' => r#""\\\\""#.into(),
        '\n' => r#""\\n""#.into(),
        '\r' => r#""\\r""#.into(),
        '\t' => r#""\\t""#.into(),
        c if (c as u32) < 0x20 || c == '\x7f' => {
            return Err(format!(
                "the control character {:#04x} is not supported",
                c as u32
            ))
        }
        c => format!("\"{}\"", escaped(c)),
    })
}

/// A class as GBNF over JSON text: its plain members as a class, and the
/// quote, backslash and line breaks it holds as their escapes; a negated
/// class also leaves out what JSON cannot hold plainly.
fn render_class(negated: bool, ranges: &[(u32, u32)]) -> String {
    let hex = |c: u32| format!("\\U{c:08X}");
    let member = |(lo, hi): (u32, u32)| {
        if lo == hi {
            hex(lo)
        } else {
            format!("{}-{}", hex(lo), hex(hi))
        }
    };
    if negated {
        let all: String = ranges
            .iter()
            .chain(&NOT_PLAIN)
            .map(|&r| member(r))
            .collect();
        return format!("[^{all}]");
    }
    // Cut the characters JSON writes escaped out of the ranges.
    let mut plain = Vec::new();
    for &(lo, hi) in ranges {
        let mut from = lo;
        for &(a, b) in &NOT_PLAIN {
            if b < from || a > hi {
                continue;
            }
            if a > from {
                plain.push((from, a - 1));
            }
            from = from.max(b + 1);
        }
        if from <= hi {
            plain.push((from, hi));
        }
    }
    let mut alts = Vec::new();
    if !plain.is_empty() {
        alts.push(format!(
            "[{}]",
            plain.into_iter().map(member).collect::<String>()
        ));
    }
    for c in ['"', '\\', '\n', '\r', '\t'] {
        if ranges
            .iter()
            .any(|&(lo, hi)| lo <= c as u32 && c as u32 <= hi)
        {
            alts.push(json_char(c).unwrap_or_default());
        }
    }
    match alts.len() {
        0 => "[^\\x00-\\U0010FFFF]".into(),
        1 => alts.remove(0),
        _ => format!("({})", alts.join(" | ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals() {
        for (p, want) in [
            ("abc", "anchored"),
            ("^a(b$", "unbalanced"),
            ("^a)b$", "unbalanced"),
            ("^(?=a)$", "(?:"),
            ("^a\\bc$", "escape"),
            ("^*a$", "nothing to repeat"),
            ("^a{3,2}$", "below"),
            ("^a{9999}$", "limited"),
            ("^[a-$", "unterminated"),
            ("^a^b$", "anchors"),
            ("^a+?$", "lazy"),
        ] {
            let e = pattern_to_gbnf(p).unwrap_err();
            assert!(e.contains(want), "{p}: {e}");
        }
    }
}
