//! `nearswap`: take the other model's value where it is within t of the base's:
//! w = clamp(t / max(|base − θ|, 1e-6), 0, 1), w·θ + (1−w)·base.

use super::{p, BasePolicy, Contract, Kernel, Scope, Spec, Ty, WholeTensor};

struct NearSwap {
    t: f64,
}

impl WholeTensor for NearSwap {
    fn merge(&self, x: &[&[f32]], base: Option<&[f32]>, _: &[usize]) -> Result<Vec<f32>, String> {
        let (a, b) = (base.ok_or("nearswap needs a base")?, x[0]);
        Ok(a.iter()
            .zip(b)
            .map(|(&a, &b)| {
                let (a, b) = (a as f64, b as f64);
                let w = (self.t / (a - b).abs().max(1e-6)).clamp(0.0, 1.0);
                (w * b + (1.0 - w) * a) as f32
            })
            .collect())
    }
}

pub(crate) static SPEC: Spec = Spec {
    name: "nearswap",
    formula: "w·θ + (1−w)·base, w = clamp(t / max(|base − θ|, 1e-6), 0, 1)",
    contract: Contract {
        base: BasePolicy::Required,
        min_inputs: 2,
        max_inputs: Some(2),
        min_non_base: 0,
        max_non_base: None,
    },
    params: &[p("t", Ty::Float, Scope::Shared, None)],
    build: |_, b| {
        let t = b.shared("t").f();
        if !t.is_finite() {
            return Err(format!("t must be finite, not {t}"));
        }
        Ok(Kernel::Whole(Box::new(NearSwap { t })))
    },
};
