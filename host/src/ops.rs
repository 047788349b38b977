//! Serving what [`crate::metrics`] knows: the `--metrics-listen` HTTP endpoint (`/metrics`,
//! `/healthz`) and the status socket that `agentserver status` reads.
//!
//! The status socket is `~/.agentserver/status/<pid>.sock` (the directory 0700, the socket
//! 0600): a client connects and reads one JSON document ([`crate::metrics::HostStatus`]),
//! then the host closes the connection. One socket per host process, so several hosts on one
//! state directory each answer; a socket left by a killed host refuses connections and is
//! removed by the next `status`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::metrics::{HostStatus, Metrics};

/// The port `--metrics-listen` uses when given only a host.
pub const DEFAULT_METRICS_PORT: u16 = 9464;

/// Parses a `--metrics-listen` value: `PORT` (on 127.0.0.1), `HOST:PORT`, `[V6]:PORT`, or
/// `HOST` alone (port [`DEFAULT_METRICS_PORT`]). Loopback unless an address is named.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = text.strip_prefix(':')
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, DEFAULT_METRICS_PORT));
    }
    if text == "localhost" {
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            DEFAULT_METRICS_PORT,
        ));
    }
    if let Some(port) = text.strip_prefix("localhost:")
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    Err(format!(
        "`{text}` is not PORT, HOST:PORT or an IP address (e.g. 9464, 127.0.0.1:9464, 0.0.0.0:9464)"
    ))
}

/// The running `/metrics` + `/healthz` endpoint; dropping it stops serving.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves in the background.
    pub async fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get({
                    let metrics = metrics.clone();
                    move || {
                        let metrics = metrics.clone();
                        async move {
                            (
                                [(
                                    header::CONTENT_TYPE,
                                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                                )],
                                metrics.encode(),
                            )
                        }
                    }
                }),
            )
            .route(
                "/healthz",
                axum::routing::get(move || {
                    let metrics = metrics.clone();
                    async move {
                        match metrics.health() {
                            Ok(()) => (StatusCode::OK, "ok\n".to_owned()).into_response(),
                            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"))
                                .into_response(),
                        }
                    }
                }),
            );
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(%err, "the metrics endpoint stopped");
            }
        });
        Ok(Self { addr, task })
    }

    /// The bound address (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `~/.agentserver/status/`: one socket per running host.
pub fn status_dir() -> PathBuf {
    crate::paths::state_dir().join("status")
}

/// The status socket of this process; dropping it stops serving and removes the file.
#[derive(Debug)]
pub struct StatusSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl StatusSocket {
    /// Binds `dir/<pid>.sock` (creating `dir` 0700; the socket is made 0600) and answers each
    /// connection with `status()` as one JSON document.
    pub fn start(
        dir: &Path,
        status: impl Fn() -> HostStatus + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        crate::fsutil::ensure_private_dir(dir)?;
        let path = dir.join(format!("{}.sock", std::process::id()));
        // A socket left by an earlier process with the same pid.
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let status = Arc::new(status);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    // Out of file descriptors or similar: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                };
                let status = status.clone();
                tokio::spawn(async move {
                    let mut doc = serde_json::to_vec(&status()).unwrap_or_default();
                    doc.push(b'\n');
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        conn.write_all(&doc).await?;
                        conn.shutdown().await
                    })
                    .await;
                });
            }
        });
        Ok(Self { path, task })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatusSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asks every host with a socket in `dir` for its status. Sockets nobody answers on (their
/// host was killed) are removed. Returns the documents, oldest process first.
pub async fn query_all(dir: &Path) -> Vec<HostStatus> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut hosts = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("sock") {
            continue;
        }
        match query(&path).await {
            Ok(doc) => hosts.push(doc),
            Err(QueryError::Refused) => {
                let _ = std::fs::remove_file(&path);
            }
            Err(QueryError::Other(err)) => {
                tracing::warn!(path = %path.display(), %err, "cannot read a host's status");
            }
        }
    }
    hosts.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.pid.cmp(&b.pid)));
    hosts
}

enum QueryError {
    Refused,
    Other(String),
}

async fn query(path: &Path) -> Result<HostStatus, QueryError> {
    let conn = match tokio::net::UnixStream::connect(path).await {
        Ok(conn) => conn,
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(QueryError::Refused);
        }
        Err(err) => return Err(QueryError::Other(err.to_string())),
    };
    let mut doc = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        conn.take(16 * 1024 * 1024).read_to_end(&mut doc),
    )
    .await
    .map_err(|_| QueryError::Other("no answer within 5 s".into()))?
    .map_err(|e| QueryError::Other(e.to_string()))?;
    serde_json::from_slice(&doc).map_err(|e| QueryError::Other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!(parse_listen("9100").unwrap().to_string(), "127.0.0.1:9100");
        assert_eq!(parse_listen(":9100").unwrap().to_string(), "127.0.0.1:9100");
        assert_eq!(
            parse_listen("localhost:9100").unwrap().to_string(),
            "127.0.0.1:9100"
        );
        assert_eq!(
            parse_listen("0.0.0.0:9100").unwrap().to_string(),
            "0.0.0.0:9100"
        );
        assert_eq!(
            parse_listen("[::1]:9100").unwrap().to_string(),
            "[::1]:9100"
        );
        assert_eq!(
            parse_listen("10.0.0.5").unwrap().to_string(),
            "10.0.0.5:9464"
        );
        assert!(parse_listen("example.com:80").is_err());
    }
}
