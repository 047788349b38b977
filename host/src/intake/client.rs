//! The task endpoints of the server (spec §8.2, §8.3): poll and status.

use std::time::Duration;

use agentserver_plugin_api::Task;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// HTTP timeout of poll and status requests (spec §8.2, §8.3).
pub const TASK_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A task as the poll endpoint returns it (spec §8.2).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PolledTask {
    /// `task_<uuid>`.
    pub task_id: String,
    /// The prompt.
    #[serde(default)]
    pub prompt: String,
    /// Extra system context.
    #[serde(default)]
    pub system_context: String,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_turns: u32,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_budget_usd: f64,
    /// Bridge session id; empty on servers without the bridge.
    #[serde(default)]
    pub session_id: String,
}

impl PolledTask {
    /// The task handed to a backend, running in `workdir`.
    pub fn into_task(self, workdir: &str) -> Task {
        Task {
            task_id: self.task_id,
            prompt: self.prompt,
            system_context: self.system_context,
            max_turns: self.max_turns,
            max_budget_usd: self.max_budget_usd,
            session_id: self.session_id,
            workdir: workdir.to_owned(),
        }
    }
}

/// Whether a task status is final (`completed`, `failed`, `cancelled`).
pub fn is_final_status(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// The body of `PUT /api/agent/tasks/{id}/status` (spec §8.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusBody {
    /// `completed` or `failed`.
    pub status: String,
    /// Result text of a completed task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Cost, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost_usd: Option<f64>,
    /// Turns, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_turns: Option<u32>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
}

impl StatusBody {
    /// `{"status":"failed","failure_reason":…}`.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self {
            status: "failed".into(),
            result: None,
            total_cost_usd: None,
            num_turns: None,
            failure_reason: Some(reason.into()),
        }
    }
}

/// Errors of the task endpoints.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not get an HTTP answer (connect error, timeout, reset).
    #[error("request failed: {0}")]
    Transport(#[source] crate::http::HttpError),
    /// The server answered with a non-success status.
    #[error("server answered {status}: {body}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The (plain-text) error body, trimmed.
        body: String,
    },
    /// The poll answer was not the expected JSON array.
    #[error("cannot decode poll response: {0}")]
    Decode(String),
}

impl ClientError {
    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Client for the task endpoints, authenticated with the sandbox's proxy token.
#[derive(Clone, Debug)]
pub struct TaskClient {
    http: reqwest::Client,
    server: String,
    proxy_token: Secret,
    sandbox_id: String,
}

impl TaskClient {
    /// A client for `server` (trailing `/` removed).
    pub fn new(http: reqwest::Client, server: &str, proxy_token: Secret, sandbox_id: &str) -> Self {
        Self {
            http,
            server: server.trim_end_matches('/').to_owned(),
            proxy_token,
            sandbox_id: sandbox_id.to_owned(),
        }
    }

    /// The normalised server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The sandbox this client polls for.
    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    /// `GET /api/agent/tasks/poll?sandbox_id=…`: up to 5 tasks, now assigned to this host.
    pub async fn poll(&self) -> Result<Vec<PolledTask>, ClientError> {
        let url = format!("{}/api/agent/tasks/poll", self.server);
        let request = self
            .http
            .get(url)
            .query(&[("sandbox_id", self.sandbox_id.as_str())])
            .bearer_auth(self.proxy_token.expose())
            .timeout(TASK_HTTP_TIMEOUT);
        let (status, body) = crate::http::send_and_read(request)
            .await
            .map_err(ClientError::Transport)?;
        if status.as_u16() != 200 {
            return Err(ClientError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        // `null` is tolerated as "no tasks".
        let tasks: Option<Vec<PolledTask>> =
            serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))?;
        Ok(tasks.unwrap_or_default())
    }

    /// `GET /api/agent/tasks/{id}`: the task's current `status` (spec §14).
    pub async fn task_status(&self, task_id: &str) -> Result<String, ClientError> {
        let url = format!("{}/api/agent/tasks/{}", self.server, task_id);
        let request = self
            .http
            .get(url)
            .bearer_auth(self.proxy_token.expose())
            .timeout(TASK_HTTP_TIMEOUT);
        let (status, body) = crate::http::send_and_read(request)
            .await
            .map_err(ClientError::Transport)?;
        if !status.is_success() {
            return Err(ClientError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        let detail: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| ClientError::Decode(e.to_string()))?;
        detail
            .get("status")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Decode("task detail has no status".into()))
    }

    /// `PUT /api/agent/tasks/{id}/status`.
    pub async fn put_status(&self, task_id: &str, body: &StatusBody) -> Result<(), ClientError> {
        let url = format!("{}/api/agent/tasks/{}/status", self.server, task_id);
        let request = self
            .http
            .put(url)
            .bearer_auth(self.proxy_token.expose())
            .json(body)
            .timeout(TASK_HTTP_TIMEOUT);
        let (status, text) = crate::http::send_and_read(request)
            .await
            .map_err(ClientError::Transport)?;
        if status.is_success() {
            return Ok(());
        }
        Err(ClientError::Status {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&text).trim().to_owned(),
        })
    }
}
