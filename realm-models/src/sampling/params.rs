//! What a [`Sampler`](super::Sampler) is asked to do, with llama.cpp's
//! defaults and names.

use crate::{Error, Result};

/// Mirostat: sampling that steers each token's surprise towards a target,
/// replacing the filters (llama.cpp's `--mirostat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mirostat {
    /// The filters and a draw (the default).
    #[default]
    Off,
    /// Mirostat 1: a top-k whose k comes from an estimate of the
    /// distribution's Zipf exponent over its 100 most likely tokens.
    V1,
    /// Mirostat 2: keep the tokens whose surprise is at most the running
    /// limit.
    V2,
}

impl Mirostat {
    /// From llama.cpp's number (0, 1 or 2).
    pub fn from_version(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Off),
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }

    /// llama.cpp's number: 0, 1 or 2.
    pub fn version(self) -> u32 {
        match self {
            Self::Off => 0,
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }
}

/// One sampler of the chain: [`SamplingParams::samplers`] lists them in
/// the order they run (llama.cpp's `--samplers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// The repetition, presence and frequency penalties.
    Penalties,
    /// DRY.
    Dry,
    /// Top-n-sigma.
    TopNSigma,
    /// Top-k.
    TopK,
    /// Locally typical sampling.
    TypicalP,
    /// Top-p (nucleus).
    TopP,
    /// Min-p.
    MinP,
    /// XTC.
    Xtc,
    /// The temperature, fixed or dynamic; at or below 0 it keeps only the
    /// most likely token.
    Temperature,
}

impl SamplerKind {
    /// llama.cpp's default order.
    pub const DEFAULT: [Self; 9] = [
        Self::Penalties,
        Self::Dry,
        Self::TopNSigma,
        Self::TopK,
        Self::TypicalP,
        Self::TopP,
        Self::MinP,
        Self::Xtc,
        Self::Temperature,
    ];

    /// llama.cpp's name (`typ_p` for typical-p).
    pub fn name(self) -> &'static str {
        match self {
            Self::Penalties => "penalties",
            Self::Dry => "dry",
            Self::TopNSigma => "top_n_sigma",
            Self::TopK => "top_k",
            Self::TypicalP => "typ_p",
            Self::TopP => "top_p",
            Self::MinP => "min_p",
            Self::Xtc => "xtc",
            Self::Temperature => "temperature",
        }
    }

    /// A sampler by llama.cpp's name or one of the spellings it takes
    /// (`top-k`, `topk`, `nucleus`, `temp`, `typ`, `typical_p`), in any case.
    pub fn from_name(name: &str) -> Option<Self> {
        let n = name.to_ascii_lowercase().replace('-', "_");
        match n.as_str() {
            "nucleus" => return Some(Self::TopP),
            "temp" => return Some(Self::Temperature),
            "typ" | "typical_p" => return Some(Self::TypicalP),
            _ => {}
        }
        Self::DEFAULT
            .into_iter()
            .find(|k| k.name() == n || k.name().replace('_', "") == n)
    }

    /// A sampler by llama.cpp's letter (`--sampler-seq`): `e` penalties, `d`
    /// DRY, `s` top-n-sigma, `k` top-k, `y` typical-p, `p` top-p, `m` min-p,
    /// `x` XTC, `t` temperature.
    pub fn from_char(c: char) -> Option<Self> {
        Some(match c {
            'e' => Self::Penalties,
            'd' => Self::Dry,
            's' => Self::TopNSigma,
            'k' => Self::TopK,
            'y' => Self::TypicalP,
            'p' => Self::TopP,
            'm' => Self::MinP,
            'x' => Self::Xtc,
            't' => Self::Temperature,
            _ => return None,
        })
    }

    /// A list of names separated by `;` (`--samplers`), or of letters
    /// (`--sampler-seq`); an unknown one is an error.
    ///
    /// ```
    /// use realm_models::sampling::SamplerKind;
    /// let by_name = SamplerKind::parse_names("top_k;temp;min-p").unwrap();
    /// assert_eq!(by_name, SamplerKind::parse_letters("ktm").unwrap());
    /// assert!(SamplerKind::parse_names("top_k;nonsense").is_err());
    /// ```
    pub fn parse_names(list: &str) -> Result<Vec<Self>> {
        list.split(';')
            .filter(|n| !n.is_empty())
            .map(|n| {
                Self::from_name(n)
                    .ok_or_else(|| Error::BadSampling(format!("no sampler is called `{n}`")))
            })
            .collect()
    }

    /// See [`SamplerKind::parse_names`].
    pub fn parse_letters(letters: &str) -> Result<Vec<Self>> {
        letters
            .chars()
            .map(|c| {
                Self::from_char(c)
                    .ok_or_else(|| Error::BadSampling(format!("no sampler has the letter `{c}`")))
            })
            .collect()
    }
}

