//! `mnemo merge`: combine checkpoints without training, streaming tensor by tensor.

use super::{num, Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::checkpoint::{AtomicFile, Checkpoint, Dtype};
use mnemo::merge::{common_tensors, merge_checkpoints, DareRescale, MergeOptions, Method, METHODS};
use serde_json::json;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("Fisher-weighted average of two task models", "mnemo merge fisher a.safetensors b.safetensors --fisher fa.safetensors fb.safetensors -o merged.safetensors"),
        ("0.7·A + 0.3·B", "mnemo merge linear a.safetensors b.safetensors --alpha 0.7 -o merged.safetensors"),
        ("one EMA step of a teacher towards the online model", "mnemo merge ema teacher.safetensors online.safetensors --decay 0.999 -o teacher.safetensors"),
        ("TIES over three fine-tunes of one base (HF shard folders work as inputs)", "mnemo merge ties --base base/ ft1/ ft2/ ft3/ --density 0.3 -o merged.safetensors"),
        ("DARE with TIES sign election, seeded", "mnemo merge dare --base base.safetensors a.safetensors b.safetensors --density 0.5 --ties --seed 7 -o merged.safetensors"),
        ("add Fisher files (e.g. to sum tasks' importance)", "mnemo merge sum f1.safetensors f2.safetensors -o f12.safetensors"),
        ("a mergekit configuration, unchanged, into a model folder (weights, config.json, tokenizer)", "mnemo merge --config merge.yml -o merged/"),
        ("spread a merge over workers: one shard each (any scheduler), then join them", "for k in 1 2 3; do mnemo merge ties --base base/ a/ b/ --density 0.3 --shard-size 2GB --shard-index $k -o merged/ & done; wait; mnemo merge ties --base base/ a/ b/ --density 0.3 --shard-size 2GB --write-index -o merged/"),
    ],
    exit_status: EXIT_PLAIN,
};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodName {
    /// Σ wᵢθᵢ (÷ Σ wᵢ with --normalize); two models with --alpha a: a·A + (1−a)·B.
    Linear,
    /// D·TARGET + (1−D)·ONLINE (--decay D).
    Ema,
    /// Σ wᵢFᵢθᵢ / (Σ wᵢFᵢ + eps), one --fisher file per input (Matena & Raffel 2022).
    Fisher,
    /// base + λ·Σ wᵢ(θᵢ − base).
    TaskArithmetic,
    /// TIES: top ⌊d·n⌋ magnitudes of each task vector, elected sign, agreeing mean.
    Ties,
    /// DARE: Bernoulli(d) keep, rescale, then task arithmetic (or TIES with --ties).
    Dare,
    /// Spherical interpolation of A and B (--t; t = 0 gives A).
    Slerp,
    /// Model breadcrumbs: drop the smallest and the γ largest task-vector entries.
    Breadcrumbs,
    /// Model stock (Jang et al. 2024): t·mean + (1−t)·base from the task vectors' angle.
    ModelStock,
    /// Σ θᵢ (e.g. Fisher files).
    Sum,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RescaleName {
    /// Divide kept entries by d (the DARE paper).
    Paper,
    /// Restore the task vector's L1 norm (mergekit's rescale).
    L1,
    /// No rescaling.
    None,
}

/// Merges checkpoints of the same layout (names and shapes; HF shard folders or index.json
/// count as one checkpoint). Float tensors are merged in f32 (reductions in f64) and
/// written back in the first input's dtype; integer tensors are copied from the first input.
/// NaN or Inf anywhere is an error naming the file, tensor and element (unless
/// --allow-nonfinite). Memory stays bounded: tensors stream from the memory-mapped inputs
/// in chunks, whatever the number of models. Formulas (mergekit's definitions, except where
/// noted in `man mnemo-merge`):
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The method (not with --config merge.yml, where the file names it).
    #[arg(value_enum)]
    pub method: Option<MethodName>,
    /// The models to merge (for ema: TARGET then ONLINE; for slerp: A then B).
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// The output file (a folder with --shard-size or --config merge.yml).
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// The base model of task-arithmetic, ties, dare, breadcrumbs and model-stock.
    #[arg(long, value_name = "CKPT")]
    pub base: Option<PathBuf>,
    /// One weight per input, comma-separated (default: all 1).
    #[arg(long, value_delimiter = ',', value_name = "W,...", value_parser = mnemo::validate::finite)]
    pub weights: Vec<f64>,
    /// Divide by the sum of the weights (linear, task-arithmetic, fisher, dare, breadcrumbs;
    /// ties normalises by default).
    #[arg(long, overrides_with = "no_normalize")]
    pub normalize: bool,
    /// Do not normalise (ties).
    #[arg(long)]
    pub no_normalize: bool,
    /// linear with two inputs: weights a, 1 − a.
    #[arg(long, value_name = "A", conflicts_with = "weights", value_parser = mnemo::validate::finite)]
    pub alpha: Option<f64>,
    /// ema: weight D of the target.
    #[arg(long, value_name = "D", value_parser = mnemo::validate::unit_closed)]
    pub decay: Option<f64>,
    /// fisher: one Fisher file per input, in the same order.
    #[arg(long, num_args = 1.., value_name = "FISHER")]
    pub fisher: Vec<PathBuf>,
    /// fisher: added to the denominator.
    #[arg(long, default_value_t = 1e-8, value_parser = mnemo::validate::non_negative)]
    pub eps: f64,
    /// fisher: floor on every Fisher value (1e-6 makes entries where all F are 0 the
    /// weighted average instead of 0).
    #[arg(long, value_name = "F", value_parser = mnemo::validate::non_negative)]
    pub floor: Option<f64>,
    /// Scale λ of the merged task vector.
    #[arg(long, default_value_t = 1.0, value_name = "L", value_parser = mnemo::validate::finite)]
    pub lambda: f64,
    /// ties, dare, breadcrumbs: the fraction of each task vector kept.
    #[arg(long, value_name = "D", value_parser = mnemo::validate::unit_closed)]
    pub density: Option<f64>,
    /// breadcrumbs: the fraction of largest magnitudes dropped.
    #[arg(long, default_value_t = 0.01, value_name = "G", value_parser = mnemo::validate::unit_half_open)]
    pub gamma: f64,
    /// dare, breadcrumbs: elect signs as TIES does.
    #[arg(long)]
    pub ties: bool,
    /// dare: how kept entries are rescaled.
    #[arg(long, value_enum, default_value = "paper")]
    pub rescale: RescaleName,
    /// dare: seed of the masks (per tensor, independent of order and threads).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// slerp: interpolation position.
    #[arg(long, value_name = "T", value_parser = mnemo::validate::finite)]
    pub t: Option<f64>,
    /// Let NaN/Inf through with IEEE semantics instead of refusing them.
    #[arg(long)]
    pub allow_nonfinite: bool,
    /// Merge only the tensors every input (and the base) has with the same shape; list the
    /// others on stderr and in the summary, instead of refusing the merge.
    #[arg(long)]
    pub skip_mismatched: bool,
    /// Output dtype of the merged float tensors (default: the first input's).
    #[arg(long, value_enum)]
    pub dtype: Option<OutDtype>,
    /// Write HF-style shards of at most this size (e.g. 5GB, 500MB, bytes) into the folder
    /// OUT: model-0000i-of-0000N.safetensors plus model.safetensors.index.json (one shard:
    /// OUT/model.safetensors alone, as transformers does). The index is written last.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub shard_size: Option<u64>,
    /// Merge only shard K (1-based) of the --shard-size plan into OUT, and write no index:
    /// independent processes or machines each take one K, then `--write-index` joins them.
    /// The plan depends only on the first input's header, so every worker agrees on it.
    #[arg(long, value_name = "K", requires = "shard_size", value_parser = clap::value_parser!(u64).range(1..))]
    pub shard_index: Option<u64>,
    /// Merge nothing: check that OUT holds every shard of the --shard-size plan (names,
    /// dtypes and shapes as planned), then write OUT/model.safetensors.index.json. The
    /// reduce step after `--shard-index` workers.
    #[arg(long, requires = "shard_size", conflicts_with = "shard_index")]
    pub write_index: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    F16,
    Bf16,
}

