//! `agentserver run --config FILE` / `--sandbox SPEC` (or the `[[sandbox]]` tables of
//! `~/.agentserver/config.toml`): several sandboxes in one host. Each sandbox's session is
//! chosen in turn (one login at most; a restart resumes every sandbox by its name), then the
//! [`Supervisor`] serves them all until signalled.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use agentserver::auth::{AuthContext, TerminalLoginUi, headless};
use agentserver::dispatch::BackendKind;
use agentserver::intake::capacity::HostCapacity;
use agentserver::logging::notice;
use agentserver::metrics::Metrics;
use agentserver::ops::{MetricsServer, StatusSocket};
use agentserver::probe::{CapabilityCache, Prober};
use agentserver::sandboxes::config::{HostConfig, Isolation, SandboxConfig, effective_isolation};
use agentserver::sandboxes::supervisor::{BackendFactory, SandboxPlan, Supervisor};
use agentserver::session_choice::{SessionOrigin, SessionRequest, choose_session};
use agentserver::shutdown::{FORCE_EXIT_CODE, ShutdownSignals, follow_signals};
use agentserver::state::{SessionGuard, SessionStore};
use agentserver::worker::WorkerOptions;
use anyhow::{Context, Result};

use super::backends;
use crate::cli::{AcpArgs, ClaudeArgs, OpencodeArgs, RunArgs};

/// The sandboxes `run` is asked to serve, when it is asked for several: `--config FILE`,
/// `--sandbox` specs, or (with neither and no `--backend`, `--resume`, `--continue`) the
/// `[[sandbox]]` tables of the default config file. `None`: the one-sandbox `run`.
pub fn requested(args: &RunArgs, cwd: &Path) -> Result<Option<HostConfig>> {
    let many = &args.many;
    let single_asked = args.backend.is_some()
        || args.session.resume.is_some()
        || args.session.continue_
        || args.session.continue_or_register;
    let mut config = match &many.config {
        Some(path) => HostConfig::load(&cwd.join(path), true)?,
        None if many.sandbox.is_empty() && !single_asked => HostConfig::load(
            &agentserver::plugins::config::config_file(&agentserver::paths::state_dir()),
            false,
        )?,
        None => HostConfig::default(),
    };
    for spec in &many.sandbox {
        config.sandboxes.push(SandboxConfig::from_spec(spec, cwd)?);
    }
    if config.sandboxes.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        args.backend.is_none(),
        "--backend names the backend of one sandbox; with --config or --sandbox each sandbox \
         names its own (`backend = …` in its table, `backend=…` in its spec)"
    );
    anyhow::ensure!(
        args.session.resume.is_none() && !args.session.continue_,
        "--resume and --continue name one session; the sandboxes of a config file or of \
         --sandbox are resumed by their names on every start"
    );
    if let Some(total) = many.max_tasks_total {
        config.host.max_concurrent_tasks = Some(total);
    }
    config.validate()?;
    Ok(Some(config))
}

/// One configured sandbox, checked: its directory, isolation and backend kind.
struct Checked {
    config: SandboxConfig,
    work_dir: PathBuf,
    isolation: Isolation,
}

