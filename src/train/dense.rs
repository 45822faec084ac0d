//! A fused CPU forward/backward for dense networks: Linear layers, each
//! optionally followed by ReLU, tanh or sigmoid (Flatten is free on
//! row-major data). Profiling candle's autograd on `mlp:784-400-400-10`
//! showed half of a step outside the matmuls: a fresh allocation per op, a
//! zero tensor plus an add per accumulated gradient, and a spinning worker
//! pool for small elementwise ops. Here every buffer is allocated once and
//! reused, each layer is three `gemm` calls (forward, weight gradient, input
//! gradient) with bias and activation fused around them, and the gradients
//! land directly in the engine's host buffers. Other layer types (and CUDA)
//! use candle's autograd; both paths are checked against PyTorch.

use crate::linalg::Parallelism;
use crate::model::{ArchSpec, Layer};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Identity,
    Relu,
    Tanh,
    Sigmoid,
}

#[derive(Debug)]
struct DenseLayer {
    weight: String,
    bias: Option<String>,
    in_f: usize,
    out_f: usize,
    act: Act,
}

/// The plan and reusable buffers of one dense network (one head of it).
#[derive(Debug)]
pub struct DenseNet {
    layers: Vec<DenseLayer>,
    /// acts[0] is the batch input; acts[l+1] the output of layer l after its activation.
    acts: Vec<Vec<f32>>,
    delta: Vec<f32>,
    scratch: Vec<f32>,
    sq_delta: Vec<f32>,
    sq_act: Vec<f32>,
    batch: usize,
}

fn par() -> Parallelism {
    Parallelism::Rayon(rayon::current_num_threads())
}

