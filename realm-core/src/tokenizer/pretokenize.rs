//! Pre-tokenizers: split text into words before BPE.
//!
//! llama.cpp splits with a list of expressions applied in turn: each one
//! splits every chunk the previous ones produced into its matches and the
//! text between them. The common expressions (GPT-2's, LLaMA 3's, Qwen2's)
//! get dedicated scanners there and here; the others are small enough to
//! scan by hand as well, so no regex engine is needed. Code points are
//! classified as llama.cpp does it (see [`super::unicode`]).

use super::unicode::Flags;
use crate::{Error, Result};

/// A pre-tokenizer selected by `tokenizer.ggml.pre`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PreTokenizer {
    /// `default`: punctuation runs, GPT-2's expression, number runs, then
    /// groups of three digits.
    Default,
    /// `gpt2`, `gpt-2`, `phi-2`, `mpt`, `olmo`, `jais`: GPT-2's expression.
    Gpt2,
    /// `falcon` (Falcon 7B, 40B, 180B): runs of punctuation (and the
    /// backtick), GPT-2's expression, then groups of three digits.
    Falcon,
    /// `llama3`, `llama-bpe`, `llama-v3`, `dbrx`, `smaug-bpe`, ...: LLaMA 3's
    /// expression (numbers in groups of up to three digits).
    Llama3,
    /// `qwen2`, `stablelm2`, `deepseek-r1-qwen`, ...: LLaMA 3's expression
    /// with single-digit numbers.
    Qwen2,
    /// `qwen35` (Qwen 3.5): Qwen 2's with combining marks (`\p{M}`) in
    /// runs of letters and out of runs of punctuation.
    Qwen35,
    /// `starcoder`, `smollm`, `refact`, `command-r`, `codeshell`, ...: each
    /// digit alone, then GPT-2's expression.
    StarCoder,
    /// `deepseek-llm`: line breaks, Latin-like letter runs, punctuation
    /// runs, trailing spaces, CJK runs and number runs.
    DeepSeekLlm,
    /// `gpt-4o`, `llama4`, `kanana2`, `talkie` (o200k: gpt-oss, Llama 4):
    /// words split at lower-to-upper case changes, contractions kept with
    /// their word, numbers in groups of up to three digits.
    Gpt4o,
    /// `tekken` (Mistral Nemo, Mistral Small 3, Devstral, Ministral 3):
    /// GPT-4o's expression without the contractions, each digit alone.
    Tekken,
    /// `glm4`, `glm5`, `chatglm-bpe` (GLM-4): LLaMA 3's expression, run as
    /// llama.cpp runs it for these names (std::regex over its collapsed
    /// text, not its LLaMA 3 scanner).
    Glm4,
    /// `seed-coder` (Seed-OSS, Seed-Coder): the same with single digits and
    /// no line breaks after punctuation.
    SeedCoder,
    /// `bailingmoe`, `bailingmoe2`, `llada-moe` (Ling, Ring, LLaDA-MoE):
    /// GLM-4's with single digits.
    Bailing,
    /// `deepseek-v3`, `hunyuan-dense`, `hy_v4`, `joyai-llm` (DeepSeek V3
    /// and R1, Hunyuan): numbers in threes, runs of CJK ideographs and
    /// kana, then words, punctuation and spaces as llama.cpp's std::regex
    /// splits them.
    DeepSeekV3,
    /// `kimi-k2` (Kimi K2): runs of Han characters, then words of other
    /// letters, numbers, punctuation and spaces as llama.cpp's own scanner
    /// for it splits them.
    KimiK2,
    /// `gemma4`, `granite-embed-multi-311m` (Gemma 4): runs of line feeds
    /// and runs of anything else, over SentencePiece-escaped text.
    Gemma4,
    /// `bloom` (BLOOM; also `gpt3-finnish`, `poro-chat`): runs of anything
    /// but whitespace, parentheses, the bar and some sentence punctuation,
    /// maybe after a space, and what lies between them as words of their
    /// own.
    Bloom,
}

/// Options a pre-tokenizer name implies besides the splitting.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreOptions {
    pub(crate) pre: PreTokenizer,
    /// A word that is a token as a whole is emitted without merging.
    pub(crate) ignore_merges: bool,
    /// Decoding tidies spaces before punctuation (llama.cpp `clean_spaces`).
    pub(crate) clean_spaces: bool,
    /// Default for `add_bos` when the metadata does not set it.
    pub(crate) add_bos: bool,
    /// BOS and EOS where the metadata names none (GLM-4 and Gemma 4 have
    /// no default BOS; Gemma 4 no default EOS either).
    pub(crate) default_bos_eos: (Option<u32>, Option<u32>),
    /// SentencePiece-style BPE (Gemma 4; llama.cpp's `escape_whitespaces`
    /// without `byte_encode`): spaces become `▁`, a word's symbols are its
    /// own characters rather than GPT-2's byte characters, and a symbol
    /// that is not a token falls back to `<0xXX>` tokens.
    pub(crate) spm_style: bool,
    /// Default for `add_sep` when the metadata does not set it (RoBERTa's
    /// BPE vocabularies, Jina's v1 English and v2 code ones).
    pub(crate) add_sep: bool,
}

