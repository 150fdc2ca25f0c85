//! The run state of a forward pass: work buffers grown to the largest call and reused.

use crate::model::linear::Scratch;
use crate::runtime::mem;
use crate::Result;

/// Work buffers of a forward pass, grown to the largest call and reused.
#[derive(Debug, Default)]
pub(crate) struct Work {
    pub(crate) x: Vec<f32>,
    pub(crate) h: Vec<f32>,
    pub(crate) qkv: Vec<f32>,
    pub(crate) att: Vec<f32>,
    pub(crate) mlp: Vec<f32>,
    pub(crate) scores: Vec<f32>,
    /// Partial sums and quantized activations of the matmuls.
    pub(crate) scratch: Scratch,
    /// The position id of each row.
    pub(crate) positions: Vec<usize>,
    /// Rotary embeddings' cos then sin per row (Llama).
    pub(crate) rope: Vec<f32>,
}

impl Work {
    /// Room for `rows` rows: `d` wide residual stream, `qkv` wide projections, `att` wide
    /// attention output, `mlp` wide MLP activations.
    pub(crate) fn ensure(
        &mut self,
        rows: usize,
        d: usize,
        qkv: usize,
        att: usize,
        mlp: usize,
    ) -> Result<()> {
        if self.x.len() >= rows * d
            && self.h.len() >= rows * d.max(att)
            && self.qkv.len() >= rows * qkv
            && self.att.len() >= rows * d.max(att)
            && self.mlp.len() >= rows * mlp
        {
            return Ok(());
        }
        // All of them together, before any grows.
        let total = rows.saturating_mul(2 * d + qkv + 2 * d.max(att) + mlp);
        mem::check(total, 4, "the activations of this input")?;
        let what = "the activations";
        mem::grow(&mut self.x, rows * d, what)?;
        mem::grow(&mut self.h, rows * d.max(att), what)?;
        mem::grow(&mut self.qkv, rows * qkv, what)?;
        mem::grow(&mut self.att, rows * d.max(att), what)?;
        mem::grow(&mut self.mlp, rows * mlp, what)
    }
}
