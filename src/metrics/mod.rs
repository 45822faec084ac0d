//! Classification metrics computed from logits on the host in f64, so that
//! mean cross-entropy matches torch's to well within 1e-5.

pub mod continual;
pub mod dense;
pub mod paired;

use serde::Serialize;

/// Per-example results of one batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchScores {
    /// Cross-entropy (natural log) per example.
    pub loss: Vec<f64>,
    /// Whether the arg-max is the target.
    pub correct: Vec<bool>,
    /// Whether the target is among the top k.
    pub top_k: Vec<bool>,
}

/// Scores a `[n, classes]` row-major logit block against `targets`.
pub fn score(logits: &[f32], classes: usize, targets: &[i64], k: usize) -> BatchScores {
    let mut s = BatchScores::default();
    for (row, &t) in logits.chunks_exact(classes).zip(targets) {
        let t = t as usize;
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        s.loss.push(lse - row[t] as f64);
        // Rank of the target: how many classes score strictly higher (ties favour the target,
        // and for arg-max the lowest index wins, as torch.argmax does).
        let above = row.iter().filter(|&&v| v > row[t]).count();
        let argmax = row
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
            .0;
        s.correct.push(argmax == t);
        s.top_k.push(above < k);
    }
    s
}

/// Running totals for a classification evaluation.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClassificationTotals {
    pub n: usize,
    pub loss_sum: f64,
    pub correct: usize,
    pub top_k: usize,
}

impl ClassificationTotals {
    pub fn add(&mut self, s: &BatchScores) {
        self.n += s.loss.len();
        self.loss_sum += s.loss.iter().sum::<f64>();
        self.correct += s.correct.iter().filter(|&&c| c).count();
        self.top_k += s.top_k.iter().filter(|&&c| c).count();
    }
    pub fn loss(&self) -> f64 {
        self.loss_sum / self.n.max(1) as f64
    }
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.n.max(1) as f64
    }
    pub fn top_k_accuracy(&self) -> f64 {
        self.top_k as f64 / self.n.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_and_ranks() {
        // logits [0, ln 3]: p = [1/4, 3/4].
        let l = [0.0f32, 3f32.ln(), 2.0, 1.0];
        let s = score(&l, 2, &[0, 0], 1);
        assert!((s.loss[0] - 4f64.ln()).abs() < 1e-6);
        assert_eq!(s.correct, vec![false, true]);
        assert_eq!(s.top_k, vec![false, true]);
        let s2 = score(&l, 2, &[0, 0], 2);
        assert_eq!(s2.top_k, vec![true, true]);
    }
}
