//! Task intake (spec §8, §9.1–9.3): polling, the CCR v2 bridge client, the durable status outbox.
//!
//! [`Intake`] polls the server for tasks, runs each on a [`Backend`] (up to
//! [`IntakeConfig::max_concurrent_tasks`] at once), streams the backend's events to the task's
//! bridge session, and reports every task's final status exactly once through the durable
//! [`outbox`]. [`IntakeHandle`] drives shutdown: [`IntakeHandle::drain`] stops taking tasks and
//! gives running ones [`IntakeConfig::grace_period`] before cancelling them;
//! [`IntakeHandle::cancel_all`] cancels at once; [`IntakeHandle::apply_shutdown`] maps the
//! stages of [`crate::shutdown`] onto these (the binary follows the signals).
//!
//! Invariants:
//! - Every task a poll returned ends with exactly one final status written to the outbox
//!   before it is sent; the outbox is replayed at start.
//! - A backend never blocks the host: its events are drained continuously, a cancelled
//!   backend that does not return within [`IntakeConfig::cancel_timeout`] is abandoned.

pub mod bridge;
pub mod capacity;
pub mod client;
mod delivery;
pub mod outbox;
mod reporter;
mod runner;
pub mod usage;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tracing::Instrument;

use agentserver_plugin_api::Backend;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use bridge::BridgeTimings;
pub use client::{FinalStatus, PolledTask, StatusBody, TaskTimeouts};
pub use runner::{
    INTERRUPT_REASON, NOT_STARTED_REASON, ORPHAN_REASON, SHUTDOWN_REASON, SYSTEM_PREFIX,
    failure_reason,
};

use agentserver_common::backoff::jittered;
use bridge::BridgeClient;
use client::TaskClient;
use delivery::StatusDelivery;
use reporter::Reporter;

use crate::secret::Secret;

/// Everything [`Intake`] needs to know.
#[derive(Clone, Debug)]
pub struct IntakeConfig {
    /// Server URL (a trailing `/` is removed).
    pub server: String,
    /// The sandbox's proxy token (Bearer for poll, status and session creation).
    pub proxy_token: Secret,
    /// The sandbox polled for.
    pub sandbox_id: String,
    /// Directory tasks run in.
    pub workdir: PathBuf,
    /// Pause between polls while idle (default 5 s), jittered by [`IntakeConfig::poll_jitter`].
    pub poll_interval: Duration,
    /// Relative jitter of the poll interval (default 0.1 = ±10 %).
    pub poll_jitter: f64,
    /// Tasks run at once (default 1, the upstream behaviour).
    pub max_concurrent_tasks: usize,
    /// After [`IntakeHandle::drain`], how long running tasks may go on before they are
    /// cancelled (default 30 s).
    pub grace_period: Duration,
    /// How long a cancelled backend gets to return before it is abandoned (default 10 s).
    pub cancel_timeout: Duration,
    /// How long, after a task ends, its remaining events may take to reach the bridge
    /// (default 60 s).
    pub flush_timeout: Duration,
    /// How long [`Intake::run`] waits at the end for statuses to be accepted; what is left
    /// stays in the outbox for the next start (default 10 s).
    pub shutdown_report_timeout: Duration,
    /// The outbox root (default `~/.agentserver/outbox`).
    pub outbox_dir: PathBuf,
    /// First retry delay of a status report (default 1 s)…
    pub report_backoff_initial: Duration,
    /// …doubling up to this (default 60 s).
    pub report_backoff_max: Duration,
    /// Use the CCR v2 bridge when the server has one (default true).
    pub use_bridge: bool,
    /// Bridge timers.
    pub bridge: BridgeTimings,
    /// Capacity of a task's event channel (default 256).
    pub event_buffer: usize,
    /// HTTP timeouts of polls and status reports (default 60 s each).
    pub timeouts: TaskTimeouts,
    /// The sandbox's task worktrees (`isolation = "worktree"`): each task runs in its own, on
    /// a branch named after it (default: none, every task in `workdir`).
    pub workspaces: Option<Arc<agentserver_workspace::Worktrees>>,
    /// The host-wide task capacity this intake shares with the host's other sandboxes
    /// (default: unlimited, only [`IntakeConfig::max_concurrent_tasks`] counts).
    pub capacity: capacity::HostCapacity,
}

