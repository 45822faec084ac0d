//! The online learner: a model that learns from chunks of a stream as they arrive, one
//! optimizer update per micro-batch, with the same update, strategies (EMA, EWC, the L2
//! anchor, ...) and resumable state as the epoch loop in `train/mod.rs`. Each chunk is first
//! scored by the model as it stands (prequential evaluation: predict, then train), then
//! learned from. The caller decides when to save; the state holds everything a resumed
//! learner needs to continue to the same bytes, including how many examples it has seen.

use super::dense::DenseNet;
use super::state::{Progress, StateFile};
use super::strategy::Strategy;
use super::{finite, sync, update, Optimizer, TrainConfig, DROPOUT_SEED};
use crate::data::{Dataset, TargetKind};
use crate::error::{MnemoError, Result};
use crate::model::Model;
use crate::rng::Rng;
use std::collections::BTreeMap;

/// How a chunk scored before the learner trained on it.
#[derive(Clone, Debug, Default)]
pub struct Scored {
    /// Class ids: each example's loss and whether its arg-max was right.
    pub per_example: Option<(Vec<f64>, Vec<bool>)>,
    /// The chunk's mean loss.
    pub loss: f64,
    /// Accuracy (pixel accuracy for masks, label accuracy for multi-hot rows).
    pub accuracy: f64,
}

/// What learning from a chunk did.
#[derive(Clone, Debug, Default)]
pub struct Learned {
    pub updates: u64,
    /// Mean training loss over the chunk's micro-batches (before each update).
    pub loss: f64,
    /// Mean penalty over the updates.
    pub penalty: f64,
}

/// A model learning online.
pub struct Learner<'a> {
    pub model: &'a mut Model,
    pub opt: &'a mut Optimizer,
    cfg: &'a TrainConfig,
    host: BTreeMap<String, Vec<f32>>,
    acc: BTreeMap<String, Vec<f32>>,
    dense: Option<DenseNet>,
    /// Whether the strategies were started and the dense plan made (on the first batch,
    /// whose shapes they need).
    planned: bool,
    /// The state resumed from: loaded again once the strategies have started, since
    /// `start` resets what their saved state restores (replay's draw RNG).
    resumed: Option<StateFile>,
    dropout_rng: Rng,
    /// Examples learned from so far (the stream position to resume at).
    pub seen: u64,
    /// Chunks learned from so far.
    pub chunks: u64,
}

impl<'a> Learner<'a> {
    pub fn new(model: &'a mut Model, opt: &'a mut Optimizer, cfg: &'a TrainConfig) -> Result<Self> {
        let mut learner = Learner {
            model,
            opt,
            cfg,
            host: BTreeMap::new(),
            acc: BTreeMap::new(),
            dense: None,
            planned: false,
            resumed: None,
            dropout_rng: Rng::new(cfg.seed ^ DROPOUT_SEED),
            seen: 0,
            chunks: 0,
        };
        learner.read_host()?;
        Ok(learner)
    }

    /// Continues from `sf` when it exists; returns whether it did. The weights, moments and
    /// stream position are read now; the strategies' states once they have started (on the
    /// first batch, whose shapes they check their state against).
    pub fn resume(&mut self, sf: &StateFile) -> Result<bool> {
        let Some(r) = sf.load(self.model, self.opt, &mut [])? else {
            return Ok(false);
        };
        self.seen = r.progress.examples as u64;
        self.chunks = r.progress.batch as u64;
        self.dropout_rng = Rng::from_state(r.progress.dropout_rng);
        self.read_host()?;
        self.resumed = Some(sf.clone());
        Ok(true)
    }

    fn read_host(&mut self) -> Result<()> {
        for (name, var) in &self.model.params {
            let v = var
                .as_tensor()
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(MnemoError::compute("reading weights"))?;
            self.host.insert(name.clone(), v);
        }
        Ok(())
    }

