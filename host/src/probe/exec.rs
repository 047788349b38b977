//! Running one probe command: PATH lookup, a child process in its own process group
//! (`agentserver_common::process::isolate`: it dies with the host too), a hard timeout that
//! kills the whole group (grandchildren included), output capture.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// At most this many bytes of each of stdout and stderr are kept; a tool that writes more
/// is killed at the timeout and skipped.
const OUTPUT_LIMIT: u64 = 64 * 1024;

/// Why a probe command produced no output to parse.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The program is not in PATH.
    #[error("not found in PATH")]
    NotFound,
    /// The program could not be started.
    #[error("could not start: {0}")]
    Spawn(#[source] std::io::Error),
    /// The program ran past the timeout and was killed with its process group.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The program exited unsuccessfully.
    #[error("exited with {0}")]
    Failed(ExitStatus),
    /// Reading its output or waiting for it failed.
    #[error("i/o error: {0}")]
    Io(#[source] std::io::Error),
}

/// Looks `name` up in `path` (a PATH-style list) like `exec.LookPath`: the first entry holding
/// an executable regular file. The result is made absolute.
pub fn lookup(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .map(|found| std::path::absolute(&found).unwrap_or(found))
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// The PATH to search: the override, else the process's PATH.
pub fn search_path(path_override: Option<&OsStr>) -> OsString {
    path_override
        .map(OsStr::to_os_string)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default()
}

/// Runs `program args…` with stdin closed and returns stdout followed by stderr (lossy UTF-8).
///
/// Stdout comes first, then stderr, rather than interleaved: version lines are on stdout for
/// most tools while warnings go to stderr (terraform's CLI-config warning), and tools that print
/// only to stderr (`java -version`) still parse. The child runs in its own process group; on
/// timeout the whole group gets SIGKILL so helpers it started die too.
pub async fn run(
    program: &Path,
    args: &[&str],
    path_env: Option<&OsStr>,
    timeout: Duration,
) -> Result<String, ExecError> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(path) = path_env {
        command.env("PATH", path);
    }
    #[cfg(unix)]
    agentserver_common::process::isolate(
        command.as_std_mut(),
        agentserver_common::process::Detach::Group,
    );
    // A scope of its own: a daemon the tool starts (a build tool's server) is swept after it.
    #[cfg(unix)]
    let scope = agentserver_common::process::Scope::shared("probe");
    #[cfg(unix)]
    scope.apply(command.as_std_mut());

    let mut child = command.spawn().map_err(ExecError::Spawn)?;
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let work = async {
        let (out, err, status) =
            tokio::join!(read_limited(stdout), read_limited(stderr), child.wait());
        let status = status.map_err(ExecError::Io)?;
        let (mut out, err) = (out.map_err(ExecError::Io)?, err.map_err(ExecError::Io)?);
        if !status.success() {
            return Err(ExecError::Failed(status));
        }
        if !out.is_empty() && !err.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(&err);
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let result = match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => {
            // Kill the whole group: the tool itself, or a helper it left holding the pipes
            // (the group outlives a reaped leader while it has members, so the id is safe).
            if let Some(pid) = pid {
                kill_group(pid);
            }
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
            Err(ExecError::Timeout(timeout))
        }
    };
    drop(child);
    #[cfg(unix)]
    let _ = tokio::task::spawn_blocking(move || scope.sweep()).await;
    result
}

async fn read_limited<R: AsyncRead + Unpin>(pipe: Option<R>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(pipe) = pipe {
        pipe.take(OUTPUT_LIMIT).read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

#[cfg(unix)]
fn kill_group(pid: u32) {
    // False (the group is already empty) is the normal case after a clean exit.
    agentserver_common::process::kill_group(pid, nix::sys::signal::Signal::SIGKILL);
}

#[cfg(not(unix))]
fn kill_group(_pid: u32) {}
