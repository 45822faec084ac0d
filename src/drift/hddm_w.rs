//! HDDM_W, as river 0.26.1 `drift.binary.HDDMW`.

use super::num::{py_pow, RiverEwMean};
use super::params::{fmt_f64, Check, DetectorSpec, ParamSpec, Reader, Tuning};
use super::{Detector, Signal};
use crate::Result;

pub(crate) const SPEC: DetectorSpec = DetectorSpec {
    name: "hddm-w",
    summary:
        "HDDM with W-test: McDiarmid bounds on exponentially weighted error rates (river HDDM_W)",
    binary: true,
    warning: true,
    statistic: "EWMA since the increase cut point minus the EWMA up to it (0 until both exist)",
    reference: "river 0.26.1 drift.binary.HDDMW",
    build: |r| Ok(Box::new(HddmW::new(HddmWConfig::from_params(r)?)?)),
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
            name: "lambda_val",
            default: "0.05",
            help: "weight of the newest value in the EWMAs, in (0, 1]",
        },
        ParamSpec {
            name: "two_sided_test",
            default: "false",
            help: "also detect decreases of the error rate (true/false)",
        },
    ],
};

/// Parameters of [`HddmW`] (river's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HddmWConfig {
    /// Confidence of the drift test, in (0, 1). Default 0.001.
    pub drift_confidence: f64,
    /// Confidence of the warning test, in (0, 1). Default 0.005.
    pub warning_confidence: f64,
    /// Weight of the newest value in the EWMAs, in (0, 1]. Default 0.05.
    pub lambda_val: f64,
    /// Also monitor decreases of the error rate. Default false.
    pub two_sided_test: bool,
}

impl Default for HddmWConfig {
    fn default() -> Self {
        Self {
            drift_confidence: 0.001,
            warning_confidence: 0.005,
            lambda_val: 0.05,
            two_sided_test: false,
        }
    }
}

impl HddmWConfig {
    pub(crate) fn from_params(r: &Reader) -> Result<Self> {
        Ok(Self {
            drift_confidence: r.f64("drift_confidence")?,
            warning_confidence: r.f64("warning_confidence")?,
            lambda_val: r.f64("lambda_val")?,
            two_sided_test: r.bool("two_sided_test")?,
        })
    }
}

/// river's `SampleInfo`: an EWMA and its independent bounded condition.
#[derive(Clone, Copy, Debug)]
struct Sample {
    ewma: RiverEwMean,
    is_init: bool,
    ibc: f64,
    lambda_sq: f64,
    c_lambda_sq: f64,
}

impl Sample {
    fn new(lambda: f64) -> Self {
        Self {
            ewma: RiverEwMean::new(lambda),
            is_init: false,
            ibc: 1.0,
            lambda_sq: lambda * lambda,
            c_lambda_sq: py_pow(1.0 - lambda, 2.0),
        }
    }

    fn update(&mut self, x: f64) {
        self.ewma.update(x);
        self.is_init = true;
        self.ibc = self.lambda_sq + self.c_lambda_sq * self.ibc;
    }
}

/// HDDM_W (Frías-Blanco et al. 2014) exactly as river 0.26.1 computes it.
/// Input: 1 for an error, 0 otherwise. An EWMA of all inputs (weight
/// `lambda_val`, started at the first value) with its McDiarmid bound
/// `eps = sqrt(ibc ln(1/c) / 2)` sets a cut point whenever `ewma + eps`
/// reaches a new minimum (maximum of `ewma - eps` for decreases); an EWMA of
/// the inputs after the cut is compared with the EWMA at the cut: a change
/// when their difference exceeds `sqrt((ibc1 + ibc2) ln(1/c) / 2)`.
///
/// [`Detector::statistic`] is the EWMA after the increase cut point minus the
/// EWMA at it (0 until both have values).
#[derive(Clone, Debug)]
pub struct HddmW {
    cfg: HddmWConfig,
    total: Sample,
    s1_decr: Sample,
    s1_incr: Sample,
    s2_decr: Sample,
    s2_incr: Sample,
    incr_cutpoint: f64,
    decr_cutpoint: f64,
    warning: bool,
    drift: bool,
}

