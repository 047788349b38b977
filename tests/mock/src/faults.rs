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

/// A fault applied *after* the request was served: its answer is held back, or replaced by an
/// error status, like a slow server or a gateway that times out after the server applied the
/// request (see [`MockState::answer_late`], [`MockState::fail_after_apply`]).
#[derive(Debug, Clone)]
struct AfterFault {
    method: Option<String>,
    path_prefix: String,
    path_suffix: String,
    delay: Duration,
    replace_with: Option<u16>,
    remaining: u32,
}

/// The active fault switches.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    fail: Option<(u16, Instant)>,
    stall_until: Option<Instant>,
    route_faults: Vec<RouteFault>,
    after_faults: Vec<AfterFault>,
    /// Requests answered 200 with a body that never ends ([`MockState::answer_endless`]).
    endless: Vec<RouteFault>,
    /// `PUT …/status` bodies larger than this answer 413 (see [`MockState::limit_status_body`]).
    pub(crate) status_body_limit: Option<usize>,
    /// Per task id: fields replaced in its next poll item ([`MockState::corrupt_poll_item`]).
    pub(crate) poll_overrides: Vec<(String, serde_json::Value)>,
    /// Items added to the next poll answer of a sandbox ([`MockState::inject_poll_item`]).
    pub(crate) poll_injections: Vec<(String, serde_json::Value)>,
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

    /// The next `times` requests matching `method` (`*` = any), `path_prefix` and
    /// `path_suffix` are served normally (the server applies them), then their answer is
    /// held back for `delay`: a loaded server whose answers arrive late.
    pub fn answer_late(
        &self,
        method: &str,
        path_prefix: &str,
        path_suffix: &str,
        delay: Duration,
        times: u32,
    ) {
        self.push_after_fault(method, path_prefix, path_suffix, delay, None, times);
    }

    /// The next `times` matching requests are served normally (the server applies them), then
    /// answered `status` instead: a gateway (502/504) that lost the server's answer.
    pub fn fail_after_apply(
        &self,
        method: &str,
        path_prefix: &str,
        path_suffix: &str,
        status: u16,
        times: u32,
    ) {
        self.push_after_fault(
            method,
            path_prefix,
            path_suffix,
            Duration::ZERO,
            Some(status),
            times,
        );
    }

    fn push_after_fault(
        &self,
        method: &str,
        path_prefix: &str,
        path_suffix: &str,
        delay: Duration,
        replace_with: Option<u16>,
        times: u32,
    ) {
        lock(&self.faults).after_faults.push(AfterFault {
            method: (method != "*").then(|| method.to_ascii_uppercase()),
            path_prefix: path_prefix.to_string(),
            path_suffix: path_suffix.to_string(),
            delay,
            replace_with,
            remaining: times,
        });
    }

    /// The next `times` requests whose path starts with `path_prefix` (and whose method is
    /// `method`, unless it is `*`) are answered 200 with a JSON-looking body that never ends
    /// (`[[[[…`, streamed as fast as the client reads): a broken proxy or a hostile server.
    pub fn answer_endless(&self, method: &str, path_prefix: &str, times: u32) {
        lock(&self.faults).endless.push(RouteFault {
            method: (method != "*").then(|| method.to_ascii_uppercase()),
            path_prefix: path_prefix.to_string(),
            status: 200,
            remaining: times,
        });
    }

    /// `PUT /api/agent/tasks/{id}/status` bodies over `limit` bytes answer 413 (`None`: no
    /// limit), like a server or proxy with a request size limit.
    pub fn limit_status_body(&self, limit: Option<usize>) {
        lock(&self.faults).status_body_limit = limit;
    }

    /// The next poll item of `task_id` gets these fields replaced (e.g. `{"prompt": 5}`, a
    /// wrong type), so one item of the batch is malformed.
    pub fn corrupt_poll_item(&self, task_id: &str, fields: serde_json::Value) {
        lock(&self.faults)
            .poll_overrides
            .push((task_id.to_string(), fields));
    }

    /// Adds `item` (any JSON) to the next poll answer of `sandbox_id`.
    pub fn inject_poll_item(&self, sandbox_id: &str, item: serde_json::Value) {
        lock(&self.faults)
            .poll_injections
            .push((sandbox_id.to_string(), item));
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

/// Consumes one use of the first fault in `list` matching the request; true when there was one.
fn take_hit(list: &mut Vec<RouteFault>, method: &str, path: &str) -> bool {
    let hit = list.iter_mut().find(|f| {
        f.remaining > 0
            && path.starts_with(&f.path_prefix)
            && f.method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
    });
    let found = hit.map(|f| f.remaining -= 1).is_some();
    list.retain(|f| f.remaining > 0);
    found
}

/// 200 with a chunked body of `[` that never ends.
fn endless_response() -> Response {
    let chunk = bytes::Bytes::from(vec![b'['; 64 * 1024]);
    let stream =
        futures_util::stream::repeat_with(move || Ok::<_, std::convert::Infallible>(chunk.clone()));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(axum::body::Body::from_stream(stream))
        .expect("static response parts are valid")
}

/// Applies the after-faults to a served request: waits, and `Some` = answer this instead.
pub(crate) async fn apply_after(state: &MockState, method: &str, path: &str) -> Option<Response> {
    let hit = {
        let mut faults = lock(&state.faults);
        let hit = faults.after_faults.iter_mut().find(|f| {
            f.remaining > 0
                && path.starts_with(&f.path_prefix)
                && path.ends_with(&f.path_suffix)
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
        });
        let found = hit.map(|f| {
            f.remaining -= 1;
            (f.delay, f.replace_with)
        });
        faults.after_faults.retain(|f| f.remaining > 0);
        found
    };
    let (delay, replace_with) = hit?;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    replace_with.map(fault_response)
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
    if take_hit(&mut faults.endless, method, path) {
        return Some(endless_response());
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
