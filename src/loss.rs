//! Task losses, each a fused value and gradient computed on the host in f64 from the
//! f32 logits (as `cross_entropy_grad` here): the gradient with respect to the logits enters
//! the backward pass directly, so no loss graph is ever built.
//!
//! - `ce`: softmax cross-entropy with label smoothing, for class ids (`[B, C]` logits,
//!   mean over the batch) and for masks (`[B, C, H, W]` logits against `[B, H, W]` ids,
//!   softmax over C, mean over the B·H·W pixels that are not void: torch's
//!   `F.cross_entropy(..., ignore_index=255)` on 4-d input).
//! - `bce`: `binary_cross_entropy_with_logits`, mean over every element:
//!   max(x, 0) − x·t + log(1 + e^(−|x|)).
//! - `focal`: torchvision's `sigmoid_focal_loss`: α_t·(1 − p_t)^γ·bce(x, t) with
//!   p = σ(x), p_t = p·t + (1 − p)(1 − t), α_t = α·t + (1 − α)(1 − t) (no α factor when
//!   α < 0), mean over every element.
//! - `dice`: soft dice on sigmoid probabilities, per example over all its elements,
//!   1 − (2·Σ p·t + s)/(Σ p + Σ t + s) with s = 1, averaged over the batch.
//! - `dice-bce`: dice + bce.
//!
//! - `causal-lm`: transformers' causal-LM loss on token labels ([`TargetKind::Tokens`]):
//!   `[B, T, V]` logits, position t scored against the label at t + 1 (the labels shift
//!   by one; the last position has none), mean over the positions whose label is not
//!   [`IGNORE_TOKEN`] (`F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
//!   ignore_index=-100)`). `ce` on token labels is the same loss.
//!
//! The sigmoid losses take multi-hot rows (`[B, K]` logits) or binary masks (`[B, 1, H, W]`
//! logits against 0/1 `[B, H, W]` targets); `dice` and `dice-bce` take binary masks only.
//!
//! Void pixels: a mask value of 255 ([`VOID`], Pascal VOC's boundary label, torch's
//! `ignore_index` in torchvision's segmentation references) is left out of every loss:
//! no value, zero gradient, and not counted in the mean. `bce` and `focal` are then the sum
//! over the other elements divided by their number (torch:
//! `F.binary_cross_entropy_with_logits(x, t, weight=w, reduction="sum") / w.sum()` with
//! w = (t ≠ 255), not `reduction="mean"`, which would divide by every element); `dice`
//! leaves them out of Σ p·t, Σ p and Σ t. A batch whose pixels are all void has loss 0 and
//! zero gradient (torch gives NaN).

use crate::data::{Dataset, TargetKind, IGNORE_TOKEN, VOID};
use crate::error::{MnemoError, Result};

/// Softmax rows of `logits` [n, c] in f64, and per-row log-sum-exp.
pub(crate) fn softmax_rows(logits: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let mut p = Vec::with_capacity(logits.len());
    let mut lse = Vec::with_capacity(logits.len() / c);
    for row in logits.chunks_exact(c) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let s: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
        lse.push(max + s.ln());
        p.extend(row.iter().map(|&v| (v as f64 - max).exp() / s));
    }
    (p, lse)
}

/// The fused cross-entropy of logits `l` [n, c] against (label-smoothed) targets `y`:
/// the summed loss, and its gradient (softmax − target)·scale/n, computed on the host so
/// that no log-softmax graph is ever built.
pub(crate) fn cross_entropy_grad(
    l: &[f32],
    c: usize,
    y: &[i64],
    smoothing: f64,
    scale: f64,
) -> (f64, Vec<f32>) {
    let (p, lse) = softmax_rows(l, c);
    let b = y.len() as f64;
    let (on, off) = (1.0 - smoothing + smoothing / c as f64, smoothing / c as f64);
    let mut loss = 0.0;
    let mut grad = vec![0f32; l.len()];
    for (i, &t) in y.iter().enumerate() {
        let t = t as usize;
        let row = &l[i * c..(i + 1) * c];
        // −Σ_k q_k log p_k = lse − Σ_k q_k l_k
        let dot: f64 = row
            .iter()
            .enumerate()
            .map(|(k, &v)| if k == t { on } else { off } * v as f64)
            .sum();
        loss += lse[i] - dot;
        for k in 0..c {
            let q = if k == t { on } else { off };
            grad[i * c + k] = ((p[i * c + k] - q) / b * scale) as f32;
        }
    }
    (loss, grad)
}

