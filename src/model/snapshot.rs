//! Host copies of a model's tensors: what early stopping keeps as the best weights and
//! what a training state file stores, and the model's tensors ready for writing.

use super::{Model, ParamKind, ParamSpec};
use crate::checkpoint::{decode, encode_checked, Checkpoint, Dtype, OwnedTensor};
use crate::error::{MnemoError, Result};
use candle_core::{DType, Tensor};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A host copy of every tensor of a model (parameters, running statistics, counters): what
/// early stopping keeps as the best weights, and what a training state file stores.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub values: BTreeMap<String, Vec<f32>>,
    pub counters: BTreeMap<String, i64>,
}

impl Snapshot {
    /// Reads `PREFIX<name>` for every tensor of `manifest` (`Model::manifest`) from `ckpt`,
    /// checking shapes.
    pub fn read(ckpt: &Checkpoint, manifest: &[ParamSpec], prefix: &str) -> Result<Snapshot> {
        let mut snap = Snapshot::default();
        for p in manifest.iter().cloned() {
            let name = format!("{prefix}{}", p.name);
            let e = ckpt.entry(&name)?;
            if p.kind == ParamKind::Counter {
                snap.counters.insert(p.name, ckpt.to_i64(&name)?[0]);
                continue;
            }
            if e.shape != p.shape {
                return Err(MnemoError::ShapeMismatch {
                    path: ckpt.path.clone(),
                    tensor: name,
                    found: e.shape.clone(),
                    expected: p.shape,
                });
            }
            snap.values.insert(p.name, ckpt.to_f32(&name)?);
        }
        Ok(snap)
    }

    /// The snapshot as tensors named `PREFIX<name>`, ready for `write_checkpoint`.
    pub fn tensors(&self, manifest: &[ParamSpec], prefix: &str) -> Vec<OwnedTensor<'static>> {
        manifest
            .iter()
            .cloned()
            .map(|p| {
                let name = format!("{prefix}{}", p.name);
                match p.kind {
                    ParamKind::Counter => OwnedTensor {
                        name,
                        dtype: Dtype::I64,
                        shape: vec![],
                        data: Cow::Owned(self.counters[&p.name].to_le_bytes().to_vec()),
                    },
                    _ => OwnedTensor::f32(name, p.shape, &self.values[&p.name]),
                }
            })
            .collect()
    }
}

impl Model {
    /// A host copy of every tensor.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let mut values = BTreeMap::new();
        let all = self
            .params
            .iter()
            .map(|(k, v)| (k, v.as_tensor()))
            .chain(self.buffers.iter());
        for (name, t) in all {
            let v: Vec<f32> = t
                .flatten_all()
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.to_vec1())
                .map_err(MnemoError::compute(format!("reading tensor '{name}'")))?;
            values.insert(name.clone(), v);
        }
        Ok(Snapshot {
            values,
            counters: self.counters.clone(),
        })
    }

    /// The tensors the model trains and tracks, by name: the spec's state dict, or what an
    /// attached adapter makes of it (its own weights and the base's batchnorm state).
    pub fn manifest(&self) -> Vec<ParamSpec> {
        let spec = self.spec.params();
        match &self.adapter {
            Some(a) => a.manifest(spec),
            None => spec,
        }
    }

    /// Sets every tensor from a snapshot of a model of the same manifest.
    pub fn restore(&mut self, snap: &Snapshot) -> Result<()> {
        for p in self.manifest() {
            if p.kind == ParamKind::Counter {
                self.counters.insert(p.name.clone(), snap.counters[&p.name]);
                continue;
            }
            let t = Tensor::from_slice(&snap.values[&p.name], p.shape.as_slice(), &self.device)
                .map_err(MnemoError::compute(format!("placing tensor '{}'", p.name)))?;
            match p.kind {
                ParamKind::Trainable => self.params[&p.name]
                    .set(&t)
                    .map_err(MnemoError::compute(format!("setting '{}'", p.name)))?,
                _ => {
                    self.buffers.insert(p.name.clone(), t);
                }
            }
        }
        Ok(())
    }

    /// The model's tensors ready for `write_checkpoint`: each in the dtype it was loaded
    /// in (`stored_dtypes`; F32 for a fresh model or an adapter), counters I64. A weight
    /// that trained past its dtype's range (f16 ends at 65504) is an error naming it, not an
    /// inf in the file.
    pub fn tensors(&self) -> Result<Vec<OwnedTensor<'static>>> {
        self.in_stored_dtypes(self.snapshot()?.tensors(&self.manifest(), ""))
    }

    /// F32 tensors named as the model's, each encoded in its `stored_dtypes` entry.
    pub fn in_stored_dtypes(
        &self,
        mut tensors: Vec<OwnedTensor<'static>>,
    ) -> Result<Vec<OwnedTensor<'static>>> {
        for t in &mut tensors {
            let Some(&dtype) = self.stored_dtypes.get(&t.name) else {
                continue;
            };
            if t.dtype != Dtype::F32 {
                continue;
            }
            let values = decode(Dtype::F32, &t.data);
            let (data, bad) =
                encode_checked(dtype, &values).ok_or_else(|| MnemoError::Diverged {
                    at: "by the end of the run".into(),
                    what: format!("tensor '{}'", t.name),
                    value: format!("not representable as {dtype}"),
                })?;
            // A non-finite f32 is the divergence check's to report; an overflow is this one's.
            if let Some(i) = bad.filter(|&i| values[i].is_finite()) {
                return Err(MnemoError::Diverged {
                    at: "by the end of the run".into(),
                    what: format!("tensor '{}' element {i}", t.name),
                    value: format!(
                        "{}, beyond the range of its stored dtype {dtype}",
                        values[i]
                    ),
                });
            }
            t.dtype = dtype;
            t.data = Cow::Owned(data);
        }
        Ok(tensors)
    }
}
