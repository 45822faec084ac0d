//! Host batchnorm and activations for f32 tensors on the CPU, each one `CustomOp` in candle's
//! autograd with its own backward. Through candle's ops a training batchnorm is a dozen
//! tensors (two means per statistic, a broadcast subtract, a square, a division, a scale and
//! a shift), each freshly allocated, and its backward reduces the broadcast gradients over
//! [N, H, W] with candle's scalar strided loop (bench/conv.md: 31% of an EfficientNet step
//! in `ReduceSum`, up to 31% in page clearing). Here a batchnorm is one pass for the
//! statistics, one for the output and two for the backward; ReLU and ReLU6 are one pass
//! each way. (A SiLU kernel of the same shape, equal to candle's within 3e-7, moved the
//! small-batch EfficientNet-B0 one-step parity past its tolerance, for reasons not found
//! yet; SiLU stays on candle's ops.)
//!
//! Statistics are summed in f64 per (image, channel) plane and the planes added in image
//! order, so results do not depend on the thread count. Other devices and dtypes keep
//! candle's ops (the callers fall back when these return `None`).

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// The contiguous f32 elements of a CPU operand (shared with `conv.rs`).
pub(super) fn host<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let v = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{what}: operand not contiguous"),
    }
}

/// `f` on a tensor's f32 values, borrowed from candle's storage (copied only when the
/// tensor is not contiguous f32).
fn with_values<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        candle_core::Storage::Cpu(s) => f(host(s, l, what)?),
        _ => bail!("{what}: backward of a host kernel on a non-CPU tensor"),
    }
}

/// A (small) tensor's f32 values, copied.
fn values(t: &Tensor, what: &str) -> Result<Vec<f32>> {
    with_values(t, what, |v| Ok(v.to_vec()))
}

fn host_f32(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// [N, C, ...] as (images, channels, elements per plane).
fn planes(dims: &[usize]) -> Option<(usize, usize, usize)> {
    match dims {
        [n, c, rest @ ..] => Some((*n, *c, rest.iter().product())),
        _ => None,
    }
}

/// Per-channel Σ f(plane) over images, each plane summed in f64, images added in order.
fn channel_sums(
    n: usize,
    c: usize,
    plane: usize,
    f: impl Fn(usize, usize) -> f64 + Sync,
) -> Vec<f64> {
    let per_plane: Vec<f64> = (0..n * c)
        .into_par_iter()
        .with_min_len(4)
        .map(|i| f(i % c, i * plane))
        .collect();
    let mut out = vec![0f64; c];
    for row in per_plane.chunks_exact(c) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
    out
}

/// The statistics a training batchnorm normalizes with: per-channel mean and biased variance
/// (two-pass, f64). The caller updates the running statistics from them.
pub struct BatchStats {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
    /// Values per channel (N · H · W), for the unbiased variance.
    pub count: usize,
}

/// Training batchnorm of `x` [N, C, ...] with per-channel `weight` and `bias`: the normalized
/// output and the batch statistics, or `None` where the host kernel does not apply.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Option<(Tensor, BatchStats)>> {
    let Some((n, c, plane)) = planes(x.dims()) else {
        return Ok(None);
    };
    if !host_f32(&[x, weight, bias]) || weight.elem_count() != c || bias.elem_count() != c {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let count = n * plane;
    let m = count.max(1) as f64;
    let (mean, var) = with_values(&x, "batchnorm", |xs| {
        let mean: Vec<f64> = channel_sums(n, c, plane, |_, o| {
            xs[o..o + plane].iter().map(|&v| v as f64).sum()
        })
        .into_iter()
        .map(|s| s / m)
        .collect();
        let var: Vec<f64> = channel_sums(n, c, plane, |ch, o| {
            let mu = mean[ch];
            xs[o..o + plane]
                .iter()
                .map(|&v| (v as f64 - mu) * (v as f64 - mu))
                .sum()
        })
        .into_iter()
        .map(|s| s / m)
        .collect();
        Ok((mean, var))
    })?;
    let op = BatchNorm {
        mean: mean.clone(),
        inv_std: var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect(),
        train: true,
    };
    let y = x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    Ok(Some((y, BatchStats { mean, var, count })))
}

/// Eval batchnorm with the running statistics, or `None` where the host kernel does not apply.
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    eps: f64,
) -> Result<Option<Tensor>> {
    let Some((_, c, _)) = planes(x.dims()) else {
        return Ok(None);
    };
    let all = [x, weight, bias, running_mean, running_var];
    if !host_f32(&all) || all[1..].iter().any(|t| t.elem_count() != c) {
        return Ok(None);
    }
    let mean = values(running_mean, "batchnorm")?;
    let var = values(running_var, "batchnorm")?;
    let op = BatchNorm {
        mean: mean.iter().map(|&v| v as f64).collect(),
        inv_std: var.iter().map(|&v| 1.0 / (v as f64 + eps).sqrt()).collect(),
        train: false,
    };
    Ok(Some(x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        op,
    )?))
}

