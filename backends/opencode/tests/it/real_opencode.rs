//! The backend with the **real** `opencode serve` (pinned by scripts/install-test-deps.sh)
//! against the project's fake LLM on loopback, with an isolated HOME and no network.
//!
//! If the binary is missing these tests fail (they never pass silently): run
//! `bash scripts/install-test-deps.sh`, which CI does in `.ci/run`. opencode takes about 1.5 s
//! to start and holds about 600 MB, so each test starts one server and does several things
//! with it.

use crate::support;

use std::time::{Duration, Instant};

use agentserver_backend_opencode::{OpencodeBackend, ServerState, Token};
use agentserver_common::process::kill_group;
use agentserver_plugin_api::{Backend, CancellationToken, FailureKind, HttpRequest, TaskStatus};
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use support::*;

async fn get(backend: &OpencodeBackend, path: &str) -> (u16, Vec<u8>) {
    let response = backend
        .handle_http(HttpRequest {
            method: "GET".into(),
            path: path.parse().expect("a local path"),
            headers: vec![],
            body: Default::default(),
        })
        .await
        .expect("handle_http");
    let status = response.status;
    let mut body = Vec::new();
    let mut stream = response.body;
    while let Some(chunk) = stream.next().await {
        body.extend_from_slice(&chunk.expect("body chunk"));
    }
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_task_is_translated_and_api_errors_fail() {
    let env = Env::new().await;
    // Port 0: opencode chooses, the backend reads the URL from the "listening" line.
    let backend = OpencodeBackend::new(env.config(0));
    tokio::time::timeout(LIMIT, backend.start())
        .await
        .expect("start in time")
        .expect("opencode starts");
    assert!(matches!(
        backend.state(),
        ServerState::Ready { generation: 1, .. }
    ));
    assert_eq!(backend.opencode_version().await.as_deref(), Some("1.18.33"));

    let mut task = env.task("Please TOOL_BASH");
    task.system_context = "You are the SYSCTX-42 worker.".into();
    let done = run(&backend, task, CancellationToken::new()).await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        done.outcome
    );
    assert_eq!(
        done.outcome.result.as_deref(),
        Some("FAKE_DONE: tool said hi")
    );
    assert_eq!(done.outcome.num_turns, Some(2));
    assert_eq!(done.outcome.total_cost_usd, Some(0.0));

    let init = done.find("system/init", |v| {
        v["type"] == "system" && v["subtype"] == "init"
    });
    let tool_use = done.find("tool_use", |v| {
        v["type"] == "assistant" && v["message"]["content"][0]["type"] == "tool_use"
    });
    let tool_result = done.find("tool_result", |v| {
        v["type"] == "user" && v["message"]["content"][0]["type"] == "tool_result"
    });
    let text = done.find("final text", |v| {
        v["type"] == "assistant" && v["message"]["content"][0]["text"] == "FAKE_DONE: tool said hi"
    });
    let result = done.find("result", |v| v["type"] == "result");
    assert!(init < tool_use && tool_use < tool_result && tool_result < text && text < result);
    assert_eq!(result, done.events.len() - 1, "{:?}", done.kinds());
    let session = done.events[init]["session_id"].as_str().unwrap().to_owned();
    assert!(session.starts_with("ses"), "{session}");
    assert_eq!(
        done.events[init]["cwd"],
        env.workdir().display().to_string()
    );
    let block = &done.events[tool_use]["message"]["content"][0];
    assert_eq!(block["name"], "bash");
    assert_eq!(block["input"]["command"], "echo hi");
    let res = &done.events[tool_result]["message"]["content"][0];
    assert_eq!(res["tool_use_id"], block["id"]);
    assert_eq!(res["content"], "hi\n");
    let r = &done.events[result];
    assert_eq!(r["subtype"], "success");
    assert_eq!(r["is_error"], false);
    assert_eq!(r["num_turns"], 2);
    assert_eq!(r["result"], "FAKE_DONE: tool said hi");
    assert_eq!(r["total_cost_usd"], 0.0);
    assert_eq!(r["usage"]["input_tokens"], 200);
    let mut uuids: Vec<&str> = done
        .events
        .iter()
        .map(|e| e["uuid"].as_str().unwrap())
        .collect();
    uuids.sort_unstable();
    uuids.dedup();
    assert_eq!(
        uuids.len(),
        done.events.len(),
        "every event has its own uuid"
    );
    for e in &done.events {
        assert_eq!(e["session_id"], session.as_str());
    }
    // The LLM saw the task's system context and the prompt; the session ran in the workdir.
    let requests = env.llm.requests();
    let first = requests
        .iter()
        .find(|r| r.path.ends_with("/chat/completions"))
        .expect("an LLM call");
    assert!(
        first.body.to_string().contains("SYSCTX-42"),
        "system context missing"
    );
    assert_eq!(first.last_user, "Please TOOL_BASH");

    // An API error fails the task with opencode's message, as a user failure.
    let done = run(
        &backend,
        env.task("FAKE_ERR_401 now"),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Failed,
        "{:?}",
        done.outcome
    );
    assert_eq!(done.outcome.failure_kind, Some(FailureKind::User));
    assert_eq!(
        done.outcome.failure_reason.as_deref(),
        Some("api_error (HTTP 401): fake injected 401")
    );
    let r = done.events.last().unwrap();
    assert_eq!(r["type"], "result");
    assert_eq!(r["is_error"], true);
    assert_eq!(r["api_error_status"], 401);

    let pid = backend.server_pid().expect("we started it");
    let t = Instant::now();
    backend.shutdown().await;
    assert!(
        wait_gone(pid, Duration::from_secs(2)).await,
        "opencode still runs"
    );
    assert_eq!(backend.state(), ServerState::Stopped);
    eprintln!("opencode stopped {:?} after SIGINT", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_task_aborts_the_session() {
    let env = Env::new().await;
    let backend = OpencodeBackend::new(env.config(free_port()));
    backend.start().await.expect("opencode starts");
    let cancel = CancellationToken::new();
    let runner = {
        let backend = backend.clone();
        let task = env.task("Wait FAKE_STALL");
        let cancel = cancel.clone();
        tokio::spawn(async move { run(&backend, task, cancel).await })
    };
    // Cancel once the model's answer is under way (the fake LLM holds it open).
    let deadline = Instant::now() + LIMIT;
    while env.llm.stalled_now() == 0 {
        assert!(Instant::now() < deadline, "the LLM call never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    cancel.cancel();
    let done = runner.await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        t.elapsed()
    );
    assert_eq!(
        done.outcome.status,
        TaskStatus::Cancelled,
        "{:?}",
        done.outcome
    );
    let r = done.events.last().unwrap();
    assert_eq!(r["type"], "result");
    assert_eq!(r["subtype"], "error_during_execution");
    assert_eq!(r["terminal_reason"], "aborted");
    // opencode really stopped: it closed the LLM connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.llm.stalled_now() > 0 {
        assert!(Instant::now() < deadline, "opencode kept the LLM call open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The server is still good for the next task.
    let done = run(&backend, env.task("Say hello"), CancellationToken::new()).await;
    assert_eq!(
        done.outcome.result.as_deref(),
        Some("Hello from the fake LLM.")
    );
    backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_is_restarted_and_requests_work_again() {
    let env = Env::new().await;
    let mut config = env.config(free_port());
    config.opencode_token = Some(Token::new("s3cret-pw"));
    let backend = OpencodeBackend::new(config);
    backend.start().await.expect("opencode starts");
    let (status, body) = get(&backend, "/global/health").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // The password is enforced by opencode and sent by the proxy.
    let base = backend.base_url().unwrap();
    let direct = reqwest::get(format!("{base}global/health")).await.unwrap();
    assert_eq!(direct.status(), 401, "OPENCODE_SERVER_PASSWORD was not set");

    let pid = backend.server_pid().expect("we started it");
    assert!(kill_group(pid, Signal::SIGKILL));
    assert!(wait_gone(pid, Duration::from_secs(5)).await);
    // The very next request waits for the restarted server instead of failing.
    let (status, body) = tokio::time::timeout(LIMIT, get(&backend, "/global/health"))
        .await
        .expect("answered in time");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["healthy"], true);
    assert_eq!(backend.restarts(), 1);
    let new_pid = backend.server_pid().expect("a new server");
    assert_ne!(new_pid, pid);
    assert!(matches!(
        backend.state(),
        ServerState::Ready { generation: 2, .. }
    ));
    let (status, _) = get(&backend, "/session").await;
    assert_eq!(status, 200);

    backend.shutdown().await;
    assert!(wait_gone(new_pid, Duration::from_secs(2)).await);
    // A stopped backend answers no more requests and restarts nothing.
    assert!(
        backend
            .handle_http(HttpRequest {
                method: "GET".into(),
                path: "/global/health".parse().unwrap(),
                headers: vec![],
                body: Default::default(),
            })
            .await
            .is_err()
    );
    assert_eq!(backend.restarts(), 1);
}
