//! Log-probabilities in the shapes OpenAI's two endpoints answer them:
//! chat's `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`
//! and text completions' `{"tokens", "token_logprobs", "top_logprobs",
//! "text_offset"}`.

use serde_json::Value;

/// One token's log-probability and the most likely tokens in its place.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's bytes (maybe part of a UTF-8 character).
    pub token: Vec<u8>,
    /// `None` for a prompt's first token, which nothing predicts.
    pub logprob: Option<f64>,
    /// The alternatives, most likely first; `None` with `logprob`.
    pub top: Option<Vec<(Vec<u8>, f64)>>,
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A chat choice's `logprobs` for `tokens`:
/// `{"content": [{"token", "logprob", "bytes", "top_logprobs"}], "refusal": null}`.
pub fn chat_logprobs(tokens: &[TokenLogprob]) -> Value {
    let entry = |bytes: &[u8], logprob: Option<f64>| serde_json::json!({"token": lossy(bytes), "logprob": logprob, "bytes": bytes});
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(&t.token, t.logprob);
            e["top_logprobs"] = t
                .top
                .iter()
                .flatten()
                .map(|(b, lp)| entry(b, Some(*lp)))
                .collect();
            e
        })
        .collect();
    serde_json::json!({"content": content, "refusal": null})
}

/// A text completion's `logprobs` for `tokens`, whose text begins at
/// character `offset` of the answer's (advanced past them):
/// `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`.
pub fn completion_logprobs(tokens: &[TokenLogprob], offset: &mut usize) -> Value {
    let mut offsets = Vec::with_capacity(tokens.len());
    for t in tokens {
        offsets.push(*offset);
        *offset += lossy(&t.token).chars().count();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| match &t.top {
            None => Value::Null,
            Some(alts) => Value::Object(
                alts.iter()
                    .map(|(b, lp)| (lossy(b), serde_json::json!(lp)))
                    .collect(),
            ),
        })
        .collect();
    serde_json::json!({
        "tokens": tokens.iter().map(|t| lossy(&t.token)).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_have_each_endpoints_shape() {
        let tokens = [
            TokenLogprob {
                token: b"Hi".to_vec(),
                logprob: None,
                top: None,
            },
            TokenLogprob {
                token: vec![0xc3],
                logprob: Some(-0.5),
                top: Some(vec![(b" there".to_vec(), -0.25), (vec![0xc3], -0.5)]),
            },
        ];
        assert_eq!(
            chat_logprobs(&tokens[1..]),
            serde_json::json!({"content": [{
                "token": "\u{fffd}", "logprob": -0.5, "bytes": [0xc3],
                "top_logprobs": [
                    {"token": " there", "logprob": -0.25, "bytes": b" there"},
                    {"token": "\u{fffd}", "logprob": -0.5, "bytes": [0xc3]},
                ],
            }], "refusal": null})
        );
        let mut at = 3;
        assert_eq!(
            completion_logprobs(&tokens, &mut at),
            serde_json::json!({
                "tokens": ["Hi", "\u{fffd}"],
                "token_logprobs": [null, -0.5],
                "top_logprobs": [null, {" there": -0.25, "\u{fffd}": -0.5}],
                "text_offset": [3, 5],
            })
        );
        assert_eq!(at, 6);
    }
}
