//! Finding the `claude` CLI (spec §9.4).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The `claude` CLI could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The explicitly configured path does not exist.
    #[error("claude CLI not found at {} (from --claude-bin)", .0.display())]
    ExplicitMissing(PathBuf),
    /// Nothing found in `PATH` or the usual install places.
    #[error(
        "claude CLI not found in PATH or in {searched}; install Claude Code (npm install -g @anthropic-ai/claude-code) or pass --claude-bin"
    )]
    NotFound {
        /// The places looked at, comma separated.
        searched: String,
    },
}

/// Finds the `claude` CLI as the upstream SDK does (spec §9.4):
///
/// 1. an explicit path must exist (a bare name such as `claude` or `cat` is looked up in `PATH`
///    first — a convenience the upstream SDK does not have);
/// 2. else `claude` in `PATH`;
/// 3. else `~/.claude/local/claude`, `/usr/local/bin/claude`, `/usr/bin/claude`,
///    `/opt/homebrew/bin/claude` (macOS) and `<npm config get prefix>/bin/claude`.
///
/// Blocking: the last step may run `npm` (at most 5 s).
pub fn find_claude(explicit: Option<&Path>) -> Result<PathBuf, DiscoveryError> {
    find_claude_with(
        explicit,
        std::env::var_os("PATH"),
        std::env::var_os("HOME").map(PathBuf::from),
        npm_prefix,
    )
}

/// [`find_claude`] with its inputs made explicit (for tests).
pub(crate) fn find_claude_with(
    explicit: Option<&Path>,
    path_var: Option<OsString>,
    home: Option<PathBuf>,
    npm_prefix: impl FnOnce() -> Option<PathBuf>,
) -> Result<PathBuf, DiscoveryError> {
    if let Some(explicit) = explicit {
        let bare = explicit.components().count() == 1 && !explicit.is_absolute();
        if bare && let Some(found) = search_path(path_var.as_deref(), explicit.as_os_str()) {
            return Ok(found);
        }
        return if explicit.exists() {
            Ok(explicit.to_path_buf())
        } else {
            Err(DiscoveryError::ExplicitMissing(explicit.to_path_buf()))
        };
    }
    if let Some(found) = search_path(path_var.as_deref(), "claude".as_ref()) {
        return Ok(found);
    }
    let mut candidates = Vec::new();
    if let Some(home) = home {
        candidates.push(home.join(".claude/local/claude"));
    }
    candidates.push(PathBuf::from("/usr/local/bin/claude"));
    candidates.push(PathBuf::from("/usr/bin/claude"));
    if cfg!(target_os = "macos") {
        candidates.push(PathBuf::from("/opt/homebrew/bin/claude"));
    }
    if let Some(found) = candidates.iter().find(|c| is_executable(c)) {
        return Ok(found.clone());
    }
    let mut searched: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    if let Some(prefix) = npm_prefix() {
        let candidate = prefix.join("bin").join("claude");
        if is_executable(&candidate) {
            return Ok(candidate);
        }
        let shown = candidate.display().to_string();
        if !searched.contains(&shown) {
            searched.push(shown);
        }
    }
    Err(DiscoveryError::NotFound {
        searched: searched.join(", "),
    })
}

fn search_path(path_var: Option<&std::ffi::OsStr>, name: &std::ffi::OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var?)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `npm config get prefix`, if npm is installed and answers within 5 s.
fn npm_prefix() -> Option<PathBuf> {
    let mut child = std::process::Command::new("npm")
        .args(["config", "get", "prefix"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut()?, &mut out).ok()?;
    let prefix = out.trim();
    (!prefix.is_empty()).then(|| PathBuf::from(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn exe(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn explicit_path_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert_eq!(
            find_claude_with(Some(&missing), None, None, || None),
            Err(DiscoveryError::ExplicitMissing(missing.clone()))
        );
        let present = exe(dir.path(), "my-claude");
        assert_eq!(
            find_claude_with(Some(&present), None, None, || None),
            Ok(present)
        );
    }

    #[test]
    fn explicit_bare_name_uses_path() {
        let dir = tempfile::tempdir().unwrap();
        let cat = exe(dir.path(), "cat");
        let path = std::env::join_paths([dir.path()]).unwrap();
        assert_eq!(
            find_claude_with(Some(Path::new("cat")), Some(path), None, || None),
            Ok(cat)
        );
    }

    #[test]
    fn path_then_home_then_npm_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let in_path = exe(&bin, "claude");
        let path = std::env::join_paths([&bin]).unwrap();
        assert_eq!(
            find_claude_with(None, Some(path), None, || None),
            Ok(in_path)
        );

        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join(".claude/local")).unwrap();
        let local = exe(&home.join(".claude/local"), "claude");
        let empty = std::env::join_paths([dir.path().join("empty")]).unwrap();
        assert_eq!(
            find_claude_with(None, Some(empty.clone()), Some(home), || None),
            Ok(local)
        );

        // The npm prefix is the last resort; it is only consulted when needed.
        let prefix = dir.path().join("npm");
        std::fs::create_dir_all(prefix.join("bin")).unwrap();
        let npm = exe(&prefix.join("bin"), "claude");
        let found = find_claude_with(None, Some(empty.clone()), None, || Some(prefix.clone()));
        // /usr/local/bin/claude or /usr/bin/claude may exist on a developer machine.
        if !Path::new("/usr/local/bin/claude").exists() && !Path::new("/usr/bin/claude").exists() {
            assert_eq!(found, Ok(npm));
            let err = find_claude_with(None, Some(empty), None, || None).unwrap_err();
            assert!(err.to_string().contains("--claude-bin"), "{err}");
        }
    }
}
