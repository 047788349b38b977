//! What sandboxes one host serves: the `[host]` table and the `[[sandbox]]` tables of
//! `~/.agentserver/config.toml` (or `agentserver run --config FILE`), or `--sandbox SPEC` on
//! the command line for the simple case. Other tables of the file (`[plugins]`) belong to
//! other parts of the host and are ignored here.
//!
//! ```toml
//! [host]
//! server = "https://agent.example.com"   # default: the one saved at login
//! max_concurrent_tasks = 4               # across all sandboxes (default: their sum)
//!
//! [[sandbox]]
//! name = "web"                 # unique; the sandbox's name on the server; a restart resumes it
//! backend = "claudecode"       # claudecode | opencode | acp | a plugin's name
//! work_dir = "~/src/web"       # relative paths are relative to this file's directory
//! max_concurrent_tasks = 2
//! isolation = "worktree"       # a git worktree per task (default when work_dir is a git
//!                              # repository), or "none": every task in work_dir itself
//! worktree_dir = "~/.agentserver/worktrees/web"   # default: <state dir>/worktrees/<name>
//! worktree_disk_cap_mb = 20480 # leftover worktrees beyond this are removed at start
//!
//! [[sandbox]]
//! name = "api"
//! backend = "opencode"
//! work_dir = "~/src/api"
//! opencode_port = 0            # default 0 here: each opencode picks a free port
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dispatch::BackendKind;

/// The default cap on what leftover worktrees of one sandbox may occupy (20 GiB).
pub const DEFAULT_WORKTREE_DISK_CAP_MB: u64 = 20 * 1024;

/// How a sandbox's tasks are kept apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Each task in its own git worktree on a branch named after it.
    Worktree,
    /// Every task in the work directory itself (the behaviour of one-sandbox hosts).
    None,
}

impl std::str::FromStr for Isolation {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "worktree" => Ok(Self::Worktree),
            "none" => Ok(Self::None),
            other => Err(format!(
                "isolation `{other}` is neither `worktree` nor `none`"
            )),
        }
    }
}

/// The host-wide settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSettings {
    /// Server for new sandboxes (default: the one saved at login).
    #[serde(default)]
    pub server: Option<String>,
    /// Tasks running at once across all sandboxes (default: the sum of theirs).
    #[serde(default)]
    pub max_concurrent_tasks: Option<u16>,
}

/// One `[[sandbox]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {
    /// Unique within the host; the sandbox's name on the server, and how a restart finds its
    /// session again.
    pub name: String,
    /// The backend (default `claudecode`).
    #[serde(default = "default_backend", deserialize_with = "backend_kind")]
    pub backend: BackendKind,
    /// Directory the sandbox's tasks work on.
    pub work_dir: PathBuf,
    /// Tasks of this sandbox at once (default 1).
    #[serde(default = "one")]
    pub max_concurrent_tasks: u16,
    /// `worktree` or `none`; default: `worktree` when `work_dir` is a git repository.
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// Where task worktrees go (default `<state dir>/worktrees/<name>`).
    #[serde(default)]
    pub worktree_dir: Option<PathBuf>,
    /// Cap on leftover worktrees, in MiB (default [`DEFAULT_WORKTREE_DISK_CAP_MB`]).
    #[serde(default)]
    pub worktree_disk_cap_mb: Option<u64>,
    /// Server of this sandbox (default: `[host] server`).
    #[serde(default)]
    pub server: Option<String>,
    /// `claude` CLI path (claudecode).
    #[serde(default)]
    pub claude_bin: Option<PathBuf>,
    /// `opencode` CLI path (opencode).
    #[serde(default)]
    pub opencode_bin: Option<PathBuf>,
    /// Port of `opencode serve` (default 0: it picks a free one).
    #[serde(default)]
    pub opencode_port: Option<u16>,
    /// The ACP agent's command line (acp).
    #[serde(default)]
    pub acp_command: Option<String>,
    /// A known ACP agent (acp).
    #[serde(default)]
    pub acp_preset: Option<String>,
}

