//! GBNF text to rules: rule names, literals, character classes, groups,
//! alternatives and repetition (`*`, `+`, `?`, `{m}`, `{m,}`, `{m,n}`).
//! Repetitions are rewritten into helper rules, so a parsed grammar holds
//! only sequences of characters, character classes and rule references.

use std::collections::HashMap;

use super::{Elem, GrammarError};

/// Most times a repetition may repeat its item, and most helper rules one
/// repetition may add (a bound as llama.cpp keeps one, against grammars
/// that would take all memory).
pub(super) const MAX_REPETITION: u64 = 2000;

/// Most elements a whole grammar may hold.
const MAX_ELEMENTS: usize = 1 << 22;

/// The rules of a grammar as parsed: `rules[id]` is a rule's alternatives,
/// each element list ending in [`Elem::Alt`] or [`Elem::End`].
pub(super) struct Parsed {
    pub rules: Vec<Vec<Elem>>,
    pub names: Vec<String>,
}

/// Parses GBNF text.
pub(super) fn parse(text: &str) -> Result<Parsed, GrammarError> {
    let mut p = Parser {
        src: text,
        pos: 0,
        symbols: HashMap::new(),
        names: Vec::new(),
        rules: Vec::new(),
        defined: Vec::new(),
        elements: 0,
    };
    p.skip_space(true);
    while p.pos < p.src.len() {
        p.rule()?;
    }
    for (id, defined) in p.defined.iter().enumerate() {
        if !defined {
            return Err(GrammarError::UndefinedRule(p.names[id].clone()));
        }
    }
    Ok(Parsed {
        rules: p.rules,
        names: p.names,
    })
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    symbols: HashMap<String, u32>,
    names: Vec<String>,
    rules: Vec<Vec<Elem>>,
    /// Whether each symbol has a definition (helper rules always do).
    defined: Vec<bool>,
    elements: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn peek_at(&self, k: usize) -> Option<u8> {
        self.src.as_bytes().get(self.pos + k).copied()
    }

    fn error(&self, message: impl Into<String>) -> GrammarError {
        let before = &self.src[..self.pos];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        GrammarError::Syntax {
            line,
            column,
            message: message.into(),
        }
    }

    /// Skips blanks and `#` comments; newlines too where `newlines`.
    fn skip_space(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            match c {
                b' ' | b'\t' => self.pos += 1,
                b'\r' | b'\n' if newlines => self.pos += 1,
                b'#' => {
                    while !matches!(self.peek(), None | Some(b'\r' | b'\n')) {
                        self.pos += 1;
                    }
                }
                _ => break,
            }
        }
    }

    fn name(&mut self) -> Result<&str, GrammarError> {
        let start = self.pos;
        while self.peek().is_some_and(is_word) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error("expected a rule name"));
        }
        Ok(&self.src[start..self.pos])
    }

    fn symbol(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.symbols.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        self.symbols.insert(name.to_string(), id);
        self.names.push(name.to_string());
        self.rules.push(Vec::new());
        self.defined.push(false);
        id
    }

    /// A new helper rule named after the rule being parsed.
    fn helper(&mut self, base: &str) -> u32 {
        let id = self.names.len() as u32;
        let name = format!("{base}_{id}");
        self.symbols.insert(name.clone(), id);
        self.names.push(name);
        self.rules.push(Vec::new());
        self.defined.push(true);
        id
    }

    fn define(&mut self, id: u32, elems: Vec<Elem>) -> Result<(), GrammarError> {
        self.elements += elems.len();
        if self.elements > MAX_ELEMENTS {
            return Err(self.error("the grammar is too large"));
        }
        self.rules[id as usize] = elems;
        self.defined[id as usize] = true;
        Ok(())
    }

    /// `name ::= alternatives` and the end of its line.
    fn rule(&mut self) -> Result<(), GrammarError> {
        let name = self.name()?.to_string();
        self.skip_space(false);
        if !self.src[self.pos..].starts_with("::=") {
            return Err(self.error("expected `::=`"));
        }
        self.pos += 3;
        self.skip_space(true);
        let id = self.symbol(&name);
        if self.defined[id as usize] {
            return Err(GrammarError::DuplicateRule(name));
        }
        let elems = self.alternatives(&name, false)?;
        self.define(id, elems)?;
        match self.peek() {
            None => {}
            Some(b'\n') => self.pos += 1,
            Some(b'\r') => self.pos += if self.peek_at(1) == Some(b'\n') { 2 } else { 1 },
            Some(_) => return Err(self.error("expected the end of the line")),
        }
        self.skip_space(true);
        Ok(())
    }

    fn alternatives(&mut self, name: &str, nested: bool) -> Result<Vec<Elem>, GrammarError> {
        let mut elems = Vec::new();
        self.sequence(name, nested, &mut elems)?;
        while self.peek() == Some(b'|') {
            elems.push(Elem::Alt);
            self.pos += 1;
            self.skip_space(true);
            self.sequence(name, nested, &mut elems)?;
        }
        elems.push(Elem::End);
        Ok(elems)
    }

    /// One alternative's items, appended to `out`.
    fn sequence(
        &mut self,
        name: &str,
        nested: bool,
        out: &mut Vec<Elem>,
    ) -> Result<(), GrammarError> {
        // Where the last item (the one a repetition applies to) begins.
        let mut last: Option<usize> = None;
        while let Some(c) = self.peek() {
            match c {
                b'"' => {
                    self.pos += 1;
                    last = Some(out.len());
                    loop {
                        match self.peek() {
                            None => return Err(self.error("unterminated string literal")),
                            Some(b'"') => break,
                            Some(_) => {
                                let ch = self.char()?;
                                out.push(Elem::Char(ch));
                            }
                        }
                    }
                    self.pos += 1;
                    if out.len() == last.unwrap_or(0) {
                        // The empty literal matches nothing: no item.
                        last = None;
                    }
                }
                b'[' => {
                    self.pos += 1;
                    last = Some(out.len());
                    let negated = self.peek() == Some(b'^');
                    if negated {
                        self.pos += 1;
                    }
                    let start = out.len();
                    loop {
                        match self.peek() {
                            None => return Err(self.error("unterminated character class")),
                            Some(b']') => break,
                            Some(_) => {}
                        }
                        let lo = self.char()?;
                        out.push(match (out.len() == start, negated) {
                            (true, false) => Elem::Char(lo),
                            (true, true) => Elem::CharNot(lo),
                            (false, _) => Elem::CharAlt(lo),
                        });
                        if self.peek() == Some(b'-')
                            && !matches!(self.peek_at(1), Some(b']') | None)
                        {
                            self.pos += 1;
                            let hi = self.char()?;
                            out.push(Elem::RangeUpper(hi));
                        }
                    }
                    if out.len() == start {
                        return Err(self.error("empty character class"));
                    }
                    self.pos += 1;
                }
                b'.' => {
                    self.pos += 1;
                    last = Some(out.len());
                    out.push(Elem::Any);
                }
                b'(' => {
                    self.pos += 1;
                    self.skip_space(true);
                    let sub = self.helper(name);
                    let elems = self.alternatives(name, true)?;
                    self.define(sub, elems)?;
                    if self.peek() != Some(b')') {
                        return Err(self.error("expected `)`"));
                    }
                    self.pos += 1;
                    last = Some(out.len());
                    out.push(Elem::Rule(sub));
                }
                b'<' | b'!' => {
                    return Err(self.error("token references (`<...>`) are not supported"));
                }
                b'*' | b'+' | b'?' | b'{' => {
                    let (min, max) = self.repetition()?;
                    let Some(start) = last else {
                        return Err(self.error("a repetition needs an item before it"));
                    };
                    self.repeat(name, out, start, min, max)?;
                }
                c if is_word(c) => {
                    let r = self.name()?.to_string();
                    let id = self.symbol(&r);
                    last = Some(out.len());
                    out.push(Elem::Rule(id));
                }
                _ => break,
            }
            self.skip_space(nested);
        }
        Ok(())
    }

    /// `*`, `+`, `?` or `{m}`, `{m,}`, `{m,n}`: (min, max or None).
    fn repetition(&mut self) -> Result<(u64, Option<u64>), GrammarError> {
        let c = self.peek().unwrap_or(0);
        self.pos += 1;
        let bounds = match c {
            b'*' => (0, None),
            b'+' => (1, None),
            b'?' => (0, Some(1)),
            _ => {
                self.skip_space(true);
                let min = self.int()?;
                self.skip_space(true);
                let max = match self.peek() {
                    Some(b'}') => Some(min),
                    Some(b',') => {
                        self.pos += 1;
                        self.skip_space(true);
                        let max = if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                            Some(self.int()?)
                        } else {
                            None
                        };
                        self.skip_space(true);
                        if self.peek() != Some(b'}') {
                            return Err(self.error("expected `}`"));
                        }
                        max
                    }
                    _ => return Err(self.error("expected `,` or `}`")),
                };
                self.pos += 1;
                (min, max)
            }
        };
        if bounds.0 > MAX_REPETITION || bounds.1.is_some_and(|m| m > MAX_REPETITION) {
            return Err(self.error(format!("repetitions are limited to {MAX_REPETITION}")));
        }
        if bounds.1.is_some_and(|m| m < bounds.0) {
            return Err(self.error("a repetition's maximum is below its minimum"));
        }
        Ok(bounds)
    }

    fn int(&mut self) -> Result<u64, GrammarError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.src[start..self.pos]
            .parse()
            .map_err(|_| self.error("expected a number"))
    }

    /// Rewrites the item `out[start..]` as repeated `min` to `max` times:
    /// the item `min` times, then for an open end a rule `R ::= item R |`,
    /// or for `max - min` optional ones nested rules `R_k ::= item R_k-1 |`.
    fn repeat(
        &mut self,
        name: &str,
        out: &mut Vec<Elem>,
        start: usize,
        min: u64,
        max: Option<u64>,
    ) -> Result<(), GrammarError> {
        let item: Vec<Elem> = out.split_off(start);
        let copies = min.max(max.unwrap_or(0)).max(1) as usize;
        if self.elements + item.len() * copies > MAX_ELEMENTS {
            return Err(self.error("the grammar is too large"));
        }
        for _ in 0..min {
            out.extend_from_slice(&item);
        }
        match max {
            None => {
                let r = self.helper(name);
                let mut body = item;
                body.extend([Elem::Rule(r), Elem::Alt, Elem::End]);
                self.define(r, body)?;
                out.push(Elem::Rule(r));
            }
            Some(max) if max > min => {
                let mut inner: Option<u32> = None;
                for _ in 0..max - min {
                    let r = self.helper(name);
                    let mut body = item.clone();
                    body.extend(inner.map(Elem::Rule));
                    body.extend([Elem::Alt, Elem::End]);
                    self.define(r, body)?;
                    inner = Some(r);
                }
                out.extend(inner.map(Elem::Rule));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// One character of a literal or class, escapes decoded.
    fn char(&mut self) -> Result<u32, GrammarError> {
        let rest = &self.src[self.pos..];
        let Some(c) = rest.chars().next() else {
            return Err(self.error("unexpected end of the grammar"));
        };
        if c != '\\' {
            self.pos += c.len_utf8();
            return Ok(c as u32);
        }
        let e = rest.as_bytes().get(1).copied();
        let hex = |digits: usize, p: &mut Self| -> Result<u32, GrammarError> {
            let h = p.src.get(p.pos + 2..p.pos + 2 + digits);
            match h.and_then(|h| {
                u32::from_str_radix(h, 16)
                    .ok()
                    .filter(|_| h.bytes().all(|b| b.is_ascii_hexdigit()))
            }) {
                Some(v) => {
                    p.pos += 2 + digits;
                    Ok(v)
                }
                None => Err(p.error(format!("expected {digits} hex digits"))),
            }
        };
        match e {
            Some(b'x') => hex(2, self),
            Some(b'u') => hex(4, self),
            Some(b'U') => hex(8, self),
            Some(b @ (b't' | b'r' | b'n' | b'\\' | b'"' | b'[' | b']' | b'-')) => {
                self.pos += 2;
                Ok(match b {
                    b't' => '\t' as u32,
                    b'r' => '\r' as u32,
                    b'n' => '\n' as u32,
                    b => b as u32,
                })
            }
            _ => Err(self.error("unknown escape")),
        }
    }
}
