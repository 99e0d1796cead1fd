//! WordPiece (`tokenizer.ggml.model` = `bert`), as llama.cpp's WPM
//! tokenizer runs it.
//!
//! Two steps. The normalizer turns text into words: code points are
//! optionally reduced to the first of their canonical decomposition and
//! stripped of combining marks, optionally lowercased; NUL, U+FFFD and
//! control characters vanish; whitespace ends a word; punctuation, ASCII
//! symbols and CJK ideographs are words of their own. Then each word, with
//! `▁` in front, is covered left to right by the longest vocabulary entry
//! at each point; if some point has none, the whole word is the unknown
//! token instead.

use std::ops::Range;

use super::unicode::{nfd_first, to_lower, Flags};
use super::Tokenizer;
use crate::{Error, Result};

/// The marker a word starts with (`▁`, U+2581).
const WORD_START: char = '\u{2581}';

/// What a WordPiece vocabulary needs besides its tokens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WpmModel {
    /// Lowercase the text (`tokenizer.ggml.normalizer.lowercase`).
    pub(crate) lowercase: bool,
    /// Decompose and drop combining marks
    /// (`tokenizer.ggml.normalizer.strip_accents`).
    pub(crate) strip_accents: bool,
    /// The longest token text, in bytes: no match is looked for beyond it.
    pub(crate) max_token_len: usize,
}

