//! The OpenAI API's requests and responses, as far as `realm serve` speaks
//! it: chat completions, text completions and the model list.
//!
//! Structured output: `response_format` (`json_object`, `json_schema`)
//! and llama.cpp's `grammar` (GBNF) and `json_schema` fields constrain
//! sampling to a grammar, as llama.cpp's server does.
//!
//! Tool calling: `tools`, `tool_choice` and `parallel_tool_calls`, with
//! earlier calls and `tool` messages in the conversation (see
//! [`super::tools`]).
//!
//! Fields a client may send that change nothing here (`user`, `name`,
//! `response_format` of text, ...) are ignored; fields that ask for
//! something this server cannot do (`suffix`, `best_of`, images) are
//! refused with a 400, not ignored, so that a client never gets an answer
//! to a question it did not ask.
//!
//! Log-probabilities are the model's own (a softmax of its logits, before
//! sampling's temperature, penalties or biases), as OpenAI's are: chat's
//! `logprobs: true` with `top_logprobs`, completions' `logprobs: N`, with
//! `echo` the prompt's tokens too (how evaluation harnesses score text).

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::StatusCode;
use realm_models::sampling::SamplerKind;
use realm_models::tools::Tools;
use realm_models::{Grammar, Mirostat, SamplingParams, StopReason};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most stop strings a request may give.
const MAX_STOPS: usize = 16;

/// Most alternatives a token's log-probabilities may list.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Most choices (`n`) per prompt.
pub const MAX_CHOICES: u64 = 16;

/// An error as the OpenAI API returns it: an HTTP status and
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, if one is.
    pub param: Option<&'static str>,
}

impl ApiError {
    /// A 400: the request asks for something wrong or unsupported.
    pub fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param,
        }
    }

    /// A status with a message and no field.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let kind = match self.status.as_u16() {
            400 | 401 | 404 | 405 | 413 | 415 | 422 => "invalid_request_error",
            503 => "server_busy",
            _ => "server_error",
        };
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param,
                "code": null,
            }
        })
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The sampling and length fields both endpoints share. Sampling defaults
/// are llama.cpp's (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05),
/// as llama.cpp's server has them; `top_k`, `min_p`, `repeat_penalty`,
/// `seed` and the samplers after them (`repeat_last_n` to `mirostat_eta`)
/// are extensions llama.cpp's server accepts too, by the same names.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Options {
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
    pub min_keep: Option<usize>,
    pub typical_p: Option<f32>,
    pub top_n_sigma: Option<f32>,
    pub xtc_probability: Option<f32>,
    pub xtc_threshold: Option<f32>,
    pub dynatemp_range: Option<f32>,
    pub dynatemp_exponent: Option<f32>,
    pub dry_multiplier: Option<f32>,
    pub dry_base: Option<f32>,
    pub dry_allowed_length: Option<usize>,
    pub dry_penalty_last_n: Option<usize>,
    pub dry_sequence_breakers: Option<Vec<String>>,
    pub mirostat: Option<u32>,
    pub mirostat_tau: Option<f32>,
    pub mirostat_eta: Option<f32>,
    pub n_keep: Option<i64>,
    /// The samplers in order: names, or one string of letters.
    pub samplers: Option<Value>,
    pub ignore_eos: Option<bool>,
    /// -1 (llama.cpp's "random") is as if absent.
    pub seed: Option<serde_json::Number>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<u64>,
    pub logprobs: Option<Value>,
    pub top_logprobs: Option<Value>,
    pub grammar: Option<String>,
    pub json_schema: Option<Value>,
    pub response_format: Option<Value>,
    /// LoRA adapters of the server (`--lora`) at scales of the request's
    /// own, llama.cpp's `lora`: adapters it does not name are off.
    pub lora: Option<Vec<LoraScale>>,
}

