//! `mnemo convert`: torch.save files (zip and legacy) to safetensors, checked against what
//! torch.load gives (fixtures/pth/gen.py), hostile pickles refused with nothing written, and
//! the real ImageNet EfficientNet-Lite0 file tensor for tensor.

mod common;
use common::*;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

fn tensors(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                format!("{:?}", t.dtype()),
                t.shape().to_vec(),
                t.data().to_vec(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn zip_and_legacy_files_convert_to_what_torch_load_gives() {
    let dir = workdir();
    let expected = tensors(&fixtures().join("pth/expected.safetensors"));
    for f in ["state_zip.pth", "state_legacy.pth"] {
        let r = ok(mnemo_in(
            dir.path(),
            &["convert", &fixture(&format!("pth/{f}")), "-o", "out.st"],
        ));
        let line = r.last_json();
        assert_eq!(line["tensors"], 19, "{f}");
        let got = tensors(&dir.path().join("out.st"));
        assert_eq!(
            got, expected,
            "{f}: names, dtypes, shapes and bytes as torch.load"
        );
    }
}

#[test]
fn a_training_checkpoint_converts_its_state_dict_by_key() {
    let dir = workdir();
    let ckpt = fixture("pth/ckpt.pth");
    ok(mnemo_in(
        dir.path(),
        &[
            "convert",
            &ckpt,
            "--key",
            "state_dict",
            "--strip-prefix",
            "module.",
            "-o",
            "m.st",
        ],
    ));
    assert_eq!(
        tensors(&dir.path().join("m.st")),
        tensors(&fixtures().join("pth/expected_ckpt.safetensors"))
    );
    // Without --key, the optimizer's state comes along under its own path.
    ok(mnemo_in(dir.path(), &["convert", &ckpt, "-o", "all.st"]));
    let names: Vec<String> = tensors(&dir.path().join("all.st"))
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert!(
        names.contains(&"state_dict.module.0.weight".to_string()),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("optimizer.state.")),
        "{names:?}"
    );
    let r = mnemo_in(
        dir.path(),
        &["convert", &ckpt, "--key", "model", "-o", "x.st"],
    );
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("state_dict") && r.stderr.contains("optimizer"),
        "{}",
        r.stderr
    );
}

#[test]
fn hostile_files_are_refused_by_reason_and_nothing_is_written() {
    let dir = workdir();
    std::fs::write(dir.path().join("keep.st"), b"precious").unwrap();
    std::fs::write(dir.path().join("not.pth"), b"hello world").unwrap();
    for (f, want) in [
        ("pth/code.pth", "'posix.system'"),
        ("pth/module.pth", "'torch.nn.modules.linear.Linear'"),
        ("pth/oob.pth", "reaches element 39 of a storage of 4"),
        ("pth/short.pth", "has 8 bytes"),
        ("pth/truncated.pth", "truncated pickle"),
    ] {
        let r = mnemo_in(dir.path(), &["convert", &fixture(f), "-o", "keep.st"]);
        assert_eq!(r.code, 2, "{f}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{f}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{f}: {}", r.stderr);
        assert_eq!(
            std::fs::read(dir.path().join("keep.st")).unwrap(),
            b"precious"
        );
    }
    let r = mnemo_in(dir.path(), &["convert", "not.pth", "-o", "keep.st"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("neither a torch zip file nor a legacy torch pickle"),
        "{}",
        r.stderr
    );
    // Every truncation of both formats is an error, never a crash.
    for f in ["state_zip.pth", "state_legacy.pth"] {
        let bytes = std::fs::read(fixtures().join("pth").join(f)).unwrap();
        for cut in (0..bytes.len()).step_by(97) {
            std::fs::write(dir.path().join("cut.pth"), &bytes[..cut]).unwrap();
            let r = mnemo_in(dir.path(), &["convert", "cut.pth", "-o", "keep.st"]);
            assert_eq!(r.code, 2, "{f} cut at {cut}: {}", r.stderr);
        }
    }
    let r = mnemo_in(
        dir.path(),
        &[
            "convert",
            &fixture("pth/state_zip.pth"),
            "-o",
            &fixture("pth/state_zip.pth"),
        ],
    );
    assert_eq!(r.code, 2, "the input as the output: {}", r.stderr);
}

/// The file scripts/fetch_lite0.sh fetches (`make test` runs it first); skipped without it
/// unless CI=true.
fn lite0_pth() -> Option<PathBuf> {
    let p = std::env::var_os("MNEMO_LITE0_PTH")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| {
                PathBuf::from(h).join(".cache/mnemo/pretrained/efficientnet-lite0-57934424.pth")
            })
        })?;
    if p.is_file() {
        Some(p)
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{} is missing: run scripts/fetch_lite0.sh", p.display())
    } else {
        eprintln!(
            "skipped: {} is missing (scripts/fetch_lite0.sh)",
            p.display()
        );
        None
    }
}

#[test]
fn the_real_imagenet_lite0_file_converts_as_torch_loads_it_and_loads_into_the_zoo_model() {
    let Some(pth) = lite0_pth() else { return };
    let dir = workdir();
    let r = ok(mnemo_in(
        dir.path(),
        &["convert", pth.to_str().unwrap(), "-o", "lite0.st"],
    ));
    assert_eq!(r.last_json()["format"], "torch legacy");
    let bytes = std::fs::read(dir.path().join("lite0.st")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let reference: Vec<(String, String, Vec<usize>, String)> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("pth/lite0_blake3.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(st.len(), reference.len());
    for (name, dtype, shape, hash) in &reference {
        let t = st.tensor(name).unwrap_or_else(|_| panic!("{name} missing"));
        let ours = match t.dtype() {
            safetensors::Dtype::F32 => "float32",
            safetensors::Dtype::I64 => "int64",
            d => panic!("{name}: {d:?}"),
        };
        assert_eq!(
            (ours, t.shape()),
            (dtype.as_str(), shape.as_slice()),
            "{name}"
        );
        assert_eq!(&blake3::hash(t.data()).to_hex().to_string(), hash, "{name}");
    }
    // Every tensor but the 1000-class `_fc` lands in the multi-task model's trunk.
    let r = ok(mnemo_in(
        dir.path(),
        &[
            "init",
            "--arch",
            "effnet_multitask:trunk=lite0",
            "--from",
            "lite0.st",
            "--skip-mismatched",
            "-o",
            "mt.st",
        ],
    ));
    assert_eq!(r.last_json()["loaded"], 294, "{}", r.stdout);
}
