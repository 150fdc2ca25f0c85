//! Hugging Face `tokenizer.json`: reads the components ferrolm implements and refuses every
//! other one with [`Error::Unsupported`] naming it (`"normalizer `Precompiled`"`), so a file is
//! either tokenized exactly as `tokenizers` would, or not at all.
//!
//! Supported so far: models WordPiece and byte-level BPE; normalizer BertNormalizer;
//! pre-tokenizers BertPreTokenizer and ByteLevel; post-processors TemplateProcessing (single
//! sequence), BertProcessing and ByteLevel; decoders WordPiece and ByteLevel; `added_tokens` with
//! `special` / `lstrip` / `rstrip` / `normalized`.
//! `truncation` and `padding` are not applied by `encode` (they are call options).

use serde_json::Value;

use crate::tokenizer::added::{AddedToken, AddedTokens};
use crate::tokenizer::bert::BertNormalizer;
use crate::tokenizer::bpe::Bpe;
use crate::tokenizer::byte_level;
use crate::tokenizer::pipeline::{
    Decoder, HfTokenizer, Model, Normalizer, PairItem, PreTokenizer, SplitKeep, TemplateItem,
};
use crate::tokenizer::split::{self, Splitter};
use crate::tokenizer::wordpiece::WordPiece;
use crate::{Error, Result};

struct Ctx<'a> {
    what: &'a str,
}

impl Ctx<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(self.what, msg)
    }

    fn field<'v>(&self, obj: &'v Value, section: &str, key: &str) -> Result<&'v Value> {
        obj.get(key)
            .ok_or_else(|| self.err(format!("{section}: missing field `{key}`")))
    }

    fn str<'v>(&self, obj: &'v Value, section: &str, key: &str) -> Result<&'v str> {
        self.field(obj, section, key)?
            .as_str()
            .ok_or_else(|| self.err(format!("{section}: `{key}` must be a string")))
    }

    fn bool_or(&self, obj: &Value, section: &str, key: &str, default: bool) -> Result<bool> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.err(format!("{section}: `{key}` must be true or false"))),
        }
    }

    fn type_of<'v>(&self, obj: &'v Value, section: &str) -> Result<&'v str> {
        self.str(obj, section, "type")
    }
}

/// Builds a tokenizer from a tokenizer.json file's contents. `what` names the file in errors.
pub fn parse(what: &str, data: &[u8]) -> Result<HfTokenizer> {
    let cx = Ctx { what };
    let root: Value =
        serde_json::from_slice(data).map_err(|e| cx.err(format!("invalid JSON: {e}")))?;
    if !root.is_object() {
        return Err(cx.err("the top level must be a JSON object"));
    }
    let added = parse_added(&cx, root.get("added_tokens"))?;
    let model = parse_model(&cx, cx.field(&root, "tokenizer.json", "model")?, &added)?;
    let normalizer = match root.get("normalizer") {
        None | Some(Value::Null) => None,
        Some(n) => Some(parse_normalizer(&cx, n)?),
    };
    let mut pre_tokenizer = Vec::new();
    if let Some(p) = root.get("pre_tokenizer").filter(|p| !p.is_null()) {
        parse_pre_tokenizer(&cx, p, &mut pre_tokenizer)?;
    }
    let templates = match root.get("post_processor") {
        None | Some(Value::Null) => None,
        Some(p) => parse_post_processor(&cx, p, &added, &model)?,
    };
    let decoder = match root.get("decoder") {
        None | Some(Value::Null) => None,
        Some(d) => Some(parse_decoder(&cx, d)?),
    };
    Ok(HfTokenizer {
        normalizer,
        pre_tokenizer,
        model,
        added,
        template: templates.as_ref().map(|t| t.0.clone()),
        pair_template: templates.map(|t| t.1),
        decoder,
    })
}

