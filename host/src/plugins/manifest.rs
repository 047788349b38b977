//! `plugin.toml`: what a plugin is, where its code lives and what it asks for.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::PluginError;

/// The manifest file name inside a plugin directory.
pub const MANIFEST_FILE: &str = "plugin.toml";

/// Default memory cap for a WASM plugin's store, in MiB.
pub const DEFAULT_MEMORY_MB: u64 = 256;

/// Default per-task deadline, in seconds (agent tasks can run long; the host's own timeouts
/// usually fire first).
pub const DEFAULT_TIMEOUT_SECS: u64 = 2 * 60 * 60;

/// How a plugin's code is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// A shared library speaking the C ABI (`agentserver_plugin.h`); trusted code.
    Native,
    /// A WebAssembly component targeting `agentserver:backend`; sandboxed.
    Wasm,
}

impl PluginKind {
    /// `native` or `wasm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Wasm => "wasm",
        }
    }
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a native plugin's code runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// Inside the host process (the default): a function call per task, but a crash (segfault,
    /// abort, `exit`) ends the host.
    #[default]
    InProcess,
    /// In a child process per task (`agentserver plugin-host`): a crash fails only that task,
    /// and a plugin that ignores cancellation is killed.
    Process,
}

impl Isolation {
    /// `in-process` or `process`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProcess => "in-process",
            Self::Process => "process",
        }
    }
}

/// What a WASM plugin asks for. Native plugins are trusted and ignore these.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Access to the task's working directory (preopened as `/workdir`).
    #[serde(default)]
    pub workdir: bool,
    /// Environment variables the plugin may read (their values come from the host).
    #[serde(default)]
    pub env: Vec<String>,
    /// Host names the plugin may reach through the `http` interface (`*` for any).
    #[serde(default)]
    pub http: Vec<String>,
}

impl Permissions {
    /// True when nothing is asked for.
    pub fn is_empty(&self) -> bool {
        !self.workdir && self.env.is_empty() && self.http.is_empty()
    }
}

/// Resource limits a WASM plugin asks for (the host may lower them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory cap per task in MiB (default [`DEFAULT_MEMORY_MB`]).
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Per-task deadline in seconds (default [`DEFAULT_TIMEOUT_SECS`]).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// A parsed `plugin.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Plugin name: what `--backend NAME` selects. Letters, digits, `-` and `_`.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// `native` or `wasm`.
    pub kind: PluginKind,
    /// The library or component, relative to the plugin directory.
    pub file: String,
    /// The plugin API version it was built against (semver, e.g. `1.0.0`).
    pub api_version: String,
    /// One line saying what it does.
    #[serde(default)]
    pub description: String,
    /// Native only: where its code runs (`in-process` when absent). The user's config can
    /// override it.
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// What it asks for (WASM only).
    #[serde(default)]
    pub permissions: Permissions,
    /// Resource limits (WASM only).
    #[serde(default)]
    pub limits: Limits,
}

impl Manifest {
    /// Parses and validates manifest text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PluginError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| PluginError::Manifest {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        manifest.validate(path)?;
        Ok(manifest)
    }

    /// Reads `dir/plugin.toml`: only a regular file of at most
    /// [`STATE_FILE_CAP`](crate::fsutil::STATE_FILE_CAP) bytes that does not lead out
    /// of `dir` (see [`read_regular_file`](crate::fsutil::read_regular_file)).
    pub fn load(dir: &Path) -> Result<Self, PluginError> {
        let text = read_manifest_text(dir)?;
        Self::parse(&text, &dir.join(MANIFEST_FILE))
    }

    fn validate(&self, path: &Path) -> Result<(), PluginError> {
        let bad = |reason: String| PluginError::Manifest {
            path: path.to_owned(),
            reason,
        };
        if !valid_name(&self.name) {
            return Err(bad(format!(
                "name `{}` must be 1-64 letters, digits, `-` or `_`",
                self.name
            )));
        }
        if crate::dispatch::BackendKind::is_reserved_name(&self.name) {
            return Err(bad(format!(
                "name `{}` is taken by a built-in backend",
                self.name
            )));
        }
        let file = Path::new(&self.file);
        if self.file.is_empty()
            || file.is_absolute()
            || file
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(bad(format!(
                "file `{}` must be a relative path inside the plugin directory",
                self.file
            )));
        }
        if agentserver_plugin_api::ffi::semver_major(&self.api_version).is_none() {
            return Err(bad(format!(
                "api_version `{}` is not a semver version",
                self.api_version
            )));
        }
        for var in &self.permissions.env {
            if var.is_empty() || var.contains('=') || var.contains('\0') {
                return Err(bad(format!(
                    "permissions.env entry `{var}` is not a variable name"
                )));
            }
        }
        if self.limits.memory_mb == Some(0) || self.limits.timeout_secs == Some(0) {
            return Err(bad("limits must be greater than zero".into()));
        }
        Ok(())
    }

    /// The code file, resolved against the plugin directory.
    pub fn file_path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.file)
    }
}

/// The text of `dir/plugin.toml`, read as [`Manifest::load`] reads it.
pub fn read_manifest_text(dir: &Path) -> Result<String, PluginError> {
    let path = &dir.join(MANIFEST_FILE);
    let io = |source| PluginError::Io {
        path: path.to_owned(),
        source,
    };
    let bytes =
        crate::fsutil::read_regular_file(dir, path, crate::fsutil::STATE_FILE_CAP).map_err(io)?;
    String::from_utf8(bytes)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// Whether `name` is a valid plugin name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "echo"
version = "0.1.0"
kind = "wasm"
file = "echo.wasm"
api_version = "1.0.0"

[permissions]
workdir = true
env = ["LANG"]
http = ["api.example.com"]

[limits]
memory_mb = 64
"#;

    #[test]
    fn parses_a_full_manifest() {
        let m = Manifest::parse(GOOD, Path::new("plugin.toml")).unwrap();
        assert_eq!(m.kind, PluginKind::Wasm);
        assert!(m.permissions.workdir);
        assert_eq!(m.permissions.env, ["LANG"]);
        assert_eq!(m.limits.memory_mb, Some(64));
        assert_eq!(m.file_path(Path::new("/p")), Path::new("/p/echo.wasm"));
    }

    #[test]
    fn rejects_escaping_file_and_bad_names() {
        let escaping = GOOD.replace("echo.wasm", "../x.wasm");
        let err = Manifest::parse(&escaping, Path::new("p.toml")).unwrap_err();
        assert!(err.to_string().contains("relative path"), "{err}");
        let bad_name = GOOD.replace("\"echo\"", "\"a b\"");
        assert!(Manifest::parse(&bad_name, Path::new("p.toml")).is_err());
        let builtin = GOOD.replace("\"echo\"", "\"opencode\"");
        assert!(Manifest::parse(&builtin, Path::new("p.toml")).is_err());
    }

    #[test]
    fn rejects_unknown_keys_and_kinds() {
        let unknown = format!("{GOOD}\nsurprise = 1\n");
        assert!(Manifest::parse(&unknown, Path::new("p.toml")).is_err());
        let kind = GOOD.replace("\"wasm\"", "\"python\"");
        assert!(Manifest::parse(&kind, Path::new("p.toml")).is_err());
        let version = GOOD.replace("\"1.0.0\"", "\"one\"");
        assert!(Manifest::parse(&version, Path::new("p.toml")).is_err());
    }
}
