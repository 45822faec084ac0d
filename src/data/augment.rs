//! `data augment`: seeded random transforms drawn per example, following torchvision's
//! definitions, in this fixed order:
//!
//! 1. `RandomCrop(size, padding, fill)`: pad every side by `padding` pixels of `fill`, then
//!    crop `size` at an offset drawn uniformly (`top` in `0..=H+2p-h`, `left` likewise);
//! 2. `RandomHorizontalFlip(p)`: flip when a uniform draw in [0, 1) is below `p`;
//! 3. `RandomAffine(degrees, translate, fill)` without scale or shear: `angle` uniform in
//!    [lo, hi), translations `round(uniform(-max_dx, max_dx))` (Python's `round`, half to
//!    even) with `max_dx = a·W`, `max_dy = b·H` of the image at that point, or a range in
//!    pixels; applied as `torchvision.transforms.functional.affine` applies it to a tensor:
//!    `_get_inverse_affine_matrix` about the centre (f64), the matrix as f32, the output
//!    grid of pixel centres, `grid_sample(align_corners=False)` (nearest: round half to even;
//!    bilinear: four taps weighted in f32, torch's order), the fill through the extra
//!    all-ones channel torchvision samples with the image (nearest: fill where that channel is
//!    0; bilinear: `v·m + (1 − m)·fill`), and U8 rounded half to even as its
//!    `_cast_squeeze_out` does. Positive angles turn clockwise as displayed (F.affine's
//!    convention; F.rotate negates);
//! 4. additive Gaussian noise `x + std·z`, z ~ N(0, 1) (Box–Muller from the example's own
//!    stream), in the units the model sees: F32 as stored, U8 on its k/255 scale (the value
//!    `k + 255·std·z` rounded half to even and clamped to 0–255).
//!
//! Masks (`[N, H, W]` targets) get the same geometric draw (crop, flip, affine) with nearest
//! interpolation and their own fill, the void label 255 by default, so padded or uncovered
//! pixels are left out of losses and metrics; noise never touches them. Class ids and
//! multi-hot rows are kept as they are.
//!
//! Each example's parameters are drawn, in the order above, from one seeded stream in
//! example order, so a seed fixes every output byte whatever the thread count. The draw is
//! [`Params`], which [`apply`] takes back: `--params-out` writes it one JSON line per
//! example and `--params-in` applies given parameters, so a fixed draw can be replayed by
//! torchvision's functional ops (fixtures/data/gen_augment.py).

use super::raw::RawDataset;
use super::rotate::image_plane;
use crate::checkpoint::Dtype;
use crate::error::{MnemoError, Result};
use crate::rng::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The largest padding and translation range accepted, in pixels.
pub const MAX_PIXELS: usize = 16_384;

/// How the affine transform samples the input (masks always use nearest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    Nearest,
    Bilinear,
}

/// The translation range of `RandomAffine`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Translate {
    /// Maximum fractions (a, b) of the width and height, each in [0, 1] (torchvision's form).
    Fraction(f64, f64),
    /// Maximum shifts in pixels (x, y).
    Pixels(f64, f64),
}

/// The random transforms to draw (each `None` is off).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Draws {
    /// Padding on every side and the crop size (None: the image's size).
    pub crop: Option<(usize, Option<(usize, usize)>)>,
    /// Flip probability.
    pub hflip: Option<f64>,
    /// Angle range [lo, hi] in degrees.
    pub degrees: Option<(f64, f64)>,
    pub translate: Option<Translate>,
    /// Standard deviation of the additive noise.
    pub noise_std: Option<f64>,
}

/// The settings that are not drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fill {
    pub interpolation: Interpolation,
    /// The value of padded and uncovered input pixels (U8: an integer 0–255).
    pub input: f64,
    /// The value of padded and uncovered mask pixels.
    pub mask: u8,
}

impl Default for Fill {
    fn default() -> Self {
        Fill {
            interpolation: Interpolation::Nearest,
            input: 0.0,
            mask: super::VOID as u8,
        }
    }
}

