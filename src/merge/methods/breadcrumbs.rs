//! `breadcrumbs` and `breadcrumbs_ties` (Davari & Belilovsky 2023): of each task vector, drop
//! the ⌊γᵢ·n⌋ largest magnitudes and then the smallest so that ⌊dᵢ·n⌋ remain; then task
//! arithmetic or TIES's sign election.

use super::task_arithmetic::{gta, gta_params, Thin};
use super::{contract, p, BasePolicy, ParamSpec, Scope, Spec, Ty, Val};

const fn params() -> [ParamSpec; 7] {
    let g = gta_params(false, false);
    [
        g[0],
        g[1],
        g[2],
        g[3],
        g[4],
        g[5],
        p("gamma", Ty::Float, Scope::NonBase, Some(Val::F(0.01))),
    ]
}
const PARAMS: [ParamSpec; 7] = params();

pub(crate) static BREADCRUMBS: Spec = Spec {
    name: "breadcrumbs",
    formula:
        "base + λ·Σ wᵢδ̃ᵢ, δ̃ᵢ = δᵢ without its ⌊γ·n⌋ largest and its smallest |entries|, ⌊d·n⌋ kept",
    contract: contract(BasePolicy::Required),
    params: &PARAMS,
    build: |n, b| gta(n, b, Thin::Outliers, false),
};

pub(crate) static BREADCRUMBS_TIES: Spec = Spec {
    name: "breadcrumbs_ties",
    formula: "TIES's sign election on breadcrumbs' δ̃ᵢ",
    contract: contract(BasePolicy::Required),
    params: &PARAMS,
    build: |n, b| gta(n, b, Thin::Outliers, true),
};
