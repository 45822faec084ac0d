//! mergekit's YAML merge configuration (`mergekit-yaml CONFIG OUT`), parsed with the line
//! of every node so that each error names it.
//!
//! The schema is mergekit 0.1.5's `MergeConfiguration` (`mergekit/config.py`): `merge_method`,
//! `base_model`, `models` (each `model` with optional `parameters`) or `slices` (each with
//! `sources`: `model`, `layer_range`, `parameters`; and its own `base_model`/`parameters`),
//! global `parameters`, `dtype`, `out_dtype`, `tokenizer_source`. A parameter is a scalar, a
//! gradient (a list of scalars interpolated over the layer index) or conditions
//! (`{filter, value}` mappings, or a list of them, first match wins). mnemo's own methods
//! (`ema`, `fisher`, `sum`) and their parameters are written the same way; `fisher` takes each
//! model's Fisher file as a `fisher:` key next to its `model:`.
//!
//! Differences from mergekit, all on the strict side: an unknown key (mergekit's pydantic
//! models ignore them) and a duplicated key (PyYAML keeps the last) are errors; `modules`,
//! `tokenizer`, `chat_template` and `residual_weight` are refused as not supported yet rather
//! than ignored.
//!
//! YAML crate: `saphyr` (the maintained successor of yaml-rust/yaml-rust2, by the same
//! maintainers; `serde_yaml` is deprecated and `serde_yml` flagged as such). Its `MarkedYaml`
//! keeps a span on every node, so semantic errors (an unknown method, a parameter of the wrong
//! type) name their line, not only syntax errors, and it rejects duplicate keys itself.

use crate::error::{MnemoError, Result};
use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use std::path::{Path, PathBuf};

/// A scalar as YAML gave it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "'{s}'"),
        }
    }
}

/// One parameter's setting, before it is resolved for a tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Setting {
    Scalar(Value),
    /// Interpolated over t (the layer's position in its slice): numbers linearly, other
    /// values picked at ⌊t·(n−1)⌋.
    Gradient(Vec<Value>),
    /// The first condition whose filter is absent, `*`, or a substring of the tensor name.
    Conditions(Vec<Condition>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub filter: Option<String>,
    /// A scalar or a gradient.
    pub value: Setting,
    pub line: usize,
}

/// A parameter name, its setting and the line it is on.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    pub name: String,
    pub setting: Setting,
    pub line: usize,
}

/// `parameters:` in source order.
pub type Params = Vec<Param>;

/// A model reference: a local path (a safetensors file, a shard folder or an HF model folder).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelRef {
    /// As written in the file.
    pub name: String,
    /// The path as written: relative to the working directory, as in mergekit.
    pub path: PathBuf,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelDef {
    pub model: ModelRef,
    pub parameters: Option<Params>,
    /// mnemo's `fisher:` (merge_method fisher): this model's Fisher diagonal file.
    pub fisher: Option<ModelRef>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SliceSource {
    pub model: ModelRef,
    pub layer_range: (usize, usize),
    pub parameters: Option<Params>,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    pub sources: Vec<SliceSource>,
    pub base_model: Option<ModelRef>,
    pub parameters: Option<Params>,
    pub line: usize,
}

/// `tokenizer_source`.
#[derive(Clone, Debug, PartialEq)]
pub enum TokenizerSource {
    Base,
    Union,
    Model(ModelRef),
}

/// A whole configuration file.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeConfig {
    /// The file, for error messages.
    pub path: PathBuf,
    pub merge_method: String,
    pub method_line: usize,
    pub base_model: Option<ModelRef>,
    pub models: Option<Vec<ModelDef>>,
    pub slices: Option<Vec<Slice>>,
    pub parameters: Option<Params>,
    /// (name, line)
    pub dtype: Option<(String, usize)>,
    pub out_dtype: Option<(String, usize)>,
    pub tokenizer_source: Option<(TokenizerSource, usize)>,
    /// The source text, recorded in the output's provenance.
    pub text: String,
}

