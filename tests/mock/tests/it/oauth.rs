//! Device flow and token endpoint (spec §2) over real sockets.

use crate::common;

use agentserver_mock::{DeviceOutcome, MockConfig};
use common::*;
use serde_json::Value;

#[tokio::test]
async fn device_auth_answers_all_fields() {
    let mock = start().await;
    let c = client();
    let auth = device_auth(&c, &mock.url()).await;
    assert!(is_token(auth["device_code"].as_str().unwrap()));
    let user_code = auth["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 8);
    let verify = format!("{}/oauth2/device/verify", mock.url());
    assert_eq!(auth["verification_uri"], verify.as_str());
    assert_eq!(
        auth["verification_uri_complete"],
        format!("{verify}?user_code={user_code}").as_str()
    );
    assert_eq!(auth["expires_in"], 600);
    assert_eq!(auth["interval"], 1);

    // The request was recorded as a form.
    let reqs = mock.state().requests_to("POST", "/api/oauth2/device/auth");
    assert_eq!(reqs.len(), 1);
    let form = reqs[0].form();
    assert!(form.contains(&("client_id".into(), CLIENT_ID.into())));
    assert!(form.contains(&("scope".into(), SCOPES.into())));

    // The verification page exists.
    let page = c
        .get(auth["verification_uri_complete"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains(user_code));
}

#[tokio::test]
async fn device_auth_checks_client_and_scope() {
    let mock = start().await;
    let c = client();
    let url = format!("{}/api/oauth2/device/auth", mock.url());
    let resp = c
        .post(&url)
        .form(&[("client_id", "someone-else"), ("scope", SCOPES)])
        .send()
        .await
        .unwrap();
    assert_oauth_error(resp, 401, "invalid_client").await;
    let resp = c
        .post(&url)
        .form(&[("client_id", CLIENT_ID), ("scope", "openid admin")])
        .send()
        .await
        .unwrap();
    assert_oauth_error(resp, 400, "invalid_scope").await;
}

#[tokio::test]
async fn pending_until_the_nth_poll_then_tokens_then_used() {
    let mock = start_with(MockConfig {
        approve_after_polls: 3,
        ..MockConfig::default()
    })
    .await;
    let c = client();
    let auth = device_auth(&c, &mock.url()).await;
    let code = auth["device_code"].as_str().unwrap();
    for _ in 0..2 {
        assert_oauth_error(
            poll_token(&c, &mock.url(), code).await,
            400,
            "authorization_pending",
        )
        .await;
    }
    let resp = poll_token(&c, &mock.url(), code).await;
    assert_eq!(resp.status(), 200);
    let tok: Value = resp.json().await.unwrap();
    let access = tok["access_token"].as_str().unwrap();
    assert!(is_token(access));
    assert!(is_token(tok["refresh_token"].as_str().unwrap()));
    assert_eq!(tok["token_type"], "bearer");
    assert_eq!(tok["expires_in"], 3600);
    assert_eq!(tok["scope"], SCOPES);
    assert_eq!(
        mock.state()
            .device_polls(auth["user_code"].as_str().unwrap()),
        Some(3)
    );

    let info = mock.state().access_token_info(access).unwrap();
    assert_eq!(info.workspace_id, Some(mock.state().default_workspace_id()));
    assert_eq!(info.role, "owner");
    assert!(info.scopes.iter().any(|s| s == "agent:register"));

    // A used device code is gone.
    assert_oauth_error(
        poll_token(&c, &mock.url(), code).await,
        400,
        "invalid_grant",
    )
    .await;
}

#[tokio::test]
async fn slow_down_polls_come_first() {
    let mock = start_with(MockConfig {
        slow_down_polls: 2,
        ..MockConfig::default()
    })
    .await;
    let c = client();
    let auth = device_auth(&c, &mock.url()).await;
    let code = auth["device_code"].as_str().unwrap();
    for _ in 0..2 {
        assert_oauth_error(poll_token(&c, &mock.url(), code).await, 400, "slow_down").await;
    }
    assert_eq!(poll_token(&c, &mock.url(), code).await.status(), 200);
}

#[tokio::test]
async fn denied_and_expired_outcomes() {
    for (outcome, error) in [
        (DeviceOutcome::Deny, "access_denied"),
        (DeviceOutcome::Expire, "expired_token"),
    ] {
        let mock = start_with(MockConfig {
            device_outcome: outcome,
            approve_after_polls: 2,
            ..MockConfig::default()
        })
        .await;
        let c = client();
        let auth = device_auth(&c, &mock.url()).await;
        let code = auth["device_code"].as_str().unwrap();
        assert_oauth_error(
            poll_token(&c, &mock.url(), code).await,
            400,
            "authorization_pending",
        )
        .await;
        assert_oauth_error(poll_token(&c, &mock.url(), code).await, 400, error).await;
    }
}

#[tokio::test]
async fn device_code_expires_after_expires_in() {
    let mock = start_with(MockConfig {
        device_expires_in_secs: 0,
        ..MockConfig::default()
    })
    .await;
    let c = client();
    let auth = device_auth(&c, &mock.url()).await;
    assert_eq!(auth["expires_in"], 0);
    let code = auth["device_code"].as_str().unwrap();
    assert_oauth_error(
        poll_token(&c, &mock.url(), code).await,
        400,
        "expired_token",
    )
    .await;
}

#[tokio::test]
async fn token_endpoint_rejects_bad_requests() {
    let mock = start().await;
    let c = client();
    let url = format!("{}/api/oauth2/token", mock.url());
    assert_oauth_error(
        poll_token(&c, &mock.url(), "nope").await,
        400,
        "invalid_grant",
    )
    .await;
    let resp = c
        .post(&url)
        .form(&[("grant_type", DEVICE_GRANT), ("client_id", CLIENT_ID)])
        .send()
        .await
        .unwrap();
    assert_oauth_error(resp, 400, "invalid_request").await;
    let resp = c
        .post(&url)
        .form(&[("client_id", CLIENT_ID)])
        .send()
        .await
        .unwrap();
    assert_oauth_error(resp, 400, "invalid_request").await;
    let resp = c
        .post(&url)
        .form(&[("grant_type", "password"), ("client_id", CLIENT_ID)])
        .send()
        .await
        .unwrap();
    assert_oauth_error(resp, 400, "unsupported_grant_type").await;
    let resp = c
        .post(&url)
        .form(&[
            ("grant_type", DEVICE_GRANT),
            ("client_id", "other"),
            ("device_code", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_oauth_error(resp, 401, "invalid_client").await;
}

async fn refresh(c: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
    c.post(format!("{url}/api/oauth2/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("refresh_token", token),
        ])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn refresh_rotates_the_refresh_token() {
    let mock = start().await;
    let c = client();
    let first = login(&c, &mock.url()).await;
    let old_refresh = first["refresh_token"].as_str().unwrap();

    let resp = refresh(&c, &mock.url(), old_refresh).await;
    assert_eq!(resp.status(), 200);
    let second: Value = resp.json().await.unwrap();
    let new_refresh = second["refresh_token"].as_str().unwrap();
    assert_ne!(new_refresh, old_refresh);
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(second["scope"], SCOPES);
    let state = mock.state();
    assert!(!state.refresh_token_valid(old_refresh));
    assert!(state.refresh_token_valid(new_refresh));
    // The new access token keeps the claims.
    let info = state
        .access_token_info(second["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(info.workspace_id, Some(state.default_workspace_id()));

    // The rotated-out token no longer works; the new one does.
    assert_oauth_error(
        refresh(&c, &mock.url(), old_refresh).await,
        400,
        "invalid_grant",
    )
    .await;
    assert_eq!(refresh(&c, &mock.url(), new_refresh).await.status(), 200);
    assert_oauth_error(
        refresh(&c, &mock.url(), "unknown").await,
        400,
        "invalid_grant",
    )
    .await;
}

#[tokio::test]
async fn revoked_refresh_tokens_fail() {
    let mock = start().await;
    let c = client();
    let tok = login(&c, &mock.url()).await;
    let rt = tok["refresh_token"].as_str().unwrap();
    mock.state().revoke_refresh_tokens();
    assert_oauth_error(refresh(&c, &mock.url(), rt).await, 400, "invalid_grant").await;

    let (_, rt2) = mock
        .state()
        .issue_token_pair(Some("ws"), &["agent:register"], "owner");
    mock.state().revoke_refresh_token(&rt2);
    assert_oauth_error(refresh(&c, &mock.url(), &rt2).await, 400, "invalid_grant").await;
}

#[tokio::test]
async fn oauth_not_configured_is_503() {
    let mock = start().await;
    mock.state().set_oauth_configured(false);
    let c = client();
    let resp = c
        .post(format!("{}/api/oauth2/device/auth", mock.url()))
        .form(&[("client_id", CLIENT_ID), ("scope", SCOPES)])
        .send()
        .await
        .unwrap();
    assert_text_error(resp, 503, "OAuth not configured").await;
    let resp = poll_token(&c, &mock.url(), "x").await;
    assert_text_error(resp, 503, "OAuth not configured").await;
}
