//! The claudecode backend end to end, through the mock agentserver: the host's intake polls the
//! mock, runs the **real** `claude` CLI against the fake LLM, streams its events to the mock's
//! CCR v2 bridge and reports the final status; terminal streams come through the mock's tunnel.
//!
//! The CLI comes from `.npm-clis` (`bash scripts/install-test-deps.sh`, run by `.ci/run`); when
//! it is missing these tests fail with that instruction.

use crate::intake_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentserver::intake::{INTERRUPT_REASON, Intake, IntakeConfig};
use agentserver_backend_claudecode::process::processes_in_group;
use agentserver_backend_claudecode::{ClaudeCodeBackend, ClaudeCodeConfig};
use agentserver_integration::claude_support::{offline_env, real_claude};
use agentserver_integration::tunnel_support::{TunnelFixture, fixed_info};
use agentserver_mock::fake_llm::{FakeLlm, FakeLlmHandle};
use agentserver_mock::{MockConfig, MockState, NewTask};
use intake_support::{Env, assert_one_final, wait_final};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(20);

/// The mock (with the bridge), a sandbox, the fake LLM, an isolated claude environment and the
/// intake running the claudecode backend.
struct Claude {
    env: Env,
    llm: FakeLlmHandle,
    root: tempfile::TempDir,
    running: intake_support::Running,
}

impl Claude {
    async fn start() -> Self {
        let env = Env::start(true).await;
        let llm = FakeLlm::start().await.expect("fake LLM");
        let root = tempfile::tempdir().unwrap();
        for sub in ["home", "tmp", "work"] {
            std::fs::create_dir_all(root.path().join(sub)).unwrap();
        }
        let workdir = std::fs::canonicalize(root.path().join("work")).unwrap();
        let mut config = ClaudeCodeConfig {
            claude_bin: Some(real_claude()),
            workdir: workdir.clone(),
            clear_env: true,
            stdin_close_grace: Duration::from_secs(1),
            term_grace: Duration::from_secs(1),
            ..ClaudeCodeConfig::default()
        };
        config.env = offline_env(
            &root.path().join("home"),
            &root.path().join("tmp"),
            &llm.url(),
        )
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
        let backend = ClaudeCodeBackend::new(config);
        let mut intake_config: IntakeConfig = env.config();
        intake_config.workdir = workdir;
        let intake = Intake::new(intake_config, Arc::new(backend)).expect("intake builds");
        let handle = intake.handle();
        let events = handle.subscribe();
        let join = tokio::spawn(async move { intake.run().await.expect("intake runs") });
        Self {
            env,
            llm,
            root,
            running: intake_support::Running {
                handle,
                events,
                join,
            },
        }
    }

    fn state(&self) -> Arc<MockState> {
        self.env.state()
    }

    fn create(&self, prompt: &str, max_turns: i64) -> String {
        self.state().create_task_with(NewTask {
            target_id: self.env.sandbox.id.clone(),
            prompt: prompt.to_owned(),
            max_turns,
            ..NewTask::default()
        })
    }

    fn workdir(&self) -> PathBuf {
        std::fs::canonicalize(self.root.path().join("work")).unwrap()
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

/// `type` (+ `/subtype`) of each event the bridge stored for the task's session.
fn bridge_kinds(state: &MockState, session: &str) -> (Vec<String>, Vec<Value>) {
    let events = state.bridge_worker_events(session);
    let kinds = events
        .iter()
        .map(|v| {
            let t = v["type"].as_str().unwrap_or("?").to_owned();
            match v["subtype"].as_str() {
                Some(s) => format!("{t}/{s}"),
                None => t,
            }
        })
        .collect();
    (kinds, events)
}

#[tokio::test]
async fn plain_answer_through_the_mock() {
    let c = Claude::start().await;
    let state = c.state();
    let id = c.create("Say hello.", 0);
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "completed");
    let body = &t.final_updates()[0].body;
    assert_eq!(body["result"], "Hello from the fake LLM.");
    assert_eq!(body["num_turns"], 1);
    let (kinds, _) = bridge_kinds(&state, t.session_id.as_deref().unwrap());
    let init = kinds.iter().position(|k| k == "system/init").expect("init");
    let assistant = kinds
        .iter()
        .position(|k| k == "assistant")
        .expect("assistant");
    let result = kinds
        .iter()
        .position(|k| k == "result/success")
        .expect("result");
    assert!(init < assistant && assistant < result, "{kinds:?}");
    c.stop().await;
}

#[tokio::test]
async fn bash_round_trip_reaches_the_bridge_in_order() {
    let c = Claude::start().await;
    let state = c.state();
    let id = c.create("Please TOOL_BASH", 0);
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "completed");
    assert_eq!(
        t.final_updates()[0].body["result"],
        "FAKE_DONE: tool said hi"
    );
    let (kinds, events) = bridge_kinds(&state, t.session_id.as_deref().unwrap());
    let find = |pred: &dyn Fn(&Value) -> bool, what: &str| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("no {what} in {kinds:?}"))
    };
    let init = find(&|v| v["type"] == "system" && v["subtype"] == "init", "init");
    let tool_use = find(
        &|v| v["type"] == "assistant" && v["message"]["content"][0]["name"] == "Bash",
        "tool_use",
    );
    let tool_result = find(
        &|v| v["type"] == "user" && v["message"]["content"][0]["content"] == "hi",
        "tool_result",
    );
    let text = find(
        &|v| {
            v["type"] == "assistant"
                && v["message"]["content"][0]["text"] == "FAKE_DONE: tool said hi"
        },
        "final text",
    );
    let result = find(&|v| v["type"] == "result", "result");
    assert!(
        init < tool_use && tool_use < tool_result && tool_result < text && text < result,
        "{kinds:?}"
    );
    assert_eq!(c.llm.requests().len(), 2);
    c.stop().await;
}

