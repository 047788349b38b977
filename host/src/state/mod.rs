//! Local state under ~/.agentserver: sessions, the legacy registry, locking and atomic writes (spec §4).
//!
//! - [`session`]: `sessions/{sandbox_id}.json`, pid liveness, [`SessionGuard`] (pid stamped
//!   while running, cleared on exit).
//! - [`registry`]: the legacy `registry.json` with its `registry.json.lock`.
//! - [`fsutil`] (re-exported from the leaf module [`crate::fsutil`], which `auth` and the
//!   outbox use directly): 0700 directories, atomic 0600 writes, exclusive lock files.
//!
//! Invariant: every file here is replaced atomically (temp file + rename), so a reader never
//! sees a half-written file, even if the writer is killed with SIGKILL.

pub mod registry;
pub mod session;

pub use crate::{fsutil, rfc3339};

use std::path::PathBuf;

pub use registry::{LockedRegistry, Registry, RegistryEntry, RegistryFile};
pub use session::{Session, SessionGuard, SessionStore, pid_alive};

/// Errors of the local state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing a file failed.
    #[error("cannot access {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid JSON of the expected shape.
    #[error("cannot parse {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Encoding JSON failed (should not happen).
    #[error("cannot encode {path}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// `--resume ID` names no session file.
    #[error("session {0} not found")]
    SessionNotFound(String),
    /// A sandbox id that cannot be a file name.
    #[error("invalid session id {0:?}")]
    InvalidSessionId(String),
    /// `--continue` found nothing.
    #[error("no resumable session found")]
    NoResumableSession,
}
