//! Helpers of the acp backend's tests: the fake agent's command, running a task to its end
//! with its events, and process checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentserver_backend_acp::{AcpBackend, AcpConfig};
/// Waiting until a pid is no live process: the process owner's.
pub use agentserver_common::process::wait_gone;
use agentserver_plugin_api::{Backend, CancellationToken, EventSink, Task, TaskOutcome};
use serde_json::Value;

/// Generous bound around every await that could hang.
pub const LIMIT: Duration = Duration::from_secs(30);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The fake agent script beside these tests.
pub fn fake_agent_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/fake_agent.py")
}

/// A configuration running the fake agent for tasks in `workdir`, with short timeouts.
pub fn fake_config(workdir: &Path) -> AcpConfig {
    AcpConfig {
        start_timeout: Duration::from_secs(5),
        initialize_timeout: Duration::from_secs(10),
        session_timeout: Duration::from_secs(10),
        cancel_timeout: Duration::from_secs(5),
        stop_grace: Duration::from_secs(2),
        ..AcpConfig::new(
            vec!["python3".into(), fake_agent_script().display().to_string()],
            workdir.to_path_buf(),
        )
    }
}

/// A task with this prompt in `workdir`.
pub fn task(workdir: &Path, prompt: &str) -> Task {
    Task {
        task_id: "task_acp_test".into(),
        prompt: prompt.to_owned(),
        workdir: workdir.display().to_string(),
        ..Task::default()
    }
}

/// A finished task: its outcome and every event, as text and parsed.
pub struct Finished {
    /// The outcome.
    pub outcome: TaskOutcome,
    /// The events' exact JSON texts, in order.
    pub raw: Vec<String>,
    /// The same, parsed.
    pub events: Vec<Value>,
}

impl Finished {
    /// The `session/update` kinds (`params.update.sessionUpdate`), and `result` for the final event.
    pub fn kinds(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|v| {
                v["params"]["update"]["sessionUpdate"]
                    .as_str()
                    .or(v["type"].as_str())
                    .unwrap_or("?")
                    .to_owned()
            })
            .collect()
    }

    /// The final event.
    pub fn result_event(&self) -> &Value {
        let last = self.events.last().expect("at least the final event");
        assert_eq!(last["type"], "result", "{:?}", self.kinds());
        last
    }

    /// All agent text chunks, concatenated.
    pub fn text(&self) -> String {
        self.events
            .iter()
            .filter(|v| v["params"]["update"]["sessionUpdate"] == "agent_message_chunk")
            .filter_map(|v| v["params"]["update"]["content"]["text"].as_str())
            .collect()
    }
}

/// Runs a task to its end (bounded), collecting its events; `cancel_after` fires the
/// cancellation token once that many events have arrived.
pub async fn run_with(
    backend: &AcpBackend,
    task: Task,
    cancel: CancellationToken,
    cancel_after: Option<usize>,
) -> Finished {
    let (sink, mut rx) = EventSink::channel(1024);
    let trigger = cancel.clone();
    let collector = tokio::spawn(async move {
        let mut raw = Vec::new();
        while let Some(ev) = rx.recv().await {
            raw.push(ev.as_json().to_owned());
            if cancel_after == Some(raw.len()) {
                trigger.cancel();
            }
        }
        raw
    });
    let outcome = tokio::time::timeout(LIMIT, backend.execute(task, sink, cancel))
        .await
        .expect("the task ended in time");
    let raw = collector.await.expect("collector");
    let events = raw
        .iter()
        .map(|t| serde_json::from_str(t).expect("events are JSON"))
        .collect();
    Finished {
        outcome,
        raw,
        events,
    }
}

/// Runs a task to its end without cancelling it.
pub async fn run(backend: &AcpBackend, task: Task) -> Finished {
    run_with(backend, task, CancellationToken::new(), None).await
}
