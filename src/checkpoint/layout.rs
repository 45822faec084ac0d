//! Whether two checkpoints hold the same tensors: what merging several models and
//! combining Fisher shards both require before reading any value.

use super::Checkpoint;
use crate::error::{MnemoError, Result};
use std::collections::HashSet;

fn float_word(f: bool) -> &'static str {
    if f {
        "a floating-point dtype"
    } else {
        "a non-float dtype"
    }
}

impl Checkpoint {
    /// `other` must hold exactly this checkpoint's tensor names, with the same shapes and
    /// the same kind of dtype (float or not); with `only`, just those names (and extra
    /// tensors in `other` are then allowed). The first difference is the error, naming
    /// `other` and the tensor.
    pub fn check_same_layout(
        &self,
        other: &Checkpoint,
        only: Option<&HashSet<String>>,
    ) -> Result<()> {
        for name in self.names() {
            if only.is_some_and(|o| !o.contains(name)) {
                continue;
            }
            let (a, b) = (self.entry(name)?, other.entry(name)?);
            if a.shape != b.shape {
                return Err(MnemoError::ShapeMismatch {
                    path: other.path.clone(),
                    tensor: name.to_string(),
                    found: b.shape.clone(),
                    expected: a.shape.clone(),
                });
            }
            if a.dtype.is_float() != b.dtype.is_float() {
                return Err(MnemoError::WrongDtype {
                    path: other.path.clone(),
                    tensor: name.to_string(),
                    dtype: b.dtype.to_string(),
                    expected: format!(
                        "{} like {} in {}",
                        float_word(a.dtype.is_float()),
                        a.dtype,
                        self.path.display()
                    ),
                });
            }
        }
        let extra: Vec<&str> = other.names().filter(|n| !self.contains(n)).collect();
        if let (Some(t), None) = (extra.first(), only) {
            return Err(MnemoError::UnexpectedTensor {
                path: other.path.clone(),
                tensor: t.to_string(),
                count: extra.len(),
            });
        }
        Ok(())
    }
}
