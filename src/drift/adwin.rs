//! ADWIN, as river 0.26.1 `drift.ADWIN` (whose core is river's Rust
//! `AdaptiveWindowing`, BSD-3-Clause): the same exponential histogram, the
//! same cut search and the same floating-point operation order.

use super::params::{fmt_f64, Check, DetectorSpec, ParamSpec, Reader, Tuning};
use super::{Detector, Signal};
use crate::Result;

pub(crate) const SPEC: DetectorSpec = DetectorSpec {
    name: "adwin",
    summary: "ADaptive WINdowing: drops old data while two sub-windows' means differ (river ADWIN)",
    binary: false,
    warning: false,
    statistic: "the estimation: mean of the values in the current adaptive window",
    reference: "river 0.26.1 drift.ADWIN",
    build: |r| Ok(Box::new(Adwin::new(AdwinConfig::from_params(r)?)?)),
    tune: Tuning {
        param: "delta",
        larger_is_quieter: false,
        lo: 1e-15,
        hi: 0.5,
    },
    params: &[
        ParamSpec {
            name: "delta",
            default: "0.002",
            help: "significance value, in (0, 1)",
        },
        ParamSpec {
            name: "clock",
            default: "32",
            help: "check for changes every `clock` updates (integer >= 1)",
        },
        ParamSpec {
            name: "max_buckets",
            default: "5",
            help: "buckets of each size kept before two are merged (integer >= 2)",
        },
        ParamSpec {
            name: "min_window_length",
            default: "5",
            help: "smallest sub-window length considered for a cut (integer >= 1)",
        },
        ParamSpec {
            name: "grace_period",
            default: "10",
            help: "no change is checked while the window holds this many values or fewer (integer >= 0)",
        },
    ],
};

/// Parameters of [`Adwin`] (river's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdwinConfig {
    /// Significance value, in (0, 1). Default 0.002.
    pub delta: f64,
    /// Check for changes every `clock` updates, `>= 1`. Default 32.
    pub clock: u32,
    /// Buckets of each size kept before merging, `>= 2`. Default 5. (river
    /// accepts 1, then panics at the first cut that empties a bucket.)
    pub max_buckets: usize,
    /// Smallest sub-window length considered for a cut, `>= 1`. Default 5.
    pub min_window_length: u32,
    /// No check while the window holds at most this many values. Default 10.
    pub grace_period: u32,
}

impl Default for AdwinConfig {
    fn default() -> Self {
        Self {
            delta: 0.002,
            clock: 32,
            max_buckets: 5,
            min_window_length: 5,
            grace_period: 10,
        }
    }
}

impl AdwinConfig {
    pub(crate) fn from_params(r: &Reader) -> Result<Self> {
        let u32p = |name: &str| -> Result<u32> {
            let v = r.u64(name)?;
            u32::try_from(v)
                .ok()
                .filter(|v| *v <= i32::MAX as u32)
                .ok_or_else(|| r.err(name, format!("{v} is too large")))
        };
        Ok(Self {
            delta: r.f64("delta")?,
            clock: u32p("clock")?,
            max_buckets: r.usize("max_buckets")?,
            min_window_length: u32p("min_window_length")?,
            grace_period: u32p("grace_period")?,
        })
    }
}

/// One row of the exponential histogram: up to `max_buckets + 1` summaries
/// (total, variance) of `2^row` values each, oldest first.
#[derive(Clone, Debug)]
struct Row {
    len: usize,
    totals: Vec<f64>,
    variances: Vec<f64>,
}

impl Row {
    fn new(max_buckets: usize) -> Self {
        Self {
            len: 0,
            totals: vec![0.0; max_buckets + 1],
            variances: vec![0.0; max_buckets + 1],
        }
    }

    fn push(&mut self, total: f64, variance: f64) {
        self.totals[self.len] = total;
        self.variances[self.len] = variance;
        self.len += 1;
    }

    /// Drops the `k` oldest summaries.
    fn drop_oldest(&mut self, k: usize) {
        self.totals.copy_within(k..self.len, 0);
        self.variances.copy_within(k..self.len, 0);
        for i in self.len - k..self.len {
            self.totals[i] = 0.0;
            self.variances[i] = 0.0;
        }
        self.len -= k;
    }
}

