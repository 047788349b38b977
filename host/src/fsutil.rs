//! Private files under `~/.agentserver`: 0700 directories, 0600 files written atomically
//! (temp file + fsync + rename), exclusive lock files, the one safe way to read a file from a
//! state or plugin directory ([`read_regular_file`]) and the ssh-style mode check
//! ([`tighten_state_dir`]).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fs4::fs_std::FileExt;

/// Mode of every directory the host creates under its state directory.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file the host writes under its state directory.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Size cap of a JSON or TOML file under the state directory (sessions, credentials, registry,
/// config) and of a plugin manifest.
pub const STATE_FILE_CAP: u64 = 1 << 20;
/// Size cap of a plugin's library or component.
pub const PLUGIN_CODE_CAP: u64 = 512 << 20;

/// Why [`read_regular_file`] refused a file. It travels inside an [`io::Error`] of kind
/// [`io::ErrorKind::InvalidData`]; [`unsafe_file`] gets it back out.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeFile {
    /// A FIFO, device, socket or directory where a regular file was expected.
    #[error("{path} is not a regular file (it is a {kind})")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// Larger than the cap for its kind of file.
    #[error("{path} is larger than {cap} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        cap: u64,
    },
    /// A symlink (of the file or of a folder on its way) that leads out of the directory.
    #[error("{path} leads outside {dir} (to {target})")]
    OutsideDir {
        /// The file.
        path: PathBuf,
        /// The directory it must stay in.
        dir: PathBuf,
        /// Where it leads.
        target: PathBuf,
    },
}

/// The [`UnsafeFile`] inside an error of [`read_regular_file`], if that is why it failed.
pub fn unsafe_file(err: &io::Error) -> Option<&UnsafeFile> {
    err.get_ref().and_then(|e| e.downcast_ref::<UnsafeFile>())
}

fn refuse(why: UnsafeFile) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Reads `path`, which must lie inside `dir`, if and only if it is a regular file of at most
/// `cap` bytes. Symlinks (of the file or of folders on its way) are followed only while they
/// stay inside `dir`; the final open uses `O_NOFOLLOW` and `O_NONBLOCK`, so a FIFO never
/// blocks it and a file swapped for a symlink after the check is refused. Every file the host
/// reads from its state directory or a plugin directory goes through here.
///
/// A missing file (or a dangling symlink) is [`io::ErrorKind::NotFound`]; a refused one is
/// [`io::ErrorKind::InvalidData`] carrying an [`UnsafeFile`] (see [`unsafe_file`]) that names
/// the file.
pub fn read_regular_file(dir: &Path, path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let real_dir = dir.canonicalize()?;
    let real = path.canonicalize()?;
    if !real.starts_with(&real_dir) {
        return Err(refuse(UnsafeFile::OutsideDir {
            path: path.to_owned(),
            dir: dir.to_owned(),
            target: real,
        }));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&real)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(refuse(UnsafeFile::NotRegular {
            path: path.to_owned(),
            kind: kind_of(meta.file_type()),
        }));
    }
    let too_large = || {
        refuse(UnsafeFile::TooLarge {
            path: path.to_owned(),
            cap,
        })
    };
    if meta.len() > cap {
        return Err(too_large());
    }
    let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may grow after the check: never read more than the cap.
    file.take(cap.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > cap {
        return Err(too_large());
    }
    Ok(data)
}

/// Like [`read_regular_file`] for a file directly in `dir`, with [`STATE_FILE_CAP`]: the
/// reader of session, credentials, registry and config files.
pub fn read_state_file(path: &Path) -> io::Result<Vec<u8>> {
    read_regular_file(&parent_dir(path), path, STATE_FILE_CAP)
}

/// The files and folders directly under the state directory that the host owns and keeps
/// private; `sessions/` is checked file by file as well.
const OWNED_ENTRIES: [&str; 10] = [
    ".credentials.json",
    ".credentials.json.seed",
    "registry.json",
    "config.toml",
    "sessions",
    "outbox",
    "plugins",
    "cache",
    ".credentials.json.lock",
    "status",
];

