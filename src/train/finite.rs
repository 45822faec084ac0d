//! The divergence check of the training loop: after every update, the loss and every
//! trainable weight must be finite; otherwise the run stops with an error naming the step
//! and the tensor (and the element), before anything (state file, output) is written from
//! those weights.

use crate::{MnemoError, Result};
use std::collections::BTreeMap;

/// Fails when the loss of update `step` or any weight in `host` is NaN or infinite.
pub fn check_update(step: u64, loss: f64, host: &BTreeMap<String, Vec<f32>>) -> Result<()> {
    if !loss.is_finite() {
        return Err(MnemoError::Diverged {
            at: format!("at step {step}"),
            what: "the loss".into(),
            value: format!("{loss}"),
        });
    }
    for (name, w) in host {
        if all_finite(w) {
            continue;
        }
        if let Some((i, v)) = w.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(MnemoError::Diverged {
                at: format!("at step {step}"),
                what: format!("tensor '{name}' element {i}"),
                value: format!("{v}"),
            });
        }
    }
    Ok(())
}

/// Whether every value is finite: an f32 is NaN or ±inf exactly when its exponent bits are
/// all ones, i.e. |bits| ≥ 0x7f80_0000. A branch-free integer max, which the compiler
/// vectorizes: run after every update, an early-exit `find` was 13% of an online step.
pub fn all_finite(values: &[f32]) -> bool {
    values
        .iter()
        .fold(0u32, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
        < 0x7f80_0000
}

/// Fails when any tensor to be written holds NaN or ±inf (batchnorm statistics included),
/// naming it: the last guard before a training command writes its output.
pub fn check_tensors(tensors: &[crate::checkpoint::OwnedTensor]) -> Result<()> {
    use crate::checkpoint::Dtype;
    for t in tensors.iter().filter(|t| t.dtype.is_float()) {
        // F32 read in place; other float dtypes (a bf16 model is written in bf16) decoded.
        let values: Vec<f32> = match t.dtype {
            Dtype::F32 => Vec::new(),
            d => crate::checkpoint::decode(d, &t.data),
        };
        let all: Box<dyn Iterator<Item = f32>> = match t.dtype {
            Dtype::F32 => Box::new(
                t.data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            _ => Box::new(values.into_iter()),
        };
        for (i, v) in all.enumerate() {
            if !v.is_finite() {
                return Err(MnemoError::Diverged {
                    at: "by the end of the run".into(),
                    what: format!("tensor '{}' element {i}", t.name),
                    value: format!("{v}"),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_step_and_tensor() {
        let mut h = BTreeMap::new();
        h.insert("0.weight".to_string(), vec![1.0, f32::NAN]);
        let e = check_update(7, 0.5, &h).unwrap_err().to_string();
        assert!(
            e.contains("step 7") && e.contains("'0.weight' element 1"),
            "{e}"
        );
        assert!(check_update(1, f64::INFINITY, &BTreeMap::new()).is_err());
        h.insert("0.weight".to_string(), vec![1.0]);
        check_update(1, 0.5, &h).unwrap();
    }

    #[test]
    fn all_finite_agrees_with_is_finite() {
        let specials = [
            0.0,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-45,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffc0_0000),
        ];
        for &x in &specials {
            for len in [1, 7, 64, 1001] {
                for at in [0, len / 2, len - 1] {
                    let mut v = vec![0.5f32; len];
                    v[at] = x;
                    assert_eq!(all_finite(&v), x.is_finite(), "{x} at {at} of {len}");
                }
            }
        }
        assert!(all_finite(&[]));
    }

    #[test]
    fn a_nan_is_found_in_every_float_dtype() {
        use crate::checkpoint::{encode, Dtype, OwnedTensor};
        for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
            let t = |v: f32| OwnedTensor {
                name: "w".into(),
                dtype,
                shape: vec![2],
                data: encode(dtype, &[1.0, v]).unwrap().into(),
            };
            let e = check_tensors(&[t(f32::NAN)]).unwrap_err().to_string();
            assert!(e.contains("'w' element 1"), "{dtype}: {e}");
            check_tensors(&[t(2.0)]).unwrap();
        }
    }
}
