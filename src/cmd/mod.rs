//! Subcommands, one file each (an `Args` struct and `run`), plus what they
//! share: global flags, the JSON Lines writer, the progress bar and the
//! exit-status convention.

pub mod check;
pub mod completions;
pub mod config;
pub mod convert;
pub mod data;
pub mod data_text;
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
pub mod online;
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
    /// The command line provenance records: the process's own, or the effective one (the
    /// settings of --config, MNEMO_* variables and --set written out as flags) when a layer
    /// contributed. Set by main from `config::parse`.
    #[arg(skip)]
    pub command_line: Vec<String>,
}

impl Global {
    /// Provenance for an output of this run, starting from its command line.
    pub fn provenance(&self) -> mnemo::provenance::Provenance {
        mnemo::provenance::Provenance::from_args(&self.command_line)
    }

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
            warn(msg);
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

/// JSON Lines, one object per line: on stdout (flushed per line, so pipes see records as
/// they come), into a file (through the atomic writer: it appears at `finish`), or nowhere.
///
/// A closed stdout (`| head -1`) ends the lines, not the command: `stdout()` drops the
/// remaining lines and the command goes on to write its files and return its exit status
/// (a training run keeps its result). Filters whose only product is the stream
/// (`drift`) use `stdout_filter()`, which stops at a closed stdout (exit 0, quietly).
pub struct JsonLines {
    out: Out,
    what: String,
    /// A closed stdout stops the writing, not the command.
    tolerate_closed: bool,
    closed: bool,
}

enum Out {
    Stream(Box<dyn Write>),
    File(Option<mnemo::checkpoint::AtomicFile>),
}

impl JsonLines {
    pub fn stdout() -> Self {
        JsonLines {
            out: Out::Stream(Box::new(std::io::BufWriter::new(std::io::stdout()))),
            what: "stdout".into(),
            tolerate_closed: true,
            closed: false,
        }
    }

    /// Stdout for a filter: a closed stdout is an error (a broken pipe, which ends the
    /// command quietly with exit 0).
    pub fn stdout_filter() -> Self {
        JsonLines {
            tolerate_closed: false,
            ..Self::stdout()
        }
    }

    /// A log file, written through the atomic writer: it appears (or replaces the old one)
    /// at `finish`.
    pub fn file(path: &std::path::Path) -> anyhow::Result<Self> {
        let f = mnemo::checkpoint::AtomicFile::create(path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(JsonLines {
            out: Out::File(Some(f)),
            what: path.display().to_string(),
            tolerate_closed: false,
            closed: false,
        })
    }

    /// Discards everything.
    pub fn sink() -> Self {
        JsonLines {
            out: Out::Stream(Box::new(std::io::sink())),
            what: "nothing".into(),
            tolerate_closed: false,
            closed: false,
        }
    }

    pub fn emit(&mut self, value: &serde_json::Value) -> anyhow::Result<()> {
        if self.closed {
            return Ok(());
        }
        let what = &self.what;
        let mut line = serde_json::to_vec(value).with_context(|| format!("writing to {what}"))?;
        line.push(b'\n');
        match &mut self.out {
            Out::Stream(w) => {
                let r = w.write_all(&line).and_then(|_| w.flush());
                match r {
                    Err(e)
                        if self.tolerate_closed && e.kind() == std::io::ErrorKind::BrokenPipe =>
                    {
                        self.closed = true;
                        Ok(())
                    }
                    r => r.with_context(|| format!("writing to {what}")),
                }
            }
            Out::File(f) => match f {
                Some(f) => Ok(f.write_all(&line)?),
                None => Ok(()),
            },
        }
    }

    /// Publishes a log file (see `file`); nothing for stdout and sinks.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        if let Out::File(f) = &mut self.out {
            if let Some(f) = f.take() {
                f.commit()?;
            }
        }
        Ok(())
    }

