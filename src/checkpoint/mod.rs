//! Checkpoint I/O: memory-mapped, validated reads of safetensors files and
//! HF sharded checkpoints as one logical checkpoint; atomic writes.

mod dtype;
pub mod folder;
pub mod header;
mod layout;
pub mod pickle;
pub mod pth;
pub mod stats;
mod writer;

pub use dtype::{decode, decode_i64, decode_into, encode, encode_checked, Dtype};
pub use folder::{prepare_model_output, ModelOutput};
pub use header::TensorEntry;
pub use writer::{
    header_bytes, prepare_checkpoint, write_checkpoint, AtomicFile, HeaderEntry, OwnedTensor,
};

use crate::error::{MnemoError, Result};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Where a safetensors file's bytes are: mapped from disk, or read from a stream.
enum Storage {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Map(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// One safetensors file (memory-mapped, or held in memory) with a validated header.
pub struct SafetensorsFile {
    pub path: PathBuf,
    bytes: Storage,
    pub header: header::Header,
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let invalid = |reason: String| MnemoError::InvalidSafetensors {
            path: path.to_path_buf(),
            reason,
        };
        let file = crate::fsutil::open_file(path)?;
        let len = file.metadata().map_err(|e| MnemoError::io(path, e))?.len();
        if len < 8 {
            return Err(invalid(format!(
                "file is {len} bytes, too short for the 8-byte header length"
            )));
        }
        // SAFETY: the map is read-only; a file truncated under us by another
        // process is outside what any mmap-based reader can defend against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| MnemoError::io(path, e))?;
        let header = validate(&mmap).map_err(invalid)?;
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            bytes: Storage::Map(mmap),
            header,
        })
    }

    /// A whole safetensors file already in memory (a frame of a stream), validated as
    /// [`SafetensorsFile::open`] validates a file; `label` names it in messages.
    pub fn from_bytes(label: &Path, bytes: Vec<u8>) -> Result<Self> {
        let header = validate(&bytes).map_err(|reason| MnemoError::InvalidSafetensors {
            path: label.to_path_buf(),
            reason,
        })?;
        Ok(SafetensorsFile {
            path: label.to_path_buf(),
            bytes: Storage::Owned(bytes),
            header,
        })
    }

    fn data_start(&self) -> usize {
        8 + self.header.header_len
    }

    /// The raw little-endian bytes of one tensor, straight from the map.
    pub fn bytes(&self, t: &TensorEntry) -> &[u8] {
        let start = self.data_start();
        &self.bytes[start + t.begin..start + t.end]
    }

    /// Absolute offset of a tensor's first byte in the file.
    pub fn file_offset(&self, t: &TensorEntry) -> usize {
        self.data_start() + t.begin
    }
}

/// Validates the bytes of a whole safetensors file as [`SafetensorsFile::open`] does: our
/// header checks ([`header::parse`]), then a second opinion from the official crate (anything
/// it refuses, we refuse). Returns the header, whose offsets are then safe to slice with, or
/// the reason the file is refused. Reads nothing but `bytes`; the entry point of the
/// `safetensors` fuzz target (`fuzz/`).
pub fn validate(bytes: &[u8]) -> std::result::Result<header::Header, String> {
    let header = header::parse(bytes, bytes.len() as u64)?;
    safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("rejected by the safetensors crate: {e}"))?;
    Ok(header)
}

/// The parsed `*.safetensors.index.json` of an HF sharded checkpoint, before any shard is
/// opened.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardIndex {
    /// `weight_map` entries in document order: (tensor name, shard file relative to the
    /// index's folder). Every shard path is a plain relative path (no `..`, no root).
    pub weight_map: Vec<(String, String)>,
    /// The index's `metadata` object, values as strings (non-strings as their JSON text).
    pub metadata: BTreeMap<String, String>,
}

