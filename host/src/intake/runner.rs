//! Runs one task: bridge setup, the backend call, event forwarding, the final status.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tracing::Instrument;

use agentserver_common::grace::{Graceful, call_with_grace};
use agentserver_plugin_api::{EventSink, FailureKind, Task, TaskEvent, TaskOutcome, TaskStatus};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::bridge::{
    BridgeError, BridgeSession, BridgeTimings, Inbound, InboundHandler, MAX_BATCH, WorkerState,
};
use super::client::{FinalStatus, PolledTask, StatusBody};
use super::{IntakeEvent, Shared};
use agentserver_common::backoff::{Backoff, BackoffPolicy};

/// `failure_reason` of a task cancelled because the host shut down.
pub const SHUTDOWN_REASON: &str = "cancelled by host shutdown";
/// `failure_reason` of a task cancelled by a `control_request` interrupt from the bridge.
pub const INTERRUPT_REASON: &str = "cancelled by interrupt request";
/// `failure_reason` (after [`SYSTEM_PREFIX`]) of a task found unfinished at start: the host
/// died (crash, SIGKILL, power loss) while running it.
pub const ORPHAN_REASON: &str = "the host stopped while the task was running";
/// `failure_reason` (after [`SYSTEM_PREFIX`]) of a task an earlier run received but never
/// started, reported by a host that cannot run it ([`super::flush_outbox`]).
pub const NOT_STARTED_REASON: &str =
    "the host stopped after receiving the task and before starting it; it never ran";
/// Prefix of the `failure_reason` of system failures (the host or the backend broke).
pub const SYSTEM_PREFIX: &str = "system error: ";

/// Why a task was stopped from outside the backend.
#[derive(Clone, Debug)]
enum StopCause {
    Interrupt,
    Epoch(String),
}

/// Per-task cancellation with the first reason recorded.
#[derive(Debug)]
struct TaskCtl {
    cancel: CancellationToken,
    cause: Mutex<Option<StopCause>>,
}

impl TaskCtl {
    fn stop(&self, cause: StopCause) {
        {
            let mut c = self.cause.lock().unwrap_or_else(|e| e.into_inner());
            if c.is_none() {
                *c = Some(cause);
            }
        }
        self.cancel.cancel();
    }

