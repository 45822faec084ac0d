//! Datasets: a safetensors file with `input` `[N, ...]` (U8 scaled by 1/255,
//! or a float dtype) and `target`: `[N]` integer class ids, `[N, H, W]` integer
//! masks (a class id per pixel; 0/1 for binary masks) or `[N, K]` multi-hot
//! rows (U8/I64/F32 values 0 or 1: multi-label presence). Seeded shuffling and
//! batching. In masks the value 255 ([`VOID`]) means "no label here" (Pascal VOC's
//! object boundaries): losses and metrics skip those pixels.

pub mod augment;
pub mod coco;
pub mod folder;
pub mod normalize;
pub mod pad;
pub mod raw;
pub mod rotate;
pub mod shapes;
pub mod stream;
pub mod text;
pub mod voc;

use crate::checkpoint::{Checkpoint, Dtype};
use crate::error::{MnemoError, Result};
use crate::rng::Rng;
use candle_core::{Device, Tensor};
use std::path::{Path, PathBuf};

/// The mask value of void (unlabelled) pixels: torch's `ignore_index` as torchvision's
/// segmentation references set it for Pascal VOC. Allowed in masks only, whatever the
/// number of output channels (so a mask model cannot have a class 255).
pub const VOID: i64 = 255;

/// The label of a token position that is not scored: transformers' `-100`
/// (`ignore_index` of its causal-LM loss), at padding and wherever a user masks a prompt.
pub const IGNORE_TOKEN: i64 = -100;

/// What `target` holds, told apart by its rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// `[N]` class ids.
    Class,
    /// `[N, H, W]` class ids per pixel (0/1 for binary masks).
    Mask { h: usize, w: usize },
    /// `[N, K]` multi-hot rows (0/1).
    MultiLabel { k: usize },
    /// `[N, T]` token labels of `[N, T]` integer token inputs, transformers' `labels`: the
    /// token at each position, or [`IGNORE_TOKEN`]. The loss shifts them (position t is
    /// predicted from the positions before it).
    Tokens { t: usize },
}

impl TargetKind {
    /// Target values per example.
    pub fn per_example(self) -> usize {
        match self {
            TargetKind::Class => 1,
            TargetKind::Mask { h, w } => h * w,
            TargetKind::MultiLabel { k } => k,
            TargetKind::Tokens { t } => t,
        }
    }

    /// How the kind is named in messages.
    pub fn describe(self) -> String {
        match self {
            TargetKind::Class => "class ids [N]".into(),
            TargetKind::Mask { h, w } => format!("masks [N, {h}, {w}]"),
            TargetKind::MultiLabel { k } => format!("multi-hot rows [N, {k}]"),
            TargetKind::Tokens { t } => format!("token labels [N, {t}]"),
        }
    }
}

/// An in-memory dataset: classification, segmentation masks or multi-label.
pub struct Dataset {
    pub path: PathBuf,
    /// Shape of one example (without the leading N).
    pub example_shape: Vec<usize>,
    /// Inputs as f32, example-major.
    pub inputs: Vec<f32>,
    /// Targets, example-major: `target_kind.per_example()` values per example (class ids,
    /// mask pixels, or 0/1 presences).
    pub targets: Vec<i64>,
    pub target_kind: TargetKind,
    /// The inputs were U8 in the file (values k/255), so they can be stored back as U8.
    pub from_u8: bool,
}

impl Dataset {
    pub fn open(path: impl AsRef<Path>) -> Result<Dataset> {
        Self::from_checkpoint(&Checkpoint::open(path)?)
    }

