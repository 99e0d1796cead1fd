//! Semantic search with embeddings: embed a few documents and a query with
//! SmolLM2 (mean-pooled final hidden states, unit length, as llama.cpp's
//! `llama-embedding` computes them) and rank the documents by cosine
//! similarity to the query.
//!
//! ```text
//! cargo xtask fetch-model
//! cargo run --release --example search -- "Where is the Eiffel Tower?"
//! ```

use realm_compute_cpu::CpuBackend;
use realm_core::catalog;
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::Tokenizer;
use realm_models::embedding::{embed, normalize, Pooling};
use realm_models::Model;

type Error = Box<dyn std::error::Error>;

const DOCUMENTS: [&str; 4] = [
    "Paris is the capital of France; the Eiffel Tower stands on the Champ de Mars.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "A lighthouse keeper climbs the stair each evening to light the lamp.",
    "Rust's borrow checker rejects programs with data races at compile time.",
];

/// The documents ranked for `query`, most similar first, with their cosine
/// similarities.
fn rank(path: &std::path::Path, query: &str) -> Result<Vec<(f32, &'static str)>, Error> {
    let file = GgufFile::open(path)?;
    let tokenizer = Tokenizer::from_metadata(file.metadata())?;
    let cpu = CpuBackend::new()?;
    let model = Model::load(&file, &cpu)?;
    let mut session = model.session(512, 512)?;
    let mut vector = |text: &str| -> Result<Vec<f32>, Error> {
        let ids = tokenizer.encode(text, true, false)?;
        let mut v = embed(&model, &mut session, &ids, Pooling::Mean)?.remove(0);
        normalize(&mut v, 2); // unit length: a dot product is the cosine
        Ok(v)
    };
    let q = vector(query)?;
    let mut ranked = DOCUMENTS
        .iter()
        .map(|&d| {
            let v = vector(d)?;
            Ok((q.iter().zip(&v).map(|(a, b)| a * b).sum::<f32>(), d))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(ranked)
}

fn main() -> Result<(), Error> {
    let path = catalog::cached_path(&catalog::SMOLLM2)
        .filter(|p| p.is_file())
        .ok_or("SmolLM2 is not cached: run `cargo xtask fetch-model`")?;
    let query = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Where is the Eiffel Tower?".into());
    for (score, doc) in rank(&path, &query)? {
        println!("{score:.3}  {doc}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_matching_document() {
        let Some(path) = catalog::cached_path(&catalog::SMOLLM2).filter(|p| p.is_file()) else {
            eprintln!("skipped: SmolLM2 is not cached");
            return;
        };
        let ranked = rank(&path, "Where is the Eiffel Tower?").unwrap();
        assert!(ranked[0].1.contains("Eiffel"), "{ranked:?}");
        let ranked = rank(&path, "How do plants make sugar from light?").unwrap();
        assert!(ranked[0].1.starts_with("Photosynthesis"), "{ranked:?}");
    }
}
