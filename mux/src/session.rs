//! A yamux session: one reader task, one writer task and the shared stream table.
//!
//! Behaviour follows hashicorp/yamux v0.1.2 where the agentserver server depends on it, with
//! one deliberate difference: an inbound stream is acknowledged (window update with `ACK`) as
//! soon as its `SYN` arrives, before the application accepts it, so no application delay can
//! trip the peer's stream-open timeout.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::frame::{Flags, Frame, FrameDecoder, FrameError, FrameType, GoAwayCode, Header};

/// The initial stream window both sides assume (spec: 256 KiB).
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// Which end of the session this is: the client opens odd stream ids, the server even ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Opens odd stream ids (the agent).
    Client,
    /// Opens even stream ids (the agentserver server).
    Server,
}

/// Session settings. The defaults match the server's hashicorp configuration (spec §6.4).
#[derive(Clone, Debug)]
pub struct Config {
    /// Inbound streams waiting for [`Incoming::next`]; more are reset. Also the limit of
    /// outbound streams that may wait for their `ACK` at once. Default 256.
    pub accept_backlog: usize,
    /// The receive window of each stream (at least [`INITIAL_WINDOW`]). Default 256 KiB.
    pub max_stream_window: u32,
    /// Largest data frame body this side sends. Default 64 KiB.
    pub max_frame_size: u32,
    /// Close the whole session when an outbound stream's `SYN` is not acknowledged within this
    /// time (hashicorp's `StreamOpenTimeout`). Default 75 s; `None` disables it.
    pub stream_open_timeout: Option<Duration>,
    /// Reset a stream when the peer has not closed its side this long after ours. Default 5 min.
    pub stream_close_timeout: Option<Duration>,
    /// Send a ping this often and close the session when one is not answered within
    /// `write_timeout` (10 s when that is `None`). Default `None` (disabled, as upstream v0.27.2+).
    pub keepalive_interval: Option<Duration>,
    /// Close the session when one write to the connection takes longer than this (a dead
    /// peer). Default 10 s (hashicorp's `ConnectionWriteTimeout`).
    pub write_timeout: Option<Duration>,
    /// Bytes of data frames that may wait in the send queue before stream writes wait.
    /// Default 1 MiB.
    pub write_queue_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            accept_backlog: 256,
            max_stream_window: INITIAL_WINDOW,
            max_frame_size: 64 * 1024,
            stream_open_timeout: Some(Duration::from_secs(75)),
            stream_close_timeout: Some(Duration::from_secs(300)),
            keepalive_interval: None,
            write_timeout: Some(Duration::from_secs(10)),
            write_queue_limit: 1024 * 1024,
        }
    }
}

/// A peer's violation of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A frame could not be decoded.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A data frame exceeded the stream's receive window.
    #[error("stream {stream}: {len} bytes received with a window of {window}")]
    WindowExceeded {
        /// Stream id.
        stream: u32,
        /// Frame body length.
        len: u32,
        /// Remaining window.
        window: u32,
    },
    /// A window update that would take the stream's send window past 2^32 − 1 bytes (the
    /// window is a `u32`; hashicorp/yamux closes the session when data arrives past its real
    /// window, so clamping the sum would only move the failure to the peer).
    #[error("stream {stream}: window update of {delta} bytes overflows a send window of {window}")]
    WindowOverflow {
        /// Stream id.
        stream: u32,
        /// The update's delta.
        delta: u32,
        /// The send window before the update.
        window: u32,
    },
    /// A `SYN` for a stream id that is already open.
    #[error("duplicate stream id {0}")]
    DuplicateStream(u32),
    /// A `SYN` with a stream id of this side's parity (or 0).
    #[error("the peer opened stream id {0}, which is not its to open")]
    WrongStreamId(u32),
    /// The connection ended in the middle of a frame.
    #[error("the connection ended in the middle of a frame")]
    TruncatedFrame,
}

