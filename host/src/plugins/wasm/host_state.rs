//! The host side of the WIT world: what a guest's imports do (events, logs, cancellation,
//! HTTP within its grant) and the per-task store data they work on.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use agentserver_plugin_api::{EventSink, TaskEvent};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::agentserver::backend::{
    host as wit_host, http as wit_http, types as wit_types,
};
use super::grants::HttpGrant;
use super::limits::{CapLimiter, StopReason, StopSignal};

/// Largest HTTP response body handed to a plugin.
const MAX_HTTP_BODY: usize = 16 << 20;

/// What outbound HTTP a task may do.
pub(super) struct HttpAccess {
    pub(super) grant: HttpGrant,
    pub(super) client: Arc<OnceLock<reqwest::Client>>,
    pub(super) runtime: Option<tokio::runtime::Handle>,
}

/// The data of one task's store.
pub(super) struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: CapLimiter,
    pub(super) plugin: Arc<str>,
    pub(super) events: Option<EventSink>,
    pub(super) signal: Arc<StopSignal>,
    pub(super) deadline: Instant,
    pub(super) http: Arc<HttpAccess>,
    pub(super) stop: Option<StopReason>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wit_types::Host for HostState {}

impl wit_host::Host for HostState {
    fn emit_event(&mut self, event: String) -> bool {
        let Some(events) = &self.events else {
            return false;
        };
        match TaskEvent::from_json(&event) {
            Ok(event) => events.emit_blocking(event),
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, error = %e, "plugin emitted an event that is not JSON");
                false
            }
        }
    }

    fn log(&mut self, level: wit_host::LogLevel, message: String) {
        let level = match level {
            wit_host::LogLevel::Trace => 0,
            wit_host::LogLevel::Debug => 1,
            wit_host::LogLevel::Info => 2,
            wit_host::LogLevel::Warn => 3,
            wit_host::LogLevel::Error => 4,
        };
        crate::plugins::native::log_line(&self.plugin, level, &message);
    }

    fn cancelled(&mut self) -> bool {
        self.signal.cancelled.load(Ordering::Acquire) || Instant::now() >= self.deadline
    }
}

impl wit_http::Host for HostState {
    fn fetch(&mut self, request: wit_http::Request) -> Result<wit_http::Response, String> {
        let url = self.http.grant.check(&request.url)?;
        let Some(runtime) = self.http.runtime.clone() else {
            return Err("HTTP is unavailable outside the host's runtime".into());
        };
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| format!("bad method `{}`", request.method))?;
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let grant = self.http.grant.clone();
        let client = self.http.client.get_or_init(|| {
            // A redirect must not take the plugin to a host it was not granted.
            let policy = reqwest::redirect::Policy::custom(move |attempt| {
                let host = attempt.url().host_str().unwrap_or_default();
                if attempt.previous().len() >= 10 {
                    attempt.error("too many redirects")
                } else if grant.permits_host(host) {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            });
            reqwest::Client::builder()
                .redirect(policy)
                .build()
                .unwrap_or_default()
        });
        let mut builder = client.request(method, url).timeout(remaining);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let builder = builder.body(request.body);
        runtime.block_on(async move {
            let response = builder.send().await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let mut body = Vec::new();
            let mut response = response;
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                if body.len() + chunk.len() > MAX_HTTP_BODY {
                    return Err(format!("response body larger than {MAX_HTTP_BODY} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(wit_http::Response {
                status,
                headers,
                body,
            })
        })
    }
}
