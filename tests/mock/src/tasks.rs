//! Tasks (spec §8, §14): create, poll (atomic assignment), status updates, details.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::bridge;
use crate::server::{http_error, sandbox_auth, sandbox_auth_json, workspace_target};
use crate::state::{MockState, NewTask, StatusUpdate, TaskRecord};

/// Most tasks one poll hands out.
pub const POLL_BATCH: usize = 5;

impl MockState {
    /// Creates a pending task for sandbox `target_id` (as `POST /api/agent/tasks` would) and
    /// returns its id. With the bridge enabled the task gets a bridge session (`cse_<uuid>`).
    pub fn create_task(&self, target_id: &str, prompt: &str) -> String {
        self.create_task_with(NewTask {
            target_id: target_id.to_string(),
            prompt: prompt.to_string(),
            ..NewTask::default()
        })
    }

    /// Like [`MockState::create_task`] with every field of the request.
    pub fn create_task_with(&self, new: NewTask) -> String {
        let workspace_id = self
            .sandbox(&new.target_id)
            .map(|s| s.workspace_id)
            .unwrap_or_else(|| self.default_workspace_id());
        self.insert_task(new, workspace_id).id
    }

    fn insert_task(&self, new: NewTask, workspace_id: String) -> TaskRecord {
        let id = format!("task_{}", uuid::Uuid::new_v4());
        let session_id = self.config().bridge_enabled.then(|| {
            bridge::create_session(self, &new.target_id, &workspace_id, &format!("Task {id}"))
        });
        let task = TaskRecord {
            id,
            workspace_id,
            requester_id: new.requester_id.filter(|r| !r.is_empty()),
            target_id: new.target_id,
            prompt: new.prompt,
            skill: new.skill.filter(|s| !s.is_empty()),
            system_context: new.system_context,
            max_turns: new.max_turns,
            max_budget_usd: new.max_budget_usd,
            timeout_seconds: if new.timeout_seconds > 0 {
                new.timeout_seconds
            } else {
                300
            },
            delegation_chain: new.delegation_chain,
            status: "pending".into(),
            session_id,
            num_turns: None,
            total_cost_usd: None,
            result: None,
            failure_reason: None,
            created_at: Utc::now(),
            assigned_at: None,
            completed_at: None,
            status_updates: Vec::new(),
        };
        self.inner().tasks.push(task.clone());
        self.notify();
        task
    }

    /// The task with this id.
    pub fn task(&self, id: &str) -> Option<TaskRecord> {
        self.inner().tasks.iter().find(|t| t.id == id).cloned()
    }

    /// Every task, oldest first.
    pub fn tasks(&self) -> Vec<TaskRecord> {
        self.inner().tasks.clone()
    }

    /// Waits until task `id` has a final status (`completed`, `failed`, `cancelled`) or
    /// `timeout` passes; returns the task as it then is.
    pub async fn wait_task_final(
        &self,
        id: &str,
        timeout: std::time::Duration,
    ) -> Option<TaskRecord> {
        self.wait_until(timeout, |s| {
            s.task(id)
                .is_some_and(|t| crate::state::is_final_status(&t.status))
        })
        .await;
        self.task(id)
    }

    /// Sets a task's status directly (e.g. `cancelled` by a user), without recording an update.
    pub fn set_task_status(&self, id: &str, status: &str) {
        if let Some(t) = self.inner().tasks.iter_mut().find(|t| t.id == id) {
            t.status = status.to_string();
        }
        self.notify();
    }
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(default)]
    target_id: String,
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    skill: Option<String>,
    #[serde(default)]
    system_context: Option<String>,
    #[serde(default)]
    max_turns: Option<i64>,
    #[serde(default)]
    max_budget_usd: Option<f64>,
    #[serde(default)]
    timeout_seconds: Option<i64>,
    #[serde(default)]
    delegation_chain: Option<Vec<String>>,
    #[serde(default)]
    requester_id: Option<String>,
}

