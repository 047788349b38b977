//! The plugin part of the user's config file, `~/.agentserver/config.toml`:
//!
//! ```toml
//! [plugins]
//! # Native plugins are trusted code: only the ones listed here (or named with
//! # `--allow-native NAME`) are ever loaded.
//! allow_native = ["native-rust-example"]
//!
//! # What the user grants each WASM plugin, intersected with what its manifest asks for.
//! [plugins.grants.my-wasm-plugin]
//! workdir = true            # the default: the task's working directory
//! env = ["LANG"]            # default: none
//! http = ["api.example.com"] # default: none; "*" grants every host the manifest lists
//!
//! # Where native plugins run: "process" (a child process per task, crashes fail only the
//! # task) or "in-process"; overrides the manifest's `isolation`.
//! [plugins.isolation]
//! my-native-plugin = "process"
//! ```
//!
//! Other tables in the file belong to other parts of the host and are ignored here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::PluginError;
use super::manifest::Permissions;

/// The config file name inside the state directory.
pub const CONFIG_FILE: &str = "config.toml";

/// `state_dir/config.toml`.
pub fn config_file(state_dir: &Path) -> PathBuf {
    state_dir.join(CONFIG_FILE)
}

/// What the user granted one WASM plugin.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Access to the task's working directory; `None` means the default (granted).
    #[serde(default)]
    pub workdir: Option<bool>,
    /// Environment variables granted.
    #[serde(default)]
    pub env: Vec<String>,
    /// Host names granted for outbound HTTP (`*` for all the manifest lists).
    #[serde(default)]
    pub http: Vec<String>,
}

impl Grant {
    /// What a plugin actually gets: what it asks for, limited to what is granted.
    pub fn effective(&self, asked: &Permissions) -> Permissions {
        let all_http = self.http.iter().any(|h| h == "*");
        Permissions {
            workdir: asked.workdir && self.workdir.unwrap_or(true),
            env: asked
                .env
                .iter()
                .filter(|v| self.env.contains(v))
                .cloned()
                .collect(),
            http: asked
                .http
                .iter()
                .filter(|h| all_http || self.http.iter().any(|g| g.eq_ignore_ascii_case(h)))
                .cloned()
                .collect(),
        }
    }
}

/// The `[plugins]` table of the config file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Native plugins the user trusts.
    #[serde(default)]
    pub allow_native: Vec<String>,
    /// Grants per WASM plugin name.
    #[serde(default)]
    pub grants: BTreeMap<String, Grant>,
    /// Where each native plugin runs, by name; overrides the manifest's `isolation`.
    #[serde(default)]
    pub isolation: BTreeMap<String, super::manifest::Isolation>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    plugins: PluginsConfig,
}

impl PluginsConfig {
    /// Reads the `[plugins]` table of `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, PluginError> {
        let text = match crate::fsutil::read_state_file(path).and_then(|bytes| {
            String::from_utf8(bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        }) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(PluginError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parses config text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PluginError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| PluginError::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(file.plugins)
    }

    /// The grant for `name` (the default grant when none is configured).
    pub fn grant(&self, name: &str) -> Grant {
        self.grants.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plugins_table_and_ignores_others() {
        let text = r#"
[server]
url = "https://x"

[plugins]
allow_native = ["fast"]

[plugins.grants.w]
workdir = false
env = ["LANG", "HOME"]
http = ["*"]
"#;
        let c = PluginsConfig::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(c.allow_native, ["fast"]);
        let asked = Permissions {
            workdir: true,
            env: vec!["LANG".into(), "SECRET".into()],
            http: vec!["a.example".into()],
        };
        let eff = c.grant("w").effective(&asked);
        assert!(!eff.workdir);
        assert_eq!(eff.env, ["LANG"]);
        assert_eq!(eff.http, ["a.example"]);
        // No grant configured: the workdir only.
        let eff = c.grant("other").effective(&asked);
        assert!(eff.workdir);
        assert!(eff.env.is_empty() && eff.http.is_empty());
    }

    #[test]
    fn missing_file_is_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        let c = PluginsConfig::load(&dir.path().join("nope.toml")).unwrap();
        assert_eq!(c, PluginsConfig::default());
    }
}
