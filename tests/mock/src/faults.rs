//! Fault injection: switches that make the mock fail, hang or refuse in controlled ways.
//!
//! Faults apply to the server's API surface (`/api/*` and `/v1/*`); the verification page is
//! never affected. Requests are recorded before faults apply, so a failed request still shows
//! up in [`MockState::requests`].

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::Response;

use crate::server::http_error;
use crate::state::{MockState, lock};

/// A one-shot failure for matching requests (see [`MockState::fail_next`]).
#[derive(Debug, Clone)]
struct RouteFault {
    method: Option<String>,
    path_prefix: String,
    status: u16,
    remaining: u32,
}

/// The active fault switches.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    fail: Option<(u16, Instant)>,
    stall_until: Option<Instant>,
    route_faults: Vec<RouteFault>,
    pub(crate) introspection_fails: bool,
    pub(crate) register_fails: bool,
}

impl MockState {
    /// For `for_dur` from now, every `/api/*` and `/v1/*` request answers `status` with a plain
    /// text body (the status' reason phrase), like a server or proxy in trouble.
    pub fn fail_with(&self, status: u16, for_dur: Duration) {
        lock(&self.faults).fail = Some((status, Instant::now() + for_dur));
    }

    /// For `for_dur` from now, every `/api/*` and `/v1/*` request hangs until the stall ends,
    /// then is served normally.
    pub fn stall(&self, for_dur: Duration) {
        lock(&self.faults).stall_until = Some(Instant::now() + for_dur);
    }

    /// The next `times` requests whose path starts with `path_prefix` (and whose method is
    /// `method`, unless it is `*`) answer `status` with a plain text body.
    pub fn fail_next(&self, method: &str, path_prefix: &str, status: u16, times: u32) {
        lock(&self.faults).route_faults.push(RouteFault {
            method: (method != "*").then(|| method.to_ascii_uppercase()),
            path_prefix: path_prefix.to_string(),
            status,
            remaining: times,
        });
    }

    /// Makes token introspection fail: registration answers 500 `token introspection failed`.
    pub fn set_introspection_fails(&self, fails: bool) {
        lock(&self.faults).introspection_fails = fails;
    }

    /// Makes the sandbox insert fail: registration answers 500 `failed to register agent`.
    pub fn set_register_fails(&self, fails: bool) {
        lock(&self.faults).register_fails = fails;
    }

    /// Turns every fault switch off.
    pub fn clear_faults(&self) {
        *lock(&self.faults) = Faults::default();
    }
}

fn fault_response(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    http_error(code, code.canonical_reason().unwrap_or("mock fault"))
}

/// Applies stall and failure switches to a request; `Some` = answer with this instead.
pub(crate) async fn apply(state: &MockState, method: &str, path: &str) -> Option<Response> {
    if !(path.starts_with("/api/") || path.starts_with("/v1/")) {
        return None;
    }
    let stall = lock(&state.faults).stall_until;
    if let Some(until) = stall {
        let now = Instant::now();
        if until > now {
            tokio::time::sleep(until - now).await;
        }
    }
    let mut faults = lock(&state.faults);
    if let Some((status, until)) = faults.fail {
        if Instant::now() < until {
            return Some(fault_response(status));
        }
        faults.fail = None;
    }
    let hit = faults.route_faults.iter_mut().find(|f| {
        f.remaining > 0
            && path.starts_with(&f.path_prefix)
            && f.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
    });
    if let Some(f) = hit {
        f.remaining -= 1;
        let status = f.status;
        faults.route_faults.retain(|f| f.remaining > 0);
        return Some(fault_response(status));
    }
    None
}
