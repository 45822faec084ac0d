//! `task_arithmetic` (Ilharco et al. 2023): base + λ·Σ wᵢδᵢ, δᵢ = θᵢ − base (÷ Σ wᵢ with
//! `normalize`). Also the shared part of mergekit's "generalized task arithmetic" family
//! (ties, dare_*, breadcrumbs*): [`gta_params`] and [`gta`].

use super::{contract, p, unit, BasePolicy, Bound, Kernel, ParamSpec, Scope, Spec, Ty, Val};
use crate::merge::{DareRescale, Plan, Sparsify};

/// The parameters every method of the family takes, with the family member's defaults.
pub(crate) const fn gta_params(normalize: bool, rescale: bool) -> [ParamSpec; 6] {
    [
        p("int8_mask", Ty::Bool, Scope::Shared, Some(Val::B(false))),
        p(
            "normalize",
            Ty::Bool,
            Scope::Shared,
            Some(Val::B(normalize)),
        ),
        p("rescale", Ty::Bool, Scope::Shared, Some(Val::B(rescale))),
        p("lambda", Ty::Float, Scope::Shared, Some(Val::F(1.0))),
        p("weight", Ty::Float, Scope::NonBase, None),
        p("density", Ty::Float, Scope::NonBase, Some(Val::F(1.0))),
    ]
}

/// How the family thins task vectors.
#[derive(Clone, Copy)]
pub(crate) enum Thin {
    None,
    Magnitude,
    Random,
    Outliers,
}

/// The streaming plan of a family member. `int8_mask` does not change results (the sign
/// comparison is exact in either dtype) and is accepted and ignored.
pub(crate) fn gta(n: usize, b: &Bound, thin: Thin, elect_sign: bool) -> Result<Kernel, String> {
    let weights = b.each_f("weight");
    let densities = b.each_f("density");
    let rescale = b.shared("rescale").b();
    let lambda = b.shared("lambda").f();
    if !lambda.is_finite() || weights.iter().any(|w| !w.is_finite()) {
        return Err("weights and lambda must be finite".into());
    }
    let seed = b.shared("seed").i() as u64;
    let gammas = b.each_f("gamma");
    let mut sparsify = Vec::with_capacity(n);
    for i in 0..n {
        let density = densities[i];
        let s = match thin {
            Thin::None => Sparsify::None,
            Thin::Magnitude | Thin::Outliers if rescale && density < 1.0 => {
                return Err("rescale: true with magnitude pruning is not supported yet".into())
            }
            Thin::Magnitude => {
                unit("density", density)?;
                Sparsify::Magnitude { density }
            }
            Thin::Outliers => {
                unit("density", density)?;
                unit("gamma", gammas[i])?;
                Sparsify::Outliers {
                    density,
                    gamma: gammas[i],
                }
            }
            Thin::Random => {
                unit("density", density)?;
                Sparsify::Random {
                    density,
                    rescale: if rescale {
                        DareRescale::L1
                    } else {
                        DareRescale::None
                    },
                    seed,
                }
            }
        };
        sparsify.push(s);
    }
    Ok(Kernel::Stream(Plan::TaskVectors {
        weights,
        lambda,
        normalize: b.shared("normalize").b(),
        sparsify,
        elect_sign,
    }))
}

const PARAMS: [ParamSpec; 6] = gta_params(false, false);

pub(crate) static SPEC: Spec = Spec {
    name: "task_arithmetic",
    formula: "base + λ·Σ wᵢδᵢ (÷ Σ wᵢ with normalize), δᵢ = θᵢ − base",
    contract: contract(BasePolicy::Required),
    params: &PARAMS,
    build: |n, b| gta(n, b, Thin::None, false),
};
