//! Optimizers with torch's exact update rules, applied in place on host
//! buffers in one fused pass per parameter (rayon over contiguous chunks).
//! candle's own optimizers keep their moments private; ours can be saved.

use rayon::prelude::*;
use std::collections::BTreeMap;

/// Which optimizer, with its hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum OptimizerKind {
    /// torch.optim.SGD (dampening 0); weight decay is L2 added to the gradient.
    Sgd { momentum: f32, nesterov: bool },
    /// torch.optim.Adam; weight decay is L2 added to the gradient.
    Adam { beta1: f32, beta2: f32, eps: f32 },
    /// torch.optim.AdamW: decoupled weight decay.
    AdamW { beta1: f32, beta2: f32, eps: f32 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f32,
    /// Decay every parameter (torch's default) instead of only weights with ≥ 2 dims.
    pub decay_all: bool,
}

/// Optimizer state: step count and per-parameter moment buffers.
#[derive(Clone, Debug, Default)]
pub struct Optimizer {
    pub config: Option<OptimizerConfig>,
    pub step: u64,
    /// Updates taken by earlier runs whose moments this one continues (`--init-optimizer`):
    /// Adam's bias correction counts them, as torch's does after `load_state_dict`.
    pub carried_steps: u64,
    /// First moment (Adam) or momentum buffer (SGD), by parameter name.
    pub m: BTreeMap<String, Vec<f32>>,
    /// Second moment (Adam), by parameter name.
    pub v: BTreeMap<String, Vec<f32>>,
}

const CHUNK: usize = 1 << 14;

impl Optimizer {
    pub fn new(config: OptimizerConfig) -> Self {
        Optimizer {
            config: Some(config),
            ..Default::default()
        }
    }

    /// Whether weight decay applies to a parameter: by default biases and norm
    /// parameters (1-dim) are exempt, as is common practice for AdamW.
    pub fn decays(&self, shape: &[usize]) -> bool {
        let c = self.config.as_ref().expect("configured");
        c.weight_decay != 0.0 && (c.decay_all || shape.len() >= 2)
    }

    /// Call once per optimisation step, before the `update`s of that step.
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// Leaves a parameter untouched this step (one that received no gradient), but gives
    /// it zero moments if it has none, so a saved optimizer state covers every parameter
    /// (zero moments continue exactly as absent ones would start).
    pub fn skip(&mut self, name: &str, n: usize) {
        let c = self.config.as_ref().expect("configured");
        let (first, second) = match c.kind {
            OptimizerKind::Sgd { momentum, .. } => (momentum != 0.0, false),
            _ => (true, true),
        };
        if first {
            self.m
                .entry(name.to_string())
                .or_insert_with(|| vec![0.0; n]);
        }
        if second {
            self.v
                .entry(name.to_string())
                .or_insert_with(|| vec![0.0; n]);
        }
    }

