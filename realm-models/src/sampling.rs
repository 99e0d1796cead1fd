//! Choosing the next token from logits: greedy, or temperature with top-k,
//! top-p and min-p, after repetition/presence/frequency penalties and logit
//! bias; with a seedable generator, so the same seed gives the same text.

use crate::{Error, Result};

/// How to pick tokens. The defaults sample at temperature 0.8 with top-k 40,
/// top-p 0.95 and min-p 0.05, as llama.cpp's command line does.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Temperature; 0 or below is greedy (argmax).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely (0: none).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens (1: off).
    pub repeat_penalty: f32,
    /// Subtract from the logit of every token seen recently (0: off).
    pub presence_penalty: f32,
    /// Subtract from a token's logit this times its recent count (0: off).
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Added to the logits of given tokens before anything else.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
            seed: 0x5eed,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::BadSampling(m.to_string()));
        if !self.temperature.is_finite() {
            return bad("temperature must be finite");
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top_p must be in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p must be in [0, 1]");
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat_penalty must be positive");
        }
        if !(self.presence_penalty.is_finite() && self.frequency_penalty.is_finite()) {
            return bad("penalties must be finite");
        }
        if self.logit_bias.iter().any(|(_, b)| b.is_nan()) {
            return bad("logit bias must not be NaN");
        }
        Ok(())
    }
}

