//! PyTorch `torch.save` files (`.pth`, `.pt`, `pytorch_model.bin`) read without running
//! code: the zip format (torch ≥ 1.6: `NAME/data.pkl` plus one stored record per storage
//! under `NAME/data/`) and the legacy format (magic, protocol and system-info pickles, the
//! object pickle, the storage-key list, then each storage as an i64 element count and its
//! bytes). The pickles go through [`super::pickle`]'s allow-list; every storage and view is
//! checked against the file before a byte is copied, and contiguous tensors are borrowed
//! from the memory map.

use super::pickle::{self, StorageRef, TensorRef, Value};
use super::{Dtype, OwnedTensor};
use crate::error::{MnemoError, Result};
use memmap2::Mmap;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// torch's legacy magic number (`torch.serialization.MAGIC_NUMBER`).
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
const LEGACY_PROTOCOL: i128 = 1001;

/// Which of torch's two layouts a file has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Zip,
    Legacy,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Zip => "torch zip",
            Format::Legacy => "torch legacy",
        }
    }
}

/// A `torch.save` file: its tensors by path, and where each storage's bytes lie.
pub struct PthFile {
    path: PathBuf,
    map: Mmap,
    pub format: Format,
    /// Tensor name (dict keys joined with '.') and view, in pickle order.
    tensors: Vec<(String, Rc<TensorRef>)>,
    /// Storage key → byte range in the file.
    storages: HashMap<String, (usize, usize)>,
}

fn dtype_of(name: &str) -> Dtype {
    Dtype::parse(name).expect("the pickle allow-list names safetensors dtypes")
}

impl PthFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| MnemoError::InvalidPth {
            path: path.to_path_buf(),
            reason,
        };
        let file = crate::fsutil::open_file(path)?;
        // SAFETY: the map is read only; a file truncated under us is the documented
        // risk of every memory-mapped reader (the safetensors reader takes the same).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| MnemoError::io(path, e))?;
        let bytes: &[u8] = &map;
        let (format, root, storages) = if bytes.starts_with(b"PK\x03\x04") {
            let (root, storages) = read_zip(bytes).map_err(bad)?;
            (Format::Zip, root, storages)
        } else if bytes.first() == Some(&0x80) {
            let (root, storages) = read_legacy(bytes).map_err(bad)?;
            (Format::Legacy, root, storages)
        } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
            return Err(bad(
                "a tar-format file (torch < 0.4) is not read; load and re-save it with a newer torch".into(),
            ));
        } else {
            return Err(bad(
                "neither a torch zip file nor a legacy torch pickle".into()
            ));
        };
        let tensors = pickle::tensors(&root).map_err(bad)?;
        if tensors.is_empty() {
            return Err(bad("the file holds no tensors".into()));
        }
        Ok(PthFile {
            path: path.to_path_buf(),
            map,
            format,
            tensors,
            storages,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }

    /// The tensors as safetensors would hold them: contiguous, row-major; borrowed from
    /// the file when the view already is. `keep` picks and renames them (None: dropped).
    pub fn tensors(&self, keep: impl Fn(&str) -> Option<String>) -> Result<Vec<OwnedTensor<'_>>> {
        let bad = |reason: String| MnemoError::InvalidPth {
            path: self.path.clone(),
            reason,
        };
        // What shared or broadcast views may add on top of the file's own bytes.
        let budget = self.map.len().saturating_mul(8).saturating_add(64 << 20);
        let mut total = 0usize;
        let mut out: Vec<OwnedTensor> = Vec::new();
        for (name, t) in &self.tensors {
            let Some(new) = keep(name) else { continue };
            let dtype = dtype_of(t.storage.dtype);
            let &(start, len) = self.storages.get(&t.storage.key).ok_or_else(|| {
                bad(format!(
                    "tensor '{name}': storage '{}' has no data",
                    t.storage.key
                ))
            })?;
            let storage = &self.map[start..start + len];
            let data =
                view(storage, dtype.size(), t).map_err(|e| bad(format!("tensor '{name}': {e}")))?;
            total = total.saturating_add(data.len());
            if total > budget {
                return Err(bad(format!(
                    "the tensors expand to more than {budget} bytes from a {}-byte file (broadcast views?)",
                    self.map.len()
                )));
            }
            if out.iter().any(|o| o.name == new) {
                return Err(bad(format!("two tensors are named '{new}'")));
            }
            out.push(OwnedTensor {
                name: new,
                dtype,
                shape: t.shape.iter().map(|&d| d as usize).collect(),
                data,
            });
        }
        Ok(out)
    }
}

