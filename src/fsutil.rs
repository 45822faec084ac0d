//! Files as a command sees them: inputs that must be regular files ([`open_file`],
//! [`read`]), the one check that a command's destinations destroy nothing
//! ([`Destinations`]), and the lock that serialises read-modify-write files such as replay
//! buffers ([`lock_in_place`]).

use crate::{MnemoError, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// What a non-regular file is, for messages.
pub fn kind_of(m: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if m.is_dir() {
        "a folder"
    } else if m.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading when it is a regular file (after symlinks); a FIFO, device or
/// socket is refused without blocking (a FIFO is opened non-blocking, then refused), a
/// folder is refused too.
pub fn open_file(path: &Path) -> Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK);
    }
    let f = o.open(path).map_err(|e| MnemoError::io(path, e))?;
    let m = f.metadata().map_err(|e| MnemoError::io(path, e))?;
    if !m.is_file() {
        return Err(MnemoError::NotRegular {
            path: path.to_path_buf(),
            kind: kind_of(&m).to_string(),
        });
    }
    Ok(f)
}

/// The whole of a regular file (see [`open_file`]).
pub fn read(path: &Path) -> Result<Vec<u8>> {
    let mut f = open_file(path)?;
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut buf).map_err(|e| MnemoError::io(path, e))?;
    Ok(buf)
}