/// One of a request's `lora` entries.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct LoraScale {
    pub id: usize,
    pub scale: f32,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// What a request asks the engine for, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Most tokens to generate; `None`: until the context is full.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
    /// Log-probabilities of each token, with this many alternatives.
    pub logprobs: Option<usize>,
    /// Answer with the prompt before the completion (and, with
    /// `logprobs`, the prompt's tokens' log-probabilities).
    pub echo: bool,
    /// Generate only text this grammar allows.
    pub grammar: Option<Arc<Grammar>>,
    /// Hold to the grammar only from one of these texts on (a lazy
    /// grammar: a native tool format's calls).
    pub grammar_triggers: Vec<String>,
    /// Special tokens whose text stays in the reply (a tool format's
    /// markers).
    pub preserved_tokens: Vec<String>,
    /// With `--context-shift`: the prompt's tokens after BOS that a shift
    /// keeps (negative: all).
    pub n_keep: i64,
    /// With `logprobs`: the probabilities the samplers left (llama.cpp's
    /// `post_sampling_probs`) instead of the model's.
    pub post_sampling: bool,
    /// The request's LoRA adapters and scales (`None`: the server's).
    pub lora: Option<Vec<(usize, f32)>>,
}

impl Options {
    /// Checks the fields; `seed` stands in for an absent `seed`. The
    /// caller sets [`Limits::logprobs`] and [`Limits::echo`], which the two
    /// endpoints spell differently; with `echo`, `max_tokens` may be 0
    /// (score the prompt, generate nothing).
    pub fn limits(&self, seed: u64, echo: bool) -> Result<Limits, ApiError> {
        self.limits_with(seed, echo, self.grammar()?)
    }

