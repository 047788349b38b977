//! What a running host is doing, for operators: the Prometheus metrics (this module owns
//! every metric name), the `/healthz` verdict and the `agentserver status` document.
//!
//! [`Metrics`] is fed from the event streams that already exist: each sandbox's
//! [`IntakeEvent`]s and [`TunnelEvent`]s ([`Metrics::attach`]). Gauges that are a state rather
//! than an event (statuses waiting in the outbox, tasks running) are read when scraped.
//! Labels are per sandbox (and outcome or error class), never per task.
//!
//! Serving (the `--metrics-listen` HTTP endpoint and the status socket) is [`crate::ops`].

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::intake::{IntakeEvent, IntakeHandle};
use crate::tunnel::TunnelEvent;

/// Every metric name starts with this (`agentserver_…`).
pub const PREFIX: &str = "agentserver";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SandboxLabel {
    sandbox: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    sandbox: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabels {
    sandbox: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    sandbox: String,
    result: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The metric families (names and help texts are in [`Families::register`]).
#[derive(Default)]
struct Families {
    tasks_received: Family<SandboxLabel, Counter>,
    tasks_finished: Family<OutcomeLabels, Counter>,
    tasks_running: Family<SandboxLabel, Gauge>,
    outbox_pending: Family<SandboxLabel, Gauge>,
    status_reports: Family<ResultLabels, Counter>,
    polls: Family<SandboxLabel, Counter>,
    poll_errors: Family<ClassLabels, Counter>,
    last_poll_success: Family<SandboxLabel, FloatGauge>,
    tunnel_connected: Family<SandboxLabel, Gauge>,
    tunnel_connects: Family<SandboxLabel, Counter>,
    tunnel_reconnects: Family<SandboxLabel, Counter>,
    tunnel_disconnects: Family<SandboxLabel, Counter>,
    agent_info_sends: Family<ResultLabels, Counter>,
    backend_paused_until: Family<SandboxLabel, FloatGauge>,
    intake_running: Family<SandboxLabel, Gauge>,
}

impl Families {
    fn register(&self, registry: &mut Registry) {
        let r = registry;
        r.register(
            "tasks_received",
            "Tasks received from polls",
            self.tasks_received.clone(),
        );
        r.register(
            "tasks_finished",
            "Tasks given a final status, by outcome (completed, failed, cancelled)",
            self.tasks_finished.clone(),
        );
        r.register(
            "tasks_running",
            "Tasks a backend is running now",
            self.tasks_running.clone(),
        );
        r.register(
            "outbox_pending",
            "Final statuses in the outbox not yet accepted by the server",
            self.outbox_pending.clone(),
        );
        r.register(
            "status_reports",
            "Final statuses the server settled, by result (accepted, dropped)",
            self.status_reports.clone(),
        );
        r.register(
            "polls",
            "Task polls the server answered readably",
            self.polls.clone(),
        );
        r.register(
            "poll_errors",
            "Failed task polls, by class (timeout, transport, auth, rate_limited, server, http, decode)",
            self.poll_errors.clone(),
        );
        r.register(
            "last_poll_success_timestamp_seconds",
            "Unix time of the last successful task poll (0: none yet)",
            self.last_poll_success.clone(),
        );
        r.register(
            "tunnel_connected",
            "1 while the tunnel is connected, else 0",
            self.tunnel_connected.clone(),
        );
        r.register(
            "tunnel_connects",
            "Tunnel connections established (the first and every reconnect)",
            self.tunnel_connects.clone(),
        );
        r.register(
            "tunnel_reconnects",
            "Tunnel connections established after the first",
            self.tunnel_reconnects.clone(),
        );
        r.register(
            "tunnel_disconnects",
            "Tunnel connections lost and connection attempts failed",
            self.tunnel_disconnects.clone(),
        );
        r.register(
            "agent_info_sends",
            "Agent-info messages on the tunnel, by result (ok, error)",
            self.agent_info_sends.clone(),
        );
        r.register(
            "backend_paused_until_timestamp_seconds",
            "Unix time until which the backend is paused by a usage limit (0: never paused; a time in the past: no longer paused)",
            self.backend_paused_until.clone(),
        );
        r.register(
            "intake_running",
            "1 while the task intake runs (polls), 0 once it drains",
            self.intake_running.clone(),
        );
    }
}

/// The identity of a sandbox served by this process.
#[derive(Clone, Debug)]
pub struct SandboxInfo {
    /// Sandbox id.
    pub sandbox_id: String,
    /// Server URL.
    pub server: String,
    /// Backend name.
    pub backend: String,
    /// How long the tunnel may be down (between attempts) and still count as reconnecting
    /// within its policy for `/healthz`.
    pub tunnel_down_limit: Duration,
}

/// The tunnel as `status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelState {
    /// Not connected yet.
    Connecting,
    /// Connected.
    Connected,
    /// Lost or refused; the next attempt is scheduled.
    Reconnecting,
    /// The tunnel task ended.
    Stopped,
}

/// The intake as `status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IntakeState {
    /// Polling and running tasks.
    Running,
    /// No more polls; running tasks finish.
    Draining,
    /// Done.
    Stopped,
}

