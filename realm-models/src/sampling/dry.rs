//! DRY ("don't repeat yourself"): a penalty on the tokens that would make a
//! sequence already in the context repeat for longer, growing by a power of
//! the repeat's length. The semantics are llama.cpp's (after koboldcpp's):
//! sequence breakers cap how far back a repeat may reach, and a token that
//! is a breaker by itself is never penalised.

use std::collections::HashMap;

use realm_core::tokenizer::Tokenizer;

use super::SamplingParams;
use crate::Result;

/// Longest breaker, in bytes; longer ones are cut (as llama.cpp does).
const MAX_BREAKER_BYTES: usize = 40;
/// Most tokens of a breaker's tail that are matched.
const MAX_TAIL_TOKENS: usize = 20;
/// ln(f32::MAX): the exponent is capped so the penalty stays finite.
const LN_F32_MAX: f32 = 88.722_84;

/// DRY's parameters, its breakers resolved to tokens, and scratch space.
#[derive(Debug, Clone)]
pub(super) struct Dry {
    multiplier: f32,
    base: f32,
    allowed: usize,
    last_n: usize,
    /// For each token that begins a breaker, the tokens that must follow it
    /// to complete one: an empty tail for a token holding a whole breaker.
    heads: HashMap<u32, Vec<Vec<u32>>>,
    /// Scratch: for each position of the window, how far the text ending
    /// there matches the text ending at the window's end.
    repeats: Vec<usize>,
    /// Scratch: the longest repeat each token would extend.
    longest: HashMap<u32, usize>,
}

impl Dry {
    /// DRY for `p`, with its breakers found in `vocab`'s tokens; `None`
    /// when DRY is off. Without a vocabulary, breakers cannot be resolved:
    /// `Ok(None)` is not returned for that; the caller refuses it first.
    pub(super) fn new(p: &SamplingParams, vocab: Option<&Tokenizer>) -> Result<Option<Self>> {
        if !p.dry_on() {
            return Ok(None);
        }
        let heads = match vocab {
            Some(tok) => {
                let breakers: Vec<&str> = p.dry_sequence_breakers.iter().map(|b| cut(b)).collect();
                breaker_heads(tok, &breakers)?
            }
            None => HashMap::new(),
        };
        Ok(Some(Self {
            multiplier: p.dry_multiplier,
            base: p.dry_base,
            allowed: p.dry_allowed_length,
            last_n: p.dry_penalty_last_n,
            heads,
            repeats: Vec::new(),
            longest: HashMap::new(),
        }))
    }

    /// Lowers the logits of the tokens that would extend a repeat in
    /// `history`'s last `last_n` tokens.
    pub(super) fn apply(&mut self, history: &[u32], logits: &mut [f32]) {
        if !self.find(history) {
            return;
        }
        for (&token, &len) in &self.longest {
            if let Some(l) = logits.get_mut(token as usize) {
                *l -= self.penalty(token, len);
            }
        }
    }

    /// [`Dry::apply`] to the candidates `(token, logit)` only.
    pub(super) fn apply_to(&mut self, history: &[u32], candidates: &mut [(u32, f32)]) {
        if !self.find(history) {
            return;
        }
        for c in candidates {
            if let Some(&len) = self.longest.get(&c.0) {
                c.1 -= self.penalty(c.0, len);
            }
        }
    }

    /// Finds the longest repeat each token would extend (into `longest`);
    /// `false` when none may be penalised.
    fn find(&mut self, history: &[u32]) -> bool {
        self.longest.clear();
        let n = history.len().min(self.last_n);
        if n <= self.allowed {
            return false;
        }
        let window = &history[history.len() - n..];
        let limit = self.repeat_limit(window);
        if limit < self.allowed {
            return false;
        }
        suffix_matches(window, limit, &mut self.repeats);
        for (j, &len) in self.repeats.iter().enumerate() {
            if len >= self.allowed {
                let next = window[j + 1];
                let best = self.longest.entry(next).or_insert(0);
                *best = (*best).max(len);
            }
        }
        true
    }

