//! The one training engine, shared by train-ewc (and later replay-train and
//! lora-gate): batches (accumulated into updates), forward in train mode, a
//! fused cross-entropy gradient, backward, penalties, clipping, the schedule
//! and the optimizer update; validation with early stopping; a state file
//! that lets a killed run resume to the same bytes.

pub mod dense;
pub mod finite;
pub mod fisher;
pub mod loss;
pub mod optim;
pub mod optim_file;
pub mod penalty;
pub mod schedule;
pub mod state;

use crate::data::Dataset;
use crate::error::{MnemoError, Result};
use crate::metrics::{score, ClassificationTotals};
use crate::model::{Mode, Model, Snapshot};
use crate::replay::ReservoirBuffer;
use crate::rng::Rng;
use candle_core::Tensor;
pub use loss::Loss;
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind};
pub use penalty::{AnchorPull, EwcPenalty, Penalty, PenaltyTerm};
pub use schedule::{Schedule, ScheduleKind, ScheduleUnit};
pub use state::{Best, Progress, StateFile};
use std::collections::BTreeMap;
use std::time::Instant;

/// Loop settings.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Shuffle each epoch with `seed`; otherwise batches are consecutive examples in file order.
    pub shuffle: bool,
    pub seed: u64,
    pub max_batches_per_epoch: Option<usize>,
    pub head: Option<String>,
    /// Emit a step event every N updates.
    pub log_every: Option<usize>,
    pub schedule: Schedule,
    /// Scale the gradient (penalties included) so its global L2 norm is at most this.
    pub clip_grad_norm: Option<f64>,
    /// Cross-entropy against (1−ε)·onehot + ε/C, as torch's `label_smoothing`.
    pub label_smoothing: f64,
    /// The task loss (`--loss`; cross-entropy by default).
    pub loss: Loss,
    /// Batches whose gradients are averaged into one update (1: no accumulation).
    pub accumulate: usize,
    /// Stop after this many epochs without a lower validation loss (needs validation data).
    pub patience: Option<usize>,
    /// With validation data, end with the last epoch's weights instead of the best.
    pub keep_last: bool,
    /// Test hook: stop (as if killed) right after this many updates.
    pub halt_after: Option<u64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 1,
            batch_size: 128,
            shuffle: true,
            seed: 0,
            max_batches_per_epoch: None,
            head: None,
            log_every: None,
            schedule: Schedule::default(),
            clip_grad_norm: None,
            label_smoothing: 0.0,
            loss: Loss::Ce,
            accumulate: 1,
            patience: None,
            keep_last: false,
            halt_after: None,
        }
    }
}

/// What the loop reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Step {
        epoch: usize,
        step: u64,
        task_loss: f64,
        penalty: f64,
        lr: f64,
        /// Global gradient norm before clipping (penalties included).
        grad_norm: f64,
    },
    /// The run continues from a state file.
    Resumed {
        step: u64,
        epoch: usize,
        batch: usize,
    },
    Epoch(EpochReport),
}

#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    /// Optimizer updates in the epoch.
    pub steps: usize,
    pub examples: usize,
    /// Mean over the epoch's batches of the batch's mean cross-entropy (label smoothing
    /// included), before each update.
    pub task_loss: f64,
    /// Mean over the epoch's updates of the penalties' weighted value, before each update.
    pub penalty: f64,
    /// With replay: mean over the epoch's replay batches of their loss (cross-entropy plus
    /// distillation), unweighted by the replay ratio.
    pub replay_loss: Option<f64>,
    /// The rate of the epoch's last update.
    pub lr: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// This epoch has the lowest validation loss so far.
    pub best: bool,
    pub seconds: f64,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Reports of the epochs this process ran.
    pub reports: Vec<EpochReport>,
    /// The best epoch by validation loss (the weights the model now holds unless keep_last).
    pub best: Option<Best>,
    pub stopped_early: bool,
    /// Stopped by the `halt_after` test hook: the model is not finished.
    pub halted: bool,
    pub steps: u64,
    /// Epochs completed in all (across resumptions).
    pub epochs_done: usize,
}

