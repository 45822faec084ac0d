//! torch's default initialisation, drawn from mnemo's seeded RNG:
//! Linear/Conv2d weights kaiming_uniform(a=√5), i.e. U(−1/√fan_in, 1/√fan_in),
//! biases U(−1/√fan_in, 1/√fan_in); norms weight 1, bias 0; running mean 0, var 1.
//! A patch embedding's class token starts at 0 and its position embedding at N(0, 0.02²),
//! as torchvision's ViT. A spec with an embedding is a transformers model, initialised as
//! transformers' `_init_weights` at the embedding's `init_std` (the config's
//! `initializer_range`): the embedding and every linear, `lm_head` included, N(0, std²)
//! with zero biases, RMSNorm weights 1; the projections inside attention and gated MLPs of
//! any spec likewise (std 0.02 without an embedding). Tensors are drawn in state-dict
//! order.

use crate::arch::{join, ArchSpec, Layer};
use crate::rng::Rng;
use std::collections::BTreeMap;

fn uniform(rng: &mut Rng, n: usize, bound: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect()
}

/// N(0, std²) by Box–Muller, one pair of uniforms per value.
fn normal(rng: &mut Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            // 1 − u ∈ (0, 1]: the logarithm is finite.
            let u1 = 1.0 - rng.next_f64();
            let u2 = rng.next_f64();
            (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// Values for every float tensor of the spec, by name.
pub fn default_init(spec: &ArchSpec, rng: &mut Rng) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    // A transformers model's std, from its embedding.
    let mut model_std = None;
    spec.visit(&mut |_, layer| {
        if let Layer::Embedding { init_std, .. } = *layer {
            model_std.get_or_insert(init_std);
        }
    });
    let hf_std = model_std.unwrap_or(crate::arch::HF_INIT_STD);
    // Modules whose linear children transformers initialises N(0, std²).
    let mut hf_blocks: Vec<String> = Vec::new();
    spec.visit(&mut |prefix, layer| {
        let name = |n: &str| join(prefix, n);
        let in_hf_block = hf_blocks.iter().any(|b| {
            prefix
                .strip_prefix(b.as_str())
                .is_some_and(|r| r.starts_with('.'))
        });
        match *layer {
            Layer::GatedMlp { .. } | Layer::CausalSelfAttention(_) => {
                hf_blocks.push(prefix.to_string());
            }
            Layer::Linear {
                in_features,
                out_features,
                bias,
            } if in_hf_block || model_std.is_some() => {
                out.insert(
                    name("weight"),
                    normal(rng, in_features * out_features, hf_std),
                );
                if bias {
                    out.insert(name("bias"), vec![0.0; out_features]);
                }
            }
            Layer::Embedding {
                num_embeddings,
                embedding_dim,
                init_std,
            } => {
                out.insert(
                    name("weight"),
                    normal(rng, num_embeddings * embedding_dim, init_std),
                );
            }
            Layer::RmsNorm { hidden_size, .. } => {
                out.insert(name("weight"), vec![1.0; hidden_size]);
            }
            Layer::Linear {
                in_features,
                out_features,
                bias,
            } => {
                let bound = 1.0 / (in_features as f64).sqrt();
                out.insert(
                    name("weight"),
                    uniform(rng, in_features * out_features, bound),
                );
                if bias {
                    out.insert(name("bias"), uniform(rng, out_features, bound));
                }
            }
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel_size,
                groups,
                bias,
                ..
            } => {
                let fan_in = in_channels / groups * kernel_size * kernel_size;
                let bound = 1.0 / (fan_in as f64).sqrt();
                out.insert(name("weight"), uniform(rng, out_channels * fan_in, bound));
                if bias {
                    out.insert(name("bias"), uniform(rng, out_channels, bound));
                }
            }
            Layer::BatchNorm1d { num_features, .. } | Layer::BatchNorm2d { num_features, .. } => {
                out.insert(name("weight"), vec![1.0; num_features]);
                out.insert(name("bias"), vec![0.0; num_features]);
                out.insert(name("running_mean"), vec![0.0; num_features]);
                out.insert(name("running_var"), vec![1.0; num_features]);
            }
            Layer::LayerNorm {
                ref normalized_shape,
                ..
            } => {
                let n = normalized_shape.iter().product();
                out.insert(name("weight"), vec![1.0; n]);
                out.insert(name("bias"), vec![0.0; n]);
            }
            Layer::PatchEmbedding { .. } => {
                for (p, shape, _) in layer.own_params() {
                    let n: usize = shape.iter().product();
                    let v = if p == "class_token" {
                        vec![0.0; n]
                    } else {
                        normal(rng, n, 0.02)
                    };
                    out.insert(name(p), v);
                }
            }
            _ => {}
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kaiming_uniform_bounds_and_variance() {
        let spec = ArchSpec::parse("mlp:400-300-10").unwrap();
        let v = default_init(&spec, &mut Rng::new(0));
        let w = &v["0.weight"];
        let bound = 1.0f64 / 20.0;
        assert!(w.iter().all(|x| (x.abs() as f64) <= bound));
        // U(-b, b) has variance b²/3.
        let var = w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / w.len() as f64;
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.02, "{var}");
        assert_eq!(v["0.bias"].len(), 300);
        assert_ne!(default_init(&spec, &mut Rng::new(1))["0.weight"], *w);
    }

    #[test]
    fn every_float_tensor_of_a_tree_is_initialised() {
        for arch in ["resnet18:num_classes=10", "vit:depth=1"] {
            let spec = ArchSpec::parse(arch).unwrap();
            let v = default_init(&spec, &mut Rng::new(0));
            for p in spec.params() {
                if p.kind != crate::model::ParamKind::Counter {
                    let n: usize = p.shape.iter().product();
                    assert_eq!(v[&p.name].len(), n, "{arch} {}", p.name);
                }
            }
        }
        let spec = ArchSpec::parse("vit:depth=1,dim=64").unwrap();
        let pos = &default_init(&spec, &mut Rng::new(3))["embedding.pos_embedding"];
        let var = pos.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / pos.len() as f64;
        assert!((var.sqrt() / 0.02 - 1.0).abs() < 0.05, "{}", var.sqrt());
    }
}
