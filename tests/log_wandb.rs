//! `mnemo log wandb` read back by the real `wandb` package (0.19.11, from the venv of
//! scripts/logging_venv.sh): its own .wandb reader (DataStore.open_for_scan / scan_data)
//! and protobuf classes, record for record; `wandb sync`'s record loop (what it would
//! upload, and whether the run finished) and `wandb sync --view` on the run folder. A
//! failing stream ends the run with a non-zero exit code; a SIGKILLed one leaves a file
//! that reads, and syncs as unfinished, up to its last line.

mod common;
mod logging_venv;
use common::*;
use logging_venv::*;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The one run folder under DIR/wandb.
fn run_dir(dir: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.join("wandb"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

fn types(rb: &Value) -> Vec<String> {
    rb["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["type"].as_str().unwrap().to_string())
        .collect()
}

/// A history or summary record's items as (key, value_json).
fn items(r: &Value, field: &str, list: &str) -> Vec<(String, String)> {
    r[field][list]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().to_string(),
                i["value_json"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The history rows against the stream: one per line with numbers, `_step` counting
/// rows, `mnemo/step` the line's step, every number exactly, `_timestamp` within [t0, t1];
/// each followed by a summary update with the same items.
fn check_history(rb: &Value, stream: &str, t0: f64, t1: f64) {
    let recs = rb["records"].as_array().unwrap();
    let rows: Vec<&Value> = recs.iter().filter(|r| r["type"] == "history").collect();
    let want = expected(stream);
    assert_eq!(rows.len(), want.len());
    for (i, (row, (_, step, vals))) in rows.iter().zip(&want).enumerate() {
        let it = items(row, "history", "item");
        let get = |k: &str| -> f64 {
            let v = &it
                .iter()
                .find(|(x, _)| x == k)
                .unwrap_or_else(|| panic!("row {i}: no {k}"))
                .1;
            serde_json::from_str::<Value>(v).unwrap().as_f64().unwrap()
        };
        assert_eq!(get("_step"), i as f64);
        assert_eq!(
            row["history"]["step"]["num"].as_str().unwrap_or("0"),
            i.to_string()
        );
        assert_eq!(get("mnemo/step"), *step as f64);
        let ts = get("_timestamp");
        assert!(
            ts >= t0 - 0.001 && ts <= t1 + 0.001,
            "row {i}: _timestamp {ts}"
        );
        assert!(get("_runtime") >= 0.0);
        for (k, v) in vals {
            assert_eq!(get(k), *v, "row {i}: {k}");
        }
        assert_eq!(it.len(), vals.len() + 4, "row {i}: {it:?}");
        let num: usize = row["num"].as_str().unwrap().parse().unwrap();
        // Records are numbered from 1: recs[num] is the one after (none when a kill came
        // between the two).
        if let Some(next) = recs.get(num) {
            assert_eq!(next["type"], "summary");
            assert_eq!(items(next, "summary", "update"), it);
        }
    }
}

fn sync_view(py: &Path, dir: &Path, run: &Path) -> String {
    // `wandb sync` wants a key before anything; nothing is sent in --view mode, and the
    // server address is a closed port on loopback.
    let out = Command::new(venv(py).join("bin/wandb"))
        .args(["sync", "--view", "--verbose"])
        .arg(run)
        .current_dir(dir)
        .env("WANDB_API_KEY", "0".repeat(40))
        .env("WANDB_BASE_URL", "http://127.0.0.1:9")
        .env("WANDB_DISABLE_GIT", "true")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wandb sync --view: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("Skipping directory"), "{text}");
    assert!(text.trim_end().ends_with("done."), "{text}");
    text
}

#[test]
fn a_training_stream_reads_back_record_for_record() {
    let Some(py) = python() else { return };
    let d = workdir();
    let stream = training_stream(d.path());
    let t0 = now_s();
    let r = mnemo_stdin(
        d.path(),
        &[
            "log",
            "wandb",
            "--project",
            "split-mnist",
            "--run-name",
            "task2",
            "--dir",
            "out",
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
    let run = run_dir(&d.path().join("out"));
    let name = run.file_name().unwrap().to_string_lossy().into_owned();
    // offline-run-YYYYMMDD_HHMMSS-<id>
    let (stamp, id) = name
        .strip_prefix("offline-run-")
        .unwrap()
        .split_once('-')
        .unwrap();
    assert_eq!(stamp.len(), 15);
    assert_eq!(&stamp[8..9], "_");
    assert!(stamp
        .chars()
        .filter(|c| *c != '_')
        .all(|c| c.is_ascii_digit()));
    assert!(run.join(format!("run-{id}.wandb")).is_file());
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("files/wandb-metadata.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["program"], "mnemo log wandb");

    let rb = readback(&py, "wandb", &run);
    assert_eq!(rb["wandb"], "0.19.11");
    let recs = rb["records"].as_array().unwrap();
    let rows = expected(&stream).len();
    // The order W&B's writer uses: header, run, telemetry, the step metric's definition,
    // files; then per line the definitions of its new keys, history, summary; then config,
    // exit, final, footer.
    let mut want = vec!["header", "run", "telemetry", "metric", "files"];
    let mut seen = std::collections::HashSet::new();
    let mut defined = Vec::new();
    for (_, _, vals) in expected(&stream) {
        for (k, _) in &vals {
            if seen.insert(k.clone()) {
                want.push("metric");
                defined.push(k.clone());
            }
        }
        want.extend(["history", "summary"]);
    }
    want.extend(["config", "exit", "final", "footer"]);
    assert_eq!(types(&rb), want);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["num"].as_str().unwrap(), (i + 1).to_string());
        assert_eq!(r["_info"]["stream_id"], id);
    }
    assert_eq!(
        recs[0]["header"]["version_info"]["producer"],
        format!("mnemo {}", env!("CARGO_PKG_VERSION"))
    );
    let run_rec = &recs[1]["run"];
    assert_eq!(run_rec["run_id"], id);
    assert_eq!(run_rec["project"], "split-mnist");
    assert_eq!(run_rec["display_name"], "task2");
    assert_eq!(run_rec["telemetry"]["feature"]["offline"], true);
    let config = items(run_rec, "config", "update");
    assert_eq!(
        config,
        [
            (
                "mnemo.version".to_string(),
                format!("\"{}\"", env!("CARGO_PKG_VERSION"))
            ),
            ("mnemo.source".to_string(), "\"<stdin>\"".to_string())
        ]
    );
    // The start time (RFC 3339 from protobuf's JSON form) is the folder's stamp.
    let start = run_rec["start_time"].as_str().unwrap();
    let digits: String = start[..19].chars().filter(|c| c.is_ascii_digit()).collect();
    assert_eq!(digits, stamp.replace('_', ""), "{start}");
    assert_eq!(recs[3]["metric"]["name"], "mnemo/step");
    assert_eq!(recs[4]["files"]["files"][0]["path"], "wandb-metadata.json");
    // Every key plotted against mnemo/step (define_metric(key, step_metric=...)).
    let metrics: Vec<&Value> = recs[4..].iter().filter(|r| r["type"] == "metric").collect();
    assert_eq!(metrics.len(), defined.len());
    for (m, k) in metrics.iter().zip(&defined) {
        assert_eq!(m["metric"]["name"], *k);
        assert_eq!(m["metric"]["step_metric"], "mnemo/step");
        assert_eq!(m["metric"]["options"]["step_sync"], true);
    }
    check_history(&rb, &stream, t0, t1);
    // The summary line's strings: config at the end.
    let summary: Value = serde_json::from_str(stream.lines().last().unwrap()).unwrap();
    assert_eq!(summary["event"], "summary");
    let end_config = items(&recs[recs.len() - 4], "config", "update");
    let command = end_config
        .iter()
        .find(|(k, _)| k == "mnemo.command")
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&command.1).unwrap(),
        summary["command"]
    );
    // Exit code 0 (absent: proto3 leaves zeros out).
    let exit = &recs[recs.len() - 3]["exit"];
    assert_eq!(exit.get("exit_code"), None, "{exit}");
    // files/wandb-summary.json: the last value of every key.
    let ws: Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("files/wandb-summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ws["_step"], rows - 1);
    assert_eq!(ws["summary/epochs"], summary["epochs"]);

    // `wandb sync`: everything would be sent, the exit when final comes; the run finished.
    let mut sent = want.clone();
    sent.retain(|t| *t != "exit");
    let f = sent.iter().position(|t| *t == "final").unwrap();
    sent[f] = "exit";
    assert_eq!(rb["sync"]["sent"], serde_json::json!(sent));
    assert_eq!(rb["sync"]["finished"], true);
    let view = sync_view(&py, d.path(), &run);
    assert_eq!(view.matches("Record: num:").count(), recs.len(), "{view}");
}

#[test]
fn a_failing_stream_ends_the_run_failed() {
    let Some(py) = python() else { return };
    let d = workdir();
    let input = b"{\"loss\":1}\nnot json\n{\"loss\":3}\n";
    // Without --tee: exit 2 at the bad line, the run ended with exit code 1 (no config
    // record: the stream had no summary line).
    let r = mnemo_stdin(d.path(), &["log", "wandb", "--dir", "a"], input);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("<stdin>:2") && r.stderr.contains("not JSON"),
        "{}",
        r.stderr
    );
    let rb = readback(&py, "wandb", &run_dir(&d.path().join("a")));
    let t = types(&rb);
    assert_eq!(
        &t[5..],
        ["metric", "history", "summary", "exit", "final", "footer"].map(String::from)
    );
    let recs = rb["records"].as_array().unwrap();
    assert_eq!(recs[recs.len() - 3]["exit"]["exit_code"], 1);
    assert_eq!(rb["sync"]["finished"], true);
    // --tee: the whole stream passes, both valid lines are logged, exit code 1, exit 2.
    let r = mnemo_stdin(d.path(), &["log", "wandb", "--dir", "b", "--tee"], input);
    assert_eq!(r.code, 2);
    assert_eq!(r.raw_stdout, input);
    let rb = readback(&py, "wandb", &run_dir(&d.path().join("b")));
    assert_eq!(types(&rb).iter().filter(|t| *t == "history").count(), 2);
    let recs = rb["records"].as_array().unwrap();
    assert_eq!(recs[recs.len() - 3]["exit"]["exit_code"], 1);
    // --skip-invalid: the run finishes.
    let r = ok(mnemo_stdin(
        d.path(),
        &["log", "wandb", "--dir", "c", "--skip-invalid"],
        input,
    ));
    let s = r.last_json();
    assert_eq!(
        (
            s["skipped"].clone(),
            s["exit_code"].clone(),
            s["rows"].clone()
        ),
        (1.into(), 0.into(), 2.into())
    );
}

/// Counts the complete records of a .wandb file (chunk framing only).
fn complete_records(path: &Path) -> usize {
    let b = std::fs::read(path).unwrap_or_default();
    let (mut pos, mut n) = (7, 0);
    while pos + 7 <= b.len() {
        let left = 32768 - pos % 32768;
        if left < 7 {
            pos += left;
            continue;
        }
        let len = u16::from_le_bytes([b[pos + 4], b[pos + 5]]) as usize;
        if pos + 7 + len > b.len() {
            break;
        }
        if b[pos + 6] == 1 || b[pos + 6] == 4 {
            n += 1;
        }
        pos += 7 + len;
    }
    n
}

#[test]
fn a_killed_stream_leaves_a_readable_unfinished_run() {
    let Some(py) = python() else { return };
    let d = workdir();
    let t0 = now_s();
    let (mut child, mut stdin) = spawn_fed(d.path(), &["log", "wandb", "--dir", "out"]);
    // Long lines: the records cross 32 KiB blocks (FIRST / MIDDLE / LAST chunks, padding).
    let stream: String = (0..40)
        .map(|i| {
            let many: String = (0..300)
                .map(|j| format!(",\"m{j}\":{}", (i * j) as f64 / 7.0))
                .collect();
            format!("{{\"event\":\"step\",\"step\":{i}{many}}}\n")
        })
        .collect();
    stdin.write_all(stream.as_bytes()).unwrap();
    stdin.flush().unwrap();
    // Held open: wait until the 5 opening records, the 301 keys' definitions and 40 ×
    // (history, summary) are in the file, then SIGKILL.
    let mut waited = 0;
    let file = loop {
        let f = std::fs::read_dir(d.path().join("out/wandb"))
            .ok()
            .and_then(|mut r| r.next())
            .and_then(|e| e.ok())
            .and_then(|e| std::fs::read_dir(e.path()).ok())
            .and_then(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .find(|p| p.extension().is_some_and(|x| x == "wandb"))
            });
        if let Some(f) = f {
            if complete_records(&f) >= 5 + 301 + 80 {
                break f;
            }
        }
        assert!(waited < 3000, "the 40 lines never reached the run file");
        std::thread::sleep(std::time::Duration::from_millis(20));
        waited += 1;
    };
    child.kill().unwrap();
    let _ = child.wait();
    drop(stdin);
    assert!(std::fs::metadata(&file).unwrap().len() > 3 * 32768);
    let run = file.parent().unwrap();
    let rb = readback(&py, "wandb", run);
    let t = types(&rb);
    assert_eq!(t.len(), 386);
    assert_eq!(t.last().unwrap(), "summary");
    check_history(&rb, &stream, t0, now_s());
    // `wandb sync` sends it all and sees no exit: the run did not finish.
    assert_eq!(rb["sync"]["finished"], false);
    assert_eq!(rb["sync"]["sent"].as_array().unwrap().len(), 386);
    let view = sync_view(&py, d.path(), run);
    assert_eq!(view.matches("Record: num:").count(), 386);
}

#[test]
fn a_reader_that_goes_away_ends_the_run_with_141() {
    let Some(py) = python() else { return };
    let d = workdir();
    let input: String = (0..2000)
        .map(|i| format!("{{\"step\":{i},\"loss\":1}}\n"))
        .collect();
    std::fs::write(d.path().join("s.jsonl"), &input).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args(["log", "wandb", "--dir", "out", "--tee", "s.jsonl"])
        .current_dir(d.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rb = readback(&py, "wandb", &run_dir(&d.path().join("out")));
    let recs = rb["records"].as_array().unwrap();
    assert_eq!(recs[recs.len() - 3]["exit"]["exit_code"], 141);
}

#[test]
fn keys_wandb_reserves_are_prefixed() {
    let Some(py) = python() else { return };
    let d = workdir();
    let input = b"{\"_step\":7,\"x\":1.5}\n{\"event\":\"mnemo\",\"step\":4}\n";
    ok(mnemo_stdin(
        d.path(),
        &["log", "wandb", "--dir", "out"],
        input,
    ));
    let rb = readback(&py, "wandb", &run_dir(&d.path().join("out")));
    let rows: Vec<Vec<(String, String)>> = rb["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["type"] == "history")
        .map(|r| items(r, "history", "item"))
        .collect();
    let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
    assert_eq!(
        rows[0],
        [
            kv("_step", "0"),
            rows[0][1].clone(),
            rows[0][2].clone(),
            kv("mnemo/step", "1"), // "_step" is not a step: the line number
            kv("mnemo/_step", "7"),
            kv("x", "1.5")
        ]
    );
    assert_eq!(rows[1][3], kv("mnemo/step", "4"));
    assert_eq!(rows[1][4], kv("mnemo/mnemo/step", "4"));
}

/// SIGKILL while lines are still flowing in (a moment not chosen by the test): the file
/// reads cleanly, and its rows are the first lines of the stream.
#[test]
fn a_stream_killed_while_flowing_reads_as_a_prefix() {
    let Some(py) = python() else { return };
    let d = workdir();
    let t0 = now_s();
    let (mut child, mut stdin) = spawn_fed(d.path(), &["log", "wandb", "--dir", "out"]);
    let stream: String = (0..3000)
        .map(|i| {
            let many: String = (0..40)
                .map(|j| format!(",\"m{j}\":{}", (i * 41 + j) as f64 / 3.0))
                .collect();
            format!("{{\"step\":{i}{many}}}\n")
        })
        .collect();
    let feed = stream.clone();
    let feeder = std::thread::spawn(move || {
        for line in feed.lines() {
            if stdin.write_all(format!("{line}\n").as_bytes()).is_err() {
                return;
            }
        }
        // Held open after the last line, so the run never ends by itself.
        std::thread::sleep(std::time::Duration::from_secs(3600));
    });
    let mut waited = 0;
    let file = loop {
        let f = std::fs::read_dir(d.path().join("out/wandb"))
            .ok()
            .and_then(|mut r| r.next())
            .and_then(|e| e.ok())
            .map(|e| {
                e.path().join(format!(
                    "run-{}.wandb",
                    e.file_name().to_string_lossy().rsplit('-').next().unwrap()
                ))
            });
        if let Some(f) = f {
            if complete_records(&f) >= 200 {
                break f;
            }
        }
        assert!(waited < 3000, "no records reached the run file");
        std::thread::sleep(std::time::Duration::from_millis(10));
        waited += 1;
    };
    child.kill().unwrap();
    let _ = child.wait();
    drop(feeder);
    let rb = readback(&py, "wandb", file.parent().unwrap());
    let t = types(&rb);
    assert!(t.len() >= 200, "{}", t.len());
    assert!(!t.contains(&"exit".to_string()));
    let rows = t.iter().filter(|x| *x == "history").count();
    let prefix: String = stream
        .lines()
        .take(rows)
        .map(|l| format!("{l}\n"))
        .collect();
    check_history(&rb, &prefix, t0, now_s());
    assert_eq!(rb["sync"]["finished"], false);
}
