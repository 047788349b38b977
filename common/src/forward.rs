//! The one HTTP forwarder of the tunnel's HTTP streams to a local server (issue 16): what the
//! opencode backend ships and what the tunnel tests and benchmark run. Upstream's opencode
//! `connect` (spec §6.4.2 step 3): single-valued headers minus the hop-by-hop ones,
//! `Authorization` replaced when a local credential is set, no timeout (SSE), no
//! decompression, no redirects followed, the final URL's origin checked again, and both bodies
//! streamed: the request body with an exact `Content-Length` (some local servers refuse
//! chunked uploads), the response body chunk by chunk as it arrives.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use agentserver_plugin_api::{HttpBody, HttpRequest, HttpResponse, LocalPath, RequestBody};
use futures_util::{Stream, StreamExt, TryStreamExt};
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use url::Url;

/// Request headers never copied to the local request: they describe a hop, not the request
/// (RFC 9110 §7.6.1), plus `Host` and `Content-Length`, which the forwarder sets itself.
pub const HOP_REQUEST_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
];

/// Response headers not passed back (the tunnel carries the body verbatim until `FIN`).
pub const HOP_RESPONSE_HEADERS: &[&str] = &[
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "trailers",
];

/// True when `name` is in `list` (ASCII case-insensitive).
pub fn is_hop(name: &str, list: &[&str]) -> bool {
    list.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Renders an error with its sources (`a: b: c`), skipping a source already in the text.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Idle connections to the local server kept for reuse (sequential requests reuse one; a
/// burst of 200 concurrent ones would otherwise leave 200 open, each with its buffers).
pub const IDLE_CONNECTIONS: usize = 4;
/// How long an idle connection to the local server is kept (a new one over loopback costs
/// about 0.1 ms; one kept costs its buffers, up to ~0.5 MiB after a large response).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// An HTTP client for a local server: never decompresses bodies, never follows redirects (the
/// browser should see the 3xx so its URL and cookies stay right), never goes through an
/// `HTTP(S)_PROXY` from the environment, no overall timeout (SSE) but a 10 s connect timeout.
/// It keeps at most [`IDLE_CONNECTIONS`] idle connections, for [`IDLE_TIMEOUT`]: after a
/// burst of concurrent requests the rest close, with the read buffers they held.
pub fn local_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_gzip()
        .no_brotli()
        .no_deflate()
        .no_zstd()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .pool_max_idle_per_host(IDLE_CONNECTIONS)
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// The URL `path` resolves to under `base`, or `None` if it would leave `base`'s origin or
/// path prefix (`..` above the base path, a userinfo). The path itself was checked when it
/// became a [`LocalPath`]; this is the second, independent check on the final URL.
pub fn target_url(base: &Url, path: &LocalPath) -> Option<Url> {
    let prefix = base.as_str().trim_end_matches('/');
    let url = Url::parse(&format!("{prefix}{path}")).ok()?;
    let same_origin = url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default();
    let base_path = base.path().trim_end_matches('/');
    (same_origin && url.path().starts_with(base_path) && url.username().is_empty()).then_some(url)
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Nothing reached the local server (connection refused): safe to retry. `request` is the
    /// request given back when its body can still be sent (in memory, or a stream not yet read).
    #[error("cannot reach the local service: {message}")]
    Connect {
        /// What failed.
        message: String,
        /// The request, when it can be sent again.
        request: Option<HttpRequest>,
    },
    /// The exchange failed after the request may have been sent (a reset pooled connection of
    /// a server that just died, a request body that failed or ended short): only idempotent
    /// requests may be retried, and only when `request` came back.
    #[error("the local service failed after the request may have been sent: {message}")]
    Lost {
        /// What failed.
        message: String,
        /// The request, when it can be sent again.
        request: Option<HttpRequest>,
    },
    /// Any other failure, already turned into the reply to send (400 `invalid request path`,
    /// 502 `failed to create request`).
    #[error("the request cannot be forwarded (answered {})", .0.status)]
    Reply(HttpResponse),
}

impl ForwardError {
    /// The reply for the tunnel: the prepared one, or 502 `local service error: <message>`.
    pub fn into_reply(self) -> HttpResponse {
        match self {
            Self::Reply(r) => r,
            Self::Connect { message, .. } | Self::Lost { message, .. } => {
                HttpResponse::text(502, &format!("local service error: {message}"))
            }
        }
    }
}

/// Forwards tunnel HTTP requests to a local server.
#[derive(Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    auth: Option<HeaderValue>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("auth", &self.auth.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new(local_client(), None)
    }
}

impl Forwarder {
    /// A forwarder sending through `client` (see [`local_client`]), replacing `Authorization`
    /// with `auth` on every request when set.
    pub fn new(client: reqwest::Client, auth: Option<HeaderValue>) -> Self {
        Self { client, auth }
    }