fn parse_added(cx: &Ctx<'_>, v: Option<&Value>) -> Result<AddedTokens> {
    let mut tokens = Vec::new();
    if let Some(v) = v.filter(|v| !v.is_null()) {
        let list = v
            .as_array()
            .ok_or_else(|| cx.err("`added_tokens` must be a list"))?;
        for (i, t) in list.iter().enumerate() {
            let section = format!("added_tokens[{i}]");
            let id = cx
                .field(t, &section, "id")?
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| cx.err(format!("{section}: `id` must be a non-negative integer")))?;
            let special = cx.bool_or(t, &section, "special", false)?;
            tokens.push(AddedToken {
                content: cx.str(t, &section, "content")?.to_owned(),
                id,
                special,
                lstrip: cx.bool_or(t, &section, "lstrip", false)?,
                rstrip: cx.bool_or(t, &section, "rstrip", false)?,
                normalized: cx.bool_or(t, &section, "normalized", !special)?,
                single_word: cx.bool_or(t, &section, "single_word", false)?,
            });
        }
    }
    AddedTokens::new(tokens)
}

fn parse_model(cx: &Ctx<'_>, m: &Value, added: &AddedTokens) -> Result<Model> {
    // Older files omit `type` for some models; a WordPiece model is recognisable by its fields.
    let ty = match m.get("type") {
        Some(t) => t
            .as_str()
            .ok_or_else(|| cx.err("model: `type` must be a string"))?,
        None if m.get("continuing_subword_prefix").is_some() && m.get("merges").is_none() => {
            "WordPiece"
        }
        None => return Err(cx.err("model: missing field `type`")),
    };
    match ty {
        "WordPiece" => {
            let vocab = cx
                .field(m, "model", "vocab")?
                .as_object()
                .ok_or_else(|| cx.err("model: `vocab` must be an object of token: id"))?;
            let mut pairs = Vec::with_capacity(vocab.len());
            for (tok, id) in vocab {
                let id = id
                    .as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| {
                        cx.err(format!("model.vocab[{tok:?}]: id must be an integer"))
                    })?;
                pairs.push((tok.clone(), id));
            }
            let unk = cx.str(m, "model", "unk_token")?;
            let prefix = match m.get("continuing_subword_prefix") {
                None | Some(Value::Null) => "##",
                Some(p) => p
                    .as_str()
                    .ok_or_else(|| cx.err("model: `continuing_subword_prefix` must be a string"))?,
            };
            let max_chars = match m.get("max_input_chars_per_word") {
                None | Some(Value::Null) => 100,
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| cx.err("model: `max_input_chars_per_word` must be an integer"))?
                    as usize,
            };
            Ok(Model::WordPiece(WordPiece::new(
                &format!("{} model", cx.what),
                pairs,
                unk,
                prefix,
                max_chars,
            )?))
        }
        "BPE" => parse_bpe(cx, m, added),
        other => Err(Error::Unsupported(format!("tokenizer model `{other}`"))),
    }
}

/// The `merges` of a BPE model: `"a b"` strings (older files) or `["a", "b"]` pairs.
fn merge_pairs(cx: &Ctx<'_>, v: &Value) -> Result<Vec<(String, String)>> {
    let list = v
        .as_array()
        .ok_or_else(|| cx.err("model: `merges` must be a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let bad = || {
                cx.err(format!(
                    "model.merges[{i}]: expected \"a b\" or [\"a\", \"b\"]"
                ))
            };
            match m {
                Value::String(s) => {
                    let (a, b) = s.split_once(' ').ok_or_else(bad)?;
                    if b.contains(' ') {
                        return Err(bad());
                    }
                    Ok((a.to_owned(), b.to_owned()))
                }
                Value::Array(pair) if pair.len() == 2 => match (&pair[0], &pair[1]) {
                    (Value::String(a), Value::String(b)) => Ok((a.clone(), b.clone())),
                    _ => Err(bad()),
                },
                _ => Err(bad()),
            }
        })
        .collect()
}

