//! LoRA: PEFT-made adapters folded by `lora merge` and continued by `lora-gate` against
//! PEFT itself (fixtures/lora/gen.py), the accept and reject paths of `lora-gate`, the
//! significance test, and refusals.

mod common;
use common::*;
use mnemo::checkpoint::Checkpoint;
use serde_json::Value;
use std::path::Path;

fn cases() -> Vec<Value> {
    let s = std::fs::read_to_string(fixtures().join("lora/cases.json")).unwrap();
    serde_json::from_str::<Value>(&s)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn arch(case: &Value) -> String {
    let a = case["arch"].as_str().unwrap();
    if a.ends_with(".json") {
        fixture(a)
    } else {
        a.to_string()
    }
}

fn assert_close(got: &Path, want: &Path, strip_got: &str, tol: f32) {
    let g = Checkpoint::open(got).unwrap();
    let w = Checkpoint::open(want).unwrap();
    let mut names: Vec<&str> = w.names().collect();
    names.sort();
    let mut gnames: Vec<String> = g.names().map(|n| n.replacen(strip_got, "", 1)).collect();
    gnames.sort();
    assert_eq!(gnames, names, "{}", got.display());
    for n in names {
        let (a, b) = (
            g.to_f32(&format!("{strip_got}{n}")).unwrap(),
            w.to_f32(n).unwrap(),
        );
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * y.abs().max(1.0),
                "{}: {n}[{i}] = {x}, PEFT {y}",
                got.display()
            );
        }
    }
}

/// A PEFT adapter (linear; conv2d + linear with rsLoRA) folded by `lora merge` equals
/// PEFT's merge_and_unload, and evaluates as the unmerged PEFT model does.
#[test]
fn peft_adapters_merge_as_peft_does() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let d = workdir();
        let r = mnemo_in(
            d.path(),
            &[
                "lora",
                "merge",
                &fixture(case["model"].as_str().unwrap()),
                &fixture(&format!("lora/{name}")),
                "-o",
                "m.safetensors",
            ],
        );
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert_close(
            &d.path().join("m.safetensors"),
            &fixtures().join(format!("lora/{name}_merged.safetensors")),
            "",
            1e-5,
        );
        let r = mnemo_in(
            d.path(),
            &[
                "eval",
                "m.safetensors",
                "--arch",
                &arch(&case),
                "--data",
                &fixture(case["data"].as_str().unwrap()),
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let e = r.last_json();
        let (l, want) = (
            e["loss"].as_f64().unwrap(),
            case["peft_eval_loss"].as_f64().unwrap(),
        );
        assert!((l - want).abs() < 1e-5, "{name}: loss {l}, PEFT {want}");
        assert_eq!(
            e["accuracy"].as_f64().unwrap() as f32,
            case["peft_eval_accuracy"].as_f64().unwrap() as f32
        );
    }
}

/// `lora-gate --adapter PEFT_DIR`: one SGD step on the adapter (base frozen, train mode)
/// equals PEFT's, and the adapter written is in PEFT's layout.
#[test]
fn one_step_from_a_peft_adapter_matches_peft() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let d = workdir();
        let data = fixture(case["data"].as_str().unwrap());
        let lr = case["lr"].to_string();
        let bs = case["batch_size"].to_string();
        let r = mnemo_in(
            d.path(),
            &[
                "lora-gate",
                &fixture(case["model"].as_str().unwrap()),
                "--arch",
                &arch(&case),
                "--adapter",
                &fixture(&format!("lora/{name}")),
                "--data",
                &data,
                "--val",
                &data,
                "--dropout",
                "0",
                "--optimizer",
                "sgd",
                "--lr",
                &lr,
                "--batch-size",
                &bs,
                "--max-batches-per-epoch",
                "1",
                "--no-shuffle",
                "--threshold",
                "1e9",
                "-o",
                "ad",
            ],
        );
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert_eq!(r.last_json()["accepted"], true);
        assert_close(
            &d.path().join("ad/adapter_model.safetensors"),
            &fixtures().join(format!("lora/{name}_step.safetensors")),
            "",
            1e-5,
        );
        let cfg: Value = serde_json::from_str(
            &std::fs::read_to_string(d.path().join("ad/adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["peft_type"], "LORA");
        assert_eq!(cfg["r"], case["r"]);
        assert_eq!(cfg["use_rslora"], case["rslora"]);
    }
}

fn gate(dir: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "lora-gate",
        "MODEL",
        "--arch",
        "mlp:20-16-16-5",
        "--targets",
        "0,4",
        "--rank",
        "4",
        "--alpha",
        "8",
        "--batch-size",
        "16",
        "--seed",
        "3",
    ];
    let model = fixture("mlp.safetensors");
    args[1] = &model;
    args.extend(extra);
    mnemo_in(dir, &args)
}