const TOP_KEYS: &[&str] = &[
    "merge_method",
    "base_model",
    "models",
    "slices",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
];
/// mergekit keys that mnemo does not implement yet: refused, never ignored.
const TOP_UNSUPPORTED: &[&str] = &["modules", "tokenizer", "chat_template"];

type Node<'a> = MarkedYaml<'a>;

struct Ctx<'p> {
    path: &'p Path,
}

impl Ctx<'_> {
    fn err(&self, line: usize, reason: impl Into<String>) -> MnemoError {
        MnemoError::InvalidLine {
            path: self.path.to_path_buf(),
            line,
            reason: reason.into(),
        }
    }
}

fn line(n: &Node) -> usize {
    n.span.start.line()
}

fn kind(n: &Node) -> &'static str {
    match &n.data {
        YamlData::Value(Scalar::Null) => "null",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Integer(_)) => "an integer",
        YamlData::Value(Scalar::FloatingPoint(_)) => "a number",
        YamlData::Value(Scalar::String(_)) => "a string",
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a mapping",
        YamlData::Alias(_) => "an alias",
        _ => "an unsupported YAML node",
    }
}

/// A mapping's entries as (key, key line, value), keys checked against `allowed`.
fn mapping<'n, 'a>(
    cx: &Ctx,
    n: &'n Node<'a>,
    what: &str,
    allowed: &[&str],
    unsupported: &[&str],
) -> Result<Vec<(String, usize, &'n Node<'a>)>> {
    let YamlData::Mapping(m) = &n.data else {
        return Err(cx.err(
            line(n),
            format!("{what} must be a mapping, not {}", kind(n)),
        ));
    };
    let mut out = Vec::with_capacity(m.len());
    for (k, v) in m.iter() {
        let key = match &k.data {
            YamlData::Value(Scalar::String(s)) => s.to_string(),
            _ => {
                return Err(cx.err(
                    line(k),
                    format!("{what}: keys must be strings, not {}", kind(k)),
                ))
            }
        };
        if unsupported.contains(&key.as_str()) {
            return Err(cx.err(
                line(k),
                format!("{what}: '{key}' is a mergekit key that mnemo does not support yet"),
            ));
        }
        if !allowed.is_empty() && !allowed.contains(&key.as_str()) {
            return Err(cx.err(
                line(k),
                format!(
                    "{what}: unknown key '{key}' (expected one of: {})",
                    allowed.join(", ")
                ),
            ));
        }
        out.push((key, line(k), v));
    }
    Ok(out)
}

fn string(cx: &Ctx, n: &Node, what: &str) -> Result<String> {
    match &n.data {
        YamlData::Value(Scalar::String(s)) => Ok(s.to_string()),
        // A bare number or boolean where a name is expected (e.g. `dtype: 16`).
        _ => Err(cx.err(line(n), format!("{what} must be a string, not {}", kind(n)))),
    }
}

fn scalar(cx: &Ctx, n: &Node, what: &str) -> Result<Value> {
    match &n.data {
        YamlData::Value(Scalar::Boolean(b)) => Ok(Value::Bool(*b)),
        YamlData::Value(Scalar::Integer(i)) => Ok(Value::Int(*i)),
        YamlData::Value(Scalar::FloatingPoint(x)) => Ok(Value::Float(x.into_inner())),
        YamlData::Value(Scalar::String(s)) => Ok(Value::Str(s.to_string())),
        _ => Err(cx.err(
            line(n),
            format!(
                "{what} must be a number, boolean or string, not {}",
                kind(n)
            ),
        )),
    }
}

fn is_scalar(n: &Node) -> bool {
    matches!(
        &n.data,
        YamlData::Value(
            Scalar::Boolean(_) | Scalar::Integer(_) | Scalar::FloatingPoint(_) | Scalar::String(_)
        )
    )
}

