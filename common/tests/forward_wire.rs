//! The forwarder on the wire, against a raw TCP server on loopback that records the exact
//! bytes of the request: a streamed body goes out with `Content-Length` and never chunked; one
//! that ends short is aborted (the server never sees a complete request); an unread body comes
//! back after a refused connection so the request can be sent again.

use std::time::Duration;

use agentserver_common::forward::{ForwardError, Forwarder};
use agentserver_plugin_api::{HttpBody, HttpRequest, LocalPath, RequestBody};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(10);

/// What the raw server read: the request head (lower-cased), the body bytes, and whether the
/// connection ended before `Content-Length` bytes came.
struct Seen {
    head: String,
    body: Vec<u8>,
    cut_short: bool,
}

/// Accepts one connection, reads the head and `Content-Length` body bytes (or until EOF), and
/// answers `200 ok` only when the body was complete.
async fn raw_server() -> (url::Url, tokio::task::JoinHandle<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = sock.read(&mut tmp).await.unwrap();
            assert!(n > 0, "connection closed inside the head");
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        let mut cut_short = false;
        while body.len() < len {
            match sock.read(&mut tmp).await {
                Ok(0) | Err(_) => {
                    cut_short = true;
                    break;
                }
                Ok(n) => body.extend_from_slice(&tmp[..n]),
            }
        }
        if !cut_short {
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
        Seen {
            head,
            body,
            cut_short,
        }
    });
    (base, task)
}

fn chunked_stream(data: Vec<u8>, chunk: usize) -> HttpBody {
    let chunks: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(chunks).boxed()
}

fn post(path: &str, body: RequestBody) -> HttpRequest {
    HttpRequest {
        method: "POST".into(),
        path: LocalPath::parse(path).unwrap(),
        // Hop-by-hop headers from the server are not copied; the forwarder sets the length.
        headers: vec![
            ("Transfer-Encoding".into(), "chunked".into()),
            ("Content-Length".into(), "999".into()),
            ("X-Kept".into(), "yes".into()),
        ],
        body,
    }
}

#[tokio::test]
async fn a_streamed_body_goes_out_with_its_exact_length_and_never_chunked() {
    let (base, server) = raw_server().await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let body = RequestBody::from_stream(data.len() as u64, chunked_stream(data.clone(), 65_536));
    let response = timeout(T, Forwarder::default().forward(&base, post("/up", body)))
        .await
        .unwrap()
        .expect("forwarded");
    assert_eq!(response.status, 200);
    let seen = timeout(T, server).await.unwrap().unwrap();
    assert!(
        seen.head.contains("\r\ncontent-length: 300000\r\n"),
        "{}",
        seen.head
    );
    assert!(!seen.head.contains("transfer-encoding"), "{}", seen.head);
    assert!(seen.head.contains("\r\nx-kept: yes\r\n"), "{}", seen.head);
    assert!(!seen.cut_short);
    assert_eq!(seen.body, data);
}

#[tokio::test]
async fn a_body_shorter_than_announced_aborts_the_request() {
    let (base, server) = raw_server().await;
    // 3 of 10 bytes, then (after the head and those bytes are on the wire) the end.
    let late_end = futures_util::stream::once(tokio::time::sleep(Duration::from_millis(300)))
        .filter_map(|()| async { None::<Result<Bytes, std::io::Error>> });
    let stream = chunked_stream(b"abc".to_vec(), 3).chain(late_end).boxed();
    let body = RequestBody::from_stream(10, stream);
    let result = timeout(T, Forwarder::default().forward(&base, post("/up", body)))
        .await
        .unwrap();
    match result {
        Err(ForwardError::Lost { request, .. }) => {
            assert!(request.is_none(), "a half-sent body cannot be sent again")
        }
        other => panic!("expected a lost request, got {other:?}"),
    }
    let seen = timeout(T, server).await.unwrap().unwrap();
    assert!(
        seen.head.contains("\r\ncontent-length: 10\r\n"),
        "{}",
        seen.head
    );
    assert!(!seen.head.contains("transfer-encoding"), "{}", seen.head);
    assert!(seen.cut_short, "the server saw a complete request");
    assert_eq!(seen.body, b"abc");
}

#[tokio::test]
async fn an_unread_body_comes_back_after_a_refused_connection() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = url::Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let body = RequestBody::from_stream(6, chunked_stream(b"abcdef".to_vec(), 4));
    let result = timeout(T, Forwarder::default().forward(&base, post("/up", body)))
        .await
        .unwrap();
    let Err(ForwardError::Connect {
        request: Some(request),
        message,
    }) = result
    else {
        panic!("expected a refused connection with the request back");
    };
    assert!(!message.is_empty());
    assert_eq!(request.path, "/up");
    assert_eq!(request.body.len(), 6);
    assert_eq!(request.body.collect().await.unwrap(), "abcdef");
}
