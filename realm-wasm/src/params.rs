//! The parameter block of `generate` (little-endian, laid out in `ABI.md`).

use realm_models::sampling::SamplerKind;
use realm_models::{Mirostat, SamplingParams};

/// The layout version hosts write. This guest also reads version 5, which
/// ends after `n_keep` (no grammar triggers), version 4, which ends after
/// `ignore_eos` (its `n_keep` is 0), version 3, which ends after
/// the grammar (none of the samplers after min-p but the penalties),
/// version 2, which ends after the logit biases (no grammar), and version
/// 1, which ends after the stop strings (no penalties, no logit bias).
pub const PARAMS_VERSION: u32 = 6;
/// Flag: add the vocabulary's special tokens (BOS) around the prompt.
pub const FLAG_ADD_SPECIAL: u32 = 1;
/// Flag: turn special-token text in the prompt (`<|im_start|>`) into ids.
pub const FLAG_PARSE_SPECIAL: u32 = 2;
/// Flag: run the model layer by layer (`embed_tokens`, `forward_layer`,
/// `compute_logits`) instead of the fused `forward`.
pub const FLAG_LAYERED: u32 = 4;
/// Flag: when the session is full, forget the older half of the tokens
/// after the first `n_keep` of the prompt and go on (llama.cpp's context
/// shift).
pub const FLAG_CONTEXT_SHIFT: u32 = 8;

/// Size of the fixed part of the block, before the stop strings.
const FIXED: usize = 56;

/// What the host asks the guest to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Index of the model among those granted to the tenant.
    pub model: u32,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Tokens the session holds (0: prompt plus `max_tokens`).
    pub max_seq_len: u32,
    /// Sampling.
    pub sampling: SamplingParams,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Stop strings.
    pub stop: Vec<String>,
    /// A GBNF grammar the text must keep to.
    pub grammar: Option<String>,
    /// With these, the grammar is lazy: it holds from the first of them
    /// the text holds (see `realm_models::GenerateParams::grammar_triggers`).
    pub grammar_triggers: Vec<String>,
    /// Special tokens whose text stays in the generated text (see
    /// `realm_models::GenerateParams::preserved_tokens`).
    pub preserved_tokens: Vec<String>,
    /// With [`FLAG_CONTEXT_SHIFT`]: the prompt's tokens a shift keeps, after
    /// the BOS token, as llama.cpp counts `--keep` (-1: the whole prompt).
    pub n_keep: i32,
}

/// A malformed parameter block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsError(pub &'static str);

impl std::fmt::Display for ParamsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad generate parameters: {}", self.0)
    }
}

impl std::error::Error for ParamsError {}

