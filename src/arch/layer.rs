//! The layer kinds of the spec language: one enum variant per torch module kind, with
//! torch's constructor arguments as fields (serde's JSON form, as stored under `mnemo.arch`).
//!
//! Container kinds (`sequential`, `module`, `residual`, and the fixed-structure blocks
//! `squeeze-excitation`, `patch-embedding`, `self-attention`, `encoder-block`) make a spec a
//! module tree: every tensor is named by its dotted module path, as torch's `state_dict()`
//! names it.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashSet;

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
fn rope_theta() -> f64 {
    10000.0
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

/// How rotary frequencies are rescaled for longer contexts (Hugging Face's `rope_scaling`
/// / `rope_parameters`, by `rope_type`), applied to the default inverse frequencies
/// θ^(−2i/d) as `transformers`' `ROPE_INIT_FUNCTIONS` do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase", deny_unknown_fields)]
pub enum RopeScaling {
    /// Every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's: low frequencies (wavelength above original/low_freq_factor) divided by
    /// `factor`, high ones kept, the band between interpolated smoothly.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Hugging Face's `LlamaAttention` (and Mistral's, Qwen2's): causal grouped-query
/// self-attention with rotary position embeddings on `[B, T, hidden_size]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttentionConf {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    /// Heads of k and v (grouped-query attention: each serves num_attention_heads /
    /// num_key_value_heads query heads).
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    #[serde(default = "rope_theta")]
    pub rope_theta: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Biases on q_proj, k_proj, v_proj (Llama's `attention_bias`; always on in Qwen2).
    #[serde(default)]
    pub qkv_bias: bool,
    /// A bias on o_proj (Llama's `attention_bias`; never in Qwen2).
    #[serde(default)]
    pub o_bias: bool,
    /// Dropout on the attention weights in train mode.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Mistral's sliding window: a position attends to the last `sliding_window` ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
}

/// Hugging Face's `LlamaDecoderLayer`: x + self_attn(input_layernorm(x)), then
/// + mlp(post_attention_layernorm(·)), with RMSNorms and a SwiGLU MLP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConf {
    pub attention: AttentionConf,
    pub intermediate_size: usize,
    #[serde(default = "rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub mlp_bias: bool,
}

fn rms_eps() -> f64 {
    1e-6
}

/// transformers' default `initializer_range`.
pub const HF_INIT_STD: f64 = 0.02;

fn hf_init_std() -> f64 {
    HF_INIT_STD
}

fn is_hf_init_std(s: &f64) -> bool {
    *s == HF_INIT_STD
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
    /// `nn.Embedding`: `weight [num_embeddings, embedding_dim]`. The input holds token ids
    /// `[B, T]` (integers; held as f32, exact below 2²⁴), the output is
    /// `[B, T, embedding_dim]`.
    /// A spec with an embedding is a transformers model: `mnemo init` draws the embedding
    /// and every linear N(0, `init_std`²) with zero biases, as transformers'
    /// `_init_weights` does at the config's `initializer_range` (0.02 when absent).
    #[serde(rename = "embedding")]
    Embedding {
        num_embeddings: usize,
        embedding_dim: usize,
        #[serde(default = "hf_init_std", skip_serializing_if = "is_hf_init_std")]
        init_std: f64,
    },
    /// Llama's `RMSNorm` over the last dimension, in f32: weight · x / √(mean(x²) + eps).
    #[serde(rename = "rmsnorm")]
    RmsNorm {
        hidden_size: usize,
        #[serde(default = "rms_eps")]
        eps: f64,
    },
    /// Hugging Face's `LlamaMLP` (SwiGLU): down_proj(silu(gate_proj(x)) · up_proj(x)).
    #[serde(rename = "gated-mlp")]
    GatedMlp {
        hidden_size: usize,
        intermediate_size: usize,
        #[serde(default)]
        bias: bool,
    },
    /// Causal self-attention with rotary embeddings: children `q_proj`, `k_proj`,
    /// `v_proj`, `o_proj` (see [`AttentionConf`]).
    #[serde(rename = "causal-self-attention")]
    CausalSelfAttention(AttentionConf),
    /// A decoder block: children `self_attn`, `mlp`, `input_layernorm`,
    /// `post_attention_layernorm` (see [`DecoderConf`]).
    #[serde(rename = "decoder-layer")]
    DecoderLayer(DecoderConf),
    /// The output projection of a model whose input and output embeddings are tied
    /// (`tie_word_embeddings`): y = x·Wᵀ with W the tensor `weight` of another layer (e.g.
    /// `model.embed_tokens.weight`). It holds no tensor of its own, as the state dict
    /// Hugging Face saves holds none for `lm_head`.
    #[serde(rename = "tied-linear")]
    TiedLinear { weight: String },
    /// Named alternative heads (`nn.ModuleDict`): the forward pass runs only the head
    /// chosen with `--head`; the others keep their tensors and are not trained.
    #[serde(rename = "heads")]
    Heads { heads: Children },
}
