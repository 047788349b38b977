//! The CCR v2 bridge (`/v1/agent/sessions/...`, spec §9.1–9.3), served only when
//! [`crate::MockConfig::bridge_enabled`] is set.
//!
//! Sessions, epochs, worker records, stored events (with sequence numbers and uuid dedup) and
//! SSE streams behave as the v0.62.8 server does. Everything that happens to a session is also
//! appended to its log ([`BridgeLogEntry`]) for assertions, and tests can act as the web client
//! ([`MockState::bridge_publish`], [`MockState::bridge_interrupt`]) or as another worker
//! ([`MockState::bridge_bump_epoch`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::server::{bearer_token, http_error, sandbox_auth};
use crate::state::{MockState, lock};

/// Lifetime of a worker JWT (`expires_in`).
pub const WORKER_JWT_TTL_SECS: i64 = 86_400;
/// Most events accepted in one `POST …/worker/events`.
pub const MAX_EVENTS_PER_BATCH: usize = 100;
/// Most stored events replayed when an SSE stream opens (any beyond are skipped; live ones follow).
pub const MAX_REPLAY: usize = 1000;
/// Size of the per-session uuid dedup set.
pub const DEDUP_CAPACITY: usize = 2000;
/// Default interval of `:keepalive` comments on SSE streams.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(15);

/// One stored event of a session (the server's `StreamClientEvent`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Event id (UUID; the payload's `uuid` when it had one).
    pub event_id: String,
    /// Sequence number, from 1, per session.
    pub sequence_num: u64,
    /// `client_event` for everything the mock stores.
    pub event_type: String,
    /// `worker` (posted by a worker) or `client` (published by a test as the web client).
    pub source: String,
    /// The payload, as posted.
    pub payload: Value,
    /// Whether the worker marked it ephemeral.
    pub ephemeral: bool,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

impl StoredEvent {
    fn to_json(&self) -> Value {
        json!({
            "event_id": self.event_id,
            "sequence_num": self.sequence_num,
            "event_type": self.event_type,
            "source": self.source,
            "payload": self.payload,
            "created_at": self.created_at.to_rfc3339(),
        })
    }
}

/// What happened to a session (one entry per request or test action).
#[derive(Debug, Clone, PartialEq)]
pub enum BridgeOp {
    /// `POST /v1/agent/sessions` created it (or the task code did).
    Created,
    /// `POST …/bridge` (or [`MockState::bridge_bump_epoch`], `by_test`) issued credentials.
    Credentials {
        /// The new epoch.
        epoch: i64,
        /// True when a test did it as "another worker".
        by_test: bool,
    },
    /// `PUT …/worker`.
    WorkerState {
        /// `worker_status` (empty for a metadata-only update).
        status: String,
        /// The epoch the request claimed.
        epoch: i64,
        /// The HTTP status answered.
        http_status: u16,
    },
    /// `POST …/worker/heartbeat`.
    Heartbeat {
        /// The epoch the request claimed.
        epoch: i64,
        /// The HTTP status answered.
        http_status: u16,
    },
    /// `POST …/worker/events`.
    Events {
        /// The epoch the request claimed.
        epoch: i64,
        /// Events in the request.
        received: usize,
        /// Events stored (the rest were duplicates).
        stored: usize,
        /// The HTTP status answered.
        http_status: u16,
    },
    /// An SSE stream opened.
    StreamOpened {
        /// The sequence number it resumed after.
        from_sequence_num: u64,
    },
    /// An SSE stream ended (client gone or server restarted).
    StreamClosed,
    /// A test published an inbound event.
    Published {
        /// Its sequence number.
        sequence_num: u64,
    },
    /// The session was archived.
    Archived,
}

/// One [`BridgeOp`] with its time.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeLogEntry {
    /// When it happened.
    pub at: Instant,
    /// What happened.
    pub op: BridgeOp,
}

/// A snapshot of one bridge session.
#[derive(Debug, Clone)]
pub struct BridgeSessionInfo {
    /// `cse_<uuid>`.
    pub id: String,
    /// Owning sandbox.
    pub sandbox_id: String,
    /// Owning workspace.
    pub workspace_id: String,
    /// Title given at creation.
    pub title: String,
    /// `active` or `archived`.
    pub status: String,
    /// Current epoch (0 until the first credentials).
    pub epoch: i64,
    /// Last reported `worker_status` (`idle`, `running`, `requires_action`), if any.
    pub worker_status: Option<String>,
    /// Accepted heartbeats.
    pub heartbeats: u64,
    /// Open SSE streams.
    pub open_streams: usize,
    /// Every stored event, in sequence order.
    pub events: Vec<StoredEvent>,
    /// Everything that happened, in order.
    pub log: Vec<BridgeLogEntry>,
}

