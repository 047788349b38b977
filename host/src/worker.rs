//! One sandbox at work: the tunnel, the task intake and the backend's lifecycle, started and
//! stopped together. `agentserver run` and `agentserver demo` both drive a [`Worker`]; the
//! signal handling and the printing stay with them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use agentserver_plugin_api::{Backend, BackendError};
use futures_util::FutureExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::intake::{Intake, IntakeConfig, IntakeError, IntakeHandle, IntakeSummary};
use crate::probe::{CapabilityCache, Prober};
use crate::state::Session;
use crate::tunnel::{InfoSource, Tunnel, TunnelConfig, TunnelEvent};

/// Settings of a [`Worker`] beyond the session's identity.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Directory tasks run in (absolute).
    pub workdir: PathBuf,
    /// Pause between task polls while idle.
    pub poll_interval: Duration,
    /// Tasks run at once.
    pub max_concurrent_tasks: usize,
    /// Time running tasks get after a drain before they are cancelled.
    pub grace_period: Duration,
    /// Agent-info period on the tunnel (20 s on the wire; tests shorten it).
    pub info_interval: Duration,
    /// Outbox root for final statuses (default `~/.agentserver/outbox`).
    pub outbox_dir: PathBuf,
    /// HTTP timeouts of polls and status reports.
    pub timeouts: crate::intake::TaskTimeouts,
    /// The capability cache, when the caller started probing early (at process start, so
    /// the probe overlaps login and registration); a new one otherwise.
    pub capabilities: Option<CapabilityCache>,
    /// The host-wide task capacity shared with the host's other sandboxes.
    pub capacity: crate::intake::capacity::HostCapacity,
    /// A git worktree per task (`isolation = "worktree"`); `None`: every task in `workdir`.
    pub workspaces: Option<Arc<agentserver_workspace::Worktrees>>,
}

impl WorkerOptions {
    /// Defaults for everything but the work directory.
    pub fn new(workdir: impl Into<PathBuf>) -> Self {
        Self {
            workdir: workdir.into(),
            poll_interval: Duration::from_secs(5),
            max_concurrent_tasks: 1,
            grace_period: Duration::from_secs(30),
            info_interval: Duration::from_secs(20),
            outbox_dir: crate::paths::outbox_dir(),
            timeouts: Default::default(),
            capabilities: None,
            capacity: crate::intake::capacity::HostCapacity::unlimited(),
            workspaces: None,
        }
    }
}

/// Why a worker could not start or broke.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The backend refused to start.
    #[error("the {backend} backend could not start: {source}")]
    BackendStart {
        /// Backend name.
        backend: String,
        /// Why.
        #[source]
        source: BackendError,
    },
    /// The intake could not start.
    #[error(transparent)]
    Intake(#[from] IntakeError),
}

/// A running sandbox: tunnel + intake over one backend.
pub struct Worker {
    backend: Arc<dyn Backend>,
    tunnel: Arc<Tunnel>,
    intake: Intake,
    tunnel_cancel: CancellationToken,
    info_triggers: InfoTriggers,
}

/// What makes the tunnel send agent info before its period: a finished capability probe
/// (shared by every sandbox of the host) and a usage-limit pause of this sandbox's intake.
struct InfoTriggers {
    probed: tokio::sync::watch::Receiver<u64>,
    refresh: Arc<tokio::sync::Notify>,
}

