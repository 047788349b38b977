//! The WebSocket + yamux tunnel to the server (spec §6): control, HTTP and terminal streams.
//!
//! [`Tunnel::run`] dials `ws(s)://{server}/api/tunnel/{sandbox_id}?token=…`, turns the
//! WebSocket into a byte stream ([`agentserver_mux::WsByteStream`]) and runs a yamux **client**
//! session on it ([`agentserver_mux::Session`], which acknowledges server-opened streams the
//! moment they arrive). While connected it:
//!
//! * sends agent info on a control stream right away and every 20 s (the JSON comes from the
//!   caller's [`InfoSource`]);
//! * serves HTTP streams through the backend's `handle_http` ([`http`]);
//! * hands terminal streams to the backend's `attach_terminal`;
//! * logs and closes streams of any other type.
//!
//! When the session ends it reconnects on the schedule of spec §6.2 ([`Backoff`]), forever,
//! until the cancellation token fires; then it closes the WebSocket with code 1000.

pub mod http;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use agentserver_mux::{
    Control, Mode, Session, SessionError, Stream, StreamType, WsByteStream, read_header,
    write_header,
};
use agentserver_plugin_api::Backend;
use futures_util::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use crate::secret::Secret;

/// The reconnect schedule (spec §6.2) is the workspace's one [`Backoff`], owned by
/// `agentserver_common::backoff`; re-exported here for the tunnel's configuration.
pub use agentserver_common::backoff::{Backoff, BackoffPolicy};

/// Produces the agent-info JSON (spec §7.1) for each control stream.
pub type InfoSource = Arc<dyn Fn() -> BoxFuture<'static, Vec<u8>> + Send + Sync>;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    /// Server base URL (`https://…` or `http://…`).
    pub server: String,
    /// The sandbox to serve.
    pub sandbox_id: String,
    /// The sandbox's tunnel token (sent as the `token` query parameter, never logged).
    pub tunnel_token: Secret,
    /// Agent info period. Default 20 s.
    pub info_interval: Duration,
    /// Reconnect schedule. Default: spec §6.2 with 10 % jitter.
    pub backoff: BackoffPolicy,
    /// Limit for the TCP + TLS + WebSocket handshake. Default 30 s.
    pub connect_timeout: Duration,
    /// How long a graceful close may take before the connection is dropped. Default 3 s.
    pub close_timeout: Duration,
    /// yamux settings. Default: the server's (keepalive off, 256 KiB windows), plus window
    /// auto-tuning of what the server sends us ([`GROWN_WINDOW_LIMIT`], [`GROWN_WINDOW_BUDGET`]).
    pub mux: agentserver_mux::Config,
    /// Sends agent info at once when notified (new capabilities), besides the period.
    pub info_refresh: Option<Arc<tokio::sync::Notify>>,
}

/// How far a request body's stream window may grow when the backend reads it as fast as it
/// comes: 1 MiB, the fastest loopback upload in `tunnel-bench` (0.25 → 0.38 of direct; 2 and
/// 4 MiB were slower and raised the peak RSS: `docs/performance.md`).
pub const GROWN_WINDOW_LIMIT: u32 = 1024 * 1024;

/// The window beyond 256 KiB that all streams of one tunnel may hold together: 16 MiB, about
/// twenty streams at [`GROWN_WINDOW_LIMIT`]. What the tunnel can buffer for slow backends
/// stays `streams × 256 KiB + 16 MiB`.
pub const GROWN_WINDOW_BUDGET: usize = 16 * 1024 * 1024;

impl TunnelConfig {
    /// The default configuration for one sandbox.
    pub fn new(
        server: impl Into<String>,
        sandbox_id: impl Into<String>,
        tunnel_token: Secret,
    ) -> Self {
        Self {
            server: server.into(),
            sandbox_id: sandbox_id.into(),
            tunnel_token,
            info_interval: Duration::from_secs(20),
            backoff: BackoffPolicy::default(),
            connect_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(3),
            mux: agentserver_mux::Config {
                grown_window_limit: GROWN_WINDOW_LIMIT,
                grown_window_budget: GROWN_WINDOW_BUDGET,
                ..agentserver_mux::Config::default()
            },
            info_refresh: None,
        }
    }
}

/// Why one connection attempt ended.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The server URL cannot be turned into a WebSocket URL.
    #[error("invalid server URL {0:?}")]
    InvalidServerUrl(String),
    /// The server answered 401 to the WebSocket handshake.
    #[error("tunnel token rejected (HTTP 401)")]
    TokenRejected,
    /// The server answered the handshake with another HTTP status.
    #[error("tunnel handshake refused with HTTP {0}")]
    HandshakeStatus(u16),
    /// TCP, TLS or the WebSocket handshake failed.
    #[error("could not connect the tunnel: {0}")]
    Connect(String),
    /// The handshake did not finish within [`TunnelConfig::connect_timeout`].
    #[error("connecting the tunnel timed out")]
    ConnectTimeout,
    /// The yamux session ended.
    #[error("tunnel connection lost: {0}")]
    Session(#[from] SessionError),
}