/// A scalar, or a gradient (a list of scalars).
fn scalar_or_gradient(cx: &Ctx, n: &Node, what: &str) -> Result<Setting> {
    match &n.data {
        YamlData::Sequence(items) if items.iter().all(is_scalar) => Ok(Setting::Gradient(
            items
                .iter()
                .map(|i| scalar(cx, i, what))
                .collect::<Result<_>>()?,
        )),
        YamlData::Sequence(_) => Err(cx.err(
            line(n),
            format!("{what}: a gradient is a list of numbers (or of booleans/strings)"),
        )),
        _ => Ok(Setting::Scalar(scalar(cx, n, what)?)),
    }
}

fn condition(cx: &Ctx, n: &Node, what: &str) -> Result<Condition> {
    let mut filter = None;
    let mut value = None;
    for (k, _, v) in mapping(cx, n, what, &["filter", "value"], &[])? {
        match k.as_str() {
            "filter" => {
                if !matches!(v.data, YamlData::Value(Scalar::Null)) {
                    filter = Some(string(cx, v, &format!("{what}: filter"))?);
                }
            }
            _ => value = Some(scalar_or_gradient(cx, v, &format!("{what}: value"))?),
        }
    }
    let value =
        value.ok_or_else(|| cx.err(line(n), format!("{what}: a condition needs 'value'")))?;
    Ok(Condition {
        filter,
        value,
        line: line(n),
    })
}

fn setting(cx: &Ctx, n: &Node, what: &str) -> Result<Setting> {
    match &n.data {
        YamlData::Mapping(_) => Ok(Setting::Conditions(vec![condition(cx, n, what)?])),
        YamlData::Sequence(items)
            if !items.is_empty()
                && items.iter().all(|i| matches!(i.data, YamlData::Mapping(_))) =>
        {
            Ok(Setting::Conditions(
                items
                    .iter()
                    .map(|i| condition(cx, i, what))
                    .collect::<Result<_>>()?,
            ))
        }
        _ => scalar_or_gradient(cx, n, what),
    }
}

fn params(cx: &Ctx, n: &Node, what: &str) -> Result<Option<Params>> {
    if matches!(n.data, YamlData::Value(Scalar::Null)) {
        return Ok(None);
    }
    let mut out = Vec::new();
    for (k, l, v) in mapping(cx, n, what, &[], &[])? {
        let setting = setting(cx, v, &format!("{what}: '{k}'"))?;
        out.push(Param {
            name: k,
            setting,
            line: l,
        });
    }
    Ok(Some(out))
}

fn model_ref(cx: &Ctx, n: &Node, what: &str) -> Result<ModelRef> {
    let name = string(cx, n, what)?;
    if name.contains('+') && !Path::new(&name).exists() {
        return Err(cx.err(
            line(n),
            format!("{what}: '{name}': LoRA references (model+lora) are not supported: merge the adapter first (`mnemo lora merge`)"),
        ));
    }
    Ok(ModelRef {
        path: PathBuf::from(&name),
        name,
        line: line(n),
    })
}

fn list<'n, 'a>(cx: &Ctx, n: &'n Node<'a>, what: &str) -> Result<&'n [Node<'a>]> {
    match &n.data {
        YamlData::Sequence(items) => Ok(items),
        _ => Err(cx.err(line(n), format!("{what} must be a list, not {}", kind(n)))),
    }
}

fn model_def(cx: &Ctx, n: &Node) -> Result<ModelDef> {
    let what = "models[]";
    let mut model = None;
    let mut parameters = None;
    let mut fisher = None;
    for (k, _, v) in mapping(cx, n, what, &["model", "parameters", "fisher"], &[])? {
        match k.as_str() {
            "model" => model = Some(model_ref(cx, v, "model")?),
            "fisher" => fisher = Some(model_ref(cx, v, "fisher")?),
            _ => parameters = params(cx, v, "parameters")?,
        }
    }
    let model = model.ok_or_else(|| cx.err(line(n), "a models entry needs 'model'"))?;
    Ok(ModelDef {
        model,
        parameters,
        fisher,
    })
}

