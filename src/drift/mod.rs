//! Streaming drift detectors: feed one number per [`Detector::update`] call and
//! get back whether the stream's distribution has just changed.
//!
//! Eight detectors reproduce the Python package river 0.26.1 index for index
//! (same arithmetic in the same order, so the same inputs give drift and
//! warning signals at the same indices): [`PageHinkley`], [`Adwin`], [`Kswin`],
//! [`Ddm`], [`Eddm`], [`HddmA`], [`HddmW`] and [`Fhddm`]. Three that river lacks
//! follow their papers as frouros 0.9.0 implements them: [`Cusum`], [`Stepd`]
//! (one documented deviation from frouros) and [`Ewma`] (ECDD).
//! `tests/drift_parity.rs` replays the references' outputs written by
//! `fixtures/drift/gen.py`.
//!
//! Conventions shared by every detector:
//!
//! - **Binary detectors** ([`Detector::binary`]) expect 0 or 1, with 1 meaning
//!   an error (a wrong prediction), as in river. Other values are not rejected
//!   here (river does not reject them either); the caller should check.
//! - **Reset after a detection.** A detector that reported drift starts from
//!   scratch at the beginning of its next update, as river's do, so the update
//!   after a detection is the first one of a fresh detector.
//! - **Statistic.** [`Detector::statistic`] is the detector's current test
//!   quantity after the last update (what is compared with its threshold);
//!   each detector's documentation and [`DetectorSpec::statistic`] say which.
//!
//! The library knows nothing of the command line. A CLI constructs detectors by
//! hyphenated name with [`build`], passing overrides as strings in a
//! [`DetectorParams`]; [`DETECTORS`] lists every detector with its parameters,
//! their defaults and one-line help, for rendering `--help`.
//!
//! ```
//! use mnemo::drift::{build, DetectorParams};
//!
//! let mut params = DetectorParams::new();
//! params.set("threshold", "20");
//! let mut ph = build("page-hinkley", &params).unwrap();
//! let stream = (0..200).map(|i| if i < 100 { 0.0 } else { 5.0 });
//! let hits: Vec<usize> = stream
//!     .enumerate()
//!     .filter(|&(_, x)| ph.update(x).drift)
//!     .map(|(i, _)| i)
//!     .collect();
//! assert_eq!(hits, vec![104]);
//! ```

mod adwin;
mod cusum;
mod ddm;
mod eddm;
mod ewma;
mod fhddm;
mod hddm_a;
mod hddm_w;
mod kswin;
mod num;
mod page_hinkley;
mod params;
mod pyrandom;
pub mod record;
mod stepd;

pub use adwin::{Adwin, AdwinConfig};
pub use cusum::{Cusum, CusumConfig};
pub use ddm::{Ddm, DdmConfig};
pub use eddm::{Eddm, EddmConfig};
pub use ewma::{Ewma, EwmaConfig};
pub use fhddm::{Fhddm, FhddmConfig};
pub use hddm_a::{HddmA, HddmAConfig};
pub use hddm_w::{HddmW, HddmWConfig};
pub use kswin::{Kswin, KswinConfig};
pub use page_hinkley::{PageHinkley, PageHinkleyConfig, PhMode};
pub use params::{DetectorParams, DetectorSpec, ParamSpec, Tuning};
pub use stepd::{Stepd, StepdConfig};

use crate::{MnemoError, Result};

/// What one update reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Signal {
    /// The detector found a change at this update (it resets at the next one).
    pub drift: bool,
    /// The detector is in its warning zone. Always false for detectors without
    /// one ([`Detector::has_warning`]). As in river, a few detectors (EDDM,
    /// the two-sided HDDMs) can report a warning together with a drift.
    pub warning: bool,
}

/// A streaming change detector.
pub trait Detector: Send + std::fmt::Debug {
    /// Feeds one value and reports what the detector concluded after it.
    fn update(&mut self, x: f64) -> Signal;
    /// The detector's current test statistic after the last update (0 before
    /// the first update); see each detector's documentation for its meaning.
    fn statistic(&self) -> f64;
    /// The detector's entry in [`DETECTORS`].
    fn spec(&self) -> &'static DetectorSpec;
    /// The hyphenated name that [`build`] knows the detector by.
    fn name(&self) -> &'static str {
        self.spec().name
    }
    /// Whether the detector expects 0/1 input (1 = error).
    fn binary(&self) -> bool {
        self.spec().binary
    }
    /// Whether the detector can report a warning zone.
    fn has_warning(&self) -> bool {
        self.spec().warning
    }
    /// Forgets everything seen so far (the state of a new detector).
    fn reset(&mut self);
    /// The effective parameters, as `(name, value)` in [`DetectorSpec`] order;
    /// each value parses back to the same parameter through [`build`].
    fn params(&self) -> Vec<(&'static str, String)>;
}

