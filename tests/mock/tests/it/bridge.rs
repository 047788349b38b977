//! The mock's CCR v2 bridge (spec §9.1–9.3) over real sockets: creating a session, fetching
//! credentials (epochs), worker state, heartbeats, event batches, the SSE stream (replay, cap,
//! live events, keepalives), what the mock records, every error status it answers, and the
//! switch that leaves the bridge out.

use crate::common;

use std::pin::Pin;
use std::time::Duration;

use agentserver_mock::bridge::{BridgeOp, MAX_EVENTS_PER_BATCH, MAX_REPLAY};
use agentserver_mock::{MockConfig, MockServer, SandboxRecord};
use base64::Engine;
use bytes::Bytes;
use common::*;
use futures_util::{Stream, StreamExt};
use reqwest::{Client, Method, RequestBuilder, Response};
use serde_json::{Value, json};

/// A mock with one sandbox whose bridge session has fetched credentials once (epoch 1).
struct Fx {
    mock: MockServer,
    c: Client,
    sb: SandboxRecord,
    sid: String,
    jwt: String,
}

async fn fixture() -> Fx {
    let mock = start().await;
    let sb = mock.state().add_sandbox("worker", "claudecode");
    let c = client();
    let sid = create_session(&c, &mock.url(), &sb.proxy_token).await;
    let creds = credentials(&c, &mock.url(), &sid, &sb.proxy_token).await;
    assert_eq!(creds.status(), 200);
    let creds: Value = creds.json().await.unwrap();
    assert_eq!(creds["worker_epoch"], 1);
    let jwt = creds["worker_jwt"].as_str().unwrap().to_string();
    Fx {
        mock,
        c,
        sb,
        sid,
        jwt,
    }
}

impl Fx {
    /// A request to `{sessionURL}{suffix}` of session `sid` with Bearer `token`.
    fn at(&self, method: Method, sid: &str, suffix: &str, token: &str) -> RequestBuilder {
        let url = format!("{}/v1/agent/sessions/{sid}{suffix}", self.mock.url());
        self.c.request(method, url).bearer_auth(token)
    }

    /// A request to this session's `{sessionURL}{suffix}` with the fixture's worker JWT.
    fn worker(&self, method: Method, suffix: &str) -> RequestBuilder {
        self.at(method, &self.sid, suffix, &self.jwt)
    }

    async fn put_state(&self, token: &str, body: Value) -> Response {
        let req = self.at(Method::PUT, &self.sid, "/worker", token);
        req.json(&body).send().await.unwrap()
    }

    async fn post_events(&self, body: Value) -> Response {
        let req = self.worker(Method::POST, "/worker/events");
        req.json(&body).send().await.unwrap()
    }

    fn log(&self) -> Vec<BridgeOp> {
        let log = self.mock.state().bridge_log(&self.sid);
        log.into_iter().map(|e| e.op).collect()
    }
}

/// `POST /v1/agent/sessions` (asserts 201) and returns the session id.
async fn create_session(c: &Client, url: &str, token: &str) -> String {
    let resp = c
        .post(format!("{url}/v1/agent/sessions"))
        .bearer_auth(token)
        .json(&json!({"title": "Task t1", "bridge": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    body["session"]["id"].as_str().unwrap().to_string()
}

/// `POST /v1/agent/sessions/{sid}/bridge` with no body.
async fn credentials(c: &Client, url: &str, sid: &str, token: &str) -> Response {
    let u = format!("{url}/v1/agent/sessions/{sid}/bridge");
    c.post(u).bearer_auth(token).send().await.unwrap()
}

/// Asserts a response with status 200 and an empty body.
async fn assert_empty_ok(resp: Response) {
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "");
}

/// `n` events `{"payload": {"type":"assistant","uuid":"u<i>"}}`.
fn events(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"payload": {"type": "assistant", "uuid": format!("u{i}")}}))
        .collect()
}

/// A minimal SSE reader: yields blocks (the text up to a blank line).
struct Sse {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl Sse {
    fn new(resp: Response) -> Self {
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert_eq!(resp.headers()["cache-control"], "no-cache");
        Self {
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
        }
    }

