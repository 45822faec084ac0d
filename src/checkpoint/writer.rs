//! Writing safetensors files atomically: a temporary file in the target's
//! folder, fsynced, then renamed over the target, so a reader (or Make)
//! never sees a half-written checkpoint. `-` writes to stdout.

use super::Dtype;
use crate::error::{MnemoError, Result};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file being written; it appears at its path only on `commit`.
pub struct AtomicFile {
    target: PathBuf,
    inner: Inner,
}

enum Inner {
    Temp(BufWriter<tempfile::NamedTempFile>),
    Stdout(BufWriter<std::io::Stdout>),
}

impl AtomicFile {
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        if target.as_os_str() == "-" {
            return Ok(AtomicFile {
                target,
                inner: Inner::Stdout(BufWriter::new(std::io::stdout())),
            });
        }
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{name}.");
        remove_stale_temps(&dir, &prefix);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{prefix}{}.", std::process::id()))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| MnemoError::io(&dir, e))?;
        Ok(AtomicFile {
            target,
            inner: Inner::Temp(BufWriter::with_capacity(1 << 20, tmp)),
        })
    }

    pub fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        let r = match &mut self.inner {
            Inner::Temp(w) => w.write_all(buf),
            Inner::Stdout(w) => w.write_all(buf),
        };
        r.map_err(|e| MnemoError::io(&self.target, e))
    }

    /// Flushes, syncs and renames into place. Dropping without commit removes the temp file.
    pub fn commit(self) -> Result<()> {
        let target = self.target;
        let io = |e| MnemoError::io(&target, e);
        match self.inner {
            Inner::Stdout(mut w) => w.flush().map_err(io),
            Inner::Temp(w) => {
                let tmp = w.into_inner().map_err(|e| io(e.into_error()))?;
                tmp.as_file().sync_all().map_err(io)?;
                // Keep the permissions a plain File::create would give.
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = tmp
                        .as_file()
                        .set_permissions(std::fs::Permissions::from_mode(0o644));
                }
                tmp.persist(&target).map_err(|e| io(e.error))?;
                Ok(())
            }
        }
    }
}

/// Removes the temporary files that earlier writers of the same target could not remove
/// because they were killed (SIGKILL, OOM killer) while writing: `.NAME.PID.XXXXXX.tmp`
/// (`prefix` is `.NAME.`) whose process PID no longer exists. Linux only (a process exists
/// while `/proc/PID` does); elsewhere, or for names of another form, nothing is removed.
/// A writer in another PID namespace sharing the folder would look dead: its commit then
/// fails loudly, it never publishes a partial file.
fn remove_stale_temps(dir: &Path, prefix: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|r| r.strip_suffix(".tmp"))
        else {
            continue;
        };
        // Exactly "PID.RANDOM": the target "a" must not touch the temp files of "a.5".
        let Some((pid, random)) = rest.split_once('.') else {
            continue;
        };
        let ours = !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !random.is_empty()
            && random.bytes().all(|b| b.is_ascii_alphanumeric());
        if ours && pid != std::process::id().to_string() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A tensor to be written.
pub struct OwnedTensor<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl<'a> OwnedTensor<'a> {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> OwnedTensor<'static> {
        OwnedTensor {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            data: Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }
}

/// One header entry: name, dtype, shape and byte size, in file order.
pub type HeaderEntry<'a> = (&'a str, Dtype, &'a [usize], usize);

/// Builds a safetensors header (length prefix excluded) for tensors laid out in the given
/// order, padded with spaces so the data section starts 8-byte aligned, as the official
/// writer does. Shared by `write_checkpoint` and the merge's streaming writer.
pub fn header_bytes<'a>(
    tensors: impl IntoIterator<Item = HeaderEntry<'a>>,
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let mut obj = serde_json::Map::new();
    if !metadata.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        obj.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0usize;
    for (name, dtype, shape, nbytes) in tensors {
        let end = offset + nbytes;
        obj.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype.as_str(), "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&obj).expect("header serialises");
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(b' ');
    }
    json
}

/// Writes a checkpoint atomically. Tensors are laid out by element size (largest first), then
/// name, so every tensor is aligned to its element size and the bytes are deterministic.
/// `"format": "pt"` is always included in the metadata (transformers requires it).
pub fn write_checkpoint(
    path: impl AsRef<Path>,
    mut tensors: Vec<OwnedTensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    for t in &tensors {
        let need = t.shape.iter().product::<usize>() * t.dtype.size();
        if need != t.data.len() {
            return Err(MnemoError::InvalidSafetensors {
                path: path.to_path_buf(),
                reason: format!(
                    "internal: tensor '{}' has {} bytes for {} {:?}",
                    t.name,
                    t.data.len(),
                    t.dtype,
                    t.shape
                ),
            });
        }
    }
    tensors.sort_by(|a, b| {
        b.dtype
            .size()
            .cmp(&a.dtype.size())
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut meta = metadata.clone();
    meta.entry("format".into()).or_insert_with(|| "pt".into());
    let header = header_bytes(
        tensors
            .iter()
            .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice(), t.data.len())),
        &meta,
    );
    let mut out = AtomicFile::create(path)?;
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for t in &tensors {
        out.write_all(&t.data)?;
    }
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;

    #[test]
    fn round_trip_and_determinism() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        let make = || {
            vec![
                OwnedTensor::f32("w", vec![2, 2], &[1.0, 2.0, 3.0, 4.0]),
                OwnedTensor {
                    name: "n".into(),
                    dtype: Dtype::I64,
                    shape: vec![],
                    data: Cow::Owned(7i64.to_le_bytes().to_vec()),
                },
                OwnedTensor {
                    name: "h".into(),
                    dtype: Dtype::F16,
                    shape: vec![1],
                    data: Cow::Owned(half::f16::from_f32(0.5).to_le_bytes().to_vec()),
                },
            ]
        };
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v".to_string());
        write_checkpoint(&p, make(), &meta).unwrap();
        let first = std::fs::read(&p).unwrap();
        write_checkpoint(&p, make(), &meta).unwrap();
        assert_eq!(first, std::fs::read(&p).unwrap());
        let c = Checkpoint::open(&p).unwrap();
        assert_eq!(c.to_f32("w").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(c.to_i64("n").unwrap(), vec![7]);
        assert_eq!(c.to_f32("h").unwrap(), vec![0.5]);
        assert_eq!(c.metadata()["format"], "pt");
        // Every tensor aligned to its element size.
        for n in c.names() {
            let f = c.file_of(n).unwrap();
            let e = c.entry(n).unwrap();
            assert_eq!(f.file_offset(e) % e.dtype.size(), 0, "{n}");
        }
        // Nothing but the target is left in the folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temp_files_of_killed_writers_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        // A writer killed mid-write (no such process: PIDs stop well below 2^31), a live
        // writer (this process's parent), and temp files of other targets.
        let dead = dir.path().join(".a.safetensors.2147483646.Ab3xYz.tmp");
        let live = dir.path().join(format!(
            ".a.safetensors.{}.Qw9eRt.tmp",
            std::os::unix::process::parent_id()
        ));
        let other = dir.path().join(".a.safetensors.5.2147483646.Ab3xYz.tmp");
        let plain = dir.path().join(".a.safetensors.Ab3xYz.tmp");
        for f in [&dead, &live, &other, &plain] {
            std::fs::write(f, b"partial").unwrap();
        }
        write_checkpoint(
            &p,
            vec![OwnedTensor::f32("w", vec![1], &[1.0])],
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(!dead.exists());
        for f in [&live, &other, &plain] {
            assert!(f.exists(), "{f:?}");
        }
    }
}
