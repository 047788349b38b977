//! Server plumbing over real sockets: recording, 404s, fault switches, the tunnel endpoint's
//! checks, restart and shutdown.

use crate::common;

use std::time::{Duration, Instant};

use agentserver_mock::MockConfig;
use common::*;
use futures_util::StreamExt;
use serde_json::json;

#[tokio::test]
async fn records_every_request_with_body() {
    let mock = start().await;
    let c = client();
    let resp = c
        .post(format!("{}/api/nothing/here?a=1&b=two", mock.url()))
        .header("x-test", "yes")
        .body("payload bytes")
        .send()
        .await
        .unwrap();
    assert_text_error(resp, 404, "404 page not found").await;
    let _ = c
        .get(format!("{}/oauth2/device/verify", mock.url()))
        .send()
        .await
        .unwrap();
    let reqs = mock.state().requests();
    assert_eq!(reqs.len(), 2);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/api/nothing/here");
    assert_eq!(r.query.as_deref(), Some("a=1&b=two"));
    assert_eq!(r.query_param("b").as_deref(), Some("two"));
    assert_eq!(r.header("X-Test"), Some("yes"));
    assert_eq!(&r.body[..], b"payload bytes");
    assert!(reqs[1].at >= r.at);
    mock.state().clear_requests();
    assert!(mock.state().requests().is_empty());
}

