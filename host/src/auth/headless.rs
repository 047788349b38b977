//! Headless credentials (issue 21, point 5): a host in a container takes its OAuth
//! credentials from a mounted file or the environment instead of a device login.
//!
//! - [`CREDENTIALS_FILE_ENV`] (`AGENTSERVER_CREDENTIALS_FILE`): the path of a credentials file
//!   in the format of `~/.agentserver/.credentials.json` (spec §2.5), typically a Kubernetes
//!   Secret mounted read-only;
//! - [`REFRESH_TOKEN_ENV`] (`AGENTSERVER_REFRESH_TOKEN`): a pre-provisioned refresh token,
//!   exchanged through the normal refresh grant (spec §2.6 step 5) when a sandbox is registered.
//!
//! When both are set the file wins (a warning says the variable is ignored). Either is a
//! [`Seed`]: the host never writes it. The seed is *adopted* into the host's own credentials
//! file in the writable state directory (`$AGENTSERVER_HOME/.credentials.json`), which
//! `ensure_valid_token` refreshes and saves as usual, so a rotated refresh token is kept there
//! and survives a restart (a read-only seed could not hold it). The sidecar
//! `.credentials.json.seed` holds a SHA-256 fingerprint of the adopted seed: while the seed
//! stays the same, the working copy (with the rotated tokens descending from it) is kept; a
//! different seed (a new Secret) replaces the working copy, and so takes precedence over
//! credentials a device login saved there.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::credentials::{Credentials, CredentialsError, CredentialsFile};
use crate::fsutil::{read_state_file, write_private_atomic};
use crate::secret::Secret;

/// The variable naming a mounted credentials file.
pub const CREDENTIALS_FILE_ENV: &str = "AGENTSERVER_CREDENTIALS_FILE";
/// The variable holding a pre-provisioned refresh token.
pub const REFRESH_TOKEN_ENV: &str = "AGENTSERVER_REFRESH_TOKEN";

/// Where a [`Seed`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedSource {
    /// `AGENTSERVER_CREDENTIALS_FILE=path`.
    File(PathBuf),
    /// `AGENTSERVER_REFRESH_TOKEN`.
    RefreshToken,
}

impl std::fmt::Display for SeedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "{CREDENTIALS_FILE_ENV}={}", path.display()),
            Self::RefreshToken => f.write_str(REFRESH_TOKEN_ENV),
        }
    }
}

/// Credentials provisioned for a host without a terminal.
#[derive(Debug, Clone)]
pub struct Seed {
    /// Where they came from.
    pub source: SeedSource,
    /// The credentials (for a refresh token alone: no access token, expired, any server).
    pub credentials: Credentials,
}

/// Why the provisioned credentials cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HeadlessError {
    /// The file named by `AGENTSERVER_CREDENTIALS_FILE` does not exist.
    #[error(
        "{CREDENTIALS_FILE_ENV} names {path}, which does not exist: mount the credentials file \
         there (the `.credentials.json` that `agentserver login` writes) or unset the variable"
    )]
    FileMissing {
        /// The path.
        path: PathBuf,
    },
    /// The file cannot be read or parsed.
    #[error("{CREDENTIALS_FILE_ENV}: the credentials file cannot be used")]
    File(#[source] CredentialsError),
    /// A variable is set but holds nothing usable.
    #[error("{0}")]
    Empty(String),
    /// Adopting the seed into the state directory failed.
    #[error("cannot adopt the credentials from {source_name} into the state directory")]
    Adopt {
        /// The seed's source, for the message.
        source_name: String,
        /// What failed.
        #[source]
        source: CredentialsError,
    },
}

/// What [`adopt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// The working copy descends from this seed already and was kept.
    Kept,
    /// The seed was copied into the working copy.
    Adopted,
    /// The seed *is* the working copy (the variable names the state directory's own file).
    Same,
}

/// The seed from the process environment, if one is provisioned.
pub fn seed_from_env() -> Result<Option<Seed>, HeadlessError> {
    seed_from(|name| std::env::var_os(name))
}

