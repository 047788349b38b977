//! Command-line surface (clap derive). Parsing only: every command's work lives in
//! `commands/` and the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Examples shown at the end of `agentserver --help`.
const EXAMPLES: &str = "\
Examples:
  agentserver demo                        # try the whole flow locally, no server needed
  agentserver login --server https://agent.example.com
  agentserver                             # = agentserver run --backend claudecode
  agentserver run --backend opencode
  agentserver --continue                  # resume the last session of this directory
  agentserver --resume SANDBOX_ID         # resume a session with the backend it registered
  agentserver info                        # what the server will learn about this machine

Files live in ~/.agentserver (AGENTSERVER_HOME overrides). Logs go to stderr: -v or RUST_LOG.";

/// Default server for the root command and `login` (spec §1).
pub const DEFAULT_SERVER: &str = "https://agent.cs.ac.cn";

/// Turn this machine into a worker for an agentserver server.
///
/// With no subcommand, `agentserver` is `agentserver run --backend claudecode`: it logs in if
/// needed, registers a sandbox, holds the tunnel and runs the tasks the server sends. With
/// `--resume`, the sandbox's own backend runs (with its default options).
#[derive(Debug, Parser)]
#[command(
    name = "agentserver",
    version,
    propagate_version = true,
    after_help = EXAMPLES
)]
pub struct Cli {
    /// More log output on stderr (-v debug, -vv trace). RUST_LOG overrides this.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Log line format on stderr: `text`, or `json` (one JSON object a line, for log
    /// shippers; secrets are scrubbed as in text).
    #[arg(long, value_enum, default_value_t = agentserver::logging::LogFormat::Text, global = true, value_name = "FORMAT")]
    pub log_format: agentserver::logging::LogFormat,

    /// The command; none means `run --backend claudecode`.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options of the root command (= `run --backend claudecode`).
    #[command(flatten)]
    pub root: RootArgs,
}

impl Cli {
    /// Parses the process's arguments, exiting with clap's message (and code 2) when they
    /// are wrong.
    pub fn parse_args() -> Self {
        Self::try_parse_args_from(std::env::args_os()).unwrap_or_else(|err| err.exit())
    }

    /// Parses `args`. The global `-v`/`--verbose` goes before or after any subcommand; the
    /// root command's own options (those of `run --backend claudecode`) only work without a
    /// subcommand, and are refused with one. (clap's `args_conflicts_with_subcommands` would
    /// refuse a global option before a subcommand too, so this check is ours.)
    pub fn try_parse_args_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let mut cmd = Self::command();
        let matches = cmd.try_get_matches_from_mut(args)?;
        if let Some((name, _)) = matches.subcommand() {
            let root_options: Vec<String> = cmd
                .get_arguments()
                .filter(|arg| !arg.is_global_set())
                .filter(|arg| {
                    matches.value_source(arg.get_id().as_str())
                        == Some(clap::parser::ValueSource::CommandLine)
                })
                .map(|arg| match arg.get_long() {
                    Some(long) => format!("--{long}"),
                    None => arg.get_id().to_string(),
                })
                .collect();
            if !root_options.is_empty() {
                let message = format!(
                    "{} cannot be used with the subcommand '{name}': {} of the root command \
                     (`agentserver` alone runs `run --backend claudecode`); put options after \
                     the subcommand",
                    root_options.join(", "),
                    if root_options.len() == 1 {
                        "it is an option"
                    } else {
                        "they are options"
                    }
                );
                return Err(cmd.error(clap::error::ErrorKind::ArgumentConflict, message));
            }
        }
        Self::from_arg_matches(&matches).map_err(|err| err.format(&mut cmd))
    }
}

/// The root command's options: those of `run` minus `--backend`.
#[derive(Debug, Args, Clone, Default)]
pub struct RootArgs {
    #[command(flatten)]
    /// Session options.
    pub session: SessionArgs,
    #[command(flatten)]
    /// Claude Code options.
    pub claude: ClaudeArgs,
    #[command(flatten)]
    /// Task intake options.
    pub intake: IntakeArgs,
    #[command(flatten)]
    /// Operations options.
    pub ops: OpsArgs,
}

