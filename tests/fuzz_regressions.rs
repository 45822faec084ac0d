//! Every input the fuzzers found a bug with (fuzz/regressions/<target>/), replayed through
//! the same checks the fuzz targets run (fuzz/fuzz_targets/checks.rs), in a normal
//! `cargo test`: each must now pass them. docs/fuzzing.md lists the findings.

#[path = "../fuzz/fuzz_targets/checks.rs"]
mod checks;

#[test]
fn fuzz_regressions_pass_their_checks() {
    let scratch = tempfile::tempdir().unwrap();
    std::env::set_var("MNEMO_FUZZ_SCRATCH", scratch.path());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut n = 0;
    for target in checks::TARGETS {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let r = std::panic::catch_unwind(|| checks::run(target, &data));
            assert!(r.is_ok(), "{}: the {target} check fails again", f.display());
            n += 1;
        }
    }
    assert!(n > 0, "no regression inputs under {}", root.display());
}
