//! `mnemo::merge` against mergekit 0.1.5 and torch references
//! (`fixtures/merge/`, written by `fixtures/merge/gen.py`), plus the
//! properties a reference cannot pin: DARE's mask statistics, determinism
//! across thread counts, memory that does not grow with the number of
//! models, and the errors.
//!
//! The library is called directly. Tests take a global lock because one of
//! them measures heap use with a counting allocator.

use half::{bf16, f16};
use mnemo::checkpoint::{write_checkpoint, Checkpoint, Dtype, OwnedTensor};
use mnemo::merge::{
    dare_keep_mask, merge_checkpoints, merge_tensor, DareRescale, Extra, MergeOptions, Method,
};
use mnemo::MnemoError;
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

// ---------------------------------------------------------------- heap accounting

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grow(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grow(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
            grow(new);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- helpers

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/merge")
}

fn open(name: &str) -> Checkpoint {
    Checkpoint::open(dir().join(name)).unwrap()
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap()
}

fn no_meta() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn merge(
    method: &Method,
    inputs: &[Checkpoint],
    base: Option<&Checkpoint>,
    fishers: &[Checkpoint],
    out: &Path,
) -> mnemo::Result<mnemo::merge::MergeReport> {
    merge_checkpoints(
        method,
        inputs,
        base,
        fishers,
        out,
        &no_meta(),
        &MergeOptions::default(),
    )
}

/// Allowed difference for a value of the given dtype: rtol 1e-5 for f32 (plus an
/// absolute floor of 1e-6 of the tensor's largest value, for cancellations), one
/// unit in the last place for f16/bf16 (the f32 results may straddle a rounding boundary).
fn tolerance(dtype: Dtype, want: f32, scale: f32) -> f32 {
    match dtype {
        Dtype::F16 => want.abs() * 2f32.powi(-10) + 1e-6 * scale,
        Dtype::BF16 => want.abs() * 2f32.powi(-7) + 1e-6 * scale,
        _ => want.abs() * 1e-5 + 1e-6 * scale,
    }
}

// ---------------------------------------------------------------- parity

#[test]
fn every_case_matches_its_reference() {
    let _g = lock();
    let cases = cases();
    assert_eq!(cases["mergekit"], "0.1.5");
    let tmp = tempfile::tempdir().unwrap();
    let list = cases["cases"].as_array().unwrap();
    assert!(list.len() >= 20);
    let mut summary = Vec::new();
    for case in list {
        let id = case["id"].as_str().unwrap();
        let method: Method = serde_json::from_value(case["method"].clone())
            .unwrap_or_else(|e| panic!("{id}: method does not parse: {e}"));
        let names = |k: &str| -> Vec<Checkpoint> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| open(v.as_str().unwrap()))
                .collect()
        };
        let inputs = names("inputs");
        let fishers = names("fishers");
        let base = case["base"].as_str().map(open);
        let out = tmp.path().join(format!("{id}.safetensors"));
        let report = merge(&method, &inputs, base.as_ref(), &fishers, &out)
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let got = Checkpoint::open(&out).unwrap();
        let want = open(case["expected"].as_str().unwrap());
        assert_eq!(
            got.names().collect::<Vec<_>>(),
            want.names().collect::<Vec<_>>(),
            "{id}"
        );
        assert_eq!(report.bytes, std::fs::metadata(&out).unwrap().len(), "{id}");
        let (mut worst, mut exact, mut total) = (0f64, 0usize, 0usize);
        for name in want.names() {
            let (g, w) = (got.entry(name).unwrap(), want.entry(name).unwrap());
            assert_eq!(g.dtype, w.dtype, "{id}: {name}: dtype");
            assert_eq!(g.shape, w.shape, "{id}: {name}: shape");
            assert_eq!(
                g.dtype,
                inputs[0].entry(name).unwrap().dtype,
                "{id}: {name}"
            );
            if !w.dtype.is_float() {
                assert_eq!(
                    got.bytes(name).unwrap(),
                    want.bytes(name).unwrap(),
                    "{id}: {name}"
                );
                assert_eq!(
                    got.bytes(name).unwrap(),
                    inputs[0].bytes(name).unwrap(),
                    "{id}: {name} is copied from the first input"
                );
                continue;
            }
            let (gv, wv) = (got.to_f32(name).unwrap(), want.to_f32(name).unwrap());
            let scale = wv.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (j, (&a, &b)) in gv.iter().zip(&wv).enumerate() {
                let diff = (a - b).abs();
                assert!(
                    diff <= tolerance(w.dtype, b, scale),
                    "{id}: {name}[{j}]: got {a}, {} says {b} (diff {diff})",
                    case["reference"]
                );
                worst = worst.max(diff as f64 / (b.abs() as f64).max(1e-3 * scale as f64));
                exact += usize::from(a.to_bits() == b.to_bits());
                total += 1;
            }
        }
        summary.push(format!(
            "{id}: {exact}/{total} bit-exact, worst rel {worst:.1e}"
        ));
    }
    println!("{}", summary.join("\n"));
}

