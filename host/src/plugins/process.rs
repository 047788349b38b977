//! Out-of-process native plugins: the library is loaded by a child process of the host
//! (`agentserver plugin-host LIB`, a hidden subcommand), one child per task, spoken to over its
//! stdin/stdout with length-prefixed JSON frames that carry the same calls as the C ABI.
//!
//! A frame is a big-endian `u32` length and that many bytes of JSON ([`ToChild`] or
//! [`FromChild`]), at most [`MAX_FRAME`] bytes. The child sends [`FromChild::Hello`] (or
//! [`FromChild::LoadFailed`]) as soon as it has loaded and checked the library; the parent sends
//! one [`ToChild::Execute`]; the child streams events and log lines and ends with
//! [`FromChild::Outcome`]. [`ToChild::Cancel`] sets the flag the plugin polls;
//! [`ToChild::EventsClosed`] makes `emit_event` return 0. The child writes frames with blocking
//! writes and the parent stops reading while the task's event channel is full, so a flooding
//! plugin waits on the pipe (backpressure) and memory stays bounded.
//!
//! The child runs in its own process group, gets `SIGKILL` when the host dies
//! (`PR_SET_PDEATHSIG` on Linux) and exits when its stdin closes. A crash (signal, `exit`, a
//! broken frame) fails only its task, as a `system` failure naming the signal or exit status;
//! the next task starts a fresh child. After cancellation or the deadline plus the grace
//! period, the child's process group is killed: unlike an in-process call, nothing is left
//! running. The child runs in the task's `Scope` (environment tag, and cgroup where there is
//! one), swept once it was reaped, so what the plugin daemonized goes too.

use std::ffi::{c_char, c_void};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentserver_plugin_api::ffi::{AgentserverHost, PluginDescription};
use agentserver_plugin_api::{
    Backend, BackendInfo, CancellationToken, EventSink, FailureKind, SessionType, Task, TaskEvent,
    TaskOutcome,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::native::{self, log_line, normalise};
use super::{DiscoveredPlugin, LoadedPlugin, Permissions, PluginError, PluginOptions};

/// The hidden subcommand of the `agentserver` binary that hosts one native plugin.
pub const PLUGIN_HOST_COMMAND: &str = "plugin-host";

/// The largest frame either side accepts (a task, an event, an outcome), in bytes.
pub const MAX_FRAME: usize = 256 << 20;

/// How long a child may take to exit after sending its outcome, or to close its pipe after it
/// exited, before its process group is killed.
const EXIT_WAIT: Duration = Duration::from_secs(5);

/// Parent → child.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToChild {
    /// Run this task (its JSON text, as the C ABI passes it).
    Execute {
        /// The task JSON.
        task: String,
    },
    /// The task is cancelled (or its deadline passed): `is_cancelled` returns 1 from now on.
    Cancel,
    /// The host no longer listens to events: `emit_event` returns 0 from now on.
    EventsClosed,
}

/// Child → parent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FromChild {
    /// The library loaded and passed every check.
    Hello {
        /// The API version in the plugin's vtable.
        api_version: String,
        /// What `describe` returned.
        description: PluginDescription,
    },
    /// The library could not be loaded or described.
    LoadFailed {
        /// The loader's error.
        reason: String,
    },
    /// One event (JSON text, already checked to be JSON).
    Event {
        /// The event JSON.
        json: String,
    },
    /// One log line.
    Log {
        /// `LOG_*` level.
        level: i32,
        /// The text.
        message: String,
    },
    /// `execute` returned this text (`None`: NULL).
    Outcome {
        /// The outcome JSON.
        json: Option<String>,
    },
}

fn frame<T: Serialize>(msg: &T) -> std::io::Result<Vec<u8>> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {} bytes exceeds the limit of {MAX_FRAME}",
            body.len()
        )));
    }
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn check_len(len: usize) -> std::io::Result<()> {
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes exceeds the limit of {MAX_FRAME}"
        )));
    }
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
fn read_frame_sync<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    check_len(len)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(serde_json::from_slice(&body)?))
}

