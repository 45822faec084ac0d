//! Writing files atomically: a temporary file in the target's folder, fsynced, then renamed
//! over the target, so a reader (or Make) never sees a half-written file. Every file mnemo
//! writes goes through [`AtomicFile`] (checkpoints, buffers, states, adapters, figures,
//! logs). The rules for special targets:
//! - `-` writes to stdout;
//! - a FIFO, a character device (`/dev/null`, a terminal) or anything under `/dev/` or
//!   `/proc/` (`/dev/stdout`) is streamed into (opened for writing), never replaced;
//! - a symlink is written through: the temporary file goes beside its target and is renamed
//!   over the target, so the link stays a link (a dangling symlink is refused);
//! - a new file gets mode 0666 minus the umask (as `File::create`); a file that is
//!   replaced keeps its permissions.

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
    /// The permissions of the file being replaced, kept.
    keep_mode: Option<std::fs::Permissions>,
}

enum Inner {
    Temp(BufWriter<tempfile::NamedTempFile>),
    Stream(BufWriter<Box<dyn Write>>),
}

fn is_special_path(p: &Path) -> bool {
    p.starts_with("/dev/") || p.starts_with("/proc/")
}

impl AtomicFile {
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let stream = |w: Box<dyn Write>| AtomicFile {
            target: target.clone(),
            inner: Inner::Stream(BufWriter::with_capacity(1 << 16, w)),
            keep_mode: None,
        };
        if target.as_os_str() == "-" {
            return Ok(stream(Box::new(std::io::stdout())));
        }
        let meta = std::fs::metadata(&target).ok();
        if meta.as_ref().is_some_and(|m| m.is_dir()) {
            return Err(MnemoError::io(
                &target,
                std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a folder"),
            ));
        }
        let special = meta.as_ref().is_some_and(|m| !m.is_file());
        if special || is_special_path(&target) {
            // Devices and FIFOs are streamed into; a regular file under /dev or /proc
            // (/dev/stdout redirected to a file) is truncated and written in place.
            let mut o = std::fs::OpenOptions::new();
            o.write(true);
            if !special {
                o.create(true).truncate(true);
            }
            let f = o.open(&target).map_err(|e| MnemoError::io(&target, e))?;
            return Ok(stream(Box::new(f)));
        }
        // Through a symlink to its target.
        let real = match std::fs::symlink_metadata(&target) {
            Ok(m) if m.file_type().is_symlink() => match std::fs::canonicalize(&target) {
                Ok(r) => r,
                Err(_) => {
                    return Err(MnemoError::io(
                        &target,
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "a dangling symlink; not writing through it",
                        ),
                    ))
                }
            },
            _ => target.clone(),
        };
        let dir = match real.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = real
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let prefix = format!(".{name}.");
        remove_stale_temps(&dir, &prefix);
        let temp_prefix = format!("{prefix}{}.", std::process::id());
        let mut b = tempfile::Builder::new();
        b.prefix(&temp_prefix).suffix(".tmp");
        // Created with 0666: the kernel applies the umask, as for File::create.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            b.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let tmp = b.tempfile_in(&dir).map_err(|e| MnemoError::io(&dir, e))?;
        Ok(AtomicFile {
            target: real,
            inner: Inner::Temp(BufWriter::with_capacity(1 << 20, tmp)),
            keep_mode: meta.map(|m| m.permissions()),
        })
    }

    /// The file that `commit` replaces (a symlink's target), or the stream's path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    pub fn write_all(&mut self, buf: &[u8]) -> Result<()> {
        let r = match &mut self.inner {
            Inner::Temp(w) => w.write_all(buf),
            Inner::Stream(w) => w.write_all(buf),
        };
        r.map_err(|e| MnemoError::io(&self.target, e))
    }

    /// Flushes and fsyncs what was written, without publishing it: a command with several
    /// outputs prepares them all, then commits them, so a full disk or a failed write is
    /// found before any of them replaces its target.
    pub fn sync(&mut self) -> Result<()> {
        let target = &self.target;
        let io = |e| MnemoError::io(target, e);
        match &mut self.inner {
            Inner::Temp(w) => {
                w.flush().map_err(io)?;
                w.get_ref().as_file().sync_all().map_err(io)
            }
            Inner::Stream(_) => Ok(()),
        }
    }

    /// Flushes, syncs and renames into place. Dropping without commit removes the temp file.
    pub fn commit(self) -> Result<()> {
        let target = self.target;
        let io = |e| MnemoError::io(&target, e);
        match self.inner {
            Inner::Stream(mut w) => w.flush().map_err(io),
            Inner::Temp(w) => {
                let tmp = w.into_inner().map_err(|e| io(e.into_error()))?;
                tmp.as_file().sync_all().map_err(io)?;
                if let Some(p) = self.keep_mode {
                    let _ = tmp.as_file().set_permissions(p);
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

/// Writes a checkpoint atomically ([`prepare_checkpoint`], then commit).
pub fn write_checkpoint(
    path: impl AsRef<Path>,
    tensors: Vec<OwnedTensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    prepare_checkpoint(path, tensors, metadata)?.commit()
}

/// Writes a checkpoint into its temporary file, synced but not yet in place: `commit` the
/// returned file to publish it. Tensors are laid out by element size (largest first), then
/// name, so every tensor is aligned to its element size and the bytes are deterministic.
/// `"format": "pt"` is always included in the metadata (transformers requires it).
pub fn prepare_checkpoint(
    path: impl AsRef<Path>,
    mut tensors: Vec<OwnedTensor>,
    metadata: &BTreeMap<String, String>,
) -> Result<AtomicFile> {
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
    out.sync()?;
    Ok(out)
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
