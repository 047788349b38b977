//! From the command line's backend options to the typed [`BackendSpec`] the one registry
//! ([`agentserver::dispatch::BackendRegistry`]) builds backends from.

use std::path::Path;
use std::sync::Arc;

use agentserver::dispatch::{BackendKind, BackendRegistry, BackendSpec};
use agentserver::plugins::PluginOptions;
use agentserver_backend_opencode::{OpencodeConfig, Token};
use agentserver_plugin_api::Backend;
use anyhow::Result;

use crate::cli::{AcpArgs, ClaudeArgs, OpencodeArgs, PluginArgs};

/// Every backend's options, as the command line gave them, for tasks in `workdir`; an error
/// when an option cannot be used (an `--acp-command` with unbalanced quotes).
pub fn spec(
    workdir: &Path,
    claude: &ClaudeArgs,
    opencode: &OpencodeArgs,
    acp: &AcpArgs,
    plugins: &PluginArgs,
) -> Result<BackendSpec> {
    Ok(BackendSpec {
        workdir: workdir.to_path_buf(),
        claudecode: claude.config(workdir),
        opencode: OpencodeConfig {
            opencode_url: opencode.opencode_url.clone(),
            opencode_token: opencode
                .opencode_token
                .as_ref()
                .map(|t| Token::new(t.expose())),
            auto_start: opencode.auto_start,
            opencode_bin: opencode.opencode_bin.clone(),
            opencode_port: opencode.opencode_port,
            workdir: workdir.to_path_buf(),
            ..OpencodeConfig::default()
        },
        acp: acp.config(workdir).map_err(anyhow::Error::msg)?,
        plugins: PluginOptions {
            plugin_dirs: plugins.plugin_dir.clone(),
            allow_native: plugins.allow_native.clone(),
            ..PluginOptions::default()
        },
    })
}

/// Builds the backend of `kind` through the registry of built-ins (and plugins on demand).
pub fn build(kind: &BackendKind, spec: &BackendSpec) -> Result<Arc<dyn Backend>> {
    Ok(BackendRegistry::with_builtins().build(kind, spec)?)
}