/// The seed from the variables `lookup` answers (the environment, or a test's map).
pub fn seed_from(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Option<Seed>, HeadlessError> {
    let file = lookup(CREDENTIALS_FILE_ENV).filter(|v| !v.is_empty());
    let token = lookup(REFRESH_TOKEN_ENV);
    if let Some(path) = file {
        if token.is_some() {
            tracing::warn!(
                "both {CREDENTIALS_FILE_ENV} and {REFRESH_TOKEN_ENV} are set; using the file, ignoring the token"
            );
        }
        return seed_from_file(PathBuf::from(path)).map(Some);
    }
    let Some(token) = token else {
        return Ok(None);
    };
    let token = token.into_string().unwrap_or_default();
    let token = token.trim();
    if token.is_empty() {
        return Err(HeadlessError::Empty(format!(
            "{REFRESH_TOKEN_ENV} is set but empty (or not UTF-8): set it to a refresh token, or unset it"
        )));
    }
    Ok(Some(Seed {
        source: SeedSource::RefreshToken,
        credentials: Credentials {
            server_url: String::new(),
            access_token: Secret::default(),
            refresh_token: Secret::new(token),
            expires_at: Default::default(),
            scopes: Vec::new(),
        },
    }))
}

fn seed_from_file(path: PathBuf) -> Result<Seed, HeadlessError> {
    let credentials = match CredentialsFile::new(&path).load() {
        Ok(Some(c)) => c,
        Ok(None) => return Err(HeadlessError::FileMissing { path }),
        Err(e) => return Err(HeadlessError::File(e)),
    };
    if credentials.access_token.is_empty() && credentials.refresh_token.is_empty() {
        return Err(HeadlessError::Empty(format!(
            "{CREDENTIALS_FILE_ENV}={}: the file holds neither an access token nor a refresh token",
            path.display()
        )));
    }
    Ok(Seed {
        source: SeedSource::File(path),
        credentials,
    })
}

/// The fingerprint of a seed: SHA-256 over its server and tokens (hex). It identifies the seed
/// without holding a secret.
pub fn fingerprint(seed: &Credentials) -> String {
    let mut h = Sha256::new();
    h.update(b"agentserver-seed-v1\0");
    h.update(seed.server_url.as_bytes());
    h.update(b"\0");
    h.update(seed.access_token.expose().as_bytes());
    h.update(b"\0");
    h.update(seed.refresh_token.expose().as_bytes());
    hex::encode(h.finalize())
}

/// The sidecar next to the working credentials file that records the adopted seed.
pub fn sidecar_path(working: &Path) -> PathBuf {
    let mut p = working.as_os_str().to_owned();
    p.push(".seed");
    PathBuf::from(p)
}

/// Makes `working` (the state directory's credentials file) descend from `seed`, under the
/// credentials lock: kept when the sidecar names this seed and the file reads, else replaced by
/// the seed. The seed itself is never written.
pub async fn adopt(seed: &Seed, working: &CredentialsFile) -> Result<Adoption, HeadlessError> {
    let fail = |source| HeadlessError::Adopt {
        source_name: seed.source.to_string(),
        source,
    };
    if let SeedSource::File(path) = &seed.source
        && same_file(path, working.path())
    {
        return Ok(Adoption::Same);
    }
    let _lock = working.lock_async().await.map_err(fail)?;
    let print = fingerprint(&seed.credentials);
    let sidecar = sidecar_path(working.path());
    let recorded = read_state_file(&sidecar)
        .ok()
        .map(|d| String::from_utf8_lossy(&d).trim().to_owned());
    if recorded.as_deref() == Some(print.as_str()) && matches!(working.load(), Ok(Some(_))) {
        tracing::debug!(source = %seed.source, "credentials descend from the provisioned seed; kept");
        return Ok(Adoption::Kept);
    }
    working.save(&seed.credentials).map_err(fail)?;
    write_private_atomic(&sidecar, print.as_bytes()).map_err(|source| {
        fail(CredentialsError::Io {
            path: sidecar.clone(),
            source,
        })
    })?;
    tracing::info!(source = %seed.source, "adopted the provisioned credentials");
    Ok(Adoption::Adopted)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn nothing_provisioned_is_none() {
        assert!(seed_from(lookup(&[])).unwrap().is_none());
        assert!(
            seed_from(lookup(&[(CREDENTIALS_FILE_ENV, "")]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn refresh_token_seed_is_a_secret() {
        let seed = seed_from(lookup(&[(REFRESH_TOKEN_ENV, " rt-from-env-1234 \n")]))
            .unwrap()
            .unwrap();
        assert_eq!(seed.source, SeedSource::RefreshToken);
        assert_eq!(seed.credentials.refresh_token.expose(), "rt-from-env-1234");
        assert!(seed.credentials.access_token.is_empty());
        assert!(!format!("{seed:?}").contains("rt-from-env"));
        assert_eq!(
            crate::secret::redact("x rt-from-env-1234 y"),
            Some("x *** y".to_owned()),
            "registered for redaction"
        );
        let err = seed_from(lookup(&[(REFRESH_TOKEN_ENV, " ")])).unwrap_err();
        assert!(err.to_string().contains("is set but empty"), "{err}");
    }

    #[test]
    fn missing_file_says_what_to_mount_and_file_wins_over_token() {
        let err = seed_from(lookup(&[
            (CREDENTIALS_FILE_ENV, "/nonexistent/creds.json"),
            (REFRESH_TOKEN_ENV, "rt"),
        ]))
        .unwrap_err();
        assert!(matches!(err, HeadlessError::FileMissing { .. }), "{err}");
        assert!(err.to_string().contains("mount the credentials file"));
    }

    #[tokio::test]
    async fn adopt_keeps_the_descendants_of_the_same_seed_and_replaces_on_a_new_one() {
        let tmp = tempfile::tempdir().unwrap();
        let working = CredentialsFile::new(tmp.path().join("home/.credentials.json"));
        let seed = seed_from(lookup(&[(REFRESH_TOKEN_ENV, "seed-one")]))
            .unwrap()
            .unwrap();
        assert_eq!(adopt(&seed, &working).await.unwrap(), Adoption::Adopted);
        // A refresh rotates the token in the working copy.
        let mut rotated = working.load().unwrap().unwrap();
        rotated.refresh_token = Secret::new("rotated-two");
        working.save(&rotated).unwrap();
        assert_eq!(adopt(&seed, &working).await.unwrap(), Adoption::Kept);
        assert_eq!(
            working.load().unwrap().unwrap().refresh_token.expose(),
            "rotated-two"
        );
        let sidecar = std::fs::read_to_string(sidecar_path(working.path())).unwrap();
        assert!(!sidecar.contains("seed-one") && sidecar.len() == 64);
        // A new seed replaces it.
        let other = seed_from(lookup(&[(REFRESH_TOKEN_ENV, "seed-three")]))
            .unwrap()
            .unwrap();
        assert_eq!(adopt(&other, &working).await.unwrap(), Adoption::Adopted);
        assert_eq!(
            working.load().unwrap().unwrap().refresh_token.expose(),
            "seed-three"
        );
    }
}
