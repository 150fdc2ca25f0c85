//! BERT's text clean-up and word splitting, as Hugging Face `tokenizers` defines them
//! (`BertNormalizer`, `BertPreTokenizer`), character for character.
//!
//! The Unicode categories come from the `unicode_categories` crate, the same tables
//! `tokenizers` uses (they predate recent Unicode versions: a character assigned since counts as
//! unassigned, "other", and is removed by `clean_text`, exactly as in `tokenizers`).

use unicode_categories::UnicodeCategories;
use unicode_normalization::UnicodeNormalization;

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
    /// Appends the normalized `text` to `out`.
    pub fn normalize(&self, text: &str, out: &mut String) {
        let strip = self.strip_accents.unwrap_or(self.lowercase);
        if text.is_ascii() {
            // ASCII: NFD is the identity and there are no marks or ideographs.
            out.reserve(text.len());
            for b in text.bytes() {
                let c = b as char;
                if self.clean_text {
                    if b == 0 || (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7F {
                        continue;
                    }
                    if is_whitespace(c) {
                        out.push(' ');
                        continue;
                    }
                }
                out.push(if self.lowercase {
                    c.to_ascii_lowercase()
                } else {
                    c
                });
            }
            return;
        }
        let mut stage = String::with_capacity(text.len() + 8);
        for c in text.chars() {
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
                stage.push(' ');
                stage.push(c);
                stage.push(' ');
            } else {
                stage.push(c);
            }
        }
        let push_cased = |out: &mut String, c: char| {
            if self.lowercase {
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
        };
        if strip {
            for c in stage.nfd() {
                if !c.is_mark_nonspacing() {
                    push_cased(out, c);
                }
            }
        } else {
            for c in stage.chars() {
                push_cased(out, c);
            }
        }
    }
}

/// `BertPreTokenizer`: splits on white space (dropped) and around each punctuation character
/// (kept as a word of its own). Calls `emit` with each word's byte range in `text`.
pub fn pre_tokenize(text: &str, mut emit: impl FnMut(usize, usize)) {
    let mut start = None;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                emit(s, i);
            }
        } else if is_punctuation(c) {
            if let Some(s) = start.take() {
                emit(s, i);
            }
            emit(i, i + c.len_utf8());
        } else if start.is_none() {
            start = Some(i);
        }
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
        n.normalize(s, &mut out);
        out
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
