//! fisher and train-ewc against PyTorch (fixtures/gen_train.py, fixtures/train/).

mod common;
use common::*;
use mnemo::checkpoint::Checkpoint;
use serde_json::Value;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("train/expected.json")).unwrap())
        .unwrap()
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

/// The engine flags of a fixture case (schedules, clipping, smoothing, accumulation, L2).
fn engine_flags(case: &Value) -> Vec<String> {
    let mut a: Vec<String> = vec!["--log-every".into(), "1".into()];
    if let Some(ls) = case["label_smoothing"].as_f64().filter(|&v| v > 0.0) {
        a.extend(["--label-smoothing".into(), ls.to_string()]);
    }
    if let Some(k) = case["accumulate"].as_u64().filter(|&k| k > 1) {
        a.extend(["--accumulate-grad-batches".into(), k.to_string()]);
    }
    if let Some(c) = case["clip"].as_f64() {
        a.extend(["--clip-grad-norm".into(), c.to_string()]);
    }
    if let Some(l2) = case["l2"].as_array() {
        a.extend([
            "--l2-anchor".into(),
            fixture(l2[0].as_str().unwrap()),
            "--l2-lambda".into(),
            l2[1].to_string(),
        ]);
    }
    let s = &case["schedule"];
    if let Some(kind) = s["kind"].as_str() {
        a.extend(["--schedule".into(), kind.into()]);
        a.extend(["--schedule-unit".into(), s["unit"].as_str().unwrap().into()]);
        let flags = [
            ("warmup", "--warmup"),
            ("step_size", "--lr-step-size"),
            ("gamma", "--lr-gamma"),
            ("eta_min", "--eta-min"),
            ("t0", "--t0"),
            ("t_mult", "--t-mult"),
            ("t_max", "--t-max"),
        ];
        for (key, flag) in flags {
            if !s[key].is_null() {
                a.extend([flag.into(), s[key].to_string()]);
            }
        }
    }
    a
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
        args.extend(engine_flags(case));
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
        // Every update's rate and (when clipping) gradient norm, from the step events.
        let steps: Vec<&Value> = lines.iter().filter(|l| l["event"] == "step").collect();
        let want_steps: Vec<&Value> = case["epoch_log"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| e["per_step"].as_array().unwrap())
            .collect();
        assert_eq!(steps.len(), want_steps.len(), "{name}: updates");
        for (i, (got, want)) in steps.iter().zip(&want_steps).enumerate() {
            let (gl, wl) = (got["lr"].as_f64().unwrap(), want["lr"].as_f64().unwrap());
            assert!(
                (gl - wl).abs() <= 1e-12 * wl.abs().max(1e-12),
                "{name}: update {i} lr {gl} vs torch {wl}"
            );
            if let Some(wn) = want["grad_norm"].as_f64() {
                let gn = got["grad_norm"].as_f64().unwrap();
                assert!(
                    (gn - wn).abs() < 1e-5 * wn,
                    "{name}: update {i} grad norm {gn} vs torch {wn}"
                );
            }
        }
        for (got, want) in epochs.iter().zip(case["epoch_log"].as_array().unwrap()) {
            let (gl, wl) = (
                got["task_loss"].as_f64().unwrap(),
                want["task_loss"].as_f64().unwrap(),
            );
            assert!(
                (gl - wl).abs() < 1e-5 * wl.abs().max(1.0),
                "{name}: task loss {gl} vs torch {wl}"
            );
            // Both sides report the weighted penalty (λ·EWC + μ·L2).
            let (gp, wp) = (
                got["penalty"].as_f64().unwrap(),
                want["penalty"].as_f64().unwrap(),
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

/// Writes examples [from, to) of a dataset fixture as a new dataset file.
fn shard(src: &str, from: usize, to: usize, out: &std::path::Path) {
    use mnemo::checkpoint::{write_checkpoint, OwnedTensor};
    let d = Checkpoint::open(fixture(src)).unwrap();
    let mut tensors = Vec::new();
    for name in ["input", "target"] {
        let e = d.entry(name).unwrap();
        let n = e.shape[0];
        let row = d.bytes(name).unwrap().len() / n;
        let mut shape = e.shape.clone();
        shape[0] = to - from;
        tensors.push(OwnedTensor {
            name: name.into(),
            dtype: e.dtype,
            shape,
            data: d.bytes(name).unwrap()[from * row..to * row].to_vec().into(),
        });
    }
    write_checkpoint(out, tensors, &Default::default()).unwrap();
}

#[test]
fn fisher_of_shards_reduces_to_the_fisher_of_their_union() {
    let d = workdir();
    for (model, arch, data, n) in [
        (
            "mlp.safetensors",
            "mlp:20-16-16-5".to_string(),
            "mlp_data.safetensors",
            64,
        ),
        (
            "cnn.safetensors",
            fixture("cnn.arch.json"),
            "img_data.safetensors",
            48,
        ),
    ] {
        for mode in ["empirical", "true"] {
            let tag = format!("{}_{mode}", &model[..3]);
            let fisher = |data: &str, out: &str| {
                let out = d.path().join(out).to_string_lossy().into_owned();
                ok(mnemo(&[
                    "fisher",
                    &fixture(model),
                    "--arch",
                    &arch,
                    "--data",
                    data,
                    "--mode",
                    mode,
                    "--batch-size",
                    "7",
                    "-o",
                    &out,
                ]));
                out
            };
            let whole = fisher(&fixture(data), &format!("{tag}_whole.st"));
            let cut = n * 5 / 8;
            let mut parts = Vec::new();
            for (i, (a, b)) in [(0, cut), (cut, n)].into_iter().enumerate() {
                let p = d.path().join(format!("{tag}_shard{i}.st"));
                shard(data, a, b, &p);
                parts.push(fisher(&p.to_string_lossy(), &format!("{tag}_f{i}.st")));
            }
            let reduced = d.path().join(format!("{tag}_reduced.st"));
            let r = ok(mnemo(&[
                "fisher",
                "--reduce",
                &parts[0],
                &parts[1],
                "-o",
                &reduced.to_string_lossy(),
            ]));
            assert_eq!(r.last_json()["samples"], n, "{tag}");
            let (got, want) = (
                Checkpoint::open(&reduced).unwrap(),
                Checkpoint::open(&whole).unwrap(),
            );
            assert_eq!(got.metadata()["mnemo.fisher.samples"], n.to_string());
            assert_eq!(got.metadata()["mnemo.fisher.mode"], mode);
            assert_close(&got, &want, 1e-5, &Value::Null, &tag);
        }
    }
    // Shards of different modes do not combine.
    let r = mnemo(&[
        "fisher",
        "--reduce",
        &d.path().join("mlp_empirical_f0.st").to_string_lossy(),
        &d.path().join("mlp_true_f1.st").to_string_lossy(),
        "-o",
        &d.path().join("bad.st").to_string_lossy(),
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("mlp_true_f1.st") && r.stderr.contains("mode"),
        "{}",
        r.stderr
    );
    assert!(!d.path().join("bad.st").exists());
}

#[test]
fn online_fisher_accumulates_gamma_times_the_previous() {
    let d = workdir();
    let p = |s: &str| d.path().join(s).to_string_lossy().into_owned();
    let base = [
        "fisher",
        &fixture("mlp.safetensors"),
        "--arch",
        "mlp:20-16-16-5",
    ];
    let prev = fixture("train/fisher_mlp_true.safetensors");
    ok(mnemo(
        &[
            &base[..],
            &[
                "--data",
                &fixture("mlp_data.safetensors"),
                "-o",
                &p("new.st"),
            ],
        ]
        .concat(),
    ));
    ok(mnemo(
        &[
            &base[..],
            &[
                "--data",
                &fixture("mlp_data.safetensors"),
                "-o",
                &p("online.st"),
                "--accumulate",
                &prev,
                "--gamma",
                "0.25",
            ],
        ]
        .concat(),
    ));
    let (new, old, online) = (
        Checkpoint::open(p("new.st")).unwrap(),
        Checkpoint::open(&prev).unwrap(),
        Checkpoint::open(p("online.st")).unwrap(),
    );
    for name in new.names() {
        let (n, o, got) = (
            new.to_f32(name).unwrap(),
            old.to_f32(name).unwrap(),
            online.to_f32(name).unwrap(),
        );
        for i in 0..n.len() {
            let want = 0.25 * o[i] + n[i];
            assert!(
                (got[i] - want).abs() <= 1e-6 * want.abs().max(1e-6),
                "{name}[{i}]: {} vs {want}",
                got[i]
            );
        }
    }
    // An online Fisher is not a mean over samples: reducing it is refused.
    let r = mnemo(&[
        "fisher",
        "--reduce",
        &p("online.st"),
        &p("new.st"),
        "-o",
        &p("x.st"),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("online.st"), "{}", r.stderr);
}
