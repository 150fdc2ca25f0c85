//! BERT `vocab.txt` files: parsed, and when accepted, used.
#![no_main]
use ferrolm_core::tokenizer::{Allowed, Tokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tok) = Tokenizer::bert_from_vocab("fuzz", data, true) {
        let ids = tok.encode("Hello, world! unaffable ünïcödé 漢字", true, Allowed::All);
        let _ = tok.decode(&ids, true);
    }
});
