//! `ties` (Yadav et al. 2023): keep the max(1, ⌊dᵢ·n⌋) largest |δᵢ| of each task vector, elect
//! the sign of Σ wᵢδ̂ᵢ, average the agreeing entries: base + λ·Σ_agree wᵢδ̂ᵢ / Σ_agree wᵢ.

use super::task_arithmetic::{gta, gta_params, Thin};
use super::{contract, BasePolicy, ParamSpec, Spec};

const PARAMS: [ParamSpec; 6] = gta_params(true, false);

pub(crate) static SPEC: Spec = Spec {
    name: "ties",
    formula: "base + λ·Σ_agree wᵢδ̂ᵢ / Σ_agree wᵢ, δ̂ᵢ = top ⌊dᵢ·n⌋ |δᵢ|, sign of Σ wᵢδ̂ᵢ elected",
    contract: contract(BasePolicy::Required),
    params: &PARAMS,
    build: |n, b| gta(n, b, Thin::Magnitude, true),
};