/// y = (x − mean)·inv_std·weight + bias per channel. In training the statistics are the
/// batch's, so the input gradient has the two extra terms through mean and variance.
struct BatchNorm {
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    train: bool,
}

impl CustomOp3 for BatchNorm {
    fn name(&self) -> &'static str {
        "mnemo-batchnorm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Some((_, c, plane)) = planes(l1.dims()) else {
            bail!("batchnorm: input of shape {:?}", l1.dims())
        };
        let (x, w, b) = (
            host(s1, l1, "batchnorm")?,
            host(s2, l2, "batchnorm")?,
            host(s3, l3, "batchnorm")?,
        );
        // y = (x − mean)·scale + bias in f64: x·scale + shift in f32 would cancel badly
        // where the mean is large against the spread.
        let scale: Vec<f64> = (0..c).map(|k| self.inv_std[k] * w[k] as f64).collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(plane.max(1))
            .zip(x.par_chunks(plane.max(1)))
            .enumerate()
            .with_min_len(4)
            .for_each(|(i, (yo, xi))| {
                let k = i % c;
                let (mu, s, t) = (self.mean[k], scale[k], b[k] as f64);
                for (o, &v) in yo.iter_mut().zip(xi) {
                    *o = ((v as f64 - mu) * s + t) as f32;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some((n, c, plane)) = planes(x.dims()) else {
            bail!("batchnorm: input of shape {:?}", x.dims())
        };
        let ws = values(w, "batchnorm")?;
        let (sum_dy, sum_dy_xhat, dx) = with_values(x, "batchnorm", |xs| {
            with_values(grad, "batchnorm", |dy| {
                if dy.len() != xs.len() {
                    bail!("batchnorm: gradient of shape {:?}", grad.dims())
                }
                let xhat = |ch: usize, v: f32| (v as f64 - self.mean[ch]) * self.inv_std[ch];
                let sum_dy = channel_sums(n, c, plane, |_, o| {
                    dy[o..o + plane].iter().map(|&g| g as f64).sum()
                });
                let sum_dy_xhat = channel_sums(n, c, plane, |ch, o| {
                    dy[o..o + plane]
                        .iter()
                        .zip(&xs[o..o + plane])
                        .map(|(&g, &v)| g as f64 * xhat(ch, v))
                        .sum()
                });
                let dx = x.track_op().then(|| {
                    let m = (n * plane).max(1) as f64;
                    // Training: dx = w·inv_std·(dy − Σdy/M − x̂·Σ(dy·x̂)/M); eval: w·inv_std·dy.
                    let per_channel = |f: &dyn Fn(usize) -> f64| (0..c).map(f).collect::<Vec<_>>();
                    let a = per_channel(&|k| ws[k] as f64 * self.inv_std[k]);
                    let train = if self.train { 1.0 / m } else { 0.0 };
                    let k1 = per_channel(&|k| sum_dy[k] * train);
                    let k2 = per_channel(&|k| sum_dy_xhat[k] * train);
                    let mut out = vec![0f32; xs.len()];
                    out.par_chunks_mut(plane.max(1))
                        .zip(xs.par_chunks(plane.max(1)).zip(dy.par_chunks(plane.max(1))))
                        .enumerate()
                        .with_min_len(4)
                        .for_each(|(i, (o, (xi, gi)))| {
                            let ch = i % c;
                            for ((o, &v), &g) in o.iter_mut().zip(xi).zip(gi) {
                                let centred = g as f64 - k1[ch] - xhat(ch, v) * k2[ch];
                                *o = (a[ch] * centred) as f32;
                            }
                        });
                    out
                });
                Ok((sum_dy, sum_dy_xhat, dx))
            })
        })?;
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|s| s as f32).collect::<Vec<_>>();
        Ok((
            dx.map(|v| Tensor::from_vec(v, x.shape(), x.device()))
                .transpose()?,
            w.track_op()
                .then(|| Tensor::from_vec(to_f32(sum_dy_xhat), w.shape(), w.device()))
                .transpose()?,
            b.track_op()
                .then(|| Tensor::from_vec(to_f32(sum_dy), b.shape(), b.device()))
                .transpose()?,
        ))
    }
}

