//! Tasks (spec §8, §14) over real sockets: create, poll, status, details, and every error.

use crate::common;

use agentserver_mock::{MockConfig, NewTask};
use common::*;
use reqwest::Client;
use serde_json::{Value, json};

async fn create(c: &Client, url: &str, token: &str, body: Value) -> reqwest::Response {
    c.post(format!("{url}/api/agent/tasks"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn poll(c: &Client, url: &str, token: &str, sandbox_id: Option<&str>) -> reqwest::Response {
    let mut u = format!("{url}/api/agent/tasks/poll");
    if let Some(id) = sandbox_id {
        u.push_str(&format!("?sandbox_id={id}"));
    }
    c.get(u).bearer_auth(token).send().await.unwrap()
}

async fn put_status(c: &Client, url: &str, token: &str, id: &str, body: &str) -> reqwest::Response {
    c.put(format!("{url}/api/agent/tasks/{id}/status"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn create_via_api_with_and_without_bridge() {
    for bridge in [true, false] {
        let mock = start_with(MockConfig {
            bridge_enabled: bridge,
            ..MockConfig::default()
        })
        .await;
        let state = mock.state();
        let requester = state.add_sandbox("req", "claudecode");
        let target = state.add_sandbox("tgt", "claudecode");
        let c = client();
        let resp = create(
            &c,
            &mock.url(),
            &requester.proxy_token,
            json!({"target_id": target.id, "prompt": "do it", "skill": "code-review", "requester_id": requester.id}),
        )
        .await;
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        let id = body["task_id"].as_str().unwrap();
        assert!(id.starts_with("task_"));
        assert!(uuid::Uuid::parse_str(&id["task_".len()..]).is_ok());
        assert_eq!(body["status"], "pending");
        let session = body["session_id"].as_str().unwrap();
        if bridge {
            assert!(session.starts_with("cse_"), "{session}");
        } else {
            assert_eq!(session, "");
        }
        let task = state.task(id).unwrap();
        assert_eq!(task.target_id, target.id);
        assert_eq!(task.requester_id.as_deref(), Some(requester.id.as_str()));
        assert_eq!(task.skill.as_deref(), Some("code-review"));
        assert_eq!(task.timeout_seconds, 300);
        assert_eq!(task.workspace_id, target.workspace_id);
    }
}

#[tokio::test]
async fn create_errors() {
    let mock = start().await;
    let state = mock.state();
    let me = state.add_sandbox("me", "claudecode");
    let other_ws = state.add_sandbox_in("other-ws", "far", "claudecode");
    let c = client();
    let url = format!("{}/api/agent/tasks", mock.url());

    let resp = c.post(&url).json(&json!({})).send().await.unwrap();
    assert_text_error(resp, 401, "missing authorization").await;
    let resp = create(
        &c,
        &mock.url(),
        "ffffffffffffffffffffffffffffffff",
        json!({}),
    )
    .await;
    assert_text_error(resp, 401, "unauthorized").await;
    let resp = c
        .post(&url)
        .bearer_auth(&me.proxy_token)
        .body("{")
        .send()
        .await
        .unwrap();
    assert_text_error(resp, 400, "bad request").await;
    let resp = create(
        &c,
        &mock.url(),
        &me.proxy_token,
        json!({"target_id": me.id}),
    )
    .await;
    assert_text_error(resp, 400, "target_id and prompt required").await;
    let resp = create(&c, &mock.url(), &me.proxy_token, json!({"prompt": "x"})).await;
    assert_text_error(resp, 400, "target_id and prompt required").await;
    let resp = create(
        &c,
        &mock.url(),
        &me.proxy_token,
        json!({"target_id": uuid::Uuid::new_v4().to_string(), "prompt": "x"}),
    )
    .await;
    assert_text_error(resp, 404, "target agent not found").await;
    let resp = create(
        &c,
        &mock.url(),
        &me.proxy_token,
        json!({"target_id": other_ws.id, "prompt": "x"}),
    )
    .await;
    assert_text_error(resp, 403, "target agent not in workspace").await;
    assert!(state.tasks().is_empty());
}

#[tokio::test]
async fn poll_assigns_up_to_five_oldest_first_once() {
    let mock = start().await;
    let state = mock.state();
    let sb = state.add_sandbox("worker", "claudecode");
    let other = state.add_sandbox("other", "claudecode");
    let ids: Vec<String> = (0..7)
        .map(|i| state.create_task(&sb.id, &format!("p{i}")))
        .collect();
    let other_task = state.create_task(&other.id, "not yours");
    state.create_task_with(NewTask {
        target_id: sb.id.clone(),
        prompt: "with options".into(),
        system_context: "be brief".into(),
        max_turns: 3,
        ..NewTask::default()
    });
    let c = client();

    let resp = poll(&c, &mock.url(), &sb.proxy_token, Some(&sb.id)).await;
    assert_eq!(resp.status(), 200);
    let batch: Vec<Value> = resp.json().await.unwrap();
    assert_eq!(batch.len(), 5);
    let got: Vec<&str> = batch
        .iter()
        .map(|t| t["task_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids[..5].iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(batch[0]["prompt"], "p0");
    assert_eq!(batch[0]["system_context"], "");
    assert_eq!(batch[0]["max_turns"], 0);
    assert_eq!(batch[0]["max_budget_usd"], 0.0);
    assert!(batch[0]["session_id"].as_str().unwrap().starts_with("cse_"));
    for id in &ids[..5] {
        assert_eq!(state.task(id).unwrap().status, "assigned");
    }

    // The tunnel token works too, and without sandbox_id the token's sandbox is used.
    let resp = poll(&c, &mock.url(), &sb.tunnel_token, None).await;
    let batch: Vec<Value> = resp.json().await.unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(batch[0]["task_id"], ids[5].as_str());
    assert_eq!(batch[2]["system_context"], "be brief");
    assert_eq!(batch[2]["max_turns"], 3);

    // Never re-offered.
    let batch: Vec<Value> = poll(&c, &mock.url(), &sb.proxy_token, Some(&sb.id))
        .await
        .json()
        .await
        .unwrap();
    assert!(batch.is_empty());
    assert_eq!(state.task(&other_task).unwrap().status, "pending");
}

#[tokio::test]
async fn poll_without_bridge_has_no_session() {
    let mock = start_with(MockConfig {
        bridge_enabled: false,
        ..MockConfig::default()
    })
    .await;
    let state = mock.state();
    let sb = state.add_sandbox("worker", "claudecode");
    let id = state.create_task(&sb.id, "hi");
    assert_eq!(state.task(&id).unwrap().session_id, None);
    let batch: Vec<Value> = poll(&client(), &mock.url(), &sb.proxy_token, Some(&sb.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert!(batch[0].get("session_id").is_none());
}

#[tokio::test]
async fn poll_errors() {
    let mock = start().await;
    let state = mock.state();
    let sb = state.add_sandbox("worker", "claudecode");
    let other = state.add_sandbox("other", "claudecode");
    let c = client();
    let resp = c
        .get(format!(
            "{}/api/agent/tasks/poll?sandbox_id={}",
            mock.url(),
            sb.id
        ))
        .send()
        .await
        .unwrap();
    assert_text_error(resp, 401, "missing authorization").await;
    assert_text_error(
        poll(&c, &mock.url(), "bad", Some(&sb.id)).await,
        401,
        "unauthorized",
    )
    .await;
    assert_text_error(
        poll(&c, &mock.url(), &sb.proxy_token, Some(&other.id)).await,
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn status_updates_are_stored_and_recorded() {
    let mock = start().await;
    let state = mock.state();
    let sb = state.add_sandbox("worker", "claudecode");
    let done = state.create_task(&sb.id, "a");
    let failed = state.create_task(&sb.id, "b");
    let plain = state.create_task(&sb.id, "c");
    let c = client();
    let _ = poll(&c, &mock.url(), &sb.proxy_token, Some(&sb.id)).await;

    let resp = put_status(
        &c,
        &mock.url(),
        &sb.proxy_token,
        &done,
        r#"{"status":"running"}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "");
    assert_eq!(state.task(&done).unwrap().status, "running");
    let resp = put_status(
        &c,
        &mock.url(),
        &sb.proxy_token,
        &done,
        r#"{"status":"completed","result":"42","total_cost_usd":0.5,"num_turns":2}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let t = state.task(&done).unwrap();
    assert_eq!(t.status, "completed");
    assert_eq!(t.result, Some(json!("42")));
    assert_eq!(t.total_cost_usd, Some(0.5));
    assert_eq!(t.num_turns, Some(2));
    assert!(t.completed_at.is_some());
    assert_eq!(t.status_updates.len(), 2);
    assert_eq!(t.final_updates().len(), 1);
    assert_eq!(t.status_updates[1].body["num_turns"], 2);

    let resp = put_status(
        &c,
        &mock.url(),
        &sb.tunnel_token,
        &failed,
        r#"{"status":"failed","failure_reason":"boom"}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let t = state.task(&failed).unwrap();
    assert_eq!(t.status, "failed");
    assert_eq!(t.failure_reason.as_deref(), Some("boom"));

    let resp = put_status(
        &c,
        &mock.url(),
        &sb.proxy_token,
        &plain,
        r#"{"status":"completed"}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let t = state.task(&plain).unwrap();
    assert_eq!((t.status.as_str(), t.result.clone()), ("completed", None));
    let t = state
        .wait_task_final(&plain, std::time::Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(t.final_updates().len(), 1);
}

#[tokio::test]
async fn status_errors() {
    let mock = start().await;
    let state = mock.state();
    let sb = state.add_sandbox("worker", "claudecode");
    let other = state.add_sandbox("other", "claudecode");
    let id = state.create_task(&sb.id, "a");
    let c = client();
    let resp = c
        .put(format!("{}/api/agent/tasks/{id}/status", mock.url()))
        .body(r#"{"status":"completed"}"#)
        .send()
        .await
        .unwrap();
    assert_text_error(resp, 401, "missing authorization").await;
    assert_text_error(
        put_status(&c, &mock.url(), "bad", &id, "{}").await,
        401,
        "unauthorized",
    )
    .await;
    assert_text_error(
        put_status(
            &c,
            &mock.url(),
            &sb.proxy_token,
            "task_nope",
            r#"{"status":"completed"}"#,
        )
        .await,
        404,
        "task not found",
    )
    .await;
    assert_text_error(
        put_status(
            &c,
            &mock.url(),
            &other.proxy_token,
            &id,
            r#"{"status":"completed"}"#,
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    assert_text_error(
        put_status(&c, &mock.url(), &sb.proxy_token, &id, "nope").await,
        400,
        "bad request",
    )
    .await;
    for bad in [r#"{"status":"done"}"#, r#"{"status":"assigned"}"#, "{}"] {
        assert_text_error(
            put_status(&c, &mock.url(), &sb.proxy_token, &id, bad).await,
            400,
            "invalid status",
        )
        .await;
    }
    assert!(state.task(&id).unwrap().status_updates.is_empty());
}

#[tokio::test]
async fn task_details() {
    let mock = start().await;
    let state = mock.state();
    let sb = state.add_sandbox("worker", "claudecode");
    let far = state.add_sandbox_in("ws-2", "far", "claudecode");
    let id = state.create_task_with(NewTask {
        target_id: sb.id.clone(),
        prompt: "p".into(),
        requester_id: Some(sb.id.clone()),
        ..NewTask::default()
    });
    let c = client();
    let get = |token: String, path: String| {
        let c = c.clone();
        async move { c.get(path).bearer_auth(token).send().await.unwrap() }
    };
    let base = format!("{}/api/agent/tasks/{id}", mock.url());
    let d: Value = get(sb.proxy_token.clone(), base.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["task_id"], id.as_str());
    assert_eq!(d["workspace_id"], sb.workspace_id.as_str());
    assert_eq!(d["target_id"], sb.id.as_str());
    assert_eq!(d["requester_id"], sb.id.as_str());
    assert_eq!(d["prompt"], "p");
    assert_eq!(d["status"], "pending");
    assert!(d["session_id"].as_str().unwrap().starts_with("cse_"));
    assert!(d["created_at"].is_string());
    assert!(
        d.get("result").is_none() && d.get("completed_at").is_none() && d.get("output").is_none()
    );

    // Output comes from the stored bridge events of the task's session.
    let session = d["session_id"].as_str().unwrap();
    state.bridge_publish(
        session,
        json!({"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": "hello out"}]}}),
    );
    state.bridge_publish(
        session,
        json!({"type": "user", "message": {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "tool said hi"}]}}),
    );
    let _ = poll(&c, &mock.url(), &sb.proxy_token, None).await;
    put_status(
        &c,
        &mock.url(),
        &sb.proxy_token,
        &id,
        r#"{"status":"completed","result":{"k":1},"num_turns":1,"total_cost_usd":0.1}"#,
    )
    .await;
    let resp = get(
        sb.tunnel_token.clone(),
        format!("{base}?include_output=true"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let d: Value = resp.json().await.unwrap();
    assert_eq!(d["status"], "completed");
    assert_eq!(d["result"], json!({"k": 1}));
    assert_eq!(d["num_turns"], 1);
    assert!(d["completed_at"].is_string());
    let output = d["output"].as_str().unwrap();
    assert!(
        output.contains("hello out") && output.contains("tool said hi"),
        "{output}"
    );

    assert_text_error(
        get(
            sb.proxy_token.clone(),
            format!("{}/api/agent/tasks/task_x", mock.url()),
        )
        .await,
        404,
        "task not found",
    )
    .await;
    assert_text_error(
        get(far.proxy_token.clone(), base.clone()).await,
        404,
        "task not found",
    )
    .await;
    assert_text_error(get("bad".into(), base.clone()).await, 401, "unauthorized").await;
}
