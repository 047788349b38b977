//! The [`Backend`] trait every backend implements, built-in or plugin.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::http::{HttpRequest, HttpResponse};
use crate::task::{EventSink, Task, TaskOutcome};

/// The sandbox type a backend registers as (spec §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionType {
    /// The built-in Claude Code backend.
    Claudecode,
    /// The built-in opencode backend.
    Opencode,
    /// Any plugin.
    Custom,
}

impl SessionType {
    /// The wire name (`claudecode`, `opencode`, `custom`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Claudecode => "claudecode",
            Self::Opencode => "opencode",
            Self::Custom => "custom",
        }
    }
}

impl std::fmt::Display for SessionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a backend says about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    /// Name users pass to `--backend`.
    pub name: String,
    /// The backend's own version.
    pub version: String,
    /// The sandbox type it registers as.
    pub session_type: SessionType,
}

/// Errors a backend returns from calls other than `execute` (whose failures are outcomes).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend does not offer this feature (HTTP proxying, terminals).
    #[error("the {backend} backend does not support {feature}")]
    Unsupported {
        /// Backend name.
        backend: String,
        /// The missing feature.
        feature: &'static str,
    },
    /// The backend could not start (binary missing, port taken, …).
    #[error("backend failed to start: {0}")]
    Start(String),
    /// The backend broke while serving a call.
    #[error("backend error: {0}")]
    Internal(String),
}

/// A bidirectional byte stream for a terminal session.
pub trait TerminalIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> TerminalIo for T {}

/// A terminal stream opened by the server (spec §12), framing included: inbound chunks start with
/// `0x00` (data) or `0x01` (resize JSON); outbound chunks start with `0x00`.
pub type TerminalStream = Box<dyn TerminalIo>;

/// A backend: runs tasks and optionally serves the tunnel's HTTP and terminal streams.
///
/// Every method may be called concurrently from several tasks. `execute` must return promptly
/// once `cancel` fires (the host enforces a grace period and then abandons the call).
#[async_trait]
pub trait Backend: Send + Sync {
    /// Name, version and sandbox type.
    fn info(&self) -> BackendInfo;

    /// Called once before the first task (start child servers, check binaries).
    async fn start(&self) -> Result<(), BackendError> {
        Ok(())
    }

    /// Runs one task to its end, streaming events into `events`.
    async fn execute(
        &self,
        task: Task,
        events: EventSink,
        cancel: CancellationToken,
    ) -> TaskOutcome;

    /// Serves one HTTP request that arrived through the tunnel.
    async fn handle_http(&self, request: HttpRequest) -> Result<HttpResponse, BackendError> {
        let _ = request;
        Err(BackendError::Unsupported {
            backend: self.info().name,
            feature: "HTTP streams",
        })
    }

    /// Serves one terminal stream until it closes.
    async fn attach_terminal(&self, stream: TerminalStream) -> Result<(), BackendError> {
        drop(stream);
        Err(BackendError::Unsupported {
            backend: self.info().name,
            feature: "terminal streams",
        })
    }

    /// Fields this backend adds to the agent info the host sends on every control stream
    /// (spec §7.1), asked for each time it is sent: opencode gives
    /// `{"opencode_version": "1.18.33"}`. A key the host's own document already has is
    /// ignored, except `opencode_version`, which upstream defines for the backend to fill.
    async fn agent_info_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::Map::new()
    }

    /// Called once at shutdown: stop child processes the backend started.
    async fn shutdown(&self) {}
}
