//! Outgoing HTTP to the agentserver server: the one place that sends a request and reads its
//! answer, for every caller (token polls, registration, task polls, status reports, bridge
//! calls, MCP calls).
//!
//! Two rules live here and nowhere else:
//!
//! * **A stale pooled connection costs nothing.** Servers close idle keep-alive connections
//!   (Node's default is after 5 s); a request written to such a connection fails with a reset or
//!   with "connection closed before message completed" although the server never saw it.
//!   [`send`] resends such a request once, at once, on a new connection. Every other failure
//!   (connect errors, timeouts, resets after an answer began) goes back to the caller and keeps
//!   its backoff.
//! * **No answer is read without a bound.** [`read_body`] streams the body and stops at the
//!   caller's cap, so an endless or huge answer costs at most the cap in memory.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

/// The cap of an answer read with [`send_and_read`]: every JSON answer of the server
/// (poll batches of five tasks, registration, tokens, task details, bridge calls) is far
/// below it.
pub const DEFAULT_BODY_CAP: usize = 8 * 1024 * 1024;

/// Errors of [`send_and_read`] and [`read_body`].
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No (complete) answer: connect error, timeout, reset.
    #[error("{}", error_chain(.0))]
    Transport(reqwest::Error),
    /// The answer's body was larger than the cap; it was dropped unread past the cap.
    #[error("the answer is larger than {cap} bytes; dropped")]
    TooLarge {
        /// The cap that was reached.
        cap: usize,
    },
}

impl HttpError {
    /// True when the request got no answer because of a timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Transport(e) if e.is_timeout())
    }
}

/// Sends `request`; when it fails because the pooled connection it went out on had been
/// closed by the server ([`is_stale_connection`]), sends it once more on a new connection.
/// A request whose body cannot be cloned (a stream) is sent once.
pub async fn send(request: reqwest::RequestBuilder) -> Result<reqwest::Response, reqwest::Error> {
    let again = request.try_clone();
    match request.send().await {
        Err(err) if is_stale_connection(&err) => match again {
            Some(again) => {
                tracing::debug!(
                    err = %error_chain(&err),
                    "the server had closed the kept-alive connection; resending on a new one"
                );
                again.send().await
            }
            None => Err(err),
        },
        other => other,
    }
}

/// [`send`], then reads the whole answer within `cap` bytes: its status and body.
pub async fn send_and_read_capped(
    request: reqwest::RequestBuilder,
    cap: usize,
) -> Result<(reqwest::StatusCode, Bytes), HttpError> {
    let response = send(request).await.map_err(HttpError::Transport)?;
    let status = response.status();
    Ok((status, read_body(response, cap).await?))
}

/// Like [`send_and_read`] but never resent: for a request whose repetition must be decided
/// by its caller (a final status report: the reporter asks the server before sending it
/// again). A reset after the request was written may mean the server applied it.
pub async fn send_and_read_once(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, Bytes), HttpError> {
    let response = request.send().await.map_err(HttpError::Transport)?;
    let status = response.status();
    Ok((status, read_body(response, DEFAULT_BODY_CAP).await?))
}

/// [`send_and_read_capped`] with [`DEFAULT_BODY_CAP`].
pub async fn send_and_read(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, Bytes), HttpError> {
    send_and_read_capped(request, DEFAULT_BODY_CAP).await
}

