//! Quantizing a model file: which type each tensor gets, as llama.cpp's
//! `llama-quantize` chooses it, and the conversion of a tensor's rows.
//!
//! A file type ([`FileType`], llama.cpp's `ftype`) names a default tensor
//! type and, for the k-quant mixes (`Q4_K_M`, ...), the rules that give some
//! tensors more bits: the output matrix (or a tied embedding) Q6_K, every
//! third `attn_v` and `ffn_down` matrix (and the first and last eighth of
//! them) Q6_K in the `_M` mixes, and so on. Only matrices whose names end in
//! `weight` are quantized (not norms, not 1-D tensors); a matrix whose rows
//! do not divide into the type's blocks falls back to a type whose blocks
//! fit (Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0). Tensors are written
//! in `llama-quantize`'s order (those outside the blocks first, then block
//! by block, each group by name), and the metadata is
//! the input's with `general.quantization_version` and `general.file_type`
//! set last: for the same input and options the output is the same file,
//! byte for byte (tested against `llama-quantize` on both real models).
//!
//! ```
//! use realm_core::gguf::quantize::{plan, FileType, QuantizeOptions};
//! use realm_core::gguf::{Gguf, GgufWriter, MetadataValue};
//! use realm_core::GgmlType;
//! let mut w = GgufWriter::new();
//! w.set("general.architecture", MetadataValue::String("llama".into()));
//! w.add_tensor("blk.0.ffn_up.weight", GgmlType::F32, &[64, 2], vec![0u8; 512])?;
//! w.add_tensor("blk.0.attn_norm.weight", GgmlType::F32, &[64], vec![0u8; 256])?;
//! let file = Gguf::from_bytes(w.to_bytes()?)?;
//! let p = plan(&file, &QuantizeOptions::new(FileType::Q4_K_M))?;
//! // 64 columns are no whole Q4_K block: Q5_0 instead; the norm stays.
//! assert_eq!(p.tensors[0].name, "blk.0.attn_norm.weight");
//! assert_eq!(p.tensors[0].to, GgmlType::F32);
//! assert_eq!(p.tensors[1].to, GgmlType::Q5_0);
//! # Ok::<(), realm_core::Error>(())
//! ```

use super::{Gguf, Metadata, MetadataValue};
use crate::{quant, Error, GgmlType, Result};

/// A model file's type: its default tensor type and mix (llama.cpp's
/// `llama_ftype`), for the types Realm can quantize to.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// Every tensor 32-bit float.
    F32,
    /// Matrices 16-bit float.
    F16,
    /// Matrices bfloat16.
    BF16,
    /// Matrices Q4_0 (the output Q6_K).
    Q4_0,
    /// Matrices Q4_1 (the output Q6_K).
    Q4_1,
    /// Matrices Q5_0 (the output Q6_K).
    Q5_0,
    /// Matrices Q5_1 (the output Q6_K).
    Q5_1,
    /// Every matrix Q8_0.
    Q8_0,
    /// Q2_K, `attn_v` Q3_K (Q4_K with four or more query heads per key
    /// head), `ffn_down` and `attn_output` Q3_K.
    Q2_K,
    /// Q3_K.
    Q3_K_S,
    /// Q3_K, the first two `attn_v` Q5_K and the rest Q4_K, `ffn_down`
    /// Q4_K or Q5_K, `attn_output` Q4_K.
    Q3_K_M,
    /// Q3_K, `attn_v`, `ffn_down` and `attn_output` Q5_K.
    Q3_K_L,
    /// Q4_K, a few matrices Q5_K.
    Q4_K_S,
    /// Q4_K, about half of `attn_v` and `ffn_down` Q6_K.
    Q4_K_M,
    /// Q5_K.
    Q5_K_S,
    /// Q5_K, about half of `attn_v` and `ffn_down` Q6_K.
    Q5_K_M,
    /// Q6_K.
    Q6_K,
    /// Q2_K, `attn_v` Q4_K with four or more query heads per key head,
    /// the first eighth of `ffn_down` Q4_K; its Q2_K matrices need an
    /// importance matrix.
    Q2_K_S,
    /// IQ4_NL (non-linear 4-bit levels in blocks of 32), `attn_v` Q5_K with
    /// four or more query heads per key head, the first eighth of
    /// `ffn_down` Q5_K unless an importance matrix is given.
    IQ4_NL,
    /// IQ4_XS (IQ4_NL's levels, 6-bit scales in blocks of 256); its rules
    /// are IQ4_NL's.
    IQ4_XS,
    /// IQ2_XXS (2.06 bits a weight, 8-value lattice points); `attn_v` Q2_K
    /// (Q4_K with four or more query heads per key head or four or more
    /// experts), the first eighth of `ffn_down` Q2_K, the output Q5_K, the
    /// token embedding Q2_K. Needs an importance matrix.
    IQ2_XXS,
    /// IQ2_XS (2.31 bits); IQ2_XXS's rules. Needs an importance matrix.
    IQ2_XS,
    /// IQ2_XS, `attn_v` (unless Q4_K, as in IQ2_XXS), the first eighth of
    /// `ffn_down`, `attn_output` and the token embedding IQ3_S, the output
    /// Q5_K. Needs an importance matrix.
    IQ2_S,
    /// IQ2_S (2.5 bits) with IQ2_S's file type's rules. Needs an importance
    /// matrix.
    IQ2_M,
    /// IQ3_XXS (3.06 bits, 4-value lattice points); `attn_q` and `attn_k`
    /// IQ2_S, `attn_v` Q4_K (four or more query heads per key head) or
    /// IQ3_XXS (IQ3_S without an importance matrix), `attn_output` and the
    /// token embedding IQ3_S, without an importance matrix `ffn_down` Q3_K
    /// (its first eighth Q4_K). Needs an importance matrix for its IQ2_S
    /// and IQ3_XXS matrices.
    IQ3_XXS,
    /// IQ3_S, `attn_q`, `attn_k` and the middle three quarters of
    /// `ffn_gate` and `ffn_up` IQ3_XXS, `attn_v` Q4_K with four or more
    /// query heads per key head.
    IQ3_XS,
    /// IQ3_S (3.44 bits), `attn_v` Q4_K with four or more query heads per
    /// key head.
    IQ3_S,
    /// IQ3_S, `attn_v`, `attn_output` and the first eighth of `ffn_down`
    /// Q4_K.
    IQ3_M,
    /// IQ1_S (1.56 bits a weight); IQ2_XXS's rules, `attn_output` IQ2_XXS.
    /// Needs an importance matrix.
    IQ1_S,
    /// IQ1_M (1.75 bits); IQ1_S's rules. Needs an importance matrix.
    IQ1_M,
    /// TQ1_0 (BitNet b1.58's ternary weights, 1.69 bits each), a token
    /// embedding that is not the output matrix Q4_K.
    TQ1_0,
    /// TQ2_0 (ternary, 2.06 bits each); its rules are TQ1_0's.
    TQ2_0,
    /// The experts' matrices MXFP4 (gpt-oss's own format), every other
    /// matrix Q8_0.
    MXFP4_MOE,
}