/// Why a session ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    /// [`Control::close`] or [`Control::abort`] was called, or every [`Control`] was dropped.
    #[error("the session was closed locally")]
    LocalClose,
    /// The peer closed the connection (end of stream or WebSocket close).
    #[error("the peer closed the connection")]
    RemoteClosed,
    /// The peer broke the protocol; a `GoAway` with the protocol-error code was sent.
    #[error("yamux protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// Reading or writing the connection failed.
    #[error("connection error: {0}")]
    Io(Arc<io::Error>),
    /// An outbound stream was not acknowledged in time (see [`Config::stream_open_timeout`]).
    #[error("stream {0} was not acknowledged within the stream-open timeout")]
    StreamOpenTimeout(u32),
    /// A keepalive ping was not answered.
    #[error("keepalive ping was not answered")]
    KeepaliveTimeout,
    /// A write to the connection did not finish in time.
    #[error("writing to the connection timed out")]
    WriteTimeout,
}

/// Errors of [`Control`] operations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The session has ended.
    #[error("yamux session closed: {0}")]
    SessionClosed(SessionError),
    /// The peer sent `GoAway`: it accepts no new streams.
    #[error("the peer sent GoAway and accepts no new streams")]
    RemoteGoAway,
    /// All stream ids of this side are used up.
    #[error("stream ids exhausted")]
    StreamIdsExhausted,
}

/// A frame waiting to be written. `header` is `None` for raw injected bytes.
struct OutFrame {
    header: Option<[u8; 12]>,
    body: Bytes,
}

impl OutFrame {
    fn header(h: Header) -> Self {
        Self {
            header: Some(h.encode()),
            body: Bytes::new(),
        }
    }
}

#[derive(Default)]
struct Out {
    /// Frames that may overtake data (window updates, ACK, RST, pings).
    ctrl: VecDeque<OutFrame>,
    /// Data frames, SYN-less FINs and GoAway, in order.
    data: VecDeque<OutFrame>,
    data_bytes: usize,
    writer_waker: Option<Waker>,
    blocked: Vec<Waker>,
}

impl Out {
    fn push_ctrl(&mut self, h: Header) {
        self.ctrl.push_back(OutFrame::header(h));
        self.wake_writer();
    }

    fn push_data(&mut self, f: OutFrame) {
        self.data_bytes += f.body.len();
        self.data.push_back(f);
        self.wake_writer();
    }

    fn wake_writer(&mut self) {
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
    }
}

struct StreamState {
    recv_buf: VecDeque<Bytes>,
    recv_buffered: usize,
    /// Bytes the peer may still send before our next window update.
    recv_window: u32,
    /// Bytes we may still send.
    send_window: u32,
    established: bool,
    local_fin: bool,
    remote_fin: bool,
    reset: bool,
    handle_alive: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// Dropped when the stream is acknowledged (ends the open timer).
    ack_tx: Option<oneshot::Sender<()>>,
    /// Dropped when the stream is fully closed (ends the close timer).
    close_tx: Option<oneshot::Sender<()>>,
    open_permit: Option<OwnedSemaphorePermit>,
}

impl StreamState {
    fn new(established: bool) -> Self {
        Self {
            recv_buf: VecDeque::new(),
            recv_buffered: 0,
            recv_window: INITIAL_WINDOW,
            send_window: INITIAL_WINDOW,
            established,
            local_fin: false,
            remote_fin: false,
            reset: false,
            handle_alive: true,
            read_waker: None,
            write_waker: None,
            ack_tx: None,
            close_tx: None,
            open_permit: None,
        }
    }

    fn wake_all(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
    }

    fn stop_timers(&mut self) {
        self.ack_tx = None;
        self.close_tx = None;
        self.open_permit = None;
    }

    /// True when nothing more can happen on the stream and its handle is gone.
    fn removable(&self) -> bool {
        !self.handle_alive && (self.reset || (self.local_fin && self.remote_fin))
    }

