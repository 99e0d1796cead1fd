//! The plain description of a vocabulary, as a GGUF file stores it.

/// Which tokenization algorithm a vocabulary uses (`tokenizer.ggml.model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VocabKind {
    /// `llama`: SentencePiece-style BPE that merges by token score, with
    /// `<0xNN>` byte fallback (LLaMA 1/2, Gemma).
    Spm,
    /// `gpt2`: byte-level BPE that merges by merge rank, after a regex
    /// pre-tokenizer chosen by `tokenizer.ggml.pre` (GPT-2, LLaMA 3, Qwen2,
    /// SmolLM, ...). Also `gemma4` (Gemma 4), which llama.cpp runs as BPE
    /// with the pre-tokenizer `gemma4`: merges over the text's characters
    /// with spaces as `▁`, not over bytes.
    Bpe,
    /// `bert`: WordPiece (BERT-family embedding models). The text is
    /// normalized (lowercased and stripped of accents where the model says
    /// so), split at whitespace and around punctuation and CJK
    /// ideographs, and each word is matched greedily, longest piece first;
    /// a word with any part left unmatched becomes the unknown token.
    Wpm,
    /// `t5`: SentencePiece's unigram model (T5, XLM-RoBERTa and the
    /// embedding models built on them). The text is normalized by the
    /// model's precompiled character map, spaces become `▁`, and the split
    /// into pieces whose scores sum highest is taken; a character no piece
    /// covers is the unknown token.
    Ugm,
}

impl VocabKind {
    /// Parses the value of `tokenizer.ggml.model`.
    pub fn from_model_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Spm),
            "gpt2" | "gemma4" => Some(Self::Bpe),
            "bert" => Some(Self::Wpm),
            "t5" => Some(Self::Ugm),
            _ => None,
        }
    }
}

/// The type GGUF gives each token (`tokenizer.ggml.token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    /// Type 0, or any value GGUF does not define.
    Undefined,
    /// An ordinary piece of text (type 1).
    Normal,
    /// The unknown token (type 2).
    Unknown,
    /// A control token such as `<bos>` or `<|im_start|>` (type 3): matched
    /// in text only when special tokens are parsed, and rendered only when
    /// asked.
    Control,
    /// A user-defined token (type 4): always matched in text as one token.
    UserDefined,
    /// A reserved, unused token (type 5).
    Unused,
    /// A byte-fallback token `<0xNN>` (type 6).
    Byte,
}

impl TokenType {
    /// Maps GGUF's integer token type.
    pub fn from_gguf(value: i32) -> Self {
        match value {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => Self::Undefined,
        }
    }
}

/// Ids of the special tokens a vocabulary names. `None` where the model has
/// none; [`Vocab`] fields left `None` take llama.cpp's defaults for the
/// vocabulary kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sequence (`tokenizer.ggml.bos_token_id`).
    pub bos: Option<u32>,
    /// End of sequence (`tokenizer.ggml.eos_token_id`).
    pub eos: Option<u32>,
    /// End of turn (`tokenizer.ggml.eot_token_id`).
    pub eot: Option<u32>,
    /// End of message (`tokenizer.ggml.eom_token_id`).
    pub eom: Option<u32>,
    /// Unknown (`tokenizer.ggml.unknown_token_id`).
    pub unk: Option<u32>,
    /// Separator (`tokenizer.ggml.seperator_token_id`).
    pub sep: Option<u32>,
    /// Padding (`tokenizer.ggml.padding_token_id`).
    pub pad: Option<u32>,
    /// Mask (`tokenizer.ggml.mask_token_id`).
    pub mask: Option<u32>,
}

/// Everything a [`Tokenizer`](super::Tokenizer) is built from: the
/// `tokenizer.*` metadata of a GGUF file as plain data.
///
/// Empty `scores` mean all zero; empty `token_types` mean all
/// [`TokenType::Normal`]. Options left `None` take the default llama.cpp
/// uses for the vocabulary kind and pre-tokenizer.
#[derive(Clone, Debug)]
pub struct Vocab {
    /// The algorithm.
    pub kind: VocabKind,
    /// The pre-tokenizer name (`tokenizer.ggml.pre`), which BPE splits by
    /// (and by which llama.cpp sets a few tokens' attributes, as for
    /// [`architecture`](Self::architecture)); `None` means `default`.
    /// `gemma4` for a Gemma 4 vocabulary.
    pub pre: Option<String>,
    /// Token texts, indexed by id.
    pub tokens: Vec<String>,
    /// Token scores (SPM merge priority), indexed by id.
    pub scores: Vec<f32>,
    /// Token types, indexed by id.
    pub token_types: Vec<TokenType>,
    /// BPE merges, `"left right"`, best first.
    pub merges: Vec<String>,
    /// Special token ids given by the metadata.
    pub special: SpecialTokens,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`: a space before the text
    /// (default: true for SPM, false otherwise; UGM puts it in its
    /// normalizer).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.ggml.remove_extra_whitespaces` (UGM): no spaces at the
    /// ends of the text, and one `▁` before every word, space prefix or
    /// not (default false).
    pub remove_extra_whitespaces: Option<bool>,
    /// `tokenizer.ggml.precompiled_charsmap` (UGM): SentencePiece's
    /// normalization map as its converter stored it, a double array of
    /// prefixes and their replacement strings. Empty for none (no
    /// normalization beyond spaces).
    pub precompiled_charsmap: Vec<u8>,
    /// `general.architecture`. llama.cpp adjusts a few tokens by it: for
    /// `nomic-bert-moe` and `jina-bert-v3` (and the `jina-v2-de`,
    /// `jina-v2-es` and `jina-v2-code` pre-tokenizers), `<mask>` written in
    /// text takes the whitespace before it.
    pub architecture: Option<String>,
    /// `tokenizer.ggml.add_sep_token`: whether the model wants a separator
    /// after its input (default: true for WordPiece). Informational, as in
    /// llama.cpp: a WordPiece encode with special tokens always ends with
    /// the separator.
    pub add_sep: Option<bool>,
    /// `tokenizer.ggml.normalizer.lowercase` (WordPiece): lowercase the
    /// text before matching (default true).
    pub lowercase: Option<bool>,
    /// `tokenizer.ggml.normalizer.strip_accents` (WordPiece): decompose
    /// (NFD) and drop combining marks (default: as `lowercase`).
    pub strip_accents: Option<bool>,
}

impl Vocab {
    /// A vocabulary of `kind` with these tokens and nothing else set.
    pub fn new(kind: VocabKind, tokens: Vec<String>) -> Self {
        Self {
            kind,
            pre: None,
            tokens,
            scores: Vec::new(),
            token_types: Vec::new(),
            merges: Vec::new(),
            special: SpecialTokens::default(),
            add_bos: None,
            add_eos: None,
            add_space_prefix: None,
            remove_extra_whitespaces: None,
            precompiled_charsmap: Vec::new(),
            architecture: None,
            add_sep: None,
            lowercase: None,
            strip_accents: None,
        }
    }
}
