//! The shard → reduce pattern that spreads work over processes or machines (any scheduler):
//! `merge --shard-size S --shard-index K` workers then `--write-index`, and `fisher` on data
//! shards then `fisher --reduce`, run here as concurrent processes on one CPU.

mod common;
use common::*;
use mnemo::checkpoint::Checkpoint;
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn spawn(dir: &Path, args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mnemo")
}

fn wait_all(children: Vec<Child>) {
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every tensor of `a` and `b`: same names, dtypes, shapes and bytes.
fn same_tensors(a: &Checkpoint, b: &Checkpoint) {
    let names: Vec<&str> = a.names().collect();
    assert_eq!(names, b.names().collect::<Vec<_>>());
    for n in names {
        let (x, y) = (a.entry(n).unwrap(), b.entry(n).unwrap());
        assert_eq!((x.dtype, &x.shape), (y.dtype, &y.shape), "{n}");
        assert_eq!(a.bytes(n).unwrap(), b.bytes(n).unwrap(), "{n}");
    }
}

/// Runs mnemo in `dir` with owned arguments.
fn run(dir: &Path, args: &[String]) -> Run {
    mnemo_in(dir, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn merge_shards_from_concurrent_workers_join_into_the_single_process_result() {
    let d = workdir();
    for k in 0..3 {
        ok(mnemo_in(
            d.path(),
            &[
                "init",
                "--arch",
                "mlp:64-128-128-10",
                "--seed",
                &k.to_string(),
                "-o",
                &format!("m{k}.safetensors"),
            ],
        ));
    }
    let merge = strings(&[
        "merge",
        "ties",
        "--base",
        "m0.safetensors",
        "m1.safetensors",
        "m2.safetensors",
        "--density",
        "0.5",
        "--shard-size",
        "40KB",
    ]);
    let with = |extra: &[&str]| {
        let mut v = merge.clone();
        v.extend(strings(extra));
        v
    };
    let seq = ok(run(d.path(), &with(&["-o", "seq"])));
    let files = seq.last_json()["files"].as_array().unwrap().len();
    let n = files - 1; // the shards, then the index
    assert!(
        n >= 3,
        "the plan should have several shards: {}",
        seq.stdout
    );

    // Before any worker ran, joining fails and names the missing shard.
    std::fs::create_dir(d.path().join("par")).unwrap();
    let early = run(d.path(), &with(&["--write-index", "-o", "par"]));
    assert_eq!(early.code, 2, "{}", early.stderr);
    assert!(early.stderr.contains("--shard-index 1"), "{}", early.stderr);

    let workers: Vec<Child> = (1..=n)
        .map(|k| {
            spawn(
                d.path(),
                &with(&["--shard-index", &k.to_string(), "-o", "par"]),
            )
        })
        .collect();
    wait_all(workers);
    assert!(
        !d.path().join("par/model.safetensors.index.json").exists(),
        "workers must not write the index"
    );
    let join = with(&["--write-index", "-o", "par"]);
    ok(run(d.path(), &join));
    assert_eq!(
        std::fs::read(d.path().join("seq/model.safetensors.index.json")).unwrap(),
        std::fs::read(d.path().join("par/model.safetensors.index.json")).unwrap(),
        "the joined index differs from the single process's"
    );
    same_tensors(
        &Checkpoint::open(d.path().join("seq")).unwrap(),
        &Checkpoint::open(d.path().join("par")).unwrap(),
    );

    // A shard index past the plan, and a shard of another plan, are refused.
    let r = run(
        d.path(),
        &with(&["--shard-index", &(n + 1).to_string(), "-o", "x"]),
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("{n} shard")), "{}", r.stderr);
    let last = format!("model-{n:05}-of-{n:05}.safetensors");
    std::fs::copy(
        d.path()
            .join("par/model-00001-of-0000".to_string() + &n.to_string() + ".safetensors"),
        d.path().join("par").join(&last),
    )
    .unwrap();
    let r = run(d.path(), &join);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains(&last), "{}", r.stderr);
}

#[test]
fn fisher_of_data_shards_from_concurrent_workers_reduces_to_the_whole() {
    let d = workdir();
    let model = fixture("mlp.safetensors");
    let arch = fixture("mlp.arch.json");
    let data = fixture("mlp_data.safetensors");
    let parts = [(0, 20), (20, 20), (40, 24)];
    for (i, (skip, n)) in parts.iter().enumerate() {
        ok(mnemo_in(
            d.path(),
            &[
                "data",
                "take",
                &data,
                &n.to_string(),
                "--skip",
                &skip.to_string(),
                "-o",
                &format!("d{i}.safetensors"),
            ],
        ));
    }
    let fisher = |data: &str, out: &str| {
        strings(&[
            "fisher",
            &model,
            "--arch",
            &arch,
            "--data",
            data,
            "--batch-size",
            "7",
            "-o",
            out,
        ])
    };
    let workers: Vec<Child> = (0..parts.len())
        .map(|i| {
            spawn(
                d.path(),
                &fisher(&format!("d{i}.safetensors"), &format!("f{i}.safetensors")),
            )
        })
        .collect();
    wait_all(workers);
    ok(mnemo_in(
        d.path(),
        &[
            "fisher",
            "--reduce",
            "f0.safetensors",
            "f1.safetensors",
            "f2.safetensors",
            "-o",
            "reduced.safetensors",
        ],
    ));
    let whole = fisher(&data, "whole.safetensors");
    ok(run(d.path(), &whole));
    let (a, b) = (
        Checkpoint::open(d.path().join("reduced.safetensors")).unwrap(),
        Checkpoint::open(d.path().join("whole.safetensors")).unwrap(),
    );
    assert_eq!(a.metadata()["mnemo.fisher.samples"], "64");
    for n in b.names() {
        let (x, y) = (a.to_f32(n).unwrap(), b.to_f32(n).unwrap());
        let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        for (u, v) in x.iter().zip(&y) {
            assert!((u - v).abs() <= 1e-6 * scale, "{n}: {u} vs {v}");
        }
    }
}
