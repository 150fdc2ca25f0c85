//! Unicode character classes for the pre-tokenizers: letter (`\p{L}`), number (`\p{N}`),
//! white space (`\s`, the Unicode `White_Space` property) and everything else.
//!
//! The tables come from `regex-syntax`, the parser behind the `regex` crate that tiktoken's and
//! our own regex-based splitters use, so a hand-written splitter classifies every code point
//! exactly as the regular expression it replaces. ASCII is a `const` table (no indirection on
//! the hot path); the rest is a two-level table (128 code points a block, identical blocks
//! shared: about 40 KB), built once on first use.

use std::sync::OnceLock;

use regex_syntax::hir::{Class as HirClass, HirKind};
use rustc_hash::FxHashMap;

/// The class of one character, as the GPT-style split patterns see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CharClass {
    Other = 0,
    Letter = 1,
    Number = 2,
    Space = 3,
}

impl CharClass {
    const fn from_u8(v: u8) -> Self {
        match v {
            1 => CharClass::Letter,
            2 => CharClass::Number,
            3 => CharClass::Space,
            _ => CharClass::Other,
        }
    }
}

const fn ascii_table() -> [CharClass; 128] {
    let mut t = [CharClass::Other; 128];
    let mut i = 0;
    while i < 128 {
        let b = i as u8;
        t[i] = if b.is_ascii_alphabetic() {
            CharClass::Letter
        } else if b.is_ascii_digit() {
            CharClass::Number
        } else if matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ') {
            CharClass::Space
        } else {
            CharClass::Other
        };
        i += 1;
    }
    t
}

/// The classes of the ASCII characters.
pub const ASCII: [CharClass; 128] = ascii_table();

const BLOCK: usize = 128;
const N_CODEPOINTS: usize = 0x11_0000;

struct Table {
    /// Block number of each 128-code-point block.
    index: Vec<u16>,
    blocks: Vec<[u8; BLOCK]>,
}

fn ranges_of(class: &str) -> Vec<(u32, u32)> {
    // The three classes are fixed strings that always parse; an empty result would only mean a
    // broken regex-syntax, which the unit tests below would catch.
    let Ok(hir) = regex_syntax::Parser::new().parse(class) else {
        return Vec::new();
    };
    match hir.kind() {
        HirKind::Class(HirClass::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        _ => Vec::new(),
    }
}

fn build() -> Table {
    let mut flat = vec![0_u8; N_CODEPOINTS];
    for (class, value) in [
        (r"\p{L}", CharClass::Letter),
        (r"\p{N}", CharClass::Number),
        (r"\s", CharClass::Space),
    ] {
        for (lo, hi) in ranges_of(class) {
            for cp in lo..=hi {
                flat[cp as usize] = value as u8;
            }
        }
    }
    let mut seen: FxHashMap<[u8; BLOCK], u16> = FxHashMap::default();
    let mut blocks = Vec::new();
    let mut index = Vec::with_capacity(N_CODEPOINTS / BLOCK);
    for chunk in flat.chunks_exact(BLOCK) {
        let mut block = [0_u8; BLOCK];
        block.copy_from_slice(chunk);
        let next = blocks.len() as u16;
        let id = *seen.entry(block).or_insert_with(|| {
            blocks.push(block);
            next
        });
        index.push(id);
    }
    Table { index, blocks }
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(build)
}

/// The class of a code point (a `char` as `u32`).
#[inline(always)]
pub fn class_of(cp: u32) -> CharClass {
    if cp < 128 {
        ASCII[cp as usize]
    } else {
        let t = table();
        let block = t.index.get((cp as usize) / BLOCK).copied().unwrap_or(0);
        let v = t.blocks[block as usize][(cp as usize) % BLOCK];
        CharClass::from_u8(v)
    }
}

/// The class and byte length of the character starting at byte `i` of valid UTF-8. ASCII (most
/// text, all code) is one table load.
#[inline(always)]
pub fn class_at(text: &[u8], i: usize) -> (CharClass, usize) {
    let b = text[i];
    if b < 0x80 {
        (ASCII[b as usize], 1)
    } else {
        let (cp, len) = decode_at(text, i);
        (class_of(cp), len)
    }
}

/// Decodes the character starting at byte `i` of valid UTF-8 (`text` comes from a `&str` and
/// `i` is a character boundary): its code point and length in bytes.
#[inline(always)]
pub fn decode_at(text: &[u8], i: usize) -> (u32, usize) {
    let b0 = text[i];
    if b0 < 0x80 {
        (b0 as u32, 1)
    } else if b0 < 0xE0 {
        (((b0 as u32 & 0x1F) << 6) | (text[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        (
            ((b0 as u32 & 0x0F) << 12)
                | ((text[i + 1] as u32 & 0x3F) << 6)
                | (text[i + 2] as u32 & 0x3F),
            3,
        )
    } else {
        (
            ((b0 as u32 & 0x07) << 18)
                | ((text[i + 1] as u32 & 0x3F) << 12)
                | ((text[i + 2] as u32 & 0x3F) << 6)
                | (text[i + 3] as u32 & 0x3F),
            4,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_table_agrees_with_the_regex_tables() {
        let t = build();
        for (cp, &class) in ASCII.iter().enumerate() {
            let from_regex = CharClass::from_u8(t.blocks[t.index[0] as usize][cp]);
            assert_eq!(class, from_regex, "U+{cp:04X}");
        }
    }

    #[test]
    fn classes_of_sample_characters() {
        let cases = [
            ('a', CharClass::Letter),
            ('é', CharClass::Letter),
            ('中', CharClass::Letter),
            ('ß', CharClass::Letter),
            ('٣', CharClass::Number), // Arabic-Indic digit three
            ('Ⅻ', CharClass::Number), // Roman numeral (Nl)
            ('½', CharClass::Number), // No
            ('\u{00A0}', CharClass::Space),
            ('\u{3000}', CharClass::Space),
            ('\u{0085}', CharClass::Space),
            ('\u{200B}', CharClass::Other), // zero-width space is not White_Space
            ('😀', CharClass::Other),
            ('\u{0301}', CharClass::Other), // combining acute accent (Mn)
            ('\u{10FFFF}', CharClass::Other),
        ];
        for (c, want) in cases {
            assert_eq!(class_of(c as u32), want, "{c:?}");
        }
    }

    #[test]
    fn decode_matches_std() {
        let s = "aé中😀\u{10FFFF}";
        let mut i = 0;
        for c in s.chars() {
            let (cp, len) = decode_at(s.as_bytes(), i);
            assert_eq!((cp, len), (c as u32, c.len_utf8()));
            i += len;
        }
    }

    #[test]
    fn table_is_compact() {
        let t = table();
        assert!(t.blocks.len() < 1024, "{} blocks", t.blocks.len());
    }
}
