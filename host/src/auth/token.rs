//! `EnsureValidToken(server)` (spec §2.6): a valid access token for `server`, refreshed with
//! the refresh token when expired, or [`NeedReLogin`].

use std::time::Duration;

use super::credentials::Credentials;
use super::device::{TokenResponse, short_body};
use super::{AuthContext, CLIENT_ID, error_chain, normalize_server_url};
use crate::rfc3339;
use crate::secret::Secret;

/// An access token that expires within this margin counts as expired (upstream used none).
/// It absorbs clock skew between this machine and the server and the time a request takes,
/// so a token is not sent when it will be rejected a moment later.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// Why the user must log in again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReLoginReason {
    /// No credentials file.
    NoCredentials,
    /// The credentials file cannot be read or parsed.
    Unreadable(String),
    /// The credentials belong to another server.
    OtherServer {
        /// The server the saved credentials are for.
        saved: String,
    },
    /// The access token expired and there is no refresh token.
    NoRefreshToken,
    /// The refresh request failed (network, non-200, bad JSON).
    RefreshFailed(String),
    /// The server refused the access token (registration answered 401, or the token lacks a
    /// scope or workspace).
    Refused(String),
}

impl std::fmt::Display for ReLoginReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoCredentials => f.write_str("not logged in (no saved credentials)"),
            Self::Unreadable(e) => write!(f, "the saved credentials cannot be read ({e})"),
            Self::OtherServer { saved } => write!(f, "the saved credentials are for {saved}"),
            Self::NoRefreshToken => {
                f.write_str("the access token has expired and there is no refresh token")
            }
            Self::RefreshFailed(e) => {
                write!(
                    f,
                    "the access token has expired and refreshing it failed ({e})"
                )
            }
            Self::Refused(e) => write!(f, "the server refused the access token ({e})"),
        }
    }
}

/// `ErrNeedReLogin`: no usable token; the message names the command that fixes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}; please run `agentserver login --server {server}` to log in again")]
pub struct NeedReLogin {
    /// The server a token was asked for (normalised).
    pub server: String,
    /// Why.
    pub reason: ReLoginReason,
}

impl NeedReLogin {
    /// The command that fixes it.
    pub fn login_command(&self) -> String {
        format!("agentserver login --server {}", self.server)
    }
}

impl AuthContext {
    /// `EnsureValidToken(server)`:
    /// 1. load the credentials (missing/unreadable → [`NeedReLogin`]);
    /// 2. saved `serverUrl` non-empty and ≠ `server` (both normalised) → [`NeedReLogin`];
    /// 3. access token valid for at least [`EXPIRY_MARGIN`] more → return it;
    /// 4. no refresh token → [`NeedReLogin`];
    /// 5. refresh (`grant_type=refresh_token`); any failure → [`NeedReLogin`];
    /// 6. store the new access token, the **rotated** refresh token (the old one is kept when
    ///    the response has none) and the new expiry (a save failure is only logged); return
    ///    the new access token.
    ///
    /// The whole check-refresh-save runs under the credentials lock, so concurrent hosts do
    /// not both spend the same (rotating) refresh token.
    pub async fn ensure_valid_token(&self, server: &str) -> Result<Secret, NeedReLogin> {
        self.valid_token(server, false).await
    }

    /// Like [`AuthContext::ensure_valid_token`], but refreshes even when the saved access token
    /// looks valid: for an access token the server has just refused (revoked, or its claims
    /// changed) while the refresh token may still be good, so no new login is needed.
    pub async fn refresh_token_now(&self, server: &str) -> Result<Secret, NeedReLogin> {
        self.valid_token(server, true).await
    }

