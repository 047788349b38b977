//! The connection core: the stream table, the send queue and every protocol rule, with no I/O
//! and no tasks. Frames come in through [`Connection::handle_frame`], frames go out through
//! [`Connection::take_batch`]; the streams' reads and writes, the opening and closing of
//! streams and the timers' expiry are methods too. The driver (`driver.rs`) owns the socket,
//! the tasks and the timers, and calls in here under one lock.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::ReadBuf;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::lifecycle::{Lifecycle, Transition};
use super::{Config, Error, INITIAL_WINDOW, Mode, ProtocolError, SessionError, flow};
use crate::frame::{Flags, Frame, FrameType, GoAwayCode, Header};

/// A frame waiting to be written. `header` is `None` for raw injected bytes.
pub(super) struct OutFrame {
    pub(super) header: Option<[u8; 12]>,
    pub(super) body: Bytes,
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
    lifecycle: Lifecycle,
    /// The opening handshake is done: our `SYN` was acknowledged, or the peer opened it.
    acked: bool,
    /// The application still holds the stream's handle.
    handle_alive: bool,
    recv_buf: VecDeque<Bytes>,
    recv_buffered: usize,
    /// Bytes the peer may still send before our next window update.
    recv_window: u32,
    /// The stream's receive window: `max_stream_window` at first, larger once auto-tuning
    /// has grown it ([`Connection::grow_window`]).
    window: u32,
    /// A data frame left the peer less than a quarter of the window, since the last growth
    /// check: it sends as fast as the window lets it.
    peer_blocked: bool,
    /// Bytes we may still send.
    send_window: u32,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// Dropped when the stream is acknowledged (ends the open timer).
    ack_tx: Option<oneshot::Sender<()>>,
    /// Dropped when the stream is fully closed (ends the close timer).
    close_tx: Option<oneshot::Sender<()>>,
    open_permit: Option<OwnedSemaphorePermit>,
}

