//! Support code for the integration tests: helpers to run the `agentserver` binary against the
//! mock server with an isolated `HOME`.

pub mod claude_support;
pub mod fleet;
pub mod opencode_support;
pub mod reliability;
pub mod sandboxes_bench;
pub mod test_backend;
pub mod tunnel_support;
