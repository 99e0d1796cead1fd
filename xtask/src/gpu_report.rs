//! `cargo xtask gpu-report PATH`: the figures a GPU machine's `run.sh`
//! left, Realm's and llama.cpp's side by side, with their ratios and issue
//! 7's floors; then the steps that failed, ran out of time or were
//! skipped, memcheck's verdict, and Nsight Compute's kernel-by-kernel
//! tables. PATH is the archive `run.sh` packs (`realm-gpu.tar.gz`), a
//! folder holding it (the device tool's), or a folder of unpacked outputs.
//!
//! Realm's figures come from `realm bench`'s tables (`bench-MODEL.md`:
//! pp512, tg128 and batched decode), llama.cpp's from llama-bench's table
//! (`llama-bench-MODEL.md`) and llama-batched-bench's log
//! (`llama-batched-MODEL.log`, its S_TG column), all measured in the same
//! run on the same machine. Both benches' tables give the mean of their
//! repetitions.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{root, status};

/// The models run.sh benchmarks, by the names of its files.
const MODELS: &[&str] = &["smollm2", "gemma3"];

/// The sequences of the batched decode tests.
const SEQUENCES: &[usize] = &[1, 8, 32];

/// The issue's reference: llama.cpp on an H100 on the SmolLM2-shaped
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

/// The archive run.sh leaves in `$OUT`.
const ARCHIVE: &str = "realm-gpu.tar.gz";

/// Kernels named in a kernel table; the rest are summed in one row.
const TOP_KERNELS: usize = 12;

pub fn report(args: &[String]) -> Result<()> {
    let [path] = args else {
        bail!("gpu-report takes one path: run.sh's archive, or a folder of its outputs");
    };
    let dir = outputs(Path::new(path), &root().join("target/gpu-report"))?;
    print!("{}", report_of(&dir)?);
    Ok(())
}

/// The folder of run.sh's outputs at `path`: unpacked into `to` (emptied
/// first) when `path` is the archive or a folder holding it.
fn outputs(path: &Path, to: &Path) -> Result<PathBuf> {
    let archive = if path.is_dir() {
        path.join(ARCHIVE)
    } else {
        path.to_path_buf()
    };
    if !archive.is_file() {
        return Ok(path.to_path_buf());
    }
    if to.exists() {
        std::fs::remove_dir_all(to).with_context(|| format!("clearing {}", to.display()))?;
    }
    std::fs::create_dir_all(to)?;
    let mut tar = Command::new("tar");
    tar.arg("xzf").arg(&archive).arg("-C").arg(to);
    status(tar).with_context(|| format!("unpacking {}", archive.display()))?;
    Ok(to.join("out"))
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
    let summary = read("summary.txt");
    if rows == 0 && summary.is_none() {
        bail!(
            "{} holds no summary.txt, bench-MODEL.md, llama-bench-MODEL.md or \
             llama-batched-MODEL.log",
            dir.display()
        );
    }
    if rows == 0 {
        out.push_str("| (no figures) | | | | | | |\n");
    }
    if let Some(summary) = summary {
        let troubles: Vec<&str> = summary
            .lines()
            .filter(|l| {
                [
                    "FAILED",
                    "TIMED OUT",
                    "SKIPPED",
                    "no ncu",
                    "no compute-sanitizer",
                ]
                .iter()
                .any(|w| l.trim_start().starts_with(w))
            })
            .collect();
        out.push_str("\nSteps that failed, ran out of time or were skipped: ");
        if troubles.is_empty() {
            out.push_str("none.\n");
        } else {
            out.push('\n');
            for t in troubles {
                writeln!(out, "- {}", t.trim())?;
            }
        }
        if !summary.contains("all done") {
            out.push_str("run.sh did not reach its end (stopped at the device tool's limit?).\n");
        }
    }
    if let Some(log) = read("sanitize-memcheck.log") {
        let verdict = log
            .lines()
            .find(|l| l.contains("ERROR SUMMARY"))
            .map_or("no ERROR SUMMARY (see sanitize-memcheck.log)", str::trim);
        writeln!(out, "\nThe op tests under memcheck: {verdict}")?;
    }
    for m in MODELS {
        let on =
            |d: &str| read(&format!("perplexity-{m}-{d}.txt")).and_then(|t| final_perplexity(&t));
        let served = |c: u32| {
            read(&format!("serve-{m}-c{c}.txt"))
                .and_then(|t| serde_json::from_str::<serde_json::Value>(t.trim()).ok())
                .and_then(|v| v["tokens_per_second"].as_f64())
        };
        if let (Some(one), Some(eight)) = (served(1), served(8)) {
            writeln!(
                out,
                "\n{m}: realm serve, 128-token completions: {one:.1} t/s with 1 client, \
                 {eight:.1} t/s with 8"
            )?;
        }
        if let (Some(gpu), Some(cpu)) = (on("cuda:0"), on("cpu")) {
            writeln!(
                out,
                "\n{m}: perplexity {gpu:.4} on the GPU, {cpu:.4} on the CPU backend ({:+.3}%)",
                (gpu / cpu - 1.0) * 100.0
            )?;
        }
    }
    for m in MODELS {
        for phase in ["prefill", "decode"] {
            if let Some(csv) = read(&format!("ncu-{m}-{phase}.csv")) {
                out.push_str(&kernel_table(&format!("{m}, {phase}"), &ncu_kernels(&csv)));
            }
        }
    }
    Ok(out)
}