async fn read_frame(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<Option<FromChild>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    check_len(len)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

// ---------------------------------------------------------------------------------------------
// The child: `agentserver plugin-host LIB`.

/// What the child's C callbacks share.
struct ChildState {
    out: Mutex<std::fs::File>,
    cancelled: AtomicBool,
    closed: AtomicBool,
}

impl ChildState {
    fn send(&self, msg: &FromChild) -> std::io::Result<()> {
        let bytes = frame(msg)?;
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.write_all(&bytes)?;
        out.flush()
    }
}

use agentserver_plugin_api::ffi::EMIT_INVALID;

unsafe extern "C" fn child_emit_event(ctx: *mut c_void, json: *const c_char, len: usize) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() || json.is_null() {
            return 0;
        }
        // SAFETY: `ctx` is the `ChildState` that outlives the call; `json` points to `len`
        // bytes owned by the plugin for this call.
        let (state, bytes) = unsafe {
            (
                &*ctx.cast::<ChildState>(),
                std::slice::from_raw_parts(json.cast::<u8>(), len),
            )
        };
        if state.closed.load(Ordering::Acquire) {
            return 0;
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            return EMIT_INVALID;
        };
        if serde_json::from_str::<&serde_json::value::RawValue>(text).is_err() {
            return EMIT_INVALID;
        }
        let msg = FromChild::Event { json: text.into() };
        match state.send(&msg) {
            Ok(()) => 1,
            Err(_) => {
                state.closed.store(true, Ordering::Release);
                0
            }
        }
    }));
    result.unwrap_or(0)
}

unsafe extern "C" fn child_log(ctx: *mut c_void, level: i32, message: *const c_char, len: usize) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if ctx.is_null() || message.is_null() {
            return;
        }
        // SAFETY: as in `child_emit_event`.
        let (state, bytes) = unsafe {
            (
                &*ctx.cast::<ChildState>(),
                std::slice::from_raw_parts(message.cast::<u8>(), len),
            )
        };
        let message = String::from_utf8_lossy(bytes).into_owned();
        let _ = state.send(&FromChild::Log { level, message });
    }));
}

unsafe extern "C" fn child_is_cancelled(ctx: *mut c_void) -> i32 {
    if ctx.is_null() {
        return 1;
    }
    // SAFETY: as in `child_emit_event`.
    let state = unsafe { &*ctx.cast::<ChildState>() };
    i32::from(state.cancelled.load(Ordering::Acquire))
}

