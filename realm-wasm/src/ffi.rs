//! The wasm32 side of the ABI: the `realm` imports, the [`Host`] over them,
//! and the exports (`realm_alloc`, `realm_free`, `generate`).
//!
//! Pointers and lengths cross the boundary as `u64` (a wasm32 pointer is
//! zero-extended); arrays of `u32` tokens and `f32` logits are counted in
//! elements, byte buffers in bytes.

use std::cell::RefCell;
use std::rc::Rc;

use realm_core::gguf::Gguf;
use realm_core::tokenizer::Tokenizer;

use crate::generate::{generate as run, Host};
use crate::params::Params;

#[link(wasm_import_module = "realm")]
extern "C" {
    fn model_metadata(model: u32, ptr: u64, cap: u64) -> u64;
    fn model_vocab_size(model: u32) -> u64;
    fn model_layers(model: u32) -> u64;
    fn session_create(model: u32, max_seq_len: u64, batch: u64) -> u64;
    fn session_drop(session: u64);
    fn session_shift(session: u64, keep: u64, discard: u64);
    fn forward(session: u64, tokens: u64, n_tokens: u64, logits: u64, n_logits: u64) -> i32;
    fn embed_tokens(session: u64, tokens: u64, n_tokens: u64) -> i32;
    fn forward_layer(session: u64, layer: u32);
    fn compute_logits(session: u64, logits: u64, n_logits: u64);
    fn emit(text: u64, len: u64) -> i32;
    fn finish(prompt_tokens: u64, generated_tokens: u64, stop_reason: i32);
}

/// Status: the metadata could not be read or holds no usable tokenizer.
const BAD_METADATA: i32 = -2;
/// Status: the parameter block is malformed.
const BAD_PARAMS: i32 = -1;

fn addr<T>(p: *const T) -> u64 {
    p as usize as u64
}

/// The host functions, as imported.
struct Imports;

impl Host for Imports {
    fn session_create(&mut self, model: u32, max_seq_len: u64, batch: u64) -> u64 {
        // SAFETY: a host import taking plain integers.
        unsafe { session_create(model, max_seq_len, batch) }
    }

    fn session_drop(&mut self, session: u64) {
        // SAFETY: a host import taking a plain integer.
        unsafe { session_drop(session) }
    }

    fn session_shift(&mut self, session: u64, keep: u64, discard: u64) {
        // SAFETY: a host import taking plain integers.
        unsafe { session_shift(session, keep, discard) }
    }

    fn forward(&mut self, session: u64, tokens: &[u32], logits: &mut [f32]) -> bool {
        let (t, l) = (addr(tokens.as_ptr()), addr(logits.as_mut_ptr()));
        // SAFETY: the host reads `tokens` and writes `logits` within the
        // lengths given, while both borrows are live.
        unsafe { forward(session, t, tokens.len() as u64, l, logits.len() as u64) == 0 }
    }

    fn embed_tokens(&mut self, session: u64, tokens: &[u32]) -> bool {
        // SAFETY: the host reads `tokens` within its length.
        unsafe { embed_tokens(session, addr(tokens.as_ptr()), tokens.len() as u64) == 0 }
    }

    fn forward_layer(&mut self, session: u64, layer: u32) {
        // SAFETY: a host import taking plain integers.
        unsafe { forward_layer(session, layer) }
    }

    fn compute_logits(&mut self, session: u64, logits: &mut [f32]) {
        // SAFETY: the host writes `logits` within its length.
        unsafe { compute_logits(session, addr(logits.as_mut_ptr()), logits.len() as u64) }
    }

    fn emit(&mut self, text: &str) -> bool {
        // SAFETY: the host reads `text` within its length.
        unsafe { emit(addr(text.as_ptr()), text.len() as u64) == 0 }
    }
}

/// What the guest keeps of a model between calls.
struct ModelInfo {
    tokenizer: Rc<Tokenizer>,
    n_layers: u32,
    vocab: usize,
}

thread_local! {
    static MODELS: RefCell<Vec<(u32, Rc<ModelInfo>)>> = const { RefCell::new(Vec::new()) };
}

