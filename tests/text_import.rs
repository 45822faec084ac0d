//! `mnemo data import text` against the Python `tokenizers` and run_clm.py's `group_texts`
//! (fixtures/text/gen.py), and its refusals.

mod common;
use common::*;
use mnemo::checkpoint::{Checkpoint, Dtype};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn text_fixture(rel: &str) -> String {
    fixture(&format!("text/{rel}"))
}

fn cases() -> Vec<serde_json::Value> {
    let s = std::fs::read_to_string(text_fixture("cases.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn case(name: &str) -> serde_json::Value {
    cases()
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// The command line of a case: its inputs, tokenizer and flags, then `-o out`.
fn case_args(c: &serde_json::Value, out: &str) -> Vec<String> {
    let mut a = vec!["data".to_string(), "import".into(), "text".into()];
    for i in strings(&c["inputs"]) {
        a.push(text_fixture(&format!("corpus/{i}")));
    }
    a.push("--tokenizer".into());
    a.push(text_fixture(&format!(
        "tokenizers/{}.json",
        c["tokenizer"].as_str().unwrap()
    )));
    a.extend(strings(&c["flags"]));
    a.push("-o".into());
    a.push(out.into());
    a
}

fn run(dir: &Path, args: &[String]) -> Run {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    mnemo_in(dir, &a)
}

/// The three tensors equal the reference's exactly (names, dtypes, shapes, bytes).
fn assert_same_tensors(got: &Path, want: &Path, what: &str) {
    let g = Checkpoint::open(got).unwrap();
    let w = Checkpoint::open(want).unwrap();
    let mut names: Vec<&str> = g.names().collect();
    names.sort();
    assert_eq!(names, vec!["attention_mask", "input", "target"], "{what}");
    for (name, dtype) in [
        ("input", Dtype::I64),
        ("target", Dtype::I64),
        ("attention_mask", Dtype::U8),
    ] {
        let (ge, we) = (g.entry(name).unwrap(), w.entry(name).unwrap());
        assert_eq!(ge.dtype, dtype, "{what}: {name}");
        assert_eq!(ge.shape, we.shape, "{what}: {name}");
        let (gb, wb) = (g.bytes(name).unwrap(), w.bytes(name).unwrap());
        if gb != wb {
            let size = dtype.size();
            let i = (0..gb.len() / size)
                .find(|&i| gb[i * size..(i + 1) * size] != wb[i * size..(i + 1) * size])
                .unwrap();
            let (r, t) = (i / we.shape[1], i % we.shape[1]);
            panic!(
                "{what}: {name} differs first at row {r}, position {t}: mnemo {:?}, python {:?}",
                &gb[i * size..(i + 1) * size],
                &wb[i * size..(i + 1) * size]
            );
        }
    }
}

#[test]
fn every_case_matches_the_python_reference() {
    let cs = cases();
    assert!(cs.len() >= 10);
    for c in &cs {
        let name = c["name"].as_str().unwrap();
        let dir = workdir();
        let r = ok(run(dir.path(), &case_args(c, "out.safetensors")));
        let out = dir.path().join("out.safetensors");
        assert_same_tensors(
            &out,
            Path::new(&text_fixture(&format!("expected/{name}.safetensors"))),
            name,
        );
        // The dataset's metadata: what gen.py computed, plus the tokenizer's hash.
        let ck = Checkpoint::open(&out).unwrap();
        let meta = ck.metadata();
        let tok = text_fixture(&format!(
            "tokenizers/{}.json",
            c["tokenizer"].as_str().unwrap()
        ));
        let want_hash = blake3::hash(&std::fs::read(&tok).unwrap())
            .to_hex()
            .to_string();
        assert_eq!(meta["mnemo.tokens.tokenizer_blake3"], want_hash, "{name}");
        let ours: BTreeMap<&str, &str> = meta
            .iter()
            .filter(|(k, _)| {
                k.starts_with("mnemo.tokens.")
                    && !matches!(
                        k.as_str(),
                        "mnemo.tokens.tokenizer_blake3" | "mnemo.tokens.special_tokens"
                    )
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let want: BTreeMap<&str, &str> = c["metadata"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        assert_eq!(ours, want, "{name}");
        assert_eq!(meta["format"], "pt");
        assert!(meta["mnemo.command"].starts_with("mnemo data import text "));
        let inputs: serde_json::Value = serde_json::from_str(&meta["mnemo.inputs"]).unwrap();
        assert_eq!(inputs[&tok], format!("blake3:{want_hash}"), "{name}");
        // The JSON line and the summary.
        let line = r.last_json();
        assert_eq!(line["examples"], c["rows"], "{name}");
        assert_eq!(line["seq_len"].to_string(), want["mnemo.tokens.seq_len"]);
        assert!(
            r.stderr
                .contains(&format!("{} document(s)", want["mnemo.tokens.documents"]))
                && r.stderr
                    .contains(&format!("{} tokens dropped", want["mnemo.tokens.dropped"])),
            "{name}: {}",
            r.stderr
        );
    }
}

#[test]
fn stdin_reads_as_the_file_does() {
    let c = case("gpt2_unicode");
    let dir = workdir();
    let mut args = case_args(&c, "out.safetensors");
    let file = text_fixture("corpus/unicode.txt");
    let pos = args.iter().position(|a| *a == file).unwrap();
    args[pos] = "-".into();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let bytes = std::fs::read(&file).unwrap();
    let r = mnemo_stdin(dir.path(), &a, &bytes);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = dir.path().join("out.safetensors");
    assert_same_tensors(
        &out,
        Path::new(&text_fixture("expected/gpt2_unicode.safetensors")),
        "stdin",
    );
    let meta = Checkpoint::open(&out).unwrap().metadata().clone();
    let inputs: serde_json::Value = serde_json::from_str(&meta["mnemo.inputs"]).unwrap();
    assert_eq!(
        inputs["<stdin>"],
        mnemo::checkpoint::file_hash(Path::new(&file)).unwrap()
    );
    // Twice is refused.
    let mut twice = vec!["data", "import", "text", "-", "-"];
    let tok = text_fixture("tokenizers/gpt2.json");
    twice.extend(["--tokenizer", &tok, "--seq-len", "4", "-o", "x.safetensors"]);
    let r = mnemo_stdin(dir.path(), &twice, b"hello");
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("stdin"), "{}", r.stderr);
}

#[test]
fn same_inputs_give_the_same_bytes_whatever_the_threads() {
    let c = case("llama3_pack");
    let mut files = vec![];
    // The same command line (it is in the metadata), in three folders.
    let args = case_args(&c, "out.safetensors");
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    for threads in [Some("1"), Some("3"), None] {
        let dir = workdir();
        let r = mnemo_env(dir.path(), &a, &[("RAYON_NUM_THREADS", threads)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        files.push(std::fs::read(dir.path().join("out.safetensors")).unwrap());
    }
    assert!(files.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn quiet_and_warnings() {
    let dir = workdir();
    // WordPiece has none of the default EOS names: said once, and not under -q.
    let c = case("wordpiece_pack");
    let r = ok(run(dir.path(), &case_args(&c, "a.safetensors")));
    assert!(r.stderr.contains("none of the EOS tokens"), "{}", r.stderr);
    let mut args = case_args(&c, "b.safetensors");
    args.push("-q".into());
    let r = ok(run(dir.path(), &args));
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert_eq!(r.json_lines().len(), 1);
}

/// Files under `dir` with their sizes and (for small ones) contents.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = std::fs::symlink_metadata(&p).unwrap();
        let small = m.is_file() && m.len() < 1 << 20;
        out.insert(
            p.file_name().unwrap().into(),
            (m.len(), small.then(|| std::fs::read(&p).unwrap())),
        );
    }
    out
}

/// A refusal: exit 2, one error line naming every string of `named`, no panic, the folder
/// as it was (nothing written, no temporary file, inputs unchanged).
fn refused(dir: &Path, args: &[&str], named: &[&str]) {
    let before = listing(dir);
    let r = mnemo_in(dir, args);
    let what = format!("mnemo {}", args.join(" "));
    assert_eq!(r.code, 2, "{what}: exit {}: {}", r.code, r.stderr);
    assert!(!r.stderr.contains("panicked"), "{what}: {}", r.stderr);
    assert!(r.stdout.is_empty(), "{what}: {}", r.stdout);
    for n in named {
        assert!(
            r.stderr.contains(n),
            "{what}: stderr lacks '{n}': {}",
            r.stderr
        );
    }
    assert_eq!(listing(dir), before, "{what}: the folder changed");
}

#[test]
fn hostile_inputs_are_refused_naming_the_thing() {
    let dir = workdir();
    let d = dir.path();
    let gpt2 = text_fixture("tokenizers/gpt2.json");
    let alice = text_fixture("corpus/alice.txt");
    let w = |name: &str, bytes: &[u8]| std::fs::write(d.join(name), bytes).unwrap();
    w("out.safetensors", b"an earlier output");
    w("garbage.json", b"{ this is not json");
    w(
        "notok.json",
        br#"{"version": "1.0", "model": {"type": "Nonsense"}}"#,
    );
    w("binary.json", b"\xff\xfe\x00\x01");
    w("bad.txt", b"fine text\nthen \xc3\x28 a broken sequence");
    w("empty.txt", b"");
    w("short.txt", b"Hi.");
    w("bad.jsonl", b"{\"text\": \"a\"}\n{\"text\": \"b\"\n");
    w("nofield.jsonl", b"{\"text\": \"a\"}\n\n{\"body\": \"b\"}\n");
    w("number.jsonl", b"{\"text\": 12}\n");
    w("blank.jsonl", b"{\"text\": \"\"}\n\n");
    std::fs::create_dir(d.join("folder")).unwrap();
    let base = |input: &str, tok: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["data", "import", "text", input, "--tokenizer", tok]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !extra.contains(&"--seq-len") {
            a.extend(["--seq-len".to_string(), "8".to_string()]);
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a.extend(["-o".to_string(), "out.safetensors".to_string()]);
        a
    };
    let check = |a: Vec<String>, named: &[&str]| {
        let v: Vec<&str> = a.iter().map(String::as_str).collect();
        refused(d, &v, named);
    };
    // The tokenizer: missing, not JSON, JSON of something else, not UTF-8, a folder.
    check(base(&alice, "missing.json", &[]), &["missing.json"]);
    check(
        base(&alice, "garbage.json", &[]),
        &["garbage.json", "tokenizers crate", "line 1"],
    );
    check(
        base(&alice, "notok.json", &[]),
        &["notok.json", "tokenizers crate"],
    );
    check(
        base(&alice, "binary.json", &[]),
        &["binary.json", "not UTF-8"],
    );
    check(
        base(&alice, "folder", &[]),
        &["folder", "not a regular file"],
    );
    // Tokens the flags name that the vocabulary lacks.
    check(
        base(&alice, &gpt2, &["--eos", "<eos>"]),
        &["--eos '<eos>'", "no such token", "<|endoftext|>"],
    );
    check(
        base(&alice, &gpt2, &["--pad", "[PAD]"]),
        &["--pad '[PAD]'", "gpt2.json"],
    );
    // Text: not UTF-8 (file and byte offset), a folder, a missing file.
    check(
        base("bad.txt", &gpt2, &[]),
        &["bad.txt", "byte offset 15", "line 2"],
    );
    check(
        base("folder", &gpt2, &[]),
        &["folder", "not a regular file"],
    );
    check(base("nothing.txt", &gpt2, &[]), &["nothing.txt"]);
    // JSON Lines: not JSON, no such field (file and line), not a string.
    check(
        base("bad.jsonl", &gpt2, &["--jsonl", "text"]),
        &["bad.jsonl:2", "not JSON"],
    );
    check(
        base("nofield.jsonl", &gpt2, &["--jsonl", "text"]),
        &["nofield.jsonl:3", "no field \"text\"", "body"],
    );
    check(
        base("number.jsonl", &gpt2, &["--jsonl", "text"]),
        &["number.jsonl:1", "is a number, not a string"],
    );
    // No documents; fewer tokens than one row.
    check(
        base("empty.txt", &gpt2, &[]),
        &["no documents", "empty.txt"],
    );
    check(
        base("blank.jsonl", &gpt2, &["--jsonl", "text"]),
        &["no documents", "under \"text\""],
    );
    check(
        base("short.txt", &gpt2, &["--seq-len", "64"]),
        &[
            "fewer than one row of --seq-len 64",
            "nothing was written",
            "--keep-remainder",
        ],
    );
    // Sizes: --seq-len 0 or beyond 2^20; flags that contradict each other.
    check(base(&alice, &gpt2, &["--seq-len", "0"]), &["--seq-len"]);
    check(
        base(&alice, &gpt2, &["--seq-len", "2000000"]),
        &["--seq-len", "1048576"],
    );
    check(base(&alice, &gpt2, &["--seq-len", "nan"]), &["--seq-len"]);
    check(
        base(&alice, &gpt2, &["--no-pack", "--keep-remainder"]),
        &["--keep-remainder"],
    );
    check(base(&alice, &gpt2, &["--no-eos", "--eos", "x"]), &["--eos"]);
    check(
        base(&alice, &gpt2, &["--jsonl", "text", "--sample-by", "line"]),
        &["--sample-by"],
    );
    // The output: an input, or in a missing folder (checked before any work).
    check(
        {
            let mut a = base("short.txt", &gpt2, &[]);
            let n = a.len();
            a[n - 1] = "short.txt".into();
            a
        },
        &["short.txt"],
    );
    check(
        {
            let mut a = base(&alice, &gpt2, &[]);
            let n = a.len();
            a[n - 1] = "no/such/dir/out.safetensors".into();
            a
        },
        &["does not exist"],
    );
}

#[test]
fn inputs_beyond_the_bounds_are_refused_before_reading() {
    let dir = workdir();
    let d = dir.path();
    let gpt2 = text_fixture("tokenizers/gpt2.json");
    // Sparse files: their size is checked, their bytes are never read.
    let big = std::fs::File::create(d.join("big.txt")).unwrap();
    big.set_len(mnemo::data::text::MAX_TEXT_BYTES + 1).unwrap();
    let bigtok = std::fs::File::create(d.join("big.json")).unwrap();
    bigtok.set_len((1 << 30) + 1).unwrap();
    refused(
        d,
        &[
            "data",
            "import",
            "text",
            "big.txt",
            "--tokenizer",
            &gpt2,
            "--seq-len",
            "8",
            "-o",
            "o.st",
        ],
        &["big.txt", "too large", "4294967296-byte limit"],
    );
    refused(
        d,
        &[
            "data",
            "import",
            "text",
            &text_fixture("corpus/short.txt"),
            "--tokenizer",
            "big.json",
            "--seq-len",
            "8",
            "-o",
            "o.st",
        ],
        &["big.json", "too large", "1073741824-byte limit"],
    );
}

#[test]
fn help_describes_the_format() {
    let h = ok(mnemo(&["data", "import", "text", "--help"])).stdout;
    for w in [
        "group_texts",
        "-100",
        "attention_mask",
        "--keep-remainder",
        "--no-pack",
        "--jsonl",
    ] {
        assert!(h.contains(w), "help lacks {w}: {h}");
    }
}