/// "5GB", "500MB", "2GiB", "1000": bytes (decimal units as transformers' max_shard_size).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num
        .parse()
        .map_err(|_| format!("'{s}': expected a size such as 5GB"))?;
    let mult = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KIB" => 1024.0,
        "MIB" => 1048576.0,
        "GIB" => 1073741824.0,
        u => return Err(format!("'{s}': unknown unit '{u}'")),
    };
    let v = (x * mult) as u64;
    if v == 0 {
        return Err(format!("'{s}': must be positive"));
    }
    Ok(v)
}

/// The description of `merge --help` and `man mnemo-merge`: the doc comment above, then the
/// formulas of the methods and mergekit's YAML.
pub fn long_about() -> String {
    format!(
        "Merges checkpoints of the same layout (names and shapes; HF shard folders or index.json \
         count as one checkpoint). Float tensors are merged in f32 (reductions in f64) and \
         written back in the first input's dtype; integer tensors are copied from the first \
         input. NaN or Inf anywhere is an error naming the file, tensor and element (unless \
         --allow-nonfinite). Memory stays bounded: tensors stream from the memory-mapped \
         inputs in chunks, whatever the number of models. Formulas (mergekit's definitions, \
         except where noted):\n\n{}",
        formulas()
    )
}

fn formulas() -> String {
    let mut s = String::from("Formulas:\n");
    for (name, f) in METHODS {
        s.push_str(&format!("  {:<16} {f}\n", name.replace('_', "-")));
    }
    s.push_str(
        "\nmergekit's YAML: `mnemo merge --config merge.yml -o OUT_DIR` reads mergekit 0.1.5's \
         configuration (merge_method, base_model, models with per-model parameters, or slices \
         with sources and layer_range; global parameters; gradients over the layer index; \
         filter conditions; dtype, out_dtype, tokenizer_source) and writes a model folder: \
         model.safetensors (or shards and their index with --shard-size), config.json, \
         generation_config.json and the tokenizer files. Unknown keys, methods and parameters \
         are errors naming the line. Its methods (δᵢ = θᵢ − base):\n",
    );
    for (name, f) in mnemo::merge::config_methods() {
        s.push_str(&format!("  {name:<16} {f}\n"));
    }
    s
}

