//! The one training engine, shared by train-ewc (and later replay-train and
//! lora-gate): batches (accumulated into updates), forward in train mode, a
//! fused cross-entropy gradient, backward, penalties, clipping, the schedule
//! and the optimizer update; validation with early stopping; a state file
//! that lets a killed run resume to the same bytes.

pub mod dense;
pub mod ema;
pub mod finite;
pub mod fisher;
pub mod lwf;
pub mod online;
pub mod optim;
pub mod optim_file;
pub mod penalty;
pub mod replay;
pub mod schedule;
pub mod si;
pub mod state;
pub mod strategy;

use crate::data::Dataset;
use crate::error::{MnemoError, Result};
pub use crate::loss::{self, Loss};
use crate::model::{Mode, Model, Snapshot};
use crate::rng::Rng;
use candle_core::Tensor;
pub use ema::Ema;
pub use lwf::Lwf;
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind};
pub use penalty::{AnchorPull, EwcPenalty, PenaltyTerm};
pub use replay::Replay;
pub use schedule::{Schedule, ScheduleKind, ScheduleUnit};
pub use si::Si;
pub use state::{Best, Progress, StateFile};
use std::collections::BTreeMap;
use std::time::Instant;
pub use strategy::{BatchOut, Pass, Strategy, UpdateCtx};

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
    /// The strategies' own fields (e.g. replay's `replay_loss`), in strategy order.
    pub fields: Vec<(&'static str, f64)>,
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

/// One batch's loss; its gradients (scaled by `scale`) are added into `acc`. Dense
/// networks use the fused path (`dense`), everything else candle's autograd, where the
/// loss gradient enters through a surrogate `(logits·G).sum()`. `term` adds a strategy's
/// term at the logits (dark experience replay's MSE to stored logits).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
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
    term: Option<strategy::LogitTerm>,
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
        let extra = term.map_or(0.0, |t| t(logits, scale, &mut g));
        let logits = want_logits.then(|| logits.to_vec());
        net.backward(host, &g, acc);
        return Ok(BatchOut {
            loss,
            extra,
            logits,
            classes: c,
        });
    }
    let device = model.device.clone();
    let (x, y) = data.batch(idx, &device)?;
    let logits = model.forward(&x, head, Mode::Train, rng)?;
    let dims = logits.dims().to_vec();
    cfg.loss.check_output(data, &dims, head, check_labels)?;
    // Outputs per example position: classes or channels, or the vocabulary of [B, T, V].
    let c = match kind {
        crate::data::TargetKind::Tokens { .. } => dims[2],
        _ => dims[1],
    };
    let l: Vec<f32> = logits
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .map_err(MnemoError::compute("reading logits"))?;
    let (loss, mut grad) =
        loss::loss_grad(cfg.loss, kind, &l, &dims, &y, cfg.label_smoothing, scale);
    let extra = term.map_or(0.0, |t| t(&l, scale, &mut grad));
    let g = Tensor::from_vec(grad, dims.as_slice(), &device)
        .map_err(MnemoError::compute("loss gradient"))?;
    let grads = (logits * g)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .map_err(MnemoError::compute("backward pass"))?;
    for (name, var) in &model.params {
        let Some(g) = grads.get(var.as_tensor()) else {
            continue;
        };
        let g: Vec<f32> = g
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(MnemoError::compute("reading gradients"))?;
        match acc.get_mut(name) {
            Some(a) => a.iter_mut().zip(&g).for_each(|(a, g)| *a += g),
            None => {
                acc.insert(name.clone(), g);
            }
        }
    }
    Ok(BatchOut {
        loss,
        extra,
        logits: want_logits.then_some(l),
        classes: c,
    })
}

/// Writes the host copy of the parameters into the model's variables.
fn sync(model: &Model, host: &BTreeMap<String, Vec<f32>>) -> Result<()> {
    for (name, var) in &model.params {
        let t = Tensor::from_slice(&host[name], var.as_tensor().dims(), &model.device)
            .map_err(MnemoError::compute("writing weights"))?;
        var.set(&t)
            .map_err(MnemoError::compute("writing weights"))?;
    }
    Ok(())
}

/// What one update reports.
struct UpdateOut {
    /// Summed mean losses of the new batches.
    loss_sum: f64,
    /// The strategies' penalty terms.
    penalty: f64,
    /// The strategies' terms at the new batches' logits (LwF's distillation).
    extra: f64,
    /// Global gradient norm before clipping.
    grad_norm: f64,
}

