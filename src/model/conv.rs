//! A host conv2d for f32 tensors on the CPU, forward and backward, plugged into candle's
//! autograd as a `CustomOp2` over (input, weight). candle 0.11's own CPU conv2d is im2col +
//! gemm with a scalar per-element im2col, and its backward is a transposed conv plus a second
//! im2col (33% of a small CNN's training step, bench/vs_torch.md). Here:
//!
//! - depthwise (groups = in = out channels): direct shifted multiply-adds over the rows of a
//!   zero-padded plane, split into column phases when the stride is > 1, so that every inner
//!   loop runs over contiguous memory and vectorises; parallel over planes (forward, input
//!   gradient) or channels (weight gradient);
//! - every other conv (any groups, dilation 1): per image a row-copy im2col (none at all for
//!   a 1×1 stride-1 conv, whose im2col is the image) and one gemm per group; the input
//!   gradient is a gemm and a col2im, the weight gradient gemms accumulated over chunks of
//!   the batch.
//!
//! Results do not depend on the thread count: every output element is computed by one task
//! in an order fixed by the shapes, and the weight gradient's partial sums come from a number
//! of batch chunks fixed by the shapes and are added in chunk order. Other devices and dtypes
//! go to candle's conv2d.

use crate::linalg::{matmul, Parallelism};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// conv2d with dilation 1: this module's kernels for f32 on the CPU, candle's conv2d otherwise
/// (other devices or dtypes, or shapes candle refuses, so that its error is the one reported).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    groups: usize,
) -> Result<Tensor> {
    // candle panics (or wraps around, in release) on a kernel larger than the padded input.
    if let (&[.., h, w], &[.., kh, kw]) = (x.dims(), w.dims()) {
        if stride == 0 || kh > h + 2 * padding || kw > w + 2 * padding {
            bail!(
                "conv2d: kernel {kh}x{kw} (stride {stride}) does not fit input {h}x{w} \
                 padded by {padding}"
            )
        }
    }
    let host = x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && Geom::new(x.dims(), w.dims(), stride, padding, groups).is_some();
    if !host {
        return x.conv2d(w, padding, stride, 1, groups);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    x.apply_op2(
        &w,
        Conv2d {
            stride,
            padding,
            groups,
        },
    )
}

/// The op candle's autograd records: its backward calls back into this module.
#[derive(Clone, Copy, Debug)]
struct Conv2d {
    stride: usize,
    padding: usize,
    groups: usize,
}

impl Conv2d {
    fn geom(&self, x: &[usize], w: &[usize]) -> Result<Geom> {
        match Geom::new(x, w, self.stride, self.padding, self.groups) {
            Some(g) => Ok(g),
            None => bail!("conv2d: input {x:?} and weight {w:?} do not fit {self:?}"),
        }
    }
}

/// The f32 elements of a contiguous operand.
fn host_slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    super::norm::host(s, l, "conv2d")
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "mnemo-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let geo = self.geom(l1.dims(), l2.dims())?;
        let y = forward(&geo, host_slice(s1, l1)?, host_slice(s2, l2)?);
        Ok((
            CpuStorage::F32(y),
            Shape::from((geo.n, geo.cout, geo.ho, geo.wo)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let geo = self.geom(x.dims(), w.dims())?;
        // An input that is plain data (the first layer's batch) needs no gradient.
        let (need_dx, need_dw) = (x.track_op(), w.track_op());
        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
        let (dx, dw) = {
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = w.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs)) = (&*xs, &*ws, &*gs) else {
                bail!("conv2d: backward of the host kernel on a non-CPU tensor")
            };
            let (xh, wh, gh) = (
                host_slice(xs, xl)?,
                host_slice(ws, wl)?,
                host_slice(gs, gl)?,
            );
            if gh.len() != geo.n * geo.cout * geo.ho * geo.wo {
                bail!("conv2d: gradient of shape {:?}", grad.dims())
            }
            (
                need_dx.then(|| grad_input(&geo, wh, gh)),
                need_dw.then(|| grad_weight(&geo, xh, gh)),
            )
        };
        Ok((
            dx.map(|v| Tensor::from_vec(v, x.shape(), x.device()))
                .transpose()?,
            dw.map(|v| Tensor::from_vec(v, w.shape(), w.device()))
                .transpose()?,
        ))
    }
}

