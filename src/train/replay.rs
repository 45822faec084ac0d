//! Experience replay as a training strategy: each batch is paired with a batch of the same
//! size drawn from a buffer, loss = (1 − ratio)·new + ratio·replay (the new batch alone while
//! the buffer is empty), replay adding `distill`·MSE against the stored logits (dark
//! experience replay); after each update of the first epoch the new examples are offered to
//! the buffer. The draws have their own RNG, saved with the buffer in the state file, so a
//! resumed run replays exactly what an uninterrupted one would.
//!
//! ER-ACE (`ace`, Caccia et al. 2022, as Avalanche's `ACECriterion`): while a replayed batch
//! joins, the new batch's cross-entropy runs only over the classes present in it (the others'
//! logits masked out), so new classes do not push the old ones' logits down; the replayed
//! batch keeps every class. DER++ (`replay_labels` = β, Buzzega et al. 2020, as Mammoth's
//! `derpp`): loss = CE(new) + α·MSE(logits of a first draw, stored logits) + β·CE(a second,
//! independent draw), no ratio; β = 0 is DER.
//!
//! With [`Projection::Agem`] the drawn batch is not trained on: it gives A-GEM's reference
//! gradient (Chaudhry et al. 2019, as Avalanche's `AGEMPlugin`): the new batch's gradient g,
//! the replay batch's g_ref (mean loss), and when gᵀg_ref < 0 the update uses
//! g − (gᵀg_ref / g_refᵀg_ref)·g_ref, so the loss on the memory does not rise to first order.

use super::strategy::{BatchOut, Pass, Strategy, StrategyState, UpdateCtx};
use super::TrainConfig;
use crate::checkpoint::Checkpoint;
use crate::data::Dataset;
use crate::error::{MnemoError, Result};
use crate::replay::ReservoirBuffer;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Seed of the replay draws, apart from shuffling and from the buffer's insertion stream.
const REPLAY_SEED: u64 = 0x4E91_A7D2_5EED_0002;

/// What the replayed batch does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Projection {
    /// Experience replay: its loss joins the new batch's, weighted by the ratio.
    None,
    /// A-GEM: its gradient is the reference the new gradient is projected against.
    Agem,
}

pub struct Replay {
    pub buffer: ReservoirBuffer,
    pub ratio: f64,
    pub distill: f64,
    pub projection: Projection,
    /// ER-ACE: the new batch's loss over the classes present in it.
    pub ace: bool,
    /// DER++'s β (`Some(0)`: DER): the weight of a second draw's cross-entropy.
    pub replay_labels: Option<f64>,
    /// ER-ACE: the present classes of the new batch being processed and its size.
    present: Option<(Vec<usize>, usize)>,
    /// DER++: the second draw, for its labels.
    draw_labels: Option<Vec<usize>>,
    /// ER-ACE: this batch's correction (CE over the present classes − CE over all), and
    /// the epoch's sum of the new batches' asymmetric losses and their count.
    correction: f64,
    ace_sum: f64,
    ace_batches: usize,
    rng: Rng,
    /// Offer the new examples to the buffer in this update (first epoch only).
    insert: bool,
    /// The draw for the batch being processed, taken before its backward pass.
    draw: Option<Vec<usize>>,
    loss_sum: f64,
    batches: usize,
    /// A-GEM: updates whose gradient was projected, this epoch.
    projected: usize,
    /// The training data's example shape and file, for checking a restored buffer.
    data_shape: Vec<usize>,
    data_path: std::path::PathBuf,
}

/// What the state file keeps of a replay run besides the buffer's tensors.
#[derive(Serialize, Deserialize)]
struct Saved {
    rng: [u64; 4],
    loss_sum: f64,
    batches: usize,
    #[serde(default)]
    projected: usize,
    #[serde(default)]
    ace_sum: f64,
    #[serde(default)]
    ace_batches: usize,
    /// The buffer's own metadata; absent when it was empty (a run only starts from its
    /// file, which was empty too).
    buffer: Option<BTreeMap<String, String>>,
}

