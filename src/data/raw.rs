//! Datasets as bytes, for the `data` tools: rows are moved, selected and
//! permuted without converting them, so a U8 dataset stays U8 and every
//! operation is exact. Also the IDX reader (MNIST, Fashion-MNIST), gzipped
//! or not, and the NumPy `.npy` / `.npz` readers.

use crate::checkpoint::{write_checkpoint, Checkpoint, Dtype, OwnedTensor};
use crate::error::{MnemoError, Result};
use crate::rng::Rng;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A dataset's tensors as stored: `input` `[N, ...]` in its dtype, `target` `[N]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RawDataset {
    pub path: PathBuf,
    pub dtype: Dtype,
    /// Shape of one example.
    pub example_shape: Vec<usize>,
    pub input: Vec<u8>,
    /// Targets, example-major: one class id per example, or `target_shape` values per
    /// example (masks `[H, W]`, multi-hot rows `[K]`).
    pub target: Vec<i64>,
    /// Shape of one example's target: empty for class ids.
    pub target_shape: Vec<usize>,
    /// The target's dtype in the file (class ids are always written back as I64).
    pub target_dtype: Dtype,
}

fn bad(path: &Path, reason: impl Into<String>) -> MnemoError {
    MnemoError::InvalidDataset {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl RawDataset {
    /// Reads a dataset file, checking it as `Dataset::open` does (tensors, counts, labels).
    pub fn open(path: impl AsRef<Path>) -> Result<RawDataset> {
        let path = path.as_ref();
        // The full validation (names, counts, dtypes, labels, finite values) lives there.
        let kind = super::Dataset::open(path)?.target_kind;
        let ckpt = Checkpoint::open(path)?;
        let e = ckpt.entry("input")?;
        let t = ckpt.entry("target")?;
        let (target_shape, target_dtype) = match kind {
            super::TargetKind::Class => (vec![], Dtype::I64),
            _ => (t.shape[1..].to_vec(), t.dtype),
        };
        Ok(RawDataset {
            path: path.to_path_buf(),
            dtype: e.dtype,
            example_shape: e.shape[1..].to_vec(),
            input: ckpt.bytes("input")?.to_vec(),
            target: ckpt.to_i64("target")?,
            target_shape,
            target_dtype,
        })
    }

    /// Target values per example (1 for class ids).
    fn target_len(&self) -> usize {
        self.target_shape.iter().product::<usize>()
    }

    /// Whether the targets are class ids (not masks or multi-hot rows).
    pub fn has_classes(&self) -> bool {
        self.target_shape.is_empty()
    }

    /// Fails unless the targets are class ids: `what` needs them.
    pub fn require_classes(&self, what: &str) -> Result<()> {
        if self.has_classes() {
            return Ok(());
        }
        Err(bad(
            &self.path,
            format!(
                "'target' is {:?} per example (masks or multi-hot rows); {what} needs class ids [N]",
                self.target_shape
            ),
        ))
    }

    pub fn len(&self) -> usize {
        self.target.len() / self.target_len().max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.target.is_empty()
    }

    /// Bytes of one example.
    pub fn row_bytes(&self) -> usize {
        self.example_shape.iter().product::<usize>() * self.dtype.size()
    }

    /// The examples `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> RawDataset {
        let rb = self.row_bytes();
        let tl = self.target_len();
        let mut input = Vec::with_capacity(rows.len() * rb);
        let mut target = Vec::with_capacity(rows.len() * tl);
        for &r in rows {
            input.extend_from_slice(&self.input[r * rb..(r + 1) * rb]);
            target.extend_from_slice(&self.target[r * tl..(r + 1) * tl]);
        }
        RawDataset {
            input,
            target,
            ..self.clone()
        }
    }

    /// The same examples in a seeded random order.
    pub fn shuffled(&self, seed: u64) -> RawDataset {
        let mut rows: Vec<usize> = (0..self.len()).collect();
        Rng::new(seed).shuffle(&mut rows);
        self.select(&rows)
    }

    /// One fixed permutation of the features of every example (Permuted MNIST), drawn from
    /// `seed`; returns the permutation too (feature i of the output is feature perm[i]).
    pub fn permuted(&self, seed: u64) -> (RawDataset, Vec<usize>) {
        let features: usize = self.example_shape.iter().product();
        let mut perm: Vec<usize> = (0..features).collect();
        Rng::new(seed).shuffle(&mut perm);
        let sz = self.dtype.size();
        let rb = self.row_bytes();
        let mut input = vec![0u8; self.input.len()];
        for (src, dst) in self.input.chunks_exact(rb).zip(input.chunks_exact_mut(rb)) {
            for (i, &p) in perm.iter().enumerate() {
                dst[i * sz..(i + 1) * sz].copy_from_slice(&src[p * sz..(p + 1) * sz]);
            }
        }
        (
            RawDataset {
                input,
                ..self.clone()
            },
            perm,
        )
    }

    /// Appends `other` (same dtype and example shape).
    pub fn concat(mut self, other: &RawDataset) -> Result<RawDataset> {
        if other.target_shape != self.target_shape {
            return Err(bad(
                &other.path,
                format!(
                    "'target' is {:?} per example but {} has {:?}",
                    other.target_shape,
                    self.path.display(),
                    self.target_shape
                ),
            ));
        }
        if other.dtype != self.dtype || other.example_shape != self.example_shape {
            return Err(bad(
                &other.path,
                format!(
                    "'input' is {} {:?} per example but {} has {} {:?}",
                    other.dtype,
                    other.example_shape,
                    self.path.display(),
                    self.dtype,
                    self.example_shape
                ),
            ));
        }
        self.input.extend_from_slice(&other.input);
        self.target.extend_from_slice(&other.target);
        Ok(self)
    }

    /// Examples per class id (empty for masks and multi-hot rows).
    pub fn class_counts(&self) -> BTreeMap<i64, usize> {
        let mut m = BTreeMap::new();
        if !self.has_classes() {
            return m;
        }
        for &t in &self.target {
            *m.entry(t).or_insert(0) += 1;
        }
        m
    }

    /// Writes the dataset atomically (`input` in its dtype; `target` I64 for class ids,
    /// masks and multi-hot rows in their own dtype).
    pub fn write(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        let mut shape = vec![self.len()];
        shape.extend(&self.example_shape);
        let mut target_shape = vec![self.len()];
        target_shape.extend(&self.target_shape);
        // Masks and multi-hot values are small non-negative integers (0/1, class ids, 255):
        // each dtype the loader accepts for them holds them exactly.
        let (target_dtype, target): (Dtype, Vec<u8>) = match self.target_dtype {
            Dtype::U8 if !self.has_classes() => {
                (Dtype::U8, self.target.iter().map(|&t| t as u8).collect())
            }
            Dtype::F32 if !self.has_classes() => (
                Dtype::F32,
                self.target
                    .iter()
                    .flat_map(|&t| (t as f32).to_le_bytes())
                    .collect(),
            ),
            _ => (
                Dtype::I64,
                self.target.iter().flat_map(|t| t.to_le_bytes()).collect(),
            ),
        };
        let tensors = vec![
            OwnedTensor {
                name: "input".into(),
                dtype: self.dtype,
                shape,
                data: Cow::Borrowed(&self.input),
            },
            OwnedTensor {
                name: "target".into(),
                dtype: target_dtype,
                shape: target_shape,
                data: Cow::Owned(target),
            },
        ];
        write_checkpoint(path, tensors, metadata)
    }
}

/// A dataset whose target is not class ids, as the importers and generators build it:
/// `input` U8 `[N, ...]` and `target` U8 `[N, ...]` (masks `[N, H, W]` or multi-hot rows
/// `[N, K]`), both as bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct U8Dataset {
    /// Shape of one example's input.
    pub example_shape: Vec<usize>,
    pub input: Vec<u8>,
    /// Shape of one example's target (`[H, W]` or `[K]`).
    pub target_shape: Vec<usize>,
    pub target: Vec<u8>,
}

