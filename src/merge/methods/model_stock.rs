//! `model_stock` (Jang et al. 2024): t·mean(θᵢ) + (1−t)·base, t = k·cos/(1+(k−1)·cos), cos the
//! mean pairwise cosine of the task vectors (each tensor flattened).

use super::{p, BasePolicy, Contract, Kernel, Scope, Spec, Ty, Val};
use crate::merge::Plan;

pub(crate) static SPEC: Spec = Spec {
    name: "model_stock",
    formula: "t·mean(θᵢ) + (1−t)·base, t = k·cos/(1+(k−1)·cos)",
    contract: Contract {
        base: BasePolicy::Required,
        min_inputs: 3,
        max_inputs: None,
        min_non_base: 0,
        max_non_base: None,
    },
    params: &[p(
        "filter_wise",
        Ty::Bool,
        Scope::Shared,
        Some(Val::B(false)),
    )],
    build: |_, b| {
        if b.shared("filter_wise").b() {
            return Err("filter_wise: true is not supported yet".into());
        }
        Ok(Kernel::Stream(Plan::ModelStock))
    },
};
