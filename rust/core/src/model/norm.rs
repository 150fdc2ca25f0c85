//! Normalizations over each row: LayerNorm (GPT-2) and RMSNorm (Llama).

use rayon::prelude::*;

use crate::model::act::SERIAL_ELEMS;
use crate::model::weights::Norm;

/// `out = (x - mean) / std · w + b` per row of `n.w.len()` values.
pub(crate) fn layer_norm(x: &[f32], out: &mut [f32], n: &Norm, eps: f32) {
    let (w, b) = (n.w.values(), n.b.values());
    let d = w.len();
    if x.len() <= SERIAL_ELEMS {
        for (o, row) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            norm_row(row, o, w, b, eps);
        }
    } else {
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(o, row)| norm_row(row, o, w, b, eps));
    }
}

#[inline]
fn norm_row(row: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for (((o, &v), &g), &bb) in out.iter_mut().zip(row).zip(w).zip(b) {
        *o = (v - mean) * inv * g + bb;
    }
}

/// `out = x / rms(x) · g` per row of `g.len()`.
pub(crate) fn rms_norm(x: &[f32], out: &mut [f32], g: &[f32], eps: f32) {
    let d = g.len();
    let row = |(o, x): (&mut [f32], &[f32])| {
        let ss: f32 = x.iter().map(|v| v * v).sum();
        let inv = 1.0 / (ss / d as f32 + eps).sqrt();
        for ((o, &v), &w) in o.iter_mut().zip(x).zip(g) {
            *o = w * (v * inv);
        }
    };
    if x.len() <= SERIAL_ELEMS {
        out.chunks_exact_mut(d).zip(x.chunks_exact(d)).for_each(row);
    } else {
        out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(row);
    }
}

/// RMSNorm over each of `heads` heads of `hd` values starting at column `off` of every row of
/// `qkv` (`stride` values a row), in place, with the gain `g` (`hd` values): Qwen3's and
/// Gemma 3's query and key norms.
pub(crate) fn rms_norm_heads(
    qkv: &mut [f32],
    stride: usize,
    (off, heads, hd): (usize, usize, usize),
    g: &[f32],
    eps: f32,
) {
    let run = |row: &mut [f32]| {
        for x in row[off..off + heads * hd].chunks_exact_mut(hd) {
            let ss: f32 = x.iter().map(|v| v * v).sum();
            let inv = 1.0 / (ss / hd as f32 + eps).sqrt();
            for (v, &w) in x.iter_mut().zip(g) {
                *v = w * (*v * inv);
            }
        }
    };
    if qkv.len() <= SERIAL_ELEMS {
        qkv.chunks_exact_mut(stride).for_each(run);
    } else {
        qkv.par_chunks_mut(stride).for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::safetensors::{F32Data, F32Tensor};

    fn tensor(v: Vec<f32>) -> F32Tensor {
        let n = v.len();
        F32Tensor {
            data: F32Data::Owned(v),
            shape: vec![n],
        }
    }

    /// Row `i` of a test input: values of both signs and several magnitudes.
    fn rows(n: usize, d: usize) -> Vec<f32> {
        (0..n * d)
            .map(|i| ((i * 7919) % 113) as f32 / 17.0 - 3.0)
            .collect()
    }

    #[test]
    fn layer_norm_matches_the_definition() {
        let d = 48;
        let x = rows(3, d);
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 / 64.0).collect();
        let b: Vec<f32> = (0..d).map(|i| i as f32 / 100.0 - 0.2).collect();
        let n = Norm {
            w: tensor(w.clone()),
            b: tensor(b.clone()),
        };
        let mut out = vec![0.0; x.len()];
        layer_norm(&x, &mut out, &n, 1e-5);
        for (row, o) in x.chunks(d).zip(out.chunks(d)) {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64;
            let var = row
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / d as f64;
            for i in 0..d {
                let want = (f64::from(row[i]) - mean) / (var + 1e-5).sqrt() * f64::from(w[i])
                    + f64::from(b[i]);
                assert!(
                    (f64::from(o[i]) - want).abs() < 1e-5,
                    "{i}: {} vs {want}",
                    o[i]
                );
            }
        }
    }

    #[test]
    fn rms_norm_of_rows_and_of_heads_match_the_definition() {
        let (d, hd) = (64, 16);
        let x = rows(2, d);
        let g: Vec<f32> = (0..d).map(|i| 0.5 + (i % 16) as f32 / 16.0).collect();
        let want = |row: &[f32], g: &[f32]| -> Vec<f64> {
            let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / row.len() as f64;
            let inv = 1.0 / (ms + 1e-6).sqrt();
            row.iter()
                .zip(g)
                .map(|(&v, &w)| f64::from(v) * inv * f64::from(w))
                .collect()
        };
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &mut out, &g, 1e-6);
        for (row, o) in x.chunks(d).zip(out.chunks(d)) {
            for (a, b) in o.iter().zip(want(row, &g)) {
                assert!((f64::from(*a) - b).abs() < 1e-5);
            }
        }
        // Heads 1 and 2 of each row (columns 16..48) normalized on their own; the rest kept.
        let mut y = x.clone();
        rms_norm_heads(&mut y, d, (hd, 2, hd), &g[..hd], 1e-6);
        for (row, o) in x.chunks(d).zip(y.chunks(d)) {
            assert_eq!(&o[..hd], &row[..hd]);
            assert_eq!(&o[3 * hd..], &row[3 * hd..]);
            for h in 1..3 {
                let head = &row[h * hd..(h + 1) * hd];
                for (a, b) in o[h * hd..(h + 1) * hd].iter().zip(want(head, &g[..hd])) {
                    assert!((f64::from(*a) - b).abs() < 1e-5);
                }
            }
        }
    }
}
