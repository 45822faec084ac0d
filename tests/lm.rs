//! Causal language models against transformers (fixtures/lm/gen.py): tiny Llama, Llama 3.1
//! (rope scaling, biases, head_dim ≠ hidden/heads), Qwen2 and Mistral (sliding window)
//! folders saved by `save_pretrained` load as they are; their logits, the causal-LM loss
//! and one AdamW step equal transformers'.

mod common;
use candle_core::Device;
use common::*;
use mnemo::checkpoint::Checkpoint;
use mnemo::data::Dataset;
use mnemo::model::{Mode, Model};
use mnemo::rng::Rng;
use std::path::{Path, PathBuf};

const CASES: [&str; 4] = ["llama_tied", "llama3_bias", "qwen2", "mistral_window"];

fn lm(name: &str) -> PathBuf {
    fixtures().join("lm").join(name)
}

fn expected() -> Checkpoint {
    Checkpoint::open(lm("expected.safetensors")).unwrap()
}

/// The model's logits on `x` in eval mode, flattened.
fn logits(model: &mut Model, x: &candle_core::Tensor) -> Vec<f32> {
    let y = model
        .forward(x, None, Mode::Eval, &mut Rng::new(0))
        .unwrap();
    y.flatten_all().unwrap().to_vec1().unwrap()
}

/// max |a − b| ≤ tol · max(1, max |b|).
fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1f32, |m, x| m.max(x.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{what}: max abs diff {worst} (scale {scale})"
    );
}

#[test]
fn logits_of_transformers_folders_match() {
    let want = expected();
    let data = Dataset::open(lm("data.safetensors")).unwrap();
    for case in CASES {
        let (mut model, _) = Model::open(&lm(case), None, &Device::Cpu).unwrap();
        let (x, _) = data.batch(&[0, 1, 2], &Device::Cpu).unwrap();
        let got = logits(&mut model, &x);
        close(
            &got,
            &want.to_f32(&format!("{case}.logits")).unwrap(),
            1e-4,
            case,
        );
    }
}

#[test]
fn eval_reports_transformers_loss_perplexity_and_token_accuracy() {
    let want = expected();
    let dir = workdir();
    for case in CASES {
        let folder = lm(case).to_string_lossy().into_owned();
        let r = ok(mnemo_in(
            dir.path(),
            &["eval", &folder, "--data", &fixture("lm/data.safetensors")],
        ));
        let j = r.last_json();
        let loss = j["loss"].as_f64().unwrap();
        let torch = want.to_f32(&format!("{case}.loss")).unwrap()[0] as f64;
        assert!(
            (loss - torch).abs() <= 1e-5 * torch,
            "{case}: {loss} vs {torch}"
        );
        let ppl = j["perplexity"].as_f64().unwrap();
        assert!((ppl - torch.exp()).abs() <= 1e-4 * ppl, "{case}: {ppl}");
        // 3 rows of 12 positions, 4 padded on the last: 11 + 11 + 7 scored.
        assert_eq!(j["tokens"], 29, "{case}: {j}");
        let acc = j["token_accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{case}: {j}");
    }
}

#[test]
fn one_adamw_step_equals_transformers() {
    let want = expected();
    let dir = workdir();
    for case in CASES {
        let folder = lm(case).to_string_lossy().into_owned();
        let out = format!("{case}.safetensors");
        ok(mnemo_in(
            dir.path(),
            &[
                "train-ewc",
                &folder,
                "--data",
                &fixture("lm/data.safetensors"),
                "--optimizer",
                "adamw",
                "--lr",
                "1e-2",
                "--weight-decay",
                "0.01",
                "--decay-all",
                "--batch-size",
                "3",
                "--epochs",
                "1",
                "--no-shuffle",
                "-o",
                &out,
            ],
        ));
        let got = Checkpoint::open(dir.path().join(&out)).unwrap();
        let prefix = format!("{case}.step.");
        let mut n = 0;
        for name in want.names().filter(|n| n.starts_with(&prefix)) {
            let tensor = &name[prefix.len()..];
            let g = got.to_f32(tensor).unwrap();
            let w = want.to_f32(name).unwrap();
            let grad = want.to_f32(&format!("{case}.grad.{tensor}")).unwrap();
            // Adam's first step is lr·g/(|g| + eps): where |g| is within a few orders of
            // eps (1e-8) the float error of a cancelling sum moves it by a visible part of
            // lr, so those elements are only held to the step's bound.
            for (i, ((a, b), d)) in g.iter().zip(&w).zip(&grad).enumerate() {
                let tol = if d.abs() >= 1e-4 { 1e-5 } else { 1e-2 };
                assert!(
                    (a - b).abs() <= tol * b.abs().max(1.0),
                    "{case} {tensor}[{i}]: {a} vs {b} (gradient {d})"
                );
            }
            n += 1;
        }
        assert_eq!(n, got.names().count(), "{case}: every tensor checked");
    }
}