/// The task loss (`--loss`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Loss {
    /// Softmax cross-entropy (label smoothing applies).
    #[default]
    Ce,
    Bce,
    Focal {
        alpha: f64,
        gamma: f64,
    },
    Dice,
    DiceBce,
    /// Shifted cross-entropy over token labels (label smoothing applies).
    CausalLm,
}

impl Loss {
    pub fn name(self) -> &'static str {
        match self {
            Loss::Ce => "ce",
            Loss::Bce => "bce",
            Loss::Focal { .. } => "focal",
            Loss::Dice => "dice",
            Loss::DiceBce => "dice-bce",
            Loss::CausalLm => "causal-lm",
        }
    }

    fn sigmoid(self) -> bool {
        !matches!(self, Loss::Ce | Loss::CausalLm)
    }

    /// Fails when the loss does not fit the dataset's targets (before any model runs).
    pub fn check_targets(self, data: &Dataset) -> Result<()> {
        let ok = match data.target_kind {
            TargetKind::Class => self == Loss::Ce,
            TargetKind::MultiLabel { .. } => matches!(self, Loss::Bce | Loss::Focal { .. }),
            TargetKind::Mask { .. } => self != Loss::CausalLm,
            TargetKind::Tokens { .. } => matches!(self, Loss::Ce | Loss::CausalLm),
        };
        if ok {
            return Ok(());
        }
        let fits = match data.target_kind {
            TargetKind::Class => "ce",
            TargetKind::MultiLabel { .. } => "bce or focal",
            TargetKind::Mask { .. } => "ce, bce, focal, dice or dice-bce",
            TargetKind::Tokens { .. } => "causal-lm",
        };
        Err(MnemoError::Unfit {
            path: data.path.clone(),
            setting: crate::Setting::Loss,
            reason: format!(
                "the loss {} does not fit 'target' ({}); use {fits}",
                self.name(),
                data.target_kind.describe()
            ),
        })
    }

    /// Fails when the model's output shape `dims` does not fit the targets and the loss,
    /// or (with `labels`) when a target is out of range for it.
    pub fn check_output(
        self,
        data: &Dataset,
        dims: &[usize],
        head: Option<&str>,
        labels: bool,
    ) -> Result<()> {
        let arch = |reason: String| MnemoError::InvalidArch {
            origin: None,
            reason,
        };
        let channels = match data.target_kind {
            TargetKind::Class => {
                if dims.len() != 2 {
                    return Err(arch(format!("the model's output has shape {dims:?}; classification needs [batch, classes] logits")));
                }
                dims[1]
            }
            TargetKind::MultiLabel { k } => {
                if dims.len() != 2 {
                    return Err(arch(format!(
                        "the model's output has shape {dims:?}; multi-label targets need [batch, {k}] logits"
                    )));
                }
                dims[1]
            }
            TargetKind::Tokens { t } => {
                if dims.len() != 3 || dims[1] != t {
                    return Err(arch(format!(
                        "the model's output has shape {dims:?}; token labels [N, {t}] need [batch, {t}, vocabulary] logits"
                    )));
                }
                dims[2]
            }
            TargetKind::Mask { h, w } => {
                if dims.len() != 4 || dims[2] != h || dims[3] != w {
                    return Err(arch(format!(
                        "the model's output has shape {dims:?}; masks [N, {h}, {w}] need [batch, channels, {h}, {w}] logits"
                    )));
                }
                let unfit = |reason: String| MnemoError::Unfit {
                    path: data.path.clone(),
                    setting: crate::Setting::Loss,
                    reason,
                };
                if self.sigmoid() && dims[1] != 1 {
                    return Err(unfit(format!(
                        "the loss {} on masks needs one output channel (a binary mask, [batch, 1, {h}, {w}]); the model has {} (use ce)",
                        self.name(),
                        dims[1]
                    )));
                }
                if !self.sigmoid() && dims[1] < 2 {
                    return Err(unfit(
                        "the loss ce on masks needs two or more output channels; the model has one (a binary mask: use bce, dice or dice-bce)".into(),
                    ));
                }
                dims[1]
            }
        };
        if labels {
            data.check_labels(channels, head)?;
        }
        Ok(())
    }
}