/// Parses and checks the text of an HF `*.safetensors.index.json`: a JSON object with a
/// `weight_map` object of string values, each a plain relative path (a hostile index must
/// not make us read outside its folder). Returns the reason on failure. Touches no file;
/// [`Checkpoint::open`] then opens the shards. The entry point of the `hf_index` fuzz target.
pub fn parse_index(text: &str) -> std::result::Result<ShardIndex, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| "no \"weight_map\" object".to_string())?;
    let mut weight_map = Vec::with_capacity(map.len());
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| format!("weight_map entry '{tensor}' is not a string"))?;
        let rel = Path::new(shard);
        if shard.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(format!(
                "shard path '{shard}' (tensor '{tensor}') must be a plain relative path inside the index's folder"
            ));
        }
        weight_map.push((tensor.clone(), shard.to_string()));
    }
    let mut metadata = BTreeMap::new();
    if let Some(m) = json.get("metadata").and_then(|m| m.as_object()) {
        for (k, v) in m {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            metadata.insert(k.clone(), v);
        }
    }
    Ok(ShardIndex {
        weight_map,
        metadata,
    })
}

/// Where a tensor of a logical checkpoint lives.
#[derive(Clone, Copy, Debug)]
struct Loc {
    file: usize,
    entry: usize,
}

/// A logical checkpoint: one safetensors file, or the shards of an HF index.
pub struct Checkpoint {
    /// The path the user gave (file, index or folder).
    pub path: PathBuf,
    pub files: Vec<SafetensorsFile>,
    index: BTreeMap<String, Loc>,
    metadata: BTreeMap<String, String>,
    /// The index file when sharded.
    pub index_path: Option<PathBuf>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, an HF `*.safetensors.index.json`, or a folder holding one of them.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            return Self::open(find_in_dir(path)?);
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".index.json") {
            return Self::open_index(path);
        }
        Ok(Self::of_file(SafetensorsFile::open(path)?))
    }

    /// A checkpoint of one in-memory safetensors file (see [`SafetensorsFile::from_bytes`]).
    pub fn from_bytes(label: &Path, bytes: Vec<u8>) -> Result<Self> {
        Ok(Self::of_file(SafetensorsFile::from_bytes(label, bytes)?))
    }

    fn of_file(file: SafetensorsFile) -> Self {
        let index = file
            .header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), Loc { file: 0, entry: i }))
            .collect();
        let metadata = file.header.metadata.clone();
        Checkpoint {
            path: file.path.clone(),
            files: vec![file],
            index,
            metadata,
            index_path: None,
        }
    }

    fn open_index(path: &Path) -> Result<Self> {
        let invalid = |reason: String| MnemoError::InvalidIndex {
            path: path.to_path_buf(),
            reason,
        };
        let text = crate::fsutil::read_to_string(path)?;
        let parsed = parse_index(&text).map_err(invalid)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut files: Vec<SafetensorsFile> = Vec::new();
        let mut file_ids: BTreeMap<String, usize> = BTreeMap::new();
        let mut index = BTreeMap::new();
        for (tensor, shard) in &parsed.weight_map {
            let fid = match file_ids.get(shard) {
                Some(&i) => i,
                None => {
                    // The index is named too: the shard alone does not say which
                    // checkpoint it belongs to.
                    let f = SafetensorsFile::open(&dir.join(shard))
                        .map_err(|e| invalid(format!("shard '{shard}': {e}")))?;
                    files.push(f);
                    file_ids.insert(shard.to_string(), files.len() - 1);
                    files.len() - 1
                }
            };
            let entry = files[fid]
                .header
                .tensors
                .iter()
                .position(|t| &t.name == tensor)
                .ok_or_else(|| {
                    invalid(format!(
                        "tensor '{tensor}' is mapped to '{shard}', which does not contain it"
                    ))
                })?;
            index.insert(tensor.clone(), Loc { file: fid, entry });
        }
        let mut metadata = files
            .first()
            .map(|f| f.header.metadata.clone())
            .unwrap_or_default();
        metadata.extend(parsed.metadata);
        Ok(Checkpoint {
            path: path.to_path_buf(),
            files,
            index,
            metadata,
            index_path: Some(path.to_path_buf()),
        })
    }

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Header entry of a tensor (offsets relative to its file's data section).
    pub fn entry(&self, name: &str) -> Result<&TensorEntry> {
        let loc = self.loc(name)?;
        Ok(&self.files[loc.file].header.tensors[loc.entry])
    }

    /// The file a tensor lives in.
    pub fn file_of(&self, name: &str) -> Result<&SafetensorsFile> {
        Ok(&self.files[self.loc(name)?.file])
    }

    fn loc(&self, name: &str) -> Result<Loc> {
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| MnemoError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })
    }

    /// The raw bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Result<&[u8]> {
        let loc = self.loc(name)?;
        let f = &self.files[loc.file];
        Ok(f.bytes(&f.header.tensors[loc.entry]))
    }

    /// A tensor's values converted to f32 (copied; works for unaligned data).
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let e = self.entry(name)?;
        Ok(decode(e.dtype, self.bytes(name)?))
    }

    /// An integer tensor's values, exactly.
    pub fn to_i64(&self, name: &str) -> Result<Vec<i64>> {
        let e = self.entry(name)?;
        decode_i64(e.dtype, self.bytes(name)?).ok_or_else(|| MnemoError::WrongDtype {
            path: self.path.clone(),
            tensor: name.to_string(),
            dtype: e.dtype.to_string(),
            expected: "an integer dtype".into(),
        })
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> usize {
        self.index
            .keys()
            .filter_map(|n| self.entry(n).ok())
            .map(|e| e.nbytes())
            .sum()
    }

    /// Content hash of the checkpoint (BLAKE3 of every file, index first), for provenance.
    pub fn content_hash(&self) -> Result<String> {
        let mut paths: Vec<&Path> = Vec::new();
        if let Some(p) = &self.index_path {
            paths.push(p);
        }
        paths.extend(self.files.iter().map(|f| f.path.as_path()));
        if paths.len() == 1 {
            return file_hash(paths[0]);
        }
        let mut h = blake3::Hasher::new();
        for p in paths {
            h.update(file_hash(p)?.as_bytes());
        }
        Ok(format!("blake3:{}", h.finalize().to_hex()))
    }
}

