//! The five workspace tools: their definitions (names, schemas, annotations) and what each
//! call does over HTTP and answers (spec §10.2).

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde::Deserialize;
use serde_json::{Value, json};

use super::api::{ApiError, TOOL_TIMEOUT, WorkspaceApi};
use super::listing::DISCOVERY_PATH;

/// `discover_agents`.
pub const DISCOVER_AGENTS: &str = "discover_agents";
/// `delegate_task`.
pub const DELEGATE_TASK: &str = "delegate_task";
/// `check_task`.
pub const CHECK_TASK: &str = "check_task";
/// `send_message`.
pub const SEND_MESSAGE: &str = "send_message";
/// `read_inbox`.
pub const READ_INBOX: &str = "read_inbox";

/// The text of one tool result, and whether it is an error (`isError: true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// The one text content item.
    pub text: String,
    /// True for `isError` results.
    pub is_error: bool,
}

impl ToolOutput {
    fn ok(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            is_error: false,
        }
    }

    fn error(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            is_error: true,
        }
    }

    fn failed(verb: &str, err: &ApiError) -> Self {
        Self::error(format!("Failed to {verb}: {err}"))
    }
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => unreachable!("tool schemas are JSON objects"),
    }
}

fn read_only(flag: bool) -> ToolAnnotations {
    ToolAnnotations::new().read_only(flag)
}

/// The five tool definitions, in upstream's order; `delegate_description` is the current
/// `delegate_task` description (base text + agent listing).
pub fn definitions(delegate_description: String) -> Vec<Tool> {
    vec![
        Tool::new(
            DISCOVER_AGENTS,
            "Search for available agents in this workspace by skill, tag, or status.",
            schema(json!({
                "type": "object",
                "properties": {
                    "skill": {"type": "string", "description": "Filter by skill name"},
                    "tag": {"type": "string", "description": "Filter by tag"},
                    "status": {"type": "string", "description": "Filter by status (available, busy, offline). Default: all."}
                }
            })),
        )
        .with_annotations(read_only(true)),
        Tool::new(
            DELEGATE_TASK,
            delegate_description,
            schema(json!({
                "type": "object",
                "properties": {
                    "target_id": {"type": "string", "description": "The agent_id (sandbox ID) of the target agent"},
                    "prompt": {"type": "string", "description": "The task prompt to send to the target agent"},
                    "skill": {"type": "string", "description": "Optional: the skill to invoke on the target agent"}
                },
                "required": ["target_id", "prompt"]
            })),
        ),
        Tool::new(
            CHECK_TASK,
            "Check the status and result of a previously delegated task.",
            schema(json!({
                "type": "object",
                "properties": {
                    "task_id": {"type": "string", "description": "The task ID returned by delegate_task"},
                    "include_output": {"type": "boolean", "description": "If true, include the full task output from session events (may be long). Default: false."}
                },
                "required": ["task_id"]
            })),
        )
        .with_annotations(read_only(true)),
        Tool::new(
            SEND_MESSAGE,
            "Send a message to another agent's mailbox for async communication.",
            schema(json!({
                "type": "object",
                "properties": {
                    "to": {"type": "string", "description": "Target agent ID (sandbox ID)"},
                    "text": {"type": "string", "description": "Message text"},
                    "msg_type": {"type": "string", "description": "Message type (default: text)"}
                },
                "required": ["to", "text"]
            })),
        ),
        Tool::new(
            READ_INBOX,
            "Read unread messages from your inbox. Messages are marked as read after retrieval.",
            schema(json!({
                "type": "object",
                "properties": {
                    "limit": {"type": "integer", "description": "Max messages to return (default: 10)"}
                }
            })),
        )
        .with_annotations(read_only(false)),
    ]
}

/// Runs the tools against the server.
#[derive(Debug, Clone)]
pub struct Tools {
    api: WorkspaceApi,
    self_id: Option<String>,
}

#[derive(Deserialize)]
struct DelegateArgs {
    #[serde(default)]
    target_id: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    skill: Option<String>,
}

#[derive(Deserialize)]
struct CheckArgs {
    #[serde(default)]
    task_id: Option<String>,
    #[serde(default)]
    include_output: Option<bool>,
}

#[derive(Deserialize)]
struct SendArgs {
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    msg_type: Option<String>,
}

fn parse_args<T: for<'de> Deserialize<'de>>(args: &JsonObject) -> Result<T, ToolOutput> {
    serde_json::from_value(Value::Object(args.clone()))
        .map_err(|e| ToolOutput::error(format!("Invalid arguments: {e}")))
}

/// A JSON string field of `v`, or "".
fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// True when `body` is a JSON array with at least one element.
fn non_empty_array(body: &str) -> bool {
    serde_json::from_str::<Vec<serde::de::IgnoredAny>>(body).is_ok_and(|v| !v.is_empty())
}

use crate::http::path_segment;

impl Tools {
    /// Tools calling through `api`; `self_id` is sent as `requester_id`.
    pub fn new(api: WorkspaceApi, self_id: Option<String>) -> Self {
        Self { api, self_id }
    }

    /// Runs tool `name`, or `None` when no tool has that name. Never fails: every problem is
    /// an `isError` output.
    pub async fn call(&self, name: &str, args: &JsonObject) -> Option<ToolOutput> {
        let out = match name {
            DISCOVER_AGENTS => self.discover_agents().await,
            DELEGATE_TASK => self.delegate_task(args).await,
            CHECK_TASK => self.check_task(args).await,
            SEND_MESSAGE => self.send_message(args).await,
            READ_INBOX => self.read_inbox(args).await,
            _ => return None,
        };
        Some(out.unwrap_or_else(|e| e))
    }

