//! Importance matrices: for each weight matrix of a model, the sum over
//! some text's tokens of each input column's squared activation, as
//! llama.cpp's `llama-imatrix` collects them. Quantizers weight each column's
//! rounding error by its mean ([`Imatrix::importance`]), so the columns the
//! activations use most are kept best (`llama-quantize --imatrix`).
//!
//! Files are read in both of llama.cpp's formats: GGUF (what `llama-imatrix`
//! writes now: `<matrix>.in_sum2` and `<matrix>.counts` F32 tensors,
//! `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`) and the
//! older `.dat` layout; they are written as GGUF.
//!
//! ```
//! use realm_core::imatrix::Imatrix;
//! let mut m = Imatrix::new(512);
//! // Two tokens' activations going into `blk.0.attn_q.weight` (4 columns).
//! m.add("blk.0.attn_q.weight", &[1.0, 2.0, 0.0, -1.0, 3.0, 0.0, 0.0, 1.0], 4)?;
//! let bytes = m.to_gguf()?.to_bytes()?;
//! let back = Imatrix::from_bytes(&bytes)?;
//! assert_eq!(back.importance("blk.0.attn_q.weight"), Some(vec![5.0, 2.0, 0.0, 1.0]));
//! # Ok::<(), realm_core::Error>(())
//! ```

use std::collections::BTreeMap;

use crate::gguf::{Gguf, GgufWriter, MetadataArray, MetadataValue};
use crate::{Error, GgmlType, Result};

/// Metadata key: the texts the matrix was collected on.
pub const DATASETS_KEY: &str = "imatrix.datasets";
/// Metadata key: how many chunks of text were run.
pub const CHUNK_COUNT_KEY: &str = "imatrix.chunk_count";
/// Metadata key: tokens per chunk.
pub const CHUNK_SIZE_KEY: &str = "imatrix.chunk_size";

const SUMS_SUFFIX: &str = ".in_sum2";
const COUNTS_SUFFIX: &str = ".counts";

/// One weight matrix's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct ImatrixEntry {
    /// Per input column, the sum of its squared activations; one run of
    /// columns per expert (`counts.len()` runs).
    pub sums: Vec<f32>,
    /// Per expert, how many activation rows were summed.
    pub counts: Vec<u64>,
}

/// An importance matrix: statistics per weight matrix, by tensor name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Imatrix {
    entries: BTreeMap<String, ImatrixEntry>,
    /// The texts it was collected on (file names, as given).
    pub datasets: Vec<String>,
    /// How many chunks of text were run.
    pub chunk_count: u32,
    /// Tokens per chunk.
    pub chunk_size: u32,
    /// Read from the older `.dat` layout, whose sums are already divided by
    /// their counts and multiplied by the number of calls.
    legacy: bool,
    /// A GGUF file with the three `imatrix.*` keys (llama-quantize refuses
    /// GGUF files without them).
    has_metadata: bool,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::Imatrix(reason.into())
}

impl Imatrix {
    /// An empty matrix for chunks of `chunk_size` tokens.
    pub fn new(chunk_size: u32) -> Self {
        Self {
            chunk_size,
            has_metadata: true,
            ..Self::default()
        }
    }

    /// Adds rows of activations going into matrix `name`: `rows` holds whole
    /// rows of `cols` values (the matrix's input width). Squares are summed
    /// in f32, row after row, as llama-imatrix sums them.
    pub fn add(&mut self, name: &str, rows: &[f32], cols: usize) -> Result<()> {
        self.add_expert(name, 0, 1, rows, cols)
    }

