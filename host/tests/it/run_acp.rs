//! `agentserver run --backend acp` as a user runs it, with the **real** `opencode acp` as the
//! ACP agent (the `opencode-acp` preset, its command pointed at the pinned binary) talking to
//! the fake LLM: the sandbox registers as `custom`, the agent info carries the agent's name
//! and version from `initialize`, a task's `session/update` notifications reach the bridge
//! unmodified followed by the final `result` event, the status and result reach the mock,
//! and on SIGTERM the host exits 0 with the agent's process group stopped. And: without an
//! agent command nothing is registered.

use crate::support::run as support_run;
use agentserver_integration::opencode_support;

use std::process::{Command, Stdio};
use std::time::Duration;

/// Whether a pid is a live process (not a zombie): the process owner's.
use agentserver_common::process::is_alive as alive;
use agentserver_mock::fake_llm::{DEFAULT_TEXT, FakeLlm};
use agentserver_mock::{MockConfig, MockServer};
use opencode_support::{offline_env, real_opencode, seed_home};
use support_run::{KillOnDrop, drain, sigterm, wait_exit};

const LIMIT: Duration = Duration::from_secs(60);

/// Children of `parent` whose command line contains `word`.
fn children_running(parent: u32, word: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(word)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_opencode_acp_serves_a_task_and_stops_the_agent_on_sigterm() {
    let opencode = real_opencode();
    let llm = FakeLlm::start().await.expect("fake LLM");
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let dir = tempfile::tempdir().unwrap();
    let (state_dir, home, tmp) = (
        dir.path().join("state"),
        dir.path().join("home"),
        dir.path().join("tmp"),
    );
    for d in [&home, &tmp, &dir.path().join("work")] {
        std::fs::create_dir_all(d).unwrap();
    }
    let work = std::fs::canonicalize(dir.path().join("work")).unwrap();
    seed_home(&home).unwrap();
    let env = offline_env(&home, &tmp, &llm.openai_base_url());

    let mut child = Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args([
            "run",
            "--backend",
            "acp",
            "--acp-preset",
            "opencode-acp",
            "--skip-open-browser",
            "--poll-interval",
            "0.2",
        ])
        .arg("--acp-command")
        .arg(format!("'{}' acp", opencode.display()))
        .arg("--server")
        .arg(server.url())
        .current_dir(&work)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("AGENTSERVER_HOME", &state_dir)
        .env("AGENTSERVER_LOGIN_WITHOUT_TTY", "1")
        .env("RUST_LOG", "warn,agentserver_backend_acp=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let host_pid = child.id();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let mut child = KillOnDrop(child);
    let logs = || {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            stdout.lock().unwrap(),
            stderr.lock().unwrap()
        )
    };

    assert!(
        mock.wait_until(LIMIT, |s| !s.sandboxes().is_empty()).await,
        "the host never registered\n{}",
        logs()
    );
    let sandbox = mock.sandboxes()[0].clone();
    assert_eq!(sandbox.sandbox_type, "custom");
    assert!(
        mock.wait_until(LIMIT, |s| s
            .sandbox(&sandbox.id)
            .and_then(|sb| sb.agent_info)
            .is_some_and(|info| info.get("acp_agent_name").is_some()))
            .await,
        "no agent info with the ACP agent's name arrived\n{}",
        logs()
    );
    let info = mock.sandbox(&sandbox.id).unwrap().agent_info.unwrap();
    assert_eq!(info["acp_agent_name"], "OpenCode", "{info}");
    assert_eq!(info["acp_agent_version"], "1.18.33", "{info}");
    let agents = children_running(host_pid, "acp");
    assert_eq!(agents.len(), 1, "one agent process: {agents:?}\n{}", logs());
    let agent_pid = agents[0];

    let task_id = mock.create_task(&sandbox.id, "Say hello");
    let record = mock
        .wait_task_final(&task_id, LIMIT)
        .await
        .unwrap_or_else(|| panic!("the task got no final status\n{}", logs()));
    assert_eq!(record.status, "completed", "{record:?}\n{}", logs());
    assert_eq!(record.result, Some(serde_json::json!(DEFAULT_TEXT)));

    let session_id = record.session_id.clone().expect("a bridge session");
    let events = mock.bridge_worker_events(&session_id);
    let (last, updates) = events.split_last().expect("events");
    assert!(!updates.is_empty(), "{events:?}");
    for update in updates {
        assert_eq!(update["method"], "session/update", "{update}");
        assert_eq!(update["jsonrpc"], "2.0");
    }
    assert!(
        updates
            .iter()
            .any(|u| u["params"]["update"]["sessionUpdate"] == "agent_message_chunk"),
        "{events:?}"
    );
    assert_eq!(last["type"], "result", "{last}");
    assert_eq!(last["stop_reason"], "end_turn");
    assert_eq!(last["result"], DEFAULT_TEXT);

    sigterm(host_pid);
    let status = wait_exit(&mut child.0, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("agentserver did not exit after SIGTERM\n{}", logs()));
    assert!(status.success(), "exit {status:?}\n{}", logs());
    assert!(!alive(agent_pid), "the agent outlived the host\n{}", logs());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !stdout.lock().unwrap().contains("To resume this session") {
        assert!(std::time::Instant::now() < deadline, "{}", logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stdout.lock().unwrap().contains(&format!(
            "To resume this session: agentserver run --backend acp --resume {}",
            sandbox.id
        )),
        "{}",
        logs()
    );
}

#[tokio::test]
async fn run_acp_without_an_agent_command_registers_nothing() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(["run", "--backend", "acp", "--skip-open-browser"])
        .arg("--server")
        .arg(server.url())
        .current_dir(dir.path())
        .env("AGENTSERVER_HOME", dir.path().join("state"))
        .output();
    let output = tokio::time::timeout(LIMIT, output)
        .await
        .expect("exits in time")
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("cannot use the acp backend") && err.contains("--acp-command"),
        "{err}"
    );
    assert!(server.state().sandboxes().is_empty());
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentserver"))
        .args(["run", "--backend", "acp", "--acp-command", "agent 'open"])
        .arg("--server")
        .arg(server.url())
        .current_dir(dir.path())
        .env("AGENTSERVER_HOME", dir.path().join("state"))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("--acp-command: cannot split"), "{err}");
    assert!(server.state().sandboxes().is_empty());
}