    fn cause(&self) -> Option<StopCause> {
        self.cause.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A `failure_reason` that says whose fault a failure was: user failures keep the backend's
/// text, system failures get [`SYSTEM_PREFIX`].
pub fn failure_reason(kind: Option<FailureKind>, reason: &str) -> String {
    let reason = if reason.trim().is_empty() {
        "task failed"
    } else {
        reason
    };
    match kind {
        Some(FailureKind::System) => format!("{SYSTEM_PREFIX}{reason}"),
        Some(FailureKind::User) | None => reason.to_owned(),
    }
}

fn system(reason: impl std::fmt::Display) -> StatusBody {
    StatusBody::failed(format!("{SYSTEM_PREFIX}{reason}"))
}

/// Writes the final status to the outbox (durably, off the async threads) and hands it to the
/// reporter.
enum ExecResult {
    Outcome(TaskOutcome),
    Panicked(String),
    Abandoned,
    NotStarted,
}

/// Runs one polled task to its final status (always ends in [`finalize`]).
pub(crate) async fn run_task(shared: Arc<Shared>, polled: PolledTask, cancel: CancellationToken) {
    let task_id = polled.task_id.clone();
    let outbox = shared.delivery.outbox.clone();
    let marker = polled.clone();
    let marked = tokio::task::spawn_blocking(move || outbox.mark_started(&marker))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(err) = marked {
        // Only the restart behaviour is at stake: the marker still says "not started", so a
        // crash during the task would run it again at the next start. Say so.
        tracing::warn!(task = %task_id, %err, "cannot note on disk that the task started; a crash now would run it again at the next start");
    }
    let _ = shared.events.send(IntakeEvent::Started {
        task_id: task_id.clone(),
        at: std::time::Instant::now(),
    });
    let ctl = Arc::new(TaskCtl {
        cancel: cancel.clone(),
        cause: Mutex::new(None),
    });
    let mut task = polled.into_task(&shared.workdir);

    let bridge = match setup_bridge(&shared, &mut task, &ctl).await {
        Ok(b) => b.map(|session| {
            Arc::new(TaskBridge {
                session,
                refetched: AtomicBool::new(false),
                timings: shared.bridge.timings().clone(),
            })
        }),
        Err(reason) => {
            let body = if cancel.is_cancelled() {
                decide(&shared, ExecResult::NotStarted, &ctl)
            } else {
                system(reason)
            };
            shared.delivery.finalize(&task_id, body).await;
            return;
        }
    };
    let mut bridge_ok = bridge.is_some();
    if let Some(b) = &bridge
        && !cancel.is_cancelled()
    {
        match b.call(Op::State(WorkerState::Running)).await {
            Ok(()) => {}
            Err(CallError::Epoch(msg)) => {
                bridge_ok = false;
                ctl.stop(StopCause::Epoch(msg));
            }
            Err(CallError::Failed(err)) => {
                tracing::warn!(task = %task_id, %err, "cannot report worker state `running`");
            }
        }
    }

    let (sink, rx) = EventSink::channel(shared.config.event_buffer);
    let finish = CancellationToken::new();
    let mut forwarder = tokio::spawn(
        forward_events(
            rx,
            bridge.clone().filter(|_| bridge_ok),
            ctl.clone(),
            finish.clone(),
            task_id.clone(),
        )
        .in_current_span(),
    );

    // The task's own git worktree, when the sandbox isolates tasks (`isolation = "worktree"`).
    let mut workspace = None;
    let prepared = match (&shared.config.workspaces, cancel.is_cancelled()) {
        (Some(worktrees), false) => {
            match prepare_workspace(worktrees, &task_id, &task.session_id).await {
                Ok(ws) => {
                    task.workdir = ws.path().to_string_lossy().into_owned();
                    workspace = Some(ws);
                    Ok(())
                }
                Err(err) => Err(err),
            }
        }
        _ => Ok(()),
    };
    let host_sink = sink.clone();
    let result = if cancel.is_cancelled() {
        drop(sink);
        ExecResult::NotStarted
    } else if let Err(err) = prepared {
        drop(sink);
        tracing::error!(task = %task_id, %err, "cannot prepare the task's worktree");
        ExecResult::Outcome(TaskOutcome::failed(
            FailureKind::System,
            format!("cannot prepare the task's git worktree: {err}"),
        ))
    } else {
        let backend = shared.backend.clone();
        let exec_cancel = cancel.clone();
        let exec = tokio::spawn(
            async move { backend.execute(task, sink, exec_cancel).await }.in_current_span(),
        );
        // The backend holds the same cancellation token: nothing more to tell it on a stop.
        let grace = shared.config.cancel_timeout;
        match call_with_grace(exec, cancel.cancelled(), |_| {}, grace).await {
            Graceful::Finished(r)
            | Graceful::Stopped {
                result: Some(r), ..
            } => from_join(r),
            Graceful::Stopped { result: None, .. } => {
                tracing::warn!(task = %task_id, timeout = ?grace, "backend did not stop after cancellation; abandoning it");
                ExecResult::Abandoned
            }
        }
    };

    // Nothing the task started outlives it (whatever the backend swept itself): the processes
    // tagged with the task's scope, wherever they went (`setsid`, double forks).
    {
        let scope = agentserver_common::process::Scope::task(&task_id);
        let _ = tokio::task::spawn_blocking(move || scope.sweep()).await;
    }
    // The worktree's work goes to its branch (nothing is lost), the branch is told in an
    // event, and the directory goes.
    if let (Some(worktrees), Some(ws)) = (&shared.config.workspaces, workspace) {
        finish_workspace(worktrees, ws, &task_id, &host_sink).await;
    }
    drop(host_sink);
    // Flush the events the backend emitted, then leave the bridge idle.
    finish.cancel();
    match tokio::time::timeout(shared.config.flush_timeout, &mut forwarder).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => bridge_ok = false,
        Ok(Err(err)) => {
            tracing::error!(task = %task_id, %err, "event forwarder failed");
            bridge_ok = false;
        }
        Err(_) => {
            tracing::warn!(task = %task_id, timeout = ?shared.config.flush_timeout, "gave up flushing task events to the bridge");
            forwarder.abort();
            bridge_ok = false;
        }
    }
    if let Some(b) = &bridge {
        if bridge_ok && !matches!(ctl.cause(), Some(StopCause::Epoch(_))) {
            match b.call(Op::State(WorkerState::Idle)).await {
                Ok(()) => {}
                Err(CallError::Epoch(msg)) => ctl.stop(StopCause::Epoch(msg)),
                Err(CallError::Failed(err)) => {
                    tracing::debug!(task = %task_id, %err, "cannot report worker state `idle`");
                }
            }
        }
        b.session.close();
    }

    let body = decide(&shared, result, &ctl);
    shared.delivery.finalize(&task_id, body).await;
}

/// A new worktree for the task (the session's, when the task continues a session the server
/// named).
async fn prepare_workspace(
    worktrees: &Arc<agentserver_workspace::Worktrees>,
    task_id: &str,
    session_id: &str,
) -> Result<agentserver_workspace::TaskWorkspace, String> {
    let worktrees = worktrees.clone();
    let (task_id, session) = (task_id.to_owned(), session_id.to_owned());
    tokio::task::spawn_blocking(move || {
        let session = (!session.is_empty()).then_some(session.as_str());
        worktrees.prepare(&task_id, session)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Commits what the task left to its branch, removes the worktree, and emits
/// `{"type":"system","subtype":"agentserver_workspace","branch":…,"commit":…,"committed_changes":…}`
/// (docs/protocol.md). A failed commit keeps the directory (the error names it) for the next
/// start to retry.
async fn finish_workspace(
    worktrees: &Arc<agentserver_workspace::Worktrees>,
    ws: agentserver_workspace::TaskWorkspace,
    task_id: &str,
    events: &EventSink,
) {
    let worktrees = worktrees.clone();
    let finished = tokio::task::spawn_blocking(move || worktrees.finish(ws)).await;
    let event = match finished {
        Ok(Ok(f)) => {
            tracing::info!(task = %task_id, branch = %f.branch, commit = %f.head_commit, committed_changes = f.committed_changes, "the task's work is on its branch; worktree removed");
            serde_json::json!({
                "type": "system",
                "subtype": "agentserver_workspace",
                "branch": f.branch,
                "commit": f.head_commit,
                "committed_changes": f.committed_changes,
            })
        }
        Ok(Err(err)) => {
            tracing::error!(task = %task_id, %err, "cannot finish the task's worktree");
            serde_json::json!({
                "type": "system",
                "subtype": "agentserver_workspace",
                "error": err.to_string(),
            })
        }
        Err(err) => {
            tracing::error!(task = %task_id, %err, "the worktree finish panicked");
            return;
        }
    };
    if let Ok(event) = TaskEvent::from_value(&event) {
        events.emit(event).await;
    }
}

fn from_join(r: Result<TaskOutcome, tokio::task::JoinError>) -> ExecResult {
    match r {
        Ok(outcome) => ExecResult::Outcome(outcome),
        Err(err) if err.is_panic() => {
            let payload = err.into_panic();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            ExecResult::Panicked(msg)
        }
        Err(_) => ExecResult::Abandoned,
    }
}

/// The status body for a task's end.
fn decide(shared: &Shared, result: ExecResult, ctl: &TaskCtl) -> StatusBody {
    let cause = ctl.cause();
    if let Some(StopCause::Epoch(msg)) = cause {
        return system(msg);
    }
    let stop_reason = match cause {
        Some(StopCause::Interrupt) => Some(INTERRUPT_REASON),
        _ if ctl.cancel.is_cancelled() && shared.cancel_all.is_cancelled() => Some(SHUTDOWN_REASON),
        _ => None,
    };
    match result {
        ExecResult::Outcome(o) if o.status == TaskStatus::Completed => {
            shared.usage.completed();
            StatusBody {
                status: FinalStatus::Completed,
                result: o.result,
                total_cost_usd: o.total_cost_usd,
                num_turns: o.num_turns,
                failure_reason: None,
            }
        }
        ExecResult::Outcome(o) => match stop_reason {
            Some(r) => StatusBody::failed(r),
            None => {
                let reason = o.failure_reason.unwrap_or_default();
                if let Some(limit) = o.usage_limit.as_ref() {
                    let pause = shared.usage.hit(limit);
                    tracing::warn!(
                        until = %super::usage::utc(pause.until),
                        kind = pause.kind.as_deref().unwrap_or("unknown"),
                        resets_at = ?pause.resets_at,
                        "usage limit reached; this sandbox takes no task until then"
                    );
                    let _ = shared.events.send(IntakeEvent::Paused {
                        until: pause.until,
                        kind: pause.kind.clone(),
                    });
                    StatusBody::failed(failure_reason(o.failure_kind, &pause.reason(&reason)))
                } else if o.status == TaskStatus::Cancelled {
                    StatusBody::failed(failure_reason(
                        o.failure_kind,
                        &format!("cancelled: {reason}"),
                    ))
                } else {
                    StatusBody::failed(failure_reason(o.failure_kind, &reason))
                }
            }
        },
        ExecResult::Panicked(msg) => match stop_reason {
            Some(r) => StatusBody::failed(r),
            None => system(format!("backend panicked: {msg}")),
        },
        ExecResult::Abandoned | ExecResult::NotStarted => {
            StatusBody::failed(stop_reason.unwrap_or(SHUTDOWN_REASON))
        }
    }
}

/// Retries `f` while it fails transiently, for at most `timings.retry_deadline`, stopping early
/// when `cancel` fires.
async fn retry<T, F, Fut>(
    timings: &BridgeTimings,
    cancel: &CancellationToken,
    mut f: F,
) -> Result<T, BridgeError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BridgeError>>,
{
    let deadline = Instant::now() + timings.retry_deadline;
    let mut backoff = Backoff::new(BackoffPolicy::capped(
        timings.retry_initial,
        timings.retry_max,
    ));
    loop {
        match f().await {
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                if Instant::now() + delay > deadline {
                    return Err(e);
                }
                tracing::debug!(err = %e, retry_in = ?delay, "bridge request failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Err(e),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            other => return other,
        }
    }
}

/// Sets up the bridge for a task. `Ok(None)`: run without it (server has none, or it is
/// unreachable). `Err`: fail the task with this reason (upstream wording).
async fn setup_bridge(
    shared: &Shared,
    task: &mut Task,
    ctl: &Arc<TaskCtl>,
) -> Result<Option<BridgeSession>, String> {
    if !shared.config.use_bridge {
        return Ok(None);
    }
    let timings = shared.bridge.timings();
    let cancel = &ctl.cancel;
    if task.session_id.is_empty() {
        let title = format!("Task {}", task.task_id);
        match retry(timings, cancel, || shared.bridge.create_session(&title)).await {
            Ok(id) => task.session_id = id,
            Err(e) => return bridge_unusable(shared, &task.task_id, "create session", e),
        }
    }
    let sid = task.session_id.clone();
    let creds = match retry(timings, cancel, || shared.bridge.fetch_credentials(&sid)).await {
        Ok(c) => c,
        Err(e) => return bridge_unusable(shared, &task.task_id, "fetch credentials", e),
    };
    let handler: InboundHandler = {
        let ctl = ctl.clone();
        Arc::new(move |ev| {
            if ev == Inbound::Interrupt {
                tracing::info!("interrupt requested through the bridge; cancelling the task");
                ctl.stop(StopCause::Interrupt);
            }
        })
    };
    let attached = retry(timings, cancel, || {
        BridgeSession::attach(shared.bridge.clone(), &sid, creds.clone(), handler.clone())
    })
    .await;
    match attached {
        Ok(s) => Ok(Some(s)),
        Err(e) => bridge_unusable(shared, &task.task_id, "attach bridge", e),
    }
}

fn bridge_unusable(
    shared: &Shared,
    task_id: &str,
    step: &str,
    err: BridgeError,
) -> Result<Option<BridgeSession>, String> {
    match err {
        BridgeError::NotFound(_) => {
            if !shared.no_bridge_logged.swap(true, Ordering::SeqCst) {
                tracing::info!(
                    "the server has no CCR v2 bridge (404 on {step}); tasks run without event streaming and report only their final status"
                );
                let _ = shared.events.send(IntakeEvent::NoBridge);
            }
            Ok(None)
        }
        e if e.is_transient() => {
            tracing::warn!(task = %task_id, err = %e, "bridge unreachable ({step}); running the task without event streaming");
            Ok(None)
        }
        e => Err(format!("{step}: {e}")),
    }
}

/// The bridge of one task, with the "refetch credentials once on 409" rule.
struct TaskBridge {
    session: BridgeSession,
    refetched: AtomicBool,
    timings: BridgeTimings,
}

enum Op<'a> {
    State(WorkerState),
    Batch(&'a [TaskEvent]),
}

enum CallError {
    /// A second epoch mismatch: the task must fail with this reason.
    Epoch(String),
    /// Anything else (after retries).
    Failed(BridgeError),
}

impl TaskBridge {
    async fn call(&self, op: Op<'_>) -> Result<(), CallError> {
        let never = CancellationToken::new();
        loop {
            let r = retry(&self.timings, &never, || async {
                match &op {
                    Op::State(s) => self.session.report_state(*s).await,
                    Op::Batch(events) => self.session.write_batch(events).await,
                }
            })
            .await;
            match r {
                Ok(()) => return Ok(()),
                Err(BridgeError::EpochMismatch) => {
                    let sid = self.session.session_id().to_owned();
                    if self.refetched.swap(true, Ordering::SeqCst) {
                        return Err(CallError::Epoch(format!(
                            "bridge epoch mismatch: another worker took over session {sid} (again after re-registering)"
                        )));
                    }
                    let old = self.session.epoch();
                    match retry(&self.timings, &never, || self.session.refetch_credentials()).await
                    {
                        Ok(epoch) => {
                            tracing::warn!(session = %sid, old, epoch, "bridge epoch mismatch; re-registered this worker");
                        }
                        Err(e) => {
                            return Err(CallError::Epoch(format!(
                                "bridge epoch mismatch on session {sid}; re-registering failed: {e}"
                            )));
                        }
                    }
                }
                Err(e) => return Err(CallError::Failed(e)),
            }
        }
    }
}

type BatchFuture = Pin<Box<dyn Future<Output = Result<(), CallError>> + Send>>;

/// Events the forwarder holds (posting or waiting to be posted) before it stops reading the
/// backend's channel. With the channel's own capacity this bounds what a task buffers; a backend
/// emitting faster than the bridge accepts then waits in `EventSink::emit` (backpressure).
const MAX_QUEUED_EVENTS: usize = 4 * MAX_BATCH;

/// Drains the backend's events and posts them in order, in batches of at most [`MAX_BATCH`]
/// consecutive events. Holds at most [`MAX_QUEUED_EVENTS`]: past that it stops reading, so the
/// backend's channel fills and the backend waits. Without a bridge it discards what it reads.
/// Ends when `finish` fires and everything received was posted. Returns false if the bridge
/// had to be given up.
async fn forward_events(
    mut rx: mpsc::Receiver<TaskEvent>,
    mut bridge: Option<Arc<TaskBridge>>,
    ctl: Arc<TaskCtl>,
    finish: CancellationToken,
    task_id: String,
) -> bool {
    let mut healthy = true;
    let mut queue: VecDeque<TaskEvent> = VecDeque::new();
    let mut open = true;
    let mut closing = false;
    let mut inflight: Option<(BatchFuture, usize)> = None;
    loop {
        if inflight.is_none() {
            match &bridge {
                Some(b) if !queue.is_empty() => {
                    let n = queue.len().min(MAX_BATCH);
                    let batch: Vec<TaskEvent> = queue.iter().take(n).cloned().collect();
                    let b = b.clone();
                    inflight = Some((Box::pin(async move { b.call(Op::Batch(&batch)).await }), n));
                }
                Some(_) => {}
                None => queue.clear(),
            }
        }
        if !open && inflight.is_none() && queue.is_empty() {
            return healthy;
        }
        tokio::select! {
            ev = rx.recv(), if open && queue.len() < MAX_QUEUED_EVENTS => match ev {
                Some(e) => queue.push_back(e),
                None => open = false,
            },
            _ = finish.cancelled(), if !closing => {
                closing = true;
                rx.close();
            }
            r = async { inflight.as_mut().map(|(f, _)| f).expect("guarded").await }, if inflight.is_some() => {
                let (_, n) = inflight.take().expect("guarded");
                match r {
                    Ok(()) => {
                        queue.drain(..n);
                    }
                    Err(CallError::Epoch(msg)) => {
                        ctl.stop(StopCause::Epoch(msg));
                        bridge = None;
                        healthy = false;
                    }
                    Err(CallError::Failed(err)) => {
                        tracing::warn!(task = %task_id, %err, "cannot post task events to the bridge; the rest of this task's events are dropped");
                        bridge = None;
                        healthy = false;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_say_whose_fault() {
        assert_eq!(
            failure_reason(Some(FailureKind::User), "max turns"),
            "max turns"
        );
        assert_eq!(
            failure_reason(Some(FailureKind::System), "claude not found"),
            "system error: claude not found"
        );
        assert_eq!(failure_reason(None, "  "), "task failed");
    }
}
