//! Running a mergekit YAML configuration ([`MergeConfig`]) into a model folder.
//!
//! As mergekit's planner (`mergekit/plan.py`) does: `models:` becomes one slice over every
//! layer of every model (the base added as the last input when not listed); each slice's
//! layers are taken at the same offset from each source and written renumbered after the
//! previous slices' layers; the tensors outside the layers come from the first slice's sources
//! (embeddings) or the last slice's (final norm, head). A parameter is resolved per tensor in
//! mergekit's precedence (the source's own `parameters`, then the slice's, then the global
//! ones, then the method's default), its filters matched against the tensor name (the input's
//! name for per-model parameters) and its gradients interpolated at t = i/(n−1) for the i-th of
//! a slice's n layers (t = 0 outside the layers).
//!
//! Layers are found by name: a `layers.N.`, `h.N.` or `blocks.N.` segment. The layer count of
//! a model is its `config.json`'s `num_hidden_layers` when it has one, else one more than the
//! largest index.
//!
//! Output: `model.safetensors` (or HF shards and their index), `config.json` from the base (or
//! first) model with `num_hidden_layers` and the dtype updated, and the tokenizer files and
//! `generation_config.json` of `tokenizer_source` (default: the base, or the first model),
//! copied byte for byte. Every file goes through [`AtomicFile`]. Computation is in f32 with
//! f64 accumulation whatever `dtype` says (`dtype` only sets the output dtype when `out_dtype`
//! does not): mergekit with `dtype: float32`.

use super::kernel::{self, Job, Sink, Src};
use super::methods::{self, BasePolicy, Bound, Kernel, Scope, Spec, Ty, Val};
use super::stream::{plan_layout, write_header, LayoutEntry};
use super::yaml::{MergeConfig, ModelRef, Params, Setting, TokenizerSource, Value};
use crate::checkpoint::{AtomicFile, Checkpoint, Dtype};
use crate::error::{MnemoError, Result};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Options of [`run_config`].
#[derive(Clone, Default)]
pub struct RecipeOptions {
    /// Let NaN/inf through instead of failing.
    pub allow_nonfinite: bool,
    /// Shard the weights into files of at most this many bytes (default: one file).
    pub shard_size: Option<u64>,
    /// Metadata for every weight file (provenance), besides `format` and `mnemo.merge_config`.
    pub metadata: BTreeMap<String, String>,
}

/// What [`run_config`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct RecipeReport {
    pub method: String,
    /// Distinct models read.
    pub models: usize,
    pub tensors: usize,
    /// Layers in the output.
    pub layers: usize,
    pub bytes: u64,
    /// Every file written, weights first.
    pub files: Vec<PathBuf>,
}

/// One input of one output tensor.
#[derive(Clone, Debug)]
struct Entry {
    model: usize,
    name: String,
    is_base: bool,
}

/// One output tensor, planned.
struct Task {
    name: String,
    entries: Vec<Entry>,
    /// Gradient position.
    t: f64,
    slice: usize,
}

struct Model {
    reference: ModelRef,
    ckpt: Checkpoint,
    layers: usize,
}

/// A slice, normalised: sources (model index, layer start, parameters) and its base.
struct NSlice<'c> {
    sources: Vec<(usize, usize, Option<&'c Params>)>,
    base: Option<usize>,
    params: Option<&'c Params>,
    len: usize,
    line: usize,
}

/// (prefix, layer index, suffix) of a layer tensor's name.
fn split_layer(name: &str) -> Option<(&str, usize, &str)> {
    let parts: Vec<&str> = name.split('.').collect();
    let mut off = 0;
    for w in 0..parts.len().saturating_sub(2) {
        let seg = parts[w];
        let next = parts[w + 1];
        if matches!(seg, "layers" | "h" | "blocks")
            && !next.is_empty()
            && next.bytes().all(|b| b.is_ascii_digit())
        {
            let start = off + seg.len() + 1;
            let end = start + next.len();
            return next.parse().ok().map(|i| (&name[..start], i, &name[end..]));
        }
        off += seg.len() + 1;
    }
    None
}

fn config_json(path: &Path) -> Option<PathBuf> {
    let p = path.join("config.json");
    (path.is_dir() && p.is_file()).then_some(p)
}

