//! `data import folder`: a folder of class sub-folders of PNG and JPEG images as a dataset,
//! in torchvision's `ImageFolder` order, with pixels as Pillow gives them.
//!
//! - Classes are the sub-folders of DIR, sorted by name; class id = index in that order.
//!   Within a class, files come in `sorted(os.walk(class_dir))` order (the class folder's own
//!   files first, then nested folders by path), names sorted, as `ImageFolder` does.
//! - `.png`, `.jpg` and `.jpeg` (any case) are read, by content, not by extension. Other image
//!   formats that `ImageFolder` would load (`.bmp`, `.ppm`, `.pgm`, `.tif`, `.tiff`, `.webp`)
//!   are refused rather than silently dropped; every other file is skipped (and counted).
//!   Hidden entries (names starting with `.`) are skipped.
//! - Pixels are converted as Pillow's `convert("RGB")` (grey replicated, alpha dropped, palettes
//!   expanded) or `convert("L")` (ITU-R 601 luma in Pillow's fixed point). 16-bit images keep
//!   their high byte (as Pillow does for 16-bit RGB; for 16-bit grey Pillow clips instead).
//! - `size` resizes with Pillow's `Image.resize(.., Image.BILINEAR)`: a triangle filter whose
//!   support grows with the reduction factor (antialiased when shrinking), one pass per axis
//!   with 22-bit fixed-point weights, rounded to bytes after each pass, in Pillow 13's order
//!   (see [`resize_bilinear`]): bit-identical to Pillow 13 on the same decoded pixels.
//!
//! PNG decoding is lossless, so PNGs match Pillow exactly; JPEG decoders may differ from
//! libjpeg-turbo by a few levels (see tests/data_cli.rs for the measured tolerance).

use super::raw::RawDataset;
use crate::checkpoint::Dtype;
use crate::error::{MnemoError, Result};
use rayon::prelude::*;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

fn bad(path: &Path, reason: impl Into<String>) -> MnemoError {
    MnemoError::InvalidDataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// How to turn the images into one tensor.
#[derive(Clone, Debug, Default)]
pub struct FolderOptions {
    /// Resize every image to (height, width); without it every image must have one size.
    pub size: Option<(usize, usize)>,
    /// One channel (Pillow's `convert("L")`) instead of three.
    pub grayscale: bool,
}

/// The imported dataset and what was found on the way.
#[derive(Clone, Debug)]
pub struct FolderImport {
    /// `input` U8 `[N, C, H, W]` (C = 3, or 1 with `grayscale`), `target` = class ids.
    pub dataset: RawDataset,
    /// Class names (folder names), index = class id.
    pub classes: Vec<String>,
    /// Files that are not images and were left out.
    pub skipped: Vec<PathBuf>,
}

const READ: [&str; 3] = ["png", "jpg", "jpeg"];
/// What torchvision's `ImageFolder` would also load but this build cannot decode.
const REFUSED: [&str; 6] = ["bmp", "ppm", "pgm", "tif", "tiff", "webp"];

fn hidden(name: &OsString) -> bool {
    name.as_encoded_bytes().first() == Some(&b'.')
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

/// Every directory under `dir` (itself included, symlinks followed, hidden ones left out),
/// unsorted; `ancestors` holds the canonical paths above it, to refuse symlink loops.
fn walk(dir: &Path, ancestors: &mut Vec<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| MnemoError::io(dir, e))?;
    if ancestors.contains(&canonical) {
        return Err(bad(
            dir,
            format!("a symlink loop: this is {} again", canonical.display()),
        ));
    }
    ancestors.push(canonical);
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).map_err(|e| MnemoError::io(dir, e))? {
        let e = e.map_err(|e| MnemoError::io(dir, e))?;
        let p = e.path();
        if !hidden(&e.file_name()) && p.is_dir() {
            walk(&p, ancestors, out)?;
        }
    }
    ancestors.pop();
    Ok(())
}

