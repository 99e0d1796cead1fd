//! BPE by merge rank (`tokenizer.ggml.model = gpt2`, `gemma4`).
//!
//! Each pre-tokenized word starts as one symbol per byte (GPT-2 maps every
//! byte to a printable character, so a byte is a character of the vocabulary
//! strings), or, SentencePiece-style (Gemma 4), one symbol per character of
//! the text with spaces as `▁`. The adjacent pair with the lowest merge rank
//! is merged until no pair has a rank (ties go to the leftmost pair). Every
//! string a merge mentions is interned to an integer piece once, at load
//! time, so the merge loop compares and hashes integers and never allocates.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::hash::FastMap;
use super::pretokenize::{PreOptions, PreTokenizer, Splitter};
use super::Tokenizer;
use crate::{Error, Result};

const NIL: u32 = u32::MAX;

const fn printable(b: usize) -> bool {
    (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE
}

/// GPT-2's byte to character table: printable Latin-1 bytes map to
/// themselves, the others to U+0100 upwards in byte order.
static BYTE_CHAR: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut next = 0x100;
    let mut b = 0;
    while b < 256 {
        if printable(b) {
            t[b] = b as u32;
        } else {
            t[b] = next;
            next += 1;
        }
        b += 1;
    }
    t
};

/// The inverse of [`BYTE_CHAR`] over U+0000..U+0143 (`u16::MAX`: none).
static CHAR_BYTE: [u16; 0x144] = {
    let mut t = [u16::MAX; 0x144];
    let mut b = 0;
    while b < 256 {
        t[BYTE_CHAR[b] as usize] = b as u16;
        b += 1;
    }
    t
};

/// The GPT-2 character that stands for byte `b`.
#[inline]
pub(crate) fn byte_to_char(b: u8) -> char {
    char::from_u32(BYTE_CHAR[b as usize]).unwrap_or('\u{FFFD}')
}

/// The byte a GPT-2 character stands for, if it is one.
#[inline]
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    CHAR_BYTE
        .get(c as usize)
        .and_then(|&b| u8::try_from(b).ok())
}

/// The merge table, over interned pieces.
#[derive(Debug)]
pub(crate) struct BpeModel {
    /// Piece of each byte's one-character string (SentencePiece-style: of
    /// each ASCII character), or `NIL`.
    byte_piece: [u32; 256],
    /// SentencePiece-style: piece of each other character a token or merge
    /// has alone.
    char_piece: FastMap<char, u32>,
    /// `(left << 32 | right)` to `(rank, merged piece)`.
    merges: FastMap<u64, (u32, u32)>,
    /// Pieces `< n_vocab` are token ids; the others are strings that only
    /// merges mention.
    n_vocab: u32,
    /// The fallback for each byte of a symbol that is not a token (`NIL`:
    /// dropped): the token of its GPT-2 character when that is a single
    /// ASCII byte, or SentencePiece-style its `<0xXX>` token.
    byte_fallback: [u32; 256],
    pub(crate) options: PreOptions,
}

