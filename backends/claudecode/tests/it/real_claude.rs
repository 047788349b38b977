//! End-to-end tests with the **real** `claude` CLI (pinned by scripts/install-test-deps.sh)
//! against the project's fake LLM on loopback, isolated HOME and TMPDIR, no network.
//!
//! If the CLI is missing these tests fail (they never pass silently): run
//! `bash scripts/install-test-deps.sh`, which CI does in `.ci/run`.

use crate::support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agentserver_backend_claudecode::process::processes_in_group;
use agentserver_backend_claudecode::{ClaudeCodeBackend, ClaudeCodeConfig, Ending};
use agentserver_mock::fake_llm::{FakeLlm, FakeLlmHandle};
use agentserver_plugin_api::{CancellationToken, EventSink, FailureKind, Task, TaskStatus};
use serde_json::Value;
use support::*;
use tempfile::TempDir;

/// Overrides the CLI's location.
const CLAUDE_BIN_ENV: &str = "AGENTSERVER_TEST_CLAUDE_BIN";

/// The real CLI, or a failing test that says how to install it.
fn real_claude() -> PathBuf {
    let path = if let Some(path) = std::env::var_os(CLAUDE_BIN_ENV) {
        PathBuf::from(path)
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.npm-clis/node_modules/.bin/claude")
    };
    assert!(
        path.exists(),
        "the real claude CLI is missing at {}: run `bash scripts/install-test-deps.sh` \
         (CI does this in .ci/run) or set {CLAUDE_BIN_ENV}",
        path.display()
    );
    path
}

/// One isolated claude environment: fake LLM, HOME, TMPDIR and work directory.
struct Env {
    llm: FakeLlmHandle,
    dir: TempDir,
    backend: ClaudeCodeBackend,
}

