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
    assert_eq!(r.code, 1, "drift found → exit 1; stderr: {}", r.stderr);
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
    assert_eq!(r.code, 1, "{}", r.stderr);
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
fn no_drift_exits_zero_and_quiet_prints_nothing() {
    let d = workdir();
    let flat: String = (0..100).map(|_| "{\"loss\":1.0}\n").collect();
    let r = mnemo_stdin(d.path(), &["drift", "-d", "adwin"], flat.as_bytes());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json_lines().len(), 100);
    let r = mnemo_stdin(
        d.path(),
        &["drift", "-d", "page-hinkley", "--threshold", "20", "-q"],
        step_stream().as_bytes(),
    );
    assert_eq!(r.code, 1);
    assert!(r.stdout.is_empty() && r.stderr.is_empty());
}

#[test]
fn records_without_the_field_pass_through_uncounted() {
    let d = workdir();
    let input = "{\"event\":\"start\"}\n{\"loss\":null}\n0.5\n{\"loss\":0.25}\n";
    let r = mnemo_stdin(d.path(), &["drift", "-d", "adwin"], input.as_bytes());
    assert_eq!(r.code, 0, "{}", r.stderr);
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
