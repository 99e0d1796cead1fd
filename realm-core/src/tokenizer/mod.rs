//! Tokenizers built from GGUF metadata, token for token identical to
//! llama.cpp's.
//!
//! Four vocabulary kinds are supported (see [`VocabKind`]):
//! SentencePiece-style BPE by scores with byte fallback (`llama`, as Gemma
//! uses), BPE by merge rank (`gpt2`) with the pre-tokenizer
//! `tokenizer.ggml.pre` names (`default`, `gpt2`, `llama3`/`llama-bpe`,
//! `qwen2`, `smollm`, `starcoder`, `deepseek-llm` and their aliases):
//! byte-level, or over `▁`-escaped characters with `<0xXX>` byte fallback
//! for `gemma4` (Gemma 4's `tokenizer.ggml.model`, which implies that
//! pre-tokenizer), WordPiece (`bert`, BERT-family embedding models) and
//! SentencePiece's unigram model (`t5`: T5 and XLM-RoBERTa, as bge-m3,
//! multilingual-e5 and nomic-embed-text-v2 use).
//!
//! ```
//! use realm_core::tokenizer::{Tokenizer, Vocab, VocabKind};
//! // A toy SentencePiece vocabulary: unknown, BOS, EOS, then pieces.
//! let pieces = ["<unk>", "<s>", "</s>", "▁", "h", "i", "▁h", "▁hi"];
//! let mut vocab = Vocab::new(VocabKind::Spm, pieces.iter().map(|s| s.to_string()).collect());
//! vocab.scores = vec![0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -1.5, -0.5];
//! let tok = Tokenizer::from_parts(vocab)?;
//! let ids = tok.encode("hi", true, false)?;
//! assert_eq!(ids, [1, 7]); // BOS, "▁hi" (a space is prefixed)
//! // Like llama.cpp, decoding drops the prefixed space of the first token.
//! assert_eq!(tok.decode(&ids[1..], false, false)?, "hi");
//! # Ok::<(), realm_core::Error>(())
//! ```
//!
//! Decoding ([`Tokenizer::decode`], [`Tokenizer::token_to_piece`]) and
//! streaming ([`StreamDecoder`]) follow llama.cpp's `detokenize`.

mod bpe;
mod decode;
mod hash;
mod metadata;
mod pretokenize;
mod special;
mod spm;
mod trie;
mod ugm;
mod unicode;
mod unicode_tables;
mod vocab;
mod wpm;

pub use decode::StreamDecoder;
pub use hash::{FastMap, FxHasher};
pub use trie::PieceTrie;
pub use ugm::precompiled_charsmap;
pub use vocab::{SpecialTokens, TokenType, Vocab, VocabKind};

use bpe::{BpeModel, BpeSession};
use pretokenize::{PreOptions, PreTokenizer};
use special::{Fragment, SpecialMatcher, SpecialToken};
use spm::SpmSession;
use ugm::{UgmModel, UgmOptions, UgmSession};
use wpm::{WpmModel, WpmSession};

use crate::{Error, Result};

/// Token attribute bits (llama.cpp's `llama_token_attr`).
pub(crate) mod attr {
    pub(crate) const UNKNOWN: u16 = 1 << 0;
    pub(crate) const UNUSED: u16 = 1 << 1;
    pub(crate) const NORMAL: u16 = 1 << 2;
    pub(crate) const CONTROL: u16 = 1 << 3;
    pub(crate) const USER_DEFINED: u16 = 1 << 4;
    pub(crate) const BYTE: u16 = 1 << 5;
    pub(crate) const LSTRIP: u16 = 1 << 7;
    pub(crate) const RSTRIP: u16 = 1 << 8;
}

#[derive(Debug)]
struct TokenData {
    text: Box<str>,
    score: f32,
    attrs: u16,
    /// The decoded bytes, control tokens rendered.
    piece: Box<[u8]>,
}

/// A tokenizer: text to token ids and back.
///
/// Build one with [`from_metadata`](Self::from_metadata) (a GGUF file's
/// `tokenizer.*` keys) or [`from_parts`](Self::from_parts) (a plain
/// [`Vocab`]). It is immutable and `Sync`: share one across threads.
#[derive(Debug)]
pub struct Tokenizer {
    kind: VocabKind,
    tokens: Vec<TokenData>,
    token_map: FastMap<Box<str>, u32>,
    special: SpecialTokens,
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    /// The model wants a separator after its input (`add_sep_token`).
    add_sep: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    /// SPM: the token of each byte (`<0xNN>`).
    byte_tokens: [Option<u32>; 256],
    bpe: Option<BpeModel>,
    /// WordPiece's normalizer options, for `VocabKind::Wpm`.
    wpm: Option<WpmModel>,
    /// The unigram matcher and normalizer, for `VocabKind::Ugm`.
    ugm: Option<UgmModel>,
    specials: SpecialMatcher,
    /// Every token's piece in a trie, built on first use.
    trie: std::sync::OnceLock<PieceTrie>,
}

