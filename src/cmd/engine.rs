//! Training-engine flags shared by every training subcommand (flattened into their Args),
//! and `fit`: the one place that runs the engine, streams its JSON Lines, writes the
//! output checkpoint and prints the summary.

use super::{num, Global, JsonLines};
use anyhow::Context;
use mnemo::checkpoint::{prepare_checkpoint, prepare_model_output, Checkpoint};
use mnemo::data::Dataset;
use mnemo::fsutil::Destinations;
use mnemo::model::{ArchSpec, Mode, Model, ARCH_KEY};
use mnemo::provenance::Provenance;
use mnemo::train::{
    self, optim_file, AnchorPull, Event, EwcPenalty, Job, Lwf, Optimizer, OptimizerConfig,
    OptimizerKind, Outcome, PenaltyTerm, Replay, Schedule, ScheduleKind, ScheduleUnit, Si,
    StateFile, Strategy, TrainConfig,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerName {
    Sgd,
    Adam,
    Adamw,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleName {
    /// The base rate throughout.
    Constant,
    /// lr·γ^⌊t/step-size⌋ (torch StepLR).
    Step,
    /// η_min + (lr − η_min)(1 + cos(π·t/T_max))/2 (torch CosineAnnealingLR).
    Cosine,
    /// Cosine restarting after T₀, T₀·T_mult, … (torch CosineAnnealingWarmRestarts).
    CosineRestarts,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitName {
    /// The schedule's clock counts optimizer updates.
    Step,
    /// The schedule's clock counts epochs.
    Epoch,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossName {
    /// Softmax cross-entropy: class ids [N], or masks [N,H,W] against [B,C,H,W] logits (mean over pixels).
    Ce,
    /// Binary cross-entropy with logits, mean over all elements: multi-hot [N,K] or binary masks.
    Bce,
    /// Sigmoid focal loss (torchvision's; --focal-alpha, --focal-gamma), mean over all elements.
    Focal,
    /// Soft dice on sigmoid probabilities of binary masks, 1 − (2Σpt + 1)/(Σp + Σt + 1) per example, batch mean.
    Dice,
    /// dice + bce, for binary masks.
    DiceBce,
    /// Causal-LM cross-entropy on token labels [N,T] (transformers' `labels`, -100 not scored): position t predicts the label at t+1, mean over scored positions. `ce` on token labels is the same.
    CausalLm,
}

impl LossName {
    pub fn to_loss(self, alpha: f64, gamma: f64) -> anyhow::Result<train::Loss> {
        if self == LossName::Focal {
            if !alpha.is_finite() || alpha > 1.0 {
                anyhow::bail!(
                    "--focal-alpha {alpha}: must be at most 1 (negative: no α weighting)"
                );
            }
            if !(gamma.is_finite() && gamma >= 0.0) {
                anyhow::bail!("--focal-gamma {gamma}: must be a number ≥ 0");
            }
        }
        Ok(match self {
            LossName::Ce => train::Loss::Ce,
            LossName::Bce => train::Loss::Bce,
            LossName::Focal => train::Loss::Focal { alpha, gamma },
            LossName::Dice => train::Loss::Dice,
            LossName::DiceBce => train::Loss::DiceBce,
            LossName::CausalLm => train::Loss::CausalLm,
        })
    }
}

/// The optimizer's flags (shared by the epoch-based training commands and `online`).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Training")]
pub struct OptimizerArgs {
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: OptimizerName,
    /// Learning rate, in [0, 1000].
    #[arg(long, default_value_t = 1e-3, value_parser = mnemo::validate::learning_rate)]
    pub lr: f64,
    /// SGD momentum (torch semantics: the first step's buffer is the gradient).
    #[arg(long, default_value_t = 0.0, value_parser = mnemo::validate::unit_closed_f32)]
    pub momentum: f32,
    /// Nesterov momentum (SGD).
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay: L2 in the gradient for sgd/adam, decoupled for adamw. Biases and
    /// 1-dim parameters are exempt unless --decay-all.
    #[arg(long, default_value_t = 0.0, value_parser = mnemo::validate::non_negative_f32)]
    pub weight_decay: f32,
    /// Apply weight decay to every parameter, as torch's optimizers do by default.
    #[arg(long)]
    pub decay_all: bool,
    #[arg(long, default_value_t = 0.9, value_parser = mnemo::validate::unit_half_open_f32)]
    pub beta1: f32,
    #[arg(long, default_value_t = 0.999, value_parser = mnemo::validate::unit_half_open_f32)]
    pub beta2: f32,
    #[arg(long, default_value_t = 1e-8, value_parser = mnemo::validate::positive_f32)]
    pub eps: f32,
}

impl OptimizerArgs {
    pub fn config(&self) -> OptimizerConfig {
        let kind = match self.optimizer {
            OptimizerName::Sgd => OptimizerKind::Sgd {
                momentum: self.momentum,
                nesterov: self.nesterov,
            },
            OptimizerName::Adam => OptimizerKind::Adam {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
            },
            OptimizerName::Adamw => OptimizerKind::AdamW {
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
            },
        };
        OptimizerConfig {
            kind,
            lr: self.lr,
            weight_decay: self.weight_decay,
            decay_all: self.decay_all,
        }
    }
}

/// The L2 anchor pull (every training command, `online` too).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AnchorArgs {
    /// Pull towards this checkpoint: adds μ·Σ(θ − θ_anchor)² (μ from --l2-lambda).
    #[arg(long, value_name = "CKPT")]
    pub l2_anchor: Option<PathBuf>,
    /// Strength μ of the --l2-anchor pull.
    #[arg(long, value_name = "MU", default_value_t = 0.0, value_parser = mnemo::validate::non_negative)]
    pub l2_lambda: f64,
}

/// Synaptic Intelligence (every training command, `online` too).
#[derive(clap::Args, Debug, Clone)]
pub struct SiArgs {
    /// Synaptic Intelligence: write this task's importance Ω = ω/((θ_end − θ_start)² + ξ)
    /// here with the weights (at the end; `online`: at every checkpoint, for the stream so
    /// far), ω = −Σ g·Δθ over the run's updates, negative entries clamped to 0, in a Fisher
    /// file's layout: the next task's penalty is --penalty OMEGA:THIS_OUTPUT.
    #[arg(long, value_name = "OMEGA")]
    pub si_importance: Option<PathBuf>,
    /// Damping ξ of --si-importance's denominator.
    #[arg(
        long,
        value_name = "XI",
        default_value_t = 0.1,
        requires = "si_importance",
        value_parser = mnemo::validate::positive
    )]
    pub si_xi: f64,
    /// Add this earlier importance file to --si-importance's (Zenke et al.'s Ω summed over
    /// tasks).
    #[arg(long, value_name = "OMEGA", requires = "si_importance")]
    pub si_prior: Option<PathBuf>,
}

/// Learning without forgetting (every training command, `online` too).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LwfArgs {
    /// Learning without forgetting: distil from this model (the one before this task) on
    /// the new data, adding α·KL(softmax(old/T) ‖ softmax(new/T)) (batch mean, Avalanche's
    /// LwF) to the loss. The old model runs frozen, in eval mode.
    #[arg(long, value_name = "OLD")]
    pub distill_from: Option<PathBuf>,
    /// Architecture of --distill-from when its file carries none (default: the trained
    /// model's).
    #[arg(long, value_name = "SPEC", requires = "distill_from")]
    pub distill_arch: Option<String>,
    /// Softmax temperature T of --distill-from.
    #[arg(long, value_name = "T", default_value_t = 2.0, value_parser = mnemo::validate::positive)]
    pub distill_temperature: f64,
    /// Weight α of --distill-from's term.
    #[arg(long, value_name = "ALPHA", default_value_t = 1.0, value_parser = mnemo::validate::non_negative)]
    pub distill_weight: f64,
    /// Distil only these outputs of --distill-from (the classes the old model knew, as
    /// Avalanche distils its previously active units), e.g. 0,1,2,3; default: all.
    #[arg(
        long,
        value_name = "C,...",
        value_delimiter = ',',
        requires = "distill_from"
    )]
    pub distill_classes: Vec<usize>,
}

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Training")]
pub struct EngineArgs {
    #[command(flatten)]
    pub opt: OptimizerArgs,
    #[arg(long, default_value_t = 1, value_parser = mnemo::validate::size)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Seed of the shuffling and dropout; the same seed gives the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Batches are consecutive examples in file order.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Stop each epoch after this many batches.
    #[arg(long, value_name = "N", value_parser = mnemo::validate::size)]
    pub max_batches_per_epoch: Option<usize>,
    /// Average the gradients of N batches into one update (torch: loss/N, N backwards, one step).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub accumulate_grad_batches: u64,
    /// Scale the gradient (penalties included) to this global L2 norm when it is larger
    /// (torch's clip_grad_norm_).
    #[arg(long, value_name = "MAX", value_parser = mnemo::validate::positive)]
    pub clip_grad_norm: Option<f64>,
    /// Cross-entropy against (1−ε)·onehot + ε/C, as torch's label_smoothing.
    #[arg(long, value_name = "EPS", default_value_t = 0.0, value_parser = mnemo::validate::unit_half_open)]
    pub label_smoothing: f64,
    /// Task loss: ce for class ids and multi-class masks; bce or focal for multi-hot targets
    /// [N,K]; bce, focal, dice or dice-bce for binary masks (one output channel).
    #[arg(long, value_enum, default_value = "ce")]
    pub loss: LossName,
    #[command(flatten)]
    pub focal: FocalArgs,
    /// Learning-rate schedule (after --warmup).
    #[arg(long, value_enum, default_value = "constant")]
    pub schedule: ScheduleName,
    /// What the schedule's clock (and --warmup, --lr-step-size, --t-max, --t0) counts.
    #[arg(long, value_enum, default_value = "step")]
    pub schedule_unit: UnitName,
    /// Linear warm-up over the first N units: lr·(t+1)/N, then the schedule starts.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = mnemo::validate::size)]
    pub warmup: usize,
    /// --schedule step: decay every N units.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = mnemo::validate::count)]
    pub lr_step_size: usize,
    /// --schedule step: decay factor γ.
    #[arg(long, value_name = "G", default_value_t = 0.1, value_parser = mnemo::validate::non_negative)]
    pub lr_gamma: f64,
    /// --schedule cosine: period T_max (default: the run's length after warm-up).
    #[arg(long, value_name = "N", value_parser = mnemo::validate::count)]
    pub t_max: Option<usize>,
    /// --schedule cosine-restarts: first period T₀.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = mnemo::validate::count)]
    pub t0: usize,
    /// --schedule cosine-restarts: period growth factor.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = mnemo::validate::count)]
    pub t_mult: usize,
    /// Floor of the cosine schedules.
    #[arg(long, value_name = "LR", default_value_t = 0.0, value_parser = mnemo::validate::learning_rate)]
    pub eta_min: f64,
    #[command(flatten)]
    pub anchor: AnchorArgs,
    #[command(flatten)]
    pub lwf: LwfArgs,
    /// Validation data, scored after every epoch; the output gets the best epoch's weights.
    #[arg(long, value_name = "D")]
    pub val: Option<PathBuf>,
    /// Stop after N epochs without a lower validation loss (needs --val).
    #[arg(long, value_name = "N", requires = "val", value_parser = mnemo::validate::count)]
    pub patience: Option<usize>,
    /// With --val, write the last epoch's weights instead of the best.
    #[arg(long, requires = "val")]
    pub keep_last: bool,
    /// Save the run's state (weights, optimizer moments, position, RNGs) here after every
    /// epoch, and resume from it when it exists: a killed run continues to the same bytes.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// With --state, also save every N updates.
    #[arg(long, value_name = "N", requires = "state", value_parser = mnemo::validate::count_u64)]
    pub save_every: Option<u64>,
    /// Start the optimizer from moments saved by an earlier run's --save-optimizer (torch's
    /// exp_avg, exp_avg_sq or momentum_buffer, and the step count for Adam's bias correction)
    /// instead of from zero: a task sequence continues one optimizer, as in one PyTorch loop.
    #[arg(long, value_name = "FILE")]
    pub init_optimizer: Option<PathBuf>,
    /// Write the optimizer's moments and step count here at the end (for --init-optimizer).
    #[arg(long, value_name = "FILE")]
    pub save_optimizer: Option<PathBuf>,
    #[command(flatten)]
    pub si: SiArgs,
    /// Also emit a {"event":"step"} line every N updates.
    #[arg(long, value_name = "N", value_parser = mnemo::validate::count)]
    pub log_every: Option<usize>,
    /// Test hook: exit with an error right after N updates, as if killed.
    #[arg(long, value_name = "N", hide = true)]
    pub halt_after: Option<u64>,
}

