//! The Hugging Face tokenizer pipeline, for the components ferrolm implements:
//! added tokens -> normalizer -> pre-tokenizer -> model -> post-processor, and back through the
//! decoder. Each stage is a closed enum holding exactly what `tokenizer.json` can say and
//! ferrolm runs; anything else is refused when the file is read (`formats::hf_json`).
//!
//! Semantics follow `tokenizers` 0.2x; the tests compare ids with it on real text.

use crate::tokenizer::added::{AddedTokens, Segment};
use crate::tokenizer::bert::{self, BertNormalizer};
use crate::tokenizer::wordpiece::WordPiece;
use crate::{Error, Result};

/// Text normalization.
#[derive(Debug, Clone)]
pub enum Normalizer {
    Bert(BertNormalizer),
}

/// Splitting normalized text into words.
#[derive(Debug, Clone, Copy)]
pub enum PreTokenizer {
    Bert,
}

/// The model that turns a word into ids.
#[derive(Debug, Clone)]
pub enum Model {
    WordPiece(WordPiece),
}

/// Turning tokens back into text.
#[derive(Debug, Clone)]
pub enum Decoder {
    /// Continuation tokens lose their prefix and join the previous token; others are preceded
    /// by a space; `cleanup` removes the space before punctuation and contractions.
    WordPiece { prefix: String, cleanup: bool },
}

/// One item of a post-processing template for a single sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateItem {
    /// Special tokens' ids, inserted as they are.
    Special(Vec<u32>),
    /// The encoded text.
    Sequence,
}

/// A tokenizer as Hugging Face `tokenizers` describes it.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    pub(crate) normalizer: Option<Normalizer>,
    pub(crate) pre_tokenizer: Option<PreTokenizer>,
    pub(crate) model: Model,
    pub(crate) added: AddedTokens,
    pub(crate) template: Option<Vec<TemplateItem>>,
    pub(crate) decoder: Option<Decoder>,
}

const CLEANUPS: [(&str, &str); 11] = [
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" do not", " don't"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
];

impl HfTokenizer {
    fn encode_words(&self, text: &str, out: &mut Vec<u32>) {
        let Model::WordPiece(wp) = &self.model;
        match self.pre_tokenizer {
            Some(PreTokenizer::Bert) => bert::pre_tokenize(text, |a, b| {
                wp.encode_word(&text[a..b], out);
            }),
            None => wp.encode_word(text, out),
        }
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>, norm: &mut String) {
        let normalized: &str = match &self.normalizer {
            Some(Normalizer::Bert(n)) => {
                norm.clear();
                n.normalize(text, norm);
                norm
            }
            None => text,
        };
        if self.added.has_normalized() {
            let mut segs = Vec::new();
            self.added.split_normalized(normalized, &mut segs);
            for seg in segs {
                match seg {
                    Segment::Token(id) => out.push(id),
                    Segment::Text(a, b) => self.encode_words(&normalized[a..b], out),
                }
            }
        } else {
            self.encode_words(normalized, out);
        }
    }

    /// The ids of `text`; with `add_special_tokens`, wrapped by the post-processor's template
    /// (`[CLS] ... [SEP]` for BERT).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<u32> {
        let mut body = Vec::with_capacity(text.len() / 4 + 2);
        let mut segs = Vec::new();
        let mut norm = String::new();
        self.added.split_raw(text, &mut segs);
        for seg in segs {
            match seg {
                Segment::Token(id) => body.push(id),
                Segment::Text(a, b) => self.encode_plain(&text[a..b], &mut body, &mut norm),
            }
        }
        if add_special_tokens {
            self.apply_template(body)
        } else {
            body
        }
    }

    /// `body` wrapped by the template's special tokens (unchanged without a template).
    pub fn apply_template(&self, body: Vec<u32>) -> Vec<u32> {
        let Some(items) = &self.template else {
            return body;
        };
        let mut out = Vec::with_capacity(body.len() + 4);
        for item in items {
            match item {
                TemplateItem::Special(ids) => out.extend_from_slice(ids),
                TemplateItem::Sequence => out.extend_from_slice(&body),
            }
        }
        out
    }

    /// The number of ids the template adds around one sequence.
    pub fn num_special_tokens_to_add(&self) -> usize {
        self.template.as_ref().map_or(0, |items| {
            items
                .iter()
                .map(|i| match i {
                    TemplateItem::Special(ids) => ids.len(),
                    TemplateItem::Sequence => 0,
                })
                .sum()
        })
    }

    /// The token string of `id` (an added token's text, or the model's token).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        if let Some(t) = self.added.by_id(id) {
            return Some(&t.content);
        }
        let Model::WordPiece(wp) = &self.model;
        wp.token(id)
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        if let Some(t) = self.added.by_content(token) {
            return Some(t.id);
        }
        let Model::WordPiece(wp) = &self.model;
        wp.id(token)
    }

    /// One more than the largest id, added tokens included.
    pub fn vocab_size(&self) -> usize {
        let Model::WordPiece(wp) = &self.model;
        let added = self
            .added
            .iter()
            .map(|t| t.id as usize + 1)
            .max()
            .unwrap_or(0);
        wp.id_bound().max(added)
    }

    /// `(text, id)` of the added tokens marked special.
    pub fn special_tokens(&self) -> impl Iterator<Item = (&str, u32)> {
        self.added
            .iter()
            .filter(|t| t.special)
            .map(|t| (t.content.as_str(), t.id))
    }

    /// True when `id` is a special added token.
    pub fn is_special(&self, id: u32) -> bool {
        self.added.by_id(id).is_some_and(|t| t.special)
    }

    /// The text of `ids`. An id that is no token is an error naming it.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut tokens = Vec::with_capacity(ids.len());
        for &id in ids {
            let tok = self.id_to_token(id).ok_or_else(|| {
                Error::OutOfRange(format!(
                    "token id {id} is not in the vocabulary (ids go up to {})",
                    self.vocab_size().saturating_sub(1)
                ))
            })?;
            if skip_special && self.is_special(id) {
                continue;
            }
            tokens.push(tok);
        }
        Ok(match &self.decoder {
            Some(Decoder::WordPiece { prefix, cleanup }) => {
                let mut out = String::with_capacity(ids.len() * 6);
                let mut piece = String::new();
                for (i, tok) in tokens.iter().enumerate() {
                    piece.clear();
                    match tok.strip_prefix(prefix.as_str()) {
                        Some(rest) if i != 0 && !prefix.is_empty() => piece.push_str(rest),
                        _ if i != 0 => {
                            piece.push(' ');
                            piece.push_str(tok);
                        }
                        _ => piece.push_str(tok),
                    }
                    if *cleanup {
                        let mut cleaned = piece.clone();
                        for (from, to) in CLEANUPS {
                            if cleaned.contains(from) {
                                cleaned = cleaned.replace(from, to);
                            }
                        }
                        out.push_str(&cleaned);
                    } else {
                        out.push_str(&piece);
                    }
                }
                out
            }
            None => tokens.join(" "),
        })
    }
}
