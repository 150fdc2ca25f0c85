//! The output head: the logits of the rows that want them, within memory.

use crate::kernels;
use crate::model::linear::{gemm_nt_parallel, qmatmul};
use crate::model::state::Work;
use crate::model::weights::Table;
use crate::runtime::mem;
use crate::Result;

/// Refuses a forward call whose logits would not fit in memory, before any work.
pub(crate) fn check_logits(slots: usize, t: usize, vocab: usize, last_only: bool) -> Result<()> {
    let rows = if last_only {
        slots
    } else {
        slots.saturating_mul(t)
    };
    mem::check(rows.saturating_mul(vocab), 4, "the logits of this input").map(|_| ())
}

/// The logits of each slot's last row (`last_only`) or of every row: the rows of `ws.x`
/// gathered, normalized by `norm`, times `headᵀ` (`[vocab × d]`).
pub(crate) fn head_logits(
    kern: &kernels::Kernels,
    ws: &mut Work,
    (slots, t, d, last_only): (usize, usize, usize, bool),
    norm: impl Fn(&[f32], &mut [f32]),
    head: &Table,
    logits: &mut Vec<f32>,
) -> Result<()> {
    let m = if last_only { slots } else { slots * t };
    for i in 0..m {
        let r = if last_only { i * t + t - 1 } else { i };
        ws.att[i * d..(i + 1) * d].copy_from_slice(&ws.x[r * d..(r + 1) * d]);
    }
    norm(&ws.att[..m * d], &mut ws.h[..m * d]);
    let (x, vocab) = (&ws.h[..m * d], head.rows());
    logits.clear();
    mem::grow(logits, m.saturating_mul(vocab), "the logits")?;
    match head {
        Table::F32(w) => gemm_nt_parallel(kern, x, m, d, w.values(), vocab, logits),
        Table::Q(w) => qmatmul(kern, x, m, w, logits, &mut ws.scratch.qa),
    }
    Ok(())
}
