//! `mnemo diff`: per-tensor max-abs difference, L2 of the difference and cosine;
//! missing, extra and shape-mismatched names. Exit 1 when anything differs
//! beyond `--tol`, as cmp does.

use super::{num, print_text, Global, HelpExtra, JsonLines, Status};
use mnemo::checkpoint::stats::tensor_diff;
use mnemo::checkpoint::{natural_cmp, Checkpoint};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("did fine-tuning move the weights?", "mnemo diff before.safetensors after.safetensors"),
        ("branch in a Makefile on equality within a tolerance", "mnemo diff -q a.safetensors b.safetensors --tol 1e-6 || echo changed"),
        ("machine-readable, one line per tensor then a summary", "mnemo diff a.safetensors b.safetensors --json"),
    ],
    exit_status: &[
        (0, "the checkpoints hold the same names and shapes, and no value differs by more than --tol"),
        (1, "some tensor differs beyond --tol, or names or shapes differ"),
        (2, "error: a file is missing or invalid"),
    ],
};

#[derive(clap::Args, Debug)]
pub struct Args {
    pub a: PathBuf,
    pub b: PathBuf,
    /// Largest |a − b| still counted as equal.
    #[arg(long, default_value_t = 0.0, value_name = "T", value_parser = mnemo::validate::non_negative)]
    pub tol: f64,
    /// JSON Lines: one object per tensor, then a summary object.
    #[arg(long)]
    pub json: bool,
    /// List every tensor in the table, not only the ones that differ.
    #[arg(long)]
    pub all: bool,
}

enum Row {
    Missing,
    Extra,
    Shape(Vec<usize>, Vec<usize>),
    Values {
        max_abs: f64,
        l2: f64,
        cosine: Option<f64>,
        dtypes: (String, String),
    },
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let a = Checkpoint::open(&args.a)?;
    let b = Checkpoint::open(&args.b)?;
    let names: BTreeSet<&str> = a.names().chain(b.names()).collect();
    let mut names: Vec<&str> = names.into_iter().collect();
    names.sort_by(|a, b| natural_cmp(a, b));
    let pb = g.progress(names.len() as u64, "diff");
    let rows: Vec<(&str, Row)> = names
        .par_iter()
        .map(|&n| {
            let row = match (a.contains(n), b.contains(n)) {
                (true, false) => Row::Missing,
                (false, true) => Row::Extra,
                _ => {
                    let (ea, eb) = (a.entry(n)?, b.entry(n)?);
                    if ea.shape != eb.shape {
                        Row::Shape(ea.shape.clone(), eb.shape.clone())
                    } else {
                        let d = tensor_diff(ea.dtype, a.bytes(n)?, eb.dtype, b.bytes(n)?);
                        Row::Values {
                            max_abs: d.max_abs,
                            l2: d.l2,
                            cosine: d.cosine,
                            dtypes: (ea.dtype.to_string(), eb.dtype.to_string()),
                        }
                    }
                }
            };
            pb.inc(1);
            Ok((n, row))
        })
        .collect::<mnemo::Result<_>>()?;
    pb.finish_and_clear();

    let differs = |r: &Row| match r {
        Row::Values { max_abs, .. } => *max_abs > args.tol,
        _ => true,
    };
    let n_diff = rows.iter().filter(|(_, r)| differs(r)).count();
    let overall_max = rows
        .iter()
        .filter_map(|(_, r)| match r {
            Row::Values { max_abs, .. } => Some(*max_abs),
            _ => None,
        })
        .fold(0.0f64, f64::max);
    let count = |f: fn(&Row) -> bool| rows.iter().filter(|(_, r)| f(r)).count();
    let missing = count(|r| matches!(r, Row::Missing));
    let extra = count(|r| matches!(r, Row::Extra));
    let shape = count(|r| matches!(r, Row::Shape(..)));

    if args.json {
        let mut out = JsonLines::stdout();
        for (n, r) in &rows {
            let v: Value = match r {
                Row::Missing => json!({"name": n, "status": "missing_in_b"}),
                Row::Extra => json!({"name": n, "status": "extra_in_b"}),
                Row::Shape(sa, sb) => {
                    json!({"name": n, "status": "shape_mismatch", "shape_a": sa, "shape_b": sb})
                }
                Row::Values {
                    max_abs,
                    l2,
                    cosine,
                    dtypes,
                } => json!({
                    "name": n, "status": if differs(r) { "differs" } else { "equal" },
                    "max_abs": num(*max_abs), "l2": num(*l2), "cosine": cosine.map(num),
                    "dtype_a": dtypes.0, "dtype_b": dtypes.1,
                }),
            };
            out.emit(&v)?;
        }
        out.emit(&json!({
            "summary": true, "tensors": rows.len(), "differing": n_diff, "missing_in_b": missing,
            "extra_in_b": extra, "shape_mismatches": shape, "max_abs": num(overall_max), "tol": num(args.tol),
            "equal": n_diff == 0,
        }))?;
    } else if !g.quiet {
        let mut s = String::new();
        let w = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(4).max(4);
        writeln!(
            s,
            "{:w$}  {:>11}  {:>11}  {:>9}",
            "name", "max_abs", "l2", "cosine"
        )?;
        for (n, r) in &rows {
            if !args.all && !differs(r) {
                continue;
            }
            match r {
                Row::Missing => writeln!(s, "{n:w$}  only in {}", args.a.display())?,
                Row::Extra => writeln!(s, "{n:w$}  only in {}", args.b.display())?,
                Row::Shape(sa, sb) => writeln!(s, "{n:w$}  shape {sa:?} vs {sb:?}")?,
                Row::Values {
                    max_abs,
                    l2,
                    cosine,
                    ..
                } => writeln!(
                    s,
                    "{n:w$}  {max_abs:>11.4e}  {l2:>11.4e}  {:>9}",
                    cosine
                        .map(|c| format!("{c:.6}"))
                        .unwrap_or_else(|| "-".into())
                )?,
            }
        }
        writeln!(
            s,
            "{} tensors, {n_diff} differ beyond tol {} (max_abs {overall_max:.4e}); {missing} only in A, {extra} only in B, {shape} shape mismatches",
            rows.len(),
            args.tol
        )?;
        print_text(&s)?;
    }
    Ok(if n_diff == 0 {
        Status::Success
    } else {
        Status::Negative
    })
}