/// Restores the private mode of one path the host owns, as ssh insists on for `~/.ssh`: a
/// directory or regular file of this user with group or other bits set is set back to
/// 0700 / 0600, with a warning naming it and both modes. Symlinks, other users' files, other
/// kinds and missing paths are left alone. Returns whether the mode was changed.
pub fn tighten_private(path: &Path) -> io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let want = if meta.is_dir() {
        PRIVATE_DIR_MODE
    } else if meta.file_type().is_file() {
        PRIVATE_FILE_MODE
    } else {
        return Ok(false);
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    if meta.uid() != unsafe { libc::geteuid() } {
        return Ok(false);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(want))?;
    tracing::warn!(
        path = %path.display(),
        "permissions {mode:04o} were too open for a private agentserver file; changed to {want:04o}"
    );
    Ok(true)
}

/// Checks the state directory (`~/.agentserver`) and what the host keeps in it (credentials,
/// registry, config, `sessions/` and each session file, `outbox/`, `plugins/`, `cache/`,
/// `status/`) with
/// [`tighten_private`]. Failures are warnings: the check never stops a command.
pub fn tighten_state_dir(state_dir: &Path) {
    let check = |path: &Path| {
        if let Err(err) = tighten_private(path) {
            tracing::warn!(path = %path.display(), %err, "cannot check the permissions");
        }
    };
    check(state_dir);
    for name in OWNED_ENTRIES {
        check(&state_dir.join(name));
    }
    let sessions = state_dir.join("sessions");
    let Ok(meta) = std::fs::symlink_metadata(&sessions) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(&sessions) {
        for entry in entries.flatten() {
            check(&entry.path());
        }
    }
}

/// Creates `dir` and its missing parents with mode 0700. An existing directory is left as it
/// is (it may be a directory the user chose, e.g. `AGENTSERVER_HOME`).
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
}

/// Writes `data` to `path` so that a reader sees either the old file or the whole new one,
/// never a partial write, even if this process is killed half-way: the bytes go to a temp file
/// in the same directory (mode 0600, created exclusively), are fsynced, and the temp file is
/// renamed over `path`. The parent directory is created with mode 0700 when missing.
///
/// Temp files are named `.{file name}.{pid}.{n}.tmp`, so they never end in `.json` and are
/// skipped by readers that list `*.json`.
pub fn write_private_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(path);
    ensure_private_dir(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE_MODE)
            .open(&tmp)?;
        // The umask can only remove bits; set the exact mode anyway.
        file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable; failure here loses nothing a reader can see.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// An exclusive advisory lock (`flock(LOCK_EX)`) on a lock file, held until dropped.
#[derive(Debug)]
pub struct LockFile {
    _file: File,
    path: PathBuf,
}

impl LockFile {
    /// Opens or creates `path` (mode 0600; parent created 0700) and blocks until this process
    /// holds the exclusive lock on it. Blocking: call it from `spawn_blocking` in async code when
    /// another process may hold the lock for long.
    pub fn acquire(path: &Path) -> io::Result<Self> {
        ensure_private_dir(&parent_dir(path))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(path)?;
        FileExt::lock_exclusive(&file)?;
        tracing::trace!(path = %path.display(), "lock acquired");
        Ok(Self {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Like [`LockFile::acquire`] without waiting: `Ok(None)` when another process (or
    /// another open file of this one) holds the lock.
    pub fn try_acquire(path: &Path) -> io::Result<Option<Self>> {
        ensure_private_dir(&parent_dir(path))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(path)?;
        if !FileExt::try_lock_exclusive(&file)? {
            return Ok(None);
        }
        tracing::trace!(path = %path.display(), "lock acquired");
        Ok(Some(Self {
            _file: file,
            path: path.to_path_buf(),
        }))
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Closing the file releases the flock.
        tracing::trace!(path = %self.path.display(), "lock released");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_creates_private_dir_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/file.json");
        write_private_atomic(&path, b"{}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        write_private_atomic(&path, b"{\"x\":1}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"x\":1}");
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("file.json")]);
    }

    #[test]
    fn lock_is_exclusive_between_handles() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.lock");
        let held = LockFile::acquire(&path).unwrap();
        let other = File::open(&path).unwrap();
        assert!(!FileExt::try_lock_exclusive(&other).unwrap());
        drop(held);
        assert!(FileExt::try_lock_exclusive(&other).unwrap());
    }
}
