//! The Hugging Face tokenizer pipeline, for the components ferrolm implements:
//! added tokens -> normalizer -> pre-tokenizer -> model -> post-processor, and back through the
//! decoder. Each stage is a closed enum holding exactly what `tokenizer.json` can say and
//! ferrolm runs; anything else is refused when the file is read (`formats::hf_json`).
//!
//! Semantics follow `tokenizers` 0.2x; the tests compare ids with it on real text.

use std::borrow::Cow;

use crate::tokenizer::added::{AddedTokens, Segment};
use crate::tokenizer::bert::{self, BertNormalizer};
use crate::tokenizer::bpe::{Bpe, Scratch};
use crate::tokenizer::byte_bpe::with_scratch;
use crate::tokenizer::byte_level;
use crate::tokenizer::split::Splitter;
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
    /// GPT-2's byte-level pre-tokenizer: a space before text that does not start with one
    /// (`add_prefix_space`), then GPT-2's split pattern (`use_regex`). The byte-to-character
    /// mapping is implicit: ferrolm's BPE works on bytes directly.
    ByteLevel {
        add_prefix_space: bool,
        use_regex: bool,
    },
}

/// The model that turns a word into ids.
#[derive(Debug, Clone)]
pub enum Model {
    WordPiece(WordPiece),
    /// Byte-level BPE (its tokens are bytes; `tokenizer.json` writes them as byte-level
    /// characters).
    Bpe(Box<Bpe>),
}

/// The bytes a token stands for under the ByteLevel decoder, as tokenizers reads them: a token
/// whose every character stands for a byte gives those bytes; any other (an added token written
/// in plain text) its own UTF-8.
pub(crate) fn push_byte_level(tok: &str, out: &mut Vec<u8>) {
    match byte_level::string_to_bytes(tok) {
        Some(b) => out.extend_from_slice(&b),
        None => out.extend_from_slice(tok.as_bytes()),
    }
}

impl Model {
    /// The id of a model token, written as the file writes it (byte-level characters for BPE).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match self {
            Model::WordPiece(wp) => wp.id(token),
            Model::Bpe(bpe) => bpe.token_id(&byte_level::string_to_bytes(token)?),
        }
    }
}

/// Turning tokens back into text.
#[derive(Debug, Clone)]
pub enum Decoder {
    /// Continuation tokens lose their prefix and join the previous token; others are preceded
    /// by a space; `cleanup` removes the space before punctuation and contractions.
    WordPiece { prefix: String, cleanup: bool },
    /// The tokens' bytes, concatenated, read as UTF-8 (invalid sequences become U+FFFD).
    ByteLevel,
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
    fn encode_words(&self, text: &str, out: &mut Vec<u32>, scratch: &mut Scratch) {
        match (&self.model, self.pre_tokenizer) {
            (Model::WordPiece(wp), Some(PreTokenizer::Bert)) => {
                bert::pre_tokenize(text, |a, b| wp.encode_word(&text[a..b], out));
            }
            (
                Model::WordPiece(wp),
                Some(PreTokenizer::ByteLevel {
                    use_regex: true, ..
                }),
            ) => {
                Splitter::Gpt2.split(text, |a, b| wp.encode_word(&text[a..b], out));
            }
            (Model::WordPiece(wp), _) => wp.encode_word(text, out),
            (Model::Bpe(bpe), pre) => {
                let bytes = text.as_bytes();
                let mut piece = |a: usize, b: usize| bpe.encode_piece(bytes, a, b, out, scratch);
                match pre {
                    Some(PreTokenizer::Bert) => bert::pre_tokenize(text, &mut piece),
                    Some(PreTokenizer::ByteLevel {
                        use_regex: true, ..
                    }) => {
                        Splitter::Gpt2.split(text, &mut piece);
                    }
                    _ => piece(0, bytes.len()),
                }
            }
        }
    }

    fn encode_plain(
        &self,
        text: &str,
        out: &mut Vec<u32>,
        norm: &mut String,
        scratch: &mut Scratch,
    ) {
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
                    Segment::Text(a, b) => self.pre_and_model(&normalized[a..b], out, scratch),
                }
            }
        } else {
            self.pre_and_model(normalized, out, scratch);
        }
    }

    /// The pre-tokenizer's per-segment step (ByteLevel's prefix space), then the words.
    fn pre_and_model(&self, text: &str, out: &mut Vec<u32>, scratch: &mut Scratch) {
        match self.pre_tokenizer {
            Some(PreTokenizer::ByteLevel {
                add_prefix_space: true,
                ..
            }) if !text.is_empty() && !text.starts_with(' ') => {
                let spaced = format!(" {text}");
                self.encode_words(&spaced, out, scratch);
            }
            _ => self.encode_words(text, out, scratch),
        }
    }

    /// The ids of `text`; with `add_special_tokens`, wrapped by the post-processor's template
    /// (`[CLS] ... [SEP]` for BERT).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<u32> {
        let mut body = Vec::with_capacity(text.len() / 4 + 2);
        let mut segs = Vec::new();
        let mut norm = String::new();
        self.added.split_raw(text, &mut segs);
        with_scratch(|scratch| {
            for seg in segs {
                match seg {
                    Segment::Token(id) => body.push(id),
                    Segment::Text(a, b) => {
                        self.encode_plain(&text[a..b], &mut body, &mut norm, scratch);
                    }
                }
            }
        });
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

    /// The token string of `id`: an added token's text, or the model's token (byte-level
    /// characters for BPE, e.g. `"Ġworld"`).
    pub fn id_to_token(&self, id: u32) -> Option<Cow<'_, str>> {
        if let Some(t) = self.added.by_id(id) {
            return Some(Cow::Borrowed(&t.content));
        }
        match &self.model {
            Model::WordPiece(wp) => wp.token(id).map(Cow::Borrowed),
            Model::Bpe(bpe) => bpe
                .token_bytes(id)
                .map(|b| Cow::Owned(byte_level::bytes_to_string(b))),
        }
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        if let Some(t) = self.added.by_content(token) {
            return Some(t.id);
        }
        self.model.token_id(token)
    }

    /// The raw bytes of token `id`: a BPE token's bytes, else the token's text.
    pub fn id_to_bytes(&self, id: u32) -> Option<Vec<u8>> {
        if self.added.by_id(id).is_none() {
            if let Model::Bpe(bpe) = &self.model {
                return bpe.token_bytes(id).map(<[u8]>::to_vec);
            }
        }
        self.id_to_token(id).map(|t| t.as_bytes().to_vec())
    }

    /// One more than the largest id, added tokens included.
    pub fn vocab_size(&self) -> usize {
        let model = match &self.model {
            Model::WordPiece(wp) => wp.id_bound(),
            Model::Bpe(bpe) => bpe.id_bound(),
        };
        let added = self
            .added
            .iter()
            .map(|t| t.id as usize + 1)
            .max()
            .unwrap_or(0);
        model.max(added)
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
            Some(Decoder::ByteLevel) => {
                let mut bytes = Vec::with_capacity(tokens.len() * 4);
                for tok in &tokens {
                    push_byte_level(tok, &mut bytes);
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
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