    /// Flushes and fsyncs a log file without publishing it.
    pub fn sync(&mut self) -> anyhow::Result<()> {
        if let Out::File(Some(f)) = &mut self.out {
            f.sync()?;
        }
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

/// Whether `path` names the stdin stream (`-`) rather than a file. A FIFO stays refused as
/// a dataset file (a batch command never blocks on an input: docs/reliability.md); only
/// `online`, which waits for its producer by design, reads one.
pub fn is_stream(path: &std::path::Path) -> bool {
    path == std::path::Path::new("-")
}

/// A dataset file, or `-`: a stream on stdin (safetensors frames or JSON Lines, as `mnemo
/// online` reads them) read whole.
pub fn open_dataset(path: &std::path::Path) -> anyhow::Result<mnemo::data::Dataset> {
    use mnemo::data::stream::{read_all, StreamOptions, StreamReader};
    if !is_stream(path) {
        return Ok(mnemo::data::Dataset::open(path)?);
    }
    let opts = StreamOptions {
        chunk: 4096,
        ..Default::default()
    };
    let stdin = std::io::BufReader::with_capacity(1 << 16, std::io::stdin().lock());
    Ok(read_all(StreamReader::new(stdin, path, opts), path)?)
}

/// What provenance records of a dataset: its file's hash, or for stdin (which cannot be
/// read twice) the hash of what was read: shapes, inputs and targets.
pub fn dataset_hash(path: &std::path::Path, d: &mnemo::data::Dataset) -> anyhow::Result<String> {
    if !is_stream(path) {
        return Ok(mnemo::checkpoint::file_hash(path)?);
    }
    let mut h = blake3::Hasher::new();
    h.update(format!("{:?}|{:?}|{}", d.example_shape, d.target_kind, d.from_u8).as_bytes());
    for x in &d.inputs {
        h.update(&x.to_le_bytes());
    }
    for t in &d.targets {
        h.update(&t.to_le_bytes());
    }
    Ok(format!("blake3-stream:{}", h.finalize().to_hex()))
}

/// An error that names none of `files` (a shape mismatch deep in a forward pass: "layer 0
/// (linear): input shape [64, 21] ...") gets them as context, so the message says which
/// model and which data did not fit.
pub fn name_files<P: AsRef<std::path::Path>>(e: anyhow::Error, files: &[P]) -> anyhow::Error {
    // Only errors of the computation itself: every other error names its own file.
    let computing = e.chain().any(|c| {
        c.downcast_ref::<candle_core::Error>().is_some()
            || matches!(
                c.downcast_ref::<mnemo::MnemoError>(),
                Some(mnemo::MnemoError::Compute { .. })
            )
    });
    if !computing {
        return e;
    }
    let text = format!("{e:#}");
    let names: Vec<String> = files
        .iter()
        .map(|f| f.as_ref().display().to_string())
        .collect();
    if names.iter().any(|n| text.contains(n.as_str())) {
        return e;
    }
    e.context(names.join(" with "))
}

/// A line on stderr that cannot panic: a full or closed stderr (`2>/dev/full`) loses the
/// message, nothing else.
pub fn warn(msg: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// Text on stderr as it is (no newline added), losing it rather than panicking.
pub fn warn_raw(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
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
            s.push_str(&format!(
                "  # {what}\n{}\n\n",
                wrap_command(cmd, EXAMPLE_WIDTH)
            ));
        }
        s.push_str("Exit status:\n");
        for (code, what) in self.exit_status {
            s.push_str(&format!("  {code}  {what}\n"));
        }
        s
    }
}

/// The widest line of an example (help is wrapped at 100 columns: an example longer than
/// that would be broken mid-word by clap and no longer paste).
pub const EXAMPLE_WIDTH: usize = 96;

/// A shell command indented by two spaces and broken at spaces outside quotes with ` \`
/// continuations (indented four), so no line is wider than `width` and a pasted example
/// still runs. A word longer than the width stays whole.
pub fn wrap_command(cmd: &str, width: usize) -> String {
    // Words: split at spaces outside single or double quotes.
    let mut words: Vec<String> = Vec::new();
    let (mut cur, mut quote) = (String::new(), None::<char>);
    for c in cmd.chars() {
        match (c, quote) {
            (' ', None) => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            ('\'' | '"', None) => {
                quote = Some(c);
                cur.push(c);
            }
            (c, Some(q)) if c == q => {
                quote = None;
                cur.push(c);
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut lines: Vec<String> = vec![String::from("  ")];
    for w in words {
        let line = lines.last_mut().expect("a line");
        let fresh = line.trim().is_empty();
        // Room for " " + word + " \\".
        if !fresh && line.len() + 1 + w.len() + 2 > width {
            line.push_str(" \\");
            lines.push(format!("    {w}"));
        } else {
            if !fresh {
                line.push(' ');
            }
            line.push_str(&w);
        }
    }
    lines.join("\n")
}

/// Each subcommand's examples and exit codes, shared by `--help` and the man pages.
pub const HELP_EXTRAS: &[(&str, &HelpExtra)] = &[
    ("init", &init::HELP),
    ("inspect", &inspect::HELP),
    ("convert", &convert::HELP),
    ("diff", &diff::HELP),
    ("eval", &eval::HELP),
    ("fisher", &fisher::HELP),
    ("train-ewc", &train_ewc::HELP),
    ("replay-train", &replay_train::HELP),
    ("online", &online::HELP),
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
