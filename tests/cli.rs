//! The binary's conventions: outputs, exit codes, determinism, provenance, help and man pages.

mod common;
use common::*;

#[test]
fn init_is_deterministic_and_self_describing() {
    let d = workdir();
    let p = d.path();
    let r = ok(mnemo_in(
        p,
        &[
            "init",
            "--arch",
            "mlp:20-16-5",
            "--seed",
            "7",
            "-o",
            "a.safetensors",
        ],
    ));
    assert_eq!(r.last_json()["parameters"], 20 * 16 + 16 + 16 * 5 + 5);
    ok(mnemo_in(
        p,
        &[
            "init",
            "--arch",
            "mlp:20-16-5",
            "--seed",
            "7",
            "-o",
            "b.safetensors",
        ],
    ));
    ok(mnemo_in(
        p,
        &[
            "init",
            "--arch",
            "mlp:20-16-5",
            "--seed",
            "8",
            "-o",
            "c.safetensors",
        ],
    ));
    let a = std::fs::read(p.join("a.safetensors")).unwrap();
    let b = std::fs::read(p.join("b.safetensors")).unwrap();
    let c = std::fs::read(p.join("c.safetensors")).unwrap();
    // Same seed, same weights; the command line (output name) differs only in metadata.
    let r = mnemo_in(p, &["diff", "a.safetensors", "b.safetensors"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_ne!(a, c);
    // Byte-identical when the command line is identical too.
    ok(mnemo_in(
        p,
        &[
            "init",
            "--arch",
            "mlp:20-16-5",
            "--seed",
            "7",
            "-o",
            "a.safetensors",
        ],
    ));
    assert_eq!(a, std::fs::read(p.join("a.safetensors")).unwrap());
    let _ = b;
    let meta =
        ok(mnemo_in(p, &["inspect", "--json", "a.safetensors"])).last_json()["metadata"].clone();
    assert_eq!(meta["format"], "pt");
    assert_eq!(meta["mnemo.seed"], "7");
    assert!(meta["mnemo.command"]
        .as_str()
        .unwrap()
        .starts_with("mnemo init --arch mlp:20-16-5"));
    assert!(meta["mnemo.arch"].as_str().unwrap().contains("\"linear\""));
    // The arch travels with the file: eval needs no --arch.
    ok(mnemo(&[
        "eval",
        p.join("a.safetensors").to_str().unwrap(),
        "--data",
        &fixture("mlp_data.safetensors"),
    ]));
    // Only the outputs are left: no temporary files.
    let names: Vec<_> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn eval_stream_emits_batches_then_summary() {
    let r = ok(mnemo(&[
        "eval",
        &fixture("mlp.safetensors"),
        "--arch",
        "mlp:20-16-16-5",
        "--data",
        &fixture("mlp_data.safetensors"),
        "--batch-size",
        "16",
        "--stream",
    ]));
    let lines = r.json_lines();
    assert_eq!(lines.len(), 5);
    for (i, l) in lines[..4].iter().enumerate() {
        assert_eq!(l["batch"], i);
        assert_eq!(l["n"], 16);
        assert!(l["loss"].as_f64().unwrap() > 0.0);
    }
    let mean: f64 = lines[..4]
        .iter()
        .map(|l| l["loss"].as_f64().unwrap())
        .sum::<f64>()
        / 4.0;
    let summary = &lines[4];
    assert!((summary["loss"].as_f64().unwrap() - mean).abs() < 1e-9);
    assert_eq!(summary["n"], 64);
}

#[test]
fn inspect_reads_headers_and_stats() {
    let r = ok(mnemo(&[
        "inspect",
        "--json",
        "--stats",
        &fixture("cnn.safetensors"),
    ]));
    let v = r.last_json();
    assert!(v["parameters"].as_u64().unwrap() > 0);
    let t = v["tensors"].as_array().unwrap();
    let rv = t.iter().find(|t| t["name"] == "1.running_var").unwrap();
    assert_eq!(rv["dtype"], "F32");
    assert!(rv["stats"]["min"].as_f64().unwrap() > 0.0);
    let nb = t
        .iter()
        .find(|t| t["name"] == "1.num_batches_tracked")
        .unwrap();
    assert_eq!(nb["dtype"], "I64");
    assert_eq!(nb["shape"], serde_json::json!([]));
    // Human table.
    let r = ok(mnemo(&["inspect", &fixture("mlp_sharded")]));
    assert!(r.stdout.contains("2 shards"), "{}", r.stdout);
    assert!(r.stdout.contains("4.weight"));
}

#[test]
fn diff_exit_codes_follow_cmp() {
    let same = mnemo(&["diff", &fixture("mlp.safetensors"), &fixture("mlp_sharded")]);
    assert_eq!(same.code, 0, "{}{}", same.stdout, same.stderr);
    // f16 copy differs by rounding: beyond tol 0, within 1e-2.
    let r = mnemo(&[
        "diff",
        &fixture("mlp.safetensors"),
        &fixture("mlp_f16.safetensors"),
        "--json",
    ]);
    assert_eq!(r.code, 1);
    let s = r.last_json();
    assert_eq!(s["differing"], 6);
    let max = s["max_abs"].as_f64().unwrap();
    assert!(max > 0.0 && max < 1e-3, "{max}");
    assert_eq!(
        mnemo(&[
            "diff",
            &fixture("mlp.safetensors"),
            &fixture("mlp_f16.safetensors"),
            "--tol",
            "1e-3"
        ])
        .code,
        0
    );
    // Structural differences.
    let r = mnemo(&[
        "diff",
        &fixture("mlp.safetensors"),
        &fixture("cnn.safetensors"),
        "--json",
    ]);
    assert_eq!(r.code, 1);
    let s = r.last_json();
    assert!(s["missing_in_b"].as_u64().unwrap() > 0 && s["extra_in_b"].as_u64().unwrap() > 0);
}

#[test]
fn errors_exit_2_and_name_the_problem() {
    let d = workdir();
    let p = d.path();
    // Labels out of range for the head.
    let r = mnemo(&[
        "eval",
        &fixture("mlp.safetensors"),
        "--arch",
        "mlp:20-16-16-3",
        "--data",
        &fixture("mlp_data.safetensors"),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("shape"), "{}", r.stderr);
    let r = mnemo(&[
        "eval",
        &fixture("multihead.safetensors"),
        "--arch",
        &fixture("multihead.arch.json"),
        "--head",
        "b",
        "--data",
        &fixture("mlp_data.safetensors"),
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("out of range") && r.stderr.contains("head 'b'"),
        "{}",
        r.stderr
    );
    // No arch.
    let r = mnemo(&[
        "eval",
        &fixture("mlp.safetensors"),
        "--data",
        &fixture("mlp_data.safetensors"),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--arch"), "{}", r.stderr);
    // Several heads and none chosen.
    let r = mnemo(&[
        "eval",
        &fixture("multihead.safetensors"),
        "--arch",
        &fixture("multihead.arch.json"),
        "--data",
        &fixture("mlp_data.safetensors"),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--head"), "{}", r.stderr);
    // A model file used as a dataset.
    let r = mnemo(&[
        "eval",
        &fixture("mlp.safetensors"),
        "--arch",
        "mlp:20-16-16-5",
        "--data",
        &fixture("mlp.safetensors"),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no tensor 'input'"), "{}", r.stderr);
    // Mismatched N.
    let bad = p.join("bad_n.safetensors");
    let mut data = vec![0u8; 2 * 4];
    data.extend(vec![0u8; 3 * 8]);
    raw_safetensors(
        &bad,
        r#"{"input":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},"target":{"dtype":"I64","shape":[3],"data_offsets":[8,32]}}"#,
        &data,
    );
    let r = mnemo(&[
        "eval",
        &fixture("mlp.safetensors"),
        "--arch",
        "mlp:20-16-16-5",
        "--data",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("bad_n.safetensors") && r.stderr.contains("2 examples"),
        "{}",
        r.stderr
    );
    // Bad arch spec.
    let r = mnemo(&[
        "init",
        "--arch",
        "mlp:10-x",
        "-o",
        p.join("x.st").to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2);
    assert!(!p.join("x.st").exists());
    // Missing file.
    let r = mnemo(&["inspect", "/nonexistent/model.safetensors"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("/nonexistent/model.safetensors"));
    // Unknown flag: clap's usage error is exit 2 too.
    assert_eq!(mnemo(&["eval", "--bogus"]).code, 2);
}

#[test]
fn hostile_files_are_refused_not_trusted() {
    let d = workdir();
    let p = d.path();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("short", vec![1, 2, 3], "too short"),
        (
            "huge_header",
            {
                let mut v = 200_000_000u64.to_le_bytes().to_vec();
                v.extend(b"{}");
                v
            },
            "limit",
        ),
        (
            "past_end",
            {
                let mut v = 4096u64.to_le_bytes().to_vec();
                v.extend(b"{}");
                v
            },
            "past the end",
        ),
    ];
    for (name, bytes, msg) in cases {
        let f = p.join(format!("{name}.safetensors"));
        std::fs::write(&f, bytes).unwrap();
        let r = mnemo(&["inspect", f.to_str().unwrap()]);
        assert_eq!(r.code, 2, "{name}");
        assert!(
            r.stderr.contains(msg) && r.stderr.contains(name),
            "{name}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"));
    }
    let json_cases = [
        (
            "overlap",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
            "overlaps",
        ),
        (
            "out_of_range",
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            8,
            "out of range",
        ),
        (
            "bytes_mismatch",
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            8,
            "needs 12",
        ),
        (
            "duplicate",
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
            "duplicate",
        ),
        ("not_json", "{not json", 0, "not valid JSON"),
    ];
    for (name, header, n, msg) in json_cases {
        let f = p.join(format!("{name}.safetensors"));
        raw_safetensors(&f, header, &vec![0u8; n]);
        let r = mnemo(&["inspect", f.to_str().unwrap()]);
        assert_eq!(r.code, 2, "{name}");
        assert!(r.stderr.contains(msg), "{name}: {}", r.stderr);
    }
    // Non-UTF-8 header.
    let f = p.join("utf8.safetensors");
    let mut v = 4u64.to_le_bytes().to_vec();
    v.extend([b'{', 0xc3, 0x28, b'}']);
    std::fs::write(&f, v).unwrap();
    let r = mnemo(&["inspect", f.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("UTF-8"), "{}", r.stderr);
    // An index that points outside its folder.
    let idx = p.join("model.safetensors.index.json");
    std::fs::write(
        &idx,
        r#"{"metadata":{},"weight_map":{"w":"../../etc/passwd"}}"#,
    )
    .unwrap();
    let r = mnemo(&["inspect", idx.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("plain relative path"), "{}", r.stderr);
}

#[test]
fn unaligned_tensors_are_read_correctly() {
    // A U8 tensor of 1 byte pushes the F32 tensor after it off 4-byte alignment.
    let d = workdir();
    let f = d.path().join("unaligned.safetensors");
    let mut data = vec![7u8];
    data.extend(1.25f32.to_le_bytes());
    data.extend((-3.5f32).to_le_bytes());
    raw_safetensors(
        &f,
        r#"{"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}}"#,
        &data,
    );
    let r = ok(mnemo(&[
        "inspect",
        "--json",
        "--stats",
        f.to_str().unwrap(),
    ]));
    let t = &r.last_json()["tensors"];
    let w = t
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "w")
        .unwrap();
    assert_eq!(w["stats"]["min"], -3.5);
    assert_eq!(w["stats"]["max"], 1.25);
}

#[test]
fn closed_pipe_exits_quietly() {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args([
            "eval",
            &fixture("mlp.safetensors"),
            "--arch",
            "mlp:20-16-16-5",
            "--data",
            &fixture("mlp_data.safetensors"),
            "--batch-size",
            "1",
            "--stream",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away at once
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn every_subcommand_has_help_with_examples_and_exit_status() {
    for sub in ["init", "inspect", "diff", "eval", "fisher", "train-ewc"] {
        let r = ok(mnemo(&[sub, "--help"]));
        assert!(
            r.stdout.contains("Examples:") && r.stdout.contains("mnemo "),
            "{sub}"
        );
        assert!(r.stdout.contains("Exit status:"), "{sub}");
    }
}

#[test]
fn man_pages_are_current() {
    let d = workdir();
    ok(mnemo(&["man", "--out", d.path().to_str().unwrap(), "-q"]));
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut n = 0;
    for e in std::fs::read_dir(d.path()).unwrap() {
        let e = e.unwrap();
        let fresh = std::fs::read(e.path()).unwrap();
        let old = std::fs::read(committed.join(e.file_name())).unwrap_or_default();
        assert!(
            fresh == old,
            "man/{} is stale: run `make man`",
            e.file_name().to_string_lossy()
        );
        n += 1;
    }
    assert!(n >= 5);
    let page = std::fs::read_to_string(committed.join("mnemo-eval.1")).unwrap();
    assert!(page.contains("EXAMPLES") && page.contains("EXIT STATUS"));
}

#[test]
fn completion_scripts_cover_every_subcommand() {
    for shell in ["bash", "zsh", "fish"] {
        let r = ok(mnemo(&["completions", shell]));
        for word in ["train-ewc", "merge", "drift", "min-instances", "shard-size"] {
            assert!(r.stdout.contains(word), "{shell}: no '{word}'");
        }
    }
    // The bash script parses.
    let d = workdir();
    let r = ok(mnemo(&["completions", "bash"]));
    std::fs::write(d.path().join("c.bash"), &r.stdout).unwrap();
    let st = std::process::Command::new("bash")
        .arg("-n")
        .arg(d.path().join("c.bash"))
        .status()
        .unwrap();
    assert!(st.success());
    let r = mnemo(&["completions", "tcsh"]);
    assert_eq!(r.code, 2);
}

/// `eval --data A B`: one line per dataset (numbered tasks), each equal to evaluating it
/// alone, then the mean accuracy.
#[test]
fn eval_several_datasets() {
    let d = workdir();
    let args = |data: &[&str]| {
        let mut a = vec![
            "eval".to_string(),
            fixture("mlp.safetensors"),
            "--arch".into(),
            "mlp:20-16-16-5".into(),
            "--data".into(),
        ];
        a.extend(data.iter().map(|s| fixture(s)));
        a
    };
    let run = |data: &[&str]| {
        let a = args(data);
        let r = mnemo_in(d.path(), &a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.json_lines()
    };
    let both = run(&["mlp_data.safetensors", "mh_b_data.safetensors"]);
    assert_eq!(both.len(), 3);
    for (i, name) in ["mlp_data.safetensors", "mh_b_data.safetensors"]
        .iter()
        .enumerate()
    {
        let alone = &run(&[name])[0];
        assert_eq!(both[i]["task"], i + 1);
        assert_eq!(both[i]["accuracy"], alone["accuracy"]);
        assert_eq!(both[i]["loss"], alone["loss"]);
    }
    let mean =
        (both[0]["accuracy"].as_f64().unwrap() + both[1]["accuracy"].as_f64().unwrap()) / 2.0;
    assert!((both[2]["mean_accuracy"].as_f64().unwrap() - mean).abs() < 1e-12);
}
