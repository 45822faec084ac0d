//! Subcommands, one file each (an `Args` struct and `run`), plus what they
//! share: global flags, the JSON Lines writer, the progress bar and the
//! exit-status convention.

pub mod check;
pub mod completions;
pub mod config;
pub mod data;
pub mod diff;
pub mod drift;
pub mod engine;
pub mod eval;
pub mod fisher;
pub mod init;
pub mod inspect;
pub mod layers;
pub mod log;
pub mod lora;
pub mod lora_gate;
pub mod man;
pub mod merge;
pub mod replay_train;
pub mod report;
pub mod train_ewc;

use anyhow::Context;
use std::io::{IsTerminal, Write};

/// Flags every subcommand accepts.
#[derive(clap::Args, Clone, Debug)]
pub struct Global {
    /// Compute device: cpu, cuda or cuda:N (cuda needs a build with --features cuda).
    #[arg(long, global = true, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
    /// No progress bars or human messages on stderr (errors are still printed).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Settings from a TOML file: a table per subcommand ([train-ewc], [data-split]) and
    /// [global]; below MNEMO_<SUBCOMMAND>_<FLAG> variables and the command line (see `mnemo
    /// config --help`).
    #[arg(long, global = true, value_name = "FILE.toml")]
    pub config: Option<std::path::PathBuf>,
    /// Override a setting of this subcommand, above everything else (repeatable; lists
    /// comma-separated, switches true/false), e.g. --set lambda=100.
    #[arg(long, global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

static ARGV: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Records the effective command line (with the settings of --config, MNEMO_* variables and
/// --set written out as flags), for `argv()`.
pub fn set_argv(argv: &[std::ffi::OsString]) {
    let _ = ARGV.set(
        argv.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
    );
}

/// The command line to record in provenance: the effective one when configuration layers
/// contributed settings, else the process's own.
pub fn argv() -> Vec<String> {
    match ARGV.get() {
        Some(a) => a.clone(),
        None => std::env::args().collect(),
    }
}

impl Global {
    pub fn device(&self) -> anyhow::Result<candle_core::Device> {
        Ok(parse_device(&self.device)?)
    }

    /// A progress bar on stderr, hidden when stderr is not a terminal or with -q.
    pub fn progress(&self, len: u64, what: &str) -> indicatif::ProgressBar {
        if self.quiet || !std::io::stderr().is_terminal() {
            return indicatif::ProgressBar::hidden();
        }
        let pb = indicatif::ProgressBar::new(len);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        pb
    }

    /// A human message on stderr unless -q.
    pub fn say(&self, msg: impl std::fmt::Display) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }
}

/// How a subcommand ended, when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Exit 0.
    Success,
    /// Exit 1: a documented negative decision (differences found, update rejected, ...).
    Negative,
}

/// JSON Lines, one object per line, flushed per line so pipes see records as they come:
/// on stdout, into a file, or nowhere.
pub struct JsonLines {
    out: Box<dyn Write>,
    what: String,
}

impl JsonLines {
    pub fn stdout() -> Self {
        JsonLines {
            out: Box::new(std::io::BufWriter::new(std::io::stdout())),
            what: "stdout".into(),
        }
    }

    /// A log file, created (or truncated) now.
    pub fn file(path: &std::path::Path) -> anyhow::Result<Self> {
        let f =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(JsonLines {
            out: Box::new(std::io::BufWriter::new(f)),
            what: path.display().to_string(),
        })
    }

    /// Discards everything.
    pub fn sink() -> Self {
        JsonLines {
            out: Box::new(std::io::sink()),
            what: "nothing".into(),
        }
    }

    pub fn emit(&mut self, value: &serde_json::Value) -> anyhow::Result<()> {
        let what = &self.what;
        serde_json::to_writer(&mut self.out, value)
            .with_context(|| format!("writing to {what}"))?;
        self.out
            .write_all(b"\n")
            .with_context(|| format!("writing to {what}"))?;
        self.out
            .flush()
            .with_context(|| format!("writing to {what}"))?;
        Ok(())
    }

    /// `emit` inside a callback of the library's loops: the error becomes a
    /// `MnemoError::Io` that keeps the write's own kind, so a closed pipe stays a closed
    /// pipe (which ends the command quietly).
    pub fn emit_io(&mut self, value: &serde_json::Value) -> mnemo::Result<()> {
        self.emit(value).map_err(|e| {
            let kind = e
                .chain()
                .find_map(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .map(|io| io.kind())
                        .or_else(|| {
                            c.downcast_ref::<serde_json::Error>()
                                .and_then(|j| j.io_error_kind())
                        })
                })
                .unwrap_or(std::io::ErrorKind::Other);
            mnemo::MnemoError::io(
                format!("<{}>", self.what),
                std::io::Error::new(kind, format!("{e:#}")),
            )
        })
    }
}

/// Plain text on stdout (tables), with write errors (a closed pipe) reported, not panicking.
pub fn print_text(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .context("writing to stdout")?;
    out.flush().context("writing to stdout")
}

/// A float for JSON: non-finite values become null rather than invalid JSON.
pub fn num(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x)
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}

/// Help text shared by `--help` and the man pages: examples and exit codes.
pub struct HelpExtra {
    pub examples: &'static [(&'static str, &'static str)],
    pub exit_status: &'static [(u8, &'static str)],
}

impl HelpExtra {
    pub fn render(&self) -> String {
        let mut s = String::from("Examples:\n");
        for (what, cmd) in self.examples {
            s.push_str(&format!("  # {what}\n  {cmd}\n\n"));
        }
        s.push_str("Exit status:\n");
        for (code, what) in self.exit_status {
            s.push_str(&format!("  {code}  {what}\n"));
        }
        s
    }
}

/// Each subcommand's examples and exit codes, shared by `--help` and the man pages.
pub const HELP_EXTRAS: &[(&str, &HelpExtra)] = &[
    ("init", &init::HELP),
    ("inspect", &inspect::HELP),
    ("diff", &diff::HELP),
    ("eval", &eval::HELP),
    ("fisher", &fisher::HELP),
    ("train-ewc", &train_ewc::HELP),
    ("replay-train", &replay_train::HELP),
    ("lora-gate", &lora_gate::HELP),
    ("lora", &lora::HELP),
    ("drift", &drift::HELP),
    ("merge", &merge::HELP),
    ("data", &data::HELP),
    ("report", &report::HELP),
    ("check", &check::HELP),
    ("log", &log::HELP),
    ("config", &config::HELP),
    ("completions", &completions::HELP),
];

/// The standard exit codes: commands with a negative decision document their own 1.
pub const EXIT_PLAIN: &[(u8, &str)] = &[
    (0, "success"),
    (
        2,
        "error: bad arguments or input (the message names the file, tensor or line)",
    ),
];

/// Parses `--device cpu|cuda[:N]`.
pub fn parse_device(s: &str) -> mnemo::Result<candle_core::Device> {
    let err = |reason: String| mnemo::MnemoError::Device {
        device: s.to_string(),
        reason,
    };
    match s {
        "cpu" => Ok(candle_core::Device::Cpu),
        _ if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .map_err(|_| err(format!("'{n}' is not a GPU index")))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                return Err(err("this mnemo was built without the 'cuda' feature (cargo build --release --features cuda)".into()));
            }
            candle_core::Device::new_cuda(ordinal).map_err(|e| err(e.to_string()))
        }
        _ => Err(err("expected cpu, cuda or cuda:N".into())),
    }
}