/// Texts llama.cpp takes as end-of-turn when the file names none.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Texts of tokens that end generation (and are forced to be control tokens).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle token texts: prefix, suffix, middle, pad, repo, file
/// separator. Found ones become control tokens; the last three end generation.
const FIM_TEXTS: [&[&str]; 6] = [
    &[
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ],
    &[
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ],
    &[
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ],
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];

impl Tokenizer {
    /// Builds a tokenizer from a plain vocabulary description, applying the
    /// defaults and fix-ups llama.cpp applies when it loads a model.
    pub fn from_parts(vocab: Vocab) -> Result<Self> {
        let n = vocab.tokens.len();
        let n_u32 = u32::try_from(n)
            .ok()
            .filter(|&n| n > 0 && n < u32::MAX)
            .ok_or_else(|| Error::Tokenizer(format!("vocabulary has {n} tokens")))?;
        if !vocab.scores.is_empty() && vocab.scores.len() < n {
            return Err(Error::Tokenizer(format!(
                "{} scores for {n} tokens",
                vocab.scores.len()
            )));
        }
        if !vocab.token_types.is_empty() && vocab.token_types.len() < n {
            return Err(Error::Tokenizer(format!(
                "{} token types for {n} tokens",
                vocab.token_types.len()
            )));
        }

        let options = match vocab.kind {
            VocabKind::Bpe => Some(PreOptions::from_name(vocab.pre.as_deref().unwrap_or(""))?),
            VocabKind::Spm | VocabKind::Wpm | VocabKind::Ugm => None,
        };

        let mut texts: Vec<Box<str>> = Vec::with_capacity(n);
        let mut attrs: Vec<u16> = Vec::with_capacity(n);
        let mut token_map: FastMap<Box<str>, u32> = FastMap::default();
        token_map.reserve(n);
        for (i, t) in vocab.tokens.into_iter().enumerate() {
            let text: Box<str> = if t.is_empty() {
                format!("[EMPTY_{i}]").into()
            } else {
                t.into()
            };
            token_map.insert(text.clone(), i as u32);
            texts.push(text);
            attrs.push(match vocab.token_types.get(i) {
                None => attr::NORMAL,
                Some(TokenType::Undefined) => 0,
                Some(TokenType::Normal) => attr::NORMAL,
                Some(TokenType::Unknown) => attr::UNKNOWN,
                Some(TokenType::Control) => attr::CONTROL,
                Some(TokenType::UserDefined) => attr::USER_DEFINED,
                Some(TokenType::Unused) => attr::UNUSED,
                Some(TokenType::Byte) => attr::BYTE,
            });
        }

        // Defaults by kind, then the file's values where they are in range.
        let in_range = |id: Option<u32>| id.filter(|&i| i < n_u32);
        let pick = |given: Option<u32>, default: Option<u32>| in_range(given).or(in_range(default));
        let s = &vocab.special;
        let (bos, eos, unk) = match vocab.kind {
            VocabKind::Spm => (Some(1), Some(2), Some(0)),
            VocabKind::Bpe => {
                let (bos, eos) = options.map_or((None, None), |o| o.default_bos_eos);
                (bos, eos, None)
            }
            // BERT's: [CLS] begins, [UNK], no end of sequence.
            VocabKind::Wpm => (Some(101), None, Some(100)),
            // T5's: no BOS, </s> 1, <unk> 2.
            VocabKind::Ugm => (None, Some(1), Some(2)),
        };
        let (sep, pad, mask) = match vocab.kind {
            // [SEP], [PAD], [MASK].
            VocabKind::Wpm => (Some(102), Some(0), Some(103)),
            // T5's <pad>.
            VocabKind::Ugm => (None, Some(0), None),
            VocabKind::Spm | VocabKind::Bpe => (None, None, None),
        };
        let mut special = SpecialTokens {
            bos: pick(s.bos, bos),
            eos: pick(s.eos, eos),
            eot: in_range(s.eot),
            eom: in_range(s.eom),
            unk: pick(s.unk, unk),
            sep: pick(s.sep, sep),
            pad: pick(s.pad, pad),
            mask: pick(s.mask, mask),
        };
        let add_bos = match options {
            // llama.cpp overrides Gemma 4 files that say not to add BOS.
            Some(o) if o.pre == PreTokenizer::Gemma4 => true,
            Some(o) => vocab.add_bos.unwrap_or(o.add_bos),
            // T5 adds no BOS, and ends its input with EOS.
            None => vocab.add_bos.unwrap_or(vocab.kind != VocabKind::Ugm),
        };
        let add_eos = vocab.add_eos.unwrap_or(vocab.kind == VocabKind::Ugm);
        let add_sep = vocab
            .add_sep
            .unwrap_or(vocab.kind == VocabKind::Wpm || options.is_some_and(|o| o.add_sep));
        let add_space_prefix = vocab
            .add_space_prefix
            .unwrap_or(vocab.kind == VocabKind::Spm);
        let clean_spaces = vocab.kind == VocabKind::Wpm || options.is_some_and(|o| o.clean_spaces);
        let wpm = (vocab.kind == VocabKind::Wpm).then(|| {
            // llama.cpp lowercases unless told not to; accents go with
            // the case unless the file says otherwise.
            let lowercase = vocab.lowercase.unwrap_or(true);
            WpmModel {
                lowercase,
                strip_accents: vocab.strip_accents.unwrap_or(lowercase),
                max_token_len: texts.iter().map(|t| t.len()).max().unwrap_or(0),
            }
        });

        // llama.cpp builds the unigram matcher before the fix-ups below.
        let load_attrs = (vocab.kind == VocabKind::Ugm).then(|| attrs.clone());

        // Tokens recognised by their text: end of turn, fill-in-the-middle,
        // end of generation. Those become control tokens.
        let find = |list: &[&str]| list.iter().find_map(|t| token_map.get(*t).copied());
        let mut make_control = |id: u32| {
            if let Some(a) = attrs.get_mut(id as usize) {
                *a |= attr::CONTROL;
            }
        };
        if special.eot.is_none() {
            // llama.cpp takes the first match in its hash map's order, an
            // accident of hashing; this takes the first in list order.
            special.eot = find(EOT_TEXTS);
        }
        if special.eom.is_none() {
            special.eom = token_map.get("<|eom_id|>").copied();
        }
        let mut eog: Vec<u32> = Vec::new();
        for (k, list) in FIM_TEXTS.iter().enumerate() {
            if let Some(id) = find(list) {
                make_control(id);
                if k >= 3 {
                    eog.push(id);
                }
            }
        }
        for text in EOG_TEXTS {
            if let Some(&id) = token_map.get(*text) {
                make_control(id);
                eog.push(id);
            }
        }
        eog.extend(
            [special.eos, special.eot, special.eom]
                .into_iter()
                .flatten(),
        );
        eog.sort_unstable();
        eog.dedup();
        // o200k_harmony (gpt-oss): `<|end|>` ends a message, not the reply,
        // where `<|return|>` and `<|call|>` end replies (likewise beside
        // `<|calls|>` and `<|flush|>`): llama.cpp drops it from the ending
        // tokens and shows it as text.
        let has = |t: &str| eog.iter().any(|&id| &*texts[id as usize] == t);
        if has("<|end|>")
            && ((has("<|return|>") && has("<|call|>")) || (has("<|calls|>") && has("<|flush|>")))
        {
            if let Some(pos) = eog.iter().position(|&id| &*texts[id as usize] == "<|end|>") {
                attrs[eog[pos] as usize] = attr::USER_DEFINED;
                eog.remove(pos);
            }
        }
        // Harmony's message markers are text too, as llama.cpp makes them
        // (so that a reply shows its channels).
        for text in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = token_map.get(text) {
                attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        // A model with its own end-of-response marker keeps `</s>` as text.
        let has_marker = eog
            .iter()
            .any(|&id| matches!(&*texts[id as usize], "<|tool_response>" | "<|plamo:eos|>"));
        if has_marker {
            if let Some(pos) = eog.iter().position(|&id| &*texts[id as usize] == "</s>") {
                attrs[eog[pos] as usize] = attr::NORMAL;
                eog.remove(pos);
            }
        }

        // Per-model attributes llama.cpp sets by name: a `<mask>` that
        // takes the whitespace before it.
        let pre = vocab.pre.as_deref().unwrap_or("");
        let arch = vocab.architecture.as_deref().unwrap_or("");
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"]
            .iter()
            .any(|p| pre.contains(p))
            || ["nomic-bert-moe", "jina-bert-v3"]
                .iter()
                .any(|a| arch.contains(a))
        {
            if let Some(&id) = token_map.get("<mask>") {
                attrs[id as usize] |= attr::LSTRIP;
            }
        }

        // Special tokens that may be written in text: longest first.
        let mut cands: Vec<u32> = (0..n_u32)
            .filter(|&id| {
                attrs[id as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        cands.sort_by_key(|&id| std::cmp::Reverse(texts[id as usize].len()));
        let specials = SpecialMatcher::new(
            cands
                .iter()
                .map(|&id| {
                    let a = attrs[id as usize];
                    (
                        SpecialToken {
                            id,
                            always: a & (attr::CONTROL | attr::UNKNOWN) == 0,
                            lstrip: a & attr::LSTRIP != 0,
                            rstrip: a & attr::RSTRIP != 0,
                        },
                        &*texts[id as usize],
                    )
                })
                .collect(),
        )?;

        let mut byte_tokens = [None; 256];
        if vocab.kind == VocabKind::Spm {
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                *slot = token_map
                    .get(format!("<0x{b:02X}>").as_str())
                    .copied()
                    .or_else(|| {
                        let c = char::from_u32(b as u32).filter(|c| c.is_ascii())?;
                        token_map.get(c.to_string().as_str()).copied()
                    });
            }
        }

        let ugm = match &load_attrs {
            Some(load_attrs) => Some(UgmModel::new(
                &texts,
                &vocab.scores,
                load_attrs,
                &attrs,
                UgmOptions {
                    charsmap: &vocab.precompiled_charsmap,
                    add_space_prefix,
                    remove_extra_whitespaces: vocab.remove_extra_whitespaces.unwrap_or(false),
                    unk: special.unk,
                },
            )?),
            None => None,
        };

        let bpe = match options {
            Some(o) => Some(BpeModel::new(&token_map, n_u32, &vocab.merges, o)?),
            None => None,
        };

        let byte_level = options.is_some_and(|o| !o.spm_style);
        let tokens = texts
            .into_iter()
            .zip(attrs)
            .enumerate()
            .map(|(i, (text, attrs))| TokenData {
                piece: decode::piece_bytes(byte_level, &text, attrs).into(),
                score: vocab.scores.get(i).copied().unwrap_or(0.0),
                text,
                attrs,
            })
            .collect();

        Ok(Self {
            kind: vocab.kind,
            tokens,
            token_map,
            special,
            eog,
            add_bos,
            add_eos,
            add_sep,
            add_space_prefix,
            clean_spaces,
            byte_tokens,
            bpe,
            wpm,
            ugm,
            specials,
            trie: std::sync::OnceLock::new(),
        })
    }

    /// Tokenizes `text` as llama.cpp's `llama_tokenize` does.
    ///
    /// `add_special` adds the BOS/EOS tokens the model asks for
    /// (`add_bos_token`/`add_eos_token`); `parse_special` matches control
    /// tokens written in the text (`<|im_start|>`, `<start_of_turn>`) as
    /// single tokens instead of tokenizing their characters. User-defined
    /// tokens are always matched.
    ///
    /// A WordPiece (BERT) vocabulary, as llama.cpp's, always frames the
    /// text with `[CLS]` (its BOS) and `[SEP]` when `add_special` is set,
    /// whatever `add_bos_token` and `add_sep_token` say. A unigram (T5)
    /// vocabulary adds no BOS and appends EOS unless its file says
    /// otherwise (llama.cpp's defaults).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let mut fragments = Vec::new();
        self.specials.partition(text, parse_special, &mut fragments);
        if let Some(model) = &self.wpm {
            if add_special {
                out.push(self.required(self.special.bos, "BOS")?);
            }
            let mut session = WpmSession::default();
            for f in &fragments {
                match f {
                    Fragment::Text(r) => {
                        session.tokenize(self, model, &text[r.clone()], &mut out)?
                    }
                    Fragment::Token(id) => out.push(*id),
                }
            }
            if add_special {
                out.push(self.required(self.special.sep, "SEP")?);
            }
            return Ok(out);
        }
        if add_special && self.add_bos {
            out.push(self.required(self.special.bos, "BOS")?);
        }
        match (&self.bpe, &self.ugm) {
            (None, Some(model)) => {
                // Each piece of text is normalized on its own (a space
                // prefix for each, where the model asks for one).
                let mut session = UgmSession::default();
                for f in &fragments {
                    match f {
                        Fragment::Text(r) => session.tokenize(model, &text[r.clone()], &mut out)?,
                        Fragment::Token(id) => out.push(*id),
                    }
                }
            }
            (None, None) => {
                let mut session = SpmSession::default();
                let mut buf = String::new();
                let mut prev_special = true;
                for f in &fragments {
                    match f {
                        Fragment::Text(r) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in text[r.clone()].chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            session.tokenize(self, &buf, &mut out)?;
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(*id);
                            prev_special = true;
                        }
                    }
                }
            }
            (Some(model), _) => {
                let mut session = BpeSession::default();
                for f in &fragments {
                    match f {
                        Fragment::Text(r) => {
                            session.tokenize(self, model, &text[r.clone()], &mut out)
                        }
                        Fragment::Token(id) => out.push(*id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.push(self.required(self.special.eos, "EOS")?);
        }
        Ok(out)
    }

    fn required(&self, id: Option<u32>, what: &str) -> Result<u32> {
        id.ok_or_else(|| Error::Tokenizer(format!("the model adds {what} but has no {what} token")))
    }

    fn token(&self, id: u32) -> Result<&TokenData> {
        self.tokens.get(id as usize).ok_or_else(|| {
            Error::Tokenizer(format!(
                "token id {id} out of range (vocabulary has {})",
                self.tokens.len()
            ))
        })
    }

    /// The id of the token whose text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.lookup(text)
    }

    #[inline]
    pub(crate) fn lookup(&self, text: &str) -> Option<u32> {
        self.token_map.get(text).copied()
    }

    #[inline]
    pub(crate) fn score(&self, id: u32) -> f32 {
        self.tokens.get(id as usize).map_or(0.0, |t| t.score)
    }

    /// SPM byte fallback: the token for byte `b`, else the unknown token.
    pub(crate) fn byte_token(&self, b: u8) -> Result<u32> {
        self.byte_tokens[b as usize]
            .or(self.special.unk)
            .ok_or_else(|| {
                Error::Tokenizer(format!("no token for byte 0x{b:02X} and no unknown token"))
            })
    }

    /// Every token's piece (`token_to_piece` with control tokens rendered)
    /// in a byte trie, for walking the whole vocabulary at once, as a
    /// grammar does to find the tokens that may come next. Built on the
    /// first call (tens of milliseconds for a 256k vocabulary), then kept.
    pub fn piece_trie(&self) -> &PieceTrie {
        self.trie
            .get_or_init(|| PieceTrie::new(self.tokens.iter().map(|t| &*t.piece)))
    }

    /// The vocabulary kind.
    pub fn kind(&self) -> VocabKind {
        self.kind
    }

    /// Number of tokens.
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// The stored text of a token (`▁` and GPT-2 byte characters as stored).
    pub fn token_text(&self, id: u32) -> Result<&str> {
        Ok(&self.token(id)?.text)
    }

    /// True for control and unknown tokens (those [`decode`](Self::decode)
    /// hides unless asked).
    pub fn is_control(&self, id: u32) -> bool {
        self.tokens
            .get(id as usize)
            .is_some_and(|t| t.attrs & (attr::CONTROL | attr::UNKNOWN) != 0)
    }

    /// The special token ids in effect (file values, defaults and the ones
    /// recognised by their text).
    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.special.bos
    }

    /// End-of-sequence token.
    pub fn eos(&self) -> Option<u32> {
        self.special.eos
    }

    /// End-of-turn token.
    pub fn eot(&self) -> Option<u32> {
        self.special.eot
    }

    /// True when `id` ends generation (EOS, EOT, EOM and the tokens llama.cpp
    /// recognises as such by their text).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// The end-of-generation tokens, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS. (A
    /// WordPiece vocabulary prepends `[CLS]` whatever this says, as
    /// llama.cpp does; decoding with `remove_special` drops a leading BOS
    /// only where it is set.)
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether the model wants a separator (`[SEP]`) after its input
    /// (`tokenizer.ggml.add_sep_token`; true by default for WordPiece,
    /// whose `encode` with special tokens always appends it).
    pub fn add_sep(&self) -> bool {
        self.add_sep
    }

    /// Separator token (`[SEP]` for WordPiece).
    pub fn sep(&self) -> Option<u32> {
        self.special.sep
    }
}
