//! Log-probabilities of tokens under a row of logits: what perplexity,
//! scoring and an API's `logprobs` report.
//!
//! ```
//! use realm_models::LogProbs;
//! let lp = LogProbs::new(&[1.0, 3.0, 2.0]);
//! let top = lp.top(2);
//! assert_eq!(top.iter().map(|&(t, _)| t).collect::<Vec<_>>(), [1, 2]);
//! assert!((top[0].1 - top[1].1 - 1.0).abs() < 1e-12);
//! let total: f64 = (0..3).map(|t| lp.of(t).unwrap().exp()).sum();
//! assert!((total - 1.0).abs() < 1e-6);
//! ```

/// A row of logits with its normaliser: `log p(t) = logits[t] - norm`,
/// `norm` being the log of the sum of every token's `exp(logit)`. The sum
/// is taken in f64 of f32 exponentials, shifted by the largest logit, as
/// llama.cpp's perplexity takes it.
#[derive(Debug, Clone, Copy)]
pub struct LogProbs<'l> {
    logits: &'l [f32],
    norm: f64,
}

impl<'l> LogProbs<'l> {
    /// Normalises `logits` (one pass for the largest, one for the sum).
    pub fn new(logits: &'l [f32]) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
        Self {
            logits,
            norm: f64::from(max) + sum.ln(),
        }
    }

    /// The log-probability of `token`, or `None` when the row has no such
    /// token.
    pub fn of(&self, token: u32) -> Option<f64> {
        let l = *self.logits.get(token as usize)?;
        Some(f64::from(l) - self.norm)
    }

    /// The `k` most likely tokens with their log-probabilities, most likely
    /// first (of equals, the lower id first).
    pub fn top(&self, k: usize) -> Vec<(u32, f64)> {
        let k = k.min(self.logits.len());
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        if k == 0 {
            return Vec::new();
        }
        for (t, &l) in self.logits.iter().enumerate() {
            // NaN never ranks.
            let ranks = best.len() < k || best.last().is_some_and(|&(_, worst)| l > worst);
            if !ranks || l.is_nan() {
                continue;
            }
            let at = best.partition_point(|&(_, b)| b >= l);
            best.insert(at, (t as u32, l));
            best.truncate(k);
        }
        best.into_iter()
            .map(|(t, l)| (t, f64::from(l) - self.norm))
            .collect()
    }
}

/// How a model's next-token distribution compares with a base model's at
/// one position (what llama.cpp's `--kl-divergence` measures).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Divergence {
    /// KL divergence of the model from the base: the sum over tokens of
    /// `p_base (log p_base - log p)`, tokens whose base log-probability is
    /// below -16 left out, as llama.cpp leaves them.
    pub kld: f64,
    /// Negative log-likelihood of the scored token under the model.
    pub nll: f64,
    /// And under the base.
    pub nll_base: f64,
    /// Whether both put the same token first.
    pub same_top: bool,
    /// The scored token's probability under the model less under the base.
    pub p_diff: f64,
}

impl LogProbs<'_> {
    /// This distribution (the model's) against `base`'s, scoring `token`;
    /// `None` when either has no such token or their vocabularies differ.
    ///
    /// ```
    /// use realm_models::LogProbs;
    /// let (base, model) = ([2.0f32, 1.0, 0.0], [1.0f32, 2.0, 0.0]);
    /// let d = LogProbs::new(&model).divergence(&LogProbs::new(&base), 0).unwrap();
    /// assert!(d.kld > 0.0 && !d.same_top && d.p_diff < 0.0);
    /// let same = LogProbs::new(&base).divergence(&LogProbs::new(&base), 0).unwrap();
    /// assert!(same.kld.abs() < 1e-9 && same.same_top && same.p_diff == 0.0);
    /// ```
    pub fn divergence(&self, base: &LogProbs<'_>, token: u32) -> Option<Divergence> {
        if self.logits.len() != base.logits.len() {
            return None;
        }
        let (nll, nll_base) = (-self.of(token)?, -base.of(token)?);
        let mut kld = 0.0;
        for (&q, &b) in self.logits.iter().zip(base.logits) {
            let lp_base = f64::from(b) - base.norm;
            if lp_base > -16.0 {
                kld += lp_base.exp() * (lp_base - (f64::from(q) - self.norm));
            }
        }
        let top = |lp: &LogProbs<'_>| lp.top(1).first().map(|&(t, _)| t);
        Some(Divergence {
            kld,
            nll,
            nll_base,
            same_top: top(self) == top(base),
            p_diff: (-nll).exp() - (-nll_base).exp(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        let lp = LogProbs::new(&[0.0, 0.0]);
        assert!((lp.of(0).unwrap() - 0.5f64.ln()).abs() < 1e-12);
        assert_eq!(lp.of(2), None);
        assert_eq!(lp.top(5).len(), 2);
        assert!(lp.top(0).is_empty());
        // Ties keep the lower id first.
        assert_eq!(lp.top(1)[0].0, 0);
        // Huge logits do not overflow: only differences matter.
        let big = LogProbs::new(&[1000.0, 999.0]);
        assert!((big.of(0).unwrap() - big.of(1).unwrap() - 1.0).abs() < 1e-9);
        assert!(big.of(0).unwrap() < 0.0);
    }

    proptest! {
        #[test]
        fn probabilities_sum_to_one_and_top_is_sorted(
            logits in prop::collection::vec(-30.0f32..30.0, 1..300),
            k in 0usize..40,
        ) {
            let lp = LogProbs::new(&logits);
            let total: f64 = (0..logits.len() as u32).map(|t| lp.of(t).unwrap().exp()).sum();
            prop_assert!((total - 1.0).abs() < 1e-6, "{total}");
            let top = lp.top(k);
            prop_assert_eq!(top.len(), k.min(logits.len()));
            for w in top.windows(2) {
                prop_assert!(w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0));
            }
            // Nothing outside the top beats its last.
            if let Some(&(_, last)) = top.last() {
                let inside: Vec<u32> = top.iter().map(|&(t, _)| t).collect();
                for t in 0..logits.len() as u32 {
                    if !inside.contains(&t) {
                        prop_assert!(lp.of(t).unwrap() <= last);
                    }
                }
            }
            for &(t, v) in &top {
                prop_assert_eq!(Some(v), lp.of(t));
            }
        }
    }
}
