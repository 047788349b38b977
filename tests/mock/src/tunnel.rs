//! The server side of the tunnel (spec §6): the WebSocket as a byte stream, a yamux **server**
//! session (with the configured [`crate::MockConfig::stream_open_timeout`]), agent info from
//! control streams, and the streams the server opens (HTTP, terminal) for tests.
//!
//! Like the real server, a new tunnel of a sandbox replaces (closes) the previous one, the
//! sandbox is `running` while a tunnel is up and `offline` after the active one ends.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agentserver_mux::{
    Control, Mode, Session, Stream, StreamType, WsByteStream, read_header, write_header,
};
use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::state::MockState;

/// Largest agent-info body the mock reads from a control stream.
const MAX_INFO: u64 = 16 * 1024 * 1024;

/// One tunnel connection of a sandbox.
#[derive(Debug, Clone)]
pub struct ConnectionRecord {
    /// Sandbox id.
    pub sandbox_id: String,
    /// Connection number (unique within the mock, increasing).
    pub conn_id: u64,
    /// When the WebSocket was accepted (monotonic).
    pub connected_at: Instant,
    /// When it was accepted (wall clock).
    pub connected_wall: DateTime<Utc>,
    /// When it ended, if it has.
    pub disconnected_at: Option<Instant>,
    /// Why it ended (the yamux session's reason).
    pub close_reason: Option<String>,
    /// The close code of the agent's WebSocket close message, if it sent one.
    pub close_code: Option<u16>,
}

/// One agent-info document received on a control stream.
#[derive(Debug, Clone)]
pub struct AgentInfoRecord {
    /// The connection it came on.
    pub conn_id: u64,
    /// When it was complete (monotonic).
    pub at: Instant,
    /// When it was complete (wall clock).
    pub received_at: DateTime<Utc>,
    /// The bytes after the stream header, up to `FIN`.
    pub raw: Bytes,
    /// Parsed JSON, if it was valid.
    pub json: Option<Value>,
}

/// A response to [`TunnelState::open_http`].
#[derive(Debug)]
pub struct TunnelHttpResponse {
    /// Status code from the agent.
    pub status: u16,
    /// Headers from the agent (single-valued).
    pub headers: HashMap<String, String>,
    /// The body: the rest of the stream until the agent's `FIN`.
    pub body: Stream,
}

impl TunnelHttpResponse {
    /// Reads the whole body.
    pub async fn read_body(mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.body.read_to_end(&mut out).await?;
        Ok(out)
    }
}

/// Errors of the test API.
#[derive(Debug, thiserror::Error)]
pub enum TunnelClientError {
    /// The sandbox has no tunnel.
    #[error("sandbox {0} has no tunnel")]
    NotConnected(String),
    /// Opening the stream failed.
    #[error(transparent)]
    Mux(#[from] agentserver_mux::Error),
    /// The stream failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The agent closed the stream without a response header (the server answers the browser
    /// 502 `tunnel proxy error`).
    #[error("tunnel proxy error")]
    NoResponse,
    /// The response header was malformed.
    #[error("bad response header: {0}")]
    BadResponse(String),
}

#[derive(Debug)]
struct Active {
    conn_id: u64,
    control: Control,
}

#[derive(Debug, Default)]
struct Inner {
    active: HashMap<String, Active>,
    log: Vec<ConnectionRecord>,
    infos: HashMap<String, Vec<AgentInfoRecord>>,
    drop_next: u32,
    next_conn: u64,
}

/// State of the tunnels: active connections per sandbox, the connection log and received
/// agent info. Tests drive and inspect tunnels through its methods.
#[derive(Debug, Default)]
pub struct TunnelState {
    inner: Mutex<Inner>,
}

impl TunnelState {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn control(&self, sandbox_id: &str) -> Result<Control, TunnelClientError> {
        self.lock()
            .active
            .get(sandbox_id)
            .map(|a| a.control.clone())
            .ok_or_else(|| TunnelClientError::NotConnected(sandbox_id.to_string()))
    }

    /// True while the sandbox has an active tunnel.
    pub fn is_connected(&self, sandbox_id: &str) -> bool {
        self.lock()
            .active
            .get(sandbox_id)
            .is_some_and(|a| !a.control.is_closed())
    }

