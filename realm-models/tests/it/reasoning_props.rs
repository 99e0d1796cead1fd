//! Property tests of the reasoning splitter: replies made of its markers'
//! fragments and other text, fed in any division into pieces, split as
//! they do fed whole, without a panic, and lose or invent no text beyond
//! the markers and the whitespace the formats trim.

use proptest::prelude::*;
use realm_models::reasoning::{ReasoningFormat, ReasoningSplitter, ReplyParts};

const FRAGMENTS: &[&str] = &[
    "<think>",
    "</think>",
    "<thi",
    "nk>",
    "[THINK]",
    "[/THINK]",
    "[/THI",
    "NK]",
    "[",
    "</",
    "<|channel|>",
    "analysis",
    "final",
    "commentary",
    "<|message|>",
    "<|end|>",
    "<|start|>",
    "assistant",
    "<|return|>",
    "<|call|>",
    " to=functions.f",
    "<tool_call>",
    "<tool_",
    " to=assistant",
    "<|",
    "|>",
    "<",
    " ",
    "\n",
    "é",
    "日本",
    "x",
    "Paris.",
];

/// Feeds `reply` in pieces cut at `cuts` (fractions of its length, moved
/// to character boundaries).
fn split(
    format: ReasoningFormat,
    thinking: bool,
    ends: &[&'static str],
    reply: &str,
    cuts: &[f64],
) -> ReplyParts {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|f| {
            let mut i = (f * reply.len() as f64) as usize;
            while !reply.is_char_boundary(i) {
                i -= 1;
            }
            i
        })
        .collect();
    at.sort_unstable();
    let mut s = ReasoningSplitter::new(format, thinking).ended_by(ends);
    let mut parts = ReplyParts::default();
    let mut from = 0;
    for i in at.into_iter().chain([reply.len()]) {
        parts.append(s.push(&reply[from..i.max(from)]));
        from = i.max(from);
    }
    parts.append(s.finish());
    parts
}

/// `text` without the characters of `markers`' texts, whitespace and
/// marker characters: what must survive, in some order, in the parts.
fn letters(text: &str) -> Vec<char> {
    let mut v: Vec<char> = text
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '.' || *c == 'é')
        .collect();
    v.sort_unstable();
    v
}

proptest! {
    #[test]
    fn pieces_split_as_the_whole(
        picks in prop::collection::vec(0..FRAGMENTS.len(), 0..24),
        cuts in prop::collection::vec(0.0f64..1.0, 0..8),
        format in 0..3usize,
        thinking in any::<bool>(),
        tool_calls in any::<bool>(),
    ) {
        let reply: String = picks.iter().map(|&i| FRAGMENTS[i]).collect();
        let format = [
            ReasoningFormat::Think,
            ReasoningFormat::MistralThink,
            ReasoningFormat::Harmony,
        ][format];
        // With tools in `<tool_call>` formats, a call also ends a block.
        let ends: &[&str] = if tool_calls { &["<tool_call>"] } else { &[] };
        let whole = split(format, thinking, ends, &reply, &[]);
        let pieces = split(format, thinking, ends, &reply, &cuts);
        prop_assert_eq!(&pieces, &whole);
        // Nothing is invented: the parts' letters are the reply's, less
        // those of the markers that were read.
        let out = letters(&format!("{}{}", whole.reasoning, whole.content));
        let all = letters(&reply);
        let mut rest = all.clone();
        for c in &out {
            let at = rest.iter().position(|x| x == c);
            prop_assert!(at.is_some(), "{:?} invents {:?}", reply, c);
            rest.remove(at.unwrap_or_default());
        }
        // A think reply without markers is all answer.
        if format != ReasoningFormat::Harmony
            && !thinking
            && !reply.contains('<')
            && !reply.contains('[')
        {
            prop_assert_eq!(&whole.content, &reply);
        }
    }
}
