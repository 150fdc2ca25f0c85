//! Tokenization: text to token ids and back.
//!
//! Two families, behind one [`Tokenizer`]:
//! - [`byte_bpe::BpeTokenizer`]: byte-level BPE run as tiktoken runs it (rank files, split
//!   patterns, tiktoken's special-token rules);
//! - [`pipeline::HfTokenizer`]: the Hugging Face pipeline (added tokens, normalizer,
//!   pre-tokenizer, model, post-processor, decoder) for the components ferrolm implements:
//!   WordPiece (BERT) and byte-level BPE (GPT-2 `tokenizer.json`, `vocab.json` + `merges.txt`)
//!   so far.
//!
//! File formats live in [`formats`], apart from the algorithms. Tokenizers are immutable once
//! built: share them across threads freely.

pub mod added;
pub mod bert;
pub mod bpe;
pub mod byte_bpe;
pub mod byte_level;
pub mod chat;
pub mod formats;
pub mod piece_table;
pub mod pipeline;
pub mod split;
pub mod stream;
pub mod train;
pub mod unicode;
pub mod wordpiece;

pub use byte_bpe::{Allowed, BpeTokenizer};
pub use pipeline::HfTokenizer;

use crate::tokenizer::added::{AddedToken, AddedTokens};
use crate::tokenizer::bert::BertNormalizer;
use crate::tokenizer::pipeline::{
    Decoder, Model, Normalizer, PairItem, PreTokenizer, TemplateItem,
};
use crate::tokenizer::wordpiece::WordPiece;
use crate::Result;

/// Any tokenizer ferrolm runs.
#[derive(Debug, Clone)]
pub enum Tokenizer {
    Bpe(Box<BpeTokenizer>),
    Hf(Box<HfTokenizer>),
}

/// BERT's special tokens, in the order bert-base vocabularies list them.
const BERT_SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

impl Tokenizer {
    /// A byte-level BPE tokenizer from a tiktoken rank file's contents.
    pub fn from_tiktoken_bytes(
        what: &str,
        data: &[u8],
        pattern: &str,
        special_tokens: Vec<(String, u32)>,
    ) -> Result<Self> {
        BpeTokenizer::from_tiktoken_bytes(what, data, pattern, special_tokens)
            .map(|t| Tokenizer::Bpe(Box::new(t)))
    }

    /// A tokenizer from a Hugging Face tokenizer.json file's contents.
    pub fn from_hf_json(what: &str, data: &[u8]) -> Result<Self> {
        formats::hf_json::parse(what, data).map(|t| Tokenizer::Hf(Box::new(t)))
    }

    /// The tokenizer a GGUF file's `tokenizer.ggml.*` metadata describes.
    pub fn from_gguf(g: &crate::io::gguf::Gguf) -> Result<Self> {
        let doc = formats::gguf::to_hf_json(g)?;
        let data = serde_json::to_vec(&doc)
            .map_err(|e| crate::Error::Internal(format!("tokenizer document: {e}")))?;
        Self::from_hf_json(&g.what(), &data)
    }

    /// A byte-level BPE tokenizer from GPT-2's `vocab.json` and `merges.txt` contents.
    pub fn from_gpt2_files(what: &str, vocab_json: &[u8], merges_txt: &[u8]) -> Result<Self> {
        formats::gpt2_files::parse(what, vocab_json, merges_txt).map(|t| Tokenizer::Hf(Box::new(t)))
    }