/// `RandomCrop`'s draw: the padding, then the crop box in the padded image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropParams {
    pub padding: usize,
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// `RandomAffine`'s draw: F.affine's `angle` (degrees, clockwise) and `translate` (pixels,
/// right and down).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AffineParams {
    pub angle: f64,
    pub translate: [i64; 2],
}

/// The noise of one example: its standard deviation and the seed of its stream.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseParams {
    pub std: f64,
    pub seed: u64,
}

/// Everything drawn for one example; absent parts are not applied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// 0-based index of the example.
    pub example: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<CropParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hflip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affine: Option<AffineParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseParams>,
}

fn bad(path: &Path, reason: impl Into<String>) -> MnemoError {
    MnemoError::InvalidDataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Python's `round` to an integer: half to even.
fn round_half_even(v: f64) -> i64 {
    v.round_ties_even() as i64
}

impl Draws {
    /// Whether any transform is on.
    pub fn is_empty(&self) -> bool {
        self.crop.is_none()
            && self.hflip.is_none()
            && self.degrees.is_none()
            && self.translate.is_none()
            && self.noise_std.is_none()
    }

    /// Checks the ranges (finite, in torchvision's domains).
    pub fn check(&self) -> std::result::Result<(), String> {
        let finite = |v: f64| v.is_finite();
        if let Some((lo, hi)) = self.degrees {
            if !(finite(lo) && finite(hi) && lo <= hi) {
                return Err(format!(
                    "the angle range [{lo}, {hi}] is not two finite degrees, low ≤ high"
                ));
            }
        }
        if let Some(p) = self.hflip {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("the flip probability {p} is not in [0, 1]"));
            }
        }
        match self.translate {
            Some(Translate::Fraction(a, b))
                if !((0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b)) =>
            {
                return Err(format!(
                    "translation fractions ({a}, {b}) must be in [0, 1]"
                ))
            }
            Some(Translate::Pixels(x, y))
                if !((0.0..=MAX_PIXELS as f64).contains(&x)
                    && (0.0..=MAX_PIXELS as f64).contains(&y)) =>
            {
                return Err(format!(
                    "translation ranges ({x}, {y}) pixels must be in [0, {MAX_PIXELS}]"
                ))
            }
            _ => {}
        }
        if let Some((p, _)) = self.crop {
            if p > MAX_PIXELS {
                return Err(format!("padding {p} exceeds {MAX_PIXELS} pixels"));
            }
        }
        if let Some(s) = self.noise_std {
            if !(finite(s) && s >= 0.0) {
                return Err(format!("noise std {s} is not a finite number ≥ 0"));
            }
        }
        Ok(())
    }

    /// Draws the parameters of `n` examples of `h`×`w` images from `seed`: per example, in
    /// order, the crop offsets, the flip, the angle, the translations and the noise seed.
    pub fn draw(
        &self,
        n: usize,
        h: usize,
        w: usize,
        seed: u64,
    ) -> std::result::Result<Vec<Params>, String> {
        self.check()?;
        let (mut oh, mut ow) = (h, w);
        let crop = match self.crop {
            Some((p, size)) => {
                let (ph, pw) = (h + 2 * p, w + 2 * p);
                let (th, tw) = size.unwrap_or((h, w));
                if th > ph || tw > pw {
                    return Err(format!(
                        "a {th}×{tw} crop does not fit {h}×{w} images padded by {p} ({ph}×{pw})"
                    ));
                }
                (oh, ow) = (th, tw);
                Some((p, ph - th + 1, pw - tw + 1, th, tw))
            }
            None => None,
        };
        let (max_dx, max_dy) = match self.translate {
            // RandomAffine: max_dx = a · width, max_dy = b · height (of its input).
            Some(Translate::Fraction(a, b)) => (a * ow as f64, b * oh as f64),
            Some(Translate::Pixels(x, y)) => (x, y),
            None => (0.0, 0.0),
        };
        let mut rng = Rng::new(seed);
        let mut out = Vec::with_capacity(n);
        for example in 0..n {
            let crop = crop.map(|(padding, rows, cols, height, width)| CropParams {
                padding,
                top: rng.below(rows as u64) as usize,
                left: rng.below(cols as u64) as usize,
                height,
                width,
            });
            let hflip = self.hflip.map(|p| rng.next_f64() < p);
            let affine = if self.degrees.is_some() || self.translate.is_some() {
                let angle = self.degrees.map_or(0.0, |(lo, hi)| rng.uniform(lo, hi));
                let translate = if self.translate.is_some() {
                    let tx = round_half_even(rng.uniform(-max_dx, max_dx));
                    let ty = round_half_even(rng.uniform(-max_dy, max_dy));
                    [tx, ty]
                } else {
                    [0, 0]
                };
                Some(AffineParams { angle, translate })
            } else {
                None
            };
            let noise = self.noise_std.map(|std| NoiseParams {
                std,
                seed: rng.next_u64(),
            });
            out.push(Params {
                example,
                crop,
                hflip,
                affine,
                noise,
            });
        }
        Ok(out)
    }
}