fn default_backend() -> BackendKind {
    BackendKind::DEFAULT
}

fn backend_kind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BackendKind, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(serde::de::Error::custom)
}

fn one() -> u16 {
    1
}

/// Everything a host serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// `[host]`.
    pub host: HostSettings,
    /// `[[sandbox]]`, in file order.
    pub sandboxes: Vec<SandboxConfig>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    host: HostSettings,
    #[serde(default)]
    sandbox: Vec<SandboxConfig>,
}

/// Why a host configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of this shape.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        reason: String,
    },
    /// A `--sandbox` spec is wrong.
    #[error("--sandbox `{spec}`: {reason}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// The sandboxes cannot work together.
    #[error("{0}")]
    Invalid(String),
}

impl HostConfig {
    /// Reads `path`. A missing file is an empty configuration (no sandboxes) unless
    /// `required` (a `--config` the user named).
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        let bytes = match crate::fsutil::read_state_file(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default());
            }
            Err(source) => {
                return Err(ConfigError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: format!("not UTF-8: {e}"),
        })?;
        if !required
            && toml::from_str::<ConfigFile>(&text).is_ok_and(|file| file.sandbox.is_empty())
        {
            // The file only configures other parts of the host (`[plugins]`).
            return Ok(Self::default());
        }
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses config text; relative work and worktree directories are taken relative to
    /// `base`; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let mut config = Self {
            host: file.host,
            sandboxes: file.sandbox,
        };
        for sandbox in &mut config.sandboxes {
            sandbox.work_dir = resolve(base, &sandbox.work_dir);
            sandbox.worktree_dir = sandbox.worktree_dir.as_deref().map(|d| resolve(base, d));
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what can be checked without touching the work directories: at least one
    /// sandbox, unique non-empty names, limits of at least 1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sandboxes.is_empty() {
            return Err(ConfigError::Invalid(
                "no sandbox is configured: add a [[sandbox]] table (see `agentserver run --help`)"
                    .into(),
            ));
        }
        let mut names = BTreeSet::new();
        for s in &self.sandboxes {
            if s.name.trim().is_empty() {
                return Err(ConfigError::Invalid("a sandbox has an empty name".into()));
            }
            if !names.insert(s.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "two sandboxes are named `{}`: names must be unique (a restart finds each \
                     sandbox's session by its name)",
                    s.name
                )));
            }
            if s.max_concurrent_tasks == 0 {
                return Err(ConfigError::Invalid(format!(
                    "sandbox `{}`: max_concurrent_tasks must be at least 1",
                    s.name
                )));
            }
        }
        if self.host.max_concurrent_tasks == Some(0) {
            return Err(ConfigError::Invalid(
                "[host] max_concurrent_tasks must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The host-wide limit: `[host] max_concurrent_tasks`, else the sum of the sandboxes'.
    pub fn host_capacity(&self) -> usize {
        match self.host.max_concurrent_tasks {
            Some(n) => usize::from(n),
            None => self
                .sandboxes
                .iter()
                .map(|s| usize::from(s.max_concurrent_tasks))
                .sum(),
        }
    }
}

impl SandboxConfig {
    /// A sandbox from a `--sandbox` spec: comma-separated `key=value` pairs, keys `name`,
    /// `backend`, `dir`, `tasks`, `isolation` (`dir` is required; relative to `cwd`; `name`
    /// defaults to `<dir's last component>-<backend>`), e.g.
    /// `backend=opencode,dir=../api,tasks=2,isolation=none`.
    pub fn from_spec(spec: &str, cwd: &Path) -> Result<Self, ConfigError> {
        let err = |reason: String| ConfigError::Spec {
            spec: spec.to_owned(),
            reason,
        };
        let mut name = None;
        let mut backend = BackendKind::DEFAULT;
        let mut dir = None;
        let mut tasks = 1u16;
        let mut isolation = None;
        for pair in spec.split(',').filter(|p| !p.trim().is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| err(format!("`{pair}` is not key=value")))?;
            let value = value.trim();
            match key.trim() {
                "name" => name = Some(value.to_owned()),
                "backend" => backend = value.parse().map_err(|e| err(format!("{e}")))?,
                "dir" => dir = Some(resolve(cwd, Path::new(value))),
                "tasks" => {
                    tasks =
                        value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                            err(format!("tasks `{value}` is not a number above 0"))
                        })?;
                }
                "isolation" => isolation = Some(value.parse().map_err(err)?),
                other => {
                    return Err(err(format!(
                        "unknown key `{other}` (keys: name, backend, dir, tasks, isolation)"
                    )));
                }
            }
        }
        let work_dir = dir.ok_or_else(|| err("`dir=DIR` is missing".into()))?;
        let name = name.unwrap_or_else(|| {
            let base = work_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sandbox".into());
            format!("{base}-{}", backend.name())
        });
        Ok(Self {
            name,
            backend,
            work_dir,
            max_concurrent_tasks: tasks,
            isolation,
            worktree_dir: None,
            worktree_disk_cap_mb: None,
            server: None,
            claude_bin: None,
            opencode_bin: None,
            opencode_port: None,
            acp_command: None,
            acp_preset: None,
        })
    }

    /// Where this sandbox's task worktrees go.
    pub fn worktree_base(&self) -> PathBuf {
        self.worktree_dir.clone().unwrap_or_else(|| {
            crate::paths::state_dir()
                .join("worktrees")
                .join(sanitize(&self.name))
        })
    }

    /// The disk cap of leftover worktrees, in bytes.
    pub fn worktree_disk_cap_bytes(&self) -> u64 {
        self.worktree_disk_cap_mb
            .unwrap_or(DEFAULT_WORKTREE_DISK_CAP_MB)
            .saturating_mul(1024 * 1024)
    }
}