/// How to pick tokens. The defaults sample at temperature 0.8 with top-k 40,
/// top-p 0.95 and min-p 0.05, as llama.cpp's command line does; every other
/// sampler starts off.
///
/// The logit bias comes first, then the samplers of `samplers`, by default
/// in llama.cpp's order: the repetition penalties, DRY, top-n-sigma,
/// top-k, typical-p, top-p, min-p, XTC, temperature (fixed or dynamic); then
/// a draw. With mirostat on, only the logit bias and the temperature come
/// before it, as in llama.cpp.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Temperature; 0 or below is greedy (the most likely token that the
    /// penalties, typical-p and XTC leave).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely (0: none).
    pub min_p: f32,
    /// Top-p, min-p, typical-p and XTC keep at least this many tokens (0
    /// and 1: one).
    pub min_keep: usize,
    /// Locally typical sampling: keep the tokens whose surprise is closest
    /// to the distribution's entropy, up to this much probability (1: off).
    pub typical_p: f32,
    /// Keep tokens whose logit is within this many standard deviations (of
    /// all the logits) of the largest (0 or below: off).
    pub top_n_sigma: f32,
    /// XTC ("exclude top choices"): with this chance per token, drop every
    /// token at least `xtc_threshold` likely but the least likely of them
    /// (0: off).
    pub xtc_probability: f32,
    /// XTC's threshold (above 0.5: off).
    pub xtc_threshold: f32,
    /// Dynamic temperature: the temperature moves within `temperature` ±
    /// this, by the normalised entropy of the candidates (0: off).
    pub dynatemp_range: f32,
    /// The power the normalised entropy is raised to, for the dynamic
    /// temperature.
    pub dynatemp_exponent: f32,
    /// Divide positive (multiply negative) logits of recent tokens (1: off).
    pub repeat_penalty: f32,
    /// Subtract from the logit of every token seen recently (0: off).
    pub presence_penalty: f32,
    /// Subtract from a token's logit this times its recent count (0: off).
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// DRY ("don't repeat yourself"): a token that would extend a sequence
    /// already in the context beyond `dry_allowed_length` tokens loses
    /// `dry_multiplier * dry_base ^ (length - dry_allowed_length)` from its
    /// logit (0: off).
    pub dry_multiplier: f32,
    /// DRY's base (below 1: off).
    pub dry_base: f32,
    /// Repeats up to this long go unpunished by DRY.
    pub dry_allowed_length: usize,
    /// How many recent tokens DRY looks at (0: off).
    pub dry_penalty_last_n: usize,
    /// Text that ends a repeat for DRY: a repeat is never counted across a
    /// token holding one (or a run of tokens spelling one). Each is cut to
    /// its first 40 bytes, as in llama.cpp.
    pub dry_sequence_breakers: Vec<String>,
    /// Mirostat, in place of the filters.
    pub mirostat: Mirostat,
    /// Mirostat's target surprise (entropy), in bits.
    pub mirostat_tau: f32,
    /// Mirostat's learning rate.
    pub mirostat_eta: f32,
    /// Added to the logits of given tokens before anything else.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed of the random generators: its low 32 bits seed
    /// `std::mt19937`, as llama.cpp's `--seed` does, so that on the same
    /// logits a seed draws what llama.cpp draws.
    pub seed: u64,
    /// Never choose an end-of-generation token (llama.cpp's
    /// `--ignore-eos`): their logits are set to -inf with the logit bias.
    /// Needs the vocabulary ([`Sampler::with_tokenizer`](super::Sampler::with_tokenizer)).
    pub ignore_eos: bool,
    /// The samplers that run, in order ([`SamplerKind::DEFAULT`]); a
    /// sampler left out does not run, whatever its parameters say. Mirostat
    /// ignores the list, as in llama.cpp.
    pub samplers: Vec<SamplerKind>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            min_keep: 0,
            typical_p: 1.0,
            top_n_sigma: -1.0,
            xtc_probability: 0.0,
            xtc_threshold: 0.1,
            dynatemp_range: 0.0,
            dynatemp_exponent: 1.0,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            dry_multiplier: 0.0,
            dry_base: 1.75,
            dry_allowed_length: 2,
            dry_penalty_last_n: 64,
            dry_sequence_breakers: ["\n", ":", "\"", "*"].map(String::from).to_vec(),
            mirostat: Mirostat::Off,
            mirostat_tau: 5.0,
            mirostat_eta: 0.1,
            logit_bias: Vec::new(),
            seed: 0x5eed,
            ignore_eos: false,
            samplers: SamplerKind::DEFAULT.to_vec(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether DRY runs.
    pub fn dry_on(&self) -> bool {
        self.mirostat == Mirostat::Off
            && self.dry_multiplier != 0.0
            && self.dry_base >= 1.0
            && self.dry_penalty_last_n > 0
            && self.samplers.contains(&SamplerKind::Dry)
    }

    /// Whether XTC runs.
    pub fn xtc_on(&self) -> bool {
        self.xtc_probability > 0.0
            && self.xtc_threshold <= 0.5
            && self.samplers.contains(&SamplerKind::Xtc)
    }

    /// Checks every field's range: what [`Sampler::new`](super::Sampler::new)
    /// refuses.
    ///
    /// ```
    /// use realm_models::SamplingParams;
    /// assert!(SamplingParams::default().validate().is_ok());
    /// let bad = SamplingParams { typical_p: -1.0, ..Default::default() };
    /// assert!(bad.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::BadSampling(m.to_string()));
        let finite = [
            self.temperature,
            self.top_n_sigma,
            self.xtc_threshold,
            self.dynatemp_range,
            self.dynatemp_exponent,
            self.presence_penalty,
            self.frequency_penalty,
            self.dry_multiplier,
            self.dry_base,
            self.mirostat_tau,
            self.mirostat_eta,
        ];
        if finite.iter().any(|v| !v.is_finite()) {
            return bad("sampling parameters must be finite");
        }
        for (name, v) in [
            ("top_p", self.top_p),
            ("min_p", self.min_p),
            ("typical_p", self.typical_p),
            ("xtc_probability", self.xtc_probability),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::BadSampling(format!("{name} must be in [0, 1]")));
            }
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return bad("repeat_penalty must be positive");
        }
        if self.dynatemp_range < 0.0 || self.dynatemp_exponent < 0.0 {
            return bad("dynatemp_range and dynatemp_exponent must not be negative");
        }
        if self.dry_multiplier < 0.0 {
            return bad("dry_multiplier must not be negative");
        }
        if self.mirostat != Mirostat::Off && self.mirostat_tau <= 0.0 {
            return bad("mirostat_tau must be positive");
        }
        if self.logit_bias.iter().any(|(_, b)| b.is_nan()) {
            return bad("logit bias must not be NaN");
        }
        if self.dry_sequence_breakers.iter().any(String::is_empty) {
            return bad("a DRY sequence breaker must not be empty");
        }
        Ok(())
    }
}
