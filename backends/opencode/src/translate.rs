//! Translation of opencode's `/event` stream for one session into Claude stream-json shaped
//! events (the mapping is documented in `docs/decisions/opencode.md`).
//!
//! [`Translator`] is a pure state machine: [`Translator::on_event`] takes one decoded event
//! and returns the Claude-shaped events it completes plus a [`Signal`] for the driver;
//! [`Translator::finish`] flushes what is left and builds the final `result` event and the
//! [`TaskOutcome`].

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use agentserver_plugin_api::{FailureKind, TaskOutcome};
use serde_json::{Value, json};

pub use crate::events::event_session;
use crate::events::{Event, SessionState};

/// What the driver must do after an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// Nothing special.
    None,
    /// The session went idle after working: the turn is over.
    Idle,
    /// opencode asks for a permission (`permission.asked`); the id is the request to answer.
    PermissionAsked {
        /// Request id (`per…`).
        id: String,
        /// What is asked (`bash`, `edit`, `external_directory`, …).
        permission: String,
    },
    /// opencode asks the user a question (`question.asked`); nobody can answer a task's.
    QuestionAsked {
        /// Request id (`que…`).
        id: String,
    },
}

/// How a task ended, as seen by the driver.
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    /// The session went idle on its own.
    Idle,
    /// The task was cancelled and the session aborted.
    Cancelled,
    /// The turn limit was reached (the session was aborted).
    MaxTurns(u32),
    /// The budget was exceeded (the session was aborted).
    MaxBudget(f64),
    /// opencode broke (event stream lost, API call failed): a system failure.
    Broken(String),
}

/// An error opencode reported for the session (`session.error`).
#[derive(Clone, Debug, PartialEq)]
pub struct SessionError {
    /// `error.name` (`APIError`, `MessageAbortedError`, `ProviderAuthError`, …).
    pub name: String,
    /// `error.data.message`.
    pub message: String,
    /// `error.data.statusCode` for API errors.
    pub status: Option<u64>,
}

impl SessionError {
    fn from_value(error: &Value) -> Self {
        let data = &error["data"];
        Self {
            name: error["name"].as_str().unwrap_or("UnknownError").to_owned(),
            message: data["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| data.to_string()),
            status: data["statusCode"].as_u64(),
        }
    }

    fn is_abort(&self) -> bool {
        self.name == "MessageAbortedError"
    }
}

#[derive(Debug, Default)]
struct ToolProgress {
    use_emitted: bool,
    result_emitted: bool,
    call_id: String,
}

/// Token totals over all steps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// Input tokens.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Cache reads.
    pub cache_read: u64,
    /// Cache writes.
    pub cache_write: u64,
}