fn ce(ctx: &str) -> impl FnOnce(candle_core::Error) -> MnemoError + '_ {
    move |source| MnemoError::Compute {
        context: ctx.to_string(),
        source,
    }
}

/// Softmax rows of `logits` [n, c] in f64, and per-row log-sum-exp.
pub(crate) fn softmax_rows(logits: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let mut p = Vec::with_capacity(logits.len());
    let mut lse = Vec::with_capacity(logits.len() / c);
    for row in logits.chunks_exact(c) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let s: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        lse.push(max + s.ln());
        p.extend(row.iter().map(|&v| (v as f64 - max).exp() / s));
    }
    (p, lse)
}

/// Logits as a host vector, checked to be [n, classes].
pub(crate) fn host_logits(
    logits: &Tensor,
    data: &Dataset,
    head: Option<&str>,
    check: bool,
) -> Result<(Vec<f32>, usize)> {
    let dims = logits.dims().to_vec();
    if dims.len() != 2 {
        return Err(MnemoError::InvalidArch {
            origin: None,
            reason: format!("the model's output has shape {dims:?}; classification needs [batch, classes] logits"),
        });
    }
    if check {
        data.check_labels(dims[1], head)?;
    }
    let v = logits
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .map_err(ce("reading logits"))?;
    Ok((v, dims[1]))
}

/// The fused cross-entropy of logits `l` [n, c] against (label-smoothed) targets `y`:
/// the summed loss, and its gradient (softmax − target)·scale/n, computed on the host so
/// that no log-softmax graph is ever built.
pub(crate) fn cross_entropy_grad(
    l: &[f32],
    c: usize,
    y: &[i64],
    smoothing: f64,
    scale: f64,
) -> (f64, Vec<f32>) {
    let (p, lse) = softmax_rows(l, c);
    let b = y.len() as f64;
    let (on, off) = (1.0 - smoothing + smoothing / c as f64, smoothing / c as f64);
    let mut loss = 0.0;
    let mut grad = vec![0f32; l.len()];
    for (i, &t) in y.iter().enumerate() {
        let t = t as usize;
        let row = &l[i * c..(i + 1) * c];
        // −Σ_k q_k log p_k = lse − Σ_k q_k l_k
        let dot: f64 = row
            .iter()
            .enumerate()
            .map(|(k, &v)| if k == t { on } else { off } * v as f64)
            .sum();
        loss += lse[i] - dot;
        for k in 0..c {
            let q = if k == t { on } else { off };
            grad[i * c + k] = ((p[i * c + k] - q) / b * scale) as f32;
        }
    }
    (loss, grad)
}

/// Adds W·mean((l − z)²) over all of a batch's logits to the loss gradient `grad`
/// (scaled by `scale`), and returns that distillation loss.
fn distill_grad(l: &[f32], z: &[f32], weight: f64, scale: f64, grad: &mut [f32]) -> f64 {
    let n = l.len() as f64;
    let mut sum = 0.0;
    for ((g, &l), &z) in grad.iter_mut().zip(l).zip(z) {
        let d = l as f64 - z as f64;
        sum += d * d;
        *g += (2.0 * weight * d / n * scale) as f32;
    }
    weight * sum / n
}

/// What one batch's backward pass reports.
struct BatchOut {
    /// Mean cross-entropy.
    loss: f64,
    /// The distillation term's value (0 without one).
    distill: f64,
    /// The logits, when asked for (row-major [b, classes]).
    logits: Option<Vec<f32>>,
    /// The model's number of outputs (classes).
    classes: usize,
}

