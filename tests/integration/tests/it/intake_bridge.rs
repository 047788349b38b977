//! The intake against the mock's CCR v2 bridge: epochs, interrupts, replay, batching,
//! servers without the bridge, concurrency and polling.

use crate::intake_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use agentserver::intake::{INTERRUPT_REASON, IntakeEvent, SYSTEM_PREFIX};
use agentserver_integration::test_backend::{TestBackend, open_gate};
use agentserver_mock::bridge::BridgeOp;
use intake_support::{Env, assert_events_in_order, assert_one_final, start_intake, wait_final};

const T: Duration = Duration::from_secs(15);

fn credentials_fetched_by_worker(state: &agentserver_mock::MockState, sid: &str) -> usize {
    state
        .bridge_log(sid)
        .iter()
        .filter(|e| matches!(e.op, BridgeOp::Credentials { by_test: false, .. }))
        .count()
}

#[tokio::test]
async fn task_runs_with_bridge_states_and_events() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "events:3 succeed:all-good");
    let running = start_intake(env.config(), TestBackend::new());
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "completed");
    let body = &t.final_updates()[0].body;
    assert_eq!(body["result"], "all-good");
    assert_eq!(body["num_turns"], 3);
    assert_events_in_order(&state, &t);

    let sid = t.session_id.clone().unwrap();
    let log = state.bridge_log(&sid);
    let states: Vec<String> = log
        .iter()
        .filter_map(|e| match &e.op {
            BridgeOp::WorkerState {
                status,
                http_status: 200,
                ..
            } => Some(status.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(states, ["idle", "running", "idle"]);
    assert!(
        log.iter()
            .any(|e| matches!(e.op, BridgeOp::StreamOpened { .. }))
    );
    // Proxy token for the task endpoints, worker JWT for the worker endpoints.
    let poll = &state.requests_to("GET", "/api/agent/tasks/poll")[0];
    assert_eq!(
        poll.header("authorization"),
        Some(format!("Bearer {}", env.sandbox.proxy_token).as_str())
    );
    assert_eq!(
        poll.query_param("sandbox_id").as_deref(),
        Some(env.sandbox.id.as_str())
    );
    let worker_put = state
        .requests_to("PUT", &format!("/v1/agent/sessions/{sid}/worker"))
        .remove(0);
    assert!(
        !worker_put
            .header("authorization")
            .unwrap()
            .contains(&env.sandbox.proxy_token)
    );
    running.stop().await;
}

#[tokio::test]
async fn events_are_batched_at_most_100_per_request_in_order() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "events:250 succeed");
    let running = start_intake(env.config(), TestBackend::new());
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "completed");
    assert_events_in_order(&state, &t);
    let sid = t.session_id.clone().unwrap();
    let batches: Vec<usize> = state
        .bridge_log(&sid)
        .iter()
        .filter_map(|e| match e.op {
            BridgeOp::Events { received, .. } => Some(received),
            _ => None,
        })
        .collect();
    assert!(
        batches.iter().all(|&n| (1..=100).contains(&n)),
        "{batches:?}"
    );
    assert_eq!(batches.iter().sum::<usize>(), 252);
    running.stop().await;
}

#[tokio::test]
async fn epoch_bump_once_is_survived_by_refetching_credentials() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "events:2 gate:epoch-once events:2 succeed");
    let sid = state.task(&id).unwrap().session_id.unwrap();
    let running = start_intake(env.config(), TestBackend::new());
    // Wait until the first events are stored, then hand the session to "another worker".
    assert!(
        state
            .wait_until(T, |s| s.bridge_worker_events(&sid).len() >= 3)
            .await
    );
    state.bridge_bump_epoch(&sid).unwrap();
    open_gate("epoch-once");
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "completed");
    assert_events_in_order(&state, &t);
    // The worker fetched credentials twice: at attach and after the 409.
    assert_eq!(credentials_fetched_by_worker(&state, &sid), 2);
    assert!(state.bridge_log(&sid).iter().any(|e| matches!(
        e.op,
        BridgeOp::Events {
            http_status: 409,
            ..
        }
    )));
    running.stop().await;
}

#[tokio::test]
async fn second_epoch_mismatch_fails_the_task_with_a_clear_reason() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(
        &env.sandbox.id,
        "events:1 gate:epoch-twice-a events:1 gate:epoch-twice-b events:1 hang",
    );
    let sid = state.task(&id).unwrap().session_id.unwrap();
    let running = start_intake(env.config(), TestBackend::new());
    assert!(
        state
            .wait_until(T, |s| s.bridge_worker_events(&sid).len() >= 2)
            .await
    );
    state.bridge_bump_epoch(&sid).unwrap();
    open_gate("epoch-twice-a");
    // The worker takes the session back once...
    assert!(
        state
            .wait_until(T, |s| credentials_fetched_by_worker(s, &sid) == 2)
            .await
    );
    assert!(
        state
            .wait_until(T, |s| s.bridge_worker_events(&sid).len() >= 3)
            .await
    );
    // ...and gives up the second time.
    state.bridge_bump_epoch(&sid).unwrap();
    open_gate("epoch-twice-b");
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "failed");
    let reason = t.failure_reason.clone().unwrap();
    assert!(reason.starts_with(SYSTEM_PREFIX), "{reason}");
    assert!(reason.contains("epoch mismatch"), "{reason}");
    assert!(reason.contains(&sid), "{reason}");
    assert_eq!(credentials_fetched_by_worker(&state, &sid), 2);
    running.stop().await;
}

