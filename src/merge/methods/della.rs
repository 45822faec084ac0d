//! `della` and `della_linear` (Deep et al. 2024, DELLA-Merging): each task vector entry is
//! kept with a probability that grows with its magnitude's rank in its row (MAGPRUNE):
//! pᵢ = (d − ε) + 2ε·(rank − 1)/(cols − 1), ranks ascending along axis 1 (1-D tensors are
//! one row), then rescaled to the original L1 norm (`rescale`, on by default) and combined
//! as TIES (`della`: sign election, normalised by the agreeing weights) or task arithmetic
//! (`della_linear`). The Bernoulli draws are mnemo's (seeded by `seed` per tensor and model),
//! not torch's: only seed-independent statistics can match mergekit.

use super::task_arithmetic::gta_params;
use super::{contract, p, unit, BasePolicy, Kernel, ParamSpec, Scope, Spec, Ty, Val, WholeTensor};
use crate::merge::dare::block_rng;

struct Della {
    weights: Vec<f64>,
    densities: Vec<f64>,
    epsilons: Vec<f64>,
    lambda: f64,
    normalize: bool,
    rescale: bool,
    elect_sign: bool,
    seed: u64,
}

/// MAGPRUNE's keep mask of one task vector (shape `shape`), drawn from `rng`.
fn magprune(
    delta: &[f32],
    shape: &[usize],
    d: f64,
    eps: f64,
    rng: &mut crate::rng::Rng,
) -> Vec<bool> {
    let len = delta.len();
    // Vectors along axis 1: (outer, cols, inner) with element (o, k, i) at (o·cols + k)·inner + i.
    let (outer, cols, inner) = if shape.len() < 2 {
        (1, len, 1)
    } else {
        (shape[0], shape[1], shape[2..].iter().product::<usize>())
    };
    let mut keep = vec![false; len];
    let mut order: Vec<usize> = Vec::with_capacity(cols);
    let mut probs = vec![0f64; len];
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * cols + k) * inner + i;
            order.clear();
            order.extend(0..cols);
            order.sort_by(|&a, &b| delta[at(a)].abs().total_cmp(&delta[at(b)].abs()));
            for (r, &k) in order.iter().enumerate() {
                let rank_norm = if cols > 1 {
                    (r as f64 / (cols - 1) as f64).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                probs[at(k)] = (d - eps) + rank_norm * 2.0 * eps;
            }
        }
    }
    for (k, p) in keep.iter_mut().zip(&probs) {
        *k = rng.next_f64() < *p;
    }
    keep
}

impl WholeTensor for Della {
    fn merge(&self, _: &[&[f32]], _: Option<&[f32]>, _: &[usize]) -> Result<Vec<f32>, String> {
        Err("della needs the tensor name (merge_named)".into())
    }

    fn merge_named(
        &self,
        name: &str,
        x: &[&[f32]],
        base: Option<&[f32]>,
        shape: &[usize],
    ) -> Result<Vec<f32>, String> {
        let base = base.ok_or("della needs a base")?;
        let n = x.len();
        let len = base.len();
        let mut e = vec![0f64; n * len];
        for i in 0..n {
            let delta: Vec<f32> = x[i].iter().zip(base).map(|(&v, &b)| v - b).collect();
            let (d, eps) = (self.densities[i], self.epsilons[i]);
            let ei = &mut e[i * len..(i + 1) * len];
            if d >= 1.0 {
                ei.iter_mut().zip(&delta).for_each(|(o, &v)| *o = v as f64);
            } else if d > 0.0 {
                let mut rng = block_rng(self.seed, name, i, 0);
                let keep = magprune(&delta, shape, d, eps, &mut rng);
                let before: f64 = delta.iter().map(|v| v.abs() as f64).sum();
                let after: f64 = delta
                    .iter()
                    .zip(&keep)
                    .filter(|(_, &k)| k)
                    .map(|(v, _)| v.abs() as f64)
                    .sum();
                let scale = if !self.rescale || before < 1e-7 || after < 1e-7 {
                    1.0
                } else {
                    before / after
                };
                for ((o, &v), &k) in ei.iter_mut().zip(&delta).zip(&keep) {
                    if k {
                        *o = v as f64 * scale;
                    }
                }
            }
            ei.iter_mut().for_each(|v| *v *= self.weights[i]);
        }
        let wsum: f64 = self.weights.iter().sum();
        let lin_div = if wsum.abs() < 1e-8 { 1.0 } else { wsum };
        Ok((0..len)
            .map(|j| {
                let mut mixed;
                if self.elect_sign {
                    let positive = (0..n).map(|i| e[i * len + j]).sum::<f64>() >= 0.0;
                    let (mut m, mut div) = (0f64, 0f64);
                    for i in 0..n {
                        let v = e[i * len + j];
                        if (positive && v > 0.0) || (!positive && v < 0.0) {
                            m += v;
                            div += self.weights[i];
                        }
                    }
                    mixed = m;
                    if self.normalize {
                        mixed /= if div == 0.0 { 1.0 } else { div };
                    }
                } else {
                    mixed = (0..n).map(|i| e[i * len + j]).sum();
                    if self.normalize {
                        mixed /= lin_div;
                    }
                }
                (base[j] as f64 + self.lambda * mixed) as f32
            })
            .collect())
    }
}

const fn params(normalize: bool) -> [ParamSpec; 8] {
    let g = gta_params(normalize, true);
    [
        g[0],
        g[1],
        g[2],
        g[3],
        g[4],
        g[5],
        p("epsilon", Ty::Float, Scope::NonBase, Some(Val::F(0.15))),
        p("seed", Ty::Int, Scope::Shared, Some(Val::I(0))),
    ]
}
const DELLA_PARAMS: [ParamSpec; 8] = params(true);
const LINEAR_PARAMS: [ParamSpec; 8] = params(false);

fn build(b: &super::Bound, elect_sign: bool) -> Result<Kernel, String> {
    let densities = b.each_f("density");
    let epsilons = b.each_f("epsilon");
    for (&d, &eps) in densities.iter().zip(&epsilons) {
        unit("density", d)?;
        if d < 1.0 && d > 0.0 && (d + eps >= 1.0 || d - eps <= 0.0) {
            return Err(format!(
                "epsilon must be chosen such that density ± epsilon is in (0, 1): density {d}, epsilon {eps}"
            ));
        }
    }
    Ok(Kernel::Whole(Box::new(Della {
        weights: b.each_f("weight"),
        densities,
        epsilons,
        lambda: b.shared("lambda").f(),
        normalize: b.shared("normalize").b(),
        rescale: b.shared("rescale").b(),
        elect_sign,
        seed: b.shared("seed").i() as u64,
    })))
}

pub(crate) static DELLA: Spec = Spec {
    name: "della",
    formula: "TIES on MAGPRUNE(δᵢ): kept with p = d − ε + 2ε·rank/(cols−1), L1-rescaled",
    contract: contract(BasePolicy::Required),
    params: &DELLA_PARAMS,
    build: |_, b| build(b, true),
};

pub(crate) static DELLA_LINEAR: Spec = Spec {
    name: "della_linear",
    formula: "base + λ·Σ wᵢ·MAGPRUNE(δᵢ)",
    contract: contract(BasePolicy::Required),
    params: &LINEAR_PARAMS,
    build: |_, b| build(b, false),
};