impl PreOptions {
    /// Options for a `tokenizer.ggml.pre` value; an unsupported name is an
    /// error that lists the supported ones.
    pub(crate) fn from_name(name: &str) -> Result<Self> {
        let o = |pre, ignore_merges, clean_spaces, add_bos| PreOptions {
            pre,
            ignore_merges,
            clean_spaces,
            add_bos,
            default_bos_eos: (Some(11), Some(11)),
            spm_style: false,
            add_sep: false,
        };
        use PreTokenizer::*;
        Ok(match name {
            "" | "default" => o(Default, false, true, false),
            "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "exaone4" | "modern-bert"
            | "jina-es" | "jina-de" | "jina-v2-es" | "jina-v2-de" | "gigachat" | "a.x-4.0"
            | "mellum" => o(Gpt2, false, true, false),
            // (A separator after the input, for a reranker's pairs.)
            "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => PreOptions {
                add_sep: true,
                ..o(Gpt2, false, true, false)
            },
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => o(Llama3, true, true, true),
            "dbrx" | "smaug-bpe" => o(Llama3, false, true, false),
            "falcon" => o(Falcon, false, true, false),
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" => {
                o(Qwen2, false, false, false)
            }
            "qwen35" => o(Qwen35, false, false, false),
            "stablelm2" | "megrez" => o(Qwen2, false, true, false),
            "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => {
                o(StarCoder, false, true, false)
            }
            "smollm" | "command-r" => o(StarCoder, false, false, false),
            "deepseek-llm" => o(DeepSeekLlm, false, false, false),
            "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => {
                o(Gpt4o, false, false, false)
            }
            "tekken" => o(Tekken, true, false, true),
            "glm4" | "glm5" | "chatglm-bpe" => PreOptions {
                // (chatglm-bpe merges every word.)
                default_bos_eos: (None, Some(11)),
                ..o(Glm4, name != "chatglm-bpe", true, false)
            },
            "seed-coder" => o(SeedCoder, false, false, false),
            "bailingmoe" | "bailingmoe2" | "llada-moe" => o(Bailing, false, false, false),
            "deepseek-v3" | "hunyuan-dense" | "hy_v4" | "joyai-llm" => {
                o(DeepSeekV3, false, false, false)
            }
            "kimi-k2" => o(KimiK2, false, false, false),
            "bloom" | "gpt3-finnish" => o(Bloom, false, true, false),
            // (Poro's chat files keep their spaces as they decode.)
            "poro-chat" => o(Bloom, false, false, false),
            // (`gemma4` is also what `tokenizer.ggml.model` gemma4 forces,
            // whose special tokens have no defaults.)
            "gemma4" | "granite-embed-multi-311m" => PreOptions {
                spm_style: true,
                default_bos_eos: match name {
                    "gemma4" => (None, None),
                    _ => (Some(11), Some(11)),
                },
                ..o(Gemma4, false, true, true)
            },
            other => {
                return Err(Error::Tokenizer(format!(
                    "unsupported pre-tokenizer `{other}` (tokenizer.ggml.pre); supported: \
                     default, gpt2, mpt, olmo, jais, exaone4, modern-bert, jina-es, jina-de, \
                     jina-v2-es, jina-v2-de, gigachat, a.x-4.0, mellum, jina-v1-en, jina-v2-code, \
                     roberta-bpe, falcon, llama3, llama-bpe, falcon-h1, lfm2, qwen2, qwen35, hunyuan, \
                     solar-open, stablelm2, dbrx, smaug-bpe, \
                     starcoder, smollm, refact, command-r, codeshell, deepseek-llm, gpt-4o, \
                     llama4, minimax-m2, tekken, glm4, glm5, chatglm-bpe, seed-coder, \
                     bailingmoe, bailingmoe2, llada-moe, deepseek-v3, hunyuan-dense, hy_v4, \
                     joyai-llm, kimi-k2, gemma4, granite-embed-multi-311m, bloom, gpt3-finnish, \
                     poro-chat"
                )))
            }
        })
    }
}

/// Reusable buffers for splitting.
#[derive(Debug, Default)]
pub(crate) struct Splitter {
    cps: Vec<u32>,
    flags: Vec<Flags>,
    /// Byte offset of each code point, plus the text length at the end.
    offsets: Vec<usize>,
    /// Chunk ends (code point indices) before and after a stage.
    ends: Vec<usize>,
    next: Vec<usize>,
}

/// Placeholder code point outside the chunk being scanned.
const NONE: u32 = u32::MAX;

/// One chunk of code points with llama.cpp's out-of-range conventions.
struct Chunk<'a> {
    cps: &'a [u32],
    flags: &'a [Flags],
    start: usize,
    end: usize,
}

impl Chunk<'_> {
    #[inline]
    fn cp(&self, i: usize) -> u32 {
        if i >= self.start && i < self.end {
            self.cps[i]
        } else {
            NONE
        }
    }

    #[inline]
    fn fl(&self, i: usize) -> Flags {
        if i >= self.start && i < self.end {
            self.flags[i]
        } else {
            Flags(0)
        }
    }
}

/// Appends `end` as a word boundary unless the word would be empty.
#[inline]
fn push_end(out: &mut Vec<usize>, last: &mut usize, end: usize) {
    if end > *last {
        out.push(end);
        *last = end;
    }
}

