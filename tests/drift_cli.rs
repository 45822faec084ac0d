//! `mnemo drift` as a pipeline stage: the annotated stream, events, aggregation,
//! exit codes, and errors that name the file and line. The detectors' numerics are
//! checked against river in tests/drift_parity.rs; here the CLI must agree with the
//! library it wraps.

mod common;
use common::*;
use mnemo::drift::{build, DetectorParams};

/// 200 records whose loss steps from 0 to 5 at record 100, with a tag to check pass-through.
fn step_stream() -> String {
    (0..200)
        .map(|i| {
            let loss = if i < 100 { 0.0 } else { 5.0 };
            format!("{{\"batch\":{i},\"loss\":{loss},\"tag\":\"t{i}\"}}\n")
        })
        .collect()
}

fn library_hits(name: &str, params: &[(&str, &str)], xs: &[f64]) -> Vec<usize> {
    let mut p = DetectorParams::new();
    for (k, v) in params {
        p.set(k, *v);
    }
    let mut d = build(name, &p).unwrap();
    xs.iter()
        .enumerate()
        .filter(|&(_, &x)| d.update(x).drift)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn annotated_stream_marks_the_same_indices_as_the_library() {
    let d = workdir();
    let r = mnemo_stdin(
        d.path(),
        &["drift", "--detector", "page-hinkley", "--threshold", "20"],
        step_stream().as_bytes(),
    );
    assert_eq!(
        r.code, 0,
        "drift found → exit 0 (as grep); stderr: {}",
        r.stderr
    );
    let lines = r.json_lines();
    assert_eq!(lines.len(), 200);
    let hits: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l["drift"] == true)
        .map(|(i, _)| i)
        .collect();
    let xs: Vec<f64> = (0..200).map(|i| if i < 100 { 0.0 } else { 5.0 }).collect();
    assert_eq!(
        hits,
        library_hits("page-hinkley", &[("threshold", "20")], &xs)
    );
    assert!(!hits.is_empty());
    // Records pass through with their fields and order intact.
    assert_eq!(lines[7]["tag"], "t7");
    assert_eq!(lines[7]["batch"], 7);
}

