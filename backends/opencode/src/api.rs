//! A small client for the opencode server's HTTP API: health, sessions, prompts, aborts,
//! permission answers and the `/event` stream. Every call carries Basic `opencode:<token>`
//! when a password is configured.

use std::time::Duration;

use base64::Engine;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::Value;
use url::Url;

use crate::config::Token;

/// Errors of the API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request could not be sent or its answer not read.
    #[error("{what}: {message}")]
    Transport {
        /// Which call failed.
        what: &'static str,
        /// Why, with the error chain.
        message: String,
        /// True when nothing reached the server (connection refused, …): safe to retry.
        connect: bool,
    },
    /// The server answered with an unexpected status.
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        /// Which call failed.
        what: &'static str,
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The answer was not the JSON expected.
    #[error("{what}: unexpected answer: {message}")]
    Decode {
        /// Which call failed.
        what: &'static str,
        /// What was wrong.
        message: String,
    },
}

/// Renders an error with its sources (`a: b: c`): the workspace's one, in
/// `agentserver_common::forward`.
pub use agentserver_common::forward::error_chain;

/// `Authorization: Basic base64("opencode:" + token)`.
pub fn basic_auth(token: &Token) -> Option<HeaderValue> {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("opencode:{}", token.expose()));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// The answer of `GET /global/health`.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    /// `healthy`.
    pub healthy: bool,
    /// `version`.
    pub version: String,
}

/// The HTTP client for one opencode server (the base URL is passed per call: it changes when
/// an auto-started server is restarted on another port).
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    auth: Option<HeaderValue>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("auth", &self.auth.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// An HTTP client that never decompresses bodies and never follows redirects, with no overall
/// timeout (SSE) but a connect timeout: `agentserver_common::forward::local_client`, shared by
/// the API calls and the tunnel's forwarder.
pub fn http_client() -> reqwest::Client {
    agentserver_common::forward::local_client()
}

impl Api {
    /// A client sending `token` (if any) as Basic auth.
    pub fn new(token: Option<&Token>) -> Self {
        Self {
            client: http_client(),
            auth: token.and_then(basic_auth),
        }
    }

    /// The underlying HTTP client (shared with the tunnel proxy).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The Basic auth header, when a token is set.
    pub fn auth(&self) -> Option<&HeaderValue> {
        self.auth.as_ref()
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let mut rb = self.client.request(method, url);
        if let Some(auth) = &self.auth {
            rb = rb.header(AUTHORIZATION, auth.clone());
        }
        rb
    }

    async fn send(
        what: &'static str,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let response = rb.send().await.map_err(|e| ApiError::Transport {
            what,
            message: error_chain(&e),
            connect: e.is_connect(),
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        Err(ApiError::Status {
            what,
            status,
            body: body.chars().take(500).collect(),
        })
    }

    async fn json(what: &'static str, rb: reqwest::RequestBuilder) -> Result<Value, ApiError> {
        let response = Self::send(what, rb).await?;
        response.json().await.map_err(|e| ApiError::Decode {
            what,
            message: error_chain(&e),
        })
    }

    /// `POST url?directory=D` with an optional JSON `body`, ignoring the answer's body.
    async fn post_in_directory(
        &self,
        what: &'static str,
        url: Url,
        directory: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let mut rb = self
            .request(reqwest::Method::POST, url)
            .query(&[("directory", directory)])
            .timeout(timeout);
        if let Some(body) = body {
            rb = rb.json(body);
        }
        Self::send(what, rb).await?;
        Ok(())
    }

    /// `GET /global/health` with `timeout`.
    pub async fn health(&self, base: &Url, timeout: Duration) -> Result<Health, ApiError> {
        const WHAT: &str = "GET /global/health";
        let url = join(base, "/global/health");
        let v = Self::json(
            WHAT,
            self.request(reqwest::Method::GET, url).timeout(timeout),
        )
        .await?;
        Ok(Health {
            healthy: v["healthy"].as_bool().unwrap_or(false),
            version: v["version"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// `POST /session?directory=D` with a title; returns the session id.
    pub async fn create_session(
        &self,
        base: &Url,
        directory: &str,
        title: &str,
        timeout: Duration,
    ) -> Result<String, ApiError> {
        const WHAT: &str = "POST /session";
        let rb = self
            .request(reqwest::Method::POST, join(base, "/session"))
            .query(&[("directory", directory)])
            .json(&serde_json::json!({ "title": title }))
            .timeout(timeout);
        let v = Self::json(WHAT, rb).await?;
        v["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::Decode {
                what: WHAT,
                message: "no session id".into(),
            })
    }

    /// `POST /session/{id}/prompt_async?directory=D` with `body` (answers 204 at once).
    pub async fn prompt_async(
        &self,
        base: &Url,
        session: &str,
        directory: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let path = format!("/session/{session}/prompt_async");
        self.post_in_directory(
            "POST /session/{id}/prompt_async",
            join(base, &path),
            directory,
            Some(body),
            timeout,
        )
        .await
    }

    /// `POST /session/{id}/abort?directory=D`.
    pub async fn abort(
        &self,
        base: &Url,
        session: &str,
        directory: &str,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let url = join(base, &format!("/session/{session}/abort"));
        self.post_in_directory("POST /session/{id}/abort", url, directory, None, timeout)
            .await
    }

    /// `POST /permission/{id}/reply` with `{"reply": reply}` (`once`, `always`, `reject`).
    pub async fn reply_permission(
        &self,
        base: &Url,
        id: &str,
        directory: &str,
        reply: &str,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let body = serde_json::json!({ "reply": reply });
        self.post_in_directory(
            "POST /permission/{id}/reply",
            join(base, &format!("/permission/{id}/reply")),
            directory,
            Some(&body),
            timeout,
        )
        .await
    }

    /// `POST /question/{id}/reject`.
    pub async fn reject_question(
        &self,
        base: &Url,
        id: &str,
        directory: &str,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let url = join(base, &format!("/question/{id}/reject"));
        self.post_in_directory("POST /question/{id}/reject", url, directory, None, timeout)
            .await
    }

    /// `GET /event?directory=D`: the SSE stream of that directory's events (no timeout).
    pub async fn events(&self, base: &Url, directory: &str) -> Result<reqwest::Response, ApiError> {
        let rb = self
            .request(reqwest::Method::GET, join(base, "/event"))
            .query(&[("directory", directory)])
            .header(reqwest::header::ACCEPT, "text/event-stream");
        Self::send("GET /event", rb).await
    }
}

/// `base` with `path` (which starts with `/`) appended to its path.
pub fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    url.set_path(&format!("{prefix}{path}"));
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_paths() {
        let base = Url::parse("http://127.0.0.1:4096").unwrap();
        assert_eq!(
            join(&base, "/global/health").as_str(),
            "http://127.0.0.1:4096/global/health"
        );
        let base = Url::parse("http://h:1/prefix/").unwrap();
        assert_eq!(join(&base, "/event").as_str(), "http://h:1/prefix/event");
    }

    #[test]
    fn basic_auth_header() {
        let v = basic_auth(&Token::new("pw")).unwrap();
        // base64("opencode:pw")
        assert_eq!(v.to_str().unwrap(), "Basic b3BlbmNvZGU6cHc=");
        assert!(v.is_sensitive());
        let api = Api::new(Some(&Token::new("pw")));
        assert!(!format!("{api:?}").contains("b3Bl"));
    }
}
