//! The WordPiece model: each word becomes its longest vocabulary prefix, then the longest
//! `##`-continuation of the rest, and so on; a word with no complete split (or longer than
//! `max_input_chars_per_word` characters) becomes the unknown token. Same result as Hugging
//! Face `tokenizers`' WordPiece.
//!
//! Performance note: `tokenizers` tries every end position from the longest down (quadratic in
//! the word, a hash of a fresh string per try). Here two byte tries (word-start tokens, and
//! continuation tokens without their prefix) give the longest match in one walk, so a word
//! costs time linear in its length times the longest token.

use rustc_hash::FxHashMap;

use crate::{Error, Result};

const NONE: u32 = u32::MAX;

/// A byte trie over token strings, with each complete token's id at its end node.
#[derive(Debug, Clone, Default)]
struct Trie {
    /// `(node << 8) | byte` -> child node.
    edges: FxHashMap<u64, u32>,
    /// The id of the token ending at each node, or `NONE`.
    ends: Vec<u32>,
}

impl Trie {
    fn new() -> Self {
        Trie {
            edges: FxHashMap::default(),
            ends: vec![NONE],
        }
    }

    fn insert(&mut self, token: &[u8], id: u32) {
        let mut node = 0_u32;
        for &b in token {
            let key = (u64::from(node) << 8) | u64::from(b);
            node = match self.edges.get(&key) {
                Some(&child) => child,
                None => {
                    let child = self.ends.len() as u32;
                    self.ends.push(NONE);
                    self.edges.insert(key, child);
                    child
                }
            };
        }
        self.ends[node as usize] = id;
    }

    /// The longest token that `text` starts with: `(length in bytes, id)`.
    #[inline]
    fn longest_prefix(&self, text: &[u8]) -> Option<(usize, u32)> {
        let mut node = 0_u32;
        let mut best = None;
        for (i, &b) in text.iter().enumerate() {
            match self.edges.get(&((u64::from(node) << 8) | u64::from(b))) {
                Some(&child) => node = child,
                None => break,
            }
            let id = self.ends[node as usize];
            if id != NONE {
                best = Some((i + 1, id));
            }
        }
        best
    }
}

/// A WordPiece vocabulary with its settings.
#[derive(Debug, Clone)]
pub struct WordPiece {
    tokens: Vec<String>,
    lookup: FxHashMap<String, u32>,
    starts: Trie,
    continuations: Trie,
    unk_id: u32,
    prefix: String,
    max_chars: usize,
}

impl WordPiece {
    /// A model from `(token, id)` pairs. `what` names the source in errors.
    pub fn new(
        what: &str,
        vocab: Vec<(String, u32)>,
        unk_token: &str,
        prefix: &str,
        max_input_chars_per_word: usize,
    ) -> Result<Self> {
        if vocab.is_empty() {
            return Err(Error::format(what, "the vocabulary is empty"));
        }
        let bound = vocab.iter().map(|(_, id)| *id as usize).max().unwrap_or(0) + 1;
        if bound > 4 * vocab.len() + 1024 {
            return Err(Error::format(
                what,
                format!(
                    "id {} is far beyond the {} tokens given",
                    bound - 1,
                    vocab.len()
                ),
            ));
        }
        let mut tokens = vec![String::new(); bound];
        let mut lookup = FxHashMap::default();
        let mut starts = Trie::new();
        let mut continuations = Trie::new();
        for (tok, id) in vocab {
            if tok.is_empty() {
                return Err(Error::format(what, format!("id {id} is the empty string")));
            }
            if !tokens[id as usize].is_empty() {
                return Err(Error::format(what, format!("id {id} is given twice")));
            }
            if lookup.insert(tok.clone(), id).is_some() {
                return Err(Error::format(what, format!("token {tok:?} appears twice")));
            }
            match tok.strip_prefix(prefix).filter(|_| !prefix.is_empty()) {
                Some(rest) if !rest.is_empty() => continuations.insert(rest.as_bytes(), id),
                _ => {}
            }
            starts.insert(tok.as_bytes(), id);
            tokens[id as usize] = tok;
        }
        let unk_id = *lookup.get(unk_token).ok_or_else(|| {
            Error::format(
                what,
                format!("the unknown token {unk_token:?} is not in the vocabulary"),
            )
        })?;
        Ok(WordPiece {
            tokens,
            lookup,
            starts,
            continuations,
            unk_id,
            prefix: prefix.to_owned(),
            max_chars: max_input_chars_per_word,
        })
    }

