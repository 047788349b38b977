//! The durable status outbox: a final status is written to disk before it is sent, and stays
//! there until the server accepts it (or says the task no longer exists). Survives crashes and
//! restarts of the host and outages of the server.
//!
//! Layout: `<outbox_dir>/<sandbox_id>/<task file>.json`, one JSON [`OutboxEntry`] per task,
//! written atomically (temp file, fsync, rename, fsync of the directory). Entries of other
//! sandboxes are left alone (they need that sandbox's token); entries the server refuses for
//! good (400/422) move to `<outbox_dir>/<sandbox_id>/rejected/` for inspection.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::client::{PolledTask, StatusBody};

/// Format version of [`OutboxEntry`] files.
pub const OUTBOX_VERSION: u32 = 1;

/// One final status waiting for the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// File format version ([`OUTBOX_VERSION`]).
    pub version: u32,
    /// The task.
    pub task_id: String,
    /// The sandbox the task was polled for.
    pub sandbox_id: String,
    /// The server it came from.
    pub server: String,
    /// When the task ended (RFC 3339).
    pub finished_at: String,
    /// What to send.
    pub body: StatusBody,
}

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// A file operation failed.
    #[error("outbox {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An entry could not be encoded.
    #[error("outbox entry encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> OutboxError + 'a {
    move |source| OutboxError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The outbox of one sandbox.
