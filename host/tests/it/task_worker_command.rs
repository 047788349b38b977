//! `agentserver task-worker`: polls with the proxy token, runs the task with the claudecode
//! backend (a scripted stand-in for `claude`), reports it once; also the registry fallback
//! of spec §13 and the error for a missing identity.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use agentserver_mock::{MockConfig, MockServer};

const FAKE_CLAUDE: &str = r#"#!/bin/sh
read init; read user
echo '{"type":"system","subtype":"init","session_id":"s1","uuid":"tw-1"}'
echo '{"type":"result","subtype":"success","is_error":false,"result":"worker ok","num_turns":2,"total_cost_usd":0.5,"uuid":"tw-2"}'
"#;

fn fake_claude(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("claude");
    std::fs::write(&path, FAKE_CLAUDE).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_worker_runs_a_task_with_flags_and_with_the_registry_fallback() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let sandbox = mock.add_sandbox("worker", "claudecode");
    let dir = tempfile::tempdir().unwrap();
    let claude = fake_claude(dir.path());
    let home = dir.path().join("state");

    // 1. Identity from flags (proxy token).
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(["task-worker", "--poll-interval", "0.2"])
        .arg("--server")
        .arg(server.url())
        .arg("--sandbox-id")
        .arg(&sandbox.id)
        .arg("--proxy-token")
        .arg(&sandbox.proxy_token)
        .arg("--claude-bin")
        .arg(&claude)
        .arg("--work-dir")
        .arg(dir.path())
        .env("AGENTSERVER_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let task_id = mock.create_task(&sandbox.id, "work");
    let record = mock
        .wait_task_final(&task_id, Duration::from_secs(20))
        .await;
    terminate(&mut child);
    let record = record.expect("task-worker never reported the task");
    assert_eq!(record.status, "completed");
    assert_eq!(record.result, Some(serde_json::json!("worker ok")));
    assert_eq!(record.num_turns, Some(2));
    assert_eq!(record.final_updates().len(), 1);

    // 2. Identity from the first registry.json entry (its tunnel token as proxy token).
    std::fs::write(
        home.join("registry.json"),
        serde_json::to_vec_pretty(&serde_json::json!({"entries": [{
            "dir": dir.path(),
            "server": server.url(),
            "sandbox_id": sandbox.id,
            "tunnel_token": sandbox.tunnel_token,
            "workspace_id": sandbox.workspace_id,
            "name": "worker",
            "type": "claudecode"
        }]}))
        .unwrap(),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(["task-worker", "--poll-interval", "0.2", "--claude-bin"])
        .arg(&claude)
        .current_dir(dir.path())
        .env("AGENTSERVER_HOME", &home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let task_id = mock.create_task(&sandbox.id, "again");
    let record = mock
        .wait_task_final(&task_id, Duration::from_secs(20))
        .await;
    terminate(&mut child);
    assert_eq!(
        record.expect("no status via the registry fallback").status,
        "completed"
    );
}

#[test]
fn task_worker_without_identity_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .arg("task-worker")
        .env("AGENTSERVER_HOME", dir.path())
        .env_remove("AGENTSERVER_PROXY_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--server") || stderr.contains("server"),
        "{stderr}"
    );
}

fn terminate(child: &mut std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "task-worker exited with {status:?}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task-worker ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
