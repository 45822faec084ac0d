//! A training log read as loss curves: the JSON Lines that `train-ewc`, `replay-train`,
//! `online` and `lora-gate --log` write, one panel per log (a stage). Epoch lines give the
//! training curve and, where present, the validation and replay ones; a log with a single
//! epoch and step lines (`--log-every`) is drawn per update instead.

use super::{Curve, Panel};
use crate::error::{MnemoError, Result};
use serde_json::Value;
use std::path::Path;

/// One log's panel and what its table row reports.
#[derive(Clone, Debug)]
pub struct StageCurves {
    pub panel: Panel,
    /// Epoch lines in the log.
    pub epochs: usize,
    /// The last epoch line, for the final losses and accuracy.
    pub last_epoch: Option<Value>,
}

/// The curves of the log `text` (read from `path`, stage `stage` counting from 1). Lines
/// that are not JSON are errors naming the line; other events are skipped.
pub fn stage_curves(path: &Path, text: &str, stage: usize) -> Result<StageCurves> {
    let mut epochs = Vec::new();
    let mut steps = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| MnemoError::InvalidLine {
            path: path.to_path_buf(),
            line: n + 1,
            reason: format!("not JSON: {e}"),
        })?;
        match v.get("event").and_then(|e| e.as_str()) {
            Some("epoch") => epochs.push(v),
            Some("step") => steps.push(v),
            _ => {}
        }
    }
    if epochs.is_empty() && steps.is_empty() {
        return Err(MnemoError::InvalidLog {
            path: path.to_path_buf(),
            reason: "no epoch or step lines (the JSON Lines that train-ewc, replay-train, online and lora-gate write)".into(),
        });
    }
    let field = |rows: &[Value], x: &str, y: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| Some((r.get(x)?.as_f64()?, r.get(y)?.as_f64()?)))
            .collect()
    };
    let per_epoch = epochs.len() > 1 || steps.is_empty();
    let (rows, x, x_label) = if per_epoch {
        (&epochs, "epoch", "epoch")
    } else {
        (&steps, "step", "update")
    };
    let mut curves = vec![Curve {
        label: "train".into(),
        points: field(rows, x, "task_loss"),
    }];
    if per_epoch {
        for (key, label) in [("val_loss", "validation"), ("replay_loss", "replay")] {
            let points = field(&epochs, "epoch", key);
            if !points.is_empty() {
                curves.push(Curve {
                    label: label.into(),
                    points,
                });
            }
        }
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(StageCurves {
        panel: Panel {
            title: format!("stage {stage}: {stem}"),
            x_label: x_label.into(),
            y_label: "loss".into(),
            curves,
        },
        epochs: epochs.len(),
        last_epoch: epochs.pop(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_give_train_and_validation_curves() {
        let log = "{\"event\":\"epoch\",\"epoch\":1,\"task_loss\":2.0,\"val_loss\":2.5}\n\n\
                   {\"event\":\"epoch\",\"epoch\":2,\"task_loss\":1.0,\"val_loss\":1.5}\n\
                   {\"event\":\"summary\"}\n";
        let s = stage_curves(Path::new("a/t1.jsonl"), log, 3).unwrap();
        assert_eq!(s.panel.title, "stage 3: t1");
        assert_eq!(s.epochs, 2);
        let labels: Vec<_> = s.panel.curves.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(labels, ["train", "validation"]);
        assert_eq!(s.panel.curves[1].points, [(1.0, 2.5), (2.0, 1.5)]);
        assert_eq!(s.last_epoch.unwrap()["task_loss"], 1.0);
    }

    #[test]
    fn one_epoch_with_steps_is_drawn_per_update() {
        let log = "{\"event\":\"step\",\"step\":1,\"task_loss\":3.0}\n\
                   {\"event\":\"step\",\"step\":2,\"task_loss\":2.0}\n\
                   {\"event\":\"epoch\",\"epoch\":1,\"task_loss\":2.5,\"val_loss\":2.0}\n";
        let s = stage_curves(Path::new("t.jsonl"), log, 1).unwrap();
        assert_eq!(s.panel.x_label, "update");
        assert_eq!(s.panel.curves.len(), 1);
        assert_eq!(s.panel.curves[0].points, [(1.0, 3.0), (2.0, 2.0)]);
    }

    #[test]
    fn bad_lines_and_empty_logs_are_named() {
        let e = stage_curves(Path::new("t.jsonl"), "{\"event\":\"epoch\"}\nnope\n", 1)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.jsonl:2: not JSON"), "{e}");
        let e = stage_curves(Path::new("t.jsonl"), "{\"event\":\"summary\"}\n", 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no epoch or step lines"), "{e}");
    }
}