impl Env {
    async fn new(tweak: impl FnOnce(&mut ClaudeCodeConfig)) -> Self {
        init_tracing();
        let llm = FakeLlm::start().await.expect("fake LLM");
        let dir = tempfile::tempdir().unwrap();
        for sub in ["home", "tmp", "work"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let path = dir.path();
        let mut config = ClaudeCodeConfig {
            claude_bin: Some(real_claude()),
            workdir: path.join("work"),
            clear_env: true,
            idle_timeout: Duration::from_secs(15),
            post_result_exit_timeout: Duration::from_secs(5),
            stdin_close_grace: Duration::from_secs(1),
            term_grace: Duration::from_secs(1),
            ..ClaudeCodeConfig::default()
        };
        config.env = [
            ("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned()),
            ("HOME", path.join("home").display().to_string()),
            ("TMPDIR", path.join("tmp").display().to_string()),
            ("ANTHROPIC_BASE_URL", llm.url()),
            ("ANTHROPIC_API_KEY", "sk-ant-fake".to_owned()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_owned()),
            ("DISABLE_AUTOUPDATER", "1".to_owned()),
            ("DISABLE_TELEMETRY", "1".to_owned()),
            ("DISABLE_ERROR_REPORTING", "1".to_owned()),
            ("CLAUDE_CODE_MAX_RETRIES", "0".to_owned()),
            // Needed as root for --permission-mode bypassPermissions; harmless otherwise.
            ("IS_SANDBOX", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        tweak(&mut config);
        Self {
            llm,
            backend: ClaudeCodeBackend::new(config),
            dir,
        }
    }

    fn task(&self, prompt: &str) -> Task {
        task(prompt, &self.dir.path().join("work"))
    }
}

fn position(kinds: &[String], kind: &str) -> usize {
    kinds
        .iter()
        .position(|k| k == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {kinds:?}"))
}

#[tokio::test]
async fn plain_answer() {
    let env = Env::new(|_| {}).await;
    let mut t = env.task("Say hello.");
    t.system_context = "You are a terse test assistant.".into();
    let done = run(&env.backend, t).await;
    let r = &done.report;
    assert_eq!(r.outcome.status, TaskStatus::Completed, "{:?}", r);
    assert_eq!(
        r.outcome.result.as_deref(),
        Some("Hello from the fake LLM.")
    );
    assert_eq!(r.outcome.num_turns, Some(1));
    assert!(r.outcome.total_cost_usd.is_some());
    assert_eq!(
        r.stats.ending,
        Ending::Exited,
        "exits by itself once stdin closes"
    );
    assert!(r.stats.signals_sent.is_empty());
    let kinds = done.kinds();
    let init = position(&kinds, "system/init");
    let assistant = position(&kinds, "assistant");
    let result = position(&kinds, "result/success");
    assert!(init < assistant && assistant < result, "{kinds:?}");
    // The CLI answered our initialize request; that reply is forwarded too.
    assert!(
        kinds
            .iter()
            .any(|k| k == "control_response/?" || k == "control_response")
    );
    // The system prompt reached the model.
    let reqs = env.llm.requests();
    assert_eq!(reqs.len(), 1);
    assert!(
        reqs[0].body["system"]
            .to_string()
            .contains("terse test assistant")
    );
    assert!(
        reqs[0].last_user.ends_with("Say hello."),
        "{}",
        reqs[0].last_user
    );
}

#[tokio::test]
async fn bash_tool_round_trip_events_in_order() {
    let env = Env::new(|_| {}).await;
    let done = run(&env.backend, env.task("Run it: TOOL_BASH")).await;
    let r = &done.report;
    assert_eq!(r.outcome.status, TaskStatus::Completed, "{:?}", r);
    assert_eq!(r.outcome.result.as_deref(), Some("FAKE_DONE: tool said hi"));
    assert_eq!(r.outcome.num_turns, Some(2));
    let values = done.values();
    let kinds = done.kinds();
    let tool_use = values
        .iter()
        .position(|v| v["type"] == "assistant" && v["message"]["content"][0]["type"] == "tool_use")
        .expect("tool_use");
    assert_eq!(values[tool_use]["message"]["content"][0]["name"], "Bash");
    let tool_result = values
        .iter()
        .position(|v| v["type"] == "user" && v["message"]["content"][0]["type"] == "tool_result")
        .expect("tool_result");
    assert_eq!(
        values[tool_result]["message"]["content"][0]["content"],
        "hi"
    );
    let final_text = values
        .iter()
        .position(|v| v["type"] == "assistant" && v["message"]["content"][0]["type"] == "text")
        .expect("final text");
    let init = position(&kinds, "system/init");
    let result = position(&kinds, "result/success");
    assert!(
        init < tool_use
            && tool_use < tool_result
            && tool_result < final_text
            && final_text < result,
        "{kinds:?}"
    );
    assert_eq!(env.llm.requests().len(), 2);
}

#[tokio::test]
async fn api_500_is_a_failure_with_the_status() {
    let env = Env::new(|_| {}).await;
    let done = run(&env.backend, env.task("FAKE_ERR_500")).await;
    let r = &done.report;
    assert_eq!(r.outcome.status, TaskStatus::Failed, "{:?}", r);
    assert_eq!(r.outcome.failure_kind, Some(FailureKind::User));
    let reason = r.outcome.failure_reason.clone().unwrap();
    assert!(reason.starts_with("api_error (HTTP 500): "), "{reason}");
    assert!(reason.contains("fake injected 500"), "{reason}");
    assert_eq!(r.stats.exit_code, Some(1), "{:?}", r.stats);
    let last: Value = done.values().last().cloned().unwrap();
    assert_eq!(last["type"], "result");
    assert_eq!(last["subtype"], "success");
    assert_eq!(last["is_error"], true);
}

#[tokio::test]
async fn max_turns_reached() {
    let env = Env::new(|_| {}).await;
    let mut t = env.task("TOOL_BASH please");
    t.max_turns = 1;
    let done = run(&env.backend, t).await;
    let r = &done.report;
    assert_eq!(r.outcome.status, TaskStatus::Failed, "{:?}", r);
    assert_eq!(r.outcome.failure_kind, Some(FailureKind::User));
    let reason = r.outcome.failure_reason.clone().unwrap();
    assert!(reason.starts_with("error_max_turns: "), "{reason}");
    assert!(reason.contains("maximum number of turns (1)"), "{reason}");
    assert_eq!(r.outcome.num_turns, Some(2));
    assert!(done.kinds().contains(&"result/error_max_turns".to_owned()));
    assert_eq!(env.llm.requests().len(), 1);
}

/// Starts a FAKE_STALL task and returns once the CLI is waiting on the stalled answer.
async fn start_stalled(
    env: &Env,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<agentserver_backend_claudecode::RunReport> {
    let (sink, mut rx) = EventSink::channel(1024);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let backend = env.backend.clone();
    let t = env.task("FAKE_STALL");
    let run = tokio::spawn(async move { backend.run(t, sink, cancel).await });
    let deadline = Instant::now() + LIMIT;
    while env.llm.stalled_now() == 0 {
        assert!(
            Instant::now() < deadline,
            "claude never reached the fake LLM"
        );
        assert!(!run.is_finished(), "the run ended before the stall");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    run
}

#[tokio::test]
async fn cancel_mid_turn_kills_the_whole_group() {
    let env = Env::new(|_| {}).await;
    let cancel = CancellationToken::new();
    let run = start_stalled(&env, cancel.clone()).await;
    let started = Instant::now();
    cancel.cancel();
    let report = tokio::time::timeout(LIMIT, run).await.unwrap().unwrap();
    let took = started.elapsed();
    assert_eq!(report.outcome.status, TaskStatus::Cancelled, "{report:?}");
    assert_eq!(report.stats.ending, Ending::Cancelled);
    // stdin grace 1 s + SIGTERM grace 1 s, plus slack.
    assert!(
        took < Duration::from_secs(4),
        "took {took:?}: {:?}",
        report.stats
    );
    let pgid = report.stats.pid.unwrap();
    let left = processes_in_group(pgid);
    assert!(left.is_empty(), "stray processes of group {pgid}: {left:?}");
}

#[tokio::test]
async fn stalled_stream_trips_the_idle_watchdog() {
    let env = Env::new(|c| c.idle_timeout = Duration::from_secs(4)).await;
    let run = start_stalled(&env, CancellationToken::new()).await;
    let report = tokio::time::timeout(LIMIT, run).await.unwrap().unwrap();
    assert_eq!(report.outcome.status, TaskStatus::Failed, "{report:?}");
    assert_eq!(report.outcome.failure_kind, Some(FailureKind::System));
    assert_eq!(report.stats.ending, Ending::IdleTimeout);
    assert!(processes_in_group(report.stats.pid.unwrap()).is_empty());
}

#[tokio::test]
async fn an_mcp_servers_daemon_does_not_outlive_the_task() {
    // As the host binary does: orphans come to us, not to init.
    assert!(agentserver_backend_claudecode::process::become_subreaper());
    let env = Env::new(|_| {}).await;
    let work = env.dir.path().join("work");
    let script = env.dir.path().join("mcp_server.py");
    std::fs::write(&script, agentserver_mock::fake_mcp::DAEMONIZING_MCP_SERVER).unwrap();
    let pids = env.dir.path().join("daemons");
    std::fs::create_dir(&pids).unwrap();
    let mcp = serde_json::json!({"mcpServers": {"daemonizer": {
        "command": "python3",
        "args": [script.display().to_string(), pids.display().to_string()],
    }}});
    std::fs::write(work.join(".mcp.json"), mcp.to_string()).unwrap();
    // Project servers are approved for this checkout (claude -p would not ask anyway).
    std::fs::create_dir_all(work.join(".claude")).unwrap();
    std::fs::write(
        work.join(".claude/settings.json"),
        r#"{"enableAllProjectMcpServers": true}"#,
    )
    .unwrap();

    let task = env.task("Say hello.");
    let task_id = task.task_id.clone();
    let done = run(&env.backend, task).await;
    let r = &done.report;
    assert_eq!(r.outcome.status, TaskStatus::Completed, "{r:?}");
    let daemons = agentserver_mock::fake_mcp::daemon_pids(&pids);
    let [daemon] = daemons[..] else {
        panic!("claude started the MCP server, which daemonized once: {daemons:?}")
    };
    assert!(
        r.stats.scope_leftovers.iter().any(|l| l.pid == daemon),
        "the daemon was not a leftover: {:?}",
        r.stats
    );
    // Gone, and reaped: not even a zombie is left.
    assert!(
        !std::path::Path::new(&format!("/proc/{daemon}")).exists(),
        "the MCP server's daemon {daemon} survived the task"
    );
    // No zombie is left either: the MCP server itself (claude's child, ours once claude
    // exited) and the daemon were reaped.
    let me = std::process::id().to_string();
    let zombies: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .collect();
            fields[0] == "Z" && fields[1] == me
        })
        .collect();
    assert!(zombies.is_empty(), "zombie children left: {zombies:?}");
    // Nothing else of the task survives either.
    let scope = agentserver_backend_claudecode::process::Scope::task(&task_id);
    assert!(scope.members().is_empty(), "{:?}", scope.members());
}