/// BLAKE3 of a file's bytes, memory-mapped and hashed in parallel: `blake3:<hex>`.
pub fn file_hash(path: &Path) -> Result<String> {
    crate::fsutil::open_file(path)?;
    let mut h = blake3::Hasher::new();
    h.update_mmap_rayon(path)
        .map_err(|e| MnemoError::io(path, e))?;
    Ok(format!("blake3:{}", h.finalize().to_hex()))
}

fn find_in_dir(dir: &Path) -> Result<PathBuf> {
    for name in ["model.safetensors.index.json", "model.safetensors"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| MnemoError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".safetensors.index.json") || n.ends_with(".safetensors")
        })
        .collect();
    candidates.sort();
    if let Some(i) = candidates
        .iter()
        .position(|p| p.to_string_lossy().ends_with(".index.json"))
    {
        return Ok(candidates.swap_remove(i));
    }
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => Err(MnemoError::InvalidIndex {
            path: dir.to_path_buf(),
            reason: "folder holds no .safetensors file or *.safetensors.index.json".into(),
        }),
        n => Err(MnemoError::InvalidIndex {
            path: dir.to_path_buf(),
            reason: format!("folder holds {n} .safetensors files and no index.json to say how they fit together"),
        }),
    }
}

/// Orders tensor names as a person reads them: numeric parts by value, so
/// `2.weight` comes before `10.weight`.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let split = |s: &str| -> Vec<(u64, String)> {
        s.split('.')
            .map(|p| match p.parse::<u64>() {
                Ok(n) => (n, String::new()),
                Err(_) => (u64::MAX, p.to_string()),
            })
            .collect()
    };
    split(a).cmp(&split(b))
}

#[cfg(test)]
mod tests {
    use super::natural_cmp;

    #[test]
    fn natural_order() {
        let mut v = vec![
            "10.weight",
            "2.weight",
            "2.bias",
            "heads.a.0.weight",
            "trunk.0.bias",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "2.bias",
                "2.weight",
                "10.weight",
                "heads.a.0.weight",
                "trunk.0.bias"
            ]
        );
    }
}
