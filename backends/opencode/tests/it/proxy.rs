//! `handle_http` against a stand-in for opencode (an axum server on loopback): what reaches
//! the local server, what comes back, streaming, and the error replies. The real opencode is
//! proxied in `real_opencode.rs` and through the tunnel in tests/integration.

use std::time::{Duration, Instant};

use agentserver_backend_opencode::{OpencodeBackend, OpencodeConfig, ServerState, Token};
use agentserver_plugin_api::{Backend, HttpRequest, HttpResponse, LocalPath, RequestBody};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;

const LIMIT: Duration = Duration::from_secs(10);

fn stand_in() -> Router {
    Router::new()
        .route(
            "/global/health",
            get(|| async { axum::Json(serde_json::json!({"healthy": true, "version": "9.9.9"})) }),
        )
        .route(
            "/headers",
            get(|headers: HeaderMap| async move {
                let map: serde_json::Map<String, serde_json::Value> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").into()))
                    .collect();
                axum::Json(serde_json::Value::Object(map))
            }),
        )
        .route(
            "/echo",
            post(|q: axum::extract::RawQuery, body: Bytes| async move {
                ([("x-query", q.0.unwrap_or_default())], body)
            }),
        )
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
            "/event",
            get(|| async {
                let stream = futures_util::stream::unfold(0u32, |i| async move {
                    if i == 3 {
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(700)).await;
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
                    .into_response()
            }),
        )
}

async fn serve() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, stand_in()).await;
    });
    format!("http://{addr}")
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpRequest {
    HttpRequest {
        method: method.into(),
        path: LocalPath::parse(path).expect("a local path"),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: RequestBody::from_bytes(Bytes::copy_from_slice(body)),
    }
}

async fn body(response: HttpResponse) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = response.body;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

fn header<'a>(response: &'a HttpResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn external(url: String, token: Option<&str>) -> OpencodeBackend {
    OpencodeBackend::new(OpencodeConfig {
        opencode_url: Some(url),
        opencode_token: token.map(Token::new),
        ..OpencodeConfig::default()
    })
}

#[tokio::test]
async fn forwards_headers_bodies_and_the_token() {
    let backend = external(serve().await, Some("tok"));
    backend.start().await.unwrap();
    assert!(matches!(
        backend.state(),
        ServerState::Ready { generation: 0, .. }
    ));
    assert_eq!(backend.opencode_version().await.as_deref(), Some("9.9.9"));

    let r = backend
        .handle_http(request(
            "GET",
            "/headers",
            &[
                ("Authorization", "Basic c2VydmVyLXNpZGU="),
                ("X-Custom", "kept"),
                ("Connection", "keep-alive"),
                ("Host", "evil.example"),
                ("Accept-Encoding", "gzip"),
            ],
            b"",
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
    // base64("opencode:tok")
    assert_eq!(seen["authorization"], "Basic b3BlbmNvZGU6dG9r");
    assert_eq!(seen["x-custom"], "kept");
    assert_eq!(seen["accept-encoding"], "gzip");
    assert_ne!(seen["host"], "evil.example");
    assert_ne!(seen["host"], "");

    let r = backend
        .handle_http(request("POST", "/echo?directory=/w%20x", &[], b"payload"))
        .await
        .unwrap();
    assert_eq!(header(&r, "x-query"), Some("directory=/w%20x"));
    assert_eq!(body(r).await, b"payload");

    // Compressed bodies pass through untouched.
    let r = backend
        .handle_http(request("GET", "/gzip", &[], b""))
        .await
        .unwrap();
    assert_eq!(header(&r, "content-encoding"), Some("gzip"));
    assert_eq!(body(r).await, b"\x1f\x8b\x08\x00not-really-gzip");
}

#[tokio::test]
async fn without_a_token_the_servers_authorization_passes_through() {
    let backend = external(serve().await, None);
    let r = backend
        .handle_http(request(
            "GET",
            "/headers",
            &[("Authorization", "Basic abc")],
            b"",
        ))
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&body(r).await).unwrap();
    assert_eq!(seen["authorization"], "Basic abc");
}

#[tokio::test]
async fn sse_streams_chunk_by_chunk() {
    let backend = external(serve().await, None);
    let start = Instant::now();
    let r = backend
        .handle_http(request("GET", "/event", &[], b""))
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), Some("text/event-stream"));
    let mut stream = r.body;
    let first = tokio::time::timeout(LIMIT, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: 0\n\n");
    assert!(
        start.elapsed() < Duration::from_millis(600),
        "first event was held back"
    );
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(LIMIT, stream.next()).await.unwrap() {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"data: 1\n\ndata: 2\n\n");
    assert!(start.elapsed() >= Duration::from_millis(1400));
}

#[tokio::test]
async fn only_the_local_server_is_reachable_and_failures_are_502() {
    // `//evil.example/x` cannot even be handed to a backend: it is not a `LocalPath` (the
    // tunnel answers it 400 `invalid request path`, tests/integration/tests/tunnel.rs).
    assert!(LocalPath::parse("//evil.example/x").is_err());

    // Nothing listens: upstream's 502 `local service error: …`.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gone = OpencodeBackend::new(OpencodeConfig {
        auto_start: false,
        opencode_port: port,
        ..OpencodeConfig::default()
    });
    gone.start().await.unwrap();
    assert_eq!(gone.opencode_version().await, None);
    let r = gone
        .handle_http(request("GET", "/global/health", &[], b""))
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    let text = String::from_utf8(body(r).await).unwrap();
    assert!(text.starts_with("local service error: "), "{text}");
}

#[tokio::test]
async fn auto_start_uses_a_server_already_on_the_port() {
    let url = serve().await;
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let backend = OpencodeBackend::new(OpencodeConfig {
        // Would fail if it were run: the server on the port is used instead.
        opencode_bin: "/nonexistent/opencode".into(),
        opencode_port: port,
        ..OpencodeConfig::default()
    });
    backend.start().await.unwrap();
    assert_eq!(backend.server_pid(), None, "nothing was started");
    assert_eq!(backend.opencode_version().await.as_deref(), Some("9.9.9"));
    backend.shutdown().await;
    // Not ours: still served after shutdown.
    let r = backend
        .handle_http(request("GET", "/global/health", &[], b""))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_missing_binary_fails_start_with_its_path() {
    let backend = OpencodeBackend::new(OpencodeConfig {
        opencode_bin: "/nonexistent/opencode".into(),
        opencode_port: 0,
        ..OpencodeConfig::default()
    });
    let err = backend.start().await.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/opencode"), "{err}");
    assert!(matches!(backend.state(), ServerState::Failed(_)));
    let task_outcome = backend
        .execute(
            agentserver_plugin_api::Task::default(),
            agentserver_plugin_api::EventSink::channel(4).0,
            Default::default(),
        )
        .await;
    assert_eq!(
        task_outcome.failure_kind,
        Some(agentserver_plugin_api::FailureKind::System)
    );
}

#[tokio::test]
async fn unusable_settings_fail_start() {
    let bad = external("not a url".into(), None);
    let err = bad.start().await.unwrap_err().to_string();
    assert!(err.contains("invalid opencode URL"), "{err}");
    let zero = OpencodeBackend::new(OpencodeConfig {
        auto_start: false,
        opencode_port: 0,
        ..OpencodeConfig::default()
    });
    let err = zero.start().await.unwrap_err().to_string();
    assert!(err.contains("needs --auto-start"), "{err}");
}