/// Builds a byte-level BPE model from `(token, id)` in byte-level characters and merges.
/// Vocabulary entries that are added tokens written in plain text are left to the added
/// tokens; any other entry that is not byte-level means the model is not byte-level BPE.
pub(crate) fn byte_level_bpe(
    what: &str,
    vocab: Vec<(String, u32)>,
    merges: &[(String, String)],
    added: &AddedTokens,
    ignore_merges: bool,
) -> Result<Model> {
    let mut tokens = Vec::with_capacity(vocab.len());
    for (tok, id) in vocab {
        match byte_level::string_to_bytes(&tok) {
            Some(bytes) => tokens.push((bytes, id)),
            None if added.by_id(id).is_some() => {}
            None => {
                return Err(Error::Unsupported(format!(
                    "BPE vocabulary that is not byte-level (token {tok:?}); only byte-level BPE \
                     (GPT-2 style) is implemented"
                )))
            }
        }
    }
    let to_bytes = |t: &str| {
        byte_level::string_to_bytes(t)
            .ok_or_else(|| Error::format(what, format!("merge token {t:?} is not byte-level")))
    };
    let merges = merges
        .iter()
        .map(|(a, b)| Ok((to_bytes(a)?, to_bytes(b)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Model::Bpe(Box::new(Bpe::from_merges(
        what,
        tokens,
        &merges,
        ignore_merges,
    )?)))
}

fn parse_bpe(cx: &Ctx<'_>, m: &Value, added: &AddedTokens) -> Result<Model> {
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if let Some(v) = m.get(key).and_then(Value::as_str).filter(|v| !v.is_empty()) {
            return Err(Error::Unsupported(format!("BPE `{key}` {v:?}")));
        }
    }
    if let Some(d) = m
        .get("dropout")
        .and_then(Value::as_f64)
        .filter(|d| *d > 0.0)
    {
        return Err(Error::Unsupported(format!("BPE dropout {d}")));
    }
    let vocab = cx
        .field(m, "model", "vocab")?
        .as_object()
        .ok_or_else(|| cx.err("model: `vocab` must be an object of token: id"))?;
    let mut pairs = Vec::with_capacity(vocab.len());
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| cx.err(format!("model.vocab[{tok:?}]: id must be an integer")))?;
        pairs.push((tok.clone(), id));
    }
    let merges = merge_pairs(cx, cx.field(m, "model", "merges")?)?;
    let ignore_merges = cx.bool_or(m, "model", "ignore_merges", false)?;
    byte_level_bpe(
        &format!("{} model", cx.what),
        pairs,
        &merges,
        added,
        ignore_merges,
    )
}

fn parse_normalizer(cx: &Ctx<'_>, n: &Value) -> Result<Normalizer> {
    match cx.type_of(n, "normalizer")? {
        "BertNormalizer" => {
            let strip_accents = match n.get("strip_accents") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => {
                    return Err(cx.err("normalizer: `strip_accents` must be true, false or null"))
                }
            };
            Ok(Normalizer::Bert(BertNormalizer {
                clean_text: cx.bool_or(n, "normalizer", "clean_text", true)?,
                handle_chinese_chars: cx.bool_or(n, "normalizer", "handle_chinese_chars", true)?,
                strip_accents,
                lowercase: cx.bool_or(n, "normalizer", "lowercase", true)?,
            }))
        }
        other => Err(Error::Unsupported(format!("normalizer `{other}`"))),
    }
}

