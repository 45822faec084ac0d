//! The example pipelines at CI size: examples/split-mnist/run.sh on the shipped MNIST subset
//! (fixtures/mnist-small), one epoch, read back by `report` and `check`.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

/// The example's command exited 0 (its stderr shown when not).
fn succeeded(run: &std::process::Output) {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Every line of a JSON Lines file.
fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
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
    succeeded(&run);
    let decisions = json_lines(&out.join("decisions.jsonl"));
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

/// The rotated-MNIST stream at CI size: ten single-digit tasks (50 augmented images each),
/// replay and fine-tuning, every task's line; then the live stream through `online | drift`.
#[test]
fn rotated_mnist_stream_runs_both_parts() {
    let d = workdir();
    let out = d.path().join("out");
    let root = env!("CARGO_MANIFEST_DIR");
    let run = Command::new("bash")
        .arg(format!("{root}/examples/rotated-mnist-stream/run.sh"))
        .env("MNEMO", env!("CARGO_BIN_EXE_mnemo"))
        .env("DATA", format!("{root}/fixtures/mnist-small"))
        .env("OUT", &out)
        .envs([
            ("EPOCHS", "1"),
            ("PER_TASK", "50"),
            ("CAPACITY", "100"),
            ("ONLINE_PER_TASK", "20"),
        ])
        .current_dir(d.path())
        .output()
        .expect("run the example");
    succeeded(&run);
    let results = json_lines(&out.join("results.jsonl"));
    assert_eq!(results.len(), 20, "two methods × ten tasks");
    assert!(results[..10]
        .iter()
        .all(|r| r["memory_accuracy"].is_number()));
    assert!(results[10..]
        .iter()
        .all(|r| r.get("memory_accuracy").is_none()));
    let live = std::fs::read_to_string(out.join("online.jsonl")).unwrap();
    assert_eq!(live.lines().count(), 200, "one record per example");
    assert!(
        live.lines().all(|l| l.contains("\"drift\":")),
        "annotated by drift"
    );
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert_eq!(table.lines().count(), 12, "{table}");
    assert!(out.join("online-ema.safetensors").exists());
    let stages = std::fs::read_to_string(out.join("stages.jsonl")).unwrap();
    assert_eq!(
        stages.lines().count(),
        200,
        "2 methods × 10 stages × 10 digits"
    );
    assert!(out.join("matrix.png").exists());
}

/// Permuted MNIST at CI size: three permutations, 20 updates each, every method; Adam's
/// moments carry from task to task (the step count adds up), and a reset run differs.
#[test]
fn permuted_mnist_pipeline_runs_at_ci_size() {
    let d = workdir();
    let root = env!("CARGO_MANIFEST_DIR");
    let run = |out: &str, optimizer: &str| {
        let r = Command::new("bash")
            .arg(format!("{root}/examples/permuted-mnist/run.sh"))
            .env("MNEMO", env!("CARGO_BIN_EXE_mnemo"))
            .env("DATA", format!("{root}/fixtures/mnist-small"))
            .env("OUT", d.path().join(out))
            .envs([("TASKS", "3"), ("ITERS", "20"), ("HIDDEN", "32")])
            .env("OPTIMIZER", optimizer)
            .current_dir(d.path())
            .output()
            .expect("run the pipeline");
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
        std::fs::read_to_string(d.path().join(out).join("results.jsonl")).unwrap()
    };
    let carried = run("carry", "carry");
    // Three methods × (stage 0 + three stages) × three tasks.
    assert_eq!(carried.lines().count(), 3 * 4 * 3);
    let state = mnemo::checkpoint::Checkpoint::open(
        d.path().join("carry/runs/seed1/ewc/adam3.safetensors"),
    )
    .unwrap();
    // 20 updates a task round up to 3 epochs of 7 batches (1,000 images, batch 128): 3 × 21.
    assert_eq!(state.metadata()["mnemo.optimizer.step"], "63");
    let reset = run("reset", "reset");
    assert!(!d
        .path()
        .join("reset/runs/seed1/ewc/adam1.safetensors")
        .exists());
    let after = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.contains("\"stage\":3"))
            .map(|l| l.split("\"accuracy\":").nth(1).unwrap()[..6].to_string())
            .collect()
    };
    assert_ne!(
        after(&carried),
        after(&reset),
        "the optimizer state changes the run"
    );
}

