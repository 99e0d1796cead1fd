//! Code point classes as llama.cpp's pre-tokenizers see them.
//!
//! Each code point gets the major Unicode general category (`\p{N}`,
//! `\p{L}`, ...) with unassigned code points as "undefined", plus the
//! `White_Space` property. The table is generated from Unicode 15.1, the
//! version llama.cpp's own tables use, by `scripts/gen_unicode_tables.py`,
//! with the two maps the WordPiece normalizer needs: simple lowercase, and
//! the first code point of the canonical decomposition.

use super::unicode_tables::{LOWERCASE, NFD_FIRST, RANGES};

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
    pub(crate) const SYMBOL: u16 = 0x40;
    pub(crate) const CONTROL: u16 = 0x80;
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

    /// Punctuation (`\p{P}`).
    #[inline]
    pub(crate) fn is_punctuation(self) -> bool {
        self.0 & Self::PUNCTUATION != 0
    }

    /// A symbol (`\p{S}`).
    #[inline]
    pub(crate) fn is_symbol(self) -> bool {
        self.0 & Self::SYMBOL != 0
    }

    /// A control, format, private-use or surrogate code point (`\p{C}`
    /// without the unassigned ones).
    #[inline]
    pub(crate) fn is_control(self) -> bool {
        self.0 & Self::CONTROL != 0
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

/// The simple lowercase of `cp` (itself where it has none), as llama.cpp's
/// `unicode_tolower` gives it.
#[inline]
pub(crate) fn to_lower(cp: u32) -> u32 {
    if cp < 128 {
        return if (b'A' as u32..=b'Z' as u32).contains(&cp) {
            cp + 32
        } else {
            cp
        };
    }
    match LOWERCASE.binary_search_by_key(&cp, |&(from, _)| from) {
        Ok(i) => LOWERCASE[i].1,
        Err(_) => cp,
    }
}

/// The first code point of `cp`'s canonical decomposition (NFD); the rest
/// of it is dropped, as llama.cpp's `unicode_cpts_normalize_nfd` does.
#[inline]
pub(crate) fn nfd_first(cp: u32) -> u32 {
    if cp < 0xC0 {
        return cp;
    }
    let i = NFD_FIRST.partition_point(|&(first, _, _)| first <= cp);
    match i.checked_sub(1).and_then(|i| NFD_FIRST.get(i)) {
        Some(&(_, last, to)) if cp <= last => to,
        _ => cp,
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
        assert!(Flags::of(0x0007).is_control());
        assert!(Flags::of(0x200B).is_control()); // format
        assert!(!Flags::of(0x0378).is_control()); // unassigned
        assert!(Flags::of('!' as u32).is_punctuation());
        assert!(Flags::of('+' as u32).is_symbol());
    }

    #[test]
    fn lowercase_and_nfd() {
        use super::{nfd_first, to_lower};
        assert_eq!(to_lower('A' as u32), 'a' as u32);
        assert_eq!(to_lower('a' as u32), 'a' as u32);
        assert_eq!(to_lower('Å' as u32), 'å' as u32);
        assert_eq!(to_lower('Σ' as u32), 'σ' as u32);
        assert_eq!(to_lower(0x0130), 'i' as u32); // İ: the first of "i̇"
        assert_eq!(to_lower('Ж' as u32), 'ж' as u32);
        assert_eq!(to_lower('漢' as u32), '漢' as u32);
        assert_eq!(nfd_first('é' as u32), 'e' as u32);
        assert_eq!(nfd_first('Å' as u32), 'A' as u32);
        assert_eq!(nfd_first(0x212B), 'A' as u32); // Ångström sign
        assert_eq!(nfd_first('한' as u32), 0x1112); // Hangul: the leading jamo
        assert_eq!(nfd_first('e' as u32), 'e' as u32);
        assert_eq!(nfd_first(0x10FFFF), 0x10FFFF);
        assert_eq!(nfd_first(0), 0);
    }
}