/// Shapes of one conv: input [n, cin, h, w], weight [cout, cin/g, k, k], output
/// [n, cout, ho, wo]; stride s, padding p, groups g.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    k: usize,
    s: usize,
    p: usize,
    g: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    /// `None` for anything this module does not compute (candle then reports or handles it).
    fn new(x: &[usize], wt: &[usize], s: usize, p: usize, g: usize) -> Option<Geom> {
        let (&[n, cin, h, w], &[cout, cin_g, k, k2]) = (x, wt) else {
            return None;
        };
        let ok = k == k2
            && k > 0
            && s > 0
            && g > 0
            && cin_g > 0
            && cin_g.checked_mul(g) == Some(cin)
            && cout % g == 0
            && h + 2 * p >= k
            && w + 2 * p >= k
            && n > 0
            && cout > 0;
        ok.then(|| Geom {
            n,
            cin,
            h,
            w,
            cout,
            k,
            s,
            p,
            g,
            ho: (h + 2 * p - k) / s + 1,
            wo: (w + 2 * p - k) / s + 1,
        })
    }

    fn depthwise(&self) -> bool {
        self.g == self.cin && self.cout == self.cin
    }

    /// im2col rows (cin·k·k) and columns (ho·wo).
    fn col(&self) -> (usize, usize) {
        (self.cin * self.k * self.k, self.ho * self.wo)
    }

    /// The im2col row of input channel c under kernel tap (ky, kx): by group, then tap, then
    /// channel within the group, the order candle's conv2d sums in, so that the forward pass
    /// rounds exactly as it did before this module (torch-parity margins stay as they were).
    fn row(&self, c: usize, ky: usize, kx: usize) -> usize {
        let cin_g = self.cin / self.g;
        ((c / cin_g * self.k + ky) * self.k + kx) * cin_g + c % cin_g
    }

    /// The weight [cout, cin/g, k, k] as [cout, k, k, cin/g], matching `row`.
    fn tap_major(&self, w: &[f32]) -> Vec<f32> {
        let (cin_g, kk) = (self.cin / self.g, self.k * self.k);
        let mut out = vec![0f32; w.len()];
        for (src, dst) in w
            .chunks_exact(cin_g * kk)
            .zip(out.chunks_exact_mut(cin_g * kk))
        {
            for c in 0..cin_g {
                for t in 0..kk {
                    dst[t * cin_g + c] = src[c * kk + t];
                }
            }
        }
        out
    }

    /// The inverse of `tap_major`.
    fn channel_major(&self, w: &[f32]) -> Vec<f32> {
        let (cin_g, kk) = (self.cin / self.g, self.k * self.k);
        let mut out = vec![0f32; w.len()];
        for (src, dst) in w
            .chunks_exact(cin_g * kk)
            .zip(out.chunks_exact_mut(cin_g * kk))
        {
            for c in 0..cin_g {
                for t in 0..kk {
                    dst[c * kk + t] = src[t * cin_g + c];
                }
            }
        }
        out
    }

    /// A 1×1 stride-1 unpadded conv's im2col is the image itself.
    fn identity_col(&self) -> bool {
        self.k == 1 && self.s == 1 && self.p == 0
    }

    /// The output columns `ox` whose input column `ox·s + kx − p` lies inside the image.
    fn valid_ox(&self, kx: usize) -> (usize, usize) {
        let off = kx as isize - self.p as isize;
        let s = self.s as isize;
        let lo = if off < 0 { (-off + s - 1) / s } else { 0 };
        let last = self.w as isize - 1 - off;
        let hi = if last < 0 { 0 } else { last / s + 1 };
        let lo = (lo as usize).min(self.wo);
        (lo, (hi as usize).clamp(lo, self.wo))
    }
}

fn forward(geo: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    if geo.depthwise() {
        dw_forward(geo, x, w)
    } else {
        gemm_forward(geo, x, w)
    }
}

fn grad_input(geo: &Geom, w: &[f32], g: &[f32]) -> Vec<f32> {
    if geo.depthwise() {
        dw_grad_input(geo, w, g)
    } else {
        gemm_grad_input(geo, w, g)
    }
}

fn grad_weight(geo: &Geom, x: &[f32], g: &[f32]) -> Vec<f32> {
    if geo.depthwise() {
        dw_grad_weight(geo, x, g)
    } else {
        gemm_grad_weight(geo, x, g)
    }
}

fn threads() -> usize {
    rayon::current_num_threads()
}

// ---------------------------------------------------------------------------------------------
// Depthwise: padded planes split into column phases.
// ---------------------------------------------------------------------------------------------

