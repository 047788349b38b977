//! Driver tests with the scripted `fake-claude`: the stream-json exchange, forwarding, and the
//! upstream hangs (no exit after `result`, stream stopping mid-turn, no `result` at all).

use crate::support;

use std::time::{Duration, Instant};

use agentserver_backend_claudecode::process::processes_in_group;
use agentserver_backend_claudecode::{ClaudeCodeBackend, ClaudeCodeConfig, Ending};
use agentserver_plugin_api::{
    Backend, CancellationToken, EventSink, FailureKind, Task, TaskStatus,
};
use serde_json::{Value, json};
use support::*;

const START: &str = "read\nread\n";

#[tokio::test]
async fn happy_path_argv_stdin_and_result() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "args\n{START}out {{\"type\":\"system\",\"subtype\":\"init\"}}\nresult all good\nwait_eof\n"
    );
    let backend = fake_backend(&script, |_| {});
    let mut t = task("hello \"world\"", dir.path());
    t.max_turns = 4;
    t.system_context = "be terse".into();
    t.max_budget_usd = 0.5;
    let done = run(&backend, t).await;

    assert_eq!(
        done.kinds(),
        [
            "fake_args",
            "fake_stdin",
            "fake_stdin",
            "system/init",
            "result/success",
            "fake_eof"
        ]
    );
    let v = done.values();
    assert_eq!(
        v[0]["args"],
        json!([
            "--print",
            "--output-format",
            "stream-json",
            "--input-format",
            "stream-json",
            "--verbose",
            "--permission-mode",
            "bypassPermissions",
            "--max-turns",
            "4",
            "--system-prompt",
            "be terse",
            "--max-budget-usd",
            "0.50"
        ])
    );
    let cwd = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(v[0]["cwd"], cwd.display().to_string());
    // First the initialize control request, then the user message.
    assert_eq!(v[1]["line"]["type"], "control_request");
    assert_eq!(v[1]["line"]["request"]["subtype"], "initialize");
    assert_eq!(v[1]["line"]["request"]["systemPrompt"], "be terse");
    assert_eq!(
        v[2]["line"],
        json!({"type":"user","message":{"role":"user","content":"hello \"world\""}})
    );
    // stdin was closed after the result, so the CLI saw EOF and exited by itself.
    let r = &done.report;
    assert_eq!(r.outcome.status, TaskStatus::Completed);
    assert_eq!(r.outcome.result.as_deref(), Some("all good"));
    assert_eq!(r.outcome.num_turns, Some(1));
    assert_eq!(r.outcome.total_cost_usd, Some(0.01));
    assert_eq!(r.stats.ending, Ending::Exited);
    assert_eq!(r.stats.exit_code, Some(0));
    assert!(r.stats.signals_sent.is_empty());
    assert_eq!(r.stats.events, 6);
}

