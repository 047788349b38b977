//! Per-process sessions: `~/.agentserver/sessions/{sandbox_id}.json` (spec §4.2).
//!
//! One file per registered sandbox. While a host process runs a session, the file carries its
//! pid; when the process exits cleanly the pid is **cleared** (upstream left the dead pid in
//! place, quirk 1). Liveness is still decided by probing the pid, so a crashed process's
//! session reads as inactive too.

use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use super::StateError;
use std::os::unix::fs::OpenOptionsExt;

use crate::fsutil::{
    LockFile, PRIVATE_FILE_MODE, ensure_private_dir, read_state_file, unsafe_file,
    write_private_atomic,
};
use crate::secret::Secret;

/// One saved session (camelCase keys, as upstream writes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// Sandbox id (UUID) given by the server at registration; also the file name.
    pub sandbox_id: String,
    /// Tunnel token of the sandbox.
    #[serde(default)]
    pub tunnel_token: Secret,
    /// Proxy token of the sandbox (task intake, cards, bridge).
    #[serde(default)]
    pub proxy_token: Secret,
    /// Workspace the sandbox belongs to.
    #[serde(default)]
    pub workspace_id: String,
    /// Sandbox name shown in the web UI.
    #[serde(default)]
    pub name: String,
    /// Backend type: `claudecode`, `opencode` or a plugin's type.
    #[serde(rename = "type", default)]
    pub session_type: String,
    /// Server the sandbox was registered with (normalised, no trailing `/`).
    #[serde(default)]
    pub server_url: String,
    /// The process's working directory when the session was created (not `--work-dir`).
    #[serde(default)]
    pub dir: String,
    /// When the session was created (RFC 3339 with local offset).
    #[serde(with = "crate::rfc3339", default = "epoch")]
    pub created_at: DateTime<FixedOffset>,
    /// Pid of the process running the session; absent (or ≤ 0) when none does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The backend that registered the sandbox (`claudecode`, `opencode` or a plugin's name).
    /// Our extension, absent from upstream's files: every plugin registers as type `custom`,
    /// so only this tells which plugin a `custom` sandbox belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

fn epoch() -> DateTime<FixedOffset> {
    DateTime::<FixedOffset>::default()
}

impl Session {
    /// The pid of the live process running this session, if any (pid > 0 and the process
    /// exists, see [`pid_alive`]).
    pub fn live_pid(&self) -> Option<i32> {
        self.pid.filter(|&pid| pid_alive(pid))
    }

    /// True when a live process runs this session.
    pub fn is_alive(&self) -> bool {
        self.live_pid().is_some()
    }
}

/// True when a process with this pid exists: `kill(pid, 0)` succeeds, or fails with `EPERM`
/// (the process exists but belongs to another user). pid ≤ 0 is never alive. A reused pid can
/// make a dead session look alive; that risk is accepted, as upstream does.
pub fn pid_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;
    if pid <= 0 {
        return false;
    }
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// This process's pid as stored in session files.
pub fn current_pid() -> i32 {
    i32::try_from(std::process::id()).unwrap_or(i32::MAX)
}

/// The sessions directory and the operations on it.
#[derive(Debug, Clone)]
pub struct SessionStore {
    dir: PathBuf,
}

impl SessionStore {
    /// A store over `dir` (created 0700 on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The store at `~/.agentserver/sessions` (honours `AGENTSERVER_HOME`).
    pub fn default_location() -> Self {
        Self::new(crate::paths::sessions_dir())
    }

    /// The directory holding the session files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of session `sandbox_id`. Ids that could escape the directory (empty, `.`,
    /// `..`, containing `/` or NUL) are refused.
    pub fn path_of(&self, sandbox_id: &str) -> Result<PathBuf, StateError> {
        if sandbox_id.is_empty()
            || sandbox_id == "."
            || sandbox_id == ".."
            || sandbox_id.contains(['/', '\\', '\0'])
        {
            return Err(StateError::InvalidSessionId(sandbox_id.to_owned()));
        }
        Ok(self.dir.join(format!("{sandbox_id}.json")))
    }

    /// Writes the session exactly as given (pid included), atomically, mode 0600.
    pub fn save(&self, session: &Session) -> Result<(), StateError> {
        let path = self.path_of(&session.sandbox_id)?;
        let data = serde_json::to_vec_pretty(session).map_err(|source| StateError::Encode {
            path: path.clone(),
            source,
        })?;
        write_private_atomic(&path, &data).map_err(|source| StateError::Io {
            path: path.clone(),
            source,
        })?;
        tracing::debug!(sandbox_id = %session.sandbox_id, pid = ?session.pid, "session saved");
        Ok(())
    }

    /// Reads session `sandbox_id`; a missing file is [`StateError::SessionNotFound`].
    pub fn load(&self, sandbox_id: &str) -> Result<Session, StateError> {
        let path = self.path_of(sandbox_id)?;
        let data = match read_state_file(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::SessionNotFound(sandbox_id.to_owned()));
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        serde_json::from_slice(&data).map_err(|source| StateError::Parse { path, source })
    }

