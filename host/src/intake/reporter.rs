//! Delivers outbox entries: `PUT …/status` with backoff until the server accepts (2xx), says
//! the task is gone (404/410: the entry is dropped) or refuses the body for good (400/422: the
//! entry moves to `rejected/`). Entries stay on disk until then, so a crash only delays them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::IntakeEvent;
use super::client::{ClientError, StatusBody, TaskClient, is_final_status};
use super::outbox::{Outbox, OutboxEntry};
use agentserver_common::backoff::{Backoff, BackoffPolicy};

/// How the reporter retries.
#[derive(Clone, Debug)]
pub(crate) struct ReportTimings {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

struct Inner {
    client: TaskClient,
    outbox: Outbox,
    timings: ReportTimings,
    events: broadcast::Sender<IntakeEvent>,
    stop: CancellationToken,
    in_flight: Mutex<HashSet<String>>,
    pending: AtomicUsize,
    idle: Notify,
    /// The outbox's owner lock ([`Outbox::claim`]), held for as long as anything of this
    /// reporter lives: a delivery still running after its intake returned keeps it, so another
    /// host cannot replay an entry whose last attempt is still on its way.
    owner: Mutex<Option<crate::fsutil::LockFile>>,
}

/// The delivery side of the outbox. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Reporter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl Reporter {
    pub(crate) fn new(
        client: TaskClient,
        outbox: Outbox,
        timings: ReportTimings,
        events: broadcast::Sender<IntakeEvent>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                outbox,
                timings,
                events,
                stop,
                in_flight: Mutex::new(HashSet::new()),
                pending: AtomicUsize::new(0),
                idle: Notify::new(),
                owner: Mutex::new(None),
            }),
        }
    }

    /// Starts delivering an entry that is already on disk (no-op if it is being delivered).
    /// `verify_first`: the entry may have been delivered already (replayed after a restart),
    /// so ask the server for the task's status before sending it again.
    pub(crate) fn deliver(&self, entry: OutboxEntry, verify_first: bool) {
        {
            let mut set = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !set.insert(entry.task_id.clone()) {
                return;
            }
        }
        self.inner.pending.fetch_add(1, Ordering::SeqCst);
        let inner = self.inner.clone();
        tokio::spawn(
            async move {
                let task_id = entry.task_id.clone();
                deliver_loop(&inner, entry, verify_first).await;
                inner
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&task_id);
                if inner.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                    inner.idle.notify_waiters();
                }
            }
            .in_current_span(),
        );
    }

    /// Keeps the outbox's owner lock until the reporter and every delivery it started are
    /// gone.
    pub(crate) fn hold_owner_lock(&self, lock: crate::fsutil::LockFile) {
        *self.inner.owner.lock().unwrap_or_else(|e| e.into_inner()) = Some(lock);
    }

    /// Entries being delivered right now.
    pub(crate) fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::SeqCst)
    }

    /// Waits until no delivery is in progress.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What the server says about a task whose status may already have been applied.
enum Check {
    /// It holds a final status: do not send ours again.
    Final,
    /// It does not (or cannot be asked on this server): send.
    Send,
    /// The question got no answer (no connection, timeout, 5xx, 429): ask again later,
    /// never resend blind.
    Unknown(ClientError),
}

/// Asks `GET /api/agent/tasks/{id}` whether the task already holds a final status (a lost
/// answer to an earlier attempt, or a crash between the answer and the outbox removal).
async fn check_final(inner: &Inner, task_id: &str) -> Check {
    match inner.client.task_status(task_id).await {
        Ok(status) if is_final_status(&status) => {
            tracing::info!(task = %task_id, %status, "the server already has a final status for this task; not sending it again");
            Check::Final
        }
        Ok(_) => Check::Send,
        Err(err) if err.is_ambiguous() || matches!(err.status(), Some(429 | 503)) => {
            Check::Unknown(err)
        }
        // A definite refusal (404: the task is gone, and the PUT will say so; another 4xx:
        // a server without the lookup) or an undecodable detail: the check cannot help.
        Err(err) => {
            tracing::debug!(task = %task_id, %err, "cannot check the task's status on this server; sending it");
            Check::Send
        }
    }
}

/// The answer to one delivery attempt.
enum Attempt {
    /// Delivered now, or found already delivered.
    Delivered,
    /// The status PUT failed.
    Put(ClientError),
    /// The status may have been applied and the server could not say: not sent.
    Unverified(ClientError),
}

/// The caps a status is cut to, one after the other, while the server answers 413.
const SHORTENED_CAPS: [usize; 3] = [64 * 1024, 4 * 1024, 0];

/// Cuts `entry` (from its `full` body) to the next of [`SHORTENED_CAPS`] after `done` earlier
/// cuts, keeping the full entry in `rejected/` (once) and the cut one in the outbox; `None`
/// when there is no shorter form left.
fn shorten_for_server(
    inner: &Inner,
    entry: &mut OutboxEntry,
    full: &StatusBody,
    done: usize,
) -> Option<usize> {
    let cap = *SHORTENED_CAPS.get(done)?;
    if done == 0
        && let Err(err) = inner.outbox.keep_full(entry)
    {
        tracing::error!(task = %entry.task_id, %err, "cannot keep the full status text before shortening it");
    }
    entry.body = full.shortened(cap);
    if let Err(err) = inner.outbox.write(entry) {
        tracing::error!(task = %entry.task_id, %err, "cannot write the shortened status to the outbox");
    }
    Some(cap)
}

