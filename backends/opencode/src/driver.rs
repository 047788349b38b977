//! Running one task through opencode's HTTP API: subscribe to `/event`, create a session in
//! the task's directory, send the prompt, translate the session's events until it goes idle,
//! abort it on cancellation.

use std::time::Duration;

use agentserver_plugin_api::{
    CancellationToken, EventSink, FailureKind, Task, TaskEvent, TaskOutcome,
};
use futures_util::StreamExt;
use serde_json::{Value, json};
use url::Url;

use crate::api::Api;
use crate::config::{OpencodeConfig, PermissionPolicy};
use crate::sse::SseDecoder;
use crate::translate::{Ending, Signal, Translator};

/// opencode's `/event` response body.
type EventStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>;

/// How a task ends when the event stream fails (`Some(error)`) or ends (`None`) before the
/// session went idle.
fn stream_broken(error: Option<reqwest::Error>) -> Ending {
    match error {
        Some(e) => Ending::Broken(format!("opencode event stream failed: {e}")),
        None => Ending::Broken(
            "opencode event stream ended before the session went idle (did opencode stop?)"
                .to_owned(),
        ),
    }
}

/// How long to wait for the first event (`server.connected`) of the `/event` stream.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything a task run needs.
pub(crate) struct Run<'a> {
    pub api: &'a Api,
    pub config: &'a OpencodeConfig,
    pub base: &'a Url,
    pub version: &'a str,
}