/// Σ a·b over every parameter's gradient, in f64.
fn dot(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> f64 {
    a.iter()
        .filter_map(|(k, x)| b.get(k).map(|y| (x, y)))
        .flat_map(|(x, y)| x.iter().zip(y))
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum()
}

impl Replay {
    /// A-GEM over `buffer`: the same draws, buffer and state as replay, the replayed batch
    /// used as the projection's reference.
    pub fn agem(buffer: ReservoirBuffer) -> Self {
        Replay {
            projection: Projection::Agem,
            ..Replay::new(buffer, 1.0, 0.0)
        }
    }

    /// DER++'s replay terms: α·MSE on the first draw's logits (its cross-entropy at weight
    /// 0), β·CE on the second draw.
    fn derpp(
        &mut self,
        ctx: &UpdateCtx,
        pass: &mut Pass,
        batch: &BatchOut,
        beta: f64,
    ) -> Result<()> {
        let (first, second) = (self.draw.take(), self.draw_labels.take());
        if first.is_none() && second.is_none() {
            return Ok(());
        }
        if ctx.check {
            self.buffer.check_labels(batch.classes, ctx.head)?;
        }
        let mut value = 0.0;
        if let Some(slots) = first {
            let rd = self.buffer.to_dataset(&slots);
            let all: Vec<usize> = (0..slots.len()).collect();
            let stored =
                self.buffer
                    .logits_of(&slots)
                    .ok_or_else(|| MnemoError::InvalidBuffer {
                        path: self.buffer.path.clone(),
                        reason: "DER needs the logits stored with each example (a buffer filled with distillation)".into(),
                    })?;
            let (w, s) = (self.distill, ctx.scale);
            let mut term = |l: &[f32], _: f64, g: &mut [f32]| distill_grad(l, &stored, w, s, g);
            value += pass
                .run(&rd, &all, 0.0, true, Some(&mut term), false)?
                .extra;
        }
        if let Some(slots) = second {
            let rd = self.buffer.to_dataset(&slots);
            let all: Vec<usize> = (0..slots.len()).collect();
            value += beta
                * pass
                    .run(&rd, &all, ctx.scale * beta, true, None, false)?
                    .loss;
        }
        self.loss_sum += value;
        self.batches += 1;
        Ok(())
    }

    /// A-GEM's step: `pass.acc` holds the new batch's gradient g; the replay batch's
    /// gradient g_ref is computed into it, then it is set to g projected when gᵀg_ref < 0.
    fn project(&mut self, ctx: &UpdateCtx, pass: &mut Pass, slots: &[usize]) -> Result<()> {
        let rd = self.buffer.to_dataset(slots);
        let all: Vec<usize> = (0..slots.len()).collect();
        let g: BTreeMap<String, Vec<f32>> = pass.acc.clone();
        pass.acc.values_mut().for_each(|v| v.fill(0.0));
        let b = pass.run(&rd, &all, ctx.scale, true, None, false)?;
        self.loss_sum += b.loss;
        self.batches += 1;
        let g_ref = std::mem::replace(pass.acc, g);
        let d = dot(pass.acc, &g_ref);
        let rr = dot(&g_ref, &g_ref);
        if d < 0.0 && rr > 0.0 {
            let alpha = (d / rr) as f32;
            for (k, v) in pass.acc.iter_mut() {
                if let Some(r) = g_ref.get(k) {
                    v.iter_mut().zip(r).for_each(|(v, &r)| *v -= alpha * r);
                }
            }
            self.projected += 1;
        }
        Ok(())
    }

    pub fn new(buffer: ReservoirBuffer, ratio: f64, distill: f64) -> Self {
        Replay {
            buffer,
            ratio,
            distill,
            projection: Projection::None,
            ace: false,
            replay_labels: None,
            present: None,
            draw_labels: None,
            correction: 0.0,
            ace_sum: 0.0,
            ace_batches: 0,
            rng: Rng::new(0),
            insert: false,
            draw: None,
            loss_sum: 0.0,
            batches: 0,
            projected: 0,
            data_shape: Vec::new(),
            data_path: Default::default(),
        }
    }
}

/// ER-ACE's correction at the logits `l` (`[b, C]`) of a new batch: CE over the `present`
/// classes minus CE over all (lse_present − lse_all per row, the label being present), its
/// gradient (softmax over the present classes − softmax over all)/b times `scale` added to
/// `grad`; returns the mean correction.
fn ace_grad(l: &[f32], present: &[usize], rows: usize, scale: f64, grad: &mut [f32]) -> f64 {
    let c = l.len() / rows.max(1);
    // Labels beyond the outputs are the loss's error to report, not an index here.
    let present: Vec<usize> = present.iter().copied().filter(|&j| j < c).collect();
    let present = present.as_slice();
    let mut total = 0.0;
    for (row, g) in l.chunks_exact(c).zip(grad.chunks_exact_mut(c)) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let lse =
            |it: &mut dyn Iterator<Item = f64>| max + it.map(|x| (x - max).exp()).sum::<f64>().ln();
        let all = lse(&mut row.iter().map(|&x| x as f64));
        let pres = lse(&mut present.iter().map(|&j| row[j] as f64));
        total += pres - all;
        for (j, (gj, &x)) in g.iter_mut().zip(row).enumerate() {
            let p_all = (x as f64 - all).exp();
            let p_pres = if present.binary_search(&j).is_ok() {
                (x as f64 - pres).exp()
            } else {
                0.0
            };
            *gj += ((p_pres - p_all) / rows as f64 * scale) as f32;
        }
    }
    total / rows as f64
}

