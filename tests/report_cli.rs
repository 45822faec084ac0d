//! `eval --stage --label` records, `report` (tables and figures) and `check` (the
//! forgetting criterion) on hand-computed matrices.

mod common;
use common::*;
use std::path::Path;

/// A 3-task run (stages 0..3) whose metrics are known by hand (src/metrics/continual.rs):
/// average 0.79, BWT −0.225, FWT 0.075, forgetting 0.225.
const RUN: [[f64; 3]; 4] = [
    [0.1, 0.2, 0.3],
    [0.9, 0.25, 0.35],
    [0.7, 0.95, 0.4],
    [0.6, 0.8, 0.97],
];

fn write_records(dir: &Path, name: &str, runs: &[(&str, i64, [[f64; 3]; 4])]) {
    let mut s = String::new();
    for (method, seed, m) in runs {
        for (i, row) in m.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                s.push_str(&format!(
                    "{{\"loss\":1.0,\"accuracy\":{v},\"n\":10,\"task\":{},\"data\":\"t{}.safetensors\",\"stage\":{i},\"method\":\"{method}\",\"seed\":{seed}}}\n",
                    j + 1,
                    j + 1
                ));
            }
        }
        s.push_str("{\"tasks\":3,\"mean_accuracy\":0.5}\n");
    }
    std::fs::write(dir.join(name), s).unwrap();
}

