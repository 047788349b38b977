//! Agent-facing endpoints (spec §8.5, §14): discovery, agent cards, mailbox, whoami.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::server::{
    TokenKind, bearer_token, http_error, sandbox_auth, sandbox_auth_json, workspace_target,
};
use crate::state::{AgentCardRecord, MailRecord, MockState, SandboxRecord};

/// Default number of messages an inbox read returns.
pub const DEFAULT_INBOX_LIMIT: usize = 10;

impl MockState {
    /// Every agent card, in creation order.
    pub fn agent_cards(&self) -> Vec<AgentCardRecord> {
        self.inner().cards.clone()
    }

    /// The card of sandbox `agent_id`.
    pub fn agent_card(&self, agent_id: &str) -> Option<AgentCardRecord> {
        self.inner()
            .cards
            .iter()
            .find(|c| c.agent_id == agent_id)
            .cloned()
    }

    /// Adds (or replaces) an agent card as is; `version` is bumped if one existed.
    pub fn add_agent_card(&self, card: AgentCardRecord) {
        let mut inner = self.inner();
        if let Some(existing) = inner.cards.iter_mut().find(|c| c.agent_id == card.agent_id) {
            let version = existing.version + 1;
            *existing = AgentCardRecord { version, ..card };
        } else {
            inner.cards.push(card);
        }
        drop(inner);
        self.notify();
    }

    /// Creates a sandbox with a card in the default workspace (another agent to discover,
    /// delegate to, or mail): returns the sandbox.
    pub fn add_agent(
        &self,
        name: &str,
        agent_type: &str,
        description: &str,
        card: Value,
    ) -> SandboxRecord {
        let sb = self.add_sandbox(name, agent_type);
        self.upsert_card(
            &sb,
            Some(name.to_string()),
            Some(description.to_string()),
            Some(agent_type.to_string()),
            Some(card),
        );
        sb
    }

    /// Upserts the card of `sandbox` like `POST /api/agent/discovery/cards`: absent fields
    /// keep their previous value or take the defaults (sandbox name, `claudecode`, `{}`).
    pub(crate) fn upsert_card(
        &self,
        sandbox: &SandboxRecord,
        display_name: Option<String>,
        description: Option<String>,
        agent_type: Option<String>,
        card: Option<Value>,
    ) {
        let mut inner = self.inner();
        if let Some(c) = inner.cards.iter_mut().find(|c| c.agent_id == sandbox.id) {
            if let Some(v) = display_name.filter(|v| !v.is_empty()) {
                c.display_name = v;
            }
            if let Some(v) = description {
                c.description = v;
            }
            if let Some(v) = agent_type.filter(|v| !v.is_empty()) {
                c.agent_type = v;
            }
            if let Some(v) = card.filter(|v| !v.is_null()) {
                c.card = v;
            }
            c.status = "available".into();
            c.version += 1;
        } else {
            inner.cards.push(AgentCardRecord {
                agent_id: sandbox.id.clone(),
                workspace_id: sandbox.workspace_id.clone(),
                display_name: display_name
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| sandbox.name.clone()),
                description: description.unwrap_or_default(),
                agent_type: agent_type
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "claudecode".into()),
                status: "available".into(),
                card: card.filter(|v| !v.is_null()).unwrap_or_else(|| json!({})),
                version: 1,
            });
        }
        drop(inner);
        self.notify();
    }

    /// Sets the discovery status of an agent card (`available`, `busy`, `offline`).
    pub fn set_agent_status(&self, agent_id: &str, status: &str) {
        if let Some(c) = self
            .inner()
            .cards
            .iter_mut()
            .find(|c| c.agent_id == agent_id)
        {
            c.status = status.to_string();
        }
        self.notify();
    }

    /// Puts a message into `to`'s inbox (as `POST /api/agent/mailbox/send` from `from` would);
    /// returns its id.
    pub fn send_mail(&self, from: &str, to: &str, text: &str, msg_type: &str) -> String {
        let record = MailRecord {
            id: uuid::Uuid::new_v4().to_string(),
            from: from.to_string(),
            to: to.to_string(),
            text: text.to_string(),
            msg_type: if msg_type.is_empty() {
                "text".into()
            } else {
                msg_type.to_string()
            },
            read: false,
            created_at: Utc::now(),
        };
        let id = record.id.clone();
        self.inner().mail.push(record);
        self.notify();
        id
    }

    /// Every mailbox message (read or not), oldest first.
    pub fn mailbox(&self) -> Vec<MailRecord> {
        self.inner().mail.clone()
    }

    /// The messages sent to `agent_id`, oldest first.
    pub fn inbox_of(&self, agent_id: &str) -> Vec<MailRecord> {
        self.inner()
            .mail
            .iter()
            .filter(|m| m.to == agent_id)
            .cloned()
            .collect()
    }
}