    /// What `token`, which would extend a repeat of `len` tokens, loses:
    /// nothing if it is a breaker by itself.
    fn penalty(&self, token: u32, len: usize) -> f32 {
        let breaks_alone = self
            .heads
            .get(&token)
            .is_some_and(|tails| tails.iter().any(Vec::is_empty));
        if breaks_alone {
            return 0.0;
        }
        let mut exponent = len - self.allowed;
        let cap = if self.base > 1.000_001 {
            (LN_F32_MAX / self.base.ln()) as usize
        } else {
            0
        };
        if cap > 0 {
            exponent = exponent.min(cap);
        }
        self.multiplier * self.base.powi(exponent as i32)
    }

    /// How long a repeat may be: the distance from the window's end to the
    /// newest complete breaker (its last token excluded), or the window.
    fn repeat_limit(&self, window: &[u32]) -> usize {
        let n = window.len();
        for back in 0..n {
            let at = n - 1 - back;
            let Some(tails) = self.heads.get(&window[at]) else {
                continue;
            };
            let longest = tails
                .iter()
                .filter(|t| t.len() <= back && window[at + 1..at + 1 + t.len()] == t[..])
                .map(Vec::len)
                .max();
            if let Some(len) = longest {
                return back - len;
            }
        }
        n
    }
}

