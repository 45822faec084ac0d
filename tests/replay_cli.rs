//! `mnemo replay-train`: one update against PyTorch (fixtures/replay/gen.py), buffer
//! persistence across invocations, class-balanced quotas, distillation logits, resumption,
//! and refusals.

mod common;
use common::*;
use mnemo::checkpoint::Checkpoint;
use serde_json::Value;
use std::path::Path;

fn cases() -> Vec<Value> {
    let s = std::fs::read_to_string(fixtures().join("replay/cases.json")).unwrap();
    serde_json::from_str::<Value>(&s)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn copy(from: &str, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

/// One SGD update on (1 − r)·CE(new) + r·(CE(replay) + W·MSE(logits, stored)), on ER-ACE's
/// (CE(new) over its present classes) and on DER++'s CE(new) + α·MSE + β·CE(replay): the
/// dense path (MLP) and candle's autograd (CNN with batchnorm) against torch.
#[test]
fn one_update_matches_torch() {
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let d = workdir();
        let buf = d.path().join("buf.safetensors");
        copy(&fixture(&format!("replay/{name}_buffer.safetensors")), &buf);
        let arch = match case["arch"].as_str() {
            Some(a) => fixture(a),
            None => "mlp:20-16-16-5".into(),
        };
        let (ratio, distill, lr) = (
            case["ratio"].to_string(),
            case["distill"].to_string(),
            case["lr"].to_string(),
        );
        let projection = case["projection"].as_str().unwrap_or("none");
        let incoming = case["incoming_loss"].as_str().unwrap_or("full");
        let mut extra = vec![];
        if let Some(b) = case.get("replay_labels") {
            extra.extend(["--replay-labels".to_string(), b.to_string()]);
        }
        let (model, new) = (
            fixture(case["model"].as_str().unwrap()),
            fixture(&format!("replay/{name}_new.safetensors")),
        );
        let mut args = vec![
            "replay-train",
            "--incoming-loss",
            incoming,
            "--projection",
            projection,
            &model,
            "--arch",
            &arch,
            "--data",
            &new,
            "--buffer",
            "buf.safetensors",
            "--replay-ratio",
            &ratio,
            "--distill",
            &distill,
            "--optimizer",
            "sgd",
            "--lr",
            &lr,
            "--batch-size",
            "16",
            "--no-shuffle",
            "-o",
            "out.safetensors",
        ];
        args.extend(extra.iter().map(String::as_str));
        let r = mnemo_in(d.path(), &args);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let lines = r.json_lines();
        let epoch = &lines[0];
        let close = |a: f64, b: f64| (a - b).abs() < 1e-5 * b.abs().max(1.0);
        assert!(
            close(
                epoch["task_loss"].as_f64().unwrap(),
                case["new_loss"].as_f64().unwrap()
            ),
            "{name}: {epoch}"
        );
        assert!(
            close(
                epoch["replay_loss"].as_f64().unwrap(),
                case["replay_loss"].as_f64().unwrap()
            ),
            "{name}: {epoch}"
        );
        if let Some(ace) = case.get("ace_loss") {
            assert!(
                close(epoch["ace_loss"].as_f64().unwrap(), ace.as_f64().unwrap()),
                "{name}: {epoch}"
            );
        }
        if projection == "agem" {
            assert_eq!(
                epoch["projected"].as_f64(),
                case["projected"].as_f64(),
                "{name}: {epoch}"
            );
        }
        let got = Checkpoint::open(d.path().join("out.safetensors")).unwrap();
        let want =
            Checkpoint::open(fixture(&format!("replay/{name}_expected.safetensors"))).unwrap();
        for t in want.names() {
            let (g, w) = (got.to_f32(t).unwrap(), want.to_f32(t).unwrap());
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{name}: {t}[{i}] = {a}, torch {b}"
                );
            }
        }
        // The buffer was full: it still holds 16 examples, now of 32 seen.
        let s = &lines.last().unwrap()["buffer"];
        assert_eq!(s["size"], 16, "{s}");
        assert_eq!(s["total_seen"], 32, "{s}");
        let b = Checkpoint::open(&buf).unwrap();
        assert_eq!(
            b.contains("logits"),
            case["distill"].as_f64().unwrap() > 0.0
        );
    }
}

