//! Settings of the acp backend: which agent to start (a command line or a [`Preset`]), its
//! environment, the permission policy and the timeouts of each start-up step.

use std::ffi::OsString;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A known ACP agent: its command line and the environment it needs to run unattended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// `opencode acp` (opencode-ai).
    OpencodeAcp,
    /// `claude-agent-acp` (`@zed-industries/claude-agent-acp`, Claude Code through the Agent SDK).
    ClaudeAcp,
}

impl Preset {
    /// Every preset, for help texts and errors.
    pub const ALL: [Preset; 2] = [Preset::OpencodeAcp, Preset::ClaudeAcp];

    /// The name `--acp-preset` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::OpencodeAcp => "opencode-acp",
            Self::ClaudeAcp => "claude-acp",
        }
    }

    /// The agent's command line (looked up in `PATH`).
    pub fn command(self) -> Vec<String> {
        match self {
            Self::OpencodeAcp => vec!["opencode".into(), "acp".into()],
            Self::ClaudeAcp => vec!["claude-agent-acp".into()],
        }
    }

    /// Environment the agent gets on top of the host's: no self-update, no telemetry, nothing
    /// that waits on a person.
    pub fn env(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Self::OpencodeAcp => vec![
                ("OPENCODE_DISABLE_AUTOUPDATE", "1"),
                ("OPENCODE_DISABLE_SHARE", "1"),
            ],
            Self::ClaudeAcp => vec![
                ("DISABLE_AUTOUPDATER", "1"),
                ("DISABLE_TELEMETRY", "1"),
                ("DISABLE_ERROR_REPORTING", "1"),
                ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1"),
            ],
        }
    }
}

/// A name that is not a preset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown ACP preset `{0}` (known: opencode-acp, claude-acp)")]
pub struct UnknownPreset(pub String);

impl FromStr for Preset {
    type Err = UnknownPreset;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| UnknownPreset(name.to_owned()))
    }
}

/// A command line that cannot be split into words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandLineError {
    /// Unbalanced quotes.
    #[error("cannot split `{0}` into words: {1}")]
    Unsplittable(String, String),
    /// Nothing to run.
    #[error("the command line is empty")]
    Empty,
}

/// Splits an agent command line (`"opencode acp"`, `"npx -y pkg"`) into program and
/// arguments as a POSIX shell would, without running a shell.
pub fn split_command(text: &str) -> Result<Vec<String>, CommandLineError> {
    let words = shell_words::split(text)
        .map_err(|e| CommandLineError::Unsplittable(text.to_owned(), e.to_string()))?;
    if words.is_empty() {
        return Err(CommandLineError::Empty);
    }
    Ok(words)
}

/// How `session/request_permission` is answered (a task has no person to ask).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PermissionPolicy {
    /// Allow (`allow_once`, else `allow_always`) when every location the tool call names is
    /// inside the task's workspace; reject a tool call that names a path outside it. The
    /// equivalent of Claude Code's `bypassPermissions` within the workspace (the default).
    #[default]
    AllowInWorkspace,
    /// Reject every request (`reject_once`, else `reject_always`).
    Deny,
}

impl FromStr for PermissionPolicy {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "allow" => Ok(Self::AllowInWorkspace),
            "deny" => Ok(Self::Deny),
            other => Err(format!("unknown permission policy `{other}` (allow, deny)")),
        }
    }
}

/// Settings of [`crate::AcpBackend`]. `Debug` shows the names of the extra environment
/// variables but not their values.
#[derive(Clone)]
pub struct AcpConfig {
    /// The agent's command line: program and arguments (`["opencode", "acp"]`).
    pub command: Vec<String>,
    /// Directory the agent runs in and tasks default to when they carry none.
    pub workdir: PathBuf,
    /// Start the agent with an empty environment plus [`AcpConfig::env`] (tests; default
    /// false: the host's environment is inherited).
    pub clear_env: bool,
    /// Extra environment for the agent (a preset's first, then the user's).
    pub env: Vec<(OsString, OsString)>,
    /// Answer to permission requests.
    pub permissions: PermissionPolicy,
    /// Spawning the agent and writing `initialize` to its stdin (default 10 s).
    pub start_timeout: Duration,
    /// The agent's answer to `initialize` (default 60 s; an agent that needs a flag to speak
    /// ACP, such as Gemini's `--acp`, never answers).
    pub initialize_timeout: Duration,
    /// The agent's answer to `session/new` (default 60 s; Claude's adapter has been seen
    /// taking about 46 s).
    pub session_timeout: Duration,
    /// After `session/cancel`, how long the turn may take to end with `cancelled` before
    /// the agent's process group is stopped (default 10 s).
    pub cancel_timeout: Duration,
    /// A turn with no message from the agent for this long fails and the agent is stopped
    /// (default 30 min; `None`: no limit).
    pub idle_timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when stopping the agent (default 5 s).
    pub stop_grace: Duration,
    /// Make the next task's session ahead of time in [`AcpConfig::workdir`] (default true;
    /// see `spare.rs`).
    pub prepare_sessions: bool,
}

impl AcpConfig {
    /// A configuration for `command` in `workdir`, defaults elsewhere.
    pub fn new(command: Vec<String>, workdir: PathBuf) -> Self {
        Self {
            command,
            workdir,
            ..Self::default()
        }
    }

