//! `realm bench MODEL`: prefill and decode speed, reported as llama-bench
//! reports it (pp512 / tg128, mean and standard deviation over repetitions,
//! tokenization and sampling excluded).

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use realm_compute_gpu::StepMode;
use realm_core::backend::{Backend, BackendCore};
use realm_models::{LoraId, Model, Session};
use serde_json::json;

use crate::device::Device;
use crate::load;
use crate::profile::{Marks, Profiled, Settled};

/// Arguments of `realm bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// A GGUF file, or a short name from the model cache (smollm2, gemma3).
    pub model: String,
    /// Prompt tokens of the prefill test (0: skip it).
    #[arg(short = 'p', long, default_value_t = 512)]
    pub n_prompt: usize,
    /// Generated tokens of the decode test (0: skip it).
    #[arg(short = 'n', long, default_value_t = 128)]
    pub n_gen: usize,
    /// Tokens already in the cache when the prefill and decode tests start
    /// (prefilled once, untimed; as llama-bench's -d): `pp512 @ d4096` is
    /// a 512-token prompt after 4096 others. The batched test (--npl)
    /// starts from its -p prompt instead.
    #[arg(short = 'd', long, default_value_t = 0)]
    pub n_depth: usize,
    /// CPU threads (0: one per core).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// Repetitions of each test.
    #[arg(short, long, default_value_t = 5)]
    pub repetitions: usize,
    /// Prefill batch size (a `--wasm` guest prefills in chunks of its own).
    #[arg(short, long, default_value_t = 512)]
    pub batch_size: usize,
    /// Batched decode: for each N, N sequences each prefill the -p prompt
    /// (untimed) and then generate -n tokens together, one batched forward
    /// per step (as llama-batched-bench's -npl), after an untimed warm-up
    /// of 2 steps; reports the aggregate t/s (llama-batched-bench's S_TG).
    #[arg(long, value_delimiter = ',')]
    pub npl: Vec<usize>,
    /// KV cache element type.
    #[arg(long, value_enum, default_value_t = load::CacheType::F32)]
    pub cache_type: load::CacheType,
    /// One JSON record per test, with llama-bench's field names.
    #[arg(long)]
    pub json: bool,
    /// Also time every op of -n decode steps (run op by op, waiting for
    /// the device after each op) and print where a step's time goes.
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub lora: load::LoraArgs,
    #[command(flatten)]
    pub device: crate::device::DeviceArgs,
    #[command(flatten)]
    pub guest: crate::guest::GuestArgs,
}

struct Test {
    name: String,
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
    /// Sequences decoding together (the batched test's, as
    /// llama-batched-bench's `pl`).
    n_seq: Option<usize>,
    /// The prefill batch: `-b`, or the one a guest's sessions took.
    n_batch: usize,
    samples_ts: Vec<f64>,
}

/// A test's name, as llama-bench writes it: `pp512`, `tg128 @ d4096`.
fn test_name(kind: &str, n: usize, depth: usize) -> String {
    match depth {
        0 => format!("{kind}{n}"),
        d => format!("{kind}{n} @ d{d}"),
    }
}