fn parse_pre_tokenizer(cx: &Ctx<'_>, p: &Value, out: &mut Vec<PreTokenizer>) -> Result<()> {
    let step = match cx.type_of(p, "pre_tokenizer")? {
        "Sequence" => {
            let steps = cx
                .field(p, "pre_tokenizer", "pretokenizers")?
                .as_array()
                .ok_or_else(|| cx.err("pre_tokenizer: `pretokenizers` must be a list"))?;
            for step in steps {
                parse_pre_tokenizer(cx, step, out)?;
            }
            return Ok(());
        }
        "BertPreTokenizer" => PreTokenizer::Bert,
        "ByteLevel" => PreTokenizer::ByteLevel {
            add_prefix_space: cx.bool_or(p, "pre_tokenizer", "add_prefix_space", true)?,
            use_regex: cx.bool_or(p, "pre_tokenizer", "use_regex", true)?,
        },
        "Digits" => PreTokenizer::Digits {
            individual: cx.bool_or(p, "pre_tokenizer", "individual_digits", false)?,
        },
        "WhitespaceSplit" => PreTokenizer::WhitespaceSplit,
        "Whitespace" => PreTokenizer::Split {
            splitter: Splitter::new(r"\w+|[^\w\s]+")?,
            keep: SplitKeep::Matches,
        },
        "Split" => {
            let pattern = cx.field(p, "pre_tokenizer", "pattern")?;
            let splitter = if let Some(re) = pattern.get("Regex").and_then(Value::as_str) {
                if split::has_interval_plus(re) {
                    return Err(Error::Unsupported(format!(
                        "Split pattern {re:?}: tokenizers' regex engine (Oniguruma) reads \
                         `{{n,m}}+` as a repeated interval, not as possessive"
                    )));
                }
                Splitter::new(re)?
            } else if let Some(lit) = pattern.get("String").and_then(Value::as_str) {
                Splitter::new(&regex::escape(lit))?
            } else {
                return Err(cx.err(
                    "pre_tokenizer: Split `pattern` must be {\"Regex\": ...} or {\"String\": ...}",
                ));
            };
            if cx.bool_or(p, "pre_tokenizer", "invert", false)? {
                return Err(Error::Unsupported(
                    "pre-tokenizer `Split` with `invert: true`".into(),
                ));
            }
            let keep = match cx.str(p, "pre_tokenizer", "behavior")? {
                "Isolated" => SplitKeep::Both,
                "Removed" => SplitKeep::Between,
                other => {
                    return Err(Error::Unsupported(format!(
                        "pre-tokenizer `Split` with behavior `{other}`"
                    )))
                }
            };
            PreTokenizer::Split { splitter, keep }
        }
        other => return Err(Error::Unsupported(format!("pre-tokenizer `{other}`"))),
    };
    out.push(step);
    Ok(())
}

fn special_id(cx: &Ctx<'_>, name: &str, added: &AddedTokens, model: &Model) -> Result<u32> {
    if let Some(t) = added.by_content(name) {
        return Ok(t.id);
    }
    model.token_id(name).ok_or_else(|| {
        cx.err(format!(
            "post_processor: special token {name:?} is not in the vocabulary"
        ))
    })
}

/// The single-sequence template and the pair template a post-processor describes.
type Templates = (Vec<TemplateItem>, Vec<PairItem>);

