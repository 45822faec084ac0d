//! Layered configuration through the real binary: `--config FILE.toml` < `MNEMO_*`
//! variables < the command line < `--set`; unknown names and wrong types are errors
//! naming where they were written; `config show` tells each setting's source; a pipeline
//! configured by one file runs.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs mnemo in `dir` with exactly these MNEMO_* variables (others removed).
fn mnemo_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mnemo"));
    c.args(args).current_dir(dir).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("MNEMO_") {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run mnemo");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        raw_stdout: out.stdout,
    }
}

/// `config show` as key → (value, source).
fn show(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> BTreeMap<String, (Value, String)> {
    let mut a = vec!["config", "show"];
    a.extend(args);
    let r = ok(mnemo_env(dir, &a, env));
    r.json_lines()
        .into_iter()
        .map(|l| {
            (
                l["key"].as_str().unwrap().to_string(),
                (
                    l["value"].clone(),
                    l["source"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn precedence_file_env_flag_set() {
    let d = workdir();
    let p = d.path();
    let cfg = write(
        p,
        "run.toml",
        "[global]\ndevice = 'cpu'\n\n[train-ewc]\nlambda = 1\nepochs = 2\nlr = 0.5\nseed = 3\n",
    );
    let env = [
        ("MNEMO_TRAIN_EWC_EPOCHS", "4"),
        ("MNEMO_TRAIN_EWC_LR", "0.25"),
        ("MNEMO_TRAIN_EWC_SEED", "5"),
        ("MNEMO_GLOBAL_QUIET", "1"),
    ];
    let s = show(
        p,
        &[
            "--config",
            &cfg,
            "--set",
            "seed=11",
            "train-ewc",
            "--lr",
            "0.125",
            "--seed",
            "9",
        ],
        &env,
    );
    let file = format!("file:{cfg}");
    assert_eq!(s["lambda"], (json!(1), file.clone()));
    assert_eq!(s["epochs"], (json!(4), "env:MNEMO_TRAIN_EWC_EPOCHS".into()));
    assert_eq!(s["lr"], (json!(0.125), "flag".into()));
    assert_eq!(s["seed"], (json!(11), "set".into()));
    assert_eq!(s["batch-size"], (json!(128), "default".into()));
    assert_eq!(s["penalty"], (json!([]), "default".into()));
    assert_eq!(s["data"], (Value::Null, "default".into()));
    assert_eq!(s["device"], (json!("cpu"), file.clone()));
    assert_eq!(s["quiet"], (json!(true), "env:MNEMO_GLOBAL_QUIET".into()));
    // Without the environment, the file's values show; --set also beats the file.
    let s = show(p, &["--config", &cfg, "--set", "lr=1e-3", "train-ewc"], &[]);
    assert_eq!(s["epochs"], (json!(2), file.clone()));
    assert_eq!(s["seed"], (json!(3), file.clone()));
    assert_eq!(s["lr"], (json!(0.001), "set".into()));
    // --config after the subcommand's name works too (it is a global flag), and a table.
    let r = ok(mnemo_env(
        p,
        &["config", "show", "--table", "train-ewc", "--config", &cfg],
        &[],
    ));
    assert!(r.stdout.starts_with("key "), "{}", r.stdout);
    let lambda = r.stdout.lines().find(|l| l.starts_with("lambda ")).unwrap();
    assert!(
        lambda.contains(" 1 ") && lambda.ends_with(&file),
        "{lambda}"
    );
    // Nested subcommands read their dashed table.
    let cfg2 = write(
        p,
        "split.toml",
        "[data-split]\nclasses = [3, 4]\nrelabel = true\n",
    );
    let s = show(p, &["--config", &cfg2, "data", "split"], &[]);
    assert_eq!(s["classes"], (json!([3, 4]), format!("file:{cfg2}")));
    assert_eq!(s["relabel"], (json!(true), format!("file:{cfg2}")));
    // A name that is no subcommand.
    assert_eq!(mnemo_env(p, &["config", "show", "nonsense"], &[]).code, 2);
}

#[test]
fn a_pipeline_configured_by_one_file() {
    let d = workdir();
    let p = d.path();
    let cfg = write(
        p,
        "pipeline.toml",
        &format!(
            r#"# Fisher on task 1, then EWC training on task 2.
[global]
quiet = true

[fisher]
arch = "mlp:20-16-16-5"
data = "{a}"

[train-ewc]
arch = "mlp:20-16-16-5"
data = "{b}"
penalty = ["fisher1.safetensors:{m}"]
lambda = 1000
epochs = 2
batch-size = 16
lr = 0.01
"#,
            a = fixture("mlp_data.safetensors"),
            b = fixture("mh_b_data.safetensors"),
            m = fixture("mlp.safetensors"),
        ),
    );
    let model = fixture("mlp.safetensors");
    ok(mnemo_env(
        p,
        &[
            "fisher",
            "--config",
            &cfg,
            &model,
            "-o",
            "fisher1.safetensors",
        ],
        &[],
    ));
    let train = |out: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut a = vec!["train-ewc", "--config", &cfg, &model, "-o", out];
        a.extend(extra);
        ok(mnemo_env(p, &a, env)).last_json()
    };
    // The file's settings: 2 epochs of 4 batches, the penalty on.
    let s = train("a.safetensors", &[], &[]);
    assert_eq!(s["epochs"], 2);
    assert_eq!(s["steps"], 8);
    assert!(s["penalty"].as_f64().unwrap() > 0.0, "{s}");
    // The summary and the file's provenance record the effective command line.
    let cmd = s["command"].as_str().unwrap();
    for w in [
        "--lambda=1000",
        "--epochs=2",
        "--batch-size=16",
        "--penalty=fisher1",
    ] {
        assert!(cmd.contains(w), "{w} not in {cmd}");
    }
    assert!(!cmd.contains("--config"), "{cmd}");
    let meta =
        ok(mnemo_in(p, &["inspect", "--json", "a.safetensors"])).last_json()["metadata"].clone();
    assert_eq!(meta["mnemo.command"], cmd);
    // The same settings on the command line alone give the same weights.
    let data = fixture("mh_b_data.safetensors");
    let penalty = format!("fisher1.safetensors:{model}");
    ok(mnemo_env(
        p,
        &[
            "train-ewc",
            &model,
            "--arch",
            "mlp:20-16-16-5",
            "--data",
            &data,
            "--penalty",
            &penalty,
            "--lambda",
            "1000",
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--lr",
            "0.01",
            "-o",
            "b.safetensors",
        ],
        &[],
    ));
    assert_eq!(
        mnemo_in(p, &["diff", "a.safetensors", "b.safetensors"]).code,
        0
    );
    // The environment beats the file, the command line beats the environment, --set beats
    // them all.
    let s = train("c.safetensors", &[], &[("MNEMO_TRAIN_EWC_EPOCHS", "3")]);
    assert_eq!(s["epochs"], 3);
    let s = train(
        "c.safetensors",
        &["--epochs", "4"],
        &[("MNEMO_TRAIN_EWC_EPOCHS", "3")],
    );
    assert_eq!(s["epochs"], 4);
    let s = train(
        "c.safetensors",
        &["--epochs", "4", "--set", "epochs=1"],
        &[("MNEMO_TRAIN_EWC_EPOCHS", "3")],
    );
    assert_eq!(s["epochs"], 1);
    // lambda from --set changes the weights: 0 turns the penalty's pull off.
    train("d.safetensors", &["--set", "lambda=0"], &[]);
    assert_eq!(
        mnemo_in(p, &["diff", "a.safetensors", "d.safetensors"]).code,
        1
    );
    let meta =
        ok(mnemo_in(p, &["inspect", "--json", "d.safetensors"])).last_json()["metadata"].clone();
    assert!(meta["mnemo.command"]
        .as_str()
        .unwrap()
        .contains("--lambda=0"));
    // quiet from [global]: nothing on stderr.
    let r = ok(mnemo_env(
        p,
        &["train-ewc", "--config", &cfg, &model, "-o", "e.safetensors"],
        &[],
    ));
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    // Without the file, --data (required) is missing: clap's usual error, exit 2.
    let r = mnemo_env(p, &["train-ewc", &model, "-o", "f.safetensors"], &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--data"), "{}", r.stderr);
}

#[test]
fn arrays_and_booleans() {
    let d = workdir();
    let p = d.path();
    let data = fixture("mlp_data.safetensors");
    let cfg = write(
        p,
        "split.toml",
        &format!("[data-split]\ninput = \"{data}\"\nclasses = [3, 4]\nrelabel = true\n"),
    );
    let classes = |r: Run| ok(r).last_json()["classes"].clone();
    // TOML array and true.
    let c = classes(mnemo_env(
        p,
        &["data", "split", "--config", &cfg, "-o", "a.safetensors"],
        &[],
    ));
    assert_eq!(c, json!({"0": 8, "1": 19}));
    // env: "false"/"0" switch it off again; lists are comma-separated.
    for off in ["false", "0"] {
        let c = classes(mnemo_env(
            p,
            &["data", "split", "--config", &cfg, "-o", "b.safetensors"],
            &[("MNEMO_DATA_SPLIT_RELABEL", off)],
        ));
        assert_eq!(c, json!({"3": 8, "4": 19}));
    }
    let c = classes(mnemo_env(
        p,
        &["data", "split", "--config", &cfg, "-o", "c.safetensors"],
        &[("MNEMO_DATA_SPLIT_CLASSES", "0,4")],
    ));
    assert_eq!(c.as_object().unwrap().len(), 2);
    assert!(c.get("0").is_some() && c.get("1").is_some(), "{c}");
    // --set: a switch (1/true), a list.
    let c = classes(mnemo_env(
        p,
        &[
            "data",
            "split",
            &data,
            "--classes",
            "1",
            "--set",
            "classes=2,3",
            "--set",
            "relabel=1",
            "-o",
            "d.safetensors",
        ],
        &[],
    ));
    assert!(
        c.get("0").is_some() && c.get("1").is_some() && c.get("2").is_none(),
        "{c}"
    );
    // A repeatable flag and a flag with several values as arrays: eval --data A B.
    let cfg = write(
        p,
        "eval.toml",
        &format!(
            "[eval]\narch = \"mlp:20-16-16-5\"\ndata = [\"{}\", \"{}\"]\n",
            data,
            fixture("mh_b_data.safetensors")
        ),
    );
    let r = ok(mnemo_env(
        p,
        &["eval", "--config", &cfg, &fixture("mlp.safetensors")],
        &[],
    ));
    assert_eq!(r.json_lines().len(), 3, "{}", r.stdout);
    let r = ok(mnemo_env(
        p,
        &[
            "eval",
            &fixture("mlp.safetensors"),
            "--arch",
            "mlp:20-16-16-5",
        ],
        &[("MNEMO_EVAL_DATA", &format!("{data},{data}"))],
    ));
    let lines = r.json_lines();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["loss"], lines[1]["loss"]);
}

#[test]
fn unknown_names_are_errors_naming_where() {
    let d = workdir();
    let p = d.path();
    let model = fixture("mlp.safetensors");
    let data = fixture("mlp_data.safetensors");
    let eval = [
        "eval",
        model.as_str(),
        "--arch",
        "mlp:20-16-16-5",
        "--data",
        data.as_str(),
    ];
    for (name, text, want) in [
        (
            "key.toml",
            "[train-ewc]\nlamda = 1\n",
            vec!["key.toml", "[train-ewc] lamda", "did you mean 'lambda'"],
        ),
        (
            "table.toml",
            "[train-ewk]\nlambda = 1\n",
            vec!["table.toml", "unknown table [train-ewk]", "[train-ewc]"],
        ),
        (
            "nested.toml",
            "[data.split]\nrelabel = true\n",
            vec!["nested.toml", "[data-split]"],
        ),
        (
            "global.toml",
            "[eval]\ndevice = 'cpu'\n",
            vec!["global.toml", "global flag"],
        ),
        (
            "top.toml",
            "lambda = 1\n",
            vec!["top.toml", "top-level key 'lambda'"],
        ),
        (
            "syntax.toml",
            "[eval\n",
            vec!["syntax.toml", "invalid TOML"],
        ),
    ] {
        let cfg = write(p, name, text);
        // Every table of the file is checked, whatever subcommand runs.
        let mut a = eval.to_vec();
        a.extend(["--config", cfg.as_str()]);
        let r = mnemo_env(p, &a, &[]);
        assert_eq!(r.code, 2, "{name}");
        assert!(r.stdout.is_empty(), "{name}: {}", r.stdout);
        for w in want {
            assert!(r.stderr.contains(w), "{name}: no '{w}' in {}", r.stderr);
        }
    }
    let r = mnemo_env(p, &eval, &[("MNEMO_CONFIG", "x.toml")]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("MNEMO_CONFIG"), "{}", r.stderr);
    // Every MNEMO_* variable is checked, also one for another subcommand.
    let r = mnemo_env(p, &eval, &[("MNEMO_TRAIN_EWC_LAMDA", "3")]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("MNEMO_TRAIN_EWC_LAMDA") && r.stderr.contains("MNEMO_TRAIN_EWC_LAMBDA"),
        "{}",
        r.stderr
    );
    let r = mnemo_env(p, &eval, &[("MNEMO_NOSUCH_THING", "3")]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("MNEMO_NOSUCH_THING"), "{}", r.stderr);
    // --set names a flag of the running subcommand (or a global one).
    let mut a = eval.to_vec();
    a.extend(["--set", "lambda=3"]);
    let r = mnemo_env(p, &a, &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--set lambda=3") && r.stderr.contains("eval has no setting 'lambda'"),
        "{}",
        r.stderr
    );
    let mut a = eval.to_vec();
    a.extend(["--set", "quiet"]);
    let r = mnemo_env(p, &a, &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("KEY=VALUE"), "{}", r.stderr);
    // A variable for another subcommand is fine as long as it names a real setting.
    let r = mnemo_env(p, &eval, &[("MNEMO_TRAIN_EWC_LAMBDA", "3")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn wrong_types_name_the_key_and_where() {
    let d = workdir();
    let p = d.path();
    let model = fixture("mlp.safetensors");
    let args = |cfg: &str| {
        vec![
            "train-ewc".to_string(),
            "--config".into(),
            cfg.to_string(),
            model.clone(),
            "--arch".into(),
            "mlp:20-16-16-5".into(),
            "--data".into(),
            fixture("mh_b_data.safetensors"),
            "-o".into(),
            "out.safetensors".into(),
        ]
    };
    for (name, text, want) in [
        (
            "str.toml",
            "[train-ewc]\nlambda = \"abc\"\n",
            vec!["[train-ewc] lambda", "invalid value 'abc'"],
        ),
        (
            "bool.toml",
            "[train-ewc]\nlambda = true\n",
            vec!["[train-ewc] lambda", "found a boolean"],
        ),
        (
            "switch.toml",
            "[train-ewc]\nnesterov = 1\n",
            vec!["[train-ewc] nesterov", "expected true or false"],
        ),
        (
            "array.toml",
            "[train-ewc]\nepochs = [1, 2]\n",
            vec!["[train-ewc] epochs", "found an array"],
        ),
        (
            "float.toml",
            "[train-ewc]\nepochs = 1.5\n",
            vec!["[train-ewc] epochs", "invalid value '1.5'"],
        ),
        (
            "range.toml",
            "[train-ewc]\nbatch-size = 0\n",
            vec!["[train-ewc] batch-size", "invalid value '0'"],
        ),
        (
            "enum.toml",
            "[train-ewc]\noptimizer = \"rmsprop\"\n",
            vec!["[train-ewc] optimizer", "possible values"],
        ),
        (
            "elem.toml",
            "[train-ewc]\npenalty = [1, true]\n",
            vec!["[train-ewc] penalty[1]", "found a boolean"],
        ),
        (
            "global.toml",
            "[global]\nquiet = \"yes\"\n",
            vec!["[global] quiet", "expected true or false"],
        ),
    ] {
        let cfg = write(p, name, text);
        let a = args(&cfg);
        let r = mnemo_env(p, &a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
        assert_eq!(r.code, 2, "{name}: {}", r.stderr);
        assert!(r.stderr.contains(&cfg), "{name}: {}", r.stderr);
        for w in want {
            assert!(r.stderr.contains(w), "{name}: no '{w}' in {}", r.stderr);
        }
        assert!(!p.join("out.safetensors").exists());
    }
    let cfg = write(p, "ok.toml", "[train-ewc]\nepochs = 1\n");
    let a = args(&cfg);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    for (var, value, want) in [
        (
            "MNEMO_TRAIN_EWC_NESTEROV",
            "yes",
            "expected true, false, 1 or 0",
        ),
        ("MNEMO_TRAIN_EWC_EPOCHS", "many", "invalid value 'many'"),
        ("MNEMO_GLOBAL_QUIET", "2", "expected true, false, 1 or 0"),
    ] {
        let r = mnemo_env(p, &a, &[(var, value)]);
        assert_eq!(r.code, 2, "{var}");
        assert!(
            r.stderr.contains(var) && r.stderr.contains(want),
            "{var}: {}",
            r.stderr
        );
    }
    let mut b = a.clone();
    b.extend(["--set", "lr=fast"]);
    let r = mnemo_env(p, &b, &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--set lr=fast") && r.stderr.contains("invalid value 'fast'"),
        "{}",
        r.stderr
    );
    // A combination clap refuses is reported with a note naming the layered settings.
    let cfg = write(p, "requires.toml", "[train-ewc]\npatience = 2\n");
    let a = args(&cfg);
    let r = mnemo_env(p, &a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--val") && r.stderr.contains(&format!("patience (file:{cfg})")),
        "{}",
        r.stderr
    );
}
