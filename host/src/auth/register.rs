//! Sandbox registration, OAuth era (spec §3.1): `POST {server}/api/agent/register` with the
//! Bearer access token and `{"name","type"}`; 201 → the new sandbox's ids and tokens.

use serde::{Deserialize, Serialize};

use super::device::short_body;
use super::normalize_server_url;
use crate::secret::Secret;

/// The 201 response: the new sandbox.
#[derive(Debug, Clone, Deserialize)]
pub struct RegisteredSandbox {
    /// Sandbox id (UUID).
    pub sandbox_id: String,
    /// Token for the tunnel (query parameter).
    pub tunnel_token: Secret,
    /// Bearer token for task intake, cards and the bridge.
    #[serde(default)]
    pub proxy_token: Secret,
    /// Workspace the sandbox was registered in.
    #[serde(default)]
    pub workspace_id: String,
    /// 8-character short id.
    #[serde(default)]
    pub short_id: String,
}

#[derive(Serialize)]
struct RegisterBody<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    sandbox_type: &'a str,
}

/// Why registration failed. [`RegisterError::Rejected`]'s message ends with what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The request could not be sent or the answer not read.
    #[error("cannot reach {url}")]
    Transport {
        /// The endpoint.
        url: String,
        /// The transport error.
        #[source]
        source: crate::http::HttpError,
    },
    /// The server answered with a status other than 201.
    #[error("registration failed ({status}): {body}. {hint}")]
    Rejected {
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// The server's message (plain text, trimmed).
        body: String,
        /// What the user should do about it.
        hint: String,
        /// True when logging in again is the fix (the caller may log in and retry once).
        relogin: bool,
    },
    /// 201 but the body is not the expected JSON.
    #[error("registration failed: the server's answer cannot be read: {0}")]
    InvalidResponse(String),
}

impl RegisterError {
    /// True when a fresh login is the fix (401, missing scope, missing workspace claim).
    pub fn needs_relogin(&self) -> bool {
        matches!(self, Self::Rejected { relogin: true, .. })
    }
}

/// What to do about a rejected registration, and whether a new login fixes it.
fn hint_for(status: u16, body: &str, server: &str, sandbox_type: &str) -> (String, bool) {
    let login = format!("agentserver login --server {server}");
    match status {
        401 => (
            format!("Your login is not valid for this server any more: run `{login}` and try again."),
            true,
        ),
        403 if body.contains("scope") => (
            format!(
                "The login lacks the agent:register permission: run `{login}` and approve every requested permission."
            ),
            true,
        ),
        403 => (
            format!(
                "Your role in the chosen workspace may not register agents (guests cannot): ask a workspace admin for the developer role, or run `{login}` and choose another workspace."
            ),
            false,
        ),
        400 if body.contains("workspace_id") => (
            format!(
                "No workspace was chosen at login: run `{login}` and choose a workspace on the consent page."
            ),
            true,
        ),
        400 if body.contains("invalid type") => (
            format!(
                "This server does not accept sandboxes of type `{sandbox_type}`: upgrade the server or use another backend."
            ),
            false,
        ),
        400 => (
            "The server could not read the request: the server may be incompatible with this agentserver version.".to_owned(),
            false,
        ),
        503 => (
            "OAuth is not configured on this server: ask its administrator to set it up.".to_owned(),
            false,
        ),
        500..=599 => (
            "The server failed: try again later, and tell its administrator if it keeps failing."
                .to_owned(),
            false,
        ),
        404 | 405 => (
            format!("{server} does not look like an agentserver (no /api/agent/register): check --server."),
            false,
        ),
        _ => (
            format!("Unexpected answer: check that --server ({server}) points at an agentserver."),
            false,
        ),
    }
}

/// `POST {server}/api/agent/register` with `Authorization: Bearer <access_token>` and
/// `{"name", "type"}`. Only 201 is success.
pub async fn register_with(
    http: &reqwest::Client,
    server: &str,
    access_token: &Secret,
    name: &str,
    sandbox_type: &str,
) -> Result<RegisteredSandbox, RegisterError> {
    let server = normalize_server_url(server);
    let url = format!("{server}/api/agent/register");
    tracing::debug!(%url, %name, %sandbox_type, "registering a sandbox");
    let request = http
        .post(&url)
        .bearer_auth(access_token.expose())
        .json(&RegisterBody { name, sandbox_type });
    let (status, body) = crate::http::send_and_read(request)
        .await
        .map_err(|source| RegisterError::Transport {
            url: url.clone(),
            source,
        })?;
    if status != reqwest::StatusCode::CREATED {
        let text = short_body(&body);
        let (hint, relogin) = hint_for(status.as_u16(), &text, &server, sandbox_type);
        tracing::debug!(%status, body = %text, "registration rejected");
        return Err(RegisterError::Rejected {
            status,
            body: text,
            hint,
            relogin,
        });
    }
    let sandbox: RegisteredSandbox =
        serde_json::from_slice(&body).map_err(|e| RegisterError::InvalidResponse(e.to_string()))?;
    tracing::info!(
        sandbox_id = %sandbox.sandbox_id,
        short_id = %sandbox.short_id,
        workspace_id = %sandbox.workspace_id,
        "sandbox registered"
    );
    Ok(sandbox)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_status_says_what_to_do() {
        let cases = [
            (401, "invalid or expired token", true),
            (401, "missing or invalid Authorization header", true),
            (403, "insufficient scope: agent:register required", true),
            (
                403,
                "no permission to register agent in this workspace",
                false,
            ),
            (400, "token missing workspace_id claim", true),
            (
                400,
                "invalid type: must be opencode, claudecode, or custom",
                false,
            ),
            (400, "bad request", false),
            (503, "OAuth not configured", false),
            (500, "token introspection failed", false),
            (500, "failed to register agent", false),
            (404, "404 page not found", false),
            (418, "teapot", false),
        ];
        for (status, body, relogin) in cases {
            let (hint, r) = hint_for(status, body, "https://s", "claudecode");
            assert_eq!(r, relogin, "{status} {body}");
            assert!(hint.len() > 20, "{status}: {hint}");
            if relogin {
                assert!(
                    hint.contains("agentserver login --server https://s"),
                    "{hint}"
                );
            }
        }
    }

    #[test]
    fn response_parses_and_hides_tokens() {
        let r: RegisteredSandbox = serde_json::from_str(
            r#"{"sandbox_id":"u","tunnel_token":"0123456789abcdef0123456789abcdef","proxy_token":"fedcba9876543210fedcba9876543210","workspace_id":"w","short_id":"abcd1234"}"#,
        )
        .unwrap();
        assert_eq!(r.short_id, "abcd1234");
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("0123456789abcdef"), "{dbg}");
    }
}
