//! Learning without Forgetting (Li & Hoiem 2016) as a training strategy: the previous model
//! (the teacher, frozen, in eval mode) scores each new batch, and the loss gains
//! α·KL(q ‖ p), batch mean, with q = softmax(teacher/T) and p = softmax(student/T) over the
//! distilled outputs (all of them, or the classes the teacher knew) — Avalanche's
//! `LwFPlugin` (`kl_div(log_softmax(out/T), softmax(prev/T), reduction="batchmean")`, no T²
//! factor). Its gradient with respect to the student's logits is α·(p − q)/(T·B) on the
//! distilled outputs. No examples are kept: the teacher runs on the new data.

use super::strategy::{Strategy, UpdateCtx};
use super::TrainConfig;
use crate::data::Dataset;
use crate::error::{MnemoError, Result};
use crate::model::{Mode, Model};
use crate::rng::Rng;

pub struct Lwf {
    teacher: Model,
    /// α, the weight of the distillation term.
    pub weight: f64,
    /// T, the softmax temperature.
    pub temperature: f64,
    /// The outputs distilled (`None`: every output).
    pub classes: Option<Vec<usize>>,
    /// The teacher's logits of the batch being processed, and their width.
    teacher_logits: Vec<f32>,
    width: usize,
    /// The student's logits did not match the teacher's (reported by `after_batch`, which
    /// can fail).
    mismatch: bool,
    loss_sum: f64,
    batches: usize,
}

impl Lwf {
    /// `teacher` is the model before this task (its `--head` is the run's).
    pub fn new(teacher: Model, weight: f64, temperature: f64, classes: Option<Vec<usize>>) -> Self {
        Lwf {
            teacher,
            weight,
            temperature,
            classes,
            teacher_logits: Vec::new(),
            width: 0,
            mismatch: false,
            loss_sum: 0.0,
            batches: 0,
        }
    }
}

/// Softmax of `row` over the positions `units`, at temperature `t`, in f64.
fn softmax_at(row: &[f32], units: &[usize], t: f64) -> Vec<f64> {
    let max = units
        .iter()
        .map(|&u| row[u] as f64 / t)
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = units
        .iter()
        .map(|&u| (row[u] as f64 / t - max).exp())
        .collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

impl Strategy for Lwf {
    fn name(&self) -> &'static str {
        "lwf"
    }

    fn start(&mut self, data: &Dataset, _cfg: &TrainConfig) -> Result<()> {
        data.require_class("learning without forgetting")
    }

    fn before_batch(&mut self, ctx: &UpdateCtx, data: &Dataset, idx: &[usize]) -> Result<f64> {
        let (x, _) = data.batch(idx, &self.teacher.device)?;
        // Eval mode: the teacher is frozen, running statistics and all; no dropout.
        let logits = self
            .teacher
            .forward(&x, ctx.head, Mode::Eval, &mut Rng::new(0))?;
        let dims = logits.dims().to_vec();
        if dims.len() != 2 {
            return Err(MnemoError::InvalidArch {
                origin: None,
                reason: format!(
                    "the teacher's output has shape {dims:?}; distillation needs [batch, classes] logits"
                ),
            });
        }
        if let Some(bad) = self
            .classes
            .as_ref()
            .and_then(|c| c.iter().find(|&&u| u >= dims[1]))
        {
            return Err(MnemoError::InvalidArch {
                origin: None,
                reason: format!(
                    "distilled class {bad} is not an output of the teacher ({} outputs)",
                    dims[1]
                ),
            });
        }
        self.width = dims[1];
        self.teacher_logits = logits
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(MnemoError::compute("reading the teacher's logits"))?;
        Ok(1.0)
    }

    fn logit_term(&mut self, logits: &[f32], scale: f64, grad: &mut [f32]) -> f64 {
        let c = self.width;
        if logits.len() != self.teacher_logits.len() {
            self.mismatch = true;
            return 0.0;
        }
        let all: Vec<usize> = (0..c).collect();
        let units = self.classes.as_deref().unwrap_or(&all);
        let b = (logits.len() / c) as f64;
        let t = self.temperature;
        let mut kl = 0.0;
        for (i, (s, z)) in logits
            .chunks_exact(c)
            .zip(self.teacher_logits.chunks_exact(c))
            .enumerate()
        {
            let p = softmax_at(s, units, t);
            let q = softmax_at(z, units, t);
            for (k, &u) in units.iter().enumerate() {
                if q[k] > 0.0 {
                    kl += q[k] * (q[k].ln() - p[k].ln());
                }
                grad[i * c + u] += (self.weight * (p[k] - q[k]) / (t * b) * scale) as f32;
            }
        }
        let value = self.weight * kl / b;
        self.loss_sum += value;
        self.batches += 1;
        value
    }

    fn after_batch(
        &mut self,
        _ctx: &UpdateCtx,
        _pass: &mut super::strategy::Pass,
        batch: &super::strategy::BatchOut,
    ) -> Result<()> {
        match std::mem::take(&mut self.mismatch) {
            true => Err(MnemoError::InvalidArch {
                origin: None,
                reason: format!(
                    "the teacher has {} outputs but the model trained has {}: distillation needs the same outputs",
                    self.width, batch.classes
                ),
            }),
            false => Ok(()),
        }
    }

    /// The mean over the epoch's batches of α·KL (its weighted value).
    fn epoch_fields(&mut self) -> Vec<(&'static str, f64)> {
        let f = (self.batches > 0)
            .then(|| ("distill_loss", self.loss_sum / self.batches as f64))
            .into_iter()
            .collect();
        self.loss_sum = 0.0;
        self.batches = 0;
        f
    }

    fn save_state(&self) -> Result<Option<super::strategy::StrategyState>> {
        Ok(Some(super::strategy::StrategyState {
            tensors: Vec::new(),
            json: serde_json::json!({"loss_sum": self.loss_sum, "batches": self.batches})
                .to_string(),
        }))
    }

    fn restore_state(
        &mut self,
        _ckpt: &crate::checkpoint::Checkpoint,
        _prefix: &str,
        json: &str,
        path: &std::path::Path,
    ) -> Result<()> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| MnemoError::InvalidState {
                path: path.to_path_buf(),
                reason: format!("unreadable lwf state: {e}"),
            })?;
        self.loss_sum = v["loss_sum"].as_f64().unwrap_or(0.0);
        self.batches = v["batches"].as_u64().unwrap_or(0) as usize;
        Ok(())
    }
}
