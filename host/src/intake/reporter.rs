//! Delivers outbox entries: `PUT …/status` with backoff until the server accepts (2xx), says
//! the task is gone (404/410: the entry is dropped) or refuses the body for good (400/422: the
//! entry moves to `rejected/`). Entries stay on disk until then, so a crash only delays them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::IntakeEvent;
use super::backoff::Backoff;
use super::client::{ClientError, TaskClient, is_final_status};
use super::outbox::{Outbox, OutboxEntry};

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
}

/// The delivery side of the outbox. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Reporter {
    inner: Arc<Inner>,
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
        tokio::spawn(async move {
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
        });
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

/// Whether the server already holds a final status for the task (a lost answer to an
/// earlier attempt, or a crash between the answer and the outbox removal). Any error → no.
async fn already_final(inner: &Inner, task_id: &str) -> bool {
    match inner.client.task_status(task_id).await {
        Ok(status) if is_final_status(&status) => {
            tracing::info!(task = %task_id, %status, "the server already has a final status for this task; not sending it again");
            true
        }
        Ok(_) => false,
        Err(err) => {
            tracing::debug!(task = %task_id, %err, "cannot check the task's status; sending it");
            false
        }
    }
}

async fn deliver_loop(inner: &Inner, entry: OutboxEntry, mut verify_first: bool) {
    let mut backoff = Backoff::new(inner.timings.initial, inner.timings.max);
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            _ = inner.stop.cancelled() => return,
            r = async {
                if verify_first && already_final(inner, &entry.task_id).await {
                    return Ok(());
                }
                inner.client.put_status(&entry.task_id, &entry.body).await
            } => r,
        };
        // An answer that never arrived leaves it open whether the server applied the status.
        verify_first = matches!(attempt, Err(ClientError::Transport(_)));
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
            Err(ClientError::Status {
                status: status @ (400 | 422),
                body,
            }) => {
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
