//! `mnemo train-ewc`: train on a new task while EWC penalties hold the weights
//! that mattered for earlier tasks in place.

use super::engine::{ewc_penalty, fit, EngineArgs, Fit, Opened, TrainInputs};
use super::{Global, HelpExtra, Status, EXIT_PLAIN};
use mnemo::fsutil::Destinations;
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
    #[command(flatten)]
    pub inputs: TrainInputs,
    /// Output checkpoint, written atomically.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// FISHER:ANCHOR — a Fisher file and the weights it protects (repeatable).
    #[arg(long, value_name = "FISHER:ANCHOR")]
    pub penalty: Vec<String>,
    /// Strength λ of the penalties.
    #[arg(long, default_value_t = 1.0, value_name = "L", value_parser = mnemo::validate::non_negative)]
    pub lambda: f64,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let mut d = Destinations::new();
    args.inputs.destinations(&mut d);
    super::engine::penalty_inputs(&mut d, &args.penalty);
    super::engine::destinations(&mut d, &args.engine);
    super::engine::model_output(&mut d, "-o", &args.output);
    d.check()?;
    let Opened {
        model,
        head,
        data,
        mut prov,
        ..
    } = args.inputs.open(g)?;
    let penalty = ewc_penalty(&args.penalty, args.lambda, &model, &mut prov)?;
    fit(
        Fit {
            command: "train-ewc",
            model,
            data: &data,
            head,
            penalty,
            prov,
            settings: format!("lambda={}", args.lambda),
            metadata: Default::default(),
            output: &args.output,
            source: args.inputs.source(),
            replay: None,
        },
        &args.engine,
        g,
    )
    .map_err(|e| super::name_files(e, &args.inputs.files()))?;
    Ok(Status::Success)
}
