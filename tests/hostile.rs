//! Hostile and broken inputs through the real binary, command by command. Every refusal
//! must: exit 2, name the file (and the tensor or line) on stderr, not panic, create no
//! output (nor leave a temporary file), and leave every input byte for byte as it was.
//! `refused` checks all of that by snapshotting the test's folder before and after.
//! (The header-validator basics for `inspect` alone are in tests/cli.rs.)

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ARCH: &str = "mlp:20-16-16-5";

/// Every file under `dir` (recursively) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// Runs mnemo in `dir` and expects a clean refusal: exit 2, every string of `named` on
/// stderr, no panic, and the folder exactly as before (inputs untouched, nothing created).
fn refused(dir: &Path, args: &[&str], named: &[&str]) -> String {
    let before = snapshot(dir);
    let r = mnemo_in(dir, args);
    let what = format!("mnemo {}", args.join(" "));
    assert_eq!(
        r.code, 2,
        "{what}: exit {}\nstderr: {}\nstdout: {}",
        r.code, r.stderr, r.stdout
    );
    assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
    assert!(
        r.stderr.starts_with("mnemo: error: ") || r.stderr.starts_with("error: "),
        "{what}: {}",
        r.stderr
    );
    for n in named {
        assert!(
            r.stderr.contains(n),
            "{what}: stderr does not name '{n}': {}",
            r.stderr
        );
    }
    let after = snapshot(dir);
    let created: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert!(created.is_empty(), "{what}: created {created:?}");
    for (k, v) in &before {
        assert!(after.get(k) == Some(v), "{what}: changed or removed {k:?}");
    }
    r.stderr
}

/// A safetensors file from a header and a data section.
fn st(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend(header.as_bytes());
    v.extend(data);
    v
}

/// `file`'s bytes with element `index` of F32 tensor `tensor` set to `v`.
fn poke(file: &Path, tensor: &str, index: usize, v: f32) -> Vec<u8> {
    let mut b = std::fs::read(file).unwrap();
    let hlen = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + hlen]).unwrap();
    assert_eq!(header[tensor]["dtype"], "F32");
    let off = 8 + hlen + header[tensor]["data_offsets"][0].as_u64().unwrap() as usize + 4 * index;
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    b
}

