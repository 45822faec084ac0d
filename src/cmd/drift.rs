//! `mnemo drift`: a streaming drift detector over a JSON Lines metric stream.

use super::{num, Global, HelpExtra, JsonLines, Status};
use anyhow::Context;
use mnemo::drift::record::{line_value, record_value};
use mnemo::drift::{build, Detector, DetectorParams, DETECTORS};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("watch the loss of every evaluated batch; exit 0 if it drifted (as grep), 1 if not", "mnemo eval model.safetensors --data stream.safetensors --stream | mnemo drift --field loss --detector adwin"),
        ("only the detections, Page-Hinkley on the mean of every 10 records, upward changes only", "mnemo drift --detector page-hinkley --mode up --threshold 20 --every 10 --events-only metrics.jsonl"),
        ("binary errors (1 = wrong prediction) with DDM; retrain when it fires", "if mnemo drift --detector ddm --field error -q < errors.jsonl; then make retrain; fi"),
        ("the Page-Hinkley threshold that gives 1 false alarm per 10,000 values on a stable period", "mnemo drift --detector page-hinkley --calibrate --false-alarm-rate 1e-4 stable.jsonl"),
    ],
    exit_status: &[
        (0, "drift detected at least once, as grep finds a match (with -q: reading stops at the first); with --calibrate: calibrated"),
        (1, "no drift in the stream"),
        (2, "error: bad arguments, unreadable input, a record without a number at --field (the message names the file and line)"),
    ],
};

/// Reads JSON Lines (files in order, or stdin; `-` is stdin) and runs one detector over the
/// value at --field. By default every record is written back with "drift" (and "warning",
/// for detectors that have one) added. A record that is not JSON or has no finite number at
/// --field is an error naming the file and line, unless --skip-invalid (then it passes
/// through unannotated and is counted on stderr). Binary detectors (ddm, eddm, hddm-a,
/// hddm-w, fhddm, stepd, ewma) take 0/1 or false/true, 1 = an error. A line that is a bare
/// number is itself the value. Detectors reset after a detection, as river's do.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The detector: page-hinkley, adwin, kswin (river's); ddm, eddm, hddm-a, hddm-w, fhddm
    /// (river's, binary); cusum, stepd, ewma (MOA/frouros). Its parameters are the flags
    /// under "Detector parameters" (river's names with hyphens).
    #[arg(long, short = 'd', value_name = "NAME", value_parser = detector_names())]
    pub detector: String,
    /// The value's dotted path in each record (e.g. metrics.val_loss; array indices as numbers).
    #[arg(long, default_value = "loss", value_name = "PATH")]
    pub field: String,
    /// Detect on the mean of every N values (the aggregate's index is its position).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub every: u64,
    /// Print one line per detection instead of the annotated stream:
    /// {"index","detector","statistic","value","file","line"}.
    #[arg(long)]
    pub events_only: bool,
    /// Skip (and count) records without a finite number at --field instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Treat the input as a known-stable period and print the detector sensitivity (PH
    /// threshold, ADWIN delta, DDM drift-threshold, ...) whose false-alarm rate on bootstrap
    /// resamples of it is at most --false-alarm-rate, as JSON.
    #[arg(long)]
    pub calibrate: bool,
    /// --calibrate: the target, in alarms per value.
    #[arg(long, value_name = "R", requires = "calibrate", value_parser = mnemo::validate::unit_open)]
    pub false_alarm_rate: Option<f64>,
    /// --calibrate: number of bootstrap resamples.
    #[arg(long, default_value_t = 20, value_name = "K", value_parser = mnemo::validate::count)]
    pub resamples: usize,
    /// --calibrate: seed of the resampling.
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub calibration_seed: u64,
    /// JSON Lines inputs, read in order (default: stdin).
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub params: DetectorFlags,
}

fn detector_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(DETECTORS.iter().map(|d| d.name))
}

/// One `--name VALUE` flag per parameter any detector has (river's names, hyphenated).
#[derive(Debug, Default, Clone)]
pub struct DetectorFlags {
    pub values: BTreeMap<&'static str, String>,
}

