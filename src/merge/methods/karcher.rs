//! `karcher`: the weighted Karcher (Riemannian) mean of the models' directions on the unit
//! sphere, by at most `max_iter` fixed-point steps (stop when the tangent norm < `tol`), scaled
//! by the mean norm Σ ‖θᵢ‖/k. Every input counts, the base included.

use super::{contract, p, BasePolicy, Kernel, Scope, Spec, Ty, Val, WholeTensor};

struct Karcher {
    max_iter: i64,
    tol: f64,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl WholeTensor for Karcher {
    fn merge(&self, x: &[&[f32]], _: Option<&[f32]>, _: &[usize]) -> Result<Vec<f32>, String> {
        let n = x.len();
        if n == 1 {
            return Ok(x[0].to_vec());
        }
        let tol = self.tol;
        let len = x[0].len();
        let alphas = vec![1.0 / n as f64; n];
        let vs: Vec<Vec<f64>> = x.iter().map(|v| super::widen(v)).collect();
        let norms: Vec<f64> = vs.iter().map(|v| super::norm(v)).collect();
        let units: Vec<Vec<f64>> = vs
            .iter()
            .zip(&norms)
            .map(|(v, &nm)| {
                if nm == 0.0 {
                    vec![0.0; len]
                } else {
                    v.iter().map(|a| a / nm).collect()
                }
            })
            .collect();
        let valid: Vec<usize> = (0..n).filter(|&i| norms[i] > tol).collect();
        if valid.is_empty() {
            return Ok(vec![0.0; len]);
        }
        let asum: f64 = valid.iter().map(|&i| alphas[i]).sum();
        let na: Vec<f64> = valid.iter().map(|&i| alphas[i] / asum).collect();
        let mut mean = vec![0f64; len];
        for (&i, a) in valid.iter().zip(&na) {
            mean.iter_mut()
                .zip(&units[i])
                .for_each(|(m, u)| *m += a * u);
        }
        let mn = super::norm(&mean);
        if mn < tol {
            mean = units[valid[0]].clone();
        } else {
            mean.iter_mut().for_each(|m| *m /= mn);
        }
        for _ in 0..self.max_iter.max(0) {
            let mut tangent = vec![0f64; len];
            for (&i, a) in valid.iter().zip(&na) {
                let u = &units[i];
                let d = dot(&mean, u).clamp(-1.0, 1.0);
                let theta = d.acos();
                if theta < tol {
                    continue;
                }
                let c = a * (theta / theta.sin());
                tangent
                    .iter_mut()
                    .zip(u.iter().zip(&mean))
                    .for_each(|(t, (u, m))| *t += c * (u - d * m));
            }
            let tn = super::norm(&tangent);
            if tn < tol {
                break;
            }
            let (c, s) = (tn.cos(), tn.sin());
            mean.iter_mut()
                .zip(&tangent)
                .for_each(|(m, t)| *m = c * *m + s * (t / tn));
            let un = super::norm(&mean);
            if un > tol {
                mean.iter_mut().for_each(|m| *m /= un);
            }
        }
        let scale: f64 = alphas.iter().zip(&norms).map(|(a, n)| a * n).sum();
        Ok(mean.iter().map(|m| (scale * m) as f32).collect())
    }
}

pub(crate) static SPEC: Spec = Spec {
    name: "karcher",
    formula: "(Σ‖θᵢ‖/k)·argmin_μ Σ d(μ, θ̂ᵢ)², the Karcher mean of the directions θ̂ᵢ",
    contract: contract(BasePolicy::Ignored),
    params: &[
        p("max_iter", Ty::Int, Scope::Shared, Some(Val::I(10))),
        p("tol", Ty::Float, Scope::Shared, Some(Val::F(1e-5))),
    ],
    build: |_, b| {
        Ok(Kernel::Whole(Box::new(Karcher {
            max_iter: b.shared("max_iter").i(),
            tol: b.shared("tol").f(),
        })))
    },
};
