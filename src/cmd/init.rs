//! `mnemo init`: a fresh model with torch's default initialisation.

use super::{Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::checkpoint::write_checkpoint;
use mnemo::model::{ArchSpec, Model, ARCH_KEY};
use mnemo::provenance::Provenance;
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
    ],
    exit_status: EXIT_PLAIN,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Architecture: `mlp:IN-H1-...-OUT`, a zoo name (`resnet18`, `efficientnet_b0`, `vit`,
    /// options after a colon: `resnet18:num_classes=10`), inline JSON, or a JSON file.
    #[arg(long, value_name = "SPEC")]
    pub arch: String,
    /// Seed of the initialisation; the same seed gives the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output checkpoint (`-` for stdout). Written atomically.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let spec = ArchSpec::parse(&args.arch)?;
    // Initial values are drawn on the host from mnemo's RNG; the device does not change them.
    let model = Model::init(&spec, args.seed, &candle_core::Device::Cpu)?;
    let mut prov = Provenance::from_args(&super::argv());
    prov.seed = Some(args.seed);
    let mut meta = prov.metadata();
    meta.insert(ARCH_KEY.into(), spec.to_json());
    let tensors = model.tensors()?;
    let count = tensors.len();
    write_checkpoint(&args.output, tensors, &meta)
        .with_context(|| format!("writing {}", args.output.display()))?;
    if args.output.as_os_str() != "-" {
        JsonLines::stdout().emit(&serde_json::json!({
            "output": args.output.display().to_string(),
            "parameters": model.num_parameters(),
            "tensors": count,
            "seed": args.seed,
        }))?;
    }
    let _ = g;
    Ok(Status::Success)
}