#[test]
fn gradients_of_the_causal_lm_loss_equal_transformers() {
    let want = expected();
    let data = Dataset::open(lm("data.safetensors")).unwrap();
    for case in CASES {
        let (mut model, _) = Model::open(&lm(case), None, &Device::Cpu).unwrap();
        let (x, y) = data.batch(&[0, 1, 2], &Device::Cpu).unwrap();
        let logits = model
            .forward(&x, None, Mode::Train, &mut Rng::new(0))
            .unwrap();
        let dims = logits.dims().to_vec();
        let l: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        let (loss, g) = mnemo::loss::causal_lm(&l, &dims, &y, 0.0, 1.0);
        let torch = want.to_f32(&format!("{case}.loss")).unwrap()[0] as f64;
        assert!(
            (loss - torch).abs() <= 1e-5 * torch,
            "{case}: {loss} vs {torch}"
        );
        let g = candle_core::Tensor::from_vec(g, dims.as_slice(), &Device::Cpu).unwrap();
        let grads = (logits * g).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in model.vars() {
            let got: Vec<f32> = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{case}: no gradient for {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w = want.to_f32(&format!("{case}.grad.{name}")).unwrap();
            // Relative to the tensor's largest gradient (gradients are ≪ 1).
            let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
            let worst = got
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-4 * scale,
                "{case} grad {name}: max abs diff {worst}, largest {scale}"
            );
        }
    }
}

fn peft_tensors(prefix: &str) -> Vec<(String, Vec<f32>)> {
    let want = expected();
    let names: Vec<String> = want
        .names()
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect();
    names
        .into_iter()
        .map(|n| (n[prefix.len()..].to_string(), want.to_f32(&n).unwrap()))
        .collect()
}

/// `lora merge` of the fixture adapter `adapter` into the fixture model `base`, written at
/// `out` in `dir` (a file, or a folder when it ends with `/`), checked tensor by tensor
/// against PEFT's `merge_and_unload()` (`PREFIX.NAME` in expected.safetensors); the folded
/// weights.
fn fold_as_peft(dir: &Path, base: &str, adapter: &str, out: &str, prefix: &str) -> Checkpoint {
    let base = lm(base).to_string_lossy().into_owned();
    ok(mnemo_in(
        dir,
        &["lora", "merge", &base, &fixture(adapter), "-o", out],
    ));
    let weights = match out.strip_suffix('/') {
        Some(folder) => dir.join(folder).join("model.safetensors"),
        None => dir.join(out),
    };
    let got = Checkpoint::open(weights).unwrap();
    let merged = peft_tensors(prefix);
    assert_eq!(got.names().count(), merged.len());
    for (name, w) in &merged {
        close(&got.to_f32(name).unwrap(), w, 1e-6, name);
    }
    got
}

/// PEFT's adapter on a transformers folder, folded by `lora merge` into a folder: the
/// weights equal `merge_and_unload()`'s, the config is the base's, and the folder
/// evaluates as the adapted PEFT model does.
#[test]
fn a_peft_adapter_folds_into_a_model_folder_as_peft_does() {
    let dir = workdir();
    let got = fold_as_peft(
        dir.path(),
        "llama_tied",
        "lm/peft_llama",
        "out/",
        "peft.merged.",
    );
    let out = dir.path().join("out");
    for f in ["config.json", "generation_config.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(lm("llama_tied").join(f)).unwrap(),
            "{f}"
        );
    }
    assert_eq!(got.metadata()["format"], "pt");
    let (mut model, _) = Model::open(&out, None, &Device::Cpu).unwrap();
    let data = Dataset::open(lm("data.safetensors")).unwrap();
    let (x, _) = data.batch(&[0, 1, 2], &Device::Cpu).unwrap();
    close(
        &logits(&mut model, &x),
        &expected().to_f32("peft.logits").unwrap(),
        1e-4,
        "peft logits",
    );
    let r = ok(mnemo_in(
        dir.path(),
        &["eval", "out", "--data", &fixture("lm/data.safetensors")],
    ));
    let loss = r.last_json()["loss"].as_f64().unwrap();
    let torch = expected().to_f32("peft.loss").unwrap()[0] as f64;
    assert!((loss - torch).abs() <= 1e-5 * torch, "{loss} vs {torch}");
}