    async fn discover_agents(&self) -> Result<ToolOutput, ToolOutput> {
        // `skill`, `tag` and `status` are accepted and ignored, as upstream.
        let body = self
            .api
            .get(DISCOVERY_PATH, TOOL_TIMEOUT)
            .await
            .map_err(|e| ToolOutput::failed("discover agents", &e))?;
        if !non_empty_array(&body) {
            return Ok(ToolOutput::ok("No agents found in this workspace."));
        }
        Ok(ToolOutput::ok(body))
    }

    async fn delegate_task(&self, args: &JsonObject) -> Result<ToolOutput, ToolOutput> {
        let a: DelegateArgs = parse_args(args)?;
        let mut req = json!({
            "target_id": a.target_id.unwrap_or_default(),
            "prompt": a.prompt.unwrap_or_default(),
            "requester_id": self.self_id.clone().unwrap_or_default(),
        });
        if let Some(skill) = a.skill.filter(|s| !s.is_empty()) {
            req["skill"] = Value::String(skill);
        }
        let body = self
            .api
            .post_json("/api/agent/tasks", &req, TOOL_TIMEOUT)
            .await
            .map_err(|e| ToolOutput::failed("delegate task", &e))?;
        let resp: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        Ok(ToolOutput::ok(format!(
            "Task delegated successfully.\n\nTask ID: {}\nSession ID: {}\nStatus: {}\n\n\
             Use check_task with task_id to monitor progress.",
            str_of(&resp, "task_id"),
            str_of(&resp, "session_id"),
            str_of(&resp, "status"),
        )))
    }

    async fn check_task(&self, args: &JsonObject) -> Result<ToolOutput, ToolOutput> {
        let a: CheckArgs = parse_args(args)?;
        let task_id = a.task_id.unwrap_or_default();
        let mut path = format!("/api/agent/tasks/{}", path_segment(&task_id));
        if a.include_output.unwrap_or(false) {
            path.push_str("?include_output=true");
        }
        let body = self
            .api
            .get(&path, TOOL_TIMEOUT)
            .await
            .map_err(|e| ToolOutput::failed("check task", &e))?;
        let task: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let mut text = format!("Task {task_id}: {}", str_of(&task, "status"));
        let result = str_of(&task, "result");
        if !result.is_empty() {
            text.push_str("\n\nResult:\n");
            text.push_str(result);
        }
        let reason = str_of(&task, "failure_reason");
        if !reason.is_empty() {
            text.push_str("\n\nFailure reason: ");
            text.push_str(reason);
        }
        let output = str_of(&task, "output");
        if !output.is_empty() {
            text.push_str("\n\nFull output:\n");
            text.push_str(output);
        }
        Ok(ToolOutput::ok(text))
    }

    async fn send_message(&self, args: &JsonObject) -> Result<ToolOutput, ToolOutput> {
        let a: SendArgs = parse_args(args)?;
        let req = json!({
            "to": a.to.unwrap_or_default(),
            "text": a.text.unwrap_or_default(),
            "msg_type": a.msg_type.filter(|t| !t.is_empty()).unwrap_or_else(|| "text".into()),
        });
        let body = self
            .api
            .post_json("/api/agent/mailbox/send", &req, TOOL_TIMEOUT)
            .await
            .map_err(|e| ToolOutput::failed("send message", &e))?;
        let resp: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        Ok(ToolOutput::ok(format!(
            "Message sent (ID: {})",
            str_of(&resp, "message_id")
        )))
    }

    async fn read_inbox(&self, args: &JsonObject) -> Result<ToolOutput, ToolOutput> {
        // Like upstream, a `limit` that is not a positive integer is ignored.
        let limit = args
            .get("limit")
            .and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            })
            .filter(|n| *n > 0);
        let path = match limit {
            Some(n) => format!("/api/agent/mailbox/inbox?limit={n}"),
            None => "/api/agent/mailbox/inbox".to_owned(),
        };
        let body = self
            .api
            .get(&path, TOOL_TIMEOUT)
            .await
            .map_err(|e| ToolOutput::failed("read inbox", &e))?;
        if !non_empty_array(&body) {
            return Ok(ToolOutput::ok("No new messages in your inbox."));
        }
        Ok(ToolOutput::ok(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_tools_with_required_fields_and_annotations() {
        let tools = definitions("desc".into());
        let v = serde_json::to_value(&tools).unwrap();
        let names: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                DISCOVER_AGENTS,
                DELEGATE_TASK,
                CHECK_TASK,
                SEND_MESSAGE,
                READ_INBOX
            ]
        );
        assert_eq!(v[0]["annotations"], json!({"readOnlyHint": true}));
        assert_eq!(v[1]["description"], "desc");
        assert!(v[1].get("annotations").is_none());
        assert_eq!(
            v[1]["inputSchema"]["required"],
            json!(["target_id", "prompt"])
        );
        assert_eq!(
            v[2]["inputSchema"]["properties"]["include_output"]["type"],
            "boolean"
        );
        assert_eq!(v[3]["inputSchema"]["required"], json!(["to", "text"]));
        assert_eq!(v[4]["annotations"], json!({"readOnlyHint": false}));
        assert_eq!(
            v[4]["inputSchema"]["properties"]["limit"]["type"],
            "integer"
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("task_1"), "task_1");
        assert_eq!(path_segment("a/../b?c"), "a%2F..%2Fb%3Fc");
    }

    #[test]
    fn array_detection() {
        assert!(non_empty_array("[1]"));
        assert!(!non_empty_array("[]"));
        assert!(!non_empty_array("null"));
        assert!(!non_empty_array("{\"a\":1}"));
    }
}
