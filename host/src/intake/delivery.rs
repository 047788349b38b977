//! Status delivery for one sandbox, on its own: the durable outbox, the reporter that
//! delivers its entries exactly once, the ledger of tasks still owed a status, and the
//! recovery at start (replay what is pending, settle tasks a stopped host left behind).
//!
//! The intake runs tasks around it; [`super::flush_outbox`] uses it alone (no backend, no
//! polling) to deliver what an earlier session left.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::client::{PolledTask, StatusBody, TaskClient};
use super::outbox::{OUTBOX_VERSION, Outbox, OutboxEntry};
use super::reporter::{ReportTimings, Reporter};
use super::{
    IntakeConfig, IntakeError, IntakeEvent, NOT_STARTED_REASON, ORPHAN_REASON, SHUTDOWN_REASON,
    SYSTEM_PREFIX,
};
use crate::fsutil::LockFile;

/// Tasks received and not yet given a final status, so a forced exit can still leave a
/// status for each in the outbox.
#[derive(Debug)]
pub(crate) struct Ledger {
    unfinished: Mutex<HashSet<String>>,
    outbox: Outbox,
    sandbox_id: String,
    server: String,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.unfinished.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A task was received: it is owed a final status.
    pub(crate) fn received(&self, task_id: &str) {
        self.lock().insert(task_id.to_owned());
    }

    /// A task's final status is in the outbox.
    pub(crate) fn finished(&self, task_id: &str) {
        self.lock().remove(task_id);
    }

    /// For a forced exit: writes a `failed` status ([`SHUTDOWN_REASON`]) to the outbox for
    /// every task received and not finished. Returns how many.
    pub(crate) fn persist_unfinished(&self) -> usize {
        let ids: Vec<String> = self.lock().drain().collect();
        for id in &ids {
            let entry = entry_for(
                &self.sandbox_id,
                &self.server,
                id,
                StatusBody::failed(SHUTDOWN_REASON),
            );
            if let Err(err) = self.outbox.write(&entry) {
                tracing::error!(task = %id, %err, "cannot save the status of an abandoned task");
            }
        }
        ids.len()
    }
}

fn entry_for(sandbox_id: &str, server: &str, task_id: &str, body: StatusBody) -> OutboxEntry {
    OutboxEntry {
        version: OUTBOX_VERSION,
        task_id: task_id.to_owned(),
        sandbox_id: sandbox_id.to_owned(),
        server: server.to_owned(),
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        body,
    }
}

/// What [`StatusDelivery::recover`] found.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Pending statuses handed to the reporter again.
    pub(crate) replayed: usize,
    /// Tasks that were running when a host stopped: reported failed.
    pub(crate) orphaned: usize,
    /// Tasks received but never started: to run now (`to_run`) or reported as not started.
    pub(crate) resumed: usize,
    /// The never-started tasks to run now (empty when only flushing).
    pub(crate) to_run: Vec<PolledTask>,
}

/// The outbox, its reporter and its ledger for one sandbox.
#[derive(Debug)]
pub(crate) struct StatusDelivery {
    pub(crate) outbox: Outbox,
    pub(crate) reporter: Reporter,
    pub(crate) ledger: Arc<Ledger>,
    events: broadcast::Sender<IntakeEvent>,
    reporter_stop: CancellationToken,
    sandbox_id: String,
    server: String,
    report_timeout: Duration,
}

impl StatusDelivery {
    /// Opens the sandbox's outbox and starts nothing yet (the reporter delivers what it is
    /// given from the first [`StatusDelivery::finalize`] or [`StatusDelivery::recover`]).
    pub(crate) fn open(
        config: &IntakeConfig,
        tasks: &TaskClient,
        events: broadcast::Sender<IntakeEvent>,
    ) -> Result<Self, IntakeError> {
        let outbox = Outbox::open(&config.outbox_dir, &config.sandbox_id)?;
        let reporter_stop = CancellationToken::new();
        let reporter = Reporter::new(
            tasks.clone(),
            outbox.clone(),
            ReportTimings {
                initial: config.report_backoff_initial,
                max: config.report_backoff_max,
            },
            events.clone(),
            reporter_stop.clone(),
        );
        let ledger = Arc::new(Ledger {
            unfinished: Default::default(),
            outbox: outbox.clone(),
            sandbox_id: tasks.sandbox_id().to_owned(),
            server: tasks.server().to_owned(),
        });
        Ok(Self {
            outbox,
            reporter,
            ledger,
            events,
            reporter_stop,
            sandbox_id: tasks.sandbox_id().to_owned(),
            server: tasks.server().to_owned(),
            report_timeout: config.shutdown_report_timeout,
        })
    }

    /// Takes the outbox's owner lock (one deliverer per sandbox across every host sharing the
    /// state directory) and gives it to the reporter. With `wait_until` `None` (a flush) it
    /// gives up at once when another host holds it; otherwise it waits for it (usually a flush
    /// by another host, which ends within its report timeout; possibly another process serving
    /// the same sandbox, which is said every 30 s) until it gets it or `wait_until` fires.
    /// Returns false when it did not get it (then this delivery must not send anything).
    pub(crate) async fn claim(
        &self,
        wait_until: Option<&CancellationToken>,
    ) -> Result<bool, IntakeError> {
        let Some(lock) = self.claim_lock(wait_until).await? else {
            return Ok(false);
        };
        self.reporter.hold_owner_lock(lock);
        Ok(true)
    }