/// Operations options of a serving host: metrics, health, lifetime.
#[derive(Debug, Args, Clone, Default)]
pub struct OpsArgs {
    /// Serve `/metrics` (Prometheus text format) and `/healthz` on this address: `PORT` or
    /// `HOST:PORT`; a port alone listens on 127.0.0.1 only. Off by default.
    #[arg(long, value_name = "ADDR", value_parser = agentserver::ops::parse_listen)]
    pub metrics_listen: Option<SocketAddr>,
    /// Exit cleanly (code 0, after the drain) once no task has arrived or run for this many
    /// minutes (fractions allowed), for ephemeral machines.
    #[arg(long, value_name = "MINUTES", value_parser = parse_minutes)]
    pub exit_if_unused: Option<Duration>,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register a sandbox, hold the tunnel and run tasks with the chosen backend.
    ///
    /// The backend is `claudecode`, `opencode` or the name of an installed plugin
    /// (see `agentserver plugins list`). Without saved credentials it logs you in first.
    Run(RunArgs),
    /// Same as `run --backend claudecode` (kept for upstream compatibility).
    #[command(hide = true)]
    Claudecode(RootArgs),
    /// Same as `run --backend opencode` (kept for upstream compatibility).
    #[command(hide = true)]
    Connect(RunArgs),
    /// Log in with the OAuth device flow and save the tokens in ~/.agentserver/.credentials.json.
    Login(LoginArgs),
    /// List the sessions saved under ~/.agentserver/sessions (resumable with --resume ID).
    List(ListArgs),
    /// Show what the running hosts of this state directory are doing: sandboxes, tunnel,
    /// running tasks, outbox, last error. Exits 1 when no host runs.
    Status(StatusArgs),
    /// Remove an agent entry from the legacy ~/.agentserver/registry.json.
    Remove(RemoveArgs),
    /// Run only the task worker (poll, execute with Claude Code, report), without a tunnel.
    TaskWorker(TaskWorkerArgs),
    /// Serve the agentserver workspace tools to Claude Code over MCP (stdio, env driven).
    ///
    /// Needs AGENTSERVER_URL, AGENTSERVER_TOKEN and AGENTSERVER_WORKSPACE_ID; AGENTSERVER_SANDBOX_ID
    /// is optional. Claude Code starts it from the .mcp.json that `agentserver` writes.
    McpServer,
    /// Print the version.
    Version,
    /// Show what the server will learn about this machine: system info and probed capabilities.
    Info(InfoArgs),
    /// List, inspect and install backend plugins.
    Plugins(PluginsArgs),
    /// Run a local mock agentserver (for plugin authors and tests).
    #[cfg(feature = "dev-server")]
    #[command(after_help = crate::commands::dev_server::control_api("http://ADDR"))]
    DevServer(DevServerArgs),
    /// Run the whole flow on this machine with an embedded server: login, register, tunnel, a task.
    #[cfg(feature = "dev-server")]
    Demo(DemoArgs),
    /// Install, remove or inspect a systemd (or launchd on macOS) service that runs
    /// `agentserver run` with drain-aware stop settings.
    Service(ServiceArgs),
    /// Internal: host one native plugin library for an out-of-process plugin (started by the
    /// host itself; speaks a framed protocol on stdin/stdout).
    #[command(hide = true)]
    PluginHost {
        /// The plugin's shared library.
        library: std::path::PathBuf,
    },
}

/// Options shared by every command that creates or resumes a session.
#[derive(Debug, Args, Clone, Default)]
pub struct SessionArgs {
    /// Server URL; defaults to the one saved at login, else https://agent.cs.ac.cn.
    #[arg(long, env = "AGENTSERVER_SERVER")]
    pub server: Option<String>,
    /// Sandbox name shown in the web UI (default: the hostname).
    #[arg(long)]
    pub name: Option<String>,
    /// Do not open a browser during login; print the URL and code only.
    #[arg(long)]
    pub skip_open_browser: bool,
    /// Directory tasks run in (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Resume the session with this sandbox id instead of registering a new one.
    #[arg(
        short = 'r',
        long = "resume",
        value_name = "SANDBOX_ID",
        conflicts_with = "continue_"
    )]
    pub resume: Option<String>,
    /// Resume the newest inactive session of this directory and backend type.
    #[arg(short = 'c', long = "continue")]
    pub continue_: bool,
    /// Like --continue, but register a new sandbox when there is no session to continue (for
    /// services and containers whose state directory persists across restarts).
    #[arg(long, conflicts_with_all = ["resume", "continue_"])]
    pub continue_or_register: bool,
    /// Start a device login even when stdin is not a terminal (by default a start without a
    /// terminal and without usable credentials fails at once, saying what to provision).
    #[arg(long, env = "AGENTSERVER_LOGIN_WITHOUT_TTY", value_parser = clap::builder::BoolishValueParser::new())]
    pub login_without_tty: bool,
}