/// `--loss focal`'s parameters (training and `eval`).
#[derive(clap::Args, Debug, Clone)]
pub struct FocalArgs {
    /// --loss focal: weight α of the positives (negative: none), as torchvision's alpha.
    #[arg(
        id = "focal_alpha",
        long = "focal-alpha",
        value_name = "A",
        default_value_t = 0.25,
        allow_negative_numbers = true,
        value_parser = mnemo::validate::at_most_one
    )]
    pub alpha: f64,
    /// --loss focal: focusing exponent γ.
    #[arg(
        id = "focal_gamma",
        long = "focal-gamma",
        value_name = "G",
        default_value_t = 2.0,
        value_parser = mnemo::validate::non_negative
    )]
    pub gamma: f64,
}

impl EngineArgs {
    pub fn optimizer(&self) -> OptimizerConfig {
        self.opt.config()
    }

    pub fn train_config(&self, head: Option<String>) -> anyhow::Result<TrainConfig> {
        if !(0.0..1.0).contains(&self.label_smoothing) {
            anyhow::bail!(
                "--label-smoothing {}: must be in [0, 1)",
                self.label_smoothing
            );
        }
        if self.label_smoothing > 0.0 && !matches!(self.loss, LossName::Ce | LossName::CausalLm) {
            anyhow::bail!("--label-smoothing applies to --loss ce and causal-lm only");
        }
        if self.clip_grad_norm.is_some_and(|c| c.is_nan() || c <= 0.0) {
            anyhow::bail!("--clip-grad-norm must be positive");
        }
        let kind = match self.schedule {
            ScheduleName::Constant => ScheduleKind::Constant,
            ScheduleName::Step => ScheduleKind::Step {
                step_size: self.lr_step_size.max(1),
                gamma: self.lr_gamma,
            },
            ScheduleName::Cosine => ScheduleKind::Cosine {
                t_max: self.t_max,
                eta_min: self.eta_min,
            },
            ScheduleName::CosineRestarts => ScheduleKind::CosineRestarts {
                t0: self.t0.max(1),
                t_mult: self.t_mult.max(1),
                eta_min: self.eta_min,
            },
        };
        Ok(TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size as usize,
            shuffle: !self.no_shuffle,
            seed: self.seed,
            max_batches_per_epoch: self.max_batches_per_epoch,
            head,
            log_every: self.log_every,
            schedule: Schedule {
                kind,
                unit: match self.schedule_unit {
                    UnitName::Step => ScheduleUnit::Step,
                    UnitName::Epoch => ScheduleUnit::Epoch,
                },
                warmup: self.warmup,
            },
            clip_grad_norm: self.clip_grad_norm,
            label_smoothing: self.label_smoothing,
            loss: self.loss.to_loss(self.focal.alpha, self.focal.gamma)?,
            accumulate: self.accumulate_grad_batches as usize,
            patience: self.patience,
            keep_last: self.keep_last,
            halt_after: self.halt_after,
        })
    }
}