/// One batch's loss; its gradients (scaled by `scale`) are added into `acc`. Dense
/// networks use the fused path (`dense`), everything else candle's autograd, where the
/// loss gradient enters through a surrogate `(logits·G).sum()`. `distill` adds
/// W·MSE(logits, stored logits) (dark experience replay).
#[allow(clippy::too_many_arguments)]
fn backward(
    model: &mut Model,
    dense: Option<&mut dense::DenseNet>,
    host: &BTreeMap<String, Vec<f32>>,
    data: &Dataset,
    idx: &[usize],
    rng: &mut Rng,
    cfg: &TrainConfig,
    scale: f64,
    check_labels: bool,
    acc: &mut BTreeMap<String, Vec<f32>>,
    distill: Option<(&[f32], f64)>,
    want_logits: bool,
) -> Result<BatchOut> {
    let head = cfg.head.as_deref();
    let kind = data.target_kind;
    if let Some(net) = dense {
        let per = kind.per_example();
        let y: Vec<i64> = idx
            .iter()
            .flat_map(|&i| data.targets[i * per..(i + 1) * per].iter().copied())
            .collect();
        let c = net.classes();
        let dims = [idx.len(), c];
        cfg.loss.check_output(data, &dims, head, check_labels)?;
        let logits = net.forward(host, &data.inputs, idx);
        let (loss, mut g) = loss::loss_grad(
            cfg.loss,
            kind,
            logits,
            &dims,
            &y,
            cfg.label_smoothing,
            scale,
        );
        let d = distill.map_or(0.0, |(z, w)| distill_grad(logits, z, w, scale, &mut g));
        let logits = want_logits.then(|| logits.to_vec());
        net.backward(host, &g, acc);
        return Ok(BatchOut {
            loss,
            distill: d,
            logits,
            classes: c,
        });
    }
    let device = model.device.clone();
    let (x, y) = data.batch(idx, &device)?;
    let logits = model.forward(&x, head, Mode::Train, rng)?;
    let dims = logits.dims().to_vec();
    cfg.loss.check_output(data, &dims, head, check_labels)?;
    let c = dims[1];
    let l: Vec<f32> = logits
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .map_err(ce("reading logits"))?;
    let (loss, mut grad) =
        loss::loss_grad(cfg.loss, kind, &l, &dims, &y, cfg.label_smoothing, scale);
    let d = distill.map_or(0.0, |(z, w)| distill_grad(&l, z, w, scale, &mut grad));
    let g = Tensor::from_vec(grad, dims.as_slice(), &device).map_err(ce("loss gradient"))?;
    let grads = (logits * g)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .map_err(ce("backward pass"))?;
    for (name, var) in &model.params {
        let Some(g) = grads.get(var.as_tensor()) else {
            continue;
        };
        let g: Vec<f32> = g
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(ce("reading gradients"))?;
        match acc.get_mut(name) {
            Some(a) => a.iter_mut().zip(&g).for_each(|(a, g)| *a += g),
            None => {
                acc.insert(name.clone(), g);
            }
        }
    }
    Ok(BatchOut {
        loss,
        distill: d,
        logits: want_logits.then_some(l),
        classes: c,
    })
}

/// Writes the host copy of the parameters into the model's variables.
fn sync(model: &Model, host: &BTreeMap<String, Vec<f32>>) -> Result<()> {
    for (name, var) in &model.params {
        let t = Tensor::from_slice(&host[name], var.as_tensor().dims(), &model.device)
            .map_err(ce("writing weights"))?;
        var.set(&t).map_err(ce("writing weights"))?;
    }
    Ok(())
}

/// Experience replay during training: each batch is paired with a batch of the same size
/// drawn from the buffer, loss = (1 − ratio)·new + ratio·replay (the new batch alone while
/// the buffer is empty), replay adding `distill`·MSE against the stored logits; after each
/// update the new examples of the first epoch are offered to the buffer.
pub struct Replay {
    pub buffer: ReservoirBuffer,
    pub ratio: f64,
    pub distill: f64,
}

/// What one update reports.
struct UpdateOut {
    /// Summed mean losses of the new batches.
    loss_sum: f64,
    /// Summed replay losses (cross-entropy + distillation) and how many replay batches.
    replay_sum: f64,
    replay_batches: usize,
    penalty: f64,
    /// Global gradient norm before clipping.
    grad_norm: f64,
}

