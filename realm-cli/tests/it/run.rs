//! `realm run`, `realm bench`, `realm tokenize` and `realm chat-template` on
//! the real models, run as a user runs them.

use std::process::Command;

use crate::common;

use common::{cached, guest, realm};
use realm_core::catalog;
use serde_json::{json, Value};

/// The README's demo question, as `cargo xtask demo` asks it.
const DEMO: [&str; 11] = [
    "run",
    "smollm2",
    "--chat",
    "--temp",
    "0",
    "-n",
    "64",
    "--system",
    "Answer in one short English sentence.",
    "-p",
    "Which city is the capital of France?",
];

/// The README's demo, natively.
#[test]
fn run_chat_answers_paris() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let (ok, stdout, stderr) = realm(&DEMO);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(stderr.contains("EndOfGeneration"), "{stderr}");
    // --ignore-eos: on to the limit, the answer first.
    let mut args = DEMO.to_vec();
    args.push("--ignore-eos");
    let (ok, longer, stderr) = realm(&args);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("generated 64 tokens"), "{stderr}");
    assert!(longer.starts_with(stdout.trim_end()), "{longer}");
}

/// A plain prompt's special-token text is the tokens, as llama-completion
/// reads it: the demo's conversation written out by hand gets the demo's
/// answer, natively and in the guest.
#[test]
fn run_reads_special_tokens_in_the_prompt() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let (ok, answer, stderr) = realm(&DEMO);
    assert!(ok, "{stderr}");
    let raw = "<|im_start|>system\nAnswer in one short English sentence.<|im_end|>\n\
               <|im_start|>user\nWhich city is the capital of France?<|im_end|>\n\
               <|im_start|>assistant\n";
    let mut args = vec!["run", "smollm2", "--temp", "0", "-n", "64", "-p", raw];
    let (ok, out, stderr) = realm(&args);
    assert!(ok, "{stderr}");
    assert_eq!(out.strip_prefix(raw), Some(answer.as_str()), "{out:?}");
    if let Some(guest) = guest() {
        args.extend(["--wasm", "--guest", &guest]);
        let (ok, out, stderr) = realm(&args);
        assert!(ok, "{stderr}");
        assert_eq!(out.strip_prefix(raw), Some(answer.as_str()), "{out:?}");
    }
}