impl BpeModel {
    /// Interns the merges (`"left right"`, best first) against the vocabulary.
    pub(crate) fn new(
        token_map: &FastMap<Box<str>, u32>,
        n_vocab: u32,
        merges: &[String],
        options: PreOptions,
    ) -> Result<Self> {
        let mut extra: FastMap<String, u32> = FastMap::default();
        let mut intern = |s: &str| -> Result<u32> {
            if let Some(&id) = token_map.get(s) {
                return Ok(id);
            }
            if let Some(&id) = extra.get(s) {
                return Ok(id);
            }
            let id = u32::try_from(extra.len())
                .ok()
                .and_then(|k| n_vocab.checked_add(k))
                .filter(|&id| id != NIL)
                .ok_or_else(|| Error::Tokenizer("too many BPE merges".into()))?;
            extra.insert(s.to_owned(), id);
            Ok(id)
        };
        let mut table = FastMap::default();
        table.reserve(merges.len());
        let mut joined = String::new();
        for (rank, m) in merges.iter().enumerate() {
            // Split at the first space after the first byte, as llama.cpp does;
            // a merge without one pairs two empty strings.
            let space = m.as_bytes().iter().skip(1).position(|&c| c == b' ');
            let (a, b) = match space {
                Some(p) => (&m[..p + 1], &m[p + 2..]),
                None => ("", ""),
            };
            let (left, right) = (intern(a)?, intern(b)?);
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let merged = intern(&joined)?;
            let rank =
                u32::try_from(rank).map_err(|_| Error::Tokenizer("too many BPE merges".into()))?;
            table
                .entry(u64::from(left) << 32 | u64::from(right))
                .or_insert((rank, merged));
        }
        let mut byte_piece = [NIL; 256];
        let mut byte_fallback = [NIL; 256];
        let byte_token = |b: u8| {
            let name = format!("<0x{b:02X}>");
            token_map.get(name.as_str()).copied().unwrap_or(NIL)
        };
        let mut buf = [0u8; 4];
        for b in 0..=255u8 {
            // The character a byte stands for alone: GPT-2's, or
            // SentencePiece-style itself if it is ASCII.
            let c = match options.spm_style {
                false => Some(byte_to_char(b)),
                true => Some(char::from(b)).filter(|_| b.is_ascii()),
            };
            let Some(s) = c.map(|c| &*c.encode_utf8(&mut buf)) else {
                byte_fallback[b as usize] = byte_token(b);
                continue;
            };
            byte_piece[b as usize] = token_map
                .get(s)
                .or_else(|| extra.get(s))
                .copied()
                .unwrap_or(NIL);
            byte_fallback[b as usize] = match options.spm_style {
                true => byte_token(b),
                false if s.len() == 1 => token_map.get(s).copied().unwrap_or(NIL),
                false => NIL,
            };
        }
        let mut char_piece = FastMap::default();
        if options.spm_style {
            let pieces = token_map.iter().map(|(s, &id)| (&**s, id));
            for (s, id) in pieces.chain(extra.iter().map(|(s, &id)| (s.as_str(), id))) {
                let mut chars = s.chars();
                if let (Some(c), None) = (chars.next(), chars.next()) {
                    if !c.is_ascii() {
                        char_piece.insert(c, id);
                    }
                }
            }
        }
        Ok(Self {
            byte_piece,
            char_piece,
            merges: table,
            n_vocab,
            byte_fallback,
            options,
        })
    }
}

impl BpeModel {
    /// SentencePiece-style: the piece of character `c` alone, or `NIL`.
    #[inline]
    fn char_piece(&self, c: char) -> u32 {
        match u8::try_from(c) {
            Ok(b) if b.is_ascii() => self.byte_piece[b as usize],
            _ => self.char_piece.get(&c).copied().unwrap_or(NIL),
        }
    }
}

/// A mergeable pair: `(rank, left, right, left piece, right piece, merged
/// piece)`; the smallest rank, then the leftmost pair, merges first.
type Candidate = (u32, u32, u32, u32, u32, u32);

#[derive(Clone, Copy, Debug)]
struct Symbol {
    len: u32,
    next: u32,
    prev: u32,
    piece: u32,
}

/// Reusable buffers of the BPE merge loop.
#[derive(Debug, Default)]
pub(crate) struct BpeSession {
    splitter: Splitter,
    symbols: Vec<Symbol>,
    /// Candidate merges, best first.
    heap: BinaryHeap<Reverse<Candidate>>,
    encoded: String,
    /// SentencePiece-style: the text with spaces as `▁`.
    escaped: String,
}

impl BpeSession {
    /// Pre-tokenizes and merges `text` into `out`.
    pub(crate) fn tokenize(
        &mut self,
        tok: &Tokenizer,
        model: &BpeModel,
        text: &str,
        out: &mut Vec<u32>,
    ) {
        let mut splitter = std::mem::take(&mut self.splitter);
        let mut escaped = std::mem::take(&mut self.escaped);
        let text = match model.options.spm_style {
            true => {
                escaped.clear();
                escaped.extend(text.chars().map(|c| if c == ' ' { '\u{2581}' } else { c }));
                &escaped
            }
            false => text,
        };
        splitter.split(model.options.pre, text, |range| {
            self.word(tok, model, &text[range], out);
        });
        self.splitter = splitter;
        self.escaped = escaped;
    }

