//! Training: learning a byte-level BPE or a WordPiece vocabulary from text, and writing it as a
//! Hugging Face `tokenizer.json` that both ferrolm and `tokenizers` load.
//!
//! Both trainers count the words of the corpus (in parallel on the global pool), then learn
//! merges greedily: the most frequent adjacent pair of symbols becomes a new symbol, until the
//! vocabulary is full or no pair occurs `min_frequency` times. Ties go to the pair of smaller
//! ids, so training is deterministic whatever the thread count.
//!
//! The merge loop updates pair counts incrementally: each merge touches only the words that
//! contain its pair (found through a per-pair index of word numbers), and a max-heap with lazy
//! deletion finds the next pair. WordPiece is learnt the way `tokenizers`' `WordPieceTrainer`
//! learns it: BPE over characters with `##` marking the ones inside a word, its vocabulary then
//! read by the WordPiece model (greedy longest match).

use std::collections::BinaryHeap;

use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde_json::{json, Map, Value};

use crate::runtime::pool;
use crate::tokenizer::bert::{self, BertNormalizer};
use crate::tokenizer::byte_level;
use crate::tokenizer::split::{
    Splitter, CL100K_PATTERN, CL100K_PATTERN_ONIG, GPT2_PATTERN, GPT2_PATTERN_HF,
};
use crate::{Error, Result};

/// Training progress: called as `(stage, done, total)` a few hundred times per stage at most,
/// from any thread. Stages: `"counting"` (bytes of text read) and `"merging"` (merges learnt,
/// out of the most the vocabulary size allows).
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

/// What both trainers take.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The size of the vocabulary to learn, special tokens and the initial alphabet included.
    pub vocab_size: usize,
    /// A pair is merged only if it occurs at least this many times.
    pub min_frequency: u64,
    /// Special tokens, given the first ids in this order.
    pub special_tokens: Vec<String>,
}

/// What a trainer returns: the `tokenizer.json` text, and how the vocabulary came out.
#[derive(Debug, Clone)]
pub struct Trained {
    pub json: String,
    pub vocab_size: usize,
    pub merges: usize,
    pub distinct_words: usize,
}

/// Texts are cut into blocks of about this many bytes (at line starts) so that one large text
/// is also counted in parallel.
const BLOCK: usize = 1 << 18;

/// `text` cut into blocks of about [`BLOCK`] bytes, each ending just after a `\n` that is
/// followed by a character that is not white space (a place where every split pattern in use
/// ends a piece).
fn blocks(text: &str) -> Vec<&str> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(text.len() / BLOCK + 1);
    let mut start = 0;
    while text.len() - start > BLOCK {
        let mut cut = None;
        let mut i = start + BLOCK;
        while let Some(off) = b[i..].iter().position(|&c| c == b'\n') {
            let j = i + off + 1;
            match text[j..].chars().next() {
                Some(c) if !c.is_whitespace() => {
                    cut = Some(j);
                    break;
                }
                Some(_) => i = j,
                None => break,
            }
        }
        let Some(cut) = cut else { break };
        out.push(&text[start..cut]);
        start = cut;
    }
    out.push(&text[start..]);
    out
}

