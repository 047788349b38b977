//! Starting `opencode serve` with stand-ins for the binary (`--opencode-bin`): shell scripts
//! that print opencode's "listening" line late, never, or exit first. The "server" they
//! announce is a listener of this test that is up from the start and records every
//! connection, so a request sent before the line (which the real opencode can hang for an
//! hour) would be seen.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentserver_backend_opencode::{OpencodeBackend, OpencodeConfig, ServerState};
/// Whether a pid is a live process (not a zombie): the process owner's.
use agentserver_common::process::is_alive as alive;
use agentserver_plugin_api::Backend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(20);
/// How long the stand-in takes to print its "listening" line.
const LINE_DELAY: Duration = Duration::from_millis(1500);
const STANDIN_VERSION: &str = "0.0.0-standin";

/// One connection the stand-in server accepted: whether the "listening" line was printed by
/// then.
type Accepted = Arc<Mutex<Vec<bool>>>;

/// A loopback server answering every request like opencode's `/global/health`; it records,
/// per connection, whether `marker` (written by the stand-in just before it prints the
/// "listening" line) existed when the connection arrived.
async fn health_server(marker: PathBuf) -> (u16, Accepted) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted: Accepted = Arc::default();
    let log = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            log.lock().unwrap().push(marker.exists());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!(r#"{{"healthy":true,"version":"{STANDIN_VERSION}"}}"#);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (port, accepted)
}

/// Writes an executable stand-in script into `dir`.
fn script(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("opencode-standin");
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn config(bin: PathBuf, dir: &Path) -> OpencodeConfig {
    OpencodeConfig {
        opencode_bin: bin,
        // 0: no probe of the port before the start; the URL comes from the line.
        opencode_port: 0,
        workdir: dir.to_path_buf(),
        ..OpencodeConfig::default()
    }
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("the stand-in wrote no pid to {}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_before_the_listening_line() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("line-printed");
    let (port, accepted) = health_server(marker.clone()).await;
    let bin = script(
        dir.path(),
        &format!(
            r#"echo "$$" > '{pid}'
echo "$@" > '{args}'
echo "opencode is starting (stand-in)"
sleep {delay}
: > '{marker}'
echo "opencode server listening on http://127.0.0.1:{port}"
exec sleep 60
"#,
            pid = dir.path().join("pid").display(),
            args = dir.path().join("args").display(),
            delay = LINE_DELAY.as_secs_f64(),
            marker = marker.display(),
        ),
    );
    let backend = OpencodeBackend::new(config(bin, dir.path()));

    let started = Instant::now();
    tokio::time::timeout(LIMIT, backend.start())
        .await
        .expect("start ended in time")
        .expect("the stand-in starts");
    let took = started.elapsed();
    assert!(took >= LINE_DELAY, "ready after {took:?}, before the line");
    let pid = read_pid(&dir.path().join("pid"));
    assert_eq!(backend.server_pid(), Some(pid));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("args")).unwrap(),
        "serve --hostname 127.0.0.1 --port 0\n"
    );
    // The URL (and so the port) came from the line.
    assert_eq!(
        backend.base_url().map(|u| u.to_string()),
        Some(format!("http://127.0.0.1:{port}/"))
    );
    let seen = accepted.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the health check never connected");
    assert!(
        seen.iter().all(|&after_line| after_line),
        "a connection was made before the listening line: {seen:?}"
    );
    assert_eq!(
        backend.opencode_version().await.as_deref(),
        Some(STANDIN_VERSION)
    );

    backend.shutdown().await;
    assert_eq!(backend.state(), ServerState::Stopped);
    // Stopped and reaped before `shutdown` returned.
    assert!(!alive(pid), "the stand-in {pid} is still running");
}

#[tokio::test]
async fn exiting_before_the_listening_line_fails_start_with_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        "echo 'opencode is starting (stand-in)'\necho 'Error: cannot read config BROKEN-7' >&2\nexit 3\n",
    );
    let backend = OpencodeBackend::new(config(bin, dir.path()));
    let started = Instant::now();
    let err = tokio::time::timeout(LIMIT, backend.start())
        .await
        .expect("start ended in time")
        .unwrap_err()
        .to_string();
    // At once, not after the 30 s ready timeout.
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    assert!(err.contains("exited before listening"), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(err.contains("cannot read config BROKEN-7"), "{err}");
    assert!(matches!(backend.state(), ServerState::Failed(_)));
    assert_eq!(backend.server_pid(), None);
    // Later callers get the same error; nothing is restarted.
    let again = backend.start().await.unwrap_err().to_string();
    assert_eq!(again, err);
}

#[tokio::test]
async fn no_listening_line_in_time_fails_start_and_kills_it() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(
        dir.path(),
        &format!(
            "echo \"$$\" > '{}'\necho 'opencode is starting (stand-in)'\nexec sleep 60\n",
            dir.path().join("pid").display()
        ),
    );
    let mut config = config(bin, dir.path());
    config.ready_timeout = Duration::from_millis(3000);
    let backend = OpencodeBackend::new(config);
    let err = tokio::time::timeout(LIMIT, backend.start())
        .await
        .expect("start ended in time")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no \"listening\" line within 3s"), "{err}");
    let pid = read_pid(&dir.path().join("pid"));
    // Killed and reaped before `start` returned.
    assert!(!alive(pid), "the stand-in {pid} was left running");
    assert!(matches!(backend.state(), ServerState::Failed(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_sigint_is_killed_after_the_stop_grace() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("line-printed");
    let (port, _accepted) = health_server(marker.clone()).await;
    // SIGINT ignored (and inherited as ignored across `exec`): only SIGKILL stops it.
    let bin = script(
        dir.path(),
        &format!(
            r#"trap '' INT
echo "$$" > '{pid}'
: > '{marker}'
echo "opencode server listening on http://127.0.0.1:{port}"
exec sleep 60
"#,
            pid = dir.path().join("pid").display(),
            marker = marker.display(),
        ),
    );
    let mut config = config(bin, dir.path());
    config.stop_grace = Duration::from_millis(800);
    let backend = OpencodeBackend::new(config);
    tokio::time::timeout(LIMIT, backend.start())
        .await
        .expect("start ended in time")
        .expect("the stand-in starts");
    let pid = read_pid(&dir.path().join("pid"));
    assert!(alive(pid));

    let stopping = Instant::now();
    tokio::time::timeout(LIMIT, backend.shutdown())
        .await
        .expect("shutdown ends");
    let took = stopping.elapsed();
    assert!(!alive(pid), "the stand-in survived the shutdown");
    assert!(
        took >= Duration::from_millis(700),
        "it was SIGINT that stopped it after {took:?}, not SIGKILL"
    );
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
}