/// Reads `--params-in` lines (one JSON object per example, in example order), checked
/// against `n` examples of `h`×`w` images.
pub fn read_params(path: &Path, text: &str, n: usize, h: usize, w: usize) -> Result<Vec<Params>> {
    let line_err = |line: usize, reason: String| MnemoError::InvalidLine {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut out: Vec<Params> = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let p: Params = serde_json::from_str(l).map_err(|e| line_err(i + 1, e.to_string()))?;
        if p.example != out.len() {
            return Err(line_err(
                i + 1,
                format!(
                    "\"example\" is {} but this is the line of example {} (one line per example, in order)",
                    p.example,
                    out.len()
                ),
            ));
        }
        if out.len() == n {
            return Err(line_err(i + 1, format!("more lines than the {n} examples")));
        }
        check_params(&p, h, w, out.first()).map_err(|r| line_err(i + 1, r))?;
        out.push(p);
    }
    if out.len() != n {
        return Err(line_err(
            text.lines().count(),
            format!("{} parameter lines for {n} examples", out.len()),
        ));
    }
    Ok(out)
}

fn check_params(
    p: &Params,
    h: usize,
    w: usize,
    first: Option<&Params>,
) -> std::result::Result<(), String> {
    if let Some(c) = p.crop {
        if c.padding > MAX_PIXELS {
            return Err(format!("padding {} exceeds {MAX_PIXELS} pixels", c.padding));
        }
        let (ph, pw) = (h + 2 * c.padding, w + 2 * c.padding);
        if c.height == 0 || c.width == 0 || c.height > MAX_PIXELS || c.width > MAX_PIXELS {
            return Err(format!(
                "crop size {}×{} is not 1 to {MAX_PIXELS} pixels",
                c.height, c.width
            ));
        }
        if c.top.checked_add(c.height).is_none_or(|b| b > ph)
            || c.left.checked_add(c.width).is_none_or(|r| r > pw)
        {
            return Err(format!(
                "the crop at ({}, {}) of {}×{} leaves the {ph}×{pw} padded image",
                c.top, c.left, c.height, c.width
            ));
        }
    }
    let size = |q: &Params| q.crop.map(|c| (c.height, c.width));
    if let Some(f) = first {
        if size(f) != size(p) {
            return Err(format!(
                "the output size {:?} differs from the first example's {:?} (every example must come out the same size)",
                size(p),
                size(f)
            ));
        }
    }
    if let Some(a) = p.affine {
        if !a.angle.is_finite() {
            return Err(format!("angle {} is not finite", a.angle));
        }
        let lim = MAX_PIXELS as i64 * 4;
        if a.translate.iter().any(|t| t.abs() > lim) {
            return Err(format!("translate {:?} exceeds ±{lim} pixels", a.translate));
        }
    }
    if let Some(nz) = p.noise {
        if !(nz.std.is_finite() && nz.std >= 0.0) {
            return Err(format!("noise std {} is not a finite number ≥ 0", nz.std));
        }
    }
    Ok(())
}

