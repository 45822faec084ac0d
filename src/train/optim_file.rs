//! An optimizer's moments saved at the end of one run and loaded at the start of the
//! next (`--save-optimizer`, `--init-optimizer`), so a sequence of invocations — one per
//! task — continues a single optimizer as one long PyTorch loop would. van de Ven &
//! Tolias (2019) keep Adam's state across tasks; Avalanche resets it; both are now one
//! flag apart. Tensor names are torch's `state_dict` keys: `exp_avg/<param>` and
//! `exp_avg_sq/<param>` (Adam, AdamW) or `momentum_buffer/<param>` (SGD); the step count
//! and the optimizer's kind are in the metadata.

use super::{Optimizer, OptimizerKind};
use crate::checkpoint::{Checkpoint, OwnedTensor};
use crate::error::{MnemoError, Result};
use crate::model::Model;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// `mnemo.kind` of an optimizer-state file.
pub const KIND: &str = "optimizer-state";
/// Metadata key: `sgd`, `adam` or `adamw`.
pub const OPTIMIZER_KEY: &str = "mnemo.optimizer";
/// Metadata key: updates taken by every run the moments come from.
pub const STEP_KEY: &str = "mnemo.optimizer.step";

fn invalid(path: &Path, reason: impl Into<String>) -> MnemoError {
    MnemoError::InvalidOptimizerState {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn kind_name(kind: &OptimizerKind) -> &'static str {
    match kind {
        OptimizerKind::Sgd { .. } => "sgd",
        OptimizerKind::Adam { .. } => "adam",
        OptimizerKind::AdamW { .. } => "adamw",
    }
}

/// The moment buffers' names in torch's state_dict, first moment then second.
fn prefixes(kind: &OptimizerKind) -> (&'static str, &'static str) {
    match kind {
        OptimizerKind::Sgd { .. } => ("momentum_buffer/", ""),
        _ => ("exp_avg/", "exp_avg_sq/"),
    }
}

/// Writes `opt`'s moments and total step count (carried steps included) atomically.
pub fn save(
    path: &Path,
    opt: &Optimizer,
    model: &Model,
    provenance: &BTreeMap<String, String>,
) -> Result<()> {
    prepare(path, opt, model, provenance)?.commit()
}

/// [`save`] into its temporary file, not yet in place (commit it).
pub fn prepare(
    path: &Path,
    opt: &Optimizer,
    model: &Model,
    provenance: &BTreeMap<String, String>,
) -> Result<crate::checkpoint::AtomicFile> {
    let kind = &opt.config.as_ref().expect("configured").kind;
    let (pm, pv) = prefixes(kind);
    let mut tensors = Vec::new();
    for (prefix, moments) in [(pm, &opt.m), (pv, &opt.v)] {
        if prefix.is_empty() {
            continue;
        }
        for (name, values) in moments {
            let shape = model.params[name].as_tensor().dims().to_vec();
            tensors.push(OwnedTensor::f32(format!("{prefix}{name}"), shape, values));
        }
    }
    let mut meta = provenance.clone();
    meta.insert("mnemo.kind".into(), KIND.into());
    meta.insert(OPTIMIZER_KEY.into(), kind_name(kind).into());
    meta.insert(STEP_KEY.into(), (opt.carried_steps + opt.step).to_string());
    crate::checkpoint::prepare_checkpoint(path, tensors, &meta)
}

/// Loads moments saved by [`save`] into a fresh `opt` for `model`. The file must hold a
/// buffer for exactly the model's trainable parameters (a partial state would pair a
/// carried bias correction with zero moments); Adam and AdamW share their moments, SGD's
/// momentum is refused for Adam and the reverse.
pub fn load(path: &Path, opt: &mut Optimizer, model: &Model) -> Result<()> {
    let ckpt = Checkpoint::open(path)?;
    let meta = ckpt.metadata();
    if meta.get("mnemo.kind").map(String::as_str) != Some(KIND) {
        return Err(invalid(
            path,
            "not an optimizer state (training writes one when asked to save its optimizer)",
        ));
    }
    let kind = opt.config.as_ref().expect("configured").kind.clone();
    let found = meta.get(OPTIMIZER_KEY).map(String::as_str).unwrap_or("?");
    let compatible = match kind {
        OptimizerKind::Sgd { .. } => found == "sgd",
        _ => found == "adam" || found == "adamw",
    };
    if !compatible {
        return Err(invalid(
            path,
            format!("holds {found} moments; this run uses {}", kind_name(&kind)),
        ));
    }
    let steps: u64 = meta
        .get(STEP_KEY)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(path, format!("no readable '{STEP_KEY}' metadata")))?;
    let (pm, pv) = prefixes(&kind);
    let mut seen = BTreeSet::new();
    for name in ckpt.names() {
        let (param, moments) = if let Some(p) = name.strip_prefix(pm) {
            (p, &mut opt.m)
        } else if let Some(p) = (!pv.is_empty()).then(|| name.strip_prefix(pv)).flatten() {
            (p, &mut opt.v)
        } else {
            return Err(invalid(path, format!("unexpected tensor '{name}'")));
        };
        let var = model.params.get(param).ok_or_else(|| {
            invalid(
                path,
                format!("'{name}' is for '{param}', which this model does not train"),
            )
        })?;
        let shape = &ckpt.entry(name)?.shape;
        if shape.as_slice() != var.as_tensor().dims() {
            return Err(invalid(
                path,
                format!(
                    "'{name}' has shape {shape:?}; the parameter has {:?}",
                    var.as_tensor().dims()
                ),
            ));
        }
        let values = ckpt.to_f32(name)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(invalid(
                path,
                format!("'{name}' holds {} at {i}", values[i]),
            ));
        }
        moments.insert(param.to_string(), values);
        seen.insert(param.to_string());
    }
    // SGD without momentum keeps no buffers: only the step count carries.
    let stateless = matches!(kind, OptimizerKind::Sgd { momentum, .. } if momentum == 0.0);
    if !stateless {
        if let Some(missing) = model.params.keys().find(|p| !seen.contains(*p)) {
            return Err(invalid(
                path,
                format!("holds no moments for the parameter '{missing}'"),
            ));
        }
        let second_missing = !pv.is_empty() && opt.v.len() != opt.m.len();
        if second_missing {
            return Err(invalid(path, "first and second moments do not pair up"));
        }
    }
    opt.carried_steps = steps;
    Ok(())
}