/// Reads little-endian fields off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParamsError> {
        if self.0.len() < n {
            return Err(ParamsError("block is truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, ParamsError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f32(&mut self) -> Result<f32, ParamsError> {
        self.u32().map(f32::from_bits)
    }

    fn u64(&mut self) -> Result<u64, ParamsError> {
        Ok(u64::from(self.u32()?) | (u64::from(self.u32()?) << 32))
    }

    /// A u32 count, then that many strings (see [`Reader::string`]).
    fn strings(&mut self, not_utf8: &'static str) -> Result<Vec<String>, ParamsError> {
        let n = self.u32()?;
        // Each string takes at least its 4-byte length: a count the block
        // cannot hold is refused before anything is allocated for it.
        if self.0.len() / 4 < n as usize {
            return Err(ParamsError("block is truncated"));
        }
        (0..n).map(|_| self.string(not_utf8)).collect()
    }

    /// A u32 length, then that many bytes of UTF-8 (else `not_utf8`).
    fn string(&mut self, not_utf8: &'static str) -> Result<String, ParamsError> {
        let len = self.u32()? as usize;
        let s = std::str::from_utf8(self.take(len)?).map_err(|_| ParamsError(not_utf8))?;
        Ok(s.to_string())
    }
}

impl Params {
    /// Parses a block; every length is checked.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParamsError> {
        let mut r = Reader(bytes);
        let version = r.u32()?;
        if !(1..=PARAMS_VERSION).contains(&version) {
            return Err(ParamsError("unknown version"));
        }
        let model = r.u32()?;
        let max_tokens = r.u32()?;
        let max_seq_len = r.u32()?;
        let mut sampling = SamplingParams {
            temperature: r.f32()?,
            top_k: r.u32()? as usize,
            top_p: r.f32()?,
            min_p: r.f32()?,
            repeat_penalty: r.f32()?,
            penalty_last_n: r.u32()? as usize,
            seed: r.u64()?,
            ..SamplingParams::default()
        };
        let flags = r.u32()?;
        let n_stop = r.u32()?;
        let mut stop = Vec::new();
        for _ in 0..n_stop {
            stop.push(r.string("stop string is not UTF-8")?);
        }
        if version >= 2 {
            sampling.presence_penalty = r.f32()?;
            sampling.frequency_penalty = r.f32()?;
            let n_bias = r.u32()?;
            // Each entry is 8 bytes: a count the block cannot hold is
            // refused before anything is allocated for it.
            if r.0.len() / 8 < n_bias as usize {
                return Err(ParamsError("block is truncated"));
            }
            sampling.logit_bias = (0..n_bias)
                .map(|_| Ok((r.u32()?, r.f32()?)))
                .collect::<Result<_, ParamsError>>()?;
        }
        let mut grammar = None;
        if version >= 3 {
            let len = r.u32()? as usize;
            if len > 0 {
                let g = std::str::from_utf8(r.take(len)?)
                    .map_err(|_| ParamsError("grammar is not UTF-8"))?;
                grammar = Some(g.to_string());
            }
        }
        if version >= 4 {
            sampling.min_keep = r.u32()? as usize;
            sampling.typical_p = r.f32()?;
            sampling.top_n_sigma = r.f32()?;
            sampling.xtc_probability = r.f32()?;
            sampling.xtc_threshold = r.f32()?;
            sampling.dynatemp_range = r.f32()?;
            sampling.dynatemp_exponent = r.f32()?;
            sampling.dry_multiplier = r.f32()?;
            sampling.dry_base = r.f32()?;
            sampling.dry_allowed_length = r.u32()? as usize;
            sampling.dry_penalty_last_n = r.u32()? as usize;
            let n_breakers = r.u32()?;
            // Each breaker takes at least its 4-byte length.
            if r.0.len() / 4 < n_breakers as usize {
                return Err(ParamsError("block is truncated"));
            }
            sampling.dry_sequence_breakers = (0..n_breakers)
                .map(|_| r.string("DRY sequence breaker is not UTF-8"))
                .collect::<Result<_, ParamsError>>()?;
            sampling.mirostat =
                Mirostat::from_version(r.u32()?).ok_or(ParamsError("unknown mirostat version"))?;
            sampling.mirostat_tau = r.f32()?;
            sampling.mirostat_eta = r.f32()?;
            let n_samplers = r.u32()?;
            if r.0.len() / 4 < n_samplers as usize {
                return Err(ParamsError("block is truncated"));
            }
            sampling.samplers = (0..n_samplers)
                .map(|_| {
                    let code = r.u32()? as usize;
                    SamplerKind::DEFAULT
                        .get(code)
                        .copied()
                        .ok_or(ParamsError("unknown sampler"))
                })
                .collect::<Result<_, ParamsError>>()?;
            sampling.ignore_eos = r.u32()? != 0;
        }
        let n_keep = if version >= 5 { r.u32()? as i32 } else { 0 };
        let (mut grammar_triggers, mut preserved_tokens) = (Vec::new(), Vec::new());
        if version >= 6 {
            grammar_triggers = r.strings("grammar trigger is not UTF-8")?;
            preserved_tokens = r.strings("preserved token is not UTF-8")?;
        }
        if !r.0.is_empty() {
            return Err(ParamsError("bytes after the block's end"));
        }
        Ok(Self {
            model,
            max_tokens,
            max_seq_len,
            sampling,
            flags,
            stop,
            grammar,
            grammar_triggers,
            preserved_tokens,
            n_keep,
        })
    }

    /// The block for these parameters (what a host writes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let s = &self.sampling;
        let mut out =
            Vec::with_capacity(FIXED + self.stop.iter().map(|s| 4 + s.len()).sum::<usize>());
        for v in [
            PARAMS_VERSION,
            self.model,
            self.max_tokens,
            self.max_seq_len,
            s.temperature.to_bits(),
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [
            s.top_k as u32,
            s.top_p.to_bits(),
            s.min_p.to_bits(),
            s.repeat_penalty.to_bits(),
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(s.penalty_last_n as u32).to_le_bytes());
        out.extend_from_slice(&s.seed.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&(self.stop.len() as u32).to_le_bytes());
        for stop in &self.stop {
            out.extend_from_slice(&(stop.len() as u32).to_le_bytes());
            out.extend_from_slice(stop.as_bytes());
        }
        out.extend_from_slice(&s.presence_penalty.to_bits().to_le_bytes());
        out.extend_from_slice(&s.frequency_penalty.to_bits().to_le_bytes());
        out.extend_from_slice(&(s.logit_bias.len() as u32).to_le_bytes());
        for &(id, bias) in &s.logit_bias {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&bias.to_bits().to_le_bytes());
        }
        let grammar = self.grammar.as_deref().unwrap_or("");
        put_str(&mut out, grammar);
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        out.extend_from_slice(&count(s.min_keep).to_le_bytes());
        for v in [
            s.typical_p,
            s.top_n_sigma,
            s.xtc_probability,
            s.xtc_threshold,
            s.dynatemp_range,
            s.dynatemp_exponent,
            s.dry_multiplier,
            s.dry_base,
        ] {
            out.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        out.extend_from_slice(&count(s.dry_allowed_length).to_le_bytes());
        out.extend_from_slice(&count(s.dry_penalty_last_n).to_le_bytes());
        out.extend_from_slice(&(s.dry_sequence_breakers.len() as u32).to_le_bytes());
        for b in &s.dry_sequence_breakers {
            put_str(&mut out, b);
        }
        out.extend_from_slice(&s.mirostat.version().to_le_bytes());
        out.extend_from_slice(&s.mirostat_tau.to_bits().to_le_bytes());
        out.extend_from_slice(&s.mirostat_eta.to_bits().to_le_bytes());
        out.extend_from_slice(&(s.samplers.len() as u32).to_le_bytes());
        for k in &s.samplers {
            // Each sampler as its place in the default order.
            let code = SamplerKind::DEFAULT
                .iter()
                .position(|d| d == k)
                .unwrap_or(0);
            out.extend_from_slice(&(code as u32).to_le_bytes());
        }
        out.extend_from_slice(&u32::from(s.ignore_eos).to_le_bytes());
        out.extend_from_slice(&self.n_keep.to_le_bytes());
        for list in [&self.grammar_triggers, &self.preserved_tokens] {
            out.extend_from_slice(&count(list.len()).to_le_bytes());
            for t in list {
                put_str(&mut out, t);
            }
        }
        out
    }
}

