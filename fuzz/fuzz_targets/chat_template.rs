//! Chat templates (a GGUF file's `tokenizer.chat_template` is untrusted text) rendered with a
//! conversation.
#![no_main]
use ferrolm_core::tokenizer::chat::ChatTemplate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = ChatTemplate::new(src) {
        let ctx = serde_json::json!({
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
            "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>",
        });
        let _ = t.render(&ctx);
    }
});
