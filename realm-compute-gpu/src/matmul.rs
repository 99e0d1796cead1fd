//! Weights as candle quantized tensors on the device, quantized matrix
//! products and embedding lookup.

use std::borrow::Cow;
use std::sync::atomic::Ordering;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use half::f16;
use realm_core::backend::{
    matrix_dims, BackendError, BackendResult, MatMulOps, RowsProduct, WeightInfo,
};
use realm_core::{quant, GgmlType, TensorView};

use crate::fused::q8::{self, matrix, Quantized};
use crate::scratch::scratch_err;
use crate::{dev_err, product, GpuBackend, GpuBuffer, GpuWorkspace};

/// A weight matrix copied to the device once, in its GGUF type.
pub struct GpuWeight {
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    qm: QMatMul,
    /// The weight as candle's vector products take it, for inputs that
    /// are blocks already (CUDA, quantized types).
    #[cfg(feature = "cuda")]
    blocks: Option<crate::fused::q8::cuda::Weight>,
}

impl GpuWeight {
    /// `x` (`[n, cols]`) times the weight's transpose, `[n, rows]`:
    /// candle's product, less the column of the row of zeros an odd count
    /// is stored with.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // On CUDA, candle's product kernels launch through the runtime,
        // unchecked: check them.
        #[cfg(feature = "cuda")]
        let y = match x.device().is_cuda() {
            true => crate::fused::q8::cuda::runtime_checked("matmul", || self.qm.forward(x))?,
            false => self.qm.forward(x)?,
        };
        #[cfg(not(feature = "cuda"))]
        let y = self.qm.forward(x)?;
        match y.dim(1)? == self.rows {
            true => Ok(y),
            false => y.narrow(1, 0, self.rows)?.contiguous(),
        }
    }
}

impl Drop for GpuWeight {
    fn drop(&mut self) {
        let device = match &self.qm {
            QMatMul::QTensor(q) => q.device(),
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.device().clone(),
        };
        crate::driver::make_current(&device);
    }
}

impl std::fmt::Debug for GpuWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuWeight")
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

impl WeightInfo for GpuWeight {
    fn dtype(&self) -> GgmlType {
        self.dtype
    }
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
}

/// candle's name for a GGUF type, and the alignment its blocks need, for
/// the types this backend multiplies by.
fn candle_type(t: GgmlType) -> Option<(GgmlDType, usize)> {
    Some(match t {
        GgmlType::F32 => (GgmlDType::F32, 4),
        GgmlType::F16 => (GgmlDType::F16, 2),
        GgmlType::BF16 => (GgmlDType::BF16, 2),
        GgmlType::Q4_0 => (GgmlDType::Q4_0, 2),
        GgmlType::Q4_1 => (GgmlDType::Q4_1, 2),
        GgmlType::Q5_0 => (GgmlDType::Q5_0, 2),
        GgmlType::Q5_1 => (GgmlDType::Q5_1, 2),
        GgmlType::Q8_0 => (GgmlDType::Q8_0, 2),
        GgmlType::Q2_K => (GgmlDType::Q2K, 2),
        GgmlType::Q3_K => (GgmlDType::Q3K, 2),
        GgmlType::Q4_K => (GgmlDType::Q4K, 2),
        GgmlType::Q5_K => (GgmlDType::Q5K, 2),
        GgmlType::Q6_K => (GgmlDType::Q6K, 2),
        _ => return None,
    })
}

/// The type a matrix of a type candle cannot multiply goes to the device
/// in, when asked ([`GpuBackend::with_dequantized`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dequantized {
    /// Half precision: two bytes a weight.
    F16,
    /// Single precision: four bytes a weight, the weights exactly.
    F32,
}

impl Dequantized {
    /// The type on the device.
    fn dtype(self) -> GgmlType {
        match self {
            Self::F16 => GgmlType::F16,
            Self::F32 => GgmlType::F32,
        }
    }

    /// A dense matrix of `values`, `[rows, cols]`, in this type on
    /// `device`, as candle's product takes it (an f16 matrix multiplies
    /// its input rounded to f16, as cuBLAS's half products do).
    fn matrix(
        self,
        values: Vec<f32>,
        (rows, cols): (usize, usize),
        device: &Device,
    ) -> candle_core::Result<QMatMul> {
        Ok(match self {
            Self::F16 => {
                let halves: Vec<f16> = values.into_iter().map(f16::from_f32).collect();
                QMatMul::TensorF16(Tensor::from_vec(halves, (rows, cols), device)?)
            }
            Self::F32 => QMatMul::Tensor(Tensor::from_vec(values, (rows, cols), device)?),
        })
    }
}

