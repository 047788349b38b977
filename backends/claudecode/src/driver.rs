//! Running one task with the `claude` CLI in stream-json mode (spec §9.5).
//!
//! The CLI runs in its own session and process group. Its stdout lines are forwarded as task
//! events byte for byte (control requests from the CLI are answered and not forwarded); the
//! `result` message decides the outcome and closes stdin. Watchdogs end the known upstream
//! hangs: no stdout line for [`idle_timeout`](ClaudeCodeConfig::idle_timeout), and no exit
//! within [`post_result_exit_timeout`](ClaudeCodeConfig::post_result_exit_timeout) after the
//! result.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentserver_plugin_api::{EventSink, FailureKind, Task, TaskOutcome};
use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::config::ClaudeCodeConfig;
use crate::io::{LineItem, read_lines};
use crate::protocol::{claude_args, initialize_request, user_message};
use crate::turn::{LineStep, Turn, final_outcome};
use agentserver_common::process::{
    Detach, Leftover, Scope, StderrTail, StopLadder, collect_tail, isolate, sweep,
};

/// How a task run ended, seen from the process side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ending {
    /// The CLI closed stdout and exited by itself.
    #[default]
    Exited,
    /// The task was cancelled: stdin closed, then SIGTERM and SIGKILL as needed.
    Cancelled,
    /// No stdout line for the idle timeout before a result (stuck mid-turn); killed.
    IdleTimeout,
    /// A result arrived but the CLI did not exit in time afterwards; killed.
    NoExitAfterResult,
    /// The CLI closed stdout without a result and did not exit in time; killed.
    NoExit,
    /// The CLI could not be started.
    SpawnFailed,
}

/// What a task run did besides its outcome (for logs, tests and benchmarks).
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Pid of the CLI, which is also its process group and session id.
    pub pid: Option<u32>,
    /// How it ended.
    pub ending: Ending,
    /// Exit status as text (`exit status: 0`, `signal: 9 (SIGKILL)`), if it was reaped.
    pub exit_status: Option<String>,
    /// Exit code, if it exited normally.
    pub exit_code: Option<i32>,
    /// Signals sent to the process group, in order (`SIGTERM`, `SIGKILL`).
    pub signals_sent: Vec<&'static str>,
    /// Stdout lines forwarded as events.
    pub events: u64,
    /// Empty or whitespace-only stdout lines skipped.
    pub blank_lines: u64,
    /// Stdout lines skipped because they were not a JSON object (or not UTF-8).
    pub invalid_lines: u64,
    /// Stdout lines skipped because they exceeded the length limit.
    pub oversized_lines: u64,
    /// Control requests from the CLI answered (not forwarded).
    pub control_requests: u64,
    /// Whether a `result` message was seen.
    pub saw_result: bool,
    /// Bytes the CLI wrote to stderr.
    pub stderr_bytes: u64,
    /// Processes of the group or session still alive after the CLI was reaped, killed then.
    pub leftovers_killed: usize,
    /// Processes of the task's [`Scope`] still alive after that (they left the group and the
    /// session: a daemonized MCP server child), killed then.
    pub scope_leftovers: Vec<Leftover>,
}

/// A task's outcome plus what the run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The outcome to report to the server.
    pub outcome: TaskOutcome,
    /// Details of the run.
    pub stats: RunStats,
}

/// Process groups of running tasks, so that shutdown can kill them.
pub(crate) type Registry = Arc<Mutex<HashSet<u32>>>;