    /// A BERT WordPiece tokenizer from a vocab.txt file's contents, configured as Hugging Face's
    /// `BertTokenizerFast` configures it: BertNormalizer (`lowercase` as given, accents stripped
    /// when lowercasing), BertPreTokenizer, `[CLS] ... [SEP]`, the five special tokens.
    pub fn bert_from_vocab(what: &str, data: &[u8], lowercase: bool) -> Result<Self> {
        let vocab = formats::vocab_txt::parse(what, data)?;
        let model = WordPiece::new(what, vocab, "[UNK]", "##", 100)?;
        let mut added = Vec::new();
        for name in BERT_SPECIALS {
            if let Some(id) = model.id(name) {
                added.push(AddedToken {
                    content: name.to_owned(),
                    id,
                    special: true,
                    lstrip: false,
                    rstrip: false,
                    normalized: false,
                    single_word: false,
                });
            }
        }
        let id_of = |name: &str| {
            model.id(name).ok_or_else(|| {
                crate::Error::format(what, format!("the vocabulary has no {name} token"))
            })
        };
        let (cls, sep) = (id_of("[CLS]")?, id_of("[SEP]")?);
        let template = vec![
            TemplateItem::Special(vec![cls]),
            TemplateItem::Sequence,
            TemplateItem::Special(vec![sep]),
        ];
        let pair = vec![
            PairItem::Special(vec![cls], 0),
            PairItem::A(0),
            PairItem::Special(vec![sep], 0),
            PairItem::B(1),
            PairItem::Special(vec![sep], 1),
        ];
        Ok(Tokenizer::Hf(Box::new(HfTokenizer {
            normalizer: Some(Normalizer::Bert(BertNormalizer {
                lowercase,
                ..BertNormalizer::default()
            })),
            pre_tokenizer: vec![PreTokenizer::Bert],
            model: Model::WordPiece(model),
            added: AddedTokens::new(added)?,
            template: Some(template),
            pair_template: Some(pair),
            decoder: Some(Decoder::WordPiece {
                prefix: "##".to_owned(),
                cleanup: true,
            }),
        })))
    }