fn need<T: Copy>(v: Option<T>, flag: &str, method: &str) -> anyhow::Result<T> {
    v.with_context(|| format!("merge {method} needs {flag}"))
}

/// Tensors of the output, in the first input's order, filled greedily into shards of at
/// most `max` bytes (a tensor larger than `max` gets a shard of its own), as transformers
/// does; with each shard's byte size.
fn plan_shards(
    first: &Checkpoint,
    dtype: Option<Dtype>,
    max: u64,
    only: Option<&HashSet<String>>,
) -> anyhow::Result<Vec<(HashSet<String>, u64)>> {
    let mut shards: Vec<(HashSet<String>, u64)> = vec![(HashSet::new(), 0)];
    for name in first.names() {
        if only.is_some_and(|o| !o.contains(name)) {
            continue;
        }
        let e = first.entry(name)?;
        let size = match dtype {
            Some(d) if e.dtype.is_float() => (e.numel() * d.size()) as u64,
            _ => (e.numel() * e.dtype.size()) as u64,
        };
        let last = shards.last_mut().expect("one shard");
        if !last.0.is_empty() && last.1 + size > max {
            shards.push((HashSet::new(), 0));
        }
        let last = shards.last_mut().expect("one shard");
        last.0.insert(name.to_string());
        last.1 += size;
    }
    Ok(shards)
}

