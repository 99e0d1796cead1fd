//! `POST /v1/rerank` (and `/rerank`, `/reranking`): a reranker's score of
//! each document for a query, as llama.cpp's server answers it: Jina's
//! format (`documents`, `results` of `index` and `relevance_score`, best
//! first, `top_n` of them), or Text Embeddings Inference's (`texts`, a list
//! of `index` and `score`, with `text` on `return_text`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::Body;
use super::engine::{Event, Input};
use super::http::{error, stopped, submit, App};
use super::openai::{ApiError, Options};

/// `POST /v1/rerank`.
#[derive(Debug, Clone, Deserialize)]
pub struct RerankRequest {
    pub model: Option<String>,
    pub query: Option<Value>,
    pub documents: Option<Vec<String>>,
    /// TEI's name for the documents (and its format for the answer).
    pub texts: Option<Vec<String>>,
    pub top_n: Option<usize>,
    #[serde(default)]
    pub return_text: bool,
}

impl RerankRequest {
    /// The query and documents, checked as llama.cpp checks them.
    fn inputs(&self) -> Result<(String, Vec<String>), ApiError> {
        let query = match &self.query {
            Some(Value::String(q)) => q.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    Some("query"),
                    "\"query\" must be a string",
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    Some("query"),
                    "\"query\" must be provided",
                ))
            }
        };
        let docs = self.documents.clone().or_else(|| self.texts.clone());
        match docs {
            Some(d) if !d.is_empty() => Ok((query, d)),
            _ => Err(ApiError::invalid(
                Some("documents"),
                "\"documents\" must be a non-empty string array",
            )),
        }
    }
}

pub async fn rerank(State(app): State<Arc<App>>, Body(req): Body<RerankRequest>) -> Response {
    let (query, docs) = match req.inputs() {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let limits = match Options::default().limits(0, false) {
        Ok(l) => l,
        Err(e) => return error(e),
    };
    let total = docs.len();
    let sequences = docs
        .iter()
        .map(|d| {
            let input = Input::Rerank {
                query: query.clone(),
                document: d.clone(),
            };
            (input, limits.clone())
        })
        .collect();
    let mut rx = match submit(&app, sequences) {
        Ok(rx) => rx,
        Err(e) => return error(e),
    };
    let mut scores: Vec<Option<f32>> = vec![None; total];
    let mut tokens = 0;
    while scores.iter().any(Option::is_none) {
        match rx.recv().await {
            Some((_, Event::Started { prompt_tokens, .. })) => tokens += prompt_tokens,
            Some((i, Event::Embedding(v))) => match scores.get_mut(i) {
                Some(slot) => *slot = Some(v.first().copied().unwrap_or(f32::NAN)),
                None => return error(stopped()),
            },
            Some((_, Event::Failed(e))) => return error(e),
            Some(_) | None => return error(stopped()),
        }
    }
    let tei = req.texts.is_some() && req.documents.is_none();
    let label = if tei { "score" } else { "relevance_score" };
    let mut results: Vec<(usize, f32)> = scores.into_iter().flatten().enumerate().collect();
    // Best first; ties keep the documents' order.
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    results.truncate(req.top_n.unwrap_or(total));
    let results: Vec<Value> = results
        .into_iter()
        .map(|(index, score)| {
            let mut r = json!({"index": index, label: score});
            if tei && req.return_text {
                r["text"] = json!(docs[index]);
            }
            r
        })
        .collect();
    if tei {
        return Json(Value::Array(results)).into_response();
    }
    Json(json!({
        "model": req.model.clone().unwrap_or_else(|| app.model.clone()),
        "object": "list",
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        "results": results,
    }))
    .into_response()
}
