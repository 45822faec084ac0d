//! Training-engine flags shared by every training subcommand (flattened into their Args).

use mnemo::train::{OptimizerConfig, OptimizerKind, TrainConfig};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerName {
    Sgd,
    Adam,
    Adamw,
}

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Training")]
pub struct EngineArgs {
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: OptimizerName,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// SGD momentum (torch semantics: the first step's buffer is the gradient).
    #[arg(long, default_value_t = 0.0)]
    pub momentum: f32,
    /// Nesterov momentum (SGD).
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay: L2 in the gradient for sgd/adam, decoupled for adamw. Biases and
    /// 1-dim parameters are exempt unless --decay-all.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Apply weight decay to every parameter, as torch's optimizers do by default.
    #[arg(long)]
    pub decay_all: bool,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f32,
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f32,
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f32,
    #[arg(long, default_value_t = 1)]
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
    #[arg(long, value_name = "N")]
    pub max_batches_per_epoch: Option<usize>,
    /// Also emit a {"event":"step"} line every N steps.
    #[arg(long, value_name = "N")]
    pub log_every: Option<usize>,
}

impl EngineArgs {
    pub fn optimizer(&self) -> OptimizerConfig {
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

    pub fn train_config(&self, head: Option<String>) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size as usize,
            shuffle: !self.no_shuffle,
            seed: self.seed,
            max_batches_per_epoch: self.max_batches_per_epoch,
            head,
            log_every: self.log_every,
        }
    }
}