/// σ(x) in f64, stable at both ends.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// bce_with_logits(x, t) = max(x, 0) − x·t + log(1 + e^(−|x|)).
fn bce_term(x: f64, t: f64) -> f64 {
    x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()
}

/// The mean loss of logits `l` (shape `dims`) against targets `y` (example-major), and its
/// gradient with respect to `l`, times `scale`.
pub fn loss_grad(
    loss: Loss,
    kind: TargetKind,
    l: &[f32],
    dims: &[usize],
    y: &[i64],
    smoothing: f64,
    scale: f64,
) -> (f64, Vec<f32>) {
    match (loss, kind) {
        (Loss::Ce, TargetKind::Class) => {
            let (sum, g) = cross_entropy_grad(l, dims[1], y, smoothing, scale);
            (sum / y.len() as f64, g)
        }
        (Loss::Ce | Loss::CausalLm, TargetKind::Tokens { .. }) => {
            causal_lm(l, dims, y, smoothing, scale)
        }
        (Loss::Ce | Loss::CausalLm, _) => pixel_cross_entropy(l, dims, y, smoothing, scale),
        (Loss::Bce, _) => bce(l, y, scale),
        (Loss::Focal { alpha, gamma }, _) => focal(l, y, alpha, gamma, scale),
        (Loss::Dice, _) => dice(l, dims[0], y, 1.0, scale),
        (Loss::DiceBce, _) => {
            let (a, mut g) = dice(l, dims[0], y, 1.0, scale);
            let (b, h) = bce(l, y, scale);
            g.iter_mut().zip(&h).for_each(|(g, h)| *g += h);
            (a + b, g)
        }
    }
}

/// Cross-entropy over channel 1 of `[B, C, ...]` logits against `[B, ...]` ids, mean over
/// the B·(spatial) positions whose id is not [`VOID`]; targets (1 − ε)·onehot + ε/C.
pub fn pixel_cross_entropy(
    l: &[f32],
    dims: &[usize],
    y: &[i64],
    smoothing: f64,
    scale: f64,
) -> (f64, Vec<f32>) {
    let (b, c) = (dims[0], dims[1]);
    let hw: usize = dims[2..].iter().product();
    let n = y.iter().filter(|&&t| t != VOID).count().max(1) as f64;
    let (on, off) = (1.0 - smoothing + smoothing / c as f64, smoothing / c as f64);
    let mut grad = vec![0f32; l.len()];
    let mut loss = 0.0;
    let mut e = vec![0f64; c];
    for i in 0..b {
        let base = i * c * hw;
        for px in 0..hw {
            let at = |k: usize| base + k * hw + px;
            if y[i * hw + px] == VOID {
                continue;
            }
            let max = (0..c).fold(f64::NEG_INFINITY, |m, k| m.max(l[at(k)] as f64));
            let mut s = 0.0;
            for (k, e) in e.iter_mut().enumerate() {
                *e = (l[at(k)] as f64 - max).exp();
                s += *e;
            }
            let lse = max + s.ln();
            let t = y[i * hw + px] as usize;
            for (k, e) in e.iter().enumerate() {
                let q = if k == t { on } else { off };
                loss += q * (lse - l[at(k)] as f64);
                grad[at(k)] = ((e / s - q) / n * scale) as f32;
            }
        }
    }
    (loss / n, grad)
}

