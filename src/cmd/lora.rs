//! `mnemo lora`: adapter tools. `lora merge BASE ADAPTER_DIR -o OUT` folds an adapter
//! (written by lora-gate or by PEFT's save_pretrained) into a checkpoint.

use super::{Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::checkpoint::{encode_checked, prepare_model_output, Checkpoint, OwnedTensor};
use mnemo::lora::peft_check;
use mnemo::lora::{fold, Adapter};
use serde_json::json;
use std::borrow::Cow;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        (
            "fold an accepted adapter into the base model",
            "mnemo lora merge model.safetensors adapter/ -o model2.safetensors",
        ),
        (
            "a PEFT adapter (save_pretrained) into a torch checkpoint",
            "mnemo lora merge torch_model.safetensors peft_adapter/ -o merged.safetensors",
        ),
    ],
    exit_status: EXIT_PLAIN,
};

/// LoRA adapter tools.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: LoraCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum LoraCommand {
    /// Fold an adapter into a checkpoint: W += scale·B·A for every adapted module (computed
    /// in f32 from the stored dtype, written back in it); every other tensor is copied.
    Merge {
        /// The base checkpoint (any safetensors; no arch needed).
        base: PathBuf,
        /// The adapter folder: adapter_config.json + adapter_model.safetensors.
        adapter: PathBuf,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
        /// Write folded weights that are NaN or ±inf (a NaN in the base, or a value beyond
        /// the dtype's range) instead of refusing them, as `merge --allow-nonfinite` does.
        #[arg(long)]
        allow_nonfinite: bool,
    },
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    match args.command {
        LoraCommand::Merge {
            base,
            adapter,
            output,
            allow_nonfinite,
        } => {
            let ckpt = Checkpoint::open(&base)?;
            let mut d = mnemo::fsutil::Destinations::new();
            d.input("the base", &base)
                .input("the adapter", adapter.join(mnemo::lora::WEIGHTS_FILE))
                .input("the adapter", adapter.join(mnemo::lora::CONFIG_FILE));
            for f in &ckpt.files {
                d.input("the base", &f.path);
            }
            super::engine::model_output(&mut d, "-o", &output);
            d.check()?;
            let ad = Adapter::read_dir(&adapter)?;
            // PEFT's selection: target_modules must select a module of the base (PEFT
            // raises "Target modules ... not found in the base model"), and every module
            // the weights adapt must be one it selects.
            let cfg_path = adapter.join(mnemo::lora::CONFIG_FILE);
            let raw: serde_json::Value =
                serde_json::from_str(&mnemo::fsutil::read_to_string(&cfg_path)?)
                    .with_context(|| format!("{}: not JSON", cfg_path.display()))?;
            let targets = peft_check::targets(&cfg_path, &raw)?;
            let selected = ckpt
                .names()
                .filter_map(|n| n.strip_suffix(".weight"))
                .filter(|m| peft_check::selects(&targets, m))
                .count();
            if selected == 0 {
                anyhow::bail!(
                    "{}: target_modules {} select no module of {} (PEFT refuses such an adapter: target modules not found in the base model)",
                    cfg_path.display(),
                    raw["target_modules"],
                    base.display()
                );
            }
            if let Some(m) = ad
                .modules
                .keys()
                .find(|m| !peft_check::selects(&targets, m))
            {
                anyhow::bail!(
                    "{}: holds weights for module '{m}', which target_modules {} does not select",
                    adapter.join(mnemo::lora::WEIGHTS_FILE).display(),
                    raw["target_modules"]
                );
            }
            let mut folded = std::collections::BTreeMap::new();
            for (m, w) in &ad.modules {
                let name = format!("{m}.weight");
                if !ckpt.contains(&name) {
                    anyhow::bail!(
                        "{}: the adapter adapts module '{m}', but {} has no tensor '{name}'",
                        adapter.display(),
                        base.display()
                    );
                }
                let e = ckpt.entry(&name)?;
                if !e.dtype.is_float() {
                    anyhow::bail!(
                        "{}: '{name}' is {}, not a float tensor",
                        base.display(),
                        e.dtype
                    );
                }
                let mut v = ckpt.to_f32(&name)?;
                fold(&mut v, &e.shape, w, ad.config.scale_of(m), &base, &name).with_context(
                    || format!("folding {} into {}", adapter.display(), base.display()),
                )?;
                if let Some(mag) = ad.magnitudes.get(m) {
                    mnemo::lora::dora_rescale(&mut v, e.shape[0], mag);
                }
                let (data, bad) = encode_checked(e.dtype, &v)
                    .with_context(|| format!("'{name}': cannot write {} values", e.dtype))?;
                // Checked as written: a finite f32 sum can still overflow f16's ±65504.
                if !allow_nonfinite {
                    if let Some(i) = bad {
                        return Err(mnemo::MnemoError::NonFinite {
                            path: base.clone(),
                            tensor: name,
                            index: i,
                            value: mnemo::checkpoint::decode(e.dtype, &data)[i],
                            reason: format!(
                                "the folded weight is not finite ({} the base); \
                                 --allow-nonfinite writes it anyway",
                                if ckpt.to_f32(&format!("{m}.weight"))?[i].is_finite() {
                                    "an overflow of"
                                } else {
                                    "as in"
                                }
                            ),
                        }
                        .into());
                    }
                }
                folded.insert(name, (e.dtype, e.shape.clone(), data));
            }
            // Saved modules (modules_to_save): their trained copies replace the base's
            // tensors, in the base's dtype, as merge_and_unload puts them in place.
            let shape_of = |n: &str| ckpt.entry(n).ok().map(|e| e.shape.clone());
            ad.check_saved(shape_of, ckpt.names())
                .map_err(|e| anyhow::anyhow!("{}: {e}", adapter.display()))?;
            for (name, (shape, v)) in &ad.saved {
                let e = ckpt.entry(name)?;
                if folded.contains_key(name) || !e.dtype.is_float() {
                    anyhow::bail!(
                        "{}: '{name}' is both adapted and saved, or not a float tensor in {}",
                        adapter.display(),
                        base.display()
                    );
                }
                let (data, bad) = encode_checked(e.dtype, v)
                    .with_context(|| format!("'{name}': cannot write {} values", e.dtype))?;
                if let Some(i) = bad {
                    anyhow::bail!(
                        "{}: saved tensor '{name}' element {i} ({}) does not fit in {}",
                        adapter.display(),
                        v[i],
                        e.dtype
                    );
                }
                folded.insert(name.clone(), (e.dtype, shape.clone(), data));
            }
            let mut tensors = Vec::new();
            for name in ckpt.names() {
                let e = ckpt.entry(name)?;
                let data = match folded.remove(name) {
                    Some((_, _, bytes)) => Cow::Owned(bytes),
                    None => Cow::Borrowed(ckpt.bytes(name)?),
                };
                tensors.push(OwnedTensor {
                    name: name.to_string(),
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                    data,
                });
            }
            let mut prov = g.provenance();
            prov.input(base.display().to_string(), ckpt.content_hash()?);
            let wfile = adapter.join(mnemo::lora::WEIGHTS_FILE);
            prov.input(
                wfile.display().to_string(),
                mnemo::checkpoint::file_hash(&wfile)?,
            );
            let mut meta = ckpt.metadata().clone();
            meta.retain(|k, _| !k.starts_with("mnemo.") || k == mnemo::model::ARCH_KEY);
            meta.extend(prov.metadata());
            // A base read through its Hugging Face config.json: the folded checkpoint says
            // its arch itself.
            if !meta.contains_key(mnemo::model::ARCH_KEY) {
                if let Ok(spec) = mnemo::model::resolve_arch(&ckpt, None) {
                    meta.insert(mnemo::model::ARCH_KEY.into(), spec.to_json());
                }
            }
            let source = mnemo::checkpoint::folder::source_folder(&base);
            prepare_model_output(&output, tensors, &meta, source.as_deref())
                .and_then(|o| o.commit())
                .with_context(|| format!("writing {}", output.display()))?;
            JsonLines::stdout().emit(&json!({
                "output": output.display().to_string(),
                "modules": ad.modules.keys().collect::<Vec<_>>(),
                "saved": ad.saved.keys().collect::<Vec<_>>(),
                "rank": ad.config.rank,
                "scale": ad.config.scale(),
            }))?;
            Ok(Status::Success)
        }
    }
}