#[test]
fn metadata_and_integer_tensors() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.safetensors");
    let m = Method::Linear {
        weights: vec![],
        normalize: true,
    };
    let mut meta = BTreeMap::new();
    meta.insert("mnemo.command".to_string(), "mnemo merge".to_string());
    let report = merge_checkpoints(
        &m,
        &[open("a.safetensors"), open("b.safetensors")],
        None,
        &[],
        &out,
        &meta,
        &MergeOptions::default(),
    )
    .unwrap();
    let c = Checkpoint::open(&out).unwrap();
    assert_eq!(c.metadata()["mnemo.arch"], "mlp:test");
    assert_eq!(c.metadata()["mnemo.command"], "mnemo merge");
    assert_eq!(c.metadata()["format"], "pt");
    let back: Method = serde_json::from_str(&c.metadata()["mnemo.merge"]).unwrap();
    assert_eq!(back, m);
    // The counter is the first input's (a: 100), not an average (100.5).
    assert_eq!(c.to_i64("1.num_batches_tracked").unwrap(), vec![100]);
    assert_eq!(report.copied, 1);
    assert_eq!(report.merged, 6);
    let copied: Vec<_> = report.tensors.iter().filter(|t| !t.merged).collect();
    assert_eq!(copied[0].name, "1.num_batches_tracked");
    // b first: no mnemo.arch to copy.
    merge(
        &m,
        &[open("b.safetensors"), open("a.safetensors")],
        None,
        &[],
        &out,
    )
    .unwrap();
    let c = Checkpoint::open(&out).unwrap();
    assert!(!c.metadata().contains_key("mnemo.arch"));
    assert_eq!(c.to_i64("1.num_batches_tracked").unwrap(), vec![101]);
}

// ---------------------------------------------------------------- DARE

fn dare(density: f64, seed: u64, ties: bool, rescale: DareRescale, weights: Vec<f64>) -> Method {
    Method::Dare {
        weights,
        density,
        lambda: 1.0,
        normalize: false,
        rescale,
        seed,
        ties,
    }
}

