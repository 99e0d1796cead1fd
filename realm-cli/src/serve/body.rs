//! Request bodies: JSON whatever the `Content-Type` says, as llama.cpp's
//! server reads them (`curl -d` sends a form's type), with OpenAI-shaped
//! errors: 400 for a body that is not JSON, 422 for JSON of the wrong shape
//! (naming the field), 413 past `--max-body`.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::Response;
use serde::de::DeserializeOwned;

use super::http::error;
use super::openai::ApiError;

/// A JSON request body of type `T`.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| error(ApiError::new(r.status(), r.body_text())))?;
        parse(&bytes).map(Body).map_err(error)
    }
}

/// `bytes` as a `T`, or the error a client gets.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let not_json = |e: &serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        if !inner.is_data() {
            return not_json(inner);
        }
        let at = e.path().to_string();
        let what = if at == "." {
            inner.to_string()
        } else {
            format!("{at}: {inner}")
        };
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("the JSON body is not this route's request: {what}"),
        )
    })?;
    de.end().map_err(|e| not_json(&e))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct R {
        messages: Vec<String>,
    }

    #[test]
    fn errors_say_what_is_wrong_and_where() {
        assert!(parse::<R>(br#"{"messages": ["hi"]}"#).is_ok());
        let e = parse::<R>(b"{not json").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse::<R>(br#"{"messages": 3}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(e.body().to_string().contains("messages"), "{}", e.body());
        let e = parse::<R>(br#"{"messages": []} trailing"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
}
