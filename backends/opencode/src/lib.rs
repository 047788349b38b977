//! The built-in `opencode` backend (spec §11, §6.4.2): it runs `opencode serve` (or uses one
//! that is already running), serves the tunnel's HTTP streams by proxying them to it, and runs
//! tasks through opencode's HTTP API, translating opencode's events into Claude stream-json
//! shaped events so that the server's output extraction works unchanged.
//!
//! * Lifecycle: [`OpencodeBackend::start`](agentserver_plugin_api::Backend::start) starts
//!   `opencode serve --hostname 127.0.0.1 --port N` in its own process group (with
//!   `OPENCODE_SERVER_PASSWORD` when a token is set), waits for its "listening" line and then
//!   for `GET /global/health`; a supervisor restarts it with backoff if it dies; `shutdown`
//!   stops it with SIGINT, then SIGKILL after 5 s. A server the backend did not start
//!   (`--opencode-url`, or one already answering on the port) is never stopped or restarted.
//! * Tunnel: [`Backend::handle_http`] forwards to the local server only, streaming both
//!   ways, replacing `Authorization` with Basic `opencode:<token>` when a token is set.
//! * Tasks: one opencode session per task; see [`translate`] and `docs/decisions/opencode.md`
//!   for the event mapping.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agentserver_plugin_api::{
    Backend, BackendError, BackendInfo, CancellationToken, EventSink, FailureKind, HttpRequest,
    HttpResponse, SessionType, Task, TaskOutcome,
};
use async_trait::async_trait;
use tokio::sync::{OnceCell, watch};
use url::Url;

pub mod api;
mod config;
mod driver;
pub mod events;
pub mod server;
pub mod sse;
pub mod translate;

/// The final URL's origin check of the one forwarder (`agentserver_common::forward`).
pub use agentserver_common::forward::target_url;
pub use config::{OpencodeConfig, PermissionPolicy, Token};
pub use driver::prompt_body;
pub use server::{ServerState, StartError, parse_listening_line};

use agentserver_common::forward::{ForwardError, Forwarder};
use api::Api;
use server::Managed;

/// Name users pass to `--backend`.
pub const BACKEND_NAME: &str = "opencode";

/// How long a request that found opencode gone waits for the supervisor to notice.
const NOTICE_DEATH_TIMEOUT: Duration = Duration::from_secs(3);

/// The opencode backend. Cheap to clone; clones share the server.
#[derive(Clone)]
pub struct OpencodeBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<OpencodeConfig>,
    api: Api,
    /// The tunnel's HTTP streams go out through the workspace's one forwarder, on the API's
    /// client and with its Basic credential.
    forwarder: Forwarder,
    managed: Arc<Managed>,
    started: OnceCell<Result<(), String>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The backend is gone without `shutdown`: do not leave opencode running.
        self.managed.stop.cancel();
        self.managed.kill_now();
    }
}

/// Counts a task out; the last one out sweeps the server's orphans (what a tool daemonized):
/// with no task running none of them is in use.
struct SweepWhenIdle(Option<Arc<Managed>>);

impl Drop for SweepWhenIdle {
    fn drop(&mut self) {
        let Some(managed) = self.0.take() else {
            return;
        };
        if managed.tasks.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let sweep = move || {
            if managed.tasks.load(Ordering::SeqCst) == 0 {
                managed.sweep_orphans();
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(sweep)),
            Err(_) => sweep(),
        }
    }
}