/// A zero-padded plane ([h+2p, w+2p]) stored as `s` column phases: phase r, row y, column j
/// holds padded column j·s + r. Output column ox under kernel column kx then reads phase
/// kx mod s at columns ox + kx/s: a contiguous run for every stride.
#[derive(Clone, Copy)]
struct Phases {
    hp: usize,
    pw: usize,
}

impl Phases {
    fn new(geo: &Geom) -> Phases {
        let wp = geo.w + 2 * geo.p;
        Phases {
            hp: geo.h + 2 * geo.p,
            pw: wp.div_ceil(geo.s),
        }
    }

    fn len(&self, geo: &Geom) -> usize {
        geo.s * self.hp * self.pw
    }

    /// The `wo` values that kernel tap (ky, kx) meets along output row oy.
    #[inline(always)]
    fn run(&self, geo: &Geom, oy: usize, ky: usize, kx: usize) -> usize {
        ((kx % geo.s) * self.hp + oy * geo.s + ky) * self.pw + kx / geo.s
    }

    fn fill(&self, geo: &Geom, plane: &[f32], buf: &mut [f32]) {
        buf.fill(0.0);
        let (s, p, w) = (geo.s, geo.p, geo.w);
        for (iy, row) in plane.chunks_exact(w).enumerate() {
            let y = iy + p;
            if s == 1 {
                buf[y * self.pw + p..][..w].copy_from_slice(row);
            } else {
                for (ix, &v) in row.iter().enumerate() {
                    let c = ix + p;
                    buf[((c % s) * self.hp + y) * self.pw + c / s] = v;
                }
            }
        }
    }

    /// The inverse of `fill` for a gradient: the padded plane's interior back into `plane`.
    fn crop(&self, geo: &Geom, buf: &[f32], plane: &mut [f32]) {
        let (s, p, w) = (geo.s, geo.p, geo.w);
        for (iy, row) in plane.chunks_exact_mut(w).enumerate() {
            let y = iy + p;
            if s == 1 {
                row.copy_from_slice(&buf[y * self.pw + p..][..w]);
            } else {
                for (ix, v) in row.iter_mut().enumerate() {
                    let c = ix + p;
                    *v = buf[((c % s) * self.hp + y) * self.pw + c / s];
                }
            }
        }
    }
}

/// dst += a·src, elementwise (vectorises; no FMA, so every path rounds alike).
#[inline(always)]
fn axpy(dst: &mut [f32], a: f32, src: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d += a * v;
    }
}

