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
    /// The arg-max class (the lowest index among ties, as torch.argmax).
    pub predicted: Vec<usize>,
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
        s.predicted.push(argmax);
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
    /// Examples per true class (as many entries as the model has classes).
    pub class_n: Vec<u64>,
    /// Correct arg-max predictions per true class.
    pub class_correct: Vec<u64>,
}

impl ClassificationTotals {
    /// Adds a batch scored against `targets` by a model of `classes` outputs (every target
    /// below `classes`, as `Loss::check_output` ensures).
    pub fn add(&mut self, s: &BatchScores, targets: &[i64], classes: usize) {
        self.n += s.loss.len();
        self.loss_sum += s.loss.iter().sum::<f64>();
        self.correct += s.correct.iter().filter(|&&c| c).count();
        self.top_k += s.top_k.iter().filter(|&&c| c).count();
        if self.class_n.len() < classes {
            self.class_n.resize(classes, 0);
            self.class_correct.resize(classes, 0);
        }
        for (&t, &c) in targets.iter().zip(&s.correct) {
            if let Some(k) = usize::try_from(t).ok().filter(|&k| k < self.class_n.len()) {
                self.class_n[k] += 1;
                self.class_correct[k] += c as u64;
            }
        }
    }
    /// Accuracy within each true class (its recall), `None` for a class without examples.
    pub fn per_class_accuracy(&self) -> Vec<Option<f64>> {
        self.class_n
            .iter()
            .zip(&self.class_correct)
            .map(|(&n, &c)| (n > 0).then(|| c as f64 / n as f64))
            .collect()
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

/// Counts of (true class, predicted class): rows are the true class, columns the arg-max
/// prediction, as sklearn's `confusion_matrix(y_true, y_pred, labels=range(classes))`.
#[derive(Clone, Debug, PartialEq)]
pub struct Confusion {
    classes: usize,
    counts: Vec<u64>,
}

impl Confusion {
    /// An empty `classes`×`classes` matrix, refused when it could not be allocated.
    pub fn new(classes: usize) -> crate::Result<Confusion> {
        let n = crate::validate::elements("the confusion matrix", &[classes, classes], 8)?;
        Ok(Confusion {
            classes,
            counts: vec![0; n],
        })
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Counts each (target, prediction) pair; pairs outside the classes are skipped.
    pub fn add(&mut self, targets: &[i64], predicted: &[usize]) {
        for (&t, &p) in targets.iter().zip(predicted) {
            if let Some(t) = usize::try_from(t).ok().filter(|&t| t < self.classes) {
                if p < self.classes {
                    self.counts[t * self.classes + p] += 1;
                }
            }
        }
    }

    /// The count of examples of class `t` predicted as `p`.
    pub fn get(&self, t: usize, p: usize) -> u64 {
        self.counts[t * self.classes + p]
    }

    /// The matrix as rows (one per true class).
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts
            .chunks(self.classes.max(1))
            .map(<[u64]>::to_vec)
            .collect()
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
        assert_eq!(s2.predicted, vec![1, 0]);
    }

    #[test]
    fn confusion_and_per_class_accuracy() {
        // sklearn: confusion_matrix([0, 1, 2, 2, 0, 1], [0, 2, 2, 1, 0, 1], labels=[0, 1, 2, 3])
        // = [[2,0,0,0],[0,1,1,0],[0,1,1,0],[0,0,0,0]]
        let targets = [0i64, 1, 2, 2, 0, 1];
        let pred = [0usize, 2, 2, 1, 0, 1];
        let mut logits = vec![0f32; 6 * 4];
        for (i, &p) in pred.iter().enumerate() {
            logits[i * 4 + p] = 1.0;
        }
        let s = score(&logits, 4, &targets, 1);
        assert_eq!(s.predicted, pred);
        let mut c = Confusion::new(4).unwrap();
        c.add(&targets, &s.predicted);
        assert_eq!(
            c.rows(),
            vec![
                vec![2, 0, 0, 0],
                vec![0, 1, 1, 0],
                vec![0, 1, 1, 0],
                vec![0, 0, 0, 0]
            ]
        );
        let mut t = ClassificationTotals::default();
        t.add(&s, &targets, 4);
        assert_eq!(
            t.per_class_accuracy(),
            vec![Some(1.0), Some(0.5), Some(0.5), None]
        );
        // The diagonal over the row sums is the same recall.
        for k in 0..3 {
            let row: u64 = (0..4).map(|p| c.get(k, p)).sum();
            assert_eq!(
                Some(c.get(k, k) as f64 / row as f64),
                t.per_class_accuracy()[k]
            );
        }
        assert!(Confusion::new(usize::MAX / 2).is_err());
    }
}