impl Splitter {
    /// Splits `text` into words, calling `word` with each one's byte range
    /// in order. The words cover the text exactly.
    pub(crate) fn split(
        &mut self,
        pre: PreTokenizer,
        text: &str,
        mut word: impl FnMut(std::ops::Range<usize>),
    ) {
        self.cps.clear();
        self.flags.clear();
        self.offsets.clear();
        for (i, c) in text.char_indices() {
            self.cps.push(c as u32);
            self.flags.push(Flags::of(c as u32));
            self.offsets.push(i);
        }
        self.offsets.push(text.len());
        let n = self.cps.len();
        self.ends.clear();
        if n == 0 {
            return;
        }
        self.ends.push(n);

        use PreTokenizer::*;
        match pre {
            Gpt2 => self.stage(gpt2),
            Llama3 => self.stage(|c, out| llama3(c, (3, false), out)),
            Qwen2 => self.stage(|c, out| llama3(c, (1, false), out)),
            Qwen35 => self.stage(|c, out| llama3(c, (1, true), out)),
            Gpt4o => self.stage(|c, out| by_matches(c, out, |c, p| o200k(c, p, O200K_GPT4O))),
            Tekken => self.stage(|c, out| by_matches(c, out, |c, p| o200k(c, p, O200K_TEKKEN))),
            Glm4 => self.stage(|c, out| by_matches(c, out, |c, p| collapsed_llama3(c, p, GLM4))),
            SeedCoder => {
                self.stage(|c, out| by_matches(c, out, |c, p| collapsed_llama3(c, p, SEED_CODER)))
            }
            Bailing => {
                self.stage(|c, out| by_matches(c, out, |c, p| collapsed_llama3(c, p, BAILING)))
            }
            KimiK2 => self.stage(kimi_k2),
            Bloom => self.stage(|c, out| by_matches(c, out, bloom)),
            Gemma4 => self.stage(|c, out| {
                by_matches(c, out, |c, p| run(c, p, |c, i| c.cp(i) == u32::from(b'\n')))
            }),
            DeepSeekV3 => {
                self.stage(|c, out| by_matches(c, out, numbers_in_threes));
                self.stage(|c, out| {
                    by_matches(c, out, |c, p| {
                        run(c, p, |c, i| in_ranges(wide(c, i), DS3_CJK))
                    })
                });
                self.stage(|c, out| by_matches(c, out, deepseek3));
            }
            StarCoder => {
                self.stage(|c, out| by_matches(c, out, |c, p| single(c, p, is_number_collapsed)));
                self.stage(gpt2);
            }
            Falcon => {
                self.stage(|c, out| {
                    by_matches(c, out, |c, p| {
                        run(c, p, |c, i| {
                            is_default_punct(c, i) || c.cp(i) == u32::from(b'`')
                        })
                    })
                });
                self.stage(gpt2);
                self.stage(|c, out| by_matches(c, out, three_digits));
            }
            Default => {
                self.stage(|c, out| by_matches(c, out, |c, p| run(c, p, is_default_punct)));
                self.stage(gpt2);
                self.stage(|c, out| by_matches(c, out, |c, p| run(c, p, is_number_collapsed)));
                self.stage(|c, out| by_matches(c, out, three_digits));
            }
            DeepSeekLlm => {
                self.stage(|c, out| by_matches(c, out, |c, p| single(c, p, is_cr_lf)));
                self.stage(|c, out| {
                    by_matches(c, out, |c, p| {
                        space_then_run(c, p, |x| in_ranges(x, DS_LETTERS))
                    })
                });
                self.stage(|c, out| {
                    by_matches(c, out, |c, p| {
                        space_then_run(c, p, |x| in_ranges(x, DS_PUNCT))
                    })
                });
                self.stage(|c, out| by_matches(c, out, trailing_space));
                self.stage(|c, out| {
                    by_matches(c, out, |c, p| {
                        run(c, p, |c, i| in_ranges(wide(c, i), DS_CJK))
                    })
                });
                self.stage(|c, out| by_matches(c, out, |c, p| run(c, p, is_number_collapsed)));
            }
        }

        let mut start = 0;
        for &end in &self.ends {
            word(self.offsets[start]..self.offsets[end]);
            start = end;
        }
    }