impl InfoTriggers {
    /// Turns each trigger into one stored wake-up of this tunnel's info loop.
    async fn forward(mut self, mut intake: broadcast::Receiver<crate::intake::IntakeEvent>) {
        use tokio::sync::broadcast::error::RecvError;
        let mut probes_open = true;
        loop {
            tokio::select! {
                changed = self.probed.changed(), if probes_open => {
                    if changed.is_err() {
                        probes_open = false;
                        continue;
                    }
                }
                event = intake.recv() => match event {
                    Ok(crate::intake::IntakeEvent::Paused { .. }) => {}
                    Ok(_) | Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                },
            }
            self.refresh.notify_one();
        }
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("backend", &self.backend.info().name)
            .field("tunnel", &self.tunnel)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts the backend ([`Backend::start`]) and prepares the tunnel and the intake for
    /// `session`. Nothing connects until [`Worker::run`].
    pub async fn start(
        session: &Session,
        backend: Arc<dyn Backend>,
        options: WorkerOptions,
    ) -> Result<Self, WorkerError> {
        backend
            .start()
            .await
            .map_err(|source| WorkerError::BackendStart {
                backend: backend.info().name,
                source,
            })?;

        let cache = options
            .capabilities
            .clone()
            .unwrap_or_else(|| CapabilityCache::new(Prober::new()));
        // Probe now at the latest (the caller may have started at process start): the agent
        // info never waits for it, and goes out again the moment it is done.
        cache.start_probe();
        let probed = cache.updates();
        let info_refresh = Arc::new(tokio::sync::Notify::new());

        let mut intake_config = IntakeConfig::new(
            session.server_url.clone(),
            session.proxy_token.clone(),
            session.sandbox_id.clone(),
            options.workdir.clone(),
        );
        intake_config.poll_interval = options.poll_interval;
        intake_config.max_concurrent_tasks = options.max_concurrent_tasks.max(1);
        intake_config.grace_period = options.grace_period;
        intake_config.outbox_dir = options.outbox_dir.clone();
        intake_config.timeouts = options.timeouts;
        intake_config.capacity = options.capacity.clone();
        intake_config.workspaces = options.workspaces.clone();
        let intake = match Intake::new(intake_config, backend.clone()) {
            Ok(intake) => intake,
            Err(err) => {
                backend.shutdown().await;
                return Err(err.into());
            }
        };
        let info = agent_info_source(
            Arc::new(cache),
            backend.clone(),
            intake.handle(),
            &options.workdir,
        );
        let mut tunnel_config = TunnelConfig::new(
            session.server_url.clone(),
            session.sandbox_id.clone(),
            session.tunnel_token.clone(),
        );
        tunnel_config.info_interval = options.info_interval;
        tunnel_config.info_refresh = Some(info_refresh.clone());
        let tunnel = Arc::new(Tunnel::new(tunnel_config, backend.clone(), info));
        Ok(Self {
            backend,
            tunnel,
            intake,
            tunnel_cancel: CancellationToken::new(),
            info_triggers: InfoTriggers {
                probed,
                refresh: info_refresh,
            },
        })
    }

    /// The backend's name.
    pub fn backend_name(&self) -> String {
        self.backend.info().name
    }

    /// Controls the intake (drain, cancel) and subscribes to its events.
    pub fn intake_handle(&self) -> IntakeHandle {
        self.intake.handle()
    }

    /// How long the tunnel may stay down and still be "reconnecting within its policy": the
    /// longest reconnect delay (with jitter) plus one connection attempt.
    pub fn tunnel_down_limit(&self) -> Duration {
        let config = self.tunnel.config();
        config
            .backoff
            .max
            .mul_f64(1.0 + config.backoff.jitter.max(0.0))
            + config.connect_timeout
    }

    /// Tunnel connection events from now on.
    pub fn tunnel_events(&self) -> broadcast::Receiver<TunnelEvent> {
        self.tunnel.events()
    }

    /// Runs the tunnel and the intake until the intake has drained (see
    /// [`IntakeHandle::drain`]); then closes the tunnel (WebSocket close 1000) and shuts the
    /// backend down. Statuses not accepted by then stay in the outbox for the next start.
    pub async fn run(self) -> Result<IntakeSummary, WorkerError> {
        let Self {
            backend,
            tunnel,
            intake,
            tunnel_cancel,
            info_triggers,
        } = self;
        let triggers = tokio::spawn(info_triggers.forward(intake.handle().subscribe()));
        let tunnel_task = {
            let tunnel = tunnel.clone();
            let cancel = tunnel_cancel.clone();
            tokio::spawn(
                async move {
                    if let Err(err) = tunnel.run(cancel).await {
                        tracing::error!(%err, "the tunnel cannot run");
                    }
                }
                .in_current_span(),
            )
        };
        let summary = intake.run().await;
        triggers.abort();
        tunnel_cancel.cancel();
        if tokio::time::timeout(Duration::from_secs(5), tunnel_task)
            .await
            .is_err()
        {
            tracing::warn!("the tunnel did not close within 5 s; dropping it");
        }
        backend.shutdown().await;
        Ok(summary?)
    }
}

/// `--exit-if-unused`: drains the intake once no task has arrived, run or finished for `idle`
/// (the worker then returns, so the process exits 0). Returns the watching task; it ends
/// after draining.
pub fn drain_when_unused(handle: IntakeHandle, idle: Duration) -> tokio::task::JoinHandle<()> {
    use crate::intake::IntakeEvent;
    use tokio::sync::broadcast::error::RecvError;
    let mut events = handle.subscribe();
    tokio::spawn(async move {
        let mut running = std::collections::HashSet::new();
        let mut deadline = tokio::time::Instant::now() + idle;
        loop {
            let event = if running.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {
                        crate::logging::notice(&format!(
                            "No task for {:.0?} (--exit-if-unused); stopping.",
                            idle
                        ));
                        handle.drain();
                        return;
                    }
                    event = events.recv() => event,
                }
            } else {
                events.recv().await
            };
            match event {
                Ok(IntakeEvent::Polled { .. }) => {
                    deadline = tokio::time::Instant::now() + idle;
                }
                Ok(IntakeEvent::Started { task_id, .. }) => {
                    running.insert(task_id);
                }
                Ok(IntakeEvent::Finished { task_id, .. }) => {
                    running.remove(&task_id);
                    deadline = tokio::time::Instant::now() + idle;
                }
                Ok(IntakeEvent::Draining) | Err(RecvError::Closed) => return,
                Ok(_) | Err(RecvError::Lagged(_)) => {}
            }
        }
    })
}

