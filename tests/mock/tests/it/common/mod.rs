//! Helpers shared by the mock's tests.

use std::time::Duration;

use agentserver_mock::{MockConfig, MockServer};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

/// The device-code grant type.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The agent CLI's client id.
pub const CLIENT_ID: &str = "agentserver-agent-cli";
/// The agent CLI's scopes.
pub const SCOPES: &str = "openid profile agent:register";

/// A client with a generous timeout (nothing here should take long).
pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("client")
}

/// Starts a mock with the default config.
pub async fn start() -> MockServer {
    start_with(MockConfig::default()).await
}

/// Starts a mock with `config`.
pub async fn start_with(config: MockConfig) -> MockServer {
    MockServer::start(config).await.expect("start mock")
}

/// Asserts a Go `http.Error` style response: status, `text/plain`, body `message\n`.
pub async fn assert_text_error(resp: Response, status: u16, message: &str) {
    assert_eq!(
        resp.status(),
        StatusCode::from_u16(status).unwrap(),
        "status for {message:?}"
    );
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
    assert_eq!(resp.text().await.unwrap(), format!("{message}\n"));
}

/// Asserts a Hydra style OAuth error: status and `{"error": error}`.
pub async fn assert_oauth_error(resp: Response, status: u16, error: &str) {
    assert_eq!(resp.status().as_u16(), status, "status for {error}");
    let body: Value = resp.json().await.expect("json error body");
    assert_eq!(body["error"], error, "body {body}");
}

/// `POST /api/oauth2/device/auth` with the CLI's client id and scopes; returns the JSON.
pub async fn device_auth(c: &Client, url: &str) -> Value {
    let resp = c
        .post(format!("{url}/api/oauth2/device/auth"))
        .form(&[("client_id", CLIENT_ID), ("scope", SCOPES)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// One device-code token poll.
pub async fn poll_token(c: &Client, url: &str, device_code: &str) -> Response {
    c.post(format!("{url}/api/oauth2/token"))
        .form(&[
            ("grant_type", DEVICE_GRANT),
            ("client_id", CLIENT_ID),
            ("device_code", device_code),
        ])
        .send()
        .await
        .unwrap()
}

/// Runs the device flow (approve on the first poll) and returns the token JSON.
pub async fn login(c: &Client, url: &str) -> Value {
    let auth = device_auth(c, url).await;
    let resp = poll_token(c, url, auth["device_code"].as_str().unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

/// `POST /api/agent/register` with a Bearer token and a JSON body.
pub async fn register_raw(c: &Client, url: &str, token: &str, body: &str) -> Response {
    c.post(format!("{url}/api/agent/register"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// Whether `s` is 32 lowercase hex chars.
pub fn is_token(s: &str) -> bool {
    s.len() == 32
        && s.chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}
