//! `agentserver run` (and the root command): choose a session, start the backend, hold the
//! tunnel and run tasks until signalled.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use agentserver::auth::{AuthContext, TerminalLoginUi, headless};
use agentserver::dispatch::BackendKind;
use agentserver::logging::notice;
use agentserver::metrics::{Metrics, SandboxInfo};
use agentserver::ops::{MetricsServer, StatusSocket};
use agentserver::probe::{CapabilityCache, Prober};
use agentserver::session_choice::{SessionOrigin, SessionRequest, choose_session};
use agentserver::shutdown::{FORCE_EXIT_CODE, ShutdownSignals, follow_signals};
use agentserver::state::SessionStore;
use agentserver::tunnel::TunnelEvent;
use agentserver::worker::{Worker, WorkerOptions, drain_when_unused, spawn_leftover_flush};
use anyhow::{Context, Result};

use super::backends;
use crate::cli::RunArgs;

/// Runs one sandbox until the intake has drained after a signal.
pub async fn run(args: RunArgs) -> Result<ExitCode> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    if let Some(config) = super::run_many::requested(&args, &cwd)? {
        return super::run_many::run(args, config).await;
    }
    let workdir = absolute_workdir(&cwd, args.session.work_dir.as_deref())?;
    // Capabilities are probed from the start, in parallel with everything below (login,
    // registration, the backend's start), so the first agent info rarely lacks them.
    let capabilities = CapabilityCache::new(Prober::new());
    capabilities.start_probe();
    let store = SessionStore::default_location();
    let kind = choose_backend(
        args.backend.as_ref(),
        args.session.resume.as_deref(),
        &store,
    )?;
    let spec = backends::spec(
        &workdir,
        &args.claude,
        &args.opencode,
        &args.acp,
        &args.plugins,
    )?;
    let isolation = agentserver::sandboxes::config::isolation_for(
        "this host",
        &workdir,
        args.intake.max_concurrent_tasks,
        args.intake.isolation,
        agentserver_workspace::is_git_work_tree(&workdir),
        "--isolation none",
    )?;
    if isolation == agentserver::sandboxes::config::Isolation::Worktree {
        // Before anything is registered: the base must lie outside the repository (the
        // default one is under the state directory, which a repository at $HOME contains).
        let base = args
            .intake
            .worktree_dir
            .clone()
            .unwrap_or_else(|| agentserver::paths::state_dir().join("worktrees").join("_"));
        agentserver::sandboxes::check_worktrees(&workdir, &base).with_context(|| {
            format!(
                "cannot keep task worktrees under {}: give --worktree-dir DIR outside the \
                 repository, or --isolation none",
                base.parent().unwrap_or(&base).display()
            )
        })?;
    }
    let backend = backends::build(&kind, &spec)?;
    let info = backend.info();
    if kind == BackendKind::ClaudeCode {
        // Checked before a sandbox is registered: a start that fails for want of `claude`
        // must not leave a new sandbox behind on the server.
        let explicit = args.claude.claude_bin.clone();
        tokio::task::spawn_blocking(move || {
            agentserver_backend_claudecode::find_claude(explicit.as_deref())
        })
        .await
        .context("the claude CLI lookup failed")??;
    }
    if kind == BackendKind::Acp {
        // Likewise, an agent that cannot be run must not leave a sandbox behind.
        spec.acp
            .check_program()
            .map_err(anyhow::Error::msg)
            .context("cannot use the acp backend")?;
    }

    // Ctrl-C while logging in aborts the login cleanly.
    let login_cancel = super::login::cancel_on_ctrl_c();
    let auth = AuthContext::default_location().with_seed(headless::seed_from_env()?);
    let ui = TerminalLoginUi::new(!args.session.skip_open_browser);
    let request = SessionRequest {
        resume: args.session.resume.as_deref(),
        continue_latest: args.session.continue_ || args.session.continue_or_register,
        register_if_none: args.session.continue_or_register,
        continue_named: false,
        device_login: args.session.login_without_tty || std::io::stdin().is_terminal(),
        server: args.session.server.as_deref(),
        name: args.session.name.as_deref(),
        session_type: info.session_type.as_str(),
        backend: Some(kind.name()),
        cwd: &cwd,
    };
    let chosen = choose_session(&request, &store, &auth, &ui, &login_cancel).await;
    // The login is over: the watcher ends, the shutdown signals take over.
    login_cancel.cancel();
    let (guard, origin) = chosen?;
    let session = guard.session().clone();
    let verb = match origin {
        SessionOrigin::Registered => "Registered new sandbox",
        SessionOrigin::Resumed => "Resumed sandbox",
        SessionOrigin::Continued => "Continued sandbox",
    };
    notice(&format!(
        "{verb} {} ({}, type {}) on {}",
        session.sandbox_id, session.name, session.session_type, session.server_url
    ));

    // Bound before the backend starts, so a busy port fails the start cleanly.
    let metrics = Arc::new(Metrics::new());
    let metrics_server = match args.ops.metrics_listen {
        Some(addr) => {
            let server = MetricsServer::start(addr, metrics.clone())
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            if !server.local_addr().ip().is_loopback() {
                tracing::warn!(addr = %server.local_addr(), "metrics and health are served beyond this machine");
            }
            notice(&format!(
                "Metrics on http://{0}/metrics, health on http://{0}/healthz",
                server.local_addr()
            ));
            Some(server)
        }
        None => None,
    };

    if kind == BackendKind::ClaudeCode {
        prepare_claudecode(&args, &session, &workdir).await;
    }

    let mut options = WorkerOptions::new(&workdir);
    options.poll_interval = args.intake.poll_interval;
    options.max_concurrent_tasks = usize::from(args.intake.max_concurrent_tasks);
    options.grace_period = args.intake.grace_period;
    options.timeouts = args.intake.timeouts();
    options.capabilities = Some(capabilities);
    if isolation == agentserver::sandboxes::config::Isolation::Worktree {
        let base = args.intake.worktree_dir.clone().unwrap_or_else(|| {
            agentserver::paths::state_dir().join("worktrees").join(
                agentserver::sandboxes::config::sanitize(&session.sandbox_id),
            )
        });
        let worktrees = agentserver::sandboxes::open_worktrees(
            &workdir,
            &base,
            agentserver::sandboxes::config::DEFAULT_WORKTREE_DISK_CAP_MB * 1024 * 1024,
        )
        .with_context(|| format!("cannot use task worktrees under {}", base.display()))?;
        notice(&format!(
            "Each task runs in its own git worktree under {} (branch agentserver/<task id>)",
            base.display()
        ));
        options.workspaces = Some(worktrees);
    }
    let worker = Worker::start(&session, backend, options).await?;
    let _attached = metrics.attach(
        SandboxInfo {
            sandbox_id: session.sandbox_id.clone(),
            server: session.server_url.clone(),
            backend: info.name.clone(),
            tunnel_down_limit: worker.tunnel_down_limit(),
        },
        worker.intake_handle(),
        worker.tunnel_events(),
    );
    let status_socket = {
        let metrics = metrics.clone();
        let listen = metrics_server.as_ref().map(|s| s.local_addr().to_string());
        StatusSocket::start(&agentserver::ops::status_dir(), move || {
            metrics.status(listen.clone())
        })
    };
    let status_socket = match status_socket {
        Ok(socket) => Some(socket),
        Err(err) => {
            tracing::warn!(%err, "cannot open the status socket; `agentserver status` will not see this host");
            None
        }
    };
    let leftovers = spawn_leftover_flush(
        store.clone(),
        agentserver::paths::outbox_dir(),
        session.sandbox_id.clone(),
    );
    let handle = worker.intake_handle();
    let signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let status_printer = tokio::spawn(print_tunnel_events(worker.tunnel_events()));
    let unused = args
        .ops
        .exit_if_unused
        .map(|idle| drain_when_unused(handle.clone(), idle));
    notice(&format!(
        "Serving tasks with the {} backend in {} (Ctrl-C to stop)",
        info.name,
        workdir.display()
    ));

    let outcome = tokio::select! {
        summary = worker.run() => Some(summary),
        () = follow_signals(signals, handle.clone(), super::say_shutdown_stage) => None,
    };
    status_printer.abort();
    leftovers.abort();
    if let Some(unused) = unused {
        unused.abort();
    }
    metrics.intake_stopped(&session.sandbox_id);
    drop(status_socket);
    drop(metrics_server);
    let code = match outcome {
        Some(summary) => {
            let summary = summary?;
            if summary.unreported > 0 {
                notice(&format!(
                    "{} final status(es) not yet accepted by the server; they are kept in the outbox and sent at the next start.",
                    summary.unreported
                ));
            }
            ExitCode::SUCCESS
        }
        None => ExitCode::from(FORCE_EXIT_CODE),
    };
    let sandbox_id = session.sandbox_id.clone();
    if let Err(err) = guard.release() {
        tracing::warn!(%err, "cannot clear the session's pid");
    }
    println!("Agent disconnected.");
    println!("To resume this session: {}", kind.resume_hint(&sandbox_id));
    Ok(code)
}

