//! llama.cpp's own completion API, `POST /completion` (and `/completions`,
//! which llama.cpp's server routes to it too; `/v1/completions` is
//! OpenAI's): `n_predict` tokens after `prompt`, the answer in `content`
//! with `stop_type`, `stopping_word`, token counts, the generation settings
//! and timings, in llama.cpp's field names. Streamed, it is server-sent
//! events of `content` pieces, then one per prompt with `"stop": true` and
//! the rest. A request of several prompts answers with an array, in order.
//! `n_probs` adds each generated token's log-probability and its likeliest
//! alternatives (`completion_probabilities`, the model's probabilities
//! before sampling, as llama.cpp gives them by default; with
//! `post_sampling_probs`, the probabilities the samplers left, as `prob` and
//! `top_probs`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use realm_models::StopReason;

use super::body::Body;
use super::engine::{Event, Input};
use super::http::{data, error, number, stopped, submit, App};
use super::logprobs::{llama_cpp_probabilities, TokenLogprob};
use super::openai::{ApiError, Options, Prompt, PromptField, MAX_TOP_LOGPROBS};
use super::props;

/// A `/completion` request: llama.cpp's fields; the sampling ones are the
/// other endpoints' (`Options`).
#[derive(Debug, Clone, Deserialize)]
pub struct NativeRequest {
    pub prompt: PromptField,
    /// Most tokens to generate; -1 (the default): until the model ends or
    /// the context is full.
    pub n_predict: Option<i64>,
    /// Each token's log-probability with this many alternatives (0: none).
    pub n_probs: Option<u64>,
    pub post_sampling_probs: Option<bool>,
    pub return_tokens: Option<bool>,
    #[serde(flatten)]
    pub options: Options,
}

/// One prompt's answer, as its events arrive.
#[derive(Debug)]
struct Answer {
    prompt: String,
    content: String,
    evaluated: usize,
    cached: usize,
    /// When it started, when its first text came, and how it ended.
    started: Instant,
    first: Option<Instant>,
    done: Option<(StopReason, usize, Option<String>, Instant)>,
    /// With `n_probs`: the generated tokens' log-probabilities.
    probs: Option<Vec<TokenLogprob>>,
}

/// What every answer shares.
struct Shared {
    model: String,
    settings: Value,
    /// `post_sampling_probs`: the samplers' probabilities.
    post_sampling: bool,
}

impl Answer {
    /// The final object: `content` is the whole text, or "" when streamed.
    fn whole(&self, index: usize, shared: &Shared, streamed: bool) -> Value {
        let mut v = self.fields(index, shared, streamed);
        if let Some(probs) = self.probs.as_ref().filter(|_| !streamed) {
            v["completion_probabilities"] = llama_cpp_probabilities(probs, shared.post_sampling);
        }
        v
    }

    fn fields(&self, index: usize, shared: &Shared, streamed: bool) -> Value {
        let (reason, predicted, word, end) =
            self.done
                .clone()
                .unwrap_or((StopReason::Cancelled, 0, None, Instant::now()));
        let first = self.first.unwrap_or(end);
        let prompt_ms = first.duration_since(self.started).as_secs_f64() * 1e3;
        let predicted_ms = end.duration_since(first).as_secs_f64() * 1e3;
        let rate = |n: usize, ms: f64| if ms > 0.0 { n as f64 * 1e3 / ms } else { 0.0 };
        let per = |n: usize, ms: f64| if n > 0 { ms / n as f64 } else { 0.0 };
        let prompt_n = self.evaluated.saturating_sub(self.cached);
        json!({
            "index": index,
            "content": if streamed { "" } else { self.content.as_str() },
            "tokens": [],
            "id_slot": -1,
            "stop": true,
            "model": shared.model,
            "tokens_predicted": predicted,
            "tokens_evaluated": self.evaluated,
            "generation_settings": shared.settings,
            "prompt": self.prompt,
            "has_new_line": self.content.contains('\n'),
            "stop_type": match reason {
                StopReason::EndOfGeneration => "eos",
                StopReason::StopString => "word",
                StopReason::MaxTokens | StopReason::ContextFull => "limit",
                StopReason::Cancelled => "none",
            },
            "stopping_word": word.unwrap_or_default(),
            "tokens_cached": self.cached,
            "timings": {
                "prompt_n": prompt_n,
                "prompt_ms": prompt_ms,
                "prompt_per_token_ms": per(prompt_n, prompt_ms),
                "prompt_per_second": rate(prompt_n, prompt_ms),
                "predicted_n": predicted,
                "predicted_ms": predicted_ms,
                "predicted_per_token_ms": per(predicted, predicted_ms),
                "predicted_per_second": rate(predicted, predicted_ms),
            },
        })
    }

