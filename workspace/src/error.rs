//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkspaceError {
    /// The `git` executable could not be started.
    #[error("git is not installed (or not on PATH): install git, or set isolation = \"none\"")]
    GitNotInstalled,
    /// The configured repository is not inside a git work tree.
    #[error(
        "{path} is not a git work tree: run `git init` there and make a first commit, or set isolation = \"none\""
    )]
    NotAGitRepo {
        /// The directory that was checked.
        path: PathBuf,
    },
    /// The repository has no commit yet, so there is no HEAD to branch from.
    #[error(
        "the repository {repo} has no commit yet: make a first commit so tasks can branch from HEAD"
    )]
    NoCommits {
        /// The repository's top level.
        repo: PathBuf,
    },
    /// The base directory is the repository or lies inside its work tree.
    #[error(
        "base dir inside the repository: {base_dir} is inside {repo}; choose a base directory outside the checkout (e.g. ~/.agentserver/worktrees)"
    )]
    BaseDirInsideRepo {
        /// The base directory (absolute).
        base_dir: PathBuf,
        /// The repository's top level.
        repo: PathBuf,
    },
    /// The repository lies inside the base directory (the disk cap would count and touch it).
    #[error(
        "the repository {repo} is inside the base dir {base_dir}; choose a base directory that does not contain the checkout"
    )]
    RepoInsideBaseDir {
        /// The base directory (absolute).
        base_dir: PathBuf,
        /// The repository's top level.
        repo: PathBuf,
    },
    /// A task id that cannot name anything (empty).
    #[error("invalid task id {task_id:?}: a task id must not be empty")]
    InvalidTaskId {
        /// The task id given.
        task_id: String,
    },
    /// The workspace path is in use by a task that is still running in this process.
    #[error(
        "{path} is in use by task {running_task} (session {session_key:?}); wait for it to finish before starting another task there"
    )]
    Busy {
        /// The workspace path.
        path: PathBuf,
        /// The task running there.
        running_task: String,
        /// The session key, if the path belongs to a session.
        session_key: Option<String>,
    },
    /// Something that is not one of our worktrees occupies the workspace path.
    #[error(
        "{path} exists but is not a worktree this host made: move it away (it may hold someone's files) and retry"
    )]
    PathOccupied {
        /// The occupied path.
        path: PathBuf,
    },
    /// A task's directory is no longer a worktree of the repository (its `.git` file was deleted
    /// or replaced); nothing is committed and the directory is kept.
    #[error(
        "{path} is no longer a worktree of the repository (its .git file was deleted or replaced): copy its files out by hand"
    )]
    NotAWorktree {
        /// The directory.
        path: PathBuf,
    },
    /// A git command failed.
    #[error("`git {args}` in {dir} failed ({status}): {stderr}")]
    Git {
        /// The arguments (after the host's own `-C`/`-c` options).
        args: String,
        /// The directory it ran in (`-C`).
        dir: PathBuf,
        /// The exit status, as text.
        status: String,
        /// The end of its standard error (bounded).
        stderr: String,
    },
    /// Committing a task's leftovers failed: the directory is kept so nothing is lost.
    #[error(
        "commit failed; the work is left in {dir} (branch {branch}): commit it by hand or fix the cause and call recover: {source}"
    )]
    CommitFailed {
        /// The worktree directory, kept.
        dir: PathBuf,
        /// The task's branch.
        branch: String,
        /// Why the commit failed.
        #[source]
        source: Box<WorkspaceError>,
    },
    /// A file-system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("create base dir", "write index", …).
        what: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The index file in the base directory cannot be read.
    #[error(
        "the worktree index {path} is unreadable ({detail}): move it away; worktrees under the base dir are then kept until removed by hand"
    )]
    Index {
        /// The index file.
        path: PathBuf,
        /// The parse error.
        detail: String,
    },
}

impl WorkspaceError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WorkspaceError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
