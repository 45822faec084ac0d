//! `multislerp` (barycentric interpolation on the hypersphere): the task vectors (or the
//! models, without a base) are normalised, their weighted mean m̂ taken as the tangent point,
//! the weighted tangent vectors summed (τ) and mapped back: (m̂·cos‖τ‖ + τ·sin‖τ‖/‖τ‖)·Σ wᵢ‖δᵢ‖.

use super::{p, BasePolicy, Contract, Kernel, Scope, Spec, Ty, Val, WholeTensor};

struct MultiSlerp {
    weights: Vec<f64>,
    normalize: bool,
    eps: f64,
}

impl WholeTensor for MultiSlerp {
    fn merge(&self, x: &[&[f32]], base: Option<&[f32]>, _: &[usize]) -> Result<Vec<f32>, String> {
        let n = x.len();
        if n == 1 {
            return Ok(x[0].to_vec());
        }
        let len = x[0].len();
        let tv: Vec<Vec<f64>> = (0..n)
            .map(|i| match base {
                Some(b) => x[i].iter().zip(b).map(|(&v, &b)| (v - b) as f64).collect(),
                None => super::widen(x[i]),
            })
            .collect();
        let mut w = self.weights.clone();
        if self.normalize {
            let s: f64 = w.iter().sum();
            w.iter_mut().for_each(|v| *v /= s);
        }
        let norms: Vec<f64> = tv.iter().map(|v| super::norm(v)).collect();
        let units: Vec<Vec<f64>> = tv
            .iter()
            .zip(&norms)
            .map(|(v, n)| v.iter().map(|a| a / (n + self.eps)).collect())
            .collect();
        let mut mean = vec![0f64; len];
        for (u, wi) in units.iter().zip(&w) {
            mean.iter_mut().zip(u).for_each(|(m, a)| *m += a * wi);
        }
        let mean_norm = super::norm(&mean);
        let add_base = |mut r: Vec<f64>| {
            if let Some(b) = base {
                r.iter_mut().zip(b).for_each(|(o, &b)| *o += b as f64);
            }
            super::narrow(&r)
        };
        if mean_norm < self.eps {
            if n == 2 {
                let r = (0..len)
                    .map(|j| tv[0][j] * w[0] + tv[1][j] * w[1])
                    .collect();
                return Ok(add_base(r));
            }
            return Err("the weighted sum of the (unit) task vectors is zero: antipodal inputs with balancing weights".into());
        }
        mean.iter_mut().for_each(|m| *m /= mean_norm);
        let mut tangent = vec![0f64; len];
        for (u, wi) in units.iter().zip(&w) {
            let dot: f64 = u.iter().zip(&mean).map(|(a, m)| a * m).sum();
            tangent
                .iter_mut()
                .zip(u.iter().zip(&mean))
                .for_each(|(t, (a, m))| *t += (a - dot * m) * wi);
        }
        let tn = super::norm(&tangent) + self.eps;
        let avg_norm: f64 = norms.iter().zip(&w).map(|(n, w)| n * w).sum();
        let r = mean
            .iter()
            .zip(&tangent)
            .map(|(m, t)| (m * tn.cos() + t * (tn.sin() / tn)) * avg_norm)
            .collect();
        Ok(add_base(r))
    }
}

pub(crate) static SPEC: Spec = Spec {
    name: "multislerp",
    formula: "[base +] (m̂·cos‖τ‖ + τ·sin‖τ‖/‖τ‖)·Σ wᵢ‖δᵢ‖, m̂ the weighted mean direction, τ the weighted tangents",
    contract: Contract {
        base: BasePolicy::Optional,
        min_inputs: 1,
        max_inputs: None,
        min_non_base: 1,
        max_non_base: None,
    },
    params: &[
        p("weight", Ty::Float, Scope::NonBase, None),
        p("normalize_weights", Ty::Bool, Scope::Shared, Some(Val::B(true))),
        p("eps", Ty::Float, Scope::Shared, Some(Val::F(1e-8))),
    ],
    build: |_, b| {
        Ok(Kernel::Whole(Box::new(MultiSlerp {
            weights: b.each_f("weight"),
            normalize: b.shared("normalize_weights").b(),
            eps: b.shared("eps").f(),
        })))
    },
};