impl IntakeConfig {
    /// A configuration with the defaults for everything but the identity of the sandbox.
    pub fn new(
        server: impl Into<String>,
        proxy_token: Secret,
        sandbox_id: impl Into<String>,
        workdir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            server: server.into(),
            proxy_token,
            sandbox_id: sandbox_id.into(),
            workdir: workdir.into(),
            poll_interval: Duration::from_secs(5),
            poll_jitter: 0.1,
            max_concurrent_tasks: 1,
            grace_period: Duration::from_secs(30),
            cancel_timeout: Duration::from_secs(10),
            flush_timeout: Duration::from_secs(60),
            shutdown_report_timeout: Duration::from_secs(10),
            outbox_dir: crate::paths::outbox_dir(),
            report_backoff_initial: Duration::from_secs(1),
            report_backoff_max: Duration::from_secs(60),
            use_bridge: true,
            bridge: BridgeTimings::default(),
            event_buffer: 256,
            timeouts: TaskTimeouts::default(),
            capacity: capacity::HostCapacity::unlimited(),
            workspaces: None,
        }
    }
}

/// Errors that stop [`Intake`] from starting.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The configuration cannot work.
    #[error("invalid intake configuration: {0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    /// The outbox could not be opened or read.
    #[error(transparent)]
    Outbox(#[from] outbox::OutboxError),
}

/// What happens inside the intake, for logs, metrics, tests and benchmarks.
#[derive(Clone, Debug)]
pub enum IntakeEvent {
    /// A poll returned this task (at this time).
    Polled {
        /// The task.
        task_id: String,
        /// When the poll response arrived.
        at: std::time::Instant,
    },
    /// The task started (bridge setup begins).
    Started {
        /// The task.
        task_id: String,
        /// When.
        at: std::time::Instant,
    },
    /// The server has no bridge (sent once).
    NoBridge,
    /// The task ended; its status is in the outbox.
    Finished {
        /// The task.
        task_id: String,
        /// What will be sent.
        status: StatusBody,
        /// When it was written to the outbox.
        at: std::time::Instant,
    },
    /// The server accepted the task's status.
    StatusAcked {
        /// The task.
        task_id: String,
        /// When the 2xx arrived.
        at: std::time::Instant,
    },
    /// The server said the task is gone (404/410) or refused the status for good (400/422).
    StatusDropped {
        /// The task.
        task_id: String,
        /// The HTTP status.
        http_status: u16,
    },
    /// A poll got an answer the intake could read (with or without tasks).
    PollSucceeded,
    /// A poll failed; the intake tries again after the poll interval.
    PollFailed {
        /// What kind of failure ([`client::ClientError::class`]): a label, never per task.
        class: &'static str,
        /// The error, in words.
        error: String,
    },
    /// Draining began: no more polls.
    Draining,
    /// Running tasks are being cancelled.
    Cancelling,
    /// A task ran into a usage limit: no task is taken until `until`.
    Paused {
        /// When intake resumes.
        until: std::time::SystemTime,
        /// The limit's kind, when the provider named it.
        kind: Option<String>,
    },
}

/// What [`Intake::run`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntakeSummary {
    /// Tasks received from polls.
    pub tasks_received: u64,
    /// Outbox entries replayed at start.
    pub replayed: usize,
    /// Tasks an earlier run was running when it died (reported as failed at start).
    pub orphaned: usize,
    /// Tasks an earlier run received but never started (run now; or, by [`flush_outbox`],
    /// reported as never started).
    pub resumed: usize,
    /// Poll items that could not be run (malformed, or an unusable id).
    pub malformed: usize,
    /// Statuses still undelivered at exit (kept in the outbox).
    pub unreported: usize,
}