/// The body of `agentserver plugin-host LIB`: loads the library, says hello on stdout, runs
/// one task and exits. Returns the process exit code. The protocol uses a private copy of
/// stdout; the plugin's own writes to stdout go to stderr.
pub fn serve(library: &Path) -> u8 {
    // SAFETY: plain fd calls on the process's own descriptors.
    let out_fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if out_fd < 0 || unsafe { libc::dup2(2, 1) } < 0 {
        // Logged to this child's stderr, which is inherited from the host.
        tracing::error!("plugin-host: cannot set up the protocol pipe");
        return 70;
    }
    // SAFETY: `out_fd` is a fresh descriptor owned by nobody else.
    let out = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(out_fd) };
    let state: &'static ChildState = Box::leak(Box::new(ChildState {
        out: Mutex::new(out),
        cancelled: AtomicBool::new(false),
        closed: AtomicBool::new(false),
    }));
    let lib = match native::load_library(library).and_then(|lib| Ok((lib, lib.describe()?))) {
        Ok((lib, description)) => {
            let hello = FromChild::Hello {
                api_version: lib.api_version.clone(),
                description,
            };
            if state.send(&hello).is_err() {
                return 0;
            }
            lib
        }
        Err(e) => {
            let _ = state.send(&FromChild::LoadFailed {
                reason: e.to_string(),
            });
            return 0;
        }
    };
    let mut stdin = std::io::stdin();
    let task = match read_frame_sync::<ToChild>(&mut stdin) {
        Ok(Some(ToChild::Execute { task })) => task,
        Ok(None) => return 0,
        Ok(Some(_)) | Err(_) => return 2,
    };
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        loop {
            match read_frame_sync::<ToChild>(&mut stdin) {
                Ok(Some(ToChild::Cancel)) => state.cancelled.store(true, Ordering::Release),
                Ok(Some(ToChild::EventsClosed)) => state.closed.store(true, Ordering::Release),
                Ok(Some(ToChild::Execute { .. })) => {}
                // The parent is gone or gave up on this task: leave at once, without running
                // the plugin's exit handlers under its running code.
                // SAFETY: `_exit` is always safe to call.
                Ok(None) | Err(_) => unsafe { libc::_exit(0) },
            }
        }
    });
    let host = AgentserverHost {
        ctx: std::ptr::from_ref(state).cast_mut().cast(),
        emit_event: child_emit_event,
        log: child_log,
        is_cancelled: child_is_cancelled,
    };
    // SAFETY: `host` and its `ctx` (leaked) outlive the call.
    let json = unsafe { lib.execute_with(&task, &host) };
    if let Err(e) = state.send(&FromChild::Outcome { json }) {
        tracing::error!("plugin-host: cannot send the outcome: {e}");
        return 1;
    }
    0
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// A native plugin run in a child process per task, as a [`Backend`].
#[derive(Debug)]
pub struct ProcessBackend {
    name: String,
    version: String,
    exe: PathBuf,
    library: PathBuf,
    timeout: Duration,
    grace: Duration,
}

fn host_error(path: &Path, reason: String) -> PluginError {
    PluginError::PluginHost {
        path: path.to_owned(),
        reason,
    }
}

fn command(exe: &Path, library: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(PLUGIN_HOST_COMMAND)
        .arg(library)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // Its own process group, dying with the host (`PR_SET_PDEATHSIG` on Linux).
    agentserver_common::process::isolate(&mut cmd, agentserver_common::process::Detach::Group);
    cmd
}

/// Loads a discovered native plugin out of process: a first child loads and describes it (so
/// its code never runs in the host), then exits.
pub fn load(
    plugin: &DiscoveredPlugin,
    options: &PluginOptions,
) -> Result<LoadedPlugin, PluginError> {
    let manifest = &plugin.manifest;
    let library = plugin.file();
    let library = library.canonicalize().map_err(|source| PluginError::Io {
        path: library.clone(),
        source,
    })?;
    let exe = match &options.plugin_host {
        Some(exe) => exe.clone(),
        None => std::env::current_exe().map_err(|source| PluginError::Io {
            path: PathBuf::from("current executable"),
            source,
        })?,
    };
    let (result, load_time) = super::timed(|| probe(&exe, &library));
    let (api_version, description) = result?;
    super::check_api_version(&manifest.name, &api_version)?;
    let timeout = options.task_timeout.unwrap_or_else(|| {
        Duration::from_secs(
            manifest
                .limits
                .timeout_secs
                .unwrap_or(super::manifest::DEFAULT_TIMEOUT_SECS),
        )
    });
    let backend = ProcessBackend {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        exe,
        library,
        timeout,
        grace: options.cancel_grace,
    };
    Ok(LoadedPlugin {
        backend: Arc::new(backend),
        api_version,
        description,
        effective_permissions: Permissions::default(),
        load_time,
        from_cache: None,
    })
}

/// Starts a child, reads its hello and lets it go.
fn probe(exe: &Path, library: &Path) -> Result<(String, PluginDescription), PluginError> {
    let mut child = command(exe, library)
        .spawn()
        .map_err(|e| host_error(library, format!("cannot start {}: {e}", exe.display())))?;
    let mut stdout = child.stdout.take().expect("piped");
    let hello = read_frame_sync::<FromChild>(&mut stdout);
    drop(child.stdin.take());
    let status = child.wait();
    match hello {
        Ok(Some(FromChild::Hello {
            api_version,
            description,
        })) => Ok((api_version, description)),
        Ok(Some(FromChild::LoadFailed { reason })) => Err(host_error(library, reason)),
        Ok(Some(other)) => Err(host_error(
            library,
            format!("unexpected first frame {other:?}"),
        )),
        Ok(None) | Err(_) => Err(host_error(
            library,
            match status {
                Ok(status) => format!("the plugin-host process {}", describe_exit(status)),
                Err(e) => format!("the plugin-host process vanished: {e}"),
            },
        )),
    }
}