    /// Sends a window update when the application has consumed at least half a window.
    fn grant(&mut self, id: u32, max: u32, out: &mut Out) {
        if self.remote_fin || self.reset {
            return;
        }
        let buffered = u32::try_from(self.recv_buffered).unwrap_or(u32::MAX);
        let delta = max
            .saturating_sub(buffered)
            .saturating_sub(self.recv_window);
        if delta >= max / 2 && delta > 0 {
            self.recv_window += delta;
            out.push_ctrl(Header::window_update(id, Flags::NONE, delta));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Write out what is queued, shut the connection down, stop.
    Draining,
    /// Stop writing at once.
    Dead,
}

struct Inner {
    phase: Phase,
    reason: Option<SessionError>,
    streams: HashMap<u32, StreamState>,
    next_id: u32,
    out: Out,
    remote_go_away: bool,
    pings: HashMap<u32, oneshot::Sender<()>>,
    next_ping: u32,
}

struct Shared {
    inner: Mutex<Inner>,
    config: Config,
    mode: Mode,
    open_slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    status: watch::Sender<Status>,
}

#[derive(Clone, Default)]
struct Status {
    reason: Option<SessionError>,
    finished: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the session (first reason wins).
    fn fail(&self, err: SessionError) {
        let mut inner = self.lock();
        self.fail_locked(&mut inner, err);
    }

    fn fail_locked(&self, inner: &mut Inner, err: SessionError) {
        if inner.phase != Phase::Open {
            return;
        }
        match &err {
            SessionError::Protocol(p) => {
                tracing::warn!(error = %p, "yamux protocol error, sending GoAway and closing");
                inner.out.data.clear();
                inner.out.data_bytes = 0;
                inner.out.ctrl.clear();
                inner
                    .out
                    .push_ctrl(Header::go_away(GoAwayCode::ProtocolError));
                inner.phase = Phase::Draining;
            }
            SessionError::LocalClose => {
                inner
                    .out
                    .push_data(OutFrame::header(Header::go_away(GoAwayCode::Normal)));
                inner.phase = Phase::Draining;
            }
            _ => inner.phase = Phase::Dead,
        }
        inner.reason = Some(err.clone());
        for st in inner.streams.values_mut() {
            st.wake_all();
            st.stop_timers();
        }
        inner.streams.retain(|_, st| st.handle_alive);
        for w in inner.out.blocked.drain(..) {
            w.wake();
        }
        inner.out.wake_writer();
        inner.pings.clear();
        self.open_slots.close();
        self.shutdown.cancel();
        self.status.send_modify(|s| s.reason = Some(err));
    }

    fn closed_error(inner: &Inner) -> io::Error {
        let reason = inner
            .reason
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "closed".into());
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("yamux session closed: {reason}"),
        )
    }

    fn is_remote_id(&self, id: u32) -> bool {
        id != 0
            && match self.mode {
                Mode::Client => id.is_multiple_of(2),
                Mode::Server => !id.is_multiple_of(2),
            }
    }

    /// Handles one inbound frame. Returns a protocol error to end the session.
    fn handle_frame(
        self: &Arc<Self>,
        frame: Frame,
        incoming: &mpsc::Sender<Stream>,
    ) -> Result<(), ProtocolError> {
        let h = frame.header;
        let mut inner = self.lock();
        if inner.phase != Phase::Open {
            return Ok(());
        }
        match h.frame_type {
            FrameType::Ping => {
                if h.flags.contains(Flags::SYN) {
                    inner.out.push_ctrl(Header::ping(Flags::ACK, h.length));
                } else if h.flags.contains(Flags::ACK)
                    && let Some(tx) = inner.pings.remove(&h.length)
                {
                    let _ = tx.send(());
                }
                Ok(())
            }
            FrameType::GoAway => {
                let code = GoAwayCode::from_u32(h.length);
                if code == GoAwayCode::Normal {
                    tracing::debug!("yamux peer sent GoAway (normal)");
                } else {
                    tracing::warn!(?code, "yamux peer sent GoAway with an error code");
                }
                inner.remote_go_away = true;
                Ok(())
            }
            FrameType::Data | FrameType::WindowUpdate => {
                self.handle_stream_frame(&mut inner, h, frame.body, incoming)
            }
        }
    }

