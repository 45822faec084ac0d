//! `mnemo lora-gate`: train a LoRA adapter on new data and keep it only when held-out
//! validation does not get worse. Accepted: the adapter folder (PEFT's layout) and,
//! with --merged, the folded checkpoint; rejected: nothing is written, exit 1.

use super::engine::{prepare_optimizer, train_only, EngineArgs, Fit, Opened, TrainInputs};
use super::{num, Global, HelpExtra, JsonLines, Status};
use anyhow::Context;
use mnemo::checkpoint::prepare_model_output;
use mnemo::data::Dataset;
use mnemo::fsutil::Destinations;
use mnemo::lora::{resolve_targets, Adapter, LoraConfig};
use mnemo::metrics::paired::{paired_bootstrap, paired_t_test};
use mnemo::model::{Model, ARCH_KEY};
use serde_json::json;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("adapt layers 0 and 2 of an MLP; deploy only when validation holds", "mnemo lora-gate model.safetensors --data new.safetensors --val val.safetensors --targets 0,2 -o adapter/ && make deploy"),
        ("attention projections of a ViT, rank 8, and the folded checkpoint too", "mnemo lora-gate vit.safetensors --data d.safetensors --val v.safetensors --targets '*.q_proj,*.v_proj' --rank 8 --merged vit2.safetensors -o adapter/"),
        ("a language model folder from transformers: adapt q_proj and v_proj on token data, gate on validation perplexity", "mnemo lora-gate llama/ --data text.safetensors --val val.safetensors --targets q_proj,v_proj --metric perplexity --threshold 0.5 -o adapter/"),
        ("a small noisy validation set: reject only a significant regression", "mnemo lora-gate model.safetensors --data d.safetensors --val small.safetensors --targets 0 --significance 0.05 -o adapter/"),
        ("continue from yesterday's adapter", "mnemo lora-gate model.safetensors --adapter adapter/ --data today.safetensors --val val.safetensors -o adapter/"),
    ],
    exit_status: &[
        (0, "accepted: the adapter (and --merged checkpoint) were written"),
        (1, "rejected: validation regressed; nothing was written"),
        (2, "error: bad arguments or input (the message names the file, tensor or line)"),
    ],
};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Metric {
    /// Minus the mean cross-entropy (higher is better).
    NegLoss,
    /// Top-1 accuracy (token labels: next-token accuracy).
    Accuracy,
    /// exp(mean loss), lower is better: what a language model is judged on (the paired
    /// test runs on the per-sequence losses, which it is a monotone function of).
    Perplexity,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum PairedTestKind {
    /// Seeded paired bootstrap of the mean difference (no distributional assumption).
    Bootstrap,
    /// Paired t-test (scipy.stats.ttest_rel, one-sided).
    T,
}

/// Scores --val before and after training (score = −mean loss, accuracy or perplexity;
/// token labels are scored per token, as transformers' eval_loss): accepted when the
/// score fell (perplexity: rose) by at most --threshold. Only the adapter trains (A kaiming-uniform, B zero, as
/// PEFT); the base weights stay frozen. The engine's --val is the gate's validation set (it
/// also picks the best epoch).
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub inputs: TrainInputs,
    /// The adapter folder to write (adapter_model.safetensors + adapter_config.json).
    #[arg(short, long, value_name = "ADAPTER_DIR")]
    pub output: PathBuf,
    /// Modules to adapt: names or globs, comma-separated (`0,2`; `*.q_proj,*.v_proj`), or
    /// `all-linear` (PEFT's: every linear layer but the output layer, `lm_head`).
    #[arg(long, value_delimiter = ',', value_name = "M,...")]
    pub targets: Vec<String>,
    /// Modules trained in full beside the adapter and saved in it (PEFT's
    /// `modules_to_save`: a module is saved when its name ends with one, e.g. `lm_head`).
    #[arg(long, value_delimiter = ',', value_name = "M,...")]
    pub modules_to_save: Vec<String>,
    /// Rank r of the adapter [default: 16].
    #[arg(long, value_name = "R", value_parser = mnemo::validate::count)]
    pub rank: Option<usize>,
    /// α: the adapter's output is scaled by α/r [default: 32].
    #[arg(long, value_name = "A", value_parser = mnemo::validate::positive)]
    pub alpha: Option<f64>,
    /// Dropout on the adapter's input while training [default: 0.05].
    #[arg(long, value_name = "P", value_parser = mnemo::validate::unit_half_open)]
    pub dropout: Option<f64>,
    /// Rank-stabilised scaling α/√r.
    #[arg(long)]
    pub rslora: bool,
    /// DoRA (PEFT's use_dora): each adapted linear's rows are rescaled to a trained
    /// magnitude, m·(W + scale·B·A)/‖W + scale·B·A‖.
    #[arg(long)]
    pub dora: bool,
    /// Accept when baseline − score ≤ this (in the metric's units).
    #[arg(long, default_value_t = 0.02, value_name = "T", allow_negative_numbers = true, value_parser = mnemo::validate::finite)]
    pub threshold: f64,
    #[arg(long, value_enum, default_value_t = Metric::NegLoss)]
    pub metric: Metric,
    /// Count a regression only when a paired test over per-example scores rejects
    /// "no change" at this level.
    #[arg(long, value_name = "ALPHA", value_parser = mnemo::validate::unit_open)]
    pub significance: Option<f64>,
    /// The paired test used with --significance.
    #[arg(long, value_enum, default_value_t = PairedTestKind::Bootstrap)]
    pub test: PairedTestKind,
    /// Bootstrap resamples (seeded by --seed).
    #[arg(long, default_value_t = 10_000, value_name = "N", value_parser = mnemo::validate::count)]
    pub resamples: usize,
    /// Also write the base checkpoint with the adapter folded in (W + scale·B·A).
    #[arg(long, value_name = "OUT")]
    pub merged: Option<PathBuf>,
    /// Continue from an earlier adapter folder (its targets, rank and α).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Write the training run's JSON Lines (epochs, steps) here.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The largest LoRA rank (the adapter's matrices are rank × features).
const MAX_RANK: usize = 65_536;

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let val_path = args
        .engine
        .val
        .clone()
        .context("lora-gate needs --val: the validation set the update is judged on")?;
    let mut d = Destinations::new();
    args.inputs.destinations(&mut d);
    super::engine::destinations(&mut d, &args.engine);
    if let Some(a) = &args.adapter {
        // Continuing an adapter in place (--adapter DIR -o DIR) is allowed: it is replaced.
        let same = std::fs::canonicalize(a).ok().is_some()
            && std::fs::canonicalize(a).ok() == std::fs::canonicalize(&args.output).ok();
        if !same {
            d.input("--adapter", a.join(mnemo::lora::WEIGHTS_FILE))
                .input("--adapter", a.join(mnemo::lora::CONFIG_FILE));
        }
    }
    if let Some(m) = &args.merged {
        super::engine::model_output(&mut d, "--merged", m);
    }
    if let Some(l) = &args.log {
        d.output("--log", l);
    }
    d.output_dir(
        "-o",
        &args.output,
        &[mnemo::lora::WEIGHTS_FILE, mnemo::lora::CONFIG_FILE],
    )
    .check()?;
    let Opened {
        mut model,
        head,
        data,
        mut prov,
        model_hash: base_hash,
    } = args.inputs.open(g)?;
    let val = Dataset::open(&val_path)?;
    data.require_class_or_tokens("lora-gate")?;
    val.require_class_or_tokens("lora-gate")?;
    let (config, modules, init) = match &args.adapter {
        Some(dir) => {
            let prev = Adapter::read_dir(dir)?;
            let modules = prev.check_against(&model.spec, dir)?;
            for (flag, given, have) in [
                (
                    "--rank",
                    args.rank.map(|r| r as f64),
                    prev.config.rank as f64,
                ),
                ("--alpha", args.alpha, prev.config.alpha),
            ] {
                if given.is_some_and(|g| g != have) {
                    anyhow::bail!(
                        "{flag} differs from the adapter in {} ({have})",
                        dir.display()
                    );
                }
            }
            for (flag, given, have) in [
                ("--rslora", args.rslora, prev.config.rslora),
                ("--dora", args.dora, prev.config.dora),
            ] {
                if given && !have {
                    anyhow::bail!(
                        "{flag}: the adapter in {} was not trained with it",
                        dir.display()
                    );
                }
            }
            for (flag, given) in [
                ("--targets", &args.targets),
                ("--modules-to-save", &args.modules_to_save),
            ] {
                if !given.is_empty() {
                    anyhow::bail!(
                        "{flag} with --adapter: the adapter in {} fixes its modules",
                        dir.display()
                    );
                }
            }
            prov.input(
                dir.join(mnemo::lora::WEIGHTS_FILE).display().to_string(),
                mnemo::checkpoint::file_hash(&dir.join(mnemo::lora::WEIGHTS_FILE))?,
            );
            let mut config = prev.config.clone();
            config.targets = modules.keys().cloned().collect();
            if let Some(d) = args.dropout {
                config.dropout = d;
            }
            (config, modules, Some(prev))
        }
        None => {
            if args.targets.is_empty() {
                anyhow::bail!("--targets is required (module names or globs, e.g. --targets 0,2)");
            }
            let modules = resolve_targets(&model.spec, &args.targets)?;
            let mut config = LoraConfig::new(
                modules.keys().cloned().collect(),
                args.rank.unwrap_or(16),
                args.alpha.unwrap_or(32.0),
                args.dropout.unwrap_or(0.05),
                args.rslora,
            );
            mnemo::lora::resolve_saved(&model.spec, &args.modules_to_save, true)
                .context("--modules-to-save")?;
            config.modules_to_save = args.modules_to_save.clone();
            config.dora = args.dora;
            (config, modules, None)
        }
    };
    if config.rank == 0 || config.rank > MAX_RANK {
        anyhow::bail!("--rank {}: must be in [1, {MAX_RANK}]", config.rank);
    }
    if !(0.0..1.0).contains(&config.dropout) {
        anyhow::bail!("--dropout {}: must be in [0, 1)", config.dropout);
    }
    mnemo::lora::attach::attach(
        &mut model,
        config.clone(),
        modules,
        init.as_ref(),
        args.engine.seed,
    )?;

    let score_of = |model: &mut Model| -> anyhow::Result<Vec<f64>> {
        let cfg = mnemo::eval::EvalConfig {
            head: head.as_deref(),
            per_example: true,
            ..Default::default()
        };
        let e = mnemo::eval::evaluate(model, &val, &cfg, &mut |_| Ok(()))?;
        if let Some(seqs) = e.sequences {
            // Per sequence, its share of the token-weighted total: the mean over sequences
            // is then the mean over scored tokens (transformers' eval_loss), and the paired
            // test still pairs whole sequences.
            let total = seqs.iter().map(|s| s.1).sum::<usize>().max(1) as f64;
            let n = seqs.len() as f64;
            return Ok(match args.metric {
                Metric::NegLoss | Metric::Perplexity => {
                    seqs.iter().map(|s| -s.0 * n / total).collect()
                }
                Metric::Accuracy => seqs.iter().map(|s| s.2 as f64 * n / total).collect(),
            });
        }
        let s = e.examples.unwrap_or_default();
        Ok(match args.metric {
            Metric::NegLoss | Metric::Perplexity => s.loss.iter().map(|l| -l).collect(),
            Metric::Accuracy => s.correct.iter().map(|&c| c as u8 as f64).collect(),
        })
    };
    // The gated value of per-example scores: their mean, or for perplexity exp(−mean).
    let aggregate = |v: &[f64]| {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        match args.metric {
            Metric::Perplexity => (-mean).exp(),
            _ => mean,
        }
    };
    let before = score_of(&mut model)?;
    let start = std::time::Instant::now();
    let mut log = match &args.log {
        Some(p) => JsonLines::file(p)?,
        None => JsonLines::sink(),
    };
    let settings = format!(
        "lora={:?}|metric={:?}|threshold={}",
        config, args.metric, args.threshold
    );
    let trained = train_only(
        Fit {
            command: "lora-gate",
            model,
            data: &data,
            head: head.clone(),
            penalty: None,
            prov: prov.clone(),
            settings,
            metadata: Default::default(),
            output: &args.output,
            source: args.inputs.source(),
            replay: None,
        },
        &args.engine,
        g,
        &mut log,
    )
    .map_err(|e| super::name_files(e, &args.inputs.files()))?;
    let (mut model, outcome, opt) = (trained.model, trained.outcome, trained.opt);
    let after = score_of(&mut model)?;
    let (baseline, score) = (aggregate(&before), aggregate(&after));
    let regression = match args.metric {
        Metric::Perplexity => score - baseline,
        _ => baseline - score,
    };
    let test = args.significance.map(|_| match args.test {
        PairedTestKind::T => paired_t_test(&before, &after),
        PairedTestKind::Bootstrap => {
            paired_bootstrap(&before, &after, args.resamples, args.engine.seed)
        }
    });
    let significant = match (&test, args.significance) {
        (Some(t), Some(alpha)) => t.p_value < alpha,
        _ => true,
    };
    // A gate never accepts what it cannot measure: a non-finite score (or p-value) rejects.
    let measurable = baseline.is_finite()
        && score.is_finite()
        && test.as_ref().is_none_or(|t| t.p_value.is_finite());
    let accepted = measurable && !(regression > args.threshold && significant);
    let mut line = json!({
        "accepted": accepted,
        "metric": match args.metric {
            Metric::NegLoss => "neg-loss",
            Metric::Accuracy => "accuracy",
            Metric::Perplexity => "perplexity",
        },
        "baseline": num(baseline),
        "score": num(score),
        "delta": num(score - baseline),
        "threshold": num(args.threshold),
        "p_value": test.as_ref().map(|t| num(t.p_value)),
        "n": val.len(),
        "epochs": outcome.epochs_done,
        "steps": outcome.steps,
    });
    if let Some(s) = args.significance {
        line["significance"] = num(s);
        line["test"] = json!(match args.test {
            PairedTestKind::T => "t",
            PairedTestKind::Bootstrap => "bootstrap",
        });
    }
    if accepted {
        prov.seed = Some(args.engine.seed);
        let mut meta = prov.metadata();
        // Everything prepared first; the adapter, the main output, is put in place last.
        let merged = match &args.merged {
            Some(m) => {
                let mut mmeta = meta.clone();
                mmeta.insert(ARCH_KEY.into(), model.spec.to_json());
                let tensors = mnemo::lora::attach::merged_tensors(&model)?;
                mnemo::train::finite::check_tensors(&tensors)?;
                line["merged"] = json!(m.display().to_string());
                Some(
                    prepare_model_output(m, tensors, &mmeta, args.inputs.source().as_deref())
                        .with_context(|| format!("writing {}", m.display()))?,
                )
            }
            None => None,
        };
        let optimizer = prepare_optimizer(&args.engine, &opt, &model, &prov.metadata())?;
        if let Some(p) = &args.engine.save_optimizer {
            line["optimizer"] = json!(p.display().to_string());
        }
        meta.insert("mnemo.lora.base".into(), base_hash);
        let adapter = mnemo::lora::attach::adapter_of(&model)?.expect("an adapter is attached");
        log.sync()?;
        log.finish()?;
        if let Some(o) = optimizer {
            o.commit()?;
        }
        if let Some(m) = merged {
            m.commit()?;
        }
        adapter
            .write_dir(&args.output, &meta)
            .with_context(|| format!("writing the adapter to {}", args.output.display()))?;
        line["adapter"] = json!(args.output.display().to_string());
    } else {
        log.finish()?;
        if !measurable {
            g.say("lora-gate: rejected: a validation score is not finite (NaN or ±inf)");
        }
        g.say(format!(
            "lora-gate: rejected: {} fell from {baseline:.6} to {score:.6} (threshold {}){}; nothing written",
            line["metric"].as_str().unwrap_or(""),
            args.threshold,
            test.as_ref()
                .map(|t| format!(", p = {:.4}", t.p_value))
                .unwrap_or_default()
        ));
    }
    line["seconds"] = num(start.elapsed().as_secs_f64());
    JsonLines::stdout().emit(&line)?;
    Ok(if accepted {
        Status::Success
    } else {
        Status::Negative
    })
}
