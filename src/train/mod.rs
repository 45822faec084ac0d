//! The one training engine, shared by train-ewc (and later replay-train and
//! lora-gate): batches, forward in train mode, a fused cross-entropy
//! gradient, backward, the EWC penalty and the optimizer update.

pub mod fisher;
pub mod optim;
pub mod penalty;

use crate::data::Dataset;
use crate::error::{MnemoError, Result};
use crate::model::{Mode, Model};
use crate::rng::Rng;
use candle_core::Tensor;
pub use optim::{Optimizer, OptimizerConfig, OptimizerKind};
pub use penalty::{EwcPenalty, PenaltyTerm};
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
    /// Emit a step event every N steps.
    pub log_every: Option<usize>,
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
    },
    Epoch(EpochReport),
}

#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    pub steps: usize,
    pub examples: usize,
    /// Mean over the epoch's steps of the batch's mean cross-entropy, before each update.
    pub task_loss: f64,
    /// Mean over the epoch's steps of the penalty value, before each update.
    pub penalty: f64,
    pub lr: f64,
    pub seconds: f64,
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

/// What one step needs besides the model, data and optimizer.
pub struct StepInputs<'a> {
    pub head: Option<&'a str>,
    pub lr: f64,
    pub penalty: Option<&'a EwcPenalty>,
    /// Check the batch's labels against the head's output size (done on the first step).
    pub check_labels: bool,
}

/// One optimisation step on the examples `idx`; returns (task loss, penalty) before the update.
pub fn step(
    model: &mut Model,
    data: &Dataset,
    idx: &[usize],
    opt: &mut Optimizer,
    rng: &mut Rng,
    s: &StepInputs,
) -> Result<(f64, f64)> {
    let (head, lr, penalty) = (s.head, s.lr, s.penalty);
    let device = model.device.clone();
    let (x, y) = data.batch(idx, &device)?;
    let logits = model.forward(&x, head, Mode::Train, rng)?;
    let (l, c) = host_logits(&logits, data, head, s.check_labels)?;
    // Fused cross-entropy: the mean loss on the host, its gradient (softmax − onehot)/B
    // fed back through a surrogate, so candle never builds a log-softmax graph.
    let (p, lse) = softmax_rows(&l, c);
    let b = idx.len() as f64;
    let mut loss = 0.0;
    let mut grad = vec![0f32; l.len()];
    for (i, &t) in y.iter().enumerate() {
        let t = t as usize;
        loss += lse[i] - l[i * c + t] as f64;
        for k in 0..c {
            let onehot = if k == t { 1.0 } else { 0.0 };
            grad[i * c + k] = ((p[i * c + k] - onehot) / b) as f32;
        }
    }
    let g = Tensor::from_vec(grad, (idx.len(), c), &device).map_err(ce("loss gradient"))?;
    let grads = (logits * g)
        .and_then(|t| t.sum_all())
        .and_then(|t| t.backward())
        .map_err(ce("backward pass"))?;
    opt.begin_step();
    let mut pen = 0.0;
    for (name, var) in &model.params {
        let t = var.as_tensor();
        let shape = t.dims().to_vec();
        let mut w: Vec<f32> = t
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(ce("reading weights"))?;
        let mut gv: Vec<f32> = match grads.get(t) {
            Some(g) => g
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(ce("reading gradients"))?,
            None => vec![0.0; w.len()],
        };
        if let Some(pn) = penalty {
            pen += pn.apply(name, &w, &mut gv);
        }
        opt.update(name, &shape, &mut w, &gv, lr);
        let nt = Tensor::from_vec(w, shape.as_slice(), &device).map_err(ce("writing weights"))?;
        var.set(&nt).map_err(ce("writing weights"))?;
    }
    Ok((loss / b, pen))
}

/// Trains `model` on `data`, calling `on_event` with step and epoch reports.
pub fn train(
    model: &mut Model,
    data: &Dataset,
    cfg: &TrainConfig,
    opt: &mut Optimizer,
    penalty: Option<&EwcPenalty>,
    on_event: &mut dyn FnMut(&Event) -> Result<()>,
) -> Result<Vec<EpochReport>> {
    let mut order_rng = Rng::new(cfg.seed);
    // A separate stream for dropout, so shuffling does not change the masks.
    let mut dropout_rng = Rng::new(cfg.seed ^ 0xD50F_0A7C_5EED_0001);
    let lr = opt.config.as_ref().map(|c| c.lr).unwrap_or(0.0);
    let head = cfg.head.as_deref();
    let mut reports = Vec::new();
    for epoch in 0..cfg.epochs {
        let start = Instant::now();
        let order = data.order(cfg.shuffle.then_some(&mut order_rng));
        let mut batches: Vec<&[usize]> = order.chunks(cfg.batch_size.max(1)).collect();
        if let Some(m) = cfg.max_batches_per_epoch {
            batches.truncate(m);
        }
        let (mut loss_sum, mut pen_sum, mut examples) = (0.0, 0.0, 0);
        for (i, idx) in batches.iter().enumerate() {
            let inputs = StepInputs {
                head,
                lr,
                penalty,
                check_labels: epoch == 0 && i == 0,
            };
            let (loss, pen) = step(model, data, idx, opt, &mut dropout_rng, &inputs)?;
            loss_sum += loss;
            pen_sum += pen;
            examples += idx.len();
            if let Some(every) = cfg.log_every {
                if every > 0 && opt.step.is_multiple_of(every as u64) {
                    on_event(&Event::Step {
                        epoch,
                        step: opt.step,
                        task_loss: loss,
                        penalty: pen,
                        lr,
                    })?;
                }
            }
        }
        let n = batches.len().max(1) as f64;
        let report = EpochReport {
            epoch,
            steps: batches.len(),
            examples,
            task_loss: loss_sum / n,
            penalty: pen_sum / n,
            lr,
            seconds: start.elapsed().as_secs_f64(),
        };
        on_event(&Event::Epoch(report.clone()))?;
        reports.push(report);
    }
    Ok(reports)
}
