//! `agentserver demo`: the whole flow on this machine with an embedded server and no network:
//! device login, registration, tunnel, one task, its events and its final status.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentserver::auth::{AuthContext, TerminalLoginUi};
use agentserver::dispatch::{BackendKind, BackendRegistry};
use agentserver::plugins::{self, PluginOptions};
use agentserver::session_choice::{SessionRequest, choose_session};
use agentserver::state::SessionStore;
use agentserver::tunnel::TunnelEvent;
use agentserver::worker::{Worker, WorkerOptions};
use agentserver_mock::{MockConfig, MockServer};
use agentserver_plugin_api::Backend;
use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use super::backends;
use crate::cli::{AcpArgs, DemoArgs, OpencodeArgs, PluginArgs};

/// The name the bundled example WASM backend has in the demo (its default backend).
const DEMO_EXAMPLE: &str = "example-wasm";

/// How long the demo waits for the task before giving up.
const TASK_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the demo; everything it writes lives in a temporary state directory.
pub async fn demo(args: DemoArgs) -> Result<ExitCode> {
    let started = Instant::now();
    // A fresh, unguessable, private directory: created exclusively (never one that someone
    // else made in the shared temp dir beforehand) with mode 0700.
    let state_dir = std::env::temp_dir().join(format!(
        "agentserver-demo-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&state_dir)
            .with_context(|| format!("cannot create {}", state_dir.display()))?;
    }
    let workdir = state_dir.join("work");
    std::fs::create_dir(&workdir)
        .with_context(|| format!("cannot create {}", workdir.display()))?;
    let result = run_demo(&args, &state_dir, &workdir).await;
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&state_dir);
            println!(
                "\nDemo finished in {:.1} s.",
                started.elapsed().as_secs_f64()
            );
        }
        Err(_) => eprintln!(
            "\nThe demo's files are kept in {} for inspection.",
            state_dir.display()
        ),
    }
    result.map(|()| ExitCode::SUCCESS)
}

async fn run_demo(args: &DemoArgs, state_dir: &Path, workdir: &Path) -> Result<()> {
    println!("agentserver demo: the whole flow on this machine, with an embedded server.\n");

    // 1. The server.
    let config = MockConfig {
        approve_after_polls: 2,
        device_interval_secs: 1,
        ..MockConfig::default()
    };
    let server = MockServer::start(config)
        .await
        .context("cannot start the embedded server")?;
    let url = server.url();
    let mock = server.state();
    step(1, &format!("Embedded agentserver listening on {url}"));
    detail(&format!("state directory: {}", state_dir.display()));

    // 2. The backend (before login, so a missing backend fails fast).
    let backend = demo_backend(args, state_dir, workdir)?;
    let info = backend.info();
    step(
        2,
        &format!(
            "Backend `{}` {} ready (registers as type `{}`)",
            info.name, info.version, info.session_type
        ),
    );

    // 3. Login and registration, exactly as `agentserver run` does them.
    step(
        3,
        "Logging in with the OAuth device flow (the embedded server approves after 2 polls)",
    );
    let auth = AuthContext::new(state_dir.join(".credentials.json"));
    let store = SessionStore::new(state_dir.join("sessions"));
    let ui = TerminalLoginUi::new(false);
    let cwd = workdir.to_path_buf();
    let request = SessionRequest {
        resume: None,
        continue_latest: false,
        register_if_none: false,
        continue_named: false,
        // The embedded server approves the login by itself.
        device_login: true,
        server: Some(&url),
        name: Some("agentserver-demo"),
        session_type: info.session_type.as_str(),
        backend: Some(info.name.as_str()),
        cwd: &cwd,
    };
    let (guard, _) =
        choose_session(&request, &store, &auth, &ui, &CancellationToken::new()).await?;
    let session = guard.session().clone();
    detail(&format!(
        "credentials saved in {}",
        auth.credentials().path().display()
    ));
    step(
        4,
        &format!(
            "Registered sandbox {} (workspace {})",
            session.sandbox_id, session.workspace_id
        ),
    );

    // 4. The worker: tunnel + intake.
    let mut options = WorkerOptions::new(workdir);
    options.poll_interval = Duration::from_millis(500);
    options.outbox_dir = state_dir.join("outbox");
    options.grace_period = Duration::from_secs(5);
    let worker = Worker::start(&session, backend, options).await?;
    let intake = worker.intake_handle();
    let mut tunnel_events = worker.tunnel_events();
    let worker_task = tokio::spawn(worker.run());
    wait_connected(&mut tunnel_events).await?;
    let sandbox_id = session.sandbox_id.clone();
    let got_info = mock
        .wait_until(Duration::from_secs(15), |s| {
            // The first agent info may go out before the capabilities are probed; the one
            // sent when they are carries them.
            s.sandbox(&sandbox_id).is_some_and(|sb| {
                sb.agent_info
                    .as_ref()
                    .is_some_and(|info| !info["capabilities"].is_null())
            })
        })
        .await;
    step(5, "Tunnel connected (WebSocket + yamux)");
    if got_info && let Some(agent_info) = mock.sandbox(&sandbox_id).and_then(|s| s.agent_info) {
        detail(&describe_agent_info(&agent_info));
    }

    // 5. A task.
    let task_id = mock.create_task(&session.sandbox_id, &args.prompt);
    step(6, &format!("Submitted task {task_id}: {:?}", args.prompt));
    let record = follow_task(&mock, &task_id).await;
    intake.drain();
    let summary = tokio::time::timeout(Duration::from_secs(30), worker_task)
        .await
        .context("the worker did not stop within 30 s")?
        .context("the worker panicked")??;
    guard.release()?;
    server.shutdown().await;

    let Some(record) = record else {
        bail!(
            "the task did not finish within {} s",
            TASK_TIMEOUT.as_secs()
        );
    };
    let finals = record.final_updates().len();
    step(
        7,
        &format!(
            "Final status reported to the server: {} (sent {finals} time(s))",
            record.status
        ),
    );
    if let Some(result) = &record.result {
        detail(&format!("result: {}", shorten(&result.to_string(), 200)));
    }
    if let Some(reason) = &record.failure_reason {
        detail(&format!("failure reason: {reason}"));
    }
    detail(&format!(
        "tasks received: {}, statuses left unreported: {}",
        summary.tasks_received, summary.unreported
    ));
    if record.status != "completed" {
        bail!("the demo task ended `{}`", record.status);
    }
    Ok(())
}

