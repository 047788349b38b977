//! Exactly one final status under slow and hostile servers (issue 15, items 1–5 and 9): late
//! answers, a gateway's 504 after the server applied a status, a status lookup that cannot
//! be answered, one malformed item in a poll batch, a status refused as too large, tasks
//! received but never started when the host died, and task ids that would rewrite URLs.

use crate::intake_support;

use std::time::Duration;

use agentserver::intake::outbox::Outbox;
use agentserver::intake::{
    IntakeEvent, NOT_STARTED_REASON, ORPHAN_REASON, PolledTask, SYSTEM_PREFIX, TaskTimeouts,
};
use agentserver_integration::test_backend::TestBackend;
use intake_support::{Env, assert_one_final, start_intake, wait_final};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn status_path(task_id: &str) -> String {
    format!("/api/agent/tasks/{task_id}/status")
}

#[test]
fn default_timeouts_fit_a_loaded_server() {
    let t = TaskTimeouts::default();
    // Well past upstream's 10 s, which lost tasks whose poll answer took 12 s.
    assert!(t.poll >= Duration::from_secs(60), "{t:?}");
    assert!(t.status >= Duration::from_secs(60), "{t:?}");
}

#[tokio::test]
async fn late_poll_answers_lose_no_task() {
    let env = Env::start(false).await;
    let state = env.state();
    let ids: Vec<String> = (0..4)
        .map(|i| state.create_task(&env.sandbox.id, &format!("succeed:t{i}")))
        .collect();
    // Every poll is applied at once (tasks assigned) and answered 1.5 s later: past a 1 s
    // timeout, within the configured 5 s one.
    state.answer_late(
        "GET",
        "/api/agent/tasks/poll",
        "",
        Duration::from_millis(1500),
        3,
    );
    let mut config = env.config();
    config.timeouts = TaskTimeouts {
        poll: Duration::from_secs(5),
        status: Duration::from_secs(5),
    };
    let running = start_intake(config, TestBackend::new());
    for id in &ids {
        assert_one_final(&wait_final(&state, id, T).await, "completed");
    }
    running.stop().await;
}

#[tokio::test]
async fn late_status_answers_are_not_sent_twice() {
    let env = Env::start(false).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "succeed:slow");
    state.answer_late("PUT", &status_path(&id), "", Duration::from_millis(1500), 1);
    let mut config = env.config();
    config.timeouts.status = Duration::from_secs(5);
    let running = start_intake(config, TestBackend::new());
    assert_one_final(&wait_final(&state, &id, T).await, "completed");
    // The answer came late but within the timeout: nothing to retry.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(state.requests_to("PUT", &status_path(&id)).len(), 1);
    running.stop().await;
}

#[tokio::test]
async fn a_status_timed_out_after_the_server_applied_it_is_checked_not_resent() {
    let env = Env::start(false).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "succeed:applied");
    // Applied at once, answered after the client's 1 s timeout.
    state.answer_late("PUT", &status_path(&id), "", Duration::from_secs(3), 1);
    let mut config = env.config();
    config.timeouts.status = Duration::from_secs(1);
    let mut running = start_intake(config, TestBackend::new());
    wait_acked(&mut running.events, &id).await;
    let t = state.task(&id).unwrap();
    assert_one_final(&t, "completed");
    assert_eq!(state.requests_to("PUT", &status_path(&id)).len(), 1);
    assert!(
        !state
            .requests_to("GET", &format!("/api/agent/tasks/{id}"))
            .is_empty(),
        "the reporter asked the server"
    );
    assert!(env.outbox_files().is_empty(), "{:?}", env.outbox_files());
    running.stop().await;
}

