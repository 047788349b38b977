//! The host's tunnel against the mock agentserver over real loopback sockets: HTTP streams to
//! a local server, SSE and slow backends under a 2 s stream-open timeout, agent info, terminal
//! streams, error replies, reconnect schedule and garbage from the server.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentserver::tunnel::{BackoffPolicy, TunnelEvent};
use agentserver_integration::tunnel_support::{
    HttpProxyBackend, TunnelFixture, fixed_info, is_pattern, pattern, start_local_server,
};
use agentserver_mock::MockConfig;
use agentserver_mock::tunnel::TunnelClientError;
use agentserver_mux::StreamType;
use agentserver_mux::frame::{Flags, Header};
use agentserver_plugin_api::{
    Backend, BackendError, BackendInfo, EventSink, HttpRequest, HttpResponse, SessionType, Task,
    TaskOutcome, TerminalStream,
};
use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);
const INFO: &str = r#"{"hostname":"test-host","os":"linux","agent_version":"dev"}"#;

fn mock_config() -> MockConfig {
    MockConfig {
        stream_open_timeout: Duration::from_secs(2),
        ..MockConfig::default()
    }
}

async fn proxy_fixture() -> TunnelFixture {
    let local = start_local_server().await;
    TunnelFixture::start(
        mock_config(),
        Arc::new(HttpProxyBackend::new(local)),
        fixed_info(INFO),
        |_| {},
    )
    .await
}

/// A backend that proxies HTTP and echoes terminal input back.
struct EchoTerminal {
    proxy: HttpProxyBackend,
}

