//! `mnemo fisher`: the diagonal Fisher information of a model on a dataset.

use super::engine::{FocalArgs, LossName};
use super::{num, Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::checkpoint::{write_checkpoint, Checkpoint, OwnedTensor};
use mnemo::model::Model;
use mnemo::train::fisher::{
    accumulate, fisher, reduce, FisherMode, MODEL_KEY, MODE_KEY, ONLINE_KEY, SAMPLES_KEY,
};
use serde_json::json;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("the Fisher of a model on the task it knows", "mnemo fisher model.safetensors --data task1.safetensors -o fisher1.safetensors"),
        ("the exact expectation over the model's own predictions, on 1000 examples", "mnemo fisher model.safetensors --data task1.safetensors --mode true --samples 1000 -o fisher1.safetensors"),
        ("shards computed anywhere, combined into exactly the Fisher of their union", "mnemo fisher --reduce f-shard0.safetensors f-shard1.safetensors f-shard2.safetensors -o fisher.safetensors"),
        ("a segmentation head's Fisher, from its own loss on binary masks", "mnemo fisher seg.safetensors --data masks.safetensors --head seg --loss dice-bce --samples 256 -o fisher-seg.safetensors"),
        ("online EWC: decay the previous tasks' Fisher and add this task's", "mnemo fisher model2.safetensors --data task2.safetensors --accumulate fisher1.safetensors --gamma 0.9 -o fisher12.safetensors"),
    ],
    exit_status: EXIT_PLAIN,
};

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Mode {
    /// Mean of squared per-example gradients at the true labels.
    Empirical,
    /// Exact expectation over the model's predictive distribution, Σ_y p(y|x)·g_y².
    True,
    /// Σ over mini-batches of (mean batch gradient)², divided by N: the common reference
    /// code's estimator, biased (kept for comparison).
    Batch,
    /// Squared per-example gradient at the model's own argmax label (van de Ven & Tolias's
    /// code): a one-sample estimate of `true`.
    Predicted,
    /// Memory Aware Synapses (Aljundi et al. 2018): mean over examples of |∂‖f(x)‖²/∂θ|,
    /// no labels needed; use it as a Fisher file (--penalty MAS:MODEL).
    Mas,
}

/// One F32 tensor per trainable parameter (same name and shape): the mean over examples, in
/// eval mode (batchnorm running statistics are not parameters and get no Fisher). With
/// --reduce, no model: Fisher files of disjoint shards combine into the Fisher of their
/// union, Σ nᵢFᵢ / Σ nᵢ (nᵢ from each file's mnemo.fisher.samples).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(required_unless_present = "reduce")]
    pub model: Option<PathBuf>,
    #[arg(long, value_name = "D", required_unless_present = "reduce")]
    pub data: Option<PathBuf>,
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "empirical")]
    pub mode: Mode,
    /// Use the first N examples in file order.
    #[arg(long, value_name = "N", value_parser = mnemo::validate::count)]
    pub samples: Option<usize>,
    /// Examples per pass (and the mini-batch of --mode batch).
    #[arg(long, default_value_t = 128, value_name = "B", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    #[arg(long, value_name = "SPEC")]
    pub arch: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub head: Option<String>,
    /// The task loss whose gradients are squared (as train-ewc --loss). Default: ce for class
    /// ids and multi-class masks, bce for multi-hot rows and one-channel (binary) masks.
    /// Losses other than ce on class ids take --mode empirical or batch.
    #[arg(long, value_enum, value_name = "LOSS")]
    pub loss: Option<LossName>,
    #[command(flatten)]
    pub focal: FocalArgs,
    /// Combine these Fisher files (of the same model and mode, on disjoint data) instead of
    /// computing one.
    #[arg(long, num_args = 1.., value_name = "FISHER", conflicts_with_all = ["model", "data", "accumulate", "samples"])]
    pub reduce: Vec<PathBuf>,
    /// Online EWC: write γ·PREV + the Fisher computed here.
    #[arg(long, value_name = "PREV", requires = "gamma")]
    pub accumulate: Option<PathBuf>,
    /// Decay γ of --accumulate (1 sums the tasks' Fisher, as separate EWC penalties would).
    #[arg(long, value_name = "G", requires = "accumulate", value_parser = mnemo::validate::non_negative)]
    pub gamma: Option<f64>,
}