impl U8Dataset {
    pub fn len(&self) -> usize {
        self.target.len() / self.target_shape.iter().product::<usize>().max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.target.is_empty()
    }

    /// Writes the dataset atomically (both tensors U8).
    pub fn write(&self, path: &Path, metadata: &BTreeMap<String, String>) -> Result<()> {
        let n = self.len();
        let shape = |per: &[usize]| [&[n][..], per].concat();
        let tensors = vec![
            OwnedTensor {
                name: "input".into(),
                dtype: Dtype::U8,
                shape: shape(&self.example_shape),
                data: Cow::Borrowed(&self.input),
            },
            OwnedTensor {
                name: "target".into(),
                dtype: Dtype::U8,
                shape: shape(&self.target_shape),
                data: Cow::Borrowed(&self.target),
            },
        ];
        write_checkpoint(path, tensors, metadata)
    }
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = crate::fsutil::read(path)?;
    gunzip_if_gz(path, raw)
}

/// `raw` itself, or its gunzipped content when it starts with the gzip magic; `path`
/// names it in errors.
/// Only as much is decompressed as the IDX header claims (plus one byte, so that more data
/// than claimed is still seen): a small file claiming 1 byte is refused after reading a few
/// bytes, not after inflating gigabytes, and a claim beyond this machine's memory is refused
/// before any allocation.
fn gunzip_if_gz(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let io = |e| MnemoError::io(path, e);
        let mut dec = flate2::read::MultiGzDecoder::new(raw.as_slice());
        let mut out = Vec::new();
        (&mut dec).take(4).read_to_end(&mut out).map_err(io)?;
        if out.len() == 4 {
            let d = out[3] as u64;
            (&mut dec).take(4 * d).read_to_end(&mut out).map_err(io)?;
            if out.len() as u64 == 4 + 4 * d {
                let mut n: u64 = 1;
                for i in 0..d as usize {
                    let x = u32::from_be_bytes(out[4 + 4 * i..8 + 4 * i].try_into().expect("4"));
                    n = n.saturating_mul(x as u64);
                }
                crate::validate::alloc_bytes(&format!("{}: IDX data", path.display()), n, 1)?;
                (&mut dec).take(n + 1).read_to_end(&mut out).map_err(io)?;
            }
        }
        return Ok(out);
    }
    Ok(raw)
}