    /// [`Options::limits`] with `grammar` in place of the one the fields
    /// ask for (a chat's tools', which takes in any `response_format`), so
    /// that no schema is converted twice.
    pub fn limits_with(
        &self,
        seed: u64,
        echo: bool,
        grammar: Option<Arc<Grammar>>,
    ) -> Result<Limits, ApiError> {
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(0) if !echo => {
                return Err(ApiError::invalid(
                    Some("max_tokens"),
                    "max_tokens must be at least 1 (0 only with echo)",
                ))
            }
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            None => None,
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("at most {MAX_STOPS} stop strings"),
            ));
        }
        let mut logit_bias = Vec::new();
        for (id, &bias) in self.logit_bias.iter().flatten() {
            let id = id.parse::<u32>().map_err(|_| {
                ApiError::invalid(
                    Some("logit_bias"),
                    format!("logit_bias keys are token ids, not `{id}`"),
                )
            })?;
            if !(-100.0..=100.0).contains(&bias) {
                return Err(ApiError::invalid(
                    Some("logit_bias"),
                    "logit_bias values lie in -100..=100",
                ));
            }
            logit_bias.push((id, bias));
        }
        logit_bias.sort_by_key(|&(id, _)| id);
        let d = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            penalty_last_n: self.repeat_last_n.unwrap_or(d.penalty_last_n),
            min_keep: self.min_keep.unwrap_or(d.min_keep),
            typical_p: self.typical_p.unwrap_or(d.typical_p),
            top_n_sigma: self.top_n_sigma.unwrap_or(d.top_n_sigma),
            xtc_probability: self.xtc_probability.unwrap_or(d.xtc_probability),
            xtc_threshold: self.xtc_threshold.unwrap_or(d.xtc_threshold),
            dynatemp_range: self.dynatemp_range.unwrap_or(d.dynatemp_range),
            dynatemp_exponent: self.dynatemp_exponent.unwrap_or(d.dynatemp_exponent),
            dry_multiplier: self.dry_multiplier.unwrap_or(d.dry_multiplier),
            dry_base: self.dry_base.unwrap_or(d.dry_base),
            dry_allowed_length: self.dry_allowed_length.unwrap_or(d.dry_allowed_length),
            dry_penalty_last_n: self.dry_penalty_last_n.unwrap_or(d.dry_penalty_last_n),
            dry_sequence_breakers: self
                .dry_sequence_breakers
                .clone()
                .unwrap_or(d.dry_sequence_breakers.clone()),
            mirostat: match self.mirostat {
                None => d.mirostat,
                Some(v) => Mirostat::from_version(v)
                    .ok_or_else(|| ApiError::invalid(Some("mirostat"), "mirostat is 0, 1 or 2"))?,
            },
            mirostat_tau: self.mirostat_tau.unwrap_or(d.mirostat_tau),
            mirostat_eta: self.mirostat_eta.unwrap_or(d.mirostat_eta),
            logit_bias,
            seed: match &self.seed {
                None => seed,
                Some(s) if s.as_i64() == Some(-1) => seed,
                Some(s) => s.as_u64().ok_or_else(|| {
                    ApiError::invalid(
                        Some("seed"),
                        "seed is a number from 0, or -1 for a random one",
                    )
                })?,
            },
            ignore_eos: self.ignore_eos.unwrap_or(false),
            samplers: match &self.samplers {
                None => d.samplers.clone(),
                Some(v) => samplers(v)?,
            },
        };
        if sampling.dry_sequence_breakers.len() > MAX_STOPS {
            return Err(ApiError::invalid(
                Some("dry_sequence_breakers"),
                format!("at most {MAX_STOPS} DRY sequence breakers"),
            ));
        }
        // The sampler's own checks (ranges of every field), as a 400.
        sampling
            .validate()
            .map_err(|e| ApiError::invalid(None, e.to_string()))?;
        let lora = match &self.lora {
            // An empty list is none, as llama.cpp reads it: the server's.
            Some(list) if !list.is_empty() => {
                if let Some(bad) = list.iter().find(|l| !l.scale.is_finite()) {
                    return Err(ApiError::invalid(
                        Some("lora"),
                        format!("adapter {}'s scale is not a finite number", bad.id),
                    ));
                }
                Some(list.iter().map(|l| (l.id, l.scale)).collect())
            }
            _ => None,
        };
        Ok(Limits {
            max_tokens,
            stop,
            sampling,
            logprobs: None,
            echo,
            grammar,
            grammar_triggers: Vec::new(),
            preserved_tokens: Vec::new(),
            n_keep: self.n_keep.unwrap_or(0),
            post_sampling: false,
            lora,
        })
    }

    /// The grammar `grammar`, `json_schema` or `response_format` asks for.
    fn grammar(&self) -> Result<Option<Arc<Grammar>>, ApiError> {
        if let Some(g) = &self.grammar {
            self.response_schema()?;
            return Grammar::parse(g)
                .map(|g| Some(Arc::new(g)))
                .map_err(|e| ApiError::invalid(Some("grammar"), e.to_string()));
        }
        let Some(schema) = self.response_schema()? else {
            return Ok(None);
        };
        Grammar::from_json_schema(&schema)
            .map(|g| Some(Arc::new(g)))
            .map_err(|e| ApiError::invalid(Some("json_schema"), e.to_string()))
    }

    /// The JSON schema `json_schema` or `response_format` asks for, read as
    /// llama.cpp's server reads them: `json_object` takes its `schema` if
    /// it has one, `json_schema` its `json_schema.schema`, and an absent or
    /// empty schema means any JSON object. Given with a GBNF `grammar`, an
    /// error.
    pub fn response_schema(&self) -> Result<Option<Value>, ApiError> {
        let bad = |param, m: String| ApiError::invalid(Some(param), m);
        let mut schema = self.json_schema.clone().filter(|s| !s.is_null());
        if schema.is_some() && self.grammar.is_some() {
            return Err(bad(
                "grammar",
                "grammar and json_schema cannot both be given".into(),
            ));
        }
        if let Some(format) = self.response_format.as_ref().filter(|f| !f.is_null()) {
            let kind = format.get("type").and_then(Value::as_str).unwrap_or("");
            match kind {
                "" | "text" => {}
                "json_object" => {
                    if format.get("schema").is_some() || schema.is_none() {
                        schema = Some(format.get("schema").cloned().unwrap_or_default());
                    }
                }
                "json_schema" => {
                    let s = format.get("json_schema").and_then(|w| w.get("schema"));
                    schema = Some(s.cloned().unwrap_or_default());
                }
                other => {
                    return Err(bad(
                        "response_format",
                        format!(
                        "response_format's type is text, json_object or json_schema, not `{other}`"
                    ),
                    ))
                }
            }
            if schema.is_some() && self.grammar.is_some() {
                return Err(bad(
                    "grammar",
                    "grammar and a JSON response_format cannot both be given".into(),
                ));
            }
        }
        Ok(schema.map(|s| {
            if s.is_null() || s.as_object().is_some_and(|o| o.is_empty()) {
                serde_json::json!({"type": "object"})
            } else {
                s
            }
        }))
    }

    /// `n`: choices per prompt, each sampled on its own (choice `j` with
    /// the request's seed plus `j`).
    pub fn choices(&self) -> Result<usize, ApiError> {
        match self.n {
            None => Ok(1),
            Some(n @ 1..=MAX_CHOICES) => Ok(n as usize),
            Some(_) => Err(ApiError::invalid(
                Some("n"),
                format!("n is a number of choices from 1 to {MAX_CHOICES}"),
            )),
        }
    }

    /// Chat's `logprobs: true` and `top_logprobs: N`: how many alternatives
    /// each token lists, if log-probabilities are asked for.
    pub fn chat_logprobs(&self) -> Result<Option<usize>, ApiError> {
        let top = match &self.top_logprobs {
            None | Some(Value::Null) => None,
            Some(v) => Some(count(v, "top_logprobs")?),
        };
        match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) if top.is_some() => Err(
                ApiError::invalid(Some("top_logprobs"), "top_logprobs needs logprobs: true"),
            ),
            None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
            Some(Value::Bool(true)) => Ok(Some(top.unwrap_or(0))),
            Some(_) => Err(ApiError::invalid(
                Some("logprobs"),
                "a chat's logprobs is true or false (the number goes in top_logprobs)",
            )),
        }
    }

    /// Completions' `logprobs: N`: alternatives per token (0: the chosen
    /// token's alone), if asked for.
    pub fn completion_logprobs(&self) -> Result<Option<usize>, ApiError> {
        if !matches!(self.top_logprobs, None | Some(Value::Null)) {
            return Err(ApiError::invalid(
                Some("top_logprobs"),
                "completions take logprobs: N (top_logprobs is chat's)",
            ));
        }
        match &self.logprobs {
            None | Some(Value::Null) => Ok(None),
            Some(v) => count(v, "logprobs").map(Some),
        }
    }

    /// Whether a stream ends with a chunk of token counts.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// llama.cpp's `samplers`: an array of names, or a string of letters.