#[tokio::test]
async fn api_500_is_reported_failed_with_the_status() {
    let c = Claude::start().await;
    let state = c.state();
    let id = c.create("FAKE_ERR_500", 0);
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "failed");
    let reason = t.failure_reason.clone().unwrap();
    assert!(reason.starts_with("api_error (HTTP 500): "), "{reason}");
    c.stop().await;
}

#[tokio::test]
async fn max_turns_reached_is_reported() {
    let c = Claude::start().await;
    let state = c.state();
    let id = c.create("TOOL_BASH", 1);
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "failed");
    let reason = t.failure_reason.clone().unwrap();
    assert!(reason.starts_with("error_max_turns: "), "{reason}");
    let (kinds, _) = bridge_kinds(&state, t.session_id.as_deref().unwrap());
    assert!(
        kinds.contains(&"result/error_max_turns".to_owned()),
        "{kinds:?}"
    );
    c.stop().await;
}

/// Live processes whose working directory is `dir`.
fn processes_in(dir: &Path) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir)
                })
                .filter(|pid| !processes_in_group(*pid).is_empty())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn interrupt_mid_turn_kills_the_whole_process_group() {
    let c = Claude::start().await;
    let state = c.state();
    let id = c.create("FAKE_STALL", 0);
    let deadline = Instant::now() + T;
    while c.llm.stalled_now() == 0 {
        assert!(
            Instant::now() < deadline,
            "claude never reached the fake LLM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The CLI leads its own group: its pid is the group id.
    let leaders: Vec<u32> = processes_in(&c.workdir())
        .into_iter()
        .filter(|pid| {
            processes_in_group(*pid)
                .iter()
                .any(|p| p.pid == *pid && p.pgid == *pid)
        })
        .collect();
    assert_eq!(leaders.len(), 1, "one claude process group: {leaders:?}");
    let pgid = leaders[0];
    let session = state.task(&id).unwrap().session_id.unwrap();
    let started = Instant::now();
    state.bridge_interrupt(&session).unwrap();
    let t = wait_final(&state, &id, T).await;
    let took = started.elapsed();
    assert_one_final(&t, "failed");
    assert_eq!(t.failure_reason.as_deref(), Some(INTERRUPT_REASON));
    // stdin grace 1 s + SIGTERM grace 1 s, plus the bridge and reporting round trips.
    assert!(took < Duration::from_secs(6), "took {took:?}");
    let left = processes_in_group(pgid);
    assert!(left.is_empty(), "stray processes of group {pgid}: {left:?}");
    c.stop().await;
}

const INFO: &str = r#"{"agent_version":"test","hostname":"claudecode-e2e"}"#;

/// Reads from the terminal stream until the data (frame bytes dropped) contains `needle`.
async fn read_until(
    stream: &mut (impl AsyncReadExt + Unpin),
    seen: &mut Vec<u8>,
    needle: &str,
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + T;
    let mut first = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while !String::from_utf8_lossy(seen).contains(needle) {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?}; got {:?}", String::from_utf8_lossy(seen)))
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}; got {:?}",
            String::from_utf8_lossy(seen)
        );
        if first.is_empty() {
            assert_eq!(buf[0], 0x00);
            first = buf[1..n].to_vec();
        }
        // `cat` never prints NUL, so every 0x00 is a frame type byte.
        seen.extend(buf[..n].iter().copied().filter(|&b| b != 0));
    }
    first
}

#[tokio::test]
async fn terminal_through_the_mock_tunnel_with_replay() {
    let dir = tempfile::tempdir().unwrap();
    let backend = ClaudeCodeBackend::new(ClaudeCodeConfig {
        claude_bin: Some("cat".into()),
        workdir: dir.path().to_path_buf(),
        ..ClaudeCodeConfig::default()
    });
    let fx = TunnelFixture::start(
        MockConfig::default(),
        Arc::new(backend.clone()),
        fixed_info(INFO),
        |_| {},
    )
    .await;
    let state = fx.mock.state();
    let mut term = state.tunnel.open_terminal(&fx.sandbox.id).await.unwrap();
    term.write_all(b"\x01{\"type\":\"resize\",\"cols\":132,\"rows\":50}")
        .await
        .unwrap();
    let deadline = Instant::now() + T;
    while backend.terminal_status().size != Some((132, 50)) {
        assert!(Instant::now() < deadline, "{:?}", backend.terminal_status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    term.write_all(b"\x00typed keys\n").await.unwrap();
    let mut seen = Vec::new();
    read_until(&mut term, &mut seen, "typed keys\r\ntyped keys\r\n").await;

    // A second terminal stream replaces the first and starts with the replay.
    let mut second = state.tunnel.open_terminal(&fx.sandbox.id).await.unwrap();
    let mut seen2 = Vec::new();
    let first_frame = read_until(&mut second, &mut seen2, "typed keys\r\ntyped keys\r\n").await;
    assert!(
        String::from_utf8_lossy(&first_frame).starts_with("typed keys\r\ntyped keys\r\n"),
        "{first_frame:?}"
    );
    let mut rest = Vec::new();
    tokio::time::timeout(T, term.read_to_end(&mut rest))
        .await
        .expect("the first stream is closed")
        .ok();
    assert_eq!(backend.terminal_status().starts, 1);
    second.write_all(b"\x00more\n").await.unwrap();
    read_until(&mut second, &mut seen2, "more\r\nmore\r\n").await;
    agentserver_plugin_api::Backend::shutdown(&backend).await;
    fx.stop().await.unwrap();
}
