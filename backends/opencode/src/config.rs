//! Settings of the opencode backend (the `--opencode-*` flags of spec §11/§13 and a few knobs
//! the host and the tests need).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

pub use agentserver_common::secret::Secret;

/// The local opencode server's password (`--opencode-token`): the workspace's one secret type
/// ([`Secret`]: `Debug` and `Display` print `***`, [`Secret::expose`] is the only way to read
/// it, and its value is scrubbed from the host's logs), under the name this crate's callers
/// already use.
pub type Token = Secret;

/// What to answer when opencode asks for a permission during a task (a task has no human
/// to ask; see `docs/decisions/opencode.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PermissionPolicy {
    /// Reply `once` (the equivalent of claude's `bypassPermissions`, the default).
    #[default]
    Approve,
    /// Reply `reject`.
    Reject,
    /// Do not answer (someone watching through the web UI may answer).
    Ignore,
}

/// Settings of [`crate::OpencodeBackend`]. `Debug` shows the names of the extra environment
/// variables but not their values, and never the token.
#[derive(Clone)]
pub struct OpencodeConfig {
    /// `--opencode-url`: use the opencode server at this URL; nothing is started.
    pub opencode_url: Option<String>,
    /// `--opencode-token`: the server's password, sent as Basic `opencode:<token>` and given to
    /// an auto-started server as `OPENCODE_SERVER_PASSWORD`.
    pub opencode_token: Option<Token>,
    /// `--auto-start` (default true): start `opencode serve` unless one already answers on
    /// the port. Ignored when [`OpencodeConfig::opencode_url`] is set.
    pub auto_start: bool,
    /// `--opencode-bin` (default `opencode`, looked up in `PATH`).
    pub opencode_bin: PathBuf,
    /// `--opencode-port` (default 4096). 0 lets opencode choose; the URL is then read from
    /// its "listening" line.
    pub opencode_port: u16,
    /// Directory `opencode serve` runs in and tasks default to when they carry none.
    pub workdir: PathBuf,
    /// Start `opencode serve` with an empty environment plus [`OpencodeConfig::env`]
    /// (tests; default false: the host's environment is inherited).
    pub clear_env: bool,
    /// Extra environment for `opencode serve`.
    pub env: Vec<(OsString, OsString)>,
    /// Model for task prompts as `provider/model`; `None` uses opencode's configured default.
    pub model: Option<String>,
    /// opencode agent for task prompts (`build` when `None`, opencode's default).
    pub agent: Option<String>,
    /// Answer to permission requests during tasks.
    pub permissions: PermissionPolicy,
    /// How long `opencode serve` may take to print its "listening" line and answer
    /// `/global/health` (default 30 s, as upstream).
    pub ready_timeout: Duration,
    /// Per-request timeout of the readiness and liveness health checks (default 2 s).
    pub health_timeout: Duration,
    /// Time between SIGINT and SIGKILL when stopping the server (default 5 s).
    pub stop_grace: Duration,
    /// First delay before restarting a server that died (default 1 s), doubled per
    /// consecutive failure…
    pub restart_backoff_initial: Duration,
    /// …up to this (default 60 s). A server that ran longer than this resets the delay.
    pub restart_backoff_max: Duration,
    /// Timeout of the small API calls of a task (create session, prompt, abort; default 30 s).
    pub api_timeout: Duration,
    /// After an abort, how long to wait for opencode to report the session idle (default 5 s).
    pub abort_timeout: Duration,
}

impl Default for OpencodeConfig {
    fn default() -> Self {
        Self {
            opencode_url: None,
            opencode_token: None,
            auto_start: true,
            opencode_bin: PathBuf::from("opencode"),
            opencode_port: 4096,
            workdir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            clear_env: false,
            env: Vec::new(),
            model: None,
            agent: None,
            permissions: PermissionPolicy::Approve,
            ready_timeout: Duration::from_secs(30),
            health_timeout: Duration::from_secs(2),
            stop_grace: Duration::from_secs(5),
            restart_backoff_initial: Duration::from_secs(1),
            restart_backoff_max: Duration::from_secs(60),
            api_timeout: Duration::from_secs(30),
            abort_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for OpencodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env_keys: Vec<_> = self.env.iter().map(|(k, _)| k).collect();
        f.debug_struct("OpencodeConfig")
            .field("opencode_url", &self.opencode_url)
            .field("opencode_token", &self.opencode_token)
            .field("auto_start", &self.auto_start)
            .field("opencode_bin", &self.opencode_bin)
            .field("opencode_port", &self.opencode_port)
            .field("workdir", &self.workdir)
            .field("clear_env", &self.clear_env)
            .field("env_keys", &env_keys)
            .field("model", &self.model)
            .field("agent", &self.agent)
            .field("permissions", &self.permissions)
            .finish_non_exhaustive()
    }
}

impl OpencodeConfig {
    /// Adds one environment variable for `opencode serve`.
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The token, if one is set and not empty.
    pub(crate) fn token(&self) -> Option<&Token> {
        self.opencode_token.as_ref().filter(|t| !t.is_empty())
    }

    /// `provider/model` split into `(providerID, modelID)`.
    pub(crate) fn model_ref(&self) -> Option<(String, String)> {
        let model = self.model.as_deref()?;
        let (provider, model) = model.split_once('/')?;
        (!provider.is_empty() && !model.is_empty()).then(|| (provider.to_owned(), model.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_prints() {
        let config = OpencodeConfig {
            opencode_token: Some(Token::new("hunter2")),
            ..OpencodeConfig::default()
        }
        .with_env("API_KEY", "sekrit");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("sekrit"), "{debug}");
        assert!(debug.contains("API_KEY"), "{debug}");
        assert!(debug.contains("***"));
        assert_eq!(Token::new("x").to_string(), "***");
        assert_eq!(config.token().map(Token::expose), Some("hunter2"));
    }

    #[test]
    fn empty_token_is_no_token() {
        let config = OpencodeConfig {
            opencode_token: Some(Token::new("")),
            ..OpencodeConfig::default()
        };
        assert!(config.token().is_none());
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = OpencodeConfig::default();
        assert!(c.auto_start);
        assert_eq!(c.opencode_port, 4096);
        assert_eq!(c.opencode_bin, PathBuf::from("opencode"));
        assert_eq!(c.stop_grace, Duration::from_secs(5));
    }

    #[test]
    fn model_refs() {
        let mut c = OpencodeConfig {
            model: Some("fake/fake-model".into()),
            ..OpencodeConfig::default()
        };
        assert_eq!(c.model_ref(), Some(("fake".into(), "fake-model".into())));
        c.model = Some("nomodel".into());
        assert_eq!(c.model_ref(), None);
    }
}
