//! The server's LoRA adapters (`--lora`, `--lora-scaled`): the scales
//! requests run with unless they name their own (llama.cpp's `lora`
//! field), and llama.cpp's `/lora-adapters` to read and set them.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::body::Body;
use super::http::{error, App};
use super::openai::{ApiError, LoraScale};

/// The adapters and their scales.
#[derive(Debug, Default)]
pub struct Loras {
    /// Each adapter's path, by id.
    pub paths: Vec<String>,
    /// The scales of requests that name none.
    pub scales: Mutex<Vec<f32>>,
    /// Whether a request may set its own scales: not with --wasm, whose
    /// tenants run with the scales the server started with.
    pub per_request: bool,
}

impl Loras {
    fn scales(&self) -> Vec<f32> {
        // Every change is one assignment: a poisoned lock holds whole values.
        self.scales
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `asked` checked against the adapters and their number, each id
    /// once (the last entry of an id counts, as in llama.cpp), all others
    /// at scale 0.
    fn scales_of(&self, asked: &[(usize, f32)]) -> Result<Vec<f32>, ApiError> {
        let mut scales = vec![0.0; self.paths.len()];
        for &(id, scale) in asked {
            let Some(s) = scales.get_mut(id) else {
                return Err(ApiError::invalid(
                    Some("lora"),
                    format!(
                        "the server has no LoRA adapter {id} (it has {})",
                        self.paths.len()
                    ),
                ));
            };
            *s = scale;
        }
        Ok(scales)
    }

    /// The adapters a request runs with, by id, and their scales (none
    /// 0): the request's own (`asked`), or the server's.
    pub fn resolve(&self, asked: Option<&[(usize, f32)]>) -> Result<Vec<(usize, f32)>, ApiError> {
        let scales = match asked {
            None => self.scales(),
            Some(_) if !self.per_request => {
                return Err(ApiError::invalid(
                    Some("lora"),
                    "with --wasm the tenants run with the server's LoRA adapters: \
                     a request cannot set its own",
                ))
            }
            Some(asked) => self.scales_of(asked)?,
        };
        Ok(scales
            .into_iter()
            .enumerate()
            .filter(|&(_, s)| s != 0.0)
            .collect())
    }
}

/// `GET /lora-adapters`: each adapter's id, path and scale.
pub async fn list(State(app): State<Arc<App>>) -> Json<Value> {
    let l = &app.loras;
    let scales = l.scales();
    Json(Value::Array(
        l.paths
            .iter()
            .zip(scales)
            .enumerate()
            .map(|(id, (path, scale))| json!({"id": id, "path": path, "scale": scale}))
            .collect(),
    ))
}

/// `POST /lora-adapters` with `[{"id": 0, "scale": 0.5}, ...]`: the
/// scales of requests that name none from now on; adapters it leaves out
/// go to 0, as in llama.cpp.
pub async fn set(State(app): State<Arc<App>>, Body(asked): Body<Vec<LoraScale>>) -> Response {
    let l = &app.loras;
    if !l.per_request {
        return error(ApiError::new(
            StatusCode::BAD_REQUEST,
            "with --wasm the tenants' LoRA scales are fixed when the server starts",
        ));
    }
    if let Some(bad) = asked.iter().find(|a| !a.scale.is_finite()) {
        return error(ApiError::invalid(
            Some("scale"),
            format!("adapter {}'s scale is not a finite number", bad.id),
        ));
    }
    let pairs: Vec<(usize, f32)> = asked.iter().map(|a| (a.id, a.scale)).collect();
    match l.scales_of(&pairs) {
        Ok(scales) => {
            *l.scales.lock().unwrap_or_else(|e| e.into_inner()) = scales;
            Json(json!({"success": true})).into_response()
        }
        Err(e) => error(e),
    }
}
