//! SentencePiece-style BPE (`tokenizer.ggml.model = llama`).
//!
//! The text (spaces already escaped as `▁`) starts as one symbol per UTF-8
//! character. Repeatedly, the adjacent pair whose concatenation is the
//! highest-scoring token is merged (ties go to the leftmost pair). Symbols
//! are a linked list over one array and candidate pairs sit in a binary
//! heap, so a merge costs a heap operation and two lookups, no allocation.
//! A final symbol that is not a token is emitted as byte tokens `<0xNN>`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::Tokenizer;
use crate::Result;

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
    /// The token this symbol's text is, or `NIL`.
    token: u32,
}

#[derive(Clone, Copy, Debug)]
struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    len: u32,
    token: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// Greater is merged first: higher score, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Reusable buffers of the SPM merge loop.
#[derive(Debug, Default)]
pub(crate) struct SpmSession {
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Bigram>,
}

impl SpmSession {
    /// Tokenizes `text` (already space-escaped) into `out`.
    pub(crate) fn tokenize(
        &mut self,
        tok: &Tokenizer,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        self.symbols.clear();
        self.heap.clear();
        let n = text.chars().count();
        self.symbols.reserve(n);
        for (i, (start, c)) in text.char_indices().enumerate() {
            let len = c.len_utf8();
            let token = tok.lookup(&text[start..start + len]).unwrap_or(NIL);
            self.symbols.push(Symbol {
                start: start as u32,
                len: len as u32,
                prev: if i == 0 { NIL } else { i as u32 - 1 },
                next: if i + 1 == n { NIL } else { i as u32 + 1 },
                token,
            });
        }
        for i in 1..n as u32 {
            self.try_add(tok, text, i - 1, i);
        }
        while let Some(b) = self.heap.pop() {
            let (l, r) = (b.left as usize, b.right as usize);
            let (left, right) = (self.symbols[l], self.symbols[r]);
            if left.len == 0 || right.len == 0 || left.len + right.len != b.len {
                continue;
            }
            self.symbols[l].len = b.len;
            self.symbols[l].token = b.token;
            self.symbols[l].next = right.next;
            self.symbols[r].len = 0;
            if let Some(s) = self.symbols.get_mut(right.next as usize) {
                s.prev = b.left;
            }
            self.try_add(tok, text, left.prev, b.left);
            self.try_add(tok, text, b.left, right.next);
        }

        let mut i = if n == 0 { NIL } else { 0 };
        while let Some(s) = self.symbols.get(i as usize) {
            if s.token != NIL {
                out.push(s.token);
            } else {
                let start = s.start as usize;
                for &b in &text.as_bytes()[start..start + s.len as usize] {
                    out.push(tok.byte_token(b)?);
                }
            }
            i = s.next;
        }
        Ok(())
    }

    fn try_add(&mut self, tok: &Tokenizer, text: &str, left: u32, right: u32) {
        let (Some(l), Some(r)) = (
            self.symbols.get(left as usize),
            self.symbols.get(right as usize),
        ) else {
            return;
        };
        let start = l.start as usize;
        let len = l.len + r.len;
        let Some(piece) = text.get(start..start + len as usize) else {
            return;
        };
        if let Some(token) = tok.lookup(piece) {
            self.heap.push(Bigram {
                score: tok.score(token),
                left,
                right,
                len,
                token,
            });
        }
    }
}
