//! What a model needs to know of an attached adapter (LoRA, in `lora::attach`): the base
//! weights it froze, the term it adds to a module's output, and the tensors a snapshot then
//! holds. The model knows nothing else of adapters, so `model` does not depend on `lora`.

use super::{Mode, Model, ParamSpec};
use crate::error::Result;
use crate::rng::Rng;
use candle_core::Tensor;
use std::any::Any;

pub trait ModelAdapter: Send + Sync {
    /// A base weight the adapter froze (no longer among the model's `params`).
    fn frozen(&self, name: &str) -> Option<&Tensor>;

    /// `y`, module `name`'s output for input `x`, with the adapter's term added (`y` as it
    /// is for a module the adapter does not touch).
    fn module_output(
        &self,
        model: &Model,
        name: &str,
        x: &Tensor,
        y: Tensor,
        mode: Mode,
        rng: &mut Rng,
    ) -> Result<Tensor>;

    /// The tensors the model trains and tracks, given the spec's own manifest.
    fn manifest(&self, spec: Vec<ParamSpec>) -> Vec<ParamSpec>;

    /// For the adapter's own module to find its concrete type again.
    fn as_any(&self) -> &dyn Any;
}
