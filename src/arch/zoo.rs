//! Named architectures (`--arch resnet18:num_classes=10`): each expands to a module-tree
//! spec whose tensor names and shapes are exactly those of the torchvision model, so its
//! `state_dict()` saved with `safetensors.torch.save_file` loads as is. The expansion, not
//! the name, is what a checkpoint stores under `mnemo.arch`.
//!
//! - `resnet18` {num_classes=1000}: torchvision's `resnet18()`.
//! - `efficientnet_b0` {num_classes=1000, width_mult=1, depth_mult=1, dropout=0.2,
//!   stochastic_depth=0.2}: torchvision's `EfficientNet` with `_efficientnet_conf`'s B0
//!   stages scaled as torchvision scales them (`efficientnet_b0()` at the defaults).
//! - `effnet_multitask` {num_classes=10, num_labels=80, width_mult=1, depth_mult=1,
//!   decoder_channels=64, dropout=0.2, stochastic_depth=0.2}: efficientnet_b0's `features`
//!   (torchvision's names, so its ImageNet weights load with `init --from`) shared by three
//!   heads in a `heads` container: `seg` (an upsampling decoder to [B, 1, H, W] mask logits
//!   for H, W divisible by 32), `det` (multi-label presence, [B, num_labels]) and `cls`
//!   ([B, num_classes]).
//! - `vit` {image_size=32, patch_size=4, in_channels=3, dim=64, depth=4, heads=4,
//!   mlp_dim=128, num_classes=10, dropout=0, attention_dropout=0}: a small pre-norm ViT
//!   laid out like torchvision's `VisionTransformer`, with the attention projections as
//!   separate `q_proj`/`k_proj`/`v_proj`/`o_proj` linear layers.

use super::spec::{Activation, ArchSpec, Children, Layer, UpsampleMode};
use crate::error::{MnemoError, Result};

/// The zoo's names, for messages and help.
pub const NAMES: [&str; 4] = ["resnet18", "efficientnet_b0", "effnet_multitask", "vit"];

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
    if !NAMES.contains(&name) {
        return Ok(None);
    }
    let bad = |reason: String| MnemoError::InvalidArch {
        origin: Some(s.to_string()),
        reason,
    };
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
        "effnet_multitask" => {
            let conf = MultitaskConf {
                num_classes: opts.size("num_classes", 10).map_err(bad)?,
                num_labels: opts.size("num_labels", 80).map_err(bad)?,
                decoder_channels: opts.size("decoder_channels", 64).map_err(bad)?,
                trunk: EfficientNetConf {
                    num_classes: 1,
                    width_mult: opts.positive("width_mult", 1.0).map_err(bad)?,
                    depth_mult: opts.positive("depth_mult", 1.0).map_err(bad)?,
                    dropout: opts.probability("dropout", 0.2).map_err(bad)?,
                    stochastic_depth: opts.probability("stochastic_depth", 0.2).map_err(bad)?,
                },
            };
            opts.finish(&[
                "num_classes",
                "num_labels",
                "width_mult",
                "depth_mult",
                "decoder_channels",
                "dropout",
                "stochastic_depth",
            ])
            .map_err(bad)?;
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

fn named(children: Vec<(&str, Layer)>) -> Children {
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
    let body = vec![("block", sequential(block))];
    if stride == 1 && i == o {
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

pub struct MultitaskConf {
    pub num_classes: usize,
    pub num_labels: usize,
    pub decoder_channels: usize,
    /// The trunk's options (its `num_classes` is unused).
    pub trunk: EfficientNetConf,
}

/// Stages of ×2 upsampling in the segmentation decoder: stride 32 → 4; the last upsample
/// (×4) brings the logits back to the input size.
const DECODER_STAGES: usize = 3;

/// EfficientNet-B0's features shared by a segmentation, a detection (multi-label presence)
/// and a classification head.
///
/// `seg`: `proj` (1×1 conv to `decoder_channels`, BN, ReLU), `up1`..`up3` (bilinear ×2,
/// 3×3 conv, BN, ReLU), `out` (1×1 conv to one channel, with bias), `resize` (bilinear ×4):
/// [B, 1, H, W] logits for H, W divisible by 32. `det` and `cls`: global average pool,
/// flatten, dropout, `fc`, as torchvision's classifier.
pub fn effnet_multitask(c: &MultitaskConf) -> std::result::Result<Layer, String> {
    let (features, last_out) = efficientnet_b0_features(&c.trunk)?;
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
            ("dropout", Layer::Dropout { p: c.trunk.dropout }),
            ("fc", linear(last_out, n)),
        ])
    };
    Ok(module(vec![
        ("features", features),
        (
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
        ),
    ]))
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
