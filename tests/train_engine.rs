//! Engine behaviour that has no torch counterpart to compare with, checked by
//! properties that could fail: early stopping keeps exactly the best epoch's
//! weights, and a run killed at any point resumes from its --state file to
//! the same tensors as an uninterrupted run.

mod common;
use common::*;
use mnemo::checkpoint::Checkpoint;
use std::path::Path;

const MLP: &str = "mlp:20-16-16-5";

/// Every tensor of `a` equals `b`'s bit for bit (metadata may differ: provenance).
fn same_tensors(a: &Path, b: &Path) {
    let (a, b) = (Checkpoint::open(a).unwrap(), Checkpoint::open(b).unwrap());
    let names: Vec<&str> = a.names().collect();
    assert_eq!(names, b.names().collect::<Vec<_>>());
    for n in names {
        assert_eq!(a.bytes(n).unwrap(), b.bytes(n).unwrap(), "tensor {n}");
    }
}

fn mlp_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "train-ewc".into(),
        fixture("mlp.safetensors"),
        "--arch".into(),
        MLP.into(),
        "--data".into(),
        fixture("mlp_data.safetensors"),
        "-o".into(),
        out.into(),
        "--optimizer".into(),
        "sgd".into(),
        "--lr".into(),
        "0.5".into(),
        "--batch-size".into(),
        "8".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run(dir: &Path, args: &[String]) -> Run {
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    mnemo_in(dir, &argv)
}

#[test]
fn validation_keeps_the_best_epoch_and_patience_stops() {
    let d = workdir();
    let val = fixture("mlp_data_u8.safetensors");
    let r = ok(run(
        d.path(),
        &mlp_args("best.st", &["--epochs", "8", "--val", &val]),
    ));
    let lines = r.json_lines();
    let epochs: Vec<_> = lines.iter().filter(|l| l["event"] == "epoch").collect();
    assert_eq!(epochs.len(), 8);
    // The best epoch is the one with the lowest validation loss.
    let (best_i, _) = epochs
        .iter()
        .enumerate()
        .map(|(i, e)| (i, e["val_loss"].as_f64().unwrap()))
        .fold((0, f64::INFINITY), |b, x| if x.1 < b.1 { x } else { b });
    let summary = lines.last().unwrap();
    let best_epoch = summary["best_epoch"].as_u64().unwrap() as usize;
    assert_eq!(best_epoch, best_i + 1);
    assert!(best_epoch < 8, "the fixture should overfit before epoch 8");
    assert_eq!(summary["kept"], "best");
    // The output holds exactly the weights of a run that stopped at the best epoch.
    let e = best_epoch.to_string();
    ok(run(d.path(), &mlp_args("short.st", &["--epochs", &e])));
    same_tensors(&d.path().join("best.st"), &d.path().join("short.st"));

    // --keep-last: the 8th epoch's weights.
    ok(run(
        d.path(),
        &mlp_args("last.st", &["--epochs", "8", "--val", &val, "--keep-last"]),
    ));
    ok(run(d.path(), &mlp_args("plain.st", &["--epochs", "8"])));
    same_tensors(&d.path().join("last.st"), &d.path().join("plain.st"));

    // --patience P: stops P epochs after the best, still writing the best weights.
    let r = ok(run(
        d.path(),
        &mlp_args(
            "patient.st",
            &["--epochs", "8", "--val", &val, "--patience", "2"],
        ),
    ));
    let lines = r.json_lines();
    let n = lines.iter().filter(|l| l["event"] == "epoch").count();
    let s = lines.last().unwrap();
    assert_eq!(s["stopped_early"], true);
    assert_eq!(n, s["best_epoch"].as_u64().unwrap() as usize + 2);
    same_tensors(&d.path().join("patient.st"), &d.path().join("short.st"));
}

