//! `data import coco`: a COCO instances file as multi-label presence targets.
//!
//! - Columns: the file's `categories` in ascending id order, column k = the k-th smallest
//!   id (COCO 2017's 80 categories have ids 1–90 with gaps; this is the usual 0–79 mapping).
//! - Rows: the file's `images` in file order, each image read from IMAGES_DIR/`file_name`
//!   and decoded and resized as `data import folder` does (Pillow-exact bilinear). Row k is
//!   1 where the image has at least one annotation of category k. Crowd annotations
//!   (`iscrowd` = 1) count as present: the objects are there, only not separated.
//!   Images without annotations get an all-zero row (kept, unless `skip_empty`).
//! - Only the fields used are read (`images[].id`, `images[].file_name`,
//!   `annotations[].{id, image_id, category_id, iscrowd}`, `categories[].{id, name}`);
//!   segmentations and boxes are ignored.

use super::folder::{load, FolderOptions};
use super::raw::U8Dataset;
use crate::error::{MnemoError, Result};
use rayon::prelude::*;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn bad(path: &Path, reason: impl Into<String>) -> MnemoError {
    MnemoError::InvalidDataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: i64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    id: Option<i64>,
    image_id: i64,
    category_id: i64,
    #[serde(default)]
    iscrowd: i64,
}

#[derive(Deserialize)]
struct CocoCategory {
    id: i64,
    name: String,
}

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct CocoOptions {
    /// Resize every image to (height, width); without it every image must have one size.
    pub size: Option<(usize, usize)>,
    /// Leave out images without annotations.
    pub skip_empty: bool,
}

/// The imported dataset and what the file said.
#[derive(Clone, Debug)]
pub struct CocoImport {
    /// `input` U8 `[N, 3, H, W]`, `target` U8 `[N, K]`.
    pub dataset: U8Dataset,
    /// Category names and ids, in column order.
    pub categories: Vec<String>,
    pub category_ids: Vec<i64>,
    /// Images without annotations (kept as zero rows, or left out with `skip_empty`).
    pub empty: usize,
    /// Crowd annotations counted.
    pub crowd: usize,
}

/// How an annotation is named in messages: its id, or its index when it has none.
fn ann_name(a: &CocoAnnotation, i: usize) -> String {
    match a.id {
        Some(id) => format!("annotation id {id}"),
        None => format!("annotation #{i} (no id)"),
    }
}

/// Reads ANNOTATIONS.json and the images it lists (see the module docs).
pub fn import_coco(json: &Path, images_dir: &Path, opts: &CocoOptions) -> Result<CocoImport> {
    if let Some((h, w)) = opts.size {
        if h == 0 || w == 0 {
            return Err(MnemoError::unfit(
                crate::Setting::ImageSize,
                json,
                format!("image size {h},{w}: both sides must be >= 1"),
            ));
        }
    }
    let bytes = crate::fsutil::read(json)?;
    // serde_json's messages carry the line and column.
    let file: CocoFile = serde_json::from_slice(&bytes)
        .map_err(|e| bad(json, format!("not a COCO instances file: {e}")))?;
    if file.categories.is_empty() {
        return Err(bad(json, "'categories' is empty"));
    }
    let mut cats: Vec<&CocoCategory> = file.categories.iter().collect();
    cats.sort_by_key(|c| c.id);
    if let Some(w) = cats.windows(2).find(|w| w[0].id == w[1].id) {
        return Err(bad(json, format!("category id {} appears twice", w[0].id)));
    }
    let column: HashMap<i64, usize> = cats.iter().enumerate().map(|(k, c)| (c.id, k)).collect();
    let row: HashMap<i64, usize> = file
        .images
        .iter()
        .enumerate()
        .map(|(i, im)| (im.id, i))
        .collect();
    if row.len() != file.images.len() {
        let mut seen = std::collections::HashSet::new();
        let dup = file
            .images
            .iter()
            .find(|im| !seen.insert(im.id))
            .expect("a duplicate");
        return Err(bad(json, format!("image id {} appears twice", dup.id)));
    }
    let k = cats.len();
    let mut target = vec![0u8; file.images.len() * k];
    let mut annotated = vec![false; file.images.len()];
    let mut crowd = 0;
    for (i, a) in file.annotations.iter().enumerate() {
        let r = *row.get(&a.image_id).ok_or_else(|| {
            bad(
                json,
                format!(
                    "{}: image_id {} is not in 'images'",
                    ann_name(a, i),
                    a.image_id
                ),
            )
        })?;
        let c = *column.get(&a.category_id).ok_or_else(|| {
            bad(
                json,
                format!(
                    "{}: category_id {} is not in 'categories'",
                    ann_name(a, i),
                    a.category_id
                ),
            )
        })?;
        target[r * k + c] = 1;
        annotated[r] = true;
        crowd += (a.iscrowd != 0) as usize;
    }
    let empty = annotated.iter().filter(|&&a| !a).count();
    let keep: Vec<usize> = (0..file.images.len())
        .filter(|&i| annotated[i] || !opts.skip_empty)
        .collect();
    if keep.is_empty() {
        return Err(bad(
            json,
            if file.images.is_empty() {
                "'images' is empty"
            } else {
                "no image has an annotation (and skipping the empty ones leaves none)"
            },
        ));
    }
    let fo = FolderOptions {
        size: opts.size,
        grayscale: false,
    };
    let paths: Vec<PathBuf> = keep
        .iter()
        .map(|&i| images_dir.join(&file.images[i].file_name))
        .collect();
    let loaded: Vec<Result<_>> = paths
        .par_iter()
        .map(|p| {
            if !p.is_file() {
                return Err(bad(
                    p,
                    format!("no such image (listed in {})", json.display()),
                ));
            }
            load(p, &fo)
        })
        .collect();
    let mut input = Vec::new();
    let mut first: Option<((usize, usize), &Path)> = None;
    for (r, p) in loaded.into_iter().zip(&paths) {
        let (px, hw) = r?;
        match (opts.size, first) {
            (Some(_), _) => {}
            (None, None) => first = Some((hw, p)),
            (None, Some((hw0, p0))) if hw0 != hw => {
                return Err(MnemoError::unfit(
                    crate::Setting::ImageSize,
                    p,
                    format!(
                        "the image is {}×{} (H×W) but {} is {}×{}",
                        hw.0,
                        hw.1,
                        p0.display(),
                        hw0.0,
                        hw0.1
                    ),
                ))
            }
            _ => {}
        }
        input.extend(px);
    }
    let (h, w) = opts
        .size
        .or(first.map(|f| f.0))
        .expect("one or more images");
    let target = keep
        .iter()
        .flat_map(|&i| target[i * k..(i + 1) * k].iter().copied())
        .collect();
    Ok(CocoImport {
        dataset: U8Dataset {
            example_shape: vec![3, h, w],
            input,
            target_shape: vec![k],
            target,
        },
        categories: cats.iter().map(|c| c.name.clone()).collect(),
        category_ids: cats.iter().map(|c| c.id).collect(),
        empty,
        crowd,
    })
}