#[tokio::test]
async fn a_gateway_504_after_the_server_applied_the_status_is_not_a_duplicate() {
    for gateway in [502u16, 504] {
        let env = Env::start(false).await;
        let state = env.state();
        let id = state.create_task(&env.sandbox.id, "succeed:once");
        state.fail_after_apply("PUT", &status_path(&id), "", gateway, 1);
        // And the first two lookups cannot be answered either: wait and ask again.
        state.fail_next("GET", &format!("/api/agent/tasks/{id}"), 503, 2);
        let mut running = start_intake(env.config(), TestBackend::new());
        wait_acked(&mut running.events, &id).await;
        let t = state.task(&id).unwrap();
        assert_one_final(&t, "completed");
        assert_eq!(
            state.requests_to("PUT", &status_path(&id)).len(),
            1,
            "{gateway}: the status was sent blind again"
        );
        assert_eq!(
            state
                .requests_to("GET", &format!("/api/agent/tasks/{id}"))
                .len(),
            3,
            "{gateway}: two unanswered lookups, then the one that found the final status"
        );
        running.stop().await;
    }
}

#[tokio::test]
async fn one_malformed_item_does_not_poison_its_batch() {
    let env = Env::start(false).await;
    let state = env.state();
    let good_a = state.create_task(&env.sandbox.id, "succeed:a");
    let bad = state.create_task(&env.sandbox.id, "succeed:bad");
    let good_b = state.create_task(&env.sandbox.id, "succeed:b");
    state.corrupt_poll_item(&bad, json!({"prompt": 5}));
    state.inject_poll_item(&env.sandbox.id, json!({"prompt": "no id at all"}));
    let running = start_intake(env.config(), TestBackend::new());
    assert_one_final(&wait_final(&state, &good_a, T).await, "completed");
    assert_one_final(&wait_final(&state, &good_b, T).await, "completed");
    let t = wait_final(&state, &bad, T).await;
    assert_one_final(&t, "failed");
    let reason = t.failure_reason.unwrap();
    assert!(reason.starts_with(SYSTEM_PREFIX), "{reason}");
    assert!(reason.contains("malformed"), "{reason}");
    assert!(reason.contains("invalid type: integer `5`"), "{reason}");
    let summary = running.stop().await;
    assert_eq!(summary.malformed, 2);
}

#[tokio::test]
async fn a_status_refused_as_too_large_is_sent_shortened_and_kept_whole() {
    let env = Env::start(false).await;
    let state = env.state();
    let text = "r".repeat(200 * 1024);
    let id = state.create_task(&env.sandbox.id, &format!("succeed:{text}"));
    // The server takes at most 16 KiB bodies.
    state.limit_status_body(Some(16 * 1024));
    let mut running = start_intake(env.config(), TestBackend::new());
    wait_acked(&mut running.events, &id).await;
    let t = state.task(&id).unwrap();
    assert_one_final(&t, "completed");
    let sent = t.result.unwrap();
    let sent = sent.as_str().unwrap();
    assert!(sent.len() < 16 * 1024, "{}", sent.len());
    assert!(sent.starts_with("rrrr"), "{sent:.40}");
    assert!(
        sent.ends_with(&format!(
            "[cut by the agentserver host: 4096 of {} bytes]",
            text.len()
        )),
        "{}",
        &sent[sent.len() - 80..]
    );
    let puts = state.requests_to("PUT", &status_path(&id));
    assert_eq!(
        puts.len(),
        3,
        "the whole 200 KiB and the 64 KiB cut refused, the 4 KiB cut accepted"
    );
    let kept = env
        .home
        .path()
        .join("outbox")
        .join(&env.sandbox.id)
        .join("rejected")
        .join(format!("{id}.full.json"));
    let full: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&kept).expect("full text kept")).unwrap();
    assert_eq!(full["body"]["result"].as_str().unwrap(), text);
    assert!(env.outbox_files().is_empty(), "{:?}", env.outbox_files());
    running.stop().await;
}

