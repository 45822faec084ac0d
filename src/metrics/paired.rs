//! Paired tests on per-example scores before and after an update: is the update's
//! regression real, or noise of a small validation set? One-sided: H0 "no change" against
//! H1 "scores went down".

use crate::rng::Rng;

/// The outcome of a paired test.
#[derive(Clone, Debug, PartialEq)]
pub struct PairedTest {
    /// Mean of before − after (positive: a regression).
    pub mean_diff: f64,
    /// The test statistic (t for the t-test; the observed mean for the bootstrap).
    pub statistic: f64,
    /// One-sided p-value of "no change" against "scores went down".
    pub p_value: f64,
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; ~15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The continued fraction of the incomplete beta function (modified Lentz).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=300 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b).
pub fn inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(a, b, x) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(b, a, 1.0 - x) / b
    }
}

/// P(T > t) for Student's t with `df` degrees of freedom.
pub fn student_t_sf(t: f64, df: f64) -> f64 {
    if t.is_nan() {
        return f64::NAN;
    }
    let tail = 0.5 * inc_beta(df / 2.0, 0.5, df / (df + t * t));
    if t > 0.0 {
        tail
    } else {
        1.0 - tail
    }
}

fn diffs(before: &[f64], after: &[f64]) -> Vec<f64> {
    before.iter().zip(after).map(|(b, a)| b - a).collect()
}

/// Paired t-test of before − after (as `scipy.stats.ttest_rel(before, after,
/// alternative="greater")`). Identical scores give p = 1 when the mean difference is 0.
pub fn paired_t_test(before: &[f64], after: &[f64]) -> PairedTest {
    let d = diffs(before, after);
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let se = (var / n).sqrt();
    let (t, p) = if d.len() < 2 {
        (f64::NAN, 1.0)
    } else if se == 0.0 {
        // Every example moved by the same amount: certain, unless nothing moved.
        match mean.partial_cmp(&0.0) {
            Some(std::cmp::Ordering::Greater) => (f64::INFINITY, 0.0),
            _ => (if mean < 0.0 { f64::NEG_INFINITY } else { 0.0 }, 1.0),
        }
    } else {
        let t = mean / se;
        (t, student_t_sf(t, n - 1.0))
    };
    PairedTest {
        mean_diff: mean,
        statistic: t,
        p_value: p,
    }
}

/// Paired bootstrap: the differences are centred (so H0 holds), resampled with replacement
/// `resamples` times from `seed`; p = (1 + #{resampled mean ≥ observed mean}) / (1 + resamples).
pub fn paired_bootstrap(before: &[f64], after: &[f64], resamples: usize, seed: u64) -> PairedTest {
    let d = diffs(before, after);
    let n = d.len();
    let mean = d.iter().sum::<f64>() / n.max(1) as f64;
    let centred: Vec<f64> = d.iter().map(|x| x - mean).collect();
    let mut rng = Rng::new(seed);
    let mut hits = 0usize;
    for _ in 0..resamples {
        let s: f64 = (0..n)
            .map(|_| centred[rng.below(n as u64) as usize])
            .sum::<f64>()
            / n as f64;
        if s >= mean - 1e-15 * mean.abs().max(1.0) {
            hits += 1;
        }
    }
    PairedTest {
        mean_diff: mean,
        statistic: mean,
        p_value: (1 + hits) as f64 / (1 + resamples) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against scipy.stats.t.sf and scipy.stats.ttest_rel (values printed by scipy 1.17).
    #[test]
    fn matches_scipy() {
        for (t, df, want) in [
            (0.5, 3.0, 0.3257239824240755),
            (2.0, 10.0, 0.03669401738537018),
            (-1.3, 7.0, 0.8826160823038114),
            (3.5, 100.0, 0.0003482138586781344),
            (1.0, 1.0, 0.25000000000000006),
            (0.0, 5.0, 0.5),
            (10.0, 4.0, 0.0002810018113579955),
        ] {
            let got = student_t_sf(t, df);
            assert!(
                (got - want).abs() < 1e-12 * want.max(1e-3),
                "t={t} df={df}: {got} vs {want}"
            );
        }
        let b = [0.9, 0.8, 0.75, 0.6, 0.95, 0.7];
        let a = [0.85, 0.82, 0.7, 0.55, 0.9, 0.69];
        let r = paired_t_test(&b, &a);
        assert!((r.statistic - 2.5903739449587606).abs() < 1e-12);
        assert!((r.p_value - 0.024407374925062297).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_separates_noise_from_a_real_drop() {
        let mut rng = Rng::new(1);
        let before: Vec<f64> = (0..200).map(|_| rng.next_f64()).collect();
        let noise: Vec<f64> = before.iter().map(|b| b + rng.uniform(-0.3, 0.3)).collect();
        let drop: Vec<f64> = before
            .iter()
            .map(|b| b - 0.2 + rng.uniform(-0.05, 0.05))
            .collect();
        assert!(paired_bootstrap(&before, &noise, 2000, 3).p_value > 0.05);
        assert!(paired_bootstrap(&before, &drop, 2000, 3).p_value < 0.01);
        assert!(paired_t_test(&before, &drop).p_value < 1e-10);
    }
}