    /// Adds rows of activations going into expert `expert` of the `experts`
    /// of a mixture's matrix `name` (a 3-D tensor): each row's squares to
    /// that expert's `cols` sums, one to its count, as llama-imatrix adds a
    /// routed product's rows.
    ///
    /// ```
    /// use realm_core::imatrix::Imatrix;
    /// let mut m = Imatrix::new(512);
    /// m.add_expert("blk.0.ffn_up_exps.weight", 2, 4, &[1.0, 2.0, 3.0, 4.0], 2)?;
    /// let e = m.entry("blk.0.ffn_up_exps.weight").unwrap();
    /// assert_eq!(e.counts, [0, 0, 2, 0]);
    /// assert_eq!(&e.sums[4..6], &[10.0, 20.0]);
    /// # Ok::<(), realm_core::Error>(())
    /// ```
    pub fn add_expert(
        &mut self,
        name: &str,
        expert: usize,
        experts: usize,
        rows: &[f32],
        cols: usize,
    ) -> Result<()> {
        if cols == 0 || !rows.len().is_multiple_of(cols) || expert >= experts {
            let which = match experts {
                1 => String::new(),
                n => format!("expert {expert} of {n} of "),
            };
            return Err(bad(format!(
                "{} activations for {which}`{name}` are not whole rows of {cols}",
                rows.len()
            )));
        }
        let e = self
            .entries
            .entry(name.to_string())
            .or_insert_with(|| ImatrixEntry {
                sums: vec![0.0; cols * experts],
                counts: vec![0; experts],
            });
        if e.sums.len() != cols * experts || e.counts.len() != experts {
            return Err(bad(format!(
                "`{name}` has {} columns in {} runs here, not {cols} in {experts}",
                e.sums.len(),
                e.counts.len()
            )));
        }
        let sums = &mut e.sums[expert * cols..(expert + 1) * cols];
        for row in rows.chunks_exact(cols) {
            for (acc, &x) in sums.iter_mut().zip(row) {
                *acc += x * x;
            }
        }
        if let Some(c) = sums.iter().find(|v| !v.is_finite()) {
            return Err(bad(format!("`{name}` sums to {c}")));
        }
        e.counts[expert] = e.counts[expert].saturating_add((rows.len() / cols) as u64);
        Ok(())
    }

    /// Adds another matrix's statistics (llama-imatrix's `--in-file`):
    /// sums and counts of the same matrices add up, chunk counts too. A
    /// `.dat` matrix's averages count as `chunk_size` rows a call, as
    /// llama-imatrix counts them.
    pub fn merge(&mut self, other: &Imatrix) -> Result<()> {
        let rows = self.chunk_size;
        let raw: BTreeMap<String, ImatrixEntry>;
        let entries = if other.legacy {
            raw = other
                .entries
                .iter()
                .map(|(name, e)| {
                    let sums = e.sums.iter().map(|&s| s * rows as f32).collect();
                    let calls = e.counts.first().copied().unwrap_or(0);
                    let counts = vec![calls.saturating_mul(u64::from(rows))];
                    (name.clone(), ImatrixEntry { sums, counts })
                })
                .collect();
            &raw
        } else {
            &other.entries
        };
        for (name, o) in entries {
            match self.entries.get_mut(name) {
                None => {
                    self.entries.insert(name.clone(), o.clone());
                }
                Some(e) if e.sums.len() == o.sums.len() && e.counts.len() == o.counts.len() => {
                    e.sums.iter_mut().zip(&o.sums).for_each(|(a, b)| *a += b);
                    e.counts
                        .iter_mut()
                        .zip(&o.counts)
                        .for_each(|(a, b)| *a = a.saturating_add(*b));
                }
                Some(e) => {
                    return Err(bad(format!(
                        "`{name}` has {} values in {} runs in one matrix, {} in {} in the other",
                        e.sums.len(),
                        e.counts.len(),
                        o.sums.len(),
                        o.counts.len()
                    )));
                }
            }
        }
        self.datasets.extend(other.datasets.iter().cloned());
        self.chunk_count = self.chunk_count.saturating_add(other.chunk_count);
        Ok(())
    }

    /// The matrices' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// How many matrices it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Matrix `name`'s statistics.
    pub fn entry(&self, name: &str) -> Option<&ImatrixEntry> {
        self.entries.get(name)
    }