#[tokio::test]
async fn tasks_received_but_never_started_run_after_a_restart() {
    let env = Env::start(false).await;
    let state = env.state();
    let waiting = state.create_task(&env.sandbox.id, "succeed:ran-after-the-restart");
    let was_running = state.create_task(&env.sandbox.id, "succeed:never");
    // An earlier host polled both (the server assigned them), started one, and died.
    state.set_task_status(&waiting, "assigned");
    state.set_task_status(&was_running, "assigned");
    let outbox = Outbox::open(&env.home.path().join("outbox"), &env.sandbox.id).unwrap();
    let polled = |id: &str, prompt: &str| PolledTask {
        task_id: id.into(),
        prompt: prompt.into(),
        ..Default::default()
    };
    let tasks = [
        polled(&waiting, "succeed:ran-after-the-restart"),
        polled(&was_running, "succeed:never"),
    ];
    outbox.mark_received(&tasks).unwrap();
    outbox.mark_started(&tasks[1]).unwrap();

    let running = start_intake(env.config(), TestBackend::new());
    let t = wait_final(&state, &waiting, T).await;
    assert_one_final(&t, "completed");
    assert_eq!(t.result, Some(json!("ran-after-the-restart")));
    let t = wait_final(&state, &was_running, T).await;
    assert_one_final(&t, "failed");
    assert_eq!(
        t.failure_reason.unwrap(),
        format!("{SYSTEM_PREFIX}{ORPHAN_REASON}")
    );
    let summary = running.stop().await;
    assert_eq!((summary.resumed, summary.orphaned), (1, 1));
}

#[tokio::test]
async fn a_flush_says_truthfully_that_a_task_never_started() {
    let env = Env::start(false).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "succeed:x");
    state.set_task_status(&id, "assigned");
    let outbox = Outbox::open(&env.home.path().join("outbox"), &env.sandbox.id).unwrap();
    outbox
        .mark_received(&[PolledTask {
            task_id: id.clone(),
            ..Default::default()
        }])
        .unwrap();
    let summary = agentserver::intake::flush_outbox(env.config())
        .await
        .unwrap();
    assert_eq!(summary.resumed, 1);
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "failed");
    assert_eq!(
        t.failure_reason.unwrap(),
        format!("{SYSTEM_PREFIX}{NOT_STARTED_REASON}")
    );
}

#[tokio::test]
async fn task_ids_cannot_rewrite_the_urls_they_go_into() {
    let env = Env::start(false).await;
    let state = env.state();
    let hostile = [
        "../register",
        "a/b",
        "..%2f",
        "/tmp/pwn",
        "x?y#z",
        "..",
        ".",
        "bell\u{7}",
    ];
    for id in hostile {
        state.inject_poll_item(&env.sandbox.id, json!({"task_id": id, "prompt": "succeed"}));
    }
    let long = "t".repeat(300);
    state.inject_poll_item(
        &env.sandbox.id,
        json!({"task_id": long, "prompt": "succeed"}),
    );
    let good = state.create_task(&env.sandbox.id, "succeed:fine");
    let running = start_intake(env.config(), TestBackend::new());
    assert_one_final(&wait_final(&state, &good, T).await, "completed");
    // Give the hostile ones the time to be reported (the mock answers 404: unknown tasks).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let summary = running.stop().await;
    // `.`, `..`, the control character and the absurd length are refused locally.
    assert_eq!(summary.malformed, 4);
    for req in state.requests() {
        if req.method == "POST" || req.path == "/api/agent/tasks/poll" {
            continue;
        }
        let Some(rest) = req.path.strip_prefix("/api/agent/tasks/") else {
            panic!(
                "a request left the task endpoints: {} {}",
                req.method, req.path
            );
        };
        let segment = rest.strip_suffix("/status").unwrap_or(rest);
        assert!(
            !segment.is_empty() && !segment.contains('/') && segment != "..",
            "a task id became more than one path segment: {} {}",
            req.method,
            req.path
        );
    }
    for (id, encoded) in [
        ("../register", "..%2Fregister"),
        ("a/b", "a%2Fb"),
        ("..%2f", "..%252f"),
        ("/tmp/pwn", "%2Ftmp%2Fpwn"),
        ("x?y#z", "x%3Fy%23z"),
    ] {
        assert!(
            !state.requests_to("PUT", &status_path(encoded)).is_empty(),
            "{id}: no status sent to its escaped URL"
        );
    }
}