impl FileType {
    /// Every file type, in llama.cpp's numbering's order.
    pub const ALL: [Self; 33] = [
        Self::F32,
        Self::F16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q8_0,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q2_K,
        Self::Q3_K_S,
        Self::Q3_K_M,
        Self::Q3_K_L,
        Self::Q4_K_S,
        Self::Q4_K_M,
        Self::Q5_K_S,
        Self::Q5_K_M,
        Self::Q6_K,
        Self::IQ2_XXS,
        Self::IQ2_XS,
        Self::Q2_K_S,
        Self::IQ3_XS,
        Self::IQ3_XXS,
        Self::IQ1_S,
        Self::IQ4_NL,
        Self::IQ3_S,
        Self::IQ3_M,
        Self::IQ2_S,
        Self::IQ2_M,
        Self::IQ4_XS,
        Self::IQ1_M,
        Self::BF16,
        Self::TQ1_0,
        Self::TQ2_0,
        Self::MXFP4_MOE,
    ];

    /// The number `general.file_type` holds (llama.cpp's `LLAMA_FTYPE_*`).
    pub const fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 7,
            Self::Q5_0 => 8,
            Self::Q5_1 => 9,
            Self::Q2_K => 10,
            Self::Q3_K_S => 11,
            Self::Q3_K_M => 12,
            Self::Q3_K_L => 13,
            Self::Q4_K_S => 14,
            Self::Q4_K_M => 15,
            Self::Q5_K_S => 16,
            Self::Q5_K_M => 17,
            Self::Q6_K => 18,
            Self::IQ2_XXS => 19,
            Self::IQ2_XS => 20,
            Self::Q2_K_S => 21,
            Self::IQ3_XS => 22,
            Self::IQ3_XXS => 23,
            Self::IQ1_S => 24,
            Self::IQ4_NL => 25,
            Self::IQ3_S => 26,
            Self::IQ3_M => 27,
            Self::IQ2_S => 28,
            Self::IQ2_M => 29,
            Self::IQ4_XS => 30,
            Self::IQ1_M => 31,
            Self::BF16 => 32,
            Self::TQ1_0 => 36,
            Self::TQ2_0 => 37,
            Self::MXFP4_MOE => 38,
        }
    }

    /// The name llama-quantize takes (`Q4_K_M`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2_K => "Q2_K",
            Self::Q3_K_S => "Q3_K_S",
            Self::Q3_K_M => "Q3_K_M",
            Self::Q3_K_L => "Q3_K_L",
            Self::Q4_K_S => "Q4_K_S",
            Self::Q4_K_M => "Q4_K_M",
            Self::Q5_K_S => "Q5_K_S",
            Self::Q5_K_M => "Q5_K_M",
            Self::Q6_K => "Q6_K",
            Self::Q2_K_S => "Q2_K_S",
            Self::IQ4_NL => "IQ4_NL",
            Self::IQ4_XS => "IQ4_XS",
            Self::IQ2_XXS => "IQ2_XXS",
            Self::IQ2_XS => "IQ2_XS",
            Self::IQ2_S => "IQ2_S",
            Self::IQ2_M => "IQ2_M",
            Self::IQ3_XXS => "IQ3_XXS",
            Self::IQ3_XS => "IQ3_XS",
            Self::IQ3_S => "IQ3_S",
            Self::IQ3_M => "IQ3_M",
            Self::IQ1_S => "IQ1_S",
            Self::IQ1_M => "IQ1_M",
            Self::TQ1_0 => "TQ1_0",
            Self::TQ2_0 => "TQ2_0",
            Self::MXFP4_MOE => "MXFP4_MOE",
        }
    }

    /// The file type named `name` (any case; `Q3_K`, `Q4_K` and `Q5_K` are
    /// the `_M` mixes, as llama-quantize reads them), or its number.
    pub fn parse(name: &str) -> Option<Self> {
        let upper = name.to_ascii_uppercase();
        let upper = match upper.as_str() {
            "Q3_K" => "Q3_K_M",
            "Q4_K" => "Q4_K_M",
            "Q5_K" => "Q5_K_M",
            u => u,
        };
        Self::ALL
            .into_iter()
            .find(|t| t.name() == upper || t.id().to_string() == upper)
    }

    /// The type of a matrix no rule singles out.
    pub const fn default_type(self) -> GgmlType {
        match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::BF16 => GgmlType::BF16,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4_1 => GgmlType::Q4_1,
            Self::Q5_0 => GgmlType::Q5_0,
            Self::Q5_1 => GgmlType::Q5_1,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q2_K | Self::Q2_K_S => GgmlType::Q2_K,
            Self::Q3_K_S | Self::Q3_K_M | Self::Q3_K_L => GgmlType::Q3_K,
            Self::Q4_K_S | Self::Q4_K_M => GgmlType::Q4_K,
            Self::Q5_K_S | Self::Q5_K_M => GgmlType::Q5_K,
            Self::Q6_K => GgmlType::Q6_K,
            Self::IQ4_NL => GgmlType::IQ4_NL,
            Self::IQ4_XS => GgmlType::IQ4_XS,
            Self::IQ2_XXS => GgmlType::IQ2_XXS,
            Self::IQ2_XS | Self::IQ2_S => GgmlType::IQ2_XS,
            Self::IQ2_M => GgmlType::IQ2_S,
            Self::IQ3_XXS => GgmlType::IQ3_XXS,
            Self::IQ3_XS | Self::IQ3_S | Self::IQ3_M => GgmlType::IQ3_S,
            Self::IQ1_S => GgmlType::IQ1_S,
            Self::IQ1_M => GgmlType::IQ1_M,
            Self::TQ1_0 => GgmlType::TQ1_0,
            Self::TQ2_0 => GgmlType::TQ2_0,
            Self::MXFP4_MOE => GgmlType::MXFP4,
        }
    }
}