/// Runs one task to its end.
pub(crate) async fn run_task(
    bin: &Path,
    config: &ClaudeCodeConfig,
    task: &Task,
    events: &EventSink,
    cancel: &CancellationToken,
    registry: &Registry,
) -> RunReport {
    let mut stats = RunStats::default();
    let workdir = if task.workdir.is_empty() {
        config.workdir.clone()
    } else {
        PathBuf::from(&task.workdir)
    };
    if !workdir.is_dir() {
        stats.ending = Ending::SpawnFailed;
        return RunReport {
            outcome: TaskOutcome::failed(
                FailureKind::System,
                format!("work directory {} does not exist", workdir.display()),
            ),
            stats,
        };
    }
    if cancel.is_cancelled() {
        stats.ending = Ending::Cancelled;
        return RunReport {
            outcome: TaskOutcome::cancelled("task cancelled before claude started"),
            stats,
        };
    }

    let mut cmd = Command::new(bin);
    cmd.args(claude_args(task))
        .current_dir(&workdir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if config.clear_env {
        cmd.env_clear();
    }
    cmd.envs(config.env.iter().map(|(k, v)| (k, v)));
    // A session (and group) of its own, dying with the host; everything it starts is tagged
    // with the task's scope (and in its cgroup where there is one).
    isolate(cmd.as_std_mut(), Detach::Session);
    let scope = Scope::task(&task.task_id);
    scope.apply(cmd.as_std_mut());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(err) => {
            stats.ending = Ending::SpawnFailed;
            return RunReport {
                outcome: TaskOutcome::failed(
                    FailureKind::System,
                    format!("could not start {}: {err}", bin.display()),
                ),
                stats,
            };
        }
    };
    let pid = child.id().unwrap_or(0);
    stats.pid = Some(pid);
    crate::lock(registry).insert(pid);
    tracing::info!(task_id = %task.task_id, pid, bin = %bin.display(), workdir = %workdir.display(), "claude started");

    let outcome = supervise(&mut child, pid, config, task, events, cancel, &mut stats).await;
    crate::lock(registry).remove(&pid);
    // claude was awaited (or is past saving): whatever of the task still lives is a leftover.
    drop(child);
    stats.scope_leftovers = sweep_scope(scope).await;
    tracing::info!(
        task_id = %task.task_id,
        pid,
        ending = ?stats.ending,
        status = ?outcome.status,
        events = stats.events,
        skipped_blank = stats.blank_lines,
        skipped_invalid = stats.invalid_lines,
        skipped_oversized = stats.oversized_lines,
        control_requests = stats.control_requests,
        "claude finished"
    );
    RunReport { outcome, stats }
}

/// Sweeps a task's scope off the runtime's workers (it may wait a little for the killed).
pub(crate) async fn sweep_scope(scope: Scope) -> Vec<Leftover> {
    tokio::task::spawn_blocking(move || scope.sweep())
        .await
        .unwrap_or_default()
}

