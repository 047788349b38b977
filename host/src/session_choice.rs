//! The session choice of the main command (spec §5 step 2): `--resume ID`, `--continue`, or a
//! new sandbox (login if needed, register). Orchestration beside [`crate::worker`]: it drives
//! `auth` (login, registration) over the files of `state`, which itself knows nothing of
//! logging in. The result is a [`SessionGuard`]: this process's
//! pid is already stamped into the session file, and it is cleared when the guard is released
//! or dropped.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::auth::headless::{CREDENTIALS_FILE_ENV, REFRESH_TOKEN_ENV};
use crate::auth::{
    AuthContext, CredentialsError, DEFAULT_SERVER, HeadlessError, LoginError, LoginUi, NeedReLogin,
    RegisterError, normalize_server_url,
};
use crate::fsutil::LockFile;
use crate::rfc3339;
use crate::secret::Secret;
use crate::state::StateError;
use crate::state::session::{Session, SessionGuard, SessionStore};

/// What the user asked for.
#[derive(Debug, Clone, Copy)]
pub struct SessionRequest<'a> {
    /// `--resume <sandbox_id>`.
    pub resume: Option<&'a str>,
    /// `--continue`.
    pub continue_latest: bool,
    /// `--continue-or-register`: like `continue_latest`, but register a new sandbox when there
    /// is no session to continue (for services and containers, whose state directory persists).
    pub register_if_none: bool,
    /// With `continue_latest`: continue only a session of this `name` (the sandboxes of a
    /// config file: a restart resumes each by its name), and register under that name.
    pub continue_named: bool,
    /// Whether a device login may be started when no valid token is at hand (`run`: stdin is a
    /// terminal, or `--login-without-tty`). When not, the choice fails at once with
    /// [`ChooseError::NoCredentials`] instead of waiting for a login nobody can approve.
    pub device_login: bool,
    /// `--server` (new sessions only; resume/continue use the session's server).
    pub server: Option<&'a str>,
    /// `--name` (new sessions only; default: the hostname).
    pub name: Option<&'a str>,
    /// The session type: `claudecode`, `opencode`, or a plugin's type.
    pub session_type: &'a str,
    /// The backend's name (a plugin's name for `custom`): recorded in new sessions, and
    /// `--continue` skips sessions recorded for another backend.
    pub backend: Option<&'a str>,
    /// The process's working directory (upstream matches `--continue` on it, not on
    /// `--work-dir`; quirk 2, kept so sessions written by the upstream agent are found).
    pub cwd: &'a Path,
}

/// How the session was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOrigin {
    /// `--resume ID`.
    Resumed,
    /// `--continue`.
    Continued,
    /// A new sandbox was registered.
    Registered,
}

