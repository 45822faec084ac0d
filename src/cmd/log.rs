//! `mnemo log`: forward a JSON Lines metric stream to where users look at runs: an MLflow
//! tracking server (`mlflow`, REST API 2.0, `mnemo::mlflow`), TensorBoard event files
//! (`tensorboard`, `mnemo::logging::tensorboard`) or a Weights & Biases offline run
//! (`wandb`, `mnemo::logging::wandb`), optionally passing the stream through (`--tee`).
//! The reader thread, the parsing and the error handling they share are in
//! `log_stream.rs`; every backend maps a line to metrics with `mnemo::mlflow::record_metrics`.

#[path = "log_stream.rs"]
mod stream;
#[path = "log_tensorboard.rs"]
mod tensorboard;
#[path = "log_wandb.rs"]
mod wandb;

use super::{Global, HelpExtra, JsonLines, Status};
use anyhow::Context;
use mnemo::mlflow::{now_ms, record_metrics, summary_tags, Client, Metric, RunStatus, MAX_BATCH};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use stream::{Backend, Stream};

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("log a training run while it runs, and keep its stream for drift detection", "mnemo train-ewc model.safetensors --data task2.safetensors -o model2.safetensors | mnemo log mlflow --uri http://127.0.0.1:5000 --experiment split-mnist --run-name task2 --tee | mnemo drift --field task_loss --detector adwin"),
        ("the same into a W&B offline run (upload later with `wandb sync wandb/offline-run-*`)", "mnemo train-ewc model.safetensors --data task2.safetensors -o model2.safetensors | mnemo log wandb --project split-mnist --run-name task2 --tee | mnemo drift --field task_loss --detector adwin"),
        ("the same into TensorBoard event files (view with `tensorboard --logdir runs`)", "mnemo train-ewc model.safetensors --data task2.safetensors -o model2.safetensors | mnemo log tensorboard --logdir runs --run task2 --tee | mnemo drift --field task_loss --detector adwin"),
        ("a saved stream, with an extra tag", "mnemo log mlflow --uri http://127.0.0.1:5000 --experiment evals --tag model=m2 eval.jsonl"),
        ("the server address from the environment (layered configuration)", "MNEMO_LOG_MLFLOW_URI=http://mlflow:5000 mnemo log mlflow --experiment runs train.jsonl"),
    ],
    exit_status: &[
        (0, "every line was logged and the run ended finished (also when the reader of --tee's output went away: the run ends killed)"),
        (2, "error: the server could not be reached or answered an error (the message names the URI, the call and the HTTP status and body), a file could not be written (the message names it), or a line is not a JSON object (the message names the file and line; the run ends failed). Without --tee at once; with --tee after the whole stream has passed through"),
    ],
};