/// Writes queued stdin lines until the sender is dropped, then closes stdin.
async fn write_stdin(mut stdin: ChildStdin, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(mut line) = rx.recv().await {
        line.push('\n');
        if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
    let _ = stdin.shutdown().await;
}

async fn supervise(
    child: &mut Child,
    pid: u32,
    config: &ClaudeCodeConfig,
    task: &Task,
    events: &EventSink,
    cancel: &CancellationToken,
    stats: &mut RunStats,
) -> TaskOutcome {
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three pipes were requested");
    };
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(write_stdin(stdin, stdin_rx));
    let _ = stdin_tx.send(initialize_request(task));
    let _ = stdin_tx.send(user_message(&task.prompt));
    let mut stdin_tx = Some(stdin_tx);

    let ring = Arc::new(Mutex::new(StderrTail::new(config.stderr_ring_bytes)));
    let stderr_task = tokio::spawn(collect_tail(stderr, ring.clone(), "claude stderr"));
    let (line_tx, mut line_rx) = mpsc::channel::<LineItem>(16);
    let reader = tokio::spawn(read_lines(stdout, config.max_line_bytes, line_tx));

    let mut turn = Turn::new(Instant::now());
    let mut sink_open = true;
    let mut wait_failed = false;

    let ending = 'main: loop {
        let item = tokio::select! {
            biased;
            _ = cancel.cancelled() => break 'main Ending::Cancelled,
            status = child.wait(), if turn.exited.is_none() && !wait_failed => {
                match status {
                    Ok(status) => {
                        tracing::debug!(pid, %status, "claude exited");
                        turn.on_exit(status, Instant::now());
                    }
                    Err(err) => {
                        tracing::warn!(%err, "waiting for claude failed");
                        wait_failed = true;
                    }
                }
                continue;
            }
            item = timeout_at(turn.deadline(config), line_rx.recv()) => item,
        };
        let item = match item {
            Err(_elapsed) => break turn.on_quiet(),
            Ok(None) => {
                tracing::debug!(pid, "claude closed stdout");
                break wait_after_stdout_closed(child, &mut turn, cancel, config).await;
            }
            Ok(Some(item)) => item,
        };
        let event = match turn.on_line(item, Instant::now(), stats) {
            LineStep::Skip => continue,
            LineStep::Answer(answer) => {
                if let Some(tx) = stdin_tx.as_ref() {
                    let _ = tx.send(answer);
                }
                continue;
            }
            LineStep::Emit { event, close_stdin } => {
                if close_stdin {
                    tracing::debug!(pid, "result received; closing claude's stdin");
                    stdin_tx = None;
                }
                event
            }
        };
        if sink_open {
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if turn.result.is_none() => break 'main Ending::Cancelled,
                delivered = events.emit(event) => {
                    if !delivered {
                        tracing::debug!("the host stopped listening for events");
                        sink_open = false;
                    }
                }
            }
        }
    };
    stats.ending = ending;

    // Wind down: close stdin, stop the process (group) as needed.
    drop(stdin_tx);
    let status = match ending {
        Ending::Exited => turn.exited.map(|(s, _)| s),
        Ending::Cancelled => {
            writer.abort();
            terminate(child, pid, Some(config.stdin_close_grace), config, stats).await
        }
        Ending::IdleTimeout | Ending::NoExitAfterResult | Ending::NoExit => {
            writer.abort();
            terminate(child, pid, None, config, stats).await
        }
        Ending::SpawnFailed => None,
    };
    writer.abort();
    let _ = writer.await;
    stats.leftovers_killed = sweep(pid);
    if stats.leftovers_killed > 0 {
        tracing::info!(
            pid,
            count = stats.leftovers_killed,
            "killed processes left in claude's group"
        );
    }
    reader.abort();
    let _ = reader.await;
    let _ = timeout(Duration::from_millis(500), stderr_task).await;
    stats.stderr_bytes = crate::lock(&ring).total();
    if let Some(status) = status {
        stats.exit_status = Some(status.to_string());
        stats.exit_code = status.code();
    }

    let stderr_text = {
        let tail = crate::lock(&ring).tail(config.stderr_in_failure_bytes);
        String::from_utf8_lossy(&tail).trim().to_owned()
    };
    if turn.result.is_some() && ending == Ending::NoExitAfterResult {
        tracing::warn!(
            pid,
            "claude did not exit after its result; its process group was killed"
        );
    }
    final_outcome(
        ending,
        turn.result.as_ref(),
        turn.rate_limit.as_ref(),
        stats.exit_status.as_deref(),
        &stderr_text,
        config.idle_timeout,
    )
}

/// stdout closed: waits (bounded) for the exit; a cancellation still counts until the result
/// came.
async fn wait_after_stdout_closed(
    child: &mut Child,
    turn: &mut Turn,
    cancel: &CancellationToken,
    config: &ClaudeCodeConfig,
) -> Ending {
    if turn.exited.is_some() {
        return Ending::Exited;
    }
    tokio::select! {
        biased;
        _ = cancel.cancelled(), if turn.result.is_none() => Ending::Cancelled,
        status = timeout(config.post_result_exit_timeout, child.wait()) => match status {
            Ok(Ok(status)) => {
                turn.on_exit(status, Instant::now());
                Ending::Exited
            }
            _ if turn.result.is_some() => Ending::NoExitAfterResult,
            _ => Ending::NoExit,
        },
    }
}

/// Stops the CLI: optionally waits `first_wait` (stdin already closed), then SIGTERM to the
/// group, waits the term grace, then SIGKILL to the group. Returns the exit status if reaped.
async fn terminate(
    child: &mut Child,
    pgid: u32,
    first_wait: Option<Duration>,
    config: &ClaudeCodeConfig,
    stats: &mut RunStats,
) -> Option<ExitStatus> {
    if let Some(wait) = first_wait
        && let Ok(status) = timeout(wait, child.wait()).await
    {
        return status.ok();
    }
    let ladder = StopLadder {
        signal: Signal::SIGTERM,
        grace: config.term_grace,
        kill_wait: Duration::from_secs(10),
    };
    let stopped = ladder.stop(child, pgid).await;
    stats
        .signals_sent
        .extend(stopped.signals.iter().map(|s| s.as_str()));
    stopped.status
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