#[async_trait]
impl Backend for EchoTerminal {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "echo".into(),
            version: "0".into(),
            session_type: SessionType::Custom,
        }
    }

    async fn execute(&self, _: Task, _: EventSink, _: CancellationToken) -> TaskOutcome {
        TaskOutcome::completed("")
    }

    async fn handle_http(&self, request: HttpRequest) -> Result<HttpResponse, BackendError> {
        if request.path == "/backend-error" {
            return Err(BackendError::Internal("boom".into()));
        }
        if request.path == "/broken-body" {
            let body = futures_util::stream::iter(vec![
                Ok(bytes::Bytes::from_static(b"partial")),
                Err(std::io::Error::other("backend died")),
            ]);
            return Ok(HttpResponse {
                status: 200,
                headers: vec![],
                body: Box::pin(body),
            });
        }
        self.proxy.handle_http(request).await
    }

    async fn attach_terminal(&self, mut stream: TerminalStream) -> Result<(), BackendError> {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| BackendError::Internal(e.to_string()))?;
            if n == 0 {
                return Ok(());
            }
            let mut out = vec![0u8];
            out.extend_from_slice(&buf[1..n]);
            stream
                .write_all(&out)
                .await
                .map_err(|e| BackendError::Internal(e.to_string()))?;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_http_streams_arrive_byte_identical() {
    let fx = proxy_fixture().await;
    let state = fx.mock.state();
    const SIZES: [usize; 12] = [
        0,
        1,
        100,
        4096,
        16 * 1024 + 3,
        65_535,
        65_536,
        262_144,
        262_145,
        700_000,
        1 << 20,
        2 * 1024 * 1024 + 7,
    ];
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let size = if i == 0 {
            64 * 1024 * 1024
        } else {
            SIZES[i % SIZES.len()]
        };
        let state = Arc::clone(&state);
        let id = fx.sandbox.id.clone();
        tasks.push(tokio::spawn(async move {
            let resp = state
                .tunnel
                .open_http(&id, "GET", &format!("/bytes/{size}"), vec![], vec![])
                .await
                .unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(
                resp.headers.get("Content-Type").map(String::as_str),
                Some("application/octet-stream")
            );
            let body = resp.read_body().await.unwrap();
            assert_eq!(body.len(), size, "stream {i}");
            assert!(is_pattern(&body), "stream {i} corrupted");
        }));
    }
    // Uploads too: request bodies up to 4 MiB echoed back.
    for i in 0..8usize {
        let state = Arc::clone(&state);
        let id = fx.sandbox.id.clone();
        tasks.push(tokio::spawn(async move {
            let body = pattern(0, i * 512 * 1024 + 11);
            let resp = state
                .tunnel
                .open_http(
                    &id,
                    "POST",
                    "/echo",
                    vec![("Content-Type".into(), "application/octet-stream".into())],
                    body.clone(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status, 200);
            assert_eq!(resp.headers["X-Request-Method"], "POST");
            assert_eq!(resp.read_body().await.unwrap(), body);
        }));
    }
    timeout(Duration::from_secs(60), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("streams did not finish");
    assert_eq!(
        state.tunnel.connections(&fx.sandbox.id).len(),
        1,
        "no reconnect"
    );
    fx.stop().await.unwrap();
}

#[tokio::test]
async fn sse_outlives_the_stream_open_timeout_and_streams_incrementally() {
    let fx = proxy_fixture().await;
    let state = fx.mock.state();
    let start = Instant::now();
    let mut resp = state
        .tunnel
        .open_http(
            &fx.sandbox.id,
            "GET",
            "/sse?events=7&interval_ms=500",
            vec![],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(resp.headers["Content-Type"], "text/event-stream");
    let mut buf = [0u8; 64];
    let n = timeout(T, resp.body.read(&mut buf)).await.unwrap().unwrap();
    assert!(n > 0);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "the first event must not wait for the end of the stream"
    );
    let mut rest = Vec::new();
    timeout(T, resp.body.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let mut all = buf[..n].to_vec();
    all.extend_from_slice(&rest);
    let expected: String = (0..7).map(|i| format!("data: {i}\n\n")).collect();
    assert_eq!(String::from_utf8(all).unwrap(), expected);
    assert!(
        start.elapsed() > Duration::from_secs(2),
        "longer than the open timeout"
    );
    assert_eq!(state.tunnel.connections(&fx.sandbox.id).len(), 1);
    assert!(state.tunnel.is_connected(&fx.sandbox.id));
    fx.stop().await.unwrap();
}

#[tokio::test]
async fn slow_backend_does_not_trip_the_stream_open_timeout() {
    let fx = proxy_fixture().await;
    let state = fx.mock.state();
    let start = Instant::now();
    let resp = state
        .tunnel
        .open_http(&fx.sandbox.id, "GET", "/slow?ms=5000", vec![], vec![])
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.read_body().await.unwrap(), b"slow ok");
    assert!(start.elapsed() >= Duration::from_secs(5));
    assert_eq!(
        state.tunnel.connections(&fx.sandbox.id).len(),
        1,
        "session survived"
    );
    assert!(state.tunnel.is_connected(&fx.sandbox.id));
    fx.stop().await.unwrap();
}

#[tokio::test]
async fn agent_info_is_sent_at_once_then_periodically() {
    let local = start_local_server().await;
    let fx = TunnelFixture::start(
        mock_config(),
        Arc::new(HttpProxyBackend::new(local)),
        fixed_info(INFO),
        |c| c.info_interval = Duration::from_millis(300),
    )
    .await;
    let state = fx.mock.state();
    let id = fx.sandbox.id.clone();
    assert!(
        state
            .wait_until(T, |s| s.tunnel.agent_infos(&id).len() >= 3)
            .await
    );
    let infos = state.tunnel.agent_infos(&id);
    let conn = &state.tunnel.connections(&id)[0];
    assert!(
        infos[0].at - conn.connected_at < Duration::from_secs(1),
        "first info at once"
    );
    for info in &infos {
        assert_eq!(&info.raw[..], INFO.as_bytes(), "raw JSON, no envelope");
    }
    let gap = infos[2].at - infos[1].at;
    assert!(
        gap >= Duration::from_millis(250) && gap < Duration::from_secs(2),
        "{gap:?}"
    );
    let sandbox = state.sandbox(&id).unwrap();
    assert_eq!(sandbox.status, "running");
    assert_eq!(sandbox.agent_info.unwrap()["hostname"], "test-host");
    fx.stop().await.unwrap();
    assert!(
        state
            .wait_until(T, |s| s.sandbox(&id).unwrap().status == "offline")
            .await
    );
}

#[tokio::test]
async fn error_replies_and_header_handling() {
    let local = start_local_server().await;
    let fx = TunnelFixture::start(
        mock_config(),
        Arc::new(EchoTerminal {
            proxy: HttpProxyBackend::new(local),
        }),
        fixed_info(INFO),
        |_| {},
    )
    .await;
    let state = fx.mock.state();
    let id = fx.sandbox.id.clone();

    // Authority-form paths are refused.
    let r = state
        .tunnel
        .open_http(&id, "GET", "//evil/x", vec![], vec![])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.headers["Content-Type"], "text/plain");
    assert_eq!(r.read_body().await.unwrap(), b"invalid request path");

    // A missing leading slash is added.
    let r = state
        .tunnel
        .open_http(&id, "GET", "small", vec![], vec![])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.read_body().await.unwrap(), b"ok");

    // Backend errors are 502 local service error.
    let r = state
        .tunnel
        .open_http(&id, "GET", "/backend-error", vec![], vec![])
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.read_body().await.unwrap(), b"local service error: boom");

    // Request headers arrive single-valued; Host is the local server's.
    let r = state
        .tunnel
        .open_http(
            &id,
            "GET",
            "/headers",
            vec![("X-Custom".into(), "v1".into())],
            vec![],
        )
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&r.read_body().await.unwrap()).unwrap();
    assert_eq!(seen["x-custom"], "v1");

    // Response headers: first value only; bodies verbatim (no decompression).
    let r = state
        .tunnel
        .open_http(&id, "GET", "/multi", vec![], vec![])
        .await
        .unwrap();
    assert_eq!(r.headers["Set-Cookie"], "a=1");
    let r = state
        .tunnel
        .open_http(&id, "GET", "/gzip", vec![], vec![])
        .await
        .unwrap();
    assert_eq!(r.headers["Content-Encoding"], "gzip");
    assert_eq!(
        r.read_body().await.unwrap(),
        b"\x1f\x8b\x08\x00not-really-gzip"
    );

    // A body that fails midway resets the stream instead of ending it cleanly.
    // (The reset may also overtake the response header: then opening fails.)
    match state
        .tunnel
        .open_http(&id, "GET", "/broken-body", vec![], vec![])
        .await
    {
        Ok(r) => {
            assert_eq!(r.status, 200);
            assert!(
                r.read_body().await.is_err(),
                "truncated body must not look complete"
            );
        }
        Err(e) => assert!(e.to_string().contains("reset"), "{e}"),
    }

    // Invalid metadata → 400 invalid metadata.
    let mut s = state.tunnel.open_raw_stream(&id).await.unwrap();
    agentserver_mux::write_header(&mut s, StreamType::Http, b"not json")
        .await
        .unwrap();
    let (ty, head) = agentserver_mux::read_header(&mut s).await.unwrap();
    assert_eq!(ty, StreamType::Http);
    let head: serde_json::Value = serde_json::from_slice(&head).unwrap();
    assert_eq!(head["status"], 400);
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.unwrap();
    assert_eq!(body, b"invalid metadata");

    // A body shorter than body_len → 502 failed to read request body.
    let mut s = state.tunnel.open_raw_stream(&id).await.unwrap();
    let meta = br#"{"method":"POST","path":"/echo","headers":{},"body_len":10}"#;
    agentserver_mux::write_header(&mut s, StreamType::Http, meta)
        .await
        .unwrap();
    s.write_all(b"abc").await.unwrap();
    s.shutdown().await.unwrap();
    let (_, head) = agentserver_mux::read_header(&mut s).await.unwrap();
    let head: serde_json::Value = serde_json::from_slice(&head).unwrap();
    assert_eq!(head["status"], 502);
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.unwrap();
    assert_eq!(body, b"failed to read request body");

    // Unknown stream types are closed.
    let mut s = state.tunnel.open_raw_stream(&id).await.unwrap();
    agentserver_mux::write_header(&mut s, StreamType::Unknown(9), b"")
        .await
        .unwrap();
    let mut rest = Vec::new();
    timeout(T, s.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty());

    // Terminal streams reach the backend.
    let mut term = state.tunnel.open_terminal(&id).await.unwrap();
    term.write_all(b"\x00hi").await.unwrap();
    let mut buf = [0u8; 3];
    timeout(T, term.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"\x00hi");

    assert_eq!(state.tunnel.connections(&id).len(), 1);
    fx.stop().await.unwrap();
}