    /// Every readable `*.json` session in the directory, newest first (by `createdAt`).
    /// Files that are not regular files within [`STATE_FILE_CAP`](crate::fsutil::STATE_FILE_CAP)
    /// (a FIFO, a device, a symlink out of the directory) are skipped with a warning naming
    /// them, unparsable ones at debug level; a missing directory is an empty list.
    pub fn list(&self) -> Result<Vec<Session>, StateError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut sessions = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let data = match read_state_file(&path) {
                Ok(d) => d,
                Err(err) if unsafe_file(&err).is_some() => {
                    tracing::warn!(path = %path.display(), %err, "skipping session file");
                    continue;
                }
                Err(err) => {
                    tracing::debug!(path = %path.display(), %err, "skipping session file");
                    continue;
                }
            };
            match serde_json::from_slice::<Session>(&data) {
                Ok(s) => sessions.push(s),
                Err(err) => tracing::debug!(path = %path.display(), %err, "skipping session file"),
            }
        }
        sessions.sort_by(|a, b| {
            b.created_at
                .cmp(&a.created_at)
                .then_with(|| a.sandbox_id.cmp(&b.sandbox_id))
        });
        Ok(sessions)
    }

    /// `FindLatestSession(dir, type)`: the newest session (by `createdAt`) whose `dir` equals
    /// `dir` (exact string; empty matches any), whose type equals `session_type` (empty
    /// matches any) and that no live process runs. With `backend`, a session that records
    /// another backend is skipped (sessions that record none, as upstream's, still match).
    pub fn find_latest_session(
        &self,
        dir: &str,
        session_type: &str,
        backend: Option<&str>,
    ) -> Result<Session, StateError> {
        self.find_latest_where(dir, session_type, backend, |_| true)
    }

    /// [`SessionStore::find_latest_session`] among the sessions named `name` (a configured
    /// sandbox's sessions).
    pub fn find_latest_named(
        &self,
        dir: &str,
        session_type: &str,
        backend: Option<&str>,
        name: &str,
    ) -> Result<Session, StateError> {
        self.find_latest_where(dir, session_type, backend, |s| s.name == name)
    }

    fn find_latest_where(
        &self,
        dir: &str,
        session_type: &str,
        backend: Option<&str>,
        also: impl Fn(&Session) -> bool,
    ) -> Result<Session, StateError> {
        self.list()?
            .into_iter()
            .find(|s| {
                (dir.is_empty() || s.dir == dir)
                    && (session_type.is_empty() || s.session_type == session_type)
                    && (backend.is_none() || s.backend.is_none() || s.backend.as_deref() == backend)
                    && also(s)
                    && !s.is_alive()
            })
            .ok_or(StateError::NoResumableSession)
    }

    /// Checks that a session can be saved here: the directory exists or can be created
    /// (0700), and a file can be created in it. Run before registering a sandbox, whose
    /// tokens would otherwise be lost.
    pub fn check_writable(&self) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.dir.clone(),
            source,
        };
        ensure_private_dir(&self.dir).map_err(io)?;
        let probe = self
            .dir
            .join(format!(".write-check.{}.tmp", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE_MODE)
            .open(&probe)
            .map_err(io)?;
        std::fs::remove_file(&probe).map_err(io)
    }

    /// Takes the store's exclusive lock (`sessions/.lock`), which serialises "check that a
    /// session is inactive, then stamp our pid" between processes. Blocking.
    pub fn lock(&self) -> Result<LockFile, StateError> {
        let path = self.dir.join(".lock");
        LockFile::acquire(&path).map_err(|source| StateError::Io { path, source })
    }
}

/// Owns a session while this process runs it: creating the guard stamps this process's pid
/// into the session file; [`SessionGuard::release`] (or dropping the guard) clears it again,
/// so that after a clean exit the file says nobody runs it.
///
/// A process killed by a signal cannot clear its pid; readers then see a dead pid, which the
/// liveness probe treats as inactive.
#[derive(Debug)]
pub struct SessionGuard {
    store: SessionStore,
    session: Session,
    released: bool,
}

impl SessionGuard {
    /// Stamps this process's pid into `session` and saves it.
    pub fn acquire(store: SessionStore, mut session: Session) -> Result<Self, StateError> {
        session.pid = Some(current_pid());
        store.save(&session)?;
        Ok(Self {
            store,
            session,
            released: false,
        })
    }

    /// The session (with this process's pid).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The store the session lives in.
    pub fn store(&self) -> &SessionStore {
        &self.store
    }

    /// Clears the pid in the session file (exit path). Errors are returned; [`Drop`] does the
    /// same and only logs them.
    pub fn release(mut self) -> Result<(), StateError> {
        self.clear_pid()
    }

