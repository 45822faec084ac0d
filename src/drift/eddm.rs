//! EDDM, as river 0.26.1 `drift.binary.EDDM`.

use super::num::{py_pow, RiverVar};
use super::params::{fmt_f64, Check, DetectorSpec, ParamSpec, Reader, Tuning};
use super::{Detector, Signal};
use crate::Result;

pub(crate) const SPEC: DetectorSpec = DetectorSpec {
    name: "eddm",
    summary: "Early Drift Detection Method: distance between errors, mean + 2 std against its maximum (river EDDM)",
    binary: true,
    warning: true,
    statistic: "m' + 2 s': mean plus twice the std of the distances between errors (level = this / its maximum)",
    reference: "river 0.26.1 drift.binary.EDDM",
    build: |r| Ok(Box::new(Eddm::new(EddmConfig::from_params(r)?)?)),
    tune: Tuning {
        param: "beta",
        larger_is_quieter: false,
        lo: 1e-9,
        hi: 0.95,
    },
    params: &[
        ParamSpec {
            name: "warm_start",
            default: "30",
            help: "updates, and errors, before warnings and changes can be signalled (integer >= 0)",
        },
        ParamSpec {
            name: "alpha",
            default: "0.95",
            help: "warning when the level falls below alpha, in (0, 1], >= beta",
        },
        ParamSpec {
            name: "beta",
            default: "0.9",
            help: "drift when the level falls below beta, in (0, 1]",
        },
    ],
};

/// Parameters of [`Eddm`] (river's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EddmConfig {
    /// Updates (and errors) before anything can be signalled. Default 30.
    pub warm_start: u64,
    /// Warning threshold on the level, in (0, 1], `>= beta`. Default 0.95.
    pub alpha: f64,
    /// Drift threshold on the level, in (0, 1]. Default 0.9.
    pub beta: f64,
}

impl Default for EddmConfig {
    fn default() -> Self {
        Self {
            warm_start: 30,
            alpha: 0.95,
            beta: 0.9,
        }
    }
}

impl EddmConfig {
    pub(crate) fn from_params(r: &Reader) -> Result<Self> {
        Ok(Self {
            warm_start: r.u64("warm_start")?,
            alpha: r.f64("alpha")?,
            beta: r.f64("beta")?,
        })
    }
}

/// EDDM (Baena-García et al. 2006) exactly as river 0.26.1 computes it. Input:
/// an error is exactly 1; anything else is a success. At each error, the
/// distance (in updates) since the previous error updates a running mean m'
/// and sample std s'; once more than `warm_start` updates were seen,
/// `m' + 2 s'` either raises its running maximum or, once more than
/// `warm_start` errors were seen, gives `level = (m' + 2 s') / max`: drift if
/// `level < beta`, else warning if `level < alpha`, else no warning.
///
/// As in river, the warning flag only changes at errors that compute a level,
/// and a drift leaves it as it was (so a drift can come with a warning).
///
/// [`Detector::statistic`] is `m' + 2 s'` (0 before the first error).
#[derive(Clone, Debug)]
pub struct Eddm {
    cfg: EddmConfig,
    distances: RiverVar,
    n: u64,
    last_error: u64,
    n_errors: u64,
    p2s_max: f64,
    warning: bool,
    drift: bool,
}

impl Eddm {
    /// Validates `cfg` and makes a fresh detector.
    pub fn new(cfg: EddmConfig) -> Result<Self> {
        let c = Check(SPEC.name);
        c.open_closed("alpha", cfg.alpha, 0.0, 1.0)?;
        c.open_closed("beta", cfg.beta, 0.0, 1.0)?;
        c.that(
            "beta",
            cfg.alpha >= cfg.beta,
            format!("beta ({}) exceeds alpha ({})", cfg.beta, cfg.alpha),
        )?;
        let mut d = Self {
            cfg,
            distances: RiverVar::default(),
            n: 0,
            last_error: 0,
            n_errors: 0,
            p2s_max: -1.0,
            warning: false,
            drift: false,
        };
        d.reset();
        Ok(d)
    }

    /// The parameters in use.
    pub fn config(&self) -> &EddmConfig {
        &self.cfg
    }

    fn p2s(&self) -> f64 {
        self.distances.mean.mean + 2.0 * py_pow(self.distances.get(), 0.5)
    }
}

impl Detector for Eddm {
    fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        self.n += 1;
        if x == 1.0 {
            self.n_errors += 1;
            self.distances.update((self.n - self.last_error) as f64);
            if self.n > self.cfg.warm_start {
                let p2s = self.p2s();
                if p2s > self.p2s_max {
                    self.p2s_max = p2s;
                } else if self.n_errors > self.cfg.warm_start {
                    let level = p2s / self.p2s_max;
                    if level < self.cfg.beta {
                        self.drift = true;
                    } else {
                        self.warning = level < self.cfg.alpha;
                    }
                }
            }
            self.last_error = self.n;
        }
        Signal {
            drift: self.drift,
            warning: self.warning,
        }
    }

    fn statistic(&self) -> f64 {
        self.p2s()
    }

    fn spec(&self) -> &'static DetectorSpec {
        &SPEC
    }

    fn reset(&mut self) {
        self.distances = RiverVar::default();
        self.n = 0;
        self.last_error = 0;
        self.n_errors = 0;
        self.p2s_max = -1.0;
        self.warning = false;
        self.drift = false;
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("warm_start", self.cfg.warm_start.to_string()),
            ("alpha", fmt_f64(self.cfg.alpha)),
            ("beta", fmt_f64(self.cfg.beta)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_coming_closer_trigger_drift() {
        let mut d = Eddm::new(EddmConfig::default()).unwrap();
        // One error every 20 updates (all distances 20), then one every 2.
        let xs = (0..3000).map(|i| {
            if i < 2000 {
                f64::from(i % 20 == 19)
            } else {
                f64::from(i % 2 == 0)
            }
        });
        let hits: Vec<usize> = xs
            .enumerate()
            .filter_map(|(i, x)| d.update(x).drift.then_some(i))
            .collect();
        assert!(!hits.is_empty() && hits[0] >= 2000, "{hits:?}");
    }
}
