//! Recording of every request the mock receives (body included), for assertions.

use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::state::{MockState, lock};

/// Largest request body the mock buffers (bridge batches may be up to 10 MiB).
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method (`GET`, `POST`, ...).
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (without `?`), if any.
    pub query: Option<String>,
    /// Headers in arrival order, names lowercase; values lossily decoded.
    pub headers: Vec<(String, String)>,
    /// The whole request body.
    pub body: Bytes,
    /// When it arrived (monotonic; compare to measure client intervals).
    pub at: Instant,
    /// When it arrived (wall clock).
    pub received_at: DateTime<Utc>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body parsed as a form (`application/x-www-form-urlencoded`), as pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .into_owned()
            .collect()
    }

    /// The value of query parameter `name`, if present.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.query.as_deref()?;
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

impl MockState {
    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    /// The requests with this method and exact path, oldest first.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<RecordedRequest> {
        lock(&self.requests)
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
            .cloned()
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.requests).clear();
    }
}

/// Buffers the body of `req`, records the request, and gives back an equivalent request.
/// Upgrade requests (WebSocket) keep their extensions, so the upgrade still works.
pub(crate) async fn record(
    state: &MockState,
    req: Request,
) -> Result<Request, axum::response::Response> {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return Err(crate::server::http_error(
                axum::http::StatusCode::BAD_REQUEST,
                "failed to read request body",
            ));
        }
    };
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: bytes.clone(),
        at: Instant::now(),
        received_at: Utc::now(),
    };
    lock(&state.requests).push(recorded);
    state.notify();
    Ok(Request::from_parts(parts, Body::from(bytes)))
}