    /// `"bpe"` or `"wordpiece"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Tokenizer::Bpe(_) => "bpe",
            Tokenizer::Hf(t) => match t.model {
                Model::Bpe(_) => "bpe",
                Model::WordPiece(_) => "wordpiece",
            },
        }
    }

    /// The ids of `text`. `allowed` says which special-token texts a BPE tokenizer encodes as
    /// special ids (tiktoken's rule); a Hugging Face tokenizer always matches its added tokens
    /// and adds its template's tokens when `add_special_tokens`.
    pub fn encode(&self, text: &str, add_special_tokens: bool, allowed: Allowed<'_>) -> Vec<u32> {
        match self {
            Tokenizer::Bpe(t) => t.encode(text, allowed),
            Tokenizer::Hf(t) => t.encode(text, add_special_tokens),
        }
    }

    /// `encode` that also gives each id's span in `text` as character offsets (counted in
    /// Unicode scalar values, as Python indexes a `str`): a token made of part of a character's
    /// bytes spans that whole character; tokens a template adds get `(0, 0)`.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
        allowed: Allowed<'_>,
    ) -> (Vec<u32>, Vec<(usize, usize)>) {
        let (ids, byte_offsets) = match self {
            Tokenizer::Bpe(t) => t.encode_with_offsets(text, allowed),
            Tokenizer::Hf(t) => t.encode_with_offsets(text, add_special_tokens),
        };
        // starts[b]: how many characters start before byte b.
        let mut starts = Vec::with_capacity(text.len() + 1);
        let mut count = 0_usize;
        for byte in text.bytes() {
            starts.push(count);
            if (byte & 0xC0) != 0x80 {
                count += 1;
            }
        }
        starts.push(count);
        let bytes = text.as_bytes();
        let mid_char = |b: usize| b < bytes.len() && (bytes[b] & 0xC0) == 0x80;
        let offsets = byte_offsets
            .into_iter()
            .map(|(s, e)| {
                if s == e {
                    return (starts[s], starts[s]);
                }
                // A start inside a character counts from that character; an end inside one
                // includes it.
                let cs = starts[s] - usize::from(mid_char(s));
                (cs, starts[e])
            })
            .collect();
        (ids, offsets)
    }

    /// For BPE: the first special token in `text` that `allowed` does not name. Always `None`
    /// for Hugging Face tokenizers, which have no such check.
    pub fn find_special_not_in<'t>(&self, text: &'t str, allowed: Allowed<'_>) -> Option<&'t str> {
        match self {
            Tokenizer::Bpe(t) => t.find_special_not_in(text, allowed),
            Tokenizer::Hf(_) => None,
        }
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        match self {
            Tokenizer::Bpe(t) => t.decode(ids, skip_special),
            Tokenizer::Hf(t) => t.decode(ids, skip_special),
        }
    }

    /// The raw bytes of `ids` (BPE: the tokens' bytes; others: the decoded text's UTF-8).
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Result<Vec<u8>> {
        match self {
            Tokenizer::Bpe(t) => t.decode_bytes(ids, skip_special),
            Tokenizer::Hf(t) => t.decode(ids, skip_special).map(String::into_bytes),
        }
    }

    /// The token string of `id` (byte-level characters for BPE, e.g. `"Ġworld"`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match self {
            Tokenizer::Bpe(t) => t.id_to_token(id),
            Tokenizer::Hf(t) => t.id_to_token(id).map(std::borrow::Cow::into_owned),
        }
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            Tokenizer::Bpe(t) => t.token_to_id(token),
            Tokenizer::Hf(t) => t.token_to_id(token),
        }
    }

    /// The raw bytes of one token.
    pub fn id_to_bytes(&self, id: u32) -> Option<Vec<u8>> {
        match self {
            Tokenizer::Bpe(t) => t.id_to_bytes(id),
            Tokenizer::Hf(t) => t.id_to_bytes(id),
        }
    }

    /// One more than the largest id, special tokens included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Bpe(t) => t.vocab_size(),
            Tokenizer::Hf(t) => t.vocab_size(),
        }
    }

    /// `(text, id)` of the special tokens.
    pub fn special_tokens(&self) -> Vec<(String, u32)> {
        match self {
            Tokenizer::Bpe(t) => t
                .specials()
                .iter()
                .map(|(n, i)| (n.to_owned(), i))
                .collect(),
            Tokenizer::Hf(t) => t.special_tokens().map(|(n, i)| (n.to_owned(), i)).collect(),
        }
    }

    /// The id of the special token `name`.
    pub fn special_id(&self, name: &str) -> Option<u32> {
        match self {
            Tokenizer::Bpe(t) => t.specials().id(name),
            Tokenizer::Hf(t) => t.special_tokens().find(|(n, _)| *n == name).map(|(_, i)| i),
        }
    }

    /// `ids` wrapped by the post-processor's template (unchanged without one).
    pub fn post_process(&self, ids: &[u32]) -> Vec<u32> {
        match self {
            Tokenizer::Bpe(_) => ids.to_vec(),
            Tokenizer::Hf(t) => t.apply_template(ids.to_vec()),
        }
    }

    /// `a` and `b` joined as a pair (`[CLS] a [SEP] b [SEP]` for BERT; one after the other
    /// for BPE): the ids and their type ids.
    pub fn post_process_pair(&self, a: &[u32], b: &[u32]) -> (Vec<u32>, Vec<u32>) {
        match self {
            Tokenizer::Bpe(_) => {
                let ids = [a, b].concat();
                let types = vec![0; ids.len()];
                (ids, types)
            }
            Tokenizer::Hf(t) => t.apply_pair_template(a, b),
        }
    }

    /// How many ids a pair's template adds.
    pub fn num_special_tokens_to_add_pair(&self) -> usize {
        match self {
            Tokenizer::Bpe(_) => 0,
            Tokenizer::Hf(t) => t.num_special_tokens_to_add_pair(),
        }
    }

    /// How many ids `encode(..., add_special_tokens=true)` adds around a text.
    pub fn num_special_tokens_to_add(&self) -> usize {
        match self {
            Tokenizer::Bpe(_) => 0,
            Tokenizer::Hf(t) => t.num_special_tokens_to_add(),
        }
    }
}
