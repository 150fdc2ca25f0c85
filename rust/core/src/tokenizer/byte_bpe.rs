//! The byte-level BPE tokenizer, run as tiktoken runs it:
//! 1. special tokens written in the text are found ([`Specials`]) and, where the caller allows
//!    them, emitted as their ids; the text between them is encoded "ordinarily":
//! 2. the split pattern cuts it into pieces ([`super::split`]),
//! 3. BPE encodes each piece's UTF-8 bytes ([`super::bpe`]).
//!
//! A [`BpeTokenizer`] is immutable once built: share it across threads freely.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use rustc_hash::FxHashMap;

use crate::tokenizer::bpe::{Bpe, Scratch};
use crate::tokenizer::split::Splitter;
use crate::tokenizer::{byte_level, formats};
use crate::{Error, Result};

/// Runs `f` with this thread's encoding scratch space (buffers and merge cache), reused across
/// calls; a fresh one if the thread's is in use (re-entrant call).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
    }
    let mut f = Some(f);
    let done = SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f.take().map(|f| f(&mut s)),
        Err(_) => None,
    });
    match (done, f) {
        (Some(r), _) => r,
        (None, Some(f)) => f(&mut Scratch::default()),
        (None, None) => unreachable!("the closure ran but returned nothing"),
    }
}

/// Which special tokens written in the text are encoded as special ids.
#[derive(Debug, Clone, Copy)]
pub enum Allowed<'a> {
    /// None: special-token text is encoded as ordinary text.
    None,
    /// All of them.
    All,
    /// Those with these ids.
    Only(&'a [u32]),
}

impl Allowed<'_> {
    #[inline]
    fn allows(&self, id: u32) -> bool {
        match self {
            Allowed::None => false,
            Allowed::All => true,
            Allowed::Only(ids) => ids.contains(&id),
        }
    }
}

/// Special tokens: strings that stand for one id each, matched in text before splitting.
#[derive(Debug, Clone)]
pub struct Specials {
    names: Vec<String>,
    ids: Vec<u32>,
    matcher: Option<AhoCorasick>,
}

impl Specials {
    fn new(tokens: Vec<(String, u32)>) -> Result<Self> {
        let mut seen = FxHashMap::default();
        for (name, id) in &tokens {
            if name.is_empty() {
                return Err(Error::invalid("a special token cannot be the empty string"));
            }
            if seen.insert(name.as_str(), *id).is_some() {
                return Err(Error::invalid(format!(
                    "special token {name:?} is given twice"
                )));
            }
        }
        let (names, ids): (Vec<_>, Vec<_>) = tokens.into_iter().unzip();
        let matcher = if names.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    // The DFA the builder would pick for a few patterns costs the square of a long
                    // pattern's length to build (a 64 KB token: 14 s); this NFA is linear.
                    .kind(Some(AhoCorasickKind::ContiguousNFA))
                    .build(&names)
                    .map_err(|e| Error::Internal(format!("special-token matcher: {e}")))?,
            )
        };
        Ok(Specials {
            names,
            ids,
            matcher,
        })
    }

    /// `(name, id)` of every special token.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.names
            .iter()
            .map(String::as_str)
            .zip(self.ids.iter().copied())
    }

    /// The id of the special token `name`.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| self.ids[i])
    }

    fn name_of(&self, id: u32) -> Option<&str> {
        self.ids
            .iter()
            .position(|&i| i == id)
            .map(|k| self.names[k].as_str())
    }

    /// The next special token in `text[from..]`: `(start, end, id)`.
    #[inline]
    fn find(&self, text: &str, from: usize) -> Option<(usize, usize, u32)> {
        let m = self
            .matcher
            .as_ref()?
            .find(aho_corasick::Input::new(text).span(from..text.len()))?;
        Some((m.start(), m.end(), self.ids[m.pattern().as_usize()]))
    }
}

/// A byte-level BPE tokenizer.
#[derive(Debug, Clone)]
pub struct BpeTokenizer {
    bpe: Bpe,
    splitter: Splitter,
    specials: Specials,
}