/// One optimizer update from the batches `group` (gradients averaged); the host copy
/// `host` of the parameters is updated (and written to the model unless `dense` runs the
/// network on the host). `acc` is reused across updates.
#[allow(clippy::too_many_arguments)]
fn update(
    model: &mut Model,
    mut dense: Option<&mut dense::DenseNet>,
    host: &mut BTreeMap<String, Vec<f32>>,
    acc: &mut BTreeMap<String, Vec<f32>>,
    data: &Dataset,
    group: &[&[usize]],
    opt: &mut Optimizer,
    rng: &mut Rng,
    cfg: &TrainConfig,
    penalty: &Penalty,
    lr: f64,
    check_labels: bool,
    mut replay: Option<(&mut Replay, &mut Rng, bool)>,
) -> Result<UpdateOut> {
    let scale = 1.0 / group.len() as f64;
    acc.values_mut().for_each(|g| g.fill(0.0));
    let mut out = UpdateOut {
        loss_sum: 0.0,
        replay_sum: 0.0,
        replay_batches: 0,
        penalty: 0.0,
        grad_norm: 0.0,
    };
    // Logits are kept with buffered examples under distillation (or once a buffer has them).
    let keep_logits = replay
        .as_ref()
        .is_some_and(|(r, _, insert)| *insert && (r.distill > 0.0 || r.buffer.has_logits()));
    let mut captured = Vec::with_capacity(group.len());
    for (i, idx) in group.iter().enumerate() {
        // Drawn from the buffer as it stood before this update.
        let draw = match replay.as_mut() {
            Some((r, rrng, _)) if r.ratio > 0.0 && !r.buffer.is_empty() => {
                Some(r.buffer.draw(idx.len(), rrng))
            }
            _ => None,
        };
        let ratio = replay.as_ref().map_or(0.0, |(r, _, _)| r.ratio);
        let w_new = if draw.is_some() { 1.0 - ratio } else { 1.0 };
        let b = backward(
            model,
            dense.as_deref_mut(),
            host,
            data,
            idx,
            rng,
            cfg,
            scale * w_new,
            check_labels && i == 0,
            acc,
            None,
            keep_logits,
        )?;
        out.loss_sum += b.loss;
        captured.push(b.logits);
        if let (Some(slots), Some((r, _, _))) = (draw, replay.as_ref()) {
            if check_labels && i == 0 {
                // Every stored label, once, against this model (a buffer from another model
                // is named, with its slot).
                r.buffer.check_labels(b.classes, cfg.head.as_deref())?;
            }
            let rd = r.buffer.to_dataset(&slots);
            let stored = (r.distill > 0.0)
                .then(|| r.buffer.logits_of(&slots))
                .flatten();
            let all: Vec<usize> = (0..slots.len()).collect();
            let b = backward(
                model,
                dense.as_deref_mut(),
                host,
                &rd,
                &all,
                rng,
                cfg,
                scale * ratio,
                true,
                acc,
                stored.as_deref().map(|z| (z, r.distill)),
                false,
            )?;
            out.replay_sum += b.loss + b.distill;
            out.replay_batches += 1;
        }
    }
    let mut pen = 0.0;
    // Heads the forward pass did not run are not trained (torch skips a parameter whose
    // grad is None): no gradient, no weight decay, no moment update.
    let unchosen = model.spec.unchosen_head_prefixes(cfg.head.as_deref());
    let frozen = |name: &str| unchosen.iter().any(|p| name.starts_with(p.as_str()));
    for (name, w) in host.iter() {
        let g = acc
            .entry(name.clone())
            .or_insert_with(|| vec![0.0; w.len()]);
        pen += penalty.apply(name, w, g);
        if frozen(name) {
            g.fill(0.0);
        }
    }
    let norm = acc
        .values()
        .flat_map(|g| g.iter())
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt();
    if let Some(max) = cfg.clip_grad_norm {
        // torch's clip_grad_norm_: coefficient max/(norm + 1e-6), applied when below 1.
        let coef = max / (norm + 1e-6);
        if coef < 1.0 {
            let coef = coef as f32;
            acc.values_mut()
                .for_each(|g| g.iter_mut().for_each(|v| *v *= coef));
        }
    }
    opt.begin_step();
    for (name, var) in &model.params {
        let w = host.get_mut(name).expect("host copy of every parameter");
        let shape = var.as_tensor().dims();
        if frozen(name) {
            opt.skip(name, w.len());
            continue;
        }
        opt.update(name, shape, w, &acc[name], lr);
    }
    if dense.is_none() {
        sync(model, host)?;
    }
    if let Some((r, _, true)) = replay {
        let el: usize = data.example_shape.iter().product();
        for (idx, logits) in group.iter().zip(&captured) {
            let c = logits.as_ref().map_or(0, |l| l.len() / idx.len().max(1));
            for (k, &i) in idx.iter().enumerate() {
                r.buffer.offer(
                    &data.inputs[i * el..(i + 1) * el],
                    data.targets[i],
                    data.from_u8,
                    logits.as_ref().map(|l| &l[k * c..(k + 1) * c]),
                )?;
            }
        }
    }
    out.penalty = pen;
    out.grad_norm = norm;
    Ok(out)
}