/// The bytes of a view, row-major: checked against the storage, borrowed when contiguous.
fn view<'a>(
    storage: &'a [u8],
    elem: usize,
    t: &TensorRef,
) -> std::result::Result<Cow<'a, [u8]>, String> {
    let numel = t
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .filter(|&n| n.checked_mul(elem as u64).is_some_and(|b| b < (1 << 48)))
        .ok_or("its shape is absurdly large")?;
    if numel == 0 {
        return Ok(Cow::Borrowed(&[]));
    }
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|x| a.checked_add(x))
        })
        .ok_or("its strides overflow")?;
    if last >= t.storage.numel {
        return Err(format!(
            "the view (offset {}, size {:?}, stride {:?}) reaches element {last} of a storage of {}",
            t.offset, t.shape, t.stride, t.storage.numel
        ));
    }
    // Row-major strides, ignoring dims of size 1: one slice of the storage.
    let mut expect = 1u64;
    let mut contiguous = true;
    for (&d, &s) in t.shape.iter().zip(&t.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
            break;
        }
        expect *= d;
    }
    let (off, n) = (t.offset as usize * elem, numel as usize * elem);
    if contiguous {
        return Ok(Cow::Borrowed(&storage[off..off + n]));
    }
    let mut out = Vec::with_capacity(n);
    let rank = t.shape.len();
    let mut idx = vec![0u64; rank];
    for _ in 0..numel {
        let e: u64 = t.offset + idx.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<u64>();
        let b = e as usize * elem;
        out.extend_from_slice(&storage[b..b + elem]);
        for k in (0..rank).rev() {
            idx[k] += 1;
            if idx[k] < t.shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    Ok(Cow::Owned(out))
}

type Storages = HashMap<String, (usize, usize)>;

fn str_of(v: &Value, what: &str) -> std::result::Result<String, String> {
    match v {
        Value::Str(s) => Ok(s.to_string()),
        v => Err(format!("{what} is not a string ({v:?})")),
    }
}

/// A persistent id `('storage', StorageType, key, location, numel[, view_metadata])`.
fn storage_id(
    pid: &Value,
    seen: &mut HashMap<String, Rc<StorageRef>>,
) -> std::result::Result<Value, String> {
    let Value::Tuple(t) = pid else {
        return Err("a persistent id is not a tuple".into());
    };
    match t.first() {
        Some(Value::Str(s)) if &**s == "storage" && (t.len() == 5 || t.len() == 6) => {}
        Some(Value::Str(s)) if &**s == "module" => {
            return Err("the file pickles a whole nn.Module (its source code); save and convert its state_dict() instead".into())
        }
        _ => return Err("a persistent id is not a storage reference".into()),
    }
    let Value::Global(pickle::Global::Storage(dtype)) = t[1] else {
        return Err("a storage reference without a storage type".into());
    };
    if t.len() == 6 && !matches!(t[5], Value::None) {
        return Err("a legacy storage view (torch < 0.4) is not read".into());
    }
    let key = str_of(&t[2], "a storage key")?;
    let numel = match t[4] {
        Value::Int(n) => {
            u64::try_from(n).map_err(|_| format!("storage '{key}' has {n} elements"))?
        }
        _ => return Err(format!("storage '{key}' has no element count")),
    };
    let s = Rc::new(StorageRef {
        dtype,
        key: key.clone(),
        numel,
    });
    if let Some(old) = seen.get(&key) {
        if **old != *s {
            return Err(format!("storage '{key}' is declared twice, differently"));
        }
        return Ok(Value::Storage(old.clone()));
    }
    seen.insert(key, s.clone());
    Ok(Value::Storage(s))
}

fn nbytes(s: &StorageRef) -> std::result::Result<usize, String> {
    s.numel
        .checked_mul(dtype_of(s.dtype).size() as u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("storage '{}' of {} elements is too large", s.key, s.numel))
}

fn read_zip(bytes: &[u8]) -> std::result::Result<(Value, Storages), String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a readable zip archive: {e}"))?;
    // name → (start, size, stored)
    let mut entries: HashMap<String, (usize, usize, bool)> = HashMap::new();
    for i in 0..zip.len() {
        let f = zip.by_index(i).map_err(|e| format!("zip entry {i}: {e}"))?;
        let name = f
            .name()
            .map_err(|e| format!("zip entry {i}: {e}"))?
            .to_string();
        let start = f
            .data_start()
            .and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| format!("zip entry '{name}' has no data offset"))?;
        let size =
            usize::try_from(f.size()).map_err(|_| format!("zip entry '{name}' is too large"))?;
        let stored = f.compression() == zip::CompressionMethod::Stored;
        if stored && start.checked_add(size).is_none_or(|e| e > bytes.len()) {
            return Err(format!("zip entry '{name}' runs past the end of the file"));
        }
        entries.insert(name, (start, size, stored));
    }
    let pkls: Vec<&String> = entries
        .keys()
        .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .collect();
    let prefix = match pkls.as_slice() {
        [one] => one.trim_end_matches("data.pkl").to_string(),
        [] if entries.keys().any(|n| n.ends_with("constants.pkl")) => {
            return Err("a TorchScript archive (torch.jit.save) holds code; convert a state_dict saved with torch.save".into())
        }
        [] => return Err("a zip archive without NAME/data.pkl: not a torch.save file".into()),
        _ => return Err("a zip archive with more than one data.pkl".into()),
    };
    if let Some(&(s, n, true)) = entries.get(&format!("{prefix}byteorder")) {
        if &bytes[s..s + n] != b"little" {
            return Err("a big-endian torch file is not read".into());
        }
    }
    let (start, size, stored) = entries[&format!("{prefix}data.pkl")];
    let owned;
    let pkl: &[u8] = if stored {
        &bytes[start..start + size]
    } else {
        use std::io::Read;
        let mut buf = Vec::new();
        zip.by_name(&format!("{prefix}data.pkl"))
            .map_err(|e| e.to_string())?
            .take(1 << 30)
            .read_to_end(&mut buf)
            .map_err(|e| format!("{prefix}data.pkl: {e}"))?;
        owned = buf;
        &owned
    };
    let mut seen = HashMap::new();
    let (root, _) = pickle::load(pkl, |pid| storage_id(pid, &mut seen))
        .map_err(|e| format!("{prefix}data.pkl: {e}"))?;
    let mut storages = Storages::new();
    for s in seen.values() {
        let rec = format!("{prefix}data/{}", s.key);
        let &(start, size, stored) = entries
            .get(&rec)
            .ok_or_else(|| format!("storage '{}' has no record {rec}", s.key))?;
        if !stored {
            return Err(format!(
                "record {rec} is compressed (torch stores storages uncompressed)"
            ));
        }
        let need = nbytes(s)?;
        if size < need {
            return Err(format!(
                "storage '{}' declares {} elements ({need} bytes) but {rec} has {size} bytes",
                s.key, s.numel
            ));
        }
        storages.insert(s.key.clone(), (start, need));
    }
    Ok((root, storages))
}

