//! The stream-json protocol with the `claude` CLI (spec §9.5): argv, the messages the host
//! writes on stdin, answers to the CLI's control requests, and reading the `result`.

use agentserver_plugin_api::{FailureKind, Task, TaskOutcome, TaskStatus};
use serde::Deserialize;
use serde_json::{Value, json};

/// The fixed head of the argv after the program (spec §9.5).
pub const BASE_ARGS: [&str; 5] = [
    "--print",
    "--output-format",
    "stream-json",
    "--input-format",
    "stream-json",
];

/// The arguments (without the program) for one task, exactly as spec §9.5's task worker:
/// `--print --output-format stream-json --input-format stream-json --verbose
/// --permission-mode bypassPermissions [--max-turns N] [--system-prompt S] [--max-budget-usd X.XX]`.
pub fn claude_args(task: &Task) -> Vec<String> {
    let mut args: Vec<String> = BASE_ARGS.iter().map(|s| (*s).to_owned()).collect();
    args.push("--verbose".into());
    args.push("--permission-mode".into());
    args.push("bypassPermissions".into());
    if task.max_turns > 0 {
        args.push("--max-turns".into());
        args.push(task.max_turns.to_string());
    }
    if !task.system_context.is_empty() {
        args.push("--system-prompt".into());
        args.push(task.system_context.clone());
    }
    if task.max_budget_usd > 0.0 {
        args.push("--max-budget-usd".into());
        args.push(format!("{:.2}", task.max_budget_usd));
    }
    args
}

/// The `initialize` control request, the first stdin line (without the newline). Carries
/// `systemPrompt` when the task has a system context, as the SDK does.
pub fn initialize_request(task: &Task) -> String {
    let mut request = json!({"subtype": "initialize"});
    if !task.system_context.is_empty() {
        request["systemPrompt"] = json!(task.system_context);
    }
    json!({"type": "control_request", "request_id": "sdk_init_1", "request": request}).to_string()
}

/// The user message with the prompt, the second stdin line (without the newline).
pub fn user_message(prompt: &str) -> String {
    json!({"type": "user", "message": {"role": "user", "content": prompt}}).to_string()
}

/// The fields of a stdout line the driver looks at; deserialising it also validates the line.
#[derive(Debug, Deserialize)]
pub(crate) struct Peek {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
}

impl Peek {
    /// Parses a line that must be one JSON object; `None` for anything else.
    pub(crate) fn parse(line: &str) -> Option<Self> {
        if !line.starts_with('{') {
            return None;
        }
        serde_json::from_str(line).ok()
    }

    /// The `type` field, when a string.
    pub(crate) fn kind(&self) -> Option<&str> {
        self.kind.as_ref().and_then(Value::as_str)
    }
}

/// The answer to a control request from the CLI (spec §9.5), as one stdin line without the
/// newline; `None` if the request carries no `request_id` (nothing to answer).
///
/// `can_use_tool` → allow (echoing the input as `updatedInput`), `hook_callback` →
/// `{"continue": true}`, `mcp_message` → error (no SDK MCP servers), `elicitation` → decline,
/// anything else → success with an empty object.
pub fn control_response(request: &Value) -> Option<String> {
    let request_id = request.get("request_id")?.clone();
    let inner = request.get("request").cloned().unwrap_or(Value::Null);
    let subtype = inner.get("subtype").and_then(Value::as_str).unwrap_or("");
    let success = |response: Value| {
        json!({"type": "control_response", "response": {
            "subtype": "success", "request_id": request_id, "response": response}})
    };
    let answer = match subtype {
        "can_use_tool" => {
            let input = inner.get("input").cloned().unwrap_or_else(|| json!({}));
            success(json!({"behavior": "allow", "updatedInput": input}))
        }
        "hook_callback" => success(json!({"continue": true})),
        "mcp_message" => {
            let server = inner
                .get("server_name")
                .and_then(Value::as_str)
                .unwrap_or("");
            json!({"type": "control_response", "response": {
                "subtype": "error", "request_id": request_id,
                "error": format!("SDK MCP server not found: {server}")}})
        }
        "elicitation" => success(json!({"action": "decline"})),
        _ => success(json!({})),
    };
    Some(answer.to_string())
}

