//! Streaming per-tensor statistics and comparisons, computed chunk by chunk
//! straight from the memory map (in parallel), never materialising a tensor.

use super::{decode_into, Dtype};
use rayon::prelude::*;

const CHUNK: usize = 1 << 16;

/// Summary statistics of one tensor; min/max/mean/std/l2 over finite values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorStats {
    pub count: usize,
    pub finite: usize,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Sum of squared deviations from the mean (for std).
    m2: f64,
    pub sum_sq: f64,
    pub nan: usize,
    pub inf: usize,
}

impl TensorStats {
    fn empty() -> Self {
        TensorStats {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            ..Default::default()
        }
    }

    fn of_chunk(values: &[f32]) -> Self {
        let mut s = Self::empty();
        s.count = values.len();
        let mut sum = 0f64;
        for &v in values {
            if v.is_nan() {
                s.nan += 1;
            } else if v.is_infinite() {
                s.inf += 1;
            } else {
                let v = v as f64;
                s.finite += 1;
                sum += v;
                s.sum_sq += v * v;
                s.min = s.min.min(v);
                s.max = s.max.max(v);
            }
        }
        if s.finite > 0 {
            s.mean = sum / s.finite as f64;
            s.m2 = values
                .iter()
                .filter(|v| v.is_finite())
                .map(|&v| (v as f64 - s.mean).powi(2))
                .sum();
        }
        s
    }

    /// Chan et al.'s pairwise combination of means and squared deviations.
    fn merge(a: Self, b: Self) -> Self {
        let n = a.finite + b.finite;
        let (mean, m2) = if n == 0 {
            (0.0, 0.0)
        } else {
            let d = b.mean - a.mean;
            let mean = a.mean + d * b.finite as f64 / n as f64;
            let m2 = a.m2 + b.m2 + d * d * a.finite as f64 * b.finite as f64 / n as f64;
            (mean, m2)
        };
        TensorStats {
            count: a.count + b.count,
            finite: n,
            min: a.min.min(b.min),
            max: a.max.max(b.max),
            mean,
            m2,
            sum_sq: a.sum_sq + b.sum_sq,
            nan: a.nan + b.nan,
            inf: a.inf + b.inf,
        }
    }

    /// Sample standard deviation (Bessel-corrected, as `torch.std`); None below 2 values.
    pub fn std(&self) -> Option<f64> {
        (self.finite > 1).then(|| (self.m2 / (self.finite - 1) as f64).sqrt())
    }

    pub fn l2(&self) -> f64 {
        self.sum_sq.sqrt()
    }

