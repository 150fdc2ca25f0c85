//! Times one thread's quantized matmul kernel on a matrix that stays in cache: GOPS against
//! the CPU's integer dot-product peak (a harness for tuning the kernels).
//!
//! cargo run --release -p ferrolm-core --example qgemm_speed -- [q8_0|q4_0|q4_1] [M] [N] [K]
//!     [narrow]
//!
//! `narrow`: 7-bit activations ([`QActs::narrow`], what the BERT encoders use where the
//! kernels prefer them).

use std::time::Instant;

use ferrolm_core::kernels;
use ferrolm_core::quant::{QActs, QMatrix, QType};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let ty = QType::parse(args.get(1).map_or("q8_0", String::as_str)).ok_or("unknown format")?;
    let num = |i: usize, default: usize| args.get(i).map_or(Ok(default), |s| s.parse());
    let (m, n, k) = (num(2, 14)?, num(3, 1536)?, num(4, 384)?);
    let mut state = 0x9e37_79b9_u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 2001) as f32 / 1000.0 - 1.0
    };
    let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
    let x: Vec<f32> = (0..m * k).map(|_| next()).collect();
    let q = QMatrix::quantize(ty, &w, n, k, false);
    let kern = kernels::get();
    let mut qa = QActs {
        narrow: args.get(5).is_some_and(|a| a == "narrow"),
        ..QActs::default()
    };
    qa.quantize(kern, &x, m, k);
    let mut out = vec![0.0f32; m * n];
    let calls = (2e10 / (m * n * k) as f64).ceil() as usize;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..calls {
            // SAFETY: `out` is m × n, the whole matrix and every row of `qa`.
            unsafe { kern.qgemm(&q, 0, q.groups(), &qa, 0, m, out.as_mut_ptr(), n) };
        }
        best = best.min(t.elapsed().as_secs_f64() / calls as f64);
    }
    let ops = 2.0 * (m * n * k) as f64;
    println!(
        "{} m={m} n={n} k={k} ({}{}): {:.2} us per call, {:.0} GOPS",
        ty.name(),
        kern.name,
        if qa.narrow { ", 7-bit activations" } else { "" },
        best * 1e6,
        ops / best / 1e9
    );
    Ok(())
}
