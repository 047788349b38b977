//! `agentserver run` as a user runs it: the binary logs in through the device flow, registers,
//! connects the tunnel, runs a task with the claudecode backend (a scripted stand-in for the
//! `claude` CLI), reports it once, and on SIGTERM drains, clears the session pid and exits 0.

use crate::support::run as support_run;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use agentserver_mock::{MockConfig, MockServer};
use support_run::{
    RunDirs, expect_exit, pid_cleared, registered_sandbox, session_file, sigterm, wait_agent_info,
};

const FAKE_CLAUDE: &str = r#"#!/bin/sh
read init; read user
echo '{"type":"system","subtype":"init","session_id":"s1","uuid":"u-1"}'
echo '{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"done"}]},"uuid":"u-2"}'
echo '{"type":"result","subtype":"success","is_error":false,"result":"all done","num_turns":1,"total_cost_usd":0.25,"uuid":"u-3"}'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_registers_serves_a_task_and_drains_on_sigterm() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let run = RunDirs::new(FAKE_CLAUDE);
    let (home, work) = (run.home.clone(), run.work.clone());

    let mut child = run
        .run_command(&server.url(), &[], &[])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Registration happens after the device login; then the tunnel comes up.
    let sandbox = registered_sandbox(&mock).await;
    assert_eq!(sandbox.sandbox_type, "claudecode");
    wait_agent_info(&mock, &sandbox.id).await;
    let session = session_file(&home, &sandbox.id);
    assert_eq!(session["pid"], child.id(), "pid stamped while running");
    // .mcp.json points Claude Code at `agentserver mcp-server` for this sandbox.
    let mcp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.join(".mcp.json")).unwrap()).unwrap();
    assert_eq!(mcp["mcpServers"]["agentserver"]["args"][0], "mcp-server");
    assert_eq!(
        mcp["mcpServers"]["agentserver"]["env"]["AGENTSERVER_SANDBOX_ID"],
        sandbox.id
    );

    let task_id = mock.create_task(&sandbox.id, "do the thing");
    let record = mock
        .wait_task_final(&task_id, Duration::from_secs(20))
        .await
        .expect("the task got no final status");
    assert_eq!(record.status, "completed");
    assert_eq!(record.result, Some(serde_json::json!("all done")));
    assert_eq!(record.final_updates().len(), 1);
    let events = mock.bridge_worker_events(record.session_id.as_deref().unwrap());
    let uuids: Vec<_> = events.iter().filter_map(|e| e["uuid"].as_str()).collect();
    assert_eq!(
        &uuids[..3],
        ["u-1", "u-2", "u-3"],
        "events in order: {events:?}"
    );

    // First SIGTERM drains; nothing runs, so the host exits 0 promptly.
    sigterm(child.id());
    let status = expect_exit(&mut child, Duration::from_secs(20), "after SIGTERM").await;
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.success(),
        "exit {status:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("Agent disconnected."), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "To resume this session: agentserver --resume {}",
            sandbox.id
        )),
        "{stdout}"
    );
    let session = session_file(&home, &sandbox.id);
    assert!(pid_cleared(&session), "pid cleared: {session}");
    // The tunnel was closed with a normal WebSocket close, not dropped.
    assert!(
        mock.wait_until(Duration::from_secs(5), |s| s
            .tunnel
            .connections(&sandbox.id)
            .iter()
            .all(|c| c.close_code.is_some()))
            .await,
        "the tunnel connection was not closed"
    );
    let closes: Vec<_> = mock
        .tunnel
        .connections(&sandbox.id)
        .iter()
        .map(|c| c.close_code)
        .collect();
    assert_eq!(closes.last(), Some(&Some(1000)), "close codes: {closes:?}");
    // No agent card is posted unless `--register-card` is given (servers v0.37+ build their
    // own from the agent info, as the mock does).
    assert!(
        mock.requests_to("POST", agentserver_backend_claudecode::AGENT_CARD_PATH)
            .is_empty(),
        "an agent card was posted without --register-card"
    );
    // The tokens never reach the output.
    for token in [&sandbox.tunnel_token, &sandbox.proxy_token] {
        assert!(!stdout.contains(token.as_str()) && !stderr.contains(token.as_str()));
    }
}

/// `--register-card` posts the fixed Claude Code card with the tunnel token (servers older
/// than v0.37); resuming that sandbox with another backend is refused with the right command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_card_is_posted_and_resume_keeps_the_sandbox_type() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("state");
    let claude = dir.path().join("claude");
    std::fs::write(&claude, FAKE_CLAUDE).unwrap();
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agentserver = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentserver"));
        cmd.args(args)
            .arg("--server")
            .arg(server.url())
            .current_dir(dir.path())
            .env("AGENTSERVER_HOME", &home)
            .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };

    let mut child = agentserver(&["run", "--skip-open-browser", "--register-card"])
        .arg("--claude-bin")
        .arg(&claude)
        .spawn()
        .unwrap();
    assert!(
        mock.wait_until(Duration::from_secs(20), |s| !s
            .requests_to("POST", agentserver_backend_claudecode::AGENT_CARD_PATH)
            .is_empty())
            .await,
        "no agent card was posted"
    );
    let sandbox = registered_sandbox(&mock).await;
    assert_eq!(sandbox.sandbox_type, "claudecode");
    let post = &mock.requests_to("POST", agentserver_backend_claudecode::AGENT_CARD_PATH)[0];
    assert_eq!(
        post.header("authorization"),
        Some(format!("Bearer {}", sandbox.tunnel_token).as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&post.body).unwrap();
    assert_eq!(
        body,
        agentserver_backend_claudecode::agent_card_body(&sandbox.name)
    );
    // Signal handlers are installed once the worker runs (the tunnel is up).
    wait_agent_info(&mock, &sandbox.id).await;
    sigterm(child.id());
    let status = expect_exit(&mut child, Duration::from_secs(20), "after SIGTERM").await;
    assert!(status.success(), "exit {status:?}");

    // The sandbox is a claudecode sandbox: `--backend opencode` cannot take it over.
    let refused = agentserver(&["run", "--backend", "opencode", "--resume", &sandbox.id])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("agentserver --resume {}", sandbox.id))
            && stderr.contains("type `claudecode`"),
        "{stderr}"
    );
    assert_eq!(mock.sandboxes().len(), 1, "nothing new was registered");
}
