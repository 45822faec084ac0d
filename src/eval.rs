//! The one evaluation loop: a model over a dataset in eval mode, batch by batch in file
//! order, scored by what the targets are — class ids (cross-entropy, accuracy, top-k, and
//! optionally every example's scores), masks (the loss, IoU counts) or multi-hot rows (the
//! loss, scores for AP) or token labels (next-token loss per scored position, perplexity,
//! token accuracy, per-sequence scores). `mnemo eval`, validation during training, lora-gate's scoring and
//! Fisher's default loss all go through here.

use crate::data::{Dataset, TargetKind};
use crate::error::{MnemoError, Result};
use crate::loss::{self, Loss};
use crate::metrics::dense::{IouTotals, MultiLabelTotals};
use crate::metrics::{score, BatchScores, ClassificationTotals, Confusion};
use crate::model::{Mode, Model};
use crate::rng::Rng;

/// What to score and how.
#[derive(Clone, Copy, Debug)]
pub struct EvalConfig<'a> {
    /// The head of a multi-head model.
    pub head: Option<&'a str>,
    pub batch_size: usize,
    /// The loss reported on masks and multi-hot rows (class ids: always cross-entropy).
    pub loss: Loss,
    /// k of the top-k accuracy (class ids).
    pub top_k: usize,
    /// Keep every example's loss and correctness (class ids), in file order.
    pub per_example: bool,
    /// Count the confusion matrix (class ids) when the model has at most this many
    /// classes (0: never).
    pub confusion_limit: usize,
}

impl Default for EvalConfig<'_> {
    fn default() -> Self {
        EvalConfig {
            head: None,
            batch_size: 256,
            loss: Loss::Ce,
            top_k: 1,
            per_example: false,
            confusion_limit: 0,
        }
    }
}

/// One batch's scores, handed to the caller as the loop goes.
#[derive(Clone, Copy, Debug)]
pub struct BatchReport {
    /// 0-based batch index.
    pub index: usize,
    /// Examples in the batch.
    pub n: usize,
    /// Mean loss over the batch.
    pub loss: f64,
    /// Accuracy over the batch (class ids only).
    pub accuracy: Option<f64>,
}

/// What an evaluation finds.
#[derive(Clone, Debug, Default)]
pub struct Evaluation {
    pub n: usize,
    /// Mean over the examples of the loss (no label smoothing).
    pub loss: f64,
    /// Class ids: the totals.
    pub classes: Option<ClassificationTotals>,
    /// Class ids with `per_example`: every example's scores in file order.
    pub examples: Option<BatchScores>,
    /// Class ids, when the model's classes are within `confusion_limit`: rows true class,
    /// columns prediction.
    pub confusion: Option<Confusion>,
    /// Masks: IoU counts.
    pub iou: Option<IouTotals>,
    /// Multi-hot targets: scores for AP.
    pub multi: Option<MultiLabelTotals>,
    /// Token labels: next-token loss and accuracy over every scored position.
    pub tokens: Option<TokenTotals>,
    /// Token labels with `per_example`: each sequence's (summed loss, scored positions,
    /// correct predictions), in file order.
    pub sequences: Option<Vec<(f64, usize, usize)>>,
}

/// Next-token scores summed over a dataset's scored positions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TokenTotals {
    pub loss_sum: f64,
    pub positions: usize,
    pub correct: usize,
}

impl TokenTotals {
    /// Mean loss per scored position (nats): what transformers reports as `eval_loss`.
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.positions.max(1) as f64
    }
    /// exp(loss).
    pub fn perplexity(&self) -> f64 {
        self.loss().exp()
    }
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.positions.max(1) as f64
    }

    fn add(&mut self, o: &TokenTotals) {
        self.loss_sum += o.loss_sum;
        self.positions += o.positions;
        self.correct += o.correct;
    }
}

impl Evaluation {
    /// Accuracy (class ids), pixel accuracy (masks), label accuracy at logit > 0
    /// (multi-hot rows) or next-token accuracy (token labels).
    pub fn accuracy(&self) -> f64 {
        match (&self.classes, &self.iou, &self.multi, &self.tokens) {
            (Some(c), _, _, _) => c.accuracy(),
            (_, Some(i), _, _) => i.pixel_accuracy(),
            (_, _, Some(m), _) => m.label_accuracy(),
            (_, _, _, Some(t)) => t.accuracy(),
            _ => 0.0,
        }
    }
}

