//! The venv with the real logging backends (scripts/logging_venv.sh), for the read-back
//! tests. Under CI (CI=true) a missing venv fails the test: those checks must run there.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's python, or None (the test then skips, saying so) when it is not installed
/// and this is not CI.
pub fn python() -> Option<PathBuf> {
    let out = Command::new(root().join("scripts/logging_venv.sh"))
        .arg("--check")
        .output()
        .expect("run scripts/logging_venv.sh --check");
    if out.status.success() {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        return Some(PathBuf::from(p));
    }
    let why = String::from_utf8_lossy(&out.stderr);
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and the logging venv is missing: {why}(`make test` installs it with scripts/logging_venv.sh)");
    }
    eprintln!("SKIPPED (not CI): {why}");
    None
}

/// The venv's folder (of bin/python).
pub fn venv(python: &Path) -> PathBuf {
    python.parent().unwrap().parent().unwrap().to_path_buf()
}

/// `scripts/logging_readback.py WHAT PATH`, parsed.
pub fn readback(python: &Path, what: &str, path: &Path) -> serde_json::Value {
    let out = Command::new(python)
        .arg(root().join("scripts/logging_readback.py"))
        .arg(what)
        .arg(path)
        .output()
        .expect("run logging_readback.py");
    assert!(
        out.status.success(),
        "logging_readback.py {what} {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "logging_readback.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A line with numbers: (line number, step, [(key, value)]).
pub type Row = (u64, i64, Vec<(String, f64)>);

/// What `log mlflow` / `log tensorboard` / `log wandb` make of a stream, computed here
/// independently: per line with numbers, (line number, step, [(key, value)]): keys
/// prefixed by the line's "event", nested objects joined with dots, the step its "step",
/// "epoch" or "batch" (a whole number ≥ 0), else the line number.
pub fn expected(stream: &str) -> Vec<Row> {
    fn flat(
        prefix: &str,
        o: &serde_json::Map<String, serde_json::Value>,
        out: &mut Vec<(String, f64)>,
    ) {
        for (k, v) in o {
            match v {
                serde_json::Value::Number(n) => {
                    out.push((format!("{prefix}{k}"), n.as_f64().unwrap()))
                }
                serde_json::Value::Object(o) => flat(&format!("{prefix}{k}."), o, out),
                _ => {}
            }
        }
    }
    let mut rows = Vec::new();
    for (i, line) in stream.lines().enumerate() {
        let n = i as u64 + 1;
        let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(line)
        else {
            continue;
        };
        let prefix = match o.get("event") {
            Some(serde_json::Value::String(e)) => format!("{e}/"),
            _ => String::new(),
        };
        let step = ["step", "epoch", "batch"]
            .iter()
            .filter_map(|k| o.get(*k).and_then(|v| v.as_f64()))
            .find(|x| *x >= 0.0 && x.fract() == 0.0)
            .map_or(n as i64, |x| x as i64);
        let mut vals = Vec::new();
        flat(&prefix, &o, &mut vals);
        if !vals.is_empty() {
            rows.push((n, step, vals));
        }
    }
    rows
}

/// A real training stream: per-step and per-epoch lines, then the summary.
pub fn training_stream(dir: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args([
            "train-ewc",
            &root().join("fixtures/mlp.safetensors").to_string_lossy(),
            "--arch",
            "mlp:20-16-16-5",
            "--data",
            &root()
                .join("fixtures/mh_b_data.safetensors")
                .to_string_lossy(),
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "--log-every",
            "2",
            "-o",
            "m.safetensors",
        ])
        .current_dir(dir)
        .output()
        .expect("run mnemo train-ewc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Seconds since the epoch, now.
pub fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
