//! The mock's state: everything the handlers read and write, and the helpers tests use to set
//! it up and inspect it. One [`MockState`] lives for the whole life of a [`crate::MockServer`],
//! restarts included.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::config::MockConfig;
use crate::faults::Faults;
use crate::record::RecordedRequest;
use crate::{bridge, tunnel};

/// The OAuth scope the registration endpoint requires.
pub const REGISTER_SCOPE: &str = "agent:register";
/// The only OAuth client id the mock knows (the agent CLI's public client).
pub const CLIENT_ID: &str = "agentserver-agent-cli";
/// The scopes the agent CLI asks for.
pub const DEFAULT_SCOPES: &str = "openid profile agent:register";

/// A registered sandbox (one per `POST /api/agent/register`, or made by [`MockState::add_sandbox`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxRecord {
    /// UUID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// `opencode`, `claudecode` or `custom`.
    pub sandbox_type: String,
    /// Workspace the sandbox belongs to.
    pub workspace_id: String,
    /// Token for the WebSocket tunnel (32 lowercase hex).
    pub tunnel_token: String,
    /// Bearer token for the agent APIs (32 lowercase hex).
    pub proxy_token: String,
    /// 8 chars, base36 lowercase.
    pub short_id: String,
    /// The user who registered it.
    pub user_id: String,
    /// That user's workspace role (reported by whoami; empty makes whoami answer 403).
    pub role: String,
    /// `offline` or `running` (the tunnel module sets it).
    pub status: String,
    /// The last agent info received on the tunnel's control stream, raw.
    pub agent_info: Option<Value>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// One `PUT /api/agent/tasks/{id}/status` as received.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    /// The `status` field.
    pub status: String,
    /// The whole JSON body.
    pub body: Value,
    /// When it arrived.
    pub at: DateTime<Utc>,
}

/// A task (`POST /api/agent/tasks` or [`MockState::create_task`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// `task_<uuid>`.
    pub id: String,
    /// Workspace of the target sandbox.
    pub workspace_id: String,
    /// Sandbox id of the requester, if any.
    pub requester_id: Option<String>,
    /// Sandbox id of the agent that runs it.
    pub target_id: String,
    /// The prompt.
    pub prompt: String,
    /// Optional skill name.
    pub skill: Option<String>,
    /// Extra system prompt.
    pub system_context: String,
    /// Max turns (0 = unlimited).
    pub max_turns: i64,
    /// Max budget in USD (0 = unlimited).
    pub max_budget_usd: f64,
    /// Server-side timeout (default 300; not enforced by the mock).
    pub timeout_seconds: i64,
    /// Delegation chain as sent.
    pub delegation_chain: Vec<String>,
    /// `pending`, `assigned`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Bridge session (`cse_<uuid>`) when the bridge is enabled.
    pub session_id: Option<String>,
    /// From a `completed` status update with a result.
    pub num_turns: Option<i64>,
    /// From a `completed` status update with a result.
    pub total_cost_usd: Option<f64>,
    /// From a `completed` status update (any JSON).
    pub result: Option<Value>,
    /// From a `failed` status update.
    pub failure_reason: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// When a poll handed it out.
    pub assigned_at: Option<DateTime<Utc>>,
    /// When it reached `completed`, `failed` or `cancelled`.
    pub completed_at: Option<DateTime<Utc>>,
    /// Every status update received, in order (to assert exactly-once reporting).
    pub status_updates: Vec<StatusUpdate>,
}

impl TaskRecord {
    /// The status updates that carry a final status (`completed`, `failed`, `cancelled`).
    pub fn final_updates(&self) -> Vec<&StatusUpdate> {
        self.status_updates
            .iter()
            .filter(|u| is_final_status(&u.status))
            .collect()
    }
}

/// Whether a task status is final.
pub fn is_final_status(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "cancelled")
}

/// Options for [`MockState::create_task_with`]; the fields mirror `POST /api/agent/tasks`.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    /// Target sandbox id.
    pub target_id: String,
    /// The prompt.
    pub prompt: String,
    /// Optional skill.
    pub skill: Option<String>,
    /// Extra system prompt.
    pub system_context: String,
    /// Max turns (0 = unlimited).
    pub max_turns: i64,
    /// Max budget (0 = unlimited).
    pub max_budget_usd: f64,
    /// Timeout (0 = the default 300).
    pub timeout_seconds: i64,
    /// Delegation chain.
    pub delegation_chain: Vec<String>,
    /// Requester sandbox id.
    pub requester_id: Option<String>,
}

/// An agent card (`POST /api/agent/discovery/cards`, derived from capabilities, or
/// [`MockState::add_agent_card`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentCardRecord {
    /// The sandbox id.
    pub agent_id: String,
    /// Workspace of the sandbox.
    pub workspace_id: String,
    /// Display name.
    pub display_name: String,
    /// Description.
    pub description: String,
    /// `claudecode`, `opencode`, ...
    pub agent_type: String,
    /// `available`, `busy` or `offline`.
    pub status: String,
    /// The card object.
    pub card: Value,
    /// Bumped on every upsert (starts at 1).
    pub version: i64,
}

