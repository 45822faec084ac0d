//! `sce` (Select, Calculate, Erase; arXiv 2408.07990): keep the ⌊k·nz⌋ elements whose task
//! vectors vary most across models (`select_topk` = k; nz the elements of non-zero variance),
//! weight each task vector by its mean square (normalised to sum 1), erase the entries against
//! the elected sign, and average: base + Σ wᵢmᵢδᵢ / max(Σ wᵢmᵢ, 1e-6).

use super::{contract, p, BasePolicy, Kernel, Scope, Spec, Ty, Val, WholeTensor};
use crate::merge::select::{desc_key, nth};

struct Sce {
    topk: f64,
}

impl WholeTensor for Sce {
    fn merge(&self, x: &[&[f32]], base: Option<&[f32]>, _: &[usize]) -> Result<Vec<f32>, String> {
        let base = base.ok_or("sce needs a base")?;
        let n = x.len();
        let len = base.len();
        // Task vectors in f32, as mergekit forms them.
        let mut tv: Vec<Vec<f32>> = (0..n)
            .map(|i| x[i].iter().zip(base).map(|(&v, &b)| v - b).collect())
            .collect();
        if self.topk < 1.0 {
            let keep: Vec<bool> = if self.topk <= 0.0 {
                vec![false; len]
            } else {
                let var: Vec<f32> = (0..len)
                    .map(|j| {
                        let mean = (0..n).map(|i| tv[i][j] as f64).sum::<f64>() / n as f64;
                        ((0..n)
                            .map(|i| (tv[i][j] as f64 - mean).powi(2))
                            .sum::<f64>()
                            / n as f64) as f32
                    })
                    .collect();
                let nonzero = var.iter().filter(|v| **v != 0.0).count();
                let k = (nonzero as f64 * self.topk) as usize;
                if k == 0 {
                    vec![false; len]
                } else {
                    let mut keys: Vec<u64> = var
                        .iter()
                        .enumerate()
                        .map(|(j, v)| desc_key(v.abs(), j))
                        .collect();
                    let pivot = nth(&mut keys, k - 1);
                    var.iter()
                        .enumerate()
                        .map(|(j, v)| desc_key(v.abs(), j) <= pivot)
                        .collect()
                }
            };
            for t in tv.iter_mut() {
                t.iter_mut()
                    .zip(&keep)
                    .for_each(|(v, &k)| *v = if k { *v } else { 0.0 });
            }
        }
        let ms: Vec<f64> = tv
            .iter()
            .map(|t| t.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / len.max(1) as f64)
            .collect();
        let total: f64 = ms.iter().sum();
        let w: Vec<f64> = if total.abs() < 1e-6 {
            vec![1.0 / n as f64; n]
        } else {
            ms.iter().map(|m| m / total).collect()
        };
        Ok((0..len)
            .map(|j| {
                let s: f64 = (0..n).map(|i| tv[i][j] as f64).sum();
                let positive = s >= 0.0;
                let (mut num, mut den) = (0f64, 0f64);
                for i in 0..n {
                    let v = tv[i][j];
                    if (positive && v > 0.0) || (!positive && v < 0.0) {
                        num += v as f64 * w[i];
                        den += w[i];
                    }
                }
                (base[j] as f64 + num / den.max(1e-6)) as f32
            })
            .collect())
    }
}

pub(crate) static SPEC: Spec = Spec {
    name: "sce",
    formula:
        "base + Σ wᵢmᵢδ̃ᵢ / Σ wᵢmᵢ, δ̃ᵢ the top-variance entries, wᵢ ∝ mean(δ̃ᵢ²), mᵢ the elected sign",
    contract: contract(BasePolicy::Required),
    params: &[
        p("int8_mask", Ty::Bool, Scope::Shared, Some(Val::B(false))),
        p("select_topk", Ty::Float, Scope::Shared, Some(Val::F(1.0))),
    ],
    build: |_, b| {
        Ok(Kernel::Whole(Box::new(Sce {
            topk: b.shared("select_topk").f(),
        })))
    },
};