#[derive(Clone, Debug)]
pub struct Outbox {
    dir: PathBuf,
    /// Serialises this process's entry writes, so of two writes of one entry the one that
    /// started last is the one left on disk (each write also has its own temp file).
    writes: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Outbox {
    /// Opens (creating, mode 0700) `<root>/<sandbox_id>/`.
    pub fn open(root: &Path, sandbox_id: &str) -> Result<Self, OutboxError> {
        let dir = root.join(file_stem(sandbox_id));
        create_private_dir(&dir)?;
        Ok(Self {
            dir,
            writes: Default::default(),
        })
    }

    /// Claims the delivery of this sandbox's entries for this process, until the returned
    /// lock is dropped: `Ok(None)` when another live host holds it (it is delivering them, so
    /// replaying them here would send statuses twice). Lock file: `<dir>/.owner.lock`.
    pub fn claim(&self) -> Result<Option<crate::fsutil::LockFile>, OutboxError> {
        let path = self.dir.join(".owner.lock");
        crate::fsutil::LockFile::try_acquire(&path).map_err(io("lock", &path))
    }

    /// The directory entries live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a task's entry.
    pub fn path_of(&self, task_id: &str) -> PathBuf {
        self.dir.join(format!("{}.json", file_stem(task_id)))
    }

    /// Writes an entry durably (atomic replace through a temp file of its own, see
    /// [`write_private_atomic`](crate::fsutil::write_private_atomic)). Returns once it is
    /// on disk.
    pub fn write(&self, entry: &OutboxEntry) -> Result<PathBuf, OutboxError> {
        let path = self.path_of(&entry.task_id);
        let bytes = serde_json::to_vec_pretty(entry)?;
        let _serialised = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        crate::fsutil::write_private_atomic(&path, &bytes).map_err(io("write", &path))?;
        Ok(path)
    }

    /// Removes a delivered entry. Not fsynced: if the removal is lost in a crash, the entry
    /// is replayed and the reporter first asks the server whether it already has the status.
    pub fn remove(&self, task_id: &str) -> Result<(), OutboxError> {
        let path = self.path_of(task_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    /// Moves an entry the server refused for good to `rejected/`.
    pub fn reject(&self, task_id: &str) -> Result<PathBuf, OutboxError> {
        let rejected = self.dir.join("rejected");
        create_private_dir(&rejected)?;
        let from = self.path_of(task_id);
        let to = rejected.join(from.file_name().unwrap_or_default());
        std::fs::rename(&from, &to).map_err(io("rename", &from))?;
        Ok(to)
    }

    /// Keeps a copy of the whole entry in `rejected/<task>.full.json` before it is shortened
    /// for a server that refuses its size; an existing copy (the longest) is kept.
    pub fn keep_full(&self, entry: &OutboxEntry) -> Result<PathBuf, OutboxError> {
        let rejected = self.dir.join("rejected");
        create_private_dir(&rejected)?;
        let path = rejected.join(format!("{}.full.json", file_stem(&entry.task_id)));
        if !path.exists() {
            let bytes = serde_json::to_vec_pretty(entry)?;
            crate::fsutil::write_private_atomic(&path, &bytes).map_err(io("write", &path))?;
        }
        Ok(path)
    }

    fn received_dir(&self) -> PathBuf {
        self.dir.join("received")
    }

    /// Notes durably that these tasks were received (before they run), with everything needed
    /// to run them, so a host killed before it started one runs it at its next start, and one
    /// killed while running one reports it ([`Outbox::orphans`]). One directory fsync for the
    /// whole batch.
    pub fn mark_received<'a>(
        &self,
        tasks: impl IntoIterator<Item = &'a PolledTask>,
    ) -> Result<(), OutboxError> {
        let dir = self.received_dir();
        create_private_dir(&dir)?;
        for task in tasks {
            let path = dir.join(file_stem(&task.task_id));
            let marker = ReceivedMarker {
                task: task.clone(),
                started: false,
            };
            let bytes = serde_json::to_vec(&marker)?;
            let mut f = private_file(&path).map_err(io("create", &path))?;
            f.write_all(&bytes).map_err(io("write", &path))?;
            f.sync_data().map_err(io("fsync", &path))?;
        }
        sync_dir(&dir);
        Ok(())
    }

    /// Notes durably that a received task has started: from now on a host that dies leaves a
    /// task that ran (reported `failed`), not one to run again.
    pub fn mark_started(&self, task: &PolledTask) -> Result<(), OutboxError> {
        let path = self.received_dir().join(file_stem(&task.task_id));
        let marker = ReceivedMarker {
            task: task.clone(),
            started: true,
        };
        let bytes = serde_json::to_vec(&marker)?;
        crate::fsutil::write_private_atomic(&path, &bytes).map_err(io("write", &path))
    }

    /// Drops a task's "received" marker (its outcome entry is on disk, or it was delivered).
    pub fn clear_received(&self, task_id: &str) {
        let path = self.received_dir().join(file_stem(task_id));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(path = %path.display(), %err, "cannot remove task marker"),
        }
    }

    /// Tasks received by an earlier run that never got an outcome entry (the host died while
    /// they ran). Their markers are left for the caller to clear once it has written outcomes.
    pub fn orphans(&self) -> Result<Vec<Orphan>, OutboxError> {
        let dir = self.received_dir();
        let read = match std::fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("read", &dir)(e)),
        };
        let mut ids = Vec::new();
        for item in read {
            let item = item.map_err(io("read", &dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let text = std::fs::read(item.path()).unwrap_or_default();
            let marker = serde_json::from_slice::<ReceivedMarker>(&text)
                .ok()
                .filter(|m| file_stem(&m.task.task_id) == name);
            let orphan = match marker {
                Some(marker) => Orphan {
                    task_id: marker.task.task_id.clone(),
                    never_started: (!marker.started).then_some(marker.task),
                },
                None => {
                    // An older marker (the id alone), or one cut short by a crash: whether the
                    // task ran is unknown, so it is reported, never run twice.
                    let id = String::from_utf8(text)
                        .ok()
                        .filter(|text| file_stem(text) == name)
                        .or_else(|| id_from_stem(&name));
                    let Some(task_id) = id else { continue };
                    Orphan {
                        task_id,
                        never_started: None,
                    }
                }
            };
            if self.path_of(&orphan.task_id).exists() {
                // Outcome written, marker not yet cleared.
                self.clear_received(&orphan.task_id);
                continue;
            }
            ids.push(orphan);
        }
        ids.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        Ok(ids)
    }

    /// All pending entries, oldest first. Unreadable files are skipped with a warning.
    pub fn pending(&self) -> Result<Vec<OutboxEntry>, OutboxError> {
        let mut entries = Vec::new();
        let read = std::fs::read_dir(&self.dir).map_err(io("read", &self.dir))?;
        for item in read {
            let item = item.map_err(io("read", &self.dir))?;
            let path = item.path();
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".json") || !path.is_file() {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<OutboxEntry>(&b).map_err(|e| e.to_string()))
            {
                Ok(entry) => entries.push(entry),
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "skipping unreadable outbox entry")
                }
            }
        }
        entries.sort_by(|a, b| a.finished_at.cmp(&b.finished_at));
        Ok(entries)
    }
}

