//! ECDD, EWMA charts for concept drift (Ross et al. 2012), as frouros 0.9.0
//! `ECDDWT`.

use super::num::py_pow;
use super::params::{fmt_f64, Check, DetectorSpec, ParamSpec, Reader, Tuning};
use super::{Detector, Signal};
use crate::Result;

pub(crate) const SPEC: DetectorSpec = DetectorSpec {
    name: "ewma",
    summary:
        "ECDD: EWMA chart of the error rate with ARL-calibrated control limits (frouros ECDDWT)",
    binary: true,
    warning: true,
    statistic: "Z, the exponentially weighted moving average of the inputs",
    reference: "Ross et al. 2012 / frouros 0.9.0 ECDDWT, via fixtures/drift/gen.py's EwmaRef",
    build: |r| Ok(Box::new(Ewma::new(EwmaConfig::from_params(r)?)?)),
    tune: Tuning {
        param: "average_run_length",
        larger_is_quieter: true,
        lo: 100.0,
        hi: 1000.0,
    },
    params: &[
        ParamSpec {
            name: "lambda",
            default: "0.2",
            help: "weight of the newest value in the EWMA, in (0, 1]",
        },
        ParamSpec {
            name: "average_run_length",
            default: "400",
            help:
                "expected updates between false alarms, picks the control limit: 100, 400 or 1000",
        },
        ParamSpec {
            name: "warning_level",
            default: "0.5",
            help: "warning at this fraction of the control limit, in (0, 1)",
        },
        ParamSpec {
            name: "min_num_instances",
            default: "30",
            help: "updates before warnings and changes can be signalled (integer >= 1)",
        },
    ],
};

/// Parameters of [`Ewma`] (frouros's names, `lambda_` spelt `lambda`, and
/// defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EwmaConfig {
    /// Weight of the newest value in the EWMA, in (0, 1]. Default 0.2.
    pub lambda: f64,
    /// Expected updates between false alarms: 100, 400 or 1000 (the values
    /// Ross et al. fit control limits for). Default 400.
    pub average_run_length: u32,
    /// Warning at this fraction of the control limit, in (0, 1). Default 0.5.
    pub warning_level: f64,
    /// Updates before anything can be signalled, `>= 1`. Default 30.
    pub min_num_instances: u64,
}

impl Default for EwmaConfig {
    fn default() -> Self {
        Self {
            lambda: 0.2,
            average_run_length: 400,
            warning_level: 0.5,
            min_num_instances: 30,
        }
    }
}

impl EwmaConfig {
    pub(crate) fn from_params(r: &Reader) -> Result<Self> {
        let arl = r.u64("average_run_length")?;
        Ok(Self {
            lambda: r.f64("lambda")?,
            average_run_length: u32::try_from(arl).unwrap_or(0),
            warning_level: r.f64("warning_level")?,
            min_num_instances: r.u64("min_num_instances")?,
        })
    }
}

/// The control limit L(p) fitted by Ross et al. (2012) for an average run
/// length, evaluated as frouros writes it (left to right, `p^k` by `pow`).
fn control_limit(arl: u32, p: f64) -> f64 {
    match arl {
        100 => {
            2.76 - 6.23 * p + 18.12 * py_pow(p, 3.0) - 312.45 * py_pow(p, 5.0)
                + 1002.18 * py_pow(p, 7.0)
        }
        400 => {
            3.97 - 6.56 * p + 48.73 * py_pow(p, 3.0) - 330.13 * py_pow(p, 5.0)
                + 848.18 * py_pow(p, 7.0)
        }
        _ => {
            1.17 + 7.56 * p - 21.24 * py_pow(p, 3.0) + 112.12 * py_pow(p, 5.0)
                - 987.23 * py_pow(p, 7.0)
        }
    }
}

