//! Choosing the next token from logits, as llama.cpp's sampler chain
//! does (the order is on [`SamplingParams`]): greedy, or filters and a draw
//! from what they leave, or mirostat; with llama.cpp's generator, drawn as
//! llama.cpp draws it, so the same seed on the same logits gives
//! llama.cpp's tokens.

mod dry;
mod params;
mod rng;

use realm_core::tokenizer::Tokenizer;

pub use self::params::{Mirostat, SamplerKind, SamplingParams};

use self::dry::Dry;
use self::rng::Mt19937;
use crate::{Error, Result};

/// How many of the most likely tokens mirostat 1 estimates the
/// distribution's exponent from (llama.cpp's `m`).
const MIROSTAT_M: usize = 100;

/// Picks tokens according to [`SamplingParams`]. Holds its scratch space, so
/// sampling allocates nothing after the first calls.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    /// The draw's generator; XTC has its own, as in llama.cpp, both
    /// seeded with the seed's low 32 bits.
    draw_rng: Mt19937,
    xtc_rng: Mt19937,
    /// Whether the candidates are sorted, most likely first (the draw
    /// walks them in their order, which follows llama.cpp's).
    sorted: bool,
    /// The last step's token when it needed no draw (greedy).
    certain: Option<u32>,
    dry: Option<Dry>,
    /// End-of-generation tokens never chosen (`ignore_eos`).
    banned: Vec<u32>,
    /// Mirostat's running limit on a token's surprise, in bits.
    mu: f32,
    logits: Vec<f32>,
    /// The candidates: (token, logit) while filtering, (token, weight) once
    /// weighed for the draw.
    candidates: Vec<(u32, f32)>,
    /// The weights' sum.
    total: f64,
    recent: Vec<(u32, u32)>,
    /// Scratch for typical-p: (score, probability, token, logit).
    typical: Vec<(f64, f64, u32, f32)>,
}