/// Serves every sandbox of `config` until the signals say stop.
pub async fn run(args: RunArgs, config: HostConfig) -> Result<ExitCode> {
    let capabilities = CapabilityCache::new(Prober::new());
    capabilities.start_probe();
    let mut checked = Vec::new();
    for sandbox in &config.sandboxes {
        let work_dir = sandbox.work_dir.canonicalize().with_context(|| {
            format!(
                "sandbox `{}`: the work directory {} does not exist",
                sandbox.name,
                sandbox.work_dir.display()
            )
        })?;
        anyhow::ensure!(
            work_dir.is_dir(),
            "sandbox `{}`: {} is not a directory",
            sandbox.name,
            work_dir.display()
        );
        let isolation =
            effective_isolation(sandbox, agentserver_workspace::is_git_work_tree(&work_dir))?;
        if isolation == Isolation::Worktree {
            // Before anything is registered.
            agentserver::sandboxes::check_worktrees(&work_dir, &sandbox.worktree_base())
                .with_context(|| {
                    format!(
                        "sandbox `{}`: set worktree_dir outside the repository, or isolation = \"none\"",
                        sandbox.name
                    )
                })?;
        }
        checked.push(Checked {
            config: sandbox.clone(),
            work_dir,
            isolation,
        });
    }

    // Sessions, one after the other: the first may log in, the others reuse its token.
    let store = SessionStore::default_location();
    let auth = AuthContext::default_location().with_seed(headless::seed_from_env()?);
    let ui = TerminalLoginUi::new(!args.session.skip_open_browser);
    let login_cancel = super::login::cancel_on_ctrl_c();
    let mut guards: Vec<(SessionGuard, &Checked)> = Vec::new();
    for sandbox in &checked {
        let kind = &sandbox.config.backend;
        let session_type = session_type_of(kind, &args, sandbox);
        let cwd = sandbox.work_dir.clone();
        let server = sandbox
            .config
            .server
            .as_deref()
            .or(config.host.server.as_deref())
            .or(args.session.server.as_deref());
        let request = SessionRequest {
            resume: None,
            continue_latest: true,
            register_if_none: true,
            continue_named: true,
            device_login: args.session.login_without_tty || std::io::stdin().is_terminal(),
            server,
            name: Some(&sandbox.config.name),
            session_type: &session_type,
            backend: Some(kind.name()),
            cwd: &cwd,
        };
        let chosen = choose_session(&request, &store, &auth, &ui, &login_cancel).await;
        let (guard, origin) = match chosen {
            Ok(chosen) => chosen,
            Err(err) => {
                login_cancel.cancel();
                return Err(
                    anyhow::Error::new(err).context(format!("sandbox `{}`", sandbox.config.name))
                );
            }
        };
        let session = guard.session();
        let verb = match origin {
            SessionOrigin::Registered => "Registered new sandbox",
            SessionOrigin::Resumed | SessionOrigin::Continued => "Resumed sandbox",
        };
        notice(&format!(
            "{verb} {} ({}, {}, type {}) on {}",
            session.sandbox_id,
            session.name,
            kind.name(),
            session.session_type,
            session.server_url
        ));
        guards.push((guard, sandbox));
    }
    // The logins are over: the watcher ends, the shutdown signals take over.
    login_cancel.cancel();

    let metrics = Arc::new(Metrics::new());
    let metrics_server = match args.ops.metrics_listen {
        Some(addr) => Some(
            MetricsServer::start(addr, metrics.clone())
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?,
        ),
        None => None,
    };
    if let Some(server) = &metrics_server {
        if !server.local_addr().ip().is_loopback() {
            tracing::warn!(addr = %server.local_addr(), "metrics and health are served beyond this machine");
        }
        notice(&format!(
            "Metrics on http://{0}/metrics, health on http://{0}/healthz",
            server.local_addr()
        ));
    }

    let capacity = HostCapacity::limited(config.host_capacity());
    let mut plans = Vec::new();
    for (guard, sandbox) in &guards {
        let session = guard.session().clone();
        if sandbox.config.backend == BackendKind::ClaudeCode {
            super::run::inject_mcp_config(&session, &sandbox.work_dir);
        }
        let mut options = WorkerOptions::new(&sandbox.work_dir);
        options.poll_interval = args.intake.poll_interval;
        options.max_concurrent_tasks = usize::from(sandbox.config.max_concurrent_tasks);
        options.grace_period = args.intake.grace_period;
        options.timeouts = args.intake.timeouts();
        options.capabilities = Some(capabilities.clone());
        options.capacity = capacity.clone();
        if sandbox.isolation == Isolation::Worktree {
            let base = sandbox.config.worktree_base();
            options.workspaces = Some(
                agentserver::sandboxes::open_worktrees(
                    &sandbox.work_dir,
                    &base,
                    sandbox.config.worktree_disk_cap_bytes(),
                )
                .with_context(|| {
                    format!(
                        "sandbox `{}`: cannot use worktrees under {}",
                        sandbox.config.name,
                        base.display()
                    )
                })?,
            );
        }
        notice(&format!(
            "Sandbox {}: the {} backend in {} ({} task(s) at once, isolation {})",
            sandbox.config.name,
            sandbox.config.backend,
            sandbox.work_dir.display(),
            sandbox.config.max_concurrent_tasks,
            match sandbox.isolation {
                Isolation::Worktree => "worktree",
                Isolation::None => "none",
            }
        ));
        plans.push(SandboxPlan {
            name: sandbox.config.name.clone(),
            session,
            backend: factory(&args, sandbox),
            options,
        });
    }
    let supervisor = Supervisor::new(plans, Some(metrics.clone()));
    let handle = supervisor.handle();
    let status_socket = {
        let metrics = metrics.clone();
        let listen = metrics_server.as_ref().map(|s| s.local_addr().to_string());
        StatusSocket::start(&agentserver::ops::status_dir(), move || {
            metrics.status(listen.clone())
        })
    };
    if let Err(err) = &status_socket {
        tracing::warn!(%err, "cannot open the status socket; `agentserver status` will not see this host");
    }
    let signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    if args.ops.exit_if_unused.is_some() {
        tracing::warn!("--exit-if-unused applies to one sandbox; it is ignored with several");
    }
    notice(&format!(
        "Serving {} sandbox(es), at most {} task(s) at once in all (Ctrl-C to stop)",
        guards.len(),
        config.host_capacity()
    ));
    let outcome = tokio::select! {
        outcomes = supervisor.run() => Some(outcomes),
        () = follow_signals(signals, handle.clone(), super::say_shutdown_stage) => None,
    };
    drop(status_socket);
    drop(metrics_server);
    let code = match outcome {
        Some(outcomes) => {
            let unreported: usize = outcomes
                .iter()
                .filter_map(|o| o.result.as_ref().ok())
                .map(|s| s.unreported)
                .sum();
            for o in outcomes.iter().filter(|o| o.result.is_err()) {
                if let Err(err) = &o.result {
                    notice(&format!("Sandbox {} ({}): {err}", o.name, o.sandbox_id));
                }
            }
            if unreported > 0 {
                notice(&format!(
                    "{unreported} final status(es) not yet accepted by the server; they are kept in the outbox and sent at the next start."
                ));
            }
            ExitCode::SUCCESS
        }
        None => ExitCode::from(FORCE_EXIT_CODE),
    };
    for (guard, _) in guards {
        if let Err(err) = guard.release() {
            tracing::warn!(%err, "cannot clear a session's pid");
        }
    }
    println!("Agent disconnected. The same command resumes these sandboxes.");
    Ok(code)
}

