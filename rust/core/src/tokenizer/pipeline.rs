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

/// One step of pre-tokenization: cuts each piece of text into smaller pieces. A tokenizer runs
/// its steps in order (a `Sequence` in tokenizer.json); the pieces of the last step go to the
/// model one by one.
#[derive(Debug, Clone)]
pub enum PreTokenizer {
    /// BERT: split on white space (dropped) and around each punctuation character.
    Bert,
    /// GPT-2's byte-level pre-tokenizer: a space before a piece that does not start with one
    /// (`add_prefix_space`), then GPT-2's split pattern (`use_regex`). The byte-to-character
    /// mapping is implicit: ferrolm's BPE works on bytes directly.
    ByteLevel {
        add_prefix_space: bool,
        use_regex: bool,
    },
    /// `Split` (and `Whitespace`): which of the pattern's matches and the text between them
    /// become pieces.
    Split { splitter: Splitter, keep: SplitKeep },
    /// Digits isolated one by one (`individual`) or in runs.
    Digits { individual: bool },
    /// Split on white space, which is dropped.
    WhitespaceSplit,
}

/// A position map from a piece's text to the segment's (see `HfTokenizer::run_steps`).
type PositionMap<'a> = dyn Fn(usize) -> usize + 'a;
/// Receives each final piece: `(text, start, end, position map)`.
type PieceSink<'a> = dyn FnMut(&str, usize, usize, &PositionMap<'_>) + 'a;

/// What a `Split` step keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitKeep {
    /// Matches and the text between them (`behavior: Isolated`).
    Both,
    /// Only the text between matches (`behavior: Removed`: the matches are delimiters).
    Between,
    /// Only the matches (`Whitespace`: `\w+|[^\w\s]+`, the white space between dropped).
    Matches,
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

/// One item of a post-processing template for a pair of sequences, with its type id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairItem {
    Special(Vec<u32>, u32),
    /// The first sequence.
    A(u32),
    /// The second sequence.
    B(u32),
}

