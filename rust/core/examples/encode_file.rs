//! Encodes a text file with GPT-2's ranks, repeatedly, and prints the throughput: a harness for
//! profilers (`perf record`, `valgrind --tool=callgrind`), free of Python.
//!
//! cargo run --release -p ferrolm-core --example encode_file -- RANKS TEXT [REPEATS]

use std::time::Instant;

use ferrolm_core::tokenizer::split::GPT2_PATTERN;
use ferrolm_core::tokenizer::BpeTokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, ranks, text, rest @ ..] = args.as_slice() else {
        return Err("usage: encode_file RANKS TEXT [REPEATS]".into());
    };
    let repeats: usize = rest.first().map_or(Ok(10), |r| r.parse())?;
    let tok =
        BpeTokenizer::from_tiktoken_bytes(ranks, &std::fs::read(ranks)?, GPT2_PATTERN, vec![])?;
    let text = std::fs::read_to_string(text)?;
    let mut n = 0;
    let t0 = Instant::now();
    for _ in 0..repeats {
        n = tok.encode_ordinary(&text).len();
    }
    let secs = t0.elapsed().as_secs_f64() / repeats as f64;
    println!("{n} tokens, {:.1} MB/s", text.len() as f64 / secs / 1e6);
    // The splitter alone, for comparison.
    let splitter = ferrolm_core::tokenizer::split::Splitter::new(GPT2_PATTERN)?;
    let t0 = Instant::now();
    let mut pieces = 0;
    for _ in 0..repeats {
        pieces = 0;
        splitter.split(&text, |_, _| pieces += 1);
    }
    let secs = t0.elapsed().as_secs_f64() / repeats as f64;
    println!(
        "split only: {pieces} pieces, {:.1} MB/s",
        text.len() as f64 / secs / 1e6
    );
    Ok(())
}
