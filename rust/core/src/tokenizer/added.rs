//! Added tokens, matched in the text before the model sees it, as Hugging Face `tokenizers`
//! does (`added_tokens` in tokenizer.json): tokens with `normalized: false` are found in the raw
//! text, those with `normalized: true` in the normalized text; the longest match wins at the
//! leftmost position; `lstrip` / `rstrip` make a match swallow the white space before / after it.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

use crate::{Error, Result};

/// One added token and its matching flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedToken {
    pub content: String,
    pub id: u32,
    pub special: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    pub normalized: bool,
    pub single_word: bool,
}

/// A part of the text: plain text to tokenize (a byte range), or an added token's id with the
/// byte range it matched (white space it strips included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Text(usize, usize),
    Token(u32, usize, usize),
}

#[derive(Debug, Clone)]
struct Matcher {
    ac: AhoCorasick,
    /// Index into `AddedTokens::tokens` of each pattern.
    which: Vec<usize>,
}

impl Matcher {
    fn new(tokens: &[AddedToken], normalized: bool) -> Result<Option<Self>> {
        let which: Vec<usize> = (0..tokens.len())
            .filter(|&i| tokens[i].normalized == normalized)
            .collect();
        if which.is_empty() {
            return Ok(None);
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            // The DFA the builder would pick for a few patterns costs the square of a long
            // pattern's length to build (a 64 KB token: 14 s); this NFA is linear.
            .kind(Some(AhoCorasickKind::ContiguousNFA))
            .build(which.iter().map(|&i| tokens[i].content.as_str()))
            .map_err(|e| Error::Internal(format!("added-token matcher: {e}")))?;
        Ok(Some(Matcher { ac, which }))
    }
}

/// The added tokens of a tokenizer.
#[derive(Debug, Clone)]
pub struct AddedTokens {
    tokens: Vec<AddedToken>,
    raw: Option<Matcher>,
    normalized: Option<Matcher>,
}

impl AddedTokens {
    /// Builds the matchers. `single_word` tokens are refused (not implemented), as is an
    /// empty token.
    pub fn new(tokens: Vec<AddedToken>) -> Result<Self> {
        for t in &tokens {
            if t.content.is_empty() {
                return Err(Error::format(
                    "added_tokens",
                    format!("id {} is empty", t.id),
                ));
            }
            if t.single_word {
                return Err(Error::Unsupported(format!(
                    "added token {:?} with `single_word: true`",
                    t.content
                )));
            }
        }
        Ok(AddedTokens {
            raw: Matcher::new(&tokens, false)?,
            normalized: Matcher::new(&tokens, true)?,
            tokens,
        })
    }

    /// All added tokens.
    pub fn iter(&self) -> impl Iterator<Item = &AddedToken> {
        self.tokens.iter()
    }

    /// The added token with this id.
    pub fn by_id(&self, id: u32) -> Option<&AddedToken> {
        self.tokens.iter().find(|t| t.id == id)
    }

    /// The added token with this text.
    pub fn by_content(&self, content: &str) -> Option<&AddedToken> {
        self.tokens.iter().find(|t| t.content == content)
    }

    /// Splits `text` around the tokens matched in raw text (`normalized == false`).
    pub fn split_raw(&self, text: &str, out: &mut Vec<Segment>) {
        self.split(self.raw.as_ref(), text, out);
    }

    /// Splits normalized `text` around the tokens matched in normalized text.
    pub fn split_normalized(&self, text: &str, out: &mut Vec<Segment>) {
        self.split(self.normalized.as_ref(), text, out);
    }

    /// True when some tokens are matched in normalized text.
    pub fn has_normalized(&self) -> bool {
        self.normalized.is_some()
    }

    fn split(&self, matcher: Option<&Matcher>, text: &str, out: &mut Vec<Segment>) {
        let Some(m) = matcher else {
            if !text.is_empty() {
                out.push(Segment::Text(0, text.len()));
            }
            return;
        };
        let mut last = 0;
        for found in m.ac.find_iter(text) {
            let tok = &self.tokens[m.which[found.pattern().as_usize()]];
            let (mut start, mut end) = (found.start(), found.end());
            if start < last {
                continue;
            }
            if tok.lstrip {
                let before = text[last..start].trim_end_matches(char::is_whitespace);
                start = last + before.len();
            }
            if tok.rstrip {
                let after = text[end..].trim_start_matches(char::is_whitespace);
                end = text.len() - after.len();
            }
            if start > last {
                out.push(Segment::Text(last, start));
            }
            out.push(Segment::Token(tok.id, start, end));
            last = end;
        }
        if last < text.len() {
            out.push(Segment::Text(last, text.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(content: &str, id: u32, normalized: bool) -> AddedToken {
        AddedToken {
            content: content.into(),
            id,
            special: true,
            lstrip: false,
            rstrip: false,
            normalized,
            single_word: false,
        }
    }

    #[test]
    fn splits_around_raw_tokens_longest_first() {
        let added =
            AddedTokens::new(vec![tok("[CLS]", 1, false), tok("[CLS]x", 2, false)]).unwrap();
        let mut out = vec![];
        added.split_raw("a[CLS]x b[CLS]", &mut out);
        assert_eq!(
            out,
            vec![
                Segment::Text(0, 1),
                Segment::Token(2, 1, 7),
                Segment::Text(7, 9),
                Segment::Token(1, 9, 14)
            ]
        );
    }

    #[test]
    fn strip_flags_take_the_surrounding_space() {
        let mut mask = tok("<mask>", 5, false);
        mask.lstrip = true;
        mask.rstrip = true;
        let added = AddedTokens::new(vec![mask]).unwrap();
        let mut out = vec![];
        added.split_raw("a  <mask>  b", &mut out);
        assert_eq!(
            out,
            vec![
                Segment::Text(0, 1),
                Segment::Token(5, 1, 11),
                Segment::Text(11, 12)
            ]
        );
    }

    #[test]
    fn single_word_is_refused() {
        let mut t = tok("x", 1, false);
        t.single_word = true;
        assert!(AddedTokens::new(vec![t])
            .unwrap_err()
            .to_string()
            .contains("single_word"));
    }
}