#[derive(Debug)]
struct Session {
    id: String,
    sandbox_id: String,
    workspace_id: String,
    title: String,
    archived: bool,
    epoch: i64,
    worker_status: Option<String>,
    heartbeats: u64,
    open_streams: usize,
    events: Vec<StoredEvent>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    log: Vec<BridgeLogEntry>,
    latest: watch::Sender<u64>,
}

impl Session {
    fn new(id: String, sandbox_id: &str, workspace_id: &str, title: &str) -> Self {
        let mut s = Self {
            id,
            sandbox_id: sandbox_id.to_string(),
            workspace_id: workspace_id.to_string(),
            title: title.to_string(),
            archived: false,
            epoch: 0,
            worker_status: None,
            heartbeats: 0,
            open_streams: 0,
            events: Vec::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            log: Vec::new(),
            latest: watch::channel(0).0,
        };
        s.push_log(BridgeOp::Created);
        s
    }

    fn push_log(&mut self, op: BridgeOp) {
        self.log.push(BridgeLogEntry {
            at: Instant::now(),
            op,
        });
    }

    /// Stores one event unless its uuid was seen; returns whether it was stored.
    fn store(&mut self, payload: Value, source: &str, ephemeral: bool) -> Option<u64> {
        let uuid = payload
            .get("uuid")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(str::to_string);
        let event_id = match uuid {
            Some(u) => {
                if self.seen.contains(&u) {
                    return None;
                }
                self.seen.insert(u.clone());
                self.seen_order.push_back(u.clone());
                if self.seen_order.len() > DEDUP_CAPACITY
                    && let Some(old) = self.seen_order.pop_front()
                {
                    self.seen.remove(&old);
                }
                u
            }
            None => uuid::Uuid::new_v4().to_string(),
        };
        let seq = self.events.len() as u64 + 1;
        self.events.push(StoredEvent {
            event_id,
            sequence_num: seq,
            event_type: "client_event".into(),
            source: source.into(),
            payload,
            ephemeral,
            created_at: Utc::now(),
        });
        self.latest.send_replace(seq);
        Some(seq)
    }

    fn info(&self) -> BridgeSessionInfo {
        BridgeSessionInfo {
            id: self.id.clone(),
            sandbox_id: self.sandbox_id.clone(),
            workspace_id: self.workspace_id.clone(),
            title: self.title.clone(),
            status: if self.archived { "archived" } else { "active" }.into(),
            epoch: self.epoch,
            worker_status: self.worker_status.clone(),
            heartbeats: self.heartbeats,
            open_streams: self.open_streams,
            events: self.events.clone(),
            log: self.log.clone(),
        }
    }
}

/// Claims of an issued worker JWT.
#[derive(Debug, Clone)]
struct JwtClaims {
    sid: String,
    epoch: i64,
    exp: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    tokens: HashMap<String, JwtClaims>,
}

/// State of the bridge: sessions, workers, events.
#[derive(Debug)]
pub struct BridgeState {
    inner: std::sync::Mutex<Inner>,
    keepalive: std::sync::Mutex<Duration>,
}

impl Default for BridgeState {
    fn default() -> Self {
        Self {
            inner: std::sync::Mutex::new(Inner::default()),
            keepalive: std::sync::Mutex::new(DEFAULT_KEEPALIVE),
        }
    }
}

/// The bridge routes (`/v1/agent/sessions/...`), merged into the main router when enabled.
pub fn routes() -> Router<Arc<MockState>> {
    Router::new()
        .route("/v1/agent/sessions", post(create_route))
        .route("/v1/agent/sessions/{id}/bridge", post(bridge_route))
        .route("/v1/agent/sessions/{id}/archive", post(archive_route))
        .route(
            "/v1/agent/sessions/{id}/worker",
            get(worker_get).put(worker_put),
        )
        .route("/v1/agent/sessions/{id}/worker/heartbeat", post(heartbeat))
        .route("/v1/agent/sessions/{id}/worker/events", post(events_post))
        .route("/v1/agent/sessions/{id}/worker/events/stream", get(stream))
        // Batches may be up to 10 MiB (checked in `events_post`); axum's default is 2 MiB.
        // The recording middleware already caps bodies at `record::MAX_BODY`.
        .layer(DefaultBodyLimit::disable())
}

