//! A small unauthenticated control API under `/_mock/` for people driving the mock by hand
//! (`agentserver dev-server`): list sandboxes and tasks, create a task. Not part of the
//! agentserver protocol, and never affected by fault switches.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
