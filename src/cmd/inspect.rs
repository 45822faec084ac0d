//! `mnemo inspect`: names, dtypes, shapes, offsets and metadata from the header alone
//! (constant time on any size of file); `--stats` streams values per tensor in parallel.

use super::{num, print_text, Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use mnemo::checkpoint::stats::{tensor_stats, TensorStats};
use mnemo::checkpoint::{natural_cmp, Checkpoint};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        (
            "tensors and metadata of a checkpoint (reads the header only)",
            "mnemo inspect model.safetensors",
        ),
        (
            "a sharded Hugging Face checkpoint, as JSON",
            "mnemo inspect llama/model.safetensors.index.json --json | jq .parameters",
        ),
        (
            "value statistics, streamed per tensor",
            "mnemo inspect model.safetensors --stats",
        ),
    ],
    exit_status: EXIT_PLAIN,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoints: .safetensors files, HF *.safetensors.index.json, or folders holding one.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// One JSON object per file: {"file","tensors":[{"name","dtype","shape","data_offsets"}],"metadata","parameters"}.
    #[arg(long)]
    pub json: bool,
    /// Also read every value: min, max, mean, std, L2 norm, NaN and Inf counts per tensor.
    #[arg(long)]
    pub stats: bool,
}

fn stats_json(s: &TensorStats) -> Value {
    let opt = |v: Option<f64>| v.map(num).unwrap_or(Value::Null);
    json!({
        "min": opt(s.min()), "max": opt(s.max()), "mean": if s.finite > 0 { num(s.mean) } else { Value::Null },
        "std": opt(s.std()), "l2": num(s.l2()), "nan": s.nan, "inf": s.inf,
    })
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4e}")).unwrap_or_else(|| "-".into())
}

fn human_bytes(n: usize) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// The widest a column is padded to.
const MAX_COLUMN: usize = 120;

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let mut out = JsonLines::stdout();
    for path in &args.files {
        let ckpt = Checkpoint::open(path)?;
        let mut names: Vec<&str> = ckpt.names().collect();
        names.sort_by(|a, b| natural_cmp(a, b));
        let stats: Option<Vec<TensorStats>> = if args.stats {
            let pb = g.progress(names.len() as u64, "stats");
            let s = names
                .par_iter()
                .map(|n| {
                    let e = ckpt.entry(n)?;
                    let r = tensor_stats(e.dtype, ckpt.bytes(n)?);
                    pb.inc(1);
                    Ok(r)
                })
                .collect::<mnemo::Result<Vec<_>>>()?;
            pb.finish_and_clear();
            Some(s)
        } else {
            None
        };
        let parameters: usize = names
            .iter()
            .map(|n| ckpt.entry(n).map(|e| e.numel()).unwrap_or(0))
            .sum();
        if args.json {
            let tensors: Vec<Value> = names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let e = ckpt.entry(n).expect("listed name");
                    let mut t = json!({"name": n, "dtype": e.dtype.as_str(), "shape": e.shape, "data_offsets": [e.begin, e.end]});
                    if ckpt.files.len() > 1 {
                        let f = ckpt.file_of(n).expect("listed name");
                        t["file"] = json!(f.path.file_name().map(|x| x.to_string_lossy().into_owned()));
                    }
                    if let Some(s) = &stats {
                        t["stats"] = stats_json(&s[i]);
                    }
                    t
                })
                .collect();
            out.emit(&json!({
                "file": path.display().to_string(),
                "tensors": tensors,
                "metadata": ckpt.metadata(),
                "parameters": parameters,
                "bytes": ckpt.data_bytes(),
            }))?;
            continue;
        }
        let mut s = String::new();
        let shards = if ckpt.files.len() > 1 {
            format!(", {} shards", ckpt.files.len())
        } else {
            String::new()
        };
        writeln!(
            s,
            "{}: {} tensors, {} parameters, {}{shards}",
            path.display(),
            names.len(),
            parameters,
            human_bytes(ckpt.data_bytes())
        )?;
        let rows: Vec<[String; 4]> = names
            .iter()
            .map(|n| {
                let e = ckpt.entry(n).expect("listed name");
                [
                    n.to_string(),
                    e.dtype.to_string(),
                    format!("{:?}", e.shape),
                    format!("[{}, {}]", e.begin, e.end),
                ]
            })
            .collect();
        let w: Vec<usize> = (0..4)
            .map(|c| {
                rows.iter()
                    .map(|r| r[c].len())
                    .chain([["name", "dtype", "shape", "offsets"][c].len()])
                    .max()
                    .unwrap_or(0)
                    // Padding only up to a screen's width: a longer cell (a long name) is
                    // printed as it is (format widths above 65535 panic).
                    .min(MAX_COLUMN)
            })
            .collect();
        let head = if stats.is_some() {
            "  min         max         mean        std         l2          nan inf"
        } else {
            ""
        };
        writeln!(
            s,
            "  {:w0$}  {:w1$}  {:w2$}  {:w3$}{head}",
            "name",
            "dtype",
            "shape",
            "offsets",
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        )?;
        for (i, r) in rows.iter().enumerate() {
            write!(
                s,
                "  {:w0$}  {:w1$}  {:w2$}  {:w3$}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3]
            )?;
            if let Some(st) = &stats {
                let t = &st[i];
                let mean = (t.finite > 0).then_some(t.mean);
                write!(
                    s,
                    "  {:11} {:11} {:11} {:11} {:11.4e} {} {}",
                    fmt_opt(t.min()),
                    fmt_opt(t.max()),
                    fmt_opt(mean),
                    fmt_opt(t.std()),
                    t.l2(),
                    t.nan,
                    t.inf
                )?;
            }
            writeln!(s)?;
        }
        if !ckpt.metadata().is_empty() {
            writeln!(s, "metadata:")?;
            for (k, v) in ckpt.metadata() {
                writeln!(s, "  {k}: {v}")?;
            }
        }
        let s: String = s.lines().map(|l| format!("{}\n", l.trim_end())).collect();
        print_text(&s)?;
    }
    Ok(Status::Success)
}