    /// Keeps only the matrices `keep` accepts (llama-quantize's
    /// `--include-weights` and `--exclude-weights`).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|name, _| keep(name));
    }

    /// The importance of matrix `name`'s input columns, as llama-quantize
    /// hands it to the quantizers: each sum divided by its count (1 where a
    /// run has no count), or for a `.dat` file by its number of calls.
    pub fn importance(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(name)?;
        if self.legacy {
            let calls = e.counts.first().copied().unwrap_or(0);
            return Some(if calls > 0 {
                e.sums.iter().map(|&s| s / calls as f32).collect()
            } else {
                e.sums.clone()
            });
        }
        let per = e.sums.len() / e.counts.len().max(1);
        let mut out = Vec::with_capacity(e.sums.len());
        for (run, &count) in e.sums.chunks(per.max(1)).zip(&e.counts) {
            if count > 0 {
                let c = count as f32;
                out.extend(run.iter().map(|&s| s / c));
            } else {
                out.extend(run.iter().map(|_| 1.0));
            }
        }
        Some(out)
    }

    /// Reads a matrix file (GGUF, or the older `.dat` layout).
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Reads a matrix from a file's bytes: GGUF when they start with
    /// `GGUF`, else the older `.dat` layout.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.starts_with(b"GGUF") {
            Self::from_gguf(&Gguf::from_bytes(bytes)?)
        } else {
            Self::from_dat(bytes)
        }
    }

    /// Reads a matrix from a GGUF file's tensors and metadata.
    pub fn from_gguf<S: AsRef<[u8]>>(file: &Gguf<S>) -> Result<Self> {
        let md = file.metadata();
        let datasets = match md.get(DATASETS_KEY) {
            Some(MetadataValue::Array(MetadataArray::String(v))) => Some(v.clone()),
            _ => None,
        };
        let chunk_count = md.get_u32(CHUNK_COUNT_KEY).ok();
        let chunk_size = md.get_u32(CHUNK_SIZE_KEY).ok();
        let mut halves: BTreeMap<&str, [Option<Vec<f32>>; 2]> = BTreeMap::new();
        for info in file.tensor_infos() {
            let (name, half) = if let Some(n) = info.name.strip_suffix(SUMS_SUFFIX) {
                (n, 0)
            } else if let Some(n) = info.name.strip_suffix(COUNTS_SUFFIX) {
                (n, 1)
            } else {
                continue;
            };
            if info.dtype != GgmlType::F32 {
                return Err(bad(format!("`{}` is {}, not F32", info.name, info.dtype)));
            }
            let t = file.tensor(&info.name)?;
            let values = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            halves.entry(name).or_default()[half] = Some(values);
        }
        if halves.is_empty() {
            return Err(bad("the file holds no matrices"));
        }
        let mut entries = BTreeMap::new();
        for (name, [sums, counts]) in halves {
            let (Some(sums), Some(counts)) = (sums, counts) else {
                return Err(bad(format!("`{name}` lacks its sums or its counts")));
            };
            if counts.is_empty() || !sums.len().is_multiple_of(counts.len()) {
                return Err(bad(format!(
                    "`{name}`: {} sums do not split into {} runs",
                    sums.len(),
                    counts.len()
                )));
            }
            if let Some(c) = counts.iter().find(|c| !(c.is_finite() && **c >= 0.0)) {
                return Err(bad(format!("`{name}` has a count of {c}")));
            }
            let counts = counts.iter().map(|&c| c.round() as u64).collect();
            entries.insert(name.to_string(), ImatrixEntry { sums, counts });
        }
        Ok(Self {
            entries,
            has_metadata: datasets.is_some() && chunk_count.is_some() && chunk_size.is_some(),
            datasets: datasets.unwrap_or_default(),
            chunk_count: chunk_count.unwrap_or(0),
            chunk_size: chunk_size.unwrap_or(0),
            legacy: false,
        })
    }

    /// Reads the older `.dat` layout: an i32 count of entries, each a
    /// length-prefixed name, an i32 number of calls, an i32 number of
    /// values and the values; then, optionally, an i32 chunk count and a
    /// length-prefixed dataset name.
    fn from_dat(bytes: &[u8]) -> Result<Self> {
        let mut r = Dat { bytes, at: 0 };
        let n = r.i32("the number of entries")?;
        if n < 1 {
            return Err(bad(format!(
                "not a GGUF file, and as a .dat file it holds {n} entries"
            )));
        }
        let mut m = Self {
            legacy: true,
            ..Self::default()
        };
        for i in 0..n {
            let len = r.len(&format!("entry {i}'s name length"))?;
            let name = String::from_utf8_lossy(r.take(len, "a name")?).into_owned();
            let calls = r.i32("a number of calls")?;
            let nval = r.len("a number of values")?;
            if nval == 0 {
                return Err(bad(format!("`{name}` has no values")));
            }
            let raw = r.take(nval * 4, "values")?;
            let sums = raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let counts = vec![calls.max(0) as u64];
            m.entries.insert(name, ImatrixEntry { sums, counts });
        }
        if r.at < bytes.len() {
            m.chunk_count = r.i32("the chunk count")?.max(0) as u32;
            let len = r.len("the dataset's length").unwrap_or(0);
            if let Ok(d) = r.take(len, "the dataset") {
                if len > 0 {
                    m.datasets.push(String::from_utf8_lossy(d).into_owned());
                }
            }
        }
        Ok(m)
    }

    /// Whether this is a file llama-quantize takes: a `.dat` file, or a GGUF
    /// file with its `imatrix.*` keys.
    pub fn has_metadata(&self) -> bool {
        self.legacy || self.has_metadata
    }

    /// The matrix as llama-imatrix writes it: `general.type` `imatrix`, the
    /// datasets and chunk keys, then per matrix in name order its sums
    /// (`<name>.in_sum2`, columns x experts) and counts (`<name>.counts`,
    /// 1 x experts), both F32.
    pub fn to_gguf(&self) -> Result<GgufWriter<'static>> {
        if self.legacy {
            return Err(bad(
                "a .dat matrix's sums are averages: write it from a GGUF one",
            ));
        }
        let mut w = GgufWriter::new();
        w.set("general.type", MetadataValue::String("imatrix".into()));
        w.set(
            DATASETS_KEY,
            MetadataValue::Array(MetadataArray::String(self.datasets.clone())),
        );
        w.set(CHUNK_COUNT_KEY, MetadataValue::U32(self.chunk_count));
        w.set(CHUNK_SIZE_KEY, MetadataValue::U32(self.chunk_size));
        for (name, e) in &self.entries {
            let runs = e.counts.len() as u64;
            let per = e.sums.len() as u64 / runs.max(1);
            let sums: Vec<u8> = e.sums.iter().flat_map(|v| v.to_le_bytes()).collect();
            let counts: Vec<u8> = e
                .counts
                .iter()
                .flat_map(|&c| (c as f32).to_le_bytes())
                .collect();
            w.add_tensor(
                &format!("{name}{SUMS_SUFFIX}"),
                GgmlType::F32,
                &[per, runs],
                sums,
            )?;
            w.add_tensor(
                &format!("{name}{COUNTS_SUFFIX}"),
                GgmlType::F32,
                &[1, runs],
                counts,
            )?;
        }
        Ok(w)
    }
}

