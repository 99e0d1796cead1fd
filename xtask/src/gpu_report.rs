//! `cargo xtask gpu-report DIR`: the figures a GPU machine's `run.sh` left
//! in DIR (its `$OUT`), Realm's and llama.cpp's side by side, with their
//! ratios and issue 7's floors.
//!
//! Realm's come from `realm bench`'s tables (`bench-MODEL.md`: pp512,
//! tg128 and batched decode), llama.cpp's from llama-bench's table
//! (`llama-bench-MODEL.md`) and llama-batched-bench's log
//! (`llama-batched-MODEL.log`, its S_TG column), all measured in the same
//! run on the same machine. Both benches' tables give the mean of their
//! repetitions.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Result};

/// The models run.sh benchmarks, by the names of its files.
const MODELS: &[&str] = &["smollm2", "gemma3"];

/// The sequences of the batched decode tests.
const SEQUENCES: &[usize] = &[1, 8, 32];

/// The reference: llama.cpp on an H100 on the SmolLM2-shaped
/// model, tokens/s, to set the same run's llama.cpp figures against (the
/// GPU lent may be another).
const REFERENCE: &[(&str, f64)] = &[
    ("pp512", 52_600.0),
    ("tg128", 907.0),
    ("pp512+tg128x1", 780.0),
    ("pp512+tg128x8", 4_400.0),
    ("pp512+tg128x32", 7_100.0),
];

/// Issue 7's floors: the least share of llama.cpp's speed it resolves
/// with, per test (pp512, tg128, batched decode of 32 sequences).
const FLOORS: &[(&str, f64)] = &[("pp512", 0.5), ("tg128", 0.6), ("pp512+tg128x32", 0.5)];

pub fn report(args: &[String]) -> Result<()> {
    let [dir] = args else {
        bail!("gpu-report takes one folder: the output of run.sh");
    };
    print!("{}", report_of(Path::new(dir))?);
    Ok(())
}

/// The report of the run whose outputs are in `dir`.
fn report_of(dir: &Path) -> Result<String> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let mut out = String::new();
    for (file, what) in [("commit.txt", "Realm"), ("gpu.txt", "GPU")] {
        if let Some(text) = read(file) {
            writeln!(out, "{what}: {}", text.trim().replace('\n', "; "))?;
        }
    }
    out.push_str(
        "\n| model | test | Realm t/s | llama.cpp t/s | Realm / llama.cpp | floor | \
         llama.cpp in the issue (H100) |\n",
    );
    out.push_str("| --- | --- | ---: | ---: | ---: | --- | ---: |\n");
    let mut rows = 0;
    for m in MODELS {
        let realm = read(&format!("bench-{m}.md")).map_or_else(Vec::new, |t| table_speeds(&t));
        let llama =
            read(&format!("llama-bench-{m}.md")).map_or_else(Vec::new, |t| table_speeds(&t));
        let batched =
            read(&format!("llama-batched-{m}.log")).map_or_else(Vec::new, |t| batched_speeds(&t));
        if realm.is_empty() && llama.is_empty() && batched.is_empty() {
            continue;
        }
        let mut tests: Vec<(String, Option<f64>)> = ["pp512", "tg128"]
            .iter()
            .map(|t| (t.to_string(), find(&llama, t)))
            .collect();
        for &n in SEQUENCES {
            let speed = batched.iter().find(|(b, _)| *b == n).map(|&(_, s)| s);
            tests.push((format!("pp512+tg128x{n}"), speed));
        }
        for (test, theirs) in tests {
            let ours = find(&realm, &test);
            let ratio = match (ours, theirs) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            };
            let floor = match (find(FLOORS, &test), ratio) {
                (Some(f), Some(r)) => format!("{f}x: {}", if r >= f { "met" } else { "NOT met" }),
                (Some(f), None) => format!("{f}x"),
                (None, _) => "-".into(),
            };
            let num = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            let reference = match *m {
                "smollm2" => find(REFERENCE, &test),
                _ => None,
            };
            writeln!(
                out,
                "| {m} | {test} | {} | {} | {} | {floor} | {} |",
                num(ours),
                num(theirs),
                ratio.map_or("-".into(), |r| format!("{r:.2}x")),
                num(reference)
            )?;
            rows += 1;
        }
    }
    if rows == 0 {
        bail!(
            "{} holds no bench-MODEL.md, llama-bench-MODEL.md or llama-batched-MODEL.log",
            dir.display()
        );
    }
    Ok(out)
}

/// The figure of test `test` in `figures`.
fn find<S: AsRef<str>>(figures: &[(S, f64)], test: &str) -> Option<f64> {
    figures
        .iter()
        .find(|(t, _)| t.as_ref() == test)
        .map(|(_, s)| *s)
}

/// A markdown table's cells, or `None` for a line that is not a row.
fn cells(line: &str) -> Option<Vec<&str>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(str::trim).collect())
}

/// The cells under columns `names` of every row that follows a header
/// row holding them all, in the order of `names`.
fn columns<'a>(text: &'a str, names: &[&str]) -> Vec<Vec<&'a str>> {
    let mut at: Option<Vec<usize>> = None;
    let mut rows = Vec::new();
    for row in text.lines().filter_map(cells) {
        let header: Option<Vec<usize>> = names
            .iter()
            .map(|n| row.iter().position(|c| c == n))
            .collect();
        if header.is_some() {
            at = header;
            continue;
        }
        if let Some(at) = &at {
            rows.extend(
                at.iter()
                    .map(|&i| row.get(i).copied())
                    .collect::<Option<Vec<_>>>(),
            );
        }
    }
    rows
}

