//! GPT-2 `vocab.json` + `merges.txt` (the input split at its first NUL byte).
#![no_main]
use ferrolm_core::tokenizer::{Allowed, Tokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (vocab, merges) = (&data[..cut], data.get(cut + 1..).unwrap_or(&[]));
    if let Ok(tok) = Tokenizer::from_gpt2_files("fuzz", vocab, merges) {
        let ids = tok.encode("Hello world, 1234!", false, Allowed::All);
        let _ = tok.decode(&ids, false);
    }
});