fn layer_count(m: &Checkpoint, path: &Path) -> Result<usize> {
    if let Some(p) = config_json(path) {
        let text = std::fs::read_to_string(&p).map_err(|e| MnemoError::io(&p, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| MnemoError::Config {
            origin: p.display().to_string(),
            reason: format!("invalid JSON: {e}"),
        })?;
        if let Some(n) = v.get("num_hidden_layers").and_then(|n| n.as_u64()) {
            return Ok(n as usize);
        }
    }
    Ok(m.names()
        .filter_map(|n| split_layer(n).map(|(_, i, _)| i + 1))
        .max()
        .unwrap_or(0))
}

fn dtype_named(cfg: &MergeConfig, (name, line): &(String, usize)) -> Result<Dtype> {
    let n = name.strip_prefix("torch.").unwrap_or(name);
    match n {
        "bfloat16" => Ok(Dtype::BF16),
        "float16" => Ok(Dtype::F16),
        "float32" => Ok(Dtype::F32),
        "float64" => Ok(Dtype::F64),
        _ => Err(cfg.err(
            *line,
            format!("unknown dtype '{name}' (bfloat16, float16, float32 or float64)"),
        )),
    }
}

/// pydantic's lax conversion of one scalar to a parameter's type.
fn convert(ty: Ty, v: &Value) -> std::result::Result<Val, String> {
    let bad = || format!("{v} is not a valid {}", ty_name(ty));
    match ty {
        Ty::Float | Ty::OptFloat => match v {
            Value::Int(i) => Ok(Val::F(*i as f64)),
            Value::Float(x) => Ok(Val::F(*x)),
            Value::Str(s) => s.trim().parse::<f64>().map(Val::F).map_err(|_| bad()),
            Value::Bool(_) => Err(bad()),
        },
        Ty::Int => match v {
            Value::Int(i) => Ok(Val::I(*i)),
            Value::Float(x) if x.fract() == 0.0 && x.is_finite() => Ok(Val::I(*x as i64)),
            Value::Str(s) => s.trim().parse::<i64>().map(Val::I).map_err(|_| bad()),
            _ => Err(bad()),
        },
        Ty::Bool => match v {
            Value::Bool(b) => Ok(Val::B(*b)),
            Value::Int(0) => Ok(Val::B(false)),
            Value::Int(1) => Ok(Val::B(true)),
            Value::Float(x) if *x == 0.0 || *x == 1.0 => Ok(Val::B(*x == 1.0)),
            Value::Str(s) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "t" | "y" | "1" => Ok(Val::B(true)),
                "false" | "no" | "off" | "f" | "n" | "0" => Ok(Val::B(false)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        },
    }
}

fn ty_name(ty: Ty) -> &'static str {
    match ty {
        Ty::Float | Ty::OptFloat => "number",
        Ty::Int => "integer",
        Ty::Bool => "boolean",
    }
}

fn numeric(v: Val) -> bool {
    matches!(v, Val::F(_) | Val::I(_))
}

/// mergekit's `evaluate_setting`: `None` when nothing applies (an empty gradient, no
/// matching filter).
fn evaluate(
    ty: Ty,
    setting: &Setting,
    tensor: &str,
    t: f64,
) -> std::result::Result<Option<Val>, String> {
    match setting {
        Setting::Scalar(v) => convert(ty, v).map(Some),
        Setting::Gradient(vs) if vs.is_empty() => Ok(None),
        Setting::Gradient(vs) => {
            let vals: Vec<Val> = vs
                .iter()
                .map(|v| convert(ty, v))
                .collect::<std::result::Result<_, _>>()?;
            let n = vals.len();
            if !vals.iter().all(|v| numeric(*v)) {
                return Ok(Some(vals[(t * (n - 1) as f64) as usize]));
            }
            let scaled = t * (n - 1) as f64;
            let i0 = scaled as usize;
            let i1 = (n - 1).min(i0 + 1);
            let frac = scaled - i0 as f64;
            let r = (1.0 - frac) * vals[i0].f() + frac * vals[i1].f();
            convert(ty, &Value::Float(r)).map(Some)
        }
        Setting::Conditions(cs) => {
            for c in cs {
                let hit = match c.filter.as_deref() {
                    None | Some("*") => true,
                    Some(f) => !tensor.is_empty() && tensor.contains(f),
                };
                if hit {
                    return evaluate(ty, &c.value, tensor, t);
                }
            }
            Ok(None)
        }
    }
}

/// The line of the parameter `name` in the first of `scopes` that sets it.
fn param_line(scopes: &[Option<&Params>], name: &str) -> usize {
    scopes
        .iter()
        .flatten()
        .flat_map(|p| p.iter())
        .find(|p| p.name == name)
        .map_or(0, |p| p.line)
}

fn resolve(
    cfg: &MergeConfig,
    spec: &methods::ParamSpec,
    scopes: &[Option<&Params>],
    tensor: &str,
    t: f64,
) -> Result<Val> {
    for scope in scopes.iter().flatten() {
        if let Some(p) = scope.iter().find(|p| p.name == spec.name) {
            match evaluate(spec.ty, &p.setting, tensor, t) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(cfg.err(p.line, format!("parameter '{}': {e}", spec.name))),
            }
        }
    }
    spec.default.ok_or_else(|| {
        cfg.err(
            cfg.method_line,
            format!(
                "missing required parameter '{}' for tensor '{tensor}'",
                spec.name
            ),
        )
    })
}

