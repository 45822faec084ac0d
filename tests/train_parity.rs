//! fisher and train-ewc against PyTorch (fixtures/gen_train.py, fixtures/train/).

mod common;
use common::*;
use mnemo::checkpoint::Checkpoint;
use serde_json::Value;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("train/expected.json")).unwrap())
        .unwrap()
}

fn arch_arg(a: &str) -> String {
    if a.starts_with("mlp:") {
        a.to_string()
    } else {
        fixture(a)
    }
}

/// Per tensor: max |a − b| ≤ tol · max(1, max |b|), except listed ill-conditioned entries.
fn assert_close(got: &Checkpoint, want: &Checkpoint, tol: f32, skip: &Value, case: &str) {
    for name in want.names() {
        let w = want.to_f32(name).unwrap();
        let g = got.to_f32(name).unwrap_or_else(|e| panic!("{case}: {e}"));
        let scale = w.iter().fold(1f32, |m, x| m.max(x.abs()));
        let skipped: Vec<usize> = skip[name]["indices"]
            .as_array()
            .map(|a| a.iter().map(|i| i.as_u64().unwrap() as usize).collect())
            .unwrap_or_default();
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            if skipped.contains(&i) {
                continue;
            }
            assert!(
                (a - b).abs() <= tol * scale,
                "{case}: {name}[{i}] = {a}, torch {b}"
            );
        }
    }
}