/// Waits until the reporter says the status of `task_id` was accepted.
async fn wait_acked(events: &mut tokio::sync::broadcast::Receiver<IntakeEvent>, task_id: &str) {
    tokio::time::timeout(T, async {
        loop {
            match events.recv().await {
                Ok(IntakeEvent::StatusAcked { task_id: id, .. }) if id == task_id => return,
                Ok(IntakeEvent::StatusDropped { task_id: id, .. }) if id == task_id => {
                    panic!("the status of {task_id} was dropped")
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("intake events ended: {e}"),
            }
        }
    })
    .await
    .expect("the status was not accepted in time");
}

#[tokio::test]
async fn an_endless_poll_answer_is_dropped_and_polling_goes_on() {
    let env = Env::start(false).await;
    let state = env.state();
    state.answer_endless("GET", "/api/agent/tasks/poll", 2);
    let running = start_intake(env.config(), TestBackend::new());
    assert!(
        state
            .wait_until(T, |s| s.requests_to("GET", "/api/agent/tasks/poll").len()
                >= 3)
            .await,
        "polling stopped after the endless answers"
    );
    let id = state.create_task(&env.sandbox.id, "succeed:after");
    assert_one_final(&wait_final(&state, &id, T).await, "completed");
    running.stop().await;
}

#[tokio::test]
async fn a_flush_never_sends_what_a_live_host_is_delivering() {
    let env = Env::start(false).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "succeed:x");
    state.set_task_status(&id, "assigned");
    // The live host has the status in its outbox and keeps failing to deliver it for a while.
    state.fail_next("PUT", &status_path(&id), 503, 6);
    let outbox = Outbox::open(&env.home.path().join("outbox"), &env.sandbox.id).unwrap();
    outbox
        .write(&agentserver::intake::outbox::OutboxEntry {
            version: agentserver::intake::outbox::OUTBOX_VERSION,
            task_id: id.clone(),
            sandbox_id: env.sandbox.id.clone(),
            server: env.mock.url(),
            finished_at: "2026-12-01T00:00:00Z".into(),
            body: agentserver::intake::StatusBody {
                status: agentserver::intake::FinalStatus::Completed,
                result: Some("once".into()),
                total_cost_usd: None,
                num_turns: None,
                failure_reason: None,
            },
        })
        .unwrap();
    let live = start_intake(env.config(), TestBackend::new());
    assert!(
        state
            .wait_until(T, |s| !s.requests_to("PUT", &status_path(&id)).is_empty())
            .await
    );
    // Another host sharing the state directory starts and flushes leftovers: it must leave
    // this sandbox's entries to the live host.
    let summary = agentserver::intake::flush_outbox(env.config())
        .await
        .unwrap();
    assert_eq!(summary.replayed, 0, "{summary:?}");
    assert_one_final(&wait_final(&state, &id, T).await, "completed");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_one_final(&state.task(&id).unwrap(), "completed");
    live.stop().await;
}

#[tokio::test]
async fn a_serving_intake_waits_for_the_outbox_owner_and_can_be_drained_meanwhile() {
    let env = Env::start(false).await;
    let state = env.state();
    let outbox = Outbox::open(&env.home.path().join("outbox"), &env.sandbox.id).unwrap();
    // Another process (a flush by another host) holds the outbox.
    let held = outbox.claim().unwrap().expect("the lock is free at first");
    let id = state.create_task(&env.sandbox.id, "succeed:after-the-lock");
    let running = start_intake(env.config(), TestBackend::new());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        state.requests_to("GET", "/api/agent/tasks/poll").is_empty(),
        "it polled without owning the outbox"
    );
    // The holder lets go: the intake takes over and serves.
    drop(held);
    assert_one_final(&wait_final(&state, &id, T).await, "completed");
    running.stop().await;

    // Held again by someone else: a drain ends the wait at once.
    let _held = outbox
        .claim()
        .unwrap()
        .expect("free after the intake stopped");
    let running = start_intake(env.config(), TestBackend::new());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let summary = tokio::time::timeout(Duration::from_secs(5), running.stop())
        .await
        .expect("the drain did not end the wait for the lock");
    assert_eq!(summary.tasks_received, 0);
}