/// Statistics of one matrix's mean squared activations (llama-imatrix's
/// `--show-statistics`), over the columns of every expert with a count.
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixStats {
    /// The tensor's name.
    pub name: String,
    /// Its block (`blk.N.`), if it is in one.
    pub layer: Option<u32>,
    /// The name's part before `.weight` (`attn_q`).
    pub tensor: String,
    /// The sum of the mean squared activations.
    pub sum: f32,
    /// The smallest.
    pub min: f32,
    /// The largest.
    pub max: f32,
    /// Their mean.
    pub mean: f32,
    /// Their standard deviation.
    pub stddev: f32,
    /// The share above 1e-5.
    pub active: f32,
    /// How many there are.
    pub elements: usize,
    /// The entropy (bits) of their distribution (each over their sum).
    pub entropy: f32,
    /// The share more than one standard deviation above the mean.
    pub zd: f32,
    /// The cosine similarity of the summed squares with those of the same
    /// matrix in the block before (0 without one).
    pub cossim: f32,
}

impl MatrixStats {
    /// The entropy as a share of its largest possible value, in percent.
    pub fn entropy_norm(&self) -> f32 {
        if self.elements > 0 {
            (100.0 * (f64::from(self.entropy) / (self.elements as f64).log2())) as f32
        } else {
            0.0
        }
    }
}

