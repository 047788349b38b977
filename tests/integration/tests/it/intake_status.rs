//! How the status reporter treats the server's answers to `PUT /api/agent/tasks/{id}/status`:
//! 5xx and 429 are retried until accepted (exactly one final status), 404/410 drop the entry
//! (the task is gone), 400/422 move it to `rejected/` for inspection, and an entry replayed
//! after a restart is not sent again when the server already holds a final status.

use crate::intake_support;

use std::time::Duration;

use agentserver::intake::outbox::{OUTBOX_VERSION, Outbox, OutboxEntry};
use agentserver::intake::{IntakeEvent, StatusBody};
use agentserver_integration::test_backend::TestBackend;
use intake_support::{Env, Running, assert_one_final, start_intake, wait_final};

const T: Duration = Duration::from_secs(15);

fn status_path(task_id: &str) -> String {
    format!("/api/agent/tasks/{task_id}/status")
}

/// Waits for the reporter's verdict on `task_id` (acked or dropped with an HTTP status).
async fn verdict(running: &mut Running, task_id: &str) -> IntakeEvent {
    tokio::time::timeout(T, async {
        loop {
            let event = match running.events.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("intake events ended: {e}"),
            };
            let id = match &event {
                IntakeEvent::StatusAcked { task_id, .. }
                | IntakeEvent::StatusDropped { task_id, .. } => task_id,
                _ => continue,
            };
            if id == task_id {
                return event;
            }
        }
    })
    .await
    .expect("no verdict on the task's status")
}

#[tokio::test]
async fn server_errors_are_retried_until_one_status_is_accepted() {
    let env = Env::start(false).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "succeed:ok");
    state.fail_next("PUT", &status_path(&id), 503, 3);
    let mut running = start_intake(env.config(), TestBackend::new());
    assert!(matches!(
        verdict(&mut running, &id).await,
        IntakeEvent::StatusAcked { .. }
    ));
    let t = wait_final(&state, &id, T).await;
    assert_one_final(&t, "completed");
    assert_eq!(
        state.requests_to("PUT", &status_path(&id)).len(),
        4,
        "three 503s, then the accepted attempt"
    );
    assert!(env.outbox_files().is_empty(), "{:?}", env.outbox_files());
    running.stop().await;
}

#[tokio::test]
async fn a_task_the_server_no_longer_knows_is_dropped_without_retrying() {
    for gone in [404u16, 410] {
        let env = Env::start(false).await;
        let state = env.state();
        let id = state.create_task(&env.sandbox.id, "succeed:ok");
        state.fail_next("PUT", &status_path(&id), gone, 1);
        let mut running = start_intake(env.config(), TestBackend::new());
        match verdict(&mut running, &id).await {
            IntakeEvent::StatusDropped { http_status, .. } => assert_eq!(http_status, gone),
            other => panic!("{gone}: expected a drop, got {other:?}"),
        }
        // Give a wrongly scheduled retry the time to show up.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(state.requests_to("PUT", &status_path(&id)).len(), 1);
        assert!(env.outbox_files().is_empty(), "{:?}", env.outbox_files());
        running.stop().await;
    }
}

#[tokio::test]
async fn a_refused_status_is_kept_in_rejected_and_not_retried() {
    for refused in [400u16, 422] {
        let env = Env::start(false).await;
        let state = env.state();
        let id = state.create_task(&env.sandbox.id, "succeed:ok");
        state.fail_next("PUT", &status_path(&id), refused, 1);
        let mut running = start_intake(env.config(), TestBackend::new());
        match verdict(&mut running, &id).await {
            IntakeEvent::StatusDropped { http_status, .. } => assert_eq!(http_status, refused),
            other => panic!("{refused}: expected a refusal, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(state.requests_to("PUT", &status_path(&id)).len(), 1);
        assert!(env.outbox_files().is_empty(), "{:?}", env.outbox_files());
        let kept = env
            .home
            .path()
            .join("outbox")
            .join(&env.sandbox.id)
            .join("rejected")
            .join(format!("{id}.json"));
        let entry: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&kept).expect("rejected entry kept")).unwrap();
        assert_eq!(entry["task_id"], id.as_str());
        assert_eq!(entry["body"]["status"], "completed");
        running.stop().await;
    }
}

#[tokio::test]
async fn a_replayed_entry_is_not_sent_again_when_the_server_has_a_final_status() {
    let env = Env::start(false).await;
    let state = env.state();
    let id = state.create_task(&env.sandbox.id, "already reported");
    // An earlier host reported it, then died before removing its outbox entry.
    state.set_task_status(&id, "completed");
    let outbox = Outbox::open(&env.home.path().join("outbox"), &env.sandbox.id).unwrap();
    outbox
        .write(&OutboxEntry {
            version: OUTBOX_VERSION,
            task_id: id.clone(),
            sandbox_id: env.sandbox.id.clone(),
            server: env.mock.url(),
            finished_at: "2026-11-25T00:00:00Z".into(),
            body: StatusBody {
                status: agentserver::intake::FinalStatus::Failed,
                result: None,
                total_cost_usd: None,
                num_turns: None,
                failure_reason: Some("must not overwrite the accepted status".into()),
            },
        })
        .unwrap();
    let mut running = start_intake(env.config(), TestBackend::new());
    assert!(matches!(
        verdict(&mut running, &id).await,
        IntakeEvent::StatusAcked { .. }
    ));
    assert!(
        state.requests_to("PUT", &status_path(&id)).is_empty(),
        "the status was sent again"
    );
    assert_eq!(
        state
            .requests_to("GET", &format!("/api/agent/tasks/{id}"))
            .len(),
        1,
        "the reporter asked the server first"
    );
    assert_eq!(state.task(&id).unwrap().status, "completed");
    assert!(env.outbox_files().is_empty(), "{:?}", env.outbox_files());
    running.stop().await;
}