#[tokio::test]
async fn lines_are_forwarded_byte_for_byte_and_garbage_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let odd = r#"{"type":"assistant",   "z":1,"a":[ 2 ,3],"u":"\u00e9 é"}"#;
    let script = format!(
        "{START}out {odd}\nout this is not json\nout \nout    \nout [1,2,3]\nout [\"x\"]\nout {{\"truncated\":\nout 42\nout {{\"type\":5}}\nresult ok\nwait_eof\n"
    );
    let backend = fake_backend(&script, |_| {});
    let done = run(&backend, task("x", dir.path())).await;
    assert_eq!(done.events[2], odd, "forwarded unmodified");
    assert_eq!(done.kinds()[..3], ["fake_stdin", "fake_stdin", "assistant"]);
    let s = &done.report.stats;
    assert_eq!(s.blank_lines, 2);
    // not JSON, two JSON arrays, truncated JSON, a bare number
    assert_eq!(s.invalid_lines, 5);
    // Any JSON object is forwarded, whatever its `type`.
    assert!(done.events.iter().any(|e| e == r#"{"type":5}"#));
    assert_eq!(done.report.outcome.status, TaskStatus::Completed);
}

#[tokio::test]
async fn five_mib_single_line_is_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let size = 5 * 1024 * 1024;
    let script = format!("{START}big {size}\nresult ok\nwait_eof\n");
    let backend = fake_backend(&script, |_| {});
    let done = run(&backend, task("x", dir.path())).await;
    assert_eq!(done.report.outcome.status, TaskStatus::Completed);
    let big: Vec<&String> = done.events.iter().filter(|e| e.len() > 1024).collect();
    assert_eq!(big.len(), 1);
    assert_eq!(big[0].len(), size);
    assert!(big[0].starts_with(r#"{"type":"assistant","pad":"xxx"#));
    assert_eq!(done.report.stats.oversized_lines, 0);
}

#[tokio::test]
async fn lines_over_the_limit_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("{START}big 300000\nout {{\"type\":\"after\"}}\nresult ok\nwait_eof\n");
    let backend = fake_backend(&script, |c| c.max_line_bytes = 100_000);
    let done = run(&backend, task("x", dir.path())).await;
    assert_eq!(done.report.stats.oversized_lines, 1);
    assert!(done.kinds().contains(&"after".to_owned()));
    assert_eq!(done.report.outcome.status, TaskStatus::Completed);
}

#[tokio::test]
async fn control_requests_are_answered_and_not_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "{START}out {}\nread\nout {}\nread\nresult ok\nwait_eof\n",
        json!({"type":"control_request","request_id":"req_7","request":{"subtype":"can_use_tool","tool_name":"Bash","input":{"command":"ls"}}}),
        json!({"type":"control_request","request_id":"req_8","request":{"subtype":"hook_callback","callback_id":"cb"}}),
    );
    let backend = fake_backend(&script, |_| {});
    let done = run(&backend, task("x", dir.path())).await;
    assert!(
        !done
            .kinds()
            .iter()
            .any(|k| k.starts_with("control_request"))
    );
    let answers: Vec<Value> = done
        .values()
        .into_iter()
        .filter(|v| v["line"]["type"] == "control_response")
        .map(|v| v["line"]["response"].clone())
        .collect();
    assert_eq!(answers.len(), 2, "{:?}", done.events);
    assert_eq!(answers[0]["request_id"], "req_7");
    assert_eq!(answers[0]["subtype"], "success");
    assert_eq!(answers[0]["response"]["behavior"], "allow");
    assert_eq!(answers[1]["request_id"], "req_8");
    assert_eq!(answers[1]["response"], json!({"continue": true}));
    assert_eq!(done.report.stats.control_requests, 2);
}

#[tokio::test]
async fn no_exit_after_result_is_killed_and_still_completes() {
    let dir = tempfile::tempdir().unwrap();
    // Ignores stdin EOF and SIGTERM: only SIGKILL ends it.
    let script = format!("{START}ignore_term\nresult done anyway\nhang\n");
    let backend = fake_backend(&script, |c| {
        c.post_result_exit_timeout = Duration::from_millis(300);
        c.term_grace = Duration::from_millis(300);
    });
    let started = Instant::now();
    let done = run(&backend, task("x", dir.path())).await;
    let r = &done.report;
    assert_eq!(r.outcome.status, TaskStatus::Completed);
    assert_eq!(r.outcome.result.as_deref(), Some("done anyway"));
    assert_eq!(r.stats.ending, Ending::NoExitAfterResult);
    assert_eq!(r.stats.signals_sent, ["SIGTERM", "SIGKILL"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(processes_in_group(r.stats.pid.unwrap()).is_empty());
}

#[tokio::test]
async fn stream_stopping_mid_turn_trips_the_idle_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "{START}out {{\"type\":\"system\",\"subtype\":\"init\"}}\nerr upstream stalled here\nhang\n"
    );
    let backend = fake_backend(&script, |c| c.idle_timeout = Duration::from_millis(700));
    let done = run(&backend, task("x", dir.path())).await;
    let r = &done.report;
    assert_eq!(r.outcome.status, TaskStatus::Failed);
    assert_eq!(r.outcome.failure_kind, Some(FailureKind::System));
    let reason = r.outcome.failure_reason.clone().unwrap();
    assert!(reason.contains("stuck mid-turn"), "{reason}");
    assert!(
        reason.contains("upstream stalled here"),
        "stderr attached: {reason}"
    );
    assert_eq!(r.stats.ending, Ending::IdleTimeout);
    assert_eq!(r.stats.signals_sent, ["SIGTERM"]);
    assert_eq!(done.kinds().last().map(String::as_str), Some("system/init"));
}

