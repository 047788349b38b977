//! A task, and the outcome a plugin reports when it ends.

use serde::{Deserialize, Serialize};

/// One unit of work handed to a backend, as polled from the server (spec §8.2) plus the
/// directory the host runs it in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Server-assigned id (`task_<uuid>`).
    pub task_id: String,
    /// The user's prompt.
    pub prompt: String,
    /// Extra system context; empty when none.
    #[serde(default)]
    pub system_context: String,
    /// Turn limit; 0 means unlimited.
    #[serde(default)]
    pub max_turns: u32,
    /// Budget limit in USD; 0 means unlimited.
    #[serde(default)]
    pub max_budget_usd: f64,
    /// CCR v2 bridge session id (`cse_…`); empty when the server did not create one.
    #[serde(default)]
    pub session_id: String,
    /// Working directory for the task (absolute path).
    #[serde(default)]
    pub workdir: String,
}

/// Final status of a task as reported to the server (spec §8.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// The backend finished and produced (maybe) a result.
    Completed,
    /// The task failed; see [`TaskOutcome::failure_reason`].
    Failed,
    /// The task was cancelled before it finished.
    Cancelled,
}

/// Whose fault a failure was: the task's (a user failure) or the machinery's (a system failure).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The task itself failed (the model gave up, an API error, limits reached).
    User,
    /// The host or the backend broke (crash, timeout, missing binary).
    System,
}

/// What a backend reports when a task ends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskOutcome {
    /// Final status.
    pub status: TaskStatus,
    /// Result text (completed tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Total cost in USD, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_cost_usd: Option<f64>,
    /// Number of turns, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_turns: Option<u32>,
    /// Why it failed (failed and cancelled tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Whose fault the failure was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<FailureKind>,
    /// The task ran into a usage or rate limit of the model provider: the host pauses this
    /// sandbox's task intake until the limit resets (a failed outcome says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_limit: Option<UsageLimit>,
}

/// A usage or rate limit a backend ran into (Claude Code's `rate_limit_event`, an HTTP 429).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLimit {
    /// When the limit resets, in seconds since the Unix epoch, when the provider said;
    /// without it the host backs off (from one minute, doubling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<u64>,
    /// Which limit, in the provider's words (`five_hour`, `seven_day`, `rate_limit`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

impl TaskOutcome {
    /// A completed outcome with a result text.
    pub fn completed(result: impl Into<String>) -> Self {
        Self {
            status: TaskStatus::Completed,
            result: Some(result.into()),
            total_cost_usd: None,
            num_turns: None,
            failure_reason: None,
            failure_kind: None,
            usage_limit: None,
        }
    }

    /// A failed outcome.
    pub fn failed(kind: FailureKind, reason: impl Into<String>) -> Self {
        Self {
            status: TaskStatus::Failed,
            result: None,
            total_cost_usd: None,
            num_turns: None,
            failure_reason: Some(reason.into()),
            failure_kind: Some(kind),
            usage_limit: None,
        }
    }

    /// A cancelled outcome.
    pub fn cancelled(reason: impl Into<String>) -> Self {
        Self {
            status: TaskStatus::Cancelled,
            failure_reason: Some(reason.into()),
            ..Self::failed(FailureKind::System, "")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_parses_poll_item_with_missing_optionals() {
        let t: Task = serde_json::from_str(r#"{"task_id":"task_1","prompt":"hi"}"#).unwrap();
        assert_eq!(t.task_id, "task_1");
        assert_eq!(t.max_turns, 0);
        assert!(t.session_id.is_empty());
    }

    #[test]
    fn outcome_constructors() {
        let c = TaskOutcome::cancelled("stop");
        assert_eq!(c.status, TaskStatus::Cancelled);
        assert_eq!(c.failure_reason.as_deref(), Some("stop"));
        let f = TaskOutcome::failed(FailureKind::User, "bad");
        assert_eq!(f.failure_kind, Some(FailureKind::User));
    }
}