/// Delivers what an earlier run left in the outbox of `config.sandbox_id` (undelivered final
/// statuses, and tasks that were running when that host died) without polling for new tasks,
/// waiting at most [`IntakeConfig::shutdown_report_timeout`]; what is still undelivered then
/// stays on disk. `agentserver run` uses it for the sessions it is *not* serving, so a host
/// that comes back as a new sandbox still reports the old sandbox's tasks.
pub async fn flush_outbox(config: IntakeConfig) -> Result<IntakeSummary, IntakeError> {
    let (tasks, _) = clients(&config)?;
    let (events, _) = broadcast::channel(16);
    let delivery = StatusDelivery::open(&config, &tasks, events)?;
    let mut summary = IntakeSummary::default();
    if !delivery.claim(None).await? {
        tracing::info!(sandbox_id = %config.sandbox_id, "another live host is delivering this sandbox's statuses; leaving them to it");
        delivery.stop();
        return Ok(summary);
    }
    let found = delivery.recover(false).await?;
    summary.replayed = found.replayed;
    summary.orphaned = found.orphaned;
    summary.resumed = found.resumed;
    summary.unreported = delivery.finish().await;
    Ok(summary)
}

/// The server's task endpoints and its bridge, on one HTTP client.
fn clients(config: &IntakeConfig) -> Result<(TaskClient, BridgeClient), IntakeError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(IntakeError::Http)?;
    let tasks = TaskClient::new(
        http.clone(),
        &config.server,
        config.proxy_token.clone(),
        &config.sandbox_id,
        config.timeouts,
    );
    let bridge = BridgeClient::new(
        http,
        &config.server,
        config.proxy_token.clone(),
        config.bridge.clone(),
    );
    Ok((tasks, bridge))
}

/// Controls a running [`Intake`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct IntakeHandle {
    drain: CancellationToken,
    cancel: CancellationToken,
    events: broadcast::Sender<IntakeEvent>,
    ledger: Arc<delivery::Ledger>,
    reporter: Reporter,
    usage: Arc<usage::UsageGate>,
}

impl IntakeHandle {
    /// The usage-limit pause in force, if any (see [`usage`]).
    pub fn usage_pause(&self) -> Option<usage::Pause> {
        self.usage.current()
    }

    /// Final statuses written to the outbox and not yet accepted (or dropped) by the server.
    pub fn outbox_pending(&self) -> usize {
        self.reporter.pending()
    }

    /// Stops taking tasks; running tasks get the grace period, then are cancelled.
    pub fn drain(&self) {
        if !self.drain.is_cancelled() {
            let _ = self.events.send(IntakeEvent::Draining);
        }
        self.drain.cancel();
    }

    /// Stops taking tasks and cancels running ones now.
    pub fn cancel_all(&self) {
        self.drain();
        if !self.cancel.is_cancelled() {
            let _ = self.events.send(IntakeEvent::Cancelling);
        }
        self.cancel.cancel();
    }

    /// Whether [`IntakeHandle::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Whether running tasks were cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// For a forced exit: writes a `failed` status ([`SHUTDOWN_REASON`]) to the outbox for
    /// every task received and not finished, so the next start reports them. Returns how many.
    /// Only call it right before the process exits (the tasks are abandoned, not stopped).
    pub fn persist_unfinished(&self) -> usize {
        self.ledger.persist_unfinished()
    }

    /// Applies a shutdown stage: drain, cancel running tasks, or (exit now) save a status for
    /// every unfinished task ([`IntakeHandle::persist_unfinished`]). Returns how many tasks a
    /// forced exit abandons (0 for the other stages).
    pub fn apply_shutdown(&self, stage: crate::shutdown::ShutdownStage) -> usize {
        use crate::shutdown::ShutdownStage;
        match stage {
            ShutdownStage::Drain => {
                self.drain();
                0
            }
            ShutdownStage::CancelAll => {
                self.cancel_all();
                0
            }
            ShutdownStage::ExitNow => self.persist_unfinished(),
        }
    }

    /// Receives [`IntakeEvent`]s from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<IntakeEvent> {
        self.events.subscribe()
    }
}

/// State shared by the loop, the task runners and the reporter.
pub(crate) struct Shared {
    pub(crate) config: IntakeConfig,
    pub(crate) tasks: TaskClient,
    pub(crate) bridge: BridgeClient,
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) delivery: StatusDelivery,
    pub(crate) events: broadcast::Sender<IntakeEvent>,
    pub(crate) no_bridge_logged: AtomicBool,
    pub(crate) cancel_all: CancellationToken,
    pub(crate) workdir: String,
    pub(crate) usage: Arc<usage::UsageGate>,
    pub(crate) capacity: capacity::HostCapacity,
}

