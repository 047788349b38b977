//! The OAuth 2.0 Device Authorization Grant exactly as spec §2 describes it.
//!
//! Wire behaviour kept from upstream: form POSTs to `/api/oauth2/device/auth` and
//! `/api/oauth2/token`; the poll loop checks the deadline, **sleeps the interval first**, then
//! polls; the interval is the server's, floored at 1 s (v0.49+); `slow_down` adds 5 s; a
//! network error is retried silently in the next round; `access_denied` and `expired_token`
//! end with distinct messages.
//!
//! One deliberate difference: a gateway answer without an OAuth `error` body (502, 503, 504)
//! is retried like a network error, and a 429 widens the interval like `slow_down`; after
//! [`MAX_TRANSIENT_FAILURES`] such answers in a row the login ends with the last one, so a
//! broken server is reported instead of polled until the code expires.

use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::credentials::{Credentials, CredentialsError};
use super::ui::{DevicePrompt, LoginUi};
use super::{AuthContext, CLIENT_ID, SCOPE, normalize_server_url};
use crate::rfc3339;
use crate::secret::Secret;

/// `grant_type` of a device-code token poll.
pub const DEVICE_CODE_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The smallest poll interval honoured (upstream v0.49+; it was 5 s in v0.33–v0.48).
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The interval when the device authorization response has none (RFC 8628 §3.2: "If no value
/// is provided, clients MUST use 5 as the default").
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// What a `slow_down` answer adds to the interval.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// The device authorization response (HTTP 200 of `/api/oauth2/device/auth`).
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceAuthorization {
    /// The device code to poll with (a credential: kept secret).
    pub device_code: Secret,
    /// The code the user types on the verification page.
    #[serde(default)]
    pub user_code: String,
    /// The verification page.
    #[serde(default)]
    pub verification_uri: String,
    /// The verification page with the user code filled in.
    #[serde(default)]
    pub verification_uri_complete: String,
    /// Seconds until the device code expires.
    #[serde(default)]
    pub expires_in: i64,
    /// Seconds the server asks between polls; absent means [`DEFAULT_POLL_INTERVAL`].
    #[serde(default)]
    pub interval: Option<i64>,
}

impl DeviceAuthorization {
    /// The URL shown to the user: `verification_uri_complete`, else `verification_uri`.
    pub fn display_url(&self) -> &str {
        if self.verification_uri_complete.is_empty() {
            &self.verification_uri
        } else {
            &self.verification_uri_complete
        }
    }

    /// The poll interval: the server's `interval`, at least [`MIN_POLL_INTERVAL`]; when the
    /// server gave none, [`DEFAULT_POLL_INTERVAL`] (RFC 8628 §3.2).
    pub fn poll_interval(&self) -> Duration {
        match self.interval {
            Some(seconds) => {
                Duration::from_secs(u64::try_from(seconds).unwrap_or(0)).max(MIN_POLL_INTERVAL)
            }
            None => DEFAULT_POLL_INTERVAL,
        }
    }

    /// How long the device code stays valid.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.expires_in).unwrap_or(0))
    }
}

/// A token endpoint success response (device-code grant and refresh grant).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: Secret,
    /// The refresh token (may be absent on a refresh without rotation).
    #[serde(default)]
    pub refresh_token: Secret,
    /// Usually `bearer`.
    #[serde(default)]
    pub token_type: String,
    /// Seconds the access token is valid.
    #[serde(default)]
    pub expires_in: i64,
    /// Granted scopes, space-separated.
    #[serde(default)]
    pub scope: String,
}

#[derive(Debug, Default, Deserialize)]
struct OAuthErrorBody {
    #[serde(default)]
    error: String,
}

/// What happened in one poll round, for progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollEvent {
    /// `authorization_pending`: the user has not approved yet.
    Pending,
    /// `slow_down`: the interval grew to this.
    SlowDown {
        /// The new interval.
        interval: Duration,
    },
    /// The request failed on the network; retried next round.
    NetworkError,
}

/// Why a login failed. The messages of [`LoginError::Denied`], [`LoginError::Expired`] and
/// [`LoginError::Token`] are upstream's.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The device authorization request could not be sent.
    #[error("device auth request to {url} failed")]
    DeviceAuthRequest {
        /// The endpoint.
        url: String,
        /// The transport error.
        #[source]
        source: crate::http::HttpError,
    },
    /// The device authorization endpoint answered with a status other than 200.
    #[error("device auth failed ({status}): {body}")]
    DeviceAuthFailed {
        /// The HTTP status.
        status: reqwest::StatusCode,
        /// The response body (trimmed, shortened).
        body: String,
    },
    /// The device authorization response is not the expected JSON.
    #[error("device auth failed: invalid response: {0}")]
    DeviceAuthInvalid(String),
    /// The user denied the request.
    #[error("authorization denied by user")]
    Denied,
    /// The device code expired before the user approved.
    #[error("authorization expired, please try again")]
    Expired,
    /// Any other token endpoint error.
    #[error("token error: {0}")]
    Token(String),
    /// Cancelled (Ctrl-C).
    #[error("login cancelled")]
    Cancelled,
    /// The tokens could not be saved.
    #[error("cannot save the credentials")]
    Save(#[from] CredentialsError),
}

