//! tiktoken rank files (base64 token, rank per line).
#![no_main]
use ferrolm_core::tokenizer::{Allowed, Tokenizer};
use libfuzzer_sys::fuzz_target;

const GPT2: &str = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

fuzz_target!(|data: &[u8]| {
    let specials = vec![("<|endoftext|>".to_owned(), 1_000_000)];
    if let Ok(tok) = Tokenizer::from_tiktoken_bytes("fuzz", data, GPT2, specials) {
        let ids = tok.encode("Hello world <|endoftext|> 1234", false, Allowed::All);
        let _ = tok.decode(&ids, false);
    }
});
