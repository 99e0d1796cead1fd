//! `realm serve MODEL`: an OpenAI-compatible HTTP server.
//!
//! `POST /v1/chat/completions` and `POST /v1/completions` (whole answers,
//! or streamed as server-sent events with `"stream": true`), `POST
//! /v1/embeddings`, `GET /v1/models` and `GET /health`, and llama.cpp's
//! server's `/tokenize`, `/detokenize`, `/props` and `/apply-template`. One engine thread runs the model for
//! every request; up to `--parallel` sequences (a request's prompts times
//! its choices) decode together in batched steps, and up to `--queue` more
//! wait, beyond which a request gets a 503. Log-probabilities, `echo` and
//! several prompts or choices per request are served as OpenAI's API has
//! them.
//!
//! ```sh
//! realm serve smollm2 --port 8080 &
//! curl -s localhost:8080/v1/chat/completions -H 'content-type: application/json' \
//!   -d '{"messages": [{"role": "user", "content": "Which city is the capital of France?"}]}'
//! ```

mod adapter;
mod anthropic;
mod body;
mod embeddings;
mod engine;
mod http;
mod logprobs;
mod lora;
mod metrics;
mod native;
mod openai;
mod prompt;
mod props;
mod rerank;
mod responses;
mod tenants;
mod tokens;
mod tools;

pub use tools::read_reply;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use realm_models::reasoning::ReasoningFormat;

use crate::{device, load};

/// Arguments of `realm serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// A GGUF file, or a short name from the model cache (smollm2, gemma3).
    pub model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Most sequences (a request's prompts times its choices) decoded
    /// together, in one batched step (with --wasm: the number of tenants).
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Most sequences waiting beyond those; a request that needs more
    /// room is refused with a 503.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Context length of each request (0: the model's, capped at 4096).
    #[arg(short = 'c', long, default_value_t = 0)]
    pub ctx_size: usize,
    /// Most prompt tokens run in one prefill chunk, between decode steps.
    #[arg(short, long, default_value_t = 256)]
    pub batch_size: usize,
    /// CPU threads (0: one per core).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// KV cache element type.
    #[arg(long, value_enum, default_value_t = load::CacheType::F32)]
    pub cache_type: load::CacheType,
    /// Finished requests' KV caches kept for later requests whose prompts
    /// begin the same (a chat's next turn runs only its new tokens); 0
    /// keeps none, and sizes each request's cache to its prompt and
    /// max_tokens instead of the whole context. The native engine's only
    /// (not --wasm).
    #[arg(long, default_value_t = 4)]
    pub prompt_cache: usize,
    /// Most checkpoints of a recurrent model's states (Qwen 3.5's delta
    /// nets, LFM2's convolutions, Mamba-2 mixers) each session keeps, one
    /// taken 4 tokens before each prompt's end, so that a later prompt
    /// that leaves a kept session's tokens after a checkpoint reuses it
    /// up to there (llama.cpp's --ctx-checkpoints); each holds every
    /// recurrent block's state (Qwen 3.5 0.8B's: about 20 MB); 0 keeps none.
    #[arg(long, default_value_t = 4)]
    pub ctx_checkpoints: usize,
    /// When a request's context is full, forget the older half of its
    /// tokens after the first `n_keep` (a request field, 0 by default: the
    /// BOS token; -1: the whole prompt) and go on, as llama.cpp's server
    /// does with --context-shift. A request without max_tokens then runs
    /// until the model ends it. With --wasm the guest shifts its own
    /// session through the host.
    #[arg(long)]
    pub context_shift: bool,
    /// Largest request body, in bytes (larger ones get a 413).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body: usize,
    /// A key clients must send (`Authorization: Bearer KEY`) to every
    /// route but /health; without it the server is open to all who reach
    /// it.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Serve the engine's counters at GET /metrics (Prometheus's text
    /// format).
    #[arg(long)]
    pub metrics: bool,
    /// Let web pages from ORIGIN call the server from a browser (CORS;
    /// repeatable, `*` for any origin). Without it browsers refuse other
    /// origins' pages the answers.
    #[arg(long = "cors", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// The model's name in answers and in /v1/models (default: its file name).
    #[arg(long)]
    pub alias: Option<String>,
    /// How chat replies' reasoning is returned: `auto` finds the model's
    /// format from its chat template (a `<think>` block, or gpt-oss's
    /// harmony channels) and puts the reasoning in `reasoning_content`;
    /// `deepseek` reads a `<think>` block whatever the template; `none`
    /// leaves replies as they are. A request's `reasoning_format` chooses
    /// for itself.
    #[arg(long, value_enum, default_value_t = ReasoningArg::Auto)]
    pub reasoning_format: ReasoningArg,
    #[command(flatten)]
    pub template: crate::chat::TemplateArgs,
    #[command(flatten)]
    pub lora: load::LoraArgs,
    /// Load the LoRA adapters at scale 0: requests, or POST
    /// /lora-adapters, turn them on (llama.cpp's flag).
    #[arg(long)]
    pub lora_init_without_apply: bool,
    #[command(flatten)]
    pub device: device::DeviceArgs,
    // With --wasm, each request runs in a WebAssembly tenant (the guest
    // tokenizes, samples and loops; --parallel tenants share the model).
    #[command(flatten)]
    pub guest: crate::guest::GuestArgs,
}