/// Shortens a response body for an error message.
pub(crate) fn short_body(body: &[u8]) -> String {
    const MAX: usize = 300;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// Step 1: `POST {server}/api/oauth2/device/auth` with `client_id` and `scope`.
pub async fn request_device_code(
    http: &reqwest::Client,
    server: &str,
) -> Result<DeviceAuthorization, LoginError> {
    let url = format!("{}/api/oauth2/device/auth", normalize_server_url(server));
    tracing::debug!(%url, "requesting a device code");
    let request = http
        .post(&url)
        .form(&[("client_id", CLIENT_ID), ("scope", SCOPE)]);
    let (status, body) = crate::http::send_and_read(request)
        .await
        .map_err(|source| LoginError::DeviceAuthRequest {
            url: url.clone(),
            source,
        })?;
    if status != reqwest::StatusCode::OK {
        return Err(LoginError::DeviceAuthFailed {
            status,
            body: short_body(&body),
        });
    }
    let auth: DeviceAuthorization =
        serde_json::from_slice(&body).map_err(|e| LoginError::DeviceAuthInvalid(e.to_string()))?;
    tracing::debug!(
        user_code = %auth.user_code,
        expires_in = auth.expires_in,
        interval = ?auth.interval,
        "device code received"
    );
    Ok(auth)
}

/// Gateway answers to a token poll, in a row, after which the login gives up.
pub const MAX_TRANSIENT_FAILURES: u32 = 10;

/// Whether a token-poll answer without an OAuth `error` body is worth another round: a
/// gateway's 502/503/504 or a 429 (a 500 or 501 from the server itself is not).
fn is_transient(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502..=504)
}

/// Step 3: polls `POST {server}/api/oauth2/token` until the user approves, denies, or the code
/// expires (see the module doc for the exact loop).
pub async fn poll_for_token(
    http: &reqwest::Client,
    server: &str,
    auth: &DeviceAuthorization,
    ui: &dyn LoginUi,
) -> Result<TokenResponse, LoginError> {
    let url = format!("{}/api/oauth2/token", normalize_server_url(server));
    let mut interval = auth.poll_interval();
    let deadline = Instant::now() + auth.lifetime();
    let mut transient_failures = 0u32;
    loop {
        if Instant::now() >= deadline {
            return Err(LoginError::Expired);
        }
        tokio::time::sleep(interval).await;
        tracing::trace!(%url, "polling the token endpoint");
        let request = http.post(&url).form(&[
            ("grant_type", DEVICE_CODE_GRANT_TYPE),
            ("client_id", CLIENT_ID),
            ("device_code", auth.device_code.expose()),
        ]);
        let (status, body) = match crate::http::send_and_read(request).await {
            Ok(answer) => answer,
            Err(err) => {
                tracing::debug!(%err, "token poll failed on the network; retrying");
                ui.poll_event(&PollEvent::NetworkError);
                continue;
            }
        };
        if status == reqwest::StatusCode::OK {
            let token: TokenResponse = serde_json::from_slice(&body)
                .map_err(|e| LoginError::Token(format!("invalid token response: {e}")))?;
            tracing::debug!("device login approved");
            return Ok(token);
        }
        let error = serde_json::from_slice::<OAuthErrorBody>(&body)
            .unwrap_or_default()
            .error;
        if !error.is_empty() {
            transient_failures = 0;
        }
        match error.as_str() {
            "authorization_pending" => {
                tracing::trace!("authorization pending");
                ui.poll_event(&PollEvent::Pending);
            }
            "slow_down" => {
                interval += SLOW_DOWN_STEP;
                tracing::debug!(?interval, "server asked to slow down");
                ui.poll_event(&PollEvent::SlowDown { interval });
            }
            "access_denied" => return Err(LoginError::Denied),
            "expired_token" => return Err(LoginError::Expired),
            // A gateway hiccup without an OAuth error body is transient: retried instead of
            // ending the login (upstream fails), up to a limit.
            "" if is_transient(status) => {
                transient_failures += 1;
                if transient_failures >= MAX_TRANSIENT_FAILURES {
                    return Err(LoginError::Token(format!(
                        "the token endpoint failed {transient_failures} times in a row; last \
                         answer ({status}): {}",
                        short_body(&body)
                    )));
                }
                if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                    interval += SLOW_DOWN_STEP;
                    tracing::debug!(?interval, "token poll: 429; slowing down");
                    ui.poll_event(&PollEvent::SlowDown { interval });
                } else {
                    tracing::debug!(%status, "token poll: gateway error; retrying");
                    ui.poll_event(&PollEvent::NetworkError);
                }
            }
            "" => {
                return Err(LoginError::Token(format!(
                    "unexpected answer ({status}): {}",
                    short_body(&body)
                )));
            }
            other => return Err(LoginError::Token(other.to_owned())),
        }
    }
}