/// The EWC penalty of `--penalty FISHER:ANCHOR` pairs with strength λ; each file is
/// recorded in the provenance.
pub fn ewc_penalty(
    pairs: &[String],
    lambda: f64,
    model: &Model,
    prov: &mut Provenance,
) -> anyhow::Result<Option<EwcPenalty>> {
    let mut terms = Vec::new();
    for spec in pairs {
        let (f, a) = spec
            .split_once(':')
            .with_context(|| format!("--penalty '{spec}': expected FISHER:ANCHOR"))?;
        let fisher = Checkpoint::open(f)?;
        let anchor = Checkpoint::open(a)?;
        terms.push(
            PenaltyTerm::load(&fisher, &anchor, model)
                .with_context(|| format!("--penalty {spec}"))?,
        );
        prov.input(f, fisher.content_hash()?);
        prov.input(a, anchor.content_hash()?);
    }
    Ok((!terms.is_empty()).then_some(EwcPenalty { terms, lambda }))
}

/// The strategies' files, for the destinations check: --l2-anchor, --distill-from and
/// --si-prior are read, --si-importance written.
pub fn strategy_inputs(d: &mut Destinations, anchor: &AnchorArgs, lwf: &LwfArgs, si: &SiArgs) {
    for (label, p) in [
        ("--l2-anchor", &anchor.l2_anchor),
        ("--distill-from", &lwf.distill_from),
        ("--si-prior", &si.si_prior),
    ] {
        if let Some(p) = p {
            d.input(label, p);
        }
    }
    if let Some(p) = &si.si_importance {
        d.output("--si-importance", p);
    }
}

