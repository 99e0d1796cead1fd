//! SentencePiece's unigram model (`tokenizer.ggml.model` = `t5`), as
//! llama.cpp's UGM tokenizer runs it (T5, XLM-RoBERTa and the embedding
//! models built on them).
//!
//! Two steps. The normalizer rewrites the text: at each point the longest
//! key of the precompiled character map that starts there is replaced by
//! its replacement string (NFKC-like folding, whitespace and control
//! characters, as the model's converter recorded it); spaces become `▁`,
//! runs of them one (or none at the ends) where `remove_extra_whitespaces`
//! says so, and a `▁` goes in front where `add_space_prefix` says so. Then
//! a Viterbi pass picks the split of the normalized text into vocabulary
//! pieces whose scores (log probabilities) sum highest; a character no
//! piece of its own length covers may also be the unknown token, scored
//! below every piece, and adjacent unknowns are emitted as one.
//!
//! The character map is a darts-clone double array (XOR-addressed units,
//! each packing a label, a leaf flag and an offset) followed by
//! NUL-terminated replacement strings. It is checked whole at load: every
//! unit a walk can reach, for any input, is in bounds and every
//! replacement it can name is terminated, so a malformed map is an error
//! then, never a panic or a failure later.

use super::attr;
use crate::{Error, Result};

const NIL: u32 = u32::MAX;

/// The escaped space (`▁`, U+2581) in UTF-8.
const SPACE: &[u8] = "\u{2581}".as_bytes();

/// U+FFFD, which stands for a byte that does not start a valid character.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// How far below the lowest normal piece's score the unknown token scores
/// (llama.cpp's and SentencePiece's penalty).
const UNKNOWN_PENALTY: f32 = 10.0;

fn charsmap_error(what: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!(
        "tokenizer.ggml.precompiled_charsmap is malformed: {what}"
    ))
}

/// The precompiled character map: a double array of prefixes and the
/// replacement strings its leaves point to.
#[derive(Clone, Debug)]
pub(crate) struct Charsmap {
    /// The double array's units.
    units: Box<[u32]>,
    /// NUL-terminated replacement strings, back to back.
    replacements: Box<[u8]>,
}

/// The offset a unit holds (XOR-ed with a unit's index, it gives the block
/// of that unit's children): 21 bits, shifted left by 8 when bit 9 is set.
#[inline]
fn unit_offset(unit: u32) -> u32 {
    (unit >> 10) << ((unit & (1 << 9)) >> 6)
}

/// The label a unit is the child for; a value unit (bit 31) never equals
/// a byte.
#[inline]
fn unit_label(unit: u32) -> u32 {
    unit & ((1 << 31) | 0xFF)
}

/// Whether a key ends at this unit (its value is in the unit its offset
/// leads to).
#[inline]
fn unit_has_leaf(unit: u32) -> bool {
    (unit >> 8) & 1 == 1
}

/// A value unit's value: here, an offset into the replacement strings.
#[inline]
fn unit_value(unit: u32) -> u32 {
    unit & ((1 << 31) - 1)
}

impl Charsmap {
    /// Parses and checks `tokenizer.ggml.precompiled_charsmap`: a
    /// little-endian `u32` byte length of the double array, the array
    /// (little-endian `u32` units), then the replacement strings. Empty
    /// bytes mean no map (`None`).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Option<Self>> {
        if bytes.is_empty() {
            return Ok(None);
        }
        let Some((head, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(charsmap_error(format!(
                "{} bytes, too few for its 4-byte header",
                bytes.len()
            )));
        };
        let array_len = u32::from_le_bytes(*head) as usize;
        // As llama.cpp: the replacement strings may not be empty.
        if array_len >= rest.len() {
            return Err(charsmap_error(format!(
                "its double array claims {array_len} of the {} bytes after the header",
                rest.len()
            )));
        }
        let (array, replacements) = rest.split_at(array_len);
        // A length that is not a multiple of 4 leaves its last bytes
        // unused, as in llama.cpp.
        let units: Box<[u32]> = array
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let map = Self {
            units,
            replacements: replacements.into(),
        };
        map.check()?;
        Ok(Some(map))
    }