    /// The next block, waiting at most 5 s.
    async fn block(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                return String::from_utf8(block[..end].to_vec()).unwrap();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.body.next())
                .await
                .expect("SSE block within 5 s")
                .expect("SSE stream still open")
                .unwrap();
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next block, which must be an event frame: returns its `id` and parsed `data`.
    async fn event(&mut self) -> (u64, Value) {
        let block = self.block().await;
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(lines.len(), 3, "frame {block:?}");
        assert_eq!(lines[0], "event: client_event");
        let id: u64 = lines[1].strip_prefix("id: ").unwrap().parse().unwrap();
        let data: Value = serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["sequence_num"], id);
        (id, data)
    }
}

#[tokio::test]
async fn create_session_returns_201_and_binds_the_tokens_sandbox() {
    let mock = start().await;
    let state = mock.state();
    let sb = state.add_sandbox("worker", "claudecode");
    let c = client();
    // The tunnel token is accepted as well as the proxy token.
    let resp = c
        .post(format!("{}/v1/agent/sessions", mock.url()))
        .bearer_auth(&sb.tunnel_token)
        .json(&json!({"title": "Task t9", "bridge": {}, "tags": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    let sid = body["session"]["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(sid.strip_prefix("cse_").unwrap()).is_ok());
    assert_eq!(body["session"]["title"], "Task t9");
    assert_eq!(body["session"]["status"], "active");
    let info = state.bridge_session(sid).unwrap();
    assert_eq!(info.sandbox_id, sb.id);
    assert_eq!(info.workspace_id, sb.workspace_id);
    assert_eq!(info.title, "Task t9");
    assert_eq!((info.status.as_str(), info.epoch), ("active", 0));
    assert_eq!(
        info.log.iter().map(|e| &e.op).collect::<Vec<_>>(),
        [&BridgeOp::Created]
    );
    assert_eq!(state.bridge_sessions(), [sid.to_string()]);
}

#[tokio::test]
async fn create_session_rejects_bad_auth_401_and_bad_json_400() {
    let mock = start().await;
    let sb = mock.state().add_sandbox("worker", "claudecode");
    let c = client();
    let url = format!("{}/v1/agent/sessions", mock.url());
    let resp = c.post(&url).json(&json!({})).send().await.unwrap();
    assert_text_error(resp, 401, "missing authorization").await;
    let resp = c.post(&url).bearer_auth("nope").send().await.unwrap();
    assert_text_error(resp, 401, "unauthorized").await;
    let resp = c.post(&url).bearer_auth(&sb.proxy_token).body("{not json");
    assert_text_error(resp.send().await.unwrap(), 400, "invalid request body").await;
    assert!(mock.state().bridge_sessions().is_empty());
}

#[tokio::test]
async fn credentials_issue_a_jwt_and_each_call_bumps_the_epoch() {
    let fx = fixture().await;
    let url = fx.mock.url();
    let resp = credentials(&fx.c, &url, &fx.sid, &fx.sb.proxy_token).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["worker_epoch"], 2);
    assert_eq!(body["expires_in"], 86_400);
    assert_eq!(
        body["api_base_url"],
        format!("{url}/v1/agent/sessions/{}", fx.sid)
    );
    // An HS256-shaped JWT whose claims name the session, sandbox, workspace and epoch.
    let jwt = body["worker_jwt"].as_str().unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["sid"], fx.sid);
    assert_eq!(claims["sbx"], fx.sb.id);
    assert_eq!(claims["wid"], fx.sb.workspace_id);
    assert_eq!(claims["epoch"], 2);
    let ttl = claims["exp"].as_i64().unwrap() - chrono::Utc::now().timestamp();
    assert!((86_300..=86_400).contains(&ttl), "exp in {ttl} s");
    assert_ne!(jwt, fx.jwt);
    // The scheme follows X-Forwarded-Proto.
    let resp =
        fx.c.post(format!("{url}/v1/agent/sessions/{}/bridge", fx.sid))
            .bearer_auth(&fx.sb.proxy_token)
            .header("x-forwarded-proto", "https")
            .send()
            .await
            .unwrap();
    let body: Value = resp.json().await.unwrap();
    let host = url.trim_start_matches("http://");
    let expected = format!("https://{host}/v1/agent/sessions/{}", fx.sid);
    assert_eq!(body["api_base_url"], expected);
    assert_eq!(body["worker_epoch"], 3);
    assert_eq!(fx.mock.state().bridge_session(&fx.sid).unwrap().epoch, 3);
    let epochs: Vec<_> = fx
        .log()
        .into_iter()
        .filter_map(|op| match op {
            BridgeOp::Credentials { epoch, by_test } => Some((epoch, by_test)),
            _ => None,
        })
        .collect();
    assert_eq!(epochs, [(1, false), (2, false), (3, false)]);
}

#[tokio::test]
async fn credentials_errors_401_404_403_and_410_when_archived() {
    let fx = fixture().await;
    let (url, c) = (fx.mock.url(), &fx.c);
    let state = fx.mock.state();
    let other = state.add_sandbox("other", "claudecode");
    let resp = c
        .post(format!("{url}/v1/agent/sessions/{}/bridge", fx.sid))
        .send()
        .await
        .unwrap();
    assert_text_error(resp, 401, "missing authorization").await;
    let resp = credentials(c, &url, &fx.sid, "bogus").await;
    assert_text_error(resp, 401, "unauthorized").await;
    // A worker JWT is not a sandbox token.
    let resp = credentials(c, &url, &fx.sid, &fx.jwt).await;
    assert_text_error(resp, 401, "unauthorized").await;
    let resp = credentials(c, &url, "cse_missing", &fx.sb.proxy_token).await;
    assert_text_error(resp, 404, "session not found").await;
    let resp = credentials(c, &url, &fx.sid, &other.proxy_token).await;
    assert_text_error(resp, 403, "forbidden").await;
    // None of the failures issued credentials.
    assert_eq!(state.bridge_session(&fx.sid).unwrap().epoch, 1);
    assert!(state.bridge_archive(&fx.sid));
    let resp = credentials(c, &url, &fx.sid, &fx.sb.proxy_token).await;
    assert_text_error(resp, 410, "session archived").await;
    assert_eq!(state.bridge_session(&fx.sid).unwrap().status, "archived");
    assert_eq!(fx.log().last(), Some(&BridgeOp::Archived));
}

#[tokio::test]
async fn archive_route_answers_200_404_403_and_then_credentials_410() {
    let fx = fixture().await;
    let state = fx.mock.state();
    let other = state.add_sandbox("other", "claudecode");
    let archive = |sid: &str, token: &str| {
        let u = format!("{}/v1/agent/sessions/{sid}/archive", fx.mock.url());
        fx.c.post(u).bearer_auth(token).send()
    };
    let resp = archive("cse_missing", &fx.sb.proxy_token).await.unwrap();
    assert_text_error(resp, 404, "session not found").await;
    let resp = archive(&fx.sid, &other.proxy_token).await.unwrap();
    assert_text_error(resp, 403, "forbidden").await;
    assert_eq!(state.bridge_session(&fx.sid).unwrap().status, "active");
    assert_empty_ok(archive(&fx.sid, &fx.sb.proxy_token).await.unwrap()).await;
    assert_eq!(state.bridge_session(&fx.sid).unwrap().status, "archived");
    let resp = credentials(&fx.c, &fx.mock.url(), &fx.sid, &fx.sb.proxy_token).await;
    assert_text_error(resp, 410, "session archived").await;
}

#[tokio::test]
async fn worker_routes_reject_missing_or_unknown_jwt_401_and_other_sessions_jwt_403() {
    let fx = fixture().await;
    let sid2 = create_session(&fx.c, &fx.mock.url(), &fx.sb.proxy_token).await;
    let routes = [
        (Method::GET, "/worker"),
        (Method::PUT, "/worker"),
        (Method::POST, "/worker/heartbeat"),
        (Method::POST, "/worker/events"),
        (Method::GET, "/worker/events/stream"),
    ];
    for (method, suffix) in routes {
        let url = format!("{}/v1/agent/sessions/{}{suffix}", fx.mock.url(), fx.sid);
        let resp = fx.c.request(method.clone(), url).send().await.unwrap();
        assert_text_error(resp, 401, "invalid token: missing").await;
        let signature_invalid = "invalid token: signature is invalid";
        let resp = fx.at(method.clone(), &fx.sid, suffix, "a.b.c").send();
        assert_text_error(resp.await.unwrap(), 401, signature_invalid).await;
        // The sandbox's proxy token is no worker JWT.
        let resp = fx
            .at(method.clone(), &fx.sid, suffix, &fx.sb.proxy_token)
            .send();
        assert_text_error(resp.await.unwrap(), 401, signature_invalid).await;
        // A JWT of one session is forbidden on another (and on an unknown one: the session
        // check comes first, so the worker routes never answer 404).
        for sid in [sid2.as_str(), "cse_missing"] {
            let resp = fx.at(method.clone(), sid, suffix, &fx.jwt).send();
            assert_text_error(resp.await.unwrap(), 403, "forbidden").await;
        }
    }
    // Nothing reached a session.
    assert_eq!(fx.log().len(), 2, "{:?}", fx.log());
    let log2 = fx.mock.state().bridge_log(&sid2);
    assert_eq!(
        log2.into_iter().map(|e| e.op).collect::<Vec<_>>(),
        [BridgeOp::Created]
    );
}

#[tokio::test]
async fn put_worker_state_records_each_status_and_get_worker_reports_it() {
    let fx = fixture().await;
    let state = fx.mock.state();
    for status in ["idle", "running", "requires_action"] {
        let resp = fx
            .put_state(&fx.jwt, json!({"worker_status": status, "worker_epoch": 1}))
            .await;
        assert_empty_ok(resp).await;
        let info = state.bridge_session(&fx.sid).unwrap();
        assert_eq!(info.worker_status.as_deref(), Some(status));
    }
    // Metadata only: accepted, status unchanged.
    let resp = fx
        .put_state(
            &fx.jwt,
            json!({"external_metadata": {"k": "v"}, "worker_epoch": 1}),
        )
        .await;
    assert_empty_ok(resp).await;
    let resp = fx.worker(Method::GET, "/worker").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"session_id": fx.sid, "worker_status": "requires_action", "worker_epoch": 1})
    );
    let ops: Vec<_> = fx
        .log()
        .into_iter()
        .filter_map(|op| match op {
            BridgeOp::WorkerState {
                status,
                epoch: 1,
                http_status: 200,
            } => Some(status),
            _ => None,
        })
        .collect();
    assert_eq!(ops, ["idle", "running", "requires_action", ""]);
}

