//! `mnemo check`: the forgetting criterion. Every task's final metric must stay within
//! --max-drop points of its baseline, the value right after the stage that learned it.

use super::{num, Global, HelpExtra, JsonLines, Status};
use anyhow::Context;
use mnemo::metrics::continual::{matrices, mean_matrix, parse_records, AccuracyMatrix};
use serde_json::json;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        (
            "fail a pipeline when any task lost more than 5 points of accuracy",
            "mnemo check results.jsonl && make deploy",
        ),
        (
            "a looser criterion on another metric",
            "mnemo check results.jsonl --metric miou --max-drop 10",
        ),
        (
            "a multi-task vision run: segmentation by mIoU, detection by mAP, classes by accuracy",
            "mnemo check results.jsonl --metric miou,map,accuracy",
        ),
        (
            "lower is better (a loss): fail when it rose by more than 0.05",
            "mnemo check results.jsonl --metric loss --lower-is-better --max-drop 5",
        ),
    ],
    exit_status: &[
        (
            0,
            "every task of every run is within --max-drop of its baseline",
        ),
        (1, "some task dropped by more than --max-drop"),
        (
            2,
            "error: unreadable records (the message names the file and line)",
        ),
    ],
};

/// Reads eval --stage records (as `report` does); for every run (mean over seeds) and task j:
/// baseline = the metric after stage j (when task j was learned), final = after the last
/// stage. A point is a hundredth of the metric (5 points of accuracy = 0.05). A table on
/// stderr, JSON on stdout.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// JSON Lines files with {"stage","task",<metric>} records; `-` is stdin.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The record field the matrix holds; a list (`miou,map,accuracy`) scores each record by
    /// the first field it has, so tasks of different kinds share one matrix.
    #[arg(long, default_value = "accuracy", value_name = "FIELD[,FIELD...]")]
    pub metric: String,
    /// The largest allowed drop, in points (hundredths of the metric).
    #[arg(long, default_value_t = 5.0, value_name = "POINTS", allow_negative_numbers = true, value_parser = mnemo::validate::finite)]
    pub max_drop: f64,
    /// The metric is better when lower (a loss): a rise counts as a drop.
    #[arg(long)]
    pub lower_is_better: bool,
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let mut records = Vec::new();
    for f in &args.files {
        let text = if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("reading stdin")?;
            s
        } else {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        };
        records.extend(parse_records(&text, f, &args.metric)?);
    }
    if records.is_empty() {
        anyhow::bail!(
            "no records with 'stage', 'task' and '{}' (write them with `mnemo eval --stage`)",
            args.metric
        );
    }
    let mut all_pass = true;
    let mut runs_json = Vec::new();
    let mut table = format!(
        "{:<32} {:>5} {:>9} {:>9} {:>8}  verdict\n",
        "run", "task", "baseline", "final", "drop"
    );
    for (name, reps) in matrices(&records) {
        let ms: Vec<&AccuracyMatrix> = reps.iter().map(|(_, m)| m).collect();
        let m = mean_matrix(&ms);
        let last = m
            .final_stage()
            .with_context(|| format!("run '{name}': no stage has every task's {}", args.metric))?;
        let mut tasks = Vec::new();
        for j in 1..=m.tasks {
            let (Some(base), Some(fin)) = (m.get(j.min(last), j), m.get(last, j)) else {
                continue;
            };
            let drop = 100.0
                * if args.lower_is_better {
                    fin - base
                } else {
                    base - fin
                };
            // Never a pass on a number that is not one (a drop that overflows to ±inf).
            let pass = drop.is_finite() && drop <= args.max_drop + 1e-9;
            all_pass &= pass;
            let label = if name.is_empty() {
                "(all)"
            } else {
                name.as_str()
            };
            table.push_str(&format!(
                "{label:<32} {j:>5} {base:>9.4} {fin:>9.4} {drop:>8.2}  {}\n",
                if pass { "ok" } else { "FAIL" }
            ));
            tasks.push(json!({"task": j, "baseline": num(base), "final": num(fin), "drop": num(drop), "pass": pass}));
        }
        runs_json
            .push(json!({"run": name, "seeds": reps.len(), "final_stage": last, "tasks": tasks}));
    }
    if !g.quiet {
        super::warn_raw(&table);
    }
    JsonLines::stdout().emit(&json!({
        "pass": all_pass, "metric": args.metric, "max_drop": num(args.max_drop),
        "lower_is_better": args.lower_is_better, "runs": runs_json,
    }))?;
    Ok(if all_pass {
        Status::Success
    } else {
        Status::Negative
    })
}
