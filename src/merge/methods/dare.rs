//! `dare_ties` and `dare_linear` (Yu et al. 2024): each δᵢ entry kept with probability dᵢ,
//! rescaled to the original L1 norm (`rescale`, on by default), then TIES's sign election or
//! task arithmetic. The masks are mnemo's (seeded by `seed`, a mnemo parameter mergekit
//! ignores), not torch's: only their statistics can match mergekit.

use super::task_arithmetic::{gta, gta_params, Thin};
use super::{contract, p, BasePolicy, ParamSpec, Scope, Spec, Ty, Val};

const fn params() -> [ParamSpec; 7] {
    let g = gta_params(false, true);
    [
        g[0],
        g[1],
        g[2],
        g[3],
        g[4],
        g[5],
        p("seed", Ty::Int, Scope::Shared, Some(Val::I(0))),
    ]
}
const PARAMS: [ParamSpec; 7] = params();

pub(crate) static DARE_TIES: Spec = Spec {
    name: "dare_ties",
    formula: "TIES on mᵢ⊙δᵢ·‖δᵢ‖₁/‖mᵢ⊙δᵢ‖₁, mᵢ ~ Bernoulli(dᵢ)",
    contract: contract(BasePolicy::Required),
    params: &PARAMS,
    build: |n, b| gta(n, b, Thin::Random, true),
};

pub(crate) static DARE_LINEAR: Spec = Spec {
    name: "dare_linear",
    formula: "base + λ·Σ wᵢ·mᵢ⊙δᵢ·‖δᵢ‖₁/‖mᵢ⊙δᵢ‖₁, mᵢ ~ Bernoulli(dᵢ)",
    contract: contract(BasePolicy::Required),
    params: &PARAMS,
    build: |n, b| gta(n, b, Thin::Random, false),
};
