//! The task endpoints of the server (spec §8.2, §8.3): poll and status.

use std::time::Duration;

use agentserver_plugin_api::Task;
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Default HTTP timeout of a task poll. Upstream uses 10 s (spec §8.2), but a polled task is
/// assigned the moment the server answers and never offered again, so an answer that arrives
/// after the client gave up is a lost task: the timeout must fit a loaded server.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(60);
/// Default HTTP timeout of a status report and of a task lookup (spec §8.3, §14): a report
/// that times out after the server applied it must be checked before it is sent again.
pub const DEFAULT_STATUS_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest task id the host accepts (the server's are `task_<uuid>`, 41 bytes).
pub const MAX_TASK_ID_LEN: usize = 256;

/// Why a task id cannot be used: it would change the meaning of the URLs it goes into, or is
/// absurd. Such a task is not run and not reported (there is no URL to report it to).
pub fn check_task_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the task id is empty".into());
    }
    if id.len() > MAX_TASK_ID_LEN {
        return Err(format!(
            "the task id is {} bytes long (at most {MAX_TASK_ID_LEN})",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("the task id contains control characters".into());
    }
    if matches!(id, "." | "..") {
        return Err(format!("the task id {id:?} is a relative path segment"));
    }
    Ok(())
}

/// A task as the poll endpoint returns it (spec §8.2).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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

/// A task's final status (spec §8.3). This host reports `completed` or `failed` (a cancelled
/// task is reported `failed` with its reason); `cancelled` is what the server may hold when
/// someone cancelled the task there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinalStatus {
    /// The task finished its work.
    Completed,
    /// The task could not finish (its `failure_reason` says why).
    Failed,
    /// The task was cancelled on the server.
    Cancelled,
}

impl FinalStatus {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            FinalStatus::Completed => "completed",
            FinalStatus::Failed => "failed",
            FinalStatus::Cancelled => "cancelled",
        }
    }

    /// The final status a server's task status names, or `None` for a status that is not
    /// final (`pending`, `assigned`, `running`, anything unknown).
    pub fn from_wire(status: &str) -> Option<Self> {
        match status {
            "completed" => Some(FinalStatus::Completed),
            "failed" => Some(FinalStatus::Failed),
            "cancelled" => Some(FinalStatus::Cancelled),
            _ => None,
        }
    }
}

impl std::fmt::Display for FinalStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a task status is final (`completed`, `failed`, `cancelled`).
pub fn is_final_status(status: &str) -> bool {
    FinalStatus::from_wire(status).is_some()
}

/// The body of `PUT /api/agent/tasks/{id}/status` (spec §8.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusBody {
    /// `completed` or `failed`.
    pub status: FinalStatus,
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

/// The most of a `result` the host sends: a longer one is cut with a marker at the end
/// ([`StatusBody::within_limits`]); the outbox keeps what is sent.
pub const MAX_RESULT_BYTES: usize = 1024 * 1024;
/// The most of a `failure_reason` the host sends.
pub const MAX_FAILURE_REASON_BYTES: usize = 16 * 1024;

/// `text` cut to at most `cap` bytes (at a character boundary) plus a marker saying so, or
/// `text` itself when it fits.
fn cut(text: &str, cap: usize) -> String {
    if text.len() <= cap {
        return text.to_owned();
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[cut by the agentserver host: {end} of {} bytes]",
        &text[..end],
        text.len()
    )
}

impl StatusBody {
    /// This status with `result` and `failure_reason` cut to the documented caps
    /// ([`MAX_RESULT_BYTES`], [`MAX_FAILURE_REASON_BYTES`]).
    pub fn within_limits(mut self) -> Self {
        self.result = self.result.map(|r| cut(&r, MAX_RESULT_BYTES));
        self.failure_reason = self
            .failure_reason
            .map(|r| cut(&r, MAX_FAILURE_REASON_BYTES));
        self
    }

    /// This status with `result` and `failure_reason` cut to `cap` bytes each (for a server
    /// that refused it as too large).
    pub fn shortened(&self, cap: usize) -> Self {
        let mut body = self.clone();
        body.result = body.result.map(|r| cut(&r, cap));
        body.failure_reason = body.failure_reason.map(|r| cut(&r, cap));
        body
    }

    /// `{"status":"failed","failure_reason":…}`.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self {
            status: FinalStatus::Failed,
            result: None,
            total_cost_usd: None,
            num_turns: None,
            failure_reason: Some(reason.into()),
        }
    }
}

/// One poll answer, decoded item by item: a malformed item does not take the good ones with it
/// (the server has assigned all of them already).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PollBatch {
    /// The tasks to run.
    pub tasks: Vec<PolledTask>,
    /// Items that could not be decoded, or whose id cannot be used.
    pub malformed: Vec<MalformedTask>,
}

/// A poll item that cannot be run.
#[derive(Clone, Debug, PartialEq)]
pub struct MalformedTask {
    /// Its id when it has a usable one (it is then reported `failed` with `reason`).
    pub task_id: Option<String>,
    /// What is wrong with it.
    pub reason: String,
}

