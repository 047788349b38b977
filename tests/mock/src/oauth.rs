//! OAuth 2.0 device authorization (spec §2), as Hydra behind the agentserver proxy answers it:
//! `POST /api/oauth2/device/auth`, `POST /api/oauth2/token` (device_code and refresh_token
//! grants, rotating refresh tokens) and the verification page `/oauth2/device/verify`.
//!
//! Tokens are opaque 32-hex strings; their claims (workspace, scopes, role) live in the state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use serde_json::json;

use crate::config::DeviceOutcome;
use crate::server::http_error;
use crate::state::{
    AccessTokenInfo, CLIENT_ID, DeviceGrant, LoginClaims, MockState, RefreshTokenInfo, random_token,
};

/// The device-code grant type.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// Scopes the mock's client may ask for.
const ALLOWED_SCOPES: &[&str] = &[
    "openid",
    "profile",
    "agent:register",
    "offline_access",
    "offline",
];

impl MockState {
    /// Whether the server has OAuth configured; when not, the OAuth endpoints and registration
    /// answer 503 `OAuth not configured`.
    pub fn set_oauth_configured(&self, configured: bool) {
        self.inner().oauth_configured = configured;
    }

    /// The claims put into tokens issued by the device flow from now on (default: the default
    /// workspace and user, role `owner`).
    pub fn set_login_claims(&self, claims: LoginClaims) {
        self.inner().login_claims = Some(claims);
    }

    fn login_claims(&self) -> LoginClaims {
        self.inner()
            .login_claims
            .clone()
            .unwrap_or_else(|| LoginClaims {
                workspace_id: Some(self.default_workspace_id()),
                role: "owner".into(),
                user_id: self.default_user_id(),
            })
    }

    /// Issues an access token with these claims (`None` workspace = claim missing), valid for
    /// the configured TTL, without going through the device flow.
    pub fn issue_access_token(
        &self,
        workspace_id: Option<&str>,
        scopes: &[&str],
        role: &str,
    ) -> String {
        self.issue_token_pair(workspace_id, scopes, role).0
    }

    /// Like [`MockState::issue_access_token`] but also issues a refresh token: `(access, refresh)`.
    pub fn issue_token_pair(
        &self,
        workspace_id: Option<&str>,
        scopes: &[&str],
        role: &str,
    ) -> (String, String) {
        let claims = AccessTokenInfo {
            workspace_id: workspace_id.map(str::to_string),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            role: role.to_string(),
            user_id: self.default_user_id(),
            expires_at: Utc::now(),
        };
        self.issue_tokens(claims)
    }

    fn issue_tokens(&self, mut claims: AccessTokenInfo) -> (String, String) {
        let ttl = self.config().access_token_ttl_secs;
        claims.expires_at = Utc::now() + chrono::Duration::seconds(ttl);
        let access = random_token();
        let refresh = random_token();
        let mut inner = self.inner();
        inner.access_tokens.insert(access.clone(), claims.clone());
        inner.refresh_tokens.insert(
            refresh.clone(),
            RefreshTokenInfo {
                claims,
                valid: true,
            },
        );
        drop(inner);
        self.notify();
        (access, refresh)
    }

    /// The claims of an access token the mock issued (also for expired ones).
    pub fn access_token_info(&self, token: &str) -> Option<AccessTokenInfo> {
        self.inner().access_tokens.get(token).cloned()
    }

    /// Every access token issued so far, with its claims.
    pub fn access_tokens(&self) -> Vec<(String, AccessTokenInfo)> {
        self.inner()
            .access_tokens
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether an active access token: issued by the mock and not expired.
    pub fn access_token_active(&self, token: &str) -> bool {
        self.inner()
            .access_tokens
            .get(token)
            .is_some_and(|t| t.expires_at > Utc::now())
    }

    /// Expires every access token issued so far (registration then answers 401
    /// `invalid or expired token`).
    pub fn expire_access_tokens(&self) {
        let past = Utc::now() - chrono::Duration::seconds(1);
        for t in self.inner().access_tokens.values_mut() {
            t.expires_at = past;
        }
    }

    /// Whether a refresh token can still be used.
    pub fn refresh_token_valid(&self, token: &str) -> bool {
        self.inner()
            .refresh_tokens
            .get(token)
            .is_some_and(|t| t.valid)
    }

    /// Revokes one refresh token (a refresh with it answers `invalid_grant`).
    pub fn revoke_refresh_token(&self, token: &str) {
        if let Some(t) = self.inner().refresh_tokens.get_mut(token) {
            t.valid = false;
        }
    }

    /// How many token polls the device authorization with this `user_code` has received.
    pub fn device_polls(&self, user_code: &str) -> Option<u32> {
        self.inner()
            .device_grants
            .values()
            .find(|g| g.user_code == user_code)
            .map(|g| g.polls)
    }

    /// Revokes every refresh token issued so far.
    pub fn revoke_refresh_tokens(&self) {
        for t in self.inner().refresh_tokens.values_mut() {
            t.valid = false;
        }
    }
}

/// A Hydra-style OAuth error: JSON `{"error", "error_description"}`.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body).into_owned() {
        map.entry(k).or_insert(v);
    }
    map
}