/// What the driver keeps of a `result` message.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultInfo {
    /// `subtype` (`success`, `error_max_turns`, …).
    pub subtype: String,
    /// `is_error`.
    pub is_error: bool,
    /// `result` text, when a string.
    pub result: Option<String>,
    /// `total_cost_usd`.
    pub total_cost_usd: Option<f64>,
    /// `num_turns`.
    pub num_turns: Option<u32>,
    /// `terminal_reason` (`completed`, `api_error`, `max_turns`, …).
    pub terminal_reason: Option<String>,
    /// `api_error_status` (HTTP status of a failed API call).
    pub api_error_status: Option<u64>,
    /// `errors[]`, as text.
    pub errors: Vec<String>,
}

impl ResultInfo {
    /// Reads the fields from a parsed `result` message (lenient: wrong types read as absent).
    pub fn from_value(v: &Value) -> Self {
        let str_field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Self {
            subtype: str_field("subtype").unwrap_or_default(),
            is_error: v.get("is_error").and_then(Value::as_bool).unwrap_or(false),
            result: str_field("result"),
            total_cost_usd: v.get("total_cost_usd").and_then(Value::as_f64),
            num_turns: v
                .get("num_turns")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok()),
            terminal_reason: str_field("terminal_reason"),
            api_error_status: v.get("api_error_status").and_then(Value::as_u64),
            errors: v
                .get("errors")
                .and_then(Value::as_array)
                .map(|errs| {
                    errs.iter()
                        .map(|e| match e {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Whether this result reports a failed API call (exit 1 with subtype `success`).
    pub fn is_api_error(&self) -> bool {
        self.is_error
            && (self.terminal_reason.as_deref() == Some("api_error")
                || self.api_error_status.is_some())
    }

    /// The task outcome this result stands for (see docs/decisions/claudecode.md):
    ///
    /// * `is_error: false` → completed with `result`, `total_cost_usd`, `num_turns`;
    /// * an API error → failed (user), reason `api_error (HTTP <status>): <result text>`;
    /// * any other error (`error_max_turns`, `error_max_budget_usd`,
    ///   `error_during_execution`, …) → failed (user), reason `<subtype>: <errors or result>`.
    ///
    /// Cost and turns are kept in every case.
    pub fn to_outcome(&self) -> TaskOutcome {
        let mut outcome = if !self.is_error {
            TaskOutcome::completed(self.result.clone().unwrap_or_default())
        } else if self.is_api_error() {
            let status = self
                .api_error_status
                .map(|s| format!(" (HTTP {s})"))
                .unwrap_or_default();
            let text = self.detail();
            TaskOutcome::failed(FailureKind::User, format!("api_error{status}: {text}"))
        } else {
            let subtype = if self.subtype.is_empty() || self.subtype == "success" {
                self.terminal_reason.as_deref().unwrap_or("error")
            } else {
                &self.subtype
            };
            TaskOutcome::failed(FailureKind::User, format!("{subtype}: {}", self.detail()))
        };
        outcome.total_cost_usd = self.total_cost_usd;
        outcome.num_turns = self.num_turns;
        debug_assert!(outcome.status != TaskStatus::Cancelled);
        outcome
    }

    fn detail(&self) -> String {
        if !self.errors.is_empty() {
            self.errors.join("; ")
        } else if let Some(r) = self.result.as_deref().filter(|r| !r.is_empty()) {
            r.to_owned()
        } else {
            "the claude CLI reported an error without details".to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_exactly_as_spec() {
        let mut task = Task {
            prompt: "p".into(),
            ..Task::default()
        };
        assert_eq!(
            claude_args(&task).join(" "),
            "--print --output-format stream-json --input-format stream-json --verbose --permission-mode bypassPermissions"
        );
        task.max_turns = 3;
        task.system_context = "be brief".into();
        task.max_budget_usd = 1.5;
        assert_eq!(
            claude_args(&task),
            [
                "--print",
                "--output-format",
                "stream-json",
                "--input-format",
                "stream-json",
                "--verbose",
                "--permission-mode",
                "bypassPermissions",
                "--max-turns",
                "3",
                "--system-prompt",
                "be brief",
                "--max-budget-usd",
                "1.50"
            ]
        );
    }

    #[test]
    fn stdin_messages() {
        let task = Task {
            prompt: "hi \"there\"".into(),
            system_context: "sys".into(),
            ..Task::default()
        };
        let init: Value = serde_json::from_str(&initialize_request(&task)).unwrap();
        assert_eq!(init["type"], "control_request");
        assert_eq!(init["request_id"], "sdk_init_1");
        assert_eq!(init["request"]["subtype"], "initialize");
        assert_eq!(init["request"]["systemPrompt"], "sys");
        let user: Value = serde_json::from_str(&user_message(&task.prompt)).unwrap();
        assert_eq!(
            user,
            json!({"type":"user","message":{"role":"user","content":"hi \"there\""}})
        );
        let plain: Value = serde_json::from_str(&initialize_request(&Task::default())).unwrap();
        assert!(plain["request"].get("systemPrompt").is_none());
    }

    #[test]
    fn control_answers() {
        let ask = |req: Value| -> Value {
            serde_json::from_str(
                &control_response(
                    &json!({"type":"control_request","request_id":"r1","request":req}),
                )
                .unwrap(),
            )
            .unwrap()
        };
        let a = ask(json!({"subtype":"can_use_tool","tool_name":"Bash","input":{"command":"ls"}}));
        assert_eq!(a["type"], "control_response");
        assert_eq!(a["response"]["subtype"], "success");
        assert_eq!(a["response"]["request_id"], "r1");
        assert_eq!(a["response"]["response"]["behavior"], "allow");
        assert_eq!(
            a["response"]["response"]["updatedInput"],
            json!({"command":"ls"})
        );
        let h = ask(json!({"subtype":"hook_callback","callback_id":"x"}));
        assert_eq!(h["response"]["response"], json!({"continue": true}));
        let m = ask(json!({"subtype":"mcp_message","server_name":"s"}));
        assert_eq!(m["response"]["subtype"], "error");
        assert!(m["response"]["error"].as_str().unwrap().contains('s'));
        let e = ask(json!({"subtype":"elicitation"}));
        assert_eq!(e["response"]["response"], json!({"action":"decline"}));
        let u = ask(json!({"subtype":"something_new"}));
        assert_eq!(u["response"]["response"], json!({}));
        assert!(control_response(&json!({"type":"control_request"})).is_none());
    }

    #[test]
    fn outcomes_from_reference_results() {
        let ok = ResultInfo::from_value(
            &json!({"type":"result","subtype":"success","is_error":false,
            "num_turns":2,"result":"FAKE_DONE: tool said hi","total_cost_usd":0.0012,"terminal_reason":"completed"}),
        );
        let o = ok.to_outcome();
        assert_eq!(o.status, TaskStatus::Completed);
        assert_eq!(o.result.as_deref(), Some("FAKE_DONE: tool said hi"));
        assert_eq!(o.num_turns, Some(2));
        assert_eq!(o.total_cost_usd, Some(0.0012));

        let api =
            ResultInfo::from_value(&json!({"type":"result","subtype":"success","is_error":true,
            "num_turns":1,"result":"API Error: 500 fake injected 500.","total_cost_usd":0,
            "terminal_reason":"api_error","api_error_status":500}));
        let o = api.to_outcome();
        assert_eq!(o.status, TaskStatus::Failed);
        assert_eq!(o.failure_kind, Some(FailureKind::User));
        assert_eq!(
            o.failure_reason.as_deref(),
            Some("api_error (HTTP 500): API Error: 500 fake injected 500.")
        );

        let turns = ResultInfo::from_value(
            &json!({"type":"result","subtype":"error_max_turns","is_error":true,
            "num_turns":2,"result":null,"total_cost_usd":0.0006,"terminal_reason":"max_turns",
            "api_error_status":null,"errors":["Reached maximum number of turns (1)"]}),
        );
        let o = turns.to_outcome();
        assert_eq!(o.status, TaskStatus::Failed);
        assert_eq!(
            o.failure_reason.as_deref(),
            Some("error_max_turns: Reached maximum number of turns (1)")
        );
        assert_eq!(o.num_turns, Some(2));
    }
}