/// Per position of `[B, T, V]` logits, the (label-smoothed) cross-entropy against the next
/// position's label: `(b, t, loss)` for every scored position, in order, with the
/// gradient rows (softmax − target)·`weight(b, t)` written into `grad` when given.
fn shifted_rows(
    l: &[f32],
    dims: &[usize],
    y: &[i64],
    smoothing: f64,
    mut grad: Option<(&mut [f32], f64)>,
    each: &mut dyn FnMut(usize, usize, f64, bool),
) {
    let (b, t, v) = (dims[0], dims[1], dims[2]);
    let (on, off) = (1.0 - smoothing + smoothing / v as f64, smoothing / v as f64);
    let mut e = vec![0f64; v];
    for i in 0..b {
        for p in 0..t.saturating_sub(1) {
            let label = y[i * t + p + 1];
            if label == IGNORE_TOKEN {
                continue;
            }
            let row = &l[(i * t + p) * v..(i * t + p + 1) * v];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let mut s = 0.0;
            for (e, &x) in e.iter_mut().zip(row) {
                *e = (x as f64 - max).exp();
                s += *e;
            }
            let lse = max + s.ln();
            let label = label as usize;
            let loss = if smoothing == 0.0 {
                lse - row[label] as f64
            } else {
                row.iter()
                    .enumerate()
                    .map(|(k, &x)| if k == label { on } else { off } * (lse - x as f64))
                    .sum()
            };
            // The prediction is the first largest logit, as torch's argmax.
            let top = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (k, &x)| {
                    if x > bv {
                        (k, x)
                    } else {
                        (bi, bv)
                    }
                })
                .0;
            each(i, p, loss, top == label);
            if let Some((g, weight)) = grad.as_mut() {
                let out = &mut g[(i * t + p) * v..(i * t + p + 1) * v];
                for (k, (o, e)) in out.iter_mut().zip(&e).enumerate() {
                    let q = if k == label { on } else { off };
                    *o = ((e / s - q) * *weight) as f32;
                }
            }
        }
    }
}

/// The causal-LM loss of `[B, T, V]` logits against `[B, T]` labels: the mean over the
/// scored positions (at least 1), and its gradient times `scale`.
pub fn causal_lm(
    l: &[f32],
    dims: &[usize],
    y: &[i64],
    smoothing: f64,
    scale: f64,
) -> (f64, Vec<f32>) {
    let t = dims[1];
    let n = (0..y.len())
        .filter(|&i| i % t != 0 && y[i] != IGNORE_TOKEN)
        .count()
        .max(1) as f64;
    let mut grad = vec![0f32; l.len()];
    let mut loss = 0.0;
    shifted_rows(
        l,
        dims,
        y,
        smoothing,
        Some((&mut grad, scale / n)),
        &mut |_, _, v, _| loss += v,
    );
    (loss / n, grad)
}

/// What evaluation keeps of token labels: per sequence, the summed loss (no smoothing),
/// the scored positions and the correct next-token predictions.
pub fn token_scores(l: &[f32], dims: &[usize], y: &[i64]) -> Vec<(f64, usize, usize)> {
    let mut out = vec![(0.0, 0, 0); dims[0]];
    shifted_rows(l, dims, y, 0.0, None, &mut |b, _, v, hit| {
        out[b].0 += v;
        out[b].1 += 1;
        out[b].2 += hit as usize;
    });
    out
}

/// Elements that are not void, at least 1 (the divisor of the sigmoid losses' means).
fn counted(y: &[i64]) -> f64 {
    y.iter().filter(|&&t| t != VOID).count().max(1) as f64
}

/// BCE with logits, mean over the elements that are not void.
pub fn bce(l: &[f32], y: &[i64], scale: f64) -> (f64, Vec<f32>) {
    let n = counted(y);
    let mut loss = 0.0;
    let grad = l
        .iter()
        .zip(y)
        .map(|(&x, &t)| {
            if t == VOID {
                return 0.0;
            }
            let (x, t) = (x as f64, t as f64);
            loss += bce_term(x, t);
            ((sigmoid(x) - t) / n * scale) as f32
        })
        .collect();
    (loss / n, grad)
}

