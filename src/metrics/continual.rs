//! Continual-learning metrics from an accuracy matrix R, where R[i][j] is the metric on
//! task j after training stage i (stage 0: before any training, when recorded).
//!
//! With T tasks, stage i having trained task i (1-based):
//! - average accuracy  ACC = (1/T) Σ_j R[T][j]
//! - backward transfer BWT = 1/(T−1) Σ_{j<T} (R[T][j] − R[j][j])   (Lopez-Paz & Ranzato 2017)
//! - forward transfer  FWT = 1/(T−1) Σ_{j≥2} (R[j−1][j] − R[0][j])  (needs stage 0)
//! - forgetting of task j<T: max_{l<T} R[l][j] − R[T][j]; its mean over j<T (Chaudhry et al. 2018)
//!
//! Records come from JSON Lines such as `mnemo eval MODEL --data T1 ... Tk --stage i`
//! (`{"stage":i,"task":j,"accuracy":x,...}`); string-valued fields (method, scenario, ...)
//! name the run a record belongs to, and a numeric `seed` field marks replicates of a run.

use crate::error::{MnemoError, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// One run's matrix: `r[stage][task-1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct AccuracyMatrix {
    pub tasks: usize,
    /// Rows by stage (0..=tasks); `None` where nothing was recorded.
    pub r: Vec<Vec<Option<f64>>>,
}

/// The summary numbers of one matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct ContinualMetrics {
    /// Mean over tasks at the last recorded stage.
    pub average: f64,
    pub bwt: Option<f64>,
    pub fwt: Option<f64>,
    /// Per task j < T: forgetting (None when not computable).
    pub forgetting: Vec<Option<f64>>,
    pub mean_forgetting: Option<f64>,
    /// The stage the average is taken at.
    pub final_stage: usize,
}

impl AccuracyMatrix {
    pub fn new(tasks: usize) -> Self {
        AccuracyMatrix {
            tasks,
            r: vec![vec![None; tasks]; tasks + 1],
        }
    }

    pub fn get(&self, stage: usize, task: usize) -> Option<f64> {
        self.r
            .get(stage)?
            .get(task.checked_sub(1)?)
            .copied()
            .flatten()
    }

    /// The last stage with a full row.
    pub fn final_stage(&self) -> Option<usize> {
        (0..self.r.len())
            .rev()
            .find(|&i| self.r[i].iter().all(|v| v.is_some()))
    }

    pub fn metrics(&self) -> Option<ContinualMetrics> {
        let t = self.tasks;
        let last = self.final_stage()?;
        let row = &self.r[last];
        let average = row.iter().map(|v| v.unwrap_or(0.0)).sum::<f64>() / t as f64;
        let mean_of = |v: Vec<Option<f64>>| -> Option<f64> {
            let v: Option<Vec<f64>> = v.into_iter().collect();
            v.filter(|v| !v.is_empty())
                .map(|v| v.iter().sum::<f64>() / v.len() as f64)
        };
        let full = last == t;
        let bwt = (full && t > 1)
            .then(|| {
                mean_of(
                    (1..t)
                        .map(|j| Some(self.get(t, j)? - self.get(j, j)?))
                        .collect(),
                )
            })
            .flatten();
        let fwt = (full && t > 1)
            .then(|| {
                mean_of(
                    (2..=t)
                        .map(|j| Some(self.get(j - 1, j)? - self.get(0, j)?))
                        .collect(),
                )
            })
            .flatten();
        let forgetting: Vec<Option<f64>> = (1..t)
            .map(|j| {
                if !full {
                    return None;
                }
                let best = (j..t)
                    .filter_map(|l| self.get(l, j))
                    .fold(f64::NEG_INFINITY, f64::max);
                (best.is_finite()).then(|| best - self.get(t, j).unwrap_or(0.0))
            })
            .collect();
        let mean_forgetting = mean_of(forgetting.clone());
        Some(ContinualMetrics {
            average,
            bwt,
            fwt,
            forgetting,
            mean_forgetting,
            final_stage: last,
        })
    }
}

/// One record of a run: a metric of one task after one stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The run's name: its string-valued fields, `key=value` joined by spaces.
    pub run: String,
    pub seed: Option<i64>,
    pub stage: usize,
    pub task: usize,
    pub value: f64,
}

/// Fields that never name a run.
const NOT_LABELS: &[&str] = &[
    "data", "event", "output", "path", "metric", "detector", "loss_fn",
];

/// Reads records with `stage`, `task` and `metric` fields from JSON Lines text; lines
/// without them (summaries, epoch events) are skipped. Errors name the file and line.
/// The largest stage and task number accepted in a record: a matrix has (stages + 1) ×
/// tasks cells, so a 42-byte record claiming task 10^6 would otherwise ask for terabytes.
pub const MAX_TASKS: u64 = 1000;

