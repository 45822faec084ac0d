//! What every `mnemo log` backend shares: the input, the reader thread that passes lines
//! through (`--tee`) as they arrive, the parsing of each line into a JSON object, and how
//! errors end the run.
//!
//! A reader thread reads the input, writes each line to stdout at once (--tee) and hands it
//! to the main thread, which gives each record to the backend: a slow or failing backend
//! never holds the stream back.
//!
//! Errors: a backend error without --tee ends the run failed (as far as the backend still
//! can) and the command at once; with --tee it is reported, logging stops and the stream
//! goes on, and the command exits 2 at its end. A line that is not a JSON object does the
//! same (unless skipped); a read error ends the stream. When the reader of --tee's output
//! goes away the run ends killed and the command quietly.

use super::Global;
use anyhow::Context;
use mnemo::mlflow::{now_ms, RunStatus};
use serde_json::{Map, Value};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Instant;

/// A logging backend: one run, fed record by record.
pub trait Backend {
    /// One JSON object, from line `line` (1-based) read at `time_ms` (ms since the epoch).
    fn record(&mut self, rec: &Map<String, Value>, line: u64, time_ms: i64) -> anyhow::Result<()>;
    /// When `tick` should be called next (pending metrics to send, data to sync), if ever.
    fn due(&self) -> Option<Instant>;
    /// Sends or syncs what is pending.
    fn tick(&mut self) -> anyhow::Result<()>;
    /// Ends the run normally with `status` (after a last `tick`).
    fn finish(&mut self, status: RunStatus) -> anyhow::Result<()>;
    /// Marks the run failed as far as possible after an error; errors are ignored.
    fn abort(&mut self);
}

/// How a stream ended.
pub struct Outcome {
    /// Lines that were JSON objects.
    pub lines: u64,
    /// Lines skipped (--skip-invalid).
    pub skipped: u64,
    pub status: RunStatus,
}

/// The input: a file, or stdin (none or `-`), and its name for messages.
pub fn open_input(file: Option<&PathBuf>) -> anyhow::Result<(Box<dyn BufRead + Send>, String)> {
    Ok(match file {
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
    })
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

/// One stream through one backend.
pub struct Stream<'a> {
    /// The command, for messages: "log mlflow".
    pub what: &'static str,
    pub input: Box<dyn BufRead + Send>,
    /// The input's name for messages (a path or `<stdin>`).
    pub name: String,
    pub tee: bool,
    pub skip_invalid: bool,
    pub g: &'a Global,
}

/// The backend while it is still logging; the first error once it is not (--tee).
struct Guard<'a, B: Backend> {
    backend: Option<B>,
    error: Option<anyhow::Error>,
    tee: bool,
    what: &'a str,
}

impl<B: Backend> Guard<'_, B> {
    /// Runs `f` on the backend while it is still logging; an error ends the command at once
    /// (the run aborted) without --tee, and stops logging with it.
    fn call(&mut self, f: impl FnOnce(&mut B) -> anyhow::Result<()>) -> anyhow::Result<()> {
        if self.error.is_some() {
            return Ok(());
        }
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        match f(b) {
            Ok(()) => Ok(()),
            Err(e) => {
                if !self.tee {
                    b.abort();
                    return Err(e);
                }
                crate::cmd::warn(format!(
                    "mnemo: {}: {e:#}; logging stopped, the stream still passes through",
                    self.what
                ));
                self.error = Some(e);
                Ok(())
            }
        }
    }
}

impl Stream<'_> {
    /// Runs the stream: starts the reader, then the backend (`start`; the stream flows
    /// before it is asked anything), gives it every record and ends the run. Returns the
    /// outcome and the backend (None when it could not start, with --tee).
    pub fn run<B: Backend>(
        self,
        start: impl FnOnce() -> anyhow::Result<B>,
    ) -> anyhow::Result<(Outcome, Option<B>)> {
        let (tx, rx) = mpsc::channel();
        let tee = self.tee;
        let input = self.input;
        std::thread::spawn(move || reader(input, tee, tx));
        let mut g = Guard {
            backend: None,
            error: None,
            tee,
            what: self.what,
        };
        match start() {
            Ok(b) => g.backend = Some(b),
            Err(e) if !tee => return Err(e),
            Err(e) => {
                crate::cmd::warn(format!(
                    "mnemo: {}: {e:#}; logging stopped, the stream still passes through",
                    self.what
                ));
                g.error = Some(e);
            }
        }

        let mut line_no: u64 = 0;
        let mut lines: u64 = 0;
        let mut skipped: u64 = 0;
        let mut invalid: Option<anyhow::Error> = None;
        let mut status = RunStatus::Finished;
        loop {
            let due = match (&g.backend, &g.error) {
                (Some(b), None) => b.due(),
                _ => None,
            };
            let msg = match due {
                Some(t) => match rx.recv_timeout(t.saturating_duration_since(Instant::now())) {
                    Ok(m) => m,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        g.call(|b| b.tick())?;
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
                                path: self.name.clone().into(),
                                line: line_no as usize,
                                reason,
                            };
                            if self.skip_invalid {
                                skipped += 1;
                                if skipped == 1 {
                                    self.g.say(format!(
                                        "mnemo: {}: skipping {e} (and counting)",
                                        self.what
                                    ));
                                }
                                continue;
                            }
                            if !tee {
                                g.call(|b| b.tick())?;
                                if let Some(b) = g.backend.as_mut() {
                                    b.abort();
                                }
                                return Err(e.into());
                            }
                            if invalid.is_none() {
                                crate::cmd::warn(format!(
                                    "mnemo: {}: {e}; the run will end {}",
                                    self.what,
                                    RunStatus::Failed.as_str()
                                ));
                                invalid = Some(e.into());
                            }
                            continue;
                        }
                    };
                    lines += 1;
                    g.call(|b| b.record(&rec, line_no, ts))?;
                }
                Msg::End => break,
                Msg::Closed => {
                    status = RunStatus::Killed;
                    break;
                }
                Msg::ReadError(e) => {
                    let e = anyhow::Error::new(e).context(format!("reading {}", self.name));
                    if !tee {
                        g.call(|b| b.tick())?;
                        if let Some(b) = g.backend.as_mut() {
                            b.abort();
                        }
                        return Err(e);
                    }
                    invalid.get_or_insert(e);
                    break;
                }
            }
        }
        if invalid.is_some() {
            status = RunStatus::Failed;
        }
        g.call(|b| b.tick())?;
        g.call(|b| b.finish(status))?;
        if let Some(e) = g.error.take() {
            return Err(e);
        }
        if let Some(e) = invalid {
            return Err(e);
        }
        Ok((
            Outcome {
                lines,
                skipped,
                status,
            },
            g.backend,
        ))
    }
}