    fn handle_stream_frame(
        self: &Arc<Self>,
        inner: &mut Inner,
        h: Header,
        body: Bytes,
        incoming: &mpsc::Sender<Stream>,
    ) -> Result<(), ProtocolError> {
        let id = h.stream_id;
        let max = self.config.max_stream_window;
        if h.flags.contains(Flags::SYN) {
            if !self.is_remote_id(id) {
                return Err(ProtocolError::WrongStreamId(id));
            }
            if inner.streams.contains_key(&id) {
                return Err(ProtocolError::DuplicateStream(id));
            }
            let Ok(permit) = incoming.try_reserve() else {
                tracing::warn!(stream = id, "yamux accept backlog full, resetting stream");
                inner
                    .out
                    .push_ctrl(Header::window_update(id, Flags::RST, 0));
                return Ok(());
            };
            let mut st = StreamState::new(true);
            // Acknowledge at once, announcing any window beyond the initial one.
            let extra = max - INITIAL_WINDOW;
            st.recv_window += extra;
            inner
                .out
                .push_ctrl(Header::window_update(id, Flags::ACK, extra));
            inner.streams.insert(id, st);
            permit.send(Stream {
                id,
                shared: Arc::clone(self),
            });
        }
        let Inner { streams, out, .. } = inner;
        let Some(st) = streams.get_mut(&id) else {
            if h.frame_type == FrameType::Data {
                tracing::debug!(
                    stream = id,
                    len = body.len(),
                    "data for unknown stream dropped"
                );
            }
            return Ok(());
        };
        if h.flags.contains(Flags::ACK) && !st.established {
            st.established = true;
            st.ack_tx = None;
            st.open_permit = None;
        }
        match h.frame_type {
            FrameType::WindowUpdate if h.length > 0 => {
                st.send_window =
                    st.send_window
                        .checked_add(h.length)
                        .ok_or(ProtocolError::WindowOverflow {
                            stream: id,
                            delta: h.length,
                            window: st.send_window,
                        })?;
                if let Some(w) = st.write_waker.take() {
                    w.wake();
                }
            }
            FrameType::Data => {
                let len = body.len() as u32;
                if len > st.recv_window {
                    return Err(ProtocolError::WindowExceeded {
                        stream: id,
                        len,
                        window: st.recv_window,
                    });
                }
                st.recv_window -= len;
                if len > 0 {
                    if st.handle_alive && !st.reset && !st.remote_fin {
                        st.recv_buffered += body.len();
                        st.recv_buf.push_back(body);
                        if let Some(w) = st.read_waker.take() {
                            w.wake();
                        }
                    } else {
                        // Nobody will read it: give the window straight back.
                        st.grant(id, max, out);
                    }
                }
            }
            _ => {}
        }
        if h.flags.contains(Flags::FIN) && !st.remote_fin {
            st.remote_fin = true;
            if st.local_fin {
                st.close_tx = None;
            }
            st.wake_all();
        }
        if h.flags.contains(Flags::RST) && !st.reset {
            st.reset = true;
            st.stop_timers();
            st.recv_buf.clear();
            st.recv_buffered = 0;
            st.wake_all();
        }
        if st.removable() {
            streams.remove(&id);
        }
        Ok(())
    }