#[test]
fn dare_keeps_about_d_and_rescales_exactly() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let (a, base) = (open("a.safetensors"), open("base.safetensors"));
    for density in [0.3, 0.7] {
        let out = tmp.path().join(format!("dare{density}.safetensors"));
        let m = dare(density, 17, false, DareRescale::Paper, vec![]);
        let report = merge(&m, std::slice::from_ref(&a), Some(&base), &[], &out).unwrap();
        let got = Checkpoint::open(&out).unwrap();
        let (mut kept, mut total) = (0usize, 0usize);
        for name in a.names() {
            let e = a.entry(name).unwrap();
            if !e.dtype.is_float() {
                continue;
            }
            let (x, b, g) = (
                a.to_f32(name).unwrap(),
                base.to_f32(name).unwrap(),
                got.to_f32(name).unwrap(),
            );
            let mask = dare_keep_mask(17, name, 0, density, x.len());
            let stat = report.tensors.iter().find(|t| t.name == name).unwrap();
            let k = mask.iter().filter(|&&m| m).count();
            assert_eq!(stat.stats.kept, Some(k as f64 / x.len() as f64), "{name}");
            for j in 0..x.len() {
                let v = if mask[j] {
                    (b[j] as f64 + (x[j] - b[j]) as f64 * (1.0 / density)) as f32
                } else {
                    b[j]
                };
                let v = match e.dtype {
                    Dtype::F16 => f16::from_f32(v).to_f32(),
                    Dtype::BF16 => bf16::from_f32(v).to_f32(),
                    _ => v,
                };
                assert_eq!(g[j].to_bits(), v.to_bits(), "{name}[{j}] kept={}", mask[j]);
            }
            kept += k;
            total += x.len();
        }
        let frac = kept as f64 / total as f64;
        let sd = (density * (1.0 - density) / total as f64).sqrt();
        assert!(
            (frac - density).abs() < 5.0 * sd,
            "kept {frac}, d = {density}"
        );
        // Seeded: the same bytes again; another seed, other bytes.
        let again = tmp.path().join("again.safetensors");
        merge(&m, std::slice::from_ref(&a), Some(&base), &[], &again).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
        let other = dare(density, 18, false, DareRescale::Paper, vec![]);
        merge(&other, std::slice::from_ref(&a), Some(&base), &[], &again).unwrap();
        assert_ne!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    }
}

/// DARE = sparsify with our mask, then task arithmetic or TIES at density 1:
/// the combination step is the one checked against mergekit above.
#[test]
fn dare_combinations_match_a_reference_built_from_our_mask() {
    let _g = lock();
    let names = ["a.safetensors", "b.safetensors", "c.safetensors"];
    let inputs: Vec<Checkpoint> = names.iter().map(|n| open(n)).collect();
    let base = open("base.safetensors");
    let w = vec![1.0, 0.5, 0.3];
    for (density, rescale, ties) in [
        (0.3, DareRescale::Paper, true),
        (0.7, DareRescale::Paper, false),
        (0.3, DareRescale::L1, true),
        (0.7, DareRescale::L1, false),
        (0.5, DareRescale::None, true),
    ] {
        let m = dare(density, 5, ties, rescale, w.clone());
        for name in base
            .names()
            .filter(|n| base.entry(n).unwrap().dtype == Dtype::F32)
        {
            let b = base.to_f32(name).unwrap();
            let xs: Vec<Vec<f32>> = inputs.iter().map(|c| c.to_f32(name).unwrap()).collect();
            let refs: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
            let got = merge_tensor(&m, name, &refs, Some(&b), &Extra::default()).unwrap();
            // The sparsified, rescaled task vectors, as inputs at density 1.
            let thinned: Vec<Vec<f32>> = xs
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    let mask = dare_keep_mask(5, name, i, density, x.len());
                    let d: Vec<f64> = x.iter().zip(&b).map(|(x, b)| (x - b) as f64).collect();
                    let l1: f64 = d.iter().map(|v| v.abs()).sum();
                    let l1m: f64 = d
                        .iter()
                        .zip(&mask)
                        .filter(|(_, &m)| m)
                        .map(|(v, _)| v.abs())
                        .sum();
                    let s = match rescale {
                        DareRescale::Paper => 1.0 / density,
                        DareRescale::None => 1.0,
                        DareRescale::L1 if l1 < 1e-7 || l1m < 1e-7 => 1.0,
                        DareRescale::L1 => l1 / l1m,
                    };
                    d.iter()
                        .zip(&mask)
                        .zip(&b)
                        .map(|((v, &m), b)| if m { (*b as f64 + v * s) as f32 } else { *b })
                        .collect()
                })
                .collect();
            let trefs: Vec<&[f32]> = thinned.iter().map(|x| x.as_slice()).collect();
            let combine = if ties {
                Method::Ties {
                    weights: w.clone(),
                    density: 1.0,
                    lambda: 1.0,
                    normalize: false,
                }
            } else {
                Method::TaskArithmetic {
                    weights: w.clone(),
                    lambda: 1.0,
                    normalize: false,
                }
            };
            let want = merge_tensor(&combine, name, &trefs, Some(&b), &Extra::default()).unwrap();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (j, (g, v)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - v).abs() <= tolerance(Dtype::F32, *v, scale),
                    "d={density} {rescale:?} ties={ties} {name}[{j}]: {g} vs {v}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- determinism, memory

/// A checkpoint with one tensor spanning several chunks, several small ones, an
/// f16 and an integer tensor. `k` shifts the values (model k).
fn synthetic(path: &Path, big: usize, k: u32) {
    let mut rng = mnemo::rng::Rng::new(1000 + k as u64);
    let mut vals = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| rng.uniform(-1.0, 1.0) as f32 + 0.01 * k as f32)
            .collect()
    };
    let mut tensors = vec![OwnedTensor::f32("big", vec![big], &vals(big))];
    for i in 0..20 {
        tensors.push(OwnedTensor::f32(
            format!("small.{i}"),
            vec![7, 3],
            &vals(21),
        ));
    }
    let h: Vec<u8> = vals(300)
        .iter()
        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
        .collect();
    tensors.push(OwnedTensor {
        name: "half".into(),
        dtype: Dtype::F16,
        shape: vec![300],
        data: Cow::Owned(h),
    });
    tensors.push(OwnedTensor {
        name: "steps".into(),
        dtype: Dtype::I64,
        shape: vec![],
        data: Cow::Owned((k as i64).to_le_bytes().to_vec()),
    });
    write_checkpoint(path, tensors, &no_meta()).unwrap();
}

