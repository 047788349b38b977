//! The backend with the **real** `opencode acp` (the pinned opencode-ai of
//! scripts/install-test-deps.sh) against the project's fake LLM on loopback, with an isolated
//! HOME and no network. If the binary is missing these tests fail (they never pass silently).
//! opencode takes about 2.5 s to answer `initialize` and holds about 600 MB, so each test
//! starts one agent and does several things with it.

use std::time::Duration;

use agentserver_backend_acp::{AcpBackend, AcpConfig};
use agentserver_common::process::kill_group;
use agentserver_mock::fake_llm::{FakeLlm, FakeLlmHandle};
use agentserver_plugin_api::{Backend, CancellationToken, FailureKind, TaskStatus};
use nix::sys::signal::Signal;

use crate::opencode_support::{OpencodeEnv, offline_env, real_opencode};
use crate::support::*;

/// The fake LLM, the offline environment and a backend running `opencode acp` in it.
async fn setup() -> (FakeLlmHandle, OpencodeEnv, AcpBackend) {
    init_tracing();
    let llm = FakeLlm::start().await.expect("fake LLM");
    let env = OpencodeEnv::new(llm.openai_base_url()).unwrap();
    let mut config = AcpConfig {
        clear_env: true,
        cancel_timeout: Duration::from_secs(10),
        ..AcpConfig::new(
            vec![real_opencode().display().to_string(), "acp".into()],
            env.workdir(),
        )
    };
    for (k, v) in offline_env(
        &env.dir.path().join("home"),
        &env.dir.path().join("tmp"),
        &llm.openai_base_url(),
    ) {
        config = config.with_env(k, v);
    }
    let backend = AcpBackend::new(config);
    tokio::time::timeout(LIMIT, backend.start())
        .await
        .expect("start in time")
        .expect("opencode acp starts");
    (llm, env, backend)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_task_and_a_tool_call_writing_a_file_with_real_opencode() {
    let (llm, env, backend) = setup().await;
    let fields = backend.agent_info_fields().await;
    assert_eq!(fields["acp_agent_name"], "OpenCode");
    assert_eq!(fields["acp_agent_version"], "1.18.33");
    let pid = backend.agent_pid().await.unwrap();

    let work = env.workdir();
    let done = run(&backend, task(&work, "Say hello")).await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        done.outcome
    );
    assert_eq!(
        done.outcome.result.as_deref(),
        Some("Hello from the fake LLM.")
    );
    assert!(done.kinds().contains(&"agent_message_chunk".to_owned()));
    assert_eq!(done.result_event()["stop_reason"], "end_turn");
    for raw in &done.raw[..done.raw.len() - 1] {
        assert!(raw.contains(r#""method":"session/update""#), "{raw}");
    }

    let target = work.join("out.txt");
    let prompt = format!("Please TOOL_WRITE:{} now", target.display());
    let done = run(&backend, task(&work, &prompt)).await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        done.outcome
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "hello from fake\n"
    );
    let kinds = done.kinds();
    assert!(kinds.contains(&"tool_call".to_owned()), "{kinds:?}");
    assert!(kinds.contains(&"tool_call_update".to_owned()), "{kinds:?}");
    // The final text is the message after the tool call.
    assert!(
        done.outcome
            .result
            .as_deref()
            .unwrap()
            .starts_with("FAKE_DONE: tool said"),
        "{:?}",
        done.outcome
    );
    // Both tasks ran in the one agent process, and the LLM was asked three times.
    assert_eq!(backend.agent_pid().await, Some(pid));
    assert!(llm.requests().len() >= 3);
    backend.shutdown().await;
    assert!(wait_gone(pid, Duration::from_secs(10)).await);
}

/// Starts a task whose LLM answer stalls, and waits until it does.
async fn stalled_task(
    llm: &FakeLlmHandle,
    backend: &AcpBackend,
    env: &OpencodeEnv,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Finished> {
    let backend = backend.clone();
    let task = task(&env.workdir(), "Think FAKE_STALL");
    let running = tokio::spawn(async move { run_with(&backend, task, cancel, None).await });
    let deadline = tokio::time::Instant::now() + LIMIT;
    while llm.stalled_now() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the LLM call never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_mid_turn_with_real_opencode_ends_the_turn_as_acp_says() {
    let (llm, env, backend) = setup().await;
    let pid = backend.agent_pid().await.unwrap();
    let cancel = CancellationToken::new();
    let running = stalled_task(&llm, &backend, &env, cancel.clone()).await;
    let asked = std::time::Instant::now();
    cancel.cancel();
    let done = running.await.unwrap();
    assert_eq!(
        done.outcome.status,
        TaskStatus::Cancelled,
        "{:?}",
        done.outcome
    );
    assert_eq!(
        done.result_event()["stop_reason"],
        "cancelled",
        "opencode answered the prompt with stopReason cancelled: {:?}",
        done.outcome
    );
    assert!(asked.elapsed() < Duration::from_secs(10));
    // The agent was not stopped and runs the next task.
    assert_eq!(backend.agent_pid().await, Some(pid));
    let next = run(&backend, task(&env.workdir(), "Say hello")).await;
    assert_eq!(
        next.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        next.outcome
    );
    backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_opencode_killed_mid_turn_fails_the_task_and_is_restarted() {
    let (llm, env, backend) = setup().await;
    let pid = backend.agent_pid().await.unwrap();
    let running = stalled_task(&llm, &backend, &env, CancellationToken::new()).await;
    assert!(kill_group(pid, Signal::SIGKILL));
    let done = running.await.unwrap();
    assert_eq!(
        done.outcome.status,
        TaskStatus::Failed,
        "{:?}",
        done.outcome
    );
    assert_eq!(done.outcome.failure_kind, Some(FailureKind::System));
    let reason = done.outcome.failure_reason.clone().unwrap();
    assert!(reason.contains("ACP agent"), "{reason}");
    assert!(wait_gone(pid, Duration::from_secs(5)).await);

    let next = run(&backend, task(&env.workdir(), "Say hello")).await;
    assert_eq!(
        next.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        next.outcome
    );
    let restarted = backend.agent_pid().await.unwrap();
    assert_ne!(restarted, pid);
    backend.shutdown().await;
}
