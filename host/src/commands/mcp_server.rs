//! `agentserver mcp-server`: the stdio MCP bridge (spec §10.2).

use std::process::ExitCode;

use agentserver::mcp::{BridgeConfig, run_stdio};
use anyhow::Result;

/// Reads the environment contract and serves MCP on stdin/stdout until stdin closes.
pub async fn mcp_server() -> Result<ExitCode> {
    let config = match BridgeConfig::from_env() {
        Ok(config) => config,
        Err(missing) => {
            eprintln!("Error: {missing}");
            return Ok(ExitCode::from(1));
        }
    };
    tracing::debug!(server = %config.server_url, "mcp: serving on stdio");
    run_stdio(&config).await?;
    Ok(ExitCode::SUCCESS)
}
