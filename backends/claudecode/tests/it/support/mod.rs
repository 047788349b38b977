//! Helpers shared by the claudecode backend's integration tests.

use std::path::PathBuf;
use std::time::Duration;

use agentserver_backend_claudecode::{ClaudeCodeBackend, ClaudeCodeConfig, RunReport};
/// Whether a pid is a live process, and waiting until it is not: the process owner's.
pub use agentserver_common::process::{is_alive as alive, wait_gone};
use agentserver_plugin_api::{CancellationToken, EventSink, Task};
use serde_json::Value;

/// Generous bound around every await that could hang.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The scripted stand-in for `claude` built with this crate.
pub fn fake_claude() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fake-claude"))
}

/// A task with this prompt running in `workdir`.
pub fn task(prompt: &str, workdir: &std::path::Path) -> Task {
    Task {
        task_id: format!("task_{}", std::process::id()),
        prompt: prompt.to_owned(),
        workdir: workdir.display().to_string(),
        ..Task::default()
    }
}

/// The events of a finished run, as text.
pub struct Finished {
    /// Outcome and stats.
    pub report: RunReport,
    /// Every event, exact JSON text, in order.
    pub events: Vec<String>,
}

impl Finished {
    /// Events parsed.
    pub fn values(&self) -> Vec<Value> {
        self.events
            .iter()
            .map(|e| serde_json::from_str(e).expect("event is JSON"))
            .collect()
    }

    /// `type` (and `/subtype` when present) of each event.
    pub fn kinds(&self) -> Vec<String> {
        self.values()
            .iter()
            .map(|v| {
                let t = v["type"].as_str().unwrap_or("?").to_owned();
                match v["subtype"].as_str() {
                    Some(s) => format!("{t}/{s}"),
                    None => t,
                }
            })
            .collect()
    }
}

/// Runs a task to its end, collecting events.
pub async fn run(backend: &ClaudeCodeBackend, task: Task) -> Finished {
    run_with_cancel(backend, task, CancellationToken::new()).await
}

/// Runs a task to its end with a cancel token, collecting events.
pub async fn run_with_cancel(
    backend: &ClaudeCodeBackend,
    task: Task,
    cancel: CancellationToken,
) -> Finished {
    let (sink, mut rx) = EventSink::channel(1024);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(ev) = rx.recv().await {
            events.push(ev.as_json().to_owned());
        }
        events
    });
    let report = tokio::time::timeout(LIMIT, backend.run(task, sink, cancel))
        .await
        .expect("the run ended in time");
    let events = collector.await.expect("collector");
    Finished { report, events }
}

/// A backend running `fake-claude` with `script`, with short timeouts; `tweak` adjusts it.
pub fn fake_backend(script: &str, tweak: impl FnOnce(&mut ClaudeCodeConfig)) -> ClaudeCodeBackend {
    let mut config = ClaudeCodeConfig {
        claude_bin: Some(fake_claude()),
        idle_timeout: Duration::from_secs(10),
        post_result_exit_timeout: Duration::from_secs(5),
        stdin_close_grace: Duration::from_secs(1),
        term_grace: Duration::from_secs(1),
        ..ClaudeCodeConfig::default()
    }
    .with_env("FAKE_CLAUDE_SCRIPT", script);
    tweak(&mut config);
    ClaudeCodeBackend::new(config)
}
