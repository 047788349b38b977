//! Streaming HTTP request/response types for backends that serve the tunnel's HTTP streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::BoxStream;

/// A streaming body: chunks are forwarded as they arrive (SSE-friendly).
pub type HttpBody = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A request path that stays on the local server: it starts with `/`, names no other host
/// (`//host/x` and `/\host/x` are authority forms, also for WHATWG parsers) and holds no ASCII
/// control characters or spaces (which Go's URL parser refuses). The host parses the tunnel's
/// path into one once, at the tunnel edge ([`LocalPath::parse`]); a backend can only be handed
/// a path that passed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LocalPath(String);

/// Why a path is not a [`LocalPath`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid request path")]
pub struct InvalidPath;

impl LocalPath {
    /// Checks and normalises a request path: adds a leading `/` when missing (so
    /// `http://evil/x` is the local path `/http://evil/x`); refuses `//…`, `/\…`, control
    /// characters and spaces.
    pub fn parse(path: &str) -> Result<Self, InvalidPath> {
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        if path.starts_with("//") || path.starts_with("/\\") {
            return Err(InvalidPath);
        }
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(InvalidPath);
        }
        Ok(Self(path))
    }

    /// The path and query, e.g. `/session?directory=/x`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for LocalPath {
    type Err = InvalidPath;
    fn from_str(s: &str) -> Result<Self, InvalidPath> {
        Self::parse(s)
    }
}

impl AsRef<str> for LocalPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LocalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Debug for LocalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl PartialEq<str> for LocalPath {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for LocalPath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A request body of a known length (`body_len`): either bytes in memory (tests, plugins,
/// replayable) or a stream that must yield exactly that many bytes (the tunnel's, read from
/// the yamux stream in bounded chunks as the backend consumes it).
pub struct RequestBody {
    len: u64,
    kind: BodyKind,
}

enum BodyKind {
    Bytes(Bytes),
    Stream(HttpBody),
}

impl RequestBody {
    /// No body.
    pub fn empty() -> Self {
        Self::from_bytes(Bytes::new())
    }

    /// A body held in memory.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            len: bytes.len() as u64,
            kind: BodyKind::Bytes(bytes),
        }
    }

    /// A body of exactly `len` bytes read from `stream`. [`RequestBody::into_stream`] enforces
    /// the length: a stream that ends early or yields more ends with an error, so a consumer
    /// never takes a short body for a complete one.
    pub fn from_stream(len: u64, stream: HttpBody) -> Self {
        Self {
            len,
            kind: BodyKind::Stream(stream),
        }
    }

    /// The announced length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a body of length 0.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, when the body is held in memory (then it can be sent again).
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            BodyKind::Bytes(b) => Some(b),
            BodyKind::Stream(_) => None,
        }
    }

    /// The body as a stream of chunks that ends with an error unless exactly
    /// [`RequestBody::len`] bytes came.
    pub fn into_stream(self) -> HttpBody {
        match self.kind {
            BodyKind::Bytes(b) if b.is_empty() => Box::pin(futures_util::stream::empty()),
            BodyKind::Bytes(b) => Box::pin(futures_util::stream::once(async move { Ok(b) })),
            BodyKind::Stream(inner) => Box::pin(ExactLen {
                inner: Some(inner),
                remaining: self.len,
            }),
        }
    }

    /// Reads the whole body into memory (for backends that want it at once).
    pub async fn collect(self) -> Result<Bytes, std::io::Error> {
        use futures_util::StreamExt;
        if let BodyKind::Bytes(b) = self.kind {
            return Ok(b);
        }
        let mut out = Vec::with_capacity(self.len.min(1 << 20) as usize);
        let mut stream = self.into_stream();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(out))
    }
}

impl Default for RequestBody {
    fn default() -> Self {
        Self::empty()
    }
}

impl From<Bytes> for RequestBody {
    fn from(b: Bytes) -> Self {
        Self::from_bytes(b)
    }
}

impl From<Vec<u8>> for RequestBody {
    fn from(b: Vec<u8>) -> Self {
        Self::from_bytes(b)
    }
}

impl From<&'static [u8]> for RequestBody {
    fn from(b: &'static [u8]) -> Self {
        Self::from_bytes(Bytes::from_static(b))
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBody")
            .field("len", &self.len)
            .field("in_memory", &self.as_bytes().is_some())
            .finish()
    }
}

/// Ends a stream with an error unless it yields exactly `remaining` bytes.
struct ExactLen {
    inner: Option<HttpBody>,
    remaining: u64,
}