/// What the tunnel is doing, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TunnelStatus {
    /// Dialing (attempt number, from 1).
    Connecting(u64),
    /// Connected.
    Connected,
    /// Waiting before the next attempt.
    Disconnected,
    /// [`Tunnel::run`] has returned.
    Stopped,
}

/// Connection events, one per change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TunnelEvent {
    /// The WebSocket is up and the yamux session runs.
    Connected {
        /// Attempt number since [`Tunnel::run`] started (from 1).
        attempt: u64,
    },
    /// A connection or an attempt ended; the next attempt follows after `retry_in`.
    Disconnected {
        /// Why, in words.
        reason: String,
        /// True when the server rejected the tunnel token (401).
        token_rejected: bool,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
    /// Agent info went out on a control stream (`ok`), or could not be sent (`!ok`: only
    /// logged; it never causes a reconnect).
    InfoSent {
        /// Whether the stream was opened and written.
        ok: bool,
    },
    /// The tunnel stopped (cancelled).
    Stopped,
}

/// A tunnel for one sandbox.
pub struct Tunnel {
    config: TunnelConfig,
    backend: Arc<dyn Backend>,
    info: InfoSource,
    events: broadcast::Sender<TunnelEvent>,
    status: watch::Sender<TunnelStatus>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Builds the tunnel URL (spec §6.1): trailing `/` of the server trimmed, the first `http://`
/// replaced by `ws://` or `https://` by `wss://`.
pub fn tunnel_url(server: &str, sandbox_id: &str, token: &Secret) -> Result<String, TunnelError> {
    let base = server.trim_end_matches('/');
    let ws_base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_string()
    } else {
        return Err(TunnelError::InvalidServerUrl(server.to_string()));
    };
    Ok(format!(
        "{ws_base}/api/tunnel/{sandbox_id}?token={}",
        token.expose()
    ))
}

impl Tunnel {
    /// A tunnel that serves `backend` and reports agent info from `info`.
    pub fn new(config: TunnelConfig, backend: Arc<dyn Backend>, info: InfoSource) -> Self {
        let (events, _) = broadcast::channel(64);
        let (status, _) = watch::channel(TunnelStatus::Disconnected);
        Self {
            config,
            backend,
            info,
            events,
            status,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &TunnelConfig {
        &self.config
    }

    /// Subscribes to connection events.
    pub fn events(&self) -> broadcast::Receiver<TunnelEvent> {
        self.events.subscribe()
    }

    /// The current status, updated on every change.
    pub fn status(&self) -> watch::Receiver<TunnelStatus> {
        self.status.subscribe()
    }

    fn emit(&self, event: TunnelEvent) {
        let _ = self.events.send(event);
    }

    /// Connects and reconnects until `cancel` fires; then closes gracefully and returns
    /// `Ok(())`. Returns an error only for a server URL that cannot work at all.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), TunnelError> {
        let url = tunnel_url(
            &self.config.server,
            &self.config.sandbox_id,
            &self.config.tunnel_token,
        )?;
        let mut backoff = Backoff::new(self.config.backoff.clone());
        let mut last_reason: Option<String> = None;
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            let started = Instant::now();
            self.status.send_replace(TunnelStatus::Connecting(attempt));
            let result = self.connect_once(&url, &cancel, attempt).await;
            if cancel.is_cancelled() {
                break;
            }
            let err = match result {
                Ok(()) => TunnelError::Session(SessionError::RemoteClosed),
                Err(e) => e,
            };
            let delay = backoff.next_delay_after(started.elapsed());
            let reason = self.sanitize(&err.to_string());
            let token_rejected = matches!(err, TunnelError::TokenRejected);
            if last_reason.as_deref() != Some(reason.as_str()) {
                if token_rejected {
                    tracing::warn!(
                        retry_in = ?delay,
                        "tunnel token rejected by the server; will keep retrying"
                    );
                } else {
                    tracing::warn!(reason = %reason, retry_in = ?delay, "tunnel disconnected");
                }
            } else {
                tracing::debug!(reason = %reason, retry_in = ?delay, "tunnel attempt failed again");
            }
            last_reason = Some(reason.clone());
            self.status.send_replace(TunnelStatus::Disconnected);
            self.emit(TunnelEvent::Disconnected {
                reason,
                token_rejected,
                retry_in: delay,
            });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = cancel.cancelled() => break,
            }
        }
        self.status.send_replace(TunnelStatus::Stopped);
        self.emit(TunnelEvent::Stopped);
        Ok(())
    }

    /// Removes the token (and every other registered secret, in any form it is registered
    /// in) from a message, in case a library echoed the URL.
    fn sanitize(&self, message: &str) -> String {
        let token = self.config.tunnel_token.expose();
        let message = if token.is_empty() {
            message.to_string()
        } else {
            message.replace(token, "***")
        };
        crate::secret::redact(&message).unwrap_or(message)
    }

    async fn dial(
        &self,
        url: &str,
    ) -> Result<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        TunnelError,
    > {
        let ws_config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let connect = tokio_tungstenite::connect_async_with_config(url, Some(ws_config), true);
        match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Err(_) => Err(TunnelError::ConnectTimeout),
            Ok(Ok((ws, _response))) => Ok(ws),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                if status == 401 {
                    Err(TunnelError::TokenRejected)
                } else {
                    Err(TunnelError::HandshakeStatus(status))
                }
            }
            Ok(Err(e)) => Err(TunnelError::Connect(self.sanitize(&e.to_string()))),
        }
    }

    /// One connection: dial, serve until the session ends or `cancel` fires.
    async fn connect_once(
        &self,
        url: &str,
        cancel: &CancellationToken,
        attempt: u64,
    ) -> Result<(), TunnelError> {
        let ws = tokio::select! {
            ws = self.dial(url) => ws?,
            _ = cancel.cancelled() => return Ok(()),
        };
        let (control, mut incoming) =
            Session::new(WsByteStream::new(ws), Mode::Client, self.config.mux.clone());
        tracing::info!(sandbox_id = %self.config.sandbox_id, "tunnel connected");
        self.status.send_replace(TunnelStatus::Connected);
        self.emit(TunnelEvent::Connected { attempt });

        let info_task = tokio::spawn(
            info_loop(
                control.clone(),
                Arc::clone(&self.info),
                self.config.info_interval,
                self.config.info_refresh.clone(),
                self.events.clone(),
            )
            .in_current_span(),
        );
        let backend = Arc::clone(&self.backend);
        let accept = async move {
            while let Some(stream) = incoming.next().await {
                tokio::spawn(handle_stream(stream, Arc::clone(&backend)).in_current_span());
            }
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => {
                control.close();
                let _ = tokio::time::timeout(self.config.close_timeout, control.finished()).await;
                Ok(())
            }
            reason = control.closed() => Err(TunnelError::Session(reason)),
            _ = accept => Err(TunnelError::Session(control.closed().await)),
        };
        info_task.abort();
        outcome
    }
}

