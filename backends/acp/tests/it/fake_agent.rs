//! Bad input and protocol edges with a fake agent (`fake_agent.py`, spawned as the agent
//! command): malformed JSON, unknown messages, permission and fs requests outside the
//! workspace, a prompt that never returns, an agent that exits mid-turn, stop reasons.

use std::time::Duration;

use agentserver_backend_acp::{AcpBackend, AcpConfig, PermissionPolicy};
use agentserver_plugin_api::{Backend, CancellationToken, FailureKind, TaskStatus};

use crate::support::*;

fn workspace() -> (tempfile::TempDir, std::path::PathBuf) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let work = std::fs::canonicalize(work).unwrap();
    (dir, work)
}

#[tokio::test]
async fn plain_task_forwards_updates_byte_for_byte_and_reuses_the_agent() {
    let (_dir, work) = workspace();
    let backend = AcpBackend::new(fake_config(&work));
    backend.start().await.expect("the fake agent starts");
    let fields = backend.agent_info_fields().await;
    assert_eq!(fields["acp_agent_name"], "fake-acp");
    assert_eq!(fields["acp_agent_version"], "0.0.1");
    let pid = backend.agent_pid().await.expect("running");

    let done = run(&backend, task(&work, "PLAIN")).await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        done.outcome
    );
    assert_eq!(done.outcome.result.as_deref(), Some("hello from fake-acp"));
    assert_eq!(
        done.kinds(),
        ["available_commands_update", "agent_message_chunk", "result"]
    );
    // Forwarded unmodified: Python's `json.dumps` puts a space after each colon, which a
    // re-serialisation would have dropped.
    assert!(
        done.raw[1].starts_with(r#"{"jsonrpc": "2.0", "method": "session/update""#),
        "{}",
        done.raw[1]
    );
    let result = done.result_event();
    assert_eq!(result["subtype"], "success");
    assert_eq!(result["stop_reason"], "end_turn");
    assert_eq!(result["result"], "hello from fake-acp");

    // A second task is a second session in the same process.
    let again = run(&backend, task(&work, "PLAIN")).await;
    assert_eq!(again.outcome.status, TaskStatus::Completed);
    assert_ne!(
        again.result_event()["session_id"],
        result["session_id"],
        "a new session per task"
    );
    assert_eq!(backend.agent_pid().await, Some(pid));
    backend.shutdown().await;
    assert!(wait_gone(pid, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn unknown_notification_and_request_are_survived() {
    let (_dir, work) = workspace();
    let backend = AcpBackend::new(fake_config(&work));
    let done = run(&backend, task(&work, "UNKNOWN_NOTIFICATION")).await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        done.outcome
    );
    // The unknown request was answered "method not found".
    assert!(
        done.text().contains("unknown request answered: -32601"),
        "{}",
        done.text()
    );
    backend.shutdown().await;
}

#[tokio::test]
async fn malformed_json_fails_the_task_and_the_next_task_restarts_the_agent() {
    let (_dir, work) = workspace();
    let backend = AcpBackend::new(fake_config(&work));
    backend.start().await.unwrap();
    let first = backend.agent_pid().await.unwrap();
    let done = run(&backend, task(&work, "MALFORMED")).await;
    assert_eq!(done.outcome.status, TaskStatus::Failed);
    assert_eq!(done.outcome.failure_kind, Some(FailureKind::System));
    let reason = done.outcome.failure_reason.clone().unwrap();
    assert!(
        reason.contains("not JSON-RPC") && reason.contains("this is not json"),
        "{reason}"
    );
    assert_eq!(done.result_event()["subtype"], "error");
    // The agent that broke the protocol is stopped at once, not at the next task.
    assert!(wait_gone(first, Duration::from_secs(5)).await);
    assert_eq!(backend.agent_pid().await, None);

    let next = run(&backend, task(&work, "PLAIN")).await;
    assert_eq!(
        next.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        next.outcome
    );
    let second = backend.agent_pid().await.unwrap();
    assert_ne!(first, second, "a new agent process");
    backend.shutdown().await;
}

#[tokio::test]
async fn permissions_are_allowed_inside_the_workspace_and_rejected_outside() {
    let (_dir, work) = workspace();
    let backend = AcpBackend::new(fake_config(&work));
    let inside = format!("PERMISSION:{}/notes.txt", work.display());
    let done = run(&backend, task(&work, &inside)).await;
    let selected = |id: &str| {
        format!(r#"permission: {{"outcome": {{"optionId": "{id}", "outcome": "selected"}}}}"#)
    };
    assert!(done.text().contains(&selected("yes")), "{}", done.text());
    let done = run(&backend, task(&work, "PERMISSION:/etc/passwd")).await;
    assert!(done.text().contains(&selected("no")), "{}", done.text());
    let dotdot = format!("PERMISSION:{}/../escape.txt", work.display());
    let done = run(&backend, task(&work, &dotdot)).await;
    assert!(done.text().contains(&selected("no")), "{}", done.text());
    backend.shutdown().await;

    let deny = AcpBackend::new(AcpConfig {
        permissions: PermissionPolicy::Deny,
        ..fake_config(&work)
    });
    let done = run(&deny, task(&work, &inside)).await;
    assert!(done.text().contains(&selected("no")), "{}", done.text());
    deny.shutdown().await;
}

#[tokio::test]
async fn fs_requests_are_confined_to_the_workspace() {
    let (dir, work) = workspace();
    std::fs::write(work.join("in.txt"), "inside\n").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), work.join("link.txt")).unwrap();
    let backend = AcpBackend::new(fake_config(&work));

    let read = |path: String| task(&work, &format!("READ:{path}"));
    let done = run(&backend, read(format!("{}/in.txt", work.display()))).await;
    assert!(
        done.text().contains(r#"read: {"content": "inside\n"}"#),
        "{}",
        done.text()
    );
    for (path, why) in [
        ("/etc/passwd".to_owned(), "outside"),
        (format!("{}/link.txt", work.display()), "outside"),
        (format!("{}/../secret.txt", work.display()), "contains `..`"),
        ("relative.txt".to_owned(), "not absolute"),
    ] {
        let done = run(&backend, read(path.clone())).await;
        let text = done.text();
        assert!(
            text.contains(r#""code": -32602"#) && text.contains(why),
            "{path}: {text}"
        );
        assert!(!text.contains(r#""content""#), "{path}: {text}");
        assert_eq!(done.outcome.status, TaskStatus::Completed);
    }

    let write = |path: String| task(&work, &format!("WRITE:{path}"));
    let done = run(&backend, write(format!("{}/new.txt", work.display()))).await;
    assert!(done.text().contains("write: {}"), "{}", done.text());
    assert_eq!(
        std::fs::read_to_string(work.join("new.txt")).unwrap(),
        "written\n"
    );
    let outside = dir.path().join("planted.txt");
    let done = run(&backend, write(outside.display().to_string())).await;
    assert!(done.text().contains("outside"), "{}", done.text());
    assert!(!outside.exists());
    let done = run(&backend, write(format!("{}/link.txt", work.display()))).await;
    assert!(done.text().contains("outside"), "{}", done.text());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secret.txt")).unwrap(),
        "secret\n"
    );
    backend.shutdown().await;
}

#[tokio::test]
async fn cancel_sends_session_cancel_answers_permissions_cancelled_and_keeps_the_agent() {
    let (_dir, work) = workspace();
    let backend = AcpBackend::new(fake_config(&work));
    backend.start().await.unwrap();
    let pid = backend.agent_pid().await.unwrap();
    // Cancel once "working..." (the second event) has arrived.
    let done = run_with(
        &backend,
        task(&work, "HANG"),
        CancellationToken::new(),
        Some(2),
    )
    .await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Cancelled,
        "{:?}",
        done.outcome
    );
    assert!(
        done.outcome
            .failure_reason
            .as_deref()
            .unwrap()
            .contains("stopReason: cancelled")
    );
    // The permission the agent asked after session/cancel was answered `cancelled`.
    assert!(
        done.text()
            .contains(r#"permission: {"outcome": {"outcome": "cancelled"}}"#),
        "{}",
        done.text()
    );
    assert_eq!(done.result_event()["stop_reason"], "cancelled");
    // The turn ended as ACP says: the agent is kept for the next task.
    assert_eq!(backend.agent_pid().await, Some(pid));
    let next = run(&backend, task(&work, "PLAIN")).await;
    assert_eq!(next.outcome.status, TaskStatus::Completed);
    backend.shutdown().await;
}

#[tokio::test]
async fn a_prompt_that_never_returns_is_bounded_after_cancel_and_the_group_is_stopped() {
    let (_dir, work) = workspace();
    let backend = AcpBackend::new(AcpConfig {
        cancel_timeout: Duration::from_millis(500),
        ..fake_config(&work)
    });
    backend.start().await.unwrap();
    let pid = backend.agent_pid().await.unwrap();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let started = std::time::Instant::now();
    let done = run_with(&backend, task(&work, "NEVER"), cancel, None).await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Cancelled,
        "{:?}",
        done.outcome
    );
    assert!(
        done.outcome
            .failure_reason
            .as_deref()
            .unwrap()
            .contains("process group was stopped"),
        "{:?}",
        done.outcome
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(wait_gone(pid, Duration::from_secs(5)).await);
    assert_eq!(backend.agent_pid().await, None);
}

#[tokio::test]
async fn a_silent_turn_fails_after_the_idle_timeout() {
    let (_dir, work) = workspace();
    let backend = AcpBackend::new(AcpConfig {
        idle_timeout: Some(Duration::from_millis(700)),
        ..fake_config(&work)
    });
    let done = run(&backend, task(&work, "NEVER")).await;
    assert_eq!(done.outcome.status, TaskStatus::Failed);
    assert!(
        done.outcome
            .failure_reason
            .as_deref()
            .unwrap()
            .contains("sent nothing"),
        "{:?}",
        done.outcome
    );
    // The host goes on: the next task gets a new agent.
    let next = run(&backend, task(&work, "PLAIN")).await;
    assert_eq!(next.outcome.status, TaskStatus::Completed);
    backend.shutdown().await;
}

#[tokio::test]
async fn an_agent_exiting_mid_turn_is_a_failed_task_with_its_status_and_stderr() {
    let (_dir, work) = workspace();
    let backend = AcpBackend::new(fake_config(&work));
    let done = run(&backend, task(&work, "EXIT")).await;
    assert_eq!(done.outcome.status, TaskStatus::Failed);
    assert_eq!(done.outcome.failure_kind, Some(FailureKind::System));
    let reason = done.outcome.failure_reason.unwrap();
    assert!(
        reason.contains("exit status: 3") && reason.contains("fake-acp: boom"),
        "{reason}"
    );
    backend.shutdown().await;
}

#[tokio::test]
async fn stop_reasons_other_than_end_turn_fail_the_task() {
    let (_dir, work) = workspace();
    let backend = AcpBackend::new(fake_config(&work));
    for reason in ["max_tokens", "max_turn_requests", "refusal"] {
        let done = run(&backend, task(&work, &format!("STOP:{reason}"))).await;
        assert_eq!(done.outcome.status, TaskStatus::Failed);
        assert_eq!(done.outcome.failure_kind, Some(FailureKind::User));
        assert!(
            done.outcome
                .failure_reason
                .clone()
                .unwrap()
                .contains(reason)
        );
        assert_eq!(done.result_event()["stop_reason"], reason);
    }
    backend.shutdown().await;
}

#[tokio::test]
async fn start_failures_are_clear_and_leave_nothing_running() {
    let (_dir, work) = workspace();
    let silent = AcpBackend::new(AcpConfig {
        initialize_timeout: Duration::from_millis(500),
        ..fake_config(&work).with_env("FAKE_ACP_MODE", "no_init")
    });
    let err = silent.start().await.unwrap_err().to_string();
    assert!(err.contains("`initialize` within 0.5s"), "{err}");
    assert_eq!(silent.agent_pid().await, None);
    // A task on it fails the same way, and the host goes on.
    let done = run(&silent, task(&work, "PLAIN")).await;
    assert_eq!(done.outcome.status, TaskStatus::Failed);
    assert!(done.outcome.failure_reason.unwrap().contains("initialize"));

    let missing = AcpBackend::new(AcpConfig::new(
        vec!["/nonexistent/acp-agent".into()],
        work.clone(),
    ));
    let err = missing.start().await.unwrap_err().to_string();
    assert!(
        err.contains("cannot start the ACP agent `/nonexistent/acp-agent`"),
        "{err}"
    );
    let none = AcpBackend::new(AcpConfig::new(vec![], work));
    assert!(
        none.start()
            .await
            .unwrap_err()
            .to_string()
            .contains("--acp-command")
    );
}

/// The JSON after `terminal: ` in the task's text.
fn terminal_report(done: &Finished) -> serde_json::Value {
    let text = done.text();
    let json = text
        .split_once("terminal: ")
        .map(|(_, rest)| rest.trim_end_matches("hello from fake-acp"))
        .unwrap_or_else(|| panic!("no terminal report in {text}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

#[tokio::test]
async fn terminals_run_in_the_workspace_with_bounded_output_and_are_killed() {
    let (_dir, work) = workspace();
    let backend = AcpBackend::new(fake_config(&work));

    let done = run(&backend, task(&work, "TERM_RUN")).await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        done.outcome
    );
    let report = terminal_report(&done);
    assert_eq!(report["exit"]["exitCode"], 7, "{report}");
    let output = report["output"]["output"].as_str().unwrap();
    assert!(
        output.contains(&format!("héllo {}\n", work.display())) && output.contains("err\n"),
        "stdout and stderr, run in the workspace: {report}"
    );
    assert_eq!(report["output"]["truncated"], false);
    assert_eq!(report["output"]["exitStatus"]["exitCode"], 7);
    assert_eq!(report["release"], serde_json::json!({}));
    assert_eq!(
        report["after_release"]["code"], -32602,
        "a released terminal is gone: {report}"
    );

    let done = run(&backend, task(&work, "TERM_LIMIT")).await;
    let report = terminal_report(&done);
    assert_eq!(report["output"]["truncated"], true, "{report}");
    assert_eq!(
        report["output"]["output"], "xxxxxxxEND",
        "the newest 10 bytes: {report}"
    );

    let done = run(&backend, task(&work, "TERM_KILL")).await;
    let report = terminal_report(&done);
    assert_eq!(report["exit"]["signal"], "SIGTERM", "{report}");

    let done = run(&backend, task(&work, "TERM_OUTSIDE")).await;
    let text = done.text();
    assert!(
        text.contains(r#""code": -32602"#) && text.contains("outside"),
        "{text}"
    );

    // A terminal the agent never released is killed when its task ends.
    let done = run(&backend, task(&work, "TERM_LEAK")).await;
    let text = done.text();
    let pid: u32 = text
        .split_once("pid: ")
        .and_then(|(_, rest)| {
            rest.split_whitespace()
                .next()?
                .trim_end_matches("hello")
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no pid in {text}"));
    assert!(
        wait_gone(pid, Duration::from_secs(5)).await,
        "terminal {pid} outlived its task"
    );
    backend.shutdown().await;
}

fn reported_pid(done: &Finished) -> u32 {
    let text = done.text();
    text.split_once("pid: ")
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {text}"))
}

#[tokio::test]
async fn what_a_terminal_or_the_agent_daemonized_does_not_outlive_the_task() {
    // As the host binary does: orphans are reparented to us.
    assert!(agentserver_common::process::become_subreaper());
    let (_dir, work) = workspace();
    let backend = AcpBackend::new(fake_config(&work));

    // A terminal command left a daemon in a session of its own: the task's scope sweep.
    let done = run(&backend, task(&work, "TERM_DAEMON")).await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        done.outcome
    );
    let daemon = reported_pid(&done);
    assert!(
        wait_gone(daemon, Duration::from_secs(5)).await,
        "the terminal's daemon {daemon} outlived its task"
    );

    // The agent daemonized a child: the shared scope's orphan sweep when no task runs; the
    // agent itself stays.
    let done = run(&backend, task(&work, "AGENT_DAEMON")).await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        done.outcome
    );
    let daemon = reported_pid(&done);
    assert!(
        wait_gone(daemon, Duration::from_secs(5)).await,
        "the agent's daemon {daemon} outlived the task"
    );
    let agent = backend.agent_pid().await.expect("the agent runs");
    assert!(agentserver_common::process::is_alive(agent));
    backend.shutdown().await;
}

#[tokio::test]
async fn the_next_session_is_made_ahead_of_time() {
    let (_dir, work) = workspace();
    let slow = |prepare_sessions| {
        AcpBackend::new(AcpConfig {
            prepare_sessions,
            ..fake_config(&work).with_env("FAKE_ACP_SESSION_DELAY", "2")
        })
    };
    let backend = slow(true);
    backend.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = std::time::Instant::now();
    let done = run(&backend, task(&work, "PLAIN")).await;
    assert_eq!(done.outcome.status, TaskStatus::Completed);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the spare session was used: {:?}",
        started.elapsed()
    );
    // Its updates, sent before the task existed, were kept for it.
    assert_eq!(done.kinds()[0], "available_commands_update");
    backend.shutdown().await;

    let backend = slow(false);
    backend.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = std::time::Instant::now();
    run(&backend, task(&work, "PLAIN")).await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    backend.shutdown().await;
}