/// The agent-info JSON for each control stream: cached capabilities (re-probed in the
/// background when stale), the work directory, the backend's own fields (opencode's version)
/// and, while a usage limit pauses the intake, `usage_limit` (`paused_until`, RFC 3339, and
/// the limit's `kind`; see docs/protocol.md).
fn agent_info_source(
    cache: Arc<CapabilityCache>,
    backend: Arc<dyn Backend>,
    intake: IntakeHandle,
    workdir: &Path,
) -> InfoSource {
    let workdir = workdir.to_string_lossy().into_owned();
    Arc::new(move || {
        let cache = cache.clone();
        let backend = backend.clone();
        let workdir = workdir.clone();
        let pause = intake.usage_pause();
        async move {
            let mut fields = backend.agent_info_fields().await;
            if let Some(pause) = pause {
                fields.insert(
                    "usage_limit".to_owned(),
                    serde_json::json!({
                        "paused_until": crate::intake::usage::utc(pause.until),
                        "kind": pause.kind,
                    }),
                );
            }
            cache.agent_info_json_now(&workdir, &fields).await
        }
        .boxed()
    })
}

/// Delivers, in the background, what other sessions left in the outbox (statuses their hosts
/// could not report before they stopped), using each session's own server and proxy token.
/// Sessions still run by a live process are left to it; outboxes without a session file are
/// reported once in the log. Returns the background task.
pub fn spawn_leftover_flush(
    store: crate::state::SessionStore,
    outbox_root: PathBuf,
    current_sandbox: String,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut delivered = 0usize;
        let root = outbox_root.clone();
        let leftovers = tokio::task::spawn_blocking(move || {
            crate::intake::outbox::sandboxes_with_leftovers(&root)
        })
        .await
        .unwrap_or_default();
        for sandbox_id in leftovers {
            if sandbox_id == current_sandbox {
                continue;
            }
            let session = match store.load(&sandbox_id) {
                Ok(session) => session,
                Err(err) => {
                    tracing::warn!(
                        sandbox_id,
                        %err,
                        "the outbox holds statuses of a sandbox without a session file; they cannot be delivered"
                    );
                    continue;
                }
            };
            if session.is_alive() {
                continue;
            }
            let mut config = IntakeConfig::new(
                session.server_url.clone(),
                session.proxy_token.clone(),
                session.sandbox_id.clone(),
                PathBuf::from(&session.dir),
            );
            config.outbox_dir = outbox_root.clone();
            config.shutdown_report_timeout = Duration::from_secs(30);
            match crate::intake::flush_outbox(config).await {
                Ok(summary) => {
                    let sent = (summary.replayed + summary.orphaned + summary.resumed)
                        .saturating_sub(summary.unreported);
                    delivered += sent;
                    tracing::info!(
                        sandbox_id,
                        sent,
                        left = summary.unreported,
                        "delivered statuses left by an earlier session"
                    );
                }
                Err(err) => {
                    tracing::warn!(sandbox_id, %err, "cannot deliver an earlier session's statuses")
                }
            }
        }
        delivered
    })
}