#[tokio::test]
async fn put_worker_rejects_unknown_status_400_and_bad_json_400() {
    let fx = fixture().await;
    let resp = fx
        .put_state(&fx.jwt, json!({"worker_status": "busy", "worker_epoch": 1}))
        .await;
    assert_text_error(resp, 400, "invalid worker_status").await;
    let resp = fx.worker(Method::PUT, "/worker").body("{oops").send();
    assert_text_error(resp.await.unwrap(), 400, "invalid request body").await;
    assert_eq!(
        fx.mock
            .state()
            .bridge_session(&fx.sid)
            .unwrap()
            .worker_status,
        None
    );
    assert!(
        !fx.log()
            .iter()
            .any(|op| matches!(op, BridgeOp::WorkerState { .. }))
    );
}

#[tokio::test]
async fn stale_epoch_gets_409_and_zero_epoch_falls_back_to_the_jwts() {
    let fx = fixture().await;
    let state = fx.mock.state();
    // Body epoch 0 / missing → the JWT's epoch (1), which is current.
    assert_empty_ok(
        fx.put_state(&fx.jwt, json!({"worker_status": "idle"}))
            .await,
    )
    .await;
    let hb = |token: &str, body: Value| {
        let req = fx.at(Method::POST, &fx.sid, "/worker/heartbeat", token);
        req.json(&body).send()
    };
    let resp = hb(&fx.jwt, json!({"session_id": fx.sid, "worker_epoch": 0})).await;
    assert_empty_ok(resp.unwrap()).await;
    assert_eq!(state.bridge_session(&fx.sid).unwrap().heartbeats, 1);
    // "Another worker" takes over: epoch 2, the old worker's writes conflict.
    assert_eq!(state.bridge_bump_epoch(&fx.sid), Some(2));
    for body in [
        json!({"worker_status": "running", "worker_epoch": 1}),
        json!({"worker_status": "running"}),
    ] {
        assert_text_error(fx.put_state(&fx.jwt, body).await, 409, "epoch mismatch").await;
    }
    let resp = hb(&fx.jwt, json!({"session_id": fx.sid})).await.unwrap();
    assert_text_error(resp, 409, "epoch mismatch").await;
    let resp = fx
        .post_events(json!({"worker_epoch": 1, "events": events(1)}))
        .await;
    assert_text_error(resp, 409, "epoch mismatch").await;
    // Events need the exact epoch: no JWT fallback, so a missing epoch conflicts too.
    let resp = fx.post_events(json!({"events": events(1)})).await;
    assert_text_error(resp, 409, "epoch mismatch").await;
    // A body claiming the current epoch is accepted even with the old JWT.
    let resp = fx
        .put_state(
            &fx.jwt,
            json!({"worker_status": "running", "worker_epoch": 2}),
        )
        .await;
    assert_empty_ok(resp).await;
    let info = state.bridge_session(&fx.sid).unwrap();
    assert_eq!(info.heartbeats, 1);
    assert!(info.events.is_empty());
    let log = fx.log();
    assert!(log.contains(&BridgeOp::Credentials {
        epoch: 2,
        by_test: true
    }));
    for op in [
        BridgeOp::WorkerState {
            status: "running".into(),
            epoch: 1,
            http_status: 409,
        },
        BridgeOp::Heartbeat {
            epoch: 1,
            http_status: 409,
        },
        BridgeOp::Events {
            epoch: 1,
            received: 1,
            stored: 0,
            http_status: 409,
        },
        BridgeOp::Events {
            epoch: 0,
            received: 1,
            stored: 0,
            http_status: 409,
        },
        BridgeOp::WorkerState {
            status: "running".into(),
            epoch: 2,
            http_status: 200,
        },
    ] {
        assert!(log.contains(&op), "{op:?} not in {log:?}");
    }
}