/// How long connections may stay open after Ctrl-C once every answer has
/// ended.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `--reasoning-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReasoningArg {
    Auto,
    None,
    Deepseek,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    if args.parallel == 0 || args.batch_size == 0 {
        bail!("--parallel and --batch-size must be at least 1");
    }
    let chat_template = args.template.source()?;
    let lora = match args.lora_init_without_apply {
        true => args.lora.unapplied(),
        false => args.lora.clone(),
    };
    let (paths, scales): (Vec<String>, Vec<f32>) = (lora.list().into_iter())
        .map(|(p, s)| (p.display().to_string(), s))
        .unzip();
    let loras = lora::Loras {
        paths,
        scales: std::sync::Mutex::new(scales),
        per_request: !args.guest.wasm,
    };
    let cfg = engine::EngineConfig {
        lora,
        model: args.model.clone(),
        chat_template: chat_template.clone(),
        threads: args.threads,
        device: args.device.clone(),
        parallel: args.parallel,
        ctx_size: args.ctx_size,
        batch: args.batch_size,
        kv_dtype: args.cache_type.into(),
        prompt_cache: args.prompt_cache,
        ctx_checkpoints: args.ctx_checkpoints,
        context_shift: args.context_shift,
        metrics: Arc::new(metrics::Metrics::default()),
    };
    let counted = args.metrics.then(|| cfg.metrics.clone());
    let (jobs, queue) = mpsc::channel();
    let (ready_tx, ready) = mpsc::channel();
    let guest = args.guest.clone();
    let engine = std::thread::Builder::new()
        .name("realm-engine".into())
        .spawn(move || match guest.wasm {
            true => tenants::run(&cfg, &guest, queue, ready_tx),
            false => engine::run(&cfg, queue, ready_tx),
        })
        .context("starting the engine thread")?;
    let ready = ready
        .recv()
        .map_err(|_| anyhow!("the engine stopped while loading the model"))??;
    // The HTTP side's own tokenizer, for /tokenize and /detokenize.
    let path = realm_core::catalog::resolve_model(&args.model).map_err(anyhow::Error::msg)?;
    let file = realm_core::gguf::GgufFile::open(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    let tokenizer = realm_core::tokenizer::Tokenizer::from_metadata(file.metadata())
        .context("building the tokenizer")?;
    // A template given on the command line is checked now, not at the
    // first chat request.
    let template = match &chat_template {
        Some(t) => Ok(realm_core::chat::ChatTemplate::for_tokenizer(t, &tokenizer)
            .context("--chat-template")?),
        None => realm_core::chat::ChatTemplate::from_metadata(file.metadata(), &tokenizer)
            .map_err(|e| e.to_string()),
    };
    let reasoning = match (args.reasoning_format, &template) {
        (ReasoningArg::None, _) | (ReasoningArg::Auto, Err(_)) => None,
        (ReasoningArg::Deepseek, Err(_)) => Some(ReasoningFormat::Think),
        (ReasoningArg::Deepseek, Ok(t)) => Some(ReasoningFormat::block_of_template(t.source())),
        (ReasoningArg::Auto, Ok(t)) => ReasoningFormat::of_template(t.source()),
    };
    let props = props::Props {
        model_path: path.display().to_string(),
        ctx: ready.ctx,
        slots: args.parallel,
        template,
    };
    let app = Arc::new(http::App {
        jobs,
        held: Arc::new(AtomicUsize::new(0)),
        limit: args.parallel.saturating_add(args.queue),
        model: args.alias.clone().unwrap_or(ready.name),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        count: AtomicU64::new(0),
        api_key: args.api_key.clone(),
        tokenizer,
        metrics: counted,
        props,
        loras,
        reasoning,
    });
    let held = app.held.clone();
    let cors = http::cors(&args.cors_origins)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (parallel, ctx) = (args.parallel, ready.ctx);
    let runs = match args.guest.wasm {
        true => "wasm tenants",
        false => "in parallel",
    };
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        eprintln!(
            "realm: serving {} on http://{} ({parallel} {runs}, context {ctx}); \
             Ctrl-C stops",
            app.model,
            listener.local_addr()?
        );
        let (stop, mut stopping) = tokio::sync::watch::channel(false);
        let serve = axum::serve(listener, http::router(app, args.max_body, cors))
            .with_graceful_shutdown(async move {
                let _ = tokio::signal::ctrl_c().await;
                let _ = stop.send(true);
            });
        // After Ctrl-C: once every answer in flight has ended, its
        // connection has a grace period to close; a second Ctrl-C stops at
        // once.
        let bounded = async move {
            if stopping.wait_for(|s| *s).await.is_err() {
                // The server ended of itself.
                return std::future::pending().await;
            }
            let answered = async {
                while held.load(Ordering::Relaxed) > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => eprintln!("realm: Ctrl-C again: stopping now"),
                () = answered => eprintln!(
                    "realm: connections still open {} s after the last answer ended: closing them",
                    SHUTDOWN_GRACE.as_secs()
                ),
            }
        };
        tokio::select! {
            served = serve => served.context("serving"),
            () = bounded => Ok(()),
        }
    })?;
    // The router, and with it the engine's queue, is gone: the engine ends.
    drop(runtime);
    engine
        .join()
        .map_err(|_| anyhow!("the engine thread panicked"))
}