/// Reads `response`'s body chunk by chunk, failing with [`HttpError::TooLarge`] as soon as it
/// passes `cap` bytes (a `Content-Length` above the cap fails before anything is read).
pub async fn read_body(response: reqwest::Response, cap: usize) -> Result<Bytes, HttpError> {
    if response
        .content_length()
        .is_some_and(|len| len > cap as u64)
    {
        return Err(HttpError::TooLarge { cap });
    }
    let mut body = BytesMut::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(HttpError::Transport)?;
        if body.len() + chunk.len() > cap {
            return Err(HttpError::TooLarge { cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// True when `err` says the connection was closed under a request that had not been answered
/// at all and was not a fresh connect: the signature of a kept-alive connection the server
/// closed while it sat in the pool (a reset, a broken pipe, or hyper's "connection closed
/// before message completed").
pub fn is_stale_connection(err: &reqwest::Error) -> bool {
    if err.is_connect() || err.is_timeout() || err.is_status() || err.is_body() {
        return false;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(hyper_err) = cause.downcast_ref::<hyper::Error>()
            && hyper_err.is_incomplete_message()
        {
            return true;
        }
        if let Some(io_err) = cause.downcast_ref::<std::io::Error>()
            && matches!(
                io_err.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
            )
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// `segment` percent-encoded as one URL path segment: everything but the unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`) is escaped, `/`, `%`, `?` and `#` included. The dot
/// segments `.` and `..` are the caller's to refuse (URL parsers resolve them even escaped).
pub fn path_segment(segment: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// An error and its causes, joined with `: `, each message once (reqwest's own message is
/// often only "error sending request"; the cause says why).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Reads one request head (up to the blank line) from `sock`; false at end of stream.
    async fn read_head(sock: &mut tokio::net::TcpStream) -> bool {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match sock.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return false,
            }
        }
        true
    }

    /// A server whose first connection answers one request with keep-alive and then closes
    /// (reset) when the next request arrives on it, unanswered, as a server that timed the idle
    /// connection out does; every later connection answers normally.
    async fn server_closing_kept_alive_connections() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let n = counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    while read_head(&mut sock).await {
                        if n == 0 {
                            sock.write_all(ok).await.unwrap();
                            // Wait for the reuse, then close it unanswered (its body unread,
                            // so the kernel answers with a reset).
                            read_head(&mut sock).await;
                            return;
                        }
                        sock.write_all(ok).await.unwrap();
                    }
                });
            }
        });
        (format!("http://{addr}/"), connections)
    }

    #[tokio::test]
    async fn a_request_on_a_connection_the_server_closed_is_resent_on_a_new_one() {
        let (url, connections) = server_closing_kept_alive_connections().await;
        let http = reqwest::Client::new();
        let (status, body) = send_and_read(http.get(&url)).await.unwrap();
        assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
        // The second request reuses the pooled connection, which the server resets.
        let (status, body) = send_and_read(http.post(&url).body("poll"))
            .await
            .expect("resent on a new connection");
        assert_eq!((status.as_u16(), &body[..]), (200, &b"ok"[..]));
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn path_segments_escape_everything_that_is_not_unreserved() {
        assert_eq!(path_segment("task_1-a.b~c"), "task_1-a.b~c");
        assert_eq!(path_segment("../register"), "..%2Fregister");
        assert_eq!(path_segment("..%2f"), "..%252f");
        assert_eq!(path_segment("/tmp/pwn"), "%2Ftmp%2Fpwn");
        assert_eq!(path_segment("a b?c#d"), "a%20b%3Fc%23d");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[tokio::test]
    async fn a_request_sent_once_is_never_resent() {
        let (url, connections) = server_closing_kept_alive_connections().await;
        let http = reqwest::Client::new();
        send_and_read(http.get(&url)).await.unwrap();
        // A status report on the connection the server resets: the failure comes back to the
        // caller (who asks the server before sending it again), nothing is resent here.
        let err = send_and_read_once(http.put(&url).body("final status"))
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::Transport(_)), "{err}");
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connect_failure_is_not_retried_here() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = send(reqwest::Client::new().get(format!("http://{addr}/")))
            .await
            .unwrap_err();
        assert!(err.is_connect());
        assert!(!is_stale_connection(&err));
    }

    #[tokio::test]
    async fn an_answer_past_the_cap_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            read_head(&mut sock).await;
            // Chunked, never ending.
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("{:x}\r\n{}\r\n", 4096, "[".repeat(4096));
            while sock.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let err = send_and_read_capped(
            reqwest::Client::new().get(format!("http://{addr}/")),
            64 * 1024,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HttpError::TooLarge { cap: 65536 }), "{err}");
    }
}