/// `(layer, matrix)` of a tensor name: the number after `blk.` and the
/// part before `.weight`.
fn name_parts(name: &str) -> (Option<u32>, String) {
    let parts: Vec<&str> = name.split('.').collect();
    let layer = parts
        .iter()
        .position(|p| *p == "blk")
        .and_then(|i| parts.get(i + 1))
        .and_then(|l| l.parse().ok());
    let tensor = parts
        .iter()
        .position(|p| *p == "weight")
        .filter(|&i| i > 0)
        .map_or(name, |i| parts[i - 1]);
    (layer, tensor.to_string())
}

/// A sum of products in f32, in order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (x, y) in a.iter().zip(b) {
        sum += x * y;
    }
    sum
}

impl Imatrix {
    /// Each matrix's statistics, ordered by matrix name and then by
    /// decreasing sum, as llama-imatrix's `--show-statistics` lists them
    /// (a matrix whose counts are all 0 has none).
    pub fn statistics(&self) -> Vec<MatrixStats> {
        let mut out: Vec<MatrixStats> = self
            .entries
            .iter()
            .filter_map(|(name, e)| stats_of(name, e))
            .collect();
        for st in &mut out {
            let Some(layer) = st.layer.filter(|&l| l > 0) else {
                continue;
            };
            let prev = format!("blk.{}.", layer - 1);
            let now = format!("blk.{layer}.");
            let prev_name = st.name.replacen(&now, &prev, 1);
            let (Some(a), Some(b)) = (self.entries.get(&st.name), self.entries.get(&prev_name))
            else {
                continue;
            };
            if a.sums.len() == b.sums.len() {
                let norms = dot(&a.sums, &a.sums).sqrt() * dot(&b.sums, &b.sums).sqrt();
                st.cossim = dot(&a.sums, &b.sums) / norms;
            }
        }
        out.sort_by(|a, b| a.tensor.cmp(&b.tensor).then(b.sum.total_cmp(&a.sum)));
        out
    }
}

fn stats_of(name: &str, e: &ImatrixEntry) -> Option<MatrixStats> {
    let per = e.sums.len().checked_div(e.counts.len())?;
    let mut act = Vec::with_capacity(e.sums.len());
    for (run, &count) in e.sums.chunks(per.max(1)).zip(&e.counts) {
        if count > 0 {
            act.extend(run.iter().map(|&s| s / count as f32));
        }
    }
    if act.is_empty() {
        return None;
    }
    let n = act.len() as f32;
    let mut sum = 0.0f32;
    act.iter().for_each(|&v| sum += v);
    let max = act.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let min = act.iter().copied().fold(f32::INFINITY, f32::min);
    let mean = sum / n;
    let var = dot(&act, &act) / n - mean * mean;
    let stddev = var.max(0.0).sqrt();
    let inactive = act.iter().filter(|v| v.abs() <= 1e-5).count();
    let active = 1.0 - inactive as f32 / n;
    let mut entropy = 0.0f32;
    if sum > 0.0 {
        for &v in &act {
            let p = v / sum;
            if p > 0.0 {
                entropy -= p * p.log2();
            }
        }
    }
    let above = if stddev > 0.0 {
        act.iter().filter(|&&v| (v - mean) / stddev > 1.0).count()
    } else {
        0
    };
    let (layer, tensor) = name_parts(name);
    Some(MatrixStats {
        name: name.to_string(),
        layer,
        tensor,
        sum,
        min,
        max,
        mean,
        stddev,
        active,
        elements: act.len(),
        entropy,
        zd: above as f32 / n,
        cossim: 0.0,
    })
}

