//! `data rotate`: every image of a dataset turned about its centre (Rotated MNIST).
//!
//! The reference is SciPy: `scipy.ndimage.rotate(x, degrees, axes=(-2, -1), reshape=False,
//! order=1)`, i.e. bilinear interpolation, `mode='constant'`, `cval=0`. Positive angles turn
//! the picture counter-clockwise as displayed (row 0 at the top), like
//! `torchvision.transforms.functional.rotate` and `np.rot90`. The centre is ((H-1)/2, (W-1)/2);
//! an output pixel whose source point lies outside the input grid, even by a hair, is 0 (no
//! blending with the zeros beyond the edge, unlike torchvision's `grid_sample`). The
//! arithmetic follows SciPy's in f64 step by step (sine and cosine exact at multiples of 90°,
//! the affine map, weights `1 - f` and `1 - (1 - f)`, the sum in SciPy's order), and U8 is
//! rounded half up as SciPy stores integers, so results match SciPy's bit for bit in all but
//! floating-point ties (see tests/data_cli.rs for the measured difference).

use super::raw::RawDataset;
use crate::checkpoint::Dtype;
use crate::error::{MnemoError, Result};
use half::{bf16, f16};
use rayon::prelude::*;

fn bad(d: &RawDataset, reason: impl Into<String>) -> MnemoError {
    MnemoError::InvalidDataset {
        path: d.path.clone(),
        reason: reason.into(),
    }
}