/// Metadata key: the importance matrix's file.
pub const IMATRIX_FILE_KEY: &str = "quantize.imatrix.file";
/// Metadata key: the text the importance matrix was collected on.
pub const IMATRIX_DATASET_KEY: &str = "quantize.imatrix.dataset";
/// Metadata key: how many of the importance matrix's entries were used.
pub const IMATRIX_ENTRIES_KEY: &str = "quantize.imatrix.entries_count";
/// Metadata key: how many chunks of text the importance matrix saw.
pub const IMATRIX_CHUNKS_KEY: &str = "quantize.imatrix.chunks_count";

/// How to quantize (llama-quantize's options of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeOptions {
    /// The file type.
    pub file_type: FileType,
    /// Quantize tensors that are quantized already (dequantized first,
    /// which loses more than quantizing the original would).
    pub allow_requantize: bool,
    /// Every quantized matrix the default type: no mix.
    pub pure: bool,
    /// Quantize `output.weight` (otherwise it is copied as it is).
    pub quantize_output: bool,
    /// The output matrix's type, instead of the mix's.
    pub output_type: Option<GgmlType>,
    /// The token embedding's type, instead of the mix's.
    pub token_embedding_type: Option<GgmlType>,
    /// The importance matrix the matrices are quantized with, if any: it
    /// changes the Q4_0 and Q5_0 mixes, and is recorded in the metadata.
    pub imatrix: Option<ImatrixInfo>,
    /// Types chosen by hand (llama-quantize's `--tensor-type`): the first
    /// pattern (a regular expression, lowercase, matched anywhere in the
    /// name) that a quantized matrix's name matches gives its type in place
    /// of the mix's; a type whose blocks do not divide its rows still falls
    /// back. The token embedding's and output matrix's own options come
    /// first.
    pub tensor_types: Vec<(String, GgmlType)>,
    /// Metadata set in the output (llama-quantize's `--override-kv`), in
    /// order, after `general.file_type` and before the importance matrix's
    /// keys; each replaced key moves to the end, as llama-quantize moves it.
    pub overrides: Vec<(String, MetadataValue)>,
}

/// What llama-quantize records of the importance matrix it quantizes with
/// (`quantize.imatrix.*` metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImatrixInfo {
    /// The matrix's file, as named on the command line.
    pub file: String,
    /// The first text it was collected on, if it names one.
    pub dataset: Option<String>,
    /// How many matrices of it are used.
    pub entries: u32,
    /// How many chunks of text it was collected on.
    pub chunks: u32,
}

impl QuantizeOptions {
    /// `file_type` with llama-quantize's defaults.
    pub fn new(file_type: FileType) -> Self {
        Self {
            file_type,
            allow_requantize: false,
            pure: false,
            quantize_output: true,
            output_type: None,
            token_embedding_type: None,
            imatrix: None,
            tensor_types: Vec::new(),
            overrides: Vec::new(),
        }
    }
}

/// One tensor of the output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// Its name.
    pub name: String,
    /// Its shape (fastest-varying first).
    pub shape: Vec<u64>,
    /// Its type in the input.
    pub from: GgmlType,
    /// Its type in the output (`from`: copied as it is).
    pub to: GgmlType,
    /// Whether `to` is a fallback: the chosen type's blocks did not divide
    /// its rows.
    pub fell_back: bool,
    /// Whether quantizing it without an importance matrix would ruin it
    /// (llama-quantize refuses to): an IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
    /// IQ1_S or IQ1_M matrix, or a Q2_K matrix of a Q2_K_S file, other than
    /// the token embedding and the output.
    pub needs_imatrix: bool,
}

/// The output file: its metadata and tensors, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The input's metadata, `general.quantization_version` and
    /// `general.file_type` set last.
    pub metadata: Metadata,
    /// Every tensor, in [`order`]'s order.
    pub tensors: Vec<PlannedTensor>,
}

/// What the mix rules need to know of the model.
struct Model {
    arch: String,
    n_layer: i64,
    /// Query heads per key head.
    n_gqa: u64,
    n_expert: u64,
    is_70b: bool,
    /// Attention value matrices in the file.
    n_attention_wv: i64,
    /// No `output.weight`: the token embedding is the output matrix.
    tied: bool,
}