fn samplers(v: &Value) -> Result<Vec<SamplerKind>, ApiError> {
    let bad = |m: String| ApiError::invalid(Some("samplers"), m);
    match v {
        Value::String(letters) => {
            SamplerKind::parse_letters(letters).map_err(|e| bad(e.to_string()))
        }
        Value::Array(names) if names.len() <= 64 => names
            .iter()
            .map(|n| {
                n.as_str()
                    .and_then(SamplerKind::from_name)
                    .ok_or_else(|| bad(format!("no sampler is called {n}")))
            })
            .collect(),
        _ => Err(bad(
            "samplers is an array of at most 64 names or a string of letters".into(),
        )),
    }
}

/// A whole number of alternatives, 0 to [`MAX_TOP_LOGPROBS`].
fn count(v: &Value, param: &'static str) -> Result<usize, ApiError> {
    v.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= MAX_TOP_LOGPROBS)
        .ok_or_else(|| {
            ApiError::invalid(
                Some(param),
                format!("{param} is a whole number from 0 to {MAX_TOP_LOGPROBS}"),
            )
        })
}

/// A chat message's `content`: a string, or a list of parts of which only
/// text parts are supported.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// A message of `messages`: an assistant's may hold the tool calls it
/// made, a `tool` message the result of one.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
    pub tool_calls: Option<Value>,
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
    /// An assistant message's reasoning (as `reasoning_content` gave it),
    /// for templates that write it back (Qwen 3's, gpt-oss's).
    pub reasoning_content: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(default)]
    pub tools: Value,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// More variables for the chat template (`enable_thinking`, ...).
    pub chat_template_kwargs: Option<Value>,
    /// Given to the chat template as `reasoning_effort` (gpt-oss's `low`,
    /// `medium`, `high`).
    pub reasoning_effort: Option<String>,
    /// `none` (the reply as it is), `deepseek` (a `<think>` block's text in
    /// `reasoning_content`) or `auto` (the server's `--reasoning-format`).
    pub reasoning_format: Option<String>,
    #[serde(flatten)]
    pub options: Options,
}