#[tokio::test]
async fn interrupt_from_the_bridge_cancels_the_running_task() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "events:1 hang");
    let sid = state.task(&id).unwrap().session_id.unwrap();
    let backend = TestBackend::new();
    let running = start_intake(env.config(), backend.clone());
    assert!(
        state
            .wait_until(T, |s| s.bridge_worker_events(&sid).len() >= 2)
            .await
    );
    assert!(
        state
            .wait_until(T, |s| s
                .bridge_session(&sid)
                .is_some_and(|b| b.open_streams > 0))
            .await
    );
    state.bridge_interrupt(&sid).unwrap();
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "failed");
    assert_eq!(t.failure_reason.as_deref(), Some(INTERRUPT_REASON));
    assert_eq!(backend.stats().cancelled.load(Ordering::SeqCst), 1);
    // The intake keeps working afterwards.
    let next = state.create_task(&env.sandbox.id, "succeed");
    assert_one_final(&wait_final(&state, &next, T).await, "completed");
    running.stop().await;
}

#[tokio::test]
async fn interrupt_sent_before_the_worker_attached_arrives_by_replay() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "hang");
    let sid = state.task(&id).unwrap().session_id.unwrap();
    state
        .bridge_publish(
            &sid,
            serde_json::json!({"type": "user", "message": {"role": "user", "content": "hi"}}),
        )
        .unwrap();
    state.bridge_interrupt(&sid).unwrap();
    let running = start_intake(env.config(), TestBackend::new());
    let t = wait_final(&state, &id, T).await;
    assert_eq!(t.failure_reason.as_deref(), Some(INTERRUPT_REASON));
    running.stop().await;
}

#[tokio::test]
async fn sse_reconnects_after_silence_and_resumes_after_the_high_water_mark() {
    let env = Env::start(true).await;
    let state = env.state();
    // No keepalives within the host's liveness window: the host must reconnect.
    state.set_bridge_keepalive(Duration::from_secs(60));
    let mut config = env.config();
    config.bridge.sse_liveness = Duration::from_millis(300);
    let id = state.create_task(&env.sandbox.id, "events:1 gate:sse-silence succeed");
    let sid = state.task(&id).unwrap().session_id.unwrap();
    let running = start_intake(config, TestBackend::new());
    let opened = |s: &agentserver_mock::MockState| {
        s.bridge_log(&sid)
            .iter()
            .filter_map(|e| match e.op {
                BridgeOp::StreamOpened { from_sequence_num } => Some(from_sequence_num),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(state.wait_until(T, |s| opened(s).len() >= 3).await);
    let froms = opened(&state);
    // After the first connection saw the stored events, later ones resume after them.
    assert_eq!(froms[0], 0);
    assert!(froms.last().copied().unwrap() >= 2, "{froms:?}");
    open_gate("sse-silence");
    assert_one_final(&wait_final(&state, &id, T).await, "completed");
    running.stop().await;
}

#[tokio::test]
async fn sse_keepalives_keep_the_stream_open() {
    let env = Env::start(true).await;
    let state = env.state();
    state.set_bridge_keepalive(Duration::from_millis(100));
    let mut config = env.config();
    config.bridge.sse_liveness = Duration::from_millis(500);
    let id = state.create_task(&env.sandbox.id, "sleep:2000 succeed");
    let sid = state.task(&id).unwrap().session_id.unwrap();
    let running = start_intake(config, TestBackend::new());
    assert_one_final(&wait_final(&state, &id, T).await, "completed");
    let opened = state
        .bridge_log(&sid)
        .iter()
        .filter(|e| matches!(e.op, BridgeOp::StreamOpened { .. }))
        .count();
    assert_eq!(opened, 1, "the stream was reopened despite keepalives");
    running.stop().await;
}

#[tokio::test]
async fn server_without_bridge_still_gets_final_statuses() {
    let env = Env::start(false).await;
    let state = env.state();
    let ok = state.create_task(&env.sandbox.id, "events:3 succeed:fine");
    let bad = state.create_task(&env.sandbox.id, "events:1 fail:nope");
    assert!(state.task(&ok).unwrap().session_id.is_none());
    let mut running = start_intake(env.config(), TestBackend::new());
    let t = wait_final(&state, &ok, T).await;
    assert_one_final(&t, "completed");
    assert_eq!(t.result, Some(serde_json::json!("fine")));
    let t = wait_final(&state, &bad, T).await;
    assert_one_final(&t, "failed");
    assert_eq!(t.failure_reason.as_deref(), Some("nope"));
    // Logged (and announced) once, not per task.
    let mut no_bridge = 0;
    while let Ok(ev) = running.events.try_recv() {
        if matches!(ev, IntakeEvent::NoBridge) {
            no_bridge += 1;
        }
    }
    assert_eq!(no_bridge, 1);
    running.stop().await;
}

#[tokio::test]
async fn task_without_session_gets_one_created() {
    let mut env = Env::start(false).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "events:2 succeed");
    assert!(state.task(&id).unwrap().session_id.is_none());
    // The server gains the bridge (routes are built at start).
    state.update_config(|c| c.bridge_enabled = true);
    env.mock.restart().await.unwrap();
    let running = start_intake(env.config(), TestBackend::new());
    assert_one_final(&wait_final(&state, &id, T).await, "completed");
    let created = state.requests_to("POST", "/v1/agent/sessions");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].json().unwrap()["title"], format!("Task {id}"));
    let sessions = state.bridge_sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(state.bridge_worker_events(&sessions[0]).len(), 4);
    running.stop().await;
}