/// Every parameter name in the file must be one of the method's.
fn check_param_names(cfg: &MergeConfig, spec: &Spec) -> Result<()> {
    let mut blocks: Vec<&Params> = cfg.parameters.iter().collect();
    for m in cfg.models.iter().flatten() {
        blocks.extend(m.parameters.iter());
    }
    for s in cfg.slices.iter().flatten() {
        blocks.extend(s.parameters.iter());
        for src in &s.sources {
            blocks.extend(src.parameters.iter());
        }
    }
    let known: Vec<&str> = spec.params.iter().map(|p| p.name).collect();
    for p in blocks.into_iter().flatten() {
        if !known.contains(&p.name.as_str()) {
            return Err(cfg.err(
                p.line,
                format!(
                    "unknown parameter '{}' for merge_method {} (its parameters: {})",
                    p.name,
                    spec.name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}

fn method_spec(cfg: &MergeConfig) -> Result<&'static Spec> {
    let name = cfg.merge_method.as_str();
    if let Some(s) = methods::lookup(name) {
        return Ok(s);
    }
    if let Some((_, why)) = methods::NOT_YET.iter().find(|(n, _)| *n == name) {
        return Err(cfg.err(
            cfg.method_line,
            format!("merge_method {name}: not supported by mnemo yet ({why})"),
        ));
    }
    let known: Vec<&str> = methods::REGISTRY.iter().map(|s| s.name).collect();
    Err(cfg.err(
        cfg.method_line,
        format!(
            "unknown merge_method '{name}' (known: {})",
            known.join(", ")
        ),
    ))
}

/// The contract's checks on one slice (mergekit's `InputContract.validate_ids`).
fn check_contract(cfg: &MergeConfig, spec: &Spec, sl: &NSlice) -> Result<()> {
    let line = sl.line;
    let err = |m: String| Err(cfg.err(line, format!("merge_method {}: {m}", spec.name)));
    let ids: Vec<usize> = sl.sources.iter().map(|s| s.0).collect();
    let mut uniq = ids.clone();
    uniq.sort_unstable();
    uniq.dedup();
    if uniq.len() != ids.len() {
        return err("the same model appears twice among the inputs".into());
    }
    let base = if spec.contract.base == BasePolicy::Ignored {
        None
    } else {
        sl.base
    };
    let has_base = base.is_some_and(|b| ids.contains(&b));
    if base.is_some() && !has_base {
        return err("the base model is not among this slice's sources".into());
    }
    if spec.contract.base == BasePolicy::Required && !has_base {
        return err("needs a base_model".into());
    }
    let c = spec.contract;
    let count = ids.len();
    let non_base = count - usize::from(has_base);
    if count < c.min_inputs || c.max_inputs.is_some_and(|m| count > m) {
        return err(format!(
            "takes {} inputs (the base included), not {count}",
            range_words(c.min_inputs, c.max_inputs)
        ));
    }
    if non_base < c.min_non_base || c.max_non_base.is_some_and(|m| non_base > m) {
        return err(format!(
            "takes {} models besides the base, not {non_base}",
            range_words(c.min_non_base, c.max_non_base)
        ));
    }
    Ok(())
}

fn range_words(min: usize, max: Option<usize>) -> String {
    match max {
        Some(m) if m == min => format!("exactly {m}"),
        Some(m) => format!("{min} to {m}"),
        None => format!("at least {min}"),
    }
}

/// The planned merge: models, slices and output tensors.
struct Planned<'c> {
    spec: &'static Spec,
    models: Vec<Model>,
    slices: Vec<NSlice<'c>>,
    tasks: Vec<Task>,
    layers: usize,
    out_dtype: Option<Dtype>,
    /// merge_method fisher: per model, its Fisher file and that file's global L2 norm.
    fishers: Vec<Option<(Checkpoint, f64)>>,
}

fn plan<'c>(cfg: &'c MergeConfig) -> Result<Planned<'c>> {
    let spec = method_spec(cfg)?;
    check_param_names(cfg, spec)?;
    let out_dtype = match (&cfg.out_dtype, &cfg.dtype) {
        (Some(d), _) | (None, Some(d)) => Some(dtype_named(cfg, d)?),
        _ => None,
    };
    if let Some(d) = &cfg.dtype {
        dtype_named(cfg, d)?;
    }
    // Models, by the name written in the file.
    let mut models: Vec<Model> = Vec::new();
    let index = |r: &ModelRef, models: &mut Vec<Model>| -> Result<usize> {
        if let Some(i) = models.iter().position(|m| m.reference.name == r.name) {
            return Ok(i);
        }
        let ckpt = Checkpoint::open(&r.path)
            .map_err(|e| cfg.err(r.line, format!("model '{}': {e}", r.name)))?;
        let layers = layer_count(&ckpt, &r.path)?;
        models.push(Model {
            reference: r.clone(),
            ckpt,
            layers,
        });
        Ok(models.len() - 1)
    };
    let base = cfg
        .base_model
        .as_ref()
        .map(|b| index(b, &mut models))
        .transpose()?;
    let mut slices = Vec::new();
    if let Some(ms) = &cfg.models {
        let mut sources = Vec::new();
        for m in ms {
            let i = index(&m.model, &mut models)?;
            sources.push((i, 0, m.parameters.as_ref()));
        }
        if let Some(b) = base {
            if !sources.iter().any(|s| s.0 == b) {
                sources.push((b, 0, None));
            }
        }
        let len0 = models[sources[0].0].layers;
        if let Some(s) = sources.iter().find(|s| models[s.0].layers != len0) {
            let m = &models[s.0];
            return Err(cfg.err(
                m.reference.line,
                format!(
                    "model '{}' has {} layers, '{}' has {len0}",
                    m.reference.name, m.layers, models[sources[0].0].reference.name
                ),
            ));
        }
        slices.push(NSlice {
            sources,
            base,
            params: None,
            len: len0,
            line: cfg.method_line,
        });
    } else {
        for s in cfg.slices.iter().flatten() {
            let sbase = match &s.base_model {
                Some(b) => Some(index(b, &mut models)?),
                None => base,
            };
            let mut sources = Vec::new();
            let len = s.sources[0].layer_range.1 - s.sources[0].layer_range.0;
            for src in &s.sources {
                let i = index(&src.model, &mut models)?;
                let (a, b) = src.layer_range;
                if b - a != len {
                    return Err(cfg.err(
                        src.line,
                        "all inputs to a slice must contain the same number of layers",
                    ));
                }
                if b > models[i].layers {
                    return Err(cfg.err(
                        src.line,
                        format!(
                            "layer_range [{a}, {b}]: model '{}' has {} layers",
                            src.model.name, models[i].layers
                        ),
                    ));
                }
                sources.push((i, a, src.parameters.as_ref()));
            }
            slices.push(NSlice {
                sources,
                base: sbase,
                params: s.parameters.as_ref(),
                len,
                line: s.line,
            });
        }
    }
    for sl in &slices {
        check_contract(cfg, spec, sl)?;
    }

    // The output tensors, in mergekit's order: pre weights, layers, post weights.
    let entries_at = |sl: &NSlice, name: &dyn Fn(usize, usize) -> String| -> Vec<Entry> {
        sl.sources
            .iter()
            .map(|&(m, start, _)| Entry {
                model: m,
                name: name(m, start),
                is_base: sl.base == Some(m) && spec.contract.base != BasePolicy::Ignored,
            })
            .collect()
    };
    let first_model = &models[slices[0].sources[0].0].ckpt;
    let outside: Vec<&str> = first_model
        .names()
        .filter(|n| split_layer(n).is_none())
        .collect();
    let is_pre = |n: &str| n.contains("embed") || n.contains(".wte.") || n.contains(".wpe.");
    let mut tasks = Vec::new();
    for n in outside.iter().filter(|n| is_pre(n)) {
        tasks.push(Task {
            name: n.to_string(),
            entries: entries_at(&slices[0], &|_, _| n.to_string()),
            t: 0.0,
            slice: 0,
        });
    }
    let mut out_layer = 0usize;
    for (si, sl) in slices.iter().enumerate() {
        for off in 0..sl.len {
            let t = if sl.len > 1 {
                off as f64 / (sl.len - 1) as f64
            } else {
                1.0
            };
            let (m0, start0, _) = sl.sources[0];
            let names: Vec<(String, String)> = models[m0]
                .ckpt
                .names()
                .filter_map(|n| {
                    let (pre, i, suf) = split_layer(n)?;
                    (i == start0 + off).then(|| (pre.to_string(), suf.to_string()))
                })
                .collect();
            for (pre, suf) in names {
                tasks.push(Task {
                    name: format!("{pre}{out_layer}{suf}"),
                    entries: entries_at(sl, &|_, start| format!("{pre}{}{suf}", start + off)),
                    t,
                    slice: si,
                });
            }
            out_layer += 1;
        }
    }
    let last = slices.len() - 1;
    for n in outside.iter().filter(|n| !is_pre(n)) {
        tasks.push(Task {
            name: n.to_string(),
            entries: entries_at(&slices[last], &|_, _| n.to_string()),
            t: 0.0,
            slice: last,
        });
    }
    // mnemo's `fisher:` keys.
    let mut fishers: Vec<Option<(Checkpoint, f64)>> = models.iter().map(|_| None).collect();
    for m in cfg.models.iter().flatten() {
        let Some(f) = &m.fisher else { continue };
        if spec.name != "fisher" {
            return Err(cfg.err(
                f.line,
                format!("'fisher' applies to merge_method fisher, not {}", spec.name),
            ));
        }
        let i = models
            .iter()
            .position(|x| x.reference.name == m.model.name)
            .expect("every listed model is opened");
        let ck = Checkpoint::open(&f.path)
            .map_err(|e| cfg.err(f.line, format!("fisher '{}': {e}", f.name)))?;
        let norm = super::driver::global_norm(&ck)?;
        fishers[i] = Some((ck, norm));
    }
    if spec.name == "fisher" {
        for sl in &slices {
            for &(m, _, _) in &sl.sources {
                if fishers[m].is_none() {
                    let r = &models[m].reference;
                    return Err(cfg.err(
                        r.line,
                        format!(
                            "merge_method fisher: model '{}' needs its Fisher file ('fisher: PATH' next to 'model:')",
                            r.name
                        ),
                    ));
                }
            }
        }
    }
    Ok(Planned {
        spec,
        models,
        slices,
        tasks,
        layers: out_layer,
        out_dtype,
        fishers,
    })
}

/// The kernel and its inputs for one task.
fn bind(
    cfg: &MergeConfig,
    p: &Planned,
    task: &Task,
) -> Result<(Kernel, Vec<usize>, Option<usize>)> {
    let spec = p.spec;
    let sl = &p.slices[task.slice];
    let shared_scopes = [sl.params, cfg.parameters.as_ref()];
    let mut bound = Bound::default();
    for ps in spec.params.iter().filter(|ps| ps.scope == Scope::Shared) {
        bound.shared.insert(
            ps.name,
            resolve(cfg, ps, &shared_scopes, &task.name, task.t)?,
        );
    }
    let mut kin = Vec::new();
    let mut base = None;
    for (k, e) in task.entries.iter().enumerate() {
        let own: Vec<Option<&Params>> = sl
            .sources
            .iter()
            .filter(|s| s.0 == e.model)
            .map(|s| s.2)
            .collect();
        let mut scopes = own;
        scopes.extend(shared_scopes);
        let mut vals = BTreeMap::new();
        for ps in spec
            .params
            .iter()
            .filter(|ps| ps.scope == Scope::Input || (ps.scope == Scope::NonBase && !e.is_base))
        {
            vals.insert(ps.name, resolve(cfg, ps, &scopes, &e.name, task.t)?);
        }
        if e.is_base {
            base = Some(k);
            bound.base = vals;
        } else {
            kin.push(k);
            bound.inputs.push(vals);
        }
    }
    let kernel = (spec.build)(kin.len(), &bound).map_err(|why| {
        let l = spec
            .params
            .iter()
            .map(|ps| param_line(&shared_scopes, ps.name))
            .find(|&l| l > 0)
            .unwrap_or(cfg.method_line);
        cfg.err(
            l,
            format!("merge_method {}: tensor '{}': {why}", spec.name, task.name),
        )
    })?;
    Ok((kernel, kin, base))
}

/// Checks that the entries agree (shapes, float or not) and returns the first one's entry.
fn check_entries<'m>(p: &'m Planned, task: &Task) -> Result<&'m crate::checkpoint::TensorEntry> {
    let first = &task.entries[0];
    let m0 = &p.models[first.model].ckpt;
    let e0 = m0.entry(&first.name)?;
    for e in &task.entries[1..] {
        let c = &p.models[e.model].ckpt;
        let x = c.entry(&e.name)?;
        if x.shape != e0.shape {
            return Err(MnemoError::ShapeMismatch {
                path: c.path.clone(),
                tensor: e.name.clone(),
                found: x.shape.clone(),
                expected: e0.shape.clone(),
            });
        }
        if x.dtype.is_float() != e0.dtype.is_float() {
            return Err(MnemoError::WrongDtype {
                path: c.path.clone(),
                tensor: e.name.clone(),
                dtype: x.dtype.to_string(),
                expected: format!("{} like {}", e0.dtype, m0.path.display()),
            });
        }
    }
    Ok(e0)
}

