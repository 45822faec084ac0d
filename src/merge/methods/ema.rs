//! `ema` (mnemo): D·θ₁ + (1−D)·θ₂, one exponential-moving-average step (θ₁ the average model,
//! θ₂ the online model, in configuration order).

use super::{p, unit, BasePolicy, Contract, Kernel, Scope, Spec, Ty};
use crate::merge::Plan;

pub(crate) static SPEC: Spec = Spec {
    name: "ema",
    formula: "D·θ₁ + (1−D)·θ₂ (θ₁ the average, θ₂ the online model)",
    contract: Contract {
        base: BasePolicy::Ignored,
        min_inputs: 2,
        max_inputs: Some(2),
        min_non_base: 0,
        max_non_base: None,
    },
    params: &[p("decay", Ty::Float, Scope::Shared, None)],
    build: |_, b| {
        let d = b.shared("decay").f();
        unit("decay", d)?;
        Ok(Kernel::Stream(Plan::Linear {
            weights: vec![d, 1.0 - d],
            normalize: false,
        }))
    },
};