#[tokio::test]
async fn a_failed_result_carries_the_stderr_tail() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "{START}err API Error: 500 from the upstream proxy\nout {{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":true,\"result\":\"API Error: 500\",\"terminal_reason\":\"api_error\",\"api_error_status\":500,\"num_turns\":1}}\nexit 1\n"
    );
    let backend = fake_backend(&script, |_| {});
    let done = run(&backend, task("x", dir.path())).await;
    let r = &done.report;
    assert_eq!(r.outcome.status, TaskStatus::Failed);
    let reason = r.outcome.failure_reason.clone().unwrap();
    assert!(reason.contains("500"), "{reason}");
    assert!(
        reason.ends_with("; stderr: API Error: 500 from the upstream proxy"),
        "{reason}"
    );
}

#[tokio::test]
async fn exiting_without_a_result_fails_with_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "{START}out {{\"type\":\"system\",\"subtype\":\"init\"}}\nerr Error: something broke\nexit 3\n"
    );
    let backend = fake_backend(&script, |_| {});
    let done = run(&backend, task("x", dir.path())).await;
    let r = &done.report;
    assert_eq!(r.outcome.status, TaskStatus::Failed);
    assert_eq!(r.outcome.failure_kind, Some(FailureKind::System));
    let reason = r.outcome.failure_reason.clone().unwrap();
    assert!(reason.contains("without a result"), "{reason}");
    assert!(reason.contains("exit status: 3"), "{reason}");
    assert!(reason.contains("Error: something broke"), "{reason}");
    assert_eq!(r.stats.exit_code, Some(3));
    assert_eq!(r.stats.ending, Ending::Exited);
}

#[tokio::test]
async fn closing_stdout_without_exiting_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("{START}close_stdout\nhang\n");
    let backend = fake_backend(&script, |c| {
        c.post_result_exit_timeout = Duration::from_millis(300);
    });
    let done = run(&backend, task("x", dir.path())).await;
    assert_eq!(done.report.stats.ending, Ending::NoExit);
    assert_eq!(done.report.outcome.status, TaskStatus::Failed);
    assert!(processes_in_group(done.report.stats.pid.unwrap()).is_empty());
}

