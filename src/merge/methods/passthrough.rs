//! `passthrough`: one input, copied (times `scale` when given). With `slices`, the
//! frankenmerge: layers stacked from several models and renumbered.

use super::{p, BasePolicy, Contract, Kernel, Scope, Spec, Ty, Val, WholeTensor};

struct Passthrough {
    scale: Option<f64>,
}

impl WholeTensor for Passthrough {
    fn merge(&self, x: &[&[f32]], _: Option<&[f32]>, _: &[usize]) -> Result<Vec<f32>, String> {
        Ok(match self.scale {
            None => x[0].to_vec(),
            Some(s) => x[0].iter().map(|&v| (v as f64 * s) as f32).collect(),
        })
    }
}

pub(crate) static SPEC: Spec = Spec {
    name: "passthrough",
    formula: "θ₁ (× scale)",
    contract: Contract {
        base: BasePolicy::Ignored,
        min_inputs: 1,
        max_inputs: Some(1),
        min_non_base: 0,
        max_non_base: None,
    },
    params: &[p("scale", Ty::OptFloat, Scope::Input, Some(Val::Absent))],
    build: |_, b| {
        let scale = match b.each("scale").first() {
            Some(Val::Absent) | None => None,
            Some(v) => Some(v.f()),
        };
        Ok(Kernel::Whole(Box::new(Passthrough { scale })))
    },
};
