//! LoRA adapters in PEFT's format: configuration, target selection, the adapter folder
//! (`adapter_config.json` + `adapter_model.safetensors`), and folding an adapter into
//! base weights (W += scale·B·A).
//!
//! A Linear module `m` of shape `[out, in]` gets `A` `[r, in]` and `B` `[out, r]`; a Conv2d
//! `[out, in, k, k]` gets `A` `[r, in, k, k]` (same stride and padding) and `B`
//! `[out, r, 1, 1]`, as PEFT builds them. In the adapter file they are named
//! `base_model.model.<m>.lora_A.weight` and `base_model.model.<m>.lora_B.weight`. Grouped
//! convs and convs with `static_padding` are not targets (PEFT's LoRA conv supports neither:
//! its `A` would run on the unpadded input).

use crate::arch::{ArchSpec, Layer, ParamKind, ParamSpec};
use crate::checkpoint::{write_checkpoint, Checkpoint, OwnedTensor};
use crate::error::{MnemoError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod attach;
pub mod peft_check;

/// PEFT's key prefix for a model wrapped by `get_peft_model`.
pub const KEY_PREFIX: &str = "base_model.model.";
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The adapter's hyper-parameters (PEFT's `LoraConfig` fields of the same names).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Module names the adapter applies to (resolved, exact).
    pub targets: Vec<String>,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Scale α/√r (rank-stabilised LoRA) instead of α/r.
    pub rslora: bool,
    /// PEFT's `rank_pattern` and `alpha_pattern`: per-module ranks and α, as (key, value)
    /// in the file's order (empty for adapters mnemo starts).
    pub rank_pattern: Vec<(String, usize)>,
    pub alpha_pattern: Vec<(String, f64)>,
    /// DoRA (`use_dora`): each adapted weight's rows rescaled to a learnt magnitude
    /// (linear modules).
    pub dora: bool,
    /// PEFT's `modules_to_save`: modules trained in full beside the adapter and saved in
    /// it (a new output head, the norms), selected by [`saved_by`]'s rule.
    pub modules_to_save: Vec<String>,
}

/// PEFT's `get_pattern_key` rule: the first key `k` whose `(.*\.)?(k)$` matches the start of
/// the module's name (keys are regular expressions).
fn pattern_value<T: Copy>(pattern: &[(String, T)], module: &str) -> Option<T> {
    pattern.iter().find_map(|(k, v)| {
        fancy_regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
            .ok()?
            .is_match(module)
            .ok()?
            .then_some(*v)
    })
}

impl LoraConfig {
    /// A config with one rank and α for every module.
    pub fn new(targets: Vec<String>, rank: usize, alpha: f64, dropout: f64, rslora: bool) -> Self {
        LoraConfig {
            targets,
            rank,
            alpha,
            dropout,
            rslora,
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            dora: false,
            modules_to_save: Vec::new(),
        }
    }

    /// The rank of `module`'s adapter (`rank_pattern`, else r).
    pub fn rank_of(&self, module: &str) -> usize {
        pattern_value(&self.rank_pattern, module).unwrap_or(self.rank)
    }

