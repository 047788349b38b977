//! The async driver of a [`Connection`]: one reader task, one writer task, the keepalive and
//! the stream timers, all on the current tokio runtime. Every decision is the core's; this
//! file only moves bytes and time.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::core::{Connection, OutFrame, WriterStep};
use super::{Config, Control, Incoming, Mode, ProtocolError, SessionError, Stream};
use crate::frame::FrameDecoder;

/// What the tasks and the handles share: the core under one lock and the signals around it.
pub(super) struct Shared {
    conn: Mutex<Connection>,
    pub(super) config: Config,
    pub(super) mode: Mode,
    pub(super) open_slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    pub(super) status: watch::Sender<Status>,
}

/// What [`Control::closed`] and [`Control::finished`] wait for.
#[derive(Clone, Default)]
pub(super) struct Status {
    pub(super) reason: Option<SessionError>,
    pub(super) finished: bool,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the session (first reason wins).
    pub(super) fn fail(&self, err: SessionError) {
        let mut conn = self.lock();
        self.fail_locked(&mut conn, err);
    }

    pub(super) fn fail_locked(&self, conn: &mut Connection, err: SessionError) {
        if conn.fail(&err) {
            self.open_slots.close();
            self.shutdown.cancel();
            self.status.send_modify(|s| s.reason = Some(err));
        }
    }

    /// Arms the open timer of stream `id`: when its `ACK` has not come within the limit, the
    /// whole session closes (hashicorp's `StreamOpenTimeout`).
    pub(super) fn arm_open_timer(self: &Arc<Self>, id: u32, ack_rx: oneshot::Receiver<()>) {
        let Some(limit) = self.config.stream_open_timeout else {
            return;
        };
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            tokio::select! {
                _ = ack_rx => {}
                _ = tokio::time::sleep(limit) => {
                    if shared.lock().is_unacked(id) {
                        tracing::warn!(stream = id, "yamux stream not acknowledged in time, closing the session");
                        shared.fail(SessionError::StreamOpenTimeout(id));
                    }
                }
            }
        });
    }

    /// Arms the close timer of stream `id` (the core asked for it after our `FIN`).
    pub(super) fn arm_close_timer(self: &Arc<Self>, id: u32, rx: Option<oneshot::Receiver<()>>) {
        let (Some(rx), Some(limit)) = (rx, self.config.stream_close_timeout) else {
            return;
        };
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            tokio::select! {
                _ = rx => {}
                _ = tokio::time::sleep(limit) => shared.lock().close_timeout_expired(id),
            }
        });
    }
}

/// Creates sessions.
pub struct Session;

impl Session {
    /// Starts a session over `io` (spawning its reader and writer on the current tokio
    /// runtime) and returns the handle to open streams and the queue of inbound streams.
    ///
    /// Dropping every [`Control`] clone closes the session.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<T>(io: T, mode: Mode, config: Config) -> (Control, Incoming)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let config = config.normalized();
        let (status, _) = watch::channel(Status::default());
        let shared = Arc::new(Shared {
            conn: Mutex::new(Connection::new(mode, config.clone())),
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
        let control = Control::new(Arc::clone(&shared));
        if let Some(interval) = shared.config.keepalive_interval {
            let weak = control.downgrade();
            let ka_shared = Arc::clone(&shared);
            tokio::spawn(async move { keepalive_task(ka_shared, weak, interval).await });
        }
        (control, Incoming::new(rx))
    }
}

/// Closes the session when the last [`Control`] is dropped.
pub(super) struct CloseOnDrop(pub(super) Arc<Shared>);

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
        let Some(control) = Control::upgrade(&shared, &guard) else {
            return;
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
    // No data frame can be larger than the largest window we may grant.
    let mut dec = FrameDecoder::new(shared.config.grown_window_limit);
    let result: Result<(), SessionError> = async {
        loop {
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(frame)) => deliver(&shared, frame, &incoming)?,
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

/// Hands one inbound frame to the core and an accepted inbound stream to the application.
fn deliver(
    shared: &Arc<Shared>,
    frame: crate::frame::Frame,
    incoming: &mpsc::Sender<Stream>,
) -> Result<(), ProtocolError> {
    let opens = frame.header.flags.contains(crate::frame::Flags::SYN);
    let permit = if opens {
        incoming.try_reserve().ok()
    } else {
        None
    };
    let mut conn = shared.lock();
    if let Some(id) = conn.handle_frame(frame, permit.is_some())?
        && let Some(permit) = permit
    {
        permit.send(Stream::new(id, Arc::clone(shared)));
    }
    Ok(())
}

async fn writer_task<W: AsyncWrite + Unpin>(shared: Arc<Shared>, mut w: W) {
    let mut frames = Vec::new();
    let mut batch: Vec<u8> = Vec::with_capacity(64 * 1024);
    let limit = shared.config.write_timeout;
    loop {
        let step = std::future::poll_fn(|cx| shared.lock().take_batch(cx, &mut frames)).await;
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
    shared.lock().writer_stopped();
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

/// Writes `head` then `body`, vectored when the writer supports it.
async fn write_both<W: AsyncWrite + Unpin>(w: &mut W, head: &[u8], body: &[u8]) -> io::Result<()> {
    if !w.is_write_vectored() {
        w.write_all(head).await?;
        return w.write_all(body).await;
    }
    let (mut head, mut body) = (head, body);
    while !head.is_empty() || !body.is_empty() {
        let slices = [io::IoSlice::new(head), io::IoSlice::new(body)];
        let n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    Ok(())
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
            // What is batched (this frame's header at least) and the body in one write: one
            // WebSocket message per frame instead of two.
            write_both(w, batch, &f.body).await?;
            batch.clear();
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
