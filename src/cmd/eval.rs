//! `mnemo eval`: mean cross-entropy, accuracy and top-5 of a classifier on a dataset, with
//! its accuracy per class and (up to 100 classes, or with --confusion) its confusion matrix; for
//! masks the loss, per-class IoU and mIoU, for multi-hot targets the loss, per-label AP and mAP.

use super::engine::LossName;
use super::{num, Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::data::{Dataset, TargetKind};
use mnemo::eval::{self, EvalConfig};
use mnemo::metrics::dense::mean_present;
use mnemo::model::Model;
use serde_json::json;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        (
            "evaluate a checkpoint that carries its arch",
            "mnemo eval model.safetensors --data test.safetensors",
        ),
        (
            "a torch-made MLP, whose file has no arch",
            "mnemo eval torch_mlp.safetensors --arch mlp:784-400-400-10 --data test.safetensors",
        ),
        (
            "every task's test set after training on task 3 (one line each, then the mean)",
            "mnemo eval model3.safetensors --data t1-test.safetensors t2-test.safetensors t3-test.safetensors",
        ),
        (
            "records for an accuracy matrix: after stage 2 of an EWC run, seed 1",
            "mnemo eval model2.safetensors --data t1.safetensors t2.safetensors t3.safetensors --stage 2 --label method=ewc --label seed=1 >> results.jsonl",
        ),
        (
            "segmentation masks: loss, per-class IoU and mIoU (binary masks: dice + BCE)",
            "mnemo eval seg.safetensors --data masks.safetensors --loss dice-bce",
        ),
        (
            "a multi-head pipeline: task 2 is the detection head's, recorded after stage 3",
            "mnemo eval model3.safetensors --data det-test.safetensors --head det --stage 3 --task 2 >> results.jsonl",
        ),
        (
            "a classifier's confusion matrix (rows: true class, columns: predicted) drawn as a figure",
            "mnemo eval model.safetensors --data test.safetensors > eval.jsonl && mnemo report --confusion eval.jsonl -o confusion.png",
        ),
        (
            "per-batch losses as JSON Lines, for monitoring",
            "mnemo eval model.safetensors --data stream.safetensors --stream | tee eval.jsonl",
        ),
    ],
    exit_status: EXIT_PLAIN,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model checkpoint (a .safetensors file, an HF index.json, or a folder).
    pub model: PathBuf,
    /// Dataset(s): safetensors with `input` [N,...] and `target` [N] class ids (loss,
    /// accuracy, top5, per_class_accuracy, confusion), [N,H,W] masks (loss, iou per class, miou, pixel_accuracy) or [N,K]
    /// multi-hot rows (loss, ap per label, map, label_accuracy). With several (one per
    /// task), one line per dataset with its 1-based "task" number, then their mean accuracy.
    /// `-` reads a stream on stdin (as `mnemo online` does: `mnemo data stream` frames or
    /// JSON Lines) whole.
    #[arg(long, value_name = "D", num_args = 1.., required = true)]
    pub data: Vec<PathBuf>,
    /// Architecture, for checkpoints without `mnemo.arch` metadata.
    #[arg(long, value_name = "SPEC")]
    pub arch: Option<String>,
    #[arg(long, default_value_t = 256, value_name = "B", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Which head of a multi-head model to evaluate.
    #[arg(long, value_name = "NAME")]
    pub head: Option<String>,
    /// Also print one line per batch before the summary: {"batch","n","loss","accuracy"}.
    #[arg(long)]
    pub stream: bool,
    /// Mark each result line with "stage": N (the training stage the model comes from) and
    /// its "task" number: the records `report` and `check` build accuracy matrices from.
    #[arg(long, value_name = "N", value_parser = mnemo::validate::size)]
    pub stage: Option<usize>,
    /// The "task" number of the first dataset (the next ones count up from it): for
    /// pipelines that evaluate each task apart, e.g. each with its own --head.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub task: u64,
    /// Add KEY=VALUE to every result line (repeatable), e.g. --label method=ewc --label seed=1;
    /// values that parse as numbers are written as numbers.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// The loss reported (see train-ewc --loss). Default: ce for class ids and multi-class
    /// masks, bce for multi-hot targets and binary masks (one output channel).
    #[arg(long, value_enum)]
    pub loss: Option<LossName>,
    #[command(flatten)]
    pub focal: super::engine::FocalArgs,
    /// Class ids: add the confusion matrix whatever the number of classes (by default it is
    /// added when the model has at most 100 classes; per_class_accuracy always is).
    #[arg(long)]
    pub confusion: bool,
}