/// What a tensor is to the mix rules (by its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Output,
    TokenEmbd,
    AttnQkv,
    AttnKvB,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

impl Role {
    fn of(name: &str) -> Self {
        let has = |s: &str| name.contains(s);
        match name {
            "output.weight" => Self::Output,
            "token_embd.weight" | "per_layer_token_embd.weight" => Self::TokenEmbd,
            _ if has("attn_qkv.weight") => Self::AttnQkv,
            _ if has("attn_kv_b.weight") => Self::AttnKvB,
            _ if has("attn_v.weight") => Self::AttnV,
            _ if has("attn_k.weight") => Self::AttnK,
            _ if has("attn_q.weight") => Self::AttnQ,
            _ if has("attn_output.weight") => Self::AttnOutput,
            _ if has("ffn_up") => Self::FfnUp,
            _ if has("ffn_gate") => Self::FfnGate,
            _ if has("ffn_down") => Self::FfnDown,
            _ => Self::Other,
        }
    }

    /// The attention-value-like matrices, the most sensitive to rounding.
    fn is_attn_v(self) -> bool {
        matches!(self, Self::AttnV | Self::AttnQkv | Self::AttnKvB)
    }
}

/// llama.cpp's order of a model's tensors: by block (`blk.N.`; tensors
/// outside the blocks first), then by name.
///
/// ```
/// use realm_core::gguf::quantize::order;
/// let mut names = ["blk.10.a", "output.weight", "blk.2.b", "blk.2.a", "token_embd.weight"];
/// names.sort_by(|a, b| order(a, b));
/// assert_eq!(names, ["output.weight", "token_embd.weight", "blk.2.a", "blk.2.b", "blk.10.a"]);
/// ```
pub fn order(a: &str, b: &str) -> std::cmp::Ordering {
    block(a)
        .cmp(&block(b))
        .then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// The block of a tensor named `blk.N.…` (read as C's `%d` reads it), -1
/// for another name.
fn block(name: &str) -> i64 {
    let Some(rest) = name.strip_prefix("blk.") else {
        return -1;
    };
    let end = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && (c == '-' || c == '+'))))
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].parse().unwrap_or(-1)
}

/// Dimensions up to the last one above 1 (ggml's `ggml_n_dims`).
fn n_dims(shape: &[u64]) -> usize {
    shape.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
}

/// Whether a tensor is quantized at all: matrices (2-D and up) whose names
/// end in `weight`, less norms, routers, positional tables and the other
/// small or index-like tensors llama-quantize leaves as they are.
fn quantizable(name: &str, shape: &[u64], opts: &QuantizeOptions) -> bool {
    const KEPT: &[&str] = &[
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ffn_gate_tid2eid.weight",
        "altup",
        "laurel",
        "per_layer_model_proj",
        "ssm_conv1d",
        "shortconv.conv.weight",
        "indexer.k_proj.weight",
        "indexer.q_proj.weight",
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ];
    n_dims(shape) >= 2
        && name.ends_with("weight")
        && (opts.quantize_output || name != "output.weight")
        && name != "position_embd.weight"
        && name != "token_types.weight"
        && !KEPT.iter().any(|k| name.contains(k))
}