fn layer_range(cx: &Ctx, n: &Node) -> Result<(usize, usize)> {
    let items = list(cx, n, "layer_range")?;
    let ints: Vec<i64> = items
        .iter()
        .map(|i| match i.data {
            YamlData::Value(Scalar::Integer(v)) => Ok(v),
            _ => Err(cx.err(line(i), "layer_range holds integers")),
        })
        .collect::<Result<_>>()?;
    match ints.as_slice() {
        [a, b] if *a >= 0 && a <= b => Ok((*a as usize, *b as usize)),
        [_, _] => Err(cx.err(
            line(n),
            format!(
                "layer_range [{}, {}]: needs 0 ≤ start ≤ end",
                ints[0], ints[1]
            ),
        )),
        _ => Err(cx.err(line(n), "layer_range is [start, end] (end excluded)")),
    }
}

fn slice(cx: &Ctx, n: &Node) -> Result<Slice> {
    let what = "slices[]";
    let (mut sources, mut base_model, mut parameters) = (None, None, None);
    for (k, _, v) in mapping(
        cx,
        n,
        what,
        &["sources", "base_model", "parameters"],
        &["residual_weight"],
    )? {
        match k.as_str() {
            "sources" => {
                let mut out = Vec::new();
                for s in list(cx, v, "sources")? {
                    let (mut model, mut range, mut p) = (None, None, None);
                    for (k2, _, v2) in mapping(
                        cx,
                        s,
                        "sources[]",
                        &["model", "layer_range", "parameters"],
                        &[],
                    )? {
                        match k2.as_str() {
                            "model" => model = Some(model_ref(cx, v2, "model")?),
                            "layer_range" => range = Some(layer_range(cx, v2)?),
                            _ => p = params(cx, v2, "parameters")?,
                        }
                    }
                    out.push(SliceSource {
                        model: model.ok_or_else(|| cx.err(line(s), "a source needs 'model'"))?,
                        layer_range: range
                            .ok_or_else(|| cx.err(line(s), "a source needs 'layer_range'"))?,
                        parameters: p,
                        line: line(s),
                    });
                }
                sources = Some(out);
            }
            "base_model" => base_model = Some(model_ref(cx, v, "base_model")?),
            _ => parameters = params(cx, v, "parameters")?,
        }
    }
    let sources = sources.ok_or_else(|| cx.err(line(n), "a slice needs 'sources'"))?;
    if sources.is_empty() {
        return Err(cx.err(line(n), "a slice needs at least one source"));
    }
    Ok(Slice {
        sources,
        base_model,
        parameters,
        line: line(n),
    })
}