    /// The dataset a checkpoint holds (a file, or a frame of a stream): `input` [N, ...]
    /// and `target` [N], [N, K] or [N, H, W], every value checked.
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Dataset> {
        let path = ckpt.path.as_path();
        let bad = |reason: String| MnemoError::InvalidDataset {
            path: path.to_path_buf(),
            reason,
        };
        for name in ["input", "target"] {
            if !ckpt.contains(name) {
                let have: Vec<&str> = ckpt.names().take(5).collect();
                return Err(bad(format!(
                    "no tensor '{name}' (a dataset holds 'input' [N,...] and 'target' [N]; this file has: {})",
                    if have.is_empty() { "nothing".to_string() } else { have.join(", ") }
                )));
            }
        }
        let xi = ckpt.entry("input")?;
        let ti = ckpt.entry("target")?;
        if xi.shape.is_empty() {
            return Err(bad("'input' is a scalar; expected [N, ...]".into()));
        }
        let n = xi.shape[0];
        // Integer inputs (other than U8 pixels) are token ids.
        let tokens = !xi.dtype.is_float() && !matches!(xi.dtype, Dtype::U8 | Dtype::Bool);
        if tokens {
            return Self::tokens(ckpt, &xi.shape, &ti.shape);
        }
        let kind = match ti.shape.len() {
            1 => TargetKind::Class,
            2 => TargetKind::MultiLabel { k: ti.shape[1] },
            3 => TargetKind::Mask {
                h: ti.shape[1],
                w: ti.shape[2],
            },
            _ => {
                return Err(bad(format!(
                    "'target' has shape {:?}; expected [N] class ids, [N, K] multi-hot rows or [N, H, W] masks",
                    ti.shape
                )))
            }
        };
        if ti.shape[0] != n {
            return Err(bad(format!(
                "'input' has {n} examples but 'target' has {}",
                ti.shape[0]
            )));
        }
        if n == 0 {
            return Err(bad("the dataset is empty (N = 0)".into()));
        }
        if kind.per_example() == 0 {
            return Err(bad(format!(
                "'target' has shape {:?}: no values per example",
                ti.shape
            )));
        }
        let inputs = match xi.dtype {
            Dtype::U8 => ckpt
                .bytes("input")?
                .iter()
                .map(|&b| b as f32 / 255.0)
                .collect(),
            d if d.is_float() => ckpt.to_f32("input")?,
            d => {
                return Err(MnemoError::WrongDtype {
                    path: path.to_path_buf(),
                    tensor: "input".into(),
                    dtype: d.to_string(),
                    expected: "U8 (scaled by 1/255), F16, BF16, F32 or F64".into(),
                })
            }
        };
        let multi = matches!(kind, TargetKind::MultiLabel { .. });
        let float_ok = multi && ti.dtype.is_float();
        if (ti.dtype.is_float() && !float_ok) || ti.dtype == Dtype::Bool {
            return Err(MnemoError::WrongDtype {
                path: path.to_path_buf(),
                tensor: "target".into(),
                dtype: ti.dtype.to_string(),
                expected: match kind {
                    TargetKind::Class => "an integer dtype (class ids)".into(),
                    _ => "an integer dtype (class ids per pixel)".into(),
                },
            });
        }
        let targets: Vec<i64> = if float_ok {
            let v = ckpt.to_f32("target")?;
            if let Some((i, &t)) = v.iter().enumerate().find(|(_, &t)| t != 0.0 && t != 1.0) {
                return Err(bad(format!(
                    "'target' example {} label {} = {t}: multi-hot targets must be 0 or 1",
                    i / kind.per_example(),
                    i % kind.per_example()
                )));
            }
            v.iter().map(|&t| t as i64).collect()
        } else {
            ckpt.to_i64("target")?
        };
        let per = kind.per_example();
        if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t < 0) {
            return Err(bad(match kind {
                TargetKind::Class => format!("'target'[{i}] = {t} is negative"),
                _ => format!(
                    "'target' example {} value {} = {t} is negative",
                    i / per,
                    i % per
                ),
            }));
        }
        if multi {
            if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t > 1) {
                return Err(bad(format!(
                    "'target' example {} label {} = {t}: multi-hot targets must be 0 or 1",
                    i / per,
                    i % per
                )));
            }
        }
        if let Some((i, &v)) = inputs.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            let per = inputs.len() / n;
            return Err(bad(format!(
                "'input' example {} holds a non-finite value ({v})",
                i / per.max(1)
            )));
        }
        Ok(Dataset {
            path: path.to_path_buf(),
            example_shape: xi.shape[1..].to_vec(),
            inputs,
            targets,
            target_kind: kind,
            from_u8: xi.dtype == Dtype::U8,
        })
    }

    /// A token dataset: integer `input` [N, T] ids and `target` [N, T] labels.
    fn tokens(ckpt: &Checkpoint, input: &[usize], target: &[usize]) -> Result<Dataset> {
        let path = ckpt.path.as_path();
        let bad = |reason: String| MnemoError::InvalidDataset {
            path: path.to_path_buf(),
            reason,
        };
        if input.len() != 2 || input[0] == 0 || input[1] == 0 {
            return Err(bad(format!(
                "integer 'input' (token ids) has shape {input:?}; expected [N, T] with N, T > 0"
            )));
        }
        if target != input {
            return Err(bad(format!(
                "'target' has shape {target:?}; token ids {input:?} need labels of the same shape (the token, or {IGNORE_TOKEN} where not scored)"
            )));
        }
        let t = input[1];
        let ids = ckpt.to_i64("input")?;
        if let Some((i, &v)) = ids
            .iter()
            .enumerate()
            .find(|(_, &v)| v < 0 || v as u64 >= crate::arch::MAX_TOKEN_ID as u64)
        {
            return Err(bad(format!(
                "'input' example {} position {} = {v} is not a token id (0 .. {})",
                i / t,
                i % t,
                crate::arch::MAX_TOKEN_ID
            )));
        }
        let ti = ckpt.entry("target")?;
        if ti.dtype.is_float() || ti.dtype == Dtype::Bool {
            return Err(MnemoError::WrongDtype {
                path: path.to_path_buf(),
                tensor: "target".into(),
                dtype: ti.dtype.to_string(),
                expected: "an integer dtype (token labels)".into(),
            });
        }
        let targets = ckpt.to_i64("target")?;
        if let Some((i, &v)) = targets.iter().enumerate().find(|(_, &v)| {
            v != IGNORE_TOKEN && (v < 0 || v as u64 >= crate::arch::MAX_TOKEN_ID as u64)
        }) {
            return Err(bad(format!(
                "'target' example {} position {} = {v} is neither a token id nor {IGNORE_TOKEN} (not scored)",
                i / t,
                i % t
            )));
        }
        // The first position has no prediction (nothing before it): a dataset in which no
        // later label is scored has no loss to learn or measure.
        if !targets
            .iter()
            .enumerate()
            .any(|(i, &v)| i % t != 0 && v != IGNORE_TOKEN)
        {
            return Err(bad(format!(
                "no position after the first of any row has a label (all are {IGNORE_TOKEN}): nothing to score"
            )));
        }
        Ok(Dataset {
            path: path.to_path_buf(),
            example_shape: vec![t],
            inputs: ids.iter().map(|&v| v as f32).collect(),
            targets,
            target_kind: TargetKind::Tokens { t },
            from_u8: false,
        })
    }

    pub fn len(&self) -> usize {
        self.targets.len() / self.target_kind.per_example()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }

    /// Fails unless the targets are class ids `[N]` (for the commands that only classify).
    pub fn require_class(&self, what: &str) -> Result<()> {
        if self.target_kind == TargetKind::Class {
            return Ok(());
        }
        Err(MnemoError::InvalidDataset {
            path: self.path.clone(),
            reason: format!(
                "'target' holds {}; {what} needs class ids [N]",
                self.target_kind.describe()
            ),
        })
    }

    /// Fails unless the targets are class ids `[N]` or token labels `[N, T]` (what can be
    /// scored per example: a sequence's loss is its example's).
    pub fn require_class_or_tokens(&self, what: &str) -> Result<()> {
        if matches!(
            self.target_kind,
            TargetKind::Class | TargetKind::Tokens { .. }
        ) {
            return Ok(());
        }
        Err(MnemoError::InvalidDataset {
            path: self.path.clone(),
            reason: format!(
                "'target' holds {}; {what} needs class ids [N] or token labels [N, T]",
                self.target_kind.describe()
            ),
        })
    }

    /// Fails when a label is not a valid class id for a head with `classes` outputs (for
    /// masks: `classes` output channels, where one channel means a binary mask of 0/1; for
    /// multi-hot rows: one output per label).
    pub fn check_labels(&self, classes: usize, head: Option<&str>) -> Result<()> {
        let which = head
            .map(|h| format!("head '{h}'"))
            .unwrap_or_else(|| "model".into());
        let bad = |reason: String| MnemoError::InvalidDataset {
            path: self.path.clone(),
            reason,
        };
        match self.target_kind {
            TargetKind::Class => {
                if let Some((i, &t)) = self
                    .targets
                    .iter()
                    .enumerate()
                    .find(|(_, &t)| t as usize >= classes)
                {
                    return Err(bad(format!(
                        "'target'[{i}] = {t} is out of range: the {which} has {classes} outputs (labels 0..{})",
                        classes - 1
                    )));
                }
            }
            TargetKind::Mask { h, w } => {
                let top = if classes == 1 { 2 } else { classes };
                if let Some((i, &t)) = self
                    .targets
                    .iter()
                    .enumerate()
                    .find(|(_, &t)| t as usize >= top && t != VOID)
                {
                    let (e, px) = (i / (h * w), i % (h * w));
                    return Err(bad(if classes == 1 {
                        format!(
                            "'target' example {e} pixel ({}, {}) = {t}: the {which} has one output channel (a binary mask), so targets must be 0 or 1 (or 255: void)",
                            px / w,
                            px % w
                        )
                    } else {
                        format!(
                            "'target' example {e} pixel ({}, {}) = {t} is out of range: the {which} has {classes} output channels (labels 0..{}, or 255: void)",
                            px / w,
                            px % w,
                            classes - 1
                        )
                    }));
                }
            }
            TargetKind::Tokens { t } => {
                let out_of = |v: i64| v != IGNORE_TOKEN && v as usize >= classes;
                let found = self
                    .targets
                    .iter()
                    .position(|&v| out_of(v))
                    .map(|i| ("target", i, self.targets[i]))
                    .or_else(|| {
                        self.inputs
                            .iter()
                            .position(|&v| v as usize >= classes)
                            .map(|i| ("input", i, self.inputs[i] as i64))
                    });
                if let Some((tensor, i, v)) = found {
                    return Err(bad(format!(
                        "'{tensor}' example {} position {} = {v} is out of range: the {which} has a vocabulary of {classes} tokens",
                        i / t,
                        i % t
                    )));
                }
            }
            TargetKind::MultiLabel { k } => {
                if k != classes {
                    return Err(bad(format!(
                        "'target' has {k} labels per example but the {which} has {classes} outputs"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Example indices in file order, or shuffled with `seed`.
    pub fn order(&self, shuffle: Option<&mut Rng>) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        if let Some(rng) = shuffle {
            rng.shuffle(&mut idx);
        }
        idx
    }

    /// Inputs of the examples `idx` as a tensor on `device`, and their targets (example-major,
    /// `target_kind.per_example()` values each).
    pub fn batch(&self, idx: &[usize], device: &Device) -> Result<(Tensor, Vec<i64>)> {
        let el = self.example_len();
        let mut x = Vec::with_capacity(idx.len() * el);
        let per = self.target_kind.per_example();
        let mut y = Vec::with_capacity(idx.len() * per);
        for &i in idx {
            x.extend_from_slice(&self.inputs[i * el..(i + 1) * el]);
            y.extend_from_slice(&self.targets[i * per..(i + 1) * per]);
        }
        let mut shape = vec![idx.len()];
        shape.extend(&self.example_shape);
        let t = Tensor::from_vec(x, shape.as_slice(), device).map_err(|e| MnemoError::Compute {
            context: format!("{}: building a batch", self.path.display()),
            source: e,
        })?;
        Ok((t, y))
    }
}