/// ADWIN (Bifet & Gavaldà 2007, the ADWIN2 bucket variant) exactly as river
/// 0.26.1 runs it: values enter an exponential histogram; every `clock`
/// updates, once the window holds more than `grace_period` values, every cut
/// into an older part W0 and a newer part W1 (both at least
/// `min_window_length` long) is tested, oldest buckets first, with
///
/// ```text
/// |mean(W0) - mean(W1)| > sqrt(2 m var(W) d') + (2/3) d' m,
/// m = 1/(n0 - mwl + 1) + 1/(n1 - mwl + 1),  d' = ln(2 ln(width) / delta)
/// ```
///
/// and on success the oldest bucket is dropped and the search starts over.
/// A drift is reported at an update where at least one bucket was dropped.
///
/// [`Detector::statistic`] is the estimation, the mean of the current window
/// (river's `ADWIN.estimation`); [`Adwin::width`] and [`Adwin::variance`] give
/// the rest of the state.
#[derive(Clone, Debug)]
pub struct Adwin {
    cfg: AdwinConfig,
    min_window_length: f64,
    grace_period: f64,
    total: f64,
    variance: f64,
    width: f64,
    tick: u64,
    rows: Vec<Row>,
    drift: bool,
}

impl Adwin {
    /// Validates `cfg` and makes a fresh detector.
    pub fn new(cfg: AdwinConfig) -> Result<Self> {
        let c = Check(SPEC.name);
        c.open("delta", cfg.delta, 0.0, 1.0)?;
        c.at_least("clock", cfg.clock.into(), 1)?;
        c.at_least("max_buckets", cfg.max_buckets as u64, 2)?;
        c.at_least("min_window_length", cfg.min_window_length.into(), 1)?;
        let mut d = Self {
            cfg,
            min_window_length: f64::from(cfg.min_window_length),
            grace_period: f64::from(cfg.grace_period),
            total: 0.0,
            variance: 0.0,
            width: 0.0,
            tick: 0,
            rows: Vec::new(),
            drift: false,
        };
        d.reset();
        Ok(d)
    }

    /// The parameters in use.
    pub fn config(&self) -> &AdwinConfig {
        &self.cfg
    }

    /// Number of values in the current window.
    pub fn width(&self) -> f64 {
        self.width
    }

    /// Sum of the values in the current window.
    pub fn total(&self) -> f64 {
        self.total
    }

    /// Sum of squared deviations of the window's values (river's
    /// `ADWIN.variance`, which is not divided by the width).
    pub fn variance(&self) -> f64 {
        self.variance
    }

    /// Mean of the window (0 when empty).
    pub fn estimation(&self) -> f64 {
        if self.width == 0.0 {
            0.0
        } else {
            self.total / self.width
        }
    }

    fn insert(&mut self, value: f64) {
        self.rows[0].push(value, 0.0);
        self.width += 1.0;
        let mut inc = 0.0;
        if self.width > 1.0 {
            let d = value - self.total / (self.width - 1.0);
            inc = (self.width - 1.0) * d * d / self.width;
        }
        self.variance += inc;
        self.total += value;
        self.compress();
    }

    fn compress(&mut self) {
        let full = self.cfg.max_buckets + 1;
        let mut i = 0;
        while self.rows[i].len == full {
            let n1 = (1u64 << i) as f64;
            let row = &self.rows[i];
            let (t0, t1) = (row.totals[0], row.totals[1]);
            let (v0, v1) = (row.variances[0], row.variances[1]);
            let mu1 = t0 / n1;
            let mu2 = t1 / n1;
            let t12 = t0 + t1;
            let temp = n1 * 0.5 * (mu1 - mu2) * (mu1 - mu2);
            let v12 = v0 + v1 + temp;
            if i + 1 >= self.rows.len() {
                self.rows.push(Row::new(self.cfg.max_buckets));
            }
            self.rows[i + 1].push(t12, v12);
            self.rows[i].drop_oldest(2);
            if self.rows[i + 1].len <= self.cfg.max_buckets {
                break;
            }
            i += 1;
        }
    }