/// The prompt's escapes are read (`\n` a line break), as llama.cpp reads
/// them, unless `--no-escape`; a prompt file's last line break is dropped.
#[test]
fn run_reads_escapes_unless_told_not_to() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let args = [
        "run",
        "smollm2",
        "-p",
        r"Hello\nWorld",
        "-n",
        "1",
        "--temp",
        "0",
    ];
    let (ok, out, stderr) = realm(&args);
    assert!(ok, "{stderr}");
    assert!(out.starts_with("Hello\nWorld"), "{out:?}");
    let mut literal = args.to_vec();
    literal.push("--no-escape");
    let (ok, out, stderr) = realm(&literal);
    assert!(ok, "{stderr}");
    assert!(out.starts_with(r"Hello\nWorld"), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.txt");
    std::fs::write(&file, "Hello\n").unwrap();
    let (ok, from_file, stderr) = realm(&[
        "run",
        "smollm2",
        "-f",
        file.to_str().unwrap(),
        "-n",
        "3",
        "--temp",
        "0",
    ]);
    assert!(ok, "{stderr}");
    let (_, inline, _) = realm(&["run", "smollm2", "-p", "Hello", "-n", "3", "--temp", "0"]);
    assert_eq!(from_file, inline);
    // --no-display-prompt: the continuation alone.
    let (ok, bare, stderr) = realm(&[
        "run",
        "smollm2",
        "-p",
        "Hello",
        "-n",
        "3",
        "--temp",
        "0",
        "--no-display-prompt",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(format!("Hello{bare}"), inline);
    // -n -2: until the context is full.
    let (ok, _, stderr) = realm(&[
        "run",
        "smollm2",
        "-p",
        "Hello",
        "-n",
        "-2",
        "-c",
        "24",
        "--ignore-eos",
    ]);
    assert!(ok, "{stderr}");
    let prompt: usize = stderr
        .split("prompt ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        stderr.contains(&format!("generated {} tokens", 24 - prompt)),
        "{stderr}"
    );
}

#[test]
fn run_streams_prompt_then_continuation_and_seeds_repeat() {
    if !cached(&catalog::GEMMA3) {
        return;
    }
    let args = [
        "run",
        "gemma3",
        "-p",
        "The quick brown fox",
        "-n",
        "12",
        "--seed",
        "42",
    ];
    let (ok, a, stderr) = realm(&args);
    assert!(ok, "{stderr}");
    assert!(
        a.starts_with("The quick brown fox") && a.len() > "The quick brown fox".len() + 5,
        "{a}"
    );
    let (_, b, _) = realm(&args);
    assert_eq!(a, b, "the same seed must give the same text");
}

/// `--prompt-cache`: a second run reuses the prompt's state and writes
/// what a run without the cache writes (sampled, with a repeat penalty,
/// which sees the whole prompt either way); a longer prompt reuses the
/// shared beginning; `--prompt-cache-all` keeps the answer too; another
/// model's state is reported and ignored; `--prompt-cache-ro` writes
/// nothing.
#[test]
fn prompt_caches_skip_what_ran_before() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompt.state");
    let cache = file.to_str().unwrap();
    let prompt = "A short story about a lighthouse keeper and a storm. Once upon a time";
    let args = |p: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["run", "smollm2", "-p", p, "-n", "16", "--seed", "5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["--repeat-penalty", "1.3"].iter().map(|s| s.to_string()));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let (ok, out, err) = realm(&a);
        assert!(ok, "{err}");
        (out, err)
    };
    let (plain, _) = run(args(prompt, &[]));
    let (first, err) = run(args(prompt, &["--prompt-cache", cache]));
    assert_eq!(first, plain);
    assert!(err.contains("is new") && err.contains("saved"), "{err}");
    let n = std::fs::metadata(&file).unwrap().len();
    let (second, err) = run(args(prompt, &["--prompt-cache", cache]));
    assert_eq!(second, plain);
    assert!(
        err.contains("tokens reused") && !err.contains("saved"),
        "{err}"
    );
    assert!(err.contains("prompt 1 tokens"), "{err}");

    let longer = format!("{prompt} there was");
    let (_, err) = run(args(
        &longer,
        &["--prompt-cache", cache, "--prompt-cache-ro"],
    ));
    assert!(err.contains("prompt 2 tokens"), "{err}");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), n);
    let (_, err) = run(args(
        &longer,
        &["--prompt-cache", cache, "--prompt-cache-all"],
    ));
    assert!(err.contains("saved"), "{err}");
    assert!(std::fs::metadata(&file).unwrap().len() > n);

    if cached(&catalog::GEMMA3) {
        let (ok, _, err) = realm(&[
            "run",
            "gemma3",
            "-p",
            prompt,
            "-n",
            "2",
            "--prompt-cache",
            cache,
        ]);
        assert!(ok && err.contains("another model"), "{err}");
    }
}

