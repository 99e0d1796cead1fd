//! Grammar-constrained generation: GBNF grammars (llama.cpp's format) and
//! JSON schemas turned into them, matched a character at a time against
//! the text generated so far, so that sampling only ever picks a token
//! that keeps the text inside the grammar.
//!
//! ```
//! use std::sync::Arc;
//! use realm_models::grammar::{Grammar, Matcher};
//! let g = Arc::new(Grammar::parse(r#"root ::= "yes" | "no""#).unwrap());
//! let mut m = Matcher::new(g);
//! assert!(m.accepts(b"ye"));
//! assert!(!m.accepts(b"yo"));
//! m.accept(b"no").unwrap();
//! assert!(m.is_complete());
//! ```
//!
//! A grammar is a set of rules `name ::= alternatives`, starting at `root`:
//! literals `"..."`, classes `[a-z]` / `[^"\n]`, any character `.`, groups
//! `( ... )`, alternatives `|`, repetition `*`, `+`, `?`, `{m}`, `{m,}`,
//! `{m,n}`, comments `#`; escapes `\n \r \t \\ \" \[ \] \- \xHH \uHHHH
//! \UHHHHHHHH`. Token references (`<[id]>`) are refused.

mod json_schema;
mod matcher;
mod parse;
mod regex;

pub use json_schema::schema_to_gbnf;
pub(crate) use json_schema::{convert_framed, gbnf_literal};
pub use matcher::Matcher;

/// What is wrong with a grammar or a JSON schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrammarError {
    /// The text is not GBNF.
    #[error("grammar syntax error at line {line}, column {column}: {message}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column (in bytes).
        column: usize,
        /// What was expected.
        message: String,
    },
    /// A rule is used but never defined.
    #[error("grammar rule `{0}` is used but not defined")]
    UndefinedRule(String),
    /// A rule is defined twice.
    #[error("grammar rule `{0}` is defined twice")]
    DuplicateRule(String),
    /// There is no `root` rule.
    #[error("the grammar has no `root` rule")]
    NoRoot,
    /// A rule can reach itself without consuming a character, which no
    /// matcher can expand.
    #[error("grammar rule `{0}` is left-recursive")]
    LeftRecursion(String),
    /// The JSON schema uses something the converter does not handle.
    #[error("JSON schema at {path}: {message}")]
    Schema {
        /// Where in the schema (a JSON pointer).
        path: String,
        /// What is wrong or unsupported.
        message: String,
    },
    /// Text was given that the grammar does not allow.
    #[error("the grammar does not allow this text")]
    Rejected,
    /// The grammar is so ambiguous that one character's step would visit
    /// more parser stacks than a matcher allows.
    #[error("the grammar is too ambiguous to match (rewrite nested optional repetitions)")]
    TooComplex,
    /// No token of the vocabulary can continue the text in the grammar
    /// (and it is not complete).
    #[error("no token can continue the text within the grammar")]
    NoToken,
}

/// One element of a rule: alternatives are element lists that end in
/// `Alt` (another follows) or `End` (the rule's last). A character class
/// is a `Char` / `CharNot` / `Any` followed by `CharAlt`s, each of which
/// may be followed by a `RangeUpper` (making it a range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    End,
    Alt,
    Rule(u32),
    Char(u32),
    CharNot(u32),
    CharAlt(u32),
    RangeUpper(u32),
    Any,
}

impl Elem {
    fn ends_sequence(self) -> bool {
        matches!(self, Elem::End | Elem::Alt)
    }
}

/// A parsed grammar: its rules flattened into one element array. Cheap to
/// share (`Arc`) between the sequences that generate under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grammar {
    elems: Vec<Elem>,
    /// Where each rule's first alternative begins in `elems`.
    starts: Vec<u32>,
    names: Vec<String>,
    root: u32,
    /// The GBNF text it was parsed from.
    source: String,
}

