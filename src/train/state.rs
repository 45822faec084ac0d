//! The resumable state of a training run, kept in a safetensors file beside
//! the output: the model (`model/<name>`), the optimizer's moment buffers
//! (`opt.m/<name>`, `opt.v/<name>`), the best weights so far when validating
//! (`best/<name>`), the loop's position and RNG states as JSON under the
//! `mnemo.state` metadata key, and each training strategy's own state (its tensors under
//! `<strategy>/`, its JSON under `mnemo.state.strategy.<strategy>`). It is only written at update boundaries, so a
//! run killed at any moment resumes from the last save to the same bytes an
//! uninterrupted run would produce.

use super::strategy::Strategy;
use super::Optimizer;
use crate::checkpoint::{write_checkpoint, Checkpoint, OwnedTensor};
use crate::error::{MnemoError, Result};
use crate::model::{Model, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Metadata key holding [`Progress`] as JSON.
pub const STATE_KEY: &str = "mnemo.state";
/// Metadata key holding the run's fingerprint (inputs' hashes and settings).
pub const FINGERPRINT_KEY: &str = "mnemo.state.fingerprint";

/// Where the best epoch so far stands (early stopping).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    /// 0-based epoch.
    pub epoch: usize,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

/// The loop's position: enough to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer updates done.
    pub step: u64,
    /// The current epoch (0-based).
    pub epoch: usize,
    /// Batches of the current epoch already used.
    pub batch: usize,
    /// The shuffling RNG's state at the start of the current epoch.
    pub epoch_rng: [u64; 4],
    pub dropout_rng: [u64; 4],
    /// Running sums of the current epoch's report.
    pub loss_sum: f64,
    pub penalty_sum: f64,
    pub batches_done: usize,
    pub updates_done: usize,
    pub examples: usize,
    pub last_lr: f64,
    pub best: Option<Best>,
    /// Epochs since the best one.
    pub bad_epochs: usize,
    /// Early stopping has ended the run.
    pub stopped: bool,
}

/// The file a run saves its state to and resumes from.
#[derive(Clone, Debug)]
pub struct StateFile {
    pub path: PathBuf,
    /// Identifies the run (inputs' hashes and every setting): a state file with another
    /// fingerprint is refused rather than silently mixed in.
    pub fingerprint: String,
    /// Also save every N updates (the state is always saved at the end of each epoch).
    pub save_every: Option<u64>,
}

/// Everything restored from a state file.
pub struct Restored {
    pub progress: Progress,
    pub best_weights: Option<Snapshot>,
}

/// Prefix of the metadata keys holding each strategy's state.
pub const STRATEGY_KEY: &str = "mnemo.state.strategy.";