/// Moves an entry the server refuses for good to `rejected/`.
fn reject(inner: &Inner, entry: &OutboxEntry, status: u16, body: &str) {
    match inner.outbox.reject(&entry.task_id) {
        Ok(path) => {
            tracing::error!(task = %entry.task_id, status, %body, path = %path.display(), "the server refused this task status; kept for inspection")
        }
        Err(err) => {
            tracing::error!(task = %entry.task_id, status, %body, %err, "the server refused this task status")
        }
    }
    let _ = inner.events.send(IntakeEvent::StatusDropped {
        task_id: entry.task_id.clone(),
        http_status: status,
    });
}

async fn deliver_loop(inner: &Inner, mut entry: OutboxEntry, mut verify_first: bool) {
    let mut backoff = Backoff::new(BackoffPolicy::capped(
        inner.timings.initial,
        inner.timings.max,
    ));
    let mut failures = 0u32;
    let mut shortened = 0usize;
    let mut full_body: Option<StatusBody> = None;
    loop {
        if inner.stop.is_cancelled() {
            return;
        }
        // An attempt, once begun, is not cut short by the stop: a request dropped half-way
        // may still be applied by the server after another host took over the outbox.
        let attempt = {
            let r = async {
                if verify_first {
                    match check_final(inner, &entry.task_id).await {
                        Check::Final => return Attempt::Delivered,
                        Check::Unknown(err) => return Attempt::Unverified(err),
                        Check::Send => {}
                    }
                }
                match inner.client.put_status(&entry.task_id, &entry.body).await {
                    Ok(()) => Attempt::Delivered,
                    Err(err) => Attempt::Put(err),
                }
            };
            r.await
        };
        let attempt = match attempt {
            Attempt::Delivered => Ok(()),
            Attempt::Put(err) => {
                // An answer that never arrived, or a gateway's error after the server may
                // have applied it: whether the status is stored is open, so ask first.
                verify_first = err.is_ambiguous();
                Err(err)
            }
            Attempt::Unverified(err) => {
                verify_first = true;
                Err(err)
            }
        };
        match attempt {
            Ok(()) => {
                let at = std::time::Instant::now();
                if let Err(err) = inner.outbox.remove(&entry.task_id) {
                    tracing::error!(task = %entry.task_id, %err, "status delivered but the outbox entry could not be removed");
                }
                if failures > 0 {
                    tracing::info!(task = %entry.task_id, attempts = failures + 1, "task status delivered");
                } else {
                    tracing::debug!(task = %entry.task_id, status = %entry.body.status, "task status delivered");
                }
                let _ = inner.events.send(IntakeEvent::StatusAcked {
                    task_id: entry.task_id.clone(),
                    at,
                });
                return;
            }
            Err(ClientError::Status {
                status: status @ (404 | 410),
                body,
            }) => {
                tracing::warn!(task = %entry.task_id, status, %body, "the server no longer knows this task; dropping its status");
                if let Err(err) = inner.outbox.remove(&entry.task_id) {
                    tracing::error!(task = %entry.task_id, %err, "cannot remove outbox entry");
                }
                let _ = inner.events.send(IntakeEvent::StatusDropped {
                    task_id: entry.task_id.clone(),
                    http_status: status,
                });
                return;
            }
            Err(ClientError::Status { status: 413, body }) => {
                let full = full_body.get_or_insert_with(|| entry.body.clone()).clone();
                match shorten_for_server(inner, &mut entry, &full, shortened) {
                    Some(cap) => {
                        shortened += 1;
                        tracing::warn!(task = %entry.task_id, %body, cap, "the server refused the status as too large; sending it shortened (the full text stays in the outbox's rejected folder)");
                        // 413 means it was not applied: send the shorter one at once.
                        verify_first = false;
                        continue;
                    }
                    None => {
                        tracing::error!(task = %entry.task_id, %body, "the server refuses even the shortest form of this status as too large");
                        reject(inner, &entry, 413, &body);
                        return;
                    }
                }
            }
            Err(ClientError::Status {
                status: status @ (400 | 422),
                body,
            }) => {
                reject(inner, &entry, status, &body);
                return;
            }
            Err(ClientError::InvalidTaskId(reason)) => {
                // No URL can carry it (an old entry, or an id recovered from a file name).
                reject(inner, &entry, 0, &reason);
                return;
            }
            Err(err) => {
                failures += 1;
                let delay = backoff.next_delay();
                if failures == 1 {
                    tracing::warn!(task = %entry.task_id, %err, retry_in = ?delay, "cannot report task status yet; will retry");
                } else {
                    tracing::debug!(task = %entry.task_id, %err, failures, retry_in = ?delay, "status report failed again");
                }
                tokio::select! {
                    _ = inner.stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