/// The translator for one opencode session.
#[derive(Debug)]
pub struct Translator {
    session_id: String,
    cwd: String,
    started: Instant,
    model: String,
    user_messages: HashSet<String>,
    /// Latest text of text/reasoning parts not emitted yet: part id → (message id, kind, text).
    pending: HashMap<String, (String, &'static str, String)>,
    /// Order in which pending parts appeared.
    pending_order: Vec<String>,
    emitted_parts: HashSet<String>,
    tools: HashMap<String, ToolProgress>,
    /// Text parts of each assistant message, in order: message id → texts.
    texts: Vec<(String, String)>,
    steps: HashSet<String>,
    step_starts: HashSet<String>,
    cost: f64,
    usage: Usage,
    busy_seen: bool,
    error: Option<SessionError>,
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Translator {
    /// A translator for session `session_id` running in `cwd`; `model` is `provider/model`
    /// when known (updated from the assistant messages otherwise).
    pub fn new(
        session_id: impl Into<String>,
        cwd: impl Into<String>,
        model: Option<String>,
    ) -> Self {
        Self {
            session_id: session_id.into(),
            cwd: cwd.into(),
            started: Instant::now(),
            model: model.unwrap_or_default(),
            user_messages: HashSet::new(),
            pending: HashMap::new(),
            pending_order: Vec::new(),
            emitted_parts: HashSet::new(),
            tools: HashMap::new(),
            texts: Vec::new(),
            steps: HashSet::new(),
            step_starts: HashSet::new(),
            cost: 0.0,
            usage: Usage::default(),
            busy_seen: false,
            error: None,
        }
    }

    /// The opencode session id.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Model steps finished so far (Claude's `num_turns`: one per model call).
    pub fn num_turns(&self) -> u32 {
        u32::try_from(self.steps.len()).unwrap_or(u32::MAX)
    }

    /// Model steps started so far (a step past the turn limit means the limit is exceeded).
    pub fn steps_started(&self) -> u32 {
        u32::try_from(self.step_starts.len()).unwrap_or(u32::MAX)
    }

    /// Cost so far in USD.
    pub fn cost(&self) -> f64 {
        self.cost
    }

    /// Token totals so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The error opencode reported, if any.
    pub fn error(&self) -> Option<&SessionError> {
        self.error.as_ref()
    }

    /// The `system/init` event that opens the task's stream.
    pub fn init_event(&self, opencode_version: &str, permission_mode: &str) -> Value {
        json!({
            "type": "system",
            "subtype": "init",
            "cwd": self.cwd,
            "session_id": self.session_id,
            "tools": [],
            "mcp_servers": [],
            "model": self.model,
            "permissionMode": permission_mode,
            "apiKeySource": "none",
            "backend": "opencode",
            "opencode_version": opencode_version,
            "uuid": uuid(),
        })
    }

    fn assistant(&self, message_id: &str, content: Value) -> Value {
        json!({
            "type": "assistant",
            "message": {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [content],
                "stop_reason": null,
                "stop_sequence": null,
            },
            "parent_tool_use_id": null,
            "session_id": self.session_id,
            "uuid": uuid(),
        })
    }

    fn tool_result(&self, call_id: &str, content: &str, is_error: bool) -> Value {
        json!({
            "type": "user",
            "message": {
                "role": "user",
                "content": [{
                    "tool_use_id": call_id,
                    "type": "tool_result",
                    "content": content,
                    "is_error": is_error,
                }],
            },
            "parent_tool_use_id": null,
            "session_id": self.session_id,
            "uuid": uuid(),
        })
    }

    /// Handles one `/event` payload. Events of other sessions are ignored.
    pub fn on_event(&mut self, event: &Value) -> (Vec<Value>, Signal) {
        if event_session(event) != Some(self.session_id.as_str()) {
            return (Vec::new(), Signal::None);
        }
        let mut out = Vec::new();
        let signal = match Event::parse(event) {
            Event::MessageUpdated { id, role, model } => {
                if let Some(id) = id {
                    match role.as_deref() {
                        Some("user") => {
                            self.user_messages.insert(id);
                        }
                        Some("assistant") => {
                            self.busy_seen = true;
                            if let Some((provider, model)) = model {
                                self.model = format!("{provider}/{model}");
                            }
                        }
                        _ => {}
                    }
                }
                Signal::None
            }
            Event::PartUpdated { part } => {
                self.on_part(&part, &mut out);
                Signal::None
            }
            Event::PartDelta {
                field,
                part_id,
                delta,
            } => {
                if field.as_deref() == Some("text")
                    && let (Some(part), Some(delta)) = (part_id, delta)
                    && let Some(entry) = self.pending.get_mut(&part)
                {
                    entry.2.push_str(&delta);
                }
                Signal::None
            }
            Event::SessionStatus(SessionState::Busy) => {
                self.busy_seen = true;
                Signal::None
            }
            Event::SessionStatus(SessionState::Retry(retry)) => {
                self.busy_seen = true;
                out.push(json!({
                    "type": "system",
                    "subtype": "api_retry",
                    "attempt": retry.attempt,
                    "error": retry.message,
                    "next_retry_at_ms": retry.next,
                    "session_id": self.session_id,
                    "uuid": uuid(),
                }));
                Signal::None
            }
            Event::SessionStatus(SessionState::Idle) | Event::SessionIdle => self.idle_signal(),
            Event::SessionError { error } => {
                let error = SessionError::from_value(&error);
                // Keep the first real error: an abort that follows it changes nothing.
                if self.error.as_ref().is_none_or(SessionError::is_abort) {
                    self.error = Some(error);
                }
                Signal::None
            }
            Event::PermissionAsked { id, permission } => Signal::PermissionAsked { id, permission },
            Event::QuestionAsked { id } => Signal::QuestionAsked { id },
            Event::SessionStatus(SessionState::Other) | Event::Other => Signal::None,
        };
        (out, signal)
    }

    fn idle_signal(&self) -> Signal {
        if self.busy_seen || self.error.is_some() {
            Signal::Idle
        } else {
            Signal::None
        }
    }

    fn on_part(&mut self, part: &Value, out: &mut Vec<Value>) {
        let (Some(id), Some(message_id)) = (part["id"].as_str(), part["messageID"].as_str()) else {
            return;
        };
        if self.user_messages.contains(message_id) {
            return;
        }
        match part["type"].as_str().unwrap_or("") {
            kind @ ("text" | "reasoning") => {
                if self.emitted_parts.contains(id)
                    || part["synthetic"] == true
                    || part["ignored"] == true
                {
                    return;
                }
                let kind: &'static str = if kind == "text" { "text" } else { "reasoning" };
                let text = part["text"].as_str().unwrap_or("").to_owned();
                if part["time"]["end"].is_null() {
                    if !self.pending.contains_key(id) {
                        self.pending_order.push(id.to_owned());
                    }
                    self.pending
                        .insert(id.to_owned(), (message_id.to_owned(), kind, text));
                } else {
                    self.pending.remove(id);
                    self.emit_text(id, message_id, kind, &text, out);
                }
            }
            "tool" => self.on_tool(id, message_id, part, out),
            "step-start" => {
                self.busy_seen = true;
                self.step_starts.insert(id.to_owned());
            }
            // Counted once per part: opencode may repeat an update.
            "step-finish" if self.steps.insert(id.to_owned()) => {
                self.cost += part["cost"].as_f64().unwrap_or(0.0);
                let t = &part["tokens"];
                let n = |v: &Value| v.as_f64().map(|f| f.max(0.0) as u64).unwrap_or(0);
                self.usage.input += n(&t["input"]);
                self.usage.output += n(&t["output"]);
                self.usage.cache_read += n(&t["cache"]["read"]);
                self.usage.cache_write += n(&t["cache"]["write"]);
            }
            _ => {}
        }
    }

    fn emit_text(
        &mut self,
        id: &str,
        message_id: &str,
        kind: &'static str,
        text: &str,
        out: &mut Vec<Value>,
    ) {
        self.emitted_parts.insert(id.to_owned());
        if text.is_empty() {
            return;
        }
        if kind == "text" {
            self.texts.push((message_id.to_owned(), text.to_owned()));
            out.push(self.assistant(message_id, json!({"type": "text", "text": text})));
        } else {
            out.push(self.assistant(
                message_id,
                json!({"type": "thinking", "thinking": text, "signature": ""}),
            ));
        }
    }

    fn on_tool(&mut self, id: &str, message_id: &str, part: &Value, out: &mut Vec<Value>) {
        let state = &part["state"];
        let status = state["status"].as_str().unwrap_or("");
        let call_id = part["callID"].as_str().unwrap_or(id).to_owned();
        let name = part["tool"].as_str().unwrap_or("unknown").to_owned();
        let progress = self.tools.entry(id.to_owned()).or_default();
        progress.call_id = call_id.clone();
        let emit_use = !progress.use_emitted && matches!(status, "running" | "completed" | "error");
        let emit_result = !progress.result_emitted && matches!(status, "completed" | "error");
        if emit_use {
            progress.use_emitted = true;
        }
        if emit_result {
            progress.result_emitted = true;
        }
        if emit_use {
            let input = match &state["input"] {
                Value::Null => json!({}),
                v => v.clone(),
            };
            out.push(self.assistant(
                message_id,
                json!({"type": "tool_use", "id": call_id, "name": name, "input": input}),
            ));
        }
        if emit_result {
            let (content, is_error) = if status == "error" {
                (
                    state["error"].as_str().unwrap_or("tool failed").to_owned(),
                    true,
                )
            } else {
                (state["output"].as_str().unwrap_or("").to_owned(), false)
            };
            out.push(self.tool_result(&call_id, &content, is_error));
        }
    }

    /// Text of the last assistant message that had text (Claude's `result`).
    pub fn result_text(&self) -> String {
        let Some((last, _)) = self.texts.last() else {
            return String::new();
        };
        self.texts
            .iter()
            .filter(|(m, _)| m == last)
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join("")
    }

    /// Flushes unfinished parts, then builds the final `result` event and the outcome.
    pub fn finish(&mut self, ending: &Ending) -> (Vec<Value>, TaskOutcome) {
        let mut out = Vec::new();
        for id in std::mem::take(&mut self.pending_order) {
            if let Some((message_id, kind, text)) = self.pending.remove(&id) {
                self.emit_text(&id, &message_id, kind, &text, &mut out);
            }
        }
        let open: Vec<String> = self
            .tools
            .values()
            .filter(|t| t.use_emitted && !t.result_emitted)
            .map(|t| t.call_id.clone())
            .collect();
        for call_id in open {
            out.push(self.tool_result(&call_id, "Tool execution was interrupted", true));
        }

        let turns = self.num_turns();
        let error = self.error.clone();
        // (subtype, is_error, terminal_reason, result text, outcome)
        let (subtype, is_error, reason, text, mut outcome) = match ending {
            Ending::Idle => match &error {
                None => {
                    let text = self.result_text();
                    (
                        "success",
                        false,
                        "completed",
                        text.clone(),
                        TaskOutcome::completed(text),
                    )
                }
                Some(e) if e.is_abort() => (
                    "error_during_execution",
                    true,
                    "aborted",
                    format!("{}: {}", e.name, e.message),
                    TaskOutcome::cancelled("aborted in opencode"),
                ),
                Some(e) if e.name == "APIError" => {
                    let text = match e.status {
                        Some(s) => format!("API Error: {s} {}", e.message),
                        None => format!("API Error: {}", e.message),
                    };
                    let status = e.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
                    (
                        "success",
                        true,
                        "api_error",
                        text,
                        TaskOutcome::failed(
                            FailureKind::User,
                            format!("api_error{status}: {}", e.message),
                        ),
                    )
                }
                Some(e) => {
                    let text = format!("{}: {}", e.name, e.message);
                    (
                        "error_during_execution",
                        true,
                        "error",
                        text.clone(),
                        TaskOutcome::failed(FailureKind::User, text),
                    )
                }
            },
            Ending::Cancelled => (
                "error_during_execution",
                true,
                "aborted",
                "Task cancelled; the opencode session was aborted".to_owned(),
                TaskOutcome::cancelled("cancelled"),
            ),
            Ending::MaxTurns(n) => {
                let text = format!("Reached maximum number of turns ({n})");
                (
                    "error_max_turns",
                    true,
                    "max_turns",
                    text.clone(),
                    TaskOutcome::failed(FailureKind::User, format!("error_max_turns: {text}")),
                )
            }
            Ending::MaxBudget(b) => {
                let text = format!("Reached maximum budget (${b})");
                (
                    "error_max_budget_usd",
                    true,
                    "max_budget",
                    text.clone(),
                    TaskOutcome::failed(FailureKind::User, format!("error_max_budget_usd: {text}")),
                )
            }
            Ending::Broken(why) => (
                "error_during_execution",
                true,
                "error",
                why.clone(),
                TaskOutcome::failed(FailureKind::System, why.clone()),
            ),
        };
        outcome.total_cost_usd = Some(self.cost);
        outcome.num_turns = Some(turns);
        let api_status = match (&error, ending) {
            (Some(e), Ending::Idle) => e.status.map(Value::from).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        out.push(json!({
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "duration_ms": u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "num_turns": turns,
            "result": text,
            "session_id": self.session_id,
            "total_cost_usd": self.cost,
            "usage": {
                "input_tokens": self.usage.input,
                "output_tokens": self.usage.output,
                "cache_read_input_tokens": self.usage.cache_read,
                "cache_creation_input_tokens": self.usage.cache_write,
            },
            "permission_denials": [],
            "terminal_reason": reason,
            "api_error_status": api_status,
            "uuid": uuid(),
        }));
        (out, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentserver_plugin_api::TaskStatus;

    const SID: &str = "ses_1";

    fn ev(kind: &str, properties: Value) -> Value {
        json!({"id": "evt_x", "type": kind, "properties": properties})
    }

    fn part(p: Value) -> Value {
        let mut p = p;
        p["sessionID"] = json!(SID);
        ev(
            "message.part.updated",
            json!({"sessionID": SID, "part": p, "time": 1}),
        )
    }

    fn status(t: &str) -> Value {
        ev(
            "session.status",
            json!({"sessionID": SID, "status": {"type": t}}),
        )
    }

    fn message(id: &str, role: &str) -> Value {
        ev(
            "message.updated",
            json!({"sessionID": SID, "info": {"id": id, "role": role, "sessionID": SID,
                   "providerID": "fake", "modelID": "fake-model"}}),
        )
    }

    fn feed(t: &mut Translator, events: &[Value]) -> (Vec<Value>, Vec<Signal>) {
        let mut out = Vec::new();
        let mut signals = Vec::new();
        for e in events {
            let (o, s) = t.on_event(e);
            out.extend(o);
            signals.push(s);
        }
        (out, signals)
    }

    /// The tool round trip of `opencode-session-sample.txt`, abridged.
    fn tool_round_trip() -> Vec<Value> {
        vec![
            message("msg_u", "user"),
            part(
                json!({"id": "prt_u", "messageID": "msg_u", "type": "text", "text": "TOOL_BASH please"}),
            ),
            status("busy"),
            message("msg_a1", "assistant"),
            part(json!({"id": "prt_s1", "messageID": "msg_a1", "type": "step-start"})),
            part(
                json!({"id": "prt_t", "messageID": "msg_a1", "type": "tool", "tool": "bash",
                        "callID": "call_1", "state": {"status": "pending", "input": {}, "raw": ""}}),
            ),
            part(
                json!({"id": "prt_t", "messageID": "msg_a1", "type": "tool", "tool": "bash",
                        "callID": "call_1", "state": {"status": "running",
                        "input": {"command": "echo hi", "description": "Print hi"}, "time": {"start": 1}}}),
            ),
            part(
                json!({"id": "prt_t", "messageID": "msg_a1", "type": "tool", "tool": "bash",
                        "callID": "call_1", "state": {"status": "completed",
                        "input": {"command": "echo hi", "description": "Print hi"}, "output": "hi\n",
                        "metadata": {}, "title": "echo hi", "time": {"start": 1, "end": 2}}}),
            ),
            part(
                json!({"id": "prt_f1", "messageID": "msg_a1", "type": "step-finish", "reason": "tool-calls",
                        "cost": 0.25, "tokens": {"input": 100, "output": 10, "reasoning": 0,
                        "cache": {"read": 5, "write": 1}}}),
            ),
            message("msg_a2", "assistant"),
            part(
                json!({"id": "prt_x", "messageID": "msg_a2", "type": "text", "text": "", "time": {"start": 3}}),
            ),
            ev(
                "message.part.delta",
                json!({"sessionID": SID, "messageID": "msg_a2", "partID": "prt_x",
                                           "field": "text", "delta": "FAKE_DONE: "}),
            ),
            part(json!({"id": "prt_x", "messageID": "msg_a2", "type": "text",
                        "text": "FAKE_DONE: tool said hi", "time": {"start": 3, "end": 4}})),
            part(
                json!({"id": "prt_f2", "messageID": "msg_a2", "type": "step-finish", "reason": "stop",
                        "cost": 0.5, "tokens": {"input": 100, "output": 10, "reasoning": 0,
                        "cache": {"read": 0, "write": 0}}}),
            ),
            // A repeated update of the same step is not counted twice.
            part(
                json!({"id": "prt_f2", "messageID": "msg_a2", "type": "step-finish", "reason": "stop",
                        "cost": 0.5, "tokens": {"input": 100, "output": 10, "reasoning": 0,
                        "cache": {"read": 0, "write": 0}}}),
            ),
            status("idle"),
            ev("session.idle", json!({"sessionID": SID})),
        ]
    }

    #[test]
    fn tool_round_trip_becomes_claude_events() {
        let mut t = Translator::new(SID, "/w", None);
        let (out, signals) = feed(&mut t, &tool_round_trip());
        assert_eq!(signals.iter().filter(|s| **s == Signal::Idle).count(), 2);
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!(out[0]["type"], "assistant");
        let tool_use = &out[0]["message"]["content"][0];
        assert_eq!(tool_use["type"], "tool_use");
        assert_eq!(tool_use["id"], "call_1");
        assert_eq!(tool_use["name"], "bash");
        assert_eq!(tool_use["input"]["command"], "echo hi");
        assert_eq!(out[0]["message"]["model"], "fake/fake-model");
        assert_eq!(out[1]["type"], "user");
        let result = &out[1]["message"]["content"][0];
        assert_eq!(result["type"], "tool_result");
        assert_eq!(result["tool_use_id"], "call_1");
        assert_eq!(result["content"], "hi\n");
        assert_eq!(result["is_error"], false);
        assert_eq!(
            out[2]["message"]["content"][0]["text"],
            "FAKE_DONE: tool said hi"
        );
        for e in &out {
            assert_eq!(e["session_id"], SID);
            assert_eq!(e["uuid"].as_str().map(str::len), Some(36));
        }

        let (tail, outcome) = t.finish(&Ending::Idle);
        assert_eq!(tail.len(), 1);
        let r = &tail[0];
        assert_eq!(r["type"], "result");
        assert_eq!(r["subtype"], "success");
        assert_eq!(r["is_error"], false);
        assert_eq!(r["num_turns"], 2);
        assert_eq!(r["result"], "FAKE_DONE: tool said hi");
        assert_eq!(r["total_cost_usd"], 0.75);
        assert_eq!(r["usage"]["input_tokens"], 200);
        assert_eq!(r["usage"]["cache_read_input_tokens"], 5);
        assert_eq!(outcome.status, TaskStatus::Completed);
        assert_eq!(outcome.result.as_deref(), Some("FAKE_DONE: tool said hi"));
        assert_eq!(outcome.num_turns, Some(2));
        assert_eq!(outcome.total_cost_usd, Some(0.75));
    }

    #[test]
    fn other_sessions_and_user_parts_are_ignored() {
        let mut t = Translator::new(SID, "/w", None);
        let other = json!({"type": "message.part.updated", "properties": {"sessionID": "ses_2",
            "part": {"id": "p", "messageID": "m", "sessionID": "ses_2", "type": "text", "text": "x",
                     "time": {"start": 1, "end": 2}}}});
        let (out, _) = feed(
            &mut t,
            &[
                other,
                message("msg_u", "user"),
                part(
                    json!({"id": "prt_u", "messageID": "msg_u", "type": "text", "text": "prompt"}),
                ),
            ],
        );
        assert!(out.is_empty());
        // Idle before any work (the fresh session's state) does not end the task.
        assert_eq!(t.on_event(&status("idle")).1, Signal::None);
    }

    #[test]
    fn api_error_fails_the_task_as_a_user_failure() {
        let mut t = Translator::new(SID, "/w", Some("fake/fake-model".into()));
        let err = ev(
            "session.error",
            json!({"sessionID": SID, "error": {"name": "APIError",
            "data": {"message": "fake injected 401", "statusCode": 401, "isRetryable": false}}}),
        );
        let (_, signals) = feed(&mut t, &[err, status("idle")]);
        assert_eq!(signals[1], Signal::Idle);
        let (tail, outcome) = t.finish(&Ending::Idle);
        let r = tail.last().unwrap();
        assert_eq!(r["is_error"], true);
        assert_eq!(r["terminal_reason"], "api_error");
        assert_eq!(r["api_error_status"], 401);
        assert_eq!(r["result"], "API Error: 401 fake injected 401");
        assert_eq!(outcome.status, TaskStatus::Failed);
        assert_eq!(outcome.failure_kind, Some(FailureKind::User));
        assert_eq!(
            outcome.failure_reason.as_deref(),
            Some("api_error (HTTP 401): fake injected 401")
        );
    }

    #[test]
    fn cancel_flushes_partial_text_and_open_tools() {
        let mut t = Translator::new(SID, "/w", None);
        let (out, _) = feed(
            &mut t,
            &[
                status("busy"),
                message("msg_a", "assistant"),
                part(
                    json!({"id": "prt_x", "messageID": "msg_a", "type": "text", "text": "", "time": {"start": 1}}),
                ),
                ev(
                    "message.part.delta",
                    json!({"sessionID": SID, "messageID": "msg_a", "partID": "prt_x",
                                           "field": "text", "delta": "half"}),
                ),
                part(
                    json!({"id": "prt_t", "messageID": "msg_a", "type": "tool", "tool": "bash",
                        "callID": "c", "state": {"status": "running", "input": {"command": "sleep 9"}}}),
                ),
                ev(
                    "session.error",
                    json!({"sessionID": SID, "error": {"name": "MessageAbortedError",
                                      "data": {"message": "Aborted"}}}),
                ),
            ],
        );
        assert_eq!(out.len(), 1, "tool_use only");
        let (tail, outcome) = t.finish(&Ending::Cancelled);
        let kinds: Vec<_> = tail.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["assistant", "user", "result"]);
        assert_eq!(tail[0]["message"]["content"][0]["text"], "half");
        assert_eq!(tail[1]["message"]["content"][0]["is_error"], true);
        assert_eq!(tail[2]["subtype"], "error_during_execution");
        assert_eq!(outcome.status, TaskStatus::Cancelled);
    }

    #[test]
    fn abort_from_elsewhere_is_a_cancellation_and_retries_are_reported() {
        let mut t = Translator::new(SID, "/w", None);
        let retry = ev(
            "session.status",
            json!({"sessionID": SID, "status": {"type": "retry",
            "attempt": 1, "message": "overloaded", "next": 5}}),
        );
        let (out, _) = feed(
            &mut t,
            &[
                retry,
                ev(
                    "session.error",
                    json!({"sessionID": SID, "error": {"name": "MessageAbortedError",
                                      "data": {"message": "Aborted"}}}),
                ),
                status("idle"),
            ],
        );
        assert_eq!(out[0]["subtype"], "api_retry");
        assert_eq!(out[0]["attempt"], 1);
        let (_, outcome) = t.finish(&Ending::Idle);
        assert_eq!(outcome.status, TaskStatus::Cancelled);
    }

    #[test]
    fn limits_and_broken_servers() {
        let mut t = Translator::new(SID, "/w", None);
        let (tail, outcome) = t.finish(&Ending::MaxTurns(1));
        assert_eq!(tail[0]["subtype"], "error_max_turns");
        assert_eq!(
            outcome.failure_reason.as_deref(),
            Some("error_max_turns: Reached maximum number of turns (1)")
        );
        let (_, outcome) = t.finish(&Ending::Broken("opencode went away".into()));
        assert_eq!(outcome.failure_kind, Some(FailureKind::System));
    }

    #[test]
    fn permission_and_question_requests_are_signalled() {
        let mut t = Translator::new(SID, "/w", None);
        let (_, s) = t.on_event(&ev(
            "permission.asked",
            json!({"id": "per_1", "sessionID": SID,
            "permission": "external_directory", "patterns": [], "metadata": {}, "always": []}),
        ));
        assert_eq!(
            s,
            Signal::PermissionAsked {
                id: "per_1".into(),
                permission: "external_directory".into()
            }
        );
        let (_, s) = t.on_event(&ev(
            "question.asked",
            json!({"id": "que_1", "sessionID": SID, "questions": []}),
        ));
        assert_eq!(s, Signal::QuestionAsked { id: "que_1".into() });
    }
}
