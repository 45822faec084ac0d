//! Architecture specs: the JSON (or `mlp:` shorthand) description of a model,
//! stored in a checkpoint's metadata under `mnemo.arch`. Layer kinds and field
//! names are torch's constructor arguments, and parameter names follow
//! `nn.Sequential` / `nn.ModuleDict` indexing exactly.
//!
//! Container kinds (`sequential`, `module`, `residual`, and the fixed-structure blocks
//! `squeeze-excitation`, `patch-embedding`, `self-attention`, `encoder-block`) make a spec a
//! module tree: every tensor is named by its dotted module path, as torch's `state_dict()`
//! names it. `arch/zoo.rs` builds torchvision's ResNet-18 and EfficientNet-B0,
//! EfficientNet-Lite0 and a small ViT from such trees.

use crate::error::{MnemoError, Result};
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// The deepest nesting of container layers a spec may have: deeper trees are refused
/// before anything recurses over them (parsing, manifests, forward passes).
pub const MAX_DEPTH: usize = 64;

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
fn vit_eps() -> f64 {
    1e-6
}

/// `prefix.name`, or `name` at the root (empty prefix).
pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Named child layers in order: a JSON object whose key order is the module order
/// (torch's registration order, hence state-dict order). Names are unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Children(pub Vec<(String, Layer)>);