    /// On the first batch: the strategies start (they refuse data they cannot serve), a
    /// resumed state is restored over what `start` reset, and the dense plan is made.
    fn begin(&mut self, batch: &Dataset, strategies: &mut [&mut dyn Strategy]) -> Result<()> {
        if self.planned {
            return Ok(());
        }
        for s in strategies.iter_mut() {
            s.start(batch, self.cfg)?;
        }
        if let Some(sf) = self.resumed.take() {
            sf.load(self.model, self.opt, strategies)?;
            self.read_host()?;
        }
        self.dense = match self.model.device.is_cpu() && self.model.adapter.is_none() {
            true => DenseNet::plan(&self.model.spec, self.cfg.head.as_deref())
                .filter(|n| n.in_features() == batch.example_shape.iter().product::<usize>()),
            false => None,
        };
        self.planned = true;
        Ok(())
    }

    /// The model's variables brought up to date (the dense path trains a host copy).
    fn sync_model(&mut self) -> Result<()> {
        if self.dense.is_some() {
            sync(self.model, &self.host)?;
        }
        Ok(())
    }

    /// Scores `chunk` in eval mode with the weights as they are.
    pub fn score(
        &mut self,
        chunk: &Dataset,
        strategies: &mut [&mut dyn Strategy],
    ) -> Result<Scored> {
        self.begin(chunk, strategies)?;
        self.sync_model()?;
        let ecfg = crate::eval::EvalConfig {
            head: self.cfg.head.as_deref(),
            batch_size: self.cfg.batch_size.max(256),
            loss: self.cfg.loss,
            per_example: true,
            ..Default::default()
        };
        let e = crate::eval::evaluate(self.model, chunk, &ecfg, &mut |_| Ok(()))?;
        Ok(Scored {
            per_example: match chunk.target_kind {
                TargetKind::Class => e.examples.clone().map(|s| (s.loss, s.correct)),
                _ => None,
            },
            loss: e.loss,
            accuracy: e.accuracy(),
        })
    }

    /// Learns from `chunk`: micro-batches of the configured size in stream order, one
    /// update each.
    pub fn learn(
        &mut self,
        chunk: &Dataset,
        strategies: &mut [&mut dyn Strategy],
    ) -> Result<Learned> {
        self.begin(chunk, strategies)?;
        self.cfg.loss.check_targets(chunk)?;
        let order: Vec<usize> = (0..chunk.len()).collect();
        let lr = self.opt.config.as_ref().map(|c| c.lr).unwrap_or(0.0);
        let mut out = Learned::default();
        let mut batches = 0usize;
        for idx in order.chunks(self.cfg.batch_size.max(1)) {
            let u = update(
                self.model,
                self.dense.as_mut(),
                &mut self.host,
                &mut self.acc,
                chunk,
                &[idx],
                self.opt,
                &mut self.dropout_rng,
                self.cfg,
                strategies,
                lr,
                0,
                batches == 0,
            )?;
            finite::check_update(self.opt.step, u.loss_sum + u.penalty + u.extra, &self.host)?;
            out.loss += u.loss_sum;
            out.penalty += u.penalty;
            out.updates += 1;
            batches += 1;
        }
        out.loss /= batches.max(1) as f64;
        out.penalty /= out.updates.max(1) as f64;
        self.seen += chunk.len() as u64;
        self.chunks += 1;
        Ok(out)
    }

    /// Writes the state (model, optimizer, strategies, stream position) atomically, and
    /// brings the model's variables up to date for the caller's own files.
    pub fn save(&mut self, sf: Option<&StateFile>, strategies: &[&mut dyn Strategy]) -> Result<()> {
        self.sync_model()?;
        let Some(sf) = sf else {
            return Ok(());
        };
        let p = Progress {
            step: self.opt.step,
            epoch: 0,
            // The loop's batch counter holds the chunks, `examples` the stream position.
            batch: self.chunks as usize,
            epoch_rng: Rng::new(self.cfg.seed).state(),
            dropout_rng: self.dropout_rng.state(),
            loss_sum: 0.0,
            penalty_sum: 0.0,
            batches_done: 0,
            updates_done: 0,
            examples: self.seen as usize,
            last_lr: self.opt.config.as_ref().map(|c| c.lr).unwrap_or(0.0),
            best: None,
            bad_epochs: 0,
            stopped: false,
        };
        sf.save(&p, self.model, self.opt, None, strategies)
    }
}
