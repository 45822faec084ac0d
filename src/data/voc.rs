//! `data import voc`: Pascal VOC 2012's segmentation layout as a mask dataset.
//!
//! - The ids come from `ROOT/ImageSets/Segmentation/{split}.txt` (one per line; blank lines
//!   skipped), or from a list file given by path.
//! - Images: `ROOT/JPEGImages/{id}.jpg`, decoded and resized as `data import folder` does
//!   (Pillow's `convert("RGB")`, then its bilinear resize, bit for bit).
//! - Masks: `ROOT/SegmentationClass/{id}.png`, palette PNGs whose palette *indices* are the
//!   class ids (0 background, 1–20 the objects, 255 void: object boundaries and difficult
//!   regions); the RGB colours of the palette are ignored, as `np.array(Image.open(mask))`
//!   does. 8-bit greyscale masks (the same ids stored as grey levels, as in converted
//!   copies such as SegmentationClassAug) are read the same way. Resized with Pillow's
//!   `Image.NEAREST` rule ([`resize_nearest`]), so no new ids appear.
//! - `binary`: 1 for any object class, 0 for background, 255 stays void.

use super::folder::{load, FolderOptions};
use super::raw::U8Dataset;
use super::VOID;
use crate::error::{MnemoError, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Pascal VOC's class names, index = class id (0 is the background).
pub const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

fn bad(path: &Path, reason: impl Into<String>) -> MnemoError {
    MnemoError::InvalidDataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// How to import.
#[derive(Clone, Debug)]
pub struct VocOptions {
    /// A split name (`train`, `val`, `trainval`: a file under `ImageSets/Segmentation/`) or
    /// the path of a list file.
    pub split: String,
    /// Resize images (bilinear) and masks (nearest) to (height, width).
    pub size: Option<(usize, usize)>,
    /// 0/1 masks (any object = 1), void kept.
    pub binary: bool,
}

/// The imported dataset, the list file it followed and the class names (index = id).
#[derive(Clone, Debug)]
pub struct VocImport {
    /// `input` U8 `[N, 3, H, W]`, `target` U8 `[N, H, W]`.
    pub dataset: U8Dataset,
    pub list: PathBuf,
    pub classes: Vec<String>,
}

/// Source index of each output position along one axis, as Pillow's `Image.NEAREST`
/// resize computes it: the affine transform's start (scale/2) advanced by the scale in
/// doubles, accumulated (not multiplied: the sums round differently, and Pillow 13 picks
/// index 1 where (x + 0.5)·scale would give 0.999…), truncated.
fn nearest_index(in_size: usize, out_size: usize) -> Vec<usize> {
    let a = in_size as f64 / out_size as f64;
    let mut xx = a * 0.5;
    (0..out_size)
        .map(|_| {
            let i = (xx as usize).min(in_size - 1);
            xx += a;
            i
        })
        .collect()
}

/// One-channel bytes `h`×`w` resized to `oh`×`ow` as Pillow's
/// `Image.resize((ow, oh), Image.NEAREST)` does (what it also uses for palette images).
pub fn resize_nearest(px: &[u8], (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<u8> {
    let (ys, xs) = (nearest_index(h, oh), nearest_index(w, ow));
    let mut out = Vec::with_capacity(oh * ow);
    for &y in &ys {
        out.extend(xs.iter().map(|&x| px[y * w + x]));
    }
    out
}

/// A mask's pixel values (palette indices or grey levels), `(h, w, values)`.
pub fn read_mask(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let file = crate::fsutil::open_file(path)?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(file));
    // No expansion: the raw indices, not the palette's colours.
    dec.set_transformations(png::Transformations::IDENTITY);
    let mut reader = dec
        .read_info()
        .map_err(|e| bad(path, format!("cannot decode the mask PNG: {e}")))?;
    let info = reader.info();
    let (w, h) = (info.width as usize, info.height as usize);
    let (ct, depth) = (info.color_type, info.bit_depth);
    let bits = match (ct, depth) {
        (png::ColorType::Indexed, d) => d as usize,
        (png::ColorType::Grayscale, png::BitDepth::Eight) => 8,
        _ => {
            return Err(bad(
                path,
                format!(
                    "the mask is a {ct:?} PNG of {} bits; expected a palette PNG (class id = palette index) or 8-bit greyscale",
                    depth as usize
                ),
            ))
        }
    };
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| bad(path, "the mask PNG is too large"))?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(path, format!("cannot decode the mask PNG: {e}")))?;
    let line = frame.line_size;
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        let row = &buf[y * line..(y + 1) * line];
        if bits == 8 {
            out.extend_from_slice(&row[..w]);
        } else {
            // Packed indices, most significant bits first.
            let per = 8 / bits;
            let m = (1u8 << bits) - 1;
            out.extend((0..w).map(|x| (row[x / per] >> (8 - bits * (x % per + 1))) & m));
        }
    }
    Ok((h, w, out))
}

