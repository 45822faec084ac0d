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
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        g.say(format!("wrote {}", path.display()));
    }
    Ok(Status::Success)
}