/// The mean tokens/s per test of a table as llama-bench and `realm bench`
/// print them: a header with `test` and `t/s` columns, rows such as
/// `| ... | pp512 | 52600.12 ± 310.40 |`.
fn table_speeds(text: &str) -> Vec<(String, f64)> {
    columns(text, &["test", "t/s"])
        .into_iter()
        .filter_map(|c| {
            let speed = c[1].split_whitespace().next()?.parse().ok()?;
            Some((c[0].to_string(), speed))
        })
        .collect()
}

/// llama-batched-bench's S_TG t/s (decode tokens/s of all sequences
/// together) per number of sequences (its `B` column).
fn batched_speeds(text: &str) -> Vec<(usize, f64)> {
    columns(text, &["B", "S_TG t/s"])
        .into_iter()
        .filter_map(|c| Some((c[0].parse().ok()?, c[1].parse().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `realm bench --npl 1,8,32`'s table (figures made up).
    const REALM: &str = "\
realm: loaded smollm2-synth.gguf (272 tensors, cuda:0) in 900 ms
| model | size | params | backend | threads | type_k | type_v | test | t/s |
| --- | ---: | ---: | --- | ---: | --- | --- | ---: | ---: |
| smollm2-synth.gguf | 92.10 MiB | 134.52 M | cuda | 16 | f16 | f16 | pp512 | 30000.50 ± 120.00 |
| smollm2-synth.gguf | 92.10 MiB | 134.52 M | cuda | 16 | f16 | f16 | tg128 | 600.00 ± 4.00 |
| smollm2-synth.gguf | 92.10 MiB | 134.52 M | cuda | 16 | f16 | f16 | pp512+tg128x1 | 590.00 ± 3.00 |
| smollm2-synth.gguf | 92.10 MiB | 134.52 M | cuda | 16 | f16 | f16 | pp512+tg128x8 | 3000.00 ± 30.00 |
| smollm2-synth.gguf | 92.10 MiB | 134.52 M | cuda | 16 | f16 | f16 | pp512+tg128x32 | 3000.00 ± 50.00 |
";

    /// llama-bench's `-o md` table (figures made up).
    const LLAMA: &str = "\
| model                          |       size |     params | backend    | ngl | fa |            test |                  t/s |
| ------------------------------ | ---------: | ---------: | ---------- | --: | -: | --------------: | -------------------: |
| llama ?B Q4_1                  |  92.10 MiB |   134.52 M | CUDA       |  99 | auto |           pp512 |     50000.00 ± 812.35 |
| llama ?B Q4_1                  |  92.10 MiB |   134.52 M | CUDA       |  99 | auto |           tg128 |        900.00 ± 6.02 |

build: 0c1e570 (1)
";

    /// llama-batched-bench's log (figures made up).
    const BATCHED: &str = "\
main: n_kv_max = 20480, n_batch = 2048, n_ubatch = 512, flash_attn = -1, is_pp_shared = 0

|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|
|   512 |    128 |    1 |    640 |    0.010 | 51200.00 |    0.164 |   780.00 |    0.174 |  3678.16 |
|   512 |    128 |    8 |   5120 |    0.080 | 51200.00 |    0.233 |  4400.00 |    0.313 | 16357.83 |
|   512 |    128 |   32 |  20480 |    0.320 | 51200.00 |    0.577 |  7100.00 |    0.897 | 22831.66 |

llama_perf_context_print:        load time =     200.00 ms
";

    #[test]
    fn tables_give_each_tests_mean() {
        let realm = table_speeds(REALM);
        assert_eq!(realm.len(), 5);
        assert_eq!(find(&realm, "pp512"), Some(30000.5));
        assert_eq!(find(&realm, "pp512+tg128x32"), Some(3000.0));
        let llama = table_speeds(LLAMA);
        assert_eq!(
            llama,
            [("pp512".to_string(), 50000.0), ("tg128".to_string(), 900.0)]
        );
        assert_eq!(
            batched_speeds(BATCHED),
            [(1, 780.0), (8, 4400.0), (32, 7100.0)]
        );
        // Text that is not such a table gives nothing.
        assert!(table_speeds("FAILED: bench-smollm2\n| a | b |\n").is_empty());
        assert!(batched_speeds("").is_empty());
    }

    #[test]
    fn the_report_sets_realm_beside_llama_cpp_with_the_floors() {
        let dir = std::env::temp_dir().join(format!("realm-gpu-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(report_of(&dir).is_err(), "an empty folder is an error");
        for (name, text) in [
            ("commit.txt", "bundle of commit 9a849a46320c\n"),
            ("bench-smollm2.md", REALM),
            ("llama-bench-smollm2.md", LLAMA),
            ("llama-batched-smollm2.log", BATCHED),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let report = report_of(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            report.starts_with("Realm: bundle of commit 9a849a46320c\n"),
            "{report}"
        );
        for row in [
            "| smollm2 | pp512 | 30000.5 | 50000.0 | 0.60x | 0.5x: met | 52600.0 |",
            "| smollm2 | tg128 | 600.0 | 900.0 | 0.67x | 0.6x: met | 907.0 |",
            "| smollm2 | pp512+tg128x1 | 590.0 | 780.0 | 0.76x | - | 780.0 |",
            "| smollm2 | pp512+tg128x32 | 3000.0 | 7100.0 | 0.42x | 0.5x: NOT met | 7100.0 |",
        ] {
            assert!(report.contains(row), "{row} not in\n{report}");
        }
        // Gemma 3's files are missing: no rows for it.
        assert!(!report.contains("gemma3"), "{report}");
    }
}
