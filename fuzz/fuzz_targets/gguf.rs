//! GGUF files: header, metadata, tensor infos and data; every tensor read, the tokenizer and a
//! Llama model built from what the file claims.
#![no_main]
use ferrolm_core::io::gguf::Gguf;
use ferrolm_core::model::registry;
use ferrolm_core::quant::QType;
use ferrolm_core::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("ferrolm-fuzz-{}.gguf", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let Ok(g) = Gguf::open(&path) else { return };
    for t in &g.tensors {
        let dims = t.dims.clone();
        let _ = g.f32(&t.name, &dims);
        if dims.len() == 2 {
            let _ = g.qmatrix(&t.name, dims[0], dims[1], QType::Q8_0);
        }
    }
    let _ = Tokenizer::from_gguf(&g);
    let _ = registry::load_gguf(&path, None, None);
});
