//! The CCR v2 bridge client (spec §9.1–9.3): create a session, fetch worker credentials (epoch),
//! report worker state, heartbeat, post event batches, and read the inbound SSE stream.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use agentserver_plugin_api::TaskEvent;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::secret::Secret;
use agentserver_common::backoff::{Backoff, BackoffPolicy, jittered};
use agentserver_common::sse::SseParser;

/// Most events in one `POST …/worker/events` (the server's limit).
pub const MAX_BATCH: usize = 100;

/// Largest SSE line, and largest data of one SSE event, accepted from the bridge (the
/// upstream SDK stops lines at 1 MiB; we allow more).
pub const MAX_SSE_LINE: usize = 16 * 1024 * 1024;
/// How much of an error answer's body is read (it only goes into an error message).
const ERROR_BODY_CAP: usize = 64 * 1024;

/// Timers of the bridge client. The defaults are the spec's; tests shorten them.
#[derive(Clone, Debug)]
pub struct BridgeTimings {
    /// Timeout of session creation and credential requests (10 s).
    pub setup_timeout: Duration,
    /// Timeout of worker requests (30 s).
    pub worker_timeout: Duration,
    /// Heartbeat interval, ±10 % jitter (20 s).
    pub heartbeat: Duration,
    /// SSE liveness: no byte for this long → reconnect (45 s).
    pub sse_liveness: Duration,
    /// First SSE reconnect delay (1 s), doubling…
    pub sse_backoff_initial: Duration,
    /// …up to this (30 s).
    pub sse_backoff_max: Duration,
    /// A connection that lived longer than this resets the backoff (30 s).
    pub sse_backoff_reset: Duration,
    /// First retry delay of a request that failed transiently (5xx, 429, transport) (250 ms)…
    pub retry_initial: Duration,
    /// …doubling up to this (5 s).
    pub retry_max: Duration,
    /// Transient failures of one request are retried for this long, then given up (120 s).
    pub retry_deadline: Duration,
}

impl Default for BridgeTimings {
    fn default() -> Self {
        Self {
            setup_timeout: Duration::from_secs(10),
            worker_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(20),
            sse_liveness: Duration::from_secs(45),
            sse_backoff_initial: Duration::from_secs(1),
            sse_backoff_max: Duration::from_secs(30),
            sse_backoff_reset: Duration::from_secs(30),
            retry_initial: Duration::from_millis(250),
            retry_max: Duration::from_secs(5),
            retry_deadline: Duration::from_secs(120),
        }
    }
}

/// Errors of bridge requests.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// 404: the server has no bridge, or no such session.
    #[error("not found (404): {0}")]
    NotFound(String),
    /// 409: another worker holds a newer epoch.
    #[error("epoch mismatch (409)")]
    EpochMismatch,
    /// Any other non-success status.
    #[error("server answered {status}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The (plain-text) body, trimmed.
        body: String,
    },
    /// No HTTP answer (connect error, timeout, reset).
    #[error("request failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// The answer was not what the protocol says.
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl BridgeError {
    /// Whether retrying the same request later may succeed (transport errors, 408, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Status { status, .. } => matches!(*status, 408 | 429 | 500..=599),
            _ => false,
        }
    }
}

/// Worker credentials from `POST …/bridge` (spec §9.2).
#[derive(Clone, Debug, Deserialize)]
pub struct Credentials {
    /// Bearer token for the worker endpoints.
    pub worker_jwt: Secret,
    /// `<scheme>://<host>/v1/agent/sessions/<id>`.
    pub api_base_url: String,
    /// Seconds the JWT is valid.
    #[serde(default)]
    pub expires_in: u64,
    /// The epoch these credentials hold.
    pub worker_epoch: i64,
}

impl Credentials {
    /// The session URL: `api_base_url` without trailing `/`.
    pub fn session_url(&self) -> &str {
        self.api_base_url.trim_end_matches('/')
    }
}

/// `worker_status` values (spec §9.3 step 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    /// Attached, not working.
    Idle,
    /// Running a task.
    Running,
    /// Waiting for the user.
    RequiresAction,
}

impl WorkerState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Running => "running",
            Self::RequiresAction => "requires_action",
        }
    }
}

/// An inbound event from the SSE stream, routed on `payload.type` (spec §9.3 step 3).
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// `control_request` with `request.subtype == "interrupt"`.
    Interrupt,
    /// `control_response` (permission answers).
    ControlResponse(Value),
    /// Anything else (user messages, our own echoed events).
    Message(Value),
}

/// Receives inbound events.
pub type InboundHandler = Arc<dyn Fn(Inbound) + Send + Sync>;