/// Log tools: forward metric streams to tracking servers and run files.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: LogCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum LogCommand {
    /// Forward a JSON Lines metric stream to an MLflow tracking server (REST API 2.0).
    ///
    /// Creates the experiment when it is missing and one run, then logs every number of
    /// every line as a metric (nested objects flattened with dots, e.g. buffer.size; a line
    /// with a string "event" prefixes it: epoch/task_loss, step/task_loss, summary/...), at
    /// the line's step: its "step", else "epoch", else "batch", else the line number
    /// (1-based); the timestamp is when the line was read. Metrics are sent in batches
    /// (every --flush-every lines, every --flush-seconds, at most 1000 per request). The run
    /// is tagged mnemo.version, mnemo.source and the --tag pairs; a summary line's strings
    /// become tags mnemo.<field> (mnemo.command, mnemo.output). The run ends FINISHED, FAILED
    /// when a line was not a JSON object (unless --skip-invalid) or the input could not be
    /// read, KILLED when the reader of --tee's output went away. Blank lines are ignored.
    /// Without --tee a summary {"uri","experiment_id","run_id","status","lines","metrics",
    /// "skipped"} is printed. MLFLOW_TRACKING_TOKEN, when set, is sent as a bearer token.
    Mlflow(MlflowArgs),
    /// Write a JSON Lines metric stream as TensorBoard event files.
    ///
    /// Creates --logdir (and --run below it: TensorBoard shows each folder as a run) and in
    /// it a new events.out.tfevents.<time>.<host>.<pid>.<n> file: TFRecords (masked
    /// CRC-32C) of Event protobufs, first the file_version event, then one event per line
    /// with every number of the line as a scalar (simple_value, a 32-bit float as
    /// TensorBoard stores it), named and stepped as `log mlflow` names and steps metrics
    /// (epoch/task_loss at the line's "step", else "epoch", else "batch", else its line
    /// number); the wall time is when the line was read. Each event is written at once and
    /// whole, so a killed stream leaves a file TensorBoard reads up to the last line; the
    /// file is fsynced every --flush-seconds and at the end. TensorBoard has no run status:
    /// the exit status tells. Without --tee a summary {"logdir","file","status","lines",
    /// "events","scalars","skipped"} is printed. View with `tensorboard --logdir DIR`.
    Tensorboard(tensorboard::TensorboardArgs),
    /// Write a JSON Lines metric stream as a Weights & Biases offline run.
    ///
    /// Creates DIR/wandb/offline-run-<date>_<time>-<id>/ with run-<id>.wandb (W&B's
    /// LevelDB-style record log of wandb_internal.Record protobufs) and files/, as `wandb`
    /// does in offline mode; upload it later with `wandb sync DIR/wandb/offline-run-...`.
    /// Each line with numbers becomes one history row (and a summary update) holding every
    /// number of the line, named as `log mlflow` names metrics (epoch/task_loss,
    /// step/task_loss, summary/...), plus mnemo/step: the line's step ("step", else "epoch",
    /// else "batch", else its line number). W&B's own _step counts rows (it must grow), and
    /// each key is defined with mnemo/step as its step metric, so charts plot each value at
    /// its line's step; keys W&B reserves (a leading _) get the prefix mnemo/. The config holds mnemo.version and mnemo.source, and at the end a
    /// summary line's strings (mnemo.command, mnemo.output). The run ends with exit code 0
    /// (finished), 1 (failed: a line was not a JSON object, unless --skip-invalid, or the
    /// input could not be read) or 141 (the reader of --tee's output went away). Records are
    /// written at once and whole, so a killed stream leaves a file that reads (and syncs, as
    /// a run that did not finish) up to its last line; the file is fsynced every
    /// --flush-seconds and at the end. Without --tee a summary {"dir","run_id","file",
    /// "status","exit_code","lines","rows","skipped"} is printed.
    Wandb(wandb::WandbArgs),
}

#[derive(clap::Args, Debug)]
pub struct MlflowArgs {
    /// The tracking server's address, e.g. http://127.0.0.1:5000 (plain http).
    #[arg(long, value_name = "URI")]
    pub uri: String,
    /// The experiment's name (created when missing).
    #[arg(long, value_name = "NAME")]
    pub experiment: String,
    /// The run's name (default: MLflow picks one).
    #[arg(long, value_name = "R")]
    pub run_name: Option<String>,
    /// Pass every input line through to stdout unchanged as it arrives; server errors are
    /// reported on stderr and end with exit 2 only after the whole stream has passed.
    #[arg(long)]
    pub tee: bool,
    /// Lines that are not JSON objects are skipped (and counted) instead of failing the run.
    #[arg(long)]
    pub skip_invalid: bool,
    /// An extra run tag (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub tag: Vec<String>,
    /// Send the pending metrics after this many lines.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub flush_every: u64,
    /// Send the pending metrics when the oldest has waited this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub flush_seconds: f64,
    /// The limit on each HTTP request.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub timeout: f64,
    /// JSON Lines input (default: stdin; - is stdin).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    match args.command {
        LogCommand::Mlflow(a) => mlflow(a, g),
        LogCommand::Tensorboard(a) => tensorboard::run(a, g),
        LogCommand::Wandb(a) => wandb::run(a, g),
    }
}

/// A positive number of seconds from a flag.
fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} {s}: must be a positive number of seconds"))
}

/// The MLflow side: a run on the server, pending metrics.
struct Mlflow {
    client: Client,
    run_id: String,
    experiment_id: String,
    pending: Vec<Metric>,
    pending_lines: u64,
    oldest: Option<Instant>,
    flush_every: u64,
    flush_after: Duration,
    sent: u64,
    /// The latest value of every summary tag.
    summary: Vec<(String, String)>,
}

