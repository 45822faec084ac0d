//! `linear` (Wortsman et al. 2022, model soups): Σ wᵢθᵢ, divided by Σ wᵢ when `normalize`
//! (mergekit's default). The base, when given, is one more input.

use super::{contract, p, BasePolicy, Kernel, Scope, Spec, Ty, Val};
use crate::merge::Plan;

pub(crate) static SPEC: Spec = Spec {
    name: "linear",
    formula: "Σ wᵢθᵢ / Σ wᵢ (no division with normalize: false)",
    contract: contract(BasePolicy::Ignored),
    params: &[
        p("weight", Ty::Float, Scope::Input, None),
        p("normalize", Ty::Bool, Scope::Shared, Some(Val::B(true))),
    ],
    build: |_, b| {
        let weights = b.each_f("weight");
        let normalize = b.shared("normalize").b();
        if normalize && weights.iter().sum::<f64>() == 0.0 {
            return Err("normalize divides by the sum of the weights, which is 0".into());
        }
        Ok(Kernel::Stream(Plan::Linear { weights, normalize }))
    },
};