impl Grammar {
    /// Parses GBNF text; generation starts at its `root` rule.
    ///
    /// ```
    /// use realm_models::grammar::{Grammar, GrammarError};
    /// assert!(Grammar::parse("root ::= [0-9]+ (\".\" [0-9]+)?").is_ok());
    /// assert_eq!(Grammar::parse("root ::= digit"),
    ///            Err(GrammarError::UndefinedRule("digit".into())));
    /// assert!(matches!(Grammar::parse("root ::= root \"x\" | \"y\""),
    ///                  Err(GrammarError::LeftRecursion(_))));
    /// ```
    pub fn parse(text: &str) -> Result<Self, GrammarError> {
        let parsed = parse::parse(text)?;
        let root = parsed
            .names
            .iter()
            .position(|n| n == "root")
            .ok_or(GrammarError::NoRoot)? as u32;
        let mut elems = Vec::new();
        let mut starts = Vec::with_capacity(parsed.rules.len());
        for rule in &parsed.rules {
            starts.push(elems.len() as u32);
            elems.extend_from_slice(rule);
        }
        let grammar = Self {
            elems,
            starts,
            names: parsed.names,
            root,
            source: text.to_string(),
        };
        grammar.check_left_recursion()?;
        Ok(grammar)
    }

    /// The grammar of the JSON documents a JSON schema describes, as
    /// llama.cpp's converter writes it (see [`schema_to_gbnf`]).
    pub fn from_json_schema(schema: &serde_json::Value) -> Result<Self, GrammarError> {
        json_schema::convert(schema)
    }

    /// The GBNF text of the grammar (for a JSON schema's, the converter's).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Element positions where each alternative of `rule` begins.
    fn alternatives(&self, rule: u32) -> impl Iterator<Item = u32> + '_ {
        let mut pos = Some(self.starts[rule as usize]);
        std::iter::from_fn(move || {
            let start = pos?;
            let mut p = start as usize;
            while !self.elems[p].ends_sequence() {
                p += 1;
            }
            pos = (self.elems[p] == Elem::Alt).then_some(p as u32 + 1);
            Some(start)
        })
    }

    /// Refuses a rule that can reach itself through leftmost positions
    /// (after rules that can match nothing): expanding it would never end.
    fn check_left_recursion(&self) -> Result<(), GrammarError> {
        let n = self.starts.len();
        // Which rules can match the empty string (to a fixpoint).
        let mut nullable = vec![false; n];
        loop {
            let mut changed = false;
            for r in 0..n {
                if nullable[r] {
                    continue;
                }
                let empty = self.alternatives(r as u32).any(|a| {
                    self.elems[a as usize..]
                        .iter()
                        .take_while(|e| !e.ends_sequence())
                        .all(|e| matches!(e, Elem::Rule(s) if nullable[*s as usize]))
                });
                if empty {
                    nullable[r] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // Rules each rule can begin with.
        let firsts: Vec<Vec<u32>> = (0..n as u32)
            .map(|r| {
                let mut out = Vec::new();
                for a in self.alternatives(r) {
                    for e in self.elems[a as usize..]
                        .iter()
                        .take_while(|e| !e.ends_sequence())
                    {
                        match *e {
                            Elem::Rule(s) => {
                                out.push(s);
                                if !nullable[s as usize] {
                                    break;
                                }
                            }
                            _ => break,
                        }
                    }
                }
                out
            })
            .collect();
        // A cycle in that graph: depth-first search with colours.
        let mut colour = vec![0u8; n];
        for r in 0..n {
            if colour[r] != 0 {
                continue;
            }
            let mut stack = vec![(r, 0usize)];
            colour[r] = 1;
            while let Some(&mut (v, ref mut i)) = stack.last_mut() {
                if let Some(&w) = firsts[v].get(*i) {
                    *i += 1;
                    match colour[w as usize] {
                        0 => {
                            colour[w as usize] = 1;
                            stack.push((w as usize, 0));
                        }
                        1 => {
                            return Err(GrammarError::LeftRecursion(self.names[w as usize].clone()))
                        }
                        _ => {}
                    }
                } else {
                    colour[v] = 2;
                    stack.pop();
                }
            }
        }
        Ok(())
    }
}

impl std::str::FromStr for Grammar {
    type Err = GrammarError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests;
