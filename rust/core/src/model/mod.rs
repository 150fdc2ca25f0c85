//! Forward passes and generation.

pub mod bert;
pub mod generate;
pub mod gpt2;
pub mod sampling;
pub(crate) mod weights;
