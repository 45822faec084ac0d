//! Small numeric pieces shared by the detectors, each written to round exactly
//! like the Python code it stands for.

use std::hint::black_box;

/// `x ** y` on Python floats: CPython calls the C library's `pow`. Rust's
/// `powf` is the same call, but LLVM rewrites `pow(x, 2.0)` as `x * x` and may
/// rewrite other constant exponents; hiding the exponent keeps the libm call.
#[inline]
pub(crate) fn py_pow(x: f64, y: f64) -> f64 {
    x.powf(black_box(y))
}

/// river's `stats.Mean` (weight 1): `n += 1; mean += (1 / n) * (x - mean)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RiverMean {
    pub n: f64,
    pub mean: f64,
}

impl RiverMean {
    #[inline]
    pub(crate) fn update(&mut self, x: f64) {
        self.n += 1.0;
        self.mean += (1.0 / self.n) * (x - self.mean);
    }
}

/// river's `stats.Var` (ddof = 1, weight 1): Welford on a [`RiverMean`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RiverVar {
    pub mean: RiverMean,
    s: f64,
}

impl RiverVar {
    #[inline]
    pub(crate) fn update(&mut self, x: f64) {
        let old = self.mean.mean;
        self.mean.update(x);
        let new = self.mean.mean;
        self.s += 1.0 * (x - old) * (x - new);
    }

    /// The sample variance (0 until two values were seen).
    #[inline]
    pub(crate) fn get(&self) -> f64 {
        if self.mean.n > 1.0 {
            self.s / (self.mean.n - 1.0)
        } else {
            0.0
        }
    }
}

/// river's `stats.EWMean` (its Rust core): the first value initialises the
/// mean, then `mean = alpha * x + (1 - alpha) * mean`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RiverEwMean {
    pub mean: f64,
    alpha: f64,
    one_minus_alpha: f64,
    initialized: bool,
}

impl RiverEwMean {
    pub(crate) fn new(alpha: f64) -> Self {
        Self {
            mean: 0.0,
            alpha,
            one_minus_alpha: 1.0 - alpha,
            initialized: false,
        }
    }

    #[inline]
    pub(crate) fn update(&mut self, x: f64) {
        if self.initialized {
            self.mean = self.alpha * x + self.one_minus_alpha * self.mean;
        } else {
            self.mean = x;
            self.initialized = true;
        }
    }
}

// Cephes ndtr/erf/erfc (Stephen L. Moshier, Cephes Math Library 2.2, as
// translated in scipy's xsf `cephes/ndtr.h`, which scipy.special.ndtr and
// therefore scipy.stats.norm.sf use). Same coefficients, same evaluation order.
// The coefficients are written with Cephes's digits; both compilers round them
// to the same doubles.

#[allow(clippy::excessive_precision)]
const NDTR_P: [f64; 9] = [
    2.461_969_814_735_305_125_24E-10,
    5.641_895_648_310_688_219_77E-1,
    7.463_210_564_422_699_126_87E0,
    4.863_719_709_856_813_666_14E1,
    1.965_208_329_560_770_982_42E2,
    5.264_451_949_954_773_586_31E2,
    9.345_285_271_719_576_075_40E2,
    1.027_551_886_895_157_102_72E3,
    5.575_353_353_693_993_275_26E2,
];
#[allow(clippy::excessive_precision)]
const NDTR_Q: [f64; 8] = [
    1.322_819_511_547_449_925_08E1,
    8.670_721_408_859_897_423_29E1,
    3.549_377_788_878_198_910_62E2,
    9.757_085_017_432_054_897_53E2,
    1.823_909_166_879_097_362_89E3,
    2.246_337_608_187_109_817_92E3,
    1.656_663_091_941_613_501_82E3,
    5.575_353_408_177_276_755_46E2,
];
#[allow(clippy::excessive_precision)]
const NDTR_R: [f64; 6] = [
    5.641_895_835_477_550_739_84E-1,
    1.275_366_707_599_781_044_16E0,
    5.019_050_422_511_804_774_14E0,
    6.160_210_979_930_535_851_95E0,
    7.409_742_699_504_489_391_60E0,
    2.978_866_653_721_002_406_70E0,
];
#[allow(clippy::excessive_precision)]
const NDTR_S: [f64; 6] = [
    2.260_528_632_201_172_765_90E0,
    9.396_035_249_380_014_346_73E0,
    1.204_895_398_080_966_566_05E1,
    1.708_144_507_475_658_972_22E1,
    9.608_968_090_632_858_781_98E0,
    3.369_076_451_000_815_160_50E0,
];
#[allow(clippy::excessive_precision)]
const NDTR_T: [f64; 5] = [
    9.604_973_739_870_516_387_49E0,
    9.002_601_972_038_426_892_17E1,
    2.232_005_345_946_843_192_26E3,
    7.003_325_141_128_050_754_73E3,
    5.559_230_130_103_949_627_68E4,
];
#[allow(clippy::excessive_precision)]
const NDTR_U: [f64; 5] = [
    3.356_171_416_475_030_996_47E1,
    5.213_579_497_801_526_797_95E2,
    4.594_323_829_709_801_279_87E3,
    2.262_900_006_138_909_342_46E4,
    4.926_739_426_086_359_210_86E4,
];
#[allow(clippy::excessive_precision)]
const MAXLOG: f64 = 7.097_827_128_933_839_967_32E2;

