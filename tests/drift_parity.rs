//! Parity of `mnemo::drift` with river 0.26.1 (and with the reference
//! implementations of CUSUM, STEPD and ECDD) on the streams and runs that
//! `fixtures/drift/gen.py` wrote to `fixtures/drift/expected.json`: the same
//! drift and warning indices, exactly, and the same statistic at checkpoints.

use std::time::Instant;

use mnemo::drift::{build, DetectorParams, DETECTORS};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/drift/expected.json");
    let text = std::fs::read_to_string(path).expect("fixtures/drift/expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

/// A stream's values: integers divided by the scale, as gen.py computes them.
fn stream(fx: &Value, name: &str) -> Vec<f64> {
    if name == "ones_1000" {
        return vec![1.0; 1000];
    }
    let s = &fx["streams"][name];
    let scale = s["scale"].as_i64().expect("scale") as f64;
    s["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| {
            let v = v.as_i64().expect("integer value") as f64;
            if scale == 1.0 {
                v
            } else {
                v / scale
            }
        })
        .collect()
}

fn params(v: &Value) -> DetectorParams {
    let mut p = DetectorParams::new();
    for (k, v) in v.as_object().expect("params object") {
        p.set(k, v.as_str().expect("string value"));
    }
    p
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("index list")
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect()
}

/// gen.py writes floats as repr() strings; Rust's parser is correctly rounded
/// (serde_json's default float reader is not always), so this is exact.
fn decode(v: &Value) -> f64 {
    v.as_str()
        .expect("float as string")
        .parse()
        .expect("a float, inf, -inf or nan")
}

struct Outcome {
    drift: Vec<usize>,
    warning: Vec<usize>,
    stats: Vec<(usize, f64)>,
}

fn replay(name: &str, p: &DetectorParams, xs: &[f64], every: usize) -> Outcome {
    let mut d = build(name, p).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut out = Outcome {
        drift: vec![],
        warning: vec![],
        stats: vec![],
    };
    for (i, &x) in xs.iter().enumerate() {
        let s = d.update(x);
        if s.drift {
            out.drift.push(i);
        }
        if s.warning {
            out.warning.push(i);
        }
        if (i + 1) % every == 0 || i == xs.len() - 1 {
            out.stats.push((i, d.statistic()));
        }
    }
    out
}

/// Bit-for-bit equality (the detectors compute in the reference's operation
/// order), NaN equal to NaN.
fn same_stat(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

#[test]
fn every_run_matches_the_reference_index_for_index() {
    let fx = fixture();
    assert_eq!(fx["river"], "0.26.1");
    let every = fx["stat_every"].as_u64().unwrap() as usize;
    let runs = fx["runs"].as_array().unwrap();
    assert!(runs.len() > 200, "only {} runs", runs.len());
    let mut failures = vec![];
    let mut detectors_seen = std::collections::BTreeSet::new();
    let mut with_drift = 0;
    let mut with_warning = 0;
    for run in runs {
        let name = run["detector"].as_str().unwrap();
        let sname = run["stream"].as_str().unwrap();
        let p = params(&run["params"]);
        let xs = stream(&fx, sname);
        let got = replay(name, &p, &xs, every);
        let want_drift = indices(&run["drift"]);
        let want_warning = indices(&run["warning"]);
        detectors_seen.insert(name.to_string());
        with_drift += usize::from(!want_drift.is_empty());
        with_warning += usize::from(!want_warning.is_empty());
        let label = format!("{name} {} on {sname}", run["params"]);
        if got.drift != want_drift {
            failures.push(format!(
                "{label}: drift {:?}, reference {:?}",
                got.drift, want_drift
            ));
        }
        if got.warning != want_warning {
            failures.push(format!(
                "{label}: warning {:?}, reference {:?}",
                got.warning, want_warning
            ));
        }
        let want_stats: Vec<(usize, f64)> = run["stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c[0].as_u64().unwrap() as usize, decode(&c[1])))
            .collect();
        assert_eq!(got.stats.len(), want_stats.len(), "{label}");
        for (&(i, a), &(j, b)) in got.stats.iter().zip(&want_stats) {
            assert_eq!(i, j);
            if !same_stat(a, b) {
                failures.push(format!(
                    "{label}: statistic at {i} is {a:e}, reference {b:e}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The fixture must exercise every detector, and signals must actually occur.
    let all: std::collections::BTreeSet<String> =
        DETECTORS.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(detectors_seen, all);
    assert!(with_drift > 100, "only {with_drift} runs with a drift");
    assert!(with_warning > 30, "only {with_warning} runs with a warning");
}

#[test]
fn river_test_suite_expectations_hold() {
    // The expected indices of river's tests/drift/test_drift_detectors.py.
    let fx = fixture();
    let cases = fx["river_tests"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for case in cases {
        let name = case["detector"].as_str().unwrap();
        let sname = case["stream"].as_str().unwrap();
        let xs = stream(&fx, sname);
        let got = replay(name, &params(&case["params"]), &xs, usize::MAX);
        assert_eq!(
            got.drift,
            indices(&case["drift"]),
            "{name} {} on {sname}",
            case["params"]
        );
    }
}

#[test]
fn parity_fails_when_a_parameter_changes() {
    // Guard against a vacuous comparison: a different threshold must move
    // at least one detection of the fixture's Page-Hinkley default run.
    let fx = fixture();
    let run = fx["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["detector"] == "page-hinkley"
                && r["stream"] == "abrupt"
                && r["params"].as_object().unwrap().is_empty()
        })
        .unwrap();
    let xs = stream(&fx, "abrupt");
    let mut p = DetectorParams::new();
    p.set("threshold", "49");
    let got = replay("page-hinkley", &p, &xs, usize::MAX);
    assert_ne!(got.drift, indices(&run["drift"]));
}

/// Throughput of every detector on a 1M-value stream. Not part of the
/// normal run: `cargo test --release --test drift_parity -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput() {
    let fx = fixture();
    let real = stream(&fx, "abrupt");
    let bin = stream(&fx, "bin_up");
    for spec in DETECTORS {
        let mut p = DetectorParams::new();
        if spec.name == "kswin" {
            p.set("seed", "42");
        }
        let src = if spec.binary { &bin } else { &real };
        let n = if spec.name == "kswin" {
            100_000
        } else {
            1_000_000
        };
        let mut d = build(spec.name, &p).unwrap();
        let t = Instant::now();
        let mut hits = 0usize;
        for i in 0..n {
            hits += usize::from(d.update(src[i % src.len()]).drift);
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{:<13} {:>8.2} M updates/s  ({hits} drifts)",
            spec.name,
            n as f64 / secs / 1e6
        );
    }
}