/// Claude Code backend options.
#[derive(Debug, Args, Clone, Default)]
pub struct ClaudeArgs {
    /// Path of the `claude` CLI (default: looked up in PATH and the usual install places).
    #[arg(long, value_name = "PATH")]
    pub claude_bin: Option<PathBuf>,
    /// Fail a task whose `claude` printed nothing for this many seconds (a stalled stream)
    /// [default: 900].
    #[arg(long, value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub claude_idle_timeout: Option<Duration>,
}

impl ClaudeArgs {
    /// The Claude Code backend's configuration for tasks in `workdir`.
    pub fn config(
        &self,
        workdir: &std::path::Path,
    ) -> agentserver_backend_claudecode::ClaudeCodeConfig {
        let defaults = agentserver_backend_claudecode::ClaudeCodeConfig::default();
        agentserver_backend_claudecode::ClaudeCodeConfig {
            claude_bin: self.claude_bin.clone(),
            workdir: workdir.to_path_buf(),
            idle_timeout: self.claude_idle_timeout.unwrap_or(defaults.idle_timeout),
            ..defaults
        }
    }
}

/// opencode backend options.
#[derive(Debug, Args, Clone)]
pub struct OpencodeArgs {
    /// Use an already running opencode server at this URL instead of starting one.
    #[arg(long, value_name = "URL")]
    pub opencode_url: Option<String>,
    /// Password of the local opencode server (sent as Basic auth `opencode:<token>`). Prefer the
    /// environment variable: other users can read command-line arguments with `ps`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "OPENCODE_SERVER_PASSWORD",
        hide_env_values = true
    )]
    pub opencode_token: Option<agentserver::secret::Secret>,
    /// Start `opencode serve` if none answers on the port.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_start: bool,
    /// Path of the `opencode` CLI.
    #[arg(long, value_name = "PATH", default_value = "opencode")]
    pub opencode_bin: PathBuf,
    /// Port for `opencode serve`; 0 lets opencode choose.
    #[arg(long, default_value_t = 4096, value_name = "PORT")]
    pub opencode_port: u16,
}

impl Default for OpencodeArgs {
    fn default() -> Self {
        Self {
            opencode_url: None,
            opencode_token: None,
            auto_start: true,
            opencode_bin: PathBuf::from("opencode"),
            opencode_port: 4096,
        }
    }
}

/// acp backend options (`--backend acp`).
#[derive(Debug, Args, Clone)]
pub struct AcpArgs {
    /// The ACP agent's command line, split as a shell would (no shell runs it), e.g.
    /// `"opencode acp"` or `"gemini --acp"`. Overrides the preset's command.
    #[arg(long, value_name = "COMMAND")]
    pub acp_command: Option<String>,
    /// A known agent: its command and the environment it needs (`opencode-acp`,
    /// `claude-acp`).
    #[arg(long, value_name = "NAME")]
    pub acp_preset: Option<agentserver_backend_acp::Preset>,
    /// Extra environment for the agent (repeatable), after the preset's.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    pub acp_env: Vec<(String, String)>,
    /// Answer to the agent's permission requests: `allow` (inside the task's workspace;
    /// outside it is rejected) or `deny`.
    #[arg(long, value_name = "POLICY", default_value = "allow")]
    pub acp_permissions: agentserver_backend_acp::PermissionPolicy,
    /// Seconds the agent may take to answer `initialize`.
    #[arg(long, default_value = "60", value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub acp_initialize_timeout: Duration,
    /// Seconds the agent may take to answer `session/new`.
    #[arg(long, default_value = "60", value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub acp_session_timeout: Duration,
}

impl Default for AcpArgs {
    fn default() -> Self {
        let defaults = agentserver_backend_acp::AcpConfig::default();
        Self {
            acp_command: None,
            acp_preset: None,
            acp_env: Vec::new(),
            acp_permissions: defaults.permissions,
            acp_initialize_timeout: defaults.initialize_timeout,
            acp_session_timeout: defaults.session_timeout,
        }
    }
}

impl AcpArgs {
    /// The acp backend's configuration for tasks in `workdir`; an error when the command
    /// line cannot be split.
    pub fn config(
        &self,
        workdir: &std::path::Path,
    ) -> Result<agentserver_backend_acp::AcpConfig, String> {
        let mut config = match self.acp_preset {
            Some(preset) => {
                agentserver_backend_acp::AcpConfig::preset(preset, workdir.to_path_buf())
            }
            None => agentserver_backend_acp::AcpConfig::new(Vec::new(), workdir.to_path_buf()),
        };
        if let Some(command) = &self.acp_command {
            config.command = agentserver_backend_acp::split_command(command)
                .map_err(|e| format!("--acp-command: {e}"))?;
        }
        for (key, value) in &self.acp_env {
            config = config.with_env(key, value);
        }
        config.permissions = self.acp_permissions;
        config.initialize_timeout = self.acp_initialize_timeout;
        config.session_timeout = self.acp_session_timeout;
        Ok(config)
    }
}

fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

/// Task intake options.
#[derive(Debug, Args, Clone)]
pub struct IntakeArgs {
    /// Seconds between task polls when idle (a random jitter of ±10 % is added).
    #[arg(long, default_value = "5", value_parser = parse_seconds, value_name = "SECONDS")]
    pub poll_interval: Duration,
    /// How many tasks may run at once.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_tasks: u16,
    /// Seconds running tasks get to finish after the first SIGINT/SIGTERM.
    #[arg(long, default_value = "30", value_parser = parse_seconds, value_name = "SECONDS")]
    pub grace_period: Duration,
    /// Register the fixed Claude Code agent card at start (for servers older than v0.37).
    #[arg(long)]
    pub register_card: bool,
    /// How tasks are kept apart: `worktree` (a git worktree per task, on a branch
    /// `agentserver/<task id>`; the default when the work directory is a git repository) or
    /// `none` (every task in the work directory). Several tasks at once in a directory that
    /// is not a git repository need `--isolation none`.
    #[arg(long, value_name = "MODE")]
    pub isolation: Option<agentserver::sandboxes::config::Isolation>,
    /// Where task worktrees go [default: ~/.agentserver/worktrees/<sandbox id>].
    #[arg(long, value_name = "DIR")]
    pub worktree_dir: Option<PathBuf>,
    /// Seconds a task poll may take before it is given up. A task the server hands out is
    /// assigned at once and never offered again, so this must fit a loaded server.
    #[arg(long, default_value = "60", value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub poll_timeout: Duration,
    /// Seconds a status report (or a task lookup) may take before it is retried; a report
    /// without an answer is checked with the server before it is sent again.
    #[arg(long, default_value = "60", value_parser = parse_positive_seconds, value_name = "SECONDS")]
    pub status_timeout: Duration,
}

impl IntakeArgs {
    /// The HTTP timeouts of the task endpoints.
    pub fn timeouts(&self) -> agentserver::intake::TaskTimeouts {
        agentserver::intake::TaskTimeouts {
            poll: self.poll_timeout,
            status: self.status_timeout,
        }
    }
}

impl Default for IntakeArgs {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(5),
            max_concurrent_tasks: 1,
            grace_period: Duration::from_secs(30),
            register_card: false,
            isolation: None,
            worktree_dir: None,
            poll_timeout: agentserver::intake::TaskTimeouts::default().poll,
            status_timeout: agentserver::intake::TaskTimeouts::default().status,
        }
    }
}

/// Plugin options.
#[derive(Debug, Args, Clone, Default)]
pub struct PluginArgs {
    /// Extra directory to look for plugins in (besides ~/.agentserver/plugins).
    #[arg(long, value_name = "DIR", global = true)]
    pub plugin_dir: Vec<PathBuf>,
    /// Allow loading this native (trusted code) plugin even if it is not in the config.
    #[arg(long, value_name = "NAME", global = true)]
    pub allow_native: Vec<String>,
}

/// `run` options.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Backend: `claudecode`, `opencode`, `acp` (any Agent Client Protocol agent; see
    /// `--acp-command`, `--acp-preset`), or an installed plugin's name [default: claudecode,
    /// or with `--resume` the type the sandbox was registered with].
    #[arg(long, short = 'b', value_name = "NAME")]
    pub backend: Option<agentserver::dispatch::BackendKind>,
    #[command(flatten)]
    /// Session options.
    pub session: SessionArgs,
    #[command(flatten)]
    /// Claude Code options.
    pub claude: ClaudeArgs,
    #[command(flatten)]
    /// opencode options.
    pub opencode: OpencodeArgs,
    #[command(flatten)]
    /// acp options.
    pub acp: AcpArgs,
    #[command(flatten)]
    /// Task intake options.
    pub intake: IntakeArgs,
    #[command(flatten)]
    /// Plugin options.
    pub plugins: PluginArgs,
    #[command(flatten)]
    /// Operations options.
    pub ops: OpsArgs,
    #[command(flatten)]
    /// Several sandboxes in one host.
    pub many: ManyArgs,
}

