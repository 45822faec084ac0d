//! `mnemo man` (hidden): writes man/mnemo.1 and man/mnemo-<command>.1 from the
//! clap definitions plus each command's examples and exit codes. A test
//! regenerates them and fails when the committed pages are stale.

use super::{Global, HelpExtra, Status};
use anyhow::Context;
use roff::{bold, roman, Roff};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Folder to write the pages into.
    #[arg(long, default_value = "man")]
    pub out: PathBuf,
}

/// The root page's guide to the methods, by update frequency, data volume and forgetting risk.
pub const CHOOSING: &[(&str, &str)] = &[
    ("When to update: drift", "Decide when to update before deciding how: mnemo drift watches a metric stream (eval --stream) and exits 0 when it has changed. Updating on a schedule without a change spends compute and risks forgetting for nothing."),
    ("Clear task boundaries, old data gone: EWC (fisher, train-ewc)", "Tasks arrive as batches and earlier data cannot be kept (privacy, storage). One Fisher file per task (or one accumulated file, online EWC) holds the weights that mattered. Cheap: one extra pass per task and an O(parameters) penalty. Works when tasks share an output space (domain-incremental); it does not stop a shared head from forgetting earlier classes (class-incremental Split-MNIST: EWC stays near fine-tuning)."),
    ("Streams, blurred boundaries, new classes: replay (replay-train)", "When you may keep a small sample of past data, replay is the strongest guard against forgetting, and the only one of these that handles new classes (class-incremental). The buffer lives on disk and grows with nothing but its capacity; class-balanced keeps skewed streams fair; --distill adds the old model's outputs for labels that change meaning. Cost: about twice the compute per update."),
    ("Real time, one example at a time: online learning with an EMA (online)", "Examples arrive one by one and the stream shifts: mnemo online learns from stdin or a FIFO per example or micro-batch, scoring each before learning from it (prequential records that drift can watch in the same pipe), and keeps an exponential moving average of the weights, the copy to deploy: 0.999 for slow drift, 0.99 for rapid shifts. It checkpoints every N examples or seconds and on SIGTERM; --state resumes exactly. The risk of forgetting is severe: pair it with drift and a replay update."),
    ("Large base model, frequent small updates: LoRA gating (lora-gate)", "Train a small adapter per update and deploy it only when validation holds; a rejected update writes nothing, so automation is safe, and removing an adapter undoes it. The gate detects regressions on what the validation set covers; it does not prevent forgetting of what it does not cover. Use --significance with small validation sets."),
    ("Several models trained apart: merging (merge)", "Sites or tasks fine-tuned separately from one initialisation combine without data or training: Fisher-weighted averaging when Fisher files exist, TIES, DARE or task arithmetic otherwise. Quality falls when the models drifted far apart or did not share an initialisation."),
    ("Forgetting risk", "Check what you keep: eval every task's test set after every stage (eval --stage), and let mnemo check fail the pipeline when a task falls more than --max-drop points below where it was."),
];

fn page(cmd: clap::Command, extra: Option<&HelpExtra>) -> std::io::Result<Vec<u8>> {
    // The examples and exit codes get their own sections below, not clap's EXTRA.
    let cmd = cmd.after_help("").after_long_help("");
    let man = clap_mangen::Man::new(cmd.clone());
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut buf)?;
    }
    let mut r = Roff::default();
    match extra {
        Some(extra) => {
            r.control("SH", ["EXAMPLES"]);
            for (what, line) in extra.examples {
                r.control("TP", [])
                    .text([roman(*what)])
                    .control("EX", [])
                    .text([bold(*line)])
                    .control("EE", []);
            }
            r.control("SH", ["EXIT STATUS"]);
            for (code, what) in extra.exit_status {
                r.control("TP", [])
                    .text([bold(code.to_string())])
                    .text([roman(*what)]);
            }
        }
        None => {
            r.control("SH", ["EXIT STATUS"]);
            r.text([roman(
                "0 success; 1 a negative decision, documented per command (differences found, drift absent, update rejected); 2 an error, whose message names the file, tensor or line.",
            )]);
            r.control("SH", ["CHOOSING AN APPROACH"]);
            for (what, text) in CHOOSING {
                r.control("TP", []).text([bold(*what)]).text([roman(*text)]);
            }
            r.control("SH", ["SEE ALSO"]);
            let names: Vec<String> = cmd
                .get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .map(|s| format!("mnemo-{}(1)", s.get_name()))
                .collect();
            r.text([roman(names.join(", "))]);
        }
    }
    r.to_writer(&mut buf)?;
    man.render_version_section(&mut buf)?;
    Ok(buf)
}

/// Every page as (file name, roff bytes).
pub fn pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut root = crate::command();
    // Building propagates the global flags (--device, -q) into each subcommand's page.
    root.build();
    let mut out = vec![("mnemo.1".to_string(), page(root.clone(), None)?)];
    for sub in root
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = sub.get_name().to_string();
        let extra = super::HELP_EXTRAS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| *e);
        let cmd = sub
            .clone()
            .display_name(format!("mnemo-{name}"))
            .bin_name(format!("mnemo {name}"))
            .version(env!("CARGO_PKG_VERSION"));
        out.push((format!("mnemo-{name}.1"), page(cmd, extra)?));
    }
    Ok(out)
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (name, bytes) in pages()? {
        let path: PathBuf = Path::new(&args.out).join(&name);
        let mut f = mnemo::checkpoint::AtomicFile::create(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(&bytes)?;
        f.commit()?;
        g.say(format!("wrote {}", path.display()));
    }
    Ok(Status::Success)
}