    /// Walks every state the matcher can reach (for any input bytes):
    /// each unit it may read must exist, and each replacement a leaf names
    /// must start inside the strings and end with a NUL. Each state is
    /// visited once, so this costs at most 255 reads per unit.
    fn check(&self) -> Result<()> {
        let Some(&root) = self.units.first() else {
            return Ok(());
        };
        let n = self.units.len();
        let outside = |index: u32| {
            charsmap_error(format!(
                "unit {index} is outside its double array of {n} units"
            ))
        };
        // A state's children are the units at `state ^ c` for the bytes
        // c = 1..=255: all in the state's 256-unit block, so the states
        // that pass the bound below fit a bitset of the blocks.
        let mut seen = vec![0u64; n.div_ceil(256) * 4];
        let mut stack = vec![unit_offset(root)];
        while let Some(state) = stack.pop() {
            let last = if state & 0xFF == 0xFF {
                state ^ 1
            } else {
                state | 0xFF
            };
            if last as usize >= n {
                return Err(outside(last));
            }
            let (word, bit) = (state as usize / 64, 1u64 << (state % 64));
            let mark = seen.get_mut(word).ok_or_else(|| outside(state))?;
            if *mark & bit != 0 {
                continue;
            }
            *mark |= bit;
            for c in 1..=255u32 {
                let index = state ^ c;
                let unit = *self
                    .units
                    .get(index as usize)
                    .ok_or_else(|| outside(index))?;
                if unit_label(unit) != c {
                    continue;
                }
                let next = index ^ unit_offset(unit);
                if unit_has_leaf(unit) {
                    let value = *self.units.get(next as usize).ok_or_else(|| outside(next))?;
                    self.replacement(unit_value(value))?;
                }
                stack.push(next);
            }
        }
        Ok(())
    }

    /// The NUL-terminated replacement string at `offset`.
    fn replacement(&self, offset: u32) -> Result<&[u8]> {
        let rest = self.replacements.get(offset as usize..).ok_or_else(|| {
            charsmap_error(format!(
                "replacement offset {offset} is past its {} bytes of replacements",
                self.replacements.len()
            ))
        })?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| charsmap_error(format!("replacement {offset} has no NUL")))?;
        Ok(&rest[..end])
    }

    /// The longest key that starts `input`: its length in bytes and its
    /// replacement. A NUL byte ends the search.
    fn longest_prefix(&self, input: &[u8]) -> Option<(usize, &[u8])> {
        let mut state = unit_offset(*self.units.first()?);
        let mut found = None;
        for (i, &c) in input.iter().enumerate() {
            if c == 0 {
                break;
            }
            let index = state ^ u32::from(c);
            // `check` proved every read below in bounds; a miss would end
            // the match, never panic.
            let Some(&unit) = self.units.get(index as usize) else {
                break;
            };
            if unit_label(unit) != u32::from(c) {
                break;
            }
            state = index ^ unit_offset(unit);
            if unit_has_leaf(unit) {
                let Some(&value) = self.units.get(state as usize) else {
                    break;
                };
                found = Some((i + 1, unit_value(value)));
            }
        }
        let (len, offset) = found?;
        Some((len, self.replacement(offset).ok()?))
    }
}

/// A byte trie over token texts, laid out breadth first: the children of
/// each node are contiguous and sorted by byte, so a step is a search in a
/// short run of bytes; the root's children are in a direct table.
pub(crate) struct ByteTrie {
    /// The byte on the edge into each node.
    labels: Vec<u8>,
    /// Node `i`'s children are `first[i]..first[i + 1]`.
    first: Vec<u32>,
    /// The token whose text ends at each node, or `NIL`.
    values: Vec<u32>,
    /// The root's child for each byte, or `NIL`.
    root: Box<[u32; 256]>,
}

impl std::fmt::Debug for ByteTrie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteTrie")
            .field("nodes", &self.labels.len())
            .finish()
    }
}

