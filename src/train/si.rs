//! Synaptic Intelligence (Zenke et al. 2017) as a training strategy: along a task's updates
//! each parameter's path integral ω += −g·Δθ (g the gradient the optimizer used, penalties
//! included, as van de Ven's and Avalanche's implementations take `p.grad`; Δθ the update's
//! step), and at the end of the task its importance Ω = Ω_prior + ω/((θ_end − θ_start)² + ξ).
//! Ω has a Fisher file's layout, so the next task's penalty c·ΣΩ(θ − θ*)² is
//! `--penalty OMEGA:ANCHOR --lambda c`, exactly EWC's term. All in f32, as the references.

use super::strategy::{Strategy, StrategyState};
use crate::checkpoint::{Checkpoint, OwnedTensor};
use crate::error::{MnemoError, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub struct Si {
    /// ξ, the damping of the importance's denominator.
    pub xi: f64,
    /// The weights when the task started.
    start: BTreeMap<String, Vec<f32>>,
    /// The weights and gradient of the step in progress.
    before: BTreeMap<String, Vec<f32>>,
    grads: BTreeMap<String, Vec<f32>>,
    /// ω, the path integral so far.
    omega: BTreeMap<String, Vec<f32>>,
}

impl Si {
    pub fn new(xi: f64) -> Self {
        Si {
            xi,
            start: BTreeMap::new(),
            before: BTreeMap::new(),
            grads: BTreeMap::new(),
            omega: BTreeMap::new(),
        }
    }

    /// The task's importance given the weights it ended with (`prior` added when given):
    /// Ω = prior + ω/((θ_end − θ_start)² + ξ), by parameter name. Parameters that never took
    /// a step (no update ran) get ω = 0.
    pub fn importance(
        &self,
        end: &BTreeMap<String, Vec<f32>>,
        prior: Option<&BTreeMap<String, Vec<f32>>>,
    ) -> BTreeMap<String, Vec<f32>> {
        let xi = self.xi as f32;
        end.iter()
            .map(|(name, e)| {
                let start = self.start.get(name).unwrap_or(e);
                let omega = self.omega.get(name);
                let prior = prior.and_then(|p| p.get(name));
                let v = (0..e.len())
                    .map(|i| {
                        let d = e[i] - start.get(i).copied().unwrap_or(e[i]);
                        let w = omega.and_then(|o| o.get(i)).copied().unwrap_or(0.0);
                        prior.and_then(|p| p.get(i)).copied().unwrap_or(0.0) + w / (d * d + xi)
                    })
                    .collect();
                (name.clone(), v)
            })
            .collect()
    }
}

impl Strategy for Si {
    fn name(&self) -> &'static str {
        "si"
    }

    fn before_step(
        &mut self,
        weights: &BTreeMap<String, Vec<f32>>,
        grads: &BTreeMap<String, Vec<f32>>,
    ) {
        if self.start.is_empty() {
            self.start = weights.clone();
            self.omega = weights
                .iter()
                .map(|(k, v)| (k.clone(), vec![0.0; v.len()]))
                .collect();
        }
        for (k, v) in weights {
            self.before.insert(k.clone(), v.clone());
        }
        for (k, g) in grads {
            self.grads.insert(k.clone(), g.clone());
        }
    }

    fn after_step(&mut self, weights: &BTreeMap<String, Vec<f32>>) {
        for (name, after) in weights {
            let (Some(before), Some(g), Some(o)) = (
                self.before.get(name),
                self.grads.get(name),
                self.omega.get_mut(name),
            ) else {
                continue;
            };
            for ((o, g), (a, b)) in o.iter_mut().zip(g).zip(after.iter().zip(before)) {
                *o -= g * (a - b);
            }
        }
    }

    fn save_state(&self) -> Result<Option<StrategyState>> {
        let mut tensors = Vec::new();
        for (prefix, map) in [("start/", &self.start), ("omega/", &self.omega)] {
            for (k, v) in map {
                tensors.push(OwnedTensor::f32(format!("{prefix}{k}"), vec![v.len()], v));
            }
        }
        Ok(Some(StrategyState {
            tensors,
            json: "{}".into(),
        }))
    }

    fn restore_state(
        &mut self,
        ckpt: &Checkpoint,
        prefix: &str,
        _json: &str,
        path: &Path,
    ) -> Result<()> {
        for name in ckpt.names() {
            let Some(rest) = name.strip_prefix(prefix) else {
                continue;
            };
            let (map, key) = if let Some(k) = rest.strip_prefix("start/") {
                (&mut self.start, k)
            } else if let Some(k) = rest.strip_prefix("omega/") {
                (&mut self.omega, k)
            } else {
                return Err(MnemoError::InvalidState {
                    path: path.to_path_buf(),
                    reason: format!("unexpected SI tensor '{name}'"),
                });
            };
            map.insert(key.to_string(), ckpt.to_f32(name)?);
        }
        Ok(())
    }
}