impl Stream for ExactLen {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let item = match inner.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        match item {
            Some(Ok(chunk)) if chunk.len() as u64 <= self.remaining => {
                self.remaining -= chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(Ok(_)) => {
                self.inner = None;
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "request body longer than announced",
                ))))
            }
            Some(Err(e)) => {
                self.inner = None;
                Poll::Ready(Some(Err(e)))
            }
            None if self.remaining == 0 => {
                self.inner = None;
                Poll::Ready(None)
            }
            None => {
                self.inner = None;
                Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "request body ended {} bytes short of its announced length",
                        self.remaining
                    ),
                ))))
            }
        }
    }
}

/// An HTTP request that arrived through the tunnel (spec §6.4.2), already validated by the host.
#[derive(Debug)]
pub struct HttpRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path and query on the local server, e.g. `/session?directory=/x`.
    pub path: LocalPath,
    /// Header name/value pairs, single-valued as the server sends them.
    pub headers: Vec<(String, String)>,
    /// The body: exactly `body_len` bytes, streamed from the tunnel.
    pub body: RequestBody,
}

impl HttpRequest {
    /// A request without headers or body.
    pub fn new(method: impl Into<String>, path: LocalPath) -> Self {
        Self {
            method: method.into(),
            path,
            headers: Vec::new(),
            body: RequestBody::empty(),
        }
    }
}

/// A response to an [`HttpRequest`].
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header name/value pairs (the wire format keeps the first value of each name).
    pub headers: Vec<(String, String)>,
    /// The body, streamed verbatim (never decompressed).
    pub body: HttpBody,
}

impl HttpResponse {
    /// A response with a fixed body.
    pub fn fixed(status: u16, headers: Vec<(String, String)>, body: impl Into<Bytes>) -> Self {
        let bytes: Bytes = body.into();
        Self {
            status,
            headers,
            body: Box::pin(futures_util::stream::once(async move { Ok(bytes) })),
        }
    }

    /// A `text/plain` response, as used for the tunnel's error replies.
    pub fn text(status: u16, message: &str) -> Self {
        Self::fixed(
            status,
            vec![("Content-Type".into(), "text/plain".into())],
            Bytes::copy_from_slice(message.as_bytes()),
        )
    }
}

impl std::fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn parsed(p: &str) -> Option<String> {
        LocalPath::parse(p).ok().map(|p| p.as_str().to_owned())
    }

    /// Moved from `host/src/tunnel/http.rs` (`paths`): the one path check.
    #[test]
    fn paths() {
        assert_eq!(parsed("/a?b=c").as_deref(), Some("/a?b=c"));
        assert_eq!(parsed("x/y").as_deref(), Some("/x/y"));
        assert_eq!(parsed("").as_deref(), Some("/"));
        assert_eq!(parsed("//evil/x"), None);
        assert_eq!(parsed("/\\evil/x"), None);
        assert_eq!(parsed("/a\nb"), None);
        assert_eq!(parsed("/a b"), None);
        assert_eq!(parsed("//evil.example/x"), None);
        // A scheme-looking path is just a path once it starts with `/`.
        assert_eq!(parsed("http://evil/x").as_deref(), Some("/http://evil/x"));
        assert_eq!(parsed("@evil/x").as_deref(), Some("/@evil/x"));
        assert_eq!(LocalPath::parse("/x").unwrap(), "/x");
    }

    async fn drain(body: RequestBody) -> (Vec<u8>, Option<std::io::ErrorKind>) {
        let mut out = Vec::new();
        let mut s = body.into_stream();
        while let Some(c) = s.next().await {
            match c {
                Ok(c) => out.extend_from_slice(&c),
                Err(e) => return (out, Some(e.kind())),
            }
        }
        (out, None)
    }

    fn chunks(parts: &[&'static [u8]]) -> HttpBody {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
        .boxed()
    }

    #[tokio::test]
    async fn streamed_bodies_have_exactly_their_length() {
        let (b, e) = drain(RequestBody::from_stream(6, chunks(&[b"abc", b"def"]))).await;
        assert_eq!((b.as_slice(), e), (&b"abcdef"[..], None));
        let (b, e) = drain(RequestBody::from_stream(10, chunks(&[b"abc"]))).await;
        assert_eq!(b, b"abc");
        assert_eq!(e, Some(std::io::ErrorKind::UnexpectedEof));
        let (_, e) = drain(RequestBody::from_stream(2, chunks(&[b"abc"]))).await;
        assert_eq!(e, Some(std::io::ErrorKind::InvalidData));
        let body = RequestBody::from(b"xyz".to_vec());
        assert_eq!(body.len(), 3);
        assert_eq!(body.collect().await.unwrap(), "xyz");
        assert!(RequestBody::empty().is_empty());
        assert_eq!(drain(RequestBody::empty()).await, (Vec::new(), None));
    }
}
