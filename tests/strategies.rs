//! The training strategies beyond EWC and replay against PyTorch (fixtures/strategies/gen.py,
//! written from the methods' definitions and Avalanche's plugins).

mod common;
use common::*;
use mnemo::checkpoint::Checkpoint;
use serde_json::Value;

fn expected() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("strategies/expected.json")).unwrap(),
    )
    .unwrap()
}

/// `train-ewc` on a case's model and data with its optimizer, epochs and batch size, in file
/// order (the references do not shuffle).
fn train_args(case: &Value, out: &str) -> Vec<String> {
    let o = &case["optimizer"];
    vec![
        "train-ewc".into(),
        fixture(case["model"].as_str().unwrap()),
        "--arch".into(),
        arch_arg(case["arch"].as_str().unwrap()),
        "--data".into(),
        fixture(case["data"].as_str().unwrap()),
        "-o".into(),
        out.into(),
        "--no-shuffle".into(),
        "--optimizer".into(),
        o["name"].as_str().unwrap().into(),
        "--lr".into(),
        o["lr"].to_string(),
        "--epochs".into(),
        case["epochs"].to_string(),
        "--batch-size".into(),
        case["batch_size"].to_string(),
    ]
}

fn lwf_args(case: &Value, out: &str) -> Vec<String> {
    let mut args = train_args(case, out);
    args.extend([
        "--distill-from".into(),
        fixture(case["teacher"].as_str().unwrap()),
        "--distill-temperature".into(),
        case["temperature"].to_string(),
        "--distill-weight".into(),
        case["weight"].to_string(),
    ]);
    if let Some(c) = case["classes"].as_array() {
        let list: Vec<String> = c.iter().map(|v| v.to_string()).collect();
        args.extend(["--distill-classes".into(), list.join(",")]);
    }
    args
}

#[test]
fn lwf_matches_torch() {
    let exp = expected();
    let d = workdir();
    for case in exp["lwf"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let out = d.path().join(format!("{name}.safetensors"));
        let args = lwf_args(case, &out.to_string_lossy());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = mnemo_in(d.path(), &argv);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let epochs: Vec<Value> = r
            .json_lines()
            .into_iter()
            .filter(|v| v["event"] == "epoch")
            .collect();
        for (got, want) in epochs.iter().zip(case["epoch_log"].as_array().unwrap()) {
            for key in ["task_loss", "distill_loss"] {
                let (g, w) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{name} epoch {}: {key} {g}, torch {w}",
                    want["epoch"]
                );
            }
        }
        let got = Checkpoint::open(&out).unwrap();
        let want = Checkpoint::open(fixtures().join(case["output"].as_str().unwrap())).unwrap();
        assert_close(&got, &want, 1e-5, name);
    }
}

#[test]
fn lwf_without_the_term_is_plain_training() {
    // Weight 0: the same bytes as no distillation at all (the term adds nothing).
    let exp = expected();
    let case = &exp["lwf"][0];
    let d = workdir();
    let a = d.path().join("a.safetensors");
    let b = d.path().join("b.safetensors");
    let mut args = lwf_args(case, &a.to_string_lossy());
    let w = args.iter().position(|s| s == "--distill-weight").unwrap();
    args[w + 1] = "0".into();
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(mnemo_in(d.path(), &argv).code, 0);
    let plain: Vec<String> = lwf_args(case, &b.to_string_lossy())
        .into_iter()
        .take_while(|s| s != "--distill-from")
        .collect();
    let argv: Vec<&str> = plain.iter().map(String::as_str).collect();
    assert_eq!(mnemo_in(d.path(), &argv).code, 0);
    let (ca, cb) = (Checkpoint::open(&a).unwrap(), Checkpoint::open(&b).unwrap());
    for n in cb.names() {
        assert_eq!(ca.to_f32(n).unwrap(), cb.to_f32(n).unwrap(), "{n}");
    }
}

