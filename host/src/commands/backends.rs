//! Builds the backend a command asked for: a built-in one or a plugin.

use std::path::Path;
use std::sync::Arc;

use agentserver::plugins::{self, PluginOptions};
use agentserver_backend_claudecode::{ClaudeCodeBackend, ClaudeCodeConfig};
use agentserver_plugin_api::Backend;
use anyhow::{Context, Result};

use crate::cli::{ClaudeArgs, OpencodeArgs, PluginArgs};

/// Every option a backend may need.
pub struct BackendChoice<'a> {
    /// `--backend`.
    pub name: &'a str,
    /// Directory tasks run in.
    pub workdir: &'a Path,
    /// Claude Code options.
    pub claude: &'a ClaudeArgs,
    /// opencode options.
    pub opencode: &'a OpencodeArgs,
    /// Plugin options.
    pub plugins: &'a PluginArgs,
}

/// Builds the backend named in `choice`.
pub fn build(choice: &BackendChoice<'_>) -> Result<Arc<dyn Backend>> {
    match choice.name {
        "claudecode" => {
            let config = ClaudeCodeConfig {
                claude_bin: choice.claude.claude_bin.clone(),
                workdir: choice.workdir.to_path_buf(),
                ..ClaudeCodeConfig::default()
            };
            Ok(Arc::new(ClaudeCodeBackend::new(config)))
        }
        "opencode" => opencode(choice),
        name => {
            let mut options = PluginOptions::default();
            options.plugin_dirs = choice.plugins.plugin_dir.clone();
            options.allow_native = choice.plugins.allow_native.clone();
            plugins::load_backend(name, &options).with_context(|| {
                format!(
                    "`{name}` is neither a built-in backend (claudecode, opencode) nor a loadable plugin; \
                     see `agentserver plugins list`"
                )
            })
        }
    }
}

fn opencode(choice: &BackendChoice<'_>) -> Result<Arc<dyn Backend>> {
    let _ = choice;
    anyhow::bail!("the opencode backend is not built into this binary yet")
}
