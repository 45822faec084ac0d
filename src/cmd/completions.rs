//! `mnemo completions SHELL`: a completion script for bash, zsh, fish, elvish or PowerShell
//! on stdout, generated from the same clap tree as `--help` and the man pages.

use super::{Global, HelpExtra, Status, EXIT_PLAIN};
use anyhow::Context;
use std::io::Write;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("bash, for this session", "source <(mnemo completions bash)"),
        (
            "zsh, installed",
            "mnemo completions zsh > \"${fpath[1]}/_mnemo\"",
        ),
        (
            "fish, installed",
            "mnemo completions fish > ~/.config/fish/completions/mnemo.fish",
        ),
    ],
    exit_status: EXIT_PLAIN,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn run(args: Args, _g: &Global) -> anyhow::Result<Status> {
    let mut cmd = crate::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "mnemo", &mut buf);
    let mut out = std::io::stdout().lock();
    out.write_all(&buf).context("writing to stdout")?;
    out.flush().context("writing to stdout")?;
    Ok(Status::Success)
}
