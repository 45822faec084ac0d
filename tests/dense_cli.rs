//! Multi-label and mask targets through the binary, against fixtures/dense/gen.py (torch,
//! numpy, scikit-learn).

mod common;
use common::*;
use mnemo::checkpoint::Checkpoint;
use serde_json::Value;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("dense/expected.json")).unwrap())
        .unwrap()
}

fn ok(r: Run) -> Run {
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    r
}

#[test]
fn train_ewc_bce_one_sgd_step_matches_torch() {
    let dir = workdir();
    let r = ok(mnemo_in(
        dir.path(),
        &[
            "train-ewc",
            &fixture("dense/ml_mlp.safetensors"),
            "--arch",
            "mlp:6-5-4",
            "--data",
            &fixture("dense/ml_data.safetensors"),
            "--loss",
            "bce",
            "--optimizer",
            "sgd",
            "--lr",
            "0.1",
            "--batch-size",
            "8",
            "--no-shuffle",
            "-o",
            "out.safetensors",
        ],
    ));
    let got = Checkpoint::open(dir.path().join("out.safetensors")).unwrap();
    let want = Checkpoint::open(fixture("dense/ml_mlp_sgd.safetensors")).unwrap();
    let mut worst = 0f32;
    for name in want.names() {
        for (a, b) in got
            .to_f32(name)
            .unwrap()
            .iter()
            .zip(want.to_f32(name).unwrap())
        {
            worst = worst.max((a - b).abs());
        }
    }
    eprintln!("one SGD step on BCE: max |Δw| = {worst:.2e}");
    assert!(worst < 1e-6, "weights off by {worst}");
    let loss = r.json_lines()[0]["task_loss"].as_f64().unwrap();
    let want_loss = expected()["ml_sgd"]["loss"].as_f64().unwrap();
    assert!((loss - want_loss).abs() < 1e-5, "{loss} vs {want_loss}");
}

fn check_mask_eval(case: &str, extra: &[&str]) {
    // mask_void: the model of `mask` on its data with void pixels.
    let model = case.trim_end_matches("_void");
    let dir = workdir();
    let arch = fixture(&format!("dense/{model}.arch.json"));
    let mut argv = vec![
        "eval".to_string(),
        fixture(&format!("dense/{model}_conv.safetensors")),
        "--arch".into(),
        arch,
        "--data".into(),
        fixture(&format!("dense/{case}_data.safetensors")),
        "--batch-size".into(),
        "4".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = argv.iter().map(|s| s.as_str()).collect();
    let r = ok(mnemo_in(dir.path(), &argv));
    let line = r.last_json();
    let exp = &expected()[case];
    let dm = (line["miou"].as_f64().unwrap() - exp["miou"].as_f64().unwrap()).abs();
    let dl = (line["loss"].as_f64().unwrap() - exp["loss"].as_f64().unwrap()).abs();
    eprintln!("{case}: |ΔmIoU| = {dm:.1e}, |Δloss| = {dl:.1e}");
    assert!(dm < 1e-12, "{line}");
    assert!(dl < 1e-5, "{line}");
    let iou = line["iou"].as_array().unwrap();
    let want = exp["iou"].as_array().unwrap();
    assert_eq!(iou.len(), want.len());
    for (a, b) in iou.iter().zip(want) {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-12);
    }
    if let Some(acc) = exp.get("pixel_accuracy") {
        let d = (line["pixel_accuracy"].as_f64().unwrap() - acc.as_f64().unwrap()).abs();
        assert!(d < 1e-12, "{line}");
    }
    assert_eq!(line["n"], 6);
}

#[test]
fn eval_skips_void_pixels_as_torch_ignore_index_does() {
    check_mask_eval("mask_void", &[]);
    check_mask_eval("binary_void", &["--loss", "dice-bce"]);
}

#[test]
fn training_on_masks_with_void_pixels_runs_and_other_out_of_range_values_are_refused() {
    let dir = workdir();
    let train = |data: &str| {
        mnemo_in(
            dir.path(),
            &[
                "train-ewc",
                &fixture("dense/mask_conv.safetensors"),
                "--arch",
                &fixture("dense/mask.arch.json"),
                "--data",
                data,
                "--epochs",
                "1",
                "-o",
                "out.safetensors",
            ],
        )
    };
    ok(train(&fixture("dense/mask_void_data.safetensors")));
    // 254 is neither a class of a 3-channel model nor void.
    let d = Checkpoint::open(fixture("dense/mask_void_data.safetensors")).unwrap();
    let x = d.bytes("input").unwrap().to_vec();
    let mut y = d.to_i64("target").unwrap();
    let at = y.iter().position(|&v| v == 255).unwrap();
    y[at] = 254;
    let tgt: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = format!(
        r#"{{"input":{{"dtype":"F32","shape":[6,1,8,8],"data_offsets":[0,{}]}},"target":{{"dtype":"I64","shape":[6,8,8],"data_offsets":[{},{}]}}}}"#,
        x.len(),
        x.len(),
        x.len() + tgt.len()
    );
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend(header.as_bytes());
    v.extend(&x);
    v.extend(&tgt);
    let bad = dir.path().join("bad254.safetensors");
    std::fs::write(&bad, v).unwrap();
    let r = train(bad.to_str().unwrap());
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("bad254.safetensors") && r.stderr.contains("= 254"),
        "{}",
        r.stderr
    );
}

