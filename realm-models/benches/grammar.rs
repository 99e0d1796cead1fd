//! The grammar matcher on the real vocabularies: the mask of allowed
//! tokens (one walk of the piece trie) where few tokens fit and inside a
//! JSON string where nearly all do, with the matcher's memo warm and cold,
//! one token's check, and building the piece trie. Models come from
//! `$REALM_MODELS` (default `~/.cache/realm/models`); missing ones are
//! skipped.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use realm_core::catalog;
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::{PieceTrie, Tokenizer};
use realm_models::grammar::{Grammar, Matcher};

fn bench(c: &mut Criterion) {
    let grammar = Arc::new(
        Grammar::from_json_schema(&serde_json::json!({"type": "object"})).expect("grammar"),
    );
    let mut group = c.benchmark_group("grammar");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(4));
    for model in catalog::KNOWN_MODELS {
        let name = model.short_name;
        let Some(path) = catalog::cached_path(model).filter(|p| p.is_file()) else {
            eprintln!("skipping {name}: not in the model cache");
            continue;
        };
        let gguf = GgufFile::open(&path).expect("open");
        let tok = Tokenizer::from_metadata(gguf.metadata()).expect("tokenizer");
        let mut logits = vec![0f32; tok.n_vocab()];
        for (at, text) in [("after_brace", "{\n  "), ("in_string", "{\"name\": \"The ")] {
            let mut m = Matcher::new(grammar.clone());
            m.accept(text.as_bytes()).expect("accepted");
            group.bench_function(format!("{name}/mask_{at}"), |b| {
                b.iter(|| m.mask(&tok, &mut logits))
            });
            group.bench_function(format!("{name}/mask_{at}_cold"), |b| {
                b.iter(|| {
                    let mut m = Matcher::new(grammar.clone());
                    m.accept(text.as_bytes()).expect("accepted");
                    m.mask(&tok, &mut logits)
                })
            });
        }
        let mut m = Matcher::new(grammar.clone());
        m.accept(b"{\"name\": \"The ").expect("accepted");
        let token = tok.encode("tower", false, false).expect("encode")[0];
        group.bench_function(format!("{name}/allows_token"), |b| {
            b.iter(|| m.allows_token(&tok, token))
        });
        let pieces: Vec<&[u8]> = (0..tok.n_vocab() as u32)
            .map(|id| tok.token_to_piece(id, true).expect("piece"))
            .collect();
        group.bench_function(format!("{name}/piece_trie"), |b| {
            b.iter(|| PieceTrie::new(pieces.iter().copied()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