    /// Updates `w` in place from gradient `g` (already including any penalty gradient).
    pub fn update(&mut self, name: &str, shape: &[usize], w: &mut [f32], g: &[f32], lr: f64) {
        let c = self.config.clone().expect("configured");
        let wd = if self.decays(shape) {
            c.weight_decay
        } else {
            0.0
        };
        let lr32 = lr as f32;
        let n = w.len();
        match c.kind {
            OptimizerKind::Sgd { momentum, nesterov } => {
                if momentum == 0.0 {
                    w.par_chunks_mut(CHUNK)
                        .zip(g.par_chunks(CHUNK))
                        .for_each(|(w, g)| {
                            for (w, &g) in w.iter_mut().zip(g) {
                                let d = g + wd * *w;
                                *w -= lr32 * d;
                            }
                        });
                    return;
                }
                let first = !self.m.contains_key(name);
                let buf = self
                    .m
                    .entry(name.to_string())
                    .or_insert_with(|| vec![0.0; n]);
                w.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK))
                    .zip(buf.par_chunks_mut(CHUNK))
                    .for_each(|((w, g), b)| {
                        for ((w, &g), b) in w.iter_mut().zip(g).zip(b.iter_mut()) {
                            let d = g + wd * *w;
                            *b = if first { d } else { momentum * *b + d };
                            let step = if nesterov { d + momentum * *b } else { *b };
                            *w -= lr32 * step;
                        }
                    });
            }
            OptimizerKind::Adam { beta1, beta2, eps }
            | OptimizerKind::AdamW { beta1, beta2, eps } => {
                let decoupled = matches!(c.kind, OptimizerKind::AdamW { .. });
                let t = (self.carried_steps + self.step).min(i32::MAX as u64) as i32;
                let bc1 = 1.0 - (beta1 as f64).powi(t);
                let bc2_sqrt = (1.0 - (beta2 as f64).powi(t)).sqrt() as f32;
                let step_size = (lr / bc1) as f32;
                let m = self
                    .m
                    .entry(name.to_string())
                    .or_insert_with(|| vec![0.0; n]);
                let v = self
                    .v
                    .entry(name.to_string())
                    .or_insert_with(|| vec![0.0; n]);
                let k = AdamStep {
                    beta1,
                    beta2,
                    eps,
                    bc2_sqrt,
                    step_size,
                    decay: if decoupled { lr32 * wd } else { wd },
                    decoupled,
                };
                w.par_chunks_mut(CHUNK)
                    .zip(g.par_chunks(CHUNK))
                    .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                    .for_each(|((w, g), (m, v))| k.run(w, g, m, v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: OptimizerKind, wd: f32) -> OptimizerConfig {
        OptimizerConfig {
            kind,
            lr: 0.1,
            weight_decay: wd,
            decay_all: true,
        }
    }

    #[test]
    fn sgd_momentum_first_step_is_plain_sgd() {
        let mut o = Optimizer::new(cfg(
            OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            0.0,
        ));
        let mut w = vec![1.0f32];
        o.begin_step();
        o.update("w", &[1], &mut w, &[2.0], 0.1);
        assert!((w[0] - 0.8).abs() < 1e-7);
        o.begin_step();
        o.update("w", &[1], &mut w, &[2.0], 0.1);
        // buf = 0.9·2 + 2 = 3.8
        assert!((w[0] - (0.8 - 0.38)).abs() < 1e-6);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        // With bias correction the first Adam step is lr·sign(g) (up to eps).
        let mut o = Optimizer::new(cfg(
            OptimizerKind::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            0.0,
        ));
        let mut w = vec![0.0f32, 0.0];
        o.begin_step();
        o.update("w", &[2], &mut w, &[3.0, -0.5], 0.1);
        assert!(
            (w[0] + 0.1).abs() < 1e-6 && (w[1] - 0.1).abs() < 1e-6,
            "{w:?}"
        );
    }

    #[test]
    fn bias_is_exempt_from_decay_by_default() {
        let o = Optimizer::new(OptimizerConfig {
            kind: OptimizerKind::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            lr: 0.1,
            weight_decay: 0.01,
            decay_all: false,
        });
        assert!(o.decays(&[4, 3]));
        assert!(!o.decays(&[4]));
    }
}

/// One Adam/AdamW update over equal-length slices, in torch's operation order. Written as
/// an index loop over pre-sliced buffers so that it vectorises; run with AVX when the CPU
/// has it (no FMA: contraction would change the rounding relative to torch).
#[derive(Clone, Copy)]
struct AdamStep {
    beta1: f32,
    beta2: f32,
    eps: f32,
    bc2_sqrt: f32,
    step_size: f32,
    /// lr·wd for AdamW (decoupled), wd for Adam (L2 in the gradient).
    decay: f32,
    decoupled: bool,
}

impl AdamStep {
    #[inline(always)]
    fn kernel(&self, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let n = w.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        let (b1, b2, eps, bc2, ss) = (
            self.beta1,
            self.beta2,
            self.eps,
            self.bc2_sqrt,
            self.step_size,
        );
        if self.decoupled {
            let keep = 1.0 - self.decay;
            for i in 0..n {
                let wi = w[i] * keep;
                let gi = g[i];
                let mi = b1 * m[i] + (1.0 - b1) * gi;
                let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                m[i] = mi;
                v[i] = vi;
                w[i] = wi - ss * mi / (vi.sqrt() / bc2 + eps);
            }
        } else {
            let wd = self.decay;
            for i in 0..n {
                let gi = g[i] + wd * w[i];
                let mi = b1 * m[i] + (1.0 - b1) * gi;
                let vi = b2 * v[i] + (1.0 - b2) * gi * gi;
                m[i] = mi;
                v[i] = vi;
                w[i] -= ss * mi / (vi.sqrt() / bc2 + eps);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    fn kernel_avx(&self, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.kernel(w, g, m, v)
    }

    fn run(&self, w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports AVX (checked just above).
            return unsafe { self.kernel_avx(w, g, m, v) };
        }
        self.kernel(w, g, m, v)
    }
}