fn mcdiarmid_bound(ibc: f64, confidence: f64) -> f64 {
    (ibc * (1.0 / confidence).ln() / 2.0).sqrt()
}

fn has_mean_changed(s1: &Sample, s2: &Sample, confidence: f64) -> bool {
    if !(s1.is_init && s2.is_init) {
        return false;
    }
    let bound = mcdiarmid_bound(s1.ibc + s2.ibc, confidence);
    s2.ewma.mean - s1.ewma.mean > bound
}

impl HddmW {
    /// Validates `cfg` and makes a fresh detector.
    pub fn new(cfg: HddmWConfig) -> Result<Self> {
        let c = Check(SPEC.name);
        c.open("drift_confidence", cfg.drift_confidence, 0.0, 1.0)?;
        c.open("warning_confidence", cfg.warning_confidence, 0.0, 1.0)?;
        c.open_closed("lambda_val", cfg.lambda_val, 0.0, 1.0)?;
        let s = Sample::new(cfg.lambda_val);
        let mut d = Self {
            cfg,
            total: s,
            s1_decr: s,
            s1_incr: s,
            s2_decr: s,
            s2_incr: s,
            incr_cutpoint: f64::INFINITY,
            decr_cutpoint: f64::NEG_INFINITY,
            warning: false,
            drift: false,
        };
        d.reset();
        Ok(d)
    }

    /// The parameters in use.
    pub fn config(&self) -> &HddmWConfig {
        &self.cfg
    }
}

impl Detector for HddmW {
    fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        let (dc, wc) = (self.cfg.drift_confidence, self.cfg.warning_confidence);
        let fresh = Sample::new(self.cfg.lambda_val);
        self.total.update(x);

        let eps = mcdiarmid_bound(self.total.ibc, dc);
        if self.total.ewma.mean + eps < self.incr_cutpoint {
            self.incr_cutpoint = self.total.ewma.mean + eps;
            self.s1_incr = self.total;
            self.s2_incr = fresh;
        } else {
            self.s2_incr.update(x);
        }
        if has_mean_changed(&self.s1_incr, &self.s2_incr, dc) {
            self.warning = false;
            self.drift = true;
        } else if has_mean_changed(&self.s1_incr, &self.s2_incr, wc) {
            self.warning = true;
            self.drift = false;
        } else {
            self.warning = false;
            self.drift = false;
        }

        let eps = mcdiarmid_bound(self.total.ibc, dc);
        if self.total.ewma.mean - eps > self.decr_cutpoint {
            self.decr_cutpoint = self.total.ewma.mean - eps;
            self.s1_decr = self.total;
            self.s2_decr = fresh;
        } else {
            self.s2_decr.update(x);
        }
        if self.cfg.two_sided_test {
            if has_mean_changed(&self.s2_decr, &self.s1_decr, dc) {
                self.drift = true;
            } else if has_mean_changed(&self.s2_decr, &self.s1_decr, wc) {
                self.warning = true;
            }
        }
        Signal {
            drift: self.drift,
            warning: self.warning,
        }
    }

    fn statistic(&self) -> f64 {
        if self.s1_incr.is_init && self.s2_incr.is_init {
            self.s2_incr.ewma.mean - self.s1_incr.ewma.mean
        } else {
            0.0
        }
    }

    fn spec(&self) -> &'static DetectorSpec {
        &SPEC
    }

    fn reset(&mut self) {
        let s = Sample::new(self.cfg.lambda_val);
        self.total = s;
        self.s1_decr = s;
        self.s1_incr = s;
        self.s2_decr = s;
        self.s2_incr = s;
        self.incr_cutpoint = f64::INFINITY;
        self.decr_cutpoint = f64::NEG_INFINITY;
        self.warning = false;
        self.drift = false;
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("drift_confidence", fmt_f64(self.cfg.drift_confidence)),
            ("warning_confidence", fmt_f64(self.cfg.warning_confidence)),
            ("lambda_val", fmt_f64(self.cfg.lambda_val)),
            ("two_sided_test", self.cfg.two_sided_test.to_string()),
        ]
    }
}