/// torchvision's sigmoid focal loss, mean over the elements that are not void.
pub fn focal(l: &[f32], y: &[i64], alpha: f64, gamma: f64, scale: f64) -> (f64, Vec<f32>) {
    let n = counted(y);
    let mut loss = 0.0;
    let grad = l
        .iter()
        .zip(y)
        .map(|(&x, &t)| {
            if t == VOID {
                return 0.0;
            }
            let (x, t) = (x as f64, t as f64);
            let (p, q) = (sigmoid(x), sigmoid(-x));
            let ce = bce_term(x, t);
            // 1 − p_t, written so that it keeps its precision when p is near 1.
            let m = t * q + (1.0 - t) * p;
            let a = if alpha >= 0.0 {
                alpha * t + (1.0 - alpha) * (1.0 - t)
            } else {
                1.0
            };
            let mg = m.powf(gamma);
            loss += a * ce * mg;
            // d(1 − p_t)/dx = −(2t − 1)·p·(1 − p)
            let dm = -(2.0 * t - 1.0) * p * q;
            let dmg = if gamma == 0.0 || m == 0.0 {
                0.0
            } else {
                gamma * m.powf(gamma - 1.0) * dm
            };
            (a * ((p - t) * mg + ce * dmg) / n * scale) as f32
        })
        .collect();
    (loss / n, grad)
}