impl std::fmt::Debug for OpencodeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpencodeBackend")
            .field("config", &self.inner.config)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl OpencodeBackend {
    /// `version` of `GET /global/health` (5 s timeout, spec §7.1); `None` when opencode does
    /// not answer.
    pub async fn opencode_version(&self) -> Option<String> {
        let base = self.base_url()?;
        match self.inner.api.health(&base, Duration::from_secs(5)).await {
            Ok(h) if !h.version.is_empty() => Some(h.version),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(error = %e, "opencode health check failed");
                None
            }
        }
    }

    /// A backend with these settings. Nothing starts before [`Backend::start`] (or the first
    /// task or HTTP request, which start it on demand).
    pub fn new(config: OpencodeConfig) -> Self {
        let api = Api::new(config.token());
        let forwarder = Forwarder::new(api.client().clone(), api.auth().cloned());
        Self {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                api,
                forwarder,
                managed: Arc::new(Managed::new()),
                started: OnceCell::new(),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &OpencodeConfig {
        &self.inner.config
    }

    /// Where the server stands now.
    pub fn state(&self) -> ServerState {
        self.inner.managed.state.borrow().clone()
    }

    /// Follows the server's state.
    pub fn state_watch(&self) -> watch::Receiver<ServerState> {
        self.inner.managed.state.subscribe()
    }

    /// The base URL of the server, when it is ready.
    pub fn base_url(&self) -> Option<Url> {
        match self.state() {
            ServerState::Ready { base, .. } => Some(base),
            _ => None,
        }
    }

    /// Pid (and process group) of the `opencode serve` this backend started, while it runs.
    pub fn server_pid(&self) -> Option<u32> {
        self.inner.managed.current_pid()
    }

    /// How many times the supervisor restarted the server.
    pub fn restarts(&self) -> u64 {
        self.inner.managed.restarts.load(Ordering::SeqCst)
    }

    /// Starts (or finds) the server once; later calls return the first result.
    async fn ensure_started(&self) -> Result<(), BackendError> {
        let inner = self.inner.clone();
        let result = self
            .inner
            .started
            .get_or_init(|| async move { start_server(&inner).await.map_err(|e| e.to_string()) })
            .await;
        result.clone().map_err(BackendError::Start)
    }

    /// Waits (up to `timeout`) until the server is ready; returns its base URL and generation.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(Url, u64), BackendError> {
        self.ensure_started().await?;
        let mut rx = self.state_watch();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| {
                matches!(
                    s,
                    ServerState::Ready { .. } | ServerState::Stopped | ServerState::Failed(_)
                )
            }),
        )
        .await;
        let state = match waited {
            Ok(Ok(state)) => state.clone(),
            Ok(Err(_)) => ServerState::Stopped,
            Err(_) => self.state(),
        };
        match state {
            ServerState::Ready { base, generation } => Ok((base, generation)),
            ServerState::Stopped => Err(BackendError::Internal(
                "the opencode backend is shut down".into(),
            )),
            ServerState::Failed(e) => Err(BackendError::Internal(format!(
                "opencode is not running: {e}"
            ))),
            ServerState::Restarting { reason } => Err(BackendError::Internal(format!(
                "opencode is not running ({reason}); still restarting"
            ))),
            ServerState::NotStarted | ServerState::Starting => {
                Err(BackendError::Internal("opencode is still starting".into()))
            }
        }
    }

    fn version(&self) -> String {
        self.inner
            .managed
            .version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs one task like [`Backend::execute`].
    pub async fn run(
        &self,
        task: Task,
        events: EventSink,
        cancel: CancellationToken,
    ) -> TaskOutcome {
        let ready = tokio::select! {
            r = self.wait_ready(self.inner.config.ready_timeout) => r,
            _ = cancel.cancelled() => return TaskOutcome::cancelled("cancelled before start"),
        };
        let base = match ready {
            Ok((base, _)) => base,
            Err(e) => return TaskOutcome::failed(FailureKind::System, e.to_string()),
        };
        let version = self.version();
        let run = driver::Run {
            api: &self.inner.api,
            config: &self.inner.config,
            base: &base,
            version: &version,
        };
        let managed = self.inner.managed.clone();
        managed.tasks.fetch_add(1, Ordering::SeqCst);
        // Counted down even when this future is dropped mid-task.
        let _last_out = SweepWhenIdle(Some(managed));
        run.execute(task, events, cancel).await
    }

    async fn forward(&self, request: HttpRequest) -> Result<HttpResponse, BackendError> {
        let timeout = self.inner.config.ready_timeout;
        let (base, generation) = self.wait_ready(timeout).await?;
        let idempotent = is_idempotent(&request.method);
        let (error, again) = match self.inner.forwarder.forward(&base, request).await {
            Ok(response) => return Ok(response),
            Err(ForwardError::Reply(reply)) => return Ok(reply),
            Err(ForwardError::Connect { message, request }) => (message, request),
            Err(ForwardError::Lost { message, request }) if idempotent => (message, request),
            Err(ForwardError::Lost { message, .. }) => return Ok(local_error(&message)),
        };
        // opencode did not take the request. If it is ours and it died, the supervisor
        // restarts it: wait for that and try once more, if the request can still be sent (its
        // body is in memory or was never read).
        let Some(request) = again else {
            return Ok(local_error(&error));
        };
        if generation == 0 {
            return Ok(local_error(&error));
        }
        let mut rx = self.state_watch();
        let noticed = tokio::time::timeout(
            NOTICE_DEATH_TIMEOUT,
            rx.wait_for(
                |s| !matches!(s, ServerState::Ready { generation: g, .. } if *g == generation),
            ),
        )
        .await
        .is_ok();
        if !noticed {
            return Ok(local_error(&error));
        }
        tracing::info!(
            method = %request.method,
            path = %request.path,
            "opencode went away during a tunnel request; retrying once it is back"
        );
        let (base, _) = self.wait_ready(timeout).await?;
        match self.inner.forwarder.forward(&base, request).await {
            Ok(response) => Ok(response),
            Err(e) => Ok(e.into_reply()),
        }
    }
}

