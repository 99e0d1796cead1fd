//! llama.cpp's server's `/tokenize` and `/detokenize`, answered with the
//! model's tokenizer on the HTTP side.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::Body;
use super::http::{error, App};
use super::openai::ApiError;

/// `POST /tokenize`, as llama.cpp's server takes it.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    pub content: String,
    #[serde(default)]
    pub add_special: bool,
    #[serde(default = "yes")]
    pub parse_special: bool,
    #[serde(default)]
    pub with_pieces: bool,
}

fn yes() -> bool {
    true
}

/// `POST /detokenize`.
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
}

/// `POST /tokenize` (llama.cpp's server's): `{"content", "add_special"
/// (false), "parse_special" (true), "with_pieces" (false)}` to `{"tokens":
/// [id, ...]}`, or with pieces `{"tokens": [{"id", "piece"}, ...]}` (a
/// piece that is no whole UTF-8 text as its bytes).
pub async fn tokenize(State(app): State<Arc<App>>, Body(req): Body<TokenizeRequest>) -> Response {
    let tok = &app.tokenizer;
    let ids = match tok.encode(&req.content, req.add_special, req.parse_special) {
        Ok(ids) => ids,
        Err(e) => return error(ApiError::invalid(Some("content"), e.to_string())),
    };
    if !req.with_pieces {
        return Json(json!({"tokens": ids})).into_response();
    }
    let tokens: Vec<Value> = ids
        .iter()
        .map(|&id| {
            let bytes = tok.token_to_piece(id, true).unwrap_or_default();
            let piece = match std::str::from_utf8(bytes) {
                Ok(s) => json!(s),
                Err(_) => json!(bytes),
            };
            json!({"id": id, "piece": piece})
        })
        .collect();
    Json(json!({"tokens": tokens})).into_response()
}

/// `POST /detokenize` (llama.cpp's server's): `{"tokens": [id, ...]}` to
/// `{"content"}`, special tokens as their text.
pub async fn detokenize(
    State(app): State<Arc<App>>,
    Body(req): Body<DetokenizeRequest>,
) -> Response {
    match app.tokenizer.decode(&req.tokens, false, true) {
        Ok(content) => Json(json!({"content": content})).into_response(),
        Err(e) => error(ApiError::invalid(Some("tokens"), e.to_string())),
    }
}