impl ChatRequest {
    /// The chat template's variables besides the conversation:
    /// `chat_template_kwargs`, then `reasoning_effort`.
    pub fn template_vars(&self) -> Result<serde_json::Map<String, Value>, ApiError> {
        let mut vars = match &self.chat_template_kwargs {
            None | Some(Value::Null) => serde_json::Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    Some("chat_template_kwargs"),
                    "chat_template_kwargs must be an object",
                ))
            }
        };
        if let Some(effort) = &self.reasoning_effort {
            vars.insert("reasoning_effort".into(), Value::String(effort.clone()));
        }
        Ok(vars)
    }

    /// The conversation as (role, text) pairs: earlier tool calls and tool
    /// results written as [`super::tools`] has the model read them, and,
    /// with `tools`, their instructions in the system message.
    pub fn conversation(&self, tools: Option<&Tools>) -> Result<Vec<(String, String)>, ApiError> {
        let turns = super::tools::conversation(self.texts()?, tools)?;
        if turns.is_empty() {
            return Err(ApiError::invalid(
                Some("messages"),
                "messages must hold at least one message",
            ));
        }
        Ok(turns)
    }

    /// Each message with its content as text.
    pub(super) fn texts(&self) -> Result<Vec<(&Message, String)>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                Some("messages"),
                "messages must hold at least one message",
            ));
        }
        self.messages
            .iter()
            .map(|m| {
                let text = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut text = String::new();
                        for p in parts {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                (kind, _) => {
                                    return Err(ApiError::invalid(
                                        Some("messages"),
                                        format!(
                                            "content parts of type `{kind}` are not supported \
                                             (only text)"
                                        ),
                                    ))
                                }
                            }
                        }
                        text
                    }
                };
                Ok((m, text))
            })
            .collect()
    }
}

/// `prompt` of a text completion: a string, token ids, or a list of
/// either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// Most prompts one completion or embedding request may list.
pub const MAX_PROMPTS: usize = 64;

impl PromptField {
    /// The prompts, each checked for content; at most [`MAX_PROMPTS`].
    pub fn prompts(&self) -> Result<Vec<Prompt>, ApiError> {
        let prompts: Vec<Prompt> = match self {
            Self::Text(t) => vec![Prompt::Text(t.clone())],
            Self::Texts(v) => v.iter().cloned().map(Prompt::Text).collect(),
            Self::Tokens(ids) => vec![Prompt::Tokens(ids.clone())],
            Self::TokenLists(v) => v.iter().cloned().map(Prompt::Tokens).collect(),
        };
        if prompts.is_empty() || prompts.contains(&Prompt::Tokens(Vec::new())) {
            return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
        }
        if prompts.len() > MAX_PROMPTS {
            return Err(ApiError::invalid(
                Some("prompt"),
                format!("at most {MAX_PROMPTS} prompts per request"),
            ));
        }
        Ok(prompts)
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptField,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<u64>,
    #[serde(flatten)]
    pub options: Options,
}

/// What a text completion continues.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl CompletionRequest {
    /// The prompts (each answered by its own choices, in order), once the
    /// unsupported fields are refused.
    pub fn prompts(&self) -> Result<Vec<Prompt>, ApiError> {
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid(Some("suffix"), "suffix is not supported"));
        }
        if self.best_of.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(
                Some("best_of"),
                "only best_of = 1 is supported",
            ));
        }
        self.prompt.prompts()
    }
}

/// `finish_reason` of a choice.
pub fn finish_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::EndOfGeneration | StopReason::StopString | StopReason::Cancelled => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
    }
}

/// `usage`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct PromptDetails {
    /// Prompt tokens a kept KV cache held already, which did not run.
    pub cached_tokens: usize,
}

/// A request's prompt: its tokens, and how many a kept cache held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptCount {
    pub tokens: usize,
    pub cached: usize,
}

