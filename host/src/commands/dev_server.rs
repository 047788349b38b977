//! `agentserver dev-server`: the mock agentserver (crate `agentserver-mock`) as a local server
//! for plugin authors and manual testing. Runs until Ctrl-C (or SIGTERM).

use std::io::Write;
use std::process::ExitCode;

use agentserver_mock::{DeviceOutcome, MockConfig, MockServer};
use anyhow::{Context, Result};

use crate::cli::DevServerArgs;

/// Starts the mock on `--listen`, prints its URL and endpoints, and serves until interrupted.
pub async fn run(args: DevServerArgs) -> Result<ExitCode> {
    let device_outcome: DeviceOutcome = args
        .device_outcome
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    let config = MockConfig {
        approve_after_polls: args.approve_after,
        slow_down_polls: args.slow_down_polls,
        device_outcome,
        device_interval_secs: args.device_interval,
        device_expires_in_secs: args.device_expires_in,
        access_token_ttl_secs: args.access_token_ttl,
        bridge_enabled: !args.no_bridge,
        stream_open_timeout: args.stream_open_timeout,
    };
    let server = MockServer::start_on(args.listen, config)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let url = server.url();
    let mut out = std::io::stdout().lock();
    writeln!(out, "agentserver dev-server listening on {url}")?;
    writeln!(out, "{}", endpoint_list(&url, !args.no_bridge))?;
    out.flush()?;
    drop(out);

    wait_for_signal().await?;
    server.shutdown().await;
    println!("agentserver dev-server stopped");
    Ok(ExitCode::SUCCESS)
}

fn endpoint_list(url: &str, bridge: bool) -> String {
    let mut s = format!(
        "\nLog in and register against it:  agentserver login --server {url}\n\
         \n\
         Endpoints:\n\
         \x20 POST {url}/api/oauth2/device/auth    device authorization (auto-approved)\n\
         \x20 POST {url}/api/oauth2/token          device_code and refresh_token grants\n\
         \x20 POST {url}/api/agent/register        register a sandbox (Bearer access token)\n\
         \x20 GET  {url}/api/tunnel/{{sandbox_id}}?token=   WebSocket + yamux tunnel\n\
         \x20 GET  {url}/api/agent/tasks/poll      POST /api/agent/tasks, PUT /api/agent/tasks/{{id}}/status\n\
         \x20 GET  {url}/api/agent/discovery/agents, POST /api/agent/discovery/cards\n\
         \x20 POST {url}/api/agent/mailbox/send, GET /api/agent/mailbox/inbox, GET /api/agent/whoami\n"
    );
    if bridge {
        s.push_str(&format!(
            "\x20 *    {url}/v1/agent/sessions/...      CCR v2 bridge\n"
        ));
    }
    s.push_str(&format!("\n{}\nPress Ctrl-C to stop.", control_api(url)));
    s
}

/// The `/_mock` control API (no auth), as `dev-server` prints it and `--help` shows it.
pub fn control_api(url: &str) -> String {
    format!(
        "Control API (no auth; see docs/plugins.md):\n\
         \x20 GET  {url}/_mock/sandboxes                 registered sandboxes\n\
         \x20 GET  {url}/_mock/tasks                     every task and its status updates\n\
         \x20 POST {url}/_mock/tasks                     create a task: {{\"target_id\": \"<sandbox id>\", \"prompt\": \"...\"}}\n\
         \x20 GET  {url}/_mock/tasks/{{id}}                one task\n\
         \x20 GET  {url}/_mock/tasks/{{id}}/events         the events the host posted for it, in order\n\
         \x20 POST {url}/_mock/tasks/{{id}}/cancel         cancel it (an interrupt through its bridge session)\n\
         Each event and status update is also logged at INFO (target agentserver_mock::tasks).\n"
    )
}

async fn wait_for_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot wait for Ctrl-C")?,
            _ = term.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")
    }
}
