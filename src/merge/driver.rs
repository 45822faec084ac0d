//! The checkpoint driver: validates the inputs against each other, then
//! streams every tensor through the kernel into one safetensors file.
//!
//! Memory: inputs are memory-mapped (the OS pages them in and out). The
//! driver holds, at once, the output bytes of one batch of small tensors
//! (at most [`BATCH_ELEMENTS`] elements together) or of one larger tensor;
//! for TIES and breadcrumbs an 8-byte rank key per element of the tensors
//! being merged; and per worker thread one chunk (2¹⁵ elements) of every
//! input, base and Fisher tensor (f32) and of the weighted task vectors
//! (f64). Nothing holds a whole tensor per model, so memory does not grow
//! with the number of models beyond those chunk buffers
//! (`tests/merge_parity.rs` measures it).

use super::kernel::{self, Job, Sink, Src, TensorStats, Which};
use super::select::MAX_LEN;
use super::stream::{plan_layout, write_header, LayoutEntry};
use super::{Method, Plan};
use crate::checkpoint::{AtomicFile, Checkpoint, Dtype};
use crate::error::{MnemoError, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Small tensors are merged in parallel in batches of at most this many elements
/// (a larger tensor is a batch of its own, parallel within).
pub const BATCH_ELEMENTS: usize = 1 << 20;

/// Options of [`merge_checkpoints`].
#[derive(Clone, Copy, Default)]
pub struct MergeOptions<'a> {
    /// Let NaN/inf inputs and non-finite or overflowing results through (IEEE
    /// semantics) instead of failing with [`MnemoError::NonFinite`].
    pub allow_nonfinite: bool,
    /// Called after each batch of tensors is written: (output bytes written, total bytes).
    pub progress: Option<&'a (dyn Fn(usize, usize) + Sync)>,
    /// Write only these tensors (one shard of a sharded output); all when `None`.
    pub only: Option<&'a std::collections::HashSet<String>>,
    /// Write merged float tensors in this dtype (F32, F16, BF16 or F64) instead of the first
    /// input's; integer tensors are copied unchanged.
    pub dtype: Option<Dtype>,
}

/// One output tensor, in file order.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorReport {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// false: a non-float tensor copied from the first input.
    pub merged: bool,
    #[serde(flatten)]
    pub stats: TensorStats,
}

/// What [`merge_checkpoints`] did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MergeReport {
    pub method: String,
    pub inputs: usize,
    /// Tensors merged (floating point).
    pub merged: usize,
    /// Non-float tensors copied from the first input.
    pub copied: usize,
    /// Elements of the merged tensors.
    pub elements: u64,
    /// Bytes of the written file.
    pub bytes: u64,
    pub tensors: Vec<TensorReport>,
}

/// The tensors of `first` that every other checkpoint holds with the same shape and kind
/// of dtype (what `--skip-mismatched` merges), and the names left out.
pub fn common_tensors(
    first: &Checkpoint,
    others: &[&Checkpoint],
) -> Result<(std::collections::HashSet<String>, Vec<String>)> {
    let mut keep = std::collections::HashSet::new();
    let mut left_out = Vec::new();
    for name in first.names() {
        let a = first.entry(name)?;
        let ok = others.iter().all(|o| {
            o.contains(name)
                && o.entry(name)
                    .is_ok_and(|b| b.shape == a.shape && b.dtype.is_float() == a.dtype.is_float())
        });
        if ok {
            keep.insert(name.to_string());
        } else {
            left_out.push(name.to_string());
        }
    }
    for o in others {
        left_out.extend(o.names().filter(|n| !first.contains(n)).map(String::from));
    }
    left_out.sort();
    left_out.dedup();
    Ok((keep, left_out))
}

