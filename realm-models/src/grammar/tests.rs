use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn matcher(text: &str) -> Matcher {
    Matcher::new(Arc::new(Grammar::parse(text).unwrap()))
}

/// Whether `text` is a whole sentence of the grammar.
fn full(g: &str, text: &str) -> bool {
    let mut m = matcher(g);
    m.accept(text.as_bytes()).is_ok() && m.is_complete()
}

#[test]
fn literals_classes_and_groups() {
    let g = r#"root ::= "a" [b-d]+ ("x" | "yz")? [^\n]"#;
    assert!(full(g, "abx!"));
    assert!(full(g, "acdyzq"));
    assert!(full(g, "ab\t"));
    assert!(!full(g, "ab\n"));
    assert!(!full(g, "ax!"));
    assert!(!full(g, "abyz"), "needs its last character");
    let mut m = matcher(g);
    assert!(m.accepts(b"abdy"));
    assert!(!m.accepts(b"abdyx"));
}

#[test]
fn repetition_bounds() {
    let g = r#"root ::= "a"{2,4} "b"{3} "c"{1,} "d"{0,1}"#;
    for (text, ok) in [
        ("aabbbc", true),
        ("aaaabbbccd", true),
        ("abbbc", false),
        ("aaaaabbbc", false),
        ("aabbc", false),
        ("aabbbbc", false),
        ("aabbb", false),
        ("aabbbcdd", false),
    ] {
        assert_eq!(full(g, text), ok, "{text}");
    }
    assert!(full("root ::= (\"ab\" [0-9]){2}", "ab1ab2"));
    assert!(!full("root ::= (\"ab\" [0-9]){2}", "ab1ab"));
}

#[test]
fn escapes_comments_and_newlines() {
    // A newline after `|` continues the rule.
    let g = "# a comment\nroot ::= \"\\x41\\u00e9\\t\" ws | # trailing\n  \"\\\"\" \n\nws ::= [ \\t\\n]*\n";
    assert!(full(g, "A\u{e9}\t \n"));
    assert!(full(g, "\""));
    // A newline inside a group continues the rule.
    assert!(full("root ::= (\n \"a\"\n | \"b\"\n)", "b"));
}

#[test]
fn any_character_and_unicode() {
    let g = r#"root ::= "<" . . ">" [ぁ-ゟ]"#;
    assert!(full(g, "<é😀>ぬ"));
    assert!(!full(g, "<é>ぬ"));
    let mut m = matcher(g);
    // A character split across tokens: its first bytes may come alone.
    let e = "é".as_bytes();
    m.accept(b"<").unwrap();
    m.accept(&e[..1]).unwrap();
    m.accept(&e[1..]).unwrap();
    assert!(!m.accepts(&[0x80]), "a stray continuation byte");
    m.accept("x>".as_bytes()).unwrap();
    // The first two bytes of a hiragana may be accepted, those of a
    // character outside the class may not.
    assert!(m.accepts(&"ぬ".as_bytes()[..2]));
    assert!(!m.accepts(&"日".as_bytes()[..2]));
}

#[test]
fn bad_grammars_are_refused() {
    for (g, want) in [
        ("root ::= ", None),
        ("root ::= \"a", Some("unterminated")),
        ("root ::= [a-", Some("unterminated")),
        ("root ::= x", Some("`x` is used")),
        ("a ::= \"x\"", Some("no `root`")),
        ("root ::= \"a\"\nroot ::= \"b\"", Some("twice")),
        ("root ::= a\na ::= \"\" | a \"x\"", Some("left-recursive")),
        (
            "root ::= b\nb ::= c \"x\"\nc ::= \"d\"? b",
            Some("left-recursive"),
        ),
        ("root ::= * \"a\"", Some("repetition needs")),
        ("root ::= \"a\"{3,2}", Some("below")),
        ("root ::= \"a\"{2001}", Some("limited")),
        ("root ::= \"\\q\"", Some("unknown escape")),
        ("root ::= <[12]>", Some("token references")),
        ("root ::= (\"a\"", Some("expected `)`")),
        ("root ::= \"a\" )", Some("end of the line")),
    ] {
        match (Grammar::parse(g), want) {
            (Ok(_), None) => {}
            (Ok(_), Some(w)) => panic!("{g:?} parsed; wanted an error with {w:?}"),
            (Err(e), Some(w)) => assert!(e.to_string().contains(w), "{g:?}: {e}"),
            (Err(e), None) => panic!("{g:?}: {e}"),
        }
    }
    // The empty rule is a grammar of the empty text.
    assert!(full("root ::= ", ""));
    let e = Grammar::parse("root ::= \"a\"\n  \"b\" [").unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");
}

