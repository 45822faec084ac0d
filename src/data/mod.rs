//! Datasets: a safetensors file with `input` `[N, ...]` (U8 scaled by 1/255,
//! or a float dtype) and `target` `[N]` integer class ids. Seeded shuffling
//! and batching.

pub mod folder;
pub mod raw;
pub mod rotate;

use crate::checkpoint::{Checkpoint, Dtype};
use crate::error::{MnemoError, Result};
use crate::rng::Rng;
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

/// An in-memory classification dataset.
pub struct Dataset {
    pub path: PathBuf,
    /// Shape of one example (without the leading N).
    pub example_shape: Vec<usize>,
    /// Inputs as f32, example-major.
    pub inputs: Vec<f32>,
    pub targets: Vec<i64>,
    /// The inputs were U8 in the file (values k/255), so they can be stored back as U8.
    pub from_u8: bool,
}

impl Dataset {
    pub fn open(path: impl AsRef<Path>) -> Result<Dataset> {
        let path = path.as_ref();
        let bad = |reason: String| MnemoError::InvalidDataset {
            path: path.to_path_buf(),
            reason,
        };
        let ckpt = Checkpoint::open(path)?;
        for name in ["input", "target"] {
            if !ckpt.contains(name) {
                let have: Vec<&str> = ckpt.names().take(5).collect();
                return Err(bad(format!(
                    "no tensor '{name}' (a dataset holds 'input' [N,...] and 'target' [N]; this file has: {})",
                    if have.is_empty() { "nothing".to_string() } else { have.join(", ") }
                )));
            }
        }
        let xi = ckpt.entry("input")?;
        let ti = ckpt.entry("target")?;
        if xi.shape.is_empty() {
            return Err(bad("'input' is a scalar; expected [N, ...]".into()));
        }
        let n = xi.shape[0];
        if ti.shape.len() != 1 {
            return Err(bad(format!(
                "'target' has shape {:?}; expected [N] class ids (dense targets are not supported yet)",
                ti.shape
            )));
        }
        if ti.shape[0] != n {
            return Err(bad(format!(
                "'input' has {n} examples but 'target' has {}",
                ti.shape[0]
            )));
        }
        if n == 0 {
            return Err(bad("the dataset is empty (N = 0)".into()));
        }
        let inputs = match xi.dtype {
            Dtype::U8 => ckpt
                .bytes("input")?
                .iter()
                .map(|&b| b as f32 / 255.0)
                .collect(),
            d if d.is_float() => ckpt.to_f32("input")?,
            d => {
                return Err(MnemoError::WrongDtype {
                    path: path.to_path_buf(),
                    tensor: "input".into(),
                    dtype: d.to_string(),
                    expected: "U8 (scaled by 1/255), F16, BF16, F32 or F64".into(),
                })
            }
        };
        if ti.dtype.is_float() || ti.dtype == Dtype::Bool {
            return Err(MnemoError::WrongDtype {
                path: path.to_path_buf(),
                tensor: "target".into(),
                dtype: ti.dtype.to_string(),
                expected: "an integer dtype (class ids)".into(),
            });
        }
        let targets = ckpt.to_i64("target")?;
        if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t < 0) {
            return Err(bad(format!("'target'[{i}] = {t} is negative")));
        }
        if let Some((i, &v)) = inputs.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            let per = inputs.len() / n;
            return Err(bad(format!(
                "'input' example {} holds a non-finite value ({v})",
                i / per.max(1)
            )));
        }
        Ok(Dataset {
            path: path.to_path_buf(),
            example_shape: xi.shape[1..].to_vec(),
            inputs,
            targets,
            from_u8: xi.dtype == Dtype::U8,
        })
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }

    /// Fails when a label is not a valid class id for a head with `classes` outputs.
    pub fn check_labels(&self, classes: usize, head: Option<&str>) -> Result<()> {
        if let Some((i, &t)) = self
            .targets
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= classes)
        {
            let which = head
                .map(|h| format!("head '{h}'"))
                .unwrap_or_else(|| "model".into());
            return Err(MnemoError::InvalidDataset {
                path: self.path.clone(),
                reason: format!(
                    "'target'[{i}] = {t} is out of range: the {which} has {classes} outputs (labels 0..{})",
                    classes - 1
                ),
            });
        }
        Ok(())
    }

    /// Example indices in file order, or shuffled with `seed`.
    pub fn order(&self, shuffle: Option<&mut Rng>) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        if let Some(rng) = shuffle {
            rng.shuffle(&mut idx);
        }
        idx
    }

    /// Inputs and targets of the examples `idx`, as tensors on `device`.
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<(Tensor, Vec<i64>)> {
        let el = self.example_len();
        let mut x = Vec::with_capacity(idx.len() * el);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            x.extend_from_slice(&self.inputs[i * el..(i + 1) * el]);
            y.push(self.targets[i]);
        }
        let mut shape = vec![idx.len()];
        shape.extend(&self.example_shape);
        let t = Tensor::from_vec(x, shape.as_slice(), device).map_err(|e| MnemoError::Compute {
            context: format!("{}: building a batch", self.path.display()),
            source: e,
        })?;
        Ok((t, y))
    }
}