/// The whole of a regular text file (see [`open_file`]).
pub fn read_to_string(path: &Path) -> Result<String> {
    let bytes = read(path)?;
    String::from_utf8(bytes).map_err(|_| {
        MnemoError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not valid UTF-8 text"),
        )
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Input,
    Output,
    /// Read, then replaced (a replay buffer, a state file).
    InPlace,
    /// A folder whose files are written (a sharded checkpoint): no input may lie inside it.
    OutputFolder,
}

/// Which file a path names: its canonical path (symlinks resolved; for a file that does not
/// exist yet, its folder's canonical path and its name) and its device and inode when it
/// exists. Two paths name the same file when either agrees.
#[derive(Debug)]
struct Identity {
    canonical: Option<PathBuf>,
    inode: Option<(u64, u64)>,
    regular_or_new: bool,
    is_dir: bool,
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn identity(p: &Path) -> Identity {
    let meta = std::fs::metadata(p).ok();
    #[cfg(unix)]
    let inode = meta.as_ref().map(|m| {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    });
    #[cfg(not(unix))]
    let inode = None;
    let canonical = std::fs::canonicalize(p).ok().or_else(|| {
        let name = p.file_name()?;
        std::fs::canonicalize(parent_of(p))
            .ok()
            .map(|d| d.join(name))
    });
    Identity {
        canonical,
        inode,
        regular_or_new: meta.as_ref().is_none_or(|m| m.is_file() || m.is_dir()),
        is_dir: meta.as_ref().is_some_and(|m| m.is_dir()),
    }
}

fn same(a: &Identity, b: &Identity) -> bool {
    (a.inode.is_some() && a.inode == b.inode)
        || (a.canonical.is_some() && a.canonical == b.canonical)
}

/// How a message names the entry `label` of role `what`: a label that is a phrase ("the
/// model") says what it is; a flag ("--data") is called "the input --data".
fn called(label: &str, what: &str) -> String {
    if label.starts_with("the ") {
        label.to_string()
    } else {
        format!("the {what} {label}")
    }
}

/// `inner` lies inside the folder `dir`.
fn inside(inner: &Identity, dir: &Identity) -> bool {
    match (&inner.canonical, &dir.canonical) {
        (Some(i), Some(d)) => dir.is_dir && i.starts_with(d) && i != d,
        _ => false,
    }
}

/// Whether `a` and `b` name the same existing file (canonical path, or device and inode).
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (x, y) = (identity(a), identity(b));
    x.inode.is_some() && same(&x, &y)
}

/// A command's files, each with the name the user knows it by (a flag, an argument): the
/// inputs it reads, the outputs it writes and the files it reads and then replaces.
/// [`Destinations::check`] runs before any work and refuses
/// - an output or in-place file that is the same file as any other entry (compared by
///   canonical path and by device and inode, so symlinks and hard links are seen through);
///   two inputs may be the same file;
/// - an output inside a folder given as an input (a sharded checkpoint's folder);
/// - an output whose folder does not exist or that is an existing folder;
/// - an output that is a dangling symlink.
///
/// `-` (stdout) and character devices, FIFOs and sockets (`/dev/null`, `/dev/stdout`) are
/// not files that can be destroyed and are not compared.
#[derive(Default)]
pub struct Destinations {
    entries: Vec<(String, PathBuf, Role)>,
    stdout_free: bool,
}

/// Whether `p` names the process's stdout (`-`, `/dev/stdout`, `/dev/fd/1`).
fn is_stdout(p: &Path) -> bool {
    ["-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"]
        .iter()
        .any(|s| p.as_os_str() == *s)
}

impl Destinations {
    pub fn new() -> Self {
        Self::default()
    }

    /// The command prints nothing else on stdout, so an output may be stdout (`-o -`);
    /// otherwise one is refused (it would be mixed with the command's JSON lines).
    pub fn stdout_free(&mut self) -> &mut Self {
        self.stdout_free = true;
        self
    }

    pub fn input(&mut self, label: impl Into<String>, path: impl AsRef<Path>) -> &mut Self {
        self.entries
            .push((label.into(), path.as_ref().to_path_buf(), Role::Input));
        self
    }

    pub fn output(&mut self, label: impl Into<String>, path: impl AsRef<Path>) -> &mut Self {
        self.entries
            .push((label.into(), path.as_ref().to_path_buf(), Role::Output));
        self
    }

    pub fn in_place(&mut self, label: impl Into<String>, path: impl AsRef<Path>) -> &mut Self {
        self.entries
            .push((label.into(), path.as_ref().to_path_buf(), Role::InPlace));
        self
    }

    /// A folder the command writes files into (created when missing): it may exist, but no
    /// input may be it or lie inside it.
    pub fn output_folder(&mut self, label: impl Into<String>, dir: impl AsRef<Path>) -> &mut Self {
        self.entries
            .push((label.into(), dir.as_ref().to_path_buf(), Role::OutputFolder));
        self
    }

    /// The files `names` inside the output folder `dir` (which may not exist yet).
    pub fn output_dir(
        &mut self,
        label: impl Into<String>,
        dir: impl AsRef<Path>,
        names: &[&str],
    ) -> &mut Self {
        let label = label.into();
        let dir = dir.as_ref();
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            // Something that is not a folder (a file, /dev/null): refused by `check` (as the
            // file it is first, so that an input there is named as such).
            Ok(_) => {
                self.entries
                    .push((label.clone(), dir.to_path_buf(), Role::Output));
                self.entries
                    .push((label.clone(), dir.to_path_buf(), Role::OutputFolder));
                return self;
            }
            // Not a folder yet: the folder itself is what is created.
            Err(_) => {
                self.entries
                    .push((label.clone(), dir.to_path_buf(), Role::Output));
                return self;
            }
        }
        for n in names {
            self.entries
                .push((label.clone(), dir.join(n), Role::Output));
        }
        self
    }

    pub fn check(&self) -> Result<()> {
        let ids: Vec<Identity> = self.entries.iter().map(|(_, p, _)| identity(p)).collect();
        let err = |path: &Path, reason: String| MnemoError::Destination {
            path: path.to_path_buf(),
            reason,
        };
        for (i, (label, path, role)) in self.entries.iter().enumerate() {
            if *role != Role::Input && is_stdout(path) && !self.stdout_free {
                return Err(err(
                    path,
                    format!("{label}: stdout carries this command's JSON lines; give a file"),
                ));
            }
            if *role == Role::Input || path.as_os_str() == "-" {
                continue;
            }
            // A folder output must be a folder or not exist yet: checked before any work,
            // not when the first file is written into it.
            if *role == Role::OutputFolder && std::fs::metadata(path).is_ok_and(|m| !m.is_dir()) {
                return Err(err(
                    path,
                    format!("{label} names a file, not a folder; nothing was written"),
                ));
            }
            let id = &ids[i];
            if !id.regular_or_new {
                continue;
            }
            if *role == Role::OutputFolder {
                for (j, (other, opath, orole)) in self.entries.iter().enumerate() {
                    if *orole == Role::Input
                        && (same(id, &ids[j]) || inside(&ids[j], id) || inside(id, &ids[j]))
                    {
                        return Err(err(
                            path,
                            format!(
                                "{} ({}) is in the folder {label} would write; choose another folder",
                                called(other, "input"),
                                opath.display()
                            ),
                        ));
                    }
                }
                continue;
            }
            if std::fs::symlink_metadata(path).is_ok() && std::fs::metadata(path).is_err() {
                return Err(err(
                    path,
                    format!("{label} is a dangling symlink; not writing through it"),
                ));
            }
            if id.is_dir && *role == Role::Output {
                return Err(err(path, format!("{label} is an existing folder")));
            }
            let dir = parent_of(path);
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(err(
                        path,
                        format!("{label}: '{}' is not a folder", dir.display()),
                    ))
                }
                Err(_) => {
                    return Err(err(
                        path,
                        format!(
                            "{label}: the folder '{}' does not exist; nothing was written",
                            dir.display()
                        ),
                    ))
                }
            }
            for (j, (other, opath, orole)) in self.entries.iter().enumerate() {
                if i == j || opath.as_os_str() == "-" || !ids[j].regular_or_new {
                    continue;
                }
                // Report each pair once, at its later entry, unless the earlier one is an input.
                if j > i && *orole != Role::Input {
                    continue;
                }
                if same(id, &ids[j]) {
                    let what = match orole {
                        Role::Input => "input",
                        Role::Output | Role::OutputFolder => "output",
                        Role::InPlace => "file",
                    };
                    return Err(err(
                        path,
                        format!(
                            "{label} is the same file as {} ({}); writing it would destroy that; choose another path",
                            called(other, what),
                            opath.display()
                        ),
                    ));
                }
                if *orole == Role::Input && inside(id, &ids[j]) {
                    return Err(err(
                        path,
                        format!(
                            "{label} lies inside {}, a folder ({}); choose another path",
                            called(other, "input"),
                            opath.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An exclusive advisory lock on a file that is read, then replaced by rename (a replay
/// buffer, a training state): held until dropped. Two runs on the same file take turns
/// instead of one losing the other's update. Because the file is replaced (a new inode), the
/// lock is taken on the file and then checked to still be the file at `path`; while the file
/// does not exist, its folder is locked instead. Locks on the same file or folder within one
/// process share one descriptor, so a run that locks its buffer and its state in one folder
/// never waits on itself (flock would make a second descriptor wait on the first).
pub struct InPlaceLock {
    _file: std::sync::Arc<File>,
}

#[cfg(unix)]
type LockId = (u64, u64);
#[cfg(not(unix))]
type LockId = PathBuf;

/// The locks this process holds, by file identity.
static HELD: std::sync::Mutex<Vec<(LockId, std::sync::Weak<File>)>> =
    std::sync::Mutex::new(Vec::new());

fn lock_id(f: &File, path: &Path) -> Result<LockId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let m = f.metadata().map_err(|e| MnemoError::io(path, e))?;
        Ok((m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        Ok(path.to_path_buf())
    }
}

/// `f` locked exclusively, or the descriptor this process already locked the same file with.
fn lock_shared_in_process(f: File, path: &Path) -> Result<std::sync::Arc<File>> {
    let id = lock_id(&f, path)?;
    {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|(_, w)| w.strong_count() > 0);
        if let Some(a) = held
            .iter()
            .find(|(i, _)| *i == id)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(a);
        }
    }
    f.lock().map_err(|e| MnemoError::io(path, e))?;
    let a = std::sync::Arc::new(f);
    HELD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, std::sync::Arc::downgrade(&a)));
    Ok(a)
}

pub fn lock_in_place(path: &Path) -> Result<InPlaceLock> {
    loop {
        match File::open(path) {
            Ok(f) => {
                let f = lock_shared_in_process(f, path)?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::MetadataExt;
                    let held = f.metadata().map_err(|e| MnemoError::io(path, e))?;
                    match std::fs::metadata(path) {
                        Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {}
                        // Replaced (or removed) while we waited: lock the file there now.
                        _ => continue,
                    }
                }
                return Ok(InPlaceLock { _file: f });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = parent_of(path);
                let d = File::open(&dir).map_err(|e| MnemoError::io(&dir, e))?;
                let d = lock_shared_in_process(d, &dir)?;
                if path.exists() {
                    // Created by another run while we waited: lock it instead.
                    continue;
                }
                return Ok(InPlaceLock { _file: d });
            }
            Err(e) => return Err(MnemoError::io(path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_see_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let hard = dir.path().join("hard");
        std::fs::hard_link(&a, &hard).unwrap();
        let dotted = dir.path().join(".").join("a");
        for o in [&a, &link, &hard, &dotted] {
            let e = Destinations::new()
                .input("model", &a)
                .output("-o", o)
                .check()
                .unwrap_err();
            assert!(e.to_string().contains("same file"), "{e}");
        }
        // Two outputs.
        let b = dir.path().join("b");
        assert!(Destinations::new()
            .output("-o", &b)
            .output("--log", &b)
            .check()
            .is_err());
        // Distinct files, /dev/null twice, stdout (when free).
        assert!(Destinations::new().output("-o", "-").check().is_err());
        Destinations::new()
            .stdout_free()
            .input("model", &a)
            .output("-o", &b)
            .output("--log", "/dev/null")
            .output("--merged", "/dev/null")
            .output("x", "-")
            .check()
            .unwrap();
        // Missing folder, existing folder.
        let e = Destinations::new()
            .output("--buffer", dir.path().join("no/b"))
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(Destinations::new()
            .output("-o", dir.path())
            .check()
            .is_err());
        // Inside an input folder.
        assert!(Destinations::new()
            .input("model", dir.path())
            .output("-o", dir.path().join("c"))
            .check()
            .is_err());
        // Two inputs may be the same file.
        Destinations::new()
            .input("a", &a)
            .input("b", &link)
            .check()
            .unwrap();
    }

    #[test]
    fn regular_files_only() {
        assert!(matches!(
            read(Path::new("/dev/null")),
            Err(MnemoError::NotRegular { .. })
        ));
        assert!(open_file(Path::new("/")).is_err());
    }
}
