//! Helpers for the tests that run the real `agentserver run` binary against the in-process
//! mock agentserver: signals, waiting for the exit without blocking the runtime the mock
//! serves on, and reading what the run left in its state directory.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use agentserver_mock::{MockState, SandboxRecord};

/// Sends SIGTERM to the process.
pub fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("send SIGTERM");
}

/// Waits for the child to exit, polling without blocking a runtime thread; `None` when it
/// is still running after `timeout`.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_exit`], but kills the child and panics when it does not exit in time.
pub async fn expect_exit(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    match wait_exit(child, timeout).await {
        Some(status) => status,
        None => {
            let _ = child.kill();
            panic!("agentserver did not exit within {timeout:?} {what}");
        }
    }
}

/// Waits until the host has registered its sandbox and returns it.
pub async fn registered_sandbox(mock: &MockState) -> SandboxRecord {
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| !s.sandboxes().is_empty())
            .await,
        "the host never registered"
    );
    mock.sandboxes()[0].clone()
}

/// Waits until the sandbox's agent info arrived over the tunnel: the worker runs, and its
/// signal handlers are installed.
pub async fn wait_agent_info(mock: &MockState, sandbox_id: &str) {
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| s
            .sandbox(sandbox_id)
            .is_some_and(|sb| sb.agent_info.is_some()))
            .await,
        "no agent info arrived over the tunnel"
    );
}

/// Waits until the task's first event reached the bridge (the backend is running it).
pub async fn wait_task_started(mock: &MockState, task_id: &str) {
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| s
            .task(task_id)
            .and_then(|t| t.session_id)
            .is_some_and(|sid| !s.bridge_worker_events(&sid).is_empty()))
            .await,
        "task {task_id} never started"
    );
}

/// The session file the run keeps for `sandbox_id` under its `AGENTSERVER_HOME`.
pub fn session_file(state_dir: &Path, sandbox_id: &str) -> serde_json::Value {
    let path = state_dir
        .join("sessions")
        .join(format!("{sandbox_id}.json"));
    serde_json::from_slice(&std::fs::read(&path).expect("session file")).expect("session JSON")
}

/// Whether the session file says that no process runs it (pid absent, null or 0).
pub fn pid_cleared(session: &serde_json::Value) -> bool {
    session.get("pid").is_none_or(|p| p.is_null() || p == 0)
}