/// Claude Code extras at start (spec §5 step 6): `.mcp.json` for delegation, and the fixed
/// agent card for servers older than v0.37 when asked. Failures are logged, never fatal.
async fn prepare_claudecode(args: &RunArgs, session: &agentserver::state::Session, workdir: &Path) {
    inject_mcp_config(session, workdir);
    if args.intake.register_card {
        register_card(session).await;
    }
}

/// `.mcp.json` in `workdir` for delegation (spec §10.1); a failure is logged, never fatal.
pub(super) fn inject_mcp_config(session: &agentserver::state::Session, workdir: &Path) {
    match std::env::current_exe().and_then(|p| p.canonicalize()) {
        Ok(exe) => {
            if let Err(err) = agentserver_backend_claudecode::inject_mcp_config(
                workdir,
                &session.server_url,
                session.tunnel_token.expose(),
                &session.workspace_id,
                &session.sandbox_id,
                &exe,
            ) {
                tracing::warn!(%err, "cannot write .mcp.json; Claude Code will not see the workspace tools");
            }
        }
        Err(err) => tracing::warn!(%err, "cannot resolve the agentserver executable for .mcp.json"),
    }
}

async fn register_card(session: &agentserver::state::Session) {
    let url = format!(
        "{}{}",
        session.server_url.trim_end_matches('/'),
        agentserver_backend_claudecode::AGENT_CARD_PATH
    );
    let body = agentserver_backend_claudecode::agent_card_body(&session.name);
    let result = reqwest::Client::new()
        .post(&url)
        .bearer_auth(session.tunnel_token.expose())
        .timeout(std::time::Duration::from_secs(10))
        .json(&body)
        .send()
        .await;
    match result {
        Ok(resp) if resp.status().is_success() => tracing::info!("agent card registered"),
        Ok(resp) => tracing::warn!(status = %resp.status(), "agent card registration refused"),
        Err(err) => tracing::warn!(%err, "agent card registration failed"),
    }
}

