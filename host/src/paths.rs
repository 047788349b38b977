//! Where the host keeps its files: `~/.agentserver` and what lies under it.

use std::path::PathBuf;

/// Environment variable that overrides the state directory (tests, several hosts on one
/// machine). Unset means `$HOME/.agentserver`.
pub const STATE_DIR_ENV: &str = "AGENTSERVER_HOME";

/// The state directory: `$AGENTSERVER_HOME`, else `$HOME/.agentserver`, else `./.agentserver`.
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".agentserver")
}

/// `~/.agentserver/.credentials.json`.
pub fn credentials_file() -> PathBuf {
    state_dir().join(".credentials.json")
}

/// `~/.agentserver/sessions/`.
pub fn sessions_dir() -> PathBuf {
    state_dir().join("sessions")
}

/// `~/.agentserver/registry.json` (legacy).
pub fn registry_file() -> PathBuf {
    state_dir().join("registry.json")
}

/// `~/.agentserver/outbox/`: final statuses not yet accepted by the server.
pub fn outbox_dir() -> PathBuf {
    state_dir().join("outbox")
}

/// `~/.agentserver/plugins/`.
pub fn plugins_dir() -> PathBuf {
    state_dir().join("plugins")
}
