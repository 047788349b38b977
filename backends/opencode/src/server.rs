//! The `opencode serve` child process: start, readiness, stop and the supervisor that restarts
//! it when it dies while the host runs.
//!
//! Readiness follows spec §11 with one change (see `docs/decisions/opencode.md`): the server
//! is ready once it printed `opencode server listening on http://…` **and** answered
//! `GET /global/health`; no request is sent before that line, because opencode can accept a
//! connection and then hang it for an hour while it is still starting.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentserver_common::backoff::{Backoff, BackoffPolicy};
use agentserver_common::process::{
    Detach, Leftover, Scope, StderrTail, StopLadder, isolate, kill_group, sweep,
};
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::api::Api;
use crate::config::OpencodeConfig;

/// Where the backend's opencode server stands.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerState {
    /// Nothing started yet.
    NotStarted,
    /// The first start is under way.
    Starting,
    /// The server answers at `base`. `generation` grows by one with every (re)start.
    Ready {
        /// Base URL, e.g. `http://127.0.0.1:4096`.
        base: Url,
        /// 0 for a server the backend did not start, then 1, 2, … per start.
        generation: u64,
    },
    /// The server the backend started died; a new one is being started.
    Restarting {
        /// Why the last one is gone (or why the last restart failed).
        reason: String,
    },
    /// The first start failed (the error is also returned by `start`).
    Failed(String),
    /// Stopped by `shutdown`.
    Stopped,
}

/// Why `opencode serve` could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The binary could not be executed.
    #[error("could not run {bin}: {source}")]
    Spawn {
        /// The binary.
        bin: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It exited before it printed its "listening" line.
    #[error("opencode serve exited before listening ({status}){stderr}")]
    Exited {
        /// Exit status.
        status: String,
        /// The last lines it printed, prefixed with `: ` (or empty).
        stderr: String,
    },
    /// No "listening" line within the ready timeout.
    #[error("opencode serve printed no \"listening\" line within {0:?}")]
    NoListeningLine(Duration),
    /// It printed the line but `/global/health` did not answer in time.
    #[error("opencode serve at {base} did not answer /global/health within {timeout:?}: {last}")]
    Unhealthy {
        /// The URL from the line.
        base: Url,
        /// The ready timeout.
        timeout: Duration,
        /// The last health error.
        last: String,
    },
    /// Something else answers on the port.
    #[error("port {port} is in use by something that does not answer like opencode ({detail})")]
    PortTaken {
        /// The port.
        port: u16,
        /// What the probe saw.
        detail: String,
    },
    /// `--opencode-url` (or the URL built from the port) is not a URL.
    #[error("invalid opencode URL {url:?}: {reason}")]
    InvalidUrl {
        /// What was given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The backend is shutting down.
    #[error("stopped while starting")]
    Stopped,
}

/// Extracts the URL from `opencode server listening on http://127.0.0.1:4096` (ANSI colour
/// codes and trailing punctuation tolerated).
pub fn parse_listening_line(line: &str) -> Option<Url> {
    let clean = strip_ansi(line);
    let idx = clean.find("listening on")?;
    let rest = &clean[idx + "listening on".len()..];
    let start = rest.find("http://").or_else(|| rest.find("https://"))?;
    let url: String = rest[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let url = url.trim_end_matches(['.', ',', ';']);
    Url::parse(url).ok().filter(|u| u.host().is_some())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A started, ready `opencode serve`.
pub(crate) struct Running {
    pub child: Child,
    pub pid: u32,
    pub base: Url,
    pub version: String,
}

/// Lines of the child's output kept for error messages, and the characters kept of each.
const TAIL_LINES: usize = 20;
const TAIL_LINE_CHARS: usize = 500;

/// The last [`TAIL_LINES`] lines a child printed (each cut to [`TAIL_LINE_CHARS`]), for error
/// messages: a [`StderrTail`] large enough to always hold them whole.
#[derive(Clone)]
struct Tail(Arc<Mutex<StderrTail>>);

impl Default for Tail {
    fn default() -> Self {
        // One line more than kept, so the line the ring cuts is never one of the last 20.
        let line_bytes = TAIL_LINE_CHARS * 4 + 1;
        Self(Arc::new(Mutex::new(StderrTail::new(
            (TAIL_LINES + 1) * line_bytes,
        ))))
    }
}

impl Tail {
    fn push(&self, line: &str) {
        let mut tail = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tail.push_line(line, TAIL_LINE_CHARS);
    }

    fn render(&self) -> String {
        let lines = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_lines(TAIL_LINES);
        if lines.is_empty() {
            String::new()
        } else {
            format!(": {}", lines.join(" | "))
        }
    }
}

fn log_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    reader: R,
    pid: u32,
    stream: &'static str,
    tail: Tail,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tail.push(&line);
            tracing::debug!(target: "opencode", pid, stream, "{line}");
        }
    });
}