/// The task intake of one sandbox.
pub struct Intake {
    shared: Arc<Shared>,
    handle: IntakeHandle,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("server", &self.shared.config.server)
            .field("sandbox_id", &self.shared.config.sandbox_id)
            .finish_non_exhaustive()
    }
}

impl Intake {
    /// Prepares the intake (HTTP client, outbox). The caller has already started the backend
    /// ([`Backend::start`]).
    pub fn new(config: IntakeConfig, backend: Arc<dyn Backend>) -> Result<Self, IntakeError> {
        if config.server.trim().is_empty() {
            return Err(IntakeError::Config("the server URL is empty".into()));
        }
        if config.sandbox_id.trim().is_empty() {
            return Err(IntakeError::Config("the sandbox id is empty".into()));
        }
        if config.max_concurrent_tasks == 0 {
            return Err(IntakeError::Config(
                "max_concurrent_tasks must be at least 1".into(),
            ));
        }
        let (tasks, bridge) = clients(&config)?;
        let (events, _) = broadcast::channel(4096);
        let delivery = StatusDelivery::open(&config, &tasks, events.clone())?;
        let handle = IntakeHandle {
            drain: CancellationToken::new(),
            cancel: CancellationToken::new(),
            events: events.clone(),
            ledger: delivery.ledger.clone(),
            reporter: delivery.reporter.clone(),
            usage: Arc::new(usage::UsageGate::default()),
        };
        let workdir = config.workdir.to_string_lossy().into_owned();
        let capacity = config.capacity.clone();
        let shared = Arc::new(Shared {
            config,
            tasks,
            bridge,
            backend,
            delivery,
            events,
            no_bridge_logged: AtomicBool::new(false),
            cancel_all: handle.cancel.clone(),
            workdir,
            usage: handle.usage.clone(),
            capacity,
        });
        Ok(Self { shared, handle })
    }

    /// A handle to drain or cancel the intake while [`Intake::run`] runs.
    pub fn handle(&self) -> IntakeHandle {
        self.handle.clone()
    }

    /// Runs until drained: replays the outbox, polls, runs tasks, and after
    /// [`IntakeHandle::drain`] waits for running tasks (cancelling them when the grace period
    /// ends) and for their statuses (up to [`IntakeConfig::shutdown_report_timeout`]).
    pub async fn run(self) -> Result<IntakeSummary, IntakeError> {
        let shared = self.shared.clone();
        let mut summary = IntakeSummary::default();
        let drain = self.handle.drain.clone();
        if !shared.delivery.claim(Some(&drain)).await? {
            tracing::info!(sandbox_id = %shared.config.sandbox_id, "another live host is delivering this sandbox's statuses; leaving them to it");
            shared.delivery.stop();
            return Ok(summary);
        }
        let found = shared.delivery.recover(!drain.is_cancelled()).await?;
        summary.replayed = found.replayed;
        summary.orphaned = found.orphaned;
        summary.resumed = found.resumed;
        let mut queue: VecDeque<PolledTask> = found.to_run.into();
        if let Some(worktrees) = &shared.config.workspaces {
            recover_workspaces(worktrees, &queue).await;
        }

        let max = shared.config.max_concurrent_tasks;
        let mut running: JoinSet<()> = JoinSet::new();
        let mut next_poll = Instant::now();
        let mut poll_failures = 0u32;

        // A slot of the host-wide capacity taken for the next task (held only while a task
        // is about to start or a poll is out, never while waiting for the poll interval).
        let mut slot: Option<capacity::Slot> = None;
        loop {
            if drain.is_cancelled() {
                break;
            }
            // A usage limit: no task starts and none is taken until it resets.
            let paused_until = shared.usage.current().map(|p| p.until_instant);
            if paused_until.is_some() {
                // Other sandboxes may use the slot meanwhile.
                slot = None;
            }
            while paused_until.is_none() && running.len() < max && !queue.is_empty() {
                let Some(taken) = slot.take().or_else(|| shared.capacity.try_take()) else {
                    break;
                };
                if let Some(task) = queue.pop_front() {
                    spawn_task(&shared, &mut running, task, taken);
                }
            }
            let local_room = running.len() < max;
            let can_poll = local_room && queue.is_empty();
            let poll_at = match paused_until {
                Some(until) => next_poll.max(until),
                None => next_poll,
            };
            // Waiting for the pause's end matters as soon as a slot is free.
            let can_start = can_poll || (paused_until.is_some() && local_room);
            let due = can_poll && paused_until.is_none() && Instant::now() >= next_poll;
            if due && slot.is_none() {
                slot = shared.capacity.try_take();
            }
            // Room here but none in the host: wait for another sandbox's task to end.
            let wants_slot = paused_until.is_none()
                && local_room
                && slot.is_none()
                && (due || !queue.is_empty());
            if due && slot.is_some() {
                let polled = tokio::select! {
                    r = shared.tasks.poll() => Some(r),
                    _ = shared.cancel_all.cancelled() => None,
                };
                let Some(polled) = polled else { break };
                let at = std::time::Instant::now();
                let interval = jittered(shared.config.poll_interval, shared.config.poll_jitter);
                next_poll = match polled {
                    Ok(batch) => {
                        if poll_failures > 0 {
                            tracing::info!("task polling works again");
                            poll_failures = 0;
                        }
                        let got = take_polled(&shared, batch, at, &mut queue, &mut summary).await;
                        // Poll again as soon as there is room after tasks came.
                        if got {
                            Instant::now()
                        } else {
                            slot = None;
                            Instant::now() + interval
                        }
                    }
                    Err(err) => {
                        poll_failures += 1;
                        poll_failed(&shared, &err, poll_failures);
                        slot = None;
                        Instant::now() + interval
                    }
                };
                continue;
            }
            let wake_at = (can_start && !wants_slot).then_some(poll_at);
            tokio::select! {
                _ = drain.cancelled() => break,
                taken = shared.capacity.take(), if wants_slot => slot = Some(taken),
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Err(err) = done {
                        tracing::error!(%err, "task runner failed");
                    }
                    // A slot is free: poll again at once.
                    next_poll = Instant::now();
                }
                _ = sleep_until_opt(wake_at) => {}
            }
        }

