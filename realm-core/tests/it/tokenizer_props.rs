//! Property tests: any Unicode text tokenizes without error and decodes back
//! to itself; streaming decoding concatenates to the whole decode. Run on
//! small built-in vocabularies always, and on the real models when present.
#![cfg(not(target_arch = "wasm32"))]

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use realm_core::gguf::GgufFile;
use realm_core::tokenizer::{TokenType, Tokenizer, Vocab, VocabKind};

/// A SentencePiece vocabulary: specials, all 256 byte tokens, a few pieces.
fn toy_spm() -> Tokenizer {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "<|ctl|>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![
        TokenType::Unknown,
        TokenType::Control,
        TokenType::Control,
        TokenType::Control,
    ];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(TokenType::Byte);
    }
    for p in [
        "▁", "▁the", "th", "he", "e", "t", "h", "▁t", "é", "日本", "日", "本", "<tag>",
    ] {
        tokens.push(p.to_string());
        types.push(if p == "<tag>" {
            TokenType::UserDefined
        } else {
            TokenType::Normal
        });
    }
    let n = tokens.len();
    let mut vocab = Vocab::new(VocabKind::Spm, tokens);
    vocab.scores = (0..n).map(|i| -(i as f32) / 10.0).collect();
    vocab.token_types = types;
    // Like Gemma: no space prefix (LLaMA's prefix does not round-trip text
    // after a special token, in llama.cpp as here).
    vocab.add_space_prefix = Some(false);
    Tokenizer::from_parts(vocab).unwrap()
}

/// A byte-level BPE vocabulary with GPT-2's pre-tokenizer (which tidies
/// spaces when decoding): the 256 byte characters, a few merges.
fn toy_bpe() -> Tokenizer {
    let byte_char = |b: u8| -> char {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        if printable {
            b as char
        } else {
            let k = (0..b)
                .filter(|&x| !matches!(x, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF))
                .count();
            char::from_u32(0x100 + k as u32).unwrap()
        }
    };
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    let merges: Vec<String> = ["Ġ t", "h e", "Ġt he", "Ġ ,", "' s"]
        .map(String::from)
        .to_vec();
    tokens.extend(["Ġt", "he", "Ġthe", "Ġ,", "'s", "<|endoftext|>"].map(String::from));
    let mut types = vec![TokenType::Normal; tokens.len()];
    *types.last_mut().unwrap() = TokenType::Control;
    let mut vocab = Vocab::new(VocabKind::Bpe, tokens);
    vocab.pre = Some("gpt2".into());
    vocab.merges = merges;
    vocab.token_types = types;
    Tokenizer::from_parts(vocab).unwrap()
}

/// A WordPiece (BERT) vocabulary: specials first, word starts with `▁`,
/// continuations bare.
fn toy_wpm() -> Tokenizer {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let pieces = [
        "▁the", "▁a", "b", "c", "▁,", "▁'", "▁s", "s", "▁日", "▁本", "▁e", "e", "▁hello", "▁<",
        "▁>", "▁|", "tag", "▁tag", "▁im", "_", "▁_", "start", "▁x",
    ];
    let tokens: Vec<String> = specials
        .iter()
        .chain(&pieces)
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![TokenType::Normal; tokens.len()];
    types[..specials.len()].fill(TokenType::Control);
    let mut vocab = Vocab::new(VocabKind::Wpm, tokens);
    vocab.token_types = types;
    vocab.special.pad = Some(0);
    vocab.special.unk = Some(1);
    vocab.special.bos = Some(2);
    vocab.special.sep = Some(3);
    vocab.special.mask = Some(4);
    Tokenizer::from_parts(vocab).unwrap()
}

/// A precompiled character map for `keys` (key -> replacement).
fn charsmap(keys: &[(&str, &str)]) -> Vec<u8> {
    let keys: Vec<(&[u8], &[u8])> = keys
        .iter()
        .map(|(k, r)| (k.as_bytes(), r.as_bytes()))
        .collect();
    realm_core::tokenizer::precompiled_charsmap(&keys).unwrap()
}