/// torchvision 0.29's `_get_inverse_affine_matrix(center=[0, 0], angle, translate, scale=1,
/// shear=[0, 0])`, in f64 in its order: the output-to-input map about the image centre.
pub fn inverse_affine_matrix(angle: f64, tx: f64, ty: f64) -> [f64; 6] {
    let rot = angle.to_radians();
    let (sx, sy) = (0.0f64.to_radians(), 0.0f64.to_radians());
    let (cx, cy) = (0.0f64, 0.0f64);
    let a = (rot - sy).cos() / sy.cos();
    let b = -(rot - sy).cos() * sx.tan() / sy.cos() - rot.sin();
    let c = (rot - sy).sin() / sy.cos();
    let d = -(rot - sy).sin() * sx.tan() / sy.cos() + rot.cos();
    let scale = 1.0f64;
    let mut m = [d, -b, 0.0, -c, a, 0.0].map(|x| x / scale);
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty);
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty);
    m[2] += cx;
    m[5] += cy;
    m
}

/// Where each output pixel samples its input plane: torchvision's `_gen_affine_grid` and
/// grid_sample's unnormalisation, in f32 as torch computes them.
fn source_points(h: usize, w: usize, a: &AffineParams) -> Vec<(f32, f32)> {
    let m = inverse_affine_matrix(a.angle, a.translate[0] as f64, a.translate[1] as f64);
    let theta: Vec<f32> = m.iter().map(|&v| v as f32).collect();
    let (sw, sh) = ((0.5 * w as f64) as f32, (0.5 * h as f64) as f32);
    // rescaled_theta = theta^T / [0.5 w, 0.5 h].
    let rx = [theta[0] / sw, theta[1] / sw, theta[2] / sw];
    let ry = [theta[3] / sh, theta[4] / sh, theta[5] / sh];
    // grid_sample (align_corners=False): (g + 1) · size/2 − 0.5.
    let (fw, fh) = (w as f32 / 2.0, h as f32 / 2.0);
    let mut out = Vec::with_capacity(h * w);
    for i in 0..h {
        // torch.linspace(-oh/2 + 0.5, oh/2 - 0.5, oh): exact half-integers, step 1.
        let y = (-(h as f64) * 0.5 + 0.5 + i as f64) as f32;
        for j in 0..w {
            let x = (-(w as f64) * 0.5 + 0.5 + j as f64) as f32;
            let gx = x * rx[0] + y * rx[1] + rx[2];
            let gy = x * ry[0] + y * ry[1] + ry[2];
            out.push(((gx + 1.0) * fw - 0.5, (gy + 1.0) * fh - 0.5));
        }
    }
    out
}

/// One plane through the affine map: nearest or bilinear with torchvision's fill rule.
fn affine_plane(
    src: &[f32],
    h: usize,
    w: usize,
    pts: &[(f32, f32)],
    interp: Interpolation,
    fill: f32,
) -> Vec<f32> {
    let inside = |r: i64, c: i64| r > -1 && r < h as i64 && c > -1 && c < w as i64;
    pts.iter()
        .map(|&(x, y)| match interp {
            Interpolation::Nearest => {
                let (c, r) = (x.round_ties_even() as i64, y.round_ties_even() as i64);
                if inside(r, c) {
                    src[r as usize * w + c as usize]
                } else {
                    fill
                }
            }
            Interpolation::Bilinear => {
                let (xw, yn) = (x.floor(), y.floor());
                let we = x - xw;
                let e = 1.0 - we;
                let n = y - yn;
                let s = 1.0 - n;
                let weights = [s * e, s * we, n * e, n * we];
                let (c0, r0) = (xw as i64, yn as i64);
                let taps = [(r0, c0), (r0, c0 + 1), (r0 + 1, c0), (r0 + 1, c0 + 1)];
                let (mut v, mut m) = (0.0f32, 0.0f32);
                for (k, &(r, c)) in taps.iter().enumerate() {
                    let (val, one) = if inside(r, c) {
                        (src[r as usize * w + c as usize], 1.0f32)
                    } else {
                        (0.0, 0.0)
                    };
                    // (nw_val · nw) + (ne_val · ne) + ..., left to right.
                    if k == 0 {
                        v = val * weights[0];
                        m = one * weights[0];
                    } else {
                        v += val * weights[k];
                        m += one * weights[k];
                    }
                }
                v * m + (1.0 - m) * fill
            }
        })
        .collect()
}