impl StreamState {
    fn new(acked: bool, recv_window: u32) -> Self {
        Self {
            lifecycle: Lifecycle::Open,
            acked,
            handle_alive: true,
            recv_buf: VecDeque::new(),
            recv_buffered: 0,
            recv_window,
            window: recv_window,
            peer_blocked: false,
            send_window: INITIAL_WINDOW,
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

    /// Moves to `Reset`: timers stop, buffered data is dropped, waiters wake.
    fn reset(&mut self) {
        self.lifecycle = self.lifecycle.next(Transition::Reset);
        self.stop_timers();
        self.recv_buf.clear();
        self.recv_buffered = 0;
        self.wake_all();
    }

    /// True when nothing more can happen on the stream and its handle is gone.
    fn removable(&self) -> bool {
        !self.handle_alive && self.lifecycle.is_finished()
    }

    /// Sends a window update when the application has consumed at least half a window.
    fn grant(&mut self, id: u32, out: &mut Out) {
        if self.lifecycle.remote_closed() || self.lifecycle.is_reset() {
            return;
        }
        if let Some(delta) = flow::window_update(self.window, self.recv_buffered, self.recv_window)
        {
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

/// What the writer should do next.
pub(super) enum WriterStep {
    /// Write the frames handed over.
    Write,
    /// Everything is written: shut the connection down and stop.
    Shutdown,
    /// Stop without writing anything more.
    Exit,
}

/// The state of one session, without I/O.
pub(super) struct Connection {
    mode: Mode,
    config: Config,
    phase: Phase,
    reason: Option<SessionError>,
    streams: HashMap<u32, StreamState>,
    next_id: u32,
    out: Out,
    remote_go_away: bool,
    pings: HashMap<u32, oneshot::Sender<()>>,
    next_ping: u32,
}

fn stream_gone(kind: io::ErrorKind, what: &str) -> io::Error {
    io::Error::new(kind, what.to_string())
}

impl Connection {
    /// A new session's state; `config` must be normalized.
    pub(super) fn new(mode: Mode, config: Config) -> Self {
        Self {
            mode,
            phase: Phase::Open,
            reason: None,
            streams: HashMap::new(),
            next_id: mode.first_stream_id(),
            out: Out::default(),
            remote_go_away: false,
            pings: HashMap::new(),
            next_ping: 0,
            config,
        }
    }

    /// True while the session is open (not draining, not dead).
    pub(super) fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Why the session ended, or `None` while it is open.
    pub(super) fn reason(&self) -> Option<SessionError> {
        self.reason.clone()
    }

    /// The error of an operation on an ended session.
    pub(super) fn closed_err(&self) -> Error {
        Error::SessionClosed(self.reason.clone().unwrap_or(SessionError::LocalClose))
    }

    /// Number of streams in the table (open or half-closed).
    pub(super) fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Ends the session (first reason wins). Returns false when it had already ended.
    ///
    /// A protocol error drops everything queued and sends `GoAway(protocol error)`; a local
    /// close sends `GoAway(normal)` after what is queued; both then drain. Anything else stops
    /// the writer at once.
    pub(super) fn fail(&mut self, err: &SessionError) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        match err {
            SessionError::Protocol(p) => {
                tracing::warn!(error = %p, "yamux protocol error, sending GoAway and closing");
                self.out.data.clear();
                self.out.data_bytes = 0;
                self.out.ctrl.clear();
                self.out
                    .push_ctrl(Header::go_away(GoAwayCode::ProtocolError));
                self.phase = Phase::Draining;
            }
            SessionError::LocalClose => {
                self.out
                    .push_data(OutFrame::header(Header::go_away(GoAwayCode::Normal)));
                self.phase = Phase::Draining;
            }
            _ => self.phase = Phase::Dead,
        }
        self.reason = Some(err.clone());
        for st in self.streams.values_mut() {
            st.wake_all();
            st.stop_timers();
        }
        self.streams.retain(|_, st| st.handle_alive);
        for w in self.out.blocked.drain(..) {
            w.wake();
        }
        self.out.wake_writer();
        self.pings.clear();
        true
    }

    /// Stops the writer at once, whatever is still queued.
    pub(super) fn kill(&mut self) {
        self.phase = Phase::Dead;
        self.out.wake_writer();
    }

    /// True while a graceful close is writing out what is queued.
    pub(super) fn is_draining(&self) -> bool {
        self.phase == Phase::Draining
    }

    /// Called when the writer has stopped: a drain is over.
    pub(super) fn writer_stopped(&mut self) {
        if self.phase == Phase::Draining {
            self.phase = Phase::Dead;
        }
    }

    /// Handles one inbound frame. `backlog_has_room` says whether an inbound stream opened by
    /// this frame can be queued for the application; when the frame opens one that is
    /// accepted, its id is returned (the caller hands the stream over). A protocol error ends
    /// the session.
    pub(super) fn handle_frame(
        &mut self,
        frame: Frame,
        backlog_has_room: bool,
    ) -> Result<Option<u32>, ProtocolError> {
        let h = frame.header;
        if self.phase != Phase::Open {
            return Ok(None);
        }
        match h.frame_type {
            FrameType::Ping => {
                if h.flags.contains(Flags::SYN) {
                    self.out.push_ctrl(Header::ping(Flags::ACK, h.length));
                } else if h.flags.contains(Flags::ACK)
                    && let Some(tx) = self.pings.remove(&h.length)
                {
                    let _ = tx.send(());
                }
                Ok(None)
            }
            FrameType::GoAway => {
                let code = GoAwayCode::from_u32(h.length);
                if code == GoAwayCode::Normal {
                    tracing::debug!("yamux peer sent GoAway (normal)");
                } else {
                    tracing::warn!(?code, "yamux peer sent GoAway with an error code");
                }
                self.remote_go_away = true;
                Ok(None)
            }
            FrameType::Data | FrameType::WindowUpdate => {
                self.handle_stream_frame(h, frame.body, backlog_has_room)
            }
        }
    }

    fn handle_stream_frame(
        &mut self,
        h: Header,
        body: Bytes,
        backlog_has_room: bool,
    ) -> Result<Option<u32>, ProtocolError> {
        let id = h.stream_id;
        let max = self.config.max_stream_window;
        let mut accepted = None;
        if h.flags.contains(Flags::SYN) {
            if !self.mode.is_remote_id(id) {
                return Err(ProtocolError::WrongStreamId(id));
            }
            if self.streams.contains_key(&id) {
                return Err(ProtocolError::DuplicateStream(id));
            }
            if !backlog_has_room {
                tracing::warn!(stream = id, "yamux accept backlog full, resetting stream");
                self.out.push_ctrl(Header::window_update(id, Flags::RST, 0));
                return Ok(None);
            }
            // Acknowledge at once, announcing any window beyond the initial one.
            let extra = max - INITIAL_WINDOW;
            self.out
                .push_ctrl(Header::window_update(id, Flags::ACK, extra));
            self.streams
                .insert(id, StreamState::new(true, INITIAL_WINDOW + extra));
            accepted = Some(id);
        }
        let Self { streams, out, .. } = self;
        let Some(st) = streams.get_mut(&id) else {
            if h.frame_type == FrameType::Data {
                tracing::debug!(
                    stream = id,
                    len = body.len(),
                    "data for unknown stream dropped"
                );
            }
            return Ok(accepted);
        };
        if h.flags.contains(Flags::ACK) && !st.acked {
            st.acked = true;
            st.ack_tx = None;
            st.open_permit = None;
        }
        match h.frame_type {
            FrameType::WindowUpdate if h.length > 0 => {
                st.send_window = flow::credit(id, st.send_window, h.length)?;
                if let Some(w) = st.write_waker.take() {
                    w.wake();
                }
            }
            FrameType::Data => {
                let len = body.len() as u32;
                st.recv_window = flow::receive(id, st.recv_window, len)?;
                if len > 0 && st.recv_window < st.window / 4 {
                    st.peer_blocked = true;
                }
                if len > 0 {
                    let readable = st.handle_alive
                        && !st.lifecycle.is_reset()
                        && !st.lifecycle.remote_closed();
                    if readable {
                        st.recv_buffered += body.len();
                        st.recv_buf.push_back(body);
                        if let Some(w) = st.read_waker.take() {
                            w.wake();
                        }
                    } else {
                        // Nobody will read it: give the window straight back.
                        st.grant(id, out);
                    }
                }
            }
            _ => {}
        }
        if h.flags.contains(Flags::FIN) && !st.lifecycle.remote_closed() && !st.lifecycle.is_reset()
        {
            st.lifecycle = st.lifecycle.next(Transition::FinReceived);
            if st.lifecycle.local_closed() {
                st.close_tx = None;
            }
            st.wake_all();
        }
        if h.flags.contains(Flags::RST) && !st.lifecycle.is_reset() {
            st.reset();
        }
        if st.removable() {
            streams.remove(&id);
        }
        Ok(accepted)
    }

    /// Gives the writer its next batch: every control frame, then data frames up to 256 KiB.
    pub(super) fn take_batch(
        &mut self,
        cx: &mut Context<'_>,
        frames: &mut Vec<OutFrame>,
    ) -> Poll<WriterStep> {
        if self.phase == Phase::Dead {
            return Poll::Ready(WriterStep::Exit);
        }
        let out = &mut self.out;
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
        if self.phase == Phase::Draining {
            return Poll::Ready(WriterStep::Shutdown);
        }
        self.out.writer_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Opens an outbound stream: queues its `SYN`. `ack_tx` is dropped when the `ACK` arrives
    /// (the open timer waits on it); `permit` is held until then.
    pub(super) fn open_stream(
        &mut self,
        ack_tx: oneshot::Sender<()>,
        permit: OwnedSemaphorePermit,
    ) -> Result<u32, Error> {
        if self.phase != Phase::Open {
            return Err(self.closed_err());
        }
        if self.remote_go_away {
            return Err(Error::RemoteGoAway);
        }
        let id = self.next_id;
        if id > u32::MAX - 2 {
            return Err(Error::StreamIdsExhausted);
        }
        self.next_id += 2;
        let extra = self.config.max_stream_window - INITIAL_WINDOW;
        let mut st = StreamState::new(false, INITIAL_WINDOW + extra);
        st.ack_tx = Some(ack_tx);
        st.open_permit = Some(permit);
        self.streams.insert(id, st);
        self.out
            .push_ctrl(Header::window_update(id, Flags::SYN, extra));
        Ok(id)
    }

    /// True when stream `id` is still waiting for its `ACK` (its open timer fired).
    pub(super) fn is_unacked(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| !s.acked && !s.lifecycle.is_reset())
    }

    /// Queues a ping; `tx` is answered when its `ACK` arrives. Fails on an ended session.
    pub(super) fn start_ping(&mut self, tx: oneshot::Sender<()>) -> Result<(), Error> {
        if self.phase != Phase::Open {
            return Err(self.closed_err());
        }
        let id = self.next_ping;
        self.next_ping = self.next_ping.wrapping_add(1);
        self.pings.insert(id, tx);
        self.out.push_ctrl(Header::ping(Flags::SYN, id));
        Ok(())
    }

    /// Queues raw bytes ahead of everything (fault injection).
    #[cfg(feature = "fault-injection")]
    pub(super) fn inject_raw(&mut self, bytes: Bytes) {
        if self.phase == Phase::Open {
            self.out.ctrl.push_back(OutFrame {
                header: None,
                body: bytes,
            });
            self.out.wake_writer();
        }
    }

    fn closed_io_error(&self) -> io::Error {
        let reason = self
            .reason
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "closed".into());
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("yamux session closed: {reason}"),
        )
    }

    /// Reads buffered data of stream `id` into `buf`, granting window back as it is consumed.
    pub(super) fn poll_read(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let closed = self.phase != Phase::Open;
        let Some(st) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(stream_gone(
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
                self.consumed(id);
            }
            return Poll::Ready(Ok(()));
        }
        self.poll_nothing_buffered(id, closed, cx)
    }

    /// The application has read from stream `id`: grow its window if the peer ran short of
    /// it, then grant back what was consumed.
    fn consumed(&mut self, id: u32) {
        if self.streams.get(&id).is_some_and(|st| st.peer_blocked) {
            self.grow_window(id);
        }
        let Self { streams, out, .. } = self;
        if let Some(st) = streams.get_mut(&id) {
            st.grant(id, out);
        }
    }

    /// Auto-tuning, once the peer has used three quarters of stream `id`'s window (it is about
    /// to wait for our update): when the application keeps up (at most half the window still
    /// unread), the window was what limited the stream, so it doubles, up to
    /// `grown_window_limit` and within what `grown_window_budget` leaves for all streams
    /// together. A reader that lags keeps its
    /// window: the data would only wait in memory. Runs once per exhaustion, not per read.
    fn grow_window(&mut self, id: u32) {
        let start = self.config.max_stream_window;
        let limit = self.config.grown_window_limit;
        let Some(st) = self.streams.get_mut(&id) else {
            return;
        };
        st.peer_blocked = false;
        let keeps_up = st.recv_buffered <= (st.window / 2) as usize;
        if !keeps_up || st.window >= limit {
            return;
        }
        let grown: usize = self
            .streams
            .values()
            .map(|s| (s.window - start) as usize)
            .sum();
        let room = self.config.grown_window_budget.saturating_sub(grown);
        let room = u32::try_from(room).unwrap_or(u32::MAX);
        if let Some(st) = self.streams.get_mut(&id) {
            st.window = st
                .window
                .saturating_mul(2)
                .min(limit)
                .min(st.window.saturating_add(room));
            tracing::trace!(stream = id, window = st.window, "yamux stream window grown");
        }
    }

    /// Takes up to `max` (at least 1) buffered bytes of stream `id` as they were received,
    /// without copying them, granting window back as they are consumed. `None`: the peer has
    /// closed its side and everything has been read.
    pub(super) fn poll_read_chunk(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let closed = self.phase != Phase::Open;
        let Some(st) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(stream_gone(
                io::ErrorKind::ConnectionAborted,
                "yamux stream is gone (session closed)",
            )));
        };
        let max = max.max(1);
        if let Some(front) = st.recv_buf.front_mut() {
            let chunk = if front.len() <= max {
                st.recv_buf.pop_front().unwrap_or_default()
            } else {
                front.split_to(max)
            };
            st.recv_buffered -= chunk.len();
            if !closed {
                self.consumed(id);
            }
            return Poll::Ready(Ok(Some(chunk)));
        }
        self.poll_nothing_buffered(id, closed, cx).map_ok(|()| None)
    }