/// Scores `model` on `data` in eval mode; `on_batch` sees each batch's report.
pub fn evaluate(
    model: &mut Model,
    data: &Dataset,
    cfg: &EvalConfig,
    on_batch: &mut dyn FnMut(&BatchReport) -> Result<()>,
) -> Result<Evaluation> {
    let loss = match data.target_kind {
        TargetKind::Class => Loss::Ce,
        TargetKind::Tokens { .. } => Loss::CausalLm,
        _ => cfg.loss,
    };
    loss.check_targets(data)?;
    let mut rng = Rng::new(0); // unused in eval mode: dropout is off
    let device = model.device.clone();
    let mut out = Evaluation::default();
    let mut loss_sum = 0.0;
    for (i, idx) in data.order(None).chunks(cfg.batch_size.max(1)).enumerate() {
        let (x, y) = data.batch(idx, &device)?;
        let logits = model.forward(&x, cfg.head, Mode::Eval, &mut rng)?;
        let dims = logits.dims().to_vec();
        loss.check_output(data, &dims, cfg.head, i == 0)?;
        let l: Vec<f32> = logits
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(|source| MnemoError::Compute {
                context: "reading logits".into(),
                source,
            })?;
        let report = match data.target_kind {
            TargetKind::Class => {
                let s = score(&l, dims[1], &y, cfg.top_k);
                let n = s.loss.len() as f64;
                let r = BatchReport {
                    index: i,
                    n: idx.len(),
                    loss: s.loss.iter().sum::<f64>() / n,
                    accuracy: Some(s.correct.iter().filter(|&&c| c).count() as f64 / n),
                };
                out.classes
                    .get_or_insert_with(Default::default)
                    .add(&s, &y, dims[1]);
                if dims[1] <= cfg.confusion_limit {
                    if out.confusion.is_none() {
                        out.confusion = Some(Confusion::new(dims[1])?);
                    }
                    if let Some(c) = out.confusion.as_mut() {
                        c.add(&y, &s.predicted);
                    }
                }
                if cfg.per_example {
                    let all = out.examples.get_or_insert_with(Default::default);
                    all.loss.extend(s.loss);
                    all.correct.extend(s.correct);
                    all.top_k.extend(s.top_k);
                    all.predicted.extend(s.predicted);
                }
                r
            }
            TargetKind::Tokens { .. } => {
                let seqs = loss::token_scores(&l, &dims, &y);
                let mut batch = TokenTotals::default();
                for &(loss_sum, positions, correct) in &seqs {
                    batch.add(&TokenTotals {
                        loss_sum,
                        positions,
                        correct,
                    });
                }
                out.tokens.get_or_insert_with(Default::default).add(&batch);
                if cfg.per_example {
                    out.sequences.get_or_insert_with(Vec::new).extend(seqs);
                }
                BatchReport {
                    index: i,
                    n: idx.len(),
                    loss: batch.loss(),
                    accuracy: Some(batch.accuracy()),
                }
            }
            kind => {
                let (v, _) = loss::loss_grad(loss, kind, &l, &dims, &y, 0.0, 1.0);
                match kind {
                    TargetKind::Mask { h, w } => out
                        .iou
                        .get_or_insert_with(|| IouTotals::new(dims[1]))
                        .add(&l, h * w, &y),
                    TargetKind::MultiLabel { k } => out
                        .multi
                        .get_or_insert_with(|| MultiLabelTotals::new(k))
                        .add(&l, &y),
                    TargetKind::Class | TargetKind::Tokens { .. } => {
                        unreachable!("class ids and tokens are scored above")
                    }
                }
                loss_sum += v * idx.len() as f64;
                BatchReport {
                    index: i,
                    n: idx.len(),
                    loss: v,
                    accuracy: None,
                }
            }
        };
        out.n += idx.len();
        on_batch(&report)?;
    }
    out.loss = match (&out.classes, &out.tokens) {
        (Some(c), _) => c.loss(),
        (_, Some(t)) => t.loss(),
        _ => loss_sum / out.n.max(1) as f64,
    };
    Ok(out)
}

/// The loss for `data` when none is named: cross-entropy for class ids, BCE for multi-hot
/// rows, and for masks cross-entropy unless the model has a single output channel (a
/// binary mask), then BCE.
pub fn default_loss(model: &mut Model, head: Option<&str>, data: &Dataset) -> Result<Loss> {
    Ok(match data.target_kind {
        TargetKind::Class => Loss::Ce,
        TargetKind::MultiLabel { .. } => Loss::Bce,
        TargetKind::Tokens { .. } => Loss::CausalLm,
        TargetKind::Mask { .. } => {
            let (x, _) = data.batch(&[0], &model.device)?;
            let dims = model
                .forward(&x, head, Mode::Eval, &mut Rng::new(0))?
                .dims()
                .to_vec();
            match dims.get(1) {
                Some(1) => Loss::Bce,
                _ => Loss::Ce,
            }
        }
    })
}