/// A mailbox message.
#[derive(Debug, Clone, PartialEq)]
pub struct MailRecord {
    /// Message id (UUID).
    pub id: String,
    /// Sender sandbox id.
    pub from: String,
    /// Recipient sandbox id.
    pub to: String,
    /// Text.
    pub text: String,
    /// Message type (default `text`).
    pub msg_type: String,
    /// Whether an inbox read returned it already.
    pub read: bool,
    /// When it was sent.
    pub created_at: DateTime<Utc>,
}

/// What an OAuth access token stands for (tokens are opaque hex; the claims live here).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessTokenInfo {
    /// The `workspace_id` claim (None = claim missing).
    pub workspace_id: Option<String>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Workspace role of the user (`owner`, `developer`, `guest`, or empty).
    pub role: String,
    /// The user.
    pub user_id: String,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
}

/// A refresh token's claims and whether it can still be used.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RefreshTokenInfo {
    pub(crate) claims: AccessTokenInfo,
    pub(crate) valid: bool,
}

/// A device authorization in progress.
#[derive(Debug, Clone)]
pub(crate) struct DeviceGrant {
    pub(crate) user_code: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) polls: u32,
    pub(crate) expires_at: Instant,
    pub(crate) used: bool,
}

/// The claims the device flow puts into the tokens it issues.
#[derive(Debug, Clone, PartialEq)]
pub struct LoginClaims {
    /// `workspace_id` claim (None = missing, to test the 400).
    pub workspace_id: Option<String>,
    /// Role of the user in that workspace.
    pub role: String,
    /// User id.
    pub user_id: String,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) oauth_configured: bool,
    pub(crate) login_claims: Option<LoginClaims>,
    pub(crate) device_grants: HashMap<String, DeviceGrant>,
    pub(crate) access_tokens: HashMap<String, AccessTokenInfo>,
    pub(crate) refresh_tokens: HashMap<String, RefreshTokenInfo>,
    pub(crate) sandboxes: Vec<SandboxRecord>,
    pub(crate) tasks: Vec<TaskRecord>,
    pub(crate) cards: Vec<AgentCardRecord>,
    pub(crate) mail: Vec<MailRecord>,
    pub(crate) workspace_names: HashMap<String, String>,
}

/// The mock's shared state. Cheap helpers for tests live here; all are safe to call while the
/// server runs.
#[derive(Debug)]
pub struct MockState {
    config: Mutex<MockConfig>,
    base_url: Mutex<String>,
    default_workspace_id: String,
    default_user_id: String,
    pub(crate) inner: Mutex<Inner>,
    pub(crate) requests: Mutex<Vec<RecordedRequest>>,
    pub(crate) faults: Mutex<Faults>,
    changed: tokio::sync::Notify,
    /// State of the CCR v2 bridge (owned by [`crate::bridge`]).
    pub bridge: bridge::BridgeState,
    /// State of the tunnels (owned by [`crate::tunnel`]).
    pub tunnel: tunnel::TunnelState,
}

impl MockState {
    /// A fresh state with one default workspace and user.
    pub fn new(config: MockConfig) -> Self {
        let default_workspace_id = uuid::Uuid::new_v4().to_string();
        let mut inner = Inner {
            oauth_configured: true,
            ..Inner::default()
        };
        inner
            .workspace_names
            .insert(default_workspace_id.clone(), "Default Workspace".into());
        Self {
            config: Mutex::new(config),
            base_url: Mutex::new(String::new()),
            default_workspace_id,
            default_user_id: uuid::Uuid::new_v4().to_string(),
            inner: Mutex::new(inner),
            requests: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
            changed: tokio::sync::Notify::new(),
            bridge: bridge::BridgeState::default(),
            tunnel: tunnel::TunnelState::default(),
        }
    }

    /// A copy of the current configuration.
    pub fn config(&self) -> MockConfig {
        lock(&self.config).clone()
    }

    /// Changes the configuration of the running mock (see [`MockConfig`] for what applies when).
    pub fn update_config(&self, f: impl FnOnce(&mut MockConfig)) {
        f(&mut lock(&self.config));
        self.notify();
    }

    /// The server's base URL (`http://127.0.0.1:PORT`, no trailing slash).
    pub fn base_url(&self) -> String {
        lock(&self.base_url).clone()
    }

    pub(crate) fn set_base_url(&self, url: String) {
        *lock(&self.base_url) = url;
    }

    /// The workspace every device login lands in (unless [`MockState::set_login_claims`] says otherwise).
    pub fn default_workspace_id(&self) -> String {
        self.default_workspace_id.clone()
    }

    /// The user every device login belongs to.
    pub fn default_user_id(&self) -> String {
        self.default_user_id.clone()
    }

    pub(crate) fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Wakes [`MockState::wait_until`] waiters; call after any change of state.
    pub fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// Waits until `cond` holds (checked on every state change and every 50 ms) or `timeout`
    /// passes; returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&MockState) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            let tick = tokio::time::Instant::now() + Duration::from_millis(50);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(tick.min(deadline)) => {}
            }
        }
    }
}

/// Locks a std mutex, ignoring poisoning (a panicking test thread must not break the mock).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// 16 random bytes as 32 lowercase hex chars (the server's token format).
pub fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

/// 8 random base36 lowercase chars (the server's short id format).
pub fn random_short_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..8)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}
