//! The HTTP server: router, middleware (recording and faults), listener with connection
//! tracking (so a restart really drops every connection, WebSockets included), and the
//! shared helpers handlers use (plain-text errors, sandbox-token auth).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::config::MockConfig;
use crate::state::{MockState, SandboxRecord, lock};
use crate::{agents, bridge, control, faults, oauth, record, register, tasks, tunnel};

/// A plain-text error response like Go's `http.Error`: body `message\n`,
/// `Content-Type: text/plain; charset=utf-8`, `X-Content-Type-Options: nosniff`.
pub fn http_error(status: StatusCode, message: &str) -> Response {
    let mut resp = (status, format!("{message}\n")).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Which sandbox token a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// The sandbox's proxy token.
    Proxy,
    /// The sandbox's tunnel token (accepted wherever proxy-token auth is used, except whoami).
    Tunnel,
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// "Proxy-token auth": the sandbox whose proxy token (first) or tunnel token (then) is the
/// request's Bearer token. Errors: 401 `missing authorization`, 401 `unauthorized`.
pub fn sandbox_auth(
    state: &MockState,
    headers: &HeaderMap,
) -> Result<(SandboxRecord, TokenKind), Response> {
    let Some(token) = bearer_token(headers) else {
        return Err(http_error(
            StatusCode::UNAUTHORIZED,
            "missing authorization",
        ));
    };
    state
        .sandbox_by_token(&token)
        .ok_or_else(|| http_error(StatusCode::UNAUTHORIZED, "unauthorized"))
}

/// [`sandbox_auth`], then the body as JSON `T`. Errors: those of [`sandbox_auth`], then 400
/// `bad request`.
pub(crate) fn sandbox_auth_json<T: serde::de::DeserializeOwned>(
    state: &MockState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(SandboxRecord, T), Response> {
    let (sandbox, _) = sandbox_auth(state, headers)?;
    let req = serde_json::from_slice::<T>(body)
        .map_err(|_| http_error(StatusCode::BAD_REQUEST, "bad request"))?;
    Ok((sandbox, req))
}

/// The sandbox `target_id`, which must be in `requester`'s workspace. Errors: 404 `target agent
/// not found`, 403 `target agent not in workspace`.
pub(crate) fn workspace_target(
    state: &MockState,
    requester: &SandboxRecord,
    target_id: &str,
) -> Result<SandboxRecord, Response> {
    let Some(target) = state.sandbox(target_id) else {
        return Err(http_error(StatusCode::NOT_FOUND, "target agent not found"));
    };
    if target.workspace_id != requester.workspace_id {
        return Err(http_error(
            StatusCode::FORBIDDEN,
            "target agent not in workspace",
        ));
    }
    Ok(target)
}

/// A running mock agentserver on 127.0.0.1.
#[derive(Debug)]
pub struct MockServer {
    addr: SocketAddr,
    state: Arc<MockState>,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    task: JoinHandle<()>,
    conns: Arc<ConnTracker>,
}

impl MockServer {
    /// Starts a mock on `127.0.0.1:0` (a free port).
    pub async fn start(config: MockConfig) -> io::Result<MockServer> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts a mock on `addr`.
    pub async fn start_on(addr: SocketAddr, config: MockConfig) -> io::Result<MockServer> {
        let state = Arc::new(MockState::new(config));
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else if addr.is_ipv6() {
            format!("[{}]", addr.ip())
        } else {
            addr.ip().to_string()
        };
        state.set_base_url(format!("http://{host}:{}", addr.port()));
        let running = serve(listener, state.clone());
        tracing::info!(%addr, "mock agentserver listening");
        Ok(MockServer {
            addr,
            state,
            running: Some(running),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        self.state.base_url()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (for setup and assertions).
    pub fn state(&self) -> Arc<MockState> {
        self.state.clone()
    }

    /// Simulates a server restart: stops listening, drops every open connection (WebSockets
    /// and SSE streams included), then listens again on the same port. All state is kept.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await;
        let listener = bind_retry(self.addr).await?;
        self.running = Some(serve(listener, self.state.clone()));
        tracing::info!(addr = %self.addr, "mock agentserver restarted");
        Ok(())
    }

    /// Stops the server and drops every connection.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.task.abort();
            let _ = running.task.await;
            running.conns.kill_all();
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.task.abort();
            running.conns.kill_all();
        }
    }
}

async fn bind_retry(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("bind failed")))
}

