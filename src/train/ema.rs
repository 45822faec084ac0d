//! An exponential moving average of the weights, kept beside the live model: torch's
//! `AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))`. Its first update copies
//! the weights the optimizer made (torch's `n_averaged == 0` case); each later one moves the
//! average toward them, `ema.lerp_(w, 1 − decay)`, with torch's CPU `lerp` (two formulas
//! around weight 0.5) so the average equals torch's bit for bit in f32. Only trainable
//! parameters are averaged; batchnorm statistics are the live model's (torch's default
//! `use_buffers=False` leaves the copy's buffers as they were at construction, which is
//! rarely what a deployed average wants: the live statistics match the averaged weights
//! better than stale ones).

use super::strategy::{Strategy, StrategyState};
use crate::checkpoint::{Checkpoint, OwnedTensor};
use crate::error::{MnemoError, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// The averaged weights, by parameter name.
#[derive(Clone, Debug)]
pub struct Ema {
    pub decay: f64,
    /// Empty until the first update.
    pub values: BTreeMap<String, Vec<f32>>,
    /// Updates averaged so far (torch's `n_averaged`).
    pub updates: u64,
}

/// torch's CPU `lerp(start, end, weight)` for f32.
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

impl Ema {
    /// `decay` in [0, 1]: 0.999 for slow drift, 0.99 when the stream shifts quickly.
    pub fn new(decay: f64) -> Result<Ema> {
        if !(decay.is_finite() && (0.0..=1.0).contains(&decay)) {
            return Err(MnemoError::Config {
                origin: "EMA decay".into(),
                reason: format!("must be in [0, 1], got {decay}"),
            });
        }
        Ok(Ema {
            decay,
            values: BTreeMap::new(),
            updates: 0,
        })
    }

    /// One update toward `weights`.
    pub fn update(&mut self, weights: &BTreeMap<String, Vec<f32>>) {
        if self.updates == 0 || self.values.is_empty() {
            self.values = weights.clone();
        } else {
            // torch passes 1 − decay as a Python float; the kernel uses it as f32.
            let w = (1.0 - self.decay) as f32;
            for (name, e) in self.values.iter_mut() {
                if let Some(p) = weights.get(name) {
                    e.iter_mut().zip(p).for_each(|(e, &p)| *e = lerp(*e, p, w));
                }
            }
        }
        self.updates += 1;
    }
}

impl Strategy for Ema {
    fn name(&self) -> &'static str {
        "ema"
    }

    fn after_step(&mut self, weights: &BTreeMap<String, Vec<f32>>) {
        self.update(weights);
    }

    fn save_state(&self) -> Result<Option<StrategyState>> {
        let tensors = self
            .values
            .iter()
            .map(|(k, v)| OwnedTensor::f32(k.clone(), vec![v.len()], v))
            .collect();
        Ok(Some(StrategyState {
            tensors,
            json: serde_json::json!({"updates": self.updates, "decay": self.decay}).to_string(),
        }))
    }

    fn restore_state(
        &mut self,
        ckpt: &Checkpoint,
        prefix: &str,
        json: &str,
        path: &Path,
    ) -> Result<()> {
        let bad = |reason: String| MnemoError::InvalidState {
            path: path.to_path_buf(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(format!("EMA state: {e}")))?;
        self.updates = v["updates"]
            .as_u64()
            .ok_or_else(|| bad("EMA state without 'updates'".into()))?;
        self.values.clear();
        for name in ckpt.names() {
            if let Some(k) = name.strip_prefix(prefix) {
                self.values.insert(k.to_string(), ckpt.to_f32(name)?);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_update_copies_then_lerps() {
        let mut e = Ema::new(0.9).unwrap();
        let mut w = BTreeMap::new();
        w.insert("a".to_string(), vec![1.0f32, 2.0]);
        e.update(&w);
        assert_eq!(e.values["a"], [1.0, 2.0]);
        w.insert("a".to_string(), vec![3.0f32, 2.0]);
        e.update(&w);
        let wt = (1.0f64 - 0.9) as f32;
        assert_eq!(e.values["a"], [1.0 + wt * 2.0, 2.0]);
        assert_eq!(e.updates, 2);
        for bad in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
            assert!(Ema::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lerp_switches_formula_at_one_half() {
        assert_eq!(lerp(1.0, 3.0, 0.25), 1.0 + 0.25 * 2.0);
        assert_eq!(lerp(1.0, 3.0, 0.75), 3.0 - 2.0 * 0.25);
    }
}
