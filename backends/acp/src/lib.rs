//! The built-in `acp` backend: drives any [Agent Client Protocol](https://agentclientprotocol.com)
//! agent (`opencode acp`, `claude-agent-acp`, `gemini --acp`, …) over newline-delimited
//! JSON-RPC 2.0 on its stdio, through the official SDK (`agent-client-protocol`, protocol v1).
//!
//! * Lifecycle: one agent process per sandbox ([`agent::AgentProcess`]), started by
//!   [`Backend::start`] (spawn in its own process group, `initialize`) and reused by every task
//!   (each task is a new ACP session in it); a process that died is restarted by the next
//!   task; [`Backend::shutdown`] stops its group (SIGTERM, grace, SIGKILL).
//! * Tasks: one prompt turn each ([`turn`]): `session/new` with the task's workspace as `cwd`,
//!   `session/prompt`, every `session/update` notification forwarded unmodified as a task
//!   event (the whole JSON-RPC line), then a final `result` event. The outcome comes from the
//!   `stopReason`.
//! * Client side ([`client`]): permission requests answered by a policy, `fs/*` confined to
//!   the task's workspace ([`workspace`]), `terminal/*` commands in process groups of their
//!   own with bounded output ([`terminal`]).
//!
//! See `docs/decisions/acp.md`.

use std::sync::{Arc, Mutex, PoisonError};

use agentserver_plugin_api::{
    Backend, BackendError, BackendInfo, CancellationToken, EventSink, FailureKind, SessionType,
    Task, TaskOutcome,
};
use async_trait::async_trait;

pub mod agent;
pub mod client;
mod config;
pub mod sessions;
mod spare;
pub mod terminal;
pub mod turn;
pub mod workspace;

pub use agent::{AgentProcess, StartError};
pub use config::{
    AcpConfig, CommandLineError, PermissionPolicy, Preset, UnknownPreset, split_command,
};

/// Name users pass to `--backend`.
pub const BACKEND_NAME: &str = "acp";

/// The acp backend. Cheap to clone; clones share the agent process.
#[derive(Clone)]
pub struct AcpBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: AcpConfig,
    agent: tokio::sync::Mutex<Option<Arc<AgentProcess>>>,
    /// `agentInfo` (name, version) of the last agent that answered `initialize`.
    agent_info: Mutex<Option<(String, String)>>,
    /// The session made ahead of time for the next task.
    spare: Arc<spare::Spare>,
}

impl AcpBackend {
    /// A backend for `config`; nothing starts until [`Backend::start`] or the first task.
    pub fn new(config: AcpConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                agent: tokio::sync::Mutex::new(None),
                agent_info: Mutex::new(None),
                spare: Arc::default(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AcpConfig {
        &self.inner.config
    }

    /// The running agent process, started (or restarted, when the last one died) now.
    pub async fn agent(&self) -> Result<Arc<AgentProcess>, StartError> {
        let mut slot = self.inner.agent.lock().await;
        if let Some(agent) = slot.as_ref() {
            if !agent.is_dead() {
                return Ok(agent.clone());
            }
            tracing::warn!(pid = agent.pid, "the ACP agent died; starting a new one");
            agent.stop().await;
            *slot = None;
        }
        let agent = AgentProcess::start(&self.inner.config).await?;
        if let Some(info) = &agent.info {
            *self
                .inner
                .agent_info
                .lock()
                .unwrap_or_else(PoisonError::into_inner) =
                Some((info.name.clone(), info.version.clone()));
        }
        *slot = Some(agent.clone());
        self.prepare_spare(&agent);
        Ok(agent)
    }

    fn prepare_spare(&self, agent: &Arc<AgentProcess>) {
        let config = &self.inner.config;
        if config.prepare_sessions && !agent.is_dead() {
            self.inner
                .spare
                .prepare(agent, &config.workdir, config.session_timeout);
        }
    }

    /// The pid of the running agent process, if one runs.
    pub async fn agent_pid(&self) -> Option<u32> {
        let slot = self.inner.agent.lock().await;
        slot.as_ref().filter(|a| !a.is_dead()).map(|a| a.pid)
    }

    /// The agent's name and version from its last `initialize`.
    pub fn agent_info(&self) -> Option<(String, String)> {
        self.inner
            .agent_info
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Backend for AcpBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: BACKEND_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            session_type: SessionType::Custom,
        }
    }

    async fn start(&self) -> Result<(), BackendError> {
        self.agent()
            .await
            .map(drop)
            .map_err(|e| BackendError::Start(e.to_string()))
    }

    async fn execute(
        &self,
        task: Task,
        events: EventSink,
        cancel: CancellationToken,
    ) -> TaskOutcome {
        let agent = tokio::select! {
            agent = self.agent() => match agent {
                Ok(agent) => agent,
                Err(e) => return TaskOutcome::failed(FailureKind::System, e.to_string()),
            },
            () = cancel.cancelled() => return TaskOutcome::cancelled("cancelled before the ACP agent started"),
        };
        let outcome = turn::run(
            &agent,
            &self.inner.config,
            &self.inner.spare,
            task,
            events,
            cancel,
        )
        .await;
        self.prepare_spare(&agent);
        outcome
    }

    async fn agent_info_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        if let Some((name, version)) = self.agent_info() {
            fields.insert("acp_agent_name".into(), name.into());
            fields.insert("acp_agent_version".into(), version.into());
        }
        fields
    }

    async fn shutdown(&self) {
        let agent = self.inner.agent.lock().await.take();
        if let Some(agent) = agent {
            agent.stop().await;
        }
    }
}
