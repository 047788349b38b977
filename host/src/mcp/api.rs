//! The few agent-facing server endpoints the MCP tools call (spec §14), Bearer-authenticated.

use std::time::Duration;

use serde_json::Value;

use crate::secret::Secret;

/// Timeout of one tool's HTTP call (spec §10.2).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout of one agent-listing fetch (spec §10.2).
pub const LISTING_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the server failed. `Display` is the text after `Failed to <verb>: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The server answered with a status >= 400; `body` is its body verbatim.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The response body (server error bodies are plain text).
        body: String,
    },
    /// No usable response: connect, timeout or read failure (the error chain, joined by `: `).
    #[error("{0}")]
    Transport(String),
}

/// An HTTP client for `{server}/api/agent/...` with the sandbox's Bearer token.
#[derive(Debug, Clone)]
pub struct WorkspaceApi {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl WorkspaceApi {
    /// A client for `base` (no trailing `/`) that sends `token` as Bearer.
    pub fn new(base: impl Into<String>, token: Secret) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.into(),
            token,
        }
    }

    /// `GET {base}{path}`; returns the body of a < 400 response.
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<String, ApiError> {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req, timeout).await
    }

    /// `POST {base}{path}` with a JSON body; returns the body of a < 400 response.
    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<String, ApiError> {
        let req = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(req, timeout).await
    }

    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<String, ApiError> {
        let request = req.bearer_auth(self.token.expose()).timeout(timeout);
        let (status, bytes) = crate::http::send_and_read(request)
            .await
            .map_err(|err| ApiError::Transport(err.to_string()))?;
        let status = status.as_u16();
        let body = String::from_utf8_lossy(&bytes).into_owned();
        if status >= 400 {
            return Err(ApiError::Status { status, body });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_error_text_is_upstreams() {
        let err = ApiError::Status {
            status: 404,
            body: "task not found\n".into(),
        };
        assert_eq!(err.to_string(), "HTTP 404: task not found\n");
    }

    #[tokio::test]
    async fn connection_refused_is_a_transport_error() {
        // Bind then drop to get a port with nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let api = WorkspaceApi::new(format!("http://127.0.0.1:{port}"), Secret::new("t"));
        let err = api
            .get("/api/agent/discovery/agents", Duration::from_secs(5))
            .await
            .unwrap_err();
        let ApiError::Transport(text) = err else {
            panic!("expected a transport error, got {err:?}");
        };
        assert!(text.contains("/api/agent/discovery/agents"), "{text}");
    }
}
