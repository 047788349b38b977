//! The legacy registry `~/.agentserver/registry.json` and its lock file
//! `registry.json.lock` (spec §4.1).
//!
//! Nothing in the host registers into it any more (sessions replaced it in v0.35), but
//! `remove` edits it and `task-worker` falls back to its first entry. Every read-modify-write
//! happens under the exclusive lock on `registry.json.lock` (upstream's `remove` skipped the
//! lock; we do not), and the file is replaced atomically.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use super::StateError;
use crate::fsutil::{LockFile, read_state_file, write_private_atomic};
use crate::secret::Secret;

/// The first port handed out to opencode entries (≤ v0.35).
pub const FIRST_OPENCODE_PORT: u16 = 4096;

/// `{"entries": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    /// The entries, in file order. Go writes `null` for an empty list; that reads as empty.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub entries: Vec<RegistryEntry>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RegistryEntry>, D::Error> {
    Ok(Option::<Vec<RegistryEntry>>::deserialize(d)?.unwrap_or_default())
}

/// One registered agent (snake_case keys, as upstream writes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryEntry {
    /// Absolute working directory at registration.
    #[serde(default)]
    pub dir: String,
    /// Server URL.
    #[serde(default)]
    pub server: String,
    /// Sandbox id.
    #[serde(default)]
    pub sandbox_id: String,
    /// Tunnel token of the sandbox.
    #[serde(default)]
    pub tunnel_token: Secret,
    /// Workspace id.
    #[serde(default)]
    pub workspace_id: String,
    /// Sandbox name.
    #[serde(default)]
    pub name: String,
    /// Backend type (v0.27+), omitted when empty.
    #[serde(rename = "type", default, skip_serializing_if = "String::is_empty")]
    pub entry_type: String,
    /// Port of the local opencode server (≤ v0.35), omitted when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opencode_port: Option<u16>,
}

impl Registry {
    /// Replaces the entry with the same (`dir`, `workspace_id`) in place, or appends.
    pub fn put(&mut self, entry: RegistryEntry) {
        match self
            .entries
            .iter_mut()
            .find(|e| e.dir == entry.dir && e.workspace_id == entry.workspace_id)
        {
            Some(slot) => *slot = entry,
            None => self.entries.push(entry),
        }
    }

    /// Removes and returns the entry with this (`dir`, `workspace_id`).
    pub fn remove(&mut self, dir: &str, workspace_id: &str) -> Option<RegistryEntry> {
        let idx = self
            .entries
            .iter()
            .position(|e| e.dir == dir && e.workspace_id == workspace_id)?;
        Some(self.entries.remove(idx))
    }

    /// The entries registered for `dir` (exact string).
    pub fn find_by_dir(&self, dir: &str) -> Vec<&RegistryEntry> {
        self.entries.iter().filter(|e| e.dir == dir).collect()
    }

    /// The lowest port ≥ 4096 that no entry's `opencode_port` uses.
    pub fn next_opencode_port(&self) -> u16 {
        let mut port = FIRST_OPENCODE_PORT;
        while self.entries.iter().any(|e| e.opencode_port == Some(port)) {
            port = port.saturating_add(1);
        }
        port
    }
}

/// The registry file and its lock file.
#[derive(Debug, Clone)]
pub struct RegistryFile {
    path: PathBuf,
}

impl RegistryFile {
    /// The registry at `path`; the lock file is `path` + `.lock`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// `~/.agentserver/registry.json` (honours `AGENTSERVER_HOME`).
    pub fn default_location() -> Self {
        Self::new(crate::paths::registry_file())
    }

    /// The registry file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file's path (`registry.json.lock`).
    pub fn lock_path(&self) -> PathBuf {
        let mut p = self.path.as_os_str().to_owned();
        p.push(".lock");
        PathBuf::from(p)
    }

