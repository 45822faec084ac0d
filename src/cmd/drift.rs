//! `mnemo drift`: a streaming drift detector over a JSON Lines metric stream.

use super::{num, Global, HelpExtra, JsonLines, Status};
use anyhow::Context;
use mnemo::drift::{build, Detector, DetectorParams, DETECTORS};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("watch the loss of every evaluated batch; exit 1 if it drifted", "mnemo eval model.safetensors --data stream.safetensors --stream | mnemo drift --field loss --detector adwin"),
        ("only the detections, Page-Hinkley on the mean of every 10 records, upward changes only", "mnemo drift --detector page-hinkley --mode up --threshold 20 --every 10 --events-only metrics.jsonl"),
        ("binary errors (1 = wrong prediction) with DDM; retrain when it fires", "mnemo drift --detector ddm --field error errors.jsonl -q || make retrain"),
    ],
    exit_status: &[
        (0, "no drift in the stream"),
        (1, "drift detected at least once (with -q: at the first detection, reading stops)"),
        (2, "error: bad arguments, unreadable input, a non-numeric field (the message names the file and line)"),
    ],
};

/// Reads JSON Lines (files in order, or stdin; `-` is stdin) and runs one detector over the
/// value at --field. By default every record is written back with "drift" (and "warning",
/// for detectors that have one) added; records without the field (or with null) pass
/// through unchanged and are not counted. Binary detectors (ddm, eddm, hddm-a, hddm-w,
/// fhddm, stepd, ewma) take 0/1 or false/true, 1 = an error. A line that is a bare number is
/// itself the value. Detectors reset after a detection, as river's do.
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

/// The value at a dotted path: `Some(None)` when absent or null, an error when not a number.
fn field_value(record: &Value, path: &str, binary: bool) -> Result<Option<f64>, String> {
    if let Some(x) = record.as_f64() {
        return Ok(Some(x));
    }
    let mut v = record;
    for key in path.split('.') {
        let next = match v {
            Value::Object(o) => o.get(key),
            Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => return Ok(None),
        }
    }
    let x = match v {
        Value::Null => return Ok(None),
        Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        Value::Bool(b) if binary => f64::from(u8::from(*b)),
        other => return Err(format!("field '{path}' is {other}, not a number")),
    };
    if !x.is_finite() {
        return Err(format!("field '{path}' is {x}"));
    }
    if binary && x != 0.0 && x != 1.0 {
        return Err(format!(
            "field '{path}' is {x}: this detector takes 0/1 (1 = an error)"
        ));
    }
    Ok(Some(x))
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let mut params = DetectorParams::new();
    for (name, value) in &args.params.values {
        params.set(name, value.clone());
    }
    let mut det: Box<dyn Detector> = build(&args.detector, &params)?;
    let (binary, warns) = (det.binary(), det.has_warning());
    let inputs: Vec<PathBuf> = if args.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.files.clone()
    };
    let silent = g.quiet;
    let mut out = JsonLines::stdout();
    let (mut index, mut drifts, mut values) = (0u64, 0u64, 0u64);
    let (mut group_sum, mut group_n) = (0.0f64, 0u64);
    for path in &inputs {
        let name = path.display().to_string();
        let reader: Box<dyn BufRead> = if name == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).with_context(|| format!("opening {name}"))?,
            ))
        };
        for (i, line) in reader.lines().enumerate() {
            let lineno = i + 1;
            let line = line.with_context(|| format!("{name}:{lineno}: reading"))?;
            if line.trim().is_empty() {
                continue;
            }
            let mut record: Value = serde_json::from_str(&line)
                .with_context(|| format!("{name}:{lineno}: not JSON"))?;
            let x = field_value(&record, &args.field, binary)
                .map_err(|e| anyhow::anyhow!("{name}:{lineno}: {e}"))?;
            let Some(x) = x else {
                if !args.events_only && !silent {
                    out.emit(&record)?;
                }
                continue;
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
                return Ok(Status::Negative);
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
        }
    }
    g.say(format!(
        "drift: {} detection(s) by {} over {} value(s) ({} aggregate(s) of {})",
        drifts,
        det.name(),
        values,
        index,
        args.every
    ));
    Ok(if drifts > 0 {
        Status::Negative
    } else {
        Status::Success
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths_and_binary_values() {
        let r: Value =
            serde_json::from_str(r#"{"a":{"b":[1.5,2]},"e":true,"s":"x","n":null}"#).unwrap();
        assert_eq!(field_value(&r, "a.b.0", false), Ok(Some(1.5)));
        assert_eq!(field_value(&r, "a.c", false), Ok(None));
        assert_eq!(field_value(&r, "n", false), Ok(None));
        assert!(field_value(&r, "s", false).is_err());
        assert_eq!(field_value(&r, "e", true), Ok(Some(1.0)));
        assert!(field_value(&r, "a.b.1", true).is_err(), "2 is not 0/1");
        assert_eq!(
            field_value(&serde_json::json!(0.25), "loss", false),
            Ok(Some(0.25))
        );
    }
}
