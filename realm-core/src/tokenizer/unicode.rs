//! Code point classes as llama.cpp's pre-tokenizers see them.
//!
//! Each code point gets the major Unicode general category (`\p{N}`,
//! `\p{L}`, ...) with unassigned code points as "undefined", plus the
//! `White_Space` property. The table is generated from Unicode 15.1, the
//! version llama.cpp's own tables use, by `scripts/gen_unicode_tables.py`.

use super::unicode_tables::RANGES;

/// Category and property bits of one code point. `0` means "no code point"
/// (outside the chunk being split), which llama.cpp's scanners rely on.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct Flags(pub(crate) u16);

impl Flags {
    pub(crate) const UNDEFINED: u16 = 0x01;
    pub(crate) const NUMBER: u16 = 0x02;
    pub(crate) const LETTER: u16 = 0x04;
    pub(crate) const ACCENT_MARK: u16 = 0x10;
    pub(crate) const PUNCTUATION: u16 = 0x20;
    pub(crate) const WHITESPACE: u16 = 0x100;
    const CATEGORIES: u16 = 0xFF;

    /// Flags of `cp`.
    #[inline]
    pub(crate) fn of(cp: u32) -> Flags {
        if cp < 128 {
            return Flags(ASCII[cp as usize]);
        }
        let i = RANGES.partition_point(|&(start, _)| start <= cp);
        // `RANGES[0]` starts at 0, so `i >= 1` for every code point.
        Flags(
            RANGES
                .get(i.wrapping_sub(1))
                .map_or(Self::UNDEFINED, |r| r.1),
        )
    }

    #[inline]
    pub(crate) fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }

    #[inline]
    pub(crate) fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }

    /// A combining mark (`\p{M}`).
    #[inline]
    pub(crate) fn is_accent_mark(self) -> bool {
        self.0 & Self::ACCENT_MARK != 0
    }

    #[inline]
    pub(crate) fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }

    /// True for a real code point (any bit set).
    #[inline]
    pub(crate) fn is_some(self) -> bool {
        self.0 != 0
    }

    /// The category bits alone.
    #[inline]
    pub(crate) fn category(self) -> u16 {
        self.0 & Self::CATEGORIES
    }
}

const fn ascii_table() -> [u16; 128] {
    let mut t = [0u16; 128];
    let mut i = 0;
    while i < 128 {
        // Walk the generated ranges: the ASCII ones come first.
        let mut j = 0;
        let mut f = 0;
        while j < RANGES.len() && RANGES[j].0 <= i as u32 {
            f = RANGES[j].1;
            j += 1;
        }
        t[i] = f;
        i += 1;
    }
    t
}

static ASCII: [u16; 128] = ascii_table();

#[cfg(test)]
mod tests {
    use super::Flags;

    #[test]
    fn classes() {
        assert!(Flags::of('a' as u32).is_letter());
        assert!(Flags::of('7' as u32).is_number());
        assert!(Flags::of(' ' as u32).is_whitespace());
        assert!(Flags::of(0x3000).is_whitespace());
        assert!(Flags::of('é' as u32).is_letter());
        assert!(Flags::of('漢' as u32).is_letter());
        assert_eq!(Flags::of('!' as u32).category(), Flags::PUNCTUATION);
        assert_eq!(Flags::of('$' as u32).category(), 0x40);
        assert_eq!(Flags::of(0x0301).category(), 0x10); // mark
        assert_eq!(Flags::of(0x0378).category(), Flags::UNDEFINED);
        assert_eq!(Flags::of(0x10FFFF).category(), Flags::UNDEFINED);
        assert_eq!(Flags::of(0x1F600).category(), 0x40); // symbol
    }
}
