//! The parameter block of `generate` (little-endian, laid out in `ABI.md`).

use realm_models::SamplingParams;

/// The layout version hosts write. This guest also reads version 2, which
/// ends after the logit biases (no grammar), and version 1, which ends
/// after the stop strings (no penalties, no logit bias).
pub const PARAMS_VERSION: u32 = 3;
/// Flag: add the vocabulary's special tokens (BOS) around the prompt.
pub const FLAG_ADD_SPECIAL: u32 = 1;
/// Flag: turn special-token text in the prompt (`<|im_start|>`) into ids.
pub const FLAG_PARSE_SPECIAL: u32 = 2;
/// Flag: run the model layer by layer (`embed_tokens`, `forward_layer`,
/// `compute_logits`) instead of the fused `forward`.
pub const FLAG_LAYERED: u32 = 4;

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
            let len = r.u32()? as usize;
            let s = std::str::from_utf8(r.take(len)?)
                .map_err(|_| ParamsError("stop string is not UTF-8"))?;
            stop.push(s.to_string());
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
        out.extend_from_slice(&(grammar.len() as u32).to_le_bytes());
        out.extend_from_slice(grammar.as_bytes());
        out
    }
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
                ..SamplingParams::default()
            },
            flags: FLAG_ADD_SPECIAL | FLAG_LAYERED,
            stop: vec!["\n\n".into(), "é".into()],
            grammar: Some("root ::= \"é\"".into()),
        };
        let bytes = p.to_bytes();
        let stops = 4 + 2 + 4 + 2;
        let grammar = 4 + 13;
        assert_eq!(bytes.len(), FIXED + stops + 12 + 2 * 8 + grammar);
        assert_eq!(Params::parse(&bytes).unwrap(), p);
        for cut in 0..bytes.len() {
            assert!(Params::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Params::parse(&longer).is_err());
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert_eq!(Params::parse(&bad), Err(ParamsError("unknown version")));
        // A bias count past the block's end is refused, not allocated.
        let mut huge = bytes[..FIXED + stops + 8].to_vec();
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
        // Version 2 ends after the logit biases: no grammar.
        let mut v2 = bytes[..bytes.len() - grammar].to_vec();
        v2[0] = 2;
        let old = Params::parse(&v2).unwrap();
        assert_eq!(old.grammar, None);
        assert_eq!(old.sampling, p.sampling);
        // A grammar length past the block's end, or bytes not UTF-8.
        let mut long = bytes[..bytes.len() - grammar].to_vec();
        long.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Params::parse(&long), Err(ParamsError("block is truncated")));
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] = 0xff;
        assert_eq!(
            Params::parse(&bad),
            Err(ParamsError("grammar is not UTF-8"))
        );
        // No grammar is a zero length.
        let none = Params { grammar: None, ..p };
        assert_eq!(none.to_bytes().len(), FIXED + stops + 12 + 2 * 8 + 4);
        assert_eq!(Params::parse(&none.to_bytes()).unwrap(), none);
    }
}
