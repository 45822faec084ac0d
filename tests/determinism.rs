//! The same command gives the same bytes whatever the number of threads: train-ewc (with
//! an EWC penalty and an L2 pull), replay-train, fisher (all three modes and --reduce) and
//! merge, each with RAYON_NUM_THREADS=1, 2, 3 and unset (mnemo then uses one thread per
//! CPU); fisher and train-ewc on a CNN too (candle's autograd path); and the statistics
//! inspect --stats and diff print. The model is big enough for every parallel path to split its work (tensors of
//! more than 2^16 elements: chunked decoding and penalties; matrices that gemm splits
//! across threads). docs/reliability.md says what is and is not thread-independent.

mod common;
use common::*;

const THREADS: [Option<&str>; 4] = [Some("1"), Some("2"), Some("3"), None];

/// Runs `args` once per thread count; every run must succeed and write `output` with the
/// same bytes. Returns the stdout of each run.
fn same_bytes(dir: &std::path::Path, args: &[&str], output: &str) -> Vec<String> {
    let mut first: Option<Vec<u8>> = None;
    let mut stdouts = Vec::new();
    for t in THREADS {
        let r = mnemo_env(
            dir,
            args,
            &[("RAYON_NUM_THREADS", t), ("CANDLE_NUM_THREADS", None)],
        );
        assert_eq!(r.code, 0, "{args:?} with {t:?} threads: {}", r.stderr);
        let bytes = std::fs::read(dir.join(output)).unwrap();
        std::fs::remove_file(dir.join(output)).unwrap();
        match &first {
            None => first = Some(bytes),
            Some(b) => assert!(
                *b == bytes,
                "{args:?}: RAYON_NUM_THREADS={t:?} wrote other bytes than RAYON_NUM_THREADS=1"
            ),
        }
        stdouts.push(r.stdout);
    }
    stdouts
}

/// Drops the wall-clock fields of JSON Lines output.
fn without_seconds(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("seconds");
            }
            v
        })
        .collect()
}