/// Adds W·mean((l − z)²) over all of a batch's logits to the loss gradient `grad` (scaled
/// by `scale`), and returns that distillation loss.
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

impl Strategy for Replay {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn start(&mut self, data: &Dataset, cfg: &TrainConfig) -> Result<()> {
        data.require_class_or_tokens("experience replay")?;
        if self.ace
            && (data.target_kind != crate::data::TargetKind::Class
                || cfg.loss != crate::loss::Loss::Ce
                || cfg.label_smoothing != 0.0)
        {
            return Err(MnemoError::InvalidDataset {
                path: data.path.clone(),
                reason: "ER-ACE's asymmetric loss is a cross-entropy over class ids (no label smoothing)".into(),
            });
        }
        if matches!(data.target_kind, crate::data::TargetKind::Tokens { .. }) && self.distill > 0.0
        {
            return Err(crate::error::MnemoError::InvalidDataset {
                path: data.path.clone(),
                reason: "dark experience replay (distillation) stores class logits; token sequences are replayed without it".into(),
            });
        }
        self.buffer.expect_shape(&data.example_shape, &data.path)?;
        self.rng = Rng::new(cfg.seed ^ REPLAY_SEED);
        self.data_shape = data.example_shape.clone();
        self.data_path = data.path.clone();
        Ok(())
    }

    fn begin_update(&mut self, ctx: &UpdateCtx) {
        self.insert = ctx.epoch == 0;
    }

    /// Logits are kept with buffered examples under distillation (or once a buffer has them).
    fn wants_logits(&self) -> bool {
        self.insert && (self.distill > 0.0 || self.buffer.has_logits())
    }

    fn before_batch(&mut self, _ctx: &UpdateCtx, data: &Dataset, idx: &[usize]) -> Result<f64> {
        // Drawn from the buffer as it stood before this update.
        if let Some(beta) = self.replay_labels {
            // DER++: two independent draws, the new batch at full weight.
            let ready = !self.buffer.is_empty();
            self.draw =
                (ready && self.distill > 0.0).then(|| self.buffer.draw(idx.len(), &mut self.rng));
            self.draw_labels =
                (ready && beta > 0.0).then(|| self.buffer.draw(idx.len(), &mut self.rng));
        } else {
            self.draw = (self.ratio > 0.0 && !self.buffer.is_empty())
                .then(|| self.buffer.draw(idx.len(), &mut self.rng));
        }
        let replaying = self.draw.is_some() || self.draw_labels.is_some();
        self.present = (self.ace && replaying).then(|| {
            let mut p: Vec<usize> = idx.iter().map(|&i| data.targets[i] as usize).collect();
            p.sort_unstable();
            p.dedup();
            (p, idx.len())
        });
        if self.replay_labels.is_some() {
            return Ok(1.0);
        }
        Ok(
            if self.draw.is_some() && self.projection == Projection::None {
                1.0 - self.ratio
            } else {
                1.0
            },
        )
    }

    /// ER-ACE's correction on the new batch's logits.
    fn logit_term(&mut self, logits: &[f32], scale: f64, grad: &mut [f32]) -> f64 {
        self.correction = match &self.present {
            Some((present, rows)) => ace_grad(logits, present, *rows, scale, grad),
            None => 0.0,
        };
        self.correction
    }