#[tokio::test]
async fn terminal_stream_is_closed_when_the_backend_has_none() {
    let fx = proxy_fixture().await;
    let state = fx.mock.state();
    let mut term = state.tunnel.open_terminal(&fx.sandbox.id).await.unwrap();
    let mut rest = Vec::new();
    timeout(T, term.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    fx.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_stop_closes_the_websocket_with_1000() {
    let fx = proxy_fixture().await;
    let state = fx.mock.state();
    let id = fx.sandbox.id.clone();
    fx.stop().await.unwrap();
    assert!(
        state
            .wait_until(T, |s| s.tunnel.connections(&id)[0]
                .disconnected_at
                .is_some())
            .await
    );
    assert_eq!(state.tunnel.connections(&id)[0].close_code, Some(1000));
}

#[tokio::test]
async fn reconnects_on_the_backoff_schedule_and_resends_agent_info() {
    let local = start_local_server().await;
    // The upstream schedule scaled down 5×: 200 ms doubling to 800 ms, reset after 3 s.
    let policy = BackoffPolicy {
        initial: Duration::from_millis(200),
        max: Duration::from_millis(800),
        reset_after: Duration::from_secs(3),
        jitter: 0.1,
    };
    let fx = TunnelFixture::start(
        mock_config(),
        Arc::new(HttpProxyBackend::new(local)),
        fixed_info(INFO),
        |c| c.backoff = policy.clone(),
    )
    .await;
    let state = fx.mock.state();
    let id = fx.sandbox.id.clone();
    let mut events = fx.tunnel.events();

    // Kill the connection; the next four connections are dropped right after the handshake.
    state.tunnel.drop_next_connections(4);
    assert!(state.tunnel.drop_connection(&id));
    assert!(
        state
            .wait_until(T, |s| s.tunnel.connections(&id).len() >= 6)
            .await
    );
    assert!(state.wait_until(T, |s| s.tunnel.is_connected(&id)).await);
    let conns = state.tunnel.connections(&id);
    let expected_ms = [200u64, 400, 800, 800, 800];
    for (i, base) in expected_ms.iter().enumerate() {
        let gap = conns[i + 1].connected_at - conns[i].disconnected_at.unwrap();
        let base = Duration::from_millis(*base);
        assert!(
            gap >= base && gap < base.mul_f64(1.1) + Duration::from_millis(500),
            "gap {i}: {gap:?}, expected about {base:?}"
        );
    }
    // Agent info is resent at once on the surviving connection.
    let last = conns.last().unwrap().conn_id;
    assert!(
        state
            .wait_until(T, |s| s
                .tunnel
                .agent_infos(&id)
                .iter()
                .any(|i| i.conn_id == last))
            .await
    );
    let info = state
        .tunnel
        .agent_infos(&id)
        .into_iter()
        .find(|i| i.conn_id == last)
        .unwrap();
    assert!(info.at - conns.last().unwrap().connected_at < Duration::from_secs(1));

    // A connection that lived longer than `reset_after` resets the schedule to 200 ms.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert!(state.tunnel.drop_connection(&id));
    assert!(
        state
            .wait_until(T, |s| s.tunnel.connections(&id).len() >= 7)
            .await
    );
    let conns = state.tunnel.connections(&id);
    let gap = conns[6].connected_at - conns[5].disconnected_at.unwrap();
    assert!(
        gap >= Duration::from_millis(200) && gap < Duration::from_millis(780),
        "after reset: {gap:?}"
    );

    // Events were published for every disconnect.
    let mut disconnects = 0;
    while let Ok(ev) = events.try_recv() {
        if matches!(ev, TunnelEvent::Disconnected { .. }) {
            disconnects += 1;
        }
    }
    assert!(disconnects >= 6, "{disconnects} disconnect events");
    fx.stop().await.unwrap();
}

#[tokio::test]
async fn rejected_token_is_reported_and_retried() {
    // Capture the host's log: a reason that repeats is logged once at WARN, not per attempt.
    // The subscriber is this thread's only, and this test runs on one thread (the default
    // current-thread runtime), so other tests' logs cannot mix in.
    let log = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("agentserver=debug")
        .with_ansi(false)
        .with_writer({
            let log = Arc::clone(&log);
            move || CaptureWriter(Arc::clone(&log))
        })
        .finish();
    let _log_guard = tracing::subscriber::set_default(subscriber);
    let local = start_local_server().await;
    let mock = agentserver_mock::MockServer::start(mock_config())
        .await
        .unwrap();
    let sandbox = mock.state().add_sandbox("bad-token", "custom");
    let mut config = agentserver::tunnel::TunnelConfig::new(
        mock.url(),
        sandbox.id.clone(),
        agentserver::secret::Secret::new("0".repeat(32)),
    );
    config.backoff = BackoffPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(100),
        reset_after: Duration::from_secs(30),
        jitter: 0.0,
    };
    let tunnel = agentserver::tunnel::Tunnel::new(
        config,
        Arc::new(HttpProxyBackend::new(local)),
        fixed_info(INFO),
    );
    let mut events = tunnel.events();
    let cancel = CancellationToken::new();
    let run = {
        let cancel = cancel.clone();
        async move { tunnel.run(cancel).await }
    };
    let handle = tokio::spawn(run);
    let mut rejected = 0;
    while rejected < 3 {
        match timeout(T, events.recv()).await.unwrap().unwrap() {
            TunnelEvent::Disconnected {
                token_rejected,
                reason,
                ..
            } => {
                assert!(token_rejected, "{reason}");
                assert!(!reason.contains(&"0".repeat(32)), "token leaked: {reason}");
                rejected += 1;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    let attempts = mock
        .state()
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/tunnel/"))
        .count();
    assert!(attempts >= 3);
    cancel.cancel();
    timeout(T, handle).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    let warnings = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("tunnel token rejected"))
        .count();
    assert_eq!(warnings, 1, "one warning for a repeated reason:\n{text}");
    assert!(
        text.lines()
            .filter(|l| l.contains("DEBUG") && l.contains("tunnel attempt failed again"))
            .count()
            >= 2,
        "later attempts at debug level:\n{text}"
    );
    assert!(!text.contains(&"0".repeat(32)), "token in the log:\n{text}");
}

/// A `tracing` writer into a shared buffer.
struct CaptureWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Garbage from the server never panics the host: the session (or only the stream) is
/// dropped and the host reconnects.
#[tokio::test]
async fn garbage_from_the_server_never_panics_and_the_host_reconnects() {
    let panics = Arc::new(AtomicUsize::new(0));
    {
        let panics = Arc::clone(&panics);
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            panics.fetch_add(1, Ordering::SeqCst);
            prev(info);
        }));
    }
    let local = start_local_server().await;
    let fx = TunnelFixture::start(
        mock_config(),
        Arc::new(HttpProxyBackend::new(local)),
        fixed_info(INFO),
        |c| {
            c.backoff = BackoffPolicy {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(50),
                reset_after: Duration::from_secs(30),
                jitter: 0.0,
            }
        },
    )
    .await;
    let state = fx.mock.state();
    let id = fx.sandbox.id.clone();

    let mut unknown_type = Header::ping(Flags::SYN, 1).encode().to_vec();
    unknown_type[1] = 7;
    let mut bad_version = Header::ping(Flags::SYN, 1).encode().to_vec();
    bad_version[0] = 1;
    // A data frame that promises 100 bytes; the connection is then cut.
    let truncated = Header::data(2, Flags::SYN, 100).encode()[..].to_vec();
    let random: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("unknown frame type", unknown_type, false),
        ("bad version", bad_version, false),
        ("random bytes", random, false),
        ("truncated frame", truncated, true),
    ];
    for (name, bytes, cut) in cases {
        let before = state.tunnel.connections(&id).len();
        assert!(state.tunnel.inject_garbage(&id, bytes), "{name}");
        if cut {
            tokio::time::sleep(Duration::from_millis(100)).await;
            state.tunnel.drop_connection(&id);
        }
        assert!(
            state
                .wait_until(T, |s| s.tunnel.connections(&id).len() > before
                    && s.tunnel.is_connected(&id))
                .await,
            "no reconnect after {name}"
        );
        // The new connection works.
        let r = state
            .tunnel
            .open_http(&id, "GET", "/small", vec![], vec![])
            .await
            .unwrap();
        assert_eq!(r.read_body().await.unwrap(), b"ok", "{name}");
    }

    // A stream header declaring 2 MiB of metadata drops only that stream.
    let before = state.tunnel.connections(&id).len();
    let mut s = state.tunnel.open_raw_stream(&id).await.unwrap();
    s.write_all(&[1, 0, 0x20, 0, 0]).await.unwrap();
    let mut rest = Vec::new();
    let res = timeout(T, s.read_to_end(&mut rest)).await.unwrap();
    assert!(res.is_err() || rest.is_empty(), "stream must be dropped");
    let r = state
        .tunnel
        .open_http(&id, "GET", "/small", vec![], vec![])
        .await
        .unwrap();
    assert_eq!(r.read_body().await.unwrap(), b"ok");
    assert_eq!(state.tunnel.connections(&id).len(), before, "session kept");

    // A request whose response never starts: the host closes without a header.
    let err = state
        .tunnel
        .open_http(&id, "GET", "//evil", vec![], vec![])
        .await
        .map(|r| r.status);
    assert!(matches!(err, Ok(400) | Err(TunnelClientError::NoResponse)));

    assert!(!fx.task.is_finished(), "tunnel task must keep running");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "a panic happened");
    fx.stop().await.unwrap();
}

