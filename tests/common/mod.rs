//! Shared helpers: run the real binary in a unique temp dir per test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn fixture(name: &str) -> String {
    fixtures().join(name).to_string_lossy().into_owned()
}

/// A unique working folder for one test (removed when dropped).
pub fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mnemo-test-")
        .tempdir()
        .expect("temp dir")
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub raw_stdout: Vec<u8>,
}

impl Run {
    /// stdout parsed as JSON Lines.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect()
    }
    pub fn last_json(&self) -> serde_json::Value {
        self.json_lines().pop().expect("some output")
    }
}

pub fn mnemo_in(dir: &Path, args: &[&str]) -> Run {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run mnemo");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        raw_stdout: out.stdout,
    }
}

/// Runs mnemo with `input` on stdin.
pub fn mnemo_stdin(dir: &Path, args: &[&str], input: &[u8]) -> Run {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mnemo");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = input.to_vec();
    // Feed stdin from a thread so a full stdout pipe cannot deadlock the test.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait for mnemo");
    feeder.join().expect("stdin feeder");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        raw_stdout: out.stdout,
    }
}

pub fn mnemo(args: &[&str]) -> Run {
    mnemo_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

/// Asserts success and returns the run.
pub fn ok(r: Run) -> Run {
    assert_eq!(r.code, 0, "stderr: {}\nstdout: {}", r.stderr, r.stdout);
    r
}

/// Writes a raw safetensors file from a header JSON and a data section.
pub fn raw_safetensors(path: &Path, header: &str, data: &[u8]) {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend(header.as_bytes());
    v.extend(data);
    std::fs::write(path, v).unwrap();
}

/// Runs mnemo in `dir` with extra environment variables (`None`: removed).
pub fn mnemo_env(dir: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mnemo"));
    c.args(args).current_dir(dir).stdin(Stdio::null());
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out: Output = c.output().expect("run mnemo");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        raw_stdout: out.stdout,
    }
}

/// `mnemo ARGS` started in `dir` with a piped stdin (and stderr), stdout discarded, for tests
/// that feed a stream and stop or kill the process themselves.
pub fn spawn_fed(dir: &Path, args: &[&str]) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mnemo"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mnemo");
    let stdin = child.stdin.take().expect("piped stdin");
    (child, stdin)
}

/// An arch argument of a reference case: the `mlp:` shorthand as it is, else a fixture file.
pub fn arch_arg(a: &str) -> String {
    if a.starts_with("mlp:") {
        a.to_string()
    } else {
        fixture(a)
    }
}

/// Per tensor of `want`: max |a − b| ≤ tol · max(1, max |b|).
pub fn assert_close(
    got: &mnemo::checkpoint::Checkpoint,
    want: &mnemo::checkpoint::Checkpoint,
    tol: f32,
    case: &str,
) {
    for name in want.names() {
        let w = want.to_f32(name).unwrap();
        let g = got
            .to_f32(name)
            .unwrap_or_else(|e| panic!("{case}: {name}: {e}"));
        let scale = w.iter().fold(1f32, |m, x| m.max(x.abs()));
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!(
                (a - b).abs() <= tol * scale,
                "{case}: {name}[{i}] = {a}, torch {b}"
            );
        }
    }
}
