//! safetensors files: header, offsets, dtypes; every tensor read back as f32 and as bytes.
#![no_main]
use ferrolm_core::io::safetensors::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path =
        std::env::temp_dir().join(format!("ferrolm-fuzz-{}.safetensors", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(ck) = Checkpoint::open_files(std::slice::from_ref(&path)) {
        let names: Vec<String> = ck.names().map(str::to_owned).collect();
        for name in &names {
            if let Some(shape) = ck.shape(name).map(<[usize]>::to_vec) {
                let _ = ck.f32(name, &shape);
                let n: usize = shape.iter().product();
                let _ = ck.bytes(name, n);
            }
        }
    }
});
