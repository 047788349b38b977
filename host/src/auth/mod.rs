//! OAuth 2.0 device flow login, the credentials file and token refresh (spec §2), and sandbox registration (§3.1).
//!
//! - [`device`]: the device authorization grant, wire-exact (sleep-then-poll, `slow_down` +5 s,
//!   interval floor 1 s, silent retry on network errors), and [`login`] = flow + save.
//! - [`credentials`]: `~/.agentserver/.credentials.json` (camelCase, 0600, atomic).
//! - [`token`]: [`AuthContext::ensure_valid_token`] (§2.6) with refresh-token rotation and
//!   [`NeedReLogin`].
//! - [`register`]: `POST /api/agent/register` (§3.1).
//! - [`headless`]: credentials provisioned for hosts without a terminal (a mounted file,
//!   `AGENTSERVER_CREDENTIALS_FILE`, or `AGENTSERVER_REFRESH_TOKEN`), adopted into the state
//!   directory's credentials file.
//! - [`ui`]: what the user sees during login (terminal: URL, code, QR, browser, spinner).
//!
//! Invariant: every token is a [`Secret`] from the moment it is parsed; none is ever logged.
//! The only calls of [`Secret::expose`] put a token into a request or a file.

pub mod credentials;
pub mod device;
pub mod headless;
pub mod register;
pub mod token;
pub mod ui;

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use credentials::{Credentials, CredentialsError, CredentialsFile};
pub use device::{DeviceAuthorization, LoginError, PollEvent, TokenResponse};
pub use headless::{Adoption, HeadlessError, Seed, SeedSource};
pub use register::{RegisterError, RegisteredSandbox};
pub use token::{NeedReLogin, ReLoginReason};
pub use ui::{DevicePrompt, LoginUi, QuietLoginUi, TerminalLoginUi};

use crate::secret::Secret;

/// The OAuth client id of the agent CLI (spec §2.1).
pub const CLIENT_ID: &str = "agentserver-agent-cli";
/// The scopes asked for, one space-separated string (spec §2.1).
pub const SCOPE: &str = "openid profile agent:register";
/// Default server when neither `--server` nor saved credentials name one (spec §1).
pub const DEFAULT_SERVER: &str = "https://agent.cs.ac.cn";

/// Strips trailing `/` from a server URL. Every server URL is normalised this way before it is
/// stored or compared (upstream compared byte-exact, quirk 3; a trailing slash then meant
/// "another server" and `//api/...` paths).
pub fn normalize_server_url(server: &str) -> String {
    server.trim().trim_end_matches('/').to_owned()
}

/// The HTTP client and credentials file the auth operations use.
#[derive(Debug, Clone)]
pub struct AuthContext {
    http: reqwest::Client,
    credentials: CredentialsFile,
    seed: Option<Seed>,
}

impl AuthContext {
    /// A context over the credentials file at `path`, with a default HTTP client.
    pub fn new(credentials_path: impl Into<PathBuf>) -> Self {
        Self {
            http: default_http_client(),
            credentials: CredentialsFile::new(credentials_path),
            seed: None,
        }
    }

    /// `~/.agentserver/.credentials.json` (honours `AGENTSERVER_HOME`).
    pub fn default_location() -> Self {
        Self::new(crate::paths::credentials_file())
    }

    /// Uses this HTTP client instead of the default one.
    pub fn with_http(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// Uses these provisioned credentials (see [`headless`]) when a token is needed.
    pub fn with_seed(mut self, seed: Option<Seed>) -> Self {
        self.seed = seed;
        self
    }

    /// The provisioned credentials, if any.
    pub fn seed(&self) -> Option<&Seed> {
        self.seed.as_ref()
    }

    /// Adopts the provisioned credentials into the credentials file (see [`headless::adopt`]);
    /// `Ok(None)` when none are provisioned.
    pub async fn adopt_seed(&self) -> Result<Option<Adoption>, HeadlessError> {
        match &self.seed {
            Some(seed) => headless::adopt(seed, &self.credentials).await.map(Some),
            None => Ok(None),
        }
    }

    /// The HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The credentials file.
    pub fn credentials(&self) -> &CredentialsFile {
        &self.credentials
    }

    /// Runs the device flow against `server` and saves the credentials (see [`device::login`]).
    pub async fn login(
        &self,
        server: &str,
        ui: &dyn LoginUi,
        cancel: &CancellationToken,
    ) -> Result<Credentials, LoginError> {
        device::login(self, server, ui, cancel).await
    }

    /// Registers a new sandbox (see [`register::register_with`]).
    pub async fn register(
        &self,
        server: &str,
        access_token: &Secret,
        name: &str,
        sandbox_type: &str,
    ) -> Result<RegisteredSandbox, RegisterError> {
        register::register_with(&self.http, server, access_token, name, sandbox_type).await
    }
}

pub(crate) use crate::http::error_chain;

/// The HTTP client used for OAuth and registration: no special headers (spec §1), bounded
/// connect and request times so a dead server cannot hang a poll round.
pub fn default_http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

/// `EnsureValidToken(server)` with the default credentials file (spec §2.6).
pub async fn ensure_valid_token(server: &str) -> Result<Secret, NeedReLogin> {
    AuthContext::default_location()
        .ensure_valid_token(server)
        .await
}

/// `POST {server}/api/agent/register` with a default HTTP client (spec §3.1).
pub async fn register(
    server: &str,
    access_token: &Secret,
    name: &str,
    sandbox_type: &str,
) -> Result<RegisteredSandbox, RegisterError> {
    register::register_with(
        &default_http_client(),
        server,
        access_token,
        name,
        sandbox_type,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_trailing_slashes() {
        assert_eq!(normalize_server_url("https://a.b/"), "https://a.b");
        assert_eq!(normalize_server_url("https://a.b//"), "https://a.b");
        assert_eq!(normalize_server_url("https://a.b/x/"), "https://a.b/x");
        assert_eq!(normalize_server_url(" https://a.b "), "https://a.b");
        assert_eq!(normalize_server_url("https://a.b"), "https://a.b");
    }
}
