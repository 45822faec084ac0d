//! Metrics for dense and multi-label targets, accumulated over a whole dataset.
//!
//! IoU: per class, |prediction ∩ target| / |prediction ∪ target| over every pixel of the
//! dataset (confusion counts summed, not per-image IoUs averaged). Predictions are the
//! arg-max over channels (lowest index on ties, as torch.argmax), or for one-channel
//! (binary) logits the foreground where the logit is > 0, whose IoU is then the only
//! class reported. A class absent from both prediction and target has no IoU (`None`)
//! and is left out of the mean: sklearn's `jaccard_score(average="macro")`, whose labels
//! are those present in either. Void pixels (target 255, `crate::data::VOID`) are left
//! out of every count (IoU and pixel accuracy), as torchvision's segmentation reference's
//! `ConfusionMatrix` drops targets outside 0..C.
//!
//! Average precision: sklearn's `average_precision_score`, AP = Σ_n (R_n − R_{n−1})·P_n
//! over the distinct scores in decreasing order (tied scores form one threshold), without
//! interpolation; a label without positives has no AP and is left out of mAP.

/// Per-class intersection and union counts over a dataset.
#[derive(Clone, Debug)]
pub struct IouTotals {
    /// Output channels: 1 means binary (foreground at logit > 0).
    pub channels: usize,
    inter: Vec<u64>,
    union: Vec<u64>,
    /// Pixels and pixels predicted right.
    pub pixels: u64,
    pub correct: u64,
}

impl IouTotals {
    pub fn new(channels: usize) -> IouTotals {
        let n = channels.max(1);
        IouTotals {
            channels,
            inter: vec![0; n],
            union: vec![0; n],
            pixels: 0,
            correct: 0,
        }
    }

    /// Adds `[B, C, H, W]` logits (row-major; `hw` = H·W) against `[B, H, W]` ids; void
    /// pixels are skipped.
    pub fn add(&mut self, logits: &[f32], hw: usize, targets: &[i64]) {
        let c = self.channels;
        let b = targets.len() / hw.max(1);
        for i in 0..b {
            for px in 0..hw {
                if targets[i * hw + px] == crate::data::VOID {
                    continue;
                }
                let at = |k: usize| logits[(i * c + k) * hw + px];
                let pred = if c == 1 {
                    (at(0) > 0.0) as usize
                } else {
                    (1..c).fold(0, |best, k| if at(k) > at(best) { k } else { best })
                };
                let t = targets[i * hw + px] as usize;
                self.pixels += 1;
                self.correct += (pred == t) as u64;
                if c == 1 {
                    // Foreground only.
                    self.inter[0] += (pred == 1 && t == 1) as u64;
                    self.union[0] += (pred == 1 || t == 1) as u64;
                } else if pred == t {
                    self.inter[t] += 1;
                    self.union[t] += 1;
                } else {
                    self.union[pred] += 1;
                    if t < c {
                        self.union[t] += 1;
                    }
                }
            }
        }
    }

    /// IoU per class (the foreground alone for binary masks); `None` where the class is in
    /// neither prediction nor target.
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.inter
            .iter()
            .zip(&self.union)
            .map(|(&i, &u)| (u > 0).then(|| i as f64 / u as f64))
            .collect()
    }

    /// Mean IoU over the classes that have one (`None` when none has).
    pub fn mean(&self) -> Option<f64> {
        mean_present(&self.per_class())
    }

    pub fn pixel_accuracy(&self) -> f64 {
        self.correct as f64 / self.pixels.max(1) as f64
    }
}

/// The mean of the values present.
pub fn mean_present(v: &[Option<f64>]) -> Option<f64> {
    let present: Vec<f64> = v.iter().flatten().copied().collect();
    (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
}

/// Average precision of `scores` against 0/1 `labels` (sklearn's definition); `None`
/// without positives.
pub fn average_precision(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let positives = labels.iter().filter(|&&l| l).count();
    if positives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp, mut ap, mut last_recall) = (0usize, 0usize, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]] == s {
            if labels[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let recall = tp as f64 / positives as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - last_recall) * precision;
        last_recall = recall;
    }
    Some(ap)
}

/// Scores and labels of a multi-label evaluation, per label.
#[derive(Clone, Debug)]
pub struct MultiLabelTotals {
    pub k: usize,
    scores: Vec<Vec<f32>>,
    labels: Vec<Vec<bool>>,
    /// Elements and elements where (logit > 0) equals the label.
    pub elements: u64,
    pub correct: u64,
}

impl MultiLabelTotals {
    pub fn new(k: usize) -> MultiLabelTotals {
        MultiLabelTotals {
            k,
            scores: vec![Vec::new(); k],
            labels: vec![Vec::new(); k],
            elements: 0,
            correct: 0,
        }
    }

