//! BERT's text clean-up and word splitting, as Hugging Face `tokenizers` defines them
//! (`BertNormalizer`, `BertPreTokenizer`), character for character.
//!
//! The Unicode categories come from the `unicode_categories` crate, the same tables
//! `tokenizers` uses (they predate recent Unicode versions: a character assigned since counts as
//! unassigned, "other", and is removed by `clean_text`, exactly as in `tokenizers`).

use unicode_categories::UnicodeCategories;

/// `BertNormalizer`'s options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BertNormalizer {
    /// Drop control characters (and NUL, U+FFFD); turn every white space into ' '.
    pub clean_text: bool,
    /// Put spaces around CJK ideographs so each becomes a word.
    pub handle_chinese_chars: bool,
    /// NFD, then drop non-spacing marks. `None`: the same as `lowercase`.
    pub strip_accents: Option<bool>,
    /// Lowercase each character (no context rules such as final sigma).
    pub lowercase: bool,
}

impl Default for BertNormalizer {
    fn default() -> Self {
        BertNormalizer {
            clean_text: true,
            handle_chinese_chars: true,
            strip_accents: None,
            lowercase: true,
        }
    }
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

/// The CJK ideograph blocks BERT splits into single characters.
pub fn is_chinese_char(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// BERT's punctuation: ASCII punctuation or any Unicode `P*` character.
pub fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

impl BertNormalizer {
    /// Appends the normalized `text` to `out`. With `align`, also appends, for each byte
    /// appended to `out`, the byte offset in `text` of the character it comes from (for
    /// character offsets).
    pub fn normalize(&self, text: &str, out: &mut String, mut align: Option<&mut Vec<u32>>) {
        let strip = self.strip_accents.unwrap_or(self.lowercase);
        if text.is_ascii() {
            // ASCII: NFD is the identity and there are no marks or ideographs.
            out.reserve(text.len());
            for (i, b) in text.bytes().enumerate() {
                let c = b as char;
                let c = if self.clean_text
                    && (b == 0 || (b < 0x20 && !is_whitespace(c)) || b == 0x7F)
                {
                    continue;
                } else if self.clean_text && is_whitespace(c) {
                    ' '
                } else if self.lowercase {
                    c.to_ascii_lowercase()
                } else {
                    c
                };
                out.push(c);
                if let Some(a) = align.as_deref_mut() {
                    a.push(i as u32);
                }
            }
            return;
        }
        // Clean-up and CJK spacing, remembering where each character comes from.
        let mut stage: Vec<(char, u32)> = Vec::with_capacity(text.len() + 8);
        for (i, c) in text.char_indices() {
            let i = i as u32;
            let c = if self.clean_text {
                if c == '\0' || c == '\u{FFFD}' || is_control(c) {
                    continue;
                }
                if is_whitespace(c) {
                    ' '
                } else {
                    c
                }
            } else {
                c
            };
            if self.handle_chinese_chars && is_chinese_char(c) {
                stage.extend([(' ', i), (c, i), (' ', i)]);
            } else {
                stage.push((c, i));
            }
        }
        if strip {
            stage = nfd_aligned(&stage);
            stage.retain(|(c, _)| !c.is_mark_nonspacing());
        }
        for (c, i) in stage {
            let before = out.len();
            if self.lowercase {
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
            if let Some(a) = align.as_deref_mut() {
                a.extend(std::iter::repeat_n(i, out.len() - before));
            }
        }
    }
}

/// Canonical decomposition (NFD) that keeps each character's source: decompose every
/// character, then put each run of combining marks in canonical order (a stable sort by
/// combining class), as Unicode's algorithm does.
fn nfd_aligned(chars: &[(char, u32)]) -> Vec<(char, u32)> {
    use unicode_normalization::char::{canonical_combining_class, decompose_canonical};
    let mut out: Vec<(char, u32)> = Vec::with_capacity(chars.len() + 8);
    for &(c, i) in chars {
        decompose_canonical(c, |d| out.push((d, i)));
    }
    let mut k = 0;
    while k < out.len() {
        if canonical_combining_class(out[k].0) == 0 {
            k += 1;
            continue;
        }
        let start = k;
        while k < out.len() && canonical_combining_class(out[k].0) != 0 {
            k += 1;
        }
        out[start..k].sort_by_key(|(c, _)| canonical_combining_class(*c));
    }
    out
}

/// `BertPreTokenizer`: splits on white space (dropped) and around each punctuation character
/// (kept as a word of its own). Calls `emit` with each word's byte range in `text`.
pub fn pre_tokenize(text: &str, mut emit: impl FnMut(usize, usize)) {
    let bytes = text.as_bytes();
    let mut start = None;
    let mut i = 0;
    while i < bytes.len() {
        // ASCII without decoding or Unicode tables (the same classes: white space is
        // 0x09..=0x0D and ' ', punctuation is ASCII punctuation).
        let b = bytes[i];
        if b < 0x80 {
            if matches!(b, b' ' | 0x09..=0x0D) {
                if let Some(s) = start.take() {
                    emit(s, i);
                }
            } else if b.is_ascii_punctuation() {
                if let Some(s) = start.take() {
                    emit(s, i);
                }
                emit(i, i + 1);
            } else if start.is_none() {
                start = Some(i);
            }
            i += 1;
            continue;
        }
        let c = text[i..].chars().next().unwrap_or(' ');
        let len = c.len_utf8();
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                emit(s, i);
            }
        } else if is_punctuation(c) {
            if let Some(s) = start.take() {
                emit(s, i);
            }
            emit(i, i + len);
        } else if start.is_none() {
            start = Some(i);
        }
        i += len;
    }
    if let Some(s) = start {
        emit(s, text.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(n: &BertNormalizer, s: &str) -> String {
        let mut out = String::new();
        let mut align = Vec::new();
        n.normalize(s, &mut out, Some(&mut align));
        assert_eq!(align.len(), out.len());
        let mut plain = String::new();
        n.normalize(s, &mut plain, None);
        assert_eq!(plain, out);
        out
    }

    #[test]
    fn nfd_matches_the_reference_implementation() {
        use unicode_normalization::UnicodeNormalization;
        for s in [
            "e\u{0301}\u{0323}",
            "ệ",
            "a\u{0307}\u{0323}b",
            "Å\u{0328}",
            "한국어",
            "ǅ",
        ] {
            let chars: Vec<(char, u32)> = s.chars().map(|c| (c, 0)).collect();
            let ours: String = nfd_aligned(&chars).iter().map(|(c, _)| *c).collect();
            assert_eq!(ours, s.nfd().collect::<String>(), "{s:?}");
        }
    }

    #[test]
    fn alignment_points_at_source_characters() {
        let n = BertNormalizer::default();
        let mut out = String::new();
        let mut align = Vec::new();
        n.normalize("Ab é野", &mut out, Some(&mut align));
        assert_eq!(out, "ab e 野 ");
        assert_eq!(align, vec![0, 1, 2, 3, 5, 5, 5, 5, 5]);
    }

    fn words(s: &str) -> Vec<&str> {
        let mut out = Vec::new();
        pre_tokenize(s, |a, b| out.push(&s[a..b]));
        out
    }

    #[test]
    fn normalizes_like_bert() {
        let n = BertNormalizer::default();
        assert_eq!(norm(&n, "Héllo\tWORLD\u{0}\u{7}!"), "hello world!");
        assert_eq!(norm(&n, "野口 Noguchi"), " 野  口  noguchi");
        assert_eq!(norm(&n, "Ångström\u{00A0}café"), "angstrom cafe");
        // Lowercasing is per character: no final-sigma rule.
        assert_eq!(norm(&n, "ΟΔΟΣ"), "οδοσ");
        let cased = BertNormalizer {
            lowercase: false,
            ..BertNormalizer::default()
        };
        assert_eq!(norm(&cased, "Café"), "Café");
        assert_eq!(norm(&cased, "ABC\r\n"), "ABC  ");
    }

    #[test]
    fn splits_on_spaces_and_punctuation() {
        assert_eq!(
            words("Hey friend!     How are you?!?"),
            vec!["Hey", "friend", "!", "How", "are", "you", "?", "!", "?"]
        );
        assert_eq!(words("  a¿b—c  "), vec!["a", "¿", "b", "—", "c"]);
        assert_eq!(words(""), Vec::<&str>::new());
        assert_eq!(words("$5"), vec!["$", "5"]);
    }
}