/// A tokenizer as Hugging Face `tokenizers` describes it.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    pub(crate) normalizer: Option<Normalizer>,
    pub(crate) pre_tokenizer: Vec<PreTokenizer>,
    pub(crate) model: Model,
    pub(crate) added: AddedTokens,
    pub(crate) template: Option<Vec<TemplateItem>>,
    /// The pair template; `None`: the two sequences one after the other, type ids 0.
    pub(crate) pair_template: Option<Vec<PairItem>>,
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
    /// Runs the pre-tokenizer steps from `steps` on the piece `base[a..b]`, calling `emit` with
    /// each final piece as `(text, start, end, map)`. A piece is a range of `base`, which is the
    /// segment's text, or a copy with a space prepended (ByteLevel's `add_prefix_space`); `map`
    /// takes a byte position of `base` to the segment's (the prepended space maps to the
    /// position of the character it precedes).
    fn run_steps(
        steps: &[PreTokenizer],
        base: &str,
        a: usize,
        b: usize,
        map: &PositionMap<'_>,
        emit: &mut PieceSink<'_>,
    ) {
        if a == b {
            return;
        }
        let Some((step, rest)) = steps.split_first() else {
            return emit(base, a, b, map);
        };
        if let PreTokenizer::ByteLevel {
            add_prefix_space: true,
            use_regex,
        } = step
        {
            if !base[a..b].starts_with(' ') {
                let spaced = format!(" {}", &base[a..b]);
                let plain = PreTokenizer::ByteLevel {
                    add_prefix_space: false,
                    use_regex: *use_regex,
                };
                let shifted = |x: usize| map(a + x.saturating_sub(1));
                return Self::run_step(&plain, rest, &spaced, 0, spaced.len(), &shifted, emit);
            }
        }
        Self::run_step(step, rest, base, a, b, map, emit);
    }

    fn run_step(
        step: &PreTokenizer,
        rest: &[PreTokenizer],
        base: &str,
        a: usize,
        b: usize,
        map: &PositionMap<'_>,
        emit: &mut PieceSink<'_>,
    ) {
        let piece = &base[a..b];
        let mut sub = |x: usize, y: usize| Self::run_steps(rest, base, a + x, a + y, map, emit);
        match step {
            PreTokenizer::Bert => bert::pre_tokenize(piece, sub),
            PreTokenizer::ByteLevel {
                use_regex: true, ..
            } => Splitter::Gpt2.split(piece, sub),
            PreTokenizer::ByteLevel {
                use_regex: false, ..
            } => sub(0, piece.len()),
            PreTokenizer::Split { splitter, keep } => {
                let between = *keep != SplitKeep::Matches;
                let matches = *keep != SplitKeep::Between;
                let mut last = 0;
                splitter.split(piece, |x, y| {
                    if between && x > last {
                        sub(last, x);
                    }
                    if matches {
                        sub(x, y);
                    }
                    last = y;
                });
                if between && last < piece.len() {
                    sub(last, piece.len());
                }
            }
            PreTokenizer::Digits { individual } => {
                let mut start = 0;
                let mut in_digits = false;
                for (i, c) in piece.char_indices() {
                    let digit = c.is_numeric();
                    if digit && *individual {
                        if i > start {
                            sub(start, i);
                        }
                        sub(i, i + c.len_utf8());
                        start = i + c.len_utf8();
                    } else if digit != in_digits && i > start {
                        sub(start, i);
                        start = i;
                    }
                    in_digits = digit;
                }
                if start < piece.len() {
                    sub(start, piece.len());
                }
            }
            PreTokenizer::WhitespaceSplit => {
                let mut start = None;
                for (i, c) in piece.char_indices() {
                    if c.is_whitespace() {
                        if let Some(s) = start.take() {
                            sub(s, i);
                        }
                    } else if start.is_none() {
                        start = Some(i);
                    }
                }
                if let Some(s) = start {
                    sub(s, piece.len());
                }
            }
        }
    }

    fn encode_words(&self, text: &str, out: &mut Vec<u32>, scratch: &mut Scratch) {
        let identity = |x: usize| x;
        match &self.model {
            Model::WordPiece(wp) => Self::run_steps(
                &self.pre_tokenizer,
                text,
                0,
                text.len(),
                &identity,
                &mut |base, a, b, _| wp.encode_word(&base[a..b], out, None),
            ),
            Model::Bpe(bpe) => Self::run_steps(
                &self.pre_tokenizer,
                text,
                0,
                text.len(),
                &identity,
                &mut |base, a, b, _| bpe.encode_piece(base.as_bytes(), a, b, out, scratch),
            ),
        }
    }

    /// `encode` that also gives each id's byte range in `text` (the special tokens a template
    /// adds get `(0, 0)`, as in tokenizers).
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> (Vec<u32>, Vec<(usize, usize)>) {
        let mut ids = Vec::new();
        let mut offsets = Vec::new();
        let mut segs = Vec::new();
        self.added.split_raw(text, &mut segs);
        with_scratch(|scratch| {
            for seg in segs {
                match seg {
                    Segment::Token(id, s, e) => {
                        ids.push(id);
                        offsets.push((s, e));
                    }
                    Segment::Text(a, b) => {
                        self.encode_plain_offsets(text, a, b, &mut ids, &mut offsets, scratch);
                    }
                }
            }
        });
        if add_special_tokens {
            if let Some(items) = &self.template {
                let mut out_ids = Vec::with_capacity(ids.len() + 4);
                let mut out_offsets = Vec::with_capacity(ids.len() + 4);
                for item in items {
                    match item {
                        TemplateItem::Special(sp) => {
                            out_ids.extend_from_slice(sp);
                            out_offsets.extend(std::iter::repeat_n((0, 0), sp.len()));
                        }
                        TemplateItem::Sequence => {
                            out_ids.extend_from_slice(&ids);
                            out_offsets.extend_from_slice(&offsets);
                        }
                    }
                }
                return (out_ids, out_offsets);
            }
        }
        (ids, offsets)
    }

    /// The plain segment `text[a..b]`: normalized with its alignment, split on normalized added
    /// tokens, pre-tokenized and encoded, each id with the original byte range it covers.
    fn encode_plain_offsets(
        &self,
        text: &str,
        a: usize,
        b: usize,
        ids: &mut Vec<u32>,
        offsets: &mut Vec<(usize, usize)>,
        scratch: &mut Scratch,
    ) {
        let segment = &text[a..b];
        let mut norm = String::new();
        let mut align: Vec<u32> = Vec::new();
        let normalized: &str = match &self.normalizer {
            Some(Normalizer::Bert(n)) => {
                n.normalize(segment, &mut norm, Some(&mut align));
                &norm
            }
            None => segment,
        };
        // Normalized byte range -> original byte range (whole source characters).
        let original = |x: usize, y: usize| -> (usize, usize) {
            if y <= x {
                let at = if align.is_empty() {
                    x
                } else {
                    align.get(x).map_or(segment.len(), |&v| v as usize)
                };
                return (a + at, a + at);
            }
            if align.is_empty() {
                return (a + x, a + y);
            }
            let start = align[x] as usize;
            let last = align[y - 1] as usize;
            let end = last + segment[last..].chars().next().map_or(0, char::len_utf8);
            (a + start, a + end)
        };
        let mut parts = Vec::new();
        if self.added.has_normalized() {
            self.added.split_normalized(normalized, &mut parts);
        } else if !normalized.is_empty() {
            parts.push(Segment::Text(0, normalized.len()));
        }
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for part in parts {
            let (pa, pb) = match part {
                Segment::Token(id, s, e) => {
                    ids.push(id);
                    offsets.push(original(s, e));
                    continue;
                }
                Segment::Text(pa, pb) => (pa, pb),
            };
            let identity = |x: usize| x;
            Self::run_steps(
                &self.pre_tokenizer,
                normalized,
                pa,
                pb,
                &identity,
                &mut |base, x, y, map| {
                    spans.clear();
                    match &self.model {
                        Model::WordPiece(wp) => wp.encode_word(&base[x..y], ids, Some(&mut spans)),
                        Model::Bpe(bpe) => {
                            let before = ids.len();
                            bpe.encode_piece(base.as_bytes(), x, y, ids, scratch);
                            let mut at = 0;
                            for &id in &ids[before..] {
                                let len = bpe.token_bytes(id).map_or(0, <[u8]>::len);
                                spans.push((at, at + len));
                                at += len;
                            }
                        }
                    }
                    for &(s, e) in &spans {
                        // `map` takes positions of `base` to positions of `normalized`.
                        let ns = map(x + s);
                        let ne = map(x + e - 1) + 1;
                        offsets.push(original(ns, ne));
                    }
                },
            );
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
                n.normalize(text, norm, None);
                norm
            }
            None => text,
        };
        if self.added.has_normalized() {
            let mut segs = Vec::new();
            self.added.split_normalized(normalized, &mut segs);
            for seg in segs {
                match seg {
                    Segment::Token(id, ..) => out.push(id),
                    Segment::Text(a, b) => self.encode_words(&normalized[a..b], out, scratch),
                }
            }
        } else {
            self.encode_words(normalized, out, scratch);
        }
    }

    /// The ids of `text`; with `add_special_tokens`, wrapped by the post-processor's template
    /// (`[CLS] ... [SEP]` for BERT).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Vec<u32> {
        let mut body = crate::runtime::mem::ids_for(text.len() + 1);
        let mut segs = Vec::new();
        let mut norm = String::new();
        self.added.split_raw(text, &mut segs);
        with_scratch(|scratch| {
            for seg in segs {
                match seg {
                    Segment::Token(id, ..) => body.push(id),
                    Segment::Text(a, b) => {
                        self.encode_plain(&text[a..b], &mut body, &mut norm, scratch);
                    }
                }
            }
        });
        let body = crate::runtime::mem::fit_ids(body);
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

    /// `a` and `b` joined by the pair template: the ids and each one's type id.
    pub fn apply_pair_template(&self, a: &[u32], b: &[u32]) -> (Vec<u32>, Vec<u32>) {
        let mut ids = Vec::with_capacity(a.len() + b.len() + 4);
        let mut types = Vec::with_capacity(a.len() + b.len() + 4);
        match &self.pair_template {
            None => {
                ids.extend_from_slice(a);
                ids.extend_from_slice(b);
                types.resize(ids.len(), 0);
            }
            Some(items) => {
                for item in items {
                    let (part, t): (&[u32], u32) = match item {
                        PairItem::Special(s, t) => (s, *t),
                        PairItem::A(t) => (a, *t),
                        PairItem::B(t) => (b, *t),
                    };
                    ids.extend_from_slice(part);
                    types.extend(std::iter::repeat_n(t, part.len()));
                }
            }
        }
        (ids, types)
    }

    /// The number of ids the pair template adds around two sequences.
    pub fn num_special_tokens_to_add_pair(&self) -> usize {
        self.pair_template.as_ref().map_or(0, |items| {
            items
                .iter()
                .map(|i| match i {
                    PairItem::Special(ids, _) => ids.len(),
                    _ => 0,
                })
                .sum()
        })
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
