//! Architecture specs: the JSON (or `mlp:` shorthand) description of a model,
//! stored in a checkpoint's metadata under `mnemo.arch`. Layer kinds and field
//! names are torch's constructor arguments, and parameter names follow
//! `nn.Sequential` / `nn.ModuleDict` indexing exactly.

use crate::error::{MnemoError, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn eps() -> f64 {
    1e-5
}
fn momentum() -> f64 {
    0.1
}
fn half() -> f64 {
    0.5
}

fn int_or_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrList {
        Int(usize),
        List(Vec<usize>),
    }
    Ok(match IntOrList::deserialize(d)? {
        IntOrList::Int(n) => vec![n],
        IntOrList::List(v) => v,
    })
}

/// One layer, as `{"type": ..., <torch constructor kwargs>}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum Layer {
    #[serde(rename = "linear")]
    Linear {
        in_features: usize,
        out_features: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    #[serde(rename = "conv2d")]
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel_size: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default = "one")]
        groups: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    #[serde(rename = "batchnorm1d")]
    BatchNorm1d {
        num_features: usize,
        #[serde(default = "eps")]
        eps: f64,
        #[serde(default = "momentum")]
        momentum: f64,
    },
    #[serde(rename = "batchnorm2d")]
    BatchNorm2d {
        num_features: usize,
        #[serde(default = "eps")]
        eps: f64,
        #[serde(default = "momentum")]
        momentum: f64,
    },
    #[serde(rename = "layernorm")]
    LayerNorm {
        #[serde(deserialize_with = "int_or_list")]
        normalized_shape: Vec<usize>,
        #[serde(default = "eps")]
        eps: f64,
    },
    #[serde(rename = "relu")]
    Relu,
    #[serde(rename = "gelu")]
    Gelu,
    #[serde(rename = "tanh")]
    Tanh,
    #[serde(rename = "sigmoid")]
    Sigmoid,
    #[serde(rename = "maxpool2d")]
    MaxPool2d {
        kernel_size: usize,
        #[serde(default)]
        stride: Option<usize>,
        #[serde(default)]
        padding: usize,
    },
    #[serde(rename = "avgpool2d")]
    AvgPool2d {
        kernel_size: usize,
        #[serde(default)]
        stride: Option<usize>,
        #[serde(default)]
        padding: usize,
    },
    /// `nn.AdaptiveAvgPool2d(1)`: global average pooling to 1×1.
    #[serde(rename = "adaptive-avg-pool")]
    AdaptiveAvgPool,
    #[serde(rename = "flatten")]
    Flatten,
    #[serde(rename = "dropout")]
    Dropout {
        #[serde(default = "half")]
        p: f64,
    },
}

/// What a named tensor of a model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Trained by the optimiser.
    Trainable,
    /// Batchnorm running statistics (F32), updated in train-mode forward passes.
    RunningStat,
    /// Batchnorm `num_batches_tracked` (I64 scalar).
    Counter,
}

/// One entry of a model's state dict, in torch's order.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