async fn emit(events: &EventSink, value: &Value) {
    match TaskEvent::from_value(value) {
        Ok(ev) => {
            if !events.emit(ev).await {
                tracing::debug!("the host no longer listens to this task's events");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not serialise a task event"),
    }
}

fn permission_mode(policy: PermissionPolicy) -> &'static str {
    match policy {
        PermissionPolicy::Approve => "bypassPermissions",
        PermissionPolicy::Reject => "dontAsk",
        PermissionPolicy::Ignore => "default",
    }
}

/// The body of `POST /session/{id}/prompt_async` for `task`.
pub fn prompt_body(task: &Task, config: &OpencodeConfig) -> Value {
    let mut body = json!({ "parts": [{ "type": "text", "text": task.prompt }] });
    if !task.system_context.is_empty() {
        body["system"] = json!(task.system_context);
    }
    if let Some((provider, model)) = config.model_ref() {
        body["model"] = json!({ "providerID": provider, "modelID": model });
    }
    if let Some(agent) = &config.agent {
        body["agent"] = json!(agent);
    }
    body
}

impl Run<'_> {
    /// Runs `task` to its end.
    pub async fn execute(
        &self,
        task: Task,
        events: EventSink,
        cancel: CancellationToken,
    ) -> TaskOutcome {
        let directory = if task.workdir.is_empty() {
            self.config.workdir.display().to_string()
        } else {
            task.workdir.clone()
        };
        let system = |what: String| TaskOutcome::failed(FailureKind::System, what);

        // 1. Subscribe first, so that no event of the session can be missed.
        let (mut stream, mut decoder, backlog) = match self.subscribe(&directory, &cancel).await {
            Ok(subscribed) => subscribed,
            Err(outcome) => return outcome,
        };

        // 2. A session in the task's directory.
        let title = format!("agentserver task {}", task.task_id);
        let session = match self
            .api
            .create_session(self.base, &directory, &title, self.config.api_timeout)
            .await
        {
            Ok(id) => id,
            Err(e) => return system(format!("opencode: {e}")),
        };
        tracing::info!(task = %task.task_id, session = %session, %directory, "opencode session created");
        let model = self.config.model.clone();
        let mut tr = Translator::new(session.clone(), directory.clone(), model);
        emit(
            &events,
            &tr.init_event(self.version, permission_mode(self.config.permissions)),
        )
        .await;

        // 3. The prompt, with the task's system context.
        let body = prompt_body(&task, self.config);
        if let Err(e) = self
            .api
            .prompt_async(
                self.base,
                &session,
                &directory,
                &body,
                self.config.api_timeout,
            )
            .await
        {
            let (tail, outcome) = tr.finish(&Ending::Broken(format!("opencode: {e}")));
            for v in &tail {
                emit(&events, v).await;
            }
            return outcome;
        }

        // 4. Follow the session until it is idle.
        let mut aborting: Option<Ending> = None;
        let abort_deadline = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(abort_deadline);
        let mut pending = backlog;
        let ending = 'outer: loop {
            for data in std::mem::take(&mut pending) {
                let Ok(event) = serde_json::from_str::<Value>(&data) else {
                    tracing::debug!(%data, "ignoring an /event payload that is not JSON");
                    continue;
                };
                let (out, signal) = tr.on_event(&event);
                for v in &out {
                    emit(&events, v).await;
                }
                if signal == Signal::Idle {
                    break 'outer aborting.clone().unwrap_or(Ending::Idle);
                }
                self.answer(signal, &session, &directory).await;
                if aborting.is_none()
                    && let Some(limit) = self.limit_reached(&task, &tr)
                {
                    tracing::info!(%session, ?limit, "task limit reached; aborting the opencode session");
                    self.abort(&session, &directory).await;
                    aborting = Some(limit);
                    abort_deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.config.abort_timeout);
                }
            }
            tokio::select! {
                chunk = stream.next() => match chunk {
                    Some(Ok(bytes)) => pending = decoder.push(&bytes),
                    end => break aborting.clone().unwrap_or_else(|| stream_broken(end.and_then(Result::err))),
                },
                _ = cancel.cancelled(), if aborting.is_none() => {
                    tracing::info!(task = %task.task_id, %session, "task cancelled; aborting the opencode session");
                    self.abort(&session, &directory).await;
                    aborting = Some(Ending::Cancelled);
                    abort_deadline.as_mut().reset(tokio::time::Instant::now() + self.config.abort_timeout);
                }
                _ = &mut abort_deadline, if aborting.is_some() => {
                    tracing::warn!(%session, "opencode did not report the aborted session idle in time");
                    break aborting.clone().unwrap_or(Ending::Cancelled);
                }
            }
        };
        if matches!(ending, Ending::Broken(_)) {
            // Best effort: do not leave the session running on a server that is still there.
            self.abort(&session, &directory).await;
        }
        let (tail, outcome) = tr.finish(&ending);
        for v in &tail {
            emit(&events, v).await;
        }
        tracing::info!(task = %task.task_id, %session, status = ?outcome.status, "opencode task finished");
        outcome
    }

    /// Opens the `/event` stream in `directory` and waits (bounded) for its first event, so
    /// that nothing of the session to come can be missed. Returns the stream, its decoder and
    /// the payloads already read; or the outcome when that fails or the task is cancelled.
    async fn subscribe(
        &self,
        directory: &str,
        cancel: &CancellationToken,
    ) -> Result<(EventStream, SseDecoder, Vec<String>), TaskOutcome> {
        let system = |what: String| TaskOutcome::failed(FailureKind::System, what);
        let response = tokio::select! {
            r = self.api.events(self.base, directory) => r.map_err(|e| system(format!("opencode: {e}")))?,
            _ = cancel.cancelled() => return Err(TaskOutcome::cancelled("cancelled before start")),
        };
        let mut stream: EventStream = Box::pin(response.bytes_stream());
        let mut decoder = SseDecoder::new();
        let mut backlog: Vec<String> = Vec::new();
        let first = tokio::time::timeout(SUBSCRIBE_TIMEOUT, async {
            while backlog.is_empty() {
                match stream.next().await {
                    Some(Ok(bytes)) => backlog.extend(decoder.push(&bytes)),
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the stream ended".to_owned()),
                }
            }
            Ok(())
        });
        let subscribed = tokio::select! {
            r = first => r.unwrap_or_else(|_| Err(format!("no event within {SUBSCRIBE_TIMEOUT:?}"))),
            _ = cancel.cancelled() => return Err(TaskOutcome::cancelled("cancelled before start")),
        };
        subscribed.map_err(|e| system(format!("opencode: GET /event: {e}")))?;
        Ok((stream, decoder, backlog))
    }

    /// Answers what opencode asked for: a permission by the policy; a question is rejected
    /// (nobody can answer a task's questions).
    async fn answer(&self, signal: Signal, session: &str, directory: &str) {
        match signal {
            Signal::PermissionAsked { id, permission } => {
                self.answer_permission(&id, &permission, directory).await;
            }
            Signal::QuestionAsked { id } => {
                tracing::info!(%session, %id, "opencode asked a question; a task cannot answer, rejecting it");
                if let Err(e) = self
                    .api
                    .reject_question(self.base, &id, directory, self.config.api_timeout)
                    .await
                {
                    tracing::warn!(error = %e, "could not reject opencode's question");
                }
            }
            Signal::Idle | Signal::None => {}
        }
    }

    fn limit_reached(&self, task: &Task, tr: &Translator) -> Option<Ending> {
        if task.max_turns > 0 && tr.steps_started() > task.max_turns {
            return Some(Ending::MaxTurns(task.max_turns));
        }
        if task.max_budget_usd > 0.0 && tr.cost() > task.max_budget_usd {
            return Some(Ending::MaxBudget(task.max_budget_usd));
        }
        None
    }

    async fn abort(&self, session: &str, directory: &str) {
        let timeout = self.config.api_timeout.min(Duration::from_secs(10));
        if let Err(e) = self.api.abort(self.base, session, directory, timeout).await {
            tracing::warn!(%session, error = %e, "could not abort the opencode session");
        }
    }

    async fn answer_permission(&self, id: &str, permission: &str, directory: &str) {
        let reply = match self.config.permissions {
            PermissionPolicy::Approve => "once",
            PermissionPolicy::Reject => "reject",
            PermissionPolicy::Ignore => {
                tracing::info!(%id, %permission, "opencode asks for a permission; leaving it unanswered");
                return;
            }
        };
        tracing::info!(%id, %permission, %reply, "answering opencode's permission request");
        if let Err(e) = self
            .api
            .reply_permission(self.base, id, directory, reply, self.config.api_timeout)
            .await
        {
            tracing::warn!(error = %e, "could not answer opencode's permission request");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_carries_system_context_and_model() {
        let task = Task {
            prompt: "do it".into(),
            system_context: "be brief".into(),
            ..Task::default()
        };
        let config = OpencodeConfig {
            model: Some("fake/fake-model".into()),
            ..OpencodeConfig::default()
        };
        let body = prompt_body(&task, &config);
        assert_eq!(body["parts"][0]["text"], "do it");
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["model"]["providerID"], "fake");
        assert_eq!(body["model"]["modelID"], "fake-model");
        let bare = prompt_body(
            &Task {
                prompt: "x".into(),
                ..Task::default()
            },
            &OpencodeConfig::default(),
        );
        assert!(bare.get("system").is_none());
        assert!(bare.get("model").is_none());
    }
}