/// `lora-gate --adapter` on the fixture adapter `adapter` over the fixture model `base`: one
/// SGD step (lr 0.1, the whole batch, dropout 0) on the causal-LM loss equals PEFT's
/// (`PREFIX.KEY` in expected.safetensors), in PEFT's layout; the adapter folder written.
fn one_sgd_step_as_peft(dir: &Path, base: &str, adapter: &str, prefix: &str) -> PathBuf {
    let data = fixture("lm/data.safetensors");
    let r = ok(mnemo_in(
        dir,
        &[
            "lora-gate",
            &lm(base).to_string_lossy(),
            "--adapter",
            &fixture(adapter),
            "--data",
            &data,
            "--val",
            &data,
            "--dropout",
            "0",
            "--optimizer",
            "sgd",
            "--lr",
            "0.1",
            "--batch-size",
            "3",
            "--epochs",
            "1",
            "--no-shuffle",
            "--threshold",
            "1e9",
            "-o",
            "ad",
        ],
    ));
    assert_eq!(r.last_json()["accepted"], true);
    let got = Checkpoint::open(dir.join("ad/adapter_model.safetensors")).unwrap();
    let step = peft_tensors(prefix);
    assert_eq!(got.names().count(), step.len());
    for (name, w) in &step {
        close(&got.to_f32(name).unwrap(), w, 1e-5, name);
    }
    dir.join("ad")
}

#[test]
fn one_step_from_a_peft_adapter_on_token_data_matches_peft() {
    one_sgd_step_as_peft(
        workdir().path(),
        "llama_tied",
        "lm/peft_llama",
        "peft.step.",
    );
}

/// DoRA trains as PEFT's DoraLinearLayer: the magnitudes and the LoRA factors, under the
/// detached row norm.
#[test]
fn one_dora_step_matches_peft() {
    let dir = workdir();
    let ad = one_sgd_step_as_peft(dir.path(), "qwen2", "lm/peft_qwen2_dora", "peft_dora.step.");
    let cfg = std::fs::read_to_string(ad.join("adapter_config.json")).unwrap();
    assert!(cfg.contains("\"use_dora\": true"), "{cfg}");
}