fn src<'a>(c: &'a Checkpoint, name: &str) -> Result<Src<'a>> {
    Ok(Src::Raw(c.entry(name)?.dtype, c.bytes(name)?))
}

fn nonfinite(path: &Path, tensor: &str, v: &[f32], reason: &str) -> Result<()> {
    if let Some(j) = v.iter().position(|x| !x.is_finite()) {
        return Err(MnemoError::NonFinite {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            index: j,
            value: v[j],
            reason: reason.to_string(),
        });
    }
    Ok(())
}

/// Merges one task into the bytes of its output dtype.
fn compute(
    cfg: &MergeConfig,
    p: &Planned,
    task: &Task,
    out: &LayoutEntry,
    opts: &RecipeOptions,
    out_path: &Path,
) -> Result<Vec<u8>> {
    let first = &task.entries[0];
    let m0 = &p.models[first.model].ckpt;
    if !out.dtype.is_float() {
        return Ok(m0.bytes(&first.name)?.to_vec());
    }
    let (kernel, kin, base) = bind(cfg, p, task)?;
    let ck = |k: usize| &p.models[task.entries[k].model].ckpt;
    let nm = |k: usize| task.entries[k].name.as_str();
    let len: usize = out.shape.iter().product();
    let mut bytes = vec![0u8; out.nbytes()];
    if kin.is_empty() {
        // Only the base (mergekit: "if not entries: return base").
        let b = base.expect("a kernel input or the base");
        let v = ck(b).to_f32(nm(b))?;
        if let Some(o) = kernel::encode_chunk(out.dtype, &v, &mut bytes, 0) {
            if !opts.allow_nonfinite {
                return Err(o.into_error(out_path.to_path_buf(), &task.name));
            }
        }
        return Ok(bytes);
    }
    match kernel {
        Kernel::Stream(plan) => {
            // slerp's plan takes the base as its first input.
            let (inputs, base_src) = if matches!(plan, super::Plan::Slerp { .. }) {
                let b = base.expect("slerp's contract requires a base");
                (vec![b, kin[0]], None)
            } else {
                (kin.clone(), base)
            };
            if matches!(plan, super::Plan::TaskVectors { .. }) && len > super::select::MAX_LEN {
                return Err(cfg.err(
                    cfg.method_line,
                    format!(
                        "tensor '{}' has {len} elements; magnitude selection handles at most 2^32",
                        task.name
                    ),
                ));
            }
            // Fisher merging: every input's Fisher tensor, or none (→ the weighted average).
            let mut fishers = Vec::new();
            let mut fisher_norms = vec![1.0; inputs.len()];
            if let super::Plan::Fisher { normalize, .. } = &plan {
                let files: Vec<&(Checkpoint, f64)> = inputs
                    .iter()
                    .filter_map(|&k| p.fishers[task.entries[k].model].as_ref())
                    .collect();
                if files.len() == inputs.len()
                    && inputs.iter().zip(&files).all(|(&k, f)| f.0.contains(nm(k)))
                {
                    for (&k, f) in inputs.iter().zip(&files) {
                        let fe = f.0.entry(nm(k))?;
                        if fe.shape != out.shape || !fe.dtype.is_float() {
                            return Err(MnemoError::ShapeMismatch {
                                path: f.0.path.clone(),
                                tensor: nm(k).to_string(),
                                found: fe.shape.clone(),
                                expected: out.shape.clone(),
                            });
                        }
                        fishers.push(src(&f.0, nm(k))?);
                    }
                    if *normalize {
                        fisher_norms = files.iter().map(|f| f.1).collect();
                        if let Some(f) = files.iter().find(|f| !(f.1 > 0.0 && f.1.is_finite())) {
                            return Err(cfg.err(
                                cfg.method_line,
                                format!(
                                    "{}: the Fisher's global norm is {}: it cannot be normalised",
                                    f.0.path.display(),
                                    f.1
                                ),
                            ));
                        }
                    }
                }
            }
            let job = Job {
                name: &task.name,
                len,
                inputs: inputs
                    .iter()
                    .map(|&k| src(ck(k), nm(k)))
                    .collect::<Result<_>>()?,
                base: base_src.map(|k| src(ck(k), nm(k))).transpose()?,
                fishers,
                fisher_norms,
                check_finite: !opts.allow_nonfinite,
            };
            kernel::run(&plan, &job, Sink::Bytes(out.dtype, &mut bytes)).map_err(|e| {
                let path = match e.which {
                    kernel::Which::Input(i) => ck(inputs[i]).path.clone(),
                    kernel::Which::Base => base_src.map(|k| ck(k).path.clone()).unwrap_or_default(),
                    _ => out_path.to_path_buf(),
                };
                e.into_error(path, &task.name)
            })?;
        }
        Kernel::Whole(w) => {
            let decode = |k: usize| -> Result<Vec<f32>> {
                let v = ck(k).to_f32(nm(k))?;
                if !opts.allow_nonfinite {
                    nonfinite(
                        &ck(k).path,
                        nm(k),
                        &v,
                        "refusing to merge a non-finite value",
                    )?;
                }
                Ok(v)
            };
            let xs: Vec<Vec<f32>> = kin.iter().map(|&k| decode(k)).collect::<Result<_>>()?;
            let b = base.map(decode).transpose()?;
            let refs: Vec<&[f32]> = xs.iter().map(|v| v.as_slice()).collect();
            let r = w
                .merge_named(&task.name, &refs, b.as_deref(), &out.shape)
                .map_err(|why| {
                    cfg.err(
                        cfg.method_line,
                        format!(
                            "merge_method {}: tensor '{}': {why}",
                            p.spec.name, task.name
                        ),
                    )
                })?;
            if !opts.allow_nonfinite {
                nonfinite(out_path, &task.name, &r, "the merged value is not finite")?;
            }
            let overflow = kernel::encode_chunk(out.dtype, &r, &mut bytes, 0);
            if let (Some(o), false) = (overflow, opts.allow_nonfinite) {
                return Err(o.into_error(out_path.to_path_buf(), &task.name));
            }
        }
    }
    Ok(bytes)
}