#[test]
fn fisher_matches_torch_in_every_mode() {
    let exp = expected();
    let d = workdir();
    for case in exp["fisher"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let out = d.path().join(format!("{name}.safetensors"));
        let mut args = vec![
            "fisher".to_string(),
            fixture(case["model"].as_str().unwrap()),
            "--arch".into(),
            arch_arg(case["arch"].as_str().unwrap()),
            "--data".into(),
            fixture(case["data"].as_str().unwrap()),
            "--mode".into(),
            case["mode"].as_str().unwrap().into(),
            "-o".into(),
            out.to_string_lossy().into_owned(),
        ];
        // The fast path works in batches; use an odd size so batch edges are exercised.
        let bs = case["batch_size"]
            .as_u64()
            .map(|b| b.to_string())
            .unwrap_or_else(|| "7".into());
        args.extend(["--batch-size".into(), bs]);
        if let Some(s) = case["samples"].as_u64() {
            args.extend(["--samples".into(), s.to_string()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = ok(mnemo(&argv));
        assert_eq!(r.last_json()["samples"], case["n"], "{name}");
        let got = Checkpoint::open(&out).unwrap();
        let want = Checkpoint::open(fixture(case["output"].as_str().unwrap())).unwrap();
        assert_eq!(
            got.names().collect::<Vec<_>>(),
            want.names().collect::<Vec<_>>(),
            "{name}"
        );
        assert_close(&got, &want, 1e-4, &Value::Null, name);
        assert_eq!(
            got.metadata()["mnemo.fisher.mode"],
            case["mode"].as_str().unwrap()
        );
    }
}

#[test]
fn train_ewc_matches_torch_weights_and_losses() {
    let exp = expected();
    let d = workdir();
    for case in exp["training"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let out = d.path().join(format!("{name}.safetensors"));
        let o = &case["optimizer"];
        let mut args: Vec<String> = vec![
            "train-ewc".into(),
            fixture(case["model"].as_str().unwrap()),
            "--arch".into(),
            arch_arg(case["arch"].as_str().unwrap()),
            "--data".into(),
            fixture(case["data"].as_str().unwrap()),
            "-o".into(),
            out.to_string_lossy().into_owned(),
            "--no-shuffle".into(),
            "--optimizer".into(),
            o["name"].as_str().unwrap().into(),
            "--lr".into(),
            o["lr"].to_string(),
            "--weight-decay".into(),
            o["weight_decay"].to_string(),
            "--epochs".into(),
            case["epochs"].to_string(),
            "--batch-size".into(),
            case["batch_size"].to_string(),
            "--lambda".into(),
            case["lambda"].to_string(),
        ];
        if let Some(m) = o["momentum"].as_f64() {
            args.extend(["--momentum".into(), m.to_string()]);
        }
        if o["nesterov"].as_bool() == Some(true) {
            args.push("--nesterov".into());
        }
        if o["decay"].as_str() == Some("all") {
            args.push("--decay-all".into());
        }
        if let Some(m) = case["max_batches_per_epoch"].as_u64() {
            args.extend(["--max-batches-per-epoch".into(), m.to_string()]);
        }
        for p in case["penalties"].as_array().unwrap() {
            args.extend([
                "--penalty".into(),
                format!(
                    "{}:{}",
                    fixture(p[0].as_str().unwrap()),
                    fixture(p[1].as_str().unwrap())
                ),
            ]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = ok(mnemo(&argv));
        let lines = r.json_lines();
        let epochs: Vec<&Value> = lines.iter().filter(|l| l["event"] == "epoch").collect();
        let lambda = case["lambda"].as_f64().unwrap();
        for (got, want) in epochs.iter().zip(case["epoch_log"].as_array().unwrap()) {
            let (gl, wl) = (
                got["task_loss"].as_f64().unwrap(),
                want["task_loss"].as_f64().unwrap(),
            );
            assert!(
                (gl - wl).abs() < 1e-5 * wl.abs().max(1.0),
                "{name}: task loss {gl} vs torch {wl}"
            );
            let (gp, wp) = (
                got["penalty"].as_f64().unwrap(),
                lambda * want["penalty"].as_f64().unwrap(),
            );
            assert!(
                (gp - wp).abs() < 1e-4 * wp.abs().max(1e-3),
                "{name}: penalty {gp} vs torch {wp}"
            );
        }
        assert_eq!(
            epochs.len(),
            case["epoch_log"].as_array().unwrap().len(),
            "{name}"
        );
        assert_eq!(lines.last().unwrap()["event"], "summary");
        let got = Checkpoint::open(&out).unwrap();
        let want = Checkpoint::open(fixture(case["output"].as_str().unwrap())).unwrap();
        assert_close(&got, &want, 1e-5, &case["ill_conditioned"], name);
        // num_batches_tracked advanced once per step, as in torch.
        for n in want.names().filter(|n| n.ends_with("num_batches_tracked")) {
            assert_eq!(
                got.to_i64(n).unwrap(),
                want.to_i64(n).unwrap(),
                "{name}: {n}"
            );
        }
    }
}

#[test]
fn penalty_mismatches_are_clear_errors() {
    let d = workdir();
    let out = d.path().join("o.safetensors");
    // A CNN Fisher against an MLP: names do not match.
    let r = mnemo(&[
        "train-ewc",
        &fixture("mlp.safetensors"),
        "--arch",
        "mlp:20-16-16-5",
        "--data",
        &fixture("mlp_data.safetensors"),
        "--penalty",
        &format!(
            "{}:{}",
            fixture("train/fisher_cnn_empirical.safetensors"),
            fixture("mlp.safetensors")
        ),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("fisher_cnn_empirical.safetensors")
            && r.stderr.contains("0.bias")
            && r.stderr.contains("[16]"),
        "{}",
        r.stderr
    );
    assert!(!out.exists());
    let r = mnemo(&[
        "train-ewc",
        &fixture("mlp.safetensors"),
        "--arch",
        "mlp:20-16-16-5",
        "--data",
        &fixture("mlp_data.safetensors"),
        "--penalty",
        "nocolon",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("FISHER:ANCHOR"), "{}", r.stderr);
}

#[test]
fn seeded_training_is_byte_reproducible() {
    let d = workdir();
    let run = |out: &str| {
        ok(mnemo_in(
            d.path(),
            &[
                "train-ewc",
                &fixture("cnn.safetensors"),
                "--arch",
                &fixture("cnn.arch.json"),
                "--data",
                &fixture("img_data.safetensors"),
                "--seed",
                "5",
                "--epochs",
                "2",
                "--batch-size",
                "8",
                "-o",
                out,
            ],
        ));
        std::fs::read(d.path().join(out)).unwrap()
    };
    let a = run("x.safetensors");
    let b = run("x.safetensors");
    assert_eq!(a, b);
}
