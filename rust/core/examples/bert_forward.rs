//! Times the BERT encoder's forward pass on token ids alone (no tokenizer, no Python): a
//! harness for profilers (`perf record`) and for comparing kernels.
//!
//! cargo run --release -p ferrolm-core --example bert_forward -- MODEL_DIR [fp32|int8|int4]
//!     [SEQ] [BATCH] [REPEATS]
//!
//! Each sequence is [CLS] + SEQ − 2 ids + [SEP] (ids 101 / 102, BERT's uncased vocabulary);
//! the median and the fastest of REPEATS calls are printed.

use std::path::Path;
use std::time::Instant;

use ferrolm_core::model::bert::Bert;
use ferrolm_core::quant::QType;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: bert_forward MODEL_DIR [fp32|int8|int4] [SEQ] [BATCH] [REPEATS]".into(),
        );
    };
    let quant = match rest.first().map(String::as_str) {
        None | Some("fp32") => None,
        Some(q) => Some(QType::parse(q).ok_or_else(|| format!("unknown format {q}"))?),
    };
    let num = |i: usize, default: usize| rest.get(i).map_or(Ok(default), |s| s.parse());
    let (seq, batch, repeats) = (num(1, 14)?, num(2, 1)?, num(3, 200)?);
    let model = Bert::load_with(Path::new(dir), quant, None)?;
    let mut ids = Vec::with_capacity(seq * batch);
    let mut state = 0x2545_f491_u32;
    for _ in 0..batch {
        ids.push(101);
        for _ in 2..seq {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            ids.push(1996 + state % 20000);
        }
        ids.push(102);
    }
    let types = vec![0u32; ids.len()];
    let mask = vec![1u8; ids.len()];
    for _ in 0..repeats.div_ceil(10) {
        model.forward(&ids, &types, &mask, batch, seq)?;
    }
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        model.forward(&ids, &types, &mask, batch, seq)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{} × {seq} tokens, {}: median {:.3} ms, fastest {:.3} ms",
        batch,
        quant.map_or("fp32", QType::name),
        times[times.len() / 2],
        times[0]
    );
    Ok(())
}