    /// A read of stream `id` with nothing buffered: the end of the stream (`Ok`), an error, or
    /// `Pending` with the reader's waker kept until data, `FIN` or `RST` comes.
    fn poll_nothing_buffered(
        &mut self,
        id: u32,
        closed: bool,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(st) = self.streams.get_mut(&id) else {
            return Poll::Ready(Err(stream_gone(
                io::ErrorKind::ConnectionAborted,
                "yamux stream is gone (session closed)",
            )));
        };
        if st.lifecycle.is_reset() {
            return Poll::Ready(Err(stream_gone(
                io::ErrorKind::ConnectionReset,
                "yamux stream reset",
            )));
        }
        if st.lifecycle.remote_closed() {
            return Poll::Ready(Ok(()));
        }
        if !closed {
            st.read_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Err(self.closed_io_error()))
    }

    /// Queues up to one frame of `buf` on stream `id`, within its send window and the send
    /// queue's limit.
    pub(super) fn poll_write(
        &mut self,
        id: u32,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.phase != Phase::Open {
            return Poll::Ready(Err(self.closed_io_error()));
        }
        let limit = self.config.write_queue_limit;
        let max_frame = self.config.max_frame_size as usize;
        let Self { streams, out, .. } = self;
        let Some(st) = streams.get_mut(&id) else {
            return Poll::Ready(Err(stream_gone(
                io::ErrorKind::NotConnected,
                "yamux stream is gone",
            )));
        };
        if st.lifecycle.is_reset() {
            return Poll::Ready(Err(stream_gone(
                io::ErrorKind::ConnectionReset,
                "yamux stream reset",
            )));
        }
        if st.lifecycle.local_closed() {
            return Poll::Ready(Err(stream_gone(
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
            header: Some(Header::data(id, Flags::NONE, n as u32).encode()),
            body: Bytes::copy_from_slice(&buf[..n]),
        });
        Poll::Ready(Ok(n))
    }

    /// Half-closes stream `id` (`FIN`). Returns the receiver a close timer should wait on when
    /// one is to be armed (the peer has not closed its side yet).
    pub(super) fn shutdown_stream(&mut self, id: u32) -> io::Result<Option<oneshot::Receiver<()>>> {
        if let Some(st) = self.streams.get(&id)
            && st.lifecycle.is_reset()
        {
            return Err(stream_gone(
                io::ErrorKind::ConnectionReset,
                "yamux stream reset",
            ));
        }
        if self.phase != Phase::Open {
            return Err(self.closed_io_error());
        }
        Ok(self.send_fin(id))
    }

    fn send_fin(&mut self, id: u32) -> Option<oneshot::Receiver<()>> {
        let arm_timer = self.config.stream_close_timeout.is_some();
        let Self {
            streams,
            out,
            phase,
            ..
        } = self;
        let st = streams.get_mut(&id)?;
        if st.lifecycle.local_closed() || st.lifecycle.is_reset() || *phase != Phase::Open {
            return None;
        }
        st.lifecycle = st.lifecycle.next(Transition::FinSent);
        out.push_data(OutFrame::header(Header::window_update(id, Flags::FIN, 0)));
        if st.lifecycle.remote_closed() {
            st.close_tx = None;
            return None;
        }
        if !arm_timer {
            return None;
        }
        let (tx, rx) = oneshot::channel::<()>();
        st.close_tx = Some(tx);
        Some(rx)
    }

    /// The close timer of stream `id` fired: reset it unless the peer closed its side meanwhile.
    pub(super) fn close_timeout_expired(&mut self, id: u32) {
        let Self { streams, out, .. } = self;
        if let Some(st) = streams.get_mut(&id)
            && !st.lifecycle.remote_closed()
            && !st.lifecycle.is_reset()
        {
            tracing::debug!(stream = id, "yamux stream close timeout, resetting");
            st.lifecycle = st.lifecycle.next(Transition::Reset);
            st.stop_timers();
            st.wake_all();
            out.push_ctrl(Header::window_update(id, Flags::RST, 0));
            if st.removable() {
                streams.remove(&id);
            }
        }
    }

    /// Aborts stream `id`: `RST`, in order after its queued data (like hashicorp's send queue).
    pub(super) fn reset_stream(&mut self, id: u32) {
        let Self { streams, out, .. } = self;
        if let Some(st) = streams.get_mut(&id)
            && !st.lifecycle.is_reset()
        {
            st.reset();
            out.push_data(OutFrame::header(Header::window_update(id, Flags::RST, 0)));
        }
    }

    /// The application dropped stream `id`'s handle: `FIN` if not sent yet, unread data is
    /// dropped and its window given back. Returns the receiver of a close timer to arm.
    pub(super) fn drop_handle(&mut self, id: u32) -> Option<oneshot::Receiver<()>> {
        let timer = self.send_fin(id);
        let open = self.phase == Phase::Open;
        let Self { streams, out, .. } = self;
        if let Some(st) = streams.get_mut(&id) {
            st.handle_alive = false;
            st.recv_buf.clear();
            st.recv_buffered = 0;
            if open {
                st.grant(id, out);
            }
            if st.removable() || !open {
                streams.remove(&id);
            }
        }
        timer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::frame::HEADER_LEN;

    const MAX: u32 = INITIAL_WINDOW;

    fn client() -> Connection {
        Connection::new(Mode::Client, Config::default().normalized())
    }

    fn frame(h: Header, body: &[u8]) -> Frame {
        Frame {
            header: h,
            body: Bytes::copy_from_slice(body),
        }
    }

    /// Everything the writer would write next, as decoded headers (and body lengths).
    fn written(conn: &mut Connection) -> Vec<(Header, usize)> {
        let mut frames = Vec::new();
        let mut cx = Context::from_waker(Waker::noop());
        let _ = conn.take_batch(&mut cx, &mut frames);
        frames
            .into_iter()
            .map(|f| {
                let bytes: [u8; HEADER_LEN] = f.header.expect("a framed write");
                (Header::decode(&bytes).unwrap(), f.body.len())
            })
            .collect()
    }

    fn permit() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap()
    }

    #[test]
    fn an_inbound_syn_is_acknowledged_at_once_or_reset_when_the_backlog_is_full() {
        let mut conn = client();
        let syn = Header::window_update(2, Flags::SYN, 0);
        assert_eq!(conn.handle_frame(frame(syn, b""), true), Ok(Some(2)));
        assert_eq!(
            written(&mut conn),
            vec![(Header::window_update(2, Flags::ACK, 0), 0)]
        );
        let syn = Header::window_update(4, Flags::SYN, 0);
        assert_eq!(conn.handle_frame(frame(syn, b""), false), Ok(None));
        assert_eq!(
            written(&mut conn),
            vec![(Header::window_update(4, Flags::RST, 0), 0)]
        );
        assert_eq!(conn.stream_count(), 1);
    }

    #[test]
    fn a_syn_with_our_parity_or_a_known_id_is_a_protocol_error() {
        let mut conn = client();
        let ours = Header::window_update(1, Flags::SYN, 0);
        assert_eq!(
            conn.handle_frame(frame(ours, b""), true),
            Err(ProtocolError::WrongStreamId(1))
        );
        let theirs = Header::window_update(2, Flags::SYN, 0);
        conn.handle_frame(frame(theirs, b""), true).unwrap();
        assert_eq!(
            conn.handle_frame(frame(theirs, b""), true),
            Err(ProtocolError::DuplicateStream(2))
        );
    }

    #[test]
    fn an_outbound_stream_waits_for_its_ack() {
        let mut conn = client();
        let (tx, mut rx) = oneshot::channel();
        let id = conn.open_stream(tx, permit()).unwrap();
        assert_eq!(id, 1);
        assert_eq!(
            written(&mut conn),
            vec![(Header::window_update(1, Flags::SYN, 0), 0)]
        );
        assert!(conn.is_unacked(1));
        let ack = Header::window_update(1, Flags::ACK, 0);
        conn.handle_frame(frame(ack, b""), true).unwrap();
        assert!(!conn.is_unacked(1));
        // The open timer's sender is gone: the timer ends.
        assert!(rx.try_recv().is_err());
        assert_eq!(
            conn.open_stream(oneshot::channel().0, permit()).ok(),
            Some(3)
        );
    }

    #[test]
    fn data_past_the_window_ends_the_session_and_only_go_away_is_written() {
        let mut conn = client();
        conn.handle_frame(frame(Header::window_update(2, Flags::SYN, 0), b""), true)
            .unwrap();
        let _ = written(&mut conn);
        let big = vec![0u8; MAX as usize + 1];
        let err = conn
            .handle_frame(frame(Header::data(2, Flags::NONE, MAX + 1), &big), true)
            .unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::WindowExceeded { stream: 2, .. }
        ));
        conn.out
            .push_data(OutFrame::header(Header::data(2, Flags::NONE, 0)));
        assert!(conn.fail(&SessionError::Protocol(err)));
        assert_eq!(
            written(&mut conn),
            vec![(Header::go_away(GoAwayCode::ProtocolError), 0)]
        );
        assert!(!conn.fail(&SessionError::RemoteClosed), "first reason wins");
        assert!(matches!(conn.reason(), Some(SessionError::Protocol(_))));
    }

