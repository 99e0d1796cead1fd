//! A request's prompt: a conversation through the model's chat template,
//! or a text completion's text or token ids; checked against the context.

use realm_core::chat::ChatTemplate;

use super::engine::{Conversation, Input};
use super::openai::{ApiError, Prompt};
use crate::load::Loaded;

/// A prompt as text, with how the model's tokenizer takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptText {
    pub text: String,
    /// Add BOS (a rendered template that wrote it already does not).
    pub add_special: bool,
    /// Read special tokens' text as those tokens (a template's markers).
    pub parse_special: bool,
}

/// A conversation's messages through `template` with its
/// variables, the assistant's turn opened: what a chat request runs.
pub fn render(
    template: &Result<ChatTemplate, String>,
    chat: &Conversation,
) -> Result<String, ApiError> {
    let tpl = template.as_ref().map_err(|e| {
        ApiError::invalid(
            Some("messages"),
            format!("the model has no usable chat template: {e}"),
        )
    })?;
    tpl.render_messages(&chat.messages, true, &chat.vars)
        .map_err(|e| ApiError::invalid(Some("messages"), e.to_string()))
}

/// Turns requests' inputs into prompts for one model.
pub struct Prompts<'l> {
    l: &'l Loaded,
    template: Result<ChatTemplate, String>,
    /// The model's `rerank` template, if it has one.
    rerank: Option<String>,
    /// Each request's context length: a prompt must leave room for a token.
    pub ctx: usize,
}

impl<'l> Prompts<'l> {
    pub fn new(l: &'l Loaded, ctx: usize) -> Self {
        Self {
            l,
            template: crate::chat::template(l).map_err(|e| e.to_string()),
            rerank: crate::rerank::template(l),
            ctx,
        }
    }

    /// The prompt as text; `Err(ids)` for a prompt given as token ids.
    pub fn text(&self, input: &Input) -> Result<Result<PromptText, Vec<u32>>, ApiError> {
        match input {
            Input::Chat(chat) => {
                let text = render(&self.template, chat)?;
                Ok(Ok(PromptText {
                    add_special: !crate::chat::starts_with_bos(&self.l.tokenizer, &text),
                    parse_special: true,
                    text,
                }))
            }
            Input::Prompt(Prompt::Text(text)) => Ok(Ok(PromptText {
                text: text.clone(),
                add_special: true,
                parse_special: false,
            })),
            Input::Prompt(Prompt::Tokens(ids)) | Input::Embed(Prompt::Tokens(ids)) => {
                Ok(Err(ids.clone()))
            }
            // As llama.cpp's server pairs them.
            Input::Rerank { query, document } => {
                let ids = crate::rerank::pair_tokens(
                    &self.l.tokenizer,
                    self.rerank.as_deref(),
                    query,
                    document,
                )
                .map_err(|e| ApiError::invalid(Some("documents"), e.to_string()))?;
                Ok(Err(ids))
            }
            // As llama.cpp's server: special tokens' text is read as them.
            Input::Embed(Prompt::Text(text)) => Ok(Ok(PromptText {
                text: text.clone(),
                add_special: true,
                parse_special: true,
            })),
        }
    }

    /// The prompt's token ids, checked: in the vocabulary, not empty, and
    /// shorter than the context.
    pub fn tokens(&self, input: &Input) -> Result<Vec<u32>, ApiError> {
        let ids = match self.text(input)? {
            Ok(p) => self.encode(&p)?,
            Err(ids) => {
                let vocab = self.l.tokenizer.n_vocab();
                if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(ApiError::invalid(
                        Some("prompt"),
                        format!("token id {id} is not in the vocabulary of {vocab}"),
                    ));
                }
                ids
            }
        };
        self.check_len(ids.len())?;
        Ok(ids)
    }

    /// `p` tokenized.
    pub fn encode(&self, p: &PromptText) -> Result<Vec<u32>, ApiError> {
        self.l
            .tokenizer
            .encode(&p.text, p.add_special, p.parse_special)
            .map_err(|e| ApiError::invalid(Some("prompt"), e.to_string()))
    }

    /// Whether a prompt of `len` tokens can run.
    pub fn check_len(&self, len: usize) -> Result<(), ApiError> {
        if len == 0 {
            return Err(ApiError::invalid(Some("prompt"), "the prompt is empty"));
        }
        if len >= self.ctx {
            return Err(ApiError::invalid(
                None,
                format!("the prompt is {len} tokens; the context holds {}", self.ctx),
            ));
        }
        Ok(())
    }
}
