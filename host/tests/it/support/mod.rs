//! The test support of this crate's integration tests, in one place: `auth_state` (state
//! directories, credentials and sessions, running the binary), `run` (driving `agentserver
//! run` against the mock: signals, exits, registered sandboxes), `plugins` (building and
//! installing test plugins).

pub mod auth_state;
pub mod plugins;
pub mod run;