#[tokio::test]
async fn post_events_stores_worker_events_with_sequence_and_dedups_by_uuid() {
    let fx = fixture().await;
    let state = fx.mock.state();
    let batch = json!({"worker_epoch": 1, "events": [
        {"payload": {"type": "assistant", "uuid": "u-1"}, "ephemeral": true},
        {"payload": {"type": "result", "session_id": fx.sid}},
    ]});
    assert_empty_ok(fx.post_events(batch).await).await;
    // The same uuid again is accepted but not stored twice.
    let again =
        json!({"worker_epoch": 1, "events": [{"payload": {"type": "assistant", "uuid": "u-1"}}]});
    assert_empty_ok(fx.post_events(again).await).await;
    let info = state.bridge_session(&fx.sid).unwrap();
    assert_eq!(info.events.len(), 2);
    let (a, b) = (&info.events[0], &info.events[1]);
    assert_eq!((a.sequence_num, b.sequence_num), (1, 2));
    assert_eq!(a.event_id, "u-1");
    assert!(uuid::Uuid::parse_str(&b.event_id).is_ok(), "{}", b.event_id);
    assert_eq!((a.ephemeral, b.ephemeral), (true, false));
    for e in [a, b] {
        assert_eq!(
            (e.event_type.as_str(), e.source.as_str()),
            ("client_event", "worker")
        );
    }
    assert_eq!(
        state.bridge_worker_events(&fx.sid),
        [
            json!({"type": "assistant", "uuid": "u-1"}),
            json!({"type": "result", "session_id": fx.sid})
        ]
    );
    let log = fx.log();
    assert!(log.contains(&BridgeOp::Events {
        epoch: 1,
        received: 2,
        stored: 2,
        http_status: 200
    }));
    assert!(log.contains(&BridgeOp::Events {
        epoch: 1,
        received: 1,
        stored: 0,
        http_status: 200
    }));
}