fn fisher_of(path: &Path, model: &Checkpoint) {
    let tensors = model
        .names()
        .filter(|n| model.entry(n).unwrap().dtype.is_float())
        .map(|n| {
            let v: Vec<f32> = model.to_f32(n).unwrap().iter().map(|x| x * x).collect();
            OwnedTensor::f32(n, model.entry(n).unwrap().shape.clone(), &v)
        })
        .collect();
    write_checkpoint(path, tensors, &no_meta()).unwrap();
}

#[test]
fn output_bytes_do_not_depend_on_thread_count() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let big = 3 * mnemo::merge::DARE_BLOCK + 77;
    let mut inputs = Vec::new();
    for k in 0..4 {
        let p = tmp.path().join(format!("m{k}.safetensors"));
        synthetic(&p, big, k);
        inputs.push(Checkpoint::open(&p).unwrap());
    }
    let base = inputs.remove(0);
    let mut fishers = Vec::new();
    for (k, m) in inputs.iter().enumerate() {
        let p = tmp.path().join(format!("f{k}.safetensors"));
        fisher_of(&p, m);
        fishers.push(Checkpoint::open(&p).unwrap());
    }
    let w = vec![0.6, 1.1, 0.3];
    let methods = [
        Method::Ties {
            weights: w.clone(),
            density: 0.3,
            lambda: 1.2,
            normalize: true,
        },
        dare(0.4, 9, true, DareRescale::L1, w.clone()),
        dare(0.7, 9, false, DareRescale::Paper, w.clone()),
        Method::Breadcrumbs {
            weights: w.clone(),
            density: 0.7,
            gamma: 0.05,
            lambda: 1.0,
            normalize: false,
            ties: false,
        },
        Method::ModelStock,
        Method::Slerp { t: 0.3 },
        Method::Fisher {
            weights: w.clone(),
            eps: 1e-8,
            floor: Some(1e-6),
            normalize: true,
        },
        Method::Linear {
            weights: w.clone(),
            normalize: true,
        },
    ];
    for m in &methods {
        let (ins, b, f): (&[Checkpoint], Option<&Checkpoint>, &[Checkpoint]) = match m {
            Method::Slerp { .. } => (&inputs[..2], None, &[]),
            Method::Fisher { .. } => (&inputs, None, &fishers),
            Method::Linear { .. } => (&inputs, None, &[]),
            _ => (&inputs, Some(&base), &[]),
        };
        let mut outs = Vec::new();
        for threads in [1, 2, 5] {
            let out = tmp
                .path()
                .join(format!("{}-{threads}.safetensors", m.name()));
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| merge(m, ins, b, f, &out))
                .unwrap();
            outs.push(std::fs::read(&out).unwrap());
        }
        assert!(outs.windows(2).all(|p| p[0] == p[1]), "{}", m.name());
    }
}