impl SiArgs {
    /// SI's path integral, started, and the prior importance it adds to (read and recorded
    /// in the provenance), when --si-importance is given.
    pub fn open(
        &self,
        model: &Model,
        prov: &mut Provenance,
    ) -> anyhow::Result<Option<(Si, Option<Importance>)>> {
        if self.si_importance.is_none() {
            return Ok(None);
        }
        let prior = match &self.si_prior {
            Some(p) => Some(read_importance(p, model, prov)?),
            None => None,
        };
        Ok(Some((Si::new(self.si_xi), prior)))
    }

    /// What the state file's fingerprint records of SI.
    pub fn settings(&self) -> String {
        match self.si_importance {
            Some(_) => format!("|si:xi={}", self.si_xi),
            None => String::new(),
        }
    }
}

impl AnchorArgs {
    /// The pull towards --l2-anchor, when given; the anchor joins the provenance.
    pub fn open(&self, model: &Model, prov: &mut Provenance) -> anyhow::Result<Option<AnchorPull>> {
        let Some(a) = &self.l2_anchor else {
            return Ok(None);
        };
        let ckpt = Checkpoint::open(a)?;
        let pull = AnchorPull::load(&ckpt, model, self.l2_lambda)
            .with_context(|| format!("--l2-anchor {}", a.display()))?;
        prov.input(a.display().to_string(), ckpt.content_hash()?);
        Ok(Some(pull))
    }
}

/// The --distill-from teacher, its output checked against the student's on `data`'s first
/// example when there is a dataset (a stream is checked by the strategy, per batch).
pub fn open_teacher(
    path: &Path,
    e: &LwfArgs,
    student: &mut Model,
    data: Option<&Dataset>,
    head: Option<&str>,
    prov: &mut Provenance,
) -> anyhow::Result<Lwf> {
    if !(e.distill_temperature.is_finite() && e.distill_temperature > 0.0) {
        anyhow::bail!(
            "--distill-temperature {}: must be a positive number",
            e.distill_temperature
        );
    }
    if !(e.distill_weight.is_finite() && e.distill_weight >= 0.0) {
        anyhow::bail!(
            "--distill-weight {}: must be a number ≥ 0",
            e.distill_weight
        );
    }
    let ctx = || format!("--distill-from {}", path.display());
    let ckpt = Checkpoint::open(path).with_context(ctx)?;
    let spec = match (&e.distill_arch, ckpt.metadata().contains_key(ARCH_KEY)) {
        (Some(a), _) => ArchSpec::parse(a).with_context(ctx)?,
        (None, true) => mnemo::model::resolve_arch(&ckpt, None).with_context(ctx)?,
        (None, false) => student.spec.clone(),
    };
    let teacher = Model::load(&ckpt, &spec, &student.device).with_context(ctx)?;
    prov.input(path.display().to_string(), ckpt.content_hash()?);
    let classes = (!e.distill_classes.is_empty()).then(|| e.distill_classes.clone());
    let lwf = |teacher| Lwf::new(teacher, e.distill_weight, e.distill_temperature, classes);
    let Some(data) = data else {
        return Ok(lwf(teacher));
    };
    let mut teacher = teacher;
    if data.is_empty() {
        anyhow::bail!("{}: no examples", data.path.display());
    }
    let (x, _) = data.batch(&[0], &student.device)?;
    let mut rng = mnemo::rng::Rng::new(0);
    let width = |m: &mut Model, rng: &mut mnemo::rng::Rng| -> mnemo::Result<Vec<usize>> {
        Ok(m.forward(&x, head, Mode::Eval, rng)?.dims().to_vec())
    };
    let t = width(&mut teacher, &mut rng).with_context(ctx)?;
    // Eval mode changes nothing in the model (no running statistics move).
    let s = width(student, &mut rng)?;
    if t != s {
        anyhow::bail!(
            "{}: the old model's output has shape {t:?} but the trained model's has {s:?}",
            ctx()
        );
    }
    if let Some(c) = e.distill_classes.iter().find(|&&c| c >= t[1]) {
        anyhow::bail!(
            "--distill-classes: class {c} is not an output of the model ({} outputs)",
            t[1]
        );
    }
    Ok(lwf(teacher))
}

