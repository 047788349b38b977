//! `POST /api/agent/register` (spec §3.1) over real sockets: success and every error.

use crate::common;

use common::*;
use serde_json::Value;

#[tokio::test]
async fn login_then_register_creates_a_sandbox() {
    let mock = start().await;
    let c = client();
    let tok = login(&c, &mock.url()).await;
    let access = tok["access_token"].as_str().unwrap();
    let resp = register_raw(
        &c,
        &mock.url(),
        access,
        r#"{"name":"box","type":"claudecode"}"#,
    )
    .await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    let sandbox_id = body["sandbox_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(sandbox_id).is_ok());
    assert!(is_token(body["tunnel_token"].as_str().unwrap()));
    assert!(is_token(body["proxy_token"].as_str().unwrap()));
    assert_ne!(body["tunnel_token"], body["proxy_token"]);
    let short = body["short_id"].as_str().unwrap();
    assert_eq!(short.len(), 8);
    assert!(
        short
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    );
    assert_eq!(
        body["workspace_id"],
        mock.state().default_workspace_id().as_str()
    );
    assert_eq!(body.as_object().unwrap().len(), 5);

    let sb = mock.state().sandbox(sandbox_id).unwrap();
    assert_eq!(sb.name, "box");
    assert_eq!(sb.sandbox_type, "claudecode");
    assert_eq!(sb.short_id, short);
    assert_eq!(sb.status, "offline");

    // Every registration is a new sandbox.
    let resp = register_raw(
        &c,
        &mock.url(),
        access,
        r#"{"name":"box","type":"claudecode"}"#,
    )
    .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(mock.state().sandboxes().len(), 2);

    // The request was recorded with its headers and body.
    let reqs = mock.state().requests_to("POST", "/api/agent/register");
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {access}").as_str())
    );
    assert_eq!(reqs[0].json().unwrap()["type"], "claudecode");
}

#[tokio::test]
async fn defaults_and_custom_type() {
    let mock = start().await;
    let c = client();
    let token = mock
        .state()
        .issue_access_token(Some("ws-1"), &["agent:register"], "developer");
    let resp = register_raw(&c, &mock.url(), &token, "{}").await;
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["workspace_id"], "ws-1");
    let sb = mock
        .state()
        .sandbox(body["sandbox_id"].as_str().unwrap())
        .unwrap();
    assert_eq!(sb.name, "Local Agent");
    assert_eq!(sb.sandbox_type, "opencode");
    assert_eq!(sb.role, "developer");

    let resp = register_raw(&c, &mock.url(), &token, r#"{"name":"x","type":"custom"}"#).await;
    assert_eq!(resp.status(), 201);
}

#[tokio::test]
async fn authorization_errors() {
    let mock = start().await;
    let c = client();
    let url = format!("{}/api/agent/register", mock.url());
    let resp = c.post(&url).body("{}").send().await.unwrap();
    assert_text_error(resp, 401, "missing or invalid Authorization header").await;
    let resp = c
        .post(&url)
        .header("authorization", "Basic abc")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_text_error(resp, 401, "missing or invalid Authorization header").await;

    let resp = register_raw(&c, &mock.url(), "0123456789abcdef0123456789abcdef", "{}").await;
    assert_text_error(resp, 401, "invalid or expired token").await;

    let state = mock.state();
    let token = state.issue_access_token(Some("ws"), &["openid", "agent:register"], "owner");
    state.expire_access_tokens();
    assert!(!state.access_token_active(&token));
    let resp = register_raw(&c, &mock.url(), &token, "{}").await;
    assert_text_error(resp, 401, "invalid or expired token").await;
}

#[tokio::test]
async fn server_side_errors() {
    let mock = start().await;
    let c = client();
    let state = mock.state();
    let token = state.issue_access_token(Some("ws"), &["agent:register"], "owner");

    state.set_oauth_configured(false);
    assert_text_error(
        register_raw(&c, &mock.url(), &token, "{}").await,
        503,
        "OAuth not configured",
    )
    .await;
    state.set_oauth_configured(true);

    state.set_introspection_fails(true);
    assert_text_error(
        register_raw(&c, &mock.url(), &token, "{}").await,
        500,
        "token introspection failed",
    )
    .await;
    state.set_introspection_fails(false);

    state.set_register_fails(true);
    assert_text_error(
        register_raw(&c, &mock.url(), &token, "{}").await,
        500,
        "failed to register agent",
    )
    .await;
    state.set_register_fails(false);

    assert_eq!(
        register_raw(&c, &mock.url(), &token, "{}").await.status(),
        201
    );
}

#[tokio::test]
async fn claim_errors() {
    let mock = start().await;
    let c = client();
    let state = mock.state();

    let no_scope = state.issue_access_token(Some("ws"), &["openid", "profile"], "owner");
    assert_text_error(
        register_raw(&c, &mock.url(), &no_scope, "{}").await,
        403,
        "insufficient scope: agent:register required",
    )
    .await;

    let no_ws = state.issue_access_token(None, &["agent:register"], "owner");
    assert_text_error(
        register_raw(&c, &mock.url(), &no_ws, "{}").await,
        400,
        "token missing workspace_id claim",
    )
    .await;

    for role in ["guest", ""] {
        let t = state.issue_access_token(Some("ws"), &["agent:register"], role);
        assert_text_error(
            register_raw(&c, &mock.url(), &t, "{}").await,
            403,
            "no permission to register agent in this workspace",
        )
        .await;
    }
    assert!(state.sandboxes().is_empty());
}

#[tokio::test]
async fn body_errors() {
    let mock = start().await;
    let c = client();
    let token = mock
        .state()
        .issue_access_token(Some("ws"), &["agent:register"], "owner");
    assert_text_error(
        register_raw(&c, &mock.url(), &token, "not json").await,
        400,
        "bad request",
    )
    .await;
    assert_text_error(
        register_raw(&c, &mock.url(), &token, r#"{"name":"x","type":"vim"}"#).await,
        400,
        "invalid type: must be opencode, claudecode, or custom",
    )
    .await;
    assert!(mock.state().sandboxes().is_empty());
}
