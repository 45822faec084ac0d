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

/// The largest vocabulary an embedding may have: token ids travel as f32, which holds
/// every integer exactly only up to 2^24.
pub const MAX_TOKEN_ID: usize = 1 << 24;

fn check_attention(a: &AttentionConf) -> std::result::Result<(), String> {
    let what = "causal-self-attention";
    for (n, name) in [
        (a.hidden_size, "hidden_size"),
        (a.num_attention_heads, "num_attention_heads"),
        (a.num_key_value_heads, "num_key_value_heads"),
        (a.head_dim, "head_dim"),
    ] {
        if n == 0 {
            return Err(format!("{what} {name} must be positive"));
        }
    }
    if !a.num_attention_heads.is_multiple_of(a.num_key_value_heads) {
        return Err(format!(
            "{what} num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
            a.num_attention_heads, a.num_key_value_heads
        ));
    }
    // Rotary embeddings turn pairs of dimensions (the two halves of each head).
    if !a.head_dim.is_multiple_of(2) {
        return Err(format!("{what} head_dim ({}) must be even", a.head_dim));
    }
    if !(a.rope_theta.is_finite() && a.rope_theta > 1.0) {
        return Err(format!(
            "{what} rope_theta must be a finite number > 1, got {}",
            a.rope_theta
        ));
    }
    probability(
        a.attention_dropout,
        "causal-self-attention attention_dropout",
    )?;
    if a.sliding_window == Some(0) {
        return Err(format!("{what} sliding_window must be positive"));
    }
    let factor_ok = |f: f64| f.is_finite() && f > 0.0;
    match a.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) if !factor_ok(factor) => {
            return Err(format!(
                "{what} rope_scaling factor must be a finite number > 0, got {factor}"
            ));
        }
        Some(RopeScaling::Linear { .. }) => {}
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            if ![factor, low_freq_factor, high_freq_factor]
                .into_iter()
                .all(factor_ok)
                || original_max_position_embeddings == 0
            {
                return Err(format!("{what} llama3 rope_scaling needs finite factors > 0 and a positive original_max_position_embeddings"));
            }
            // transformers divides by their difference.
            if high_freq_factor <= low_freq_factor {
                return Err(format!(
                    "{what} llama3 rope_scaling high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})"
                ));
            }
        }
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
            Layer::Embedding {
                num_embeddings,
                embedding_dim,
                init_std,
            } => {
                if !(init_std.is_finite() && init_std >= 0.0) {
                    return Err(format!(
                        "embedding init_std (initializer_range) must be a finite number ≥ 0, got {init_std}"
                    ));
                }
                pos(num_embeddings, "embedding num_embeddings")?;
                pos(embedding_dim, "embedding embedding_dim")?;
                // Token ids are held as f32: exact only below 2^24.
                if num_embeddings > MAX_TOKEN_ID {
                    return Err(format!(
                        "embedding num_embeddings {num_embeddings} exceeds {MAX_TOKEN_ID} (token ids are held as f32)"
                    ));
                }
                Ok(())
            }
            Layer::RmsNorm { hidden_size, eps } => {
                pos(hidden_size, "rmsnorm hidden_size")?;
                norm_eps(eps, "rmsnorm eps")
            }
            Layer::GatedMlp {
                hidden_size,
                intermediate_size,
                ..
            } => {
                pos(hidden_size, "gated-mlp hidden_size")?;
                pos(intermediate_size, "gated-mlp intermediate_size")
            }
            Layer::CausalSelfAttention(ref a) => check_attention(a),
            Layer::DecoderLayer(ref c) => {
                check_attention(&c.attention)?;
                pos(c.intermediate_size, "decoder-layer intermediate_size")?;
                norm_eps(c.rms_norm_eps, "decoder-layer rms_norm_eps")
            }
            Layer::TiedLinear { ref weight } => {
                if weight.is_empty() {
                    return Err("tied-linear needs the name of the weight it shares".into());
                }
                Ok(())
            }
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