/// An importance file (`--si-prior`): a non-negative F32 tensor per trainable parameter of
/// the model, as a Fisher file (the EWC penalty's own checks).
fn read_importance(
    path: &Path,
    model: &Model,
    prov: &mut Provenance,
) -> anyhow::Result<BTreeMap<String, Vec<f32>>> {
    let ckpt = Checkpoint::open(path)?;
    // The penalty's loader checks names, shapes and values; the file is its own anchor here.
    let term = PenaltyTerm::load(&ckpt, &ckpt, model)
        .with_context(|| format!("--si-prior {}", path.display()))?;
    prov.input(path.display().to_string(), ckpt.content_hash()?);
    Ok(term.fisher)
}

/// SI's importance for the model's final weights, clamped at 0 (a negative importance
/// would reward moving away from the anchor), prepared beside its target.
pub fn prepare_importance(
    path: &Path,
    si: &Si,
    prior: Option<&BTreeMap<String, Vec<f32>>>,
    model: &Model,
    prov: &Provenance,
) -> anyhow::Result<mnemo::checkpoint::AtomicFile> {
    let snap = model.snapshot()?;
    let end: BTreeMap<String, Vec<f32>> = model
        .params
        .keys()
        .map(|k| (k.clone(), snap.values[k].clone()))
        .collect();
    let omega = si.importance(&end, prior);
    let tensors = omega
        .iter()
        .map(|(name, v)| {
            let clamped: Vec<f32> = v.iter().map(|x| x.max(0.0)).collect();
            let shape = model.params[name].as_tensor().dims().to_vec();
            mnemo::checkpoint::OwnedTensor::f32(name.clone(), shape, &clamped)
        })
        .collect();
    let mut meta = prov.metadata();
    meta.insert("mnemo.importance".into(), "si".into());
    meta.insert("mnemo.si.xi".into(), si.xi.to_string());
    Ok(prepare_checkpoint(path, tensors, &meta)?)
}

/// A model output: one safetensors file, or (`DIR/`) a Hugging Face model folder, whose
/// every file is checked.
pub fn model_output(d: &mut Destinations, label: &str, path: &Path) {
    if mnemo::checkpoint::folder::is_folder_target(path) {
        d.output_dir(label, path, &mnemo::checkpoint::folder::folder_files());
    } else {
        d.output(label, path);
    }
}

/// The engine flags' files, for the command's destinations check: --val, --l2-anchor,
/// --distill-from, --si-prior and --init-optimizer are read, --save-optimizer and
/// --si-importance written, --state read and replaced.
pub fn destinations(d: &mut Destinations, e: &EngineArgs) {
    strategy_inputs(d, &e.anchor, &e.lwf, &e.si);
    for (label, p) in [("--val", &e.val), ("--init-optimizer", &e.init_optimizer)] {
        if let Some(p) = p {
            d.input(label, p);
        }
    }
    if let Some(p) = &e.save_optimizer {
        d.output("--save-optimizer", p);
    }
    if let Some(p) = &e.state {
        d.in_place("--state", p);
    }
}

/// What a replayed batch does (`--projection`): trained on (experience replay), or A-GEM's
/// reference gradient.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProjectionName {
    None,
    Agem,
}

impl ProjectionName {
    /// The replay strategy over `buffer`.
    pub fn replay(
        self,
        buffer: mnemo::replay::ReservoirBuffer,
        ratio: f64,
        distill: f64,
    ) -> Replay {
        match self {
            ProjectionName::None => Replay::new(buffer, ratio, distill),
            ProjectionName::Agem => Replay::agem(buffer),
        }
    }
}

