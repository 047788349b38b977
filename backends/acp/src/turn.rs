//! One task as one ACP prompt turn: `session/new` in the task's workspace, `session/prompt`,
//! every `session/update` forwarded raw as a task event, a final `result` event, and the
//! outcome from the `stopReason`. Cancellation follows the ACP rule: `session/cancel`, every
//! permission request answered `cancelled` from then on, a bounded wait for the turn to end
//! with `cancelled`, and only then (if it did not) the agent's process group is stopped.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use agent_client_protocol::v1::schema::StopReason;
use agentserver_plugin_api::{
    CancellationToken, EventSink, FailureKind, Task, TaskEvent, TaskOutcome, TaskStatus,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use agentserver_common::process::Scope;

use crate::agent::{AgentProcess, describe};
use crate::config::AcpConfig;
use crate::sessions::SessionCtx;
use crate::spare::Spare;
use crate::workspace::Workspace;

/// The agent's final text: the text chunks of its last message (by `messageId` when the
/// agent sends one, else the chunks after the last non-message update).
#[derive(Default)]
pub struct FinalText {
    text: String,
    message_id: Option<String>,
    interrupted: bool,
}

impl FinalText {
    /// Takes one `session/update` line into account.
    pub fn observe(&mut self, line: &str) {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            return;
        };
        let update = &message["params"]["update"];
        match update["sessionUpdate"].as_str() {
            Some("agent_message_chunk") => {
                let id = update["messageId"].as_str().map(str::to_owned);
                if self.interrupted || (id.is_some() && id != self.message_id) {
                    self.text.clear();
                }
                self.interrupted = false;
                self.message_id = id;
                if update["content"]["type"] == "text"
                    && let Some(text) = update["content"]["text"].as_str()
                {
                    self.text.push_str(text);
                }
            }
            Some("tool_call" | "tool_call_update" | "plan") => self.interrupted = true,
            _ => {}
        }
    }

    /// The text so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Runs `task` on `agent`, in a session made ahead of time in its workspace when `spare`
/// has one.
pub async fn run(
    agent: &Arc<AgentProcess>,
    config: &AcpConfig,
    spare: &Spare,
    task: Task,
    events: EventSink,
    cancel: CancellationToken,
) -> TaskOutcome {
    let dir = if task.workdir.is_empty() {
        config.workdir.clone()
    } else {
        PathBuf::from(&task.workdir)
    };
    let workspace = match Workspace::new(&dir) {
        Ok(ws) => ws,
        Err(e) => {
            return TaskOutcome::failed(
                FailureKind::System,
                format!("the task's workspace {} is unusable: {e}", dir.display()),
            );
        }
    };
    let session_id = tokio::select! {
        result = async {
            match spare.take(agent, workspace.root()).await {
                Some(id) => Ok(id),
                None => agent.new_session(workspace.root(), config.session_timeout).await,
            }
        } => match result {
            Ok(id) => id,
            Err(e) => return TaskOutcome::failed(FailureKind::System, e.to_string()),
        },
        () = cancel.cancelled() => return TaskOutcome::cancelled("cancelled before the ACP session started"),
    };
    let _counted = agent.task_started();
    let scope = Scope::task(&task.task_id);
    let ctx = Arc::new(SessionCtx {
        workspace,
        cancelling: AtomicBool::new(false),
        scope: scope.clone(),
    });
    let mut updates = agent.sessions.claim(&session_id, ctx.clone());
    let outcome = Turn {
        agent,
        config,
        session_id: &session_id,
        events: &events,
    }
    .drive(&task, &ctx, &mut updates, cancel)
    .await;
    agent.sessions.release(&session_id);
    // Every terminal command of the task is stopped and awaited; then whatever it left
    // (outside its group too) is swept.
    agent.terminals.release_session(&session_id).await;
    let _ = tokio::task::spawn_blocking(move || scope.sweep()).await;
    outcome
}

struct Turn<'a> {
    agent: &'a Arc<AgentProcess>,
    config: &'a AcpConfig,
    session_id: &'a str,
    events: &'a EventSink,
}