/// The type a sandbox registers as: a built-in's own; a plugin's from its info (`custom` when
/// it cannot be loaded now: its start is retried, and it registers as a plugin).
fn session_type_of(kind: &BackendKind, args: &RunArgs, sandbox: &Checked) -> String {
    if kind.is_builtin() {
        return kind.session_type().as_str().to_owned();
    }
    match factory(args, sandbox)() {
        Ok(backend) => backend.info().session_type.as_str().to_owned(),
        Err(_) => kind.session_type().as_str().to_owned(),
    }
}

/// Builds the sandbox's backend from its table, the command line filling in the rest.
fn factory(args: &RunArgs, sandbox: &Checked) -> BackendFactory {
    let kind = sandbox.config.backend.clone();
    let work_dir = sandbox.work_dir.clone();
    let claude = ClaudeArgs {
        claude_bin: sandbox
            .config
            .claude_bin
            .clone()
            .or_else(|| args.claude.claude_bin.clone()),
        ..args.claude.clone()
    };
    let opencode = OpencodeArgs {
        opencode_bin: sandbox
            .config
            .opencode_bin
            .clone()
            .unwrap_or_else(|| args.opencode.opencode_bin.clone()),
        // Several opencode servers on one host: each picks a free port unless told one.
        opencode_port: sandbox.config.opencode_port.unwrap_or(0),
        ..args.opencode.clone()
    };
    let acp = AcpArgs {
        acp_command: sandbox
            .config
            .acp_command
            .clone()
            .or_else(|| args.acp.acp_command.clone()),
        acp_preset: match &sandbox.config.acp_preset {
            Some(name) => name.parse().ok(),
            None => args.acp.acp_preset,
        },
        ..args.acp.clone()
    };
    let plugins = args.plugins.clone();
    Arc::new(move || {
        let spec = backends::spec(&work_dir, &claude, &opencode, &acp, &plugins)
            .map_err(|e| format!("{e:#}"))?;
        if kind == BackendKind::ClaudeCode {
            agentserver_backend_claudecode::find_claude(claude.claude_bin.as_deref())
                .map_err(|e| e.to_string())?;
        }
        if kind == BackendKind::Acp {
            spec.acp.check_program()?;
        }
        backends::build(&kind, &spec).map_err(|e| format!("{e:#}"))
    })
}