/// The replay buffer at `path`: opened when it exists (a `capacity` or `policy` other than
/// its own is refused: they would change what it keeps), else a new one (default capacity
/// 10,000, reservoir sampling, seeded by `seed`). With `distill`, a non-empty buffer must
/// carry logits.
pub fn open_buffer(
    path: &Path,
    capacity: Option<usize>,
    policy: Option<&str>,
    seed: u64,
    distill: f64,
) -> anyhow::Result<mnemo::replay::ReservoirBuffer> {
    use mnemo::replay::{Policy, ReservoirBuffer};
    let policy = policy.and_then(Policy::parse);
    let buffer = if path.exists() {
        let b = ReservoirBuffer::open(path)?;
        if let Some(c) = capacity.filter(|&c| c != b.capacity) {
            anyhow::bail!(
                "{}: the buffer's capacity is {}; --capacity {c} would change it (start a new buffer instead)",
                path.display(),
                b.capacity
            );
        }
        if let Some(p) = policy.filter(|&p| p != b.policy) {
            anyhow::bail!(
                "{}: the buffer's policy is {}; --policy {} would change it",
                path.display(),
                b.policy.as_str(),
                p.as_str()
            );
        }
        b
    } else {
        ReservoirBuffer::new(
            path,
            capacity.unwrap_or(10_000),
            policy.unwrap_or(Policy::Reservoir),
            seed,
        )
    };
    if distill > 0.0 && !buffer.is_empty() && !buffer.has_logits() {
        anyhow::bail!(
            "{}: the buffer's examples carry no logits (it was filled without --distill); \
             start a new buffer to use --distill",
            path.display()
        );
    }
    Ok(buffer)
}

/// The FISHER:ANCHOR files of --penalty, as inputs.
pub fn penalty_inputs(d: &mut Destinations, pairs: &[String]) {
    for spec in pairs {
        if let Some((f, a)) = spec.split_once(':') {
            d.input("--penalty", f).input("--penalty", a);
        }
    }
}

/// The arguments every training command shares besides the engine flags (flattened into
/// train-ewc's, replay-train's and lora-gate's `Args`).
#[derive(clap::Args, Debug, Clone)]
pub struct TrainInputs {
    /// The starting (base) checkpoint.
    pub model: PathBuf,
    /// Training data: safetensors with `input` and `target`; or `-`, a stream on stdin read
    /// whole, in `mnemo online`'s framings (`mnemo data stream` writes them).
    #[arg(long, value_name = "D")]
    pub data: PathBuf,
    /// Architecture, for checkpoints without `mnemo.arch` metadata.
    #[arg(long, value_name = "SPEC")]
    pub arch: Option<String>,
    /// Which head of a multi-head model to train.
    #[arg(long, value_name = "NAME")]
    pub head: Option<String>,
}

/// What every training command opens first.
pub struct Opened {
    pub model: Model,
    /// The chosen head (checked against the model).
    pub head: Option<String>,
    pub data: Dataset,
    /// Provenance with the model and the data recorded.
    pub prov: Provenance,
    /// The model's content hash.
    pub model_hash: String,
}

impl TrainInputs {
    /// The model and the data, as inputs of the command's destinations check.
    /// The Hugging Face folder the model is read from, if it is one.
    pub fn source(&self) -> Option<PathBuf> {
        mnemo::checkpoint::folder::source_folder(&self.model)
    }

    pub fn destinations(&self, d: &mut Destinations) {
        d.input("the model", &self.model);
        // stdin is read once, whole: nothing can write over it.
        if !super::is_stream(&self.data) {
            d.input("--data", &self.data);
        }
    }

    /// The files an error deep in a forward pass is to name.
    pub fn files(&self) -> [&Path; 2] {
        [&self.model, &self.data]
    }

    /// Opens the model (with its arch) on the device, the head, the data, and provenance with
    /// both recorded.
    pub fn open(&self, g: &Global) -> anyhow::Result<Opened> {
        let device = g.device()?;
        let (model, ckpt) = Model::open(&self.model, self.arch.as_deref(), &device)?;
        let head = model.choose_head(self.head.as_deref()).context("--head")?;
        let data = super::open_dataset(&self.data)?;
        let mut prov = g.provenance();
        let model_hash = ckpt.content_hash()?;
        prov.input(self.model.display().to_string(), model_hash.clone());
        prov.input(
            self.data.display().to_string(),
            super::dataset_hash(&self.data, &data)?,
        );
        Ok(Opened {
            model,
            head,
            data,
            prov,
            model_hash,
        })
    }
}

/// What a training subcommand hands to `fit` besides the engine flags.
pub struct Fit<'a> {
    pub command: &'a str,
    pub model: Model,
    pub data: &'a Dataset,
    pub head: Option<String>,
    /// The command's EWC penalties (the --l2-anchor pull is added here).
    pub penalty: Option<EwcPenalty>,
    /// Provenance with the command's inputs already recorded.
    pub prov: Provenance,
    /// Settings outside the engine flags that change the result (part of the state's
    /// fingerprint), e.g. "lambda=100".
    pub settings: String,
    /// Extra metadata for the output checkpoint.
    pub metadata: BTreeMap<String, String>,
    pub output: &'a Path,
    /// The Hugging Face folder the model came from: a folder output (`-o DIR/`) carries
    /// its config and tokenizer files.
    pub source: Option<PathBuf>,
    /// Experience replay: the buffer is written back to its path after the output.
    pub replay: Option<Replay>,
}

