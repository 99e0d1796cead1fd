//! `GET /metrics` (with `--metrics`): the engine's counters in
//! Prometheus's text format, as llama.cpp's server offers its own.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters the engine (or the tenants) add to and gauges they set.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Prompt tokens run (not those a kept cache held).
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens a kept cache held, which did not run.
    pub prompt_tokens_cached: AtomicU64,
    /// Microseconds spent running prompts.
    pub prompt_micros: AtomicU64,
    /// Tokens generated.
    pub tokens_predicted: AtomicU64,
    /// Microseconds spent in decode steps.
    pub decode_micros: AtomicU64,
    /// Decode steps (a batched step counts once).
    pub decode_steps: AtomicU64,
    /// Sequences that ended (finished, failed or dropped for a gone client
    /// do not count: only those that answered in full).
    pub sequences_done: AtomicU64,
    /// Embeddings computed.
    pub embeddings: AtomicU64,
    /// Sequences running now.
    pub running: AtomicU64,
    /// Sequences waiting for a place now.
    pub waiting: AtomicU64,
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Sets a gauge.
pub fn set(gauge: &AtomicU64, n: u64) {
    gauge.store(n, Ordering::Relaxed);
}

impl Metrics {
    /// The exposition: `# HELP`, `# TYPE` and the value of each metric.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = |a: &AtomicU64| get(a) as f64 / 1e6;
        let rate = |n: &AtomicU64, t: &AtomicU64| {
            let s = secs(t);
            if s > 0.0 {
                get(n) as f64 / s
            } else {
                0.0
            }
        };
        let rows: [(&str, &str, &str, f64); 12] = [
            (
                "prompt_tokens_total",
                "counter",
                "Prompt tokens run.",
                get(&self.prompt_tokens) as f64,
            ),
            (
                "prompt_tokens_cached_total",
                "counter",
                "Prompt tokens a kept KV cache held, not run.",
                get(&self.prompt_tokens_cached) as f64,
            ),
            (
                "prompt_seconds_total",
                "counter",
                "Time spent running prompts.",
                secs(&self.prompt_micros),
            ),
            (
                "tokens_predicted_total",
                "counter",
                "Tokens generated.",
                get(&self.tokens_predicted) as f64,
            ),
            (
                "tokens_predicted_seconds_total",
                "counter",
                "Time spent in decode steps.",
                secs(&self.decode_micros),
            ),
            (
                "decode_steps_total",
                "counter",
                "Decode steps (a batched step counts once).",
                get(&self.decode_steps) as f64,
            ),
            (
                "sequences_done_total",
                "counter",
                "Sequences answered in full.",
                get(&self.sequences_done) as f64,
            ),
            (
                "embeddings_total",
                "counter",
                "Embeddings computed.",
                get(&self.embeddings) as f64,
            ),
            (
                "prompt_tokens_seconds",
                "gauge",
                "Prompt tokens run per second of prompt time, so far.",
                rate(&self.prompt_tokens, &self.prompt_micros),
            ),
            (
                "predicted_tokens_seconds",
                "gauge",
                "Tokens generated per second of decode time, so far.",
                rate(&self.tokens_predicted, &self.decode_micros),
            ),
            (
                "requests_processing",
                "gauge",
                "Sequences running.",
                get(&self.running) as f64,
            ),
            (
                "requests_waiting",
                "gauge",
                "Sequences waiting for a place.",
                get(&self.waiting) as f64,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            out.push_str(&format!(
                "# HELP realm:{name} {help}\n# TYPE realm:{name} {kind}\nrealm:{name} {value}\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_metric_once() {
        let m = Metrics::default();
        add(&m.tokens_predicted, 30);
        add(&m.decode_micros, 2_000_000);
        set(&m.running, 2);
        let text = m.render();
        assert!(text.contains("realm:tokens_predicted_total 30\n"), "{text}");
        assert!(
            text.contains("realm:predicted_tokens_seconds 15\n"),
            "{text}"
        );
        assert!(text.contains("realm:requests_processing 2\n"), "{text}");
        assert!(
            text.contains("# TYPE realm:decode_steps_total counter\n"),
            "{text}"
        );
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 12);
    }
}