    /// The factor applied to `module`'s B·A: α/r, or α/√r with rsLoRA, each from the
    /// patterns when they name the module (PEFT's `scaling[adapter]`).
    pub fn scale_of(&self, module: &str) -> f64 {
        let r = self.rank_of(module) as f64;
        let alpha = pattern_value(&self.alpha_pattern, module).unwrap_or(self.alpha);
        if self.rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    /// The factor applied to B·A of a module no pattern names.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// `adapter_config.json` as PEFT writes it (the fields PEFT needs to load it).
    pub fn to_peft_json(&self) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": null,
            "base_model_name_or_path": null,
            "r": self.rank,
            "lora_alpha": self.alpha,
            "lora_dropout": self.dropout,
            "target_modules": self.targets,
            "bias": "none",
            "use_rslora": self.rslora,
            "use_dora": self.dora,
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "modules_to_save": if self.modules_to_save.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::json!(self.modules_to_save)
            },
            "inference_mode": true,
            "rank_pattern": serde_json::Map::from_iter(
                self.rank_pattern.iter().map(|(k, v)| (k.clone(), serde_json::json!(v)))
            ),
            "alpha_pattern": serde_json::Map::from_iter(
                self.alpha_pattern.iter().map(|(k, v)| (k.clone(), serde_json::json!(v)))
            ),
        })
    }

    /// Reads PEFT's `adapter_config.json`, refusing settings this implementation does not
    /// reproduce (bias training, fan_in_fan_out).
    pub fn from_peft_json(path: &Path, text: &str) -> Result<LoraConfig> {
        let bad = |reason: String| MnemoError::InvalidAdapter {
            path: path.to_path_buf(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        peft_check::check_fields(path, &v)?;
        peft_check::targets(path, &v)?;
        if v.get("peft_type").and_then(|t| t.as_str()) != Some("LORA") {
            return Err(bad("'peft_type' is not \"LORA\"".into()));
        }
        let rank =
            v.get("r")
                .and_then(|r| r.as_u64())
                .filter(|&r| r > 0)
                .ok_or_else(|| bad("'r' must be a positive integer".into()))? as usize;
        let alpha = v
            .get("lora_alpha")
            .and_then(|a| a.as_f64())
            .ok_or_else(|| bad("'lora_alpha' must be a number".into()))?;
        let dropout = v
            .get("lora_dropout")
            .and_then(|d| d.as_f64())
            .unwrap_or(0.0);
        let rslora = v
            .get("use_rslora")
            .and_then(|d| d.as_bool())
            .unwrap_or(false);
        let targets = match v.get("target_modules") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("'target_modules' must be a list of names".into()))?,
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => return Err(bad("'target_modules' is missing".into())),
        };
        let unsupported = |key: &str, allowed: &serde_json::Value| {
            v.get(key)
                .filter(|x| !x.is_null() && *x != allowed)
                .cloned()
        };
        for (key, allowed) in [
            ("bias", serde_json::json!("none")),
            ("fan_in_fan_out", serde_json::json!(false)),
            ("lora_bias", serde_json::json!(false)),
        ] {
            if let Some(x) = unsupported(key, &allowed) {
                return Err(bad(format!("'{key}' = {x} is not supported")));
            }
        }
        // Per-module ranks and α: objects of regular-expression keys, read in order.
        let pattern = |key: &str| -> Result<Vec<(String, f64)>> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(Vec::new()),
                Some(serde_json::Value::Object(o)) => o
                    .iter()
                    .map(|(k, x)| {
                        fancy_regex::Regex::new(k).map_err(|e| {
                            bad(format!(
                                "'{key}' key \"{k}\" is not a regular expression: {e}"
                            ))
                        })?;
                        x.as_f64()
                            .filter(|f| f.is_finite())
                            .map(|f| (k.clone(), f))
                            .ok_or_else(|| {
                                bad(format!("'{key}' \"{k}\" = {x} is not a finite number"))
                            })
                    })
                    .collect(),
                Some(x) => Err(bad(format!("'{key}' = {x} is not an object"))),
            }
        };
        let rank_pattern = pattern("rank_pattern")?
            .into_iter()
            .map(|(k, r)| {
                if r >= 1.0 && r.fract() == 0.0 && r <= (1u64 << 20) as f64 {
                    Ok((k, r as usize))
                } else {
                    Err(bad(format!(
                        "'rank_pattern' \"{k}\" = {r} is not a positive integer rank"
                    )))
                }
            })
            .collect::<Result<_>>()?;
        let alpha_pattern = pattern("alpha_pattern")?;
        let dora = v.get("use_dora").and_then(|d| d.as_bool()).unwrap_or(false);
        let modules_to_save = match v.get("modules_to_save") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|t| t.as_str().filter(|t| !t.is_empty()).map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("'modules_to_save' must be a list of module names".into()))?,
            Some(x) => {
                return Err(bad(format!(
                    "'modules_to_save' = {x} is not a list of module names"
                )))
            }
        };
        Ok(LoraConfig {
            targets,
            rank,
            alpha,
            dropout,
            rslora,
            rank_pattern,
            alpha_pattern,
            dora,
            modules_to_save,
        })
    }
}

/// What kind of module a target is, with what `A` and `B` need.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetKind {
    Linear {
        in_features: usize,
        out_features: usize,
    },
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel_size: usize,
        stride: usize,
        padding: usize,
    },
}

impl TargetKind {
    pub fn a_shape(&self, r: usize) -> Vec<usize> {
        match *self {
            TargetKind::Linear { in_features, .. } => vec![r, in_features],
            TargetKind::Conv2d {
                in_channels,
                kernel_size,
                ..
            } => vec![r, in_channels, kernel_size, kernel_size],
        }
    }

