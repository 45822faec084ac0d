//! CUSUM (Page 1954), as frouros 0.9.0 `CUSUM` defines it.

use super::params::{fmt_f64, Check, DetectorSpec, ParamSpec, Reader, Tuning};
use super::{Detector, Signal};
use crate::Result;

pub(crate) const SPEC: DetectorSpec = DetectorSpec {
    name: "cusum",
    summary: "Page's CUSUM: cumulative sum of deviations above the running mean (frouros CUSUM)",
    binary: false,
    warning: false,
    statistic: "the cumulative sum g = max(0, g + x - mean - delta)",
    reference: "frouros 0.9.0 CUSUM (Page 1954), via fixtures/drift/gen.py's CusumRef",
    build: |r| Ok(Box::new(Cusum::new(CusumConfig::from_params(r)?)?)),
    tune: Tuning {
        param: "lambda",
        larger_is_quieter: true,
        lo: 1e-4,
        hi: 1e7,
    },
    params: &[
        ParamSpec {
            name: "delta",
            default: "0.005",
            help: "slack subtracted from every deviation (>= 0)",
        },
        ParamSpec {
            name: "lambda",
            default: "50",
            help: "threshold on the cumulative sum (>= 0)",
        },
        ParamSpec {
            name: "min_num_instances",
            default: "30",
            help: "updates before a change can be signalled (integer >= 1)",
        },
    ],
};

/// Parameters of [`Cusum`] (frouros's names, `lambda_` spelt `lambda`, and
/// defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CusumConfig {
    /// Slack subtracted from every deviation, `>= 0`. Default 0.005.
    pub delta: f64,
    /// Threshold on the cumulative sum, `>= 0`. Default 50.
    pub lambda: f64,
    /// Updates before a change can be signalled, `>= 1`. Default 30.
    pub min_num_instances: u64,
}

impl Default for CusumConfig {
    fn default() -> Self {
        Self {
            delta: 0.005,
            lambda: 50.0,
            min_num_instances: 30,
        }
    }
}

impl CusumConfig {
    pub(crate) fn from_params(r: &Reader) -> Result<Self> {
        Ok(Self {
            delta: r.f64("delta")?,
            lambda: r.f64("lambda")?,
            min_num_instances: r.u64("min_num_instances")?,
        })
    }
}

/// Page's (1954) one-sided CUSUM for an increase of the mean, in the form
/// frouros 0.9.0 implements (its `CUSUM` with reset after each drift):
///
/// ```text
/// n += 1;  mean += (x - mean) / n           (running mean, x included)
/// g = max(0, g + x - mean - delta)
/// drift  <=>  n >= min_num_instances  and  g > lambda
/// ```
///
/// The deviations are raw (not standardised): `lambda` is in the units of
/// the input. [`Detector::statistic`] is `g`.
#[derive(Clone, Debug)]
pub struct Cusum {
    cfg: CusumConfig,
    n: u64,
    mean: f64,
    g: f64,
    drift: bool,
}

impl Cusum {
    /// Validates `cfg` and makes a fresh detector.
    pub fn new(cfg: CusumConfig) -> Result<Self> {
        let c = Check(SPEC.name);
        c.non_negative("delta", cfg.delta)?;
        c.non_negative("lambda", cfg.lambda)?;
        c.at_least("min_num_instances", cfg.min_num_instances, 1)?;
        Ok(Self {
            cfg,
            n: 0,
            mean: 0.0,
            g: 0.0,
            drift: false,
        })
    }

    /// The parameters in use.
    pub fn config(&self) -> &CusumConfig {
        &self.cfg
    }
}

impl Detector for Cusum {
    fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        self.n += 1;
        self.mean += (x - self.mean) / self.n as f64;
        let g = self.g + x - self.mean - self.cfg.delta;
        self.g = if g > 0.0 { g } else { 0.0 };
        self.drift = self.n >= self.cfg.min_num_instances && self.g > self.cfg.lambda;
        Signal {
            drift: self.drift,
            warning: false,
        }
    }

    fn statistic(&self) -> f64 {
        self.g
    }

    fn spec(&self) -> &'static DetectorSpec {
        &SPEC
    }

    fn reset(&mut self) {
        self.n = 0;
        self.mean = 0.0;
        self.g = 0.0;
        self.drift = false;
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("delta", fmt_f64(self.cfg.delta)),
            ("lambda", fmt_f64(self.cfg.lambda)),
            ("min_num_instances", self.cfg.min_num_instances.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frouros_docstring_example_shape() {
        // A mean step of +0.6 is found; a step down is not (one-sided).
        let up: Vec<f64> = (0..2000)
            .map(|i| if i < 1000 { 0.2 } else { 0.8 })
            .collect();
        let mut d = Cusum::new(CusumConfig::default()).unwrap();
        assert!(up.iter().any(|&x| d.update(x).drift));
        let down: Vec<f64> = up.iter().map(|x| 1.0 - x).collect();
        let mut d = Cusum::new(CusumConfig::default()).unwrap();
        assert!(down.iter().all(|&x| !d.update(x).drift));
    }
}
