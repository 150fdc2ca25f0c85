//! `tokenizer.json` documents: parsed, and when accepted, used.
#![no_main]
use ferrolm_core::tokenizer::{Allowed, Tokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tok) = Tokenizer::from_hf_json("fuzz", data) {
        for text in [
            "",
            "Hello, world!",
            "  x\n\n1234 ünïcödé 漢字 🎉",
            "<|endoftext|>",
        ] {
            let ids = tok.encode(text, true, Allowed::All);
            let _ = tok.decode(&ids, false);
        }
        let _ = tok.decode(&[0, 1, 2, u32::MAX], true);
    }
});
