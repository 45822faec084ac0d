//! `mnemo train-ewc`: train on a new task while EWC penalties hold the weights
//! that mattered for earlier tasks in place.

use super::engine::EngineArgs;
use super::{num, Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::checkpoint::{write_checkpoint, Checkpoint};
use mnemo::data::Dataset;
use mnemo::model::{Model, ARCH_KEY};
use mnemo::provenance::Provenance;
use mnemo::train::{self, Event, EwcPenalty, Optimizer, PenaltyTerm};
use serde_json::json;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("train on task 2, holding task 1's important weights", "mnemo train-ewc model.safetensors --data task2.safetensors --penalty fisher1.safetensors:model.safetensors --lambda 100 -o model2.safetensors | tee train.jsonl"),
        ("a third task, with a penalty per earlier task", "mnemo train-ewc model2.safetensors --data task3.safetensors --penalty f1.safetensors:model1.safetensors --penalty f2.safetensors:model2.safetensors --lambda 100 --epochs 4 -o model3.safetensors"),
    ],
    exit_status: EXIT_PLAIN,
};

/// loss = task loss + λ·Σ_k Σ_i F_k,i (θ_i − θ*_k,i)², summed over the --penalty pairs, with no
/// ½ factor (the reference formulation: halve λ to compare with papers that use one).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The starting checkpoint.
    pub model: PathBuf,
    /// Training data: safetensors with `input` and `target`.
    #[arg(long, value_name = "D")]
    pub data: PathBuf,
    /// Output checkpoint, written atomically.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// FISHER:ANCHOR — a Fisher file and the weights it protects (repeatable).
    #[arg(long, value_name = "FISHER:ANCHOR")]
    pub penalty: Vec<String>,
    /// Strength λ of the penalties.
    #[arg(long, default_value_t = 1.0, value_name = "L")]
    pub lambda: f64,
    /// Architecture, for checkpoints without `mnemo.arch` metadata.
    #[arg(long, value_name = "SPEC")]
    pub arch: Option<String>,
    /// Which head of a multi-head model to train.
    #[arg(long, value_name = "NAME")]
    pub head: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let device = g.device()?;
    let (mut model, ckpt) = Model::open(&args.model, args.arch.as_deref(), &device)?;
    let head = model.choose_head(args.head.as_deref())?;
    let data = Dataset::open(&args.data)?;
    let mut prov = Provenance::from_args(&std::env::args().collect::<Vec<_>>());
    prov.seed = Some(args.engine.seed);
    prov.input(args.model.display().to_string(), ckpt.content_hash()?);
    prov.input(
        args.data.display().to_string(),
        mnemo::checkpoint::file_hash(&args.data)?,
    );
    let mut terms = Vec::new();
    for spec in &args.penalty {
        let (f, a) = spec
            .split_once(':')
            .with_context(|| format!("--penalty '{spec}': expected FISHER:ANCHOR"))?;
        let fisher = Checkpoint::open(f)?;
        let anchor = Checkpoint::open(a)?;
        terms.push(
            PenaltyTerm::load(&fisher, &anchor, &model)
                .with_context(|| format!("--penalty {spec}"))?,
        );
        prov.input(f, fisher.content_hash()?);
        prov.input(a, anchor.content_hash()?);
    }
    let penalty = (!terms.is_empty()).then_some(EwcPenalty {
        terms,
        lambda: args.lambda,
    });
    let cfg = args.engine.train_config(head);
    let mut opt = Optimizer::new(args.engine.optimizer());
    let mut out = JsonLines::stdout();
    let pb = g.progress(args.engine.epochs as u64, "train-ewc");
    let start = std::time::Instant::now();
    let reports = train::train(
        &mut model,
        &data,
        &cfg,
        &mut opt,
        penalty.as_ref(),
        &mut |e| {
            let v = match e {
                Event::Step {
                    epoch,
                    step,
                    task_loss,
                    penalty,
                    lr,
                } => json!({
                    "event": "step", "epoch": epoch + 1, "step": step, "task_loss": num(*task_loss),
                    "penalty": num(*penalty), "lr": num(*lr),
                }),
                Event::Epoch(r) => {
                    pb.inc(1);
                    json!({
                        "event": "epoch", "epoch": r.epoch + 1, "steps": r.steps, "examples": r.examples,
                        "task_loss": num(r.task_loss), "penalty": num(r.penalty), "lr": num(r.lr), "seconds": num(r.seconds),
                    })
                }
            };
            out.emit(&v).map_err(|e| {
                mnemo::MnemoError::io("<stdout>", std::io::Error::other(e.to_string()))
            })
        },
    )?;
    pb.finish_and_clear();
    let mut meta = prov.metadata();
    meta.insert(ARCH_KEY.into(), model.spec.to_json());
    write_checkpoint(&args.output, model.tensors()?, &meta)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let last = reports.last();
    out.emit(&json!({
        "event": "summary", "output": args.output.display().to_string(), "epochs": reports.len(), "steps": opt.step,
        "task_loss": last.map(|r| num(r.task_loss)), "penalty": last.map(|r| num(r.penalty)),
        "seconds": num(start.elapsed().as_secs_f64()),
    }))?;
    Ok(Status::Success)
}