/// Client for the session-level bridge endpoints (proxy-token auth).
#[derive(Clone, Debug)]
pub struct BridgeClient {
    http: reqwest::Client,
    server: String,
    proxy_token: Secret,
    timings: BridgeTimings,
}

async fn status_error(resp: reqwest::Response) -> BridgeError {
    let status = resp.status().as_u16();
    let body = crate::http::read_body(resp, ERROR_BODY_CAP)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    match status {
        404 => BridgeError::NotFound(body),
        409 => BridgeError::EpochMismatch,
        _ => BridgeError::Status { status, body },
    }
}

/// Sends `request`; a non-2xx answer becomes its [`status_error`].
async fn send_ok(request: reqwest::RequestBuilder) -> Result<reqwest::Response, BridgeError> {
    let resp = crate::http::send(request)
        .await
        .map_err(BridgeError::Transport)?;
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(status_error(resp).await)
    }
}

impl BridgeClient {
    /// A client for `server` (trailing `/` removed).
    pub fn new(
        http: reqwest::Client,
        server: &str,
        proxy_token: Secret,
        timings: BridgeTimings,
    ) -> Self {
        Self {
            http,
            server: server.trim_end_matches('/').to_owned(),
            proxy_token,
            timings,
        }
    }

    /// The timers in use.
    pub fn timings(&self) -> &BridgeTimings {
        &self.timings
    }

    /// `POST /v1/agent/sessions` with `{"title": …, "bridge": {}}`; returns the session id.
    pub async fn create_session(&self, title: &str) -> Result<String, BridgeError> {
        let request = self
            .http
            .post(format!("{}/v1/agent/sessions", self.server))
            .bearer_auth(self.proxy_token.expose())
            .json(&serde_json::json!({"title": title, "bridge": {}}))
            .timeout(self.timings.setup_timeout);
        let body: Value = send_ok(request)
            .await?
            .json()
            .await
            .map_err(|e| BridgeError::Decode(e.to_string()))?;
        body.pointer("/session/id")
            .or_else(|| body.get("id"))
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| BridgeError::Decode("no session id in response".into()))
    }

    /// `POST /v1/agent/sessions/{id}/bridge`: registers this worker (the epoch goes up).
    pub async fn fetch_credentials(&self, session_id: &str) -> Result<Credentials, BridgeError> {
        let request = self
            .http
            .post(format!(
                "{}/v1/agent/sessions/{}/bridge",
                self.server,
                crate::http::path_segment(session_id)
            ))
            .bearer_auth(self.proxy_token.expose())
            .timeout(self.timings.setup_timeout);
        send_ok(request)
            .await?
            .json()
            .await
            .map_err(|e| BridgeError::Decode(e.to_string()))
    }
}

#[derive(Serialize)]
struct StateBody<'a> {
    worker_status: &'a str,
    worker_epoch: i64,
}

#[derive(Serialize)]
struct HeartbeatBody<'a> {
    session_id: &'a str,
    worker_epoch: i64,
}

#[derive(Serialize)]
struct EventEnvelope<'a> {
    payload: &'a RawValue,
}

#[derive(Serialize)]
struct BatchBody<'a> {
    worker_epoch: i64,
    events: Vec<EventEnvelope<'a>>,
}

/// The parts of an attached session that its background loops share.
#[derive(Debug)]
struct Shared {
    client: BridgeClient,
    session_id: String,
    creds: Mutex<Credentials>,
}