/// One optimizer update from the batches `group` (gradients averaged); the host copy
/// `host` of the parameters is updated (and written to the model unless `dense` runs the
/// network on the host). `acc` is reused across updates. The strategies join at their
/// hooks (`train/strategy.rs`), in order.
#[allow(clippy::too_many_arguments)]
fn update(
    model: &mut Model,
    dense: Option<&mut dense::DenseNet>,
    host: &mut BTreeMap<String, Vec<f32>>,
    acc: &mut BTreeMap<String, Vec<f32>>,
    data: &Dataset,
    group: &[&[usize]],
    opt: &mut Optimizer,
    rng: &mut Rng,
    cfg: &TrainConfig,
    strategies: &mut [&mut dyn Strategy],
    lr: f64,
    epoch: usize,
    check_labels: bool,
) -> Result<UpdateOut> {
    let scale = 1.0 / group.len() as f64;
    acc.values_mut().for_each(|g| g.fill(0.0));
    let mut ctx = UpdateCtx {
        epoch,
        head: cfg.head.as_deref(),
        scale,
        check: false,
    };
    strategies.iter_mut().for_each(|s| s.begin_update(&ctx));
    let keep_logits = strategies.iter().any(|s| s.wants_logits());
    let mut loss_sum = 0.0;
    let mut extra = 0.0;
    let mut captured = Vec::with_capacity(group.len());
    let is_dense = dense.is_some();
    {
        let mut pass = Pass {
            model: &mut *model,
            dense,
            host: &*host,
            acc: &mut *acc,
            rng,
            cfg,
        };
        for (i, idx) in group.iter().enumerate() {
            ctx.check = check_labels && i == 0;
            let mut w = 1.0;
            for s in strategies.iter_mut() {
                w *= s.before_batch(&ctx, data, idx)?;
            }
            let mut term = |l: &[f32], scale: f64, g: &mut [f32]| {
                strategies
                    .iter_mut()
                    .map(|s| s.logit_term(l, scale, g))
                    .sum::<f64>()
            };
            let b = pass.run(
                data,
                idx,
                scale * w,
                ctx.check,
                Some(&mut term),
                keep_logits,
            )?;
            loss_sum += b.loss;
            extra += b.extra;
            for s in strategies.iter_mut() {
                s.after_batch(&ctx, &mut pass, &b)?;
            }
            captured.push(b.logits);
        }
    }
    ctx.check = false;
    let mut pen = 0.0;
    // Heads the forward pass did not run are not trained (torch skips a parameter whose
    // grad is None): no gradient, no weight decay, no moment update.
    let unchosen = model.spec.unchosen_head_prefixes(cfg.head.as_deref());
    let frozen = |name: &str| unchosen.iter().any(|p| name.starts_with(p.as_str()));
    for (name, w) in host.iter() {
        let g = acc
            .entry(name.clone())
            .or_insert_with(|| vec![0.0; w.len()]);
        for s in strategies.iter() {
            pen += s.penalty(name, w, g);
        }
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
    for s in strategies.iter_mut() {
        s.before_step(host, acc);
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
    for s in strategies.iter_mut() {
        s.after_step(host);
    }
    if !is_dense {
        sync(model, host)?;
    }
    for s in strategies.iter_mut() {
        s.after_update(&ctx, data, group, &captured)?;
    }
    Ok(UpdateOut {
        loss_sum,
        penalty: pen,
        extra,
        grad_norm: norm,
    })
}

/// The data a run trains on and everything added to its loss.
pub struct Job<'a> {
    pub data: &'a Dataset,
    /// Validation data: scored after every epoch; the best epoch's weights are kept.
    pub val: Option<&'a Dataset>,
    /// Save the run's state here, and resume from it when it exists.
    pub state: Option<&'a StateFile>,
    /// What the run adds to plain training (penalties, replay, ...), in the order their
    /// hooks run.
    pub strategies: Vec<&'a mut dyn Strategy>,
}

/// Seed of the dropout stream, apart from shuffling so `--no-shuffle` keeps the same masks.
const DROPOUT_SEED: u64 = 0xD50F_0A7C_5EED_0001;

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
    for s in job.strategies.iter_mut() {
        s.start(data, cfg)?;
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
    };
    let mut best_weights: Option<Snapshot> = None;
    if let Some(sf) = job.state {
        if let Some(r) = sf.load(model, opt, &mut job.strategies)? {
            p = r.progress;
            best_weights = r.best_weights;
            on_event(&Event::Resumed {
                step: p.step,
                epoch: p.epoch,
                batch: p.batch,
            })?;
        }
    }
    let mut dropout_rng = Rng::from_state(p.dropout_rng);
    let mut host: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for (name, var) in &model.params {
        let v = var
            .as_tensor()
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(MnemoError::compute("reading weights"))?;
        host.insert(name.clone(), v);
    }
    // The dense path knows nothing of adapters: they run through candle's autograd.
    let mut dense = match model.device.is_cpu() && model.adapter.is_none() {
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
                strategies: &[&mut dyn Strategy]| {
        state.map_or(Ok(()), |sf| sf.save(p, model, opt, best, strategies))
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
                &mut job.strategies,
                lr,
                p.epoch,
                first,
            )?;
            let (loss_sum, pen, grad_norm) = (u.loss_sum, u.penalty, u.grad_norm);
            finite::check_update(opt.step, loss_sum + pen + u.extra, &host)?;
            first = false;
            p.step = opt.step;
            p.batch += group.len();
            p.loss_sum += loss_sum;
            p.penalty_sum += pen;
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
                    sync_if_dense(model, &host)?;
                    save(&p, model, opt, best_weights.as_ref(), &job.strategies)?;
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
            let ecfg = crate::eval::EvalConfig {
                head: cfg.head.as_deref(),
                batch_size: cfg.batch_size.max(256),
                loss: cfg.loss,
                ..Default::default()
            };
            let t = crate::eval::evaluate(model, val, &ecfg, &mut |_| Ok(()))?;
            let (l, a) = (t.loss, t.accuracy());
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
            fields: job
                .strategies
                .iter_mut()
                .flat_map(|s| s.epoch_fields())
                .collect(),
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
        p.dropout_rng = dropout_rng.state();
        save(&p, model, opt, best_weights.as_ref(), &job.strategies)?;
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