        drain_running(&shared, running, queue).await;
        // Give pending statuses a chance to reach the server.
        summary.unreported = shared.delivery.finish().await;
        Ok(summary)
    }
}

/// One successful poll: malformed items are reported, good ones noted as received (on disk
/// and in the ledger) and queued. Returns whether any task came.
async fn take_polled(
    shared: &Shared,
    batch: client::PollBatch,
    at: std::time::Instant,
    queue: &mut VecDeque<PolledTask>,
    summary: &mut IntakeSummary,
) -> bool {
    let _ = shared.events.send(IntakeEvent::PollSucceeded);
    summary.malformed += batch.malformed.len();
    for bad in batch.malformed {
        report_malformed(shared, bad).await;
    }
    let tasks = batch.tasks;
    if tasks.is_empty() {
        return false;
    }
    tracing::debug!(count = tasks.len(), "received tasks");
    summary.tasks_received += tasks.len() as u64;
    let outbox = shared.delivery.outbox.clone();
    let copies = tasks.clone();
    let marked = tokio::task::spawn_blocking(move || {
        outbox.mark_received(&copies).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    if let Err(err) = marked {
        tracing::error!(%err, "cannot note received tasks on disk");
    }
    for t in &tasks {
        shared.delivery.ledger.received(&t.task_id);
        let _ = shared.events.send(IntakeEvent::Polled {
            task_id: t.task_id.clone(),
            at,
        });
    }
    queue.extend(tasks);
    true
}

/// One failed poll: said once loudly, then quietly while it keeps failing.
fn poll_failed(shared: &Shared, err: &client::ClientError, failures: u32) {
    let _ = shared.events.send(IntakeEvent::PollFailed {
        class: err.class(),
        error: err.to_string(),
    });
    if failures == 1 {
        tracing::warn!(%err, "task poll failed; will keep trying");
    } else {
        tracing::debug!(%err, failures, "task poll failed");
    }
}

/// The drain: queued tasks are reported failed (shutdown), running ones get the grace
/// period, then are cancelled; returns once every runner has finished.
async fn drain_running(
    shared: &Arc<Shared>,
    mut running: JoinSet<()>,
    mut queue: VecDeque<PolledTask>,
) {
    let queued = queue.len();
    if !running.is_empty() || queued > 0 {
        tracing::info!(
            running = running.len(),
            queued,
            grace = ?shared.config.grace_period,
            "stopping: no new tasks; waiting for running tasks"
        );
    }
    for task in queue.drain(..) {
        shared
            .delivery
            .finalize(&task.task_id, StatusBody::failed(SHUTDOWN_REASON))
            .await;
    }
    let grace = shared.config.grace_period;
    let cancel = shared.cancel_all.clone();
    let grace_timer = tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(grace) => {
                tracing::warn!(grace = ?grace, "grace period over; cancelling running tasks");
                cancel.cancel();
            }
        }
    });
    while let Some(done) = running.join_next().await {
        if let Err(err) = done {
            tracing::error!(%err, "task runner failed");
        }
    }
    grace_timer.abort();
}

