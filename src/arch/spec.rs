//! Architecture specs: the JSON (or `mlp:` shorthand) description of a whole model,
//! stored in a checkpoint's metadata under `mnemo.arch`: a layer list, a trunk with named
//! heads, or a module tree of the layers in `layer.rs`. `arch/zoo.rs` builds torchvision's
//! ResNet-18 and EfficientNet-B0, EfficientNet-Lite0 and a small ViT as such trees.

use super::layer::*;
use super::manifest::*;
use crate::error::{MnemoError, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// A whole model: one `nn.Sequential`, a shared trunk with named heads, or a module tree
/// (one container layer at the root, its tensors named by their module paths from there:
/// `conv1.weight`, `layer1.0.bn1.running_mean`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ArchSpec {
    Sequential(Vec<Layer>),
    MultiHead {
        trunk: Vec<Layer>,
        heads: BTreeMap<String, Vec<Layer>>,
    },
    Tree(Layer),
}

impl ArchSpec {
    /// Parses `mlp:784-400-10`, inline JSON, or the path of a JSON file (zoo names are
    /// tried first by [`crate::arch::parse`], the one entry point).
    pub(super) fn parse_plain(spec: &str) -> Result<ArchSpec> {
        let s = spec.trim();
        if let Some(dims) = s.strip_prefix("mlp:") {
            return Self::mlp(dims);
        }
        if s.starts_with('[') || s.starts_with('{') {
            return Self::from_json(s, None);
        }
        let text =
            crate::fsutil::read_to_string(Path::new(s)).map_err(|e| MnemoError::InvalidArch {
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

    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let check = |prefix: &str, layers: &[Layer]| -> std::result::Result<(), String> {
            if layers.is_empty() {
                return Err(format!("{prefix}: empty layer list"));
            }
            for (i, l) in layers.iter().enumerate() {
                l.check(1).map_err(|e| format!("layer {prefix}{i}: {e}"))?;
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
            ArchSpec::Tree(root) => {
                // A leaf at the root would have tensors named `weight` and a module named
                // '' (no LoRA target could name it): wrap it.
                if !root.is_container() {
                    return Err(format!(
                        "a single {} layer cannot be the whole model; wrap it in a sequential or module",
                        root.kind()
                    ));
                }
                root.check(1)?;
                // `--head` names one head of the model: two containers would make it ambiguous.
                let found = self.heads_containers();
                if found.len() > 1 {
                    return Err(format!(
                        "a model may have one heads container; found {} ('{}' and '{}')",
                        found.len(),
                        found[0].0,
                        found[1].0
                    ));
                }
            }
        }
        // Sizes a machine can hold: every tensor's and the whole model's bytes in f32 fit in
        // an allocation (isize::MAX bytes), so `num_parameters` and every product of a
        // shape are safe to compute (found by fuzzing: `mlp:` sizes whose product overflows).
        // Bounded by this machine's memory too (validate::max_alloc_bytes), so a model that
        // cannot be held is refused before initialisation starts.
        let limit = (crate::validate::max_alloc_bytes() / 4).min(isize::MAX as u64 / 4) as usize;
        let mut total = 0usize;
        let params = self.params();
        // Each tensor once: two modules of one namespace must not both hold a 'weight'.
        let mut seen = HashSet::new();
        if let Some(p) = params.iter().find(|p| !seen.insert(p.name.as_str())) {
            return Err(format!("two tensors are named '{}'", p.name));
        }
        // A tied projection shares a matrix the model holds.
        let mut tied = Vec::new();
        self.visit(&mut |name, layer| {
            if let Layer::TiedLinear { weight } = layer {
                tied.push((name.to_string(), weight.clone()));
            }
        });
        for (name, weight) in tied {
            let found = params
                .iter()
                .find(|p| p.name == weight && p.kind == ParamKind::Trainable);
            match found {
                Some(p) if p.shape.len() == 2 => {}
                Some(p) => {
                    return Err(format!(
                        "tied-linear '{name}' shares '{weight}', which has shape {:?}; it needs a matrix",
                        p.shape
                    ))
                }
                None => {
                    return Err(format!(
                        "tied-linear '{name}' shares '{weight}', which is no trainable tensor of the model"
                    ))
                }
            }
        }
        for p in params {
            let n = p
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&n| n <= limit)
                .ok_or_else(|| format!("tensor '{}' {:?} is too large", p.name, p.shape))?;
            total = total
                .checked_add(n)
                .filter(|&t| t <= limit)
                .ok_or("the model has too many parameters to be held in this machine's memory")?;
        }
        Ok(())
    }

    /// Canonical JSON (defaults filled in): what goes into `mnemo.arch`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("spec serialises")
    }

    /// The top-level layers with their full names (`0`, `trunk.1`, `heads.a.0`; the root
    /// of a tree is named ''), in state-dict order.
    pub fn roots(&self) -> Vec<(String, &Layer)> {
        match self {
            ArchSpec::Sequential(l) => l
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l))
                .collect(),
            ArchSpec::MultiHead { trunk, heads } => {
                let mut v: Vec<(String, &Layer)> = trunk
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("trunk.{i}"), l))
                    .collect();
                for (n, layers) in heads {
                    v.extend(
                        layers
                            .iter()
                            .enumerate()
                            .map(|(i, l)| (format!("heads.{n}.{i}"), l)),
                    );
                }
                v
            }
            ArchSpec::Tree(root) => vec![(String::new(), root)],
        }
    }

    /// Calls `f(full name, layer)` on every layer and container of the model, in
    /// state-dict order (a container before its children).
    pub fn visit(&self, f: &mut dyn FnMut(&str, &Layer)) {
        for (name, layer) in self.roots() {
            layer.visit(&name, f);
        }
    }

    /// The full state dict manifest in torch's order.
    pub fn params(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        self.visit(&mut |name, layer| {
            for (p, shape, kind) in layer.own_params() {
                out.push(ParamSpec {
                    name: join(name, p),
                    shape,
                    kind,
                });
            }
        });
        out
    }

    /// Every `heads` container of a tree (full name, head names), in state-dict order.
    fn heads_containers(&self) -> Vec<(String, Vec<String>)> {
        let mut found = Vec::new();
        if let ArchSpec::Tree(root) = self {
            root.visit("", &mut |name, layer| {
                if let Layer::Heads { heads } = layer {
                    let names = heads.0.iter().map(|(n, _)| n.clone()).collect();
                    found.push((name.to_string(), names));
                }
            });
        }
        found
    }

    /// The heads `--head` chooses from: a multi-head spec's, or those of a tree's `heads`
    /// container (none for a plain model).
    pub fn head_names(&self) -> Vec<String> {
        match self {
            ArchSpec::Sequential(_) => vec![],
            ArchSpec::Tree(_) => self
                .heads_containers()
                .into_iter()
                .next()
                .map(|(_, names)| names)
                .unwrap_or_default(),
            ArchSpec::MultiHead { heads, .. } => heads.keys().cloned().collect(),
        }
    }

    /// Name prefixes (`heads.det.`) of the heads a forward pass with `head` does not run:
    /// their tensors (and LoRA weights on their modules) get no gradient and are not
    /// trained. Empty without heads or when no head is chosen.
    pub fn unchosen_head_prefixes(&self, head: Option<&str>) -> Vec<String> {
        let Some(head) = head else { return vec![] };
        let (container, names) = match self {
            ArchSpec::Sequential(_) => return vec![],
            ArchSpec::MultiHead { heads, .. } => {
                ("heads".to_string(), heads.keys().cloned().collect())
            }
            ArchSpec::Tree(_) => match self.heads_containers().into_iter().next() {
                Some(c) => c,
                None => return vec![],
            },
        };
        names
            .into_iter()
            .filter(|n| n != head)
            .map(|n| format!("{}.", join(&container, &n)))
            .collect()
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
        // A module tree: the root layer's own message says what is wrong inside.
        let is_tree = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
            .is_ok_and(|m| m.contains_key("type"));
        if is_tree {
            if let Err(inner) = serde_json::from_str::<Layer>(text) {
                return inner.to_string();
            }
        }
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
        // (With the machine's memory as the limit, each tensor is already too large.)
        assert!(
            e.contains("too many parameters") || e.contains("too large"),
            "{e}"
        );
        assert!(ArchSpec::parse("mlp:784-400-10").is_ok());
    }

    #[test]
    fn module_trees_name_tensors_by_module_path() {
        let spec = ArchSpec::parse(
            r#"{"type":"module","children":{
                "conv1":{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":3,"bias":false},
                "layer1":{"type":"sequential","layers":[
                    {"type":"residual",
                     "body":{"conv1":{"type":"conv2d","in_channels":4,"out_channels":4,"kernel_size":1},
                             "bn1":{"type":"batchnorm2d","num_features":4},
                             "relu":{"type":"relu"}},
                     "shortcut":{"downsample":{"type":"sequential","layers":[
                         {"type":"conv2d","in_channels":4,"out_channels":4,"kernel_size":1}]}},
                     "post":{"relu":{"type":"relu"}}}]},
                "se":{"type":"squeeze-excitation","input_channels":4,"squeeze_channels":2},
                "flatten":{"type":"flatten"}}}"#,
        )
        .unwrap();
        let names: Vec<_> = spec
            .params()
            .into_iter()
            .map(|p| (p.name, p.shape))
            .collect();
        let want: Vec<(&str, Vec<usize>)> = vec![
            ("conv1.weight", vec![4, 3, 3, 3]),
            ("layer1.0.conv1.weight", vec![4, 4, 1, 1]),
            ("layer1.0.conv1.bias", vec![4]),
            ("layer1.0.bn1.weight", vec![4]),
            ("layer1.0.bn1.bias", vec![4]),
            ("layer1.0.bn1.running_mean", vec![4]),
            ("layer1.0.bn1.running_var", vec![4]),
            ("layer1.0.bn1.num_batches_tracked", vec![]),
            ("layer1.0.downsample.0.weight", vec![4, 4, 1, 1]),
            ("layer1.0.downsample.0.bias", vec![4]),
            ("se.fc1.weight", vec![2, 4, 1, 1]),
            ("se.fc1.bias", vec![2]),
            ("se.fc2.weight", vec![4, 2, 1, 1]),
            ("se.fc2.bias", vec![4]),
        ];
        let want: Vec<(String, Vec<usize>)> =
            want.into_iter().map(|(n, s)| (n.to_string(), s)).collect();
        assert_eq!(names, want);
        // Child order survives the canonical JSON (`mnemo.arch`).
        assert_eq!(ArchSpec::parse(&spec.to_json()).unwrap(), spec);
    }

    /// `static_padding` is optional and absent from the JSON when unset: a conv written
    /// before it existed reads and writes back byte for byte.
    #[test]
    fn conv_json_without_static_padding_round_trips_unchanged() {
        let canonical = r#"[{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":3,"stride":2,"padding":1,"groups":1,"bias":false},{"type":"relu6"}]"#;
        let spec = ArchSpec::parse(canonical).unwrap();
        assert_eq!(spec.to_json(), canonical);
        let spec = ArchSpec::parse(
            r#"[{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":3}]"#,
        )
        .unwrap();
        assert_eq!(
            spec.to_json(),
            r#"[{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":3,"stride":1,"padding":0,"groups":1,"bias":true}]"#
        );
        let padded = r#"[{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":3,"stride":2,"padding":0,"groups":1,"bias":false,"static_padding":[0,1,0,1]}]"#;
        let spec = ArchSpec::parse(padded).unwrap();
        assert_eq!(spec.to_json(), padded);
        let ArchSpec::Sequential(l) = &spec else {
            panic!()
        };
        assert!(matches!(
            l[0],
            Layer::Conv2d {
                static_padding: Some([0, 1, 0, 1]),
                ..
            }
        ));
    }

    #[test]
    fn bad_static_padding_says_why() {
        let err = |extra: &str| {
            ArchSpec::parse(&format!(
                r#"[{{"type":"conv2d","in_channels":3,"out_channels":4,"kernel_size":3{extra}}}]"#
            ))
            .unwrap_err()
            .to_string()
        };
        let e = err(r#","padding":1,"static_padding":[0,1,0,1]"#);
        assert!(e.contains("must have padding 0, got 1"), "{e}");
        let e = err(r#","static_padding":[0,1,0,2000]"#);
        assert!(e.contains("static_padding 2000 exceeds the limit"), "{e}");
        let e = err(r#","static_padding":[0,1,0]"#);
        assert!(e.contains("expected an array of length 4"), "{e}");
        let e = err(r#","static_padding":[0,1,0,-1]"#);
        assert!(e.contains("-1"), "{e}");
    }

    #[test]
    fn bad_trees_say_why() {
        let err = |s: &str| ArchSpec::parse(s).unwrap_err().to_string();
        let e = err(r#"{"type":"module","children":{"a":{"type":"relu"},"a":{"type":"tanh"}}}"#);
        assert!(e.contains("duplicate child name 'a'"), "{e}");
        let e = err(
            r#"{"type":"residual","body":{"fc":{"type":"linear","in_features":2,"out_features":2}},
                "shortcut":{"fc":{"type":"linear","in_features":2,"out_features":2}}}"#,
        );
        assert!(e.contains("two tensors are named 'fc.weight'"), "{e}");
        let e = err(r#"{"type":"module","children":{"a.b":{"type":"relu"}}}"#);
        assert!(e.contains("'a.b'"), "{e}");
        let e = err(r#"{"type":"linear","in_features":2,"out_features":2}"#);
        assert!(e.contains("wrap it"), "{e}");
        let e = err(r#"{"type":"module","children":{"a":{"type":"linear","in_features":2}}}"#);
        assert!(e.contains("out_features"), "{e}");
        let e = err(r#"{"type":"residual","body":{},"stochastic_depth":1.0}"#);
        assert!(e.contains("stochastic_depth"), "{e}");
        let e = err(
            r#"{"type":"sequential","layers":[{"type":"self-attention","embed_dim":6,"num_heads":4}]}"#,
        );
        assert!(e.contains("divisible by num_heads"), "{e}");
    }

    #[test]
    fn upsample_and_heads_are_checked() {
        let err = |s: &str| ArchSpec::parse(s).unwrap_err().to_string();
        for (layer, words) in [
            (
                r#"{"type":"upsample","scale_factor":0}"#,
                "scale_factor must be positive",
            ),
            (
                r#"{"type":"upsample"}"#,
                "exactly one of scale_factor and size",
            ),
            (
                r#"{"type":"upsample","scale_factor":2,"size":[4,4]}"#,
                "exactly one",
            ),
            (
                r#"{"type":"upsample","size":[4,0]}"#,
                "size must be positive",
            ),
            (
                r#"{"type":"upsample","scale_factor":2,"mode":"bicubic"}"#,
                "bicubic",
            ),
            (r#"{"type":"upsample","scale_factor":1.5}"#, "1.5"),
            (r#"{"type":"upsample","scale_factor":-2}"#, "-2"),
        ] {
            let e = err(&format!("[{layer}]"));
            assert!(e.contains(words), "{layer}: {e}");
        }
        let up = ArchSpec::parse(r#"[{"type":"upsample","scale_factor":2}]"#).unwrap();
        assert_eq!(
            up.to_json(),
            r#"[{"type":"upsample","scale_factor":2,"mode":"nearest"}]"#
        );
        let fc = r#"{"type":"linear","in_features":2,"out_features":2}"#;
        let e = err(r#"{"type":"module","children":{"h":{"type":"heads","heads":{}}}}"#);
        assert!(e.contains("at least one head"), "{e}");
        let e = err(&format!(
            r#"{{"type":"module","children":{{"a":{{"type":"heads","heads":{{"x":{fc}}}}},"b":{{"type":"heads","heads":{{"y":{fc}}}}}}}}}"#
        ));
        assert!(
            e.contains("one heads container") && e.contains("'a' and 'b'"),
            "{e}"
        );
        let spec = ArchSpec::parse(&format!(
            r#"{{"type":"module","children":{{"trunk":{fc},"out":{{"type":"heads","heads":{{"p":{fc},"q":{fc}}}}}}}}}"#
        ))
        .unwrap();
        assert_eq!(spec.head_names(), ["p", "q"]);
        assert_eq!(spec.unchosen_head_prefixes(Some("p")), ["out.q."]);
        assert!(spec.unchosen_head_prefixes(None).is_empty());
        let names: Vec<String> = spec.params().into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "trunk.weight",
                "trunk.bias",
                "out.p.weight",
                "out.p.bias",
                "out.q.weight",
                "out.q.bias"
            ]
        );
        assert_eq!(ArchSpec::parse(&spec.to_json()).unwrap(), spec);
    }

    /// Deep nesting is refused, never a stack overflow: JSON deeper than serde_json's
    /// recursion limit fails to parse, and trees built in code are capped at MAX_DEPTH.
    #[test]
    fn deep_nesting_is_refused() {
        let n = 5000;
        let json = format!(
            "{}{{\"type\":\"relu\"}}{}",
            r#"{"type":"sequential","layers":["#.repeat(n),
            "]}".repeat(n)
        );
        assert!(ArchSpec::parse(&json).is_err());
        // As deep as serde_json allows: parses, with the whole tree walked, on a test
        // thread's small stack.
        let n = 60;
        let json = format!(
            "{}{{\"type\":\"relu\"}}{}",
            r#"{"type":"sequential","layers":["#.repeat(n),
            "]}".repeat(n)
        );
        let spec = ArchSpec::parse(&json).unwrap();
        assert!(spec.params().is_empty());
        assert_eq!(ArchSpec::parse(&spec.to_json()).unwrap(), spec);
        let mut layer = Layer::Relu;
        for _ in 0..MAX_DEPTH + 5 {
            layer = Layer::Sequential {
                layers: vec![layer],
            };
        }
        let e = ArchSpec::Tree(layer).validate().unwrap_err();
        assert!(e.contains("nested more than 64"), "{e}");
    }
}
