//! Adapters merged into a model's own weights, as llama.cpp's
//! `llama-export-lora` merges them: a file that runs the fine-tune with no
//! adapter at all.

use std::io::Write;

use half::f16;
use rayon::prelude::*;
use realm_core::gguf::{Gguf, GgufWriter, MetadataValue};
use realm_core::{quant, GgmlType, TensorView};

use super::{header, lora_err, pairs};
use crate::{Error, Result};

/// `general.file_type` of a file whose matrices are mostly f16.
const MOSTLY_F16: u32 = 1;

/// What [`merge`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// Tensors with adapters' updates in them.
    pub merged: usize,
    /// Tensors copied as they were.
    pub copied: usize,
}

/// One adapter's update of one matrix: `scale * B A`.
struct Update<'t> {
    a: TensorView<'t>,
    b: TensorView<'t>,
    rank: usize,
    scale: f32,
}

fn f32s(t: &TensorView<'_>) -> realm_core::Result<Vec<f32>> {
    let mut v = vec![0f32; t.n_elements() as usize];
    quant::dequantize(t.dtype(), t.data(), &mut v)?;
    Ok(v)
}

/// Writes the model in `base` with each adapter's update (its scale times
/// `alpha / rank`, or times 1 when alpha is 0, times `B A`) added to the
/// matrices it changes, to `out`, as `llama-export-lora` does: a changed
/// matrix is written in f16 (f32 if it was f32), after the updates were
/// added in f32 in the adapters' order; every other tensor is copied as it
/// is, and `general.file_type` says f16. Each entry of `B A` is summed in
/// f64 and rounded once (llama.cpp's sums, in f32, differ with the CPU's
/// vector width). The adapters may change different matrices, and be of
/// any type the file format holds. Fails, naming it, on what cannot be
/// merged: another architecture, a tensor the model lacks or of another
/// shape, a half pair, the token embeddings (whose adapters llama.cpp
/// stores the other way round), activated LoRA.
///
/// ```
/// use realm_core::gguf::Gguf;
/// use realm_models::lora::merge;
/// use realm_models::synthetic::{SyntheticLayout, SyntheticLora};
/// let base = Gguf::from_bytes(SyntheticLayout::tiny("llama")?.write(1)?)?;
/// let adapter = Gguf::from_bytes(SyntheticLora::new(4, 8.0).write(&base, 2)?)?;
/// let mut out = Vec::new();
/// let m = merge(&base, &[(&adapter, 1.0)], &mut out)?;
/// assert_eq!(m.merged, 2 * 7); // every matrix of both blocks
/// let merged = Gguf::from_bytes(out)?;
/// assert_eq!(merged.tensor("blk.0.attn_q.weight")?.dtype(), realm_core::GgmlType::F16);
/// # Ok::<(), realm_models::Error>(())
/// ```
pub fn merge<S: AsRef<[u8]>, T: AsRef<[u8]>>(
    base: &Gguf<S>,
    adapters: &[(&Gguf<T>, f32)],
    out: impl Write,
) -> Result<Merged> {
    let arch = base.metadata().get_str("general.architecture")?;
    // Each changed matrix's updates, in the adapters' order.
    let mut updates: Vec<(String, Vec<Update<'_>>)> = Vec::new();
    for (file, scale) in adapters {
        if !scale.is_finite() {
            return Err(lora_err(format!("the scale {scale} is not finite")));
        }
        let alpha = header(file)?;
        let theirs = file
            .metadata()
            .get_str("general.architecture")
            .unwrap_or("");
        if theirs != arch {
            return Err(lora_err(format!(
                "the adapter is for architecture `{theirs}`, the model is `{arch}`"
            )));
        }
        for (name, (a, b)) in pairs(file)? {
            if name.starts_with("token_embd") {
                return Err(lora_err(
                    "merging a LoRA of the token embeddings (`token_embd.weight`) is not supported",
                ));
            }
            let w = base
                .tensor(&name)
                .map_err(|_| lora_err(format!("`{name}` is not a tensor of the model")))?;
            let (k, m) = match w.shape() {
                [k, m] => (*k, *m),
                s => {
                    return Err(lora_err(format!(
                        "`{name}` has shape {s:?}, not a matrix's"
                    )))
                }
            };
            let (ar, br) = match (a.shape(), b.shape()) {
                ([ak, ar], [br, bm]) if *ak == k && *bm == m => (*ar, *br),
                (sa, sb) => {
                    return Err(lora_err(format!(
                        "`{name}`: lora_a {sa:?} and lora_b {sb:?} do not fit its shape \
                         [{k}, {m}] (an adapter for another model?)"
                    )))
                }
            };
            if ar != br || ar == 0 {
                return Err(lora_err(format!(
                    "`{name}`: lora_a has rank {ar} but lora_b {br}"
                )));
            }
            let rank = ar as usize;
            // (In llama.cpp's order of operations.)
            let scale = if alpha != 0.0 {
                scale * alpha / rank as f32
            } else {
                *scale
            };
            let update = Update { a, b, rank, scale };
            match updates.iter_mut().find(|(n, _)| *n == name) {
                Some((_, u)) => u.push(update),
                None => updates.push((name, vec![update])),
            }
        }
    }
    let mut w = GgufWriter::new();
    for (k, v) in base.metadata().iter() {
        w.set(k, v.clone());
    }
    w.set("general.file_type", MetadataValue::U32(MOSTLY_F16));
    let mut merged = Merged {
        merged: 0,
        copied: 0,
    };
    for t in base.tensors() {
        let t = t?;
        let Some(pos) = updates.iter().position(|(n, _)| n == t.name()) else {
            w.add_tensor(t.name(), t.dtype(), t.shape(), t.data())?;
            merged.copied += 1;
            continue;
        };
        let (_, ups) = updates.swap_remove(pos);
        let dtype = match t.dtype() {
            GgmlType::F32 => GgmlType::F32,
            _ => GgmlType::F16,
        };
        let (k, view) = (t.shape()[0] as usize, t);
        w.add_tensor_with(t.name(), dtype, t.shape(), move || {
            let mut cur = f32s(&view)?;
            for u in &ups {
                let (a, b) = (f32s(&u.a)?, f32s(&u.b)?);
                let r = u.rank;
                cur.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
                    let bi = &b[i * r..(i + 1) * r];
                    for (j, x) in row.iter_mut().enumerate() {
                        let dot: f64 = (0..r)
                            .map(|t| f64::from(bi[t]) * f64::from(a[t * k + j]))
                            .sum();
                        *x += dot as f32 * u.scale;
                    }
                });
            }
            Ok(match dtype {
                GgmlType::F32 => cur.iter().flat_map(|x| x.to_le_bytes()).collect(),
                _ => cur
                    .iter()
                    .flat_map(|&x| f16::from_f32(x).to_le_bytes())
                    .collect(),
            })
        })?;
        merged.merged += 1;
    }
    w.write_to(out).map_err(Error::from)?;
    Ok(merged)
}