/// The activations with a host kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// min(max(x, 0), 6); the gradient is 1 strictly inside (0, 6), as torch's hardtanh.
    Relu6,
}

/// `act(x)` through the host kernel, or `None` where it does not apply (not f32 on the CPU).
pub fn activation(x: &Tensor, act: Activation) -> Result<Option<Tensor>> {
    if !host_f32(&[x]) {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1(act)?))
}

impl CustomOp1 for Activation {
    fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "mnemo-relu",
            Activation::Relu6 => "mnemo-relu6",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = host(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        let f: fn(f32) -> f32 = match self {
            Activation::Relu => |v| v.max(0.0),
            Activation::Relu6 => |v| v.clamp(0.0, 6.0),
        };
        y.par_chunks_mut(1 << 14)
            .zip(x.par_chunks(1 << 14))
            .for_each(|(o, i)| o.iter_mut().zip(i).for_each(|(o, &v)| *o = f(v)));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let what = self.name();
        let d: fn(f32) -> f32 = match self {
            Activation::Relu => |v| if v > 0.0 { 1.0 } else { 0.0 },
            Activation::Relu6 => |v| if v > 0.0 && v < 6.0 { 1.0 } else { 0.0 },
        };
        let out = with_values(x, what, |xs| {
            with_values(grad, what, |dy| {
                if dy.len() != xs.len() {
                    bail!("{what}: gradient of shape {:?}", grad.dims())
                }
                let mut out = vec![0f32; xs.len()];
                out.par_chunks_mut(1 << 14)
                    .zip(xs.par_chunks(1 << 14).zip(dy.par_chunks(1 << 14)))
                    .for_each(|(o, (xi, gi))| {
                        for ((o, &v), &g) in o.iter_mut().zip(xi).zip(gi) {
                            *o = g * d(v);
                        }
                    });
                Ok(out)
            })
        })?;
        Ok(Some(Tensor::from_vec(out, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// candle's ops for the same batchnorm (the path these kernels replace).
    fn reference(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
        let c = w.dim(0).unwrap();
        let shape: Vec<usize> = (0..x.rank()).map(|d| if d == 1 { c } else { 1 }).collect();
        let mut mean = x.clone();
        for d in (0..x.rank()).rev().filter(|&d| d != 1) {
            mean = mean.mean_keepdim(d).unwrap();
        }
        let xc = x.broadcast_sub(&mean).unwrap();
        let mut var = xc.sqr().unwrap();
        for d in (0..x.rank()).rev().filter(|&d| d != 1) {
            var = var.mean_keepdim(d).unwrap();
        }
        xc.broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w.reshape(shape.as_slice()).unwrap())
            .unwrap()
            .broadcast_add(&b.reshape(shape.as_slice()).unwrap())
            .unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
            / scale
    }

    #[test]
    fn train_batchnorm_matches_candles_ops_forward_and_backward() {
        let dev = Device::Cpu;
        for dims in [vec![4, 3, 5, 7], vec![6, 4], vec![2, 5, 3]] {
            let c = dims[1];
            let x = Var::from_tensor(
                &(Tensor::randn(0f32, 2.0, dims.as_slice(), &dev).unwrap() + 1.5).unwrap(),
            )
            .unwrap();
            let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, c, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, c, &dev).unwrap()).unwrap();
            // A loss that weights every output differently, so all gradient terms matter.
            let g = Tensor::randn(0f32, 1.0, dims.as_slice(), &dev).unwrap();
            let (y, stats) = batch_norm_train(&x, &w, &b, 1e-3).unwrap().unwrap();
            let want = reference(&x, &w, &b, 1e-3);
            assert!(max_rel(&y, &want) < 1e-5, "{dims:?} forward");
            assert_eq!(stats.count, dims[0] * dims[2..].iter().product::<usize>());
            let got = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let exp = (want * &g).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
                let e = max_rel(got.get(v).unwrap(), exp.get(v).unwrap());
                assert!(e < 1e-4, "{dims:?} d{name}: {e}");
            }
        }
    }

