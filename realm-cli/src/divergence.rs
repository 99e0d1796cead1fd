//! `realm perplexity --kl-divergence BASE`: how far a model's predictions
//! are from a base model's over the same scored tokens, summarised as
//! llama.cpp's `llama-perplexity --kl-divergence` summarises them (the
//! same labels, so that the two compare line by line).

use std::fmt::Write;

use realm_models::Divergence;

/// Sums over scored tokens, and every token's KL divergence and
/// probability difference (for the percentiles).
#[derive(Debug, Default)]
pub struct Stats {
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    same_top: usize,
    klds: Vec<f64>,
    p_diffs: Vec<f64>,
}

/// Mean and its standard error (none below 11 values, as llama.cpp).
fn mean_and_uncertainty(sum: f64, sum2: f64, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 0.0);
    }
    let n_f = n as f64;
    let mean = sum / n_f;
    let var = sum2 / n_f - mean * mean;
    let err = if var > 0.0 && n > 10 {
        (var / (n_f - 1.0)).sqrt()
    } else {
        0.0
    };
    (mean, err)
}

/// The covariance of two means (none below 10 values).
fn covariance(sum_a: f64, sum_b: f64, sum_ab: f64, n: usize) -> f64 {
    if n < 10 {
        return 0.0;
    }
    let n_f = n as f64;
    (sum_ab / n_f - (sum_a / n_f) * (sum_b / n_f)) / (n_f - 1.0)
}

/// A sorted sample's value at `fraction` of the way, interpolated.
fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
        return 0.0;
    };
    if fraction <= 0.0 {
        return first;
    }
    if fraction >= 1.0 {
        return last;
    }
    let p = fraction * (sorted.len() - 1) as f64;
    let i = p as usize;
    let t = p - i as f64;
    (1.0 - t) * sorted[i] + t * sorted[(i + 1).min(sorted.len() - 1)]
}

impl Stats {
    pub fn add(&mut self, d: &Divergence) {
        self.sum_nll += d.nll;
        self.sum_nll2 += d.nll * d.nll;
        self.sum_nll_base += d.nll_base;
        self.sum_nll_base2 += d.nll_base * d.nll_base;
        self.sum_nll_nll_base += d.nll * d.nll_base;
        self.sum_kld += d.kld;
        self.sum_kld2 += d.kld * d.kld;
        self.sum_p_diff += d.p_diff;
        let p2 = d.p_diff * d.p_diff;
        self.sum_p_diff2 += p2;
        self.sum_p_diff4 += p2 * p2;
        self.same_top += usize::from(d.same_top);
        self.klds.push(d.kld);
        self.p_diffs.push(d.p_diff);
    }

    fn count(&self) -> usize {
        self.klds.len()
    }

    /// ln PPL of the model and of the base, with uncertainties, and their
    /// covariance.
    fn log_ppls(&self) -> ((f64, f64), (f64, f64), f64) {
        let n = self.count();
        (
            mean_and_uncertainty(self.sum_nll, self.sum_nll2, n),
            mean_and_uncertainty(self.sum_nll_base, self.sum_nll_base2, n),
            covariance(self.sum_nll, self.sum_nll_base, self.sum_nll_nll_base, n),
        )
    }

    /// The root mean square of the probability differences, with its
    /// uncertainty.
    fn rms_p_diff(&self) -> (f64, f64) {
        let (mse, unc) = mean_and_uncertainty(self.sum_p_diff2, self.sum_p_diff4, self.count());
        let rms = mse.sqrt();
        (rms, if rms > 0.0 { 0.5 / rms * unc } else { 0.0 })
    }

    fn same_top(&self) -> (f64, f64) {
        let n = self.count();
        let p = self.same_top as f64 / n.max(1) as f64;
        (p, (p * (1.0 - p) / (n.max(2) - 1) as f64).sqrt())
    }