fn mean_std(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = if x.len() > 1 {
        x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let l = load::open(&args.model, args.threads)?;
    let threads = l.backend.threads();
    if args.guest.wasm {
        if args.n_depth > 0 {
            bail!("--n-depth is for native runs: a guest's prompt starts an empty cache");
        }
        let tests = bench_in_guest(args, &l)?;
        let backend = match args.device.device {
            Device::Cpu => format!("wasm+{}", l.backend.name()),
            Device::Gpu(d) => format!("wasm+candle-{d}"),
        };
        return report(args, &l, &backend, threads, &tests);
    }
    match args.device.device {
        Device::Cpu => bench_native(
            args,
            &l,
            (&l.backend, None),
            l.backend.name(),
            threads,
            &mut |_| Ok(()),
        ),
        Device::Gpu(_) => {
            let g = args.device.gpu()?;
            eprintln!("realm: {}", g.device_summary());
            let mut label = match g.steps() {
                StepMode::OpByOp => g.name().to_string(),
                StepMode::Static => format!("{}+static", g.name()),
                StepMode::Recorded => format!("{}+graphs", g.name()),
            };
            if g.fused_kernels() {
                label.push_str("+fused");
            }
            if g.q8_blocks() {
                label.push_str("+q8");
            }
            // Each test's replays, timed on the device when asked.
            let mut replays = |test: &str| -> Result<()> {
                if let Some((steps, secs)) = g.replay_device_time()? {
                    if steps > 0 {
                        eprintln!(
                            "realm: {test}: {steps} replays took {:.1} us of device time \
                             each, from their launch to their end",
                            secs * 1e6 / steps as f64
                        );
                    }
                }
                Ok(())
            };
            let marks = g.op_clock()?.map(|c| Box::new(c) as Box<dyn Marks>);
            bench_native(args, &l, (&g, marks), &label, 0, &mut replays)?;
            let (recorded, replayed) = g.step_counts();
            if recorded > 0 {
                eprintln!("realm: {recorded} decode steps recorded, {replayed} replayed");
            }
            if let Some(nodes) = g.last_graph_nodes() {
                eprintln!("realm: the last step recorded (a graph) holds {nodes}");
            }
            if g.blocks_products() > 0 {
                eprintln!(
                    "realm: {} products took their input as Q8_1 blocks an op wrote",
                    g.blocks_products()
                );
            }
            Ok(())
        }
    }
}

/// Says so when recording (or replaying) a decode step failed: steps ran
/// op by op after it.
fn note_recording(what: &str, failure: Option<&str>) {
    if let Some(why) = failure {
        eprintln!("realm: {what}: steps ran op by op after recording one failed: {why}");
    }
}

/// pp and tg on `backend`; every figure ends with the logits on the host,
/// so device work is complete when the clock stops. `after_test` is called
/// with each test's name once it has run. `marks` (CUDA) time `--profile`'s
/// ops on the device too.
fn bench_native<B: Backend>(
    args: &BenchArgs,
    l: &load::Loaded,
    (backend, marks): (&B, Option<Box<dyn Marks>>),
    label: &str,
    threads: usize,
    after_test: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<()> {
    let adapters = args.lora.open()?;
    let mut model = Model::load(&l.file, backend)?;
    model.check_logits()?;
    let loras = load::add_loras(&mut model, &adapters)?;
    let vocab = model.config().vocab_size as u32;
    let depth = args.n_depth;
    // Deterministic token ids spread over the vocabulary (llama-bench uses random ones).
    let spread = |n: usize| -> Vec<u32> {
        (0..n.max(1) as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % vocab)
            .collect()
    };
    let tokens = spread(args.n_prompt);
    let context = spread(depth);
    // Back to the depth between runs: the depth's context again, untimed,
    // where the model's state cannot forget the run (Qwen 3.5's).
    let back_to_depth = |s: &mut Session<B>| -> Result<()> {
        s.truncate(depth);
        if s.position() < depth {
            model.forward(s, &context[s.position()..depth])?;
        }
        Ok(())
    };
    // A session of `room` tokens after the depth, the depth prefilled.
    let session = |room: usize, batch: usize| -> Result<Session<B>> {
        let mut s = model.session_with_kv(depth + room, batch, args.cache_type.into())?;
        s.set_loras(&loras);
        if depth > 0 {
            model.forward(&mut s, &context[..depth])?;
        }
        Ok(s)
    };
    let mut tests = Vec::new();
    if args.n_prompt > 0 {
        let mut samples = Vec::new();
        let mut s = session(args.n_prompt, args.batch_size)?;
        // Warm-up, as llama-bench's: the whole prompt, so that the timed
        // runs find every buffer at its size.
        model.forward(&mut s, &tokens)?;
        for _ in 0..args.repetitions {
            back_to_depth(&mut s)?;
            let t = Instant::now();
            model.forward(&mut s, &tokens)?;
            samples.push(args.n_prompt as f64 / t.elapsed().as_secs_f64());
        }
        let test = Test {
            name: test_name("pp", args.n_prompt, depth),
            n_prompt: args.n_prompt,
            n_gen: 0,
            n_depth: depth,
            n_seq: None,
            n_batch: args.batch_size,
            samples_ts: samples,
        };
        after_test(&test.name)?;
        tests.push(test);
    }
    if args.n_gen > 0 {
        let mut samples = Vec::new();
        let mut s = session(args.n_gen + 1, args.batch_size.min(depth).max(1))?;
        // Warm-up: a decode step, as llama-bench's, and a second one: a
        // static step is recorded (on CUDA, as a graph) the second time it
        // runs, which the timed runs then replay.
        model.forward(&mut s, &tokens[..1])?;
        model.forward(&mut s, &tokens[..1])?;
        for _ in 0..args.repetitions {
            back_to_depth(&mut s)?;
            let t = Instant::now();
            let mut next = tokens[0];
            for _ in 0..args.n_gen {
                let logits = model.forward(&mut s, &[next])?;
                // Feed back a token without sampling (llama-bench excludes sampling).
                next = (logits.len() as u32 / 2 + next) % vocab;
            }
            samples.push(args.n_gen as f64 / t.elapsed().as_secs_f64());
        }
        note_recording("decode", s.recording_failure());
        let test = Test {
            name: test_name("tg", args.n_gen, depth),
            n_prompt: 0,
            n_gen: args.n_gen,
            n_depth: depth,
            n_seq: None,
            n_batch: args.batch_size,
            samples_ts: samples,
        };
        after_test(&test.name)?;
        tests.push(test);
    }
    for &n_seq in &args.npl {
        let test = batched_decode(args, &model, &loras, &tokens, n_seq)?;
        after_test(&test.name)?;
        tests.push(test);
    }
    report(args, l, label, threads, &tests)?;
    if args.profile {
        profile_decode(args, l, backend, marks)?;
    }
    Ok(())
}

/// Prints (to stderr) where the time of `-n` decode steps goes, op by op:
/// waiting for the device after each op, then, with `marks` (CUDA), each
/// op's device time with the step's ops run back to back.
fn profile_decode<B: Backend>(
    args: &BenchArgs,
    l: &load::Loaded,
    backend: &B,
    marks: Option<Box<dyn Marks>>,
) -> Result<()> {
    let p = Profiled::new(backend);
    let adapters = args.lora.open()?;
    let mut model = Model::load(&l.file, &p)?;
    model.check_logits()?;
    let loras = load::add_loras(&mut model, &adapters)?;
    let vocab = model.config().vocab_size as u32;
    let n = args.n_gen.max(1);
    let mut s = model.session_with_kv(n + 1, 1, args.cache_type.into())?;
    s.set_loras(&loras);
    // n decode steps from an empty cache: their wall time, and with marks
    // what the device did between their ops.
    model.forward(&mut s, &[0])?; // warm-up
    let mut decode = || -> Result<(f64, Settled)> {
        s.truncate(0);
        p.reset();
        let (start, mut all) = (Instant::now(), Settled::default());
        let mut next = 0;
        for _ in 0..n {
            let logits = model.forward(&mut s, &[next])?;
            next = (logits.len() as u32 / 2 + next) % vocab;
            let step = p.settle()?;
            all.ops += step.ops;
            all.late += step.late;
            all.idle += step.idle;
        }
        Ok((start.elapsed().as_secs_f64(), all))
    };
    let (wall, _) = decode()?;
    print_profile(
        &p,
        n,
        &format!(
            "profile of tg{n} on {}, op by op, waiting for the device after each op: \
             {:.1} us per token",
            backend.name(),
            wall * 1e6 / n as f64
        ),
    );
    if let Some(marks) = marks {
        p.use_marks(marks);
        let (_, all) = decode()?;
        print_profile(
            &p,
            n,
            &format!(
                "device time of tg{n} on {}, op by op, every {} ops queued behind a {} ms \
                 hold and run back to back: the device idled {:.1} us per token between \
                 ops (holds excepted); {} of {} ops were launched after their hold had \
                 ended (their times may include the host's)",
                backend.name(),
                crate::profile::SEGMENT,
                crate::profile::HOLD.as_millis(),
                all.idle.as_secs_f64() * 1e6 / n as f64,
                all.late,
                all.ops
            ),
        );
    }
    Ok(())
}

/// Prints `p`'s accounts of `n` decode steps under `title`.
fn print_profile<B: Backend>(p: &Profiled<'_, B>, n: usize, title: &str) {
    let accounts = p.accounts();
    let in_ops: f64 = accounts.iter().map(|(_, a)| a.time.as_secs_f64()).sum();
    let per_token = |x: f64| x * 1e6 / n as f64;
    eprintln!("{title}; {:.1} us per token in ops", per_token(in_ops));
    eprintln!("| op | calls per token | us per token | share |");
    eprintln!("| --- | ---: | ---: | ---: |");
    for (name, a) in accounts {
        let t = a.time.as_secs_f64();
        eprintln!(
            "| {name} | {:.1} | {:.1} | {:.1}% |",
            a.calls as f64 / n as f64,
            per_token(t),
            100.0 * t / in_ops
        );
    }
}

/// `n_seq` sequences decoding `n_gen` tokens together after an untimed
/// prefill of the prompt each.
fn batched_decode<B: Backend>(
    args: &BenchArgs,
    model: &Model<'_, B>,
    loras: &[(LoraId, f32)],
    tokens: &[u32],
    n_seq: usize,
) -> Result<Test> {
    if n_seq == 0 || args.n_gen == 0 {
        bail!("--npl needs positive sequence counts and -n above 0");
    }
    let vocab = model.config().vocab_size as u32;
    let prompt = &tokens[..args.n_prompt.max(1).min(tokens.len())];
    let cap = prompt.len() + args.n_gen + 1;
    let mut sessions = (0..n_seq)
        .map(|_| {
            let mut s = model.session_with_kv(cap, args.batch_size, args.cache_type.into())?;
            s.set_loras(loras);
            Ok(s)
        })
        .collect::<Result<Vec<_>, realm_models::Error>>()?;
    let mut scratch = model.batch_scratch(n_seq)?;
    // One run: the prompt prefilled into every sequence (untimed), then
    // `steps` batched steps; their aggregate t/s.
    let mut run = |steps: usize| -> Result<f64> {
        for s in &mut sessions {
            s.truncate(0);
            model.forward(s, prompt)?;
        }
        let mut next: Vec<u32> = (0..n_seq as u32).map(|i| (i * 7919) % vocab).collect();
        let t = Instant::now();
        for _ in 0..steps {
            let mut rows: Vec<_> = sessions.iter_mut().zip(next.iter().copied()).collect();
            model.forward_batch(&mut rows, &mut scratch)?;
            for (t, s) in next.iter_mut().zip(&sessions) {
                *t = (s.logits().len() as u32 / 2 + *t) % vocab;
            }
        }
        Ok((n_seq * steps) as f64 / t.elapsed().as_secs_f64())
    };
    // Warm-up: 2 steps (the second records a static step, which the timed
    // runs replay).
    run(args.n_gen.min(2))?;
    let samples = (0..args.repetitions)
        .map(|_| run(args.n_gen))
        .collect::<Result<Vec<_>>>()?;
    note_recording("batched decode", scratch.recording_failure());
    Ok(Test {
        name: format!("pp{}+tg{}x{n_seq}", prompt.len(), args.n_gen),
        n_prompt: prompt.len(),
        n_gen: args.n_gen,
        n_depth: 0,
        n_seq: Some(n_seq),
        n_batch: args.batch_size,
        samples_ts: samples,
    })
}

/// The same tests through a wasm tenant: the guest tokenizes, samples
/// (greedy, end-of-generation tokens banned so every run generates `n_gen`)
/// and loops. Each figure is one guest call: pp is the prompt's
/// tokenization and prefill until the guest has logits; tg is the
/// `n_gen - 1` steps after the first token, each with the guest's sampling,
/// detokenizing and streaming. Every call makes its own session (in the
/// guest's prefill chunks, whatever `-b`: the records name the guest's),
/// after one untimed call.
fn bench_in_guest(args: &BenchArgs, l: &load::Loaded) -> Result<Vec<Test>> {
    let mut run = crate::guest::start(
        &args.guest,
        &args.model,
        args.threads,
        &args.device,
        args.cache_type.into(),
        &args.lora,
    )?;
    let ban: Vec<(u32, f32)> = l
        .tokenizer
        .eog_ids()
        .iter()
        .map(|&t| (t, f32::NEG_INFINITY))
        .collect();
    let request = |max_tokens: usize| realm_runtime::GenerateRequest {
        max_tokens: max_tokens as u32,
        sampling: realm_models::SamplingParams {
            logit_bias: ban.clone(),
            ..realm_models::SamplingParams::greedy()
        },
        ..Default::default()
    };
    let mut tests = Vec::new();
    // Warm-up, untimed: a generation of 2 tokens.
    crate::guest::generate(&mut run, "Once upon a time", &request(2), |_| {})?;
    if args.n_prompt > 0 {
        let prompt = " the".repeat(args.n_prompt);
        let mut samples = Vec::new();
        let (mut n_prompt, mut n_batch) = (0, 0);
        for _ in 0..args.repetitions {
            let stats = crate::guest::generate(&mut run, &prompt, &request(1), |_| {})?;
            n_prompt = stats.prompt_tokens as usize;
            n_batch = stats.session_batch.unwrap_or(0) as usize;
            samples.push(stats.prompt_tokens as f64 / stats.prompt_seconds);
        }
        tests.push(Test {
            name: format!("pp{n_prompt}"),
            n_prompt,
            n_gen: 0,
            n_depth: 0,
            n_seq: None,
            n_batch,
            samples_ts: samples,
        });
    }
    if args.n_gen > 0 {
        let mut samples = Vec::new();
        let mut n_batch = 0;
        for _ in 0..args.repetitions {
            let stats =
                crate::guest::generate(&mut run, "Once upon a time", &request(args.n_gen), |_| {})?;
            n_batch = stats.session_batch.unwrap_or(0) as usize;
            let tps = stats
                .decode_tokens_per_second()
                .context("the guest generated fewer than 2 tokens")?;
            samples.push(tps);
        }
        tests.push(Test {
            name: format!("tg{}", args.n_gen),
            n_prompt: 0,
            n_gen: args.n_gen,
            n_depth: 0,
            n_seq: None,
            n_batch,
            samples_ts: samples,
        });
    }
    Ok(tests)
}

fn report(
    args: &BenchArgs,
    l: &load::Loaded,
    backend: &str,
    threads: usize,
    tests: &[Test],
) -> Result<()> {
    let size: u64 = l.file.tensor_infos().iter().map(|t| t.n_bytes).sum();
    let params: u64 = l.file.tensor_infos().iter().map(|t| t.n_elements()).sum();
    let mut out = std::io::stdout().lock();
    if args.json {
        let records: Vec<_> = tests
            .iter()
            .map(|t| {
                let (avg, std) = mean_std(&t.samples_ts);
                let mut record = json!({
                    "model_filename": l.name, "model_size": size, "model_n_params": params,
                    "backends": backend, "n_threads": threads, "n_batch": t.n_batch,
                    "type_k": args.cache_type.name(), "type_v": args.cache_type.name(),
                    "n_prompt": t.n_prompt, "n_gen": t.n_gen, "n_depth": t.n_depth, "avg_ts": avg, "stddev_ts": std,
                    "samples_ts": t.samples_ts,
                });
                // The batched test's sequences, as llama-batched-bench's
                // `pl`, and its name (its prompt is untimed).
                if let (Some(pl), Some(r)) = (t.n_seq, record.as_object_mut()) {
                    r.insert("pl".into(), json!(pl));
                    r.insert("test".into(), json!(t.name));
                }
                record
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&records)?)?;
        return Ok(());
    }
    // As llama-bench, the KV cache's type only where it is not the default.
    let kv = match args.cache_type {
        load::CacheType::F32 => None,
        other => Some(other.name()),
    };
    let (kv_head, kv_rule) = match kv {
        Some(_) => (" type_k | type_v |", " --- | --- |"),
        None => ("", ""),
    };
    writeln!(
        out,
        "| model | size | params | backend | threads |{kv_head} test | t/s |"
    )?;
    writeln!(
        out,
        "| --- | ---: | ---: | --- | ---: |{kv_rule} ---: | ---: |"
    )?;
    for t in tests {
        let (avg, std) = mean_std(&t.samples_ts);
        let kv_cells = kv.map_or(String::new(), |k| format!(" {k} | {k} |"));
        writeln!(
            out,
            "| {} | {:.2} MiB | {:.2} M | {backend} | {} |{kv_cells} {} | {avg:.2} ± {std:.2} |",
            l.name,
            size as f64 / (1 << 20) as f64,
            params as f64 / 1e6,
            threads,
            t.name
        )?;
    }
    Ok(())
}