fn parse_post_processor(
    cx: &Ctx<'_>,
    p: &Value,
    added: &AddedTokens,
    model: &Model,
) -> Result<Option<Templates>> {
    match cx.type_of(p, "post_processor")? {
        // Only trims offsets; the ids are unchanged.
        "ByteLevel" => Ok(None),
        "Sequence" => {
            let steps = cx
                .field(p, "post_processor", "processors")?
                .as_array()
                .ok_or_else(|| cx.err("post_processor: `processors` must be a list"))?;
            let mut template = None;
            for step in steps {
                if let Some(t) = parse_post_processor(cx, step, added, model)? {
                    if template.replace(t).is_some() {
                        return Err(Error::Unsupported(
                            "post-processor `Sequence` with more than one template".into(),
                        ));
                    }
                }
            }
            Ok(template)
        }
        "BertProcessing" => {
            let pair = |key: &str| -> Result<u32> {
                let v = cx.field(p, "post_processor", key)?;
                v.get(1)
                    .and_then(Value::as_u64)
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| cx.err(format!("post_processor: `{key}` must be [token, id]")))
            };
            let (cls, sep) = (pair("cls")?, pair("sep")?);
            Ok(Some((
                vec![
                    TemplateItem::Special(vec![cls]),
                    TemplateItem::Sequence,
                    TemplateItem::Special(vec![sep]),
                ],
                vec![
                    PairItem::Special(vec![cls], 0),
                    PairItem::A(0),
                    PairItem::Special(vec![sep], 0),
                    PairItem::B(1),
                    PairItem::Special(vec![sep], 1),
                ],
            )))
        }
        "TemplateProcessing" => {
            let items = |key: &str| -> Result<Vec<PairItem>> {
                let list = cx
                    .field(p, "post_processor", key)?
                    .as_array()
                    .ok_or_else(|| cx.err(format!("post_processor: `{key}` must be a list")))?;
                // What a template adds to every sequence is bounded before anything is
                // built: one special token named 20,000 times, holding 50,000 ids, would be
                // 10^9 ids for every `encode`.
                let mut budget = TemplateBudget {
                    ids: MAX_TEMPLATE_IDS,
                    sequences: MAX_TEMPLATE_SEQUENCES,
                };
                list.iter()
                    .map(|item| template_item(cx, p, key, item, added, model, &mut budget))
                    .collect()
            };
            let single = items("single")?
                .into_iter()
                .map(|i| match i {
                    PairItem::A(_) => Ok(TemplateItem::Sequence),
                    PairItem::Special(ids, _) => Ok(TemplateItem::Special(ids)),
                    PairItem::B(_) => {
                        Err(cx.err("post_processor: the single template may only use sequence A"))
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let pair = match p.get("pair") {
                None | Some(Value::Null) => {
                    // tokenizers' default: the single template around A, then B.
                    let mut v: Vec<PairItem> = single
                        .iter()
                        .map(|i| match i {
                            TemplateItem::Special(ids) => PairItem::Special(ids.clone(), 0),
                            TemplateItem::Sequence => PairItem::A(0),
                        })
                        .collect();
                    v.push(PairItem::B(1));
                    v
                }
                Some(_) => items("pair")?,
            };
            Ok(Some((single, pair)))
        }
        other => Err(Error::Unsupported(format!("post-processor `{other}`"))),
    }
}

/// The most special-token ids one TemplateProcessing template adds to a sequence (real ones add
/// 1–3, each a single id) and the most `Sequence` items it holds (real ones: 1, or 2 for pairs).
const MAX_TEMPLATE_IDS: usize = 1024;
const MAX_TEMPLATE_SEQUENCES: usize = 16;

/// What is left of a template's bounds while its items are read.
struct TemplateBudget {
    ids: usize,
    sequences: usize,
}

/// One item of a TemplateProcessing template: `{"Sequence": {"id": "A"|"B", "type_id": n}}`
/// or `{"SpecialToken": {"id": name, "type_id": n}}`, charged to `budget`.
fn template_item(
    cx: &Ctx<'_>,
    p: &Value,
    key: &str,
    item: &Value,
    added: &AddedTokens,
    model: &Model,
    budget: &mut TemplateBudget,
) -> Result<PairItem> {
    let section = format!("post_processor.{key}");
    let too_many = |what: &str, limit: usize| {
        cx.err(format!(
            "{section}: the template adds more than {limit} {what} to every sequence \
             (real templates add a few); refused"
        ))
    };
    let type_id = |v: &Value| -> u32 {
        v.get("type_id")
            .and_then(Value::as_u64)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(0)
    };
    if let Some(seq) = item.get("Sequence") {
        budget.sequences = budget
            .sequences
            .checked_sub(1)
            .ok_or_else(|| too_many("copies of the sequence", MAX_TEMPLATE_SEQUENCES))?;
        return match seq.get("id").and_then(Value::as_str) {
            Some("A") => Ok(PairItem::A(type_id(seq))),
            Some("B") => Ok(PairItem::B(type_id(seq))),
            _ => Err(cx.err(format!("{section}: a Sequence id must be \"A\" or \"B\""))),
        };
    }
    if let Some(sp) = item.get("SpecialToken") {
        let name = cx.str(sp, &section, "id")?;
        let ids = match p
            .get("special_tokens")
            .and_then(|s| s.get(name))
            .and_then(|s| s.get("ids"))
        {
            Some(ids) => {
                let ids = ids
                    .as_array()
                    .ok_or_else(|| cx.err("post_processor: special token `ids` must be a list"))?;
                budget.ids = budget
                    .ids
                    .checked_sub(ids.len())
                    .ok_or_else(|| too_many("special-token ids", MAX_TEMPLATE_IDS))?;
                ids.iter()
                    .map(|i| {
                        i.as_u64()
                            .and_then(|i| u32::try_from(i).ok())
                            .ok_or_else(|| {
                                cx.err("post_processor: special token ids must be integers")
                            })
                    })
                    .collect::<Result<Vec<u32>>>()?
            }
            None => {
                budget.ids = budget
                    .ids
                    .checked_sub(1)
                    .ok_or_else(|| too_many("special-token ids", MAX_TEMPLATE_IDS))?;
                vec![special_id(cx, name, added, model)?]
            }
        };
        return Ok(PairItem::Special(ids, type_id(sp)));
    }
    Err(cx.err("post_processor: a template item must be `Sequence` or `SpecialToken`"))
}

fn parse_decoder(cx: &Ctx<'_>, d: &Value) -> Result<Decoder> {
    match cx.type_of(d, "decoder")? {
        "WordPiece" => Ok(Decoder::WordPiece {
            prefix: match d.get("prefix") {
                None | Some(Value::Null) => "##".to_owned(),
                Some(p) => p
                    .as_str()
                    .ok_or_else(|| cx.err("decoder: `prefix` must be a string"))?
                    .to_owned(),
            },
            cleanup: cx.bool_or(d, "decoder", "cleanup", true)?,
        }),
        "ByteLevel" => Ok(Decoder::ByteLevel),
        other => Err(Error::Unsupported(format!("decoder `{other}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r###"{
        "version": "1.0",
        "added_tokens": [
            {"id": 0, "content": "[UNK]", "special": true, "normalized": false},
            {"id": 1, "content": "[CLS]", "special": true, "normalized": false},
            {"id": 2, "content": "[SEP]", "special": true, "normalized": false}
        ],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100,
                  "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "hello": 3, "world": 4, "!": 5,
                            "wor": 6, "##ld": 7}}
    }"###;

    #[test]
    fn reads_a_bert_tokenizer() {
        let t = parse("mini.json", MINI.as_bytes()).unwrap();
        assert_eq!(t.encode("Hello WORLD!", true), vec![1, 3, 4, 5, 2]);
        assert_eq!(t.encode("hello [SEP] xyz", false), vec![3, 2, 0]);
        assert_eq!(t.decode(&[1, 3, 6, 7, 5, 2], true).unwrap(), "hello world!");
        assert_eq!(t.decode(&[1, 3], false).unwrap(), "[CLS] hello");
        assert!(t
            .decode(&[99], false)
            .unwrap_err()
            .to_string()
            .contains("99"));
        assert_eq!(t.vocab_size(), 8);
        assert_eq!(t.num_special_tokens_to_add(), 2);
    }

    #[test]
    fn unsupported_components_are_named() {
        let with = |from: &str, to: &str| MINI.replace(from, to);
        let e = parse(
            "t",
            with("\"BertNormalizer\"", "\"Precompiled\"").as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "unsupported normalizer `Precompiled`");
        let e = parse(
            "t",
            with("\"BertPreTokenizer\"", "\"Metaspace\"").as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "unsupported pre-tokenizer `Metaspace`");
        let e = parse(
            "t",
            with(
                "\"type\": \"WordPiece\", \"unk",
                "\"type\": \"Unigram\", \"unk",
            )
            .as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "unsupported tokenizer model `Unigram`");
    }

    #[test]
    fn malformed_files_are_format_errors() {
        for bad in ["", "[]", "{", "{\"model\": 3}", &MINI[..MINI.len() / 2]] {
            let e = parse("bad.json", bad.as_bytes()).unwrap_err();
            assert!(matches!(e, Error::Format { .. }), "{bad:?}: {e}");
        }
        let no_unk = MINI.replace("\"unk_token\": \"[UNK]\"", "\"unk_token\": \"<unk>\"");
        assert!(parse("t", no_unk.as_bytes()).is_err());
    }
}