    /// Drops the oldest bucket (the first of the last row).
    fn delete_oldest(&mut self) {
        let last = self.rows.len() - 1;
        let n = (1u64 << last) as f64;
        let (u, v) = (self.rows[last].totals[0], self.rows[last].variances[0]);
        let mu = u / n;
        self.width -= n;
        self.total -= u;
        let mu_window = self.total / self.width;
        let inc = v + n * self.width * (mu - mu_window) * (mu - mu_window) / (n + self.width);
        self.variance -= inc;
        self.rows[last].drop_oldest(1);
        if self.rows[last].len == 0 {
            self.rows.pop();
        }
    }

    fn cut_found(&self, n0: f64, n1: f64, delta_mean: f64) -> bool {
        let mwl = self.min_window_length;
        let delta_prime = (2.0 * self.width.ln() / self.cfg.delta).ln();
        let m_recip = 1.0 / (n0 - mwl + 1.0) + 1.0 / (n1 - mwl + 1.0);
        let epsilon = (2.0 * m_recip * (self.variance / self.width) * delta_prime).sqrt()
            + 2.0 / 3.0 * delta_prime * m_recip;
        delta_mean.abs() > epsilon
    }

    fn detect(&mut self) -> bool {
        let mut change = false;
        self.tick += 1;
        if !self.tick.is_multiple_of(u64::from(self.cfg.clock)) || self.width <= self.grace_period {
            return false;
        }
        let mwl = self.min_window_length;
        let mut reduce = true;
        while reduce {
            reduce = false;
            let (mut n0, mut n1) = (0.0f64, self.width);
            let (mut u0, mut u1) = (0.0f64, self.total);
            'rows: for i in (0..self.rows.len()).rev() {
                let size = (1u64 << i) as f64;
                let len = self.rows[i].len;
                for k in 0..len {
                    n0 += size;
                    n1 -= size;
                    let t = self.rows[i].totals[k];
                    u0 += t;
                    u1 -= t;
                    if i == 0 && k == len - 1 {
                        break 'rows;
                    }
                    let delta_mean = (u0 / n0) - (u1 / n1);
                    if n1 >= mwl && n0 >= mwl && self.cut_found(n0, n1, delta_mean) {
                        reduce = true;
                        change = true;
                        if self.width > 0.0 {
                            self.delete_oldest();
                            break 'rows;
                        }
                    }
                }
            }
        }
        change
    }
}

impl Detector for Adwin {
    fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        self.insert(x);
        self.drift = self.detect();
        Signal {
            drift: self.drift,
            warning: false,
        }
    }

    fn statistic(&self) -> f64 {
        self.estimation()
    }

    fn spec(&self) -> &'static DetectorSpec {
        &SPEC
    }

    fn reset(&mut self) {
        self.total = 0.0;
        self.variance = 0.0;
        self.width = 0.0;
        self.tick = 0;
        self.rows.clear();
        self.rows.push(Row::new(self.cfg.max_buckets));
        self.drift = false;
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("delta", fmt_f64(self.cfg.delta)),
            ("clock", self.cfg.clock.to_string()),
            ("max_buckets", self.cfg.max_buckets.to_string()),
            ("min_window_length", self.cfg.min_window_length.to_string()),
            ("grace_period", self.cfg.grace_period.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_statistics_are_exact_on_a_short_stream() {
        let mut d = Adwin::new(AdwinConfig::default()).unwrap();
        for v in [1.0, 2.0, 3.0, 4.0, 5.0] {
            d.update(v);
        }
        assert_eq!(d.total(), 15.0);
        assert_eq!(d.width(), 5.0);
        assert!((d.variance() - 10.0).abs() < 1e-12);
        assert_eq!(d.statistic(), 3.0);
    }

    #[test]
    fn constant_stream_never_drifts_and_window_grows() {
        let mut d = Adwin::new(AdwinConfig::default()).unwrap();
        for i in 1..=5000 {
            assert!(!d.update(1.0).drift);
            assert_eq!(d.width(), f64::from(i));
        }
    }

    #[test]
    fn a_cut_shrinks_the_window() {
        let mut d = Adwin::new(AdwinConfig {
            clock: 1,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..500 {
            d.update(0.0);
        }
        let mut hit = None;
        for i in 0..200 {
            if d.update(10.0).drift {
                hit = Some(i);
                break;
            }
        }
        assert!(hit.is_some());
        assert!(d.width() < 500.0, "window kept {}", d.width());
    }
}
