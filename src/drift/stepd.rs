//! STEPD (Nishida & Yamauchi 2007), as frouros 0.9.0 `STEPD` with one
//! documented difference.

use std::collections::VecDeque;

use super::num::norm_sf;
use super::params::{fmt_f64, Check, DetectorSpec, ParamSpec, Reader, Tuning};
use super::{Detector, Signal};
use crate::Result;

pub(crate) const SPEC: DetectorSpec = DetectorSpec {
    name: "stepd",
    summary: "Statistical Test of Equal Proportions: error rate of the recent window against all older inputs",
    binary: true,
    warning: true,
    statistic: "the continuity-corrected two-proportion z statistic T (0 until the first test)",
    reference: "Nishida & Yamauchi 2007 / frouros 0.9.0 STEPD (P from T, not |T|), via fixtures/drift/gen.py's StepdRef",
    build: |r| Ok(Box::new(Stepd::new(StepdConfig::from_params(r)?)?)),
    tune: Tuning {
        param: "alpha_d",
        larger_is_quieter: false,
        lo: 1e-15,
        hi: 0.5,
    },
    params: &[
        ParamSpec {
            name: "alpha_d",
            default: "0.003",
            help: "significance level for drift, in (0, 1)",
        },
        ParamSpec {
            name: "alpha_w",
            default: "0.05",
            help: "significance level for warning, in (alpha_d, 1)",
        },
        ParamSpec {
            name: "window_size",
            default: "30",
            help: "length of the recent window; tests start after 2 x window_size updates (integer >= 1)",
        },
    ],
};

/// Parameters of [`Stepd`] (frouros's names and defaults; frouros calls the
/// window `min_num_instances`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepdConfig {
    /// Significance level for drift, in (0, 1). Default 0.003.
    pub alpha_d: f64,
    /// Significance level for warning, in (`alpha_d`, 1). Default 0.05.
    pub alpha_w: f64,
    /// Length of the recent window, `>= 1`. Default 30.
    pub window_size: usize,
}

impl Default for StepdConfig {
    fn default() -> Self {
        Self {
            alpha_d: 0.003,
            alpha_w: 0.05,
            window_size: 30,
        }
    }
}

impl StepdConfig {
    pub(crate) fn from_params(r: &Reader) -> Result<Self> {
        Ok(Self {
            alpha_d: r.f64("alpha_d")?,
            alpha_w: r.f64("alpha_w")?,
            window_size: r.usize("window_size")?,
        })
    }
}

/// STEPD (Nishida & Yamauchi 2007). Input: 1 for an error (any non-zero value
/// counts as one), 0 otherwise. The last `window_size` inputs (the recent
/// window: `r` errors of `n_r`) are compared with every earlier input since
/// the last reset (`o` errors of `n_o`), once `n_o >= window_size`:
///
/// ```text
/// p = (o + r) / (n_o + n_r)
/// T = (|o/n_o - r/n_r| - (1/n_o + 1/n_r)/2) / sqrt(p (1 - p) (1/n_o + 1/n_r))
/// P = 1 - Phi(T)             drift if P < alpha_d, else warning if P < alpha_w
/// ```
///
/// This is frouros 0.9.0's `STEPD` except that frouros (and MOA) take P from
/// `|T|`: a negative T — an observed difference smaller than the continuity
/// correction, i.e. no evidence — then counts as evidence, and a stretch
/// with no errors at all (`p = 0`, `T = -inf`) always raises a drift. Here
/// `T < 0` gives `P > 1/2` and never a signal; for `T >= 0` the two agree.
/// Phi is scipy's `ndtr` (Cephes), so P matches `scipy.stats.norm.sf`.
///
/// [`Detector::statistic`] is T of the last test (0 before the first).
#[derive(Clone, Debug)]
pub struct Stepd {
    cfg: StepdConfig,
    n: u64,
    errors: u64,
    window: VecDeque<bool>,
    window_errors: u64,
    t: f64,
    warning: bool,
    drift: bool,
}

impl Stepd {
    /// Validates `cfg` and makes a fresh detector.
    pub fn new(cfg: StepdConfig) -> Result<Self> {
        let c = Check(SPEC.name);
        c.open("alpha_d", cfg.alpha_d, 0.0, 1.0)?;
        c.open("alpha_w", cfg.alpha_w, cfg.alpha_d, 1.0)?;
        c.at_least("window_size", cfg.window_size as u64, 1)?;
        Ok(Self {
            cfg,
            n: 0,
            errors: 0,
            window: VecDeque::with_capacity(cfg.window_size + 1),
            window_errors: 0,
            t: 0.0,
            warning: false,
            drift: false,
        })
    }

    /// The parameters in use.
    pub fn config(&self) -> &StepdConfig {
        &self.cfg
    }
}

impl Detector for Stepd {
    fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        let e = x != 0.0;
        self.n += 1;
        self.errors += u64::from(e);
        self.window.push_back(e);
        self.window_errors += u64::from(e);
        if self.window.len() > self.cfg.window_size {
            let old = self.window.pop_front().expect("window is not empty");
            self.window_errors -= u64::from(old);
        }
        let n_r = self.window.len() as u64;
        let n_o = self.n - n_r;
        if n_o >= self.cfg.window_size as u64 {
            let r = self.window_errors;
            let o = self.errors - r;
            let (n_o, n_r) = (n_o as f64, n_r as f64);
            let p = self.errors as f64 / self.n as f64;
            let inv = 1.0 / n_o + 1.0 / n_r;
            let num = (o as f64 / n_o - r as f64 / n_r).abs() - 0.5 * inv;
            let den = (p * (1.0 - p) * inv).sqrt();
            // den == 0 only when p is 0 or 1, and then num < 0.
            self.t = if den > 0.0 {
                num / den
            } else {
                f64::NEG_INFINITY
            };
            let pval = norm_sf(self.t);
            self.drift = pval < self.cfg.alpha_d;
            self.warning = !self.drift && pval < self.cfg.alpha_w;
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
        self.t
    }

    fn spec(&self) -> &'static DetectorSpec {
        &SPEC
    }

    fn reset(&mut self) {
        self.n = 0;
        self.errors = 0;
        self.window.clear();
        self.window_errors = 0;
        self.t = 0.0;
        self.warning = false;
        self.drift = false;
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("alpha_d", fmt_f64(self.cfg.alpha_d)),
            ("alpha_w", fmt_f64(self.cfg.alpha_w)),
            ("window_size", self.cfg.window_size.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_errors_at_all_is_no_drift() {
        // frouros/MOA would signal drift at index 59 here (T = -inf, P from |T|).
        let mut d = Stepd::new(StepdConfig::default()).unwrap();
        for i in 0..500 {
            let s = d.update(0.0);
            assert!(!s.drift && !s.warning, "update {i}");
        }
        assert_eq!(d.statistic(), f64::NEG_INFINITY);
    }

    #[test]
    fn first_test_at_twice_the_window() {
        let mut d = Stepd::new(StepdConfig {
            window_size: 10,
            ..Default::default()
        })
        .unwrap();
        let xs: Vec<f64> = (0..40).map(|i| f64::from(i >= 10)).collect();
        let hits: Vec<usize> = xs
            .iter()
            .enumerate()
            .filter_map(|(i, &x)| d.update(x).drift.then_some(i))
            .collect();
        assert_eq!(hits.first(), Some(&19));
    }
}