    fn word(&mut self, tok: &Tokenizer, model: &BpeModel, word: &str, out: &mut Vec<u32>) {
        let spm = model.options.spm_style;
        // llama.cpp looks a Gemma 4 run of line feeds up whole first, as
        // those tokens have no merges.
        let whole = model.options.ignore_merges
            || (model.options.pre == PreTokenizer::Gemma4 && word.bytes().all(|b| b == b'\n'));
        if whole {
            let encoded = match spm {
                true => word,
                false => {
                    self.encoded.clear();
                    self.encoded.extend(word.bytes().map(byte_to_char));
                    &self.encoded
                }
            };
            if let Some(id) = tok.lookup(encoded) {
                out.push(id);
                return;
            }
        }
        let bytes = word.as_bytes();
        if let [b] = bytes {
            let piece = model.byte_piece[*b as usize];
            Self::emit(model, piece, bytes, out);
            return;
        }
        self.symbols.clear();
        self.heap.clear();
        // One symbol per byte, or SentencePiece-style per character.
        let mut push = |len: usize, piece: u32| {
            let i = self.symbols.len() as u32;
            self.symbols.push(Symbol {
                len: len as u32,
                prev: if i == 0 { NIL } else { i - 1 },
                next: i + 1,
                piece,
            });
        };
        match spm {
            true => word
                .chars()
                .for_each(|c| push(c.len_utf8(), model.char_piece(c))),
            false => bytes
                .iter()
                .for_each(|&b| push(1, model.byte_piece[b as usize])),
        }
        if let Some(last) = self.symbols.last_mut() {
            last.next = NIL;
        }
        let n = self.symbols.len() as u32;
        for i in 1..n {
            self.try_add(model, i - 1, i);
        }
        while let Some(Reverse((_, l, r, lp, rp, merged))) = self.heap.pop() {
            let (left, right) = (self.symbols[l as usize], self.symbols[r as usize]);
            if left.len == 0 || right.len == 0 || left.piece != lp || right.piece != rp {
                continue;
            }
            let s = &mut self.symbols[l as usize];
            s.len += right.len;
            s.piece = merged;
            s.next = right.next;
            self.symbols[r as usize].len = 0;
            if let Some(next) = self.symbols.get_mut(right.next as usize) {
                next.prev = l;
            }
            self.try_add(model, left.prev, l);
            self.try_add(model, l, right.next);
        }
        let mut start = 0usize;
        for s in &self.symbols {
            if s.len > 0 {
                let end = start + s.len as usize;
                Self::emit(model, s.piece, &bytes[start..end], out);
                start = end;
            }
        }
    }

    /// Emits a finished symbol: its token, or its bytes' fallback tokens.
    fn emit(model: &BpeModel, piece: u32, bytes: &[u8], out: &mut Vec<u32>) {
        if piece < model.n_vocab {
            out.push(piece);
        } else {
            out.extend(
                bytes
                    .iter()
                    .map(|&b| model.byte_fallback[b as usize])
                    .filter(|&t| t != NIL),
            );
        }
    }

    fn try_add(&mut self, model: &BpeModel, left: u32, right: u32) {
        let (Some(l), Some(r)) = (
            self.symbols.get(left as usize),
            self.symbols.get(right as usize),
        ) else {
            return;
        };
        if l.piece == NIL || r.piece == NIL {
            return;
        }
        if let Some(&(rank, merged)) = model
            .merges
            .get(&(u64::from(l.piece) << 32 | u64::from(r.piece)))
        {
            self.heap
                .push(Reverse((rank, left, right, l.piece, r.piece, merged)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{byte_to_char, char_to_byte};

    #[test]
    fn byte_table_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(char_to_byte('é'), Some(0xE9));
    }
}