/// Creates a bridge session for a task of `sandbox_id` in `workspace_id` and returns its id
/// (`cse_<uuid>`). Called by the task code when the bridge is enabled.
pub fn create_session(
    state: &MockState,
    sandbox_id: &str,
    workspace_id: &str,
    title: &str,
) -> String {
    let id = format!("cse_{}", uuid::Uuid::new_v4());
    lock(&state.bridge.inner).sessions.insert(
        id.clone(),
        Session::new(id.clone(), sandbox_id, workspace_id, title),
    );
    state.notify();
    id
}

/// The output of a session as `GET /api/agent/tasks/{id}?include_output=true` reports it:
/// the concatenated `text` blocks and `tool_result` contents of its stored events.
pub fn session_output(state: &MockState, session_id: &str) -> String {
    let inner = lock(&state.bridge.inner);
    let Some(session) = inner.sessions.get(session_id) else {
        return String::new();
    };
    let mut parts = Vec::new();
    for ev in &session.events {
        let Some(blocks) = ev
            .payload
            .pointer("/message/content")
            .and_then(Value::as_array)
        else {
            continue;
        };
        for block in blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    if let Some(t) = block.get("text").and_then(Value::as_str) {
                        parts.push(t.to_string());
                    }
                }
                Some("tool_result") => match block.get("content") {
                    Some(Value::String(s)) => parts.push(s.clone()),
                    Some(Value::Array(items)) => {
                        for item in items {
                            if let Some(t) = item.get("text").and_then(Value::as_str) {
                                parts.push(t.to_string());
                            }
                        }
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    parts.join("\n")
}

impl MockState {
    /// Every worker JWT the bridge has issued (for tests that check no token is logged).
    pub fn bridge_worker_jwts(&self) -> Vec<String> {
        lock(&self.bridge.inner).tokens.keys().cloned().collect()
    }

    /// Ids of every bridge session, in no particular order.
    pub fn bridge_sessions(&self) -> Vec<String> {
        lock(&self.bridge.inner).sessions.keys().cloned().collect()
    }

    /// A snapshot of a bridge session.
    pub fn bridge_session(&self, session_id: &str) -> Option<BridgeSessionInfo> {
        lock(&self.bridge.inner)
            .sessions
            .get(session_id)
            .map(Session::info)
    }

    /// The payloads workers stored in a session, in sequence order (duplicates already dropped).
    pub fn bridge_worker_events(&self, session_id: &str) -> Vec<Value> {
        lock(&self.bridge.inner)
            .sessions
            .get(session_id)
            .map(|s| {
                s.events
                    .iter()
                    .filter(|e| e.source == "worker")
                    .map(|e| e.payload.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The log of a session.
    pub fn bridge_log(&self, session_id: &str) -> Vec<BridgeLogEntry> {
        lock(&self.bridge.inner)
            .sessions
            .get(session_id)
            .map(|s| s.log.clone())
            .unwrap_or_default()
    }

    /// Publishes an inbound event (as the web client would) to a session's SSE subscribers;
    /// returns its sequence number, or `None` if the session does not exist.
    pub fn bridge_publish(&self, session_id: &str, payload: Value) -> Option<u64> {
        let seq = {
            let mut inner = lock(&self.bridge.inner);
            let session = inner.sessions.get_mut(session_id)?;
            let seq = session.store(payload, "client", false)?;
            session.push_log(BridgeOp::Published { sequence_num: seq });
            seq
        };
        self.notify();
        Some(seq)
    }

    /// Publishes an interrupt control request (`{"type":"control_request","request":{"subtype":"interrupt"}}`).
    pub fn bridge_interrupt(&self, session_id: &str) -> Option<u64> {
        self.bridge_publish(
            session_id,
            json!({
                "type": "control_request",
                "request_id": format!("req_{}", uuid::Uuid::new_v4().simple()),
                "request": {"subtype": "interrupt"},
            }),
        )
    }

    /// Re-issues the session's credentials to "another worker": the epoch goes up by one, so
    /// the current worker's writes start failing with 409. Returns the new epoch.
    pub fn bridge_bump_epoch(&self, session_id: &str) -> Option<i64> {
        let epoch = {
            let mut inner = lock(&self.bridge.inner);
            let session = inner.sessions.get_mut(session_id)?;
            session.epoch += 1;
            session.worker_status = None;
            let epoch = session.epoch;
            session.push_log(BridgeOp::Credentials {
                epoch,
                by_test: true,
            });
            epoch
        };
        self.notify();
        Some(epoch)
    }

    /// Archives a session: `POST …/bridge` then answers 410.
    pub fn bridge_archive(&self, session_id: &str) -> bool {
        let found = {
            let mut inner = lock(&self.bridge.inner);
            match inner.sessions.get_mut(session_id) {
                Some(s) => {
                    s.archived = true;
                    s.push_log(BridgeOp::Archived);
                    true
                }
                None => false,
            }
        };
        self.notify();
        found
    }

    /// Sets the interval of `:keepalive` comments on SSE streams opened from now on
    /// (default 15 s).
    pub fn set_bridge_keepalive(&self, interval: Duration) {
        *lock(&self.bridge.keepalive) = interval;
    }
}

fn empty_ok() -> Response {
    StatusCode::OK.into_response()
}

fn parse_json(body: &Bytes) -> Result<Value, Response> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|_| http_error(StatusCode::BAD_REQUEST, "invalid request body"))
}

/// `POST /v1/agent/sessions` (proxy-token auth): 201 `{"session":{"id":…}}`.
async fn create_route(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (sandbox, _) = match sandbox_auth(&state, &headers) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let title = body.get("title").and_then(Value::as_str).unwrap_or("");
    let id = create_session(&state, &sandbox.id, &sandbox.workspace_id, title);
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"session": {"id": id, "title": title, "status": "active"}}).to_string(),
    )
        .into_response()
}

/// `POST /v1/agent/sessions/{id}/bridge` (proxy-token auth): new epoch, worker JWT.
async fn bridge_route(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (sandbox, _) = match sandbox_auth(&state, &headers) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("http")
        .to_string();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| state.base_url().trim_start_matches("http://").to_string());
    let (jwt, epoch) = {
        let mut inner = lock(&state.bridge.inner);
        let Some(session) = inner.sessions.get_mut(&id) else {
            return http_error(StatusCode::NOT_FOUND, "session not found");
        };
        if session.archived {
            return http_error(StatusCode::GONE, "session archived");
        }
        if session.sandbox_id != sandbox.id {
            return http_error(StatusCode::FORBIDDEN, "forbidden");
        }
        session.epoch += 1;
        session.worker_status = None;
        let epoch = session.epoch;
        session.push_log(BridgeOp::Credentials {
            epoch,
            by_test: false,
        });
        let exp = Utc::now() + chrono::Duration::seconds(WORKER_JWT_TTL_SECS);
        let jwt = make_jwt(&id, &sandbox.id, &sandbox.workspace_id, epoch, exp);
        inner.tokens.insert(
            jwt.clone(),
            JwtClaims {
                sid: id.clone(),
                epoch,
                exp,
            },
        );
        (jwt, epoch)
    };
    state.notify();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "worker_jwt": jwt,
            "api_base_url": format!("{scheme}://{host}/v1/agent/sessions/{id}"),
            "expires_in": WORKER_JWT_TTL_SECS,
            "worker_epoch": epoch,
        })
        .to_string(),
    )
        .into_response()
}