/// A unigram (T5-style) vocabulary: specials, scored pieces, a
/// user-defined `<tag>`, a small character map, the space prefix and
/// extra-space removal on.
fn toy_ugm() -> Tokenizer {
    let mut tokens: Vec<String> = ["<pad>", "</s>", "<unk>", "<tag>"]
        .map(String::from)
        .to_vec();
    let mut types = vec![
        TokenType::Control,
        TokenType::Control,
        TokenType::Unknown,
        TokenType::UserDefined,
    ];
    let mut scores = vec![0.0; 4];
    for (p, score) in [
        ("▁", -3.0),
        ("▁the", -1.0),
        ("the", -2.5),
        ("t", -4.0),
        ("h", -4.0),
        ("e", -3.0),
        ("▁a", -2.0),
        ("a", -3.5),
        ("b", -4.0),
        ("c", -4.0),
        ("s", -4.0),
        ("'", -5.0),
        (",", -5.0),
        ("日", -6.0),
        ("本", -6.0),
        ("日本", -7.0),
        ("é", -5.0),
        ("fi", -5.0),
        ("x", -4.0),
    ] {
        tokens.push(p.to_string());
        types.push(TokenType::Normal);
        scores.push(score);
    }
    let mut vocab = Vocab::new(VocabKind::Ugm, tokens);
    vocab.token_types = types;
    vocab.scores = scores;
    vocab.precompiled_charsmap = charsmap(&[
        ("Ａ", "a"),
        ("ＡＢ", "ab"),
        ("ﬁ", "fi"),
        ("\t", " "),
        ("\n", " "),
        ("\u{3000}", " "),
        ("\u{7}", ""),
    ]);
    vocab.add_space_prefix = Some(true);
    vocab.remove_extra_whitespaces = Some(true);
    Tokenizer::from_parts(vocab).unwrap()
}

const REPLACEMENT: char = '\u{FFFD}';

fn real(file: &str) -> Option<Tokenizer> {
    let dir = match std::env::var_os("REALM_MODELS") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/realm/models")
        }
    };
    let path = dir.join(file);
    if !path.exists() {
        eprintln!(
            "skipping real-model properties: {} not found",
            path.display()
        );
        return None;
    }
    let f = GgufFile::open(path).ok()?;
    Tokenizer::from_metadata(f.metadata()).ok()
}

fn tokenizers() -> &'static [Tokenizer] {
    static ALL: OnceLock<Vec<Tokenizer>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut v = vec![toy_spm(), toy_bpe(), toy_wpm(), toy_ugm()];
        v.extend(real("gemma-3-270m-q4_k_m.gguf"));
        v.extend(real("SmolLM2-135M-Instruct.Q4_1.gguf"));
        // XLM-RoBERTa's unigram vocabulary with its character map.
        v.extend(real("vocab/ggml-vocab-nomic-bert-moe.gguf"));
        v
    })
}