fn read_legacy(bytes: &[u8]) -> std::result::Result<(Value, Storages), String> {
    let mut pos = 0usize;
    let next = |what: &str, pos: &mut usize| -> std::result::Result<Value, String> {
        let (v, used) = pickle::load(&bytes[*pos..], |_| Err("unexpected persistent id".into()))
            .map_err(|e| format!("the {what} pickle: {e}"))?;
        *pos += used;
        Ok(v)
    };
    let magic = next("first", &mut pos).map_err(|e| format!("a pickle, not a torch file: {e}"))?;
    match magic {
        Value::Int(LEGACY_MAGIC) => {}
        _ => return Err("a pickle, but not a torch file (no torch magic number)".into()),
    }
    match next("protocol", &mut pos)? {
        Value::Int(LEGACY_PROTOCOL) => {}
        v => return Err(format!("legacy torch protocol {v:?} (only 1001 exists)")),
    }
    if let Value::Dict(d) = next("system-info", &mut pos)? {
        for (k, v) in d.borrow().iter() {
            if matches!(k, Value::Str(s) if &**s == "little_endian")
                && !matches!(v, Value::Bool(true))
            {
                return Err("a big-endian torch file is not read".into());
            }
        }
    }
    let mut seen = HashMap::new();
    let (root, used) = pickle::load(&bytes[pos..], |pid| storage_id(pid, &mut seen))
        .map_err(|e| format!("the object pickle: {e}"))?;
    pos += used;
    let keys = match next("storage-key", &mut pos)? {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(|k| str_of(k, "a storage key"))
            .collect::<std::result::Result<Vec<_>, _>>()?,
        _ => return Err("the storage-key pickle is not a list".into()),
    };
    let mut storages = Storages::new();
    for key in keys {
        let s = seen
            .get(&key)
            .ok_or_else(|| format!("storage '{key}' is listed but no tensor uses it"))?;
        let count = bytes
            .get(pos..pos + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| format!("truncated before storage '{key}'"))?;
        if count != s.numel {
            return Err(format!(
                "storage '{key}' holds {count} elements, its tensors expect {}",
                s.numel
            ));
        }
        let need = nbytes(s)?;
        let start = pos + 8;
        if start.checked_add(need).is_none_or(|e| e > bytes.len()) {
            return Err(format!(
                "storage '{key}' ({need} bytes) runs past the end of the file"
            ));
        }
        if storages.insert(key.clone(), (start, need)).is_some() {
            return Err(format!("storage '{key}' is listed twice"));
        }
        pos = start + need;
    }
    Ok((root, storages))
}