/// Runs the engine: JSON Lines per epoch (and step) on stdout, the output written
/// atomically, a summary line last.
pub fn fit(f: Fit, e: &EngineArgs, g: &Global) -> anyhow::Result<Outcome> {
    let mut out = JsonLines::stdout();
    let trained = train_only(f, e, g, &mut out)?;
    trained.write(e, &mut out)
}

/// A finished training run, nothing written yet: `write` puts its files in place, or a
/// caller that decides first (lora-gate) takes the model, the optimizer and the outcome.
pub struct Trained<'a> {
    pub model: Model,
    pub outcome: Outcome,
    pub opt: Optimizer,
    /// The command's provenance with every input of the run recorded and the seed set.
    pub prov: Provenance,
    output: &'a Path,
    source: Option<PathBuf>,
    metadata: BTreeMap<String, String>,
    replay: Option<Replay>,
    /// SI's path integral and the prior importance it adds to.
    si: Option<(Si, Option<Importance>)>,
    start: std::time::Instant,
}

/// A per-parameter importance (SI's Ω, a Fisher diagonal), by parameter name.
pub type Importance = BTreeMap<String, Vec<f32>>;

/// `--save-optimizer`'s file, prepared beside its target (None without the flag).
pub fn prepare_optimizer(
    e: &EngineArgs,
    opt: &Optimizer,
    model: &Model,
    meta: &BTreeMap<String, String>,
) -> anyhow::Result<Option<mnemo::checkpoint::AtomicFile>> {
    e.save_optimizer
        .as_ref()
        .map(|p| {
            optim_file::prepare(p, opt, model, meta)
                .with_context(|| format!("writing {}", p.display()))
        })
        .transpose()
}

/// The engine's training: JSON Lines per epoch (and step) to `out`; no file is written
/// (the --state saves aside).
pub fn train_only<'a>(
    mut f: Fit<'a>,
    e: &EngineArgs,
    g: &Global,
    out: &mut JsonLines,
) -> anyhow::Result<Trained<'a>> {
    let cfg = e.train_config(f.head.clone())?;
    let opt_cfg = e.optimizer();
    f.prov.seed = Some(e.seed);
    let mut lwf = match &e.lwf.distill_from {
        Some(p) => Some(open_teacher(
            p,
            &e.lwf,
            &mut f.model,
            Some(f.data),
            f.head.as_deref(),
            &mut f.prov,
        )?),
        None => None,
    };
    f.settings.push_str(&e.si.settings());
    if lwf.is_some() {
        f.settings.push_str(&format!(
            "|lwf:T={}:w={}:classes={:?}",
            e.lwf.distill_temperature, e.lwf.distill_weight, e.lwf.distill_classes
        ));
    }
    let (mut si, si_prior) = match e.si.open(&f.model, &mut f.prov)? {
        Some((s, prior)) => (Some(s), prior),
        None => (None, None),
    };
    let mut pull = e.anchor.open(&f.model, &mut f.prov)?;
    let val = match &e.val {
        Some(v) => {
            let d = Dataset::open(v)?;
            f.prov
                .input(v.display().to_string(), mnemo::checkpoint::file_hash(v)?);
            Some(d)
        }
        None => None,
    };
    if let Some(p) = &e.init_optimizer {
        f.prov
            .input(p.display().to_string(), mnemo::checkpoint::file_hash(p)?);
    }
    let state = e.state.as_ref().map(|path| StateFile {
        path: path.clone(),
        fingerprint: StateFile::fingerprint(
            f.prov.inputs.iter().map(|(_, hash)| hash.as_str()),
            f.command,
            &cfg,
            &opt_cfg,
            &f.settings,
        ),
        save_every: e.save_every,
    });
    // Two runs on one --state take turns (the second resumes from what the first saved)
    // rather than overwriting each other's saves.
    let _state_lock = match &e.state {
        Some(p) => Some(mnemo::fsutil::lock_in_place(p)?),
        None => None,
    };
    let mut opt = Optimizer::new(opt_cfg);
    if let Some(p) = &e.init_optimizer {
        optim_file::load(p, &mut opt, &f.model)
            .with_context(|| format!("--init-optimizer {}", p.display()))?;
    }
    let pb = g.progress(e.epochs as u64, f.command);
    let start = std::time::Instant::now();
    // The buffer is recorded as an input after the fingerprint: a finished run resumed
    // from its state file rewrites the same buffer, though the file has changed.
    if let Some(r) = &f.replay {
        if r.buffer.path.exists() {
            f.prov.input(
                r.buffer.path.display().to_string(),
                mnemo::checkpoint::file_hash(&r.buffer.path)?,
            );
        }
    }
    // Penalties first, then distillation and replay: the order their hooks run in.
    let mut strategies: Vec<&mut dyn Strategy> = Vec::new();
    if let Some(p) = f.penalty.as_mut() {
        strategies.push(p);
    }
    if let Some(p) = pull.as_mut() {
        strategies.push(p);
    }
    if let Some(l) = lwf.as_mut() {
        strategies.push(l);
    }
    if let Some(s) = si.as_mut() {
        strategies.push(s);
    }
    if let Some(r) = f.replay.as_mut() {
        strategies.push(r);
    }
    let mut job = Job {
        data: f.data,
        val: val.as_ref(),
        state: state.as_ref(),
        strategies,
    };
    let mut model = f.model;
    let outcome = train::train(&mut model, &mut opt, &cfg, &mut job, &mut |ev| {
        let v = match ev {
            Event::Step {
                epoch,
                step,
                task_loss,
                penalty,
                lr,
                grad_norm,
            } => json!({
                "event": "step", "epoch": epoch + 1, "step": step, "task_loss": num(*task_loss),
                "penalty": num(*penalty), "lr": num(*lr), "grad_norm": num(*grad_norm),
            }),
            Event::Resumed { step, epoch, batch } => {
                json!({"event": "resumed", "step": step, "epoch": epoch + 1, "batch": batch})
            }
            Event::Epoch(r) => {
                pb.inc(1);
                let mut v = json!({
                    "event": "epoch", "epoch": r.epoch + 1, "steps": r.steps, "examples": r.examples,
                    "task_loss": num(r.task_loss), "penalty": num(r.penalty), "lr": num(r.lr),
                });
                for (k, x) in &r.fields {
                    v[*k] = num(*x);
                }
                if let (Some(l), Some(a)) = (r.val_loss, r.val_accuracy) {
                    v["val_loss"] = num(l);
                    v["val_accuracy"] = num(a);
                    v["best"] = json!(r.best);
                }
                v["seconds"] = num(r.seconds);
                v
            }
        };
        out.emit_io(&v)
    })?;
    pb.finish_and_clear();
    if outcome.halted {
        anyhow::bail!(
            "halted after {} updates (--halt-after); the state file holds the last save",
            outcome.steps
        );
    }
    Ok(Trained {
        model,
        outcome,
        opt,
        prov: f.prov,
        output: f.output,
        source: f.source,
        metadata: f.metadata,
        replay: f.replay,
        si: si.map(|s| (s, si_prior)),
        start,
    })
}

