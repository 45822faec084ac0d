//! `mnemo merge`: combine checkpoints without training, streaming tensor by tensor.

use super::{num, Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::checkpoint::Checkpoint;
use mnemo::merge::{merge_checkpoints, DareRescale, MergeOptions, Method, METHODS};
use mnemo::provenance::Provenance;
use serde_json::json;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("Fisher-weighted average of two task models", "mnemo merge fisher a.safetensors b.safetensors --fisher fa.safetensors fb.safetensors -o merged.safetensors"),
        ("0.7·A + 0.3·B", "mnemo merge linear a.safetensors b.safetensors --alpha 0.7 -o merged.safetensors"),
        ("one EMA step of a teacher towards the online model", "mnemo merge ema teacher.safetensors online.safetensors --decay 0.999 -o teacher.safetensors"),
        ("TIES over three fine-tunes of one base (HF shard folders work as inputs)", "mnemo merge ties --base base/ ft1/ ft2/ ft3/ --density 0.3 -o merged.safetensors"),
        ("DARE with TIES sign election, seeded", "mnemo merge dare --base base.safetensors a.safetensors b.safetensors --density 0.5 --ties --seed 7 -o merged.safetensors"),
        ("add Fisher files (e.g. to sum tasks' importance)", "mnemo merge sum f1.safetensors f2.safetensors -o f12.safetensors"),
    ],
    exit_status: EXIT_PLAIN,
};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodName {
    /// Σ wᵢθᵢ (÷ Σ wᵢ with --normalize); two models with --alpha a: a·A + (1−a)·B.
    Linear,
    /// D·TARGET + (1−D)·ONLINE (--decay D).
    Ema,
    /// Σ wᵢFᵢθᵢ / (Σ wᵢFᵢ + eps), one --fisher file per input (Matena & Raffel 2022).
    Fisher,
    /// base + λ·Σ wᵢ(θᵢ − base).
    TaskArithmetic,
    /// TIES: top ⌊d·n⌋ magnitudes of each task vector, elected sign, agreeing mean.
    Ties,
    /// DARE: Bernoulli(d) keep, rescale, then task arithmetic (or TIES with --ties).
    Dare,
    /// Spherical interpolation of A and B (--t; t = 0 gives A).
    Slerp,
    /// Model breadcrumbs: drop the smallest and the γ largest task-vector entries.
    Breadcrumbs,
    /// Model stock (Jang et al. 2024): t·mean + (1−t)·base from the task vectors' angle.
    ModelStock,
    /// Σ θᵢ (e.g. Fisher files).
    Sum,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RescaleName {
    /// Divide kept entries by d (the DARE paper).
    Paper,
    /// Restore the task vector's L1 norm (mergekit's rescale).
    L1,
    /// No rescaling.
    None,
}

/// Merges checkpoints of the same layout (names and shapes; HF shard folders or index.json
/// count as one checkpoint). Float tensors are merged in f32 (reductions in f64) and
/// written back in the first input's dtype; integer tensors are copied from the first input.
/// NaN or Inf anywhere is an error naming the file, tensor and element (unless
/// --allow-nonfinite). Memory stays bounded: tensors stream from the memory-mapped inputs
/// in chunks, whatever the number of models. Formulas (mergekit's definitions, except where
/// noted in `man mnemo-merge`):
#[derive(clap::Args, Debug)]
#[command(after_long_help = formulas())]
pub struct Args {
    #[arg(value_enum)]
    pub method: MethodName,
    /// The models to merge (for ema: TARGET then ONLINE; for slerp: A then B).
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// The base model of task-arithmetic, ties, dare, breadcrumbs and model-stock.
    #[arg(long, value_name = "CKPT")]
    pub base: Option<PathBuf>,
    /// One weight per input, comma-separated (default: all 1).
    #[arg(long, value_delimiter = ',', value_name = "W,...")]
    pub weights: Vec<f64>,
    /// Divide by the sum of the weights (linear, task-arithmetic, fisher, dare, breadcrumbs;
    /// ties normalises by default).
    #[arg(long, overrides_with = "no_normalize")]
    pub normalize: bool,
    /// Do not normalise (ties).
    #[arg(long)]
    pub no_normalize: bool,
    /// linear with two inputs: weights a, 1 − a.
    #[arg(long, value_name = "A", conflicts_with = "weights")]
    pub alpha: Option<f64>,
    /// ema: weight D of the target.
    #[arg(long, value_name = "D")]
    pub decay: Option<f64>,
    /// fisher: one Fisher file per input, in the same order.
    #[arg(long, num_args = 1.., value_name = "FISHER")]
    pub fisher: Vec<PathBuf>,
    /// fisher: added to the denominator.
    #[arg(long, default_value_t = 1e-8)]
    pub eps: f64,
    /// fisher: floor on every Fisher value (1e-6 makes entries where all F are 0 the
    /// weighted average instead of 0).
    #[arg(long, value_name = "F")]
    pub floor: Option<f64>,
    /// Scale λ of the merged task vector.
    #[arg(long, default_value_t = 1.0, value_name = "L")]
    pub lambda: f64,
    /// ties, dare, breadcrumbs: the fraction of each task vector kept.
    #[arg(long, value_name = "D")]
    pub density: Option<f64>,
    /// breadcrumbs: the fraction of largest magnitudes dropped.
    #[arg(long, default_value_t = 0.01, value_name = "G")]
    pub gamma: f64,
    /// dare, breadcrumbs: elect signs as TIES does.
    #[arg(long)]
    pub ties: bool,
    /// dare: how kept entries are rescaled.
    #[arg(long, value_enum, default_value = "paper")]
    pub rescale: RescaleName,
    /// dare: seed of the masks (per tensor, independent of order and threads).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// slerp: interpolation position.
    #[arg(long, value_name = "T")]
    pub t: Option<f64>,
    /// Let NaN/Inf through with IEEE semantics instead of refusing them.
    #[arg(long)]
    pub allow_nonfinite: bool,
}

fn formulas() -> String {
    let mut s = String::from("Formulas:\n");
    for (name, f) in METHODS {
        s.push_str(&format!("  {:<16} {f}\n", name.replace('_', "-")));
    }
    s
}

fn need<T: Copy>(v: Option<T>, flag: &str, method: &str) -> anyhow::Result<T> {
    v.with_context(|| format!("merge {method} needs {flag}"))
}

fn method(a: &Args) -> anyhow::Result<Method> {
    let weights = match (a.alpha, a.method) {
        (Some(al), MethodName::Linear) => {
            if a.inputs.len() != 2 {
                anyhow::bail!("--alpha needs exactly two inputs (a·A + (1−a)·B)");
            }
            vec![al, 1.0 - al]
        }
        (Some(_), _) => anyhow::bail!("--alpha applies to linear only"),
        _ => a.weights.clone(),
    };
    let normalize = |default: bool| {
        if a.no_normalize {
            false
        } else {
            a.normalize || default
        }
    };
    let name = format!("{:?}", a.method).to_lowercase();
    Ok(match a.method {
        MethodName::Linear => Method::Linear {
            weights,
            normalize: normalize(false),
        },
        MethodName::Ema => Method::Ema {
            decay: need(a.decay, "--decay D", &name)?,
        },
        MethodName::Fisher => Method::Fisher {
            weights,
            eps: a.eps,
            floor: a.floor,
            normalize: normalize(false),
        },
        MethodName::TaskArithmetic => Method::TaskArithmetic {
            weights,
            lambda: a.lambda,
            normalize: normalize(false),
        },
        MethodName::Ties => Method::Ties {
            weights,
            density: need(a.density, "--density D", &name)?,
            lambda: a.lambda,
            normalize: normalize(true),
        },
        MethodName::Dare => Method::Dare {
            weights,
            density: need(a.density, "--density D", &name)?,
            lambda: a.lambda,
            normalize: normalize(false),
            rescale: match a.rescale {
                RescaleName::Paper => DareRescale::Paper,
                RescaleName::L1 => DareRescale::L1,
                RescaleName::None => DareRescale::None,
            },
            seed: a.seed,
            ties: a.ties,
        },
        MethodName::Slerp => Method::Slerp {
            t: need(a.t, "--t T", &name)?,
        },
        MethodName::Breadcrumbs => Method::Breadcrumbs {
            weights,
            density: need(a.density, "--density D", &name)?,
            gamma: a.gamma,
            lambda: a.lambda,
            normalize: normalize(false),
            ties: a.ties,
        },
        MethodName::ModelStock => Method::ModelStock,
        MethodName::Sum => Method::Sum,
    })
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let start = std::time::Instant::now();
    let m = method(&args)?;
    let open = |p: &PathBuf| Checkpoint::open(p).map_err(anyhow::Error::from);
    let inputs: Vec<Checkpoint> = args.inputs.iter().map(open).collect::<Result<_, _>>()?;
    let base = args.base.as_ref().map(open).transpose()?;
    let fishers: Vec<Checkpoint> = args.fisher.iter().map(open).collect::<Result<_, _>>()?;
    let mut prov = Provenance::from_args(&std::env::args().collect::<Vec<_>>());
    for c in inputs.iter().chain(base.as_ref()).chain(&fishers) {
        prov.input(c.path.display().to_string(), c.content_hash()?);
    }
    if matches!(m, Method::Dare { .. }) {
        prov.seed = Some(args.seed);
    }
    let meta = prov.metadata();
    let pb = g.progress(0, "merge");
    let progress = |done: usize, total: usize| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    };
    let opts = MergeOptions {
        allow_nonfinite: args.allow_nonfinite,
        progress: Some(&progress),
    };
    let report = merge_checkpoints(
        &m,
        &inputs,
        base.as_ref(),
        &fishers,
        &args.output,
        &meta,
        &opts,
    )
    .with_context(|| format!("merging into {}", args.output.display()))?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    JsonLines::stdout().emit(&json!({
        "output": args.output.display().to_string(), "method": report.method, "inputs": report.inputs,
        "merged": report.merged, "copied": report.copied, "elements": report.elements,
        "bytes": report.bytes, "seconds": num(secs),
    }))?;
    Ok(Status::Success)
}
