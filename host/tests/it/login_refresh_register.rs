//! Token refresh (spec §2.6) and registration (§3.1) against the real mock agentserver.

use crate::support::auth_state as support_auth_state;

use agentserver::auth::{ReLoginReason, RegisterError};
use agentserver::secret::Secret;
use agentserver_mock::{MockConfig, MockServer};
use support_auth_state::{auth_in, credentials};

const SCOPES: &[&str] = &["openid", "profile", "agent:register"];

fn refresh_requests(mock: &MockServer) -> usize {
    mock.state()
        .requests_to("POST", "/api/oauth2/token")
        .iter()
        .filter(|r| {
            r.form()
                .iter()
                .any(|(k, v)| k == "grant_type" && v == "refresh_token")
        })
        .count()
}

#[tokio::test]
async fn expired_access_token_is_refreshed_once_and_rotation_is_stored() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let state = mock.state();
    let ws = state.default_workspace_id();
    let (old_access, old_refresh) = state.issue_token_pair(Some(&ws), SCOPES, "owner");
    let home = tempfile::tempdir().unwrap();
    let ctx = auth_in(home.path());
    ctx.credentials()
        .save(&credentials(&mock.url(), &old_access, &old_refresh, -60))
        .unwrap();

    let token = ctx.ensure_valid_token(&mock.url()).await.unwrap();
    assert_ne!(token.expose(), old_access);
    assert!(state.access_token_active(token.expose()));
    assert_eq!(refresh_requests(&mock), 1);
    let req = &state.requests_to("POST", "/api/oauth2/token")[0];
    let form = req.form();
    assert!(form.contains(&("client_id".into(), "agentserver-agent-cli".into())));
    assert!(form.contains(&("refresh_token".into(), old_refresh.clone())));

    let saved = ctx.credentials().load().unwrap().unwrap();
    assert_eq!(saved.access_token, token);
    assert_ne!(saved.refresh_token.expose(), old_refresh, "rotated");
    assert!(state.refresh_token_valid(saved.refresh_token.expose()));
    assert!(!state.refresh_token_valid(&old_refresh));
    assert!(saved.expires_at > agentserver::state::rfc3339::now_local());
    assert_eq!(saved.server_url, mock.url());
    assert_eq!(saved.scopes, SCOPES);

    // Now valid: no second refresh, the same token comes back.
    let again = ctx
        .ensure_valid_token(&format!("{}/", mock.url()))
        .await
        .unwrap();
    assert_eq!(again, token);
    assert_eq!(refresh_requests(&mock), 1);

    // And it registers.
    let sandbox = ctx
        .register(&mock.url(), &again, "box", "claudecode")
        .await
        .unwrap();
    let rec = state.sandbox(&sandbox.sandbox_id).unwrap();
    assert_eq!(rec.tunnel_token, sandbox.tunnel_token.expose());
    assert_eq!(rec.proxy_token, sandbox.proxy_token.expose());
    assert_eq!(rec.sandbox_type, "claudecode");
    assert_eq!(rec.name, "box");
    assert_eq!(sandbox.workspace_id, ws);
    assert_eq!(sandbox.short_id, rec.short_id);
    let reg = &state.requests_to("POST", "/api/agent/register")[0];
    assert_eq!(
        reg.header("authorization"),
        Some(format!("Bearer {}", again.expose()).as_str())
    );
    assert_eq!(
        reg.json().unwrap(),
        serde_json::json!({"name": "box", "type": "claudecode"})
    );
}

#[tokio::test]
async fn failed_refresh_needs_relogin_with_the_command() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let state = mock.state();
    let ws = state.default_workspace_id();
    let (access, refresh) = state.issue_token_pair(Some(&ws), SCOPES, "owner");
    state.revoke_refresh_tokens();
    let home = tempfile::tempdir().unwrap();
    let ctx = auth_in(home.path());
    ctx.credentials()
        .save(&credentials(&mock.url(), &access, &refresh, -1))
        .unwrap();
    let err = ctx.ensure_valid_token(&mock.url()).await.unwrap_err();
    assert!(
        matches!(&err.reason, ReLoginReason::RefreshFailed(m) if m.contains("400")),
        "{err}"
    );
    assert!(
        err.to_string().ends_with(&format!(
            "please run `agentserver login --server {}` to log in again",
            mock.url()
        )),
        "{err}"
    );
    assert_eq!(refresh_requests(&mock), 1);
    // The credentials are left as they were.
    let saved = ctx.credentials().load().unwrap().unwrap();
    assert_eq!(saved.refresh_token.expose(), refresh);
}