/// Counts the words of `texts`: `words(block, emit)` calls `emit` with each word of a block.
/// Returns `(word, count)` sorted by word, so the result does not depend on the thread count.
fn count_words<F>(texts: &[&str], words: F, progress: Progress<'_>) -> Result<Vec<(Vec<u8>, u64)>>
where
    F: Fn(&str, &mut dyn FnMut(&[u8])) + Sync,
{
    let all: Vec<&str> = texts.iter().flat_map(|t| blocks(t)).collect();
    let total: u64 = all.iter().map(|t| t.len() as u64).sum();
    let done = std::sync::atomic::AtomicU64::new(0);
    let step = (total / 200).max(1);
    progress("counting", 0, total);
    let merged = pool::install(|| {
        all.par_iter()
            .fold(FxHashMap::<Vec<u8>, u64>::default, |mut map, block| {
                words(block, &mut |w: &[u8]| {
                    if let Some(c) = map.get_mut(w) {
                        *c += 1;
                    } else {
                        map.insert(w.to_vec(), 1);
                    }
                });
                let n = block.len() as u64;
                let before = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                if (before + n) / step != before / step {
                    progress("counting", before + n, total);
                }
                map
            })
            .reduce(FxHashMap::default, |mut a, b| {
                let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
                for (k, v) in small {
                    *big.entry(k).or_insert(0) += v;
                }
                a = big;
                a
            })
    })?;
    progress("counting", total, total);
    let mut out: Vec<(Vec<u8>, u64)> = merged.into_iter().collect();
    out.sort_unstable_by(|x, y| x.0.cmp(&y.0));
    Ok(out)
}

#[inline]
fn key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

#[inline]
fn unkey(k: u64) -> (u32, u32) {
    ((k >> 32) as u32, k as u32)
}

/// The merge loop. `words` are symbol sequences with their counts; `tokens[id]` is each
/// symbol's content; `join(a, b)` the content of the symbol `a` and `b` merge into. Stops when
/// `tokens` has `vocab_size` entries or no pair occurs `min_frequency` times. Returns the merges
/// in order as pairs of ids (new symbols are appended to `tokens`).
fn learn_merges(
    words: &mut [Vec<u32>],
    counts: &[u64],
    tokens: &mut Vec<Vec<u8>>,
    lookup: &mut FxHashMap<Vec<u8>, u32>,
    join: impl Fn(&[u8], &[u8]) -> Vec<u8>,
    opts: &TrainOptions,
    progress: Progress<'_>,
) -> Vec<(u32, u32)> {
    let mut pair_count: FxHashMap<u64, i64> = FxHashMap::default();
    let mut pair_where: FxHashMap<u64, Vec<u32>> = FxHashMap::default();
    for (w, syms) in words.iter().enumerate() {
        let c = counts[w] as i64;
        for p in syms.windows(2) {
            let k = key(p[0], p[1]);
            *pair_count.entry(k).or_insert(0) += c;
            let list = pair_where.entry(k).or_default();
            if list.last() != Some(&(w as u32)) {
                list.push(w as u32);
            }
        }
    }
    let mut heap: BinaryHeap<(i64, std::cmp::Reverse<u64>)> = pair_count
        .iter()
        .map(|(&k, &c)| (c, std::cmp::Reverse(k)))
        .collect();

    let room = opts.vocab_size.saturating_sub(tokens.len()) as u64;
    let step = (room / 200).max(1);
    progress("merging", 0, room);
    let mut merges = Vec::new();
    // The merge number that last touched each word (to skip repeats in a pair's word list).
    let mut stamp = vec![u32::MAX; words.len()];
    let mut touched: Vec<u64> = Vec::new();
    let min = opts.min_frequency.max(1) as i64;
    while tokens.len() < opts.vocab_size {
        let Some((count, std::cmp::Reverse(k))) = heap.pop() else {
            break;
        };
        let current = pair_count.get(&k).copied().unwrap_or(0);
        if current != count {
            // Stale: re-queue with the current count if it fell (a rise was queued already).
            if current > 0 && current < count {
                heap.push((current, std::cmp::Reverse(k)));
            }
            continue;
        }
        if count < min {
            break;
        }
        let (a, b) = unkey(k);
        let content = join(&tokens[a as usize], &tokens[b as usize]);
        let c = match lookup.get(&content) {
            Some(&id) => id,
            None => {
                let id = tokens.len() as u32;
                lookup.insert(content.clone(), id);
                tokens.push(content);
                id
            }
        };
        let m = merges.len() as u32;
        merges.push((a, b));
        pair_count.remove(&k);
        touched.clear();
        let list = pair_where.remove(&k).unwrap_or_default();
        for &w in &list {
            let wi = w as usize;
            if stamp[wi] == m {
                continue;
            }
            stamp[wi] = m;
            let f = counts[wi] as i64;
            let syms = &mut words[wi];
            let n = syms.len();
            let mut out = 0; // write position: syms[..out] is the merged prefix
            let mut i = 0;
            let mut changed = false;
            let mut bump = |pair: u64, d: i64, touched: &mut Vec<u64>| {
                let e = pair_count.entry(pair).or_insert(0);
                *e += d;
                if d > 0 {
                    touched.push(pair);
                    let l = pair_where.entry(pair).or_default();
                    if l.last() != Some(&w) {
                        l.push(w);
                    }
                }
            };
            while i < n {
                if i + 1 < n && syms[i] == a && syms[i + 1] == b {
                    changed = true;
                    if i > 0 {
                        // Old left pair (syms[i-1], a) goes; the new one is (merged prefix's
                        // last symbol, c).
                        bump(key(syms[i - 1], a), -f, &mut touched);
                        bump(key(syms[out - 1], c), f, &mut touched);
                    }
                    let next_is_merge = i + 3 < n && syms[i + 2] == a && syms[i + 3] == b;
                    if i + 2 < n && !next_is_merge {
                        bump(key(b, syms[i + 2]), -f, &mut touched);
                        bump(key(c, syms[i + 2]), f, &mut touched);
                    }
                    syms[out] = c;
                    out += 1;
                    i += 2;
                } else {
                    syms[out] = syms[i];
                    out += 1;
                    i += 1;
                }
            }
            if changed {
                syms.truncate(out);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for &t in &touched {
            let cnt = pair_count.get(&t).copied().unwrap_or(0);
            if cnt > 0 {
                heap.push((cnt, std::cmp::Reverse(t)));
            }
        }
        let done = merges.len() as u64;
        if done.is_multiple_of(step) {
            progress("merging", done, room);
        }
    }
    progress("merging", merges.len() as u64, room);
    merges
}

fn check_options(opts: &TrainOptions, alphabet: usize) -> Result<()> {
    if opts.vocab_size == 0 {
        return Err(Error::invalid("vocab_size must be at least 1"));
    }
    let mut seen = std::collections::HashSet::new();
    for s in &opts.special_tokens {
        if s.is_empty() {
            return Err(Error::invalid("a special token cannot be the empty string"));
        }
        if !seen.insert(s.as_str()) {
            return Err(Error::invalid(format!(
                "special token {s:?} is given twice"
            )));
        }
    }
    let floor = opts.special_tokens.len() + alphabet;
    if opts.vocab_size < floor {
        return Err(Error::invalid(format!(
            "vocab_size {} is smaller than the {} special tokens and the {alphabet}-symbol \
             initial alphabet",
            opts.vocab_size,
            opts.special_tokens.len()
        )));
    }
    Ok(())
}

fn added_tokens_json(specials: &[String]) -> Value {
    Value::Array(
        specials
            .iter()
            .enumerate()
            .map(|(id, s)| {
                json!({
                    "id": id, "content": s, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": true,
                })
            })
            .collect(),
    )
}

/// Trains a byte-level BPE tokenizer (GPT-2 style): special tokens first, then the 256 bytes,
/// then one token per merge. `pattern` is the split pattern (GPT-2's by default in the Python
/// API). The `tokenizer.json` written uses the ByteLevel pre-tokenizer for GPT-2's pattern and
/// a `Split` + ByteLevel sequence for any other.
pub fn train_bpe(
    texts: &[&str],
    pattern: &str,
    opts: &TrainOptions,
    progress: Progress<'_>,
) -> Result<Trained> {
    check_options(opts, 256)?;
    let splitter = Splitter::new(pattern)?;
    let counted = count_words(
        texts,
        |block, emit| splitter.split(block, |s, e| emit(&block.as_bytes()[s..e])),
        progress,
    )?;
    let first = opts.special_tokens.len() as u32;
    let mut tokens: Vec<Vec<u8>> = opts
        .special_tokens
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    tokens.extend((0..=255u8).map(|b| vec![b]));
    let mut lookup: FxHashMap<Vec<u8>, u32> = FxHashMap::default();
    for (i, t) in tokens.iter().enumerate() {
        // A special token is reused by a merge that spells it only when the vocabulary writes
        // both the same way (its text is made of byte-level characters standing for themselves).
        if i >= first as usize || byte_level::bytes_to_string(t).as_bytes() == t.as_slice() {
            lookup.entry(t.clone()).or_insert(i as u32);
        }
    }
    let counts: Vec<u64> = counted.iter().map(|(_, c)| *c).collect();
    let mut words: Vec<Vec<u32>> = counted
        .iter()
        .map(|(w, _)| w.iter().map(|&b| first + u32::from(b)).collect())
        .collect();
    let distinct_words = words.len();
    drop(counted);
    let merges = learn_merges(
        &mut words,
        &counts,
        &mut tokens,
        &mut lookup,
        |x, y| [x, y].concat(),
        opts,
        progress,
    );

    let as_chars = |id: u32| byte_level::bytes_to_string(&tokens[id as usize]);
    let mut vocab = Map::new();
    for (i, s) in opts.special_tokens.iter().enumerate() {
        vocab.insert(s.clone(), json!(i));
    }
    for id in first..tokens.len() as u32 {
        vocab.insert(as_chars(id), json!(id));
    }
    let merges_json: Vec<Value> = merges
        .iter()
        .map(|&(a, b)| json!([as_chars(a), as_chars(b)]))
        .collect();
    let byte_level_step = |use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
               "use_regex": use_regex})
    };
    let pre_tokenizer = if pattern == GPT2_PATTERN || pattern == GPT2_PATTERN_HF {
        byte_level_step(true)
    } else {
        // The spelling that Oniguruma, which tokenizers runs Split patterns on, reads the same.
        let pattern = if pattern == CL100K_PATTERN {
            CL100K_PATTERN_ONIG
        } else {
            pattern
        };
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
             "invert": false},
            byte_level_step(false),
        ]})
    };
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens_json(&opts.special_tokens),
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
                           "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false,
            "vocab": Value::Object(vocab), "merges": merges_json,
        },
    });
    Ok(Trained {
        json: to_json(&doc)?,
        vocab_size: tokens.len(),
        merges: merges.len(),
        distinct_words,
    })
}

