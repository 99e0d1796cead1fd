//! A borrowed view of one tensor's bytes.

use crate::GgmlType;

/// One tensor of a model: its type, its shape and its bytes, borrowed from
/// wherever they live (an mmap'd GGUF file, a buffer the caller owns).
///
/// `shape` is in GGUF/ggml order: `shape[0]` is the fastest-varying dimension
/// (the length of a row), so a weight matrix of `m` rows by `k` columns has
/// `shape == [k, m]`. The bytes are validated on construction to be exactly
/// what `dtype` and `shape` need.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    name: &'a str,
    dtype: GgmlType,
    shape: &'a [u64],
    data: &'a [u8],
}

impl<'a> TensorView<'a> {
    /// A view of `data` as a tensor of `dtype` and `shape`; `None` if the
    /// length of `data` is not exactly what they need or if rows are not whole
    /// blocks.
    pub fn new(name: &'a str, dtype: GgmlType, shape: &'a [u64], data: &'a [u8]) -> Option<Self> {
        let row = *shape.first().unwrap_or(&1);
        let n = element_count(shape)?;
        if !row.is_multiple_of(dtype.block_size() as u64) {
            return None;
        }
        (dtype.row_bytes(n)? == data.len() as u64).then_some(Self {
            name,
            dtype,
            shape,
            data,
        })
    }

    /// The tensor's name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The element type.
    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    /// The shape, fastest-varying dimension first.
    pub fn shape(&self) -> &'a [u64] {
        self.shape
    }

    /// The raw bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Total number of elements.
    pub fn n_elements(&self) -> u64 {
        element_count(self.shape).unwrap_or(0)
    }

    /// Elements in a row (`shape[0]`).
    pub fn row_len(&self) -> usize {
        self.shape.first().copied().unwrap_or(1) as usize
    }

    /// Number of rows (the product of every dimension but the first).
    pub fn n_rows(&self) -> usize {
        match self.shape.split_first() {
            Some((_, rest)) => element_count(rest).unwrap_or(0) as usize,
            None => 1,
        }
    }

    /// Bytes in one row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.n_rows().max(1)
    }

    /// The bytes of row `i`, or `None` past the end.
    pub fn row(&self, i: usize) -> Option<&'a [u8]> {
        if i >= self.n_rows() {
            return None;
        }
        let rb = self.row_bytes();
        self.data
            .get(i.checked_mul(rb)?..i.checked_add(1)?.checked_mul(rb)?)
    }
}

/// The number of elements of `shape`: zero if any dimension is zero (even
/// when the others multiply past `u64`), `None` if it overflows otherwise.
pub(crate) fn element_count(shape: &[u64]) -> Option<u64> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_checks_length_and_indexes_rows() {
        let shape = [64u64, 3];
        let data = vec![0u8; 3 * 2 * 18];
        let v = TensorView::new("w", GgmlType::Q4_0, &shape, &data).unwrap();
        assert_eq!((v.row_len(), v.n_rows(), v.row_bytes()), (64, 3, 36));
        assert_eq!(v.row(2).unwrap().len(), 36);
        assert!(v.row(3).is_none());
        assert!(TensorView::new("w", GgmlType::Q4_0, &shape, &data[1..]).is_none());
        assert!(TensorView::new("w", GgmlType::Q4_0, &[33, 1], &data[..36]).is_none());
        // Found by the fuzzer: an empty tensor whose other dimensions overflow.
        let huge = [0u64, 1 << 40, 1 << 40];
        let empty = TensorView::new("e", GgmlType::Q4_0, &huge, &[]).unwrap();
        assert_eq!(
            (empty.n_elements(), empty.n_rows(), empty.row(0)),
            (0, 0, None)
        );
    }
}
