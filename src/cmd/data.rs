//! `mnemo data`: build task sequences from datasets (import idx|npy|npz|folder|voc|coco|text,
//! shapes, split, permute, rotate, pad, normalize, augment, shuffle, take, concat, stats). Every
//! output is a dataset safetensors (`input`, `target`) written atomically, with provenance.

use super::{Global, HelpExtra, JsonLines, Status, EXIT_PLAIN};
use anyhow::Context;
use mnemo::data::coco::{import_coco, CocoOptions};
use mnemo::data::folder::{import_folder, FolderOptions};
use mnemo::data::raw::{import_idx, import_npy, import_npz, RawDataset, U8Dataset};
use mnemo::data::shapes::{self, Task};
use mnemo::data::voc::{import_voc, VocOptions};
use serde_json::json;
use std::path::{Path, PathBuf};

pub const HELP: HelpExtra = HelpExtra {
    examples: &[
        ("MNIST from its IDX files (gzipped or not), flattened for an MLP", "mnemo data import idx train-images-idx3-ubyte train-labels-idx1-ubyte --flatten -o mnist-train.safetensors"),
        ("Split-MNIST task 2: digits 2 and 3, relabelled 0 and 1", "mnemo data split mnist-train.safetensors --classes 2,3 --relabel -o task2.safetensors"),
        ("Permuted-MNIST task with its own fixed pixel permutation", "mnemo data permute mnist-train.safetensors --seed 3 -o pmnist3.safetensors"),
        ("Rotated-MNIST task: every image turned 45 degrees counter-clockwise (the flattened rows are 28x28 images)", "mnemo data rotate mnist-train.safetensors --degrees 45 --shape 28,28 -o rot45.safetensors"),
        ("a folder of class sub-folders of PNG/JPEG images, resized to 32x32 (like torchvision's ImageFolder)", "mnemo data import folder photos/ --size 32,32 -o photos.safetensors"),
        ("arrays saved by np.savez / np.savez_compressed (Keras' mnist.npz names them x_train, y_train)", "mnemo data import npz mnist.npz --x x_train --y y_train -o mnist-train.safetensors"),
        ("Pascal VOC 2012's train split as 21-class masks at 128x128 (void pixels stay 255)", "mnemo data import voc VOCdevkit/VOC2012 --split train --size 128,128 -o voc-train.safetensors"),
        ("a causal-LM token dataset: documents and EOS packed into rows of 1024 tokens (run_clm.py's group_texts)", "mnemo data import text corpus/*.txt --tokenizer tokenizer.json --seq-len 1024 -o train.safetensors"),
        ("JSON Lines with the text under \"text\": one row per document, cut at 512 tokens and padded", "mnemo data import text train.jsonl --jsonl text --no-pack --seq-len 512 --tokenizer tokenizer.json -o sft.safetensors"),
        ("COCO's category presence per image (80 columns, ids 1-90 mapped to 0-79)", "mnemo data import coco annotations/instances_val2017.json val2017/ --size 224,224 -o coco-val.safetensors"),
        ("inputs for an ImageNet-pretrained trunk: U8 / 255, then ImageNet's per-channel mean and std, as F32", "mnemo data normalize shapes-seg.safetensors --imagenet -o shapes-seg-norm.safetensors"),
        ("CIFAR-style augmentation: pad 4, random 32x32 crop, flip half the images, with the draw saved", "mnemo data augment cifar.safetensors --crop-padding 4 --hflip 0.5 --seed 1 --params-out params.jsonl -o cifar-aug.safetensors"),
        ("segmentation: rotate up to 15 degrees and shift up to 10%; masks follow, uncovered pixels void (255)", "mnemo data augment voc-train.safetensors --degrees 15 --translate 0.1,0.1 --seed 2 -o voc-aug.safetensors"),
        ("replay a saved draw (e.g. on another copy of the data)", "mnemo data augment cifar.safetensors --params-in params.jsonl -o again.safetensors"),
        ("MNIST padded to 32x32 (flat rows stay flat), as van de Ven & Tolias before permuting", "mnemo data pad mnist.safetensors --pad 2 --shape 28,28 -o mnist32.safetensors"),
        ("a generated shapes dataset: binary masks, then presence (80 columns) on the same images", "mnemo data shapes -n 2000 --task seg --seed 1 -o shapes-seg.safetensors && mnemo data shapes -n 2000 --task det --labels 80 --seed 1 -o shapes-det.safetensors"),
        ("a 1000-example validation set after the first 50000", "mnemo data take mnist-train.safetensors 1000 --skip 50000 -o val.safetensors"),
        ("examples per class and value range", "mnemo data stats task2.safetensors"),
    ],
    exit_status: EXIT_PLAIN,
};

