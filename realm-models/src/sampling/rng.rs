//! The sampler's random numbers: the 32-bit Mersenne Twister (C++'s
//! `std::mt19937`), read into uniform numbers the way GCC's libstdc++
//! reads it for `std::uniform_real_distribution`, so that a seed makes
//! the draws llama.cpp's samplers make with it (on Linux builds).

/// Words of state.
const N: usize = 624;
/// The offset of the word each step mixes in.
const M: usize = 397;

/// MT19937: 624 words of state, one 32-bit output a call. The same on
/// every platform, wasm32 included.
#[derive(Debug, Clone)]
pub(super) struct Mt19937 {
    state: [u32; N],
    next: usize,
}

impl Mt19937 {
    /// The generator `std::mt19937(seed)` makes.
    pub(super) fn new(seed: u32) -> Self {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, next: N }
    }

    /// Regenerates the whole state at once (the "twist").
    fn twist(&mut self) {
        let s = &mut self.state;
        for i in 0..N {
            let y = (s[i] & 0x8000_0000) | (s[(i + 1) % N] & 0x7fff_ffff);
            let mut v = s[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            s[i] = v;
        }
        self.next = 0;
    }

    pub(super) fn next_u32(&mut self) -> u32 {
        if self.next >= N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Uniform in `[0, 1)` from two outputs, as libstdc++'s
    /// `generate_canonical<double, 53>` forms it: the first output plus
    /// the second times 2^32, over 2^64, with a result that rounds up to 1
    /// taken down to the double below it.
    pub(super) fn next_f64(&mut self) -> f64 {
        let low = self.next_u32();
        canonical_f64(low, self.next_u32())
    }

    /// Uniform in `[0, 1)` from one output, as libstdc++'s
    /// `generate_canonical<float, 24>` forms it (the output rounded to a
    /// float first).
    pub(super) fn next_f32(&mut self) -> f32 {
        canonical_f32(self.next_u32())
    }
}

fn canonical_f64(low: u32, high: u32) -> f64 {
    const R: f64 = 4_294_967_296.0;
    let x = (f64::from(low) + f64::from(high) * R) / (R * R);
    if x >= 1.0 {
        1.0 - f64::EPSILON / 2.0
    } else {
        x
    }
}

fn canonical_f32(x: u32) -> f32 {
    let x = x as f32 / 4_294_967_296.0;
    if x >= 1.0 {
        1.0 - f32::EPSILON / 2.0
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ten_thousandth_output_is_the_standards() {
        // C++'s standard fixes it for the default seed, 5489: any
        // conforming mt19937 gives 4123659995.
        let mut g = Mt19937::new(5489);
        let last = (0..10_000).map(|_| g.next_u32()).last();
        assert_eq!(last, Some(4_123_659_995));
    }

    #[test]
    fn uniforms_stay_below_one() {
        let mut g = Mt19937::new(1);
        for _ in 0..10_000 {
            let (d, f) = (g.next_f64(), g.next_f32());
            assert!((0.0..1.0).contains(&d) && (0.0..1.0).contains(&f));
        }
        // The largest outputs round to 1 and are taken down.
        assert_eq!(canonical_f32(u32::MAX), 1.0 - f32::EPSILON / 2.0);
        assert_eq!(canonical_f64(u32::MAX, u32::MAX), 1.0 - f64::EPSILON / 2.0);
        assert_eq!(canonical_f64(0, 1), 1.0 / 4_294_967_296.0);
    }
}