#[test]
fn eval_reports_the_miou_of_the_reference() {
    check_mask_eval("mask", &[]);
    check_mask_eval("binary", &["--loss", "dice-bce"]);
}

#[test]
fn eval_multilabel_reports_map() {
    let dir = workdir();
    let r = ok(mnemo_in(
        dir.path(),
        &[
            "eval",
            &fixture("dense/ml_mlp.safetensors"),
            "--arch",
            "mlp:6-5-4",
            "--data",
            &fixture("dense/ml_data.safetensors"),
        ],
    ));
    let line = r.last_json();
    assert_eq!(line["loss_fn"], "bce");
    assert_eq!(line["ap"].as_array().unwrap().len(), 4);
    assert!(line["map"].as_f64().is_some(), "{line}");
}

#[test]
fn loss_target_mismatches_are_refused_before_training() {
    let dir = workdir();
    let cases: [(&str, &str, &str, &str); 4] = [
        // (model, arch, data, loss)
        (
            "dense/ml_mlp.safetensors",
            "mlp:6-5-4",
            "dense/ml_data.safetensors",
            "ce",
        ),
        (
            "mlp.safetensors",
            "mlp:20-16-16-5",
            "mlp_data.safetensors",
            "bce",
        ),
        (
            "dense/ml_mlp.safetensors",
            "mlp:6-5-4",
            "dense/ml_data.safetensors",
            "dice",
        ),
        (
            "dense/mask_conv.safetensors",
            "dense/mask.arch.json",
            "dense/mask_data.safetensors",
            "dice",
        ),
    ];
    for (model, arch, data, loss) in cases {
        let arch = if arch.starts_with("mlp:") {
            arch.to_string()
        } else {
            fixture(arch)
        };
        let r = mnemo_in(
            dir.path(),
            &[
                "train-ewc",
                &fixture(model),
                "--arch",
                &arch,
                "--data",
                &fixture(data),
                "--loss",
                loss,
                "-o",
                "out.safetensors",
            ],
        );
        assert_eq!(r.code, 2, "{loss} on {data}: {}", r.stderr);
        assert!(
            r.stderr.contains("--loss") || r.stderr.contains("channel"),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert!(!dir.path().join("out.safetensors").exists());
    }
}

/// A dataset with 2 examples of [6] F32 zeros and the given target tensor.
fn dataset_with_target(path: &std::path::Path, dtype: &str, shape: &str, target: &[u8]) {
    let input = 2 * 6 * 4;
    let header = format!(
        r#"{{"input":{{"dtype":"F32","shape":[2,6],"data_offsets":[0,{input}]}},"target":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{input},{}]}}}}"#,
        input + target.len()
    );
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend(header.as_bytes());
    v.extend(vec![0u8; input]);
    v.extend(target);
    std::fs::write(path, v).unwrap();
}

#[test]
fn bad_dense_targets_are_named() {
    let dir = workdir();
    let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let i64s = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "F32",
            "[2,4]",
            f32s(&[0., 1., 0.5, 0., 1., 1., 0., 0.]),
            "must be 0 or 1",
        ),
        (
            "U8",
            "[2,4]",
            vec![0, 1, 2, 0, 1, 1, 0, 0],
            "must be 0 or 1",
        ),
        (
            "I64",
            "[2,3]",
            i64s(&[0, 1, 0, 1, 1, 0]),
            "3 labels per example but the model has 4",
        ),
        ("I64", "[2,1,2,2]", i64s(&[0; 8]), "expected [N] class ids"),
        ("F32", "[2,2,2]", f32s(&[0.; 8]), "integer dtype"),
        (
            "I64",
            "[2,2,2]",
            i64s(&[0, 0, -1, 0, 0, 0, 0, 0]),
            "negative",
        ),
    ];
    for (i, (dtype, shape, bytes, msg)) in cases.into_iter().enumerate() {
        let data = dir.path().join(format!("bad{i}.safetensors"));
        dataset_with_target(&data, dtype, shape, &bytes);
        let r = mnemo_in(
            dir.path(),
            &[
                "eval",
                &fixture("dense/ml_mlp.safetensors"),
                "--arch",
                "mlp:6-5-4",
                "--data",
                data.to_str().unwrap(),
            ],
        );
        assert_eq!(r.code, 2, "{dtype} {shape}: {}", r.stderr);
        assert!(r.stderr.contains(msg), "{dtype} {shape}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("bad{i}.safetensors")),
            "{}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
}