#[test]
fn bench_reports_llama_bench_fields() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let (ok, stdout, stderr) = realm(&[
        "bench", "smollm2", "-p", "32", "-n", "8", "-r", "2", "--json",
    ]);
    assert!(ok, "{stderr}");
    let records: Value = serde_json::from_str(&stdout).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (
            records[0]["n_prompt"].as_u64(),
            records[0]["n_gen"].as_u64()
        ),
        (Some(32), Some(0))
    );
    assert_eq!(
        (
            records[1]["n_prompt"].as_u64(),
            records[1]["n_gen"].as_u64()
        ),
        (Some(0), Some(8))
    );
    for r in records {
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
        assert_eq!(r["samples_ts"].as_array().unwrap().len(), 2);
        assert_eq!(r["n_depth"], 0);
        assert_eq!((&r["type_k"], &r["type_v"]), (&json!("f32"), &json!("f32")));
    }
    let (ok, table, _) = realm(&["bench", "smollm2", "-p", "16", "-n", "0", "-r", "1"]);
    assert!(ok && table.contains("| pp16 |"), "{table}");
    assert!(!table.contains("type_k"), "{table}");
    // A KV cache of another type than the default says so, as llama-bench.
    let (ok, table, stderr) = realm(&[
        "bench",
        "smollm2",
        "-p",
        "16",
        "-n",
        "0",
        "-r",
        "1",
        "--cache-type",
        "f16",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        table.contains("| type_k | type_v | test |") && table.contains("| f16 | f16 | pp16 |"),
        "{table}"
    );
    // After a prefilled context, as llama-bench's -d.
    let (ok, table, stderr) = realm(&[
        "bench", "smollm2", "-p", "16", "-n", "2", "-d", "40", "-b", "16", "-r", "2",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        table.contains("| pp16 @ d40 |") && table.contains("| tg2 @ d40 |"),
        "{table}"
    );
}

#[test]
fn tokenize_and_chat_template_use_the_models_own_data() {
    if !cached(&catalog::SMOLLM2) || !cached(&catalog::GEMMA3) {
        return;
    }
    let (ok, stdout, stderr) = realm(&[
        "tokenize",
        "smollm2",
        "<|im_start|>Hello world",
        "--special",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["ids"], serde_json::json!([1, 19556, 905]));
    let (_, stdout, _) = realm(&["tokenize", "smollm2", "<|im_start|>", "--json"]);
    let plain: Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        plain["ids"].as_array().unwrap().len() > 1,
        "without --special the marker is plain text"
    );
    let (ok, stdout, stderr) = realm(&["chat-template", "gemma3"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("<bos><start_of_turn>user\nYou are a helpful assistant.\n\nHello!"),
        "{stdout}"
    );
    assert!(stdout.ends_with("<start_of_turn>model\n"), "{stdout}");
    // --chat-template: a built-in one instead of the model's, with the
    // model's BOS text; a name that is no template is an error.
    let (ok, stdout, stderr) = realm(&["chat-template", "smollm2", "--chat-template", "gemma"]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with("<|im_start|><start_of_turn>user\nYou are a helpful assistant."),
        "{stdout}"
    );
    let (ok, _, stderr) = realm(&[
        "run",
        "smollm2",
        "--chat",
        "-p",
        "Hi",
        "--chat-template",
        "llama9",
    ]);
    assert!(!ok && stderr.contains("llama9"), "{stderr}");
}

/// `realm chat-template --tools --parse`: replies read as the server reads
/// them under the template's tool format and reasoning, one JSON line
/// each; the format is named on stderr.
#[test]
fn chat_template_reads_replies_with_tools() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools.json");
    let replies = dir.path().join("replies.json");
    std::fs::write(
        &tools,
        json!([{"type": "function", "function": {"name": "now"}}]).to_string(),
    )
    .unwrap();
    std::fs::write(
        &replies,
        json!([
            "<think>\nTime?\n</think>\n\nSure.\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>",
            "<think>Hm",
            "<tool_call>\n{\"name\": \"later\"}\n</tool_call>",
        ])
        .to_string(),
    )
    .unwrap();
    let template = "<think><tool_call>{{ messages[0].content }}";
    let (ok, stdout, stderr) = realm(&[
        "chat-template",
        "smollm2",
        "--chat-template",
        template,
        "--tools",
        tools.to_str().unwrap(),
        "--parse",
        replies.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("tool calls: hermes"), "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            json!({"content": "Sure.", "reasoning_content": "Time?",
                   "tool_calls": [{"name": "now", "arguments": "{}"}]}),
            json!({"content": "", "reasoning_content": "Hm", "tool_calls": []}),
            json!({"content": "<tool_call>\n{\"name\": \"later\"}\n</tool_call>",
                   "reasoning_content": "", "tool_calls": []}),
        ]
    );
}