/// "was killed by signal 11 (SIGSEGV)", "exited with status 3".
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(signal)
            .map(|s| s.as_str())
            .unwrap_or("unknown signal");
        let core = if status.core_dumped() {
            ", core dumped"
        } else {
            ""
        };
        format!("was killed by signal {signal} ({name}{core})")
    } else {
        match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => format!("ended ({status})"),
        }
    }
}

/// How the pump that reads the child's frames ended.
enum Pumped {
    Outcome(Option<String>),
    Eof,
    Broken(String),
}

/// Kills the child's process group unless disarmed (the child was reaped normally).
struct GroupGuard {
    pgid: Option<u32>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            agentserver_common::process::kill_group(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

impl ProcessBackend {
    fn failed(&self, reason: String) -> TaskOutcome {
        TaskOutcome::failed(
            FailureKind::System,
            format!("the native plugin `{}` {reason}", self.name),
        )
    }
}

#[async_trait]
impl Backend for ProcessBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: self.name.clone(),
            version: self.version.clone(),
            session_type: SessionType::Custom,
        }
    }

    async fn execute(
        &self,
        task: Task,
        events: EventSink,
        cancel: CancellationToken,
    ) -> TaskOutcome {
        let task_json = match serde_json::to_string(&task) {
            Ok(json) => json,
            Err(e) => return TaskOutcome::failed(FailureKind::System, format!("bad task: {e}")),
        };
        // The plugin-host process and whatever the plugin starts belong to the task.
        let scope = agentserver_common::process::Scope::task(&task.task_id);
        let mut cmd = tokio::process::Command::from(command(&self.exe, &self.library));
        scope.apply(cmd.as_std_mut());
        let mut child = match cmd.kill_on_drop(true).spawn() {
            Ok(child) => child,
            Err(e) => {
                return self.failed(format!(
                    "could not start its plugin-host process ({}): {e}",
                    self.exe.display()
                ));
            }
        };
        let mut guard = GroupGuard { pgid: child.id() };
        let mut stdout = child.stdout.take().expect("piped");
        let stdin = Arc::new(tokio::sync::Mutex::new(child.stdin.take().expect("piped")));
        let send = |msg: ToChild| {
            let stdin = Arc::clone(&stdin);
            async move {
                let bytes = frame(&msg)?;
                let mut stdin = stdin.lock().await;
                stdin.write_all(&bytes).await?;
                stdin.flush().await
            }
        };
        let plugin = self.name.clone();
        let mut pump = Box::pin(async {
            match read_frame(&mut stdout).await {
                Ok(Some(FromChild::Hello { .. })) => {}
                Ok(Some(FromChild::LoadFailed { reason })) => return Pumped::Broken(reason),
                Ok(Some(other)) => return Pumped::Broken(format!("sent {other:?} first")),
                Ok(None) => return Pumped::Eof,
                Err(e) => return Pumped::Broken(e.to_string()),
            }
            if let Err(e) = send(ToChild::Execute { task: task_json }).await {
                return Pumped::Broken(format!("could not be sent its task: {e}"));
            }
            let mut listening = true;
            loop {
                match read_frame(&mut stdout).await {
                    Ok(Some(FromChild::Event { json })) => {
                        if !listening {
                            continue;
                        }
                        let Ok(event) = TaskEvent::from_json(&json) else {
                            continue;
                        };
                        // Waits while the task's channel is full: the child then blocks on the
                        // pipe (backpressure).
                        if !events.emit(event).await {
                            listening = false;
                            let _ = send(ToChild::EventsClosed).await;
                        }
                    }
                    Ok(Some(FromChild::Log { level, message })) => {
                        log_line(&plugin, level, &message);
                    }
                    Ok(Some(FromChild::Outcome { json })) => return Pumped::Outcome(json),
                    Ok(Some(other)) => return Pumped::Broken(format!("sent {other:?}")),
                    Ok(None) => return Pumped::Eof,
                    Err(e) => return Pumped::Broken(format!("sent a broken frame: {e}")),
                }
            }
        });
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut stop_at: Option<tokio::time::Instant> = None;
        let mut deadline_hit = false;
        let mut exited: Option<ExitStatus> = None;
        let mut drain_until: Option<tokio::time::Instant> = None;
        let far = || tokio::time::Instant::now() + Duration::from_secs(86_400);
        let pumped = loop {
            tokio::select! {
                r = &mut pump => break Some(r),
                () = cancel.cancelled(), if stop_at.is_none() => {
                    let _ = send(ToChild::Cancel).await;
                    stop_at = Some(tokio::time::Instant::now() + self.grace);
                }
                () = &mut deadline, if stop_at.is_none() => {
                    deadline_hit = true;
                    let _ = send(ToChild::Cancel).await;
                    stop_at = Some(tokio::time::Instant::now() + self.grace);
                }
                () = tokio::time::sleep_until(stop_at.unwrap_or_else(far)), if stop_at.is_some() => {
                    break None;
                }
                status = child.wait(), if exited.is_none() => {
                    // Frames may still be in the pipe: keep reading them for a while.
                    exited = Some(status.unwrap_or_else(|_| ExitStatus::from_raw(0)));
                    drain_until = Some(tokio::time::Instant::now() + EXIT_WAIT);
                }
                () = tokio::time::sleep_until(drain_until.unwrap_or_else(far)), if drain_until.is_some() => {
                    break Some(Pumped::Eof);
                }
            }
        };
        drop(pump);
        drop(stdin);
        let status = match exited {
            Some(status) => Some(status),
            None => {
                if !matches!(pumped, Some(Pumped::Outcome(_))) {
                    guard.kill();
                }
                match tokio::time::timeout(EXIT_WAIT, child.wait()).await {
                    Ok(Ok(status)) => Some(status),
                    _ => {
                        guard.kill();
                        child.wait().await.ok()
                    }
                }
            }
        };
        if status.is_some() {
            guard.pgid = None;
        }
        // The child was awaited: what the plugin left behind (in its group or not) goes now.
        drop(child);
        let _ = tokio::task::spawn_blocking(move || scope.sweep()).await;
        let outcome = match pumped {
            Some(Pumped::Outcome(Some(json))) => match serde_json::from_str::<TaskOutcome>(&json) {
                Ok(outcome) => normalise(outcome),
                Err(e) => self.failed(format!("returned an invalid outcome: {e}")),
            },
            Some(Pumped::Outcome(None)) => self.failed("returned no outcome (NULL)".into()),
            Some(Pumped::Broken(reason)) => {
                self.failed(format!("broke the plugin-host protocol: {reason}"))
            }
            Some(Pumped::Eof) => {
                let how = status.map_or_else(|| "vanished".to_owned(), describe_exit);
                tracing::warn!(plugin = %self.name, "native plugin process {how} before returning an outcome");
                self.failed(format!(
                    "crashed: its process {how} before returning an outcome"
                ))
            }
            None => {
                tracing::warn!(
                    plugin = %self.name,
                    grace_ms = self.grace.as_millis() as u64,
                    "native plugin process did not return after cancellation; killed it"
                );
                TaskOutcome::cancelled(format!(
                    "the native plugin did not return within {} ms of being told to stop; its \
                     process was killed",
                    self.grace.as_millis()
                ))
            }
        };
        super::native::outcome_after_stop(outcome, deadline_hit, self.timeout)
    }
}
