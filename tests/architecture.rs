//! The library's module graph, read from the source: which top-level module refers to which
//! (`crate::NAME` anywhere in its files, comments left out, tests included). ARCHITECTURE.md
//! promises the graph has no cycle and that the architecture language and the model know
//! nothing of what is built on them; this test holds the tree to it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `crate::NAME` of `text`, line comments removed.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

/// Top-level library module → the top-level modules it refers to.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let top = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(&src).unwrap();
        let first = rel.components().next()?.as_os_str().to_str()?.to_string();
        let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        // The binary (main.rs, cmd/) sits on top of everything.
        (!matches!(name.as_str(), "lib" | "main" | "cmd")).then_some(name)
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|p| top(p)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for p in &files {
        let Some(m) = top(p) else { continue };
        let refs = crate_refs(&std::fs::read_to_string(p).unwrap());
        let e = g.entry(m.clone()).or_default();
        e.extend(refs.into_iter().filter(|r| *r != m && modules.contains(r)));
    }
    g
}

fn reaches(g: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(x) = stack.pop() {
        if x == to {
            return true;
        }
        if seen.insert(x.clone()) {
            stack.extend(g.get(&x).into_iter().flatten().cloned());
        }
    }
    false
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph();
    let mut cycles = Vec::new();
    for (a, deps) in &g {
        for b in deps {
            if reaches(&g, b, a) {
                cycles.push(format!("{a} -> {b} -> ... -> {a}"));
            }
        }
    }
    assert!(cycles.is_empty(), "cycles: {cycles:#?}\ngraph: {g:#?}");
}

#[test]
fn the_lower_layers_know_nothing_of_what_is_built_on_them() {
    let g = graph();
    for (low, high) in [
        ("arch", "model"),
        ("arch", "lora"),
        ("arch", "train"),
        ("model", "lora"),
        ("model", "train"),
        ("model", "eval"),
        ("eval", "train"),
        ("loss", "train"),
    ] {
        assert!(
            !reaches(&g, low, high),
            "{low} depends on {high}: {:?}",
            g.get(low)
        );
    }
}

#[test]
fn the_graph_reader_sees_references() {
    // The test above would pass vacuously if nothing were read.
    let g = graph();
    assert!(g["train"].contains("model"), "{g:#?}");
    assert!(g["lora"].contains("model"), "{g:#?}");
    assert!(crate_refs("use crate::a::b; // crate::c").contains("a"));
    assert!(!crate_refs("// crate::c").contains("c"));
}

/// Lines of `text` (its unit tests left out) with a `--flag` inside a string literal.
fn flag_strings(text: &str) -> Vec<String> {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .filter(|l| {
            l.match_indices("--").any(|(i, _)| {
                l[i + 2..].starts_with(|c: char| c.is_ascii_lowercase())
                    && l[..i].matches('"').count() % 2 == 1
            })
        })
        .map(|l| l.trim().to_string())
        .collect()
}

/// Library errors describe the problem; the CLI names the flag (as context, or
/// `main::flag_hint`): no string literal of the library outside its unit tests holds a
/// `--flag`.
#[test]
fn library_errors_name_no_cli_flags() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if rel.starts_with("src/cmd/") || rel == "src/main.rs" {
            continue;
        }
        let found = flag_strings(&std::fs::read_to_string(&f).unwrap());
        if !found.is_empty() {
            wrong.push(format!("{rel}: {found:#?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        flag_strings("x(\"use --head\");\n// \"--no\"\nlet a = b--c;").len(),
        1
    );
}