    /// Appends the ids of one word (no white space in it) to `out`, and with `spans` the byte
    /// range in `word` that each id covers.
    pub fn encode_word(
        &self,
        word: &str,
        out: &mut Vec<u32>,
        mut spans: Option<&mut Vec<(usize, usize)>>,
    ) {
        if word.is_empty() {
            return;
        }
        let spans_before = spans.as_ref().map_or(0, |s| s.len());
        let n_chars = if word.is_ascii() {
            word.len()
        } else {
            word.chars().count()
        };
        if n_chars > self.max_chars {
            out.push(self.unk_id);
            if let Some(s) = spans {
                s.push((0, word.len()));
            }
            return;
        }
        // Most words are tokens whole: one hash lookup instead of a walk (the longest prefix
        // of a word that is a token is the word itself).
        if let Some(&id) = self.lookup.get(word) {
            out.push(id);
            if let Some(s) = spans {
                s.push((0, word.len()));
            }
            return;
        }
        let before = out.len();
        let bytes = word.as_bytes();
        let mut start = 0;
        while start < bytes.len() {
            let trie = if start == 0 {
                &self.starts
            } else {
                &self.continuations
            };
            match trie.longest_prefix(&bytes[start..]) {
                Some((len, id)) => {
                    out.push(id);
                    if let Some(s) = spans.as_deref_mut() {
                        s.push((start, start + len));
                    }
                    start += len;
                }
                None => {
                    out.truncate(before);
                    out.push(self.unk_id);
                    if let Some(s) = spans {
                        s.truncate(spans_before);
                        s.push((0, word.len()));
                    }
                    return;
                }
            }
        }
    }

    /// One more than the largest id.
    pub fn id_bound(&self) -> usize {
        self.tokens.len()
    }

    /// The token with this id.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens
            .get(id as usize)
            .map(String::as_str)
            .filter(|t| !t.is_empty())
    }

    /// The id of this token.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.lookup.get(token).copied()
    }

    /// The continuing-subword prefix (`##`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> WordPiece {
        let vocab = [
            "[UNK]", "un", "##aff", "##able", "aff", "##a", "##ff", "a", "中", "##中",
        ];
        WordPiece::new(
            "t",
            vocab
                .iter()
                .enumerate()
                .map(|(i, t)| (t.to_string(), i as u32))
                .collect(),
            "[UNK]",
            "##",
            10,
        )
        .unwrap()
    }

    fn enc(m: &WordPiece, w: &str) -> Vec<u32> {
        let mut out = vec![];
        m.encode_word(w, &mut out, None);
        out
    }

    #[test]
    fn greedy_longest_match_first() {
        let m = model();
        assert_eq!(enc(&m, "unaffable"), vec![1, 2, 3]);
        assert_eq!(enc(&m, "affa"), vec![4, 5]);
        assert_eq!(enc(&m, "aff"), vec![4]);
        assert_eq!(enc(&m, "中中"), vec![8, 9]);
        assert_eq!(
            enc(&m, "unx"),
            vec![0],
            "no split: the whole word is unknown"
        );
        assert_eq!(enc(&m, "aaaaaaaaaaa"), vec![0], "more than 10 characters");
        assert_eq!(enc(&m, ""), Vec::<u32>::new());
    }

    #[test]
    fn vocabulary_errors() {
        let dup = vec![
            ("a".to_string(), 0),
            ("a".to_string(), 1),
            ("[UNK]".to_string(), 2),
        ];
        assert!(WordPiece::new("v", dup, "[UNK]", "##", 100).is_err());
        let no_unk = vec![("a".to_string(), 0)];
        let e = WordPiece::new("v", no_unk, "[UNK]", "##", 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown token"), "{e}");
    }
}
