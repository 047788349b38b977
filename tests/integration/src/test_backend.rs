//! A backend for tests (never shipped): what it does is written in the task's prompt.
//!
//! The prompt is a whitespace-separated list of steps, run in order:
//!
//! | step | effect |
//! |---|---|
//! | `events:N` | emit N `assistant` events (Claude stream-json shaped, each with a `uuid`) |
//! | `sleep:MS` | sleep MS milliseconds (returns cancelled if the task is cancelled meanwhile) |
//! | `gate:NAME` | wait until [`open_gate`]`(NAME)` (cancellable) |
//! | `succeed` / `succeed:TEXT` | emit a `result` event and complete with TEXT (default `done`) |
//! | `fail` / `fail:TEXT` | fail as a user failure |
//! | `fail-system:TEXT` | fail as a system failure |
//! | `hang` | wait until cancelled, then return cancelled |
//! | `hang-hard` | never return, even when cancelled |
//! | `panic` | panic |
//! | `noop` | complete at once with no events at all (for benchmarks) |
//!
//! Every task (except `noop`) starts with a `system`/`init` event. Without a final step the
//! task succeeds. Assistant events carry the text `event <i>` (i from 1) so tests can check
//! their order; [`expected_texts`] lists what a prompt should produce.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use agentserver_plugin_api::{
    Backend, BackendInfo, EventSink, FailureKind, SessionType, Task, TaskEvent, TaskOutcome,
};
use async_trait::async_trait;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Counters of what the backend did (shared by clones of a [`TestBackend`]).
#[derive(Debug, Default)]
pub struct TestStats {
    /// Tasks started.
    pub started: AtomicUsize,
    /// Tasks running right now.
    pub running: AtomicUsize,
    /// Most tasks that ran at the same time.
    pub max_running: AtomicUsize,
    /// Tasks that saw their cancellation token fire.
    pub cancelled: AtomicUsize,
    /// Ids of the tasks started, in order.
    pub task_ids: Mutex<Vec<String>>,
}

/// The test backend. Cloning shares [`TestStats`].
#[derive(Clone, Debug, Default)]
pub struct TestBackend {
    stats: Arc<TestStats>,
}

impl TestBackend {
    /// A new backend with fresh counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Its counters.
    pub fn stats(&self) -> &TestStats {
        &self.stats
    }
}

#[derive(Debug, Default)]
struct Gate {
    open: AtomicBool,
    notify: Notify,
}

fn gate(name: &str) -> Arc<Gate> {
    static GATES: OnceLock<Mutex<HashMap<String, Arc<Gate>>>> = OnceLock::new();
    GATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.to_owned())
        .or_default()
        .clone()
}

/// Opens gate `name`: tasks waiting in `gate:NAME` go on, later ones pass at once.
pub fn open_gate(name: &str) {
    let g = gate(name);
    g.open.store(true, Ordering::SeqCst);
    g.notify.notify_waiters();
}