impl ByteTrie {
    /// The trie of `entries` (text, token). Where texts repeat, the
    /// greatest token wins (llama.cpp inserts in id order, later over
    /// earlier).
    fn new(entries: Vec<(&[u8], u32)>) -> Self {
        // Sorted by text (then id), the first eight bytes compared as one
        // integer; then the texts are copied back to back in that order,
        // so that the level-by-level passes below read memory in order.
        let head = |t: &[u8]| {
            let mut w = [0u8; 8];
            let n = t.len().min(8);
            w[..n].copy_from_slice(&t[..n]);
            u64::from_be_bytes(w)
        };
        let mut keyed: Vec<(u64, &[u8], u32)> = entries
            .into_iter()
            .map(|(t, id)| (head(t), t, id))
            .collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)).then(a.2.cmp(&b.2)));
        let mut arena = Vec::with_capacity(keyed.iter().map(|k| k.1.len()).sum());
        let mut starts = Vec::with_capacity(keyed.len() + 1);
        for k in &keyed {
            starts.push(arena.len());
            arena.extend_from_slice(k.1);
        }
        starts.push(arena.len());
        let ids: Vec<u32> = keyed.iter().map(|k| k.2).collect();
        drop(keyed);

        let mut t = Self {
            labels: vec![0],
            first: Vec::new(),
            values: vec![NIL],
            root: Box::new([NIL; 256]),
        };
        // Each node's run of entries (all sharing its prefix) and depth.
        let mut spans: Vec<(u32, u32, u32)> = vec![(0, ids.len() as u32, 0)];
        let mut node = 0;
        while let Some(&(lo, hi, depth)) = spans.get(node) {
            t.first.push(t.labels.len() as u32);
            let (mut i, hi, d) = (lo as usize, hi as usize, depth as usize);
            // Texts that end here sort first; of equal texts, the last.
            while i < hi && starts[i + 1] - starts[i] == d {
                t.values[node] = ids[i];
                i += 1;
            }
            // The rest are longer: each has a byte at `d`.
            while i < hi {
                let b = arena[starts[i] + d];
                let mut j = i + 1;
                while j < hi && arena[starts[j] + d] == b {
                    j += 1;
                }
                if node == 0 {
                    t.root[b as usize] = t.labels.len() as u32;
                }
                t.labels.push(b);
                t.values.push(NIL);
                spans.push((i as u32, j as u32, depth + 1));
                i = j;
            }
            node += 1;
        }
        t.first.push(t.labels.len() as u32);
        t
    }

    /// The child of `node` along byte `b`.
    #[inline]
    fn child(&self, node: u32, b: u8) -> Option<u32> {
        if node == 0 {
            return Some(self.root[b as usize]).filter(|&c| c != NIL);
        }
        let lo = *self.first.get(node as usize)? as usize;
        let hi = *self.first.get(node as usize + 1)? as usize;
        let run = self.labels.get(lo..hi)?;
        let k = if run.len() <= 8 {
            run.iter().position(|&x| x == b)?
        } else {
            run.binary_search(&b).ok()?
        };
        Some((lo + k) as u32)
    }

    /// The token whose text ends at `node`.
    #[inline]
    fn value(&self, node: u32) -> Option<u32> {
        self.values
            .get(node as usize)
            .copied()
            .filter(|&v| v != NIL)
    }

    /// How many bytes of `input` the trie follows from the root (whether
    /// or not a token ends there).
    fn depth_of(&self, input: &[u8]) -> usize {
        let mut node = 0;
        for (i, &b) in input.iter().enumerate() {
            match self.child(node, b) {
                Some(c) => node = c,
                None => return i,
            }
        }
        input.len()
    }
}

/// What a unigram vocabulary needs besides its tokens.
#[derive(Debug)]
pub(crate) struct UgmModel {
    charsmap: Option<Charsmap>,
    /// Normal, user-defined and unused tokens by text.
    pieces: ByteTrie,
    /// User-defined tokens by text, when there are any.
    user_defined: Option<ByteTrie>,
    /// Each token's score in the Viterbi sum (zero for user-defined ones).
    scores: Vec<f32>,
    /// The score of the unknown token.
    unknown_score: f32,
    /// The unknown token (`NIL` if the vocabulary has none).
    unk: u32,
    /// `tokenizer.ggml.add_space_prefix`: a `▁` before the first word.
    add_space_prefix: bool,
    /// `tokenizer.ggml.remove_extra_whitespaces`: no spaces at the ends,
    /// one between words.
    remove_extra_whitespaces: bool,
}

/// The UGM options of a vocabulary, from its metadata.
pub(crate) struct UgmOptions<'a> {
    pub(crate) charsmap: &'a [u8],
    pub(crate) add_space_prefix: bool,
    pub(crate) remove_extra_whitespaces: bool,
    pub(crate) unk: Option<u32>,
}

impl UgmModel {
    /// Builds the matcher. `load_attrs` are the token attributes as the
    /// file gives them (llama.cpp builds its matcher before it promotes
    /// tokens to control by their text); `attrs` are the final ones.
    pub(crate) fn new(
        texts: &[Box<str>],
        scores: &[f32],
        load_attrs: &[u16],
        attrs: &[u16],
        options: UgmOptions<'_>,
    ) -> Result<Self> {
        let charsmap = Charsmap::parse(options.charsmap)?;
        let score = |i: usize| scores.get(i).copied().unwrap_or(0.0);
        let mut min_score = f32::MAX;
        let mut pieces = Vec::with_capacity(texts.len());
        let mut user = Vec::new();
        for (i, (text, &a)) in texts.iter().zip(load_attrs).enumerate() {
            if a & attr::NORMAL != 0 {
                min_score = min_score.min(score(i));
            }
            if a & (attr::NORMAL | attr::USER_DEFINED | attr::UNUSED) != 0 {
                pieces.push((text.as_bytes(), i as u32));
            }
            if a & attr::USER_DEFINED != 0 {
                user.push((text.as_bytes(), i as u32));
            }
        }
        let scores = attrs
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                if a & attr::USER_DEFINED != 0 {
                    0.0
                } else {
                    score(i)
                }
            })
            .collect();
        Ok(Self {
            charsmap,
            pieces: ByteTrie::new(pieces),
            user_defined: (!user.is_empty()).then(|| ByteTrie::new(user)),
            scores,
            unknown_score: min_score - UNKNOWN_PENALTY,
            unk: options.unk.unwrap_or(NIL),
            add_space_prefix: options.add_space_prefix,
            remove_extra_whitespaces: options.remove_extra_whitespaces,
        })
    }

    /// The normalized form of the start of `input` and how many bytes of
    /// `input` it stands for (at least one).
    fn normalize_prefix<'a>(&'a self, input: &'a [u8]) -> (&'a [u8], usize) {
        // The user-defined trie claims as many bytes as it can follow,
        // whether or not a whole token ends there (llama.cpp's rule).
        if let Some(trie) = &self.user_defined {
            let n = trie.depth_of(input);
            if n > 0 {
                return (&input[..n], n);
            }
        }
        if let Some((n, replacement)) = self
            .charsmap
            .as_ref()
            .and_then(|map| map.longest_prefix(input))
        {
            return (replacement, n);
        }
        match utf8_char_len(input) {
            Some(n) => (&input[..n], n),
            None => (REPLACEMENT, 1),
        }
    }
}