    /// Every connection of the sandbox, oldest first.
    pub fn connections(&self, sandbox_id: &str) -> Vec<ConnectionRecord> {
        self.lock()
            .log
            .iter()
            .filter(|c| c.sandbox_id == sandbox_id)
            .cloned()
            .collect()
    }

    /// Every agent info received for the sandbox, oldest first.
    pub fn agent_infos(&self, sandbox_id: &str) -> Vec<AgentInfoRecord> {
        self.lock()
            .infos
            .get(sandbox_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Closes the next `n` tunnel connections (of any sandbox) right after accepting them,
    /// without a close handshake (to drive the agent's reconnect schedule).
    pub fn drop_next_connections(&self, n: u32) {
        self.lock().drop_next = n;
    }

    /// Kills the sandbox's active tunnel abruptly (no GoAway, no WebSocket close). Returns
    /// whether there was one.
    pub fn drop_connection(&self, sandbox_id: &str) -> bool {
        match self.control(sandbox_id) {
            Ok(c) => {
                c.abort();
                true
            }
            Err(_) => false,
        }
    }

    /// Writes raw bytes onto the sandbox's tunnel, below yamux. Returns whether there was one.
    pub fn inject_garbage(&self, sandbox_id: &str, bytes: impl Into<Bytes>) -> bool {
        match self.control(sandbox_id) {
            Ok(c) => {
                c.inject_raw(bytes.into());
                true
            }
            Err(_) => false,
        }
    }

    /// Opens a bare stream to the agent (write your own stream header).
    pub async fn open_raw_stream(&self, sandbox_id: &str) -> Result<Stream, TunnelClientError> {
        Ok(self.control(sandbox_id)?.open_stream().await?)
    }

    /// Opens a terminal stream (header `02 00000000`); the returned stream carries the
    /// terminal framing of spec §12.
    pub async fn open_terminal(&self, sandbox_id: &str) -> Result<Stream, TunnelClientError> {
        let mut s = self.open_raw_stream(sandbox_id).await?;
        write_header(&mut s, StreamType::Terminal, &[]).await?;
        Ok(s)
    }

    /// Sends an HTTP request through the tunnel like the server does (spec §6.4.2): header
    /// type 1 with `{method, path, headers, body_len}`, the body, no half-close; then reads
    /// the agent's response header. The body streams from the returned response.
    pub async fn open_http(
        &self,
        sandbox_id: &str,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: impl Into<Bytes>,
    ) -> Result<TunnelHttpResponse, TunnelClientError> {
        let body: Bytes = body.into();
        let mut s = self.open_raw_stream(sandbox_id).await?;
        let headers: serde_json::Map<String, Value> = headers
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        let meta = serde_json::json!({
            "method": method,
            "path": path,
            "headers": headers,
            "body_len": body.len(),
        });
        let meta = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        write_header(&mut s, StreamType::Http, &meta).await?;
        s.write_all(&body).await?;
        let (ty, head) = match read_header(&mut s).await {
            Ok(h) => h,
            Err(agentserver_mux::HeaderError::Io(e))
                if e.kind() == io::ErrorKind::UnexpectedEof =>
            {
                return Err(TunnelClientError::NoResponse);
            }
            Err(e) => return Err(TunnelClientError::BadResponse(e.to_string())),
        };
        if ty != StreamType::Http {
            return Err(TunnelClientError::BadResponse(format!(
                "response header type {}",
                ty.as_u8()
            )));
        }
        #[derive(serde::Deserialize)]
        struct Head {
            status: u16,
            #[serde(default)]
            headers: Option<HashMap<String, String>>,
        }
        let head: Head = serde_json::from_slice(&head)
            .map_err(|e| TunnelClientError::BadResponse(e.to_string()))?;
        Ok(TunnelHttpResponse {
            status: head.status,
            headers: head.headers.unwrap_or_default(),
            body: s,
        })
    }
}

/// Serves one accepted tunnel WebSocket of `sandbox_id` until it ends.
pub async fn serve(socket: WebSocket, sandbox_id: String, state: Arc<MockState>) {
    let close_code: Arc<Mutex<Option<u16>>> = Arc::default();
    let seen = Arc::clone(&close_code);
    let socket = socket.inspect(move |m| {
        if let Ok(Message::Close(Some(frame))) = m {
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(frame.code);
        }
    });
    let mux_config = agentserver_mux::Config {
        stream_open_timeout: Some(state.config().stream_open_timeout),
        ..agentserver_mux::Config::default()
    };
    let (control, mut incoming) = Session::new(WsByteStream::new(socket), Mode::Server, mux_config);

    let tunnels = &state.tunnel;
    let (conn_id, drop_now, previous) = {
        let mut inner = tunnels.lock();
        inner.next_conn += 1;
        let conn_id = inner.next_conn;
        inner.log.push(ConnectionRecord {
            sandbox_id: sandbox_id.clone(),
            conn_id,
            connected_at: Instant::now(),
            connected_wall: Utc::now(),
            disconnected_at: None,
            close_reason: None,
            close_code: None,
        });
        let previous = inner.active.insert(
            sandbox_id.clone(),
            Active {
                conn_id,
                control: control.clone(),
            },
        );
        let drop_now = inner.drop_next > 0;
        if drop_now {
            inner.drop_next -= 1;
        }
        (conn_id, drop_now, previous)
    };
    if let Some(prev) = previous {
        tracing::debug!(sandbox_id, "new tunnel replaces the previous one");
        prev.control.close();
    }
    state.set_sandbox_status(&sandbox_id, "running");
    if drop_now {
        control.abort();
    }

    let accept_state = Arc::clone(&state);
    let accept_sandbox = sandbox_id.clone();
    let accept = async move {
        while let Some(stream) = incoming.next().await {
            tokio::spawn(handle_agent_stream(
                stream,
                Arc::clone(&accept_state),
                accept_sandbox.clone(),
                conn_id,
            ));
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = control.closed() => {}
    }
    let reason = control.closed().await;
    let ended = Instant::now();
    // Give the socket a moment to deliver a close frame that raced the session's end.
    let _ = tokio::time::timeout(Duration::from_millis(200), control.finished()).await;
    let code = *close_code.lock().unwrap_or_else(|e| e.into_inner());
    let still_active = {
        let mut inner = tunnels.lock();
        if let Some(rec) = inner.log.iter_mut().find(|c| c.conn_id == conn_id) {
            rec.disconnected_at = Some(ended);
            rec.close_reason = Some(reason.to_string());
            rec.close_code = code;
        }
        let still = inner
            .active
            .get(&sandbox_id)
            .is_some_and(|a| a.conn_id == conn_id);
        if still {
            inner.active.remove(&sandbox_id);
        }
        still
    };
    if still_active {
        state.set_sandbox_status(&sandbox_id, "offline");
    }
    state.notify();
}

/// A stream the agent opened: control streams carry agent info; anything else is logged and
/// closed (the agent opens nothing else).
async fn handle_agent_stream(
    mut stream: Stream,
    state: Arc<MockState>,
    sandbox_id: String,
    conn_id: u64,
) {
    let (ty, _meta) = match read_header(&mut stream).await {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "bad stream header from the agent");
            return;
        }
    };
    if ty != StreamType::Control {
        tracing::warn!(
            stream_type = ty.as_u8(),
            "agent opened a stream that is not a control stream"
        );
        return;
    }
    let mut raw = Vec::new();
    if let Err(e) = (&mut stream).take(MAX_INFO).read_to_end(&mut raw).await {
        tracing::warn!(error = %e, "control stream failed");
        return;
    }
    let json: Option<Value> = serde_json::from_slice(&raw).ok();
    {
        let mut inner = state.tunnel.lock();
        inner
            .infos
            .entry(sandbox_id.clone())
            .or_default()
            .push(AgentInfoRecord {
                conn_id,
                at: Instant::now(),
                received_at: Utc::now(),
                raw: Bytes::from(raw),
                json: json.clone(),
            });
    }
    if let Some(info) = json {
        state.record_agent_info(&sandbox_id, info);
    }
    state.notify();
}