/// Standard normal draws (Box–Muller on the stream's uniforms).
fn gaussians(rng: &mut Rng, n: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = 1.0 - rng.next_f64(); // (0, 1]
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push(r * t.cos());
        out.push(r * t.sin());
    }
    out.truncate(n);
    out
}

/// The planes of one example (or its mask) through crop, flip and affine.
fn geometry(
    mut planes: Vec<Vec<f32>>,
    (mut h, mut w): (usize, usize),
    p: &Params,
    interp: Interpolation,
    fill: f32,
) -> (Vec<Vec<f32>>, (usize, usize)) {
    if let Some(c) = p.crop {
        let pad = c.padding as i64;
        for pl in &mut planes {
            let mut o = Vec::with_capacity(c.height * c.width);
            for y in 0..c.height {
                let sy = (c.top + y) as i64 - pad;
                for x in 0..c.width {
                    let sx = (c.left + x) as i64 - pad;
                    o.push(if sy >= 0 && sy < h as i64 && sx >= 0 && sx < w as i64 {
                        pl[sy as usize * w + sx as usize]
                    } else {
                        fill
                    });
                }
            }
            *pl = o;
        }
        (h, w) = (c.height, c.width);
    }
    if p.hflip == Some(true) {
        for pl in &mut planes {
            for row in pl.chunks_exact_mut(w) {
                row.reverse();
            }
        }
    }
    if let Some(a) = &p.affine {
        let pts = source_points(h, w, a);
        for pl in &mut planes {
            *pl = affine_plane(pl, h, w, &pts, interp, fill);
        }
    }
    (planes, (h, w))
}

