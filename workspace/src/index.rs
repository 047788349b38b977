//! The small JSON index in the base directory: which task each worktree directory belongs to,
//! when it was made, and per session the branch of its latest task. Written atomically (a unique
//! temp file, fsync, rename, directory fsync).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::WorkspaceError;

/// The index file's name in the base directory.
pub(crate) const INDEX_FILE: &str = "index.json";
/// Temp files of the index start with this (never taken for a worktree).
const TEMP_PREFIX: &str = ".index.json.tmp";

/// One worktree directory the host made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Entry {
    pub task_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<String>,
    pub branch: String,
    /// The commit the branch started from.
    pub base_commit: String,
    /// Milliseconds since the Unix epoch when it was prepared.
    pub created_unix_ms: u64,
    /// A counter that orders entries prepared in the same millisecond.
    pub seq: u64,
    /// Whether the checkout completed (the task could start). An entry that is not ready belongs
    /// to a prepare cut short: its directory may hold a partial checkout, which must never be
    /// committed (`git add -A` would record the missing files as deleted).
    #[serde(default)]
    pub ready: bool,
}

/// What the host remembers of a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Session {
    /// The branch of the session's latest task; the next one starts from its tip.
    pub last_branch: String,
    /// The directory name of the session's worktree.
    pub dir: String,
}

/// The whole index.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Index {
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub next_seq: u64,
    /// By worktree directory name (relative to the base directory).
    #[serde(default)]
    pub worktrees: BTreeMap<String, Entry>,
    /// By session key, as given.
    #[serde(default)]
    pub sessions: BTreeMap<String, Session>,
}

impl Index {
    /// Reads the index, or an empty one when there is none yet.
    pub fn load(base: &Path) -> Result<Index, WorkspaceError> {
        let path = base.join(INDEX_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| WorkspaceError::Index {
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index {
                version: 1,
                ..Index::default()
            }),
            Err(e) => Err(WorkspaceError::io("read index", path, e)),
        }
    }

    /// Writes the index atomically.
    pub fn save(&self, base: &Path) -> Result<(), WorkspaceError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = base.join(INDEX_FILE);
        let tmp: PathBuf = base.join(format!(
            "{TEMP_PREFIX}.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let bytes = serde_json::to_vec_pretty(self).expect("the index serializes");
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &path)?;
            fs::File::open(base)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            WorkspaceError::io("write index", &path, e)
        })
    }

    /// Whether `name` (an entry of the base directory) is the index or one of its temp files.
    pub fn is_index_file(name: &str) -> bool {
        name == INDEX_FILE || name.starts_with(TEMP_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Index::load(dir.path()).unwrap().version, 1);
        let mut index = Index {
            version: 1,
            ..Index::default()
        };
        index.worktrees.insert(
            "t-a".into(),
            Entry {
                task_id: "a".into(),
                session_key: None,
                branch: "agentserver/a".into(),
                base_commit: "0".repeat(40),
                created_unix_ms: 1,
                seq: 0,
                ready: true,
            },
        );
        index.save(dir.path()).unwrap();
        index.save(dir.path()).unwrap();
        assert_eq!(Index::load(dir.path()).unwrap(), index);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [INDEX_FILE]);
    }

    #[test]
    fn a_corrupt_index_is_an_error_that_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(INDEX_FILE), "{not json").unwrap();
        let err = Index::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("index.json"), "{err}");
    }
}
