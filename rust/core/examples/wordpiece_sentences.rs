//! Encodes each line of a text file with a BERT WordPiece vocabulary, one call per line, and
//! prints the time per line: a Python-free harness for profilers (`perf record`).
//!
//! cargo run --release -p ferrolm-core --example wordpiece_sentences -- VOCAB_TXT TEXT [REPEATS]

use std::time::Instant;

use ferrolm_core::tokenizer::{Allowed, Tokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, vocab, text, rest @ ..] = args.as_slice() else {
        return Err("usage: wordpiece_sentences VOCAB_TXT TEXT [REPEATS]".into());
    };
    let repeats: usize = rest.first().map_or(Ok(10), |r| r.parse())?;
    let tok = Tokenizer::bert_from_vocab(vocab, &std::fs::read(vocab)?, true)?;
    let text = std::fs::read_to_string(text)?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    let mut n = 0;
    let t0 = Instant::now();
    for _ in 0..repeats {
        n = 0;
        for line in &lines {
            n += tok.encode(line, true, Allowed::None).len();
        }
    }
    let secs = t0.elapsed().as_secs_f64() / repeats as f64;
    println!(
        "{} lines, {n} ids: {:.2} us per line, {:.1} MB/s",
        lines.len(),
        secs / lines.len() as f64 * 1e6,
        bytes as f64 / secs / 1e6
    );
    Ok(())
}
