//! Many tasks through the mock while it fails: every task gets exactly one final status and
//! all its events, in order, in the mock's bridge log, while the mock drops the host's tunnel
//! WebSocket, answers 503 for 10 s and restarts once.

use crate::intake_support;

use std::time::{Duration, Instant};

use agentserver_integration::test_backend::TestBackend;
use intake_support::{Env, assert_events_in_order, assert_one_final, start_intake};

/// Number of tasks (the issue asks for 500; see docs/decisions/intake.md if lowered).
const TASKS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_survive_503s_and_a_restart_exactly_once() {
    let mut env = Env::start(true).await;
    let state = env.state();
    let ids: Vec<String> = (0..TASKS)
        .map(|i| state.create_task(&env.sandbox.id, &format!("events:{} succeed", i % 7)))
        .collect();

    let mut config = env.config();
    config.max_concurrent_tasks = 8;
    let backend = TestBackend::new();
    let started = Instant::now();
    let running = start_intake(config, backend.clone());

    // The same host also holds the tunnel, as `agentserver run` does.
    let mut tunnel_config = agentserver::tunnel::TunnelConfig::new(
        env.mock.url(),
        env.sandbox.id.clone(),
        agentserver::secret::Secret::new(env.sandbox.tunnel_token.clone()),
    );
    tunnel_config.backoff.initial = Duration::from_millis(100);
    let tunnel = std::sync::Arc::new(agentserver::tunnel::Tunnel::new(
        tunnel_config,
        std::sync::Arc::new(backend.clone()),
        std::sync::Arc::new(|| {
            use futures_util::FutureExt;
            async { br#"{"hostname":"scale-test"}"#.to_vec() }.boxed()
        }),
    ));
    let tunnel_cancel = tokio_util::sync::CancellationToken::new();
    let tunnel_task = {
        let (tunnel, cancel) = (tunnel.clone(), tunnel_cancel.clone());
        tokio::spawn(async move { tunnel.run(cancel).await })
    };
    let sandbox_id = env.sandbox.id.clone();
    assert!(
        state
            .wait_until(Duration::from_secs(20), |s| s
                .tunnel
                .is_connected(&sandbox_id))
            .await,
        "the tunnel never connected"
    );

    let finished = |s: &agentserver_mock::MockState| {
        s.tasks()
            .iter()
            .filter(|t| agentserver_mock::state::is_final_status(&t.status))
            .count()
    };

    // Some tasks done; the server drops the tunnel; more done; then it answers 503 to
    // everything for 10 s.
    assert!(
        state
            .wait_until(Duration::from_secs(20), |s| finished(s) >= 20)
            .await
    );
    assert!(
        state.tunnel.drop_connection(&sandbox_id),
        "no tunnel to drop"
    );
    let back = |s: &agentserver_mock::MockState, n: usize| {
        s.tunnel.connections(&sandbox_id).len() >= n && s.tunnel.is_connected(&sandbox_id)
    };
    assert!(
        state
            .wait_until(Duration::from_secs(20), |s| back(s, 2))
            .await,
        "the tunnel did not come back after the drop"
    );
    assert!(
        state
            .wait_until(Duration::from_secs(20), |s| finished(s) >= 40)
            .await
    );
    state.fail_with(503, Duration::from_secs(10));
    let outage_began = Instant::now();
    let outage_start = finished(&state);
    tokio::time::sleep(Duration::from_secs(10)).await;
    // During the outage nothing could be reported.
    let after_outage = finished(&state);
    assert!(
        after_outage <= outage_start + 16,
        "statuses got through during the outage: {outage_start} -> {after_outage}"
    );

    // Once it is back, let some more through and restart it (state kept, connections cut).
    assert!(
        state
            .wait_until(Duration::from_secs(20), |s| finished(s)
                >= after_outage + 40)
            .await
    );
    // (The 503s also refused tunnel dials; make sure it is up before the restart cuts it.)
    assert!(
        state
            .wait_until(Duration::from_secs(20), |s| back(s, 2))
            .await,
        "the tunnel is not connected before the restart"
    );
    env.mock.restart().await.expect("mock restarts");

    assert!(
        state
            .wait_until(Duration::from_secs(60), |s| finished(s) == TASKS)
            .await,
        "only {} of {TASKS} tasks finished",
        finished(&state)
    );
    let summary = running.stop().await;
    let elapsed = started.elapsed();
    // The tunnel came back after the drop and after the restart.
    let reconnected = state
        .wait_until(Duration::from_secs(20), |s| back(s, 3))
        .await;
    assert!(
        reconnected,
        "expected a reconnect after the drop and after the restart: {:?}",
        state.tunnel.connections(&sandbox_id)
    );
    tunnel_cancel.cancel();
    tunnel_task.await.unwrap().unwrap();

    assert_eq!(summary.tasks_received, TASKS as u64);
    assert_eq!(summary.unreported, 0);
    for id in &ids {
        let t = state.task(id).expect("task");
        assert_one_final(&t, "completed");
        assert_events_in_order(&state, &t);
    }
    assert!(
        env.outbox_files().is_empty(),
        "outbox not empty: {:?}",
        env.outbox_files()
    );
    assert_eq!(
        backend
            .stats()
            .started
            .load(std::sync::atomic::Ordering::SeqCst),
        TASKS,
        "every task ran exactly once"
    );
    // The outage really hit the host: it kept sending requests that were answered 503.
    let requests = state.requests();
    let during_outage = requests
        .iter()
        .filter(|r| r.at >= outage_began && r.at < outage_began + Duration::from_secs(10))
        .count();
    assert!(during_outage > 0, "the host sent nothing during the outage");
    let status_puts = requests
        .iter()
        .filter(|r| r.method == "PUT" && r.path.ends_with("/status"))
        .count();
    let event_posts = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/worker/events"))
        .count();
    eprintln!(
        "{TASKS} tasks in {elapsed:?} (10 s of it a 503 outage); {during_outage} requests refused during the outage, {status_puts} status PUTs, {event_posts} event POSTs"
    );
}
