//! Support for the tunnel tests and the tunnel benchmark: a local HTTP server to proxy to, a
//! deterministic byte pattern, and a fixture that runs the host's tunnel against the mock.

use std::sync::Arc;
use std::time::Duration;

use agentserver::secret::Secret;
use agentserver::tunnel::{InfoSource, Tunnel, TunnelConfig, TunnelError, TunnelStatus};
use agentserver_mock::{MockConfig, MockServer, SandboxRecord};
use agentserver_plugin_api::Backend;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Byte `i` of the test pattern (not periodic on any power of two, so misplaced chunks show).
pub fn pattern_byte(i: u64) -> u8 {
    ((i.wrapping_mul(7)).wrapping_add(i >> 13) % 251) as u8
}

/// `len` bytes of the pattern starting at `offset`.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern_byte(offset + i)).collect()
}

/// True when `data` is exactly the first `data.len()` pattern bytes.
pub fn is_pattern(data: &[u8]) -> bool {
    data.iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(i as u64))
}

#[derive(serde::Deserialize)]
struct SseQuery {
    events: Option<u32>,
    interval_ms: Option<u64>,
}

#[derive(serde::Deserialize)]
struct SlowQuery {
    ms: Option<u64>,
}

/// The local HTTP server's routes:
/// * `GET /bytes/{n}`: `n` pattern bytes, streamed in 64 KiB chunks;
/// * `POST /echo`: the request body back, with `X-Request-Method`;
/// * `POST /discard`: reads the body as it streams in, keeps none of it, answers its length;
/// * `GET /sse?events=N&interval_ms=M`: `text/event-stream`, one `data: i` event every M ms;
/// * `GET /slow?ms=N`: answers `slow ok` after N ms;
/// * `GET /small`: `ok`;
/// * `GET /headers`: the request headers as a JSON object (first value each);
/// * `GET /gzip`: a fixed body labelled `Content-Encoding: gzip` (must pass through verbatim);
/// * `GET /multi`: two `Set-Cookie` headers.
pub fn local_router() -> Router {
    Router::new()
        .route("/bytes/{n}", get(bytes_route))
        .route("/echo", post(echo_route))
        .route("/discard", post(discard_route))
        .route("/sse", get(sse_route))
        .route("/slow", get(slow_route))
        .route("/small", get(|| async { "ok" }))
        .route("/headers", get(headers_route))
        .route(
            "/gzip",
            get(|| async {
                (
                    [("content-encoding", "gzip"), ("content-type", "text/plain")],
                    Bytes::from_static(b"\x1f\x8b\x08\x00not-really-gzip"),
                )
            }),
        )
        .route(
            "/multi",
            get(|| async {
                let mut h = HeaderMap::new();
                h.append("set-cookie", "a=1".parse().unwrap());
                h.append("set-cookie", "b=2".parse().unwrap());
                (h, "multi")
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable())
}

async fn bytes_route(Path(n): Path<u64>) -> Response {
    const CHUNK: u64 = 64 * 1024;
    let stream = futures_util::stream::iter((0..n.div_ceil(CHUNK)).map(move |c| {
        let start = c * CHUNK;
        let len = CHUNK.min(n - start) as usize;
        Ok::<_, std::io::Error>(Bytes::from(pattern(start, len)))
    }));
    Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn discard_route(body: Body) -> String {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut len = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        len += chunk.len() as u64;
    }
    len.to_string()
}

async fn echo_route(method: axum::http::Method, body: Bytes) -> Response {
    ([("x-request-method", method.to_string())], body).into_response()
}

async fn sse_route(Query(q): Query<SseQuery>) -> Response {
    let events = q.events.unwrap_or(5);
    let interval = Duration::from_millis(q.interval_ms.unwrap_or(500));
    let stream = futures_util::stream::unfold(0u32, move |i| async move {
        if i >= events {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        Some((
            Ok::<_, std::io::Error>(Bytes::from(format!("data: {i}\n\n"))),
            i + 1,
        ))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn slow_route(Query(q): Query<SlowQuery>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(5000))).await;
    "slow ok"
}

async fn headers_route(headers: HeaderMap) -> Response {
    let map: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    (StatusCode::OK, axum::Json(serde_json::Value::Object(map))).into_response()
}

/// Starts the local HTTP server on 127.0.0.1; returns its base URL.
pub async fn start_local_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, local_router()).await;
    });
    format!("http://{addr}")
}

/// An [`InfoSource`] that always reports `json`.
pub fn fixed_info(json: &'static str) -> InfoSource {
    Arc::new(move || async move { json.as_bytes().to_vec() }.boxed())
}

/// The host's tunnel running against a mock.
pub struct TunnelFixture {
    /// The mock server.
    pub mock: MockServer,
    /// The sandbox the tunnel serves.
    pub sandbox: SandboxRecord,
    /// The tunnel (for events and status).
    pub tunnel: Arc<Tunnel>,
    /// Cancels the tunnel.
    pub cancel: CancellationToken,
    /// The running [`Tunnel::run`].
    pub task: JoinHandle<Result<(), TunnelError>>,
}