/// The tunnel's reply for a local failure (spec §6.4.2).
fn local_error(e: &str) -> HttpResponse {
    HttpResponse::text(502, &format!("local service error: {e}"))
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
fn is_idempotent(method: &str) -> bool {
    ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
        .iter()
        .any(|m| method.eq_ignore_ascii_case(m))
}

/// Starts or finds the server (spec §11).
async fn start_server(inner: &Arc<Inner>) -> Result<(), StartError> {
    let config = &inner.config;
    let managed = &inner.managed;
    managed.state.send_replace(ServerState::Starting);
    let external = |base: Url, version: String| {
        managed.set_version(&version);
        managed.state.send_replace(ServerState::Ready {
            base,
            generation: 0,
        });
    };
    if let Some(url) = &config.opencode_url {
        let base = Url::parse(url).map_err(|e| {
            fail(
                managed,
                StartError::InvalidUrl {
                    url: url.clone(),
                    reason: e.to_string(),
                },
            )
        })?;
        let version = match inner.api.health(&base, Duration::from_secs(5)).await {
            Ok(h) => h.version,
            Err(e) => {
                tracing::warn!(%base, error = %e, "the opencode server at --opencode-url does not answer yet");
                String::new()
            }
        };
        tracing::info!(%base, "using the opencode server at --opencode-url");
        external(base, version);
        return Ok(());
    }
    let port = config.opencode_port;
    let local_url = format!("http://127.0.0.1:{port}");
    let local = Url::parse(&local_url).map_err(|e| {
        fail(
            managed,
            StartError::InvalidUrl {
                url: local_url.clone(),
                reason: e.to_string(),
            },
        )
    })?;
    if !config.auto_start {
        if port == 0 {
            return Err(fail(
                managed,
                StartError::InvalidUrl {
                    url: local_url,
                    reason: "--opencode-port 0 needs --auto-start".into(),
                },
            ));
        }
        let version = inner
            .api
            .health(&local, Duration::from_secs(5))
            .await
            .map(|h| h.version)
            .unwrap_or_default();
        tracing::info!(base = %local, "auto-start is off; using the opencode server on the port");
        external(local, version);
        return Ok(());
    }
    if port != 0 && port_open(port).await {
        // Upstream: anything answering on the port is taken to be a running opencode.
        return match inner.api.health(&local, config.health_timeout).await {
            Ok(h) if h.healthy => {
                tracing::info!(base = %local, version = %h.version, "an opencode server already answers on the port; using it (it will not be stopped or restarted)");
                external(local, h.version);
                Ok(())
            }
            Ok(h) => Err(fail(
                managed,
                StartError::PortTaken {
                    port,
                    detail: format!("/global/health says healthy: false (version {})", h.version),
                },
            )),
            Err(e) => Err(fail(
                managed,
                StartError::PortTaken {
                    port,
                    detail: e.to_string(),
                },
            )),
        };
    }
    let running = server::spawn(config, &inner.api, managed)
        .await
        .map_err(|e| fail(managed, e))?;
    managed.set_version(&running.version);
    managed.state.send_replace(ServerState::Ready {
        base: running.base.clone(),
        generation: 1,
    });
    tokio::spawn(server::supervise(
        managed.clone(),
        config.clone(),
        inner.api.clone(),
        running,
        1,
    ));
    Ok(())
}

fn fail(managed: &Managed, e: StartError) -> StartError {
    managed.set_pid(None);
    let state = if matches!(e, StartError::Stopped) {
        ServerState::Stopped
    } else {
        ServerState::Failed(e.to_string())
    };
    managed.state.send_replace(state);
    e
}

async fn port_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    )
}

#[async_trait]
impl Backend for OpencodeBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: BACKEND_NAME.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            session_type: SessionType::Opencode,
        }
    }

    /// Starts `opencode serve` (or finds a running one) and waits until it is ready.
    async fn start(&self) -> Result<(), BackendError> {
        self.ensure_started().await
    }

    async fn execute(
        &self,
        task: Task,
        events: EventSink,
        cancel: CancellationToken,
    ) -> TaskOutcome {
        self.run(task, events, cancel).await
    }

    async fn handle_http(&self, request: HttpRequest) -> Result<HttpResponse, BackendError> {
        self.forward(request).await
    }

    /// `opencode_version` (from [`OpencodeBackend::opencode_version`]) when opencode answers.
    async fn agent_info_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        if let Some(version) = self.opencode_version().await {
            fields.insert("opencode_version".into(), version.into());
        }
        fields
    }

    /// Stops the server if this backend started it (SIGINT, SIGKILL after the grace period).
    async fn shutdown(&self) {
        let managed = &self.inner.managed;
        managed.stop.cancel();
        if managed.current_pid().is_none()
            && !matches!(self.state(), ServerState::Restarting { .. })
        {
            return;
        }
        let mut rx = self.state_watch();
        let limit = self.inner.config.stop_grace + Duration::from_secs(5);
        if tokio::time::timeout(limit, rx.wait_for(|s| *s == ServerState::Stopped))
            .await
            .is_err()
        {
            tracing::warn!("opencode serve did not stop in time; killing it");
            managed.kill_now();
        }
    }
}
