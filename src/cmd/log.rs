//! `mnemo log mlflow`: forward a JSON Lines metric stream to an MLflow tracking server
//! (REST API 2.0, `mnemo::mlflow`), optionally passing the stream through (`--tee`).
//!
//! A reader thread reads the input, writes each line to stdout at once (--tee) and hands
//! it to the main thread, which batches metrics and sends them: a slow or dead server
//! never holds the stream back.

use super::{Global, HelpExtra, JsonLines, Status};
use anyhow::Context;
use mnemo::mlflow::{now_ms, record_metrics, summary_tags, Client, Metric, RunStatus, MAX_BATCH};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("log a training run while it runs, and keep its stream for drift detection", "mnemo train-ewc model.safetensors --data task2.safetensors -o model2.safetensors | mnemo log mlflow --uri http://127.0.0.1:5000 --experiment split-mnist --run-name task2 --tee | mnemo drift --field task_loss --detector adwin"),
        ("a saved stream, with an extra tag", "mnemo log mlflow --uri http://127.0.0.1:5000 --experiment evals --tag model=m2 eval.jsonl"),
        ("the server address from the environment (layered configuration)", "MNEMO_LOG_MLFLOW_URI=http://mlflow:5000 mnemo log mlflow --experiment runs train.jsonl"),
    ],
    exit_status: &[
        (0, "every line was logged and the run ended FINISHED (also when the reader of --tee's output went away: the run ends KILLED)"),
        (2, "error: the server could not be reached or answered an error (the message names the URI, the call and the HTTP status and body), or a line is not a JSON object (the message names the file and line; the run ends FAILED). Without --tee at once; with --tee after the whole stream has passed through"),
    ],
};

/// Log tools: forward metric streams to tracking servers.
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
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = mnemo::validate::seconds)]
    pub flush_seconds: f64,
    /// The limit on each HTTP request.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = mnemo::validate::seconds)]
    pub timeout: f64,
    /// JSON Lines input (default: stdin; - is stdin).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    match args.command {
        LogCommand::Mlflow(a) => mlflow(a, g),
    }
}

/// What the reader thread hands over.
enum Msg {
    /// A line (without its newline) and when it was read, in ms since the epoch.
    Line(Vec<u8>, i64),
    /// The input ended.
    End,
    /// The input could not be read.
    ReadError(std::io::Error),
    /// --tee's stdout was closed by its reader.
    Closed,
}

fn seconds(flag: &str, s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} {s}: must be a positive number of seconds"))
}

/// Reads `input` line by line; with `tee`, writes each line to stdout first.
fn reader(input: Box<dyn BufRead + Send>, tee: bool, tx: mpsc::Sender<Msg>) {
    let mut input = input;
    let stdout = std::io::stdout();
    loop {
        let mut buf = Vec::new();
        match input.read_until(b'\n', &mut buf) {
            Ok(0) => {
                let _ = tx.send(Msg::End);
                return;
            }
            Ok(_) => {
                let ts = now_ms();
                if tee {
                    let mut out = stdout.lock();
                    if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
                        let _ = tx.send(Msg::Closed);
                        return;
                    }
                }
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                if tx.send(Msg::Line(buf, ts)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.send(Msg::ReadError(e));
                return;
            }
        }
    }
}

/// The logging side: a run on the server, pending metrics, the first error.
struct Logger {
    client: Client,
    run_id: Option<String>,
    experiment_id: Option<String>,
    pending: Vec<Metric>,
    pending_lines: u64,
    oldest: Option<Instant>,
    sent: u64,
    /// The first server error (with --tee: logging stops, the stream goes on).
    error: Option<anyhow::Error>,
    tee: bool,
}

