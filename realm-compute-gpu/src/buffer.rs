//! Device buffers: a flat `f32` tensor and the capacity the buffer was
//! made with.

use std::ops::Range;

use candle_core::Tensor;
use realm_core::backend::{BackendError, BackendResult};

use crate::fused::q8::{self, Quantized};
use crate::{dev_err, product};

/// A buffer of `f32` activations on the device.
///
/// Ops do not write into device memory in place: an op that writes the
/// first `n` values replaces the buffer's tensor with its `n`-value result
/// (candle allocates from the device's memory pool), so only the values
/// the last writer produced are defined, as the backend trait allows. A
/// read past them is an error, never stale data.
///
/// A buffer may also hold rows that are columns of another tensor (a
/// stacked product's parts, `set_rows_view`): the fused ops
/// read them in place, anything else gets a contiguous copy as it reads.
///
/// The op that wrote the values may also have written them quantized
/// (`fused::q8`: Q8_1 blocks, or the matrix products' layout), which a
/// quantized product then reads in place of quantizing the values itself;
/// any other write drops them.
#[derive(Debug, Clone)]
pub struct GpuBuffer {
    t: Tensor,
    cap: usize,
    blocks: Option<Quantized>,
}

fn shape_err(op: &'static str, what: &'static str, expected: usize, got: usize) -> BackendError {
    BackendError::Shape {
        op,
        what,
        expected,
        got,
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        crate::driver::make_current(self.t.device());
    }
}

impl GpuBuffer {
    pub(crate) fn new(t: Tensor, cap: usize) -> Self {
        Self {
            t,
            cap,
            blocks: None,
        }
    }

    /// The capacity the buffer was made with.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Values that are defined (those the last writer produced).
    pub fn defined(&self) -> usize {
        self.t.elem_count()
    }

    /// The whole of the defined values (for weights made by `upload`).
    pub(crate) fn all(&self) -> &Tensor {
        &self.t
    }

    /// The tensor holding the defined values.
    pub(crate) fn tensor(&self) -> &Tensor {
        &self.t
    }

    /// Makes `t` (the same values, or a copy of them) the buffer's tensor.
    pub(crate) fn replace(&mut self, t: Tensor) {
        self.t = t;
        self.blocks = None;
    }

    /// The first `rows` rows of `width` values quantized, if the op that
    /// wrote them wrote them so: their Q8_1 blocks, or the matrix layout
    /// of exactly these rows.
    pub(crate) fn blocks(&self, rows: usize, width: usize) -> Option<Quantized> {
        let len = rows.checked_mul(width)?;
        if len == 0 || !len.is_multiple_of(q8::BLOCK) || len > self.defined() {
            return None;
        }
        match self.blocks.as_ref()? {
            Quantized::Vector(b) => match q8::words(len) {
                w if w == b.elem_count() => Some(Quantized::Vector(b.clone())),
                w => b.narrow(0, 0, w).ok().map(Quantized::Vector),
            },
            m @ Quantized::Matrix {
                rows: r, width: w, ..
            } => (*r == rows && *w == width).then(|| m.clone()),
        }
    }

    /// The first `len` values, as a 1-D tensor.
    pub(crate) fn prefix(
        &self,
        op: &'static str,
        what: &'static str,
        len: usize,
    ) -> BackendResult<Tensor> {
        if len > self.cap {
            return Err(shape_err(op, what, len, self.cap));
        }
        if len > self.defined() {
            return Err(BackendError::InvalidParameter {
                op,
                what: "reads buffer values that no op has written",
            });
        }
        // Flat: a view of contiguous values, a copy of a view's rows.
        let flat = match self.t.is_contiguous() {
            true => self.t.flatten_all(),
            false => self.t.contiguous().and_then(|t| t.flatten_all()),
        }
        .map_err(dev_err(op))?;
        if len == self.defined() {
            return Ok(flat);
        }
        flat.narrow(0, 0, len).map_err(dev_err(op))
    }

    /// `(rows, width)` when the buffer holds a view of rows that are not
    /// contiguous with each other ([`GpuBuffer::set_rows_view`]).
    pub(crate) fn rows_view_shape(&self) -> Option<(usize, usize)> {
        match *self.t.dims() {
            [rows, width] if !self.t.is_contiguous() => Some((rows, width)),
            _ => None,
        }
    }

