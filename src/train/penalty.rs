//! The EWC penalty λ·Σ_k Σ_i F_k,i (θ_i − θ*_k,i)², without a ½ factor (the
//! reference formulation). Its value and gradient 2λ·Σ_k F_k (θ − θ*_k) are
//! computed in one fused pass over host buffers, added to the task gradient
//! just before the optimizer update. An L2 pull towards an anchor,
//! μ·Σ_i (θ_i − θ*_i)², is the same term with F ≡ 1. Both are training strategies
//! (`train/strategy.rs`) that only use the `penalty` hook.

use super::strategy::Strategy;
use crate::checkpoint::Checkpoint;
use crate::error::{MnemoError, Result};
use crate::model::Model;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// An anchor's non-finite value: the penalty (and so every update) would be NaN.
fn non_finite_anchor(anchor: &Checkpoint, name: &str, index: usize, value: f32) -> MnemoError {
    MnemoError::NonFinite {
        path: anchor.path.clone(),
        tensor: name.to_string(),
        index,
        value,
        reason: "an anchor's weights must be finite".into(),
    }
}

/// One (Fisher, anchor) pair: values by parameter name.
pub struct PenaltyTerm {
    pub fisher: BTreeMap<String, Vec<f32>>,
    pub anchor: BTreeMap<String, Vec<f32>>,
}

/// A sum of EWC terms with one λ.
pub struct EwcPenalty {
    pub terms: Vec<PenaltyTerm>,
    pub lambda: f64,
}

impl PenaltyTerm {
    /// Loads a Fisher file and its anchor, checking both against the model: every Fisher
    /// tensor must be a trainable parameter of the same shape, and the anchor must hold it.
    pub fn load(fisher: &Checkpoint, anchor: &Checkpoint, model: &Model) -> Result<Self> {
        let mut f = BTreeMap::new();
        let mut a = BTreeMap::new();
        for name in fisher.names() {
            let var = model
                .params
                .get(name)
                .ok_or_else(|| MnemoError::UnexpectedTensor {
                    path: fisher.path.clone(),
                    tensor: name.to_string(),
                    count: fisher
                        .names()
                        .filter(|n| !model.params.contains_key(*n))
                        .count(),
                })?;
            let shape = var.as_tensor().dims().to_vec();
            for (ckpt, what) in [(fisher, "fisher"), (anchor, "anchor")] {
                let e = ckpt.entry(name)?;
                if e.shape != shape {
                    return Err(MnemoError::ShapeMismatch {
                        path: ckpt.path.clone(),
                        tensor: format!("{name} ({what})"),
                        found: e.shape.clone(),
                        expected: shape.clone(),
                    });
                }
            }
            let fv = fisher.to_f32(name)?;
            if let Some(bad) = fv.iter().find(|x| !x.is_finite() || **x < 0.0) {
                return Err(MnemoError::InvalidSafetensors {
                    path: fisher.path.clone(),
                    reason: format!(
                        "tensor '{name}' holds {bad}: a Fisher diagonal is finite and non-negative"
                    ),
                });
            }
            let av = anchor.to_f32(name)?;
            if let Some(i) = av.iter().position(|x| !x.is_finite()) {
                return Err(non_finite_anchor(anchor, name, i, av[i]));
            }
            f.insert(name.to_string(), fv);
            a.insert(name.to_string(), av);
        }
        if f.is_empty() {
            return Err(MnemoError::InvalidSafetensors {
                path: fisher.path.clone(),
                reason: "holds no tensor: nothing to penalise".into(),
            });
        }
        Ok(PenaltyTerm {
            fisher: f,
            anchor: a,
        })
    }
}

impl EwcPenalty {
    /// Adds the penalty's gradient for parameter `name` (values `w`) to `g`; returns its value.
    pub fn apply(&self, name: &str, w: &[f32], g: &mut [f32]) -> f64 {
        let two_l = (2.0 * self.lambda) as f32;
        let mut value = 0.0f64;
        for t in &self.terms {
            let (Some(f), Some(a)) = (t.fisher.get(name), t.anchor.get(name)) else {
                continue;
            };
            value += g
                .par_chunks_mut(1 << 14)
                .zip(w.par_chunks(1 << 14))
                .zip(f.par_chunks(1 << 14).zip(a.par_chunks(1 << 14)))
                .map(|((g, w), (f, a))| {
                    let mut s = 0.0f64;
                    for ((g, &w), (&f, &a)) in g.iter_mut().zip(w).zip(f.iter().zip(a)) {
                        let d = w - a;
                        *g += two_l * f * d;
                        s += (f * d * d) as f64;
                    }
                    s
                })
                // Summed in chunk order, not by rayon's stealing-shaped tree: the reported
                // penalty is then the same whatever the number of threads.
                .collect::<Vec<f64>>()
                .iter()
                .sum::<f64>();
        }
        self.lambda * value
    }
}

/// μ·Σ_i (θ_i − θ*_i)² over every trainable parameter: plain L2 towards an anchor checkpoint.
pub struct AnchorPull {
    pub anchor: BTreeMap<String, Vec<f32>>,
    pub strength: f64,
}

impl AnchorPull {
    /// Loads the anchor's value of every trainable parameter of `model` (same shapes).
    pub fn load(anchor: &Checkpoint, model: &Model, strength: f64) -> Result<Self> {
        let mut a = BTreeMap::new();
        for (name, var) in &model.params {
            let shape = var.as_tensor().dims();
            let e = anchor.entry(name)?;
            if e.shape != shape {
                return Err(MnemoError::ShapeMismatch {
                    path: anchor.path.clone(),
                    tensor: name.clone(),
                    found: e.shape.clone(),
                    expected: shape.to_vec(),
                });
            }
            let av = anchor.to_f32(name)?;
            if let Some(i) = av.iter().position(|x| !x.is_finite()) {
                return Err(non_finite_anchor(anchor, name, i, av[i]));
            }
            a.insert(name.clone(), av);
        }
        Ok(AnchorPull {
            anchor: a,
            strength,
        })
    }

    fn apply(&self, name: &str, w: &[f32], g: &mut [f32]) -> f64 {
        let Some(a) = self.anchor.get(name) else {
            return 0.0;
        };
        let two_mu = (2.0 * self.strength) as f32;
        let value = g
            .par_chunks_mut(1 << 14)
            .zip(w.par_chunks(1 << 14).zip(a.par_chunks(1 << 14)))
            .map(|(g, (w, a))| {
                let mut s = 0.0f64;
                for (g, (&w, &a)) in g.iter_mut().zip(w.iter().zip(a)) {
                    let d = w - a;
                    *g += two_mu * d;
                    s += (d * d) as f64;
                }
                s
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum::<f64>();
        self.strength * value
    }
}

impl Strategy for EwcPenalty {
    fn name(&self) -> &'static str {
        "ewc"
    }

    fn penalty(&self, name: &str, w: &[f32], g: &mut [f32]) -> f64 {
        self.apply(name, w, g)
    }
}

impl Strategy for AnchorPull {
    fn name(&self) -> &'static str {
        "l2-anchor"
    }

    fn penalty(&self, name: &str, w: &[f32], g: &mut [f32]) -> f64 {
        self.apply(name, w, g)
    }
}