impl PollBatch {
    /// Decodes a poll answer: `null` or a JSON array; each item on its own.
    pub fn decode(body: &[u8]) -> Result<Self, ClientError> {
        let items: Option<Vec<serde_json::Value>> =
            serde_json::from_slice(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let mut batch = Self::default();
        for item in items.unwrap_or_default() {
            let id = item
                .get("task_id")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
            let usable_id = id.clone().filter(|id| check_task_id(id).is_ok());
            match serde_json::from_value::<PolledTask>(item) {
                Ok(task) => match check_task_id(&task.task_id) {
                    Ok(()) => batch.tasks.push(task),
                    Err(reason) => batch.malformed.push(MalformedTask {
                        task_id: None,
                        reason,
                    }),
                },
                Err(err) => batch.malformed.push(MalformedTask {
                    task_id: usable_id,
                    reason: match &id {
                        Some(_) => format!("the server sent a malformed task: {err}"),
                        None => format!("a task without a usable id: {err}"),
                    },
                }),
            }
        }
        Ok(batch)
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
    /// The task id cannot be put into a URL ([`check_task_id`]); nothing was sent.
    #[error("unusable task id: {0}")]
    InvalidTaskId(String),
}

impl ClientError {
    /// A short, fixed name for the kind of failure (a metrics label): `timeout`, `transport`
    /// (no answer), `auth` (401/403), `rate_limited` (429), `server` (5xx), `http` (another
    /// status), `decode` (an answer that is not the expected JSON), `invalid_task_id`.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Transport(e) if e.is_timeout() => "timeout",
            Self::Transport(_) => "transport",
            Self::Status {
                status: 401 | 403, ..
            } => "auth",
            Self::Status { status: 429, .. } => "rate_limited",
            Self::Status { status, .. } if *status >= 500 => "server",
            Self::Status { .. } => "http",
            Self::Decode(_) => "decode",
            Self::InvalidTaskId(_) => "invalid_task_id",
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when the request may have been applied although no success came back: no
    /// answer at all, a timeout, or a gateway or server error (a 502/504 from a proxy after
    /// the server applied the request). A 429 or 503 is taken as "not applied".
    pub fn is_ambiguous(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Status { status, .. } => matches!(*status, 408 | 500 | 502 | 504 | 520..=599),
            Self::Decode(_) | Self::InvalidTaskId(_) => false,
        }
    }
}

/// Timeouts of the task endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskTimeouts {
    /// A poll ([`DEFAULT_POLL_TIMEOUT`]).
    pub poll: Duration,
    /// A status report or task lookup ([`DEFAULT_STATUS_TIMEOUT`]).
    pub status: Duration,
}

impl Default for TaskTimeouts {
    fn default() -> Self {
        Self {
            poll: DEFAULT_POLL_TIMEOUT,
            status: DEFAULT_STATUS_TIMEOUT,
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
    timeouts: TaskTimeouts,
}

impl TaskClient {
    /// A client for `server` (trailing `/` removed).
    pub fn new(
        http: reqwest::Client,
        server: &str,
        proxy_token: Secret,
        sandbox_id: &str,
        timeouts: TaskTimeouts,
    ) -> Self {
        Self {
            http,
            server: server.trim_end_matches('/').to_owned(),
            proxy_token,
            sandbox_id: sandbox_id.to_owned(),
            timeouts,
        }
    }

    /// `{server}/api/agent/tasks/{id}{suffix}`, the id percent-encoded as one path segment.
    fn task_url(&self, task_id: &str, suffix: &str) -> Result<String, ClientError> {
        check_task_id(task_id).map_err(ClientError::InvalidTaskId)?;
        Ok(format!(
            "{}/api/agent/tasks/{}{suffix}",
            self.server,
            crate::http::path_segment(task_id)
        ))
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
    pub async fn poll(&self) -> Result<PollBatch, ClientError> {
        let url = format!("{}/api/agent/tasks/poll", self.server);
        let request = self
            .http
            .get(url)
            .query(&[("sandbox_id", self.sandbox_id.as_str())])
            .bearer_auth(self.proxy_token.expose())
            .timeout(self.timeouts.poll);
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
        PollBatch::decode(&body)
    }

    /// `GET /api/agent/tasks/{id}`: the task's current `status` (spec §14).
    pub async fn task_status(&self, task_id: &str) -> Result<String, ClientError> {
        let url = self.task_url(task_id, "")?;
        let request = self
            .http
            .get(url)
            .bearer_auth(self.proxy_token.expose())
            .timeout(self.timeouts.status);
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
        let url = self.task_url(task_id, "/status")?;
        let request = self
            .http
            .put(url)
            .bearer_auth(self.proxy_token.expose())
            .json(body)
            .timeout(self.timeouts.status);
        // Never resent here: after a reset the server may hold the status, and the reporter
        // asks it before sending again.
        let (status, text) = crate::http::send_and_read_once(request)
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
