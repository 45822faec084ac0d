//! `mnemo online` and `mnemo data stream`: prequential learning with an EMA against PyTorch
//! (fixtures/online/gen.py), both framings, resumption to the same weights, a cut stream,
//! and clean stops on SIGTERM.

mod common;
use common::*;
use mnemo::checkpoint::Checkpoint;
use serde_json::Value;
use std::path::Path;

fn expected() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("online/expected.json")).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Every tensor of `a` equals `b`'s bit for bit.
fn assert_same_tensors(a: &Path, b: &Path) {
    let (a, b) = (Checkpoint::open(a).unwrap(), Checkpoint::open(b).unwrap());
    assert_eq!(a.names().collect::<Vec<_>>(), b.names().collect::<Vec<_>>());
    for name in a.names() {
        assert_eq!(a.bytes(name).unwrap(), b.bytes(name).unwrap(), "{name}");
    }
}

fn stream(dir: &Path, data: &str, chunk: usize, format: &str) -> Vec<u8> {
    let r = mnemo_in(
        dir,
        &[
            "data",
            "stream",
            data,
            "--chunk",
            &chunk.to_string(),
            "--format",
            format,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.raw_stdout
}

fn online_args(case: &Value, extra: &[&str]) -> Vec<String> {
    let o = &case["optimizer"];
    let mut a: Vec<String> = vec![
        "online".into(),
        fixture(case["model"].as_str().unwrap()),
        "--arch".into(),
        arch_arg(case["arch"].as_str().unwrap()),
        "--data".into(),
        "-".into(),
        "--batch-size".into(),
        case["batch"].to_string(),
        "--optimizer".into(),
        o["name"].as_str().unwrap().into(),
        "--lr".into(),
        o["lr"].to_string(),
        "--ema-decay".into(),
        case["decay"].to_string(),
    ];
    if let Some(m) = o.get("momentum") {
        a.extend(["--momentum".into(), m.to_string()]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// `online` with `args` stopped after 24 examples (`--max-examples`), then run again from
/// its state over the whole stream.
fn stopped_and_resumed(dir: &Path, case: &Value, input: &[u8], args: &[&str]) {
    let mut first = args.to_vec();
    first.extend(["--max-examples", "24"]);
    assert_eq!(run_online(dir, case, input, &first).code, 0);
    let r = run_online(dir, case, input, args);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// `train-ewc` over the case's data as `online` sees it: one epoch in file order, the same
/// batch size and optimizer, `extra` flags added; its output at `out`.
fn train_ewc_as_online(dir: &Path, case: &Value, extra: &[&str], out: &str) {
    let o = &case["optimizer"];
    let (data, model) = (
        fixture(case["data"].as_str().unwrap()),
        fixture(case["model"].as_str().unwrap()),
    );
    let (batch, lr) = (case["batch"].to_string(), o["lr"].to_string());
    let momentum = o["momentum"].to_string();
    let mut a = vec![
        "train-ewc",
        &model,
        "--arch",
        case["arch"].as_str().unwrap(),
        "--data",
        &data,
        "--epochs",
        "1",
        "--no-shuffle",
        "--batch-size",
        &batch,
        "--optimizer",
        o["name"].as_str().unwrap(),
        "--lr",
        &lr,
        "--momentum",
        &momentum,
        "-o",
        out,
        "-q",
    ];
    a.extend_from_slice(extra);
    ok(mnemo_in(dir, &a));
}

fn run_online(dir: &Path, case: &Value, input: &[u8], extra: &[&str]) -> Run {
    let args = online_args(case, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    mnemo_stdin(dir, &refs, input)
}

#[test]
fn prequential_scores_live_weights_and_ema_equal_torch() {
    for case in expected() {
        let name = case["name"].as_str().unwrap();
        let dir = workdir();
        let batch = case["batch"].as_u64().unwrap() as usize;
        let input = stream(
            dir.path(),
            &fixture(case["data"].as_str().unwrap()),
            batch,
            "safetensors",
        );
        let r = run_online(
            dir.path(),
            &case,
            &input,
            &["-o", "live.safetensors", "--ema", "ema.safetensors", "-q"],
        );
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let records = r.json_lines();
        let want = case["records"].as_array().unwrap();
        assert_eq!(records.len(), want.len(), "{name}: one record per example");
        for (i, (g, w)) in records.iter().zip(want).enumerate() {
            let (gl, wl) = (g["loss"].as_f64().unwrap(), w["loss"].as_f64().unwrap());
            assert!(
                (gl - wl).abs() <= 1e-5 * wl.abs().max(1.0),
                "{name} example {i}: loss {gl}, torch {wl}"
            );
            let right = w["correct"].as_bool().unwrap();
            assert_eq!(
                g["accuracy"].as_f64().unwrap(),
                right as u8 as f64,
                "{name} example {i}"
            );
            assert_eq!(g["error"].as_f64().unwrap(), 1.0 - right as u8 as f64);
            assert_eq!(g["seen"].as_u64().unwrap(), i as u64 + 1);
        }
        let live = Checkpoint::open(dir.path().join("live.safetensors")).unwrap();
        let ema = Checkpoint::open(dir.path().join("ema.safetensors")).unwrap();
        let online = fixtures().join("online");
        let want_live = Checkpoint::open(online.join(case["live"].as_str().unwrap())).unwrap();
        let want_ema = Checkpoint::open(online.join(case["ema"].as_str().unwrap())).unwrap();
        assert_close(&live, &want_live, 1e-5, &format!("{name} live"));
        assert_close(&ema, &want_ema, 1e-5, &format!("{name} ema"));
        let n = want.len().to_string();
        assert_eq!(live.metadata().get("mnemo.online.seen"), Some(&n));
        assert_eq!(
            ema.metadata().get("mnemo.ema.decay").map(String::as_str),
            Some(case["decay"].to_string().as_str())
        );
        // The EMA file is a model: it evaluates.
        let e = mnemo_in(
            dir.path(),
            &[
                "eval",
                "ema.safetensors",
                "--data",
                &fixture(case["data"].as_str().unwrap()),
            ],
        );
        assert_eq!(e.code, 0, "{}", e.stderr);
    }
}

#[test]
fn both_framings_and_any_chunking_learn_the_same_weights() {
    let case = &expected()[0];
    let dir = workdir();
    let data = fixture(case["data"].as_str().unwrap());
    let mut outs = Vec::new();
    for (i, (chunk, format)) in [(4, "safetensors"), (7, "safetensors"), (1, "jsonl")]
        .iter()
        .enumerate()
    {
        let input = stream(dir.path(), &data, *chunk, format);
        let out = format!("live{i}.safetensors");
        let r = run_online(
            dir.path(),
            case,
            &input,
            &["-o", &out, "--every", "8", "-q"],
        );
        assert_eq!(r.code, 0, "{format}: {}", r.stderr);
        let recs = r.json_lines();
        assert_eq!(recs.len(), 8, "{format}: 64 examples, a record per 8");
        assert_eq!(recs[7]["seen"], 64);
        outs.push(dir.path().join(out));
    }
    // Micro-batches are cut from the stream, not from its chunks: the same updates.
    assert_same_tensors(&outs[0], &outs[1]);
    assert_same_tensors(&outs[0], &outs[2]);
}

#[test]
fn a_resumed_learner_ends_with_the_uninterrupted_weights() {
    let case = &expected()[2];
    let dir = workdir();
    let input = stream(
        dir.path(),
        &fixture(case["data"].as_str().unwrap()),
        3,
        "safetensors",
    );
    let full = run_online(
        dir.path(),
        case,
        &input,
        &[
            "-o",
            "full.safetensors",
            "--ema",
            "full_ema.safetensors",
            "-q",
        ],
    );
    assert_eq!(full.code, 0, "{}", full.stderr);
    // Stopped after 20 examples (a checkpoint every 8), then the whole stream again.
    let common = [
        "-o",
        "live.safetensors",
        "--ema",
        "ema.safetensors",
        "--state",
        "s.state",
        "--checkpoint-every",
        "8",
        "-q",
    ];
    let mut first: Vec<&str> = common.to_vec();
    first.extend(["--max-examples", "20"]);
    let r = run_online(dir.path(), case, &input, &first);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let live = Checkpoint::open(dir.path().join("live.safetensors")).unwrap();
    assert_eq!(live.metadata()["mnemo.online.seen"], "20");
    let r = run_online(dir.path(), case, &input, &common);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = r.json_lines();
    assert_eq!(
        recs.first().unwrap()["seen"],
        21,
        "the first 20 are skipped"
    );
    assert_same_tensors(
        &dir.path().join("live.safetensors"),
        &dir.path().join("full.safetensors"),
    );
    assert_same_tensors(
        &dir.path().join("ema.safetensors"),
        &dir.path().join("full_ema.safetensors"),
    );
    // A producer that continues instead of starting over: every example is new.
    let mut cont: Vec<&str> = common.to_vec();
    cont.extend(["--resume", "continue", "--max-examples", "56"]);
    let r = run_online(dir.path(), case, &input, &cont);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json_lines().first().unwrap()["seen"], 49);
    let live = Checkpoint::open(dir.path().join("live.safetensors")).unwrap();
    assert_eq!(live.metadata()["mnemo.online.seen"], "56");
    // Another model's state is refused, naming it.
    let other = expected()[0].clone();
    let r = run_online(dir.path(), &other, &input, &common);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("s.state"), "{}", r.stderr);
}

#[test]
fn a_cut_stream_is_an_error_naming_the_chunk_and_keeps_what_was_learned() {
    let case = &expected()[0];
    let dir = workdir();
    let input = stream(
        dir.path(),
        &fixture(case["data"].as_str().unwrap()),
        4,
        "safetensors",
    );
    let frame = input.len() / 16;
    let cut = &input[..5 * frame + frame / 2];
    let r = run_online(dir.path(), case, cut, &["-o", "live.safetensors", "-q"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("chunk 5") && r.stderr.contains("mid-chunk"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.json_lines().len(),
        20,
        "the five whole chunks were learned"
    );
    let live = Checkpoint::open(dir.path().join("live.safetensors")).unwrap();
    assert_eq!(live.metadata()["mnemo.online.seen"], "20");
    // A JSON line cut short, and one of another shape.
    let text = String::from_utf8(stream(
        dir.path(),
        &fixture(case["data"].as_str().unwrap()),
        1,
        "jsonl",
    ))
    .unwrap();
    let cut = &text[..text.len() - 10];
    let r = run_online(
        dir.path(),
        case,
        cut.as_bytes(),
        &["-o", "l2.safetensors", "-q"],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("line 64") && r.stderr.contains("mid-line"),
        "{}",
        r.stderr
    );
    let bad = "{\"input\": [1, 2], \"target\": 0}\n";
    let r = run_online(
        dir.path(),
        case,
        bad.as_bytes(),
        &["-o", "l3.safetensors", "-q"],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("mlp.safetensors on the stream -, examples 0..1")
            && r.stderr.contains("[1, 2]"),
        "{}",
        r.stderr
    );
}

#[test]
fn sigterm_stops_cleanly_with_a_checkpoint() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let case = &expected()[0];
    let dir = workdir();
    let input = stream(
        dir.path(),
        &fixture(case["data"].as_str().unwrap()),
        4,
        "safetensors",
    );
    let args = online_args(
        case,
        &[
            "-o",
            "live.safetensors",
            "--ema",
            "ema.safetensors",
            "--state",
            "s.state",
            "--checkpoint-every",
            "1000",
            "-q",
        ],
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args(&args)
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Half the stream, and the pipe left open: the learner waits for more.
    stdin.write_all(&input[..input.len() / 2]).unwrap();
    stdin.flush().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..32 {
        line.clear();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    }
    let last: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(last["seen"], 32);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a SIGTERM stop is clean");
    drop(stdin);
    let live = Checkpoint::open(dir.path().join("live.safetensors")).unwrap();
    assert_eq!(live.metadata()["mnemo.online.seen"], "32");
    assert!(dir.path().join("ema.safetensors").exists());
    // The rest of the stream resumes from it to the uninterrupted weights.
    let r = run_online(
        dir.path(),
        case,
        &input,
        &[
            "-o",
            "live.safetensors",
            "--ema",
            "ema.safetensors",
            "--state",
            "s.state",
            "-q",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let full = run_online(dir.path(), case, &input, &["-o", "full.safetensors", "-q"]);
    assert_eq!(full.code, 0);
    assert_same_tensors(
        &dir.path().join("live.safetensors"),
        &dir.path().join("full.safetensors"),
    );
}

#[test]
fn online_output_feeds_drift_in_one_pipe() {
    let case = &expected()[0];
    let dir = workdir();
    let input = stream(
        dir.path(),
        &fixture(case["data"].as_str().unwrap()),
        4,
        "jsonl",
    );
    let r = run_online(dir.path(), case, &input, &["-o", "live.safetensors", "-q"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let d = mnemo_stdin(
        dir.path(),
        &["drift", "--field", "error", "--detector", "ddm", "-q"],
        &r.raw_stdout,
    );
    assert!(
        d.code == 0 || d.code == 1,
        "drift reads every record: {}",
        d.stderr
    );
}

#[test]
fn bad_online_flags_are_refused_before_any_work() {
    let case = &expected()[0];
    let dir = workdir();
    for (extra, says) in [
        (
            vec!["-o", "x.safetensors", "--ema-decay", "1.5"],
            "--ema-decay",
        ),
        (
            vec!["-o", "x.safetensors", "--ema-decay", "nan"],
            "--ema-decay",
        ),
        (
            vec!["-o", "x.safetensors", "--batch-size", "0"],
            "--batch-size",
        ),
        (
            vec!["-o", "x.safetensors", "--ema", "x.safetensors"],
            "x.safetensors",
        ),
        (
            vec!["-o", "x.safetensors", "--checkpoint-seconds", "nan"],
            "--checkpoint-seconds",
        ),
    ] {
        let r = run_online(dir.path(), case, b"", &extra);
        assert_eq!(r.code, 2, "{extra:?}");
        assert!(r.stderr.contains(says), "{extra:?}: {}", r.stderr);
        assert!(!dir.path().join("x.safetensors").exists());
    }
}

/// With `--buffer`, one pass of the stream is replay-train's first epoch in file order: the
/// same updates, the same replay draws, the same buffer.
#[test]
fn online_replay_equals_replay_train_over_the_same_examples() {
    let case = &expected()[0];
    let dir = workdir();
    let data = fixture(case["data"].as_str().unwrap());
    let input = stream(dir.path(), &data, 5, "safetensors");
    let extra = [
        "-o",
        "live.safetensors",
        "--buffer",
        "b1.safetensors",
        "--capacity",
        "16",
        "--replay-ratio",
        "0.3",
        "-q",
    ];
    let r = run_online(dir.path(), case, &input, &extra);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let o = &case["optimizer"];
    let t = mnemo_in(
        dir.path(),
        &[
            "replay-train",
            &fixture(case["model"].as_str().unwrap()),
            "--arch",
            case["arch"].as_str().unwrap(),
            "--data",
            &data,
            "--buffer",
            "b2.safetensors",
            "--capacity",
            "16",
            "--replay-ratio",
            "0.3",
            "--epochs",
            "1",
            "--no-shuffle",
            "--batch-size",
            &case["batch"].to_string(),
            "--optimizer",
            o["name"].as_str().unwrap(),
            "--lr",
            &o["lr"].to_string(),
            "--momentum",
            &o["momentum"].to_string(),
            "-o",
            "rt.safetensors",
            "-q",
        ],
    );
    assert_eq!(t.code, 0, "{}", t.stderr);
    assert_same_tensors(
        &dir.path().join("live.safetensors"),
        &dir.path().join("rt.safetensors"),
    );
    assert_same_tensors(
        &dir.path().join("b1.safetensors"),
        &dir.path().join("b2.safetensors"),
    );
    // Stopped after 24 examples and resumed: the same weights and buffer again.
    let common = [
        "-o",
        "l2.safetensors",
        "--buffer",
        "b3.safetensors",
        "--capacity",
        "16",
        "--replay-ratio",
        "0.3",
        "--state",
        "s.state",
        "--checkpoint-every",
        "8",
        "-q",
    ];
    stopped_and_resumed(dir.path(), case, &input, &common);
    assert_same_tensors(
        &dir.path().join("l2.safetensors"),
        &dir.path().join("rt.safetensors"),
    );
    assert_same_tensors(
        &dir.path().join("b3.safetensors"),
        &dir.path().join("b2.safetensors"),
    );
}

#[test]
fn a_resumed_learner_with_nothing_new_leaves_its_files_as_they_are() {
    let case = &expected()[0];
    let dir = workdir();
    let input = stream(
        dir.path(),
        &fixture(case["data"].as_str().unwrap()),
        4,
        "safetensors",
    );
    let args = [
        "-o",
        "live.safetensors",
        "--ema",
        "ema.safetensors",
        "--state",
        "s.state",
        "--buffer",
        "b.safetensors",
        "-q",
    ];
    assert_eq!(run_online(dir.path(), case, &input, &args).code, 0);
    let before: Vec<Vec<u8>> = [
        "live.safetensors",
        "ema.safetensors",
        "s.state",
        "b.safetensors",
    ]
    .iter()
    .map(|f| std::fs::read(dir.path().join(f)).unwrap())
    .collect();
    // The whole stream again (all of it seen), and an empty one.
    for again in [&input[..], &[][..]] {
        let r = run_online(dir.path(), case, again, &args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.is_empty());
        for (f, b) in [
            "live.safetensors",
            "ema.safetensors",
            "s.state",
            "b.safetensors",
        ]
        .iter()
        .zip(&before)
        {
            assert_eq!(&std::fs::read(dir.path().join(f)).unwrap(), b, "{f}");
        }
    }
}

/// SIGKILL at any moment loses at most what came after the last checkpoint: the files on
/// disk are whole, and resuming ends with the uninterrupted weights.
#[test]
fn sigkill_loses_at_most_the_last_interval() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let case = &expected()[0];
    let dir = workdir();
    let input = stream(
        dir.path(),
        &fixture(case["data"].as_str().unwrap()),
        4,
        "safetensors",
    );
    let common = [
        "-o",
        "live.safetensors",
        "--ema",
        "ema.safetensors",
        "--state",
        "s.state",
        "--checkpoint-every",
        "8",
        "-q",
    ];
    let args = online_args(case, &common);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args(&args)
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&input[..input.len() * 3 / 4]).unwrap();
    stdin.flush().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    for _ in 0..30 {
        line.clear();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);
    let live = Checkpoint::open(dir.path().join("live.safetensors")).unwrap();
    let seen: u64 = live.metadata()["mnemo.online.seen"].parse().unwrap();
    assert!(
        seen.is_multiple_of(8) && (16..=48).contains(&seen),
        "seen {seen}"
    );
    Checkpoint::open(dir.path().join("ema.safetensors")).unwrap();
    let r = run_online(dir.path(), case, &input, &common);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let full = run_online(dir.path(), case, &input, &["-o", "full.safetensors", "-q"]);
    assert_eq!(full.code, 0);
    assert_same_tensors(
        &dir.path().join("live.safetensors"),
        &dir.path().join("full.safetensors"),
    );
}

/// A producer in another language: a Python one-liner writing JSON Lines (no packages).
#[test]
fn a_python_one_liner_is_a_producer() {
    let dir = workdir();
    let producer = "import json,random\nr=random.Random(0)\nfor i in range(40):\n x=[r.gauss(0,1) for _ in range(20)]\n print(json.dumps({'input':x,'target':int(x[0]>0)}))";
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            r#"set -o pipefail; python3 -c "$(printf "$1")" | "$2" online "$3" --arch mlp:20-16-16-5 --data - --ema ema.safetensors -o live.safetensors --every 10 -q"#,
            "bash",
            producer,
            env!("CARGO_BIN_EXE_mnemo"),
            &fixture("mlp.safetensors"),
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    let live = Checkpoint::open(dir.path().join("live.safetensors")).unwrap();
    assert_eq!(live.metadata()["mnemo.online.seen"], "40");
}

/// Every training command reads `--data -` whole: the same weights as from the file;
/// provenance records the hash of what was read.
#[test]
fn training_commands_read_a_stream_as_their_data() {
    let dir = workdir();
    let data = fixture("mlp_data.safetensors");
    let framed = stream(dir.path(), &data, 10, "jsonl");
    let base = |out: &str, d: &str| {
        vec![
            "train-ewc".to_string(),
            fixture("mlp.safetensors"),
            "--arch".into(),
            "mlp:20-16-16-5".into(),
            "--data".into(),
            d.into(),
            "--epochs".into(),
            "2".into(),
            "--batch-size".into(),
            "8".into(),
            "-o".into(),
            out.into(),
            "-q".into(),
        ]
    };
    let args = base("file.safetensors", &data);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(mnemo_in(dir.path(), &refs).code, 0);
    let args = base("stdin.safetensors", "-");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = mnemo_stdin(dir.path(), &refs, &framed);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_tensors(
        &dir.path().join("file.safetensors"),
        &dir.path().join("stdin.safetensors"),
    );
    let meta = Checkpoint::open(dir.path().join("stdin.safetensors")).unwrap();
    assert!(
        meta.metadata()
            .values()
            .any(|v| v.contains("blake3-stream:")),
        "{:?}",
        meta.metadata()
    );
    // A FIFO stays refused as a dataset file (never block on an input); `< fifo` is the way.
    let fifo = dir.path().join("in.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let args = base("fifo.safetensors", fifo.to_str().unwrap());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = mnemo_in(dir.path(), &refs);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!dir.path().join("fifo.safetensors").exists());
    // fisher too.
    let r = mnemo_stdin(
        dir.path(),
        &[
            "fisher",
            &fixture("mlp.safetensors"),
            "--arch",
            "mlp:20-16-16-5",
            "--data",
            "-",
            "-o",
            "f1.safetensors",
        ],
        &framed,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = mnemo_in(
        dir.path(),
        &[
            "fisher",
            &fixture("mlp.safetensors"),
            "--arch",
            "mlp:20-16-16-5",
            "--data",
            &data,
            "-o",
            "f2.safetensors",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_tensors(
        &dir.path().join("f1.safetensors"),
        &dir.path().join("f2.safetensors"),
    );
}

/// `online` reads a FIFO: it waits for its producer, as a long-running learner does.
#[test]
fn online_reads_a_fifo() {
    let case = &expected()[0];
    let dir = workdir();
    let input = stream(
        dir.path(),
        &fixture(case["data"].as_str().unwrap()),
        4,
        "safetensors",
    );
    let fifo = dir.path().join("in.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, input).unwrap())
    };
    let mut args = online_args(case, &["-o", "live.safetensors", "-q"]);
    let i = args.iter().position(|a| a == "-").unwrap();
    args[i] = fifo.to_string_lossy().into_owned();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = mnemo_in(dir.path(), &refs);
    writer.join().unwrap();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json_lines().len(), 64);
}

/// LwF and the L2 anchor are strategies of the shared engine online too: `online` over a
/// stream learns what `train-ewc` learns from the same examples in the same order, with
/// the same teacher and anchor, and a resumed learner ends with the same weights.
#[test]
fn online_lwf_and_anchor_equal_train_ewc_over_the_same_examples() {
    let case = &expected()[0];
    let dir = workdir();
    let data = fixture(case["data"].as_str().unwrap());
    // A teacher other than the start: the model after one epoch of plain training.
    let train = |extra: &[&str], out: &str| train_ewc_as_online(dir.path(), case, extra, out);
    train(&[], "teacher.safetensors");
    let strategy = [
        "--distill-from",
        "teacher.safetensors",
        "--distill-temperature",
        "2",
        "--distill-weight",
        "0.7",
        "--l2-anchor",
        "teacher.safetensors",
        "--l2-lambda",
        "0.05",
    ];
    train(&strategy, "ewc.safetensors");
    let input = stream(dir.path(), &data, 5, "safetensors");
    let mut extra = vec!["-o", "live.safetensors", "-q"];
    extra.extend(strategy);
    let r = run_online(dir.path(), case, &input, &extra);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_tensors(
        &dir.path().join("live.safetensors"),
        &dir.path().join("ewc.safetensors"),
    );
    // Stopped after 24 examples and resumed: the same weights.
    let mut common = vec![
        "-o",
        "l2.safetensors",
        "--state",
        "s.state",
        "--checkpoint-every",
        "8",
        "-q",
    ];
    common.extend(strategy);
    stopped_and_resumed(dir.path(), case, &input, &common);
    assert_same_tensors(
        &dir.path().join("l2.safetensors"),
        &dir.path().join("ewc.safetensors"),
    );
}

/// SI is a strategy of the shared engine online too: over a stream, `online` learns the
/// weights and writes the importance Ω (prior added) that `train-ewc` does from the same
/// examples in the same order; a learner stopped and resumed ends with the same Ω.
#[test]
fn online_si_importance_equals_train_ewc_over_the_same_examples() {
    let case = &expected()[0];
    let dir = workdir();
    let data = fixture(case["data"].as_str().unwrap());
    let train = |extra: &[&str], out: &str| train_ewc_as_online(dir.path(), case, extra, out);
    // An earlier task's importance, as the prior.
    train(&["--si-importance", "prior.safetensors"], "t1.safetensors");
    let si = ["--si-xi", "0.2", "--si-prior", "prior.safetensors"];
    let mut offline = vec!["--si-importance", "omega.safetensors"];
    offline.extend(si);
    train(&offline, "ewc.safetensors");
    let input = stream(dir.path(), &data, 5, "safetensors");
    let mut extra = vec![
        "-o",
        "live.safetensors",
        "--si-importance",
        "omega-online.safetensors",
        "-q",
    ];
    extra.extend(si);
    let r = run_online(dir.path(), case, &input, &extra);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_tensors(
        &dir.path().join("live.safetensors"),
        &dir.path().join("ewc.safetensors"),
    );
    assert_same_tensors(
        &dir.path().join("omega-online.safetensors"),
        &dir.path().join("omega.safetensors"),
    );
    let omega = Checkpoint::open(dir.path().join("omega-online.safetensors")).unwrap();
    assert_eq!(omega.metadata()["mnemo.importance"], "si");
    // This task's path integral adds to the prior.
    let prior = Checkpoint::open(dir.path().join("prior.safetensors")).unwrap();
    let total = |c: &Checkpoint| -> f64 {
        c.names()
            .map(|n| c.to_f32(n).unwrap().iter().map(|&x| x as f64).sum::<f64>())
            .sum()
    };
    assert!(total(&omega) > total(&prior) && total(&prior) > 0.0);
    // Stopped after 24 examples and resumed: the same Ω.
    let mut common = vec![
        "-o",
        "l2.safetensors",
        "--si-importance",
        "omega-resumed.safetensors",
        "--state",
        "s.state",
        "--checkpoint-every",
        "8",
        "-q",
    ];
    common.extend(si);
    stopped_and_resumed(dir.path(), case, &input, &common);
    assert_same_tensors(
        &dir.path().join("omega-resumed.safetensors"),
        &dir.path().join("omega.safetensors"),
    );
    // Ω cannot be written over an input.
    let mut clash = vec![
        "-o",
        "x.safetensors",
        "--si-importance",
        "prior.safetensors",
        "-q",
    ];
    clash.extend(si);
    let r = run_online(dir.path(), case, &input, &clash);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--si-importance"), "{}", r.stderr);
}