/// A cursor over a `.dat` file.
struct Dat<'b> {
    bytes: &'b [u8],
    at: usize,
}

impl<'b> Dat<'b> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'b [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(bad(format!(
                "the file ends at byte {} inside {what} ({n} bytes at {})",
                self.bytes.len(),
                self.at
            )));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A non-negative i32 length.
    fn len(&mut self, what: &str) -> Result<usize> {
        let v = self.i32(what)?;
        usize::try_from(v).map_err(|_| bad(format!("{what} is {v}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dat(entries: &[(&str, i32, &[f32])], tail: Option<(i32, &str)>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&(entries.len() as i32).to_le_bytes());
        for (name, calls, values) in entries {
            b.extend_from_slice(&(name.len() as i32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&calls.to_le_bytes());
            b.extend_from_slice(&(values.len() as i32).to_le_bytes());
            values
                .iter()
                .for_each(|v| b.extend_from_slice(&v.to_le_bytes()));
        }
        if let Some((chunks, dataset)) = tail {
            b.extend_from_slice(&chunks.to_le_bytes());
            b.extend_from_slice(&(dataset.len() as i32).to_le_bytes());
            b.extend_from_slice(dataset.as_bytes());
        }
        b
    }

    #[test]
    fn gguf_round_trips_and_importance_divides_by_counts() {
        let mut m = Imatrix::new(4);
        m.add("blk.0.ffn_down.weight", &[1.0, -2.0, 3.0, 0.5], 2)
            .unwrap();
        m.add("blk.0.ffn_down.weight", &[2.0, 0.0], 2).unwrap();
        m.add("blk.0.attn_q.weight", &[3.0], 1).unwrap();
        m.datasets.push("wiki.txt".into());
        m.chunk_count = 1;
        let back = Imatrix::from_bytes(&m.to_gguf().unwrap().to_bytes().unwrap()).unwrap();
        assert_eq!(back, m);
        assert!(back.has_metadata());
        let e = back.entry("blk.0.ffn_down.weight").unwrap();
        assert_eq!(
            (e.sums.clone(), e.counts.clone()),
            (vec![14.0, 4.25], vec![3])
        );
        assert_eq!(
            back.importance("blk.0.ffn_down.weight").unwrap(),
            vec![14.0 / 3.0, 4.25 / 3.0]
        );
        assert_eq!(
            back.names().collect::<Vec<_>>(),
            ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"]
        );
    }

    #[test]
    fn runs_without_counts_weigh_one_and_merging_adds() {
        let mut m = Imatrix::new(8);
        m.entries.insert(
            "e".into(),
            ImatrixEntry {
                sums: vec![2.0, 4.0, 6.0, 8.0],
                counts: vec![2, 0],
            },
        );
        assert_eq!(m.importance("e").unwrap(), vec![1.0, 2.0, 1.0, 1.0]);
        let other = m.clone();
        m.chunk_count = 3;
        m.merge(&other).unwrap();
        assert_eq!(m.entry("e").unwrap().counts, vec![4, 0]);
        assert_eq!(m.chunk_count, 3);
        m.add("f", &[1.0, 1.0], 2).unwrap();
        let mut wider = Imatrix::new(8);
        wider.add("f", &[1.0, 1.0, 1.0], 3).unwrap();
        assert!(m.merge(&wider).unwrap_err().to_string().contains("`f`"));
        assert!(m.add("f", &[1.0, 1.0, 1.0], 3).is_err());
        assert!(m.add("g", &[1.0, 1.0, 1.0], 2).is_err());
        assert!(m.add("h", &[f32::MAX, 0.0], 1).is_err());
    }

    #[test]
    fn dat_files_read_with_their_tail() {
        let b = dat(
            &[("blk.0.attn_k.weight", 10, &[20.0, 5.0]), ("x", 0, &[3.0])],
            Some((7, "data.txt")),
        );
        let m = Imatrix::from_bytes(&b).unwrap();
        assert!(m.has_metadata());
        assert_eq!(m.importance("blk.0.attn_k.weight").unwrap(), vec![2.0, 0.5]);
        assert_eq!(m.importance("x").unwrap(), vec![3.0]);
        assert_eq!(
            (m.chunk_count, m.datasets.clone()),
            (7, vec!["data.txt".to_string()])
        );
        assert!(m.to_gguf().is_err());
        // Added to a matrix of 4-token chunks: averages times 4 a call.
        let mut sum = Imatrix::new(4);
        sum.merge(&m).unwrap();
        let e = sum.entry("blk.0.attn_k.weight").unwrap();
        assert_eq!(
            (e.sums.clone(), e.counts.clone()),
            (vec![80.0, 20.0], vec![40])
        );
        assert_eq!(
            sum.importance("blk.0.attn_k.weight"),
            m.importance("blk.0.attn_k.weight")
        );
        let plain = Imatrix::from_bytes(&dat(&[("y", 1, &[1.0])], None)).unwrap();
        assert_eq!(plain.chunk_count, 0);
    }

    #[test]
    fn malformed_files_are_refused() {
        let b = dat(&[("blk.0.attn_k.weight", 10, &[20.0, 5.0])], None);
        for cut in 0..b.len() {
            assert!(Imatrix::from_bytes(&b[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Imatrix::from_bytes(&dat(&[], None)).is_err());
        assert!(Imatrix::from_bytes(&dat(&[("z", 1, &[])], None)).is_err());
        let mut negative = dat(&[("z", 1, &[1.0])], None);
        negative[4..8].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(Imatrix::from_bytes(&negative).is_err());

        let sums = [1.0f32, 2.0, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        let counts = [1.0f32, 1.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        let mut w = GgufWriter::new();
        w.add_tensor("a.in_sum2", GgmlType::F32, &[3], sums.clone())
            .unwrap();
        w.add_tensor("a.counts", GgmlType::F32, &[2], counts)
            .unwrap();
        let e = Imatrix::from_bytes(&w.to_bytes().unwrap()).unwrap_err();
        assert!(e.to_string().contains("do not split"), "{e}");
        let mut lone = GgufWriter::new();
        lone.add_tensor("a.in_sum2", GgmlType::F32, &[3], sums)
            .unwrap();
        let e = Imatrix::from_bytes(&lone.to_bytes().unwrap()).unwrap_err();
        assert!(e.to_string().contains("lacks"), "{e}");
        let e = Imatrix::from_bytes(&GgufWriter::new().to_bytes().unwrap()).unwrap_err();
        assert!(e.to_string().contains("no matrices"), "{e}");
        let mut f16 = GgufWriter::new();
        f16.add_tensor("a.in_sum2", GgmlType::F16, &[2], vec![0u8; 4])
            .unwrap();
        assert!(Imatrix::from_bytes(&f16.to_bytes().unwrap()).is_err());
    }

    #[test]
    fn gguf_without_its_keys_is_marked() {
        let mut m = Imatrix::new(4);
        m.add("a", &[1.0], 1).unwrap();
        let mut w = m.to_gguf().unwrap();
        w.metadata_mut().remove(CHUNK_SIZE_KEY);
        let back = Imatrix::from_bytes(&w.to_bytes().unwrap()).unwrap();
        assert!(!back.has_metadata());
    }
}
