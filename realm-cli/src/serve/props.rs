//! llama.cpp's server's `GET /props` (what the server runs, and with which
//! defaults) and `POST /apply-template` (a conversation as the prompt text
//! the model would get), answered on the HTTP side.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use realm_core::chat::ChatTemplate;
use realm_models::SamplingParams;
use serde_json::{json, Value};

use super::body::Body;
use super::http::{error, App};
use super::openai::ChatRequest;

/// What `/props` reports, fixed when the server starts.
#[derive(Debug, Clone)]
pub struct Props {
    pub model_path: String,
    /// Each request's context length.
    pub ctx: usize,
    /// Sequences decoded together (`--parallel`).
    pub slots: usize,
    /// The chat template chats go through, if the model has a usable one.
    pub template: Result<ChatTemplate, String>,
}

/// `GET /props`: the generation defaults a request gets, the context
/// length, `total_slots`, the model's path, its chat template (source) and
/// the build, in llama.cpp's server's field names.
pub async fn props(State(app): State<Arc<App>>) -> Json<Value> {
    let p = &app.props;
    let d = SamplingParams::default();
    Json(json!({
        "default_generation_settings": {
            "n_ctx": p.ctx,
            "params": params(&d, -1),
        },
        "total_slots": p.slots,
        "model_path": p.model_path,
        "model_alias": app.model,
        "chat_template": p.template.as_ref().map(ChatTemplate::source).ok(),
        "modalities": {"vision": false, "audio": false},
        "build_info": format!("realm {}", env!("CARGO_PKG_VERSION")),
    }))
}

/// Sampling parameters and `n_predict` in llama.cpp's server's names (its
/// `generation_settings`).
pub fn params(d: &SamplingParams, n_predict: i64) -> Value {
    json!({
        "temperature": d.temperature,
        "top_k": d.top_k,
        "top_p": d.top_p,
        "min_p": d.min_p,
        "repeat_penalty": d.repeat_penalty,
        "presence_penalty": d.presence_penalty,
        "frequency_penalty": d.frequency_penalty,
        "repeat_last_n": d.penalty_last_n,
        "min_keep": d.min_keep,
        "typical_p": d.typical_p,
        "top_n_sigma": d.top_n_sigma,
        "xtc_probability": d.xtc_probability,
        "xtc_threshold": d.xtc_threshold,
        "dynatemp_range": d.dynatemp_range,
        "dynatemp_exponent": d.dynatemp_exponent,
        "dry_multiplier": d.dry_multiplier,
        "dry_base": d.dry_base,
        "dry_allowed_length": d.dry_allowed_length,
        "dry_penalty_last_n": d.dry_penalty_last_n,
        "dry_sequence_breakers": d.dry_sequence_breakers,
        "mirostat": d.mirostat.version(),
        "mirostat_tau": d.mirostat_tau,
        "mirostat_eta": d.mirostat_eta,
        "seed": d.seed,
        "ignore_eos": d.ignore_eos,
        "samplers": d.samplers.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "n_predict": n_predict,
    })
}

/// `POST /apply-template`: a chat request's messages (with its tools, as a
/// chat completion would put them) rendered by the chat template, with the
/// assistant's turn opened: `{"prompt": "..."}`.
pub async fn apply_template(State(app): State<Arc<App>>, Body(req): Body<ChatRequest>) -> Response {
    let rendered = app
        .prepare(&req)
        .and_then(|(turns, _)| super::prompt::render(&app.props.template, &turns));
    match rendered {
        Ok(prompt) => Json(json!({ "prompt": prompt })).into_response(),
        Err(e) => error(e),
    }
}