impl TunnelFixture {
    /// Starts a mock with `mock_config`, a sandbox, and the tunnel (configured by `tweak`)
    /// serving `backend`; waits until the tunnel is connected.
    pub async fn start(
        mock_config: MockConfig,
        backend: Arc<dyn Backend>,
        info: InfoSource,
        tweak: impl FnOnce(&mut TunnelConfig),
    ) -> Self {
        let mock = MockServer::start(mock_config).await.unwrap();
        let sandbox = mock.state().add_sandbox("tunnel-test", "custom");
        let mut config = TunnelConfig::new(
            mock.url(),
            sandbox.id.clone(),
            Secret::new(sandbox.tunnel_token.clone()),
        );
        tweak(&mut config);
        let tunnel = Arc::new(Tunnel::new(config, backend, info));
        let mut status = tunnel.status();
        let cancel = CancellationToken::new();
        let task = {
            let tunnel = Arc::clone(&tunnel);
            let cancel = cancel.clone();
            tokio::spawn(async move { tunnel.run(cancel).await })
        };
        let fixture = Self {
            mock,
            sandbox,
            tunnel,
            cancel,
            task,
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| *s == TunnelStatus::Connected),
        )
        .await;
        fixture.wait_connected().await;
        fixture
    }

    /// Waits (≤ 10 s) until the mock sees the sandbox's tunnel.
    pub async fn wait_connected(&self) {
        let id = self.sandbox.id.clone();
        let ok = self
            .mock
            .state()
            .wait_until(Duration::from_secs(10), |s| s.tunnel.is_connected(&id))
            .await;
        assert!(ok, "tunnel did not connect");
    }

    /// Stops the tunnel and waits for it.
    pub async fn stop(self) -> Result<(), TunnelError> {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("tunnel did not stop")
            .expect("tunnel task panicked")
    }
}

/// A backend that only proxies HTTP streams to a local server, through the workspace's one
/// forwarder (`agentserver_common::forward`, what the opencode backend ships): for the tunnel
/// tests and the tunnel benchmark. Tasks fail: it runs none. (Moved here from the host's
/// `tunnel::proxy`, which is gone.)
#[derive(Clone, Debug)]
pub struct HttpProxyBackend {
    base: url::Url,
    forwarder: agentserver_common::forward::Forwarder,
}

impl HttpProxyBackend {
    /// A backend forwarding to `base_url` (e.g. `http://127.0.0.1:4096`).
    pub fn new(base_url: impl AsRef<str>) -> Self {
        Self {
            base: url::Url::parse(base_url.as_ref()).expect("a valid local URL"),
            forwarder: agentserver_common::forward::Forwarder::default(),
        }
    }
}

#[async_trait::async_trait]
impl Backend for HttpProxyBackend {
    fn info(&self) -> agentserver_plugin_api::BackendInfo {
        agentserver_plugin_api::BackendInfo {
            name: "http-proxy".into(),
            version: "0".into(),
            session_type: agentserver_plugin_api::SessionType::Custom,
        }
    }

    async fn execute(
        &self,
        _task: agentserver_plugin_api::Task,
        _events: agentserver_plugin_api::EventSink,
        _cancel: CancellationToken,
    ) -> agentserver_plugin_api::TaskOutcome {
        agentserver_plugin_api::TaskOutcome::failed(
            agentserver_plugin_api::FailureKind::System,
            "the http-proxy backend runs no tasks",
        )
    }

    async fn handle_http(
        &self,
        request: agentserver_plugin_api::HttpRequest,
    ) -> Result<agentserver_plugin_api::HttpResponse, agentserver_plugin_api::BackendError> {
        Ok(self
            .forwarder
            .forward(&self.base, request)
            .await
            .unwrap_or_else(|e| e.into_reply()))
    }
}

/// One request as a raw TCP server read it (see [`start_raw_server`]).
#[derive(Debug)]
pub struct RawRequest {
    /// The request head, lower-cased, up to and including the blank line.
    pub head: String,
    /// The body bytes that came.
    pub body: Vec<u8>,
    /// True when the connection ended before `Content-Length` body bytes came.
    pub cut_short: bool,
}

impl RawRequest {
    /// The value of header `name` (lower-case) in the head.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }
}

/// A local server that reads each request byte for byte, with no HTTP library in between: the
/// head, then `Content-Length` body bytes or until the connection ends. A complete request is
/// answered `200 ok` (`Connection: close`); every request read is sent on the channel.
pub async fn start_raw_server() -> (String, tokio::sync::mpsc::UnboundedReceiver<RawRequest>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = vec![0u8; 64 * 1024];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => {
                            // Closed inside the head: recorded as a cut-short request.
                            let _ = tx.send(RawRequest {
                                head: String::from_utf8_lossy(&buf).to_ascii_lowercase(),
                                body: Vec::new(),
                                cut_short: true,
                            });
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                };
                let mut request = RawRequest {
                    head: String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase(),
                    body: buf[head_end..].to_vec(),
                    cut_short: false,
                };
                let len: usize = request
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while request.body.len() < len {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => {
                            request.cut_short = true;
                            break;
                        }
                        Ok(n) => request.body.extend_from_slice(&tmp[..n]),
                    }
                }
                if !request.cut_short {
                    let _ = sock
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                }
                let _ = tx.send(request);
            });
        }
    });
    (url, rx)
}