/// llama.cpp's layers that get more bits in the `_M` mixes: the first and
/// last eighth, and every third between.
fn more_bits(i: i64, n: i64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Counters of the matrices the mix has seen, by role.
#[derive(Default)]
struct Seen {
    attention_wv: i64,
    ffn_down: i64,
    ffn_gate: i64,
    ffn_up: i64,
}

/// The mix's type for a quantizable matrix (before any fallback).
fn mix(
    m: &Model,
    seen: &mut Seen,
    ft: FileType,
    (role, ffn_layer, stacked): (Role, Option<i64>, bool),
    ncols: u64,
    opts: &QuantizeOptions,
) -> GgmlType {
    use FileType as F;
    use GgmlType as T;
    let falcon = m.arch == "falcon";
    // The 1- and 2-bit lattice mixes (and IQ3_XXS, for the output).
    let iq1 = matches!(ft, F::IQ1_S | F::IQ1_M);
    let low_bit = iq1 || matches!(ft, F::IQ2_XXS | F::IQ2_XS | F::IQ2_S | F::IQ2_M);
    let iq2_s = matches!(ft, F::IQ2_S | F::IQ2_M);
    let mut t = ft.default_type();
    if role == Role::Output || (m.tied && role == Role::TokenEmbd) {
        if let Some(o) = opts.output_type {
            t = o;
        } else if falcon || ft == F::MXFP4_MOE || !ncols.is_multiple_of(t.block_size() as u64) {
            t = T::Q8_0;
        } else if low_bit || ft == F::IQ3_XXS {
            t = T::Q5_K;
        } else if t != T::Q8_0 {
            t = T::Q6_K;
        }
    } else if ft == F::MXFP4_MOE {
        // A stack of experts' matrices (3-D) is MXFP4, any other Q8_0.
        t = if stacked { T::MXFP4 } else { T::Q8_0 };
    } else if role == Role::TokenEmbd {
        if let Some(e) = opts.token_embedding_type {
            t = e;
        } else if iq1 || matches!(ft, F::IQ2_XXS | F::IQ2_XS) {
            t = T::Q2_K;
        } else if iq2_s || ft == F::IQ3_XXS {
            t = T::IQ3_S;
        } else if matches!(ft, F::TQ1_0 | F::TQ2_0) {
            t = T::Q4_K;
        }
    } else if low_bit {
        let or_iq3_s = |other: GgmlType| if iq2_s { T::IQ3_S } else { other };
        if role.is_attn_v() {
            t = if m.n_gqa >= 4 || m.n_expert >= 4 {
                T::Q4_K
            } else {
                or_iq3_s(T::Q2_K)
            };
            seen.attention_wv += 1;
        } else if m.n_expert == 8 && role == Role::AttnK {
            t = T::Q4_K;
        } else if role == Role::FfnDown {
            // The count of `ffn_down` matrices, experts or not.
            if seen.ffn_down < m.n_layer / 8 {
                t = or_iq3_s(T::Q2_K);
            }
            seen.ffn_down += 1;
        } else if role == Role::AttnOutput {
            if m.n_expert == 8 {
                t = T::Q5_K;
            } else if iq1 {
                t = T::IQ2_XXS;
            } else if iq2_s {
                t = T::IQ3_S;
            }
        }
    } else if role.is_attn_v() {
        let i = seen.attention_wv;
        match ft {
            F::Q2_K => t = if m.n_gqa >= 4 { T::Q4_K } else { T::Q3_K },
            F::Q2_K_S if m.n_gqa >= 4 => t = T::Q4_K,
            F::IQ3_XXS => {
                t = if m.n_gqa >= 4 {
                    T::Q4_K
                } else if opts.imatrix.is_none() {
                    T::IQ3_S
                } else {
                    T::IQ3_XXS
                };
            }
            F::IQ3_XS | F::IQ3_S if m.n_gqa >= 4 => t = T::Q4_K,
            F::IQ3_M => t = T::Q4_K,
            F::Q3_K_M => t = if i < 2 { T::Q5_K } else { T::Q4_K },
            F::Q3_K_L => t = T::Q5_K,
            F::IQ4_NL | F::IQ4_XS if m.n_gqa >= 4 => t = T::Q5_K,
            F::Q4_K_M | F::Q5_K_M if more_bits(i, m.n_attention_wv) => t = T::Q6_K,
            F::Q4_K_S if i < 4 => t = T::Q5_K,
            _ => {}
        }
        if m.is_70b && matches!(t, T::Q3_K | T::Q4_K) {
            t = T::Q5_K;
        }
        if m.n_expert == 8 {
            t = T::Q8_0;
        }
        seen.attention_wv += 1;
    } else if role == Role::AttnK {
        if m.n_expert == 8 {
            t = T::Q8_0;
        } else if ft == F::IQ3_XS {
            t = T::IQ3_XXS;
        } else if ft == F::IQ3_XXS {
            t = T::IQ2_S;
        }
    } else if role == Role::AttnQ {
        if ft == F::IQ3_XS {
            t = T::IQ3_XXS;
        } else if ft == F::IQ3_XXS {
            t = T::IQ2_S;
        }
    } else if role == Role::FfnDown {
        // The layer is the count of `ffn_down` matrices seen so far, as
        // llama-quantize counts it, or with experts (whose blocks may hold
        // more than one: Qwen 2 MoE's shared expert's), the tensor's block.
        let (i, n) = (ffn_layer.unwrap_or(seen.ffn_down), m.n_layer);
        match ft {
            F::Q2_K => t = T::Q3_K,
            F::Q2_K_S if i < n / 8 => t = T::Q4_K,
            F::IQ3_XXS if opts.imatrix.is_none() => {
                t = if i < n / 8 { T::Q4_K } else { T::Q3_K };
            }
            F::Q3_K_M => {
                t = if i < n / 16 {
                    T::Q5_K
                } else if !falcon || more_bits(i, n) {
                    T::Q4_K
                } else {
                    T::Q3_K
                };
            }
            F::IQ3_M if i < n / 8 || (m.n_expert == 8 && more_bits(i, n)) => t = T::Q4_K,
            F::Q3_K_L => t = if falcon { T::Q4_K } else { T::Q5_K },
            F::Q4_K_M if falcon => {
                t = if i < n / 16 {
                    T::Q6_K
                } else if more_bits(i, n) {
                    T::Q5_K
                } else {
                    T::Q4_K
                };
            }
            F::Q4_K_M | F::Q5_K_M if more_bits(i, n) => t = T::Q6_K,
            F::IQ4_NL | F::IQ4_XS if opts.imatrix.is_none() && i < n / 8 => t = T::Q5_K,
            F::Q4_K_S if !falcon && i < n / 8 => t = T::Q5_K,
            // With an importance matrix the first blocks' down matrices,
            // which it quantizes worst, get the type with a minimum.
            F::Q4_0 if opts.imatrix.is_some() && i < n / 8 => t = T::Q4_1,
            F::Q5_0 if opts.imatrix.is_some() && i < n / 8 => t = T::Q5_1,
            _ => {}
        }
        seen.ffn_down += 1;
    } else if role == Role::AttnOutput {
        t = match (falcon, ft) {
            (
                false,
                F::Q2_K
                | F::IQ3_XS
                | F::IQ3_XXS
                | F::Q3_K_S
                | F::Q3_K_M
                | F::IQ4_NL
                | F::Q4_K_S
                | F::Q4_K_M
                | F::IQ3_S
                | F::IQ3_M
                | F::IQ4_XS,
            ) if m.n_expert == 8 => T::Q5_K,
            (false, _) if m.n_expert == 8 => t,
            (false, F::Q2_K) => T::Q3_K,
            (false, F::IQ3_XXS) => T::IQ3_S,
            (false, F::Q3_K_M | F::IQ3_M) => T::Q4_K,
            (false, F::Q3_K_L) => T::Q5_K,
            (true, F::Q3_K_L) => T::Q4_K,
            _ => t,
        };
    } else if matches!(role, Role::FfnGate | Role::FfnUp) {
        let count = if role == Role::FfnGate {
            &mut seen.ffn_gate
        } else {
            &mut seen.ffn_up
        };
        let (i, n) = (ffn_layer.unwrap_or(*count), m.n_layer);
        if ft == F::IQ3_XS && i >= n / 8 && i < 7 * n / 8 {
            t = T::IQ3_XXS;
        }
        *count += 1;
    }
    t
}

/// Whether a matrix quantized to `to` in a file of type `ft` needs an
/// importance matrix (llama.cpp's `tensor_requires_imatrix`, for matrices
/// other than the token embedding and the output).
fn needs_importance(to: GgmlType, ft: FileType) -> bool {
    use GgmlType as T;
    match to {
        T::IQ3_XXS | T::IQ2_XXS | T::IQ2_XS | T::IQ2_S | T::IQ1_M | T::IQ1_S => true,
        T::Q2_K => ft == FileType::Q2_K_S,
        _ => false,
    }
}

/// A type whose blocks divide `ncols`, for `t` whose blocks do not: the
/// next one down llama-quantize takes, or F16.
fn fallback(t: GgmlType, ncols: u64) -> (GgmlType, bool) {
    use GgmlType as T;
    let fits = |t: GgmlType| ncols.is_multiple_of(t.block_size() as u64);
    if fits(t) {
        return (t, false);
    }
    let next = match t {
        T::IQ1_S
        | T::IQ1_M
        | T::IQ2_XXS
        | T::IQ2_XS
        | T::IQ2_S
        | T::IQ3_XXS
        | T::IQ3_S
        | T::IQ4_XS => T::IQ4_NL,
        T::Q2_K | T::Q3_K | T::TQ1_0 | T::TQ2_0 => T::Q4_0,
        T::Q4_K => T::Q5_0,
        T::Q5_K => T::Q5_1,
        T::Q6_K => T::Q8_0,
        other => other,
    };
    (if fits(next) { next } else { T::F16 }, true)
}

/// The output file for `file` quantized with `opts`: metadata and each
/// tensor's type. Fails when a tensor would need a type Realm cannot
/// quantize to, or is quantized already and `opts.allow_requantize` is off.
pub fn plan<S: AsRef<[u8]>>(file: &Gguf<S>, opts: &QuantizeOptions) -> Result<Plan> {
    let md = file.metadata();
    let arch = md.get_str("general.architecture")?.to_string();
    let count = |key: &str| -> u64 {
        match md.get(&format!("{arch}.{key}")) {
            Some(MetadataValue::Array(_)) => md
                .get_i32_array(&format!("{arch}.{key}"))
                .ok()
                .and_then(|a| a.first().copied())
                .map_or(0, |v| v.max(0) as u64),
            Some(_) => md.get_u64(&format!("{arch}.{key}")).unwrap_or(0),
            None => 0,
        }
    };
    let (n_head, n_head_kv) = (
        count("attention.head_count"),
        count("attention.head_count_kv"),
    );
    let n_head_kv = if n_head_kv == 0 { n_head } else { n_head_kv };
    let n_layer = count("block_count");
    let mut infos: Vec<_> = file.tensor_infos().iter().collect();
    infos.sort_by(|a, b| order(&a.name, &b.name));
    let model = Model {
        n_gqa: n_head.checked_div(n_head_kv).unwrap_or(0),
        n_expert: count("expert_count"),
        is_70b: arch == "llama" && n_layer == 80 && n_head != n_head_kv,
        n_layer: n_layer as i64,
        n_attention_wv: infos
            .iter()
            .filter(|t| Role::of(&t.name).is_attn_v())
            .count() as i64,
        tied: !infos.iter().any(|t| t.name == "output.weight"),
        arch,
    };
    let ft = opts.file_type;
    let patterns = opts
        .tensor_types
        .iter()
        .map(|(p, t)| match regex::Regex::new(p) {
            Ok(re) => Ok((re, *t)),
            Err(e) => Err(Error::Malformed {
                offset: 0,
                reason: format!("tensor type pattern `{p}`: {e}"),
            }),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut seen = Seen::default();
    let mut tensors = Vec::with_capacity(infos.len());
    for info in infos {
        let (name, shape) = (&info.name, &info.shape);
        let role = Role::of(name);
        let ncols = shape.first().copied().unwrap_or(1);
        let (to, fell_back) = if !quantizable(name, shape, opts) {
            (info.dtype, false)
        } else if let (Some(t), Role::TokenEmbd) = (opts.token_embedding_type, role) {
            (t, false)
        } else if let (Some(t), Role::Output) = (opts.output_type, role) {
            (t, false)
        } else if ft.default_type().is_quantized() {
            // A matrix typed by hand is not counted by the mix's rules.
            let by_hand = patterns.iter().find(|(re, _)| re.is_match(name));
            let t = match by_hand {
                Some(&(_, t)) => t,
                None if opts.pure => ft.default_type(),
                None => {
                    let ffn = matches!(role, Role::FfnDown | Role::FfnGate | Role::FfnUp);
                    let ffn_layer = match (ffn, model.n_expert > 1) {
                        (true, true) => Some(block(name))
                            .filter(|b| (0..model.n_layer).contains(b))
                            .map(Some)
                            .ok_or_else(|| Error::Malformed {
                                offset: 0,
                                reason: format!("tensor `{name}` is in no block of the model's"),
                            })?,
                        _ => None,
                    };
                    let stacked = shape.get(2).is_some_and(|&e| e > 1);
                    mix(
                        &model,
                        &mut seen,
                        ft,
                        (role, ffn_layer, stacked),
                        ncols,
                        opts,
                    )
                }
            };
            fallback(t, ncols)
        } else {
            (ft.default_type(), false)
        };
        if to != info.dtype {
            if !quant::can_quantize_weighted(to) {
                return Err(Error::UnsupportedType {
                    op: "quantize",
                    dtype: to,
                });
            }
            if !quant::can_dequantize(info.dtype) {
                return Err(Error::UnsupportedType {
                    op: "dequantize",
                    dtype: info.dtype,
                });
            }
            if info.dtype.is_quantized() && !opts.allow_requantize {
                return Err(Error::Malformed {
                    offset: 0,
                    reason: format!(
                        "tensor `{name}` is {} already: requantizing it to {to} needs \
                         --allow-requantize",
                        info.dtype
                    ),
                });
            }
        }
        let needs_imatrix = to != info.dtype
            && needs_importance(to, ft)
            && !matches!(role, Role::Output | Role::TokenEmbd);
        tensors.push(PlannedTensor {
            needs_imatrix,
            name: name.clone(),
            // Trailing dimensions of 1 dropped, as ggml writes shapes.
            shape: shape[..n_dims(shape).min(shape.len())].to_vec(),
            from: info.dtype,
            to,
            fell_back,
        });
    }
    let mut metadata = md.clone();
    for key in [
        "split.no",
        "split.count",
        "split.tensors.count",
        "general.quantization_version",
        "general.file_type",
    ] {
        metadata.remove(key);
    }
    // ggml's quantization format version.
    metadata.insert("general.quantization_version", MetadataValue::U32(2));
    metadata.insert("general.file_type", MetadataValue::U32(ft.id()));
    // Set as llama-quantize sets them: each key removed, then appended.
    let mut set = |key: &str, v: MetadataValue| {
        metadata.remove(key);
        metadata.insert(key, v);
    };
    for (key, v) in &opts.overrides {
        set(key, v.clone());
    }
    if let Some(im) = &opts.imatrix {
        set(IMATRIX_FILE_KEY, MetadataValue::String(im.file.clone()));
        if let Some(d) = &im.dataset {
            set(IMATRIX_DATASET_KEY, MetadataValue::String(d.clone()));
        }
        set(IMATRIX_ENTRIES_KEY, MetadataValue::U32(im.entries));
        if im.chunks > 0 {
            set(IMATRIX_CHUNKS_KEY, MetadataValue::U32(im.chunks));
        }
    }
    Ok(Plan { metadata, tensors })
}

/// Converts whole rows of `from` data to `to`: dequantized to f32, then
/// quantized (rows are independent, so any split of a tensor's rows gives
/// the same bytes).
///
/// ```
/// use realm_core::gguf::quantize::convert_rows;
/// use realm_core::GgmlType;
/// let f32s: Vec<u8> = [0.5f32; 32].iter().flat_map(|x| x.to_le_bytes()).collect();
/// let q = convert_rows(GgmlType::F32, GgmlType::Q8_0, &f32s)?;
/// assert_eq!(q.len(), 34); // one block: an f16 scale and 32 bytes
/// let half = convert_rows(GgmlType::F32, GgmlType::F16, &f32s)?;
/// assert_eq!(convert_rows(GgmlType::F16, GgmlType::F32, &half)?, f32s);
/// # Ok::<(), realm_core::Error>(())
/// ```
pub fn convert_rows(from: GgmlType, to: GgmlType, src: &[u8]) -> Result<Vec<u8>> {
    convert_rows_weighted(from, to, src, None)
}

/// [`convert_rows`] quantizing with `importance`, the importance of each
/// column of a row (one value a column: the importance matrix's entry for
/// the tensor), as llama-quantize does with `--imatrix`
/// ([`quant::quantize_weighted`]); `None` is `convert_rows`.
///
/// ```
/// use realm_core::gguf::quantize::convert_rows_weighted;
/// use realm_core::GgmlType;
/// let row: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
/// let f32s: Vec<u8> = row.iter().flat_map(|x| x.to_le_bytes()).collect();
/// // The first 32 columns matter, the rest hardly.
/// let importance: Vec<f32> = (0..64).map(|i| if i < 32 { 1.0 } else { 1e-6 }).collect();
/// let q = convert_rows_weighted(GgmlType::F32, GgmlType::Q4_1, &f32s, Some(&importance))?;
/// assert_eq!(q.len(), 2 * 20);
/// # Ok::<(), realm_core::Error>(())
/// ```
pub fn convert_rows_weighted(
    from: GgmlType,
    to: GgmlType,
    src: &[u8],
    importance: Option<&[f32]>,
) -> Result<Vec<u8>> {
    let n = src.len() / from.type_size() * from.block_size();
    let mut values = vec![0f32; n];
    quant::dequantize(from, src, &mut values)?;
    let len = to.row_bytes(n as u64).ok_or_else(|| Error::SizeMismatch {
        what: format!("{n} values as {to}"),
        expected: to.block_size(),
        got: n % to.block_size(),
    })?;
    let mut out = vec![0u8; len as usize];
    match importance {
        Some(w) => quant::quantize_weighted(to, &values, w, &mut out)?,
        None => quant::quantize(to, &values, &mut out)?,
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufWriter;

    /// A llama-like file of `layers` layers, 256 wide, tied embeddings
    /// unless `output`.
    fn model(layers: usize, output: bool) -> Gguf<Vec<u8>> {
        let mut w = GgufWriter::new();
        w.set(
            "general.architecture",
            MetadataValue::String("llama".into()),
        );
        w.set("general.file_type", MetadataValue::U32(0));
        w.set("llama.block_count", MetadataValue::U32(layers as u32));
        w.set("llama.attention.head_count", MetadataValue::U32(4));
        w.set("general.name", MetadataValue::String("tiny".into()));
        let f32s = |n: usize| vec![0u8; n * 4];
        w.add_tensor("token_embd.weight", GgmlType::F32, &[256, 8], f32s(2048))
            .unwrap();
        if output {
            w.add_tensor("output.weight", GgmlType::F32, &[256, 8], f32s(2048))
                .unwrap();
        }
        for l in 0..layers {
            for (t, cols) in [("attn_v", 256), ("ffn_down", 256), ("ffn_up", 96)] {
                let name = format!("blk.{l}.{t}.weight");
                w.add_tensor(&name, GgmlType::F32, &[cols, 2], f32s(2 * cols as usize))
                    .unwrap();
            }
            let norm = format!("blk.{l}.attn_norm.weight");
            w.add_tensor(&norm, GgmlType::F32, &[256], f32s(256))
                .unwrap();
        }
        Gguf::from_bytes(w.to_bytes().unwrap()).unwrap()
    }

    fn types(p: &Plan) -> Vec<(String, GgmlType)> {
        p.tensors.iter().map(|t| (t.name.clone(), t.to)).collect()
    }

    #[test]
    fn mixes_follow_llama_quantize() {
        let file = model(16, false);
        let p = plan(&file, &QuantizeOptions::new(FileType::Q4_K_M)).unwrap();
        let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names[..4],
            [
                "token_embd.weight",
                "blk.0.attn_norm.weight",
                "blk.0.attn_v.weight",
                "blk.0.ffn_down.weight"
            ]
        );
        assert_eq!(names[names.len() - 1], "blk.15.ffn_up.weight");
        let to = |name: &str| p.tensors.iter().find(|t| t.name == name).unwrap().to;
        // Tied: the embedding is the output, Q6_K.
        assert_eq!(to("token_embd.weight"), GgmlType::Q6_K);
        assert_eq!(to("blk.3.attn_norm.weight"), GgmlType::F32);
        // 96 columns: Q4_K falls back to Q5_0.
        assert_eq!(to("blk.0.ffn_up.weight"), GgmlType::Q5_0);
        assert!(p.tensors.iter().any(|t| t.fell_back));
        // The first and last two of 16 attn_v and ffn_down matrices, and
        // every third between, get Q6_K.
        for l in 0..16 {
            let want = if more_bits(l, 16) {
                GgmlType::Q6_K
            } else {
                GgmlType::Q4_K
            };
            assert_eq!(to(&format!("blk.{l}.attn_v.weight")), want, "blk.{l}");
            assert_eq!(to(&format!("blk.{l}.ffn_down.weight")), want, "blk.{l}");
        }
        assert_eq!(
            p.metadata.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            [
                "general.architecture",
                "llama.block_count",
                "llama.attention.head_count",
                "general.name",
                "general.quantization_version",
                "general.file_type"
            ]
        );
        assert_eq!(p.metadata.get_u32("general.file_type").unwrap(), 15);

        // With an output matrix, the embedding keeps the default; pure:
        // every matrix the default type (less fallbacks).
        let p = plan(&model(4, true), &QuantizeOptions::new(FileType::Q5_K_S)).unwrap();
        let to = |name: &str| p.tensors.iter().find(|t| t.name == name).unwrap().to;
        assert_eq!(to("output.weight"), GgmlType::Q6_K);
        assert_eq!(to("token_embd.weight"), GgmlType::Q5_K);
        let pure = QuantizeOptions {
            pure: true,
            ..QuantizeOptions::new(FileType::Q4_K_M)
        };
        let p = plan(&model(4, true), &pure).unwrap();
        assert!(types(&p)
            .iter()
            .all(|(n, t)| n.contains("norm") || n.contains("ffn_up") || *t == GgmlType::Q4_K));
        // F16: every matrix F16, no mix.
        let p = plan(&model(4, false), &QuantizeOptions::new(FileType::F16)).unwrap();
        assert!(types(&p)
            .iter()
            .all(|(n, t)| n.contains("norm") || *t == GgmlType::F16));
    }

    #[test]
    fn requantizing_needs_asking_and_unknown_types_are_refused() {
        let file = model(2, false);
        let q8 = plan(&file, &QuantizeOptions::new(FileType::Q8_0)).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in q8.metadata.iter() {
            w.set(k, v.clone());
        }
        for t in &q8.tensors {
            let n: u64 = t.shape.iter().product();
            let len = t.to.row_bytes(n).unwrap() as usize;
            w.add_tensor(&t.name, t.to, &t.shape, vec![0u8; len])
                .unwrap();
        }
        let quantized = Gguf::from_bytes(w.to_bytes().unwrap()).unwrap();
        let e = plan(&quantized, &QuantizeOptions::new(FileType::Q4_0)).unwrap_err();
        assert!(e.to_string().contains("--allow-requantize"), "{e}");
        // The same type again is a copy, not a requantization.
        assert!(plan(&quantized, &QuantizeOptions::new(FileType::Q8_0)).is_ok());
        let iq = QuantizeOptions {
            output_type: Some(GgmlType::I32),
            ..QuantizeOptions::new(FileType::Q8_0)
        };
        assert!(matches!(
            plan(&file, &iq),
            Err(Error::UnsupportedType { .. })
        ));
    }

    #[test]
    fn file_types_parse_by_name_and_number() {
        for t in FileType::ALL {
            assert_eq!(FileType::parse(t.name()), Some(t));
            assert_eq!(FileType::parse(&t.id().to_string()), Some(t));
        }
        assert_eq!(FileType::parse("q4_k"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::parse("iq3_xxs"), Some(FileType::IQ3_XXS));
        assert_eq!(FileType::parse("Q9_K"), None);
    }

    #[test]
    fn fallbacks_fit_the_rows() {
        assert_eq!(fallback(GgmlType::Q4_K, 576), (GgmlType::Q5_0, true));
        assert_eq!(fallback(GgmlType::Q6_K, 640), (GgmlType::Q8_0, true));
        assert_eq!(fallback(GgmlType::Q5_K, 512), (GgmlType::Q5_K, false));
        assert_eq!(fallback(GgmlType::Q8_0, 48), (GgmlType::F16, true));
    }
}
