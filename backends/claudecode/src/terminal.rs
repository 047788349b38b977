//! The terminal path (spec §12): one PTY running a bare `claude`, shared by terminal streams.
//!
//! * Lazy start on the first attach: the program with no arguments, cwd = workdir,
//!   `TERM=xterm-256color`, 120×40. A PTY whose process exited is replaced on the next attach.
//! * One active stream at a time: a new attach detaches (closes) the previous one.
//! * The newest PTY output (256 KiB) is kept and sent as one `0x00` frame on attach, before
//!   live output (the upstream's unreleased "TerminalMux").
//! * Framing: inbound chunk `0x01` + resize JSON, or any other first byte + data for the PTY;
//!   outbound `0x00` + each PTY read (≤ 4096 bytes).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use agentserver_plugin_api::{BackendError, TerminalStream};
use bytes::Bytes;
use portable_pty::{Child, CommandBuilder, MasterPty, PtySize, native_pty_system};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ClaudeCodeConfig;
use agentserver_common::process::StderrTail;

/// Frame type of data (both directions).
pub const FRAME_DATA: u8 = 0x00;
/// Frame type of a resize control message (server → agent).
pub const FRAME_RESIZE: u8 = 0x01;
/// Largest PTY read forwarded as one frame.
const PTY_READ_CHUNK: usize = 4096;

/// What the terminal is doing, for status displays and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalStatus {
    /// Whether a PTY process is running.
    pub running: bool,
    /// Its pid.
    pub pid: Option<u32>,
    /// Current size (columns, rows).
    pub size: Option<(u16, u16)>,
    /// How many PTY processes have been started so far.
    pub starts: u64,
    /// Whether a stream is attached.
    pub attached: bool,
}

/// A resize control message.
#[derive(Debug, Deserialize)]
struct Resize {
    #[serde(rename = "type")]
    kind: String,
    cols: u16,
    rows: u16,
}

struct Pty {
    generation: u64,
    master: Box<dyn MasterPty + Send>,
    child: Box<dyn Child + Send + Sync>,
    input: std::sync::mpsc::Sender<Vec<u8>>,
    exited: bool,
}

struct Active {
    id: u64,
    output: mpsc::Sender<Bytes>,
    detach: CancellationToken,
}

struct State {
    pty: Option<Pty>,
    replay: StderrTail,
    active: Option<Active>,
    starts: u64,
    next_attach: u64,
}

/// Owns the PTY and serves terminal streams.
pub(crate) struct Terminal {
    config: ClaudeCodeConfig,
    state: Arc<Mutex<State>>,
}

impl Terminal {
    pub(crate) fn new(config: ClaudeCodeConfig) -> Self {
        let replay = StderrTail::new(config.terminal.replay_bytes);
        Self {
            config,
            state: Arc::new(Mutex::new(State {
                pty: None,
                replay,
                active: None,
                starts: 0,
                next_attach: 0,
            })),
        }
    }

    pub(crate) fn status(&self) -> TerminalStatus {
        let mut state = crate::lock(&self.state);
        let attached = state.active.is_some();
        let starts = state.starts;
        let live = match state.pty.as_mut() {
            Some(pty) if !pty.exited => matches!(pty.child.try_wait(), Ok(None)),
            _ => false,
        };
        match state.pty.as_ref().filter(|_| live) {
            Some(pty) => TerminalStatus {
                running: true,
                pid: pty.child.process_id(),
                size: pty.master.get_size().ok().map(|s| (s.cols, s.rows)),
                starts,
                attached,
            },
            None => TerminalStatus {
                running: false,
                pid: None,
                size: None,
                starts,
                attached,
            },
        }
    }