/// The isolation a sandbox gets: the configured one, else `worktree` for a git work tree
/// and `none` otherwise; refused when several tasks would share a directory that is not a
/// git repository without the user saying `isolation = "none"`.
pub fn effective_isolation(
    sandbox: &SandboxConfig,
    is_git_work_tree: bool,
) -> Result<Isolation, ConfigError> {
    isolation_for(
        &format!("sandbox `{}`", sandbox.name),
        &sandbox.work_dir,
        sandbox.max_concurrent_tasks,
        sandbox.isolation,
        is_git_work_tree,
        "isolation = \"none\" (`--sandbox …,isolation=none`)",
    )
}

/// The rule of [`effective_isolation`] for any sandbox: `who` names it in errors, `say_none`
/// is how the user says "share the directory" where it was configured.
pub fn isolation_for(
    who: &str,
    work_dir: &Path,
    tasks: u16,
    configured: Option<Isolation>,
    is_git_work_tree: bool,
    say_none: &str,
) -> Result<Isolation, ConfigError> {
    match configured {
        Some(Isolation::Worktree) if !is_git_work_tree => Err(ConfigError::Invalid(format!(
            "{who}: worktree isolation needs a git repository, and {} is not one: run `git init` \
             there, or use {say_none}",
            work_dir.display()
        ))),
        Some(isolation) => Ok(isolation),
        None if is_git_work_tree => Ok(Isolation::Worktree),
        None if tasks > 1 => Err(ConfigError::Invalid(format!(
            "{who} runs {tasks} tasks at once in {}, which is not a git repository, so they \
             would all edit the same files: make it a git repository (each task then gets its \
             own git worktree), run one task at a time, or say {say_none} to share the \
             directory anyway",
            work_dir.display()
        ))),
        None => Ok(Isolation::None),
    }
}

/// `~` at the start means `$HOME`; relative paths are joined to `base`.
fn resolve(base: &Path, path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty())
    {
        return PathBuf::from(home).join(rest);
    }
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// A name safe as one path component.
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[host]
max_concurrent_tasks = 3

[[sandbox]]
name = "web"
work_dir = "web"
max_concurrent_tasks = 2

[[sandbox]]
name = "api"
backend = "opencode"
work_dir = "/srv/api"
isolation = "none"
opencode_port = 0

