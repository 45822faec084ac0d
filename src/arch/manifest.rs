//! What a layer holds: its kind's name, its children, and the torch-exact manifest of
//! its parameter names (`nn.Sequential` / `nn.ModuleDict` indexing), in `state_dict()` order.

use super::layer::*;
use std::borrow::Cow;

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
            Layer::Embedding { .. } => "embedding",
            Layer::RmsNorm { .. } => "rmsnorm",
            Layer::GatedMlp { .. } => "gated-mlp",
            Layer::CausalSelfAttention(_) => "causal-self-attention",
            Layer::DecoderLayer(_) => "decoder-layer",
            Layer::TiedLinear { .. } => "tied-linear",
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
            Layer::GatedMlp {
                hidden_size: d,
                intermediate_size: m,
                bias,
            } => owned(vec![
                ("gate_proj", linear(d, m, bias)),
                ("up_proj", linear(d, m, bias)),
                ("down_proj", linear(m, d, bias)),
            ]),
            Layer::CausalSelfAttention(ref a) => {
                let (d, q, kv) = (
                    a.hidden_size,
                    a.num_attention_heads.saturating_mul(a.head_dim),
                    a.num_key_value_heads.saturating_mul(a.head_dim),
                );
                owned(vec![
                    ("q_proj", linear(d, q, a.qkv_bias)),
                    ("k_proj", linear(d, kv, a.qkv_bias)),
                    ("v_proj", linear(d, kv, a.qkv_bias)),
                    ("o_proj", linear(q, d, a.o_bias)),
                ])
            }
            // `LlamaDecoderLayer` registers self_attn, mlp, then the two norms.
            Layer::DecoderLayer(ref c) => {
                let d = c.attention.hidden_size;
                let norm = || Layer::RmsNorm {
                    hidden_size: d,
                    eps: c.rms_norm_eps,
                };
                owned(vec![
                    ("self_attn", Layer::CausalSelfAttention(c.attention.clone())),
                    (
                        "mlp",
                        Layer::GatedMlp {
                            hidden_size: d,
                            intermediate_size: c.intermediate_size,
                            bias: c.mlp_bias,
                        },
                    ),
                    ("input_layernorm", norm()),
                    ("post_attention_layernorm", norm()),
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
                | Layer::GatedMlp { .. }
                | Layer::CausalSelfAttention(_)
                | Layer::DecoderLayer(_)
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
            Layer::Embedding {
                num_embeddings,
                embedding_dim,
                ..
            } => vec![("weight", vec![num_embeddings, embedding_dim], Trainable)],
            Layer::RmsNorm { hidden_size, .. } => vec![("weight", vec![hidden_size], Trainable)],
            _ => vec![],
        }
    }
}
