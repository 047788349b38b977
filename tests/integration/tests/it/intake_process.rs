//! The intake as a real process (`intake-host`: the library's intake, signal handling and the
//! test backend): crash recovery through the outbox and signal-driven shutdown.

use crate::intake_support;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentserver::intake::{ORPHAN_REASON, SHUTDOWN_REASON, SYSTEM_PREFIX};
use agentserver_mock::bridge::BridgeOp;
use intake_support::{Env, assert_events_in_order, assert_one_final, wait_final};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const T: Duration = Duration::from_secs(15);

struct Host {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Host {
    async fn spawn(env: &Env, extra: &[&str]) -> Host {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_intake-host"));
        cmd.args([
            "--server",
            &env.mock.url(),
            "--proxy-token",
            &env.sandbox.proxy_token,
            "--sandbox-id",
            &env.sandbox.id,
            "--poll-ms",
            "50",
        ])
        .args(extra)
        .env("AGENTSERVER_HOME", env.home.path())
        .env("HOME", env.home.path())
        .current_dir(env.home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd.spawn().expect("intake-host starts");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        let host = Host { child, stderr };
        host.wait_stderr("intake-host ready").await;
        host
    }

    async fn wait_stderr(&self, needle: &str) {
        let t0 = Instant::now();
        while t0.elapsed() < T {
            if self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "`{needle}` not seen on stderr: {:?}",
            self.stderr.lock().unwrap()
        );
    }

    fn signal(&self, sig: Signal) {
        let pid = self.child.id().expect("running") as i32;
        kill(Pid::from_raw(pid), sig).expect("signal delivered");
    }

    async fn wait_exit(&mut self, limit: Duration) -> i32 {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "host did not exit within {limit:?}: {:?}",
                    self.stderr.lock().unwrap()
                )
            })
            .expect("wait");
        status.code().unwrap_or(-1)
    }
}

async fn wait_file(path: &Path) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(t0.elapsed() < T, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn worker_running(state: &agentserver_mock::MockState, sid: &str) -> bool {
    state.bridge_log(sid).iter().any(|e| {
        matches!(&e.op, BridgeOp::WorkerState { status, http_status: 200, .. } if status == "running")
    })
}

#[tokio::test]
async fn status_survives_sigkill_between_finishing_and_reporting() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "events:3 succeed:persisted");
    // The server refuses this task's status until the host has been killed.
    state.fail_next(
        "PUT",
        &format!("/api/agent/tasks/{id}/status"),
        503,
        1_000_000,
    );
    let mut host = Host::spawn(&env, &[]).await;
    let entry = env
        .home
        .path()
        .join("outbox")
        .join(&env.sandbox.id)
        .join(format!("{id}.json"));
    wait_file(&entry).await;
    assert!(
        state
            .wait_until(T, |s| !s
                .requests_to("PUT", &format!("/api/agent/tasks/{id}/status"))
                .is_empty())
            .await
    );
    host.signal(Signal::SIGKILL);
    host.wait_exit(T).await;
    let t = state.task(&id).unwrap();
    assert_eq!(t.status, "assigned", "nothing reported before the kill");
    assert!(entry.exists(), "the outcome waits in the outbox");

    state.clear_faults();
    let mut host = Host::spawn(&env, &[]).await;
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "completed");
    assert_eq!(t.result, Some(serde_json::json!("persisted")));
    assert_events_in_order(&state, &t);
    assert!(
        state.wait_until(T, |_| !entry.exists()).await,
        "outbox entry removed"
    );
    host.signal(Signal::SIGTERM);
    assert_eq!(host.wait_exit(T).await, 0);
}

