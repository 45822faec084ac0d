//! `data normalize`: per-channel (x − mean) / std, as torchvision's `ToTensor()` then
//! `Normalize(mean, std)`: U8 inputs are first scaled by 1/255 (as training reads them), and
//! every step is in f32 in torch's order, `x.float().div(255).sub(mean).div(std)`, so the
//! output is torch's bit for bit. An ImageNet-pretrained trunk wants its inputs so.

use super::raw::RawDataset;
use crate::checkpoint::Dtype;
use crate::error::{MnemoError, Result};
use half::{bf16, f16};

/// ImageNet's per-channel mean and std (torchvision's weights' transforms).
pub const IMAGENET_MEAN: [f64; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f64; 3] = [0.229, 0.224, 0.225];

fn bad(d: &RawDataset, reason: String) -> MnemoError {
    MnemoError::InvalidDataset {
        path: d.path.clone(),
        reason,
    }
}

/// Normalizes the channels (the first axis of each example, `[C, ...]`) of every example to
/// F32. `mean` and `std` give one value per channel, or one for all; `std` must be positive.
pub fn normalize(d: &RawDataset, mean: &[f64], std: &[f64]) -> Result<RawDataset> {
    let channels = match d.example_shape.as_slice() {
        [] | [_] => {
            return Err(bad(
                d,
                format!(
                "'input' examples have shape {:?}: normalize needs channels first ([N, C, ...])",
                d.example_shape
            ),
            ))
        }
        [c, ..] => *c,
    };
    for (what, v) in [("mean", mean), ("std", std)] {
        if v.len() != 1 && v.len() != channels {
            return Err(bad(
                d,
                format!(
                    "{} {what} values for {channels} channels (give {channels}, or one for all)",
                    v.len()
                ),
            ));
        }
    }
    let per_channel = |v: &[f64]| -> Vec<f32> {
        (0..channels)
            .map(|c| v[if v.len() == 1 { 0 } else { c }] as f32)
            .collect()
    };
    let (mean, std) = (per_channel(mean), per_channel(std));
    if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(bad(d, format!("std {s} is not a positive f32")));
    }
    let read: fn(&[u8]) -> f32 = match d.dtype {
        Dtype::U8 => |b| b[0] as f32 / 255.0,
        Dtype::F16 => |b| f16::from_le_bytes([b[0], b[1]]).to_f32(),
        Dtype::BF16 => |b| bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        Dtype::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        Dtype::F64 => |b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32,
        other => {
            return Err(bad(
                d,
                format!("'input' has dtype {other}; normalize handles U8, F16, BF16, F32 and F64"),
            ))
        }
    };
    let sz = d.dtype.size();
    let features: usize = d.example_shape.iter().product();
    let plane = features / channels.max(1);
    let bytes = d
        .len()
        .checked_mul(features)
        .and_then(|v| v.checked_mul(4))
        .filter(|&b| b as u64 <= crate::validate::max_alloc_bytes())
        .ok_or_else(|| bad(d, "the F32 output would be too large".into()))?;
    let mut input = Vec::with_capacity(bytes);
    for (i, v) in d.input.chunks_exact(sz).enumerate() {
        let c = (i / plane.max(1)) % channels;
        let y = (read(v) - mean[c]) / std[c];
        if !y.is_finite() {
            let (e, f) = (i / features, i % features);
            return Err(bad(
                d,
                format!("example {e} value {f} normalizes to {y} (out of f32's range)"),
            ));
        }
        input.extend_from_slice(&y.to_le_bytes());
    }
    Ok(RawDataset {
        input,
        dtype: Dtype::F32,
        ..d.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset(dtype: Dtype, input: Vec<u8>, shape: Vec<usize>) -> RawDataset {
        RawDataset {
            path: "x.safetensors".into(),
            dtype,
            example_shape: shape,
            input,
            target: vec![0, 1],
            target_shape: vec![],
            target_dtype: Dtype::I64,
        }
    }

    fn values(d: &RawDataset) -> Vec<f32> {
        d.input
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn u8_channels_are_scaled_then_normalized_in_f32() {
        // Two examples of [2 channels, 1, 2].
        let d = dataset(
            Dtype::U8,
            vec![0, 255, 51, 102, 10, 20, 30, 40],
            vec![2, 1, 2],
        );
        let n = normalize(&d, &[0.5, 0.25], &[0.5, 2.0]).unwrap();
        assert_eq!(n.dtype, Dtype::F32);
        assert_eq!(n.example_shape, vec![2, 1, 2]);
        let want: Vec<f32> = [0u8, 255, 51, 102, 10, 20, 30, 40]
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                let c = (i / 2) % 2;
                (b as f32 / 255.0 - [0.5f32, 0.25][c]) / [0.5f32, 2.0][c]
            })
            .collect();
        assert_eq!(values(&n), want);
        assert_eq!(values(&n)[1], 1.0);
        // One value broadcasts to every channel.
        let one = normalize(&d, &[0.5], &[0.5]).unwrap();
        assert_eq!(values(&one)[2], (0.2 - 0.5) / 0.5);
    }

    #[test]
    fn bad_statistics_and_shapes_are_refused() {
        let d = dataset(Dtype::U8, vec![255; 8], vec![2, 1, 2]);
        for (mean, std, words) in [
            (vec![0.0; 3], vec![1.0], "3 mean values for 2 channels"),
            (vec![0.0], vec![1.0; 3], "3 std values"),
            (vec![0.0], vec![0.0], "std 0 is not a positive"),
            (vec![0.0], vec![-1.0], "not a positive"),
            (vec![0.0], vec![1e-300], "not a positive"),
            (vec![0.0], vec![1e-44], "out of f32's range"),
        ] {
            let e = normalize(&d, &mean, &std).unwrap_err().to_string();
            assert!(e.contains(words), "{mean:?} {std:?}: {e}");
        }
        let flat = dataset(Dtype::U8, vec![0; 8], vec![4]);
        let e = normalize(&flat, &[0.0], &[1.0]).unwrap_err().to_string();
        assert!(e.contains("channels first"), "{e}");
    }
}