/// Parses an IDX file of unsigned bytes: magic 0x0000 08 D (D dimensions), D big-endian
/// u32 sizes, then the data. Returns the dimensions and the data; `path` names the file in
/// errors.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(
            path,
            "not an IDX file (the magic number must start 00 00)",
        ));
    }
    if bytes[2] != 0x08 {
        return Err(bad(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported (only 0x08, unsigned bytes, as MNIST)",
                bytes[2]
            ),
        ));
    }
    let d = bytes[3] as usize;
    let head = 4 + 4 * d;
    if d == 0 || bytes.len() < head {
        return Err(bad(
            path,
            format!("IDX header for {d} dimensions is truncated"),
        ));
    }
    let dims: Vec<usize> = (0..d)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let n: usize = dims
        .iter()
        .try_fold(1usize, |a, &x| a.checked_mul(x))
        .ok_or_else(|| bad(path, format!("IDX dimensions {dims:?} overflow")))?;
    if bytes.len() - head != n {
        return Err(bad(
            path,
            format!(
                "IDX dimensions {dims:?} need {n} bytes of data but the file has {}",
                bytes.len() - head
            ),
        ));
    }
    Ok((dims, bytes[head..].to_vec()))
}

/// MNIST-style IDX images `[N, H, W]` (U8) and labels `[N]` as a dataset: `input` U8
/// `[N, 1, H, W]` (torch's channel-first layout) or `[N, H·W]` with `flatten`.
pub fn import_idx(images: &Path, labels: &Path, flatten: bool) -> Result<RawDataset> {
    idx_dataset(
        images,
        read_maybe_gz(images)?,
        labels,
        read_maybe_gz(labels)?,
        flatten,
    )
}

/// [`import_idx`] from the files' bytes (each gzipped or not), read by the caller; `images`
/// and `labels` name them in errors. The entry point of the `import_idx` fuzz target.
pub fn idx_dataset(
    images: &Path,
    image_bytes: Vec<u8>,
    labels: &Path,
    label_bytes: Vec<u8>,
    flatten: bool,
) -> Result<RawDataset> {
    let (idims, input) = parse_idx(images, &gunzip_if_gz(images, image_bytes)?)?;
    let (ldims, lab) = parse_idx(labels, &gunzip_if_gz(labels, label_bytes)?)?;
    if idims.len() != 3 {
        return Err(bad(
            images,
            format!("expected images [N, H, W] (IDX with 3 dimensions), found {idims:?}"),
        ));
    }
    if ldims.len() != 1 {
        return Err(bad(
            labels,
            format!("expected labels [N] (IDX with 1 dimension), found {ldims:?}"),
        ));
    }
    if idims[0] == 0 {
        return Err(bad(images, "the images hold no examples (N = 0)"));
    }
    if idims[0] != ldims[0] {
        return Err(bad(
            labels,
            format!(
                "{} labels but {} has {} images",
                ldims[0],
                images.display(),
                idims[0]
            ),
        ));
    }
    let example_shape = if flatten {
        vec![idims[1] * idims[2]]
    } else {
        vec![1, idims[1], idims[2]]
    };
    Ok(RawDataset {
        path: images.to_path_buf(),
        dtype: Dtype::U8,
        example_shape,
        input,
        target: lab.iter().map(|&b| b as i64).collect(),
        target_shape: vec![],
        target_dtype: Dtype::I64,
    })
}