#[tokio::test]
async fn post_events_accepts_100_but_rejects_101_with_400() {
    let fx = fixture().await;
    let state = fx.mock.state();
    let too_many = json!({"worker_epoch": 1, "events": events(MAX_EVENTS_PER_BATCH + 1)});
    let resp = fx.post_events(too_many).await;
    assert_text_error(resp, 400, "too many events (max 100)").await;
    assert!(state.bridge_session(&fx.sid).unwrap().events.is_empty());
    let resp = fx.worker(Method::POST, "/worker/events").body("[1,").send();
    assert_text_error(resp.await.unwrap(), 400, "invalid request body").await;
    let full = json!({"worker_epoch": 1, "events": events(MAX_EVENTS_PER_BATCH)});
    assert_empty_ok(fx.post_events(full).await).await;
    assert_eq!(state.bridge_session(&fx.sid).unwrap().events.len(), 100);
    let log = fx.log();
    assert!(log.contains(&BridgeOp::Events {
        epoch: 1,
        received: 101,
        stored: 0,
        http_status: 400
    }));
    assert!(log.contains(&BridgeOp::Events {
        epoch: 1,
        received: 100,
        stored: 100,
        http_status: 200
    }));
}

#[tokio::test]
async fn post_events_takes_a_3_mib_body_but_rejects_over_10_mib_with_413() {
    let fx = fixture().await;
    let state = fx.mock.state();
    // Bodies up to 10 MiB are allowed (spec §9.3 step 5), well past axum's 2 MiB default.
    let pad = "x".repeat(3 * 1024 * 1024);
    let big = json!({"worker_epoch": 1, "events": [{"payload": {"type": "user", "pad": pad}}]});
    assert_empty_ok(fx.post_events(big).await).await;
    let stored = state.bridge_worker_events(&fx.sid);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["pad"].as_str().unwrap().len(), 3 * 1024 * 1024);
    let huge = vec![b' '; 10 * 1024 * 1024 + 1];
    let resp = fx.worker(Method::POST, "/worker/events").body(huge).send();
    assert_text_error(resp.await.unwrap(), 413, "request body too large").await;
    assert_eq!(state.bridge_session(&fx.sid).unwrap().events.len(), 1);
}