#[test]
fn patience_needs_validation_data() {
    let d = workdir();
    let r = run(d.path(), &mlp_args("x.st", &["--patience", "2"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--val"), "{}", r.stderr);
    assert!(!d.path().join("x.st").exists());
}

/// Runs `args` to completion once, and again halted after `halt` updates then resumed;
/// the two outputs must hold identical tensors.
fn resume_matches(dir: &Path, tag: &str, args: &[String], halt: u64) {
    let full = format!("{tag}_full.st");
    let mut a = args.to_vec();
    a.extend(["-o".into(), full.clone()]);
    ok(run(dir, &a));
    let out = format!("{tag}_resumed.st");
    let state = format!("{tag}.state");
    let mut b = args.to_vec();
    b.extend(["-o".into(), out.clone(), "--state".into(), state.clone()]);
    b.extend(["--save-every".into(), "3".into()]);
    let mut halted = b.clone();
    halted.extend(["--halt-after".into(), halt.to_string()]);
    let r = run(dir, &halted);
    assert_eq!(r.code, 2, "{tag}: the halt hook exits like a failure");
    assert!(
        dir.join(&state).exists(),
        "{tag}: state saved before the halt"
    );
    assert!(
        !dir.join(&out).exists(),
        "{tag}: no output from a halted run"
    );
    let r = ok(run(dir, &b));
    let lines = r.json_lines();
    assert_eq!(lines[0]["event"], "resumed", "{tag}");
    same_tensors(&dir.join(&full), &dir.join(&out));
}

#[test]
fn a_halted_run_resumes_to_the_same_weights() {
    let d = workdir();
    // MLP, Adam with a cosine schedule and shuffling: halted mid-epoch (after the save at
    // update 3, so updates 4 and 5 are redone) and exactly at an epoch boundary.
    let mut mlp = mlp_args("", &[]);
    mlp.truncate(6); // drop -o and the optimizer flags
    mlp.extend(
        [
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--lr",
            "0.01",
            "--schedule",
            "cosine",
            "--warmup",
            "2",
            "--clip-grad-norm",
            "1",
        ]
        .map(String::from),
    );
    resume_matches(d.path(), "mid", &mlp, 5);
    resume_matches(d.path(), "boundary", &mlp, 8);
    // With validation and patience: the best weights survive in the state file.
    let mut val = mlp_args("", &[]);
    val.retain(|a| a != "-o" && !a.is_empty());
    val.extend(
        [
            "--epochs",
            "8",
            "--val",
            &fixture("mlp_data_u8.safetensors"),
            "--patience",
            "2",
        ]
        .map(String::from),
    );
    resume_matches(d.path(), "val", &val, 45);
    // Batchnorm running statistics, dropout masks and SGD momentum (zoo model), with
    // accumulation.
    let zoo: Vec<String> = [
        "train-ewc",
        &fixture("zoo.safetensors"),
        "--arch",
        &fixture("zoo.arch.json"),
        "--data",
        &fixture("zoo_data.safetensors"),
        "--optimizer",
        "sgd",
        "--momentum",
        "0.9",
        "--lr",
        "0.05",
        "--batch-size",
        "4",
        "--accumulate-grad-batches",
        "2",
        "--epochs",
        "2",
    ]
    .map(String::from)
    .to_vec();
    resume_matches(d.path(), "zoo", &zoo, 4);
}

#[test]
fn a_state_file_from_another_run_is_refused() {
    let d = workdir();
    let state = ["--state", "s.state"];
    ok(run(d.path(), &mlp_args("a.st", &state)));
    let r = run(
        d.path(),
        &mlp_args("b.st", &[&state[..], &["--momentum", "0.5"]].concat()),
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("s.state") && r.stderr.contains("different run"),
        "{}",
        r.stderr
    );
    assert!(!d.path().join("b.st").exists());
}

#[test]
fn sigkill_at_any_moment_then_resume_gives_the_same_weights() {
    let d = workdir();
    let base: Vec<String> = [
        "train-ewc",
        &fixture("zoo.safetensors"),
        "--arch",
        &fixture("zoo.arch.json"),
        "--data",
        &fixture("zoo_data.safetensors"),
        "--batch-size",
        "2",
        "--epochs",
        "6",
        "-q",
    ]
    .map(String::from)
    .to_vec();
    let mut full = base.clone();
    full.extend(["-o".into(), "full.st".into()]);
    ok(run(d.path(), &full));
    let mut resumable = base;
    resumable
        .extend(["-o", "out.st", "--state", "run.state", "--save-every", "1"].map(String::from));
    let mut kills = 0;
    for delay_ms in [3u64, 8, 15, 25, 40, 60, 90, 130] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mnemo"))
            .args(&resumable)
            .current_dir(d.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        // Whatever moment the kill hit, the state file is whole.
        if d.path().join("run.state").exists() {
            Checkpoint::open(d.path().join("run.state")).expect("state loadable after a kill");
        }
    }
    eprintln!("killed {kills} of 8 attempts before completion");
    ok(run(d.path(), &resumable));
    same_tensors(&d.path().join("full.st"), &d.path().join("out.st"));
}

/// Two invocations chained by --save-optimizer / --init-optimizer take exactly the
/// updates of one run over both datasets (Adam's moments and bias-correction step carry
/// over); without them the second run restarts Adam and ends elsewhere.
#[test]
fn optimizer_state_carries_across_invocations() {
    let d = workdir();
    let data = fixture("mlp_data.safetensors");
    for (name, skip) in [("d1.st", "0"), ("d2.st", "16")] {
        ok(mnemo_in(
            d.path(),
            &["data", "take", &data, "16", "--skip", skip, "-o", name],
        ));
    }
    ok(mnemo_in(
        d.path(),
        &["data", "take", &data, "32", "-o", "both.st"],
    ));
    let train = |input: &str, data: &str, out: &str, extra: &[&str]| {
        let mut a = vec![
            "train-ewc",
            input,
            "--arch",
            MLP,
            "--data",
            data,
            "-o",
            out,
            "--optimizer",
            "adam",
            "--lr",
            "0.01",
            "--batch-size",
            "8",
            "--no-shuffle",
            "-q",
        ];
        a.extend_from_slice(extra);
        ok(mnemo_in(d.path(), &a))
    };
    let m0 = fixture("mlp.safetensors");
    train(&m0, "both.st", "one.st", &[]);
    train(&m0, "d1.st", "a.st", &["--save-optimizer", "opt.st"]);
    train(
        "a.st",
        "d2.st",
        "b.st",
        &["--init-optimizer", "opt.st", "--save-optimizer", "opt2.st"],
    );
    same_tensors(&d.path().join("one.st"), &d.path().join("b.st"));
    let opt = Checkpoint::open(d.path().join("opt2.st")).unwrap();
    assert_eq!(opt.metadata()["mnemo.optimizer.step"], "4");
    assert_eq!(opt.metadata()["mnemo.optimizer"], "adam");
    assert!(opt.names().any(|n| n == "exp_avg_sq/0.weight"));
    // The same second run with a fresh Adam does not reach the single run's weights.
    train("a.st", "d2.st", "fresh.st", &[]);
    let (x, y) = (
        Checkpoint::open(d.path().join("one.st")).unwrap(),
        Checkpoint::open(d.path().join("fresh.st")).unwrap(),
    );
    assert_ne!(x.bytes("0.weight").unwrap(), y.bytes("0.weight").unwrap());

    // Refusals name the file: a model is not an optimizer state; Adam moments do not
    // start SGD; another model's moments do not fit.
    ok(mnemo_in(
        d.path(),
        &["init", "--arch", "mlp:20-8-5", "-o", "small.st"],
    ));
    let refusals: [(&str, &str, &[&str], &str); 3] = [
        ("a.st", "a.st", &[], "not an optimizer state"),
        (
            "a.st",
            "opt.st",
            &["--optimizer", "sgd", "--momentum", "0.9"],
            "holds adam moments",
        ),
        ("small.st", "opt.st", &[], "has shape"),
    ];
    for (model, state, extra, says) in refusals {
        let mut a = vec!["train-ewc", model, "--data", "d2.st", "-o", "x.st"];
        a.extend_from_slice(extra);
        a.extend(["--init-optimizer", state]);
        let r = mnemo_in(d.path(), &a);
        assert_eq!(r.code, 2, "{}", r.stderr);
        assert!(
            r.stderr.contains(state) && r.stderr.contains(says),
            "{}",
            r.stderr
        );
    }
    assert!(!d.path().join("x.st").exists());
}