/// Class ids: the confusion matrix ("confusion", classes × classes counts) is part of the
/// result line up to this many classes (100 × 100 counts), or always with --confusion.
pub const CONFUSION_CLASSES: usize = 100;

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let device = g.device()?;
    let (mut model, _ckpt) = Model::open(&args.model, args.arch.as_deref(), &device)?;
    let head = model.choose_head(args.head.as_deref()).context("--head")?;
    let mut labels = serde_json::Map::new();
    for l in &args.label {
        let (k, v) = l
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .with_context(|| format!("--label '{l}': expected KEY=VALUE"))?;
        let value = match v.parse::<i64>() {
            Ok(i) => json!(i),
            Err(_) => v.parse::<f64>().map(num).unwrap_or_else(|_| json!(v)),
        };
        labels.insert(k.to_string(), value);
    }
    let mut out = JsonLines::stdout();
    let several = args.data.len() > 1 || args.stage.is_some() || args.task != 1;
    let mut accuracies = Vec::new();
    for (task, path) in args.data.iter().enumerate() {
        let data = super::open_dataset(path)?;
        if data.target_kind == TargetKind::Class {
            if let Some(l) = args.loss {
                l.to_loss(args.focal.alpha, args.focal.gamma)?
                    .check_targets(&data)?;
            }
        }
        let (mut line, accuracy) =
            evaluate_one(&args, &mut model, head.as_deref(), &data, &mut out, g)
                .map_err(|e| super::name_files(e, &[&args.model, path]))?;
        // No exit 0 with a result that is not a number: finite weights can still overflow
        // (logits of ±inf make the loss NaN).
        if line.get("loss").is_some_and(|l| l.is_null()) {
            anyhow::bail!(
                "{} with {}: the loss is not finite (the model's outputs overflow)",
                args.model.display(),
                path.display()
            );
        }
        if several {
            line["task"] = json!(task as u64 + args.task);
            line["data"] = json!(path.display().to_string());
        }
        if let Some(s) = args.stage {
            line["stage"] = json!(s);
        }
        for (k, v) in &labels {
            line[k] = v.clone();
        }
        out.emit(&line)?;
        accuracies.push(accuracy);
    }
    if args.data.len() > 1 {
        out.emit(&json!({
            "tasks": accuracies.len(),
            "mean_accuracy": num(accuracies.iter().sum::<f64>() / accuracies.len() as f64),
        }))?;
    }
    Ok(Status::Success)
}

fn opt_num(v: Option<f64>) -> serde_json::Value {
    v.map_or(serde_json::Value::Null, num)
}

/// Scores `data` through the library's evaluation loop (per-batch lines with --stream) and
/// returns the result line and its accuracy (class, pixel or label accuracy).
fn evaluate_one(
    args: &Args,
    model: &mut Model,
    head: Option<&str>,
    data: &Dataset,
    out: &mut JsonLines,
    g: &Global,
) -> anyhow::Result<(serde_json::Value, f64)> {
    let loss = match args.loss {
        Some(l) => l.to_loss(args.focal.alpha, args.focal.gamma)?,
        None => eval::default_loss(model, head, data)?,
    };
    let pb = g.progress(data.len() as u64, "eval");
    let stream = args.stream;
    let cfg = EvalConfig {
        head,
        batch_size: args.batch_size as usize,
        loss,
        top_k: 5,
        per_example: false,
        confusion_limit: if args.confusion {
            usize::MAX
        } else {
            CONFUSION_CLASSES
        },
    };
    let t = eval::evaluate(model, data, &cfg, &mut |b| {
        pb.inc(b.n as u64);
        if stream {
            let mut line = json!({"batch": b.index, "n": b.n, "loss": num(b.loss)});
            if let Some(a) = b.accuracy {
                line["accuracy"] = num(a);
            }
            out.emit_io(&line)?;
        }
        Ok(())
    })
    .with_context(|| {
        format!(
            "evaluating {} on {}",
            args.model.display(),
            data.path.display()
        )
    })?;
    pb.finish_and_clear();
    if data.target_kind == TargetKind::Class {
        let totals = t.classes.clone().unwrap_or_default();
        let mut line = json!({
            "loss": num(totals.loss()),
            "accuracy": num(totals.accuracy()),
            "top5": num(totals.top_k_accuracy()),
            "n": totals.n,
        });
        // Recall per class (null: no example of it), then rows = true class, columns =
        // predicted class.
        line["per_class_accuracy"] = totals
            .per_class_accuracy()
            .into_iter()
            .map(opt_num)
            .collect();
        if let Some(c) = &t.confusion {
            line["confusion"] = json!(c.rows());
        }
        return Ok((line, totals.accuracy()));
    }
    let mut line = json!({"loss": num(t.loss), "loss_fn": loss.name()});
    if let Some(iou) = &t.iou {
        let per = iou.per_class();
        line["miou"] = opt_num(mean_present(&per));
        line["iou"] = per.into_iter().map(opt_num).collect();
        line["pixel_accuracy"] = num(iou.pixel_accuracy());
    }
    if let Some(m) = &t.multi {
        let per = m.per_class();
        line["map"] = opt_num(mean_present(&per));
        line["ap"] = per.into_iter().map(opt_num).collect();
        line["label_accuracy"] = num(m.label_accuracy());
    }
    if let Some(tok) = &t.tokens {
        // transformers' eval_loss (mean over scored positions) and perplexity exp(loss).
        line["perplexity"] = num(tok.perplexity());
        line["token_accuracy"] = num(tok.accuracy());
        line["tokens"] = json!(tok.positions);
    }
    line["n"] = json!(t.n);
    Ok((line, t.accuracy()))
}