#[tokio::test]
async fn failures_are_user_or_system_and_panics_are_contained() {
    let env = Env::start(true).await;
    let state = env.state();
    let user = state.create_task(&env.sandbox.id, "fail:model-gave-up");
    let sys = state.create_task(&env.sandbox.id, "fail-system:claude-missing");
    let panics = state.create_task(&env.sandbox.id, "events:1 panic");
    let archived = state.create_task(&env.sandbox.id, "succeed");
    state.bridge_archive(&state.task(&archived).unwrap().session_id.unwrap());
    let running = start_intake(env.config(), TestBackend::new());
    let t = wait_final(&state, &user, T).await;
    assert_eq!(t.failure_reason.as_deref(), Some("model-gave-up"));
    let t = wait_final(&state, &sys, T).await;
    assert_eq!(
        t.failure_reason.as_deref(),
        Some(format!("{SYSTEM_PREFIX}claude-missing").as_str())
    );
    let t = wait_final(&state, &panics, T).await;
    assert_one_final(&t, "failed");
    let reason = t.failure_reason.unwrap();
    assert!(
        reason.starts_with(SYSTEM_PREFIX) && reason.contains("panicked"),
        "{reason}"
    );
    let t = wait_final(&state, &archived, T).await;
    assert_one_final(&t, "failed");
    let reason = t.failure_reason.unwrap();
    assert!(
        reason.contains("fetch credentials") && reason.contains("410"),
        "{reason}"
    );
    running.stop().await;
}

#[tokio::test]
async fn runs_up_to_max_concurrent_tasks() {
    let env = Env::start(true).await;
    let state = env.state();
    let ids: Vec<_> = (0..6)
        .map(|_| state.create_task(&env.sandbox.id, "sleep:400 succeed"))
        .collect();
    let mut config = env.config();
    config.max_concurrent_tasks = 3;
    let backend = TestBackend::new();
    let running = start_intake(config, backend.clone());
    for id in &ids {
        assert_one_final(&wait_final(&state, id, T).await, "completed");
    }
    assert_eq!(backend.stats().max_running.load(Ordering::SeqCst), 3);
    running.stop().await;
}

#[tokio::test]
async fn polls_again_at_once_after_a_task_finishes() {
    let env = Env::start(true).await;
    let state = env.state();
    let first = state.create_task(&env.sandbox.id, "gate:poll-again succeed");
    let mut config = env.config();
    // Far longer than the test: only the "poll after finishing" rule can pick up the next task.
    config.poll_interval = Duration::from_secs(60);
    let running = start_intake(config, TestBackend::new());
    assert!(
        state
            .wait_until(T, |s| s
                .task(&first)
                .is_some_and(|t| t.status == "assigned"))
            .await
    );
    let second = state.create_task(&env.sandbox.id, "succeed");
    let t0 = Instant::now();
    open_gate("poll-again");
    assert_one_final(&wait_final(&state, &second, T).await, "completed");
    assert!(t0.elapsed() < Duration::from_secs(10));
    running.stop().await;
}

#[tokio::test]
async fn heartbeats_are_sent_while_a_task_runs() {
    let env = Env::start(true).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "sleep:1500 succeed");
    let sid = state.task(&id).unwrap().session_id.unwrap();
    let running = start_intake(env.config(), TestBackend::new());
    assert_one_final(&wait_final(&state, &id, T).await, "completed");
    let beats = state.bridge_session(&sid).unwrap().heartbeats;
    // 300 ms ± 10 % over ~1.5 s.
    assert!((2..=6).contains(&beats), "{beats} heartbeats");
    let hb = state
        .requests_to(
            "POST",
            &format!("/v1/agent/sessions/{sid}/worker/heartbeat"),
        )
        .remove(0)
        .json()
        .unwrap();
    assert_eq!(hb["session_id"], sid);
    assert_eq!(hb["worker_epoch"], 1);
    running.stop().await;
}
