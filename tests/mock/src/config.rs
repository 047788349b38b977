//! How the mock behaves: the knobs a test (or `agentserver dev-server`) sets before starting it.

use std::time::Duration;

/// What the device flow ends with once the user "acts" (see [`MockConfig::approve_after_polls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceOutcome {
    /// The user approves: the token poll returns tokens.
    #[default]
    Approve,
    /// The user denies: the token poll answers `access_denied`.
    Deny,
    /// The device code expires: the token poll answers `expired_token`.
    Expire,
}

impl std::str::FromStr for DeviceOutcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "approve" => Ok(Self::Approve),
            "deny" => Ok(Self::Deny),
            "expire" => Ok(Self::Expire),
            other => Err(format!(
                "unknown device outcome `{other}` (expected approve, deny or expire)"
            )),
        }
    }
}

/// The mock's configuration. Read at request time (except [`MockConfig::bridge_enabled`], which is
/// read when the router is built, i.e. at start and restart), so
/// [`crate::MockState::update_config`] changes behaviour of a running mock.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// The Nth token poll of a device code ends the flow with [`MockConfig::device_outcome`]
    /// (1 = the first poll). Earlier polls answer `authorization_pending`. Polls answered
    /// `slow_down` count too, so the outcome comes at poll `max(approve_after_polls, slow_down_polls + 1)`.
    pub approve_after_polls: u32,
    /// The first N token polls of a device code answer `slow_down`.
    pub slow_down_polls: u32,
    /// How the device flow ends.
    pub device_outcome: DeviceOutcome,
    /// The `interval` (seconds) returned by the device authorization endpoint.
    pub device_interval_secs: u64,
    /// The `expires_in` (seconds) returned by the device authorization endpoint; polls after
    /// that answer `expired_token`.
    pub device_expires_in_secs: u64,
    /// Lifetime of issued access tokens (the token response's `expires_in`).
    pub access_token_ttl_secs: i64,
    /// Serve the CCR v2 bridge (`/v1/agent/sessions/...`, like servers up to v0.62.8). When
    /// false the routes answer 404 and tasks get no `session_id` (like v0.63+).
    pub bridge_enabled: bool,
    /// Time after which a server-opened tunnel stream that the agent has not acknowledged closes
    /// the whole yamux session (hashicorp's `StreamOpenTimeout`).
    pub stream_open_timeout: Duration,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            approve_after_polls: 1,
            slow_down_polls: 0,
            device_outcome: DeviceOutcome::Approve,
            device_interval_secs: 1,
            device_expires_in_secs: 600,
            access_token_ttl_secs: 3600,
            bridge_enabled: true,
            stream_open_timeout: Duration::from_secs(75),
        }
    }
}
