//! `realm serve --wasm`: every request runs inside a WebAssembly tenant.
//!
//! `--parallel` tenants of the guest (realm-wasm) share one copy of the
//! model in a realm-runtime; each runs one request at a time on its own
//! thread: the guest tokenizes, samples, loops and streams, while the host
//! runs the model, and the runtime merges the tenants' concurrent decode
//! steps into batches. This thread renders chat templates and checks
//! prompts with the host's tokenizer (the guest's ids are the same), then
//! hands requests to whichever tenant is free. A client that goes away
//! stops its tenant at the next piece of text.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use axum::http::StatusCode;
use realm_models::StopReason;
use realm_runtime::{GenerateRequest, Tenant};

use super::engine::{EngineConfig, Event, Input, Job, Ready};
use super::metrics::{self, Metrics};
use super::openai::ApiError;
use super::prompt::{PromptText, Prompts};
use crate::guest::{GuestArgs, Host};
use crate::load;

/// A checked request, for a tenant.
struct Work {
    job: Job,
    prompt: PromptText,
    prompt_tokens: usize,
    req: GenerateRequest,
}

/// Starts the tenants and serves `jobs` until every sender is gone; `ready`
/// hears once, when the tenants are up or could not be started.
pub fn run(
    cfg: &EngineConfig,
    guest: &GuestArgs,
    jobs: Receiver<Job>,
    ready: Sender<Result<Ready>>,
) {
    let started = load::open(&cfg.model, 1).and_then(|mut l| {
        l.chat_template = cfg.chat_template.clone();
        let host = Host::start(
            guest,
            &cfg.model,
            cfg.threads,
            &cfg.device,
            cfg.kv_dtype,
            &cfg.lora,
        )?;
        let tenants = (0..cfg.parallel)
            .map(|_| host.tenant())
            .collect::<Result<Vec<_>>>()?;
        let model_ctx = realm_models::ModelConfig::from_metadata(l.file.metadata())?.context_length;
        Ok((l, tenants, crate::run::context_len(cfg.ctx_size, model_ctx)))
    });
    let (l, tenants, ctx) = match started {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let prompts = Prompts::new(&l, ctx);
    let (work, queue) = mpsc::channel::<Work>();
    let queue = Arc::new(Mutex::new(queue));
    std::thread::scope(|scope| {
        for tenant in tenants {
            let queue = queue.clone();
            let m = &cfg.metrics;
            scope.spawn(move || serve(tenant, &queue, m));
        }
        let _ = ready.send(Ok(Ready {
            name: l.name.clone(),
            ctx,
        }));
        for job in jobs {
            match check(&prompts, &job, cfg.context_shift) {
                Ok((prompt, prompt_tokens, req)) => {
                    let w = Work {
                        job,
                        prompt,
                        prompt_tokens,
                        req,
                    };
                    if work.send(w).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed(e));
                }
            }
        }
        // The tenants end once the queue is empty and closed.
        drop(work);
    });
}

/// The request's prompt as text, its length in tokens, and the guest's
/// request; with `shift` (`--context-shift`), one that runs in the whole
/// context and shifts it when full, until `max_tokens` or the model ends
/// it.
fn check(
    prompts: &Prompts<'_>,
    job: &Job,
    shift: bool,
) -> Result<(PromptText, usize, GenerateRequest), ApiError> {
    if let Input::Embed(_) = job.input {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "embeddings need the native engine (realm serve without --wasm)",
        ));
    }
    if job.limits.logprobs.is_some() {
        return Err(ApiError::invalid(
            Some("logprobs"),
            "a wasm tenant samples its own tokens: log-probabilities need the native engine",
        ));
    }
    let prompt = prompts.text(&job.input)?.map_err(|_| {
        ApiError::invalid(
            Some("prompt"),
            "a wasm tenant takes its prompt as text, not token ids",
        )
    })?;
    let n = prompts.encode(&prompt)?.len();
    prompts.check_len(n)?;
    let room = prompts.ctx - n;
    let (max_tokens, max_seq_len) = match shift {
        true => (job.limits.max_tokens.unwrap_or(usize::MAX), prompts.ctx),
        false => (job.limits.max_tokens.map_or(room, |m| m.min(room)), 0),
    };
    let req = GenerateRequest {
        max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
        max_seq_len: u32::try_from(max_seq_len).unwrap_or(u32::MAX),
        context_shift: shift.then_some(job.limits.n_keep),
        sampling: job.limits.sampling.clone(),
        stop: job.limits.stop.clone(),
        add_special: prompt.add_special,
        parse_special: prompt.parse_special,
        grammar: job.limits.grammar.as_ref().map(|g| g.source().to_string()),
        grammar_triggers: job.limits.grammar_triggers.clone(),
        preserved_tokens: job.limits.preserved_tokens.clone(),
        ..GenerateRequest::default()
    };
    Ok((prompt, n, req))
}

/// One tenant's loop: a request at a time, until the queue closes.
fn serve(mut tenant: Tenant, queue: &Mutex<Receiver<Work>>, m: &Metrics) {
    loop {
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(w) = next else {
            return;
        };
        let events = &w.job.events;
        if events.is_closed() {
            continue;
        }
        let _ = events.send(Event::Started {
            prompt_tokens: w.prompt_tokens,
            cached_tokens: 0,
        });
        let text = |text: String| Event::Text {
            text,
            logprobs: Vec::new(),
        };
        if w.job.limits.echo {
            let _ = events.send(text(w.prompt.text.clone()));
        }
        if w.req.max_tokens == 0 {
            // `echo` with nothing to generate: the prompt is the answer.
            let _ = events.send(Event::Done {
                reason: StopReason::MaxTokens,
                completion_tokens: 0,
                stop_word: None,
            });
            continue;
        }
        let ran = tenant.generate_while(&w.prompt.text, &w.req, |piece| {
            events.send(text(piece.to_string())).is_ok()
        });
        match ran {
            Ok(stats) => {
                let reason = match stats.stop_reason {
                    realm_runtime::StopReason::EndOfGeneration => StopReason::EndOfGeneration,
                    realm_runtime::StopReason::MaxTokens => StopReason::MaxTokens,
                    realm_runtime::StopReason::StopString => StopReason::StopString,
                    realm_runtime::StopReason::ContextFull => StopReason::ContextFull,
                    realm_runtime::StopReason::Cancelled => continue,
                };
                eprintln!(
                    "realm: a tenant served {} + {} tokens in {:.2} s ({reason:?})",
                    stats.prompt_tokens, stats.generated_tokens, stats.seconds
                );
                let _ = events.send(Event::Done {
                    reason,
                    // The guest does not say which stop string it met.
                    stop_word: None,
                    completion_tokens: usize::try_from(stats.generated_tokens)
                        .unwrap_or(usize::MAX),
                });
                // A tenant reports no split of its time between prompt and
                // decode: only its tokens count.
                metrics::add(&m.prompt_tokens, stats.prompt_tokens);
                metrics::add(&m.tokens_predicted, stats.generated_tokens);
                metrics::add(&m.sequences_done, 1);
            }
            Err(e) => {
                eprintln!("realm: a tenant's request failed: {e}");
                let _ = events.send(Event::Failed(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e.to_string(),
                )));
            }
        }
    }
}
