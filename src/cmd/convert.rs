//! `mnemo convert`: a PyTorch `torch.save` file (`.pth`, `.pt`, `pytorch_model.bin`; zip or
//! legacy format) to safetensors, names and dtypes unchanged, without running its pickle.

use super::{Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::checkpoint::pth::PthFile;
use mnemo::checkpoint::{file_hash, write_checkpoint};
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        (
            "ImageNet EfficientNet-Lite0 weights (a legacy-format .pth) as safetensors",
            "mnemo convert efficientnet-lite0-57934424.pth -o lite0.safetensors",
        ),
        (
            "the model weights of a training checkpoint {'state_dict': ..., 'optimizer': ...}, without DataParallel's prefix",
            "mnemo convert ckpt.pt --key state_dict --strip-prefix module. -o model.safetensors",
        ),
    ],
    exit_status: EXIT_PLAIN,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A file written by `torch.save`. Only tensors, numbers, strings and plain containers
    /// are read: any other pickled global (code, a whole nn.Module) is refused by name.
    #[arg(value_name = "PTH")]
    pub input: PathBuf,
    /// Convert only the tensors under this key path of the pickled dicts (`state_dict`,
    /// `model.ema`), named relative to it. Without it every tensor is converted, nested
    /// dict keys joined with '.'.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Remove this prefix from tensor names that have it (`module.`, from DataParallel).
    #[arg(long, value_name = "PREFIX")]
    pub strip_prefix: Option<String>,
    /// Output safetensors file (`-` for stdout). Written atomically.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let mut d = mnemo::fsutil::Destinations::new();
    d.input("PTH", &args.input);
    d.stdout_free().output("-o", &args.output).check()?;
    let pth = PthFile::open(&args.input)?;
    let key = args
        .key
        .as_deref()
        .map(|k| format!("{}.", k.trim_end_matches('.')));
    let keep = |name: &str| -> Option<String> {
        let name = match &key {
            Some(k) => name.strip_prefix(k.as_str())?,
            None => name,
        };
        let name = match &args.strip_prefix {
            Some(p) => name.strip_prefix(p.as_str()).unwrap_or(name),
            None => name,
        };
        Some(name.to_string())
    };
    let tensors = pth.tensors(keep)?;
    if tensors.is_empty() {
        let mut tops: Vec<&str> = pth
            .names()
            .map(|n| n.split('.').next().unwrap_or(n))
            .collect();
        tops.dedup();
        tops.truncate(20);
        anyhow::bail!(
            "{}: no tensor under --key {}; its top-level keys: {}",
            args.input.display(),
            args.key.as_deref().unwrap_or(""),
            tops.join(", ")
        );
    }
    let mut prov = g.provenance();
    prov.input(args.input.display().to_string(), file_hash(&args.input)?);
    let mut meta = prov.metadata();
    meta.insert("mnemo.source_format".into(), pth.format.as_str().into());
    let (count, values): (usize, usize) = (
        tensors.len(),
        tensors
            .iter()
            .map(|t| t.shape.iter().product::<usize>())
            .sum(),
    );
    write_checkpoint(&args.output, tensors, &meta)
        .with_context(|| format!("writing {}", args.output.display()))?;
    if args.output.as_os_str() != "-" {
        JsonLines::stdout().emit(&serde_json::json!({
            "output": args.output.display().to_string(),
            "format": pth.format.as_str(),
            "tensors": count,
            "values": values,
        }))?;
    }
    let _ = g;
    Ok(Status::Success)
}