impl Usage {
    pub fn new(prompt: PromptCount, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens: prompt.tokens,
            completion_tokens,
            total_tokens: prompt.tokens + completion_tokens,
            prompt_tokens_details: PromptDetails {
                cached_tokens: prompt.cached,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> ChatRequest {
        serde_json::from_value(body).unwrap()
    }

    /// `grammar`, `json_schema` and `response_format` become the grammar
    /// llama.cpp's server would use; conflicts and bad grammars are 400s
    /// naming the field.
    #[test]
    fn structured_output_fields_give_grammars() {
        let grammar_of = |extra: Value| {
            let mut body = serde_json::json!({"messages": []});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            chat(body).options.limits(1, false).map(|l| l.grammar)
        };
        let object = Grammar::from_json_schema(&serde_json::json!({"type": "object"})).unwrap();
        let list = Grammar::from_json_schema(&serde_json::json!({"type": "array"})).unwrap();
        let gbnf = Grammar::parse("root ::= \"a\"").unwrap();
        for (extra, want) in [
            (serde_json::json!({}), None),
            (
                serde_json::json!({"response_format": {"type": "text"}}),
                None,
            ),
            (
                serde_json::json!({"response_format": {"type": "json_object"}}),
                Some(&object),
            ),
            (
                serde_json::json!({"response_format": {"type": "json_object", "schema": {"type": "array"}}}),
                Some(&list),
            ),
            (
                serde_json::json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}}),
                Some(&list),
            ),
            (
                serde_json::json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
                Some(&object),
            ),
            (serde_json::json!({"json_schema": {}}), Some(&object)),
            (
                serde_json::json!({"json_schema": {"type": "array"}, "response_format": {"type": "json_object"}}),
                Some(&list),
            ),
            (
                serde_json::json!({"grammar": "root ::= \"a\""}),
                Some(&gbnf),
            ),
        ] {
            let got = grammar_of(extra.clone()).unwrap();
            assert_eq!(got.as_deref(), want, "{extra}");
        }
        for (extra, param) in [
            (
                serde_json::json!({"grammar": "root ::= \"a\"", "json_schema": {}}),
                "grammar",
            ),
            (
                serde_json::json!({"grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}}),
                "grammar",
            ),
            (serde_json::json!({"grammar": "root ::= b"}), "grammar"),
            (
                serde_json::json!({"json_schema": {"type": "string", "pattern": "a+"}}),
                "json_schema",
            ),
            (
                serde_json::json!({"response_format": {"type": "xml"}}),
                "response_format",
            ),
        ] {
            let e = grammar_of(extra.clone()).unwrap_err();
            assert_eq!(
                (e.status, e.param),
                (StatusCode::BAD_REQUEST, Some(param)),
                "{extra}: {}",
                e.message
            );
        }
    }

    #[test]
    fn options_map_onto_sampling_and_limits() {
        let r = chat(serde_json::json!({
            "model": "x",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0,
            "top_k": 5,
            "max_completion_tokens": 7,
            "max_tokens": 99,
            "stop": "END",
            "logit_bias": {"12": 3.5, "3": -100},
            "user": "someone",
        }));
        let l = r.options.limits(42, false).unwrap();
        assert_eq!(l.max_tokens, Some(7));
        assert_eq!(l.stop, ["END"]);
        assert_eq!(l.sampling.temperature, 0.0);
        assert_eq!(l.sampling.top_k, 5);
        assert_eq!(l.sampling.top_p, SamplingParams::default().top_p);
        assert_eq!(l.sampling.logit_bias, [(3, -100.0), (12, 3.5)]);
        assert_eq!(l.sampling.seed, 42);
        let seeded = chat(serde_json::json!({"messages": [], "seed": 9}));
        assert_eq!(seeded.options.limits(42, false).unwrap().sampling.seed, 9);
        let random = chat(serde_json::json!({"messages": [], "seed": -1}));
        assert_eq!(random.options.limits(42, false).unwrap().sampling.seed, 42);
        let large = chat(serde_json::json!({"messages": [], "seed": u64::MAX}));
        assert_eq!(
            large.options.limits(42, false).unwrap().sampling.seed,
            u64::MAX
        );
        let bad = chat(serde_json::json!({"messages": [], "seed": -2}));
        assert!(bad.options.limits(42, false).is_err());
    }

    #[test]
    fn unsupported_or_bad_fields_are_refused_by_name() {
        let refused = |body: Value| {
            let r = chat(body);
            r.conversation(None)
                .and_then(|_| r.options.choices())
                .and_then(|_| r.options.limits(0, false))
                .and_then(|_| r.options.chat_logprobs())
                .unwrap_err()
        };
        let m = serde_json::json!([{"role": "user", "content": "hi"}]);
        for (body, param) in [
            (serde_json::json!({"messages": m, "n": 0}), Some("n")),
            (serde_json::json!({"messages": m, "n": 17}), Some("n")),
            (
                serde_json::json!({"messages": m, "logprobs": 3}),
                Some("logprobs"),
            ),
            (
                serde_json::json!({"messages": m, "logprobs": true, "top_logprobs": 21}),
                Some("top_logprobs"),
            ),
            (
                serde_json::json!({"messages": m, "top_logprobs": 2}),
                Some("top_logprobs"),
            ),
            (
                serde_json::json!({"messages": m, "max_tokens": 0}),
                Some("max_tokens"),
            ),
            (
                serde_json::json!({"messages": m, "logit_bias": {"a": 1}}),
                Some("logit_bias"),
            ),
            (
                serde_json::json!({"messages": m, "logit_bias": {"1": 101}}),
                Some("logit_bias"),
            ),
            (
                serde_json::json!({"messages": m, "stop": vec!["x"; 17]}),
                Some("stop"),
            ),
            (serde_json::json!({"messages": []}), Some("messages")),
            (
                serde_json::json!({"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "x"}}]}]}),
                Some("messages"),
            ),
            (
                serde_json::json!({"messages": m, "temperature": 1e39}),
                None,
            ),
            (
                serde_json::json!({"messages": m, "repeat_penalty": 0}),
                None,
            ),
            (serde_json::json!({"messages": m, "top_p": 2}), None),
        ] {
            let e = refused(body.clone());
            assert_eq!(
                (e.status, e.param),
                (StatusCode::BAD_REQUEST, param),
                "{body}"
            );
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn content_parts_join_and_developer_is_system() {
        let r = chat(serde_json::json!({"messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Hello, "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": null},
        ]}));
        assert_eq!(
            r.conversation(None).unwrap(),
            [
                ("system".to_string(), "Be brief.".to_string()),
                ("user".to_string(), "Hello, there".to_string()),
                ("assistant".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn completion_prompts_take_three_forms() {
        let prompt = |p: Value| {
            serde_json::from_value::<CompletionRequest>(serde_json::json!({"prompt": p}))
                .unwrap()
                .prompts()
        };
        let text = |t: &str| Prompt::Text(t.into());
        assert_eq!(prompt("a".into()), Ok(vec![text("a")]));
        assert_eq!(prompt(serde_json::json!(["b"])), Ok(vec![text("b")]));
        assert_eq!(
            prompt(serde_json::json!([1, 2])),
            Ok(vec![Prompt::Tokens(vec![1, 2])])
        );
        assert_eq!(
            prompt(serde_json::json!(["a", "b"])),
            Ok(vec![text("a"), text("b")])
        );
        assert_eq!(
            prompt(serde_json::json!([[1], [2, 3]])),
            Ok(vec![Prompt::Tokens(vec![1]), Prompt::Tokens(vec![2, 3])])
        );
        assert!(prompt(serde_json::json!([])).is_err());
        assert!(prompt(serde_json::json!([[1], []])).is_err());
        assert!(prompt(serde_json::json!(vec!["a"; MAX_PROMPTS + 1])).is_err());
    }

    #[test]
    fn logprobs_are_asked_for_per_endpoint() {
        let chat_lp = |body: Value| chat(body).options.chat_logprobs();
        let m = serde_json::json!([{"role": "user", "content": "hi"}]);
        assert_eq!(chat_lp(serde_json::json!({"messages": m})), Ok(None));
        assert_eq!(
            chat_lp(serde_json::json!({"messages": m, "logprobs": false})),
            Ok(None)
        );
        assert_eq!(
            chat_lp(serde_json::json!({"messages": m, "logprobs": true})),
            Ok(Some(0))
        );
        assert_eq!(
            chat_lp(serde_json::json!({"messages": m, "logprobs": true, "top_logprobs": 5})),
            Ok(Some(5))
        );
        let text = |body: Value| {
            let r: CompletionRequest = serde_json::from_value(body).unwrap();
            let echo = r.echo == Some(true);
            r.options
                .completion_logprobs()
                .and_then(|lp| Ok((lp, r.options.limits(0, echo)?.max_tokens)))
        };
        assert_eq!(
            text(serde_json::json!({"prompt": "a", "logprobs": 0})),
            Ok((Some(0), None))
        );
        assert_eq!(
            text(serde_json::json!({"prompt": "a", "logprobs": 20, "echo": true, "max_tokens": 0})),
            Ok((Some(20), Some(0)))
        );
        for (body, param) in [
            (
                serde_json::json!({"prompt": "a", "logprobs": true}),
                "logprobs",
            ),
            (
                serde_json::json!({"prompt": "a", "logprobs": -1}),
                "logprobs",
            ),
            (
                serde_json::json!({"prompt": "a", "top_logprobs": 1}),
                "top_logprobs",
            ),
            (
                serde_json::json!({"prompt": "a", "max_tokens": 0}),
                "max_tokens",
            ),
        ] {
            assert_eq!(text(body.clone()).unwrap_err().param, Some(param), "{body}");
        }
    }

    #[test]
    fn errors_have_openai_shape() {
        let e = ApiError::invalid(Some("n"), "no");
        assert_eq!(
            e.body(),
            serde_json::json!({"error": {
                "message": "no", "type": "invalid_request_error", "param": "n", "code": null}})
        );
        assert_eq!(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy").body()["error"]["type"],
            "server_busy"
        );
    }
}
