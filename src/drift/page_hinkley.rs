//! Page-Hinkley test, as river 0.26.1 `drift.PageHinkley`.

use super::num::RiverMean;
use super::params::{fmt_f64, Check, DetectorSpec, ParamSpec, Reader, Tuning};
use super::{Detector, Signal};
use crate::Result;

pub(crate) const SPEC: DetectorSpec = DetectorSpec {
    name: "page-hinkley",
    summary: "Page-Hinkley test: cumulative deviations from the running mean (river PageHinkley)",
    binary: false,
    warning: false,
    statistic: "the tested Page-Hinkley difference: up = S_inc - min S_inc, down = max S_dec - S_dec, both = the larger",
    reference: "river 0.26.1 drift.PageHinkley",
    build: |r| Ok(Box::new(PageHinkley::new(PageHinkleyConfig::from_params(r)?)?)),
    tune: Tuning {
        param: "threshold",
        larger_is_quieter: true,
        lo: 1e-4,
        hi: 1e7,
    },
    params: &[
        ParamSpec {
            name: "min_instances",
            default: "30",
            help: "updates before a change can be signalled (integer >= 0)",
        },
        ParamSpec {
            name: "delta",
            default: "0.005",
            help: "magnitude of changes that are tolerated (>= 0)",
        },
        ParamSpec {
            name: "threshold",
            default: "50",
            help: "change detection threshold, lambda (>= 0)",
        },
        ParamSpec {
            name: "alpha",
            default: "0.9999",
            help: "forgetting factor of the cumulative sums, in (0, 1]",
        },
        ParamSpec {
            name: "mode",
            default: "both",
            help: "which changes of the mean to detect: up, down or both",
        },
    ],
};

/// Which direction of change [`PageHinkley`] looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum PhMode {
    /// Increases of the mean.
    Up,
    /// Decreases of the mean.
    Down,
    /// Both (river's default).
    #[default]
    Both,
}

impl std::str::FromStr for PhMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "up" => Ok(PhMode::Up),
            "down" => Ok(PhMode::Down),
            "both" => Ok(PhMode::Both),
            _ => Err(format!("'{s}' is not one of up, down, both")),
        }
    }
}

impl std::fmt::Display for PhMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PhMode::Up => "up",
            PhMode::Down => "down",
            PhMode::Both => "both",
        })
    }
}

/// Parameters of [`PageHinkley`] (river's names and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PageHinkleyConfig {
    /// Updates before a change can be signalled. Default 30.
    pub min_instances: u64,
    /// Magnitude of changes that are tolerated, `>= 0`. Default 0.005.
    pub delta: f64,
    /// Change detection threshold (lambda), `>= 0`. Default 50.
    pub threshold: f64,
    /// Forgetting factor of the cumulative sums, in (0, 1]. Default 1 - 1e-4.
    pub alpha: f64,
    /// Direction of change to detect. Default [`PhMode::Both`].
    pub mode: PhMode,
}

impl Default for PageHinkleyConfig {
    fn default() -> Self {
        Self {
            min_instances: 30,
            delta: 0.005,
            threshold: 50.0,
            alpha: 1.0 - 0.0001,
            mode: PhMode::Both,
        }
    }
}

impl PageHinkleyConfig {
    pub(crate) fn from_params(r: &Reader) -> Result<Self> {
        Ok(Self {
            min_instances: r.u64("min_instances")?,
            delta: r.f64("delta")?,
            threshold: r.f64("threshold")?,
            alpha: r.f64("alpha")?,
            mode: r
                .str("mode")
                .parse()
                .map_err(|e: String| r.err("mode", e))?,
        })
    }
}

/// The Page-Hinkley test (Page 1954), exactly as river 0.26.1 computes it:
///
/// ```text
/// mean  += (1/n) (x - mean)                 (river's stats.Mean; x included)
/// S_inc  = alpha S_inc + (x - mean) - delta     m_inc = min(m_inc, S_inc)
/// S_dec  = alpha S_dec + (x - mean) + delta     M_dec = max(M_dec, S_dec)   (M_dec starts at -1)
/// once n >= min_instances: drift if S_inc - m_inc > threshold (up)
///                          or M_dec - S_dec > threshold (down)
/// ```
///
/// [`Detector::statistic`] is the tested difference for the configured mode
/// (the larger of the two for `both`).
#[derive(Clone, Debug)]
pub struct PageHinkley {
    cfg: PageHinkleyConfig,
    mean: RiverMean,
    sum_inc: f64,
    sum_dec: f64,
    min_inc: f64,
    max_dec: f64,
    stat: f64,
    drift: bool,
}