struct SandboxView {
    info: SandboxInfo,
    intake: IntakeHandle,
    intake_state: IntakeState,
    tunnel: TunnelState,
    tunnel_since: SystemTime,
    /// When the tunnel last went down (or attaching, before the first connection).
    down_since: Option<Instant>,
    token_rejected: bool,
    reconnects: u64,
    running: BTreeMap<String, (Instant, SystemTime)>,
    received: u64,
    finished: BTreeMap<String, u64>,
    last_poll_ok: Option<SystemTime>,
    last_error: Option<(SystemTime, String)>,
}

/// The metrics registry and the per-sandbox state behind `/healthz` and `status`.
pub struct Metrics {
    registry: Registry,
    families: Families,
    sandboxes: Mutex<BTreeMap<String, SandboxView>>,
    started: SystemTime,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Feeds [`Metrics`] from one sandbox's event streams; dropping it stops that.
#[derive(Debug)]
pub struct Attached {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Metrics {
    /// An empty registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let families = Families::default();
        families.register(&mut registry);
        Self {
            registry,
            families,
            sandboxes: Mutex::new(BTreeMap::new()),
            started: SystemTime::now(),
        }
    }

    fn views(&self) -> MutexGuard<'_, BTreeMap<String, SandboxView>> {
        self.sandboxes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts following a sandbox: its intake's events (subscribed now, so call it before the
    /// worker runs) and its tunnel's.
    pub fn attach(
        self: &Arc<Self>,
        info: SandboxInfo,
        intake: IntakeHandle,
        tunnel: broadcast::Receiver<TunnelEvent>,
    ) -> Attached {
        let label = SandboxLabel {
            sandbox: info.sandbox_id.clone(),
        };
        // Every per-sandbox series exists from the start (a 0 is an answer; a missing series
        // is not).
        let f = &self.families;
        f.tasks_received.get_or_create(&label).inc_by(0);
        f.tasks_running.get_or_create(&label).set(0);
        f.outbox_pending.get_or_create(&label).set(0);
        f.polls.get_or_create(&label).inc_by(0);
        f.last_poll_success.get_or_create(&label).set(0.0);
        f.tunnel_connected.get_or_create(&label).set(0);
        f.tunnel_connects.get_or_create(&label).inc_by(0);
        f.tunnel_reconnects.get_or_create(&label).inc_by(0);
        f.tunnel_disconnects.get_or_create(&label).inc_by(0);
        f.backend_paused_until.get_or_create(&label).set(0.0);
        f.intake_running.get_or_create(&label).set(1);
        let events = intake.subscribe();
        self.views().insert(
            info.sandbox_id.clone(),
            SandboxView {
                info: info.clone(),
                intake,
                intake_state: IntakeState::Running,
                tunnel: TunnelState::Connecting,
                tunnel_since: SystemTime::now(),
                down_since: Some(Instant::now()),
                token_rejected: false,
                reconnects: 0,
                running: BTreeMap::new(),
                received: 0,
                finished: BTreeMap::new(),
                last_poll_ok: None,
                last_error: None,
            },
        );
        let intake_task = tokio::spawn(follow_intake(self.clone(), label.clone(), events));
        let tunnel_task = tokio::spawn(follow_tunnel(self.clone(), label, tunnel));
        Attached {
            tasks: vec![intake_task, tunnel_task],
        }
    }

