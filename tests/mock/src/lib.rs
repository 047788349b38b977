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
pub mod faults;
pub mod oauth;
pub mod record;
pub mod register;
pub mod server;
pub mod state;
pub mod tasks;
pub mod tunnel;

pub use config::{DeviceOutcome, MockConfig};
pub use record::RecordedRequest;
pub use server::{MockServer, TokenKind, http_error};
pub use state::{
    AccessTokenInfo, AgentCardRecord, LoginClaims, MailRecord, MockState, NewTask, SandboxRecord,
    StatusUpdate, TaskRecord,
};
