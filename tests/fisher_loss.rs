//! `mnemo fisher --loss` (masks, binary masks, multi-hot rows) and `--mode predicted`
//! against torch's per-example float64 loop (fixtures/fisher_loss/gen.py).

mod common;
use common::*;
use mnemo::checkpoint::Checkpoint;

/// (case, model, arch, data, extra flags)
const CASES: &[(&str, &str, &str, &str, &[&str])] = &[
    (
        "mask_ce",
        "dense/mask_conv.safetensors",
        "dense/mask.arch.json",
        "dense/mask_data.safetensors",
        &[],
    ),
    (
        "binary_dicebce",
        "dense/binary_conv.safetensors",
        "dense/binary.arch.json",
        "dense/binary_data.safetensors",
        &["--loss", "dice-bce"],
    ),
    (
        "binary_bce_b4",
        "dense/binary_conv.safetensors",
        "dense/binary.arch.json",
        "dense/binary_data.safetensors",
        &["--mode", "batch", "--batch-size", "4"],
    ),
    (
        "ml_focal",
        "dense/ml_mlp.safetensors",
        "mlp:6-5-4",
        "dense/ml_data.safetensors",
        &["--loss", "focal"],
    ),
    (
        "mlp_predicted",
        "mlp.safetensors",
        "mlp.arch.json",
        "mlp_data.safetensors",
        &["--mode", "predicted", "--batch-size", "7"],
    ),
];

#[test]
fn fisher_of_each_loss_matches_torch() {
    let want = Checkpoint::open(fixture("fisher_loss/expected.safetensors")).unwrap();
    let d = workdir();
    for (case, model, arch, data, extra) in CASES {
        let out = d.path().join(format!("{case}.safetensors"));
        let arch = if arch.starts_with("mlp:") {
            arch.to_string()
        } else {
            fixture(arch)
        };
        let mut args = vec![
            "fisher".to_string(),
            fixture(model),
            "--arch".into(),
            arch,
            "--data".into(),
            fixture(data),
            "-o".into(),
            out.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(mnemo(&argv));
        let got = Checkpoint::open(&out).unwrap();
        let mut compared = 0;
        for name in got.names() {
            let w = want.to_f32(&format!("{case}/{name}")).unwrap();
            let g = got.to_f32(name).unwrap();
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                scale > 0.0,
                "{case}/{name}: an all-zero reference proves nothing"
            );
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * scale,
                    "{case}/{name}[{i}]: mnemo {a}, torch {b}"
                );
            }
            compared += 1;
        }
        assert!(compared >= 2, "{case}: nothing compared");
    }
}

#[test]
fn the_predicted_label_fisher_differs_from_the_empirical_one() {
    // The fixture's model gets some labels wrong, so the two estimators must differ.
    let d = workdir();
    let run = |mode: &str| {
        let out = d.path().join(format!("{mode}.safetensors"));
        ok(mnemo(&[
            "fisher",
            &fixture("mlp.safetensors"),
            "--arch",
            &fixture("mlp.arch.json"),
            "--data",
            &fixture("mlp_data.safetensors"),
            "--mode",
            mode,
            "-o",
            out.to_str().unwrap(),
        ]));
        Checkpoint::open(&out).unwrap().to_f32("0.weight").unwrap()
    };
    assert_ne!(run("predicted"), run("empirical"));
}

#[test]
fn expectation_modes_refuse_losses_other_than_ce_on_class_ids() {
    let d = workdir();
    let r = mnemo_in(
        d.path(),
        &[
            "fisher",
            &fixture("dense/binary_conv.safetensors"),
            "--arch",
            &fixture("dense/binary.arch.json"),
            "--data",
            &fixture("dense/binary_data.safetensors"),
            "--mode",
            "true",
            "-o",
            "f.safetensors",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("binary_data.safetensors"), "{}", r.stderr);
    assert!(
        r.stderr.contains("the true Fisher") && r.stderr.contains("--mode"),
        "{}",
        r.stderr
    );
    assert!(!d.path().join("f.safetensors").exists());
    // A multi-hot dataset with --loss ce is refused before any model runs.
    let r = mnemo_in(
        d.path(),
        &[
            "fisher",
            &fixture("dense/ml_mlp.safetensors"),
            "--arch",
            "mlp:6-5-4",
            "--data",
            &fixture("dense/ml_data.safetensors"),
            "--loss",
            "ce",
            "-o",
            "f.safetensors",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("ml_data.safetensors"), "{}", r.stderr);
}