/// Why no session could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum ChooseError {
    /// `--resume` of a session that a live process runs.
    #[error("Session {id} is still active (PID {pid})")]
    SessionActive {
        /// The sandbox id.
        id: String,
        /// The live process.
        pid: i32,
    },
    /// `--continue` found no inactive session for this directory and type.
    #[error(
        "No session to continue: no resumable session found for directory {dir} and type {session_type} (see `agentserver list`)"
    )]
    NothingToContinue {
        /// The directory searched for.
        dir: String,
        /// The type searched for.
        session_type: String,
    },
    /// The saved credentials exist but cannot be read (no permission, not a regular file, too
    /// large): a new login would discard them, so nothing is done.
    #[error(
        "the saved credentials cannot be read; nothing was changed: fix the file's permissions, \
         or remove it (or run `agentserver login`) to log in again"
    )]
    UnreadableCredentials(#[source] CredentialsError),
    /// No valid token, and no device login possible (no terminal): says what to provision.
    #[error(
        "{}, and there is no terminal for a device login (stdin is not a TTY). {advice}",
        .reason.reason
    )]
    NoCredentials {
        /// Why there is no valid token.
        reason: NeedReLogin,
        /// What to mount or set.
        advice: String,
    },
    /// The provisioned credentials (`AGENTSERVER_CREDENTIALS_FILE`, `AGENTSERVER_REFRESH_TOKEN`)
    /// cannot be used.
    #[error(transparent)]
    Headless(#[from] HeadlessError),
    /// Login failed.
    #[error(transparent)]
    Login(#[from] LoginError),
    /// Still no valid token after a login.
    #[error(transparent)]
    Auth(#[from] NeedReLogin),
    /// Registration failed.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// A state file problem (including `session <id> not found`).
    #[error(transparent)]
    State(#[from] StateError),
}

/// Chooses the session (spec §5 step 2) and stamps this process's pid into it:
/// - `resume`: load that session; a live pid → [`ChooseError::SessionActive`]; the session's
///   server is used (`--server` is ignored);
/// - `continue_latest`: the newest inactive session with `dir == cwd` and this type; with
///   `register_if_none` and no such session, a new sandbox as below;
/// - otherwise: provisioned credentials (`auth.seed()`) are adopted into the credentials
///   file; then the local checks (the credentials file, when present, can be read;
///   `sessions/` is writable), then server = `--server`, else the saved credentials' server,
///   else [`DEFAULT_SERVER`]; a token via `ensure_valid_token`, with an interactive login (through
///   `ui`) on any error when `device_login` allows it (else [`ChooseError::NoCredentials`]); then register a new sandbox. A registration refused for an auth
///   reason (401, missing scope or workspace) triggers one more login and one retry.
///
/// The liveness check and the pid stamp happen under the sessions lock, so two processes
/// cannot resume or continue the same session at once.
pub async fn choose_session(
    request: &SessionRequest<'_>,
    store: &SessionStore,
    auth: &AuthContext,
    ui: &dyn LoginUi,
    cancel: &CancellationToken,
) -> Result<(SessionGuard, SessionOrigin), ChooseError> {
    if let Some(id) = request.resume {
        let lock = lock_store(store).await?;
        let session = store.load(id)?;
        if let Some(pid) = session.live_pid() {
            return Err(ChooseError::SessionActive {
                id: id.to_owned(),
                pid,
            });
        }
        if let Some(server) = request.server
            && normalize_server_url(server) != normalize_server_url(&session.server_url)
        {
            tracing::warn!(
                server = %session.server_url,
                "--server is ignored when resuming; using the session's server"
            );
        }
        if !request.session_type.is_empty() && session.session_type != request.session_type {
            tracing::warn!(
                session_type = %session.session_type,
                requested = %request.session_type,
                "resuming a session of another type"
            );
        }
        let guard = SessionGuard::acquire(store.clone(), session)?;
        drop(lock);
        return Ok((guard, SessionOrigin::Resumed));
    }

    let cwd = request.cwd.to_string_lossy().into_owned();
    if request.continue_latest {
        let lock = lock_store(store).await?;
        let found = if request.continue_named {
            store.find_latest_named(
                &cwd,
                request.session_type,
                request.backend,
                request.name.unwrap_or_default(),
            )
        } else {
            store.find_latest_session(&cwd, request.session_type, request.backend)
        };
        match found {
            Ok(session) => {
                let guard = SessionGuard::acquire(store.clone(), session)?;
                drop(lock);
                return Ok((guard, SessionOrigin::Continued));
            }
            Err(StateError::NoResumableSession) if request.register_if_none => {
                tracing::info!("no session to continue; registering a new sandbox");
            }
            Err(StateError::NoResumableSession) => {
                return Err(ChooseError::NothingToContinue {
                    dir: cwd,
                    session_type: request.session_type.to_owned(),
                });
            }
            Err(e) => return Err(e.into()),
        }
    }

    if let Some(adoption) = auth.adopt_seed().await? {
        tracing::debug!(?adoption, "provisioned credentials");
    }

    // What can be checked here is checked before the server is asked for a sandbox: a
    // sandbox registered by a start that then fails locally is left orphaned on the server.
    let saved = match auth.credentials().load() {
        Ok(saved) => saved,
        Err(e @ CredentialsError::Io { .. }) => return Err(ChooseError::UnreadableCredentials(e)),
        // Unparsable: the login replaces it.
        Err(CredentialsError::Parse { .. }) => None,
    };
    store.check_writable()?;
    let server = match request.server {
        Some(s) => normalize_server_url(s),
        None => match saved {
            Some(c) if !c.server_url.is_empty() => normalize_server_url(&c.server_url),
            _ => DEFAULT_SERVER.to_owned(),
        },
    };
    let name = match request.name {
        Some(n) if !n.is_empty() => n.to_owned(),
        _ => default_name(request.session_type),
    };
    let token = token_or_login(auth, &server, request, ui, cancel, None).await?;
    let registered = match auth
        .register(&server, &token, &name, request.session_type)
        .await
    {
        Err(e) if e.needs_relogin() => {
            tracing::warn!(error = %e, "registration refused; refreshing the token");
            // The refresh token may still be good (the access token was revoked, say): a
            // refresh spares a new login, which a host without a terminal cannot do.
            let retried = match auth.refresh_token_now(&server).await {
                Ok(token) => {
                    auth.register(&server, &token, &name, request.session_type)
                        .await
                }
                Err(refresh) => {
                    tracing::info!(reason = %refresh.reason, "cannot refresh");
                    Err(e)
                }
            };
            match retried {
                Err(e) if e.needs_relogin() => {
                    tracing::warn!(error = %e, "registration refused; logging in again");
                    let token =
                        token_or_login(auth, &server, request, ui, cancel, Some(&e)).await?;
                    auth.register(&server, &token, &name, request.session_type)
                        .await?
                }
                other => other?,
            }
        }
        other => other?,
    };
    let session = Session {
        sandbox_id: registered.sandbox_id,
        tunnel_token: registered.tunnel_token,
        proxy_token: registered.proxy_token,
        workspace_id: registered.workspace_id,
        name,
        session_type: request.session_type.to_owned(),
        server_url: server,
        dir: cwd,
        created_at: rfc3339::now_local(),
        pid: None,
        backend: request.backend.map(str::to_owned),
    };
    let lock = lock_store(store).await?;
    let guard = SessionGuard::acquire(store.clone(), session)?;
    drop(lock);
    Ok((guard, SessionOrigin::Registered))
}

/// A valid access token for `server`, logging in interactively when there is none (or always,
/// when `refused` says why the last token was refused), if `request.device_login` allows it.
async fn token_or_login(
    auth: &AuthContext,
    server: &str,
    request: &SessionRequest<'_>,
    ui: &dyn LoginUi,
    cancel: &CancellationToken,
    refused: Option<&RegisterError>,
) -> Result<Secret, ChooseError> {
    let reason = if let Some(refused) = refused {
        NeedReLogin {
            server: server.to_owned(),
            reason: crate::auth::ReLoginReason::Refused(refused.to_string()),
        }
    } else {
        match auth.ensure_valid_token(server).await {
            Ok(t) => return Ok(t),
            Err(e) => {
                tracing::info!(reason = %e.reason, "login needed");
                e
            }
        }
    };
    if !request.device_login {
        return Err(ChooseError::NoCredentials {
            advice: no_credentials_advice(auth, server),
            reason,
        });
    }
    auth.login(server, ui, cancel).await?;
    Ok(auth.ensure_valid_token(server).await?)
}

/// What to provision when no device login is possible.
fn no_credentials_advice(auth: &AuthContext, server: &str) -> String {
    match auth.seed() {
        Some(seed) => format!(
            "The credentials provisioned by {} are spent or refused: provision fresh ones (run \
             `agentserver login --server {server}` where you can, then put its \
             .credentials.json into the mounted file, or its refreshToken into {REFRESH_TOKEN_ENV}), \
             or remove {} to start over",
            seed.source,
            auth.credentials().path().display()
        ),
        None => format!(
            "Mount a credentials file (the .credentials.json that `agentserver login --server \
             {server}` writes) and set {CREDENTIALS_FILE_ENV} to its path, or set \
             {REFRESH_TOKEN_ENV} to a refresh token, or run `agentserver login --server {server}` \
             once on this machine; --login-without-tty waits for a device login anyway"
        ),
    }
}

/// The sandbox name when `--name` is not given: the hostname, else upstream's fallback
/// ("Claude Code Agent" for claudecode, "Local Agent" otherwise).
pub fn default_name(session_type: &str) -> String {
    sysinfo::System::host_name()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            if session_type == agentserver_plugin_api::SessionType::Claudecode.as_str() {
                "Claude Code Agent".to_owned()
            } else {
                "Local Agent".to_owned()
            }
        })
}

async fn lock_store(store: &SessionStore) -> Result<LockFile, StateError> {
    let store2 = store.clone();
    match tokio::task::spawn_blocking(move || store2.lock()).await {
        Ok(r) => r,
        Err(join) => Err(StateError::Io {
            path: store.dir().to_path_buf(),
            source: std::io::Error::other(join.to_string()),
        }),
    }
}