/// Loss and accuracy of `model` on `data` in eval mode.
pub fn evaluate(
    model: &mut Model,
    data: &Dataset,
    head: Option<&str>,
    batch_size: usize,
) -> Result<ClassificationTotals> {
    let mut rng = Rng::new(0); // unused in eval mode: dropout is off
    let mut totals = ClassificationTotals::default();
    let order = data.order(None);
    let device = model.device.clone();
    for (i, idx) in order.chunks(batch_size.max(1)).enumerate() {
        let (x, y) = data.batch(idx, &device)?;
        let logits = model.forward(&x, head, Mode::Eval, &mut rng)?;
        let (l, c) = host_logits(&logits, data, head, i == 0)?;
        totals.add(&score(&l, c, &y, 1));
    }
    Ok(totals)
}

/// What an evaluation of masks or multi-hot targets finds.
#[derive(Clone, Debug)]
pub struct DenseEval {
    pub n: usize,
    /// Mean over the examples of the loss (no label smoothing).
    pub loss: f64,
    /// Masks: IoU counts.
    pub iou: Option<crate::metrics::dense::IouTotals>,
    /// Multi-hot targets: scores for AP.
    pub multi: Option<crate::metrics::dense::MultiLabelTotals>,
}

impl DenseEval {
    /// Pixel accuracy (masks) or label accuracy at logit > 0 (multi-hot).
    pub fn accuracy(&self) -> f64 {
        match (&self.iou, &self.multi) {
            (Some(i), _) => i.pixel_accuracy(),
            (_, Some(m)) => m.label_accuracy(),
            _ => 0.0,
        }
    }
}

/// Loss and metrics of `model` on masks or multi-hot targets in eval mode; `on_batch` gets
/// each batch's (index, examples, mean loss).
pub fn evaluate_dense(
    model: &mut Model,
    data: &Dataset,
    head: Option<&str>,
    batch_size: usize,
    loss: Loss,
    on_batch: &mut dyn FnMut(usize, usize, f64) -> Result<()>,
) -> Result<DenseEval> {
    use crate::data::TargetKind;
    use crate::metrics::dense::{IouTotals, MultiLabelTotals};
    loss.check_targets(data)?;
    let mut rng = Rng::new(0);
    let device = model.device.clone();
    let mut out = DenseEval {
        n: 0,
        loss: 0.0,
        iou: None,
        multi: None,
    };
    let mut loss_sum = 0.0;
    for (i, idx) in data.order(None).chunks(batch_size.max(1)).enumerate() {
        let (x, y) = data.batch(idx, &device)?;
        let logits = model.forward(&x, head, Mode::Eval, &mut rng)?;
        let dims = logits.dims().to_vec();
        loss.check_output(data, &dims, head, i == 0)?;
        let l: Vec<f32> = logits
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(ce("reading logits"))?;
        let (v, _) = loss::loss_grad(loss, data.target_kind, &l, &dims, &y, 0.0, 1.0);
        match data.target_kind {
            TargetKind::Mask { h, w } => out
                .iou
                .get_or_insert_with(|| IouTotals::new(dims[1]))
                .add(&l, h * w, &y),
            TargetKind::MultiLabel { k } => out
                .multi
                .get_or_insert_with(|| MultiLabelTotals::new(k))
                .add(&l, &y),
            TargetKind::Class => {}
        }
        loss_sum += v * idx.len() as f64;
        out.n += idx.len();
        on_batch(i, idx.len(), v)?;
    }
    out.loss = loss_sum / out.n.max(1) as f64;
    Ok(out)
}