/// sin and cos of an angle in degrees, exact at multiples of 90° (as SciPy's `sindg`/`cosdg`):
/// the angle is reduced to the nearest multiple of 90° plus at most ±45° before converting.
pub fn sin_cos_degrees(degrees: f64) -> (f64, f64) {
    let r = degrees.rem_euclid(360.0);
    let quarter = (r / 90.0).round();
    let (s, c) = ((r - quarter * 90.0).to_radians()).sin_cos();
    match quarter as i64 % 4 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

/// Where one output pixel's value comes from: four source indices (row-major within the
/// plane) and the row and column weights.
#[derive(Clone, Copy, Debug)]
struct Tap {
    idx: [usize; 4],
    wr: [f64; 2],
    wc: [f64; 2],
}

/// One `Tap` per output pixel of an `h`×`w` plane; `None` where the source point is outside.
fn taps(h: usize, w: usize, degrees: f64) -> Vec<Option<Tap>> {
    let (s, c) = sin_cos_degrees(degrees);
    // scipy.ndimage.rotate: the matrix [[c, s], [-s, c]] maps an output (row, col) to the
    // input; offset = in_centre - matrix @ out_centre.
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    let (off0, off1) = (cy - (c * cy + s * cx), cx - (-s * cy + c * cx));
    // The second tap along an axis, mirrored at the far edge as SciPy does; its weight is
    // exactly 0 there (the source point is on the last row or column).
    let next = |i: usize, n: usize| {
        if n <= 1 {
            0
        } else if i + 1 >= n {
            2 * n - 2 - (i + 1)
        } else {
            i + 1
        }
    };
    let mut out = Vec::with_capacity(h * w);
    for r in 0..h {
        for q in 0..w {
            let (rf, qf) = (r as f64, q as f64);
            let i0 = rf * c + qf * s + off0;
            let i1 = rf * -s + qf * c + off1;
            // mode='constant': any source point off the grid [0, n-1] gives cval (0).
            if !(i0 >= 0.0 && i0 <= h as f64 - 1.0 && i1 >= 0.0 && i1 <= w as f64 - 1.0) {
                out.push(None);
                continue;
            }
            let (f0, f1) = (i0.floor(), i1.floor());
            let (r0, q0) = (f0 as usize, f1 as usize);
            // SciPy's order-1 spline weights: 1 - f, then 1 minus that.
            let (wr0, wc0) = (1.0 - (i0 - f0), 1.0 - (i1 - f1));
            let (r1, q1) = (next(r0, h), next(q0, w));
            out.push(Some(Tap {
                idx: [r0 * w + q0, r0 * w + q1, r1 * w + q0, r1 * w + q1],
                wr: [wr0, 1.0 - wr0],
                wc: [wc0, 1.0 - wc0],
            }));
        }
    }
    out
}

/// One output value: SciPy's sum of `(value × row weight) × column weight`, in tap order.
fn sample(t: &Tap, v: &[f64]) -> f64 {
    let mut acc = 0.0;
    acc += v[t.idx[0]] * t.wr[0] * t.wc[0];
    acc += v[t.idx[1]] * t.wr[0] * t.wc[1];
    acc += v[t.idx[2]] * t.wr[1] * t.wc[0];
    acc += v[t.idx[3]] * t.wr[1] * t.wc[1];
    acc
}

/// The (H, W) of the images in `d`: `plane` for a flat input (`[N, H·W]` or `[N, C·H·W]`),
/// else the last two axes of the example shape. `what` names the operation in errors.
pub fn image_plane(
    d: &RawDataset,
    plane: Option<(usize, usize)>,
    what: &str,
) -> Result<(usize, usize)> {
    let features: usize = d.example_shape.iter().product();
    let es = &d.example_shape;
    Ok(match (plane, es.len()) {
        (_, 0) => {
            return Err(bad(
                d,
                format!("examples are scalars: there is no image to {what}"),
            ))
        }
        (None, 1) => {
            let side = (features as f64).sqrt().round() as usize;
            let hint = if side * side == features {
                format!(" (each row could be {side}×{side})")
            } else {
                String::new()
            };
            return Err(MnemoError::unfit(
                crate::Setting::ImageShape,
                &d.path,
                format!("'input' is flat ([N, {features}]), not images{hint}"),
            ));
        }
        (None, n) => (es[n - 2], es[n - 1]),
        (Some((h, w)), n) => {
            if h == 0 || w == 0 || !features.is_multiple_of(h * w) {
                return Err(MnemoError::unfit(
                    crate::Setting::ImageShape,
                    &d.path,
                    format!("shape {h},{w} does not divide an example of {features} values"),
                ));
            }
            if n >= 2 && (es[n - 2], es[n - 1]) != (h, w) {
                return Err(MnemoError::unfit(
                    crate::Setting::ImageShape,
                    &d.path,
                    format!(
                        "examples are {es:?} already: shape {h},{w} disagrees with their last two axes"
                    ),
                ));
            }
            (h, w)
        }
    })
}

/// Rotates every `h`×`w` plane of every example by `degrees` (counter-clockwise), keeping the
/// shape and dtype. `plane` is (H, W) for a flat input (`[N, H·W]` or `[N, C·H·W]`); without
/// it the last two axes of the example shape are the image.
pub fn rotate(d: &RawDataset, degrees: f64, plane: Option<(usize, usize)>) -> Result<RawDataset> {
    if !degrees.is_finite() {
        return Err(bad(d, format!("cannot rotate by {degrees} degrees")));
    }
    let (h, w) = image_plane(d, plane, "rotate")?;
    if h * w == 0 {
        return Err(bad(
            d,
            format!("images of {h}×{w} pixels: nothing to rotate"),
        ));
    }
    let sz = d.dtype.size();
    let read: fn(&[u8]) -> f64 = match d.dtype {
        Dtype::U8 => |b| b[0] as f64,
        Dtype::F16 => |b| f16::from_le_bytes([b[0], b[1]]).to_f64(),
        Dtype::BF16 => |b| bf16::from_le_bytes([b[0], b[1]]).to_f64(),
        Dtype::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        Dtype::F64 => |b| f64::from_le_bytes(b.try_into().expect("8 bytes")),
        other => {
            return Err(bad(
                d,
                format!("'input' has dtype {other}; rotate handles U8, F16, BF16, F32 and F64"),
            ))
        }
    };
    let write: fn(f64, &mut [u8]) = match d.dtype {
        // SciPy's store to unsigned integers: t > 0 ? t + 0.5 : 0, clipped, truncated.
        Dtype::U8 => |t, o| {
            o[0] = if t > 0.0 {
                (t + 0.5).min(255.0) as u8
            } else {
                0
            }
        },
        Dtype::F16 => |t, o| o.copy_from_slice(&f16::from_f64(t).to_le_bytes()),
        Dtype::BF16 => |t, o| o.copy_from_slice(&bf16::from_f64(t).to_le_bytes()),
        Dtype::F32 => |t, o| o.copy_from_slice(&(t as f32).to_le_bytes()),
        _ => |t, o| o.copy_from_slice(&t.to_le_bytes()),
    };
    let taps = taps(h, w, degrees);
    let pb = h * w * sz;
    let mut input = vec![0u8; d.input.len()];
    input
        .par_chunks_mut(pb)
        .zip(d.input.par_chunks(pb))
        .for_each(|(dst, src)| {
            let v: Vec<f64> = src.chunks_exact(sz).map(read).collect();
            for (o, t) in dst.chunks_exact_mut(sz).zip(&taps) {
                write(t.as_ref().map_or(0.0, |t| sample(t, &v)), o);
            }
        });
    Ok(RawDataset { input, ..d.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(dtype: Dtype, example_shape: Vec<usize>, input: Vec<u8>) -> RawDataset {
        let n = input.len() / dtype.size() / example_shape.iter().product::<usize>();
        RawDataset {
            path: "r.safetensors".into(),
            dtype,
            example_shape,
            input,
            target: vec![0; n],
            target_shape: vec![],
            target_dtype: Dtype::I64,
        }
    }

    #[test]
    fn quarter_turns_are_exact() {
        for k in -8..=8 {
            let (s, c) = sin_cos_degrees(90.0 * k as f64);
            assert_eq!((s.abs() + c.abs(), s * c), (1.0, 0.0), "{k}");
        }
        assert_eq!(sin_cos_degrees(90.0), (1.0, 0.0));
        assert_eq!(sin_cos_degrees(-90.0), (-1.0, 0.0));
        let (s, c) = sin_cos_degrees(30.0);
        assert!((s - 0.5).abs() < 1e-15 && (c - 0.75f64.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn zero_and_full_turns_are_the_identity_and_90_is_rot90() {
        let px: Vec<u8> = (0..2 * 3 * 16).map(|i| (i * 7 % 256) as u8).collect();
        let d = ds(Dtype::U8, vec![3, 4, 4], px.clone());
        assert_eq!(rotate(&d, 0.0, None).unwrap().input, px);
        assert_eq!(rotate(&d, 360.0, None).unwrap().input, px);
        let r = rotate(&d, 90.0, None).unwrap().input;
        // np.rot90: out[i][j] = in[j][W-1-i], counter-clockwise.
        for p in 0..6 {
            for i in 0..4 {
                for j in 0..4 {
                    assert_eq!(r[p * 16 + i * 4 + j], px[p * 16 + j * 4 + 3 - i]);
                }
            }
        }
        let back = rotate(&rotate(&d, 90.0, None).unwrap(), -90.0, None).unwrap();
        assert_eq!(back.input, px);
    }

    #[test]
    fn flat_inputs_need_a_shape_and_floats_keep_their_dtype() {
        let d = ds(Dtype::F32, vec![9], vec![0; 4 * 9 * 2]);
        let e = rotate(&d, 10.0, None).unwrap_err().to_string();
        assert!(e.contains("r.safetensors") && e.contains("3×3"), "{e}");
        assert!(rotate(&d, 10.0, Some((2, 2))).is_err());
        let r = rotate(&d, 10.0, Some((3, 3))).unwrap();
        assert_eq!((r.dtype, r.example_shape.clone()), (Dtype::F32, vec![9]));
        let mut one = vec![0u8; 9 * 4];
        one[4 * 4..5 * 4].copy_from_slice(&2.5f32.to_le_bytes());
        let d = ds(Dtype::F32, vec![3, 3], one.clone());
        assert_eq!(rotate(&d, 45.0, None).unwrap().input[16..20], one[16..20]);
        assert!(rotate(&d, f64::NAN, None).is_err());
    }
}