fn run_reduce(args: &Args, g: &Global) -> anyhow::Result<Status> {
    let mut d = mnemo::fsutil::Destinations::new();
    for f in &args.reduce {
        d.input("--reduce", f);
    }
    d.output("-o", &args.output).check()?;
    let start = std::time::Instant::now();
    let files: Vec<Checkpoint> = args
        .reduce
        .iter()
        .map(Checkpoint::open)
        .collect::<Result<_, _>>()?;
    let (tensors, samples) = reduce(&files)?;
    let mut prov = g.provenance();
    for f in &files {
        prov.input(f.path.display().to_string(), f.content_hash()?);
    }
    let mut meta = prov.metadata();
    let first = files[0].metadata();
    for (k, v) in first.iter() {
        // The shards' shared description (mode, model, head, batch size); not their provenance.
        if k.starts_with("mnemo.fisher.") {
            meta.insert(k.clone(), v.clone());
        }
    }
    meta.insert(SAMPLES_KEY.into(), samples.to_string());
    meta.insert("mnemo.fisher.shards".into(), files.len().to_string());
    let count = tensors.len();
    write_checkpoint(&args.output, tensors, &meta)
        .with_context(|| format!("writing {}", args.output.display()))?;
    JsonLines::stdout().emit(&json!({
        "output": args.output.display().to_string(), "mode": first.get(MODE_KEY),
        "samples": samples, "shards": files.len(), "tensors": count,
        "seconds": num(start.elapsed().as_secs_f64()),
    }))?;
    Ok(Status::Success)
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    if !args.reduce.is_empty() {
        return run_reduce(&args, g);
    }
    let (Some(model_path), Some(data_path)) = (&args.model, &args.data) else {
        anyhow::bail!("MODEL and --data are required (or --reduce FISHER...)");
    };
    let mut d = mnemo::fsutil::Destinations::new();
    d.input("the model", model_path);
    if !super::is_stream(data_path) {
        d.input("--data", data_path);
    }
    if let Some(p) = &args.accumulate {
        d.input("--accumulate", p);
    }
    d.output("-o", &args.output).check()?;
    let device = g.device()?;
    let (mut model, ckpt) = Model::open(model_path, args.arch.as_deref(), &device)?;
    let head = model.choose_head(args.head.as_deref()).context("--head")?;
    let data = super::open_dataset(data_path)?;
    let mode = match args.mode {
        Mode::Empirical => FisherMode::Empirical,
        Mode::True => FisherMode::True,
        Mode::Batch => FisherMode::Batch,
        Mode::Predicted => FisherMode::Predicted,
        Mode::Mas => FisherMode::Mas,
    };
    let loss = match args.loss {
        Some(l) => l.to_loss(args.focal.alpha, args.focal.gamma)?,
        None => mnemo::eval::default_loss(&mut model, head.as_deref(), &data)?,
    };
    let start = std::time::Instant::now();
    let pb = g.progress(
        args.samples.unwrap_or(data.len()).min(data.len()) as u64,
        "fisher",
    );
    let mut f = fisher(
        &mut model,
        &data,
        mode,
        loss,
        args.samples,
        args.batch_size as usize,
        head.as_deref(),
        |n| pb.inc(n as u64),
    )
    .map_err(|e| super::name_files(e.into(), &[model_path, data_path]))?;
    pb.finish_and_clear();
    let prev = match (&args.accumulate, args.gamma) {
        (Some(p), Some(gamma)) => {
            if !(gamma >= 0.0 && gamma.is_finite()) {
                anyhow::bail!("--gamma {gamma}: must be finite and non-negative");
            }
            let prev = Checkpoint::open(p)?;
            accumulate(&mut f, &prev, gamma)
                .with_context(|| format!("--accumulate {}", p.display()))?;
            Some((prev, gamma))
        }
        _ => None,
    };
    let mut tensors = Vec::new();
    for (name, t) in &f.values {
        let v: Vec<f32> = t
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .context("reading the Fisher")?;
        tensors.push(OwnedTensor::f32(name.clone(), t.dims().to_vec(), &v));
    }
    let model_hash = ckpt.content_hash()?;
    let mut prov = g.provenance();
    prov.input(model_path.display().to_string(), model_hash.clone());
    prov.input(
        data_path.display().to_string(),
        super::dataset_hash(data_path, &data)?,
    );
    if let Some((p, _)) = &prev {
        prov.input(p.path.display().to_string(), p.content_hash()?);
    }
    let mut meta = prov.metadata();
    meta.insert(MODE_KEY.into(), mode.as_str().into());
    meta.insert("mnemo.fisher.loss".into(), loss.name().into());
    meta.insert(SAMPLES_KEY.into(), f.samples.to_string());
    meta.insert(MODEL_KEY.into(), model_hash);
    if let Some((_, gamma)) = &prev {
        // An accumulated Fisher is no longer a mean over its samples: --reduce refuses it.
        meta.insert(ONLINE_KEY.into(), gamma.to_string());
    }
    if mode == FisherMode::Batch {
        meta.insert(
            "mnemo.fisher.batch_size".into(),
            args.batch_size.to_string(),
        );
    }
    if let Some(h) = &head {
        meta.insert("mnemo.fisher.head".into(), h.clone());
    }
    let count = tensors.len();
    write_checkpoint(&args.output, tensors, &meta)
        .with_context(|| format!("writing {}", args.output.display()))?;
    JsonLines::stdout().emit(&json!({
        "output": args.output.display().to_string(), "mode": mode.as_str(), "loss": loss.name(), "samples": f.samples,
        "tensors": count, "seconds": num(start.elapsed().as_secs_f64()),
    }))?;
    Ok(Status::Success)
}
