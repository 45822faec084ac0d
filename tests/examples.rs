//! The example pipelines at CI size: examples/split-mnist/run.sh on the shipped MNIST subset
//! (fixtures/mnist-small), one epoch, read back by `report` and `check`.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn split_mnist_pipeline_runs_at_ci_size() {
    let d = workdir();
    let out = d.path().join("out");
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("bash")
        .arg(format!("{root}/examples/split-mnist/run.sh"))
        .env("MNEMO", env!("CARGO_BIN_EXE_mnemo"))
        .env("DATA", format!("{root}/fixtures/mnist-small"))
        .env("OUT", &out)
        .env("EPOCHS", "1")
        .env("SEEDS", "1")
        .env("SCENARIOS", "domain")
        .env("METHODS", "finetune ewc replay")
        .current_dir(d.path())
        .output()
        .expect("run the pipeline");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    // Three methods × (stage 0 + five stages) × five tasks.
    assert_eq!(results.lines().count(), 3 * 6 * 5);
    let r = mnemo_in(d.path(), &["report", "out/results.jsonl", "--markdown"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for m in [
        "method=ewc scenario=domain",
        "method=finetune scenario=domain",
        "method=replay scenario=domain",
    ] {
        assert!(r.stdout.contains(&format!("| {m} | 1 |")), "{}", r.stdout);
    }
    let r = mnemo_in(
        d.path(),
        &["check", "out/results.jsonl", "--max-drop", "100"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let table = Command::new("bash")
        .arg(format!("{root}/examples/split-mnist/table.sh"))
        .arg(out.join("results.jsonl"))
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&table.stdout);
    assert!(
        t.contains("| replay, 1100 examples |") && t.contains("(n=1)"),
        "{t}"
    );
}

/// The drift loop at CI size: no update while the stream is stable, an update once the
/// digits are rotated, every decision logged.
#[test]
fn drift_loop_updates_after_the_rotation() {
    let d = workdir();
    let out = d.path().join("out");
    let root = env!("CARGO_MANIFEST_DIR");
    let run = Command::new("bash")
        .arg(format!("{root}/examples/drift-loop/loop.sh"))
        .env("MNEMO", env!("CARGO_BIN_EXE_mnemo"))
        .env("DATA", format!("{root}/fixtures/mnist-small"))
        .env("OUT", &out)
        .envs([
            ("TRAIN_N", "500"),
            ("CHUNK", "50"),
            ("CHUNKS", "10"),
            ("DRIFT_AT", "5"),
        ])
        .envs([
            ("CAPACITY", "500"),
            ("EVAL_BATCH", "10"),
            ("CALIB_N", "500"),
        ])
        .current_dir(d.path())
        .output()
        .expect("run the loop");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let decisions: Vec<serde_json::Value> = std::fs::read_to_string(out.join("decisions.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(decisions.len(), 10);
    for d in &decisions[..5] {
        assert_eq!(d["action"], "none", "{d}");
    }
    assert!(
        decisions[5..].iter().any(|d| d["action"] == "update"),
        "{decisions:?}"
    );
    let updated = decisions.iter().find(|d| d["action"] == "update").unwrap();
    assert!(Path::new(updated["model"].as_str().unwrap()).exists());
}