/// Several sandboxes in one host (`[[sandbox]]` tables of the config file, or `--sandbox`).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Several sandboxes in one host")]
pub struct ManyArgs {
    /// Serve the sandboxes of this config file (`[host]` and `[[sandbox]]` tables; see
    /// docs/operations.md). Without it, `run` with no `--backend`, `--resume`, `--continue` or
    /// `--sandbox` serves the `[[sandbox]]` tables of ~/.agentserver/config.toml, if it has any.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Serve one more sandbox (repeatable): `key=value` pairs, e.g.
    /// `--sandbox backend=claudecode,dir=~/src/web,tasks=2 --sandbox backend=opencode,dir=../api`.
    /// Keys: `dir` (required), `backend` (default claudecode), `name` (default
    /// `<dir name>-<backend>`; a restart resumes the sandbox of that name), `tasks` (at once,
    /// default 1), `isolation` (`worktree`, the default in a git repository: a git worktree
    /// per task; or `none`).
    #[arg(long, value_name = "SPEC")]
    pub sandbox: Vec<String>,
    /// Tasks running at once across all sandboxes [default: `[host] max_concurrent_tasks`, else
    /// the sum of the sandboxes' limits].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub max_tasks_total: Option<u16>,
}

/// `status` options.
#[derive(Debug, Args, Clone)]
pub struct StatusArgs {
    /// Print JSON (`{"hosts": [...]}`) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `login` options.
#[derive(Debug, Args, Clone)]
pub struct LoginArgs {
    /// Server to log in to.
    #[arg(long, default_value = DEFAULT_SERVER, env = "AGENTSERVER_SERVER")]
    pub server: String,
    /// Do not open a browser; print the URL and code only.
    #[arg(long)]
    pub skip_open_browser: bool,
}

/// `list` options.
#[derive(Debug, Args, Clone)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `remove` options.
#[derive(Debug, Args, Clone)]
pub struct RemoveArgs {
    /// Workspace id of the entry (needed when the directory has several).
    #[arg(long)]
    pub workspace: Option<String>,
    /// Directory of the entry (default: the current directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Do not ask for confirmation.
    #[arg(short = 'y', long)]
    pub yes: bool,
}

/// `task-worker` options.
#[derive(Debug, Args, Clone)]
pub struct TaskWorkerArgs {
    /// Server URL (default: from the first registry.json entry).
    #[arg(long)]
    pub server: Option<String>,
    /// Proxy token of the sandbox (default: from the first registry.json entry). Prefer the
    /// environment variable: other users can read command-line arguments with `ps`.
    #[arg(long, env = "AGENTSERVER_PROXY_TOKEN", hide_env_values = true)]
    pub proxy_token: Option<agentserver::secret::Secret>,
    /// Sandbox id (default: from the first registry.json entry).
    #[arg(long)]
    pub sandbox_id: Option<String>,
    /// Directory tasks run in (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Backend that runs the tasks: `claudecode` (upstream's task worker), `opencode`, `acp`,
    /// or an installed plugin.
    #[arg(long, short = 'b', value_name = "NAME", default_value = "claudecode")]
    pub backend: agentserver::dispatch::BackendKind,
    #[command(flatten)]
    /// Claude Code options.
    pub claude: ClaudeArgs,
    #[command(flatten)]
    /// opencode options.
    pub opencode: OpencodeArgs,
    #[command(flatten)]
    /// acp options.
    pub acp: AcpArgs,
    #[command(flatten)]
    /// Plugin options.
    pub plugins: PluginArgs,
    #[command(flatten)]
    /// Task intake options.
    pub intake: IntakeArgs,
}

/// `info` options.
#[derive(Debug, Args, Clone)]
pub struct InfoArgs {
    /// Print the agent-info JSON exactly as the tunnel sends it (plus probe timings, and the
    /// configured sandboxes, which never go on the wire).
    #[arg(long)]
    pub json: bool,
    /// The config file whose `[[sandbox]]` tables to show [default: ~/.agentserver/config.toml].
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// `service` options.
#[derive(Debug, Args, Clone)]
pub struct ServiceArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ServiceAction,
}

/// Options shared by every `service` subcommand.
#[derive(Debug, Args, Clone)]
pub struct ServiceTarget {
    /// A system service (/etc/systemd/system, or /Library/LaunchDaemons on macOS; needs root)
    /// instead of the user's own (~/.config/systemd/user, ~/Library/LaunchAgents).
    #[arg(long)]
    pub system: bool,
    /// A launchd property list instead of a systemd unit (the default on macOS only).
    #[arg(long)]
    pub launchd: bool,
    /// Directory of the unit file instead of the standard one (for tests and packaging).
    #[arg(long, value_name = "DIR")]
    pub unit_dir: Option<PathBuf>,
    /// Only write or remove the file: do not call systemctl/launchctl.
    #[arg(long)]
    pub no_enable: bool,
}

/// `service` subcommands.
#[derive(Debug, Subcommand, Clone)]
pub enum ServiceAction {
    /// Write the service file, then reload the manager and enable and start the service.
    ///
    /// The service runs `agentserver run RUN_ARGS...` (default `--backend claudecode`) in
    /// --work-dir; its stop timeout is derived from the `--grace-period` and `--poll-timeout`
    /// among RUN_ARGS. Example: `agentserver service install -- --backend opencode --continue`.
    Install {
        #[command(flatten)]
        /// Where and how.
        target: ServiceTarget,
        /// Directory tasks run in (default: the current directory).
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// For --system: the user the service runs as (default: $SUDO_USER, else $USER).
        #[arg(long, value_name = "USER")]
        run_as: Option<String>,
        /// Replace an existing service file.
        #[arg(long)]
        force: bool,
        /// Arguments for `agentserver run` (after `--`).
        #[arg(last = true, value_name = "RUN_ARGS")]
        run_args: Vec<String>,
    },
    /// Stop and disable the service, then remove its file.
    Uninstall {
        #[command(flatten)]
        /// Where and how.
        target: ServiceTarget,
    },
    /// Show whether the service file exists, whether the service is enabled and active, and
    /// (for a user unit) whether lingering keeps it running without a login. Exits 1 when the
    /// file does not exist.
    Status {
        #[command(flatten)]
        /// Where and how.
        target: ServiceTarget,
    },
}

/// `plugins` options.
#[derive(Debug, Args, Clone)]
pub struct PluginsArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: PluginsAction,
    #[command(flatten)]
    /// Plugin options.
    pub plugins: PluginArgs,
}

