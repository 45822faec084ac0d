//! mnemo against PyTorch: eval numbers and state-dict layouts recorded by
//! fixtures/gen.py (regenerate with `make fixtures`).

mod common;
use common::*;
use serde_json::Value;

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
        .unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn eval_matches_torch_on_every_fixture_case() {
    let exp = expected();
    let cases = exp["cases"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let model = fixture(case["model"].as_str().unwrap());
        let data = fixture(case["data"].as_str().unwrap());
        let mut args = vec![
            "eval".to_string(),
            model,
            "--data".into(),
            data,
            "--batch-size".into(),
            "7".into(),
        ];
        if let Some(a) = case["arch"].as_str() {
            let a = if a.starts_with("mlp:") {
                a.to_string()
            } else {
                fixture(a)
            };
            args.extend(["--arch".into(), a]);
        }
        if let Some(h) = case["head"].as_str() {
            args.extend(["--head".into(), h.to_string()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = ok(mnemo(&argv));
        let got = r.last_json();
        let loss = got["loss"].as_f64().unwrap();
        let want = case["loss"].as_f64().unwrap();
        assert!(
            rel(loss, want) < 1e-5,
            "{name}: loss {loss} vs torch {want}"
        );
        assert_eq!(
            got["accuracy"].as_f64(),
            case["accuracy"].as_f64(),
            "{name}: accuracy"
        );
        assert_eq!(got["top5"].as_f64(), case["top5"].as_f64(), "{name}: top5");
        assert_eq!(got["n"], case["n"], "{name}: n");
    }
}

#[test]
fn init_writes_torch_state_dict_layouts() {
    let keys: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("state_dict_keys.json")).unwrap(),
    )
    .unwrap();
    let dir = workdir();
    for (name, entry) in keys.as_object().unwrap() {
        let arch = entry["arch"].as_str().unwrap();
        let arch = if arch.starts_with("mlp:") {
            arch.to_string()
        } else {
            fixture(arch)
        };
        let out = dir.path().join("m.safetensors");
        ok(mnemo(&[
            "init",
            "--arch",
            &arch,
            "-o",
            out.to_str().unwrap(),
        ]));
        let r = ok(mnemo(&["inspect", "--json", out.to_str().unwrap()]));
        let got = r.last_json();
        let mut got: Vec<(String, String, Value)> = got["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["name"].as_str().unwrap().into(),
                    t["dtype"].as_str().unwrap().into(),
                    t["shape"].clone(),
                )
            })
            .collect();
        let mut want: Vec<(String, String, Value)> = entry["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t[0].as_str().unwrap().into(),
                    t[1].as_str().unwrap().into(),
                    t[2].clone(),
                )
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want, "{name}: state dict differs from torch's");
    }
}

#[test]
fn u8_and_sharded_inputs_agree_with_f32() {
    // The sharded copy of the MLP is the same model: eval must agree exactly.
    let a = ok(mnemo(&[
        "eval",
        &fixture("mlp.safetensors"),
        "--arch",
        "mlp:20-16-16-5",
        "--data",
        &fixture("mlp_data.safetensors"),
    ]));
    let b = ok(mnemo(&[
        "eval",
        &fixture("mlp_sharded"),
        "--arch",
        "mlp:20-16-16-5",
        "--data",
        &fixture("mlp_data.safetensors"),
    ]));
    assert_eq!(a.last_json(), b.last_json());
}
