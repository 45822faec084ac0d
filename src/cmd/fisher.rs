//! `mnemo fisher`: the diagonal Fisher information of a model on a dataset.

use super::{num, Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::checkpoint::{write_checkpoint, OwnedTensor};
use mnemo::data::Dataset;
use mnemo::model::Model;
use mnemo::provenance::Provenance;
use mnemo::train::fisher::{fisher, FisherMode};
use serde_json::json;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("the Fisher of a model on the task it knows", "mnemo fisher model.safetensors --data task1.safetensors -o fisher1.safetensors"),
        ("the exact expectation over the model's own predictions, on 1000 examples", "mnemo fisher model.safetensors --data task1.safetensors --mode true --samples 1000 -o fisher1.safetensors"),
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
}

/// One F32 tensor per trainable parameter (same name and shape): the mean over examples, in
/// eval mode (batchnorm running statistics are not parameters and get no Fisher).
#[derive(clap::Args, Debug)]
pub struct Args {
    pub model: PathBuf,
    #[arg(long, value_name = "D")]
    pub data: PathBuf,
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "empirical")]
    pub mode: Mode,
    /// Use the first N examples in file order.
    #[arg(long, value_name = "N")]
    pub samples: Option<usize>,
    /// Examples per pass (and the mini-batch of --mode batch).
    #[arg(long, default_value_t = 128, value_name = "B", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    #[arg(long, value_name = "SPEC")]
    pub arch: Option<String>,
    #[arg(long, value_name = "NAME")]
    pub head: Option<String>,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let device = g.device()?;
    let (mut model, ckpt) = Model::open(&args.model, args.arch.as_deref(), &device)?;
    let head = model.choose_head(args.head.as_deref())?;
    let data = Dataset::open(&args.data)?;
    let mode = match args.mode {
        Mode::Empirical => FisherMode::Empirical,
        Mode::True => FisherMode::True,
        Mode::Batch => FisherMode::Batch,
    };
    let start = std::time::Instant::now();
    let pb = g.progress(
        args.samples.unwrap_or(data.len()).min(data.len()) as u64,
        "fisher",
    );
    let f = fisher(
        &mut model,
        &data,
        mode,
        args.samples,
        args.batch_size as usize,
        head.as_deref(),
        |n| pb.inc(n as u64),
    )?;
    pb.finish_and_clear();
    let mut tensors = Vec::new();
    for (name, t) in &f.values {
        let v: Vec<f32> = t
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .context("reading the Fisher")?;
        tensors.push(OwnedTensor::f32(name.clone(), t.dims().to_vec(), &v));
    }
    let model_hash = ckpt.content_hash()?;
    let mut prov = Provenance::from_args(&std::env::args().collect::<Vec<_>>());
    prov.input(args.model.display().to_string(), model_hash.clone());
    prov.input(
        args.data.display().to_string(),
        mnemo::checkpoint::file_hash(&args.data)?,
    );
    let mut meta = prov.metadata();
    meta.insert("mnemo.fisher.mode".into(), mode.as_str().into());
    meta.insert("mnemo.fisher.samples".into(), f.samples.to_string());
    meta.insert("mnemo.fisher.model".into(), model_hash);
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
        "output": args.output.display().to_string(), "mode": mode.as_str(), "samples": f.samples,
        "tensors": count, "seconds": num(start.elapsed().as_secs_f64()),
    }))?;
    Ok(Status::Success)
}