/// `linalg::matmul` on every thread of the pool.
#[allow(clippy::too_many_arguments)]
fn matmul(
    dims: (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
) {
    crate::linalg::matmul(
        dims,
        dst,
        accumulate,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
        par(),
    );
}

impl DenseNet {
    /// A plan when every layer on the path to `head` is Linear, an elementwise activation
    /// right after a Linear, or Flatten; `None` otherwise.
    pub fn plan(spec: &ArchSpec, head: Option<&str>) -> Option<DenseNet> {
        let groups: Vec<(String, &[Layer])> = match (spec, head) {
            (ArchSpec::Sequential(l), _) => vec![(String::new(), l.as_slice())],
            (ArchSpec::MultiHead { trunk, heads }, Some(h)) => vec![
                ("trunk.".to_string(), trunk.as_slice()),
                (format!("heads.{h}."), heads.get(h)?.as_slice()),
            ],
            _ => return None,
        };
        let mut layers: Vec<DenseLayer> = Vec::new();
        for (prefix, group) in groups {
            for (i, layer) in group.iter().enumerate() {
                let act = match layer {
                    Layer::Linear {
                        in_features,
                        out_features,
                        bias,
                    } => {
                        if layers.last().is_some_and(|l| l.out_f != *in_features) {
                            return None;
                        }
                        layers.push(DenseLayer {
                            weight: format!("{prefix}{i}.weight"),
                            bias: bias.then(|| format!("{prefix}{i}.bias")),
                            in_f: *in_features,
                            out_f: *out_features,
                            act: Act::Identity,
                        });
                        continue;
                    }
                    Layer::Flatten => continue,
                    Layer::Relu => Act::Relu,
                    Layer::Tanh => Act::Tanh,
                    Layer::Sigmoid => Act::Sigmoid,
                    _ => return None,
                };
                match layers.last_mut() {
                    Some(l) if l.act == Act::Identity => l.act = act,
                    _ => return None,
                }
            }
        }
        if layers.is_empty() {
            return None;
        }
        let n = layers.len();
        Some(DenseNet {
            layers,
            acts: vec![Vec::new(); n + 1],
            delta: Vec::new(),
            scratch: Vec::new(),
            sq_delta: Vec::new(),
            sq_act: Vec::new(),
            batch: 0,
        })
    }

    /// Features the first layer expects.
    pub fn in_features(&self) -> usize {
        self.layers[0].in_f
    }

    /// Output size of the last layer.
    pub fn classes(&self) -> usize {
        self.layers.last().map_or(0, |l| l.out_f)
    }

    /// Forward pass on the rows `idx` of `inputs` (row length = in_features); returns logits.
    pub fn forward(
        &mut self,
        weights: &BTreeMap<String, Vec<f32>>,
        inputs: &[f32],
        idx: &[usize],
    ) -> &[f32] {
        let b = idx.len();
        self.batch = b;
        let d = self.in_features();
        let x = &mut self.acts[0];
        x.clear();
        for &i in idx {
            x.extend_from_slice(&inputs[i * d..(i + 1) * d]);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let (before, after) = self.acts.split_at_mut(l + 1);
            let (a, z) = (&before[l], &mut after[0]);
            z.resize(b * layer.out_f, 0.0);
            let with_bias = match &layer.bias {
                Some(name) => {
                    let bias = &weights[name];
                    z.chunks_exact_mut(layer.out_f)
                        .for_each(|row| row.copy_from_slice(bias));
                    true
                }
                None => false,
            };
            // z = a·Wᵀ (+ bias): W is [out, in] row-major, so Wᵀ has strides (1, in).
            matmul(
                (b, layer.out_f, layer.in_f),
                z,
                with_bias,
                a,
                (layer.in_f, 1),
                &weights[&layer.weight],
                (1, layer.in_f),
            );
            match layer.act {
                Act::Identity => {}
                Act::Relu => z.iter_mut().for_each(|v| *v = v.max(0.0)),
                Act::Tanh => z.iter_mut().for_each(|v| *v = v.tanh()),
                Act::Sigmoid => z.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
            }
        }
        &self.acts[self.layers.len()]
    }

    /// Backward pass of the last `forward` from dL/dlogits; adds each parameter's gradient
    /// into `grads` (buffers of the parameters' sizes, created zeroed when missing).
    pub fn backward(
        &mut self,
        weights: &BTreeMap<String, Vec<f32>>,
        grad_logits: &[f32],
        grads: &mut BTreeMap<String, Vec<f32>>,
    ) {
        self.backward_impl(weights, grad_logits, grads, false)
    }

    /// As `backward`, but adds the sum over the batch's examples of each example's
    /// *squared* gradient: a per-example weight gradient is δᵢ ⊗ aᵢ, so Σᵢ gᵢ² = (δ²)ᵀ·(a²),
    /// one matmul per layer, and per-example gradients are never formed.
    pub fn backward_squared(
        &mut self,
        weights: &BTreeMap<String, Vec<f32>>,
        grad_logits: &[f32],
        sums: &mut BTreeMap<String, Vec<f32>>,
    ) {
        self.backward_impl(weights, grad_logits, sums, true)
    }

    fn backward_impl(
        &mut self,
        weights: &BTreeMap<String, Vec<f32>>,
        grad_logits: &[f32],
        grads: &mut BTreeMap<String, Vec<f32>>,
        squared: bool,
    ) {
        let b = self.batch;
        self.delta.clear();
        self.delta.extend_from_slice(grad_logits);
        for l in (0..self.layers.len()).rev() {
            let layer = &self.layers[l];
            let (o, i) = (layer.out_f, layer.in_f);
            let gw = grads
                .entry(layer.weight.clone())
                .or_insert_with(|| vec![0.0; o * i]);
            let (d, a): (&[f32], &[f32]) = if squared {
                self.sq_delta.clear();
                self.sq_delta.extend(self.delta.iter().map(|v| v * v));
                self.sq_act.clear();
                self.sq_act.extend(self.acts[l].iter().map(|v| v * v));
                (&self.sq_delta, &self.sq_act)
            } else {
                (&self.delta, &self.acts[l])
            };
            // dW[o×i] += δᵀ[o×b]·a[b×i]  (squared: (δ²)ᵀ·(a²))
            matmul((o, i, b), gw, true, d, (1, o), a, (i, 1));
            if let Some(name) = &layer.bias {
                let gb = grads.entry(name.clone()).or_insert_with(|| vec![0.0; o]);
                for row in d.chunks_exact(o) {
                    gb.iter_mut().zip(row).for_each(|(g, d)| *g += d);
                }
            }
            if l == 0 {
                break;
            }
            // dA[b×i] = δ[b×o]·W[o×i], then through the previous layer's activation.
            self.scratch.resize(b * i, 0.0);
            matmul(
                (b, i, o),
                &mut self.scratch,
                false,
                &self.delta,
                (o, 1),
                &weights[&layer.weight],
                (i, 1),
            );
            let prev = self.layers[l - 1].act;
            let out = &self.acts[l]; // the previous layer's activated output
            match prev {
                Act::Identity => {}
                Act::Relu => self
                    .scratch
                    .iter_mut()
                    .zip(out)
                    .for_each(|(g, &y)| *g = if y > 0.0 { *g } else { 0.0 }),
                Act::Tanh => self
                    .scratch
                    .iter_mut()
                    .zip(out)
                    .for_each(|(g, &y)| *g *= 1.0 - y * y),
                Act::Sigmoid => self
                    .scratch
                    .iter_mut()
                    .zip(out)
                    .for_each(|(g, &y)| *g *= y * (1.0 - y)),
            }
            std::mem::swap(&mut self.delta, &mut self.scratch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_only_dense_chains() {
        let mlp = ArchSpec::parse("mlp:4-3-2").unwrap();
        let net = DenseNet::plan(&mlp, None).unwrap();
        assert_eq!((net.in_features(), net.classes()), (4, 2));
        let conv = ArchSpec::parse(
            r#"[{"type":"conv2d","in_channels":1,"out_channels":2,"kernel_size":3}]"#,
        )
        .unwrap();
        assert!(DenseNet::plan(&conv, None).is_none());
        let double = ArchSpec::parse(
            r#"[{"type":"linear","in_features":2,"out_features":2},{"type":"relu"},{"type":"relu"}]"#,
        )
        .unwrap();
        assert!(DenseNet::plan(&double, None).is_none());
        // Containers go through autograd, even when they hold only a linear chain.
        let nested = ArchSpec::parse(
            r#"[{"type":"sequential","layers":[{"type":"linear","in_features":2,"out_features":2}]}]"#,
        )
        .unwrap();
        assert!(DenseNet::plan(&nested, None).is_none());
        let tree = ArchSpec::parse(
            r#"{"type":"module","children":{"fc":{"type":"linear","in_features":2,"out_features":2}}}"#,
        )
        .unwrap();
        assert!(DenseNet::plan(&tree, None).is_none());
    }

    #[test]
    fn gradients_match_finite_differences() {
        // A 3-2-2 tanh/sigmoid net: the loss Σ logits·g has gradient checkable numerically.
        let spec = ArchSpec::parse(
            r#"[{"type":"linear","in_features":3,"out_features":2},{"type":"tanh"},
                {"type":"linear","in_features":2,"out_features":2},{"type":"sigmoid"},
                {"type":"linear","in_features":2,"out_features":2,"bias":false}]"#,
        )
        .unwrap();
        let mut net = DenseNet::plan(&spec, None).unwrap();
        let mut w = BTreeMap::new();
        w.insert("0.weight".to_string(), vec![0.1, -0.2, 0.3, 0.4, 0.5, -0.6]);
        w.insert("0.bias".to_string(), vec![0.05, -0.05]);
        w.insert("2.weight".to_string(), vec![0.7, -0.8, 0.9, 0.2]);
        w.insert("2.bias".to_string(), vec![0.1, 0.2]);
        w.insert("4.weight".to_string(), vec![-0.3, 0.6, 0.8, -0.1]);
        let x = [1.0, -2.0, 0.5, 0.3, 0.2, -0.1];
        let g = [0.5, -1.0, 2.0, 0.25];
        let loss = |net: &mut DenseNet, w: &BTreeMap<String, Vec<f32>>| -> f64 {
            let out = net.forward(w, &x, &[0, 1]);
            out.iter().zip(&g).map(|(a, b)| (a * b) as f64).sum()
        };
        loss(&mut net, &w);
        let mut grads = BTreeMap::new();
        net.backward(&w, &g, &mut grads);
        for (name, values) in w.clone() {
            for (j, _) in values.iter().enumerate() {
                let h = 1e-3f32;
                let mut wp = w.clone();
                wp.get_mut(&name).unwrap()[j] += h;
                let mut wm = w.clone();
                wm.get_mut(&name).unwrap()[j] -= h;
                let fd = (loss(&mut net, &wp) - loss(&mut net, &wm)) / (2.0 * h as f64);
                let an = grads[&name][j] as f64;
                assert!(
                    (fd - an).abs() < 1e-3,
                    "{name}[{j}]: analytic {an} vs numeric {fd}"
                );
            }
        }
    }
}