fn command(config: &OpencodeConfig, scope: &Scope) -> Command {
    let mut cmd = Command::new(&config.opencode_bin);
    cmd.arg("serve")
        .arg("--hostname")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(config.opencode_port.to_string())
        .current_dir(&config.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    // Its own process group, SIGINT/SIGTERM at their defaults (an ignored disposition, as a
    // host started in the background by a shell has, survives exec and would make opencode deaf
    // to the SIGINT that stops it) and killed with the host (`PR_SET_PDEATHSIG`), so a 600 MB
    // server is never left behind.
    isolate(cmd.as_std_mut(), Detach::Group);
    if config.clear_env {
        cmd.env_clear();
    }
    // Never hand down a password the user did not configure for this server.
    cmd.env_remove("OPENCODE_SERVER_PASSWORD");
    for (k, v) in &config.env {
        cmd.env(k, v);
    }
    if let Some(token) = config.token() {
        cmd.env("OPENCODE_SERVER_PASSWORD", token.expose());
    }
    // Everything it and its tools start is tagged with the server's shared scope.
    scope.apply(cmd.as_std_mut());
    cmd
}

/// Starts `opencode serve` and waits until it is ready (or `managed.stop` fires). The pid is
/// recorded in `managed` right after the spawn (under its spawn lock, so that an orphan sweep
/// never mistakes the new server for an orphan), so that it can be killed whatever happens
/// next.
pub(crate) async fn spawn(
    config: &OpencodeConfig,
    api: &Api,
    managed: &Managed,
) -> Result<Running, StartError> {
    let stop = &managed.stop;
    let mut child = {
        let _spawning = managed.lock_spawn();
        let child =
            command(config, &managed.scope)
                .spawn()
                .map_err(|source| StartError::Spawn {
                    bin: config.opencode_bin.display().to_string(),
                    source,
                })?;
        managed.set_pid(child.id());
        child
    };
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, bin = %config.opencode_bin.display(), port = config.opencode_port, "starting opencode serve");
    let tail = Tail::default();
    if let Some(stderr) = child.stderr.take() {
        log_lines(stderr, pid, "stderr", tail.clone());
    }
    let stdout = child.stdout.take();
    let result = tokio::select! {
        r = wait_ready(config, api, &mut child, stdout, pid, &tail) => r,
        _ = stop.cancelled() => Err(StartError::Stopped),
    };
    match result {
        Ok((base, version)) => {
            tracing::info!(pid, %base, %version, "opencode serve is ready");
            Ok(Running {
                child,
                pid,
                base,
                version,
            })
        }
        Err(e) => {
            kill_group(pid, Signal::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            drop(child);
            sweep_scope(&managed.scope).await;
            Err(e)
        }
    }
}

async fn wait_ready(
    config: &OpencodeConfig,
    api: &Api,
    child: &mut Child,
    stdout: Option<tokio::process::ChildStdout>,
    pid: u32,
    tail: &Tail,
) -> Result<(Url, String), StartError> {
    let deadline = tokio::time::Instant::now() + config.ready_timeout;
    let Some(stdout) = stdout else {
        return Err(StartError::NoListeningLine(config.ready_timeout));
    };
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            _ = tokio::time::sleep_until(deadline) => {
                return Err(StartError::NoListeningLine(config.ready_timeout));
            }
        };
        match line {
            Ok(Some(line)) => {
                tail.push(&line);
                tracing::debug!(target: "opencode", pid, stream = "stdout", "{line}");
                if let Some(url) = parse_listening_line(&line) {
                    break url;
                }
            }
            Ok(None) | Err(_) => {
                let status = match tokio::time::timeout(Duration::from_secs(5), child.wait()).await
                {
                    Ok(Ok(s)) => s.to_string(),
                    _ => "still running, stdout closed".to_owned(),
                };
                // Give the stderr reader a moment to collect the last lines.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(StartError::Exited {
                    status,
                    stderr: tail.render(),
                });
            }
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    let rest = lines.into_inner();
    log_lines(rest, pid, "stdout", tail.clone());

    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(StartError::Exited {
                status: status.to_string(),
                stderr: tail.render(),
            });
        }
        let last = match api.health(&base, config.health_timeout).await {
            Ok(h) if h.healthy => return Ok((base, h.version)),
            Ok(h) => format!("healthy: false (version {})", h.version),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(StartError::Unhealthy {
                base,
                timeout: config.ready_timeout,
                last,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGINT to the group, then SIGKILL after `grace` (spec §11).
pub(crate) async fn stop_child(child: &mut Child, pid: u32, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        sweep(pid);
        return;
    }
    tracing::info!(pid, "stopping opencode serve");
    let ladder = StopLadder {
        signal: Signal::SIGINT,
        grace,
        kill_wait: Duration::from_secs(5),
    };
    if ladder.stop(child, pid).await.killed() {
        tracing::warn!(
            pid,
            ?grace,
            "opencode serve did not stop on SIGINT; killed it"
        );
    }
    // Tools it started may still run in its group.
    sweep(pid);
}

/// Sweeps the whole scope (every server of it awaited) off the runtime's workers.
pub(crate) async fn sweep_scope(scope: &Scope) -> Vec<Leftover> {
    let scope = scope.clone();
    tokio::task::spawn_blocking(move || scope.sweep())
        .await
        .unwrap_or_default()
}

/// State shared by the backend and the supervisor of a server the backend started.
pub(crate) struct Managed {
    pub state: watch::Sender<ServerState>,
    /// Pid (= process group) of the current child, for emergency kills.
    pub pid: Mutex<Option<u32>>,
    pub stop: CancellationToken,
    pub restarts: AtomicU64,
    pub version: Mutex<String>,
    /// The scope every server this backend starts, and all it starts, is tagged with.
    pub scope: Scope,
    /// Held from a spawn until its pid is recorded, and by an orphan sweep.
    spawning: Mutex<()>,
    /// Tasks running now; the last one to end sweeps the scope's orphans.
    pub tasks: std::sync::atomic::AtomicUsize,
}

impl Managed {
    pub fn new() -> Self {
        Self {
            state: watch::Sender::new(ServerState::NotStarted),
            pid: Mutex::new(None),
            stop: CancellationToken::new(),
            restarts: AtomicU64::new(0),
            version: Mutex::new(String::new()),
            scope: Scope::shared("opencode"),
            spawning: Mutex::new(()),
            tasks: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    fn lock_spawn(&self) -> std::sync::MutexGuard<'_, ()> {
        self.spawning.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Kills what the server's tools daemonized (processes of the scope reparented to the
    /// host), keeping the running server; its own children (MCP servers) stay.
    pub fn sweep_orphans(&self) -> Vec<Leftover> {
        let _spawning = self.lock_spawn();
        let keep: Vec<u32> = self.current_pid().into_iter().collect();
        self.scope.sweep_orphans(&keep)
    }

    pub fn set_pid(&self, pid: Option<u32>) {
        *self.pid.lock().unwrap_or_else(|p| p.into_inner()) = pid;
    }

    pub fn current_pid(&self) -> Option<u32> {
        *self.pid.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_version(&self, version: &str) {
        *self.version.lock().unwrap_or_else(|p| p.into_inner()) = version.to_owned();
    }

    /// Kills the current child's group at once (used when the backend is dropped).
    pub fn kill_now(&self) {
        if let Some(pid) = self.current_pid() {
            kill_group(pid, Signal::SIGKILL);
        }
    }
}

/// Watches a started server until `shared.stop` fires: stops it gracefully then, restarts it
/// with backoff whenever it dies before.
pub(crate) async fn supervise(
    shared: Arc<Managed>,
    config: Arc<OpencodeConfig>,
    api: Api,
    mut running: Running,
    mut generation: u64,
) {
    // No jitter (one server, one host); a server that lived longer than the cap starts the
    // schedule over.
    let mut backoff = Backoff::new(BackoffPolicy {
        reset_after: config.restart_backoff_max,
        ..BackoffPolicy::capped(config.restart_backoff_initial, config.restart_backoff_max)
            .without_jitter()
    });
    loop {
        let started = Instant::now();
        let status = tokio::select! {
            status = running.child.wait() => status,
            _ = shared.stop.cancelled() => {
                stop_child(&mut running.child, running.pid, config.stop_grace).await;
                shared.set_pid(None);
                sweep_scope(&shared.scope).await;
                shared.state.send_replace(ServerState::Stopped);
                return;
            }
        };
        // Leftovers of its group (tools it was running) go with it, and so does what left the
        // group (no server of the scope runs now: all of it is left over).
        sweep(running.pid);
        shared.set_pid(None);
        sweep_scope(&shared.scope).await;
        if shared.stop.is_cancelled() {
            shared.state.send_replace(ServerState::Stopped);
            return;
        }
        let mut delay = backoff.next_delay_after(started.elapsed());
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(
            pid = running.pid,
            %status,
            restart_in = ?delay,
            "opencode serve exited unexpectedly; restarting it"
        );
        shared.state.send_replace(ServerState::Restarting {
            reason: format!("opencode serve exited unexpectedly ({status})"),
        });
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shared.stop.cancelled() => {
                    shared.state.send_replace(ServerState::Stopped);
                    return;
                }
            }
            match spawn(&config, &api, &shared).await {
                Ok(r) => {
                    generation += 1;
                    let n = shared.restarts.fetch_add(1, Ordering::SeqCst) + 1;
                    shared.set_version(&r.version);
                    tracing::info!(pid = r.pid, base = %r.base, restarts = n, "opencode serve restarted");
                    shared.state.send_replace(ServerState::Ready {
                        base: r.base.clone(),
                        generation,
                    });
                    running = r;
                    break;
                }
                Err(StartError::Stopped) => {
                    shared.set_pid(None);
                    shared.state.send_replace(ServerState::Stopped);
                    return;
                }
                Err(e) => {
                    shared.set_pid(None);
                    delay = backoff.next_delay();
                    tracing::error!(error = %e, retry_in = ?delay, "restarting opencode serve failed");
                    shared.state.send_replace(ServerState::Restarting {
                        reason: e.to_string(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines() {
        assert_eq!(
            parse_listening_line("opencode server listening on http://127.0.0.1:4096")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:4096/"
        );
        assert_eq!(
            parse_listening_line(
                "\u{1b}[32mopencode server listening on http://127.0.0.1:38123\u{1b}[0m "
            )
            .unwrap()
            .port(),
            Some(38123)
        );
        assert!(parse_listening_line("Warning: OPENCODE_SERVER_PASSWORD is not set").is_none());
        assert!(parse_listening_line("listening on nothing").is_none());
    }
}
