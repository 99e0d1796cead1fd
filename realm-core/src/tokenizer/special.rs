//! Splitting text at special tokens written in it.
//!
//! llama.cpp takes the special tokens longest first and, for each, cuts
//! every remaining stretch of plain text at its occurrences, left to right.
//! A longer token therefore wins over a shorter one anywhere in the text,
//! and an occurrence that straddles an earlier cut is not a match. This
//! module finds all occurrences at once with Aho-Corasick, then accepts them
//! in that same priority order, which gives the same fragments in
//! `O(text + matches · log matches)`.

use std::collections::BTreeMap;
use std::ops::Range;

use aho_corasick::AhoCorasick;

use crate::{Error, Result};

/// A piece of the input: plain text to tokenize, or one special token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A byte range of the input.
    Text(Range<usize>),
    /// A token matched in the input.
    Token(u32),
}

/// One candidate special token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpecialToken {
    pub(crate) id: u32,
    /// Also matched when the caller does not ask for special tokens
    /// (user-defined tokens).
    pub(crate) always: bool,
    /// Drop whitespace just before an occurrence.
    pub(crate) lstrip: bool,
    /// Drop whitespace just after an occurrence.
    pub(crate) rstrip: bool,
}

/// The special tokens of a vocabulary, ready to match.
#[derive(Debug)]
pub(crate) struct SpecialMatcher {
    /// All candidates, and the ones matched without `parse_special`.
    all: Option<(AhoCorasick, Vec<SpecialToken>)>,
    plain: Option<(AhoCorasick, Vec<SpecialToken>)>,
}

impl SpecialMatcher {
    /// `tokens` in priority order (longest text first), with their texts.
    pub(crate) fn new(tokens: Vec<(SpecialToken, &str)>) -> Result<Self> {
        let build =
            |list: Vec<(SpecialToken, &str)>| -> Result<Option<(AhoCorasick, Vec<SpecialToken>)>> {
                if list.is_empty() {
                    return Ok(None);
                }
                let ac = AhoCorasick::new(list.iter().map(|(_, text)| text.as_bytes()))
                    .map_err(|e| Error::Tokenizer(format!("special token matcher: {e}")))?;
                Ok(Some((ac, list.into_iter().map(|(t, _)| t).collect())))
            };
        let plain = tokens.iter().filter(|(t, _)| t.always).cloned().collect();
        Ok(Self {
            plain: build(plain)?,
            all: build(tokens)?,
        })
    }

    /// Splits `text` into plain text and special tokens.
    pub(crate) fn partition(&self, text: &str, parse_special: bool, out: &mut Vec<Fragment>) {
        out.clear();
        if text.is_empty() {
            return;
        }
        let which = if parse_special {
            &self.all
        } else {
            &self.plain
        };
        let Some((ac, tokens)) = which else {
            out.push(Fragment::Text(0..text.len()));
            return;
        };
        // (priority, start, end) of every occurrence, in acceptance order.
        let mut found: Vec<(u32, usize, usize)> = ac
            .find_overlapping_iter(text)
            .map(|m| (m.pattern().as_u32(), m.start(), m.end()))
            .collect();
        if found.is_empty() {
            out.push(Fragment::Text(0..text.len()));
            return;
        }
        found.sort_unstable();

        // Accepted spans: start -> (end, token or `None` for dropped spaces).
        let mut taken: BTreeMap<usize, (usize, Option<u32>)> = BTreeMap::new();
        let bytes = text.as_bytes();
        let mut current = u32::MAX;
        let mut resume = 0;
        for &(prio, start, end) in &found {
            if prio != current {
                current = prio;
                resume = 0;
            }
            if start < resume || overlaps(&taken, start, end) {
                continue;
            }
            let token = tokens[prio as usize];
            taken.insert(start, (end, Some(token.id)));
            resume = end;
            if token.lstrip {
                let floor = taken.range(..start).next_back().map_or(0, |(_, &(e, _))| e);
                let mut s = start;
                while s > floor && bytes[s - 1].is_ascii_whitespace() {
                    s -= 1;
                }
                if s < start {
                    taken.insert(s, (start, None));
                }
            }
            if token.rstrip {
                let ceil = taken.range(end..).next().map_or(text.len(), |(&s, _)| s);
                let mut e = end;
                while e < ceil && bytes[e].is_ascii_whitespace() {
                    e += 1;
                }
                if e > end {
                    taken.insert(end, (e, None));
                    resume = e;
                }
            }
        }

        let mut pos = 0;
        for (&start, &(end, token)) in &taken {
            if start > pos {
                out.push(Fragment::Text(pos..start));
            }
            if let Some(id) = token {
                out.push(Fragment::Token(id));
            }
            pos = end;
        }
        if pos < text.len() {
            out.push(Fragment::Text(pos..text.len()));
        }
    }
}

/// True when `start..end` meets an accepted span.
fn overlaps(taken: &BTreeMap<usize, (usize, Option<u32>)>, start: usize, end: usize) -> bool {
    if let Some((_, &(e, _))) = taken.range(..=start).next_back() {
        if e > start {
            return true;
        }
    }
    taken.range(start..end).next().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(id: u32, always: bool) -> SpecialToken {
        SpecialToken {
            id,
            always,
            lstrip: false,
            rstrip: false,
        }
    }

    #[test]
    fn longer_tokens_win_and_plain_mode_skips_control() {
        let m = SpecialMatcher::new(vec![(tok(1, false), "abcd"), (tok(2, true), "xab")]).unwrap();
        let mut out = Vec::new();
        m.partition("xabcd xab", true, &mut out);
        assert_eq!(
            out,
            [
                Fragment::Text(0..1),
                Fragment::Token(1),
                Fragment::Text(5..6),
                Fragment::Token(2)
            ]
        );
        m.partition("xabcd", false, &mut out);
        assert_eq!(out, [Fragment::Token(2), Fragment::Text(3..5)]);
    }

    #[test]
    fn repeated_occurrences_do_not_overlap() {
        let m = SpecialMatcher::new(vec![(tok(7, true), "aa")]).unwrap();
        let mut out = Vec::new();
        m.partition("aaaaa", false, &mut out);
        assert_eq!(
            out,
            [Fragment::Token(7), Fragment::Token(7), Fragment::Text(4..5)]
        );
    }
}
