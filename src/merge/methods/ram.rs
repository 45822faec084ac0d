//! `ram` and `ramplus_tl` (Reinforced Agent Merging, arXiv 2601.13572). Per element, the
//! task vectors with |δᵢ| > ε contribute: alone, in full; shared by c of them, δᵢ/c.
//! ramplus_tl scales a model's unique entries by λᵢ = 1 + r·clamp(ρᵢ, 0, α), ρᵢ = (its shared
//! entries) / max(its unique entries, ε).

use super::{contract, p, BasePolicy, Kernel, Scope, Spec, Ty, Val, WholeTensor};

struct Ram {
    epsilon: f64,
    /// ramplus_tl's (r, α).
    plus: Option<(f64, f64)>,
}

impl WholeTensor for Ram {
    fn merge(&self, x: &[&[f32]], base: Option<&[f32]>, _: &[usize]) -> Result<Vec<f32>, String> {
        let base = base.ok_or("ram needs a base")?;
        let n = x.len();
        let len = base.len();
        // mergekit computes δ in the tensors' dtype (f32 here) and compares |δ| > ε there (ε
        // rounded to f32, as torch does with a Python scalar).
        let eps32 = self.epsilon as f32;
        let tv = |i: usize, j: usize| x[i][j] - base[j];
        let nz = |i: usize, j: usize| tv(i, j).abs() > eps32;
        let counts: Vec<usize> = (0..len)
            .map(|j| (0..n).filter(|&i| nz(i, j)).count())
            .collect();
        let lambdas: Vec<f64> = match self.plus {
            None => vec![1.0; n],
            Some((r, alpha)) => (0..n)
                .map(|i| {
                    let shared = (0..len).filter(|&j| nz(i, j) && counts[j] > 1).count() as f64;
                    let unique = (0..len).filter(|&j| nz(i, j) && counts[j] == 1).count() as f64;
                    let rho = shared / unique.max(self.epsilon);
                    1.0 + r * rho.clamp(0.0, alpha)
                })
                .collect(),
        };
        Ok((0..len)
            .map(|j| {
                let c = counts[j];
                let mut m = 0f64;
                for (i, lambda) in lambdas.iter().enumerate() {
                    if !nz(i, j) {
                        continue;
                    }
                    let d = tv(i, j) as f64;
                    if c == 1 {
                        m += d * lambda;
                    } else {
                        m += d / c as f64;
                    }
                }
                (base[j] as f64 + m) as f32
            })
            .collect())
    }
}

pub(crate) static RAM: Spec = Spec {
    name: "ram",
    formula: "base + Σᵢ δᵢ·[|δᵢ| > ε]/c, c = #{i : |δᵢ| > ε}",
    contract: contract(BasePolicy::Required),
    params: &[p("epsilon", Ty::Float, Scope::Shared, Some(Val::F(1e-5)))],
    build: |_, b| {
        Ok(Kernel::Whole(Box::new(Ram {
            epsilon: b.shared("epsilon").f(),
            plus: None,
        })))
    },
};

pub(crate) static RAMPLUS_TL: Spec = Spec {
    name: "ramplus_tl",
    formula: "ram with unique entries × (1 + r·clamp(ρᵢ, 0, α)), ρᵢ = shared/unique entries of δᵢ",
    contract: contract(BasePolicy::Required),
    params: &[
        p("r", Ty::Float, Scope::Shared, Some(Val::F(0.1))),
        p("alpha", Ty::Float, Scope::Shared, Some(Val::F(0.2))),
        p("epsilon", Ty::Float, Scope::Shared, Some(Val::F(1e-5))),
    ],
    build: |_, b| {
        Ok(Kernel::Whole(Box::new(Ram {
            epsilon: b.shared("epsilon").f(),
            plus: Some((b.shared("r").f(), b.shared("alpha").f())),
        })))
    },
};