/// Writes OUT/model.safetensors.index.json (names sorted, as transformers writes them).
fn save_index(
    dir: &Path,
    weight_map: serde_json::Map<String, serde_json::Value>,
    total_size: u64,
) -> anyhow::Result<PathBuf> {
    let mut sorted: Vec<_> = weight_map.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let index = json!({
        "metadata": {"total_size": total_size},
        "weight_map": serde_json::Map::from_iter(sorted),
    });
    let path = dir.join("model.safetensors.index.json");
    let mut f = AtomicFile::create(&path)?;
    f.write_all(serde_json::to_string_pretty(&index)?.as_bytes())?;
    f.write_all(b"\n")?;
    f.commit()?;
    Ok(path)
}

/// A non-finite input value is refused by the library; the flag that lets it through is
/// the CLI's to name.
fn nonfinite_hint(e: mnemo::MnemoError) -> anyhow::Error {
    if matches!(e, mnemo::MnemoError::NonFinite { .. }) {
        anyhow::Error::from(e)
            .context("a non-finite value (--allow-nonfinite lets NaN/inf through)")
    } else {
        e.into()
    }
}

/// A folder output's config.json and tokenizer files, from the base's folder (or the first
/// input's), as mergekit copies them; config.json's dtype follows --dtype.
fn companions(args: &Args, dtype: Option<Dtype>) -> anyhow::Result<Vec<PathBuf>> {
    let donor = args.base.as_ref().unwrap_or(&args.inputs[0]);
    let Some(dir) = mnemo::checkpoint::folder::source_folder(donor) else {
        return Ok(vec![]);
    };
    Ok(mnemo::merge::recipe::write_companions(
        &args.output,
        &dir,
        None,
        dtype,
        Some(&dir),
    )?)
}

/// `--write-index`: every planned shard must be in OUT with exactly its planned tensors
/// (name, dtype, shape); then the index is written. Nothing is merged.
fn write_index(
    args: &Args,
    first: &Checkpoint,
    dtype: Option<Dtype>,
    shards: &[(HashSet<String>, u64)],
    shard_file: &dyn Fn(usize, usize) -> String,
    start: std::time::Instant,
) -> anyhow::Result<Status> {
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut total_size = 0u64;
    let mut files = Vec::new();
    for (i, (names, size)) in shards.iter().enumerate() {
        let file = shard_file(i, n);
        let path = args.output.join(&file);
        let shard = Checkpoint::open(&path).with_context(|| {
            format!("shard {} of {n} (run --shard-index {} first)", i + 1, i + 1)
        })?;
        for name in names {
            let want = first.entry(name)?;
            let got = shard.entry(name).with_context(|| {
                format!(
                    "{}: tensor '{name}' missing: not this plan's shard",
                    path.display()
                )
            })?;
            let want_dtype = match dtype {
                Some(d) if want.dtype.is_float() => d,
                _ => want.dtype,
            };
            if got.shape != want.shape || got.dtype != want_dtype {
                anyhow::bail!(
                    "{}: tensor '{name}' is {} {:?}, the plan wants {want_dtype} {:?}",
                    path.display(),
                    got.dtype,
                    got.shape,
                    want.shape
                );
            }
            weight_map.insert(name.clone(), json!(file));
        }
        if shard.len() != names.len() {
            anyhow::bail!(
                "{}: holds {} tensors, the plan puts {} in it: not this plan's shard",
                path.display(),
                shard.len(),
                names.len()
            );
        }
        total_size += size;
        files.push(path);
    }
    if n > 1 {
        files.push(save_index(&args.output, weight_map, total_size)?);
    }
    files.extend(companions(args, dtype)?);
    JsonLines::stdout().emit(&json!({
        "output": args.output.display().to_string(), "shards": n,
        "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "seconds": num(start.elapsed().as_secs_f64()),
    }))?;
    Ok(Status::Success)
}