/// The length of the UTF-8 sequence that starts `bytes` if it is whole,
/// as llama.cpp decodes one: the lead byte gives the length and the
/// continuation bytes must be `10xxxxxx`.
fn utf8_char_len(bytes: &[u8]) -> Option<usize> {
    let lead = *bytes.first()?;
    let n = match lead {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => return None,
    };
    let rest = bytes.get(1..n)?;
    rest.iter().all(|&b| b & 0xC0 == 0x80).then_some(n)
}

/// How many bytes the Viterbi pass steps over at a byte (its UTF-8 length
/// by its top four bits; a stray continuation byte is one).
#[inline]
fn step_len(b: u8) -> usize {
    match b >> 4 {
        0xC | 0xD => 2,
        0xE => 3,
        0xF => 4,
        _ => 1,
    }
}

/// The best split found so far of the text up to some point.
#[derive(Clone, Copy, Debug)]
struct Best {
    /// The last token of the split.
    token: u32,
    /// Where that token starts.
    start: usize,
    /// The split's total score.
    score: f64,
}

/// Reusable buffers for tokenizing with one unigram vocabulary.
#[derive(Debug, Default)]
pub(crate) struct UgmSession {
    normalized: Vec<u8>,
    best: Vec<Best>,
}

impl UgmSession {
    /// Normalizes `input` into `self.normalized`.
    fn normalize(&mut self, model: &UgmModel, input: &[u8]) {
        let out = &mut self.normalized;
        out.clear();
        out.reserve(input.len() * 3);
        // SentencePiece's `treat_whitespace_as_suffix` is never set for
        // these models (llama.cpp reads no key for it), and UGM always
        // escapes spaces.
        let merge = model.remove_extra_whitespaces;
        let mut prefixed = false;
        let mut in_word = false;
        let mut at = 0;
        while at < input.len() {
            let (piece, used) = model.normalize_prefix(&input[at..]);
            for &c in piece {
                if c == b' ' {
                    in_word = false;
                    if !merge {
                        out.extend_from_slice(SPACE);
                    }
                    continue;
                }
                if !in_word {
                    in_word = true;
                    if (model.add_space_prefix && !prefixed) || merge {
                        out.extend_from_slice(SPACE);
                        prefixed = true;
                    }
                }
                out.push(c);
            }
            at += used;
        }
    }

    /// Appends the ids of `text` (a fragment without special tokens) to
    /// `out`. Errors only when the best split needs the unknown token and
    /// the vocabulary has none.
    pub(crate) fn tokenize(
        &mut self,
        model: &UgmModel,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        self.normalize(model, text.as_bytes());
        let norm = &self.normalized;
        let n = norm.len();
        if n == 0 {
            return Ok(());
        }
        let best = &mut self.best;
        best.clear();
        best.resize(
            n + 1,
            Best {
                token: model.unk,
                start: 0,
                score: f64::MIN,
            },
        );
        best[0].score = 0.0;
        let unknown = f64::from(model.unknown_score);
        // Hot loop: no allocation; one trie walk per character.
        let mut at = 0;
        while at < n {
            let width = step_len(norm[at]).min(n - at);
            let base = best[at].score;
            let mut whole_char = false;
            let mut node = 0;
            for end in at + 1..=n {
                match model.pieces.child(node, norm[end - 1]) {
                    Some(c) => node = c,
                    None => break,
                }
                let Some(id) = model.pieces.value(node) else {
                    continue;
                };
                if end - at == width {
                    whole_char = true;
                }
                let score = base + f64::from(model.scores[id as usize]);
                if score > best[end].score {
                    best[end] = Best {
                        token: id,
                        start: at,
                        score,
                    };
                }
            }
            if !whole_char {
                let score = base + unknown;
                let end = at + width;
                if score > best[end].score {
                    best[end] = Best {
                        token: model.unk,
                        start: at,
                        score,
                    };
                }
            }
            at += width;
        }

        // Back from the end; a run of unknowns is one unknown.
        let mark = out.len();
        let mut pos = n;
        let mut prev_unknown = false;
        loop {
            let b = best[pos];
            let unknown = b.token == model.unk;
            if !(prev_unknown && unknown) {
                out.push(b.token);
            }
            if b.start == 0 {
                break;
            }
            prev_unknown = unknown;
            pos = b.start;
        }
        out[mark..].reverse();
        if out[mark..].contains(&NIL) {
            out.truncate(mark);
            return Err(Error::Tokenizer(format!(
                "no piece covers part of {text:?} and the vocabulary has no unknown token"
            )));
        }
        Ok(())
    }
}

