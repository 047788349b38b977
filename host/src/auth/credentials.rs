//! `~/.agentserver/.credentials.json` (spec §2.5): camelCase JSON, pretty-printed with two-space
//! indent, mode 0600 in a 0700 directory, replaced atomically.

use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Deserializer, Serialize};

use super::device::TokenResponse;
use crate::fsutil::{LockFile, read_state_file, write_private_atomic};
use crate::rfc3339;
use crate::secret::Secret;

/// The saved OAuth tokens. Field names are upstream's (camelCase), so a file written by the
/// upstream agent is read as is, and ours is readable by it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// Server the tokens belong to (normalised; absent in files from upstream v0.33–v0.34).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub server_url: String,
    /// OAuth access token.
    #[serde(default)]
    pub access_token: Secret,
    /// OAuth refresh token.
    #[serde(default)]
    pub refresh_token: Secret,
    /// When the access token expires (RFC 3339, local offset).
    #[serde(with = "rfc3339", default = "epoch")]
    pub expires_at: DateTime<FixedOffset>,
    /// Granted scopes (`scope` split on spaces), omitted when empty.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub scopes: Vec<String>,
}

fn epoch() -> DateTime<FixedOffset> {
    DateTime::<FixedOffset>::default()
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

impl Credentials {
    /// Credentials from a fresh token response received at `now`.
    pub fn from_token_response(
        server: &str,
        token: TokenResponse,
        now: DateTime<FixedOffset>,
    ) -> Self {
        Self {
            server_url: super::normalize_server_url(server),
            access_token: token.access_token,
            refresh_token: token.refresh_token,
            expires_at: now + chrono::Duration::seconds(token.expires_in.max(0)),
            scopes: token
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// Errors reading or writing the credentials file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read or written.
    #[error("cannot access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid credentials JSON.
    #[error("cannot parse {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// The credentials file.
#[derive(Debug, Clone)]
pub struct CredentialsFile {
    path: PathBuf,
}

impl CredentialsFile {
    /// The credentials file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the credentials. A missing file is `Ok(None)` ("not logged in"), not an error;
    /// a file that cannot be read (no permission, not a regular file, too large, a symlink
    /// out of its directory) is [`CredentialsError::Io`].
    pub fn load(&self) -> Result<Option<Credentials>, CredentialsError> {
        match read_state_file(&self.path) {
            Ok(data) => {
                serde_json::from_slice(&data)
                    .map(Some)
                    .map_err(|source| CredentialsError::Parse {
                        path: self.path.clone(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CredentialsError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Writes the credentials atomically: two-space pretty JSON, mode 0600, directory 0700.
    pub fn save(&self, credentials: &Credentials) -> Result<(), CredentialsError> {
        let data =
            serde_json::to_vec_pretty(credentials).map_err(|source| CredentialsError::Parse {
                path: self.path.clone(),
                source,
            })?;
        write_private_atomic(&self.path, &data).map_err(|source| CredentialsError::Io {
            path: self.path.clone(),
            source,
        })?;
        tracing::debug!(path = %self.path.display(), "credentials saved");
        Ok(())
    }

    /// Takes the exclusive lock `.credentials.json.lock` that serialises refreshes between
    /// processes (so two hosts do not both spend the same rotating refresh token). Blocking.
    pub fn lock(&self) -> Result<LockFile, CredentialsError> {
        let mut p = self.path.as_os_str().to_owned();
        p.push(".lock");
        let path = PathBuf::from(p);
        LockFile::acquire(&path).map_err(|source| CredentialsError::Io { path, source })
    }

    /// [`CredentialsFile::lock`] on the blocking pool, for async callers.
    pub async fn lock_async(&self) -> Result<LockFile, CredentialsError> {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.lock()).await {
            Ok(r) => r,
            Err(join) => Err(CredentialsError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A file as the upstream Go agent (v0.35+) writes it.
    const UPSTREAM: &str = r#"{
  "serverUrl": "https://agent.cs.ac.cn",
  "accessToken": "ory_at_upstreamAccess",
  "refreshToken": "ory_rt_upstreamRefresh",
  "expiresAt": "2026-04-09T12:34:56.789012345+08:00",
  "scopes": [
    "openid",
    "profile",
    "agent:register"
  ]
}"#;

    #[test]
    fn upstream_fixture_parses() {
        let c: Credentials = serde_json::from_str(UPSTREAM).unwrap();
        assert_eq!(c.server_url, "https://agent.cs.ac.cn");
        assert_eq!(c.access_token.expose(), "ory_at_upstreamAccess");
        assert_eq!(c.refresh_token.expose(), "ory_rt_upstreamRefresh");
        assert_eq!(c.scopes, ["openid", "profile", "agent:register"]);
        assert_eq!(c.expires_at.offset().local_minus_utc(), 8 * 3600);
        assert!(!format!("{c:?}").contains("upstream"));
    }

    #[test]
    fn v033_file_without_server_url_parses() {
        let c: Credentials = serde_json::from_str(
            r#"{"accessToken":"a","refreshToken":"r","expiresAt":"2026-04-08T10:00:00Z","hydraUrl":"x","scopes":null}"#,
        )
        .unwrap();
        assert!(c.server_url.is_empty());
        assert!(c.scopes.is_empty());
    }

    #[test]
    fn saved_file_has_upstream_names_and_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let file = CredentialsFile::new(tmp.path().join("home/.credentials.json"));
        assert!(file.load().unwrap().is_none());
        let c: Credentials = serde_json::from_str(UPSTREAM).unwrap();
        file.save(&c).unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        for key in [
            "\"serverUrl\"",
            "\"accessToken\"",
            "\"refreshToken\"",
            "\"expiresAt\"",
            "\"scopes\"",
        ] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
        assert!(text.contains("\n  \"accessToken\""), "two-space indent");
        assert_eq!(file.load().unwrap().unwrap(), c);
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(tmp.path().join("home"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }

    #[test]
    fn garbage_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(".credentials.json");
        std::fs::write(&path, "{nope").unwrap();
        assert!(matches!(
            CredentialsFile::new(&path).load(),
            Err(CredentialsError::Parse { .. })
        ));
    }

    #[test]
    fn from_token_response_splits_scopes_and_sets_expiry() {
        let now = rfc3339::parse("2026-04-08T10:00:00+02:00").unwrap();
        let tok: TokenResponse = serde_json::from_str(
            r#"{"access_token":"a","refresh_token":"r","token_type":"bearer","expires_in":3600,"scope":"openid profile agent:register"}"#,
        )
        .unwrap();
        let c = Credentials::from_token_response("http://x/", tok, now);
        assert_eq!(c.server_url, "http://x");
        assert_eq!(c.scopes.len(), 3);
        assert_eq!(rfc3339::format(&c.expires_at), "2026-04-08T11:00:00+02:00");
    }
}