    /// Takes in one of its events: a piece of text and its tokens'
    /// log-probabilities, `None` at the end, `Err` for a failure.
    fn on(&mut self, e: Event) -> Result<Option<(String, Vec<TokenLogprob>)>, ApiError> {
        match e {
            Event::Text { text, logprobs } => {
                self.first.get_or_insert_with(Instant::now);
                self.content.push_str(&text);
                if let Some(p) = &mut self.probs {
                    p.extend(logprobs.iter().cloned());
                }
                Ok(Some((text, logprobs)))
            }
            Event::Done {
                reason,
                completion_tokens,
                stop_word,
            } => {
                self.done = Some((reason, completion_tokens, stop_word, Instant::now()));
                Ok(None)
            }
            Event::Failed(e) => Err(e),
            Event::Started { .. } | Event::Embedding(_) => Err(stopped()),
        }
    }
}

/// `POST /completion`.
pub async fn completion(State(app): State<Arc<App>>, Body(req): Body<NativeRequest>) -> Response {
    match start(&app, req).await {
        Ok((answers, inbox, shared, true)) => stream(answers, inbox, shared),
        Ok((answers, inbox, shared, false)) => whole(answers, inbox, shared).await,
        Err(e) => error(e),
    }
}

type Inbox = UnboundedReceiver<(usize, Event)>;

/// Checks the request, queues its prompts and waits until each has started:
/// the answers so far, the events to come, and whether to stream.
async fn start(
    app: &App,
    req: NativeRequest,
) -> Result<(Vec<Answer>, Inbox, Shared, bool), ApiError> {
    // `logprobs` stands for `n_probs` when that is absent, as in llama.cpp.
    let n_probs = match (req.n_probs, &req.options.logprobs) {
        (Some(n), _) => n,
        (None, None) => 0,
        (None, Some(v)) => v.as_u64().ok_or_else(|| {
            ApiError::invalid(
                Some("logprobs"),
                "logprobs is a number of alternatives here",
            )
        })?,
    };
    if n_probs > MAX_TOP_LOGPROBS as u64 {
        return Err(ApiError::invalid(
            Some("n_probs"),
            format!("n_probs is at most {MAX_TOP_LOGPROBS}"),
        ));
    }
    if req.return_tokens == Some(true) {
        return Err(ApiError::invalid(
            Some("return_tokens"),
            "return_tokens is not supported: /tokenize gives a text's tokens",
        ));
    }
    if req.options.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            Some("n"),
            "/completion answers once per prompt",
        ));
    }
    let mut options = req.options.clone();
    options.logprobs = None;
    match req.n_predict {
        None => {}
        Some(n) if n < 0 => options.max_tokens = None,
        Some(0) => {
            return Err(ApiError::invalid(
                Some("n_predict"),
                "n_predict must be at least 1 (-1: until the end)",
            ))
        }
        Some(n) => options.max_tokens = Some(n.unsigned_abs()),
    }
    let (_, seed) = number(app);
    let mut limits = options.limits(seed, false)?;
    limits.logprobs = (n_probs > 0).then_some(n_probs as usize);
    limits.post_sampling = req.post_sampling_probs == Some(true);
    let n_predict = limits
        .max_tokens
        .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    let shared = Shared {
        model: app.model.clone(),
        settings: props::params(&limits.sampling, n_predict),
        post_sampling: limits.post_sampling,
    };
    let prompts = req.prompt.prompts()?;
    let texts: Vec<String> = prompts
        .iter()
        .map(|p| match p {
            Prompt::Text(t) => t.clone(),
            Prompt::Tokens(ids) => app.tokenizer.decode(ids, false, true).unwrap_or_default(),
        })
        .collect();
    let sequences = prompts
        .into_iter()
        .map(|p| (Input::Prompt(p), limits.clone()))
        .collect();
    let mut inbox = submit(app, sequences)?;
    let mut answers: Vec<Option<Answer>> = texts.iter().map(|_| None).collect();
    let mut early = VecDeque::new();
    while answers.iter().any(Option::is_none) {
        match inbox.recv().await {
            Some((
                i,
                Event::Started {
                    prompt_tokens,
                    cached_tokens,
                },
            )) => {
                let slot = answers.get_mut(i).ok_or_else(stopped)?;
                *slot = Some(Answer {
                    prompt: texts[i].clone(),
                    content: String::new(),
                    evaluated: prompt_tokens,
                    cached: cached_tokens,
                    started: Instant::now(),
                    first: None,
                    done: None,
                    probs: limits.logprobs.map(|_| Vec::new()),
                });
            }
            Some((_, Event::Failed(e))) => return Err(e),
            Some(e) => early.push_back(e),
            None => return Err(stopped()),
        }
    }
    let mut answers: Vec<Answer> = answers.into_iter().flatten().collect();
    // Events that came before every prompt had started.
    for (i, e) in early {
        answers.get_mut(i).ok_or_else(stopped)?.on(e)?;
    }
    Ok((answers, inbox, shared, req.options.stream))
}