    /// Adds `[B, K]` logits against `[B, K]` 0/1 targets.
    pub fn add(&mut self, logits: &[f32], targets: &[i64]) {
        for (j, (&s, &t)) in logits.iter().zip(targets).enumerate() {
            let k = j % self.k;
            self.scores[k].push(s);
            self.labels[k].push(t == 1);
            self.elements += 1;
            self.correct += ((s > 0.0) == (t == 1)) as u64;
        }
    }

    /// AP per label (`None` for labels without positives).
    pub fn per_class(&self) -> Vec<Option<f64>> {
        self.scores
            .iter()
            .zip(&self.labels)
            .map(|(s, l)| average_precision(s, l))
            .collect()
    }

    pub fn label_accuracy(&self) -> f64 {
        self.correct as f64 / self.elements.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;

    fn fixture() -> Checkpoint {
        Checkpoint::open(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/dense/losses.safetensors"
        ))
        .unwrap()
    }

    fn f64s(f: &Checkpoint, name: &str) -> Vec<f64> {
        // Stored as F64: NaN where the reference has no value.
        let e = f.entry(name).unwrap();
        assert_eq!(e.dtype.to_string(), "F64");
        f.bytes(name)
            .unwrap()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn close(got: &[Option<f64>], want: &[f64]) -> f64 {
        assert_eq!(got.len(), want.len());
        got.iter()
            .zip(want)
            .map(|(g, w)| match g {
                Some(g) => (g - w).abs(),
                None => {
                    assert!(w.is_nan(), "no value where the reference has {w}");
                    0.0
                }
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn iou_matches_numpy_and_sklearn() {
        let f = fixture();
        let x = f.to_f32("iou_logits").unwrap();
        let y = f.to_i64("iou_target").unwrap();
        let mut t = IouTotals::new(4);
        t.add(&x, 20, &y);
        let d = close(&t.per_class(), &f64s(&f, "iou_per_class"));
        let dm = (t.mean().unwrap() - f64s(&f, "iou_miou")[0]).abs();
        eprintln!("multi-class IoU: max |Δ| = {d:.1e}, |ΔmIoU| = {dm:.1e}");
        assert!(d < 1e-12 && dm < 1e-12);
        assert_eq!(t.per_class()[3], None);
        let x = f.to_f32("iou_bin_logits").unwrap();
        let y = f.to_i64("iou_bin_target").unwrap();
        let mut t = IouTotals::new(1);
        t.add(&x, 20, &y);
        let d = (t.mean().unwrap() - f64s(&f, "iou_bin_fg")[0]).abs();
        eprintln!("binary foreground IoU: |Δ| = {d:.1e}");
        assert!(d < 1e-12);
    }

    #[test]
    fn iou_and_pixel_accuracy_skip_void_pixels() {
        let f = fixture();
        let x = f.to_f32("voidiou_logits").unwrap();
        let y = f.to_i64("voidiou_target").unwrap();
        assert!(y.contains(&crate::data::VOID));
        let mut t = IouTotals::new(4);
        t.add(&x, 20, &y);
        let d = close(&t.per_class(), &f64s(&f, "voidiou_per_class"));
        let da = (t.pixel_accuracy() - f64s(&f, "voidiou_acc")[0]).abs();
        eprintln!("IoU with void: max |Δ| = {d:.1e}, |Δacc| = {da:.1e}");
        assert!(d < 1e-12 && da < 1e-12);
        // Class 3 is predicted only on void pixels: no IoU.
        assert_eq!(t.per_class()[3], None);
        assert_eq!(t.pixels, y.iter().filter(|&&v| v != 255).count() as u64);
        let x = f.to_f32("voidiou_bin_logits").unwrap();
        let y = f.to_i64("voidiou_bin_target").unwrap();
        let mut t = IouTotals::new(1);
        t.add(&x, 20, &y);
        let d = (t.mean().unwrap() - f64s(&f, "voidiou_bin_fg")[0]).abs();
        let da = (t.pixel_accuracy() - f64s(&f, "voidiou_bin_acc")[0]).abs();
        eprintln!("binary IoU with void: |Δ| = {d:.1e}, |Δacc| = {da:.1e}");
        assert!(d < 1e-12 && da < 1e-12);
    }

    #[test]
    fn average_precision_matches_sklearn() {
        let f = fixture();
        let s = f.to_f32("ap_scores").unwrap();
        let y = f.to_i64("ap_target").unwrap();
        let mut t = MultiLabelTotals::new(6);
        t.add(&s, &y);
        let ap = t.per_class();
        let d = close(&ap, &f64s(&f, "ap_per_class"));
        let dm = (mean_present(&ap).unwrap() - f64s(&f, "ap_map")[0]).abs();
        eprintln!("AP: max |Δ| = {d:.1e}, |ΔmAP| = {dm:.1e}");
        assert!(d < 1e-12 && dm < 1e-12);
        assert_eq!(ap[5], None);
    }

    #[test]
    fn ap_small_cases() {
        // sklearn: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333…
        let ap = average_precision(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!((ap - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(average_precision(&[0.1], &[false]), None);
    }
}