    /// The header of the chunk lines.
    pub fn header() -> &'static str {
        "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              \u{394}p RMS            Same top p"
    }

    /// The line after chunk `chunk`: running figures.
    pub fn line(&self, chunk: usize) -> String {
        let ((lp, lp_unc), (lb, lb_unc), cov) = self.log_ppls();
        let ppl = lp.exp();
        let ratio_unc = (lp_unc * lp_unc + lb_unc * lb_unc - 2.0 * cov)
            .max(0.0)
            .sqrt();
        let (kld, kld_unc) = mean_and_uncertainty(self.sum_kld, self.sum_kld2, self.count());
        let (rms, rms_unc) = self.rms_p_diff();
        let (top, top_unc) = self.same_top();
        format!(
            "{chunk:4}    {ppl:9.4} \u{b1} {:9.4}    {:10.5} \u{b1} {ratio_unc:10.5}    {kld:10.5} \u{b1} {kld_unc:10.5}    {:6.3} \u{b1} {:6.3} %    {:6.3} \u{b1} {:6.3} %",
            ppl * lp_unc,
            lp - lb,
            100.0 * rms,
            100.0 * rms_unc,
            100.0 * top,
            100.0 * top_unc
        )
    }

    /// The summary llama-perplexity prints (needs 100 scored tokens).
    pub fn summary(&self) -> Option<String> {
        let n = self.count();
        if n < 100 {
            return None;
        }
        let mut klds = self.klds.clone();
        let mut p_diffs = self.p_diffs.clone();
        klds.sort_by(f64::total_cmp);
        p_diffs.sort_by(f64::total_cmp);
        let median = |v: &[f64]| {
            if v.len().is_multiple_of(2) {
                0.5 * (v[v.len() / 2] + v[v.len() / 2 - 1])
            } else {
                v[v.len() / 2]
            }
        };
        let ((lp, lp_unc), (lb, lb_unc), cov) = self.log_ppls();
        let (ppl, ppl_unc) = (lp.exp(), lp.exp() * lp_unc);
        let (base, base_unc) = (lb.exp(), lb.exp() * lb_unc);
        let ratio_unc = (lp_unc * lp_unc + lb_unc * lb_unc - 2.0 * cov)
            .max(0.0)
            .sqrt();
        let diff_unc = (ppl_unc * ppl_unc + base_unc * base_unc - 2.0 * ppl * base * cov)
            .max(0.0)
            .sqrt();
        let mut s = String::new();
        let _ = writeln!(s, "====== Perplexity statistics ======");
        let _ = writeln!(
            s,
            "Mean PPL(Q)                   : {ppl:10.6} \u{b1} {ppl_unc:10.6}"
        );
        let _ = writeln!(
            s,
            "Mean PPL(base)                : {base:10.6} \u{b1} {base_unc:10.6}"
        );
        let _ = writeln!(
            s,
            "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%",
            100.0 * cov / (lp_unc * lb_unc)
        );
        let _ = writeln!(
            s,
            "Mean ln(PPL(Q)/PPL(base))     : {:10.6} \u{b1} {ratio_unc:10.6}",
            lp - lb
        );
        let _ = writeln!(
            s,
            "Mean PPL(Q)/PPL(base)         : {:10.6} \u{b1} {:10.6}",
            (lp - lb).exp(),
            (lp - lb).exp() * ratio_unc
        );
        let _ = writeln!(
            s,
            "Mean PPL(Q)-PPL(base)         : {:10.6} \u{b1} {diff_unc:10.6}",
            ppl - base
        );
        let _ = writeln!(s, "\n====== KL divergence statistics ======");
        let (kld, kld_unc) = mean_and_uncertainty(self.sum_kld, self.sum_kld2, n);
        let _ = writeln!(s, "Mean    KLD: {kld:10.6} \u{b1} {kld_unc:10.6}");
        let _ = writeln!(s, "Maximum KLD: {:10.6}", percentile(&klds, 1.0));
        for (label, f) in [
            ("99.9%", 0.999),
            ("99.0%", 0.99),
            ("95.0%", 0.95),
            ("90.0%", 0.9),
        ] {
            let _ = writeln!(s, "{label}   KLD: {:10.6}", percentile(&klds, f));
        }
        let _ = writeln!(s, "Median  KLD: {:10.6}", median(&klds));
        for (label, f) in [
            ("10.0%", 0.1),
            (" 5.0%", 0.05),
            (" 1.0%", 0.01),
            (" 0.1%", 0.001),
        ] {
            let _ = writeln!(s, "{label}   KLD: {:10.6}", percentile(&klds, f));
        }
        let _ = writeln!(s, "Minimum KLD: {:10.6}", percentile(&klds, 0.0));
        let _ = writeln!(s, "\n====== Token probability statistics ======");
        let (pd, pd_unc) = mean_and_uncertainty(self.sum_p_diff, self.sum_p_diff2, n);
        let _ = writeln!(
            s,
            "Mean    \u{394}p: {:6.3} \u{b1} {:5.3} %",
            100.0 * pd,
            100.0 * pd_unc
        );
        let _ = writeln!(
            s,
            "Maximum \u{394}p: {:6.3}%",
            100.0 * percentile(&p_diffs, 1.0)
        );
        for (label, f) in [
            ("99.9%", 0.999),
            ("99.0%", 0.99),
            ("95.0%", 0.95),
            ("90.0%", 0.9),
            ("75.0%", 0.75),
        ] {
            let _ = writeln!(
                s,
                "{label}   \u{394}p: {:6.3}%",
                100.0 * percentile(&p_diffs, f)
            );
        }
        let _ = writeln!(s, "Median  \u{394}p: {:6.3}%", 100.0 * median(&p_diffs));
        for (label, f) in [
            ("25.0%", 0.25),
            ("10.0%", 0.1),
            (" 5.0%", 0.05),
            (" 1.0%", 0.01),
            (" 0.1%", 0.001),
        ] {
            let _ = writeln!(
                s,
                "{label}   \u{394}p: {:6.3}%",
                100.0 * percentile(&p_diffs, f)
            );
        }
        let _ = writeln!(
            s,
            "Minimum \u{394}p: {:6.3}%",
            100.0 * percentile(&p_diffs, 0.0)
        );
        let (rms, rms_unc) = self.rms_p_diff();
        let _ = writeln!(
            s,
            "RMS \u{394}p    : {:6.3} \u{b1} {:5.3} %",
            100.0 * rms,
            100.0 * rms_unc
        );
        let (top, top_unc) = self.same_top();
        let _ = writeln!(
            s,
            "Same top p: {:6.3} \u{b1} {:5.3} %",
            100.0 * top,
            100.0 * top_unc
        );
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_and_identical_models_agree() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), 2.5);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 1.0), 4.0);
        let mut s = Stats::default();
        for i in 0..200 {
            let nll = 1.0 + f64::from(i % 7);
            s.add(&Divergence {
                kld: 0.0,
                nll,
                nll_base: nll,
                same_top: true,
                p_diff: 0.0,
            });
        }
        let summary = s.summary().unwrap();
        assert!(summary.contains("Mean    KLD:   0.000000"), "{summary}");
        assert!(summary.contains("Same top p: 100.000"), "{summary}");
        assert!(
            summary.contains("Mean ln(PPL(Q)/PPL(base))     :   0.000000"),
            "{summary}"
        );
        assert!(
            summary.contains("Cor(ln(PPL(Q)), ln(PPL(base))): 100.00%"),
            "{summary}"
        );
    }
}