#[tokio::test]
async fn credentials_of_another_server_need_relogin_without_any_request() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let other = MockServer::start(MockConfig::default()).await.unwrap();
    let state = mock.state();
    let (access, refresh) =
        state.issue_token_pair(Some(&state.default_workspace_id()), SCOPES, "owner");
    let home = tempfile::tempdir().unwrap();
    let ctx = auth_in(home.path());
    ctx.credentials()
        .save(&credentials(&mock.url(), &access, &refresh, -1))
        .unwrap();
    let err = ctx.ensure_valid_token(&other.url()).await.unwrap_err();
    assert_eq!(err.reason, ReLoginReason::OtherServer { saved: mock.url() });
    assert_eq!(
        err.login_command(),
        format!("agentserver login --server {}", other.url())
    );
    assert!(mock.state().requests().is_empty());
    assert!(other.state().requests().is_empty());
}

#[tokio::test]
async fn registration_errors_say_what_to_do() {
    let mock = MockServer::start(MockConfig::default()).await.unwrap();
    let state = mock.state();
    let ws = state.default_workspace_id();
    let ctx = auth_in(tempfile::tempdir().unwrap().path());
    let server = mock.url();

    // Expired token → 401 → log in again.
    let expired = state.issue_access_token(Some(&ws), SCOPES, "owner");
    state.expire_access_tokens();
    let err = ctx
        .register(&server, &Secret::new(expired), "n", "claudecode")
        .await
        .unwrap_err();
    assert!(err.needs_relogin());
    let msg = err.to_string();
    assert!(
        msg.starts_with("registration failed (401 Unauthorized): invalid or expired token. "),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("agentserver login --server {server}")),
        "{msg}"
    );

    // Missing scope → 403 → log in again.
    let no_scope = state.issue_access_token(Some(&ws), &["openid"], "owner");
    let err = ctx
        .register(&server, &Secret::new(no_scope), "n", "claudecode")
        .await
        .unwrap_err();
    assert!(err.needs_relogin(), "{err}");

    // Missing workspace claim → 400 → log in and choose a workspace.
    let no_ws = state.issue_access_token(None, SCOPES, "owner");
    let err = ctx
        .register(&server, &Secret::new(no_ws), "n", "claudecode")
        .await
        .unwrap_err();
    assert!(err.needs_relogin(), "{err}");
    assert!(err.to_string().contains("choose a workspace"), "{err}");

    // Guest → 403 → ask for a role; a new login alone does not help.
    let guest = state.issue_access_token(Some(&ws), SCOPES, "guest");
    let err = ctx
        .register(&server, &Secret::new(guest), "n", "claudecode")
        .await
        .unwrap_err();
    assert!(!err.needs_relogin(), "{err}");
    assert!(err.to_string().contains("developer role"), "{err}");

    // Unknown type → 400.
    let good = state.issue_access_token(Some(&ws), SCOPES, "owner");
    let err = ctx
        .register(&server, &Secret::new(good.clone()), "n", "weird")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("type `weird`"), "{err}");

    // OAuth off → 503.
    state.set_oauth_configured(false);
    let err = ctx
        .register(&server, &Secret::new(good), "n", "claudecode")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegisterError::Rejected { status, .. } if status.as_u16() == 503),
        "{err}"
    );
    assert!(err.to_string().contains("administrator"), "{err}");
    state.set_oauth_configured(true);

    // The server's own failures → 500 with its text → try again later.
    for (fail, text) in [
        (
            "introspection" as &str,
            "token introspection failed" as &str,
        ),
        ("insert", "failed to register agent"),
    ] {
        state.set_introspection_fails(fail == "introspection");
        state.set_register_fails(fail == "insert");
        let token = state.issue_access_token(Some(&ws), SCOPES, "owner");
        let err = ctx
            .register(&server, &Secret::new(token), "n", "claudecode")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RegisterError::Rejected { status, .. } if status.as_u16() == 500),
            "{err}"
        );
        assert!(!err.needs_relogin(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(text) && msg.contains("try again later"),
            "{msg}"
        );
    }
    state.clear_faults();

    // A body the server cannot read → 400 `bad request`.
    let token = state.issue_access_token(Some(&ws), SCOPES, "owner");
    let response = reqwest::Client::new()
        .post(format!("{server}/api/agent/register"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(
        response.text().await.unwrap().contains("bad request"),
        "the mock's 400 text"
    );
    assert!(state.sandboxes().is_empty());
}