fn method(a: &Args, which: MethodName) -> anyhow::Result<Method> {
    let weights = match (a.alpha, which) {
        (Some(al), MethodName::Linear) => {
            if a.inputs.len() != 2 {
                anyhow::bail!("--alpha needs exactly two inputs (a·A + (1−a)·B)");
            }
            vec![al, 1.0 - al]
        }
        (Some(_), _) => anyhow::bail!("--alpha applies to linear only"),
        _ => a.weights.clone(),
    };
    let normalize = |default: bool| {
        if a.no_normalize {
            false
        } else {
            a.normalize || default
        }
    };
    let name = format!("{:?}", which).to_lowercase();
    Ok(match which {
        MethodName::Linear => Method::Linear {
            weights,
            normalize: normalize(false),
        },
        MethodName::Ema => Method::Ema {
            decay: need(a.decay, "--decay D", &name)?,
        },
        MethodName::Fisher => Method::Fisher {
            weights,
            eps: a.eps,
            floor: a.floor,
            normalize: normalize(false),
        },
        MethodName::TaskArithmetic => Method::TaskArithmetic {
            weights,
            lambda: a.lambda,
            normalize: normalize(false),
        },
        MethodName::Ties => Method::Ties {
            weights,
            density: need(a.density, "--density D", &name)?,
            lambda: a.lambda,
            normalize: normalize(true),
        },
        MethodName::Dare => Method::Dare {
            weights,
            density: need(a.density, "--density D", &name)?,
            lambda: a.lambda,
            normalize: normalize(false),
            rescale: match a.rescale {
                RescaleName::Paper => DareRescale::Paper,
                RescaleName::L1 => DareRescale::L1,
                RescaleName::None => DareRescale::None,
            },
            seed: a.seed,
            ties: a.ties,
        },
        MethodName::Slerp => Method::Slerp {
            t: need(a.t, "--t T", &name)?,
        },
        MethodName::Breadcrumbs => Method::Breadcrumbs {
            weights,
            density: need(a.density, "--density D", &name)?,
            gamma: a.gamma,
            lambda: a.lambda,
            normalize: normalize(false),
            ties: a.ties,
        },
        MethodName::ModelStock => Method::ModelStock,
        MethodName::Sum => Method::Sum,
    })
}

/// A mergekit configuration: `--config` naming a `.yml`/`.yaml` file (TOML files are the
/// settings layer of every subcommand).
pub fn yaml_config(g: &Global) -> Option<&Path> {
    g.config.as_deref().filter(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"))
    })
}