/// Derives an agent card from agent-info `capabilities` (a simplified spec §7.3).
pub(crate) fn card_from_capabilities(caps: &Value) -> Value {
    let names = |key: &str| -> Vec<String> {
        caps.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let languages = names("languages");
    let tools = names("tools");
    let gpu = caps.get("gpu").cloned().filter(|g| g.is_object());
    let mut tags: Vec<String> = languages
        .iter()
        .map(|l| {
            if l == "python3" {
                "python".to_string()
            } else {
                l.clone()
            }
        })
        .chain(tools.iter().cloned())
        .collect();
    if gpu.is_some() {
        tags.push("gpu".into());
    }
    let mut skills = vec![
        json!({"name": "code-editing"}),
        json!({"name": "code-review"}),
        json!({"name": "terminal"}),
        json!({"name": "code-search"}),
    ];
    skills.extend(
        languages
            .iter()
            .map(|l| json!({"name": format!("{l}-development")})),
    );
    json!({
        "languages": caps.get("languages").cloned().unwrap_or_else(|| json!([])),
        "tools": caps.get("tools").cloned().unwrap_or_else(|| json!([])),
        "hardware": {"has_gpu": gpu.is_some(), "gpu_info": gpu.as_ref().and_then(|g| g.get("name")).cloned().unwrap_or(json!(""))},
        "skills": skills,
        "tags": tags,
        "gpu": gpu.unwrap_or(Value::Null),
    })
}

fn card_json(c: &AgentCardRecord) -> Value {
    json!({
        "agent_id": c.agent_id,
        "display_name": c.display_name,
        "description": c.description,
        "agent_type": c.agent_type,
        "status": c.status,
        "card": c.card,
        "version": c.version,
    })
}

/// `GET /api/agent/discovery/agents` → 200 array of the cards of the token's workspace.
pub(crate) async fn discovery(State(state): State<Arc<MockState>>, headers: HeaderMap) -> Response {
    let (sandbox, _) = match sandbox_auth(&state, &headers) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let cards: Vec<Value> = state
        .agent_cards()
        .iter()
        .filter(|c| c.workspace_id == sandbox.workspace_id)
        .map(card_json)
        .collect();
    Json(Value::Array(cards)).into_response()
}

#[derive(Deserialize)]
struct CardBody {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    agent_type: Option<String>,
    #[serde(default)]
    card: Option<Value>,
}

/// `POST /api/agent/discovery/cards` → 200 `{"status":"ok"}`.
pub(crate) async fn upsert_card(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (sandbox, req) = match sandbox_auth_json::<CardBody>(&state, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    state.upsert_card(
        &sandbox,
        req.display_name,
        req.description,
        req.agent_type,
        req.card,
    );
    Json(json!({"status": "ok"})).into_response()
}

#[derive(Deserialize)]
struct SendBody {
    #[serde(default)]
    to: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    msg_type: String,
}

/// `POST /api/agent/mailbox/send` → 201 `{"message_id","status":"sent"}`.
pub(crate) async fn mailbox_send(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (sandbox, req) = match sandbox_auth_json::<SendBody>(&state, &headers, &body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if req.to.is_empty() || req.text.is_empty() {
        return http_error(StatusCode::BAD_REQUEST, "to and text required");
    }
    let target = match workspace_target(&state, &sandbox, &req.to) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let id = state.send_mail(&sandbox.id, &target.id, &req.text, &req.msg_type);
    (
        StatusCode::CREATED,
        Json(json!({"message_id": id, "status": "sent"})),
    )
        .into_response()
}

/// `GET /api/agent/mailbox/inbox[?limit=N]` → 200 array of unread messages (now marked read).
pub(crate) async fn mailbox_inbox(
    State(state): State<Arc<MockState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let (sandbox, _) = match sandbox_auth(&state, &headers) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let limit = query
        .as_deref()
        .and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "limit")
                .and_then(|(_, v)| v.parse::<usize>().ok())
        })
        .filter(|l| *l > 0)
        .unwrap_or(DEFAULT_INBOX_LIMIT);
    let messages: Vec<Value> = {
        let mut inner = state.inner();
        inner
            .mail
            .iter_mut()
            .filter(|m| m.to == sandbox.id && !m.read)
            .take(limit)
            .map(|m| {
                m.read = true;
                json!({
                    "id": m.id,
                    "from": m.from,
                    "text": m.text,
                    "msg_type": m.msg_type,
                    "created_at": m.created_at,
                })
            })
            .collect()
    };
    state.notify();
    Json(Value::Array(messages)).into_response()
}

/// `GET /api/agent/whoami` (proxy token only) → 200 identity, `Cache-Control: no-store`.
pub(crate) async fn whoami(State(state): State<Arc<MockState>>, headers: HeaderMap) -> Response {
    let Some(token) = bearer_token(&headers) else {
        return http_error(StatusCode::UNAUTHORIZED, "unauthorized");
    };
    let sandbox = match state.sandbox_by_token(&token) {
        Some((s, TokenKind::Proxy)) => s,
        _ => return http_error(StatusCode::UNAUTHORIZED, "unauthorized"),
    };
    if sandbox.role.is_empty() {
        return http_error(StatusCode::FORBIDDEN, "forbidden");
    }
    let workspace_name = state
        .inner()
        .workspace_names
        .get(&sandbox.workspace_id)
        .cloned()
        .unwrap_or_default();
    let mut resp = Json(json!({
        "user_id": sandbox.user_id,
        "workspace_id": sandbox.workspace_id,
        "workspace_name": workspace_name,
        "sandbox_id": sandbox.id,
        "short_id": sandbox.short_id,
        "role": sandbox.role,
        "display_name": sandbox.name,
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
