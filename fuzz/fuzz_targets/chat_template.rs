//! Chat templates (a GGUF file's `tokenizer.chat_template` is untrusted text) rendered with a
//! conversation.
#![no_main]
use ferrolm_core::tokenizer::chat::{ChatTemplate, FUEL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    // A twentieth of the fuel: a crafted template that spends all of it (0.3-0.5 s in a
    // release build) takes 10-15 times as long under the sanitizer and coverage, past
    // libFuzzer's 10 s timeout; the bound is linear in the fuel, so the smaller one exercises
    // the same refusals.
    if let Ok(t) = ChatTemplate::with_fuel(src, FUEL / 20) {
        let ctx = serde_json::json!({
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
            "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>",
        });
        let _ = t.render(&ctx);
    }
});