impl Layer {
    fn check(&self) -> std::result::Result<(), String> {
        let pos = |n: usize, what: &str| {
            if n == 0 {
                Err(format!("{what} must be positive"))
            } else {
                Ok(())
            }
        };
        match *self {
            Layer::Linear {
                in_features,
                out_features,
                ..
            } => {
                pos(in_features, "linear in_features")?;
                pos(out_features, "linear out_features")
            }
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel_size,
                stride,
                groups,
                ..
            } => {
                pos(in_channels, "conv2d in_channels")?;
                pos(out_channels, "conv2d out_channels")?;
                pos(kernel_size, "conv2d kernel_size")?;
                pos(stride, "conv2d stride")?;
                pos(groups, "conv2d groups")?;
                if in_channels % groups != 0 || out_channels % groups != 0 {
                    return Err(format!(
                        "conv2d channels ({in_channels} in, {out_channels} out) must be divisible by groups ({groups})"
                    ));
                }
                Ok(())
            }
            Layer::BatchNorm1d { num_features, .. } | Layer::BatchNorm2d { num_features, .. } => {
                pos(num_features, "batchnorm num_features")
            }
            Layer::LayerNorm {
                ref normalized_shape,
                ..
            } => {
                if normalized_shape.is_empty() || normalized_shape.contains(&0) {
                    return Err("layernorm normalized_shape must be non-empty and positive".into());
                }
                Ok(())
            }
            Layer::MaxPool2d {
                kernel_size,
                stride,
                padding,
            }
            | Layer::AvgPool2d {
                kernel_size,
                stride,
                padding,
            } => {
                pos(kernel_size, "pool kernel_size")?;
                pos(stride.unwrap_or(kernel_size), "pool stride")?;
                if 2 * padding > kernel_size {
                    return Err(
                        "pool padding must be at most half the kernel size (as in torch)".into(),
                    );
                }
                Ok(())
            }
            Layer::Dropout { p } => {
                if !(0.0..1.0).contains(&p) {
                    return Err(format!("dropout p must be in [0, 1), got {p}"));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The layer's tensors, named relative to the layer (`weight`, `bias`, ...), in torch's order.
    pub fn params(&self) -> Vec<(&'static str, Vec<usize>, ParamKind)> {
        use ParamKind::*;
        match *self {
            Layer::Linear {
                in_features,
                out_features,
                bias,
            } => {
                let mut v = vec![("weight", vec![out_features, in_features], Trainable)];
                if bias {
                    v.push(("bias", vec![out_features], Trainable));
                }
                v
            }
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel_size,
                groups,
                bias,
                ..
            } => {
                let mut v = vec![(
                    "weight",
                    vec![out_channels, in_channels / groups, kernel_size, kernel_size],
                    Trainable,
                )];
                if bias {
                    v.push(("bias", vec![out_channels], Trainable));
                }
                v
            }
            Layer::BatchNorm1d { num_features, .. } | Layer::BatchNorm2d { num_features, .. } => {
                vec![
                    ("weight", vec![num_features], Trainable),
                    ("bias", vec![num_features], Trainable),
                    ("running_mean", vec![num_features], RunningStat),
                    ("running_var", vec![num_features], RunningStat),
                    ("num_batches_tracked", vec![], Counter),
                ]
            }
            Layer::LayerNorm {
                ref normalized_shape,
                ..
            } => vec![
                ("weight", normalized_shape.clone(), Trainable),
                ("bias", normalized_shape.clone(), Trainable),
            ],
            _ => vec![],
        }
    }
}

/// A whole model: one `nn.Sequential`, or a shared trunk with named heads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ArchSpec {
    Sequential(Vec<Layer>),
    MultiHead {
        trunk: Vec<Layer>,
        heads: BTreeMap<String, Vec<Layer>>,
    },
}

impl ArchSpec {
    /// Parses `mlp:784-400-10`, inline JSON, or the path of a JSON file.
    pub fn parse(spec: &str) -> Result<ArchSpec> {
        let s = spec.trim();
        if let Some(dims) = s.strip_prefix("mlp:") {
            return Self::mlp(dims);
        }
        if s.starts_with('[') || s.starts_with('{') {
            return Self::from_json(s, None);
        }
        let text = std::fs::read_to_string(Path::new(s)).map_err(|e| MnemoError::InvalidArch {
            origin: Some(s.to_string()),
            reason: format!("not 'mlp:...' nor inline JSON, and the file cannot be read: {e}"),
        })?;
        Self::from_json(&text, Some(s))
    }

    fn mlp(dims: &str) -> Result<ArchSpec> {
        let bad = |reason: String| MnemoError::InvalidArch {
            origin: Some(format!("mlp:{dims}")),
            reason,
        };
        let sizes: Vec<usize> = dims
            .split('-')
            .map(|d| {
                d.trim()
                    .parse::<usize>()
                    .map_err(|_| bad(format!("'{d}' is not a layer size")))
            })
            .collect::<Result<_>>()?;
        if sizes.len() < 2 {
            return Err(bad(
                "an MLP needs at least an input and an output size".into()
            ));
        }
        let mut layers = Vec::new();
        for (i, w) in sizes.windows(2).enumerate() {
            if i > 0 {
                layers.push(Layer::Relu);
            }
            layers.push(Layer::Linear {
                in_features: w[0],
                out_features: w[1],
                bias: true,
            });
        }
        let spec = ArchSpec::Sequential(layers);
        spec.validate().map_err(bad)?;
        Ok(spec)
    }