#[test]
fn report_tables_and_figures() {
    let d = workdir();
    let p = d.path();
    let mut shifted = RUN;
    shifted[3][0] = 0.7; // seed 2 forgets task 1 less
    write_records(
        p,
        "r.jsonl",
        &[("ewc", 1, RUN), ("ewc", 2, shifted), ("ft", 1, RUN)],
    );
    let r = mnemo_in(p, &["report", "r.jsonl", "--markdown"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // ft: one seed, exact hand values in percent.
    assert!(
        r.stdout
            .contains("| method=ft | 1 | 79.00 | -22.50 | 7.50 | 22.50 |"),
        "{}",
        r.stdout
    );
    // ewc: two seeds, averages (0.79, 0.8233) → 80.67 ± 2.36.
    assert!(
        r.stdout.contains("| method=ewc | 2 | 80.67 ± 2.36 |"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("| init | 10.00 | 20.00 | 30.00 |"),
        "{}",
        r.stdout
    );
    for fig in ["m.png", "m.svg"] {
        let r = mnemo_in(p, &["report", "r.jsonl", "-o", fig]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.last_json()["panels"], 2);
        let bytes = std::fs::read(p.join(fig)).unwrap();
        if fig.ends_with("png") {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        } else {
            let s = String::from_utf8(bytes).unwrap();
            assert!(s.starts_with("<svg") && s.contains("97.0") && s.contains("method=ft"));
        }
    }
    // Loss curves from training JSON Lines, one panel per file.
    let data = fixture("mlp_data.safetensors");
    for (i, f) in ["s1.jsonl", "s2.jsonl"].iter().enumerate() {
        let r = mnemo_in(
            p,
            &[
                "train-ewc",
                &fixture("mlp.safetensors"),
                "--arch",
                "mlp:20-16-16-5",
                "--data",
                &data,
                "--val",
                &data,
                "--epochs",
                &(2 + i).to_string(),
                "--batch-size",
                "16",
                "-o",
                "m.safetensors",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        std::fs::write(p.join(f), &r.raw_stdout).unwrap();
    }
    let r = mnemo_in(
        p,
        &[
            "report",
            "s1.jsonl",
            "s2.jsonl",
            "-o",
            "c.svg",
            "--markdown",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("| 2 | s2.jsonl | 3 |"), "{}", r.stdout);
    assert!(std::fs::read_to_string(p.join("c.svg"))
        .unwrap()
        .contains("validation"));
    // Refusals: a bad extension, a bad record (file and line named).
    let r = mnemo_in(p, &["report", "r.jsonl", "-o", "m.jpg"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("m.jpg"), "{}", r.stderr);
    std::fs::write(p.join("bad.jsonl"), "{\"stage\":1,\"task\":1,\"accuracy\":0.5}\n{\"stage\":1,\"task\":\"x\",\"accuracy\":0.5}\n").unwrap();
    let r = mnemo_in(p, &["report", "bad.jsonl", "--markdown"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("bad.jsonl:2"), "{}", r.stderr);
}

#[test]
fn check_is_the_forgetting_criterion() {
    let d = workdir();
    let p = d.path();
    write_records(p, "r.jsonl", &[("ewc", 1, RUN)]);
    // Task 1 dropped 30 points, task 2 15: fails at 5, passes at 30.
    let r = mnemo_in(p, &["check", "r.jsonl"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let v = r.last_json();
    assert_eq!(v["pass"], false);
    let tasks = v["runs"][0]["tasks"].as_array().unwrap();
    assert!((tasks[0]["drop"].as_f64().unwrap() - 30.0).abs() < 1e-9);
    assert_eq!(tasks[1]["pass"], false);
    assert_eq!(tasks[2]["pass"], true);
    assert!(r.stderr.contains("FAIL"), "{}", r.stderr);
    let r = mnemo_in(p, &["check", "r.jsonl", "--max-drop", "30"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Lower is better: the loss field is constant, so nothing rose.
    let r = mnemo_in(
        p,
        &[
            "check",
            "r.jsonl",
            "--metric",
            "loss",
            "--lower-is-better",
            "--max-drop",
            "0",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = mnemo_in(p, &["check", "r.jsonl", "--metric", "nonexistent"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("r.jsonl:1") && r.stderr.contains("nonexistent"),
        "{}",
        r.stderr
    );
}

/// `eval --stage --label` writes the records report and check read.
#[test]
fn eval_writes_stage_records() {
    let d = workdir();
    let p = d.path();
    let (a, b) = (
        fixture("mlp_data.safetensors"),
        fixture("mh_b_data.safetensors"),
    );
    let mut all = Vec::new();
    for stage in 0..=2 {
        let r = mnemo_in(
            p,
            &[
                "eval",
                &fixture("mlp.safetensors"),
                "--arch",
                "mlp:20-16-16-5",
                "--data",
                &a,
                &b,
                "--stage",
                &stage.to_string(),
                "--label",
                "method=none",
                "--label",
                "seed=3",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let lines = r.json_lines();
        assert_eq!(lines[0]["stage"], stage);
        assert_eq!(lines[1]["task"], 2);
        assert_eq!(lines[1]["method"], "none");
        assert_eq!(lines[1]["seed"], 3);
        all.extend_from_slice(&r.raw_stdout);
    }
    std::fs::write(p.join("r.jsonl"), all).unwrap();
    // The same model at every stage: nothing forgotten, no transfer.
    let r = mnemo_in(p, &["check", "r.jsonl", "--max-drop", "0"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = mnemo_in(p, &["report", "r.jsonl", "--markdown"]);
    assert!(r.stdout.contains("| 0.00 | 0.00 | 0.00 |"), "{}", r.stdout);
    let r = mnemo_in(
        p,
        &[
            "eval",
            &fixture("mlp.safetensors"),
            "--arch",
            "mlp:20-16-16-5",
            "--data",
            &a,
            "--label",
            "oops",
        ],
    );
    assert_eq!(r.code, 2);
}

/// Tasks of different kinds in one run: each record is scored by the first field of the
/// `--metric` list it has; `eval --task` numbers a task evaluated on its own.
#[test]
fn check_scores_mixed_tasks_by_their_own_metric() {
    let d = workdir();
    let p = d.path();
    // Task 1 (segmentation, miou) loses 20 points; task 2 (classes, accuracy) keeps all.
    let lines = [
        r#"{"stage":1,"task":1,"miou":0.80,"pixel_accuracy":0.95,"loss_fn":"dice-bce","method":"ewc"}"#,
        r#"{"stage":1,"task":2,"accuracy":0.10,"method":"ewc"}"#,
        r#"{"stage":2,"task":1,"miou":0.60,"pixel_accuracy":0.94,"loss_fn":"dice-bce","method":"ewc"}"#,
        r#"{"stage":2,"task":2,"accuracy":0.90,"method":"ewc"}"#,
    ];
    std::fs::write(p.join("r.jsonl"), lines.join("\n")).unwrap();
    let r = mnemo_in(p, &["check", "r.jsonl", "--metric", "miou,map,accuracy"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let tasks = r.last_json()["runs"][0]["tasks"].clone();
    assert!(
        (tasks[0]["drop"].as_f64().unwrap() - 20.0).abs() < 1e-9,
        "{tasks}"
    );
    assert_eq!(tasks[1]["pass"], true);
    // Scored by pixel accuracy instead, task 1 dropped one point only.
    let r = mnemo_in(
        p,
        &["check", "r.jsonl", "--metric", "pixel_accuracy,accuracy"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A record with none of the fields names the file, the line and every field.
    let r = mnemo_in(p, &["check", "r.jsonl", "--metric", "map,top5"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("r.jsonl:1") && r.stderr.contains("'map' or 'top5'"),
        "{}",
        r.stderr
    );
    let r = mnemo_in(
        p,
        &[
            "eval",
            &fixture("mlp.safetensors"),
            "--arch",
            "mlp:20-16-16-5",
            "--data",
            &fixture("mlp_data.safetensors"),
            "--stage",
            "2",
            "--task",
            "3",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.last_json()["task"], 3);
}