/// xoshiro256** seeded through SplitMix64: small, fast, and the same on
/// every platform, wasm32 included.
#[derive(Debug, Clone)]
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        Self([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks tokens according to [`SamplingParams`]. Holds its scratch space, so
/// sampling allocates nothing after the first call.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    logits: Vec<f32>,
    candidates: Vec<(u32, f32)>,
    recent: Vec<(u32, u32)>,
}

impl Sampler {
    /// A sampler; fails on parameters out of range.
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            rng: Rng::new(params.seed),
            params,
            logits: Vec::new(),
            candidates: Vec::new(),
            recent: Vec::new(),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from `logits`, given the tokens so far
    /// (`history`, for the penalties).
    ///
    /// ```
    /// use realm_models::{Sampler, SamplingParams};
    /// let mut greedy = Sampler::new(SamplingParams::greedy()).unwrap();
    /// assert_eq!(greedy.sample(&[0.1, 2.0, -1.0], &[]), 1);
    /// ```
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        self.apply_bias_and_penalties(history);
        let p = &self.params;
        if p.temperature <= 0.0 {
            return argmax(&self.logits);
        }
        self.candidates.clear();
        self.candidates.extend(
            self.logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite() || **l == f32::INFINITY)
                .map(|(i, &l)| (i as u32, l)),
        );
        if self.candidates.is_empty() {
            return argmax(&self.logits);
        }
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(p.top_k - 1, by_logit);
            self.candidates.truncate(p.top_k);
        }
        self.candidates.sort_unstable_by(by_logit);
        // Probabilities at temperature 1 decide top-p and min-p (as llama.cpp).
        let max = self.candidates[0].1;
        let mut sum = 0f64;
        for c in &self.candidates {
            sum += f64::from((c.1 - max).exp());
        }
        if p.top_p < 1.0 {
            let mut cum = 0f64;
            let mut keep = self.candidates.len();
            for (i, c) in self.candidates.iter().enumerate() {
                cum += f64::from((c.1 - max).exp()) / sum;
                if cum >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
            self.candidates.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            // p_i / p_max >= min_p  <=>  l_i - l_max >= ln(min_p)
            let floor = max + p.min_p.ln();
            let keep = self.candidates.iter().take_while(|c| c.1 >= floor).count();
            self.candidates.truncate(keep.max(1));
        }
        let inv_t = 1.0 / p.temperature;
        let mut total = 0f64;
        for c in &mut self.candidates {
            c.1 = ((c.1 - max) * inv_t).exp();
            total += f64::from(c.1);
        }
        let mut r = self.rng.next_f64() * total;
        for c in &self.candidates {
            r -= f64::from(c.1);
            if r < 0.0 {
                return c.0;
            }
        }
        self.candidates[self.candidates.len() - 1].0
    }

    fn apply_bias_and_penalties(&mut self, history: &[u32]) {
        let p = &self.params;
        for &(id, bias) in &p.logit_bias {
            if let Some(l) = self.logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        let penalised =
            p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        if !penalised || p.penalty_last_n == 0 {
            return;
        }
        let window = &history[history.len().saturating_sub(p.penalty_last_n)..];
        self.recent.clear();
        for &t in window {
            match self.recent.iter_mut().find(|(id, _)| *id == t) {
                Some((_, n)) => *n += 1,
                None => self.recent.push((t, 1)),
            }
        }
        for &(id, count) in &self.recent {
            let Some(l) = self.logits.get_mut(id as usize) else {
                continue;
            };
            *l = if *l > 0.0 {
                *l / p.repeat_penalty
            } else {
                *l * p.repeat_penalty
            };
            *l -= count as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }
}

/// Index of the largest value; the lowest index wins a tie; NaN never wins
/// (unless every value is NaN: then the last index).
pub fn argmax(x: &[f32]) -> u32 {
    // The largest value first, in 8 independent maxima (one chain of
    // compares would make every value wait for the last; in a wasm guest
    // this is most of a greedy step's sampling), then its first index.
    let mut tops = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (t, &v) in tops.iter_mut().zip(c) {
            if v > *t {
                *t = v;
            }
        }
    }
    let top = tops
        .into_iter()
        .chain(rest.iter().copied())
        .fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
    x.iter()
        .position(|&v| v == top)
        .unwrap_or(x.len().saturating_sub(1)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The chunked argmax picks what one pass over the values picks:
        /// the first of the largest, never a NaN unless all are.
        #[test]
        fn argmax_is_the_first_largest(x in proptest::collection::vec(prop_oneof![
            4 => -3i8..3,
            1 => Just(i8::MIN),
            1 => Just(i8::MAX),
        ], 0..40)) {
            // Small integers for ties; MIN and MAX stand for -inf and NaN.
            let x: Vec<f32> = x.iter().map(|&v| match v {
                i8::MIN => f32::NEG_INFINITY,
                i8::MAX => f32::NAN,
                v => f32::from(v),
            }).collect();
            let mut best = 0;
            for (i, &v) in x.iter().enumerate() {
                if v > x[best] || x[best].is_nan() {
                    best = i;
                }
            }
            prop_assert_eq!(argmax(&x) as usize, best, "{:?}", x);
        }
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        };
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                ..params.clone()
            })
            .unwrap();
            (0..50).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn filters_keep_only_what_they_allow() {
        let logits = [5.0, 4.0, 3.0, 0.0, -10.0];
        let mut k1 = Sampler::new(SamplingParams {
            top_k: 1,
            temperature: 5.0,
            ..Default::default()
        })
        .unwrap();
        assert!((0..50).all(|_| k1.sample(&logits, &[]) == 0));
        // min-p 0.5: only tokens with p >= p_max / 2 (logit within ln 2 of the top).
        let mut minp = Sampler::new(SamplingParams {
            min_p: 0.5,
            top_k: 0,
            top_p: 1.0,
            temperature: 1.0,
            ..Default::default()
        })
        .unwrap();
        assert!((0..50).all(|_| minp.sample(&logits, &[]) == 0));
        // top-p 0.9 keeps 0 and 1 (0.665 + 0.245 > 0.9), never 2..
        let mut topp = Sampler::new(SamplingParams {
            top_p: 0.9,
            top_k: 0,
            min_p: 0.0,
            temperature: 1.0,
            ..Default::default()
        })
        .unwrap();
        let picks: Vec<u32> = (0..300).map(|_| topp.sample(&logits, &[])).collect();
        assert!(picks.iter().all(|&t| t <= 1) && picks.contains(&1));
    }

    #[test]
    fn penalties_and_bias_change_the_greedy_choice() {
        let logits = [2.0, 1.9, 0.0];
        let mut rep = Sampler::new(SamplingParams {
            repeat_penalty: 1.1,
            ..SamplingParams::greedy()
        })
        .unwrap();
        assert_eq!(rep.sample(&logits, &[0]), 1);
        let mut freq = Sampler::new(SamplingParams {
            frequency_penalty: 0.06,
            ..SamplingParams::greedy()
        })
        .unwrap();
        assert_eq!(freq.sample(&logits, &[0]), 0);
        assert_eq!(freq.sample(&logits, &[0, 0]), 1);
        let mut bias = Sampler::new(SamplingParams {
            logit_bias: vec![(2, 5.0)],
            ..SamplingParams::greedy()
        })
        .unwrap();
        assert_eq!(bias.sample(&logits, &[]), 2);
        assert!(Sampler::new(SamplingParams {
            top_p: 1.5,
            ..Default::default()
        })
        .is_err());
    }

    proptest! {
        #[test]
        fn sampling_returns_a_valid_token(
            logits in proptest::collection::vec(-50f32..50.0, 1..200),
            temp in 0f32..3.0, top_k in 0usize..50, top_p in 0f32..=1.0, min_p in 0f32..=1.0, seed: u64,
        ) {
            let mut s = Sampler::new(SamplingParams { temperature: temp, top_k, top_p, min_p, seed, ..Default::default() }).unwrap();
            let t = s.sample(&logits, &[0, 1, 2]);
            prop_assert!((t as usize) < logits.len());
        }
    }
}
