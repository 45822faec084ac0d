//! Tensor operations the forward pass is built from, each with a backward that is right:
//! dropout and stochastic depth (masks from mnemo's RNG), padding, pooling from shifted
//! views, and `nn.Upsample`'s index rule.

use super::Mode;
use crate::arch::UpsampleMode;
use crate::rng::Rng;
use candle_core::{Tensor, D};

/// Inverted dropout with masks from `rng` (identity in eval mode or for p = 0).
pub(crate) fn dropout(
    x: &Tensor,
    p: f64,
    mode: Mode,
    rng: &mut Rng,
) -> candle_core::Result<Tensor> {
    if mode == Mode::Eval || p == 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| {
            if rng.next_f64() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    x * Tensor::from_vec(mask, x.dims(), x.device())?
}

/// torchvision's `StochasticDepth(p, "row")`: in train mode each example (row) is zeroed
/// with probability p and the others scaled by 1/(1 − p); the identity in eval mode or
/// for p = 0. The draws come from `rng`, one per row.
pub(crate) fn stochastic_depth(
    x: &Tensor,
    p: f64,
    mode: Mode,
    rng: &mut Rng,
) -> candle_core::Result<Tensor> {
    if mode == Mode::Eval || p == 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let rows = x.dim(0)?;
    let mask: Vec<f32> = (0..rows)
        .map(|_| {
            if rng.next_f64() < keep {
                (1.0 / keep) as f32
            } else {
                0.0
            }
        })
        .collect();
    let mut shape = vec![1usize; x.rank()];
    shape[0] = rows;
    x.broadcast_mul(&Tensor::from_vec(mask, shape.as_slice(), x.device())?.to_dtype(x.dtype())?)
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Pool {
    Max,
    Avg,
}

/// Pads the last two dims with `value`: `lo` before and `hi` after.
pub(crate) fn pad2d(x: &Tensor, lo: usize, hi: usize, value: f32) -> candle_core::Result<Tensor> {
    if lo == 0 && hi == 0 {
        return Ok(x.clone());
    }
    if value == 0.0 {
        return x
            .pad_with_zeros(D::Minus1, lo, hi)?
            .pad_with_zeros(D::Minus2, lo, hi);
    }
    let mut x = x.clone();
    for dim in [x.rank() - 1, x.rank() - 2] {
        let mut parts = Vec::new();
        for n in [lo, usize::MAX, hi] {
            if n == usize::MAX {
                parts.push(x.clone());
            } else if n > 0 {
                let mut s = x.dims().to_vec();
                s[dim] = n;
                parts.push(Tensor::full(value, s.as_slice(), x.device())?.to_dtype(x.dtype())?);
            }
        }
        x = Tensor::cat(&parts, dim)?;
    }
    Ok(x)
}

/// 2-D pooling with torch's output size, floor((H + 2p − k)/s) + 1, built from ops whose
/// backward is right: a reshape when kernel = stride without padding, otherwise k² shifted,
/// strided views (candle's pooling has no backward there).
pub(crate) fn pool2d(
    x: &Tensor,
    k: usize,
    s: usize,
    p: usize,
    kind: Pool,
) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if k == s && p == 0 {
        // Non-overlapping windows as a reshape and two reductions. candle's own max_pool2d
        // backward scales the gradient by 1/k² (it multiplies by the window's mean mask), and
        // its avg_pool2d backward is wrong when the size is not a multiple of k.
        let (oh, ow) = (h / k, w / k);
        let v = x
            .narrow(2, 0, oh * k)?
            .narrow(3, 0, ow * k)?
            .reshape((b, c, oh, k, ow, k))?;
        return match kind {
            Pool::Max => v.max(5)?.max(3),
            Pool::Avg => v.mean(5)?.mean(3),
        };
    }
    if h + 2 * p < k || w + 2 * p < k {
        candle_core::bail!("pool kernel {k} is larger than the padded input {h}x{w}");
    }
    let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let fill = if kind == Pool::Max {
        f32::NEG_INFINITY
    } else {
        0.0
    };
    // Extra fill on the far side so every shifted view spans whole strides.
    let (hp, wp) = (h + 2 * p, w + 2 * p);
    let extra_h = (k - 1 + oh * s).saturating_sub(hp);
    let extra_w = (k - 1 + ow * s).saturating_sub(wp);
    let xp = pad2d(x, p, p, fill)?;
    let xp = if extra_h > 0 || extra_w > 0 {
        let xp = if extra_h > 0 {
            pad_dim(&xp, 2, extra_h, fill)?
        } else {
            xp
        };
        if extra_w > 0 {
            pad_dim(&xp, 3, extra_w, fill)?
        } else {
            xp
        }
    } else {
        xp
    };
    let mut acc: Option<Tensor> = None;
    for di in 0..k {
        for dj in 0..k {
            let v = xp
                .narrow(2, di, oh * s)?
                .narrow(3, dj, ow * s)?
                .reshape((b, c, oh, s, ow, s))?
                .narrow(3, 0, 1)?
                .narrow(5, 0, 1)?
                .reshape((b, c, oh, ow))?;
            acc = Some(match (acc, kind) {
                (None, _) => v,
                (Some(a), Pool::Max) => a.maximum(&v)?,
                (Some(a), Pool::Avg) => (a + v)?,
            });
        }
    }
    let acc = acc.expect("k >= 1");
    match kind {
        Pool::Max => Ok(acc),
        Pool::Avg => acc / (k * k) as f64,
    }
}

/// torch's `nn.Upsample` on [B, C, H, W], separably: along H then W, each output row
/// (column) a weighted sum of at most two input rows picked by `index_select`, whose
/// backward (`index_add`) is exact. candle's own `upsample_nearest2d` is not used: like its
/// pooling, it is not trusted to have a right backward. Indices and weights follow
/// ATen's CPU kernels to the float32 rounding: scale = 1/scale_factor (or in/out for
/// `size`) as f32; nearest takes floor(dst·scale); bilinear (align_corners=False) takes
/// src = max(scale·(dst + 0.5) − 0.5, 0), i0 = floor(src), i1 = i0 + 1 clamped to the edge,
/// weights 1 − λ and λ = src − i0.
pub(crate) fn upsample(
    x: &Tensor,
    scale_factor: Option<usize>,
    size: Option<[usize; 2]>,
    mode: UpsampleMode,
) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow, scales) = match (scale_factor, size) {
        (Some(s), _) => {
            let sc = (1.0 / s as f64) as f32;
            (h.saturating_mul(s), w.saturating_mul(s), [sc, sc])
        }
        (None, Some([oh, ow])) => (oh, ow, [h as f32 / oh as f32, w as f32 / ow as f32]),
        (None, None) => candle_core::bail!("upsample needs scale_factor or size"),
    };
    // An absurd size is an error, not an allocation abort; indices stay exact in f32.
    let elems = [b, c, oh, ow]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= 1 << 32);
    if elems.is_none() || oh > 1 << 24 || ow > 1 << 24 {
        candle_core::bail!("upsampling {h}x{w} to {oh}x{ow} is too large");
    }
    let y = upsample_dim(x, 2, h, oh, scales[0], mode)?;
    upsample_dim(&y, 3, w, ow, scales[1], mode)
}