    pub fn from_json(text: &str, origin: Option<&str>) -> Result<ArchSpec> {
        let spec: ArchSpec = serde_json::from_str(text).map_err(|e| MnemoError::InvalidArch {
            origin: origin.map(str::to_string),
            reason: explain_json_error(text, e),
        })?;
        spec.validate().map_err(|reason| MnemoError::InvalidArch {
            origin: origin.map(str::to_string),
            reason,
        })?;
        Ok(spec)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let check = |prefix: &str, layers: &[Layer]| -> std::result::Result<(), String> {
            if layers.is_empty() {
                return Err(format!("{prefix}: empty layer list"));
            }
            for (i, l) in layers.iter().enumerate() {
                l.check().map_err(|e| format!("layer {prefix}{i}: {e}"))?;
            }
            Ok(())
        };
        match self {
            ArchSpec::Sequential(l) => check("", l)?,
            ArchSpec::MultiHead { trunk, heads } => {
                check("trunk.", trunk)?;
                if heads.is_empty() {
                    return Err("a multi-head spec needs at least one head".into());
                }
                for (name, l) in heads {
                    if name.is_empty() || name.contains('.') {
                        return Err(format!("head name '{name}' must be non-empty without '.'"));
                    }
                    check(&format!("heads.{name}."), l)?;
                }
            }
        }
        // Sizes a machine can hold: every tensor's and the whole model's bytes in f32 fit in
        // an allocation (isize::MAX bytes), so `num_parameters` and every product of a
        // shape are safe to compute (found by fuzzing: `mlp:` sizes whose product overflows).
        let limit = isize::MAX as usize / 4;
        let mut total = 0usize;
        for p in self.params() {
            let n = p
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&n| n <= limit)
                .ok_or_else(|| format!("tensor '{}' {:?} is too large", p.name, p.shape))?;
            total = total
                .checked_add(n)
                .filter(|&t| t <= limit)
                .ok_or("the model has too many parameters to be held in memory")?;
        }
        Ok(())
    }

    /// Canonical JSON (defaults filled in): what goes into `mnemo.arch`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("spec serialises")
    }

    /// Layer groups with their name prefixes, in state-dict order.
    pub fn groups(&self) -> Vec<(String, &[Layer])> {
        match self {
            ArchSpec::Sequential(l) => vec![(String::new(), l.as_slice())],
            ArchSpec::MultiHead { trunk, heads } => {
                let mut v = vec![("trunk.".to_string(), trunk.as_slice())];
                v.extend(
                    heads
                        .iter()
                        .map(|(n, l)| (format!("heads.{n}."), l.as_slice())),
                );
                v
            }
        }
    }

    /// The full state dict manifest in torch's order.
    pub fn params(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        for (prefix, layers) in self.groups() {
            for (i, layer) in layers.iter().enumerate() {
                for (name, shape, kind) in layer.params() {
                    out.push(ParamSpec {
                        name: format!("{prefix}{i}.{name}"),
                        shape,
                        kind,
                    });
                }
            }
        }
        out
    }

    pub fn head_names(&self) -> Vec<String> {
        match self {
            ArchSpec::Sequential(_) => vec![],
            ArchSpec::MultiHead { heads, .. } => heads.keys().cloned().collect(),
        }
    }

    pub fn num_parameters(&self) -> usize {
        self.params()
            .iter()
            .filter(|p| p.kind == ParamKind::Trainable)
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }
}