/// A matrix's data as it goes to the device: its own blocks (Realm's type,
/// candle's, and the blocks' alignment), or its values dequantized.
enum Upload<'a> {
    Blocks(Cow<'a, [u8]>, (GgmlType, GgmlDType, usize)),
    Values(Vec<f32>, Dequantized),
}

/// `data`, the bytes of `rows` rows, followed by a row of zero bytes when
/// `rows` is odd.
fn with_even_rows(data: Cow<'_, [u8]>, rows: usize) -> Cow<'_, [u8]> {
    if rows.is_multiple_of(2) {
        return data;
    }
    let mut bytes = data.into_owned();
    bytes.resize(bytes.len() + bytes.len() / rows, 0);
    Cow::Owned(bytes)
}

impl GpuBackend {
    /// `t`'s data as it goes to the device: its own blocks, or its values
    /// where candle cannot multiply its type and
    /// [`GpuBackend::with_dequantized`] asked.
    fn upload_of<'a>(&self, op: &'static str, t: &TensorView<'a>) -> BackendResult<Upload<'a>> {
        let dtype = t.dtype();
        if let Some((ctype, align)) = candle_type(dtype) {
            return Ok(Upload::Blocks(
                Cow::Borrowed(t.data()),
                (dtype, ctype, align),
            ));
        }
        let to = self
            .dequantized
            .ok_or(BackendError::UnsupportedType { op, dtype })?;
        let values = quant::dequantize_row_to_vec(dtype, t.data())
            .map_err(|_| BackendError::UnsupportedType { op, dtype })?;
        Ok(Upload::Values(values, to))
    }

    /// A `rows` x `cols` matrix of `up`, copied to the device.
    fn to_device(
        &self,
        op: &'static str,
        up: Upload<'_>,
        rows: usize,
        cols: usize,
    ) -> BackendResult<GpuWeight> {
        let (dtype, qm) = match up {
            Upload::Blocks(data, types) => {
                (types.0, self.blocks_to_device(op, data, types, rows, cols)?)
            }
            Upload::Values(values, to) => {
                let qm = to
                    .matrix(values, (rows, cols), &self.device)
                    .map_err(dev_err(op))?;
                (to.dtype(), qm)
            }
        };
        #[cfg(feature = "cuda")]
        let blocks = crate::fused::q8::cuda::Weight::of(&qm).map_err(dev_err(op))?;
        // Every thread multiplies by the weights, each on its own stream
        // (CUDA's per-thread streams): the copy must be done first.
        crate::driver::synchronize(&self.device).map_err(dev_err(op))?;
        Ok(GpuWeight {
            dtype,
            rows,
            cols,
            qm,
            #[cfg(feature = "cuda")]
            blocks,
        })
    }

    /// A `rows` x `cols` matrix of `data` in candle's `ctype` (whose
    /// blocks need `align`), copied to the device.
    fn blocks_to_device(
        &self,
        op: &'static str,
        data: Cow<'_, [u8]>,
        (_, ctype, align): (GgmlType, GgmlDType, usize),
        rows: usize,
        cols: usize,
    ) -> BackendResult<QMatMul> {
        // An f16 matrix stays f16 on the device (candle's own upload would
        // widen it to f32: twice the memory, and single-precision
        // products), multiplying its input rounded to f16 as cuBLAS's half
        // products take it.
        if ctype == GgmlDType::F16 {
            let t = Tensor::from_raw_buffer(&data, DType::F16, &[rows, cols], &self.device)
                .map_err(dev_err(op))?;
            return Ok(QMatMul::TensorF16(t));
        }
        // candle's CUDA vector kernels for 2 to 8 input rows take weight
        // rows in pairs, and so read one row past an odd count: a row of
        // zeros (zero scales: zero values in every type) is stored there,
        // part of the matrix for candle (products then drop its column).
        // On every device, so that the tests off CUDA take the same path.
        let data = with_even_rows(data, rows);
        let stored_rows = rows + rows % 2;
        // candle asserts alignment; check it first so that bad input is an
        // error rather than a panic (TensorView already guarantees whole
        // blocks and the exact byte length).
        if !(data.as_ptr() as usize).is_multiple_of(align) {
            return Err(BackendError::Misaligned { op, align });
        }
        let storage = QStorage::from_data(data, &self.device, ctype).map_err(dev_err(op))?;
        let q = QTensor::new(storage, (stored_rows, cols)).map_err(dev_err(op))?;
        QMatMul::from_qtensor(q).map_err(dev_err(op))
    }
}

impl GpuBackend {
    /// The product by `w` of `n` rows that an op wrote quantized, when
    /// they are and the product can take them: on CUDA, candle's vector
    /// kernel (Q8_1 blocks, up to 8 rows) or matrix kernel (its layout)
    /// for `w`'s type on them, with no kernel to quantize the input; on
    /// candle's CPU device (only when asked: see
    /// [`GpuBackend::with_q8_blocks`]), the product of their values.
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))] // `ws`: CUDA's ordering.
    fn blocks_product(
        &self,
        ws: &GpuWorkspace,
        w: &GpuWeight,
        blocks: Option<Quantized>,
        n: usize,
    ) -> BackendResult<Option<Tensor>> {
        const OP: &str = "matmul";
        let Some(blocks) = blocks else {
            return Ok(None);
        };
        let scales = matrix::Scales::of(w.dtype);
        #[cfg(feature = "cuda")]
        if let (Some(weight), true) = (w.blocks, self.device.is_cuda()) {
            let y = match (&blocks, &self.matrix_device, scales) {
                (Quantized::Vector(b), _, _) if n <= q8::MAX_ROWS => {
                    let op = q8::BlocksProduct {
                        weight,
                        rows: w.rows,
                        cols: w.cols,
                    };
                    b.apply_op1_no_bwd(&op).map_err(dev_err(OP))?
                }
                (Quantized::Matrix { words, .. }, Some(device), Some(scales))
                    if weight.has_matrix() =>
                {
                    let op = q8::MatrixProduct {
                        weight,
                        scales,
                        rows: w.rows,
                        cols: w.cols,
                        n,
                        device,
                    };
                    // The kernels share `device`'s buffer, as candle's
                    // share its scratch.
                    self.scratch
                        .shared(&self.device, ws.recording(), || words.apply_op1_no_bwd(&op))
                        .map_err(scratch_err(OP))?
                }
                _ => return Ok(None),
            };
            self.blocks_products.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(y));
        }
        if !self.device.is_cpu() || !w.dtype.is_quantized() {
            return Ok(None);
        }
        let x = match (&blocks, scales) {
            (Quantized::Vector(b), _) if n <= q8::MAX_ROWS => {
                (|| q8::dequantize_tensor(b)?.reshape((n, w.cols)))()
            }
            (Quantized::Matrix { words, .. }, Some(scales)) => {
                matrix::dequantize_tensor(words, n, w.cols, scales)
            }
            _ => return Ok(None),
        }
        .map_err(dev_err(OP))?;
        let y = w.forward(&x).map_err(dev_err(OP))?;
        self.blocks_products.fetch_add(1, Ordering::Relaxed);
        Ok(Some(y))
    }
}