/// Larger logit first; the lower id first among equals.
fn by_logit(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The largest logit and the sum of `exp(logit - largest)`: the softmax's
/// normaliser.
fn normaliser(c: &[(u32, f32)]) -> (f32, f64) {
    let max = c.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
    let sum = c.iter().map(|c| f64::from((c.1 - max).exp())).sum();
    (max, sum)
}

impl Sampler {
    /// A sampler; fails on parameters out of range, and on DRY with
    /// sequence breakers or `ignore_eos`, which need the vocabulary
    /// ([`Sampler::with_tokenizer`]).
    pub fn new(params: SamplingParams) -> Result<Self> {
        if (params.dry_on() && !params.dry_sequence_breakers.is_empty()) || params.ignore_eos {
            return Err(Error::BadSampling(
                "DRY's sequence breakers and ignore_eos's tokens are found in the vocabulary: \
                 build the sampler with Sampler::with_tokenizer"
                    .into(),
            ));
        }
        Self::build(params, None)
    }

    /// A sampler whose DRY sequence breakers (and, with `ignore_eos`,
    /// end-of-generation tokens) are found in `tokenizer`'s vocabulary (each
    /// token's text is searched for the breakers once, here); fails on
    /// parameters out of range.
    pub fn with_tokenizer(params: SamplingParams, tokenizer: &Tokenizer) -> Result<Self> {
        Self::build(params, Some(tokenizer))
    }

    fn build(params: SamplingParams, vocab: Option<&Tokenizer>) -> Result<Self> {
        params.validate()?;
        let banned = match vocab {
            Some(tok) if params.ignore_eos => tok.eog_ids().to_vec(),
            _ => Vec::new(),
        };
        Ok(Self {
            draw_rng: Mt19937::new(params.seed as u32),
            xtc_rng: Mt19937::new(params.seed as u32),
            sorted: false,
            certain: None,
            dry: Dry::new(&params, vocab)?,
            banned,
            mu: 2.0 * params.mirostat_tau,
            params,
            logits: Vec::new(),
            candidates: Vec::new(),
            total: 0.0,
            recent: Vec::new(),
            typical: Vec::new(),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Chooses the next token from `logits`, given the tokens so far
    /// (`history`, for the penalties and DRY).
    ///
    /// ```
    /// use realm_models::{Sampler, SamplingParams};
    /// let mut greedy = Sampler::new(SamplingParams::greedy()).unwrap();
    /// assert_eq!(greedy.sample(&[0.1, 2.0, -1.0], &[]), 1);
    /// ```
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.certain = self.prepare(logits, history);
        if let Some(token) = self.certain {
            return token;
        }
        let i = self.draw();
        let (token, weight) = self.candidates[i];
        if self.params.mirostat != Mirostat::Off {
            let surprise = -(f64::from(weight) / self.total).log2() as f32;
            self.mu -= self.params.mirostat_eta * (surprise - self.params.mirostat_tau);
        }
        token
    }

    /// The distribution the next token would be drawn from: each token
    /// the samplers leave, with its probability (one token with 1 when the
    /// choice is greedy). XTC's chance is drawn as [`Sampler::sample`]
    /// draws it; mirostat's state is left as it is.
    ///
    /// ```
    /// use realm_models::{Sampler, SamplingParams};
    /// let p = SamplingParams { top_k: 2, min_p: 0.0, temperature: 1.0, ..Default::default() };
    /// let mut s = Sampler::new(p).unwrap();
    /// let d = s.distribution(&[0.0, 2.0, 1.0], &[]).to_vec();
    /// assert_eq!(d.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
    /// assert!((d[0].1 - 1.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
    /// ```
    pub fn distribution(&mut self, logits: &[f32], history: &[u32]) -> &[(u32, f32)] {
        self.certain = self.prepare(logits, history);
        if let Some(token) = self.certain {
            self.candidates.clear();
            self.candidates.push((token, 1.0));
        } else {
            let total = self.total;
            for c in &mut self.candidates {
                c.1 = (f64::from(c.1) / total) as f32;
            }
            self.total = 1.0;
        }
        &self.candidates
    }

    /// The distribution the last [`Sampler::sample`] drew from (what
    /// llama.cpp's server calls the post-sampling probabilities): each
    /// token the samplers left with its probability, most likely first;
    /// one token with 1 when the choice was greedy; empty before any step.
    ///
    /// ```
    /// use realm_models::{Sampler, SamplingParams};
    /// let p = SamplingParams { top_k: 2, min_p: 0.0, temperature: 1.0, ..Default::default() };
    /// let mut s = Sampler::new(p).unwrap();
    /// let token = s.sample(&[0.0, 2.0, 1.0], &[]);
    /// let last = s.last_distribution();
    /// assert_eq!(last.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
    /// assert!(last.iter().any(|t| t.0 == token));
    /// ```
    pub fn last_distribution(&self) -> Vec<(u32, f32)> {
        if let Some(token) = self.certain {
            return vec![(token, 1.0)];
        }
        let total = self.total;
        let mut out: Vec<(u32, f32)> = self
            .candidates
            .iter()
            .map(|&(id, w)| (id, (f64::from(w) / total) as f32))
            .collect();
        out.sort_unstable_by(by_logit);
        out
    }

    /// Runs the samplers: `Some` token when the choice needs no draw,
    /// else `None` with the candidates weighed for one.
    fn prepare(&mut self, logits: &[f32], history: &[u32]) -> Option<u32> {
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        self.apply_bias();
        let mirostat = self.params.mirostat;
        let n = self.params.samplers.len();
        // Penalties and DRY before any other sampler change the logits in
        // place: no candidate list is needed for them.
        let lead = match mirostat {
            Mirostat::Off => self
                .params
                .samplers
                .iter()
                .take_while(|k| matches!(k, SamplerKind::Penalties | SamplerKind::Dry))
                .count(),
            _ => 0,
        };
        for i in 0..lead {
            match self.params.samplers[i] {
                SamplerKind::Penalties => self.apply_penalties(history),
                _ => {
                    if let Some(dry) = &mut self.dry {
                        dry.apply(history, &mut self.logits);
                    }
                }
            }
        }
        let p = &self.params;
        // In the default order every sampler but typical-p and XTC keeps
        // the most likely token, which greedy decoding then is.
        let keeps_top = mirostat != Mirostat::Off
            || (p.samplers == SamplerKind::DEFAULT && p.typical_p >= 1.0 && !p.xtc_on());
        if p.temperature <= 0.0 && keeps_top {
            return Some(argmax(&self.logits));
        }
        // A top-k that runs first (top-n-sigma being off) needs only the
        // tokens that can be among the k.
        let next = self.params.samplers[lead..]
            .iter()
            .find(|&&k| k != SamplerKind::TopNSigma || self.params.top_n_sigma > 0.0);
        match (mirostat, next, self.params.top_k) {
            (Mirostat::Off, Some(SamplerKind::TopK), k) if k > 0 => self.collect_top(k),
            _ => {
                self.candidates.clear();
                self.candidates.extend(
                    self.logits
                        .iter()
                        .enumerate()
                        .filter(|(_, l)| l.is_finite() || **l == f32::INFINITY)
                        .map(|(i, &l)| (i as u32, l)),
                );
            }
        }
        self.sorted = false;
        if self.candidates.is_empty() {
            return Some(argmax(&self.logits));
        }
        if self.candidates.iter().any(|c| c.1 == f32::INFINITY) {
            // Tokens biased to +inf: those alone, alike.
            self.candidates.retain(|c| c.1 == f32::INFINITY);
            self.candidates.iter_mut().for_each(|c| c.1 = 0.0);
        }
        match mirostat {
            Mirostat::V1 => return self.mirostat_v1(),
            Mirostat::V2 => return self.mirostat_v2(),
            Mirostat::Off => {}
        }
        for i in lead..n {
            let kind = self.params.samplers[i];
            match kind {
                SamplerKind::Penalties => {
                    self.penalise_candidates(history);
                    self.sorted = false;
                }
                SamplerKind::Dry => {
                    if let Some(dry) = &mut self.dry {
                        dry.apply_to(history, &mut self.candidates);
                    }
                    self.sorted = false;
                }
                SamplerKind::TopNSigma => self.top_n_sigma(),
                SamplerKind::TopK => self.top_k(),
                SamplerKind::TypicalP => self.typical_p(),
                SamplerKind::TopP => self.top_p(),
                SamplerKind::MinP => self.min_p(),
                SamplerKind::Xtc => self.xtc(),
                SamplerKind::Temperature => {
                    let t = self.temperature();
                    if t <= 0.0 {
                        // Only the most likely token is left.
                        let top = self.candidates.iter().copied().min_by(by_logit);
                        self.candidates.clear();
                        self.candidates.extend(top);
                        if i + 1 == n {
                            return top.map(|c| c.0);
                        }
                    } else {
                        self.candidates.iter_mut().for_each(|c| c.1 /= t);
                    }
                }
            }
        }
        self.weigh()
    }

    /// Sorts the candidates, most likely first, unless they are.
    fn sort(&mut self) {
        if !self.sorted {
            self.candidates.sort_unstable_by(by_logit);
            self.sorted = true;
        }
    }

    /// Drops tokens more than `top_n_sigma` standard deviations of the
    /// logits below the largest.
    fn top_n_sigma(&mut self) {
        let n = self.params.top_n_sigma;
        let c = &mut self.candidates;
        if n <= 0.0 || c.len() <= 1 {
            return;
        }
        let count = c.len() as f64;
        let mean = c.iter().map(|c| f64::from(c.1)).sum::<f64>() / count;
        let var = c
            .iter()
            .map(|c| (f64::from(c.1) - mean).powi(2))
            .sum::<f64>()
            / count;
        let max = c.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        let floor = max - n * var.sqrt() as f32;
        c.retain(|c| c.1 >= floor);
    }

    /// The candidates that can be among the `k` most likely (at least
    /// those): the logits at or above the least of `k` already seen, so
    /// that a large vocabulary costs a comparison per token, not a
    /// selection over all of it.
    fn collect_top(&mut self, k: usize) {
        let c = &mut self.candidates;
        c.clear();
        let cap = 2 * k.max(32);
        let mut floor = f32::NEG_INFINITY;
        for (i, &l) in self.logits.iter().enumerate() {
            // (NaN fails the comparison; -inf is never a candidate.)
            if l >= floor && l > f32::NEG_INFINITY {
                c.push((i as u32, l));
                if c.len() == cap {
                    c.select_nth_unstable_by(k - 1, by_logit);
                    c.truncate(k);
                    floor = c.iter().fold(f32::INFINITY, |m, c| m.min(c.1));
                }
            }
        }
    }

    /// Keeps the `top_k` most likely, sorted, most likely first; a `top_k`
    /// of 0 leaves the candidates as they are.
    fn top_k(&mut self) {
        let k = self.params.top_k;
        if k == 0 {
            return;
        }
        if !self.sorted && k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit);
        }
        self.candidates.truncate(k);
        self.sort();
    }

    /// The least number of tokens the truncating samplers leave.
    fn min_keep(&self) -> usize {
        self.params.min_keep.max(1)
    }

    /// Locally typical sampling: the tokens whose surprise is nearest the
    /// entropy, until their probability passes `typical_p`, left in that
    /// order (as llama.cpp leaves them, for the draw).
    fn typical_p(&mut self) {
        let p = self.params.typical_p;
        if p >= 1.0 {
            return;
        }
        self.sort();
        let (max, sum) = normaliser(&self.candidates);
        let t = &mut self.typical;
        t.clear();
        t.extend(
            self.candidates
                .iter()
                .map(|&(id, l)| (0.0, f64::from((l - max).exp()) / sum, id, l)),
        );
        let entropy: f64 = t
            .iter()
            .filter(|x| x.1 > 0.0)
            .map(|x| -x.1 * x.1.ln())
            .sum();
        for x in t.iter_mut() {
            x.0 = (-x.1.ln() - entropy).abs();
        }
        // Stable: among equal scores the more likely (earlier) comes first.
        t.sort_by(|a, b| a.0.total_cmp(&b.0));
        let min_keep = self.params.min_keep.max(1);
        let mut cum = 0.0;
        let mut keep = t.len();
        for (i, x) in t.iter().enumerate() {
            cum += x.1;
            if cum > f64::from(p) && i + 1 >= min_keep {
                keep = i + 1;
                break;
            }
        }
        self.candidates.clear();
        self.candidates
            .extend(t[..keep].iter().map(|&(_, _, id, l)| (id, l)));
        self.sorted = false;
    }

    /// Nucleus sampling: the most likely tokens until their probability
    /// reaches `top_p`, sorted. Unsorted candidates are sorted only as far
    /// as the running sum needs: the 256 most likely first, all of them
    /// if those do not reach `top_p` (llama.cpp's way).
    fn top_p(&mut self) {
        let p = self.params.top_p;
        if p >= 1.0 {
            return;
        }
        let min_keep = self.min_keep();
        let (max, sum) = normaliser(&self.candidates);
        let len = self.candidates.len();
        let mut sorted_to = len;
        if !self.sorted {
            sorted_to = if len > 1024 { 256 } else { len };
            if sorted_to < len {
                self.candidates
                    .select_nth_unstable_by(sorted_to - 1, by_logit);
            }
            self.candidates[..sorted_to].sort_unstable_by(by_logit);
        }
        let mut cum = 0f64;
        let mut keep = len;
        let mut i = 0;
        while i < len {
            if i == sorted_to {
                self.candidates[sorted_to..].sort_unstable_by(by_logit);
                sorted_to = len;
            }
            cum += f64::from((self.candidates[i].1 - max).exp()) / sum;
            if cum >= f64::from(p) && i + 1 >= min_keep {
                keep = i + 1;
                break;
            }
            i += 1;
        }
        if keep == len && sorted_to < len {
            self.candidates[sorted_to..].sort_unstable_by(by_logit);
        }
        self.candidates.truncate(keep);
        self.sorted = true;
    }

    /// Drops tokens less likely than `min_p` times the most likely.
    /// Unsorted candidates stay in their order (unless fewer than
    /// `min_keep` would be left: then the most likely are kept, sorted).
    fn min_p(&mut self) {
        let p = self.params.min_p;
        if p <= 0.0 || self.candidates.is_empty() {
            return;
        }
        // p_i / p_max >= min_p  <=>  l_i - l_max >= ln(min_p)
        if !self.sorted {
            let max = self
                .candidates
                .iter()
                .fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
            let floor = max + p.ln();
            let kept = self.candidates.iter().filter(|c| c.1 >= floor).count();
            if kept > 0 && kept >= self.params.min_keep {
                self.candidates.retain(|c| c.1 >= floor);
                return;
            }
            self.sort();
        }
        let floor = self.candidates[0].1 + p.ln();
        let keep = self.candidates.iter().take_while(|c| c.1 >= floor).count();
        let keep = keep.max(self.min_keep()).min(self.candidates.len());
        self.candidates.truncate(keep);
    }

    /// XTC: with its chance, drops every token at least `xtc_threshold`
    /// likely except the least likely of them. The chance comes from its
    /// own generator, as in llama.cpp, drawn whenever XTC could apply.
    fn xtc(&mut self) {
        let p = &self.params;
        if !p.xtc_on() || self.candidates.len() < 2 {
            return;
        }
        if self.xtc_rng.next_f32() > p.xtc_probability {
            return;
        }
        self.sort();
        let (max, sum) = normaliser(&self.candidates);
        let threshold = f64::from(self.params.xtc_threshold);
        let above = self
            .candidates
            .iter()
            .take_while(|c| f64::from((c.1 - max).exp()) / sum >= threshold)
            .count();
        let drop = above.saturating_sub(1);
        if drop > 0 && self.candidates.len() - drop >= self.params.min_keep {
            self.candidates.drain(..drop);
        }
    }

    /// The temperature: fixed, or dynamic (by the candidates' normalised
    /// entropy; that sorts them, as in llama.cpp).
    fn temperature(&mut self) -> f32 {
        let t = self.params.temperature;
        if self.params.dynatemp_range <= 0.0 || self.candidates.len() <= 1 {
            return t;
        }
        self.sort();
        let p = &self.params;
        let lo = (t - p.dynatemp_range).max(0.0);
        let hi = t + p.dynatemp_range;
        let (max, sum) = normaliser(&self.candidates);
        let entropy: f64 = self
            .candidates
            .iter()
            .map(|c| f64::from((c.1 - max).exp()) / sum)
            .filter(|&q| q > 0.0)
            .map(|q| -q * q.ln())
            .sum();
        let normalised = entropy / (self.candidates.len() as f64).ln();
        lo + (hi - lo) * (normalised as f32).powf(p.dynatemp_exponent)
    }

    /// Mirostat 1: estimates the Zipf exponent `s` from the most likely
    /// tokens, keeps the k that would give surprise `mu` under it, and
    /// weighs them, sorted.
    fn mirostat_v1(&mut self) -> Option<u32> {
        let t = self.params.temperature;
        let c = &mut self.candidates;
        c.iter_mut().for_each(|c| c.1 /= t);
        let n = c.len();
        let m = MIROSTAT_M.min(n);
        if m < n {
            c.select_nth_unstable_by(m - 1, by_logit);
        }
        c[..m].sort_unstable_by(by_logit);
        let (mut num, mut den) = (0f64, 0f64);
        for i in 0..m - 1 {
            let ti = ((i + 2) as f64 / (i + 1) as f64).ln();
            // ln(p_i / p_{i+1}) is the logits' difference.
            let bi = f64::from(c[i].1) - f64::from(c[i + 1].1);
            num += ti * bi;
            den += ti * ti;
        }
        let k = if m < 2 {
            1
        } else {
            let s = num / den;
            let eps = s - 1.0;
            let n_vocab = self.logits.len() as f64;
            let k =
                (eps * 2f64.powf(f64::from(self.mu)) / (1.0 - n_vocab.powf(-eps))).powf(1.0 / s);
            if k.is_nan() {
                1
            } else {
                (k.min(n as f64) as usize).max(1)
            }
        };
        if k <= m {
            c.truncate(k);
        } else {
            if k < n {
                c.select_nth_unstable_by(k - 1, by_logit);
                c.truncate(k);
            }
            c.sort_unstable_by(by_logit);
        }
        self.sorted = true;
        self.weigh()
    }

    /// Mirostat 2: keeps the tokens whose surprise is at most `mu` (at
    /// least the most likely), and weighs them. They stay unsorted (mu can
    /// grow until nearly every token stays): the draw sorts only as far as
    /// it walks.
    fn mirostat_v2(&mut self) -> Option<u32> {
        let t = self.params.temperature;
        let c = &mut self.candidates;
        c.iter_mut().for_each(|c| c.1 /= t);
        let (max, sum) = normaliser(c);
        // -log2(p) <= mu  <=>  l - max - ln(sum) >= -mu ln 2
        let floor = f64::from(max) + sum.ln() - f64::from(self.mu) * std::f64::consts::LN_2;
        // The most likely always stays.
        let top = c.iter().copied().min_by(by_logit);
        c.retain(|c| f64::from(c.1) >= floor);
        if let (true, Some(top)) = (c.is_empty(), top) {
            c.push(top);
        }
        self.weigh()
    }

    /// Turns the candidates' logits into weights, `exp(logit - largest)`,
    /// and their sum, in the candidates' order (llama.cpp's `dist`).
    fn weigh(&mut self) -> Option<u32> {
        let max = if self.sorted {
            self.candidates[0].1
        } else {
            self.candidates
                .iter()
                .fold(f32::NEG_INFINITY, |m, c| m.max(c.1))
        };
        let mut total = 0f64;
        for c in &mut self.candidates {
            c.1 = (c.1 - max).exp();
            total += f64::from(c.1);
        }
        self.total = total;
        None
    }

    /// Draws a candidate by weight: its index, the first whose running sum
    /// reaches the uniform draw times the total, walking the candidates in
    /// the order llama.cpp's draw walks them (theirs when sorted, most
    /// likely first for mirostat, which sorts them as far as the walk
    /// goes).
    fn draw(&mut self) -> usize {
        if self.params.mirostat != Mirostat::Off && self.candidates.len() == 1 {
            // Mirostat draws as std::discrete_distribution does, which
            // takes nothing from the generator for one candidate.
            return 0;
        }
        let target = self.draw_rng.next_f64() * self.total;
        let sort = !self.sorted && self.params.mirostat != Mirostat::Off;
        walk(&mut self.candidates, target, sort)
    }

    fn apply_bias(&mut self) {
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = self.logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        for &id in &self.banned {
            if let Some(l) = self.logits.get_mut(id as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    /// Counts the tokens of the penalties' window into `recent`, sorted by
    /// id; `false` when no penalty applies.
    fn count_recent(&mut self, history: &[u32]) -> bool {
        let p = &self.params;
        let penalised =
            p.repeat_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0;
        if !penalised || p.penalty_last_n == 0 {
            return false;
        }
        let window = &history[history.len().saturating_sub(p.penalty_last_n)..];
        self.recent.clear();
        for &t in window {
            match self.recent.iter_mut().find(|(id, _)| *id == t) {
                Some((_, n)) => *n += 1,
                None => self.recent.push((t, 1)),
            }
        }
        self.recent.sort_unstable();
        true
    }

    fn apply_penalties(&mut self, history: &[u32]) {
        if !self.count_recent(history) {
            return;
        }
        for &(id, count) in &self.recent {
            if let Some(l) = self.logits.get_mut(id as usize) {
                *l = penalised(*l, count, &self.params);
            }
        }
    }

    /// The penalties on the candidates only (after samplers that narrowed
    /// them).
    fn penalise_candidates(&mut self, history: &[u32]) {
        if !self.count_recent(history) {
            return;
        }
        for c in &mut self.candidates {
            if let Ok(i) = self.recent.binary_search_by_key(&c.0, |r| r.0) {
                c.1 = penalised(c.1, self.recent[i].1, &self.params);
            }
        }
    }
}

/// The index of the first of the weighed candidates whose running sum
/// reaches `target`, in their order, or (`sort`) most likely first: then
/// they are sorted only as far as the walk goes, 64 first, then four times
/// as many at each stretch.
fn walk(c: &mut [(u32, f32)], target: f64, sort: bool) -> usize {
    let len = c.len();
    let mut cum = 0f64;
    let mut start = 0;
    let mut chunk = if sort { 64 } else { len };
    while start < len {
        let end = (start + chunk).min(len);
        if sort {
            let rest = &mut c[start..];
            if end < len {
                rest.select_nth_unstable_by(end - start - 1, by_logit);
            }
            rest[..end - start].sort_unstable_by(by_logit);
        }
        for (i, w) in c[start..end].iter().enumerate() {
            cum += f64::from(w.1);
            if cum >= target {
                return start + i;
            }
        }
        start = end;
        chunk = chunk.saturating_mul(4);
    }
    len - 1
}

/// A logit after the repetition, frequency and presence penalties for a
/// token seen `count` times.
fn penalised(l: f32, count: u32, p: &SamplingParams) -> f32 {
    let l = if l > 0.0 {
        l / p.repeat_penalty
    } else {
        l * p.repeat_penalty
    };
    l - (count as f32 * p.frequency_penalty + p.presence_penalty)
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
            logits in proptest::collection::vec(prop_oneof![
                8 => -50f32..50.0,
                1 => Just(f32::NEG_INFINITY),
                1 => Just(3.0f32),
            ], 1..200),
            temp in 0f32..3.0, top_k in 0usize..50, top_p in 0f32..=1.0, min_p in 0f32..=1.0, seed: u64,
            min_keep in 0usize..5, typical_p in 0f32..=1.0, top_n_sigma in -1f32..4.0,
            xtc_probability in 0f32..=1.0, xtc_threshold in 0f32..0.6, dynatemp_range in 0f32..2.0,
            dry_multiplier in 0f32..2.0, mirostat in 0u32..3, history in proptest::collection::vec(0u32..8, 0..40),
        ) {
            let p = SamplingParams {
                temperature: temp, top_k, top_p, min_p, seed, min_keep, typical_p, top_n_sigma,
                xtc_probability, xtc_threshold, dynatemp_range, dry_multiplier,
                dry_sequence_breakers: Vec::new(),
                mirostat: Mirostat::from_version(mirostat).unwrap(),
                ..Default::default()
            };
            let mut s = Sampler::new(p).unwrap();
            for _ in 0..3 {
                let t = s.sample(&logits, &history);
                prop_assert!((t as usize) < logits.len());
            }
            let d = s.distribution(&logits, &history).to_vec();
            let total: f32 = d.iter().map(|t| t.1).sum();
            prop_assert!(!d.is_empty() && (total - 1.0).abs() < 1e-3, "{:?}", d);
        }
    }

    proptest! {
        /// A top-k that runs first collects only the tokens that can be
        /// among the k; it leaves what collecting every token leaves (here
        /// a top-p of 1 before it, a no-op, makes the sampler collect all).
        #[test]
        fn top_k_first_leaves_what_collecting_all_leaves(
            logits in proptest::collection::vec(prop_oneof![
                30 => -60i8..60,
                1 => Just(i8::MIN),
                1 => Just(i8::MAX),
                1 => Just(100i8),
            ], 1..300),
            top_k in 1usize..90,
        ) {
            // Small integers (ties among them); MIN, MAX and 100 for -inf,
            // NaN and +inf.
            let logits: Vec<f32> = logits.iter().map(|&v| match v {
                i8::MIN => f32::NEG_INFINITY,
                i8::MAX => f32::NAN,
                100 => f32::INFINITY,
                v => f32::from(v) / 4.0,
            }).collect();
            let p = SamplingParams { top_k, temperature: 1.0, ..Default::default() };
            let mut all = p.samplers.clone();
            all.insert(2, SamplerKind::TopP);
            let slow = SamplingParams { top_p: 1.0, samplers: all, ..p.clone() };
            let mut fast = Sampler::new(SamplingParams { top_p: 1.0, ..p }).unwrap();
            let mut slow = Sampler::new(slow).unwrap();
            let bits = |d: &[(u32, f32)]| d.iter().map(|t| (t.0, t.1.to_bits())).collect::<Vec<_>>();
            let a = bits(fast.distribution(&logits, &[]));
            let b = bits(slow.distribution(&logits, &[]));
            prop_assert_eq!(a, b);
        }
    }

    proptest! {
        #[test]
        fn walking_partly_sorted_finds_what_walking_sorted_finds(
            weights in proptest::collection::vec(0f32..1.0, 1..3000),
            u in 0f64..1.0,
        ) {
            let mut c: Vec<(u32, f32)> =
                weights.iter().enumerate().map(|(i, &w)| (i as u32, w)).collect();
            let total: f64 = c.iter().map(|c| f64::from(c.1)).sum();
            let mut sorted = c.clone();
            sorted.sort_unstable_by(by_logit);
            let at = walk(&mut sorted, u * total, false);
            let want = sorted[at].0;
            let i = walk(&mut c, u * total, true);
            // Sums in another order can round the other way at an edge.
            let edge = sorted.iter().scan(0f64, |s, w| { *s += f64::from(w.1); Some(*s) })
                .any(|s| (s - u * total).abs() < 1e-9 * total);
            prop_assert!(c[i].0 == want || edge);
        }

        #[test]
        fn top_p_on_unsorted_candidates_keeps_what_it_keeps_on_sorted(
            unit in proptest::collection::vec(-1f32..1.0, 1..4000),
            scale in proptest::sample::select(vec![0.1f32, 3.0, 20.0]),
            top_p in 0.05f32..0.999,
            min_keep in 0usize..4,
        ) {
            // Flat to peaked: the 256 most likely hold from most of the
            // probability to far too little.
            let logits: Vec<f32> = unit.iter().map(|l| l * scale).collect();
            let base = SamplingParams {
                top_k: 0, top_p, min_p: 0.0, temperature: 1.0, min_keep,
                samplers: vec![SamplerKind::TopP], ..Default::default()
            };
            // A top-k as large as the vocabulary sorts it all first.
            let sorting = SamplingParams {
                top_k: logits.len(),
                samplers: vec![SamplerKind::TopK, SamplerKind::TopP],
                ..base.clone()
            };
            let mut a = Sampler::new(base).unwrap();
            let mut b = Sampler::new(sorting).unwrap();
            let a = a.distribution(&logits, &[]).to_vec();
            let b = b.distribution(&logits, &[]).to_vec();
            prop_assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                prop_assert_eq!(x.0, y.0);
                prop_assert!((x.1 - y.1).abs() <= 1e-6);
            }
        }
    }

    /// What the last draw drew from is what `distribution` gives for the
    /// same step, for the chain's samplers, mirostat and greedy.
    #[test]
    fn the_last_distribution_is_the_steps() {
        let logits: Vec<f32> = (0..500).map(|i| ((i * 37) % 101) as f32 / 9.0).collect();
        for params in [
            SamplingParams::default(),
            SamplingParams::greedy(),
            SamplingParams {
                top_k: 0,
                top_p: 0.9,
                typical_p: 0.95,
                ..Default::default()
            },
            SamplingParams {
                mirostat: Mirostat::V2,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(params).unwrap();
            assert!(s.last_distribution().is_empty());
            let mut twin = s.clone();
            let token = s.sample(&logits, &[]);
            let last = s.last_distribution();
            let mut want = twin.distribution(&logits, &[]).to_vec();
            want.sort_unstable_by(by_logit);
            assert_eq!(last, want);
            assert!(last.iter().any(|t| t.0 == token));
            let sum: f32 = last.iter().map(|t| t.1).sum();
            assert!((sum - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn mirostat_lowers_surprise_by_its_target() {
        // Zipf-like logits over 2000 tokens. Surprise is measured under the
        // whole distribution: mirostat's lower target gives less of it, and
        // either gives less than drawing from every token.
        let logits: Vec<f32> = (0..2000).map(|i| -1.1 * ((i + 1) as f32).ln()).collect();
        let all: Vec<(u32, f32)> = logits.iter().map(|&l| (0, l)).collect();
        let (max, sum) = normaliser(&all);
        let surprise = |t: u32| -((f64::from((logits[t as usize] - max).exp()) / sum).log2());
        let mean = |mirostat, tau| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                mirostat,
                mirostat_tau: tau,
                ..Default::default()
            })
            .unwrap();
            let draws: Vec<f64> = (0..3000)
                .map(|_| surprise(s.sample(&logits, &[])))
                .collect();
            draws[1000..].iter().sum::<f64>() / 2000.0
        };
        let plain = mean(Mirostat::Off, 3.0);
        for m in [Mirostat::V1, Mirostat::V2] {
            let (low, high) = (mean(m, 3.0), mean(m, 5.0));
            assert!(
                low + 0.5 < high && high + 0.5 < plain,
                "{m:?}: {low} {high} {plain}"
            );
        }
    }

    #[test]
    fn greedy_leaves_xtc_its_say_and_dry_needs_the_vocabulary() {
        let logits = [3.0, 2.9, 0.0, -1.0];
        // Greedy XTC drops the top choice when another is above its
        // threshold.
        let mut xtc = Sampler::new(SamplingParams {
            xtc_probability: 1.0,
            xtc_threshold: 0.1,
            ..SamplingParams::greedy()
        })
        .unwrap();
        assert_eq!(xtc.sample(&logits, &[]), 1);
        let mut plain = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(plain.sample(&logits, &[]), 0);
        // DRY needs the vocabulary for its breakers, not without them.
        let dry = SamplingParams {
            dry_multiplier: 0.8,
            ..Default::default()
        };
        assert!(Sampler::new(dry.clone()).is_err());
        assert!(Sampler::new(SamplingParams {
            dry_sequence_breakers: Vec::new(),
            ..dry
        })
        .is_ok());
    }
}