#[tokio::test]
async fn sigterm_lets_the_running_task_finish_then_exits_0() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "events:1 sleep:1500 events:1 succeed");
    let sid = state.task(&id).unwrap().session_id.unwrap();
    let mut host = Host::spawn(&env, &["--grace-ms", "20000"]).await;
    assert!(state.wait_until(T, |s| worker_running(s, &sid)).await);
    host.signal(Signal::SIGTERM);
    host.wait_stderr("Shutting down").await;
    // No new work is taken while draining.
    let late = state.create_task(&env.sandbox.id, "succeed");
    assert_eq!(host.wait_exit(T).await, 0);
    let t = state.task(&id).unwrap();
    assert_one_final(&t, "completed");
    assert_events_in_order(&state, &t);
    assert_eq!(state.task(&late).unwrap().status, "pending");
    assert!(env.outbox_files().is_empty());
}

#[tokio::test]
async fn second_sigterm_cancels_at_once() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "events:1 hang");
    let sid = state.task(&id).unwrap().session_id.unwrap();
    let mut host = Host::spawn(&env, &["--grace-ms", "60000"]).await;
    assert!(state.wait_until(T, |s| worker_running(s, &sid)).await);
    host.signal(Signal::SIGTERM);
    host.wait_stderr("Shutting down").await;
    let t0 = Instant::now();
    host.signal(Signal::SIGTERM);
    assert_eq!(host.wait_exit(T).await, 0);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    let t = state.task(&id).unwrap();
    assert_one_final(&t, "failed");
    assert_eq!(t.failure_reason.as_deref(), Some(SHUTDOWN_REASON));
}

#[tokio::test]
async fn grace_period_ends_in_cancellation() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "hang");
    let sid = state.task(&id).unwrap().session_id.unwrap();
    let mut host = Host::spawn(&env, &["--grace-ms", "500"]).await;
    assert!(state.wait_until(T, |s| worker_running(s, &sid)).await);
    let t0 = Instant::now();
    host.signal(Signal::SIGTERM);
    assert_eq!(host.wait_exit(T).await, 0);
    assert!(t0.elapsed() >= Duration::from_millis(450));
    let t = state.task(&id).unwrap();
    assert_one_final(&t, "failed");
    assert_eq!(t.failure_reason.as_deref(), Some(SHUTDOWN_REASON));
}

#[tokio::test]
async fn third_signal_exits_and_the_next_start_reports_the_abandoned_task() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "hang-hard");
    let sid = state.task(&id).unwrap().session_id.unwrap();
    let mut host = Host::spawn(
        &env,
        &["--grace-ms", "60000", "--cancel-timeout-ms", "60000"],
    )
    .await;
    assert!(state.wait_until(T, |s| worker_running(s, &sid)).await);
    host.signal(Signal::SIGINT);
    host.wait_stderr("Shutting down").await;
    host.signal(Signal::SIGINT);
    host.wait_stderr("Cancelling running tasks").await;
    host.signal(Signal::SIGINT);
    assert_eq!(host.wait_exit(T).await, 130);
    assert_eq!(state.task(&id).unwrap().status, "assigned");

    let mut host = Host::spawn(&env, &[]).await;
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "failed");
    assert_eq!(t.failure_reason.as_deref(), Some(SHUTDOWN_REASON));
    host.signal(Signal::SIGTERM);
    assert_eq!(host.wait_exit(T).await, 0);
}

#[tokio::test]
async fn task_running_when_the_host_was_killed_is_reported_at_the_next_start() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "events:1 hang");
    let sid = state.task(&id).unwrap().session_id.unwrap();
    let mut host = Host::spawn(&env, &[]).await;
    assert!(state.wait_until(T, |s| worker_running(s, &sid)).await);
    host.signal(Signal::SIGKILL);
    host.wait_exit(T).await;
    assert_eq!(state.task(&id).unwrap().status, "assigned");

    let mut host = Host::spawn(&env, &[]).await;
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "failed");
    assert_eq!(
        t.failure_reason.as_deref(),
        Some(format!("{SYSTEM_PREFIX}{ORPHAN_REASON}").as_str())
    );
    host.signal(Signal::SIGTERM);
    assert_eq!(host.wait_exit(T).await, 0);
    assert!(env.outbox_files().is_empty());
    let markers = env
        .home
        .path()
        .join("outbox")
        .join(&env.sandbox.id)
        .join("received");
    assert_eq!(std::fs::read_dir(markers).unwrap().count(), 0);
}
