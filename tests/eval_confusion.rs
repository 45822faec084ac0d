//! `eval` on class ids: per-class accuracy and the confusion matrix, checked against the
//! model's own predictions counted here; `report --confusion` draws them.

mod common;
use common::*;
use mnemo::data::Dataset;
use mnemo::model::{Mode, Model};
use mnemo::rng::Rng;
use serde_json::{json, Value};
use std::path::Path;

/// The arg-max of every example, computed here from the model's logits (lowest index on ties).
fn predictions(model: &Path, arch: &str, data: &Path) -> (Vec<usize>, Vec<i64>, usize) {
    let dev = candle_core::Device::Cpu;
    let (mut m, _) = Model::open(model, Some(arch), &dev).unwrap();
    let d = Dataset::open(data).unwrap();
    let idx: Vec<usize> = (0..d.len()).collect();
    let (x, y) = d.batch(&idx, &dev).unwrap();
    let l = m.forward(&x, None, Mode::Eval, &mut Rng::new(0)).unwrap();
    let k = l.dims()[1];
    let v: Vec<f32> = l.flatten_all().unwrap().to_vec1().unwrap();
    let pred = v
        .chunks(k)
        .map(|r| {
            let mut best = 0;
            for (i, &s) in r.iter().enumerate() {
                if s > r[best] {
                    best = i;
                }
            }
            best
        })
        .collect();
    (pred, y, k)
}

fn expected(pred: &[usize], y: &[i64], k: usize) -> (Vec<Vec<u64>>, Vec<Value>) {
    let mut c = vec![vec![0u64; k]; k];
    for (&p, &t) in pred.iter().zip(y) {
        c[t as usize][p] += 1;
    }
    let per = c
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let n: u64 = row.iter().sum();
            if n == 0 {
                Value::Null
            } else {
                json!(row[i] as f64 / n as f64)
            }
        })
        .collect();
    (c, per)
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-12,
        _ => a == b,
    }
}

#[test]
fn eval_reports_per_class_accuracy_and_the_confusion_matrix() {
    let d = workdir();
    let dir = d.path();
    let (model, data) = (fixture("mlp.safetensors"), fixture("mlp_data.safetensors"));
    let arch = "mlp:20-16-16-5";
    let line = ok(mnemo_in(
        dir,
        &["eval", &model, "--arch", arch, "--data", &data],
    ))
    .last_json();
    // The existing fields are unchanged (torch's values, fixtures/expected.json).
    assert_eq!(
        (
            line["accuracy"].as_f64(),
            line["top5"].as_f64(),
            line["n"].as_u64()
        ),
        (Some(0.1875), Some(1.0), Some(64))
    );
    assert!((line["loss"].as_f64().unwrap() - 1.599342880770564).abs() < 1e-5);
    let (pred, y, k) = predictions(Path::new(&model), arch, Path::new(&data));
    let (c, per) = expected(&pred, &y, k);
    assert_eq!(line["confusion"], json!(c));
    let got = line["per_class_accuracy"].as_array().unwrap();
    assert_eq!(got.len(), 5);
    assert!(
        got.iter().zip(&per).all(|(a, b)| close(a, b)),
        "{got:?} vs {per:?}"
    );
    // The diagonal is the accuracy; the rows are the classes' sizes.
    let diag: u64 = (0..k).map(|i| c[i][i]).sum();
    assert_eq!(diag as f64 / 64.0, 0.1875);

    // Classes absent from the data: null accuracy, empty rows.
    ok(mnemo_in(
        dir,
        &["data", "split", &data, "--classes", "0,1", "-o", "01.st"],
    ));
    let line = ok(mnemo_in(
        dir,
        &["eval", &model, "--arch", arch, "--data", "01.st"],
    ))
    .last_json();
    let per = line["per_class_accuracy"].as_array().unwrap();
    assert!(
        per[..2].iter().all(|v| v.is_number()) && per[2..].iter().all(Value::is_null),
        "{per:?}"
    );
    let rows: Vec<Vec<u64>> = serde_json::from_value(line["confusion"].clone()).unwrap();
    assert!(rows[2..].iter().all(|r| r.iter().all(|&v| v == 0)));
    assert_eq!(
        rows.iter().flatten().sum::<u64>(),
        line["n"].as_u64().unwrap()
    );

    // Above 100 classes the matrix is left out unless --confusion asks for it.
    ok(mnemo_in(
        dir,
        &["init", "--arch", "mlp:20-101", "-o", "big.st"],
    ));
    let line = ok(mnemo_in(dir, &["eval", "big.st", "--data", &data])).last_json();
    assert!(line.get("confusion").is_none());
    assert_eq!(line["per_class_accuracy"].as_array().unwrap().len(), 101);
    let line = ok(mnemo_in(
        dir,
        &["eval", "big.st", "--data", &data, "--confusion"],
    ))
    .last_json();
    let rows = line["confusion"].as_array().unwrap();
    assert_eq!((rows.len(), rows[0].as_array().unwrap().len()), (101, 101));
}

#[test]
fn report_draws_confusion_matrices() {
    let d = workdir();
    let dir = d.path();
    let (model, data) = (fixture("cnn.safetensors"), fixture("img_data.safetensors"));
    let r = ok(mnemo_in(
        dir,
        &[
            "eval",
            &model,
            "--arch",
            &fixture("cnn.arch.json"),
            "--data",
            &data,
            &data,
        ],
    ));
    std::fs::write(dir.join("eval.jsonl"), &r.stdout).unwrap();
    for fig in ["cm.png", "cm.svg"] {
        let r = ok(mnemo_in(
            dir,
            &["report", "--confusion", "eval.jsonl", "-o", fig],
        ));
        let j = r.last_json();
        assert_eq!(
            (j["kind"].as_str(), j["panels"].as_u64()),
            (Some("confusion"), Some(2))
        );
        let bytes = std::fs::read(dir.join(fig)).unwrap();
        if fig.ends_with("png") {
            let img = image::load_from_memory(&bytes).unwrap();
            assert!(img.width() > 400 && img.height() > 300);
        } else {
            let s = String::from_utf8(bytes).unwrap();
            assert!(s.contains("predicted class") && s.contains("img_data"));
        }
    }
    // The same from stdin, and as Markdown tables.
    let text = std::fs::read(dir.join("eval.jsonl")).unwrap();
    let r = mnemo_stdin(dir, &["report", "--confusion", "-", "--markdown"], &text);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("| true \\ predicted | 0 | 1 |"),
        "{}",
        r.stdout
    );
    // Lines without a matrix, or a matrix that is not square: exit 2 naming the file.
    std::fs::write(dir.join("none.jsonl"), "{\"loss\":1}\n").unwrap();
    std::fs::write(dir.join("bad.jsonl"), "{\"confusion\":[[1,2],[3]]}\n").unwrap();
    for (f, words) in [
        ("none.jsonl", "no line with a 'confusion'"),
        ("bad.jsonl", "bad.jsonl:1: 'confusion' is not a square"),
    ] {
        let r = mnemo_in(dir, &["report", "--confusion", f, "-o", "x.png"]);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(r.stderr.contains(words), "{}", r.stderr);
        assert!(!dir.join("x.png").exists());
    }
    let r = mnemo_in(
        dir,
        &[
            "report",
            "--confusion",
            "eval.jsonl",
            "eval.jsonl",
            "-o",
            "x.png",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = mnemo_in(
        dir,
        &["report", "--confusion", "eval.jsonl", "-o", "eval.jsonl"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
}
