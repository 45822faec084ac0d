//! The hook point through which a continual-learning strategy joins the engine. The loop in
//! `train/mod.rs` knows no strategy by name: it calls every strategy of the run, in order, at
//! fixed points of each update, and a strategy is one type implementing [`Strategy`]:
//!
//! 1. `start` once before training (refuse data it cannot serve);
//! 2. per update: `begin_update`, then for each of the update's batches `before_batch`
//!    (before the batch's backward pass: the share of its loss; replay draws here, LwF runs
//!    its teacher), `logit_term` (inside the pass: a term at the batch's logits, LwF's
//!    distillation) and `after_batch` (after it: further loss terms on other examples
//!    through [`Pass`], as replay adds its batch);
//! 3. `penalty` per parameter before the optimizer (a term's gradient added to the
//!    accumulated gradient, its value returned: EWC, the L2 anchor);
//! 4. `before_step` with the weights and the gradient the optimizer is about to use (after
//!    penalties and clipping), `after_step` with the weights it made (SI's path integral),
//!    then `after_update` (replay offers the new examples to its buffer);
//! 5. `epoch_fields` into each epoch's JSON line, and `save_state`/`restore_state` into the
//!    `--state` file, so a resumed run continues the strategy exactly.
//!
//! Every hook has a default that does nothing, so a strategy implements only what it uses.

use super::dense::DenseNet;
use super::TrainConfig;
use crate::checkpoint::{Checkpoint, OwnedTensor};
use crate::data::Dataset;
use crate::error::Result;
use crate::model::Model;
use crate::rng::Rng;
use std::collections::BTreeMap;
use std::path::Path;

/// Where the loop stands when it calls a hook.
#[derive(Clone, Copy, Debug)]
pub struct UpdateCtx<'a> {
    /// The current epoch (0-based).
    pub epoch: usize,
    /// The head being trained (multi-head models).
    pub head: Option<&'a str>,
    /// 1 / the number of batches averaged into this update.
    pub scale: f64,
    /// Labels and shapes are checked against the model on this batch (the first batch of a
    /// process's first update).
    pub check: bool,
}

/// What one backward pass reports.
pub struct BatchOut {
    /// Mean loss of the batch.
    pub loss: f64,
    /// The value of the pass's extra logit term (0 without one).
    pub extra: f64,
    /// The logits, when asked for (row-major `[b, outputs...]`).
    pub logits: Option<Vec<f32>>,
    /// The model's number of outputs (classes) per example.
    pub classes: usize,
}

/// A term added at the logits of a pass: `(logits, scale, grad) -> value`, adding its own
/// gradient (times `scale`) into `grad` (dark experience replay's MSE to stored logits).
pub type LogitTerm<'t> = &'t mut dyn FnMut(&[f32], f64, &mut [f32]) -> f64;

/// The backward passes of one update: each `run` adds the scaled gradient of its batch's
/// loss into the update's accumulated gradient.
pub struct Pass<'a> {
    pub(super) model: &'a mut Model,
    pub(super) dense: Option<&'a mut DenseNet>,
    pub(super) host: &'a BTreeMap<String, Vec<f32>>,
    pub(super) acc: &'a mut BTreeMap<String, Vec<f32>>,
    pub(super) rng: &'a mut Rng,
    pub(super) cfg: &'a TrainConfig,
}

impl Pass<'_> {
    /// The task loss of examples `idx` of `data`, its gradient times `scale` accumulated;
    /// `check` checks labels and output shape against the model first; `term` adds a logit
    /// term; `want_logits` hands the logits back.
    pub fn run(
        &mut self,
        data: &Dataset,
        idx: &[usize],
        scale: f64,
        check: bool,
        term: Option<LogitTerm>,
        want_logits: bool,
    ) -> Result<BatchOut> {
        super::backward(
            self.model,
            self.dense.as_deref_mut(),
            self.host,
            data,
            idx,
            self.rng,
            self.cfg,
            scale,
            check,
            self.acc,
            term,
            want_logits,
        )
    }
}

/// A strategy's saved state: tensors (named by the strategy; the state file prefixes them)
/// and one JSON string.
pub struct StrategyState {
    pub tensors: Vec<OwnedTensor<'static>>,
    pub json: String,
}

/// A training strategy: see the module documentation for when each hook runs.
pub trait Strategy {
    /// A short, unique name: the key of its state in a `--state` file.
    fn name(&self) -> &'static str;

    /// Once, before training: refuse data the strategy cannot serve.
    fn start(&mut self, _data: &Dataset, _cfg: &TrainConfig) -> Result<()> {
        Ok(())
    }

    /// At the start of each update.
    fn begin_update(&mut self, _ctx: &UpdateCtx) {}

    /// Whether `after_update` needs the new batches' logits in this update.
    fn wants_logits(&self) -> bool {
        false
    }

    /// Before a new batch's backward pass (examples `idx` of `data`): the weight of its
    /// loss in the update.
    fn before_batch(&mut self, _ctx: &UpdateCtx, _data: &Dataset, _idx: &[usize]) -> Result<f64> {
        Ok(1.0)
    }

    /// Inside a new batch's pass: adds the gradient of a term at the batch's `logits`
    /// (times `scale`, the batch's share of the update) to `grad`; returns the term's value.
    fn logit_term(&mut self, _logits: &[f32], _scale: f64, _grad: &mut [f32]) -> f64 {
        0.0
    }

    /// After a new batch's backward pass: further loss terms through `pass`.
    fn after_batch(&mut self, _ctx: &UpdateCtx, _pass: &mut Pass, _batch: &BatchOut) -> Result<()> {
        Ok(())
    }

    /// Before the optimizer: adds the gradient of the strategy's term for parameter `name`
    /// (values `w`) to `g`, and returns the term's value.
    fn penalty(&self, _name: &str, _w: &[f32], _g: &mut [f32]) -> f64 {
        0.0
    }

    /// Just before the optimizer moves the weights: the weights and the gradient it uses
    /// (penalties included, clipped), by parameter name.
    fn before_step(
        &mut self,
        _weights: &BTreeMap<String, Vec<f32>>,
        _grads: &BTreeMap<String, Vec<f32>>,
    ) {
    }

    /// Just after the optimizer moved the weights: the new weights.
    fn after_step(&mut self, _weights: &BTreeMap<String, Vec<f32>>) {}

    /// After the optimizer update: the update's new batches and their logits (when asked).
    fn after_update(
        &mut self,
        _ctx: &UpdateCtx,
        _data: &Dataset,
        _group: &[&[usize]],
        _logits: &[Option<Vec<f32>>],
    ) -> Result<()> {
        Ok(())
    }

    /// The strategy's fields of the epoch's report; its running sums start again.
    fn epoch_fields(&mut self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }

    /// The state a resumed run needs (`None`: nothing to save).
    fn save_state(&self) -> Result<Option<StrategyState>> {
        Ok(None)
    }

    /// Restores what `save_state` wrote: `json`, and tensors read from `ckpt` under `prefix`
    /// (`path` names the state file in errors).
    fn restore_state(
        &mut self,
        _ckpt: &Checkpoint,
        _prefix: &str,
        _json: &str,
        _path: &Path,
    ) -> Result<()> {
        Ok(())
    }
}
