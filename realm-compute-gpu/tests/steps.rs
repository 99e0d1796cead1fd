//! Static decode steps against the same backend op by op: the step's
//! inputs read from device tensors, attention over a fixed span with a
//! mask, and on CUDA the step recorded as a CUDA graph and replayed.
//!
//! The device is candle's CPU device unless `REALM_GPU_TEST_DEVICE` names
//! another. On the CPU device [`StepMode::Recorded`] runs static steps
//! without recording them; on CUDA it records.

use realm_compute_cpu::CpuBackend;
use realm_compute_gpu::{GpuBackend, GpuDevice, GpuWorkspace, StepMode};
use realm_core::backend::{Backend, BackendCore, KvDtype, MatMulOps, StepInputs, StepOps};
use realm_core::gguf::Gguf;
use realm_core::{GgmlType, TensorView};
use realm_models::synthetic::SyntheticLayout;
use realm_models::{Model, STEP_SPAN};

fn gpu(mode: StepMode) -> GpuBackend {
    let dev = std::env::var("REALM_GPU_TEST_DEVICE")
        .map(|s| GpuDevice::parse(&s).expect("REALM_GPU_TEST_DEVICE"))
        .unwrap_or(GpuDevice::Cpu);
    GpuBackend::new(dev).expect("device").with_steps(mode)
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Token `i` of a fixed sequence.
fn token(i: usize, vocab: usize) -> u32 {
    ((i * 7919 + 3) % vocab) as u32
}

/// A prompt of `prompt` tokens, then `n` one-token steps; every step's
/// logits.
fn decode(model: &Model<'_, GpuBackend>, prompt: usize, n: usize, kv: KvDtype) -> Vec<Vec<f32>> {
    let vocab = model.config().vocab_size;
    let ids: Vec<u32> = (0..prompt).map(|i| token(i, vocab)).collect();
    let mut s = model.session_with_kv(prompt + n, 64, kv).unwrap();
    let mut all = vec![model.forward(&mut s, &ids).unwrap().to_vec()];
    for i in 0..n {
        let got = model
            .forward(&mut s, &[token(prompt + i, vocab)])
            .unwrap()
            .to_vec();
        // The same logits again when asked for them (a guest's
        // `compute_logits` after `forward`), also after a replay, whose
        // scratch holds the recorded step's activations.
        assert_eq!(model.compute_logits(&mut s).unwrap(), &got[..], "step {i}");
        all.push(got);
    }
    assert_eq!(s.recording_failure(), None);
    all
}

/// Decodes a tiny `arch` model (weights of `seed`) after `prompt` tokens,
/// 12 steps across a span boundary, op by op on `plain` and as static
/// steps on `steps`: the logits agree, and on CUDA the 12 steps are 6 in
/// each span (one run op by op, one run and recorded, 4 replays);
/// elsewhere nothing is recorded.
fn static_steps_agree(
    plain: &GpuBackend,
    steps: &GpuBackend,
    arch: &str,
    kv: KvDtype,
    prompt: usize,
    seed: u64,
) {
    // `llama3`: llama with Llama 3.1's RoPE frequency factors.
    let layout = match arch {
        "llama3" => SyntheticLayout::tiny("llama")
            .unwrap()
            .with_rope_factors()
            .unwrap(),
        _ => SyntheticLayout::tiny(arch).unwrap(),
    };
    let file = Gguf::from_bytes(layout.write(seed).unwrap()).unwrap();
    let (a, b) = (
        Model::load(&file, plain).unwrap(),
        Model::load(&file, steps).unwrap(),
    );
    let before = steps.step_counts();
    let (want, got) = (decode(&a, prompt, 12, kv), decode(&b, prompt, 12, kv));
    let diff = max_diff(&want, &got);
    let (recorded, replayed) = steps.step_counts();
    let (recorded, replayed) = (recorded - before.0, replayed - before.1);
    eprintln!(
        "{arch} ({kv:?} cache) after {prompt}: static steps vs op by op, max |logit difference| \
         {diff:.2e}; {recorded} recordings, {replayed} replays"
    );
    assert!(diff <= 1e-3, "{arch}: {diff}");
    let cuda = matches!(steps.device(), GpuDevice::Cuda(_));
    let want_counts = if cuda { (2, 8) } else { (0, 0) };
    assert_eq!((recorded, replayed), want_counts, "{arch}");
}

/// Decoding across a span boundary (a new recording, reallocated step
/// tensors), with every architecture's ops: biases, QK-norm, RoPE factors,
/// layers without RoPE, multipliers, sliding windows, the embedding scale,
/// blocks without input norms (OLMo 2), ALiBi (MPT, Refact), blocks of
/// their own KV heads, a linear map or none in place of attention
/// (DeciLM); f32 and f16 caches.
#[test]
fn static_steps_match_op_by_op() {
    let (plain, steps) = (gpu(StepMode::OpByOp), gpu(StepMode::Recorded));
    for (arch, kv) in [
        ("llama", KvDtype::F32),
        ("qwen2", KvDtype::F32),
        ("qwen3", KvDtype::F32),
        ("llama3", KvDtype::F32),
        ("smollm3", KvDtype::F32),
        ("granite", KvDtype::F32),
        ("gemma3", KvDtype::F32),
        ("olmo2", KvDtype::F32),
        ("llama", KvDtype::F16),
        ("gemma3", KvDtype::F16),
        ("mpt", KvDtype::F32),
        ("refact", KvDtype::F16),
        ("deci", KvDtype::F32),
    ] {
        static_steps_agree(&plain, &steps, arch, kv, STEP_SPAN - 6, 3);
    }
}

/// The same past a thousand positions, where a CUDA decode step splits
/// each row's keys over several blocks and merges them (flash-decoding;
/// the tiny Gemma 3's layers are all local, so it does not): the recorded,
/// split steps, replayed at other positions of their span, agree with op
/// by op steps that do not split.
#[test]
fn long_static_steps_match_op_by_op() {
    let plain = gpu(StepMode::OpByOp).with_split_keys(false);
    let steps = gpu(StepMode::Recorded);
    for (arch, kv) in [
        ("llama", KvDtype::F32),
        ("llama", KvDtype::F16),
        ("gemma3", KvDtype::F16),
    ] {
        static_steps_agree(&plain, &steps, arch, kv, 4 * STEP_SPAN - 6, 5);
    }
}

/// Chunks of several tokens (run op by op) between decode steps in one
/// span: the steps after them replay a recording made before them, and
/// must read their own results, not the chunk's.
#[test]
fn chunks_between_recorded_steps() {
    let (plain, steps) = (gpu(StepMode::OpByOp), gpu(StepMode::Recorded));
    let file = Gguf::from_bytes(SyntheticLayout::tiny("llama").unwrap().write(9).unwrap()).unwrap();
    let run = |be: &GpuBackend| {
        let model = Model::load(&file, be).unwrap();
        let vocab = model.config().vocab_size;
        let mut s = model.session(64, 8).unwrap();
        let mut all = Vec::new();
        let mut i = 0;
        for chunk in [10, 1, 1, 1, 1, 5, 1, 1, 3, 1, 1] {
            let ids: Vec<u32> = (i..i + chunk).map(|j| token(j, vocab)).collect();
            all.push(model.forward(&mut s, &ids).unwrap().to_vec());
            i += chunk;
        }
        assert_eq!(s.recording_failure(), None);
        all
    };
    let before = steps.step_counts();
    let diff = max_diff(&run(&plain), &run(&steps));
    let (recorded, replayed) = steps.step_counts();
    eprintln!(
        "chunks between static steps vs op by op, max |logit difference| {diff:.2e}; \
         {} recordings, {} replays",
        recorded - before.0,
        replayed - before.1
    );
    assert!(diff <= 1e-3, "{diff}");
    if matches!(steps.device(), GpuDevice::Cuda(_)) {
        // Recorded at the second step and replayed twice. The 5-token
        // chunk is the widest vector product yet, so candle grows its
        // scratch and the recording goes stale: the next step runs and is
        // recorded again, and the 3 after it replay (the 3-token chunk
        // grows nothing).
        assert_eq!((recorded - before.0, replayed - before.1), (2, 5));
    }
}

/// Batched decode of sessions at different positions, `prompts[i]` tokens
/// in, every step's logits of every row. With `own_lengths` each session
/// holds its prompt and the steps (as a runtime's tenants ask), else all
/// hold the longest's.
fn batched<B: Backend>(
    file: &Gguf<Vec<u8>>,
    be: &B,
    prompts: &[usize],
    own_lengths: bool,
) -> Vec<Vec<f32>> {
    let model = Model::load(file, be).unwrap();
    let vocab = model.config().vocab_size;
    let longest = prompts.iter().max().unwrap();
    let mut sessions: Vec<_> = prompts
        .iter()
        .map(|&p| {
            let cap = if own_lengths { p } else { *longest } + 6;
            let mut s = model.session(cap, 32).unwrap();
            let ids: Vec<u32> = (0..p).map(|i| token(i, vocab)).collect();
            model.forward(&mut s, &ids).unwrap();
            s
        })
        .collect();
    let mut scratch = model.batch_scratch(prompts.len()).unwrap();
    let mut all = Vec::new();
    for step in 0..6 {
        let mut rows: Vec<_> = sessions
            .iter_mut()
            .enumerate()
            .map(|(i, s)| (s, token(step * 7 + i, vocab)))
            .collect();
        model.forward_batch(&mut rows, &mut scratch).unwrap();
        for (s, _) in rows.iter_mut() {
            let got = s.logits().to_vec();
            // `compute_logits` gives the step's logits, also after a replay.
            assert_eq!(model.compute_logits(s).unwrap(), &got[..]);
            all.push(got);
        }
    }
    assert_eq!(scratch.recording_failure(), None);
    all
}

/// Batched decode: sessions in shared KV blocks attend together, each row
/// masked by its own position (one row crosses a span boundary; ALiBi's
/// distances and attention sinks, BLOOM's and gpt-oss's), as the
/// CPU backend attends row by row; static steps match op by op. Sessions
/// of one length, or each of its own (sharing blocks of rounded lengths,
/// where a row is further on than the block's first session holds).
#[test]
fn batched_decode_matches_the_cpu_and_op_by_op() {
    let (plain, steps) = (gpu(StepMode::OpByOp), gpu(StepMode::Recorded));
    let cpu = CpuBackend::new().unwrap();
    let prompts = [3, 17, 5, 40, STEP_SPAN - 2, 9];
    for arch in ["llama", "gemma3", "bloom", "gpt-oss"] {
        let layout = SyntheticLayout::tiny(arch)
            .unwrap()
            .with_matrix_type(GgmlType::F32);
        let file = Gguf::from_bytes(layout.write(5).unwrap()).unwrap();
        for own in [false, true] {
            let want = batched(&file, &cpu, &prompts, own);
            let got = batched(&file, &plain, &prompts, own);
            let diff = max_diff(&want, &got);
            eprintln!(
                "{arch} ({own}): batched decode vs the CPU, max |logit difference| {diff:.2e}"
            );
            assert!(diff <= 1e-3, "{arch}: {diff}");
            let diff = max_diff(&got, &batched(&file, &steps, &prompts, own));
            eprintln!(
                "{arch} ({own}): batched static steps vs op by op, max |logit difference| {diff:.2e}"
            );
            assert!(diff <= 1e-3, "{arch}: {diff}");
        }
    }
}

/// Sessions and batch scratch, recorded steps and page-locked staging
/// included, may be dropped on a thread that has made no call of its own,
/// as a runtime may drop a tenant's: their device memory goes without
/// leaving an error for the calls after it (on CUDA its context is made
/// current there first), and the same work then gives the same logits.
#[test]
fn sessions_may_be_dropped_on_any_thread() {
    let be = gpu(StepMode::Recorded);
    let file = Gguf::from_bytes(SyntheticLayout::tiny("llama").unwrap().write(4).unwrap()).unwrap();
    let model = Model::load(&file, &be).unwrap();
    let vocab = model.config().vocab_size;
    let run = || {
        let mut sessions: Vec<_> = (0..2)
            .map(|i| {
                let mut s = model.session(32, 8).unwrap();
                model.forward(&mut s, &[token(i, vocab)]).unwrap();
                s
            })
            .collect();
        let mut scratch = model.batch_scratch(4).unwrap();
        let mut all = Vec::new();
        for step in 0..4 {
            let mut rows: Vec<_> = sessions
                .iter_mut()
                .map(|s| (s, token(step, vocab)))
                .collect();
            model.forward_batch(&mut rows, &mut scratch).unwrap();
            all.extend(rows.iter().map(|(s, _)| s.logits().to_vec()));
            let s = &mut sessions[0];
            all.push(
                model
                    .forward(s, &[token(step + 9, vocab)])
                    .unwrap()
                    .to_vec(),
            );
        }
        assert_eq!(scratch.recording_failure(), None);
        (all, sessions, scratch)
    };
    let (want, sessions, scratch) = run();
    std::thread::spawn(move || drop((sessions, scratch)))
        .join()
        .unwrap();
    let (got, ..) = run();
    assert_eq!(got, want);
}

/// Sessions on several threads at once share one model and backend, as
/// tenants do: prompts of different lengths (candle's vector and matrix
/// kernels, its scratch growing while other threads run), then decode
/// steps, recorded on CUDA while other threads run. Each thread's logits
/// are those of the same work done alone, op by op.
#[test]
fn threads_share_one_backend() {
    for fused in [true, false] {
        threads_share(fused);
    }
}

/// [`threads_share_one_backend`] with Realm's fused kernels or candle's ops.
fn threads_share(fused: bool) {
    // The same arithmetic on both sides: fused and unfused kernels round
    // differently, and quantized activations can turn that into 1e-2.
    let plain = gpu(StepMode::OpByOp).with_fused_kernels(fused);
    let shared = gpu(StepMode::Recorded).with_fused_kernels(fused);
    let file =
        Gguf::from_bytes(SyntheticLayout::tiny("llama").unwrap().write(11).unwrap()).unwrap();
    let prompts = [3, 12, 40, 100];
    let steps = 20;
    let alone = Model::load(&file, &plain).unwrap();
    let want: Vec<_> = prompts
        .iter()
        .map(|&p| decode(&alone, p, steps, KvDtype::F32))
        .collect();
    let model = &Model::load(&file, &shared).unwrap();
    for round in 0..2 {
        let got: Vec<_> = std::thread::scope(|t| {
            let runs: Vec<_> = prompts
                .iter()
                .map(|&p| t.spawn(move || decode(model, p, steps, KvDtype::F32)))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect()
        });
        for ((p, want), got) in prompts.iter().zip(&want).zip(&got) {
            let diff = max_diff(want, got);
            eprintln!(
                "fused kernels {fused}, round {round}, prompt {p} on its own thread: \
                 max |logit difference| {diff:.2e}"
            );
            assert!(diff <= 1e-3, "prompt {p}: {diff}");
        }
    }
    let (recorded, replayed) = shared.step_counts();
    eprintln!("{recorded} recordings, {replayed} replays across the threads");
    if matches!(shared.device(), GpuDevice::Cuda(_)) {
        assert!(replayed > 0);
    }
}

/// A recording left open (a panic between its start and its end, which a
/// runtime's scheduler survives) ends with its workspace: the thread's
/// stream then runs work as before. (On the CPU device nothing is
/// recorded; the GPU machine runs this for real.)
#[test]
fn a_recording_left_open_ends_with_its_workspace() {
    let be = gpu(StepMode::Recorded);
    let table: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let shape = [4u64, 3];
    let view = TensorView::new("t", GgmlType::F32, &shape, bytemuck::cast_slice(&table)).unwrap();
    let w = be.weight(&view).unwrap();
    let mut out = be.buffer(8).unwrap();
    let mut host = [0f32; 8];
    for _ in 0..2 {
        let mut ws: GpuWorkspace = be.workspace();
        let inputs = StepInputs {
            ids: &[1, 2],
            positions: &[0, 1],
            kv_len: 4,
        };
        be.begin_step(&mut ws, &inputs).unwrap();
        be.embed(&mut ws, &w, &[1, 2], &mut out).unwrap();
        let started = be.begin_recording(&mut ws, &mut [&mut out], 1).unwrap();
        assert_eq!(started, matches!(be.device(), GpuDevice::Cuda(_)));
        drop(ws);
        let mut ws: GpuWorkspace = be.workspace();
        be.embed(&mut ws, &w, &[2, 0], &mut out).unwrap();
        be.download(&out, &mut host).unwrap();
        assert_eq!(host, [8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0]);
    }
}

/// A static step's inputs are checked, and ops given other ids or
/// positions than the step's are errors, not silently wrong.
#[test]
fn static_step_inputs_are_checked() {
    let be = gpu(StepMode::Static);
    let mut ws: GpuWorkspace = be.workspace();
    let step = |ids: &'static [u32], positions: &'static [u32], kv_len| StepInputs {
        ids,
        positions,
        kv_len,
    };
    assert!(be.begin_step(&mut ws, &step(&[], &[], 4)).is_err());
    assert!(be.begin_step(&mut ws, &step(&[1], &[1, 2], 4)).is_err());
    assert!(be.begin_step(&mut ws, &step(&[1], &[4], 4)).is_err());
    assert!(be
        .begin_step(&mut ws, &step(&[1], &[4], usize::MAX))
        .is_err());
    be.begin_step(&mut ws, &step(&[1, 2], &[0, 3], 4)).unwrap();
    let table: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let shape = [4u64, 3];
    let view = TensorView::new("t", GgmlType::F32, &shape, bytemuck::cast_slice(&table)).unwrap();
    let w = be.weight(&view).unwrap();
    let mut out = be.buffer(8).unwrap();
    assert!(be.embed(&mut ws, &w, &[2, 1], &mut out).is_err());
    be.embed(&mut ws, &w, &[1, 2], &mut out).unwrap();
    let mut host = [0f32; 8];
    be.download(&out, &mut host).unwrap();
    assert_eq!(host, [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
    // Not recording on the CPU device, and replaying needs a recording.
    let (mut a, mut b) = (be.buffer(1).unwrap(), be.buffer(1).unwrap());
    assert!(!be
        .begin_recording(&mut ws, &mut [&mut a, &mut b], 1)
        .unwrap());
    be.end_step(&mut ws);
    // Outside the step the same workspace runs ops as usual again.
    be.embed(&mut ws, &w, &[2, 0], &mut out).unwrap();
    be.download(&out, &mut host).unwrap();
    assert_eq!(host, [8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0]);
}

/// On CUDA, the op clock times the device: a 20 ms hold between two marks
/// takes at least that, and the op queued behind it is timed apart from
/// it. Elsewhere there is no clock.
#[test]
fn op_clock_times_a_hold_and_the_op_behind_it() {
    use realm_core::backend::NormOps;
    use std::time::Duration;

    let be = gpu(StepMode::OpByOp);
    let Some(mut clock) = be.op_clock().unwrap() else {
        assert!(!be.name().contains("cuda"), "{}", be.name());
        return;
    };
    let x = be.upload(&vec![0.5; 4096]).unwrap();
    let w = be.upload(&vec![1.0; 4096]).unwrap();
    let mut out = be.buffer(4096).unwrap();
    for round in 0..2 {
        clock.mark().unwrap();
        clock.hold(Duration::from_millis(20)).unwrap();
        clock.mark().unwrap();
        be.rms_norm(&x, &w, 1e-6, 1, &mut out).unwrap();
        clock.mark().unwrap();
        let t = clock.take().unwrap();
        assert_eq!(t.len(), 2, "round {round}");
        assert!(
            t[0] >= Duration::from_micros(19_900) && t[0] < Duration::from_secs(5),
            "round {round}: hold {t:?}"
        );
        assert!(t[1] < Duration::from_millis(10), "round {round}: op {t:?}");
        // The marks are forgotten (and their events reused next round).
        assert!(clock.take().unwrap().is_empty());
    }
    let mut host = vec![0f32; 4096];
    be.download(&out, &mut host).unwrap();
    assert!(
        host.iter().all(|&v| (v - 1.0).abs() < 1e-5),
        "{:?}",
        &host[..4]
    );
}
