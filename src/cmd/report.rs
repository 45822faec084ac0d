//! `mnemo report`: figures and tables from JSON Lines — loss curves of training runs (one
//! panel per stage) and accuracy matrices with average accuracy, BWT, FWT and forgetting;
//! with --confusion, the confusion matrices of `mnemo eval` lines.

use super::{print_text, Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::metrics::continual::{matrices, mean_matrix, mean_std, parse_records, AccuracyMatrix};
use mnemo::report::{plot_confusions, plot_matrices, plot_panels, stage_curves, ConfusionPanel};
use serde_json::json;
use std::path::PathBuf;

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        (
            "loss curves of a three-stage sequence, one panel per stage",
            "mnemo report stage1.jsonl stage2.jsonl stage3.jsonl -o curves.png",
        ),
        (
            "accuracy-matrix heatmaps from eval --stage records",
            "mnemo report results.jsonl --kind matrix -o matrix.svg",
        ),
        (
            "the tables: average accuracy, BWT, FWT, forgetting (mean ± std over seeds)",
            "mnemo report results.jsonl --markdown",
        ),
        (
            "a classifier's confusion matrix from its eval line",
            "mnemo eval model.safetensors --data test.safetensors > eval.jsonl && mnemo report --confusion eval.jsonl -o confusion.png",
        ),
    ],
    exit_status: EXIT_PLAIN,
};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// matrix when the files hold stage/task records, else curves.
    Auto,
    /// Training and validation loss per epoch (step lines when there is one epoch), one panel
    /// per file (stage).
    Curves,
    /// Heatmap of R[stage][task] per run (mean over seeds).
    Matrix,
}

/// Figures (PNG or SVG by the extension of -o) and Markdown tables from mnemo's JSON Lines.
/// Runs are told apart by the string fields of the records (method, scenario, ...); records
/// with a numeric "seed" are replicates, averaged.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// JSON Lines files: training runs (curves) or eval --stage records (matrix); `-` is stdin.
    #[arg(required_unless_present = "confusion")]
    pub files: Vec<PathBuf>,
    /// Draw the confusion matrices of `mnemo eval` result lines (class ids) from this JSON
    /// Lines file instead (`-`: stdin): one panel per line that has one, rows the true
    /// class, columns the prediction, coloured by the share of the row; --markdown prints
    /// them as tables.
    #[arg(long, value_name = "EVAL.jsonl", conflicts_with_all = ["files", "kind", "metric"])]
    pub confusion: Option<PathBuf>,
    /// The figure to write (.png or .svg).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Kind::Auto)]
    pub kind: Kind,
    /// Print the tables as Markdown on stdout.
    #[arg(long)]
    pub markdown: bool,
    /// The record field the matrix holds; a list (`miou,map,accuracy`) scores each record by
    /// the first field it has, so tasks of different kinds share one matrix.
    #[arg(long, default_value = "accuracy", value_name = "FIELD[,FIELD...]")]
    pub metric: String,
    /// The figure's title.
    #[arg(long, value_name = "TEXT")]
    pub title: Option<String>,
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// The confusion matrices of eval result lines: (title, rows), checked square and whole.
fn confusion_panels(path: &std::path::Path, text: &str) -> anyhow::Result<Vec<ConfusionPanel>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let Some(c) = v.get("confusion") else {
            continue;
        };
        let rows: Vec<Vec<u64>> = serde_json::from_value(c.clone())
            .with_context(|| format!("{}: 'confusion' is not a list of rows of counts", at()))?;
        let k = rows.len();
        if k == 0 || rows.iter().any(|r| r.len() != k) {
            anyhow::bail!(
                "{}: 'confusion' is not a square matrix ({k} rows of lengths {:?})",
                at(),
                rows.iter().map(Vec::len).collect::<Vec<_>>()
            );
        }
        let stem = |p: &std::path::Path| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string())
        };
        let mut title = match (v.get("data").and_then(|d| d.as_str()), v.get("task")) {
            (Some(d), Some(t)) => format!("task {t}: {}", stem(std::path::Path::new(d))),
            (Some(d), None) => stem(std::path::Path::new(d)),
            (None, Some(t)) => format!("task {t}"),
            (None, None) => format!("{}:{}", stem(path), n + 1),
        };
        if let Some(a) = v.get("accuracy").and_then(|a| a.as_f64()) {
            title.push_str(&format!(" (accuracy {:.1}%)", 100.0 * a));
        }
        out.push(ConfusionPanel { title, rows });
    }
    if out.is_empty() {
        anyhow::bail!(
            "{}: no line with a 'confusion' matrix (the result lines of `mnemo eval` on class ids; above {} classes add --confusion)",
            path.display(),
            super::eval::CONFUSION_CLASSES
        );
    }
    Ok(out)
}

fn confusion_table(p: &ConfusionPanel) -> String {
    let k = p.rows.len();
    let mut s = format!("{}\n\n| true \\ predicted |", p.title);
    for j in 0..k {
        s.push_str(&format!(" {j} |"));
    }
    s.push_str("\n|---:|");
    s.push_str(&"---:|".repeat(k));
    s.push('\n');
    for (i, row) in p.rows.iter().enumerate() {
        s.push_str(&format!("| {i} |"));
        for c in row {
            s.push_str(&format!(" {c} |"));
        }
        s.push('\n');
    }
    s
}

