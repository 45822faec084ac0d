//! `nuslerp`: slerp between two models with t = w₂/(w₁+w₂) (0.5 when the sum is ~0), of the
//! task vectors when there is a base (base + slerp(δ₁, δ₂)); over the flattened tensor
//! (`nuslerp_flatten`, default), or per row (last axis), or per column (`nuslerp_row_wise`:
//! vectors along the first axis). Colinear vectors (1 − cos² ≤ 1e-16) are interpolated linearly.

use super::{p, BasePolicy, Contract, Kernel, Scope, Spec, Ty, Val, WholeTensor};

struct NuSlerp {
    t: f64,
    row_wise: bool,
    flatten: bool,
}

/// slerp of two vectors given as (accessor positions); writes into `out` at the same positions.
fn slerp_vec(t: f64, v0: &[f64], v1: &[f64]) -> Vec<f64> {
    let n0 = super::norm(v0).max(1e-7);
    let n1 = super::norm(v1).max(1e-7);
    let cos = v0
        .iter()
        .zip(v1)
        .map(|(a, b)| (a / n0) * (b / n1))
        .sum::<f64>()
        .clamp(-1.0, 1.0);
    if 1.0 - cos * cos <= 1e-16 {
        return v0
            .iter()
            .zip(v1)
            .map(|(a, b)| (1.0 - t) * a + t * b)
            .collect();
    }
    let theta = cos.acos();
    let s = theta.sin();
    let (c0, c1) = (((1.0 - t) * theta).sin(), (t * theta).sin());
    v0.iter()
        .zip(v1)
        .map(|(a, b)| (c0 * a + c1 * b) / s)
        .collect()
}

impl WholeTensor for NuSlerp {
    fn merge(
        &self,
        x: &[&[f32]],
        base: Option<&[f32]>,
        shape: &[usize],
    ) -> Result<Vec<f32>, String> {
        let len = x[0].len();
        let delta = |k: usize| -> Vec<f64> {
            match base {
                Some(b) => x[k].iter().zip(b).map(|(&v, &b)| (v - b) as f64).collect(),
                None => super::widen(x[k]),
            }
        };
        let (v0, v1) = (delta(0), delta(1));
        let mut out = vec![0f64; len];
        if self.flatten || shape.len() <= 1 {
            out = slerp_vec(self.t, &v0, &v1);
        } else if self.row_wise {
            // Vectors along axis 0: element (r, c) at r·stride + c, stride = len / rows.
            let rows = shape[0];
            let stride = len / rows.max(1);
            for c in 0..stride {
                let a: Vec<f64> = (0..rows).map(|r| v0[r * stride + c]).collect();
                let b: Vec<f64> = (0..rows).map(|r| v1[r * stride + c]).collect();
                for (r, v) in slerp_vec(self.t, &a, &b).into_iter().enumerate() {
                    out[r * stride + c] = v;
                }
            }
        } else {
            let last = *shape.last().unwrap_or(&1);
            for (o, (a, b)) in out
                .chunks_mut(last.max(1))
                .zip(v0.chunks(last.max(1)).zip(v1.chunks(last.max(1))))
            {
                o.copy_from_slice(&slerp_vec(self.t, a, b));
            }
        }
        if let Some(b) = base {
            out.iter_mut().zip(b).for_each(|(o, &b)| *o += b as f64);
        }
        Ok(super::narrow(&out))
    }
}

pub(crate) static SPEC: Spec = Spec {
    name: "nuslerp",
    formula: "[base +] slerp(t; δ₁, δ₂), t = w₂/(w₁+w₂), flattened, per row or per column",
    contract: Contract {
        base: BasePolicy::Optional,
        min_inputs: 1,
        max_inputs: None,
        min_non_base: 2,
        max_non_base: Some(2),
    },
    params: &[
        p("weight", Ty::Float, Scope::NonBase, None),
        p(
            "nuslerp_row_wise",
            Ty::Bool,
            Scope::Shared,
            Some(Val::B(false)),
        ),
        p(
            "nuslerp_flatten",
            Ty::Bool,
            Scope::Shared,
            Some(Val::B(true)),
        ),
    ],
    build: |_, b| {
        let w = b.each_f("weight");
        let total = w[0] + w[1];
        let t = if total.abs() < 1e-6 {
            0.5
        } else {
            w[1] / total
        };
        Ok(Kernel::Whole(Box::new(NuSlerp {
            t,
            row_wise: b.shared("nuslerp_row_wise").b(),
            flatten: b.shared("nuslerp_flatten").b(),
        })))
    },
};