/// The image files of one class folder, in `ImageFolder` order; other files go to `skipped`.
fn class_files(class_dir: &Path, skipped: &mut Vec<PathBuf>) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    walk(class_dir, &mut Vec::new(), &mut dirs)?;
    // sorted(os.walk(..)) compares the paths as strings.
    dirs.sort_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    let mut files = Vec::new();
    for d in dirs {
        let mut names: Vec<OsString> = Vec::new();
        for e in std::fs::read_dir(&d).map_err(|e| MnemoError::io(&d, e))? {
            let e = e.map_err(|e| MnemoError::io(&d, e))?;
            if !hidden(&e.file_name()) && e.path().is_file() {
                names.push(e.file_name());
            }
        }
        names.sort();
        for n in names {
            let p = d.join(n);
            match extension(&p) {
                Some(e) if READ.contains(&e.as_str()) => files.push(p),
                Some(e) if REFUSED.contains(&e.as_str()) => {
                    return Err(bad(
                        &p,
                        format!(
                            "{} images are not supported (only PNG and JPEG): convert them first",
                            e.to_ascii_uppercase()
                        ),
                    ))
                }
                _ => skipped.push(p),
            }
        }
    }
    Ok(files)
}

/// Pillow's `convert("L")` of one RGB pixel: ITU-R 601-2 luma in 16-bit fixed point.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Decoded pixels as Pillow's `convert("RGB")` (3 channels) or `convert("L")` (1), interleaved.
fn to_pil(img: ::image::DynamicImage, grayscale: bool) -> (usize, usize, Vec<u8>) {
    use ::image::DynamicImage as D;
    let (w, h) = (img.width() as usize, img.height() as usize);
    // One byte per sample: 16-bit samples keep their high byte.
    let (channels, samples): (usize, Vec<u8>) = match img {
        D::ImageLuma8(b) => (1, b.into_raw()),
        D::ImageLumaA8(b) => (2, b.into_raw()),
        D::ImageRgb8(b) => (3, b.into_raw()),
        D::ImageRgba8(b) => (4, b.into_raw()),
        D::ImageLuma16(b) => (1, b.into_raw().iter().map(|v| (v >> 8) as u8).collect()),
        D::ImageLumaA16(b) => (2, b.into_raw().iter().map(|v| (v >> 8) as u8).collect()),
        D::ImageRgb16(b) => (3, b.into_raw().iter().map(|v| (v >> 8) as u8).collect()),
        D::ImageRgba16(b) => (4, b.into_raw().iter().map(|v| (v >> 8) as u8).collect()),
        other => (3, other.to_rgb8().into_raw()),
    };
    let px = samples.chunks_exact(channels);
    let out: Vec<u8> = match (grayscale, channels) {
        (true, 1 | 2) => px.map(|p| p[0]).collect(),
        (true, _) => px.map(|p| luma(p[0], p[1], p[2])).collect(),
        (false, 1 | 2) => px.flat_map(|p| [p[0]; 3]).collect(),
        (false, _) => px.flat_map(|p| [p[0], p[1], p[2]]).collect(),
    };
    (h, w, out)
}