#[test]
fn lwf_refuses_a_teacher_of_another_shape_and_bad_settings() {
    let d = workdir();
    let out = d.path().join("o.safetensors");
    let o = out.to_string_lossy().into_owned();
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "train-ewc",
            &fixture("mlp.safetensors"),
            "--arch",
            "mlp:20-16-16-5",
            "--data",
            &fixture("mh_b_data.safetensors"),
            "-o",
            &o,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let teacher = fixture("strategies/teacher_mlp.safetensors");
    for (extra, named) in [
        (
            vec![
                "--distill-from",
                teacher.as_str(),
                "--distill-temperature",
                "0",
            ],
            "--distill-temperature",
        ),
        (
            vec!["--distill-from", teacher.as_str(), "--distill-weight=-1"],
            "--distill-weight",
        ),
        (
            vec![
                "--distill-from",
                teacher.as_str(),
                "--distill-classes",
                "0,9",
            ],
            "class 9",
        ),
        (
            // A CNN teacher for an MLP student: refused, naming the teacher's file.
            vec![
                "--distill-from",
                &fixture("cnn.safetensors"),
                "--distill-arch",
                &fixture("cnn.arch.json"),
            ],
            "cnn.safetensors",
        ),
    ] {
        let args = base(&extra);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = mnemo_in(d.path(), &argv);
        assert_eq!(r.code, 2, "{extra:?}: {}", r.stderr);
        assert!(r.stderr.contains(named), "{extra:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert!(!out.exists(), "{extra:?} wrote an output");
    }
}

#[test]
fn lwf_resumes_exactly_from_a_state_file() {
    // Halted mid-epoch after a save, then resumed: the same weights and the same epoch
    // lines (the distillation's running sums travel in the state file).
    let exp = expected();
    let case = &exp["lwf"][0];
    let d = workdir();
    let full = d.path().join("full.safetensors");
    let out = d.path().join("resumed.safetensors");
    let state = d.path().join("run.state");
    let mut args = lwf_args(case, &full.to_string_lossy());
    args.retain(|a| a != "--no-shuffle");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = mnemo_in(d.path(), &argv);
    assert_eq!(a.code, 0, "{}", a.stderr);
    let mut b = lwf_args(case, &out.to_string_lossy());
    b.retain(|a| a != "--no-shuffle");
    b.extend(["--state", &state.to_string_lossy(), "--save-every", "3"].map(String::from));
    let mut halted = b.clone();
    halted.extend(["--halt-after".into(), "5".into()]);
    let argv: Vec<&str> = halted.iter().map(String::as_str).collect();
    assert_eq!(mnemo_in(d.path(), &argv).code, 2);
    assert!(state.exists() && !out.exists());
    let argv: Vec<&str> = b.iter().map(String::as_str).collect();
    let r = mnemo_in(d.path(), &argv);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json_lines()[0]["event"], "resumed");
    let (ca, cb) = (
        Checkpoint::open(&full).unwrap(),
        Checkpoint::open(&out).unwrap(),
    );
    for n in ca.names() {
        assert_eq!(ca.to_f32(n).unwrap(), cb.to_f32(n).unwrap(), "{n}");
    }
    let distill = |lines: Vec<Value>| -> Vec<f64> {
        lines
            .iter()
            .filter(|v| v["event"] == "epoch")
            .map(|v| v["distill_loss"].as_f64().unwrap())
            .collect()
    };
    let whole = distill(a.json_lines());
    let resumed = distill(r.json_lines());
    // The resumed process reports the epochs it finished; the halted one was mid-epoch 1
    // of 2 (4 updates an epoch), so both epochs are reported again.
    assert_eq!(resumed, whole[whole.len() - resumed.len()..]);
}

#[test]
fn si_importance_matches_torch() {
    let exp = expected();
    let d = workdir();
    for case in exp["si"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let out = d.path().join(format!("{name}.safetensors"));
        let omega = d.path().join(format!("{name}_omega.safetensors"));
        let mut args = train_args(case, &out.to_string_lossy());
        args.extend([
            "--si-importance".into(),
            omega.to_string_lossy().into_owned(),
            "--si-xi".into(),
            case["xi"].to_string(),
        ]);
        if let Some(p) = case["penalty"].as_array() {
            args.extend([
                "--penalty".into(),
                format!(
                    "{}:{}",
                    fixture(p[0].as_str().unwrap()),
                    fixture(p[1].as_str().unwrap())
                ),
                "--lambda".into(),
                case["lambda"].to_string(),
            ]);
        }
        if let Some(p) = case["prior"].as_str() {
            args.extend(["--si-prior".into(), fixture(p)]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = mnemo_in(d.path(), &argv);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let want = |k: &str| Checkpoint::open(fixtures().join(case[k].as_str().unwrap())).unwrap();
        assert_close(
            &Checkpoint::open(&out).unwrap(),
            &want("output"),
            1e-5,
            name,
        );
        assert_close(
            &Checkpoint::open(&omega).unwrap(),
            &want("omega"),
            1e-5,
            name,
        );
        // The importance is a penalty file for the next task, as a Fisher file is.
        let next = d.path().join(format!("{name}_next.safetensors"));
        let pair = format!("{}:{}", omega.display(), out.display());
        let r = mnemo_in(
            d.path(),
            &[
                "train-ewc",
                &out.to_string_lossy(),
                "--arch",
                case["arch"].as_str().unwrap(),
                "--data",
                &fixture(case["data"].as_str().unwrap()),
                "--penalty",
                &pair,
                "--lambda",
                "1",
                "-o",
                &next.to_string_lossy(),
            ],
        );
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
    }
}

#[test]
fn mas_importance_matches_torch() {
    let exp = expected();
    let d = workdir();
    for case in exp["mas"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let out = d.path().join(format!("{name}.safetensors"));
        let r = mnemo_in(
            d.path(),
            &[
                "fisher",
                &fixture(case["model"].as_str().unwrap()),
                "--arch",
                &arch_arg(case["arch"].as_str().unwrap()),
                "--data",
                &fixture(case["data"].as_str().unwrap()),
                "--mode",
                "mas",
                "-o",
                &out.to_string_lossy(),
            ],
        );
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let want = Checkpoint::open(fixtures().join(case["output"].as_str().unwrap())).unwrap();
        assert_close(&Checkpoint::open(&out).unwrap(), &want, 1e-5, name);
    }
}