#[tokio::test]
async fn sse_replays_stored_events_then_streams_live_ones_and_logs_open_and_close() {
    let fx = fixture().await;
    let state = fx.mock.state();
    let batch = json!({"worker_epoch": 1, "events": events(2)});
    assert_empty_ok(fx.post_events(batch).await).await;
    let resp = fx
        .worker(Method::GET, "/worker/events/stream")
        .send()
        .await
        .unwrap();
    let mut sse = Sse::new(resp);
    let (id, data) = sse.event().await;
    assert_eq!(id, 1);
    assert_eq!(data["event_id"], "u0");
    assert_eq!(data["event_type"], "client_event");
    assert_eq!(data["source"], "worker");
    assert_eq!(data["payload"], json!({"type": "assistant", "uuid": "u0"}));
    assert!(chrono::DateTime::parse_from_rfc3339(data["created_at"].as_str().unwrap()).is_ok());
    assert_eq!(sse.event().await.0, 2);
    // Live: an inbound event published by the "web client" (a test), then a worker event.
    assert_eq!(state.bridge_interrupt(&fx.sid), Some(3));
    let (id, data) = sse.event().await;
    assert_eq!((id, data["source"].as_str()), (3, Some("client")));
    assert_eq!(data["payload"]["request"]["subtype"], "interrupt");
    let live = json!({"worker_epoch": 1, "events": [{"payload": {"type": "result"}}]});
    assert_empty_ok(fx.post_events(live).await).await;
    assert_eq!(sse.event().await.1["payload"]["type"], "result");
    assert_eq!(state.bridge_session(&fx.sid).unwrap().open_streams, 1);
    drop(sse);
    let closed = state
        .wait_until(Duration::from_secs(5), |s| {
            s.bridge_session(&fx.sid).unwrap().open_streams == 0
        })
        .await;
    assert!(closed, "stream not closed after the client left");
    let log = fx.log();
    assert!(log.contains(&BridgeOp::StreamOpened {
        from_sequence_num: 0
    }));
    assert!(log.contains(&BridgeOp::Published { sequence_num: 3 }));
    assert_eq!(log.last(), Some(&BridgeOp::StreamClosed));
}