    async fn valid_token(&self, server: &str, force_refresh: bool) -> Result<Secret, NeedReLogin> {
        let server = normalize_server_url(server);
        let need = |reason| NeedReLogin {
            server: server.clone(),
            reason,
        };
        let lock = self.credentials().lock_async().await;
        if let Err(err) = &lock {
            tracing::debug!(%err, "credentials lock unavailable; going on without it");
        }
        let creds = match self.credentials().load() {
            Ok(Some(c)) => c,
            Ok(None) => return Err(need(ReLoginReason::NoCredentials)),
            Err(e) => return Err(need(ReLoginReason::Unreadable(error_chain(&e)))),
        };
        if !creds.server_url.is_empty() && normalize_server_url(&creds.server_url) != server {
            return Err(need(ReLoginReason::OtherServer {
                saved: creds.server_url.clone(),
            }));
        }
        let margin = chrono::Duration::from_std(EXPIRY_MARGIN).unwrap_or_default();
        if !force_refresh
            && !creds.access_token.is_empty()
            && rfc3339::now_local() + margin < creds.expires_at
        {
            tracing::debug!("saved access token is valid");
            return Ok(creds.access_token);
        }
        if creds.refresh_token.is_empty() {
            return Err(need(ReLoginReason::NoRefreshToken));
        }
        tracing::debug!("access token expired; refreshing");
        let token = self
            .refresh(&server, &creds.refresh_token)
            .await
            .map_err(|e| need(ReLoginReason::RefreshFailed(e)))?;
        let now = rfc3339::now_local();
        let refreshed = Credentials {
            access_token: token.access_token,
            refresh_token: if token.refresh_token.is_empty() {
                creds.refresh_token.clone()
            } else {
                token.refresh_token
            },
            expires_at: now + chrono::Duration::seconds(token.expires_in.max(0)),
            ..creds
        };
        if let Err(err) = self.credentials().save(&refreshed) {
            tracing::warn!(err = %error_chain(&err), "cannot save the refreshed credentials");
        }
        drop(lock);
        tracing::debug!("access token refreshed");
        Ok(refreshed.access_token)
    }

    async fn refresh(&self, server: &str, refresh_token: &Secret) -> Result<TokenResponse, String> {
        let url = format!("{server}/api/oauth2/token");
        let request = self.http().post(&url).form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("refresh_token", refresh_token.expose()),
        ]);
        let (status, body) = crate::http::send_and_read(request)
            .await
            .map_err(|e| error_chain(&e))?;
        if status != reqwest::StatusCode::OK {
            return Err(format!("{status}: {}", short_body(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| format!("invalid token response: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> (tempfile::TempDir, AuthContext) {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = AuthContext::new(tmp.path().join(".credentials.json"));
        (tmp, ctx)
    }

    fn creds(server: &str, expires_in_s: i64, refresh: &str) -> Credentials {
        Credentials {
            server_url: server.into(),
            access_token: Secret::new("at"),
            refresh_token: Secret::new(refresh),
            expires_at: rfc3339::now_local() + chrono::Duration::seconds(expires_in_s),
            scopes: vec![],
        }
    }

    #[tokio::test]
    async fn missing_file_needs_login() {
        let (_t, ctx) = ctx();
        let err = ctx.ensure_valid_token("http://s/").await.unwrap_err();
        assert_eq!(err.reason, ReLoginReason::NoCredentials);
        assert_eq!(err.server, "http://s");
        assert!(
            err.to_string()
                .contains("please run `agentserver login --server http://s`"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn valid_token_is_returned_and_slash_is_ignored() {
        let (_t, ctx) = ctx();
        ctx.credentials()
            .save(&creds("http://s/", 3600, "rt"))
            .unwrap();
        assert_eq!(
            ctx.ensure_valid_token("http://s").await.unwrap().expose(),
            "at"
        );
        // Files without serverUrl (v0.33–v0.34) are accepted for any server.
        ctx.credentials().save(&creds("", 3600, "rt")).unwrap();
        assert!(ctx.ensure_valid_token("http://other").await.is_ok());
    }

    #[tokio::test]
    async fn other_server_needs_login() {
        let (_t, ctx) = ctx();
        ctx.credentials()
            .save(&creds("http://a", 3600, "rt"))
            .unwrap();
        let err = ctx.ensure_valid_token("http://b").await.unwrap_err();
        assert_eq!(
            err.reason,
            ReLoginReason::OtherServer {
                saved: "http://a".into()
            }
        );
        assert_eq!(err.login_command(), "agentserver login --server http://b");
    }

    #[tokio::test]
    async fn token_inside_margin_without_refresh_token_needs_login() {
        let (_t, ctx) = ctx();
        // Expires in 10 s < 30 s margin: treated as expired.
        ctx.credentials().save(&creds("http://s", 10, "")).unwrap();
        let err = ctx.ensure_valid_token("http://s").await.unwrap_err();
        assert_eq!(err.reason, ReLoginReason::NoRefreshToken);
    }

    #[tokio::test]
    async fn unreachable_refresh_needs_login() {
        let (_t, ctx) = ctx();
        // Port 9 (discard) on loopback: connection refused.
        ctx.credentials()
            .save(&creds("http://127.0.0.1:9", -5, "rt"))
            .unwrap();
        let err = ctx
            .ensure_valid_token("http://127.0.0.1:9")
            .await
            .unwrap_err();
        assert!(matches!(err.reason, ReLoginReason::RefreshFailed(_)));
    }
}