/// Σ a·b in eight fixed lanes (a reduction the compiler may vectorise), then in lane order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (ah, at) = a.split_at(n / 8 * 8);
    let (bh, bt) = b.split_at(n / 8 * 8);
    for (x, y) in ah.chunks_exact(8).zip(bh.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in at.iter().zip(bt).enumerate() {
        acc[l] += x * y;
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// Runs `$body` compiled for AVX when the CPU has it (the loops above then use 8-wide
/// registers), else as is; the arithmetic is the same either way.
macro_rules! with_avx {
    ($name:ident ( $($arg:ident : $ty:ty),* ) $body:block) => {
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx")]
            unsafe fn avx($($arg: $ty),*) {
                generic($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: the CPU supports AVX (checked just above).
                return unsafe { avx($($arg),*) };
            }
            generic($($arg),*)
        }
    };
}

with_avx!(dw_plane_forward(geo: &Geom, ph: &Phases, buf: &[f32], wc: &[f32], out: &mut [f32]) {
    let (k, wo) = (geo.k, geo.wo);
    for (oy, orow) in out.chunks_exact_mut(wo).enumerate() {
        orow.fill(0.0);
        for ky in 0..k {
            for kx in 0..k {
                axpy(orow, wc[ky * k + kx], &buf[ph.run(geo, oy, ky, kx)..][..wo]);
            }
        }
    }
});

with_avx!(dw_plane_grad_input(geo: &Geom, ph: &Phases, wc: &[f32], g: &[f32], buf: &mut [f32]) {
    let (k, wo) = (geo.k, geo.wo);
    buf.fill(0.0);
    for (oy, grow) in g.chunks_exact(wo).enumerate() {
        for ky in 0..k {
            for kx in 0..k {
                axpy(&mut buf[ph.run(geo, oy, ky, kx)..][..wo], wc[ky * k + kx], grow);
            }
        }
    }
});

with_avx!(dw_plane_grad_weight(geo: &Geom, ph: &Phases, buf: &[f32], g: &[f32], acc: &mut [f64]) {
    let (k, wo) = (geo.k, geo.wo);
    for ky in 0..k {
        for kx in 0..k {
            let mut t = 0f32;
            for (oy, grow) in g.chunks_exact(wo).enumerate() {
                t += dot(grow, &buf[ph.run(geo, oy, ky, kx)..][..wo]);
            }
            acc[ky * k + kx] += f64::from(t);
        }
    }
});

fn dw_forward(geo: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let ph = Phases::new(geo);
    let (plane, oplane, kk) = (geo.h * geo.w, geo.ho * geo.wo, geo.k * geo.k);
    let mut y = vec![0f32; geo.n * geo.cout * oplane];
    y.par_chunks_mut(oplane).enumerate().for_each_init(
        || vec![0f32; ph.len(geo)],
        |buf, (i, out)| {
            let c = i % geo.cin;
            ph.fill(geo, &x[i * plane..][..plane], buf);
            dw_plane_forward(geo, &ph, buf, &w[c * kk..][..kk], out);
        },
    );
    y
}

fn dw_grad_input(geo: &Geom, w: &[f32], g: &[f32]) -> Vec<f32> {
    let ph = Phases::new(geo);
    let (plane, oplane, kk) = (geo.h * geo.w, geo.ho * geo.wo, geo.k * geo.k);
    let mut dx = vec![0f32; geo.n * geo.cin * plane];
    dx.par_chunks_mut(plane).enumerate().for_each_init(
        || vec![0f32; ph.len(geo)],
        |buf, (i, out)| {
            let c = i % geo.cin;
            dw_plane_grad_input(
                geo,
                &ph,
                &w[c * kk..][..kk],
                &g[i * oplane..][..oplane],
                buf,
            );
            ph.crop(geo, buf, out);
        },
    );
    dx
}

fn dw_grad_weight(geo: &Geom, x: &[f32], g: &[f32]) -> Vec<f32> {
    let ph = Phases::new(geo);
    let (plane, oplane, kk) = (geo.h * geo.w, geo.ho * geo.wo, geo.k * geo.k);
    let mut dw = vec![0f32; geo.cout * kk];
    // One task per channel, its images in order: the sum over the batch is fixed.
    dw.par_chunks_mut(kk).enumerate().for_each_init(
        || (vec![0f32; ph.len(geo)], vec![0f64; kk]),
        |(buf, acc), (c, out)| {
            acc.fill(0.0);
            for b in 0..geo.n {
                let i = b * geo.cin + c;
                ph.fill(geo, &x[i * plane..][..plane], buf);
                dw_plane_grad_weight(geo, &ph, buf, &g[i * oplane..][..oplane], acc);
            }
            for (o, a) in out.iter_mut().zip(acc.iter()) {
                *o = *a as f32;
            }
        },
    );
    dw
}

// ---------------------------------------------------------------------------------------------
// Everything else: im2col + gemm per image and group.
// ---------------------------------------------------------------------------------------------

/// One image [cin, h, w] unfolded into `col` [cin·k·k, ho·wo], rows in `Geom::row` order;
/// each output row is a run of copies (stride 1) or a strided gather, with zeros where the
/// window leaves the image.
fn im2col(geo: &Geom, x: &[f32], col: &mut [f32]) {
    let (h, w, k, s, p, wo) = (geo.h, geo.w, geo.k, geo.s, geo.p, geo.wo);
    let (_, cols) = geo.col();
    let ranges: Vec<(usize, usize)> = (0..k).map(|kx| geo.valid_ox(kx)).collect();
    for c in 0..geo.cin {
        let plane = &x[c * h * w..][..h * w];
        for ky in 0..k {
            for (kx, &(lo, hi)) in ranges.iter().enumerate() {
                let row = &mut col[geo.row(c, ky, kx) * cols..][..cols];
                for (oy, dst) in row.chunks_exact_mut(wo).enumerate() {
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= h as isize || lo == hi {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * w..][..w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let start = lo * s + kx - p;
                    if s == 1 {
                        dst[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
                    } else {
                        for (d, v) in dst[lo..hi].iter_mut().zip(src[start..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of `im2col`: `col`'s entries added back onto the image `x` (zeroed first), in
/// a fixed order.
fn col2im(geo: &Geom, col: &[f32], x: &mut [f32]) {
    let (h, w, k, s, p, wo) = (geo.h, geo.w, geo.k, geo.s, geo.p, geo.wo);
    let (_, cols) = geo.col();
    let ranges: Vec<(usize, usize)> = (0..k).map(|kx| geo.valid_ox(kx)).collect();
    x.fill(0.0);
    for c in 0..geo.cin {
        let plane = &mut x[c * h * w..][..h * w];
        for ky in 0..k {
            for (kx, &(lo, hi)) in ranges.iter().enumerate() {
                let row = &col[geo.row(c, ky, kx) * cols..][..cols];
                for (oy, src) in row.chunks_exact(wo).enumerate() {
                    let iy = (oy * s + ky) as isize - p as isize;
                    if iy < 0 || iy >= h as isize || lo == hi {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * w..][..w];
                    let start = lo * s + kx - p;
                    if s == 1 {
                        for (d, v) in dst[start..start + hi - lo].iter_mut().zip(&src[lo..hi]) {
                            *d += *v;
                        }
                    } else {
                        for (d, v) in dst[start..].iter_mut().step_by(s).zip(&src[lo..hi]) {
                            *d += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Runs `f(image, out, scratch, gemm parallelism)` for every image's slice of `out`: images
/// in parallel with single-threaded gemms when there are enough of them, else one after
/// another with gemm's own threads (a per-example loop). Either way each image's result is
/// computed alike.
fn per_image<F>(out: &mut [f32], per: usize, scratch: usize, f: F)
where
    F: Fn(usize, &mut [f32], &mut [f32], Parallelism) + Sync,
{
    let t = threads();
    let n = out.len() / per;
    if t > 1 && n >= t {
        out.par_chunks_mut(per).enumerate().for_each_init(
            || vec![0f32; scratch],
            |buf, (i, o)| f(i, o, buf, Parallelism::None),
        );
    } else {
        let par = if t > 1 {
            Parallelism::Rayon(t)
        } else {
            Parallelism::None
        };
        let mut buf = vec![0f32; scratch];
        for (i, o) in out.chunks_mut(per).enumerate() {
            f(i, o, &mut buf, par);
        }
    }
}

fn gemm_forward(geo: &Geom, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (rows, cols) = geo.col();
    let plane = geo.cin * geo.h * geo.w;
    let (cin_g, cout_g, kk) = (geo.cin / geo.g, geo.cout / geo.g, geo.k * geo.k);
    let (kg, per) = (cin_g * kk, geo.cout * cols);
    let scratch = if geo.identity_col() { 0 } else { rows * cols };
    let w = &geo.tap_major(w);
    let mut y = vec![0f32; geo.n * per];
    per_image(&mut y, per, scratch, |i, out, buf, par| {
        let xi = &x[i * plane..][..plane];
        let col: &[f32] = if geo.identity_col() {
            xi
        } else {
            im2col(geo, xi, buf);
            buf
        };
        for gi in 0..geo.g {
            matmul(
                (cout_g, cols, kg),
                &mut out[gi * cout_g * cols..],
                false,
                &w[gi * cout_g * kg..],
                (kg, 1),
                &col[gi * kg * cols..],
                (cols, 1),
                par,
            );
        }
    });
    y
}

fn gemm_grad_input(geo: &Geom, w: &[f32], g: &[f32]) -> Vec<f32> {
    let (rows, cols) = geo.col();
    let plane = geo.cin * geo.h * geo.w;
    let (cin_g, cout_g, kk) = (geo.cin / geo.g, geo.cout / geo.g, geo.k * geo.k);
    let kg = cin_g * kk;
    let scratch = if geo.identity_col() { 0 } else { rows * cols };
    let w = &geo.tap_major(w);
    let mut dx = vec![0f32; geo.n * plane];
    per_image(&mut dx, plane, scratch, |i, out, buf, par| {
        let gi_img = &g[i * geo.cout * cols..][..geo.cout * cols];
        // dcol[group rows] = W_groupᵀ · G[group channels]; for a 1×1 stride-1 conv dcol is dx.
        let dcol: &mut [f32] = if geo.identity_col() { out } else { buf };
        for gi in 0..geo.g {
            matmul(
                (kg, cols, cout_g),
                &mut dcol[gi * kg * cols..],
                false,
                &w[gi * cout_g * kg..],
                (1, kg),
                &gi_img[gi * cout_g * cols..],
                (cols, 1),
                par,
            );
        }
        if !geo.identity_col() {
            col2im(geo, buf, out);
        }
    });
    dx
}

/// The number of batch chunks whose weight-gradient partial sums are added in order: fixed by
/// the shapes (never by the thread count), at most 8, and fewer when the partials would take
/// more than 32 MB.
fn chunks(geo: &Geom) -> usize {
    let wlen = geo.cout * (geo.cin / geo.g) * geo.k * geo.k;
    let mut c = geo.n.min(8);
    while c > 1 && c * wlen > 8 << 20 {
        c /= 2;
    }
    c
}

fn gemm_grad_weight(geo: &Geom, x: &[f32], g: &[f32]) -> Vec<f32> {
    let (rows, cols) = geo.col();
    let plane = geo.cin * geo.h * geo.w;
    let (cin_g, cout_g, kk) = (geo.cin / geo.g, geo.cout / geo.g, geo.k * geo.k);
    let kg = cin_g * kk;
    let wlen = geo.cout * kg;
    let nc = chunks(geo);
    let t = threads();
    let chunk = |c: usize, par: Parallelism| -> Vec<f32> {
        let mut dw = vec![0f32; wlen];
        let mut buf = vec![0f32; if geo.identity_col() { 0 } else { rows * cols }];
        for i in c * geo.n / nc..(c + 1) * geo.n / nc {
            let xi = &x[i * plane..][..plane];
            let col: &[f32] = if geo.identity_col() {
                xi
            } else {
                im2col(geo, xi, &mut buf);
                &buf
            };
            let gi_img = &g[i * geo.cout * cols..][..geo.cout * cols];
            // dW_group += G[group channels] · col[group rows]ᵀ
            for gi in 0..geo.g {
                matmul(
                    (cout_g, kg, cols),
                    &mut dw[gi * cout_g * kg..],
                    true,
                    &gi_img[gi * cout_g * cols..],
                    (cols, 1),
                    &col[gi * kg * cols..],
                    (1, cols),
                    par,
                );
            }
        }
        dw
    };
    let parts: Vec<Vec<f32>> = if t > 1 && nc > 1 {
        (0..nc)
            .into_par_iter()
            .map(|c| chunk(c, Parallelism::None))
            .collect()
    } else {
        let par = if t > 1 {
            Parallelism::Rayon(t)
        } else {
            Parallelism::None
        };
        (0..nc).map(|c| chunk(c, par)).collect()
    };
    let mut parts = parts.into_iter();
    let mut dw = parts.next().unwrap_or_else(|| vec![0f32; wlen]);
    for part in parts {
        for (d, v) in dw.iter_mut().zip(&part) {
            *d += v;
        }
    }
    geo.channel_major(&dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, WithDType};

    fn host_vec<T: WithDType>(t: &Tensor) -> Vec<T> {
        t.flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("host vector")
    }

    /// (n, cin, cout, h, w, k, stride, padding, groups)
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    );

    const CASES: &[Case] = &[
        // depthwise 3×3 and 5×5, stride 1 and 2, odd and even sizes. (Height and width
        // leave the same remainder under the stride: candle's own conv2d backward takes the
        // transposed conv's output padding from the height alone.)
        (3, 5, 5, 9, 7, 3, 1, 1, 5),
        (3, 5, 5, 8, 6, 3, 2, 1, 5),
        (2, 4, 4, 11, 10, 5, 1, 2, 4),
        (2, 4, 4, 11, 9, 5, 2, 2, 4),
        (2, 3, 3, 6, 6, 3, 1, 0, 3),
        (1, 6, 6, 2, 2, 3, 1, 1, 6),
        // tiny maps deep in a network: 1×1, 2×2 and 3×3 under 3×3 and 5×5 windows
        (4, 3, 3, 1, 1, 3, 1, 1, 3),
        (4, 3, 3, 1, 1, 5, 2, 2, 3),
        (4, 3, 3, 2, 2, 5, 2, 2, 3),
        (4, 3, 3, 3, 3, 5, 2, 2, 3),
        (4, 3, 3, 2, 2, 3, 2, 1, 3),
        (4, 3, 5, 1, 1, 3, 1, 1, 1),
        (4, 3, 5, 2, 2, 3, 2, 1, 1),
        // 1×1, stride 1 and 2
        (4, 6, 10, 5, 7, 1, 1, 0, 1),
        (4, 6, 10, 5, 7, 1, 2, 0, 1),
        (3, 7, 5, 1, 1, 1, 1, 0, 1),
        // general groups = 1: stem-like 3×3 s2, 3×3 s1, 5×5, 2×2 s2, 1×1 with padding
        (3, 3, 8, 13, 11, 3, 2, 1, 1),
        (2, 6, 4, 8, 9, 3, 1, 1, 1),
        (2, 2, 3, 9, 9, 5, 1, 2, 1),
        (2, 3, 4, 8, 8, 2, 2, 0, 1),
        (2, 3, 4, 5, 5, 1, 1, 1, 1),
        (2, 3, 4, 7, 7, 3, 3, 0, 1),
        // other group counts: the CNN fixture's 4→8 in 2 groups, a depth multiplier of 2
        (3, 4, 8, 7, 7, 3, 2, 1, 2),
        (2, 3, 6, 6, 5, 3, 1, 1, 3),
        (2, 6, 6, 6, 6, 1, 1, 0, 3),
    ];

    fn rand(seed: u64, shape: &[usize]) -> Tensor {
        let mut r = crate::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| r.uniform(-1.0, 1.0) as f32).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Output, input gradient, weight gradient of Σ y·r through `conv`.
    fn run(
        case: Case,
        conv: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (n, cin, cout, h, w, k, _, _, g) = case;
        let x = Var::from_tensor(&rand(1, &[n, cin, h, w])).unwrap();
        let wt = Var::from_tensor(&rand(2, &[cout, cin / g, k, k])).unwrap();
        let y = conv(x.as_tensor(), wt.as_tensor()).unwrap();
        let r = rand(3, y.dims());
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        (
            host_vec(&y),
            host_vec(grads.get(x.as_tensor()).unwrap()),
            host_vec(grads.get(wt.as_tensor()).unwrap()),
        )
    }

    fn close(what: &str, case: Case, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what} {case:?}");
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-5 * scale,
            "{what} {case:?}: max error {err} (scale {scale})"
        );
    }

    #[test]
    fn matches_candle_forward_and_gradients() {
        for &case in CASES {
            let (_, _, _, _, _, _, s, p, g) = case;
            assert!(Geom::new(
                &[case.0, case.1, case.3, case.4],
                &[case.2, case.1 / g, case.5, case.5],
                s,
                p,
                g
            )
            .is_some());
            let ours = run(case, |x, w| conv2d(x, w, p, s, g));
            let theirs = run(case, |x, w| x.conv2d(w, p, s, 1, g));
            close("output", case, &ours.0, &theirs.0);
            close("input gradient", case, &ours.1, &theirs.1);
            close("weight gradient", case, &ours.2, &theirs.2);
        }
    }

    /// The definition in f64: output, input gradient and weight gradient of Σ y·r.
    fn naive(case: Case, x: &[f32], wt: &[f32], r: &[f32]) -> [Vec<f32>; 3] {
        let (n, cin, cout, h, w, k, s, p, g) = case;
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let (cin_g, cout_g) = (cin / g, cout / g);
        let mut y = vec![0f64; n * cout * ho * wo];
        let mut dx = vec![0f64; x.len()];
        let mut dw = vec![0f64; wt.len()];
        for b in 0..n {
            for co in 0..cout {
                for ci_g in 0..cin_g {
                    let ci = co / cout_g * cin_g + ci_g;
                    for ky in 0..k {
                        for kx in 0..k {
                            let wi = ((co * cin_g + ci_g) * k + ky) * k + kx;
                            for oy in 0..ho {
                                for ox in 0..wo {
                                    let (iy, ix) = (oy * s + ky, ox * s + kx);
                                    if iy < p || ix < p || iy - p >= h || ix - p >= w {
                                        continue;
                                    }
                                    let xi = ((b * cin + ci) * h + iy - p) * w + ix - p;
                                    let yi = ((b * cout + co) * ho + oy) * wo + ox;
                                    y[yi] += f64::from(wt[wi]) * f64::from(x[xi]);
                                    dx[xi] += f64::from(wt[wi]) * f64::from(r[yi]);
                                    dw[wi] += f64::from(x[xi]) * f64::from(r[yi]);
                                }
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw].map(|v| v.into_iter().map(|v| v as f32).collect())
    }

    #[test]
    fn matches_the_definition_on_any_aspect() {
        // Height and width of different parity at stride 2, where candle's backward fails.
        for case in [
            (2, 4, 4, 9, 8, 3, 2, 1, 4),
            (2, 3, 5, 8, 11, 3, 2, 1, 1),
            (2, 4, 6, 6, 9, 1, 2, 0, 1),
            // EfficientNet-Lite's depthwise convs after their static padding (padding 0):
            // 16 → 17 (0,1) at stride 2, 8 → 11 (1,2), 2 → 5 (1,2), 1 → 5 (2,2), 1 → 3 (1,1).
            (2, 4, 4, 17, 17, 3, 2, 0, 4),
            (2, 4, 4, 11, 11, 5, 2, 0, 4),
            (8, 3, 3, 5, 5, 5, 2, 0, 3),
            (8, 3, 3, 5, 5, 5, 1, 0, 3),
            (8, 3, 3, 3, 3, 3, 1, 0, 3),
            (8, 3, 5, 17, 17, 3, 2, 0, 1),
        ] {
            let (n, cin, cout, h, w, k, s, p, g) = case;
            let x = Var::from_tensor(&rand(1, &[n, cin, h, w])).unwrap();
            let wt = Var::from_tensor(&rand(2, &[cout, cin / g, k, k])).unwrap();
            let y = conv2d(x.as_tensor(), wt.as_tensor(), p, s, g).unwrap();
            let r = rand(3, y.dims());
            let gr = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let [ny, ndx, ndw] = naive(
                case,
                &host_vec(x.as_tensor()),
                &host_vec(wt.as_tensor()),
                &host_vec(&r),
            );
            close("output", case, &host_vec(&y), &ny);
            close(
                "input gradient",
                case,
                &host_vec(gr.get(x.as_tensor()).unwrap()),
                &ndx,
            );
            close(
                "weight gradient",
                case,
                &host_vec(gr.get(wt.as_tensor()).unwrap()),
                &ndw,
            );
        }
    }

    #[test]
    fn same_bits_for_every_thread_count() {
        // Batches of 9: images in parallel and the 8 weight-gradient chunks both engage.
        let cases: &[Case] = &[
            (9, 6, 6, 8, 8, 3, 2, 1, 6),
            (9, 6, 6, 8, 8, 5, 1, 2, 6),
            (9, 6, 8, 8, 8, 1, 1, 0, 1),
            (9, 6, 8, 8, 8, 1, 2, 0, 1),
            (9, 3, 8, 9, 9, 3, 2, 1, 1),
            (9, 4, 8, 7, 7, 3, 1, 1, 2),
            (1, 3, 8, 9, 9, 3, 1, 1, 1),
        ];
        for &case in cases {
            let (.., s, p, g) = case;
            let on = |t: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .unwrap()
                    .install(|| run(case, |x, w| conv2d(x, w, p, s, g)))
            };
            let one = on(1);
            for t in [2, 3, 5] {
                assert!(one == on(t), "{case:?}: {t} threads differ from 1");
            }
        }
    }

    #[test]
    fn forward_rounds_as_candle_does_except_depthwise() {
        // The im2col rows follow candle's summation order, so everything but the depthwise
        // kernel gives candle's forward bit for bit (the torch-parity margins rely on it).
        for &case in CASES.iter().filter(|c| !(c.8 == c.1 && c.2 == c.1)) {
            let (.., s, p, g) = case;
            let ours = run(case, |x, w| conv2d(x, w, p, s, g));
            let theirs = run(case, |x, w| x.conv2d(w, p, s, 1, g));
            assert!(ours.0 == theirs.0, "{case:?}");
        }
    }

    #[test]
    fn no_input_gradient_for_plain_data() {
        let x = rand(1, &[2, 3, 6, 6]);
        let w = Var::from_tensor(&rand(2, &[4, 3, 3, 3])).unwrap();
        let y = conv2d(&x, w.as_tensor(), 1, 1, 1).unwrap();
        let grads = y.sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        assert!(grads.get(w.as_tensor()).is_some());
    }

    #[test]
    fn other_dtypes_and_bad_shapes_go_to_candle() {
        let x = rand(1, &[2, 3, 6, 6]).to_dtype(DType::F64).unwrap();
        let w = rand(2, &[4, 3, 3, 3]).to_dtype(DType::F64).unwrap();
        let ours: Vec<f64> = host_vec(&conv2d(&x, &w, 1, 1, 1).unwrap());
        let theirs: Vec<f64> = host_vec(&x.conv2d(&w, 1, 1, 1, 1).unwrap());
        assert_eq!(ours, theirs);
        // Channels that do not match the weight: candle's error, no panic.
        let x = rand(1, &[2, 5, 6, 6]);
        let w = rand(2, &[4, 3, 3, 3]);
        assert!(conv2d(&x, &w, 1, 1, 1).is_err());
        // A kernel larger than the padded input.
        let x = rand(1, &[1, 3, 2, 2]);
        assert!(conv2d(&x, &w, 0, 1, 1).is_err());
    }
}