fn tensors(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = Checkpoint::open(p).unwrap();
    c.names()
        .map(|n| (n.to_string(), c.bytes(n).unwrap().to_vec()))
        .collect()
}

/// Accepted: adapter + merged written, the merged checkpoint equals `lora merge` of the
/// adapter, and the same command gives the same bytes. Rejected: exit 1 and nothing
/// written — the previous adapter folder is untouched and no merged file appears.
#[test]
fn accept_and_reject_paths() {
    let d = workdir();
    let p = d.path();
    let (data, other) = (
        fixture("mlp_data.safetensors"),
        fixture("mh_b_data.safetensors"),
    );
    let ok = [
        "--data",
        &data,
        "--val",
        &data,
        "--epochs",
        "5",
        "--lr",
        "0.01",
        "--merged",
        "m.safetensors",
        "-o",
        "ad",
    ];
    let r = gate(p, &ok);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r.last_json();
    assert_eq!(line["accepted"], true);
    assert!(
        line["score"].as_f64().unwrap() > line["baseline"].as_f64().unwrap(),
        "{line}"
    );
    assert_eq!(r.stdout.lines().count(), 1, "one JSON line on stdout");
    let r = mnemo_in(
        p,
        &[
            "lora",
            "merge",
            &fixture("mlp.safetensors"),
            "ad",
            "-o",
            "m2.safetensors",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        tensors(&p.join("m.safetensors")),
        tensors(&p.join("m2.safetensors"))
    );
    let first = std::fs::read(p.join("ad/adapter_model.safetensors")).unwrap();
    let r = gate(p, &ok);
    assert_eq!(r.code, 0);
    assert_eq!(
        first,
        std::fs::read(p.join("ad/adapter_model.safetensors")).unwrap(),
        "same inputs, same bytes"
    );
    // Training on conflicting labels regresses validation: rejected, nothing written.
    let config = std::fs::read(p.join("ad/adapter_config.json")).unwrap();
    let bad = [
        "--data",
        &other,
        "--val",
        &data,
        "--epochs",
        "20",
        "--lr",
        "0.05",
        "--threshold",
        "0",
        "--merged",
        "rejected.safetensors",
        "-o",
        "ad",
    ];
    let r = gate(p, &bad);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r.last_json();
    assert_eq!(line["accepted"], false);
    assert!(line["delta"].as_f64().unwrap() < 0.0);
    assert!(r.stderr.contains("rejected"), "{}", r.stderr);
    assert!(!p.join("rejected.safetensors").exists());
    assert_eq!(
        first,
        std::fs::read(p.join("ad/adapter_model.safetensors")).unwrap()
    );
    assert_eq!(
        config,
        std::fs::read(p.join("ad/adapter_config.json")).unwrap()
    );
    // Continuing from the accepted adapter (a chain of online updates).
    let r = gate_chain(p, &data);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

fn gate_chain(p: &Path, data: &str) -> Run {
    mnemo_in(
        p,
        &[
            "lora-gate",
            &fixture("mlp.safetensors"),
            "--arch",
            "mlp:20-16-16-5",
            "--adapter",
            "ad",
            "--data",
            data,
            "--val",
            data,
            "--epochs",
            "2",
            "--lr",
            "0.01",
            "--batch-size",
            "16",
            "-o",
            "ad2",
        ],
    )
}

/// A small, noisy validation set: a slight drop in the mean score is rejected by the plain
/// threshold but accepted with --significance (the paired test cannot tell it from noise);
/// a large, consistent drop is rejected either way.
#[test]
fn significance_accepts_noise_and_rejects_real_regressions() {
    let d = workdir();
    let p = d.path();
    let r = mnemo_in(
        p,
        &[
            "data",
            "take",
            &fixture("mlp_data.safetensors"),
            "8",
            "-o",
            "small.safetensors",
        ],
    );
    assert_eq!(r.code, 0);
    let (other, data) = (
        fixture("mh_b_data.safetensors"),
        fixture("mlp_data.safetensors"),
    );
    let slight = [
        "--data",
        &other,
        "--val",
        "small.safetensors",
        "--epochs",
        "1",
        "--lr",
        "0.02",
        "--threshold",
        "0",
        "--keep-last",
        "-o",
        "ad",
    ];
    let r = gate(p, &slight);
    assert_eq!(
        r.code, 1,
        "a slight drop fails the plain gate: {}",
        r.stdout
    );
    for test in ["bootstrap", "t"] {
        let r = gate(
            p,
            &[&slight[..], &["--significance", "0.05", "--test", test]].concat(),
        );
        assert_eq!(r.code, 0, "{test}: {}", r.stdout);
        let line = r.last_json();
        assert!(
            line["delta"].as_f64().unwrap() < 0.0 && line["p_value"].as_f64().unwrap() > 0.05,
            "{line}"
        );
    }
    let strong = [
        "--data",
        &other,
        "--val",
        &data,
        "--epochs",
        "20",
        "--lr",
        "0.05",
        "--threshold",
        "0",
        "--significance",
        "0.05",
        "-o",
        "ad3",
    ];
    let r = gate(p, &strong);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.last_json()["p_value"].as_f64().unwrap() < 0.05);
    assert!(!p.join("ad3").exists());
}

#[test]
fn refusals() {
    let d = workdir();
    let p = d.path();
    let data = fixture("mlp_data.safetensors");
    // No module matches.
    let r = gate(
        p,
        &["--data", &data, "--val", &data, "--targets", "1", "-o", "x"],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("'1' matches no linear"), "{}", r.stderr);
    // No --val.
    let r = gate(p, &["--data", &data, "-o", "x"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--val"), "{}", r.stderr);
    // The CNN's adapter on the MLP.
    let cnn = fixture("lora/peft_cnn_rslora");
    let r = mnemo_in(
        p,
        &[
            "lora-gate",
            &fixture("mlp.safetensors"),
            "--arch",
            "mlp:20-16-16-5",
            "--adapter",
            &cnn,
            "--data",
            &data,
            "--val",
            &data,
            "-o",
            "x",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("peft_cnn_rslora"), "{}", r.stderr);
    let r = mnemo_in(
        p,
        &[
            "lora",
            "merge",
            &fixture("mlp.safetensors"),
            &cnn,
            "-o",
            "x.safetensors",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("peft_cnn_rslora"), "{}", r.stderr);
    assert!(!p.join("x").exists() && !p.join("x.safetensors").exists());
}

/// The state file holds the adapter (not the frozen base): a run halted mid-way and resumed
/// writes the same adapter as an uninterrupted run.
#[test]
fn halted_and_resumed_gate_gives_the_same_adapter() {
    let d = workdir();
    let p = d.path();
    let data = fixture("mlp_data.safetensors");
    let common = [
        "--data",
        &data,
        "--val",
        &data,
        "--epochs",
        "3",
        "--lr",
        "0.01",
        "--threshold",
        "1e9",
    ];
    let r = gate(p, &[&common[..], &["-o", "a"]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = gate(
        p,
        &[
            &common[..],
            &[
                "--state",
                "s.safetensors",
                "--save-every",
                "1",
                "--halt-after",
                "6",
                "-o",
                "b",
            ],
        ]
        .concat(),
    );
    assert_ne!(r.code, 0);
    assert!(!p.join("b").exists());
    let r = gate(
        p,
        &[&common[..], &["--state", "s.safetensors", "-o", "b"]].concat(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        tensors(&p.join("a/adapter_model.safetensors")),
        tensors(&p.join("b/adapter_model.safetensors"))
    );
}