/// Soft dice on sigmoid probabilities: per example over its elements,
/// 1 − (2·Σ p·t + s)/(Σ p + Σ t + s), mean over the `b` examples; void elements are in
/// none of the sums.
pub fn dice(l: &[f32], b: usize, y: &[i64], smooth: f64, scale: f64) -> (f64, Vec<f32>) {
    let per = l.len() / b.max(1);
    let mut loss = 0.0;
    let mut grad = vec![0f32; l.len()];
    for i in 0..b {
        let r = i * per..(i + 1) * per;
        let t = &y[r.clone()];
        // Void elements: p = t = 0, so they add nothing to any sum (and get no gradient).
        let p: Vec<f64> = l[r.clone()]
            .iter()
            .zip(t)
            .map(|(&x, &t)| if t == VOID { 0.0 } else { sigmoid(x as f64) })
            .collect();
        let tv = |t: i64| if t == VOID { 0.0 } else { t as f64 };
        let inter: f64 = p.iter().zip(t).map(|(p, &t)| p * tv(t)).sum();
        let den = p.iter().sum::<f64>() + t.iter().map(|&t| tv(t)).sum::<f64>() + smooth;
        let num = 2.0 * inter + smooth;
        loss += 1.0 - num / den;
        for (j, (p, &t)) in p.iter().zip(t).enumerate() {
            if t == VOID {
                continue;
            }
            let dp = -(2.0 * t as f64 * den - num) / (den * den);
            grad[i * per + j] = (dp * p * (1.0 - p) / b as f64 * scale) as f32;
        }
    }
    (loss / b as f64, grad)
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

    /// Largest absolute differences of the value and the gradient against torch's.
    fn compare(
        f: &Checkpoint,
        case: &str,
        loss: Loss,
        kind: TargetKind,
        smoothing: f64,
    ) -> (f64, f64) {
        let pre = case.split('_').next().unwrap();
        let x = f.to_f32(&format!("{pre}_logits")).unwrap();
        let dims = f.entry(&format!("{pre}_logits")).unwrap().shape.clone();
        let name = format!("{pre}_target");
        let y: Vec<i64> = match f.entry(&name).unwrap().dtype.is_float() {
            true => f.to_f32(&name).unwrap().iter().map(|&v| v as i64).collect(),
            false => f.to_i64(&name).unwrap(),
        };
        let want = f.to_f32(&format!("{case}_loss")).unwrap()[0] as f64;
        let want_g = f.to_f32(&format!("{case}_grad")).unwrap();
        let (v, g) = loss_grad(loss, kind, &x, &dims, &y, smoothing, 1.0);
        let dg = g
            .iter()
            .zip(&want_g)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max);
        ((v - want).abs(), dg)
    }

    #[test]
    fn losses_match_torch() {
        let f = fixture();
        let ml = TargetKind::MultiLabel { k: 5 };
        let mask = TargetKind::Mask { h: 4, w: 5 };
        let focal = Loss::Focal {
            alpha: 0.25,
            gamma: 2.0,
        };
        let cases = [
            ("ml_bce", Loss::Bce, ml, 0.0),
            ("ml_focal", focal, ml, 0.0),
            (
                "ml_focal2",
                Loss::Focal {
                    alpha: 0.4,
                    gamma: 1.5,
                },
                ml,
                0.0,
            ),
            ("bm_dice", Loss::Dice, mask, 0.0),
            ("bm_bce", Loss::Bce, mask, 0.0),
            ("bm_focal", focal, mask, 0.0),
            ("bm_dicebce", Loss::DiceBce, mask, 0.0),
            ("mc_ce", Loss::Ce, mask, 0.0),
            ("mc_ces", Loss::Ce, mask, 0.1),
            // Void pixels (255): ignore_index / a weight mask in torch.
            ("voidmc_ce", Loss::Ce, mask, 0.0),
            ("voidmc_ces", Loss::Ce, mask, 0.1),
            ("voidbm_bce", Loss::Bce, mask, 0.0),
            ("voidbm_focal", focal, mask, 0.0),
            ("voidbm_dice", Loss::Dice, mask, 0.0),
            ("voidbm_dicebce", Loss::DiceBce, mask, 0.0),
        ];
        for (case, loss, kind, eps) in cases {
            let (dv, dg) = compare(&f, case, loss, kind, eps);
            eprintln!("{case}: |Δloss| = {dv:.2e}, max |Δgrad| = {dg:.2e}");
            assert!(dv < 1e-5, "{case}: loss off by {dv}");
            assert!(dg < 1e-6, "{case}: gradient off by {dg}");
        }
    }

    #[test]
    fn void_pixels_get_no_gradient_and_all_void_is_zero() {
        let f = fixture();
        let y = f.to_i64("voidmc_target").unwrap();
        assert!(y.contains(&VOID));
        let x = f.to_f32("voidmc_logits").unwrap();
        let (_, g) = loss_grad(
            Loss::Ce,
            TargetKind::Mask { h: 4, w: 5 },
            &x,
            &[2, 3, 4, 5],
            &y,
            0.1,
            1.0,
        );
        for (i, &t) in y.iter().enumerate() {
            let (b, px) = (i / 20, i % 20);
            for k in 0..3 {
                assert_eq!(g[(b * 3 + k) * 20 + px] == 0.0, t == VOID, "pixel {i}");
            }
        }
        let l = [0.3f32, -2.0, 1.0, 0.5];
        for loss in [Loss::Bce, Loss::Dice, Loss::DiceBce, Loss::Ce] {
            let (dims, l): (&[usize], &[f32]) = match loss {
                Loss::Ce => (&[1, 2, 1, 2], &l),
                _ => (&[1, 1, 2, 2], &l),
            };
            let y = vec![VOID; dims[2] * dims[3]];
            let (v, g) = loss_grad(
                loss,
                TargetKind::Mask {
                    h: dims[2],
                    w: dims[3],
                },
                l,
                dims,
                &y,
                0.0,
                1.0,
            );
            assert_eq!(v, 0.0, "{}", loss.name());
            assert!(g.iter().all(|&g| g == 0.0), "{}", loss.name());
        }
    }

    #[test]
    fn class_ce_is_the_old_path() {
        let l = [0.5f32, -1.0, 2.0, 0.1, 0.2, 0.3];
        let y = [2i64, 0];
        let (s, g) = super::cross_entropy_grad(&l, 3, &y, 0.1, 0.5);
        let (m, h) = loss_grad(Loss::Ce, TargetKind::Class, &l, &[2, 3], &y, 0.1, 0.5);
        assert_eq!((s / 2.0).to_bits(), m.to_bits());
        assert_eq!(g, h);
    }
}