impl MatMulOps for GpuBackend {
    type Weight<'a>
        = GpuWeight
    where
        Self: 'a;

    fn supports_matmul(&self, t: GgmlType) -> bool {
        candle_type(t).is_some() || (self.dequantized.is_some() && quant::can_dequantize(t))
    }

    fn weight<'a>(&self, t: &TensorView<'a>) -> BackendResult<GpuWeight> {
        const OP: &str = "weight";
        let (rows, cols) = matrix_dims(OP, t)?;
        if rows == 0 {
            return Err(BackendError::InvalidParameter {
                op: OP,
                what: "empty matrix",
            });
        }
        let up = self.upload_of(OP, t)?;
        self.to_device(OP, up, rows, cols)
    }

    fn stack<'a>(&self, parts: &[TensorView<'a>]) -> BackendResult<Option<GpuWeight>> {
        const OP: &str = "stack";
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        let dtype = first.dtype();
        let (_, cols) = matrix_dims(OP, first)?;
        let mut rows = 0;
        let mut whole: Option<Upload<'_>> = None;
        for t in parts {
            let (r, c) = matrix_dims(OP, t)?;
            if t.dtype() != dtype || c != cols {
                return Err(BackendError::InvalidParameter {
                    op: OP,
                    what: "stacked weights need one type and column count",
                });
            }
            rows += r;
            // Rows are whole blocks, so the parts' bytes (or values)
            // concatenate.
            whole = Some(match (whole, self.upload_of(OP, t)?) {
                (None, Upload::Blocks(b, ty)) => Upload::Blocks(Cow::Owned(b.into_owned()), ty),
                (None, values) => values,
                (Some(Upload::Blocks(mut all, ty)), Upload::Blocks(b, _)) => {
                    all.to_mut().extend_from_slice(&b);
                    Upload::Blocks(all, ty)
                }
                (Some(Upload::Values(mut all, to)), Upload::Values(v, _)) => {
                    all.extend(v);
                    Upload::Values(all, to)
                }
                _ => {
                    return Err(BackendError::InvalidParameter {
                        op: OP,
                        what: "stacked weights need one type",
                    })
                }
            });
        }
        match whole {
            Some(up) => self.to_device(OP, up, rows, cols).map(Some),
            None => Ok(None),
        }
    }

    fn matmul(
        &self,
        ws: &mut Self::Workspace,
        w: &GpuWeight,
        x: &GpuBuffer,
        n_tokens: usize,
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        const OP: &str = "matmul";
        let n_in = product(OP, "n_tokens * cols overflows", n_tokens, w.cols)?;
        let n_out = product(OP, "n_tokens * rows overflows", n_tokens, w.rows)?;
        let blocks = x.blocks(n_tokens, w.cols);
        let x = x.prefix(OP, "x length (n_tokens * cols)", n_in)?;
        out.check_room(OP, "out length (n_tokens * rows)", n_out)?;
        if n_tokens == 0 {
            return Ok(());
        }
        if let Some(y) = self.blocks_product(ws, w, blocks, n_tokens)? {
            return out.set_prefix(OP, "out length (n_tokens * rows)", n_out, y);
        }
        let x = x.reshape((n_tokens, w.cols)).map_err(dev_err(OP))?;
        let recording = ws.recording();
        let y = self
            .scratch
            .product(&self.device, recording, n_tokens, w.cols, || w.forward(&x))
            .map_err(scratch_err(OP))?;
        out.set_prefix(OP, "out length (n_tokens * rows)", n_out, y)
    }

    fn add_rows_product(
        &self,
        dst: &mut GpuBuffer,
        first_row: usize,
        x: &GpuBuffer,
        n_rows: usize,
        w: &GpuBuffer,
        (k, m): (usize, usize),
        s: f32,
    ) -> BackendResult<()> {
        const OP: &str = "add_rows_product";
        let p = RowsProduct::new(first_row, n_rows, (k, m))?;
        let xs = x.prefix(OP, "x length", p.x_len)?;
        let ws = w.prefix(OP, "w length", p.w_len)?;
        let (start, end) = (p.dst.start, p.dst.end);
        let rows = dst.rows(OP, "dst length", &(first_row..first_row + n_rows), m)?;
        // The rows after these that were defined are kept too.
        let defined = dst.defined().max(end);
        let all = dst.prefix(OP, "dst length", defined)?;
        let y = (|| {
            let update = xs.reshape((n_rows, k))?.matmul(&ws.reshape((k, m))?)?;
            let sum = (rows + update.flatten_all()?.affine(f64::from(s), 0.0)?)?;
            if start == 0 && defined == end {
                // The rows are all there is (a sequence's own call).
                return Ok(sum);
            }
            let mut parts = Vec::with_capacity(3);
            if start > 0 {
                parts.push(all.narrow(0, 0, start)?);
            }
            parts.push(sum);
            if defined > end {
                parts.push(all.narrow(0, end, defined - end)?);
            }
            Tensor::cat(&parts, 0)
        })();
        dst.set_prefix(OP, "dst length", defined, y.map_err(dev_err(OP))?)
    }

    fn embed(
        &self,
        ws: &mut GpuWorkspace,
        table: &GpuWeight,
        ids: &[u32],
        out: &mut GpuBuffer,
    ) -> BackendResult<()> {
        const OP: &str = "embed";
        let len = product(OP, "ids * cols overflows", ids.len(), table.cols)?;
        out.check_room(OP, "out length (ids * cols)", len)?;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(BackendError::OutOfRange {
                op: OP,
                what: "token id",
                index: bad as usize,
                limit: table.rows,
            });
        }
        if ids.is_empty() {
            return Ok(());
        }
        let ids = match ws.step() {
            Some(st) => st.ids(OP, ids)?.clone(),
            None => Tensor::from_slice(ids, ids.len(), &self.device).map_err(dev_err(OP))?,
        };
        // (An f16 table's rows widen to f32.)
        let rows = table
            .qm
            .embedding(&ids)
            .and_then(|r| r.to_dtype(DType::F32))
            .map_err(dev_err(OP))?;
        out.set_prefix(OP, "out length (ids * cols)", len, rows)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::with_even_rows;

    #[test]
    fn odd_row_counts_get_a_row_of_zeros() {
        let three: Vec<u8> = (1..=12).collect();
        let padded = with_even_rows(Cow::Borrowed(&three), 3);
        assert_eq!(padded.len(), 16);
        assert_eq!(&padded[..12], &three[..]);
        assert!(padded[12..].iter().all(|&b| b == 0));
        // Even counts are left as they are, not copied.
        let two = &three[..8];
        assert!(matches!(with_even_rows(Cow::Borrowed(two), 2), Cow::Borrowed(b) if b == two));
    }
}