impl PageHinkley {
    /// Validates `cfg` and makes a fresh detector.
    pub fn new(cfg: PageHinkleyConfig) -> Result<Self> {
        let c = Check(SPEC.name);
        c.non_negative("delta", cfg.delta)?;
        c.non_negative("threshold", cfg.threshold)?;
        c.open_closed("alpha", cfg.alpha, 0.0, 1.0)?;
        let mut d = Self {
            cfg,
            mean: RiverMean::default(),
            sum_inc: 0.0,
            sum_dec: 0.0,
            min_inc: f64::INFINITY,
            max_dec: -1.0,
            stat: 0.0,
            drift: false,
        };
        d.reset();
        Ok(d)
    }

    /// The parameters in use.
    pub fn config(&self) -> &PageHinkleyConfig {
        &self.cfg
    }
}

impl Detector for PageHinkley {
    fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        self.mean.update(x);
        let dev = x - self.mean.mean;
        self.sum_inc = self.cfg.alpha * self.sum_inc + dev - self.cfg.delta;
        self.sum_dec = self.cfg.alpha * self.sum_dec + dev + self.cfg.delta;
        if self.sum_inc < self.min_inc {
            self.min_inc = self.sum_inc;
        }
        if self.sum_dec > self.max_dec {
            self.max_dec = self.sum_dec;
        }
        let up = self.sum_inc - self.min_inc;
        let down = self.max_dec - self.sum_dec;
        let th = self.cfg.threshold;
        let (stat, fired) = match self.cfg.mode {
            PhMode::Up => (up, up > th),
            PhMode::Down => (down, down > th),
            PhMode::Both => (if down > up { down } else { up }, up > th || down > th),
        };
        self.stat = stat;
        if self.mean.n >= self.cfg.min_instances as f64 {
            self.drift = fired;
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
        self.mean = RiverMean::default();
        self.sum_inc = 0.0;
        self.sum_dec = 0.0;
        self.min_inc = f64::INFINITY;
        self.max_dec = -1.0;
        self.stat = 0.0;
        self.drift = false;
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("min_instances", self.cfg.min_instances.to_string()),
            ("delta", fmt_f64(self.cfg.delta)),
            ("threshold", fmt_f64(self.cfg.threshold)),
            ("alpha", fmt_f64(self.cfg.alpha)),
            ("mode", self.cfg.mode.to_string()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_before_min_instances() {
        let cfg = PageHinkleyConfig {
            min_instances: 100,
            threshold: 1.0,
            ..Default::default()
        };
        let mut d = PageHinkley::new(cfg).unwrap();
        let mut first = None;
        for i in 0..200 {
            let x = if i < 10 { 0.0 } else { 100.0 };
            if d.update(x).drift {
                first = Some(i);
                break;
            }
        }
        assert_eq!(first, Some(99), "first possible index is min_instances - 1");
    }

    #[test]
    fn modes_see_their_direction_only() {
        let up: Vec<f64> = (0..400).map(|i| if i < 200 { 0.0 } else { 3.0 }).collect();
        let down: Vec<f64> = up.iter().map(|x| -x).collect();
        for (mode, xs, expect) in [
            (PhMode::Up, &up, true),
            (PhMode::Up, &down, false),
            (PhMode::Down, &down, true),
            (PhMode::Down, &up, false),
            (PhMode::Both, &up, true),
            (PhMode::Both, &down, true),
        ] {
            let mut d = PageHinkley::new(PageHinkleyConfig {
                mode,
                ..Default::default()
            })
            .unwrap();
            let any = xs.iter().any(|&x| d.update(x).drift);
            assert_eq!(any, expect, "{mode}");
        }
    }
}