    pub fn b_shape(&self, r: usize) -> Vec<usize> {
        match *self {
            TargetKind::Linear { out_features, .. } => vec![out_features, r],
            TargetKind::Conv2d { out_channels, .. } => vec![out_channels, r, 1, 1],
        }
    }

    /// Fan-in of `A` (its kaiming-uniform bound is 1/√fan_in).
    pub fn a_fan_in(&self) -> usize {
        match *self {
            TargetKind::Linear { in_features, .. } => in_features,
            TargetKind::Conv2d {
                in_channels,
                kernel_size,
                ..
            } => in_channels * kernel_size * kernel_size,
        }
    }
}

/// Tensor names of module `m`'s adapter weights inside a model (no PEFT prefix).
pub fn a_name(m: &str) -> String {
    format!("{m}.lora_A.weight")
}

pub fn b_name(m: &str) -> String {
    format!("{m}.lora_B.weight")
}

/// DoRA's magnitude vector of module `m` (`[out]`), as PEFT names it in the adapter file.
pub fn magnitude_name(m: &str) -> String {
    format!("{m}.lora_magnitude_vector")
}

/// `*` matches any run of characters, `?` one character; anything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// The `--targets` word for PEFT's `target_modules="all-linear"`.
pub const ALL_LINEAR: &str = "all-linear";