/// A u32 length and the bytes of `s`.
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let p = Params {
            model: 1,
            max_tokens: 32,
            max_seq_len: 0,
            sampling: SamplingParams {
                seed: u64::MAX - 5,
                presence_penalty: 0.25,
                frequency_penalty: -0.5,
                logit_bias: vec![(7, -100.0), (49151, 2.5)],
                min_keep: 2,
                typical_p: 0.9,
                top_n_sigma: 1.5,
                xtc_probability: 0.5,
                xtc_threshold: 0.2,
                dynatemp_range: 0.3,
                dynatemp_exponent: 2.0,
                dry_multiplier: 0.8,
                dry_base: 1.5,
                dry_allowed_length: 3,
                dry_penalty_last_n: 128,
                dry_sequence_breakers: vec!["\n".into(), "ab".into()],
                mirostat: Mirostat::V2,
                mirostat_tau: 4.0,
                mirostat_eta: 0.2,
                samplers: vec![
                    SamplerKind::TopK,
                    SamplerKind::Temperature,
                    SamplerKind::MinP,
                ],
                ..SamplingParams::default()
            },
            flags: FLAG_ADD_SPECIAL | FLAG_LAYERED,
            stop: vec!["\n\n".into(), "é".into()],
            grammar: Some("root ::= \"é\"".into()),
            grammar_triggers: vec!["<tool_call>".into()],
            preserved_tokens: vec!["[A]".into()],
            n_keep: -1,
        };
        let whole = p.to_bytes();
        // Version 6's grammar triggers and preserved tokens end the block:
        // the checks of the older fields count from before them.
        let triggers = 4 + 4 + 11 + 4 + 4 + 3;
        let bytes = whole[..whole.len() - triggers].to_vec();
        let stops = 4 + 2 + 4 + 2;
        let grammar = 4 + 13;
        // min_keep, 8 floats, 2 counts, the breakers, mirostat's 3 fields,
        // the 3 samplers, ignore_eos.
        let v4 = 4 + 32 + 8 + 4 + (4 + 1) + (4 + 2) + 12 + 4 + 3 * 4 + 4;
        let v3 = FIXED + stops + 12 + 2 * 8 + grammar;
        assert_eq!(bytes.len(), v3 + v4 + 4);
        assert_eq!(Params::parse(&whole).unwrap(), p);
        for cut in 0..whole.len() {
            assert!(Params::parse(&whole[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = whole.clone();
        longer.push(0);
        assert!(Params::parse(&longer).is_err());
        // A trigger count past the end is refused; strings not UTF-8 too.
        let mut huge = bytes.clone();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Params::parse(&huge), Err(ParamsError("block is truncated")));
        let mut bad = whole.clone();
        let last = bad.len() - 1;
        bad[last] = 0xff;
        assert_eq!(
            Params::parse(&bad),
            Err(ParamsError("preserved token is not UTF-8"))
        );
        let mut bad = whole.clone();
        bad[last - 11] = 0xff;
        assert_eq!(
            Params::parse(&bad),
            Err(ParamsError("grammar trigger is not UTF-8"))
        );
        // Version 5 ends after n_keep: no triggers.
        let mut v5_block = bytes.clone();
        v5_block[0] = 5;
        assert_eq!(
            Params::parse(&v5_block).unwrap(),
            Params {
                grammar_triggers: Vec::new(),
                preserved_tokens: Vec::new(),
                ..p.clone()
            }
        );
        let mut bytes = bytes;
        bytes[0] = 5;
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert_eq!(Params::parse(&bad), Err(ParamsError("unknown version")));
        // A bias count past the block's end is refused, not allocated.
        let mut huge = bytes[..FIXED + stops + 8].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Params::parse(&huge), Err(ParamsError("block is truncated")));
        // So is a breaker count.
        let mut huge = bytes[..v3 + 4 + 32 + 8].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Params::parse(&huge), Err(ParamsError("block is truncated")));
        // Version 1 ends after the stop strings and has none of the rest.
        let mut v1 = bytes[..FIXED + stops].to_vec();
        v1[0] = 1;
        let old = Params::parse(&v1).unwrap();
        assert_eq!(
            old.sampling,
            SamplingParams {
                seed: p.sampling.seed,
                ..SamplingParams::default()
            }
        );
        assert_eq!((&old.stop, old.flags), (&p.stop, p.flags));
        // Version 2 ends after the logit biases: no grammar, and version 3
        // after the grammar: neither has the samplers of version 4.
        let before_v4 = SamplingParams {
            seed: p.sampling.seed,
            presence_penalty: p.sampling.presence_penalty,
            frequency_penalty: p.sampling.frequency_penalty,
            logit_bias: p.sampling.logit_bias.clone(),
            ..SamplingParams::default()
        };
        let mut v2 = bytes[..v3 - grammar].to_vec();
        v2[0] = 2;
        let old = Params::parse(&v2).unwrap();
        assert_eq!((&old.grammar, &old.sampling), (&None, &before_v4));
        let mut v3_block = bytes[..v3].to_vec();
        v3_block[0] = 3;
        let old = Params::parse(&v3_block).unwrap();
        assert_eq!((&old.grammar, &old.sampling), (&p.grammar, &before_v4));
        // A grammar length past the block's end, or bytes not UTF-8.
        let mut long = bytes[..v3 - grammar].to_vec();
        long.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Params::parse(&long), Err(ParamsError("block is truncated")));
        let mut bad = bytes.clone();
        bad[v3 - 1] = 0xff;
        assert_eq!(
            Params::parse(&bad),
            Err(ParamsError("grammar is not UTF-8"))
        );
        // The samplers, ignore_eos and n_keep.
        let samplers = 4 + 3 * 4 + 4 + 4;
        let mut bad = bytes.clone();
        bad[bytes.len() - samplers - 13] = 0xff;
        assert_eq!(
            Params::parse(&bad),
            Err(ParamsError("DRY sequence breaker is not UTF-8"))
        );
        let mut bad = bytes.clone();
        bad[bytes.len() - samplers - 12] = 3;
        assert_eq!(
            Params::parse(&bad),
            Err(ParamsError("unknown mirostat version"))
        );
        let mut bad = bytes.clone();
        let last = bad.len() - 12;
        bad[last] = 9;
        assert_eq!(Params::parse(&bad), Err(ParamsError("unknown sampler")));
        // Version 4 ends after ignore_eos: n_keep is 0.
        let mut v4_block = bytes[..bytes.len() - 4].to_vec();
        v4_block[0] = 4;
        let old = Params::parse(&v4_block).unwrap();
        assert_eq!(
            old,
            Params {
                n_keep: 0,
                grammar_triggers: Vec::new(),
                preserved_tokens: Vec::new(),
                ..p.clone()
            }
        );
        // No grammar is a zero length.
        let none = Params { grammar: None, ..p };
        assert_eq!(none.to_bytes().len(), v3 - grammar + 4 + v4 + 4 + triggers);
        assert_eq!(Params::parse(&none.to_bytes()).unwrap(), none);
    }
}
