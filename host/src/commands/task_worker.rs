//! `agentserver task-worker`: only the task intake (poll, run with the backend — Claude Code
//! unless `--backend` says otherwise — report), no tunnel (spec §8, §13).

use std::process::ExitCode;

use agentserver::intake::{Intake, IntakeConfig};
use agentserver::shutdown::{FORCE_EXIT_CODE, ShutdownSignals, follow_signals};
use agentserver::state::registry::RegistryFile;
use anyhow::{Context, Result, bail};

use super::backends;

use crate::cli::TaskWorkerArgs;

/// Runs the task worker until SIGINT/SIGTERM (first: drain, second: cancel, third: exit).
pub async fn task_worker(args: TaskWorkerArgs) -> Result<ExitCode> {
    // Missing identity → the first entry of the legacy registry (its token is the tunnel
    // token, which servers ≥ v0.30.2 accept as a proxy token; spec §8.1, §13).
    let fallback =
        if args.server.is_none() || args.proxy_token.is_none() || args.sandbox_id.is_none() {
            RegistryFile::default_location()
                .load()
                .context("cannot read the legacy registry")?
                .entries
                .into_iter()
                .next()
        } else {
            None
        };
    let server = args
        .server
        .or_else(|| fallback.as_ref().map(|e| e.server.clone()))
        .filter(|s| !s.is_empty());
    let sandbox_id = args
        .sandbox_id
        .or_else(|| fallback.as_ref().map(|e| e.sandbox_id.clone()))
        .filter(|s| !s.is_empty());
    let token = args
        .proxy_token
        .or_else(|| fallback.as_ref().map(|e| e.tunnel_token.clone()))
        .filter(|t| !t.is_empty());
    let Some(server) = server else {
        bail!("--server is required (no registry.json entry to take it from)");
    };
    let Some(sandbox_id) = sandbox_id else {
        bail!("--sandbox-id is required (no registry.json entry to take it from)");
    };
    let Some(token) = token else {
        bail!("--proxy-token (or AGENTSERVER_PROXY_TOKEN) is required");
    };
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let workdir = match args.work_dir {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => cwd.join(dir),
        None => cwd,
    };

    let spec = backends::spec(
        &workdir,
        &args.claude,
        &args.opencode,
        &args.acp,
        &args.plugins,
    )?;
    let backend = backends::build(&args.backend, &spec)?;
    backend
        .start()
        .await
        .with_context(|| format!("the {} backend cannot start", args.backend))?;

    let mut config = IntakeConfig::new(server, token, sandbox_id, workdir);
    config.poll_interval = args.intake.poll_interval;
    config.max_concurrent_tasks = usize::from(args.intake.max_concurrent_tasks);
    config.grace_period = args.intake.grace_period;
    config.timeouts = args.intake.timeouts();
    let intake = Intake::new(config, backend.clone())?;
    let signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let handle = intake.handle();
    tracing::info!("task worker started");
    let code = tokio::select! {
        summary = intake.run() => {
            let summary = summary?;
            tracing::info!(?summary, "task worker stopped");
            ExitCode::SUCCESS
        }
        () = follow_signals(signals, handle, super::say_shutdown_stage) => ExitCode::from(FORCE_EXIT_CODE),
    };
    backend.shutdown().await;
    Ok(code)
}