/// One axis of `upsample`: `dim` of size `n` becomes `out`.
pub(crate) fn upsample_dim(
    x: &Tensor,
    dim: usize,
    n: usize,
    out: usize,
    scale: f32,
    mode: UpsampleMode,
) -> candle_core::Result<Tensor> {
    if n == out {
        return Ok(x.clone());
    }
    let dev = x.device();
    let last = n as i64 - 1;
    match mode {
        UpsampleMode::Nearest => {
            let idx: Vec<u32> = (0..out)
                .map(|d| ((d as f32 * scale).floor() as i64).min(last) as u32)
                .collect();
            x.index_select(&Tensor::new(idx.as_slice(), dev)?, dim)
        }
        UpsampleMode::Bilinear => {
            let (mut i0, mut i1, mut l0, mut l1) = (vec![], vec![], vec![], vec![]);
            for d in 0..out {
                let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
                let i = (src.floor() as i64).min(last);
                let lambda = (src - i as f32).clamp(0.0, 1.0);
                i0.push(i as u32);
                i1.push((i + i64::from(i < last)) as u32);
                l0.push(1.0 - lambda);
                l1.push(lambda);
            }
            let mut shape = [1usize; 4];
            shape[dim] = out;
            let pick = |i: Vec<u32>, l: Vec<f32>| -> candle_core::Result<Tensor> {
                let weights = Tensor::from_vec(l, &shape[..], dev)?.to_dtype(x.dtype())?;
                x.index_select(&Tensor::new(i.as_slice(), dev)?, dim)?
                    .broadcast_mul(&weights)
            };
            pick(i0, l0)? + pick(i1, l1)?
        }
    }
}