/// Reads and plans `cfg` without writing anything: the output tensors' names, in order.
pub fn plan_names(cfg: &MergeConfig) -> Result<Vec<String>> {
    Ok(plan(cfg)?.tasks.into_iter().map(|t| t.name).collect())
}

fn same_place(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}

/// The files beside a merged model folder's weights: `config.json` from `donor` (a model
/// folder; with `num_hidden_layers` set to `layers` and the dtype to `out_dtype` when given),
/// and the tokenizer files and `generation_config.json` of `tokenizer` (a folder), each
/// written atomically; the paths written.
pub fn write_companions(
    out: &Path,
    donor: &Path,
    layers: Option<usize>,
    out_dtype: Option<Dtype>,
    tokenizer: Option<&Path>,
) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if let Some(cj) = config_json(donor) {
        let text = std::fs::read_to_string(&cj).map_err(|e| MnemoError::io(&cj, e))?;
        let mut v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| MnemoError::Config {
                origin: cj.display().to_string(),
                reason: format!("invalid JSON: {e}"),
            })?;
        let mut changed = false;
        if let Some(obj) = v.as_object_mut() {
            if let Some(n) = layers.filter(|_| obj.contains_key("num_hidden_layers")) {
                obj.insert("num_hidden_layers".into(), serde_json::json!(n));
                changed = true;
            }
            if let Some(d) = out_dtype {
                let name = match d {
                    Dtype::BF16 => "bfloat16",
                    Dtype::F16 => "float16",
                    Dtype::F64 => "float64",
                    _ => "float32",
                };
                let key = if obj.contains_key("dtype") || !obj.contains_key("torch_dtype") {
                    "dtype"
                } else {
                    "torch_dtype"
                };
                obj.insert(key.into(), serde_json::json!(name));
                changed = true;
            }
        }
        let path = out.join("config.json");
        if changed {
            let mut s = serde_json::to_string_pretty(&v).expect("json");
            s.push('\n');
            write_file(&path, s.as_bytes())?;
        } else {
            write_file(&path, text.as_bytes())?;
        }
        files.push(path);
    }
    if let Some(dir) = tokenizer.filter(|d| d.is_dir()) {
        for name in crate::checkpoint::folder::TOKENIZER_FILES {
            let from = dir.join(name);
            if from.is_file() {
                let bytes = std::fs::read(&from).map_err(|e| MnemoError::io(&from, e))?;
                let to = out.join(name);
                write_file(&to, &bytes)?;
                files.push(to);
            }
        }
    }
    Ok(files)
}

