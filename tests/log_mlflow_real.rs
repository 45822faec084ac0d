//! `mnemo log mlflow` against a real MLflow tracking server (scripts/mlflow_check.sh, with
//! MLflow from the venv of scripts/logging_venv.sh): a train-ewc stream piped through, every
//! metric's history, the tags and a FAILED run read back over the server's REST API.

mod logging_venv;
use logging_venv::*;
use std::process::Command;

#[test]
fn a_real_mlflow_server_gets_every_metric_at_its_step() {
    let Some(py) = python() else { return };
    let out = Command::new(root().join("scripts/mlflow_check.sh"))
        .env("MNEMO", env!("CARGO_BIN_EXE_mnemo"))
        .env("MLFLOW_VENV", venv(&py))
        .output()
        .expect("run scripts/mlflow_check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/mlflow_check.sh: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap();
    assert_eq!(summary["mlflow"], "3.17.2");
    assert_eq!(summary["status"], "FINISHED");
    assert_eq!(summary["failed_run"], "FAILED");
    assert!(summary["metric_values"].as_u64().unwrap() > 0);
    eprintln!("{summary}");
}
