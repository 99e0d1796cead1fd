//! Log-probabilities in the shapes OpenAI's two endpoints answer them:
//! chat's `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`
//! and text completions' `{"tokens", "token_logprobs", "top_logprobs",
//! "text_offset"}`.

use serde_json::Value;

/// One token's log-probability and the most likely tokens in its place.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's id.
    pub id: u32,
    /// The token's bytes (maybe part of a UTF-8 character).
    pub token: Vec<u8>,
    /// `None` for a prompt's first token, which nothing predicts.
    pub logprob: Option<f64>,
    /// The alternatives (id, bytes, log-probability), most likely first;
    /// `None` with `logprob`.
    pub top: Option<Vec<(u32, Vec<u8>, f64)>>,
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
                .map(|(_, b, lp)| entry(b, Some(*lp)))
                .collect();
            e
        })
        .collect();
    serde_json::json!({"content": content, "refusal": null})
}

/// llama.cpp's `completion_probabilities` for `tokens` (its `/completion`
/// with `n_probs`): `[{"id", "token", "bytes", "logprob", "top_logprobs":
/// [{"id", "token", "bytes", "logprob"}]}]`, each text cut to its whole
/// UTF-8 characters, as llama.cpp cuts it; with `post_sampling`
/// (`post_sampling_probs`), `"prob"` and `"top_probs"`, the probabilities
/// themselves.
pub fn llama_cpp_probabilities(tokens: &[TokenLogprob], post_sampling: bool) -> Value {
    let (key, top) = match post_sampling {
        true => ("prob", "top_probs"),
        false => ("logprob", "top_logprobs"),
    };
    let entry = |id: u32, bytes: &[u8], logprob: Option<f64>| {
        let value = logprob.map(|lp| if post_sampling { lp.exp() } else { lp });
        serde_json::json!({"id": id, "token": whole_chars(bytes), "bytes": bytes, key: value})
    };
    tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.id, &t.token, t.logprob);
            e[top] = t
                .top
                .iter()
                .flatten()
                .map(|(id, b, lp)| entry(*id, b, Some(*lp)))
                .collect();
            e
        })
        .collect()
}

/// The text of the longest prefix of `bytes` that is whole UTF-8.
fn whole_chars(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        // The prefix up to the error is UTF-8 by the error's word.
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    }
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
                    .map(|(_, b, lp)| (lossy(b), serde_json::json!(lp)))
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
                id: 7,
                token: b"Hi".to_vec(),
                logprob: None,
                top: None,
            },
            TokenLogprob {
                id: 9,
                token: vec![0xc3],
                logprob: Some(-0.5),
                top: Some(vec![(4, b" there".to_vec(), -0.25), (9, vec![0xc3], -0.5)]),
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
        assert_eq!(
            llama_cpp_probabilities(&tokens[1..], false),
            serde_json::json!([{
                "id": 9, "token": "", "bytes": [0xc3], "logprob": -0.5,
                "top_logprobs": [
                    {"id": 4, "token": " there", "bytes": b" there", "logprob": -0.25},
                    {"id": 9, "token": "", "bytes": [0xc3], "logprob": -0.5},
                ],
            }])
        );
        let (p, q) = ((-0.5f64).exp(), (-0.25f64).exp());
        assert_eq!(
            llama_cpp_probabilities(&tokens[1..], true),
            serde_json::json!([{
                "id": 9, "token": "", "bytes": [0xc3], "prob": p,
                "top_probs": [
                    {"id": 4, "token": " there", "bytes": b" there", "prob": q},
                    {"id": 9, "token": "", "bytes": [0xc3], "prob": p},
                ],
            }])
        );
    }
}
