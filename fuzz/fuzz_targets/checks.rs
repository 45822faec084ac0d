//! The checks of every fuzz target, one function per target taking the fuzzer's bytes;
//! each panics on a finding. Shared by the libFuzzer targets (`fuzz_targets/<name>.rs`) and
//! by `tests/fuzz_regressions.rs`, which replays every saved input of
//! `fuzz/regressions/<name>/` in a normal `cargo test`. Uses only mnemo, std, serde_json and
//! tempfile (all dependencies of mnemo itself).
#![allow(dead_code)]

use mnemo::checkpoint::{decode, decode_i64, parse_index, validate, Checkpoint};
use mnemo::data::raw::{idx_dataset, npy_dataset, npz_dataset, parse_npy, RawDataset};
use mnemo::data::Dataset;
use mnemo::drift::record::{line_value, record_value};
use mnemo::model::ArchSpec;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Runs the check named `target` on `data` (for the regression replay).
pub fn run(target: &str, data: &[u8]) {
    match target {
        "safetensors" => safetensors(data),
        "hf_index" => hf_index(data),
        "arch_spec" => arch_spec(data),
        "jsonl_field" => jsonl_field(data),
        "import_idx" => import_idx(data),
        "import_npy" => import_npy(data),
        "import_npz" => import_npz(data),
        "continual_records" => continual_records(data),
        "adapter_config" => adapter_config(data),
        "pth" => pth(data),
        "loss_curves" => loss_curves(data),
        other => panic!("no fuzz target named '{other}'"),
    }
}

/// Every target's name.
pub const TARGETS: &[&str] = &[
    "safetensors",
    "hf_index",
    "arch_spec",
    "jsonl_field",
    "import_idx",
    "import_npy",
    "import_npz",
    "continual_records",
    "adapter_config",
    "pth",
    "loss_curves",
];

/// The safetensors reader: `checkpoint::validate` (our header checks, then the official
/// crate's) on arbitrary bytes. Whatever it accepts must be safe to use as
/// `SafetensorsFile` uses it: every tensor's byte range inside the data section, sizes
/// matching dtype × shape, and every tensor decodable.
pub fn safetensors(data: &[u8]) {
    let Ok(header) = validate(data) else {
        return;
    };
    let start = 8 + header.header_len;
    let mut pos = 0usize;
    for t in &header.tensors {
        // Contiguous, in offset order, inside the file.
        assert_eq!(
            t.begin, pos,
            "tensor '{}' is not where the previous ended",
            t.name
        );
        assert!(t.end >= t.begin && start + t.end <= data.len());
        assert_eq!(
            t.nbytes(),
            t.numel() * t.dtype.size(),
            "tensor '{}'",
            t.name
        );
        let bytes = &data[start + t.begin..start + t.end];
        assert_eq!(decode(t.dtype, bytes).len(), t.numel());
        if let Some(v) = decode_i64(t.dtype, bytes) {
            assert_eq!(v.len(), t.numel());
        }
        pos = t.end;
    }
    assert_eq!(start + pos, data.len(), "trailing bytes accepted");
}

fn shard(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend(header.as_bytes());
    v.extend(data);
    v
}

/// The folder the checks write in, made once per process: `$MNEMO_FUZZ_SCRATCH` when set
/// (the regression test points it at a folder it removes), else a new temporary folder
/// (a fuzzing run keeps it: the fuzzer may be killed at any moment).
fn scratch_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| match std::env::var_os("MNEMO_FUZZ_SCRATCH") {
        Some(d) => PathBuf::from(d),
        None => tempfile::Builder::new()
            .prefix("mnemo-fuzz-")
            .tempdir()
            .expect("temp dir")
            .keep(),
    })
}

/// The folder with the two shards, made once per process.
fn folder() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch_dir().join("index");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.safetensors"),
            shard(
                r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"F16","shape":[2],"data_offsets":[16,20]}}"#,
                &[0u8; 20],
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("b.safetensors"),
            shard(
                r#"{"v":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#,
                &[7u8; 8],
            ),
        )
        .unwrap();
        dir
    })
}

/// The HF sharded-checkpoint index reader: `checkpoint::parse_index` on arbitrary text
/// and, when it accepts, `Checkpoint::open` of that index in a folder holding two real
/// shards (`a.safetensors`: tensors `w`, `b`; `b.safetensors`: tensor `v`). Whatever opens
/// must give every tensor's bytes and values without a panic, and shard paths must stay
/// inside the folder.
pub fn hf_index(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(index) = parse_index(text) else {
        return;
    };
    for (_, shard) in &index.weight_map {
        let p = std::path::Path::new(shard);
        assert!(
            !shard.is_empty() && p.is_relative(),
            "shard path '{shard}' accepted"
        );
        assert!(
            p.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "shard path '{shard}' accepted"
        );
    }
    let dir = folder();
    let path = dir.join("model.safetensors.index.json");
    std::fs::write(&path, data).unwrap();
    let Ok(ckpt) = Checkpoint::open(&path) else {
        return;
    };
    let names: Vec<String> = ckpt.names().map(str::to_string).collect();
    for name in &names {
        let e = ckpt.entry(name).unwrap();
        assert_eq!(ckpt.bytes(name).unwrap().len(), e.nbytes());
        assert_eq!(ckpt.to_f32(name).unwrap().len(), e.numel());
        assert!(ckpt.file_of(name).unwrap().path.starts_with(dir));
    }
    let _ = ckpt.data_bytes();
    let _ = ckpt.metadata();
}