fn serve(listener: TcpListener, state: Arc<MockState>) -> Running {
    let conns = Arc::new(ConnTracker::default());
    let tracked = TrackedListener {
        inner: listener,
        conns: conns.clone(),
    };
    let app = router(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(tracked, app).await {
            tracing::warn!(error = %e, "mock server stopped");
        }
    });
    Running { task, conns }
}

/// Builds the mock's router for `state` (bridge routes only when enabled in its config).
pub fn router(state: Arc<MockState>) -> Router {
    let mut app: Router<Arc<MockState>> = Router::new()
        .route("/api/oauth2/device/auth", post(oauth::device_auth))
        .route("/api/oauth2/token", post(oauth::token))
        .route(
            "/oauth2/device/verify",
            get(oauth::verify_page).post(oauth::verify_page),
        )
        .route("/api/agent/register", post(register::register))
        .route("/api/agent/tasks", post(tasks::create))
        .route("/api/agent/tasks/poll", get(tasks::poll))
        .route("/api/agent/tasks/{id}", get(tasks::get))
        .route("/api/agent/tasks/{id}/status", put(tasks::update_status))
        .route("/api/agent/discovery/agents", get(agents::discovery))
        .route("/api/agent/discovery/cards", post(agents::upsert_card))
        .route("/api/agent/mailbox/send", post(agents::mailbox_send))
        .route("/api/agent/mailbox/inbox", get(agents::mailbox_inbox))
        .route("/api/agent/whoami", get(agents::whoami))
        .route("/api/tunnel/{sandbox_id}", get(tunnel_route))
        .merge(control::routes());
    if state.config().bridge_enabled {
        app = app.merge(bridge::routes());
    }
    app.fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_and_faults,
        ))
        .with_state(state)
}

async fn not_found() -> Response {
    http_error(StatusCode::NOT_FOUND, "404 page not found")
}

async fn record_and_faults(
    State(state): State<Arc<MockState>>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let req = match record::record(&state, req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Some(resp) = faults::apply(&state, &method, &path).await {
        return resp;
    }
    let resp = next.run(req).await;
    match faults::apply_after(&state, &method, &path).await {
        Some(replaced) => replaced,
        None => resp,
    }
}

/// `GET /api/tunnel/{sandbox_id}?token=`: checks the tunnel token and upgrades to a WebSocket
/// (no message or frame size limit), then hands the socket to [`tunnel::serve`].
async fn tunnel_route(
    State(state): State<Arc<MockState>>,
    Path(sandbox_id): Path<String>,
    RawQuery(query): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let token = query.as_deref().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    });
    let token = token.unwrap_or_default();
    if sandbox_id.is_empty() || token.is_empty() {
        return http_error(StatusCode::BAD_REQUEST, "missing parameters");
    }
    match state.sandbox(&sandbox_id) {
        Some(sb) if sb.tunnel_token == token => {}
        _ => return http_error(StatusCode::UNAUTHORIZED, "unauthorized"),
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    ws.max_message_size(usize::MAX)
        .max_frame_size(usize::MAX)
        .on_upgrade(move |socket| tunnel::serve(socket, sandbox_id, state))
}

/// Open connections of one listening generation, so they can all be cut at once.
#[derive(Debug, Default)]
struct ConnTracker {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, std::net::TcpStream>>,
}

impl ConnTracker {
    fn kill_all(&self) {
        let conns = std::mem::take(&mut *lock(&self.conns));
        for (_, s) in conns {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

struct TrackedListener {
    inner: TcpListener,
    conns: Arc<ConnTracker>,
}

impl TrackedListener {
    fn track(&self, stream: TcpStream) -> io::Result<TrackedStream> {
        let std_stream = stream.into_std()?;
        let dup = std_stream.try_clone()?;
        let stream = TcpStream::from_std(std_stream)?;
        let _ = stream.set_nodelay(true);
        let id = self.conns.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.conns.conns).insert(id, dup);
        Ok(TrackedStream {
            inner: stream,
            id,
            conns: self.conns.clone(),
        })
    }
}

impl axum::serve::Listener for TrackedListener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => match self.track(stream) {
                    Ok(s) => return (s, addr),
                    Err(e) => tracing::warn!(error = %e, "mock: cannot track connection"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "mock: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A TCP connection registered with a [`ConnTracker`] while it lives.
struct TrackedStream {
    inner: TcpStream,
    id: u64,
    conns: Arc<ConnTracker>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        lock(&self.conns.conns).remove(&self.id);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