    /// Gives the writer its next batch.
    fn poll_take(&self, cx: &mut Context<'_>, frames: &mut Vec<OutFrame>) -> Poll<WriterStep> {
        let mut inner = self.lock();
        if inner.phase == Phase::Dead {
            return Poll::Ready(WriterStep::Exit);
        }
        let out = &mut inner.out;
        frames.extend(out.ctrl.drain(..));
        let mut taken = 0usize;
        while taken < 256 * 1024 {
            let Some(f) = out.data.pop_front() else { break };
            taken += f.body.len() + 12;
            out.data_bytes -= f.body.len();
            frames.push(f);
        }
        if out.data_bytes < self.config.write_queue_limit {
            for w in out.blocked.drain(..) {
                w.wake();
            }
        }
        if !frames.is_empty() {
            return Poll::Ready(WriterStep::Write);
        }
        if inner.phase == Phase::Draining {
            return Poll::Ready(WriterStep::Shutdown);
        }
        inner.out.writer_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

enum WriterStep {
    Write,
    Shutdown,
    Exit,
}

/// Creates sessions.
pub struct Session;

impl Session {
    /// Starts a session over `io` (spawning its reader and writer on the current tokio
    /// runtime) and returns the handle to open streams and the queue of inbound streams.
    ///
    /// Dropping every [`Control`] clone closes the session.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<T>(io: T, mode: Mode, mut config: Config) -> (Control, Incoming)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        config.max_stream_window = config.max_stream_window.max(INITIAL_WINDOW);
        config.max_frame_size = config.max_frame_size.clamp(1, 16 * 1024 * 1024);
        config.accept_backlog = config.accept_backlog.max(1);
        let (status, _) = watch::channel(Status::default());
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                phase: Phase::Open,
                reason: None,
                streams: HashMap::new(),
                next_id: match mode {
                    Mode::Client => 1,
                    Mode::Server => 2,
                },
                out: Out::default(),
                remote_go_away: false,
                pings: HashMap::new(),
                next_ping: 0,
            }),
            open_slots: Arc::new(Semaphore::new(config.accept_backlog)),
            config,
            mode,
            shutdown: CancellationToken::new(),
            status,
        });
        let (tx, rx) = mpsc::channel(shared.config.accept_backlog);
        let (r, w) = tokio::io::split(io);
        let reader_shared = Arc::clone(&shared);
        tokio::spawn(async move { reader_task(reader_shared, r, tx).await });
        let writer_shared = Arc::clone(&shared);
        tokio::spawn(async move { writer_task(writer_shared, w).await });
        let control = Control {
            shared: Arc::clone(&shared),
            _guard: Arc::new(CloseOnDrop(Arc::clone(&shared))),
        };
        if let Some(interval) = shared.config.keepalive_interval {
            let weak = Arc::downgrade(&control._guard);
            let ka_shared = Arc::clone(&shared);
            tokio::spawn(async move { keepalive_task(ka_shared, weak, interval).await });
        }
        (control, Incoming { rx })
    }
}

struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.fail(SessionError::LocalClose);
    }
}

async fn keepalive_task(
    shared: Arc<Shared>,
    guard: std::sync::Weak<CloseOnDrop>,
    interval: Duration,
) {
    let wait = shared
        .config
        .write_timeout
        .unwrap_or(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let Some(g) = guard.upgrade() else { return };
        let control = Control {
            shared: Arc::clone(&shared),
            _guard: g,
        };
        match tokio::time::timeout(wait, control.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                shared.fail(SessionError::KeepaliveTimeout);
                return;
            }
        }
    }
}

async fn reader_task<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    mut r: R,
    incoming: mpsc::Sender<Stream>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut dec = FrameDecoder::new(shared.config.max_stream_window);
    let result: Result<(), SessionError> = async {
        loop {
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(frame)) => shared.handle_frame(frame, &incoming)?,
                    Ok(None) => break,
                    Err(e) => return Err(ProtocolError::Frame(e).into()),
                }
            }
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            let n = tokio::select! {
                n = r.read_buf(&mut buf) => n.map_err(|e| SessionError::Io(Arc::new(e)))?,
                _ = shared.shutdown.cancelled() => return Ok(()),
            };
            if n == 0 {
                return Err(if dec.is_mid_frame(&buf) {
                    ProtocolError::TruncatedFrame.into()
                } else {
                    SessionError::RemoteClosed
                });
            }
        }
    }
    .await;
    if let Err(e) = result {
        shared.fail(e);
    }
}

async fn writer_task<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut w: W) {
    let mut frames = Vec::new();
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let limit = shared.config.write_timeout;
    loop {
        let step = std::future::poll_fn(|cx| shared.poll_take(cx, &mut frames)).await;
        match step {
            WriterStep::Exit => break,
            WriterStep::Shutdown => {
                let _ = with_timeout(limit, w.shutdown()).await;
                break;
            }
            WriterStep::Write => {
                let res = with_timeout(limit, write_frames(&mut w, &mut frames, &mut batch)).await;
                frames.clear();
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        shared.fail(SessionError::Io(Arc::new(e)));
                        break;
                    }
                    Err(_) => {
                        shared.fail(SessionError::WriteTimeout);
                        break;
                    }
                }
            }
        }
    }
    {
        let mut inner = shared.lock();
        if inner.phase == Phase::Draining {
            inner.phase = Phase::Dead;
        }
    }
    shared.status.send_modify(|s| s.finished = true);
}

