//! Rotary position embeddings: the inverse frequencies (with their scalings for long
//! contexts) and the rotation of query and key heads.

use rayon::prelude::*;

use crate::model::act::SERIAL_ELEMS;

/// How RoPE frequencies are rescaled for contexts longer than the model was trained on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Every frequency divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth ramp between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
}

/// RoPE's inverse frequencies for heads of `hd` values, `hd / 2` of them: `theta^(-2i/hd)`,
/// rescaled as `scaling` says and divided by `factors` (a GGUF file's `rope_freqs`) when given.
pub(crate) fn inv_freq(
    theta: f32,
    hd: usize,
    scaling: Option<RopeScaling>,
    factors: Option<&[f32]>,
) -> Vec<f32> {
    (0..hd / 2)
        .map(|i| {
            let base = 1.0 / f64::from(theta).powf((2 * i) as f64 / hd as f64);
            let mut f = base as f32;
            match scaling {
                None => {}
                Some(RopeScaling::Linear { factor }) => f /= factor,
                Some(RopeScaling::Llama3 {
                    factor,
                    low_freq_factor: lo,
                    high_freq_factor: hi,
                    original_max_position_embeddings: old,
                }) => {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let (lo_wav, hi_wav) = (old / lo, old / hi);
                    if wavelen > lo_wav {
                        f /= factor;
                    } else if wavelen >= hi_wav {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        f = (1.0 - smooth) * f / factor + smooth * f;
                    }
                }
            }
            if let Some(fs) = factors {
                f /= fs[i];
            }
            f
        })
        .collect()
}

/// Rotates the first `heads` heads of every row (the queries', then the keys') by the row's
/// angles: of each head of `hd` values, the first `rot` (all of them but for partial RoPE) in
/// pairs `(i, i + rot/2)`, as Hugging Face's `rotate_half`; `cos` and `sin` hold `rot / 2`
/// values per row.
pub(crate) fn rope(
    qkv: &mut [f32],
    stride: usize,
    heads: usize,
    (hd, rot): (usize, usize),
    cos: &[f32],
    sin: &[f32],
) {
    let half = rot / 2;
    let run = |(r, row): (usize, &mut [f32])| {
        let (c, s) = (
            &cos[r * half..(r + 1) * half],
            &sin[r * half..(r + 1) * half],
        );
        for h in 0..heads {
            let x = &mut row[h * hd..h * hd + rot];
            let (a, b) = x.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * c[i] - x2 * s[i];
                b[i] = x2 * c[i] + x1 * s[i];
            }
        }
    };
    if qkv.len() <= SERIAL_ELEMS {
        qkv.chunks_exact_mut(stride).enumerate().for_each(run);
    } else {
        qkv.par_chunks_mut(stride).enumerate().for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_each_pair_by_position_times_frequency() {
        let (hd, heads, stride) = (8, 2, 20);
        let f = inv_freq(100.0, hd, None, None);
        assert_eq!(f.len(), hd / 2);
        for (i, &fi) in f.iter().enumerate() {
            let want = 100f64.powf(-((2 * i) as f64) / hd as f64);
            assert!((f64::from(fi) - want).abs() < 1e-7);
        }
        let positions = [0usize, 3, 17];
        let half = hd / 2;
        let (mut cos, mut sin) = (vec![], vec![]);
        for &p in &positions {
            for &fi in &f {
                cos.push((p as f32 * fi).cos());
                sin.push((p as f32 * fi).sin());
            }
        }
        let x: Vec<f32> = (0..positions.len() * stride)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let mut y = x.clone();
        rope(&mut y, stride, heads, (hd, hd), &cos, &sin);
        for (r, &p) in positions.iter().enumerate() {
            let (a, b) = (
                &x[r * stride..(r + 1) * stride],
                &y[r * stride..(r + 1) * stride],
            );
            // Columns past the rotated heads are untouched.
            assert_eq!(&a[heads * hd..], &b[heads * hd..]);
            for h in 0..heads {
                for i in 0..half {
                    // rotate_half: (x_i, x_{i+hd/2}) turned by the angle p·f_i.
                    let ang = p as f64 * f64::from(f[i]);
                    let (x1, x2) = (f64::from(a[h * hd + i]), f64::from(a[h * hd + half + i]));
                    let want1 = x1 * ang.cos() - x2 * ang.sin();
                    let want2 = x2 * ang.cos() + x1 * ang.sin();
                    assert!((f64::from(b[h * hd + i]) - want1).abs() < 1e-5);
                    assert!((f64::from(b[h * hd + half + i]) - want2).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn partial_rope_rotates_the_first_dims_of_each_head_and_keeps_the_rest() {
        // Phi-3's partial_rotary_factor: 4 of each head's 8 values rotate, pairs (i, i + 2).
        let (hd, rot, heads, stride) = (8, 4, 2, 16);
        let f = inv_freq(100.0, rot, None, None);
        let p = 5.0f32;
        let cos: Vec<f32> = f.iter().map(|&fi| (p * fi).cos()).collect();
        let sin: Vec<f32> = f.iter().map(|&fi| (p * fi).sin()).collect();
        let x: Vec<f32> = (0..stride).map(|i| (i as f32 * 0.61).cos()).collect();
        let mut y = x.clone();
        rope(&mut y, stride, heads, (hd, rot), &cos, &sin);
        for h in 0..heads {
            let (a, b) = (&x[h * hd..(h + 1) * hd], &y[h * hd..(h + 1) * hd]);
            assert_eq!(&a[rot..], &b[rot..]);
            for i in 0..rot / 2 {
                let ang = f64::from(p) * f64::from(f[i]);
                let (x1, x2) = (f64::from(a[i]), f64::from(a[i + rot / 2]));
                assert!((f64::from(b[i]) - (x1 * ang.cos() - x2 * ang.sin())).abs() < 1e-5);
                assert!(
                    (f64::from(b[i + rot / 2]) - (x2 * ang.cos() + x1 * ang.sin())).abs() < 1e-5
                );
            }
        }
    }

    #[test]
    fn scalings_change_only_what_they_should() {
        let plain = inv_freq(10_000.0, 16, None, None);
        let linear = inv_freq(
            10_000.0,
            16,
            Some(RopeScaling::Linear { factor: 4.0 }),
            None,
        );
        for (p, l) in plain.iter().zip(&linear) {
            assert!((p / 4.0 - l).abs() < 1e-9);
        }
        // Llama 3: wavelengths above old/low are divided by the factor, below old/high kept.
        let old = 64.0;
        let scaled = inv_freq(
            10_000.0,
            16,
            Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: old,
            }),
            None,
        );
        for (p, s) in plain.iter().zip(&scaled) {
            let wavelen = 2.0 * std::f32::consts::PI / p;
            if wavelen < old / 4.0 {
                assert_eq!(p, s);
            } else if wavelen > old {
                assert!((p / 8.0 - s).abs() < 1e-9);
            } else {
                assert!(s < p && *s > p / 8.0);
            }
        }
        let factors = [2.0f32; 8];
        let divided = inv_freq(10_000.0, 16, None, Some(&factors));
        for (p, d) in plain.iter().zip(&divided) {
            assert!((p / 2.0 - d).abs() < 1e-9);
        }
    }
}
