//! A native plugin behind the real `agentserver run`: the C example (built here against the
//! header) registers as type `custom`, runs a task whose events and final status reach the
//! mock, a plugin that ignores cancellation cannot keep the host from exiting after SIGTERM
//! (its call is abandoned, the task is reported, the process ends), and a second SIGTERM
//! cancels a running task at once.

use crate::support::plugins as plugins_support;
use crate::support::run as support_run;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentserver_mock::{MockConfig, MockServer};
use plugins_support::{build_c_plugin, write_plugin};
use support_run::{
    expect_exit, pid_cleared, registered_sandbox, session_file, sigterm, wait_task_started,
};

/// Starts `agentserver run` with the C example (built with `defines`) installed as the native
/// plugin `name`, its state under `dir/state`, tasks in `dir`, and this grace period.
fn run_c_plugin(
    server: &MockServer,
    dir: &Path,
    name: &str,
    defines: &[&str],
    grace_secs: &str,
) -> Child {
    let plugin_root = dir.join("plugins");
    let library = build_c_plugin(dir, &format!("lib{name}.so"), defines);
    write_plugin(&plugin_root, name, "native", &library, "1.0.0", "");
    Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(["run", "--backend", name, "--allow-native", name])
        .args(["--skip-open-browser", "--poll-interval", "0.2"])
        .args(["--grace-period", grace_secs])
        .arg("--plugin-dir")
        .arg(&plugin_root)
        .arg("--server")
        .arg(server.url())
        .current_dir(dir)
        .env("AGENTSERVER_HOME", dir.join("state"))
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start agentserver")
}

/// The task's one final status update: its status and body.
fn final_status(mock: &agentserver_mock::MockState, task: &str) -> (String, serde_json::Value) {
    let record = mock.task(task).expect("task exists");
    let finals = record.final_updates();
    assert_eq!(finals.len(), 1, "{:?}", record.status_updates);
    (record.status.clone(), finals[0].body.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_plugin_serves_tasks_and_a_stuck_one_cannot_block_exit() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let tmp = tempfile::tempdir().unwrap();
    let mut child = run_c_plugin(
        &server,
        tmp.path(),
        "stubborn-c",
        &["EXAMPLE_IGNORE_CANCEL"],
        "1",
    );
    let sandbox = registered_sandbox(&mock).await;
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

    // A task the plugin never gives back, then SIGTERM. Grace period 1 s, then cancellation,
    // then the 5 s the plugin gets to return, then the report and the runtime's 2 s for
    // stragglers: far below the plugin's 120 s sleep.
    let stuck = mock.create_task(&sandbox.id, "ignore-cancel");
    wait_task_started(&mock, &stuck).await;
    sigterm(child.id());
    let status = expect_exit(
        &mut child,
        Duration::from_secs(30),
        "after SIGTERM with a stuck plugin",
    )
    .await;
    assert!(status.success(), "exit {status:?}");
    let (status, body) = final_status(&mock, &stuck);
    assert_eq!(status, "failed", "{body}");
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
    let mut child = run_c_plugin(&server, tmp.path(), "polite-c", &[], "30");
    let sandbox = registered_sandbox(&mock).await;
    let task = mock.create_task(&sandbox.id, "wait-for-cancel");
    wait_task_started(&mock, &task).await;

    sigterm(child.id());
    // Draining: the task keeps running, no status yet, the process stays.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited during the grace period"
    );
    assert!(mock.task(&task).unwrap().final_updates().is_empty());

    sigterm(child.id());
    let status = expect_exit(
        &mut child,
        Duration::from_secs(15),
        "after a second SIGTERM",
    )
    .await;
    assert!(status.success(), "exit {status:?}");
    let (status, body) = final_status(&mock, &task);
    assert_eq!(status, "failed", "{body}");
    assert_eq!(
        body["failure_reason"], "cancelled by host shutdown",
        "{body}"
    );
    let session = session_file(&tmp.path().join("state"), &sandbox.id);
    assert!(pid_cleared(&session), "pid cleared: {session}");
    assert_eq!(
        session["backend"], "polite-c",
        "the plugin is recorded: {session}"
    );
}

/// `task-worker` resolves its backend through the same registry as `run`: `--backend` names a
/// plugin, which then runs the task (it used to be Claude Code, always).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_worker_runs_a_plugin_backend_through_the_registry() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let sandbox = mock.add_sandbox("worker", "custom");
    let tmp = tempfile::tempdir().unwrap();
    let plugin_root = tmp.path().join("plugins");
    let library = build_c_plugin(tmp.path(), "libworker-c.so", &[]);
    write_plugin(&plugin_root, "worker-c", "native", &library, "1.0.0", "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args([
            "task-worker",
            "--backend",
            "worker-c",
            "--allow-native",
            "worker-c",
        ])
        .args(["--poll-interval", "0.2"])
        .arg("--plugin-dir")
        .arg(&plugin_root)
        .arg("--server")
        .arg(server.url())
        .arg("--sandbox-id")
        .arg(&sandbox.id)
        .arg("--proxy-token")
        .arg(&sandbox.proxy_token)
        .current_dir(tmp.path())
        .env("AGENTSERVER_HOME", tmp.path().join("state"))
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start agentserver");
    let task = mock.create_task(&sandbox.id, "hello");
    let record = mock.wait_task_final(&task, Duration::from_secs(20)).await;
    sigterm(child.id());
    let status = expect_exit(&mut child, Duration::from_secs(20), "after SIGTERM").await;
    let record = record.expect("task exists");
    assert_eq!(record.status, "completed", "{:?}", record.status_updates);
    assert_eq!(record.result, Some(serde_json::json!("C saw 5 bytes")));
    assert!(status.success(), "exit {status:?}");
}

/// A `--backend` that names no built-in and no loadable plugin fails before login with the
/// plugin loader's own reason, and registers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_an_unknown_backend_reports_the_plugins_own_error() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(["run", "--backend", "not-installed", "--skip-open-browser"])
        .arg("--server")
        .arg(server.url())
        .current_dir(tmp.path())
        .env("AGENTSERVER_HOME", tmp.path().join("state"))
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run agentserver");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot load the plugin `not-installed`: "),
        "{stderr}"
    );
    assert!(stderr.contains("agentserver plugins list"), "{stderr}");
    assert!(mock.sandboxes().is_empty(), "a sandbox was registered");
    // A name that cannot be a backend at all is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(["run", "--backend", "../evil"])
        .env("AGENTSERVER_HOME", tmp.path().join("state"))
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .output()
        .expect("run agentserver");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid backend name"));
}