/// The arch-spec parser: `ArchSpec::parse` on `mlp:` shorthands and inline JSON (never a
/// file name: other text goes to `ArchSpec::from_json`). Whatever parses must give its
/// parameter manifest and count without a panic or overflow, and survive the round trip
/// through the canonical JSON stored in `mnemo.arch`.
pub fn arch_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let t = text.trim();
    let parsed = if t.starts_with("mlp:") || t.starts_with('[') || t.starts_with('{') {
        ArchSpec::parse(text)
    } else {
        ArchSpec::from_json(text, Some("fuzz"))
    };
    let Ok(spec) = parsed else {
        return;
    };
    let params = spec.params();
    let _ = spec.num_parameters();
    let _ = spec.head_names();
    let json = spec.to_json();
    let again = ArchSpec::parse(&json).expect("the canonical JSON parses");
    assert_eq!(again, spec, "round trip through {json}");
    assert_eq!(again.params(), params);
}

/// `mnemo drift`'s JSON Lines field extraction. Input: a first line that is the field's
/// dotted path (first byte odd: a binary detector), then the record. The fast extractor
/// over raw bytes (`line_value`, used by --events-only and -q) and the full parse
/// (`record_value`, used when records are written back) must agree: both find the same
/// number, or both refuse the record.
pub fn jsonl_field(data: &[u8]) {
    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let Ok(field) = std::str::from_utf8(&data[..nl]) else {
        return;
    };
    let binary = field.len() % 2 == 1;
    // As `for_each_record` hands a line over: trimmed, never empty, without its newline.
    let line = data[nl + 1..]
        .split(|&b| b == b'\n')
        .next()
        .unwrap()
        .trim_ascii();
    if line.is_empty() {
        return;
    }
    let keys: Vec<&str> = field.split('.').collect();
    let fast = line_value(line, &keys, field, binary);
    let (_, full) = record_value(line, field, binary);
    match (&fast, &full) {
        (Ok(a), Ok(b)) => assert_eq!(a.to_bits(), b.to_bits(), "values differ"),
        (Err(_), Err(_)) => {}
        _ => panic!("fast {fast:?} but full {full:?} for field {field:?}"),
    }
}

/// `mnemo data import idx`: the IDX reader (gzip detected by its magic) on two arbitrary
/// files. Input: flags byte (bit 0: --flatten), a 2-byte little-endian length L, then the
/// images file (L bytes) and the labels file (the rest).
pub fn import_idx(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let flatten = data[0] & 1 == 1;
    let l = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
    let (images, labels) = data[3..].split_at(l);
    if let Ok(d) = idx_dataset(
        Path::new("images.idx"),
        images.to_vec(),
        Path::new("labels.idx"),
        labels.to_vec(),
        flatten,
    ) {
        check_imported(&d);
    }
}

/// `mnemo data import npy`: the .npy parser on two arbitrary files (X and Y). Input: a
/// 2-byte little-endian length L, then X (L bytes) and Y (the rest).
pub fn import_npy(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    // The parser alone on the whole input: whatever it accepts is consistent.
    if let Ok(a) = parse_npy(Path::new("a.npy"), data) {
        let n: usize = a.shape.iter().product();
        assert_eq!(a.data.len(), n * a.dtype.size());
    }
    let l = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (x, y) = data[2..].split_at(l);
    if let Ok(d) = npy_dataset(Path::new("x.npy"), x, Path::new("y.npy"), y) {
        check_imported(&d);
    }
}

/// `mnemo data import npz`: the .npz (zip of .npy members, stored or deflated) reader on an
/// arbitrary archive, arrays chosen by default (x and y, or the only two).
pub fn import_npz(data: &[u8]) {
    if let Ok(d) = npz_dataset(Path::new("a.npz"), Cursor::new(data), None, None) {
        check_imported(&d);
    }
}

/// The file each accepted import is written to (and read back from).
fn scratch() -> PathBuf {
    scratch_dir().join("imported.safetensors")
}

/// The dataset is consistent, and what `data import` writes of it is a dataset every other
/// command opens (`Dataset::open`), holding the same examples.
pub fn check_imported(d: &RawDataset) {
    let n = d.len();
    assert!(n > 0, "an empty dataset was imported");
    assert_eq!(
        d.input.len(),
        n * d.row_bytes(),
        "input bytes for {n} examples"
    );
    assert!(
        d.target.iter().all(|&t| t >= 0),
        "a negative label was imported"
    );
    let path = &scratch();
    d.write(path, &BTreeMap::new())
        .expect("writing the dataset");
    let back = Dataset::open(path)
        .unwrap_or_else(|e| panic!("the imported dataset cannot be opened: {e}"));
    assert_eq!(back.len(), n);
    assert_eq!(back.example_shape, d.example_shape);
    assert_eq!(back.targets, d.target);
    let raw = RawDataset::open(path).expect("reopening as bytes");
    assert_eq!(raw.input, d.input);
}

