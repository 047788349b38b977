//! `Worktrees`: prepare, finish and recover task worktrees of one repository.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::git::{self, args};
use crate::index::{Entry, Index, Session};
use crate::{WorkspaceError, names};

/// The branch prefix when the configuration leaves it empty: branches are `agentserver/<task>`.
pub const DEFAULT_BRANCH_PREFIX: &str = "agentserver";

/// Where the worktrees of one repository live and how they are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorktreeConfig {
    /// The repository (any directory inside its work tree; its top level is used).
    pub repo: PathBuf,
    /// The directory that holds the worktrees and the index; must be outside the repository.
    pub base_dir: PathBuf,
    /// The most bytes the base directory may hold after [`Worktrees::recover`]; `None`: no cap.
    pub disk_cap_bytes: Option<u64>,
    /// The branch prefix (`<prefix>/<task id>`); empty means [`DEFAULT_BRANCH_PREFIX`].
    pub branch_prefix: String,
    /// Files the host keeps in the repository's top level that the repository does not track
    /// (the `.mcp.json` it writes for Claude Code): copied into every new worktree that lacks
    /// them, and deleted from it before its work is committed, so they never reach a branch.
    pub host_files: Vec<PathBuf>,
}

impl WorktreeConfig {
    /// A configuration with no disk cap and the default branch prefix.
    pub fn new(repo: impl Into<PathBuf>, base_dir: impl Into<PathBuf>) -> Self {
        WorktreeConfig {
            repo: repo.into(),
            base_dir: base_dir.into(),
            disk_cap_bytes: None,
            branch_prefix: DEFAULT_BRANCH_PREFIX.to_string(),
            host_files: Vec::new(),
        }
    }
}

/// One task's worktree, from [`Worktrees::prepare`] until it is handed to [`Worktrees::finish`].
///
/// Dropping it without `finish` leaves the worktree in place, as a host killed mid-task would:
/// [`Worktrees::recover`] at the next start deals with it, and in this process its path stays
/// reserved ([`WorkspaceError::Busy`]).
#[derive(Debug)]
pub struct TaskWorkspace {
    task_id: String,
    session_key: Option<String>,
    path: PathBuf,
    branch: String,
    base_commit: String,
    dir_name: String,
}

impl TaskWorkspace {
    /// The directory the task runs in (its working directory).
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The task's branch (`<prefix>/<task id>`, with a `-N` suffix if that name was taken).
    pub fn branch(&self) -> &str {
        &self.branch
    }
    /// The task id it was prepared for.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }
    /// The session key it was prepared for, if any.
    pub fn session_key(&self) -> Option<&str> {
        self.session_key.as_deref()
    }
    /// The commit the branch started from (`HEAD`, or the session's previous branch tip).
    pub fn base_commit(&self) -> &str {
        &self.base_commit
    }
}

/// A finished task's worktree: its work is on `branch`, its directory is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The task id.
    pub task_id: String,
    /// The branch that holds the task's work (the task's branch, or the one the agent switched
    /// to; `<branch>-detached-<commit>` when the agent left `HEAD` detached).
    pub branch: String,
    /// The branch's tip after the leftovers were committed.
    pub head_commit: String,
    /// Whether there were uncommitted changes that the host committed.
    pub committed_changes: bool,
    /// The directory that was removed.
    pub path: PathBuf,
}

/// A worktree left in place by [`Worktrees::recover`] (or removed for the disk cap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptWorktree {
    /// The task it belongs to; `None` for a worktree under the base directory the index does not
    /// know (never removed automatically).
    pub task_id: Option<String>,
    /// Its directory.
    pub path: PathBuf,
    /// The branch checked out there, if `HEAD` is not detached.
    pub branch: Option<String>,
    /// Whether it holds work that is on no branch: uncommitted or untracked files, or a detached
    /// `HEAD`.
    pub dirty: bool,
    /// Bytes on disk.
    pub bytes: u64,
}

/// A worktree [`Worktrees::recover`] could not finish; its directory is kept.
#[derive(Debug)]
pub struct RecoveryFailure {
    /// The task it belongs to.
    pub task_id: String,
    /// Its directory.
    pub path: PathBuf,
    /// What went wrong.
    pub error: WorkspaceError,
}