#[tokio::test]
async fn fail_with_fails_the_api_for_a_while() {
    let mock = start().await;
    let state = mock.state();
    let sb = state.add_sandbox("x", "claudecode");
    let c = client();
    let whoami = format!("{}/api/agent/whoami", mock.url());
    state.fail_with(503, Duration::from_millis(300));
    let resp = c
        .get(&whoami)
        .bearer_auth(&sb.proxy_token)
        .send()
        .await
        .unwrap();
    assert_text_error(resp, 503, "Service Unavailable").await;
    let resp = c
        .get(format!("{}/v1/agent/sessions/x/worker", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    // Not the API: unaffected.
    let resp = c
        .get(format!("{}/oauth2/device/verify", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Recovers once the window has passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let resp = c
            .get(&whoami)
            .bearer_auth(&sb.proxy_token)
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still failing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Failed requests were recorded too.
    assert!(state.requests_to("GET", "/api/agent/whoami").len() >= 2);
}

#[tokio::test]
async fn fail_next_fails_matching_requests_n_times() {
    let mock = start().await;
    let state = mock.state();
    let sb = state.add_sandbox("x", "claudecode");
    let id = state.create_task(&sb.id, "p");
    let c = client();
    state.fail_next("PUT", "/api/agent/tasks/", 500, 2);
    let put = || {
        c.put(format!("{}/api/agent/tasks/{id}/status", mock.url()))
            .bearer_auth(&sb.proxy_token)
            .body(r#"{"status":"completed"}"#)
            .send()
    };
    // Other methods and paths are not affected.
    let resp = c
        .get(format!("{}/api/agent/tasks/{id}", mock.url()))
        .bearer_auth(&sb.proxy_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_text_error(put().await.unwrap(), 500, "Internal Server Error").await;
    assert_text_error(put().await.unwrap(), 500, "Internal Server Error").await;
    assert_eq!(put().await.unwrap().status(), 200);
    let task = state.task(&id).unwrap();
    assert_eq!(task.final_updates().len(), 1);
    assert_eq!(
        state
            .requests_to("PUT", &format!("/api/agent/tasks/{id}/status"))
            .len(),
        3
    );
}

#[tokio::test]
async fn stall_delays_requests() {
    let mock = start().await;
    let c = client();
    mock.state().stall(Duration::from_millis(400));
    let started = Instant::now();
    let resp = c
        .post(format!("{}/api/oauth2/device/auth", mock.url()))
        .form(&[("client_id", CLIENT_ID), ("scope", SCOPES)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "{:?}",
        started.elapsed()
    );
    mock.state().clear_faults();
    let started = Instant::now();
    let resp = c
        .get(format!("{}/api/agent/whoami", mock.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(started.elapsed() < Duration::from_millis(350));
}

/// A raw WebSocket on the sandbox's tunnel endpoint of the mock at `url` (no yamux).
async fn connect_tunnel(
    url: &str,
    sb: &agentserver_mock::SandboxRecord,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let ws_url = format!(
        "{}/api/tunnel/{}?token={}",
        url.replacen("http://", "ws://", 1),
        sb.id,
        sb.tunnel_token
    );
    let (ws, _) = tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("upgrade");
    ws
}

#[tokio::test]
async fn tunnel_endpoint_checks_parameters_and_token() {
    let mock = start().await;
    let sb = mock.state().add_sandbox("x", "claudecode");
    let c = client();
    let base = format!("{}/api/tunnel/{}", mock.url(), sb.id);
    assert_text_error(
        c.get(&base).send().await.unwrap(),
        400,
        "missing parameters",
    )
    .await;
    assert_text_error(
        c.get(format!("{base}?token=")).send().await.unwrap(),
        400,
        "missing parameters",
    )
    .await;
    assert_text_error(
        c.get(format!("{base}?token={}", sb.proxy_token))
            .send()
            .await
            .unwrap(),
        401,
        "unauthorized",
    )
    .await;
    let unknown = format!(
        "{}/api/tunnel/{}?token={}",
        mock.url(),
        uuid::Uuid::new_v4(),
        sb.tunnel_token
    );
    assert_text_error(c.get(unknown).send().await.unwrap(), 401, "unauthorized").await;

    // The right token upgrades to a WebSocket.
    let ws_url = format!(
        "{}?token={}",
        base.replacen("http://", "ws://", 1),
        sb.tunnel_token
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(ws_url)
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), 101);
}

#[tokio::test]
async fn restart_keeps_state_and_drops_connections() {
    let mut mock = start().await;
    let state = mock.state();
    let sb = state.add_sandbox("x", "claudecode");
    let url = mock.url();
    let addr = mock.addr();

    // A WebSocket tunnel and an in-flight (stalled) request.
    let mut ws = connect_tunnel(&url, &sb).await;
    // The tunnel module marks the sandbox running while its tunnel is up.
    let sid = sb.id.clone();
    assert!(
        state
            .wait_until(Duration::from_secs(10), |s| s
                .sandbox(&sid)
                .is_some_and(|x| x.status == "running"))
            .await
    );
    state.stall(Duration::from_secs(60));
    let stalled_url = format!("{url}/api/agent/whoami");
    let token = sb.proxy_token.clone();
    let in_flight = tokio::spawn(async move {
        let started = Instant::now();
        let result = client().get(stalled_url).bearer_auth(token).send().await;
        (result.is_err(), started.elapsed())
    });
    assert!(
        state
            .wait_until(Duration::from_secs(10), |s| !s
                .requests_to("GET", "/api/agent/whoami")
                .is_empty())
            .await
    );

    mock.restart().await.expect("restart");
    state.clear_faults();
    assert_eq!(mock.addr(), addr);
    assert_eq!(mock.url(), url);

    let (errored, took) = tokio::time::timeout(Duration::from_secs(15), in_flight)
        .await
        .expect("in-flight request ended")
        .unwrap();
    assert!(errored, "the stalled request should have been cut");
    assert!(took < Duration::from_secs(30));
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(m)) if m.is_close() => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the WebSocket should have been dropped");
    assert!(
        state
            .wait_until(Duration::from_secs(10), |s| s
                .sandbox(&sid)
                .is_some_and(|x| x.status == "offline"))
            .await
    );

    // Same port, same state.
    let resp = client()
        .get(format!("{url}/api/agent/whoami"))
        .bearer_auth(&sb.proxy_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["sandbox_id"],
        json!(sb.id)
    );
    assert_eq!(mock.state().sandboxes().len(), 1);

    mock.shutdown().await;
    let refused = client().get(format!("{url}/api/agent/whoami")).send().await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn wait_until_sees_changes() {
    let mock = start().await;
    let state = mock.state();
    let sb = state.add_sandbox("x", "claudecode");
    let s2 = state.clone();
    let id = sb.id.clone();
    let waiter = tokio::spawn(async move {
        s2.wait_until(Duration::from_secs(10), |s| {
            !s.tasks().is_empty() && s.tasks()[0].target_id == id
        })
        .await
    });
    state.create_task(&sb.id, "go");
    assert!(waiter.await.unwrap());
    assert!(
        !state
            .wait_until(Duration::from_millis(100), |s| s.tasks().len() == 5)
            .await
    );
}

#[tokio::test]
async fn control_api_lists_and_creates() {
    let mock = start().await;
    let state = mock.state();
    let sb = state.add_sandbox("x", "claudecode");
    let c = client();
    state.fail_with(503, Duration::from_secs(30));
    let resp = c
        .post(format!("{}/_mock/tasks", mock.url()))
        .json(&json!({"target_id": sb.id, "prompt": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let task: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(task["status"], "pending");
    assert_eq!(state.tasks().len(), 1);
    let listed: serde_json::Value = c
        .get(format!("{}/_mock/tasks", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["task_id"], task["task_id"]);
    let sbs: serde_json::Value = c
        .get(format!("{}/_mock/sandboxes", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sbs[0]["sandbox_id"], json!(sb.id));
    let resp = c
        .post(format!("{}/_mock/tasks", mock.url()))
        .json(&json!({"target_id": "nope", "prompt": "hello"}))
        .send()
        .await
        .unwrap();
    assert_text_error(resp, 404, "target agent not found").await;
}

/// The server side of the 75 s stream-open rule (here 300 ms): a tunnel client that never
/// acknowledges a stream the server opened loses the whole session.
#[tokio::test]
async fn an_unacknowledged_stream_closes_the_tunnel_after_the_open_timeout() {
    let mock = start_with(MockConfig {
        stream_open_timeout: Duration::from_millis(300),
        ..MockConfig::default()
    })
    .await;
    let state = mock.state();
    let sb = state.add_sandbox("x", "claudecode");
    // A raw WebSocket peer that reads but never answers (no yamux ACK).
    let mut ws = connect_tunnel(&mock.url(), &sb).await;
    let sid = sb.id.clone();
    assert!(
        state
            .wait_until(Duration::from_secs(10), |s| s.tunnel.is_connected(&sid))
            .await
    );
    let opened = Instant::now();
    // The SYN goes out at once; nobody acknowledges it.
    let _stream = state
        .tunnel
        .open_raw_stream(&sb.id)
        .await
        .expect("the SYN is sent without waiting for the ACK");

    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(tokio_tungstenite::tungstenite::Message::Binary(b)) => {
                    received.extend_from_slice(&b)
                }
                Ok(tokio_tungstenite::tungstenite::Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the tunnel stayed open without the ACK");
    let elapsed = opened.elapsed();
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(5),
        "closed after {elapsed:?}"
    );
    // Among what the peer received: the yamux SYN of server stream 2 (12-byte headers:
    // version 0, type 1 = window update, flags 0x0001 = SYN, stream id 2).
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 12 <= received.len() {
        let header = &received[at..at + 12];
        let (kind, flags) = (header[1], u16::from_be_bytes([header[2], header[3]]));
        let stream = u32::from_be_bytes(header[4..8].try_into().unwrap());
        let length = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
        frames.push((kind, flags, stream));
        at += 12 + if kind == 0 { length } else { 0 };
    }
    assert!(
        frames.contains(&(1, 1, 2)),
        "no SYN for stream 2 among {frames:?}"
    );
    assert!(
        state
            .wait_until(Duration::from_secs(5), |s| !s.tunnel.is_connected(&sid))
            .await,
        "the mock still lists the tunnel as connected"
    );
}