/// The CJK ideograph blocks llama.cpp splits into one-character words (the
/// Hugging Face BERT tokenizer's list, with its start of Extension E).
fn is_cjk_ideograph(cp: u32) -> bool {
    matches!(
        cp,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// Reusable buffers for tokenizing with one WordPiece vocabulary.
#[derive(Debug, Default)]
pub(crate) struct WpmSession {
    /// The normalized words, each with its `▁` in front, back to back.
    text: String,
    /// Each word's byte range in `text`.
    words: Vec<Range<usize>>,
}

impl WpmSession {
    /// Splits `text` into normalized words (into `self.text` and
    /// `self.words`).
    fn split(&mut self, model: &WpmModel, text: &str) {
        self.text.clear();
        self.words.clear();
        // Where the word being built starts (at its `▁`), if one is.
        let mut open: Option<usize> = None;
        let close = |open: &mut Option<usize>, buf: &str, words: &mut Vec<Range<usize>>| {
            if let Some(start) = open.take() {
                words.push(start..buf.len());
            }
        };
        for c in text.chars() {
            let cp = match model.strip_accents {
                true => nfd_first(c as u32),
                false => c as u32,
            };
            let flags = Flags::of(cp);
            if flags.is_whitespace() {
                close(&mut open, &self.text, &mut self.words);
                continue;
            }
            if cp == 0 || cp == 0xFFFD || flags.is_control() {
                continue;
            }
            if model.strip_accents && flags.is_accent_mark() {
                continue;
            }
            // Classified before lowercasing, as llama.cpp does.
            let alone =
                flags.is_punctuation() || (cp < 0x7F && flags.is_symbol()) || is_cjk_ideograph(cp);
            let shown = if model.lowercase { to_lower(cp) } else { cp };
            // The tables map characters to characters; a miss cannot
            // happen, and would keep the character as it came.
            let ch = char::from_u32(shown).unwrap_or(c);
            if alone {
                close(&mut open, &self.text, &mut self.words);
            }
            if open.is_none() {
                open = Some(self.text.len());
                self.text.push(WORD_START);
            }
            self.text.push(ch);
            if alone {
                close(&mut open, &self.text, &mut self.words);
            }
        }
        close(&mut open, &self.text, &mut self.words);
    }

    /// Appends the ids of `text` (a fragment without special tokens) to
    /// `out`. Errors only when a word must become the unknown token and
    /// the vocabulary has none.
    pub(crate) fn tokenize(
        &mut self,
        tok: &Tokenizer,
        model: &WpmModel,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        self.split(model, text);
        for range in &self.words {
            // Ranges end at characters the split pushed: always there.
            let Some(word) = self.text.get(range.clone()) else {
                continue;
            };
            let mark = out.len();
            if !match_word(tok, model.max_token_len, word, out) {
                out.truncate(mark);
                let unk = tok.special.unk.ok_or_else(|| {
                    Error::Tokenizer(format!(
                        "no piece matches `{}` and the vocabulary has no unknown token",
                        word.trim_start_matches(WORD_START)
                    ))
                })?;
                out.push(unk);
            }
        }
        Ok(())
    }
}

/// Covers `word` with the longest token at each point, left to right,
/// pushing their ids; false where some point starts no token.
fn match_word(tok: &Tokenizer, max_len: usize, word: &str, out: &mut Vec<u32>) -> bool {
    let n = word.len();
    let mut i = 0;
    while i < n {
        let longest = (i + 1..=n.min(i.saturating_add(max_len)))
            .rev()
            .find_map(|j| Some((j, tok.lookup(word.get(i..j)?)?)));
        match longest {
            Some((j, id)) => {
                out.push(id);
                i = j;
            }
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::{TokenType, Tokenizer, Vocab, VocabKind};

    /// A BERT-like vocabulary: the usual specials at 0 and 100..=103, word
    /// starts with `▁`, continuations bare (the GGUF converter's form of
    /// `##`).
    fn vocab(pieces: &[&str]) -> Vocab {
        let mut tokens: Vec<String> = (0..100).map(|i| format!("[unused{i}]")).collect();
        tokens[0] = "[PAD]".into();
        tokens.extend(["[UNK]", "[CLS]", "[SEP]", "[MASK]"].map(String::from));
        tokens.extend(pieces.iter().map(|p| p.to_string()));
        let mut types = vec![TokenType::Normal; tokens.len()];
        for id in [0, 100, 101, 102, 103] {
            types[id] = TokenType::Control;
        }
        let mut v = Vocab::new(VocabKind::Wpm, tokens);
        v.token_types = types;
        v
    }

    const PIECES: &[&str] = &[
        "▁hello", "▁hell", "o", "▁world", "▁un", "aff", "able", "▁,", "▁!", "▁$", "▁+", "▁a",
        "▁cafe", "▁apfel", "▁中", "▁文", "▁x", "y", "▁über", "▁é", "▁e",
    ];

    fn tok() -> Tokenizer {
        Tokenizer::from_parts(vocab(PIECES)).unwrap()
    }

    fn texts(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| t.token_text(id).unwrap().to_string())
            .collect()
    }

    #[test]
    fn defaults_are_bert_s() {
        let t = tok();
        let s = t.special_tokens();
        assert_eq!(
            (s.bos, s.eos, s.unk, s.sep, s.pad, s.mask),
            (Some(101), None, Some(100), Some(102), Some(0), Some(103))
        );
        assert!(t.add_bos() && t.add_sep() && !t.add_eos());
    }

    #[test]
    fn longest_match_first() {
        let t = tok();
        let ids = t.encode("hello unaffable", false, false).unwrap();
        assert_eq!(texts(&t, &ids), ["▁hello", "▁un", "aff", "able"]);
        // `▁hell` + `o` is not taken: `▁hello` is longer.
        let ids = t.encode("xyyy", false, false).unwrap();
        assert_eq!(texts(&t, &ids), ["▁x", "y", "y", "y"]);
    }

    #[test]
    fn a_word_with_an_unmatched_part_is_unknown_whole() {
        let t = tok();
        // `▁hello` matches, then `z` does not: the word is [UNK] alone.
        assert_eq!(
            t.encode("helloz world", false, false).unwrap()[..],
            [100, t.token_id("▁world").unwrap()]
        );
        assert_eq!(t.encode("qqq", false, false).unwrap(), [100]);
        // Without an unknown token that is an error, not a panic.
        // (With 51 tokens, BERT's default ids are out of range.)
        let mut v = vocab(PIECES);
        v.tokens.truncate(50);
        v.token_types.truncate(50);
        v.tokens.push("▁a".into());
        v.token_types.push(TokenType::Normal);
        let t = Tokenizer::from_parts(v).unwrap();
        assert_eq!(t.special_tokens().unk, None);
        assert!(t.encode("qqq", false, false).is_err());
        assert!(t.encode("a", true, false).is_err(), "no CLS to add");
        assert_eq!(t.encode("a", false, false).unwrap(), [50]);
    }

    #[test]
    fn lowercases_and_strips_accents() {
        let t = tok();
        let ids = t.encode("HELLO Café ÄPFEL É", false, false).unwrap();
        assert_eq!(texts(&t, &ids), ["▁hello", "▁cafe", "▁apfel", "▁e"]);
        // A combining mark is dropped too.
        let ids = t.encode("cafe\u{301}", false, false).unwrap();
        assert_eq!(texts(&t, &ids), ["▁cafe"]);

        // Lowercase only: accents stay.
        let mut v = vocab(PIECES);
        v.strip_accents = Some(false);
        let t = Tokenizer::from_parts(v).unwrap();
        let ids = t.encode("ÜBER É", false, false).unwrap();
        assert_eq!(texts(&t, &ids), ["▁über", "▁é"]);

        // Neither (a cased model): capitals are not in the vocabulary.
        let mut v = vocab(PIECES);
        v.lowercase = Some(false);
        let t = Tokenizer::from_parts(v).unwrap();
        assert_eq!(t.encode("Hello hello", false, false).unwrap()[0], 100);
        // strip_accents follows lowercase unless it is given.
        let ids = t.encode("über", false, false).unwrap();
        assert_eq!(texts(&t, &ids), ["▁über"]);
    }

    #[test]
    fn punctuation_symbols_and_ideographs_stand_alone() {
        let t = tok();
        let ids = t.encode("hello,world!", false, false).unwrap();
        assert_eq!(texts(&t, &ids), ["▁hello", "▁,", "▁world", "▁!"]);
        let ids = t.encode("a$a+中文x", false, false).unwrap();
        assert_eq!(
            texts(&t, &ids),
            ["▁a", "▁$", "▁a", "▁+", "▁中", "▁文", "▁x"]
        );
        // Control characters vanish; tabs and newlines split.
        let ids = t
            .encode("hel\u{7}lo\tworld\n\u{0}a\u{FFFD}", false, false)
            .unwrap();
        assert_eq!(texts(&t, &ids), ["▁hello", "▁world", "▁a"]);
        assert!(t.encode("", false, false).unwrap().is_empty());
        assert!(t.encode(" \t\n\u{0}", false, false).unwrap().is_empty());
    }

    #[test]
    fn special_tokens_cls_first_sep_last() {
        let t = tok();
        assert_eq!(t.encode("", true, false).unwrap(), [101, 102]);
        let ids = t.encode("hello [MASK] world", true, true).unwrap();
        assert_eq!(
            texts(&t, &ids),
            ["[CLS]", "▁hello", "[MASK]", "▁world", "[SEP]"]
        );
        // Written without special parsing, `[` and `]` are words of their own.
        let ids = t.encode("[MASK]", false, false).unwrap();
        assert_eq!(ids, [100, 100, 100]);
        // Decoding: pieces with their spaces, tidied, CLS dropped.
        let ids = t.encode("hello , world!", true, false).unwrap();
        assert_eq!(t.decode(&ids, true, false).unwrap(), " hello, world!");
        assert_eq!(
            t.decode(&ids, false, true).unwrap(),
            "[CLS] hello, world![SEP]"
        );
    }
}