async fn wait_gate(name: &str) {
    let g = gate(name);
    loop {
        let notified = g.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if g.open.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// The texts of the `assistant` events a prompt emits, in order (`event 1`, `event 2`, …).
pub fn expected_texts(prompt: &str) -> Vec<String> {
    let n: usize = prompt
        .split_whitespace()
        .filter_map(|s| s.strip_prefix("events:"))
        .filter_map(|n| n.parse::<usize>().ok())
        .sum();
    (1..=n).map(|i| format!("event {i}")).collect()
}

/// The text of an `assistant` payload (its first text block), if it is one.
pub fn assistant_text(payload: &serde_json::Value) -> Option<String> {
    if payload.get("type")?.as_str()? != "assistant" {
        return None;
    }
    payload
        .pointer("/message/content/0/text")?
        .as_str()
        .map(str::to_owned)
}

fn event(value: serde_json::Value) -> TaskEvent {
    TaskEvent::from_value(&value).expect("JSON value serialises")
}

struct Running<'a>(&'a TestStats);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Backend for TestBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "test".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            session_type: SessionType::Custom,
        }
    }

    async fn execute(
        &self,
        task: Task,
        events: EventSink,
        cancel: CancellationToken,
    ) -> TaskOutcome {
        let stats = &self.stats;
        stats.started.fetch_add(1, Ordering::SeqCst);
        stats
            .task_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task.task_id.clone());
        let now = stats.running.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_running.fetch_max(now, Ordering::SeqCst);
        let _running = Running(stats);

        if task.prompt.trim() == "noop" {
            return TaskOutcome::completed("done");
        }
        let sid = task.session_id.clone();
        let cancelled = || {
            stats.cancelled.fetch_add(1, Ordering::SeqCst);
            TaskOutcome::cancelled("cancelled")
        };
        events
            .emit(event(json!({
                "type": "system", "subtype": "init", "uuid": uuid::Uuid::new_v4().to_string(),
                "session_id": sid, "cwd": task.workdir, "model": "test", "tools": [],
            })))
            .await;
        let mut index = 0usize;
        for step in task.prompt.split_whitespace() {
            let (name, arg) = step.split_once(':').unwrap_or((step, ""));
            match name {
                "events" => {
                    let n: usize = arg.parse().unwrap_or(0);
                    for _ in 0..n {
                        index += 1;
                        events
                            .emit(event(json!({
                                "type": "assistant",
                                "uuid": uuid::Uuid::new_v4().to_string(),
                                "session_id": sid,
                                "parent_tool_use_id": null,
                                "message": {
                                    "role": "assistant",
                                    "content": [{"type": "text", "text": format!("event {index}")}],
                                },
                            })))
                            .await;
                    }
                }
                "sleep" => {
                    let ms: u64 = arg.parse().unwrap_or(0);
                    tokio::select! {
                        _ = cancel.cancelled() => return cancelled(),
                        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    }
                }
                "gate" => {
                    tokio::select! {
                        _ = cancel.cancelled() => return cancelled(),
                        _ = wait_gate(arg) => {}
                    }
                }
                "hang" => {
                    cancel.cancelled().await;
                    return cancelled();
                }
                "hang-hard" => std::future::pending::<()>().await,
                "panic" => panic!("test backend panics as asked"),
                "fail" => {
                    let reason = if arg.is_empty() {
                        "the task failed"
                    } else {
                        arg
                    };
                    return TaskOutcome::failed(FailureKind::User, reason);
                }
                "fail-system" => {
                    let reason = if arg.is_empty() {
                        "the backend broke"
                    } else {
                        arg
                    };
                    return TaskOutcome::failed(FailureKind::System, reason);
                }
                "succeed" => return succeed(&events, &sid, arg, index).await,
                _ => {}
            }
        }
        succeed(&events, &sid, "", index).await
    }
}

async fn succeed(events: &EventSink, sid: &str, text: &str, turns: usize) -> TaskOutcome {
    let result = if text.is_empty() { "done" } else { text };
    events
        .emit(event(json!({
            "type": "result", "subtype": "success", "is_error": false,
            "uuid": uuid::Uuid::new_v4().to_string(), "session_id": sid,
            "result": result, "num_turns": turns, "total_cost_usd": 0.001,
            "duration_ms": 1, "duration_api_ms": 1,
        })))
        .await;
    let mut outcome = TaskOutcome::completed(result);
    outcome.num_turns = Some(turns as u32);
    outcome.total_cost_usd = Some(0.001);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(prompt: &str) -> Task {
        Task {
            task_id: "task_1".into(),
            prompt: prompt.into(),
            session_id: "cse_1".into(),
            ..Task::default()
        }
    }

    async fn run(prompt: &str) -> (TaskOutcome, Vec<serde_json::Value>) {
        let (sink, mut rx) = EventSink::channel(1024);
        let outcome = TestBackend::new()
            .execute(task(prompt), sink, CancellationToken::new())
            .await;
        let mut evs = Vec::new();
        while let Ok(e) = rx.try_recv() {
            evs.push(serde_json::from_str(e.as_json()).unwrap());
        }
        (outcome, evs)
    }

    #[tokio::test]
    async fn steps_drive_the_outcome() {
        let (o, evs) = run("events:3 succeed:ok").await;
        assert_eq!(o.result.as_deref(), Some("ok"));
        let texts: Vec<_> = evs.iter().filter_map(assistant_text).collect();
        assert_eq!(texts, expected_texts("events:3 succeed:ok"));
        assert_eq!(evs.len(), 5);
        assert_eq!(evs.last().unwrap()["type"], "result");

        let (o, _) = run("fail:nope").await;
        assert_eq!(o.failure_kind, Some(FailureKind::User));
        assert_eq!(o.failure_reason.as_deref(), Some("nope"));

        let (o, evs) = run("noop").await;
        assert!(evs.is_empty());
        assert_eq!(o.result.as_deref(), Some("done"));
    }

    #[tokio::test]
    async fn hang_returns_on_cancel_and_gates_open() {
        let cancel = CancellationToken::new();
        let (sink, _rx) = EventSink::channel(16);
        let b = TestBackend::new();
        let run = tokio::spawn({
            let b = b.clone();
            let cancel = cancel.clone();
            async move { b.execute(task("gate:unit-g1 hang"), sink, cancel).await }
        });
        open_gate("unit-g1");
        cancel.cancel();
        let o = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(o.status, agentserver_plugin_api::TaskStatus::Cancelled);
        assert_eq!(b.stats().cancelled.load(Ordering::SeqCst), 1);
        assert_eq!(b.stats().running.load(Ordering::SeqCst), 0);
    }
}
