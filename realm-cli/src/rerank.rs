//! `realm rerank MODEL -q QUERY -d DOC...`: a reranker's score of each
//! document for a query (a cross-encoder's rank pooling), as llama.cpp's
//! server ranks them at `/v1/rerank`; best first.

use std::io::Write;

use anyhow::{bail, Context, Result};
use realm_core::backend::Backend;
use realm_core::tokenizer::Tokenizer;
use realm_models::embedding::{self, Pooling};
use realm_models::Model;
use serde_json::json;

use crate::{device, load};

/// Arguments of `realm rerank`.
#[derive(Debug, clap::Args)]
pub struct RerankArgs {
    /// A reranker's GGUF file (`pooling_type` rank: `cls` and `cls.output`).
    pub model: String,
    /// The query.
    #[arg(short, long)]
    pub query: String,
    /// A document to score (repeatable).
    #[arg(short, long, required = true)]
    pub document: Vec<String>,
    /// Print only the best N.
    #[arg(long)]
    pub top_n: Option<usize>,
    /// Print llama.cpp's server's JSON (`{"results": [{"index",
    /// "relevance_score"}]}`).
    #[arg(long)]
    pub json: bool,
    /// CPU threads (0: one per core).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub device: device::DeviceArgs,
    #[command(flatten)]
    pub lora: load::LoraArgs,
}

/// A query and a document as one prompt for a reranker, as llama.cpp's
/// server pairs them: through the model's `rerank` template where it has
/// one (`{query}`, `{document}` replaced, special tokens read as them);
/// else BOS, the query, EOS, SEP, the document, EOS, each marker where the
/// vocabulary adds it (EOS falling back to SEP).
///
/// ```ignore
/// // WordPiece (BERT): [CLS] query [SEP] document
/// // SentencePiece unigram (XLM-R): <s> query </s> </s> document </s>
/// ```
pub fn pair_tokens(
    tok: &Tokenizer,
    template: Option<&str>,
    query: &str,
    document: &str,
) -> Result<Vec<u32>> {
    if let Some(t) = template {
        let prompt = t.replace("{query}", query).replace("{document}", document);
        return Ok(tok.encode(&prompt, false, true)?);
    }
    let (q, d) = (
        tok.encode(query, false, false)?,
        tok.encode(document, false, false)?,
    );
    let sep = tok.special_tokens().sep;
    let eos = tok.eos().or(sep);
    let need = |id: Option<u32>, what: &str| {
        id.with_context(|| format!("the vocabulary adds {what} but has none"))
    };
    let mut out = Vec::with_capacity(q.len() + d.len() + 4);
    if tok.add_bos() {
        out.push(need(tok.bos(), "BOS")?);
    }
    out.extend(q);
    if tok.add_eos() {
        out.push(need(eos, "EOS")?);
    }
    if tok.add_sep() {
        out.push(need(sep, "SEP")?);
    }
    out.extend(d);
    if tok.add_eos() {
        out.push(need(eos, "EOS")?);
    }
    Ok(out)
}

/// The model's `rerank` template (`tokenizer.chat_template.rerank`), if
/// it has one.
pub fn template(l: &load::Loaded) -> Option<String> {
    let md = l.file.metadata();
    md.get_str("tokenizer.chat_template.rerank")
        .ok()
        .map(str::to_string)
}

pub fn run(args: &RerankArgs) -> Result<()> {
    let l = load::open(&args.model, args.threads)?;
    match args.device.device {
        device::Device::Cpu => rank_all(args, &l, &l.backend),
        device::Device::Gpu(_) => rank_all(args, &l, &args.device.gpu()?),
    }
}

fn rank_all<B: Backend>(args: &RerankArgs, l: &load::Loaded, backend: &B) -> Result<()> {
    let adapters = args.lora.open()?;
    let mut model = Model::load(&l.file, backend)?;
    let loras = load::add_loras(&mut model, &adapters)?;
    if !model.can_rank() {
        bail!("the model has no reranker's head (cls): it embeds, it does not rank");
    }
    let tpl = template(l);
    let prompts = args
        .document
        .iter()
        .map(|d| pair_tokens(&l.tokenizer, tpl.as_deref(), &args.query, d))
        .collect::<Result<Vec<_>>>()?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if prompts.iter().any(Vec::is_empty) {
        bail!("a pair tokenizes to no tokens");
    }
    let mut session = model.session(longest, longest)?;
    session.set_loras(&loras);
    let mut scores = Vec::with_capacity(prompts.len());
    for (i, ids) in prompts.iter().enumerate() {
        let v = embedding::embed(&model, &mut session, ids, Pooling::Rank)?;
        let score = v
            .first()
            .and_then(|v| v.first())
            .copied()
            .unwrap_or(f32::NAN);
        scores.push((i, score));
    }
    scores.sort_by(|a, b| b.1.total_cmp(&a.1));
    scores.truncate(args.top_n.unwrap_or(scores.len()));
    let mut out = std::io::stdout().lock();
    if args.json {
        let results: Vec<_> = scores
            .iter()
            .map(|&(index, s)| json!({"index": index, "relevance_score": s}))
            .collect();
        writeln!(out, "{}", json!({"object": "list", "results": results}))?;
    } else {
        for &(i, s) in &scores {
            writeln!(out, "{s:10.6}  [{i}] {}", args.document[i])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pair_tokens;
    use realm_core::tokenizer::{TokenType, Tokenizer, Vocab, VocabKind};

    fn wordpiece() -> Tokenizer {
        let words = [
            "[PAD]",
            "[UNK]",
            "[CLS]",
            "[SEP]",
            "\u{2581}cat",
            "\u{2581}dog",
        ];
        let mut v = Vocab::new(
            VocabKind::Wpm,
            words.iter().map(|s| s.to_string()).collect(),
        );
        v.token_types = [3, 2, 3, 3, 1, 1].map(TokenType::from_gguf).to_vec();
        v.special.bos = Some(2);
        v.special.sep = Some(3);
        v.special.unk = Some(1);
        Tokenizer::from_parts(v).unwrap()
    }

    #[test]
    fn pairs_as_llama_cpp() {
        let t = wordpiece();
        // [CLS] cat [SEP] dog: BERT adds BOS and SEP, no EOS.
        assert_eq!(pair_tokens(&t, None, "cat", "dog").unwrap(), [2, 4, 3, 5]);
        // A template's markers are read as tokens.
        let tpl = "[CLS]{query}[SEP]{document}[SEP]";
        assert_eq!(
            pair_tokens(&t, Some(tpl), "cat", "dog").unwrap(),
            [2, 4, 3, 5, 3]
        );
    }
}