/// Every detector [`build`] knows, in a stable order, with its parameters: the registry (a
/// new detector is its own file plus one line here).
pub const DETECTORS: &[DetectorSpec] = &[
    page_hinkley::SPEC,
    adwin::SPEC,
    kswin::SPEC,
    ddm::SPEC,
    eddm::SPEC,
    hddm_a::SPEC,
    hddm_w::SPEC,
    fhddm::SPEC,
    cusum::SPEC,
    stepd::SPEC,
    ewma::SPEC,
];

/// The specification of the detector called `name` (hyphenated, e.g. `hddm-a`).
pub fn spec(name: &str) -> Option<&'static DetectorSpec> {
    DETECTORS.iter().find(|s| s.name == name)
}

/// Builds the detector called `name` (one of [`DETECTORS`]' names, e.g.
/// `page-hinkley`, `adwin`, `kswin`, `ddm`, `eddm`, `hddm-a`, `hddm-w`,
/// `fhddm`, `cusum`, `stepd`, `ewma`) with the defaults overridden by `params`.
///
/// Fails with [`MnemoError::UnknownDetector`] for an unknown name and with
/// [`MnemoError::InvalidParameter`] for a parameter the detector does not have,
/// a value that does not parse, or a value outside the parameter's domain.
pub fn build(name: &str, params: &DetectorParams) -> Result<Box<dyn Detector>> {
    let Some(spec) = spec(name) else {
        return Err(MnemoError::UnknownDetector {
            name: name.to_string(),
            known: DETECTORS
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    (spec.build)(&params.reader(spec)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(d: &mut dyn Detector, xs: &[f64]) -> Vec<usize> {
        xs.iter()
            .enumerate()
            .filter(|&(_, &x)| d.update(x).drift)
            .map(|(i, _)| i)
            .collect()
    }

    /// Each detector built from its config struct's `Default`.
    fn from_default_config(name: &str) -> Box<dyn Detector> {
        match name {
            "page-hinkley" => Box::new(PageHinkley::new(Default::default()).unwrap()),
            "adwin" => Box::new(Adwin::new(Default::default()).unwrap()),
            "kswin" => Box::new(Kswin::new(Default::default()).unwrap()),
            "ddm" => Box::new(Ddm::new(Default::default()).unwrap()),
            "eddm" => Box::new(Eddm::new(Default::default()).unwrap()),
            "hddm-a" => Box::new(HddmA::new(Default::default()).unwrap()),
            "hddm-w" => Box::new(HddmW::new(Default::default()).unwrap()),
            "fhddm" => Box::new(Fhddm::new(Default::default()).unwrap()),
            "cusum" => Box::new(Cusum::new(Default::default()).unwrap()),
            "stepd" => Box::new(Stepd::new(Default::default()).unwrap()),
            "ewma" => Box::new(Ewma::new(Default::default()).unwrap()),
            other => panic!("no config for {other}"),
        }
    }

    #[test]
    fn spec_table_agrees_with_the_config_defaults() {
        for spec in DETECTORS {
            let d = build(spec.name, &DetectorParams::new()).unwrap();
            assert_eq!(d.name(), spec.name);
            assert_eq!(d.binary(), spec.binary, "{}", spec.name);
            assert_eq!(d.has_warning(), spec.warning, "{}", spec.name);
            let from_struct = from_default_config(spec.name);
            assert_eq!(d.params(), from_struct.params(), "{}", spec.name);
            let names: Vec<&str> = d.params().iter().map(|(n, _)| *n).collect();
            let spec_names: Vec<&str> = spec.params.iter().map(|p| p.name).collect();
            assert_eq!(names, spec_names, "{}", spec.name);
        }
    }

    #[test]
    fn reported_params_build_the_same_detector() {
        for spec in DETECTORS {
            let mut p = DetectorParams::new();
            if spec.name == "kswin" {
                p.set("seed", "1");
            }
            let d = build(spec.name, &p).unwrap();
            let mut all = DetectorParams::new();
            for (n, v) in d.params() {
                all.set(n, v);
            }
            let again = build(spec.name, &all).unwrap();
            assert_eq!(again.params(), d.params(), "{}", spec.name);
        }
    }

    #[test]
    fn unknown_names_and_parameters_are_errors() {
        let e = build("nope", &DetectorParams::new()).unwrap_err();
        assert!(matches!(e, MnemoError::UnknownDetector { .. }), "{e}");
        assert!(e.to_string().contains("page-hinkley"), "{e}");

        let mut p = DetectorParams::new();
        p.set("lambda_val", "0.1");
        let e = build("hddm-a", &p).unwrap_err();
        assert!(
            matches!(&e, MnemoError::InvalidParameter { detector, parameter, .. }
                if detector == "hddm-a" && parameter == "lambda_val"),
            "{e}"
        );
        assert!(e.to_string().contains("drift_confidence"), "{e}");

        let mut p = DetectorParams::new();
        p.set("delta", "abc");
        let e = build("adwin", &p).unwrap_err();
        assert!(e.to_string().contains("not a number"), "{e}");
    }

    #[test]
    fn hyphens_in_parameter_names_are_accepted() {
        let mut p = DetectorParams::new();
        p.set("min-instances", "5");
        let d = build("page-hinkley", &p).unwrap();
        assert!(d.params().contains(&("min_instances", "5".to_string())));
    }

    #[test]
    fn invalid_values_are_rejected_with_the_parameter_named() {
        let cases: &[(&str, &str, &str)] = &[
            ("page-hinkley", "alpha", "0"),
            ("page-hinkley", "alpha", "1.5"),
            ("page-hinkley", "mode", "sideways"),
            ("page-hinkley", "threshold", "-1"),
            ("page-hinkley", "min_instances", "-3"),
            ("adwin", "delta", "0"),
            ("adwin", "delta", "1"),
            ("adwin", "clock", "0"),
            ("adwin", "max_buckets", "1"),
            ("adwin", "min_window_length", "0"),
            ("kswin", "alpha", "1.1"),
            ("kswin", "stat_size", "0"),
            ("kswin", "stat_size", "60"),
            ("kswin", "seed", "-1"),
            ("ddm", "drift_threshold", "nan"),
            ("eddm", "beta", "0.99"),
            ("hddm-a", "drift_confidence", "0"),
            ("hddm-a", "two_sided_test", "maybe"),
            ("hddm-w", "lambda_val", "0"),
            ("hddm-w", "warning_confidence", "1"),
            ("fhddm", "short_window_size", "101"),
            ("fhddm", "sliding_window_size", "0"),
            ("fhddm", "confidence_level", "2"),
            ("cusum", "lambda", "-1"),
            ("cusum", "min_num_instances", "0"),
            ("stepd", "alpha_w", "0.001"),
            ("stepd", "window_size", "0"),
            ("ewma", "average_run_length", "200"),
            ("ewma", "warning_level", "1"),
            ("ewma", "lambda", "0"),
        ];
        for &(det, name, value) in cases {
            let mut p = DetectorParams::new();
            p.set(name, value);
            match build(det, &p) {
                Err(MnemoError::InvalidParameter {
                    detector,
                    parameter,
                    reason,
                }) => {
                    assert_eq!(detector, det);
                    assert_eq!(parameter, name, "{det} {name}={value}: {reason}");
                }
                other => panic!("{det} {name}={value}: expected InvalidParameter, got {other:?}"),
            }
        }
    }

    #[test]
    fn every_detector_resets_at_the_update_after_a_detection() {
        // A stream with a huge jump, then the reset must make the next update
        // behave as the first update of a fresh detector.
        for spec in DETECTORS {
            let mut p = DetectorParams::new();
            if spec.name == "kswin" {
                p.set("seed", "3");
            }
            let mut d = build(spec.name, &p).unwrap();
            let xs: Vec<f64> = if spec.binary {
                (0..3000)
                    .map(|i| f64::from((1000..2000).contains(&i) || i % 10 == 0))
                    .collect()
            } else {
                (0..3000)
                    .map(|i| {
                        if i < 1000 {
                            (i % 3) as f64
                        } else {
                            50.0 + (i % 3) as f64
                        }
                    })
                    .collect()
            };
            let hits = run(d.as_mut(), &xs);
            assert!(!hits.is_empty(), "{} found nothing", spec.name);
            // Replay: after the first detection, a fresh detector fed the rest
            // of the stream must see exactly the remaining detections.
            let first = hits[0];
            let mut fresh = build(spec.name, &p).unwrap();
            let rest = run(fresh.as_mut(), &xs[first + 1..]);
            let expect: Vec<usize> = hits[1..].iter().map(|i| i - first - 1).collect();
            assert_eq!(rest, expect, "{}", spec.name);
            // And reset() gives the same as a fresh detector.
            d.reset();
            assert_eq!(run(d.as_mut(), &xs), hits, "{} after reset()", spec.name);
        }
    }
}