async fn with_timeout<F: std::future::Future>(
    limit: Option<Duration>,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match limit {
        Some(d) => tokio::time::timeout(d, fut).await,
        None => Ok(fut.await),
    }
}

async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    frames: &mut [OutFrame],
    batch: &mut Vec<u8>,
) -> io::Result<()> {
    const BATCH: usize = 64 * 1024;
    const INLINE: usize = 16 * 1024;
    batch.clear();
    for f in frames.iter() {
        if let Some(h) = &f.header {
            batch.extend_from_slice(h);
        }
        if f.body.len() > INLINE {
            if !batch.is_empty() {
                w.write_all(batch).await?;
                batch.clear();
            }
            w.write_all(&f.body).await?;
        } else {
            batch.extend_from_slice(&f.body);
            if batch.len() >= BATCH {
                w.write_all(batch).await?;
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        w.write_all(batch).await?;
        batch.clear();
    }
    w.flush().await
}

/// The handle to a session: opens streams, pings, closes. Cheap to clone; dropping every clone
/// closes the session.
#[derive(Clone)]
pub struct Control {
    shared: Arc<Shared>,
    _guard: Arc<CloseOnDrop>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("mode", &self.shared.mode)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Opens a stream. Returns once the `SYN` is queued (like hashicorp, without waiting for the
    /// `ACK`); waits only while [`Config::accept_backlog`] opened streams are still unacknowledged.
    pub async fn open_stream(&self) -> Result<Stream, Error> {
        let permit = match Arc::clone(&self.shared.open_slots).acquire_owned().await {
            Ok(p) => p,
            Err(_) => return Err(self.closed_err()),
        };
        let (ack_tx, ack_rx) = oneshot::channel();
        let id = {
            let mut inner = self.shared.lock();
            if inner.phase != Phase::Open {
                return Err(Error::SessionClosed(
                    inner.reason.clone().unwrap_or(SessionError::LocalClose),
                ));
            }
            if inner.remote_go_away {
                return Err(Error::RemoteGoAway);
            }
            let id = inner.next_id;
            if id > u32::MAX - 2 {
                return Err(Error::StreamIdsExhausted);
            }
            inner.next_id += 2;
            let mut st = StreamState::new(false);
            let extra = self.shared.config.max_stream_window - INITIAL_WINDOW;
            st.recv_window += extra;
            st.ack_tx = Some(ack_tx);
            st.open_permit = Some(permit);
            inner.streams.insert(id, st);
            inner
                .out
                .push_ctrl(Header::window_update(id, Flags::SYN, extra));
            id
        };
        if let Some(limit) = self.shared.config.stream_open_timeout {
            let shared = Arc::clone(&self.shared);
            tokio::spawn(async move {
                tokio::select! {
                    _ = ack_rx => {}
                    _ = tokio::time::sleep(limit) => {
                        let unacked = shared
                            .lock()
                            .streams
                            .get(&id)
                            .is_some_and(|s| !s.established && !s.reset);
                        if unacked {
                            tracing::warn!(stream = id, "yamux stream not acknowledged in time, closing the session");
                            shared.fail(SessionError::StreamOpenTimeout(id));
                        }
                    }
                }
            });
        }
        Ok(Stream {
            id,
            shared: Arc::clone(&self.shared),
        })
    }

    fn closed_err(&self) -> Error {
        Error::SessionClosed(
            self.shared
                .lock()
                .reason
                .clone()
                .unwrap_or(SessionError::LocalClose),
        )
    }

    /// Sends a ping and waits for its answer; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let (tx, rx) = oneshot::channel();
        {
            let mut inner = self.shared.lock();
            if inner.phase != Phase::Open {
                drop(inner);
                return Err(self.closed_err());
            }
            let id = inner.next_ping;
            inner.next_ping = inner.next_ping.wrapping_add(1);
            inner.pings.insert(id, tx);
            inner.out.push_ctrl(Header::ping(Flags::SYN, id));
        }
        let start = Instant::now();
        match rx.await {
            Ok(()) => Ok(start.elapsed()),
            Err(_) => Err(self.closed_err()),
        }
    }

    /// Closes the session gracefully: queued frames are written, then a `GoAway` (normal), then
    /// the connection is shut down (for a WebSocket: a close frame with code 1000). Streams
    /// fail from now on.
    pub fn close(&self) {
        self.shared.fail(SessionError::LocalClose);
    }

    /// Drops the connection at once without writing anything more.
    pub fn abort(&self) {
        let mut inner = self.shared.lock();
        if inner.phase == Phase::Draining {
            inner.phase = Phase::Dead;
            inner.out.wake_writer();
            return;
        }
        drop(inner);
        self.shared.fail(SessionError::LocalClose);
        let mut inner = self.shared.lock();
        inner.phase = Phase::Dead;
        inner.out.wake_writer();
    }

    /// Writes raw bytes onto the connection, bypassing framing. For fault injection in tests:
    /// the peer will normally treat them as a protocol error.
    pub fn inject_raw(&self, bytes: Bytes) {
        let mut inner = self.shared.lock();
        if inner.phase == Phase::Open {
            inner.out.ctrl.push_back(OutFrame {
                header: None,
                body: bytes,
            });
            inner.out.wake_writer();
        }
    }

    /// Why the session ended, or `None` while it is open.
    pub fn close_reason(&self) -> Option<SessionError> {
        self.shared.lock().reason.clone()
    }

    /// True once the session has ended (or is draining after [`Control::close`]).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().phase != Phase::Open
    }

    /// Waits until the session ends and returns why.
    pub async fn closed(&self) -> SessionError {
        let mut rx = self.shared.status.subscribe();
        let status = rx.wait_for(|s| s.reason.is_some()).await;
        match status {
            Ok(s) => s.reason.clone().unwrap_or(SessionError::LocalClose),
            Err(_) => SessionError::LocalClose,
        }
    }

    /// Waits until the writer has finished (after a close: the `GoAway` and the connection
    /// shutdown are written).
    pub async fn finished(&self) {
        let mut rx = self.shared.status.subscribe();
        let _ = rx.wait_for(|s| s.finished).await;
    }

    /// Number of streams in the session's table (open or half-closed).
    pub fn stream_count(&self) -> usize {
        self.shared.lock().streams.len()
    }
}

/// Inbound streams opened by the peer, already acknowledged.
pub struct Incoming {
    rx: mpsc::Receiver<Stream>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl Incoming {
    /// The next inbound stream; `None` once the session has ended.
    pub async fn next(&mut self) -> Option<Stream> {
        self.rx.recv().await
    }
}

impl futures_util::Stream for Incoming {
    type Item = Stream;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Stream>> {
        self.rx.poll_recv(cx)
    }
}

/// One yamux stream: a byte stream in both directions. `poll_shutdown` sends `FIN` (half-close:
/// reading continues until the peer's `FIN`). Dropping it without shutting down also sends
/// `FIN`; use [`Stream::reset`] to abort instead.
pub struct Stream {
    id: u32,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("id", &self.id).finish()
    }
}

impl Stream {
    /// The stream id (odd when the client opened it, even for the server).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Aborts the stream: sends `RST`; further reads and writes fail on both sides.
    pub fn reset(&mut self) {
        let mut inner = self.shared.lock();
        let Inner { streams, out, .. } = &mut *inner;
        if let Some(st) = streams.get_mut(&self.id)
            && !st.reset
        {
            st.reset = true;
            st.stop_timers();
            st.recv_buf.clear();
            st.recv_buffered = 0;
            st.wake_all();
            // In order after the stream's queued data, like hashicorp's send queue.
            out.push_data(OutFrame::header(Header::window_update(
                self.id,
                Flags::RST,
                0,
            )));
        }
    }

    fn send_fin(&self, inner: &mut Inner) {
        let Inner {
            streams,
            out,
            phase,
            ..
        } = inner;
        let Some(st) = streams.get_mut(&self.id) else {
            return;
        };
        if st.local_fin || st.reset || *phase != Phase::Open {
            return;
        }
        st.local_fin = true;
        out.push_data(OutFrame::header(Header::window_update(
            self.id,
            Flags::FIN,
            0,
        )));
        if st.remote_fin {
            st.close_tx = None;
            return;
        }
        if let Some(limit) = self.shared.config.stream_close_timeout {
            let (tx, rx) = oneshot::channel::<()>();
            st.close_tx = Some(tx);
            let shared = Arc::clone(&self.shared);
            let id = self.id;
            tokio::spawn(async move {
                tokio::select! {
                    _ = rx => {}
                    _ = tokio::time::sleep(limit) => {
                        let mut inner = shared.lock();
                        let Inner { streams, out, .. } = &mut *inner;
                        if let Some(st) = streams.get_mut(&id)
                            && !st.remote_fin
                            && !st.reset
                        {
                            tracing::debug!(stream = id, "yamux stream close timeout, resetting");
                            st.reset = true;
                            st.stop_timers();
                            st.wake_all();
                            out.push_ctrl(Header::window_update(id, Flags::RST, 0));
                            if st.removable() {
                                streams.remove(&id);
                            }
                        }
                    }
                }
            });
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let max = self.shared.config.max_stream_window;
        let mut inner = self.shared.lock();
        let closed = inner.phase != Phase::Open;
        let Inner { streams, out, .. } = &mut *inner;
        let Some(st) = streams.get_mut(&self.id) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "yamux stream is gone (session closed)",
            )));
        };
        if !st.recv_buf.is_empty() {
            while buf.remaining() > 0 {
                let Some(front) = st.recv_buf.front_mut() else {
                    break;
                };
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front[..n]);
                st.recv_buffered -= n;
                if n == front.len() {
                    st.recv_buf.pop_front();
                } else {
                    let _ = front.split_to(n);
                }
            }
            if !closed {
                st.grant(self.id, max, out);
            }
            return Poll::Ready(Ok(()));
        }
        if st.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "yamux stream reset",
            )));
        }
        if st.remote_fin {
            return Poll::Ready(Ok(()));
        }
        if !closed {
            st.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Err(Shared::closed_error(&inner)))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let limit = self.shared.config.write_queue_limit;
        let max_frame = self.shared.config.max_frame_size as usize;
        let mut inner = self.shared.lock();
        if inner.phase != Phase::Open {
            return Poll::Ready(Err(Shared::closed_error(&inner)));
        }
        let Inner { streams, out, .. } = &mut *inner;
        let Some(st) = streams.get_mut(&self.id) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "yamux stream is gone",
            )));
        };
        if st.reset {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "yamux stream reset",
            )));
        }
        if st.local_fin {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "yamux stream already closed for writing",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if st.send_window == 0 {
            st.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if out.data_bytes >= limit {
            out.blocked.push(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(st.send_window as usize).min(max_frame);
        st.send_window -= n as u32;
        out.push_data(OutFrame {
            header: Some(Header::data(self.id, Flags::NONE, n as u32).encode()),
            body: Bytes::copy_from_slice(&buf[..n]),
        });
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames are handed to the session's writer as they are written; it flushes the
        // connection whenever its queue runs empty.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut inner = self.shared.lock();
        if let Some(st) = inner.streams.get(&self.id)
            && st.reset
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "yamux stream reset",
            )));
        }
        if inner.phase != Phase::Open {
            return Poll::Ready(Err(Shared::closed_error(&inner)));
        }
        self.send_fin(&mut inner);
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let max = self.shared.config.max_stream_window;
        let mut inner = self.shared.lock();
        self.send_fin(&mut inner);
        let open = inner.phase == Phase::Open;
        let Inner { streams, out, .. } = &mut *inner;
        if let Some(st) = streams.get_mut(&self.id) {
            st.handle_alive = false;
            st.recv_buf.clear();
            st.recv_buffered = 0;
            if open {
                st.grant(self.id, max, out);
            }
            if st.removable() || !open {
                streams.remove(&self.id);
            }
        }
    }
}