/// `POST /api/agent/tasks` → 201 `{"task_id","session_id","status":"pending"}`.
pub(crate) async fn create(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (requester, req) = match sandbox_auth_json::<CreateBody>(&state, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if req.target_id.is_empty() || req.prompt.is_empty() {
        return http_error(StatusCode::BAD_REQUEST, "target_id and prompt required");
    }
    let target = match workspace_target(&state, &requester, &req.target_id) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let task = state.insert_task(
        NewTask {
            target_id: target.id,
            prompt: req.prompt,
            skill: req.skill,
            system_context: req.system_context.unwrap_or_default(),
            max_turns: req.max_turns.unwrap_or(0),
            max_budget_usd: req.max_budget_usd.unwrap_or(0.0),
            timeout_seconds: req.timeout_seconds.unwrap_or(0),
            delegation_chain: req.delegation_chain.unwrap_or_default(),
            requester_id: req
                .requester_id
                .filter(|r| !r.is_empty())
                .or(Some(requester.id)),
        },
        target.workspace_id,
    );
    (
        StatusCode::CREATED,
        Json(json!({
            "task_id": task.id,
            "session_id": task.session_id.unwrap_or_default(),
            "status": task.status,
        })),
    )
        .into_response()
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `GET /api/agent/tasks/poll?sandbox_id=` → 200 array of up to 5 tasks, now `assigned`.
pub(crate) async fn poll(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let (sandbox, _) = match sandbox_auth(&state, &headers) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Some(id) = query_param(query.as_deref(), "sandbox_id").filter(|s| !s.is_empty())
        && id != sandbox.id
    {
        return http_error(StatusCode::FORBIDDEN, "forbidden");
    }
    let now = Utc::now();
    let (overrides, injections) = {
        let mut faults = crate::state::lock(&state.faults);
        let injections: Vec<Value> = faults
            .poll_injections
            .extract_if(.., |(sb, _)| *sb == sandbox.id)
            .map(|(_, item)| item)
            .collect();
        (std::mem::take(&mut faults.poll_overrides), injections)
    };
    let mut unused_overrides = Vec::new();
    let mut items: Vec<Value> = {
        let mut inner = state.inner();
        inner
            .tasks
            .iter_mut()
            .filter(|t| t.target_id == sandbox.id && t.status == "pending")
            .take(POLL_BATCH)
            .map(|t| {
                t.status = "assigned".into();
                t.assigned_at = Some(now);
                let mut item = json!({
                    "task_id": t.id,
                    "prompt": t.prompt,
                    "system_context": t.system_context,
                    "max_turns": t.max_turns,
                    "max_budget_usd": t.max_budget_usd,
                });
                if let Some(sid) = &t.session_id {
                    item["session_id"] = json!(sid);
                }
                for (id, fields) in &overrides {
                    if *id == t.id
                        && let (Some(item), Some(fields)) =
                            (item.as_object_mut(), fields.as_object())
                    {
                        item.extend(fields.clone());
                    }
                }
                item
            })
            .collect()
    };
    for (id, fields) in overrides {
        if !items.iter().any(|i| i["task_id"] == json!(id)) {
            unused_overrides.push((id, fields));
        }
    }
    crate::state::lock(&state.faults)
        .poll_overrides
        .extend(unused_overrides);
    items.extend(injections);
    state.notify();
    Json(Value::Array(items)).into_response()
}

/// `GET /api/agent/tasks/{id}[?include_output=true]` → 200 task detail; 404 `task not found`.
pub(crate) async fn get(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let (sandbox, _) = match sandbox_auth(&state, &headers) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(task) = state
        .task(&id)
        .filter(|t| t.workspace_id == sandbox.workspace_id)
    else {
        return http_error(StatusCode::NOT_FOUND, "task not found");
    };
    let include_output = query_param(query.as_deref(), "include_output").as_deref() == Some("true");
    let mut detail = Map::new();
    detail.insert("task_id".into(), json!(task.id));
    detail.insert("workspace_id".into(), json!(task.workspace_id));
    if let Some(r) = &task.requester_id {
        detail.insert("requester_id".into(), json!(r));
    }
    detail.insert("target_id".into(), json!(task.target_id));
    detail.insert("prompt".into(), json!(task.prompt));
    detail.insert("status".into(), json!(task.status));
    if let Some(s) = &task.skill {
        detail.insert("skill".into(), json!(s));
    }
    if let Some(s) = &task.session_id {
        detail.insert("session_id".into(), json!(s));
    }
    if let Some(n) = task.num_turns {
        detail.insert("num_turns".into(), json!(n));
    }
    if let Some(c) = task.total_cost_usd {
        detail.insert("total_cost_usd".into(), json!(c));
    }
    if let Some(r) = &task.result {
        detail.insert("result".into(), r.clone());
    }
    if let Some(f) = &task.failure_reason {
        detail.insert("failure_reason".into(), json!(f));
    }
    if include_output {
        let output = task
            .session_id
            .as_deref()
            .map(|sid| bridge::session_output(&state, sid))
            .unwrap_or_default();
        if !output.is_empty() {
            detail.insert("output".into(), json!(output));
        }
    }
    detail.insert("created_at".into(), json!(task.created_at));
    if let Some(c) = task.completed_at {
        detail.insert("completed_at".into(), json!(c));
    }
    Json(Value::Object(detail)).into_response()
}

#[derive(Deserialize)]
struct StatusBody {
    #[serde(default)]
    status: String,
    #[serde(default)]
    failure_reason: Option<String>,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    total_cost_usd: Option<f64>,
    #[serde(default)]
    num_turns: Option<i64>,
}

/// `PUT /api/agent/tasks/{id}/status` → 200 empty; 400 `invalid status`; 404; 403.
pub(crate) async fn update_status(
    State(state): State<Arc<MockState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (sandbox, _) = match sandbox_auth(&state, &headers) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(task) = state.task(&id) else {
        return http_error(StatusCode::NOT_FOUND, "task not found");
    };
    if task.target_id != sandbox.id {
        return http_error(StatusCode::FORBIDDEN, "forbidden");
    }
    if crate::state::lock(&state.faults)
        .status_body_limit
        .is_some_and(|limit| body.len() > limit)
    {
        return http_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    }
    let Ok(raw) = serde_json::from_slice::<Value>(&body) else {
        return http_error(StatusCode::BAD_REQUEST, "bad request");
    };
    let Ok(req) = serde_json::from_value::<StatusBody>(raw.clone()) else {
        return http_error(StatusCode::BAD_REQUEST, "bad request");
    };
    if !matches!(
        req.status.as_str(),
        "running" | "completed" | "failed" | "cancelled"
    ) {
        return http_error(StatusCode::BAD_REQUEST, "invalid status");
    }
    let now = Utc::now();
    tracing::info!(
        target: crate::TASK_LOG_TARGET,
        task = %id,
        status = %req.status,
        failure_reason = req.failure_reason.as_deref().unwrap_or(""),
        num_turns = req.num_turns,
        "status {}{}",
        req.status,
        req.result
            .as_ref()
            .map(|r| format!(" result {}", crate::log_excerpt(&r.to_string())))
            .unwrap_or_default()
    );
    {
        let mut inner = state.inner();
        if let Some(t) = inner.tasks.iter_mut().find(|t| t.id == id) {
            t.status_updates.push(StatusUpdate {
                status: req.status.clone(),
                body: raw,
                at: now,
            });
            t.status = req.status.clone();
            match req.status.as_str() {
                "failed" => {
                    if let Some(reason) = req.failure_reason.filter(|r| !r.is_empty()) {
                        t.failure_reason = Some(reason);
                    }
                    t.completed_at = Some(now);
                }
                "completed" => {
                    let has_result = match &req.result {
                        None | Some(Value::Null) => false,
                        Some(Value::String(s)) => !s.is_empty(),
                        Some(_) => true,
                    };
                    if has_result {
                        t.result = req.result;
                        t.total_cost_usd = req.total_cost_usd;
                        t.num_turns = req.num_turns;
                    }
                    t.completed_at = Some(now);
                }
                "cancelled" => t.completed_at = Some(now),
                _ => {}
            }
        }
    }
    state.notify();
    StatusCode::OK.into_response()
}
