//! `realm run --prompt-cache FILE`: a prompt's KV state kept in a file
//! ([`Model::save_state`]), so that a run whose prompt begins with the same
//! tokens runs only the rest.

use std::path::Path;

use anyhow::{Context, Result};
use realm_core::backend::Backend;
use realm_models::{Model, Session};

/// Restores `path` into `session` (when it exists and fits) and keeps the
/// longest beginning it shares with `prompt`, short of the whole prompt
/// (the last token must run for its logits). Returns how many tokens that
/// is, and how many the file and the prompt share. A file that cannot be
/// used is reported and ignored.
pub fn restore<B: Backend>(
    model: &Model<'_, B>,
    session: &mut Session<B>,
    path: &Path,
    prompt: &[u32],
) -> (usize, usize) {
    let Ok(file) = std::fs::File::open(path) else {
        eprintln!("realm: prompt cache {} is new", path.display());
        return (0, 0);
    };
    let mut reader = std::io::BufReader::new(file);
    match model.load_state(session, &mut reader) {
        Ok(saved) => {
            let common = saved.iter().zip(prompt).take_while(|(a, b)| a == b).count();
            session.truncate(common.min(prompt.len().saturating_sub(1)));
            // (A model whose state cannot forget tokens keeps all or none.)
            let keep = session.position();
            eprintln!(
                "realm: prompt cache {}: {keep} of the prompt's {} tokens reused",
                path.display(),
                prompt.len()
            );
            (keep, common)
        }
        Err(e) => {
            eprintln!("realm: prompt cache {} not used: {e}", path.display());
            (0, 0)
        }
    }
}

/// Saves the state of `session`'s first tokens (of `tokens`, those it
/// holds) to `path`, through a temporary file so that a failed write
/// leaves the old one; skipped when the file holds them already (its
/// tokens begin with them: `held` is how many it shares).
pub fn save<B: Backend>(
    model: &Model<'_, B>,
    session: &mut Session<B>,
    path: &Path,
    mut tokens: Vec<u32>,
    held: usize,
) -> Result<()> {
    tokens.truncate(session.position());
    session.truncate(tokens.len());
    if tokens.len() <= held {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    let write = || -> Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        model.save_state(session, &tokens, &mut w)?;
        std::io::Write::flush(&mut w)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    };
    write().with_context(|| format!("saving the prompt cache {}", path.display()))?;
    eprintln!(
        "realm: prompt cache {}: saved {} tokens",
        path.display(),
        tokens.len()
    );
    Ok(())
}