/// Heap use of a TIES merge of 2 and of 8 models with one 4M-element tensor:
/// a kernel holding every model's tensor would need 6 × 16 MiB more for 8; ours
/// needs only more chunk buffers (2 threads × 6 × 2¹⁵ × 12 bytes ≈ 4.5 MiB).
#[test]
fn memory_does_not_grow_with_the_number_of_models() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let big = 4 << 20;
    let mut paths = Vec::new();
    for k in 0..9 {
        let p = tmp.path().join(format!("m{k}.safetensors"));
        synthetic(&p, big, k);
        paths.push(p);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let m = Method::Ties {
        weights: vec![],
        density: 0.3,
        lambda: 1.0,
        normalize: true,
    };
    let peak_for = |n: usize| -> usize {
        let base = Checkpoint::open(&paths[0]).unwrap();
        let inputs: Vec<Checkpoint> = paths[1..=n]
            .iter()
            .map(|p| Checkpoint::open(p).unwrap())
            .collect();
        let out = tmp.path().join(format!("out{n}.safetensors"));
        let before = CURRENT.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        pool.install(|| merge(&m, &inputs, Some(&base), &[], &out))
            .unwrap();
        PEAK.load(Ordering::Relaxed) - before
    };
    let (p2, p8) = (peak_for(2), peak_for(8));
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "peak heap: 2 models {:.1} MiB, 8 models {:.1} MiB",
        mib(p2),
        mib(p8)
    );
    // One tensor's output bytes (16 MiB) plus its rank keys (32 MiB) plus chunk buffers.
    assert!(p8 < 56 << 20, "8 models: {:.1} MiB", mib(p8));
    assert!(
        p8 - p2.min(p8) < 8 << 20,
        "2 → 8 models: {:.1} → {:.1} MiB",
        mib(p2),
        mib(p8)
    );
}

// ---------------------------------------------------------------- errors

fn write(path: &Path, tensors: Vec<OwnedTensor>) -> Checkpoint {
    write_checkpoint(path, tensors, &no_meta()).unwrap();
    Checkpoint::open(path).unwrap()
}

#[test]
fn mismatched_inputs_are_named() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let a = write(
        &p("a.safetensors"),
        vec![
            OwnedTensor::f32("w", vec![2, 2], &[1.0; 4]),
            OwnedTensor::f32("b", vec![2], &[1.0; 2]),
        ],
    );
    let shape = write(
        &p("shape.safetensors"),
        vec![
            OwnedTensor::f32("w", vec![4], &[1.0; 4]),
            OwnedTensor::f32("b", vec![2], &[1.0; 2]),
        ],
    );
    let missing = write(
        &p("missing.safetensors"),
        vec![OwnedTensor::f32("w", vec![2, 2], &[1.0; 4])],
    );
    let extra = write(
        &p("extra.safetensors"),
        vec![
            OwnedTensor::f32("w", vec![2, 2], &[1.0; 4]),
            OwnedTensor::f32("b", vec![2], &[1.0; 2]),
            OwnedTensor::f32("z", vec![1], &[1.0]),
        ],
    );
    let out = p("out.safetensors");
    let lin = Method::Linear {
        weights: vec![],
        normalize: false,
    };
    let run = |b: &Checkpoint| {
        merge(
            &lin,
            &[
                Checkpoint::open(&a.path).unwrap(),
                Checkpoint::open(&b.path).unwrap(),
            ],
            None,
            &[],
            &out,
        )
        .unwrap_err()
    };
    match run(&shape) {
        MnemoError::ShapeMismatch {
            path,
            tensor,
            found,
            expected,
        } => {
            assert_eq!((path, tensor.as_str()), (shape.path.clone(), "w"));
            assert_eq!((found, expected), (vec![4], vec![2, 2]));
        }
        e => panic!("{e}"),
    }
    match run(&missing) {
        MnemoError::MissingTensor { path, tensor } => {
            assert_eq!((path, tensor.as_str()), (missing.path.clone(), "b"))
        }
        e => panic!("{e}"),
    }
    match run(&extra) {
        MnemoError::UnexpectedTensor {
            path,
            tensor,
            count,
        } => {
            assert_eq!((path, tensor.as_str(), count), (extra.path.clone(), "z", 1))
        }
        e => panic!("{e}"),
    }
    // The base is checked the same way.
    let ta = Method::TaskArithmetic {
        weights: vec![],
        lambda: 1.0,
        normalize: false,
    };
    let e = merge(&ta, std::slice::from_ref(&a), Some(&missing), &[], &out).unwrap_err();
    assert!(
        matches!(e, MnemoError::MissingTensor { ref path, .. } if *path == missing.path),
        "{e}"
    );
    // A Fisher file with a tensor the model lacks.
    let fisher = Method::Fisher {
        weights: vec![],
        eps: 1e-8,
        floor: None,
        normalize: false,
    };
    let e = merge(
        &fisher,
        std::slice::from_ref(&a),
        None,
        std::slice::from_ref(&extra),
        &out,
    )
    .unwrap_err();
    assert!(
        matches!(e, MnemoError::UnexpectedTensor { ref tensor, .. } if tensor == "z"),
        "{e}"
    );
    // A failed merge leaves nothing behind.
    assert!(!out.exists());
}

