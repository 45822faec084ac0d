//! `data pad`: zero borders around every image, as torchvision's `transforms.Pad(p)` (fill 0):
//! van de Ven & Tolias's Permuted MNIST pads 28×28 digits to 32×32 before permuting, which
//! spreads each task's informative pixels over more input units.

use super::raw::RawDataset;
use super::rotate::image_plane;
use crate::error::{MnemoError, Result};

/// Pads every `h`×`w` plane of every example with `p` zero rows and columns on each side,
/// keeping the dtype. A flat input stays flat (`[N, C·(H+2p)·(W+2p)]`), planes in the same
/// order; otherwise the last two axes grow by 2p.
pub fn pad(d: &RawDataset, p: usize, plane: Option<(usize, usize)>) -> Result<RawDataset> {
    let (h, w) = image_plane(d, plane, "pad")?;
    let (ph, pw) = (h + 2 * p, w + 2 * p);
    let sz = d.dtype.size();
    let features: usize = d.example_shape.iter().product();
    let planes = features / (h * w).max(1);
    let n = d.len();
    let out_row = planes * ph * pw * sz;
    let bytes = n
        .checked_mul(out_row)
        .filter(|&b| b as u64 <= crate::validate::max_alloc_bytes())
        .ok_or_else(|| MnemoError::InvalidDataset {
            path: d.path.clone(),
            reason: format!("padding by {p} makes the dataset too large"),
        })?;
    // Zero bytes are 0 in every dtype a dataset input may have.
    let mut input = vec![0u8; bytes];
    let in_row = d.row_bytes();
    for (src, dst) in d
        .input
        .chunks_exact(in_row)
        .zip(input.chunks_exact_mut(out_row))
    {
        for c in 0..planes {
            for y in 0..h {
                let s = (c * h * w + y * w) * sz;
                let t = (c * ph * pw + (y + p) * pw + p) * sz;
                dst[t..t + w * sz].copy_from_slice(&src[s..s + w * sz]);
            }
        }
    }
    let mut example_shape = d.example_shape.clone();
    let k = example_shape.len();
    if plane.is_some() && k == 1 {
        example_shape[0] = planes * ph * pw;
    } else {
        example_shape[k - 2] = ph;
        example_shape[k - 1] = pw;
    }
    Ok(RawDataset {
        input,
        example_shape,
        ..d.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Dtype;

    #[test]
    fn pads_each_plane_with_zeros_around_it() {
        // Two examples of one 2×2 U8 image, flat.
        let d = RawDataset {
            path: "p".into(),
            dtype: Dtype::U8,
            example_shape: vec![4],
            input: vec![1, 2, 3, 4, 5, 6, 7, 8],
            target: vec![0, 1],
            target_shape: vec![],
            target_dtype: Dtype::I64,
        };
        let p = pad(&d, 1, Some((2, 2))).unwrap();
        assert_eq!(p.example_shape, vec![16]);
        #[rustfmt::skip]
        let first = [0, 0, 0, 0,
                     0, 1, 2, 0,
                     0, 3, 4, 0,
                     0, 0, 0, 0];
        assert_eq!(&p.input[..16], &first);
        assert_eq!(p.input[16 + 5], 5);
        assert_eq!(p.input[16 + 10], 8);
        // As [N, 1, 2, 2] the image axes grow instead.
        let d4 = RawDataset {
            example_shape: vec![1, 2, 2],
            ..d.clone()
        };
        let p4 = pad(&d4, 2, None).unwrap();
        assert_eq!(p4.example_shape, vec![1, 6, 6]);
        assert_eq!(p4.input[2 * 6 + 2], 1);
        assert!(pad(&d, 1, None).is_err(), "a flat input needs its shape");
    }
}