impl BpeTokenizer {
    /// A tokenizer from tiktoken-style ranks, a split pattern and special tokens.
    /// Special-token ids must not collide with the ranks' ids.
    pub fn from_ranks(
        what: &str,
        ranks: Vec<(Vec<u8>, u32)>,
        pattern: &str,
        special_tokens: Vec<(String, u32)>,
    ) -> Result<Self> {
        let bpe = Bpe::from_ranks(what, ranks)?;
        for (name, id) in &special_tokens {
            if bpe.token_bytes(*id).is_some() {
                return Err(Error::invalid(format!(
                    "special token {name:?} has id {id}, which is already the id of an ordinary token"
                )));
            }
        }
        Ok(BpeTokenizer {
            bpe,
            splitter: Splitter::new(pattern)?,
            specials: Specials::new(special_tokens)?,
        })
    }

    /// Parses a tiktoken rank file's contents and builds the tokenizer.
    pub fn from_tiktoken_bytes(
        what: &str,
        data: &[u8],
        pattern: &str,
        special_tokens: Vec<(String, u32)>,
    ) -> Result<Self> {
        Self::from_ranks(
            what,
            formats::tiktoken::parse(what, data)?,
            pattern,
            special_tokens,
        )
    }

    /// The split pattern.
    pub fn pattern(&self) -> &str {
        self.splitter.pattern()
    }

    /// The special tokens.
    pub fn specials(&self) -> &Specials {
        &self.specials
    }

    /// One more than the largest id, special tokens included (tiktoken's `n_vocab`).
    pub fn vocab_size(&self) -> usize {
        let specials = self
            .specials
            .ids
            .iter()
            .map(|&i| i as usize + 1)
            .max()
            .unwrap_or(0);
        self.bpe.id_bound().max(specials)
    }

    /// Appends the ids of `text`, with no special-token handling, to `out`.
    pub fn encode_ordinary_into(&self, text: &str, out: &mut Vec<u32>, scratch: &mut Scratch) {
        let bytes = text.as_bytes();
        self.splitter.split(text, |a, b| {
            self.bpe.encode_piece(bytes, a, b, out, scratch);
        });
    }