/// The multi-task vision example at CI size: generated shapes at 64 px, a narrow
/// EfficientNet-B0 trunk with seg/det/cls heads, three stages under fine-tuning, EWC and EWC
/// with the balancing pass; per-stage mIoU / mAP / accuracy records, the criterion's
/// verdict and the loss-curve figure.
#[test]
fn multitask_vision_pipeline_runs_at_ci_size() {
    let d = workdir();
    let root = env!("CARGO_MANIFEST_DIR");
    let out = d.path().join("out");
    let r = Command::new("bash")
        .arg(format!("{root}/examples/multitask-vision/run.sh"))
        .env("MNEMO", env!("CARGO_BIN_EXE_mnemo"))
        .env("OUT", &out)
        .envs([
            ("N_TRAIN", "32"),
            ("N_VAL", "16"),
            ("N_TEST", "16"),
            ("EPOCHS", "1"),
            ("BATCH", "16"),
            ("FISHER_N", "8"),
            ("BALANCE", "1"),
            ("BALANCE_N", "16"),
            (
                "ARCH",
                "effnet_multitask:num_classes=5,width_mult=0.25,depth_mult=0.34,decoder_channels=8",
            ),
        ])
        .current_dir(d.path())
        .output()
        .expect("run the pipeline");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    // Three runs (finetune, ewc, ewc-balanced) × (stage 0 + three stages) × three tasks.
    assert_eq!(results.lines().count(), 3 * 4 * 3, "{results}");
    let lines: Vec<serde_json::Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (task, field) in [(1, "miou"), (2, "map"), (3, "accuracy")] {
        assert!(
            lines
                .iter()
                .filter(|l| l["task"] == task)
                .all(|l| l[field].is_number()),
            "task {task} records need '{field}'"
        );
    }
    let r = mnemo_in(
        d.path(),
        &[
            "check",
            "out/results.jsonl",
            "--metric",
            "miou,map,accuracy",
        ],
    );
    assert!(r.code == 0 || r.code == 1, "{}", r.stderr);
    let runs = r.last_json()["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 3, "{}", r.stdout);
    assert!(runs
        .iter()
        .all(|run| run["tasks"].as_array().unwrap().len() == 3));
    let r = mnemo_in(
        d.path(),
        &[
            "report",
            "out/curves/ewc-stage1-seg.jsonl",
            "out/curves/ewc-stage2-det.jsonl",
            "out/curves/ewc-stage3-cls.jsonl",
            "-o",
            "curves.png",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(d.path().join("curves.png").metadata().unwrap().len() > 1000);
    // EWC wrote a Fisher per earlier task, each from its own head's loss.
    let f =
        mnemo::checkpoint::Checkpoint::open(out.join("runs/ewc/fisher1-seg.safetensors")).unwrap();
    assert_eq!(f.metadata()["mnemo.fisher.loss"], "dice-bce");
    assert_eq!(f.metadata()["mnemo.fisher.head"], "seg");
}

/// The text continual-learning run at CI size: the fixture corpus stands in for both
/// Debian corpora (rows of 16 tokens, 4 held out per domain, one epoch each); every method's
/// line, both gates, the table and the stage lines `report` draws.
#[test]
fn text_cl_pipeline_runs_at_ci_size() {
    let d = workdir();
    let root = env!("CARGO_MANIFEST_DIR");
    let corpus = Path::new(root).join("fixtures/text/corpus");
    let data = d.path().join("data");
    for (domain, files) in [
        ("fortunes", &["alice.txt", "unicode.txt", "short.txt"][..]),
        ("pydocs", &["stress.txt"][..]),
    ] {
        std::fs::create_dir_all(data.join(domain)).unwrap();
        for f in files {
            std::fs::copy(corpus.join(f), data.join(domain).join(f)).unwrap();
        }
    }
    let out = d.path().join("out");
    let run = Command::new("bash")
        .arg(format!("{root}/examples/text-cl/run.sh"))
        .env("MNEMO", env!("CARGO_BIN_EXE_mnemo"))
        .env("DATA", &data)
        .env("OUT", &out)
        .envs([
            ("SEQ", "16"),
            ("HELD", "4"),
            ("B_ROWS", "64"),
            ("FISHER_ROWS", "8"),
            ("CAPACITY", "16"),
        ])
        .current_dir(d.path())
        .output()
        .expect("run the example");
    succeeded(&run);
    let results = json_lines(&out.join("results.jsonl"));
    let methods: Vec<&str> = results
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["finetune", "ewc", "replay", "lora"]);
    for r in &results {
        for k in ["a_after_a", "b_after_a", "a_after_b", "b_after_b"] {
            assert!(r[k].as_f64().is_some_and(|p| p >= 1.0), "{r}");
        }
    }
    let gate_a: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("gate-A.json")).unwrap()).unwrap();
    assert_eq!(gate_a["metric"], "perplexity");
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(table.contains("| finetune |"), "{table}");
    let stages = std::fs::read_to_string(out.join("stages.jsonl")).unwrap();
    assert_eq!(
        stages.lines().count(),
        16,
        "4 methods × 2 stages × 2 domains"
    );
    let fig = d.path().join("ppl.png");
    let r = Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args([
            "report",
            "--kind",
            "matrix",
            "--metric",
            "token_accuracy",
            "-o",
        ])
        .arg(&fig)
        .arg(out.join("stages.jsonl"))
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(fig.exists());
}