impl Turn<'_> {
    async fn drive(
        &self,
        task: &Task,
        ctx: &SessionCtx,
        updates: &mut tokio::sync::mpsc::Receiver<String>,
        cancel: CancellationToken,
    ) -> TaskOutcome {
        let mut blocks = Vec::new();
        if !task.system_context.is_empty() {
            blocks.push(task.system_context.clone());
        }
        blocks.push(task.prompt.clone());
        let prompt = self.agent.prompt(self.session_id, blocks);
        tokio::pin!(prompt);
        let mut text = FinalText::default();
        let mut cancel_deadline: Option<Instant> = None;
        let idle = self.config.idle_timeout;
        let mut last_heard = Instant::now();
        let far = || Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600);

        let answer = loop {
            let idle_at = idle.map_or_else(far, |d| last_heard + d);
            tokio::select! {
                biased;
                Some(line) = updates.recv() => {
                    last_heard = Instant::now();
                    text.observe(&line);
                    self.forward(&line).await;
                }
                answer = &mut prompt => {
                    while let Ok(line) = updates.try_recv() {
                        text.observe(&line);
                        self.forward(&line).await;
                    }
                    break answer;
                }
                () = cancel.cancelled(), if cancel_deadline.is_none() => {
                    tracing::info!(session = self.session_id, "cancelling the ACP turn");
                    ctx.cancelling.store(true, Ordering::Release);
                    self.agent.cancel(self.session_id);
                    cancel_deadline = Some(Instant::now() + self.config.cancel_timeout);
                }
                () = tokio::time::sleep_until(cancel_deadline.unwrap_or_else(far)), if cancel_deadline.is_some() => {
                    self.agent.stop().await;
                    let reason = format!(
                        "cancelled; the ACP agent did not end the turn within {}s of session/cancel, so its process group was stopped",
                        self.config.cancel_timeout.as_secs_f32()
                    );
                    return self.finish(TaskOutcome::cancelled(reason), None, "").await;
                }
                () = self.agent.died() => {
                    while let Ok(line) = updates.try_recv() {
                        self.forward(&line).await;
                    }
                    let reason = self.agent.failure_reason().await.unwrap_or_default();
                    return self.finish(agent_failed(reason, cancel_deadline.is_some()), None, "").await;
                }
                () = tokio::time::sleep_until(idle_at) => {
                    self.agent.stop().await;
                    let reason = format!(
                        "the ACP agent sent nothing for {}s during the turn; it was stopped",
                        idle.unwrap_or_default().as_secs()
                    );
                    return self.finish(TaskOutcome::failed(FailureKind::System, reason), None, "").await;
                }
            }
        };
        let stop_reason = match &answer {
            Ok(r) => serde_json::to_value(r.stop_reason).ok(),
            Err(_) => None,
        };
        let outcome = match answer {
            Ok(response) => outcome_of(response.stop_reason, text.text()),
            Err(_) if self.agent.is_dead() => {
                let reason = self.agent.failure_reason().await.unwrap_or_default();
                agent_failed(reason, cancel_deadline.is_some())
            }
            Err(err) => TaskOutcome::failed(
                FailureKind::User,
                format!(
                    "the ACP agent answered session/prompt with an error: {}",
                    describe(&err)
                ),
            ),
        };
        self.finish(outcome, stop_reason, text.text()).await
    }

    async fn forward(&self, line: &str) {
        match TaskEvent::from_json(line) {
            Ok(event) => {
                self.events.emit(event).await;
            }
            Err(e) => tracing::warn!(error = %e, "an ACP update that is not JSON was dropped"),
        }
    }

    /// Emits the final `result` event and returns the outcome.
    async fn finish(
        &self,
        outcome: TaskOutcome,
        stop_reason: Option<Value>,
        text: &str,
    ) -> TaskOutcome {
        let (subtype, is_error) = match outcome.status {
            TaskStatus::Completed => ("success", false),
            TaskStatus::Failed => ("error", true),
            TaskStatus::Cancelled => ("cancelled", true),
        };
        let event = json!({
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "backend": crate::BACKEND_NAME,
            "session_id": self.session_id,
            "stop_reason": stop_reason,
            "result": text,
            "error": outcome.failure_reason,
        });
        if let Ok(event) = TaskEvent::from_value(&event) {
            self.events.emit(event).await;
        }
        outcome
    }
}

fn agent_failed(reason: String, cancelling: bool) -> TaskOutcome {
    if cancelling {
        TaskOutcome::cancelled(format!("cancelled; the ACP agent died meanwhile: {reason}"))
    } else {
        TaskOutcome::failed(FailureKind::System, reason)
    }
}

/// The outcome a `stopReason` means.
pub fn outcome_of(stop_reason: StopReason, text: &str) -> TaskOutcome {
    match stop_reason {
        StopReason::EndTurn => TaskOutcome::completed(text),
        StopReason::Cancelled => TaskOutcome::cancelled("cancelled (stopReason: cancelled)"),
        StopReason::MaxTokens => {
            TaskOutcome::failed(FailureKind::User, "the agent stopped: max_tokens")
        }
        StopReason::MaxTurnRequests => {
            TaskOutcome::failed(FailureKind::User, "the agent stopped: max_turn_requests")
        }
        StopReason::Refusal => TaskOutcome::failed(FailureKind::User, "the agent stopped: refusal"),
        other => TaskOutcome::failed(FailureKind::User, format!("the agent stopped: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: Option<&str>, text: &str) -> String {
        let mut update = json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": text}});
        if let Some(id) = id {
            update["messageId"] = json!(id);
        }
        json!({"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "s", "update": update}}).to_string()
    }

    #[test]
    fn final_text_is_the_last_message() {
        let mut t = FinalText::default();
        t.observe(&chunk(None, "Let me look. "));
        t.observe(r#"{"params":{"update":{"sessionUpdate":"tool_call"}}}"#);
        t.observe(&chunk(None, "Done"));
        t.observe(&chunk(None, "!"));
        assert_eq!(t.text(), "Done!");
        t.observe(&chunk(Some("m2"), "Other"));
        assert_eq!(t.text(), "Other");
        t.observe(&chunk(Some("m2"), " message"));
        assert_eq!(t.text(), "Other message");
    }

    #[test]
    fn stop_reasons_map_to_outcomes() {
        assert_eq!(
            outcome_of(StopReason::EndTurn, "hi"),
            TaskOutcome::completed("hi")
        );
        assert_eq!(
            outcome_of(StopReason::Cancelled, "").status,
            TaskStatus::Cancelled
        );
        for (reason, word) in [
            (StopReason::MaxTokens, "max_tokens"),
            (StopReason::MaxTurnRequests, "max_turn_requests"),
            (StopReason::Refusal, "refusal"),
        ] {
            let o = outcome_of(reason, "");
            assert_eq!(o.status, TaskStatus::Failed);
            assert!(o.failure_reason.unwrap().contains(word));
        }
    }
}