/// The demo's backend, through the one registry: the built-ins, plus the bundled example
/// WASM backend as `example-wasm` (compiled into the demo's temporary state directory).
fn demo_backend(args: &DemoArgs, state_dir: &Path, workdir: &Path) -> Result<Arc<dyn Backend>> {
    let mut registry = BackendRegistry::with_builtins();
    let example_options = PluginOptions::with_state_dir(state_dir.to_path_buf());
    registry.register(
        DEMO_EXAMPLE,
        Some(agentserver_plugin_api::SessionType::Custom),
        Arc::new(move |_spec| {
            plugins::wasm::bundled::backend(&example_options).map_err(|e| {
                agentserver_plugin_api::BackendError::Start(format!(
                    "cannot build the bundled example WASM backend: {e}"
                ))
            })
        }),
    )?;
    let kind = args
        .backend
        .clone()
        .unwrap_or_else(|| BackendKind::Plugin(DEMO_EXAMPLE.to_owned()));
    let spec = backends::spec(
        workdir,
        &args.claude,
        &OpencodeArgs::default(),
        &AcpArgs::default(),
        &PluginArgs::default(),
    )?;
    Ok(registry.build(&kind, &spec)?)
}

async fn wait_connected(events: &mut tokio::sync::broadcast::Receiver<TunnelEvent>) -> Result<()> {
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => bail!("the tunnel did not connect within 20 s"),
            event = events.recv() => match event {
                Ok(TunnelEvent::Connected { .. }) => return Ok(()),
                Ok(TunnelEvent::Disconnected { reason, .. }) => detail(&format!("tunnel attempt failed: {reason}")),
                Ok(TunnelEvent::Stopped) => bail!("the tunnel stopped"),
                Ok(TunnelEvent::InfoSent { .. }) | Err(_) => {}
            }
        }
    }
}

/// Prints the task's events as they reach the server's bridge, until it has a final status.
async fn follow_task(
    mock: &Arc<agentserver_mock::MockState>,
    task_id: &str,
) -> Option<agentserver_mock::TaskRecord> {
    let deadline = Instant::now() + TASK_TIMEOUT;
    let mut shown = 0usize;
    loop {
        let record = mock.task(task_id)?;
        if let Some(session_id) = record.session_id.as_deref() {
            let events = mock.bridge_worker_events(session_id);
            for event in events.iter().skip(shown) {
                shown += 1;
                let kind = event
                    .get("type")
                    .and_then(|t| t.as_str())
                    .unwrap_or("event");
                detail(&format!(
                    "event {shown} ({kind}): {}",
                    shorten(&event.to_string(), 110)
                ));
            }
        }
        if agentserver_mock::state::is_final_status(&record.status) {
            return Some(record);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn describe_agent_info(info: &serde_json::Value) -> String {
    let str_of = |k: &str| {
        info.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_owned()
    };
    let count = |k: &str| {
        info.get("capabilities")
            .and_then(|c| c.get(k))
            .and_then(|v| v.as_array())
            .map_or(0, Vec::len)
    };
    format!(
        "agent info received by the server: host {}, {} {}, {} CPUs, {} languages and {} tools probed",
        str_of("hostname"),
        str_of("os"),
        str_of("kernel_arch"),
        info.get("cpu_count_logical")
            .and_then(|v| v.as_u64())
            .unwrap_or(0),
        count("languages"),
        count("tools"),
    )
}

fn step(n: u32, text: &str) {
    println!("[{n}/7] {text}");
}

fn detail(text: &str) {
    println!("      {text}");
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}…")
}