/// A folder holding copies of the fixtures a test uses (so they are hashed too).
fn setup(files: &[&str]) -> tempfile::TempDir {
    let d = workdir();
    for f in files {
        std::fs::copy(fixture(f), d.path().join(f)).unwrap();
    }
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Broken or malicious safetensors files, each in every role a command gives a file: a
/// model (inspect, eval, fisher, diff, merge, lora merge), a dataset, a Fisher or anchor of
/// a penalty, a replay buffer (which must not be replaced).
#[test]
fn corrupt_safetensors_are_refused_by_every_command() {
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    let mlp = std::fs::read(p.join("mlp.safetensors")).unwrap();
    let hlen = u64::from_le_bytes(mlp[..8].try_into().unwrap()) as usize;
    let over = |n: u64| {
        let mut v = n.to_le_bytes().to_vec();
        v.extend(b"{}");
        v
    };
    // (file, bytes, what stderr says, the tensor it names)
    let cases: Vec<(&str, Vec<u8>, &str, Option<&str>)> = vec![
        (
            "trunc_len.safetensors",
            mlp[..5].to_vec(),
            "too short",
            None,
        ),
        (
            "trunc_header.safetensors",
            mlp[..8 + hlen / 2].to_vec(),
            "past the end",
            None,
        ),
        // The last tensor in the file (4.weight) loses its tail.
        (
            "trunc_data.safetensors",
            mlp[..mlp.len() - 12].to_vec(),
            "out of range",
            Some("4.weight"),
        ),
        // A 100 MB header claim in a tiny file, and one just over the limit.
        (
            "header_100mb.safetensors",
            over(100_000_000),
            "past the end",
            None,
        ),
        ("header_limit.safetensors", over(100_000_001), "limit", None),
        (
            "overlap.safetensors",
            st(
                r#"{"w_a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w_b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                &[0; 12],
            ),
            "overlaps",
            Some("w_b"),
        ),
        (
            "out_of_range.safetensors",
            st(
                r#"{"w_far":{"dtype":"F32","shape":[4],"data_offsets":[1000000,1000016]}}"#,
                &[0; 16],
            ),
            "out of range",
            Some("w_far"),
        ),
        (
            "reversed.safetensors",
            st(
                r#"{"w_rev":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}"#,
                &[0; 8],
            ),
            "reversed",
            Some("w_rev"),
        ),
        (
            "dtype_shape.safetensors",
            st(
                r#"{"w_size":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
            "needs 12",
            Some("w_size"),
        ),
        (
            "bf16_shape.safetensors",
            st(
                r#"{"w_half":{"dtype":"BF16","shape":[4,4],"data_offsets":[0,16]}}"#,
                &[0; 16],
            ),
            "needs 32",
            Some("w_half"),
        ),
        (
            "duplicate.safetensors",
            st(
                r#"{"w_dup":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w_dup":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                &[0; 8],
            ),
            "duplicate",
            Some("w_dup"),
        ),
        (
            "gap.safetensors",
            st(
                r#"{"w_gap":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
                &[0; 8],
            ),
            "unused bytes",
            Some("w_gap"),
        ),
    ];
    for (name, bytes, _, _) in &cases {
        std::fs::write(p.join(name), bytes).unwrap();
    }
    for (name, _, msg, tensor) in &cases {
        let mut named = vec![*name, *msg];
        named.extend(tensor);
        let penalty = format!("{name}:mlp.safetensors");
        let anchor = format!("mlp.safetensors:{name}");
        let roles: Vec<Vec<&str>> = vec![
            vec!["inspect", name],
            vec!["inspect", "--stats", "--json", name],
            vec![
                "eval",
                name,
                "--arch",
                ARCH,
                "--data",
                "mlp_data.safetensors",
            ],
            vec!["eval", "mlp.safetensors", "--arch", ARCH, "--data", name],
            vec![
                "fisher",
                name,
                "--arch",
                ARCH,
                "--data",
                "mlp_data.safetensors",
                "-o",
                "out.safetensors",
            ],
            // As the Fisher of a penalty, and as its anchor (both files are opened, so
            // validated, before either is used).
            vec![
                "train-ewc",
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "mlp_data.safetensors",
                "--penalty",
                &penalty,
                "-o",
                "out.safetensors",
            ],
            vec![
                "train-ewc",
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "mlp_data.safetensors",
                "--penalty",
                &anchor,
                "-o",
                "out.safetensors",
            ],
            vec![
                "replay-train",
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "mlp_data.safetensors",
                "--buffer",
                name,
                "-o",
                "out.safetensors",
            ],
            vec![
                "merge",
                "linear",
                name,
                "mlp.safetensors",
                "-o",
                "out.safetensors",
            ],
            vec!["diff", "mlp.safetensors", name],
            vec!["data", "stats", name],
        ];
        for args in roles {
            refused(p, &args, &named);
        }
    }
}

/// NaN and ±inf in weights. What each command does (also in the README):
/// - `inspect` shows them: exit 0, and `--stats` counts them per tensor (`nan`, `inf`);
/// - `eval`, `fisher`, `train-ewc`, `replay-train` (every command that loads a model)
///   refuse the model: exit 2 naming the file, tensor and element (before, eval reported a
///   plausible loss because relu turns NaN into 0, and training wrote NaN weights);
/// - a penalty's Fisher or anchor holding one is refused (exit 2), as is an --l2-anchor;
/// - `merge` refuses a non-finite input (exit 2) unless --allow-nonfinite;
/// - `diff` compares them (NaN never equals, so exit 1).
#[test]
fn non_finite_weights() {
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    ok(mnemo_in(
        p,
        &[
            "fisher",
            "mlp.safetensors",
            "--arch",
            ARCH,
            "--data",
            "mlp_data.safetensors",
            "-o",
            "f.safetensors",
        ],
    ));
    for (name, v, shown) in [
        ("nan.safetensors", f32::NAN, "NaN"),
        ("inf.safetensors", f32::INFINITY, "inf"),
        ("neginf.safetensors", f32::NEG_INFINITY, "-inf"),
    ] {
        // 2.weight element 5 of the torch-made MLP, and of its Fisher.
        std::fs::write(
            p.join(name),
            poke(&p.join("mlp.safetensors"), "2.weight", 5, v),
        )
        .unwrap();
        let fname = format!("f_{name}");
        std::fs::write(
            p.join(&fname),
            poke(&p.join("f.safetensors"), "2.weight", 5, v),
        )
        .unwrap();
        let named = [name, "'2.weight'", "element 5", shown];

        // inspect: shown, not refused.
        let r = ok(mnemo_in(p, &["inspect", "--stats", "--json", name]));
        let t = r.last_json()["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "2.weight")
            .unwrap()
            .clone();
        let key = if v.is_nan() { "nan" } else { "inf" };
        assert_eq!(t["stats"][key], 1, "{name}: {t}");

        let data = ["--data", "mlp_data.safetensors"];
        let out = ["-o", "out.safetensors"];
        let cmds: Vec<Vec<&str>> = vec![
            [&["eval", name, "--arch", ARCH][..], &data].concat(),
            [&["fisher", name, "--arch", ARCH][..], &data, &out].concat(),
            [&["train-ewc", name, "--arch", ARCH][..], &data, &out].concat(),
            [
                &[
                    "replay-train",
                    name,
                    "--arch",
                    ARCH,
                    "--buffer",
                    "buf.safetensors",
                ][..],
                &data,
                &out,
            ]
            .concat(),
            vec![
                "merge",
                "linear",
                name,
                "mlp.safetensors",
                "-o",
                "out.safetensors",
            ],
        ];
        for args in cmds {
            refused(p, &args, &named);
        }
        // The anchor of a penalty, and an --l2-anchor.
        let anchor = format!("f.safetensors:{name}");
        refused(
            p,
            &[
                &["train-ewc", "mlp.safetensors", "--arch", ARCH][..],
                &data,
                &["--penalty", &anchor],
                &out,
            ]
            .concat(),
            &named,
        );
        refused(
            p,
            &[
                &["train-ewc", "mlp.safetensors", "--arch", ARCH][..],
                &data,
                &["--l2-anchor", name, "--l2-lambda", "1"],
                &out,
            ]
            .concat(),
            &named,
        );
        // A Fisher holding one (its values must be finite and >= 0).
        let fisher = format!("{fname}:mlp.safetensors");
        refused(
            p,
            &[
                &["train-ewc", "mlp.safetensors", "--arch", ARCH][..],
                &data,
                &["--penalty", &fisher],
                &out,
            ]
            .concat(),
            &[&fname, "'2.weight'", shown],
        );
        // merge lets them through when asked; diff reports the difference.
        ok(mnemo_in(
            p,
            &[
                "merge",
                "linear",
                name,
                "mlp.safetensors",
                "--allow-nonfinite",
                "-o",
                "merged.safetensors",
            ],
        ));
        std::fs::remove_file(p.join("merged.safetensors")).unwrap();
        assert_eq!(mnemo_in(p, &["diff", name, "mlp.safetensors"]).code, 1);
    }
}

/// `lora merge` folds W + scale·B·A: a NaN or ±inf in an adapted module's base weight (or a
/// fold beyond the dtype's range) is refused unless --allow-nonfinite; tensors the adapter
/// does not touch are copied as they are.
#[test]
fn lora_merge_refuses_non_finite_folds() {
    let d = setup(&["mlp.safetensors"]);
    let p = d.path();
    copy_dir(&fixtures().join("lora/peft_mlp"), &p.join("ad"));
    // The PEFT fixture adapts modules 0 and 4.
    std::fs::write(
        p.join("nan.safetensors"),
        poke(&p.join("mlp.safetensors"), "0.weight", 5, f32::NAN),
    )
    .unwrap();
    refused(
        p,
        &[
            "lora",
            "merge",
            "nan.safetensors",
            "ad",
            "-o",
            "m.safetensors",
        ],
        &[
            "nan.safetensors",
            "'0.weight'",
            "element 5",
            "NaN",
            "--allow-nonfinite",
        ],
    );
    ok(mnemo_in(
        p,
        &[
            "lora",
            "merge",
            "nan.safetensors",
            "ad",
            "--allow-nonfinite",
            "-o",
            "m.safetensors",
        ],
    ));
    std::fs::write(
        p.join("untouched.safetensors"),
        poke(&p.join("mlp.safetensors"), "2.weight", 5, f32::NAN),
    )
    .unwrap();
    ok(mnemo_in(
        p,
        &[
            "lora",
            "merge",
            "untouched.safetensors",
            "ad",
            "-o",
            "u.safetensors",
        ],
    ));
}

fn dataset(path: &Path, n: usize, labels: &[i64]) {
    let mut data = vec![0u8; n * 20 * 4];
    for t in labels {
        data.extend(t.to_le_bytes());
    }
    raw_safetensors(
        path,
        &format!(
            r#"{{"input":{{"dtype":"F32","shape":[{n},20],"data_offsets":[0,{}]}},"target":{{"dtype":"I64","shape":[{n}],"data_offsets":[{},{}]}}}}"#,
            n * 80,
            n * 80,
            n * 80 + n * 8
        ),
        &data,
    );
}

/// Empty datasets, labels beyond the model's outputs and negative labels, in every command
/// that reads a dataset (as --data, and as --val).
#[test]
fn empty_datasets_and_labels_out_of_range() {
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    dataset(&p.join("empty.safetensors"), 0, &[]);
    dataset(&p.join("label9.safetensors"), 4, &[0, 1, 9, 2]);
    dataset(&p.join("negative.safetensors"), 4, &[0, 1, -1, 2]);
    let cases = [
        ("empty.safetensors", vec!["empty (N = 0)"]),
        ("label9.safetensors", vec!["'target'[2] = 9", "5 outputs"]),
        ("negative.safetensors", vec!["'target'[2] = -1"]),
    ];
    for (file, msg) in &cases {
        let mut named = vec![*file];
        named.extend(msg);
        let base = ["mlp.safetensors", "--arch", ARCH];
        let out = ["-o", "out.safetensors"];
        let runs: Vec<Vec<&str>> = vec![
            [&["eval"][..], &base, &["--data", file]].concat(),
            [&["fisher"][..], &base, &["--data", file], &out].concat(),
            [&["train-ewc"][..], &base, &["--data", file], &out].concat(),
            [
                &["train-ewc"][..],
                &base,
                &["--data", "mlp_data.safetensors", "--val", file],
                &out,
            ]
            .concat(),
            [
                &["replay-train"][..],
                &base,
                &["--data", file, "--buffer", "buf.safetensors"],
                &out,
            ]
            .concat(),
            [
                &["lora-gate"][..],
                &base,
                &[
                    "--data",
                    file,
                    "--val",
                    "mlp_data.safetensors",
                    "--targets",
                    "0",
                    "-o",
                    "adapter",
                ],
            ]
            .concat(),
        ];
        for args in runs {
            // Labels are checked against the model, not in the data tools.
            refused(p, &args, &named);
        }
    }
    // The data tools refuse an empty or negative-labelled dataset as well.
    for file in ["empty.safetensors", "negative.safetensors"] {
        refused(p, &["data", "stats", file], &[file]);
        refused(
            p,
            &[
                "data",
                "shuffle",
                file,
                "--seed",
                "1",
                "-o",
                "out.safetensors",
            ],
            &[file],
        );
    }
}

/// `train-ewc --penalty F:A` where F (or A) belongs to another model.
#[test]
fn fisher_and_anchor_from_another_model() {
    let d = setup(&[
        "mlp.safetensors",
        "mlp_data.safetensors",
        "cnn.safetensors",
        "cnn.arch.json",
        "img_data.safetensors",
    ]);
    let p = d.path();
    ok(mnemo_in(
        p,
        &[
            "fisher",
            "mlp.safetensors",
            "--arch",
            ARCH,
            "--data",
            "mlp_data.safetensors",
            "-o",
            "f_mlp.safetensors",
        ],
    ));
    ok(mnemo_in(
        p,
        &[
            "fisher",
            "cnn.safetensors",
            "--arch",
            "cnn.arch.json",
            "--data",
            "img_data.safetensors",
            "-o",
            "f_cnn.safetensors",
        ],
    ));
    // A Fisher with names the model does not have at all.
    raw_safetensors(
        &p.join("f_other.safetensors"),
        r#"{"encoder.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
        &[0; 8],
    );
    let train = |penalty: &str| -> Vec<String> {
        [
            "train-ewc",
            "mlp.safetensors",
            "--arch",
            ARCH,
            "--data",
            "mlp_data.safetensors",
            "--penalty",
            penalty,
            "-o",
            "out.safetensors",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |penalty: &str, named: &[&str]| {
        let a = train(penalty);
        refused(p, &a.iter().map(String::as_str).collect::<Vec<_>>(), named);
    };
    run(
        "f_other.safetensors:mlp.safetensors",
        &[
            "f_other.safetensors",
            "'encoder.weight'",
            "unexpected tensor",
        ],
    );
    // The CNN's Fisher shares the name 0.bias with the MLP, in another shape.
    run(
        "f_cnn.safetensors:mlp.safetensors",
        &["f_cnn.safetensors", "0.bias", "shape [4]", "[16]"],
    );
    // The right Fisher with the CNN as its anchor.
    run(
        "f_mlp.safetensors:cnn.safetensors",
        &["cnn.safetensors", "0.bias (anchor)", "shape [4]"],
    );
    // An anchor lacking a tensor the Fisher penalises.
    raw_safetensors(
        &p.join("a_partial.safetensors"),
        r#"{"0.bias":{"dtype":"F32","shape":[16],"data_offsets":[0,64]}}"#,
        &[0; 64],
    );
    run(
        "f_mlp.safetensors:a_partial.safetensors",
        &["a_partial.safetensors", "no tensor named '0.weight'"],
    );
    // A penalty without the colon, and a missing file.
    run("f_mlp.safetensors", &["FISHER:ANCHOR"]);
    run(
        "f_mlp.safetensors:missing.safetensors",
        &["missing.safetensors"],
    );
}

/// `merge` of checkpoints whose names or shapes disagree.
#[test]
fn merge_of_mismatched_checkpoints() {
    let d = setup(&["mlp.safetensors", "multihead.safetensors"]);
    let p = d.path();
    ok(mnemo_in(
        p,
        &["init", "--arch", "mlp:20-16-16-4", "-o", "four.safetensors"],
    ));
    for method in [
        vec!["linear"],
        vec!["task-arithmetic", "--base", "mlp.safetensors"],
        vec!["ties", "--base", "mlp.safetensors", "--density", "0.5"],
        vec!["slerp", "--t", "0.5"],
    ] {
        let with = |inputs: &[&str]| -> Vec<String> {
            let mut a: Vec<String> = vec!["merge".into()];
            a.extend(method.iter().map(|s| s.to_string()));
            a.extend(inputs.iter().map(|s| s.to_string()));
            a.extend(["-o".to_string(), "out.safetensors".to_string()]);
            a
        };
        let a = with(&["mlp.safetensors", "four.safetensors"]);
        refused(
            p,
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            &["four.safetensors", "'4.bias'", "[4]", "[5]"],
        );
        let a = with(&["mlp.safetensors", "multihead.safetensors"]);
        refused(
            p,
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
            &["multihead.safetensors", "0.bias"],
        );
    }
}

/// `replay-train --buffer` with a buffer made for another dataset or model, or a file that
/// is not a buffer: refused, and the buffer left as it was.
#[test]
fn replay_buffer_from_another_dataset_or_model() {
    let d = setup(&[
        "mlp.safetensors",
        "mlp_data.safetensors",
        "cnn.safetensors",
        "cnn.arch.json",
        "img_data.safetensors",
    ]);
    let p = d.path();
    let fill = |buf: &str, extra: &[&str]| {
        let mut a = vec![
            "replay-train",
            "mlp.safetensors",
            "--arch",
            ARCH,
            "--data",
            "mlp_data.safetensors",
            "--buffer",
            buf,
            "--capacity",
            "32",
            "--batch-size",
            "16",
            "-o",
            "m1.safetensors",
        ];
        a.extend(extra);
        ok(mnemo_in(p, &a));
    };
    fill("buf.safetensors", &[]);
    fill("der.safetensors", &["--distill", "0.5"]);
    // Another dataset: images [1, 8, 8] instead of 20 features.
    refused(
        p,
        &[
            "replay-train",
            "cnn.safetensors",
            "--arch",
            "cnn.arch.json",
            "--data",
            "img_data.safetensors",
            "--buffer",
            "buf.safetensors",
            "-o",
            "out.safetensors",
        ],
        &["buf.safetensors", "shape [20]", "img_data.safetensors"],
    );
    // Another model: 3 classes, while the buffer holds labels up to 4.
    ok(mnemo_in(
        p,
        &["init", "--arch", "mlp:20-8-3", "-o", "three.safetensors"],
    ));
    ok(mnemo_in(
        p,
        &[
            "data",
            "split",
            "mlp_data.safetensors",
            "--classes",
            "0,1,2",
            "-o",
            "d3.safetensors",
        ],
    ));
    let e = refused(
        p,
        &[
            "replay-train",
            "three.safetensors",
            "--data",
            "d3.safetensors",
            "--buffer",
            "buf.safetensors",
            "-o",
            "out.safetensors",
        ],
        &[
            "buf.safetensors",
            "invalid replay buffer",
            "out of range",
            "3 outputs",
        ],
    );
    assert!(!e.contains("d3.safetensors"), "{e}");
    // Logits stored for 5 classes, distilled into a 7-class model.
    ok(mnemo_in(
        p,
        &["init", "--arch", "mlp:20-8-7", "-o", "seven.safetensors"],
    ));
    refused(
        p,
        &[
            "replay-train",
            "seven.safetensors",
            "--data",
            "mlp_data.safetensors",
            "--buffer",
            "der.safetensors",
            "--distill",
            "0.5",
            "-o",
            "out.safetensors",
        ],
        &["der.safetensors", "width 5", "7 outputs"],
    );
    // A model file given as the buffer; settings that would change the buffer.
    let args = |buf: &'static str, extra: &[&'static str]| -> Vec<&'static str> {
        let mut a = vec![
            "replay-train",
            "mlp.safetensors",
            "--arch",
            ARCH,
            "--data",
            "mlp_data.safetensors",
            "--buffer",
            buf,
            "-o",
            "out.safetensors",
        ];
        a.extend(extra);
        a
    };
    // The model itself as the buffer would be replaced: refused as a destination; a copy
    // of it is read, and is not a buffer.
    refused(
        p,
        &args("mlp.safetensors", &[]),
        &["mlp.safetensors", "same file"],
    );
    std::fs::copy(p.join("mlp.safetensors"), p.join("model-copy.safetensors")).unwrap();
    refused(
        p,
        &args("model-copy.safetensors", &[]),
        &["model-copy.safetensors", "not a replay buffer"],
    );
    refused(
        p,
        &args("buf.safetensors", &["--capacity", "64"]),
        &["buf.safetensors", "capacity is 32"],
    );
    refused(
        p,
        &args("buf.safetensors", &["--policy", "class-balanced"]),
        &["buf.safetensors", "policy is reservoir"],
    );
    refused(
        p,
        &args("buf.safetensors", &["--distill", "0.5"]),
        &["buf.safetensors", "no logits"],
    );
    // A buffer whose metadata was tampered with: more examples than it has seen.
    let b = std::fs::read(p.join("buf.safetensors")).unwrap();
    let text = String::from_utf8_lossy(&b).into_owned();
    let seen = "\"mnemo.total_seen\":\"64\"";
    assert!(text.contains(seen), "{text}");
    let pos = b
        .windows(seen.len())
        .position(|w| w == seen.as_bytes())
        .unwrap();
    let mut t = b.clone();
    t[pos..pos + seen.len()].copy_from_slice(b"\"mnemo.total_seen\":\"01\"");
    std::fs::write(p.join("tampered.safetensors"), t).unwrap();
    refused(
        p,
        &args("tampered.safetensors", &[]),
        &["tampered.safetensors", "seen only 1"],
    );
}

/// A LoRA adapter made for another model, folded (`lora merge`) or continued
/// (`lora-gate --adapter`).
#[test]
fn lora_adapter_for_another_model() {
    let d = setup(&[
        "mlp.safetensors",
        "mlp_data.safetensors",
        "cnn.safetensors",
        "cnn.arch.json",
        "img_data.safetensors",
        "multihead.safetensors",
    ]);
    let p = d.path();
    copy_dir(&fixtures().join("lora/peft_mlp"), &p.join("peft_mlp"));
    copy_dir(
        &fixtures().join("lora/peft_cnn_rslora"),
        &p.join("peft_cnn"),
    );
    // The MLP's adapter (modules 0 and 4, [r, 20] / [16, r] ...) onto the CNN's 0.weight
    // [4, 1, 3, 3].
    refused(
        p,
        &[
            "lora",
            "merge",
            "cnn.safetensors",
            "peft_mlp",
            "-o",
            "out.safetensors",
        ],
        &["cnn.safetensors", "peft_mlp", "'0.weight'"],
    );
    refused(
        p,
        &[
            "lora",
            "merge",
            "mlp.safetensors",
            "peft_cnn",
            "-o",
            "out.safetensors",
        ],
        &["mlp.safetensors", "peft_cnn", "'0.weight'"],
    );
    // A model without the adapted modules at all.
    refused(
        p,
        &[
            "lora",
            "merge",
            "multihead.safetensors",
            "peft_mlp",
            "-o",
            "out.safetensors",
        ],
        &["peft_mlp", "multihead.safetensors", "'0.weight'"],
    );
    // Continuing the MLP's adapter on the CNN.
    refused(
        p,
        &[
            "lora-gate",
            "cnn.safetensors",
            "--arch",
            "cnn.arch.json",
            "--data",
            "img_data.safetensors",
            "--val",
            "img_data.safetensors",
            "--adapter",
            "peft_mlp",
            "-o",
            "adapter_out",
        ],
        &["peft_mlp"],
    );
    // A corrupt adapter: the weights file truncated.
    let w = p.join("peft_mlp/adapter_model.safetensors");
    let b = std::fs::read(&w).unwrap();
    copy_dir(&p.join("peft_mlp"), &p.join("broken"));
    std::fs::write(
        p.join("broken/adapter_model.safetensors"),
        &b[..b.len() - 3],
    )
    .unwrap();
    refused(
        p,
        &[
            "lora",
            "merge",
            "mlp.safetensors",
            "broken",
            "-o",
            "out.safetensors",
        ],
        &["broken/adapter_model.safetensors", "out of range"],
    );
}

/// Sharded checkpoints whose index lies, and `data import` of broken files.
#[test]
fn hostile_index_and_imports() {
    let d = setup(&["mlp.safetensors"]);
    let p = d.path();
    std::fs::create_dir(p.join("sharded")).unwrap();
    std::fs::copy(p.join("mlp.safetensors"), p.join("sharded/a.safetensors")).unwrap();
    let idx = |name: &str, text: &str| {
        std::fs::write(p.join("sharded").join(name), text).unwrap();
        format!("sharded/{name}")
    };
    let cases = [
        (
            idx("empty_path.index.json", r#"{"weight_map":{"0.bias":""}}"#),
            "plain relative path",
        ),
        (
            idx(
                "dot.index.json",
                r#"{"weight_map":{"0.bias":"./a.safetensors"}}"#,
            ),
            "plain relative path",
        ),
        (
            idx(
                "absolute.index.json",
                r#"{"weight_map":{"0.bias":"/etc/passwd"}}"#,
            ),
            "plain relative path",
        ),
        (
            idx(
                "missing.index.json",
                r#"{"weight_map":{"0.bias":"b.safetensors"}}"#,
            ),
            "b.safetensors",
        ),
        (
            idx(
                "wrong.index.json",
                r#"{"weight_map":{"nope":"a.safetensors"}}"#,
            ),
            "'nope'",
        ),
        (
            idx("number.index.json", r#"{"weight_map":{"0.bias":7}}"#),
            "not a string",
        ),
        (idx("no_map.index.json", r#"{"metadata":{}}"#), "weight_map"),
        (idx("bad.index.json", "{\"weight_map\":"), "not valid JSON"),
    ];
    for (index, msg) in &cases {
        refused(p, &["inspect", index], &[index.as_str(), msg]);
        refused(
            p,
            &[
                "merge",
                "linear",
                index,
                "mlp.safetensors",
                "-o",
                "out.safetensors",
            ],
            &[index.as_str()],
        );
    }

    // data import: truncated IDX, a label file of the wrong count, broken .npy and .npz.
    let idx_file = |dims: &[u32], data: &[u8]| {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    };
    std::fs::write(p.join("images.idx"), idx_file(&[2, 2, 2], &[1; 8])).unwrap();
    std::fs::write(p.join("short.idx"), idx_file(&[2, 2, 2], &[1; 7])).unwrap();
    std::fs::write(p.join("labels.idx"), idx_file(&[2], &[0, 1])).unwrap();
    std::fs::write(p.join("labels3.idx"), idx_file(&[3], &[0, 1, 2])).unwrap();
    std::fs::write(p.join("empty_images.idx"), idx_file(&[0, 2, 2], &[])).unwrap();
    std::fs::write(p.join("empty_labels.idx"), idx_file(&[0], &[])).unwrap();
    ok(mnemo_in(
        p,
        &[
            "data",
            "import",
            "idx",
            "images.idx",
            "labels.idx",
            "-o",
            "ok.safetensors",
        ],
    ));
    std::fs::remove_file(p.join("ok.safetensors")).unwrap();
    let imp = |args: &[&str], named: &[&str]| {
        let mut a = vec!["data", "import"];
        a.extend(args);
        a.extend(["-o", "out.safetensors"]);
        refused(p, &a, named);
    };
    imp(
        &["idx", "short.idx", "labels.idx"],
        &["short.idx", "need 8 bytes"],
    );
    imp(
        &["idx", "images.idx", "labels3.idx"],
        &["labels3.idx", "3 labels"],
    );
    imp(
        &["idx", "empty_images.idx", "empty_labels.idx"],
        &["empty_images.idx", "no examples"],
    );
    imp(
        &["idx", "labels.idx", "labels.idx"],
        &["labels.idx", "[N, H, W]"],
    );
    let npy = |descr: &str, shape: &str, data: &[u8]| {
        let header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend((header.len() as u16).to_le_bytes());
        v.extend(header.as_bytes());
        v.extend(data);
        v
    };
    std::fs::write(p.join("x.npy"), npy("<f4", "(2, 2)", &[0; 16])).unwrap();
    std::fs::write(p.join("y.npy"), npy("<i8", "(2,)", &[0; 16])).unwrap();
    std::fs::write(p.join("x_short.npy"), npy("<f4", "(2, 2)", &[0; 15])).unwrap();
    let mut nan = vec![0u8; 16];
    nan[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(p.join("x_nan.npy"), npy("<f4", "(2, 2)", &nan)).unwrap();
    std::fs::write(p.join("x_big.npy"), npy(">f4", "(2, 2)", &[0; 16])).unwrap();
    let mut neg = vec![0u8; 16];
    neg[8..].copy_from_slice(&(-3i64).to_le_bytes());
    std::fs::write(p.join("y_neg.npy"), npy("<i8", "(2,)", &neg)).unwrap();
    std::fs::write(p.join("y_float.npy"), npy("<f4", "(2,)", &[0; 8])).unwrap();
    std::fs::write(p.join("garbage.npy"), b"\x93NUMPY\x01").unwrap();
    ok(mnemo_in(
        p,
        &[
            "data",
            "import",
            "npy",
            "x.npy",
            "y.npy",
            "-o",
            "ok.safetensors",
        ],
    ));
    std::fs::remove_file(p.join("ok.safetensors")).unwrap();
    imp(
        &["npy", "x_short.npy", "y.npy"],
        &["x_short.npy", "needs 16 bytes"],
    );
    imp(&["npy", "x_nan.npy", "y.npy"], &["x_nan.npy", "NaN"]);
    imp(&["npy", "x_big.npy", "y.npy"], &["x_big.npy", "'>f4'"]);
    imp(&["npy", "x.npy", "y_neg.npy"], &["y_neg.npy", "-3"]);
    imp(
        &["npy", "x.npy", "y_float.npy"],
        &["y_float.npy", "integer labels"],
    );
    imp(
        &["npy", "garbage.npy", "y.npy"],
        &["garbage.npy", "not a .npy file"],
    );
    // An .npz that is not a zip, and one whose member is truncated.
    std::fs::write(p.join("junk.npz"), b"PK\x03\x04 not really a zip").unwrap();
    imp(&["npz", "junk.npz"], &["junk.npz", "zip"]);
    std::fs::copy(p.join("mlp.safetensors"), p.join("model.npz")).unwrap();
    imp(&["npz", "model.npz"], &["model.npz", "zip"]);
}

/// JSON Lines that are not quite UTF-8: a stray byte in another field is read the same by
/// the annotating reader and the fast one (--events-only, -q), which fuzzing found to
/// disagree; a stray byte in the value's own string is an error naming the line in both.
#[test]
fn jsonl_with_invalid_utf8() {
    let d = workdir();
    let p = d.path();
    std::fs::write(
        p.join("m.jsonl"),
        b"{\"loss\":0.5}\n{\"loss\":0.25,\"tag\":\"\xef\"}\n{\"loss\":0.5}\n",
    )
    .unwrap();
    std::fs::write(
        p.join("bad.jsonl"),
        b"{\"loss\":0.5}\n{\"loss\":\"\xef\"}\n",
    )
    .unwrap();
    let base = ["drift", "--detector", "page-hinkley"];
    for mode in [&[][..], &["--events-only"][..], &["-q"][..]] {
        let r = mnemo_in(p, &[&base[..], mode, &["m.jsonl"]].concat());
        assert_eq!(r.code, 1, "{mode:?}: {}", r.stderr);
        if mode.is_empty() {
            assert_eq!(r.json_lines().len(), 3);
        }
        refused(
            p,
            &[&base[..], mode, &["bad.jsonl"]].concat(),
            &["bad.jsonl:2"],
        );
    }
}

// ---------------------------------------------------------------------------------------
// Second pass (issue 26): the rules across commands and flags, one test per class.
// ---------------------------------------------------------------------------------------

/// The flags of a tiny, fast training run on the fixtures.
const TINY: &[&str] = &[
    "--arch",
    ARCH,
    "--data",
    "mlp_data.safetensors",
    "--epochs",
    "1",
    "--batch-size",
    "16",
];

/// Every F32 value of every safetensors file under `dir` is finite.
fn all_outputs_finite(dir: &Path) -> Result<(), String> {
    for (name, bytes) in snapshot(dir) {
        if name.extension().and_then(|e| e.to_str()) != Some("safetensors") || bytes.len() < 8 {
            continue;
        }
        let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let Ok(header) = serde_json::from_slice::<serde_json::Value>(&bytes[8..8 + hlen]) else {
            continue;
        };
        for (t, e) in header.as_object().unwrap() {
            if t == "__metadata__" || e["dtype"] != "F32" {
                continue;
            }
            let (b, en) = (
                e["data_offsets"][0].as_u64().unwrap() as usize,
                e["data_offsets"][1].as_u64().unwrap() as usize,
            );
            for c in bytes[8 + hlen + b..8 + hlen + en].chunks_exact(4) {
                let v = f32::from_le_bytes(c.try_into().unwrap());
                if !v.is_finite() {
                    return Err(format!("{name:?}: tensor '{t}' holds {v}"));
                }
            }
        }
    }
    Ok(())
}

/// Class 2: every hyperparameter is checked finite and in range when parsed, whatever the
/// command; the message names the flag.
#[test]
fn hyperparameters_out_of_range_are_refused_when_parsed() {
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    std::fs::write(
        p.join("r.jsonl"),
        "{\"stage\":1,\"task\":1,\"accuracy\":0.5}\n",
    )
    .unwrap();
    let train = |flag: &str, v: &str| -> Vec<String> {
        let mut a: Vec<String> = ["train-ewc", "mlp.safetensors"]
            .iter()
            .chain(TINY)
            .map(|s| s.to_string())
            .collect();
        a.extend([format!("{flag}={v}"), "-o".into(), "out.safetensors".into()]);
        a
    };
    let cases: &[(&str, &[&str])] = &[
        ("--lr", &["nan", "inf", "-inf", "-1", "1e30", "NaN"]),
        ("--lambda", &["nan", "inf", "-1"]),
        ("--weight-decay", &["nan", "-1", "1e39"]),
        ("--momentum", &["nan", "2", "-0.5"]),
        ("--beta1", &["1", "nan", "-0.1"]),
        ("--beta2", &["1.5", "0.99999999"]),
        ("--eps", &["0", "-1e-8", "nan", "1e-50"]),
        ("--label-smoothing", &["1", "nan", "-0.1"]),
        ("--clip-grad-norm", &["0", "nan", "-1"]),
        ("--l2-lambda", &["nan", "-1"]),
        ("--lr-gamma", &["nan", "-1"]),
        ("--eta-min", &["nan", "-1"]),
        ("--focal-gamma", &["nan", "-1"]),
        ("--focal-alpha", &["nan", "2"]),
        ("--epochs", &["1e12", "-1", "1000000000000"]),
        ("--max-batches-per-epoch", &["1000000000000"]),
    ];
    for (flag, values) in cases {
        for v in *values {
            let a = train(flag, v);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            refused(p, &a, &[flag]);
        }
    }
    let others: &[&[&str]] = &[
        &["diff", "mlp.safetensors", "mlp.safetensors", "--tol=nan"],
        &["diff", "mlp.safetensors", "mlp.safetensors", "--tol=-1"],
        &["check", "r.jsonl", "--max-drop=nan"],
        &["check", "r.jsonl", "--max-drop=inf"],
        &[
            "drift",
            "--detector",
            "adwin",
            "--calibrate",
            "--resamples",
            "0",
            "r.jsonl",
        ],
        &[
            "drift",
            "--detector",
            "adwin",
            "--calibrate",
            "--false-alarm-rate=nan",
            "r.jsonl",
        ],
        &[
            "merge",
            "linear",
            "mlp.safetensors",
            "mlp.safetensors",
            "--weights",
            "nan,1",
            "-o",
            "m.safetensors",
        ],
        &[
            "merge",
            "ties",
            "mlp.safetensors",
            "mlp.safetensors",
            "--base",
            "mlp.safetensors",
            "--density=2",
            "-o",
            "m.safetensors",
        ],
        &[
            "log",
            "mlflow",
            "--uri",
            "http://127.0.0.1:9",
            "--experiment",
            "e",
            "--timeout=1e30",
            "r.jsonl",
        ],
        &[
            "log",
            "mlflow",
            "--uri",
            "http://127.0.0.1:9",
            "--experiment",
            "e",
            "--flush-seconds=-1",
            "r.jsonl",
        ],
        &[
            "data",
            "take",
            "mlp_data.safetensors",
            "0",
            "-o",
            "t.safetensors",
        ],
        &[
            "data",
            "import",
            "folder",
            ".",
            "--size",
            "100000,100000",
            "-o",
            "f.safetensors",
        ],
        &[
            "lora-gate",
            "mlp.safetensors",
            "--arch",
            ARCH,
            "--data",
            "mlp_data.safetensors",
            "--val",
            "mlp_data.safetensors",
            "--targets",
            "0",
            "--alpha=nan",
            "-o",
            "ad",
        ],
        &[
            "lora-gate",
            "mlp.safetensors",
            "--arch",
            ARCH,
            "--data",
            "mlp_data.safetensors",
            "--val",
            "mlp_data.safetensors",
            "--targets",
            "0",
            "--threshold=nan",
            "-o",
            "ad",
        ],
        &[
            "lora-gate",
            "mlp.safetensors",
            "--arch",
            ARCH,
            "--data",
            "mlp_data.safetensors",
            "--val",
            "mlp_data.safetensors",
            "--targets",
            "0",
            "--significance=1",
            "-o",
            "ad",
        ],
        &[
            "drift",
            "--detector",
            "kswin",
            "--window-size",
            "1000000000000",
            "r.jsonl",
        ],
        &["drift", "--detector", "adwin", "--delta", "nan", "r.jsonl"],
        &[
            "drift",
            "--detector",
            "page-hinkley",
            "--threshold",
            "inf",
            "r.jsonl",
        ],
    ];
    for a in others {
        refused(p, a, &[]);
    }
}

/// Class 2: values from a --config file, MNEMO_* variables and --set go through the same
/// parsers, and the error names where the value came from.
#[test]
fn configured_hyperparameters_go_through_the_same_validation() {
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    let base = [
        "train-ewc",
        "mlp.safetensors",
        "--arch",
        ARCH,
        "--data",
        "mlp_data.safetensors",
        "-o",
        "o.safetensors",
    ];
    for (i, toml) in [
        "lr = nan",
        "lr = inf",
        "lr = -1.0",
        "weight-decay = nan",
        "lambda = -inf",
        "momentum = 2.0",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("c{i}.toml");
        std::fs::write(p.join(&name), format!("[train-ewc]\n{toml}\n")).unwrap();
        refused(p, &[&base[..], &["--config", &name]].concat(), &[&name]);
    }
    let r = mnemo_env(p, &base, &[("MNEMO_TRAIN_EWC_LR", Some("nan"))]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("MNEMO_TRAIN_EWC_LR"), "{}", r.stderr);
    assert!(!p.join("o.safetensors").exists());
    refused(p, &[&base[..], &["--set", "lr=nan"]].concat(), &["lr"]);
}

/// Class 2: a run whose loss or weights become non-finite stops with exit 2, naming the
/// step and the tensor, and writes nothing (no output, no state, no optimizer file).
#[test]
fn a_diverging_run_stops_and_writes_nothing() {
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    // SGD with decay λ·lr = 10^9: every update multiplies the weights by about -10^9.
    let diverge = [
        "--optimizer",
        "sgd",
        "--lr",
        "1000",
        "--weight-decay",
        "1000000",
        "--decay-all",
        "--batch-size",
        "4",
    ];
    let extra: &[&[&str]] = &[
        &[],
        &["--state", "s.safetensors", "--save-every", "1000"],
        &["--save-optimizer", "opt.safetensors"],
        &["--l2-anchor", "mlp.safetensors", "--l2-lambda", "1e30"],
    ];
    for e in extra {
        for cmd in [
            &[
                "train-ewc",
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "mlp_data.safetensors",
            ][..],
            &[
                "replay-train",
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "mlp_data.safetensors",
                "--buffer",
                "b.safetensors",
            ][..],
        ] {
            let err = refused(
                p,
                &[cmd, &diverge, e, &["-o", "out.safetensors"]].concat(),
                &["diverged", "step", "nothing was written"],
            );
            assert!(err.contains("tensor '") || err.contains("loss"), "{err}");
        }
    }
    // A normalisation whose ε would make the variance's root NaN is refused with the arch.
    for arch in [
        r#"[{"type":"linear","in_features":20,"out_features":4},{"type":"batchnorm1d","num_features":4,"eps":-1}]"#,
        r#"[{"type":"linear","in_features":20,"out_features":4},{"type":"layernorm","normalized_shape":4,"eps":0}]"#,
        r#"[{"type":"linear","in_features":20,"out_features":4},{"type":"batchnorm1d","num_features":4,"momentum":2}]"#,
    ] {
        let named = if arch.contains("eps") {
            "eps"
        } else {
            "momentum"
        };
        refused(
            p,
            &["init", "--arch", arch, "-o", "i.safetensors"],
            &[named],
        );
    }
}

/// Class 2: gates and checks never pass on a number that is not one.
#[test]
fn gates_never_accept_non_finite_scores() {
    let d = workdir();
    let p = d.path();
    // Finite records whose drop overflows to +inf: not a pass, whatever --max-drop.
    std::fs::write(
        p.join("r.jsonl"),
        "{\"stage\":1,\"task\":1,\"accuracy\":1e308}\n{\"stage\":2,\"task\":1,\"accuracy\":-1e308}\n{\"stage\":2,\"task\":2,\"accuracy\":0.5}\n",
    )
    .unwrap();
    let r = mnemo_in(p, &["check", "r.jsonl", "--max-drop", "1e300", "-q"]);
    assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
    assert_eq!(r.last_json()["pass"], false);
}

/// Class 3: a destination that is an input, another destination (by path, `./` path,
/// symlink or hard link), or whose folder is missing, is refused before any work.
#[test]
fn destinations_that_would_destroy_a_file_are_refused_first() {
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    std::os::unix::fs::symlink("mlp.safetensors", p.join("link.safetensors")).unwrap();
    std::fs::hard_link(p.join("mlp.safetensors"), p.join("hard.safetensors")).unwrap();
    std::fs::write(
        p.join("r.jsonl"),
        "{\"event\":\"epoch\",\"epoch\":1,\"task_loss\":1}\n",
    )
    .unwrap();
    let t = |extra: &[&str]| -> Vec<String> {
        ["train-ewc", "mlp.safetensors"]
            .iter()
            .chain(TINY)
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let rp = |extra: &[&str]| -> Vec<String> {
        ["replay-train", "mlp.safetensors"]
            .iter()
            .chain(TINY)
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let lg = |extra: &[&str]| -> Vec<String> {
        [
            "lora-gate",
            "mlp.safetensors",
            "--val",
            "mlp_data.safetensors",
            "--targets",
            "0",
            "--threshold",
            "1e9",
        ]
        .iter()
        .chain(TINY)
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (t(&["-o", "mlp.safetensors"]), "same file"),
        (t(&["-o", "./mlp.safetensors"]), "same file"),
        (t(&["-o", "link.safetensors"]), "same file"),
        (t(&["-o", "hard.safetensors"]), "same file"),
        (t(&["-o", "mlp_data.safetensors"]), "same file"),
        (
            t(&["--state", "s.safetensors", "-o", "s.safetensors"]),
            "same file",
        ),
        (
            t(&["--save-optimizer", "o.safetensors", "-o", "o.safetensors"]),
            "same file",
        ),
        (
            t(&["--save-optimizer", "mlp.safetensors", "-o", "x.safetensors"]),
            "same file",
        ),
        (
            t(&[
                "--penalty",
                "mlp.safetensors:mlp.safetensors",
                "-o",
                "link.safetensors",
            ]),
            "same file",
        ),
        (
            t(&[
                "--save-optimizer",
                "nodir/o.safetensors",
                "-o",
                "x.safetensors",
            ]),
            "does not exist",
        ),
        (t(&["-o", "nodir/x.safetensors"]), "does not exist"),
        (t(&["-o", "."]), "folder"),
        (
            rp(&["--buffer", "x.safetensors", "-o", "x.safetensors"]),
            "same file",
        ),
        (
            rp(&["--buffer", "mlp.safetensors", "-o", "x.safetensors"]),
            "same file",
        ),
        (
            rp(&["--buffer", "nodir/b.safetensors", "-o", "x.safetensors"]),
            "does not exist",
        ),
        (lg(&["--log", "mlp.safetensors", "-o", "ad"]), "same file"),
        (
            lg(&["--merged", "mlp_data.safetensors", "-o", "ad"]),
            "same file",
        ),
        (
            lg(&["--log", "l.jsonl", "--merged", "l.jsonl", "-o", "ad"]),
            "same file",
        ),
        (lg(&["-o", "mlp.safetensors"]), "same file"),
        (
            vec![
                "fisher".into(),
                "mlp.safetensors".into(),
                "--arch".into(),
                ARCH.into(),
                "--data".into(),
                "mlp_data.safetensors".into(),
                "-o".into(),
                "mlp_data.safetensors".into(),
            ],
            "same file",
        ),
        (
            vec![
                "init".into(),
                "--arch".into(),
                ARCH.into(),
                "--from".into(),
                "mlp.safetensors".into(),
                "-o".into(),
                "link.safetensors".into(),
            ],
            "same file",
        ),
        (
            vec![
                "merge".into(),
                "linear".into(),
                "mlp.safetensors".into(),
                "hard.safetensors".into(),
                "-o".into(),
                "mlp.safetensors".into(),
            ],
            "same file",
        ),
        (
            vec![
                "data".into(),
                "concat".into(),
                "mlp_data.safetensors".into(),
                "link.safetensors".into(),
                "-o".into(),
                "mlp_data.safetensors".into(),
            ],
            "same file",
        ),
        (
            vec![
                "report".into(),
                "r.jsonl".into(),
                "-o".into(),
                "r.jsonl".into(),
            ],
            "same file",
        ),
    ];
    for (a, why) in &cases {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        refused(p, &a, &[why]);
    }
    // The exception: a one-input data transform may replace its own input.
    ok(mnemo_in(
        p,
        &[
            "data",
            "take",
            "mlp_data.safetensors",
            "5",
            "-o",
            "mlp_data.safetensors",
        ],
    ));
    let r = ok(mnemo_in(p, &["data", "stats", "mlp_data.safetensors"]));
    assert_eq!(r.last_json()["examples"], 5, "{}", r.stdout);
}

/// Class 3: two replay-train runs on one buffer take turns (a lock): neither update is lost.
#[test]
fn concurrent_replay_runs_lose_no_update() {
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    let spawn = |out: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mnemo"))
            .args([
                "replay-train",
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "mlp_data.safetensors",
                "--buffer",
                "buf.safetensors",
                "--capacity",
                "1000",
                "--epochs",
                "3",
                "-o",
                out,
            ])
            .current_dir(p)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    for round in 0..2 {
        let (a, b) = (spawn("a.safetensors"), spawn("b.safetensors"));
        for c in [a, b] {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let r = ok(mnemo_in(p, &["inspect", "--json", "buf.safetensors"]));
        let seen = r.last_json()["metadata"]["mnemo.total_seen"].clone();
        // 64 examples per run, offered in the first epoch of each.
        assert_eq!(seen, json_str(64 * 2 * (round + 1)), "round {round}");
    }
}

fn json_str(n: usize) -> serde_json::Value {
    serde_json::Value::String(n.to_string())
}

/// Class 3: a failing run leaves every output as it was: the main output is put in place
/// last, after every other file was written.
#[test]
fn outputs_are_written_through_one_atomic_writer() {
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    // lora-gate's log is written atomically too (it appears whole, with the decision).
    let r = mnemo_in(
        p,
        &[
            "lora-gate",
            "mlp.safetensors",
            "--arch",
            ARCH,
            "--data",
            "mlp_data.safetensors",
            "--val",
            "mlp_data.safetensors",
            "--targets",
            "0",
            "--threshold",
            "1e9",
            "--epochs",
            "2",
            "--log",
            "log.jsonl",
            "-o",
            "ad",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let log = std::fs::read_to_string(p.join("log.jsonl")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("\"epoch\"")).count(),
        2,
        "{log}"
    );
    let names: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
}

/// Class 4: symlinks are written through (the link stays), FIFOs and character devices
/// are streamed into, a dangling link is refused, and new files follow the umask.
#[test]
fn special_destinations() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    std::fs::create_dir(p.join("real")).unwrap();
    std::fs::write(p.join("real/m.safetensors"), b"old").unwrap();
    std::os::unix::fs::symlink("real/m.safetensors", p.join("link.safetensors")).unwrap();
    let init = |out: &str| mnemo_in(p, &["init", "--arch", ARCH, "-o", out]);
    ok(init("link.safetensors"));
    assert!(std::fs::symlink_metadata(p.join("link.safetensors"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_ne!(std::fs::read(p.join("real/m.safetensors")).unwrap(), b"old");
    ok(mnemo_in(p, &["inspect", "real/m.safetensors"]));
    // Dangling.
    std::os::unix::fs::symlink("nowhere/x.safetensors", p.join("dangling.safetensors")).unwrap();
    refused(
        p,
        &["init", "--arch", ARCH, "-o", "dangling.safetensors"],
        &["dangling"],
    );
    // Character devices.
    ok(init("/dev/null"));
    let r = ok(mnemo_in(p, &["init", "--arch", ARCH, "-o", "/dev/stdout"]));
    assert!(r.raw_stdout.len() > 1000);
    let r = ok(mnemo_in(p, &["init", "--arch", ARCH, "-o", "-"]));
    assert_eq!(&r.raw_stdout[8..10], b"{\"");
    // Where stdout carries the command's JSON lines, it is not also an output.
    for out in ["-", "/dev/stdout"] {
        refused(
            p,
            &[
                "fisher",
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "mlp_data.safetensors",
                "-o",
                out,
            ],
            &["stdout"],
        );
    }
    // A FIFO: streamed into, still a FIFO.
    let fifo = p.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    ok(init("fifo"));
    let got = reader.join().unwrap();
    assert!(got.len() > 1000 && got[8] == b'{');
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    // umask.
    for (umask, mode) in [("077", 0o600), ("022", 0o644), ("002", 0o664)] {
        let out = format!("u{umask}.safetensors");
        let s = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umask {umask} && exec \"$0\" init --arch {ARCH} -o {out}"
            ))
            .arg(env!("CARGO_BIN_EXE_mnemo"))
            .current_dir(p)
            .status()
            .unwrap();
        assert!(s.success());
        let m = std::fs::metadata(p.join(&out))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "umask {umask}");
    }
    // A replaced file keeps its permissions.
    std::fs::set_permissions(
        p.join("u077.safetensors"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    ok(init("u077.safetensors"));
    let m = std::fs::metadata(p.join("u077.safetensors"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(m, 0o640);
}

/// Class 1: every size that comes from an input or a flag is bounded before allocation,
/// with an error naming it.
#[test]
fn sizes_from_inputs_and_flags_are_bounded() {
    let d = workdir();
    let p = d.path();
    // A rank-200000 tensor header.
    let shape = vec!["1"; 200_000].join(",");
    std::fs::write(
        p.join("rank.safetensors"),
        st(
            &format!(r#"{{"a":{{"dtype":"F32","shape":[{shape}],"data_offsets":[0,4]}}}}"#),
            &[0; 4],
        ),
    )
    .unwrap();
    refused(
        p,
        &["inspect", "rank.safetensors"],
        &["rank.safetensors", "rank 200000"],
    );
    // A long tensor name still prints (format widths are capped).
    let long = "n".repeat(70_000);
    std::fs::write(
        p.join("long.safetensors"),
        st(
            &format!(r#"{{"{long}":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#),
            &[0; 4],
        ),
    )
    .unwrap();
    ok(mnemo_in(p, &["inspect", "long.safetensors"]));
    // Stage and task numbers of JSON Lines records.
    for (i, rec) in [
        r#"{"stage":1,"task":100000,"accuracy":0.5}"#,
        r#"{"stage":1,"task":18446744073709551615,"accuracy":0.5}"#,
        r#"{"stage":1000000,"task":1,"accuracy":0.5}"#,
        r#"{"stage":1,"task":1e300,"accuracy":0.5}"#,
    ]
    .iter()
    .enumerate()
    {
        let f = format!("r{i}.jsonl");
        std::fs::write(p.join(&f), format!("{rec}\n")).unwrap();
        refused(p, &["check", &f], &[&format!("{f}:1")]);
        refused(p, &["report", &f, "--markdown"], &[&format!("{f}:1")]);
    }
    // Losses of ±1e308 draw a figure (the axis is fitted to plottable values).
    std::fs::write(
        p.join("huge.jsonl"),
        "{\"event\":\"epoch\",\"epoch\":1,\"task_loss\":1e308}\n{\"event\":\"epoch\",\"epoch\":2,\"task_loss\":-1e308}\n{\"event\":\"epoch\",\"epoch\":1e308,\"task_loss\":1}\n",
    )
    .unwrap();
    for f in ["fig.svg", "fig.png"] {
        ok(mnemo_in(p, &["report", "huge.jsonl", "-o", f]));
    }
    // Arch sizes.
    for arch in [
        r#"[{"type":"conv2d","in_channels":1,"out_channels":1,"kernel_size":3,"padding":100000}]"#,
        r#"[{"type":"conv2d","in_channels":1,"out_channels":1,"kernel_size":100000}]"#,
    ] {
        refused(
            p,
            &["init", "--arch", arch, "-o", "c.safetensors"],
            &["conv2d"],
        );
    }
    // A model that no machine holds (10^12 parameters) is refused before initialisation.
    refused(
        p,
        &[
            "init",
            "--arch",
            "mlp:1000000-1000000-10",
            "-o",
            "big.safetensors",
        ],
        &["too large"],
    );
    // Detector windows, in every detector that has one.
    std::fs::write(p.join("v.jsonl"), "{\"loss\":0.5}\n").unwrap();
    for (det, flag) in [
        ("kswin", "--window-size"),
        ("kswin", "--stat-size"),
        ("stepd", "--window-size"),
        ("fhddm", "--sliding-window-size"),
        ("adwin", "--max-buckets"),
    ] {
        refused(
            p,
            &["drift", "--detector", det, flag, "1000000000000", "v.jsonl"],
            &[flag.trim_start_matches("--").replace('-', "_").as_str()],
        );
    }
    // A gzipped IDX file whose header claims 1 byte but inflates to 64 MB: refused after
    // reading two bytes of data.
    let mut raw = vec![0u8, 0, 8, 1, 0, 0, 0, 1];
    raw.extend(vec![0u8; 64 << 20]);
    let mut gz = flate2_gzip(&raw);
    std::fs::write(p.join("bomb-idx.gz"), std::mem::take(&mut gz)).unwrap();
    refused(
        p,
        &[
            "data",
            "import",
            "idx",
            "bomb-idx.gz",
            "bomb-idx.gz",
            "-o",
            "i.safetensors",
        ],
        &["bomb-idx.gz", "need 1 bytes"],
    );
}

/// Gzip without a dependency: the `gzip` tool.
fn flate2_gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut c = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let data = data.to_vec();
    let t = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let o = c.wait_with_output().unwrap();
    t.join().unwrap();
    o.stdout
}

/// Class 1: non-regular inputs (FIFO, devices, folders) are refused where a file is read,
/// without blocking; an unwritable stderr or stdout loses the message, never panics.
#[test]
fn special_inputs_and_unwritable_streams() {
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    let fifo = p.join("fifo.safetensors");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Nobody writes to the FIFO: a blocking open would hang the test.
    for a in [
        &["inspect", "fifo.safetensors"][..],
        &[
            "eval",
            "mlp.safetensors",
            "--arch",
            ARCH,
            "--data",
            "fifo.safetensors",
        ],
        &[
            "eval",
            "mlp.safetensors",
            "--arch",
            ARCH,
            "--data",
            "/dev/zero",
        ],
        &["diff", "mlp.safetensors", "fifo.safetensors"],
        &["data", "stats", "fifo.safetensors"],
        &[
            "train-ewc",
            "mlp.safetensors",
            "--arch",
            "fifo.safetensors",
            "--data",
            "mlp_data.safetensors",
            "-o",
            "o.safetensors",
        ],
    ] {
        refused(p, a, &["not a regular file"]);
    }
    refused(
        p,
        &["eval", "mlp.safetensors", "--arch", ARCH, "--data", "."],
        &[],
    );
    // stderr and stdout on /dev/full.
    for (args, code) in [
        (&["inspect", "missing.safetensors"][..], 2),
        (&["inspect", "mlp.safetensors"][..], 2),
        (&["init", "--arch", ARCH, "-o", "-"][..], 2),
    ] {
        let full = || {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap()
        };
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_mnemo"))
            .args(args)
            .current_dir(p)
            .stdout(full())
            .stderr(full())
            .status()
            .unwrap();
        assert_eq!(o.code(), Some(code), "{args:?}");
    }
}

/// Class 5: a closed stdout ends the JSON lines, not the run: the checkpoint is written and
/// the exit status is the run's.
#[test]
fn a_closed_stdout_keeps_the_training_result() {
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    for cmd in [
        &[
            "train-ewc",
            "mlp.safetensors",
            "--log-every",
            "1",
            "-o",
            "t.safetensors",
        ][..],
        &[
            "replay-train",
            "mlp.safetensors",
            "--log-every",
            "1",
            "--buffer",
            "b.safetensors",
            "-o",
            "r.safetensors",
        ],
    ] {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_mnemo"))
            .args([cmd, TINY].concat())
            .current_dir(p)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(c.stdout.take());
        let o = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    ok(mnemo_in(p, &["inspect", "t.safetensors"]));
    ok(mnemo_in(p, &["inspect", "r.safetensors"]));
    ok(mnemo_in(p, &["inspect", "b.safetensors"]));
}

/// Class 5: with RUST_BACKTRACE set, an ordinary error is one line; a shape mismatch names
/// the model and the data.
#[test]
fn errors_are_one_line_and_name_the_files() {
    let d = setup(&[
        "mlp.safetensors",
        "img_data.safetensors",
        "mlp_data.safetensors",
    ]);
    let p = d.path();
    for bt in ["1", "full"] {
        for args in [
            &[
                "eval",
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "img_data.safetensors",
            ][..],
            &[
                "train-ewc",
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "img_data.safetensors",
                "-o",
                "o.safetensors",
            ],
            &[
                "fisher",
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "img_data.safetensors",
                "-o",
                "f.safetensors",
            ],
        ] {
            let r = mnemo_env(
                p,
                args,
                &[("RUST_BACKTRACE", Some(bt)), ("RUST_LIB_BACKTRACE", None)],
            );
            assert_eq!(r.code, 2, "{}", r.stderr);
            assert_eq!(
                r.stderr.trim_end().lines().count(),
                1,
                "{args:?}: {}",
                r.stderr
            );
            assert!(
                r.stderr.contains("mlp.safetensors") && r.stderr.contains("img_data.safetensors"),
                "{}",
                r.stderr
            );
        }
    }
}

/// Class 5: `lora merge` refuses what PEFT would refuse or do differently, and `data take`
/// refuses an empty result.
#[test]
fn lora_configs_are_read_as_peft_reads_them() {
    let d = workdir();
    let p = d.path();
    copy_dir(&fixtures().join("lora/peft_mlp"), &p.join("ad"));
    std::fs::copy(fixture("mlp.safetensors"), p.join("mlp.safetensors")).unwrap();
    std::fs::copy(
        fixture("mlp_data.safetensors"),
        p.join("mlp_data.safetensors"),
    )
    .unwrap();
    ok(mnemo_in(
        p,
        &[
            "lora",
            "merge",
            "mlp.safetensors",
            "ad",
            "-o",
            "m.safetensors",
        ],
    ));
    std::fs::remove_file(p.join("m.safetensors")).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p.join("ad/adapter_config.json")).unwrap())
            .unwrap();
    for (key, value, named) in [
        ("use_rslora", serde_json::json!("yes"), "use_rslora"),
        ("use_rslora", serde_json::json!(1), "use_rslora"),
        (
            "fan_in_fan_out",
            serde_json::json!("false"),
            "fan_in_fan_out",
        ),
        ("lora_dropout", serde_json::json!("0.1"), "lora_dropout"),
        (
            "layers_to_transform",
            serde_json::json!([0]),
            "layers_to_transform",
        ),
        (
            "layers_pattern",
            serde_json::json!("layers"),
            "layers_pattern",
        ),
        (
            "modules_to_save",
            serde_json::json!(["4"]),
            "modules_to_save",
        ),
        (
            "target_modules",
            serde_json::json!(["nothing"]),
            "target_modules",
        ),
        ("target_modules", serde_json::json!(["0"]), "'4'"),
        // A regular expression is honoured as PEFT's re.fullmatch: one selecting nothing,
        // or one that does not parse, is refused.
        ("target_modules", serde_json::json!("x.*"), "target_modules"),
        ("target_modules", serde_json::json!("(0"), "target_modules"),
        // exclude_modules taking out a module the weights adapt.
        ("exclude_modules", serde_json::json!(["4"]), "'4'"),
        (
            "target_modules",
            serde_json::json!("all-linear"),
            "all-linear",
        ),
    ] {
        let mut c = cfg.clone();
        c[key] = value;
        let e = workdir();
        copy_dir(&p.join("ad"), &e.path().join("ad"));
        std::fs::copy(p.join("mlp.safetensors"), e.path().join("mlp.safetensors")).unwrap();
        std::fs::write(e.path().join("ad/adapter_config.json"), c.to_string()).unwrap();
        refused(
            e.path(),
            &[
                "lora",
                "merge",
                "mlp.safetensors",
                "ad",
                "-o",
                "m.safetensors",
            ],
            &[named],
        );
    }
    refused(
        p,
        &[
            "data",
            "take",
            "mlp_data.safetensors",
            "0",
            "-o",
            "t.safetensors",
        ],
        &["0"],
    );
}

/// Class 6: help that can be pasted: no line of any subcommand's help is wider than 100
/// columns (examples are broken with ` \` continuations, never mid-word), drift's first
/// example says what its exit status means, `mnemo --help` lists what each command does.
#[test]
fn help_examples_paste_and_summaries_are_current() {
    let top = ok(mnemo(&["--help"])).stdout;
    for word in ["pad", "shapes", "predicted", "masks"] {
        assert!(top.contains(word), "mnemo --help lacks '{word}':\n{top}");
    }
    let mut subs = vec![];
    for line in top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
    {
        match line.split_whitespace().next() {
            Some(w) if line.starts_with("  ") && !line.starts_with("   ") && w != "help" => {
                subs.push(w.to_string())
            }
            _ if line.trim().is_empty() => break,
            _ => {}
        }
    }
    assert!(subs.len() > 10, "{subs:?}");
    for s in &subs {
        let h = ok(mnemo(&[s, "--help"])).stdout;
        let ex: Vec<&str> = h
            .lines()
            .skip_while(|l| *l != "Examples:")
            .take_while(|l| *l != "Exit status:")
            .collect();
        for l in &ex {
            assert!(
                l.chars().count() <= 100,
                "mnemo {s} --help: an example line of {} columns: {l}",
                l.chars().count()
            );
        }
        // Each example is one command: its lines are joined by ` \`.
        for w in ex.windows(2) {
            if w[1].starts_with("    ") {
                assert!(
                    w[0].ends_with(" \\"),
                    "mnemo {s} --help: an example wrapped mid-line:\n{}\n{}",
                    w[0],
                    w[1]
                );
            }
        }
    }
    let drift = ok(mnemo(&["drift", "--help"])).stdout;
    assert!(!drift.contains("exit 1 if it drifted"), "{drift}");
}

/// The clap tree, walked: every numeric flag of every subcommand gets NaN, ±inf, 0, -1,
/// 1e12 and 10^12 written as an integer. No value may panic, hang or abort, and a run that
/// ends with exit 0 must leave only finite numbers in what it wrote.
#[test]
fn every_numeric_flag_survives_hostile_values() {
    let keys = ok(mnemo(&["config", "keys"])).json_lines();
    // A quick, successful invocation per subcommand (flag, value pairs first, then words).
    let train = [
        "mlp.safetensors",
        "--arch",
        ARCH,
        "--data",
        "mlp_data.safetensors",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--max-batches-per-epoch",
        "1",
    ];
    let base = |path: &str| -> Option<Vec<&str>> {
        Some(match path {
            "init" => vec!["--arch", ARCH, "-o", "o.safetensors"],
            "inspect" => vec!["mlp.safetensors", "--stats"],
            "diff" => vec!["mlp.safetensors", "mlp.safetensors"],
            "eval" => vec![
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "mlp_data.safetensors",
            ],
            "fisher" => vec![
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "mlp_data.safetensors",
                "-o",
                "f.safetensors",
            ],
            "train-ewc" => [&train[..], &["-o", "o.safetensors"]].concat(),
            "replay-train" => [
                &train[..],
                &["--buffer", "b.safetensors", "-o", "o.safetensors"],
            ]
            .concat(),
            "lora-gate" => [
                &train[..],
                &[
                    "--val",
                    "mlp_data.safetensors",
                    "--targets",
                    "0",
                    "--resamples",
                    "10",
                    "-o",
                    "ad",
                ],
            ]
            .concat(),
            "check" => vec!["r.jsonl", "-q"],
            "report" => vec!["r.jsonl", "--markdown"],
            "drift" => vec!["--detector", "adwin", "v.jsonl"],
            "merge" => vec![
                "linear",
                "mlp.safetensors",
                "mlp.safetensors",
                "-o",
                "m.safetensors",
            ],
            "data-take" => vec!["mlp_data.safetensors", "5", "-o", "t.safetensors"],
            "data-shapes" => vec!["-n", "2", "--size", "16", "-o", "s.safetensors"],
            "data-pad" => vec![
                "mlp_data.safetensors",
                "--pad",
                "1",
                "--shape",
                "4,5",
                "-o",
                "p.safetensors",
            ],
            "data-rotate" => vec![
                "mlp_data.safetensors",
                "--degrees",
                "10",
                "--shape",
                "4,5",
                "-o",
                "p.safetensors",
            ],
            _ => return None,
        })
    };
    let values = ["nan", "inf", "-inf", "0", "-1", "1e12", "1000000000000"];
    let fill = |p: &Path| {
        std::fs::write(p.join("r.jsonl"), "{\"stage\":1,\"task\":1,\"accuracy\":0.5}\n{\"stage\":2,\"task\":1,\"accuracy\":0.4}\n{\"stage\":2,\"task\":2,\"accuracy\":0.6}\n").unwrap();
        std::fs::write(p.join("v.jsonl"), "{\"loss\":0.5}\n{\"loss\":0.6}\n").unwrap();
    };
    // Each base invocation succeeds on its own, so the values below are what is tested.
    let mut tables: Vec<String> = keys
        .iter()
        .map(|k| {
            k["path"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect();
    tables.dedup();
    let mut based = 0;
    for t in &tables {
        let Some(args) = base(t) else { continue };
        let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
        fill(d.path());
        let path: Vec<&str> = match t.strip_prefix("data-") {
            Some(sub) => vec!["data", sub],
            None => vec![t.as_str()],
        };
        let r = mnemo_in(d.path(), &[&path[..], &args[..]].concat());
        assert!(
            matches!(r.code, 0 | 1),
            "the base of {t}: exit {}: {}",
            r.code,
            r.stderr
        );
        based += 1;
    }
    assert!(based >= 16, "{based} bases");
    let mut tried = 0;
    for k in &keys {
        if k["numeric"] != true || k["positional"] == true {
            continue;
        }
        let path: Vec<&str> = k["path"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let long = k["long"].as_str().unwrap();
        let table = path.join("-");
        let args = base(&table).unwrap_or_default();
        for v in values {
            let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
            let p = d.path();
            fill(p);
            // The flag under test replaces the base's own value of it.
            let mut a: Vec<String> = path.iter().map(|s| s.to_string()).collect();
            let mut i = 0;
            while i < args.len() {
                if args[i] == format!("--{long}") {
                    i += 2;
                    continue;
                }
                a.push(args[i].to_string());
                i += 1;
            }
            a.push(format!("--{long}={v}"));
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            let r = mnemo_in(p, &a);
            let what = format!("mnemo {}", a.join(" "));
            assert!(
                matches!(r.code, 0..=2),
                "{what}: exit {}: {}",
                r.code,
                r.stderr
            );
            assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
            if r.code == 0 {
                if let Err(e) = all_outputs_finite(p) {
                    panic!("{what}: exit 0 with {e}");
                }
                for bad in ["NaN", "Infinity", "inf,", "inf}"] {
                    assert!(!r.stdout.contains(bad), "{what}: {}", r.stdout);
                }
            }
            tried += 1;
        }
    }
    assert!(
        tried > 300,
        "only {tried} runs: the walk found too few numeric flags"
    );
}

/// Drift's detector parameters are text flags (each detector parses its own): walked too,
/// every parameter flag with every detector.
#[test]
fn every_detector_parameter_survives_hostile_values() {
    let keys = ok(mnemo(&["config", "keys"])).json_lines();
    let d = workdir();
    let p = d.path();
    let stream: String = (0..200)
        .map(|i| format!("{{\"loss\":{}}}\n", i % 2))
        .collect();
    std::fs::write(p.join("v.jsonl"), stream).unwrap();
    let detectors = [
        "page-hinkley",
        "adwin",
        "kswin",
        "ddm",
        "eddm",
        "hddm-a",
        "hddm-w",
        "fhddm",
        "cusum",
        "stepd",
        "ewma",
    ];
    let mut tried = 0;
    for k in &keys {
        let long = k["long"].as_str().unwrap_or("");
        if k["path"] != serde_json::json!(["drift"])
            || k["positional"] == true
            || k["kind"] != "One"
            || k["numeric"] == true
        {
            continue;
        }
        if ["detector", "field"].contains(&long) {
            continue;
        }
        for det in detectors {
            for v in ["nan", "inf", "-1", "0", "1000000000000"] {
                let flag = format!("--{long}={v}");
                let r = mnemo_in(p, &["drift", "--detector", det, &flag, "v.jsonl"]);
                assert!(
                    matches!(r.code, 0..=2),
                    "drift {det} {flag}: exit {}: {}",
                    r.code,
                    r.stderr
                );
                assert!(
                    !r.stderr.contains("panicked"),
                    "drift {det} {flag}: {}",
                    r.stderr
                );
                tried += 1;
            }
        }
    }
    assert!(tried > 200, "only {tried} runs");
}

#[test]
fn a_folder_output_that_is_not_a_folder_is_refused_before_any_work() {
    // lora-gate's adapter folder and a sharded merge's folder: a file or a device there is
    // refused when the destinations are checked, before training or merging.
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    std::fs::write(p.join("afile"), b"keep me").unwrap();
    for out in ["afile", "/dev/null"] {
        refused(
            p,
            &[
                "lora-gate",
                "mlp.safetensors",
                "--arch",
                ARCH,
                "--data",
                "mlp_data.safetensors",
                "--val",
                "mlp_data.safetensors",
                "--targets",
                "0",
                "-o",
                out,
            ],
            &["not a folder"],
        );
        refused(
            p,
            &[
                "merge",
                "linear",
                "mlp.safetensors",
                "mlp.safetensors",
                "--shard-size",
                "1KB",
                "-o",
                out,
            ],
            &["not a folder"],
        );
    }
}

#[test]
fn help_on_a_full_stdout_is_an_error() {
    use std::process::{Command, Stdio};
    for args in [&["--help"][..], &["train-ewc", "--help"], &["--version"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_mnemo"))
            .args(args)
            .stdout(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
            )
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn concurrent_runs_on_one_state_file_take_turns() {
    // Two train-ewc runs on one --state at once: the second waits, resumes from the state
    // the first finished with and ends with the same weights; neither corrupts the file.
    // A replay-train run whose buffer and state are both new in one folder locks that
    // folder once (it must not wait on itself).
    let d = setup(&["mlp.safetensors", "mlp_data.safetensors"]);
    let p = d.path();
    let spawn = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mnemo"))
            .args(args)
            .current_dir(p)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // A deadlock guard, not a timing test: far beyond what either run needs.
    let finish = |mut c: std::process::Child, what: &str| {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                let o = c.wait_with_output().unwrap();
                assert!(
                    status.success(),
                    "{what}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                return;
            }
            if start.elapsed().as_secs() > 300 {
                let _ = c.kill();
                panic!("{what}: still running after 300 s (waiting on its own lock?)");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let train = |out: &'static str| -> Vec<&'static str> {
        vec![
            "train-ewc",
            "mlp.safetensors",
            "--arch",
            ARCH,
            "--data",
            "mlp_data.safetensors",
            "--epochs",
            "3",
            "--state",
            "run.state",
            "-o",
            out,
        ]
    };
    let (a, b) = (
        spawn(&train("a.safetensors")),
        spawn(&train("b.safetensors")),
    );
    finish(a, "first train-ewc");
    finish(b, "second train-ewc");
    let (ca, cb) = (
        mnemo::checkpoint::Checkpoint::open(p.join("a.safetensors")).unwrap(),
        mnemo::checkpoint::Checkpoint::open(p.join("b.safetensors")).unwrap(),
    );
    for n in ca.names() {
        assert_eq!(ca.to_f32(n).unwrap(), cb.to_f32(n).unwrap(), "{n}");
    }
    let r = ok(mnemo_in(p, &train("c.safetensors")));
    assert_eq!(
        r.json_lines()[0]["event"],
        "resumed",
        "the state file is whole"
    );
    let replay = spawn(&[
        "replay-train",
        "mlp.safetensors",
        "--arch",
        ARCH,
        "--data",
        "mlp_data.safetensors",
        "--buffer",
        "new-buf.safetensors",
        "--state",
        "new.state",
        "-o",
        "r.safetensors",
    ]);
    finish(
        replay,
        "replay-train with a new buffer and a new state in one folder",
    );
}