/// The tokenizer and sizes of model `model`, built on first use from the
/// metadata the host hands over.
fn model_info(model: u32) -> Option<Rc<ModelInfo>> {
    if let Some(found) = MODELS.with_borrow(|m| {
        m.iter()
            .find(|(i, _)| *i == model)
            .map(|(_, info)| info.clone())
    }) {
        return Some(found);
    }
    // SAFETY: a null buffer of capacity 0 only asks for the length.
    let len = unsafe { model_metadata(model, 0, 0) };
    let mut bytes = vec![0u8; usize::try_from(len).ok()?];
    // SAFETY: the host writes at most `bytes.len()` bytes into `bytes`.
    let written = unsafe { model_metadata(model, addr(bytes.as_mut_ptr()), bytes.len() as u64) };
    if written != len {
        return None;
    }
    let file = Gguf::from_bytes(bytes).ok()?;
    let tokenizer = Tokenizer::from_metadata(file.metadata()).ok()?;
    // SAFETY: host imports taking a plain integer.
    let (n_layers, vocab) = unsafe { (model_layers(model), model_vocab_size(model)) };
    let info = Rc::new(ModelInfo {
        tokenizer: Rc::new(tokenizer),
        n_layers: u32::try_from(n_layers).ok()?,
        vocab: usize::try_from(vocab).ok()?,
    });
    MODELS.with_borrow_mut(|m| m.push((model, info.clone())));
    Some(info)
}

/// Allocates `len` bytes (alignment 8) for the host to write into; returns
/// their address, or 0 when `len` is 0 or memory is exhausted.
#[no_mangle]
pub extern "C" fn realm_alloc(len: u64) -> u64 {
    let Ok(len) = usize::try_from(len) else {
        return 0;
    };
    let Ok(layout) = std::alloc::Layout::from_size_align(len, 8) else {
        return 0;
    };
    if len == 0 {
        return 0;
    }
    // SAFETY: the layout has a non-zero size.
    addr(unsafe { std::alloc::alloc(layout) })
}

/// Frees what [`realm_alloc`] returned for the same `len`.
///
/// # Safety
///
/// `ptr` must come from `realm_alloc(len)` and not have been freed.
#[no_mangle]
pub unsafe extern "C" fn realm_free(ptr: u64, len: u64) {
    if ptr == 0 || len == 0 {
        return;
    }
    if let (Ok(p), Ok(len)) = (usize::try_from(ptr), usize::try_from(len)) {
        if let Ok(layout) = std::alloc::Layout::from_size_align(len, 8) {
            // SAFETY: the caller passes back a block `realm_alloc(len)` gave,
            // allocated with this same layout.
            unsafe { std::alloc::dealloc(p as *mut u8, layout) }
        }
    }
}

/// Reads `len` bytes at `ptr` (0 and 0 for an empty buffer).
///
/// # Safety
///
/// `ptr..ptr + len` must be readable guest memory for the whole call.
unsafe fn bytes<'a>(ptr: u64, len: u64) -> Option<&'a [u8]> {
    let len = usize::try_from(len).ok()?;
    if len == 0 {
        return Some(&[]);
    }
    let p = usize::try_from(ptr).ok()?;
    // SAFETY: the caller guarantees the range is readable memory.
    Some(unsafe { std::slice::from_raw_parts(p as *const u8, len) })
}

/// Generates from the UTF-8 prompt at `prompt_ptr` with the parameter block at
/// `params_ptr`, streaming text through the `emit` import and reporting
/// counts through `finish`. Returns 0, or a negative status (`ABI.md`).
///
/// # Safety
///
/// Both buffers must lie in guest memory (the host writes them there through
/// [`realm_alloc`]).
#[no_mangle]
pub unsafe extern "C" fn generate(
    prompt_ptr: u64,
    prompt_len: u64,
    params_ptr: u64,
    params_len: u64,
) -> i32 {
    // SAFETY: the host wrote both buffers into this memory before the call.
    let (prompt, params) =
        unsafe { (bytes(prompt_ptr, prompt_len), bytes(params_ptr, params_len)) };
    let Some(params) = params.and_then(|p| Params::parse(p).ok()) else {
        return BAD_PARAMS;
    };
    let Some(prompt) = prompt.and_then(|p| std::str::from_utf8(p).ok()) else {
        return crate::generate::Failure::BadPrompt as i32;
    };
    let Some(info) = model_info(params.model) else {
        return BAD_METADATA;
    };
    match run(
        &mut Imports,
        &info.tokenizer,
        info.n_layers,
        info.vocab,
        prompt,
        &params,
    ) {
        Ok(out) => {
            // SAFETY: a host import taking plain integers.
            unsafe {
                finish(
                    out.prompt_tokens as u64,
                    out.generated_tokens as u64,
                    out.stop_reason as i32,
                )
            };
            0
        }
        Err(failure) => failure as i32,
    }
}