/// The whole login: request a device code, show it ([`LoginUi::show_code`]), poll until
/// approved, save the credentials (under the credentials lock), and report progress to `ui`.
/// `cancel` aborts at any await point with [`LoginError::Cancelled`].
pub async fn login(
    ctx: &AuthContext,
    server: &str,
    ui: &dyn LoginUi,
    cancel: &CancellationToken,
) -> Result<Credentials, LoginError> {
    let server = normalize_server_url(server);
    let flow = async {
        let auth = request_device_code(ctx.http(), &server).await?;
        ui.show_code(&DevicePrompt {
            url: auth.display_url(),
            user_code: &auth.user_code,
            verification_uri: &auth.verification_uri,
            expires_in: auth.lifetime(),
            interval: auth.poll_interval(),
        });
        let token = poll_for_token(ctx.http(), &server, &auth, ui).await?;
        ui.authenticated();
        let credentials = Credentials::from_token_response(&server, token, rfc3339::now_local());
        let lock = ctx.credentials().lock_async().await;
        if let Err(err) = &lock {
            tracing::debug!(%err, "credentials lock unavailable; saving without it");
        }
        ctx.credentials().save(&credentials)?;
        drop(lock);
        ui.saved(ctx.credentials().path());
        Ok(credentials)
    };
    let result = tokio::select! {
        r = flow => r,
        () = cancel.cancelled() => Err(LoginError::Cancelled),
    };
    if let Err(err) = &result {
        ui.failed(err);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gateway_answers_and_429_are_transient() {
        for code in [429u16, 502, 503, 504] {
            assert!(
                is_transient(reqwest::StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [400u16, 401, 404, 500, 501, 505] {
            assert!(
                !is_transient(reqwest::StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    fn auth(interval: impl Into<Option<i64>>, expires_in: i64) -> DeviceAuthorization {
        DeviceAuthorization {
            device_code: Secret::new("dc"),
            user_code: "ABCD-EFGH".into(),
            verification_uri: "https://h/verify".into(),
            verification_uri_complete: String::new(),
            expires_in,
            interval: interval.into(),
        }
    }

    #[test]
    fn interval_is_floored_at_one_second() {
        assert_eq!(auth(0, 600).poll_interval(), Duration::from_secs(1));
        assert_eq!(auth(-3, 600).poll_interval(), Duration::from_secs(1));
        assert_eq!(auth(5, 600).poll_interval(), Duration::from_secs(5));
        assert_eq!(auth(2, 600).poll_interval(), Duration::from_secs(2));
    }

    #[test]
    fn a_response_without_interval_polls_every_five_seconds() {
        let parsed: DeviceAuthorization = serde_json::from_str(
            r#"{"device_code":"dc","user_code":"U","verification_uri":"https://h/v","expires_in":600}"#,
        )
        .unwrap();
        assert_eq!(parsed.poll_interval(), Duration::from_secs(5));
        let null: DeviceAuthorization =
            serde_json::from_str(r#"{"device_code":"dc","expires_in":600,"interval":null}"#)
                .unwrap();
        assert_eq!(null.poll_interval(), Duration::from_secs(5));
        let given: DeviceAuthorization =
            serde_json::from_str(r#"{"device_code":"dc","expires_in":600,"interval":3}"#).unwrap();
        assert_eq!(given.poll_interval(), Duration::from_secs(3));
    }

    #[test]
    fn display_url_falls_back() {
        let mut a = auth(1, 1);
        assert_eq!(a.display_url(), "https://h/verify");
        a.verification_uri_complete = "https://h/verify?user_code=X".into();
        assert_eq!(a.display_url(), "https://h/verify?user_code=X");
    }

    #[test]
    fn upstream_error_texts() {
        assert_eq!(
            LoginError::Denied.to_string(),
            "authorization denied by user"
        );
        assert_eq!(
            LoginError::Expired.to_string(),
            "authorization expired, please try again"
        );
        assert_eq!(
            LoginError::Token("invalid_grant".into()).to_string(),
            "token error: invalid_grant"
        );
    }

    #[test]
    fn body_is_shortened() {
        assert_eq!(short_body(b"  hi\n"), "hi");
        let long = vec![b'x'; 1000];
        assert_eq!(short_body(&long).chars().count(), 301);
    }

    #[tokio::test]
    async fn expired_code_fails_without_polling() {
        // expires_in 0: the deadline has passed before the first poll; no request is sent
        // (the URL is unroutable on purpose).
        let r = poll_for_token(
            &reqwest::Client::new(),
            "http://127.0.0.1:9",
            &auth(1, 0),
            &crate::auth::QuietLoginUi,
        )
        .await;
        assert!(matches!(r, Err(LoginError::Expired)));
    }
}