/// Text with plenty of spaces, punctuation, apostrophes and special-looking
/// pieces besides arbitrary code points.
fn text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<char>().prop_map(String::from),
        Just(" ".to_string()),
        Just("  ".to_string()),
        Just("\n".to_string()),
        Just(" ,".to_string()),
        Just(" 's".to_string()),
        Just(" ' ".to_string()),
        Just("the".to_string()),
        Just("<tag>".to_string()),
        Just("<|im_start|>".to_string()),
        "[a-z]{1,6}",
        "\\PC{1,4}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    // The default configuration (256 cases), so that PROPTEST_CASES sets
    // the case count.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn any_text_encodes_and_round_trips(s in text()) {
        for tok in tokenizers() {
            let ids = tok.encode(&s, false, false).unwrap();
            let with_special = tok.encode(&s, true, true).unwrap();
            prop_assert!(ids.iter().chain(&with_special).all(|&id| (id as usize) < tok.n_vocab()));
            // Byte fallback makes SentencePiece lossless. Byte-level BPE can
            // lose bytes of rare characters whose merges leave the vocabulary
            // (llama.cpp drops them too); see `common_text_round_trips`.
            if tok.kind() == VocabKind::Spm {
                prop_assert_eq!(tok.decode(&ids, false, false).unwrap(), s.as_str());
            }
        }
    }

    #[test]
    fn common_text_round_trips(
        s in "[\\x20-\\x7e\\u{a0}-\\u{24f}\\u{391}-\\u{3c9}\\u{410}-\\u{44f}\\u{4e00}-\\u{4fff}\\u{1f600}-\\u{1f64f}\n\t]{0,40}"
    ) {
        // A unigram model's normalizer folds characters and spaces, so
        // its text does not come back as it was.
        for tok in tokenizers()
            .iter()
            .filter(|t| t.n_vocab() > 1000 && t.kind() != VocabKind::Ugm)
        {
            let ids = tok.encode(&s, false, false).unwrap();
            prop_assert_eq!(tok.decode(&ids, false, false).unwrap(), s.as_str());
        }
    }

    #[test]
    fn streaming_concatenates_to_the_whole_decode(
        ids in prop::collection::vec(any::<u32>(), 0..64),
        special in any::<bool>(),
    ) {
        for tok in tokenizers() {
            let ids: Vec<u32> = ids.iter().map(|&i| i % tok.n_vocab() as u32).collect();
            let whole = tok.decode(&ids, false, special).unwrap();
            let mut stream = tok.stream_decoder(special);
            let mut out = String::new();
            for &id in &ids {
                let part = stream.push(id).unwrap();
                prop_assert!(!part.contains(REPLACEMENT) || whole.contains(REPLACEMENT));
                out.push_str(&part);
            }
            out.push_str(&stream.finish());
            prop_assert_eq!(out, whole);
        }
    }

    #[test]
    fn streaming_text_tokens_never_shows_spurious_replacements(s in text()) {
        for tok in tokenizers() {
            let ids = tok.encode(&s, false, false).unwrap();
            let whole = tok.decode(&ids, false, false).unwrap();
            let mut stream = tok.stream_decoder(false);
            let mut out = String::new();
            for &id in &ids {
                out.push_str(&stream.push(id).unwrap());
                prop_assert!(!out.contains(REPLACEMENT) || whole.contains(REPLACEMENT));
            }
            out.push_str(&stream.finish());
            prop_assert_eq!(out, whole);
        }
    }
}

/// A stream decoder shows the special tokens it is told to (a chat
/// format's markers, llama.cpp's preserved tokens) and hides the others.
#[test]
fn shown_special_tokens_keep_their_text() {
    let mut checked = 0;
    for tok in tokenizers() {
        let Some(eos) = tok.eos() else { continue };
        let piece = tok.token_to_piece(eos, true).unwrap().to_vec();
        if piece.is_empty() || !tok.token_to_piece(eos, false).unwrap().is_empty() {
            continue;
        }
        let ids = tok.encode("Hi", false, false).unwrap();
        let run = |shown: Vec<u32>| {
            let mut stream = tok.stream_decoder(false).showing(shown);
            let mut out = String::new();
            for &id in ids.iter().chain([eos, ids[0]].iter()) {
                out.push_str(&stream.push(id).unwrap());
            }
            out + &stream.finish()
        };
        let hidden = run(Vec::new());
        let shown = run(vec![eos]);
        assert_eq!(shown.replace(&*String::from_utf8_lossy(&piece), ""), hidden);
        assert_ne!(shown, hidden);
        checked += 1;
    }
    assert!(checked > 0, "no tokenizer has a hidden end-of-text token");
}

#[test]
fn invalid_ids_are_errors_not_panics() {
    for tok in tokenizers() {
        let bad = tok.n_vocab() as u32;
        assert!(tok.decode(&[bad], false, false).is_err());
        assert!(tok.token_to_piece(bad, true).is_err());
        assert!(tok.stream_decoder(false).push(u32::MAX).is_err());
    }
}

