//! `config.json` files of every architecture.
#![no_main]
use ferrolm_core::model::bert::BertConfig;
use ferrolm_core::model::gpt2::Gpt2Config;
use ferrolm_core::model::llama::LlamaConfig;
use ferrolm_core::model::lstm::LstmConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Gpt2Config::from_json("fuzz", data);
    let _ = LlamaConfig::from_json("fuzz", data);
    let _ = LstmConfig::from_json("fuzz", data);
    let _ = BertConfig::from_json("fuzz", data);
});
