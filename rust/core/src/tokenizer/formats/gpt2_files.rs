//! GPT-2's original tokenizer files: `vocab.json` (`{"byte-level token": id}`) and `merges.txt`
//! (an optional `#version` line, then one merge `a b` per line, highest priority first), read as
//! Hugging Face's `GPT2TokenizerFast` reads them: byte-level BPE with GPT-2's split pattern, the
//! ByteLevel decoder, and `<|endoftext|>` as a special token when the vocabulary has it.

use serde_json::Value;

use crate::tokenizer::added::{AddedToken, AddedTokens};
use crate::tokenizer::formats::hf_json::byte_level_bpe;
use crate::tokenizer::pipeline::{Decoder, HfTokenizer, PreTokenizer};
use crate::{Error, Result};

/// Builds the tokenizer from the two files' contents; `what` names them in errors.
pub fn parse(what: &str, vocab_json: &[u8], merges_txt: &[u8]) -> Result<HfTokenizer> {
    let vocab: Value = serde_json::from_slice(vocab_json)
        .map_err(|e| Error::format(format!("{what} vocab.json"), format!("invalid JSON: {e}")))?;
    let vocab = vocab.as_object().ok_or_else(|| {
        Error::format(
            format!("{what} vocab.json"),
            "expected an object of token: id",
        )
    })?;
    let mut pairs = Vec::with_capacity(vocab.len());
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| {
                Error::format(
                    format!("{what} vocab.json"),
                    format!("{tok:?}: id must be an integer"),
                )
            })?;
        pairs.push((tok.clone(), id));
    }
    let text = std::str::from_utf8(merges_txt)
        .map_err(|_| Error::format(format!("{what} merges.txt"), "not UTF-8"))?;
    let mut merges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.trim().is_empty() {
            continue;
        }
        let (a, b) = line
            .trim_end()
            .split_once(' ')
            .filter(|(_, b)| !b.contains(' '))
            .ok_or_else(|| {
                Error::format(
                    format!("{what} merges.txt line {}", i + 1),
                    "expected `a b`",
                )
            })?;
        merges.push((a.to_owned(), b.to_owned()));
    }
    let mut added = Vec::new();
    if let Some(id) = vocab.get("<|endoftext|>").and_then(Value::as_u64) {
        added.push(AddedToken {
            content: "<|endoftext|>".to_owned(),
            id: u32::try_from(id).unwrap_or(u32::MAX),
            special: true,
            lstrip: false,
            rstrip: false,
            normalized: true,
            single_word: false,
        });
    }
    let added = AddedTokens::new(added)?;
    let model = byte_level_bpe(what, pairs, &merges, &added, false)?;
    Ok(HfTokenizer {
        normalizer: None,
        pre_tokenizer: vec![PreTokenizer::ByteLevel {
            add_prefix_space: false,
            use_regex: true,
        }],
        model,
        added,
        template: None,
        pair_template: None,
        decoder: Some(Decoder::ByteLevel),
    })
}
