//! Reading a [`Vocab`] from GGUF metadata.

use super::vocab::{SpecialTokens, TokenType, Vocab, VocabKind};
use super::Tokenizer;
use crate::gguf::{Metadata, MetadataArray};
use crate::{Error, Result};

impl Vocab {
    /// Reads the `tokenizer.ggml.*` keys of a GGUF file.
    ///
    /// Required: `model` (`llama`, `gpt2`, `gemma4`, `bert` or `t5`) and `tokens`;
    /// `merges` for `gpt2` and `gemma4`. Everything else is optional, as in
    /// llama.cpp. A `gemma4` model's pre-tokenizer is `gemma4`, whatever
    /// `tokenizer.ggml.pre` says.
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        let model = md.get_str("tokenizer.ggml.model")?;
        let kind = VocabKind::from_model_name(model).ok_or_else(|| {
            Error::Tokenizer(format!(
                "unsupported tokenizer model `{model}` (tokenizer.ggml.model); supported: llama, gpt2, gemma4, bert, t5"
            ))
        })?;
        let tokens = md.get_str_array("tokenizer.ggml.tokens")?.to_vec();
        let scores = match md.get("tokenizer.ggml.scores") {
            None => Vec::new(),
            Some(_) => match md.get_array("tokenizer.ggml.scores")? {
                MetadataArray::F32(v) => v.clone(),
                MetadataArray::I32(v) => v.iter().map(|&s| s as f32).collect(),
                _ => md.get_f32_array("tokenizer.ggml.scores")?.to_vec(),
            },
        };
        let token_types = match md.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(_) => md
                .get_i32_array("tokenizer.ggml.token_type")?
                .iter()
                .map(|&t| TokenType::from_gguf(t))
                .collect(),
        };
        let merges = match (kind, md.get("tokenizer.ggml.merges")) {
            (VocabKind::Bpe, None) => {
                return Err(Error::MissingKey {
                    key: "tokenizer.ggml.merges".into(),
                })
            }
            (_, None) => Vec::new(),
            (_, Some(_)) => md.get_str_array("tokenizer.ggml.merges")?.to_vec(),
        };
        let pre = match md.get("tokenizer.ggml.pre") {
            _ if model == "gemma4" => Some("gemma4".to_owned()),
            None => None,
            Some(_) => Some(md.get_str("tokenizer.ggml.pre")?.to_owned()),
        };
        // As llama.cpp, the map is read for UGM only, as bytes of either sign.
        const CHARSMAP: &str = "tokenizer.ggml.precompiled_charsmap";
        let precompiled_charsmap = match md.get(CHARSMAP) {
            Some(v) if kind == VocabKind::Ugm => match md.get_array(CHARSMAP)? {
                MetadataArray::U8(b) => b.clone(),
                MetadataArray::I8(b) => b.iter().map(|&x| x as u8).collect(),
                _ => {
                    return Err(Error::WrongType {
                        key: CHARSMAP.into(),
                        expected: "array of u8",
                        found: v.type_description(),
                    })
                }
            },
            _ => Vec::new(),
        };
        let architecture = md.get_str("general.architecture").ok().map(str::to_owned);
        let id = |key: &str| -> Option<u32> {
            md.get(key)?;
            md.get_i64(key).ok().and_then(|v| u32::try_from(v).ok())
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            match md.get(key) {
                None => Ok(None),
                Some(_) => md.get_bool(key).map(Some),
            }
        };
        Ok(Vocab {
            kind,
            pre,
            tokens,
            scores,
            token_types,
            merges,
            special: SpecialTokens {
                bos: id("tokenizer.ggml.bos_token_id"),
                eos: id("tokenizer.ggml.eos_token_id"),
                eot: id("tokenizer.ggml.eot_token_id"),
                eom: id("tokenizer.ggml.eom_token_id"),
                unk: id("tokenizer.ggml.unknown_token_id"),
                sep: id("tokenizer.ggml.seperator_token_id"),
                pad: id("tokenizer.ggml.padding_token_id"),
                mask: id("tokenizer.ggml.mask_token_id"),
            },
            add_bos: flag("tokenizer.ggml.add_bos_token")?,
            add_eos: flag("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: flag("tokenizer.ggml.add_space_prefix")?,
            remove_extra_whitespaces: flag("tokenizer.ggml.remove_extra_whitespaces")?,
            precompiled_charsmap,
            architecture,
            add_sep: flag("tokenizer.ggml.add_sep_token")?,
            lowercase: flag("tokenizer.ggml.normalizer.lowercase")?,
            strip_accents: flag("tokenizer.ggml.normalizer.strip_accents")?,
        })
    }
}

impl Tokenizer {
    /// Builds the tokenizer a GGUF file describes (see
    /// [`Vocab::from_metadata`] and [`Tokenizer::from_parts`]).
    ///
    /// ```no_run
    /// # fn main() -> realm_core::Result<()> {
    /// let file = realm_core::gguf::GgufFile::open("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    /// let tok = realm_core::tokenizer::Tokenizer::from_metadata(file.metadata())?;
    /// let ids = tok.encode("<|im_start|>user\nHi!<|im_end|>", false, true)?;
    /// println!("{ids:?} -> {}", tok.decode(&ids, false, true)?);
    /// # Ok(()) }
    /// ```
    pub fn from_metadata(md: &Metadata) -> Result<Self> {
        Self::from_parts(Vocab::from_metadata(md)?)
    }
}
