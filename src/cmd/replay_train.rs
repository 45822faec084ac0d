//! `mnemo replay-train`: train on new data while replaying examples kept from earlier data
//! in an on-disk buffer (experience replay, optionally with logit distillation).

use super::engine::{
    ewc_penalty, fit, open_buffer, EngineArgs, Fit, Opened, ProjectionName, TrainInputs,
};
use super::{Global, HelpExtra, Status, EXIT_PLAIN};
use mnemo::fsutil::Destinations;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("task 1, filling a new buffer of 1000 examples", "mnemo replay-train model.safetensors --data task1.safetensors --buffer buf.safetensors --capacity 1000 -o model1.safetensors"),
        ("task 2, replaying half of every batch's weight from the buffer", "mnemo replay-train model1.safetensors --data task2.safetensors --buffer buf.safetensors --replay-ratio 0.5 -o model2.safetensors | tee train.jsonl"),
        ("dark experience replay: also match the logits stored at insertion", "mnemo replay-train model1.safetensors --data task2.safetensors --buffer der.safetensors --distill 0.5 -o model2.safetensors"),
        ("A-GEM: project the gradient against the buffer's instead of training on it", "mnemo replay-train model1.safetensors --data task2.safetensors --buffer buf.safetensors --projection agem -o model2.safetensors"),
        ("equal quotas per class, and an EWC penalty too", "mnemo replay-train model2.safetensors --data task3.safetensors --buffer buf.safetensors --policy class-balanced --penalty f2.safetensors:model2.safetensors --lambda 100 -o model3.safetensors"),
    ],
    exit_status: EXIT_PLAIN,
};

