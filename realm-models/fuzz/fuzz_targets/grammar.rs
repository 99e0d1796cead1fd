//! Fuzzes the GBNF parser, the matcher and the JSON schema converter. The
//! input is a grammar (or a schema), then a NUL, then text to match: any
//! of it must give a grammar or an error, never a panic or a stall; a
//! matcher must accept text exactly where it says it would; and every
//! schema the converter takes must give a grammar that parses.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use realm_models::grammar::{schema_to_gbnf, Grammar, Matcher};

fuzz_target!(|data: &[u8]| {
    let (head, text) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(src) = std::str::from_utf8(head) else {
        return;
    };
    if let Ok(g) = Grammar::parse(src) {
        let mut m = Matcher::new(Arc::new(g));
        for chunk in text.chunks(3) {
            let ok = m.accepts(chunk);
            assert_eq!(m.accept(chunk).is_ok(), ok);
            if !ok {
                break;
            }
        }
        let _ = m.is_complete();
    }
    if let Ok(schema) = serde_json::from_str::<serde_json::Value>(src) {
        if let Ok(gbnf) = schema_to_gbnf(&schema) {
            if let Err(e) = Grammar::parse(&gbnf) {
                panic!("the converter wrote a grammar that does not parse: {e}\n{gbnf}");
            }
        }
    }
});