/// What `received/<task>` holds: the task as polled, and whether it has started.
#[derive(Serialize, Deserialize)]
struct ReceivedMarker {
    task: PolledTask,
    started: bool,
}

/// A task an earlier run received but never finished ([`Outbox::orphans`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Orphan {
    /// The task.
    pub task_id: String,
    /// The task itself when it never started (the host died between receiving and starting
    /// it): it can still be run. `None` when it was running, or when that is not known.
    pub never_started: Option<PolledTask>,
}

/// A file-name-safe form of an id: kept as is when it is made of `[A-Za-z0-9_.-]` (and does
/// not start with `.`), else `x-` + hex of its bytes.
pub fn file_stem(id: &str) -> String {
    let safe = !id.is_empty()
        && !id.starts_with('.')
        && id.len() <= 200
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if safe {
        id.to_owned()
    } else {
        format!("x-{}", hex::encode(id.as_bytes()))
    }
}

/// The id a [`file_stem`] came from.
pub fn id_from_stem(stem: &str) -> Option<String> {
    match stem.strip_prefix("x-") {
        Some(hex_part) => hex::decode(hex_part)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(stem.to_owned()),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), OutboxError> {
    crate::fsutil::ensure_private_dir(dir).map_err(io("create", dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Sandboxes under `root` whose outbox holds undelivered statuses or orphaned tasks, so a host
/// serving another sandbox can deliver them (see [`super::flush_outbox`]).
pub fn sandboxes_with_leftovers(root: &Path) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for item in read.flatten() {
        if !item.path().is_dir() {
            continue;
        }
        let name = item.file_name();
        let Some(sandbox_id) = id_from_stem(&name.to_string_lossy()) else {
            continue;
        };
        let outbox = Outbox {
            dir: item.path(),
            writes: Default::default(),
        };
        let has_pending = outbox.pending().is_ok_and(|p| !p.is_empty());
        let has_orphans = outbox.orphans().is_ok_and(|o| !o.is_empty());
        if has_pending || has_orphans {
            found.push(sandbox_id);
        }
    }
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, at: &str) -> OutboxEntry {
        OutboxEntry {
            version: OUTBOX_VERSION,
            task_id: id.into(),
            sandbox_id: "sbx".into(),
            server: "http://x".into(),
            finished_at: at.into(),
            body: StatusBody::failed("boom"),
        }
    }

    #[test]
    fn write_list_remove_reject() {
        let tmp = tempfile::tempdir().unwrap();
        let ob = Outbox::open(tmp.path(), "sbx").unwrap();
        ob.write(&entry("task_b", "2026-01-02T00:00:00Z")).unwrap();
        ob.write(&entry("task_a", "2026-01-01T00:00:00Z")).unwrap();
        ob.write(&entry("../evil", "2026-01-03T00:00:00Z")).unwrap();
        std::fs::write(ob.dir().join("junk.json"), b"not json").unwrap();
        let ids: Vec<_> = ob
            .pending()
            .unwrap()
            .into_iter()
            .map(|e| e.task_id)
            .collect();
        assert_eq!(ids, ["task_a", "task_b", "../evil"]);
        ob.remove("task_a").unwrap();
        ob.remove("task_a").unwrap();
        let moved = ob.reject("../evil").unwrap();
        assert!(moved.exists());
        let ids: Vec<_> = ob
            .pending()
            .unwrap()
            .into_iter()
            .map(|e| e.task_id)
            .collect();
        assert_eq!(ids, ["task_b"]);
        // Another sandbox has its own directory.
        let other = Outbox::open(tmp.path(), "other").unwrap();
        assert!(other.pending().unwrap().is_empty());
    }

    #[test]
    fn concurrent_writes_of_one_entry_leave_a_valid_file_with_the_last_content() {
        let tmp = tempfile::tempdir().unwrap();
        let ob = Outbox::open(tmp.path(), "sbx").unwrap();
        for round in 0..20 {
            let writers: Vec<_> = (0..8)
                .map(|n| {
                    let ob = ob.clone();
                    std::thread::spawn(move || {
                        let mut e = entry("task_same", "2026-01-01T00:00:00Z");
                        // Different lengths, so an interleaving would leave broken JSON.
                        e.body = StatusBody::failed("x".repeat(1 + n * 997 + round));
                        ob.write(&e).unwrap();
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            let mut last = entry("task_same", "2026-01-01T00:00:00Z");
            last.body = StatusBody::failed(format!("last of round {round}"));
            ob.write(&last).unwrap();
            let on_disk: OutboxEntry =
                serde_json::from_slice(&std::fs::read(ob.path_of("task_same")).unwrap())
                    .expect("a valid entry");
            assert_eq!(on_disk, last);
        }
        let leftovers: Vec<_> = std::fs::read_dir(ob.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    }

    #[test]
    fn received_markers_find_orphans() {
        let tmp = tempfile::tempdir().unwrap();
        let ob = Outbox::open(tmp.path(), "sbx").unwrap();
        let tasks: Vec<PolledTask> = ["task_a", "task_b", "we/ird"]
            .into_iter()
            .map(|id| PolledTask {
                task_id: id.into(),
                prompt: format!("prompt of {id}"),
                ..Default::default()
            })
            .collect();
        ob.mark_received(&tasks).unwrap();
        ob.write(&entry("task_b", "2026-01-01T00:00:00Z")).unwrap();
        ob.mark_started(&tasks[2]).unwrap();
        let orphans = ob.orphans().unwrap();
        let ids: Vec<&str> = orphans.iter().map(|o| o.task_id.as_str()).collect();
        assert_eq!(ids, ["task_a", "we/ird"]);
        // task_a never started: the marker holds the whole task, to be run again.
        assert_eq!(orphans[0].never_started.as_ref(), Some(&tasks[0]));
        // we/ird had started: it is reported, not run twice.
        assert_eq!(orphans[1].never_started, None);
        ob.clear_received("task_a");
        ob.clear_received("we/ird");
        assert!(ob.orphans().unwrap().is_empty());
        // The entry itself is still pending; only markers are gone.
        assert_eq!(ob.pending().unwrap().len(), 1);
    }

    #[test]
    fn an_old_or_cut_short_marker_is_an_orphan_that_is_not_run_again() {
        let tmp = tempfile::tempdir().unwrap();
        let ob = Outbox::open(tmp.path(), "sbx").unwrap();
        std::fs::create_dir_all(ob.dir().join("received")).unwrap();
        // The format before markers held the task: the id alone.
        std::fs::write(ob.dir().join("received").join("task_old"), "task_old").unwrap();
        // A marker a crash cut short.
        std::fs::write(
            ob.dir().join("received").join("task_cut"),
            "{\"task\":{\"ta",
        )
        .unwrap();
        let orphans = ob.orphans().unwrap();
        assert_eq!(
            orphans,
            [
                Orphan {
                    task_id: "task_cut".into(),
                    never_started: None
                },
                Orphan {
                    task_id: "task_old".into(),
                    never_started: None
                },
            ]
        );
    }

    #[test]
    fn stems_are_safe() {
        assert_eq!(file_stem("task_1-a.b"), "task_1-a.b");
        assert_eq!(file_stem("a/b"), "x-612f62");
        assert_eq!(file_stem(".."), "x-2e2e");
        assert_eq!(file_stem(""), "x-");
        for id in ["task_1", "a/b", "..", ""] {
            assert_eq!(id_from_stem(&file_stem(id)).as_deref(), Some(id));
        }
    }
}