impl MergeConfig {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| MnemoError::io(path, e))?;
        Self::parse(path, &text)
    }

    /// Parses `text` (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let cx = Ctx { path };
        let docs = MarkedYaml::load_from_str(text)
            .map_err(|e| cx.err(e.marker().line(), format!("invalid YAML: {}", e.info())))?;
        let doc = match docs.as_slice() {
            [d] => d,
            [] => return Err(cx.err(1, "empty configuration")),
            [_, second, ..] => {
                return Err(cx.err(line(second), "one YAML document expected, found several"))
            }
        };
        let mut cfg = MergeConfig {
            path: path.to_path_buf(),
            merge_method: String::new(),
            method_line: 0,
            base_model: None,
            models: None,
            slices: None,
            parameters: None,
            dtype: None,
            out_dtype: None,
            tokenizer_source: None,
            text: text.to_string(),
        };
        let null = |v: &Node| matches!(v.data, YamlData::Value(Scalar::Null));
        for (k, l, v) in mapping(&cx, doc, "the configuration", TOP_KEYS, TOP_UNSUPPORTED)? {
            match k.as_str() {
                "merge_method" => {
                    cfg.merge_method = string(&cx, v, "merge_method")?;
                    cfg.method_line = l;
                }
                "base_model" if !null(v) => cfg.base_model = Some(model_ref(&cx, v, "base_model")?),
                "models" if !null(v) => {
                    cfg.models = Some(
                        list(&cx, v, "models")?
                            .iter()
                            .map(|m| model_def(&cx, m))
                            .collect::<Result<_>>()?,
                    )
                }
                "slices" if !null(v) => {
                    cfg.slices = Some(
                        list(&cx, v, "slices")?
                            .iter()
                            .map(|s| slice(&cx, s))
                            .collect::<Result<_>>()?,
                    )
                }
                "parameters" => cfg.parameters = params(&cx, v, "parameters")?,
                "dtype" if !null(v) => cfg.dtype = Some((string(&cx, v, "dtype")?, line(v))),
                "out_dtype" if !null(v) => {
                    cfg.out_dtype = Some((string(&cx, v, "out_dtype")?, line(v)))
                }
                "tokenizer_source" if !null(v) => {
                    let s = string(&cx, v, "tokenizer_source")?;
                    let src = match s.as_str() {
                        "base" => TokenizerSource::Base,
                        "union" => TokenizerSource::Union,
                        _ => TokenizerSource::Model(model_ref(&cx, v, "tokenizer_source")?),
                    };
                    cfg.tokenizer_source = Some((src, line(v)));
                }
                _ => {}
            }
        }
        if cfg.method_line == 0 {
            return Err(cx.err(line(doc), "missing 'merge_method'"));
        }
        // mergekit: "Exactly one of 'models', 'slices', or 'modules' must be present" (an empty
        // list counts as absent).
        let has_models = cfg.models.as_ref().is_some_and(|m| !m.is_empty());
        let has_slices = cfg.slices.as_ref().is_some_and(|s| !s.is_empty());
        if has_models == has_slices {
            return Err(cx.err(
                line(doc),
                "exactly one of 'models' or 'slices' must be present",
            ));
        }
        Ok(cfg)
    }

    /// An error at `line` of this file.
    pub fn err(&self, line: usize, reason: impl Into<String>) -> MnemoError {
        MnemoError::InvalidLine {
            path: self.path.clone(),
            line,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<MergeConfig> {
        MergeConfig::parse(Path::new("m.yml"), s)
    }

    #[test]
    fn reads_mergekit_schema() {
        let c = parse(
            "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      density: [1, 0.7, 0.1]\n      weight:\n        - filter: mlp\n          value: 0.5\n        - value: 1\n  - model: b\nparameters:\n  normalize: true\ndtype: float32\n",
        )
        .unwrap();
        assert_eq!(c.merge_method, "ties");
        let m = c.models.unwrap();
        assert_eq!(m.len(), 2);
        let p = m[0].parameters.as_ref().unwrap();
        assert_eq!(
            p[0].setting,
            Setting::Gradient(vec![Value::Int(1), Value::Float(0.7), Value::Float(0.1)])
        );
        assert!(
            matches!(&p[1].setting, Setting::Conditions(c) if c.len() == 2 && c[0].filter.as_deref() == Some("mlp"))
        );
        assert_eq!(p[1].line, 7);
    }

    #[test]
    fn unknown_and_duplicate_keys_name_their_line() {
        let e =
            parse("merge_method: linear\nmodels:\n  - model: a\n    parameter:\n      weight: 1\n")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("m.yml:4:") && e.contains("unknown key 'parameter'"),
            "{e}"
        );
        let e = parse("merge_method: linear\nmerge_method: ties\nmodels:\n  - model: a\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.yml:") && e.contains("duplicated key"), "{e}");
        let e = parse("merge_method: linear\nmodules: {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.yml:2:") && e.contains("not support"), "{e}");
        let e = parse("merge_method: linear\n").unwrap_err().to_string();
        assert!(e.contains("exactly one of"), "{e}");
    }
}