async fn print_tunnel_events(mut events: tokio::sync::broadcast::Receiver<TunnelEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(TunnelEvent::Connected { attempt }) => {
                if attempt == 1 {
                    notice("Tunnel connected.");
                } else {
                    notice(&format!("Tunnel reconnected (attempt {attempt})."));
                }
            }
            Ok(TunnelEvent::Disconnected {
                reason,
                token_rejected,
                retry_in,
            }) => {
                if token_rejected {
                    notice(&format!(
                        "Tunnel token rejected by the server (was the sandbox deleted?); retrying in {:.0?}.",
                        retry_in
                    ));
                } else {
                    notice(&format!(
                        "Tunnel disconnected: {reason}; retrying in {retry_in:.0?}."
                    ));
                }
            }
            Ok(TunnelEvent::Stopped) | Err(RecvError::Closed) => return,
            Ok(TunnelEvent::InfoSent { .. }) | Err(RecvError::Lagged(_)) => {}
        }
    }
}

/// The backend to run: the session type chooses it. `--backend` names it for a new session;
/// with `--resume` the sandbox keeps the type it was registered with, so a missing `--backend`
/// follows that type and a contradicting one is refused (the server would route the wrong
/// kind of work to it). A session that cannot be read is left for `choose_session` to report.
fn choose_backend(
    requested: Option<&BackendKind>,
    resume: Option<&str>,
    store: &SessionStore,
) -> Result<BackendKind> {
    let session = resume.and_then(|id| store.load(id).ok());
    let resumed = session.as_ref().map(|s| Resumed {
        id: &s.sandbox_id,
        session_type: &s.session_type,
        backend: s.backend.as_deref(),
    });
    backend_for_session(requested, resumed)
}

/// What [`backend_for_session`] needs to know of the session being resumed.
#[derive(Clone, Copy)]
struct Resumed<'a> {
    id: &'a str,
    session_type: &'a str,
    /// The backend recorded at registration (absent in older and upstream session files).
    backend: Option<&'a str>,
}

/// The pure rule behind [`choose_backend`].
fn backend_for_session(
    requested: Option<&BackendKind>,
    resumed: Option<Resumed<'_>>,
) -> Result<BackendKind> {
    let Some(Resumed {
        id,
        session_type,
        backend: recorded,
    }) = resumed
    else {
        return Ok(requested.cloned().unwrap_or(BackendKind::DEFAULT));
    };
    let recorded = recorded.map(str::parse::<BackendKind>).transpose()?;
    match (
        requested,
        BackendKind::builtin_for_session_type(session_type),
    ) {
        (None, Some(builtin)) => Ok(builtin),
        (Some(asked), Some(builtin)) if *asked != builtin => anyhow::bail!(
            "sandbox {id} was registered as type `{session_type}`, not `{asked}`; \
             resume it with: {}",
            builtin.resume_hint(id)
        ),
        (Some(asked), Some(_)) => Ok(asked.clone()),
        // A plugin's sandbox (type `custom`): the recorded plugin, when there is one.
        (None, None) => match recorded {
            Some(plugin) => Ok(plugin),
            None => anyhow::bail!(
                "sandbox {id} was registered as type `{session_type}` (a plugin backend); \
                 say which plugin runs it: agentserver run --backend NAME --resume {id}"
            ),
        },
        (Some(asked), None) => match recorded {
            Some(plugin) if plugin != *asked => anyhow::bail!(
                "sandbox {id} belongs to the {} `{plugin}`, not `{asked}`; resume it \
                 with: {}",
                if plugin.is_builtin() {
                    "backend"
                } else {
                    "plugin"
                },
                plugin.resume_hint(id)
            ),
            None if asked.is_builtin() => anyhow::bail!(
                "sandbox {id} was registered as type `{session_type}` (a plugin backend), \
                 not `{asked}`; resume it with: agentserver run --backend PLUGIN --resume {id}"
            ),
            _ => Ok(asked.clone()),
        },
    }
}

