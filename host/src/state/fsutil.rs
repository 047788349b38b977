//! Private files under `~/.agentserver`: 0700 directories, 0600 files written atomically
//! (temp file + fsync + rename), and exclusive lock files.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use fs4::fs_std::FileExt;

/// Mode of every directory the host creates under its state directory.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of every file the host writes under its state directory.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

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
