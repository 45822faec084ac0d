//! FHDDM, as river 0.26.1 `drift.binary.FHDDM`.

use std::collections::VecDeque;

use super::params::{fmt_f64, Check, DetectorSpec, ParamSpec, Reader, Tuning};
use super::{Detector, Signal};
use crate::Result;

pub(crate) const SPEC: DetectorSpec = DetectorSpec {
    name: "fhddm",
    summary: "Fast Hoeffding Drift Detection Method: drop of a sliding-window mean below its maximum (river FHDDM)",
    binary: true,
    warning: false,
    statistic: "u_max - u: the largest windowed mean so far minus the current one (0 until the window is full)",
    reference: "river 0.26.1 drift.binary.FHDDM",
    build: |r| Ok(Box::new(Fhddm::new(FhddmConfig::from_params(r)?)?)),
    tune: Tuning {
        param: "confidence_level",
        larger_is_quieter: false,
        lo: 1e-15,
        hi: 0.5,
    },
    params: &[
        ParamSpec {
            name: "sliding_window_size",
            default: "100",
            help: "length of the sliding window (integer >= 1)",
        },
        ParamSpec {
            name: "confidence_level",
            default: "0.000001",
            help: "delta of the Hoeffding bound, in (0, 1)",
        },
        ParamSpec {
            name: "short_window_size",
            default: "none",
            help: "length of an extra short window (stacking FHDDM), 1..=sliding_window_size, or none",
        },
    ],
};

/// Parameters of [`Fhddm`] (river's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FhddmConfig {
    /// Length of the sliding window, `>= 1`. Default 100.
    pub sliding_window_size: usize,
    /// Delta of the Hoeffding bound, in (0, 1). Default 1e-6.
    pub confidence_level: f64,
    /// Length of the extra short window of stacking FHDDM, at most
    /// `sliding_window_size`. Default none.
    pub short_window_size: Option<usize>,
}

impl Default for FhddmConfig {
    fn default() -> Self {
        Self {
            sliding_window_size: 100,
            confidence_level: 0.000001,
            short_window_size: None,
        }
    }
}

impl FhddmConfig {
    pub(crate) fn from_params(r: &Reader) -> Result<Self> {
        Ok(Self {
            sliding_window_size: r.usize("sliding_window_size")?,
            confidence_level: r.f64("confidence_level")?,
            short_window_size: r.opt_usize("short_window_size")?,
        })
    }
}

/// FHDDM (Pesaranghader & Viktor 2016; the short window is the stacking
/// variant) exactly as river 0.26.1 computes it: `u`, the mean of the last
/// `sliding_window_size` inputs, is tracked with its running maximum `u_max`;
/// drift when `u_max - u > sqrt(ln(1/confidence_level) / (2 size))` (or the
/// same on the short window).
///
/// **Direction.** FHDDM was designed for a stream of 1 = *correct*
/// prediction and fires when that mean falls. river 0.26.1 documents 1 =
/// error for it but keeps the arithmetic, so with 1 = error it fires when the
/// error rate *falls*. This implementation keeps river's behaviour (and
/// parity); feed `1 - error` to detect a rising error rate.
///
/// [`Detector::statistic`] is `u_max - u` of the last full window (0 before).
#[derive(Clone, Debug)]
pub struct Fhddm {
    cfg: FhddmConfig,
    epsilon: f64,
    epsilon_short: f64,
    window: VecDeque<f64>,
    n_one: f64,
    u_max: f64,
    u_short_max: f64,
    stat: f64,
    drift: bool,
}

impl Fhddm {
    /// Validates `cfg` and makes a fresh detector.
    pub fn new(cfg: FhddmConfig) -> Result<Self> {
        let c = Check(SPEC.name);
        c.at_least("sliding_window_size", cfg.sliding_window_size as u64, 1)?;
        c.open("confidence_level", cfg.confidence_level, 0.0, 1.0)?;
        if let Some(s) = cfg.short_window_size {
            c.that(
                "short_window_size",
                (1..=cfg.sliding_window_size).contains(&s),
                format!("{s} is not in 1..={}", cfg.sliding_window_size),
            )?;
        }
        let bound = |size: usize| ((1.0 / cfg.confidence_level).ln() / (2 * size) as f64).sqrt();
        let mut d = Self {
            cfg,
            epsilon: bound(cfg.sliding_window_size),
            epsilon_short: cfg.short_window_size.map_or(0.0, bound),
            window: VecDeque::with_capacity(cfg.sliding_window_size),
            n_one: 0.0,
            u_max: 0.0,
            u_short_max: 0.0,
            stat: 0.0,
            drift: false,
        };
        d.reset();
        Ok(d)
    }

    /// The parameters in use.
    pub fn config(&self) -> &FhddmConfig {
        &self.cfg
    }
}

impl Detector for Fhddm {
    fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        let size = self.cfg.sliding_window_size;
        self.window.push_back(x);
        self.n_one += x;
        if self.window.len() == size {
            let u = self.n_one / size as f64;
            self.u_max = if self.u_max < u { u } else { self.u_max };
            let mut short_drift = false;
            if let Some(s) = self.cfg.short_window_size {
                let sum = self.window.range(size - s..).fold(0.0, |a, &v| a + v);
                let u_s = sum / s as f64;
                self.u_short_max = if self.u_short_max < u_s {
                    u_s
                } else {
                    self.u_short_max
                };
                short_drift = self.u_short_max - u_s > self.epsilon_short;
            }
            let long_drift = self.u_max - u > self.epsilon;
            self.drift = long_drift || short_drift;
            self.stat = self.u_max - u;
            let oldest = self.window.pop_front().expect("window is full");
            self.n_one -= oldest;
        }
        Signal {
            drift: self.drift,
            warning: false,
        }
    }

    fn statistic(&self) -> f64 {
        self.stat
    }

    fn spec(&self) -> &'static DetectorSpec {
        &SPEC
    }

    fn reset(&mut self) {
        self.window.clear();
        self.n_one = 0.0;
        self.u_max = 0.0;
        self.u_short_max = 0.0;
        self.stat = 0.0;
        self.drift = false;
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "sliding_window_size",
                self.cfg.sliding_window_size.to_string(),
            ),
            ("confidence_level", fmt_f64(self.cfg.confidence_level)),
            (
                "short_window_size",
                self.cfg
                    .short_window_size
                    .map_or_else(|| "none".to_string(), |s| s.to_string()),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_until_the_window_is_full() {
        let mut d = Fhddm::new(FhddmConfig {
            sliding_window_size: 50,
            ..Default::default()
        })
        .unwrap();
        for i in 0..49 {
            assert!(!d.update(f64::from(i < 25)).drift);
            assert_eq!(d.statistic(), 0.0);
        }
    }

    #[test]
    fn fires_when_the_mean_of_x_falls() {
        let xs: Vec<f64> = (0..1000)
            .map(|i| f64::from(i < 500 || i % 10 == 0))
            .collect();
        let mut d = Fhddm::new(FhddmConfig::default()).unwrap();
        let hits: Vec<usize> = xs
            .iter()
            .enumerate()
            .filter_map(|(i, &x)| d.update(x).drift.then_some(i))
            .collect();
        assert!(!hits.is_empty() && hits[0] > 500, "{hits:?}");
        let up: Vec<f64> = xs.iter().map(|x| 1.0 - x).collect();
        let mut d = Fhddm::new(FhddmConfig::default()).unwrap();
        assert!(up.iter().all(|&x| !d.update(x).drift));
    }
}