impl Children {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Children {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, layer) in &self.0 {
            m.serialize_entry(name, layer)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Children {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Children;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of named child layers")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Children, A::Error> {
                let mut out = Vec::new();
                let mut seen = HashSet::new();
                while let Some((name, layer)) = m.next_entry::<String, Layer>()? {
                    if !seen.insert(name.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate child name '{name}'"
                        )));
                    }
                    out.push((name, layer));
                }
                Ok(Children(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The activation inside a squeeze-excitation block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// torchvision's default.
    #[default]
    Relu,
    /// What EfficientNet uses.
    Silu,
}

/// `nn.Upsample`'s interpolation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpsampleMode {
    /// torch's default (`mode="nearest"`): source index floor(dst·in/out).
    #[default]
    Nearest,
    /// `mode="bilinear"`, `align_corners=False`.
    Bilinear,
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
        /// Zero padding `[left, right, top, bottom]` before the convolution (which then has
        /// `padding` 0): TensorFlow's "SAME" padding fixed for one image size, as
        /// `Conv2dStaticSamePadding` (a `ZeroPad2d` then the conv) computes it, which is
        /// asymmetric where torch's `padding` is not. Absent from the JSON when unset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        static_padding: Option<[usize; 4]>,
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
    /// `nn.ReLU6`: min(max(x, 0), 6), gradient 1 strictly inside (0, 6) and 0 elsewhere
    /// (torch's hardtanh backward).
    #[serde(rename = "relu6")]
    Relu6,
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
    /// `nn.SiLU`: x·sigmoid(x).
    #[serde(rename = "silu")]
    Silu,
    /// `nn.Hardswish`: x·relu6(x + 3)/6.
    #[serde(rename = "hardswish")]
    Hardswish,
    /// A nested `nn.Sequential`: children named `0`, `1`, ...
    #[serde(rename = "sequential")]
    Sequential { layers: Vec<Layer> },
    /// A module with named children, run in order (`{"conv1": {...}, "bn1": {...}}`).
    #[serde(rename = "module")]
    Module { children: Children },
    /// y = post(stochastic_depth(body(x)) + shortcut(x)); an empty shortcut is the identity.
    /// Body, shortcut and post children share the block's namespace (torchvision's
    /// BasicBlock: body conv1 bn1 relu conv2 bn2, shortcut downsample, post relu).
    /// Stochastic depth is torchvision's `StochasticDepth(p, "row")`: in train mode each
    /// example's body output is zeroed with probability p and the others scaled by 1/(1−p).
    #[serde(rename = "residual")]
    Residual {
        body: Children,
        #[serde(default)]
        shortcut: Children,
        #[serde(default)]
        post: Children,
        #[serde(default)]
        stochastic_depth: f64,
    },
    /// torchvision's `SqueezeExcitation`: x·sigmoid(fc2(act(fc1(avgpool(x))))), with
    /// fc1/fc2 1×1 convolutions (`fc1.weight [S,C,1,1]`).
    #[serde(rename = "squeeze-excitation")]
    SqueezeExcitation {
        input_channels: usize,
        squeeze_channels: usize,
        #[serde(default)]
        activation: Activation,
    },
    /// ViT patch embedding: `conv_proj` (kernel = stride = patch_size) to [B, N, dim], the
    /// learnt `class_token [1,1,dim]` prepended, `pos_embedding [1,N+1,dim]` added.
    #[serde(rename = "patch-embedding")]
    PatchEmbedding {
        in_channels: usize,
        dim: usize,
        patch_size: usize,
        image_size: usize,
    },
    /// Multi-head self-attention on [B, N, embed_dim] with separate `q_proj`, `k_proj`,
    /// `v_proj`, `o_proj` linear children (what `--targets '*.q_proj'` selects); dropout
    /// on the attention weights in train mode, as `nn.MultiheadAttention`.
    #[serde(rename = "self-attention")]
    SelfAttention {
        embed_dim: usize,
        num_heads: usize,
        #[serde(default)]
        dropout: f64,
        #[serde(default = "yes")]
        bias: bool,
    },
    /// torchvision's ViT `EncoderBlock` (pre-norm): x + dropout(self_attention(ln_1(x))),
    /// then + mlp(ln_2(·)) with mlp = [linear, gelu, dropout, linear, dropout].
    #[serde(rename = "encoder-block")]
    EncoderBlock {
        dim: usize,
        num_heads: usize,
        mlp_dim: usize,
        #[serde(default)]
        dropout: f64,
        #[serde(default)]
        attention_dropout: f64,
        #[serde(default = "vit_eps")]
        eps: f64,
    },
    /// x[:, 0]: the class token of a [B, N, D] sequence.
    #[serde(rename = "class-token")]
    ClassToken,
    /// `nn.Upsample(scale_factor=S)` or `nn.Upsample(size=[H, W])` on [B, C, H, W]
    /// (exactly one of the two), nearest or bilinear (`align_corners=False`).
    #[serde(rename = "upsample")]
    Upsample {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scale_factor: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<[usize; 2]>,
        #[serde(default)]
        mode: UpsampleMode,
    },
    /// Named alternative heads (`nn.ModuleDict`): the forward pass runs only the head
    /// chosen with `--head`; the others keep their tensors and are not trained.
    #[serde(rename = "heads")]
    Heads { heads: Children },
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

/// A normalisation's ε: finite and > 0 (a negative one makes the variance's root NaN).
fn norm_eps(eps: f64, what: &str) -> std::result::Result<(), String> {
    if !(eps.is_finite() && eps > 0.0) {
        return Err(format!("{what} must be a finite number > 0, got {eps}"));
    }
    Ok(())
}

/// The largest conv2d kernel size and padding: beyond it the padded images of one batch
/// do not fit in memory.
const MAX_CONV_EXTENT: usize = 1024;

fn at_most(n: usize, what: &str) -> std::result::Result<(), String> {
    if n > MAX_CONV_EXTENT {
        return Err(format!("{what} {n} exceeds the limit of {MAX_CONV_EXTENT}"));
    }
    Ok(())
}

fn probability(p: f64, what: &str) -> std::result::Result<(), String> {
    if !(0.0..1.0).contains(&p) {
        return Err(format!("{what} must be in [0, 1), got {p}"));
    }
    Ok(())
}

impl Layer {
    /// Checks the layer and, recursively, its children (`depth` containers above it).
    fn check(&self, depth: usize) -> std::result::Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("containers are nested more than {MAX_DEPTH} deep"));
        }
        self.check_own()?;
        for (name, child) in self.children() {
            if name.is_empty() || name.contains('.') {
                return Err(format!("child name '{name}' must be non-empty without '.'"));
            }
            child.check(depth + 1).map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(())
    }

    fn check_own(&self) -> std::result::Result<(), String> {
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
                padding,
                groups,
                static_padding,
                ..
            } => {
                pos(in_channels, "conv2d in_channels")?;
                pos(out_channels, "conv2d out_channels")?;
                pos(kernel_size, "conv2d kernel_size")?;
                pos(stride, "conv2d stride")?;
                pos(groups, "conv2d groups")?;
                at_most(kernel_size, "conv2d kernel_size")?;
                at_most(padding, "conv2d padding")?;
                if let Some(sides) = static_padding {
                    for p in sides {
                        at_most(p, "conv2d static_padding")?;
                    }
                    if padding != 0 {
                        return Err(format!(
                            "conv2d with static_padding {sides:?} must have padding 0, got {padding}"
                        ));
                    }
                }
                if in_channels % groups != 0 || out_channels % groups != 0 {
                    return Err(format!(
                        "conv2d channels ({in_channels} in, {out_channels} out) must be divisible by groups ({groups})"
                    ));
                }
                Ok(())
            }
            Layer::BatchNorm1d {
                num_features,
                eps,
                momentum,
            }
            | Layer::BatchNorm2d {
                num_features,
                eps,
                momentum,
            } => {
                pos(num_features, "batchnorm num_features")?;
                norm_eps(eps, "batchnorm eps")?;
                if !(0.0..=1.0).contains(&momentum) {
                    return Err(format!(
                        "batchnorm momentum must be in [0, 1], got {momentum}"
                    ));
                }
                Ok(())
            }
            Layer::LayerNorm {
                ref normalized_shape,
                eps,
            } => {
                norm_eps(eps, "layernorm eps")?;
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
            Layer::Dropout { p } => probability(p, "dropout p"),
            Layer::Residual {
                stochastic_depth, ..
            } => probability(stochastic_depth, "residual stochastic_depth"),
            Layer::SqueezeExcitation {
                input_channels,
                squeeze_channels,
                ..
            } => {
                pos(input_channels, "squeeze-excitation input_channels")?;
                pos(squeeze_channels, "squeeze-excitation squeeze_channels")
            }
            Layer::PatchEmbedding {
                in_channels,
                dim,
                patch_size,
                image_size,
            } => {
                pos(in_channels, "patch-embedding in_channels")?;
                pos(dim, "patch-embedding dim")?;
                pos(patch_size, "patch-embedding patch_size")?;
                pos(image_size, "patch-embedding image_size")?;
                if !image_size.is_multiple_of(patch_size) {
                    return Err(format!(
                        "patch-embedding image_size ({image_size}) must be divisible by patch_size ({patch_size})"
                    ));
                }
                Ok(())
            }
            Layer::SelfAttention {
                embed_dim,
                num_heads,
                dropout,
                ..
            } => {
                pos(embed_dim, "self-attention embed_dim")?;
                pos(num_heads, "self-attention num_heads")?;
                if !embed_dim.is_multiple_of(num_heads) {
                    return Err(format!(
                        "self-attention embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})"
                    ));
                }
                probability(dropout, "self-attention dropout")
            }
            Layer::EncoderBlock {
                dim,
                num_heads,
                mlp_dim,
                dropout,
                attention_dropout,
                ..
            } => {
                pos(dim, "encoder-block dim")?;
                pos(num_heads, "encoder-block num_heads")?;
                pos(mlp_dim, "encoder-block mlp_dim")?;
                if !dim.is_multiple_of(num_heads) {
                    return Err(format!(
                        "encoder-block dim ({dim}) must be divisible by num_heads ({num_heads})"
                    ));
                }
                probability(dropout, "encoder-block dropout")?;
                probability(attention_dropout, "encoder-block attention_dropout")
            }
            Layer::Upsample {
                scale_factor, size, ..
            } => match (scale_factor, size) {
                (Some(s), None) => pos(s, "upsample scale_factor"),
                (None, Some([h, w])) => {
                    pos(h, "upsample size")?;
                    pos(w, "upsample size")
                }
                _ => Err("upsample needs exactly one of scale_factor and size".into()),
            },
            Layer::Heads { ref heads } => {
                if heads.is_empty() {
                    return Err("a heads container needs at least one head".into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The torch kind name (`"conv2d"`, `"residual"`, ...) used in messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Linear { .. } => "linear",
            Layer::Conv2d { .. } => "conv2d",
            Layer::BatchNorm1d { .. } => "batchnorm1d",
            Layer::BatchNorm2d { .. } => "batchnorm2d",
            Layer::LayerNorm { .. } => "layernorm",
            Layer::Relu => "relu",
            Layer::Relu6 => "relu6",
            Layer::Gelu => "gelu",
            Layer::Tanh => "tanh",
            Layer::Sigmoid => "sigmoid",
            Layer::MaxPool2d { .. } => "maxpool2d",
            Layer::AvgPool2d { .. } => "avgpool2d",
            Layer::AdaptiveAvgPool => "adaptive-avg-pool",
            Layer::Flatten => "flatten",
            Layer::Dropout { .. } => "dropout",
            Layer::Silu => "silu",
            Layer::Hardswish => "hardswish",
            Layer::Sequential { .. } => "sequential",
            Layer::Module { .. } => "module",
            Layer::Residual { .. } => "residual",
            Layer::SqueezeExcitation { .. } => "squeeze-excitation",
            Layer::PatchEmbedding { .. } => "patch-embedding",
            Layer::SelfAttention { .. } => "self-attention",
            Layer::EncoderBlock { .. } => "encoder-block",
            Layer::ClassToken => "class-token",
            Layer::Upsample { .. } => "upsample",
            Layer::Heads { .. } => "heads",
        }
    }

    /// The layer's child modules, named relative to it, in torch's registration order.
    /// Fixed-structure blocks synthesise theirs (`fc1`, `q_proj`, `ln_1`, ...), so LoRA
    /// targets, initialisation and the manifest see them as ordinary leaves.
    pub fn children(&self) -> Vec<(Cow<'_, str>, Cow<'_, Layer>)> {
        let owned = |v: Vec<(&'static str, Layer)>| -> Vec<(Cow<'_, str>, Cow<'_, Layer>)> {
            v.into_iter()
                .map(|(n, l)| (Cow::Borrowed(n), Cow::Owned(l)))
                .collect()
        };
        let linear = |i: usize, o: usize, bias: bool| Layer::Linear {
            in_features: i,
            out_features: o,
            bias,
        };
        let conv = |i: usize, o: usize, k: usize| Layer::Conv2d {
            in_channels: i,
            out_channels: o,
            kernel_size: k,
            stride: k,
            padding: 0,
            groups: 1,
            bias: true,
            static_padding: None,
        };
        match *self {
            Layer::Sequential { ref layers } => layers
                .iter()
                .enumerate()
                .map(|(i, l)| (Cow::Owned(i.to_string()), Cow::Borrowed(l)))
                .collect(),
            Layer::Module { ref children }
            | Layer::Heads {
                heads: ref children,
            } => children
                .0
                .iter()
                .map(|(n, l)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(l)))
                .collect(),
            Layer::Residual {
                ref body,
                ref shortcut,
                ref post,
                ..
            } => body
                .0
                .iter()
                .chain(&shortcut.0)
                .chain(&post.0)
                .map(|(n, l)| (Cow::Borrowed(n.as_str()), Cow::Borrowed(l)))
                .collect(),
            Layer::SqueezeExcitation {
                input_channels: c,
                squeeze_channels: s,
                ..
            } => owned(vec![("fc1", conv(c, s, 1)), ("fc2", conv(s, c, 1))]),
            Layer::PatchEmbedding {
                in_channels,
                dim,
                patch_size,
                ..
            } => owned(vec![("conv_proj", conv(in_channels, dim, patch_size))]),
            Layer::SelfAttention {
                embed_dim: d, bias, ..
            } => owned(vec![
                ("q_proj", linear(d, d, bias)),
                ("k_proj", linear(d, d, bias)),
                ("v_proj", linear(d, d, bias)),
                ("o_proj", linear(d, d, bias)),
            ]),
            Layer::EncoderBlock {
                dim,
                num_heads,
                mlp_dim,
                dropout,
                attention_dropout,
                eps,
            } => {
                let ln = || Layer::LayerNorm {
                    normalized_shape: vec![dim],
                    eps,
                };
                owned(vec![
                    ("ln_1", ln()),
                    (
                        "self_attention",
                        Layer::SelfAttention {
                            embed_dim: dim,
                            num_heads,
                            dropout: attention_dropout,
                            bias: true,
                        },
                    ),
                    ("dropout", Layer::Dropout { p: dropout }),
                    ("ln_2", ln()),
                    (
                        "mlp",
                        Layer::Sequential {
                            layers: vec![
                                linear(dim, mlp_dim, true),
                                Layer::Gelu,
                                Layer::Dropout { p: dropout },
                                linear(mlp_dim, dim, true),
                                Layer::Dropout { p: dropout },
                            ],
                        },
                    ),
                ])
            }
            _ => vec![],
        }
    }

    /// Whether the layer holds other layers (its tensors are its children's).
    pub fn is_container(&self) -> bool {
        matches!(
            self,
            Layer::Sequential { .. }
                | Layer::Module { .. }
                | Layer::Heads { .. }
                | Layer::Residual { .. }
                | Layer::SqueezeExcitation { .. }
                | Layer::PatchEmbedding { .. }
                | Layer::SelfAttention { .. }
                | Layer::EncoderBlock { .. }
        )
    }

    /// Calls `f(name, layer)` on this layer and every descendant, in state-dict order
    /// (a layer before its children), with full dotted names under `name`.
    pub fn visit(&self, name: &str, f: &mut dyn FnMut(&str, &Layer)) {
        f(name, self);
        for (child_name, child) in self.children() {
            child.visit(&join(name, &child_name), f);
        }
    }

    /// Every tensor of the layer and its descendants, named relative to the layer
    /// (`weight`, `block.0.0.weight`, ...), in torch's state-dict order.
    pub fn params(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        self.visit("", &mut |name, layer| {
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

    /// The layer's own tensors (not its children's), named relative to it, in torch's order.
    pub fn own_params(&self) -> Vec<(&'static str, Vec<usize>, ParamKind)> {
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
            // Parameters registered on the module itself come before its children's.
            Layer::PatchEmbedding {
                dim,
                patch_size,
                image_size,
                ..
            } => {
                let side = image_size / patch_size.max(1);
                vec![
                    ("class_token", vec![1, 1, dim], Trainable),
                    (
                        "pos_embedding",
                        vec![1, side.saturating_mul(side).saturating_add(1), dim],
                        Trainable,
                    ),
                ]
            }
            _ => vec![],
        }
    }
}

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