    /// Applies one splitting stage to every current chunk.
    fn stage(&mut self, mut split: impl FnMut(&Chunk<'_>, &mut Vec<usize>)) {
        self.next.clear();
        let mut start = 0;
        for &end in &self.ends {
            let chunk = Chunk {
                cps: &self.cps,
                flags: &self.flags,
                start,
                end,
            };
            split(&chunk, &mut self.next);
            start = end;
        }
        std::mem::swap(&mut self.ends, &mut self.next);
    }
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn gpt2(c: &Chunk<'_>, out: &mut Vec<usize>) {
    let mut last = c.start;
    let mut pos = c.start;
    while pos < c.end {
        let cp = c.cp(pos);
        let f = c.fl(pos);
        if let Some(len) = contraction(c, pos, false) {
            pos += len;
            push_end(out, &mut last, pos);
            continue;
        }
        let space = cp == ' ' as u32;
        let mut f2 = if space { c.fl(pos + 1) } else { f };
        let class: Option<fn(Flags) -> bool> = if f2.is_letter() {
            Some(Flags::is_letter)
        } else if f2.is_number() {
            Some(Flags::is_number)
        } else if is_other(f2) {
            Some(is_other)
        } else {
            None
        };
        if let Some(class) = class {
            pos += usize::from(space);
            while class(f2) {
                pos += 1;
                f2 = c.fl(pos);
            }
            push_end(out, &mut last, pos);
            continue;
        }
        let n_ws = count_spaces(c, pos);
        if n_ws > 1 && c.cp(pos + n_ws) != NONE {
            pos += n_ws - 1;
        } else if n_ws > 0 {
            pos += n_ws;
        } else {
            pos += 1;
        }
        push_end(out, &mut last, pos);
    }
}

/// LLaMA 3 (`max_digits` 3) and Qwen2 (`max_digits` 1):
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`;
/// with `marks`, Qwen 3.5's, as llama.cpp scans it: combining marks
/// (`\p{M}`) in runs of letters (a run may start at one), not in runs of
/// punctuation.
fn llama3(c: &Chunk<'_>, (max_digits, marks): (usize, bool), out: &mut Vec<usize>) {
    let wordy = |f: Flags| f.is_letter() || (marks && f.is_accent_mark());
    let mut last = c.start;
    let mut pos = c.start;
    while pos < c.end {
        let cp = c.cp(pos);
        let f = c.fl(pos);
        if let Some(len) = contraction(c, pos, true) {
            pos += len;
            push_end(out, &mut last, pos);
            continue;
        }
        let newline = cp == '\r' as u32 || cp == '\n' as u32;
        if !(newline || f.is_number()) && (wordy(f) || wordy(c.fl(pos + 1))) {
            pos += 1;
            while wordy(c.fl(pos)) {
                pos += 1;
            }
            push_end(out, &mut last, pos);
            continue;
        }
        pos = numbers_marks_spaces(c, pos, (max_digits, marks), out, &mut last);
    }
}

/// Kimi K2's expression as llama.cpp scans it (a splitter of its own):
/// runs of Han characters; words of other letters, maybe led by one
/// character that is no letter, number or line break, maybe ending in an
/// English contraction; then LLaMA 3's numbers in threes, punctuation and
/// spaces.
fn kimi_k2(c: &Chunk<'_>, out: &mut Vec<usize>) {
    let han = |i: usize| is_han(c.cp(i));
    let letter = |i: usize| c.fl(i).is_letter() && !han(i);
    let mut last = c.start;
    let mut pos = c.start;
    while pos < c.end {
        let cp = c.cp(pos);
        let f = c.fl(pos);
        if han(pos) {
            while han(pos) {
                pos += 1;
            }
            push_end(out, &mut last, pos);
            continue;
        }
        let newline = cp == '\r' as u32 || cp == '\n' as u32;
        let lead = !(newline || f.is_letter() || f.is_number());
        if letter(pos) || (lead && letter(pos + 1)) {
            pos += usize::from(lead);
            while letter(pos) {
                pos += 1;
            }
            pos += contraction(c, pos, true).unwrap_or(0);
            push_end(out, &mut last, pos);
            continue;
        }
        pos = numbers_marks_spaces(c, pos, (3, false), out, &mut last);
    }
}

/// Kimi K2's Han characters, as llama.cpp tells them.
fn is_han(x: u32) -> bool {
    matches!(
        x,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2EBEF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// LLaMA 3's scanner at `pos` past its words (with `marks`, Qwen 3.5's:
/// combining marks are no punctuation): `\p{N}{1,max_digits}`,
/// ` ?[^\s\p{L}\p{N}]+[\r\n]*`, `\s*[\r\n]+|\s+(?!\S)|\s+`, or one code
/// point; pushes the ends and returns where it stopped.
fn numbers_marks_spaces(
    c: &Chunk<'_>,
    mut pos: usize,
    (max_digits, marks): (usize, bool),
    out: &mut Vec<usize>,
    last: &mut usize,
) -> usize {
    // (Qwen 3.5's punctuation takes no combining marks.)
    let other = |f: Flags| is_other(f) && !(marks && f.is_accent_mark());
    let cp = c.cp(pos);
    let f = c.fl(pos);
    if f.is_number() {
        let mut group = pos;
        while c.fl(pos).is_number() {
            pos += 1;
            if pos - group >= max_digits {
                push_end(out, last, pos);
                group = pos;
            }
        }
        push_end(out, last, pos);
        return pos;
    }
    let space = cp == ' ' as u32;
    let mut f2 = if space { c.fl(pos + 1) } else { f };
    let wordy = |f: Flags| f.is_letter() || (marks && f.is_accent_mark());
    if !(f2.is_whitespace() || wordy(f2) || f2.is_number()) && f.is_some() {
        pos += usize::from(space);
        while other(f2) {
            pos += 1;
            f2 = c.fl(pos);
        }
        while c.cp(pos) == '\r' as u32 || c.cp(pos) == '\n' as u32 {
            pos += 1;
        }
        push_end(out, last, pos);
        return pos;
    }
    let mut n_ws = 0;
    let mut after_newline = None;
    while c.fl(pos + n_ws).is_whitespace() {
        let x = c.cp(pos + n_ws);
        if x == '\r' as u32 || x == '\n' as u32 {
            after_newline = Some(pos + n_ws + 1);
        }
        n_ws += 1;
    }
    if let Some(end) = after_newline {
        pos = end;
    } else if n_ws > 1 && c.cp(pos + n_ws) != NONE {
        pos += n_ws - 1;
    } else if n_ws > 0 {
        pos += n_ws;
    } else {
        pos += 1;
    }
    push_end(out, last, pos);
    pos
}

/// What tells GPT-4o's expression from tekken's, which is GPT-4o's without
/// the contractions and with numbers one digit at a time.
#[derive(Clone, Copy)]
struct O200kShape {
    /// Words keep a following contraction.
    contractions: bool,
    /// The most digits a number token holds.
    max_digits: usize,
}

const O200K_GPT4O: O200kShape = O200kShape {
    contractions: true,
    max_digits: 3,
};
const O200K_TEKKEN: O200kShape = O200kShape {
    contractions: false,
    max_digits: 1,
};

/// A chunk as llama.cpp's std::regex expressions see it, over collapsed
/// text: every non-ASCII letter counts as both an upper and a lower case
/// letter, combining marks are no letters, non-ASCII spaces are `\s`.
struct Collapsed<'c, 'a> {
    c: &'c Chunk<'a>,
}

impl Collapsed<'_, '_> {
    fn in_chunk(&self, i: usize) -> bool {
        i >= self.c.start && i < self.c.end
    }

    /// `\p{L}`.
    fn letter(&self, i: usize) -> bool {
        let x = self.c.cp(i);
        if x < 128 {
            char::from_u32(x).is_some_and(|ch| ch.is_ascii_alphabetic())
        } else {
            let f = self.c.fl(i);
            !f.is_whitespace() && f.category() == Flags::LETTER
        }
    }

    /// `\p{N}`.
    fn number(&self, i: usize) -> bool {
        is_number_collapsed(self.c, i)
    }

    /// `\s`.
    fn space(&self, i: usize) -> bool {
        self.in_chunk(i) && is_space_wide(wide(self.c, i))
    }

    /// `[^\r\n\p{L}\p{N}]`.
    fn lead(&self, i: usize) -> bool {
        self.in_chunk(i)
            && !matches!(self.c.cp(i), 0x0A | 0x0D)
            && !self.letter(i)
            && !self.number(i)
    }

    /// `[^\s\p{L}\p{N}]`.
    fn other(&self, i: usize) -> bool {
        self.in_chunk(i) && !self.space(i) && !self.letter(i) && !self.number(i)
    }

    fn is_line_break(&self, i: usize) -> bool {
        self.in_chunk(i) && matches!(self.c.cp(i), 0x0A | 0x0D)
    }

    /// Where the run of `class` from `i` ends.
    fn run(&self, mut i: usize, class: impl Fn(usize) -> bool) -> usize {
        while class(i) {
            i += 1;
        }
        i
    }

    /// `\p{N}{1,max}` at `from`.
    fn digits(&self, from: usize, max: usize) -> Option<usize> {
        self.number(from)
            .then(|| from + (0..max).take_while(|&k| self.number(from + k)).count())
    }

    /// ` ?[^\s\p{L}\p{N}]+` at `from` (then line breaks, and with
    /// `slash` slashes, where `breaks`).
    fn punctuation(&self, from: usize, breaks: bool, slash: bool) -> Option<usize> {
        let c = self.c;
        let s = if c.cp(from) == ' ' as u32 && self.other(from + 1) {
            from + 1
        } else {
            from
        };
        self.other(s).then(|| {
            let e = self.run(s, |i| self.other(i));
            match breaks {
                true => self.run(e, |i| {
                    self.is_line_break(i) || (slash && self.in_chunk(i) && c.cp(i) == 0x2F)
                }),
                false => e,
            }
        })
    }

    /// `\s*[\r\n]+|\s+(?!\S)|\s+` at `from`.
    fn spaces(&self, from: usize) -> Option<usize> {
        let w = self.run(from, |i| self.space(i));
        let newline = (from..w)
            .rev()
            .find(|&i| matches!(self.c.cp(i), 0x0A | 0x0D));
        match newline {
            Some(j) => Some(j + 1),
            None if w == self.c.end && w > from => Some(w),
            None if w >= from + 2 => Some(w - 1),
            None => (w > from).then_some(w),
        }
    }
}

/// GPT-4o's expression as llama.cpp runs it (std::regex over its
/// collapsed text, [`Collapsed`]):
/// `[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+C?|
/// [^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*C?|
/// \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+`, `C` a
/// contraction in any case; tekken's has no `C?` and `\p{N}` alone
/// (`shape`). Its match at `from` (every code point starts one),
/// alternatives and backtracking taken in the regex's order.
fn o200k(c: &Chunk<'_>, from: usize, shape: O200kShape) -> Option<(usize, usize)> {
    if from >= c.end {
        return None;
    }
    let k = Collapsed { c };
    let upper = |i: usize| k.letter(i) && !(0x61..=0x7A).contains(&c.cp(i));
    let lower = |i: usize| k.letter(i) && !(0x41..=0x5A).contains(&c.cp(i));
    let with_contraction = |e: usize| match shape.contractions {
        true => e + contraction(c, e, true).unwrap_or(0),
        false => e,
    };
    // Upper case letters then at least one lower case one: the most upper
    // case ones after which a lower case one follows.
    let upper_then_lower = |s: usize| {
        let most = k.run(s, upper) - s;
        (0..=most)
            .rev()
            .find(|&n| lower(s + n))
            .map(|n| with_contraction(k.run(s + n, lower)))
    };
    let upper_first = |s: usize| upper(s).then(|| with_contraction(k.run(k.run(s, upper), lower)));
    // Where the letters may start: after the leading character (tried
    // first, as the regex's greedy `?`), or at `from`.
    let starts = [k.lead(from).then_some(from + 1), Some(from)];
    let end = starts
        .into_iter()
        .flatten()
        .find_map(upper_then_lower)
        .or_else(|| starts.into_iter().flatten().find_map(upper_first))
        .or_else(|| k.digits(from, shape.max_digits))
        .or_else(|| k.punctuation(from, true, true))
        .or_else(|| k.spaces(from))
        .unwrap_or(from + 1);
    Some((from, end))
}

/// What tells GLM-4's expression from Seed-Coder's.
#[derive(Clone, Copy)]
struct Llama3Shape {
    /// The most digits a number token holds.
    max_digits: usize,
    /// Punctuation runs keep the line breaks after them.
    punct_newlines: bool,
}

const GLM4: Llama3Shape = Llama3Shape {
    max_digits: 3,
    punct_newlines: true,
};
const SEED_CODER: Llama3Shape = Llama3Shape {
    max_digits: 1,
    punct_newlines: false,
};
/// (Its `\s*[\r\n]` matches as GLM-4's `\s*[\r\n]+`: the longest run of
/// whitespace that ends with a line break.)
const BAILING: Llama3Shape = Llama3Shape {
    max_digits: 1,
    punct_newlines: true,
};

/// LLaMA 3's expression as llama.cpp runs it through std::regex over its
/// collapsed text ([`Collapsed`]), where GLM-4's and Seed-Coder's names
/// send it:
/// `(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|
/// [^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
/// \s*[\r\n]+|\s+(?!\S)|\s+` (Seed-Coder's: `\p{N}` alone, no line
/// breaks after punctuation; Ling's `\p{N}` alone; `shape`). Its match at
/// `from`.
fn collapsed_llama3(c: &Chunk<'_>, from: usize, shape: Llama3Shape) -> Option<(usize, usize)> {
    if from >= c.end {
        return None;
    }
    let k = Collapsed { c };
    let letters = |s: usize| k.letter(s).then(|| k.run(s, |i| k.letter(i)));
    let end = contraction(c, from, true)
        .map(|n| from + n)
        .or_else(|| {
            // The leading character first, as the regex's greedy `?`.
            k.lead(from)
                .then(|| letters(from + 1))
                .flatten()
                .or_else(|| letters(from))
        })
        .or_else(|| k.digits(from, shape.max_digits))
        .or_else(|| k.punctuation(from, shape.punct_newlines, false))
        .or_else(|| k.spaces(from))
        .unwrap_or(from + 1);
    Some((from, end))
}

/// `[^\s\p{L}\p{N}]` for a real code point.
#[inline]
fn is_other(f: Flags) -> bool {
    !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.is_some()
}

fn count_spaces(c: &Chunk<'_>, pos: usize) -> usize {
    let mut n = 0;
    while c.fl(pos + n).is_whitespace() {
        n += 1;
    }
    n
}

/// Length of an English contraction (`'s`, `'t`, `'re`, `'ve`, `'m`, `'ll`,
/// `'d`) at `pos`, any case when `fold` is set.
fn contraction(c: &Chunk<'_>, pos: usize, fold: bool) -> Option<usize> {
    if c.cp(pos) != '\'' as u32 || pos + 1 >= c.end {
        return None;
    }
    let low = |x: u32| match char::from_u32(x) {
        Some(ch) if fold => ch.to_ascii_lowercase(),
        Some(ch) => ch,
        None => '\0',
    };
    let a = low(c.cp(pos + 1));
    if matches!(a, 's' | 't' | 'm' | 'd') {
        return Some(2);
    }
    if pos + 2 < c.end {
        let b = low(c.cp(pos + 2));
        if matches!((a, b), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
            return Some(3);
        }
    }
    None
}

/// Splits a chunk into the successive leftmost matches of `find` and the
/// text between them. `find(chunk, from)` returns the first match at or
/// after `from`, which must not be empty.
fn by_matches(
    c: &Chunk<'_>,
    out: &mut Vec<usize>,
    find: impl Fn(&Chunk<'_>, usize) -> Option<(usize, usize)>,
) {
    let mut last = c.start;
    let mut pos = c.start;
    while let Some((s, e)) = find(c, pos) {
        push_end(out, &mut last, s);
        push_end(out, &mut last, e);
        pos = e;
    }
    push_end(out, &mut last, c.end);
}

/// The first maximal run of code points in the class, at or after `from`.
fn run(
    c: &Chunk<'_>,
    from: usize,
    class: impl Fn(&Chunk<'_>, usize) -> bool,
) -> Option<(usize, usize)> {
    let s = (from..c.end).find(|&i| class(c, i))?;
    let e = (s..c.end).find(|&i| !class(c, i)).unwrap_or(c.end);
    Some((s, e))
}

/// The first single code point in the class, at or after `from`.
fn single(
    c: &Chunk<'_>,
    from: usize,
    class: impl Fn(&Chunk<'_>, usize) -> bool,
) -> Option<(usize, usize)> {
    let s = (from..c.end).find(|&i| class(c, i))?;
    Some((s, s + 1))
}

/// `\p{N}{1,3}` over collapsed text: the first number at or after `from`
/// and up to two more.
fn numbers_in_threes(c: &Chunk<'_>, from: usize) -> Option<(usize, usize)> {
    let s = (from..c.end).find(|&i| is_number_collapsed(c, i))?;
    let e = (s..(s + 3).min(c.end))
        .find(|&i| !is_number_collapsed(c, i))
        .unwrap_or((s + 3).min(c.end));
    Some((s, e))
}

/// DeepSeek V3's last expression as llama.cpp runs it (std::regex over
/// collapsed text, where every ASCII punctuation mark is `\p{P}` or
/// `\p{S}`):
/// `[!-/:-@\[-`{-~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|
/// ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`: its first match at or
/// after `from`, alternatives taken in order.
fn deepseek3(c: &Chunk<'_>, from: usize) -> Option<(usize, usize)> {
    const MARK: u16 = 0x10;
    const SYMBOL: u16 = 0x40;
    let k = Collapsed { c };
    let inside = |i: usize| i >= c.start && i < c.end;
    let of = |i: usize, cat: u16| {
        let x = c.cp(i);
        x >= 128 && inside(i) && !c.fl(i).is_whitespace() && c.fl(i).category() == cat
    };
    let ascii = |i: usize, class: fn(&u8) -> bool| {
        inside(i) && u8::try_from(c.cp(i)).is_ok_and(|b| b < 128 && class(&b))
    };
    let marks = |i: usize| ascii(i, u8::is_ascii_punctuation);
    let punct_or_symbol = |i: usize| marks(i) || of(i, Flags::PUNCTUATION) || of(i, SYMBOL);
    let letter_or_mark = |i: usize| k.letter(i) || of(i, MARK);
    let line_break = |i: usize| inside(i) && matches!(c.cp(i), 0x0A | 0x0D);
    let lead = |i: usize| inside(i) && !line_break(i) && !k.letter(i) && !punct_or_symbol(i);
    (from..c.end).find_map(|p| {
        let end = if marks(p) && ascii(p + 1, u8::is_ascii_alphabetic) {
            k.run(p + 1, |i| ascii(i, u8::is_ascii_alphabetic))
        } else if lead(p) && letter_or_mark(p + 1) {
            k.run(p + 1, letter_or_mark)
        } else if letter_or_mark(p) {
            k.run(p, letter_or_mark)
        } else {
            let s = match c.cp(p) == 0x20 && punct_or_symbol(p + 1) {
                true => p + 1,
                false => p,
            };
            match punct_or_symbol(s) {
                true => k.run(k.run(s, punct_or_symbol), line_break),
                false => k.spaces(p)?,
            }
        };
        Some((p, end))
    })
}

/// BLOOM's expression as llama.cpp runs it (std::wregex over the code
/// points, as it has no Unicode categories): ` ?[^(\s|.,!?…。，、।۔،)]+`.
/// The parentheses and the bar are literal inside the class, so they end
/// words as the punctuation does. Its first match at or after `from`.
fn bloom(c: &Chunk<'_>, from: usize) -> Option<(usize, usize)> {
    let word = |i: usize| {
        i < c.end
            && !is_space_wide(wide(c, i))
            && !BLOOM_BREAKS.iter().any(|&b| b as u32 == c.cp(i))
    };
    let s = (from..c.end).find(|&i| word(i) || (c.cp(i) == u32::from(b' ') && word(i + 1)))?;
    let e = (s + 1..c.end).find(|&i| !word(i)).unwrap_or(c.end);
    Some((s, e))
}

/// What BLOOM's class leaves out besides whitespace.
const BLOOM_BREAKS: &[char] = &[
    '(', '|', ')', '.', ',', '!', '?', '…', '。', '，', '、', '।', '۔', '،',
];

/// DeepSeek V3's CJK ideographs, hiragana and katakana.
const DS3_CJK: &[(u32, u32)] = &[(0x4E00, 0x9FA5), (0x3040, 0x309F), (0x30A0, 0x30FF)];

/// `[0-9][0-9][0-9]`.
fn three_digits(c: &Chunk<'_>, from: usize) -> Option<(usize, usize)> {
    let digit = |i: usize| (0x30..=0x39).contains(&c.cp(i));
    let s = (from..c.end.saturating_sub(2)).find(|&i| digit(i) && digit(i + 1) && digit(i + 2))?;
    Some((s, s + 3))
}

/// The code point as llama.cpp's wide-character expressions see it: other
/// whitespace becomes a vertical tab.
#[inline]
fn wide(c: &Chunk<'_>, i: usize) -> u32 {
    let x = c.cp(i);
    if x > 0x7F && c.fl(i).is_whitespace() {
        0x0B
    } else {
        x
    }
}

/// `\s` of those expressions: ASCII whitespace.
#[inline]
fn is_space_wide(x: u32) -> bool {
    matches!(x, 0x09..=0x0D | 0x20)
}

/// `\s?[class]+`.
fn space_then_run(
    c: &Chunk<'_>,
    from: usize,
    class: impl Fn(u32) -> bool,
) -> Option<(usize, usize)> {
    for p in from..c.end {
        let x = wide(c, p);
        let first_end = if is_space_wide(x) && p + 1 < c.end && class(wide(c, p + 1)) {
            p + 2
        } else if class(x) {
            p + 1
        } else {
            continue;
        };
        let mut e = first_end;
        while e < c.end && class(wide(c, e)) {
            e += 1;
        }
        return Some((p, e));
    }
    None
}

/// `\s+$`: the whitespace that ends the chunk.
fn trailing_space(c: &Chunk<'_>, from: usize) -> Option<(usize, usize)> {
    let mut s = c.end;
    while s > from && is_space_wide(wide(c, s - 1)) {
        s -= 1;
    }
    (s < c.end).then_some((s, c.end))
}

/// `\p{N}` over llama.cpp's collapsed text: ASCII digits, or another
/// number that is not whitespace.
fn is_number_collapsed(c: &Chunk<'_>, i: usize) -> bool {
    let x = c.cp(i);
    if x < 128 {
        (0x30..=0x39).contains(&x)
    } else {
        let f = c.fl(i);
        !f.is_whitespace() && f.category() == Flags::NUMBER
    }
}

/// `[\p{P}\$\+<=>\^~\|]` over llama.cpp's collapsed text.
fn is_default_punct(c: &Chunk<'_>, i: usize) -> bool {
    let x = c.cp(i);
    if x < 128 {
        matches!(
            x,
            0x21..=0x23 | 0x25..=0x2A | 0x2C..=0x2F | 0x3A..=0x3B | 0x3F..=0x40 | 0x5B..=0x5D
                | 0x5F | 0x7B | 0x7D | 0x24 | 0x2B | 0x3C..=0x3E | 0x5E | 0x7E | 0x7C
        )
    } else {
        let f = c.fl(i);
        !f.is_whitespace() && f.category() == Flags::PUNCTUATION
    }
}

fn is_cr_lf(c: &Chunk<'_>, i: usize) -> bool {
    matches!(c.cp(i), 0x0A | 0x0D)
}

fn in_ranges(x: u32, ranges: &[(u32, u32)]) -> bool {
    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&x))
}

/// DeepSeek LLM's letter class.
#[rustfmt::skip]
const DS_LETTERS: &[(u32, u32)] = &[
    (0x0041, 0x005A), (0x0061, 0x007A), (0x00B5, 0x00B5), (0x00C0, 0x00D6), (0x00D8, 0x00F6),
    (0x00F8, 0x01BA), (0x01BC, 0x01BF), (0x01C4, 0x0293), (0x0295, 0x02AF), (0x0370, 0x0373),
    (0x0376, 0x0377), (0x037B, 0x037D), (0x037F, 0x037F), (0x0386, 0x0386), (0x0388, 0x038A),
    (0x038C, 0x038C), (0x038E, 0x03A1), (0x03A3, 0x03F5), (0x03F7, 0x0481), (0x048A, 0x052F),
    (0x0531, 0x0556), (0x10A0, 0x10C5), (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1C90, 0x1CBA),
    (0x1CBD, 0x1CBF), (0x1D00, 0x1D2B), (0x1D6B, 0x1D77), (0x1D79, 0x1D9A), (0x1E00, 0x1F15),
    (0x1F18, 0x1F1D), (0x1F20, 0x1F45), (0x1F48, 0x1F4D), (0x1F50, 0x1F57), (0x1F59, 0x1F59),
    (0x1F5B, 0x1F5B), (0x1F5D, 0x1F5D), (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC),
    (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4), (0x1FC6, 0x1FCC), (0x1FD0, 0x1FD3), (0x1FD6, 0x1FDB),
    (0x1FE0, 0x1FEC), (0x1FF2, 0x1FF4), (0x1FF6, 0x1FFC), (0x2102, 0x2102), (0x2107, 0x2107),
    (0x210A, 0x2113), (0x2115, 0x2115), (0x2119, 0x211D), (0x2124, 0x2124), (0x2126, 0x2126),
    (0x2128, 0x2128), (0x212A, 0x212D), (0x212F, 0x2134), (0x2139, 0x2139), (0x213C, 0x213F),
    (0x2145, 0x2149), (0x214E, 0x214E), (0x2183, 0x2184), (0x2C00, 0x2C7B), (0x2C7E, 0x2CE4),
    (0x2CEB, 0x2CEE), (0x2CF2, 0x2CF3), (0xA640, 0xA66D), (0xA680, 0xA69B), (0xA722, 0xA76F),
    (0xA771, 0xA787), (0xA78B, 0xA78E), (0xAB70, 0xABBF), (0xFB00, 0xFB06), (0xFB13, 0xFB17),
    (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0x10400, 0x1044F), (0x104B0, 0x104D3),
    (0x104D8, 0x104FB), (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x118A0, 0x118DF),
    (0x1E900, 0x1E943),
];

/// DeepSeek LLM's punctuation class (ASCII `!-/`, `:-~`, their full-width
/// forms, curly quotes, ideographic space and stops).
#[rustfmt::skip]
const DS_PUNCT: &[(u32, u32)] = &[
    (0x0021, 0x002F), (0x003A, 0x007E), (0xFF01, 0xFF0F), (0xFF1A, 0xFF5E), (0x2018, 0x201F),
    (0x3000, 0x3002),
];

/// DeepSeek LLM's CJK class.
#[rustfmt::skip]
const DS_CJK: &[(u32, u32)] = &[(0x4E00, 0x9FA5), (0x0800, 0x4E00), (0xAC00, 0xD7FF)];

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, text: &str) -> Vec<&str> {
        let mut s = Splitter::default();
        let mut v = Vec::new();
        s.split(pre, text, |r| v.push(&text[r]));
        v
    }

    #[test]
    fn gemma4_splits_at_line_feeds_only() {
        assert_eq!(
            words(PreTokenizer::Gemma4, "\n\na▁b\r\n▁\n"),
            ["\n\n", "a▁b\r", "\n", "▁", "\n"]
        );
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words(PreTokenizer::Gpt2, "Hello world's  end 123!!  \n"),
            ["Hello", " world", "'s", " ", " end", " 123", "!!", "  \n"]
        );
        assert_eq!(words(PreTokenizer::Gpt2, "a   b"), ["a", "  ", " b"]);
    }

    #[test]
    fn llama3_words() {
        assert_eq!(
            words(PreTokenizer::Llama3, "I'M 12345 ok?\n\nyes"),
            ["I", "'M", " ", "123", "45", " ok", "?\n\n", "yes"]
        );
        assert_eq!(words(PreTokenizer::Qwen2, "x 12"), ["x", " ", "1", "2"]);
    }

    #[test]
    fn starcoder_digits_alone() {
        assert_eq!(
            words(PreTokenizer::StarCoder, "a 12b"),
            ["a", " ", "1", "2", "b"]
        );
    }

    #[test]
    fn default_stages() {
        assert_eq!(
            words(PreTokenizer::Default, "x 1234, y"),
            ["x", " ", "123", "4", ",", " y"]
        );
    }

    #[test]
    fn deepseek_words() {
        assert_eq!(
            words(PreTokenizer::DeepSeekLlm, "Hi there,\n你好 12  "),
            ["Hi", " there", ",", "\n", "你好", " ", "12", "  "]
        );
    }

    #[test]
    fn gpt4o_words() {
        assert_eq!(
            words(PreTokenizer::Gpt4o, "HelloWorld's 12345 DON'T  x/\n\n\ty"),
            ["Hello", "World's", " ", "123", "45", " DON'T", " ", " x", "/\n\n", "\ty"]
        );
        assert_eq!(words(PreTokenizer::Gpt4o, "  é!  "), [" ", " é", "!", "  "]);
    }

    #[test]
    fn glm4_and_seed_coder_words() {
        assert_eq!(
            words(PreTokenizer::Glm4, "I'M 12345 ok?\n\nyes"),
            ["I", "'M", " ", "123", "45", " ok", "?\n\n", "yes"]
        );
        assert_eq!(
            words(PreTokenizer::SeedCoder, "x 12?\n"),
            ["x", " ", "1", "2", "?", "\n"]
        );
        assert_eq!(
            words(PreTokenizer::Bailing, "x 12?\n"),
            ["x", " ", "1", "2", "?\n"]
        );
        assert_eq!(
            words(PreTokenizer::KimiK2, "日本語Ab's .x 12345"),
            ["日本語", "Ab's", " .", "x", " ", "123", "45"]
        );
        assert_eq!(
            words(PreTokenizer::DeepSeekV3, "Hi .net 12345日本語 ok!!\n\n  x"),
            [
                "Hi",
                " .",
                "net",
                " ",
                "123",
                "45",
                "日本語",
                " ok",
                "!!\n\n",
                " ",
                " x"
            ]
        );
    }

    #[test]
    fn bloom_words() {
        assert_eq!(
            words(
                PreTokenizer::Bloom,
                "Hello, world!  (x|y)  \n\tend… 你好。ok"
            ),
            [
                "Hello", ",", " world", "!  (", "x", "|", "y", ")  \n\t", "end", "…", " 你好",
                "。", "ok"
            ]
        );
        assert_eq!(
            words(PreTokenizer::Bloom, "a . b\u{3000}c  "),
            ["a", " .", " b", "\u{3000}", "c", "  "]
        );
    }

    #[test]
    fn tekken_words() {
        assert_eq!(
            words(PreTokenizer::Tekken, "HelloWorld's 125 DON'T"),
            ["Hello", "World", "'s", " ", "1", "2", "5", " DON", "'T"]
        );
    }

    /// Names llama.cpp reads as another's (its groups of names) get that
    /// one's options.
    #[test]
    fn llama_cpps_aliases_share_their_groups_options() {
        let options = |n: &str| format!("{:?}", PreOptions::from_name(n).unwrap());
        for n in ["falcon-h1", "midm-2.0", "lfm2", "jina-v5-nano"] {
            assert_eq!(options(n), options("llama-bpe"), "{n}");
        }
        for n in ["kormo", "f2llmv2", "hunyuan", "solar-open"] {
            assert_eq!(options(n), options("qwen2"), "{n}");
        }
        let gpt2 = ["jina-es", "jina-de", "jina-v2-es", "jina-v2-de", "gigachat"];
        for n in gpt2.into_iter().chain(["a.x-4.0", "mellum"]) {
            assert_eq!(options(n), options("gpt-2"), "{n}");
        }
        // RoBERTa's group: GPT-2's, and a separator after the input.
        for n in ["jina-v1-en", "jina-v2-code", "roberta-bpe"] {
            let o = PreOptions::from_name(n).unwrap();
            assert!(o.add_sep, "{n}");
            let plain = PreOptions {
                add_sep: false,
                ..o
            };
            assert_eq!(format!("{plain:?}"), options("gpt-2"), "{n}");
        }
        assert!(!PreOptions::from_name("gpt-2").unwrap().add_sep);
        // BLOOM's expression, also GPT-3 Finnish's and Poro's (whose
        // decoding keeps its spaces).
        assert_eq!(options("gpt3-finnish"), options("bloom"));
        let poro = PreOptions::from_name("poro-chat").unwrap();
        assert!(!poro.clean_spaces);
        let poro = PreOptions {
            clean_spaces: true,
            ..poro
        };
        assert_eq!(format!("{poro:?}"), options("bloom"));
    }

    #[test]
    fn unknown_pre_is_an_error() {
        let err = PreOptions::from_name("klingon").unwrap_err();
        assert!(err.to_string().contains("klingon"));
    }
}