/// serde's messages for internally tagged enums are terse; point at the layer.
fn explain_json_error(text: &str, e: serde_json::Error) -> String {
    let base = e.to_string();
    if base.contains("did not match any variant") {
        // Untagged ArchSpec hides the inner message: retry as a plain layer list to get it.
        if let Err(inner) = serde_json::from_str::<Vec<Layer>>(text) {
            if !inner.to_string().contains("invalid type: map") {
                return inner.to_string();
            }
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct Mh {
            trunk: Vec<Layer>,
            heads: BTreeMap<String, Vec<Layer>>,
        }
        if let Err(inner) = serde_json::from_str::<Mh>(text) {
            return format!(
                "{inner} (expected a layer list or {{\"trunk\": [...], \"heads\": {{...}}}})"
            );
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp_shorthand_matches_torch_names() {
        let s = ArchSpec::parse("mlp:784-400-400-10").unwrap();
        let names: Vec<_> = s.params().into_iter().map(|p| (p.name, p.shape)).collect();
        assert_eq!(
            names,
            vec![
                ("0.weight".to_string(), vec![400, 784]),
                ("0.bias".to_string(), vec![400]),
                ("2.weight".to_string(), vec![400, 400]),
                ("2.bias".to_string(), vec![400]),
                ("4.weight".to_string(), vec![10, 400]),
                ("4.bias".to_string(), vec![10]),
            ]
        );
        assert_eq!(s.num_parameters(), 784 * 400 + 400 + 400 * 400 + 400 + 4010);
    }

    #[test]
    fn json_round_trip_and_multihead_names() {
        let s = ArchSpec::parse(
            r#"{"trunk":[{"type":"conv2d","in_channels":1,"out_channels":4,"kernel_size":3},{"type":"batchnorm2d","num_features":4}],
                "heads":{"a":[{"type":"flatten"},{"type":"linear","in_features":4,"out_features":2}]}}"#,
        )
        .unwrap();
        let names: Vec<_> = s.params().into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "trunk.0.weight",
                "trunk.0.bias",
                "trunk.1.weight",
                "trunk.1.bias",
                "trunk.1.running_mean",
                "trunk.1.running_var",
                "trunk.1.num_batches_tracked",
                "heads.a.1.weight",
                "heads.a.1.bias"
            ]
        );
        assert_eq!(ArchSpec::parse(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn bad_specs_say_why() {
        let e = ArchSpec::parse("mlp:784-x-10").unwrap_err().to_string();
        assert!(e.contains("'x'"), "{e}");
        let e = ArchSpec::parse(r#"[{"type":"linaer","in_features":1,"out_features":2}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("linaer"), "{e}");
        let e = ArchSpec::parse(r#"[{"type":"linear","in_features":1,"out_feature":2}]"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("out_feature"), "{e}");
        let e = ArchSpec::parse(
            r#"[{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":3,"groups":2}]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("divisible"), "{e}");
        assert!(ArchSpec::parse("/nonexistent/spec.json").is_err());
    }

    /// Found by fuzzing (fuzz/regressions/arch_spec/float-round-trip): an eps whose
    /// canonical JSON (what `mnemo.arch` stores) parsed back to the next double, so a model
    /// rebuilt from its own metadata differed from the spec it was made with.
    #[test]
    fn canonical_json_parses_back_to_the_same_floats() {
        let spec = ArchSpec::parse(
            r#"[{"type":"layernorm","normalized_shape":4,"eps":1.3333333333333335},
                {"type":"batchnorm1d","num_features":4,"momentum":0.30000000000000004},
                {"type":"dropout","p":0.12345678901234567}]"#,
        )
        .unwrap();
        assert_eq!(ArchSpec::parse(&spec.to_json()).unwrap(), spec);
        let ArchSpec::Sequential(l) = &spec else {
            panic!()
        };
        assert_eq!(
            l[0],
            Layer::LayerNorm {
                normalized_shape: vec![4],
                eps: 1.3333333333333335
            }
        );
    }

    /// Fuzzing found sizes whose products overflow (a panic in `num_parameters` in debug
    /// builds, a wrong count in release): refused when the spec is parsed.
    #[test]
    fn sizes_beyond_memory_are_refused() {
        let e = ArchSpec::parse(
            "mlp:778844014400102-14414400102-14470-8-804004400102-1070-8-804004400102-10",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("too large"), "{e}");
        let e = ArchSpec::parse("mlp:4294967296-4294967296-2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("too large"), "{e}");
        let e = ArchSpec::parse(
            r#"[{"type":"layernorm","normalized_shape":[4294967296,4294967296,4294967296]}]"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("too large"), "{e}");
        // Each tensor fits, the sum does not.
        let e = ArchSpec::parse("mlp:1500000000-1000000000-1500000000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("too many parameters"), "{e}");
        assert!(ArchSpec::parse("mlp:784-400-10").is_ok());
    }
}