impl Logger {
    /// Records a server error: without --tee it is returned at once (the run is marked
    /// FAILED when there is one); with --tee it is reported and kept for the exit status.
    fn fail(&mut self, e: mnemo::MnemoError) -> anyhow::Result<()> {
        if !self.tee {
            if let Some(run) = &self.run_id {
                let _ = self.client.end_run(run, RunStatus::Failed, now_ms());
            }
            return Err(e.into());
        }
        if self.error.is_none() {
            super::warn(format!(
                "mnemo: log mlflow: {e}; logging stopped, the stream still passes through"
            ));
            self.error = Some(e.into());
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        let metrics = std::mem::take(&mut self.pending);
        self.pending_lines = 0;
        self.oldest = None;
        if metrics.is_empty() || self.error.is_some() {
            return Ok(());
        }
        let Some(run) = self.run_id.clone() else {
            return Ok(());
        };
        match self.client.log_batch(&run, &metrics) {
            Ok(()) => {
                self.sent += metrics.len() as u64;
                Ok(())
            }
            Err(e) => self.fail(e),
        }
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
    let (input, name): (Box<dyn BufRead + Send>, String) = match &a.file {
        Some(p) if p.as_os_str() != "-" => (
            Box::new(std::io::BufReader::new(
                std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
            )),
            p.display().to_string(),
        ),
        _ => (
            Box::new(std::io::BufReader::new(std::io::stdin())),
            "<stdin>".to_string(),
        ),
    };
    // The stream starts flowing before the server is asked anything.
    let (tx, rx) = mpsc::channel();
    let tee = a.tee;
    std::thread::spawn(move || reader(input, tee, tx));

    let mut log = Logger {
        client,
        run_id: None,
        experiment_id: None,
        pending: Vec::new(),
        pending_lines: 0,
        oldest: None,
        sent: 0,
        error: None,
        tee,
    };
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
    match log.client.experiment_id(&a.experiment).and_then(|exp| {
        let run = log
            .client
            .create_run(&exp, a.run_name.as_deref(), now_ms(), &run_tags)?;
        Ok((exp, run))
    }) {
        Ok((exp, run)) => {
            log.experiment_id = Some(exp);
            log.run_id = Some(run);
        }
        Err(e) => log.fail(e)?,
    }

    let mut line_no: u64 = 0;
    let mut lines: u64 = 0;
    let mut skipped: u64 = 0;
    let mut invalid: Option<anyhow::Error> = None;
    let mut summary: Vec<(String, String)> = Vec::new();
    let mut status = RunStatus::Finished;
    loop {
        let msg = match log.oldest {
            Some(t) => match rx.recv_timeout(flush_after.saturating_sub(t.elapsed())) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    log.flush()?;
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => Msg::End,
            },
            None => rx.recv().unwrap_or(Msg::End),
        };
        match msg {
            Msg::Line(bytes, ts) => {
                line_no += 1;
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let rec = match serde_json::from_slice::<Value>(&bytes) {
                    Ok(Value::Object(o)) => o,
                    parsed => {
                        let reason = match parsed {
                            Err(e) => format!("not JSON: {e}"),
                            Ok(_) => "not a JSON object".to_string(),
                        };
                        let e = mnemo::MnemoError::InvalidLine {
                            path: name.clone().into(),
                            line: line_no as usize,
                            reason,
                        };
                        if a.skip_invalid {
                            skipped += 1;
                            if skipped == 1 {
                                g.say(format!("mnemo: log mlflow: skipping {e} (and counting)"));
                            }
                            continue;
                        }
                        if !tee {
                            log.flush()?;
                            if let Some(run) = &log.run_id {
                                let _ = log.client.end_run(run, RunStatus::Failed, now_ms());
                            }
                            return Err(e.into());
                        }
                        if invalid.is_none() {
                            super::warn(format!("mnemo: log mlflow: {e}; the run will end FAILED"));
                            invalid = Some(e.into());
                        }
                        continue;
                    }
                };
                lines += 1;
                for (k, v) in summary_tags(&rec) {
                    summary.retain(|(x, _)| *x != k);
                    summary.push((k, v));
                }
                let metrics = record_metrics(&rec, line_no, ts);
                if !metrics.is_empty() && log.oldest.is_none() {
                    log.oldest = Some(Instant::now());
                }
                log.pending.extend(metrics);
                log.pending_lines += 1;
                if log.pending.len() >= MAX_BATCH || log.pending_lines >= a.flush_every {
                    log.flush()?;
                }
            }
            Msg::End => break,
            Msg::Closed => {
                status = RunStatus::Killed;
                break;
            }
            Msg::ReadError(e) => {
                status = RunStatus::Failed;
                let e = anyhow::Error::new(e).context(format!("reading {name}"));
                if !tee {
                    log.flush()?;
                    if let Some(run) = &log.run_id {
                        let _ = log.client.end_run(run, RunStatus::Failed, now_ms());
                    }
                    return Err(e);
                }
                invalid.get_or_insert(e);
                break;
            }
        }
    }
    log.flush()?;
    if invalid.is_some() {
        status = RunStatus::Failed;
    }
    if let Some(run) = log.run_id.clone() {
        for (k, v) in &summary {
            if log.error.is_some() {
                break;
            }
            if let Err(e) = log.client.set_tag(&run, k, v) {
                log.fail(e)?;
            }
        }
        if log.error.is_none() {
            if let Err(e) = log.client.end_run(&run, status, now_ms()) {
                log.fail(e)?;
            }
        }
    }
    let report = json!({
        "uri": log.client.uri(), "experiment_id": log.experiment_id, "run_id": log.run_id,
        "status": status.as_str(), "lines": lines, "metrics": log.sent, "skipped": skipped,
    });
    if let Some(e) = log.error.take() {
        return Err(e);
    }
    if let Some(e) = invalid {
        return Err(e);
    }
    if status == RunStatus::Killed {
        // The reader of the stream went away: end quietly, as a closed pipe does.
        return Ok(Status::Success);
    }
    if tee {
        g.say(format!(
            "mnemo log mlflow: {} metrics from {} lines to run {} (experiment {}) at {}: {}",
            log.sent,
            lines,
            log.run_id.as_deref().unwrap_or("-"),
            log.experiment_id.as_deref().unwrap_or("-"),
            log.client.uri(),
            status.as_str()
        ));
    } else {
        JsonLines::stdout().emit(&report)?;
    }
    Ok(Status::Success)
}
