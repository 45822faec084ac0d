//! Detector parameters as strings (what a command line passes) and the table
//! that describes them (what a command line shows in `--help`).

use crate::{MnemoError, Result};

/// One parameter of a detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// The name, river's (snake_case). [`DetectorParams`] also accepts it with
    /// hyphens instead of underscores.
    pub name: &'static str,
    /// The default, written as [`DetectorParams`] would take it (`none` for an
    /// optional parameter that is off by default).
    pub default: &'static str,
    /// One line of help: what it does and its domain.
    pub help: &'static str,
}

/// A detector known to [`super::build`].
#[derive(Clone, Copy, Debug)]
pub struct DetectorSpec {
    /// Hyphenated name, e.g. `hddm-a`.
    pub name: &'static str,
    /// One line: what the detector is.
    pub summary: &'static str,
    /// Whether it expects 0/1 input (1 = error).
    pub binary: bool,
    /// Whether it can signal a warning zone.
    pub warning: bool,
    /// What [`super::Detector::statistic`] returns.
    pub statistic: &'static str,
    /// The implementation it matches index for index.
    pub reference: &'static str,
    /// Builds the detector from its parameters (defaults overridden by the reader's).
    pub(crate) build: fn(&Reader) -> Result<Box<dyn super::Detector>>,
    /// The parameter `--calibrate` tunes, and where it searches.
    pub tune: Tuning,
    /// Its parameters, in the order [`super::Detector::params`] reports them.
    pub params: &'static [ParamSpec],
}

/// The parameter a calibration tunes for a target false-alarm rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tuning {
    /// The parameter's name (as in [`ParamSpec`]).
    pub param: &'static str,
    /// Whether larger values raise fewer alarms.
    pub larger_is_quieter: bool,
    /// The search range.
    pub lo: f64,
    pub hi: f64,
}

impl DetectorSpec {
    /// The parameter called `name` (underscores or hyphens).
    pub fn param(&self, name: &str) -> Option<&'static ParamSpec> {
        let name = normalise(name);
        self.params.iter().find(|p| p.name == name)
    }
}

/// Parameter overrides for [`super::build`], as `name → value` strings.
///
/// Names are river's (snake_case); hyphens are accepted for underscores
/// (`min-instances` is `min_instances`). Values are parsed by the detector:
/// numbers in Rust/Python notation (`0.002`, `1e-4`), booleans as
/// `true`/`false`, optional values as `none`, modes as their names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DetectorParams {
    entries: Vec<(String, String)>,
}

fn normalise(name: &str) -> String {
    name.trim().replace('-', "_")
}

impl DetectorParams {
    /// No overrides: every parameter at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`, replacing an earlier value for the same name.
    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        let name = normalise(name);
        let value = value.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 = value,
            None => self.entries.push((name, value)),
        }
        self
    }

    /// Parses `name=value` assignments (e.g. from repeated `--param` flags);
    /// a later assignment to the same name wins. `detector` names the detector
    /// in errors.
    pub fn from_assignments<I, S>(detector: &str, items: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut p = Self::new();
        for item in items {
            let item = item.as_ref();
            match item.split_once('=') {
                Some((n, v)) if !n.trim().is_empty() => {
                    p.set(n, v.trim());
                }
                _ => {
                    return Err(MnemoError::InvalidParameter {
                        detector: detector.to_string(),
                        parameter: item.to_string(),
                        reason: "expected NAME=VALUE".to_string(),
                    })
                }
            }
        }
        Ok(p)
    }

    /// The value given for `name`, if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = normalise(name);
        self.entries
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The overrides in the order they were first set.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Whether no parameter is overridden.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks every name against `spec` and returns a typed reader.
    pub(crate) fn reader(&self, spec: &'static DetectorSpec) -> Result<Reader<'_>> {
        for (name, _) in &self.entries {
            if spec.param(name).is_none() {
                let valid: Vec<&str> = spec.params.iter().map(|p| p.name).collect();
                return Err(MnemoError::InvalidParameter {
                    detector: spec.name.to_string(),
                    parameter: name.clone(),
                    reason: format!("no such parameter (valid: {})", valid.join(", ")),
                });
            }
        }
        Ok(Reader { spec, params: self })
    }
}

/// The largest window or bucket count a detector accepts (2^24 values).
pub const MAX_SIZE: usize = 1 << 24;

