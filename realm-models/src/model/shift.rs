//! Context shift: when a session is full, forget a stretch of tokens after
//! the first few and move the later ones down, so that generation goes on
//! (llama.cpp's `--context-shift`). The moved keys are turned back by the
//! distance they move: RoPE's rotations compose, so a key rotated for
//! position `p` and then by `-d` is the key for position `p - d`, and the
//! cache is what running the kept tokens at their new positions would
//! have stored, up to rounding.

use realm_core::backend::{Backend, KvSpan};

use super::{Model, Session};
use crate::{Error, Result};

/// How generation makes room when the context is full: keep the first
/// `keep` tokens of the session, forget half of the rest (the oldest
/// half), and go on, as llama.cpp does with `--context-shift` and
/// `--keep`.
///
/// ```
/// use realm_models::ContextShift;
/// let shift = ContextShift { keep: 4 };
/// // A full session of 100 tokens forgets 48 of them, after the first 4.
/// assert_eq!(shift.discard(100), 48);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextShift {
    /// Tokens at the start of the session that are never forgotten (the
    /// BOS token, a system prompt).
    pub keep: usize,
}

impl ContextShift {
    /// The shift for a session whose first tokens are `prompt`, keeping
    /// `n_keep` of them as llama.cpp counts `--keep` and `n_keep`: after
    /// the BOS token (`bos`, when the prompt starts with it), which always
    /// stays; negative, or more than the prompt holds: the whole prompt.
    ///
    /// ```
    /// use realm_models::ContextShift;
    /// let prompt = [1, 50, 51, 52];
    /// assert_eq!(ContextShift::for_prompt(&prompt, Some(1), 2).keep, 3);
    /// assert_eq!(ContextShift::for_prompt(&prompt, Some(1), -1).keep, 4);
    /// assert_eq!(ContextShift::for_prompt(&prompt, None, 0).keep, 0);
    /// ```
    pub fn for_prompt(prompt: &[u32], bos: Option<u32>, n_keep: i64) -> Self {
        let bos = usize::from(bos.is_some() && prompt.first().copied() == bos);
        let keep = match usize::try_from(n_keep) {
            Ok(n) if n.saturating_add(bos) <= prompt.len() => n + bos,
            _ => prompt.len(),
        };
        Self { keep }
    }

    /// How many tokens a session holding `held` forgets: half of those
    /// after `keep` (none when there are fewer than two).
    pub fn discard(&self, held: usize) -> usize {
        held.saturating_sub(self.keep) / 2
    }
}

impl<B: Backend> Model<'_, B> {
    /// Forgets the `discard` tokens after the first `keep` that `session`
    /// holds and moves the tokens after them down by `discard` positions,
    /// turning their keys back by as much. The session then holds
    /// `position() - discard` tokens and goes on from there; its last
    /// logits stay those of the last token run.
    ///
    /// Errors: `keep + discard` past the session's tokens.
    pub fn shift_context(
        &self,
        session: &mut Session<B>,
        keep: usize,
        discard: usize,
    ) -> Result<()> {
        let held = session.pos;
        let end = keep
            .checked_add(discard)
            .filter(|&e| e <= held)
            .ok_or_else(|| {
                Error::BadConfig(format!(
                    "cannot forget {discard} tokens after the first {keep}: the session holds \
                     {held}"
                ))
            })?;
        if discard > 0 && self.config.has_recurrent() {
            return Err(Error::BadConfig(
                "a context shift cannot take tokens out of a recurrent state (Qwen 3.5's delta \
                 nets, LFM2's convolutions, Granite 4.0's Mamba-2 mixers)"
                    .into(),
            ));
        }
        // (GPT-2's keys hold their learned positions, which no rotation
        // moves.)
        if discard > 0 && self.pos_embed.is_some() {
            return Err(Error::BadConfig(
                "a context shift cannot move learned positions (GPT-2's, StarCoder's)".into(),
            ));
        }
        let moved = held - end;
        session.chunk = None;
        if discard == 0 {
            return Ok(());
        }
        if moved > 0 {
            let c = &self.config;
            let b = self.backend;
            let (mut k, mut v) = (Vec::new(), Vec::new());
            let back = u32::try_from(discard)
                .map_err(|_| Error::BadConfig(format!("cannot shift by {discard} positions")))?;
            let positions = vec![back; moved];
            // Each cache layer once, turned as the block that stores it.
            for layer in c.cache_blocks() {
                let slot = self.layers[layer].kv_slot;
                let heads = c.layer_heads(layer);
                let width = heads.n_kv_heads * heads.head_dim;
                k.resize(moved * width, 0.0);
                v.resize(moved * width, 0.0);
                b.kv_read(&session.cache, slot, end..held, &mut k, &mut v)?;
                let mut keys = b.upload(&k)?;
                let values = b.upload(&v)?;
                // A negative frequency scale turns each pair the other way;
                // the keys have their magnitude already (llama.cpp's shift
                // gives them it again).
                let mut rope = self.rope(layer, session.scratch.long_rope);
                rope.freq_scale = -rope.freq_scale;
                rope.magnitude = 1.0;
                let ws = &mut session.scratch.ws;
                b.rope(
                    ws,
                    &mut keys,
                    heads.n_kv_heads,
                    heads.head_dim,
                    &positions,
                    &rope,
                )?;
                let at = KvSpan {
                    layer: slot,
                    start_pos: keep,
                };
                b.kv_write(ws, &mut session.cache, at, &keys, &values, 0..moved)?;
            }
        }
        session.pos = keep + moved;
        Ok(())
    }
}