    async fn claim_lock(
        &self,
        wait_until: Option<&CancellationToken>,
    ) -> Result<Option<LockFile>, IntakeError> {
        const RETRY: Duration = Duration::from_millis(250);
        const SAY_AGAIN: Duration = Duration::from_secs(30);
        if let Some(lock) = self.outbox.claim()? {
            return Ok(Some(lock));
        }
        let Some(stop) = wait_until.filter(|t| !t.is_cancelled()) else {
            return Ok(None);
        };
        let sandbox_id = &self.sandbox_id;
        tracing::info!(%sandbox_id, "another host is delivering this sandbox's statuses; waiting for it to finish");
        let mut said = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                _ = tokio::time::sleep(RETRY) => {}
            }
            if let Some(lock) = self.outbox.claim()? {
                return Ok(Some(lock));
            }
            if said.elapsed() >= SAY_AGAIN {
                said = Instant::now();
                tracing::warn!(%sandbox_id, lock = %self.outbox.dir().join(".owner.lock").display(), "still waiting for another process to release this sandbox's outbox (is another agentserver serving the same sandbox?)");
            }
        }
    }

    /// Recovers what a stopped host left: pending statuses are delivered again (asking the
    /// server first), a task that was running is reported failed, a task received but never
    /// started is handed back to run when `run_unstarted`, or else reported as not started.
    pub(crate) async fn recover(&self, run_unstarted: bool) -> Result<Recovered, IntakeError> {
        let mut found = Recovered::default();
        let pending = self.outbox.pending()?;
        found.replayed = pending.len();
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "reporting task statuses left from an earlier run"
            );
        }
        for entry in pending {
            self.reporter.deliver(entry, true);
        }
        for orphan in self.outbox.orphans()? {
            match orphan.never_started {
                Some(task) if run_unstarted => {
                    tracing::info!(task = %task.task_id, "this task was received but not started when the host stopped; running it now");
                    found.resumed += 1;
                    self.ledger.received(&task.task_id);
                    found.to_run.push(task);
                }
                Some(task) => {
                    found.resumed += 1;
                    let reason = format!("{SYSTEM_PREFIX}{NOT_STARTED_REASON}");
                    self.finalize(&task.task_id, StatusBody::failed(reason))
                        .await;
                }
                None => {
                    tracing::warn!(task = %orphan.task_id, "this task was running when the host stopped; reporting it as failed");
                    found.orphaned += 1;
                    let reason = format!("{SYSTEM_PREFIX}{ORPHAN_REASON}");
                    self.finalize(&orphan.task_id, StatusBody::failed(reason))
                        .await;
                }
            }
        }
        Ok(found)
    }

    /// Gives a task its final status: written to the outbox first (durable), then delivered.
    pub(crate) async fn finalize(&self, task_id: &str, body: StatusBody) {
        let entry = entry_for(
            &self.sandbox_id,
            &self.server,
            task_id,
            body.within_limits(),
        );
        let outbox = self.outbox.clone();
        let copy = entry.clone();
        let written = tokio::task::spawn_blocking(move || {
            let written = outbox.write(&copy).map(|_| ());
            if written.is_ok() {
                outbox.clear_received(&copy.task_id);
            }
            written.map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        self.ledger.finished(task_id);
        if let Err(err) = written {
            // Still try to deliver it; only durability across a crash is lost.
            tracing::error!(task = %task_id, %err, "cannot write the task status to the outbox");
        }
        match entry.body.failure_reason.as_deref() {
            Some(reason) => {
                tracing::info!(task = %task_id, status = %entry.body.status, %reason, "task finished")
            }
            None => tracing::info!(task = %task_id, status = %entry.body.status, "task finished"),
        }
        let _ = self.events.send(IntakeEvent::Finished {
            task_id: task_id.to_owned(),
            status: entry.body.clone(),
            at: std::time::Instant::now(),
        });
        self.reporter.deliver(entry, false);
    }

    /// Gives pending statuses up to the report timeout to reach the server, then stops the
    /// reporter. Returns how many are still unreported (they stay in the outbox for the next
    /// start).
    pub(crate) async fn finish(&self) -> usize {
        let reporter = &self.reporter;
        if reporter.pending() > 0 {
            tracing::info!(
                pending = reporter.pending(),
                "waiting for task statuses to be accepted"
            );
            let _ = tokio::time::timeout(self.report_timeout, reporter.wait_idle()).await;
        }
        let unreported = reporter.pending();
        if unreported > 0 {
            tracing::warn!(
                count = unreported,
                "some task statuses are not accepted yet; they stay in the outbox and are sent at the next start"
            );
        }
        self.reporter_stop.cancel();
        unreported
    }

    /// Stops the reporter without waiting (this delivery never got the outbox).
    pub(crate) fn stop(&self) {
        self.reporter_stop.cancel();
    }
}
