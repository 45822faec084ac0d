//! `mnemo log wandb`: a JSON Lines stream as a Weights & Biases offline run
//! (`mnemo::logging::wandb`).

use super::stream::{open_input, Backend, Stream};
use super::{seconds, Global, JsonLines, Status};
use mnemo::logging::wandb::{Run, RunOptions};
use mnemo::mlflow::{record_metrics, summary_tags, RunStatus};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant, UNIX_EPOCH};

#[derive(clap::Args, Debug)]
pub struct WandbArgs {
    /// The W&B project the run will be synced to (default: `wandb sync` picks, or takes
    /// its --project).
    #[arg(long, value_name = "P")]
    pub project: Option<String>,
    /// The run's display name (default: W&B picks one).
    #[arg(long, value_name = "R")]
    pub run_name: Option<String>,
    /// The folder that gets the wandb/ folder of runs, as wandb.init(dir=...) (default: the
    /// current folder).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
    /// Pass every input line through to stdout unchanged as it arrives; write errors are
    /// reported on stderr and end with exit 2 only after the whole stream has passed.
    #[arg(long)]
    pub tee: bool,
    /// Lines that are not JSON objects are skipped (and counted) instead of failing the run.
    #[arg(long)]
    pub skip_invalid: bool,
    /// fsync the run file when its oldest unsynced record has waited this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub flush_seconds: f64,
    /// JSON Lines input (default: stdin; - is stdin).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// The exit code a run ends with.
fn exit_code(status: RunStatus) -> i32 {
    match status {
        RunStatus::Finished => 0,
        RunStatus::Failed => 1,
        // As a shell reports a process that SIGPIPE ended.
        RunStatus::Killed => 141,
    }
}

struct Wandb {
    /// None once ended.
    run: Option<Run>,
    dir: PathBuf,
    id: String,
    file: PathBuf,
    rows: i64,
    summary: Vec<(String, String)>,
    unsynced: Option<Instant>,
    flush_after: Duration,
    exit_code: i32,
}

impl Wandb {
    fn end(&mut self, code: i32) -> anyhow::Result<()> {
        if let Some(mut run) = self.run.take() {
            let config: Vec<(String, String)> = self
                .summary
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone()).to_string()))
                .collect();
            run.config(&config)?;
            self.exit_code = code;
            run.finish(code)?;
        }
        Ok(())
    }
}

impl Backend for Wandb {
    fn record(&mut self, rec: &Map<String, Value>, line: u64, time_ms: i64) -> anyhow::Result<()> {
        let Some(run) = self.run.as_mut() else {
            return Ok(());
        };
        for (k, v) in summary_tags(rec) {
            self.summary.retain(|(x, _)| *x != k);
            self.summary.push((k, v));
        }
        let metrics = record_metrics(rec, line, time_ms);
        let Some(first) = metrics.first() else {
            return Ok(());
        };
        let step = first.step;
        let values: Vec<(String, f64)> = metrics.into_iter().map(|m| (m.key, m.value)).collect();
        let time = UNIX_EPOCH + Duration::from_millis(time_ms.max(0) as u64);
        run.log(&values, step, time)?;
        self.rows = run.rows();
        self.unsynced.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn due(&self) -> Option<Instant> {
        self.unsynced.map(|t| t + self.flush_after)
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        if self.unsynced.take().is_some() {
            if let Some(run) = self.run.as_mut() {
                run.sync()?;
            }
        }
        Ok(())
    }

    fn finish(&mut self, status: RunStatus) -> anyhow::Result<()> {
        self.end(exit_code(status))
    }

    fn abort(&mut self) {
        let _ = self.end(exit_code(RunStatus::Failed));
    }
}

pub fn run(a: WandbArgs, g: &Global) -> anyhow::Result<Status> {
    let flush_after = seconds("--flush-seconds", a.flush_seconds)?;
    let (input, name) = open_input(a.file.as_ref())?;
    let opts = RunOptions {
        project: a.project.clone().unwrap_or_default(),
        name: a.run_name.clone().unwrap_or_default(),
        config: vec![
            (
                "mnemo.version".to_string(),
                Value::String(env!("CARGO_PKG_VERSION").to_string()).to_string(),
            ),
            (
                "mnemo.source".to_string(),
                Value::String(name.clone()).to_string(),
            ),
        ],
        id: String::new(),
    };
    let stream = Stream {
        what: "log wandb",
        input,
        name,
        tee: a.tee,
        skip_invalid: a.skip_invalid,
        g,
    };
    let (outcome, backend) = stream.run(|| {
        let run = Run::create(&a.dir, &opts)?;
        Ok(Wandb {
            dir: run.dir().to_path_buf(),
            id: run.id().to_string(),
            file: run.path().to_path_buf(),
            run: Some(run),
            rows: 0,
            summary: Vec::new(),
            unsynced: None,
            flush_after,
            exit_code: 0,
        })
    })?;
    let Some(w) = backend else {
        return Ok(Status::Success);
    };
    if outcome.status == RunStatus::Killed {
        return Ok(Status::Success);
    }
    if a.tee {
        g.say(format!(
            "mnemo log wandb: {} rows from {} lines to {} (upload with: wandb sync {})",
            w.rows,
            outcome.lines,
            w.file.display(),
            w.dir.display()
        ));
    } else {
        JsonLines::stdout().emit(&json!({
            "dir": w.dir, "run_id": w.id, "file": w.file, "status": outcome.status.as_str(),
            "exit_code": w.exit_code, "lines": outcome.lines, "rows": w.rows,
            "skipped": outcome.skipped,
        }))?;
    }
    Ok(Status::Success)
}