/// Each batch is paired with a replay batch of the same size drawn uniformly from the buffer:
/// loss = (1 − r)·new + r·replay (+ EWC penalties). After each update the batch's examples are
/// offered to the buffer (during the first epoch only: later epochs revisit the same data).
/// The buffer is created when missing and replaced atomically after the output is written;
/// two runs over D1 then D2 (with --no-shuffle) leave the buffer of one run over D1+D2.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub inputs: TrainInputs,
    /// The replay buffer (safetensors): read when it exists, then replaced.
    #[arg(long, value_name = "BUF")]
    pub buffer: PathBuf,
    /// Output checkpoint, written atomically.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Examples the buffer keeps [default: 10000 for a new buffer; an existing buffer keeps
    /// its own, and another value is refused].
    #[arg(long, value_name = "C", value_parser = mnemo::validate::count)]
    pub capacity: Option<usize>,
    /// Weight r of the replay loss, in [0, 1].
    #[arg(long, value_name = "R", default_value_t = 0.5, value_parser = mnemo::validate::unit_closed)]
    pub replay_ratio: f64,
    /// What a full buffer keeps: reservoir (a uniform sample of the stream) or class-balanced
    /// (equal quotas per class, CBRS) [default: reservoir for a new buffer; an existing buffer
    /// keeps its own].
    #[arg(long, value_name = "POLICY", value_parser = ["reservoir", "class-balanced"])]
    pub policy: Option<String>,
    /// Dark experience replay: add W·MSE between the logits of replayed examples and the
    /// logits stored when they entered the buffer (the buffer then stores logits).
    #[arg(long, value_name = "W", default_value_t = 0.0, value_parser = mnemo::validate::non_negative)]
    pub distill: f64,
    /// FISHER:ANCHOR — an EWC penalty (repeatable), as in train-ewc.
    #[arg(long, value_name = "FISHER:ANCHOR")]
    pub penalty: Vec<String>,
    /// Strength λ of the EWC penalties.
    #[arg(long, default_value_t = 1.0, value_name = "L", value_parser = mnemo::validate::non_negative)]
    pub lambda: f64,
    /// What the replayed batch does: `none` trains on it (experience replay, weighted by
    /// --replay-ratio); `agem` only uses its gradient as A-GEM's reference (Chaudhry et al.
    /// 2019, Avalanche's AGEMPlugin): when the new batch's gradient g conflicts with it
    /// (gᵀg_ref < 0), g − (gᵀg_ref / g_refᵀg_ref)·g_ref is used. The reference batch is drawn
    /// from the buffer at the new batch's size; --replay-ratio does not apply.
    #[arg(long, value_enum, default_value = "none")]
    pub projection: ProjectionName,
    /// The new batch's loss while a replayed batch joins it: `full` (cross-entropy over every
    /// class) or `ace` (ER-ACE, Caccia et al. 2022, as Avalanche's ER_ACE: over the classes
    /// present in the new batch only; the replayed batch keeps every class).
    #[arg(long, value_enum, default_value = "full")]
    pub incoming_loss: IncomingLoss,
    /// DER++ (Buzzega et al. 2020, as Mammoth's derpp): loss = CE(new) + W·MSE(replayed
    /// logits, stored logits) + B·CE(a second, independent draw's labels), with W from
    /// --distill and no --replay-ratio; `--replay-labels 0` is DER.
    #[arg(long, value_name = "B", value_parser = mnemo::validate::non_negative)]
    pub replay_labels: Option<f64>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncomingLoss {
    Full,
    Ace,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let mut d = Destinations::new();
    args.inputs.destinations(&mut d);
    super::engine::penalty_inputs(&mut d, &args.penalty);
    super::engine::destinations(&mut d, &args.engine);
    d.in_place("--buffer", &args.buffer);
    super::engine::model_output(&mut d, "-o", &args.output);
    d.check()?;
    // Two runs on one buffer take turns: the second reads the first one's buffer.
    let _lock = mnemo::fsutil::lock_in_place(&args.buffer)?;
    let Opened {
        model,
        head,
        data,
        mut prov,
        ..
    } = args.inputs.open(g)?;
    data.require_class_or_tokens("replay-train")?;
    let buffer = open_buffer(
        &args.buffer,
        args.capacity,
        args.policy.as_deref(),
        args.engine.seed,
        args.distill,
    )?;
    buffer.check_compatible(&data.example_shape, &args.inputs.data)?;
    let penalty = ewc_penalty(&args.penalty, args.lambda, &model, &mut prov)?;
    if args.projection == ProjectionName::Agem {
        if args.distill > 0.0
            || args.replay_labels.is_some()
            || args.incoming_loss == IncomingLoss::Ace
        {
            anyhow::bail!("--distill, --replay-labels and --incoming-loss ace apply to experience replay, not to --projection agem");
        }
        if args.engine.accumulate_grad_batches > 1 {
            anyhow::bail!(
                "--projection agem projects each batch's gradient: it does not combine with --accumulate-grad-batches"
            );
        }
    }
    let settings = format!(
        "lambda={}|ratio={}|distill={}|capacity={}|policy={}|projection={:?}{}{}",
        args.lambda,
        args.replay_ratio,
        args.distill,
        buffer.capacity,
        buffer.policy.as_str(),
        args.projection,
        match args.incoming_loss {
            IncomingLoss::Full => String::new(),
            IncomingLoss::Ace => "|incoming=ace".into(),
        },
        args.replay_labels
            .map_or(String::new(), |b| format!("|replay_labels={b}")),
    );
    if args.replay_labels == Some(0.0) && args.distill == 0.0 {
        anyhow::bail!(
            "--replay-labels 0 is DER, which needs --distill > 0 (else nothing is replayed)"
        );
    }
    let mut replay = args
        .projection
        .replay(buffer, args.replay_ratio, args.distill);
    replay.ace = args.incoming_loss == IncomingLoss::Ace;
    replay.replay_labels = args.replay_labels;
    fit(
        Fit {
            command: "replay-train",
            model,
            data: &data,
            head,
            penalty,
            prov,
            settings,
            metadata: Default::default(),
            output: &args.output,
            source: args.inputs.source(),
            replay: Some(replay),
        },
        &args.engine,
        g,
    )
    .map_err(|e| super::name_files(e, &args.inputs.files()))?;
    Ok(Status::Success)
}