    /// The ids of `text`, with special-token text encoded as ordinary text.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let mut out = crate::runtime::mem::ids_for(text.len());
        with_scratch(|scratch| self.encode_ordinary_into(text, &mut out, scratch));
        crate::runtime::mem::fit_ids(out)
    }

    /// The ids of `text`; the special tokens that `allowed` names become their ids.
    pub fn encode(&self, text: &str, allowed: Allowed<'_>) -> Vec<u32> {
        let mut out = crate::runtime::mem::ids_for(text.len());
        with_scratch(|scratch| self.encode_into(text, allowed, &mut out, scratch));
        crate::runtime::mem::fit_ids(out)
    }

    fn encode_into(
        &self,
        text: &str,
        allowed: Allowed<'_>,
        out: &mut Vec<u32>,
        scratch: &mut Scratch,
    ) {
        if matches!(allowed, Allowed::None) {
            self.encode_ordinary_into(text, out, scratch);
            return;
        }
        let (mut start, mut from) = (0, 0);
        while let Some((s, e, id)) = self.specials.find(text, from) {
            if allowed.allows(id) {
                self.encode_ordinary_into(&text[start..s], out, scratch);
                out.push(id);
                start = e;
                from = e;
            } else {
                from = s + 1;
            }
        }
        self.encode_ordinary_into(&text[start..], out, scratch);
    }

    /// `encode` that also gives each id's byte range in `text`.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        allowed: Allowed<'_>,
    ) -> (Vec<u32>, Vec<(usize, usize)>) {
        let mut ids = Vec::new();
        let mut offsets = Vec::new();
        let bytes = text.as_bytes();
        let plain = |ids: &mut Vec<u32>,
                     offsets: &mut Vec<(usize, usize)>,
                     a: usize,
                     b: usize,
                     scratch: &mut Scratch| {
            self.splitter.split(&text[a..b], |x, y| {
                let before = ids.len();
                self.bpe.encode_piece(bytes, a + x, a + y, ids, scratch);
                let mut at = a + x;
                for &id in &ids[before..] {
                    let len = self.bpe.token_bytes(id).map_or(0, <[u8]>::len);
                    offsets.push((at, at + len));
                    at += len;
                }
            });
        };
        with_scratch(|scratch| {
            let (mut start, mut from) = (0, 0);
            if !matches!(allowed, Allowed::None) {
                while let Some((s, e, id)) = self.specials.find(text, from) {
                    if allowed.allows(id) {
                        plain(&mut ids, &mut offsets, start, s, scratch);
                        ids.push(id);
                        offsets.push((s, e));
                        start = e;
                        from = e;
                    } else {
                        from = s + 1;
                    }
                }
            }
            plain(&mut ids, &mut offsets, start, text.len(), scratch);
        });
        (ids, offsets)
    }

    /// The first special token in `text` that `allowed` does not name, if any: tiktoken's
    /// `disallowed_special` check.
    pub fn find_special_not_in<'t>(&self, text: &'t str, allowed: Allowed<'_>) -> Option<&'t str> {
        let mut from = 0;
        while let Some((s, e, id)) = self.specials.find(text, from) {
            if !allowed.allows(id) {
                return Some(&text[s..e]);
            }
            from = s + 1;
        }
        None
    }

    /// Appends the bytes of token `id` (ordinary or special) to `out`.
    fn push_token_bytes(&self, id: u32, out: &mut Vec<u8>, skip_special: bool) -> Result<()> {
        if let Some(b) = self.bpe.token_bytes(id) {
            out.extend_from_slice(b);
        } else if let Some(name) = self.specials.name_of(id) {
            if !skip_special {
                out.extend_from_slice(name.as_bytes());
            }
        } else {
            return Err(Error::OutOfRange(format!(
                "token id {id} is not in the vocabulary (ids go up to {})",
                self.vocab_size().saturating_sub(1)
            )));
        }
        Ok(())
    }

    /// The bytes that `ids` stand for.
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4 + 16);
        let mut rest = ids;
        // Runs of ordinary tokens go through the BPE's block copy; anything else (a special
        // token, an unknown id) one at a time.
        while !rest.is_empty() {
            match self.bpe.extend_bytes(rest, &mut out) {
                Ok(()) => break,
                Err(k) => {
                    self.push_token_bytes(rest[k], &mut out, skip_special)?;
                    rest = &rest[k + 1..];
                }
            }
        }
        Ok(out)
    }

    /// The text that `ids` stand for; invalid UTF-8 (a sequence cut mid-character) becomes
    /// U+FFFD, as tiktoken's `decode` does.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let bytes = self.decode_bytes(ids, skip_special)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The bytes of one token (ordinary or special).
    pub fn id_to_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.push_token_bytes(id, &mut out, false)
            .ok()
            .map(|()| out)
    }

    /// The token as Hugging Face shows it: byte-level characters (`"Ġworld"`), or the special
    /// token's text.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        if let Some(b) = self.bpe.token_bytes(id) {
            return Some(byte_level::bytes_to_string(b));
        }
        self.specials.name_of(id).map(str::to_owned)
    }

    /// The id of a token written as [`BpeTokenizer::id_to_token`] writes it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        if let Some(id) = self.specials.id(token) {
            return Some(id);
        }
        self.bpe.token_id(&byte_level::string_to_bytes(token)?)
    }

    /// The ordinary tokens as a tiktoken rank file (`<base64> <rank>` lines), from which
    /// [`BpeTokenizer::from_tiktoken_bytes`] rebuilds the same tokenizer.
    pub fn to_tiktoken_bytes(&self) -> Vec<u8> {
        use base64::Engine;
        let mut out = Vec::with_capacity(self.bpe.len() * 12);
        for (id, bytes) in self.bpe.tokens() {
            out.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .as_bytes(),
            );
            out.extend_from_slice(format!(" {id}\n").as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::split::GPT2_PATTERN;

    fn tiny() -> BpeTokenizer {
        let mut ranks: Vec<(Vec<u8>, u32)> = (0..=255_u8).map(|b| (vec![b], b as u32)).collect();
        for (i, t) in [" w", "or", " wor", "ld", " world"].iter().enumerate() {
            ranks.push((t.as_bytes().to_vec(), 256 + i as u32));
        }
        BpeTokenizer::from_ranks(
            "tiny",
            ranks,
            GPT2_PATTERN,
            vec![("<|end|>".into(), 300), ("<|endoftext|>".into(), 301)],
        )
        .unwrap()
    }

    #[test]
    fn encode_decode_round_trip() {
        let t = tiny();
        let ids = t.encode_ordinary("hello world");
        assert_eq!(&ids[ids.len() - 1..], &[260]);
        assert_eq!(t.decode(&ids, false).unwrap(), "hello world");
        assert_eq!(t.vocab_size(), 302);
    }

    #[test]
    fn special_tokens_follow_the_allowed_set() {
        let t = tiny();
        let text = "a<|endoftext|>b<|end|>";
        assert_eq!(t.encode(text, Allowed::All), vec![97, 301, 98, 300]);
        assert_eq!(t.encode(text, Allowed::Only(&[300])).last(), Some(&300));
        assert!(!t.encode(text, Allowed::Only(&[300])).contains(&301));
        assert_eq!(t.encode(text, Allowed::None), t.encode_ordinary(text));
        assert_eq!(
            t.find_special_not_in(text, Allowed::None),
            Some("<|endoftext|>")
        );
        assert_eq!(
            t.find_special_not_in(text, Allowed::Only(&[301])),
            Some("<|end|>")
        );
        assert_eq!(t.find_special_not_in(text, Allowed::All), None);
        assert_eq!(t.decode(&[97, 301], false).unwrap(), "a<|endoftext|>");
        assert_eq!(t.decode(&[97, 301], true).unwrap(), "a");
    }

    #[test]
    fn decode_errors_and_partial_utf8() {
        let t = tiny();
        let e = t.decode(&[5000], false).unwrap_err();
        assert!(
            matches!(e, Error::OutOfRange(ref m) if m.contains("5000")),
            "{e}"
        );
        // 0xE4 0xB8 is a cut-off "中".
        assert_eq!(t.decode(&[0xE4, 0xB8], false).unwrap(), "\u{FFFD}");
        assert_eq!(t.id_to_bytes(0xE4), Some(vec![0xE4]));
    }

    #[test]
    fn token_strings_are_byte_level() {
        let t = tiny();
        assert_eq!(t.id_to_token(260).as_deref(), Some("Ġworld"));
        assert_eq!(t.token_to_id("Ġworld"), Some(260));
        assert_eq!(t.token_to_id("<|end|>"), Some(300));
        assert_eq!(t.token_to_id("nope-not-a-token"), None);
        assert_eq!(t.id_to_token(9999), None);
    }

    #[test]
    fn rank_file_round_trip() {
        let t = tiny();
        let again = BpeTokenizer::from_tiktoken_bytes(
            "again",
            &t.to_tiktoken_bytes(),
            t.pattern(),
            t.specials()
                .iter()
                .map(|(n, i)| (n.to_owned(), i))
                .collect(),
        )
        .unwrap();
        let text = "the world, the wor ld";
        assert_eq!(again.encode_ordinary(text), t.encode_ordinary(text));
    }

    #[test]
    fn bad_special_tokens() {
        let ranks: Vec<(Vec<u8>, u32)> = (0..=255_u8).map(|b| (vec![b], b as u32)).collect();
        let clash =
            BpeTokenizer::from_ranks("t", ranks.clone(), GPT2_PATTERN, vec![("<s>".into(), 5)]);
        assert!(clash.unwrap_err().to_string().contains("already the id"));
        let twice = BpeTokenizer::from_ranks(
            "t",
            ranks,
            GPT2_PATTERN,
            vec![("<s>".into(), 300), ("<s>".into(), 301)],
        );
        assert!(twice.is_err());
    }
}