#[test]
fn outputs_do_not_depend_on_the_thread_count() {
    let d = workdir();
    let p = d.path();
    let arch = "mlp:20-384-384-5"; // 384×384 = 147,456 elements in one tensor
    for (seed, out) in [
        ("1", "a.safetensors"),
        ("2", "b.safetensors"),
        ("3", "c.safetensors"),
    ] {
        ok(mnemo_in(
            p,
            &["init", "--arch", arch, "--seed", seed, "-o", out],
        ));
    }
    std::fs::copy(fixture("mlp_data.safetensors"), p.join("data.safetensors")).unwrap();
    std::fs::copy(
        fixture("mh_b_data.safetensors"),
        p.join("data2.safetensors"),
    )
    .unwrap();
    let data = ["--data", "data.safetensors"];
    // Fisher in every mode, and the reduction of two shards.
    for mode in ["empirical", "true", "batch"] {
        same_bytes(
            p,
            &[
                &["fisher", "a.safetensors", "--mode", mode][..],
                &data,
                &["-o", "f.safetensors"],
            ]
            .concat(),
            "f.safetensors",
        );
    }
    ok(mnemo_in(
        p,
        &[
            &["fisher", "a.safetensors"][..],
            &data,
            &["-o", "f1.safetensors"],
        ]
        .concat(),
    ));
    ok(mnemo_in(
        p,
        &[
            "fisher",
            "a.safetensors",
            "--data",
            "data2.safetensors",
            "-o",
            "f2.safetensors",
        ],
    ));
    same_bytes(
        p,
        &[
            "fisher",
            "--reduce",
            "f1.safetensors",
            "f2.safetensors",
            "-o",
            "f.safetensors",
        ],
        "f.safetensors",
    );
    // train-ewc with a penalty and an L2 pull; the JSON lines (losses, penalties) too.
    let train = [
        "train-ewc",
        "a.safetensors",
        "--data",
        "data2.safetensors",
        "--penalty",
        "f1.safetensors:a.safetensors",
        "--lambda",
        "100",
        "--l2-anchor",
        "b.safetensors",
        "--l2-lambda",
        "0.01",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--clip-grad-norm",
        "1",
        "-o",
        "t.safetensors",
    ];
    let outs = same_bytes(p, &train, "t.safetensors");
    for o in &outs[1..] {
        assert_eq!(
            without_seconds(o),
            without_seconds(&outs[0]),
            "train-ewc's JSON lines"
        );
    }
    // A CNN with batchnorm (candle's autograd, not the dense path): fisher and training.
    std::fs::copy(fixture("cnn.safetensors"), p.join("cnn.safetensors")).unwrap();
    std::fs::copy(fixture("cnn.arch.json"), p.join("cnn.arch.json")).unwrap();
    std::fs::copy(fixture("img_data.safetensors"), p.join("img.safetensors")).unwrap();
    let cnn = [
        "cnn.safetensors",
        "--arch",
        "cnn.arch.json",
        "--data",
        "img.safetensors",
    ];
    same_bytes(
        p,
        &[&["fisher"][..], &cnn, &["-o", "f.safetensors"]].concat(),
        "f.safetensors",
    );
    same_bytes(
        p,
        &[
            &["train-ewc"][..],
            &cnn,
            &["--epochs", "2", "--batch-size", "16", "-o", "t.safetensors"],
        ]
        .concat(),
        "t.safetensors",
    );
    // replay-train, the buffer rebuilt from scratch each time.
    let replay = [
        "replay-train",
        "a.safetensors",
        "--data",
        "data.safetensors",
        "--buffer",
        "buf.safetensors",
        "--capacity",
        "40",
        "--distill",
        "0.5",
        "--batch-size",
        "16",
        "-o",
        "r.safetensors",
    ];
    let mut bufs = Vec::new();
    for t in THREADS {
        let r = mnemo_env(p, &replay, &[("RAYON_NUM_THREADS", t)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        bufs.push((
            std::fs::read(p.join("r.safetensors")).unwrap(),
            std::fs::read(p.join("buf.safetensors")).unwrap(),
        ));
        std::fs::remove_file(p.join("buf.safetensors")).unwrap();
    }
    assert!(
        bufs.windows(2).all(|w| w[0] == w[1]),
        "replay-train output or buffer"
    );
    // merge: every method that reduces across models, and the Fisher-weighted one.
    let three = ["a.safetensors", "b.safetensors", "c.safetensors"];
    let base = ["--base", "a.safetensors"];
    let o = ["-o", "m.safetensors"];
    let merges: Vec<Vec<&str>> = vec![
        [&["merge", "linear"][..], &three, &o].concat(),
        [
            &["merge", "ties"][..],
            &three,
            &base,
            &["--density", "0.3"],
            &o,
        ]
        .concat(),
        [
            &["merge", "dare"][..],
            &three,
            &base,
            &["--density", "0.5", "--ties"],
            &o,
        ]
        .concat(),
        [
            &["merge", "breadcrumbs"][..],
            &three,
            &base,
            &["--density", "0.5"],
            &o,
        ]
        .concat(),
        [&["merge", "model-stock"][..], &three, &base, &o].concat(),
        [
            &[
                "merge",
                "slerp",
                "a.safetensors",
                "b.safetensors",
                "--t",
                "0.3",
            ][..],
            &o,
        ]
        .concat(),
        [
            &["merge", "fisher", "a.safetensors", "b.safetensors"][..],
            &["--fisher", "f1.safetensors", "f2.safetensors"],
            &o,
        ]
        .concat(),
    ];
    for args in merges {
        same_bytes(p, &args, "m.safetensors");
    }
    // The statistics of inspect --stats and diff (f64 sums over chunks read in parallel).
    for args in [
        vec!["inspect", "--stats", "--json", "a.safetensors"],
        vec!["diff", "--json", "a.safetensors", "b.safetensors"],
    ] {
        let outs: Vec<String> = THREADS
            .iter()
            .map(|t| mnemo_env(p, &args, &[("RAYON_NUM_THREADS", *t)]).stdout)
            .collect();
        assert!(outs.windows(2).all(|w| w[0] == w[1]), "{args:?}: {outs:?}");
    }
}
