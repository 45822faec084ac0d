//! `mnemo merge --config merge.yml` against `mergekit-yaml` (mergekit 0.1.5) on the same YAML:
//! `fixtures/merge/mergekit/` (written by `fixtures/merge/yaml_gen.py`) holds tiny Llama-shaped
//! HF folders, the configurations and mergekit's output folders. Every case is run through the
//! real binary from that folder (the configurations name the models by relative path, as
//! mergekit resolves them) and compared tensor by tensor, with config.json and the tokenizer
//! files.

mod common;
use common::{mnemo_in, ok, workdir};
use mnemo::checkpoint::{Checkpoint, Dtype};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/merge/mergekit")
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap()
}

fn merge(config: &str, out: &Path) -> common::Run {
    mnemo_in(
        &dir(),
        &[
            "merge",
            "--config",
            config,
            "-o",
            out.to_str().unwrap(),
            "-q",
        ],
    )
}

/// rtol 1e-5 with an absolute floor of 1e-6 of the tensor's largest value (f32); one unit in
/// the last place for bf16/f16 (the f32 results may straddle a rounding boundary).
fn tolerance(dtype: Dtype, want: f32, scale: f32) -> f32 {
    match dtype {
        Dtype::F16 => want.abs() * 2f32.powi(-10) + 1e-6 * scale,
        Dtype::BF16 => want.abs() * 2f32.powi(-7) + 1e-6 * scale,
        _ => want.abs() * 1e-5 + 1e-6 * scale,
    }
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_mergekit_case_matches_mergekit_yaml() {
    let cases = cases();
    assert_eq!(cases["mergekit"], "0.1.5");
    let list = cases["cases"].as_array().unwrap();
    assert!(list.len() >= 26);
    // Every method mergekit 0.1.5 registers has a case.
    for m in [
        "linear",
        "slerp",
        "nuslerp",
        "multislerp",
        "karcher",
        "task_arithmetic",
        "ties",
        "dare_ties",
        "dare_linear",
        "breadcrumbs",
        "breadcrumbs_ties",
        "della",
        "della_linear",
        "sce",
        "model_stock",
        "nearswap",
        "arcee_fusion",
        "passthrough",
        "ram",
        "ramplus_tl",
    ] {
        let found = list.iter().any(|c| {
            let text = std::fs::read_to_string(dir().join(c["config"].as_str().unwrap())).unwrap();
            text.contains(&format!("merge_method: {m}\n"))
        });
        assert!(found, "no case for {m}");
    }
    let tmp = workdir();
    let mut summary = Vec::new();
    for case in list {
        let id = case["id"].as_str().unwrap();
        let check = case["check"].as_str().unwrap();
        let out = tmp.path().join(id);
        let r = merge(case["config"].as_str().unwrap(), &out);
        assert_eq!(r.code, 0, "{id}: {}", r.stderr);
        let want_dir = dir().join(case["expected"].as_str().unwrap());
        let got = Checkpoint::open(&out).unwrap();
        let want = Checkpoint::open(&want_dir).unwrap();
        assert_eq!(
            got.names().collect::<Vec<_>>(),
            want.names().collect::<Vec<_>>(),
            "{id}: tensor names"
        );
        // The folder: every file mergekit wrote is there; JSON files say the same.
        for f in case["files"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            assert!(out.join(f).is_file(), "{id}: {f} missing");
            if f == "config.json" {
                assert_eq!(json(&out.join(f)), json(&want_dir.join(f)), "{id}: {f}");
            } else if f.ends_with(".json") && !id.contains("tokenizer_source") {
                // Copied files are byte for byte (mergekit copies them too, except when it
                // builds the tokenizer for tokenizer_source).
                assert_eq!(
                    std::fs::read(out.join(f)).unwrap(),
                    std::fs::read(want_dir.join(f)).unwrap(),
                    "{id}: {f}"
                );
            }
        }
        if check == "exact" {
            // yaml_gen.py loaded mnemo's folder with transformers and compared its logits
            // with those of mergekit's folder.
            let d = case["transformers_logits_max_diff"].as_f64();
            assert!(
                d.is_some_and(|d| d < 1e-4),
                "{id}: transformers check {d:?}"
            );
        }
        let meta = got.metadata();
        assert!(meta["mnemo.merge_config"].contains("merge_method"), "{id}");
        assert_eq!(meta["format"], "pt");
        let (mut worst_abs, mut worst_rel, mut exact, mut total) = (0f64, 0f64, 0usize, 0usize);
        if check == "exact" {
            for name in want.names() {
                let (g, w) = (got.entry(name).unwrap(), want.entry(name).unwrap());
                assert_eq!(g.dtype, w.dtype, "{id}: {name}: dtype");
                assert_eq!(g.shape, w.shape, "{id}: {name}: shape");
                let (gv, wv) = (got.to_f32(name).unwrap(), want.to_f32(name).unwrap());
                let scale = wv.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (j, (&a, &b)) in gv.iter().zip(&wv).enumerate() {
                    let diff = (a - b).abs();
                    assert!(
                        diff <= tolerance(w.dtype, b, scale),
                        "{id}: {name}[{j}]: mnemo {a}, mergekit {b} (diff {diff})"
                    );
                    worst_abs = worst_abs.max(diff as f64);
                    worst_rel =
                        worst_rel.max(diff as f64 / (b.abs() as f64).max(1e-3 * scale as f64));
                    exact += usize::from(a.to_bits() == b.to_bits());
                    total += 1;
                }
            }
            summary.push(format!(
                "{id}: {exact}/{total} bit-exact, max abs diff {worst_abs:.1e}, worst rel {worst_rel:.1e}"
            ));
        } else {
            // DARE: torch's masks cannot be reproduced; what does not depend on them must
            // agree. With one model and L1 rescaling, ‖merged − base‖₁ = w·‖δ‖₁ per tensor
            // exactly, and the kept fraction is Binomial(n, d)/n for both.
            let base = Checkpoint::open(dir().join("models/base")).unwrap();
            let (mut kept_g, mut kept_w, mut n) = (0usize, 0usize, 0usize);
            let (mut emptied, mut tensors) = (0usize, 0usize);
            for name in want.names() {
                let b = base.to_f32(name).unwrap();
                let l1 = |c: &Checkpoint| -> (f64, usize) {
                    let v = c.to_f32(name).unwrap();
                    let s = v.iter().zip(&b).map(|(x, y)| (x - y).abs() as f64).sum();
                    (s, v.iter().zip(&b).filter(|(x, y)| x != y).count())
                };
                let ((lg, kg), (lw, kw)) = (l1(&got), l1(&want));
                // A mask that keeps nothing of a small tensor (8 entries) leaves 0 (nothing to
                // rescale); otherwise the L1 norm is the same whatever the mask.
                if lg == 0.0 || lw == 0.0 {
                    emptied += 1;
                } else {
                    let rel = (lg - lw).abs() / lw;
                    assert!(rel < 1e-5, "{id}: {name}: L1 {lg} against mergekit's {lw}");
                    worst_rel = worst_rel.max(rel);
                }
                tensors += 1;
                kept_g += kg;
                kept_w += kw;
                n += b.len();
            }
            // Task vectors are exactly zero on ~35% of entries; density 0.5 keeps half the rest.
            let (fg, fw) = (kept_g as f64 / n as f64, kept_w as f64 / n as f64);
            assert!(
                emptied * 10 <= tensors,
                "{id}: {emptied} of {tensors} tensors emptied"
            );
            let sd = (0.65f64 * 0.5 * 0.5 / n as f64).sqrt();
            assert!(
                (fg - fw).abs() < 6.0 * sd * 2f64.sqrt(),
                "{id}: kept {fg} vs {fw}"
            );
            summary.push(format!(
                "{id}: per-tensor L1 worst rel {worst_rel:.1e}, changed entries {fg:.3} (mergekit {fw:.3})"
            ));
        }
    }
    println!("{}", summary.join("\n"));
}

#[test]
fn same_config_same_bytes_and_seeded_dare() {
    let tmp = workdir();
    // The tensors' bytes (the metadata records the command line, which names the output).
    let run = |cfg: &str, name: &str| -> Vec<u8> {
        let out = tmp.path().join(name);
        ok(merge(cfg, &out));
        let c = Checkpoint::open(&out).unwrap();
        c.names()
            .flat_map(|n| c.bytes(n).unwrap().to_vec())
            .collect()
    };
    assert_eq!(run("ties.yml", "t1"), run("ties.yml", "t2"));
    let (a, b) = (run("dare_linear.yml", "d1"), run("dare_linear.yml", "d2"));
    assert_eq!(a, b, "DARE is seeded: same config, same bytes");
    let seeded = tmp.path().join("seeded.yml");
    let text = std::fs::read_to_string(dir().join("dare_linear.yml")).unwrap();
    std::fs::write(&seeded, format!("{text}parameters:\n  seed: 7\n")).unwrap();
    let c = run(seeded.to_str().unwrap(), "d3");
    assert_ne!(a, c, "another seed, other masks");
}

#[test]
fn mnemo_extras_in_the_same_language() {
    let tmp = workdir();
    let p = |n: &str| tmp.path().join(n);
    let m = |n: &str| dir().join("models").join(n).join("model.safetensors");
    std::fs::write(
        p("ema.yml"),
        format!(
            "merge_method: ema\nmodels:\n  - model: {}\n  - model: {}\nparameters:\n  decay: 0.9\n",
            dir().join("models/a").display(),
            dir().join("models/b").display()
        ),
    )
    .unwrap();
    ok(merge(p("ema.yml").to_str().unwrap(), &p("ema")));
    let cli = p("ema_cli.safetensors");
    ok(mnemo_in(
        tmp.path(),
        &[
            "merge",
            "ema",
            m("a").to_str().unwrap(),
            m("b").to_str().unwrap(),
            "--decay",
            "0.9",
            "-o",
            cli.to_str().unwrap(),
        ],
    ));
    let (x, y) = (
        Checkpoint::open(p("ema")).unwrap(),
        Checkpoint::open(&cli).unwrap(),
    );
    for n in y.names() {
        assert_eq!(x.bytes(n).unwrap(), y.bytes(n).unwrap(), "{n}");
    }
    std::fs::write(
        p("sum.yml"),
        format!(
            "merge_method: sum\nmodels:\n  - model: {}\n  - model: {}\n",
            dir().join("models/a").display(),
            dir().join("models/b").display()
        ),
    )
    .unwrap();
    ok(merge(p("sum.yml").to_str().unwrap(), &p("sum")));
    let s = Checkpoint::open(p("sum")).unwrap();
    let (a, b) = (
        Checkpoint::open(m("a")).unwrap(),
        Checkpoint::open(m("b")).unwrap(),
    );
    let n = "model.norm.weight";
    let want: Vec<f32> = a
        .to_f32(n)
        .unwrap()
        .iter()
        .zip(b.to_f32(n).unwrap())
        .map(|(x, y)| (*x as f64 + y as f64) as f32)
        .collect();
    assert_eq!(s.to_f32(n).unwrap(), want);
}

#[test]
fn sharded_output_folder() {
    let tmp = workdir();
    let out = tmp.path().join("sharded");
    let r = mnemo_in(
        &dir(),
        &[
            "merge",
            "--config",
            "linear.yml",
            "-o",
            out.to_str().unwrap(),
            "--shard-size",
            "4000",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(out.join("model.safetensors.index.json").is_file());
    assert!(!out.join("model.safetensors").exists());
    let got = Checkpoint::open(&out).unwrap();
    let want = Checkpoint::open(dir().join("expected/linear")).unwrap();
    assert!(got.files.len() > 1);
    for n in want.names() {
        assert_eq!(
            got.bytes(n).unwrap().len(),
            want.bytes(n).unwrap().len(),
            "{n}"
        );
    }
}

/// Writes `text` as a config next to the models and merges it; returns stderr.
fn refused(text: &str) -> String {
    let tmp = workdir();
    let cfg = tmp.path().join("bad.yml");
    let text = text.replace("MODELS", &dir().join("models").display().to_string());
    std::fs::write(&cfg, text).unwrap();
    let out = tmp.path().join("out");
    let r = merge(cfg.to_str().unwrap(), &out);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!out.join("model.safetensors").exists());
    r.stderr
}

#[test]
fn what_mergekit_rejects_mnemo_rejects_naming_the_line() {
    let e = refused(
        "merge_method: linear\nmodels:\n  - model: MODELS/a\n    paramters:\n      weight: 1\n",
    );
    assert!(
        e.contains("bad.yml:4:") && e.contains("unknown key 'paramters'"),
        "{e}"
    );
    let e = refused("merge_method: lineer\nmodels:\n  - model: MODELS/a\n");
    assert!(
        e.contains("bad.yml:1:") && e.contains("unknown merge_method 'lineer'"),
        "{e}"
    );
    let e = refused("merge_method: ties\nbase_model: MODELS/base\nmodels:\n  - model: MODELS/a\n    parameters:\n      densty: 0.5\n      weight: 1\n");
    assert!(
        e.contains("bad.yml:6:") && e.contains("unknown parameter 'densty'"),
        "{e}"
    );
    // weight is required for ties (mergekit: "Missing required parameter weight").
    let e = refused("merge_method: ties\nbase_model: MODELS/base\nmodels:\n  - model: MODELS/a\n");
    assert!(e.contains("missing required parameter 'weight'"), "{e}");
    // slerp needs its base among the slice's sources.
    let e = refused("merge_method: slerp\nbase_model: MODELS/base\nslices:\n  - sources:\n      - model: MODELS/a\n        layer_range: [0, 4]\n      - model: MODELS/b\n        layer_range: [0, 4]\nparameters:\n  t: 0.5\n");
    assert!(e.contains("bad.yml:4:") && e.contains("not among"), "{e}");
    let e = refused("merge_method: passthrough\nslices:\n  - sources:\n      - model: MODELS/a\n        layer_range: [0, 2]\n      - model: MODELS/b\n        layer_range: [0, 3]\n");
    assert!(e.contains("same number of layers"), "{e}");
    let e = refused(
        "merge_method: linear\nmodels:\n  - model: MODELS/a\n    parameters:\n      weight: lots\n",
    );
    assert!(
        e.contains("bad.yml:5:") && e.contains("'lots' is not a valid number"),
        "{e}"
    );
    let e = refused("merge_method: linear\nmodels:\n  - model: MODELS/a\n    parameters: {weight: 1}\ntokenizer_source: union\n");
    assert!(
        e.contains("bad.yml:5:") && e.contains("not supported yet"),
        "{e}"
    );
    // mergekit: "Epsilon must be chosen such that density +/- epsilon is in (0, 1)".
    let e = refused("merge_method: della\nbase_model: MODELS/base\nmodels:\n  - model: MODELS/a\n    parameters: {weight: 1, density: 0.9, epsilon: 0.15}\n");
    assert!(e.contains("density ± epsilon"), "{e}");
    let e = refused(
        "merge_method: linear\nmodels:\n  - model: MODELS/nowhere\n    parameters: {weight: 1}\n",
    );
    assert!(e.contains("bad.yml:3:") && e.contains("nowhere"), "{e}");
    let e = refused("merge_method: linear\nmodels: [\n");
    assert!(e.contains("bad.yml:") && e.contains("invalid YAML"), "{e}");
    let e = refused("merge_method: linear\nmodels:\n  - model: MODELS/a\n    parameters: {weight: 1}\ndtype: float8\n");
    assert!(
        e.contains("bad.yml:5:") && e.contains("unknown dtype"),
        "{e}"
    );
    // Without --config a METHOD and INPUTs are needed; with it, none.
    let r = mnemo_in(&dir(), &["merge", "-o", "x"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("METHOD"), "{}", r.stderr);
    let r = mnemo_in(
        &dir(),
        &["merge", "--config", "linear.yml", "ties", "-o", "x"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("give no METHOD"), "{}", r.stderr);
    // A missing -o is clap's usage error, not a TOML parse of the YAML.
    let r = mnemo_in(&dir(), &["merge", "--config", "linear.yml"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--output"), "{}", r.stderr);
    // The output may not be an input's folder.
    let tmp = workdir();
    let cfg = tmp.path().join("x.yml");
    let a = dir().join("models/a");
    std::fs::write(
        &cfg,
        format!(
            "merge_method: linear\nmodels:\n  - model: {}\n    parameters: {{weight: 1}}\n",
            a.display()
        ),
    )
    .unwrap();
    let before = std::fs::read(a.join("model.safetensors")).unwrap();
    let r = merge(cfg.to_str().unwrap(), &a);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("holds the input model"), "{}", r.stderr);
    assert_eq!(std::fs::read(a.join("model.safetensors")).unwrap(), before);
}

#[test]
fn fisher_merging_in_the_yaml_language() {
    // The torch float64 reference of fixtures/merge/gen.py (Matena & Raffel, floor 1e-6,
    // normalised by the Fisher files' global norms, weights 2, 1, 0.5).
    let tmp = workdir();
    let f = |n: &str| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/merge")
            .join(n)
            .display()
            .to_string()
    };
    let cfg = tmp.path().join("fisher.yml");
    std::fs::write(
        &cfg,
        format!(
            "merge_method: fisher\nmodels:\n  - model: {}\n    fisher: {}\n    parameters: {{weight: 2.0}}\n  - model: {}\n    fisher: {}\n    parameters: {{weight: 1.0}}\n  - model: {}\n    fisher: {}\n    parameters: {{weight: 0.5}}\nparameters:\n  floor: 1.0e-6\n  normalize: true\n",
            f("a.safetensors"),
            f("fa.safetensors"),
            f("b.safetensors"),
            f("fb.safetensors"),
            f("c.safetensors"),
            f("fc.safetensors")
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    ok(merge(cfg.to_str().unwrap(), &out));
    let got = Checkpoint::open(&out).unwrap();
    let want = Checkpoint::open(f("expected/fisher_floor_normalize_w.safetensors")).unwrap();
    for name in want.names() {
        let (g, w) = (got.entry(name).unwrap(), want.entry(name).unwrap());
        assert_eq!(g.dtype, w.dtype, "{name}");
        if !w.dtype.is_float() {
            assert_eq!(
                got.bytes(name).unwrap(),
                want.bytes(name).unwrap(),
                "{name}"
            );
            continue;
        }
        let (gv, wv) = (got.to_f32(name).unwrap(), want.to_f32(name).unwrap());
        let scale = wv.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (j, (&a, &b)) in gv.iter().zip(&wv).enumerate() {
            assert!(
                (a - b).abs() <= tolerance(w.dtype, b, scale),
                "{name}[{j}]: {a} vs {b}"
            );
        }
    }
    // A model without its Fisher file is refused, naming its line.
    std::fs::write(
        &cfg,
        format!(
            "merge_method: fisher\nmodels:\n  - model: {}\n    fisher: {}\n  - model: {}\n",
            f("a.safetensors"),
            f("fa.safetensors"),
            f("b.safetensors")
        ),
    )
    .unwrap();
    let r = merge(cfg.to_str().unwrap(), &tmp.path().join("out2"));
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("fisher.yml:5:") && r.stderr.contains("Fisher file"),
        "{}",
        r.stderr
    );
}
