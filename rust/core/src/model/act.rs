//! Activations and element-wise steps: the MLP's nonlinearities (GELU exact and tanh, ReLU,
//! quick GELU, SiLU), the gated MLP's `act(gate) * up`, and the residual add.

use rayon::prelude::*;

use crate::kernels;

/// The activation of the MLP (`activation_function` in config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact one, with erf.
    Gelu,
    Relu,
    /// `quick_gelu`: `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            "quick_gelu" => Activation::QuickGelu,
            "silu" | "swish" => Activation::Silu,
            _ => return None,
        })
    }

    #[inline]
    pub(crate) fn apply(self, x: f32) -> f32 {
        match self {
            Activation::GeluTanh => {
                const C: f32 = 0.797_884_6; // sqrt(2 / pi)
                0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
            }
            Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2)),
            Activation::Relu => x.max(0.0),
            Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
            Activation::Silu => x / (1.0 + (-x).exp()),
        }
    }
}

/// erf to f32 precision (Abramowitz–Stegun 7.1.26 is too coarse; this is a minimax rational
/// approximation evaluated in f64).
pub(crate) fn erf(x: f32) -> f32 {
    let x = f64::from(x);
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    // Numerical Recipes' erfc, |error| < 1.2e-7.
    let y = t
        * (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    (if x >= 0.0 { 1.0 - y } else { y - 1.0 }) as f32
}

/// `x = act(x)` element-wise: the vectorized kernels for the GELUs, on the pool when large.
pub(crate) fn activate(kern: &kernels::Kernels, act: Activation, x: &mut [f32]) {
    let apply = |ch: &mut [f32]| act_in_place(kern, act, ch);
    if x.len() <= SERIAL_ELEMS {
        apply(x);
    } else {
        x.par_chunks_mut(4096).for_each(apply);
    }
}

/// `x = act(x)` element-wise on this thread (each value's result does not depend on where it
/// falls in `x`: the kernels run a slice's last values through their vector code too).
pub(crate) fn act_in_place(kern: &kernels::Kernels, act: Activation, x: &mut [f32]) {
    match act {
        Activation::GeluTanh => (kern.gelu_tanh)(x),
        Activation::Gelu => (kern.gelu_erf)(x),
        _ => x.iter_mut().for_each(|v| *v = act.apply(*v)),
    }
}

/// Element-wise work up to this size runs on the calling thread: waking the pool's other
/// threads (a futex wake and a steal, tens of microseconds) costs more than it saves, and a
/// decoded token has a dozen such steps per layer.
pub(crate) const SERIAL_ELEMS: usize = 1 << 14;

pub(crate) fn add_in(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// The gated MLP's activation: `out[r] = act(gate[r]) * up[r]` for rows `gu[r] = [gate | up]`
/// of `2 × inner` (SwiGLU with SiLU, GeGLU with a GELU).
pub(crate) fn gated(
    kern: &kernels::Kernels,
    act: Activation,
    gu: &[f32],
    out: &mut [f32],
    inner: usize,
) {
    let run = |(a, g): (&mut [f32], &[f32])| {
        let (gate, up) = g.split_at(inner);
        if act == Activation::Silu {
            // silu(x) = x / (1 + exp(-x)), exp vectorized.
            for (o, &x) in a.iter_mut().zip(gate) {
                *o = -x;
            }
            (kern.exp)(a);
            for ((o, &x), &u) in a.iter_mut().zip(gate).zip(up) {
                *o = x / (1.0 + *o) * u;
            }
        } else {
            a.copy_from_slice(gate);
            act_in_place(kern, act, a);
            for (o, &u) in a.iter_mut().zip(up) {
                *o *= u;
            }
        }
    };
    if out.len() <= SERIAL_ELEMS {
        out.chunks_exact_mut(inner)
            .zip(gu.chunks_exact(2 * inner))
            .for_each(run);
    } else {
        out.par_chunks_mut(inner)
            .zip(gu.par_chunks(2 * inner))
            .for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gated_is_act_of_gate_times_up() {
        let kern = kernels::get();
        let inner = 40;
        let gu: Vec<f32> = (0..3 * 2 * inner)
            .map(|i| ((i * 31) % 97) as f32 / 12.0 - 4.0)
            .collect();
        for act in [Activation::Silu, Activation::GeluTanh, Activation::Gelu] {
            let mut out = vec![0.0; 3 * inner];
            gated(kern, act, &gu, &mut out, inner);
            for (o, row) in out.chunks(inner).zip(gu.chunks(2 * inner)) {
                let (gate, up) = row.split_at(inner);
                for i in 0..inner {
                    let want = act.apply(gate[i]) * up[i];
                    assert!((o[i] - want).abs() < 1e-5 * (1.0 + want.abs()), "{act:?}");
                }
            }
        }
    }

    #[test]
    fn erf_and_activations() {
        for (x, want) in [
            (0.0, 0.0),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
        ] {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x})");
        }
        assert!((Activation::GeluTanh.apply(1.0) - 0.841_192).abs() < 1e-5);
        assert!((Activation::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-6);
        assert_eq!(Activation::Relu.apply(-3.0), 0.0);
    }
}