#[test]
fn toy_vocabularies_behave() {
    let spm = toy_spm();
    let ids = spm.encode("the日本<tag>x", true, false).unwrap();
    assert_eq!(ids[0], 1, "BOS first");
    assert_eq!(spm.decode(&ids, true, false).unwrap(), "the日本<tag>x");
    // Control tokens are matched only with parse_special.
    assert_eq!(spm.encode("<|ctl|>", false, true).unwrap(), [3]);
    assert!(spm.encode("<|ctl|>", false, false).unwrap().len() > 1);
    let wpm = toy_wpm();
    let ids = wpm.encode("The [MASK] x|日本,Aé", true, true).unwrap();
    let texts: Vec<&str> = ids.iter().map(|&id| wpm.token_text(id).unwrap()).collect();
    assert_eq!(
        texts,
        [
            "[CLS]", "▁the", "[MASK]", "▁x", "▁|", "▁日", "▁本", "▁,", "▁a", "e", "[SEP]"
        ]
    );
    assert_eq!(wpm.decode(&ids, true, false).unwrap(), " the x | 日 本, ae");
    let ugm = toy_ugm();
    let ids = ugm
        .encode("The\tthe  ＡＢ<tag>日本\u{7}x", true, true)
        .unwrap();
    let texts: Vec<&str> = ids.iter().map(|&id| ugm.token_text(id).unwrap()).collect();
    // T: unknown; spaces merged; ＡＢ folded; each fragment prefixed; EOS.
    assert_eq!(
        texts,
        ["▁", "<unk>", "h", "e", "▁the", "▁a", "b", "<tag>", "▁", "日本", "x", "</s>"]
    );
    assert_eq!(
        ugm.decode(&ids, true, false).unwrap(),
        "he the ab<tag> 日本x"
    );
    let bpe = toy_bpe();
    let ids = bpe.encode(" the it's", false, false).unwrap();
    assert_eq!(bpe.token_text(ids[0]).unwrap(), "Ġthe");
    assert_eq!(bpe.decode(&ids, false, false).unwrap(), " the it's");
    assert_eq!(
        bpe.decode(&bpe.encode("a , b", false, false).unwrap(), false, false)
            .unwrap(),
        "a, b"
    );
}

#[test]
fn unknown_pre_tokenizer_is_a_clear_error() {
    let mut vocab = Vocab::new(VocabKind::Bpe, vec!["a".into()]);
    vocab.pre = Some("martian".into());
    let err = Tokenizer::from_parts(vocab).unwrap_err().to_string();
    assert!(err.contains("unsupported pre-tokenizer `martian`"), "{err}");
}

/// XLM-RoBERTa's real character map with bytes changed at random: each
/// copy loads or is refused at load, and one that loads tokenizes any
/// text without a panic.
#[test]
fn damaged_real_charsmaps_load_or_fail_cleanly() {
    let dir = match std::env::var_os("REALM_MODELS") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/realm/models")
        }
    };
    let path = dir.join("vocab/ggml-vocab-nomic-bert-moe.gguf");
    if !path.exists() {
        eprintln!("skipping: {} not found", path.display());
        return;
    }
    let file = GgufFile::open(&path).unwrap();
    let map = Vocab::from_metadata(file.metadata())
        .unwrap()
        .precompiled_charsmap;
    assert!(map.len() > 200_000);
    let tokens = ["<pad>", "</s>", "<unk>", "▁", "a", "▁a", "1", "fi"];
    let text = "Ｈｅｌｌｏ ﬁ ①\u{3000}\t\n\u{0}é\u{301} 日本 😀 \u{FFFF}";
    let (mut loaded, mut refused) = (0, 0);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..300 {
        let mut bytes = map.clone();
        for _ in 0..1 + round % 3 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Mostly the double array (the header, then its units).
            let i = match round % 4 {
                0 => (seed % 8) as usize,
                _ => (seed % bytes.len() as u64) as usize,
            };
            bytes[i] ^= 1 << ((seed >> 40) % 8);
        }
        let mut vocab = Vocab::new(VocabKind::Ugm, tokens.map(String::from).to_vec());
        vocab.scores = vec![0.0, 0.0, 0.0, -1.0, -2.0, -1.5, -2.0, -2.0];
        vocab.precompiled_charsmap = bytes;
        match Tokenizer::from_parts(vocab) {
            Ok(tok) => {
                loaded += 1;
                let ids = tok.encode(text, true, true).unwrap();
                assert!(ids.iter().all(|&id| (id as usize) < tokens.len()));
            }
            Err(e) => {
                assert!(e.to_string().contains("precompiled_charsmap"), "{e}");
                refused += 1;
            }
        }
    }
    println!("damaged charsmaps: {loaded} loaded, {refused} refused");
    assert!(loaded > 0 && refused > 0);
}