    fn clear_pid(&mut self) -> Result<(), StateError> {
        if self.released {
            return Ok(());
        }
        self.released = true;
        let _lock = self.store.lock()?;
        // Keep whatever is on disk unless another process has stamped its own pid since.
        let mut on_disk = match self.store.load(&self.session.sandbox_id) {
            Ok(s) => s,
            Err(StateError::SessionNotFound(_)) | Err(StateError::Parse { .. }) => {
                self.session.clone()
            }
            Err(e) => return Err(e),
        };
        if on_disk
            .pid
            .is_some_and(|pid| pid != current_pid() && pid > 0)
        {
            tracing::debug!(
                sandbox_id = %self.session.sandbox_id,
                "session now belongs to another process; pid left as is"
            );
            return Ok(());
        }
        on_disk.pid = None;
        self.store.save(&on_disk)?;
        self.session.pid = None;
        Ok(())
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Err(err) = self.clear_pid() {
            tracing::warn!(sandbox_id = %self.session.sandbox_id, %err, "cannot clear the session pid");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, dir: &str, ty: &str, created: &str) -> Session {
        Session {
            sandbox_id: id.into(),
            tunnel_token: Secret::new(format!("tt-{id}")),
            proxy_token: Secret::new(format!("pt-{id}")),
            workspace_id: "ws-1".into(),
            name: "host".into(),
            session_type: ty.into(),
            server_url: "http://127.0.0.1:1".into(),
            dir: dir.into(),
            created_at: crate::rfc3339::parse(created).unwrap(),
            pid: None,
            backend: None,
        }
    }

    #[test]
    fn upstream_session_file_parses_and_round_trips() {
        let upstream = r#"{
  "sandboxId": "0f6c1f0e-8a43-4c36-9d3e-6a1f0c7e2b11",
  "tunnelToken": "0123456789abcdef0123456789abcdef",
  "proxyToken": "fedcba9876543210fedcba9876543210",
  "workspaceId": "ws-42",
  "name": "laptop",
  "type": "claudecode",
  "serverUrl": "https://agent.cs.ac.cn",
  "dir": "/home/me/project",
  "createdAt": "2026-04-09T11:22:33.123456789+08:00",
  "pid": 4242
}"#;
        let s: Session = serde_json::from_str(upstream).unwrap();
        assert_eq!(s.tunnel_token.expose(), "0123456789abcdef0123456789abcdef");
        assert_eq!(s.pid, Some(4242));
        assert_eq!(s.session_type, "claudecode");
        let again: Session = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(again, s);
        let debug = format!("{s:?}");
        assert!(!debug.contains("0123456789abcdef"), "{debug}");
    }

    #[test]
    fn pid_absent_when_none() {
        let s = sample("a", "/d", "claudecode", "2026-04-09T10:00:00Z");
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert!(v.get("pid").is_none());
        assert_eq!(v["sandboxId"], "a");
        assert_eq!(v["type"], "claudecode");
    }

    #[test]
    fn liveness() {
        assert!(pid_alive(current_pid()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(-1));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        assert!(!pid_alive(pid));
    }

    #[test]
    fn bad_ids_are_refused() {
        let store = SessionStore::new("/nonexistent");
        for id in ["", ".", "..", "../x", "a/b"] {
            assert!(matches!(
                store.path_of(id),
                Err(StateError::InvalidSessionId(_))
            ));
        }
    }

    #[test]
    fn find_latest_filters_dir_type_and_liveness() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        store
            .save(&sample("old", "/p", "claudecode", "2026-04-09T10:00:00Z"))
            .unwrap();
        store
            .save(&sample("new", "/p", "claudecode", "2026-04-09T12:00:00Z"))
            .unwrap();
        store
            .save(&sample(
                "other-dir",
                "/q",
                "claudecode",
                "2026-04-09T13:00:00Z",
            ))
            .unwrap();
        let mut live = sample("live", "/p", "claudecode", "2026-04-09T14:00:00Z");
        live.pid = Some(current_pid());
        store.save(&live).unwrap();
        assert_eq!(
            store
                .find_latest_session("/p", "claudecode", None)
                .unwrap()
                .sandbox_id,
            "new"
        );
        assert_eq!(
            store.find_latest_session("", "", None).unwrap().sandbox_id,
            "other-dir"
        );
        assert!(matches!(
            store.find_latest_session("/p", "opencode", None),
            Err(StateError::NoResumableSession)
        ));
        std::fs::write(tmp.path().join("junk.json"), b"{not json").unwrap();
        assert_eq!(store.list().unwrap().len(), 4);
    }

    #[test]
    fn guard_stamps_and_clears_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let store = SessionStore::new(tmp.path());
        let guard = SessionGuard::acquire(
            store.clone(),
            sample("g", "/p", "claudecode", "2026-04-09T10:00:00Z"),
        )
        .unwrap();
        assert_eq!(store.load("g").unwrap().pid, Some(current_pid()));
        assert!(store.load("g").unwrap().is_alive());
        guard.release().unwrap();
        assert_eq!(store.load("g").unwrap().pid, None);

        let guard = SessionGuard::acquire(
            store.clone(),
            sample("h", "/p", "claudecode", "2026-04-09T10:00:00Z"),
        )
        .unwrap();
        drop(guard);
        assert_eq!(store.load("h").unwrap().pid, None);
        assert!(matches!(
            store.load("missing"),
            Err(StateError::SessionNotFound(_))
        ));
    }
}
