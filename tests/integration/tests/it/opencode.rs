//! The opencode backend end to end with the **real** `opencode serve` against the fake LLM:
//! the mock agentserver sends HTTP streams through the host's tunnel and gets opencode's real
//! answers (JSON and SSE); a task polled by the host's intake runs in opencode and its
//! translated events and final status reach the mock.
//!
//! The binary comes from `.npm-clis` (`bash scripts/install-test-deps.sh`, run by `.ci/run`);
//! when it is missing these tests fail with that instruction.

use crate::intake_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentserver::intake::{INTERRUPT_REASON, Intake};
use agentserver_backend_opencode::OpencodeBackend;
use agentserver_integration::opencode_support::{OpencodeEnv, free_port};
use agentserver_integration::tunnel_support::{TunnelFixture, fixed_info};
use agentserver_mock::fake_llm::FakeLlm;
use agentserver_mock::{MockConfig, NewTask};
use agentserver_plugin_api::Backend;
use intake_support::{Env, Running, assert_one_final, wait_final};
use serde_json::Value;
use tokio::io::AsyncReadExt;

const T: Duration = Duration::from_secs(20);
const INFO: &str = r#"{"hostname":"opencode-e2e","os":"linux","agent_version":"dev"}"#;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Reads the SSE body until it contains `needle`; returns everything read.
async fn read_until(body: &mut agentserver_mux::Stream, seen: &mut String, needle: &str) {
    let deadline = tokio::time::Instant::now() + T;
    let mut buf = vec![0u8; 64 * 1024];
    while !seen.contains(needle) {
        let n = tokio::time::timeout_at(deadline, body.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in the event stream: {seen}"))
            .expect("event stream");
        assert!(n > 0, "event stream ended before {needle:?}: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reaches_the_real_opencode_through_the_tunnel() {
    init_tracing();
    let llm = FakeLlm::start().await.expect("fake LLM");
    let env = OpencodeEnv::new(llm.openai_base_url()).unwrap();
    let backend = OpencodeBackend::new(env.config(free_port()));
    backend.start().await.expect("opencode starts");
    let fx = TunnelFixture::start(
        MockConfig::default(),
        Arc::new(backend.clone()),
        fixed_info(INFO),
        |_| {},
    )
    .await;
    let state = fx.mock.state();
    let id = fx.sandbox.id.clone();
    let open = |method: &'static str, path: String| {
        let state = state.clone();
        let id = id.clone();
        async move {
            tokio::time::timeout(
                T,
                state.tunnel.open_http(&id, method, &path, vec![], vec![]),
            )
            .await
            .expect("answered in time")
            .expect("HTTP stream")
        }
    };

    let r = open("GET", "/global/health".into()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["Content-Type"], "application/json");
    let health: Value = serde_json::from_slice(&r.read_body().await.unwrap()).unwrap();
    assert_eq!(
        health,
        serde_json::json!({"healthy": true, "version": "1.18.33"})
    );

    // The event stream of the work directory, live through the tunnel.
    let dir = env.workdir().display().to_string();
    let mut events = open("GET", format!("/event?directory={dir}")).await;
    assert_eq!(events.status, 200);
    assert!(events.headers["Content-Type"].starts_with("text/event-stream"));
    let mut seen = String::new();
    read_until(&mut events.body, &mut seen, "server.connected").await;

    // A session created through the tunnel shows up in the list and on the stream.
    let r = tokio::time::timeout(
        T,
        state.tunnel.open_http(
            &id,
            "POST",
            &format!("/session?directory={dir}"),
            vec![("Content-Type".into(), "application/json".into())],
            br#"{"title":"through the tunnel"}"#.to_vec(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status, 200);
    let session: Value = serde_json::from_slice(&r.read_body().await.unwrap()).unwrap();
    let sid = session["id"].as_str().expect("session id").to_owned();
    read_until(
        &mut events.body,
        &mut seen,
        &format!("\"sessionID\":\"{sid}\""),
    )
    .await;
    assert!(seen.contains("session.created"), "{seen}");

    let r = open("GET", format!("/session?directory={dir}")).await;
    assert_eq!(r.status, 200);
    let list: Value = serde_json::from_slice(&r.read_body().await.unwrap()).unwrap();
    let list = list.as_array().expect("a JSON array of sessions");
    assert!(
        list.iter()
            .any(|s| s["id"] == sid.as_str() && s["title"] == "through the tunnel"),
        "{list:?}"
    );
    drop(events);
    fx.stop().await.unwrap();
    backend.shutdown().await;
}

/// `type` (+ `/subtype`) of each event the bridge stored for a session.
fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|v| {
            let t = v["type"].as_str().unwrap_or("?").to_owned();
            match v["subtype"].as_str() {
                Some(s) => format!("{t}/{s}"),
                None => t,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_in_opencode_and_reach_the_mock() {
    init_tracing();
    let env = Env::start(true).await;
    let state = env.state();
    let llm = FakeLlm::start().await.expect("fake LLM");
    let oc = OpencodeEnv::new(llm.openai_base_url()).unwrap();
    let backend = OpencodeBackend::new(oc.config(free_port()));
    backend.start().await.expect("opencode starts");
    let mut config = env.config();
    config.workdir = oc.workdir();
    let intake = Intake::new(config, Arc::new(backend.clone())).expect("intake builds");
    let handle = intake.handle();
    let running = Running {
        events: handle.subscribe(),
        handle,
        join: tokio::spawn(async move { intake.run().await.expect("intake runs") }),
    };

    // A tool round trip, with a system context.
    let id = state.create_task_with(NewTask {
        target_id: env.sandbox.id.clone(),
        prompt: "Please TOOL_BASH".into(),
        system_context: "You are the SYSCTX-7 worker.".into(),
        ..NewTask::default()
    });
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "completed");
    let body = &t.final_updates()[0].body;
    assert_eq!(body["result"], "FAKE_DONE: tool said hi");
    assert_eq!(body["num_turns"], 2);
    let events = state.bridge_worker_events(t.session_id.as_deref().expect("a bridge session"));
    let k = kinds(&events);
    let pos = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("no {what} in {k:?}"))
    };
    let init = pos("init", &|v| v["type"] == "system" && v["subtype"] == "init");
    let tool_use = pos("tool_use", &|v| {
        v["type"] == "assistant"
            && v["message"]["content"][0]["type"] == "tool_use"
            && v["message"]["content"][0]["name"] == "bash"
    });
    let tool_result = pos("tool_result", &|v| {
        v["type"] == "user" && v["message"]["content"][0]["content"] == "hi\n"
    });
    let text = pos("text", &|v| {
        v["type"] == "assistant" && v["message"]["content"][0]["text"] == "FAKE_DONE: tool said hi"
    });
    let result = pos("result", &|v| v["type"] == "result");
    assert!(
        init < tool_use && tool_use < tool_result && tool_result < text && text < result,
        "{k:?}"
    );
    assert_eq!(events[result]["result"], "FAKE_DONE: tool said hi");
    assert_eq!(events[result]["num_turns"], 2);
    assert!(
        llm.requests()
            .iter()
            .any(|r| r.body.to_string().contains("SYSCTX-7")),
        "the system context did not reach the model"
    );

    // An interrupt from the server mid-task aborts the opencode session.
    let id = state.create_task(&env.sandbox.id, "Hang on FAKE_STALL");
    let deadline = Instant::now() + T;
    while llm.stalled_now() == 0 {
        assert!(
            Instant::now() < deadline,
            "opencode never reached the fake LLM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let session = state
        .task(&id)
        .unwrap()
        .session_id
        .expect("a bridge session");
    let started = Instant::now();
    state.bridge_interrupt(&session).expect("interrupt sent");
    let t = wait_final(&state, &id, T).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_one_final(&t, "failed");
    assert_eq!(t.failure_reason.as_deref(), Some(INTERRUPT_REASON));
    let events = state.bridge_worker_events(&session);
    let last = events.last().expect("events");
    assert_eq!(last["type"], "result", "{:?}", kinds(&events));
    assert_eq!(last["terminal_reason"], "aborted");
    let deadline = Instant::now() + Duration::from_secs(10);
    while llm.stalled_now() > 0 {
        assert!(Instant::now() < deadline, "opencode kept the LLM call open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    running.stop().await;
    let pid = backend.server_pid().expect("running");
    backend.shutdown().await;
    assert!(
        backend.server_pid().is_none(),
        "opencode {pid} still tracked"
    );
}