/// Every parameter name, in first-appearance order, with the detectors that have it.
fn all_params() -> Vec<(&'static str, Vec<String>)> {
    let mut out: Vec<(&'static str, Vec<String>)> = Vec::new();
    for d in DETECTORS {
        for p in d.params {
            let line = format!("{} (default {}: {})", d.name, p.default, p.help);
            match out.iter_mut().find(|(n, _)| *n == p.name) {
                Some((_, v)) => v.push(line),
                None => out.push((p.name, vec![line])),
            }
        }
    }
    out
}

fn flag_name(param: &'static str) -> &'static str {
    // clap wants 'static names; the set is small and fixed, so leaking once is fine.
    Box::leak(param.replace('_', "-").into_boxed_str())
}

impl clap::FromArgMatches for DetectorFlags {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut values = BTreeMap::new();
        for (name, _) in all_params() {
            if let Some(v) = m.get_one::<String>(name) {
                values.insert(name, v.clone());
            }
        }
        Ok(DetectorFlags { values })
    }
    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for DetectorFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let mut cmd = cmd.next_help_heading("Detector parameters");
        for (name, uses) in all_params() {
            cmd = cmd.arg(
                clap::Arg::new(name)
                    .long(flag_name(name))
                    .value_name("V")
                    .help(uses.join("; ")),
            );
        }
        cmd
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Reads every record of `inputs` in order and hands it over with its value at `field`:
/// `Err(reason)` when the record has no usable value (missing, null, non-numeric, NaN).
/// With `need_record` false the record is not built (`Value::Null` is passed) and the value
/// comes from the fast extractor.
fn for_each_record(
    inputs: &[PathBuf],
    field: &str,
    binary: bool,
    need_record: bool,
    mut f: impl FnMut(&str, usize, Value, Result<f64, String>) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let keys: Vec<&str> = field.split('.').collect();
    for path in inputs {
        let name = path.display().to_string();
        let reader: Box<dyn BufRead> = if name == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).with_context(|| format!("opening {name}"))?,
            ))
        };
        // One buffer for every line: no allocation per record on the fast path.
        let mut reader = reader;
        let mut buf = Vec::with_capacity(256);
        let mut lineno = 0usize;
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("{name}:{}: reading", lineno + 1))?;
            if n == 0 {
                break;
            }
            lineno += 1;
            let bytes = buf.trim_ascii();
            if bytes.is_empty() {
                continue;
            }
            if !need_record {
                if !f(
                    &name,
                    lineno,
                    Value::Null,
                    line_value(bytes, &keys, field, binary),
                )? {
                    return Ok(());
                }
                continue;
            }
            let (record, x) = record_value(bytes, field, binary);
            if !f(&name, lineno, record, x)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

fn detector_params(args: &Args) -> DetectorParams {
    let mut params = DetectorParams::new();
    for (name, value) in &args.params.values {
        params.set(name, value.clone());
    }
    params
}

fn inputs(args: &Args) -> Vec<PathBuf> {
    if args.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.files.clone()
    }
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    if args.calibrate {
        return calibrate(&args, g);
    }
    let mut det: Box<dyn Detector> = build(&args.detector, &detector_params(&args))?;
    let (binary, warns) = (det.binary(), det.has_warning());
    let silent = g.quiet;
    let mut out = JsonLines::stdout_filter();
    let (mut index, mut drifts, mut values, mut skipped) = (0u64, 0u64, 0u64, 0u64);
    let (mut group_sum, mut group_n) = (0.0f64, 0u64);
    let need_record = !args.events_only && !silent;
    for_each_record(
        &inputs(&args),
        &args.field,
        binary,
        need_record,
        |name, lineno, mut record: Value, x| {
            let x = match x {
                Ok(x) => x,
                Err(reason) if args.skip_invalid => {
                    skipped += 1;
                    // Skipped records still pass through, unannotated: a filter loses nothing.
                    if !args.events_only && !silent && !record.is_string() {
                        out.emit(&record)?;
                    }
                    let _ = reason;
                    return Ok(true);
                }
                Err(reason) => {
                    anyhow::bail!("{name}:{lineno}: {reason} (--skip-invalid skips such records)")
                }
            };
            values += 1;
            group_sum += x;
            group_n += 1;
            let mut signal = mnemo::drift::Signal::default();
            if group_n == args.every {
                let value = group_sum / group_n as f64;
                signal = det.update(value);
                (group_sum, group_n) = (0.0, 0);
                if signal.drift {
                    drifts += 1;
                    if args.events_only && !silent {
                        out.emit(&json!({
                        "index": index, "detector": det.name(), "statistic": num(det.statistic()),
                        "value": num(value), "file": name, "line": lineno,
                    }))?;
                    }
                }
                index += 1;
            }
            if silent && drifts > 0 {
                return Ok(false); // as grep -q: the answer is known
            }
            if !args.events_only && !silent {
                if !record.is_object() {
                    record = json!({ "value": record });
                }
                record["drift"] = json!(signal.drift);
                if warns {
                    record["warning"] = json!(signal.warning);
                }
                out.emit(&record)?;
            }
            Ok(true)
        },
    )?;
    if skipped > 0 {
        g.say(format!("drift: skipped {skipped} invalid record(s)"));
    }
    g.say(format!(
        "drift: {} detection(s) by {} over {} value(s) ({} aggregate(s) of {})",
        drifts,
        det.name(),
        values,
        index,
        args.every
    ));
    // As grep: 0 when found (drift), 1 when not.
    Ok(if drifts > 0 {
        Status::Success
    } else {
        Status::Negative
    })
}

