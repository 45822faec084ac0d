//! The `mnemo` binary: argv → clap → `cmd::<name>::run` → exit status.
//! Exit 0 success, 1 a negative decision, 2 any error; a closed stdout pipe ends quietly.

mod cmd;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use cmd::{Global, Status};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Continual learning without forgetting: Fisher, EWC, replay, merging and drift
/// detection as Unix-style subcommands over safetensors checkpoints and JSON Lines.
#[derive(Parser, Debug)]
#[command(
    name = "mnemo",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a freshly initialised model (torch's default initialisation).
    Init(cmd::init::Args),
    /// Show a checkpoint's tensors and metadata (header only; --stats reads values).
    Inspect(cmd::inspect::Args),
    /// Convert a PyTorch torch.save file (.pth/.pt/.bin, zip or legacy) to safetensors, names
    /// and dtypes unchanged; its pickle is read without running code.
    Convert(cmd::convert::Args),
    /// Compare two checkpoints tensor by tensor; exit 1 when they differ beyond --tol.
    Diff(cmd::diff::Args),
    /// Evaluate a model as JSON: loss, accuracy and top-5 for class ids; IoU/mIoU for masks; AP/mAP
    /// for multi-hot rows.
    Eval(cmd::eval::Args),
    /// Diagonal Fisher information of a model on a dataset (empirical, true, predicted or batch).
    Fisher(cmd::fisher::Args),
    /// Train on new data with EWC penalties holding earlier tasks' weights in place.
    TrainEwc(Box<cmd::train_ewc::Args>),
    /// Train on new data while replaying examples from an on-disk reservoir buffer
    /// (experience replay, optional logit distillation); the buffer is updated.
    ReplayTrain(Box<cmd::replay_train::Args>),
    /// Learn from a live stream of examples (stdin or a FIFO), predict-then-train, keeping an
    /// EMA of the weights; checkpoints every N examples or seconds and on SIGTERM/SIGINT.
    Online(Box<cmd::online::Args>),
    /// Train a LoRA adapter and keep it only when validation does not regress (PEFT's
    /// format); exit 1 when rejected, with nothing written.
    LoraGate(Box<cmd::lora_gate::Args>),
    /// LoRA adapter tools: fold an adapter (ours or PEFT's) into a checkpoint.
    Lora(cmd::lora::Args),
    /// Figures (PNG/SVG) and Markdown tables: loss curves per stage, accuracy matrices with
    /// average accuracy, backward/forward transfer and forgetting.
    Report(cmd::report::Args),
    /// The forgetting criterion: every task's final metric within --max-drop points of its
    /// baseline; exit 1 when not.
    Check(cmd::check::Args),
    /// Streaming drift detection over JSON Lines (river's detectors, index for index);
    /// exit 0 when drift is found (as grep finds a match), 1 when not.
    Drift(cmd::drift::Args),
    /// Merge checkpoints: linear, EMA, Fisher-weighted, task arithmetic, TIES, DARE, SLERP,
    /// breadcrumbs, model stock, sum; streaming in bounded memory; or mergekit's YAML
    /// (--config merge.yml, all 20 methods of mergekit 0.1.5) into a model folder.
    #[command(long_about = cmd::merge::long_about())]
    Merge(cmd::merge::Args),
    /// Dataset tools: import (IDX, NumPy, image folders, VOC, COCO, text through a tokenizer.json),
    /// split, rotate, pad, permute, shuffle, take, concat, stats, shapes.
    Data(cmd::data::Args),
    /// Forward a JSON Lines metric stream to a tracking server (MLflow), optionally passing
    /// it through.
    Log(cmd::log::Args),
    /// Configuration files and MNEMO_* variables: show a subcommand's effective settings
    /// and where each came from.
    ///
    /// Every subcommand reads its settings from `--config FILE.toml` (a table per subcommand
    /// named as typed, nested ones joined by dashes: [train-ewc], [data-split], [log-mlflow];
    /// [global] for --device and --quiet), from environment variables
    /// MNEMO_<SUBCOMMAND>_<FLAG> (MNEMO_TRAIN_EWC_LAMBDA, MNEMO_GLOBAL_DEVICE) and from `--set
    /// FLAG=VALUE`. Precedence, lowest first: default, file, environment, command line, --set.
    /// Keys are flag names without dashes (positional arguments by their name: model, inputs,
    /// files); several values are a TOML array or comma-separated; flags without a value take
    /// true/false (also 1/0 in the environment and --set). Relative paths are relative to the
    /// working folder. Every table and key of the file and every MNEMO_* variable is checked:
    /// an unknown one is an error naming it (exit 2). When a layer contributed a setting, the
    /// command runs as its effective command line (recorded as the provenance's
    /// mnemo.command).
    Config(cmd::config::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(cmd::completions::Args),
    /// Write the man pages (used to keep man/ current).
    #[command(hide = true)]
    Man(cmd::man::Args),
}

/// The clap command with each subcommand's examples and exit codes attached.
pub fn command() -> clap::Command {
    let mut c = Cli::command().after_help(
        "Run 'mnemo <COMMAND> --help' for a command's examples and exit codes.\n\
         Exit status: 0 success, 1 a negative decision (per command), 2 error.",
    );
    for (name, extra) in cmd::HELP_EXTRAS {
        c = c.mut_subcommand(name, |s| s.after_help(extra.render()));
    }
    c
}

fn run(cli: Cli) -> anyhow::Result<Status> {
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => cmd::init::run(a, g),
        Command::Inspect(a) => cmd::inspect::run(a, g),
        Command::Convert(a) => cmd::convert::run(a, g),
        Command::Diff(a) => cmd::diff::run(a, g),
        Command::Eval(a) => cmd::eval::run(a, g),
        Command::Fisher(a) => cmd::fisher::run(a, g),
        Command::TrainEwc(a) => cmd::train_ewc::run(*a, g),
        Command::ReplayTrain(a) => cmd::replay_train::run(*a, g),
        Command::Online(a) => cmd::online::run(*a, g),
        Command::LoraGate(a) => cmd::lora_gate::run(*a, g),
        Command::Lora(a) => cmd::lora::run(a, g),
        Command::Report(a) => cmd::report::run(a, g),
        Command::Check(a) => cmd::check::run(a, g),
        Command::Drift(a) => cmd::drift::run(a, g),
        Command::Merge(a) => cmd::merge::run(a, g),
        Command::Data(a) => cmd::data::run(a, g),
        Command::Log(a) => cmd::log::run(a, g),
        Command::Config(a) => cmd::config::run(a, g),
        Command::Completions(a) => cmd::completions::run(a, g),
        Command::Man(a) => cmd::man::run(a, g),
    }
}