/// ECDD (Ross, Adams, Tasoulis & Hand 2012), as frouros 0.9.0's `ECDDWT`.
/// Input: 1 for an error, 0 otherwise.
///
/// ```text
/// n += 1;  p += (x - p) / n                        (error-rate estimate)
/// Z = lambda x + (1 - lambda) Z,  Z starts at 0
/// sigma_Z = sqrt(lambda / (2 - lambda) (1 - (1 - lambda)^(2n)) p (1 - p))
/// once n >= min_num_instances, with L = L_ARL(p):
///     drift   if Z > p + L sigma_Z
///     warning if Z > p + warning_level L sigma_Z
/// ```
///
/// [`Detector::statistic`] is Z.
#[derive(Clone, Debug)]
pub struct Ewma {
    cfg: EwmaConfig,
    one_minus_lambda: f64,
    lambda_ratio: f64,
    n: u64,
    p: f64,
    z: f64,
    warning: bool,
    drift: bool,
}

impl Ewma {
    /// Validates `cfg` and makes a fresh detector.
    pub fn new(cfg: EwmaConfig) -> Result<Self> {
        let c = Check(SPEC.name);
        c.open_closed("lambda", cfg.lambda, 0.0, 1.0)?;
        c.that(
            "average_run_length",
            matches!(cfg.average_run_length, 100 | 400 | 1000),
            format!("{} is not 100, 400 or 1000", cfg.average_run_length),
        )?;
        c.open("warning_level", cfg.warning_level, 0.0, 1.0)?;
        c.at_least("min_num_instances", cfg.min_num_instances, 1)?;
        Ok(Self {
            cfg,
            one_minus_lambda: 1.0 - cfg.lambda,
            lambda_ratio: cfg.lambda / (2.0 - cfg.lambda),
            n: 0,
            p: 0.0,
            z: 0.0,
            warning: false,
            drift: false,
        })
    }

    /// The parameters in use.
    pub fn config(&self) -> &EwmaConfig {
        &self.cfg
    }
}

impl Detector for Ewma {
    fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        self.n += 1;
        self.p += (x - self.p) / self.n as f64;
        self.z = self.cfg.lambda * x + self.one_minus_lambda * self.z;
        if self.n >= self.cfg.min_num_instances {
            let var = self.p * (1.0 - self.p);
            let decay = py_pow(self.one_minus_lambda, (2 * self.n) as f64);
            let sigma = (self.lambda_ratio * (1.0 - decay) * var).sqrt();
            let limit = control_limit(self.cfg.average_run_length, self.p);
            if self.z > self.p + 1.0 * limit * sigma {
                self.drift = true;
                self.warning = false;
            } else {
                self.drift = false;
                self.warning = self.z > self.p + self.cfg.warning_level * limit * sigma;
            }
        } else {
            self.drift = false;
            self.warning = false;
        }
        Signal {
            drift: self.drift,
            warning: self.warning,
        }
    }

    fn statistic(&self) -> f64 {
        self.z
    }

    fn spec(&self) -> &'static DetectorSpec {
        &SPEC
    }

    fn reset(&mut self) {
        self.n = 0;
        self.p = 0.0;
        self.z = 0.0;
        self.warning = false;
        self.drift = false;
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("lambda", fmt_f64(self.cfg.lambda)),
            (
                "average_run_length",
                self.cfg.average_run_length.to_string(),
            ),
            ("warning_level", fmt_f64(self.cfg.warning_level)),
            ("min_num_instances", self.cfg.min_num_instances.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_before_min_num_instances() {
        let mut d = Ewma::new(EwmaConfig {
            min_num_instances: 100,
            ..Default::default()
        })
        .unwrap();
        for i in 0..99 {
            let s = d.update(f64::from(i >= 20));
            assert!(!s.drift && !s.warning, "update {i}");
        }
    }

    #[test]
    fn a_rising_error_rate_is_found() {
        let mut d = Ewma::new(EwmaConfig::default()).unwrap();
        let hits: Vec<usize> = (0..2000)
            .filter(|&i| {
                d.update(f64::from(if i < 1000 { i % 10 == 0 } else { i % 2 == 0 }))
                    .drift
            })
            .collect();
        assert!(!hits.is_empty() && hits[0] >= 1000, "{hits:?}");
    }
}