impl Shared {
    fn creds(&self) -> Credentials {
        self.creds.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An attached bridge session (spec §9.3): heartbeat and SSE reader run in the background
/// until [`BridgeSession::close`] or drop.
#[derive(Debug)]
pub struct BridgeSession {
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for BridgeSession {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl BridgeSession {
    /// Attaches: `PUT …/worker` `idle` (its failure fails the attach), then starts the
    /// heartbeat and the SSE reader, which hands inbound events to `on_inbound`.
    pub async fn attach(
        client: BridgeClient,
        session_id: &str,
        creds: Credentials,
        on_inbound: InboundHandler,
    ) -> Result<Self, BridgeError> {
        let shared = Arc::new(Shared {
            client,
            session_id: session_id.to_owned(),
            creds: Mutex::new(creds),
        });
        let session = Self {
            shared,
            stop: CancellationToken::new(),
        };
        session.report_state(WorkerState::Idle).await?;
        tokio::spawn(
            heartbeat_loop(session.shared.clone(), session.stop.clone()).in_current_span(),
        );
        tokio::spawn(
            sse_loop(session.shared.clone(), session.stop.clone(), on_inbound).in_current_span(),
        );
        Ok(session)
    }

    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.shared.session_id
    }

    /// The epoch currently held.
    pub fn epoch(&self) -> i64 {
        self.shared.creds().worker_epoch
    }

    /// `PUT …/worker` with a new state.
    pub async fn report_state(&self, state: WorkerState) -> Result<(), BridgeError> {
        let creds = self.shared.creds();
        let body = serde_json::to_vec(&StateBody {
            worker_status: state.as_str(),
            worker_epoch: creds.worker_epoch,
        })
        .map_err(|e| BridgeError::Decode(e.to_string()))?;
        self.worker_request(reqwest::Method::PUT, &creds, "/worker", body)
            .await
    }

    /// `POST …/worker/events` with up to [`MAX_BATCH`] events, payloads forwarded byte for byte.
    pub async fn write_batch(&self, events: &[TaskEvent]) -> Result<(), BridgeError> {
        if events.is_empty() {
            return Ok(());
        }
        if events.len() > MAX_BATCH {
            return Err(BridgeError::Decode(format!(
                "batch of {} events exceeds the limit of {MAX_BATCH}",
                events.len()
            )));
        }
        let creds = self.shared.creds();
        let body = serde_json::to_vec(&BatchBody {
            worker_epoch: creds.worker_epoch,
            events: events
                .iter()
                .map(|e| EventEnvelope {
                    payload: e.as_raw(),
                })
                .collect(),
        })
        .map_err(|e| BridgeError::Decode(e.to_string()))?;
        self.worker_request(reqwest::Method::POST, &creds, "/worker/events", body)
            .await
    }

    /// Fetches credentials again (after a 409): this worker takes the session back with a
    /// new epoch. Returns the new epoch.
    pub async fn refetch_credentials(&self) -> Result<i64, BridgeError> {
        let creds = self
            .shared
            .client
            .fetch_credentials(&self.shared.session_id)
            .await?;
        let epoch = creds.worker_epoch;
        *self.shared.creds.lock().unwrap_or_else(|e| e.into_inner()) = creds;
        Ok(epoch)
    }

    /// Stops the heartbeat and the SSE reader (no request is sent).
    pub fn close(&self) {
        self.stop.cancel();
    }

    async fn worker_request(
        &self,
        method: reqwest::Method,
        creds: &Credentials,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(), BridgeError> {
        worker_request(&self.shared.client, method, creds, path, body).await
    }
}

async fn worker_request(
    client: &BridgeClient,
    method: reqwest::Method,
    creds: &Credentials,
    path: &str,
    body: Vec<u8>,
) -> Result<(), BridgeError> {
    let request = client
        .http
        .request(method, format!("{}{}", creds.session_url(), path))
        .bearer_auth(creds.worker_jwt.expose())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .timeout(client.timings.worker_timeout);
    send_ok(request).await?;
    Ok(())
}

/// Every 20 s ±10 % (first after one interval): `POST …/worker/heartbeat`; errors are ignored.
async fn heartbeat_loop(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let delay = jittered(shared.client.timings.heartbeat, 0.1);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let creds = shared.creds();
        let Ok(body) = serde_json::to_vec(&HeartbeatBody {
            session_id: &shared.session_id,
            worker_epoch: creds.worker_epoch,
        }) else {
            return;
        };
        let sent = tokio::select! {
            _ = stop.cancelled() => return,
            r = worker_request(&shared.client, reqwest::Method::POST, &creds, "/worker/heartbeat", body) => r,
        };
        if let Err(err) = sent {
            tracing::debug!(session = %shared.session_id, %err, "bridge heartbeat failed");
        }
    }
}

/// Why one SSE connection ended.
#[derive(Debug, thiserror::Error)]
enum SseEnd {
    #[error("{0}")]
    Request(#[from] BridgeError),
    #[error("no data for {0:?}")]
    Silent(Duration),
    #[error("stream closed by the server")]
    Closed,
    #[error("stream error: {0}")]
    Body(reqwest::Error),
    #[error("{0}")]
    Parse(#[from] agentserver_common::sse::SseError),
}

/// The SSE reader: connect, replay after the high-water mark, route events; reconnect with
/// backoff (1 s doubling to 30 s, reset after a connection that lived > 30 s).
async fn sse_loop(shared: Arc<Shared>, stop: CancellationToken, on_inbound: InboundHandler) {
    let t = shared.client.timings.clone();
    let mut high_water: u64 = 0;
    let mut backoff = Backoff::new(BackoffPolicy {
        reset_after: t.sse_backoff_reset,
        ..BackoffPolicy::capped(t.sse_backoff_initial, t.sse_backoff_max)
    });
    loop {
        let started = Instant::now();
        let end = tokio::select! {
            _ = stop.cancelled() => return,
            end = sse_once(&shared, &mut high_water, &on_inbound) => end,
        };
        match &end {
            SseEnd::Request(e @ BridgeError::NotFound(_))
            | SseEnd::Request(
                e @ BridgeError::Status {
                    status: 401 | 403, ..
                },
            ) => {
                tracing::warn!(session = %shared.session_id, err = %e, "bridge event stream refused");
            }
            other => {
                tracing::debug!(session = %shared.session_id, end = %other, "bridge event stream ended");
            }
        }
        let delay = backoff.next_delay_after(started.elapsed());
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn sse_once(shared: &Shared, high_water: &mut u64, on_inbound: &InboundHandler) -> SseEnd {
    let creds = shared.creds();
    let t = &shared.client.timings;
    let mut req = shared
        .client
        .http
        .get(format!("{}/worker/events/stream", creds.session_url()))
        .bearer_auth(creds.worker_jwt.expose())
        .header(reqwest::header::ACCEPT, "text/event-stream");
    if *high_water > 0 {
        req = req
            .query(&[("from_sequence_num", high_water.to_string())])
            .header("Last-Event-ID", high_water.to_string());
    }
    let resp = match tokio::time::timeout(t.sse_liveness, crate::http::send(req)).await {
        Err(_) => return SseEnd::Silent(t.sse_liveness),
        Ok(Err(e)) => return SseEnd::Request(BridgeError::Transport(e)),
        Ok(Ok(r)) => r,
    };
    if resp.status().as_u16() != 200 {
        return SseEnd::Request(status_error(resp).await);
    }
    let mut body = resp.bytes_stream();
    let mut parser = SseParser::new(MAX_SSE_LINE);
    loop {
        let chunk = match tokio::time::timeout(t.sse_liveness, body.next()).await {
            Err(_) => return SseEnd::Silent(t.sse_liveness),
            Ok(None) => return SseEnd::Closed,
            Ok(Some(Err(e))) => return SseEnd::Body(e),
            Ok(Some(Ok(c))) => c,
        };
        let events = match parser.feed(&chunk) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(session = %shared.session_id, err = %e, "dropping the bridge event stream: it sent more than the host accepts; reconnecting");
                return SseEnd::Parse(e);
            }
        };
        for ev in events {
            if let Some(seq) = ev
                .id
                .as_deref()
                .and_then(|id| id.trim().parse::<u64>().ok())
            {
                if seq <= *high_water {
                    continue;
                }
                *high_water = seq;
            }
            if ev.data.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(&ev.data) {
                Ok(data) => on_inbound(route(data)),
                Err(err) => tracing::debug!(%err, "ignoring undecodable bridge event"),
            }
        }
    }
}

/// Routes a `StreamClientEvent` on its `payload.type`.
pub fn route(mut data: Value) -> Inbound {
    let payload = data
        .get_mut("payload")
        .map(Value::take)
        .unwrap_or(Value::Null);
    match payload.get("type").and_then(Value::as_str) {
        Some("control_request")
            if payload.pointer("/request/subtype").and_then(Value::as_str) == Some("interrupt") =>
        {
            Inbound::Interrupt
        }
        Some("control_response") => Inbound::ControlResponse(payload),
        _ => Inbound::Message(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_inbound_events() {
        let ev = json!({"sequence_num": 1, "payload": {"type": "control_request", "request": {"subtype": "interrupt"}}});
        assert_eq!(route(ev), Inbound::Interrupt);
        let ev =
            json!({"payload": {"type": "control_request", "request": {"subtype": "can_use_tool"}}});
        assert!(matches!(route(ev), Inbound::Message(_)));
        let ev = json!({"payload": {"type": "control_response"}});
        assert!(matches!(route(ev), Inbound::ControlResponse(_)));
        assert!(matches!(route(json!({})), Inbound::Message(Value::Null)));
    }

    #[test]
    fn batch_body_embeds_payloads_verbatim() {
        let ev = TaskEvent::from_json(r#"{"b":1,  "a":2}"#).unwrap();
        let body = serde_json::to_string(&BatchBody {
            worker_epoch: 3,
            events: vec![EventEnvelope {
                payload: ev.as_raw(),
            }],
        })
        .unwrap();
        assert_eq!(
            body,
            r#"{"worker_epoch":3,"events":[{"payload":{"b":1,  "a":2}}]}"#
        );
    }

    #[test]
    fn transient_errors() {
        assert!(
            BridgeError::Status {
                status: 503,
                body: String::new()
            }
            .is_transient()
        );
        assert!(
            !BridgeError::Status {
                status: 410,
                body: String::new()
            }
            .is_transient()
        );
        assert!(!BridgeError::EpochMismatch.is_transient());
        assert!(!BridgeError::NotFound(String::new()).is_transient());
    }
}