/// The final estimate of `realm perplexity`'s output.
fn final_perplexity(text: &str) -> Option<f64> {
    let rest = text.split("Final estimate: PPL = ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// One kernel's launches in an Nsight Compute profile.
#[derive(Debug, Default, PartialEq)]
struct Kernel {
    name: String,
    launches: usize,
    /// Device time of all its launches, ns.
    ns: f64,
    /// DRAM bytes read and written by all its launches.
    bytes: f64,
}

/// The fields of one line of CSV as Nsight Compute writes it (every field
/// quoted, `""` for a quote inside one).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches(['\r', '\n']).chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// How many ns or bytes one `unit` is, for the units Nsight Compute gives
/// times and sizes in (its base units with `--print-units base`).
fn unit_scale(unit: &str) -> Option<f64> {
    Some(match unit {
        "ns" | "nsecond" | "byte" | "" => 1.0,
        "us" | "usecond" | "Kbyte" | "KB" => 1e3,
        "ms" | "msecond" | "Mbyte" | "MB" => 1e6,
        "s" | "second" | "Gbyte" | "GB" => 1e9,
        _ => return None,
    })
}

/// The kernels of an Nsight Compute `--csv` profile (its details page: a
/// row per launch and metric, under a header naming `ID`, `Kernel Name`,
/// `Metric Name`, `Metric Unit` and `Metric Value`), their launches'
/// `gpu__time_duration.sum` and `dram__bytes.sum` (read and written) summed by
/// kernel, the heaviest first. Lines before the header (ncu's own
/// messages) and metrics in units it does not know are left out.
fn ncu_kernels(text: &str) -> Vec<Kernel> {
    const COLUMNS: [&str; 5] = [
        "ID",
        "Kernel Name",
        "Metric Name",
        "Metric Unit",
        "Metric Value",
    ];
    // Per launch: its kernel, device time and bytes.
    let mut launches: HashMap<String, (String, f64, f64)> = HashMap::new();
    for row in under_headers(text.lines().map(csv_fields), &COLUMNS) {
        let [id, name, metric, unit, value] = [0, 1, 2, 3, 4].map(|i| row[i].as_str());
        let (Some(scale), Ok(value)) = (unit_scale(unit), value.replace(',', "").parse::<f64>())
        else {
            continue;
        };
        let launch = launches
            .entry(id.to_string())
            .or_insert_with(|| (name.to_string(), 0.0, 0.0));
        match metric {
            "gpu__time_duration.sum" => launch.1 += value * scale,
            "dram__bytes.sum" => launch.2 += value * scale,
            _ => {}
        }
    }
    let mut kernels: HashMap<String, Kernel> = HashMap::new();
    for (name, ns, bytes) in launches.into_values() {
        let k = kernels.entry(name.clone()).or_insert_with(|| Kernel {
            name,
            ..Kernel::default()
        });
        k.launches += 1;
        k.ns += ns;
        k.bytes += bytes;
    }
    let mut kernels: Vec<Kernel> = kernels.into_values().collect();
    kernels.sort_by(|a, b| b.ns.total_cmp(&a.ns).then_with(|| a.name.cmp(&b.name)));
    kernels
}

/// The launches, device time and bytes of `kernels` together.
fn sum(kernels: &[Kernel]) -> Kernel {
    kernels.iter().fold(Kernel::default(), |mut t, k| {
        t.launches += k.launches;
        t.ns += k.ns;
        t.bytes += k.bytes;
        t
    })
}

/// A markdown table of `kernels` (the heaviest first): launches, device
/// time, share of the profile's, mean time of a launch and DRAM traffic
/// per second; the kernels past the first [`TOP_KERNELS`] summed in one
/// row, then the whole profile's.
fn kernel_table(what: &str, kernels: &[Kernel]) -> String {
    let total = sum(kernels);
    let mut out = format!(
        "\nKernels of {what} (Nsight Compute, {} launches, each timed alone with cold caches):\n\n\
         | kernel | launches | device ms | share | mean us | DRAM GB/s |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
        total.launches
    );
    let row = |out: &mut String, name: &str, k: &Kernel| {
        let per = |x: f64, of: f64| if of > 0.0 { x / of } else { 0.0 };
        // Bytes per ns are GB/s.
        let _ = writeln!(
            out,
            "| {name} | {} | {:.3} | {:.1}% | {:.1} | {:.0} |",
            k.launches,
            k.ns / 1e6,
            100.0 * per(k.ns, total.ns),
            per(k.ns, k.launches as f64) / 1e3,
            per(k.bytes, k.ns)
        );
    };
    for k in kernels.iter().take(TOP_KERNELS) {
        let name: String = k.name.chars().take(60).collect();
        row(&mut out, &format!("`{name}`"), k);
    }
    if kernels.len() > TOP_KERNELS {
        let rest = sum(&kernels[TOP_KERNELS..]);
        row(
            &mut out,
            &format!("{} other kernels", kernels.len() - TOP_KERNELS),
            &rest,
        );
    }
    row(&mut out, "all", &total);
    out
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
    under_headers(text.lines().filter_map(cells), names)
}

/// The cells under columns `names` of every row of `rows` that follows a
/// header row holding them all, in the order of `names` (a row too short
/// for them is left out).
fn under_headers<C: AsRef<str> + Clone>(
    rows: impl IntoIterator<Item = Vec<C>>,
    names: &[&str],
) -> Vec<Vec<C>> {
    let mut at: Option<Vec<usize>> = None;
    let mut out = Vec::new();
    for row in rows {
        let header: Option<Vec<usize>> = names
            .iter()
            .map(|n| row.iter().position(|c| c.as_ref() == *n))
            .collect();
        if header.is_some() {
            at = header;
            continue;
        }
        if let Some(at) = &at {
            out.extend(
                at.iter()
                    .map(|&i| row.get(i).cloned())
                    .collect::<Option<Vec<_>>>(),
            );
        }
    }
    out
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

    /// Nsight Compute's `--csv` output: its messages, then a row per
    /// launch and metric (figures made up; units as `--print-units base`
    /// gives them, and others it might).
    const NCU: &str = r#"==PROF== Connected to process 4242 (/tmp/gpu-bundle/realm)
==PROF== Profiling "rms_norm_q8": 0%....50%....100% - 1 pass
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","4242","realm","127.0.0.1","rms_norm_q8","1","13","(256, 1, 1)","(1, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes.sum","byte","1,500"
"0","4242","realm","127.0.0.1","rms_norm_q8","1","13","(256, 1, 1)","(1, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","nsecond","2,000"
"1","4242","realm","127.0.0.1","mul_mat_vec<2, ""q"">","1","13","(128, 1, 1)","(576, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes.sum","Kbyte","300"
"1","4242","realm","127.0.0.1","mul_mat_vec<2, ""q"">","1","13","(128, 1, 1)","(576, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","usecond","100"
"2","4242","realm","127.0.0.1","rms_norm_q8","1","13","(256, 1, 1)","(1, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","nsecond","3,000"
"2","4242","realm","127.0.0.1","rms_norm_q8","1","13","(256, 1, 1)","(1, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes.sum","furlong","7"
| smollm2-synth.gguf | cuda | tg8 | 100.00 ± 0.00 |
"#;

    #[test]
    fn ncu_profiles_are_summed_kernel_by_kernel() {
        let k = ncu_kernels(NCU);
        assert_eq!(
            k,
            [
                Kernel {
                    name: "mul_mat_vec<2, \"q\">".into(),
                    launches: 1,
                    ns: 100_000.0,
                    bytes: 300_000.0
                },
                // A metric in a unit it does not know is left out.
                Kernel {
                    name: "rms_norm_q8".into(),
                    launches: 2,
                    ns: 5_000.0,
                    bytes: 1_500.0
                },
            ]
        );
        let table = kernel_table("smollm2, decode", &k);
        assert!(table.contains("(Nsight Compute, 3 launches, "), "{table}");
        // 300 kB in 100 us: 3 GB/s; 1.5 kB in 5 us over 2 launches.
        for row in [
            "| `mul_mat_vec<2, \"q\">` | 1 | 0.100 | 95.2% | 100.0 | 3 |",
            "| `rms_norm_q8` | 2 | 0.005 | 4.8% | 2.5 | 0 |",
            "| all | 3 | 0.105 | 100.0% | 35.0 | 3 |",
        ] {
            assert!(table.contains(row), "{row} not in\n{table}");
        }
        assert!(ncu_kernels("==PROF== nothing was profiled\n").is_empty());
    }

    #[test]
    fn the_report_sets_realm_beside_llama_cpp_with_the_floors() {
        let tmp = std::env::temp_dir().join(format!("realm-gpu-report-{}", std::process::id()));
        let dir = tmp.join("out");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(report_of(&dir).is_err(), "an empty folder is an error");
        for (name, text) in [
            ("commit.txt", "bundle of commit 9a849a46320c\n"),
            ("bench-smollm2.md", REALM),
            ("llama-bench-smollm2.md", LLAMA),
            ("llama-batched-smollm2.log", BATCHED),
            (
                "summary.txt",
                "[30 s] test-ops done\nFAILED: bench-gemma3\nSKIPPED: ncu-gemma3-decode (no time left)\n",
            ),
            ("sanitize-memcheck.log", "========= ERROR SUMMARY: 0 errors\n"),
            ("ncu-smollm2-decode.csv", NCU),
            (
                "perplexity-smollm2-cuda:0.txt",
                "[1]101.0000,\nFinal estimate: PPL = 101.0000 +/- 3.00000\n",
            ),
            (
                "perplexity-smollm2-cpu.txt",
                "[1]100.0000,\nFinal estimate: PPL = 100.0000 +/- 3.00000\n",
            ),
            ("serve-smollm2-c1.txt", "{\"clients\": 1, \"tokens_per_second\": 850.5}\n"),
            ("serve-smollm2-c8.txt", "{\"clients\": 8, \"tokens_per_second\": 4100.25}\n"),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        // As the device tool brings it back: the archive, in a folder.
        let back = tmp.join("back");
        std::fs::create_dir_all(&back).unwrap();
        let mut tar = Command::new("tar");
        tar.arg("czf")
            .arg(back.join(ARCHIVE))
            .arg("-C")
            .arg(&tmp)
            .arg("out");
        status(tar).unwrap();
        let unpacked = outputs(&back, &tmp.join("unpacked")).unwrap();
        assert_eq!(unpacked, tmp.join("unpacked/out"));
        assert_eq!(outputs(&dir, &tmp.join("unused")).unwrap(), dir);
        let report = report_of(&unpacked).unwrap();
        std::fs::remove_dir_all(&tmp).unwrap();
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
        assert!(!report.contains("| gemma3 |"), "{report}");
        for line in [
            "- FAILED: bench-gemma3\n- SKIPPED: ncu-gemma3-decode (no time left)\n",
            "run.sh did not reach its end",
            "The op tests under memcheck: ========= ERROR SUMMARY: 0 errors",
            "Kernels of smollm2, decode (Nsight Compute, 3 launches, ",
            "smollm2: perplexity 101.0000 on the GPU, 100.0000 on the CPU backend (+1.000%)",
            "smollm2: realm serve, 128-token completions: 850.5 t/s with 1 client, 4100.2 t/s with 8",
        ] {
            assert!(report.contains(line), "{line} not in\n{report}");
        }
    }
}
