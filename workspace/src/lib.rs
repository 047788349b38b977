//! A git worktree per task (issue 18, point 2).
//!
//! The host runs each task of a sandbox whose work directory is a git repository in a worktree
//! of its own, so concurrent agents never edit the same checkout. The lifecycle:
//!
//! 1. [`Worktrees::open`] once per sandbox: checks the repository (resolved to its top level),
//!    refuses a base directory inside it, creates the base directory (0700) and reads the small
//!    JSON index kept there.
//! 2. [`Worktrees::recover`] once at host start, before any task: worktrees of tasks that already
//!    have a final status get their leftovers committed to their branch and are removed; the
//!    others are kept and reported; then the disk cap removes the oldest *clean* worktrees, never
//!    one with uncommitted work.
//! 3. [`Worktrees::prepare`] per task: a new branch `<prefix>/<task id>` from the repository's
//!    current `HEAD` (or, for a task continuing a session, from the tip of that session's
//!    previous task branch) checked out in `<base>/t-<task id>` (or `<base>/s-<session key>`,
//!    the same path for every task of the session, so an agent's own resume, keyed by its working
//!    directory, finds its history).
//! 4. [`Worktrees::finish`] after the task's final status: every uncommitted change (tracked,
//!    untracked, deleted) is committed to the branch, then the directory is removed and
//!    `git worktree prune` runs; the branch stays and is returned in [`Finished`]. When the
//!    commit fails the directory is kept and the error says where the work is.
//!
//! Everything is synchronous and drives the `git` CLI (`std::process::Command`); an async host
//! calls it through `spawn_blocking`. Why the CLI and not `git2`/`gix`:
//! `docs/decisions/worktrees.md`.
//!
//! On disk, in the base directory: `index.json` (which task each directory belongs to, its
//! branch, when it was made, and per session the last branch), `t-<task>` and `s-<session>`
//! worktree directories (each with a `.git` file pointing into the repository's
//! `.git/worktrees/`). Names are sanitized: characters outside `[A-Za-z0-9._-]` become `_`, and
//! a short hash of the original is appended whenever anything changed.
//!
//! One host process owns a base directory at a time (the index is guarded in-process only).

mod error;
mod git;
mod index;
mod names;
mod worktrees;

pub use error::WorkspaceError;
pub use worktrees::{
    DEFAULT_BRANCH_PREFIX, Finished, KeptWorktree, Recovery, RecoveryFailure, TaskWorkspace,
    WorktreeConfig, Worktrees, is_git_work_tree,
};
