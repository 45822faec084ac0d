//! KSWIN, as river 0.26.1 `drift.KSWIN`, including its sampling: river draws
//! the reference sample with Python's `random.Random(seed).sample`, which
//! [`super::pyrandom`] reproduces, and tests it with
//! `scipy.stats.ks_2samp(method="auto")`, whose exact two-sided p-value for
//! two samples of equal size is reproduced here.

use std::collections::VecDeque;

use super::params::{fmt_f64, Check, DetectorSpec, ParamSpec, Reader, Tuning};
use super::pyrandom::PyRandom;
use super::{Detector, Signal};
use crate::Result;

pub(crate) const SPEC: DetectorSpec = DetectorSpec {
    name: "kswin",
    summary: "Kolmogorov-Smirnov WINdowing: KS test of the newest values against a random sample of older ones (river KSWIN)",
    binary: false,
    warning: false,
    statistic: "the Kolmogorov-Smirnov statistic D of the last test (0 until the window is full)",
    reference: "river 0.26.1 drift.KSWIN (with scipy 1.17 ks_2samp)",
    build: |r| Ok(Box::new(Kswin::new(KswinConfig::from_params(r)?)?)),
    tune: Tuning {
        param: "alpha",
        larger_is_quieter: false,
        lo: 1e-15,
        hi: 0.5,
    },
    params: &[
        ParamSpec {
            name: "alpha",
            default: "0.005",
            help: "significance level of the KS test, in [0, 1]",
        },
        ParamSpec {
            name: "window_size",
            default: "100",
            help: "length of the sliding window (integer, >= 2 stat_size)",
        },
        ParamSpec {
            name: "stat_size",
            default: "30",
            help: "length of the newest part and of the random sample, tested against each other (1..=10000)",
        },
        ParamSpec {
            name: "seed",
            default: "none",
            help: "seed of Python's random.Random for the sample (integer >= 0); none = fresh entropy at every reset",
        },
    ],
};

/// Parameters of [`Kswin`] (river's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KswinConfig {
    /// Significance level of the KS test, in [0, 1]. Default 0.005.
    pub alpha: f64,
    /// Length of the sliding window. Default 100.
    pub window_size: usize,
    /// Length of the newest part of the window and of the random sample drawn
    /// from the rest; `1 <= stat_size`, `2 stat_size <= window_size` (river
    /// accepts a larger one, then fails at the first test) and
    /// `stat_size <= 10000` (beyond which scipy switches to an asymptotic
    /// p-value). Default 30.
    pub stat_size: usize,
    /// Seed of the sampler (Python's `random.Random(seed)`; the detector is
    /// re-seeded with it at every reset). `None` (the default, as in river)
    /// draws a fresh seed from the OS at every reset: not reproducible.
    pub seed: Option<u64>,
}

impl Default for KswinConfig {
    fn default() -> Self {
        Self {
            alpha: 0.005,
            window_size: 100,
            stat_size: 30,
            seed: None,
        }
    }
}

impl KswinConfig {
    pub(crate) fn from_params(r: &Reader) -> Result<Self> {
        Ok(Self {
            alpha: r.f64("alpha")?,
            window_size: r.usize("window_size")?,
            stat_size: r.usize("stat_size")?,
            seed: r.opt_u64("seed")?,
        })
    }
}

/// KSWIN (Raab, Heusinger & Schleif 2020) exactly as river 0.26.1 runs it: a
/// sliding window of `window_size` values; once it is full, every update
/// draws `stat_size` of the oldest `window_size - stat_size` values without
/// replacement (Python's `random.sample`) and runs a two-sample KS test
/// against the newest `stat_size` values. Drift when `p <= alpha` and
/// `D > 0.1`.
///
/// The p-value is scipy's exact two-sided one for equal sample sizes
/// (`_compute_prob_outside_square`). Where that formula rounds outside [0, 1]
/// scipy falls back to its asymptotic distribution; this only happens for
/// `D = 1/stat_size` (p = 1 up to rounding) and here the value is clipped to
/// [0, 1] instead. A NaN in either sample gives D = p = NaN (no drift), as
/// scipy's NaN propagation does.
///
/// [`Detector::statistic`] is D of the last test; [`Kswin::p_value`] its
/// p-value.
#[derive(Clone, Debug)]
pub struct Kswin {
    cfg: KswinConfig,
    window: VecDeque<f64>,
    rng: PyRandom,
    stat: f64,
    p_value: f64,
    drift: bool,
    sample: Vec<f64>,
    recent: Vec<f64>,
}

impl Kswin {
    /// Validates `cfg` and makes a fresh detector.
    pub fn new(cfg: KswinConfig) -> Result<Self> {
        let c = Check(SPEC.name);
        c.closed("alpha", cfg.alpha, 0.0, 1.0)?;
        c.that(
            "stat_size",
            (1..=10_000).contains(&cfg.stat_size),
            format!("{} is not in 1..=10000", cfg.stat_size),
        )?;
        c.that(
            "stat_size",
            cfg.stat_size
                .checked_mul(2)
                .is_some_and(|s| s <= cfg.window_size),
            format!(
                "2 x stat_size ({}) exceeds window_size ({})",
                cfg.stat_size, cfg.window_size
            ),
        )?;
        let mut d = Self {
            cfg,
            window: VecDeque::with_capacity(cfg.window_size),
            rng: PyRandom::new(0),
            stat: 0.0,
            p_value: 0.0,
            drift: false,
            sample: Vec::with_capacity(cfg.stat_size),
            recent: Vec::with_capacity(cfg.stat_size),
        };
        d.reset();
        Ok(d)
    }

    /// The parameters in use.
    pub fn config(&self) -> &KswinConfig {
        &self.cfg
    }