/// Issue 17: request bodies stream from the tunnel to the backend through the forwarder that
/// ships, with an exact `Content-Length` (never chunked); a body shorter than `body_len` is
/// aborted at the backend (which never sees a complete request) and answered 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_with_their_exact_length_and_short_ones_are_aborted() {
    let (local, mut seen) = agentserver_integration::tunnel_support::start_raw_server().await;
    let fx = TunnelFixture::start(
        mock_config(),
        Arc::new(HttpProxyBackend::new(local)),
        fixed_info(INFO),
        |_| {},
    )
    .await;
    let state = fx.mock.state();
    let id = fx.sandbox.id.clone();

    // Larger than the yamux window and many body chunks: streamed, length announced.
    let body = pattern(0, 3 * 1024 * 1024 + 5);
    let r = timeout(
        T,
        state.tunnel.open_http(
            &id,
            "POST",
            "/upload",
            vec![("Transfer-Encoding".into(), "chunked".into())],
            body.clone(),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.read_body().await.unwrap(), b"ok");
    let req = timeout(T, seen.recv()).await.unwrap().unwrap();
    assert!(
        req.head.starts_with("post /upload http/1.1\r\n"),
        "{}",
        req.head
    );
    assert_eq!(req.header("content-length"), Some("3145733"));
    assert_eq!(req.header("transfer-encoding"), None, "{}", req.head);
    assert!(!req.cut_short);
    assert!(req.body == body, "body corrupted");

    // Short: 3 of 10 bytes, then FIN.
    let mut s = state.tunnel.open_raw_stream(&id).await.unwrap();
    let meta = br#"{"method":"POST","path":"/short","headers":{},"body_len":10}"#;
    agentserver_mux::write_header(&mut s, StreamType::Http, meta)
        .await
        .unwrap();
    s.write_all(b"abc").await.unwrap();
    // Let the first bytes reach the backend before the stream ends.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.shutdown().await.unwrap();
    let (_, head) = timeout(T, agentserver_mux::read_header(&mut s))
        .await
        .unwrap()
        .unwrap();
    let head: serde_json::Value = serde_json::from_slice(&head).unwrap();
    assert_eq!(head["status"], 502);
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"failed to read request body");
    let req = timeout(T, seen.recv()).await.unwrap().unwrap();
    assert_eq!(req.header("content-length"), Some("10"));
    assert_eq!(req.header("transfer-encoding"), None);
    assert!(req.cut_short, "the backend saw a complete request");
    assert_eq!(req.body, b"abc");

    // A bad path never reaches the backend: nothing is built, nothing is sent.
    let r = state
        .tunnel
        .open_http(&id, "GET", "//evil.example/x", vec![], vec![])
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.read_body().await.unwrap(), b"invalid request path");
    assert!(
        timeout(Duration::from_millis(300), seen.recv())
            .await
            .is_err(),
        "a request was sent for an invalid path"
    );
    fx.stop().await.unwrap();
}