    #[test]
    fn eval_batchnorm_uses_the_running_statistics() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 2, 4, 4), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::new(&[1.5f32, -0.5], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0.1f32, 0.2], &dev).unwrap()).unwrap();
        let rm = Tensor::new(&[0.3f32, -0.2], &dev).unwrap();
        let rv = Tensor::new(&[2.0f32, 0.5], &dev).unwrap();
        let y = batch_norm_eval(&x, &w, &b, &rm, &rv, 1e-5)
            .unwrap()
            .unwrap();
        let s = [(2.0f64 + 1e-5).sqrt(), (0.5f64 + 1e-5).sqrt()];
        let xv = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ws = [1.5f64, -0.5];
        for (i, (&xi, &yi)) in xv.iter().zip(&yv).enumerate() {
            let c = (i / 16) % 2;
            let want = (xi as f64 - [0.3, -0.2][c]) / s[c] * ws[c] + [0.1, 0.2][c];
            assert!((yi as f64 - want).abs() < 1e-5, "{i}");
        }
        // dx = w / sqrt(var + eps) · dy; dbias = Σ dy.
        let grads = y.sum_all().unwrap().backward().unwrap();
        let dx = grads
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            (dx[0] as f64 - 1.5 / s[0]).abs() < 1e-6 && (dx[16] as f64 + 0.5 / s[1]).abs() < 1e-6
        );
        let db = grads.get(&b).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(db, [48.0, 48.0]);
    }

    #[test]
    fn activations_match_their_definitions_and_gradients() {
        let dev = Device::Cpu;
        let v = [-7.0f32, -1.0, 0.0, 0.5, 3.0, 6.0, 6.5, 20.0];
        let x = Var::from_tensor(&Tensor::new(&v, &dev).unwrap()).unwrap();
        for (act, f, d) in [
            (
                Activation::Relu,
                (|v: f32| v.max(0.0)) as fn(f32) -> f32,
                (|v: f32| (v > 0.0) as u8 as f32) as fn(f32) -> f32,
            ),
            (
                Activation::Relu6,
                |v| v.clamp(0.0, 6.0),
                |v| (v > 0.0 && v < 6.0) as u8 as f32,
            ),
        ] {
            let y = activation(&x, act).unwrap().unwrap();
            assert_eq!(y.to_vec1::<f32>().unwrap(), v.map(f));
            let g = y.sum_all().unwrap().backward().unwrap();
            assert_eq!(
                g.get(&x).unwrap().to_vec1::<f32>().unwrap(),
                v.map(d),
                "{act:?}"
            );
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 16, 9, 9), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.2, 16, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.2, 16, &dev).unwrap()).unwrap();
        let g = Tensor::randn(0f32, 1.0, (8, 16, 9, 9), &dev).unwrap();
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| {
                    let (y, _) = batch_norm_train(&x, &w, &b, 1e-5).unwrap().unwrap();
                    let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                    [
                        y,
                        grads.get(&x).unwrap().clone(),
                        grads.get(&w).unwrap().clone(),
                    ]
                    .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                })
        };
        assert_eq!(run(1), run(3));
    }
}