    fn after_batch(&mut self, ctx: &UpdateCtx, pass: &mut Pass, batch: &BatchOut) -> Result<()> {
        if self.present.take().is_some() {
            self.ace_sum += batch.loss + self.correction;
            self.ace_batches += 1;
        }
        if let Some(beta) = self.replay_labels {
            return self.derpp(ctx, pass, batch, beta);
        }
        let Some(slots) = self.draw.take() else {
            return Ok(());
        };
        if ctx.check {
            // Every stored label, once, against this model (a buffer from another model is
            // named, with its slot).
            self.buffer.check_labels(batch.classes, ctx.head)?;
        }
        if self.projection == Projection::Agem {
            return self.project(ctx, pass, &slots);
        }
        let rd = self.buffer.to_dataset(&slots);
        let stored = (self.distill > 0.0)
            .then(|| self.buffer.logits_of(&slots))
            .flatten();
        let all: Vec<usize> = (0..slots.len()).collect();
        let w = self.distill;
        let mut term = |l: &[f32], scale: f64, g: &mut [f32]| {
            stored
                .as_deref()
                .map_or(0.0, |z| distill_grad(l, z, w, scale, g))
        };
        let b = pass.run(
            &rd,
            &all,
            ctx.scale * self.ratio,
            true,
            Some(&mut term),
            false,
        )?;
        self.loss_sum += b.loss + b.extra;
        self.batches += 1;
        Ok(())
    }

    fn after_update(
        &mut self,
        _ctx: &UpdateCtx,
        data: &Dataset,
        group: &[&[usize]],
        logits: &[Option<Vec<f32>>],
    ) -> Result<()> {
        if !self.insert {
            return Ok(());
        }
        let el: usize = data.example_shape.iter().product();
        for (idx, logits) in group.iter().zip(logits) {
            let c = logits.as_ref().map_or(0, |l| l.len() / idx.len().max(1));
            for (k, &i) in idx.iter().enumerate() {
                if let crate::data::TargetKind::Tokens { t } = data.target_kind {
                    self.buffer.offer_sequence(
                        &data.inputs[i * el..(i + 1) * el],
                        &data.targets[i * t..(i + 1) * t],
                    )?;
                    continue;
                }
                self.buffer.offer(
                    &data.inputs[i * el..(i + 1) * el],
                    data.targets[i],
                    data.from_u8,
                    logits.as_ref().map(|l| &l[k * c..(k + 1) * c]),
                )?;
            }
        }
        Ok(())
    }

    /// The mean over the epoch's replay batches of their loss (cross-entropy plus
    /// distillation, unweighted by the ratio; DER++: α·MSE + β·CE), and ER-ACE's asymmetric
    /// loss of the new batches that had replay (`ace_loss`).
    fn epoch_fields(&mut self) -> Vec<(&'static str, f64)> {
        let mut f: Vec<(&'static str, f64)> = (self.batches > 0)
            .then(|| ("replay_loss", self.loss_sum / self.batches as f64))
            .into_iter()
            .collect();
        if self.projection == Projection::Agem {
            f.push(("projected", self.projected as f64));
        }
        if self.ace_batches > 0 {
            f.push(("ace_loss", self.ace_sum / self.ace_batches as f64));
        }
        (self.ace_sum, self.ace_batches) = (0.0, 0);
        self.loss_sum = 0.0;
        self.batches = 0;
        self.projected = 0;
        f
    }

    fn save_state(&self) -> Result<Option<StrategyState>> {
        let (tensors, meta) = if self.buffer.is_empty() {
            (Vec::new(), None)
        } else {
            let (t, m) = self.buffer.to_parts("");
            (t, Some(m))
        };
        let saved = Saved {
            rng: self.rng.state(),
            loss_sum: self.loss_sum,
            batches: self.batches,
            projected: self.projected,
            ace_sum: self.ace_sum,
            ace_batches: self.ace_batches,
            buffer: meta,
        };
        Ok(Some(StrategyState {
            tensors,
            json: serde_json::to_string(&saved).expect("replay state serialises"),
        }))
    }

    fn restore_state(
        &mut self,
        ckpt: &Checkpoint,
        prefix: &str,
        json: &str,
        path: &Path,
    ) -> Result<()> {
        let saved: Saved = serde_json::from_str(json).map_err(|e| MnemoError::InvalidState {
            path: path.to_path_buf(),
            reason: format!("unreadable replay state: {e}"),
        })?;
        if let Some(m) = &saved.buffer {
            let b = ReservoirBuffer::from_checkpoint(ckpt, prefix, path, m)?;
            b.check_compatible(&self.data_shape, &self.data_path)?;
            let buffer_path = std::mem::take(&mut self.buffer.path);
            self.buffer = b;
            self.buffer.path = buffer_path;
        }
        self.rng = Rng::from_state(saved.rng);
        self.loss_sum = saved.loss_sum;
        self.batches = saved.batches;
        self.projected = saved.projected;
        (self.ace_sum, self.ace_batches) = (saved.ace_sum, saved.ace_batches);
        Ok(())
    }
}