impl Trained<'_> {
    /// Writes the run's files and a summary line to `out`. Every file is prepared (written
    /// and synced beside its target) before any is put in place, so a failure leaves every
    /// target as it was. Then the optimizer, the output, and the buffer last: a run killed
    /// between the last two leaves the old buffer, so running it again does not offer the
    /// data twice.
    pub fn write(self, e: &EngineArgs, out: &mut JsonLines) -> anyhow::Result<Outcome> {
        let Trained {
            model,
            outcome,
            opt,
            prov,
            output: path,
            source,
            metadata,
            replay,
            si,
            start,
        } = self;
        let mut meta = prov.metadata();
        meta.insert(ARCH_KEY.into(), model.spec.to_json());
        meta.extend(metadata);
        let tensors = model.tensors()?;
        mnemo::train::finite::check_tensors(&tensors)?;
        let output = prepare_model_output(path, tensors, &meta, source.as_deref())
            .with_context(|| format!("writing {}", path.display()))?;
        let optimizer = prepare_optimizer(e, &opt, &model, &prov.metadata())?;
        let importance = match (&e.si.si_importance, &si) {
            (Some(p), Some((si, prior))) => Some(
                prepare_importance(p, si, prior.as_ref(), &model, &prov)
                    .with_context(|| format!("writing {}", p.display()))?,
            ),
            _ => None,
        };
        let buffer = match &replay {
            Some(r) => Some(
                r.buffer
                    .prepare(&r.buffer.path, &prov.metadata())
                    .with_context(|| format!("writing the buffer {}", r.buffer.path.display()))?,
            ),
            None => None,
        };
        if let Some(o) = optimizer {
            o.commit()?;
        }
        if let Some(i) = importance {
            i.commit()?;
        }
        output.commit()?;
        if let Some(b) = buffer {
            b.commit()?;
        }
        let last = outcome.reports.last();
        let mut summary = json!({
            "event": "summary", "output": path.display().to_string(), "command": prov.command,
            "epochs": outcome.epochs_done, "steps": outcome.steps,
            "task_loss": last.map(|r| num(r.task_loss)), "penalty": last.map(|r| num(r.penalty)),
        });
        if let Some(b) = &outcome.best {
            summary["best_epoch"] = json!(b.epoch + 1);
            summary["val_loss"] = num(b.val_loss);
            summary["val_accuracy"] = num(b.val_accuracy);
            summary["kept"] = json!(if e.keep_last { "last" } else { "best" });
            summary["stopped_early"] = json!(outcome.stopped_early);
        }
        if let Some(r) = &replay {
            let mut b = r.buffer.summary();
            b["path"] = json!(r.buffer.path.display().to_string());
            summary["buffer"] = b;
        }
        summary["seconds"] = num(start.elapsed().as_secs_f64());
        out.emit(&summary)?;
        Ok(outcome)
    }
}