fn invalid(path: &Path, reason: impl Into<String>) -> MnemoError {
    MnemoError::InvalidState {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl StateFile {
    /// The fingerprint of a run: its inputs by content (not paths) and every setting that
    /// changes the result (not the test hook, not how often it logs). The version tag
    /// changes whenever the state file's layout does, so an older file is refused rather
    /// than resumed wrongly.
    pub fn fingerprint<'a>(
        input_hashes: impl IntoIterator<Item = &'a str>,
        command: &str,
        cfg: &super::TrainConfig,
        opt: &super::OptimizerConfig,
        settings: &str,
    ) -> String {
        let mut h = blake3::Hasher::new();
        for hash in input_hashes {
            h.update(hash.as_bytes());
        }
        let settings = format!(
            "state-v2|{command}|{:?}|{opt:?}|{settings}",
            super::TrainConfig {
                halt_after: None,
                log_every: None,
                ..cfg.clone()
            },
        );
        h.update(settings.as_bytes());
        h.finalize().to_hex().to_string()
    }

    /// Writes the state atomically.
    pub fn save(
        &self,
        progress: &Progress,
        model: &Model,
        opt: &Optimizer,
        best: Option<&Snapshot>,
        strategies: &[&mut dyn Strategy],
    ) -> Result<()> {
        let mut tensors: Vec<OwnedTensor> = model.snapshot()?.tensors(&model.manifest(), "model/");
        for (prefix, moments) in [("opt.m/", &opt.m), ("opt.v/", &opt.v)] {
            for (name, v) in moments {
                let shape = model.params[name].as_tensor().dims().to_vec();
                tensors.push(OwnedTensor::f32(format!("{prefix}{name}"), shape, v));
            }
        }
        if let Some(b) = best {
            tensors.extend(b.tensors(&model.manifest(), "best/"));
        }
        let mut meta = BTreeMap::new();
        for s in strategies {
            if let Some(st) = s.save_state()? {
                let prefix = format!("{}/", s.name());
                tensors.extend(st.tensors.into_iter().map(|mut t| {
                    t.name = format!("{prefix}{}", t.name);
                    t
                }));
                meta.insert(format!("{STRATEGY_KEY}{}", s.name()), st.json);
            }
        }
        meta.insert(
            STATE_KEY.to_string(),
            serde_json::to_string(progress).expect("progress serialises"),
        );
        meta.insert(FINGERPRINT_KEY.to_string(), self.fingerprint.clone());
        meta.insert("mnemo.arch".to_string(), model.spec.to_json());
        write_checkpoint(&self.path, tensors, &meta)
    }

    /// Loads the state into `model` and `opt` when the file exists; `None` when it does not.
    /// Each strategy's saved state is handed back to it.
    pub fn load(
        &self,
        model: &mut Model,
        opt: &mut Optimizer,
        strategies: &mut [&mut dyn Strategy],
    ) -> Result<Option<Restored>> {
        if !self.path.exists() {
            return Ok(None);
        }
        let ckpt = Checkpoint::open(&self.path)?;
        let meta = ckpt.metadata();
        let found = meta
            .get(FINGERPRINT_KEY)
            .ok_or_else(|| invalid(&self.path, "not a mnemo training state (no fingerprint)"))?;
        if *found != self.fingerprint {
            return Err(invalid(
                &self.path,
                "was written by a different run (other inputs or settings); \
                 delete it to start over, or use another state file",
            ));
        }
        let progress: Progress = meta
            .get(STATE_KEY)
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| invalid(&self.path, format!("unreadable '{STATE_KEY}' metadata")))?;
        model.restore(&Snapshot::read(&ckpt, &model.manifest(), "model/")?)?;
        opt.step = progress.step;
        opt.m.clear();
        opt.v.clear();
        for name in ckpt.names() {
            for (prefix, moments) in [("opt.m/", &mut opt.m), ("opt.v/", &mut opt.v)] {
                if let Some(p) = name.strip_prefix(prefix) {
                    let var = model.params.get(p).ok_or_else(|| {
                        invalid(&self.path, format!("optimizer state for unknown '{p}'"))
                    })?;
                    if ckpt.entry(name)?.shape != var.as_tensor().dims() {
                        return Err(invalid(&self.path, format!("'{name}' has the wrong shape")));
                    }
                    moments.insert(p.to_string(), ckpt.to_f32(name)?);
                }
            }
        }
        let best_weights = if ckpt.names().any(|n| n.starts_with("best/")) {
            Some(Snapshot::read(&ckpt, &model.manifest(), "best/")?)
        } else {
            None
        };
        for s in strategies.iter_mut() {
            if let Some(json) = meta.get(&format!("{STRATEGY_KEY}{}", s.name())) {
                let prefix = format!("{}/", s.name());
                s.restore_state(&ckpt, &prefix, json, &self.path)?;
            }
        }
        Ok(Some(Restored {
            progress,
            best_weights,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop's running sums and best loss survive the state file bit for bit (with
    /// serde_json's default float parsing, ~10% of such values came back 1 ULP off).
    #[test]
    fn progress_round_trips_exactly() {
        let p = Progress {
            step: 7,
            epoch: 1,
            batch: 3,
            epoch_rng: [1, 2, 3, 4],
            dropout_rng: [5, 6, 7, 8],
            loss_sum: 1.3333333333333335,
            penalty_sum: 0.30000000000000004,
            batches_done: 3,
            updates_done: 3,
            examples: 24,
            last_lr: 0.0009999999999999998,
            best: Some(Best {
                epoch: 0,
                val_loss: 2.3621254777155287,
                val_accuracy: 0.08333333333333333,
            }),
            bad_epochs: 0,
            stopped: false,
        };
        let back: Progress = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