/// A parsed `.npy` array: dtype, shape (C order) and little-endian data.
#[derive(Clone, Debug, PartialEq)]
pub struct Npy {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a NumPy `.npy` file (see [`parse_npy`]).
pub fn read_npy(path: &Path) -> Result<Npy> {
    let b = crate::fsutil::read(path)?;
    if b.starts_with(b"PK\x03\x04") {
        return Err(bad(
            path,
            "this is a .npz archive (zip), not a .npy file: use `mnemo data import npz`",
        ));
    }
    parse_npy(path, &b)
}

/// Parses the bytes of a `.npy` file (format 1.0–3.0, C order, little-endian or byte-sized
/// dtypes); `path` names it in errors (for a `.npz` member: `archive.npz:name`).
pub fn parse_npy(path: &Path, b: &[u8]) -> Result<Npy> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad(path, "not a .npy file (missing the \\x93NUMPY magic)"));
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => {
            return Err(bad(
                path,
                format!(".npy format version {v} is not supported"),
            ))
        }
    };
    let header = b
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad(path, ".npy header is truncated or not text"))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[i..].trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\''))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| bad(path, ".npy header has no 'descr'"))?;
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(bad(
            path,
            "Fortran-ordered arrays are not supported (save with C order)",
        ));
    }
    let shape_txt = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad(path, ".npy header has no 'shape'"))?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| bad(path, format!(".npy shape '{shape_txt}'")))
        })
        .collect::<Result<_>>()?;
    let dtype = match descr {
        "|u1" | "<u1" => Dtype::U8,
        "|i1" | "<i1" => Dtype::I8,
        "<i2" => Dtype::I16,
        "<i4" => Dtype::I32,
        "<i8" => Dtype::I64,
        "<u2" => Dtype::U16,
        "<u4" => Dtype::U32,
        "<u8" => Dtype::U64,
        "<f2" => Dtype::F16,
        "<f4" => Dtype::F32,
        "<f8" => Dtype::F64,
        d => {
            return Err(bad(
                path,
                format!("dtype '{d}' is not supported (little-endian ints and floats only)"),
            ))
        }
    };
    let n = shape
        .iter()
        .try_fold(dtype.size(), |a, &x| a.checked_mul(x))
        .ok_or_else(|| bad(path, format!(".npy shape {shape:?} overflows")))?;
    let data = b
        .get(start + hlen..)
        .filter(|d| d.len() == n)
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "shape {shape:?} of {descr} needs {n} bytes of data, the file has {}",
                    b.len().saturating_sub(start + hlen)
                ),
            )
        })?
        .to_vec();
    Ok(Npy { dtype, shape, data })
}

/// A dataset from NumPy arrays: X `[N, ...]` (U8 or a float dtype) and integer labels Y `[N]`.
pub fn import_npy(x: &Path, y: &Path) -> Result<RawDataset> {
    from_arrays(read_npy(x)?, x, read_npy(y)?, y)
}

/// [`import_npy`] from the two files' bytes, read by the caller; `x` and `y` name them in
/// errors. The entry point of the `import_npy` fuzz target.
pub fn npy_dataset(x: &Path, x_bytes: &[u8], y: &Path, y_bytes: &[u8]) -> Result<RawDataset> {
    from_arrays(parse_npy(x, x_bytes)?, x, parse_npy(y, y_bytes)?, y)
}

/// A dataset from two arrays of a NumPy `.npz` archive (`np.savez`: stored members, or
/// `np.savez_compressed`: deflated). The arrays are `x_name` and `y_name` when given; else
/// those named `x` and `y`; else, when the archive holds just two arrays and neither is named
/// `x` or `y`, the first (X) and the second (Y) in archive order.
pub fn import_npz(path: &Path, x_name: Option<&str>, y_name: Option<&str>) -> Result<RawDataset> {
    let file = crate::fsutil::open_file(path)?;
    npz_dataset(path, std::io::BufReader::new(file), x_name, y_name)
}