#[test]
fn nonfinite_values_are_refused_unless_allowed() {
    let _g = lock();
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let a = write(
        &p("a.safetensors"),
        vec![OwnedTensor::f32("w", vec![3], &[1.0, 2.0, 3.0])],
    );
    let nan = write(
        &p("nan.safetensors"),
        vec![OwnedTensor::f32("w", vec![3], &[1.0, f32::NAN, 3.0])],
    );
    let h = |v: f32| f16::from_f32(v).to_le_bytes().to_vec();
    let big = write(
        &p("big.safetensors"),
        vec![OwnedTensor {
            name: "h".into(),
            dtype: Dtype::F16,
            shape: vec![2],
            data: Cow::Owned([h(1.0), h(60000.0)].concat()),
        }],
    );
    let out = p("out.safetensors");
    let sum = Method::Sum;
    let e = merge(
        &sum,
        &[
            Checkpoint::open(&a.path).unwrap(),
            Checkpoint::open(&nan.path).unwrap(),
        ],
        None,
        &[],
        &out,
    )
    .unwrap_err();
    match e {
        MnemoError::NonFinite {
            path,
            tensor,
            index,
            value,
            ..
        } => {
            assert_eq!((path, tensor.as_str(), index), (nan.path.clone(), "w", 1));
            assert!(value.is_nan());
        }
        e => panic!("{e}"),
    }
    // 60000 + 60000 does not fit in f16: the output file is named.
    let e = merge(
        &sum,
        &[
            Checkpoint::open(&big.path).unwrap(),
            Checkpoint::open(&big.path).unwrap(),
        ],
        None,
        &[],
        &out,
    )
    .unwrap_err();
    assert!(
        matches!(e, MnemoError::NonFinite { ref path, index: 1, .. } if *path == out),
        "{e}"
    );
    assert!(e.to_string().contains("overflows F16"), "{e}");
    // Allowed: IEEE semantics (NaN propagates, overflow gives inf).
    let opts = MergeOptions {
        allow_nonfinite: true,
        ..Default::default()
    };
    let ins = [
        Checkpoint::open(&a.path).unwrap(),
        Checkpoint::open(&nan.path).unwrap(),
    ];
    merge_checkpoints(&sum, &ins, None, &[], &out, &no_meta(), &opts).unwrap();
    let v = Checkpoint::open(&out).unwrap().to_f32("w").unwrap();
    assert!(v[1].is_nan() && v[0] == 2.0);
    let ins = [
        Checkpoint::open(&big.path).unwrap(),
        Checkpoint::open(&big.path).unwrap(),
    ];
    merge_checkpoints(&sum, &ins, None, &[], &out, &no_meta(), &opts).unwrap();
    let v = Checkpoint::open(&out).unwrap().to_f32("h").unwrap();
    assert_eq!(v, vec![2.0, f32::INFINITY]);
}
