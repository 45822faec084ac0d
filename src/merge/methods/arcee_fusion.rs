//! `arcee_fusion`: take the other model's change where it matters most. Importance
//! s = |θ − base| · KL(softmax(θ) ‖ softmax(base)) (softmax and KL along the last axis,
//! each +1e-8); keep the change where s ≥ median(s) + 1.5·(q₃ − q₁) (quantiles of the sorted
//! s at ⌊q·(n−1)⌋); base + (θ − base)·mask. mergekit estimates the quantiles from a random
//! sample above 10⁶ elements; mnemo always uses every element.

use super::{BasePolicy, Contract, Kernel, Spec, WholeTensor};

struct ArceeFusion;

fn softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

impl WholeTensor for ArceeFusion {
    fn merge(
        &self,
        x: &[&[f32]],
        base: Option<&[f32]>,
        shape: &[usize],
    ) -> Result<Vec<f32>, String> {
        let base = base.ok_or("arcee_fusion needs a base")?;
        let theta = x[0];
        let len = base.len();
        if len == 0 {
            return Ok(Vec::new());
        }
        let row = shape.last().copied().unwrap_or(1).max(1);
        let mut imp = vec![0f64; len];
        for (r, (t, b)) in theta.chunks(row).zip(base.chunks(row)).enumerate() {
            let p = softmax(&super::widen(t));
            let q = softmax(&super::widen(b));
            let kl: f64 = p
                .iter()
                .zip(&q)
                .map(|(p, q)| {
                    let (p, q) = (p + 1e-8, q + 1e-8);
                    p * (p / q).ln()
                })
                .sum();
            for j in 0..t.len() {
                imp[r * row + j] = ((t[j] - b[j]).abs() as f64) * kl;
            }
        }
        let mut sorted = imp.clone();
        sorted.sort_by(f64::total_cmp);
        let at = |q: f64| sorted[(q * (len - 1) as f64) as usize];
        let threshold = at(0.5) + 1.5 * (at(0.75) - at(0.25));
        Ok((0..len)
            .map(|j| {
                // In f32 as mergekit: base + (θ − base)·mask.
                let m = if imp[j] >= threshold { 1.0f32 } else { 0.0 };
                base[j] + (theta[j] - base[j]) * m
            })
            .collect())
    }
}

pub(crate) static SPEC: Spec = Spec {
    name: "arcee_fusion",
    formula: "base + (θ − base)·[s ≥ median(s) + 1.5·IQR(s)], s = |θ − base|·KL(softmax θ ‖ softmax base)",
    contract: Contract {
        base: BasePolicy::Required,
        min_inputs: 2,
        max_inputs: Some(2),
        min_non_base: 0,
        max_non_base: None,
    },
    params: &[],
    build: |_, _| Ok(Kernel::Whole(Box::new(ArceeFusion))),
};