    /// The first `rows` rows of `width` values as `[rows, width]`: the
    /// view's rows in place when the buffer holds such a view, else its
    /// values.
    pub(crate) fn row_view(
        &self,
        op: &'static str,
        what: &'static str,
        rows: usize,
        width: usize,
    ) -> BackendResult<Tensor> {
        match self.rows_view_shape() {
            Some((r, w)) if w == width && r >= rows => {
                self.t.narrow(0, 0, rows).map_err(dev_err(op))
            }
            _ => {
                let len = product(op, "rows * width overflows", rows, width)?;
                let flat = self.prefix(op, what, len)?;
                flat.reshape((rows, width)).map_err(dev_err(op))
            }
        }
    }

    /// Makes `view`, `[rows, width]` with each row's values contiguous but
    /// rows at any stride (a stacked product's columns), the buffer's
    /// first `rows * width` values, without copying them.
    pub(crate) fn set_rows_view(
        &mut self,
        op: &'static str,
        what: &'static str,
        rows: usize,
        width: usize,
        view: Tensor,
    ) -> BackendResult<()> {
        let len = product(op, "rows * width overflows", rows, width)?;
        self.check_room(op, what, len)?;
        if view.dims() != [rows, width] {
            return Err(shape_err(op, "view length", len, view.elem_count()));
        }
        self.t = view;
        self.blocks = None;
        Ok(())
    }

    /// Rows `rows` (of `width` values), as a 1-D tensor.
    pub(crate) fn rows(
        &self,
        op: &'static str,
        what: &'static str,
        rows: &Range<usize>,
        width: usize,
    ) -> BackendResult<Tensor> {
        let start = product(op, "row offset overflows", rows.start, width)?;
        let end = product(op, "row offset overflows", rows.end, width)?;
        if start > end {
            return Err(BackendError::InvalidParameter {
                op,
                what: "row range is reversed",
            });
        }
        let all = self.prefix(op, what, end)?;
        all.narrow(0, start, end - start).map_err(dev_err(op))
    }

    /// Checks that `len` values fit before an op computes them.
    pub(crate) fn check_room(
        &self,
        op: &'static str,
        what: &'static str,
        len: usize,
    ) -> BackendResult<()> {
        if len > self.cap {
            return Err(shape_err(op, what, len, self.cap));
        }
        Ok(())
    }

    /// Makes `t` (any shape, `len` values) the buffer's first `len` values.
    pub(crate) fn set_prefix(
        &mut self,
        op: &'static str,
        what: &'static str,
        len: usize,
        t: Tensor,
    ) -> BackendResult<()> {
        self.check_room(op, what, len)?;
        if t.elem_count() != len {
            return Err(shape_err(op, "result length", len, t.elem_count()));
        }
        self.t = t.flatten_all().map_err(dev_err(op))?;
        self.blocks = None;
        Ok(())
    }

    /// [`GpuBuffer::set_prefix`], with the values quantized when the op
    /// wrote them so (flat tensors of words: `fused::q8::words(len)` of
    /// Q8_1 blocks, or the matrix layout's words of `len` values).
    pub(crate) fn set_prefix_with_blocks(
        &mut self,
        op: &'static str,
        what: &'static str,
        len: usize,
        t: Tensor,
        blocks: Option<Quantized>,
    ) -> BackendResult<()> {
        self.set_prefix(op, what, len, t)?;
        let (want, got) = match &blocks {
            None => (0, 0),
            Some(Quantized::Vector(b)) => (q8::words(len), b.elem_count()),
            Some(Quantized::Matrix { rows, width, words }) => {
                if rows * width != len {
                    return Err(shape_err(op, "blocks' values", len, rows * width));
                }
                (q8::matrix::words(*rows, *width), words.elem_count())
            }
        };
        if want != got {
            return Err(shape_err(op, "blocks length", want, got));
        }
        self.blocks = blocks;
        Ok(())
    }

    /// Writes `t` (rows of `width` values) as rows `rows`, keeping the rows
    /// before `rows.start`.
    pub(crate) fn set_rows(
        &mut self,
        op: &'static str,
        what: &'static str,
        rows: &Range<usize>,
        width: usize,
        t: Tensor,
    ) -> BackendResult<()> {
        let start = product(op, "row offset overflows", rows.start, width)?;
        let end = product(op, "row offset overflows", rows.end, width)?;
        let t = t.flatten_all().map_err(dev_err(op))?;
        if start == 0 {
            return self.set_prefix(op, what, end, t);
        }
        let head = self.prefix(op, what, start)?;
        let joined = Tensor::cat(&[&head, &t], 0).map_err(dev_err(op))?;
        self.set_prefix(op, what, end, joined)
    }
}