/// The Linear and Conv2d modules of `spec` that `patterns` select: a pattern matches a
/// module whose name equals it, ends with `.pattern` (as PEFT matches names), or matches it
/// as a glob; `all-linear` selects every linear layer but the output layer, as PEFT does.
/// Every pattern must select something.
pub fn resolve_targets(
    spec: &ArchSpec,
    patterns: &[String],
) -> Result<BTreeMap<String, TargetKind>> {
    // Every Linear and Conv2d, containers' children included, by its full dotted name
    // (`layer1.0.conv1`, `encoder.layers.0.self_attention.q_proj`).
    let mut modules = Vec::new();
    let mut tied_output = false;
    spec.visit(&mut |name, layer| match *layer {
        Layer::TiedLinear { .. } => tied_output = true,
        Layer::Linear {
            in_features,
            out_features,
            ..
        } => modules.push((
            name.to_string(),
            Ok(TargetKind::Linear {
                in_features,
                out_features,
            }),
        )),
        Layer::Conv2d {
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            groups,
            static_padding,
            ..
        } => modules.push((
            name.to_string(),
            if groups != 1 {
                Err("is a grouped conv2d; LoRA on grouped convolutions is not supported")
            } else if static_padding.is_some() {
                // PEFT's LoRA conv runs A on the unpadded input (Conv2dStaticSamePadding pads
                // inside its own forward), so its output would not even match the base's.
                Err("is a conv2d with static_padding (TensorFlow \"SAME\" padding); LoRA on it is not supported, as PEFT cannot wrap such a convolution")
            } else {
                Ok(TargetKind::Conv2d {
                    in_channels,
                    out_channels,
                    kernel_size,
                    stride,
                    padding,
                })
            },
        )),
        _ => {}
    });
    // PEFT's `all-linear`: every linear layer but the output layer (transformers' output
    // embedding, `lm_head`; none when it is tied to the input embedding, which is no linear;
    // in a model without either, the last linear in state-dict order).
    let linears: Vec<&str> = modules
        .iter()
        .filter(|(_, k)| matches!(k, Ok(TargetKind::Linear { .. })))
        .map(|(n, _)| n.as_str())
        .collect();
    let output_layer = match linears.iter().find(|n| **n == "lm_head") {
        Some(n) => Some(n.to_string()),
        None if tied_output => None,
        None => linears.last().map(|n| n.to_string()),
    };
    let mut out = BTreeMap::new();
    for pat in patterns {
        let mut hit = false;
        for (name, kind) in &modules {
            let matches = if pat == ALL_LINEAR {
                matches!(kind, Ok(TargetKind::Linear { .. })) && Some(name) != output_layer.as_ref()
            } else {
                name == pat || name.ends_with(&format!(".{pat}")) || glob_match(pat, name)
            };
            if !matches {
                continue;
            }
            let kind = kind.clone().map_err(|why| MnemoError::InvalidTargets {
                reason: format!("module '{name}' {why}"),
            })?;
            out.insert(name.clone(), kind);
            hit = true;
        }
        if !hit {
            let names: Vec<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
            return Err(MnemoError::InvalidTargets {
                reason: format!(
                    "'{pat}' matches no linear or conv2d module (the model has: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            });
        }
    }
    Ok(out)
}

/// Whether the tensor `name` (`model.norm.weight`) belongs to a module that PEFT's
/// `modules_to_save` rule saves: some enclosing module's full name ends with one of `keys`
/// as a plain string (PEFT's `key.endswith(target)` in `_set_trainable`, so `norm` saves
/// `model.norm` and every `input_layernorm` too; `head` saves `lm_head`).
pub fn saved_by(keys: &[String], name: &str) -> bool {
    name.match_indices('.')
        .any(|(i, _)| keys.iter().any(|k| name[..i].ends_with(k.as_str())))
}

/// The tensors of `spec` that `modules_to_save` = `keys` trains in full, in state-dict
/// order. Refused: a module whose weight is tied (`tie_word_embeddings`: PEFT would train
/// a copy the output head does not use, peft#2777), and one with running statistics
/// (batchnorm: its statistics would have to be saved too). With `strict` (a flag the user
/// typed), every key must save some tensor; PEFT's own lists may name modules a model
/// lacks (`classifier`, `score`).
pub fn resolve_saved(spec: &ArchSpec, keys: &[String], strict: bool) -> Result<Vec<ParamSpec>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut tied = Vec::new();
    spec.visit(&mut |name, layer| {
        if let Layer::TiedLinear { weight } = layer {
            tied.push((name.to_string(), weight.clone()));
        }
    });
    let bad = |reason: String| MnemoError::InvalidTargets { reason };
    for (head, weight) in &tied {
        for k in keys {
            if head.ends_with(k.as_str()) || saved_by(keys, weight) {
                return Err(bad(format!(
                    "modules_to_save '{k}': '{head}' is tied to '{weight}' (tie_word_embeddings); a saved copy of either would untie them, which PEFT warns against (peft#2777)"
                )));
            }
        }
    }
    let saved: Vec<ParamSpec> = spec
        .params()
        .into_iter()
        .filter(|p| saved_by(keys, &p.name))
        .collect();
    if let Some(p) = saved.iter().find(|p| p.kind != ParamKind::Trainable) {
        return Err(bad(format!(
            "modules_to_save: '{}' is a running statistic (batchnorm); saving such a module is not supported",
            p.name
        )));
    }
    if strict {
        if let Some(k) = keys
            .iter()
            .find(|k| !saved.iter().any(|p| saved_by(&[k.to_string()], &p.name)))
        {
            return Err(bad(format!(
                "modules_to_save '{k}' matches no module with weights (a module is saved when its full name ends with it, as PEFT matches)"
            )));
        }
    }
    Ok(saved)
}

/// DoRA's fold after W + scale·B·A (PEFT's `merge_and_unload`): each row i of the
/// `[out, in]` weight rescaled to the magnitude m_i, W_i · m_i / ‖W_i‖₂ (the row norm of the
/// adapted weight, in f64).
pub fn dora_rescale(w: &mut [f32], rows: usize, magnitude: &[f32]) {
    let norms = row_norms(w, rows);
    let cols = w.len() / rows.max(1);
    for ((row, &m), norm) in w.chunks_exact_mut(cols).zip(magnitude).zip(norms) {
        let f = m as f64 / norm;
        row.iter_mut().for_each(|x| *x = (*x as f64 * f) as f32);
    }
}

/// The L2 norm of each of the `rows` rows of `w`, in f64: DoRA's ‖W‖ per output.
pub fn row_norms(w: &[f32], rows: usize) -> Vec<f64> {
    w.chunks_exact(w.len() / rows.max(1))
        .map(|row| row.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt())
        .collect()
}

/// One module's adapter weights.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleAdapter {
    pub a: Vec<f32>,
    pub a_shape: Vec<usize>,
    pub b: Vec<f32>,
    pub b_shape: Vec<usize>,
}

/// An adapter: configuration and weights by module name.
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    pub config: LoraConfig,
    pub modules: BTreeMap<String, ModuleAdapter>,
    /// DoRA's magnitude vector per module (`lora_magnitude_vector`, [out]).
    pub magnitudes: BTreeMap<String, Vec<f32>>,
    /// The tensors of the saved modules (`modules_to_save`), by their name in the model
    /// (`lm_head.weight`): shape and values, which replace the base's when folded.
    pub saved: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

fn invalid(path: &Path, reason: impl Into<String>) -> MnemoError {
    MnemoError::InvalidAdapter {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Adapter {
    /// Reads an adapter folder written by PEFT's `save_pretrained` or by mnemo.
    pub fn read_dir(dir: &Path) -> Result<Adapter> {
        let cfg_path = dir.join(CONFIG_FILE);
        let text = crate::fsutil::read_to_string(&cfg_path)?;
        let config = LoraConfig::from_peft_json(&cfg_path, &text)?;
        let wpath = dir.join(WEIGHTS_FILE);
        let ckpt = Checkpoint::open(&wpath)?;
        let mut parts: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
        let mut magnitude_names: BTreeMap<String, String> = BTreeMap::new();
        let mut saved = BTreeMap::new();
        for name in ckpt.names() {
            let rest = name.strip_prefix(KEY_PREFIX).ok_or_else(|| {
                invalid(
                    &wpath,
                    format!("tensor '{name}' does not start with '{KEY_PREFIX}'"),
                )
            })?;
            if let Some(m) = rest.strip_suffix(".lora_A.weight") {
                parts.entry(m.to_string()).or_default().0 = Some(name.to_string());
            } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
                parts.entry(m.to_string()).or_default().1 = Some(name.to_string());
            } else if let Some(m) = rest
                .strip_suffix(".lora_magnitude_vector")
                .or_else(|| rest.strip_suffix(".lora_magnitude_vector.weight"))
                .filter(|_| config.dora)
            {
                magnitude_names.insert(m.to_string(), name.to_string());
            } else if saved_by(&config.modules_to_save, rest) {
                let e = ckpt.entry(name)?;
                if !e.dtype.is_float() {
                    return Err(invalid(
                        &wpath,
                        format!("saved tensor '{name}' is {}; saved modules with integer state (batchnorm's counter) are not supported", e.dtype),
                    ));
                }
                let v = ckpt.to_f32(name)?;
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(invalid(
                        &wpath,
                        format!("'{name}' element {i} is not finite"),
                    ));
                }
                saved.insert(rest.to_string(), (e.shape.clone(), v));
            } else {
                return Err(invalid(
                    &wpath,
                    format!("tensor '{name}' is not a LoRA A or B weight, a DoRA magnitude of a use_dora adapter, nor in a module of modules_to_save {:?} (LoRA biases are not supported)", config.modules_to_save),
                ));
            }
        }
        if parts.is_empty() {
            return Err(invalid(&wpath, "holds no LoRA weights"));
        }
        if let Some(k) = config
            .modules_to_save
            .iter()
            .find(|k| config.targets.contains(k))
        {
            return Err(invalid(
                &cfg_path,
                format!("'{k}' is in both target_modules and modules_to_save"),
            ));
        }
        let mut modules = BTreeMap::new();
        for (m, (a, b)) in parts {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(invalid(
                    &wpath,
                    format!("module '{m}' lacks its lora_A or lora_B weight"),
                ));
            };
            let (ea, eb) = (ckpt.entry(&a)?, ckpt.entry(&b)?);
            let r = config.rank_of(&m);
            let linear = ea.shape.len() == 2 && eb.shape.len() == 2;
            let conv = ea.shape.len() == 4 && eb.shape.len() == 4 && eb.shape[2..] == [1, 1];
            if !(linear || conv) || ea.shape[0] != r || eb.shape[1] != r {
                return Err(invalid(
                    &wpath,
                    format!(
                        "module '{m}': lora_A {:?} and lora_B {:?} are not a rank-{r} pair ([r, in] and [out, r], or conv [r, in, k, k] and [out, r, 1, 1])",
                        ea.shape, eb.shape
                    ),
                ));
            }
            let (va, vb) = (ckpt.to_f32(&a)?, ckpt.to_f32(&b)?);
            for (n, v) in [(&a, &va), (&b, &vb)] {
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(invalid(&wpath, format!("'{n}' element {i} is not finite")));
                }
            }
            modules.insert(
                m,
                ModuleAdapter {
                    a: va,
                    a_shape: ea.shape.clone(),
                    b: vb,
                    b_shape: eb.shape.clone(),
                },
            );
        }
        // DoRA: a magnitude [out] for every adapted linear module, none for anything else.
        let mut magnitudes = BTreeMap::new();
        if config.dora {
            for (m, w) in &modules {
                let Some(name) = magnitude_names.remove(m) else {
                    return Err(invalid(
                        &wpath,
                        format!("use_dora is set but module '{m}' has no lora_magnitude_vector"),
                    ));
                };
                let out = w.b_shape[0];
                let e = ckpt.entry(&name)?;
                if w.a_shape.len() != 2 || e.shape != [out] {
                    return Err(invalid(
                        &wpath,
                        format!(
                            "module '{m}': DoRA magnitude {:?} for lora_B {:?} (DoRA is read for linear modules, magnitude [out])",
                            e.shape, w.b_shape
                        ),
                    ));
                }
                let v = ckpt.to_f32(&name)?;
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(invalid(
                        &wpath,
                        format!("'{name}' element {i} is not finite"),
                    ));
                }
                magnitudes.insert(m.clone(), v);
            }
            if let Some(m) = magnitude_names.keys().next() {
                return Err(invalid(
                    &wpath,
                    format!("a DoRA magnitude for module '{m}', which has no lora_A/lora_B"),
                ));
            }
        }
        Ok(Adapter {
            config,
            modules,
            magnitudes,
            saved,
        })
    }

    /// Checks the saved modules' tensors against a base's tensors (`shape_of` a name, `None`
    /// when absent; `names` all of them): each saved tensor replaces one of the same shape,
    /// and a saved module brings all its tensors (PEFT saves the whole module).
    pub fn check_saved<'a>(
        &self,
        shape_of: impl Fn(&str) -> Option<Vec<usize>>,
        names: impl IntoIterator<Item = &'a str>,
    ) -> std::result::Result<(), String> {
        for (name, (shape, _)) in &self.saved {
            match shape_of(name) {
                None => return Err(format!("saved tensor '{name}' is not in the base")),
                Some(s) if &s != shape => {
                    return Err(format!(
                        "saved tensor '{name}' is {shape:?}, the base's is {s:?}"
                    ))
                }
                _ => {}
            }
        }
        for n in names {
            if saved_by(&self.config.modules_to_save, n) && !self.saved.contains_key(n) {
                return Err(format!(
                    "the base's '{n}' is in a module of modules_to_save {:?}, but the adapter holds no copy of it",
                    self.config.modules_to_save
                ));
            }
        }
        Ok(())
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` into `dir` (created when
    /// missing), each atomically; `metadata` goes into the weights file.
    pub fn write_dir(&self, dir: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| MnemoError::io(dir, e))?;
        let mut tensors = Vec::new();
        for (m, w) in &self.modules {
            tensors.push(OwnedTensor::f32(
                format!("{KEY_PREFIX}{}", a_name(m)),
                w.a_shape.clone(),
                &w.a,
            ));
            tensors.push(OwnedTensor::f32(
                format!("{KEY_PREFIX}{}", b_name(m)),
                w.b_shape.clone(),
                &w.b,
            ));
        }
        for (m, v) in &self.magnitudes {
            tensors.push(OwnedTensor::f32(
                format!("{KEY_PREFIX}{}", magnitude_name(m)),
                vec![v.len()],
                v,
            ));
        }
        for (name, (shape, v)) in &self.saved {
            tensors.push(OwnedTensor::f32(
                format!("{KEY_PREFIX}{name}"),
                shape.clone(),
                v,
            ));
        }
        write_checkpoint(dir.join(WEIGHTS_FILE), tensors, metadata)?;
        let cfg = dir.join(CONFIG_FILE);
        let mut text =
            serde_json::to_string_pretty(&self.config.to_peft_json()).expect("config serialises");
        text.push('\n');
        let mut f = crate::checkpoint::AtomicFile::create(&cfg)?;
        f.write_all(text.as_bytes())?;
        f.commit()
    }

    /// Checks that every module exists in `spec` with the shapes the adapter implies.
    pub fn check_against(
        &self,
        spec: &ArchSpec,
        origin: &Path,
    ) -> Result<BTreeMap<String, TargetKind>> {
        let names: Vec<String> = self.modules.keys().cloned().collect();
        let kinds = resolve_targets(spec, &names).map_err(|e| invalid(origin, e.to_string()))?;
        for (m, w) in &self.modules {
            let k = kinds
                .get(m)
                .ok_or_else(|| invalid(origin, format!("module '{m}' is not in the model")))?;
            let r = self.config.rank_of(m);
            if w.a_shape != k.a_shape(r) || w.b_shape != k.b_shape(r) {
                return Err(invalid(
                    origin,
                    format!(
                        "module '{m}': lora_A {:?} / lora_B {:?}, but the model needs {:?} / {:?}",
                        w.a_shape,
                        w.b_shape,
                        k.a_shape(r),
                        k.b_shape(r)
                    ),
                ));
            }
        }
        let params = spec.params();
        let saved = resolve_saved(spec, &self.config.modules_to_save, false)
            .map_err(|e| invalid(origin, e.to_string()))?;
        self.check_saved(
            |n| params.iter().find(|p| p.name == n).map(|p| p.shape.clone()),
            saved.iter().map(|p| p.name.as_str()),
        )
        .map_err(|e| invalid(origin, e))?;
        Ok(kinds
            .into_iter()
            .filter(|(m, _)| self.modules.contains_key(m))
            .collect())
    }
}

/// W += scale·B·A for a weight `w` of `w_shape` ([out, in] or [out, in, k, k]), with
/// `a` [r, in(·k·k)] and `b` [out, r]; products summed in f64, the result rounded once.
pub fn fold(
    w: &mut [f32],
    w_shape: &[usize],
    m: &ModuleAdapter,
    scale: f64,
    origin: &Path,
    tensor: &str,
) -> Result<()> {
    let out = m.b_shape[0];
    let r = m.b_shape[1];
    let cols: usize = m.a_shape[1..].iter().product();
    let want: Vec<usize> = std::iter::once(out)
        .chain(m.a_shape[1..].iter().copied())
        .collect();
    if w_shape != want.as_slice() || m.a_shape[0] != r {
        return Err(MnemoError::ShapeMismatch {
            path: PathBuf::from(origin),
            tensor: tensor.to_string(),
            found: w_shape.to_vec(),
            expected: want,
        });
    }
    for o in 0..out {
        let brow = &m.b[o * r..(o + 1) * r];
        for c in 0..cols {
            let mut s = 0f64;
            for (k, &bv) in brow.iter().enumerate() {
                s += bv as f64 * m.a[k * cols + c] as f64;
            }
            let i = o * cols + c;
            w[i] = (w[i] as f64 + scale * s) as f32;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_targets() {
        assert!(glob_match("*.q_proj", "blocks.0.q_proj"));
        assert!(!glob_match("*.q_proj", "blocks.0.k_proj"));
        assert!(glob_match("trunk.?", "trunk.2"));
        let spec = ArchSpec::parse("mlp:4-8-8-3").unwrap();
        let t = resolve_targets(&spec, &["0".into(), "4".into()]).unwrap();
        assert_eq!(t.keys().collect::<Vec<_>>(), ["0", "4"]);
        assert_eq!(t["0"].a_shape(2), vec![2, 4]);
        assert_eq!(t["4"].b_shape(2), vec![3, 2]);
        let e = resolve_targets(&spec, &["1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("'1' matches no linear"), "{e}");
        assert_eq!(resolve_targets(&spec, &["*".into()]).unwrap().len(), 3);
        // all-linear: all but the output layer.
        let t = resolve_targets(&spec, &[ALL_LINEAR.into()]).unwrap();
        assert_eq!(t.keys().collect::<Vec<_>>(), ["0", "2"]);
    }

    /// PEFT's all-linear on a language model: every projection, never `lm_head`.
    #[test]
    fn all_linear_leaves_out_the_lm_head() {
        let cfg = r#"{"model_type": "llama", "vocab_size": 32, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "tie_word_embeddings": false}"#;
        let spec = ArchSpec::Tree(crate::arch::hf::causal_lm(cfg).unwrap());
        let t = resolve_targets(&spec, &[ALL_LINEAR.into()]).unwrap();
        assert_eq!(t.len(), 2 * 7);
        assert!(!t.contains_key("lm_head"));
        assert!(t.contains_key("model.layers.1.mlp.down_proj"));
        // Tied: the output layer is the embedding, so every linear is a target.
        let tied = cfg.replace("false", "true");
        let spec = ArchSpec::Tree(crate::arch::hf::causal_lm(&tied).unwrap());
        let t = resolve_targets(&spec, &[ALL_LINEAR.into()]).unwrap();
        assert_eq!(t.len(), 2 * 7);
        assert!(t.contains_key("model.layers.1.mlp.down_proj"));
    }

    /// A statically padded conv (EfficientNet-Lite's stem) is refused by name; a plain
    /// conv beside it is an ordinary target.
    #[test]
    fn statically_padded_convs_are_not_targets() {
        let spec = ArchSpec::parse(
            r#"{"type":"module","children":{
                "stem":{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":3,
                        "stride":2,"bias":false,"static_padding":[0,1,0,1]},
                "act":{"type":"relu6"},
                "pw":{"type":"conv2d","in_channels":4,"out_channels":6,"kernel_size":1}}}"#,
        )
        .unwrap();
        let e = resolve_targets(&spec, &["stem".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("module 'stem'") && e.contains("static_padding"),
            "{e}"
        );
        let e = resolve_targets(&spec, &["*".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("module 'stem'"), "{e}");
        let t = resolve_targets(&spec, &["pw".into()]).unwrap();
        assert_eq!(t["pw"].a_shape(2), vec![2, 4, 1, 1]);
    }

    #[test]
    fn fold_is_w_plus_scaled_ba() {
        // W [2,3] = 0, B [2,1] = [1,2], A [1,3] = [1,0,-1], scale 0.5.
        let m = ModuleAdapter {
            a: vec![1.0, 0.0, -1.0],
            a_shape: vec![1, 3],
            b: vec![1.0, 2.0],
            b_shape: vec![2, 1],
        };
        let mut w = vec![0.0; 6];
        fold(&mut w, &[2, 3], &m, 0.5, Path::new("x"), "w").unwrap();
        assert_eq!(w, vec![0.5, 0.0, -0.5, 1.0, 0.0, -1.0]);
        assert!(fold(&mut w, &[3, 2], &m, 0.5, Path::new("x"), "w").is_err());
    }

    #[test]
    fn config_round_trip_and_refusals() {
        let mut c = LoraConfig::new(vec!["0".into(), "2".into()], 4, 8.0, 0.05, true);
        let p = Path::new("adapter_config.json");
        let back = LoraConfig::from_peft_json(p, &c.to_peft_json().to_string()).unwrap();
        assert_eq!(back, c);
        assert!((c.scale() - 4.0).abs() < 1e-12);
        // Patterns: the first key matching the end of the name (PEFT's get_pattern_key).
        c.rslora = false;
        c.rank_pattern = vec![("v_proj".into(), 2), ("layers\\.1\\..*".into(), 8)];
        c.alpha_pattern = vec![("down_proj".into(), 3.0)];
        assert_eq!(c.rank_of("model.layers.0.self_attn.v_proj"), 2);
        assert_eq!(c.rank_of("model.layers.1.self_attn.v_proj"), 2);
        assert_eq!(c.rank_of("model.layers.1.self_attn.q_proj"), 8);
        assert_eq!(c.rank_of("model.layers.0.self_attn.q_proj"), 4);
        assert_eq!(c.rank_of("model.layers.0.self_attn.xv_proj"), 4);
        assert!((c.scale_of("model.layers.0.mlp.down_proj") - 0.75).abs() < 1e-12);
        let back = LoraConfig::from_peft_json(p, &c.to_peft_json().to_string()).unwrap();
        assert_eq!(back, c);
        for bad in [
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["a"],"rank_pattern":{"a":0}}"#,
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["a"],"rank_pattern":{"(":2}}"#,
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["a"],"alpha_pattern":{"a":"x"}}"#,
            r#"{"peft_type":"LORA","r":4,"lora_alpha":8,"target_modules":["a"],"rank_pattern":[1]}"#,
        ] {
            assert!(LoraConfig::from_peft_json(p, bad).is_err(), "{bad}");
        }
        // DoRA is read (and written back); a switch that is not a boolean is refused.
        let mut v = c.to_peft_json();
        v["use_dora"] = true.into();
        assert!(LoraConfig::from_peft_json(p, &v.to_string()).unwrap().dora);
        v["use_dora"] = "yes".into();
        let e = LoraConfig::from_peft_json(p, &v.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains("use_dora"), "{e}");
    }
}