#[test]
fn events_only_with_aggregation_and_files() {
    let d = workdir();
    std::fs::write(d.path().join("a.jsonl"), step_stream()).unwrap();
    let r = mnemo_in(
        d.path(),
        &[
            "drift",
            "--detector",
            "page-hinkley",
            "--threshold",
            "5",
            "--min-instances",
            "5",
            "--every",
            "4",
            "--events-only",
            "a.jsonl",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let events = r.json_lines();
    let means: Vec<f64> = (0..50).map(|g| if g < 25 { 0.0 } else { 5.0 }).collect();
    let want = library_hits(
        "page-hinkley",
        &[("threshold", "5"), ("min_instances", "5")],
        &means,
    );
    let got: Vec<usize> = events
        .iter()
        .map(|e| e["index"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(got, want);
    let e = &events[0];
    assert_eq!(e["detector"], "page-hinkley");
    assert_eq!(e["file"], "a.jsonl");
    // The aggregate with index i ends at line 4(i+1).
    assert_eq!(e["line"].as_u64().unwrap() as usize, 4 * (got[0] + 1));
}

#[test]
fn no_drift_exits_one_and_quiet_prints_nothing() {
    let d = workdir();
    let flat: String = (0..100).map(|_| "{\"loss\":1.0}\n").collect();
    let r = mnemo_stdin(d.path(), &["drift", "-d", "adwin"], flat.as_bytes());
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.json_lines().len(), 100);
    let r = mnemo_stdin(
        d.path(),
        &["drift", "-d", "page-hinkley", "--threshold", "20", "-q"],
        step_stream().as_bytes(),
    );
    assert_eq!(r.code, 0);
    assert!(r.stdout.is_empty() && r.stderr.is_empty());
}

#[test]
fn skip_invalid_passes_records_without_the_field_through_uncounted() {
    let d = workdir();
    let input = "{\"event\":\"start\"}\n{\"loss\":null}\n0.5\n{\"loss\":0.25}\n";
    let r = mnemo_stdin(d.path(), &["drift", "-d", "adwin"], input.as_bytes());
    assert_eq!(r.code, 2, "a record without the field is an error");
    assert!(
        r.stderr.contains("<stdin>:1") || r.stderr.contains("-:1"),
        "{}",
        r.stderr
    );
    let r = mnemo_stdin(
        d.path(),
        &["drift", "-d", "adwin", "--skip-invalid"],
        input.as_bytes(),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("skipped 2"), "{}", r.stderr);
    let l = r.json_lines();
    assert_eq!(l[0], serde_json::json!({"event": "start"}));
    assert_eq!(l[1], serde_json::json!({"loss": null}));
    assert_eq!(l[2], serde_json::json!({"value": 0.5, "drift": false}));
    assert_eq!(l[3]["drift"], false);
}

#[test]
fn bad_values_name_the_file_and_line() {
    let d = workdir();
    std::fs::write(
        d.path().join("m.jsonl"),
        "{\"loss\":1}\n{\"loss\":\"high\"}\n",
    )
    .unwrap();
    let r = mnemo_in(d.path(), &["drift", "-d", "adwin", "m.jsonl"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("m.jsonl:2"), "{}", r.stderr);
    std::fs::write(d.path().join("e.jsonl"), "{\"err\":0}\n{\"err\":0.5}\n").unwrap();
    let r = mnemo_in(
        d.path(),
        &["drift", "-d", "ddm", "--field", "err", "e.jsonl"],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("e.jsonl:2") && r.stderr.contains("0/1"),
        "{}",
        r.stderr
    );
    std::fs::write(d.path().join("j.jsonl"), "{\"loss\":1}\nnot json\n").unwrap();
    let r = mnemo_in(d.path(), &["drift", "-d", "adwin", "j.jsonl"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("j.jsonl:2"), "{}", r.stderr);
    // A parameter the detector does not have.
    let r = mnemo_in(
        d.path(),
        &["drift", "-d", "adwin", "--threshold", "3", "m.jsonl"],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("threshold"), "{}", r.stderr);
}

#[test]
fn calibration_meets_the_false_alarm_rate_on_the_stable_stream() {
    let d = workdir();
    // A stable stream: a fixed pseudo-random sequence around 0.5.
    let mut x = 12345u64;
    let stable: String = (0..2000)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            format!("{{\"loss\":{}}}\n", 0.5 + 0.1 * (u - 0.5))
        })
        .collect();
    std::fs::write(d.path().join("stable.jsonl"), &stable).unwrap();
    let cal = |rate: &str| {
        let r = ok(mnemo_in(
            d.path(),
            &[
                "drift",
                "-d",
                "page-hinkley",
                "--calibrate",
                "--false-alarm-rate",
                rate,
                "--min-instances",
                "10",
                "--delta",
                "0",
                "stable.jsonl",
            ],
        ));
        r.last_json()
    };
    let strict = cal("0.0005");
    let loose = cal("0.01");
    assert_eq!(strict["parameter"], "threshold");
    let (ts, tl) = (
        strict["value"].as_f64().unwrap(),
        loose["value"].as_f64().unwrap(),
    );
    assert!(strict["false_alarm_rate"].as_f64().unwrap() <= 0.0005);
    assert!(loose["false_alarm_rate"].as_f64().unwrap() <= 0.01);
    assert!(
        ts > tl,
        "a stricter rate needs a higher threshold: {ts} vs {tl}"
    );
    // Setting the tuned parameter yourself is refused.
    let r = mnemo_in(
        d.path(),
        &[
            "drift",
            "-d",
            "page-hinkley",
            "--calibrate",
            "--false-alarm-rate",
            "0.01",
            "--threshold",
            "3",
            "stable.jsonl",
        ],
    );
    assert_eq!(r.code, 2);
}