/// Pillow's precision of the fixed-point resampling weights (`PRECISION_BITS` in Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One axis of Pillow's resampling with the bilinear (triangle) filter: for each output
/// position the first input index, the number of inputs and their fixed-point weights.
struct Axis {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter (support 1).
fn precompute(in_size: usize, out_size: usize) -> Axis {
    let scale = in_size as f32 as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let triangle = |x: f64| {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    };
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates towards zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
        let (xmin, xmax) = (xmin as usize, xmax.max(0) as usize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = triangle(((x + xmin) as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let f = w * (1u32 << PRECISION_BITS) as f64;
            weights[xx * ksize + x] = if w < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Axis {
        ksize,
        bounds,
        weights,
    }
}

/// Pillow's `clip8`: a fixed-point sum back to a byte.
fn clip8(v: i32) -> u8 {
    if v >= 1 << (PRECISION_BITS + 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Pillow's horizontal pass: `h` rows of `w` pixels of `c` bytes to rows of `ow` pixels.
fn horizontal(px: &[u8], (h, w, c): (usize, usize, usize), ow: usize) -> Vec<u8> {
    let ax = precompute(w, ow);
    let mut out = vec![0u8; h * ow * c];
    for y in 0..h {
        let row = &px[y * w * c..(y + 1) * w * c];
        for (xx, &(xmin, n)) in ax.bounds.iter().enumerate() {
            let k = &ax.weights[xx * ax.ksize..xx * ax.ksize + n];
            for ch in 0..c {
                let mut ss = 1i32 << (PRECISION_BITS - 1);
                for (x, &kx) in k.iter().enumerate() {
                    ss = ss.wrapping_add((row[(xmin + x) * c + ch] as i32).wrapping_mul(kx));
                }
                out[(y * ow + xx) * c + ch] = clip8(ss);
            }
        }
    }
    out
}

/// Pillow's vertical pass: `h` rows of `w` pixels of `c` bytes to `oh` rows.
fn vertical(px: &[u8], (h, w, c): (usize, usize, usize), oh: usize) -> Vec<u8> {
    let ax = precompute(h, oh);
    let stride = w * c;
    let mut out = vec![0u8; oh * stride];
    for (yy, &(ymin, n)) in ax.bounds.iter().enumerate() {
        let k = &ax.weights[yy * ax.ksize..yy * ax.ksize + n];
        for i in 0..stride {
            let mut ss = 1i32 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                ss = ss.wrapping_add((px[(ymin + y) * stride + i] as i32).wrapping_mul(ky));
            }
            out[yy * stride + i] = clip8(ss);
        }
    }
    out
}

/// Resizes interleaved `c`-channel bytes of `h`×`w` to `oh`×`ow` as Pillow 13's
/// `Image.resize((ow, oh), Image.BILINEAR)` does: one pass per axis that changes, each
/// rounded to bytes; horizontal first, unless the height shrinks by more than twice as many
/// pixels as the width does (then vertical first, as Pillow 13 does to save work; earlier
/// Pillow always went horizontal first, which can differ by 1 there).
pub fn resize_bilinear(
    px: &[u8],
    (h, w, c): (usize, usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<u8> {
    let vertical_first = oh < h && (h - oh) as i64 > 2 * (w as i64 - ow as i64);
    let mut cur = px.to_vec();
    let (mut ch, mut cw) = (h, w);
    for pass in if vertical_first { [1, 0] } else { [0, 1] } {
        if pass == 0 && ow != cw {
            cur = horizontal(&cur, (ch, cw, c), ow);
            cw = ow;
        } else if pass == 1 && oh != ch {
            cur = vertical(&cur, (ch, cw, c), oh);
            ch = oh;
        }
    }
    cur
}

/// One image as channels-first bytes `[C, H, W]`, and its (H, W) before any resize.
type Loaded = (Vec<u8>, (usize, usize));

/// Decodes, converts and resizes one image file (as `data import folder` does, for the
/// other importers too).
pub(crate) fn load(path: &Path, opts: &FolderOptions) -> Result<Loaded> {
    let bytes = crate::fsutil::read(path)?;
    let img = ::image::load_from_memory(&bytes)
        .map_err(|e| bad(path, format!("cannot decode the image: {e}")))?;
    let c = if opts.grayscale { 1 } else { 3 };
    let (h, w, mut px) = to_pil(img, opts.grayscale);
    if h == 0 || w == 0 {
        return Err(bad(path, "the image is empty (0 pixels)"));
    }
    if let Some((oh, ow)) = opts.size {
        if (oh, ow) != (h, w) {
            px = resize_bilinear(&px, (h, w, c), (oh, ow));
        }
    }
    let plane = px.len() / c;
    let mut chw = vec![0u8; px.len()];
    for (i, p) in px.chunks_exact(c).enumerate() {
        for (ch, &v) in p.iter().enumerate() {
            chw[ch * plane + i] = v;
        }
    }
    Ok((chw, (h, w)))
}

/// Reads DIR/CLASS/**/*.{png,jpg,jpeg} into a dataset (see the module docs for the order,
/// the pixel conversion and the resize).
pub fn import_folder(dir: &Path, opts: &FolderOptions) -> Result<FolderImport> {
    if let Some((h, w)) = opts.size {
        if h == 0 || w == 0 {
            return Err(MnemoError::unfit(
                crate::Setting::ImageSize,
                dir,
                format!("image size {h},{w}: both sides must be >= 1"),
            ));
        }
    }
    let mut class_dirs: Vec<(OsString, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| MnemoError::io(dir, e))? {
        let e = e.map_err(|e| MnemoError::io(dir, e))?;
        if !hidden(&e.file_name()) && e.path().is_dir() {
            class_dirs.push((e.file_name(), e.path()));
        }
    }
    class_dirs.sort();
    if class_dirs.is_empty() {
        return Err(bad(
            dir,
            "no class folders: expected one sub-folder of images per class (DIR/CLASS/*.png)",
        ));
    }
    let mut skipped = Vec::new();
    let mut files: Vec<(PathBuf, i64)> = Vec::new();
    let mut classes = Vec::new();
    for (id, (name, path)) in class_dirs.iter().enumerate() {
        let found = class_files(path, &mut skipped)?;
        if found.is_empty() {
            return Err(bad(path, "class folder has no .png, .jpg or .jpeg images"));
        }
        classes.push(name.to_string_lossy().into_owned());
        files.extend(found.into_iter().map(|f| (f, id as i64)));
    }
    let c = if opts.grayscale { 1 } else { 3 };
    if let Some((h, w)) = opts.size {
        // Every resized image is held at once: refuse what cannot be, before decoding.
        crate::validate::alloc_bytes(
            &format!("{}: {} images of {c}×{h}×{w}", dir.display(), files.len()),
            (files.len() as u64)
                .saturating_mul((c * h) as u64)
                .saturating_mul(w as u64),
            // Twice: the decoded images and the dataset they are copied into.
            2,
        )?;
    }
    // Decoded in parallel; errors reported for the first failing file in order.
    let loaded: Vec<Result<Loaded>> = files.par_iter().map(|(f, _)| load(f, opts)).collect();
    let mut input = Vec::new();
    let mut shape: Option<(usize, usize, &Path)> = None;
    for (r, (f, _)) in loaded.into_iter().zip(&files) {
        let (px, (h, w)) = r?;
        match (opts.size, shape) {
            (Some(_), _) => {}
            (None, None) => shape = Some((h, w, f)),
            (None, Some((h0, w0, first))) if (h, w) != (h0, w0) => {
                return Err(MnemoError::unfit(
                    crate::Setting::ImageSize,
                    f,
                    format!(
                        "the image is {h}×{w} (H×W) but {} is {h0}×{w0}",
                        first.display()
                    ),
                ))
            }
            _ => {}
        }
        input.extend(px);
    }
    let (h, w) = match (opts.size, shape) {
        (Some(s), _) => s,
        (None, Some((h, w, _))) => (h, w),
        (None, None) => unreachable!("every class has an image"),
    };
    Ok(FolderImport {
        dataset: RawDataset {
            path: dir.to_path_buf(),
            dtype: Dtype::U8,
            example_shape: vec![c, h, w],
            input,
            target: files.iter().map(|(_, t)| *t).collect(),
            target_shape: vec![],
            target_dtype: Dtype::I64,
        },
        classes,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_is_pillows() {
        // Pillow: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0))
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
        assert_eq!(luma(10, 200, 30), 124);
    }

    #[test]
    fn resize_to_the_same_size_is_the_identity_and_constants_stay_constant() {
        let px: Vec<u8> = (0..60).map(|i| (i * 4) as u8).collect();
        assert_eq!(resize_bilinear(&px, (4, 5, 3), (4, 5)), px);
        let flat = vec![77u8; 7 * 9];
        for (oh, ow) in [(3, 4), (20, 2), (7, 9), (1, 1)] {
            assert!(resize_bilinear(&flat, (7, 9, 1), (oh, ow))
                .iter()
                .all(|&v| v == 77));
        }
    }

    #[test]
    fn pillow_weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(28, 14), (5, 13), (100, 3), (3, 100), (1, 4)] {
            let ax = precompute(i, o);
            for (xx, &(xmin, n)) in ax.bounds.iter().enumerate() {
                assert!(xmin + n <= i);
                let s: i32 = ax.weights[xx * ax.ksize..xx * ax.ksize + n].iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= n as i32,
                    "{i}->{o}: {s}"
                );
            }
        }
    }
}