    /// Marks a sandbox's intake as finished (its worker returned).
    pub fn intake_stopped(&self, sandbox_id: &str) {
        if let Some(view) = self.views().get_mut(sandbox_id) {
            view.intake_state = IntakeState::Stopped;
        }
        self.families
            .intake_running
            .get_or_create(&SandboxLabel {
                sandbox: sandbox_id.to_owned(),
            })
            .set(0);
    }

    fn with_view(&self, label: &SandboxLabel, f: impl FnOnce(&mut SandboxView)) {
        if let Some(view) = self.views().get_mut(&label.sandbox) {
            f(view);
        }
    }

    fn on_intake(&self, label: &SandboxLabel, event: IntakeEvent) {
        let f = &self.families;
        match event {
            IntakeEvent::Polled { .. } => {
                f.tasks_received.get_or_create(label).inc();
                self.with_view(label, |v| v.received += 1);
            }
            IntakeEvent::Started { task_id, .. } => {
                self.with_view(label, |v| {
                    v.running
                        .insert(task_id, (Instant::now(), SystemTime::now()));
                });
            }
            IntakeEvent::Finished {
                task_id, status, ..
            } => {
                let outcome = status.status.to_string();
                f.tasks_finished
                    .get_or_create(&OutcomeLabels {
                        sandbox: label.sandbox.clone(),
                        outcome: outcome.clone(),
                    })
                    .inc();
                self.with_view(label, |v| {
                    v.running.remove(&task_id);
                    *v.finished.entry(outcome).or_default() += 1;
                });
            }
            IntakeEvent::StatusAcked { .. } => {
                f.status_reports
                    .get_or_create(&ResultLabels {
                        sandbox: label.sandbox.clone(),
                        result: "accepted".into(),
                    })
                    .inc();
            }
            IntakeEvent::StatusDropped {
                task_id,
                http_status,
            } => {
                f.status_reports
                    .get_or_create(&ResultLabels {
                        sandbox: label.sandbox.clone(),
                        result: "dropped".into(),
                    })
                    .inc();
                self.with_view(label, |v| {
                    v.last_error = Some((
                        SystemTime::now(),
                        format!("the server refused the status of {task_id} (HTTP {http_status})"),
                    ));
                });
            }
            IntakeEvent::PollSucceeded => {
                let now = SystemTime::now();
                f.polls.get_or_create(label).inc();
                f.last_poll_success
                    .get_or_create(label)
                    .set(unix_seconds(now));
                self.with_view(label, |v| v.last_poll_ok = Some(now));
            }
            IntakeEvent::PollFailed { class, error } => {
                f.poll_errors
                    .get_or_create(&ClassLabels {
                        sandbox: label.sandbox.clone(),
                        class: class.to_owned(),
                    })
                    .inc();
                self.with_view(label, |v| {
                    v.last_error = Some((SystemTime::now(), format!("task poll failed: {error}")));
                });
            }
            IntakeEvent::Draining | IntakeEvent::Cancelling => {
                f.intake_running.get_or_create(label).set(0);
                self.with_view(label, |v| {
                    if v.intake_state == IntakeState::Running {
                        v.intake_state = IntakeState::Draining;
                    }
                });
            }
            IntakeEvent::Paused { until, .. } => {
                f.backend_paused_until
                    .get_or_create(label)
                    .set(unix_seconds(until));
            }
            IntakeEvent::NoBridge => {}
        }
    }