/// The gate on a language model: validation perplexity before and after, the adapter and
/// the merged folder written when it holds, nothing (exit 1) when it does not.
#[test]
fn lora_gate_gates_a_language_model_on_perplexity() {
    let dir = workdir();
    let data = fixture("lm/data.safetensors");
    let base = lm("qwen2").to_string_lossy().into_owned();
    let gate = |threshold: &str, significance: &str, out: &str, merged: &str| {
        let mut args = vec![
            "lora-gate",
            &base,
            "--data",
            &data,
            "--val",
            &data,
            "--targets",
            "q_proj,v_proj",
            "--rank",
            "4",
            "--lr",
            "1e-2",
            "--epochs",
            "3",
            "--metric",
            "perplexity",
            "--threshold",
            threshold,
            "--merged",
            merged,
            "-o",
            out,
        ];
        if !significance.is_empty() {
            args.extend(["--significance", significance]);
        }
        mnemo_in(dir.path(), &args)
    };
    let r = ok(gate("0", "0.5", "ad", "merged/"));
    let j = r.last_json();
    assert_eq!(j["accepted"], true, "{j}");
    assert_eq!(j["metric"], "perplexity");
    let (before, after) = (
        j["baseline"].as_f64().unwrap(),
        j["score"].as_f64().unwrap(),
    );
    assert!(
        after < before,
        "training on the validation data lowers its perplexity: {j}"
    );
    // The baseline is exp of transformers' loss on the same data.
    let torch = expected().to_f32("qwen2.loss").unwrap()[0] as f64;
    assert!(
        (before.ln() - torch).abs() < 1e-5,
        "{before} vs exp({torch})"
    );
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("ad/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 4);
    assert!(dir.path().join("merged/model.safetensors").is_file());
    assert!(dir.path().join("merged/config.json").is_file());
    // The adapter folded by `lora merge` is the merged folder's model.
    ok(mnemo_in(
        dir.path(),
        &["lora", "merge", &base, "ad", "-o", "again.safetensors"],
    ));
    let a = Checkpoint::open(dir.path().join("again.safetensors")).unwrap();
    let b = Checkpoint::open(dir.path().join("merged/model.safetensors")).unwrap();
    for n in b.names() {
        close(&a.to_f32(n).unwrap(), &b.to_f32(n).unwrap(), 1e-6, n);
    }
    // Asking for a perplexity drop larger than training gives: rejected, nothing written.
    let r = gate("-1e6", "", "ad2", "merged2/");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(!dir.path().join("ad2").exists());
    assert!(!dir.path().join("merged2/model.safetensors").exists());
}

/// Replay on token data: the buffer keeps whole sequences (ids and labels, as the data
/// holds them), grows across runs, and refuses what it cannot hold.
#[test]
fn replay_keeps_token_sequences() {
    let dir = workdir();
    let data = fixture("lm/data.safetensors");
    let base = lm("llama_tied").to_string_lossy().into_owned();
    let run = |model: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "replay-train",
            model,
            "--data",
            &data,
            "--buffer",
            "b.safetensors",
            "-q",
            "-o",
            out,
        ];
        args.extend(extra);
        mnemo_in(dir.path(), &args)
    };
    ok(run(&base, "r1.safetensors", &["--capacity", "8"]));
    let b = Checkpoint::open(dir.path().join("b.safetensors")).unwrap();
    let d = Checkpoint::open(lm("data.safetensors")).unwrap();
    assert_eq!(b.entry("target").unwrap().shape, vec![3, 12]);
    // Every sequence, ids with its labels (in the shuffled order training saw them).
    let rows = |c: &Checkpoint| {
        let (x, y) = (c.to_i64("input").unwrap(), c.to_i64("target").unwrap());
        let mut r: Vec<(Vec<i64>, Vec<i64>)> = x
            .chunks(12)
            .zip(y.chunks(12))
            .map(|(a, b)| (a.to_vec(), b.to_vec()))
            .collect();
        r.sort();
        r
    };
    assert_eq!(rows(&b), rows(&d));
    // A second task replays them and adds its own.
    let r = ok(run(
        "r1.safetensors",
        "r2.safetensors",
        &["--capacity", "8"],
    ));
    let s = r.last_json();
    assert_eq!(s["buffer"]["size"], 6, "{s}");
    assert!(
        s["replay_loss"].is_number() || s["task_loss"].is_number(),
        "{s}"
    );
    // Class balancing and logit distillation have no meaning for sequences.
    let r = run(&base, "x.safetensors", &["--policy", "class-balanced"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("reservoir"), "{}", r.stderr);
    let r = run(&base, "x.safetensors", &["--distill", "1"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    // The sequence buffer refuses class-labelled data.
    let r = mnemo_in(
        dir.path(),
        &[
            "replay-train",
            &fixture("mlp.safetensors"),
            "--arch",
            "mlp:20-16-16-5",
            "--data",
            &fixture("mlp_data.safetensors"),
            "--buffer",
            "b.safetensors",
            "-o",
            "x.safetensors",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!dir.path().join("x.safetensors").exists());
}

/// PEFT's other selections: a regular-expression `target_modules` and `exclude_modules`,
/// folded as `merge_and_unload()` folds them (the excluded module untouched).
#[test]
fn a_peft_adapter_with_regex_targets_and_exclusions_folds_as_peft_does() {
    let dir = workdir();
    let got = fold_as_peft(
        dir.path(),
        "qwen2",
        "lm/peft_qwen2_regex",
        "m.safetensors",
        "peft_regex.merged.",
    );
    let before = Checkpoint::open(lm("qwen2").join("model.safetensors")).unwrap();
    let n = "model.layers.1.mlp.down_proj.weight";
    assert_eq!(
        got.to_f32(n).unwrap(),
        before.to_f32(n).unwrap(),
        "excluded"
    );
}

/// Hostile token data and configs: each refused with exit 2 and a message naming the thing,
/// before anything is allocated for it or written.
#[test]
fn hostile_token_data_and_configs_are_refused_by_name() {
    use mnemo::checkpoint::{write_checkpoint, Dtype, OwnedTensor};
    use std::borrow::Cow;
    let dir = workdir();
    let tokens = |name: &str, n: usize, t: usize, id: i64, label: Option<i64>| {
        let ids: Vec<u8> = (0..n * t).flat_map(|_| id.to_le_bytes()).collect();
        let labels: Vec<u8> = (0..n * t)
            .flat_map(|_| label.unwrap_or(id).to_le_bytes())
            .collect();
        let mk = |nm: &str, d: Vec<u8>| OwnedTensor {
            name: nm.into(),
            dtype: Dtype::I64,
            shape: vec![n, t],
            data: Cow::Owned(d),
        };
        write_checkpoint(
            dir.path().join(name),
            vec![mk("input", ids), mk("target", labels)],
            &Default::default(),
        )
        .unwrap();
    };
    let folder = lm("llama_tied").to_string_lossy().into_owned();
    let eval = |data: &str| mnemo_in(dir.path(), &["eval", &folder, "--data", data]);
    // A sequence whose attention scores cannot fit in memory.
    tokens("long.st", 1, 200_000, 3, None);
    let r = eval("long.st");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("attention scores"), "{}", r.stderr);
    // Nothing scored.
    tokens("unscored.st", 2, 8, 3, Some(-100));
    let r = eval("unscored.st");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("nothing to score"), "{}", r.stderr);
    // A token id beyond the vocabulary (97).
    tokens("oov.st", 2, 8, 500, None);
    let r = eval("oov.st");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("oov.st")
            && r.stderr.contains("token id 500")
            && r.stderr.contains("97 rows"),
        "{}",
        r.stderr
    );
    // Token sequences do not stream as JSON Lines (they would read back as numbers).
    let r = mnemo_in(
        dir.path(),
        &[
            "data",
            "stream",
            &fixture("lm/data.safetensors"),
            "--format",
            "jsonl",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--format safetensors") && r.stdout.is_empty(),
        "{}",
        r.stderr
    );
    // Features, not token ids.
    let r = eval(&fixture("mlp_data.safetensors"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not token data"), "{}", r.stderr);
    // A label that is neither a token nor -100.
    tokens("neg.st", 2, 8, 3, Some(-5));
    let r = eval("neg.st");
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("-100"), "{}", r.stderr);
    // A folder whose config.json is a model type mnemo does not read, and broken configs.
    for (edit, words) in [
        (r#""model_type": "gemma""#, "model_type 'gemma'"),
        (r#""num_attention_heads": 3"#, "num_attention_heads"),
        (
            r#""rope_scaling": {"rope_type": "yarn", "factor": 2}"#,
            "rope type 'yarn'",
        ),
        (r#""vocab_size": 1e30"#, "vocab_size"),
        (r#""partial_rotary_factor": 0.5"#, "partial_rotary_factor"),
        (r#""rope_scaling": 3"#, "rope_scaling"),
        (r#""initializer_range": "x""#, "initializer_range"),
    ] {
        let f = dir.path().join("bad");
        let _ = std::fs::remove_dir_all(&f);
        std::fs::create_dir(&f).unwrap();
        std::fs::copy(
            lm("llama_tied/model.safetensors"),
            f.join("model.safetensors"),
        )
        .unwrap();
        let mut cfg: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(lm("llama_tied/config.json")).unwrap())
                .unwrap();
        let e: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&format!("{{{edit}}}")).unwrap();
        cfg.remove("rope_parameters");
        cfg.extend(e);
        std::fs::write(
            f.join("config.json"),
            serde_json::Value::Object(cfg).to_string(),
        )
        .unwrap();
        let r = mnemo_in(
            dir.path(),
            &["eval", "bad", "--data", &fixture("lm/data.safetensors")],
        );
        assert_eq!(r.code, 2, "{edit}: {}", r.stderr);
        assert!(
            r.stderr.contains(words) && r.stderr.contains("config.json"),
            "{edit}: {}",
            r.stderr
        );
    }
}

/// PEFT's per-module ranks and α (`rank_pattern`, `alpha_pattern`): folded as
/// `merge_and_unload()` folds them, and an adapter continued by lora-gate keeps them.
#[test]
fn a_peft_adapter_with_rank_and_alpha_patterns_folds_as_peft_does() {
    let dir = workdir();
    fold_as_peft(
        dir.path(),
        "llama3_bias",
        "lm/peft_llama3_patterns",
        "m.safetensors",
        "peft_patterns.merged.",
    );
    let base = lm("llama3_bias").to_string_lossy().into_owned();
    let adapter = fixture("lm/peft_llama3_patterns");
    let data = fixture("lm/data.safetensors");
    ok(mnemo_in(
        dir.path(),
        &[
            "lora-gate",
            &base,
            "--adapter",
            &adapter,
            "--data",
            &data,
            "--val",
            &data,
            "--epochs",
            "1",
            "--threshold",
            "1e9",
            "-q",
            "-o",
            "ad",
        ],
    ));
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("ad/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["rank_pattern"]["v_proj"], 2, "{cfg}");
    assert_eq!(cfg["alpha_pattern"]["down_proj"], 3.0, "{cfg}");
    let ad = Checkpoint::open(dir.path().join("ad/adapter_model.safetensors")).unwrap();
    assert_eq!(
        ad.entry("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight")
            .unwrap()
            .shape,
        vec![6, 48]
    );
}

/// A PEFT DoRA adapter folds as `merge_and_unload()` does (each adapted row rescaled to its
/// magnitude).
#[test]
fn a_peft_dora_adapter_folds_as_peft_does() {
    let dir = workdir();
    fold_as_peft(
        dir.path(),
        "qwen2",
        "lm/peft_qwen2_dora",
        "m.safetensors",
        "peft_dora.merged.",
    );
}

/// A tensor's name, shape and values.
type Named = (String, Vec<usize>, Vec<f32>);

/// `lm_tied` rewritten with every tensor in `dtype` (values rounded to it), in a folder
/// beside its config; returns the folder and the rounded values as F32.
fn folder_in_dtype(
    dir: &Path,
    name: &str,
    dtype: mnemo::checkpoint::Dtype,
) -> (PathBuf, Vec<Named>) {
    use mnemo::checkpoint::{decode, encode, write_checkpoint, OwnedTensor};
    let src = Checkpoint::open(lm("llama_tied").join("model.safetensors")).unwrap();
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(
        lm("llama_tied").join("config.json"),
        folder.join("config.json"),
    )
    .unwrap();
    let mut tensors = Vec::new();
    let mut rounded = Vec::new();
    for n in src.names() {
        let shape = src.entry(n).unwrap().shape.clone();
        let data = encode(dtype, &src.to_f32(n).unwrap()).unwrap();
        rounded.push((n.to_string(), shape.clone(), decode(dtype, &data)));
        tensors.push(OwnedTensor {
            name: n.to_string(),
            dtype,
            shape,
            data: data.into(),
        });
    }
    write_checkpoint(
        folder.join("model.safetensors"),
        tensors,
        &Default::default(),
    )
    .unwrap();
    (folder, rounded)
}

#[test]
fn a_bf16_folder_trains_in_f32_and_is_written_back_in_bf16() {
    use mnemo::checkpoint::{decode, encode, write_checkpoint, Dtype, OwnedTensor};
    let dir = workdir();
    let (bf16, rounded) = folder_in_dtype(dir.path(), "bf16", Dtype::BF16);
    // The same values in F32: training from either must give the same f32 weights, so the
    // bf16 output is exactly the f32 output rounded to bf16.
    let f32_in = dir.path().join("f32.safetensors");
    write_checkpoint(
        &f32_in,
        rounded
            .iter()
            .map(|(n, s, v)| OwnedTensor::f32(n.clone(), s.clone(), v))
            .collect(),
        &Default::default(),
    )
    .unwrap();
    let config = lm("llama_tied").join("config.json");
    let arch = format!("llama:{}", config.display());
    let data = fixture("lm/data.safetensors");
    let train = |model: &str, arch: Option<&str>, out: &str| {
        let mut args = vec![
            "train-ewc",
            model,
            "--data",
            &data,
            "--optimizer",
            "adamw",
            "--lr",
            "1e-2",
            "--batch-size",
            "3",
            "--epochs",
            "2",
            "--no-shuffle",
            "-o",
            out,
        ];
        if let Some(a) = arch {
            args.extend(["--arch", a]);
        }
        ok(mnemo_in(dir.path(), &args));
    };
    train(&bf16.to_string_lossy(), None, "bf16-out/");
    train(
        &f32_in.to_string_lossy(),
        Some(&arch),
        "f32-out.safetensors",
    );
    let got = Checkpoint::open(dir.path().join("bf16-out/model.safetensors")).unwrap();
    let f32_out = Checkpoint::open(dir.path().join("f32-out.safetensors")).unwrap();
    assert_eq!(got.names().count(), rounded.len());
    for (n, _, before) in &rounded {
        assert_eq!(got.entry(n).unwrap().dtype, Dtype::BF16, "{n}");
        let want = decode(
            Dtype::BF16,
            &encode(Dtype::BF16, &f32_out.to_f32(n).unwrap()).unwrap(),
        );
        let have = got.to_f32(n).unwrap();
        assert_eq!(have, want, "{n}: the f32 result rounded once");
        assert_ne!(&have, before, "{n} trained");
    }
    assert!(dir.path().join("bf16-out/config.json").exists());
}

#[test]
fn a_weight_beyond_its_stored_dtype_is_an_error_naming_it() {
    use mnemo::checkpoint::Dtype;
    let dir = workdir();
    let (f16, _) = folder_in_dtype(dir.path(), "f16", Dtype::F16);
    let (model, _) = Model::open(&f16, None, &Device::Cpu).unwrap();
    let name = "model.norm.weight";
    let v = model.params[name].as_tensor().ones_like().unwrap() * 70000.0;
    model.params[name].set(&v.unwrap()).unwrap();
    let e = model.tensors().err().expect("refused").to_string();
    assert!(e.contains(name) && e.contains("F16"), "{e}");
}

/// PEFT's `modules_to_save` (lm_head and, by PEFT's plain suffix rule, every norm): the
/// saved copies replace the base's tensors when folded, as `merge_and_unload()` does.
#[test]
fn a_peft_adapter_with_saved_modules_folds_as_peft_does() {
    let dir = workdir();
    fold_as_peft(
        dir.path(),
        "llama3_bias",
        "lm/peft_llama3_saved",
        "out.safetensors",
        "peft_saved.merged.",
    );
}

/// One SGD step from PEFT's adapter with saved modules trains the saved copies in full and
/// the LoRA factors, as PEFT does, and writes both in PEFT's layout.
#[test]
fn one_step_with_saved_modules_matches_peft() {
    let dir = workdir();
    let ad = one_sgd_step_as_peft(
        dir.path(),
        "llama3_bias",
        "lm/peft_llama3_saved",
        "peft_saved.step.",
    );
    let got = Checkpoint::open(ad.join("adapter_model.safetensors")).unwrap();
    assert!(got.names().any(|n| n.ends_with("lm_head.weight")));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ad.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        cfg["modules_to_save"],
        serde_json::json!(["lm_head", "norm"])
    );
}

/// `--modules-to-save` from scratch: the saved copies start as the base's and train; what
/// PEFT would do wrongly or not at all is refused by name.
#[test]
fn modules_to_save_train_in_full_and_bad_choices_are_refused() {
    let dir = workdir();
    let data = fixture("lm/data.safetensors");
    let gate = |base: &str, extra: &[&str], out: &str| {
        let folder = lm(base).to_string_lossy().into_owned();
        let mut args = vec![
            "lora-gate",
            &folder,
            "--data",
            &data,
            "--val",
            &data,
            "--rank",
            "2",
            "--lr",
            "1e-2",
            "--epochs",
            "2",
            "--threshold",
            "1e9",
            "-o",
            out,
        ];
        args.extend_from_slice(extra);
        mnemo_in(dir.path(), &args)
    };
    ok(gate(
        "qwen2",
        &[
            "--targets",
            "v_proj",
            "--modules-to-save",
            "lm_head",
            "--merged",
            "m/",
        ],
        "ad",
    ));
    let ad = Checkpoint::open(dir.path().join("ad/adapter_model.safetensors")).unwrap();
    let base = Checkpoint::open(lm("qwen2").join("model.safetensors")).unwrap();
    let merged = Checkpoint::open(dir.path().join("m/model.safetensors")).unwrap();
    let head = ad.to_f32("base_model.model.lm_head.weight").unwrap();
    assert_ne!(
        head,
        base.to_f32("lm_head.weight").unwrap(),
        "the copy trained"
    );
    assert_eq!(
        head,
        merged.to_f32("lm_head.weight").unwrap(),
        "and is the merged head"
    );
    // Only the saved module trains in full: every other base weight is the base's.
    for n in base
        .names()
        .filter(|n| !n.contains("v_proj") && *n != "lm_head.weight")
    {
        assert_eq!(merged.to_f32(n).unwrap(), base.to_f32(n).unwrap(), "{n}");
    }
    for (base, extra, want) in [
        // A tied head holds no weight; a copy of the embedding would untie it.
        (
            "llama_tied",
            &["--targets", "q_proj", "--modules-to-save", "lm_head"][..],
            "tied",
        ),
        (
            "llama_tied",
            &["--targets", "q_proj", "--modules-to-save", "embed_tokens"][..],
            "tied",
        ),
        (
            "qwen2",
            &["--targets", "q_proj", "--modules-to-save", "nothing_here"][..],
            "nothing_here",
        ),
        // Adapting a module inside a saved one would train it twice.
        (
            "qwen2",
            &["--targets", "q_proj", "--modules-to-save", "self_attn"][..],
            "both adapted",
        ),
        (
            "qwen2",
            &["--adapter", "ad", "--modules-to-save", "lm_head"][..],
            "--modules-to-save with --adapter",
        ),
    ] {
        let r = gate(base, extra, "bad");
        assert_eq!(r.code, 2, "{extra:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{extra:?}: {}", r.stderr);
        assert!(!dir.path().join("bad").exists());
    }
}

/// A fresh DoRA adapter starts as PEFT's dora_init: B zero, each magnitude the row norm of
/// its base weight, so the adapted model is the base at step 0. DoRA on a conv is refused.
#[test]
fn a_fresh_dora_adapter_starts_at_the_base_row_norms() {
    let (mut model, ckpt) = Model::open(&lm("qwen2"), None, &Device::Cpu).unwrap();
    let modules = mnemo::lora::resolve_targets(&model.spec, &["v_proj".to_string()]).unwrap();
    let mut config =
        mnemo::lora::LoraConfig::new(modules.keys().cloned().collect(), 2, 4.0, 0.0, false);
    config.dora = true;
    let data = Dataset::open(lm("data.safetensors")).unwrap();
    let (x, _) = data.batch(&[0, 1, 2], &Device::Cpu).unwrap();
    let before = logits(&mut model, &x);
    mnemo::lora::attach::attach(&mut model, config, modules, None, 7).unwrap();
    let ad = mnemo::lora::attach::adapter_of(&model).unwrap().unwrap();
    assert_eq!(ad.magnitudes.len(), 2);
    for (m, mag) in &ad.magnitudes {
        let w = ckpt.to_f32(&format!("{m}.weight")).unwrap();
        let cols = w.len() / mag.len();
        for (i, row) in w.chunks_exact(cols).enumerate() {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((mag[i] - norm).abs() <= 1e-6 * norm, "{m}[{i}]");
        }
    }
    let after = logits(&mut model, &x);
    close(&after, &before, 1e-5, "the adapted model at step 0");
    let dir = workdir();
    let r = mnemo_in(
        dir.path(),
        &[
            "lora-gate",
            &fixture("cnn.safetensors"),
            "--arch",
            &fixture("cnn.arch.json"),
            "--data",
            &fixture("img_data.safetensors"),
            "--val",
            &fixture("img_data.safetensors"),
            "--targets",
            "0",
            "--dora",
            "-o",
            "ad",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("DoRA") && r.stderr.contains("conv2d"),
        "{}",
        r.stderr
    );
}

/// `init` from a config draws as transformers' `_init_weights` at the config's
/// `initializer_range`: the embedding and every linear, `lm_head` included, N(0, std²) with
/// zero biases; norms 1.
#[test]
fn init_draws_at_the_configs_initializer_range() {
    let dir = workdir();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lm("qwen2/config.json")).unwrap()).unwrap();
    cfg["initializer_range"] = 0.1.into();
    cfg["vocab_size"] = 2000.into();
    std::fs::write(dir.path().join("c.json"), cfg.to_string()).unwrap();
    ok(mnemo_in(
        dir.path(),
        &["init", "--arch", "llama:c.json", "-o", "m.st"],
    ));
    let m = Checkpoint::open(dir.path().join("m.st")).unwrap();
    let std_of = |n: &str| {
        let v = m.to_f32(n).unwrap();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
    };
    for n in [
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    ] {
        let s = std_of(n);
        assert!((s - 0.1).abs() < 0.01, "{n}: std {s}");
    }
    assert!(m
        .to_f32("model.layers.0.self_attn.q_proj.bias")
        .unwrap()
        .iter()
        .all(|b| *b == 0.0));
    assert!(m
        .to_f32("model.norm.weight")
        .unwrap()
        .iter()
        .all(|w| *w == 1.0));
    // A range that is no std is refused by name.
    cfg["initializer_range"] = (-1.0).into();
    std::fs::write(dir.path().join("c.json"), cfg.to_string()).unwrap();
    let r = mnemo_in(
        dir.path(),
        &["init", "--arch", "llama:c.json", "-o", "bad.st"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("initializer_range"), "{}", r.stderr);
}
