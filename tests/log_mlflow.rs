//! `mnemo log mlflow` against a fake MLflow tracking server (a TcpListener in a thread that
//! records every request and answers as MLflow's REST API 2.0 does): the request sequence
//! and payloads, batching, --tee, and servers that are down, fail or hang.

mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Answers like MLflow; the experiment does not exist yet.
    Normal,
    /// The experiment exists (id "3").
    Exists,
    /// Every request: HTTP 500.
    Error500,
    /// runs/log-batch answers 500, the rest as Normal.
    FailLogBatch,
    /// Accepts connections and never answers.
    Hang,
}

#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    body: Value,
}

struct Fake {
    uri: String,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Fake {
    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
    fn endpoints(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| {
                let p = r.path.split('?').next().unwrap();
                format!("{} {}", r.method, p.trim_start_matches("/api/2.0/mlflow/"))
            })
            .collect()
    }
    fn metrics(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.path.ends_with("runs/log-batch"))
            .flat_map(|r| r.body["metrics"].as_array().unwrap().clone())
            .collect()
    }
}

fn fake(mode: Mode) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let uri = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let l2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let log = l2.clone();
            std::thread::spawn(move || serve(stream, mode, log));
        }
    });
    Fake { uri, log }
}

fn serve(stream: TcpStream, mode: Mode, log: Arc<Mutex<Vec<Req>>>) {
    if mode == Mode::Hang {
        std::thread::sleep(Duration::from_secs(60));
        return;
    }
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut len = 0;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap()
        };
        let endpoint = path
            .split('?')
            .next()
            .unwrap()
            .trim_start_matches("/api/2.0/mlflow/")
            .to_string();
        log.lock().unwrap().push(Req {
            method,
            path: path.clone(),
            body,
        });
        let (code, answer) = match (mode, endpoint.as_str()) {
            (Mode::Error500, _) | (Mode::FailLogBatch, "runs/log-batch") => (
                500,
                json!({"error_code": "INTERNAL_ERROR", "message": "boom"}),
            ),
            (Mode::Exists, "experiments/get-by-name") => (
                200,
                json!({"experiment": {"experiment_id": "3", "name": "exp"}}),
            ),
            (_, "experiments/get-by-name") => (
                404,
                json!({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Could not find experiment"}),
            ),
            (_, "experiments/create") => (200, json!({"experiment_id": "7"})),
            (_, "runs/create") => (
                200,
                json!({"run": {"info": {"run_id": "run1", "experiment_id": "7", "status": "RUNNING"}}}),
            ),
            (_, "runs/update") => (200, json!({"run_info": {"run_id": "run1"}})),
            _ => (200, json!({})),
        };
        let answer = answer.to_string();
        let head = format!(
            "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A real training stream: per-step and per-epoch lines, then the summary.
fn training_stream(dir: &std::path::Path) -> String {
    let r = ok(mnemo_in(
        dir,
        &[
            "train-ewc",
            &fixture("mlp.safetensors"),
            "--arch",
            "mlp:20-16-16-5",
            "--data",
            &fixture("mh_b_data.safetensors"),
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "--log-every",
            "2",
            "-o",
            "m.safetensors",
        ],
    ));
    r.stdout
}

fn log_args<'a>(uri: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["log", "mlflow", "--uri", uri, "--experiment", "exp"];
    a.extend(extra);
    a
}

#[test]
fn a_training_stream_arrives_as_metrics_and_tags() {
    let d = workdir();
    let stream = training_stream(d.path());
    std::fs::write(d.path().join("train.jsonl"), &stream).unwrap();
    let f = fake(Mode::Normal);
    let r = ok(mnemo_in(
        d.path(),
        &log_args(
            &f.uri,
            &["--run-name", "task2", "--tag", "team=cl", "train.jsonl"],
        ),
    ));
    let e = f.endpoints();
    let n_batches = e.iter().filter(|x| *x == "POST runs/log-batch").count();
    assert!(n_batches >= 1);
    // The sequence: look up, create, start the run, metrics, tags, end.
    assert_eq!(
        e[..3],
        [
            "GET experiments/get-by-name",
            "POST experiments/create",
            "POST runs/create"
        ]
    );
    assert!(
        e[3..3 + n_batches]
            .iter()
            .all(|x| x == "POST runs/log-batch"),
        "{e:?}"
    );
    assert!(
        e[3 + n_batches..e.len() - 1]
            .iter()
            .all(|x| x == "POST runs/set-tag"),
        "{e:?}"
    );
    assert_eq!(e.last().unwrap(), "POST runs/update");
    let reqs = f.requests();
    assert!(
        reqs[0].path.ends_with("experiment_name=exp"),
        "{}",
        reqs[0].path
    );
    assert_eq!(reqs[1].body, json!({"name": "exp"}));
    let create = &reqs[2].body;
    assert_eq!(create["experiment_id"], "7");
    assert_eq!(create["run_name"], "task2");
    assert!(create["start_time"].as_i64().unwrap() > 1_600_000_000_000);
    let tags: Vec<(String, String)> = create["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["key"].as_str().unwrap().into(),
                t["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(tags.contains(&("mnemo.version".into(), env!("CARGO_PKG_VERSION").into())));
    assert!(tags.contains(&("team".into(), "cl".into())));
    assert!(tags.contains(&("mnemo.source".into(), "train.jsonl".into())));
    // Every number of every line, at its step, under its event's prefix.
    let metrics = f.metrics();
    let lines: Vec<Value> = stream
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut expected = 0;
    for (i, l) in lines.iter().enumerate() {
        let ev = l["event"].as_str().unwrap();
        let step = match ev {
            "step" => l["step"].as_i64().unwrap(),
            "epoch" => l["epoch"].as_i64().unwrap(),
            _ => i as i64 + 1,
        };
        for (k, v) in l.as_object().unwrap() {
            let Some(x) = v.as_f64() else { continue };
            expected += 1;
            let key = format!("{ev}/{k}");
            assert!(
                metrics.iter().any(|m| m["key"] == key.as_str()
                    && m["value"].as_f64() == Some(x)
                    && m["step"] == step),
                "no {key}={x} at step {step}"
            );
        }
    }
    assert_eq!(metrics.len(), expected);
    assert!(metrics
        .iter()
        .all(|m| m["timestamp"].as_i64().unwrap() > 1_600_000_000_000));
    assert!(metrics
        .iter()
        .any(|m| m["key"] == "epoch/task_loss" && m["step"] == 3));
    // The summary's strings are tags; mnemo.command is the training command.
    let set: Vec<&Value> = reqs
        .iter()
        .filter(|r| r.path.ends_with("set-tag"))
        .map(|r| &r.body)
        .collect();
    let command = set
        .iter()
        .find(|b| b["key"] == "mnemo.command")
        .expect("mnemo.command");
    assert_eq!(command["run_id"], "run1");
    assert!(command["value"]
        .as_str()
        .unwrap()
        .starts_with("mnemo train-ewc "));
    assert!(set
        .iter()
        .any(|b| b["key"] == "mnemo.output" && b["value"] == "m.safetensors"));
    let end = &reqs.last().unwrap().body;
    assert_eq!(end["run_id"], "run1");
    assert_eq!(end["status"], "FINISHED");
    assert!(end["end_time"].as_i64().unwrap() >= create["start_time"].as_i64().unwrap());
    // Without --tee: one summary line.
    let s = r.last_json();
    assert_eq!(s["run_id"], "run1");
    assert_eq!(s["experiment_id"], "7");
    assert_eq!(s["status"], "FINISHED");
    assert_eq!(s["lines"], lines.len());
    assert_eq!(s["metrics"], expected);
}

#[test]
fn an_existing_experiment_is_reused_and_batches_stay_under_1000() {
    let d = workdir();
    // 30 lines of 100 numbers each: 3000 metrics.
    let mut input = String::new();
    for i in 0..30 {
        let mut o = serde_json::Map::new();
        o.insert("step".into(), json!(i));
        for k in 0..99 {
            o.insert(format!("m{k}"), json!(k as f64 * 0.5 + i as f64));
        }
        input.push_str(&Value::Object(o).to_string());
        input.push('\n');
    }
    let f = fake(Mode::Exists);
    let r = mnemo_stdin(
        d.path(),
        &log_args(&f.uri, &["--flush-every", "1000", "--flush-seconds", "60"]),
        input.as_bytes(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let e = f.endpoints();
    assert_eq!(e[..2], ["GET experiments/get-by-name", "POST runs/create"]);
    assert_eq!(f.requests()[1].body["experiment_id"], "3");
    let sizes: Vec<usize> = f
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("log-batch"))
        .map(|r| r.body["metrics"].as_array().unwrap().len())
        .collect();
    assert!(sizes.iter().all(|n| *n <= 1000), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 3000);
    let m = f.metrics();
    assert!(m
        .iter()
        .any(|m| m["key"] == "m98" && m["step"] == 29 && m["value"] == 78.0));
    // --flush-every N lines: 12 lines of one number in batches of 5, 5, 2.
    let f = fake(Mode::Normal);
    let input: String = (0..12).map(|i| format!("{{\"loss\":{i}}}\n")).collect();
    ok(mnemo_stdin(
        d.path(),
        &log_args(&f.uri, &["--flush-every", "5", "--flush-seconds", "60"]),
        input.as_bytes(),
    ));
    let sizes: Vec<usize> = f
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("log-batch"))
        .map(|r| r.body["metrics"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [5, 5, 2]);
    // No step, epoch or batch: the line number.
    assert_eq!(f.metrics()[11]["step"], 12);
}

#[test]
fn tee_passes_the_stream_through_unchanged() {
    let d = workdir();
    let stream = training_stream(d.path());
    // Bytes exactly, also a last line without its newline.
    let input = format!("{stream}{{\"loss\":1.5}}");
    let f = fake(Mode::Normal);
    let r = mnemo_stdin(d.path(), &log_args(&f.uri, &["--tee"]), input.as_bytes());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.raw_stdout, input.as_bytes());
    assert_eq!(f.endpoints().last().unwrap(), "POST runs/update");
    assert!(f
        .metrics()
        .iter()
        .any(|m| m["key"] == "loss" && m["value"] == 1.5));
}

/// Lines reach stdout as they arrive, while the server does not answer at all.
#[test]
fn tee_is_live_even_when_the_server_hangs() {
    let f = fake(Mode::Hang);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args(log_args(&f.uri, &["--tee", "--timeout", "3"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let t = Instant::now();
    for i in 0..3 {
        let line = format!("{{\"step\":{i},\"loss\":0.5}}\n");
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.flush().unwrap();
        let mut got = String::new();
        stdout.read_line(&mut got).unwrap();
        assert_eq!(got, line);
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&f.uri), "{err}");
}

#[test]
fn a_server_that_is_down() {
    let d = workdir();
    // A port that was just free: nothing listens there.
    let uri = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let input = b"{\"loss\":1}\n{\"loss\":2}\n";
    // Without --tee: exit 2 at once, without waiting for the end of the input.
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args(log_args(&uri, &[]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap(); // held open: the stream has not ended
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("MLflow server {uri}")) && err.contains("get-by-name"),
        "{err}"
    );
    // With --tee: the whole stream passes, then exit 2 with the message.
    let r = mnemo_stdin(d.path(), &log_args(&uri, &["--tee"]), input);
    assert_eq!(r.code, 2);
    assert_eq!(r.raw_stdout, input);
    assert!(r.stderr.contains(&uri), "{}", r.stderr);
}

#[test]
fn a_server_that_answers_errors() {
    let d = workdir();
    let input = b"{\"loss\":1}\n{\"loss\":2}\n";
    let f = fake(Mode::Error500);
    let r = mnemo_stdin(d.path(), &log_args(&f.uri, &[]), input);
    assert_eq!(r.code, 2);
    for w in [
        f.uri.as_str(),
        "HTTP 500",
        "boom",
        "experiments/get-by-name",
    ] {
        assert!(r.stderr.contains(w), "no '{w}' in {}", r.stderr);
    }
    assert!(r.stdout.is_empty());
    let f = fake(Mode::Error500);
    let r = mnemo_stdin(d.path(), &log_args(&f.uri, &["--tee"]), input);
    assert_eq!(r.code, 2);
    assert_eq!(r.raw_stdout, input);
    assert!(
        r.stderr.contains("HTTP 500") && r.stderr.contains("boom"),
        "{}",
        r.stderr
    );
    // Once the server has failed, nothing more is asked of it.
    assert_eq!(f.endpoints(), ["GET experiments/get-by-name"]);
    // Failing in the middle: without --tee the run is ended FAILED and the exit is 2.
    let f = fake(Mode::FailLogBatch);
    let r = mnemo_stdin(d.path(), &log_args(&f.uri, &["--flush-every", "1"]), input);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("runs/log-batch: HTTP 500"),
        "{}",
        r.stderr
    );
    let reqs = f.requests();
    let last = reqs.last().unwrap();
    assert!(last.path.ends_with("runs/update"));
    assert_eq!(last.body["status"], "FAILED");
}

#[test]
fn invalid_lines_fail_the_run_unless_skipped() {
    let d = workdir();
    let input = b"{\"loss\":1}\nnot json\n{\"loss\":3}\n[1,2]\n\n";
    let f = fake(Mode::Normal);
    let r = mnemo_stdin(d.path(), &log_args(&f.uri, &[]), input);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("<stdin>:2") && r.stderr.contains("not JSON"),
        "{}",
        r.stderr
    );
    let reqs = f.requests();
    assert_eq!(reqs.last().unwrap().body["status"], "FAILED");
    // The line before it was logged.
    assert_eq!(f.metrics().len(), 1);
    // --skip-invalid: counted, the run finishes.
    let f = fake(Mode::Normal);
    let r = ok(mnemo_stdin(
        d.path(),
        &log_args(&f.uri, &["--skip-invalid"]),
        input,
    ));
    let s = r.last_json();
    assert_eq!(s["skipped"], 2);
    assert_eq!(s["lines"], 2);
    assert_eq!(s["status"], "FINISHED");
    assert_eq!(f.metrics().len(), 2);
    // --tee: everything passes, the valid lines are logged, the run ends FAILED, exit 2.
    let f = fake(Mode::Normal);
    let r = mnemo_stdin(d.path(), &log_args(&f.uri, &["--tee"]), input);
    assert_eq!(r.code, 2);
    assert_eq!(r.raw_stdout, input);
    assert_eq!(f.metrics().len(), 2);
    assert_eq!(f.requests().last().unwrap().body["status"], "FAILED");
}

#[test]
fn a_reader_that_goes_away_ends_the_run_killed() {
    let d = workdir();
    let input: String = (0..2000)
        .map(|i| format!("{{\"step\":{i},\"loss\":1}}\n"))
        .collect();
    std::fs::write(d.path().join("s.jsonl"), &input).unwrap();
    let f = fake(Mode::Normal);
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args(log_args(&f.uri, &["--tee", "s.jsonl"]))
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
    assert_eq!(f.requests().last().unwrap().body["status"], "KILLED");
}

#[test]
fn bad_arguments() {
    let d = workdir();
    let r = mnemo_stdin(d.path(), &log_args("https://example.org", &[]), b"");
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("https"), "{}", r.stderr);
    let r = mnemo_stdin(
        d.path(),
        &log_args("http://127.0.0.1:1", &["--tag", "novalue"]),
        b"",
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("KEY=VALUE"), "{}", r.stderr);
}
