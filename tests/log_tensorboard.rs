//! `mnemo log tensorboard` read back by the real `tensorboard` package (EventAccumulator,
//! from the venv of scripts/logging_venv.sh): every scalar's full history equals the stream;
//! a SIGKILLed stream leaves a file that reads up to its last line.

mod common;
mod logging_venv;
use common::*;
use logging_venv::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Every scalar's history, as TensorBoard reads it: tag → [(step, wall_time, value)].
fn scalars(run: &Value) -> BTreeMap<String, Vec<(i64, f64, f64)>> {
    run["scalars"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, h)| {
            let h = h
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    (
                        e[0].as_i64().unwrap(),
                        e[1].as_f64().unwrap(),
                        e[2].as_f64().unwrap(),
                    )
                })
                .collect();
            (tag.clone(), h)
        })
        .collect()
}

/// The histories the stream should give: tag → [(step, value as a 32-bit float)].
fn want(stream: &str) -> BTreeMap<String, Vec<(i64, f64)>> {
    let mut m: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for (_, step, vals) in expected(stream) {
        for (k, v) in vals {
            m.entry(k).or_default().push((step, v as f32 as f64));
        }
    }
    m
}

fn check(run: &Value, stream: &str, t0: f64, t1: f64) {
    let got = scalars(run);
    let want = want(stream);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (tag, w) in &want {
        let g: Vec<(i64, f64)> = got[tag].iter().map(|(s, _, v)| (*s, *v)).collect();
        assert_eq!(&g, w, "{tag}");
        for (_, wall, _) in &got[tag] {
            assert!(
                *wall >= t0 - 0.001 && *wall <= t1 + 0.001,
                "{tag}: wall time {wall} outside [{t0}, {t1}]"
            );
        }
    }
    let first = run["first_event"].as_f64().unwrap();
    assert!(first >= t0 - 0.001 && first <= t1 + 0.001);
}

#[test]
fn a_training_stream_reads_back_in_tensorboard() {
    let Some(py) = python() else { return };
    let d = workdir();
    let stream = training_stream(d.path());
    let t0 = now_s();
    let r = mnemo_stdin(
        d.path(),
        &[
            "log",
            "tensorboard",
            "--logdir",
            "tb",
            "--run",
            "task2",
            "--tee",
        ],
        stream.as_bytes(),
    );
    let t1 = now_s();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout, stream,
        "--tee passes the stream through unchanged"
    );
    let tb = readback(&py, "tensorboard", &d.path().join("tb"));
    let runs = tb["runs"].as_object().unwrap();
    assert_eq!(runs.keys().collect::<Vec<_>>(), ["task2"]);
    check(&runs["task2"], &stream, t0, t1);
    // Steps and epochs are separate series, each at its own step.
    let s = scalars(&runs["task2"]);
    assert!(s.contains_key("step/task_loss") && s.contains_key("epoch/task_loss"));
    assert_eq!(
        s["epoch/task_loss"].iter().map(|e| e.0).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(s.keys().any(|k| k.starts_with("summary/")));

    // Without --tee, from a file, into --logdir itself: the summary line.
    std::fs::write(d.path().join("train.jsonl"), &stream).unwrap();
    let r = ok(mnemo_in(
        d.path(),
        &["log", "tensorboard", "--logdir", "tb2", "train.jsonl"],
    ));
    let s = r.last_json();
    let rows = expected(&stream);
    assert_eq!(s["status"], "FINISHED");
    assert_eq!(s["lines"], stream.lines().count());
    assert_eq!(s["events"], rows.len() + 1);
    assert_eq!(s["scalars"], rows.iter().map(|r| r.2.len()).sum::<usize>());
    assert!(s["file"].as_str().unwrap().contains("events.out.tfevents."));
    let tb = readback(&py, "tensorboard", &d.path().join("tb2"));
    check(&tb["runs"]["."], &stream, t0, now_s());
}

/// Counts the complete TFRecords in an event file (framing only).
fn records(path: &Path) -> usize {
    let b = std::fs::read(path).unwrap_or_default();
    let (mut pos, mut n) = (0, 0);
    while pos + 12 <= b.len() {
        let len = u64::from_le_bytes(b[pos..pos + 8].try_into().unwrap()) as usize;
        if pos + 16 + len > b.len() {
            break;
        }
        pos += 16 + len;
        n += 1;
    }
    n
}

