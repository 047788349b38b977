//! Streaming HTTP request/response types for backends that serve the tunnel's HTTP streams.

use bytes::Bytes;
use futures_util::stream::BoxStream;

/// A streaming response body: chunks are forwarded to the server as they arrive (SSE-friendly).
pub type HttpBody = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// An HTTP request that arrived through the tunnel (spec §6.4.2), already validated by the host:
/// `path` starts with `/` and has no scheme or authority.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path and query, e.g. `/session?directory=/x`.
    pub path: String,
    /// Header name/value pairs, single-valued as the server sends them.
    pub headers: Vec<(String, String)>,
    /// The full request body (exactly `body_len` bytes).
    pub body: Bytes,
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