    pub fn min(&self) -> Option<f64> {
        (self.finite > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<f64> {
        (self.finite > 0).then_some(self.max)
    }
}

/// Statistics of a tensor given its raw bytes.
pub fn tensor_stats(dtype: Dtype, bytes: &[u8]) -> TensorStats {
    let sz = dtype.size();
    bytes
        .par_chunks(CHUNK * sz)
        .map(|b| {
            let mut buf = vec![0f32; b.len() / sz];
            decode_into(dtype, b, &mut buf);
            TensorStats::of_chunk(&buf)
        })
        // Chunks in parallel, merged in order: rayon's `reduce` combines partial results
        // in a tree shaped by work stealing, which would make the f64 sums depend on the
        // thread count and timing; this order is fixed by CHUNK alone.
        .collect::<Vec<_>>()
        .into_iter()
        .fold(TensorStats::empty(), TensorStats::merge)
}

/// How two same-shaped tensors differ.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorDiff {
    /// Largest |a − b| (infinite where exactly one side is NaN or the values are infinities that differ).
    pub max_abs: f64,
    /// L2 norm of a − b over positions where both are finite.
    pub l2: f64,
    /// Cosine similarity of a and b (None when either is all zero).
    pub cosine: Option<f64>,
}

#[derive(Default)]
struct DiffAcc {
    max_abs: f64,
    sq: f64,
    dot: f64,
    na: f64,
    nb: f64,
}

/// Compares two tensors of the same element count given their raw bytes.
pub fn tensor_diff(da: Dtype, a: &[u8], db: Dtype, b: &[u8]) -> TensorDiff {
    let (sa, sb) = (da.size(), db.size());
    let acc = a
        .par_chunks(CHUNK * sa)
        .zip(b.par_chunks(CHUNK * sb))
        .map(|(ca, cb)| {
            let mut va = vec![0f32; ca.len() / sa];
            let mut vb = vec![0f32; cb.len() / sb];
            decode_into(da, ca, &mut va);
            decode_into(db, cb, &mut vb);
            let mut acc = DiffAcc::default();
            for (&x, &y) in va.iter().zip(&vb) {
                let (x, y) = (x as f64, y as f64);
                let d = if x.is_nan() && y.is_nan() || x == y {
                    0.0
                } else if x.is_finite() && y.is_finite() {
                    (x - y).abs()
                } else {
                    f64::INFINITY
                };
                acc.max_abs = acc.max_abs.max(d);
                if x.is_finite() && y.is_finite() {
                    acc.sq += (x - y) * (x - y);
                    acc.dot += x * y;
                    acc.na += x * x;
                    acc.nb += y * y;
                }
            }
            acc
        })
        // Merged in chunk order (see `tensor_stats`): the same sums whatever the threads.
        .collect::<Vec<_>>()
        .into_iter()
        .fold(DiffAcc::default(), |p, q| DiffAcc {
            max_abs: p.max_abs.max(q.max_abs),
            sq: p.sq + q.sq,
            dot: p.dot + q.dot,
            na: p.na + q.na,
            nb: p.nb + q.nb,
        });
    TensorDiff {
        max_abs: acc.max_abs,
        l2: acc.sq.sqrt(),
        cosine: (acc.na > 0.0 && acc.nb > 0.0).then(|| acc.dot / (acc.na.sqrt() * acc.nb.sqrt())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn stats_match_two_pass_definitions() {
        let v: Vec<f32> = (0..200_000)
            .map(|i| ((i * 7919) % 1000) as f32 / 10.0 - 3.0)
            .collect();
        let mut w = v.clone();
        w[5] = f32::NAN;
        w[6] = f32::INFINITY;
        let s = tensor_stats(Dtype::F32, &bytes(&w));
        let finite: Vec<f64> = w
            .iter()
            .filter(|x| x.is_finite())
            .map(|&x| x as f64)
            .collect();
        let mean = finite.iter().sum::<f64>() / finite.len() as f64;
        let var =
            finite.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (finite.len() - 1) as f64;
        assert_eq!((s.nan, s.inf, s.count), (1, 1, 200_000));
        assert!((s.mean - mean).abs() < 1e-9);
        assert!((s.std().unwrap() - var.sqrt()).abs() < 1e-9);
        assert_eq!(s.min().unwrap(), -3.0);
    }

    #[test]
    fn diff_basics() {
        let a = bytes(&[1.0, 2.0, 3.0]);
        let b = bytes(&[1.0, 2.5, 3.0]);
        let d = tensor_diff(Dtype::F32, &a, Dtype::F32, &b);
        assert_eq!(d.max_abs, 0.5);
        assert!((d.l2 - 0.5).abs() < 1e-12);
        assert!(d.cosine.unwrap() < 1.0);
        let same = tensor_diff(Dtype::F32, &a, Dtype::F32, &a);
        assert_eq!(same.max_abs, 0.0);
        assert!((same.cosine.unwrap() - 1.0).abs() < 1e-12);
        let n = bytes(&[f32::NAN]);
        let one = bytes(&[1.0]);
        assert_eq!(tensor_diff(Dtype::F32, &n, Dtype::F32, &n).max_abs, 0.0);
        assert!(tensor_diff(Dtype::F32, &n, Dtype::F32, &one)
            .max_abs
            .is_infinite());
    }
}