    /// Serves one terminal stream until it closes, the PTY exits or a newer attach replaces it.
    pub(crate) async fn attach(
        &self,
        program: PathBuf,
        stream: TerminalStream,
    ) -> Result<(), BackendError> {
        let (id, mut output, detach, snapshot, input, generation) = {
            let mut state = crate::lock(&self.state);
            let needs_start = match state.pty.as_mut() {
                None => true,
                Some(pty) => pty.exited || !matches!(pty.child.try_wait(), Ok(None)),
            };
            if needs_start {
                if let Some(old) = state.pty.take() {
                    reap(old);
                }
                state.replay.clear();
                let pty = self.spawn(&program, &mut state)?;
                state.pty = Some(pty);
            }
            if let Some(old) = state.active.take() {
                tracing::debug!(
                    attach = old.id,
                    "a new terminal stream replaces the attached one"
                );
                old.detach.cancel();
            }
            let (tx, rx) = mpsc::channel::<Bytes>(64);
            let detach = CancellationToken::new();
            state.next_attach += 1;
            let id = state.next_attach;
            state.active = Some(Active {
                id,
                output: tx,
                detach: detach.clone(),
            });
            let snapshot = state.replay.to_vec();
            let pty = state.pty.as_ref().ok_or_else(|| {
                BackendError::Internal("terminal PTY vanished while attaching".into())
            })?;
            (id, rx, detach, snapshot, pty.input.clone(), pty.generation)
        };
        tracing::debug!(
            attach = id,
            replay = snapshot.len(),
            "terminal stream attached"
        );

        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut result = Ok(());
        if !snapshot.is_empty() {
            let mut frame = Vec::with_capacity(snapshot.len() + 1);
            frame.push(FRAME_DATA);
            frame.extend_from_slice(&snapshot);
            if let Err(err) = write_frame(&mut wr, &frame).await {
                result = Err(err);
            }
        }
        let mut inbuf = vec![0u8; 16 * 1024];
        while result.is_ok() {
            tokio::select! {
                _ = detach.cancelled() => break,
                chunk = output.recv() => match chunk {
                    Some(data) => {
                        let mut frame = Vec::with_capacity(data.len() + 1);
                        frame.push(FRAME_DATA);
                        frame.extend_from_slice(&data);
                        if let Err(err) = write_frame(&mut wr, &frame).await {
                            result = Err(err);
                        }
                    }
                    // The PTY process exited (or the terminal shut down).
                    None => break,
                },
                read = rd.read(&mut inbuf) => match read {
                    Ok(0) => break,
                    Ok(n) => self.inbound(&inbuf[..n], &input, generation),
                    Err(err) => result = Err(err),
                },
            }
        }
        {
            let mut state = crate::lock(&self.state);
            if state.active.as_ref().is_some_and(|a| a.id == id) {
                state.active = None;
            }
        }
        let _ = wr.shutdown().await;
        tracing::debug!(attach = id, "terminal stream detached");
        result.map_err(|err| BackendError::Internal(format!("terminal stream: {err}")))
    }

    /// Handles one inbound chunk: `0x01` + resize JSON (possibly followed by more frames), or
    /// a type byte + data for the PTY (the rest of the chunk).
    fn inbound(&self, chunk: &[u8], input: &std::sync::mpsc::Sender<Vec<u8>>, generation: u64) {
        let mut rest = chunk;
        while let Some((&kind, body)) = rest.split_first() {
            if kind != FRAME_RESIZE {
                if !body.is_empty() {
                    let _ = input.send(body.to_vec());
                }
                return;
            }
            // A resize frame is one JSON object; anything after it starts a new frame (frames
            // coalesced by the transport).
            let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Resize>();
            match values.next() {
                Some(Ok(resize)) => {
                    self.resize(&resize, generation);
                    rest = &body[values.byte_offset()..];
                }
                _ => {
                    tracing::debug!("ignored a malformed terminal resize message");
                    return;
                }
            }
        }
    }

    fn resize(&self, resize: &Resize, generation: u64) {
        if resize.kind != "resize" || resize.cols == 0 || resize.rows == 0 {
            return;
        }
        let state = crate::lock(&self.state);
        if let Some(pty) = state.pty.as_ref().filter(|p| p.generation == generation) {
            let size = PtySize {
                rows: resize.rows,
                cols: resize.cols,
                pixel_width: 0,
                pixel_height: 0,
            };
            if let Err(err) = pty.master.resize(size) {
                tracing::debug!(%err, "terminal resize failed");
            }
        }
    }

