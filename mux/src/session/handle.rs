//! The application's handles: [`Control`] (open streams, ping, close), [`Incoming`] (streams
//! the peer opened) and [`Stream`] (one byte stream). Each is a thin call into the core.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::driver::{CloseOnDrop, Shared};
use super::{Error, SessionError};

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
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            _guard: Arc::new(CloseOnDrop(Arc::clone(&shared))),
            shared,
        }
    }

    /// A reference that does not keep the session open (for the keepalive task).
    pub(super) fn downgrade(&self) -> Weak<CloseOnDrop> {
        Arc::downgrade(&self._guard)
    }

    /// A `Control` again, while some other one still exists.
    pub(super) fn upgrade(shared: &Arc<Shared>, guard: &Weak<CloseOnDrop>) -> Option<Self> {
        Some(Self {
            shared: Arc::clone(shared),
            _guard: guard.upgrade()?,
        })
    }

    /// Opens a stream. Returns once the `SYN` is queued (like hashicorp, without waiting for the
    /// `ACK`); waits only while [`Config::accept_backlog`](super::Config::accept_backlog)
    /// opened streams are still unacknowledged.
    pub async fn open_stream(&self) -> Result<Stream, Error> {
        let permit = match Arc::clone(&self.shared.open_slots).acquire_owned().await {
            Ok(p) => p,
            Err(_) => return Err(self.shared.lock().closed_err()),
        };
        let (ack_tx, ack_rx) = oneshot::channel();
        let id = self.shared.lock().open_stream(ack_tx, permit)?;
        self.shared.arm_open_timer(id, ack_rx);
        Ok(Stream::new(id, Arc::clone(&self.shared)))
    }

    /// Sends a ping and waits for its answer; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let (tx, rx) = oneshot::channel();
        self.shared.lock().start_ping(tx)?;
        let start = Instant::now();
        match rx.await {
            Ok(()) => Ok(start.elapsed()),
            Err(_) => Err(self.shared.lock().closed_err()),
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
        let mut conn = self.shared.lock();
        if !conn.is_draining() {
            self.shared.fail_locked(&mut conn, SessionError::LocalClose);
        }
        conn.kill();
    }

    /// Writes raw bytes onto the connection, bypassing framing. For fault injection in tests
    /// (the mock server): the peer will normally treat them as a protocol error.
    #[cfg(feature = "fault-injection")]
    pub fn inject_raw(&self, bytes: Bytes) {
        self.shared.lock().inject_raw(bytes);
    }

    /// Why the session ended, or `None` while it is open.
    pub fn close_reason(&self) -> Option<SessionError> {
        self.shared.lock().reason()
    }

    /// True once the session has ended (or is draining after [`Control::close`]).
    pub fn is_closed(&self) -> bool {
        !self.shared.lock().is_open()
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
        self.shared.lock().stream_count()
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
    pub(super) fn new(rx: mpsc::Receiver<Stream>) -> Self {
        Self { rx }
    }

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
///
/// `&Stream` reads and writes too (like `&TcpStream`), so one task can read the stream while
/// another part of it writes; two readers (or two writers) at once would take turns being
/// woken and must not be used.
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
    pub(super) fn new(id: u32, shared: Arc<Shared>) -> Self {
        Self { id, shared }
    }

    /// The stream id (odd when the client opened it, even for the server).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Aborts the stream: sends `RST`; further reads and writes fail on both sides.
    pub fn reset(&mut self) {
        self.shared.lock().reset_stream(self.id);
    }

    /// Reads up to `max` bytes (at least 1) without copying them: the received frames' own
    /// buffers, as the session's reader decoded them. `None`: the peer closed its side and
    /// everything has been read. Window is granted back as with [`AsyncRead`].
    pub async fn read_chunk(&self, max: usize) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.shared.lock().poll_read_chunk(self.id, cx, max)).await
    }
}

impl AsyncRead for &Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.shared.lock().poll_read(self.id, cx, buf)
    }
}

impl AsyncWrite for &Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared.lock().poll_write(self.id, cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames are handed to the session's writer as they are written; it flushes the
        // connection whenever its queue runs empty.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let timer = self.shared.lock().shutdown_stream(self.id)?;
        self.shared.arm_close_timer(self.id, timer);
        Poll::Ready(Ok(()))
    }
}

/// The owned stream reads and writes through `&Stream`: one implementation of each.
impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self).poll_shutdown(cx)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let timer = self.shared.lock().drop_handle(self.id);
        self.shared.arm_close_timer(self.id, timer);
    }
}