fn absolute_workdir(cwd: &Path, work_dir: Option<&Path>) -> Result<PathBuf> {
    let dir = match work_dir {
        Some(d) if d.is_absolute() => d.to_path_buf(),
        Some(d) => cwd.join(d),
        None => cwd.to_path_buf(),
    };
    let meta = std::fs::metadata(&dir)
        .with_context(|| format!("the work directory {} does not exist", dir.display()))?;
    anyhow::ensure!(
        meta.is_dir(),
        "the work directory {} is not a directory",
        dir.display()
    );
    Ok(dir.canonicalize().unwrap_or(dir))
}

#[cfg(test)]
mod tests {
    use super::Resumed;

    /// [`super::backend_for_session`] with names in and out, as a user types and reads them.
    fn backend_for_session(
        requested: Option<&str>,
        resumed: Option<Resumed<'_>>,
    ) -> anyhow::Result<String> {
        let requested = requested.map(|name| name.parse().unwrap());
        super::backend_for_session(requested.as_ref(), resumed).map(|kind| kind.to_string())
    }

    fn resumed<'a>(session_type: &'a str, backend: Option<&'a str>) -> Option<Resumed<'a>> {
        Some(Resumed {
            id: "sb1",
            session_type,
            backend,
        })
    }

    #[test]
    fn a_new_session_runs_the_requested_backend_or_claudecode() {
        assert_eq!(backend_for_session(None, None).unwrap(), "claudecode");
        assert_eq!(
            backend_for_session(Some("my-plugin"), None).unwrap(),
            "my-plugin"
        );
    }

    #[test]
    fn a_resumed_session_follows_its_registered_type_and_plugin() {
        let ok = |requested, session_type, backend| {
            backend_for_session(requested, resumed(session_type, backend)).unwrap()
        };
        assert_eq!(ok(None, "opencode", None), "opencode");
        assert_eq!(
            ok(Some("opencode"), "opencode", Some("opencode")),
            "opencode"
        );
        assert_eq!(ok(None, "custom", Some("my-plugin")), "my-plugin");
        assert_eq!(
            ok(Some("my-plugin"), "custom", Some("my-plugin")),
            "my-plugin"
        );
        // Sessions written before the plugin was recorded (or by upstream).
        assert_eq!(ok(Some("my-plugin"), "custom", None), "my-plugin");
        // The built-in `acp` registers as `custom` too: its recorded name brings it back.
        assert_eq!(ok(None, "custom", Some("acp")), "acp");
        assert_eq!(ok(Some("acp"), "custom", Some("acp")), "acp");
    }

    #[test]
    fn a_contradicting_backend_is_refused_with_the_command_to_run() {
        let err = |requested, session_type, backend| {
            backend_for_session(requested, resumed(session_type, backend))
                .unwrap_err()
                .to_string()
        };
        let e = err(Some("claudecode"), "opencode", None);
        assert!(
            e.contains("agentserver run --backend opencode --resume sb1"),
            "{e}"
        );
        let e = err(Some("my-plugin"), "claudecode", None);
        assert!(e.contains("agentserver --resume sb1"), "{e}");
        let e = err(Some("opencode"), "custom", None);
        assert!(e.contains("--backend PLUGIN --resume sb1"), "{e}");
        let e = err(None, "custom", None);
        assert!(e.contains("--backend NAME --resume sb1"), "{e}");
        let e = err(Some("my-plugin"), "custom", Some("acp"));
        assert!(
            e.contains("the backend `acp`")
                && e.contains("agentserver run --backend acp --resume sb1"),
            "{e}"
        );
        let e = err(Some("acp"), "custom", Some("my-plugin"));
        assert!(e.contains("plugin `my-plugin`"), "{e}");
        let e = err(Some("other-plugin"), "custom", Some("my-plugin"));
        assert!(
            e.contains("plugin `my-plugin`")
                && e.contains("agentserver run --backend my-plugin --resume sb1"),
            "{e}"
        );
    }
}