#[test]
fn rejected_text_changes_nothing() {
    let mut m = matcher(r#"root ::= "ab" | "ac""#);
    assert_eq!(m.accept(b"ax"), Err(GrammarError::Rejected));
    m.accept(b"a").unwrap();
    assert!(!m.is_complete());
    m.accept(b"c").unwrap();
    assert!(m.is_complete());
    assert_eq!(m.accept(b"c"), Err(GrammarError::Rejected));
}

/// A grammar too ambiguous to match is an error, soon, not a stall; one
/// merely ambiguous is matched.
#[test]
fn ambiguity_is_bounded() {
    let t = std::time::Instant::now();
    let mut m = matcher(r#"root ::= ((("a"{0,40}){0,40}){0,40}) "b""#);
    let a = vec![b'a'; 64];
    let r = m.accept(&a).and_then(|()| m.accept(b"b"));
    assert_eq!(r, Err(GrammarError::TooComplex));
    assert!(m.overflowed() && !m.accepts(b"b") && !m.is_complete());
    eprintln!("refused in {:?}", t.elapsed());
    assert!(full(
        r#"root ::= ("a"{0,20}){0,20} "b""#,
        &format!("{}b", "a".repeat(300))
    ));
}

/// llama.cpp's own example grammars parse, and accept what they describe.
#[test]
fn llama_cpp_example_grammars() {
    let json = r#"
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional space: by convention, applied in this grammar after literal chars when allowed
ws ::= | " " | "\n" [ \t]{0,20}
"#;
    assert!(full(
        json,
        r#"{"a": [1, 2.5, {"b": null}], "c": "d\n\u00e9"} "#
    ));
    assert!(!full(json, r#"{"a": [1, 2.5,]}"#));
    assert!(!full(json, r#"[1]"#), "the root is an object");
    let arithmetic = r#"root  ::= (expr "=" ws term "\n")+
expr  ::= term ([-+*/] term)*
term  ::= ident | num | "(" ws expr ")" ws
ident ::= [a-z] [a-z0-9_]* ws
num   ::= [0-9]+ ws
ws    ::= [ \t\n]*"#;
    assert!(full(arithmetic, "(a+1)*2= 3\nx=y\n"));
    assert!(!full(arithmetic, "a+=3\n"));
}

#[test]
fn schemas_become_grammars_of_their_documents() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 8},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "maxItems": 2},
            "when": {"type": "string", "format": "date"},
            "ok": {"type": ["boolean", "null"]}
        },
        "required": ["name", "age"]
    });
    let g = schema_to_gbnf(&schema).unwrap();
    let check = |doc: &str| full(&g, doc);
    assert!(check(r#"{"name": "Ada", "age": 36}"#), "{g}");
    assert!(check(r#"{"name":"Ada","age":-3,"tags":["a",3],"ok":null}"#));
    assert!(check(
        "{\n  \"name\": \"x\",\n  \"age\": 0,\n  \"when\": \"2024-02-29\"\n}"
    ));
    assert!(
        !check(r#"{"age": 36, "name": "Ada"}"#),
        "order is the schema's"
    );
    assert!(!check(r#"{"name": "", "age": 1}"#), "minLength");
    assert!(!check(r#"{"name": "123456789", "age": 1}"#), "maxLength");
    assert!(!check(r#"{"name": "a", "age": 1.5}"#), "an integer");
    assert!(!check(r#"{"name": "a", "age": 01}"#), "no leading zero");
    assert!(
        !check(r#"{"name": "a", "age": 1, "tags": ["a", "b", "a"]}"#),
        "maxItems"
    );
    assert!(!check(r#"{"name": "a", "age": 1, "tags": ["c"]}"#), "enum");
    assert!(
        !check(r#"{"name": "a", "age": 1, "extra": 1}"#),
        "no extra properties"
    );
    assert!(
        !check(r#"{"name": "a", "age": 1, "when": "2024-13-01"}"#),
        "a date"
    );
    assert!(
        !check(r#"{"name": "a", "age": 1} "#),
        "nothing after the document"
    );
}

#[test]
fn schema_references_unions_and_extra_properties() {
    let tree = json!({
        "$defs": {"node": {
            "type": "object",
            "properties": {"v": {"type": "number"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            "required": ["v"]
        }},
        "$ref": "#/$defs/node"
    });
    let g = schema_to_gbnf(&tree).unwrap();
    assert!(
        full(
            &g,
            r#"{"v": 1, "kids": [{"v": 2e5}, {"v": -0.5, "kids": []}]}"#
        ),
        "{g}"
    );
    assert!(!full(&g, r#"{"v": 1, "kids": [{"w": 2}]}"#));

    let union = json!({"anyOf": [{"type": "string"}, {"const": {"k": [1, true]}}]});
    let g = schema_to_gbnf(&union).unwrap();
    assert!(full(&g, r#""s""#));
    assert!(full(&g, r#"{"k":[1,true]}"#));
    assert!(!full(&g, "1"));

    let extra = json!({
        "type": "object",
        "properties": {"id": {"type": "integer"}, "idx": {"type": "integer"}},
        "additionalProperties": {"type": "boolean"}
    });
    let g = schema_to_gbnf(&extra).unwrap();
    assert!(
        full(&g, r#"{"id": 1, "i": true, "ids": false, "x": true}"#),
        "{g}"
    );
    assert!(full(&g, r#"{"idx": 1}"#));
    assert!(full(&g, r#"{}"#));
    assert!(
        !full(&g, r#"{"id": 1, "id": true}"#),
        "a named property is not extra"
    );
    assert!(!full(&g, r#"{"idx": 1, "id": 2}"#), "the schema's order");
    assert!(!full(&g, r#"{"x": 1}"#), "extras are booleans");

    // Any object, any value.
    assert!(full(
        &schema_to_gbnf(&json!({"type": "object"})).unwrap(),
        r#"{"a": [1, {"b": "c"}]}"#
    ));
    assert!(!full(
        &schema_to_gbnf(&json!({"type": "object"})).unwrap(),
        "[]"
    ));
    assert!(full(&schema_to_gbnf(&json!({})).unwrap(), "[]"));
    let tuple = json!({"prefixItems": [{"type": "integer"}, {"type": "string", "format": "uuid"}]});
    assert!(full(
        &schema_to_gbnf(&tuple).unwrap(),
        r#"[1, "0123abcd-0000-1111-2222-abcdefABCDEF"]"#
    ));
}

#[test]
fn unsupported_schemas_are_refused_by_path() {
    for (schema, want) in [
        (
            json!({"type": "string", "pattern": "a+"}),
            "#: pattern `a+`: only patterns anchored",
        ),
        (
            json!({"properties": {"n": {"type": "integer", "minimum": 3, "maximum": 2}}}),
            "#/properties/n: the integer's minimum is above",
        ),
        (
            json!({"type": "integer", "minimum": 1e17}),
            "beyond 16 digits",
        ),
        (json!({"allOf": []}), "allOf must be a non-empty array"),
        (
            json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "allOf": [{"$ref": "#/$defs/a"}]}),
            "refers to itself",
        ),
        (
            json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
            "left-recursive",
        ),
        (json!({"type": "strin"}), "unknown type `strin`"),
        (json!({"$ref": "#/$defs/missing"}), "points at nothing"),
        (
            json!({"$ref": "https://example.com/s.json"}),
            "same document",
        ),
        (
            json!({"type": "array", "minItems": 3, "maxItems": 2}),
            "below",
        ),
        (json!([1]), "must be an object"),
    ] {
        let e = schema_to_gbnf(&schema).unwrap_err().to_string();
        assert!(e.contains(want), "{schema}: {e}");
    }
}

/// Integer bounds: exactly the numerals in range, without leading zeros,
/// an open end stopping at 16 digits.
#[test]
fn integer_bounds() {
    let check = |schema: serde_json::Value, lo: i64, hi: i64| {
        let g = schema_to_gbnf(&schema).unwrap();
        for n in lo - 30..=hi + 30 {
            let inside = (lo..=hi).contains(&n);
            assert_eq!(full(&g, &n.to_string()), inside, "{schema} {n}\n{g}");
        }
        assert!(!full(&g, "007"), "{g}");
    };
    check(
        json!({"type": "integer", "minimum": 0, "maximum": 150}),
        0,
        150,
    );
    check(
        json!({"type": "integer", "minimum": 17, "maximum": 1234}),
        17,
        1234,
    );
    check(
        json!({"type": "integer", "exclusiveMinimum": -20, "exclusiveMaximum": -3}),
        -19,
        -4,
    );
    check(
        json!({"type": "integer", "minimum": -75, "maximum": 42}),
        -75,
        42,
    );
    check(
        json!({"type": "integer", "minimum": 2.5, "maximum": 9.9}),
        3,
        9,
    );
    check(json!({"type": "integer", "minimum": 5, "maximum": 5}), 5, 5);
    let at_least = schema_to_gbnf(&json!({"type": "integer", "minimum": 25})).unwrap();
    assert!(full(&at_least, "25") && full(&at_least, "9999999999999999"));
    assert!(
        !full(&at_least, "24") && !full(&at_least, "10000000000000000") && !full(&at_least, "-1")
    );
    let at_most = schema_to_gbnf(&json!({"type": "integer", "maximum": -4})).unwrap();
    assert!(
        full(&at_most, "-4")
            && full(&at_most, "-123456")
            && !full(&at_most, "-3")
            && !full(&at_most, "2")
    );
}

proptest! {
    /// Any range's grammar holds exactly its numbers.
    #[test]
    fn integer_ranges_hold_their_numbers(a in -3000i64..3000, len in 0i64..3000, probe in -7000i64..7000) {
        let g = schema_to_gbnf(&json!({"type": "integer", "minimum": a, "maximum": a + len})).unwrap();
        prop_assert_eq!(full(&g, &probe.to_string()), (a..=a + len).contains(&probe));
    }
}

/// `allOf`: components' properties merged (an `anyOf` component's
/// optional), or their enums intersected.
#[test]
fn all_of_merges_objects_and_intersects_enums() {
    let schema = json!({
        "$defs": {"named": {"properties": {"name": {"type": "string"}}}},
        "allOf": [
            {"$ref": "#/$defs/named"},
            {"type": "object", "properties": {"age": {"type": "integer"}}},
            {"anyOf": [{"properties": {"nick": {"type": "string"}}}]}
        ]
    });
    let g = schema_to_gbnf(&schema).unwrap();
    assert!(full(&g, r#"{"name": "a", "age": 3}"#), "{g}");
    assert!(full(&g, r#"{"name": "a", "age": 3, "nick": "b"}"#));
    assert!(!full(&g, r#"{"name": "a"}"#), "age is required");
    assert!(
        !full(&g, r#"{"name": "a", "age": 3, "x": 1}"#),
        "nothing else"
    );
    let g =
        schema_to_gbnf(&json!({"allOf": [{"enum": ["a", "b", 1]}, {"enum": [1, "b"]}]})).unwrap();
    assert!(
        full(&g, r#""b""#) && full(&g, "1") && !full(&g, r#""a""#),
        "{g}"
    );
}

/// `pattern`: the JSON strings whose contents the expression matches,
/// written as valid JSON (each case's texts are JSON string contents).
#[test]
fn string_patterns() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "^[A-Z]{2}-[0-9]{4}$",
            &["AB-1234"],
            &["AB-123", "ab-1234", "AB1234"],
        ),
        (
            r"^(\+\d{1,3} )?\d{3}-\d{4}$",
            &["555-1234", "+44 555-1234"],
            &["+ 555-1234", "5551234"],
        ),
        (r"^(?:cat|dog)s?$", &["cat", "dogs"], &["cow", "catss"]),
        (
            r"^[\w.-]+@[^@\s]+\.[a-z]{2,}$",
            &["a.b-c@ex.org"],
            &["a@b.c", "a b@ex.org"],
        ),
        (r"^\$\d+(\.\d\d)?$", &["$5", "$10.25"], &["5", "$1.5"]),
        ("^[-a]x[b-]$", &["-xb", "ax-"], &["bxa"]),
        // `.`: any character, escaped where JSON wants it, but a line break.
        (
            "^a.c$",
            &["abc", r#"a\"c"#, r"a\u0041c", "aéc"],
            &[r#"a"c"#, "ac", r"a\nc"],
        ),
        // A quote or backslash the pattern asks for is written escaped.
        (r#"^say "hi"$"#, &[r#"say \"hi\""#], &[r#"say "hi""#]),
        (r#"^["\\]+$"#, &[r#"\"\\"#], &[r#"""#, r"\"]),
        (r"^a\tb\nc$", &[r"a\tb\nc"], &["a\tb\nc"]),
        // A negated class never gives a raw quote, backslash or control.
        (
            "^[^@]+$",
            &["abc", "é"],
            &[r#"a"b"#, r#"a\"b"#, "a@b", "a\tb"],
        ),
    ];
    for (pattern, yes, no) in cases {
        let g = schema_to_gbnf(&json!({"type": "string", "pattern": pattern})).unwrap();
        for y in *yes {
            assert!(
                full(&g, &format!("\"{y}\"")),
                "{pattern} should take {y}\n{g}"
            );
            // And what it takes is JSON.
            serde_json::from_str::<String>(&format!("\"{y}\"")).unwrap();
        }
        for n in *no {
            assert!(
                !full(&g, &format!("\"{n}\"")),
                "{pattern} should refuse {n}\n{g}"
            );
        }
    }
}

/// One to four words of up to three letters.
fn words() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[ab]{0,3}", 1..5)
}

proptest! {
    /// For a grammar `root ::= ("w1" | "w2" | ...)+`, the matcher accepts
    /// exactly the concatenations of the words, and says a prefix can go on
    /// exactly when it begins one.
    #[test]
    fn matcher_agrees_with_brute_force(ws in words(), text in "[abc]{0,6}") {
        let ws: Vec<String> = ws.into_iter().filter(|w| !w.is_empty()).collect();
        prop_assume!(!ws.is_empty());
        let alts: Vec<String> = ws.iter().map(|w| format!("\"{w}\"")).collect();
        let g = format!("root ::= ({})+", alts.join(" | "));
        // Every concatenation of 1..=6 words up to 6 characters.
        let mut sentences = std::collections::HashSet::new();
        let mut frontier = vec![String::new()];
        while let Some(s) = frontier.pop() {
            for w in &ws {
                let t = format!("{s}{w}");
                if t.len() <= 9 && sentences.insert(t.clone()) {
                    frontier.push(t);
                }
            }
        }
        let mut m = matcher(&g);
        let prefix_ok = sentences.iter().any(|s| s.starts_with(&text));
        prop_assert_eq!(m.accepts(text.as_bytes()), prefix_ok);
        if prefix_ok {
            m.accept(text.as_bytes()).unwrap();
            prop_assert_eq!(m.is_complete(), sentences.contains(&text));
        }
    }

    /// Parsing arbitrary text never panics.
    #[test]
    fn parsing_never_panics(text in "[ -~\n\u{e9}]{0,40}") {
        let _ = Grammar::parse(&text);
        let _ = Grammar::parse(&format!("root ::= {text}"));
    }
}