/// An HS256-shaped JWT (header.claims.signature, base64url). The mock validates tokens by
/// looking them up, so the signature is just random bytes.
fn make_jwt(sid: &str, sbx: &str, wid: &str, epoch: i64, exp: DateTime<Utc>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = b64.encode(
        json!({"sid": sid, "sbx": sbx, "wid": wid, "epoch": epoch, "exp": exp.timestamp()})
            .to_string(),
    );
    let sig: [u8; 32] = rand::random();
    format!("{header}.{claims}.{}", b64.encode(sig))
}

/// `POST /v1/agent/sessions/{id}/archive` (proxy-token auth).
async fn archive_route(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (sandbox, _) = match sandbox_auth(&state, &headers) {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    match state.bridge_session(&id) {
        None => http_error(StatusCode::NOT_FOUND, "session not found"),
        Some(s) if s.sandbox_id != sandbox.id => http_error(StatusCode::FORBIDDEN, "forbidden"),
        Some(_) => {
            state.bridge_archive(&id);
            empty_ok()
        }
    }
}

/// Checks the worker JWT of a request for session `id`; returns the JWT's epoch.
fn worker_auth(state: &MockState, headers: &HeaderMap, id: &str) -> Result<i64, Response> {
    let Some(token) = bearer_token(headers) else {
        return Err(http_error(
            StatusCode::UNAUTHORIZED,
            "invalid token: missing",
        ));
    };
    let inner = lock(&state.bridge.inner);
    let Some(claims) = inner.tokens.get(&token) else {
        return Err(http_error(
            StatusCode::UNAUTHORIZED,
            "invalid token: signature is invalid",
        ));
    };
    if claims.exp < Utc::now() {
        return Err(http_error(
            StatusCode::UNAUTHORIZED,
            "invalid token: token is expired",
        ));
    }
    if claims.sid != id {
        return Err(http_error(StatusCode::FORBIDDEN, "forbidden"));
    }
    if !inner.sessions.contains_key(id) {
        return Err(http_error(StatusCode::NOT_FOUND, "session not found"));
    }
    Ok(claims.epoch)
}

/// [`worker_auth`], then the JSON body and its `worker_epoch` (the JWT's epoch when absent or 0).
fn worker_auth_body(
    state: &MockState,
    headers: &HeaderMap,
    id: &str,
    body: &Bytes,
) -> Result<(Value, i64), Response> {
    let jwt_epoch = worker_auth(state, headers, id)?;
    let body = parse_json(body)?;
    let epoch = match body_epoch(&body) {
        0 => jwt_epoch,
        e => e,
    };
    Ok((body, epoch))
}

/// Runs `f` on session `id` under the lock, then wakes waiters. Error: 404 `session not found`.
fn update_session<R>(
    state: &MockState,
    id: &str,
    f: impl FnOnce(&mut Session) -> R,
) -> Result<R, Response> {
    let result = {
        let mut inner = lock(&state.bridge.inner);
        let Some(session) = inner.sessions.get_mut(id) else {
            return Err(http_error(StatusCode::NOT_FOUND, "session not found"));
        };
        f(session)
    };
    state.notify();
    Ok(result)
}

fn body_epoch(body: &Value) -> i64 {
    body.get("worker_epoch")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// `GET …/worker`: the worker record.
async fn worker_get(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = worker_auth(&state, &headers, &id) {
        return resp;
    }
    let Some(s) = state.bridge_session(&id) else {
        return http_error(StatusCode::NOT_FOUND, "session not found");
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"session_id": id, "worker_status": s.worker_status, "worker_epoch": s.epoch})
            .to_string(),
    )
        .into_response()
}

