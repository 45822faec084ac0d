//! `mnemo merge` end to end: every fixture case of `fixtures/merge/cases.json` (mergekit
//! and torch references) through the command line, sharded inputs, and clear errors.

mod common;
use common::*;
use mnemo::checkpoint::Checkpoint;
use serde_json::Value;

/// The command-line flags equivalent to a case's method JSON.
fn flags(method: &Value) -> (String, Vec<String>) {
    let name = method["method"].as_str().unwrap().replace('_', "-");
    let mut a = Vec::new();
    for (k, v) in method.as_object().unwrap() {
        match (k.as_str(), v) {
            ("method", _) => {}
            ("weights", Value::Array(w)) => {
                let w: Vec<String> = w.iter().map(|x| x.to_string()).collect();
                a.extend(["--weights".into(), w.join(",")]);
            }
            ("normalize", Value::Bool(true)) => a.push("--normalize".into()),
            ("normalize", Value::Bool(false)) => a.push("--no-normalize".into()),
            ("ties", Value::Bool(true)) => a.push("--ties".into()),
            (k, v) => a.extend([format!("--{}", k.replace('_', "-")), v.to_string()]),
        }
    }
    (name, a)
}

/// Max |got − want| ≤ 1e-5·max(1, |want|) over every tensor, same names, dtypes and shapes.
fn close(got: &Checkpoint, want: &Checkpoint, case: &str) {
    assert_eq!(
        got.names().collect::<Vec<_>>(),
        want.names().collect::<Vec<_>>(),
        "{case}"
    );
    for n in want.names() {
        let (g, w) = (got.entry(n).unwrap(), want.entry(n).unwrap());
        assert_eq!((g.dtype, &g.shape), (w.dtype, &w.shape), "{case}: {n}");
        if !w.dtype.is_float() {
            assert_eq!(got.bytes(n).unwrap(), want.bytes(n).unwrap(), "{case}: {n}");
            continue;
        }
        // 16-bit outputs may differ by one rounding step (f64 vs f32 accumulation).
        let tol = if w.dtype.size() == 2 { 8e-3 } else { 1e-5 };
        for (i, (a, b)) in got
            .to_f32(n)
            .unwrap()
            .iter()
            .zip(want.to_f32(n).unwrap())
            .enumerate()
        {
            assert!(
                (a - b).abs() <= tol * b.abs().max(1.0),
                "{case}: {n}[{i}] {a} vs {b}"
            );
        }
    }
}

