//! `encode` on arbitrary text and `decode` on arbitrary id lists, with GPT-2's ranks.
#![no_main]
use std::sync::OnceLock;

use ferrolm_core::tokenizer::{Allowed, Tokenizer};
use libfuzzer_sys::fuzz_target;

const GPT2: &str = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
static RANKS: &[u8] = include_bytes!("../../python/ferrolm/data/gpt2.tiktoken");

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let specials = vec![("<|endoftext|>".to_owned(), 50256)];
        Tokenizer::from_tiktoken_bytes("gpt2", RANKS, GPT2, specials).expect("bundled ranks")
    })
}

fuzz_target!(|data: &[u8]| {
    let tok = tokenizer();
    let text = String::from_utf8_lossy(data);
    let ids = tok.encode(&text, false, Allowed::All);
    if let Ok(back) = tok.decode_bytes(&ids, false) {
        // Byte-level BPE round-trips whatever text it was given.
        assert_eq!(back, text.as_bytes());
    }
    let ids: Vec<u32> = data
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % 60_000)
        .collect();
    let _ = tok.decode(&ids, false);
});
