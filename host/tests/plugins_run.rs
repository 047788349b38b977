//! A native plugin behind the real `agentserver run`: the C example (built here against the
//! header) registers as type `custom`, runs a task whose events and final status reach the
//! mock, and a plugin that ignores cancellation cannot keep the host from exiting after
//! SIGTERM: its call is abandoned, the task is reported, and the process ends.

mod plugins_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentserver_mock::{MockConfig, MockServer};
use plugins_support::{build_c_plugin, write_plugin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_plugin_serves_tasks_and_a_stuck_one_cannot_block_exit() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let tmp = tempfile::tempdir().unwrap();
    let plugin_root = tmp.path().join("plugins");
    let library = build_c_plugin(tmp.path(), "libstubborn.so", &["EXAMPLE_IGNORE_CANCEL"]);
    write_plugin(&plugin_root, "stubborn-c", "native", &library, "1.0.0", "");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args([
            "run",
            "--backend",
            "stubborn-c",
            "--allow-native",
            "stubborn-c",
        ])
        .args([
            "--skip-open-browser",
            "--poll-interval",
            "0.2",
            "--grace-period",
            "1",
        ])
        .arg("--plugin-dir")
        .arg(&plugin_root)
        .arg("--server")
        .arg(server.url())
        .current_dir(&work)
        .env("AGENTSERVER_HOME", tmp.path().join("state"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    assert!(
        mock.wait_until(Duration::from_secs(20), |s| !s.sandboxes().is_empty())
            .await,
        "the host never registered"
    );
    let sandbox = mock.sandboxes()[0].clone();
    assert_eq!(sandbox.sandbox_type, "custom", "plugins register as custom");

    // A normal task: the C plugin's events and outcome cross the ABI and reach the server.
    let ok = mock.create_task(&sandbox.id, "hello");
    let record = mock
        .wait_task_final(&ok, Duration::from_secs(20))
        .await
        .expect("task exists");
    assert_eq!(record.status, "completed", "{:?}", record.status_updates);
    assert_eq!(record.result, Some(serde_json::json!("C saw 5 bytes")));
    let events = mock.bridge_worker_events(record.session_id.as_deref().unwrap());
    let types: Vec<_> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["started", "char_count"], "{events:?}");
    assert_eq!(events[1]["count"], 5);

    // A task the plugin never gives back, then SIGTERM.
    let stuck = mock.create_task(&sandbox.id, "ignore-cancel");
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| s
            .task(&stuck)
            .and_then(|t| t.session_id)
            .is_some_and(|sid| !s.bridge_worker_events(&sid).is_empty()))
            .await,
        "the stuck task never started"
    );
    let signalled = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    // Grace period 1 s, then cancellation, then the 5 s the plugin gets to return, then
    // the report and the runtime's 2 s for stragglers: far below the plugin's 120 s sleep.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("agentserver did not exit 30 s after SIGTERM with a stuck plugin");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit {status:?}");
    let record = mock.task(&stuck).unwrap();
    assert_eq!(
        record.final_updates().len(),
        1,
        "{:?}",
        record.status_updates
    );
    let body = &record.final_updates()[0].body;
    assert_eq!(record.status, "failed", "{body}");
    assert!(
        body["failure_reason"]
            .as_str()
            .is_some_and(|r| r.contains("shutdown") || r.contains("abandoned")),
        "{body}"
    );
}

/// The three-stage shutdown of the real binary: the first SIGTERM drains (the running task
/// keeps its 30 s grace period), the second cancels it at once; its status is reported, the
/// session pid is cleared and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_cancels_the_running_task_at_once() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let tmp = tempfile::tempdir().unwrap();
    let plugin_root = tmp.path().join("plugins");
    let library = build_c_plugin(tmp.path(), "libpolite.so", &[]);
    write_plugin(&plugin_root, "polite-c", "native", &library, "1.0.0", "");
    let state_dir = tmp.path().join("state");

    let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(["run", "--backend", "polite-c", "--allow-native", "polite-c"])
        .args(["--skip-open-browser", "--poll-interval", "0.2"])
        .args(["--grace-period", "30"])
        .arg("--plugin-dir")
        .arg(&plugin_root)
        .arg("--server")
        .arg(server.url())
        .current_dir(tmp.path())
        .env("AGENTSERVER_HOME", &state_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| !s.sandboxes().is_empty())
            .await
    );
    let sandbox = mock.sandboxes()[0].clone();
    let task = mock.create_task(&sandbox.id, "wait-for-cancel");
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| s
            .task(&task)
            .and_then(|t| t.session_id)
            .is_some_and(|sid| !s.bridge_worker_events(&sid).is_empty()))
            .await,
        "the task never started"
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // Draining: the task keeps running, no status yet, the process stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited during the grace period"
    );
    assert!(mock.task(&task).unwrap().final_updates().is_empty());

    let second = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            second.elapsed() < Duration::from_secs(15),
            "the second SIGTERM did not end the run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit {status:?}");
    let record = mock.task(&task).unwrap();
    assert_eq!(
        record.final_updates().len(),
        1,
        "{:?}",
        record.status_updates
    );
    let body = &record.final_updates()[0].body;
    assert_eq!(record.status, "failed", "{body}");
    assert_eq!(
        body["failure_reason"], "cancelled by host shutdown",
        "{body}"
    );
    let session: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            state_dir
                .join("sessions")
                .join(format!("{}.json", sandbox.id)),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        session.get("pid").is_none_or(|p| p.is_null() || p == 0),
        "pid cleared: {session}"
    );
    assert_eq!(
        session["backend"], "polite-c",
        "the plugin is recorded: {session}"
    );
}
