//! The `agentserver` host library: everything the `agentserver` binary does, in modules with
//! one job each. The binary (`main.rs`, `cli.rs`, `commands/`) only parses arguments and wires
//! these together.
//!
//! See `docs/ARCHITECTURE.md` for the code map and the invariants each module keeps.

pub mod auth;
pub mod dispatch;
pub mod fsutil;
pub mod http;
pub mod intake;
pub mod logging;
pub mod mcp;
pub mod memory;
pub mod metrics;
pub mod ops;
pub mod paths;
pub mod plugins;
pub mod probe;
pub mod rfc3339;
pub mod sandboxes;
pub mod service;
pub mod session_choice;
pub mod shutdown;
/// [`Secret`](secret::Secret) and the redaction registry; kept at this path as a re-export of
/// `agentserver_common::secret`, their one owner, so that callers did not churn.
pub use agentserver_common::secret;
pub mod state;
pub mod tunnel;
pub mod worker;

/// The host's version as reported in agent info (`agent_version`) and by `agentserver version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