/// Dataset tools: every output holds `input` [N, ...] and `target` [N], written atomically.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Import a dataset from another format.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Keep the examples of some classes (a Split-MNIST task).
    Split {
        input: PathBuf,
        /// Class ids to keep, comma-separated.
        #[arg(long, value_delimiter = ',', required = true, value_name = "C,...")]
        classes: Vec<i64>,
        /// Renumber the kept classes 0, 1, ... in the order given (task-incremental heads).
        #[arg(long)]
        relabel: bool,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Turn every image counter-clockwise about its centre (Rotated MNIST).
    ///
    /// Same size, zeros outside, bilinear, dtype kept (U8 rounded half up). Matches
    /// scipy.ndimage.rotate(x, D, axes=(-2, -1), reshape=False, order=1): a pixel whose source
    /// point falls outside the image is 0 (no blending across the edge, unlike torchvision).
    /// Images are the last two axes of each example ([N,H,W], [N,C,H,W]); a flat [N,H·W]
    /// input needs --shape H,W.
    Rotate {
        input: PathBuf,
        /// Angle in degrees, counter-clockwise (negative: clockwise).
        #[arg(long, allow_negative_numbers = true, value_name = "D", value_parser = parse_degrees)]
        degrees: f64,
        /// Image height and width of a flat input (each row is C·H·W values).
        #[arg(long, value_name = "H,W", value_parser = parse_hw)]
        shape: Option<(usize, usize)>,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Zero borders of P pixels around every image (torchvision's transforms.Pad(P)): Permuted
    /// MNIST as van de Ven & Tolias run it pads 28×28 to 32×32 before permuting. Images are the
    /// last two axes of each example; a flat [N,H·W] input needs --shape H,W and stays flat.
    Pad {
        input: PathBuf,
        /// Pixels added on each side.
        #[arg(long, value_name = "P", value_parser = clap::value_parser!(u64).range(1..=4096))]
        pad: u64,
        /// Image height and width of a flat input (each row is C·H·W values).
        #[arg(long, value_name = "H,W", value_parser = parse_hw)]
        shape: Option<(usize, usize)>,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Seeded random transforms per example, as torchvision's RandomCrop(size, padding,
    /// fill), RandomHorizontalFlip(p), RandomAffine(degrees, translate, fill) and additive
    /// Gaussian noise, applied in that order.
    ///
    /// Crop: pad every side by --crop-padding pixels of --fill, then crop --crop-size (default:
    /// the image's size) at an offset drawn uniformly. Flip: when a uniform draw is below
    /// --hflip P. Affine (--degrees and/or --translate/--translate-px): the angle uniform in
    /// [-D, D] (or [LO, HI]), positive clockwise as torchvision's F.affine turns it (F.rotate
    /// and `data rotate` count counter-clockwise); translations round(uniform(-a·W, a·W)) and
    /// round(uniform(-b·H, b·H)) pixels (Python's round), right and down; sampled as
    /// torchvision samples a tensor (its matrix, grid and grid_sample(align_corners=False)),
    /// --interpolation nearest (default, as RandomAffine) or bilinear, uncovered pixels
    /// --fill. Noise: x + S·z, z ~ N(0, 1), on the scale the model sees (U8 as k/255: k +
    /// 255·S·z, rounded half to even, clamped to 0-255). U8 and F32 inputs; images are the
    /// last two axes of each example ([N,C,H,W] or [N,H,W]; a flat input needs --shape).
    ///
    /// Masks ([N,H,W] targets) get the same crop, flip and affine, always nearest, with
    /// --mask-fill (default 255, the void label the losses and metrics skip); noise leaves
    /// them alone. Class ids and multi-hot rows are kept. Each example's parameters are drawn
    /// from --seed in example order: the same input and seed give the same bytes.
    /// --params-out writes them, one JSON line per example ({"example", "crop": {"padding",
    /// "top", "left", "height", "width"}, "hflip", "affine": {"angle", "translate"}, "noise":
    /// {"std", "seed"}}, only the parts drawn); --params-in applies such lines instead of
    /// drawing, e.g. to replay a draw with torchvision's functional ops.
    Augment {
        input: PathBuf,
        /// Rotation range: D for [-D, D], or LO,HI (degrees, clockwise).
        #[arg(long, value_delimiter = ',', num_args = 1, value_name = "D|LO,HI",
              allow_negative_numbers = true, value_parser = mnemo::validate::finite)]
        degrees: Vec<f64>,
        /// Translation range as fractions of the width and height, each in [0, 1]
        /// (RandomAffine's translate=(A, B)).
        #[arg(long, value_delimiter = ',', value_name = "A,B",
              value_parser = mnemo::validate::unit_closed, conflicts_with = "translate_px")]
        translate: Vec<f64>,
        /// Translation range in pixels: shifts round(uniform(-X, X)) and round(uniform(-Y, Y)).
        #[arg(long = "translate-px", value_delimiter = ',', value_name = "X,Y",
              value_parser = mnemo::validate::non_negative)]
        translate_px: Vec<f64>,
        /// Horizontal flip with probability P (RandomHorizontalFlip(p)).
        #[arg(long, value_name = "P", value_parser = mnemo::validate::unit_closed)]
        hflip: Option<f64>,
        /// Random crop: pixels of --fill added on every side first (RandomCrop's padding).
        #[arg(long = "crop-padding", value_name = "P",
              value_parser = clap::value_parser!(u64).range(0..=16_384))]
        crop_padding: Option<u64>,
        /// Random crop: the output's height and width (default: the input's).
        #[arg(long = "crop-size", value_name = "H,W", value_parser = parse_hw)]
        crop_size: Option<(usize, usize)>,
        /// Additive Gaussian noise of this standard deviation (in the model's units: U8 is k/255).
        #[arg(long = "noise-std", value_name = "S", value_parser = mnemo::validate::non_negative)]
        noise_std: Option<f64>,
        /// How the affine transform samples the input (masks: always nearest).
        #[arg(long, value_enum, default_value_t = AugmentInterpolation::Nearest)]
        interpolation: AugmentInterpolation,
        /// The value of padded and uncovered input pixels (U8: an integer 0-255).
        #[arg(long, default_value_t = 0.0, value_name = "V", allow_negative_numbers = true,
              value_parser = mnemo::validate::finite)]
        fill: f64,
        /// The value of padded and uncovered mask pixels (255: void, skipped by losses).
        #[arg(long = "mask-fill", default_value_t = 255, value_name = "ID")]
        mask_fill: u8,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the parameters drawn for each example (one JSON line per example).
        #[arg(long = "params-out", value_name = "FILE")]
        params_out: Option<PathBuf>,
        /// Apply these parameters (lines as --params-out writes them) instead of drawing.
        #[arg(long = "params-in", value_name = "FILE",
              conflicts_with_all = ["degrees", "translate", "translate_px", "hflip", "crop_padding",
                                    "crop_size", "noise_std", "seed", "params_out"])]
        params_in: Option<PathBuf>,
        /// Image height and width of a flat input (each row is C·H·W values).
        #[arg(long, value_name = "H,W", value_parser = parse_hw)]
        shape: Option<(usize, usize)>,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Per-channel (x − mean) / std to F32, as torchvision's ToTensor() then Normalize(mean,
    /// std): U8 is first scaled by 1/255 (as training reads it), each step in f32 in torch's
    /// order, so the values are torch's bit for bit. Channels are the first axis of each
    /// example ([N, C, H, W]); targets are kept. An ImageNet-pretrained trunk wants --imagenet.
    Normalize {
        input: PathBuf,
        /// Per-channel means (one value: every channel).
        #[arg(long, value_delimiter = ',', value_name = "M,...", allow_negative_numbers = true,
              value_parser = mnemo::validate::finite, requires = "std", required_unless_present = "imagenet")]
        mean: Vec<f64>,
        /// Per-channel standard deviations, positive (one value: every channel).
        #[arg(long, value_delimiter = ',', value_name = "S,...", value_parser = mnemo::validate::positive,
              requires = "mean")]
        std: Vec<f64>,
        /// ImageNet's statistics: --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225.
        #[arg(long, conflicts_with_all = ["mean", "std"])]
        imagenet: bool,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Apply one fixed, seeded permutation to the features of every example (Permuted MNIST).
    Permute {
        input: PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// The same examples in a seeded random order.
    Shuffle {
        input: PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// N examples in file order, after skipping K.
    Take {
        input: PathBuf,
        /// How many (at least 1).
        #[arg(value_parser = mnemo::validate::count)]
        n: usize,
        #[arg(long, default_value_t = 0, value_name = "K", value_parser = mnemo::validate::size)]
        skip: usize,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Datasets one after the other (same dtype and example shape).
    Concat {
        #[arg(required = true, num_args = 2..)]
        inputs: Vec<PathBuf>,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Examples per class, shape, dtype and value range, as JSON.
    Stats { input: PathBuf },
    /// Send a dataset to stdout as a stream of chunks, in file order, for `mnemo online --data
    /// -` (or any reader of the framing): safetensors files back to back (U8 inputs stay U8),
    /// or JSON Lines {"input": [...], "target": ...}, one example per line.
    Stream {
        input: PathBuf,
        /// Examples per safetensors frame (JSON Lines: one per line, whatever this is).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = mnemo::validate::count)]
        chunk: usize,
        #[arg(long, value_enum, default_value = "safetensors")]
        format: StreamFormatName,
    },
    /// Generate images of shapes on textured backgrounds: masks, presence or class targets.
    ///
    /// Each S×S RGB image (U8 [N,3,S,S]) shows 1-3 non-overlapping flat-coloured shapes
    /// (circle, square, triangle, cross, diamond: label ids 0-4, listed in the metadata as
    /// mnemo.data.class_names) on a gradient with stripes or a checkerboard, with per-pixel
    /// noise over everything. --task seg: target U8 [N,S,S], 1 on every shape pixel (exact:
    /// no anti-aliasing); det: U8 [N,K] multi-hot presence of each kind (K = 5, or --labels);
    /// cls: [N] the kind of the largest shape (one main shape and 0-2 smaller ones). seg and
    /// det draw the same images for one seed; the bytes depend on the seed alone, and -n M
    /// is the first M examples of any larger -n.
    Shapes {
        /// Number of examples.
        #[arg(short = 'n', long = "examples", value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        n: u64,
        /// Image side S (pixels).
        #[arg(long, default_value_t = 64, value_name = "S", value_parser = clap::value_parser!(u64).range(16..=1024))]
        size: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Which target to write.
        #[arg(long, value_enum, default_value_t = ShapesTask::Seg)]
        task: ShapesTask,
        /// det only: columns of the presence rows (>= 5; the extra ones stay 0), e.g. 80 for
        /// a head sized for COCO.
        #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(5..=100_000))]
        labels: Option<u64>,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFormatName {
    Safetensors,
    Jsonl,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ShapesTask {
    /// Binary foreground masks [N,S,S].
    Seg,
    /// Multi-hot presence of each shape kind [N,K].
    Det,
    /// The kind of the largest shape [N].
    Cls,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum AugmentInterpolation {
    /// Nearest pixel (round half to even), as RandomAffine's default.
    Nearest,
    /// Bilinear, four taps.
    Bilinear,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum VocMask {
    /// Class ids 0-20 (255 void).
    Classes,
    /// 1 for any object, 0 for background (255 void).
    Binary,
}

#[derive(clap::Subcommand, Debug)]
pub enum ImportCommand {
    /// MNIST / Fashion-MNIST IDX files (gzipped or not): input U8 [N,1,H,W] (or [N,H·W]).
    Idx {
        images: PathBuf,
        labels: PathBuf,
        /// Store each image as one row of H·W features (for MLPs).
        #[arg(long)]
        flatten: bool,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// NumPy arrays X [N, ...] (uint8 or float) and Y [N] (integer labels), .npy files.
    Npy {
        x: PathBuf,
        y: PathBuf,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// X and Y from one NumPy .npz archive (np.savez or np.savez_compressed).
    ///
    /// The arrays named by --x and --y; by default those named x and y, or, in an archive of
    /// exactly two arrays named otherwise, the first (X) and the second (Y).
    Npz {
        file: PathBuf,
        /// Name of the X array (as np.load(FILE).files lists it).
        #[arg(long = "x", value_name = "NAME")]
        x_name: Option<String>,
        /// Name of the Y array.
        #[arg(long = "y", value_name = "NAME")]
        y_name: Option<String>,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Class sub-folders of PNG/JPEG images: input U8 [N,C,H,W], target = class id.
    ///
    /// torchvision ImageFolder's order: class ids follow the sorted folder names, files are
    /// sorted within a class (nested folders included). Pixels as Pillow's convert("RGB") or,
    /// with --grayscale, convert("L"). Other files are skipped, hidden ones too; BMP, PPM,
    /// PGM, TIFF and WebP are refused. The class names are stored in the metadata
    /// (mnemo.data.class_names, a JSON list).
    Folder {
        dir: PathBuf,
        /// Resize every image to H×W with Pillow's bilinear filter (a triangle filter,
        /// antialiased when shrinking; bit-identical to Pillow 13's
        /// Image.resize((W, H), Image.BILINEAR)).
        /// Without it every image must have the same size.
        #[arg(long, value_name = "H,W", value_parser = parse_hw)]
        size: Option<(usize, usize)>,
        /// One channel (luma, Pillow's convert("L")) instead of RGB.
        #[arg(long)]
        grayscale: bool,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// Pascal VOC 2012 segmentation: input U8 [N,3,H,W], target U8 [N,H,W] masks.
    ///
    /// Ids from ROOT/ImageSets/Segmentation/SPLIT.txt (or a list file given by path);
    /// images ROOT/JPEGImages/ID.jpg, masks ROOT/SegmentationClass/ID.png: palette PNGs whose
    /// palette indices are the class ids (0 background, 1-20 objects, 255 void: object
    /// boundaries, which the losses and metrics skip). 8-bit greyscale masks holding the same
    /// ids are read too. The 21 class names go into the metadata (mnemo.data.class_names).
    Voc {
        root: PathBuf,
        /// train, val, trainval (a list under ImageSets/Segmentation/) or a list file's path.
        #[arg(long, default_value = "train", value_name = "SPLIT|FILE")]
        split: String,
        /// Resize images with Pillow's bilinear filter (as import folder) and masks with
        /// Pillow's nearest neighbour (Image.NEAREST, bit-identical); without it every image
        /// must have the same size.
        #[arg(long, value_name = "H,W", value_parser = parse_hw)]
        size: Option<(usize, usize)>,
        /// classes: ids 0-20; binary: 1 for any object, 0 background (void stays 255).
        #[arg(long, value_enum, default_value_t = VocMask::Classes)]
        mask: VocMask,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    /// COCO instances JSON: input U8 [N,3,H,W], target U8 [N,K] category presence.
    ///
    /// Columns are the file's categories in ascending id order (COCO 2017: ids 1-90 with
    /// gaps become columns 0-79; names in mnemo.data.class_names, ids in
    /// mnemo.data.category_ids). Rows follow the file's images (IMAGES_DIR/file_name); a
    /// row is 1 where the image has an annotation of that category, crowd annotations
    /// (iscrowd=1) included. Images without annotations get an all-zero row.
    Coco {
        annotations: PathBuf,
        images: PathBuf,
        /// Resize every image with Pillow's bilinear filter (as import folder); without it
        /// every image must have the same size.
        #[arg(long, value_name = "H,W", value_parser = parse_hw)]
        size: Option<(usize, usize)>,
        /// Leave out images that have no annotation.
        #[arg(long)]
        skip_empty: bool,
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
    },
    Text(super::data_text::Args),
}

/// Parses a finite angle in degrees.
fn parse_degrees(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(format!("'{s}' is not a finite number of degrees")),
    }
}

/// The largest image side accepted by --size and --shape.
const MAX_SIDE: usize = 16_384;

/// Parses "H,W" (two positive integers, each at most 16384).
fn parse_hw(s: &str) -> Result<(usize, usize), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let side = |p: &str| -> Result<usize, String> {
        match p.parse::<usize>() {
            Ok(v) if v > 0 && v <= MAX_SIDE => Ok(v),
            Ok(v) if v > MAX_SIDE => Err(format!("{v} exceeds the limit of {MAX_SIDE} pixels")),
            _ => Err(format!("'{p}' is not a positive integer")),
        }
    };
    match parts.as_slice() {
        [h, w] => Ok((side(h)?, side(w)?)),
        _ => Err(format!(
            "expected H,W (two integers, e.g. 28,28), got '{s}'"
        )),
    }
}

/// The metadata key for class names (a JSON list, index = class id).
const CLASS_NAMES: &str = "class_names";

/// The class names a dataset file carries, if any (as stored: a JSON list).
fn class_names(path: &Path) -> Option<String> {
    let c = mnemo::checkpoint::Checkpoint::open(path).ok()?;
    c.metadata()
        .get(&format!("mnemo.data.{CLASS_NAMES}"))
        .cloned()
}

/// Provenance (the command, the inputs' hashes) plus `mnemo.data.*` entries.
fn metadata(
    g: &Global,
    inputs: &[&Path],
    extra: &[(&str, String)],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut prov = g.provenance();
    for p in inputs {
        prov.input(p.display().to_string(), mnemo::checkpoint::file_hash(p)?);
    }
    let mut meta = prov.metadata();
    for (k, v) in extra {
        meta.insert(format!("mnemo.data.{k}"), v.clone());
    }
    Ok(meta)
}

fn write(
    g: &Global,
    d: &RawDataset,
    out: &Path,
    inputs: &[&Path],
    extra: &[(&str, String)],
) -> anyhow::Result<()> {
    let meta = metadata(g, inputs, extra)?;
    d.write(out, &meta)
        .with_context(|| format!("writing {}", out.display()))?;
    let counts: serde_json::Map<String, serde_json::Value> = d
        .class_counts()
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    let mut line = json!({
        "output": out.display().to_string(), "examples": d.len(), "dtype": d.dtype.to_string(),
        "example_shape": d.example_shape, "classes": counts,
    });
    if !d.has_classes() {
        line["target_shape"] = json!(d.target_shape);
    }
    JsonLines::stdout().emit(&line)
}

/// Writes a dataset with masks or multi-hot rows, and reports what the target holds:
/// pixels per value (masks) or positives per column (multi-hot rows).
fn write_u8(
    g: &Global,
    d: &U8Dataset,
    out: &Path,
    inputs: &[&Path],
    extra: &[(&str, String)],
) -> anyhow::Result<()> {
    let meta = metadata(g, inputs, extra)?;
    d.write(out, &meta)
        .with_context(|| format!("writing {}", out.display()))?;
    let mut line = json!({
        "output": out.display().to_string(), "examples": d.len(), "dtype": "U8",
        "example_shape": d.example_shape, "target_shape": d.target_shape,
    });
    if d.target_shape.len() == 2 {
        let mut counts = std::collections::BTreeMap::<u8, u64>::new();
        for &v in &d.target {
            *counts.entry(v).or_default() += 1;
        }
        let m: serde_json::Map<String, serde_json::Value> = counts
            .into_iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        line["pixels"] = json!(m);
    } else {
        let k = d.target_shape[0];
        let mut pos = vec![0u64; k];
        for (i, &v) in d.target.iter().enumerate() {
            pos[i % k] += v as u64;
        }
        line["positives"] = json!(pos);
    }
    JsonLines::stdout().emit(&line)
}

/// Each subcommand's input files and output, for the destinations check.
fn files(c: &DataCommand) -> (Vec<&PathBuf>, Option<&PathBuf>) {
    use DataCommand as D;
    use ImportCommand as I;
    match c {
        D::Import(I::Idx {
            images,
            labels,
            output,
            ..
        }) => (vec![images, labels], Some(output)),
        D::Import(I::Npy { x, y, output }) => (vec![x, y], Some(output)),
        D::Import(I::Npz { file, output, .. }) => (vec![file], Some(output)),
        // Checks its own files (stdin, the tokenizer): cmd/data_text.rs.
        D::Import(I::Text(_)) => (vec![], None),
        D::Import(I::Folder { output, .. }) | D::Import(I::Voc { output, .. }) => {
            (vec![], Some(output))
        }
        D::Import(I::Coco {
            annotations,
            output,
            ..
        }) => (vec![annotations], Some(output)),
        D::Augment {
            input,
            params_in: Some(p),
            output,
            ..
        } => (vec![input, p], Some(output)),
        D::Split { input, output, .. }
        | D::Augment { input, output, .. }
        | D::Rotate { input, output, .. }
        | D::Pad { input, output, .. }
        | D::Normalize { input, output, .. }
        | D::Permute { input, output, .. }
        | D::Shuffle { input, output, .. }
        | D::Take { input, output, .. } => (vec![input], Some(output)),
        D::Concat { inputs, output } => (inputs.iter().collect(), Some(output)),
        D::Stats { input } | D::Stream { input, .. } => (vec![input], None),
        D::Shapes { output, .. } => (vec![], Some(output)),
    }
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<Status> {
    let (inputs, output) = files(&args.command);
    if let Some(o) = output {
        let mut d = mnemo::fsutil::Destinations::new();
        match inputs.as_slice() {
            // A one-input transform may replace its input (`data rotate x -o x`): the input
            // is read whole before its replacement is put in place.
            [i] if !matches!(args.command, DataCommand::Import(_))
                && mnemo::fsutil::same_file(i, o) =>
            {
                d.in_place("-o (the input)", o);
            }
            _ => {
                for i in &inputs {
                    d.input("the input", i);
                }
                d.output("-o", o);
            }
        }
        if let DataCommand::Augment {
            params_out: Some(p),
            ..
        } = &args.command
        {
            d.output("--params-out", p);
        }
        d.check()?;
    }
    match args.command {
        DataCommand::Import(ImportCommand::Text(a)) => super::data_text::run(a, g)?,
        DataCommand::Import(ImportCommand::Voc {
            root,
            split,
            size,
            mask,
            output,
        }) => {
            let binary = matches!(mask, VocMask::Binary);
            let v = import_voc(
                &root,
                &VocOptions {
                    split,
                    size,
                    binary,
                },
            )?;
            let mut extra = vec![
                (CLASS_NAMES, json!(v.classes).to_string()),
                ("void", "255".to_string()),
            ];
            if let Some((h, w)) = size {
                extra.push(("size", format!("{h},{w}")));
            }
            // The list file is hashed; the tree of images is not one file.
            write_u8(g, &v.dataset, &output, &[&v.list], &extra)?;
        }
        DataCommand::Import(ImportCommand::Coco {
            annotations,
            images,
            size,
            skip_empty,
            output,
        }) => {
            let c = import_coco(&annotations, &images, &CocoOptions { size, skip_empty })?;
            if c.empty > 0 {
                g.say(format!(
                    "mnemo: {} image(s) without annotations {}",
                    c.empty,
                    if skip_empty {
                        "left out"
                    } else {
                        "kept as all-zero rows"
                    }
                ));
            }
            let mut extra = vec![
                (CLASS_NAMES, json!(c.categories).to_string()),
                ("category_ids", json!(c.category_ids).to_string()),
            ];
            if let Some((h, w)) = size {
                extra.push(("size", format!("{h},{w}")));
            }
            write_u8(g, &c.dataset, &output, &[&annotations], &extra)?;
        }
        DataCommand::Shapes {
            n,
            size,
            seed,
            task,
            labels,
            output,
        } => {
            let t = match task {
                ShapesTask::Seg => Task::Seg,
                ShapesTask::Det => Task::Det,
                ShapesTask::Cls => Task::Cls,
            };
            if labels.is_some() && !matches!(t, Task::Det) {
                anyhow::bail!("--labels applies to --task det only");
            }
            let k = labels.map_or(shapes::KINDS.len(), |k| k as usize);
            let d = shapes::generate(n as usize, size as usize, seed, t, k)?;
            let extra = vec![
                (CLASS_NAMES, json!(shapes::KINDS).to_string()),
                ("shapes_seed", seed.to_string()),
                ("shapes_task", format!("{task:?}").to_lowercase()),
            ];
            let s = size as usize;
            if matches!(t, Task::Cls) {
                let raw = RawDataset {
                    path: output.clone(),
                    dtype: mnemo::checkpoint::Dtype::U8,
                    example_shape: vec![3, s, s],
                    input: d.input,
                    target: d.target_class,
                    target_shape: vec![],
                    target_dtype: mnemo::checkpoint::Dtype::I64,
                };
                write(g, &raw, &output, &[], &extra)?;
            } else {
                let u = U8Dataset {
                    example_shape: vec![3, s, s],
                    input: d.input,
                    target_shape: d.target_shape,
                    target: d.target_u8,
                };
                write_u8(g, &u, &output, &[], &extra)?;
            }
        }
        DataCommand::Import(ImportCommand::Idx {
            images,
            labels,
            flatten,
            output,
        }) => {
            let d = import_idx(&images, &labels, flatten)?;
            write(g, &d, &output, &[&images, &labels], &[])?;
        }
        DataCommand::Import(ImportCommand::Npy { x, y, output }) => {
            let d = import_npy(&x, &y)?;
            write(g, &d, &output, &[&x, &y], &[])?;
        }
        DataCommand::Import(ImportCommand::Npz {
            file,
            x_name,
            y_name,
            output,
        }) => {
            let d = import_npz(&file, x_name.as_deref(), y_name.as_deref())?;
            write(g, &d, &output, &[&file], &[])?;
        }
        DataCommand::Import(ImportCommand::Folder {
            dir,
            size,
            grayscale,
            output,
        }) => {
            let f = import_folder(&dir, &FolderOptions { size, grayscale })?;
            if let Some(first) = f.skipped.first() {
                g.say(format!(
                    "mnemo: skipped {} file(s) that are not .png, .jpg or .jpeg (first: {})",
                    f.skipped.len(),
                    first.display()
                ));
            }
            let mut extra = vec![(CLASS_NAMES, json!(f.classes).to_string())];
            if let Some((h, w)) = size {
                extra.push(("size", format!("{h},{w}")));
            }
            // The folder itself is the input: no content hash (it is not one file).
            write(g, &f.dataset, &output, &[], &extra)?;
        }
        DataCommand::Rotate {
            input,
            degrees,
            shape,
            output,
        } => {
            let d = RawDataset::open(&input)?;
            // The input turns; masks would have to turn with it (not done here).
            d.require_classes("rotate")?;
            let r = mnemo::data::rotate::rotate(&d, degrees, shape)?;
            let mut extra = vec![("rotate_degrees", degrees.to_string())];
            extra.extend(class_names(&input).map(|c| (CLASS_NAMES, c)));
            write(g, &r, &output, &[&input], &extra)?;
        }
        DataCommand::Augment {
            input,
            degrees,
            translate,
            translate_px,
            hflip,
            crop_padding,
            crop_size,
            noise_std,
            interpolation,
            fill,
            mask_fill,
            seed,
            params_out,
            params_in,
            shape,
            output,
        } => {
            use mnemo::data::augment::{self, Draws, Fill, Interpolation, Translate};
            let d = RawDataset::open(&input)?;
            let (h, w) = mnemo::data::rotate::image_plane(&d, shape, "augment")?;
            let fill = Fill {
                interpolation: match interpolation {
                    AugmentInterpolation::Nearest => Interpolation::Nearest,
                    AugmentInterpolation::Bilinear => Interpolation::Bilinear,
                },
                input: fill,
                mask: mask_fill,
            };
            let mut extra = vec![
                (
                    "augment_interpolation",
                    format!("{interpolation:?}").to_lowercase(),
                ),
                ("augment_fill", fill.input.to_string()),
                ("augment_mask_fill", mask_fill.to_string()),
            ];
            let mut hashed: Vec<&Path> = vec![&input];
            let params = if let Some(pi) = &params_in {
                let text = mnemo::fsutil::read_to_string(pi)?;
                hashed.push(pi);
                extra.push(("augment_params", pi.display().to_string()));
                augment::read_params(pi, &text, d.len(), h, w)?
            } else {
                let pair = |v: &[f64], flag: &str| -> anyhow::Result<(f64, f64)> {
                    match v {
                        [a, b] => Ok((*a, *b)),
                        _ => anyhow::bail!("{flag}: expected two values X,Y, got {}", v.len()),
                    }
                };
                let degrees = match degrees.as_slice() {
                    [] => None,
                    [d] if *d < 0.0 => anyhow::bail!(
                        "--degrees {d}: one value is the range [-D, D] and must be ≥ 0 (give LO,HI for another range)"
                    ),
                    [d] => Some((-d, *d)),
                    [lo, hi] if lo <= hi => Some((*lo, *hi)),
                    [lo, hi] => anyhow::bail!("--degrees {lo},{hi}: LO must not exceed HI"),
                    v => anyhow::bail!("--degrees: expected D or LO,HI, got {} values", v.len()),
                };
                let translate = if !translate.is_empty() {
                    let (a, b) = pair(&translate, "--translate")?;
                    Some(Translate::Fraction(a, b))
                } else if !translate_px.is_empty() {
                    let (x, y) = pair(&translate_px, "--translate-px")?;
                    if x.max(y) > augment::MAX_PIXELS as f64 {
                        anyhow::bail!(
                            "--translate-px {x},{y}: at most {} pixels",
                            augment::MAX_PIXELS
                        );
                    }
                    Some(Translate::Pixels(x, y))
                } else {
                    None
                };
                let crop = (crop_padding.is_some() || crop_size.is_some())
                    .then(|| (crop_padding.unwrap_or(0) as usize, crop_size));
                let draws = Draws {
                    crop,
                    hflip,
                    degrees,
                    translate,
                    noise_std,
                };
                if draws.is_empty() {
                    anyhow::bail!(
                        "nothing to draw: give at least one of --degrees, --translate, --translate-px, --hflip, --crop-padding, --crop-size, --noise-std (or --params-in)"
                    );
                }
                extra.push(("augment_seed", seed.to_string()));
                draws
                    .draw(d.len(), h, w, seed)
                    .map_err(|r| anyhow::anyhow!("{}: {r}", input.display()))?
            };
            let r = augment::apply(&d, shape, &params, &fill)?;
            // The parameters are staged first and put in place right after the dataset, so
            // a failure leaves neither (the staged file is removed when dropped).
            let staged = match &params_out {
                Some(po) => {
                    let mut text = String::new();
                    for p in &params {
                        text.push_str(&serde_json::to_string(p)?);
                        text.push('\n');
                    }
                    let mut f = mnemo::checkpoint::AtomicFile::create(po)?;
                    f.write_all(text.as_bytes())?;
                    Some((f, po))
                }
                None => None,
            };
            extra.extend(class_names(&input).map(|c| (CLASS_NAMES, c)));
            write(g, &r, &output, &hashed, &extra)?;
            if let Some((f, po)) = staged {
                f.commit()
                    .with_context(|| format!("writing {}", po.display()))?;
            }
        }
        DataCommand::Pad {
            input,
            pad,
            shape,
            output,
        } => {
            let d = RawDataset::open(&input)?;
            // Masks would need the same border.
            d.require_classes("pad")?;
            let r = mnemo::data::pad::pad(&d, pad as usize, shape)?;
            let mut extra = vec![("pad", pad.to_string())];
            extra.extend(class_names(&input).map(|c| (CLASS_NAMES, c)));
            write(g, &r, &output, &[&input], &extra)?;
        }
        DataCommand::Normalize {
            input,
            mean,
            std,
            imagenet,
            output,
        } => {
            use mnemo::data::normalize::{normalize, IMAGENET_MEAN, IMAGENET_STD};
            let d = RawDataset::open(&input)?;
            let (mean, std) = if imagenet {
                (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())
            } else {
                (mean, std)
            };
            let r = normalize(&d, &mean, &std)?;
            let list = |v: &[f64]| v.iter().map(f64::to_string).collect::<Vec<_>>().join(",");
            let mut extra = vec![
                ("normalize_mean", list(&mean)),
                ("normalize_std", list(&std)),
            ];
            extra.extend(class_names(&input).map(|c| (CLASS_NAMES, c)));
            write(g, &r, &output, &[&input], &extra)?;
        }
        DataCommand::Split {
            input,
            classes,
            relabel,
            output,
        } => {
            let d = RawDataset::open(&input)?;
            d.require_classes("split --classes")?;
            let rows: Vec<usize> = (0..d.len())
                .filter(|&i| classes.contains(&d.target[i]))
                .collect();
            if rows.is_empty() {
                anyhow::bail!(
                    "{}: no example has a class in {classes:?} (classes present: {:?})",
                    input.display(),
                    d.class_counts().keys().collect::<Vec<_>>()
                );
            }
            let mut s = d.select(&rows);
            if relabel {
                for t in &mut s.target {
                    *t = classes.iter().position(|c| c == t).expect("kept class") as i64;
                }
            }
            let cl = classes
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let mut extra = vec![("classes", cl), ("relabel", relabel.to_string())];
            // Class names follow the ids: renumbered with --relabel.
            let names = class_names(&input).and_then(|n| {
                if !relabel {
                    return Some(n);
                }
                let all: Vec<String> = serde_json::from_str(&n).ok()?;
                let kept = classes
                    .iter()
                    .map(|&c| usize::try_from(c).ok().and_then(|c| all.get(c)))
                    .collect::<Option<Vec<_>>>()?;
                Some(json!(kept).to_string())
            });
            extra.extend(names.map(|n| (CLASS_NAMES, n)));
            write(g, &s, &output, &[&input], &extra)?;
        }
        DataCommand::Permute {
            input,
            seed,
            output,
        } => {
            let d = RawDataset::open(&input)?;
            // A feature permutation of the input would leave masks behind.
            d.require_classes("permute")?;
            let (p, _) = d.permuted(seed);
            let mut extra = vec![("permutation_seed", seed.to_string())];
            extra.extend(class_names(&input).map(|n| (CLASS_NAMES, n)));
            write(g, &p, &output, &[&input], &extra)?;
        }
        DataCommand::Shuffle {
            input,
            seed,
            output,
        } => {
            let s = RawDataset::open(&input)?.shuffled(seed);
            let mut extra = vec![("shuffle_seed", seed.to_string())];
            extra.extend(class_names(&input).map(|n| (CLASS_NAMES, n)));
            write(g, &s, &output, &[&input], &extra)?;
        }
        DataCommand::Take {
            input,
            n,
            skip,
            output,
        } => {
            let d = RawDataset::open(&input)?;
            if skip + n > d.len() {
                anyhow::bail!(
                    "{}: has {} examples; cannot take {n} after skipping {skip}",
                    input.display(),
                    d.len()
                );
            }
            let rows: Vec<usize> = (skip..skip + n).collect();
            let extra: Vec<_> = class_names(&input)
                .map(|n| (CLASS_NAMES, n))
                .into_iter()
                .collect();
            write(g, &d.select(&rows), &output, &[&input], &extra)?;
        }
        DataCommand::Concat { inputs, output } => {
            let mut it = inputs.iter();
            let mut d = RawDataset::open(it.next().expect("clap: two or more"))?;
            for p in it {
                d = d.concat(&RawDataset::open(p)?)?;
            }
            let refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
            // Class names survive when every input has the same.
            let names: Vec<Option<String>> = inputs.iter().map(|p| class_names(p)).collect();
            let extra: Vec<_> = match names.first() {
                Some(Some(n)) if names.iter().all(|m| m.as_ref() == Some(n)) => {
                    vec![(CLASS_NAMES, n.clone())]
                }
                _ => vec![],
            };
            write(g, &d, &output, &refs, &extra)?;
        }
        DataCommand::Stream {
            input,
            chunk,
            format,
        } => {
            let d = mnemo::data::Dataset::open(&input)?;
            if format == StreamFormatName::Jsonl
                && matches!(d.target_kind, mnemo::data::TargetKind::Tokens { .. })
            {
                anyhow::bail!(
                    "--format jsonl: {} holds token sequences, which stream as safetensors frames (JSON Lines inputs read back as numbers, not token ids); use --format safetensors",
                    input.display()
                );
            }
            let format = match format {
                StreamFormatName::Safetensors => mnemo::data::stream::StreamFormat::Safetensors,
                StreamFormatName::Jsonl => mnemo::data::stream::StreamFormat::JsonLines,
            };
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            let mut from = 0;
            while from < d.len() {
                let n = chunk.min(d.len() - from);
                mnemo::data::stream::write_chunk(&d, from, n, format, &mut w)
                    .context("writing the stream to stdout")?;
                from += n;
            }
            std::io::Write::flush(&mut w).context("writing the stream to stdout")?;
        }
        DataCommand::Stats { input } => {
            let d = mnemo::data::Dataset::open(&input)?;
            let raw = RawDataset::open(&input)?;
            let (lo, hi) = d
                .inputs
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let counts: serde_json::Map<String, serde_json::Value> = raw
                .class_counts()
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            let mut line = json!({
                "path": input.display().to_string(), "examples": d.len(),
                "dtype": raw.dtype.to_string(), "example_shape": raw.example_shape,
                "classes": counts,
                // As the model sees it (U8 scaled by 1/255).
                "min": lo, "max": hi,
            });
            match raw.target_shape.len() {
                0 => {}
                // Masks: pixels per value (255: void).
                2 => {
                    let mut px = std::collections::BTreeMap::<i64, u64>::new();
                    for &v in &raw.target {
                        *px.entry(v).or_default() += 1;
                    }
                    line["target_shape"] = json!(raw.target_shape);
                    line["pixels"] = json!(px
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), json!(v)))
                        .collect::<serde_json::Map<_, _>>());
                }
                // Multi-hot rows: positives per column.
                _ => {
                    let k = raw.target_shape[0].max(1);
                    let mut pos = vec![0i64; k];
                    for (i, &v) in raw.target.iter().enumerate() {
                        pos[i % k] += v;
                    }
                    line["target_shape"] = json!(raw.target_shape);
                    line["positives"] = json!(pos);
                }
            }
            JsonLines::stdout().emit(&line)?;
        }
    }
    Ok(Status::Success)
}
