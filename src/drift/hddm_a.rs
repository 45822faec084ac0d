//! HDDM_A, as river 0.26.1 `drift.binary.HDDMA`.

use super::num::RiverMean;
use super::params::{fmt_f64, Check, DetectorSpec, ParamSpec, Reader, Tuning};
use super::{Detector, Signal};
use crate::Result;

pub(crate) const SPEC: DetectorSpec = DetectorSpec {
    name: "hddm-a",
    summary:
        "HDDM with A-test: Hoeffding bounds on the mean error rate since a cut point (river HDDM_A)",
    binary: true,
    warning: true,
    statistic:
        "mean of all inputs minus the mean up to the increase cut point (the tested increase)",
    reference: "river 0.26.1 drift.binary.HDDMA",
    build: |r| Ok(Box::new(HddmA::new(HddmAConfig::from_params(r)?)?)),
    tune: Tuning {
        param: "drift_confidence",
        larger_is_quieter: false,
        lo: 1e-15,
        hi: 0.5,
    },
    params: &[
        ParamSpec {
            name: "drift_confidence",
            default: "0.001",
            help: "confidence level of the drift test, in (0, 1)",
        },
        ParamSpec {
            name: "warning_confidence",
            default: "0.005",
            help: "confidence level of the warning test, in (0, 1)",
        },
        ParamSpec {
            name: "two_sided_test",
            default: "false",
            help: "also detect decreases of the error rate (true/false)",
        },
    ],
};

/// Parameters of [`HddmA`] (river's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HddmAConfig {
    /// Confidence of the drift test, in (0, 1). Default 0.001.
    pub drift_confidence: f64,
    /// Confidence of the warning test, in (0, 1). Default 0.005.
    pub warning_confidence: f64,
    /// Also monitor decreases of the error rate. Default false.
    pub two_sided_test: bool,
}

impl Default for HddmAConfig {
    fn default() -> Self {
        Self {
            drift_confidence: 0.001,
            warning_confidence: 0.005,
            two_sided_test: false,
        }
    }
}

impl HddmAConfig {
    pub(crate) fn from_params(r: &Reader) -> Result<Self> {
        Ok(Self {
            drift_confidence: r.f64("drift_confidence")?,
            warning_confidence: r.f64("warning_confidence")?,
            two_sided_test: r.bool("two_sided_test")?,
        })
    }
}

/// HDDM_A (Frías-Blanco et al. 2014) exactly as river 0.26.1 computes it.
/// Input: 1 for an error, 0 otherwise. `z` is the mean of all inputs; the cut
/// point `x_min` (`x_max` for decreases) is a copy of `z` taken whenever
/// `x_min + eps(n_x) >= z + eps(n_z)`, `eps(n) = sqrt(ln(1/drift_confidence) / (2 n))`.
/// An increase is significant at confidence `c` when
/// `z - x_min >= sqrt(m/2 ln(2/c))`, `m = (n_z - n_x) / n_x / n_z`.
///
/// [`Detector::statistic`] is `z - x_min`.
#[derive(Clone, Debug)]
pub struct HddmA {
    cfg: HddmAConfig,
    z: RiverMean,
    x_min: RiverMean,
    x_max: RiverMean,
    warning: bool,
    drift: bool,
}

impl HddmA {
    /// Validates `cfg` and makes a fresh detector.
    pub fn new(cfg: HddmAConfig) -> Result<Self> {
        let c = Check(SPEC.name);
        c.open("drift_confidence", cfg.drift_confidence, 0.0, 1.0)?;
        c.open("warning_confidence", cfg.warning_confidence, 0.0, 1.0)?;
        let mut d = Self {
            cfg,
            z: RiverMean::default(),
            x_min: RiverMean::default(),
            x_max: RiverMean::default(),
            warning: false,
            drift: false,
        };
        d.reset();
        Ok(d)
    }

    /// The parameters in use.
    pub fn config(&self) -> &HddmAConfig {
        &self.cfg
    }

    fn hoeffding_bound(&self, n: f64) -> f64 {
        (1.0 / (2.0 * n) * (1.0 / self.cfg.drift_confidence).ln()).sqrt()
    }

    fn mean_incr(&self, confidence: f64) -> bool {
        if self.x_min.n == self.z.n {
            return false;
        }
        let m = (self.z.n - self.x_min.n) / self.x_min.n * (1.0 / self.z.n);
        let eps = (m / 2.0 * (2.0 / confidence).ln()).sqrt();
        self.z.mean - self.x_min.mean >= eps
    }

    fn mean_decr(&self, confidence: f64) -> bool {
        if self.x_max.n == self.z.n {
            return false;
        }
        let m = (self.z.n - self.x_max.n) / self.x_max.n * (1.0 / self.z.n);
        let eps = (m / 2.0 * (2.0 / confidence).ln()).sqrt();
        self.x_max.mean - self.z.mean >= eps
    }
}

impl Detector for HddmA {
    fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        self.z.update(x);
        if self.x_min.n == 0.0 {
            self.x_min = self.z;
        }
        if self.x_max.n == 0.0 {
            self.x_max = self.z;
        }
        let eps_z = self.hoeffding_bound(self.z.n);
        let eps_x = self.hoeffding_bound(self.x_min.n);
        if self.x_min.mean + eps_x >= self.z.mean + eps_z {
            self.x_min = self.z;
        }
        let eps_x = self.hoeffding_bound(self.x_max.n);
        if self.x_max.mean - eps_x <= self.z.mean - eps_z {
            self.x_max = self.z;
        }
        if self.mean_incr(self.cfg.drift_confidence) {
            self.warning = false;
            self.drift = true;
        } else if self.mean_incr(self.cfg.warning_confidence) {
            self.warning = true;
            self.drift = false;
        } else {
            self.warning = false;
            self.drift = false;
        }
        if self.cfg.two_sided_test {
            if self.mean_decr(self.cfg.drift_confidence) {
                self.drift = true;
            } else if self.mean_decr(self.cfg.warning_confidence) {
                self.warning = true;
            }
        }
        Signal {
            drift: self.drift,
            warning: self.warning,
        }
    }

    fn statistic(&self) -> f64 {
        self.z.mean - self.x_min.mean
    }

    fn spec(&self) -> &'static DetectorSpec {
        &SPEC
    }

    fn reset(&mut self) {
        self.z = RiverMean::default();
        self.x_min = RiverMean::default();
        self.x_max = RiverMean::default();
        self.warning = false;
        self.drift = false;
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("drift_confidence", fmt_f64(self.cfg.drift_confidence)),
            ("warning_confidence", fmt_f64(self.cfg.warning_confidence)),
            ("two_sided_test", self.cfg.two_sided_test.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sided_ignores_a_falling_error_rate() {
        let xs: Vec<f64> = (0..4000)
            .map(|i| f64::from(if i < 2000 { i % 2 == 0 } else { i % 20 == 0 }))
            .collect();
        for (two_sided, expect) in [(false, false), (true, true)] {
            let mut d = HddmA::new(HddmAConfig {
                two_sided_test: two_sided,
                ..Default::default()
            })
            .unwrap();
            assert_eq!(xs.iter().any(|&x| d.update(x).drift), expect);
        }
    }
}