/// Every example's loss and correctness on `data`, in file order (eval mode).
pub fn evaluate_examples(
    model: &mut Model,
    data: &Dataset,
    head: Option<&str>,
    batch_size: usize,
) -> Result<crate::metrics::BatchScores> {
    let mut rng = Rng::new(0);
    let order = data.order(None);
    let device = model.device.clone();
    let mut all = crate::metrics::BatchScores::default();
    for (i, idx) in order.chunks(batch_size.max(1)).enumerate() {
        let (x, y) = data.batch(idx, &device)?;
        let logits = model.forward(&x, head, Mode::Eval, &mut rng)?;
        let (l, c) = host_logits(&logits, data, head, i == 0)?;
        let s = score(&l, c, &y, 1);
        all.loss.extend(s.loss);
        all.correct.extend(s.correct);
        all.top_k.extend(s.top_k);
    }
    Ok(all)
}

/// The data a run trains on and everything added to its loss.
pub struct Job<'a> {
    pub data: &'a Dataset,
    /// Validation data: scored after every epoch; the best epoch's weights are kept.
    pub val: Option<&'a Dataset>,
    pub penalty: &'a Penalty,
    /// Save the run's state here, and resume from it when it exists.
    pub state: Option<&'a StateFile>,
    /// Experience replay from (and into) a buffer.
    pub replay: Option<&'a mut Replay>,
}

/// Seed of the dropout stream, apart from shuffling so `--no-shuffle` keeps the same masks.
const DROPOUT_SEED: u64 = 0xD50F_0A7C_5EED_0001;
/// Seed of the replay draws, apart from shuffling and from the buffer's insertion stream.
const REPLAY_SEED: u64 = 0x4E91_A7D2_5EED_0002;

