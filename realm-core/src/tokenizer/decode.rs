//! Token ids back to bytes and text, whole or streamed.

use super::bpe::char_to_byte;
use super::{attr, Tokenizer};
use crate::Result;

/// The bytes token `text` with attributes `attrs` stands for, control
/// tokens included (llama.cpp's `token_to_piece` with `special`). Normal
/// tokens of a `byte_level` vocabulary are GPT-2 byte characters; the
/// others' have `▁` for a space.
pub(crate) fn piece_bytes(byte_level: bool, text: &str, attrs: u16) -> Vec<u8> {
    if attrs & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
        return text.as_bytes().to_vec();
    }
    if attrs & attr::NORMAL != 0 {
        return match byte_level {
            true => gpt2_bytes(text),
            false => text.replace('\u{2581}', " ").into_bytes(),
        };
    }
    if attrs & attr::BYTE != 0 {
        let hex = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok());
        return vec![hex.unwrap_or(0)];
    }
    Vec::new()
}

/// Undoes GPT-2's byte-to-character mapping. A character outside the
/// mapping is written out as llama.cpp does it.
fn gpt2_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// llama.cpp's `clean_spaces` tidying of decoded text: no space before
/// `?!.,`, none around a lone apostrophe, and none before `'s`, `'m`,
/// `'re` and `'ve`.
pub(crate) fn clean_spaces(text: &mut Vec<u8>) {
    let t = text;
    if t.len() < 2 {
        return;
    }
    // Space before ? ! . ,
    let mut w = 1;
    for i in 1..t.len() {
        let x = t[i];
        if t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            w -= 1;
        }
        t[w] = x;
        w += 1;
    }
    t.truncate(w);
    // " ' " becomes "'".
    let n = t.len();
    let mut w = 1;
    let mut i = 1;
    while i < n {
        let x = t[i];
        if x == b'\'' && i + 1 < n && t[i - 1] == b' ' && t[i + 1] == b' ' {
            // Drop the space before; blank out the one after (a later
            // apostrophe must not see it as a space) and skip it.
            w -= 1;
            t[i + 1] = 0;
            t[w] = x;
            w += 1;
            i += 2;
            continue;
        }
        t[w] = x;
        w += 1;
        i += 1;
    }
    t.truncate(w);
    // " 's", " 'm", " 're", " 've" lose the space.
    let n = t.len();
    let mut w = 1;
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = t[i + 1];
            let x2 = t.get(i + 2).copied().filter(|_| i + 2 < n);
            if matches!(x1, b's' | b'm')
                || matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e')))
            {
                w -= 1;
            }
        }
        t[w] = x;
        w += 1;
    }
    t.truncate(w);
}

impl Tokenizer {
    /// The bytes of one token, as llama.cpp's `token_to_piece` gives them
    /// (no space stripping): control and unknown tokens are empty unless
    /// `special` is set. A piece may be part of a UTF-8 character.
    pub fn token_to_piece(&self, id: u32, special: bool) -> Result<&[u8]> {
        let data = self.token(id)?;
        if !special && data.attrs & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return Ok(&[]);
        }
        Ok(&data.piece)
    }

    /// Decodes ids to bytes as llama.cpp's `detokenize` does.
    ///
    /// `remove_special` drops a leading BOS and a trailing EOS that the
    /// model adds itself; `unparse_special` renders control tokens as their
    /// text (otherwise they vanish). The leading space SentencePiece models
    /// prepend is removed.
    pub fn decode_bytes(
        &self,
        ids: &[u32],
        remove_special: bool,
        unparse_special: bool,
    ) -> Result<Vec<u8>> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos {
            if let Some((&first, rest)) = ids.split_first() {
                if Some(first) == self.special.bos {
                    remove_space = false;
                    ids = rest;
                }
            }
        }
        if remove_special && self.add_eos {
            if let Some((&last, rest)) = ids.split_last() {
                if Some(last) == self.special.eos {
                    ids = rest;
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let piece = self.token_to_piece(id, unparse_special)?;
            let piece = match piece {
                [b' ', rest @ ..] if remove_space => rest,
                p => p,
            };
            remove_space = false;
            out.extend_from_slice(piece);
        }
        if self.clean_spaces {
            clean_spaces(&mut out);
        }
        Ok(out)
    }

    /// Decodes ids to text ([`decode_bytes`](Self::decode_bytes), with
    /// invalid UTF-8 replaced by U+FFFD).
    pub fn decode(
        &self,
        ids: &[u32],
        remove_special: bool,
        unparse_special: bool,
    ) -> Result<String> {
        let bytes = self.decode_bytes(ids, remove_special, unparse_special)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// A decoder that turns ids into text one at a time.
    pub fn stream_decoder(&self, unparse_special: bool) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            unparse_special,
            shown: Vec::new(),
            remove_space: self.add_space_prefix,
            raw: Vec::new(),
            bytes: Vec::new(),
        }
    }
}

