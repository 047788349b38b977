//! Forwarding tunnel HTTP requests to a local HTTP server (what upstream's opencode `connect`
//! does, spec §6.4.2 step 3): no timeout (SSE), no decompression, single-valued headers,
//! optional `Authorization: Basic opencode:<token>`, the body streamed back as it arrives.

use agentserver_plugin_api::{
    Backend, BackendError, BackendInfo, EventSink, HttpRequest, HttpResponse, SessionType, Task,
    TaskOutcome,
};
use async_trait::async_trait;
use base64::Engine;
use futures_util::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use crate::secret::Secret;

/// Request headers never copied to the local request: they describe the hop, not the request
/// (the HTTP client sets its own).
const HOP_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "proxy-connection",
    "te",
    "trailer",
];

/// Forwards tunnel HTTP requests to `base_url`.
#[derive(Clone, Debug)]
pub struct HttpProxy {
    base_url: String,
    basic_token: Option<Secret>,
    client: reqwest::Client,
}

impl HttpProxy {
    /// A proxy to `base_url` (e.g. `http://127.0.0.1:4096`; a trailing `/` is ignored).
    pub fn new(base_url: impl Into<String>) -> Self {
        // The target is a local server: never route it (and its Basic token) through an
        // HTTP(S)_PROXY from the environment.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            basic_token: None,
            client,
        }
    }

    /// Replaces `Authorization` with `Basic base64("opencode:" + token)` on every request
    /// (upstream's `--opencode-token`).
    pub fn with_basic_token(mut self, token: Secret) -> Self {
        self.basic_token = Some(token);
        self
    }

    /// Forwards one request. Failures become the upstream error replies: 502
    /// `invalid local URL`, `failed to create request` or `local service error: <err>`.
    pub async fn forward(&self, request: HttpRequest) -> HttpResponse {
        // Defence in depth: `forward` is public, so it re-checks what `validate_path` checks
        // for tunnel streams. Only a path on `base_url` itself may be reached.
        let path = &request.path;
        if !path.starts_with('/') || path.starts_with("//") || path.starts_with("/\\") {
            return HttpResponse::text(400, "invalid request path");
        }
        let target = format!("{}{}", self.base_url, path);
        let Ok(url) = reqwest::Url::parse(&target) else {
            return HttpResponse::text(502, "invalid local URL");
        };
        let same_origin = reqwest::Url::parse(&self.base_url).is_ok_and(|base| {
            base.scheme() == url.scheme()
                && base.host_str() == url.host_str()
                && base.port_or_known_default() == url.port_or_known_default()
                && url.username().is_empty()
        });
        if !same_origin {
            return HttpResponse::text(400, "invalid request path");
        }
        let Ok(method) = reqwest::Method::from_bytes(request.method.as_bytes()) else {
            return HttpResponse::text(502, "failed to create request");
        };
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &request.headers {
            if HOP_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                continue;
            }
            let (Ok(n), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(value),
            ) else {
                return HttpResponse::text(502, "failed to create request");
            };
            headers.insert(n, v);
        }
        if let Some(token) = &self.basic_token {
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(format!("opencode:{}", token.expose()));
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&format!("Basic {encoded}")) {
                headers.insert(reqwest::header::AUTHORIZATION, v);
            }
        }
        let result = self
            .client
            .request(method, url)
            .headers(headers)
            .body(request.body)
            .send()
            .await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                let message = format!("local service error: {}", error_chain(&e));
                return HttpResponse::text(502, &message);
            }
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .bytes_stream()
            .map_err(|e| std::io::Error::other(error_chain(&e)))
            .boxed();
        HttpResponse {
            status,
            headers,
            body,
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A backend that only proxies HTTP streams to a local server (tests, benchmarks, and a
/// template for backends that serve a web UI). Tasks fail: it runs none.
#[derive(Clone, Debug)]
pub struct HttpProxyBackend {
    proxy: HttpProxy,
}

impl HttpProxyBackend {
    /// A backend forwarding to `base_url`.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            proxy: HttpProxy::new(base_url),
        }
    }
}

#[async_trait]
impl Backend for HttpProxyBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: "http-proxy".into(),
            version: crate::VERSION.into(),
            session_type: SessionType::Custom,
        }
    }

    async fn execute(
        &self,
        _task: Task,
        _events: EventSink,
        _cancel: CancellationToken,
    ) -> TaskOutcome {
        TaskOutcome::failed(
            agentserver_plugin_api::FailureKind::System,
            "the http-proxy backend runs no tasks",
        )
    }

    async fn handle_http(&self, request: HttpRequest) -> Result<HttpResponse, BackendError> {
        Ok(self.proxy.forward(request).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forward_refuses_paths_that_leave_the_base() {
        // Nothing listens on port 9: a request that got through would answer 502, not 400.
        let proxy = HttpProxy::new("http://127.0.0.1:9/");
        for path in [
            "//evil.example/x",
            "/\\evil/x",
            "http://evil/x",
            "@evil/x",
            "",
        ] {
            let response = proxy
                .forward(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    headers: Vec::new(),
                    body: bytes::Bytes::new(),
                })
                .await;
            assert_eq!(response.status, 400, "{path:?}");
        }
    }
}