/// A poll item that cannot run: reported `failed` with the reason when it has a usable id
/// (the server assigned it, so it must get a final status), logged loudly when it has none.
async fn report_malformed(shared: &Shared, bad: client::MalformedTask) {
    match bad.task_id {
        Some(task_id) => {
            tracing::error!(task = %task_id, reason = %bad.reason, "cannot run a task the server sent; reporting it as failed");
            let _ = shared.events.send(IntakeEvent::Polled {
                task_id: task_id.clone(),
                at: std::time::Instant::now(),
            });
            shared.delivery.ledger.received(&task_id);
            shared
                .delivery
                .finalize(
                    &task_id,
                    StatusBody::failed(format!("{SYSTEM_PREFIX}{}", bad.reason)),
                )
                .await;
        }
        None => {
            tracing::error!(reason = %bad.reason, "the server sent a task this host can neither run nor report (no usable id); it stays assigned on the server");
        }
    }
}

fn spawn_task(
    shared: &Arc<Shared>,
    running: &mut JoinSet<()>,
    task: PolledTask,
    slot: capacity::Slot,
) {
    let shared = shared.clone();
    let cancel = shared.cancel_all.child_token();
    running.spawn(
        async move {
            // The host-wide slot is given back when the task's runner ends.
            let _slot = slot;
            let task_id = task.task_id.clone();
            let fut = std::panic::AssertUnwindSafe(runner::run_task(shared.clone(), task, cancel));
            if let Err(panic) = futures_util::FutureExt::catch_unwind(fut).await {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(task = %task_id, %msg, "task runner panicked");
                // The runner panics only before finalizing (finalize itself does not panic).
                if !shared.delivery.outbox.path_of(&task_id).exists() {
                    shared
                        .delivery
                        .finalize(
                            &task_id,
                            StatusBody::failed(format!("{SYSTEM_PREFIX}internal error: {msg}")),
                        )
                        .await;
                }
            }
        }
        .in_current_span(),
    );
}

/// At start: the worktrees of tasks that already have a final status get their leftovers
/// committed and are removed (a task about to run again keeps its own), then the disk cap.
async fn recover_workspaces(
    worktrees: &Arc<agentserver_workspace::Worktrees>,
    queue: &VecDeque<PolledTask>,
) {
    let to_run: std::collections::HashSet<String> =
        queue.iter().map(|t| t.task_id.clone()).collect();
    let worktrees = worktrees.clone();
    let recovered =
        tokio::task::spawn_blocking(move || worktrees.recover(|task| !to_run.contains(task))).await;
    match recovered {
        Ok(Ok(r)) => {
            for f in &r.finished {
                tracing::info!(task = %f.task_id, branch = %f.branch, committed_changes = f.committed_changes, "an earlier run's worktree: its work is on its branch; removed");
            }
            for w in &r.removed_for_cap {
                tracing::info!(path = %w.path.display(), bytes = w.bytes, "removed a clean leftover worktree (disk cap)");
            }
            for failure in &r.failed {
                tracing::warn!(task = %failure.task_id, path = %failure.path.display(), err = %failure.error, "cannot finish an earlier run's worktree; it is kept");
            }
            if r.cap_exceeded {
                tracing::warn!(
                    bytes = r.disk_usage_bytes,
                    "leftover worktrees with uncommitted work exceed the disk cap; they are kept"
                );
            }
        }
        Ok(Err(err)) => tracing::warn!(%err, "cannot recover the worktrees of an earlier run"),
        Err(err) => tracing::warn!(%err, "the worktree recovery panicked"),
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
