//! Validation of a layer tree: every size bounded before anything is allocated, every
//! float finite and in range, container children well named, nesting bounded.

use super::layer::*;

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
    pub(super) fn check(&self, depth: usize) -> std::result::Result<(), String> {
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
}