    /// Reads the registry without the lock (read-only use). Missing file → empty registry.
    pub fn load(&self) -> Result<Registry, StateError> {
        match read_state_file(&self.path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| StateError::Parse {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::default()),
            Err(source) => Err(StateError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Blocks until this process holds the registry lock, then loads the registry. Save with
    /// [`LockedRegistry::save`]; dropping the value releases the lock.
    pub fn lock(&self) -> Result<LockedRegistry, StateError> {
        let lock_path = self.lock_path();
        let lock = LockFile::acquire(&lock_path).map_err(|source| StateError::Io {
            path: lock_path,
            source,
        })?;
        let registry = self.load()?;
        Ok(LockedRegistry {
            file: self.clone(),
            registry,
            _lock: lock,
        })
    }

    /// Read-modify-write under the lock: loads, applies `f`, saves, releases. Returns what `f`
    /// returned.
    pub fn update<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> Result<T, StateError> {
        let mut locked = self.lock()?;
        let out = f(&mut locked.registry);
        locked.save()?;
        Ok(out)
    }
}

/// The registry loaded under its lock. The lock is held until this value is dropped.
#[derive(Debug)]
pub struct LockedRegistry {
    file: RegistryFile,
    /// The registry as loaded; change it, then [`LockedRegistry::save`].
    pub registry: Registry,
    _lock: LockFile,
}

impl LockedRegistry {
    /// Writes the registry atomically (pretty JSON, mode 0600). The lock stays held.
    pub fn save(&self) -> Result<(), StateError> {
        let path = self.file.path.clone();
        let data =
            serde_json::to_vec_pretty(&self.registry).map_err(|source| StateError::Encode {
                path: path.clone(),
                source,
            })?;
        write_private_atomic(&path, &data).map_err(|source| StateError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &str, ws: &str, port: Option<u16>) -> RegistryEntry {
        RegistryEntry {
            dir: dir.into(),
            server: "https://s".into(),
            sandbox_id: format!("sb-{dir}-{ws}"),
            tunnel_token: Secret::new("tok"),
            workspace_id: ws.into(),
            name: "n".into(),
            entry_type: String::new(),
            opencode_port: port,
        }
    }

    #[test]
    fn upstream_registry_parses() {
        let v020 = r#"{"entries":[{"dir":"/a","server":"https://s","sandbox_id":"x","tunnel_token":"t","workspace_id":"w","name":"n","opencode_port":4096}]}"#;
        let r: Registry = serde_json::from_str(v020).unwrap();
        assert_eq!(r.entries[0].opencode_port, Some(4096));
        assert_eq!(r.entries[0].tunnel_token.expose(), "t");
        let null: Registry = serde_json::from_str(r#"{"entries":null}"#).unwrap();
        assert!(null.entries.is_empty());
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["entries"][0].get("type").is_none());
    }

    #[test]
    fn put_replaces_by_dir_and_workspace() {
        let mut r = Registry::default();
        r.put(entry("/a", "w1", Some(4096)));
        r.put(entry("/a", "w2", Some(4097)));
        let mut e = entry("/a", "w1", Some(4096));
        e.name = "renamed".into();
        r.put(e);
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries[0].name, "renamed");
        assert_eq!(r.next_opencode_port(), 4098);
        assert_eq!(r.find_by_dir("/a").len(), 2);
        assert!(r.remove("/a", "w2").is_some());
        assert!(r.remove("/a", "w2").is_none());
        assert_eq!(r.next_opencode_port(), 4097);
    }

    #[test]
    fn update_under_lock_persists() {
        let tmp = tempfile::tempdir().unwrap();
        let file = RegistryFile::new(tmp.path().join("registry.json"));
        assert!(file.load().unwrap().entries.is_empty());
        file.update(|r| r.put(entry("/a", "w", None))).unwrap();
        assert_eq!(file.load().unwrap().entries.len(), 1);
        assert!(file.lock_path().ends_with("registry.json.lock"));
        assert!(file.lock_path().exists());
    }
}