/// [`import_npz`] from any seekable reader of the archive's bytes; `path` names it in
/// errors. The entry point of the `import_npz` fuzz target.
pub fn npz_dataset<R: Read + std::io::Seek>(
    path: &Path,
    reader: R,
    x_name: Option<&str>,
    y_name: Option<&str>,
) -> Result<RawDataset> {
    let mut zip = zip::ZipArchive::new(reader)
        .map_err(|e| bad(path, format!("not a .npz archive (zip): {e}")))?;
    // Array names as np.load shows them: member names without their `.npy`.
    let members: Vec<String> = (0..zip.len())
        .map(|i| match zip.name_for_index(i) {
            Some(Ok(n)) => Ok(n.into_owned()),
            Some(Err(e)) => Err(bad(path, format!("member {i}: {e}"))),
            None => Err(bad(path, format!("member {i} is missing"))),
        })
        .collect::<Result<_>>()?;
    let names: Vec<&str> = members
        .iter()
        .map(|m| m.strip_suffix(".npy").unwrap_or(m))
        .collect();
    if names.is_empty() {
        return Err(bad(path, "the archive holds no arrays"));
    }
    let listing = names.join(", ");
    let has = |n: &str| names.contains(&n);
    let (xn, yn) = match (x_name, y_name) {
        (None, None) if !has("x") && !has("y") && names.len() == 2 => (names[0], names[1]),
        (None, None) if !has("x") && !has("y") => {
            return Err(MnemoError::unfit(crate::Setting::ArrayNames,
                path,
                format!(
                    "no arrays named 'x' and 'y' (the archive has: {listing}); name the two arrays to read"
                ),
            ))
        }
        (x, y) => (x.unwrap_or("x"), y.unwrap_or("y")),
    };
    for (n, role) in [(xn, "X"), (yn, "Y")] {
        if !has(n) {
            return Err(MnemoError::unfit(
                crate::Setting::ArrayNames,
                path,
                format!("no array '{n}' for {role} (the archive has: {listing})"),
            ));
        }
    }
    if xn == yn {
        return Err(bad(path, format!("X and Y are both the array '{xn}'")));
    }
    let mut read = |name: &str| -> Result<(Npy, PathBuf)> {
        let label = PathBuf::from(format!("{}:{name}", path.display()));
        let i = names.iter().position(|n| *n == name).expect("checked");
        let mut member = zip
            .by_index(i)
            .map_err(|e| bad(&label, format!("cannot read the member: {e}")))?;
        let mut bytes = Vec::new();
        member
            .read_to_end(&mut bytes)
            .map_err(|e| bad(&label, format!("cannot read the member: {e}")))?;
        Ok((parse_npy(&label, &bytes)?, label))
    };
    let (xs, xl) = read(xn)?;
    let (ys, yl) = read(yn)?;
    let mut d = from_arrays(xs, &xl, ys, &yl)?;
    d.path = path.to_path_buf();
    Ok(d)
}