#[tokio::test]
async fn sse_resumes_after_from_sequence_num_or_last_event_id() {
    let fx = fixture().await;
    let batch = json!({"worker_epoch": 1, "events": events(5)});
    assert_empty_ok(fx.post_events(batch).await).await;
    let stream = || fx.worker(Method::GET, "/worker/events/stream");
    let mut by_query = Sse::new(
        stream()
            .query(&[("from_sequence_num", "3")])
            .send()
            .await
            .unwrap(),
    );
    assert_eq!(by_query.event().await.0, 4);
    assert_eq!(by_query.event().await.0, 5);
    let mut by_header = Sse::new(stream().header("last-event-id", "4").send().await.unwrap());
    assert_eq!(by_header.event().await.0, 5);
    // Both set: the query wins.
    let both = stream()
        .query(&[("from_sequence_num", "1")])
        .header("last-event-id", "4");
    assert_eq!(Sse::new(both.send().await.unwrap()).event().await.0, 2);
    let froms: Vec<_> = fx
        .log()
        .into_iter()
        .filter_map(|op| match op {
            BridgeOp::StreamOpened { from_sequence_num } => Some(from_sequence_num),
            _ => None,
        })
        .collect();
    assert_eq!(froms, [3, 4, 1]);
}

#[tokio::test]
async fn sse_replay_is_capped_at_1000_then_only_live_events_follow() {
    let fx = fixture().await;
    let state = fx.mock.state();
    state.set_bridge_keepalive(Duration::from_millis(200));
    for i in 0..MAX_REPLAY + 5 {
        state
            .bridge_publish(&fx.sid, json!({"type": "user", "n": i}))
            .unwrap();
    }
    let mut sse = Sse::new(
        fx.worker(Method::GET, "/worker/events/stream")
            .send()
            .await
            .unwrap(),
    );
    for want in 1..=MAX_REPLAY as u64 {
        assert_eq!(sse.event().await.0, want);
    }
    // Nothing past the cap: the next thing on the wire is a keepalive...
    assert_eq!(sse.block().await, ":keepalive");
    // ...and a live event comes alone, without the backlog beyond the cap.
    let live = state.bridge_publish(&fx.sid, json!({"type": "user", "n": "live"}));
    assert_eq!(live, Some(1006));
    assert_eq!(sse.event().await.0, 1006);
    // Resuming after the cap replays the rest.
    let resumed = fx
        .worker(Method::GET, "/worker/events/stream")
        .header("last-event-id", "1000");
    let mut sse = Sse::new(resumed.send().await.unwrap());
    for want in 1001..=1006 {
        assert_eq!(sse.event().await.0, want);
    }
}

#[tokio::test]
async fn sse_sends_keepalive_comments_while_idle() {
    let fx = fixture().await;
    fx.mock
        .state()
        .set_bridge_keepalive(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let mut sse = Sse::new(
        fx.worker(Method::GET, "/worker/events/stream")
            .send()
            .await
            .unwrap(),
    );
    for _ in 0..3 {
        assert_eq!(sse.block().await, ":keepalive");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn bridge_disabled_answers_404_everywhere_until_enabled_and_restarted() {
    let mut mock = start_with(MockConfig {
        bridge_enabled: false,
        ..MockConfig::default()
    })
    .await;
    let state = mock.state();
    let sb = state.add_sandbox("worker", "claudecode");
    let c = client();
    let url = mock.url();
    let resp = c
        .post(format!("{url}/v1/agent/sessions"))
        .bearer_auth(&sb.proxy_token)
        .json(&json!({"title": "Task t1", "bridge": {}}))
        .send()
        .await
        .unwrap();
    assert_text_error(resp, 404, "404 page not found").await;
    // A session made directly in the state is still not reachable over HTTP.
    let sid = agentserver_mock::bridge::create_session(&state, &sb.id, &sb.workspace_id, "t");
    let resp = credentials(&c, &url, &sid, &sb.proxy_token).await;
    assert_text_error(resp, 404, "404 page not found").await;
    let stream = format!("{url}/v1/agent/sessions/{sid}/worker/events/stream");
    let resp = c.get(&stream).bearer_auth("x").send().await.unwrap();
    assert_text_error(resp, 404, "404 page not found").await;
    // The switch is read when the router is built: flip it and restart.
    state.update_config(|cfg| cfg.bridge_enabled = true);
    mock.restart().await.unwrap();
    assert_eq!(create_session(&c, &url, &sb.proxy_token).await.len(), 40);
}