async fn whole(mut answers: Vec<Answer>, mut inbox: Inbox, shared: Shared) -> Response {
    while answers.iter().any(|a| a.done.is_none()) {
        let Some((i, e)) = inbox.recv().await else {
            return error(stopped());
        };
        let Some(a) = answers.get_mut(i) else {
            return error(stopped());
        };
        if let Err(e) = a.on(e) {
            return error(e);
        }
    }
    let mut all: Vec<Value> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| a.whole(i, &shared, false))
        .collect();
    match all.len() {
        1 => Json(all.remove(0)).into_response(),
        _ => Json(Value::Array(all)).into_response(),
    }
}

/// A streamed answer's state.
struct Streaming {
    answers: Vec<Answer>,
    inbox: Inbox,
    shared: Shared,
    out: VecDeque<sse::Event>,
    ended: bool,
}

impl Streaming {
    /// Turns the next event into the client's: a piece of content, or a
    /// prompt's final object; the stream ends after the last.
    fn on(&mut self, e: Option<(usize, Event)>) {
        let Some((i, e)) = e.filter(|(i, _)| *i < self.answers.len()) else {
            self.out.push_back(data(&stopped().body()));
            self.ended = true;
            return;
        };
        let a = &mut self.answers[i];
        match a.on(e) {
            Ok(Some((text, probs))) => {
                let mut piece = json!({
                    "index": i,
                    "content": text,
                    "tokens": [],
                    "stop": false,
                    "id_slot": -1,
                    "tokens_evaluated": a.evaluated,
                });
                if a.probs.is_some() {
                    piece["completion_probabilities"] =
                        llama_cpp_probabilities(&probs, self.shared.post_sampling);
                }
                self.out.push_back(data(&piece));
            }
            Ok(None) => {
                self.out.push_back(data(&a.whole(i, &self.shared, true)));
                self.ended = self.answers.iter().all(|a| a.done.is_some());
            }
            Err(e) => {
                self.out.push_back(data(&e.body()));
                self.ended = true;
            }
        }
    }
}

/// Server-sent events: each prompt's text as it comes, then its final
/// object; an error after the stream began is an `{"error": ...}` event.
fn stream(answers: Vec<Answer>, inbox: Inbox, shared: Shared) -> Response {
    // Pieces that came before every prompt had started went into the
    // answers: send them first.
    let out = answers
        .iter()
        .enumerate()
        .filter(|(_, a)| !a.content.is_empty())
        .map(|(i, a)| {
            let mut piece = json!({"index": i, "content": a.content, "tokens": [], "stop": false,
                                   "id_slot": -1, "tokens_evaluated": a.evaluated});
            if let Some(probs) = &a.probs {
                piece["completion_probabilities"] =
                    llama_cpp_probabilities(probs, shared.post_sampling);
            }
            data(&piece)
        })
        .collect();
    let mut st = Streaming {
        answers,
        inbox,
        shared,
        out,
        ended: false,
    };
    // Answers that ended before every prompt had started.
    for i in 0..st.answers.len() {
        if st.answers[i].done.is_some() {
            let end = st.answers[i].whole(i, &st.shared, true);
            st.out.push_back(data(&end));
        }
    }
    st.ended = st.answers.iter().all(|a| a.done.is_some());
    let events = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.out.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.ended {
                return None;
            }
            let e = st.inbox.recv().await;
            st.on(e);
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use realm_models::SamplingParams;

    #[test]
    fn settings_are_llama_cpps_names() {
        let s = props::params(&SamplingParams::default(), 16);
        for key in [
            "temperature",
            "top_k",
            "dry_multiplier",
            "mirostat",
            "n_predict",
        ] {
            assert!(s.get(key).is_some(), "{key}");
        }
        assert_eq!(s["n_predict"], 16);
    }
}
