use super::*;
use crate::rng::Rng;

fn randn(rng: &mut Rng, n: usize, scale: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            // Box–Muller; enough for test data.
            let u = rng.next_f64().max(1e-300);
            let v = rng.next_f64();
            ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() * scale) as f32
        })
        .collect()
}

fn run(m: &Method, inputs: &[&[f32]], base: Option<&[f32]>) -> Vec<f32> {
    merge_tensor(m, "t", inputs, base, &Extra::default()).unwrap()
}

fn close(a: &[f32], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (j, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x as f64 - y).abs() <= tol * (1.0 + y.abs()),
            "element {j}: {x} vs {y}"
        );
    }
}

#[test]
fn serde_defaults_and_names() {
    let m: Method = serde_json::from_str(r#"{"method": "ties", "density": 0.3}"#).unwrap();
    assert_eq!(
        m,
        Method::Ties {
            weights: vec![],
            density: 0.3,
            lambda: 1.0,
            normalize: true
        }
    );
    let m: Method = serde_json::from_str(r#"{"method": "dare", "density": 0.5}"#).unwrap();
    assert!(matches!(
        m,
        Method::Dare {
            rescale: DareRescale::Paper,
            seed: 0,
            ties: false,
            normalize: false,
            ..
        }
    ));
    let m: Method = serde_json::from_str(r#"{"method": "fisher"}"#).unwrap();
    assert!(matches!(m, Method::Fisher { eps, floor: None, normalize: false, .. } if eps == 1e-8));
    let m: Method = serde_json::from_str(r#"{"method": "model_stock"}"#).unwrap();
    assert_eq!(m, Method::ModelStock);
    assert!(
        serde_json::from_str::<Method>(r#"{"method": "ties", "density": 0.3, "typo": 1}"#).is_err()
    );
    for (name, _) in METHODS {
        assert!(!name.is_empty());
    }
    let back: Method = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
    assert_eq!(back, m);
}

#[test]
fn validation_names_the_problem() {
    let e =
        |m: Method, n: usize, base: bool, f: usize| m.validate(n, base, f).unwrap_err().to_string();
    let ties = |d: f64| Method::Ties {
        weights: vec![],
        density: d,
        lambda: 1.0,
        normalize: true,
    };
    assert!(e(ties(1.5), 2, true, 0).contains("density must be in [0, 1]"));
    assert!(e(ties(0.5), 2, false, 0).contains("needs a base"));
    assert!(e(Method::Sum, 2, true, 0).contains("does not use a base"));
    assert!(e(Method::Ema { decay: 0.9 }, 3, false, 0).contains("exactly two"));
    assert!(e(
        Method::Linear {
            weights: vec![1.0],
            normalize: false
        },
        2,
        false,
        0
    )
    .contains("1 weights for 2"));
    assert!(e(
        Method::Linear {
            weights: vec![1.0, -1.0],
            normalize: true
        },
        2,
        false,
        0
    )
    .contains("which is 0"));
    assert!(e(Method::ModelStock, 1, true, 0).contains("at least two"));
    assert!(e(
        Method::Fisher {
            weights: vec![],
            eps: 1e-8,
            floor: None,
            normalize: false
        },
        2,
        false,
        1
    )
    .contains("one Fisher file per input"));
    assert!(e(Method::Slerp { t: f64::NAN }, 2, false, 0).contains("finite"));
}

#[test]
fn linear_ema_sum() {
    let a = [1.0f32, 2.0, -3.0];
    let b = [3.0f32, 0.0, 1.0];
    let lin = Method::Linear {
        weights: vec![0.5, 2.0],
        normalize: false,
    };
    assert_eq!(run(&lin, &[&a, &b], None), vec![6.5, 1.0, 0.5]);
    let norm = Method::Linear {
        weights: vec![0.5, 2.0],
        normalize: true,
    };
    assert_eq!(run(&norm, &[&a, &b], None), vec![2.6, 0.4, 0.2]);
    let ema = Method::Ema { decay: 0.75 };
    assert_eq!(run(&ema, &[&a, &b], None), vec![1.5, 1.5, -2.0]);
    assert_eq!(run(&Method::Sum, &[&a, &b, &a], None), vec![5.0, 4.0, -5.0]);
}

#[test]
fn task_arithmetic_and_ties_by_hand() {
    let base = [0.0f32, 0.0, 0.0, 0.0];
    let a = [1.0f32, -2.0, 0.5, 0.0];
    let b = [-3.0f32, -1.0, 0.25, 4.0];
    let ta = Method::TaskArithmetic {
        weights: vec![1.0, 0.5],
        lambda: 2.0,
        normalize: false,
    };
    assert_eq!(
        run(&ta, &[&a, &b], Some(&base)),
        vec![-1.0, -5.0, 1.25, 4.0]
    );
    // TIES, d = 0.5: a keeps {-2, 1}, b keeps {4, -3}. Weighted (1, 0.5): a {1, -2}, b {-1.5, _, _, 2}.
    // Element 0: 1 + (-1.5) < 0 → elected −: only b agrees: -1.5 / 0.5 = -3.
    // Element 1: only a: -2 / 1. Element 2: nothing kept → 0. Element 3: only b: 2 / 0.5 = 4.
    let ties = Method::Ties {
        weights: vec![1.0, 0.5],
        density: 0.5,
        lambda: 1.0,
        normalize: true,
    };
    let (v, s) = merge_tensor_stats(&ties, "t", &[&a, &b], Some(&base), &Extra::default()).unwrap();
    assert_eq!(v, vec![-3.0, -2.0, 0.0, 4.0]);
    assert_eq!(s.kept, Some(0.5));
    assert_eq!(s.agree, Some(0.75));
    let ties_sum = Method::Ties {
        weights: vec![1.0, 0.5],
        density: 0.5,
        lambda: 1.0,
        normalize: false,
    };
    assert_eq!(
        run(&ties_sum, &[&a, &b], Some(&base)),
        vec![-1.5, -2.0, 0.0, 2.0]
    );
}

/// TIES on a tensor spanning several chunks against a direct implementation with a full sort.
#[test]
fn ties_across_chunks_matches_a_full_sort() {
    let mut rng = Rng::new(5);
    let n = kernel::CHUNK * 2 + 1234;
    let base = randn(&mut rng, n, 1.0);
    let xs: Vec<Vec<f32>> = (0..3)
        .map(|_| {
            let d = randn(&mut rng, n, 0.1);
            base.iter().zip(d).map(|(b, d)| b + d).collect()
        })
        .collect();
    let w = [0.7, 1.3, 0.4];
    let density = 0.3;
    let m = Method::Ties {
        weights: w.to_vec(),
        density,
        lambda: 1.5,
        normalize: true,
    };
    let refs: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
    let got = run(&m, &refs, Some(&base));
    let k = ((density * n as f64) as usize).max(1);
    let mut e = vec![vec![0f64; n]; 3];
    for i in 0..3 {
        let d: Vec<f32> = xs[i].iter().zip(&base).map(|(x, b)| x - b).collect();
        let mut idx: Vec<usize> = (0..n).collect();
        idx.sort_by(|&p, &q| d[q].abs().total_cmp(&d[p].abs()).then(p.cmp(&q)));
        for &j in &idx[..k] {
            e[i][j] = w[i] * d[j] as f64;
        }
    }
    let want: Vec<f64> = (0..n)
        .map(|j| {
            let s: f64 = (0..3).map(|i| e[i][j]).sum();
            let (mut mix, mut div) = (0.0, 0.0);
            for i in 0..3 {
                let v = e[i][j];
                if (s >= 0.0 && v > 0.0) || (s < 0.0 && v < 0.0) {
                    mix += v;
                    div += w[i];
                }
            }
            base[j] as f64 + 1.5 * mix / if div == 0.0 { 1.0 } else { div }
        })
        .collect();
    close(&got, &want, 1e-6);
}

#[test]
fn slerp_endpoints_and_colinear_fallback() {
    let mut rng = Rng::new(9);
    let a = randn(&mut rng, 100, 1.0);
    let b = randn(&mut rng, 100, 1.0);
    assert_eq!(run(&Method::Slerp { t: 0.0 }, &[&a, &b], None), a);
    let at1 = run(&Method::Slerp { t: 1.0 }, &[&a, &b], None);
    close(&at1, &b.iter().map(|&x| x as f64).collect::<Vec<_>>(), 1e-6);
    // Colinear inputs: plain interpolation.
    let c: Vec<f32> = a.iter().map(|x| 2.0 * x).collect();
    let (v, s) = merge_tensor_stats(
        &Method::Slerp { t: 0.25 },
        "t",
        &[&a, &c],
        None,
        &Extra::default(),
    )
    .unwrap();
    assert_eq!(s.lerp, Some(true));
    close(
        &v,
        &a.iter().map(|&x| 1.25 * x as f64).collect::<Vec<_>>(),
        1e-6,
    );
    // Orthogonal unit vectors: the midpoint lies on the circle.
    let (v, s) = merge_tensor_stats(
        &Method::Slerp { t: 0.5 },
        "t",
        &[&[1.0, 0.0], &[0.0, 1.0]],
        None,
        &Extra::default(),
    )
    .unwrap();
    assert_eq!(s.lerp, Some(false));
    close(&v, &[0.5f64.sqrt(), 0.5f64.sqrt()], 1e-6);
}

#[test]
fn model_stock_by_hand() {
    let base = [0.0f32, 0.0];
    // Identical task vectors: cos = 1, t = 2/(1+1) = 1 → the average.
    let (v, s) = merge_tensor_stats(
        &Method::ModelStock,
        "t",
        &[&[1.0, 2.0], &[1.0, 2.0]],
        Some(&base),
        &Extra::default(),
    )
    .unwrap();
    assert_eq!(v, vec![1.0, 2.0]);
    assert!((s.t.unwrap() - 1.0).abs() < 1e-12);
    // Orthogonal: cos = 0, t = 0 → the base.
    let v = run(
        &Method::ModelStock,
        &[&[1.0, 0.0], &[0.0, 1.0]],
        Some(&base),
    );
    assert_eq!(v, vec![0.0, 0.0]);
    // Opposite: 1 + (k−1)·cos = 0 → t = 0 → the base.
    let v = run(
        &Method::ModelStock,
        &[&[1.0, 0.0], &[-1.0, 0.0]],
        Some(&base),
    );
    assert_eq!(v, vec![0.0, 0.0]);
}

#[test]
fn fisher_weighting() {
    let fisher = |floor: Option<f64>, normalize: bool| Method::Fisher {
        weights: vec![],
        eps: 0.0,
        floor,
        normalize,
    };
    let a = [1.0f32, 1.0, 1.0];
    let b = [3.0f32, 3.0, 3.0];
    let fa = [1.0f32, 0.0, 0.0];
    let fb = [1.0f32, 2.0, 0.0];
    let extra = Extra {
        fishers: vec![&fa, &fb],
        ..Default::default()
    };
    // eps = 0 and every F = 0: 0/0 is refused as a non-finite result.
    let err = merge_tensor(&fisher(None, false), "t", &[&a, &b], None, &extra).unwrap_err();
    assert!(err.to_string().contains("element 2"), "{err}");
    // With a floor the all-zero element falls back to the plain average.
    let v = merge_tensor(&fisher(Some(1e-6), false), "t", &[&a, &b], None, &extra).unwrap();
    close(&v, &[2.0, (1e-6 + 6.0) / (2.0 + 1e-6), 2.0], 1e-7);
    // Default eps: every F = 0 gives 0 (documented).
    let m = Method::Fisher {
        weights: vec![],
        eps: 1e-8,
        floor: None,
        normalize: false,
    };
    assert_eq!(
        merge_tensor(&m, "t", &[&a, &b], None, &extra).unwrap()[2],
        0.0
    );
    // No Fisher for this tensor: weighted average.
    let m = Method::Fisher {
        weights: vec![1.0, 3.0],
        eps: 1e-8,
        floor: None,
        normalize: false,
    };
    assert_eq!(
        merge_tensor(&m, "t", &[&a, &b], None, &Extra::default()).unwrap(),
        vec![2.5; 3]
    );
    // Normalising needs the global norms.
    assert!(merge_tensor(&fisher(None, true), "t", &[&a, &b], None, &extra).is_err());
    let extra = Extra {
        fishers: vec![&fa, &fb],
        fisher_norms: vec![1.0, 2.0],
        allow_nonfinite: false,
    };
    let v = merge_tensor(&fisher(Some(1e-6), true), "t", &[&a, &b], None, &extra).unwrap();
    // Element 0: (1·1 + 0.5·3) / (1 + 0.5).
    assert!((v[0] - 2.5 / 1.5).abs() < 1e-6);
}

#[test]
fn dare_mask_statistics_and_rescaling() {
    let mut rng = Rng::new(11);
    let n = kernel::CHUNK * 3 + 17;
    let base = randn(&mut rng, n, 1.0);
    let x: Vec<f32> = base.iter().map(|b| b + 0.5).collect();
    for density in [0.3, 0.7] {
        let m = Method::Dare {
            weights: vec![],
            density,
            lambda: 1.0,
            normalize: false,
            rescale: DareRescale::Paper,
            seed: 42,
            ties: false,
        };
        let (v, s) =
            merge_tensor_stats(&m, "layer.w", &[&x], Some(&base), &Extra::default()).unwrap();
        let mask = dare_keep_mask(42, "layer.w", 0, density, n);
        let kept = mask.iter().filter(|&&k| k).count() as f64 / n as f64;
        assert_eq!(s.kept, Some(kept));
        // Within 5 standard deviations of d.
        let sd = (density * (1.0 - density) / n as f64).sqrt();
        assert!((kept - density).abs() < 5.0 * sd, "{kept} vs {density}");
        for j in 0..n {
            let d = (v[j] - base[j]) as f64;
            if mask[j] {
                let want = ((x[j] - base[j]) as f64 / density + base[j] as f64) as f32;
                assert_eq!(v[j], want, "kept element {j}");
            } else {
                assert_eq!(d, 0.0, "dropped element {j}");
            }
        }
        // Same seed, same result; another seed or name, another mask.
        assert_eq!(run(&m, &[&x], Some(&base)), run(&m, &[&x], Some(&base)));
        assert_ne!(dare_keep_mask(43, "layer.w", 0, density, n), mask);
        assert_ne!(dare_keep_mask(42, "layer.v", 0, density, n), mask);
        assert_ne!(dare_keep_mask(42, "layer.w", 1, density, n), mask);
    }
}

#[test]
fn dare_l1_rescale_restores_the_norm() {
    let mut rng = Rng::new(12);
    let n = 5000;
    let base = randn(&mut rng, n, 1.0);
    let d = randn(&mut rng, n, 0.1);
    let x: Vec<f32> = base.iter().zip(&d).map(|(b, d)| b + d).collect();
    let m = Method::Dare {
        weights: vec![],
        density: 0.3,
        lambda: 1.0,
        normalize: false,
        rescale: DareRescale::L1,
        seed: 1,
        ties: false,
    };
    let v = run(&m, &[&x], Some(&base));
    let l1 = |v: &[f32]| {
        v.iter()
            .zip(&base)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>()
    };
    let (before, after) = (l1(&x), l1(&v));
    assert!(
        (before - after).abs() < 1e-3 * before,
        "{before} vs {after}"
    );
}

#[test]
fn nonfinite_inputs_fail_or_propagate() {
    let a = [1.0f32, f32::NAN, 2.0];
    let b = [1.0f32, 1.0, 1.0];
    let m = Method::Linear {
        weights: vec![],
        normalize: false,
    };
    let err = merge_tensor(&m, "w", &[&b, &a], None, &Extra::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("input #1") && msg.contains("'w' element 1"),
        "{msg}"
    );
    let v = merge_tensor(
        &m,
        "w",
        &[&b, &a],
        None,
        &Extra {
            allow_nonfinite: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(v[1].is_nan());
    // A finite input whose merge overflows f32.
    let big = [f32::MAX];
    let err = merge_tensor(&m, "w", &[&big, &big], None, &Extra::default()).unwrap_err();
    assert!(err.to_string().contains("merged output"), "{err}");
}

#[test]
fn thread_count_does_not_change_results() {
    let mut rng = Rng::new(3);
    let n = kernel::CHUNK * 4 + 5;
    let base = randn(&mut rng, n, 1.0);
    let xs: Vec<Vec<f32>> = (0..3).map(|_| randn(&mut rng, n, 1.0)).collect();
    let refs: Vec<&[f32]> = xs.iter().map(|x| x.as_slice()).collect();
    let methods = [
        Method::Dare {
            weights: vec![0.5, 1.0, 2.0],
            density: 0.4,
            lambda: 1.0,
            normalize: true,
            rescale: DareRescale::L1,
            seed: 7,
            ties: true,
        },
        Method::ModelStock,
        Method::Breadcrumbs {
            weights: vec![],
            density: 0.6,
            gamma: 0.05,
            lambda: 1.0,
            normalize: false,
            ties: false,
        },
    ];
    for m in &methods {
        let go = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run(m, &refs, Some(&base)))
        };
        let one = go(1);
        assert_eq!(
            one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            go(3).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{}",
            m.name()
        );
    }
    let slerp = Method::Slerp { t: 0.3 };
    let go = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| run(&slerp, &refs[..2], None))
    };
    assert_eq!(go(1), go(4));
}