/// `s` cut to at most [`MAX_BREAKER_BYTES`], at a character boundary.
fn cut(s: &str) -> &str {
    let mut end = s.len().min(MAX_BREAKER_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Which tokens begin each of `breakers`: those whose text holds one whole
/// (empty tail), and those whose text ends with a beginning of one (the
/// tokenization of the rest as tail). Each token's text is made once.
fn breaker_heads(tok: &Tokenizer, breakers: &[&str]) -> Result<HashMap<u32, Vec<Vec<u32>>>> {
    let mut heads: HashMap<u32, Vec<Vec<u32>>> = HashMap::new();
    // The tokens of a breaker's rest, by (breaker, bytes matched).
    let mut tails: HashMap<(usize, usize), Vec<u32>> = HashMap::new();
    for id in 0..tok.n_vocab() as u32 {
        let word = tok.decode_bytes(&[id], false, true)?;
        for (bi, breaker) in breakers.iter().enumerate() {
            let b = breaker.as_bytes();
            let Some(&first) = b.first() else {
                continue;
            };
            if word.windows(b.len()).any(|w| w == b) {
                push_tail(&mut heads, id, Vec::new());
                continue;
            }
            for pos in 0..word.len() {
                let rest = &word[pos..];
                if word[pos] != first || rest.len() >= b.len() || !b.starts_with(rest) {
                    continue;
                }
                // A tail starting inside a character cannot be tokenized as
                // text.
                let Some(tail) = breaker.get(rest.len()..) else {
                    continue;
                };
                let ids = match tails.get(&(bi, rest.len())) {
                    Some(ids) => ids.clone(),
                    None => {
                        let mut ids = tok.encode(tail, false, false)?;
                        ids.truncate(MAX_TAIL_TOKENS);
                        tails.insert((bi, rest.len()), ids.clone());
                        ids
                    }
                };
                push_tail(&mut heads, id, ids);
            }
        }
    }
    Ok(heads)
}

fn push_tail(heads: &mut HashMap<u32, Vec<Vec<u32>>>, id: u32, tail: Vec<u32>) {
    let tails = heads.entry(id).or_default();
    if !tails.contains(&tail) {
        tails.push(tail);
    }
}

/// For each position `j` but the last, the number of tokens the text
/// ending at `j` shares with the text ending at the window's end (its
/// longest common suffix), capped at `limit`: a Z-function over the window
/// read backwards. `out` is the Z-array while it is computed, so that a
/// step allocates nothing once `out` has grown to the window.
fn suffix_matches(window: &[u32], limit: usize, out: &mut Vec<usize>) {
    let n = window.len();
    // rev(i) is the i-th token from the end.
    let rev = |i: usize| window[n - 1 - i];
    let z = out;
    z.clear();
    z.resize(n, 0);
    let (mut left, mut right) = (0usize, 0usize);
    for k in 1..n {
        let mut len = if k < right {
            z[k - left].min(right - k)
        } else {
            0
        };
        while k + len < n && rev(len) == rev(k + len) {
            len += 1;
        }
        if k + len > right {
            left = k;
            right = k + len;
        }
        z[k] = len;
    }
    // The text ending at j is rev(k..) for k = n - 1 - j: z[1..] reversed.
    z.remove(0);
    z.reverse();
    z.iter_mut().for_each(|m| *m = (*m).min(limit));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dry(allowed: usize, last_n: usize, heads: &[(u32, &[u32])]) -> Dry {
        let mut map: HashMap<u32, Vec<Vec<u32>>> = HashMap::new();
        for &(h, tail) in heads {
            push_tail(&mut map, h, tail.to_vec());
        }
        Dry {
            multiplier: 1.0,
            base: 2.0,
            allowed,
            last_n,
            heads: map,
            repeats: Vec::new(),
            longest: HashMap::new(),
        }
    }

    proptest! {
        /// The Z-function gives what comparing each suffix pair token by
        /// token gives.
        #[test]
        fn suffix_matches_are_longest_common_suffixes(
            w in proptest::collection::vec(0u32..3, 1..40), limit in 0usize..50,
        ) {
            let mut got = Vec::new();
            suffix_matches(&w, limit, &mut got);
            let n = w.len();
            for (j, &g) in got.iter().enumerate() {
                let mut len = 0;
                while len <= j && w[j - len] == w[n - 1 - len] {
                    len += 1;
                }
                prop_assert_eq!(g, len.min(limit), "{:?} at {}", w, j);
            }
        }
    }

    #[test]
    fn the_token_that_would_repeat_a_sequence_pays_by_its_length() {
        // 1 2 3 9 1 2 3: the text ends with "1 2 3", which came before,
        // followed by 9; emitting 9 would make the repeat 4 tokens long.
        let history = [1, 2, 3, 9, 1, 2, 3];
        let mut d = dry(2, 64, &[]);
        let mut logits = vec![0.0f32; 10];
        d.apply(&history, &mut logits);
        // "1 2 3" ends at index 2 and matches the end for 3 tokens: the
        // token after it (9) pays 2^(3-2) = 2.
        assert_eq!(logits[9], -2.0);
        assert!(logits.iter().enumerate().all(|(i, &l)| i == 9 || l == 0.0));
        // With allowed length 3, still penalised (3 >= 3), by 2^0.
        let mut d = dry(3, 64, &[]);
        let mut logits = vec![0.0f32; 10];
        d.apply(&history, &mut logits);
        assert_eq!(logits[9], -1.0);
        // A window of 4 tokens no longer holds the first "1 2 3".
        let mut d = dry(2, 4, &[]);
        let mut logits = vec![0.0f32; 10];
        d.apply(&history, &mut logits);
        assert!(logits.iter().all(|&l| l == 0.0));
    }

    #[test]
    fn breakers_cap_the_repeat_and_are_never_penalised() {
        // 5 is a breaker: "1 2 3" repeats, but the newest 5 is 2 tokens
        // from the end, so repeats are capped at 2: 9 pays 2^0.
        let history = [1, 2, 3, 9, 5, 2, 3];
        let mut d = dry(2, 64, &[(5, &[])]);
        let mut logits = vec![0.0f32; 10];
        d.apply(&history, &mut logits);
        assert_eq!(logits[9], -1.0);
        // A breaker itself is never penalised: 5 would extend "2 3" here.
        let history = [2, 3, 5, 7, 2, 3];
        let mut d = dry(2, 64, &[(5, &[])]);
        let mut logits = vec![0.0f32; 10];
        d.apply(&history, &mut logits);
        assert_eq!(logits[5], 0.0);
        // A two-token breaker (7 then 8) ends a repeat only when whole.
        let history = [1, 2, 3, 4, 7, 1, 2, 3];
        let mut half = dry(2, 64, &[(7, &[8])]);
        let mut logits = vec![0.0f32; 10];
        half.apply(&history, &mut logits);
        assert_eq!(logits[4], -2.0);
        let history = [1, 2, 3, 4, 7, 8, 1, 2, 3];
        let mut logits = vec![0.0f32; 10];
        half.apply(&history, &mut logits);
        assert_eq!(logits[4], -2.0, "the breaker is before the repeat");
        let history = [1, 2, 3, 4, 1, 2, 7, 8, 3];
        let mut logits = vec![0.0f32; 10];
        half.apply(&history, &mut logits);
        assert!(logits.iter().all(|&l| l == 0.0), "{logits:?}");
    }
}
