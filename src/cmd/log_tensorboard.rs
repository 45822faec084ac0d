//! `mnemo log tensorboard`: a JSON Lines stream as TensorBoard event files
//! (`mnemo::logging::tensorboard`).

use super::stream::{open_input, Backend, Stream};
use super::{seconds, Global, JsonLines, Status};
use mnemo::logging::tensorboard::EventFile;
use mnemo::mlflow::{record_metrics, RunStatus};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct TensorboardArgs {
    /// The log folder TensorBoard is pointed at (`tensorboard --logdir DIR`); created when
    /// missing.
    #[arg(long, value_name = "DIR")]
    pub logdir: PathBuf,
    /// The run: a folder below --logdir (default: the event file goes in --logdir itself).
    #[arg(long, value_name = "R")]
    pub run: Option<String>,
    /// Pass every input line through to stdout unchanged as it arrives; write errors are
    /// reported on stderr and end with exit 2 only after the whole stream has passed.
    #[arg(long)]
    pub tee: bool,
    /// Lines that are not JSON objects are skipped (and counted) instead of failing the run.
    #[arg(long)]
    pub skip_invalid: bool,
    /// fsync the event file when its oldest unsynced event has waited this long.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub flush_seconds: f64,
    /// JSON Lines input (default: stdin; - is stdin).
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
}

struct Tb {
    file: EventFile,
    scalars: u64,
    unsynced: Option<Instant>,
    flush_after: Duration,
}

impl Backend for Tb {
    fn record(&mut self, rec: &Map<String, Value>, line: u64, time_ms: i64) -> anyhow::Result<()> {
        let metrics = record_metrics(rec, line, time_ms);
        let Some(first) = metrics.first() else {
            return Ok(());
        };
        let step = first.step;
        let values: Vec<(String, f64)> = metrics.into_iter().map(|m| (m.key, m.value)).collect();
        self.file.scalars(time_ms as f64 / 1000.0, step, &values)?;
        self.scalars += values.len() as u64;
        self.unsynced.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn due(&self) -> Option<Instant> {
        self.unsynced.map(|t| t + self.flush_after)
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        if self.unsynced.take().is_some() {
            self.file.sync()?;
        }
        Ok(())
    }

    fn finish(&mut self, _status: RunStatus) -> anyhow::Result<()> {
        Ok(self.file.sync()?)
    }

    fn abort(&mut self) {
        let _ = self.file.sync();
    }
}

pub fn run(a: TensorboardArgs, g: &Global) -> anyhow::Result<Status> {
    let flush_after = seconds("--flush-seconds", a.flush_seconds)?;
    let dir = match &a.run {
        Some(r) => {
            let p = std::path::Path::new(r);
            if r.is_empty()
                || p.is_absolute()
                || p.components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                anyhow::bail!(
                    "--run '{r}': expected a folder name below --logdir (no '..', not absolute)"
                );
            }
            a.logdir.join(r)
        }
        None => a.logdir.clone(),
    };
    let (input, name) = open_input(a.file.as_ref())?;
    let stream = Stream {
        what: "log tensorboard",
        input,
        name,
        tee: a.tee,
        skip_invalid: a.skip_invalid,
        g,
    };
    let (outcome, backend) = stream.run(|| {
        let now = mnemo::mlflow::now_ms() as f64 / 1000.0;
        Ok(Tb {
            file: EventFile::create(&dir, now)?,
            scalars: 0,
            unsynced: None,
            flush_after,
        })
    })?;
    let Some(tb) = backend else {
        return Ok(Status::Success);
    };
    if outcome.status == RunStatus::Killed {
        return Ok(Status::Success);
    }
    if a.tee {
        g.say(format!(
            "mnemo log tensorboard: {} scalars from {} lines to {}",
            tb.scalars,
            outcome.lines,
            tb.file.path().display()
        ));
    } else {
        JsonLines::stdout().emit(&json!({
            "logdir": a.logdir, "file": tb.file.path(), "status": outcome.status.as_str(),
            "lines": outcome.lines, "events": tb.file.events(), "scalars": tb.scalars,
            "skipped": outcome.skipped,
        }))?;
    }
    Ok(Status::Success)
}