/// The error and its causes, joined by ": " as anyhow's `{:#}` does, without a cause whose
/// text is already there (an I/O error's message repeats its source's: "f: No such file
/// or directory (os error 2): No such file or directory (os error 2)").
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

/// The flag that fixes a library error, which the library does not name (it knows no CLI).
fn flag_hint(e: &anyhow::Error) -> &'static str {
    let has = |f: fn(&mnemo::MnemoError) -> bool| {
        e.chain()
            .any(|c| c.downcast_ref::<mnemo::MnemoError>().is_some_and(f))
    };
    if has(|m| matches!(m, mnemo::MnemoError::NoArch { .. })) {
        return "; pass --arch SPEC (e.g. --arch mlp:784-400-10)";
    }
    let setting = e
        .chain()
        .find_map(|c| match c.downcast_ref::<mnemo::MnemoError>() {
            Some(mnemo::MnemoError::Unfit { setting, .. }) => Some(*setting),
            _ => None,
        });
    match setting {
        Some(mnemo::Setting::Loss) => "; --loss sets the loss",
        Some(mnemo::Setting::FisherMode) => "; --mode sets the Fisher's mode",
        Some(mnemo::Setting::ImageSize) => "; --size H,W resizes every image to one size",
        Some(mnemo::Setting::ImageShape) => "; --shape H,W gives each example's image shape",
        Some(mnemo::Setting::ArrayNames) => "; --x NAME --y NAME pick the arrays",
        None => "",
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<mnemo::MnemoError>().is_some_and(|m| {
                matches!(m, mnemo::MnemoError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
            })
    })
}

/// mimalloc returns freed memory to the OS after 10 ms by default; gemm and candle free
/// and re-allocate the same large buffers every step, so each step paid for fresh
/// zeroed pages (9% of an MLP training step in the kernel's clear_page). A 1 s delay
/// keeps them mapped while a loop runs and still returns them when it stops.
#[cfg(feature = "mimalloc")]
fn tune_allocator() {
    // The option's number in mimalloc.h (the same in v2 and v3).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // The user's MIMALLOC_PURGE_DELAY, read by mimalloc itself, wins.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets a plain integer option; mimalloc reads options atomically.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
}

/// Thread pools, fixed before any starts. candle 0.11 asks for its thread count on every
/// matmul, parsing /proc/cpuinfo each time unless RAYON_NUM_THREADS is set; and its
/// spinning barrier pool for elementwise ops competes with rayon's workers for the same
/// cores (on 2 cores it made a small CNN's training step 2x slower). So: rayon gets one
/// thread per available CPU, candle's barrier pool none (CANDLE_NUM_THREADS=1), unless the
/// user set either variable.
fn configure_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// An ordinary error prints its message, nothing more: candle (and anyhow) capture a
/// backtrace into their errors when RUST_BACKTRACE is set, and candle's message then
/// carries it (24 frames for a shape mismatch). RUST_LIB_BACKTRACE, which those captures
/// read first, is set to 0 unless the user set it; panics still honour RUST_BACKTRACE.
fn quiet_error_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

fn main() {
    quiet_error_backtraces();
    configure_threads();
    #[cfg(feature = "mimalloc")]
    tune_allocator();
    // clap, with the --config file, MNEMO_* variables and --set layered in (cmd/config.rs).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (matches, command_line) = match cmd::config::parse(&argv) {
        Ok(m) => m,
        Err(code) => std::process::exit(code),
    };
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            std::process::exit(2);
        }
    };
    cli.global.command_line = command_line
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let code = match run(cli) {
        Ok(Status::Success) => 0,
        Ok(Status::Negative) => 1,
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            cmd::warn(format!("mnemo: error: {}{}", message(&e), flag_hint(&e)));
            2
        }
    };
    std::process::exit(code);
}