impl Backend for Mlflow {
    fn record(&mut self, rec: &Map<String, Value>, line: u64, time_ms: i64) -> anyhow::Result<()> {
        for (k, v) in summary_tags(rec) {
            self.summary.retain(|(x, _)| *x != k);
            self.summary.push((k, v));
        }
        let metrics = record_metrics(rec, line, time_ms);
        if !metrics.is_empty() && self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        self.pending.extend(metrics);
        self.pending_lines += 1;
        if self.pending.len() >= MAX_BATCH || self.pending_lines >= self.flush_every {
            self.tick()?;
        }
        Ok(())
    }

    fn due(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.flush_after)
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        let metrics = std::mem::take(&mut self.pending);
        self.pending_lines = 0;
        self.oldest = None;
        if metrics.is_empty() {
            return Ok(());
        }
        self.client.log_batch(&self.run_id, &metrics)?;
        self.sent += metrics.len() as u64;
        Ok(())
    }

    fn finish(&mut self, status: RunStatus) -> anyhow::Result<()> {
        for (k, v) in &self.summary {
            self.client.set_tag(&self.run_id, k, v)?;
        }
        self.client.end_run(&self.run_id, status, now_ms())?;
        Ok(())
    }

    fn abort(&mut self) {
        let _ = self
            .client
            .end_run(&self.run_id, RunStatus::Failed, now_ms());
    }
}

fn mlflow(a: MlflowArgs, g: &Global) -> anyhow::Result<Status> {
    let timeout = seconds("--timeout", a.timeout)?;
    let flush_after = seconds("--flush-seconds", a.flush_seconds)?;
    let mut tags: Vec<(String, String)> = Vec::new();
    for t in &a.tag {
        let (k, v) = t
            .split_once('=')
            .with_context(|| format!("--tag '{t}': expected KEY=VALUE"))?;
        tags.push((k.to_string(), v.to_string()));
    }
    let client = Client::new(&a.uri, timeout)?;
    let uri = client.uri().to_string();
    let (input, name) = stream::open_input(a.file.as_ref())?;
    let mut run_tags = vec![
        (
            "mnemo.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("mnemo.source".to_string(), name.clone()),
        (
            "mlflow.source.name".to_string(),
            "mnemo log mlflow".to_string(),
        ),
    ];
    if let Ok(user) = std::env::var("USER") {
        run_tags.push(("mlflow.user".to_string(), user));
    }
    run_tags.extend(tags);
    let stream = Stream {
        what: "log mlflow",
        input,
        name,
        tee: a.tee,
        skip_invalid: a.skip_invalid,
        g,
    };
    let (outcome, backend) = stream.run(|| {
        let experiment_id = client.experiment_id(&a.experiment)?;
        let run_id =
            client.create_run(&experiment_id, a.run_name.as_deref(), now_ms(), &run_tags)?;
        Ok(Mlflow {
            client,
            run_id,
            experiment_id,
            pending: Vec::new(),
            pending_lines: 0,
            oldest: None,
            flush_every: a.flush_every,
            flush_after,
            sent: 0,
            summary: Vec::new(),
        })
    })?;
    // The run was created: a failed start ends in an error above.
    let Some(run) = backend else {
        return Ok(Status::Success);
    };
    if outcome.status == RunStatus::Killed {
        // The reader of the stream went away: end quietly, as a closed pipe does.
        return Ok(Status::Success);
    }
    if a.tee {
        g.say(format!(
            "mnemo log mlflow: {} metrics from {} lines to run {} (experiment {}) at {}: {}",
            run.sent,
            outcome.lines,
            run.run_id,
            run.experiment_id,
            uri,
            outcome.status.as_str()
        ));
    } else {
        JsonLines::stdout().emit(&json!({
            "uri": uri, "experiment_id": run.experiment_id, "run_id": run.run_id,
            "status": outcome.status.as_str(), "lines": outcome.lines, "metrics": run.sent,
            "skipped": outcome.skipped,
        }))?;
    }
    Ok(Status::Success)
}