/// `mnemo merge --config merge.yml -o OUT_DIR`: mergekit's YAML into a model folder.
fn run_yaml(args: &Args, g: &Global, path: &Path) -> anyhow::Result<Status> {
    let start = std::time::Instant::now();
    if args.method.is_some() || !args.inputs.is_empty() {
        anyhow::bail!(
            "with --config {} the file names the method and the models: give no METHOD or INPUT",
            path.display()
        );
    }
    let flags = [
        (!args.weights.is_empty(), "--weights"),
        (args.base.is_some(), "--base"),
        (!args.fisher.is_empty(), "--fisher"),
        (args.alpha.is_some(), "--alpha"),
        (args.density.is_some(), "--density"),
        (args.t.is_some(), "--t"),
        (args.decay.is_some(), "--decay"),
        (args.dtype.is_some(), "--dtype"),
        (args.skip_mismatched, "--skip-mismatched"),
        (args.shard_index.is_some(), "--shard-index"),
        (args.write_index, "--write-index"),
    ];
    if let Some((_, f)) = flags.iter().find(|(on, _)| *on) {
        anyhow::bail!(
            "{f} does not apply with --config {}: set it in the file",
            path.display()
        );
    }
    let cfg = mnemo::merge::MergeConfig::load(path)?;
    let mut prov = g.provenance();
    let mut seen = HashSet::new();
    let mut refs: Vec<&mnemo::merge::yaml::ModelRef> = cfg.base_model.iter().collect();
    for m in cfg.models.iter().flatten() {
        refs.push(&m.model);
    }
    for s in cfg.slices.iter().flatten() {
        refs.extend(s.sources.iter().map(|x| &x.model));
        refs.extend(s.base_model.iter());
    }
    for r in refs {
        if seen.insert(r.name.clone()) {
            if let Ok(c) = Checkpoint::open(&r.path) {
                prov.input(c.path.display().to_string(), c.content_hash()?);
            }
        }
    }
    let opts = mnemo::merge::RecipeOptions {
        allow_nonfinite: args.allow_nonfinite,
        shard_size: args.shard_size,
        metadata: prov.metadata(),
    };
    // Its errors name the file and line, or the model file and tensor.
    let r = mnemo::merge::run_config(&cfg, &args.output, &opts).map_err(nonfinite_hint)?;
    g.say(format!(
        "merge: {} tensors from {} models into {}",
        r.tensors,
        r.models,
        args.output.display()
    ));
    JsonLines::stdout().emit(&json!({
        "output": args.output.display().to_string(), "config": path.display().to_string(),
        "method": r.method, "models": r.models, "tensors": r.tensors, "layers": r.layers,
        "files": r.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "bytes": r.bytes, "seconds": num(start.elapsed().as_secs_f64()),
    }))?;
    Ok(Status::Success)
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    if let Some(path) = yaml_config(g) {
        return run_yaml(&args, g, path);
    }
    let start = std::time::Instant::now();
    let Some(which) = args.method else {
        anyhow::bail!("merge needs a METHOD and its INPUT models (or --config merge.yml)");
    };
    if args.inputs.is_empty() {
        anyhow::bail!("merge {which:?} needs at least one INPUT model");
    }
    let m = method(&args, which)?;
    let open = |p: &PathBuf| Checkpoint::open(p).map_err(anyhow::Error::from);
    let inputs: Vec<Checkpoint> = args.inputs.iter().map(open).collect::<Result<_, _>>()?;
    let base = args.base.as_ref().map(open).transpose()?;
    let fishers: Vec<Checkpoint> = args.fisher.iter().map(open).collect::<Result<_, _>>()?;
    let mut d = mnemo::fsutil::Destinations::new();
    for (label, c) in inputs
        .iter()
        .map(|c| ("the input", c))
        .chain(base.as_ref().map(|c| ("--base", c)))
        .chain(fishers.iter().map(|c| ("--fisher", c)))
    {
        d.input(label, &c.path);
        for f in &c.files {
            d.input(label, &f.path);
        }
    }
    // `-o DIR/` (or --shard-size): a model folder, its weights as one shard.
    let folder =
        args.shard_size.is_some() || mnemo::checkpoint::folder::is_folder_target(&args.output);
    if folder {
        d.output_folder("-o", &args.output);
    } else {
        d.output("-o", &args.output);
    }
    d.check()?;
    let mut prov = g.provenance();
    for c in inputs.iter().chain(base.as_ref()).chain(&fishers) {
        prov.input(c.path.display().to_string(), c.content_hash()?);
    }
    if matches!(m, Method::Dare { .. }) {
        prov.seed = Some(args.seed);
    }
    let meta = prov.metadata();
    // A progress bar by output bytes (across shards: each shard restarts it).
    let pb = g.progress(0, "merge");
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let progress = |done: usize, total: usize| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    };
    let dtype = args.dtype.map(|d| match d {
        OutDtype::F32 => Dtype::F32,
        OutDtype::F16 => Dtype::F16,
        OutDtype::Bf16 => Dtype::BF16,
    });
    let (common, left_out) = if args.skip_mismatched {
        let others: Vec<&Checkpoint> = inputs[1..].iter().chain(base.as_ref()).collect();
        let (keep, out) = common_tensors(&inputs[0], &others)?;
        for n in &out {
            g.say(format!(
                "merge: skipping '{n}' (missing or of another shape in some input)"
            ));
        }
        (Some(keep), out)
    } else {
        (None, vec![])
    };
    let mut shards = match (args.shard_size, folder) {
        (Some(max), _) => plan_shards(&inputs[0], dtype, max, common.as_ref())?,
        (None, true) => plan_shards(&inputs[0], dtype, u64::MAX, common.as_ref())?,
        (None, false) => vec![],
    };
    shards.retain(|(names, _)| !names.is_empty());
    let shard_file = |i: usize, n: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", i + 1, n)
        }
    };
    if args.write_index {
        return write_index(&args, &inputs[0], dtype, &shards, &shard_file, start);
    }
    if let Some(k) = args.shard_index {
        if k as usize > shards.len() {
            anyhow::bail!(
                "--shard-index {k}: the plan has {} shard(s) at this --shard-size",
                shards.len()
            );
        }
    }
    let run_one = |out: &Path, only: Option<&HashSet<String>>| {
        let opts = MergeOptions {
            allow_nonfinite: args.allow_nonfinite,
            progress: Some(&progress),
            only,
            dtype,
        };
        merge_checkpoints(&m, &inputs, base.as_ref(), &fishers, out, &meta, &opts)
            .map_err(nonfinite_hint)
            .with_context(|| format!("merging into {}", out.display()))
    };
    let (mut merged, mut copied, mut elements, mut bytes) = (0, 0, 0u64, 0u64);
    let mut files = Vec::new();
    if shards.is_empty() {
        let r = run_one(&args.output, common.as_ref())?;
        (merged, copied, elements, bytes) = (r.merged, r.copied, r.elements, r.bytes);
        files.push(args.output.clone());
    } else {
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("creating {}", args.output.display()))?;
        // An earlier sharded checkpoint's index goes first: it would otherwise outlive a
        // single-shard result (readers prefer the index) or, in a run killed between two
        // shards, describe a mix of old and new shards. Without it, such a folder is refused
        // when read (several .safetensors and no index), never silently mixed.
        // Workers (--shard-index) race here: whoever removes it first wins, the rest find
        // it gone.
        let old_index = args.output.join("model.safetensors.index.json");
        match std::fs::remove_file(&old_index) {
            Ok(()) => std::fs::File::open(&args.output)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("syncing {}", args.output.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing the old {}", old_index.display()))
            }
        }
        let n = shards.len();
        let mut weight_map = serde_json::Map::new();
        let mut total_size = 0u64;
        for (i, (names, size)) in shards.iter().enumerate() {
            if args.shard_index.is_some_and(|k| k as usize != i + 1) {
                continue;
            }
            let file = shard_file(i, n);
            let path = args.output.join(&file);
            let r = run_one(&path, Some(names))?;
            merged += r.merged;
            copied += r.copied;
            elements += r.elements;
            bytes += r.bytes;
            total_size += size;
            for name in names {
                weight_map.insert(name.clone(), json!(file));
            }
            files.push(path);
        }
        if n > 1 && args.shard_index.is_none() {
            files.push(save_index(&args.output, weight_map, total_size)?);
        }
        if args.shard_index.is_none() {
            files.extend(companions(&args, dtype)?);
        }
    }
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    JsonLines::stdout().emit(&json!({
        "output": args.output.display().to_string(), "method": m.name(), "inputs": inputs.len(),
        "files": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
        "merged": merged, "copied": copied, "elements": elements, "bytes": bytes,
        "skipped": left_out, "seconds": num(secs),
    }))?;
    Ok(Status::Success)
}