/// Two turns of `realm chat`: the second turn runs only its new tokens.
#[test]
fn chat_keeps_the_conversation_in_the_cache() {
    use std::io::Write;
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    // On Realm's CPU backend, and on the GPU backend (candle's CPU device).
    for device in ["cpu", "candle-cpu"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_realm"))
            .args([
                "chat", "smollm2", "--temp", "0", "-n", "24", "--device", device,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"Hi, my name is Ada.\nWhat is my name?\n\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{device}: {stderr}");
        let in_context: Vec<usize> = stderr
            .lines()
            .filter_map(|l| {
                l.split('(')
                    .nth(1)?
                    .split(" in context")
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        assert_eq!(in_context.len(), 2, "{device}: {stderr}");
        assert!(in_context[1] > in_context[0], "{device}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.matches("> ").count(), 3, "{device}: {stdout}");
    }
    // `cpu` is Realm's backend, which has no index.
    let (ok, _, stderr) = realm(&["chat", "smollm2", "--device", "cpu:0"]);
    assert!(!ok && stderr.contains("candle-cpu"), "{stderr}");
}

/// `--context-shift` runs past a full context: `run` generates all it was
/// asked for, the same text as without a shift until the context filled,
/// natively and in a wasm tenant; `chat` takes turns that would no longer
/// fit.
#[test]
fn context_shift_goes_on_past_a_full_context() {
    use std::io::Write;
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let run = [
        "run",
        "smollm2",
        "-p",
        "Once upon a time",
        "-n",
        "100",
        "-c",
        "48",
        "--temp",
        "0",
    ];
    let (ok, plain, stderr) = realm(&run);
    assert!(ok && stderr.contains("(ContextFull)"), "{stderr}");
    let mut shifting = run.to_vec();
    shifting.extend(["--context-shift", "--keep", "-1"]);
    let (ok, out, stderr) = realm(&shifting);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("generated 100 tokens"), "{stderr}");
    assert!(stderr.contains("the context shifted"), "{stderr}");
    assert!(
        out.starts_with(plain.trim_end_matches('\n')),
        "{plain:?} {out:?}"
    );
    assert!(out.len() > plain.len());
    // A wasm tenant shifts its session through the host: the same text.
    if let Some(guest) = guest() {
        shifting.extend(["--wasm", "--guest", &guest]);
        let (ok, wasm, stderr) = realm(&shifting);
        assert!(ok, "{stderr}");
        assert!(stderr.contains("the context shifted"), "{stderr}");
        assert_eq!(wasm, out);
    }

    let turns = b"Hi, my name is Ada.\nTell me a story about a dragon.\nAnd another one.\n\n";
    let chat = |extra: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_realm"))
            .args(["chat", "smollm2", "--temp", "0", "-n", "40", "-c", "128"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(turns).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, stderr) = chat(&[]);
    assert!(!ok && stderr.contains("no longer fits"), "{stderr}");
    let (ok, stderr) = chat(&["--context-shift"]);
    assert!(ok, "{stderr}");
}

/// The demo through the wasm guest: same answer as natively, with f32 KV
/// caches and with f16 ones.
#[test]
fn run_wasm_answers_like_native() {
    let Some(guest) = guest() else { return };
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    for cache in ["f32", "f16"] {
        let mut args = DEMO.to_vec();
        args.extend(["--cache-type", cache]);
        let (ok, native, stderr) = realm(&args);
        assert!(ok, "{stderr}");
        args.extend(["--wasm", "--guest", &guest]);
        let (ok, wasm, stderr) = realm(&args);
        assert!(ok, "{stderr}");
        assert!(stderr.contains("wasm tenant"), "{stderr}");
        assert_eq!(native, wasm, "{cache}");
        assert!(wasm.contains("Paris"), "{cache}: {wasm}");
    }
}

/// LoRA adapters on the command line: `--lora` and `--lora-scaled` run
/// the same text natively and in a wasm tenant, and move it from the
/// model's own; `--prompt-cache` does not go with them.
#[test]
fn run_with_lora_adapters_natively_and_in_a_tenant() {
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("realm-run-lora-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lora = dir.join("a.gguf");
    let lora = lora.to_str().unwrap();
    let (ok, _, err) = realm(&[
        "synth",
        "smollm2",
        "--lora",
        "8",
        "--alpha",
        "16",
        "--amplitude",
        "0.15",
        "-o",
        lora,
    ]);
    assert!(ok, "{err}");
    let story = [
        "run",
        "smollm2",
        "-p",
        "Once upon a time,",
        "-n",
        "24",
        "--temp",
        "0",
    ];
    let with = |extra: &[&str]| {
        let mut args = story.to_vec();
        args.extend(extra);
        let (ok, out, err) = realm(&args);
        assert!(ok, "{err}");
        out
    };
    let plain = with(&[]);
    let adapted = with(&["--lora", lora]);
    assert_ne!(plain, adapted);
    assert_eq!(with(&["--lora-scaled", &format!("{lora}:1")]), adapted);
    assert_eq!(with(&["--lora-scaled", &format!("{lora}:0")]), plain);
    if let Some(guest) = guest() {
        assert_eq!(
            with(&["--lora", lora, "--wasm", "--guest", &guest]),
            adapted
        );
    }
    // Merged into the model's weights (f16), it runs with no adapter.
    let merged = dir.join("merged.gguf");
    let merged = merged.to_str().unwrap();
    let (ok, _, err) = realm(&["export-lora", "smollm2", "--lora", lora, "-o", merged]);
    assert!(ok && err.contains("210 tensors merged, 62 copied"), "{err}");
    let mut args = story.to_vec();
    args[1] = merged;
    let (ok, out, err) = realm(&args);
    assert!(ok && out.len() > "Once upon a time,".len(), "{err}");
    let (ok, _, err) = realm(&["export-lora", "smollm2", "-o", merged]);
    assert!(!ok && err.contains("give the adapters"), "{err}");
    let mut args = story.to_vec();
    let cache = dir.join("cache.bin");
    args.extend(["--lora", lora, "--prompt-cache", cache.to_str().unwrap()]);
    let (ok, _, err) = realm(&args);
    assert!(!ok && err.contains("does not go with LoRA"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_wasm_reports_both_tests() {
    let Some(guest) = guest() else { return };
    if !cached(&catalog::SMOLLM2) {
        return;
    }
    let (ok, stdout, stderr) = realm(&[
        "bench", "smollm2", "-p", "24", "-n", "6", "-r", "1", "--json", "--wasm", "--guest", &guest,
    ]);
    assert!(ok, "{stderr}");
    let records: Value = serde_json::from_str(&stdout).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert!(records[0]["backends"]
        .as_str()
        .unwrap()
        .starts_with("wasm+"));
    assert!(records[0]["n_prompt"].as_u64().unwrap() >= 20);
    assert_eq!(records[1]["n_gen"].as_u64(), Some(6));
    assert!(records.iter().all(|r| r["avg_ts"].as_f64().unwrap() > 0.0));
    // The guest prefills in chunks of its own, not -b's.
    assert!(records.iter().all(|r| r["n_batch"] == 64), "{stdout}");
    assert!(records.iter().all(|r| r["type_k"] == "f32"), "{stdout}");
    // Tenants' KV caches of another type, which the record names.
    let (ok, stdout, stderr) = realm(&[
        "bench",
        "smollm2",
        "-p",
        "8",
        "-n",
        "2",
        "-r",
        "1",
        "--json",
        "--wasm",
        "--guest",
        &guest,
        "--cache-type",
        "f16",
    ]);
    assert!(ok, "{stderr}");
    let records: Value = serde_json::from_str(&stdout).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r["type_k"] == "f16" && r["type_v"] == "f16"),
        "{stdout}"
    );
}

/// `realm synth` writes a model of SmolLM2's layout that `realm bench` runs
/// on the GPU code path (candle's CPU device here); asking for CUDA in a
/// build without it is a clear error.
#[test]
fn synth_then_bench_on_the_gpu_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("smollm2-synth.gguf");
    let p = path.to_str().unwrap();
    let (ok, _, stderr) = realm(&["synth", "smollm2", "-o", p, "--seed", "3"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = realm(&["info", p]);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = realm(&[
        "bench",
        p,
        "-p",
        "8",
        "-n",
        "2",
        "-r",
        "1",
        "--json",
        "--device",
        "candle-cpu",
        "--npl",
        "2",
        "-d",
        "5",
    ]);
    assert!(ok, "{stderr}");
    let records: Value = serde_json::from_str(&stdout).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 3, "pp, tg and batched decode");
    assert_eq!(records[2]["n_gen"], 2);
    // The batched record says how many sequences, as llama-batched-bench's
    // `pl`, and holds the timed runs only (not the warm-up's).
    assert_eq!(
        (&records[2]["pl"], &records[2]["test"]),
        (&json!(2), &json!("pp8+tg2x2"))
    );
    assert!(records[..2].iter().all(|r| r.get("pl").is_none()));
    assert!(records
        .iter()
        .all(|r| r["samples_ts"].as_array().map(Vec::len) == Some(1)));
    assert_eq!(records[0]["backends"], "candle-cpu+fused");
    assert_eq!(records[0]["n_prompt"], 8);
    assert_eq!(records[1]["n_gen"], 2);
    assert_eq!(
        (&records[0]["n_depth"], &records[1]["n_depth"]),
        (&Value::from(5), &Value::from(5))
    );
    assert!(records.iter().all(|r| r["avg_ts"].as_f64().unwrap() > 0.0));
    if !cfg!(feature = "cuda") {
        let (ok, _, stderr) = realm(&["bench", p, "-r", "1", "--device", "cuda:0"]);
        assert!(!ok);
        assert!(stderr.contains("--features cuda"), "{stderr}");
    }
    let (ok, _, stderr) = realm(&["synth", "no-such-layout", "-o", p]);
    assert!(!ok);
    assert!(stderr.contains("built-in layout"), "{stderr}");
}

/// A gpt-oss whose matrices are MXFP4, which candle cannot multiply: on
/// the GPU backend it is refused with the option that runs it, and with
/// `--dequantize f16` it runs.
#[test]
fn dequantize_runs_mxfp4_on_the_gpu_backend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpt-oss-mxfp4.gguf");
    let p = path.to_str().unwrap();
    let (ok, _, stderr) = realm(&[
        "synth",
        "tiny-gpt-oss",
        "-o",
        p,
        "--matrix-type",
        "mxfp4",
        "--seed",
        "3",
    ]);
    assert!(ok, "{stderr}");
    let bench = [
        "bench",
        p,
        "-p",
        "8",
        "-n",
        "2",
        "-r",
        "1",
        "--json",
        "--device",
        "candle-cpu",
    ];
    let (ok, _, stderr) = realm(&bench);
    assert!(!ok);
    assert!(
        stderr.contains("mxfp4") && stderr.contains("--dequantize f16"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = realm(&[&bench[..], &["--dequantize", "f16"]].concat());
    assert!(ok, "{stderr}");
    let records: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(records.as_array().map(Vec::len), Some(2), "{stdout}");
}

/// `chat` with a template that writes earlier replies back otherwise
/// than they were generated (here: their first character dropped, as a
/// thinking template drops a reply's thinking): the next turn keeps what
/// the rewritten conversation begins with. A tiny llama keeps its cache
/// up to there; a tiny Qwen 3.5, whose delta nets cannot forget tokens,
/// up to its checkpoint 4 tokens before the first turn's end, and
/// nothing with `--ctx-checkpoints 0`; the replies are the same.
#[test]
fn chat_keeps_what_a_rewritten_conversation_begins_with() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("realm-chat-rewrite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tpl = dir.join("drop-first.jinja");
    std::fs::write(
        &tpl,
        "{% for m in messages %}<|{{ m.role }}|>{% if m.role == 'assistant' %}\
         {{ m.content[1:] }}{% else %}{{ m.content }}{% endif %}\n{% endfor %}\
         {% if add_generation_prompt %}<|assistant|>{% endif %}",
    )
    .unwrap();
    let chat = |model: &str, checkpoints: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_realm"))
            .args([
                "chat",
                model,
                "--temp",
                "0",
                "-n",
                "8",
                "--chat-template-file",
            ])
            .arg(&tpl)
            .args(["--ctx-checkpoints", checkpoints])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let turns = b"abc def ghi\njkl mno\n\n";
        child.stdin.take().unwrap().write_all(turns).unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        // Each turn's "(N in context, K reused)".
        let counts: Vec<(usize, usize)> = stderr
            .lines()
            .filter_map(|l| {
                let (ctx, rest) = l.split('(').nth(1)?.split_once(" in context, ")?;
                Some((ctx.parse().ok()?, rest.split(' ').next()?.parse().ok()?))
            })
            .collect();
        assert_eq!(counts.len(), 2, "{stderr}");
        (String::from_utf8_lossy(&out.stdout).to_string(), counts)
    };
    for layout in ["tiny-qwen35", "tiny-llama"] {
        let path = dir.join(format!("{layout}.gguf"));
        let p = path.to_str().unwrap();
        let (ok, _, err) = realm(&["synth", layout, "--seed", "5", "-o", p]);
        assert!(ok, "{err}");
        let (text, counts) = chat(p, "4");
        let (plain, plain_counts) = chat(p, "0");
        assert_eq!(text, plain, "{layout}");
        assert_eq!(counts[0].1, 0, "{layout}");
        // The first turn's prompt: what it holds less its 8 tokens.
        let first_prompt = counts[0].0 - 8;
        match layout {
            "tiny-qwen35" => {
                assert_eq!(counts[1].1, first_prompt - 4, "{layout}");
                assert_eq!(plain_counts[1].1, 0, "{layout}");
            }
            _ => {
                assert!(counts[1].1 >= first_prompt, "{layout}: {counts:?}");
                assert_eq!(plain_counts, counts, "{layout}");
            }
        }
    }
}