#[tokio::test]
async fn cancel_closes_stdin_first() {
    // The default fake exits as soon as stdin closes: no signal is needed.
    let dir = tempfile::tempdir().unwrap();
    let script = format!("{START}out {{\"type\":\"system\",\"subtype\":\"init\"}}\nwait_eof\n");
    let backend = fake_backend(&script, |c| c.stdin_close_grace = Duration::from_secs(5));
    let cancel = CancellationToken::new();
    let (sink, mut rx) = EventSink::channel(64);
    let b = backend.clone();
    let t = task("x", dir.path());
    let c = cancel.clone();
    let run = tokio::spawn(async move { b.run(t, sink, c).await });
    // Wait for the init line, then cancel.
    loop {
        let ev = tokio::time::timeout(LIMIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if ev.as_json().contains("init") {
            break;
        }
    }
    let started = Instant::now();
    cancel.cancel();
    let report = tokio::time::timeout(LIMIT, run).await.unwrap().unwrap();
    assert_eq!(report.outcome.status, TaskStatus::Cancelled);
    assert_eq!(report.stats.ending, Ending::Cancelled);
    assert!(report.stats.signals_sent.is_empty(), "{:?}", report.stats);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn cancel_kills_the_whole_group_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("{START}ignore_term\nspawn_sleeper\nhang\n");
    let backend = fake_backend(&script, |c| {
        c.stdin_close_grace = Duration::from_millis(300);
        c.term_grace = Duration::from_millis(300);
    });
    let cancel = CancellationToken::new();
    let (sink, mut rx) = EventSink::channel(64);
    let b = backend.clone();
    let t = task("x", dir.path());
    let c = cancel.clone();
    let run = tokio::spawn(async move { b.run(t, sink, c).await });
    let sleeper = loop {
        let ev = tokio::time::timeout(LIMIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(ev.as_json()).unwrap();
        if v["type"] == "fake_child" {
            break v["pid"].as_u64().unwrap() as u32;
        }
    };
    assert!(alive(sleeper));
    let started = Instant::now();
    cancel.cancel();
    let report = tokio::time::timeout(LIMIT, run).await.unwrap().unwrap();
    let took = started.elapsed();
    assert_eq!(report.outcome.status, TaskStatus::Cancelled);
    assert_eq!(report.stats.signals_sent, ["SIGTERM", "SIGKILL"]);
    // 0.3 s + 0.3 s of grace, plus scheduling slack.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let pgid = report.stats.pid.unwrap();
    assert!(
        wait_gone(sleeper, Duration::from_secs(5)).await,
        "grandchild survived"
    );
    let left = processes_in_group(pgid);
    assert!(left.is_empty(), "stray processes: {left:?}");
}

#[tokio::test]
async fn leftover_children_are_killed_after_a_normal_exit() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("{START}spawn_sleeper\nresult ok\nwait_eof\n");
    let backend = fake_backend(&script, |_| {});
    let done = run(&backend, task("x", dir.path())).await;
    let sleeper = done
        .values()
        .iter()
        .find(|v| v["type"] == "fake_child")
        .and_then(|v| v["pid"].as_u64())
        .unwrap() as u32;
    assert_eq!(done.report.outcome.status, TaskStatus::Completed);
    assert!(done.report.stats.leftovers_killed >= 1);
    assert!(wait_gone(sleeper, Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_closed_event_sink_does_not_stop_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        format!("{START}out {{\"type\":\"a\"}}\nout {{\"type\":\"b\"}}\nresult ok\nwait_eof\n");
    let backend = fake_backend(&script, |_| {});
    let (sink, rx) = EventSink::channel(1);
    drop(rx);
    let report = tokio::time::timeout(
        LIMIT,
        backend.run(task("x", dir.path()), sink, CancellationToken::new()),
    )
    .await
    .unwrap();
    assert_eq!(report.outcome.status, TaskStatus::Completed);
}

#[tokio::test]
async fn environment_is_extended_or_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("{START}env EXTRA_VAR\nenv HOME\nresult ok\nwait_eof\n");
    let backend = fake_backend(&script, |c| {
        c.env.push(("EXTRA_VAR".into(), "42".into()));
    });
    let done = run(&backend, task("x", dir.path())).await;
    let v = done.values();
    assert_eq!(v[2]["value"], "42");
    assert_eq!(
        v[3]["value"].as_str(),
        std::env::var("HOME").ok().as_deref()
    );

    let backend = fake_backend(&script, |c| c.clear_env = true);
    let done = run(&backend, task("x", dir.path())).await;
    assert_eq!(done.values()[3]["value"], Value::Null);
}

#[tokio::test]
async fn missing_binary_and_missing_workdir_fail_as_system() {
    let dir = tempfile::tempdir().unwrap();
    let backend = ClaudeCodeBackend::new(ClaudeCodeConfig {
        claude_bin: Some(dir.path().join("no-such-claude")),
        ..ClaudeCodeConfig::default()
    });
    assert!(backend.start().await.is_err());
    let done = run(&backend, task("x", dir.path())).await;
    assert_eq!(done.report.outcome.status, TaskStatus::Failed);
    assert_eq!(done.report.outcome.failure_kind, Some(FailureKind::System));
    assert!(
        done.report
            .outcome
            .failure_reason
            .unwrap()
            .contains("no-such-claude")
    );

    let backend = fake_backend("", |_| {});
    backend.start().await.unwrap();
    let outcome = backend
        .execute(
            task("x", &dir.path().join("missing")),
            EventSink::channel(1).0,
            CancellationToken::new(),
        )
        .await;
    assert_eq!(outcome.status, TaskStatus::Failed);
    assert!(outcome.failure_reason.unwrap().contains("does not exist"));
}

#[tokio::test]
async fn task_without_workdir_uses_the_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("args\n{START}result ok\nwait_eof\n");
    let workdir = dir.path().to_path_buf();
    let backend = fake_backend(&script, |c| c.workdir = workdir);
    let done = run(
        &backend,
        Task {
            prompt: "x".into(),
            ..Task::default()
        },
    )
    .await;
    let cwd = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(done.values()[0]["cwd"], cwd.display().to_string());
}

#[tokio::test]
async fn shutdown_kills_running_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("{START}ignore_term\nout {{\"type\":\"started\"}}\nhang\n");
    let backend = fake_backend(&script, |_| {});
    let (sink, mut rx) = EventSink::channel(64);
    let b = backend.clone();
    let t = task("x", dir.path());
    let run = tokio::spawn(async move { b.run(t, sink, CancellationToken::new()).await });
    loop {
        let ev = tokio::time::timeout(LIMIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if ev.as_json().contains("started") {
            break;
        }
    }
    backend.shutdown().await;
    let report = tokio::time::timeout(LIMIT, run).await.unwrap().unwrap();
    assert_eq!(report.outcome.status, TaskStatus::Failed);
    assert!(processes_in_group(report.stats.pid.unwrap()).is_empty());
}