    /// Forwards one request to the server at `base` (e.g. `http://127.0.0.1:4096`). A body in
    /// memory is sent as is; a streamed body is sent with `Content-Length` = its announced
    /// length (never chunked), chunk by chunk as the local server reads it; one that fails or
    /// ends short aborts the request, so the local server never sees a complete request.
    pub async fn forward(
        &self,
        base: &Url,
        request: HttpRequest,
    ) -> Result<HttpResponse, ForwardError> {
        let Some(url) = target_url(base, &request.path) else {
            return Err(ForwardError::Reply(HttpResponse::text(
                400,
                "invalid request path",
            )));
        };
        let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
            return Err(ForwardError::Reply(HttpResponse::text(
                502,
                "failed to create request",
            )));
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &request.headers {
            if is_hop(name, HOP_REQUEST_HEADERS) {
                continue;
            }
            let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) else {
                return Err(ForwardError::Reply(HttpResponse::text(
                    502,
                    "failed to create request",
                )));
            };
            headers.insert(n, v);
        }
        if let Some(auth) = &self.auth {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        let HttpRequest {
            method: method_text,
            path,
            headers: request_headers,
            body,
        } = request;
        let len = body.len();
        let (send_body, kept) = match body.as_bytes() {
            Some(bytes) => (reqwest::Body::from(bytes.clone()), Kept::Bytes(body)),
            None => {
                // reqwest sends a stream chunked unless the length is set: set it.
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                let slot = Arc::new(Mutex::new(Some(body.into_stream())));
                let stream = TakeOnPoll {
                    slot: Arc::clone(&slot),
                    taken: None,
                };
                (reqwest::Body::wrap_stream(stream), Kept::Slot(slot))
            }
        };
        let result = self
            .client
            .request(method, url)
            .headers(headers)
            .body(send_body)
            .send()
            .await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                let message = error_chain(&e);
                let body = match kept {
                    Kept::Bytes(b) => Some(b),
                    Kept::Slot(slot) => slot
                        .lock()
                        .ok()
                        .and_then(|mut s| s.take())
                        .map(|s| RequestBody::from_stream(len, s)),
                };
                let request = body.map(|body| HttpRequest {
                    method: method_text,
                    path,
                    headers: request_headers,
                    body,
                });
                return Err(if e.is_connect() {
                    ForwardError::Connect { message, request }
                } else {
                    ForwardError::Lost { message, request }
                });
            }
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter(|(k, _)| !is_hop(k.as_str(), HOP_RESPONSE_HEADERS))
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .bytes_stream()
            .map_err(|e| std::io::Error::other(error_chain(&e)))
            .boxed();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// What the forwarder keeps of a request body to give it back after a failed send.
enum Kept {
    Bytes(RequestBody),
    Slot(Arc<Mutex<Option<HttpBody>>>),
}

/// A body stream left in `slot` until the HTTP client first reads it, so a request that never
/// reached the server keeps its (unread) body and can be sent again.
struct TakeOnPoll {
    slot: Arc<Mutex<Option<HttpBody>>>,
    taken: Option<HttpBody>,
}

impl Stream for TakeOnPoll {
    type Item = Result<bytes::Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.taken.is_none() {
            let taken = self.slot.lock().ok().and_then(|mut s| s.take());
            self.taken = taken;
        }
        match self.taken.as_mut() {
            Some(s) => s.as_mut().poll_next(cx),
            None => Poll::Ready(Some(Err(std::io::Error::other(
                "request body already taken",
            )))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(base: &Url, path: &str) -> Option<Url> {
        LocalPath::parse(path)
            .ok()
            .and_then(|p| target_url(base, &p))
    }

    /// Moved from `backends/opencode/src/proxy.rs`. The raw strings that are not paths
    /// (`http://evil/x`, `@evil.example/x`) now become local paths first (`LocalPath::parse`
    /// adds the `/`), so they stay on the local server instead of being refused.
    #[test]
    fn targets_stay_on_the_local_server() {
        let base = Url::parse("http://127.0.0.1:4096").unwrap();
        assert_eq!(
            target(&base, "/session?directory=/x").unwrap().as_str(),
            "http://127.0.0.1:4096/session?directory=/x"
        );
        assert_eq!(
            target(&base, "/").unwrap().as_str(),
            "http://127.0.0.1:4096/"
        );
        assert!(target(&base, "//evil.example/x").is_none());
        assert!(target(&base, "/\\evil/x").is_none());
        for raw in ["http://evil/x", "@evil.example/x", ""] {
            assert_eq!(
                target(&base, raw).unwrap().host_str(),
                Some("127.0.0.1"),
                "{raw:?}"
            );
        }
        // `/@evil` is a path on the local server, not a userinfo.
        assert_eq!(
            target(&base, "/@evil.example/x").unwrap().host_str(),
            Some("127.0.0.1")
        );
        let prefixed = Url::parse("http://127.0.0.1:4096/oc/").unwrap();
        assert!(target(&prefixed, "/../admin").is_none());
        assert_eq!(
            target(&prefixed, "/event").unwrap().as_str(),
            "http://127.0.0.1:4096/oc/event"
        );
    }

    /// Moved from `backends/opencode/src/proxy.rs`; the host's copy of the list is gone.
    #[test]
    fn hop_headers() {
        assert!(is_hop("Connection", HOP_REQUEST_HEADERS));
        assert!(is_hop("HOST", HOP_REQUEST_HEADERS));
        assert!(is_hop("content-length", HOP_REQUEST_HEADERS));
        assert!(!is_hop("Authorization", HOP_REQUEST_HEADERS));
        assert!(!is_hop("Content-Length", HOP_RESPONSE_HEADERS));
    }
}