/// `PUT …/worker`: `{"worker_status", "worker_epoch"}` or `{"external_metadata", "worker_epoch"}`.
async fn worker_put(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (body, epoch) = match worker_auth_body(&state, &headers, &id, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let status = body
        .get("worker_status")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !status.is_empty() && !matches!(status.as_str(), "idle" | "running" | "requires_action") {
        return http_error(StatusCode::BAD_REQUEST, "invalid worker_status");
    }
    update_session(&state, &id, |session| {
        let (code, resp) = if epoch != session.epoch {
            (409, http_error(StatusCode::CONFLICT, "epoch mismatch"))
        } else {
            if !status.is_empty() {
                session.worker_status = Some(status.clone());
            }
            (200, empty_ok())
        };
        session.push_log(BridgeOp::WorkerState {
            status,
            epoch,
            http_status: code,
        });
        resp
    })
    .unwrap_or_else(|resp| resp)
}

/// `POST …/worker/heartbeat`: `{"session_id", "worker_epoch"}`.
async fn heartbeat(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, epoch) = match worker_auth_body(&state, &headers, &id, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    update_session(&state, &id, |session| {
        let (code, resp) = if epoch != session.epoch {
            (409, http_error(StatusCode::CONFLICT, "epoch mismatch"))
        } else {
            session.heartbeats += 1;
            (200, empty_ok())
        };
        session.push_log(BridgeOp::Heartbeat {
            epoch,
            http_status: code,
        });
        resp
    })
    .unwrap_or_else(|resp| resp)
}

/// `POST …/worker/events`: `{"worker_epoch", "events":[{"payload", "ephemeral"?}]}`.
async fn events_post(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(resp) = worker_auth(&state, &headers, &id) {
        return resp;
    }
    if body.len() > 10 * 1024 * 1024 {
        return http_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let epoch = body_epoch(&body);
    let events = body
        .get("events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut logged = Vec::new();
    let response = update_session(&state, &id, |session| {
        let received = events.len();
        let (code, stored, resp) = if epoch != session.epoch {
            (409, 0, http_error(StatusCode::CONFLICT, "epoch mismatch"))
        } else if received > MAX_EVENTS_PER_BATCH {
            (
                400,
                0,
                http_error(StatusCode::BAD_REQUEST, "too many events (max 100)"),
            )
        } else {
            let mut stored = 0;
            for ev in events {
                let ephemeral = ev
                    .get("ephemeral")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let payload = ev.get("payload").cloned().unwrap_or(Value::Null);
                let text = payload.to_string();
                if session.store(payload, "worker", ephemeral).is_some() {
                    stored += 1;
                    logged.push(text);
                }
            }
            (200, stored, empty_ok())
        };
        session.push_log(BridgeOp::Events {
            epoch,
            received,
            stored,
            http_status: code,
        });
        resp
    })
    .unwrap_or_else(|resp| resp);
    if !logged.is_empty() {
        let task = state
            .tasks()
            .into_iter()
            .find(|t| t.session_id.as_deref() == Some(id.as_str()))
            .map_or_else(|| id.clone(), |t| t.id);
        for event in logged {
            tracing::info!(
                target: crate::TASK_LOG_TARGET,
                %task,
                "event {}",
                crate::log_excerpt(&event)
            );
        }
    }
    response
}

/// `GET …/worker/events/stream`: replay after `from_sequence_num` / `Last-Event-ID`, then live,
/// with `:keepalive` comments.
async fn stream(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(resp) = worker_auth(&state, &headers, &id) {
        return resp;
    }
    let from_query = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "from_sequence_num")
            .and_then(|(_, v)| v.parse::<u64>().ok())
    });
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let from = from_query.or(from_header).unwrap_or(0);
    let latest = match update_session(&state, &id, |session| {
        session.open_streams += 1;
        session.push_log(BridgeOp::StreamOpened {
            from_sequence_num: from,
        });
        session.latest.subscribe()
    }) {
        Ok(latest) => latest,
        Err(resp) => return resp,
    };
    let keepalive = *lock(&state.bridge.keepalive);
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(pump(state.clone(), id, from, latest, keepalive, tx));
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    }));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Feeds one SSE stream until its client goes away.
async fn pump(
    state: Arc<MockState>,
    id: String,
    from: u64,
    mut latest: watch::Receiver<u64>,
    keepalive: Duration,
    tx: mpsc::Sender<Bytes>,
) {
    let mut last = from;
    let mut first = true;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    // Ticks missed during a long replay are not made up in a burst of keepalives: one is due,
    // then the interval starts again.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'outer: loop {
        latest.mark_unchanged();
        let (frames, newest): (Vec<(u64, Bytes)>, u64) = {
            let inner = lock(&state.bridge.inner);
            let Some(session) = inner.sessions.get(&id) else {
                break;
            };
            let limit = if first { MAX_REPLAY } else { usize::MAX };
            let frames = session
                .events
                .iter()
                .filter(|e| e.sequence_num > last)
                .take(limit)
                .map(|e| {
                    let frame = format!(
                        "event: {}\nid: {}\ndata: {}\n\n",
                        e.event_type,
                        e.sequence_num,
                        e.to_json()
                    );
                    (e.sequence_num, Bytes::from(frame))
                })
                .collect();
            let newest = session.events.last().map_or(0, |e| e.sequence_num);
            (frames, newest)
        };
        for (seq, frame) in frames {
            if tx.send(frame).await.is_err() {
                break 'outer;
            }
            last = seq;
        }
        if first {
            // Like the server: the replay is capped, then only live events follow; what lay
            // beyond the cap needs a reconnect with a higher `from_sequence_num`.
            last = last.max(newest);
            first = false;
        }
        tokio::select! {
            changed = latest.changed() => if changed.is_err() { break },
            _ = tick.tick() => {
                if tx.send(Bytes::from_static(b":keepalive\n\n")).await.is_err() {
                    break;
                }
            }
            _ = tx.closed() => break,
        }
    }
    {
        let mut inner = lock(&state.bridge.inner);
        if let Some(session) = inner.sessions.get_mut(&id) {
            session.open_streams = session.open_streams.saturating_sub(1);
            session.push_log(BridgeOp::StreamClosed);
        }
    }
    state.notify();
}