/// What `train_wordpiece` takes beyond [`TrainOptions`].
#[derive(Debug, Clone)]
pub struct WordPieceOptions {
    /// BertNormalizer's `lowercase` (accents are stripped with it, as in BERT uncased).
    pub lowercase: bool,
    /// The prefix of symbols inside a word (`"##"`).
    pub prefix: String,
    /// The unknown token; it must be one of the special tokens.
    pub unk_token: String,
    /// Words longer than this many characters encode as the unknown token.
    pub max_input_chars_per_word: usize,
}

/// Trains a BERT WordPiece tokenizer: BertNormalizer and BertPreTokenizer as BERT configures
/// them, special tokens first, then the alphabet (every character, then the `##`-prefixed ones
/// seen inside words, each in code-point order), then one token per merge. The
/// post-processor is `[CLS] $A [SEP]` when both tokens are special tokens.
///
/// The alphabet holds every character of the corpus, so only characters never seen in
/// training encode as the unknown token.
pub fn train_wordpiece(
    texts: &[&str],
    opts: &TrainOptions,
    wp: &WordPieceOptions,
    progress: Progress<'_>,
) -> Result<Trained> {
    check_options(opts, 0)?;
    if !opts.special_tokens.contains(&wp.unk_token) {
        return Err(Error::invalid(format!(
            "the unknown token {:?} must be one of the special tokens",
            wp.unk_token
        )));
    }
    let normalizer = BertNormalizer {
        lowercase: wp.lowercase,
        ..BertNormalizer::default()
    };
    let counted = count_words(
        texts,
        |block, emit| {
            let mut norm = String::with_capacity(block.len());
            normalizer.normalize(block, &mut norm, None);
            bert::pre_tokenize(&norm, |s, e| emit(&norm.as_bytes()[s..e]));
        },
        progress,
    )?;
    // The alphabet, as tokenizers' trainer makes it: every character of the corpus (so that a
    // word may start with any of them), then those seen inside words with the prefix, each set
    // in code-point order.
    let mut chars = std::collections::BTreeSet::new();
    let mut inner = std::collections::BTreeSet::new();
    for (w, _) in &counted {
        let w =
            std::str::from_utf8(w).map_err(|e| Error::Internal(format!("non-UTF-8 word: {e}")))?;
        let mut cs = w.chars();
        chars.extend(cs.next());
        for c in cs {
            chars.insert(c);
            inner.insert(c);
        }
    }
    let mut tokens: Vec<Vec<u8>> = opts
        .special_tokens
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let mut lookup: FxHashMap<Vec<u8>, u32> = FxHashMap::default();
    for (i, t) in tokens.iter().enumerate() {
        lookup.insert(t.clone(), i as u32);
    }
    let alphabet = chars
        .iter()
        .map(|c| c.to_string())
        .chain(inner.iter().map(|c| format!("{}{c}", wp.prefix)));
    for sym in alphabet {
        let bytes = sym.into_bytes();
        if !lookup.contains_key(&bytes) {
            lookup.insert(bytes.clone(), tokens.len() as u32);
            tokens.push(bytes);
        }
    }
    if tokens.len() > opts.vocab_size {
        return Err(Error::invalid(format!(
            "vocab_size {} is smaller than the {} special tokens and characters of the corpus",
            opts.vocab_size,
            tokens.len()
        )));
    }
    let counts: Vec<u64> = counted.iter().map(|(_, c)| *c).collect();
    let mut words: Vec<Vec<u32>> = Vec::with_capacity(counted.len());
    let mut buf = [0u8; 4];
    for (w, _) in &counted {
        let w = std::str::from_utf8(w).map_err(|e| Error::Internal(format!("{e}")))?;
        let mut syms = Vec::with_capacity(w.len());
        for (i, c) in w.chars().enumerate() {
            let id = if i == 0 {
                lookup.get(c.encode_utf8(&mut buf).as_bytes())
            } else {
                lookup.get(format!("{}{c}", wp.prefix).as_bytes())
            };
            syms.push(*id.ok_or_else(|| Error::Internal(format!("{c:?} not in the alphabet")))?);
        }
        words.push(syms);
    }
    let distinct_words = words.len();
    drop(counted);
    let prefix = wp.prefix.as_bytes().to_vec();
    let merges = learn_merges(
        &mut words,
        &counts,
        &mut tokens,
        &mut lookup,
        |x, y| {
            let tail = y.strip_prefix(prefix.as_slice()).unwrap_or(y);
            [x, tail].concat()
        },
        opts,
        progress,
    );

    let mut vocab = Map::new();
    for (id, t) in tokens.iter().enumerate() {
        let t = String::from_utf8(t.clone()).map_err(|e| Error::Internal(format!("{e}")))?;
        vocab.insert(t, json!(id));
    }
    let special = |s: &str| {
        opts.special_tokens
            .iter()
            .position(|t| t == s)
            .map(|i| (s.to_owned(), i))
    };
    let post_processor = match (special("[CLS]"), special("[SEP]")) {
        (Some((cls, cls_id)), Some((sep, sep_id))) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": cls, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": sep, "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": cls, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": sep, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": sep, "type_id": 1}}],
            "special_tokens": {
                cls.clone(): {"id": cls, "ids": [cls_id], "tokens": [cls]},
                sep.clone(): {"id": sep, "ids": [sep_id], "tokens": [sep]},
            },
        }),
        _ => Value::Null,
    };
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens_json(&opts.special_tokens),
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
                       "handle_chinese_chars": true, "strip_accents": null,
                       "lowercase": wp.lowercase},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": post_processor,
        "decoder": {"type": "WordPiece", "prefix": wp.prefix, "cleanup": true},
        "model": {
            "type": "WordPiece", "unk_token": wp.unk_token,
            "continuing_subword_prefix": wp.prefix,
            "max_input_chars_per_word": wp.max_input_chars_per_word,
            "vocab": Value::Object(vocab),
        },
    });
    Ok(Trained {
        json: to_json(&doc)?,
        vocab_size: tokens.len(),
        merges: merges.len(),
        distinct_words,
    })
}

