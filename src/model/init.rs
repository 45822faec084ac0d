//! torch's default initialisation, drawn from mnemo's seeded RNG:
//! Linear/Conv2d weights kaiming_uniform(a=√5), i.e. U(−1/√fan_in, 1/√fan_in),
//! biases U(−1/√fan_in, 1/√fan_in); norms weight 1, bias 0; running mean 0, var 1.

use super::spec::{ArchSpec, Layer};
use crate::rng::Rng;
use std::collections::BTreeMap;

fn uniform(rng: &mut Rng, n: usize, bound: f64) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect()
}

/// Values for every float tensor of the spec, by name.
pub fn default_init(spec: &ArchSpec, rng: &mut Rng) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    for (prefix, layers) in spec.groups() {
        for (i, layer) in layers.iter().enumerate() {
            let name = |n: &str| format!("{prefix}{i}.{n}");
            match *layer {
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
                Layer::BatchNorm1d { num_features, .. }
                | Layer::BatchNorm2d { num_features, .. } => {
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
                _ => {}
            }
        }
    }
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
}