fn confusion(args: &Args, path: &PathBuf) -> anyhow::Result<Status> {
    let text = read(path)?;
    let panels = confusion_panels(path, &text)?;
    if args.markdown {
        let t: Vec<String> = panels.iter().map(confusion_table).collect();
        print_text(&t.join("\n"))?;
    }
    if let Some(o) = &args.output {
        let title = args.title.as_deref().unwrap_or("confusion matrix");
        plot_confusions(o, title, &panels)?;
        if !args.markdown {
            JsonLines::stdout().emit(&json!({
                "figure": o.display().to_string(), "kind": "confusion", "panels": panels.len(),
                "classes": panels.iter().map(|p| p.rows.len()).collect::<Vec<_>>(),
            }))?;
        }
    }
    Ok(Status::Success)
}

fn pct(v: f64) -> String {
    format!("{:.2}", 100.0 * v)
}

fn pm(v: &[f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let (m, s) = mean_std(v);
    if v.len() > 1 {
        format!("{} ± {}", pct(m), pct(s))
    } else {
        pct(m)
    }
}

fn matrix_table(m: &AccuracyMatrix) -> String {
    let mut s = String::from("| after stage |");
    for j in 1..=m.tasks {
        s.push_str(&format!(" task {j} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(m.tasks));
    s.push('\n');
    for (i, row) in m.r.iter().enumerate() {
        if row.iter().all(|v| v.is_none()) {
            continue;
        }
        s.push_str(&format!(
            "| {} |",
            if i == 0 { "init".into() } else { i.to_string() }
        ));
        for v in row {
            s.push_str(&format!(" {} |", v.map(pct).unwrap_or_else(|| "–".into())));
        }
        s.push('\n');
    }
    s
}

pub fn run(args: Args, _g: &Global) -> anyhow::Result<Status> {
    if args.output.is_none() && !args.markdown {
        anyhow::bail!("nothing to do: give -o FILE.png|FILE.svg and/or --markdown");
    }
    if let Some(o) = &args.output {
        let mut d = mnemo::fsutil::Destinations::new();
        for f in &args.files {
            d.input("the input", f);
        }
        if let Some(c) = &args.confusion {
            d.input("--confusion", c);
        }
        d.output("-o", o).check()?;
    }
    if let Some(c) = &args.confusion {
        return confusion(&args, c);
    }
    let mut texts = Vec::new();
    for f in &args.files {
        texts.push((f.clone(), read(f)?));
    }
    let mut records = Vec::new();
    for (f, t) in &texts {
        records.extend(parse_records(t, f, &args.metric)?);
    }
    let kind = match args.kind {
        Kind::Auto if !records.is_empty() => Kind::Matrix,
        Kind::Auto => Kind::Curves,
        k => k,
    };
    let mut out = JsonLines::stdout();
    match kind {
        Kind::Matrix => {
            if records.is_empty() {
                anyhow::bail!("no records with 'stage', 'task' and '{}' (write them with `mnemo eval --stage`)", args.metric);
            }
            let runs = matrices(&records);
            let mut figs = Vec::new();
            let mut md = String::from("| run | seeds | average | BWT | FWT | forgetting |\n|---|---:|---:|---:|---:|---:|\n");
            let mut detail = String::new();
            for (name, reps) in &runs {
                let ms: Vec<&AccuracyMatrix> = reps.iter().map(|(_, m)| m).collect();
                let metrics: Vec<_> = ms.iter().filter_map(|m| m.metrics()).collect();
                let col =
                    |f: &dyn Fn(&mnemo::metrics::continual::ContinualMetrics) -> Option<f64>| {
                        pm(&metrics.iter().filter_map(f).collect::<Vec<_>>())
                    };
                let label = if name.is_empty() {
                    "(all)".to_string()
                } else {
                    name.clone()
                };
                md.push_str(&format!(
                    "| {label} | {} | {} | {} | {} | {} |\n",
                    reps.len(),
                    col(&|m| Some(m.average)),
                    col(&|m| m.bwt),
                    col(&|m| m.fwt),
                    col(&|m| m.mean_forgetting),
                ));
                let mean = mean_matrix(&ms);
                detail.push_str(&format!(
                    "\n{label} (R[stage][task], mean of {} seed(s)):\n\n{}",
                    reps.len(),
                    matrix_table(&mean)
                ));
                figs.push((label, mean));
            }
            if args.markdown {
                print_text(&format!("{md}{detail}"))?;
            }
            if let Some(o) = &args.output {
                let title = args
                    .title
                    .clone()
                    .unwrap_or_else(|| format!("{} after each stage", args.metric));
                plot_matrices(o, &title, &figs)?;
                if !args.markdown {
                    out.emit(&json!({"figure": o.display().to_string(), "kind": "matrix", "panels": figs.len()}))?;
                }
            }
        }
        Kind::Curves | Kind::Auto => {
            let mut panels = Vec::new();
            let mut md = String::from("| stage | file | epochs | final train loss | final val loss | final val accuracy |\n|---:|---|---:|---:|---:|---:|\n");
            for (i, (f, t)) in texts.iter().enumerate() {
                let stage = stage_curves(f, t, i + 1)?;
                panels.push(stage.panel);
                let get = |k: &str| {
                    stage
                        .last_epoch
                        .as_ref()
                        .and_then(|l| l.get(k))
                        .and_then(|v| v.as_f64())
                        .map(|v| format!("{v:.4}"))
                        .unwrap_or_else(|| "–".into())
                };
                md.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    i + 1,
                    f.display(),
                    stage.epochs,
                    get("task_loss"),
                    get("val_loss"),
                    get("val_accuracy")
                ));
            }
            if args.markdown {
                print_text(&md)?;
            }
            if let Some(o) = &args.output {
                plot_panels(
                    o,
                    args.title.as_deref().unwrap_or("loss per stage"),
                    &panels,
                )?;
                if !args.markdown {
                    out.emit(&json!({"figure": o.display().to_string(), "kind": "curves", "panels": panels.len()}))?;
                }
            }
        }
    }
    Ok(Status::Success)
}
