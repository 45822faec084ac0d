//! `fisher` (mnemo; Matena & Raffel 2022): Σ cᵢF̃ᵢθᵢ / (Σ cᵢF̃ᵢ + eps), F̃ = max(F, floor),
//! cᵢ = wᵢ (÷ ‖Fᵢ‖₂, the Fisher file's global norm, with `normalize`). Each model names its
//! Fisher file with a `fisher:` key next to `model:`; tensors no Fisher file holds get the
//! weighted average.

use super::{contract, p, BasePolicy, Kernel, Scope, Spec, Ty, Val};
use crate::merge::Plan;

pub(crate) static SPEC: Spec = Spec {
    name: "fisher",
    formula: "Σ cᵢF̃ᵢθᵢ / (Σ cᵢF̃ᵢ + eps), F̃ = max(F, floor), cᵢ = wᵢ (÷ ‖Fᵢ‖ with normalize)",
    contract: contract(BasePolicy::Ignored),
    params: &[
        p("weight", Ty::Float, Scope::Input, Some(Val::F(1.0))),
        p("eps", Ty::Float, Scope::Shared, Some(Val::F(1e-8))),
        p("floor", Ty::OptFloat, Scope::Shared, Some(Val::Absent)),
        p("normalize", Ty::Bool, Scope::Shared, Some(Val::B(false))),
    ],
    build: |_, b| {
        let eps = b.shared("eps").f();
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(format!("eps must be ≥ 0, not {eps}"));
        }
        let floor = match b.shared("floor") {
            Val::Absent => None,
            v => Some(v.f()),
        };
        if floor.is_some_and(|f| !(f.is_finite() && f >= 0.0)) {
            return Err("floor must be ≥ 0".into());
        }
        Ok(Kernel::Stream(Plan::Fisher {
            weights: b.each_f("weight"),
            eps,
            floor,
            normalize: b.shared("normalize").b(),
        }))
    },
};