    /// The p-value of the last test (0 until the window is full, as river's).
    pub fn p_value(&self) -> f64 {
        self.p_value
    }
}

fn entropy_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

impl Detector for Kswin {
    fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        let (w, s) = (self.cfg.window_size, self.cfg.stat_size);
        if self.window.len() == w {
            self.window.pop_front();
        }
        self.window.push_back(x);
        self.drift = false;
        if self.window.len() >= w {
            let idx = self.rng.sample(w - s, s);
            self.sample.clear();
            self.sample.extend(idx.iter().map(|&r| self.window[r]));
            self.recent.clear();
            self.recent.extend(self.window.range(w - s..w));
            let (d, p) = ks_2samp_equal(&mut self.sample, &mut self.recent);
            self.stat = d;
            self.p_value = p;
            self.drift = p <= self.cfg.alpha && d > 0.1;
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
        self.rng = PyRandom::new(self.cfg.seed.unwrap_or_else(entropy_seed));
        self.stat = 0.0;
        self.p_value = 0.0;
        self.drift = false;
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("alpha", fmt_f64(self.cfg.alpha)),
            ("window_size", self.cfg.window_size.to_string()),
            ("stat_size", self.cfg.stat_size.to_string()),
            (
                "seed",
                self.cfg
                    .seed
                    .map_or_else(|| "none".to_string(), |s| s.to_string()),
            ),
        ]
    }
}

/// `scipy.stats.ks_2samp(a, b)` (two-sided, method "auto") for `a.len() ==
/// b.len() <= 10000`: returns `(D, p)`. Sorts both slices in place.
fn ks_2samp_equal(a: &mut [f64], b: &mut [f64]) -> (f64, f64) {
    let n = a.len();
    debug_assert_eq!(n, b.len());
    if a.iter().chain(b.iter()).any(|v| v.is_nan()) {
        return (f64::NAN, f64::NAN);
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    // D = max over all points v of |#{a <= v} - #{b <= v}| / n; a merge walk
    // visits each distinct value once, after all copies of it.
    let (mut i, mut j, mut h) = (0usize, 0usize, 0usize);
    while i < n || j < n {
        let v = match (a.get(i), b.get(j)) {
            (Some(&x), Some(&y)) => {
                if x <= y {
                    x
                } else {
                    y
                }
            }
            (Some(&x), None) => x,
            (None, Some(&y)) => y,
            (None, None) => unreachable!(),
        };
        while i < n && a[i] <= v {
            i += 1;
        }
        while j < n && b[j] <= v {
            j += 1;
        }
        h = h.max(i.abs_diff(j));
    }
    let d = h as f64 / n as f64;
    if h == 0 {
        return (d, 1.0);
    }
    (d, prob_outside_square(n, h).clamp(0.0, 1.0))
}

/// scipy's `_compute_prob_outside_square(n, h)`: P(D_{n,n} >= h/n), by the
/// alternating series evaluated Horner-style, in scipy's operation order.
fn prob_outside_square(n: usize, h: usize) -> f64 {
    let mut p = 0.0f64;
    let mut k = (n / h) as i64;
    let (n, h) = (n as i64, h as i64);
    while k >= 0 {
        let mut p1 = 1.0f64;
        for j in 0..h {
            p1 = (n - k * h - j) as f64 * p1 / (n + k * h + j + 1) as f64;
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    2.0 * p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn exact_p_values_match_scipy() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/drift/expected.json");
        let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let rows = fx["ks_exact"].as_array().unwrap();
        assert!(rows.len() > 100);
        for row in rows {
            let n = row[0].as_u64().unwrap() as usize;
            let h = row[1].as_u64().unwrap() as usize;
            let want: f64 = row[2].as_str().unwrap().parse().unwrap();
            assert_eq!(prob_outside_square(n, h), want, "n={n} h={h}");
        }
    }

    #[test]
    fn ks_statistic_counts_ties_like_searchsorted_right() {
        let mut a = [1.0, 2.0, 2.0, 3.0];
        let mut b = [2.0, 2.0, 2.0, 2.0];
        // #a<=1 = 1 vs 0; #a<=2 = 3 vs 4; #a<=3 = 4 vs 4: D = 1/4.
        assert_eq!(ks_2samp_equal(&mut a, &mut b).0, 0.25);
        let mut a = [0.0, 1.0];
        let mut b = [5.0, 6.0];
        let (d, p) = ks_2samp_equal(&mut a, &mut b);
        assert_eq!(d, 1.0);
        assert!((p - 1.0 / 3.0).abs() < 1e-15, "{p}");
        let mut a = [f64::NAN, 1.0];
        let mut b = [0.0, 1.0];
        assert!(ks_2samp_equal(&mut a, &mut b).1.is_nan());
    }

    #[test]
    fn stat_size_must_fit_twice_in_the_window() {
        let cfg = KswinConfig {
            window_size: 59,
            stat_size: 30,
            seed: Some(1),
            ..Default::default()
        };
        assert!(Kswin::new(cfg).is_err());
        let cfg = KswinConfig {
            window_size: 60,
            ..cfg
        };
        assert!(Kswin::new(cfg).is_ok());
    }

    #[test]
    fn same_seed_same_detections_and_unseeded_runs() {
        let xs: Vec<f64> = (0..1500)
            .map(|i| {
                if i < 700 {
                    (i % 7) as f64
                } else {
                    10.0 + (i % 5) as f64
                }
            })
            .collect();
        let run = |seed: Option<u64>| {
            let mut d = Kswin::new(KswinConfig {
                seed,
                ..Default::default()
            })
            .unwrap();
            xs.iter()
                .enumerate()
                .filter(|&(_, &x)| d.update(x).drift)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(Some(5)), run(Some(5)));
        assert!(!run(None).is_empty());
    }
}