/// `plugins` subcommands.
#[derive(Debug, Subcommand, Clone)]
pub enum PluginsAction {
    /// List installed plugins.
    List,
    /// Show a plugin's manifest, permissions, API version and load time.
    Inspect {
        /// Plugin name.
        name: String,
    },
    /// Install a plugin from a directory holding plugin.toml, after checking it loads here
    /// (native: entry symbol, C ABI and API version, in a child process; WASM: API version,
    /// compiled into the cache, linked against what the host provides, described).
    Install {
        /// Directory with plugin.toml and the library/component it names.
        path: PathBuf,
        /// Replace an installed plugin of the same name.
        #[arg(long)]
        force: bool,
    },
    /// Remove an installed plugin (its folder under ~/.agentserver/plugins).
    Remove {
        /// Plugin name.
        name: String,
    },
    /// Run one task on a plugin with no server: print its events as they come, then its
    /// outcome. Exit status: 0 completed, 1 failed, 2 cancelled, 3 the plugin did not load.
    Run(PluginRunArgs),
    /// Write a new plugin project that builds with the guide's commands (docs/plugins.md) and
    /// has one test.
    New {
        /// Plugin name (letters, digits, - and _).
        name: String,
        /// Language: c or rust (native), python or js (WASM components).
        #[arg(long, value_parser = ["c", "rust", "python", "js"])]
        lang: String,
        /// Folder to create (default: ./NAME).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `plugins run` options.
#[derive(Debug, Args, Clone)]
pub struct PluginRunArgs {
    /// Plugin name.
    pub name: String,
    /// The task's prompt.
    #[arg(long)]
    pub prompt: String,
    /// The task's working directory (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
    /// Cancel the task after this many seconds (fractions allowed).
    #[arg(long, value_parser = parse_seconds, value_name = "SECS")]
    pub cancel_after: Option<Duration>,
    /// The task's system context.
    #[arg(long, default_value = "")]
    pub system_context: String,
    /// The task's turn limit (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub max_turns: u32,
}

/// `dev-server` options.
#[cfg(feature = "dev-server")]
#[derive(Debug, Args, Clone)]
pub struct DevServerArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Approve a device login after this many token polls.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub approve_after: u32,
    /// Device-flow interval in seconds the server asks clients to use.
    #[arg(long, default_value_t = 1, value_name = "SECONDS")]
    pub device_interval: u64,
    /// Serve no CCR v2 bridge (like servers v0.63+).
    #[arg(long)]
    pub no_bridge: bool,
    /// Seconds after which an unacknowledged stream open closes the tunnel session.
    #[arg(long, default_value = "75", value_parser = parse_seconds, value_name = "SECONDS")]
    pub stream_open_timeout: Duration,
    /// How device logins end once "the user acts": approve, deny or expire.
    #[arg(long, default_value = "approve", value_name = "OUTCOME", value_parser = ["approve", "deny", "expire"])]
    pub device_outcome: String,
    /// Answer the first N token polls of each device login with `slow_down`.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub slow_down_polls: u32,
    /// Lifetime of device codes in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub device_expires_in: u64,
    /// Lifetime of issued access tokens in seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub access_token_ttl: i64,
}

/// `demo` options.
#[cfg(feature = "dev-server")]
#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// Backend to run the sample task with (default: `example-wasm`, the bundled example WASM
    /// backend).
    #[arg(long, value_name = "NAME")]
    pub backend: Option<agentserver::dispatch::BackendKind>,
    /// The sample task's prompt.
    #[arg(long, default_value = "Say hello from the demo.")]
    pub prompt: String,
    #[command(flatten)]
    /// Claude Code options (for `--backend claudecode`).
    pub claude: ClaudeArgs,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("`{text}` seconds is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A positive number of minutes (fractions allowed).
fn parse_minutes(text: &str) -> Result<Duration, String> {
    let minutes: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of minutes"))?;
    if !(minutes > 0.0 && minutes <= 60.0 * 24.0 * 365.0) {
        return Err(format!("`{text}` minutes is out of range (more than 0)"));
    }
    Ok(Duration::from_secs_f64(minutes * 60.0))
}

/// Like [`parse_seconds`], but zero is refused (a timeout of zero would fail every task).
fn parse_positive_seconds(text: &str) -> Result<Duration, String> {
    let duration = parse_seconds(text)?;
    if duration.is_zero() {
        return Err("must be more than 0 seconds".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Every command and subcommand says what it does, and every option has help text, so
    /// `--help` teaches at every level.
    #[test]
    fn every_command_and_option_has_help() {
        fn check(cmd: &mut clap::Command, path: &str) {
            let path = format!("{path} {}", cmd.get_name());
            assert!(
                cmd.get_about()
                    .is_some_and(|a| !a.to_string().trim().is_empty()),
                "`{path}` has no description"
            );
            for arg in cmd.get_arguments() {
                if arg.is_hide_set() || ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                assert!(
                    arg.get_help()
                        .is_some_and(|h| !h.to_string().trim().is_empty()),
                    "`{path}`: option `{}` has no help",
                    arg.get_id()
                );
            }
            let help = cmd.render_long_help().to_string();
            assert!(help.contains("Usage:"), "`{path} --help`:\n{help}");
            for sub in cmd.get_subcommands_mut() {
                check(sub, &path);
            }
        }
        let mut root = Cli::command();
        root.build();
        let expected = [
            "run",
            "login",
            "list",
            "status",
            "remove",
            "task-worker",
            "mcp-server",
            "version",
            "info",
            "plugins",
            #[cfg(feature = "dev-server")]
            "dev-server",
            #[cfg(feature = "dev-server")]
            "demo",
        ];
        for name in expected {
            assert!(root.find_subcommand(name).is_some(), "missing `{name}`");
        }
        check(&mut root, "");
    }

    #[test]
    fn root_without_subcommand_takes_run_flags() {
        let cli = Cli::parse_from(["agentserver", "--continue", "--claude-bin", "/x/claude"]);
        assert!(cli.command.is_none());
        assert!(cli.root.session.continue_);
        assert_eq!(
            cli.root.claude.claude_bin.as_deref(),
            Some(std::path::Path::new("/x/claude"))
        );
    }

    #[test]
    fn run_backend_and_resume() {
        let cli = Cli::parse_from(["agentserver", "run", "--backend", "opencode", "-r", "abc"]);
        match cli.command {
            Some(Command::Run(r)) => {
                assert_eq!(
                    r.backend,
                    Some(agentserver::dispatch::BackendKind::Opencode)
                );
                assert_eq!(r.session.resume.as_deref(), Some("abc"));
                assert_eq!(r.opencode.opencode_port, 4096);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn run_acp_options() {
        let cli = Cli::parse_from([
            "agentserver",
            "run",
            "--backend",
            "acp",
            "--acp-preset",
            "claude-acp",
            "--acp-command",
            "npx -y '@zed-industries/claude-agent-acp'",
            "--acp-env",
            "K=V=W",
            "--acp-permissions",
            "deny",
            "--acp-session-timeout",
            "90",
        ]);
        let Some(Command::Run(r)) = cli.command else {
            panic!("not run");
        };
        assert_eq!(r.backend, Some(agentserver::dispatch::BackendKind::Acp));
        let config = r.acp.config(std::path::Path::new("/w")).unwrap();
        assert_eq!(
            config.command,
            ["npx", "-y", "@zed-industries/claude-agent-acp"]
        );
        // The preset's environment first, then the user's.
        assert!(config.env.iter().any(|(k, _)| k == "DISABLE_AUTOUPDATER"));
        assert_eq!(config.env.last().unwrap(), &("K".into(), "V=W".into()));
        assert_eq!(
            config.permissions,
            agentserver_backend_acp::PermissionPolicy::Deny
        );
        assert_eq!(config.session_timeout, Duration::from_secs(90));
        assert_eq!(config.initialize_timeout, Duration::from_secs(60));

        let preset = Cli::parse_from(["agentserver", "run", "--acp-preset", "opencode-acp"]);
        let Some(Command::Run(r)) = preset.command else {
            panic!("not run");
        };
        assert_eq!(
            r.acp.config(std::path::Path::new("/w")).unwrap().command,
            ["opencode", "acp"]
        );
        assert!(Cli::try_parse_from(["agentserver", "run", "--acp-preset", "gemini"]).is_err());
        assert!(Cli::try_parse_from(["agentserver", "run", "--acp-env", "novalue"]).is_err());
        assert_eq!(
            AcpArgs::default()
                .config(std::path::Path::new("/w"))
                .unwrap()
                .initialize_timeout,
            Duration::from_secs(60)
        );
    }

    fn verbosity(args: &[&str]) -> u8 {
        Cli::try_parse_args_from(args.iter().copied())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .verbose
    }

    #[test]
    fn verbose_works_before_and_after_every_subcommand() {
        let mut root = Cli::command();
        root.build();
        let subcommands: Vec<String> = root
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
            .filter(|s| !s.is_subcommand_required_set())
            .map(|s| s.get_name().to_owned())
            .collect();
        assert!(subcommands.len() >= 8, "{subcommands:?}");
        for sub in &subcommands {
            assert_eq!(verbosity(&["agentserver", "-v", sub]), 1, "-v {sub}");
            assert_eq!(verbosity(&["agentserver", sub, "-v"]), 1, "{sub} -v");
            assert_eq!(verbosity(&["agentserver", "-vv", sub]), 2, "-vv {sub}");
            assert_eq!(verbosity(&["agentserver", sub, "-vv"]), 2, "{sub} -vv");
            assert_eq!(
                verbosity(&["agentserver", "--verbose", sub]),
                1,
                "--verbose {sub}"
            );
        }
        // Subcommands with their own subcommands: before the group, and after the leaf.
        assert_eq!(verbosity(&["agentserver", "-v", "plugins", "list"]), 1);
        assert_eq!(verbosity(&["agentserver", "plugins", "list", "-vv"]), 2);
        // And the root command itself.
        assert_eq!(verbosity(&["agentserver", "-v"]), 1);
        assert_eq!(verbosity(&["agentserver", "-vv", "--continue"]), 2);
    }

    #[test]
    fn root_options_are_refused_with_a_subcommand() {
        let err = Cli::try_parse_args_from(["agentserver", "--continue", "version"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let text = err.to_string();
        assert!(text.contains("--continue"), "{text}");
        assert!(text.contains("'version'"), "{text}");
        let err = Cli::try_parse_args_from(["agentserver", "--claude-bin", "/x", "-v", "run"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let cli = Cli::try_parse_args_from(["agentserver", "-v", "run"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Run(_))));
    }

    #[test]
    fn resume_conflicts_with_continue() {
        assert!(Cli::try_parse_from(["agentserver", "-r", "x", "-c"]).is_err());
    }

    #[test]
    fn ops_flags() {
        let cli = Cli::try_parse_args_from([
            "agentserver",
            "--log-format",
            "json",
            "run",
            "--metrics-listen",
            "9100",
            "--exit-if-unused",
            "0.5",
        ])
        .unwrap();
        assert_eq!(cli.log_format, agentserver::logging::LogFormat::Json);
        match cli.command {
            Some(Command::Run(r)) => {
                assert_eq!(r.ops.metrics_listen.unwrap().to_string(), "127.0.0.1:9100");
                assert_eq!(r.ops.exit_if_unused, Some(Duration::from_secs(30)));
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::try_parse_args_from(["agentserver", "--exit-if-unused", "2"]).unwrap();
        assert_eq!(cli.root.ops.exit_if_unused, Some(Duration::from_secs(120)));
        assert!(parse_minutes("0").is_err());
        assert!(parse_minutes("-1").is_err());
        assert!(
            Cli::try_parse_args_from(["agentserver", "status", "--json", "--log-format", "json"])
                .is_ok()
        );
    }

    #[test]
    fn seconds_parser() {
        assert_eq!(parse_seconds("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_seconds("abc").is_err());
        assert!(parse_seconds("-1").is_err());
        assert_eq!(parse_seconds("0").unwrap(), Duration::ZERO);
        assert!(parse_positive_seconds("0").is_err());
        assert_eq!(parse_positive_seconds("2").unwrap(), Duration::from_secs(2));
    }
}