/// Trains `model`, calling `on_event` with step, epoch and resume reports.
pub fn train(
    model: &mut Model,
    opt: &mut Optimizer,
    cfg: &TrainConfig,
    job: &mut Job,
    on_event: &mut dyn FnMut(&Event) -> Result<()>,
) -> Result<Outcome> {
    let data = job.data;
    cfg.loss.check_targets(data)?;
    if let Some(v) = job.val {
        cfg.loss.check_targets(v)?;
        if std::mem::discriminant(&v.target_kind) != std::mem::discriminant(&data.target_kind) {
            return Err(MnemoError::InvalidDataset {
                path: v.path.clone(),
                reason: format!(
                    "the validation 'target' holds {} but the training data's holds {}",
                    v.target_kind.describe(),
                    data.target_kind.describe()
                ),
            });
        }
    }
    if job.replay.is_some() {
        data.require_class("experience replay")?;
    }
    if let Some(r) = job.replay.as_deref_mut() {
        r.buffer.expect_shape(&data.example_shape, &data.path)?;
    }
    let base_lr = opt.config.as_ref().map(|c| c.lr).unwrap_or(0.0);
    let accumulate = cfg.accumulate.max(1);
    let mut batches_per_epoch = data.len().div_ceil(cfg.batch_size.max(1));
    if let Some(m) = cfg.max_batches_per_epoch {
        batches_per_epoch = batches_per_epoch.min(m);
    }
    let updates_per_epoch = batches_per_epoch.div_ceil(accumulate);
    let clock_total = match cfg.schedule.unit {
        ScheduleUnit::Step => cfg.epochs * updates_per_epoch,
        ScheduleUnit::Epoch => cfg.epochs,
    };
    let mut p = Progress {
        step: 0,
        epoch: 0,
        batch: 0,
        epoch_rng: Rng::new(cfg.seed).state(),
        dropout_rng: Rng::new(cfg.seed ^ DROPOUT_SEED).state(),
        loss_sum: 0.0,
        penalty_sum: 0.0,
        batches_done: 0,
        updates_done: 0,
        examples: 0,
        last_lr: base_lr,
        best: None,
        bad_epochs: 0,
        stopped: false,
        replay_rng: Rng::new(cfg.seed ^ REPLAY_SEED).state(),
        replay_loss_sum: 0.0,
        replay_batches: 0,
    };
    let mut best_weights: Option<Snapshot> = None;
    if let Some(sf) = job.state {
        if let Some(r) = sf.load(model, opt)? {
            p = r.progress;
            best_weights = r.best_weights;
            if let (Some(rp), Some(b)) = (job.replay.as_deref_mut(), r.buffer) {
                b.check_compatible(&data.example_shape, &data.path)?;
                let path = std::mem::take(&mut rp.buffer.path);
                rp.buffer = b;
                rp.buffer.path = path;
            }
            on_event(&Event::Resumed {
                step: p.step,
                epoch: p.epoch,
                batch: p.batch,
            })?;
        }
    }
    let mut dropout_rng = Rng::from_state(p.dropout_rng);
    let mut replay_rng = Rng::from_state(p.replay_rng);
    let mut host: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (name, var) in &model.params {
        let v = var
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(ce("reading weights"))?;
        host.insert(name.clone(), v);
    }
    // The dense path knows nothing of adapters: LoRA runs through candle's autograd.
    let mut dense = match model.device.is_cpu() && model.lora.is_none() {
        true => dense::DenseNet::plan(&model.spec, cfg.head.as_deref())
            .filter(|n| n.in_features() == data.example_shape.iter().product::<usize>()),
        false => None,
    };
    let is_dense = dense.is_some();
    // With the dense path the host copy is the truth during an epoch: the model's
    // variables are brought up to date before anything reads them.
    let sync_if_dense = |model: &Model, host: &BTreeMap<String, Vec<f32>>| {
        if is_dense {
            sync(model, host)
        } else {
            Ok(())
        }
    };
    let mut acc: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let mut reports = Vec::new();
    let mut first = true;
    let mut start = Instant::now();
    let state = job.state;
    let save = |p: &Progress,
                model: &Model,
                opt: &Optimizer,
                best: Option<&Snapshot>,
                replay: Option<&Replay>| {
        state.map_or(Ok(()), |sf| {
            sf.save(p, model, opt, best, replay.map(|r| &r.buffer))
        })
    };
    while p.epoch < cfg.epochs && !p.stopped {
        let mut order_rng = Rng::from_state(p.epoch_rng);
        let order = data.order(cfg.shuffle.then_some(&mut order_rng));
        let mut batches: Vec<&[usize]> = order.chunks(cfg.batch_size.max(1)).collect();
        batches.truncate(batches_per_epoch);
        for group in batches[p.batch..].chunks(accumulate) {
            let t = match cfg.schedule.unit {
                ScheduleUnit::Step => p.step as usize,
                ScheduleUnit::Epoch => p.epoch,
            };
            let lr = cfg.schedule.lr(base_lr, t, clock_total);
            let insert = p.epoch == 0;
            let u = update(
                model,
                dense.as_mut(),
                &mut host,
                &mut acc,
                data,
                group,
                opt,
                &mut dropout_rng,
                cfg,
                job.penalty,
                lr,
                first,
                job.replay
                    .as_deref_mut()
                    .map(|r| (r, &mut replay_rng, insert)),
            )?;
            let (loss_sum, pen, grad_norm) = (u.loss_sum, u.penalty, u.grad_norm);
            finite::check_update(opt.step, loss_sum + pen + u.replay_sum, &host)?;
            first = false;
            p.step = opt.step;
            p.batch += group.len();
            p.loss_sum += loss_sum;
            p.penalty_sum += pen;
            p.replay_loss_sum += u.replay_sum;
            p.replay_batches += u.replay_batches;
            p.batches_done += group.len();
            p.updates_done += 1;
            p.examples += group.iter().map(|b| b.len()).sum::<usize>();
            p.last_lr = lr;
            if let Some(every) = cfg.log_every {
                if every > 0 && opt.step.is_multiple_of(every as u64) {
                    on_event(&Event::Step {
                        epoch: p.epoch,
                        step: opt.step,
                        task_loss: loss_sum / group.len() as f64,
                        penalty: pen,
                        lr,
                        grad_norm,
                    })?;
                }
            }
            let epoch_done = p.batch == batches.len();
            if let (Some(every), false) = (job.state.and_then(|s| s.save_every), epoch_done) {
                if every > 0 && opt.step.is_multiple_of(every) {
                    p.dropout_rng = dropout_rng.state();
                    p.replay_rng = replay_rng.state();
                    sync_if_dense(model, &host)?;
                    save(&p, model, opt, best_weights.as_ref(), job.replay.as_deref())?;
                }
            }
            if cfg.halt_after == Some(opt.step) && !epoch_done {
                return Ok(Outcome {
                    reports,
                    best: p.best,
                    stopped_early: false,
                    halted: true,
                    steps: opt.step,
                    epochs_done: p.epoch,
                });
            }
        }
        sync_if_dense(model, &host)?;
        let (mut val_loss, mut val_accuracy, mut is_best) = (None, None, false);
        if let Some(val) = job.val {
            let bs = cfg.batch_size.max(256);
            let (l, a) = if val.target_kind == crate::data::TargetKind::Class {
                let t = evaluate(model, val, cfg.head.as_deref(), bs)?;
                (t.loss(), t.accuracy())
            } else {
                let t = evaluate_dense(
                    model,
                    val,
                    cfg.head.as_deref(),
                    bs,
                    cfg.loss,
                    &mut |_, _, _| Ok(()),
                )?;
                (t.loss, t.accuracy())
            };
            val_loss = Some(l);
            val_accuracy = Some(a);
            if p.best.as_ref().is_none_or(|b| l < b.val_loss) {
                is_best = true;
                p.best = Some(Best {
                    epoch: p.epoch,
                    val_loss: l,
                    val_accuracy: a,
                });
                p.bad_epochs = 0;
                if !cfg.keep_last {
                    best_weights = Some(model.snapshot()?);
                }
            } else {
                p.bad_epochs += 1;
                if cfg.patience.is_some_and(|pat| p.bad_epochs >= pat) {
                    p.stopped = true;
                }
            }
        }
        let report = EpochReport {
            epoch: p.epoch,
            steps: p.updates_done,
            examples: p.examples,
            task_loss: p.loss_sum / p.batches_done.max(1) as f64,
            penalty: p.penalty_sum / p.updates_done.max(1) as f64,
            replay_loss: (p.replay_batches > 0)
                .then(|| p.replay_loss_sum / p.replay_batches as f64),
            lr: p.last_lr,
            val_loss,
            val_accuracy,
            best: is_best,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_event(&Event::Epoch(report.clone()))?;
        reports.push(report);
        p.epoch += 1;
        p.batch = 0;
        p.epoch_rng = order_rng.state();
        p.loss_sum = 0.0;
        p.penalty_sum = 0.0;
        p.batches_done = 0;
        p.updates_done = 0;
        p.examples = 0;
        p.replay_loss_sum = 0.0;
        p.replay_batches = 0;
        p.dropout_rng = dropout_rng.state();
        p.replay_rng = replay_rng.state();
        save(&p, model, opt, best_weights.as_ref(), job.replay.as_deref())?;
        if cfg.halt_after.is_some_and(|h| opt.step >= h) && p.epoch < cfg.epochs {
            return Ok(Outcome {
                reports,
                best: p.best,
                stopped_early: false,
                halted: true,
                steps: opt.step,
                epochs_done: p.epoch,
            });
        }
        start = Instant::now();
    }
    if let Some(b) = &best_weights {
        model.restore(b)?;
    }
    Ok(Outcome {
        reports,
        best: p.best,
        stopped_early: p.stopped,
        halted: false,
        steps: opt.step,
        epochs_done: p.epoch,
    })
}
