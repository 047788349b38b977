//! The one way this crate runs `git`: `-C <dir>`, no pager, no prompts, a fixed identity for the
//! host's own commits, the caller's `GIT_*` repository overrides removed, stderr captured (bounded)
//! into the error, and a short retry when git reports one of its lock files as taken.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::WorkspaceError;

/// The identity of the commits the host makes itself.
pub(crate) const COMMITTER_NAME: &str = "agentserver";
/// The e-mail of that identity.
pub(crate) const COMMITTER_EMAIL: &str = "agentserver@localhost";

/// How much of a failing command's stderr is kept in the error.
const STDERR_LIMIT: usize = 2000;
/// Attempts for a command that failed on a lock held by a concurrent git.
const LOCK_ATTEMPTS: u32 = 8;

/// Environment variables that would point git at another repository, index or identity.
const SCRUBBED_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_AUTHOR_DATE",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
    "GIT_COMMITTER_DATE",
    "GIT_CEILING_DIRECTORIES",
];

fn command(dir: &Path, args: &[&OsStr]) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("--no-pager")
        .arg("-C")
        .arg(dir)
        .args(["-c", &format!("user.name={COMMITTER_NAME}")])
        .args(["-c", &format!("user.email={COMMITTER_EMAIL}")])
        .args(["-c", "commit.gpgsign=false"])
        .args(["-c", "core.quotepath=off"])
        // The host's own git calls are bookkeeping: none of the user's hooks run for them
        // (docs/decisions/worktrees.md). The agent's own git commands are not run through here.
        .args(["-c", "core.hooksPath=/dev/null"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_PAGER", "cat")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd
}

fn display_args(args: &[&OsStr]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `STDERR_LIMIT` bytes of `bytes`, as text.
fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_LIMIT);
    let text = String::from_utf8_lossy(&bytes[start..]);
    text.trim().to_string()
}

/// Runs git once and returns its output whatever the exit status.
pub(crate) fn output(dir: &Path, args: &[&OsStr]) -> Result<Output, WorkspaceError> {
    tracing::trace!(dir = %dir.display(), args = %display_args(args), "git");
    command(dir, args).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            WorkspaceError::GitNotInstalled
        } else {
            WorkspaceError::io("run git in", dir, e)
        }
    })
}

fn failure(dir: &Path, args: &[&OsStr], out: &Output) -> WorkspaceError {
    WorkspaceError::Git {
        args: display_args(args),
        dir: dir.to_path_buf(),
        status: out.status.to_string(),
        stderr: tail(&out.stderr),
    }
}

/// Whether a failure is git finding one of its lock files taken (a concurrent git in the same
/// repository), which is worth a retry.
fn is_lock_error(stderr: &[u8]) -> bool {
    let s = String::from_utf8_lossy(stderr);
    s.contains(".lock'")
        || s.contains(".lock\"")
        || s.contains("cannot lock ref")
        || s.contains("could not lock")
        || s.contains("Unable to create")
        || s.contains("unable to create") && s.contains("lock")
        // Another process's `git worktree add` half-way through making its admin entry.
        || s.contains("failed to read") && (s.contains("commondir") || s.contains("gitdir"))
}

/// Runs git, retrying with a short backoff while it fails on a lock; an error after that.
pub(crate) fn run(dir: &Path, args: &[&OsStr]) -> Result<Output, WorkspaceError> {
    let mut delay = Duration::from_millis(10);
    for attempt in 1..=LOCK_ATTEMPTS {
        let out = output(dir, args)?;
        if out.status.success() {
            return Ok(out);
        }
        if attempt < LOCK_ATTEMPTS && is_lock_error(&out.stderr) {
            tracing::debug!(dir = %dir.display(), args = %display_args(args), attempt,
                "git found a lock taken; retrying");
            std::thread::sleep(delay + jitter(delay));
            delay = (delay * 2).min(Duration::from_millis(400));
            continue;
        }
        return Err(failure(dir, args, &out));
    }
    unreachable!("the last attempt returns")
}

/// Runs git and returns its trimmed stdout as text.
pub(crate) fn text(dir: &Path, args: &[&OsStr]) -> Result<String, WorkspaceError> {
    let out = run(dir, args)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A failure for a command whose exit status the caller interpreted itself.
pub(crate) fn error(dir: &Path, args: &[&OsStr], out: &Output) -> WorkspaceError {
    failure(dir, args, out)
}

/// Up to half of `d`, from the clock's nanoseconds (no RNG dependency for a backoff).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let half = (d.as_nanos() / 2).max(1) as u64;
    Duration::from_nanos(u64::from(nanos) % half)
}

/// `OsStr` views of string literals, for the argument slices above.
macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(::std::ffi::OsStr::new($a)),*] };
}
pub(crate) use args;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_errors_are_recognised_and_others_are_not() {
        for s in [
            "fatal: Unable to create '/r/.git/index.lock': File exists.",
            "error: could not lock config file .git/config: File exists",
            "error: cannot lock ref 'refs/heads/x': Unable to create '/r/.git/refs/heads/x.lock'",
            "fatal: failed to read .git/worktrees/t-a/commondir: Success",
        ] {
            assert!(is_lock_error(s.as_bytes()), "{s}");
        }
        for s in [
            "fatal: a branch named 'x' already exists",
            "fatal: not a git repository",
        ] {
            assert!(!is_lock_error(s.as_bytes()), "{s}");
        }
    }

    #[test]
    fn stderr_is_bounded_to_its_end() {
        let long = format!("{}END", "x".repeat(10_000));
        let t = tail(long.as_bytes());
        assert!(t.len() <= STDERR_LIMIT && t.ends_with("END"));
    }
}