    #[test]
    fn a_stream_leaves_the_table_once_both_fins_are_out_and_its_handle_is_dropped() {
        let mut conn = client();
        conn.handle_frame(frame(Header::window_update(2, Flags::SYN, 0), b""), true)
            .unwrap();
        conn.handle_frame(frame(Header::data(2, Flags::FIN, 0), b""), true)
            .unwrap();
        // Our FIN with the peer's already in: no close timer to arm.
        assert!(conn.shutdown_stream(2).unwrap().is_none());
        assert_eq!(conn.stream_count(), 1, "the handle still holds it");
        assert!(conn.drop_handle(2).is_none());
        assert_eq!(conn.stream_count(), 0);
        let frames = written(&mut conn);
        assert_eq!(
            frames.last(),
            Some(&(Header::window_update(2, Flags::FIN, 0), 0))
        );
    }

    #[test]
    fn a_half_closed_stream_arms_a_close_timer_that_resets_it() {
        let mut conn = client();
        conn.handle_frame(frame(Header::window_update(2, Flags::SYN, 0), b""), true)
            .unwrap();
        let _ = written(&mut conn);
        let timer = conn.shutdown_stream(2).unwrap();
        assert!(timer.is_some(), "the peer has not closed its side");
        conn.close_timeout_expired(2);
        assert_eq!(
            written(&mut conn),
            vec![
                (Header::window_update(2, Flags::RST, 0), 0),
                (Header::window_update(2, Flags::FIN, 0), 0)
            ]
        );
        let mut cx = Context::from_waker(Waker::noop());
        let err = match conn.poll_write(2, &mut cx, b"x") {
            Poll::Ready(Err(e)) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn window_is_granted_back_after_the_application_reads_half() {
        let mut conn = client();
        conn.handle_frame(frame(Header::window_update(2, Flags::SYN, 0), b""), true)
            .unwrap();
        let _ = written(&mut conn);
        let half = vec![7u8; (MAX / 2) as usize];
        conn.handle_frame(frame(Header::data(2, Flags::NONE, MAX / 2), &half), true)
            .unwrap();
        assert!(written(&mut conn).is_empty(), "nothing read yet");
        let mut cx = Context::from_waker(Waker::noop());
        let mut storage = vec![0u8; half.len()];
        let mut buf = ReadBuf::new(&mut storage);
        assert!(matches!(
            conn.poll_read(2, &mut cx, &mut buf),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(buf.filled().len(), half.len());
        assert_eq!(
            written(&mut conn),
            vec![(Header::window_update(2, Flags::NONE, MAX / 2), 0)]
        );
    }

    /// A client whose windows may grow to `limit` within `budget`.
    fn tuned_client(limit: u32, budget: usize) -> Connection {
        let config = Config {
            grown_window_limit: limit,
            grown_window_budget: budget,
            ..Config::default()
        };
        Connection::new(Mode::Client, config.normalized())
    }

    /// The peer opens stream `id` and sends `len` bytes in one frame.
    fn peer_sends(conn: &mut Connection, id: u32, len: u32, syn: bool) {
        if syn {
            conn.handle_frame(frame(Header::window_update(id, Flags::SYN, 0), b""), true)
                .unwrap();
        }
        let body = vec![7u8; len as usize];
        conn.handle_frame(frame(Header::data(id, Flags::NONE, len), &body), true)
            .unwrap();
    }

    /// Reads everything buffered on `id` in chunks of at most `max`; the chunk lengths.
    fn read_chunks(conn: &mut Connection, id: u32, max: usize) -> Vec<usize> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut lens = Vec::new();
        while let Poll::Ready(Ok(Some(chunk))) = conn.poll_read_chunk(id, &mut cx, max) {
            lens.push(chunk.len());
        }
        lens
    }

    /// The window update deltas written for stream `id`.
    fn granted(conn: &mut Connection, id: u32) -> Vec<u32> {
        written(conn)
            .into_iter()
            .filter(|(h, _)| h.frame_type == FrameType::WindowUpdate && h.stream_id == id)
            .map(|(h, _)| h.length)
            .collect()
    }

    #[test]
    fn chunks_are_the_received_buffers_split_at_the_limit_and_end_with_none_after_fin() {
        let mut conn = client();
        peer_sends(&mut conn, 2, 100, true);
        peer_sends(&mut conn, 2, 30, false);
        assert_eq!(read_chunks(&mut conn, 2, 64), vec![64, 36, 30]);
        conn.handle_frame(frame(Header::data(2, Flags::FIN, 0), b""), true)
            .unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            conn.poll_read_chunk(2, &mut cx, 64),
            Poll::Ready(Ok(None))
        ));
    }

    #[test]
    fn a_window_the_peer_uses_up_doubles_up_to_the_limit_while_the_reader_keeps_up() {
        let mut conn = tuned_client(2 * MAX, usize::MAX);
        let _ = written(&mut conn);
        // Three quarters and a byte: the peer is about to run dry.
        let sent = MAX / 4 * 3 + 1;
        peer_sends(&mut conn, 2, sent, true);
        let _ = written(&mut conn);
        assert_eq!(read_chunks(&mut conn, 2, usize::MAX), vec![sent as usize]);
        // The window is now 2 × MAX: everything consumed comes back, plus MAX.
        assert_eq!(granted(&mut conn, 2), vec![2 * MAX - (MAX - sent)]);
        // At the limit it stops growing: the next exhaustion only refills the window.
        let sent2 = 2 * MAX / 4 * 3 + 1;
        peer_sends(&mut conn, 2, sent2, false);
        assert_eq!(read_chunks(&mut conn, 2, usize::MAX), vec![sent2 as usize]);
        assert_eq!(granted(&mut conn, 2), vec![sent2]);
    }

    #[test]
    fn the_default_config_never_grows_a_window_as_hashicorp() {
        let mut conn = client();
        let sent = MAX / 4 * 3 + 1;
        peer_sends(&mut conn, 2, sent, true);
        let _ = written(&mut conn);
        let _ = read_chunks(&mut conn, 2, usize::MAX);
        assert_eq!(granted(&mut conn, 2), vec![sent]);
    }

    #[test]
    fn a_lagging_reader_keeps_its_window() {
        let mut conn = tuned_client(4 * MAX, usize::MAX);
        let sent = MAX / 4 * 3 + 1;
        peer_sends(&mut conn, 2, sent, true);
        let _ = written(&mut conn);
        // One small read with most of the window still unread: no growth, nothing to grant.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            conn.poll_read_chunk(2, &mut cx, 1024),
            Poll::Ready(Ok(Some(c))) if c.len() == 1024
        ));
        assert!(granted(&mut conn, 2).is_empty());
        // Reading the rest grants back what was consumed, at the old size.
        let _ = read_chunks(&mut conn, 2, usize::MAX);
        assert_eq!(granted(&mut conn, 2), vec![sent]);
    }

    #[test]
    fn growth_of_all_streams_together_stays_within_the_budget() {
        let mut conn = tuned_client(4 * MAX, MAX as usize);
        let sent = MAX / 4 * 3 + 1;
        peer_sends(&mut conn, 2, sent, true);
        peer_sends(&mut conn, 4, sent, true);
        let _ = written(&mut conn);
        // Stream 2 takes the whole budget (MAX → 2 × MAX); stream 4 keeps MAX.
        let _ = read_chunks(&mut conn, 2, usize::MAX);
        assert_eq!(granted(&mut conn, 2), vec![2 * MAX - (MAX - sent)]);
        let _ = read_chunks(&mut conn, 4, usize::MAX);
        assert_eq!(granted(&mut conn, 4), vec![sent]);
        // Once stream 2 is gone its growth is free again for stream 4.
        conn.handle_frame(frame(Header::data(2, Flags::RST, 0), b""), true)
            .unwrap();
        conn.drop_handle(2);
        let sent4 = MAX / 4 * 3 + 1;
        peer_sends(&mut conn, 4, sent4, false);
        let _ = read_chunks(&mut conn, 4, usize::MAX);
        assert_eq!(granted(&mut conn, 4), vec![2 * MAX - (MAX - sent4)]);
    }

    #[test]
    fn pings_are_answered_and_ours_are_matched() {
        let mut conn = client();
        conn.handle_frame(frame(Header::ping(Flags::SYN, 42), b""), true)
            .unwrap();
        assert_eq!(written(&mut conn), vec![(Header::ping(Flags::ACK, 42), 0)]);
        let (tx, mut rx) = oneshot::channel();
        conn.start_ping(tx).unwrap();
        assert_eq!(written(&mut conn), vec![(Header::ping(Flags::SYN, 0), 0)]);
        conn.handle_frame(frame(Header::ping(Flags::ACK, 0), b""), true)
            .unwrap();
        assert_eq!(rx.try_recv(), Ok(()));
    }

    #[test]
    fn after_a_go_away_no_stream_opens() {
        let mut conn = client();
        conn.handle_frame(frame(Header::go_away(GoAwayCode::Normal), b""), true)
            .unwrap();
        assert!(matches!(
            conn.open_stream(oneshot::channel().0, permit()),
            Err(Error::RemoteGoAway)
        ));
    }
}