/// The list file a split names.
fn list_file(root: &Path, split: &str) -> Result<PathBuf> {
    let named = root
        .join("ImageSets")
        .join("Segmentation")
        .join(format!("{split}.txt"));
    if named.is_file() {
        return Ok(named);
    }
    let given = PathBuf::from(split);
    if given.is_file() {
        return Ok(given);
    }
    Err(bad(
        &named,
        format!(
            "no such split list ({split}: a name under ImageSets/Segmentation/ or a list file)"
        ),
    ))
}

/// One example: image `[3, H, W]` and mask `[H, W]`, both at the output size, and that size.
type Example = (Vec<u8>, Vec<u8>, (usize, usize));

/// One example: image `[3, H, W]` and mask `[H, W]`, both at the output size.
fn example(root: &Path, id: &str, list: &Path, opts: &VocOptions) -> Result<Example> {
    let img = root.join("JPEGImages").join(format!("{id}.jpg"));
    if !img.is_file() {
        return Err(bad(
            &img,
            format!("no image for id '{id}' (listed in {})", list.display()),
        ));
    }
    let mask_path = root.join("SegmentationClass").join(format!("{id}.png"));
    if !mask_path.is_file() {
        return Err(bad(
            &mask_path,
            format!("no mask for id '{id}' (listed in {})", list.display()),
        ));
    }
    let fo = FolderOptions {
        size: opts.size,
        grayscale: false,
    };
    let (px, (ih, iw)) = load(&img, &fo)?;
    let (mh, mw, mut mask) = read_mask(&mask_path)?;
    if (mh, mw) != (ih, iw) {
        return Err(bad(
            &mask_path,
            format!(
                "the mask is {mh}×{mw} (H×W) but its image {} is {ih}×{iw}",
                img.display()
            ),
        ));
    }
    if let Some(p) = mask
        .iter()
        .position(|&v| v as usize >= VOC_CLASSES.len() && v as i64 != VOID)
    {
        return Err(bad(
            &mask_path,
            format!(
                "pixel (row {}, column {}) has palette index {}: VOC ids are 0-20, or 255 (void)",
                p / mw,
                p % mw,
                mask[p]
            ),
        ));
    }
    if let Some((oh, ow)) = opts.size {
        if (oh, ow) != (mh, mw) {
            mask = resize_nearest(&mask, (mh, mw), (oh, ow));
        }
    }
    if opts.binary {
        for v in &mut mask {
            if *v != 0 && *v as i64 != VOID {
                *v = 1;
            }
        }
    }
    Ok((px, mask, opts.size.unwrap_or((ih, iw))))
}

/// Reads the split's images and masks (see the module docs).
pub fn import_voc(root: &Path, opts: &VocOptions) -> Result<VocImport> {
    if let Some((h, w)) = opts.size {
        if h == 0 || w == 0 {
            return Err(MnemoError::unfit(
                crate::Setting::ImageSize,
                root,
                format!("image size {h},{w}: both sides must be >= 1"),
            ));
        }
    }
    let list = list_file(root, &opts.split)?;
    let text = crate::fsutil::read_to_string(&list)?;
    let ids: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if ids.is_empty() {
        return Err(bad(&list, "the list has no ids"));
    }
    let loaded: Vec<Result<_>> = ids
        .par_iter()
        .map(|id| example(root, id, &list, opts))
        .collect();
    let mut input = Vec::new();
    let mut target = Vec::new();
    let mut first: Option<((usize, usize), &str)> = None;
    for (r, id) in loaded.into_iter().zip(&ids) {
        let (px, mask, hw) = r?;
        match first {
            None => first = Some((hw, id)),
            Some((hw0, id0)) if hw0 != hw => {
                return Err(MnemoError::unfit(
                    crate::Setting::ImageSize,
                    &root.join("JPEGImages").join(format!("{id}.jpg")),
                    format!(
                        "the image is {}×{} (H×W) but {id0}.jpg is {}×{}",
                        hw.0, hw.1, hw0.0, hw0.1
                    ),
                ))
            }
            _ => {}
        }
        input.extend(px);
        target.extend(mask);
    }
    let (h, w) = first.expect("one or more ids").0;
    let classes = if opts.binary {
        vec!["background".to_string(), "object".to_string()]
    } else {
        VOC_CLASSES.iter().map(|s| s.to_string()).collect()
    };
    Ok(VocImport {
        dataset: U8Dataset {
            example_shape: vec![3, h, w],
            input,
            target_shape: vec![h, w],
            target,
        },
        list,
        classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_indices_are_pillows() {
        // Pillow 13: np.array(Image.fromarray(np.arange(H)[:, None].repeat(3, 1)
        //   .astype(np.uint8), "P").resize((3, OH), Image.NEAREST))[:, 0]
        assert_eq!(nearest_index(2, 5), [0, 0, 1, 1, 1]);
        assert_eq!(nearest_index(4, 6), [0, 1, 1, 2, 2, 3]);
        assert_eq!(nearest_index(12, 5), [1, 3, 6, 8, 10]);
        assert_eq!(nearest_index(5, 5), [0, 1, 2, 3, 4]);
    }
}