/// Runs a tunnel until `cancel` fires (see [`Tunnel::run`]).
pub async fn run(
    config: TunnelConfig,
    backend: Arc<dyn Backend>,
    info: InfoSource,
    cancel: CancellationToken,
) -> Result<(), TunnelError> {
    Tunnel::new(config, backend, info).run(cancel).await
}

/// Sends agent info at once, then every `interval`, until aborted. Failures are only logged
/// (upstream: open/write errors never trigger a reconnect).
async fn info_loop(
    control: Control,
    info: InfoSource,
    interval: Duration,
    refresh: Option<Arc<tokio::sync::Notify>>,
    events: broadcast::Sender<TunnelEvent>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let refreshed = async |refresh: &Option<Arc<tokio::sync::Notify>>| match refresh {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    };
    // A refresh noted before this connection is covered by the first agent info below.
    if let Some(notify) = &refresh {
        let _ = futures_util::FutureExt::now_or_never(notify.notified());
    }
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = refreshed(&refresh) => {
                // Agent info at once (new capabilities); the period starts again from here.
                ticker.reset();
            }
        }
        let json = info().await;
        let sent = send_info(&control, &json).await;
        match &sent {
            // Start-up is over: what only it needed can go once the host is quiet.
            Ok(()) => crate::memory::started(),
            Err(e) => tracing::debug!(error = %e, "could not send agent info"),
        }
        let _ = events.send(TunnelEvent::InfoSent { ok: sent.is_ok() });
    }
}

async fn send_info(control: &Control, json: &[u8]) -> std::io::Result<()> {
    let mut stream = control.open_stream().await.map_err(std::io::Error::other)?;
    write_header(&mut stream, StreamType::Control, &[]).await?;
    stream.write_all(json).await?;
    stream.shutdown().await
}

/// Serves one server-opened stream.
async fn handle_stream(mut stream: Stream, backend: Arc<dyn Backend>) {
    // Memory a burst of streams freed goes back to the system once they are all done.
    let _busy = crate::memory::busy();
    let (stream_type, meta) = match read_header(&mut stream).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(stream = stream.id(), error = %e, "bad stream header from the server; resetting the stream");
            stream.reset();
            return;
        }
    };
    match stream_type {
        StreamType::Http => http::serve_on_mux_stream(stream, meta, backend).await,
        StreamType::Terminal => {
            if let Err(e) = backend.attach_terminal(Box::new(stream)).await {
                tracing::info!(error = %e, "terminal stream closed");
            }
        }
        other => {
            tracing::warn!(
                stream = stream.id(),
                stream_type = other.as_u8(),
                "unexpected stream type from the server; closing the stream"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Secret::new("0123abcd");
        assert_eq!(
            tunnel_url("https://agent.cs.ac.cn/", "sb-1", &t).unwrap(),
            "wss://agent.cs.ac.cn/api/tunnel/sb-1?token=0123abcd"
        );
        assert_eq!(
            tunnel_url("http://127.0.0.1:8080", "x", &t).unwrap(),
            "ws://127.0.0.1:8080/api/tunnel/x?token=0123abcd"
        );
        assert!(tunnel_url("ftp://x", "x", &t).is_err());
    }
}
