//! What the GPU backend's test files share.

/// A small deterministic generator of test values.
pub struct Rng(pub u64);

impl Rng {
    /// `n` values in `lo..hi`.
    pub fn f32s(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 = self
                    .0
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                lo + (hi - lo) * ((self.0 >> 40) as f32 / (1u64 << 24) as f32)
            })
            .collect()
    }
}

/// Every `got[i]` within `rel * |want[i]| + abs` of `want[i]`.
pub fn assert_close(got: &[f32], want: &[f32], rel: f32, abs: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= rel * b.abs() + abs,
            "{what}[{i}]: got {a}, want {b}"
        );
    }
}