/// What [`Worktrees::recover`] did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Worktrees of finished tasks: leftovers committed, directory removed.
    pub finished: Vec<Finished>,
    /// Worktrees kept (unfinished tasks, unknown worktrees), oldest first.
    pub kept: Vec<KeptWorktree>,
    /// Clean worktrees removed to get under the disk cap, oldest first.
    pub removed_for_cap: Vec<KeptWorktree>,
    /// Finished tasks whose leftovers could not be committed (directories kept).
    pub failed: Vec<RecoveryFailure>,
    /// Entries of the base directory that are neither worktrees nor the index (never touched).
    pub strays: Vec<PathBuf>,
    /// Bytes under the base directory at the end.
    pub disk_usage_bytes: u64,
    /// Whether the cap is still exceeded at the end (only dirty, unknown or stray entries left).
    pub cap_exceeded: bool,
}

/// Whether `path` is inside a git work tree (the host's "concurrency above 1 on a non-git
/// directory" check). False when git is not installed.
pub fn is_git_work_tree(path: &Path) -> bool {
    match git::output(path, args!["rev-parse", "--is-inside-work-tree"]) {
        Ok(out) => out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "true",
        Err(_) => false,
    }
}

#[derive(Debug, Default)]
struct State {
    index: Index,
    /// Worktree directory name → the task running there, in this process.
    active: HashMap<String, String>,
}

/// The task worktrees of one repository under one base directory. `Sync`: prepare and finish
/// from several threads at once.
pub struct Worktrees {
    repo: PathBuf,
    base_dir: PathBuf,
    disk_cap_bytes: Option<u64>,
    prefix: String,
    host_files: Vec<PathBuf>,
    /// The repository's common git directory (absolute), to recognise its worktrees.
    common_dir: PathBuf,
    state: Mutex<State>,
    /// Held around every git command that reads or writes the repository's worktree admin files
    /// or refs (`worktree add/remove/prune/list`, `branch`): concurrent `git worktree` commands
    /// in one repository race (one reads another's half-made `.git/worktrees/<id>` and dies with
    /// "failed to read …/commondir"; a prune can delete an entry being made).
    admin: Mutex<()>,
}

impl fmt::Debug for Worktrees {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let active = self.state.lock().map(|s| s.active.len()).unwrap_or(0);
        f.debug_struct("Worktrees")
            .field("repo", &self.repo)
            .field("base_dir", &self.base_dir)
            .field("disk_cap_bytes", &self.disk_cap_bytes)
            .field("prefix", &self.prefix)
            .field("active", &active)
            .finish()
    }
}

/// One entry of `git worktree list --porcelain -z`.
#[derive(Debug, Default)]
struct Listed {
    path: PathBuf,
    branch: Option<String>,
    detached: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `p` made absolute and free of symlinks as far as it exists (the rest appended lexically).
fn absolutize(p: &Path) -> Result<PathBuf, WorkspaceError> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| WorkspaceError::io("read the current directory for", p, e))?
            .join(p)
    };
    let mut existing = abs.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for c in rest.iter().rev() {
                out.push(c);
            }
            return Ok(out);
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => return Ok(abs),
        }
    }
}

/// Bytes on disk under `path` (allocated blocks; symlinks not followed).
fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = fs::read_dir(path)
    {
        for entry in entries.flatten() {
            total += disk_usage(&entry.path());
        }
    }
    total
}

impl Worktrees {
    /// Checks the repository and the base directory, creates the base directory (0700; an existing
    /// one keeps its mode, with a warning when others can read it) and reads
    /// its index. Errors: [`WorkspaceError::GitNotInstalled`], [`WorkspaceError::NotAGitRepo`],
    /// [`WorkspaceError::BaseDirInsideRepo`], [`WorkspaceError::RepoInsideBaseDir`].
    pub fn open(config: WorktreeConfig) -> Result<Worktrees, WorkspaceError> {
        let (repo, base_dir) = Self::resolve(&config)?;
        Self::open_resolved(&config, repo, base_dir)
    }

    /// The checks of [`Worktrees::open`] without creating or reading anything: whether `open`
    /// would accept this repository and base directory (so a caller can refuse before it
    /// commits to anything, such as registering a sandbox).
    pub fn check(config: &WorktreeConfig) -> Result<(), WorkspaceError> {
        Self::resolve(config).map(|_| ())
    }