/// Appends `n` entries of `value` at the end of `dim`.
pub(crate) fn pad_dim(x: &Tensor, dim: usize, n: usize, value: f32) -> candle_core::Result<Tensor> {
    let mut s = x.dims().to_vec();
    s[dim] = n;
    let fill = Tensor::full(value, s.as_slice(), x.device())?.to_dtype(x.dtype())?;
    Tensor::cat(&[x, &fill], dim)
}

/// softmax over the last dimension written out (the row maximum, detached, subtracted
/// before exp), so it has a backward: candle's `softmax_last_dim` detaches its output.
pub(crate) fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn max_pool_gradient_is_one_at_the_maximum() {
        // candle 0.11's max_pool2d backward gives 1/k² here; torch gives 1.
        let x = Var::new(
            &[[[[1f32, 2.0, 0.5], [3.0, 4.0, 0.1], [9.0, 9.0, 9.0]]]],
            &Device::Cpu,
        )
        .unwrap();
        for (k, s, p) in [(2, 2, 0), (2, 1, 0), (3, 2, 1)] {
            let y = pool2d(x.as_tensor(), k, s, p, Pool::Max).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            let gx: Vec<f32> = g
                .get(x.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            if (k, s, p) == (2, 2, 0) {
                assert_eq!(
                    y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    vec![4.0]
                );
                assert_eq!(gx, vec![0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
            }
            let total: f32 = gx.iter().sum();
            assert!(total >= y.elem_count() as f32, "{k} {s} {p}: {gx:?}");
        }
        let y = pool2d(x.as_tensor(), 2, 2, 0, Pool::Avg).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx: Vec<f32> = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(gx, vec![0.25, 0.25, 0.0, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn stochastic_depth_drops_whole_rows_and_rescales_the_rest() {
        let x = Tensor::ones((64, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let y = stochastic_depth(&x, 0.25, Mode::Train, &mut Rng::new(5)).unwrap();
        let rows: Vec<Vec<f32>> = y.flatten_from(1).unwrap().to_vec2().unwrap();
        let mut dropped = 0;
        for r in &rows {
            // Each row is all 0 or all 1/(1 − p).
            assert!(r.iter().all(|v| *v == r[0]), "{r:?}");
            if r[0] == 0.0 {
                dropped += 1;
            } else {
                assert!((r[0] - 1.0 / 0.75).abs() < 1e-6);
            }
        }
        assert!((5..=30).contains(&dropped), "{dropped}");
        let again = stochastic_depth(&x, 0.25, Mode::Train, &mut Rng::new(5)).unwrap();
        assert_eq!(flat(&again), flat(&y), "the seed decides");
        let eval = stochastic_depth(&x, 0.25, Mode::Eval, &mut Rng::new(5)).unwrap();
        assert_eq!(flat(&eval), flat(&x));
    }
}