/// Writes rows [skip, skip+n) of the MLP fixture data as `name`.
fn take(d: &Path, n: usize, skip: usize, name: &str) {
    let r = mnemo_in(
        d,
        &[
            "data",
            "take",
            &fixture("mlp_data.safetensors"),
            &n.to_string(),
            "--skip",
            &skip.to_string(),
            "-o",
            name,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

fn replay(d: &Path, model: &str, data: &str, buf: &str, extra: &[&str], out: &str) -> Run {
    let mut args = vec![
        "replay-train",
        model,
        "--arch",
        "mlp:20-16-16-5",
        "--data",
        data,
        "--buffer",
        buf,
        "--batch-size",
        "8",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--seed",
        "5",
        "-o",
        out,
    ];
    args.extend(extra);
    mnemo_in(d, &args)
}

fn buffer_state(path: &Path) -> (Vec<u8>, Vec<u8>, Vec<String>) {
    let c = Checkpoint::open(path).unwrap();
    let keys = [
        "mnemo.total_seen",
        "mnemo.buffer.rng",
        "mnemo.class_seen",
        "mnemo.capacity",
        "mnemo.policy",
    ];
    (
        c.bytes("input").unwrap().to_vec(),
        c.bytes("target").unwrap().to_vec(),
        keys.iter().map(|k| c.metadata()[*k].clone()).collect(),
    )
}

/// Two invocations over D1 then D2 leave exactly the buffer of one run over D1+D2
/// (insertion does not depend on the model, the replay draws or the batch boundaries).
#[test]
fn two_invocations_equal_one_over_the_concatenation() {
    let d = workdir();
    let p = d.path();
    take(p, 27, 0, "d1.safetensors");
    take(p, 37, 27, "d2.safetensors");
    take(p, 64, 0, "all.safetensors");
    let model = fixture("mlp.safetensors");
    for policy in ["reservoir", "class-balanced"] {
        let opts = ["--capacity", "10", "--policy", policy, "--no-shuffle"];
        let r = replay(
            p,
            &model,
            "d1.safetensors",
            "two.safetensors",
            &opts,
            "m1.safetensors",
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = replay(
            p,
            "m1.safetensors",
            "d2.safetensors",
            "two.safetensors",
            &["--no-shuffle"],
            "m2.safetensors",
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let r = replay(
            p,
            &model,
            "all.safetensors",
            "one.safetensors",
            &opts,
            "m.safetensors",
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let two = buffer_state(&p.join("two.safetensors"));
        assert_eq!(two, buffer_state(&p.join("one.safetensors")), "{policy}");
        assert_eq!(two.2[0], "64");
        std::fs::remove_file(p.join("two.safetensors")).unwrap();
        std::fs::remove_file(p.join("one.safetensors")).unwrap();
    }
}

/// The class-balanced policy keeps equal quotas of a skewed stream; the summary line
/// reports the histogram; `--distill` stores the logits of each buffered example.
#[test]
fn class_balanced_quotas_and_distill_logits() {
    let d = workdir();
    let p = d.path();
    // A stream with class 0 five times as frequent as the others: classes 0 and 1
    // of a 3-class task (the MLP has 5 outputs).
    let mut x = Vec::new();
    let mut y = Vec::new();
    for i in 0..240u32 {
        let c = if i % 7 < 5 { 0i64 } else { (i % 7 - 4) as i64 };
        x.extend((0..20).map(|j| ((i * 31 + j * 7) % 17) as f32 / 17.0));
        y.push(c);
    }
    let stream = p.join("stream.safetensors");
    let tensors = vec![
        mnemo::checkpoint::OwnedTensor::f32("input", vec![240, 20], &x),
        mnemo::checkpoint::OwnedTensor {
            name: "target".into(),
            dtype: mnemo::checkpoint::Dtype::I64,
            shape: vec![240],
            data: y
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        },
    ];
    mnemo::checkpoint::write_checkpoint(&stream, tensors, &Default::default()).unwrap();
    let counts = |policy: &str, buf: &str, extra: &[&str]| {
        let mut opts = vec!["--capacity", "30", "--policy", policy];
        opts.extend(extra);
        let r = replay(
            p,
            &fixture("mlp.safetensors"),
            "stream.safetensors",
            buf,
            &opts,
            "o.safetensors",
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let s = r.last_json();
        let h = &s["buffer"]["classes"];
        (0..3)
            .map(|c| h[c.to_string()].as_u64().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        counts("class-balanced", "cb.safetensors", &[]),
        vec![10, 10, 10]
    );
    let plain = counts("reservoir", "r.safetensors", &[]);
    assert!(plain[0] > 15, "the reservoir follows the stream: {plain:?}");
    // With --distill the buffer stores [30, 5] logits, finite and not all equal.
    counts("reservoir", "der.safetensors", &["--distill", "0.5"]);
    let b = Checkpoint::open(p.join("der.safetensors")).unwrap();
    assert_eq!(b.entry("logits").unwrap().shape, vec![30, 5]);
    let l = b.to_f32("logits").unwrap();
    assert!(l.iter().all(|v| v.is_finite()) && l.iter().any(|&v| v != l[0]));
    // A buffer filled without logits cannot be distilled from.
    let r = replay(
        p,
        "o.safetensors",
        "stream.safetensors",
        "r.safetensors",
        &["--distill", "1"],
        "o2.safetensors",
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("r.safetensors") && r.stderr.contains("logits"),
        "{}",
        r.stderr
    );
}

/// A run halted mid-epoch and resumed from --state ends with the same model and buffer
/// as one uninterrupted run.
#[test]
fn halted_and_resumed_run_gives_the_same_bytes() {
    let d = workdir();
    let p = d.path();
    let model = fixture("mlp.safetensors");
    let opts = ["--capacity", "12", "--epochs", "2", "--distill", "0.3"];
    let r = replay(
        p,
        &model,
        &fixture("mlp_data.safetensors"),
        "b1.safetensors",
        &opts,
        "a.safetensors",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut halted = opts.to_vec();
    halted.extend([
        "--state",
        "s.safetensors",
        "--save-every",
        "1",
        "--halt-after",
        "5",
    ]);
    let r = replay(
        p,
        &model,
        &fixture("mlp_data.safetensors"),
        "b2.safetensors",
        &halted,
        "b.safetensors",
    );
    assert_ne!(r.code, 0);
    assert!(
        !p.join("b2.safetensors").exists(),
        "the buffer is only written at the end"
    );
    let resume = [&opts[..], &["--state", "s.safetensors"]].concat();
    let r = replay(
        p,
        &model,
        &fixture("mlp_data.safetensors"),
        "b2.safetensors",
        &resume,
        "b.safetensors",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("\"resumed\""));
    let w = |f: &str| {
        let c = Checkpoint::open(p.join(f)).unwrap();
        c.names()
            .map(|n| (n.to_string(), c.bytes(n).unwrap().to_vec()))
            .collect::<Vec<_>>()
    };
    assert_eq!(w("a.safetensors"), w("b.safetensors"));
    assert_eq!(w("b1.safetensors"), w("b2.safetensors"));
}

#[test]
fn refusals_name_the_file() {
    let d = workdir();
    let p = d.path();
    let model = fixture("mlp.safetensors");
    let data = fixture("mlp_data.safetensors");
    let r = replay(
        p,
        &model,
        &data,
        "b.safetensors",
        &["--capacity", "8"],
        "o.safetensors",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Another capacity or policy for an existing buffer.
    let r = replay(
        p,
        &model,
        &data,
        "b.safetensors",
        &["--capacity", "9"],
        "x.safetensors",
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("b.safetensors") && r.stderr.contains("capacity"),
        "{}",
        r.stderr
    );
    let r = replay(
        p,
        &model,
        &data,
        "b.safetensors",
        &["--policy", "class-balanced"],
        "x.safetensors",
    );
    assert_eq!(r.code, 2);
    // A buffer of other examples (the CNN's 1×8×8 images).
    let r = mnemo_in(
        p,
        &[
            "replay-train",
            &fixture("cnn.safetensors"),
            "--arch",
            &fixture("cnn.arch.json"),
            "--data",
            &fixture("img_data.safetensors"),
            "--buffer",
            "b.safetensors",
            "-o",
            "x.safetensors",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("b.safetensors") && r.stderr.contains("shape"),
        "{}",
        r.stderr
    );
    // A file that is not a buffer (a copy of the model: the model itself would be refused
    // as a destination, the buffer being replaced).
    std::fs::copy(&model, p.join("notbuf.safetensors")).unwrap();
    let r = replay(p, &model, &data, "notbuf.safetensors", &[], "x.safetensors");
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a replay buffer"), "{}", r.stderr);
    let r = replay(p, &model, &data, &model, &[], "x.safetensors");
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("same file"), "{}", r.stderr);
    // Bad ratios.
    let r = replay(
        p,
        &model,
        &data,
        "b.safetensors",
        &["--replay-ratio", "1.5"],
        "x.safetensors",
    );
    assert_eq!(r.code, 2);
    assert!(!p.join("x.safetensors").exists());
}

/// ER-ACE and DER++ settings that cannot mean anything are refused before training.
#[test]
fn er_ace_and_der_refuse_what_they_cannot_serve() {
    let d = workdir();
    let run = |extra: &[&str]| {
        let (data, model) = (fixture("mlp_data.safetensors"), fixture("mlp.safetensors"));
        let mut args = vec![
            "replay-train",
            &model,
            "--arch",
            "mlp:20-16-16-5",
            "--data",
            &data,
            "--buffer",
            "b.st",
            "-o",
            "o.st",
        ];
        args.extend_from_slice(extra);
        mnemo_in(d.path(), &args)
    };
    for (extra, want) in [
        (&["--replay-labels", "0"][..], "needs --distill"),
        (
            &["--projection", "agem", "--incoming-loss", "ace"][..],
            "not to --projection agem",
        ),
        (
            &["--projection", "agem", "--replay-labels", "0.5"][..],
            "not to --projection agem",
        ),
        (
            &["--incoming-loss", "ace", "--label-smoothing", "0.1"][..],
            "ER-ACE",
        ),
        (&["--replay-labels", "nan"][..], "nan"),
    ] {
        let r = run(extra);
        assert_eq!(r.code, 2, "{extra:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{extra:?}: {}", r.stderr);
        assert!(!d.path().join("o.st").exists(), "{extra:?}");
    }
    // A run of each writes its fields.
    let r = ok(run(&["--incoming-loss", "ace", "--epochs", "2"]));
    assert!(r.json_lines()[1].get("ace_loss").is_some(), "{}", r.stdout);
}
