//! Settings of the claudecode backend.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// Settings of the claudecode backend. [`Default`] gives the production values.
#[derive(Clone, Debug)]
pub struct ClaudeCodeConfig {
    /// Explicit `claude` CLI (`--claude-bin`): a path, or a bare command name looked up in
    /// `PATH`. `None` means discovery as in spec §9.4.
    pub claude_bin: Option<PathBuf>,
    /// Directory tasks run in when the task names none, and where the terminal's PTY starts.
    pub workdir: PathBuf,
    /// A task whose CLI prints no stdout line for this long before its `result` is ended as
    /// stuck (the "stream stops mid-turn" upstream hang). Default 15 minutes: longer than the
    /// CLI's own 10-minute API timeout and its 10-minute Bash tool limit.
    pub idle_timeout: Duration,
    /// After the `result` (stdin closed), or after the CLI exits or closes stdout, how long to
    /// wait for the rest (exit, end of stdout) before killing the process group. Default 10 s.
    pub post_result_exit_timeout: Duration,
    /// On cancel: how long after closing stdin to wait for an exit before SIGTERM to the
    /// process group. Default 5 s (spec §9.5).
    pub stdin_close_grace: Duration,
    /// How long after SIGTERM to wait before SIGKILL of the process group. Default 2 s.
    pub term_grace: Duration,
    /// Start the CLI with an empty environment plus [`env`](Self::env) instead of the host's
    /// environment plus `env` (tests use this for isolation).
    pub clear_env: bool,
    /// Extra environment variables for the CLI, task runs and the terminal alike.
    pub env: Vec<(OsString, OsString)>,
    /// Bytes of the CLI's stderr kept for failure reports.
    pub stderr_ring_bytes: usize,
    /// Bytes of stderr quoted in a failure reason (the newest ones).
    pub stderr_in_failure_bytes: usize,
    /// Longest stdout line accepted; a longer one is skipped and counted. Default 64 MiB.
    pub max_line_bytes: usize,
    /// Terminal (PTY) settings.
    pub terminal: TerminalConfig,
}

impl Default for ClaudeCodeConfig {
    fn default() -> Self {
        Self {
            claude_bin: None,
            workdir: PathBuf::from("."),
            idle_timeout: Duration::from_secs(15 * 60),
            post_result_exit_timeout: Duration::from_secs(10),
            stdin_close_grace: Duration::from_secs(5),
            term_grace: Duration::from_secs(2),
            clear_env: false,
            env: Vec::new(),
            stderr_ring_bytes: 64 * 1024,
            stderr_in_failure_bytes: 4 * 1024,
            max_line_bytes: 64 * 1024 * 1024,
            terminal: TerminalConfig::default(),
        }
    }
}

impl ClaudeCodeConfig {
    /// Adds one environment variable for the CLI (builder style).
    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// Settings of the terminal path (spec §12).
#[derive(Clone, Debug)]
pub struct TerminalConfig {
    /// Initial width in columns (120).
    pub cols: u16,
    /// Initial height in rows (40).
    pub rows: u16,
    /// `TERM` of the PTY process (`xterm-256color`).
    pub term: String,
    /// Bytes of recent PTY output replayed to a new attach (256 KiB).
    pub replay_bytes: usize,
}

impl Default for TerminalConfig {
    fn default() -> Self {
        Self {
            cols: 120,
            rows: 40,
            term: "xterm-256color".to_owned(),
            replay_bytes: 256 * 1024,
        }
    }
}