    /// The repository's top level and the absolute base directory, checked.
    fn resolve(config: &WorktreeConfig) -> Result<(PathBuf, PathBuf), WorkspaceError> {
        let not_repo = || WorkspaceError::NotAGitRepo {
            path: config.repo.clone(),
        };
        if !config.repo.is_dir() {
            return Err(not_repo());
        }
        let out = git::output(
            &config.repo,
            args!["rev-parse", "--is-inside-work-tree", "--show-toplevel"],
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = stdout.lines();
        if !out.status.success() || lines.next() != Some("true") {
            return Err(not_repo());
        }
        let top = lines.next().ok_or_else(not_repo)?;
        let repo = Path::new(top)
            .canonicalize()
            .map_err(|e| WorkspaceError::io("resolve repository", top, e))?;

        let base_dir = absolutize(&config.base_dir)?;
        if base_dir.starts_with(&repo) {
            return Err(WorkspaceError::BaseDirInsideRepo { base_dir, repo });
        }
        if repo.starts_with(&base_dir) {
            return Err(WorkspaceError::RepoInsideBaseDir { base_dir, repo });
        }
        Ok((repo, base_dir))
    }

    fn open_resolved(
        config: &WorktreeConfig,
        repo: PathBuf,
        base_dir: PathBuf,
    ) -> Result<Worktrees, WorkspaceError> {
        if !base_dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&base_dir)
                .map_err(|e| WorkspaceError::io("create base dir", &base_dir, e))?;
            // Whatever the umask did.
            fs::set_permissions(&base_dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| WorkspaceError::io("make private", &base_dir, e))?;
        } else if let Ok(meta) = fs::metadata(&base_dir)
            && meta.mode() & 0o077 != 0
        {
            // An existing directory keeps its mode (it may be shared, like /tmp).
            tracing::warn!(base_dir = %base_dir.display(), mode = format!("{:o}", meta.mode() & 0o777),
                "the worktree base dir is readable by others; make it 0700 or choose another");
        }
        let base_dir = base_dir
            .canonicalize()
            .map_err(|e| WorkspaceError::io("resolve base dir", &base_dir, e))?;
        let index = Index::load(&base_dir)?;
        let common_dir = git_common_dir(&repo)?;
        let prefix = match names::prefix(&config.branch_prefix) {
            p if p.is_empty() => DEFAULT_BRANCH_PREFIX.to_string(),
            p => p,
        };
        tracing::debug!(repo = %repo.display(), base_dir = %base_dir.display(), "worktrees opened");
        Ok(Worktrees {
            repo,
            base_dir,
            disk_cap_bytes: config.disk_cap_bytes,
            prefix,
            host_files: config.host_files.clone(),
            common_dir,
            state: Mutex::new(State {
                index,
                active: HashMap::new(),
            }),
            admin: Mutex::new(()),
        })
    }

    /// The repository's top level.
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// The base directory (absolute, resolved).
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// Bytes on disk under the base directory now.
    pub fn disk_usage(&self) -> u64 {
        disk_usage(&self.base_dir)
    }

    /// Runs git in the repository under the admin lock.
    fn admin_git(&self, args: &[&OsStr]) -> Result<std::process::Output, WorkspaceError> {
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        git::run(&self.repo, args)
    }

    /// `git worktree add --no-checkout` under the admin lock (fast: admin files and `HEAD`), then
    /// the checkout (`git reset --hard`, the slow part) outside it, in the new worktree alone.
    fn add_worktree(&self, path: &Path, branch: &str) -> Result<(), WorkspaceError> {
        self.admin_git(args![
            "worktree",
            "add",
            "-q",
            "--no-checkout",
            path,
            branch
        ])?;
        if let Err(e) = git::run(path, args!["reset", "--hard", "-q"]) {
            let _ = self.remove_worktree(path);
            return Err(e);
        }
        for file in &self.host_files {
            let (from, to) = (self.repo.join(file), path.join(file));
            if from.is_file()
                && fs::symlink_metadata(&to).is_err()
                && let Err(e) = fs::copy(&from, &to)
            {
                tracing::warn!(file = %from.display(), error = %e, "cannot copy a host file into the task's worktree");
            }
        }
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the index as consistent as the file: go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new worktree for `task_id` on a new branch. Without a session key: at
    /// `<base>/t-<task id>`, from the repository's current `HEAD`. With one: at
    /// `<base>/s-<session key>` (the same path for every task of the session), from the tip of the
    /// session's previous task branch (`HEAD` for a new session). A leftover worktree of an
    /// earlier process at that path is finished first (its changes committed to its branch).
    /// Errors: [`WorkspaceError::Busy`] when a task of the same session (or the same task) is
    /// running in this process, [`WorkspaceError::PathOccupied`], [`WorkspaceError::NoCommits`].
    pub fn prepare(
        &self,
        task_id: &str,
        session_key: Option<&str>,
    ) -> Result<TaskWorkspace, WorkspaceError> {
        if task_id.is_empty() {
            return Err(WorkspaceError::InvalidTaskId {
                task_id: task_id.to_string(),
            });
        }
        let dir_name = match session_key {
            Some(key) => names::session_dir(key),
            None => names::task_dir(task_id),
        };
        let path = self.base_dir.join(&dir_name);
        {
            let mut state = self.state();
            if let Some(running) = state.active.get(&dir_name) {
                return Err(WorkspaceError::Busy {
                    path,
                    running_task: running.clone(),
                    session_key: session_key.map(str::to_string),
                });
            }
            state.active.insert(dir_name.clone(), task_id.to_string());
        }
        let result = self.prepare_reserved(task_id, session_key, &dir_name, &path);
        if result.is_err() {
            self.state().active.remove(&dir_name);
        }
        result
    }

    fn prepare_reserved(
        &self,
        task_id: &str,
        session_key: Option<&str>,
        dir_name: &str,
        path: &Path,
    ) -> Result<TaskWorkspace, WorkspaceError> {
        if fs::symlink_metadata(path).is_ok() {
            self.clear_leftover(dir_name, path)?;
        }
        let previous = session_key.and_then(|k| self.state().index.sessions.get(k).cloned());
        let start = match &previous {
            Some(s) => match self.commit_of(&format!("refs/heads/{}", s.last_branch)) {
                Some(c) => c,
                None => {
                    tracing::warn!(branch = %s.last_branch, "the session's previous branch is gone; starting from HEAD");
                    self.head()?
                }
            },
            None => self.head()?,
        };
        let branch = self.create_branch(task_id, &start)?;

        // Index first: a host killed between here and the worktree's creation leaves an entry
        // without a worktree (dropped by recover), never a worktree nobody knows.
        {
            let mut state = self.state();
            let seq = state.index.next_seq;
            state.index.next_seq += 1;
            state.index.worktrees.insert(
                dir_name.to_string(),
                Entry {
                    task_id: task_id.to_string(),
                    session_key: session_key.map(str::to_string),
                    branch: branch.clone(),
                    base_commit: start.clone(),
                    created_unix_ms: now_ms(),
                    seq,
                    ready: false,
                },
            );
            if let Some(key) = session_key {
                state.index.sessions.insert(
                    key.to_string(),
                    Session {
                        last_branch: branch.clone(),
                        dir: dir_name.to_string(),
                    },
                );
            }
            if let Err(e) = state.index.save(&self.base_dir) {
                self.undo_prepare(&mut state, dir_name, session_key, previous, &branch);
                return Err(e);
            }
        }
        let added = self.add_worktree(path, &branch).and_then(|()| {
            let mut state = self.state();
            if let Some(e) = state.index.worktrees.get_mut(dir_name) {
                e.ready = true;
            }
            state.index.save(&self.base_dir).inspect_err(|_| {
                let _ = self.remove_worktree(path);
            })
        });
        if let Err(e) = added {
            let mut state = self.state();
            self.undo_prepare(&mut state, dir_name, session_key, previous, &branch);
            let _ = state.index.save(&self.base_dir);
            return Err(e);
        }
        tracing::info!(task_id, branch = %branch, path = %path.display(), "task worktree prepared");
        Ok(TaskWorkspace {
            task_id: task_id.to_string(),
            session_key: session_key.map(str::to_string),
            path: path.to_path_buf(),
            branch,
            base_commit: start,
            dir_name: dir_name.to_string(),
        })
    }

    fn undo_prepare(
        &self,
        state: &mut State,
        dir_name: &str,
        session_key: Option<&str>,
        previous: Option<Session>,
        branch: &str,
    ) {
        state.index.worktrees.remove(dir_name);
        if let Some(key) = session_key {
            match previous {
                Some(p) => state.index.sessions.insert(key.to_string(), p),
                None => state.index.sessions.remove(key),
            };
        }
        // The branch has no work on it yet.
        let _ = self.admin_git(args!["branch", "-D", branch]);
    }

    /// Something exists at a task's path: finish our own leftover there, remove an empty
    /// directory, refuse anything else.
    fn clear_leftover(&self, dir_name: &str, path: &Path) -> Result<(), WorkspaceError> {
        let entry = self.state().index.worktrees.get(dir_name).cloned();
        let registered = self.list()?.iter().any(|l| l.path == path);
        match entry {
            Some(e) if registered => {
                tracing::info!(task_id = %e.task_id, path = %path.display(),
                    "finishing the leftover worktree of an earlier task at this path");
                self.finish_at(
                    &e.task_id,
                    path,
                    &e.branch,
                    dir_name,
                    e.session_key.as_deref(),
                    e.ready,
                )?;
                Ok(())
            }
            _ if !registered && fs::read_dir(path).is_ok_and(|mut d| d.next().is_none()) => {
                fs::remove_dir(path).map_err(|e| WorkspaceError::io("remove empty", path, e))
            }
            _ => Err(WorkspaceError::PathOccupied {
                path: path.to_path_buf(),
            }),
        }
    }

    fn head(&self) -> Result<String, WorkspaceError> {
        self.commit_of("HEAD")
            .ok_or_else(|| WorkspaceError::NoCommits {
                repo: self.repo.clone(),
            })
    }

    /// The commit `rev` names in the repository, if any.
    fn commit_of(&self, rev: &str) -> Option<String> {
        let spec = format!("{rev}^{{commit}}");
        let out = git::output(&self.repo, args!["rev-parse", "--verify", "-q", &spec]).ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Creates the task's branch at `start`: `<prefix>/<task>`, or with `-2`, `-3`, … when taken.
    fn create_branch(&self, task_id: &str, start: &str) -> Result<String, WorkspaceError> {
        let mut base = names::branch(&self.prefix, task_id);
        let refname = format!("refs/heads/{base}");
        let valid = git::output(&self.repo, args!["check-ref-format", &refname])?;
        if !valid.status.success() {
            base = names::branch(
                DEFAULT_BRANCH_PREFIX,
                &format!("task-{}", names::sanitize(task_id)),
            );
        }
        for n in 1..=100u32 {
            let name = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            match self.admin_git(args!["branch", "--no-track", &name, start]) {
                Ok(_) => return Ok(name),
                Err(WorkspaceError::Git { stderr, .. }) if stderr.contains("already exists") => {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(WorkspaceError::Git {
            args: format!("branch {base}-N"),
            dir: self.repo.clone(),
            status: "not run".into(),
            stderr: "100 branches of this name exist already; delete old task branches".into(),
        })
    }

    /// Commits the task's leftovers to its branch and removes the directory; the branch stays.
    /// When the commit fails the directory is kept: [`WorkspaceError::CommitFailed`] names it.
    pub fn finish(&self, ws: TaskWorkspace) -> Result<Finished, WorkspaceError> {
        let result = self.finish_at(
            &ws.task_id,
            &ws.path,
            &ws.branch,
            &ws.dir_name,
            ws.session_key.as_deref(),
            true,
        );
        let mut state = self.state();
        if state.active.get(&ws.dir_name) == Some(&ws.task_id) {
            state.active.remove(&ws.dir_name);
        }
        result
    }

    fn finish_at(
        &self,
        task_id: &str,
        path: &Path,
        branch: &str,
        dir_name: &str,
        session_key: Option<&str>,
        ready: bool,
    ) -> Result<Finished, WorkspaceError> {
        let commit_failed = |source| WorkspaceError::CommitFailed {
            dir: path.to_path_buf(),
            branch: branch.to_string(),
            source: Box::new(source),
        };
        let (committed_changes, head_commit, final_branch) = if !ready {
            // A prepare cut short (host killed during the checkout): no task ran there, and a
            // partial checkout must not be committed.
            tracing::warn!(task_id, path = %path.display(), "removing a worktree whose checkout never completed");
            let head = self
                .commit_of(&format!("refs/heads/{branch}"))
                .unwrap_or_default();
            (false, head, branch.to_string())
        } else if path.is_dir() {
            self.check_worktree(path).map_err(commit_failed)?;
            let committed = commit_all(path, task_id, &self.host_files).map_err(commit_failed)?;
            let head = git::text(path, args!["rev-parse", "HEAD"]).map_err(commit_failed)?;
            let on = git::output(path, args!["symbolic-ref", "-q", "--short", "HEAD"])
                .map_err(commit_failed)?;
            let on = String::from_utf8_lossy(&on.stdout).trim().to_string();
            let final_branch = if on.is_empty() {
                // Detached: give the work a branch before the directory goes.
                let name = format!("{branch}-detached-{}", &head[..head.len().min(12)]);
                if self.commit_of(&format!("refs/heads/{name}")).is_none() {
                    self.admin_git(args!["branch", "--no-track", &name, &head])
                        .map_err(commit_failed)?;
                }
                name
            } else {
                on
            };
            (committed, head, final_branch)
        } else {
            // The directory vanished (deleted by hand): what is on the branch is all there is.
            tracing::warn!(task_id, path = %path.display(), "task worktree directory is gone");
            let head = self
                .commit_of(&format!("refs/heads/{branch}"))
                .unwrap_or_default();
            (false, head, branch.to_string())
        };
        self.remove_worktree(path)?;
        {
            let mut state = self.state();
            if state
                .index
                .worktrees
                .get(dir_name)
                .is_some_and(|e| e.task_id == task_id)
            {
                state.index.worktrees.remove(dir_name);
            }
            if let Some(key) = session_key
                && let Some(s) = state.index.sessions.get_mut(key)
                && s.last_branch == branch
            {
                s.last_branch = final_branch.clone();
            }
            state.index.save(&self.base_dir)?;
        }
        tracing::info!(task_id, branch = %final_branch, head = %head_commit, committed_changes,
            "task worktree finished and removed");
        Ok(Finished {
            task_id: task_id.to_string(),
            branch: final_branch,
            head_commit,
            committed_changes,
            path: path.to_path_buf(),
        })
    }

    /// That `path` is still a worktree of this repository at its own top level: if the agent
    /// deleted its `.git` file (git would then find a repository *above* the base directory) or
    /// ran `git init` there, nothing is committed anywhere.
    fn check_worktree(&self, path: &Path) -> Result<(), WorkspaceError> {
        let out = git::output(
            path,
            args![
                "rev-parse",
                "--path-format=absolute",
                "--show-toplevel",
                "--git-common-dir"
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().map(|l| {
            let p = PathBuf::from(l);
            p.canonicalize().unwrap_or(p)
        });
        let ok = out.status.success()
            && lines.next().as_deref() == Some(path)
            && lines.next().as_deref() == Some(self.common_dir.as_path());
        if ok {
            Ok(())
        } else {
            Err(WorkspaceError::NotAWorktree {
                path: path.to_path_buf(),
            })
        }
    }

    /// `git worktree remove --force`, falling back to deleting the directory; then prune.
    fn remove_worktree(&self, path: &Path) -> Result<(), WorkspaceError> {
        if path.exists()
            && let Err(e) = self.admin_git(args!["worktree", "remove", "--force", path])
        {
            tracing::warn!(path = %path.display(), error = %e, "git worktree remove failed; deleting the directory");
            match fs::remove_dir_all(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(WorkspaceError::io("remove worktree", path, e)),
            }
        }
        self.prune()
    }

    /// `git worktree prune`: drops the repository's admin entries of worktree directories that
    /// no longer exist (deleted by hand).
    pub fn prune(&self) -> Result<(), WorkspaceError> {
        self.admin_git(args!["worktree", "prune"]).map(drop)
    }

    /// The repository's worktrees (`git worktree list --porcelain -z`), main one included.
    fn list(&self) -> Result<Vec<Listed>, WorkspaceError> {
        let out = self.admin_git(args!["worktree", "list", "--porcelain", "-z"])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut all = Vec::new();
        let mut cur: Option<Listed> = None;
        for field in text.split('\0') {
            if field.is_empty() {
                all.extend(cur.take());
            } else if let Some(p) = field.strip_prefix("worktree ") {
                all.extend(cur.take());
                let p = PathBuf::from(p);
                let path = p.canonicalize().unwrap_or(p);
                cur = Some(Listed {
                    path,
                    ..Listed::default()
                });
            } else if let Some(c) = cur.as_mut() {
                if let Some(b) = field.strip_prefix("branch ") {
                    c.branch = Some(b.strip_prefix("refs/heads/").unwrap_or(b).to_string());
                } else if field == "detached" {
                    c.detached = true;
                }
            }
        }
        all.extend(cur);
        Ok(all)
    }

    /// At host start: finishes the worktrees of tasks `is_finished` says have a final status
    /// (leftovers committed to their branch, directory removed), keeps the others, drops index
    /// entries of worktrees that are gone, prunes stale admin entries, then enforces the disk cap
    /// by removing the oldest clean worktrees (never a dirty one or one the index does not know).
    pub fn recover(&self, is_finished: impl Fn(&str) -> bool) -> Result<Recovery, WorkspaceError> {
        self.prune()?;
        let listed: Vec<Listed> = self
            .list()?
            .into_iter()
            .filter(|l| l.path.starts_with(&self.base_dir) && l.path != self.base_dir)
            .collect();
        let mut recovery = Recovery::default();
        let (index, active) = {
            let s = self.state();
            (s.index.clone(), s.active.clone())
        };

        let mut kept: Vec<(u64, u64, KeptWorktree)> = Vec::new();
        for l in &listed {
            let dir_name = l.path.strip_prefix(&self.base_dir).ok().and_then(|r| {
                match r.components().collect::<Vec<_>>()[..] {
                    [Component::Normal(n)] => n.to_str().map(str::to_string),
                    _ => None,
                }
            });
            let entry = dir_name.as_ref().and_then(|d| index.worktrees.get(d));
            let in_use = dir_name.as_ref().is_some_and(|d| active.contains_key(d));
            match (entry, dir_name.as_deref()) {
                (Some(e), Some(d)) if !in_use && is_finished(&e.task_id) => {
                    remove_stale_index_lock(&l.path);
                    match self.finish_at(
                        &e.task_id,
                        &l.path,
                        &e.branch,
                        d,
                        e.session_key.as_deref(),
                        e.ready,
                    ) {
                        Ok(f) => recovery.finished.push(f),
                        Err(error) => {
                            tracing::error!(task_id = %e.task_id, %error, "recovering a finished task's worktree failed");
                            recovery.failed.push(RecoveryFailure {
                                task_id: e.task_id.clone(),
                                path: l.path.clone(),
                                error,
                            });
                        }
                    }
                }
                _ => {
                    let k = KeptWorktree {
                        task_id: entry.map(|e| e.task_id.clone()),
                        path: l.path.clone(),
                        branch: l.branch.clone(),
                        dirty: l.detached || is_dirty(&l.path),
                        bytes: disk_usage(&l.path),
                    };
                    let (t, seq) =
                        entry.map_or((u64::MAX, u64::MAX), |e| (e.created_unix_ms, e.seq));
                    // In use here or unknown to the index: never a cap candidate.
                    let candidate = entry.is_some() && !in_use;
                    kept.push((t, if candidate { seq } else { u64::MAX }, k));
                }
            }
        }
        kept.sort_by_key(|(t, seq, _)| (*t, *seq));

        // Index entries whose worktree is gone (deleted by hand, or a prepare cut short).
        {
            let mut state = self.state();
            let present: Vec<String> = listed
                .iter()
                .filter_map(|l| {
                    l.path
                        .file_name()
                        .and_then(OsStr::to_str)
                        .map(str::to_string)
                })
                .collect();
            let before = state.index.worktrees.len();
            let active = state.active.clone();
            state
                .index
                .worktrees
                .retain(|d, _| present.contains(d) || active.contains_key(d));
            if state.index.worktrees.len() != before {
                state.index.save(&self.base_dir)?;
            }
        }

        if let Ok(entries) = fs::read_dir(&self.base_dir) {
            for entry in entries.flatten() {
                let p = entry.path();
                let name = entry.file_name();
                let is_index = name.to_str().is_some_and(Index::is_index_file);
                if !is_index && !listed.iter().any(|l| l.path == p) {
                    recovery.strays.push(p);
                }
            }
        }

        let mut usage = disk_usage(&self.base_dir);
        if let Some(cap) = self.disk_cap_bytes {
            let mut remaining = Vec::new();
            for (t, seq, k) in kept {
                if usage > cap && !k.dirty && seq != u64::MAX && t != u64::MAX {
                    let dir_name = k
                        .path
                        .file_name()
                        .and_then(OsStr::to_str)
                        .unwrap_or_default()
                        .to_string();
                    match self.remove_worktree(&k.path) {
                        Ok(()) => {
                            tracing::info!(path = %k.path.display(), bytes = k.bytes, "clean worktree removed for the disk cap");
                            usage = usage.saturating_sub(k.bytes);
                            let mut state = self.state();
                            state.index.worktrees.remove(&dir_name);
                            state.index.save(&self.base_dir)?;
                            recovery.removed_for_cap.push(k);
                        }
                        Err(e) => {
                            tracing::warn!(path = %k.path.display(), error = %e, "removing a worktree for the disk cap failed");
                            remaining.push(k);
                        }
                    }
                } else {
                    remaining.push(k);
                }
            }
            recovery.kept = remaining;
            usage = disk_usage(&self.base_dir);
            recovery.cap_exceeded = usage > cap;
            if recovery.cap_exceeded {
                tracing::warn!(
                    usage,
                    cap,
                    "worktree disk cap still exceeded: only worktrees with unreported work are left"
                );
            }
        } else {
            recovery.kept = kept.into_iter().map(|(_, _, k)| k).collect();
        }
        recovery.disk_usage_bytes = usage;
        Ok(recovery)
    }
}

/// A worktree's `index.lock` older than this, found at recover, is taken as left by a git
/// killed with the host (git holds it for the length of one command).
const STALE_LOCK: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the worktree's own `index.lock` when it is older than [`STALE_LOCK`] (an agent's git
/// killed mid-commit), so the leftovers can be committed.
fn remove_stale_index_lock(path: &Path) {
    let Ok(gitdir) = git::text(path, args!["rev-parse", "--absolute-git-dir"]) else {
        return;
    };
    let lock = Path::new(&gitdir).join("index.lock");
    let age = fs::metadata(&lock)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok());
    if age.is_some_and(|a| a > STALE_LOCK) {
        tracing::warn!(lock = %lock.display(), "removing a stale index.lock left by a killed git");
        let _ = fs::remove_file(&lock);
    }
}

/// The repository's common git directory, absolute and resolved.
fn git_common_dir(repo: &Path) -> Result<PathBuf, WorkspaceError> {
    let dir = git::text(
        repo,
        args!["rev-parse", "--path-format=absolute", "--git-common-dir"],
    )?;
    Path::new(&dir)
        .canonicalize()
        .map_err(|e| WorkspaceError::io("resolve the git directory", dir, e))
}

/// Stages everything (tracked, untracked, deleted) and commits it, hooks skipped; whether there
/// was anything to commit.
fn commit_all(path: &Path, task_id: &str, host_files: &[PathBuf]) -> Result<bool, WorkspaceError> {
    for file in host_files {
        // The host's copy (untracked in the repository) is not the task's work.
        let tracked = git::output(path, args!["ls-files", "--error-unmatch", "--", file])
            .is_ok_and(|out| out.status.success());
        if !tracked {
            let _ = fs::remove_file(path.join(file));
        }
    }
    git::run(path, args!["add", "-A"])?;
    let diff_args = args!["diff", "--cached", "--quiet"];
    let out = git::output(path, diff_args)?;
    match out.status.code() {
        Some(0) => return Ok(false),
        Some(1) => {}
        _ => return Err(git::error(path, diff_args, &out)),
    }
    let message = format!(
        "agentserver: uncommitted work of task {task_id}\n\nCommitted by agentserver when the task ended, so nothing is lost."
    );
    git::run(path, args!["commit", "--no-verify", "-q", "-m", &message])?;
    Ok(true)
}

/// Whether a worktree has uncommitted or untracked files (ignored files do not count). An
/// unreadable one counts as dirty.
fn is_dirty(path: &Path) -> bool {
    match git::output(
        path,
        args!["status", "--porcelain", "-z", "--untracked-files=all"],
    ) {
        Ok(out) => !out.status.success() || !out.stdout.is_empty(),
        Err(_) => true,
    }
}