/// The JSON Lines reader of `check` and `report` (`metrics::continual::parse_records`) and
/// the matrices built from what it accepts. Input: a first line that is the --metric list,
/// then the records. Every accepted record's stage and task are within `MAX_TASKS` (so a
/// matrix is small whatever the input claims), and building, averaging and scoring the
/// matrices never panics.
pub fn continual_records(data: &[u8]) {
    use mnemo::metrics::continual::{matrices, mean_matrix, parse_records, MAX_TASKS};
    let text = String::from_utf8_lossy(data);
    let (metric, body) = text.split_once('\n').unwrap_or(("accuracy", &text));
    let metric = if metric.trim().is_empty() {
        "accuracy"
    } else {
        metric
    };
    let Ok(records) = parse_records(body, Path::new("fuzz.jsonl"), metric) else {
        return;
    };
    for r in &records {
        assert!(r.stage as u64 <= MAX_TASKS, "stage {} accepted", r.stage);
        assert!(
            r.task >= 1 && r.task as u64 <= MAX_TASKS,
            "task {} accepted",
            r.task
        );
    }
    for (_, reps) in matrices(&records) {
        let ms: Vec<_> = reps.iter().map(|(_, m)| m).collect();
        for m in &ms {
            let _ = m.metrics();
        }
        let mean = mean_matrix(&ms);
        let _ = mean.metrics();
        let _ = mean.final_stage();
    }
}

/// PEFT's `adapter_config.json` reader (`LoraConfig::from_peft_json`, used by `lora merge`
/// and `lora-gate --adapter`). Whatever it accepts has a positive rank, a finite α, a
/// dropout in [0, 1) and targets PEFT's matching rule can use; writing it back as PEFT's
/// JSON and reading that again gives the same configuration.
pub fn adapter_config(data: &[u8]) {
    use mnemo::lora::{peft_check, LoraConfig};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("adapter_config.json");
    let Ok(c) = LoraConfig::from_peft_json(path, text) else {
        return;
    };
    assert!(c.rank > 0);
    assert!(c.alpha.is_finite(), "alpha {}", c.alpha);
    assert!((0.0..1.0).contains(&c.dropout), "dropout {}", c.dropout);
    let v: serde_json::Value = serde_json::from_str(text).expect("accepted, so JSON");
    let t = peft_check::targets(path, &v).expect("accepted, so its targets are readable");
    for m in &c.targets {
        if let peft_check::Targets {
            include: peft_check::Rule::Names(_),
            exclude: None,
        } = t
        {
            assert!(
                peft_check::selects(&t, m),
                "'{m}' not selected by its own list"
            );
        }
    }
    let back = c.to_peft_json().to_string();
    let again = LoraConfig::from_peft_json(path, &back).expect("our own JSON reads back");
    assert_eq!(again, c);
}

/// `mnemo convert`'s reader of `torch.save` files (zip and legacy; the pickle allow-list)
/// on arbitrary bytes. Whatever opens must give every tensor without a panic: each one's
/// bytes = dtype × shape, and all of them within the reader's budget (8× the file + 64
/// MiB, so a stride-0 view cannot blow up memory).
pub fn pth(data: &[u8]) {
    let path = scratch_dir().join("fuzz.pth");
    std::fs::write(&path, data).expect("scratch file");
    let Ok(file) = mnemo::checkpoint::pth::PthFile::open(&path) else {
        return;
    };
    let names: Vec<String> = file.names().map(str::to_string).collect();
    assert!(!names.is_empty(), "a file with no tensors opened");
    let Ok(tensors) = file.tensors(|n| Some(n.to_string())) else {
        return;
    };
    assert_eq!(tensors.len(), names.len());
    let mut total = 0usize;
    for t in &tensors {
        let numel: usize = t.shape.iter().product();
        assert_eq!(t.data.len(), numel * t.dtype.size(), "tensor '{}'", t.name);
        total += t.data.len();
    }
    assert!(
        total <= data.len() * 8 + (64 << 20),
        "{total} bytes from a {}-byte file",
        data.len()
    );
}

/// `mnemo report`'s reader of training logs as loss curves (`report::stage_curves`), then
/// the figure drawn from what it accepts (SVG, in the scratch folder): no panic and no
/// endless tick search, whatever the numbers (±1e308, huge epochs, a single point).
pub fn loss_curves(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(stage) = mnemo::report::stage_curves(Path::new("log.jsonl"), text, 1) else {
        return;
    };
    for c in &stage.panel.curves {
        for &(x, y) in &c.points {
            assert!(x.is_finite() && y.is_finite(), "({x}, {y}) read as a point");
        }
    }
    let out = scratch_dir().join("curves.svg");
    let _ = mnemo::report::plot_panels(&out, "fuzz", &[stage.panel]);
}
