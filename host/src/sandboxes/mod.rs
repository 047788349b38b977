//! Several sandboxes in one host: what to serve ([`config`]) and serving them together
//! ([`supervisor`]): each sandbox keeps its own registration, session file, tunnel, intake and
//! outbox; all share one task capacity and one shutdown.

pub mod config;
pub mod supervisor;

use std::path::Path;
use std::sync::Arc;

use agentserver_workspace::{WorkspaceError, WorktreeConfig, Worktrees};

/// The files the host writes into a work directory that task worktrees need too and must
/// never commit (Claude Code's `.mcp.json`, which holds the tunnel token).
pub const HOST_FILES: [&str; 1] = [".mcp.json"];

/// Whether [`open_worktrees`] would accept `repo` and `base` (a git repository, the base
/// outside it), checked before a sandbox is registered: nothing is created.
pub fn check_worktrees(repo: &Path, base: &Path) -> Result<(), WorkspaceError> {
    Worktrees::check(&WorktreeConfig::new(repo, base))
}

/// The task worktrees of a sandbox working on the git repository at `repo`: under `base`,
/// leftovers capped at `disk_cap_bytes`, branches `agentserver/<task id>`.
pub fn open_worktrees(
    repo: &Path,
    base: &Path,
    disk_cap_bytes: u64,
) -> Result<Arc<Worktrees>, WorkspaceError> {
    let mut config = WorktreeConfig::new(repo, base);
    config.disk_cap_bytes = Some(disk_cap_bytes);
    config.host_files = HOST_FILES.iter().map(Into::into).collect();
    Worktrees::open(config).map(Arc::new)
}
