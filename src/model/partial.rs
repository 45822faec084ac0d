//! Partial loading (`init --from`): the tensors of another checkpoint whose names and
//! shapes match the model's, the rest left as initialised. This is how torchvision's
//! ImageNet `efficientnet_b0` weights (`features.*`) become the trunk of a model with other
//! heads.

use super::{Model, ParamKind};
use crate::checkpoint::Checkpoint;
use crate::error::{MnemoError, Result};
use candle_core::Tensor;
use std::collections::BTreeMap;

/// What `load_matching` did, by tensor name (checkpoint names sorted, model names in
/// state-dict order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MatchReport {
    /// Model tensors copied from the checkpoint.
    pub loaded: Vec<String>,
    /// Checkpoint tensors the model has no use for (unknown names, and with
    /// `skip_mismatched` names whose shapes differ).
    pub skipped: Vec<String>,
    /// Model tensors the checkpoint did not provide: left as initialised.
    pub initialised: Vec<String>,
}

impl Model {
    /// Copies every tensor of `ckpt` whose name is one of the model's and whose shape
    /// matches (floats of any dtype, converted to F32; `num_batches_tracked` counters as
    /// integers). A matching name with another shape is an error naming both shapes,
    /// unless `skip_mismatched`, when it is skipped. Values must be finite.
    pub fn load_matching(
        &mut self,
        ckpt: &Checkpoint,
        skip_mismatched: bool,
    ) -> Result<MatchReport> {
        let manifest = self.spec.params();
        let by_name: BTreeMap<&str, &super::ParamSpec> =
            manifest.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut report = MatchReport::default();
        let mut taken = std::collections::HashSet::new();
        for name in ckpt.names() {
            let Some(p) = by_name.get(name) else {
                report.skipped.push(name.to_string());
                continue;
            };
            let e = ckpt.entry(name)?;
            let scalar_counter =
                p.kind == ParamKind::Counter && e.shape.iter().product::<usize>() == 1;
            if e.shape != p.shape && !scalar_counter {
                if skip_mismatched {
                    report.skipped.push(name.to_string());
                    continue;
                }
                return Err(MnemoError::ShapeMismatch {
                    path: ckpt.path.clone(),
                    tensor: name.to_string(),
                    found: e.shape.clone(),
                    expected: p.shape.clone(),
                });
            }
            if p.kind == ParamKind::Counter {
                self.counters.insert(p.name.clone(), ckpt.to_i64(name)?[0]);
            } else {
                if !e.dtype.is_float() {
                    return Err(MnemoError::WrongDtype {
                        path: ckpt.path.clone(),
                        tensor: name.to_string(),
                        dtype: e.dtype.to_string(),
                        expected: "a floating-point dtype".into(),
                    });
                }
                let v = ckpt.to_f32(name)?;
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(MnemoError::NonFinite {
                        path: ckpt.path.clone(),
                        tensor: name.to_string(),
                        index: i,
                        value: v[i],
                        reason: "a model's weights must be finite".into(),
                    });
                }
                let ce = |source| MnemoError::Compute {
                    context: format!("setting '{name}'"),
                    source,
                };
                let t = Tensor::from_vec(v, p.shape.as_slice(), &self.device).map_err(ce)?;
                match p.kind {
                    ParamKind::Trainable => self.params[&p.name].set(&t).map_err(ce)?,
                    _ => {
                        self.buffers.insert(p.name.clone(), t);
                    }
                }
            }
            taken.insert(p.name.as_str());
            report.loaded.push(name.to_string());
        }
        report.initialised = manifest
            .iter()
            .filter(|p| !taken.contains(p.name.as_str()))
            .map(|p| p.name.clone())
            .collect();
        Ok(report)
    }
}
