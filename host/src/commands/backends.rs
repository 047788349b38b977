//! Builds the backend a command asked for: a built-in one or a plugin.

use std::path::Path;
use std::sync::Arc;

use agentserver::plugins::{self, PluginOptions};
use agentserver_backend_claudecode::ClaudeCodeBackend;
use agentserver_backend_opencode::{OpencodeBackend, OpencodeConfig, Token};
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
            let config = choice.claude.config(choice.workdir);
            Ok(Arc::new(ClaudeCodeBackend::new(config)))
        }
        "opencode" => opencode(choice),
        name => {
            let options = PluginOptions {
                plugin_dirs: choice.plugins.plugin_dir.clone(),
                allow_native: choice.plugins.allow_native.clone(),
                ..PluginOptions::default()
            };
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
    let args = choice.opencode;
    let config = OpencodeConfig {
        opencode_url: args.opencode_url.clone(),
        opencode_token: args.opencode_token.as_ref().map(|t| Token::new(t.expose())),
        auto_start: args.auto_start,
        opencode_bin: args.opencode_bin.clone(),
        opencode_port: args.opencode_port,
        workdir: choice.workdir.to_path_buf(),
        ..OpencodeConfig::default()
    };
    Ok(Arc::new(OpencodeBackend::new(config)))
}