fn random_user_code() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// `POST /api/oauth2/device/auth` (form `client_id`, `scope`).
pub(crate) async fn device_auth(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    if !state.inner().oauth_configured {
        return http_error(StatusCode::SERVICE_UNAVAILABLE, "OAuth not configured");
    }
    let form = parse_form(&body);
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed (e.g., unknown client, no client authentication included, or unsupported authentication method).",
        );
    }
    let scopes: Vec<String> = form
        .get("scope")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    if let Some(bad) = scopes
        .iter()
        .find(|s| !ALLOWED_SCOPES.contains(&s.as_str()))
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!(
                "The requested scope is invalid, unknown, or malformed. The OAuth 2.0 Client is not allowed to request scope '{bad}'."
            ),
        );
    }
    let config = state.config();
    let device_code = random_token();
    let user_code = random_user_code();
    state.inner().device_grants.insert(
        device_code.clone(),
        DeviceGrant {
            user_code: user_code.clone(),
            scopes,
            polls: 0,
            expires_at: Instant::now() + Duration::from_secs(config.device_expires_in_secs),
            used: false,
        },
    );
    state.notify();
    let verification_uri = format!("{}/oauth2/device/verify", state.base_url());
    Json(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": verification_uri,
        "verification_uri_complete": format!("{verification_uri}?user_code={user_code}"),
        "expires_in": config.device_expires_in_secs,
        "interval": config.device_interval_secs,
    }))
    .into_response()
}

/// `POST /api/oauth2/token` (form; `grant_type` device_code or refresh_token).
pub(crate) async fn token(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    if !state.inner().oauth_configured {
        return http_error(StatusCode::SERVICE_UNAVAILABLE, "OAuth not configured");
    }
    let form = parse_form(&body);
    let grant_type = form.get("grant_type").map(String::as_str).unwrap_or("");
    if grant_type.is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter: grant_type.",
        );
    }
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed.",
        );
    }
    match grant_type {
        DEVICE_CODE_GRANT => device_code_grant(&state, &form),
        "refresh_token" => refresh_grant(&state, &form),
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "The authorization grant type is not supported by the authorization server.",
        ),
    }
}

fn token_response(
    state: &MockState,
    access: String,
    refresh: String,
    scopes: &[String],
) -> Response {
    Json(json!({
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "bearer",
        "expires_in": state.config().access_token_ttl_secs,
        "scope": scopes.join(" "),
    }))
    .into_response()
}

enum PollResult {
    Error(&'static str, &'static str),
    Issue(Vec<String>),
}

fn device_code_grant(state: &MockState, form: &HashMap<String, String>) -> Response {
    let Some(device_code) = form.get("device_code").filter(|c| !c.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter: device_code.",
        );
    };
    let config = state.config();
    let result = {
        let mut inner = state.inner();
        match inner.device_grants.get_mut(device_code) {
            None => PollResult::Error("invalid_grant", "The device code is unknown."),
            Some(g) if g.used => {
                PollResult::Error("invalid_grant", "The device code has already been used.")
            }
            Some(g) if Instant::now() >= g.expires_at => {
                PollResult::Error("expired_token", "The device_code has expired.")
            }
            Some(g) => {
                g.polls += 1;
                let n = g.polls;
                let target = config.approve_after_polls.max(config.slow_down_polls + 1);
                if n <= config.slow_down_polls {
                    PollResult::Error(
                        "slow_down",
                        "The authorization request is still pending and polling should slow down.",
                    )
                } else if n < target {
                    PollResult::Error(
                        "authorization_pending",
                        "The authorization request is still pending as the end user hasn't yet completed the user-interaction steps.",
                    )
                } else {
                    match config.device_outcome {
                        DeviceOutcome::Approve => {
                            g.used = true;
                            PollResult::Issue(g.scopes.clone())
                        }
                        DeviceOutcome::Deny => PollResult::Error(
                            "access_denied",
                            "The resource owner or authorization server denied the request.",
                        ),
                        DeviceOutcome::Expire => {
                            PollResult::Error("expired_token", "The device_code has expired.")
                        }
                    }
                }
            }
        }
    };
    state.notify();
    match result {
        PollResult::Error(error, description) => {
            oauth_error(StatusCode::BAD_REQUEST, error, description)
        }
        PollResult::Issue(scopes) => {
            let claims = state.login_claims();
            let (access, refresh) = state.issue_tokens(AccessTokenInfo {
                workspace_id: claims.workspace_id,
                scopes: scopes.clone(),
                role: claims.role,
                user_id: claims.user_id,
                expires_at: Utc::now(),
            });
            token_response(state, access, refresh, &scopes)
        }
    }
}

fn refresh_grant(state: &MockState, form: &HashMap<String, String>) -> Response {
    let Some(refresh) = form.get("refresh_token").filter(|c| !c.is_empty()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The request is missing a required parameter: refresh_token.",
        );
    };
    let claims = {
        let mut inner = state.inner();
        match inner.refresh_tokens.get_mut(refresh) {
            Some(t) if t.valid => {
                t.valid = false;
                Some(t.claims.clone())
            }
            _ => None,
        }
    };
    let Some(claims) = claims else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The provided authorization grant (e.g., authorization code, resource owner credentials) or refresh token is invalid, expired, revoked, does not match the redirection URI used in the authorization request, or was issued to another client.",
        );
    };
    let scopes = claims.scopes.clone();
    let (access, refresh) = state.issue_tokens(claims);
    token_response(state, access, refresh, &scopes)
}

/// `GET|POST /oauth2/device/verify`: the page the user would visit. The mock decides the
/// outcome by configuration, so this page only confirms.
pub(crate) async fn verify_page(RawQuery(query): RawQuery) -> Html<String> {
    let code = query
        .as_deref()
        .and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "user_code")
                .map(|(_, v)| v.into_owned())
        })
        .unwrap_or_default();
    let code: String = code.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    Html(format!(
        "<!doctype html><html><head><title>agentserver mock login</title></head><body>\
         <h1>agentserver mock</h1><p>Device code <code>{code}</code>: the mock decides the \
         outcome by its configuration; you can close this page.</p></body></html>"
    ))
}
