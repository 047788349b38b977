//! The backend with the **real** `claude-agent-acp` (`@zed-industries/claude-agent-acp`,
//! pinned by scripts/install-test-deps.sh; Claude Code through the Agent SDK, whose bundled
//! CLI is the one that runs) against the project's fake LLM, with the offline environment of
//! `../shared/spec/real-clis.md`: a plain task, a tool call that writes a file (the adapter
//! asks `session/request_permission`, which the policy allows inside the workspace),
//! cancellation mid-turn, the agent killed mid-turn. If the adapter is missing these tests
//! fail (they never pass silently).

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentserver_backend_acp::{AcpBackend, AcpConfig, Preset};
use agentserver_common::process::kill_group;
use agentserver_mock::fake_llm::{DEFAULT_TEXT, FakeLlm, FakeLlmHandle};
use agentserver_plugin_api::{Backend, CancellationToken, FailureKind, TaskStatus};
use nix::sys::signal::Signal;

use crate::support::*;

/// Overrides the adapter's location.
const CLAUDE_ACP_BIN_ENV: &str = "AGENTSERVER_TEST_CLAUDE_ACP_BIN";

fn real_claude_acp() -> PathBuf {
    if let Some(path) = std::env::var_os(CLAUDE_ACP_BIN_ENV) {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.npm-clis/node_modules/.bin/claude-agent-acp");
    assert!(
        path.exists(),
        "the real claude-agent-acp is missing at {}: run `bash scripts/install-test-deps.sh` \
         (CI does this in .ci/run) or set {CLAUDE_ACP_BIN_ENV}",
        path.display()
    );
    path
}

struct Env {
    llm: FakeLlmHandle,
    dir: tempfile::TempDir,
    backend: AcpBackend,
}

impl Env {
    fn workdir(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path().join("work")).unwrap()
    }
}

/// The `claude-acp` preset with its command pointed at the pinned adapter, an empty
/// environment but for real-clis.md's claude variables, started.
async fn setup() -> Env {
    init_tracing();
    let llm = FakeLlm::start().await.expect("fake LLM");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["home", "tmp", "work"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    let home = dir.path().join("home");
    let work: &Path = &std::fs::canonicalize(dir.path().join("work")).unwrap();
    let mut config = AcpConfig {
        command: vec![real_claude_acp().display().to_string()],
        clear_env: true,
        ..AcpConfig::preset(Preset::ClaudeAcp, work.to_path_buf())
    };
    for (k, v) in [
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME", home.display().to_string()),
        ("TMPDIR", dir.path().join("tmp").display().to_string()),
        ("ANTHROPIC_BASE_URL", llm.url()),
        ("ANTHROPIC_API_KEY", "sk-ant-fake".to_owned()),
        ("CLAUDE_CODE_MAX_RETRIES", "0".to_owned()),
        ("IS_SANDBOX", "1".to_owned()),
    ] {
        config = config.with_env(k, v);
    }
    let backend = AcpBackend::new(config);
    tokio::time::timeout(LIMIT, backend.start())
        .await
        .expect("start in time")
        .expect("claude-agent-acp starts");
    Env { llm, dir, backend }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_task_and_a_permitted_write_with_real_claude_acp() {
    let env = setup().await;
    let backend = &env.backend;
    let fields = backend.agent_info_fields().await;
    assert_eq!(fields["acp_agent_name"], "@zed-industries/claude-agent-acp");
    assert_eq!(fields["acp_agent_version"], "0.23.1");
    let pid = backend.agent_pid().await.unwrap();
    let work = env.workdir();

    let done = run(backend, task(&work, "Say hello")).await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        done.outcome
    );
    assert_eq!(done.outcome.result.as_deref(), Some(DEFAULT_TEXT));
    assert_eq!(done.result_event()["stop_reason"], "end_turn");

    let target = work.join("out.txt");
    let prompt = format!("Please TOOL_WRITE:{} now", target.display());
    let done = run(backend, task(&work, &prompt)).await;
    assert_eq!(
        done.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        done.outcome
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "hello from fake\n",
        "the write was permitted: {:?}",
        done.kinds()
    );
    assert!(
        done.kinds().contains(&"tool_call".to_owned()),
        "{:?}",
        done.kinds()
    );
    assert!(
        done.outcome
            .result
            .as_deref()
            .unwrap()
            .starts_with("FAKE_DONE: tool said"),
        "{:?}",
        done.outcome
    );

    // A bash tool call (the adapter asks permission for it; it names no path, so the policy
    // allows it) runs with the adapter's own tool, and its output comes back to the model.
    let done = run(backend, task(&work, "Please TOOL_BASH")).await;
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
    assert!(
        done.events
            .iter()
            .any(|e| e["params"]["update"]["kind"] == "execute"),
        "{:?}",
        done.kinds()
    );

    // A write outside the workspace is rejected by the policy: the file never appears.
    let outside = env.dir.path().join("outside.txt");
    let prompt = format!("Please TOOL_WRITE:{} now", outside.display());
    let done = run(backend, task(&work, &prompt)).await;
    assert!(!outside.exists(), "{:?}", done.kinds());
    assert_eq!(backend.agent_pid().await, Some(pid));
    // Only the fake LLM was asked: its messages API, and `/` (the Agent SDK's CLI checks that
    // the base URL answers before the first call).
    let paths: Vec<String> = env.llm.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        paths.iter().any(|p| p.starts_with("/v1/messages"))
            && paths
                .iter()
                .all(|p| p.starts_with("/v1/messages") || p == "/"),
        "{paths:?}"
    );
    backend.shutdown().await;
    assert!(wait_gone(pid, Duration::from_secs(10)).await);
}

async fn stalled(env: &Env, cancel: CancellationToken) -> tokio::task::JoinHandle<Finished> {
    let backend = env.backend.clone();
    let task = task(&env.workdir(), "Think FAKE_STALL");
    let running = tokio::spawn(async move { run_with(&backend, task, cancel, None).await });
    let deadline = tokio::time::Instant::now() + LIMIT;
    while env.llm.stalled_now() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the LLM call never came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_mid_turn_with_real_claude_acp() {
    let env = setup().await;
    let pid = env.backend.agent_pid().await.unwrap();
    let cancel = CancellationToken::new();
    let running = stalled(&env, cancel.clone()).await;
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
        "{:?}",
        done.outcome
    );
    assert_eq!(env.backend.agent_pid().await, Some(pid));
    let next = run(&env.backend, task(&env.workdir(), "Say hello")).await;
    assert_eq!(
        next.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        next.outcome
    );
    env.backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_claude_acp_killed_mid_turn_fails_the_task_and_is_restarted() {
    let env = setup().await;
    let pid = env.backend.agent_pid().await.unwrap();
    let running = stalled(&env, CancellationToken::new()).await;
    assert!(kill_group(pid, Signal::SIGKILL));
    let done = running.await.unwrap();
    assert_eq!(
        done.outcome.status,
        TaskStatus::Failed,
        "{:?}",
        done.outcome
    );
    assert_eq!(done.outcome.failure_kind, Some(FailureKind::System));
    assert!(wait_gone(pid, Duration::from_secs(5)).await);
    let next = run(&env.backend, task(&env.workdir(), "Say hello")).await;
    assert_eq!(
        next.outcome.status,
        TaskStatus::Completed,
        "{:?}",
        next.outcome
    );
    assert_ne!(env.backend.agent_pid().await, Some(pid));
    env.backend.shutdown().await;
}