/// Checks X `[N, ...]` (U8 or float) and integer labels Y `[N]`; `x` and `y` name them.
fn from_arrays(xs: Npy, x: &Path, ys: Npy, y: &Path) -> Result<RawDataset> {
    if xs.shape.is_empty() {
        return Err(bad(x, "X is a scalar; expected [N, ...]"));
    }
    if !(xs.dtype == Dtype::U8 || xs.dtype.is_float()) {
        return Err(bad(
            x,
            format!("X has dtype {}; expected uint8 or a float", xs.dtype),
        ));
    }
    if ys.shape.len() != 1 || ys.dtype.is_float() {
        return Err(bad(
            y,
            format!(
                "Y is {} {:?}; expected integer labels [N]",
                ys.dtype, ys.shape
            ),
        ));
    }
    if ys.shape[0] != xs.shape[0] {
        return Err(bad(
            y,
            format!(
                "{} labels but {} has {} examples",
                ys.shape[0],
                x.display(),
                xs.shape[0]
            ),
        ));
    }
    if xs.shape[0] == 0 {
        return Err(bad(x, "X has no examples (N = 0)"));
    }
    // A dataset holds finite inputs (`Dataset::open` refuses anything else), so importing
    // one that holds NaN or inf would only write a file no other command opens.
    if xs.dtype.is_float() {
        let values = crate::checkpoint::decode(xs.dtype, &xs.data);
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            let per = values.len() / xs.shape[0];
            return Err(bad(
                x,
                format!(
                    "X element {i} (example {}) is {} (as f32): inputs must be finite",
                    i / per.max(1),
                    values[i]
                ),
            ));
        }
    }
    let sz = ys.dtype.size();
    let target: Vec<i64> = ys
        .data
        .chunks_exact(sz)
        .map(|c| crate::checkpoint::decode_i64(ys.dtype, c).expect("integer")[0])
        .collect();
    if let Some((i, t)) = target.iter().enumerate().find(|(_, &t)| t < 0) {
        return Err(bad(y, format!("label {i} is {t}: class ids are >= 0")));
    }
    Ok(RawDataset {
        path: x.to_path_buf(),
        dtype: xs.dtype,
        example_shape: xs.shape[1..].to_vec(),
        input: xs.data,
        target,
        target_shape: vec![],
        target_dtype: Dtype::I64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    #[test]
    fn idx_headers_are_checked() {
        let p = Path::new("x.idx");
        assert!(parse_idx(p, &idx(&[2, 2], &[1, 2, 3, 4])).is_ok());
        let short = parse_idx(p, &idx(&[2, 2], &[1, 2, 3]))
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("need 4 bytes") && short.contains("x.idx"),
            "{short}"
        );
        assert!(parse_idx(p, &[1, 2, 8, 1]).is_err());
        let mut f32_idx = idx(&[1], &[0, 0, 0, 0]);
        f32_idx[2] = 0x0d;
        assert!(parse_idx(p, &f32_idx)
            .unwrap_err()
            .to_string()
            .contains("0x0d"));
    }

    fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend((header.len() as u16).to_le_bytes());
        v.extend(header.as_bytes());
        v.extend(data);
        v
    }

    fn npz(dir: &Path, members: &[(&str, Vec<u8>)]) -> PathBuf {
        use std::io::Write;
        let path = dir.join("t.npz");
        let mut z = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in members {
            z.start_file(*name, opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
        path
    }

    #[test]
    fn npz_arrays_are_picked_by_name_or_order_with_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let x = npy_bytes("|u1", "(2, 3)", &[1, 2, 3, 4, 5, 6]);
        let y = npy_bytes(
            "<i8",
            "(2,)",
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        );
        let err = |p: &Path, xn: Option<&str>, yn: Option<&str>| {
            import_npz(p, xn, yn).unwrap_err().to_string()
        };
        let p = npz(
            dir.path(),
            &[
                ("a.npy", x.clone()),
                ("b.npy", y.clone()),
                ("c.npy", y.clone()),
            ],
        );
        let e = err(&p, None, None);
        assert!(
            e.contains("t.npz") && e.contains("a, b, c") && e.contains("name the two arrays"),
            "{e}"
        );
        let d = import_npz(&p, Some("a"), Some("c")).unwrap();
        assert_eq!(
            (d.example_shape, d.input, d.target),
            (vec![3], x.clone()[x.len() - 6..].to_vec(), vec![1, 0])
        );
        assert!(err(&p, Some("a"), Some("a")).contains("both the array 'a'"));
        let p = npz(
            dir.path(),
            &[("x.npy", x.clone()), ("y.npy", b"garbage".to_vec())],
        );
        let e = err(&p, None, None);
        assert!(
            e.contains("t.npz:y") && e.contains("not a .npy file"),
            "{e}"
        );
        let huge = npy_bytes("<f8", "(4294967296, 4294967296, 4294967296)", &[]);
        let e = parse_npy(Path::new("h.npy"), &huge)
            .unwrap_err()
            .to_string();
        assert!(e.contains("overflows"), "{e}");
        let p = npz(dir.path(), &[]);
        assert!(err(&p, None, None).contains("no arrays"));
    }

    #[test]
    fn permutation_moves_whole_features() {
        let d = RawDataset {
            path: "m".into(),
            dtype: Dtype::I16,
            example_shape: vec![3],
            input: vec![1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0],
            target: vec![0, 1],
            target_shape: vec![],
            target_dtype: Dtype::I64,
        };
        let (p, perm) = d.permuted(7);
        for (row, src) in p.input.chunks(6).zip(d.input.chunks(6)) {
            for (i, &j) in perm.iter().enumerate() {
                assert_eq!(row[2 * i..2 * i + 2], src[2 * j..2 * j + 2]);
            }
        }
    }
}
