//! Agent registration (spec §3.1): `POST /api/agent/register`, plus the sandbox helpers.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::server::{TokenKind, bearer_token, http_error};
use crate::state::{MockState, REGISTER_SCOPE, SandboxRecord, lock, random_short_id, random_token};

impl MockState {
    /// Every sandbox, in registration order.
    pub fn sandboxes(&self) -> Vec<SandboxRecord> {
        self.inner().sandboxes.clone()
    }

    /// The sandbox with this id.
    pub fn sandbox(&self, id: &str) -> Option<SandboxRecord> {
        self.inner().sandboxes.iter().find(|s| s.id == id).cloned()
    }

    /// The sandbox whose proxy token (first) or tunnel token (then) is `token`.
    pub fn sandbox_by_token(&self, token: &str) -> Option<(SandboxRecord, TokenKind)> {
        let inner = self.inner();
        if let Some(s) = inner.sandboxes.iter().find(|s| s.proxy_token == token) {
            return Some((s.clone(), TokenKind::Proxy));
        }
        inner
            .sandboxes
            .iter()
            .find(|s| s.tunnel_token == token)
            .map(|s| (s.clone(), TokenKind::Tunnel))
    }

    /// Creates a sandbox in the default workspace without going through OAuth (role `owner`).
    pub fn add_sandbox(&self, name: &str, sandbox_type: &str) -> SandboxRecord {
        self.add_sandbox_in(&self.default_workspace_id(), name, sandbox_type)
    }

    /// Creates a sandbox in `workspace_id` (role `owner`). Unknown workspaces are created.
    pub fn add_sandbox_in(
        &self,
        workspace_id: &str,
        name: &str,
        sandbox_type: &str,
    ) -> SandboxRecord {
        let user_id = self.default_user_id();
        self.insert_sandbox(workspace_id, name, sandbox_type, &user_id, "owner")
    }

    fn insert_sandbox(
        &self,
        workspace_id: &str,
        name: &str,
        sandbox_type: &str,
        user_id: &str,
        role: &str,
    ) -> SandboxRecord {
        let record = SandboxRecord {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            sandbox_type: sandbox_type.to_string(),
            workspace_id: workspace_id.to_string(),
            tunnel_token: random_token(),
            proxy_token: random_token(),
            short_id: random_short_id(),
            user_id: user_id.to_string(),
            role: role.to_string(),
            status: "offline".into(),
            agent_info: None,
            created_at: Utc::now(),
        };
        let mut inner = self.inner();
        inner
            .workspace_names
            .entry(workspace_id.to_string())
            .or_insert_with(|| format!("Workspace {}", &workspace_id[..workspace_id.len().min(8)]));
        inner.sandboxes.push(record.clone());
        drop(inner);
        self.notify();
        record
    }

    /// Sets a sandbox's status (`running` while a tunnel is up, `offline` otherwise).
    pub fn set_sandbox_status(&self, sandbox_id: &str, status: &str) {
        if let Some(s) = self
            .inner()
            .sandboxes
            .iter_mut()
            .find(|s| s.id == sandbox_id)
        {
            s.status = status.to_string();
        }
        self.notify();
    }

    /// Sets the role whoami reports for a sandbox; empty makes whoami answer 403 `forbidden`
    /// (the user lost access to the workspace).
    pub fn set_sandbox_role(&self, sandbox_id: &str, role: &str) {
        if let Some(s) = self
            .inner()
            .sandboxes
            .iter_mut()
            .find(|s| s.id == sandbox_id)
        {
            s.role = role.to_string();
        }
        self.notify();
    }

    /// Stores agent info received on the tunnel's control stream. If it has a `capabilities`
    /// object, the sandbox's agent card is derived from it and upserted (spec §7.3, simplified).
    pub fn record_agent_info(&self, sandbox_id: &str, info: Value) {
        let caps = info.get("capabilities").filter(|c| c.is_object()).cloned();
        let sandbox = {
            let mut inner = self.inner();
            let Some(s) = inner.sandboxes.iter_mut().find(|s| s.id == sandbox_id) else {
                return;
            };
            s.agent_info = Some(info);
            s.clone()
        };
        if let Some(caps) = caps {
            let card = crate::agents::card_from_capabilities(&caps);
            self.upsert_card(&sandbox, None, None, None, Some(card));
        }
        self.notify();
    }
}

#[derive(Deserialize)]
struct RegisterBody {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    sandbox_type: String,
}

/// `POST /api/agent/register` (Bearer OAuth access token, JSON `{"name","type"}`) → 201.
pub(crate) async fn register(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = bearer_token(&headers) else {
        return http_error(
            StatusCode::UNAUTHORIZED,
            "missing or invalid Authorization header",
        );
    };
    if !state.inner().oauth_configured {
        return http_error(StatusCode::SERVICE_UNAVAILABLE, "OAuth not configured");
    }
    let (introspection_fails, register_fails) = {
        let f = lock(&state.faults);
        (f.introspection_fails, f.register_fails)
    };
    if introspection_fails {
        return http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "token introspection failed",
        );
    }
    let claims = match state.access_token_info(&token) {
        Some(c) if c.expires_at > Utc::now() => c,
        _ => return http_error(StatusCode::UNAUTHORIZED, "invalid or expired token"),
    };
    if !claims.scopes.iter().any(|s| s == REGISTER_SCOPE) {
        return http_error(
            StatusCode::FORBIDDEN,
            "insufficient scope: agent:register required",
        );
    }
    let Some(workspace_id) = claims.workspace_id.clone().filter(|w| !w.is_empty()) else {
        return http_error(StatusCode::BAD_REQUEST, "token missing workspace_id claim");
    };
    if claims.role.is_empty() || claims.role == "guest" {
        return http_error(
            StatusCode::FORBIDDEN,
            "no permission to register agent in this workspace",
        );
    }
    let Ok(req) = serde_json::from_slice::<RegisterBody>(&body) else {
        return http_error(StatusCode::BAD_REQUEST, "bad request");
    };
    let sandbox_type = if req.sandbox_type.is_empty() {
        "opencode".to_string()
    } else {
        req.sandbox_type
    };
    if !matches!(sandbox_type.as_str(), "opencode" | "claudecode" | "custom") {
        return http_error(
            StatusCode::BAD_REQUEST,
            "invalid type: must be opencode, claudecode, or custom",
        );
    }
    if register_fails {
        return http_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed to register agent",
        );
    }
    let name = if req.name.is_empty() {
        "Local Agent".to_string()
    } else {
        req.name
    };
    let sb = state.insert_sandbox(
        &workspace_id,
        &name,
        &sandbox_type,
        &claims.user_id,
        &claims.role,
    );
    (
        StatusCode::CREATED,
        Json(json!({
            "sandbox_id": sb.id,
            "tunnel_token": sb.tunnel_token,
            "proxy_token": sb.proxy_token,
            "workspace_id": sb.workspace_id,
            "short_id": sb.short_id,
        })),
    )
        .into_response()
}
