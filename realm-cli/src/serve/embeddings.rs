//! `POST /v1/embeddings`: each input's embedding from the engine (its
//! prompt run whole, pooled, scaled to unit length), as numbers or base64.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::Body;
use super::engine::{Event, Input};
use super::http::{error, stopped, submit, App};
use super::openai::{ApiError, Options, Prompt, PromptField};

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    pub input: PromptField,
    pub encoding_format: Option<String>,
    pub dimensions: Option<u64>,
}

impl EmbeddingRequest {
    /// The texts (or token ids) to embed, once the unsupported fields are
    /// refused.
    pub fn prompts(&self) -> Result<Vec<Prompt>, ApiError> {
        if !matches!(
            self.encoding_format.as_deref(),
            None | Some("float" | "base64")
        ) {
            return Err(ApiError::invalid(
                Some("encoding_format"),
                "encoding_format is float or base64",
            ));
        }
        if self.dimensions.is_some() {
            return Err(ApiError::invalid(
                Some("dimensions"),
                "the model's embeddings have one size: dimensions is not supported",
            ));
        }
        self.input.prompts().map_err(|e| ApiError {
            param: Some("input"),
            ..e
        })
    }

    /// A vector as `encoding_format` asks: numbers, or the base64 of its
    /// little-endian f32 bytes.
    pub fn encode(&self, v: &[f32]) -> Value {
        use base64::Engine;
        match self.encoding_format.as_deref() {
            Some("base64") => {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
            _ => serde_json::json!(v),
        }
    }
}

pub async fn embeddings(
    State(app): State<Arc<App>>,
    Body(req): Body<EmbeddingRequest>,
) -> Response {
    let prompts = match req.prompts() {
        Ok(p) => p,
        Err(e) => return error(e),
    };
    // Embeddings sample nothing: any limits do.
    let limits = match Options::default().limits(0, false) {
        Ok(l) => l,
        Err(e) => return error(e),
    };
    let total = prompts.len();
    let sequences = prompts
        .into_iter()
        .map(|p| (Input::Embed(p), limits.clone()))
        .collect();
    let mut rx = match submit(&app, sequences) {
        Ok(rx) => rx,
        Err(e) => return error(e),
    };
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; total];
    let mut tokens = 0;
    while vectors.iter().any(Option::is_none) {
        match rx.recv().await {
            Some((_, Event::Started { prompt_tokens, .. })) => tokens += prompt_tokens,
            Some((i, Event::Embedding(v))) => match vectors.get_mut(i) {
                Some(slot) => *slot = Some(v),
                None => return error(stopped()),
            },
            Some((_, Event::Failed(e))) => return error(e),
            Some(_) | None => return error(stopped()),
        }
    }
    let data: Vec<Value> = vectors
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(index, v)| {
            json!({"object": "embedding", "index": index,
                   "embedding": req.encode(&v)})
        })
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": app.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response()
}
