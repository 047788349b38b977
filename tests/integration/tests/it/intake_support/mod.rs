//! Shared setup for the intake tests: a mock with one sandbox, fast intake timings, and
//! assertions on what the mock recorded.

use std::sync::Arc;
use std::time::Duration;

use agentserver::intake::{
    BridgeTimings, Intake, IntakeConfig, IntakeEvent, IntakeHandle, IntakeSummary,
};
use agentserver::secret::Secret;
use agentserver_integration::test_backend::{TestBackend, assistant_text, expected_texts};
use agentserver_mock::{MockConfig, MockServer, MockState, SandboxRecord, TaskRecord};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// A mock, a sandbox on it, and a private state directory.
pub struct Env {
    pub mock: MockServer,
    pub sandbox: SandboxRecord,
    pub home: tempfile::TempDir,
}

impl Env {
    pub async fn start(bridge: bool) -> Env {
        let mock = MockServer::start(MockConfig {
            bridge_enabled: bridge,
            ..MockConfig::default()
        })
        .await
        .expect("mock starts");
        let sandbox = mock.state().add_sandbox("intake-test", "custom");
        Env {
            mock,
            sandbox,
            home: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn state(&self) -> Arc<MockState> {
        self.mock.state()
    }

    /// Intake settings with short timers (same semantics as the defaults).
    pub fn config(&self) -> IntakeConfig {
        let mut c = IntakeConfig::new(
            self.mock.url(),
            Secret::new(self.sandbox.proxy_token.clone()),
            self.sandbox.id.clone(),
            self.home.path(),
        );
        c.poll_interval = Duration::from_millis(50);
        c.report_backoff_initial = Duration::from_millis(50);
        c.report_backoff_max = Duration::from_millis(500);
        c.outbox_dir = self.home.path().join("outbox");
        c.cancel_timeout = Duration::from_secs(5);
        c.flush_timeout = Duration::from_secs(30);
        c.bridge = BridgeTimings {
            heartbeat: Duration::from_millis(300),
            sse_backoff_initial: Duration::from_millis(50),
            sse_backoff_max: Duration::from_millis(500),
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(500),
            retry_deadline: Duration::from_secs(30),
            ..BridgeTimings::default()
        };
        c
    }

    /// Files left in this sandbox's outbox (its hidden owner lock aside).
    pub fn outbox_files(&self) -> Vec<std::path::PathBuf> {
        let dir = self.home.path().join("outbox").join(&self.sandbox.id);
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .filter(|p| p.file_name().is_some_and(|n| n != ".owner.lock"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A running in-process intake.
pub struct Running {
    pub handle: IntakeHandle,
    pub events: broadcast::Receiver<IntakeEvent>,
    pub join: JoinHandle<IntakeSummary>,
}

pub fn start_intake(config: IntakeConfig, backend: TestBackend) -> Running {
    let intake = Intake::new(config, Arc::new(backend)).expect("intake builds");
    let handle = intake.handle();
    let events = handle.subscribe();
    let join = tokio::spawn(async move { intake.run().await.expect("intake runs") });
    Running {
        handle,
        events,
        join,
    }
}

impl Running {
    /// Drains and waits for the intake to return (bounded).
    pub async fn stop(self) -> IntakeSummary {
        self.handle.drain();
        tokio::time::timeout(Duration::from_secs(20), self.join)
            .await
            .expect("intake drains in time")
            .expect("intake task")
    }
}

/// Waits until the task has a final status.
pub async fn wait_final(state: &MockState, id: &str, timeout: Duration) -> TaskRecord {
    let t = state
        .wait_task_final(id, timeout)
        .await
        .expect("task exists");
    assert!(
        agentserver_mock::state::is_final_status(&t.status),
        "task {id} has no final status after {timeout:?}: {}",
        t.status
    );
    t
}

/// Exactly one final status update, and it is `status`.
pub fn assert_one_final(t: &TaskRecord, status: &str) {
    let finals = t.final_updates();
    assert_eq!(
        finals.len(),
        1,
        "task {} has {} final updates: {:?}",
        t.id,
        finals.len(),
        t.status_updates
    );
    assert_eq!(
        finals[0].status, status,
        "task {}: {:?}",
        t.id, finals[0].body
    );
}

/// The worker events of the task's session are init, the prompt's assistant events in
/// order, then the result.
pub fn assert_events_in_order(state: &MockState, t: &TaskRecord) {
    let sid = t.session_id.as_deref().expect("task has a bridge session");
    let events = state.bridge_worker_events(sid);
    let texts: Vec<String> = events.iter().filter_map(assistant_text).collect();
    assert_eq!(
        texts,
        expected_texts(&t.prompt),
        "task {} events out of order or missing",
        t.id
    );
    assert_eq!(
        events.first().map(|e| e["type"].clone()),
        Some("system".into()),
        "task {}",
        t.id
    );
    assert_eq!(
        events.last().map(|e| e["type"].clone()),
        Some("result".into()),
        "task {}",
        t.id
    );
    assert_eq!(
        events.len(),
        texts.len() + 2,
        "task {}: unexpected extra events",
        t.id
    );
}