/// Reads typed parameter values: the override if given, else the default in
/// the detector's [`DetectorSpec`].
pub(crate) struct Reader<'a> {
    spec: &'static DetectorSpec,
    params: &'a DetectorParams,
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> &str {
        let spec = self
            .spec
            .param(name)
            .unwrap_or_else(|| panic!("{} has no parameter {name} in its SPEC", self.spec.name));
        self.params.get(name).unwrap_or(spec.default).trim()
    }

    pub(crate) fn err(&self, name: &str, reason: impl Into<String>) -> MnemoError {
        invalid(self.spec.name, name, reason)
    }

    /// A finite number (NaN and ±inf are refused for every parameter).
    pub(crate) fn f64(&self, name: &str) -> Result<f64> {
        let v = self.raw(name);
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(x),
            Ok(_) => Err(self.err(name, format!("'{v}' is not a finite number"))),
            Err(_) => Err(self.err(name, format!("'{v}' is not a number"))),
        }
    }

    pub(crate) fn u64(&self, name: &str) -> Result<u64> {
        let v = self.raw(name);
        v.parse::<u64>()
            .map_err(|_| self.err(name, format!("'{v}' is not a non-negative integer")))
    }

    /// A size (a window, a bucket count): detectors allocate by it, so it is bounded by
    /// [`MAX_SIZE`].
    pub(crate) fn usize(&self, name: &str) -> Result<usize> {
        let v = self.raw(name);
        let n = v
            .parse::<usize>()
            .map_err(|_| self.err(name, format!("'{v}' is not a non-negative integer")))?;
        if n > MAX_SIZE {
            return Err(self.err(name, format!("{n} exceeds the limit of {MAX_SIZE}")));
        }
        Ok(n)
    }

    pub(crate) fn opt_usize(&self, name: &str) -> Result<Option<usize>> {
        match self.raw(name) {
            "none" | "None" | "" => Ok(None),
            _ => self.usize(name).map(Some),
        }
    }

    pub(crate) fn opt_u64(&self, name: &str) -> Result<Option<u64>> {
        match self.raw(name) {
            "none" | "None" | "" => Ok(None),
            _ => self.u64(name).map(Some),
        }
    }

    pub(crate) fn bool(&self, name: &str) -> Result<bool> {
        match self.raw(name) {
            "true" | "True" | "1" => Ok(true),
            "false" | "False" | "0" => Ok(false),
            v => Err(self.err(name, format!("'{v}' is not true or false"))),
        }
    }

    pub(crate) fn str(&self, name: &str) -> &str {
        self.raw(name)
    }
}

pub(crate) fn invalid(detector: &str, parameter: &str, reason: impl Into<String>) -> MnemoError {
    MnemoError::InvalidParameter {
        detector: detector.to_string(),
        parameter: parameter.to_string(),
        reason: reason.into(),
    }
}

/// Checks helpers for constructors: each returns `InvalidParameter` naming
/// `detector` and `name`.
pub(crate) struct Check(pub &'static str);

impl Check {
    /// `lo < v < hi`.
    pub(crate) fn open(&self, name: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
        if v > lo && v < hi {
            Ok(())
        } else {
            Err(invalid(self.0, name, format!("{v} is not in ({lo}, {hi})")))
        }
    }

    /// `lo < v <= hi`.
    pub(crate) fn open_closed(&self, name: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
        if v > lo && v <= hi {
            Ok(())
        } else {
            Err(invalid(self.0, name, format!("{v} is not in ({lo}, {hi}]")))
        }
    }

    /// `lo <= v <= hi`.
    pub(crate) fn closed(&self, name: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
        if v >= lo && v <= hi {
            Ok(())
        } else {
            Err(invalid(self.0, name, format!("{v} is not in [{lo}, {hi}]")))
        }
    }

    /// A finite number `>= 0`.
    pub(crate) fn non_negative(&self, name: &str, v: f64) -> Result<()> {
        if v.is_finite() && v >= 0.0 {
            Ok(())
        } else {
            Err(invalid(
                self.0,
                name,
                format!("{v} is not a finite number >= 0"),
            ))
        }
    }

    /// An integer `>= lo`.
    pub(crate) fn at_least(&self, name: &str, v: u64, lo: u64) -> Result<()> {
        if v >= lo {
            Ok(())
        } else {
            Err(invalid(self.0, name, format!("{v} is less than {lo}")))
        }
    }

    /// Fails with `reason` unless `ok`.
    pub(crate) fn that(&self, name: &str, ok: bool, reason: impl Into<String>) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(invalid(self.0, name, reason))
        }
    }
}

/// Formats a float so that it parses back to the same value (`{}` is the
/// shortest round-trip representation in Rust).
pub(crate) fn fmt_f64(v: f64) -> String {
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_parse_and_later_ones_win() {
        let p =
            DetectorParams::from_assignments("x", ["delta=0.1", "clock = 4", "delta=0.2"]).unwrap();
        assert_eq!(p.get("delta"), Some("0.2"));
        assert_eq!(p.get("clock"), Some("4"));
        assert_eq!(p.iter().count(), 2);
        assert!(DetectorParams::from_assignments("x", ["delta"]).is_err());
        assert!(DetectorParams::from_assignments("x", ["=3"]).is_err());
    }

    #[test]
    fn float_formatting_round_trips() {
        for v in [0.002, 1.0 - 1e-4, 50.0, 1e-6, 0.1 + 0.2] {
            assert_eq!(fmt_f64(v).parse::<f64>().unwrap(), v);
        }
    }
}