/// Runs `cfg` into the folder `out` (created when missing): the weights, `config.json`,
/// `generation_config.json` and the tokenizer files.
pub fn run_config(cfg: &MergeConfig, out: &Path, opts: &RecipeOptions) -> Result<RecipeReport> {
    let p = plan(cfg)?;
    for m in &p.models {
        let dir = if m.reference.path.is_dir() {
            m.reference.path.clone()
        } else {
            m.reference
                .path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        };
        if same_place(&dir, out) {
            return Err(cfg.err(
                m.reference.line,
                format!(
                    "the output folder {} holds the input model '{}': write elsewhere",
                    out.display(),
                    m.reference.name
                ),
            ));
        }
    }
    let tok_src: Option<usize> = match &cfg.tokenizer_source {
        Some((TokenizerSource::Union, l)) => {
            return Err(cfg.err(
                *l,
                "tokenizer_source: union is not supported yet (base, or a model path)",
            ))
        }
        Some((TokenizerSource::Base, l)) => Some(
            p.models
                .iter()
                .position(|m| Some(&m.reference) == cfg.base_model.as_ref())
                .ok_or_else(|| cfg.err(*l, "tokenizer_source: base needs a base_model"))?,
        ),
        Some((TokenizerSource::Model(r), _)) => Some(
            match p.models.iter().position(|m| m.reference.name == r.name) {
                Some(i) => i,
                None => {
                    if !r.path.is_dir() {
                        return Err(cfg.err(
                            r.line,
                            format!("tokenizer_source '{}' is not a model folder", r.name),
                        ));
                    }
                    usize::MAX
                }
            },
        ),
        None => None,
    };
    // The donor: config.json and (without tokenizer_source) the tokenizer.
    let donor = cfg
        .base_model
        .as_ref()
        .and_then(|b| p.models.iter().position(|m| &m.reference == b))
        .unwrap_or(p.slices[0].sources[0].0);

    // Layout and tensors.
    let mut entries = Vec::with_capacity(p.tasks.len());
    for task in &p.tasks {
        let e = check_entries(&p, task)?;
        let dtype = match p.out_dtype {
            Some(d) if e.dtype.is_float() => d,
            _ => e.dtype,
        };
        if e.dtype.is_float() && !kernel::writable(dtype) {
            return Err(MnemoError::WrongDtype {
                path: p.models[task.entries[0].model].ckpt.path.clone(),
                tensor: task.entries[0].name.clone(),
                dtype: e.dtype.to_string(),
                expected: "F32, F16, BF16 or F64 (set out_dtype)".into(),
            });
        }
        entries.push(LayoutEntry {
            name: task.name.clone(),
            dtype,
            shape: e.shape.clone(),
        });
    }
    let by_name: BTreeMap<&str, usize> = p
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    if by_name.len() != p.tasks.len() {
        return Err(cfg.err(
            cfg.method_line,
            "two output tensors would have the same name",
        ));
    }
    // Shards, greedily in mergekit's order.
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut size = 0u64;
    for (i, e) in entries.iter().enumerate() {
        let n = e.nbytes() as u64;
        if let Some(max) = opts.shard_size {
            if !shards.last().expect("one").is_empty() && size + n > max {
                shards.push(Vec::new());
                size = 0;
            }
        }
        shards.last_mut().expect("one").push(i);
        size += n;
    }
    // Every tensor's parameters resolve (and the method accepts them) before anything is
    // written.
    for task in &p.tasks {
        if entries[by_name[task.name.as_str()]].dtype.is_float() {
            bind(cfg, &p, task)?;
        }
    }
    std::fs::create_dir_all(out).map_err(|e| MnemoError::io(out, e))?;
    let mut meta = opts.metadata.clone();
    meta.insert("mnemo.merge_config".into(), cfg.text.clone());
    let ns = shards.len();
    let mut files = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0u64;
    let mut bytes_written = 0u64;
    // An old index would outlive a single-file result.
    let old_index = out.join("model.safetensors.index.json");
    if old_index.exists() {
        std::fs::remove_file(&old_index).map_err(|e| MnemoError::io(&old_index, e))?;
    }
    for (si, shard) in shards.iter().enumerate() {
        let file = if ns == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", si + 1, ns)
        };
        let path = out.join(&file);
        let layout = plan_layout(shard.iter().map(|&i| entries[i].clone()).collect());
        let mut f = AtomicFile::create(&path)?;
        bytes_written += write_header(&mut f, &layout, &meta)? as u64;
        // Batches of tensors in parallel, written in layout order.
        let mut start = 0;
        while start < layout.len() {
            let mut end = start;
            let mut elements = 0usize;
            while end < layout.len() {
                let n = layout[end].shape.iter().product::<usize>();
                if end > start && elements + n > super::BATCH_ELEMENTS {
                    break;
                }
                elements += n;
                end += 1;
            }
            let done: Vec<Result<Vec<u8>>> = layout[start..end]
                .par_iter()
                .map(|e| compute(cfg, &p, &p.tasks[by_name[e.name.as_str()]], e, opts, &path))
                .collect();
            for b in done {
                let b = b?;
                f.write_all(&b)?;
                bytes_written += b.len() as u64;
            }
            start = end;
        }
        f.commit()?;
        for e in &layout {
            weight_map.insert(e.name.clone(), serde_json::json!(file));
            total += e.nbytes() as u64;
        }
        files.push(path);
    }
    if ns > 1 {
        let mut sorted: Vec<_> = weight_map.into_iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let index = serde_json::json!({
            "metadata": {"total_size": total},
            "weight_map": serde_json::Map::from_iter(sorted),
        });
        let mut text = serde_json::to_string_pretty(&index).expect("json");
        text.push('\n');
        write_file(&old_index, text.as_bytes())?;
        files.push(old_index);
    }
    let donor_path = &p.models[donor].reference.path;
    let tok_dir: Option<PathBuf> = match (tok_src, &cfg.tokenizer_source) {
        (Some(usize::MAX), Some((TokenizerSource::Model(r), _))) => Some(r.path.clone()),
        (Some(i), _) => Some(p.models[i].reference.path.clone()),
        (None, _) => Some(donor_path.clone()),
    };
    let layers = cfg.slices.is_some().then_some(p.layers);
    files.extend(write_companions(
        out,
        donor_path,
        layers,
        p.out_dtype,
        tok_dir.as_deref(),
    )?);
    Ok(RecipeReport {
        method: p.spec.name.to_string(),
        models: p.models.len(),
        tensors: p.tasks.len(),
        layers: p.layers,
        bytes: bytes_written,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::yaml::Condition;

    #[test]
    fn layer_names() {
        assert_eq!(
            split_layer("model.layers.12.mlp.up_proj.weight"),
            Some(("model.layers.", 12, ".mlp.up_proj.weight"))
        );
        assert_eq!(
            split_layer("transformer.h.3.attn.c_attn.weight").map(|x| x.1),
            Some(3)
        );
        assert_eq!(split_layer("model.embed_tokens.weight"), None);
        assert_eq!(split_layer("model.layers.x.weight"), None);
    }

    #[test]
    fn gradients_interpolate_as_mergekit() {
        let g = Setting::Gradient(vec![Value::Int(0), Value::Float(0.5), Value::Int(1)]);
        let at = |t: f64| evaluate(Ty::Float, &g, "x", t).unwrap().unwrap().f();
        assert_eq!(at(0.0), 0.0);
        assert_eq!(at(1.0), 1.0);
        assert_eq!(at(0.25), 0.25);
        assert_eq!(at(1.0 / 3.0), (1.0 - 2.0 / 3.0) * 0.0 + (2.0 / 3.0) * 0.5);
        let b = Setting::Gradient(vec![Value::Bool(false), Value::Bool(true)]);
        assert_eq!(
            evaluate(Ty::Bool, &b, "x", 0.9).unwrap(),
            Some(Val::B(false))
        );
        assert_eq!(
            evaluate(Ty::Bool, &b, "x", 1.0).unwrap(),
            Some(Val::B(true))
        );
        let c = Setting::Conditions(vec![
            Condition {
                filter: Some("self_attn".into()),
                value: Setting::Scalar(Value::Float(0.2)),
                line: 1,
            },
            Condition {
                filter: None,
                value: Setting::Scalar(Value::Str("1e-1".into())),
                line: 2,
            },
        ]);
        assert_eq!(
            evaluate(Ty::Float, &c, "model.layers.0.self_attn.q_proj.weight", 0.0).unwrap(),
            Some(Val::F(0.2))
        );
        assert_eq!(
            evaluate(Ty::Float, &c, "model.layers.0.mlp.up_proj.weight", 0.0).unwrap(),
            Some(Val::F(0.1))
        );
        assert!(evaluate(
            Ty::Int,
            &Setting::Gradient(vec![Value::Int(1), Value::Int(2)]),
            "x",
            0.5
        )
        .is_err());
    }
}