[plugins]
allow_native = ["x"]
"#;

    #[test]
    fn the_documented_shape_parses_and_other_tables_are_left_alone() {
        let config = HostConfig::parse(EXAMPLE, Path::new("c.toml"), Path::new("/etc/as")).unwrap();
        assert_eq!(config.host_capacity(), 3);
        let [web, api] = &config.sandboxes[..] else {
            panic!("two sandboxes: {config:?}")
        };
        assert_eq!(web.backend, BackendKind::ClaudeCode);
        assert_eq!(web.work_dir, Path::new("/etc/as/web"));
        assert_eq!(web.max_concurrent_tasks, 2);
        assert_eq!(api.backend, BackendKind::Opencode);
        assert_eq!(api.isolation, Some(Isolation::None));
        // The module doc's example is the documented shape: it parses too.
        let doc = include_str!("config.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! "))
            .skip_while(|l| !l.starts_with("[host]"))
            .take_while(|l| !l.starts_with("```"))
            .collect::<Vec<_>>()
            .join("\n");
        let parsed = HostConfig::parse(&doc, Path::new("doc"), Path::new("/")).unwrap();
        assert_eq!(parsed.sandboxes.len(), 2, "{doc}");
        assert_eq!(parsed.host_capacity(), 4);
    }

    #[test]
    fn mistakes_are_refused_with_what_to_do() {
        let err = |text: &str| {
            HostConfig::parse(text, Path::new("c.toml"), Path::new("/"))
                .unwrap_err()
                .to_string()
        };
        assert!(err("").contains("no sandbox is configured"));
        let dup = "[[sandbox]]\nname='a'\nwork_dir='/x'\n[[sandbox]]\nname='a'\nwork_dir='/y'\n";
        assert!(err(dup).contains("two sandboxes are named `a`"));
        let typo = "[[sandbox]]\nname='a'\nwork_dir='/x'\nmax_tasks=2\n";
        let e = err(typo);
        assert!(e.contains("c.toml") && e.contains("max_tasks"), "{e}");
        let bad = "[[sandbox]]\nname='a'\nwork_dir='/x'\nisolation='chroot'\n";
        assert!(err(bad).contains("chroot"));
    }

    #[test]
    fn a_command_line_spec_makes_a_sandbox() {
        let s = SandboxConfig::from_spec(
            "backend=opencode,dir=../api,tasks=2,isolation=none",
            Path::new("/home/u/web"),
        )
        .unwrap();
        assert_eq!(s.backend, BackendKind::Opencode);
        assert_eq!(s.work_dir, Path::new("/home/u/web/../api"));
        assert_eq!(s.name, "api-opencode");
        assert_eq!(s.max_concurrent_tasks, 2);
        assert_eq!(s.isolation, Some(Isolation::None));
        let e = SandboxConfig::from_spec("backend=opencode", Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("`dir=DIR` is missing"), "{e}");
        let e = SandboxConfig::from_spec("dir=/x,colour=red", Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("unknown key `colour`"), "{e}");
        let e = SandboxConfig::from_spec("dir=/x,tasks=0", Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("above 0"), "{e}");
    }

    #[test]
    fn isolation_follows_the_directory_and_sharing_must_be_asked_for() {
        let mut s = SandboxConfig::from_spec("dir=/x,tasks=4", Path::new("/")).unwrap();
        assert_eq!(effective_isolation(&s, true).unwrap(), Isolation::Worktree);
        let e = effective_isolation(&s, false).unwrap_err().to_string();
        assert!(
            e.contains("isolation = \"none\"") && e.contains("git repository"),
            "{e}"
        );
        s.isolation = Some(Isolation::None);
        assert_eq!(effective_isolation(&s, false).unwrap(), Isolation::None);
        s.isolation = Some(Isolation::Worktree);
        assert!(effective_isolation(&s, false).is_err());
        s.isolation = None;
        s.max_concurrent_tasks = 1;
        assert_eq!(effective_isolation(&s, false).unwrap(), Isolation::None);
    }
}