pub fn parse_records(text: &str, path: &Path, metric: &str) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |reason: String| MnemoError::InvalidLine {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let Some(obj) = v.as_object() else {
            return Err(bad("not a JSON object".into()));
        };
        let (Some(stage), Some(task)) = (obj.get("stage"), obj.get("task")) else {
            continue;
        };
        let stage = stage.as_u64().filter(|&s| s <= MAX_TASKS).ok_or_else(|| {
            bad(format!(
                "'stage' = {stage} is not an integer in [0, {MAX_TASKS}]"
            ))
        })? as usize;
        let task = task
            .as_u64()
            .filter(|&t| (1..=MAX_TASKS).contains(&t))
            .ok_or_else(|| {
                bad(format!(
                    "'task' = {task} is not an integer in [1, {MAX_TASKS}]"
                ))
            })? as usize;
        // `metric` may list several fields, `miou,map,accuracy`: each record contributes the
        // first it has, so tasks of different kinds (masks, multi-hot rows, classes) share one
        // matrix, each scored by its own metric.
        let value = metric
            .split(',')
            .map(str::trim)
            .find_map(|m| obj.get(m).and_then(|v| v.as_f64()))
            .ok_or_else(|| {
                let names: Vec<String> = metric
                    .split(',')
                    .map(|m| format!("'{}'", m.trim()))
                    .collect();
                bad(format!("no numeric {} field", names.join(" or ")))
            })?;
        let mut labels: Vec<String> = obj
            .iter()
            .filter(|(k, v)| v.is_string() && !NOT_LABELS.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        labels.sort();
        out.push(Record {
            run: labels.join(" "),
            seed: obj.get("seed").and_then(|s| s.as_i64()),
            stage,
            task,
            value,
        });
    }
    Ok(out)
}

/// Matrices by run name, then by seed (in the order first seen).
pub fn matrices(records: &[Record]) -> BTreeMap<String, Vec<(Option<i64>, AccuracyMatrix)>> {
    let mut out: BTreeMap<String, Vec<(Option<i64>, AccuracyMatrix)>> = BTreeMap::new();
    let mut tasks: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records {
        let t = tasks.entry(&r.run).or_insert(0);
        *t = (*t).max(r.task).max(r.stage);
    }
    for r in records {
        let t = tasks[r.run.as_str()];
        let runs = out.entry(r.run.clone()).or_default();
        let m = match runs.iter_mut().find(|(s, _)| *s == r.seed) {
            Some((_, m)) => m,
            None => {
                runs.push((r.seed, AccuracyMatrix::new(t)));
                &mut runs.last_mut().expect("just pushed").1
            }
        };
        m.r[r.stage][r.task - 1] = Some(r.value);
    }
    out
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// The element-wise mean of several matrices of the same size.
pub fn mean_matrix(ms: &[&AccuracyMatrix]) -> AccuracyMatrix {
    let t = ms.iter().map(|m| m.tasks).max().unwrap_or(0);
    let mut out = AccuracyMatrix::new(t);
    for i in 0..=t {
        for j in 0..t {
            let v: Vec<f64> = ms.iter().filter_map(|m| m.get(i, j + 1)).collect();
            if !v.is_empty() && v.len() == ms.len() {
                out.r[i][j] = Some(mean_std(&v).0);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-computed 3-task example.
    #[test]
    fn metrics_by_hand() {
        let mut m = AccuracyMatrix::new(3);
        let rows = [
            [0.1, 0.2, 0.3],
            [0.9, 0.25, 0.35],
            [0.7, 0.95, 0.4],
            [0.6, 0.8, 0.97],
        ];
        for (i, row) in rows.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                m.r[i][j] = Some(*v);
            }
        }
        let c = m.metrics().unwrap();
        assert!((c.average - (0.6 + 0.8 + 0.97) / 3.0).abs() < 1e-12);
        // BWT = ((0.6 − 0.9) + (0.8 − 0.95)) / 2
        assert!((c.bwt.unwrap() - (-0.225)).abs() < 1e-12);
        // FWT = ((0.25 − 0.2) + (0.4 − 0.3)) / 2
        assert!((c.fwt.unwrap() - 0.075).abs() < 1e-12);
        // forgetting: task 1 max(0.9, 0.7) − 0.6; task 2 0.95 − 0.8
        assert!((c.forgetting[0].unwrap() - 0.3).abs() < 1e-12);
        assert!((c.forgetting[1].unwrap() - 0.15).abs() < 1e-12);
        assert_eq!(c.final_stage, 3);
    }

    #[test]
    fn records_group_by_labels_and_seeds() {
        let text = r#"{"stage":1,"task":1,"accuracy":0.9,"method":"ewc","seed":1,"data":"a"}
{"event":"summary"}
{"stage":1,"task":2,"accuracy":0.1,"method":"ewc","seed":1,"data":"b"}
{"stage":2,"task":1,"accuracy":0.8,"method":"ewc","seed":1}
{"stage":2,"task":2,"accuracy":0.9,"method":"ewc","seed":1}
{"stage":2,"task":1,"accuracy":0.6,"method":"ewc","seed":2}
{"stage":2,"task":2,"accuracy":0.9,"method":"ft","seed":1}
"#;
        let r = parse_records(text, Path::new("x.jsonl"), "accuracy").unwrap();
        assert_eq!(r.len(), 6);
        let m = matrices(&r);
        assert_eq!(m["method=ewc"].len(), 2);
        assert_eq!(m["method=ewc"][0].1.get(2, 1), Some(0.8));
        assert_eq!(m["method=ft"].len(), 1);
        let e = parse_records(
            "{\"stage\":1,\"task\":0,\"accuracy\":1}\n",
            Path::new("x.jsonl"),
            "accuracy",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.jsonl:1"), "{e}");
    }
}
