//! Prompt lookup decoding: speculative decoding with no draft model. The
//! last few tokens generated are looked up earlier in the context (the
//! prompt and the text so far); when they occurred before, the tokens that
//! followed them then are a guess at what comes next. The guess is run
//! with the newest token in one forward pass, and every guessed token the
//! sampler chooses too is kept: one pass yields several tokens where the
//! text repeats its context (quoting, summarising, editing code, filling
//! in JSON about a document). Realm's kernels are batch invariant, so each
//! choice sees the logits a pass of its own would have: the text is the
//! same as without lookup, greedy or sampled. A wrong guess costs the
//! extra rows of that pass.
//!
//! ```
//! use realm_models::Lookup;
//! let l = Lookup::new(4);
//! // "... 7 8 9 | 1 2 3 7 8" : "7 8" came before, followed by "9 1 2 3".
//! assert_eq!(l.draft(&[5, 7, 8, 9, 1, 2, 3, 7, 8], 16), [9, 1, 2, 3]);
//! assert_eq!(l.draft(&[5, 7, 8, 9, 1, 2, 3, 7, 8], 2), [9, 1]);
//! assert!(l.draft(&[1, 2, 3, 4], 16).is_empty());
//! ```

/// How prompt lookup drafts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    /// Most tokens drafted at once.
    pub max_draft: usize,
    /// Shortest run of last tokens looked up.
    pub min_ngram: usize,
    /// Longest run of last tokens looked up (longer runs are tried first:
    /// their continuations are likelier right).
    pub max_ngram: usize,
}

impl Lookup {
    /// Drafts of up to `max_draft` tokens, looking up the last 4, 3 or 2
    /// tokens.
    pub fn new(max_draft: usize) -> Self {
        Self {
            max_draft,
            min_ngram: 2,
            max_ngram: 4,
        }
    }

    /// The tokens that followed the latest earlier occurrence of the
    /// longest run of `history`'s last tokens found again, at most
    /// `max_draft` and `room`; none when no run recurs.
    pub fn draft(&self, history: &[u32], room: usize) -> Vec<u32> {
        let most = self.max_draft.min(room);
        if most == 0 {
            return Vec::new();
        }
        let len = history.len();
        for n in (self.min_ngram.max(1)..=self.max_ngram).rev() {
            if len <= n {
                continue;
            }
            let key = &history[len - n..];
            // Latest first: an occurrence that ends before the key does,
            // so that at least one token follows it.
            if let Some(p) = (0..len - n).rev().find(|&p| &history[p..p + n] == key) {
                let end = (p + n + most).min(len);
                return history[p + n..end].to_vec();
            }
        }
        Vec::new()
    }
}