fn event_file(dir: &Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains(".tfevents."))
}

#[test]
fn a_killed_stream_leaves_a_readable_file() {
    let Some(py) = python() else { return };
    let d = workdir();
    let t0 = now_s();
    let (mut child, mut stdin) = spawn_fed(d.path(), &["log", "tensorboard", "--logdir", "tb"]);
    let stream: String = (0..50)
        .map(|i| {
            format!(
                "{{\"event\":\"step\",\"step\":{i},\"loss\":{}}}\n",
                1.0 / (i as f64 + 1.0)
            )
        })
        .collect();
    stdin.write_all(stream.as_bytes()).unwrap();
    stdin.flush().unwrap();
    // Held open: the stream has not ended. Wait until all 50 lines are in the file
    // (the file_version event and one event per line), then SIGKILL.
    let mut waited = 0;
    while event_file(&d.path().join("tb")).map_or(0, |p| records(&p)) < 51 {
        assert!(waited < 3000, "the 50 lines never reached the event file");
        std::thread::sleep(std::time::Duration::from_millis(20));
        waited += 1;
    }
    child.kill().unwrap();
    let _ = child.wait();
    drop(stdin);
    let tb = readback(&py, "tensorboard", &d.path().join("tb"));
    check(&tb["runs"]["."], &stream, t0, now_s());
    // A record cut short (a kill inside a write, a full disk): TensorBoard reads up to
    // the record before it.
    let f = event_file(&d.path().join("tb")).unwrap();
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let tb = readback(&py, "tensorboard", &d.path().join("tb"));
    let cut: String = stream.lines().take(49).map(|l| format!("{l}\n")).collect();
    check(&tb["runs"]["."], &cut, t0, now_s());
}

#[test]
fn invalid_lines_and_bad_arguments() {
    let d = workdir();
    let input = b"{\"loss\":1}\nnot json\n{\"loss\":3}\n";
    let r = mnemo_stdin(d.path(), &["log", "tensorboard", "--logdir", "tb"], input);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("<stdin>:2") && r.stderr.contains("not JSON"),
        "{}",
        r.stderr
    );
    // The line before it is in the file, whole.
    assert_eq!(records(&event_file(&d.path().join("tb")).unwrap()), 2);
    // --tee: everything passes, exit 2 at the end; --skip-invalid: exit 0.
    let r = mnemo_stdin(
        d.path(),
        &["log", "tensorboard", "--logdir", "tb3", "--tee"],
        input,
    );
    assert_eq!(r.code, 2);
    assert_eq!(r.raw_stdout, input);
    assert_eq!(records(&event_file(&d.path().join("tb3")).unwrap()), 3);
    let r = ok(mnemo_stdin(
        d.path(),
        &["log", "tensorboard", "--logdir", "tb4", "--skip-invalid"],
        input,
    ));
    assert_eq!(r.last_json()["skipped"], 1);
    for bad in ["../x", "/abs", ""] {
        let r = mnemo_stdin(
            d.path(),
            &["log", "tensorboard", "--logdir", "tb", "--run", bad],
            b"",
        );
        assert_eq!(r.code, 2, "--run '{bad}'");
        assert!(r.stderr.contains("--run"), "{}", r.stderr);
    }
    // A logdir that cannot be created: the message names it.
    std::fs::write(d.path().join("file"), b"x").unwrap();
    let r = mnemo_stdin(
        d.path(),
        &["log", "tensorboard", "--logdir", "file/tb"],
        input,
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("file/tb"), "{}", r.stderr);
}

/// A step that goes back (two trainings in one stream) keeps every point: TensorBoard
/// purges only after a SessionLog START, which is never written.
#[test]
fn steps_that_go_back_are_kept() {
    let Some(py) = python() else { return };
    let d = workdir();
    let stream = "{\"step\":5,\"loss\":1}\n{\"step\":1,\"loss\":2}\n{\"step\":3,\"loss\":3}\n";
    let t0 = now_s();
    ok(mnemo_stdin(
        d.path(),
        &["log", "tensorboard", "--logdir", "tb"],
        stream.as_bytes(),
    ));
    let tb = readback(&py, "tensorboard", &d.path().join("tb"));
    check(&tb["runs"]["."], stream, t0, now_s());
}
