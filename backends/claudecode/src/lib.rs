//! The built-in `claudecode` backend: runs each task with the real `claude` CLI in stream-json
//! mode, serves the tunnel's terminal streams from a PTY running a bare `claude`, and writes the
//! `.mcp.json` entry that lets Claude Code call back into the workspace.
//!
//! * Tasks (spec §9.4–9.5): [`ClaudeCodeBackend::execute`] starts
//!   `claude --print --output-format stream-json --input-format stream-json --verbose
//!   --permission-mode bypassPermissions […]` in the task's directory, in its own process group,
//!   writes the `initialize` control request and the prompt, forwards every stdout JSON line
//!   unmodified as a task event and reads the outcome from the `result` message.
//! * Terminals (spec §12): [`ClaudeCodeBackend::attach_terminal`].
//! * MCP (spec §10.1): [`inject_mcp_config`]. Agent card (spec §8.5): [`agent_card_body`].
//!
//! Decisions where the spec leaves room are in `docs/decisions/claudecode.md`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use agentserver_plugin_api::{
    Backend, BackendError, BackendInfo, CancellationToken, EventSink, FailureKind, SessionType,
    Task, TaskOutcome, TerminalStream,
};
use async_trait::async_trait;
use nix::sys::signal::Signal;

mod card;
mod config;
mod discovery;
mod driver;
mod io;
mod mcp_config;
/// Process groups, the stop ladder and the leftover sweep: `agentserver_common::process`, their
/// one owner, re-exported at this path for the tests that look for leftovers.
pub use agentserver_common::process;
mod protocol;
mod terminal;
mod turn;

pub use card::{AGENT_CARD_DESCRIPTION, AGENT_CARD_PATH, agent_card_body};
pub use config::{ClaudeCodeConfig, TerminalConfig};
pub use discovery::{DiscoveryError, find_claude};
pub use driver::{Ending, RunReport, RunStats};
pub use mcp_config::{MCP_CONFIG_FILE, MCP_SERVER_NAME, McpConfigError, inject_mcp_config};
pub use protocol::{ResultInfo, claude_args, control_response, initialize_request, user_message};
pub use terminal::{FRAME_DATA, FRAME_RESIZE, TerminalStatus};

/// Name users pass to `--backend`.
pub const BACKEND_NAME: &str = "claudecode";

/// Locks a mutex, ignoring poisoning (the data stays consistent: no panics while locked).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The claudecode backend. Cheap to clone; clones share the terminal and running tasks.
#[derive(Clone)]
pub struct ClaudeCodeBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClaudeCodeConfig,
    bin: Mutex<Option<PathBuf>>,
    terminal: terminal::Terminal,
    running: driver::Registry,
}

impl std::fmt::Debug for ClaudeCodeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaudeCodeBackend")
            .field("claude_bin", &self.inner.config.claude_bin)
            .field("workdir", &self.inner.config.workdir)
            .finish_non_exhaustive()
    }
}

impl ClaudeCodeBackend {
    /// A backend with these settings. Nothing starts until the first task or terminal.
    pub fn new(config: ClaudeCodeConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                terminal: terminal::Terminal::new(config.clone()),
                config,
                bin: Mutex::new(None),
                running: Arc::new(Mutex::new(HashSet::new())),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ClaudeCodeConfig {
        &self.inner.config
    }

    /// The `claude` CLI this backend runs (spec §9.4), found once and remembered.
    pub async fn claude_bin(&self) -> Result<PathBuf, DiscoveryError> {
        if let Some(bin) = lock(&self.inner.bin).clone() {
            return Ok(bin);
        }
        let explicit = self.inner.config.claude_bin.clone();
        let found = tokio::task::spawn_blocking(move || find_claude(explicit.as_deref()))
            .await
            .unwrap_or_else(|_| {
                Err(DiscoveryError::NotFound {
                    searched: "(the lookup panicked)".into(),
                })
            })?;
        *lock(&self.inner.bin) = Some(found.clone());
        Ok(found)
    }

    /// Runs one task like [`Backend::execute`] and also returns what the run did.
    pub async fn run(&self, task: Task, events: EventSink, cancel: CancellationToken) -> RunReport {
        let bin = match self.claude_bin().await {
            Ok(bin) => bin,
            Err(err) => {
                return RunReport {
                    outcome: TaskOutcome::failed(FailureKind::System, err.to_string()),
                    stats: RunStats {
                        ending: Ending::SpawnFailed,
                        ..RunStats::default()
                    },
                };
            }
        };
        driver::run_task(
            &bin,
            &self.inner.config,
            &task,
            &events,
            &cancel,
            &self.inner.running,
        )
        .await
    }

    /// What the terminal PTY is doing.
    pub fn terminal_status(&self) -> TerminalStatus {
        self.inner.terminal.status()
    }
}

#[async_trait]
impl Backend for ClaudeCodeBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: BACKEND_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            session_type: SessionType::Claudecode,
        }
    }

    /// Finds the `claude` CLI; fails with the lookup's message if there is none.
    async fn start(&self) -> Result<(), BackendError> {
        let bin = self
            .claude_bin()
            .await
            .map_err(|e| BackendError::Start(e.to_string()))?;
        tracing::info!(bin = %bin.display(), "claudecode backend ready");
        Ok(())
    }

    async fn execute(
        &self,
        task: Task,
        events: EventSink,
        cancel: CancellationToken,
    ) -> TaskOutcome {
        self.run(task, events, cancel).await.outcome
    }

    async fn attach_terminal(&self, stream: TerminalStream) -> Result<(), BackendError> {
        let bin = self
            .claude_bin()
            .await
            .map_err(|e| BackendError::Start(e.to_string()))?;
        self.inner.terminal.attach(bin, stream).await
    }

    /// Kills the terminal's PTY and the process groups of tasks still running.
    async fn shutdown(&self) {
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || {
            inner.terminal.shutdown();
            let groups: Vec<u32> = lock(&inner.running).iter().copied().collect();
            for pgid in groups {
                process::kill_group(pgid, Signal::SIGKILL);
            }
        })
        .await;
    }
}