/// Cephes `polevl`: `c[0] x^n + ... + c[n]` by Horner's rule.
fn polevl(x: f64, c: &[f64]) -> f64 {
    let mut ans = c[0];
    for &ci in &c[1..] {
        ans = ans * x + ci;
    }
    ans
}

/// Cephes `p1evl`: like [`polevl`] with an implicit leading coefficient 1.
fn p1evl(x: f64, c: &[f64]) -> f64 {
    let mut ans = x + c[0];
    for &ci in &c[1..] {
        ans = ans * x + ci;
    }
    ans
}

fn erfc(a: f64) -> f64 {
    if a.is_nan() {
        return f64::NAN;
    }
    let x = a.abs();
    if x < 1.0 {
        return 1.0 - erf(a);
    }
    let z = -a * a;
    let y = if z < -MAXLOG {
        0.0
    } else {
        let z = z.exp();
        let (p, q) = if x < 8.0 {
            (polevl(x, &NDTR_P), p1evl(x, &NDTR_Q))
        } else {
            (polevl(x, &NDTR_R), p1evl(x, &NDTR_S))
        };
        let y = (z * p) / q;
        if a < 0.0 {
            2.0 - y
        } else {
            y
        }
    };
    if y != 0.0 {
        y
    } else if a < 0.0 {
        2.0
    } else {
        0.0
    }
}

fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return -erf(-x);
    }
    if x.abs() > 1.0 {
        return 1.0 - erfc(x);
    }
    let z = x * x;
    x * polevl(z, &NDTR_T) / p1evl(z, &NDTR_U)
}

/// The standard normal CDF, cephes `ndtr`.
fn ndtr(a: f64) -> f64 {
    if a.is_nan() {
        return f64::NAN;
    }
    let x = a * std::f64::consts::FRAC_1_SQRT_2;
    let z = x.abs();
    if z < 1.0 {
        0.5 + 0.5 * erf(x)
    } else {
        let y = 0.5 * erfc(z);
        if x > 0.0 {
            1.0 - y
        } else {
            y
        }
    }
}

/// `scipy.stats.norm.sf(t)`, the upper tail `1 - Phi(t)`, computed as scipy
/// does (`ndtr(-t)`); `sf(-inf) = 1`, `sf(inf) = 0`.
pub(crate) fn norm_sf(t: f64) -> f64 {
    ndtr(-t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/drift/expected.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn norm_sf_matches_scipy() {
        let fx = fixture();
        for row in fx["norm_sf"].as_array().unwrap() {
            let x: f64 = row[0].as_str().unwrap().parse().unwrap();
            let want: f64 = row[1].as_str().unwrap().parse().unwrap();
            assert_eq!(norm_sf(x), want, "sf({x})");
        }
        assert_eq!(norm_sf(f64::NEG_INFINITY), 1.0);
        assert_eq!(norm_sf(f64::INFINITY), 0.0);
        assert!(norm_sf(f64::NAN).is_nan());
    }

    #[test]
    fn river_var_matches_two_pass() {
        let xs = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        let mut v = RiverVar::default();
        for x in xs {
            v.update(x);
        }
        let m = xs.iter().sum::<f64>() / 8.0;
        let s = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 7.0;
        assert!((v.get() - s).abs() < 1e-12);
        assert!((v.mean.mean - m).abs() < 1e-12);
    }

    #[test]
    fn py_pow_is_libm_pow() {
        assert_eq!(py_pow(0.95, 2.0), 0.95 * 0.95);
        assert_eq!(py_pow(4.0, 0.5), 2.0);
    }
}