    /// The configuration of a preset: its command and environment.
    pub fn preset(preset: Preset, workdir: PathBuf) -> Self {
        let mut config = Self::new(preset.command(), workdir);
        for (k, v) in preset.env() {
            config = config.with_env(k, v);
        }
        config
    }

    /// Whether the agent's program can be run: a command is configured and its program is
    /// an executable file (a bare name is looked up in the agent's `PATH`). Checked before a
    /// sandbox is registered, so a start that cannot work leaves nothing behind.
    pub fn check_program(&self) -> Result<PathBuf, String> {
        use std::os::unix::fs::PermissionsExt;
        let program = self
            .command
            .first()
            .ok_or("no ACP agent command configured: pass --acp-command or --acp-preset")?;
        let executable = |p: &std::path::Path| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        if program.contains('/') {
            let path = self.workdir.join(program);
            return if executable(&path) {
                Ok(path)
            } else {
                Err(format!(
                    "the ACP agent program `{program}` is not an executable file"
                ))
            };
        }
        let path_var = self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| {
                (!self.clear_env)
                    .then(|| std::env::var_os("PATH"))
                    .flatten()
            })
            .unwrap_or_default();
        std::env::split_paths(&path_var)
            .map(|dir| dir.join(program))
            .find(|p| executable(p))
            .ok_or_else(|| format!("the ACP agent program `{program}` is not in PATH"))
    }

    /// Adds one environment variable for the agent.
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

impl Default for AcpConfig {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            workdir: PathBuf::from("."),
            clear_env: false,
            env: Vec::new(),
            permissions: PermissionPolicy::default(),
            start_timeout: Duration::from_secs(10),
            initialize_timeout: Duration::from_secs(60),
            session_timeout: Duration::from_secs(60),
            cancel_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(30 * 60)),
            stop_grace: Duration::from_secs(5),
            prepare_sessions: true,
        }
    }
}

impl std::fmt::Debug for AcpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env_names: Vec<_> = self.env.iter().map(|(k, _)| k).collect();
        f.debug_struct("AcpConfig")
            .field("command", &self.command)
            .field("workdir", &self.workdir)
            .field("clear_env", &self.clear_env)
            .field("env", &env_names)
            .field("permissions", &self.permissions)
            .field("start_timeout", &self.start_timeout)
            .field("initialize_timeout", &self.initialize_timeout)
            .field("session_timeout", &self.session_timeout)
            .field("cancel_timeout", &self.cancel_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("stop_grace", &self.stop_grace)
            .field("prepare_sessions", &self.prepare_sessions)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_know_their_command() {
        for preset in Preset::ALL {
            assert_eq!(preset.name().parse::<Preset>().unwrap(), preset);
        }
        assert_eq!(Preset::OpencodeAcp.command(), ["opencode", "acp"]);
        let err = "gemini".parse::<Preset>().unwrap_err();
        assert!(
            err.to_string().contains("opencode-acp, claude-acp"),
            "{err}"
        );
        let config = AcpConfig::preset(Preset::ClaudeAcp, "/w".into());
        assert_eq!(config.command, ["claude-agent-acp"]);
        assert!(config.env.iter().any(|(k, _)| k == "DISABLE_AUTOUPDATER"));
    }

    #[test]
    fn command_lines_split_like_a_shell() {
        assert_eq!(split_command("opencode acp").unwrap(), ["opencode", "acp"]);
        assert_eq!(
            split_command(r#"npx -y "my agent" --flag='a b'"#).unwrap(),
            ["npx", "-y", "my agent", "--flag=a b"]
        );
        assert_eq!(split_command("  "), Err(CommandLineError::Empty));
        assert!(matches!(
            split_command("agent 'open"),
            Err(CommandLineError::Unsplittable(..))
        ));
    }

    #[test]
    fn programs_are_looked_up_before_anything_starts() {
        let none = AcpConfig::default();
        assert!(none.check_program().unwrap_err().contains("--acp-command"));
        let sh = AcpConfig::new(vec!["sh".into(), "-c".into()], "/".into());
        assert!(sh.check_program().unwrap().ends_with("sh"));
        let missing = AcpConfig::new(vec!["no-such-acp-agent-xyz".into()], "/".into());
        assert!(missing.check_program().unwrap_err().contains("not in PATH"));
        let abs = AcpConfig::new(vec!["/nonexistent/agent".into()], "/".into());
        assert!(
            abs.check_program()
                .unwrap_err()
                .contains("not an executable file")
        );
    }

    #[test]
    fn debug_hides_env_values() {
        let config = AcpConfig::new(vec!["a".into()], "/w".into()).with_env("K", "secret-value");
        let text = format!("{config:?}");
        assert!(
            text.contains("\"K\"") && !text.contains("secret-value"),
            "{text}"
        );
    }

    #[test]
    fn policies_parse() {
        assert_eq!("allow".parse(), Ok(PermissionPolicy::AllowInWorkspace));
        assert_eq!("deny".parse(), Ok(PermissionPolicy::Deny));
        assert!("maybe".parse::<PermissionPolicy>().is_err());
    }
}
