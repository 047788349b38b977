//! Statuses an earlier session could not report are delivered by a later host even when it
//! serves another sandbox: `worker::spawn_leftover_flush` uses the old session's own server
//! and proxy token, and reports tasks that were running when that host died as failed.

use std::time::Duration;

use agentserver::intake::outbox::{OUTBOX_VERSION, Outbox, OutboxEntry};
use agentserver::intake::{FinalStatus, StatusBody};
use agentserver::state::{Session, SessionStore};
use agentserver::worker::spawn_leftover_flush;
use agentserver_mock::{MockConfig, MockServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_host_delivers_an_old_sessions_statuses() {
    let server = MockServer::start(MockConfig::default()).await.unwrap();
    let mock = server.state();
    let old = mock.add_sandbox("old", "claudecode");
    let finished = mock.create_task(&old.id, "finished before the crash");
    let orphan = mock.create_task(&old.id, "running at the crash");
    // The old host polled both tasks (they are `assigned` now and never offered again).
    let polled: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{}/api/agent/tasks/poll?sandbox_id={}",
            server.url(),
            old.id
        ))
        .bearer_auth(&old.proxy_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(polled.as_array().unwrap().len(), 2);

    // What it left: one outcome in the outbox, one task marked received without an outcome,
    // and its (inactive) session file.
    let dir = tempfile::tempdir().unwrap();
    let outbox_root = dir.path().join("outbox");
    let outbox = Outbox::open(&outbox_root, &old.id).unwrap();
    outbox
        .write(&OutboxEntry {
            version: OUTBOX_VERSION,
            task_id: finished.clone(),
            sandbox_id: old.id.clone(),
            server: server.url(),
            finished_at: "2026-11-25T00:00:00Z".into(),
            body: StatusBody {
                status: FinalStatus::Completed,
                result: Some("done".into()),
                total_cost_usd: Some(0.1),
                num_turns: Some(1),
                failure_reason: None,
            },
        })
        .unwrap();
    // The old host had started the orphan when it died.
    let orphan_task = agentserver::intake::PolledTask {
        task_id: orphan.clone(),
        ..Default::default()
    };
    outbox
        .mark_received(std::slice::from_ref(&orphan_task))
        .unwrap();
    outbox.mark_started(&orphan_task).unwrap();
    let store = SessionStore::new(dir.path().join("sessions"));
    store
        .save(&Session {
            sandbox_id: old.id.clone(),
            tunnel_token: old.tunnel_token.clone().into(),
            proxy_token: old.proxy_token.clone().into(),
            workspace_id: old.workspace_id.clone(),
            name: "old".into(),
            session_type: "claudecode".into(),
            server_url: server.url(),
            dir: dir.path().to_string_lossy().into_owned(),
            created_at: chrono::Utc::now().fixed_offset(),
            pid: None,
            backend: None,
        })
        .unwrap();
    // `save` stamps our pid; the old host is gone, so clear it as its exit would have.
    let mut on_disk = store.load(&old.id).unwrap();
    on_disk.pid = None;
    std::fs::write(
        store.path_of(&old.id).unwrap(),
        serde_json::to_vec_pretty(&on_disk).unwrap(),
    )
    .unwrap();

    let delivered = tokio::time::timeout(
        Duration::from_secs(30),
        spawn_leftover_flush(store, outbox_root, "the-new-sandbox".into()),
    )
    .await
    .expect("the flush finished")
    .unwrap();
    assert_eq!(delivered, 2);

    let done = mock.task(&finished).unwrap();
    assert_eq!(done.status, "completed");
    assert_eq!(done.final_updates().len(), 1);
    let lost = mock.task(&orphan).unwrap();
    assert_eq!(lost.status, "failed");
    assert!(
        lost.failure_reason
            .as_deref()
            .is_some_and(|r| r.contains("the host stopped while the task was running")),
        "{:?}",
        lost.failure_reason
    );
    // Nothing is left to deliver.
    assert!(outbox.pending().unwrap().is_empty());
    assert!(outbox.orphans().unwrap().is_empty());
}
