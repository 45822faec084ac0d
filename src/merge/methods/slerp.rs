//! `slerp`: spherical interpolation from the base (t = 0) to the other model (t = 1), each
//! tensor flattened; linear interpolation when |cos Ω| > 0.9995.

use super::{p, BasePolicy, Contract, Kernel, Scope, Spec, Ty};
use crate::merge::Plan;

pub(crate) static SPEC: Spec = Spec {
    name: "slerp",
    formula: "sin((1−t)Ω)/sinΩ·base + sin(tΩ)/sinΩ·θ, cos Ω = basê·θ̂; lerp when |cos Ω| > 0.9995",
    contract: Contract {
        base: BasePolicy::Required,
        min_inputs: 2,
        max_inputs: Some(2),
        min_non_base: 0,
        max_non_base: None,
    },
    params: &[p("t", Ty::Float, Scope::Shared, None)],
    // The streaming plan takes the base as its first input (see `Spec::base_first`).
    build: |_, b| {
        let t = b.shared("t").f();
        if !t.is_finite() {
            return Err(format!("t must be finite, not {t}"));
        }
        Ok(Kernel::Stream(Plan::Slerp { t }))
    },
};