/// A precompiled character map for `replacements` (each key's bytes
/// replaced by its bytes), as SentencePiece's converters store one in
/// `tokenizer.ggml.precompiled_charsmap`: darts-clone's double array (here
/// a block of 256 units for each node with children, a key's value at
/// label 0 of its block), then the NUL-terminated replacements. For
/// writing unigram vocabularies (tests, synthetic models).
///
/// ```
/// use realm_core::tokenizer::{precompiled_charsmap, TokenType, Tokenizer, Vocab, VocabKind};
/// let pieces = ["<pad>", "</s>", "<unk>", "\u{2581}a"].map(String::from).to_vec();
/// let mut v = Vocab::new(VocabKind::Ugm, pieces);
/// v.token_types = [3, 3, 2, 1].map(TokenType::from_gguf).to_vec();
/// v.scores = vec![0.0, 0.0, 0.0, -1.0];
/// v.precompiled_charsmap = precompiled_charsmap(&[("Ａ".as_bytes(), b"a")])?;
/// v.add_space_prefix = Some(true);
/// let t = Tokenizer::from_parts(v)?;
/// assert_eq!(t.encode("Ａ", false, false)?, [3]);
/// # Ok::<(), realm_core::Error>(())
/// ```
///
/// Fails where the array outgrows the format's 21-bit offsets.
pub fn precompiled_charsmap(replacements: &[(&[u8], &[u8])]) -> Result<Vec<u8>> {
    #[derive(Default)]
    struct Node {
        children: std::collections::BTreeMap<u8, Node>,
        value: Option<u32>,
    }
    // The unit at `index` gets a block of its own for its children.
    fn place(node: &Node, index: usize, units: &mut Vec<u32>) -> Result<()> {
        let block = units.len();
        units.resize(block + 256, 0);
        let offset = u32::try_from(index ^ block)
            .ok()
            .filter(|&o| o < 1 << 21)
            .ok_or_else(|| charsmap_error("too many keys for 21-bit offsets"))?;
        units[index] = (units[index] & 0x1FF) | (offset << 10);
        if let Some(v) = node.value {
            units[block] = (1 << 31) | v;
        }
        for (&b, child) in &node.children {
            let at = block | b as usize;
            units[at] = u32::from(b) | (u32::from(child.value.is_some()) << 8);
            place(child, at, units)?;
        }
        Ok(())
    }
    let mut root = Node::default();
    let mut strings = Vec::new();
    for (key, repl) in replacements {
        let mut node = &mut root;
        for &b in *key {
            node = node.children.entry(b).or_default();
        }
        let at = u32::try_from(strings.len())
            .ok()
            .filter(|&a| a < 1 << 31)
            .ok_or_else(|| charsmap_error("replacements too long"))?;
        node.value = Some(at);
        strings.extend_from_slice(repl);
        strings.push(0);
    }
    let mut units = vec![0u32; 256];
    place(&root, 0, &mut units)?;
    let size = u32::try_from(units.len() * 4).map_err(|_| charsmap_error("too many keys"))?;
    let mut bytes = size.to_le_bytes().to_vec();
    bytes.extend(units.iter().flat_map(|u| u.to_le_bytes()));
    bytes.extend_from_slice(&strings);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::{TokenType, Tokenizer, Vocab, VocabKind};
    use super::*;

    fn charsmap_bytes(keys: &[(&[u8], &[u8])]) -> Vec<u8> {
        precompiled_charsmap(keys).unwrap()
    }

    fn charsmap(keys: &[(&str, &str)]) -> Vec<u8> {
        let keys: Vec<(&[u8], &[u8])> = keys
            .iter()
            .map(|(k, r)| (k.as_bytes(), r.as_bytes()))
            .collect();
        charsmap_bytes(&keys)
    }

    /// A tiny unigram vocabulary: `<pad>`, `</s>`, `<unk>`, then pieces
    /// with their scores.
    fn vocab(pieces: &[(&str, f32)]) -> Vocab {
        let mut tokens: Vec<String> = ["<pad>", "</s>", "<unk>"].map(String::from).to_vec();
        let mut scores = vec![0.0, 0.0, 0.0];
        let mut types = vec![TokenType::Control, TokenType::Control, TokenType::Unknown];
        for &(p, s) in pieces {
            tokens.push(p.to_string());
            scores.push(s);
            types.push(TokenType::Normal);
        }
        let mut v = Vocab::new(VocabKind::Ugm, tokens);
        v.scores = scores;
        v.token_types = types;
        v
    }

    const PIECES: &[(&str, f32)] = &[
        ("▁", -2.0),
        ("▁a", -3.0),
        ("▁ab", -4.0),
        ("b", -3.0),
        ("c", -2.5),
        ("bc", -6.0),
        ("▁abc", -9.5),
        ("x", -1.0),
        ("é", -1.0),
    ];

    fn tok(v: Vocab) -> Tokenizer {
        Tokenizer::from_parts(v).unwrap()
    }

    fn texts(t: &Tokenizer, ids: &[u32]) -> Vec<String> {
        ids.iter()
            .map(|&id| t.token_text(id).unwrap().to_string())
            .collect()
    }

    fn enc(t: &Tokenizer, s: &str) -> Vec<String> {
        texts(t, &t.encode(s, false, false).unwrap())
    }

    /// The normalizer's output for `s`.
    fn normalized(t: &Tokenizer, s: &str) -> String {
        let mut session = UgmSession::default();
        session.normalize(t.ugm.as_ref().unwrap(), s.as_bytes());
        String::from_utf8_lossy(&session.normalized).into_owned()
    }

    #[test]
    fn defaults_are_llama_cpps() {
        let t = tok(vocab(PIECES));
        let s = t.special_tokens();
        assert_eq!(
            (s.bos, s.eos, s.unk, s.sep, s.pad, s.mask),
            (None, Some(1), Some(2), None, Some(0), None)
        );
        assert!(!t.add_bos() && t.add_eos());
        // No space prefix unless the file asks for one.
        assert_eq!(enc(&t, "x"), ["x"]);
        assert_eq!(t.encode("x", true, false).unwrap(), [10, 1], "EOS appended");
    }

    #[test]
    fn viterbi_takes_the_best_sum() {
        let mut v = vocab(PIECES);
        v.add_space_prefix = Some(true);
        let t = tok(v);
        // ▁ab + c = -6.5 beats ▁abc (-9.5), ▁a + bc (-9) and ▁a + b + c.
        assert_eq!(enc(&t, "abc"), ["▁ab", "c"]);
        // With ▁abc dearer no more, the whole piece wins.
        let mut pieces = PIECES.to_vec();
        pieces[6].1 = -6.0;
        let mut v = vocab(&pieces);
        v.add_space_prefix = Some(true);
        let t = tok(v);
        assert_eq!(enc(&t, "abc"), ["▁abc"]);
        // Decoding drops the prefixed space.
        let ids = t.encode("abc x", false, false).unwrap();
        assert_eq!(t.decode(&ids, false, false).unwrap(), "abc x");
    }

    #[test]
    fn equal_sums_keep_the_split_found_first() {
        // ▁a + b and ▁ + ab both sum to -4: the split whose last piece
        // starts earlier was found first and stays.
        let t = tok(vocab(&[
            ("▁", -1.0),
            ("▁a", -2.0),
            ("b", -2.0),
            ("ab", -3.0),
        ]));
        assert_eq!(enc(&t, " ab"), ["▁", "ab"]);
    }

    #[test]
    fn unknown_characters_and_runs_of_them() {
        let t = tok(vocab(PIECES));
        // The unknown token scores 10 below the lowest normal piece.
        assert_eq!(t.encode("qqq", false, false).unwrap(), [2], "one unknown");
        assert_eq!(enc(&t, "xqqxq"), ["x", "<unk>", "x", "<unk>"]);
        assert_eq!(enc(&t, "é"), ["é"]);
        // A piece that covers a character only with its neighbours does
        // not stop the character from being unknown on its own.
        let t2 = tok(vocab(&[("qz", -1.0), ("z", -1.0)]));
        assert_eq!(enc(&t2, "qz"), ["qz"]);
        assert_eq!(enc(&t2, "qq"), ["<unk>"]);
        // ...and the unknown is taken when its sum wins. Here it scores
        // -50 (10 below `qz`'s -40), so `q` + `z` beats `qz` just when `z`
        // scores above 10.
        let t3 = |z: f32| tok(vocab(&[("qz", -40.0), ("z", z)]));
        assert_eq!(enc(&t3(9.5), "qz"), ["qz"]);
        assert_eq!(enc(&t3(10.5), "qz"), ["<unk>", "z"]);
        // Unknown tokens decode to nothing unless asked.
        let ids = t.encode("xq", false, false).unwrap();
        assert_eq!(t.decode(&ids, false, false).unwrap(), "x");
        assert_eq!(t.decode(&ids, false, true).unwrap(), "x<unk>");
        // Without an unknown token (two tokens: the default id 2 is out of
        // range) that is an error, not a panic.
        let mut v = Vocab::new(VocabKind::Ugm, vec!["x".into(), "z".into()]);
        v.scores = vec![-1.0, -1.0];
        let t = tok(v);
        assert_eq!(t.special_tokens().unk, None);
        assert!(t.encode("xq", false, false).is_err());
        assert_eq!(enc(&t, "zx"), ["z", "x"]);
    }

    #[test]
    fn user_defined_tokens_score_zero_and_claim_their_prefix() {
        let mut v = vocab(PIECES);
        v.tokens.extend(["<u>".into(), "▁b".into()]);
        v.scores.extend([-50.0, -50.0]);
        v.token_types
            .extend([TokenType::UserDefined, TokenType::UserDefined]);
        let t = tok(v);
        // Matched whole in the text, always.
        assert_eq!(t.encode("x<u>x", false, false).unwrap(), [10, 12, 10]);
        // Made by the normalizer, a user-defined piece is worth 0 (not its
        // -50): `▁b` beats `▁` + `b` (-5).
        assert_eq!(enc(&t, " b"), ["▁b"]);

        // The normalizer passes on as they are the bytes the user-defined
        // trie can follow, even where no token ends: `<` escapes the
        // character map when `u` could follow, and is unknown.
        let mut v = vocab(PIECES);
        v.tokens.extend(["<u>".into(), "Ⅻ".into()]);
        v.scores.extend([0.0, -1.0]);
        v.token_types
            .extend([TokenType::UserDefined, TokenType::Normal]);
        v.precompiled_charsmap = charsmap(&[("<", "Ⅻ"), ("y", "Ⅻ")]);
        let t = tok(v);
        assert_eq!(normalized(&t, "<xy"), "<xⅫ");
        assert_eq!(enc(&t, "<xy"), ["<unk>", "x", "Ⅻ"]);
    }

    #[test]
    fn charsmap_replaces_longest_prefixes() {
        let mut v = vocab(PIECES);
        v.precompiled_charsmap = charsmap(&[
            ("Ａ", "a"),
            ("Ｂ", "b"),
            ("ＡＢ", "abc"),
            ("\t", " "),
            ("\u{7}", ""),
            ("ｅ\u{301}", "é"),
        ]);
        v.add_space_prefix = Some(true);
        v.remove_extra_whitespaces = Some(true);
        let t = tok(v);
        // ＡＢ is one key, the longest, so it becomes `abc`; Ａ alone `a`.
        assert_eq!(normalized(&t, "ＡＢ"), "▁abc");
        assert_eq!(normalized(&t, "ＡＡＢＢ"), "▁aabcb");
        assert_eq!(normalized(&t, "ｅ\u{301}ｅ"), "▁éｅ");
        assert_eq!(enc(&t, "ＡＢ"), ["▁ab", "c"]);
        // Tabs become spaces, which merge; the bell vanishes.
        assert_eq!(normalized(&t, "\t a\u{7}b\t\t c "), "▁ab▁c");
        assert_eq!(enc(&t, "\t a\u{7}b\t\t c "), ["▁ab", "▁", "c"]);
        // A NUL ends a key: it is passed on as it is.
        assert_eq!(normalized(&t, "\u{0}Ａ"), "▁\u{0}a");
    }

    #[test]
    fn whitespace_options() {
        let norm = |prefix: bool, merge: bool, s: &str| {
            let mut v = vocab(&[("▁", -1.0), ("x", -1.0)]);
            v.add_space_prefix = Some(prefix);
            v.remove_extra_whitespaces = Some(merge);
            normalized(&tok(v), s)
        };
        assert_eq!(norm(false, false, "  x  x "), "▁▁x▁▁x▁");
        assert_eq!(norm(true, false, "  x  x "), "▁▁▁x▁▁x▁");
        // Merging puts one `▁` before every word, prefix or not.
        assert_eq!(norm(false, true, "  x  x "), "▁x▁x");
        assert_eq!(norm(true, true, "x x"), "▁x▁x");
        assert_eq!(norm(true, true, "   "), "");
        assert_eq!(norm(true, false, ""), "");
    }

    #[test]
    fn malformed_charsmaps_are_load_errors() {
        let load = |bytes: Vec<u8>| {
            let mut v = vocab(PIECES);
            v.precompiled_charsmap = bytes;
            Tokenizer::from_parts(v)
        };
        let good = charsmap(&[("Ａ", "a"), ("ＡＢ", "ab")]);
        assert!(load(good.clone()).is_ok());
        assert!(load(Vec::new()).is_ok(), "no map");
        for bad in [
            vec![1, 0],                      // short header
            vec![8, 0, 0, 0, 1, 2, 3, 4],    // array past the end
            vec![4, 0, 0, 0, 1, 2, 3, 4],    // no replacements
            good[..good.len() - 1].to_vec(), // last string unterminated
        ] {
            let err = load(bad.clone()).unwrap_err().to_string();
            assert!(err.contains("precompiled_charsmap"), "{bad:?}: {err}");
        }
        // The array cut short by its last block: children fall outside.
        let len = u32::from_le_bytes([good[0], good[1], good[2], good[3]]) as usize;
        let mut cut = good.clone();
        cut.drain(4 + len - 1024..4 + len);
        cut[..4].copy_from_slice(&((len - 1024) as u32).to_le_bytes());
        assert!(load(cut).is_err());
        // Replacement offsets past the strings.
        let mut far = good.clone();
        for unit in far[4..4 + len].chunks_exact_mut(4) {
            let u = u32::from_le_bytes([unit[0], unit[1], unit[2], unit[3]]);
            if u >> 31 == 1 {
                unit.copy_from_slice(&((1u32 << 31) | 5000).to_le_bytes());
            }
        }
        assert!(load(far).is_err());
        // Bytes changed at random load or fail, and never panic.
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut loaded = 0;
        for round in 0..3000 {
            let mut bytes = good.clone();
            for _ in 0..1 + round % 4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = (seed % bytes.len() as u64) as usize;
                bytes[i] = (seed >> 32) as u8;
            }
            if let Ok(t) = load(bytes) {
                loaded += 1;
                t.encode("ＡＢ a Ａ\u{0}Ａ\u{FFFF}", false, false).unwrap();
            }
        }
        assert!(loaded > 0);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_stepped_over() {
        // A replacement that is a lone UTF-8 lead byte: the pass steps over
        // it with the byte after it, as one unknown.
        let mut v = vocab(PIECES);
        v.precompiled_charsmap = charsmap_bytes(&[(b"a", b"\xC3"), (b"q", b"x")]);
        let t = tok(v);
        assert_eq!(enc(&t, "aq"), ["<unk>"]);
        assert_eq!(enc(&t, "aqq"), ["<unk>", "x"]);
        // A key that ends inside a character: the rest of the character
        // is not a character, and becomes U+FFFD.
        let mut v = vocab(PIECES);
        v.precompiled_charsmap = charsmap_bytes(&[(b"\xC3", b"x")]);
        let t = tok(v);
        assert_eq!(normalized(&t, "é"), "x\u{FFFD}");
        assert_eq!(enc(&t, "é"), ["x", "<unk>"]);
        assert_eq!(utf8_char_len(b"\xC3"), None);
        assert_eq!(utf8_char_len(b"\xC3\x28"), None);
        assert_eq!(utf8_char_len(b"\xE2\x96\x81"), Some(3));
        assert_eq!(utf8_char_len(b"\x80"), None);
        assert_eq!(utf8_char_len(b"\xF8\x80\x80\x80"), None);
        assert_eq!((step_len(0x80), step_len(0xC3), step_len(0xF0)), (1, 2, 4));
    }

    #[test]
    fn trie_follows_and_stops() {
        let t = ByteTrie::new(vec![(&b"ab"[..], 0), (b"abc", 1), (b"b", 2), (b"ab", 3)]);
        let a = t.child(0, b'a').unwrap();
        let ab = t.child(a, b'b').unwrap();
        assert_eq!(t.value(a), None);
        assert_eq!(t.value(ab), Some(3), "the later of equal texts");
        assert_eq!(t.value(t.child(ab, b'c').unwrap()), Some(1));
        assert_eq!(t.child(ab, b'd'), None);
        assert_eq!(t.value(t.child(0, b'b').unwrap()), Some(2));
        assert_eq!(t.depth_of(b"abd"), 2);
        assert_eq!(t.depth_of(b"zz"), 0);
        let empty = ByteTrie::new(Vec::new());
        assert_eq!(empty.child(0, b'a'), None);
        // A node with many children is searched, not scanned.
        let texts: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b'p', b]).collect();
        let t = ByteTrie::new(texts.iter().zip(0..).map(|(t, i)| (&t[..], i)).collect());
        let p = t.child(0, b'p').unwrap();
        for b in 0..=255u8 {
            assert_eq!(t.child(p, b).and_then(|n| t.value(n)), Some(u32::from(b)));
        }
    }
}
