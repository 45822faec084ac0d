//! `sum` (mnemo): Σ θᵢ, e.g. Fisher files of disjoint data.

use super::{contract, BasePolicy, Kernel, Spec};
use crate::merge::Plan;

pub(crate) static SPEC: Spec = Spec {
    name: "sum",
    formula: "Σ θᵢ",
    contract: contract(BasePolicy::Ignored),
    params: &[],
    build: |n, _| {
        Ok(Kernel::Stream(Plan::Linear {
            weights: vec![1.0; n],
            normalize: false,
        }))
    },
};
