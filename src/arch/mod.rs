//! The architecture language: layer kinds, their validation, the torch-exact manifest of
//! parameter names, and the zoo of named architectures, behind one entry point, [`parse`]
//! (`ArchSpec::parse`). It knows nothing of models, adapters or training: `model`, `lora`
//! and `train` use it, and it uses none of them.

mod check;
pub mod hf;
mod layer;
mod manifest;
mod spec;
pub mod zoo;

pub use check::MAX_TOKEN_ID;
pub use layer::*;
pub use manifest::*;
pub use spec::*;

use crate::error::Result;

/// Parses a spec: a zoo name (`resnet18`, `efficientnet_b0:num_classes=5`, ...), the
/// `mlp:784-400-10` shorthand, inline JSON, or the path of a JSON file.
pub fn parse(spec: &str) -> Result<ArchSpec> {
    if let Some(spec) = zoo::parse(spec.trim())? {
        return Ok(spec);
    }
    ArchSpec::parse_plain(spec)
}

impl ArchSpec {
    /// See [`parse`].
    pub fn parse(spec: &str) -> Result<ArchSpec> {
        parse(spec)
    }
}