/// Chooses the detector's sensitivity so that bootstrap resamples of a known-stable stream
/// raise at most --false-alarm-rate alarms per value.
fn calibrate(args: &Args, g: &Global) -> anyhow::Result<Status> {
    let Some(target) = args.false_alarm_rate else {
        anyhow::bail!("--calibrate needs --false-alarm-rate R (alarms per value, e.g. 0.001)");
    };
    if !(target > 0.0 && target < 1.0) {
        anyhow::bail!("--false-alarm-rate {target}: must be in (0, 1)");
    }
    let spec = mnemo::drift::spec(&args.detector).expect("clap checked the name");
    let mut values = Vec::new();
    let mut skipped = 0u64;
    for_each_record(
        &inputs(args),
        &args.field,
        spec.binary,
        false,
        |name, lineno, _, x| {
            match x {
                Ok(x) => values.push(x),
                Err(_) if args.skip_invalid => skipped += 1,
                Err(reason) => anyhow::bail!("{name}:{lineno}: {reason}"),
            }
            Ok(true)
        },
    )?;
    // --every aggregates before detection, as in a normal run.
    let every = args.every as usize;
    let values: Vec<f64> = values
        .chunks_exact(every)
        .map(|c| c.iter().sum::<f64>() / every as f64)
        .collect();
    if values.len() < 10 {
        anyhow::bail!(
            "--calibrate needs a stable stream of at least 10 values (got {})",
            values.len()
        );
    }
    let mnemo::drift::Tuning {
        param,
        larger_is_quieter,
        lo,
        hi,
    } = spec.tune;
    let base = detector_params(args);
    if base.get(param).is_some() {
        anyhow::bail!(
            "--calibrate chooses --{}: do not set it",
            param.replace('_', "-")
        );
    }
    // Bootstrap resamples (with replacement) of the stable stream, fixed by --seed.
    let mut rng = mnemo::rng::Rng::new(args.calibration_seed);
    let n = values.len();
    mnemo::validate::alloc_bytes(
        &format!("--resamples {} of {n} values", args.resamples),
        (args.resamples as u64).saturating_mul(n as u64),
        8,
    )?;
    let resamples: Vec<Vec<f64>> = (0..args.resamples)
        .map(|_| {
            (0..n)
                .map(|_| values[rng.below(n as u64) as usize])
                .collect()
        })
        .collect();
    let rate = |v: f64| -> anyhow::Result<f64> {
        let mut p = base.clone();
        p.set(param, format!("{v:e}"));
        let mut alarms = 0u64;
        for r in &resamples {
            let mut d = build(spec.name, &p)?;
            alarms += r.iter().filter(|&&x| d.update(x).drift).count() as u64;
        }
        Ok(alarms as f64 / (resamples.len() * n) as f64)
    };
    let (value, achieved) = if spec.name == "ewma" {
        let mut best = None;
        for arl in [100.0, 400.0, 1000.0] {
            let r = rate(arl)?;
            if r <= target {
                best = Some((arl, r));
                break;
            }
        }
        best.unwrap_or((1000.0, rate(1000.0)?))
    } else {
        // Bisection in log space on the monotone alarm rate: the least conservative value
        // whose rate is at most the target.
        let (mut quiet, mut loud) = if larger_is_quieter {
            (hi, lo)
        } else {
            (lo, hi)
        };
        let mut quiet_rate = rate(quiet)?;
        if quiet_rate > target {
            g.say(format!(
                "drift: even {param} = {quiet:e} gives {quiet_rate:.3e} alarms per value"
            ));
        } else if rate(loud)? <= target {
            quiet = loud;
            quiet_rate = rate(loud)?;
        } else {
            for _ in 0..40 {
                let mid = (quiet.ln() + loud.ln()) / 2.0;
                let mid = mid.exp();
                let r = rate(mid)?;
                if r <= target {
                    (quiet, quiet_rate) = (mid, r);
                } else {
                    loud = mid;
                }
                if (quiet.ln() - loud.ln()).abs() < 1e-3 {
                    break;
                }
            }
        }
        (quiet, quiet_rate)
    };
    if skipped > 0 {
        g.say(format!("drift: skipped {skipped} invalid record(s)"));
    }
    JsonLines::stdout().emit(&json!({
        "detector": spec.name, "parameter": param.replace('_', "-"), "value": num(value),
        "false_alarm_rate": num(achieved), "target": num(target),
        "values": n, "resamples": args.resamples, "seed": args.calibration_seed,
        // The search range's end: even the most sensitive setting tried meets the target.
        "at_bound": value == if larger_is_quieter { lo } else { hi },
    }))?;
    Ok(Status::Success)
}
