//! DDM, as river 0.26.1 `drift.binary.DDM`.

use super::num::RiverMean;
use super::params::{fmt_f64, Check, DetectorSpec, ParamSpec, Reader, Tuning};
use super::{Detector, Signal};
use crate::Result;

pub(crate) const SPEC: DetectorSpec = DetectorSpec {
    name: "ddm",
    summary: "Drift Detection Method: error rate p plus its binomial std s against their minimum (river DDM)",
    binary: true,
    warning: true,
    statistic: "p + s, the error rate plus its standard deviation sqrt(p (1 - p) / n)",
    reference: "river 0.26.1 drift.binary.DDM",
    build: |r| Ok(Box::new(Ddm::new(DdmConfig::from_params(r)?)?)),
    tune: Tuning {
        param: "drift_threshold",
        larger_is_quieter: true,
        lo: 1e-2,
        hi: 1e3,
    },
    params: &[
        ParamSpec {
            name: "warm_start",
            default: "30",
            help: "updates before warnings and changes can be signalled (integer >= 0)",
        },
        ParamSpec {
            name: "warning_threshold",
            default: "2",
            help: "warning when p + s > p_min + warning_threshold s_min (>= 0)",
        },
        ParamSpec {
            name: "drift_threshold",
            default: "3",
            help: "drift when p + s > p_min + drift_threshold s_min (>= 0)",
        },
    ],
};

/// Parameters of [`Ddm`] (river's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdmConfig {
    /// Updates before anything can be signalled. Default 30.
    pub warm_start: u64,
    /// Warning when `p + s > p_min + warning_threshold * s_min`. Default 2.
    pub warning_threshold: f64,
    /// Drift when `p + s > p_min + drift_threshold * s_min`. Default 3.
    pub drift_threshold: f64,
}

impl Default for DdmConfig {
    fn default() -> Self {
        Self {
            warm_start: 30,
            warning_threshold: 2.0,
            drift_threshold: 3.0,
        }
    }
}

impl DdmConfig {
    pub(crate) fn from_params(r: &Reader) -> Result<Self> {
        Ok(Self {
            warm_start: r.u64("warm_start")?,
            warning_threshold: r.f64("warning_threshold")?,
            drift_threshold: r.f64("drift_threshold")?,
        })
    }
}

/// DDM (Gama et al. 2004) exactly as river 0.26.1 computes it. Input: 1 for an
/// error, 0 otherwise. With `p` the running error rate over `n` updates and
/// `s = sqrt(p (1 - p) / n)`: once `n > warm_start`, `(p_min, s_min)` is
/// replaced by `(p, s)` whenever `p + s <= p_min + s_min`; warning when
/// `p + s > p_min + warning_threshold s_min`, drift when
/// `p + s > p_min + drift_threshold s_min` (the warning is then cleared).
///
/// [`Detector::statistic`] is `p + s`.
#[derive(Clone, Debug)]
pub struct Ddm {
    cfg: DdmConfig,
    p: RiverMean,
    p_min: f64,
    s_min: f64,
    ps_min: f64,
    stat: f64,
    warning: bool,
    drift: bool,
}

impl Ddm {
    /// Validates `cfg` and makes a fresh detector.
    pub fn new(cfg: DdmConfig) -> Result<Self> {
        let c = Check(SPEC.name);
        c.non_negative("warning_threshold", cfg.warning_threshold)?;
        c.non_negative("drift_threshold", cfg.drift_threshold)?;
        let mut d = Self {
            cfg,
            p: RiverMean::default(),
            p_min: f64::NAN,
            s_min: f64::NAN,
            ps_min: f64::INFINITY,
            stat: 0.0,
            warning: false,
            drift: false,
        };
        d.reset();
        Ok(d)
    }

    /// The parameters in use.
    pub fn config(&self) -> &DdmConfig {
        &self.cfg
    }
}

impl Detector for Ddm {
    fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        self.p.update(x);
        let p = self.p.mean;
        let n = self.p.n;
        let s = (p * (1.0 - p) / n).sqrt();
        self.stat = p + s;
        if n > self.cfg.warm_start as f64 {
            if p + s <= self.ps_min {
                self.p_min = p;
                self.s_min = s;
                self.ps_min = self.p_min + self.s_min;
            }
            self.warning = p + s > self.p_min + self.cfg.warning_threshold * self.s_min;
            if p + s > self.p_min + self.cfg.drift_threshold * self.s_min {
                self.drift = true;
                self.warning = false;
            }
        }
        Signal {
            drift: self.drift,
            warning: self.warning,
        }
    }

    fn statistic(&self) -> f64 {
        self.stat
    }

    fn spec(&self) -> &'static DetectorSpec {
        &SPEC
    }

    fn reset(&mut self) {
        self.p = RiverMean::default();
        self.p_min = f64::NAN;
        self.s_min = f64::NAN;
        self.ps_min = f64::INFINITY;
        self.stat = 0.0;
        self.warning = false;
        self.drift = false;
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("warm_start", self.cfg.warm_start.to_string()),
            ("warning_threshold", fmt_f64(self.cfg.warning_threshold)),
            ("drift_threshold", fmt_f64(self.cfg.drift_threshold)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_ones_never_drift() {
        // river's own test: DDM on np.ones(1000) detects nothing.
        let mut d = Ddm::new(DdmConfig::default()).unwrap();
        assert!((0..1000).all(|_| !d.update(1.0).drift));
    }

    #[test]
    fn nothing_during_warm_start() {
        let mut d = Ddm::new(DdmConfig {
            warm_start: 50,
            ..Default::default()
        })
        .unwrap();
        for i in 0..50 {
            let s = d.update(f64::from(i >= 10));
            assert!(!s.drift && !s.warning, "update {i}");
        }
    }
}