    fn on_tunnel(&self, label: &SandboxLabel, event: TunnelEvent) {
        let f = &self.families;
        match event {
            TunnelEvent::Connected { attempt } => {
                f.tunnel_connected.get_or_create(label).set(1);
                f.tunnel_connects.get_or_create(label).inc();
                let reconnect = attempt > 1;
                if reconnect {
                    f.tunnel_reconnects.get_or_create(label).inc();
                }
                self.with_view(label, |v| {
                    v.tunnel = TunnelState::Connected;
                    v.tunnel_since = SystemTime::now();
                    v.down_since = None;
                    v.token_rejected = false;
                    if reconnect {
                        v.reconnects += 1;
                    }
                });
            }
            TunnelEvent::Disconnected {
                reason,
                token_rejected,
                ..
            } => {
                f.tunnel_connected.get_or_create(label).set(0);
                f.tunnel_disconnects.get_or_create(label).inc();
                self.with_view(label, |v| {
                    if v.tunnel == TunnelState::Connected {
                        v.tunnel_since = SystemTime::now();
                        v.down_since = Some(Instant::now());
                    }
                    v.tunnel = TunnelState::Reconnecting;
                    v.down_since.get_or_insert_with(Instant::now);
                    v.token_rejected = token_rejected;
                    v.last_error = Some((SystemTime::now(), format!("tunnel: {reason}")));
                });
            }
            TunnelEvent::InfoSent { ok } => {
                f.agent_info_sends
                    .get_or_create(&ResultLabels {
                        sandbox: label.sandbox.clone(),
                        result: if ok { "ok" } else { "error" }.into(),
                    })
                    .inc();
            }
            TunnelEvent::Stopped => {
                f.tunnel_connected.get_or_create(label).set(0);
                self.with_view(label, |v| {
                    v.tunnel = TunnelState::Stopped;
                    v.tunnel_since = SystemTime::now();
                });
            }
        }
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        for view in self.views().values() {
            let label = SandboxLabel {
                sandbox: view.info.sandbox_id.clone(),
            };
            self.families
                .outbox_pending
                .get_or_create(&label)
                .set(saturating_i64(view.intake.outbox_pending()));
            self.families
                .tasks_running
                .get_or_create(&label)
                .set(saturating_i64(view.running.len()));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// `Ok` while every sandbox's intake runs and its tunnel is connected or reconnecting
    /// within its policy; else one line saying what is wrong.
    pub fn health(&self) -> Result<(), String> {
        health_of(&self.views())
    }

    /// The `agentserver status` document of this process.
    pub fn status(&self, metrics_listen: Option<String>) -> HostStatus {
        let views = self.views();
        HostStatus {
            pid: std::process::id(),
            version: crate::VERSION.to_owned(),
            started_at: rfc3339(self.started),
            metrics_listen,
            unhealthy: health_of(&views).err(),
            sandboxes: views
                .values()
                .map(|v| SandboxStatus {
                    sandbox_id: v.info.sandbox_id.clone(),
                    server: v.info.server.clone(),
                    backend: v.info.backend.clone(),
                    intake: name_of(v.intake_state),
                    tunnel: name_of(v.tunnel),
                    tunnel_since: rfc3339(v.tunnel_since),
                    tunnel_reconnects: v.reconnects,
                    tasks_running: v
                        .running
                        .iter()
                        .map(|(id, (started, at))| RunningTask {
                            task_id: id.clone(),
                            started_at: rfc3339(*at),
                            age_seconds: started.elapsed().as_secs(),
                        })
                        .collect(),
                    tasks_received: v.received,
                    tasks_finished: v.finished.clone(),
                    outbox_pending: v.intake.outbox_pending(),
                    last_poll_success: v.last_poll_ok.map(rfc3339),
                    paused_until: v.intake.usage_pause().map(|p| rfc3339(p.until)),
                    last_error: v.last_error.as_ref().map(|(at, message)| LastError {
                        at: rfc3339(*at),
                        message: message.clone(),
                    }),
                })
                .collect(),
        }
    }
}

/// The rule behind [`Metrics::health`].
fn health_of(views: &BTreeMap<String, SandboxView>) -> Result<(), String> {
    if views.is_empty() {
        return Err("no sandbox is running".into());
    }
    for view in views.values() {
        let id = &view.info.sandbox_id;
        match view.intake_state {
            IntakeState::Running => {}
            IntakeState::Draining => {
                return Err(format!("sandbox {id}: the intake is draining"));
            }
            IntakeState::Stopped => {
                return Err(format!("sandbox {id}: the intake has stopped"));
            }
        }
        match view.tunnel {
            TunnelState::Connected => {}
            TunnelState::Stopped => return Err(format!("sandbox {id}: the tunnel stopped")),
            TunnelState::Connecting | TunnelState::Reconnecting => {
                if view.token_rejected {
                    return Err(format!("sandbox {id}: the server rejects the tunnel token"));
                }
                let down = view.down_since.map(|t| t.elapsed()).unwrap_or_default();
                if down > view.info.tunnel_down_limit {
                    return Err(format!(
                        "sandbox {id}: the tunnel has been down for {} s (its reconnect policy allows {} s)",
                        down.as_secs(),
                        view.info.tunnel_down_limit.as_secs()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// What `agentserver status` prints for one host process.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct HostStatus {
    /// Process id.
    pub pid: u32,
    /// Host version.
    pub version: String,
    /// When the process started (RFC 3339).
    pub started_at: String,
    /// Where `/metrics` and `/healthz` are served, if anywhere.
    pub metrics_listen: Option<String>,
    /// `None` when healthy, else why not (the `/healthz` line).
    pub unhealthy: Option<String>,
    /// The sandboxes it serves.
    pub sandboxes: Vec<SandboxStatus>,
}

/// One sandbox in [`HostStatus`].
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct SandboxStatus {
    /// Sandbox id.
    pub sandbox_id: String,
    /// Server URL.
    pub server: String,
    /// Backend name.
    pub backend: String,
    /// The intake's state: `running`, `draining`, `stopped`.
    pub intake: String,
    /// The tunnel's state: `connecting`, `connected`, `reconnecting`, `stopped`.
    pub tunnel: String,
    /// Since when the tunnel is in that state (RFC 3339).
    pub tunnel_since: String,
    /// Reconnects since the start.
    pub tunnel_reconnects: u64,
    /// Tasks running now.
    pub tasks_running: Vec<RunningTask>,
    /// Tasks received since the start.
    pub tasks_received: u64,
    /// Final statuses by outcome since the start.
    pub tasks_finished: BTreeMap<String, u64>,
    /// Final statuses not yet accepted by the server.
    pub outbox_pending: usize,
    /// Last successful task poll (RFC 3339).
    pub last_poll_success: Option<String>,
    /// Until when a usage limit pauses this sandbox's intake (RFC 3339), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until: Option<String>,
    /// The last thing that went wrong.
    pub last_error: Option<LastError>,
}

/// A task running now.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct RunningTask {
    /// Task id.
    pub task_id: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Seconds since it started.
    pub age_seconds: u64,
}

/// The last failure seen.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct LastError {
    /// When (RFC 3339).
    pub at: String,
    /// What, in words.
    pub message: String,
}

fn name_of(value: impl Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn rfc3339(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn follow_intake(
    metrics: Arc<Metrics>,
    label: SandboxLabel,
    mut events: broadcast::Receiver<IntakeEvent>,
) {
    loop {
        match events.recv().await {
            Ok(event) => metrics.on_intake(&label, event),
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "metrics missed intake events");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn follow_tunnel(
    metrics: Arc<Metrics>,
    label: SandboxLabel,
    mut events: broadcast::Receiver<TunnelEvent>,
) {
    loop {
        match events.recv().await {
            Ok(event) => metrics.on_tunnel(&label, event),
            Err(RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "metrics missed tunnel events");
            }
            Err(RecvError::Closed) => return,
        }
    }
}
