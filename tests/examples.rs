//! The example pipelines at CI size: examples/split-mnist/run.sh on the shipped MNIST subset
//! (fixtures/mnist-small), one epoch, read back by `report` and `check`.

mod common;
use common::*;
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