    /// Starts the PTY process and its reader and writer threads.
    fn spawn(&self, program: &PathBuf, state: &mut State) -> Result<Pty, BackendError> {
        let start_err = |what: &str, err: &dyn std::fmt::Display| {
            BackendError::Start(format!("terminal: {what}: {err}"))
        };
        let size = PtySize {
            rows: self.config.terminal.rows,
            cols: self.config.terminal.cols,
            pixel_width: 0,
            pixel_height: 0,
        };
        let pair = native_pty_system()
            .openpty(size)
            .map_err(|e| start_err("open a PTY", &e))?;
        let mut cmd = CommandBuilder::new(program);
        cmd.cwd(&self.config.workdir);
        if self.config.clear_env {
            cmd.env_clear();
        }
        for (k, v) in &self.config.env {
            cmd.env(k, v);
        }
        cmd.env("TERM", &self.config.terminal.term);
        let child = pair
            .slave
            .spawn_command(cmd)
            .map_err(|e| start_err(&format!("start {}", program.display()), &e))?;
        // Our copy of the slave is closed only once the process has exited, so the kernel
        // never sees every slave closed while the last output is still on its way to the
        // master (the reader would get EIO and lose it).
        let slave = pair.slave;
        match child.process_id() {
            Some(pid) => {
                std::thread::Builder::new()
                    .name("claude-pty-exit".into())
                    .spawn(move || close_slave_after_exit(slave, pid))
                    .map_err(|e| start_err("exit watcher thread", &e))?;
            }
            None => drop(slave),
        }
        let reader = pair
            .master
            .try_clone_reader()
            .map_err(|e| start_err("PTY reader", &e))?;
        let writer = pair
            .master
            .take_writer()
            .map_err(|e| start_err("PTY writer", &e))?;
        state.starts += 1;
        let generation = state.starts;
        let (input, input_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::Builder::new()
            .name("claude-pty-in".into())
            .spawn(move || pty_writer(writer, input_rx))
            .map_err(|e| start_err("writer thread", &e))?;
        let shared = self.state.clone();
        std::thread::Builder::new()
            .name("claude-pty-out".into())
            .spawn(move || pty_reader(reader, shared, generation))
            .map_err(|e| start_err("reader thread", &e))?;
        tracing::info!(pid = ?child.process_id(), program = %program.display(), "terminal PTY started");
        Ok(Pty {
            generation,
            master: pair.master,
            child,
            input,
            exited: false,
        })
    }

    /// Kills the PTY process (SIGKILL + reap) and detaches any stream.
    pub(crate) fn shutdown(&self) {
        let (pty, active) = {
            let mut state = crate::lock(&self.state);
            (state.pty.take(), state.active.take())
        };
        if let Some(active) = active {
            active.detach.cancel();
        }
        if let Some(pty) = pty {
            reap(pty);
        }
    }
}

/// Kills a PTY process and its process group, then reaps it. Nothing is signalled once the
/// process has been reaped (its pid could belong to someone else by then).
fn reap(mut pty: Pty) {
    if matches!(pty.child.try_wait(), Ok(None)) {
        if let Some(pid) = pty.child.process_id() {
            // portable-pty starts the process with setsid(): its pid is its group.
            crate::process::kill_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = pty.child.wait();
    }
}

/// Waits (without reaping: the child's owner reaps it) until process `pid` has exited, then
/// drops the parent's copy of the PTY slave, which lets the reader see the end of output.
fn close_slave_after_exit(slave: Box<dyn portable_pty::SlavePty + Send>, pid: u32) {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    // EINTR: wait again. Any other answer (exited, or ECHILD because it was already reaped)
    // means the process is gone.
    while let Err(nix::errno::Errno::EINTR) =
        waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT)
    {}
    drop(slave);
}

fn pty_writer(mut writer: Box<dyn Write + Send>, rx: std::sync::mpsc::Receiver<Vec<u8>>) {
    while let Ok(data) = rx.recv() {
        if writer
            .write_all(&data)
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
    }
}

fn pty_reader(mut reader: Box<dyn Read + Send>, shared: Arc<Mutex<State>>, generation: u64) {
    let mut buf = vec![0u8; PTY_READ_CHUNK];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = Bytes::copy_from_slice(&buf[..n]);
        let target = {
            let mut state = crate::lock(&shared);
            if state
                .pty
                .as_ref()
                .is_none_or(|p| p.generation != generation)
            {
                return;
            }
            state.replay.push(&data);
            state.active.as_ref().map(|a| a.output.clone())
        };
        if let Some(tx) = target {
            // Blocks while the stream is slow: back-pressure reaches the PTY process.
            let _ = tx.blocking_send(data);
        }
    }
    // The process exited: close the attached stream; the next attach starts a new process.
    let mut state = crate::lock(&shared);
    if let Some(pty) = state.pty.as_mut().filter(|p| p.generation == generation) {
        pty.exited = true;
        state.active = None;
        tracing::info!("terminal PTY process exited");
    }
}

async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    frame: &[u8],
) -> std::io::Result<()> {
    wr.write_all(frame).await?;
    wr.flush().await
}
