//! Serving several sandboxes at once: one [`crate::worker::Worker`] per sandbox, each under a
//! `sandbox{name=…}` span (so every log line names its sandbox), all sharing one
//! [`crate::intake::capacity::HostCapacity`] and one shutdown. A sandbox whose backend fails
//! to start is reported and started again with a backoff, while the others work.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentserver_common::backoff::{Backoff, BackoffPolicy};
use agentserver_plugin_api::Backend;
use tokio::sync::watch;
use tracing::Instrument;

use crate::intake::{IntakeHandle, IntakeSummary};
use crate::metrics::{Metrics, SandboxInfo};
use crate::shutdown::{ShutdownStage, ShutdownTarget};
use crate::state::Session;
use crate::worker::{Worker, WorkerOptions};

/// Builds a fresh backend for one start attempt (a backend that failed to start is dropped).
pub type BackendFactory = Arc<dyn Fn() -> Result<Arc<dyn Backend>, String> + Send + Sync>;

/// One sandbox ready to serve: its session (already chosen, its pid stamped) and how to build
/// and run its backend.
pub struct SandboxPlan {
    /// The configured name (the span's field and the name on the server).
    pub name: String,
    /// The chosen session.
    pub session: Session,
    /// The backend, built anew for every start attempt.
    pub backend: BackendFactory,
    /// The worker's settings (work directory, limits, the shared capacity, isolation).
    pub options: WorkerOptions,
}

impl std::fmt::Debug for SandboxPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxPlan")
            .field("name", &self.name)
            .field("sandbox_id", &self.session.sandbox_id)
            .finish_non_exhaustive()
    }
}

/// What one sandbox's service came to.
#[derive(Debug)]
pub struct SandboxOutcome {
    /// The configured name.
    pub name: String,
    /// The sandbox id.
    pub sandbox_id: String,
    /// The intake's summary, or why the sandbox never ran (drained while its backend could
    /// not start).
    pub result: Result<IntakeSummary, String>,
}

/// Applies shutdown stages to every sandbox, started or still starting: a sandbox that
/// starts after a drain began does not take tasks.
#[derive(Clone, Debug)]
pub struct SupervisorHandle {
    stage: watch::Sender<Option<ShutdownStage>>,
    intakes: Arc<Mutex<Vec<IntakeHandle>>>,
}

impl SupervisorHandle {
    fn new() -> Self {
        Self {
            stage: watch::Sender::new(None),
            intakes: Arc::default(),
        }
    }

    fn adopt(&self, intake: IntakeHandle) {
        if let Some(stage) = *self.stage.borrow() {
            intake.apply_shutdown(stage.min(ShutdownStage::CancelAll));
        }
        self.intakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(intake);
    }

    /// Drains every sandbox (see [`IntakeHandle::drain`]).
    pub fn drain(&self) {
        self.apply_shutdown(ShutdownStage::Drain);
    }
}

impl ShutdownTarget for SupervisorHandle {
    fn apply_shutdown(&self, stage: ShutdownStage) -> usize {
        self.stage.send_replace(Some(stage));
        self.intakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|intake| intake.apply_shutdown(stage))
            .sum()
    }
}

/// Runs the sandboxes of `plans` until all have drained; `metrics` (when given) sees each
/// sandbox once its worker has started. Start attempts of a failing backend back off from
/// `retry_initial` to five minutes.
pub struct Supervisor {
    plans: Vec<SandboxPlan>,
    metrics: Option<Arc<Metrics>>,
    retry_initial: Duration,
    handle: SupervisorHandle,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("plans", &self.plans)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor of `plans`.
    pub fn new(plans: Vec<SandboxPlan>, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            plans,
            metrics,
            retry_initial: Duration::from_secs(5),
            handle: SupervisorHandle::new(),
        }
    }

    /// The first delay before a failed backend start is tried again (default 5 s).
    pub fn retry_initial(mut self, delay: Duration) -> Self {
        self.retry_initial = delay;
        self
    }

    /// Drains and cancels every sandbox.
    pub fn handle(&self) -> SupervisorHandle {
        self.handle.clone()
    }

    /// Runs every sandbox; returns when each has drained (or, never started, seen the drain).
    pub async fn run(self) -> Vec<SandboxOutcome> {
        let mut set = tokio::task::JoinSet::new();
        for plan in self.plans {
            let span = tracing::info_span!("sandbox", name = %plan.name);
            set.spawn(
                serve(
                    plan,
                    self.handle.clone(),
                    self.metrics.clone(),
                    self.retry_initial,
                )
                .instrument(span),
            );
        }
        let mut outcomes = Vec::new();
        while let Some(done) = set.join_next().await {
            match done {
                Ok(outcome) => outcomes.push(outcome),
                Err(err) => tracing::error!(%err, "a sandbox's supervisor failed"),
            }
        }
        outcomes
    }
}

/// One sandbox: start (again and again while the backend fails), then run until drained.
async fn serve(
    plan: SandboxPlan,
    handle: SupervisorHandle,
    metrics: Option<Arc<Metrics>>,
    retry_initial: Duration,
) -> SandboxOutcome {
    let SandboxPlan {
        name,
        session,
        backend,
        options,
    } = plan;
    let outcome = |result| SandboxOutcome {
        name: name.clone(),
        sandbox_id: session.sandbox_id.clone(),
        result,
    };
    let mut backoff = Backoff::new(BackoffPolicy::capped(
        retry_initial,
        Duration::from_secs(300),
    ));
    let mut stage = handle.stage.subscribe();
    let mut attempt = 0u32;
    let worker = loop {
        if stage.borrow().is_some() {
            return outcome(Err("stopped before its backend could start".into()));
        }
        attempt += 1;
        let started = match backend() {
            Ok(backend) => Worker::start(&session, backend, options.clone())
                .await
                .map_err(|e| e.to_string()),
            Err(err) => Err(err),
        };
        match started {
            Ok(worker) => break worker,
            Err(err) => {
                let retry_in = backoff.next_delay();
                tracing::error!(
                    sandbox_id = %session.sandbox_id,
                    attempt,
                    %err,
                    retry_in = ?retry_in,
                    "the sandbox's backend cannot start; the other sandboxes go on, this one tries again"
                );
                tokio::select! {
                    _ = tokio::time::sleep(retry_in) => {}
                    _ = stage.wait_for(Option::is_some) => {}
                }
            }
        }
    };
    if attempt > 1 {
        tracing::info!(sandbox_id = %session.sandbox_id, attempt, "the sandbox's backend started");
    }
    let _attached = metrics.as_ref().map(|m| {
        m.attach(
            SandboxInfo {
                sandbox_id: session.sandbox_id.clone(),
                server: session.server_url.clone(),
                backend: worker.backend_name(),
                tunnel_down_limit: worker.tunnel_down_limit(),
            },
            worker.intake_handle(),
            worker.tunnel_events(),
        )
    });
    handle.adopt(worker.intake_handle());
    let result = worker.run().await.map_err(|e| e.to_string());
    if let Some(m) = &metrics {
        m.intake_stopped(&session.sandbox_id);
    }
    outcome(result)
}