#[test]
fn every_reference_case_through_the_command_line() {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("merge/cases.json")).unwrap())
            .unwrap();
    let d = workdir();
    for case in cases["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        let (method, extra) = flags(&case["method"]);
        let out = d.path().join(format!("{id}.safetensors"));
        let mut args: Vec<String> = vec!["merge".into(), method];
        for i in case["inputs"].as_array().unwrap() {
            args.push(fixture(&format!("merge/{}", i.as_str().unwrap())));
        }
        if let Some(b) = case["base"].as_str() {
            args.extend(["--base".into(), fixture(&format!("merge/{b}"))]);
        }
        let fishers = case["fishers"].as_array().unwrap();
        if !fishers.is_empty() {
            args.push("--fisher".into());
            for f in fishers {
                args.push(fixture(&format!("merge/{}", f.as_str().unwrap())));
            }
        }
        args.extend(extra);
        args.extend(["-o".into(), out.to_string_lossy().into_owned()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = ok(mnemo(&argv));
        assert_eq!(r.last_json()["output"], out.to_string_lossy().as_ref());
        let want = Checkpoint::open(fixture(&format!(
            "merge/{}",
            case["expected"].as_str().unwrap()
        )))
        .unwrap();
        close(&Checkpoint::open(&out).unwrap(), &want, id);
    }
}

#[test]
fn sharded_inputs_merge_and_provenance_is_recorded() {
    let d = workdir();
    let out = d.path().join("m.safetensors");
    // A sharded checkpoint (index.json) and the same model as one file: their mean is itself.
    ok(mnemo(&[
        "merge",
        "linear",
        &fixture("mlp_sharded/model.safetensors.index.json"),
        &fixture("mlp.safetensors"),
        "--alpha",
        "0.5",
        "-o",
        &out.to_string_lossy(),
    ]));
    let (got, want) = (
        Checkpoint::open(&out).unwrap(),
        Checkpoint::open(fixture("mlp.safetensors")).unwrap(),
    );
    close(&got, &want, "sharded");
    let meta = got.metadata();
    assert!(meta["mnemo.command"].contains("merge linear"));
    assert!(meta["mnemo.inputs"].contains("blake3:"));
}

#[test]
fn dare_is_seeded_and_mismatches_are_refused() {
    let d = workdir();
    let p = |s: &str| d.path().join(s).to_string_lossy().into_owned();
    let dare = |seed: &str, out: &str| {
        ok(mnemo(&[
            "merge",
            "dare",
            "--base",
            &fixture("merge/base.safetensors"),
            &fixture("merge/a.safetensors"),
            &fixture("merge/b.safetensors"),
            "--density",
            "0.5",
            "--seed",
            seed,
            "-o",
            &p(out),
        ]));
        // Tensor bytes (the metadata holds the command line, which names the output).
        let c = Checkpoint::open(p(out)).unwrap();
        let names: Vec<String> = c.names().map(String::from).collect();
        names
            .iter()
            .flat_map(|n| c.bytes(n).unwrap().to_vec())
            .collect::<Vec<u8>>()
    };
    let (a, b, c) = (dare("7", "a.st"), dare("7", "b.st"), dare("8", "c.st"));
    assert!(a == b, "same seed, same tensors");
    assert!(a != c, "another seed, other masks");
    // Models of different architectures: exit 2, the tensor named, no output.
    let r = mnemo(&[
        "merge",
        "linear",
        &fixture("mlp.safetensors"),
        &fixture("cnn.safetensors"),
        "-o",
        &p("bad.st"),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("cnn.safetensors"), "{}", r.stderr);
    assert!(!d.path().join("bad.st").exists());
    // A method's missing parameter.
    let r = mnemo(&[
        "merge",
        "ties",
        "--base",
        &fixture("merge/base.safetensors"),
        &fixture("merge/a.safetensors"),
        "-o",
        &p("x.st"),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--density"), "{}", r.stderr);
}

#[test]
fn sharded_output_and_output_dtype() {
    let d = workdir();
    let p = |s: &str| d.path().join(s).to_string_lossy().into_owned();
    let ins = [
        fixture("merge/a.safetensors"),
        fixture("merge/b.safetensors"),
        fixture("merge/c.safetensors"),
    ];
    let base = [
        "merge",
        "ties",
        "--base",
        &fixture("merge/base.safetensors"),
        &ins[0],
        &ins[1],
        &ins[2],
        "--density",
        "0.3",
    ];
    ok(mnemo(&[&base[..], &["-o", &p("one.st")]].concat()));
    // 600-byte shards: several files and an index, read back as one checkpoint.
    let r = ok(mnemo(
        &[&base[..], &["-o", &p("sharded"), "--shard-size", "600B"]].concat(),
    ));
    let files = r.last_json()["files"].as_array().unwrap().len();
    assert!(files > 2, "{}", r.stdout);
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d.path().join("sharded/model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    assert!(index["metadata"]["total_size"].as_u64().unwrap() > 0);
    assert!(index["weight_map"].as_object().unwrap().len() > 3);
    let (one, sharded) = (
        Checkpoint::open(p("one.st")).unwrap(),
        Checkpoint::open(p("sharded")).unwrap(),
    );
    for n in one.names() {
        assert_eq!(one.bytes(n).unwrap(), sharded.bytes(n).unwrap(), "{n}");
    }
    // --dtype f16: float tensors in F16, close to the F32 merge; counters unchanged.
    ok(mnemo(
        &[&base[..], &["-o", &p("half.st"), "--dtype", "f16"]].concat(),
    ));
    let half = Checkpoint::open(p("half.st")).unwrap();
    for n in one.names() {
        let (e1, e2) = (one.entry(n).unwrap(), half.entry(n).unwrap());
        if e1.dtype.is_float() {
            assert_eq!(e2.dtype.to_string(), "F16", "{n}");
            for (a, b) in one.to_f32(n).unwrap().iter().zip(half.to_f32(n).unwrap()) {
                assert!((a - b).abs() <= 1e-3 * a.abs().max(1.0), "{n}: {a} vs {b}");
            }
        } else {
            assert_eq!(e1.dtype, e2.dtype);
            assert_eq!(one.bytes(n).unwrap(), half.bytes(n).unwrap());
        }
    }
}

/// A sharded merge written over an earlier sharded output: the old index must not outlive
/// it (readers open the index first, so a one-shard result beside a stale index read as the
/// old model).
#[test]
fn sharded_output_replaces_an_older_sharded_output() {
    let d = workdir();
    let p = |s: &str| d.path().join(s).to_string_lossy().into_owned();
    let (a, b) = (
        fixture("merge/a.safetensors"),
        fixture("merge/b.safetensors"),
    );
    let merge = |alpha: &str, shard: &str| {
        ok(mnemo(&[
            "merge",
            "linear",
            &a,
            &b,
            "--alpha",
            alpha,
            "--shard-size",
            shard,
            "-o",
            &p("out"),
        ]))
    };
    merge("0.9", "600B");
    assert!(d.path().join("out/model.safetensors.index.json").exists());
    // The same folder, now one shard (no index).
    merge("0.1", "1GB");
    assert!(!d.path().join("out/model.safetensors.index.json").exists());
    ok(mnemo(&[
        "merge",
        "linear",
        &a,
        &b,
        "--alpha",
        "0.1",
        "-o",
        &p("one.st"),
    ]));
    let r = mnemo(&["diff", &p("out"), &p("one.st")]);
    assert_eq!(r.code, 0, "the folder reads as the new merge: {}", r.stdout);
    // And several shards over several shards.
    merge("0.9", "600B");
    ok(mnemo(&[
        "merge",
        "linear",
        &a,
        &b,
        "--alpha",
        "0.9",
        "-o",
        &p("nine.st"),
    ]));
    assert_eq!(mnemo(&["diff", &p("out"), &p("nine.st")]).code, 0);
}

#[test]
fn skip_mismatched_merges_the_common_tensors() {
    use mnemo::checkpoint::{write_checkpoint, OwnedTensor};
    let d = workdir();
    let p = |s: &str| d.path().join(s).to_string_lossy().into_owned();
    // A copy of the MLP with the last layer reshaped and one extra tensor.
    let mlp = Checkpoint::open(fixture("mlp.safetensors")).unwrap();
    let mut tensors = Vec::new();
    for n in mlp.names() {
        let v = mlp.to_f32(n).unwrap();
        let shape = if n == "4.weight" {
            vec![1, v.len()]
        } else {
            mlp.entry(n).unwrap().shape.clone()
        };
        tensors.push(OwnedTensor::f32(n, shape, &v));
    }
    tensors.push(OwnedTensor::f32("extra.bias", vec![2], &[1.0, 2.0]));
    write_checkpoint(d.path().join("other.st"), tensors, &Default::default()).unwrap();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "merge".to_string(),
            "linear".into(),
            fixture("mlp.safetensors"),
            p("other.st"),
            "--alpha".into(),
            "0.5".into(),
            "-o".into(),
            p("m.st"),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let argv = args(&[]);
    let r = mnemo(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("4.weight"), "{}", r.stderr);
    let argv = args(&["--skip-mismatched"]);
    let r = ok(mnemo(&argv.iter().map(String::as_str).collect::<Vec<_>>()));
    let skipped = r.last_json()["skipped"].clone();
    assert_eq!(skipped, serde_json::json!(["4.weight", "extra.bias"]));
    let m = Checkpoint::open(p("m.st")).unwrap();
    assert!(!m.contains("4.weight") && m.contains("4.bias"));
    assert_eq!(
        m.to_f32("0.weight").unwrap(),
        mlp.to_f32("0.weight").unwrap()
    );
}

/// `-o DIR/` from the flags: a model folder, its weights in `model.safetensors` and the
/// base's config.json and generation_config.json beside them (config.json's dtype following
/// --dtype), which loads as the folder it came from.
#[test]
fn a_merge_into_a_folder_is_a_model_folder() {
    let dir = workdir();
    let base = fixtures().join("lm/llama3_bias");
    let b = base.to_string_lossy().into_owned();
    let r = ok(mnemo_in(
        dir.path(),
        &["merge", "linear", &b, &b, "--dtype", "bf16", "-o", "out/"],
    ));
    let out = dir.path().join("out");
    assert_eq!(r.last_json()["output"], "out/");
    let w = Checkpoint::open(out.join("model.safetensors")).unwrap();
    let src = Checkpoint::open(base.join("model.safetensors")).unwrap();
    assert_eq!(w.names().count(), src.names().count());
    assert!(w
        .names()
        .all(|n| w.entry(n).unwrap().dtype == mnemo::checkpoint::Dtype::BF16));
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["dtype"], "bfloat16");
    assert_eq!(
        std::fs::read(out.join("generation_config.json")).unwrap(),
        std::fs::read(base.join("generation_config.json")).unwrap()
    );
    let data = fixtures().join("lm/data.safetensors");
    ok(mnemo_in(
        dir.path(),
        &["eval", "out", "--data", &data.to_string_lossy()],
    ));
    // Into the input's own folder: refused before anything is written.
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let r = mnemo_in(dir.path(), &["merge", "linear", "out", "out", "-o", "out/"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("the input (out/model.safetensors)"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        before
    );
}