/// Incremental decoding for generation: [`push`](Self::push) each new id
/// and print what it returns.
///
/// The concatenated output equals
/// [`Tokenizer::decode`]`(ids, false, unparse_special)`: bytes of a UTF-8
/// character split across tokens are held back until it is complete, so no
/// replacement character appears that the whole decode would not have, and
/// for vocabularies that tidy spaces the last few bytes after a space wait
/// until the tidying is settled.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    unparse_special: bool,
    /// Special tokens shown as their text even without `unparse_special`.
    shown: Vec<u32>,
    remove_space: bool,
    /// Decoded bytes not yet space-tidied.
    raw: Vec<u8>,
    /// Tidied bytes not yet emitted (an incomplete UTF-8 character).
    bytes: Vec<u8>,
}

/// Raw bytes held back after a space for the space tidying.
const CLEAN_WINDOW: usize = 4;

impl StreamDecoder<'_> {
    /// Shows these special tokens as their text (llama.cpp's server keeps
    /// a chat format's markers so, its "preserved tokens"), whatever
    /// `unparse_special` says of the others.
    pub fn showing(mut self, ids: Vec<u32>) -> Self {
        self.shown = ids;
        self
    }

    /// Adds one token; returns the text that is now final (maybe empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        let special = self.unparse_special || self.shown.contains(&id);
        let piece = self.tok.token_to_piece(id, special)?;
        let piece = match piece {
            [b' ', rest @ ..] if self.remove_space => rest,
            p => p,
        };
        self.remove_space = false;
        if !self.tok.clean_spaces {
            self.bytes.extend_from_slice(piece);
            return Ok(self.take_text(false));
        }
        self.raw.extend_from_slice(piece);
        // Settle everything up to a cut with no space in the window before it.
        let mut cut = self.raw.len();
        while cut > 0 && self.raw[cut.saturating_sub(CLEAN_WINDOW)..cut].contains(&b' ') {
            cut -= 1;
        }
        if cut > 0 {
            let mut settled: Vec<u8> = self.raw.drain(..cut).collect();
            clean_spaces(&mut settled);
            self.bytes.extend_from_slice(&settled);
        }
        Ok(self.take_text(false))
    }

    /// Ends the stream: returns whatever was held back, which leaves the
    /// decoder holding nothing.
    pub fn finish(&mut self) -> String {
        let mut rest = std::mem::take(&mut self.raw);
        if self.tok.clean_spaces {
            clean_spaces(&mut rest);
        }
        self.bytes.extend_from_slice(&rest);
        self.take_text(true)
    }

    /// Takes the complete characters off the front of `bytes`; invalid
    /// sequences become U+FFFD, an unfinished one stays unless `all`.
    fn take_text(&mut self, all: bool) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.bytes[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.bytes.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(
                        std::str::from_utf8(&self.bytes[start..start + valid]).unwrap_or_default(),
                    );
                    start += valid;
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            start += n;
                        }
                        None if all => {
                            out.push('\u{FFFD}');
                            start = self.bytes.len();
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
        self.bytes.drain(..start);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::clean_spaces;

    fn clean(s: &str) -> String {
        let mut v = s.as_bytes().to_vec();
        clean_spaces(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn tidies_spaces() {
        assert_eq!(clean("Hello , world !"), "Hello, world!");
        assert_eq!(clean("it 's a ' b"), "it's a'b");
        assert_eq!(clean("we 're I 'll"), "we're I 'll");
    }
}
