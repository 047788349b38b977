//! A mock agentserver for tests and for `agentserver dev-server`.
//!
//! [`MockServer`] is a real HTTP + WebSocket server on 127.0.0.1 that follows
//! `spec/protocol.md`: OAuth device flow and token refresh (§2), registration (§3.1), the
//! tunnel endpoint (§6), tasks (§8, §14), agent discovery, cards, mailbox and whoami (§14),
//! and the CCR v2 bridge (§9, in [`bridge`]). It records every request ([`MockState::requests`])
//! and injects faults ([`faults`]). Tests reach its state through [`MockServer::state`].

// Handlers return `Result<_, Response>` to short-circuit with an error response; boxing every
// response would only add noise in a test server.
#![allow(clippy::result_large_err)]

pub mod agents;
pub mod bridge;
pub mod config;
pub mod control;
pub mod fake_llm;
pub mod fake_mcp;
pub mod faults;
pub mod oauth;
pub mod record;
pub mod register;
pub mod server;
pub mod state;
pub mod tasks;
pub mod tunnel;

/// The `tracing` target of the mock's INFO lines about tasks (each event a host posts for a
/// task, each status update, each cancel request): `agentserver dev-server` shows them by
/// default so plugin authors see what their plugin did.
pub const TASK_LOG_TARGET: &str = "agentserver_mock::tasks";

/// Most characters of one event or result quoted in a task log line.
pub const TASK_LOG_MAX_CHARS: usize = 2000;

/// `text` cut to [`TASK_LOG_MAX_CHARS`] characters, with a note of how much was cut.
pub fn log_excerpt(text: &str) -> String {
    match text.char_indices().nth(TASK_LOG_MAX_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} more bytes)", &text[..cut], text.len() - cut),
    }
}

pub use config::{DeviceOutcome, MockConfig};
pub use record::RecordedRequest;
pub use server::{MockServer, TokenKind, http_error};
pub use state::{
    AccessTokenInfo, AgentCardRecord, LoginClaims, MailRecord, MockState, NewTask, SandboxRecord,
    StatusUpdate, TaskRecord,
};