/// Applies `params` (one per example) to `d`, whose images are `plane` (H, W) or the last
/// two axes of each example. Masks follow the geometry with nearest sampling and
/// `fill.mask`; the output's image size is the crop's.
pub fn apply(
    d: &RawDataset,
    plane: Option<(usize, usize)>,
    params: &[Params],
    fill: &Fill,
) -> Result<RawDataset> {
    let (h, w) = image_plane(d, plane, "augment")?;
    if h * w == 0 {
        return Err(bad(
            &d.path,
            format!("images of {h}×{w} pixels: nothing to augment"),
        ));
    }
    if params.len() != d.len() {
        return Err(bad(
            &d.path,
            format!("{} examples but {} parameter sets", d.len(), params.len()),
        ));
    }
    let is_u8 = match d.dtype {
        Dtype::U8 => true,
        Dtype::F32 => false,
        other => {
            return Err(bad(
                &d.path,
                format!("'input' has dtype {other}; augment handles U8 and F32"),
            ))
        }
    };
    if is_u8 && !(fill.input.fract() == 0.0 && (0.0..=255.0).contains(&fill.input)) {
        return Err(bad(
            &d.path,
            format!(
                "the fill value {} does not fit a U8 input (an integer 0-255)",
                fill.input
            ),
        ));
    }
    if !is_u8 && !(fill.input as f32).is_finite() {
        return Err(bad(
            &d.path,
            format!("the fill value {} does not fit an F32 input", fill.input),
        ));
    }
    let is_mask = d.target_shape.len() == 2;
    if is_mask && (d.target_shape[0], d.target_shape[1]) != (h, w) {
        return Err(bad(
            &d.path,
            format!(
                "masks are {:?} but the images {h}×{w}: they cannot share one geometric draw",
                d.target_shape
            ),
        ));
    }
    for p in params {
        check_params(p, h, w, params.first())
            .map_err(|r| bad(&d.path, format!("example {}: {r}", p.example)))?;
    }
    let (oh, ow) = params
        .first()
        .and_then(|p| p.crop.map(|c| (c.height, c.width)))
        .unwrap_or((h, w));
    let features: usize = d.example_shape.iter().product();
    let planes = features / (h * w);
    let sz = d.dtype.size();
    let out_row =
        crate::validate::elements("the augmented input", &[planes, oh, ow], sz as u64)? * sz;
    let bytes =
        crate::validate::alloc_bytes("the augmented input", d.len() as u64, out_row as u64)?;
    let mut input = vec![0u8; bytes];
    let in_row = d.row_bytes();
    let fill_in = fill.input as f32;
    input
        .par_chunks_mut(out_row.max(1))
        .zip(d.input.par_chunks(in_row.max(1)))
        .zip(params.par_iter())
        .for_each(|((dst, src), p)| {
            let vals: Vec<f32> = if is_u8 {
                src.iter().map(|&b| b as f32).collect()
            } else {
                src.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            };
            let pl: Vec<Vec<f32>> = vals.chunks_exact(h * w).map(<[f32]>::to_vec).collect();
            let (pl, _) = geometry(pl, (h, w), p, fill.interpolation, fill_in);
            let mut flat: Vec<f32> = pl.concat();
            if let Some(nz) = p.noise {
                let z = gaussians(&mut Rng::new(nz.seed), flat.len());
                let scale = if is_u8 { 255.0 * nz.std } else { nz.std };
                for (v, z) in flat.iter_mut().zip(z) {
                    *v = if is_u8 {
                        (*v as f64 + scale * z) as f32
                    } else {
                        *v + (scale * z) as f32
                    };
                }
            }
            if is_u8 {
                for (o, v) in dst.iter_mut().zip(&flat) {
                    *o = v.round_ties_even().clamp(0.0, 255.0) as u8;
                }
            } else {
                for (o, v) in dst.chunks_exact_mut(4).zip(&flat) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
        });
    // Noise of a huge std overflows F32: refused rather than written as ±inf.
    if !is_u8 {
        if let Some(i) = input
            .chunks_exact(4)
            .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
        {
            let e = i / (out_row / 4).max(1);
            let std = params[e].noise.map_or(0.0, |n| n.std);
            return Err(bad(
                &d.path,
                format!("example {e}: noise of std {std} takes a value out of F32's range"),
            ));
        }
    }
    let target = if is_mask {
        let tl = h * w;
        let mfill = fill.mask as f32;
        let per: Vec<Vec<i64>> = d
            .target
            .par_chunks(tl)
            .zip(params.par_iter())
            .map(|(m, p)| {
                let pl = vec![m.iter().map(|&v| v as f32).collect::<Vec<f32>>()];
                let (pl, _) = geometry(pl, (h, w), p, Interpolation::Nearest, mfill);
                pl[0].iter().map(|&v| v as i64).collect()
            })
            .collect();
        per.concat()
    } else {
        d.target.clone()
    };
    let mut example_shape = d.example_shape.clone();
    let k = example_shape.len();
    if plane.is_some() && k == 1 {
        example_shape[0] = planes * oh * ow;
    } else {
        example_shape[k - 2] = oh;
        example_shape[k - 1] = ow;
    }
    let target_shape = if is_mask {
        vec![oh, ow]
    } else {
        d.target_shape.clone()
    };
    Ok(RawDataset {
        input,
        example_shape,
        target,
        target_shape,
        ..d.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(dtype: Dtype, example_shape: Vec<usize>, input: Vec<u8>, n: usize) -> RawDataset {
        RawDataset {
            path: "a.safetensors".into(),
            dtype,
            example_shape,
            input,
            target: (0..n as i64).collect(),
            target_shape: vec![],
            target_dtype: Dtype::I64,
        }
    }

    fn all() -> Draws {
        Draws {
            crop: Some((4, None)),
            hflip: Some(0.5),
            degrees: Some((-30.0, 30.0)),
            translate: Some(Translate::Fraction(0.1, 0.2)),
            noise_std: Some(0.1),
        }
    }

    #[test]
    fn the_seeded_draw_is_deterministic_and_in_range() {
        let d = all();
        let a = d.draw(2000, 20, 30, 7).unwrap();
        assert_eq!(a, d.draw(2000, 20, 30, 7).unwrap());
        assert_ne!(a, d.draw(2000, 20, 30, 8).unwrap());
        let (mut flips, mut lo, mut hi) = (0, f64::INFINITY, f64::NEG_INFINITY);
        let mut tx_seen = std::collections::BTreeSet::new();
        let mut tops = std::collections::BTreeSet::new();
        for (i, p) in a.iter().enumerate() {
            assert_eq!(p.example, i);
            let c = p.crop.unwrap();
            assert_eq!((c.padding, c.height, c.width), (4, 20, 30));
            assert!(c.top <= 8 && c.left <= 8);
            tops.insert(c.top);
            flips += p.hflip.unwrap() as usize;
            let af = p.affine.unwrap();
            assert!((-30.0..30.0).contains(&af.angle));
            lo = lo.min(af.angle);
            hi = hi.max(af.angle);
            // max_dx = 0.1 · 30 = 3, max_dy = 0.2 · 20 = 4: rounded uniforms.
            assert!(af.translate[0].abs() <= 3 && af.translate[1].abs() <= 4);
            tx_seen.insert(af.translate[0]);
            assert_eq!(p.noise.unwrap().std, 0.1);
        }
        assert_eq!(tops, (0..=8).collect());
        assert_eq!(tx_seen, (-3..=3).collect());
        assert!((900..1100).contains(&flips), "{flips}");
        assert!(lo < -29.0 && hi > 29.0, "{lo} {hi}");
        // Python's round: half to even.
        assert_eq!(
            (
                round_half_even(2.5),
                round_half_even(-0.5),
                round_half_even(1.5)
            ),
            (2, 0, 2)
        );
    }

    #[test]
    fn bad_ranges_are_refused() {
        for d in [
            Draws {
                degrees: Some((10.0, -10.0)),
                ..Default::default()
            },
            Draws {
                degrees: Some((f64::NAN, 1.0)),
                ..Default::default()
            },
            Draws {
                hflip: Some(1.5),
                ..Default::default()
            },
            Draws {
                translate: Some(Translate::Fraction(1.5, 0.0)),
                ..Default::default()
            },
            Draws {
                noise_std: Some(-1.0),
                ..Default::default()
            },
            Draws {
                crop: Some((0, Some((30, 30)))),
                ..Default::default()
            },
        ] {
            assert!(d.draw(3, 10, 10, 0).is_err(), "{d:?}");
        }
    }

    #[test]
    fn identity_flip_crop_and_quarter_turn() {
        // Two examples of [2, 3, 4] U8.
        let px: Vec<u8> = (0..48).collect();
        let d = ds(Dtype::U8, vec![2, 3, 4], px.clone(), 2);
        let id = Params {
            example: 0,
            crop: None,
            hflip: None,
            affine: None,
            noise: None,
        };
        let p = [
            id.clone(),
            Params {
                example: 1,
                ..id.clone()
            },
        ];
        assert_eq!(apply(&d, None, &p, &Fill::default()).unwrap().input, px);
        // Angle 0, no shift: the identity through the grid too.
        let zero = Params {
            affine: Some(AffineParams {
                angle: 0.0,
                translate: [0, 0],
            }),
            ..id.clone()
        };
        let z = [
            zero.clone(),
            Params {
                example: 1,
                ..zero.clone()
            },
        ];
        assert_eq!(apply(&d, None, &z, &Fill::default()).unwrap().input, px);
        // A shift right by 1: column 0 is the fill, column j is j − 1.
        let sh = Params {
            affine: Some(AffineParams {
                angle: 0.0,
                translate: [1, 0],
            }),
            ..id.clone()
        };
        let f = Fill {
            input: 9.0,
            ..Fill::default()
        };
        let r = apply(&d, None, &[sh.clone(), Params { example: 1, ..sh }], &f)
            .unwrap()
            .input;
        assert_eq!(&r[..4], &[9, 0, 1, 2]);
        // Flip.
        let fl = Params {
            hflip: Some(true),
            ..id.clone()
        };
        let r = apply(&d, None, &[fl.clone(), Params { example: 1, ..fl }], &f)
            .unwrap()
            .input;
        assert_eq!(&r[..4], &[3, 2, 1, 0]);
        // Pad 1 and crop 2×2 at (0, 0): the fill, then pixel 0.
        let cr = Params {
            crop: Some(CropParams {
                padding: 1,
                top: 0,
                left: 0,
                height: 2,
                width: 2,
            }),
            ..id.clone()
        };
        let out = apply(&d, None, &[cr.clone(), Params { example: 1, ..cr }], &f).unwrap();
        assert_eq!(out.example_shape, vec![2, 2, 2]);
        assert_eq!(&out.input[..4], &[9, 9, 9, 0]);
        // 90° clockwise on a square image is exact: out[i][j] = in[W−1−j][i].
        let sq: Vec<u8> = (0..16).collect();
        let d = ds(Dtype::U8, vec![4, 4], sq.clone(), 1);
        let q = Params {
            affine: Some(AffineParams {
                angle: 90.0,
                translate: [0, 0],
            }),
            ..id
        };
        let r = apply(&d, None, &[q], &Fill::default()).unwrap().input;
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(r[i * 4 + j], sq[(3 - j) * 4 + i], "{i},{j}");
            }
        }
    }

    #[test]
    fn masks_follow_the_geometry_and_noise_is_seeded() {
        let mut d = ds(
            Dtype::F32,
            vec![1, 2, 3],
            (0..6).flat_map(|v| (v as f32).to_le_bytes()).collect(),
            1,
        );
        d.target = vec![0, 1, 2, 3, 4, 5];
        d.target_shape = vec![2, 3];
        d.target_dtype = Dtype::U8;
        let p = Params {
            example: 0,
            crop: Some(CropParams {
                padding: 1,
                top: 0,
                left: 1,
                height: 2,
                width: 3,
            }),
            hflip: Some(true),
            affine: None,
            noise: Some(NoiseParams { std: 0.5, seed: 3 }),
        };
        let a = apply(&d, None, std::slice::from_ref(&p), &Fill::default()).unwrap();
        // Padded rows: [255 ×5], [255, 0, 1, 2, 255]; crop rows 0-1, cols 1-3, flipped.
        assert_eq!(a.target, vec![255, 255, 255, 2, 1, 0]);
        assert_eq!(a.target_shape, vec![2, 3]);
        assert_eq!(
            a,
            apply(&d, None, std::slice::from_ref(&p), &Fill::default()).unwrap()
        );
        let other = Params {
            noise: Some(NoiseParams { std: 0.5, seed: 4 }),
            ..p
        };
        assert_ne!(
            a.input,
            apply(&d, None, &[other], &Fill::default()).unwrap().input
        );
        let z = gaussians(&mut Rng::new(1), 100_000);
        let m = z.iter().sum::<f64>() / z.len() as f64;
        let v = z.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / z.len() as f64;
        assert!(m.abs() < 0.01 && (v - 1.0).abs() < 0.01, "{m} {v}");
    }

    #[test]
    fn params_lines_are_checked() {
        let ok = r#"{"example":0,"hflip":true}"#;
        assert_eq!(
            read_params(Path::new("p"), ok, 1, 4, 4).unwrap()[0].hflip,
            Some(true)
        );
        for (text, words) in [
            (r#"{"example":1}"#, "example 0"),
            (r#"{"example":0,"spin":1}"#, "unknown field"),
            (
                r#"{"example":0,"crop":{"padding":0,"top":1,"left":0,"height":4,"width":4}}"#,
                "leaves",
            ),
            ("", "0 parameter lines for 1 examples"),
            ("{\"example\":0}\n{\"example\":1}", "more lines"),
        ] {
            let e = read_params(Path::new("p.jsonl"), text, 1, 4, 4)
                .unwrap_err()
                .to_string();
            assert!(e.contains("p.jsonl") && e.contains(words), "{text}: {e}");
        }
    }
}