/// Fisher files: floating-point tensors of the model, the same names in every file.
fn check_fishers(first: &Checkpoint, fishers: &[Checkpoint]) -> Result<()> {
    for f in fishers {
        let extra: Vec<&str> = f
            .names()
            .filter(|n| !first.entry(n).is_ok_and(|e| e.dtype.is_float()))
            .collect();
        if let Some(t) = extra.first() {
            return Err(MnemoError::UnexpectedTensor {
                path: f.path.clone(),
                tensor: t.to_string(),
                count: extra.len(),
            });
        }
        for name in f.names() {
            let (m, e) = (first.entry(name)?, f.entry(name)?);
            if m.shape != e.shape {
                return Err(MnemoError::ShapeMismatch {
                    path: f.path.clone(),
                    tensor: name.to_string(),
                    found: e.shape.clone(),
                    expected: m.shape.clone(),
                });
            }
            if !e.dtype.is_float() {
                return Err(MnemoError::WrongDtype {
                    path: f.path.clone(),
                    tensor: name.to_string(),
                    dtype: e.dtype.to_string(),
                    expected: "a floating-point dtype (a Fisher diagonal)".into(),
                });
            }
        }
    }
    if let Some((f0, rest)) = fishers.split_first() {
        for f in rest {
            if let Some(t) = f0.names().find(|n| !f.contains(n)) {
                return Err(MnemoError::MissingTensor {
                    path: f.path.clone(),
                    tensor: t.to_string(),
                });
            }
            if let Some(t) = f.names().find(|n| !f0.contains(n)) {
                return Err(MnemoError::MissingTensor {
                    path: f0.path.clone(),
                    tensor: t.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// A float tensor of a checkpoint as a kernel source.
fn src<'a>(c: &'a Checkpoint, name: &str) -> Result<Src<'a>> {
    Ok(Src::Raw(c.entry(name)?.dtype, c.bytes(name)?))
}

/// √(Σ F²) over every tensor of a Fisher file, in name order (f64, deterministic).
pub(crate) fn global_norm(f: &Checkpoint) -> Result<f64> {
    let mut total = 0f64;
    for name in f.names() {
        total += kernel::sum_squares(src(f, name)?, f.entry(name)?.numel());
    }
    Ok(total.sqrt())
}

/// Merges `inputs` (and `base`, and one Fisher file per input for
/// [`Method::Fisher`]) into a single safetensors file at `out`, written
/// atomically (`-` writes to stdout).
///
/// Every input and the base must hold the same tensor names with the same
/// shapes ([`MnemoError::MissingTensor`], [`MnemoError::UnexpectedTensor`],
/// [`MnemoError::ShapeMismatch`] name the offending file and tensor). Float
/// tensors are merged and written in the first input's dtype (F32, F16, BF16
/// or F64; inputs may mix float dtypes); non-float tensors are copied from
/// the first input. Fisher files hold a subset of the model's float tensors
/// (the same in every file). The output's metadata is `metadata`, plus
/// `mnemo.arch` from the first input and `mnemo.merge` (the method as JSON)
/// when `metadata` does not set them, plus `"format": "pt"`. The bytes
/// written depend only on the inputs and the method, not on the thread count.
pub fn merge_checkpoints(
    method: &Method,
    inputs: &[Checkpoint],
    base: Option<&Checkpoint>,
    fishers: &[Checkpoint],
    out: &Path,
    metadata: &BTreeMap<String, String>,
    opts: &MergeOptions,
) -> Result<MergeReport> {
    method.validate(inputs.len(), base.is_some(), fishers.len())?;
    let first = &inputs[0];
    for other in inputs[1..].iter().chain(base) {
        first.check_same_layout(other, opts.only)?;
    }
    check_fishers(first, fishers)?;
    let plan = method.plan(inputs.len());
    let selects = matches!(method, Method::Ties { .. } | Method::Breadcrumbs { .. });
    let mut entries = Vec::with_capacity(first.len());
    if let Some(d) = opts.dtype {
        if !d.is_float() || !kernel::writable(d) {
            return Err(method.invalid(format!("output dtype {d}: F32, F16, BF16 or F64 only")));
        }
    }
    for name in first.names() {
        if opts.only.is_some_and(|only| !only.contains(name)) {
            continue;
        }
        let e = first.entry(name)?;
        let out_dtype = match opts.dtype {
            Some(d) if e.dtype.is_float() => d,
            _ => e.dtype,
        };
        if e.dtype.is_float() && !kernel::writable(out_dtype) {
            return Err(MnemoError::WrongDtype {
                path: first.path.clone(),
                tensor: name.to_string(),
                dtype: e.dtype.to_string(),
                expected: "F32, F16, BF16 or F64 (the merged tensor is written in the first input's dtype)"
                    .into(),
            });
        }
        if selects && e.numel() > MAX_LEN {
            return Err(method.invalid(format!(
                "tensor '{name}' has {} elements; magnitude selection handles at most 2^32",
                e.numel()
            )));
        }
        entries.push(LayoutEntry {
            name: name.to_string(),
            dtype: out_dtype,
            shape: e.shape.clone(),
        });
    }
    let layout = plan_layout(entries);

    let fisher_norms: Vec<f64> = match &plan {
        Plan::Fisher {
            normalize: true, ..
        } => fishers
            .iter()
            .map(|f| {
                let n = global_norm(f)?;
                if n > 0.0 && n.is_finite() {
                    Ok(n)
                } else {
                    Err(method.invalid(format!(
                        "{}: the Fisher's global norm is {n}: it cannot be normalised",
                        f.path.display()
                    )))
                }
            })
            .collect::<Result<_>>()?,
        _ => vec![1.0; inputs.len()],
    };

    let mut meta = metadata.clone();
    if let Some(arch) = first.metadata().get("mnemo.arch") {
        meta.entry("mnemo.arch".into())
            .or_insert_with(|| arch.clone());
    }
    meta.entry("mnemo.merge".into())
        .or_insert_with(|| serde_json::to_string(method).expect("a method serialises"));

    let path_of = |w: Which| -> PathBuf {
        match w {
            Which::Input(i) => inputs[i].path.clone(),
            Which::Base => base.map(|b| b.path.clone()).unwrap_or_default(),
            Which::Fisher(i) => fishers[i].path.clone(),
            Which::Output => out.to_path_buf(),
        }
    };
    let merge_one = |e: &LayoutEntry| -> Result<(Cow<[u8]>, TensorReport)> {
        let name = e.name.as_str();
        let mut report = TensorReport {
            name: e.name.clone(),
            dtype: e.dtype.to_string(),
            shape: e.shape.clone(),
            merged: e.dtype.is_float(),
            stats: TensorStats::default(),
        };
        if !e.dtype.is_float() {
            return Ok((Cow::Borrowed(first.bytes(name)?), report));
        }
        let len = e.shape.iter().product();
        let with_fisher = fishers.first().is_some_and(|f| f.contains(name));
        let job = Job {
            name,
            len,
            inputs: inputs.iter().map(|c| src(c, name)).collect::<Result<_>>()?,
            base: base.map(|b| src(b, name)).transpose()?,
            fishers: if with_fisher {
                fishers
                    .iter()
                    .map(|f| src(f, name))
                    .collect::<Result<_>>()?
            } else {
                Vec::new()
            },
            fisher_norms: fisher_norms.clone(),
            check_finite: !opts.allow_nonfinite,
        };
        let mut bytes = vec![0u8; e.nbytes()];
        report.stats = kernel::run(&plan, &job, Sink::Bytes(e.dtype, &mut bytes))
            .map_err(|err| err.into_error(path_of(err.which), name))?;
        Ok((Cow::Owned(bytes), report))
    };

    let mut file = AtomicFile::create(out)?;
    let header_bytes = write_header(&mut file, &layout, &meta)?;
    let mut reports = Vec::with_capacity(layout.len());
    let mut start = 0;
    let total_bytes: usize = layout.iter().map(|e| e.nbytes()).sum();
    let mut written = 0usize;
    while start < layout.len() {
        let mut end = start;
        let mut elements = 0usize;
        while end < layout.len() {
            let n = layout[end].shape.iter().product::<usize>();
            if end > start && elements + n > BATCH_ELEMENTS {
                break;
            }
            elements += n;
            end += 1;
        }
        let done: Vec<Result<(Cow<[u8]>, TensorReport)>> =
            layout[start..end].par_iter().map(merge_one).collect();
        for r in done {
            let (bytes, report) = r?;
            file.write_all(&bytes)?;
            reports.push(report);
        }
        written += layout[start..end].iter().map(|e| e.nbytes()).sum::<usize>();
        start = end;
        if let Some(p) = opts.progress {
            p(written, total_bytes);
        }
    }
    file.commit()?;

    let merged = reports.iter().filter(|r| r.merged).count();
    Ok(MergeReport {
        method: method.name().to_string(),
        inputs: inputs.len(),
        merged,
        copied: reports.len() - merged,
        elements: reports
            .iter()
            .filter(|r| r.merged)
            .map(|r| r.shape.iter().product::<usize>() as u64)
            .sum(),
        bytes: (header_bytes + layout.iter().map(LayoutEntry::nbytes).sum::<usize>()) as u64,
        tensors: reports,
    })
}