fn to_json(doc: &Value) -> Result<String> {
    serde_json::to_string_pretty(doc)
        .map_err(|e| Error::Internal(format!("cannot write tokenizer.json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{Allowed, Tokenizer};

    fn quiet(_: &str, _: u64, _: u64) {}

    fn opts(vocab_size: usize, specials: &[&str]) -> TrainOptions {
        TrainOptions {
            vocab_size,
            min_frequency: 2,
            special_tokens: specials.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    const TEXT: &str = "low lower lowest newer newest wider widest low low newer\n\
                        the cat sat on the mat; the cat ate the rat.\n";

    #[test]
    fn bpe_learns_the_most_frequent_pairs_first() {
        let t = train_bpe(
            &[TEXT],
            GPT2_PATTERN,
            &opts(256 + 1 + 3, &["<|eot|>"]),
            &quiet,
        )
        .unwrap();
        assert_eq!(t.merges, 3);
        let v: Value = serde_json::from_str(&t.json).unwrap();
        // " t" + "he" style pairs: the first merge is the most frequent pair in the pieces.
        let merges = v["model"]["merges"].as_array().unwrap();
        assert_eq!(merges.len(), 3);
        assert_eq!(v["added_tokens"][0]["content"], "<|eot|>");
        assert_eq!(v["model"]["vocab"]["<|eot|>"], 0);
        let tok = Tokenizer::from_hf_json("trained", t.json.as_bytes()).unwrap();
        assert_eq!(tok.vocab_size(), 260);
        let ids = tok.encode("the lowest newer", true, Allowed::None);
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            "the lowest newer".to_owned()
        );
    }

    #[test]
    fn merge_counts_stay_exact_through_repeats() {
        // "aaaa" and "abab": overlapping occurrences of the merged pair.
        let corpus = "aaaa aaaa aaaa abab abab abab aaa aaa";
        let t = train_bpe(&[corpus], GPT2_PATTERN, &opts(256 + 6, &[]), &quiet).unwrap();
        let tok = Tokenizer::from_hf_json("trained", t.json.as_bytes()).unwrap();
        for w in ["aaaa", " aaaa", " abab", " aaa"] {
            let ids = tok.encode(w, false, Allowed::None);
            assert_eq!(tok.decode(&ids, false).unwrap(), w);
            assert!(ids.len() <= 2, "{w:?} -> {ids:?}");
        }
    }

    #[test]
    fn counting_is_the_same_in_blocks() {
        let big: String = (0..20_000)
            .map(|i| format!("line {i} of text\n  indented {}\n", i % 7))
            .collect();
        assert!(blocks(&big).len() > 1);
        assert_eq!(blocks(&big).concat(), big);
        let whole = count_words(
            &[big.as_str()],
            |b, emit| Splitter::Gpt2.split(b, |s, e| emit(&b.as_bytes()[s..e])),
            &quiet,
        )
        .unwrap();
        let mut direct: FxHashMap<Vec<u8>, u64> = FxHashMap::default();
        Splitter::Gpt2.split(&big, |s, e| {
            *direct.entry(big.as_bytes()[s..e].to_vec()).or_insert(0) += 1;
        });
        let mut direct: Vec<_> = direct.into_iter().collect();
        direct.sort();
        assert_eq!(whole, direct);
    }

    #[test]
    fn wordpiece_vocabulary_and_model() {
        let wp = WordPieceOptions {
            lowercase: true,
            prefix: "##".into(),
            unk_token: "[UNK]".into(),
            max_input_chars_per_word: 100,
        };
        let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
        let t = train_wordpiece(&[TEXT], &opts(60, &specials), &wp, &quiet).unwrap();
        let tok = Tokenizer::from_hf_json("trained", t.json.as_bytes()).unwrap();
        let ids = tok.encode("The cat", true, Allowed::None);
        assert_eq!(ids.first(), Some(&2));
        assert_eq!(ids.last(), Some(&3));
        assert_eq!(tok.decode(&ids, true).unwrap(), "the cat");
        // A character never seen is unknown.
        assert_eq!(tok.encode("q", false, Allowed::None), vec![1]);
    }

    #[test]
    fn bad_options_are_errors() {
        assert!(train_bpe(&[TEXT], GPT2_PATTERN, &opts(100, &[]), &quiet).is_err());
        assert!(train_bpe(&[TEXT], GPT2_PATTERN, &opts(300, &["a", "a"]), &quiet).is_err());
        assert!(train_bpe(&[TEXT], GPT2_PATTERN, &opts(300, &[""]), &quiet).is_err());
        assert!(train_bpe(&[TEXT], r"\p{L}++", &opts(300, &[]), &quiet).is_err());
        let wp = WordPieceOptions {
            lowercase: true,
            prefix: "##".into(),
            unk_token: "[UNK]".into(),
            max_input_chars_per_word: 100,
        };
        assert!(train_wordpiece(&[TEXT], &opts(100, &["[PAD]"]), &wp, &quiet).is_err());
        assert!(train_wordpiece(&[TEXT], &opts(3, &["[UNK]"]), &wp, &quiet).is_err());
    }
}
