//! A small unauthenticated control API under `/_mock/` for people driving the mock by hand
//! (`agentserver dev-server`): list sandboxes and tasks, create a task, read a task's events,
//! cancel a task. Not part of the agentserver protocol, and never affected by fault switches.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /_mock/sandboxes` | every registered sandbox |
//! | `GET /_mock/tasks` | every task, with its status updates |
//! | `POST /_mock/tasks` | create a task: `{"target_id", "prompt", "system_context"?, "max_turns"?, "max_budget_usd"?}` |
//! | `GET /_mock/tasks/{id}` | one task |
//! | `GET /_mock/tasks/{id}/events` | the events the host posted for the task, in order |
//! | `POST /_mock/tasks/{id}/cancel` | cancel the task: an interrupt through its bridge session |

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::server::http_error;
use crate::state::{MockState, NewTask, SandboxRecord, TaskRecord};

/// The `/_mock/...` routes.
pub fn routes() -> Router<Arc<MockState>> {
    Router::new()
        .route("/_mock/sandboxes", get(sandboxes))
        .route("/_mock/tasks", get(tasks).post(create_task))
        .route("/_mock/tasks/{id}", get(task))
        .route("/_mock/tasks/{id}/events", get(task_events))
        .route("/_mock/tasks/{id}/cancel", post(cancel_task))
}

fn sandbox_json(s: &SandboxRecord) -> Value {
    json!({
        "sandbox_id": s.id,
        "name": s.name,
        "type": s.sandbox_type,
        "workspace_id": s.workspace_id,
        "short_id": s.short_id,
        "status": s.status,
        "created_at": s.created_at,
    })
}

fn task_json(t: &TaskRecord) -> Value {
    json!({
        "task_id": t.id,
        "target_id": t.target_id,
        "prompt": t.prompt,
        "status": t.status,
        "session_id": t.session_id,
        "result": t.result,
        "failure_reason": t.failure_reason,
        "num_turns": t.num_turns,
        "total_cost_usd": t.total_cost_usd,
        "status_updates": t.status_updates.iter().map(|u| &u.body).collect::<Vec<_>>(),
        "created_at": t.created_at,
        "completed_at": t.completed_at,
    })
}

async fn sandboxes(State(state): State<Arc<MockState>>) -> Json<Value> {
    Json(Value::Array(
        state.sandboxes().iter().map(sandbox_json).collect(),
    ))
}

async fn tasks(State(state): State<Arc<MockState>>) -> Json<Value> {
    Json(Value::Array(state.tasks().iter().map(task_json).collect()))
}

#[derive(Deserialize)]
struct CreateBody {
    target_id: String,
    prompt: String,
    #[serde(default)]
    system_context: String,
    #[serde(default)]
    max_turns: i64,
    #[serde(default)]
    max_budget_usd: f64,
}

async fn create_task(State(state): State<Arc<MockState>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<CreateBody>(&body) else {
        return http_error(
            StatusCode::BAD_REQUEST,
            "expected JSON {\"target_id\": \"<sandbox id>\", \"prompt\": \"...\"}",
        );
    };
    if state.sandbox(&req.target_id).is_none() {
        return http_error(StatusCode::NOT_FOUND, "target agent not found");
    }
    let id = state.create_task_with(NewTask {
        target_id: req.target_id,
        prompt: req.prompt,
        system_context: req.system_context,
        max_turns: req.max_turns,
        max_budget_usd: req.max_budget_usd,
        ..NewTask::default()
    });
    let task = state
        .task(&id)
        .map(|t| task_json(&t))
        .unwrap_or(Value::Null);
    (StatusCode::CREATED, Json(task)).into_response()
}

async fn task(State(state): State<Arc<MockState>>, Path(id): Path<String>) -> Response {
    match state.task(&id) {
        Some(t) => Json(task_json(&t)).into_response(),
        None => http_error(StatusCode::NOT_FOUND, "task not found"),
    }
}

/// `GET /_mock/tasks/{id}/events` → `{"task_id", "status", "events": [payload, ...]}`: what the
/// host posted to the task's bridge session, in sequence order, byte-for-byte payloads.
async fn task_events(State(state): State<Arc<MockState>>, Path(id): Path<String>) -> Response {
    let Some(t) = state.task(&id) else {
        return http_error(StatusCode::NOT_FOUND, "task not found");
    };
    let events = t
        .session_id
        .as_deref()
        .map(|sid| state.bridge_worker_events(sid))
        .unwrap_or_default();
    Json(json!({
        "task_id": t.id,
        "status": t.status,
        "session_id": t.session_id,
        "events": events,
    }))
    .into_response()
}

/// `POST /_mock/tasks/{id}/cancel` → 202 `{"task_id", "interrupt_sequence"}`: publishes an
/// interrupt control request on the task's bridge session, as the server does when a user
/// stops a task; the host cancels the task and reports it. 409 when the task is already over
/// or has no bridge session (`--no-bridge`).
async fn cancel_task(State(state): State<Arc<MockState>>, Path(id): Path<String>) -> Response {
    let Some(t) = state.task(&id) else {
        return http_error(StatusCode::NOT_FOUND, "task not found");
    };
    if crate::state::is_final_status(&t.status) {
        return http_error(StatusCode::CONFLICT, "the task is already over");
    }
    let Some(sequence) = t
        .session_id
        .as_deref()
        .and_then(|sid| state.bridge_interrupt(sid))
    else {
        return http_error(
            StatusCode::CONFLICT,
            "the task has no bridge session to interrupt (the server runs with --no-bridge)",
        );
    };
    tracing::info!(target: crate::TASK_LOG_TARGET, task = %t.id, "cancel requested (interrupt sent)");
    (
        StatusCode::ACCEPTED,
        Json(json!({"task_id": t.id, "interrupt_sequence": sequence})),
    )
        .into_response()
}
